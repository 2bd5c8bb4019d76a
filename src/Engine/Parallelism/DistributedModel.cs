// A model role laid out over the devices of one process under a (pp, dp, tp) layout: one
// ShardReplica per device, every operation dispatched to all of its devices at once (one thread per
// device, SPMD, the shards talking over the in-process fabric) and its outputs merged from the
// collecting ranks (last pipeline stage, tensor rank 0 of each data replica). Reallocation moves
// parameters (and AdamW moments) between two such layouts of one model, or to and from the single
// full copy the run loop keeps for initialisation and checkpoints. This is the in-process
// execution of an execution plan (`realn run --in-process`, the embedding API); model worker
// processes run the same ShardReplica operations over UCX (Workers/RemoteReplica).
using ReaLNative.Engine.Generation;
using ReaLNative.Engine.Checkpoints;
using ReaLNative.Engine.Layout;
using ReaLNative.Engine.Model;
using ReaLNative.Engine.Tasks;
using ReaLNative.Engine.Optim;
using ReaLNative.Engine.Realloc;
using ReaLNative.Engine.Transport;

namespace ReaLNative.Engine.Parallelism;

/// <summary>The devices of one process: an in-process fabric, tag spaces for the models laid out
/// on it, and SPMD dispatch with a deadline.</summary>
internal sealed class LocalCluster : IReplicaHost
{
    private int _nextGroup;
    private readonly ITransport[] _ranks;

    /// <summary>A cluster of <paramref name="devices"/> in-process devices, each computing with
    /// <paramref name="threadsPerDevice"/> native threads (default: this process's native threads / devices, at least 1).</summary>
    public LocalCluster(int devices, TimeSpan? timeout = null, int? threadsPerDevice = null)
    {
        var fabric = new LocalFabric(devices);
        _ranks = Enumerable.Range(0, devices).Select(fabric.Rank).ToArray();
        foreach (var r in _ranks) r.Timeout = timeout ?? TimeSpan.FromSeconds(120);
        Timeout = timeout ?? TimeSpan.FromSeconds(120);
        if (threadsPerDevice is <= 0) throw new ArgumentOutOfRangeException(nameof(threadsPerDevice), threadsPerDevice, "must be positive");
        ThreadsPerDevice = threadsPerDevice ?? Math.Max(1, Interop.Native.GetNumThreads() / Math.Max(1, devices));
    }

    /// <summary>Devices in the cluster.</summary>
    public int Devices => _ranks.Length;

    /// <summary>Native (OpenMP) threads each device's operations run with: the host's cores shared out among the
    /// devices, as worker processes get them (one device per core on cpu-local), instead of every device thread
    /// starting a team of all the cores (two devices of a 2-core host ran 4 threads on 2 cores).</summary>
    public int ThreadsPerDevice { get; }

    /// <summary>Deadline of one SPMD dispatch and of each exchange inside it.</summary>
    public TimeSpan Timeout { get; }

    internal ITransport Transport(int device) => _ranks[device];

    public IReplica Create(string name, LlamaConfig config, bool scalarHead, ParallelLayout layout, int microBatches, OptimizerSpec? optimizer,
                           ModelPrecision precision = ModelPrecision.Fp32) =>
        new DistributedModel(this, name, config, scalarHead, layout, microBatches, optimizer is null ? null : optimizer.Create, precision);

    public void Dispose()
    {
        foreach (var r in _ranks) r.Dispose();
        _threads.Dispose();
    }

    internal int AllocateGroups(ParallelLayout layout)
    {
        int n = ShardComm.GroupIdsNeeded(layout);
        lock (this)
        {
            if (_nextGroup + n > 4096) throw new InvalidOperationException("the cluster's collective tag space (4096 groups) is exhausted");
            int b = _nextGroup;
            _nextGroup += n;
            return b;
        }
    }

    /// <summary>Runs <paramref name="body"/>(index) for every index on its own thread and waits for
    /// all; the first failure is rethrown naming the index; a body that does not finish within the
    /// deadline fails the dispatch (naming <paramref name="what"/>).</summary>
    public T[] Spmd<T>(int count, string what, Func<int, T> body)
    {
        if (InProcessTimings.Enabled)
        {
            long w0 = System.Diagnostics.Stopwatch.GetTimestamp();
            var bodies = new double[count];
            var r = SpmdCore(count, what, i => { long b0 = System.Diagnostics.Stopwatch.GetTimestamp(); try { return body(i); } finally { bodies[i] = System.Diagnostics.Stopwatch.GetElapsedTime(b0).TotalSeconds; } });
            InProcessTimings.Add(what, count, System.Diagnostics.Stopwatch.GetElapsedTime(w0).TotalSeconds, bodies.Max(), bodies.Min());
            return r;
        }
        return SpmdCore(count, what, body);
    }

    private T[] SpmdCore<T>(int count, string what, Func<int, T> body)
    {
        var results = new T[count];
        if (count == 1) { results[0] = WithDeviceThreads(() => body(0)); return results; }
        var errors = new Exception?[count];
        // Index 0 runs on this thread, the others on the cluster's kept threads (SpmdThreads): an
        // operation used to start a new thread per device, and with it a new OpenMP team, which
        // cost two-device in-process operations 2-14 ms beyond their slowest device, growing with
        // the host's load (REALN_INPROCESS_TIMING).
        var done = new CountdownEvent(count - 1);   // not disposed: a body past the deadline still signals it
        for (int i = 1; i < count; i++)
        {
            int k = i;
            _threads.Run(() =>
            {
                try { results[k] = WithDeviceThreads(() => body(k)); }
                catch (Exception e) { errors[k] = e; }
            }, () => done.Signal());
        }
        var deadline = DateTime.UtcNow + Timeout + TimeSpan.FromSeconds(5);
        try { results[0] = WithDeviceThreads(() => body(0)); }
        catch (Exception e) { errors[0] = e; }
        if (!done.Wait(Max(TimeSpan.Zero, deadline - DateTime.UtcNow)))
            throw new TimeoutException($"{what}: a device did not finish within {Timeout.TotalSeconds:F0} s");
        // Report the root cause, not the peers' timeouts waiting for the failed rank.
        var first = errors.Select((e, i) => (e, i)).Where(x => x.e is not null).OrderBy(x => x.e is TimeoutException ? 1 : 0).FirstOrDefault();
        if (first.e is not null) throw new InvalidOperationException($"{what}: device rank {first.i} failed: {first.e.Message}", first.e);
        return results;
    }

    private readonly SpmdThreads _threads = new();

    private static TimeSpan Max(TimeSpan a, TimeSpan b) => a > b ? a : b;

    /// <summary>Runs <paramref name="body"/> on this thread with <see cref="ThreadsPerDevice"/> native threads (the OpenMP
    /// thread count is per calling thread), restoring the thread's count after.</summary>
    private T WithDeviceThreads<T>(Func<T> body)
    {
        int saved = Interop.Native.GetNumThreads();
        if (saved == ThreadsPerDevice) return body();
        Interop.Native.SetNumThreads(ThreadsPerDevice);
        try { return body(); }
        finally { Interop.Native.SetNumThreads(saved); }
    }
}

/// <summary>The threads a <see cref="LocalCluster"/> runs its SPMD bodies on, kept between
/// operations: each keeps its native (OpenMP) thread team, which a new thread would start afresh.
/// A body takes an idle thread or, when every one is busy (several operations on disjoint meshes
/// at once), a new one, so all bodies of an operation run at once (they exchange data). A thread
/// whose body never returns stays busy and is never handed another.</summary>
internal sealed class SpmdThreads : IDisposable
{
    private sealed class Worker
    {
        public readonly SemaphoreSlim Go = new(0);
        public Action? Job;
        public Action? Done;
    }

    private readonly Stack<Worker> _idle = new();
    private readonly List<Worker> _all = [];
    private bool _disposed;

    /// <summary>Runs <paramref name="job"/> (which catches its own exceptions) on a kept thread, then
    /// <paramref name="done"/> once that thread is back among the idle ones: a caller that waits for
    /// <paramref name="done"/> and dispatches again finds it there (signalling from inside the job let
    /// the next operation start a new thread while this one was still on its way back).</summary>
    public void Run(Action job, Action done)
    {
        Worker w;
        lock (_idle)
        {
            ObjectDisposedException.ThrowIf(_disposed, this);
            if (!_idle.TryPop(out w!))
            {
                w = new Worker();
                _all.Add(w);
                var worker = w;
                new Thread(() => Loop(worker)) { IsBackground = true, Name = "LocalCluster device" }.Start();
            }
        }
        w.Job = job;
        w.Done = done;
        w.Go.Release();
    }

    private void Loop(Worker w)
    {
        while (true)
        {
            w.Go.Wait();
            var job = w.Job;
            if (job is null) return;   // disposed
            var done = w.Done!;
            w.Job = null; w.Done = null;
            job();   // catches its own exceptions (SpmdCore)
            bool disposed;
            lock (_idle)
            {
                disposed = _disposed;
                if (!disposed) _idle.Push(w);
            }
            done();
            if (disposed) return;
        }
    }

    public void Dispose()
    {
        lock (_idle)
        {
            if (_disposed) return;
            _disposed = true;
            // Idle threads end; a busy one ends after its body.
            while (_idle.TryPop(out var w)) { w.Job = null; w.Go.Release(); }
        }
    }
}

/// <summary>
/// A model role's replica under one layout, wherever its shards live: in this process
/// (<see cref="DistributedModel"/>) or in model worker processes (Workers/RemoteReplica). The
/// operations mirror Algorithms/ModelOps.cs on whole batches; each runs on all of the layout's
/// devices. Reallocation moves parameters (and AdamW moments) between two replicas of one model,
/// or to and from the single full copy the run loop keeps for initialisation and checkpoints.
/// </summary>
internal interface IReplica : IDisposable
{
    ParallelLayout Layout { get; }
    LlamaConfig Config { get; }
    bool ScalarHead { get; }
    int MicroBatches { get; }
    /// <summary>Whether the replica has an optimizer (the train call's replica).</summary>
    bool Trainable { get; }
    /// <summary>Learning rate of the last optimizer step.</summary>
    float LearningRate { get; }
    /// <summary>Weight precision: with bf16, a trainable replica keeps fp32 master weights (and
    /// AdamW moments) and runs on their bf16 copy; an inference replica holds bf16 weights only.</summary>
    ModelPrecision Precision { get; }
    /// <summary>Whether the replica holds bf16 weights only (a bf16 inference replica).</summary>
    bool HoldsBf16Only => Precision == ModelPrecision.Bf16 && !Trainable;

    float[] LogProbs(ScoredBatch batch, float temperature);
    (float[] ActionValues, float[] LastScores) Values(ScoredBatch batch);
    /// <summary>As <see cref="LogProbs"/>, for a batch a synchronous run consumes on-policy: a replica
    /// in worker processes leaves the log-probs of a batch its workers hold with them (fetched on first read).</summary>
    ActionFloats KeptLogProbs(ScoredBatch batch, float temperature) => ActionFloats.Here(LogProbs(batch, temperature));
    /// <summary>As <see cref="Values"/>, leaving the per-action values with the workers as <see cref="KeptLogProbs"/> does.</summary>
    (ActionFloats ActionValues, float[] LastScores) KeptValues(ScoredBatch batch)
    {
        var (a, l) = Values(batch);
        return (ActionFloats.Here(a), l);
    }
    /// <summary>As <see cref="KeptValues"/>, for a caller that reads no last score (critic_inf): a replica
    /// in worker processes that leaves the values with its workers does not send the last scores either.</summary>
    ActionFloats KeptActionValues(ScoredBatch batch) => KeptValues(batch).ActionValues;
    /// <summary>The last scores of <see cref="Values"/> alone (a reward model's sequence scores): a
    /// replica in worker processes has its collecting ranks send no per-action value.</summary>
    float[] SequenceScores(ScoredBatch batch) => Values(batch).LastScores;
    /// <summary>As <see cref="Generate"/>, leaving the log-probs with the workers as <see cref="KeptLogProbs"/> does. A filtered generation's sampling masks are
    /// then not sent at all (the result's Masks fails: a synchronous run reads none). With
    /// <paramref name="scoring"/>, replicas in worker processes score the answers where they are
    /// (the result's Scores; Tasks/SequenceScoring.cs); elsewhere the caller scores them.</summary>
    GenerationResult KeptGenerate(IReadOnlyList<int[]> prompts, GenerationOptions opt, ScoringRequest? scoring = null) => Generate(prompts, opt);
    void BackwardLogProbs(ScoredBatch batch, float temperature, float[] dActionLogp);
    void BackwardValues(ScoredBatch batch, float[] dActionValues, float[] dLastScores);
    double SftStep(ScoredBatch batch);
    double Step();
    /// <summary>One optimizer step of the clipped policy loss on minibatch <paramref name="batch"/>
    /// (sequences from <paramref name="s0"/>, actions from <paramref name="a0"/> of the call's
    /// rollout), the loss and its per-token gradient computed by the ranks of the last pipeline stage
    /// (ShardReplica.PolicyStep); returns the minibatch's loss figures (those of Losses.ClippedPolicy
    /// on it) and the gradient norm. <paramref name="inputs"/> is one object per train call.</summary>
    (ClippedPolicyStats Stats, double GradNorm) PolicyStep(ScoredBatch batch, int s0, int a0, float temperature, PolicyLossInputs inputs, bool ratioBaseFromForward);
    /// <summary>One optimizer step of the clipped value loss on minibatch <paramref name="batch"/>
    /// (actions from <paramref name="a0"/> of the call's rollout), computed by the last stage's ranks
    /// (ShardReplica.ValueStep); the minibatch's loss figures and the gradient norm.</summary>
    (ValueLossStats Stats, double GradNorm) ValueStep(ScoredBatch batch, int a0, ValueLossInputs inputs);
    GenerationResult Generate(IReadOnlyList<int[]> prompts, GenerationOptions opt);

    /// <summary>Gives the pages of this inference replica's weights back to the system on every one
    /// of its devices (<see cref="LlamaModel.ReleaseWeights"/>): between the calls of a trained model's
    /// replica whose weights go stale at the model's next step (the planner counts them only while
    /// its call runs). The next <see cref="CopyFrom(IReplica)"/> into it takes pages again and refills
    /// them; an operation before that throws. A worker replica releases with its workers' next command.</summary>
    void ReleaseWeights();

    /// <summary>Parameter reallocation from another replica of the same model (bit-exact): bf16
    /// weights into a replica that holds bf16 only, else the fp32 master (<see cref="ParameterBuffers.Between"/>).
    /// Returns the bytes the reallocation plan moved (between devices and within them).</summary>
    long CopyFrom(IReplica source);
    /// <summary>Scatters a full single-device model (same architecture) into the shards (bf16 weights
    /// into a replica that holds bf16 only, else the fp32 master).</summary>
    void CopyFrom(LlamaModel full);
    /// <summary>Gathers the shards into a full single-device model (the fp32 master, or bf16 weights
    /// into a full model that holds bf16 only).</summary>
    void CopyTo(LlamaModel full);
    /// <summary>Every shard initialises itself as a single device initialises the whole model
    /// (<see cref="ShardReplica.Initialise"/>: seeded per-tensor streams, then its slices of
    /// <paramref name="checkpoint"/> by byte range, then bf16 where the replica holds bf16 only);
    /// nobody holds the whole model. Bit-identical to scattering the single device's model.</summary>
    void Initialise(int seed, string? checkpoint = null, bool sharedOnly = false, bool allowNonFinite = false);
    /// <summary>Writes checkpoint part <paramref name="part"/> to <paramref name="path"/> (the weights'
    /// HF folder, or the flat file): each shard writes its own pieces into the files
    /// (<see cref="ShardedSave"/>); returns once every file is complete and fsynced. Nobody holds
    /// the whole model, and no shard is copied.</summary>
    void SaveState(string path, CheckpointPart part);
    /// <summary>Every shard reads its slices of checkpoint part <paramref name="part"/> from
    /// <paramref name="path"/> by byte range (whatever layout wrote it).</summary>
    void LoadState(string path, CheckpointPart part, bool allowNonFinite = false);
    /// <summary>The optimizer's step count (checkpoints; set on resume).</summary>
    long OptimizerStep { get; set; }
    /// <summary>Scatters (toShards) or gathers AdamW moments and the step count between the shards
    /// and a full model's optimizer (checkpoints and resume).</summary>
    void MoveOptimizerState(AdamW full, bool toShards);
}

/// <summary>The parameter buffer a reallocation moves: the fp32 master weights, or the bf16 weights
/// (half the bytes).</summary>
internal enum ParameterBuffer
{
    Fp32Master,
    Bf16,
}

/// <summary>Which parameter buffer moves between two holders of one model's weights (replicas or the
/// full model): a destination that keeps an fp32 master gets the source's master; one that holds
/// bf16 only gets the source's bf16 weights (its copy of the master, refreshed, or its own).</summary>
internal static class ParameterBuffers
{
    public static int ElementSize(ParameterBuffer b) => b == ParameterBuffer.Bf16 ? 2 : 4;

    /// <summary>The buffer that moves from a source (precision, holds bf16 only) to a destination;
    /// a pair that cannot be served (the destination needs a master the source lacks, or bf16 from
    /// an fp32 source) throws naming <paramref name="what"/>.</summary>
    public static ParameterBuffer Between(string what, ModelPrecision srcPrecision, bool srcBf16Only, ModelPrecision dstPrecision, bool dstBf16Only)
    {
        if (!dstBf16Only)
            return srcBf16Only
                ? throw new ArgumentException($"{what}: the destination keeps fp32 master weights ({Name(dstPrecision)}), the source holds bf16 weights only")
                : ParameterBuffer.Fp32Master;
        return srcPrecision == ModelPrecision.Bf16 ? ParameterBuffer.Bf16
            : throw new ArgumentException($"{what}: the destination holds bf16 weights only, the source's precision is fp32");
    }

    private static string Name(ModelPrecision p) => p == ModelPrecision.Bf16 ? "bf16" : "fp32";
}

/// <summary>
/// One model's replica under one layout on a <see cref="LocalCluster"/>: a <see cref="ShardReplica"/>
/// per device, every operation dispatched to all of them at once (one thread per device).
/// </summary>
internal sealed unsafe class DistributedModel : IReplica
{
    private readonly LocalCluster _cluster;
    private readonly ShardReplica?[] _ranks;
    private readonly string _name;

    /// <summary>Shards of a model (parameters uninitialised; fill them with <see cref="CopyFrom(LlamaModel)"/>).
    /// <paramref name="optimizer"/> makes a trainable replica (one AdamW per shard).</summary>
    public DistributedModel(LocalCluster cluster, string name, LlamaConfig config, bool scalarHead, ParallelLayout layout,
                            int microBatches, Func<LlamaModel, AdamW>? optimizer = null, ModelPrecision precision = ModelPrecision.Fp32)
    {
        foreach (var d in layout.Devices)
            if ((uint)d >= (uint)cluster.Devices) throw new ArgumentException($"{name}: layout device {d} outside the cluster's {cluster.Devices} devices");
        if (microBatches < 1) throw new ArgumentException($"{name}: micro_batches must be >= 1 (got {microBatches})");
        _cluster = cluster;
        _name = name;
        Layout = layout;
        Config = config;
        ScalarHead = scalarHead;
        MicroBatches = microBatches;
        Precision = precision;
        int groups = cluster.AllocateGroups(layout);
        _ranks = new ShardReplica?[layout.Devices.Count];
        try
        {
            for (int r = 0; r < _ranks.Length; r++)
                _ranks[r] = new ShardReplica(cluster.Transport(layout.Devices[r]), config, scalarHead, layout, r, groups, microBatches, optimizer, precision);
        }
        catch
        {
            Dispose();
            throw;
        }
    }

    public ParallelLayout Layout { get; }
    public LlamaConfig Config { get; }
    public bool ScalarHead { get; }
    public int MicroBatches { get; }
    public ModelPrecision Precision { get; }
    public bool Trainable => _ranks[0]!.Optimizer is not null;
    public float LearningRate => _ranks[0]!.Optimizer is { } o ? o.Schedule.At(o.Step) : throw new InvalidOperationException($"{_name}: an inference replica has no optimizer");
    /// <summary>The shard of layout rank r.</summary>
    public LlamaModel Shard(int rank) => _ranks[rank]!.Shard;
    /// <summary>The optimizer of layout rank r (null for an inference replica).</summary>
    public AdamW? Optimizer(int rank) => _ranks[rank]!.Optimizer;

    /// <summary>An operation on every shard at once; afterwards each shard's activation arenas go back to the
    /// process's ArenaBlocks (nothing of them is read after the operation), as in a worker process: the replicas
    /// whose operations follow one another on a device share its pre-faulted blocks. Refused before any rank
    /// starts on a replica whose weights were released (a rank that failed alone would leave its pipeline
    /// peers' messages behind).</summary>
    private T[] Run<T>(string op, Func<ShardReplica, T> body)
    {
        if (op != "initialise" && _ranks.Any(r => r!.Shard.WeightsReleased))
            throw new InvalidOperationException($"{_name} {op} on {Layout}: the replica's weights were released after its last call; reallocate into it first");
        return _cluster.Spmd(_ranks.Length, $"{_name} {op} on {Layout}", r =>
        {
            try { return body(_ranks[r]!); }
            finally { _ranks[r]!.Shard.ReleaseActivations(); }
        });
    }

    private static IEnumerable<T> Collected<T>(T?[] parts) where T : class => parts.Where(p => p is not null)!;

    public float[] LogProbs(ScoredBatch batch, float temperature) =>
        ShardOutput.MergeActions(batch, Collected(Run("logprobs", s => s.LogProbs(batch, temperature))));

    public (float[] ActionValues, float[] LastScores) Values(ScoredBatch batch)
    {
        if (!ScalarHead) throw new ArgumentException($"{_name}: values need a scalar-head model");
        var parts = Collected(Run("values", s => s.Values(batch))).ToList();
        return (ShardOutput.MergeActions(batch, parts), ShardOutput.MergeLast(batch.Packed.Count, parts));
    }

    public void BackwardLogProbs(ScoredBatch batch, float temperature, float[] dActionLogp) =>
        Run("train (log-probs)", s => { s.BackwardLogProbs(batch, temperature, dActionLogp); return 0; });

    public void BackwardValues(ScoredBatch batch, float[] dActionValues, float[] dLastScores) =>
        Run("train (values)", s => { s.BackwardValues(batch, dActionValues, dLastScores); return 0; });

    public double SftStep(ScoredBatch batch) => Run("train (sft)", s => s.SftShare(batch)).Sum();

    public double Step()
    {
        if (!Trainable) throw new InvalidOperationException($"{_name}: an inference replica has no optimizer");
        return Run("optimizer step", s => s.Step())[0];
    }

    public (ClippedPolicyStats Stats, double GradNorm) PolicyStep(ScoredBatch batch, int s0, int a0, float temperature, PolicyLossInputs inputs, bool ratioBaseFromForward)
    {
        if (!Trainable) throw new InvalidOperationException($"{_name}: an inference replica has no optimizer");
        var (tokens, seqs) = inputs.Minibatch(batch, s0, a0);
        // The ranks read the caller's arrays; one rank per data-parallel part writes a forward's ratio base.
        var r = Run("policy step", s => s.PolicyStep(batch, s0, a0, temperature, inputs, tokens, seqs, ratioBaseFromForward, writeRatioBase: s.Collects));
        return (r.Single(x => x.Stats is not null).Stats!.Value, r[0].GradNorm);
    }

    public (ValueLossStats Stats, double GradNorm) ValueStep(ScoredBatch batch, int a0, ValueLossInputs inputs)
    {
        if (!Trainable) throw new InvalidOperationException($"{_name}: an inference replica has no optimizer");
        if (!ScalarHead) throw new ArgumentException($"{_name}: values need a scalar-head model");
        inputs.CheckMinibatch(batch, a0);
        var r = Run("value step", s => s.ValueStep(batch, a0, inputs));
        return (r.Single(x => x.Stats is not null).Stats!.Value, r[0].GradNorm);
    }

    public GenerationResult Generate(IReadOnlyList<int[]> prompts, GenerationOptions opt)
    {
        var parts = Run("generate", s => s.Generate(prompts, opt) is { } p ? new Tuple<int[], GenerationResult>(p.Ids, p.Result) : null);
        return ShardReplica.MergeGeneration(prompts, opt, Collected(parts).Select(t => (t.Item1, t.Item2)));
    }

    // ------------------------------------------------------------------ reallocation

    private Dictionary<int, InProcessRealloc.DeviceBuffer> Buffers(Func<int, nint> ptr, int elementSize) =>
        Enumerable.Range(0, _ranks.Length).ToDictionary(r => Layout.Devices[r], r => new InProcessRealloc.DeviceBuffer(ptr(r), _ranks[r]!.Shard.ParameterCount * elementSize));

    /// <summary>The shard of rank r's parameter buffer of kind <paramref name="b"/>.</summary>
    private nint Parameters(int r, ParameterBuffer b) => ParameterPointer(_ranks[r]!.Shard, b);

    private static nint ParameterPointer(LlamaModel m, ParameterBuffer b) =>
        b == ParameterBuffer.Bf16 ? (nint)m.Bf16ParametersPointer : (nint)m.ParametersPointer;

    /// <summary>The reallocation plan of this model between two layouts, built once and kept with the model: the same layout
    /// changes run every iteration, and a kept plan also keeps its copy pieces (<see cref="InProcessRealloc"/>). Keyed by the
    /// layouts' devices and degrees (ParallelLayout.Key) and the element size; the worker
    /// processes keep theirs the same way (ModelWorker.Realloc).</summary>
    private ReallocPlan Plan(ParallelLayout from, ParallelLayout to, int elementSize) =>
        _plans.GetOrAdd((from.Key, to.Key, elementSize),
                        _ => ReallocPlan.Build(from, to, ParamLayout.Factory(Config, ScalarHead), elementSize, _ => 0));

    private readonly System.Collections.Concurrent.ConcurrentDictionary<(string, string, int), ReallocPlan> _plans = new();

    public long CopyFrom(IReplica source)
    {
        if (source is not DistributedModel src) throw new ArgumentException($"{_name}: an in-process replica copies only from in-process replicas");
        if (src.Config != Config || src.ScalarHead != ScalarHead) throw new ArgumentException($"{_name}: replicas of different models");
        var kind = ParameterBuffers.Between($"{_name}: reallocation from {src._name}", src.Precision, ((IReplica)src).HoldsBf16Only, Precision, ((IReplica)this).HoldsBf16Only);
        int es = ParameterBuffers.ElementSize(kind);
        var plan = Plan(src.Layout, Layout, es);
        foreach (var r in _ranks) r!.Shard.ReacquireWeights();   // where released: every byte is written next (the plan covers the shards)
        InProcessRealloc.Execute(plan, src.Buffers(r => src.Parameters(r, kind), es), Buffers(r => Parameters(r, kind), es));
        if (kind == ParameterBuffer.Bf16) foreach (var r in _ranks) r!.Shard.BiasesFromBf16();
        return plan.RemoteBytes + plan.LocalBytes;
    }

    private static readonly ParallelLayout Single = ParallelLayout.Contiguous(0, 1, 1, 1);

    public void ReleaseWeights()
    {
        if (Trainable) throw new InvalidOperationException($"{_name}: a train replica keeps its weights");
        foreach (var r in _ranks) r!.Shard.ReleaseWeights();
    }

    public void CopyFrom(LlamaModel full)
    {
        var kind = ParameterBuffers.Between($"{_name}: load from the full model", full.Precision, full.HoldsBf16Only, Precision, ((IReplica)this).HoldsBf16Only);
        Move(ParameterPointer(full, kind), full.ParameterCount, ParameterBuffers.ElementSize(kind), toShards: true, r => Parameters(r, kind));
        if (kind == ParameterBuffer.Bf16) foreach (var r in _ranks) r!.Shard.BiasesFromBf16();
    }

    public void CopyTo(LlamaModel full)
    {
        var kind = ParameterBuffers.Between($"{_name}: gather into the full model", Precision, ((IReplica)this).HoldsBf16Only, full.Precision, full.HoldsBf16Only);
        Move(ParameterPointer(full, kind), full.ParameterCount, ParameterBuffers.ElementSize(kind), toShards: false, r => Parameters(r, kind));
    }

    public void Initialise(int seed, string? checkpoint = null, bool sharedOnly = false, bool allowNonFinite = false) =>
        Run("initialise", s => { s.Initialise(seed, 0.02f, checkpoint, sharedOnly, allowNonFinite); return 0; });

    public void SaveState(string path, CheckpointPart part)
    {
        bool bf16Weights = part == CheckpointPart.Weights && Precision == ModelPrecision.Bf16;
        var targets = ShardedSave.Prepare(path, part, Layout, Config, ScalarHead, bf16Weights);
        Run($"save {Path.GetFileName(path)}", s => { s.SaveState(part, targets); return 0; });
        ShardedSave.Finish(Path.GetFullPath(path), part, Layout, Config, ScalarHead, bf16Weights);
    }

    public void LoadState(string path, CheckpointPart part, bool allowNonFinite = false)
    {
        path = Path.GetFullPath(path);
        Run($"load {Path.GetFileName(path)}", s => { s.LoadState(part, path, allowNonFinite); return 0; });
    }

    public long OptimizerStep
    {
        get => (_ranks[0]!.Optimizer ?? throw new InvalidOperationException($"{_name}: an inference replica has no optimizer")).Step;
        set { foreach (var r in _ranks) (r!.Optimizer ?? throw new InvalidOperationException($"{_name}: an inference replica has no optimizer")).Step = value; }
    }

    public void MoveOptimizerState(AdamW full, bool toShards)
    {
        if (!Trainable) throw new InvalidOperationException($"{_name}: an inference replica has no optimizer");
        fixed (float* m = full.FirstMoment)
        fixed (float* v = full.SecondMoment)
        {
            long n = full.FirstMoment.Length;
            Move((nint)m, n, 4, toShards, r => { fixed (float* p = _ranks[r]!.Optimizer!.FirstMoment) return (nint)p; });
            Move((nint)v, n, 4, toShards, r => { fixed (float* p = _ranks[r]!.Optimizer!.SecondMoment) return (nint)p; });
        }
        if (toShards) foreach (var s in _ranks) s!.Optimizer!.Step = full.Step;
        else full.Step = _ranks[0]!.Optimizer!.Step;
    }

    private void Move(nint full, long count, int elementSize, bool toShards, Func<int, nint> shardPtr)
    {
        var one = new Dictionary<int, InProcessRealloc.DeviceBuffer> { [Single.Devices[0]] = new(full, count * elementSize) };
        // The full copy is "device 0 alone": a device the layout may also use; buffers are per side, so that is fine.
        if (toShards) InProcessRealloc.Execute(Plan(Single, Layout, elementSize), one, Buffers(shardPtr, elementSize));
        else InProcessRealloc.Execute(Plan(Layout, Single, elementSize), Buffers(shardPtr, elementSize), one);
    }

    public void Dispose()
    {
        foreach (var s in _ranks) s?.Dispose();
    }
}

/// <summary>REALN_INPROCESS_TIMING=1: per operation of in-process devices (an SPMD dispatch of one replica's operation), the
/// master's wall time and the slowest and the fastest device's time inside it; printed at exit with a last line that
/// `realn profile` reads: what an operation on more than one device costs beyond its fastest device's compute (the
/// threads' start and join, splitting and merging, and waiting for the slowest device), by kind.</summary>
internal static class InProcessTimings
{
    public static readonly bool Enabled = System.Environment.GetEnvironmentVariable("REALN_INPROCESS_TIMING") == "1";
    private static readonly Dictionary<string, (int N, double Wall, double Max, double Min)> Rows = new();
    private static readonly Lock Gate = new();

    /// <summary>The summary line's start.</summary>
    public const string SummaryPrefix = "in-process beyond compute by kind, ms:";

    static InProcessTimings()
    {
        if (Enabled) AppDomain.CurrentDomain.ProcessExit += (_, _) => Console.Error.Write(Table());
    }

    public static void Add(string what, int devices, double wall, double max, double min)
    {
        int on = what.IndexOf(" on ", StringComparison.Ordinal);
        string op = on > 0 ? what[..on] : what;
        int paren = op.IndexOf(") ", StringComparison.Ordinal);   // "actor_gen (actor) generate": the operation after the replica
        string key = $"{(paren > 0 ? op[(paren + 2)..] : op)} x{devices}";
        lock (Gate)
        {
            Rows.TryGetValue(key, out var r);
            Rows[key] = (r.N + 1, r.Wall + wall, r.Max + max, r.Min + min);
        }
    }

    /// <summary>The table and the summary line: by kind, the mean of (wall - fastest device) over operations on more than
    /// one device: generate; forward (logprobs, values); backward (a train step's backward, train (log-probs) or train
    /// (values), plus its optimizer step, which is dispatched on its own in process).</summary>
    public static string Table()
    {
        lock (Gate)
        {
            var sb = new System.Text.StringBuilder();
            sb.AppendLine("in-process operations (ms per operation): op, count, master wall, slowest device, fastest device");
            foreach (var (k, r) in Rows.OrderBy(x => x.Key, StringComparer.Ordinal))
                sb.AppendLine(FormattableString.Invariant($"  {k,-28} {r.N,6} {r.Wall / r.N * 1e3,9:F3} {r.Max / r.N * 1e3,9:F3} {r.Min / r.N * 1e3,9:F3}"));
            double? Beyond(Func<string, bool> op)
            {
                var rows = Rows.Where(x => !x.Key.EndsWith(" x1", StringComparison.Ordinal) && op(x.Key[..x.Key.LastIndexOf(" x", StringComparison.Ordinal)])).Select(x => x.Value).ToList();
                int n = rows.Sum(r => r.N);
                return n == 0 ? null : Math.Max(0, rows.Sum(r => r.Wall - r.Min) / n * 1e3);
            }
            var gen = Beyond(o => o == "generate");
            var fwd = Beyond(o => o is "logprobs" or "values");
            // a train step: one fused operation where the devices compute the loss (policy step, value step: forward, loss,
            // backward and optimizer step), else a backward after the master's loss and the optimizer step dispatched apart
            var fused = Beyond(o => o is "policy step" or "value step");
            var bwd = Beyond(o => o is "train (log-probs)" or "train (values)");
            var opt = Beyond(o => o == "optimizer step");
            string F(double? v) => v is { } x ? x.ToString("F3", System.Globalization.CultureInfo.InvariantCulture) : "-";
            sb.AppendLine($"{SummaryPrefix} generate {F(gen)} forward {F(fwd)} backward {F(fused ?? (bwd is { } b ? b + (opt ?? 0) : null))}");
            return sb.ToString();
        }
    }

    /// <summary>Reads the summary line of <see cref="Table"/> back (ms by kind; null for a kind it lacks).</summary>
    public static (double? GenerateMs, double? ForwardMs, double? BackwardMs)? ReadSummary(string log)
    {
        var line = log.Split('\n').LastOrDefault(l => l.StartsWith(SummaryPrefix, StringComparison.Ordinal));
        if (line is null) return null;
        var f = line[SummaryPrefix.Length..].Trim().Split(' ', StringSplitOptions.RemoveEmptyEntries);
        double? Get(string kind)
        {
            int i = Array.IndexOf(f, kind);
            return i >= 0 && i + 1 < f.Length && double.TryParse(f[i + 1], System.Globalization.NumberStyles.Float, System.Globalization.CultureInfo.InvariantCulture, out double v) ? v : null;
        }
        return (Get("generate"), Get("forward"), Get("backward"));
    }
}
