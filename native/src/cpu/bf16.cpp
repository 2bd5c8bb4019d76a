// Bulk bf16 conversions (see bf16.hpp): the scalar RNE written so the compiler vectorises it (same
// bits as f32_to_bf16 on every input, NaN included; no hardware vcvtneps2bf16, which flushes
// subnormal inputs to zero).
#include "bf16.hpp"

namespace realn::cpu {

void f32_to_bf16_n(const float* src, uint16_t* dst, int64_t n) {
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) {
        uint32_t u;
        std::memcpy(&u, src + i, 4);
        const bool nan = (u & 0x7fffffffu) > 0x7f800000u;
        const uint32_t r = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
        dst[i] = static_cast<uint16_t>(nan ? ((u >> 16) | 0x40u) : r);
    }
}

void bf16_to_f32_n(const uint16_t* src, float* dst, int64_t n) {
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) {
        const uint32_t u = static_cast<uint32_t>(src[i]) << 16;
        std::memcpy(dst + i, &u, 4);
    }
}

}  // namespace realn::cpu
