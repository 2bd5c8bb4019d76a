// Single native ops on host memory, checked, for measuring them against a reference (`realn bench
// kernels`: GEMM next to OpenBLAS, interval gather/scatter next to memcpy). Callers outside this
// assembly use these instead of the raw ABI entry points in Native.
namespace ReaLNative.Interop;

/// <summary>One native op per call, on CPU host buffers of the given stream; a failing status throws
/// <see cref="RealnException"/> with the native message.</summary>
public static unsafe class Kernels
{
    /// <summary>Row-major fp32 C = op(A) op(B) (alpha 1, beta 0, one batch); op transposes when asked.</summary>
    public static void Gemm(NativeStream stream, bool transA, bool transB, long m, long n, long k,
                            float* a, long lda, float* b, long ldb, float* c, long ldc) =>
        Native.Check(Native.realn_op_gemm(stream.Ptr, DType.F32, transA ? 1 : 0, transB ? 1 : 0, m, n, k, 1f, a, lda, 0, b, ldb, 0, 0f, c, ldc, 0, 1));

    /// <summary>Copies <paramref name="count"/> intervals (offsets and lengths in bytes) of <paramref name="flat"/> back to back into <paramref name="staging"/>.</summary>
    public static void IntervalGather(NativeStream stream, void* staging, void* flat, long* offsets, long* lengths, long count) =>
        Native.Check(Native.realn_interval_gather(stream.Ptr, staging, flat, offsets, lengths, count));

    /// <summary>The inverse of <see cref="IntervalGather"/>: back-to-back <paramref name="staging"/> bytes into the intervals of <paramref name="flat"/>.</summary>
    public static void IntervalScatter(NativeStream stream, void* flat, void* staging, long* offsets, long* lengths, long count) =>
        Native.Check(Native.realn_interval_scatter(stream.Ptr, flat, staging, offsets, lengths, count));

    /// <summary>The native library's OpenMP thread count.</summary>
    public static int Threads => Native.GetNumThreads();
}
