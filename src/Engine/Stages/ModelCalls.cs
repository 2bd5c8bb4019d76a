// What a call handler does with a model, independent of where the model lives: on the single
// device (ModelOps on one LlamaModel, here) or laid out by an execution plan (Runs/ModelReplicas.cs:
// an IReplica per call, in this process or in model worker processes, parameters reallocated from
// the train call's replica when it has moved on).
using ReaLNative.Engine.Algorithms;
using ReaLNative.Engine.Generation;
using ReaLNative.Engine.Model;
using ReaLNative.Engine.Tasks;
using ReaLNative.Engine.Optim;
using ReaLNative.Engine.Parallelism;

namespace ReaLNative.Engine.Stages;

/// <summary>Whole-batch model operations of a call (log-probs, values, their backward, an optimizer step, generation).</summary>
internal interface IModelCalls
{
    float[] LogProbs(ScoredBatch b, float temperature);
    (float[] ActionValues, float[] LastScores) Values(ScoredBatch b);
    /// <summary>As <see cref="LogProbs"/>, for a batch a synchronous run consumes on-policy: worker
    /// processes that hold the batch keep the log-probs, fetched on first read (IReplica.KeptLogProbs).</summary>
    ActionFloats KeptLogProbs(ScoredBatch b, float temperature) => ActionFloats.Here(LogProbs(b, temperature));
    /// <summary>As <see cref="Values"/>, the per-action values kept as <see cref="KeptLogProbs"/> keeps log-probs.</summary>
    (ActionFloats ActionValues, float[] LastScores) KeptValues(ScoredBatch b)
    {
        var (a, l) = Values(b);
        return (ActionFloats.Here(a), l);
    }
    /// <summary>As <see cref="KeptValues"/>, for a caller that reads no last score (critic_inf): nor do they come back.</summary>
    ActionFloats KeptActionValues(ScoredBatch b) => KeptValues(b).ActionValues;
    /// <summary>The last scores of <see cref="Values"/> alone (IReplica.SequenceScores).</summary>
    float[] SequenceScores(ScoredBatch b) => Values(b).LastScores;
    /// <summary>As <see cref="Generate"/>, the log-probs kept as <see cref="KeptLogProbs"/> keeps them. A filtered generation's sampling masks are
    /// then not sent at all (the result's Masks fails: a synchronous run reads none). With
    /// <paramref name="scoring"/>, worker processes that hold the answers score them there (the result's Scores).</summary>
    GenerationResult KeptGenerate(IReadOnlyList<int[]> prompts, GenerationOptions opt, ScoringRequest? scoring = null) => Generate(prompts, opt);
    /// <summary>Zeroes the gradients, then backward of sum_k d[k] * logp(action k).</summary>
    void BackwardLogProbs(ScoredBatch b, float temperature, float[] dActionLogp);
    /// <summary>Zeroes the gradients, then backward from value / last-score gradients.</summary>
    void BackwardValues(ScoredBatch b, float[] dActionValues, float[] dLastScores);
    /// <summary>Zeroes the gradients, then the SFT loss's backward; returns the loss.</summary>
    double SftStep(ScoredBatch b);
    double Step();
    /// <summary>One optimizer step of the clipped policy loss on a minibatch of a train call's rollout
    /// (its sequences from <paramref name="s0"/>, actions from <paramref name="a0"/>): forward, the
    /// loss and its per-token gradient from <paramref name="inputs"/> (one object per call), backward,
    /// step, computed where the model is; the minibatch's loss figures (Losses.ClippedPolicy's) and
    /// the gradient norm. <paramref name="ratioBaseFromForward"/>: the minibatch's ratio base is the
    /// forward's own log-probs (an off-policy batch's proximal policy, first epoch), kept in
    /// inputs.RatioBase (where the model is) for the later epochs.</summary>
    (ClippedPolicyStats Stats, double GradNorm) PolicyStep(ScoredBatch minibatch, int s0, int a0, float temperature, PolicyLossInputs inputs, bool ratioBaseFromForward);
    /// <summary>One optimizer step of the clipped value loss on a minibatch (actions from
    /// <paramref name="a0"/> of the call's rollout), computed where the model is; the loss figures
    /// (Losses.ClippedValue's) and the gradient norm.</summary>
    (ValueLossStats Stats, double GradNorm) ValueStep(ScoredBatch minibatch, int a0, ValueLossInputs inputs);
    /// <summary>Learning rate of the last optimizer step.</summary>
    float LearningRate { get; }
    GenerationResult Generate(IReadOnlyList<int[]> prompts, GenerationOptions opt);
}

/// <summary>The single-device model (and its optimizer, for the trained roles). After each operation the model's
/// activation arenas go back to the process's <see cref="ArenaBlocks"/> (nothing of them is read after it), as a
/// worker process does after each command: the single device's calls run one at a time, so its models share one set
/// of pre-faulted blocks instead of each faulting in and keeping its own (docs/cost-model.md, "The single device's
/// first iteration": a PPO stage's reference and critic each faulted 43 MB of fresh pages in their first call).</summary>
internal sealed class SingleModelCalls(LlamaModel m, Func<AdamW?> optimizer) : IModelCalls
{
    private float[]? _lse;
    private ScoredBatch? _lseFor;

    private T Released<T>(Func<T> op)
    {
        try { return op(); }
        finally { m.ReleaseActivations(); }
    }

    public float[] LogProbs(ScoredBatch b, float temperature) => Released(() =>
    {
        var lp = ModelOps.LogProbs(m, b, temperature, out var lse);
        _lse = lse;
        _lseFor = b;
        return lp;
    });

    public (float[] ActionValues, float[] LastScores) Values(ScoredBatch b) => Released(() => ModelOps.Values(m, b));

    public void BackwardLogProbs(ScoredBatch b, float temperature, float[] d)
    {
        if (!ReferenceEquals(_lseFor, b)) LogProbs(b, temperature);
        Released(() =>
        {
            m.ZeroGrad();
            ModelOps.BackwardLogProbs(m, b, temperature, _lse!, d);
            return 0;
        });
    }

    public void BackwardValues(ScoredBatch b, float[] dActionValues, float[] dLastScores) => Released(() =>
    {
        m.ZeroGrad();
        ModelOps.BackwardValues(m, b, dActionValues, dLastScores);
        return 0;
    });

    public double SftStep(ScoredBatch b) => Released(() =>
    {
        m.ZeroGrad();
        return ModelOps.SftStep(m, b);
    });

    public double Step() => Optimizer.StepOnce();
    public (ClippedPolicyStats Stats, double GradNorm) PolicyStep(ScoredBatch minibatch, int s0, int a0, float temperature, PolicyLossInputs inputs, bool ratioBaseFromForward) =>
        HostLosses.PolicyStep(this, minibatch, s0, a0, temperature, inputs, ratioBaseFromForward);
    public (ValueLossStats Stats, double GradNorm) ValueStep(ScoredBatch minibatch, int a0, ValueLossInputs inputs) => HostLosses.ValueStep(this, minibatch, a0, inputs);
    private AdamW Optimizer => optimizer() ?? throw new InvalidOperationException("this model is not trained in this stage");
    public float LearningRate => Optimizer.Schedule.At(Optimizer.Step);

    public GenerationResult Generate(IReadOnlyList<int[]> prompts, GenerationOptions opt) => Released(() => Generator.Generate(m, prompts, opt));
}

/// <summary>A train step's loss computed in this process between the model's forward and its
/// backward (the single device): what every plan layout computes on its last pipeline stage
/// (ShardReplica.PolicyStep, ValueStep), the same bits.</summary>
internal static class HostLosses
{
    public static (ClippedPolicyStats Stats, double GradNorm) PolicyStep(IModelCalls m, ScoredBatch sb, int s0, int a0, float temperature, PolicyLossInputs inputs, bool ratioBaseFromForward)
    {
        int n = sb.Packed.Count, t = sb.Actions;
        inputs.Minibatch(sb, s0, a0);
        var lp = m.LogProbs(sb, temperature);
        if (ratioBaseFromForward) lp.CopyTo(inputs.RatioBase, a0);
        var g = new float[t];
        var o = inputs.Options;
        var st = Losses.ClippedPolicy(lp, inputs.RatioBase.AsSpan(a0, t), inputs.Advantages.AsSpan(a0, t), inputs.Ref.Length == 0 ? [] : inputs.Ref.AsSpan(a0, t),
                                      sb.ActionCu, inputs.Keep.AsSpan(s0, n), o.ClipLow, o.ClipHigh, o.Aggregation, o.KlCoef, g,
                                      inputs.Behaviour.Length == 0 ? default : inputs.Behaviour.AsSpan(a0, t), o.BehaviourWeightCap);
        m.BackwardLogProbs(sb, temperature, g);
        return (st, m.Step());
    }

    public static (ValueLossStats Stats, double GradNorm) ValueStep(IModelCalls m, ScoredBatch sb, int a0, ValueLossInputs inputs)
    {
        inputs.CheckMinibatch(sb, a0);
        var (v, _) = m.Values(sb);
        var g = new float[v.Length]; var mask = new float[v.Length]; Array.Fill(mask, 1f);
        var st = Losses.ClippedValue(v, inputs.OldValues.AsSpan(a0, v.Length), inputs.Returns.AsSpan(a0, v.Length), mask, inputs.ClipEps, g);
        m.BackwardValues(sb, g, []);
        return (st, m.Step());
    }
}
