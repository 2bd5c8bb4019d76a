// Generalised advantage estimation over packed sequences, on the native gae op (realn.h
// realn_op_gae). The value layout is the op's: each sequence's per-step values followed by one
// bootstrap value; Gae.WithBootstrap builds it from per-step critic values, with bootstrap 0
// (a generation that stops at EOS or at gen_len ends the episode).
using ReaLNative.Engine.Parallelism;
using ReaLNative.Interop;

namespace ReaLNative.Engine.Algorithms;

internal static class Gae
{
    public static float[] WithBootstrap(ReadOnlySpan<float> values, ReadOnlySpan<int> cuSeqlens) => RolloutAdvantages.GaeWithBootstrap(values, cuSeqlens);

    public static void Compute(NativeStream stream, ReadOnlySpan<float> rewards, ReadOnlySpan<float> valuesWithBootstrap,
                               ReadOnlySpan<int> cuSeqlens, double gamma, double lambda, Span<float> advantages, Span<float> returns) =>
        RolloutAdvantages.Gae(stream, rewards, valuesWithBootstrap, cuSeqlens, gamma, lambda, advantages, returns);
}
