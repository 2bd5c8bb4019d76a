// The backend interface: one function-pointer table per backend (CPU always, CUDA where built).
// The exports (core/api.cpp, one op-table entry per op) validate arguments once, then dispatch
// through the stream's table, so a backend implements only the computation. Every entry throws
// realn::Error on failure.
// Entries marked (optional) may be null; supports_op() says what a backend can run.
#pragma once

#include <cstdint>

#include "realn.h"

namespace realn {

// Every op of the ABI, once: its id and the name supports_op errors, ctest families and the case
// list use. The enum and op_name() are generated from this list.
#define REALN_OP_LIST(X)                                                                         \
    X(Gemm, gemm) X(LinearFwd, linear_fwd) X(LinearBwd, linear_bwd) X(Axpby, axpby) X(Add, add)  \
    X(Sumsq, sumsq) X(Scale, scale) X(CountNonfinite, count_nonfinite) X(Convert, convert)       \
    X(EmbeddingFwd, embedding_fwd) X(EmbeddingBwd, embedding_bwd) X(RmsnormFwd, rmsnorm_fwd)     \
    X(RmsnormBwd, rmsnorm_bwd) X(RotaryFwd, rotary_fwd) X(RotaryBwd, rotary_bwd)                 \
    X(SwigluFwd, swiglu_fwd) X(SwigluBwd, swiglu_bwd) X(AttentionFwd, attention_fwd)             \
    X(AttentionBwd, attention_bwd) X(KvStore, kv_store) X(AttentionDecode, attention_decode)     \
    X(LogprobsFwd, logprobs_fwd) X(LogprobsBwd, logprobs_bwd)                                    \
    X(CrossEntropyFwd, cross_entropy_fwd) X(CrossEntropyBwd, cross_entropy_bwd) X(Adamw, adamw)  \
    X(Sample, sample) X(Gae, gae) X(IntervalGather, interval_gather)                             \
    X(IntervalScatter, interval_scatter) X(HashBytes, hash_bytes) X(Copy, copy) X(Fill, fill)

enum class Op : int32_t {
#define REALN_OP_ENUM(id, name) id,
    REALN_OP_LIST(REALN_OP_ENUM)
#undef REALN_OP_ENUM
    Count_
};

const char* op_name(Op op);

struct Backend {
    const char* name;  // "cpu", "cuda"
    int32_t kind;      // realn_backend_kind

    int32_t (*device_count)();
    bool (*supports_op)(Op op, int32_t dtype);

    // Streams and memory. stream_create returns the backend's native stream (may be null for CPU).
    void* (*stream_create)(int32_t device);
    void (*stream_synchronize)(realn_stream_t s);
    void (*stream_destroy)(void* native_stream);
    void* (*alloc)(realn_stream_t s, int64_t bytes);
    void (*free)(realn_stream_t s, void* ptr);
    void (*copy)(realn_stream_t s, void* dst, const void* src, int64_t bytes, int32_t kind);
    void (*fill_f32)(realn_stream_t s, float* dst, int64_t n, float value);

    // Reallocation primitives.
    void (*interval_gather)(realn_stream_t s, void* staging, const void* flat, const int64_t* offsets,
                            const int64_t* lengths, int64_t count);
    void (*interval_scatter)(realn_stream_t s, void* flat, const void* staging,
                             const int64_t* offsets, const int64_t* lengths, int64_t count);
    uint64_t (*hash_bytes)(realn_stream_t s, const void* data, int64_t bytes);

    // Dense.
    void (*gemm)(realn_stream_t s, int32_t dtype, int32_t ta, int32_t tb, int64_t m, int64_t n,
                 int64_t k, float alpha, const void* a, int64_t lda, int64_t sa, const void* b,
                 int64_t ldb, int64_t sb, float beta, void* c, int64_t ldc, int64_t sc,
                 int64_t batch);
    void (*linear_fwd)(realn_stream_t s, int32_t dtype, const void* x, const void* w,
                       const void* bias, void* y, int64_t rows, int64_t in, int64_t out);
    void (*linear_bwd)(realn_stream_t s, int32_t dtype, const void* x, const void* w, const void* dy,
                       void* dx, void* dw, void* dbias, int64_t rows, int64_t in, int64_t out,
                       int32_t flags);

    // Elementwise.
    void (*axpby)(realn_stream_t s, int32_t dtype, int64_t n, float alpha, const void* x,
                  float beta, void* y);
    void (*add)(realn_stream_t s, int32_t dtype, int64_t n, const void* a, const void* b, void* out);
    double (*sumsq)(realn_stream_t s, const float* x, int64_t n);
    void (*scale)(realn_stream_t s, float* x, int64_t n, float alpha);
    int64_t (*count_nonfinite)(realn_stream_t s, const float* x, int64_t n);
    void (*convert)(realn_stream_t s, int32_t dst_dtype, void* dst, int32_t src_dtype,
                    const void* src, int64_t n);

    // Transformer layers.
    void (*embedding_fwd)(realn_stream_t s, int32_t dtype, const int32_t* ids, int64_t n,
                          const void* table, int64_t vocab, int64_t hidden, int64_t vocab_start,
                          void* out);
    void (*embedding_bwd)(realn_stream_t s, int32_t dtype, const int32_t* ids, int64_t n,
                          const void* dout, int64_t vocab, int64_t hidden, int64_t vocab_start,
                          void* dtable);
    void (*rmsnorm_fwd)(realn_stream_t s, int32_t dtype, const void* x, const void* w, void* y,
                        float* rstd, int64_t rows, int64_t dim, float eps);
    void (*rmsnorm_bwd)(realn_stream_t s, int32_t dtype, const void* x, const void* w,
                        const float* rstd, const void* dy, void* dx, void* dw, int64_t rows,
                        int64_t dim);
    // inv_freq: host memory, double [rot_dim / 2] (the angle of pair i is pos * inv_freq[i]).
    void (*rotary)(realn_stream_t s, int32_t dtype, const void* x, const int32_t* positions,
                   void* y, int64_t tokens, int64_t heads, int64_t head_dim, int64_t rot_dim,
                   const double* inv_freq, bool inverse);
    void (*swiglu_fwd)(realn_stream_t s, int32_t dtype, const void* gate, const void* up,
                       int64_t ld_in, void* out, int64_t ld_out, int64_t rows, int64_t cols);
    void (*swiglu_bwd)(realn_stream_t s, int32_t dtype, const void* gate, const void* up,
                       int64_t ld_in, const void* dout, int64_t ld_out, void* dgate, void* dup,
                       int64_t rows, int64_t cols);
    void (*attention_fwd)(realn_stream_t s, int32_t dtype, const void* q, const void* k,
                          const void* v, const int32_t* cu_seqlens, int64_t nseq, int64_t total,
                          int64_t hq, int64_t hkv, int64_t d, float scale, void* out, float* lse);
    void (*attention_bwd)(realn_stream_t s, int32_t dtype, const void* q, const void* k,
                          const void* v, const void* out, const float* lse, const void* dout,
                          const int32_t* cu_seqlens, int64_t nseq, int64_t total, int64_t hq,
                          int64_t hkv, int64_t d, float scale, void* dq, void* dk, void* dv);
    void (*kv_store)(realn_stream_t s, int32_t dtype, const void* k, const void* v,
                     const int32_t* slots, const int32_t* positions, int64_t tokens, void* kcache,
                     void* vcache, int64_t num_slots, int64_t max_len, int64_t hkv, int64_t d);
    void (*attention_decode)(realn_stream_t s, int32_t dtype, const void* q, const void* kcache,
                             const void* vcache, const int32_t* slots, const int32_t* lens,
                             int64_t batch, int64_t num_slots, int64_t max_len, int64_t hq,
                             int64_t hkv, int64_t d, float scale, void* out);

    // Log-probs and losses.
    void (*logprobs_fwd)(realn_stream_t s, int32_t dtype, const void* logits, const int32_t* labels,
                         const uint8_t* mask, int64_t rows, int64_t vocab, float temperature,
                         float* logp, float* entropy, float* lse);
    void (*logprobs_bwd)(realn_stream_t s, int32_t dtype, const void* logits, const int32_t* labels,
                         const uint8_t* mask, int64_t rows, int64_t vocab, float temperature,
                         const float* lse, const float* dlogp, const float* dentropy,
                         void* dlogits);
    double (*cross_entropy_fwd)(realn_stream_t s, int32_t dtype, const void* logits,
                                const int32_t* labels, int64_t rows, int64_t vocab,
                                int32_t ignore_index, float* loss, float* lse);
    void (*cross_entropy_bwd)(realn_stream_t s, int32_t dtype, const void* logits,
                              const int32_t* labels, int64_t rows, int64_t vocab,
                              int32_t ignore_index, const float* lse, float grad_scale,
                              void* dlogits);

    // Optimizer, sampling, RL.
    void (*adamw)(realn_stream_t s, const realn_adamw_opts* o, float* p, const float* g, float* m,
                  float* v, int64_t n);
    void (*sample)(realn_stream_t s, int32_t dtype, const void* logits, int64_t rows, int64_t vocab,
                   const realn_sample_opts* o, int32_t* tokens, uint8_t* mask_out,
                   float* logp_out);
    void (*gae)(realn_stream_t s, const float* rewards, const float* values,
                const int32_t* cu_seqlens, int64_t nseq, float gamma, float lambda, float* adv,
                float* ret);
};

// Registry: backends compiled into this build (CPU always). Returns null if absent.
const Backend* backend_get(int32_t kind);

}  // namespace realn

// A stream: the backend, the device, and the backend's native stream.
struct realn_stream {
    const realn::Backend* backend;
    int32_t device;
    void* native;
};

// A backend buffer owned by its handle.
struct realn_buf {
    realn_stream_t stream;
    void* ptr;
    int64_t bytes;
};
