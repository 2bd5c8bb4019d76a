// Small-M linear forward for KV-cache decode: y[m, :] = x[m, :] W^T (+ bias) for a few rows, where
// SGEMM's packing costs more than the work. Streams each weight row once for all rows of x (a
// bandwidth-bound GEMV batch); AVX-512 or AVX2+FMA picked at run time. Every output element is one
// dot product computed by one thread in a fixed order, so results do not depend on thread count.
#pragma once

#include <cstdint>

namespace realn::cpu {

// Most rows the small-M path takes (decode batches up to 64); linear_fwd sends larger ones to
// SGEMM. Its results do not depend on the row count either, so a sequence decodes to the same
// logits whatever batch it is in: generation calls linear_fwd in chunks of at most this many rows
// (ReaLNative.Interop.Kernels.LinearForwardRowInvariant), so that continuous batching in S slots
// gives the static batch's bits at any batch size. At 64 rows the full tiles are compute-bound
// (gpt2-small's fp32 decode linears, one EPYC core: 3.1 ms per row, SGEMM at 256 rows 2.8).
constexpr int64_t kSmallMMaxRows = 64;

enum class SimdIsa : int32_t { Scalar = 0, Avx2 = 1, Avx512 = 2, Avx512Bf16 = 3, AmxBf16 = 4 };

// The best ISA this CPU runs (checked once).
SimdIsa small_m_best_isa();
// True if this CPU can run `isa`.
bool small_m_isa_supported(SimdIsa isa);

// y [rows, out] = x [rows, in] * w[out, in]^T (+ bias [out]); rows <= kSmallMMaxRows. Uses `isa`
// (which must be supported). Parallel over blocks of output columns.
void small_m_linear_fwd(SimdIsa isa, const float* x, const float* w, const float* bias, float* y,
                        int64_t rows, int64_t in, int64_t out);

// The same with a bf16 weight w [out, in] (x, bias, y fp32): x is rounded to bf16 (RNE, as the bf16
// GEMM of prefill and training rounds it), and each output element is a sum of exact bf16 products
// in a fixed order. AMX (where Linux grants tile state): the transposed product on tiles, summed
// exactly as the bf16 GEMM's AMX path sums (so decode rows get the bits prefill and training get);
// else vdpbf16ps (AVX512_BF16), which the AVX-512F, AVX2 and scalar kernels emulate bit for bit.
// No kernel's result depends on the thread or row count.
void small_m_linear_fwd_bf16(const float* x, const uint16_t* w, const float* bias, float* y,
                             int64_t rows, int64_t in, int64_t out);
// The ISA small_m_linear_fwd_bf16 runs: the best supported (AmxBf16 > Avx512Bf16 > Avx512 > Avx2 >
// Scalar)
// unless forced; tests force each one through small_m_bf16_force_isa (an unsupported ISA is ignored).
SimdIsa small_m_bf16_isa();
bool small_m_bf16_isa_supported(SimdIsa isa);
void small_m_bf16_force_isa(SimdIsa isa);

}  // namespace realn::cpu
