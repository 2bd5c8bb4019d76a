// The proximal log-probs of one async batch (the decoupled objective's pi_prox: the trainer's weights
// before the batch's iteration), computed on the rollout side right after those weights are pushed
// there (Runs/AsyncRollouts.cs) while the trainer starts the iteration; the trainer takes them before
// its second minibatch. When no push of those weights reaches the rollout side (the last iterations,
// which no later generation needs), the offer is withdrawn before the trainer takes the batch and
// the trainer computes them itself, as it does for every batch when the rollout side offers none.
namespace ReaLNative.Engine.Stages;

internal sealed class RolloutProximal(TimeSpan deadline)
{
    private readonly object _gate = new();
    private float[]? _values;
    private Exception? _failure;
    private bool _delivers = true;

    /// <summary>Whether the rollout side will compute them (false once withdrawn).</summary>
    public bool Delivers { get { lock (_gate) return _delivers; } }

    /// <summary>The rollout side will not compute them (called before the trainer takes the batch).</summary>
    public void Withdraw() { lock (_gate) { _delivers = false; Monitor.PulseAll(_gate); } }

    public void Set(float[] values) { lock (_gate) { _values = values; Monitor.PulseAll(_gate); } }

    /// <summary>The rollout side failed (or stopped) before computing them.</summary>
    public void Fail(Exception e) { lock (_gate) { _failure ??= e; Monitor.PulseAll(_gate); } }

    /// <summary>Waits (with the deadline) for the values; rethrows the rollout side's failure.</summary>
    public float[] Wait()
    {
        var until = DateTime.UtcNow + deadline;
        lock (_gate)
        {
            while (_values is null)
            {
                if (_failure is not null) throw new InvalidOperationException($"async generation: the proximal log-probs were not computed: {_failure.Message}", _failure);
                if (!_delivers) throw new InvalidOperationException("the proximal log-probs were withdrawn from the rollout side after the trainer took them");
                var left = until - DateTime.UtcNow;
                if (left <= TimeSpan.Zero) throw new TimeoutException($"async generation: the proximal log-probs were not computed within {deadline.TotalSeconds:F0} s");
                Monitor.Wait(_gate, left);
            }
            return _values;
        }
    }
}
