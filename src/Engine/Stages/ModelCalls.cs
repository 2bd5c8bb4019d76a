// What a call handler does with a model, independent of where the model lives: on the single
// device (ModelOps on one LlamaModel, here) or laid out by an execution plan (Runs/ModelReplicas.cs:
// an IReplica per call, in this process or in model worker processes, parameters reallocated from
// the train call's replica when it has moved on).
using ReaLNative.Engine.Algorithms;
using ReaLNative.Engine.Generation;
using ReaLNative.Engine.Model;
using ReaLNative.Engine.Optim;

namespace ReaLNative.Engine.Stages;

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
