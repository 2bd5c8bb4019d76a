// Horizontal sums of SIMD registers in one fixed order, shared by the kernels whose results must
// not depend on which of them ran (small-M linear, KV-cache decode).
#pragma once

#include <immintrin.h>

namespace realn::cpu {

// Lane sum in a fixed order: 16 -> 8 (halves) -> 4 -> 2 -> 1 (GCC 12's _mm512_reduce_add_ps warns).
__attribute__((target("avx512f"))) inline float hsum512(__m512 v) {
    const __m256 lo = _mm512_castps512_ps256(v);
    const __m256 hi = _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1));
    const __m256 s8 = _mm256_add_ps(lo, hi);
    const __m128 s = _mm_add_ps(_mm256_castps256_ps128(s8), _mm256_extractf128_ps(s8, 1));
    const __m128 t = _mm_add_ps(s, _mm_movehl_ps(s, s));
    return _mm_cvtss_f32(_mm_add_ss(t, _mm_shuffle_ps(t, t, 1)));
}

}  // namespace realn::cpu
