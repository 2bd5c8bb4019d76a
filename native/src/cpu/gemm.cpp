// GEMM on the CPU backend: row-major cblas_sgemm from OpenBLAS. A strided batch of small
// matrices runs one matrix per OpenMP thread (OpenBLAS then runs single-threaded inside the
// parallel region); large matrices run one after another with OpenBLAS's own threading.
#include <cblas.h>
#include <omp.h>

#include "cpu_ops.hpp"

namespace realn::cpu {

void gemm(realn_stream_t, int32_t, int32_t ta, int32_t tb, int64_t m, int64_t n, int64_t k,
          float alpha, const void* a, int64_t lda, int64_t sa, const void* b, int64_t ldb,
          int64_t sb, float beta, void* c, int64_t ldc, int64_t sc, int64_t batch) {
    const auto* A = static_cast<const float*>(a);
    const auto* B = static_cast<const float*>(b);
    auto* C = static_cast<float*>(c);
    const CBLAS_TRANSPOSE TA = ta ? CblasTrans : CblasNoTrans;
    const CBLAS_TRANSPOSE TB = tb ? CblasTrans : CblasNoTrans;
    auto one = [&](int64_t i) {
        cblas_sgemm(CblasRowMajor, TA, TB, static_cast<blasint>(m), static_cast<blasint>(n),
                    static_cast<blasint>(k), alpha, A + i * sa, static_cast<blasint>(lda),
                    B + i * sb, static_cast<blasint>(ldb), beta, C + i * sc,
                    static_cast<blasint>(ldc));
    };
    const double flops = 2.0 * double(m) * double(n) * double(k);
    if (batch > 1 && flops < 8e6 && omp_get_max_threads() > 1) {
#pragma omp parallel for schedule(dynamic, 1)
        for (int64_t i = 0; i < batch; ++i) one(i);
    } else {
        for (int64_t i = 0; i < batch; ++i) one(i);
    }
}

}  // namespace realn::cpu
