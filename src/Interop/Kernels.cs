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

    /// <summary>Most rows the CPU backend's linear forward computes with its small-M kernel
    /// (native/src/cpu/small_m_linear.hpp, kSmallMMaxRows); above it SGEMM (or the bf16 GEMM), whose
    /// value for a row depends on the call's shape. The small-M kernel sums each output element in
    /// one fixed order whatever the row count, so a row's value does not depend on its batch.</summary>
    public const int SmallMMaxRows = 64;

    /// <summary>
    /// The linear forward y = x w^T (+ bias) with every row computed in the small-M kernel's
    /// summation order whatever <paramref name="rows"/> is: rows in ceil(rows / 64) balanced chunks
    /// of at most <see cref="SmallMMaxRows"/>, one linear call each. A row's output is then the same
    /// bits whichever rows share the call (generation relies on it: a sequence decodes the same in a
    /// static batch of 256 and in a continuous batch of 64 slots). Each chunk streams the weights
    /// once; at 64 rows the kernel is compute-bound, so more chunks add little. Returns the first
    /// failing status (0 when every call succeeded).
    /// </summary>
    public static int LinearForwardRowInvariant(nint stream, int dtype, void* x, void* w, void* bias, float* y, long rows, long inFeatures, long outFeatures)
    {
        if (rows <= SmallMMaxRows) return Native.realn_op_linear_fwd(stream, dtype, x, w, bias, y, rows, inFeatures, outFeatures);
        long chunks = (rows + SmallMMaxRows - 1) / SmallMMaxRows, r0 = 0;
        for (long c = 0; c < chunks; c++)
        {
            long n = rows / chunks + (c < rows % chunks ? 1 : 0);
            int st = Native.realn_op_linear_fwd(stream, dtype, (float*)x + r0 * inFeatures, w, bias, y + r0 * outFeatures, n, inFeatures, outFeatures);
            if (st != 0) return st;
            r0 += n;
        }
        return 0;
    }

    /// <summary>Copies <paramref name="count"/> intervals (offsets and lengths in bytes) of <paramref name="flat"/> back to back into <paramref name="staging"/>.</summary>
    public static void IntervalGather(NativeStream stream, void* staging, void* flat, long* offsets, long* lengths, long count) =>
        Native.Check(Native.realn_interval_gather(stream.Ptr, staging, flat, offsets, lengths, count));

    /// <summary>The inverse of <see cref="IntervalGather"/>: back-to-back <paramref name="staging"/> bytes into the intervals of <paramref name="flat"/>.</summary>
    public static void IntervalScatter(NativeStream stream, void* flat, void* staging, long* offsets, long* lengths, long count) =>
        Native.Check(Native.realn_interval_scatter(stream.Ptr, flat, staging, offsets, lengths, count));

    /// <summary>The native library's OpenMP thread count.</summary>
    public static int Threads => Native.GetNumThreads();
}
