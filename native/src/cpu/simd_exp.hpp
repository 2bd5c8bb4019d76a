// A vectorisable expf for the row-wise kernels (softmax, log-softmax, SiLU). glibc's expf has no
// SIMD variant without -ffast-math, so a loop calling it runs scalar (~4 ns/element); this one is
// plain arithmetic and bit operations that GCC turns into 8-wide AVX2 code inside `omp simd`
// loops. Cephes-style: exp(x) = 2^n * exp(r), n = round(x / ln2), |r| <= ln2/2, degree-6 polynomial; max error ~2 ulp
// on [-87, 88]. Below -87.3 it returns exactly 0 (so exp(-inf) = 0: masked logits), above 88.3
// it saturates at ~2^127 (finite) instead of +inf. NaN in gives NaN out.
#pragma once
// (No `omp declare simd` on it: being inline, it is inlined and vectorised with its caller's loop.)

#include <cstdint>
#include <cstring>

namespace realn::cpu {


inline float simd_expf(float x) {
    // Clamp so the exponent stays representable; NaN passes through (both compares are false).
    const float xc = x > 88.3f ? 88.3f : (x < -87.3f ? -87.3f : x);
    // Round to nearest by the 1.5 * 2^23 trick: floorf does not vectorise without
    // -fno-trapping-math, and would cost a vroundps anyway.
    const float n = (xc * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
    float r = xc - n * 0.693359375f;
    r = r - n * -2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    // 2^n built in the exponent field; n in [-126, 127] here because of the clamps.
    const int32_t e = (static_cast<int32_t>(n) + 127) << 23;
    float scale;
    std::memcpy(&scale, &e, sizeof scale);
    return xc < -87.3f ? 0.0f : p * scale;
}

}  // namespace realn::cpu
