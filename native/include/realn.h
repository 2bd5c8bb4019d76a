/*
 * realn.h — the ONLY public header of librealn, the native half of ReaLNative.
 *
 * One C ABI over several backends (CPU always, CUDA where built). Conventions (see DESIGN.md):
 *  - every call that can fail returns realn_status (0 ok, negative error) and writes outputs
 *    through pointers; realn_last_error() holds the calling thread's detail message;
 *  - sizes, counts and offsets are int64_t; no long, no size_t; no exit/abort anywhere;
 *  - every op and copy takes a realn_stream_t, which selects the backend and device (the CPU
 *    backend executes synchronously on the calling thread with its OpenMP pool);
 *  - tensors are raw pointers in the stream's memory space, row-major, contiguous unless a
 *    leading dimension is given; activations carry a realn_dtype (CPU backend: F32, plus the
 *    bf16 weight ops below);
 *  - bf16 on the CPU backend means bf16 WEIGHTS with fp32 activations: gemm (A, B bf16, C fp32),
 *    linear_fwd/linear_bwd (w bf16; x, bias, y, dy, dx, dw, dbias fp32; products of bf16-rounded
 *    operands, fp32 accumulation), embedding_fwd (table bf16, out fp32), embedding_bwd (a bf16
 *    table's gradient: dout, dtable fp32; the op never reads the table) and rmsnorm_fwd/_bwd (w
 *    bf16; x, y, rstd, dy, dx, dw fp32), plus a bf16 KV CACHE: kv_store and attention_decode
 *    with dtype BF16 take kcache/vcache in bf16 (k, v, q, out fp32; rows rounded to nearest even
 *    when stored, widened to fp32 when read, fp32 softmax and accumulation).
 *    Env REALN_BF16_GEMM = avx512bf16 | convert picks the GEMM path (default: the best present);
 *  - option structs start with int32_t size; int32_t version; and are initialised by a
 *    REALN_*_OPTS_INIT macro so a caller built against an older header stays valid. They are
 *    versioned by size: a field is only ever appended, with the next version number, and each
 *    struct lists the size of every released version. The library accepts the size of any released
 *    version together with that version's number, and gives the fields that version lacks their
 *    REALN_*_OPTS_INIT defaults; a size smaller than version 1's, a size no released version has
 *    (a newer header's, too) or a version that does not match the size is refused with
 *    REALN_ERR_INVALID_ARGUMENT naming the INIT macro and the released sizes;
 *  - the op test cases are not part of librealn: librealn_selftest (realn_selftest.h) runs them.
 */
#ifndef REALN_H
#define REALN_H

#include <stdint.h>

#if defined(_WIN32)
#define REALN_API __declspec(dllexport)
#else
#define REALN_API __attribute__((visibility("default")))
#endif

#ifdef __cplusplus
extern "C" {
#endif

#define REALN_VERSION_MAJOR 0
#define REALN_VERSION_MINOR 1
#define REALN_VERSION_PATCH 0

/* ---------------------------------------------------------------------------------------------
 * Status and errors
 * ------------------------------------------------------------------------------------------- */
typedef int32_t realn_status;
enum {
    REALN_OK = 0,
    REALN_ERR_INVALID_ARGUMENT = -1, /* a null pointer, negative size, bad enum value ...       */
    REALN_ERR_OUT_OF_MEMORY = -2,    /* host or device allocation failed                        */
    REALN_ERR_UNSUPPORTED = -3,      /* the backend lacks this op or dtype                      */
    REALN_ERR_BACKEND = -4,          /* the backend (CUDA, BLAS ...) reported a failure         */
    REALN_ERR_NOT_FOUND = -5,        /* a backend, device or named item does not exist          */
    REALN_ERR_INTERNAL = -6,         /* a bug: an unexpected C++ exception                      */
    REALN_ERR_NUMERIC = -7           /* non-finite values where finite ones are required        */
};

/* Detail message of the last failed call on this thread ("" if none). Valid until the next
 * failing call on the same thread. Never NULL. */
REALN_API const char* realn_last_error(void);
/* Static name of a status code ("REALN_ERR_INVALID_ARGUMENT"). Never NULL. */
REALN_API const char* realn_status_string(realn_status status);
REALN_API realn_status realn_version(int32_t* major, int32_t* minor, int32_t* patch);
/* Human-readable build description: backends compiled in, BLAS, OpenMP threads. */
REALN_API const char* realn_build_info(void);

/* ---------------------------------------------------------------------------------------------
 * Backends, threads, streams
 * ------------------------------------------------------------------------------------------- */
typedef enum realn_backend_kind {
    REALN_BACKEND_CPU = 0,
    REALN_BACKEND_CUDA = 1
} realn_backend_kind;

typedef enum realn_dtype {
    REALN_DTYPE_F32 = 0,
    REALN_DTYPE_BF16 = 1,
    REALN_DTYPE_F16 = 2
} realn_dtype;

/* *available = 1 if the backend is compiled in and has at least one device. */
REALN_API realn_status realn_backend_available(int32_t backend, int32_t* available);
REALN_API realn_status realn_backend_device_count(int32_t backend, int32_t* count);
/* Threads used by the CPU backend (OpenMP and BLAS). n <= 0 restores the default. */
REALN_API realn_status realn_set_num_threads(int32_t n);
REALN_API realn_status realn_get_num_threads(int32_t* n);

typedef struct realn_stream* realn_stream_t;
REALN_API realn_status realn_stream_create(int32_t backend, int32_t device, realn_stream_t* out);
REALN_API realn_status realn_stream_synchronize(realn_stream_t stream);
REALN_API realn_status realn_stream_backend(realn_stream_t stream, int32_t* backend);
REALN_API realn_status realn_stream_destroy(realn_stream_t stream);

/* ---------------------------------------------------------------------------------------------
 * Memory
 * ------------------------------------------------------------------------------------------- */
enum {
    REALN_HOST_PREFAULT = 1, /* touch every page once now (first touch is slow on these hosts) */
    REALN_HOST_PINNED = 2,   /* page-lock (mlock / cudaHostRegister where possible)           */
    REALN_HOST_HUGEPAGE = 4, /* advise transparent huge pages (not for SHARED)                 */
    REALN_HOST_SHARED = 8    /* a sealed memfd, MAP_SHARED: other processes of this host may map
                                it (realn_shared_map, realn_shared_map_writable); freeing returns its pages at once */
};
/* Page-aligned host memory (2 MiB aligned when at least 2 MiB). Flags as above. */
REALN_API realn_status realn_host_alloc(int64_t bytes, int32_t flags, void** out);
/* Frees; a SHARED allocation's pages are released even where another process still maps it
 * (that mapping then reads zero pages). */
REALN_API realn_status realn_host_free(void* ptr);
/* Gives the pages of allocation ptr (as realn_host_alloc returned it) back to the system and keeps
 * its addresses mapped: afterwards it reads as zeros and holds no memory until written. A SHARED
 * allocation's memfd is punched: its pages go even where another process maps it, whose mapping stays
 * valid and sees later writes (an inference replica's weights between the calls that need them). */
REALN_API realn_status realn_host_release(void* ptr);
/* Takes pages for allocation ptr again as realn_host_alloc did (a large SHARED one: allocated and
 * collapsed into 2 MiB pages; PREFAULT: touched), keeping what it holds; after realn_host_release,
 * before the allocation is refilled. */
REALN_API realn_status realn_host_reacquire(void* ptr);
/* Whether ptr lies inside a REALN_HOST_SHARED allocation of this process: its memfd's descriptor
 * here, ptr's offset in it, the memfd's size and its token (random, part of the memfd's name, which
 * realn_shared_map checks). fd = -1, the rest 0, when it does not. */
REALN_API realn_status realn_host_shared_info(const void* ptr, int32_t* fd, int64_t* offset, int64_t* size,
                                              uint64_t* token);
/* Maps read-only, in this process, the shared allocation that process pid of this host described
 * with realn_host_shared_info (fd, token, size): opens /proc/pid/fd/fd, checks that it is that memfd
 * (name with the token, size, shrink seal), maps it and closes the descriptor. The mapping keeps the
 * memory alive after pid exits, until realn_shared_unmap. REALN_ERR_UNSUPPORTED when not allowed to
 * open it (another user, ptrace restrictions); REALN_ERR_NOT_FOUND when the process, descriptor or
 * memfd is gone or is not the one described. */
REALN_API realn_status realn_shared_map(int32_t pid, int32_t fd, uint64_t token, int64_t size, const void** out);
/* realn_shared_map, mapped for reading and writing: a sender of a reallocation writes a receiver's
 * destination shard (the receiver waits for the sender's word before it reads it). */
REALN_API realn_status realn_shared_map_writable(int32_t pid, int32_t fd, uint64_t token, int64_t size, void** out);
/* Unmaps what realn_shared_map returned (size as given to it). */
REALN_API realn_status realn_shared_unmap(const void* ptr, int64_t size);

/* Backend memory owned by a handle (host memory for the CPU backend, device memory for CUDA). */
typedef struct realn_buf* realn_buf_t;
REALN_API realn_status realn_buf_alloc(realn_stream_t stream, int64_t bytes, realn_buf_t* out);
REALN_API realn_status realn_buf_ptr(realn_buf_t buf, void** out);
REALN_API realn_status realn_buf_size(realn_buf_t buf, int64_t* out);
REALN_API realn_status realn_buf_free(realn_buf_t buf);

/* Copies. kind: 0 = same memory space as the stream (device-to-device), 1 = host-to-device,
 * 2 = device-to-host. On the CPU backend all three are memcpy. */
enum { REALN_COPY_D2D = 0, REALN_COPY_H2D = 1, REALN_COPY_D2H = 2 };
REALN_API realn_status realn_copy(realn_stream_t stream, void* dst, const void* src, int64_t bytes,
                                  int32_t kind);
REALN_API realn_status realn_fill_f32(realn_stream_t stream, float* dst, int64_t n, float value);

/* ---------------------------------------------------------------------------------------------
 * Reallocation primitives: many [offset, offset+length) byte intervals between a flat buffer
 * and a packed staging buffer, in order.
 * gather:  staging = concat(flat[off_i : off_i + len_i] for i)
 * scatter: flat[off_i : off_i + len_i] = staging[sum(len_<i) : ...] for i
 * Intervals must not overlap on the flat side for scatter. offsets/lengths live in HOST memory.
 * ------------------------------------------------------------------------------------------- */
REALN_API realn_status realn_interval_gather(realn_stream_t stream, void* staging, const void* flat,
                                             const int64_t* offsets, const int64_t* lengths,
                                             int64_t count);
REALN_API realn_status realn_interval_scatter(realn_stream_t stream, void* flat, const void* staging,
                                              const int64_t* offsets, const int64_t* lengths,
                                              int64_t count);
/* Reads count byte intervals from process pid on this host (process_vm_readv): bytes
 * [remote + remote_offsets[i], + lengths[i]) of its memory into [local + local_offsets[i], + lengths[i]).
 * One kernel copy; the other process takes no part (it keeps the memory alive and unchanged until
 * told the read is done). REALN_ERR_UNSUPPORTED when not allowed (EPERM: another user, ptrace
 * scope); REALN_ERR_BACKEND for other failures (ESRCH: no such process, EFAULT: an address outside
 * either process's mappings). Offsets and lengths live in host memory. */
REALN_API realn_status realn_process_read(int32_t pid, void* local, uint64_t remote, const int64_t* remote_offsets,
                                          const int64_t* local_offsets, const int64_t* lengths, int64_t count);
/* Futex on a 32-bit word that may lie in memory shared between processes (a REALN_HOST_SHARED
 * block, mapped by its peers with realn_shared_map_writable): realn_futex_wait sleeps while *word
 * equals expected, at most timeout_us microseconds (> 0); it returns REALN_OK when woken, when the
 * word differed already, on the timeout and on a signal alike: the caller checks what it waits
 * for. realn_futex_wake wakes up to count waiters on word in any process. Not the private futex:
 * the word's shared mapping is what keys it. REALN_ERR_UNSUPPORTED off Linux. */
REALN_API realn_status realn_futex_wait(const int32_t* word, int32_t expected, int64_t timeout_us);
REALN_API realn_status realn_futex_wake(int32_t* word, int32_t count);
/* 64-bit FNV-1a-style hash of bytes, for bit-exactness checks (deterministic, any backend). */
REALN_API realn_status realn_hash_bytes(realn_stream_t stream, const void* data, int64_t bytes,
                                        uint64_t* out);

/* ---------------------------------------------------------------------------------------------
 * Dense linear algebra
 * ------------------------------------------------------------------------------------------- */
/* Strided-batched row-major GEMM: C[b] = alpha * op(A[b]) @ op(B[b]) + beta * C[b],
 * op(A) is M x K, op(B) is K x N, C is M x N. trans_a/trans_b: 0 or 1. lda/ldb/ldc are row
 * strides in elements of the stored (untransposed) matrices; stride_* are batch strides in
 * elements (ignored when batch == 1). */
REALN_API realn_status realn_op_gemm(realn_stream_t stream, int32_t dtype, int32_t trans_a,
                                     int32_t trans_b, int64_t m, int64_t n, int64_t k, float alpha,
                                     const void* a, int64_t lda, int64_t stride_a, const void* b,
                                     int64_t ldb, int64_t stride_b, float beta, void* c, int64_t ldc,
                                     int64_t stride_c, int64_t batch);

/* Linear layer, weight in [out, in] layout (Hugging Face / PyTorch): y = x @ W^T + bias.
 * x: [rows, in], w: [out, in], bias: [out] or NULL, y: [rows, out]. */
REALN_API realn_status realn_op_linear_fwd(realn_stream_t stream, int32_t dtype, const void* x,
                                           const void* w, const void* bias, void* y, int64_t rows,
                                           int64_t in_features, int64_t out_features);
/* Backward: dx = dy @ W (overwritten, or accumulated if accumulate & 1); dw += dy^T @ x;
 * dbias += sum_rows(dy). Any of dx, dw, dbias may be NULL to skip it. dw/dbias always
 * ACCUMULATE (zero them before the first micro-batch). */
enum { REALN_ACCUMULATE_DX = 1 };
REALN_API realn_status realn_op_linear_bwd(realn_stream_t stream, int32_t dtype, const void* x,
                                           const void* w, const void* dy, void* dx, void* dw,
                                           void* dbias, int64_t rows, int64_t in_features,
                                           int64_t out_features, int32_t flags);

/* ---------------------------------------------------------------------------------------------
 * Elementwise helpers
 * ------------------------------------------------------------------------------------------- */
/* y = alpha * x + beta * y, n elements (dtype of x and y). */
REALN_API realn_status realn_op_axpby(realn_stream_t stream, int32_t dtype, int64_t n, float alpha,
                                      const void* x, float beta, void* y);
/* out = a + b, n elements; out may alias a or b. */
REALN_API realn_status realn_op_add(realn_stream_t stream, int32_t dtype, int64_t n, const void* a,
                                    const void* b, void* out);
/* *out = sum(x_i^2) accumulated in double, fp32 input. */
REALN_API realn_status realn_op_sumsq(realn_stream_t stream, const float* x, int64_t n, double* out);
/* x *= alpha, fp32. */
REALN_API realn_status realn_op_scale(realn_stream_t stream, float* x, int64_t n, float alpha);
/* Counts non-finite values (NaN, +-Inf) in fp32 x. */
REALN_API realn_status realn_op_count_nonfinite(realn_stream_t stream, const float* x, int64_t n,
                                                int64_t* out);
/* Converts between dtypes (F32 <-> BF16, F32 <-> F16); same dtype is a copy. */
REALN_API realn_status realn_op_convert(realn_stream_t stream, int32_t dst_dtype, void* dst,
                                        int32_t src_dtype, const void* src, int64_t n);

/* ---------------------------------------------------------------------------------------------
 * Transformer layers (fp32 on the CPU backend)
 * ------------------------------------------------------------------------------------------- */
/* Embedding (vocab-parallel aware): out[t] = table[ids[t] - vocab_start] if vocab_start <= ids[t]
 * < vocab_start + vocab, else zeros. ids: int32 [n]; table: [vocab, hidden]; out: [n, hidden]. */
REALN_API realn_status realn_op_embedding_fwd(realn_stream_t stream, int32_t dtype,
                                              const int32_t* ids, int64_t n, const void* table,
                                              int64_t vocab, int64_t hidden, int64_t vocab_start,
                                              void* out);
/* dtable[ids[t] - vocab_start] += dout[t] for in-range ids (accumulates; deterministic). */
REALN_API realn_status realn_op_embedding_bwd(realn_stream_t stream, int32_t dtype,
                                              const int32_t* ids, int64_t n, const void* dout,
                                              int64_t vocab, int64_t hidden, int64_t vocab_start,
                                              void* dtable);

/* RMSNorm: y = x * rstd * w, rstd = 1/sqrt(mean(x^2) + eps). x,y: [rows, dim]; w: [dim];
 * rstd: float [rows] (saved for backward; may be NULL in inference). */
REALN_API realn_status realn_op_rmsnorm_fwd(realn_stream_t stream, int32_t dtype, const void* x,
                                            const void* w, void* y, float* rstd, int64_t rows,
                                            int64_t dim, float eps);
/* dx overwritten; dw accumulated. rstd from the forward. */
REALN_API realn_status realn_op_rmsnorm_bwd(realn_stream_t stream, int32_t dtype, const void* x,
                                            const void* w, const float* rstd, const void* dy,
                                            void* dx, void* dw, int64_t rows, int64_t dim);

/* Rotary position embedding, Hugging Face LLaMA convention (rotate_half: element i pairs with
 * i + rot_dim/2 within the first rot_dim dims of each head; freq_i = theta^(-2i/rot_dim)).
 * x, y: [tokens, heads, head_dim] (y may be x itself, not a partial overlap); positions: int32
 * [tokens] (per packed token).
 * Backward applies the inverse rotation to the gradient (same signature, dy -> dx). */
REALN_API realn_status realn_op_rotary_fwd(realn_stream_t stream, int32_t dtype, const void* x,
                                           const int32_t* positions, void* y, int64_t tokens,
                                           int64_t heads, int64_t head_dim, int64_t rot_dim,
                                           float theta);
REALN_API realn_status realn_op_rotary_bwd(realn_stream_t stream, int32_t dtype, const void* dy,
                                           const int32_t* positions, void* dx, int64_t tokens,
                                           int64_t heads, int64_t head_dim, int64_t rot_dim,
                                           float theta);
/* The same rotation with the frequencies given per pair: pair i (i < rot_dim/2) turns by angle
 * pos * inv_freq[i]. inv_freq: HOST memory, double [rot_dim/2], each finite and > 0 (read before
 * the call returns). For scaled rotary variants (LLaMA 3.1's "llama3" rope_scaling), whose
 * per-dimension frequencies are no power series of one theta. */
REALN_API realn_status realn_op_rotary_freqs_fwd(realn_stream_t stream, int32_t dtype,
                                                 const void* x, const int32_t* positions, void* y,
                                                 int64_t tokens, int64_t heads, int64_t head_dim,
                                                 int64_t rot_dim, const double* inv_freq);
REALN_API realn_status realn_op_rotary_freqs_bwd(realn_stream_t stream, int32_t dtype,
                                                 const void* dy, const int32_t* positions, void* dx,
                                                 int64_t tokens, int64_t heads, int64_t head_dim,
                                                 int64_t rot_dim, const double* inv_freq);

/* SwiGLU: out = silu(gate) * up over rows x cols. gate/up/out rows are ld_in / ld_in / ld_out
 * elements apart (so a fused [rows, 2*cols] gate|up projection can be read in place). */
REALN_API realn_status realn_op_swiglu_fwd(realn_stream_t stream, int32_t dtype, const void* gate,
                                           const void* up, int64_t ld_in, void* out, int64_t ld_out,
                                           int64_t rows, int64_t cols);
/* dgate, dup overwritten (same ld_in layout as the forward inputs). */
REALN_API realn_status realn_op_swiglu_bwd(realn_stream_t stream, int32_t dtype, const void* gate,
                                           const void* up, int64_t ld_in, const void* dout,
                                           int64_t ld_out, void* dgate, void* dup, int64_t rows,
                                           int64_t cols);

/* Causal self-attention over PACKED variable-length sequences (no padding).
 * q: [T, hq, d], k, v: [T, hkv, d] (grouped-query: head h reads kv head h / (hq/hkv)),
 * cu_seqlens: int32 [nseq + 1] prefix sums (cu_seqlens[0] = 0, cu_seqlens[nseq] = T), in HOST
 * memory for the CPU backend. Empty sequences are allowed. out: [T, hq, d]; lse: float [T, hq]
 * log-sum-exp of the scaled scores per query row (saved for backward; NULL to skip, e.g. for
 * inference). scale is usually 1/sqrt(d). */
REALN_API realn_status realn_op_attention_fwd(realn_stream_t stream, int32_t dtype, const void* q,
                                              const void* k, const void* v,
                                              const int32_t* cu_seqlens, int64_t nseq,
                                              int64_t total_tokens, int64_t hq, int64_t hkv,
                                              int64_t head_dim, float scale, void* out, float* lse);
/* out and lse as written by attention_fwd; dout: [T, hq, d]. dq, dk, dv overwritten. */
REALN_API realn_status realn_op_attention_bwd(realn_stream_t stream, int32_t dtype, const void* q,
                                              const void* k, const void* v, const void* out,
                                              const float* lse, const void* dout,
                                              const int32_t* cu_seqlens, int64_t nseq,
                                              int64_t total_tokens, int64_t hq, int64_t hkv,
                                              int64_t head_dim, float scale, void* dq, void* dk,
                                              void* dv);

/* KV cache: kcache, vcache: [slots, max_len, hkv, d] in dtype (F32, or BF16 on the CPU backend).
 * Store T new rows: token t goes to slot slots[t], position positions[t] (int32 arrays of length
 * T; prefill and decode alike). k, v: [T, hkv, d] fp32 (a BF16 cache stores them rounded to
 * nearest even). If two tokens name the same (slot, position), the later token's row wins. */
REALN_API realn_status realn_op_kv_store(realn_stream_t stream, int32_t dtype, const void* k,
                                         const void* v, const int32_t* slots,
                                         const int32_t* positions, int64_t tokens, void* kcache,
                                         void* vcache, int64_t num_slots, int64_t max_len,
                                         int64_t hkv, int64_t head_dim);
/* Decode attention: one query token per sequence b (q: [B, hq, d]) attends to cache positions
 * [0, lens[b]) of slot slots[b] (the current token must already be stored). out: [B, hq, d].
 * q and out are fp32; dtype is the cache's (BF16: rows widened to fp32, fp32 arithmetic). */
REALN_API realn_status realn_op_attention_decode(realn_stream_t stream, int32_t dtype, const void* q,
                                                 const void* kcache, const void* vcache,
                                                 const int32_t* slots, const int32_t* lens,
                                                 int64_t batch, int64_t num_slots, int64_t max_len,
                                                 int64_t hq, int64_t hkv, int64_t head_dim,
                                                 float scale, void* out);

/* ---------------------------------------------------------------------------------------------
 * Log-probabilities, entropy, cross-entropy
 * ------------------------------------------------------------------------------------------- */
/* Per-row token log-probability under softmax(logits / temperature), optionally restricted to
 * the allowed tokens of mask (uint8 [rows, vocab], 1 = allowed; NULL = all allowed):
 *   logp[r] = z[r, labels[r]] - lse[r],  z = logits / temperature (masked-out -> -inf),
 *   entropy[r] = -sum_j p_j log p_j  (NULL to skip), lse[r] saved for backward.
 * logits: [rows, vocab] in dtype; logp, entropy, lse: float [rows]; labels: int32 [rows].
 * A masked-out label yields logp = -inf (the caller's contract is that labels are allowed); a row
 * with no allowed token yields lse = logp = -inf and entropy = 0. */
REALN_API realn_status realn_op_logprobs_fwd(realn_stream_t stream, int32_t dtype, const void* logits,
                                             const int32_t* labels, const uint8_t* mask, int64_t rows,
                                             int64_t vocab, float temperature, float* logp,
                                             float* entropy, float* lse);
/* dlogits = d(logp)/d(logits) * dlogp + d(entropy)/d(logits) * dentropy (dentropy may be NULL).
 * dlogits overwritten (dtype); masked-out entries get 0. For a masked-out label, logp = -inf - lse
 * and only the -lse part is differentiated; a row with lse = -inf gets all zeros. */
REALN_API realn_status realn_op_logprobs_bwd(realn_stream_t stream, int32_t dtype, const void* logits,
                                             const int32_t* labels, const uint8_t* mask, int64_t rows,
                                             int64_t vocab, float temperature, const float* lse,
                                             const float* dlogp, const float* dentropy,
                                             void* dlogits);
/* Cross-entropy with ignore_index: loss[r] = lse[r] - logits[r, labels[r]] (0 where labels[r] ==
 * ignore_index). *mean_loss = mean over non-ignored rows (0 if none). loss, lse: float [rows].
 * Ignored rows are skipped entirely: their lse[r] is written as 0, not computed. */
REALN_API realn_status realn_op_cross_entropy_fwd(realn_stream_t stream, int32_t dtype,
                                                  const void* logits, const int32_t* labels,
                                                  int64_t rows, int64_t vocab, int32_t ignore_index,
                                                  float* loss, float* lse, double* mean_loss);
/* dlogits = (softmax - onehot) * grad_scale for non-ignored rows, 0 for ignored rows
 * (grad_scale is typically 1/num_non_ignored). Overwrites dlogits. */
REALN_API realn_status realn_op_cross_entropy_bwd(realn_stream_t stream, int32_t dtype,
                                                  const void* logits, const int32_t* labels,
                                                  int64_t rows, int64_t vocab, int32_t ignore_index,
                                                  const float* lse, float grad_scale, void* dlogits);

/* ---------------------------------------------------------------------------------------------
 * Optimizer
 * ------------------------------------------------------------------------------------------- */
/* Released versions: 1 = 40 bytes (all the fields below). */
typedef struct realn_adamw_opts {
    int32_t size;    /* sizeof(realn_adamw_opts) */
    int32_t version; /* 1 */
    float lr;
    float beta1;
    float beta2;
    float eps;
    float weight_decay; /* decoupled: p -= lr * wd * p */
    float grad_scale;   /* grads are multiplied by this first (clipping, loss scaling) */
    int64_t step;       /* 1-based step number, for bias correction */
} realn_adamw_opts;
#define REALN_ADAMW_OPTS_INIT \
    { (int32_t)sizeof(realn_adamw_opts), 1, 1e-3f, 0.9f, 0.999f, 1e-8f, 0.0f, 1.0f, 1 }
/* fp32 params, grads, m, v: n elements each. Bias-corrected AdamW:
 *   g = grad * grad_scale; m = b1 m + (1-b1) g; v = b2 v + (1-b2) g^2;
 *   p -= lr * (m / (1-b1^t)) / (sqrt(v / (1-b2^t)) + eps) + lr * wd * p */
REALN_API realn_status realn_op_adamw(realn_stream_t stream, const realn_adamw_opts* opts, float* param,
                                      const float* grad, float* m, float* v, int64_t n);

/* ---------------------------------------------------------------------------------------------
 * Sampling
 * ------------------------------------------------------------------------------------------- */
/* Released versions: 1 = 40 bytes (all the fields below). */
typedef struct realn_sample_opts {
    int32_t size;      /* sizeof(realn_sample_opts) */
    int32_t version;   /* 1 */
    float temperature; /* 0 => greedy (argmax, lowest index on ties) */
    int32_t top_k;     /* 0 => disabled */
    float top_p;       /* 1 => disabled */
    int32_t reserved;
    uint64_t seed;     /* with offset, the random stream is a pure function of (seed, offset, row) */
    uint64_t offset;   /* e.g. the decode step, so each step draws fresh numbers */
} realn_sample_opts;
#define REALN_SAMPLE_OPTS_INIT \
    { (int32_t)sizeof(realn_sample_opts), 1, 1.0f, 0, 1.0f, 0, 0ull, 0ull }
/* logits: [rows, vocab] (dtype). tokens: int32 [rows] out. mask_out: uint8 [rows, vocab] or
 * NULL: 1 where the token survived top-k/top-p filtering (the mask training must reuse).
 * logp_out: float [rows] or NULL: log-prob of the chosen token under the filtered,
 * temperature-scaled distribution (greedy: under softmax(logits)). */
REALN_API realn_status realn_op_sample(realn_stream_t stream, int32_t dtype, const void* logits,
                                       int64_t rows, int64_t vocab, const realn_sample_opts* opts,
                                       int32_t* tokens, uint8_t* mask_out, float* logp_out);

/* ---------------------------------------------------------------------------------------------
 * RL: generalised advantage estimation over packed sequences
 * ------------------------------------------------------------------------------------------- */
/* rewards: float [T] (T = cu_seqlens[nseq]), one per action step; values: float [T + nseq]: the
 * value of each step plus one bootstrap value after each sequence (0 for terminated sequences),
 * i.e. sequence i's values start at cu_seqlens[i] + i. advantages, returns: float [T].
 *   delta_t = r_t + gamma V_{t+1} - V_t;  A_t = delta_t + gamma lambda A_{t+1};  R_t = A_t + V_t */
REALN_API realn_status realn_op_gae(realn_stream_t stream, const float* rewards, const float* values,
                                    const int32_t* cu_seqlens, int64_t nseq, float gamma,
                                    float lambda, float* advantages, float* returns);

/* ---------------------------------------------------------------------------------------------
 * CUDA IPC: device memory shared with another process on this host (cuda backend; run between two
 * processes on one H200), so a reallocation between two processes on one node is one device-to-device copy.
 * device_ptr must be the start of a backend buffer (realn_buf_ptr). A stream of another backend is
 * refused with REALN_ERR_UNSUPPORTED (host memory: realn_process_read).
 * ------------------------------------------------------------------------------------------- */
#define REALN_IPC_HANDLE_BYTES 64
/* Writes REALN_IPC_HANDLE_BYTES bytes to handle, for another process to open. */
REALN_API realn_status realn_ipc_handle(realn_stream_t stream, const void* device_ptr, uint8_t* handle);
/* Maps the memory behind another process's handle into this one (on the stream's device). */
REALN_API realn_status realn_ipc_open(realn_stream_t stream, const uint8_t* handle, void** device_ptr);
/* Unmaps what realn_ipc_open returned. */
REALN_API realn_status realn_ipc_close(realn_stream_t stream, void* device_ptr);

/* ---------------------------------------------------------------------------------------------
 * Collectives between devices: NCCL, loaded at run time (libnccl.so.2, or REALN_NCCL_LIBRARY)
 * for streams of the cuda backend. Run on one rank of one H200 only, never with several. Without NCCL, a CUDA driver or a cuda
 * build every call fails with REALN_ERR_UNSUPPORTED and a message naming what is missing.
 * ------------------------------------------------------------------------------------------- */
typedef struct realn_comm* realn_comm_t;
#define REALN_COMM_ID_BYTES 128
typedef enum realn_reduce_op {
    REALN_REDUCE_SUM = 0,
    REALN_REDUCE_PROD = 1,
    REALN_REDUCE_MAX = 2,
    REALN_REDUCE_MIN = 3,
    REALN_REDUCE_AVG = 4
} realn_reduce_op;
/* A new communicator id (REALN_COMM_ID_BYTES bytes into id), made by one rank and handed to every
 * rank out of band. */
REALN_API realn_status realn_comm_unique_id(uint8_t* id);
/* This process's rank of nranks on cuda device `device`; every rank calls it with the same id. */
REALN_API realn_status realn_comm_init(const uint8_t* id, int32_t nranks, int32_t rank, int32_t device,
                                       realn_comm_t* out);
REALN_API realn_status realn_comm_destroy(realn_comm_t comm);
/* Enqueued on `stream` (a cuda stream of the communicator's device); counts are elements of dtype
 * (F32, BF16, F16). all_gather: recv holds nranks * send_count; reduce_scatter: send holds
 * nranks * recv_count; broadcast: send is read on rank root only. */
REALN_API realn_status realn_comm_all_reduce(realn_comm_t comm, realn_stream_t stream, int32_t dtype,
                                             const void* send, void* recv, int64_t count, int32_t op);
REALN_API realn_status realn_comm_all_gather(realn_comm_t comm, realn_stream_t stream, int32_t dtype,
                                             const void* send, void* recv, int64_t send_count);
REALN_API realn_status realn_comm_reduce_scatter(realn_comm_t comm, realn_stream_t stream, int32_t dtype,
                                                 const void* send, void* recv, int64_t recv_count,
                                                 int32_t op);
REALN_API realn_status realn_comm_broadcast(realn_comm_t comm, realn_stream_t stream, int32_t dtype,
                                            const void* send, void* recv, int64_t count, int32_t root);
REALN_API realn_status realn_comm_send(realn_comm_t comm, realn_stream_t stream, int32_t dtype,
                                       const void* send, int64_t count, int32_t peer);
REALN_API realn_status realn_comm_recv(realn_comm_t comm, realn_stream_t stream, int32_t dtype, void* recv,
                                       int64_t count, int32_t peer);
/* Calls between group_start and group_end are issued together (e.g. a send and a recv that would
 * otherwise wait for each other). */
REALN_API realn_status realn_comm_group_start(void);
REALN_API realn_status realn_comm_group_end(void);

#ifdef __cplusplus
}
#endif

#endif /* REALN_H */
