// The critic-free policy-gradient algorithms (GRPO, RLOO, ReMax): each owns how it turns the
// sequence rewards of an iteration into per-sequence advantages; they share the clipped
// surrogate with k3 KL to the reference (Losses.ClippedPolicy) and DAPO's options. Formulas:
// docs/algorithms.md.
using ReaLNative.Engine.Config;
using ReaLNative.Engine.Parallelism;

namespace ReaLNative.Engine.Algorithms;

internal abstract class CriticFreeAlgorithm(PpoConfig options)
{
    public PpoConfig Options { get; } = options;
    public abstract string Name { get; }
    /// <summary>Whether the algorithm needs the greedy answer's reward (ReMax's baseline).</summary>
    public virtual bool NeedsGreedyBaseline => false;

    /// <summary>One advantage per sequence. <paramref name="rewards"/> come in consecutive groups of
    /// <paramref name="groupSize"/> samples of one prompt; <paramref name="greedyRewards"/> (ReMax) has
    /// the greedy answer's reward of each sample's prompt, or is empty.</summary>
    public abstract float[] Advantages(ReadOnlySpan<float> rewards, ReadOnlySpan<float> greedyRewards, int groupSize);

    /// <summary>Which sequences train: all, or with DAPO's dynamic sampling only those of groups
    /// whose rewards are not all equal (their advantages are 0 and would only dilute the token mean).
    /// For ReMax a group is the sample and its greedy baseline.</summary>
    public bool[] Keep(ReadOnlySpan<float> rewards, ReadOnlySpan<float> greedyRewards, int groupSize)
    {
        var keep = new bool[rewards.Length];
        if (!Options.DynamicSampling) { Array.Fill(keep, true); return keep; }
        if (NeedsGreedyBaseline)
        {
            for (int i = 0; i < rewards.Length; i++) keep[i] = rewards[i] != greedyRewards[i];
            return keep;
        }
        CheckGroups(rewards.Length, groupSize);
        for (int g = 0; g < rewards.Length; g += groupSize)
        {
            bool varied = false;
            for (int i = 1; i < groupSize; i++) varied |= rewards[g + i] != rewards[g];
            for (int i = 0; i < groupSize; i++) keep[g + i] = varied;
        }
        return keep;
    }

    /// <summary>The loss of one minibatch: the sequence advantages on every token of their sequence,
    /// clipped surrogate (clip_eps_low / clip_eps_high), k3 KL to the reference, loss_agg.</summary>
    public ClippedPolicyStats Loss(ReadOnlySpan<float> logp, ReadOnlySpan<float> oldLogp, ReadOnlySpan<float> refLogp,
                                   ReadOnlySpan<int> cuSeqlens, ReadOnlySpan<float> sequenceAdvantages, ReadOnlySpan<bool> keep, Span<float> dLogp,
                                   ReadOnlySpan<float> behaviourLogp = default)
    {
        var adv = TokenAdvantages(sequenceAdvantages, cuSeqlens);
        return Losses.ClippedPolicy(logp, oldLogp, adv, refLogp, cuSeqlens, keep, Options.ClipEpsLow, Options.ClipEpsHigh,
                                    Options.LossAgg, Options.KlCoef, dLogp, behaviourLogp, Options.BehaviourWeightCap);
    }

    /// <summary>Each sequence's advantage on every one of its tokens.</summary>
    public static float[] TokenAdvantages(ReadOnlySpan<float> sequenceAdvantages, ReadOnlySpan<int> cuSeqlens) =>
        RolloutAdvantages.TokenAdvantages(sequenceAdvantages, cuSeqlens);

    protected static void CheckGroups(int n, int groupSize)
    {
        if (groupSize < 1 || n % groupSize != 0)
            throw new ArgumentException($"{n} rewards do not split into groups of {groupSize}", nameof(groupSize));
    }

    public static CriticFreeAlgorithm For(string algorithm, PpoConfig options) => algorithm switch
    {
        AlgorithmNames.Grpo => new Grpo(options),
        AlgorithmNames.Rloo => new Rloo(options),
        AlgorithmNames.Remax => new Remax(options),
        _ => throw new ArgumentOutOfRangeException(nameof(algorithm), algorithm, "not a critic-free algorithm (grpo | rloo | remax)"),
    };
}

/// <summary>GRPO (Shao et al. 2024): A_i = (r_i - mean_g r) / (std_g r + eps), population std over
/// the group; with std_norm false, A_i = r_i - mean_g r (Dr. GRPO, Liu et al. 2025).</summary>
internal sealed class Grpo(PpoConfig options) : CriticFreeAlgorithm(options)
{
    public const double Eps = 1e-6;
    public override string Name => AlgorithmNames.Grpo;

    public override float[] Advantages(ReadOnlySpan<float> rewards, ReadOnlySpan<float> greedyRewards, int groupSize)
    {
        CheckGroups(rewards.Length, groupSize);
        var a = new float[rewards.Length];
        for (int g = 0; g < rewards.Length; g += groupSize)
        {
            double mean = 0, sq = 0;
            for (int i = 0; i < groupSize; i++) mean += rewards[g + i];
            mean /= groupSize;
            for (int i = 0; i < groupSize; i++) sq += (rewards[g + i] - mean) * (rewards[g + i] - mean);
            double scale = Options.StdNorm ? 1 / (Math.Sqrt(sq / groupSize) + Eps) : 1;
            for (int i = 0; i < groupSize; i++) a[g + i] = (float)((rewards[g + i] - mean) * scale);
        }
        return a;
    }
}

/// <summary>RLOO (Kool et al. 2019; Ahmadian et al. 2024): A_i = r_i - mean_{j != i} r_j over the
/// other samples of the group (leave-one-out baseline; = k/(k-1) (r_i - mean_g r)).</summary>
internal sealed class Rloo(PpoConfig options) : CriticFreeAlgorithm(options)
{
    public override string Name => AlgorithmNames.Rloo;

    public override float[] Advantages(ReadOnlySpan<float> rewards, ReadOnlySpan<float> greedyRewards, int groupSize)
    {
        CheckGroups(rewards.Length, groupSize);
        if (groupSize < 2) throw new ArgumentException("RLOO needs at least 2 samples per prompt", nameof(groupSize));
        var a = new float[rewards.Length];
        for (int g = 0; g < rewards.Length; g += groupSize)
        {
            double sum = 0;
            for (int i = 0; i < groupSize; i++) sum += rewards[g + i];
            for (int i = 0; i < groupSize; i++) a[g + i] = (float)(rewards[g + i] - (sum - rewards[g + i]) / (groupSize - 1));
        }
        return a;
    }
}

/// <summary>ReMax (Li et al. 2023): A_i = r_i - r(greedy answer of the same prompt).</summary>
internal sealed class Remax(PpoConfig options) : CriticFreeAlgorithm(options)
{
    public override string Name => AlgorithmNames.Remax;
    public override bool NeedsGreedyBaseline => true;

    public override float[] Advantages(ReadOnlySpan<float> rewards, ReadOnlySpan<float> greedyRewards, int groupSize)
    {
        if (greedyRewards.Length != rewards.Length)
            throw new ArgumentException($"{greedyRewards.Length} greedy rewards for {rewards.Length} samples", nameof(greedyRewards));
        var a = new float[rewards.Length];
        for (int i = 0; i < a.Length; i++) a[i] = rewards[i] - greedyRewards[i];
        return a;
    }
}
