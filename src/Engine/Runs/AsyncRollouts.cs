// Asynchronous RL (`mode: async`, `max_staleness: N`; docs/algorithms.md "Asynchronous RL"). The
// generation calls of an RL stage (actor_gen; ReMax's actor_greedy_gen too) run on their own
// thread and their own weights (the plan's generation mesh, or without a plan a generation copy of
// the actor), ahead of the rest of the dataflow, which the run loop executes as before.
//
// Versions: the policy after t train iterations of the stage is version t. Generation of iteration
// g samples with version max(g - N, start) exactly, where start is the version the stage (or the
// resumed checkpoint) began with; so the samples are a pure function of the seed and the run is
// reproducible and resumable bit for bit. After train iteration it (version it + 1) the weights are
// pushed to the generation side once generation of iteration it + N has finished, and generation of
// iteration it + N + 1 starts with them: generation of the next iterations overlaps the training
// of this one, and a train iteration never waits for more than the push when generation is the
// faster side. N = 0 is the synchronous order (the push before each generation), with the same
// parameters as `mode: sync`. No sample is ever older than N versions, so none is dropped for
// staleness (the count is reported, and stays 0 by construction).
//
// A checkpoint after iteration it holds the batches generated ahead with older weights
// (iterations it + 1 .. it + N: their tokens, behaviour log-probs, versions and figures) in
// rollouts.bin; a resume restores them and generates the rest from the checkpoint's weights.
using System.Diagnostics;
using ReaLNative.Engine.Dataflow;
using ReaLNative.Engine.Generation;
using ReaLNative.Engine.Stages;

namespace ReaLNative.Engine.Runs;

/// <summary>One iteration's generated batch: the batch (its source keys and the generation calls'
/// outputs), the generation calls' records, the policy version that sampled it and when it was ready.</summary>
internal sealed record GeneratedBatch(int Iteration, SampleBatch Batch, IReadOnlyList<CallRecord> Records, int Version);

internal sealed class AsyncRollouts : IDisposable
{
    private readonly MeshExecutor _generation;
    private readonly Func<int, SampleBatch> _sources;
    private readonly Action _push;
    private readonly int _staleness, _start, _end;
    private readonly TimeSpan _deadline;
    private readonly CancellationToken _cancel;
    private readonly object _gate = new();
    private readonly Dictionary<int, GeneratedBatch> _ready = new();
    private readonly Thread _thread;
    private int _weights;        // the policy version the generation side holds
    private int _next;           // the next iteration to generate
    private Exception? _failure;
    private bool _stopping;
    private double _busySeconds; // generation time not yet reported by TakeBusySeconds

    /// <param name="generation">The stage's generation calls on the generation side.</param>
    /// <param name="sources">An iteration's batch with its source keys (called in iteration order, on the generation thread).</param>
    /// <param name="push">Copies the train replica's weights to the generation side (called on the trainer's thread, both sides idle).</param>
    /// <param name="maxStaleness">N: generation of iteration g uses version max(g - N, start).</param>
    /// <param name="start">The stage's first iteration to train, = the version of the weights both sides hold now.</param>
    /// <param name="end">The stage's iteration count.</param>
    /// <param name="restored">Batches a checkpoint generated ahead (iterations start, start + 1, ...; their sources are set again here, in order).</param>
    /// <param name="deadline">How long the trainer waits for one generation (or the generation side for a push) before the run fails.</param>
    public AsyncRollouts(MeshExecutor generation, Func<int, SampleBatch> sources, Action push, int maxStaleness, int start, int end,
                         IReadOnlyList<(int Iteration, Action<SampleBatch> Fill, IReadOnlyList<CallRecord> Records, int Version)> restored,
                         TimeSpan deadline, CancellationToken cancel)
    {
        _generation = generation; _sources = sources; _push = push;
        _staleness = maxStaleness; _start = start; _end = end; _deadline = deadline; _cancel = cancel;
        _weights = start; _next = start;
        foreach (var r in restored.OrderBy(r => r.Iteration))
        {
            if (r.Iteration != _next) throw new InvalidDataException($"rollouts.bin: iteration {r.Iteration} where {_next} was expected");
            if (r.Version > Needed(r.Iteration) || r.Version < r.Iteration - _staleness)
                throw new InvalidDataException($"rollouts.bin: iteration {r.Iteration} was generated with policy version {r.Version}, outside [{r.Iteration - _staleness}, {Needed(r.Iteration)}] for max_staleness {_staleness}");
            var batch = _sources(r.Iteration);
            r.Fill(batch);
            batch.Set(StageContext.BehaviourVersionKey, new[] { r.Version });
            _ready[r.Iteration] = new GeneratedBatch(r.Iteration, batch, r.Records, r.Version);
            _next++;
        }
        _thread = new Thread(Loop) { IsBackground = true, Name = "realn async generation" };
        _thread.Start();
    }

    public int MaxStaleness => _staleness;

    /// <summary>The version generation of iteration <paramref name="g"/> samples with.</summary>
    private int Needed(int g) => Math.Max(g - _staleness, _start);

    private void Loop()
    {
        try
        {
            while (true)
            {
                int g, version;
                lock (_gate)
                {
                    while (!_stopping && _next < _end && _weights < Needed(_next)) Monitor.Wait(_gate);
                    if (_stopping || _next >= _end) return;
                    g = _next; version = _weights;
                    if (version != Needed(g)) throw new InvalidOperationException($"generation of iteration {g} holds policy version {version}, not {Needed(g)}");
                }
                var batch = _sources(g);
                batch.Set(StageContext.BehaviourVersionKey, new[] { version });
                long t0 = Stopwatch.GetTimestamp();
                var records = _generation.RunIteration(batch, _cancel);
                double seconds = Stopwatch.GetElapsedTime(t0).TotalSeconds;
                lock (_gate)
                {
                    _ready[g] = new GeneratedBatch(g, batch, records, version);
                    _next = g + 1;
                    _busySeconds += seconds;
                    Monitor.PulseAll(_gate);
                }
            }
        }
        catch (Exception e)
        {
            lock (_gate) { _failure = e; Monitor.PulseAll(_gate); }
        }
    }

    /// <summary>Waits (with the deadline) until <paramref name="done"/> holds under the lock; rethrows a generation failure.</summary>
    private void WaitFor(Func<bool> done, Func<string> what)
    {
        var until = DateTime.UtcNow + _deadline;
        lock (_gate)
        {
            while (!done())
            {
                if (_failure is not null) System.Runtime.ExceptionServices.ExceptionDispatchInfo.Capture(_failure).Throw();
                _cancel.ThrowIfCancellationRequested();
                var left = until - DateTime.UtcNow;
                if (left <= TimeSpan.Zero) throw new TimeoutException($"async generation: {what()} did not finish within {_deadline.TotalSeconds:F0} s");
                Monitor.Wait(_gate, left < TimeSpan.FromMilliseconds(200) ? left : TimeSpan.FromMilliseconds(200));
            }
        }
    }

    /// <summary>Iteration <paramref name="it"/>'s generated batch (waits for it).</summary>
    public GeneratedBatch Take(int it)
    {
        WaitFor(() => _ready.ContainsKey(it), () => $"generation of iteration {it + 1}");
        lock (_gate)
        {
            var b = _ready[it];
            _ready.Remove(it);
            return b;
        }
    }

    /// <summary>Generation seconds since the last call (the generation side's busy time).</summary>
    public double TakeBusySeconds()
    {
        lock (_gate) { double s = _busySeconds; _busySeconds = 0; return s; }
    }

    /// <summary>After train iteration <paramref name="version"/> - 1: once generation of iteration
    /// version - 1 + N has finished, pushes the new weights and lets generation of iteration
    /// version + N start; nothing when no later generation needs them. Returns the seconds spent
    /// waiting for generation and pushing.</summary>
    public (double WaitSeconds, double PushSeconds) Publish(int version)
    {
        int g = version + _staleness;   // the first generation that needs these weights
        if (g >= _end) return (0, 0);
        long t0 = Stopwatch.GetTimestamp();
        WaitFor(() => _next >= g, () => $"generation of iteration {g}");
        double wait = Stopwatch.GetElapsedTime(t0).TotalSeconds;
        t0 = Stopwatch.GetTimestamp();
        _push();
        double push = Stopwatch.GetElapsedTime(t0).TotalSeconds;
        lock (_gate) { _weights = version; Monitor.PulseAll(_gate); }
        return (wait, push);
    }

    /// <summary>The batches generated with weights older than version <paramref name="next"/>
    /// that iterations next, next + 1, ... will train on (what a checkpoint before iteration
    /// <paramref name="next"/> must keep); waits for those still being generated.</summary>
    public IReadOnlyList<GeneratedBatch> Ahead(int next)
    {
        int last = Math.Min(next - 1 + _staleness, _end - 1);   // the last iteration sampled before version next
        WaitFor(() => _next > last, () => $"generation of iteration {last + 1}");
        lock (_gate) return _ready.Values.Where(b => b.Iteration >= next && b.Version < next).OrderBy(b => b.Iteration).ToList();
    }

    /// <summary>Stops generating and waits (with the deadline) for a generation in flight to end,
    /// so that nothing uses the generation side once this returns true.</summary>
    public bool Stop()
    {
        lock (_gate) { _stopping = true; Monitor.PulseAll(_gate); }
        return _thread.Join(_deadline);
    }

    public void Dispose()
    {
        if (!Stop())
            Console.Error.WriteLine($"realn: async generation: the generation in flight did not end within {_deadline.TotalSeconds:F0} s of the stop");
    }
}
