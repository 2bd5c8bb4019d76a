// PPO's advantages (Ouyang et al. 2022 as implemented in ReaL/OpenRLHF): per-token rewards
// -kl_coef (logp - ref) plus the clipped sequence score on the last token, GAE over the critic's
// values, optional whitening. Its policy loss is Losses.ClippedPolicy (token mean), its value
// loss Losses.ClippedValue.
using ReaLNative.Engine.Config;
using ReaLNative.Engine.Parallelism;
using ReaLNative.Interop;

namespace ReaLNative.Engine.Algorithms;

internal static class Ppo
{
    /// <summary>Advantages and returns of one iteration's actions, and the mean per-sequence KL
    /// sum(logp - ref) of the samples.</summary>
    public static (float[] Advantages, float[] Returns, double Kl) Advantages(NativeStream stream, ReadOnlySpan<float> logp, ReadOnlySpan<float> refLogp,
        ReadOnlySpan<float> values, ReadOnlySpan<float> scores, ReadOnlySpan<bool> endedWithEos, ReadOnlySpan<int> cuSeqlens, PpoConfig ppo)
        => RolloutAdvantages.Ppo(stream, logp, refLogp, values, scores, endedWithEos, cuSeqlens, ppo);
}

/// <summary>DPO (Rafailov et al. 2023) or IPO (Azar et al. 2023) on pairs of sequence log-probs (`dpo.loss`).</summary>
internal sealed class DpoAlgorithm(DpoConfig cfg)
{
    public PairLossStats Loss(ReadOnlySpan<float> piChosen, ReadOnlySpan<float> piRejected, ReadOnlySpan<float> refChosen,
                              ReadOnlySpan<float> refRejected, Span<float> dPiChosen, Span<float> dPiRejected) => cfg.Loss switch
    {
        "sigmoid" => Losses.Dpo(piChosen, piRejected, refChosen, refRejected, cfg.Beta, dPiChosen, dPiRejected),
        "ipo" => Losses.Ipo(piChosen, piRejected, refChosen, refRejected, cfg.Beta, dPiChosen, dPiRejected),
        _ => throw new ArgumentException($"dpo.loss '{cfg.Loss}': allowed values sigmoid | ipo"),
    };
}
