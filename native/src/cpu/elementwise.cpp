// Elementwise helpers the engine composes layers from (residual adds, gradient clipping,
// global norms, dtype conversion). Reductions accumulate in double and do not depend on the thread
// count: fixed chunks (a function of n), partial sums combined in chunk order.
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "../core/error.hpp"
#include "bf16.hpp"
#include "cpu_ops.hpp"
#include "parallel.hpp"

namespace realn::cpu {
namespace {
constexpr int64_t kPar = 1 << 15;

// Sum that does not depend on the thread count: fixed chunks of kSumChunk terms (a function of
// n only), each summed in order in double, then the chunk sums added in chunk order.
constexpr int64_t kSumChunk = 1 << 14;

template <typename F>
double det_sum(int64_t n, F term) {
    const int64_t chunks = (n + kSumChunk - 1) / kSumChunk;
    if (chunks <= 1) {
        double acc = 0.0;
        for (int64_t i = 0; i < n; ++i) acc += term(i);
        return acc;
    }
    thread_local std::vector<double> part;
    if (part.size() < static_cast<size_t>(chunks)) part.resize(static_cast<size_t>(chunks));
    double* parts = part.data();
#pragma omp parallel for schedule(static) if (n > kPar)
    for (int64_t c = 0; c < chunks; ++c) {
        const int64_t lo = c * kSumChunk, hi = std::min(n, lo + kSumChunk);
        double acc = 0.0;
        for (int64_t i = lo; i < hi; ++i) acc += term(i);
        parts[c] = acc;
    }
    double s = 0.0;
    for (int64_t c = 0; c < chunks; ++c) s += parts[c];
    return s;
}

}  // namespace

void axpby(realn_stream_t, int32_t, int64_t n, float alpha, const void* x, float beta, void* y) {
    const auto* X = static_cast<const float*>(x);
    auto* Y = static_cast<float*>(y);
#pragma omp parallel for simd schedule(static) if (n > kPar)
    for (int64_t i = 0; i < n; ++i) Y[i] = alpha * X[i] + beta * Y[i];
}

void add(realn_stream_t, int32_t, int64_t n, const void* a, const void* b, void* out) {
    const auto* A = static_cast<const float*>(a);
    const auto* B = static_cast<const float*>(b);
    auto* O = static_cast<float*>(out);
#pragma omp parallel for simd schedule(static) if (n > kPar)
    for (int64_t i = 0; i < n; ++i) O[i] = A[i] + B[i];
}

double sumsq(realn_stream_t, const float* x, int64_t n) {
    return det_sum(n, [x](int64_t i) { return double(x[i]) * double(x[i]); });
}

void scale(realn_stream_t, float* x, int64_t n, float alpha) {
#pragma omp parallel for simd schedule(static) if (n > kPar)
    for (int64_t i = 0; i < n; ++i) x[i] *= alpha;
}

int64_t count_nonfinite(realn_stream_t, const float* x, int64_t n) {
    int64_t c = 0;
#pragma omp parallel for reduction(+ : c) schedule(static) if (n > kPar)
    for (int64_t i = 0; i < n; ++i) c += std::isfinite(x[i]) ? 0 : 1;
    return c;
}

void convert(realn_stream_t, int32_t dst_dtype, void* dst, int32_t src_dtype, const void* src,
             int64_t n) {
    if (dst_dtype == src_dtype) {
        const int64_t es = dst_dtype == REALN_DTYPE_F32 ? 4 : 2;
        parallel_memcpy(dst, src, n * es);
        return;
    }
    if ((src_dtype == REALN_DTYPE_F32 && dst_dtype == REALN_DTYPE_BF16) ||
        (src_dtype == REALN_DTYPE_BF16 && dst_dtype == REALN_DTYPE_F32)) {
        // Bulk RNE (bf16.cpp), in chunks of a size fixed by n: same bits as the scalar loop.
        constexpr int64_t kChunk = 1 << 14;
        const int64_t chunks = (n + kChunk - 1) / kChunk;
#pragma omp parallel for schedule(static) if (n > kPar)
        for (int64_t c = 0; c < chunks; ++c) {
            const int64_t lo = c * kChunk, len = std::min(kChunk, n - lo);
            if (src_dtype == REALN_DTYPE_F32)
                f32_to_bf16_n(static_cast<const float*>(src) + lo, static_cast<uint16_t*>(dst) + lo, len);
            else
                bf16_to_f32_n(static_cast<const uint16_t*>(src) + lo, static_cast<float*>(dst) + lo, len);
        }
        return;
    }
    auto load = [&](int64_t i) -> float {
        switch (src_dtype) {
            case REALN_DTYPE_F32: return static_cast<const float*>(src)[i];
            case REALN_DTYPE_BF16: return bf16_to_f32(static_cast<const uint16_t*>(src)[i]);
            default: return static_cast<float>(static_cast<const _Float16*>(src)[i]);
        }
    };
#pragma omp parallel for schedule(static) if (n > kPar)
    for (int64_t i = 0; i < n; ++i) {
        const float f = load(i);
        switch (dst_dtype) {
            case REALN_DTYPE_F32: static_cast<float*>(dst)[i] = f; break;
            case REALN_DTYPE_BF16: static_cast<uint16_t*>(dst)[i] = f32_to_bf16(f); break;
            default: static_cast<_Float16*>(dst)[i] = static_cast<_Float16>(f); break;
        }
    }
}

}  // namespace realn::cpu
