// The per-token losses of the RL train calls (the clipped policy surrogate of PPO, GRPO, RLOO,
// ReMax and DAPO; PPO's clipped value loss) as running sums over a range of sequences, so that the
// shards of a train layout compute a minibatch's loss and gradient themselves (ShardReplica.PolicyStep,
// ValueStep) and the single device computes it in one pass (Algorithms/Losses): the same per-token
// expressions, the gradient of a token depends only on that token and on whole-minibatch counts,
// and the loss figures come from sums taken in sequence order (the data-parallel ranks hand the
// running sums on, rank to rank), so every layout reports the single pass's bits.
using ReaLNative.Engine.Config;
using ReaLNative.Engine.Model;

namespace ReaLNative.Engine.Parallelism;

internal readonly record struct ValueLossStats(double Loss, double ClipFraction, int Tokens);
/// <summary>Figures of the clipped policy loss: the whole loss, its surrogate and k3 KL parts,
/// the fraction of tokens whose ratio was clipped (gradient 0), the aggregated k3 and the tokens that trained.</summary>
internal readonly record struct ClippedPolicyStats(double Loss, double Surrogate, double KlTerm, double ClipFraction, double K3, int Tokens, int Sequences);

/// <summary>Running sums of the clipped policy loss over the tokens seen so far, in sequence order.</summary>
internal struct ClippedPolicySums
{
    public double Surrogate, Kl, K3, Clipped;
    public const int Count = 4;
}

/// <summary>Running sums of the clipped value loss over the tokens seen so far, in token order.</summary>
internal struct ClippedValueSums
{
    public double Loss, Clipped;
    public const int Count = 2;
}

/// <summary>The options of the clipped policy loss of a train call (Losses.ClippedPolicy's parameters).</summary>
internal sealed record PolicyLossOptions(double ClipLow, double ClipHigh, string Aggregation, double KlCoef, double BehaviourWeightCap)
{
    public void Check()
    {
        if (Aggregation is not (LossAggregation.Token or LossAggregation.Sequence))
            throw new ArgumentException($"aggregation '{Aggregation}': allowed values token | sequence");
        if (BehaviourWeightCap < 0 || double.IsNaN(BehaviourWeightCap))
            throw new ArgumentException($"behaviour weight cap {BehaviourWeightCap}: must be 0 (none) or positive");
    }
}

/// <summary>
/// The ratio base of an off-policy batch's decoupled objective: the proximal policy's log-probs of
/// its actions (the trainer's weights before the batch's iteration), minibatch by minibatch.
/// Minibatch 0's come from the first train step's own forward (where the model is); minibatches 1..
/// are computed where the trainer's weights are (the trainer, or the rollout side right after their
/// push) and set here as outputs the workers may keep (<see cref="ActionFloats"/>): a worker replica
/// has its loss ranks read them worker to worker (Workers/RemoteReplica.PolicyStep), and only a
/// master that computes the loss inputs itself reads <see cref="Values"/>, which fetches them.
/// </summary>
internal sealed class ProximalLogProbs
{
    private readonly Lock _gate = new();
    private readonly float[] _whole;
    private readonly int[] _starts;
    private readonly ActionFloats?[] _parts;
    private readonly bool[] _copied;
    private bool _released;

    /// <param name="minibatchStarts">The action offset of each minibatch, then the rollout's action count.</param>
    public ProximalLogProbs(int[] minibatchStarts)
    {
        if (minibatchStarts.Length < 2 || minibatchStarts[0] != 0 || minibatchStarts.Zip(minibatchStarts.Skip(1)).Any(p => p.Second < p.First))
            throw new ArgumentException($"proximal log-probs: minibatch action offsets [{string.Join(", ", minibatchStarts)}] must start at 0 and not decrease");
        _starts = minibatchStarts;
        _whole = new float[minibatchStarts[^1]];
        _parts = new ActionFloats?[minibatchStarts.Length - 1];
        _copied = new bool[_parts.Length];
    }

    public int Actions => _whole.Length;
    public int Minibatches => _parts.Length;
    /// <summary>The whole rollout's array as it is (nothing copied in or fetched): what <see cref="Values"/> returns.</summary>
    public float[] Buffer => _whole;

    /// <summary>Sets minibatches 1.. (<paramref name="later"/>[k - 1] is minibatch k's); released at
    /// once when <see cref="Release"/> came first (a batch dropped before they were computed).</summary>
    public void Set(IReadOnlyList<ActionFloats> later)
    {
        if (later.Count != _parts.Length - 1) throw new ArgumentException($"proximal log-probs: {later.Count} minibatches given, expected {_parts.Length - 1}");
        for (int k = 1; k < _parts.Length; k++)
            if (later[k - 1].Length != _starts[k + 1] - _starts[k])
                throw new ArgumentException($"proximal log-probs: minibatch {k} has {later[k - 1].Length} values for {_starts[k + 1] - _starts[k]} actions");
        bool released;
        lock (_gate)
        {
            if (_parts.Skip(1).Any(p => p is not null)) throw new InvalidOperationException("proximal log-probs: minibatches 1.. were already set");
            for (int k = 1; k < _parts.Length; k++) _parts[k] = later[k - 1];
            released = _released;
        }
        if (released) foreach (var p in later) p.Release();
    }

    /// <summary>The output of the minibatch whose actions start at <paramref name="a0"/> (null for
    /// minibatch 0, which the forward fills, and for one not set yet).</summary>
    public ActionFloats? OfMinibatch(int a0)
    {
        int k = Array.IndexOf(_starts, a0, 1, _parts.Length - 1);
        if (k < 1) return null;
        lock (_gate) return _parts[k];
    }

    /// <summary>The whole rollout's array on this process (the same array on every read): minibatch 0
    /// as the forward wrote it, the minibatches set so far copied in (fetched from the workers that keep them).</summary>
    public float[] Values
    {
        get
        {
            lock (_gate)
            {
                for (int k = 1; k < _parts.Length; k++)
                    if (!_copied[k] && _parts[k] is { } p)
                    {
                        p.Values.CopyTo(_whole, _starts[k]);
                        _copied[k] = true;
                    }
                return _whole;
            }
        }
    }

    /// <summary>The batch is consumed: the workers may drop the minibatches they keep.</summary>
    public void Release()
    {
        ActionFloats?[] parts;
        lock (_gate) { _released = true; parts = [.. _parts]; }
        foreach (var p in parts) p?.Release();
    }
}

/// <summary>The per-token inputs of a train call's clipped policy loss over its whole rollout
/// (action k of sequence s at the rollout's action index; the minibatches are runs of sequences):
/// advantages, the ratio's base (the generation's or the proximal policy's log-probs), the behaviour
/// log-probs of the decoupled objective (empty: none), the reference's (empty: no k3 term), and
/// which sequences train. One object per call: a worker replica sends each minibatch's part of it
/// once, to the ranks that compute the loss, and they keep it for the later epochs.</summary>
internal sealed class PolicyLossInputs(float[]? advantages, ActionFloats ratioBase, ActionFloats behaviour, ActionFloats reference, bool[] keep, PolicyLossOptions options)
{
    private readonly float[]? _advantages = advantages;

    public PolicyLossInputs(float[]? advantages, float[] ratioBase, float[] behaviour, float[] reference, bool[] keep, PolicyLossOptions options)
        : this(advantages, ActionFloats.Here(ratioBase), ActionFloats.Here(behaviour), ActionFloats.Here(reference), keep, options) { }

    /// <summary>PPO's inputs: the advantages derived from <paramref name="derived"/> (computed on the
    /// master only when read: a worker replica may have its loss ranks derive them from resident
    /// inference outputs instead); the ratio base the generation's log-probs, or, for an off-policy
    /// batch of the decoupled objective, <paramref name="proximal"/>'s with the generation's as the
    /// behaviour log-probs.</summary>
    public static PolicyLossInputs FromPpo(PpoAdvantageInputs derived, bool[] keep, PolicyLossOptions options, ProximalLogProbs? proximal = null) =>
        proximal is null
            ? new(null, derived.LogProbs, ActionFloats.Here([]), ActionFloats.Here([]), keep, options) { Derived = derived }
            : new(null, ActionFloats.Here(proximal.Buffer), derived.LogProbs, ActionFloats.Here([]), keep, options) { Derived = derived, Proximal = proximal };

    /// <summary>The critic-free algorithms' inputs: the advantages spread from
    /// <paramref name="derived"/>'s per-sequence ones (as <see cref="FromPpo"/>, computed on the master
    /// only when read), the ratio base and behaviour log-probs as <see cref="FromPpo"/>'s, the
    /// reference's for the k3 term.</summary>
    public static PolicyLossInputs FromSequenceAdvantages(SequenceAdvantageInputs derived, bool[] keep, PolicyLossOptions options, ProximalLogProbs? proximal = null) =>
        proximal is null
            ? new(null, derived.LogProbs, ActionFloats.Here([]), derived.RefLogProbs, keep, options) { Derived = derived }
            : new(null, ActionFloats.Here(proximal.Buffer), derived.LogProbs, derived.RefLogProbs, keep, options) { Derived = derived, Proximal = proximal };

    /// <summary>What the advantages derive from (PPO, GRPO, RLOO, ReMax), or null: they were given.</summary>
    public DerivedLossInputs? Derived { get; private init; }
    /// <summary>An off-policy batch's proximal log-probs (the ratio base), or null.</summary>
    public ProximalLogProbs? Proximal { get; private init; }
    public float[] Advantages => _advantages ?? Derived!.Result.Adv;
    /// <summary>The call's actions (without computing derived advantages).</summary>
    public int Actions => _advantages?.Length ?? Derived!.Actions;
    /// <summary>The ratio base (read on the master only where it sends the loss inputs itself: it may
    /// be kept by the workers; the proximal log-probs: the same array on every read, minibatches 1..
    /// copied in as they are set).</summary>
    public float[] RatioBase => Proximal?.Values ?? RatioBaseOutput.Values;
    public ActionFloats RatioBaseOutput { get; } = ratioBase;
    /// <summary>The behaviour log-probs (as <see cref="RatioBase"/>); empty: none.</summary>
    public float[] Behaviour => BehaviourOutput.Values;
    public ActionFloats BehaviourOutput { get; } = behaviour;
    /// <summary>The reference's log-probs (as <see cref="RatioBase"/>); empty: no k3 term.</summary>
    public float[] Ref => RefOutput.Values;
    public ActionFloats RefOutput { get; } = reference;
    public bool[] Keep { get; } = keep;
    public PolicyLossOptions Options { get; } = options;

    /// <summary>Checks that the arrays fit a rollout of <see cref="Keep"/>.Length sequences and
    /// <paramref name="actions"/> actions (the optional ones empty or full).</summary>
    public void Check(int actions)
    {
        Options.Check();
        if (Actions != actions || RatioBaseOutput.Length != actions)
            throw new ArgumentException($"policy loss inputs: {Actions} advantages and {RatioBaseOutput.Length} ratio bases for {actions} actions");
        if (BehaviourOutput.Length is var b && b != 0 && b != actions) throw new ArgumentException($"policy loss inputs: {b} behaviour log-probs for {actions} actions");
        if (RefOutput.Length is var r && r != 0 && r != actions) throw new ArgumentException($"policy loss inputs: {r} reference log-probs for {actions} actions");
    }

    /// <summary>Checks the inputs and a minibatch of the call (sequences from <paramref name="s0"/>,
    /// actions from <paramref name="a0"/>); the counts its loss normalises by (ShardLosses.ClippedPolicyCounts).</summary>
    public (int Tokens, int Sequences) Minibatch(ScoredBatch batch, int s0, int a0)
    {
        Check(Actions);
        int n = batch.Packed.Count;
        if (s0 < 0 || s0 + n > Keep.Length || a0 < 0 || a0 + batch.Actions > Actions)
            throw new ArgumentException($"policy step: sequences [{s0}, +{n}) and actions [{a0}, +{batch.Actions}) outside the call's {Keep.Length} sequences and {Actions} actions");
        return ShardLosses.ClippedPolicyCounts(batch.ActionCu, Keep.AsSpan(s0, n));
    }
}

/// <summary>The per-token inputs of a train call's clipped value loss over its whole rollout:
/// the critic's values at inference and the returns.</summary>
internal sealed class ValueLossInputs(ActionFloats oldValues, float[]? returns, double clipEps)
{
    private readonly float[]? _returns = returns;

    public ValueLossInputs(float[] oldValues, float[]? returns, double clipEps) : this(ActionFloats.Here(oldValues), returns, clipEps) { }

    /// <summary>PPO's inputs: the critic's inference values, the returns derived from
    /// <paramref name="derived"/> (as <see cref="PolicyLossInputs.FromPpo"/>).</summary>
    public static ValueLossInputs FromPpo(PpoAdvantageInputs derived, double clipEps) => new(derived.Values, null, clipEps) { Derived = derived };

    /// <summary>What the returns derive from (PPO), or null: they were given.</summary>
    public PpoAdvantageInputs? Derived { get; private init; }
    /// <summary>The critic's inference values (as <see cref="PolicyLossInputs.RatioBase"/>: possibly kept by the workers).</summary>
    public float[] OldValues => OldValuesOutput.Values;
    public ActionFloats OldValuesOutput { get; } = oldValues;
    public float[] Returns => _returns ?? Derived!.Result.Ret;
    public double ClipEps { get; } = clipEps;

    public void Check(int actions)
    {
        int returns = _returns?.Length ?? Derived!.Actions;
        if (OldValuesOutput.Length != actions || returns != actions)
            throw new ArgumentException($"value loss inputs: {OldValuesOutput.Length} old values and {returns} returns for {actions} actions");
    }

    /// <summary>Checks the inputs and a minibatch of the call (actions from <paramref name="a0"/>).</summary>
    public void CheckMinibatch(ScoredBatch batch, int a0)
    {
        Check(OldValuesOutput.Length);
        if (a0 < 0 || a0 + batch.Actions > OldValuesOutput.Length)
            throw new ArgumentException($"value step: actions [{a0}, +{batch.Actions}) outside the call's {OldValuesOutput.Length} actions");
    }
}

internal static class ShardLosses
{
    /// <summary>The tokens and sequences the clipped policy loss of a minibatch normalises by: those
    /// of the kept sequences with at least one action.</summary>
    public static (int Tokens, int Sequences) ClippedPolicyCounts(ReadOnlySpan<int> cuSeqlens, ReadOnlySpan<bool> keep)
    {
        int tokens = 0, seqs = 0;
        for (int s = 0; s + 1 < cuSeqlens.Length; s++)
            if (keep[s] && cuSeqlens[s + 1] > cuSeqlens[s]) { tokens += cuSeqlens[s + 1] - cuSeqlens[s]; seqs++; }
        return (tokens, seqs);
    }

    /// <summary>
    /// The clipped policy loss's terms of sequences [0, cu.Length - 1) of the given spans (indexed by
    /// <paramref name="cuSeqlens"/>), for a minibatch of <paramref name="tokens"/> tokens and
    /// <paramref name="seqs"/> sequences (<see cref="ClippedPolicyCounts"/>): writes d loss / d logp of
    /// every token of these sequences (0 for dropped ones) and adds the loss terms to
    /// <paramref name="sums"/> in sequence order. Formulas: Losses.ClippedPolicy.
    /// </summary>
    public static void ClippedPolicyTerms(ReadOnlySpan<float> logp, ReadOnlySpan<float> oldLogp, ReadOnlySpan<float> advantages,
                                          ReadOnlySpan<float> refLogp, ReadOnlySpan<int> cuSeqlens, ReadOnlySpan<bool> keep,
                                          PolicyLossOptions o, int tokens, int seqs, Span<float> dLogp,
                                          ReadOnlySpan<float> behaviourLogp, ref ClippedPolicySums sums)
    {
        int nseq = cuSeqlens.Length - 1;
        double sur = sums.Surrogate, klSum = sums.Kl, k3Sum = sums.K3, clipped = sums.Clipped;
        for (int s = 0; s < nseq; s++)
        {
            int len = cuSeqlens[s + 1] - cuSeqlens[s];
            if (!keep[s] || len == 0)
            {
                dLogp[cuSeqlens[s]..cuSeqlens[s + 1]].Clear();
                continue;
            }
            double w = o.Aggregation == LossAggregation.Token ? 1.0 / tokens : 1.0 / ((double)seqs * len);
            for (int i = cuSeqlens[s]; i < cuSeqlens[s + 1]; i++)
            {
                double a = advantages[i], lr = (double)logp[i] - oldLogp[i], r = Math.Exp(lr);
                double s1 = -a * r, s2 = -a * Math.Clamp(r, 1 - o.ClipLow, 1 + o.ClipHigh);
                double g = 0, behaviourWeight = 1;
                if (behaviourLogp.Length != 0)
                {
                    behaviourWeight = Math.Exp((double)oldLogp[i] - behaviourLogp[i]);
                    if (o.BehaviourWeightCap > 0 && behaviourWeight > o.BehaviourWeightCap) behaviourWeight = 0;
                }
                if (s1 >= s2) { sur += w * behaviourWeight * s1; g = -a * r * behaviourWeight; }
                else { sur += w * behaviourWeight * s2; clipped++; }
                if (refLogp.Length != 0)
                {
                    double d = (double)refLogp[i] - logp[i], e = Math.Exp(d), k3 = e - d - 1;
                    k3Sum += w * k3;
                    klSum += w * o.KlCoef * k3;
                    g += o.KlCoef * (1 - e);
                }
                dLogp[i] = (float)(w * g);
            }
        }
        sums.Surrogate = sur; sums.Kl = klSum; sums.K3 = k3Sum; sums.Clipped = clipped;
    }

    /// <summary>The figures of a minibatch's clipped policy loss from its sums.</summary>
    public static ClippedPolicyStats ClippedPolicyResult(in ClippedPolicySums sums, int tokens, int seqs) =>
        tokens == 0 ? new ClippedPolicyStats(0, 0, 0, 0, 0, 0, 0)
                    : new ClippedPolicyStats(sums.Surrogate + sums.Kl, sums.Surrogate, sums.Kl, sums.Clipped / tokens, sums.K3, tokens, seqs);

    /// <summary>
    /// The clipped value loss's terms of the given tokens (those with mask 0 skipped, gradient 0) for a
    /// minibatch of <paramref name="n"/> masked tokens: writes d loss / d value and adds the terms to
    /// <paramref name="sums"/> in token order. Formula: Losses.ClippedValue.
    /// </summary>
    public static void ClippedValueTerms(ReadOnlySpan<float> values, ReadOnlySpan<float> oldValues, ReadOnlySpan<float> returns,
                                         ReadOnlySpan<float> mask, double clipEps, int n, Span<float> dValues, ref ClippedValueSums sums)
    {
        double loss = sums.Loss, clipped = sums.Clipped;
        for (int i = 0; i < values.Length; i++)
        {
            dValues[i] = 0;
            if (mask.Length != 0 && mask[i] == 0) continue;
            double v = values[i], old = oldValues[i], ret = returns[i];
            double vc = old + Math.Clamp(v - old, -clipEps, clipEps);
            double l1 = (v - ret) * (v - ret), l2 = (vc - ret) * (vc - ret);
            if (l1 >= l2) { loss += l1; dValues[i] = (float)((v - ret) / n); }
            else { loss += l2; clipped++; }
        }
        sums.Loss = loss; sums.Clipped = clipped;
    }

    /// <summary>The figures of a minibatch's clipped value loss over <paramref name="n"/> tokens from its sums.</summary>
    public static ValueLossStats ClippedValueResult(in ClippedValueSums sums, int n) =>
        n == 0 ? new ValueLossStats(0, 0, 0) : new ValueLossStats(0.5 * sums.Loss / n, sums.Clipped / n, n);
}
