// Declarations of the CPU backend's op implementations, one .cpp per op (or op family) in this
// folder. Signatures match the Backend table entries in core/backend.hpp; arguments have been
// validated by core/api.cpp already. dtype is REALN_DTYPE_F32, or REALN_DTYPE_BF16 for the ops
// backend_cpu.cpp lists (bf16 weights, fp32 activations; realn.h).
#pragma once

#include <cstdint>

#include "../core/backend.hpp"

// Every op is implemented (ops_all_registered checks the table and the case list).
#define REALN_CPU_OP

namespace realn::cpu {

// memory.cpp
REALN_CPU_OP void copy(realn_stream_t s, void* dst, const void* src, int64_t bytes, int32_t kind);
REALN_CPU_OP void fill_f32(realn_stream_t s, float* dst, int64_t n, float value);
// interval.cpp
REALN_CPU_OP void interval_gather(realn_stream_t s, void* staging, const void* flat, const int64_t* offsets,
                     const int64_t* lengths, int64_t count);
REALN_CPU_OP void interval_scatter(realn_stream_t s, void* flat, const void* staging, const int64_t* offsets,
                      const int64_t* lengths, int64_t count);
REALN_CPU_OP uint64_t hash_bytes(realn_stream_t s, const void* data, int64_t bytes);
// gemm.cpp
REALN_CPU_OP void gemm(realn_stream_t s, int32_t dtype, int32_t ta, int32_t tb, int64_t m, int64_t n, int64_t k,
          float alpha, const void* a, int64_t lda, int64_t sa, const void* b, int64_t ldb,
          int64_t sb, float beta, void* c, int64_t ldc, int64_t sc, int64_t batch);
// linear.cpp
REALN_CPU_OP void linear_fwd(realn_stream_t s, int32_t dtype, const void* x, const void* w, const void* bias,
                void* y, int64_t rows, int64_t in, int64_t out);
REALN_CPU_OP void linear_bwd(realn_stream_t s, int32_t dtype, const void* x, const void* w, const void* dy,
                void* dx, void* dw, void* dbias, int64_t rows, int64_t in, int64_t out,
                int32_t flags);
// elementwise.cpp
REALN_CPU_OP void axpby(realn_stream_t s, int32_t dtype, int64_t n, float alpha, const void* x, float beta,
           void* y);
REALN_CPU_OP void add(realn_stream_t s, int32_t dtype, int64_t n, const void* a, const void* b, void* out);
REALN_CPU_OP double sumsq(realn_stream_t s, const float* x, int64_t n);
REALN_CPU_OP void scale(realn_stream_t s, float* x, int64_t n, float alpha);
REALN_CPU_OP int64_t count_nonfinite(realn_stream_t s, const float* x, int64_t n);
REALN_CPU_OP void convert(realn_stream_t s, int32_t dst_dtype, void* dst, int32_t src_dtype, const void* src,
             int64_t n);
// embedding.cpp
REALN_CPU_OP void embedding_fwd(realn_stream_t s, int32_t dtype, const int32_t* ids, int64_t n,
                   const void* table, int64_t vocab, int64_t hidden, int64_t vocab_start, void* out);
REALN_CPU_OP void embedding_bwd(realn_stream_t s, int32_t dtype, const int32_t* ids, int64_t n, const void* dout,
                   int64_t vocab, int64_t hidden, int64_t vocab_start, void* dtable);
// rmsnorm.cpp
REALN_CPU_OP void rmsnorm_fwd(realn_stream_t s, int32_t dtype, const void* x, const void* w, void* y, float* rstd,
                 int64_t rows, int64_t dim, float eps);
REALN_CPU_OP void rmsnorm_bwd(realn_stream_t s, int32_t dtype, const void* x, const void* w, const float* rstd,
                 const void* dy, void* dx, void* dw, int64_t rows, int64_t dim);
// rotary.cpp
REALN_CPU_OP void rotary(realn_stream_t s, int32_t dtype, const void* x, const int32_t* positions, void* y,
            int64_t tokens, int64_t heads, int64_t head_dim, int64_t rot_dim, const double* inv_freq,
            bool inverse);
// swiglu.cpp
REALN_CPU_OP void swiglu_fwd(realn_stream_t s, int32_t dtype, const void* gate, const void* up, int64_t ld_in,
                void* out, int64_t ld_out, int64_t rows, int64_t cols);
REALN_CPU_OP void swiglu_bwd(realn_stream_t s, int32_t dtype, const void* gate, const void* up, int64_t ld_in,
                const void* dout, int64_t ld_out, void* dgate, void* dup, int64_t rows,
                int64_t cols);
// attention.cpp
REALN_CPU_OP void attention_fwd(realn_stream_t s, int32_t dtype, const void* q, const void* k, const void* v,
                   const int32_t* cu_seqlens, int64_t nseq, int64_t total, int64_t hq, int64_t hkv,
                   int64_t d, float scale, void* out, float* lse);
REALN_CPU_OP void attention_bwd(realn_stream_t s, int32_t dtype, const void* q, const void* k, const void* v,
                   const void* out, const float* lse, const void* dout, const int32_t* cu_seqlens,
                   int64_t nseq, int64_t total, int64_t hq, int64_t hkv, int64_t d, float scale,
                   void* dq, void* dk, void* dv);
// kv_cache.cpp
REALN_CPU_OP void kv_store(realn_stream_t s, int32_t dtype, const void* k, const void* v, const int32_t* slots,
              const int32_t* positions, int64_t tokens, void* kcache, void* vcache,
              int64_t num_slots, int64_t max_len, int64_t hkv, int64_t d);
REALN_CPU_OP void attention_decode(realn_stream_t s, int32_t dtype, const void* q, const void* kcache,
                      const void* vcache, const int32_t* slots, const int32_t* lens, int64_t batch,
                      int64_t num_slots, int64_t max_len, int64_t hq, int64_t hkv, int64_t d,
                      float scale, void* out);
// logprobs.cpp
REALN_CPU_OP void logprobs_fwd(realn_stream_t s, int32_t dtype, const void* logits, const int32_t* labels,
                  const uint8_t* mask, int64_t rows, int64_t vocab, float temperature, float* logp,
                  float* entropy, float* lse);
REALN_CPU_OP void logprobs_bwd(realn_stream_t s, int32_t dtype, const void* logits, const int32_t* labels,
                  const uint8_t* mask, int64_t rows, int64_t vocab, float temperature,
                  const float* lse, const float* dlogp, const float* dentropy, void* dlogits);
// cross_entropy.cpp
REALN_CPU_OP double cross_entropy_fwd(realn_stream_t s, int32_t dtype, const void* logits, const int32_t* labels,
                         int64_t rows, int64_t vocab, int32_t ignore_index, float* loss, float* lse);
REALN_CPU_OP void cross_entropy_bwd(realn_stream_t s, int32_t dtype, const void* logits, const int32_t* labels,
                       int64_t rows, int64_t vocab, int32_t ignore_index, const float* lse,
                       float grad_scale, void* dlogits);
// adamw.cpp
REALN_CPU_OP void adamw(realn_stream_t s, const realn_adamw_opts* o, float* p, const float* g, float* m, float* v,
           int64_t n);
// sample.cpp
REALN_CPU_OP void sample(realn_stream_t s, int32_t dtype, const void* logits, int64_t rows, int64_t vocab,
            const realn_sample_opts* o, int32_t* tokens, uint8_t* mask_out, float* logp_out);
// gae.cpp
REALN_CPU_OP void gae(realn_stream_t s, const float* rewards, const float* values, const int32_t* cu_seqlens,
         int64_t nseq, float gamma, float lambda, float* adv, float* ret);

}  // namespace realn::cpu
