// A model's calls under an execution plan: an IReplica per call (in this process or in model
// worker processes), parameters reallocated from the train call's replica when it has moved on.
using ReaLNative.Engine.Checkpoints;
using ReaLNative.Engine.Layout;
using ReaLNative.Engine.Algorithms;
using ReaLNative.Engine.Generation;
using ReaLNative.Engine.Model;
using ReaLNative.Engine.Tasks;
using ReaLNative.Engine.Parallelism;
using ReaLNative.Engine.Stages;

namespace ReaLNative.Engine.Runs;

/// <summary>A call's replica under an execution plan. Before each operation it reallocates the
/// parameters from the model's train replica if that replica has stepped since (the train
/// replica itself is always current).</summary>
internal sealed class ReplicaCalls(IReplica replica, ModelReplicas owner) : IModelCalls
{
    private T Fresh<T>(Func<T> f)
    {
        owner.Refresh(replica);
        var result = f();
        owner.Used(replica);
        return result;
    }

    public float[] LogProbs(ScoredBatch b, float temperature) => Fresh(() => replica.LogProbs(b, temperature));
    public (float[] ActionValues, float[] LastScores) Values(ScoredBatch b) => Fresh(() => replica.Values(b));
    public ActionFloats KeptLogProbs(ScoredBatch b, float temperature) => Fresh(() => replica.KeptLogProbs(b, temperature));
    public (ActionFloats ActionValues, float[] LastScores) KeptValues(ScoredBatch b) => Fresh(() => replica.KeptValues(b));
    public GenerationResult KeptGenerate(IReadOnlyList<int[]> prompts, GenerationOptions opt, ScoringRequest? scoring = null) =>
        Fresh(() => replica.KeptGenerate(prompts, opt, scoring));
    public ActionFloats KeptActionValues(ScoredBatch b) => Fresh(() => replica.KeptActionValues(b));
    public float[] SequenceScores(ScoredBatch b) => Fresh(() => replica.SequenceScores(b));
    public void BackwardLogProbs(ScoredBatch b, float temperature, float[] d) => Fresh(() => { replica.BackwardLogProbs(b, temperature, d); return 0; });
    public void BackwardValues(ScoredBatch b, float[] dv, float[] dl) => Fresh(() => { replica.BackwardValues(b, dv, dl); return 0; });
    public double SftStep(ScoredBatch b) => Fresh(() => replica.SftStep(b));

    public float LearningRate => replica.LearningRate;

    public double Step()
    {
        double n = replica.Step();
        owner.Stepped(replica);
        return n;
    }

    public (ClippedPolicyStats Stats, double GradNorm) PolicyStep(ScoredBatch minibatch, int s0, int a0, float temperature, PolicyLossInputs inputs, bool ratioBaseFromForward)
    {
        var r = Fresh(() => replica.PolicyStep(minibatch, s0, a0, temperature, inputs, ratioBaseFromForward));
        owner.Stepped(replica);
        return r;
    }

    public (ValueLossStats Stats, double GradNorm) ValueStep(ScoredBatch minibatch, int a0, ValueLossInputs inputs)
    {
        var r = Fresh(() => replica.ValueStep(minibatch, a0, inputs));
        owner.Stepped(replica);
        return r;
    }

    public GenerationResult Generate(IReadOnlyList<int[]> prompts, GenerationOptions opt) => Fresh(() => replica.Generate(prompts, opt));
}

/// <summary>The replicas of one model role under a plan: one per distinct layout among its calls,
/// the train call's replica authoritative. Tracks versions so a replica is reallocated only when
/// the train replica has stepped since its last copy (ReaL moves train -> inference only).</summary>
internal sealed class ModelReplicas(string role) : IDisposable
{
    private readonly Dictionary<IReplica, long> _version = new(ReferenceEqualityComparer.Instance);
    private long _trainVersion;

    public string Role => role;
    public IReplica? Train { get; set; }
    public List<IReplica> All { get; } = [];

    public void Add(IReplica r) { All.Add(r); _version[r] = 0; }

    /// <summary>Bytes reallocated from the train replica to the others (bf16 weights where they hold bf16 only).</summary>
    public long ReallocatedBytes { get; private set; }

    private readonly HashSet<IReplica> _pinned = new(ReferenceEqualityComparer.Instance);

    public void Refresh(IReplica r)
    {
        if (_pinned.Contains(r) || Train is null || ReferenceEquals(r, Train) || _version[r] == _trainVersion) return;
        ReallocatedBytes += r.CopyFrom(Train);
        _version[r] = _trainVersion;
    }

    /// <summary>Takes <paramref name="r"/> out of the refresh before each operation: its weights
    /// change only by <see cref="Push"/> (the generation replica of an async run).</summary>
    public void Pin(IReplica r)
    {
        if (ReferenceEquals(r, Train)) throw new InvalidOperationException($"{role}: the train replica cannot be pinned");
        _pinned.Add(r);
        // It keeps its weights from now on; given back after an earlier call, they are refilled here.
        _releaseAfterUse.Remove(r);
        if (_version[r] == -1) Push(r);
    }

    /// <summary>Copies the train replica's weights into <paramref name="r"/> now.</summary>
    public void Push(IReplica r)
    {
        if (Train is null) throw new InvalidOperationException($"{role}: no train replica to push from");
        ReallocatedBytes += r.CopyFrom(Train);
        _version[r] = _trainVersion;
    }

    private readonly HashSet<IReplica> _releaseAfterUse = new(ReferenceEqualityComparer.Instance);

    /// <summary>Releases <paramref name="r"/>'s weights after each of its operations (<see cref="Used"/>):
    /// an inference replica of this trained model that serves one call, whose weights the model's
    /// next step makes stale before that call comes again. It is refilled before its next operation
    /// as any stale replica is. This is what the planner counts (Planner/Simulator.cs Memory: a
    /// trained model's weights in a layout other than its train call's are active bytes of the call,
    /// not resident), and what ReaL does with the destination of a reallocation.</summary>
    public void ReleaseAfterUse(IReplica r)
    {
        if (ReferenceEquals(r, Train) || Train is null) throw new InvalidOperationException($"{role}: only an inference replica of a trained model releases its weights between calls");
        _releaseAfterUse.Add(r);
    }

    /// <summary>Replicas whose weights were released so far (<see cref="ReleaseAfterUse"/>).</summary>
    public int Releases { get; private set; }

    /// <summary>After an operation of <paramref name="r"/>: gives its weights back where
    /// <see cref="ReleaseAfterUse"/> asked for it (never a pinned replica: async generation keeps
    /// the weights pushed to it), marking it stale.</summary>
    public void Used(IReplica r)
    {
        if (!_releaseAfterUse.Contains(r) || _pinned.Contains(r)) return;
        r.ReleaseWeights();
        _version[r] = -1;   // reallocated into before its next operation
        Releases++;
    }

    public void Stepped(IReplica r)
    {
        if (!ReferenceEquals(r, Train)) throw new InvalidOperationException($"{role}: only its train replica takes optimizer steps");
        _version[r] = ++_trainVersion;
    }

    /// <summary>Stage start: <paramref name="initialise"/> fills the source replica (the train replica,
    /// else the first) on its own shards, then every other replica is reallocated from it.</summary>
    public void Initialise(Action<IReplica> initialise)
    {
        var source = Train ?? All[0];
        initialise(source);
        foreach (var r in All)
        {
            if (!ReferenceEquals(r, source)) r.CopyFrom(source);   // set-up, not counted as a reallocation between calls
            _version[r] = _trainVersion;
        }
    }

    public bool IsPinned(IReplica r) => _pinned.Contains(r);

    public void Dispose()
    {
        foreach (var r in All) r.Dispose();
    }
}

/// <summary>A trained role's checkpoint state in its train replica: the shards write and read their
/// own parts (<see cref="IReplica.SaveState"/>, <see cref="IReplica.LoadState"/>).</summary>
internal sealed class ReplicaCheckpoint(string role, IReplica replica) : ICheckpointRole, ICheckpointTarget
{
    public string Role => role;
    public bool Bf16 => replica.Precision == ModelPrecision.Bf16;
    public long OptimizerStep { get => replica.OptimizerStep; set => replica.OptimizerStep = value; }
    public void Write(string path, CheckpointPart part) => replica.SaveState(path, part);
    public void Read(string path, CheckpointPart part, bool allowNonFinite) => replica.LoadState(path, part, allowNonFinite);
}
