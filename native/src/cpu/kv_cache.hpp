// The bf16 KV cache's decode kernel choice (kv_cache.cpp): a bf16 cache (realn_op_kv_store /
// realn_op_attention_decode with dtype BF16) holds K/V rounded to nearest even; decode widens each
// row to fp32 in registers and computes in fp32 exactly as the fp32 cache does.
#pragma once

#include "small_m_linear.hpp"

namespace realn::cpu {

// Which kernel bf16 decode runs: Avx512 (F + BW + VL, where present) or Scalar; tests force Scalar.
void attention_decode_bf16_force_isa(SimdIsa isa);
// True if bf16 decode can run its AVX-512 kernel on this CPU.
bool attention_decode_bf16_has_avx512();

}  // namespace realn::cpu
