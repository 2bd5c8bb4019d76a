// Direct OpenBLAS import, used ONLY as the in-run reference of the GEMM benchmarks (the ABI's
// realn_op_gemm must reach >= 95% of it). Resolved to libopenblas.so.0 by NativeLibraryResolver.
using System.Runtime.InteropServices;

namespace ReaLNative.Interop;

public static unsafe partial class OpenBlas
{
    public const int RowMajor = 101, NoTrans = 111, Trans = 112;

    [LibraryImport("openblas")]
    public static partial void cblas_sgemm(int order, int transA, int transB, int m, int n, int k, float alpha,
        float* a, int lda, float* b, int ldb, float beta, float* c, int ldc);
}
