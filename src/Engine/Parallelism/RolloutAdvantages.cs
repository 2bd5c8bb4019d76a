// PPO's advantages and returns over a whole rollout (KL-shaped rewards, GAE on the native op,
// optional whitening) and where their inputs come from. The math lives here, below Algorithms and
// Workers, because two places compute it: the master (Algorithms/Ppo.Advantages, the single device
// and in-process plans) and, under worker processes, each rank that computes a train call's loss,
// from the inference outputs it reads worker to worker (Workers/ResidentBatches.cs). Both run this
// one function on the same whole-rollout arrays, so they produce the same bits: the GAE op runs
// each sequence's recurrence serially in double whatever the thread count, and the whitening's
// sums run over the whole array in rollout order.
using ReaLNative.Engine.Config;
using ReaLNative.Engine.Model;
using ReaLNative.Interop;

namespace ReaLNative.Engine.Parallelism;

internal static unsafe class RolloutAdvantages
{
    private static void CheckLen(string name, int actual, int expected)
    {
        if (actual != expected) throw new ArgumentException($"{name} has {actual} elements, expected {expected}", name);
    }

    /// <summary>Advantages and returns of one rollout's actions, and the mean per-sequence KL
    /// sum(logp - ref) of its samples (Algorithms/Ppo.Advantages).</summary>
    public static (float[] Advantages, float[] Returns, double Kl) Ppo(NativeStream stream, ReadOnlySpan<float> logp, ReadOnlySpan<float> refLogp,
        ReadOnlySpan<float> values, ReadOnlySpan<float> scores, ReadOnlySpan<bool> endedWithEos, ReadOnlySpan<int> cuSeqlens, PpoConfig ppo)
    {
        int T = logp.Length, nseq = cuSeqlens.Length - 1;
        var rewards = new float[T];
        KlShapedRewards(logp, refLogp, cuSeqlens, scores, endedWithEos, ppo.KlCoef, ppo.MaxRewardClip, rewards);
        var adv = new float[T]; var ret = new float[T];
        Gae(stream, rewards, GaeWithBootstrap(values, cuSeqlens), cuSeqlens, ppo.Gamma, ppo.Lambda, adv, ret);
        if (ppo.AdvNorm)
        {
            var mask = new float[T]; Array.Fill(mask, 1f);
            NormalizeMasked(adv, mask);
        }
        return (adv, ret, MeanKl(logp, refLogp, nseq));
    }

    /// <summary>The mean per-sequence KL estimate sum(logp - ref) / sequences (0 without sequences), summed in action order.</summary>
    public static double MeanKl(ReadOnlySpan<float> logp, ReadOnlySpan<float> refLogp, int sequences)
    {
        CheckLen(nameof(refLogp), refLogp.Length, logp.Length);
        double kl = 0; for (int k = 0; k < logp.Length; k++) kl += logp[k] - refLogp[k];
        return sequences > 0 ? kl / sequences : 0;
    }

    /// <summary>Each sequence's advantage on every one of its actions (the critic-free algorithms).</summary>
    public static float[] TokenAdvantages(ReadOnlySpan<float> sequenceAdvantages, ReadOnlySpan<int> cuSeqlens)
    {
        int nseq = cuSeqlens.Length - 1;
        if (sequenceAdvantages.Length != nseq) throw new ArgumentException($"{sequenceAdvantages.Length} advantages for {nseq} sequences");
        var adv = new float[cuSeqlens[nseq]];
        for (int s = 0; s < nseq; s++) adv.AsSpan(cuSeqlens[s], cuSeqlens[s + 1] - cuSeqlens[s]).Fill(sequenceAdvantages[s]);
        return adv;
    }

    /// <summary>
    /// Per-token PPO rewards: -klCoef (logp - refLogp) on every token, plus the sequence score
    /// clipped to +-maxClip on the last token of sequences that ended with EOS.
    /// </summary>
    public static void KlShapedRewards(ReadOnlySpan<float> logp, ReadOnlySpan<float> refLogp, ReadOnlySpan<int> cuSeqlens,
                                       ReadOnlySpan<float> scores, ReadOnlySpan<bool> endedWithEos, double klCoef, double maxClip,
                                       Span<float> rewards)
    {
        int nseq = cuSeqlens.Length - 1, t = logp.Length;
        CheckLen(nameof(refLogp), refLogp.Length, t); CheckLen(nameof(rewards), rewards.Length, t);
        CheckLen(nameof(scores), scores.Length, nseq); CheckLen(nameof(endedWithEos), endedWithEos.Length, nseq);
        if (cuSeqlens[nseq] != t) throw new ArgumentException($"cu_seqlens ends at {cuSeqlens[nseq]}, expected {t}", nameof(cuSeqlens));
        for (int i = 0; i < t; i++) rewards[i] = (float)(-klCoef * ((double)logp[i] - refLogp[i]));
        for (int s = 0; s < nseq; s++)
            if (endedWithEos[s] && cuSeqlens[s + 1] > cuSeqlens[s])
                rewards[cuSeqlens[s + 1] - 1] += (float)Math.Clamp(scores[s], -maxClip, maxClip);
    }

    /// <summary>In place: (x - mean) / (std + eps) over masked entries (population std); others become 0.</summary>
    public static void NormalizeMasked(Span<float> x, ReadOnlySpan<float> mask, double eps = 1e-5)
    {
        CheckLen(nameof(mask), mask.Length, x.Length);
        int n = 0;
        foreach (var m in mask) if (m != 0) n++;
        if (n == 0) { x.Clear(); return; }
        double sum = 0;
        for (int i = 0; i < x.Length; i++) if (mask[i] != 0) sum += x[i];
        double mean = sum / n, sq = 0;
        for (int i = 0; i < x.Length; i++) if (mask[i] != 0) sq += (x[i] - mean) * (x[i] - mean);
        double inv = 1.0 / (Math.Sqrt(sq / n) + eps);
        for (int i = 0; i < x.Length; i++) x[i] = mask[i] != 0 ? (float)((x[i] - mean) * inv) : 0f;
    }

    /// <summary>The GAE op's value layout: each sequence's per-step values followed by a bootstrap 0.</summary>
    public static float[] GaeWithBootstrap(ReadOnlySpan<float> values, ReadOnlySpan<int> cuSeqlens)
    {
        int nseq = cuSeqlens.Length - 1;
        if (cuSeqlens[nseq] != values.Length)
            throw new ArgumentException($"cu_seqlens ends at {cuSeqlens[nseq]}, expected {values.Length}", nameof(cuSeqlens));
        var r = new float[values.Length + nseq];
        for (int s = 0; s < nseq; s++)
            values[cuSeqlens[s]..cuSeqlens[s + 1]].CopyTo(r.AsSpan(cuSeqlens[s] + s));
        return r;
    }

    /// <summary>GAE over packed sequences on the native op (realn.h realn_op_gae).</summary>
    public static void Gae(NativeStream stream, ReadOnlySpan<float> rewards, ReadOnlySpan<float> valuesWithBootstrap,
                           ReadOnlySpan<int> cuSeqlens, double gamma, double lambda, Span<float> advantages, Span<float> returns)
    {
        int nseq = cuSeqlens.Length - 1, t = rewards.Length;
        if (nseq < 0 || cuSeqlens[nseq] != t) throw new ArgumentException($"cu_seqlens must end at {t}", nameof(cuSeqlens));
        if (valuesWithBootstrap.Length != t + nseq)
            throw new ArgumentException($"values has {valuesWithBootstrap.Length} elements, expected T + nseq = {t + nseq}", nameof(valuesWithBootstrap));
        if (advantages.Length != t || returns.Length != t) throw new ArgumentException($"advantages and returns need {t} elements");
        fixed (float* r = rewards, v = valuesWithBootstrap, a = advantages, ret = returns)
        fixed (int* cu = cuSeqlens)
        {
            Native.Check(Native.realn_op_gae(stream.Ptr, r, v, cu, nseq, (float)gamma, (float)lambda, a, ret));
        }
        stream.Synchronize();
    }
}

/// <summary>
/// What a train call's per-token loss inputs derive from, over its whole rollout: the generation's
/// and the reference's log-probs (per action), the rollout's action offsets, and per algorithm the
/// rest (<see cref="PpoAdvantageInputs"/>, <see cref="SequenceAdvantageInputs"/>). Computed on the
/// master on first use (<see cref="Result"/>), unless a worker replica finds the per-action arrays
/// resident on its workers and has the loss ranks compute them there (Workers/RemoteReplica): the
/// master then never computes them, and <see cref="Kl"/> comes back from the workers (the same bits).
/// </summary>
internal abstract class DerivedLossInputs(ActionFloats logProbs, ActionFloats refLogProbs, int[] actionCu)
{
    private readonly Lock _gate = new();
    private (float[] Adv, float[] Ret, double Kl)? _result;
    private double? _kl;

    /// <summary>The generation's and the reference's log-probs: under worker processes possibly
    /// kept by the workers only (read on the master only when it computes <see cref="Result"/>).</summary>
    public ActionFloats LogProbs { get; } = logProbs;
    public ActionFloats RefLogProbs { get; } = refLogProbs;
    public int[] ActionCu { get; } = actionCu;
    /// <summary>Where the rollout's sequences live (its store ids, in rollout order), when workers keep them.</summary>
    public Model.BatchSource? Source { get; init; }
    public int Actions => ActionCu[^1];
    public int Sequences => ActionCu.Length - 1;

    /// <summary>Per-action advantages, returns (empty without a critic) and the mean per-sequence KL, computed in this process.</summary>
    protected abstract (float[] Adv, float[] Ret, double Kl) Compute();

    /// <summary>Advantages, returns and KL, computed here on first use.</summary>
    public (float[] Adv, float[] Ret, double Kl) Result
    {
        get
        {
            lock (_gate)
            {
                if (_result is { } r) return r;
                Check();
                var x = Compute();
                _result = x;
                _kl ??= x.Kl;
                return x;
            }
        }
    }

    /// <summary>Whether this process computed <see cref="Result"/> (a worker replica whose loss ranks derive the advantages never asks for it).</summary>
    public bool ComputedHere
    {
        get { lock (_gate) return _result is not null; }
    }

    /// <summary>The mean per-sequence KL: from <see cref="Result"/>, or as a worker that derived the
    /// inputs reported it; computed here when neither has happened.</summary>
    public double Kl
    {
        get
        {
            lock (_gate) if (_kl is { } k) return k;
            return Result.Kl;
        }
    }

    /// <summary>Records the KL a worker computed (bit-identical to <see cref="Result"/>'s).</summary>
    public void ReportKl(double kl)
    {
        lock (_gate) _kl ??= kl;
    }

    public virtual void Check()
    {
        int t = Actions;
        if (Sequences < 0 || ActionCu[0] != 0) throw new ArgumentException("derived loss inputs: action offsets must start at 0");
        if (LogProbs.Length != t || RefLogProbs.Length != t)
            throw new ArgumentException($"derived loss inputs: {LogProbs.Length} log-probs and {RefLogProbs.Length} reference log-probs for {t} actions");
    }
}

/// <summary>PPO's advantages and returns (<see cref="RolloutAdvantages.Ppo"/>) from the critic's
/// values, the shaped sequence scores and the EOS flags besides the log-probs.</summary>
internal sealed class PpoAdvantageInputs(ActionFloats logProbs, ActionFloats refLogProbs, ActionFloats values, float[] scores, bool[] endedWithEos, int[] actionCu,
                                         PpoConfig ppo, NativeStream masterStream) : DerivedLossInputs(logProbs, refLogProbs, actionCu)
{
    public ActionFloats Values { get; } = values;
    /// <summary>Per-sequence scores after shaping (the overlong penalty), one per sequence.</summary>
    public float[] Scores { get; } = scores;
    public bool[] EndedWithEos { get; } = endedWithEos;
    public PpoConfig Ppo { get; } = ppo;

    protected override (float[] Adv, float[] Ret, double Kl) Compute() =>
        RolloutAdvantages.Ppo(masterStream, LogProbs.Values, RefLogProbs.Values, Values.Values, Scores, EndedWithEos, ActionCu, Ppo);

    public override void Check()
    {
        base.Check();
        if (Values.Length != Actions) throw new ArgumentException($"PPO advantage inputs: {Values.Length} values for {Actions} actions");
        if (Scores.Length != Sequences || EndedWithEos.Length != Sequences)
            throw new ArgumentException($"PPO advantage inputs: {Scores.Length} scores and {EndedWithEos.Length} EOS flags for {Sequences} sequences");
    }
}

/// <summary>The critic-free algorithms' inputs (GRPO, RLOO, ReMax): one advantage per sequence
/// (computed from the sequence rewards, Algorithms/CriticFreeAlgorithm), spread over its actions.</summary>
internal sealed class SequenceAdvantageInputs(ActionFloats logProbs, ActionFloats refLogProbs, float[] sequenceAdvantages, int[] actionCu)
    : DerivedLossInputs(logProbs, refLogProbs, actionCu)
{
    public float[] SequenceAdvantages { get; } = sequenceAdvantages;

    protected override (float[] Adv, float[] Ret, double Kl) Compute() =>
        (RolloutAdvantages.TokenAdvantages(SequenceAdvantages, ActionCu), [], RolloutAdvantages.MeanKl(LogProbs.Values, RefLogProbs.Values, Sequences));

    public override void Check()
    {
        base.Check();
        if (SequenceAdvantages.Length != Sequences) throw new ArgumentException($"critic-free inputs: {SequenceAdvantages.Length} advantages for {Sequences} sequences");
    }
}
