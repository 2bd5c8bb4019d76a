// Asynchronous RL (`mode: async`, `max_staleness: N`; docs/algorithms.md "Asynchronous RL"). The
// generation calls of an RL stage (actor_gen; ReMax's actor_greedy_gen too) run on their own
// thread and their own weights (the plan's generation mesh, or without a plan a generation copy of
// the actor), ahead of the rest of the dataflow, which the run loop executes as before. Under a
// plan that puts frozen models' inference (reward, reference) on the generation devices, those
// scoring calls follow each generation on this side too (DataflowGraph.SplitRollout).
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
// `weight_update: interrupt` (interruptStep k >= 1) moves each of these pushes into the generation
// in flight: the push of version v, which finish_batch makes after generation of iteration
// v - 1 + N, is taken by that generation before its decode step k (a deterministic point, so the
// run stays reproducible): it pauses there (Generation/Generator.cs GenerationPause; the KV cache
// of the tokens so far is kept), the trainer pushes, and it continues with the new weights. So
// tokens 0 .. k-1 of each sequence of iteration g are sampled by version max(g - N, start) and
// the rest by g + 1 - N (needs N >= 1); the batch records each token's version ("token_versions",
// aligned with "logprobs"), and the behaviour log-probs are each token's sampling version's. When
// every sequence ended before step k the generation takes no weights and the push follows it, as
// in finish_batch.
//
// A checkpoint after iteration it holds the batches generated ahead with older weights
// (iterations it + 1 .. it + N: their tokens, behaviour log-probs, versions and figures) in
// rollouts.bin; a resume restores them and generates the rest from the checkpoint's weights.
using System.Diagnostics;
using ReaLNative.Engine.Dataflow;
using ReaLNative.Engine.Generation;
using ReaLNative.Engine.Tasks;
using ReaLNative.Engine.Stages;

namespace ReaLNative.Engine.Runs;

/// <summary>One iteration's generated batch: the batch (its source keys and the generation calls'
/// outputs), the generation calls' records, the policy version that sampled it and when it was ready.</summary>
internal sealed record GeneratedBatch(int Iteration, SampleBatch Batch, IReadOnlyList<CallRecord> Records, int Version);

/// <summary>Where a generation call of an async run may pause for new weights (AsyncRollouts under
/// `weight_update: interrupt`).</summary>
internal interface IGenerationPausePoint
{
    /// <summary>The step before which the current generation takes new weights, with its session id; null: it takes none.</summary>
    (int Step, long Session)? PausePoint();
    /// <summary>The generation reached its pause; <paramref name="unfinished"/>: some sequence goes on
    /// (then this waits for the new weights), else it ended before the step and takes none.</summary>
    void Paused(bool unfinished);
}

/// <summary>A generation role's calls whose Generate pauses where <paramref name="point"/> says,
/// for the new weights, and then continues; everything else as <paramref name="inner"/>.</summary>
internal sealed class PausingCalls(IModelCalls inner, IGenerationPausePoint point) : IModelCalls
{
    public float[] LogProbs(Model.ScoredBatch b, float temperature) => inner.LogProbs(b, temperature);
    public (float[] ActionValues, float[] LastScores) Values(Model.ScoredBatch b) => inner.Values(b);
    public void BackwardLogProbs(Model.ScoredBatch b, float temperature, float[] dActionLogp) => inner.BackwardLogProbs(b, temperature, dActionLogp);
    public void BackwardValues(Model.ScoredBatch b, float[] dActionValues, float[] dLastScores) => inner.BackwardValues(b, dActionValues, dLastScores);
    public double SftStep(Model.ScoredBatch b) => inner.SftStep(b);
    public double Step() => inner.Step();
    public (Parallelism.ClippedPolicyStats Stats, double GradNorm) PolicyStep(Model.ScoredBatch minibatch, int s0, int a0, float temperature, Parallelism.PolicyLossInputs inputs, bool ratioBaseFromForward) =>
        inner.PolicyStep(minibatch, s0, a0, temperature, inputs, ratioBaseFromForward);
    public (Parallelism.ValueLossStats Stats, double GradNorm) ValueStep(Model.ScoredBatch minibatch, int a0, Parallelism.ValueLossInputs inputs) => inner.ValueStep(minibatch, a0, inputs);
    public float LearningRate => inner.LearningRate;

    public GenerationResult Generate(IReadOnlyList<int[]> prompts, GenerationOptions opt) => Paused(prompts, opt, inner.Generate);

    /// <summary>As <see cref="Generate"/>; the last command (the whole generation, or what follows the
    /// pause: it returns every token so far, and its workers keep the batch) leaves the log-probs with
    /// the workers. The first command, up to the pause, keeps no batch: its tokens and log-probs come back.</summary>
    public GenerationResult KeptGenerate(IReadOnlyList<int[]> prompts, GenerationOptions opt, ScoringRequest? scoring = null) =>
        Paused(prompts, opt, (p, o) => inner.KeptGenerate(p, o, scoring));

    private GenerationResult Paused(IReadOnlyList<int[]> prompts, GenerationOptions opt, Func<IReadOnlyList<int[]>, GenerationOptions, GenerationResult> last)
    {
        if (point.PausePoint() is not var (step, session)) return last(prompts, opt);
        var first = inner.Generate(prompts, opt with { Pause = new GenerationPause(session, step, Resume: false) });
        bool unfinished = false;
        for (int i = 0; i < first.NewTokens.Length; i++)
            unfinished |= !first.EndedWithEos[i] && first.NewTokens[i].Length < (opt.MaxNewTokensPerPrompt?[i] ?? opt.MaxNewTokens);
        point.Paused(unfinished);
        return last(prompts, opt with { Pause = new GenerationPause(session, 0, Resume: true) });
    }
}

internal sealed class AsyncRollouts : IDisposable, IGenerationPausePoint
{
    private readonly MeshExecutor _generation;
    private readonly MeshExecutor? _scoring;   // frozen models' inference after each generation (null: none on this side)
    private readonly Queue<GeneratedBatch> _unscored = new();   // restored batches whose scoring outputs rollouts.bin lacks
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
    private readonly int _interruptStep;   // weight_update: interrupt: the pause step k; 0: finish_batch
    private (int Iteration, int From, int To)? _swap;   // the generation in flight and the versions it swaps between
    private int _pausedIteration = -1;      // the generation paused for new weights (or that ended before its pause)
    private bool _swapTaken;                // whether the generation in flight took the new weights
    private double _pausedSeconds;          // how long the generation in flight waited at its pause (not busy time)
    // The decoupled loss's proximal log-probs computed on this side (null: the trainer computes them):
    // for each stale batch, once this side holds the version the trainer trains it with.
    private readonly Func<Rollout, Model.ActionFloats[]>? _proximal;
    private readonly Dictionary<int, (Rollout Rollout, RolloutProximal Result)> _proximalJobs = new();

    /// <param name="generation">The stage's generation calls on the generation side.</param>
    /// <param name="sources">An iteration's batch with its source keys (called in iteration order, on the generation thread).</param>
    /// <param name="push">Copies the train replica's weights to the generation side (called on the trainer's thread, both sides idle).</param>
    /// <param name="maxStaleness">N: generation of iteration g uses version max(g - N, start).</param>
    /// <param name="start">The stage's first iteration to train, = the version of the weights both sides hold now.</param>
    /// <param name="end">The stage's iteration count.</param>
    /// <param name="restored">Batches a checkpoint generated ahead (iterations start, start + 1, ...; their sources are set again here, in order).</param>
    /// <param name="deadline">How long the trainer waits for one generation (or the generation side for a push) before the run fails.</param>
    /// <param name="interruptStep">`weight_update: interrupt`: the decode step before which a generation takes the next version (>= 1, needs N >= 1); 0: finish_batch.</param>
    /// <param name="pausePoint">Receives this object as the generation calls' pause point (before the generation thread starts).</param>
    /// <param name="scoring">The scoring calls that run on this side after each generation (their sources: the generation's batch), or null.
    /// A restored batch without their outputs (a checkpoint of a run that scored on the trainer side) is scored here before any new generation.</param>
    /// <param name="proximal">Computes a stale batch's proximal log-probs (minibatches 1..) with this side's actor weights, or null:
    /// the trainer computes them. Called on this side's thread right after the push of the version the batch trains with, before the
    /// next generation (finish_batch only).</param>
    public AsyncRollouts(MeshExecutor generation, Func<int, SampleBatch> sources, Action push, int maxStaleness, int start, int end,
                         IReadOnlyList<(int Iteration, Action<SampleBatch> Fill, IReadOnlyList<CallRecord> Records, int Version)> restored,
                         TimeSpan deadline, CancellationToken cancel, int interruptStep = 0, PausePointRelay? pausePoint = null,
                         MeshExecutor? scoring = null, Func<Rollout, Model.ActionFloats[]>? proximal = null)
    {
        _scoring = scoring;
        if (proximal is not null && interruptStep > 0)
            throw new ArgumentException("the proximal log-probs are computed on the rollout side under weight_update: finish_batch only (a paused generation holds the model)");
        _proximal = proximal;
        if (interruptStep < 0 || (interruptStep > 0 && maxStaleness < 1))
            throw new ArgumentException($"weight_update: interrupt needs a pause step >= 1 and max_staleness >= 1 (got {interruptStep}, {maxStaleness})");
        _interruptStep = interruptStep;
        if (pausePoint is not null) pausePoint.Target = this;
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
            if (!batch.Contains(StageContext.TokenVersionsKey)) SetTokenVersions(batch, r.Version, null);   // a rollouts.bin of format 1
            else if (batch.Contains("sequences"))
            {
                var tv = batch.Get<int[]>(StageContext.TokenVersionsKey);
                int tokens = batch.Get<Rollout>("sequences").Gen.NewTokenCounts.Sum();
                if (tv.Length != tokens) throw new InvalidDataException($"rollouts.bin: iteration {r.Iteration} has {tv.Length} token versions for {tokens} tokens");
                if (tv.Any(v => v < r.Version || v > r.Iteration))
                    throw new InvalidDataException($"rollouts.bin: iteration {r.Iteration} has a token version outside [{r.Version}, {r.Iteration}]");
            }
            var ready = new GeneratedBatch(r.Iteration, batch, r.Records, r.Version);
            OfferProximal(ready);
            if (_scoring is not null && _scoring.Graph.Calls.SelectMany(c => c.Outputs).Any(k => !batch.Contains(k))) _unscored.Enqueue(ready);
            else _ready[r.Iteration] = ready;
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
            while (_unscored.TryPeek(out var restored))
            {
                var records = _scoring!.RunIteration(restored.Batch, _cancel);   // (a failure: Dispose releases the queued batch)
                lock (_gate)
                {
                    _unscored.Dequeue();
                    _ready[restored.Iteration] = restored with { Records = [.. restored.Records, .. records] };
                    Monitor.PulseAll(_gate);
                }
            }
            while (true)
            {
                int g, version;
                (Rollout Rollout, RolloutProximal Result) job;
                lock (_gate)
                {
                    // The trainer pushes each version after its iteration (or stops the loop on a failure); a
                    // push that does not come within the deadline ends the run, naming the version.
                    var until = DateTime.UtcNow + _deadline;
                    while (!_stopping && _next < _end && _weights < Needed(_next))
                    {
                        var left = until - DateTime.UtcNow;
                        if (left <= TimeSpan.Zero)
                            throw new TimeoutException($"async generation of iteration {_next + 1}: policy version {Needed(_next)} was not pushed within {_deadline.TotalSeconds:F0} s");
                        Monitor.Wait(_gate, left);
                    }
                    if (_stopping || _next >= _end) return;
                    g = _next; version = _weights;
                    if (version != Needed(g)) throw new InvalidOperationException($"generation of iteration {g} holds policy version {version}, not {Needed(g)}");
                    // The batch the trainer trains with the weights this side now holds (OfferProximal: one whose
                    // weights are pushed, or held from the start, while a generation is still to come).
                    _proximalJobs.Remove(version, out job);
                    // interrupt: this generation takes the version that finish_batch would push after it.
                    _swap = _interruptStep > 0 && Needed(g + 1) > version ? (g, version, Needed(g + 1)) : null;
                    _swapTaken = false;
                    _pausedSeconds = 0;
                }
                long t0 = Stopwatch.GetTimestamp();
                // Its proximal log-probs first: the trainer is about to need them.
                if (job.Result is not null)
                {
                    try { job.Result.Set(_proximal!(job.Rollout)); }
                    catch (Exception e) { job.Result.Fail(e); throw; }
                }
                var batch = _sources(g);
                IReadOnlyList<CallRecord> records;
                try
                {
                    batch.Set(StageContext.BehaviourVersionKey, new[] { version });
                    records = _generation.RunIteration(batch, _cancel);
                    SetTokenVersions(batch, version, _swapTaken ? (_interruptStep, _swap!.Value.To) : null);
                    if (_scoring is not null) records = [.. records, .. _scoring.RunIteration(batch, _cancel)];
                }
                catch
                {
                    batch.Release();   // never queued: nothing else would release what its calls left with the workers
                    throw;
                }
                double seconds = Stopwatch.GetElapsedTime(t0).TotalSeconds - _pausedSeconds;
                lock (_gate)
                {
                    _ready[g] = new GeneratedBatch(g, batch, records, version);
                    OfferProximal(_ready[g]);
                    _next = g + 1;
                    _swap = null;
                    _busySeconds += seconds;
                    Monitor.PulseAll(_gate);
                }
            }
        }
        catch (Exception e)
        {
            lock (_gate)
            {
                _failure = e;
                foreach (var j in _proximalJobs.Values) j.Result.Fail(e);
                Monitor.PulseAll(_gate);
            }
        }
    }

    /// <summary>A stale batch (sampled by a version older than the one it trains with, its iteration):
    /// this side computes its proximal log-probs once it holds that version, which it does when the
    /// version is pushed (after train iteration it - 1, when generation it + N is still to come) or
    /// held from the start (a resume's first restored batch, under the same condition), before that
    /// generation. The last N iterations' versions are never pushed: the trainer computes theirs.
    /// The rule depends on the iteration alone, so a resumed run takes the same path as the
    /// uninterrupted one. Called under the lock, or before the thread starts.</summary>
    private void OfferProximal(GeneratedBatch b)
    {
        if (_proximal is null || b.Version >= b.Iteration || b.Iteration + _staleness >= _end || !b.Batch.Contains("sequences")) return;
        var result = new RolloutProximal(_deadline);
        b.Batch.Set(StageContext.RolloutProximalKey, result);
        b.Batch.OnRelease(result.Release);   // what the workers keep of them goes with the batch, taken or not
        _proximalJobs[b.Iteration] = (b.Batch.Get<Rollout>("sequences"), result);
    }

    /// <summary>Sets the batch's per-token policy versions (aligned with "logprobs": sequence by
    /// sequence, new token by new token): <paramref name="version"/>, or from token
    /// <paramref name="swap"/>.Step on <paramref name="swap"/>.To.</summary>
    private static void SetTokenVersions(SampleBatch batch, int version, (int Step, int To)? swap)
    {
        if (!batch.Contains("sequences")) return;
        var gen = batch.Get<Rollout>("sequences").Gen;
        // Lengths only: the ids may be with the workers that scored the answers (read only if something reads them).
        var versions = new int[gen.NewTokenCounts.Sum()];
        int o = 0;
        foreach (int n in gen.NewTokenCounts)
            for (int j = 0; j < n; j++) versions[o++] = swap is { } s && j >= s.Step ? s.To : version;
        batch.Set(StageContext.TokenVersionsKey, versions);
    }

    public (int Step, long Session)? PausePoint()
    {
        lock (_gate) return _swap is { } s ? (_interruptStep, s.Iteration) : null;
    }

    public void Paused(bool unfinished)
    {
        lock (_gate)
        {
            var (g, _, to) = _swap ?? throw new InvalidOperationException("a generation paused where no weight swap was planned");
            if (!unfinished) return;   // every sequence ended before the step: the push follows this generation, as in finish_batch
            _pausedIteration = g;
            Monitor.PulseAll(_gate);
            var until = DateTime.UtcNow + _deadline;
            long t0 = Stopwatch.GetTimestamp();
            while (_weights < to)
            {
                if (_stopping) throw new OperationCanceledException($"async generation of iteration {g + 1} stopped while paused for policy version {to}");
                var left = until - DateTime.UtcNow;
                if (left <= TimeSpan.Zero) throw new TimeoutException($"async generation of iteration {g + 1}: policy version {to} was not pushed within {_deadline.TotalSeconds:F0} s of its pause");
                Monitor.Wait(_gate, left);
            }
            _swapTaken = true;
            _pausedSeconds = Stopwatch.GetElapsedTime(t0).TotalSeconds;
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
        long t0 = Stopwatch.GetTimestamp();
        if (_interruptStep > 0)
        {
            // interrupt: generation g - 1 takes them at its pause (or, when it ended before, g at its start).
            if (g - 1 >= _end) return (0, 0);
            WaitFor(() => _next >= g || _pausedIteration == g - 1, () => $"generation of iteration {g} to reach decode step {_interruptStep}");
        }
        else
        {
            if (g >= _end) return (0, 0);
            WaitFor(() => _next >= g, () => $"generation of iteration {g}");
        }
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
        WaitFor(() => _next > last && _unscored.Count == 0, () => $"generation of iteration {last + 1}");
        lock (_gate) return _ready.Values.Where(b => b.Iteration >= next && b.Version < next).OrderBy(b => b.Iteration).ToList();
    }

    /// <summary>Stops generating and waits (with the deadline) for a generation in flight to end,
    /// so that nothing uses the generation side once this returns true.</summary>
    public bool Stop()
    {
        lock (_gate)
        {
            _stopping = true;
            foreach (var j in _proximalJobs.Values) j.Result.Fail(new OperationCanceledException("async generation stopped"));
            Monitor.PulseAll(_gate);
        }
        return _thread.Join(_deadline);
    }

    public void Dispose()
    {
        if (!Stop())
        {
            Console.Error.WriteLine($"realn: async generation: the generation in flight did not end within {_deadline.TotalSeconds:F0} s of the stop");
            return;   // its thread may still add a batch: leave them (the run fails anyway)
        }
        // Batches generated ahead that no iteration will train on (the stage stopped early, or failed):
        // the outputs their calls left with the workers are released with them.
        List<GeneratedBatch> left;
        lock (_gate)
        {
            left = [.. _ready.Values, .. _unscored];
            _ready.Clear();
            _unscored.Clear();
        }
        foreach (var b in left) b.Batch.Release();
    }
}

/// <summary>Forwards to the <see cref="AsyncRollouts"/> that the generation calls' handlers, made
/// before it, pause at.</summary>
internal sealed class PausePointRelay : IGenerationPausePoint
{
    public IGenerationPausePoint? Target { get; set; }
    private IGenerationPausePoint Point => Target ?? throw new InvalidOperationException("the async generation side is not running");
    public (int Step, long Session)? PausePoint() => Point.PausePoint();
    public void Paused(bool unfinished) => Point.Paused(unfinished);
}
