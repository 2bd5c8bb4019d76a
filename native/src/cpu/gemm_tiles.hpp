// The thread-count-independent SGEMM of the CPU backend (gemm.cpp explains the scheme), shared by
// the gemm op and the linear layer; tiling_for is exposed so tests can see the tiles a shape gets.
#pragma once

#include <cstdint>

namespace realn::cpu {

// Output tiles of tm x tn (edge tiles smaller), gm x gn of them per matrix.
struct GemmTiling {
    int64_t tm, tn, gm, gn;
};

// A pure function of the problem shape: never of the thread count.
GemmTiling tiling_for(int64_t m, int64_t n, int64_t k);

// Row-major C_b = alpha op(A_b) op(B_b) + beta C_b for b < batch (matrix strides sa, sb, sc), each
// output element computed by one single-threaded cblas_sgemm over the full K.
void fixed_tile_sgemm(bool ta, bool tb, int64_t m, int64_t n, int64_t k, float alpha,
                      const float* A, int64_t lda, int64_t sa, const float* B, int64_t ldb,
                      int64_t sb, float beta, float* C, int64_t ldc, int64_t sc, int64_t batch);

}  // namespace realn::cpu
