// The proximal log-probs of one async batch (the decoupled objective's pi_prox: the trainer's weights
// before the batch's iteration), computed on the rollout side right after those weights are pushed
// there (Runs/AsyncRollouts.cs) while the trainer starts the iteration; the trainer takes them before
// its second minibatch. A batch without one (the last N iterations, whose weights are never pushed)
// has its proximal log-probs computed by the trainer. They are outputs the workers that computed them
// may keep (StageContext.ProximalOfLaterMinibatches): released with the batch, whether or not the
// trainer took them.
using ReaLNative.Engine.Model;

namespace ReaLNative.Engine.Stages;

internal sealed class RolloutProximal(TimeSpan deadline)
{
    private readonly object _gate = new();
    private ActionFloats[]? _values;
    private Exception? _failure;
    private bool _released;

    /// <summary>Minibatches 1.. (one output each); released at once when the batch was released first.</summary>
    public void Set(ActionFloats[] values)
    {
        bool released;
        lock (_gate) { _values = values; released = _released; Monitor.PulseAll(_gate); }
        if (released) foreach (var v in values) v.Release();
    }

    /// <summary>The batch is released: the workers may drop what they keep of these (a later <see cref="Set"/> too).</summary>
    public void Release()
    {
        ActionFloats[]? values;
        lock (_gate) { _released = true; values = _values; }
        if (values is not null) foreach (var v in values) v.Release();
    }

    /// <summary>The rollout side failed (or stopped) before computing them.</summary>
    public void Fail(Exception e) { lock (_gate) { _failure ??= e; Monitor.PulseAll(_gate); } }

    /// <summary>Waits (with the deadline) for the values; rethrows the rollout side's failure.</summary>
    public ActionFloats[] Wait()
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
