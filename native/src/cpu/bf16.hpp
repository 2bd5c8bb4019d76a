// bf16 <-> fp32 on the CPU backend. fp32 -> bf16 rounds to nearest, ties to even (RNE), keeps NaN a
// (quiet) NaN and handles subnormals exactly like normal numbers (no flush to zero), so the scalar
// and the bulk conversions below give identical bits. bf16 -> fp32 is exact (a 16-bit shift).
#pragma once

#include <cstdint>
#include <cstring>

namespace realn::cpu {

inline uint16_t f32_to_bf16(float f) {
    uint32_t u;
    std::memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40);  // NaN
    u += 0x7fffu + ((u >> 16) & 1u);  // round to nearest even
    return static_cast<uint16_t>(u >> 16);
}

inline float bf16_to_f32(uint16_t h) {
    uint32_t u = static_cast<uint32_t>(h) << 16;
    float f;
    std::memcpy(&f, &u, 4);
    return f;
}

// A bf16 value widened to fp32 in one step (x rounded to bf16, back to fp32).
inline float round_to_bf16(float f) { return bf16_to_f32(f32_to_bf16(f)); }

// Bulk conversions, vectorised, single-threaded (callers parallelise over rows).
void f32_to_bf16_n(const float* src, uint16_t* dst, int64_t n);
void bf16_to_f32_n(const uint16_t* src, float* dst, int64_t n);

}  // namespace realn::cpu
