// Generalised advantage estimation over packed sequences, on the native gae op (realn.h
// realn_op_gae). The value layout is the op's: each sequence's per-step values followed by one
// bootstrap value; Gae.WithBootstrap builds it from per-step critic values, with bootstrap 0
// (a generation that stops at EOS or at gen_len ends the episode).
using ReaLNative.Interop;

namespace ReaLNative.Engine.Algorithms;

internal static unsafe class Gae
{
    public static float[] WithBootstrap(ReadOnlySpan<float> values, ReadOnlySpan<int> cuSeqlens)
    {
        int nseq = cuSeqlens.Length - 1;
        if (cuSeqlens[nseq] != values.Length)
            throw new ArgumentException($"cu_seqlens ends at {cuSeqlens[nseq]}, expected {values.Length}", nameof(cuSeqlens));
        var r = new float[values.Length + nseq];
        for (int s = 0; s < nseq; s++)
            values[cuSeqlens[s]..cuSeqlens[s + 1]].CopyTo(r.AsSpan(cuSeqlens[s] + s));
        return r;
    }

    public static void Compute(NativeStream stream, ReadOnlySpan<float> rewards, ReadOnlySpan<float> valuesWithBootstrap,
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
