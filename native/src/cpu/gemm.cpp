// GEMM on the CPU backend whose result does not depend on the number of threads: every op that
// multiplies matrices (gemm, linear_fwd, linear_bwd) goes through fixed_tile_sgemm below.
//
// Why: OpenBLAS's result for an element depends on how it splits the work. Its single-threaded
// driver (level3.c) and its threaded driver (level3_thread.c) cut K into different panels when
// GEMM_Q < K < 2 GEMM_Q (GEMM_Q is 320 on Haswell kernels, 448 on SkylakeX), so the sum per
// element is rounded differently, and which driver runs depends on the thread count. A worker
// with 1 thread and an in-process run with 2 then differ in the last bit.
//
// How: the output C (per batch matrix) is cut into tiles whose shape is a pure function of
// (m, n, k) (tiling_for: never of the thread count); tiles are handed to OpenMP threads and each
// is one single-threaded cblas_sgemm call over the FULL K. An element's value is then the value
// of that one single-threaded call, whichever thread ran it and however many threads there were.
// OpenBLAS (OpenMP build) runs single-threaded when omp_in_parallel() or omp_get_max_threads()
// is 1 (common_thread.h, num_cpu_avail); we set the calling task's nthreads ICV to 1 around
// every call (OneBlasThread), which covers both the team of one and the inactive region. OpenBLAS
// small-matrix kernels (SkylakeX) are chosen from the call's (m, n, k) too, i.e. from the tile
// shape, which is again a function of the problem shape only.
//
// The guarantee (README "Determinism"): bit-identical results for any OpenMP thread count, on the
// same machine with the same OpenBLAS build and core type (OPENBLAS_CORETYPE) and the same librealn
// build (-march=native). NOT across CPUs or core types: another kernel set rounds differently.
//
// Cost: each tile packs its own A rows and B columns (OpenBLAS cannot share packed panels across
// calls), so tiling_for trades that repacking against parallelism (see there): a few big tiles
// for square training shapes (2 x 2 for 1024^3), many thin ones where one operand is small
// (decode, M = 1..64: B is streamed once either way, and SkylakeX's small-matrix kernels take
// thin tiles).
#include <cblas.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "cpu_ops.hpp"
#include "gemm_bf16.hpp"
#include "gemm_tiles.hpp"

namespace realn::cpu {
namespace {

// Splitting costs packing: OpenBLAS packs the A rows and B columns of every call, so an m x n
// output cut into gm x gn tiles packs A gn times and B gm times instead of once each. Measured
// on a Xeon (AVX-512 kernels, one thread), packing a float costs about as much as 45..120
// multiply-adds (depending on operand and transpose; kPackFma is in between), so the extra cost
// relative to the product is about
//   c = kPackFma * ((gn - 1) m + (gm - 1) n) / (m n)          (K cancels).
// More tiles buy parallelism, fewer save packing, and the thread count must not decide. So the
// grid is the one with the best geometric mean, over P = 1, 2, 4 threads (what a worker process
// typically has), of its time relative to a perfect split: (1 + c) ceil(T / P) P / T for T
// tiles. Tiles hold at least kMinTileWork (multiply-adds, plus kStreamFma per operand float for
// memory-bound shapes such as M = 1). Beyond 4 threads a GEMM may have fewer tiles than threads.
constexpr double kPackFma = 64.0;
constexpr int kMaxThreadsScored = 4;
constexpr double kStreamFma = 4.0;
constexpr double kMinTileWork = double(1 << 20);  // ~20 us on one core: less does not pay a thread
constexpr int64_t kMaxTiles = 16;
constexpr int64_t kAlign = 16;  // tile edges are multiples of this (OpenBLAS unroll widths)

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// The calling task runs OpenBLAS single-threaded while this lives (OpenMP nthreads ICV of this
// task set to 1; restored after).
struct OneBlasThread {
    int saved = omp_get_max_threads();
    OneBlasThread() {
        if (saved != 1) omp_set_num_threads(1);
    }
    ~OneBlasThread() {
        if (saved != 1) omp_set_num_threads(saved);
    }
};

}  // namespace

GemmTiling tiling_for(int64_t m, int64_t n, int64_t k) {
    if (m <= 0 || n <= 0) return {std::max<int64_t>(m, 1), std::max<int64_t>(n, 1), 0, 0};
    const double mn = double(m) * double(n), kk = double(std::max<int64_t>(k, 1));
    const double work = mn * kk + kStreamFma * (double(m) + double(n)) * kk;
    GemmTiling best{m, n, 1, 1};
    double best_score = 0.0;  // sum of log2 relative times; the single tile's is log2(P) per P
    for (int p = 1; p <= kMaxThreadsScored; p *= 2) best_score += std::log2(double(p));
    for (int64_t gm = 1; gm <= kMaxTiles; ++gm) {
        const int64_t tm = std::min(m, ceil_div(ceil_div(m, gm), kAlign) * kAlign);
        if (ceil_div(m, tm) != gm) continue;  // not possible with aligned edges
        for (int64_t gn = 1; gm * gn <= kMaxTiles; ++gn) {
            const int64_t tn = std::min(n, ceil_div(ceil_div(n, gn), kAlign) * kAlign);
            if (ceil_div(n, tn) != gn) continue;
            const int64_t tiles = gm * gn;
            if (tiles == 1) continue;
            if (work / double(tiles) < kMinTileWork) break;  // shrinks as gn grows
            const double c =
                kPackFma * (double(gn - 1) * double(m) + double(gm - 1) * double(n)) / mn;
            double score = 0.0;
            for (int64_t p = 1; p <= kMaxThreadsScored; p *= 2)
                score += std::log2((1.0 + c) * double(ceil_div(tiles, p) * p) / double(tiles));
            if (score < best_score) {
                best = {tm, tn, gm, gn};
                best_score = score;
            }
        }
    }
    return best;
}

void fixed_tile_sgemm(bool ta, bool tb, int64_t m, int64_t n, int64_t k, float alpha,
                      const float* A, int64_t lda, int64_t sa, const float* B, int64_t ldb,
                      int64_t sb, float beta, float* C, int64_t ldc, int64_t sc, int64_t batch) {
    if (m <= 0 || n <= 0 || batch <= 0) return;
    const GemmTiling t = tiling_for(m, n, k);
    const int64_t per = t.gm * t.gn, total = per * batch;
    const CBLAS_TRANSPOSE TA = ta ? CblasTrans : CblasNoTrans;
    const CBLAS_TRANSPOSE TB = tb ? CblasTrans : CblasNoTrans;
    auto tile = [&](int64_t id) {
        const int64_t b = id / per, ij = id % per, i = ij / t.gn, j = ij % t.gn;
        const int64_t r0 = i * t.tm, c0 = j * t.tn;
        const int64_t rows = std::min(t.tm, m - r0), cols = std::min(t.tn, n - c0);
        // Row r0 of op(A): A row r0, or A column r0 when transposed; likewise for B's columns.
        const float* a = A + b * sa + (ta ? r0 : r0 * lda);
        const float* bb = B + b * sb + (tb ? c0 * ldb : c0);
        float* c = C + b * sc + r0 * ldc + c0;
        cblas_sgemm(CblasRowMajor, TA, TB, static_cast<blasint>(rows), static_cast<blasint>(cols),
                    static_cast<blasint>(k), alpha, a, static_cast<blasint>(lda), bb,
                    static_cast<blasint>(ldb), beta, c, static_cast<blasint>(ldc));
    };
    const int threads = static_cast<int>(std::min<int64_t>(omp_get_max_threads(), total));
    if (threads <= 1) {
        OneBlasThread one;
        for (int64_t id = 0; id < total; ++id) tile(id);
        return;
    }
#pragma omp parallel num_threads(threads)
    {
        OneBlasThread one;
#pragma omp for schedule(dynamic, 1)
        for (int64_t id = 0; id < total; ++id) tile(id);
    }
}

void gemm(realn_stream_t, int32_t dtype, int32_t ta, int32_t tb, int64_t m, int64_t n, int64_t k,
          float alpha, const void* a, int64_t lda, int64_t sa, const void* b, int64_t ldb,
          int64_t sb, float beta, void* c, int64_t ldc, int64_t sc, int64_t batch) {
    if (dtype == REALN_DTYPE_BF16) {  // A, B bf16; C fp32 (gemm_bf16.hpp)
        const Bf16GemmPath path = bf16_gemm_path();
        for (int64_t bi = 0; bi < batch; ++bi)
            gemm_mixed(path, m, n, k, alpha,
                       {static_cast<const uint16_t*>(a) + bi * sa, lda, ta != 0, true},
                       {static_cast<const uint16_t*>(b) + bi * sb, ldb, tb != 0, true}, beta,
                       static_cast<float*>(c) + bi * sc, ldc);
        return;
    }
    fixed_tile_sgemm(ta != 0, tb != 0, m, n, k, alpha, static_cast<const float*>(a), lda, sa,
                     static_cast<const float*>(b), ldb, sb, beta, static_cast<float*>(c), ldc, sc,
                     batch);
}

}  // namespace realn::cpu
