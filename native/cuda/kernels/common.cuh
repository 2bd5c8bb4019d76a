// Shared by every device file of the CUDA backend. The kernels are compiled to PTX either by
// clang-14 without any CUDA toolkit (-nocudainc -nocudalib: no CUDA headers, no libdevice) or by
// nvcc where one exists (REALN_CUDA_COMPILER); this header gives both the same spelling.
// Math without libdevice: sqrt/fma lower to PTX instructions; exp/sin/cos use the hardware
// approximations (ex2.approx, sin.approx, cos.approx), whose error (~2^-22 relative for ex2,
// ~2^-21 absolute for sin/cos on [-pi, pi]) is inside the fp32 tolerances of the case list.
#pragma once

#if defined(__NVCC__)
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
#endif

typedef long long i64;
typedef unsigned long long u64;
typedef unsigned short u16;

REALN_DEVICE float realn_exp(float x) { return realn_exp2(x * 1.4426950408889634f); }
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

// Deterministic block sum (tree in shared memory, fixed order) of one double per thread;
// blockDim.x must be a power of two <= 1024. The result is valid in thread 0.
REALN_DEVICE double realn_block_sum(double v, double* scratch) {
    scratch[threadIdx.x] = v;
    realn_sync();
    for (unsigned s = blockDim.x / 2; s > 0; s >>= 1) {
        if (threadIdx.x < s) scratch[threadIdx.x] += scratch[threadIdx.x + s];
        realn_sync();
    }
    return scratch[0];
}
