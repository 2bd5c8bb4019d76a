// Rotary position embedding, Hugging Face LLaMA convention (rotate_half): within the first rot_dim
// dims of each head, element i pairs with i + rot_dim/2 and turns by angle pos * inv_freq[i]
// (theta^(-2i/rot_dim) unscaled; the caller's table, in double); dims past rot_dim pass through. Positions are per packed token; the cos/sin row is computed
// per position (in double: angles reach thousands of radians, where fp32 argument rounding alone would
// cost ~1e-4) and shared by all heads of that token. The backward is the inverse rotation (sin
// negated), which is also the transpose. y may alias x exactly: each pair is read before it is
// written, and a vector chunk never spans both halves because the loop runs rot_dim/2 times.
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "cpu_ops.hpp"

namespace realn::cpu {

void rotary(realn_stream_t, int32_t, const void* x, const int32_t* positions, void* y,
            int64_t tokens, int64_t heads, int64_t head_dim, int64_t rot_dim, const double* inv_freq,
            bool inverse) {
    const auto* X = static_cast<const float*>(x);
    auto* Y = static_cast<float*>(y);
    const int64_t half = rot_dim / 2;
    const double* F = inv_freq;
    const double sign = inverse ? -1.0 : 1.0;
    const int64_t row = heads * head_dim;
    const bool copy_tail = rot_dim < head_dim && X != Y;
    // Packed sequences repeat positions (every sequence starts at 0): when the call's position range is
    // narrower than its token count, the cos/sin rows are computed once per position into a table (the same
    // double math, so the same floats) instead of once per token. Decode steps (one token per sequence at
    // spread positions) keep the per-token rows.
    int32_t lo = 0, hi = -1;
    if (tokens > 0) {
        lo = hi = positions[0];
        for (int64_t t = 1; t < tokens; ++t) {
            lo = std::min(lo, positions[t]);
            hi = std::max(hi, positions[t]);
        }
    }
    const int64_t span = static_cast<int64_t>(hi) - lo + 1;
    const bool tabled = tokens > 0 && span * 2 <= tokens;
    thread_local std::vector<float> table;  // [position - lo][cos(half) | sin(half)]
    if (tabled) {
        table.resize(static_cast<size_t>(span * 2 * half));
        float* T = table.data();
#pragma omp parallel for schedule(static) if (span * half > (1 << 12))
        for (int64_t p = 0; p < span; ++p) {
            const double pos = static_cast<double>(lo + p);
            float* C = T + p * 2 * half;
            for (int64_t i = 0; i < half; ++i) {
                const double a = pos * F[i];
                C[i] = static_cast<float>(std::cos(a));
                C[half + i] = static_cast<float>(sign * std::sin(a));
            }
        }
    }
    const float* T = table.data();
#pragma omp parallel if (tokens * row > (1 << 14))
    {
        thread_local std::vector<float> cs;  // [cos(half) | sin(half)] of the current token
        cs.resize(static_cast<size_t>(2 * half));
#pragma omp for schedule(static)
        for (int64_t t = 0; t < tokens; ++t) {
            const float* __restrict C;
            if (tabled) {
                C = T + static_cast<int64_t>(positions[t] - lo) * 2 * half;
            } else {
                float* own = cs.data();
                const double pos = positions[t];
                for (int64_t i = 0; i < half; ++i) {
                    const double a = pos * F[i];
                    own[i] = static_cast<float>(std::cos(a));
                    own[half + i] = static_cast<float>(sign * std::sin(a));
                }
                C = own;
            }
            const float* __restrict S = C + half;
            for (int64_t h = 0; h < heads; ++h) {
                const float* xh = X + t * row + h * head_dim;
                float* yh = Y + t * row + h * head_dim;
#pragma omp simd
                for (int64_t i = 0; i < half; ++i) {
                    const float a = xh[i], b = xh[i + half];
                    yh[i] = a * C[i] - b * S[i];
                    yh[i + half] = b * C[i] + a * S[i];
                }
                if (copy_tail)
                    std::memcpy(yh + rot_dim, xh + rot_dim, sizeof(float) * (head_dim - rot_dim));
            }
        }
    }
}

}  // namespace realn::cpu
