// Log-probs of chosen tokens from a vocab-parallel head without materialising whole rows: each
// tensor rank holds logits for its vocab slice [T, V/tp]; the row maxima are all-gathered
// (T x tp floats), the partial sums of exp and the chosen token's logit (non-zero on its owner
// only) are summed in one all-reduce of 2T floats, and the backward needs no communication. On a
// single rank it is the native logprobs op.
using System.Numerics.Tensors;
using ReaLNative.Engine.Model;
using ReaLNative.Interop;

namespace ReaLNative.Engine.Parallelism;

/// <summary>Vocab-parallel log-probs and their backward (temperature-scaled, no top-k/top-p mask).</summary>
internal static unsafe class VocabParallel
{
    /// <summary>logp[t] = log softmax(logits[t] / temperature)[labels[t]] over the whole vocabulary;
    /// <paramref name="local"/> is this rank's [T, <see cref="LlamaModel.VocabLocal"/>] slice
    /// (the model's <see cref="LlamaModel.GatherLogits"/> off), or whole rows on one rank.
    /// lse[t] (of the scaled logits) is kept for <see cref="Backward"/>.</summary>
    public static void LogProbs(LlamaModel m, float* local, int T, int[] labels, float temperature, float[] logp, float[] lse)
    {
        Check(m, T, labels, temperature, logp.Length, lse.Length);
        var comm = m.Comm;
        if (comm is null || comm.Tp == 1)
        {
            fixed (int* pl = labels)
            fixed (float* pp = logp, ps = lse)
                Native.Check(Native.realn_op_logprobs_fwd(m.Stream.Ptr, DType.F32, local, pl, null, T, m.Config.Vocab, temperature, pp, null, ps));
            return;
        }
        int tp = comm.Tp, vl = m.VocabLocal, vs = m.VocabStart;
        float inv = 1f / temperature;
        using var buf = new HostBlock(Math.Max(64, ((long)tp * T + 2L * T) * 4));
        float* maxes = (float*)buf.Pointer, sums = maxes + (long)tp * T;
        for (int t = 0; t < T; t++) maxes[(long)comm.Model * T + t] = TensorPrimitives.Max(new ReadOnlySpan<float>(local + (long)t * vl, vl)) * inv;
        comm.TpAllGather(maxes, (long)tp * T);
        var scaled = new float[vl];
        for (int t = 0; t < T; t++)
        {
            float g = float.NegativeInfinity;
            for (int r = 0; r < tp; r++) g = MathF.Max(g, maxes[(long)r * T + t]);
            maxes[t] = g;  // row t's global max now at t (entries r*T+t with r > 0 are no longer needed)
            var row = new ReadOnlySpan<float>(local + (long)t * vl, vl);
            TensorPrimitives.Multiply(row, inv, scaled);
            TensorPrimitives.Subtract(scaled, g, scaled);
            TensorPrimitives.Exp(scaled, scaled);
            sums[t] = TensorPrimitives.Sum(scaled);
            int j = labels[t] - vs;
            sums[T + t] = (uint)j < (uint)vl ? row[j] * inv : 0f;
        }
        comm.TpAllReduce(sums, 2L * T);
        for (int t = 0; t < T; t++)
        {
            lse[t] = maxes[t] + MathF.Log(sums[t]);
            logp[t] = sums[T + t] - lse[t];
        }
    }

    /// <summary>dLocal[t, j] = dlogp[t] * d logp[t] / d logits[t, j] for this rank's columns
    /// (overwritten); no communication.</summary>
    public static void Backward(LlamaModel m, float* local, int T, int[] labels, float temperature, float[] lse, float[] dlogp, float* dLocal)
    {
        Check(m, T, labels, temperature, dlogp.Length, lse.Length);
        var comm = m.Comm;
        if (comm is null || comm.Tp == 1)
        {
            fixed (int* pl = labels)
            fixed (float* pd = dlogp, ps = lse)
                Native.Check(Native.realn_op_logprobs_bwd(m.Stream.Ptr, DType.F32, local, pl, null, T, m.Config.Vocab, temperature, ps, pd, null, dLocal));
            return;
        }
        int vl = m.VocabLocal, vs = m.VocabStart;
        float inv = 1f / temperature;
        for (int t = 0; t < T; t++)
        {
            var d = new Span<float>(dLocal + (long)t * vl, vl);
            if (dlogp[t] == 0) { d.Clear(); continue; }
            // d logp / d z_j = (1[j = label] - softmax_j) / temperature
            TensorPrimitives.Multiply(new ReadOnlySpan<float>(local + (long)t * vl, vl), inv, d);
            TensorPrimitives.Subtract(d, lse[t], d);
            TensorPrimitives.Exp(d, d);
            TensorPrimitives.Multiply(d, -dlogp[t] * inv, d);
            int j = labels[t] - vs;
            if ((uint)j < (uint)vl) d[j] += dlogp[t] * inv;
        }
    }

    private static void Check(LlamaModel m, int T, int[] labels, float temperature, int n1, int n2)
    {
        if (m.ScalarHead || !m.HasHead) throw new ArgumentException("log-probs need the last pipeline stage of a language-model head");
        if (!(temperature > 0)) throw new ArgumentException($"log-probs need temperature > 0 (got {temperature})");
        if (labels.Length != T || n1 != T || n2 != T) throw new ArgumentException($"log-probs of {T} rows need {T} labels and outputs");
        foreach (var l in labels)
            if ((uint)l >= (uint)m.Config.Vocab) throw new ArgumentException($"label {l} outside the vocabulary [0, {m.Config.Vocab})");
    }
}
