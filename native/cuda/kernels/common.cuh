// Shared by every device file of the CUDA backend. The kernels are compiled to PTX either by
// clang-14 without any CUDA toolkit (-nocudainc -nocudalib: no CUDA headers, no libdevice) or by
// nvcc where one exists (REALN_CUDA_COMPILER); this header gives both the same spelling.
// Math without libdevice: sqrt/fma lower to PTX instructions; exp/sin/cos use the hardware
// approximations (ex2.approx, sin.approx, cos.approx), whose error (~2^-22 relative for ex2,
// ~2^-21 absolute for sin/cos on [-pi, pi]) is inside the fp32 tolerances of the case list.
// A third spelling, REALN_CUDA_EMULATE, compiles the kernels as host C++ for ctest
// `cuda_kernels_emulated` (native/tests/cuda_emulator.hpp: one OS thread per GPU thread, real
// barriers and warp exchanges, blocks one after another so function statics are shared memory).
#pragma once

#if defined(REALN_CUDA_EMULATE)
#define REALN_GLOBAL inline
#define REALN_DEVICE static inline
#define REALN_SHARED static
REALN_DEVICE float realn_exp2(float x) { return realn::emu::exp2_(x); }
REALN_DEVICE float realn_sin(float x) { return realn::emu::sin_(x); }
REALN_DEVICE float realn_cos(float x) { return realn::emu::cos_(x); }
REALN_DEVICE void realn_sync() { realn::emu::syncthreads(); }
REALN_DEVICE unsigned realn_f2u(float x) { return __builtin_bit_cast(unsigned, x); }
REALN_DEVICE float realn_u2f(unsigned x) { return __builtin_bit_cast(float, x); }
REALN_DEVICE float realn_sqrt(float x) { return __builtin_sqrtf(x); }
REALN_DEVICE double realn_sqrt_d(double x) { return __builtin_sqrt(x); }
REALN_DEVICE double realn_rint_d(double x) { return __builtin_rint(x); }
REALN_DEVICE float realn_log2(float x) { return realn::emu::log2_(x); }
REALN_DEVICE float realn_shfl_xor(float v, int lane_mask) { return realn::emu::shfl_xor(v, lane_mask); }
REALN_DEVICE float realn_shfl(float v, int src_lane) { return realn::emu::shfl(v, src_lane); }
REALN_DEVICE unsigned long long realn_d2ull(double x) { return __builtin_bit_cast(unsigned long long, x); }
REALN_DEVICE double realn_ull2d(unsigned long long x) { return __builtin_bit_cast(double, x); }
#define REALN_UNROLL
// Dynamic shared memory: one buffer per block, which the emulator runs one after another.
REALN_DEVICE float* realn_dynamic_smem() {
    alignas(16) static float buf[24 * 1024];
    return buf;
}
using realn::emu::threadIdx;
using realn::emu::blockIdx;
using realn::emu::blockDim;
using realn::emu::gridDim;
#elif defined(__NVCC__)
#define REALN_GLOBAL extern "C" __global__
#define REALN_DEVICE static __device__ inline
#define REALN_SHARED __shared__
REALN_DEVICE float realn_exp2(float x) { return exp2f(x); }
REALN_DEVICE float realn_sin(float x) { return __sinf(x); }
REALN_DEVICE float realn_cos(float x) { return __cosf(x); }
REALN_DEVICE void realn_sync() { __syncthreads(); }
REALN_DEVICE unsigned realn_f2u(float x) { return __float_as_uint(x); }
REALN_DEVICE float realn_u2f(unsigned x) { return __uint_as_float(x); }
REALN_DEVICE float realn_sqrt(float x) { return sqrtf(x); }
REALN_DEVICE double realn_sqrt_d(double x) { return sqrt(x); }
REALN_DEVICE double realn_rint_d(double x) { return rint(x); }
REALN_DEVICE float realn_log2(float x) { return __log2f(x); }
REALN_DEVICE float realn_shfl_xor(float v, int lane_mask) { return __shfl_xor_sync(0xffffffffu, v, lane_mask); }
REALN_DEVICE float realn_shfl(float v, int src_lane) { return __shfl_sync(0xffffffffu, v, src_lane); }
REALN_DEVICE unsigned long long realn_d2ull(double x) { return __double_as_longlong(x); }
REALN_DEVICE double realn_ull2d(unsigned long long x) { return __longlong_as_double(x); }
#define REALN_UNROLL _Pragma("unroll")
extern __shared__ __align__(16) float realn_dyn_smem[];
REALN_DEVICE float* realn_dynamic_smem() { return realn_dyn_smem; }
#else
#include <__clang_cuda_builtin_vars.h>
#define REALN_GLOBAL extern "C" __attribute__((global))
#define REALN_DEVICE static __attribute__((device)) inline
#define REALN_SHARED __attribute__((shared))
REALN_DEVICE float realn_exp2(float x) { return __nvvm_ex2_approx_f(x); }
REALN_DEVICE float realn_sin(float x) { return __nvvm_sin_approx_f(x); }
REALN_DEVICE float realn_cos(float x) { return __nvvm_cos_approx_f(x); }
REALN_DEVICE void realn_sync() { __syncthreads(); }
REALN_DEVICE unsigned realn_f2u(float x) { return __builtin_bit_cast(unsigned, x); }
REALN_DEVICE float realn_u2f(unsigned x) { return __builtin_bit_cast(float, x); }
REALN_DEVICE float realn_sqrt(float x) { return __builtin_sqrtf(x); }
REALN_DEVICE double realn_sqrt_d(double x) { return __builtin_sqrt(x); }
REALN_DEVICE double realn_rint_d(double x) { return __builtin_rint(x); }
REALN_DEVICE float realn_log2(float x) { return __nvvm_lg2_approx_f(x); }
// Warp shuffles over the full warp (every lane must call them: callers keep whole warps converged).
REALN_DEVICE float realn_shfl_xor(float v, int lane_mask) { return __nvvm_shfl_sync_bfly_f32(0xffffffffu, v, lane_mask, 0x1f); }
REALN_DEVICE float realn_shfl(float v, int src_lane) { return __nvvm_shfl_sync_idx_f32(0xffffffffu, v, src_lane, 0x1f); }
REALN_DEVICE unsigned long long realn_d2ull(double x) { return __builtin_bit_cast(unsigned long long, x); }
REALN_DEVICE double realn_ull2d(unsigned long long x) { return __builtin_bit_cast(double, x); }
#define REALN_UNROLL _Pragma("unroll")
extern __attribute__((shared)) __attribute__((aligned(16))) float realn_dyn_smem[];
REALN_DEVICE float* realn_dynamic_smem() { return realn_dyn_smem; }
#endif

typedef long long i64;
typedef unsigned long long u64;
typedef unsigned short u16;
// Four floats (or four 32-bit words) read or written as one 16-byte access (LDS.128 / LDG.128):
// the alignment makes the compiler use vector loads instead of staging the struct in local memory.
// Loops over such registers carry REALN_UNROLL, so that every index is a constant and arrays stay
// in registers (a loop left rolled puts them in local memory).
typedef struct __attribute__((aligned(16))) {
    float x, y, z, w;
} realn_f4;
typedef struct __attribute__((aligned(16))) {
    unsigned a, b, c, d;
} realn_u4;

REALN_DEVICE float realn_exp(float x) { return realn_exp2(x * 1.4426950408889634f); }
// Natural log from the hardware log2 approximation (~2^-22 relative): fp32 results only.
REALN_DEVICE float realn_log(float x) { return realn_log2(x) * 0.6931471805599453f; }
REALN_DEVICE bool realn_isfinite(float x) { return (realn_f2u(x) & 0x7f800000u) != 0x7f800000u; }

// Grid-stride loop over [0, n).
#define REALN_FOR(i, n) \
    for (i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x; i < (n); i += (i64)gridDim.x * blockDim.x)

// Round-to-nearest-even fp32 -> bf16 (NaN stays a quiet NaN), exactly as the CPU backend does.
REALN_DEVICE u16 realn_f32_to_bf16(float f) {
    unsigned u = realn_f2u(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (u16)((u >> 16) | 0x40);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (u16)(u >> 16);
}
REALN_DEVICE float realn_bf16_to_f32(u16 h) { return realn_u2f((unsigned)h << 16); }

// IEEE binary16 <-> fp32 in integer arithmetic (no cvt instruction, so the three spellings agree):
// round to nearest even, subnormals, overflow to inf, NaN kept quiet with its top payload bits,
// exactly as the CPU backend's _Float16 conversions (vcvtps2ph / vcvtph2ps).
REALN_DEVICE u16 realn_f32_to_f16(float f) {
    const unsigned x = realn_f2u(f), sign = (x >> 16) & 0x8000u, ax = x & 0x7fffffffu;
    if (ax > 0x7f800000u) return (u16)(sign | 0x7e00u | ((ax >> 13) & 0x3ffu));  // NaN
    if (ax >= 0x477ff000u) return (u16)(sign | 0x7c00u);                          // >= 65520: inf
    if (ax >= 0x38800000u) {                                                       // normal half
        unsigned r = ax - 0x38000000u;                                             // rebias 127 -> 15
        r += 0xfffu + ((r >> 13) & 1u);
        return (u16)(sign | (r >> 13));
    }
    if (ax < 0x33000000u) return (u16)sign;  // < 2^-25 (2^-25 itself ties to even zero)
    // Subnormal half: the value in units of 2^-24 is m * 2^(e - 126), m with its implicit bit.
    const unsigned e = ax >> 23, m = (ax & 0x7fffffu) | 0x800000u, shift = 126u - e;  // 14..24
    unsigned q = m >> shift;
    const unsigned rem = m & ((1u << shift) - 1u), half = 1u << (shift - 1u);
    if (rem > half || (rem == half && (q & 1u))) ++q;
    return (u16)(sign | q);
}
REALN_DEVICE float realn_f16_to_f32(u16 h) {
    const unsigned sign = ((unsigned)h & 0x8000u) << 16, e = ((unsigned)h >> 10) & 0x1fu, m = (unsigned)h & 0x3ffu;
    if (e == 0x1fu) return realn_u2f(sign | 0x7f800000u | (m << 13) | (m ? 0x400000u : 0u));  // inf, quiet NaN
    if (e == 0u) {
        const float v = (float)m * 5.9604644775390625e-8f;  // m * 2^-24, exact
        return sign ? -v : v;
    }
    return realn_u2f(sign | ((e + 112u) << 23) | (m << 13));
}

// Element i of a tensor of dtype REALN_DTYPE_F32 (0), BF16 (1) or F16 (2), as fp32, and back.
REALN_DEVICE float realn_load_any(const void* p, int dtype, i64 i) {
    if (dtype == 0) return ((const float*)p)[i];
    const u16 h = ((const u16*)p)[i];
    return dtype == 1 ? realn_bf16_to_f32(h) : realn_f16_to_f32(h);
}
REALN_DEVICE void realn_store_any(void* p, int dtype, i64 i, float v) {
    if (dtype == 0)
        ((float*)p)[i] = v;
    else
        ((u16*)p)[i] = dtype == 1 ? realn_f32_to_bf16(v) : realn_f32_to_f16(v);
}

// Deterministic block sum (tree in shared memory, fixed order) of one double per thread;
// blockDim.x must be a power of two <= 1024. Every thread gets the result; the closing barrier
// lets the caller reuse scratch at once (no thread can overwrite it while another still reads it).
REALN_DEVICE double realn_block_sum(double v, double* scratch) {
    scratch[threadIdx.x] = v;
    realn_sync();
    for (unsigned s = blockDim.x / 2; s > 0; s >>= 1) {
        if (threadIdx.x < s) scratch[threadIdx.x] += scratch[threadIdx.x + s];
        realn_sync();
    }
    const double total = scratch[0];
    realn_sync();
    return total;
}

// Natural log in double for x > 0 finite (no libdevice): x = 2^e f with f in [sqrt(1/2), sqrt(2)),
// log f = 2 atanh(t), t = (f - 1) / (f + 1), |t| <= 0.172, series to t^29 (error < 1e-17).
REALN_DEVICE double realn_log_d(double x) {
    unsigned long long u = realn_d2ull(x);
    int e = (int)((u >> 52) & 0x7ff);
    if (e == 0) {  // subnormal: scale by 2^54 first
        u = realn_d2ull(x * 18014398509481984.0);
        e = (int)((u >> 52) & 0x7ff) - 54;
    }
    e -= 1022;  // f in [0.5, 1)
    double f = realn_ull2d((u & 0x000fffffffffffffull) | 0x3fe0000000000000ull);
    if (f < 0.7071067811865476) {
        f *= 2.0;
        e -= 1;
    }
    const double t = (f - 1.0) / (f + 1.0), t2 = t * t;
    double sum = 0.0;
    for (int k = 29; k >= 1; k -= 2) sum = sum * t2 + 1.0 / (double)k;
    return 2.0 * t * sum + (double)e * 0.6931471805599453094;
}

// Warp sums and maxima (every lane gets the result; fixed butterfly order, so deterministic).
REALN_DEVICE float realn_warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += realn_shfl_xor(v, o);
    return v;
}
REALN_DEVICE float realn_warp_max(float v) {
    for (int o = 16; o > 0; o >>= 1) {
        const float w = realn_shfl_xor(v, o);
        v = w > v ? w : v;
    }
    return v;
}

// Deterministic block maximum (same shape as realn_block_sum); -inf for an empty block.
REALN_DEVICE float realn_block_max(float v, float* scratch) {
    scratch[threadIdx.x] = v;
    realn_sync();
    for (unsigned s = blockDim.x / 2; s > 0; s >>= 1) {
        if (threadIdx.x < s && scratch[threadIdx.x + s] > scratch[threadIdx.x]) scratch[threadIdx.x] = scratch[threadIdx.x + s];
        realn_sync();
    }
    const float m = scratch[0];
    realn_sync();
    return m;
}
