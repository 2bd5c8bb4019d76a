// The proximal log-probs of one async batch (the decoupled objective's pi_prox: the trainer's weights
// before the batch's iteration), computed on the rollout side right after those weights are pushed
// there (Runs/AsyncRollouts.cs) while the trainer starts the iteration; the trainer takes them before
// its second minibatch. A batch without one (the last N iterations, whose weights are never pushed)
// has its proximal log-probs computed by the trainer.
namespace ReaLNative.Engine.Stages;

internal sealed class RolloutProximal(TimeSpan deadline)
{
    private readonly object _gate = new();
    private float[]? _values;
    private Exception? _failure;

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
                var left = until - DateTime.UtcNow;
                if (left <= TimeSpan.Zero) throw new TimeoutException($"async generation: the proximal log-probs were not computed within {deadline.TotalSeconds:F0} s");
                Monitor.Wait(_gate, left);
            }
            return _values;
        }
    }
}
