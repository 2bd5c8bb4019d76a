// Reference SGEMM (CBLAS semantics) for builds without OpenBLAS (REALN_BLAS=reference). Plain loops,
// each C element summed over k in order in float, so results depend only on the shapes; parallel
// over rows of C with OpenMP (the callers already run it single-threaded per fixed tile). It is
// slow (no blocking, no SIMD beyond what the compiler does): it exists so the native library and its
// case list build on a GPU host with no BLAS package, not for CPU training.
#include "cblas.h"

#include <omp.h>

#include <cstdint>

extern "C" void cblas_sgemm(CBLAS_ORDER order, CBLAS_TRANSPOSE ta, CBLAS_TRANSPOSE tb, blasint m, blasint n, blasint k,
                            float alpha, const float* a, blasint lda, const float* b, blasint ldb, float beta, float* c,
                            blasint ldc) {
    if (order == CblasColMajor) {  // column-major C = row-major C^T = op(B)^T op(A)^T
        cblas_sgemm(CblasRowMajor, tb, ta, n, m, k, alpha, b, ldb, a, lda, beta, c, ldc);
        return;
    }
    const bool tA = ta != CblasNoTrans, tB = tb != CblasNoTrans;
#pragma omp parallel for schedule(static) if (int64_t(m) * n * k > (1 << 20))
    for (blasint i = 0; i < m; ++i) {
        for (blasint j = 0; j < n; ++j) {
            float acc = 0.0f;
            for (blasint p = 0; p < k; ++p) {
                const float x = tA ? a[int64_t(p) * lda + i] : a[int64_t(i) * lda + p];
                const float y = tB ? b[int64_t(j) * ldb + p] : b[int64_t(p) * ldb + j];
                acc += x * y;
            }
            float* out = c + int64_t(i) * ldc + j;
            *out = beta == 0.0f ? alpha * acc : alpha * acc + beta * *out;
        }
    }
}

extern "C" void openblas_set_num_threads(int n) {
    if (n > 0) omp_set_num_threads(n);
}

extern "C" char* openblas_get_corename(void) {
    static char name[] = "reference";
    return name;
}
