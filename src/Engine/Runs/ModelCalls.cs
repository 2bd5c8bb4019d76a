// What a call handler does with a model, independent of where the model lives: on the single
// device (ModelOps on one LlamaModel) or laid out by an execution plan (an IReplica per call, in
// this process or in model worker processes, parameters reallocated from the train call's replica
// when it has moved on).
using ReaLNative.Engine.Algorithms;
using ReaLNative.Engine.Generation;
using ReaLNative.Engine.Model;
using ReaLNative.Engine.Optim;
using ReaLNative.Engine.Parallelism;

namespace ReaLNative.Engine.Runs;

/// <summary>Whole-batch model operations of a call (log-probs, values, their backward, an optimizer step, generation).</summary>
internal interface IModelCalls
{
    float[] LogProbs(ScoredBatch b, float temperature);
    (float[] ActionValues, float[] LastScores) Values(ScoredBatch b);
    /// <summary>Zeroes the gradients, then backward of sum_k d[k] * logp(action k).</summary>
    void BackwardLogProbs(ScoredBatch b, float temperature, float[] dActionLogp);
    /// <summary>Zeroes the gradients, then backward from value / last-score gradients.</summary>
    void BackwardValues(ScoredBatch b, float[] dActionValues, float[] dLastScores);
    /// <summary>Zeroes the gradients, then the SFT loss's backward; returns the loss.</summary>
    double SftStep(ScoredBatch b);
    double Step();
    /// <summary>Learning rate of the last optimizer step.</summary>
    float LearningRate { get; }
    GenerationResult Generate(IReadOnlyList<int[]> prompts, GenerationOptions opt);
}

/// <summary>The single-device model (and its optimizer, for the trained roles).</summary>
internal sealed class SingleModelCalls(LlamaModel m, Func<AdamW?> optimizer) : IModelCalls
{
    private float[]? _lse;
    private ScoredBatch? _lseFor;

    public float[] LogProbs(ScoredBatch b, float temperature)
    {
        var lp = ModelOps.LogProbs(m, b, temperature, out var lse);
        _lse = lse;
        _lseFor = b;
        return lp;
    }

    public (float[] ActionValues, float[] LastScores) Values(ScoredBatch b) => ModelOps.Values(m, b);

    public void BackwardLogProbs(ScoredBatch b, float temperature, float[] d)
    {
        if (!ReferenceEquals(_lseFor, b)) LogProbs(b, temperature);
        m.ZeroGrad();
        ModelOps.BackwardLogProbs(m, b, temperature, _lse!, d);
    }

    public void BackwardValues(ScoredBatch b, float[] dActionValues, float[] dLastScores)
    {
        m.ZeroGrad();
        ModelOps.BackwardValues(m, b, dActionValues, dLastScores);
    }

    public double SftStep(ScoredBatch b)
    {
        m.ZeroGrad();
        return ModelOps.SftStep(m, b);
    }

    public double Step() => Optimizer.StepOnce();
    private AdamW Optimizer => optimizer() ?? throw new InvalidOperationException("this model is not trained in this stage");
    public float LearningRate => Optimizer.Schedule.At(Optimizer.Step);

    public GenerationResult Generate(IReadOnlyList<int[]> prompts, GenerationOptions opt) => Generator.Generate(m, prompts, opt);
}

/// <summary>A call's replica under an execution plan. Before each operation it reallocates the
/// parameters from the model's train replica if that replica has stepped since (the train
/// replica itself is always current).</summary>
internal sealed class ReplicaCalls(IReplica replica, ModelReplicas owner) : IModelCalls
{
    private T Fresh<T>(Func<T> f)
    {
        owner.Refresh(replica);
        return f();
    }

    public float[] LogProbs(ScoredBatch b, float temperature) => Fresh(() => replica.LogProbs(b, temperature));
    public (float[] ActionValues, float[] LastScores) Values(ScoredBatch b) => Fresh(() => replica.Values(b));
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

    public void Refresh(IReplica r)
    {
        if (Train is null || ReferenceEquals(r, Train) || _version[r] == _trainVersion) return;
        r.CopyFrom(Train);
        _version[r] = _trainVersion;
    }

    public void Stepped(IReplica r)
    {
        if (!ReferenceEquals(r, Train)) throw new InvalidOperationException($"{role}: only its train replica takes optimizer steps");
        _version[r] = ++_trainVersion;
    }

    /// <summary>Every replica loaded from the full model (stage start, resume).</summary>
    public void LoadAll(LlamaModel full)
    {
        foreach (var r in All) { r.CopyFrom(full); _version[r] = _trainVersion; }
    }

    public void Dispose()
    {
        foreach (var r in All) r.Dispose();
    }
}
