// RMSNorm forward/backward, parallel over rows. Row statistics (sum of squares, the backward's
// dot product) accumulate in double inside `omp simd` reductions: still one vectorised pass.
// The weight gradient is a column sum over rows; to keep it independent of the thread count
// without atomics, the rows are cut into blocks by the row count alone, each block sums into a
// private double row, then the block rows are added in block order (per column, in parallel).
// The scratch is kept per calling thread and only grows, so steady-state calls allocate nothing.
// REALN_DTYPE_BF16: the weight is bf16 (widened once per call, exactly); x, y, rstd, dy, dx and
// the weight gradient dw are fp32. The backward then differentiates the function the bf16 forward
// computed (the same widened weight), not the fp32 master's.
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "bf16.hpp"
#include "cpu_ops.hpp"

namespace realn::cpu {
namespace {
constexpr int64_t kPar = 1 << 14;  // elements below which one thread does the whole op

int threads_for(int64_t rows, int64_t dim) {
    if (rows * dim <= kPar) return 1;
    return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(omp_get_max_threads(), rows)));
}

// Row blocks of the weight-gradient sum: a function of the row count only (never of the thread
// count), at most kMaxRowBlocks, each of at least kMinBlockRows rows.
constexpr int64_t kMaxRowBlocks = 32, kMinBlockRows = 8;
int64_t row_blocks(int64_t rows) {
    return std::clamp<int64_t>(rows / kMinBlockRows, 1, kMaxRowBlocks);
}

// The weight as fp32: w itself, or (bf16) widened into a per-thread buffer that only grows.
const float* weight_f32(int32_t dtype, const void* w, int64_t dim) {
    if (dtype != REALN_DTYPE_BF16) return static_cast<const float*>(w);
    thread_local std::vector<float> wide;
    if (wide.size() < static_cast<size_t>(dim)) wide.resize(static_cast<size_t>(dim));
    bf16_to_f32_n(static_cast<const uint16_t*>(w), wide.data(), dim);
    return wide.data();
}
}  // namespace

void rmsnorm_fwd(realn_stream_t, int32_t dtype, const void* x, const void* w, void* y, float* rstd,
                 int64_t rows, int64_t dim, float eps) {
    const auto* X = static_cast<const float*>(x);
    const float* W = weight_f32(dtype, w, dim);
    auto* Y = static_cast<float*>(y);
#pragma omp parallel for schedule(static) num_threads(threads_for(rows, dim))
    for (int64_t r = 0; r < rows; ++r) {
        const float* xr = X + r * dim;
        float* yr = Y + r * dim;
        double ss = 0.0;
#pragma omp simd reduction(+ : ss)
        for (int64_t j = 0; j < dim; ++j) ss += double(xr[j]) * double(xr[j]);
        const double rs = 1.0 / std::sqrt(ss / double(dim) + double(eps));
        const float rsf = static_cast<float>(rs);
        if (rstd) rstd[r] = rsf;
#pragma omp simd
        for (int64_t j = 0; j < dim; ++j) yr[j] = xr[j] * rsf * W[j];
    }
}

// y_j = x_j r w_j, r = (mean(x^2) + eps)^(-1/2):
//   dx_j = r w_j dy_j - x_j r^3 / dim * sum_k(dy_k w_k x_k);   dw_j += sum_rows dy_j x_j r.
void rmsnorm_bwd(realn_stream_t, int32_t dtype, const void* x, const void* w, const float* rstd,
                 const void* dy, void* dx, void* dw, int64_t rows, int64_t dim) {
    const auto* X = static_cast<const float*>(x);
    const float* W = weight_f32(dtype, w, dim);
    const auto* DY = static_cast<const float*>(dy);
    auto* DX = static_cast<float*>(dx);
    auto* DW = static_cast<float*>(dw);
    const int64_t blocks = row_blocks(rows), per = (rows + blocks - 1) / blocks;
    thread_local std::vector<double> scratch;
    if (scratch.size() < static_cast<size_t>(blocks * dim))
        scratch.resize(static_cast<size_t>(blocks * dim));
    double* parts = scratch.data();
    const int nt = threads_for(rows, dim);
#pragma omp parallel num_threads(nt)
    {
#pragma omp for schedule(static)
        for (int64_t b = 0; b < blocks; ++b) {
            const int64_t lo = std::min(rows, b * per), hi = std::min(rows, lo + per);
            double* __restrict part = parts + b * dim;
            std::fill(part, part + dim, 0.0);
            for (int64_t r = lo; r < hi; ++r) {
                const float* __restrict xr = X + r * dim;
                const float* __restrict gr = DY + r * dim;
                float* __restrict dxr = DX + r * dim;
                const double rs = rstd[r];
                double dot = 0.0;
#pragma omp simd reduction(+ : dot)
                for (int64_t j = 0; j < dim; ++j) dot += double(gr[j] * W[j]) * double(xr[j]);
                const float a = static_cast<float>(rs);
                const float c = static_cast<float>(rs * rs * rs * dot / double(dim));
#pragma omp simd
                for (int64_t j = 0; j < dim; ++j) {
                    dxr[j] = a * W[j] * gr[j] - c * xr[j];
                    part[j] += double(gr[j] * xr[j]) * rs;
                }
            }
        }
        // Per column, the block partials added in block order (the implicit barrier above
        // separates the passes).
#pragma omp for schedule(static)
        for (int64_t j = 0; j < dim; ++j) {
            double acc = 0.0;
            for (int64_t b = 0; b < blocks; ++b) acc += parts[b * dim + j];
            DW[j] += static_cast<float>(acc);
        }
    }
}

}  // namespace realn::cpu
