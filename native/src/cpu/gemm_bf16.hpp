// GEMM with bf16 operands and fp32 accumulation/output on the CPU backend: C = alpha op(A) op(B) +
// beta C, where each of A and B is stored as fp32 or bf16 and fp32 operands are rounded to bf16
// (RNE) first, so every product is of two bf16 values (exact in fp32). Used by the bf16 gemm op and
// the bf16 linear layer (bf16 weight, fp32 activations).
//
// Paths (env REALN_BF16_GEMM, read once; unset = the best the CPU runs):
//   amx         AMX-BF16 tiles (tdpbf16ps), where the CPU has them and Linux grants the process
//               tile state (arch_prctl ARCH_REQ_XCOMP_PERM);
//   avx512bf16  packed tiles and a vdpbf16ps micro-kernel (AVX512_BF16);
//   convert     operands widened to fp32 (after the bf16 rounding) and fixed_tile_sgemm.
//
// Determinism: every path is independent of the thread count. amx and avx512bf16: an element's sum runs
// over k in order (pairs of k per vdpbf16ps, K blocks of a size fixed by K alone), whichever tile
// and thread computes it, so it does not even depend on the tiling. convert: fixed_tile_sgemm's
// guarantee (gemm.cpp). The paths round differently from each other.
#pragma once

#include <cstdint>

namespace realn::cpu {

enum class Bf16GemmPath : int32_t { Avx512Bf16 = 0, Convert = 1, Amx = 2 };

// The path REALN_BF16_GEMM selects (or the best available); throws (REALN_ERR_INVALID_ARGUMENT /
// REALN_ERR_UNSUPPORTED, naming the variable) for an unknown or unavailable value.
Bf16GemmPath bf16_gemm_path();
bool bf16_gemm_path_supported(Bf16GemmPath p);
const char* bf16_gemm_path_name(Bf16GemmPath p);

// One operand, BLAS row-major conventions: element (i, k) of op(A) is p[i*ld + k], or p[k*ld + i]
// when trans; element (k, j) of op(B) is p[k*ld + j], or p[j*ld + k] when trans. bf16 says the
// storage is bf16 (uint16) rather than fp32.
struct MixedOperand {
    const void* p;
    int64_t ld;
    bool trans;
    bool bf16;
};

// C [m, n] (row stride ldc, fp32) = alpha op(A) op(B) + beta C; op(A) m x k, op(B) k x n.
// beta == 0 never reads C.
void gemm_mixed(Bf16GemmPath path, int64_t m, int64_t n, int64_t k, float alpha, MixedOperand A,
                MixedOperand B, float beta, float* C, int64_t ldc);

}  // namespace realn::cpu
