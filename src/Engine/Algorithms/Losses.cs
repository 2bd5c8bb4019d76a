// RLHF losses over packed per-token arrays (no padding: sequence i's action tokens are
// [cu[i], cu[i+1])). Each returns the loss value and writes its gradient with respect to the
// per-token log-probs (or values / scores) that the model produced; the model then runs the
// native logprobs_bwd and its own backward. Accumulation is in double so tests can compare with
// hand-computed values tightly.
using ReaLNative.Engine.Config;
using ReaLNative.Engine.Parallelism;

namespace ReaLNative.Engine.Algorithms;

internal readonly record struct PairLossStats(double Loss, double Accuracy, double MeanMargin);

internal static class Losses
{
    private static void CheckLen(string name, int actual, int expected)
    {
        if (actual != expected) throw new ArgumentException($"{name} has {actual} elements, expected {expected}", name);
    }

    private static int CountMask(ReadOnlySpan<float> mask)
    {
        int n = 0;
        foreach (var m in mask) if (m != 0) n++;
        return n;
    }

    /// <summary>
    /// The clipped surrogate of PPO, GRPO, ReMax, RLOO and DAPO (docs/algorithms.md), per token i of
    /// sequence s: l_i = max(-A_i r_i, -A_i clip(r_i, 1 - clipLow, 1 + clipHigh)) + klCoef k3_i, with
    /// r_i = exp(logp_i - oldLogp_i) and k3_i = exp(ref_i - logp_i) - (ref_i - logp_i) - 1 (0 without
    /// <paramref name="refLogp"/>). Aggregation over the sequences with <paramref name="keep"/> set:
    /// "token" = sum_i l_i / (tokens of kept sequences); "sequence" = mean over kept sequences of
    /// each one's token mean. dLogp gets d loss / d logp (0 for dropped sequences).
    /// Decoupled PPO (off-policy samples of asynchronous RL; Hilton et al. 2021, AReaL): with
    /// <paramref name="behaviourLogp"/> given, oldLogp is the proximal policy (the trainer's weights
    /// before this step, recomputed) and behaviourLogp the policy that generated the tokens; each
    /// token's surrogate is weighted by the constant w_i = exp(oldLogp_i - behaviourLogp_i), capped
    /// at <paramref name="behaviourWeightCap"/> when that is positive (tokens above the cap are
    /// dropped from the surrogate, as AReaL does). The KL term is not weighted. When behaviour equals
    /// proximal every w_i is exp(0) = 1 exactly and the result equals the on-policy loss bit for bit.
    /// </summary>
    public static ClippedPolicyStats ClippedPolicy(ReadOnlySpan<float> logp, ReadOnlySpan<float> oldLogp, ReadOnlySpan<float> advantages,
                                                   ReadOnlySpan<float> refLogp, ReadOnlySpan<int> cuSeqlens, ReadOnlySpan<bool> keep,
                                                   double clipLow, double clipHigh, string aggregation, double klCoef, Span<float> dLogp,
                                                   ReadOnlySpan<float> behaviourLogp = default, double behaviourWeightCap = 0)
    {
        int t = logp.Length, nseq = cuSeqlens.Length - 1;
        CheckLen(nameof(oldLogp), oldLogp.Length, t); CheckLen(nameof(advantages), advantages.Length, t);
        CheckLen(nameof(dLogp), dLogp.Length, t); CheckLen(nameof(keep), keep.Length, nseq);
        if (refLogp.Length != 0) CheckLen(nameof(refLogp), refLogp.Length, t);
        if (behaviourLogp.Length != 0) CheckLen(nameof(behaviourLogp), behaviourLogp.Length, t);
        if (behaviourWeightCap < 0 || double.IsNaN(behaviourWeightCap))
            throw new ArgumentException($"behaviour weight cap {behaviourWeightCap}: must be 0 (none) or positive", nameof(behaviourWeightCap));
        if (nseq < 0 || cuSeqlens[nseq] != t) throw new ArgumentException($"cu_seqlens must end at {t}", nameof(cuSeqlens));
        if (aggregation is not (LossAggregation.Token or LossAggregation.Sequence))
            throw new ArgumentException($"aggregation '{aggregation}': allowed values token | sequence", nameof(aggregation));
        var (tokens, seqs) = ShardLosses.ClippedPolicyCounts(cuSeqlens, keep);
        var sums = new ClippedPolicySums();
        ShardLosses.ClippedPolicyTerms(logp, oldLogp, advantages, refLogp, cuSeqlens, keep,
                                       new PolicyLossOptions(clipLow, clipHigh, aggregation, klCoef, behaviourWeightCap), tokens, seqs, dLogp, behaviourLogp, ref sums);
        return ShardLosses.ClippedPolicyResult(sums, tokens, seqs);
    }

    /// <summary>
    /// IPO (Azar et al. 2023): mean (h - 1/(2 beta))^2 over pairs, h = (pi_c - ref_c) - (pi_r - ref_r)
    /// of sequence log-probs; gradients w.r.t. the policy's sequence log-probs.
    /// </summary>
    public static PairLossStats Ipo(ReadOnlySpan<float> piChosen, ReadOnlySpan<float> piRejected, ReadOnlySpan<float> refChosen,
                                    ReadOnlySpan<float> refRejected, double beta, Span<float> dPiChosen, Span<float> dPiRejected)
    {
        int n = piChosen.Length;
        CheckLen(nameof(piRejected), piRejected.Length, n); CheckLen(nameof(refChosen), refChosen.Length, n);
        CheckLen(nameof(refRejected), refRejected.Length, n); CheckLen(nameof(dPiChosen), dPiChosen.Length, n);
        CheckLen(nameof(dPiRejected), dPiRejected.Length, n);
        if (n == 0) throw new ArgumentException("no pairs", nameof(piChosen));
        double loss = 0, acc = 0, margin = 0, target = 1 / (2 * beta);
        for (int i = 0; i < n; i++)
        {
            double h = ((double)piChosen[i] - refChosen[i]) - ((double)piRejected[i] - refRejected[i]);
            loss += (h - target) * (h - target);
            double g = 2 * (h - target) / n;
            dPiChosen[i] = (float)g; dPiRejected[i] = (float)-g;
            if (h > 0) acc++;
            margin += h;
        }
        return new PairLossStats(loss / n, acc / n, margin / n);
    }

    /// <summary>
    /// Clipped value loss: 0.5 mean max((v - R)^2, (vOld + clip(v - vOld, -eps, eps) - R)^2).
    /// </summary>
    public static ValueLossStats ClippedValue(ReadOnlySpan<float> values, ReadOnlySpan<float> oldValues, ReadOnlySpan<float> returns,
                                             ReadOnlySpan<float> mask, double clipEps, Span<float> dValues)
    {
        int t = values.Length;
        CheckLen(nameof(oldValues), oldValues.Length, t); CheckLen(nameof(returns), returns.Length, t);
        CheckLen(nameof(mask), mask.Length, t); CheckLen(nameof(dValues), dValues.Length, t);
        int n = CountMask(mask);
        var sums = new ClippedValueSums();
        ShardLosses.ClippedValueTerms(values, oldValues, returns, mask, clipEps, n, dValues, ref sums);
        return ShardLosses.ClippedValueResult(sums, n);
    }

    /// <summary>
    /// Per-token PPO rewards: -klCoef (logp - refLogp) on every token, plus the sequence score
    /// clipped to +-maxClip on the last token of sequences that ended with EOS.
    /// </summary>
    public static void KlShapedRewards(ReadOnlySpan<float> logp, ReadOnlySpan<float> refLogp, ReadOnlySpan<int> cuSeqlens,
                                       ReadOnlySpan<float> scores, ReadOnlySpan<bool> endedWithEos, double klCoef, double maxClip,
                                       Span<float> rewards) =>
        RolloutAdvantages.KlShapedRewards(logp, refLogp, cuSeqlens, scores, endedWithEos, klCoef, maxClip, rewards);

    /// <summary>In place: (x - mean) / (std + eps) over masked entries (population std); others become 0.</summary>
    public static void NormalizeMasked(Span<float> x, ReadOnlySpan<float> mask, double eps = 1e-5) => RolloutAdvantages.NormalizeMasked(x, mask, eps);

    private static double Softplus(double x) => Math.Max(x, 0) + Math.Log(1 + Math.Exp(-Math.Abs(x)));
    private static double Sigmoid(double x) => x >= 0 ? 1 / (1 + Math.Exp(-x)) : Math.Exp(x) / (1 + Math.Exp(x));

    /// <summary>
    /// Pairwise reward-model loss: mean -log sigmoid(chosen - rejected) over pairs of last-token
    /// scores; gradients w.r.t. both score arrays.
    /// </summary>
    public static PairLossStats PairwiseReward(ReadOnlySpan<float> chosen, ReadOnlySpan<float> rejected, Span<float> dChosen, Span<float> dRejected)
    {
        int n = chosen.Length;
        CheckLen(nameof(rejected), rejected.Length, n); CheckLen(nameof(dChosen), dChosen.Length, n); CheckLen(nameof(dRejected), dRejected.Length, n);
        if (n == 0) throw new ArgumentException("no pairs", nameof(chosen));
        double loss = 0, acc = 0, margin = 0;
        for (int i = 0; i < n; i++)
        {
            double z = (double)chosen[i] - rejected[i];
            loss += Softplus(-z);
            double g = -Sigmoid(-z) / n;
            dChosen[i] = (float)g; dRejected[i] = (float)-g;
            if (z > 0) acc++;
            margin += z;
        }
        return new PairLossStats(loss / n, acc / n, margin / n);
    }

    /// <summary>
    /// DPO: mean -log sigmoid(beta ((pi_c - ref_c) - (pi_r - ref_r))) over pairs of sequence
    /// log-probs (sums over answer tokens); gradients w.r.t. the policy's sequence log-probs.
    /// </summary>
    public static PairLossStats Dpo(ReadOnlySpan<float> piChosen, ReadOnlySpan<float> piRejected, ReadOnlySpan<float> refChosen,
                                    ReadOnlySpan<float> refRejected, double beta, Span<float> dPiChosen, Span<float> dPiRejected)
    {
        int n = piChosen.Length;
        CheckLen(nameof(piRejected), piRejected.Length, n); CheckLen(nameof(refChosen), refChosen.Length, n);
        CheckLen(nameof(refRejected), refRejected.Length, n); CheckLen(nameof(dPiChosen), dPiChosen.Length, n);
        CheckLen(nameof(dPiRejected), dPiRejected.Length, n);
        if (n == 0) throw new ArgumentException("no pairs", nameof(piChosen));
        double loss = 0, acc = 0, margin = 0;
        for (int i = 0; i < n; i++)
        {
            double h = ((double)piChosen[i] - refChosen[i]) - ((double)piRejected[i] - refRejected[i]);
            double z = beta * h;
            loss += Softplus(-z);
            double g = -Sigmoid(-z) * beta / n;
            dPiChosen[i] = (float)g; dPiRejected[i] = (float)-g;
            if (z > 0) acc++;
            margin += z;
        }
        return new PairLossStats(loss / n, acc / n, margin / n);
    }
}
