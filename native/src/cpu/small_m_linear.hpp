// Small-M linear forward for KV-cache decode: y[m, :] = x[m, :] W^T (+ bias) for a few rows, where
// SGEMM's packing costs more than the work. Streams each weight row once for all rows of x (a
// bandwidth-bound GEMV batch); AVX-512 or AVX2+FMA picked at run time. Every output element is one
// dot product computed by one thread in a fixed order, so results do not depend on thread count.
#pragma once

#include <cstdint>

namespace realn::cpu {

// Most rows the small-M path takes (decode batches up to 64); linear_fwd sends larger ones to
// SGEMM. Its results do not depend on the row count either, so a sequence decodes to the same
// logits whatever batch it is in (continuous batching relies on it).
constexpr int64_t kSmallMMaxRows = 64;

enum class SimdIsa : int32_t { Scalar = 0, Avx2 = 1, Avx512 = 2, Avx512Bf16 = 3 };

// The best ISA this CPU runs (checked once).
SimdIsa small_m_best_isa();
// True if this CPU can run `isa`.
bool small_m_isa_supported(SimdIsa isa);

// y [rows, out] = x [rows, in] * w[out, in]^T (+ bias [out]); rows <= kSmallMMaxRows. Uses `isa`
// (which must be supported). Parallel over blocks of output columns.
void small_m_linear_fwd(SimdIsa isa, const float* x, const float* w, const float* bias, float* y,
                        int64_t rows, int64_t in, int64_t out);

// The same with a bf16 weight w [out, in] (x, bias, y fp32): x is rounded to bf16 (RNE, as the bf16
// GEMM of prefill and training rounds it), and each output element is the sum of exact bf16
// products as vdpbf16ps accumulates them (AVX512_BF16), in a fixed order. The AVX-512F, AVX2 and
// scalar kernels emulate that instruction exactly, so every ISA gives the same bits; none depends
// on the thread or row count either.
void small_m_linear_fwd_bf16(const float* x, const uint16_t* w, const float* bias, float* y,
                             int64_t rows, int64_t in, int64_t out);
// The ISA small_m_linear_fwd_bf16 runs: the best supported (Avx512Bf16 > Avx512 > Avx2 > Scalar)
// unless forced; tests force each one through small_m_bf16_force_isa (which must be supported).
SimdIsa small_m_bf16_isa();
bool small_m_bf16_isa_supported(SimdIsa isa);
void small_m_bf16_force_isa(SimdIsa isa);

}  // namespace realn::cpu
