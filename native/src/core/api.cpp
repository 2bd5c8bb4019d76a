// Every exported realn_* function: argument validation shared by all backends, then dispatch
// through the stream's backend table. Validation lives here once so a backend never sees a null
// pointer, a negative size or an unknown dtype, and every failure names the argument.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>

#include "backend.hpp"
#include "error.hpp"

using realn::Op;

namespace {

const realn::Backend* be(realn_stream_t s) {
    REALN_REQUIRE(s != nullptr, "stream must not be NULL");
    REALN_REQUIRE(s->backend != nullptr, "stream is not initialised (destroyed twice?)");
    return s->backend;
}

void check_dtype(int32_t dtype) {
    REALN_REQUIRE(dtype == REALN_DTYPE_F32 || dtype == REALN_DTYPE_BF16 || dtype == REALN_DTYPE_F16,
                  "dtype must be REALN_DTYPE_F32 (0), BF16 (1) or F16 (2) (got ", dtype, ")");
}

// Dispatch helper: checks the backend supports (op, dtype) and has the entry.
template <typename Fn>
Fn entry(realn_stream_t s, Op op, int32_t dtype, Fn fn) {
    check_dtype(dtype);
    const realn::Backend* b = be(s);
    if (fn == nullptr || !b->supports_op(op, dtype)) {
        static const char* dtypes[] = {"f32", "bf16", "f16"};
        realn::fail(REALN_ERR_UNSUPPORTED, "backend '", b->name, "' does not support op ",
                    realn::op_name(op), " with dtype ", dtypes[dtype]);
    }
    return fn;
}

#define DISPATCH(s, op, dtype, member) entry(s, op, dtype, be(s)->member)

thread_local std::string g_last_error;

}  // namespace

namespace realn {

#ifdef REALN_HAVE_CUDA
const char* cuda_unavailable_reason();
#endif

void set_last_error(const std::string& message) { g_last_error = message; }
void clear_last_error() { g_last_error.clear(); }

const char* op_name(Op op) {
    static const char* names[] = {
        "gemm", "linear_fwd", "linear_bwd", "axpby", "add", "sumsq", "scale", "count_nonfinite",
        "convert", "embedding_fwd", "embedding_bwd", "rmsnorm_fwd", "rmsnorm_bwd", "rotary_fwd",
        "rotary_bwd", "swiglu_fwd", "swiglu_bwd", "attention_fwd", "attention_bwd", "kv_store",
        "attention_decode", "logprobs_fwd", "logprobs_bwd", "cross_entropy_fwd",
        "cross_entropy_bwd", "adamw", "sample", "gae", "interval_gather", "interval_scatter",
        "hash_bytes", "copy", "fill"};
    static_assert(sizeof(names) / sizeof(names[0]) == static_cast<size_t>(Op::Count_),
                  "op_name table out of date");
    auto i = static_cast<int32_t>(op);
    return (i >= 0 && i < static_cast<int32_t>(Op::Count_)) ? names[i] : "unknown";
}

}  // namespace realn

extern "C" {

REALN_API const char* realn_last_error(void) { return g_last_error.c_str(); }

REALN_API const char* realn_status_string(realn_status status) {
    switch (status) {
        case REALN_OK: return "REALN_OK";
        case REALN_ERR_INVALID_ARGUMENT: return "REALN_ERR_INVALID_ARGUMENT";
        case REALN_ERR_OUT_OF_MEMORY: return "REALN_ERR_OUT_OF_MEMORY";
        case REALN_ERR_UNSUPPORTED: return "REALN_ERR_UNSUPPORTED";
        case REALN_ERR_BACKEND: return "REALN_ERR_BACKEND";
        case REALN_ERR_NOT_FOUND: return "REALN_ERR_NOT_FOUND";
        case REALN_ERR_INTERNAL: return "REALN_ERR_INTERNAL";
        case REALN_ERR_NUMERIC: return "REALN_ERR_NUMERIC";
        default: return "REALN_ERR_UNKNOWN";
    }
}

REALN_API realn_status realn_version(int32_t* major, int32_t* minor, int32_t* patch) {
    return realn::guard("realn_version", [&] {
        REALN_NOT_NULL(major);
        REALN_NOT_NULL(minor);
        REALN_NOT_NULL(patch);
        *major = REALN_VERSION_MAJOR;
        *minor = REALN_VERSION_MINOR;
        *patch = REALN_VERSION_PATCH;
    });
}

REALN_API realn_status realn_backend_available(int32_t backend, int32_t* available) {
    return realn::guard("realn_backend_available", [&] {
        REALN_NOT_NULL(available);
        const realn::Backend* b = realn::backend_get(backend);
        *available = (b != nullptr && b->device_count() > 0) ? 1 : 0;
    });
}

REALN_API realn_status realn_backend_device_count(int32_t backend, int32_t* count) {
    return realn::guard("realn_backend_device_count", [&] {
        REALN_NOT_NULL(count);
        const realn::Backend* b = realn::backend_get(backend);
        *count = b ? b->device_count() : 0;
    });
}

REALN_API realn_status realn_stream_create(int32_t backend, int32_t device, realn_stream_t* out) {
    return realn::guard("realn_stream_create", [&] {
        REALN_NOT_NULL(out);
        *out = nullptr;
        const realn::Backend* b = realn::backend_get(backend);
        if (b == nullptr)
            realn::fail(REALN_ERR_NOT_FOUND, "backend ", backend,
                        backend == REALN_BACKEND_CUDA ? " (cuda) is not compiled into this build"
                                                      : " is unknown");
        int32_t n = b->device_count();
#ifdef REALN_HAVE_CUDA
        if (n == 0 && backend == REALN_BACKEND_CUDA)
            realn::fail(REALN_ERR_UNSUPPORTED, "cuda backend: ", realn::cuda_unavailable_reason());
#endif
        if (device < 0 || device >= n)
            realn::fail(REALN_ERR_NOT_FOUND, "device ", device, " does not exist on backend '",
                        b->name, "' (", n, " device(s))");
        auto* s = new realn_stream{b, device, nullptr};
        try {
            s->native = b->stream_create(device);
        } catch (...) {
            delete s;
            throw;
        }
        *out = s;
    });
}

REALN_API realn_status realn_stream_synchronize(realn_stream_t stream) {
    return realn::guard("realn_stream_synchronize", [&] { be(stream)->stream_synchronize(stream); });
}

REALN_API realn_status realn_stream_backend(realn_stream_t stream, int32_t* backend) {
    return realn::guard("realn_stream_backend", [&] {
        REALN_NOT_NULL(backend);
        *backend = be(stream)->kind;
    });
}

REALN_API realn_status realn_stream_destroy(realn_stream_t stream) {
    return realn::guard("realn_stream_destroy", [&] {
        if (stream == nullptr) return;
        const realn::Backend* b = be(stream);
        b->stream_destroy(stream->native);
        stream->backend = nullptr;
        delete stream;
    });
}

REALN_API realn_status realn_buf_alloc(realn_stream_t stream, int64_t bytes, realn_buf_t* out) {
    return realn::guard("realn_buf_alloc", [&] {
        REALN_NOT_NULL(out);
        *out = nullptr;
        REALN_NON_NEGATIVE(bytes);
        const realn::Backend* b = be(stream);
        void* p = b->alloc(stream, bytes);
        *out = new realn_buf{stream, p, bytes};
    });
}

REALN_API realn_status realn_buf_ptr(realn_buf_t buf, void** out) {
    return realn::guard("realn_buf_ptr", [&] {
        REALN_NOT_NULL(buf);
        REALN_NOT_NULL(out);
        *out = buf->ptr;
    });
}

REALN_API realn_status realn_buf_size(realn_buf_t buf, int64_t* out) {
    return realn::guard("realn_buf_size", [&] {
        REALN_NOT_NULL(buf);
        REALN_NOT_NULL(out);
        *out = buf->bytes;
    });
}

REALN_API realn_status realn_buf_free(realn_buf_t buf) {
    return realn::guard("realn_buf_free", [&] {
        if (buf == nullptr) return;
        be(buf->stream)->free(buf->stream, buf->ptr);
        delete buf;
    });
}

REALN_API realn_status realn_copy(realn_stream_t stream, void* dst, const void* src, int64_t bytes,
                                  int32_t kind) {
    return realn::guard("realn_copy", [&] {
        REALN_NON_NEGATIVE(bytes);
        REALN_REQUIRE(kind >= REALN_COPY_D2D && kind <= REALN_COPY_D2H,
                      "kind must be 0 (D2D), 1 (H2D) or 2 (D2H) (got ", kind, ")");
        if (bytes == 0) return;
        REALN_NOT_NULL(dst);
        REALN_NOT_NULL(src);
        be(stream)->copy(stream, dst, src, bytes, kind);
    });
}

REALN_API realn_status realn_fill_f32(realn_stream_t stream, float* dst, int64_t n, float value) {
    return realn::guard("realn_fill_f32", [&] {
        REALN_NON_NEGATIVE(n);
        if (n == 0) return;
        REALN_NOT_NULL(dst);
        be(stream)->fill_f32(stream, dst, n, value);
    });
}

static void check_intervals(const int64_t* offsets, const int64_t* lengths, int64_t count) {
    REALN_NON_NEGATIVE(count);
    if (count == 0) return;
    REALN_NOT_NULL(offsets);
    REALN_NOT_NULL(lengths);
    for (int64_t i = 0; i < count; ++i) {
        if (offsets[i] < 0 || lengths[i] < 0)
            realn::fail(REALN_ERR_INVALID_ARGUMENT, "interval ", i, " has offset ", offsets[i],
                        " and length ", lengths[i], "; both must be >= 0");
    }
}

REALN_API realn_status realn_interval_gather(realn_stream_t stream, void* staging, const void* flat,
                                             const int64_t* offsets, const int64_t* lengths,
                                             int64_t count) {
    return realn::guard("realn_interval_gather", [&] {
        check_intervals(offsets, lengths, count);
        if (count == 0) return;
        REALN_NOT_NULL(staging);
        REALN_NOT_NULL(flat);
        DISPATCH(stream, Op::IntervalGather, REALN_DTYPE_F32, interval_gather)(
            stream, staging, flat, offsets, lengths, count);
    });
}

REALN_API realn_status realn_interval_scatter(realn_stream_t stream, void* flat, const void* staging,
                                              const int64_t* offsets, const int64_t* lengths,
                                              int64_t count) {
    return realn::guard("realn_interval_scatter", [&] {
        check_intervals(offsets, lengths, count);
        if (count == 0) return;
        REALN_NOT_NULL(staging);
        REALN_NOT_NULL(flat);
        DISPATCH(stream, Op::IntervalScatter, REALN_DTYPE_F32, interval_scatter)(
            stream, flat, staging, offsets, lengths, count);
    });
}

REALN_API realn_status realn_hash_bytes(realn_stream_t stream, const void* data, int64_t bytes,
                                        uint64_t* out) {
    return realn::guard("realn_hash_bytes", [&] {
        REALN_NOT_NULL(out);
        REALN_NON_NEGATIVE(bytes);
        if (bytes > 0) REALN_NOT_NULL(data);
        *out = DISPATCH(stream, Op::HashBytes, REALN_DTYPE_F32, hash_bytes)(stream, data, bytes);
    });
}

REALN_API realn_status realn_op_gemm(realn_stream_t stream, int32_t dtype, int32_t trans_a,
                                     int32_t trans_b, int64_t m, int64_t n, int64_t k, float alpha,
                                     const void* a, int64_t lda, int64_t stride_a, const void* b,
                                     int64_t ldb, int64_t stride_b, float beta, void* c, int64_t ldc,
                                     int64_t stride_c, int64_t batch) {
    return realn::guard("realn_op_gemm", [&] {
        REALN_REQUIRE(trans_a == 0 || trans_a == 1, "trans_a must be 0 or 1 (got ", trans_a, ")");
        REALN_REQUIRE(trans_b == 0 || trans_b == 1, "trans_b must be 0 or 1 (got ", trans_b, ")");
        REALN_NON_NEGATIVE(m);
        REALN_NON_NEGATIVE(n);
        REALN_NON_NEGATIVE(k);
        REALN_NON_NEGATIVE(batch);
        if (m == 0 || n == 0 || batch == 0) return;
        REALN_NOT_NULL(c);
        if (k > 0) {
            REALN_NOT_NULL(a);
            REALN_NOT_NULL(b);
        }
        // Row-major: stored A is (trans_a ? k x m : m x k); its row length bounds lda.
        int64_t a_cols = trans_a ? m : k, b_cols = trans_b ? k : n;
        REALN_REQUIRE(lda >= std::max<int64_t>(1, a_cols), "lda (", lda, ") must be >= ", a_cols);
        REALN_REQUIRE(ldb >= std::max<int64_t>(1, b_cols), "ldb (", ldb, ") must be >= ", b_cols);
        REALN_REQUIRE(ldc >= std::max<int64_t>(1, n), "ldc (", ldc, ") must be >= n (", n, ")");
        if (batch > 1) {
            REALN_NON_NEGATIVE(stride_a);
            REALN_NON_NEGATIVE(stride_b);
            REALN_REQUIRE(stride_c >= m * ldc,
                          "stride_c (", stride_c, ") must be >= m * ldc (", m * ldc,
                          ") so batches of C do not overlap");
        }
        DISPATCH(stream, Op::Gemm, dtype, gemm)(stream, dtype, trans_a, trans_b, m, n, k, alpha, a,
                                                lda, stride_a, b, ldb, stride_b, beta, c, ldc,
                                                stride_c, batch);
    });
}

REALN_API realn_status realn_op_linear_fwd(realn_stream_t stream, int32_t dtype, const void* x,
                                           const void* w, const void* bias, void* y, int64_t rows,
                                           int64_t in_features, int64_t out_features) {
    return realn::guard("realn_op_linear_fwd", [&] {
        REALN_NON_NEGATIVE(rows);
        REALN_POSITIVE(in_features);
        REALN_POSITIVE(out_features);
        if (rows == 0) return;
        REALN_NOT_NULL(x);
        REALN_NOT_NULL(w);
        REALN_NOT_NULL(y);
        DISPATCH(stream, Op::LinearFwd, dtype, linear_fwd)(stream, dtype, x, w, bias, y, rows,
                                                           in_features, out_features);
    });
}

REALN_API realn_status realn_op_linear_bwd(realn_stream_t stream, int32_t dtype, const void* x,
                                           const void* w, const void* dy, void* dx, void* dw,
                                           void* dbias, int64_t rows, int64_t in_features,
                                           int64_t out_features, int32_t flags) {
    return realn::guard("realn_op_linear_bwd", [&] {
        REALN_NON_NEGATIVE(rows);
        REALN_POSITIVE(in_features);
        REALN_POSITIVE(out_features);
        REALN_REQUIRE((flags & ~REALN_ACCUMULATE_DX) == 0, "unknown flags ", flags);
        if (rows == 0) return;
        REALN_NOT_NULL(dy);
        if (dx) REALN_REQUIRE(w != nullptr, "w must not be NULL when dx is requested");
        if (dw) REALN_REQUIRE(x != nullptr, "x must not be NULL when dw is requested");
        DISPATCH(stream, Op::LinearBwd, dtype, linear_bwd)(stream, dtype, x, w, dy, dx, dw, dbias,
                                                           rows, in_features, out_features, flags);
    });
}

REALN_API realn_status realn_op_axpby(realn_stream_t stream, int32_t dtype, int64_t n, float alpha,
                                      const void* x, float beta, void* y) {
    return realn::guard("realn_op_axpby", [&] {
        REALN_NON_NEGATIVE(n);
        if (n == 0) return;
        REALN_NOT_NULL(x);
        REALN_NOT_NULL(y);
        DISPATCH(stream, Op::Axpby, dtype, axpby)(stream, dtype, n, alpha, x, beta, y);
    });
}

REALN_API realn_status realn_op_add(realn_stream_t stream, int32_t dtype, int64_t n, const void* a,
                                    const void* b, void* out) {
    return realn::guard("realn_op_add", [&] {
        REALN_NON_NEGATIVE(n);
        if (n == 0) return;
        REALN_NOT_NULL(a);
        REALN_NOT_NULL(b);
        REALN_NOT_NULL(out);
        DISPATCH(stream, Op::Add, dtype, add)(stream, dtype, n, a, b, out);
    });
}

REALN_API realn_status realn_op_sumsq(realn_stream_t stream, const float* x, int64_t n, double* out) {
    return realn::guard("realn_op_sumsq", [&] {
        REALN_NOT_NULL(out);
        REALN_NON_NEGATIVE(n);
        *out = 0.0;
        if (n == 0) return;
        REALN_NOT_NULL(x);
        *out = DISPATCH(stream, Op::Sumsq, REALN_DTYPE_F32, sumsq)(stream, x, n);
    });
}

REALN_API realn_status realn_op_scale(realn_stream_t stream, float* x, int64_t n, float alpha) {
    return realn::guard("realn_op_scale", [&] {
        REALN_NON_NEGATIVE(n);
        if (n == 0) return;
        REALN_NOT_NULL(x);
        DISPATCH(stream, Op::Scale, REALN_DTYPE_F32, scale)(stream, x, n, alpha);
    });
}

REALN_API realn_status realn_op_count_nonfinite(realn_stream_t stream, const float* x, int64_t n,
                                                int64_t* out) {
    return realn::guard("realn_op_count_nonfinite", [&] {
        REALN_NOT_NULL(out);
        REALN_NON_NEGATIVE(n);
        *out = 0;
        if (n == 0) return;
        REALN_NOT_NULL(x);
        *out = DISPATCH(stream, Op::CountNonfinite, REALN_DTYPE_F32, count_nonfinite)(stream, x, n);
    });
}

REALN_API realn_status realn_op_convert(realn_stream_t stream, int32_t dst_dtype, void* dst,
                                        int32_t src_dtype, const void* src, int64_t n) {
    return realn::guard("realn_op_convert", [&] {
        check_dtype(dst_dtype);
        REALN_NON_NEGATIVE(n);
        if (n == 0) return;
        REALN_NOT_NULL(dst);
        REALN_NOT_NULL(src);
        DISPATCH(stream, Op::Convert, src_dtype, convert)(stream, dst_dtype, dst, src_dtype, src, n);
    });
}

REALN_API realn_status realn_op_embedding_fwd(realn_stream_t stream, int32_t dtype,
                                              const int32_t* ids, int64_t n, const void* table,
                                              int64_t vocab, int64_t hidden, int64_t vocab_start,
                                              void* out) {
    return realn::guard("realn_op_embedding_fwd", [&] {
        REALN_NON_NEGATIVE(n);
        REALN_POSITIVE(vocab);
        REALN_POSITIVE(hidden);
        REALN_NON_NEGATIVE(vocab_start);
        if (n == 0) return;
        REALN_NOT_NULL(ids);
        REALN_NOT_NULL(table);
        REALN_NOT_NULL(out);
        DISPATCH(stream, Op::EmbeddingFwd, dtype, embedding_fwd)(stream, dtype, ids, n, table, vocab,
                                                                 hidden, vocab_start, out);
    });
}

REALN_API realn_status realn_op_embedding_bwd(realn_stream_t stream, int32_t dtype,
                                              const int32_t* ids, int64_t n, const void* dout,
                                              int64_t vocab, int64_t hidden, int64_t vocab_start,
                                              void* dtable) {
    return realn::guard("realn_op_embedding_bwd", [&] {
        REALN_NON_NEGATIVE(n);
        REALN_POSITIVE(vocab);
        REALN_POSITIVE(hidden);
        REALN_NON_NEGATIVE(vocab_start);
        if (n == 0) return;
        REALN_NOT_NULL(ids);
        REALN_NOT_NULL(dout);
        REALN_NOT_NULL(dtable);
        DISPATCH(stream, Op::EmbeddingBwd, dtype, embedding_bwd)(stream, dtype, ids, n, dout, vocab,
                                                                 hidden, vocab_start, dtable);
    });
}

REALN_API realn_status realn_op_rmsnorm_fwd(realn_stream_t stream, int32_t dtype, const void* x,
                                            const void* w, void* y, float* rstd, int64_t rows,
                                            int64_t dim, float eps) {
    return realn::guard("realn_op_rmsnorm_fwd", [&] {
        REALN_NON_NEGATIVE(rows);
        REALN_POSITIVE(dim);
        REALN_REQUIRE(eps >= 0 && std::isfinite(eps), "eps must be finite and >= 0 (got ", eps, ")");
        if (rows == 0) return;
        REALN_NOT_NULL(x);
        REALN_NOT_NULL(w);
        REALN_NOT_NULL(y);
        DISPATCH(stream, Op::RmsnormFwd, dtype, rmsnorm_fwd)(stream, dtype, x, w, y, rstd, rows, dim,
                                                             eps);
    });
}

REALN_API realn_status realn_op_rmsnorm_bwd(realn_stream_t stream, int32_t dtype, const void* x,
                                            const void* w, const float* rstd, const void* dy,
                                            void* dx, void* dw, int64_t rows, int64_t dim) {
    return realn::guard("realn_op_rmsnorm_bwd", [&] {
        REALN_NON_NEGATIVE(rows);
        REALN_POSITIVE(dim);
        if (rows == 0) return;
        REALN_NOT_NULL(x);
        REALN_NOT_NULL(w);
        REALN_NOT_NULL(rstd);
        REALN_NOT_NULL(dy);
        REALN_NOT_NULL(dx);
        REALN_NOT_NULL(dw);
        DISPATCH(stream, Op::RmsnormBwd, dtype, rmsnorm_bwd)(stream, dtype, x, w, rstd, dy, dx, dw,
                                                             rows, dim);
    });
}

static void check_rotary(const void* x, const int32_t* positions, void* y, int64_t tokens,
                         int64_t heads, int64_t head_dim, int64_t rot_dim, float theta) {
    REALN_NON_NEGATIVE(tokens);
    REALN_POSITIVE(heads);
    REALN_POSITIVE(head_dim);
    REALN_REQUIRE(rot_dim > 0 && rot_dim <= head_dim && rot_dim % 2 == 0,
                  "rot_dim must be even and in (0, head_dim=", head_dim, "] (got ", rot_dim, ")");
    REALN_REQUIRE(theta > 0 && std::isfinite(theta), "theta must be finite and > 0 (got ", theta,
                  ")");
    if (tokens == 0) return;
    REALN_NOT_NULL(x);
    REALN_NOT_NULL(positions);
    REALN_NOT_NULL(y);
}

REALN_API realn_status realn_op_rotary_fwd(realn_stream_t stream, int32_t dtype, const void* x,
                                           const int32_t* positions, void* y, int64_t tokens,
                                           int64_t heads, int64_t head_dim, int64_t rot_dim,
                                           float theta) {
    return realn::guard("realn_op_rotary_fwd", [&] {
        check_rotary(x, positions, y, tokens, heads, head_dim, rot_dim, theta);
        if (tokens == 0) return;
        DISPATCH(stream, Op::RotaryFwd, dtype, rotary)(stream, dtype, x, positions, y, tokens, heads,
                                                       head_dim, rot_dim, theta, false);
    });
}

REALN_API realn_status realn_op_rotary_bwd(realn_stream_t stream, int32_t dtype, const void* dy,
                                           const int32_t* positions, void* dx, int64_t tokens,
                                           int64_t heads, int64_t head_dim, int64_t rot_dim,
                                           float theta) {
    return realn::guard("realn_op_rotary_bwd", [&] {
        check_rotary(dy, positions, dx, tokens, heads, head_dim, rot_dim, theta);
        if (tokens == 0) return;
        DISPATCH(stream, Op::RotaryBwd, dtype, rotary)(stream, dtype, dy, positions, dx, tokens,
                                                       heads, head_dim, rot_dim, theta, true);
    });
}

REALN_API realn_status realn_op_swiglu_fwd(realn_stream_t stream, int32_t dtype, const void* gate,
                                           const void* up, int64_t ld_in, void* out, int64_t ld_out,
                                           int64_t rows, int64_t cols) {
    return realn::guard("realn_op_swiglu_fwd", [&] {
        REALN_NON_NEGATIVE(rows);
        REALN_POSITIVE(cols);
        REALN_REQUIRE(ld_in >= cols, "ld_in (", ld_in, ") must be >= cols (", cols, ")");
        REALN_REQUIRE(ld_out >= cols, "ld_out (", ld_out, ") must be >= cols (", cols, ")");
        if (rows == 0) return;
        REALN_NOT_NULL(gate);
        REALN_NOT_NULL(up);
        REALN_NOT_NULL(out);
        DISPATCH(stream, Op::SwigluFwd, dtype, swiglu_fwd)(stream, dtype, gate, up, ld_in, out,
                                                           ld_out, rows, cols);
    });
}

REALN_API realn_status realn_op_swiglu_bwd(realn_stream_t stream, int32_t dtype, const void* gate,
                                           const void* up, int64_t ld_in, const void* dout,
                                           int64_t ld_out, void* dgate, void* dup, int64_t rows,
                                           int64_t cols) {
    return realn::guard("realn_op_swiglu_bwd", [&] {
        REALN_NON_NEGATIVE(rows);
        REALN_POSITIVE(cols);
        REALN_REQUIRE(ld_in >= cols, "ld_in (", ld_in, ") must be >= cols (", cols, ")");
        REALN_REQUIRE(ld_out >= cols, "ld_out (", ld_out, ") must be >= cols (", cols, ")");
        if (rows == 0) return;
        REALN_NOT_NULL(gate);
        REALN_NOT_NULL(up);
        REALN_NOT_NULL(dout);
        REALN_NOT_NULL(dgate);
        REALN_NOT_NULL(dup);
        DISPATCH(stream, Op::SwigluBwd, dtype, swiglu_bwd)(stream, dtype, gate, up, ld_in, dout,
                                                           ld_out, dgate, dup, rows, cols);
    });
}

static void check_attention_shape(const int32_t* cu_seqlens, int64_t nseq, int64_t total,
                                  int64_t hq, int64_t hkv, int64_t d, float scale) {
    REALN_NON_NEGATIVE(nseq);
    REALN_NON_NEGATIVE(total);
    REALN_POSITIVE(hq);
    REALN_POSITIVE(hkv);
    REALN_POSITIVE(d);
    REALN_REQUIRE(hq % hkv == 0, "hq (", hq, ") must be a multiple of hkv (", hkv, ")");
    REALN_REQUIRE(std::isfinite(scale) && scale > 0, "scale must be finite and > 0 (got ", scale, ")");
    REALN_NOT_NULL(cu_seqlens);
    REALN_REQUIRE(cu_seqlens[0] == 0, "cu_seqlens[0] must be 0 (got ", cu_seqlens[0], ")");
    for (int64_t i = 0; i < nseq; ++i)
        REALN_REQUIRE(cu_seqlens[i + 1] >= cu_seqlens[i], "cu_seqlens must be non-decreasing (",
                      "cu_seqlens[", i, "]=", cu_seqlens[i], " > cu_seqlens[", i + 1,
                      "]=", cu_seqlens[i + 1], ")");
    REALN_REQUIRE(cu_seqlens[nseq] == total, "cu_seqlens[nseq] (", cu_seqlens[nseq],
                  ") must equal total_tokens (", total, ")");
}

REALN_API realn_status realn_op_attention_fwd(realn_stream_t stream, int32_t dtype, const void* q,
                                              const void* k, const void* v,
                                              const int32_t* cu_seqlens, int64_t nseq,
                                              int64_t total_tokens, int64_t hq, int64_t hkv,
                                              int64_t head_dim, float scale, void* out, float* lse) {
    return realn::guard("realn_op_attention_fwd", [&] {
        check_attention_shape(cu_seqlens, nseq, total_tokens, hq, hkv, head_dim, scale);
        if (total_tokens == 0) return;
        REALN_NOT_NULL(q);
        REALN_NOT_NULL(k);
        REALN_NOT_NULL(v);
        REALN_NOT_NULL(out);
        DISPATCH(stream, Op::AttentionFwd, dtype, attention_fwd)(stream, dtype, q, k, v, cu_seqlens,
                                                                 nseq, total_tokens, hq, hkv,
                                                                 head_dim, scale, out, lse);
    });
}

REALN_API realn_status realn_op_attention_bwd(realn_stream_t stream, int32_t dtype, const void* q,
                                              const void* k, const void* v, const void* out,
                                              const float* lse, const void* dout,
                                              const int32_t* cu_seqlens, int64_t nseq,
                                              int64_t total_tokens, int64_t hq, int64_t hkv,
                                              int64_t head_dim, float scale, void* dq, void* dk,
                                              void* dv) {
    return realn::guard("realn_op_attention_bwd", [&] {
        check_attention_shape(cu_seqlens, nseq, total_tokens, hq, hkv, head_dim, scale);
        if (total_tokens == 0) return;
        REALN_NOT_NULL(q);
        REALN_NOT_NULL(k);
        REALN_NOT_NULL(v);
        REALN_NOT_NULL(out);
        REALN_NOT_NULL(lse);
        REALN_NOT_NULL(dout);
        REALN_NOT_NULL(dq);
        REALN_NOT_NULL(dk);
        REALN_NOT_NULL(dv);
        DISPATCH(stream, Op::AttentionBwd, dtype, attention_bwd)(
            stream, dtype, q, k, v, out, lse, dout, cu_seqlens, nseq, total_tokens, hq, hkv,
            head_dim, scale, dq, dk, dv);
    });
}

REALN_API realn_status realn_op_kv_store(realn_stream_t stream, int32_t dtype, const void* k,
                                         const void* v, const int32_t* slots,
                                         const int32_t* positions, int64_t tokens, void* kcache,
                                         void* vcache, int64_t num_slots, int64_t max_len,
                                         int64_t hkv, int64_t head_dim) {
    return realn::guard("realn_op_kv_store", [&] {
        REALN_NON_NEGATIVE(tokens);
        REALN_POSITIVE(num_slots);
        REALN_POSITIVE(max_len);
        REALN_POSITIVE(hkv);
        REALN_POSITIVE(head_dim);
        if (tokens == 0) return;
        REALN_NOT_NULL(k);
        REALN_NOT_NULL(v);
        REALN_NOT_NULL(slots);
        REALN_NOT_NULL(positions);
        REALN_NOT_NULL(kcache);
        REALN_NOT_NULL(vcache);
        for (int64_t t = 0; t < tokens; ++t) {
            REALN_REQUIRE(slots[t] >= 0 && slots[t] < num_slots, "slots[", t, "]=", slots[t],
                          " is outside [0, num_slots=", num_slots, ")");
            REALN_REQUIRE(positions[t] >= 0 && positions[t] < max_len, "positions[", t,
                          "]=", positions[t], " is outside [0, max_len=", max_len, ")");
        }
        DISPATCH(stream, Op::KvStore, dtype, kv_store)(stream, dtype, k, v, slots, positions, tokens,
                                                       kcache, vcache, num_slots, max_len, hkv,
                                                       head_dim);
    });
}

REALN_API realn_status realn_op_attention_decode(realn_stream_t stream, int32_t dtype, const void* q,
                                                 const void* kcache, const void* vcache,
                                                 const int32_t* slots, const int32_t* lens,
                                                 int64_t batch, int64_t num_slots, int64_t max_len,
                                                 int64_t hq, int64_t hkv, int64_t head_dim,
                                                 float scale, void* out) {
    return realn::guard("realn_op_attention_decode", [&] {
        REALN_NON_NEGATIVE(batch);
        REALN_POSITIVE(num_slots);
        REALN_POSITIVE(max_len);
        REALN_POSITIVE(hq);
        REALN_POSITIVE(hkv);
        REALN_POSITIVE(head_dim);
        REALN_REQUIRE(hq % hkv == 0, "hq (", hq, ") must be a multiple of hkv (", hkv, ")");
        REALN_REQUIRE(std::isfinite(scale) && scale > 0, "scale must be finite and > 0");
        if (batch == 0) return;
        REALN_NOT_NULL(q);
        REALN_NOT_NULL(kcache);
        REALN_NOT_NULL(vcache);
        REALN_NOT_NULL(slots);
        REALN_NOT_NULL(lens);
        REALN_NOT_NULL(out);
        for (int64_t b = 0; b < batch; ++b) {
            REALN_REQUIRE(slots[b] >= 0 && slots[b] < num_slots, "slots[", b, "]=", slots[b],
                          " is outside [0, num_slots=", num_slots, ")");
            REALN_REQUIRE(lens[b] >= 1 && lens[b] <= max_len, "lens[", b, "]=", lens[b],
                          " is outside [1, max_len=", max_len, "]");
        }
        DISPATCH(stream, Op::AttentionDecode, dtype, attention_decode)(
            stream, dtype, q, kcache, vcache, slots, lens, batch, num_slots, max_len, hq, hkv,
            head_dim, scale, out);
    });
}

static void check_labels(const int32_t* labels, int64_t rows, int64_t vocab, bool allow_ignore,
                         int32_t ignore_index) {
    for (int64_t r = 0; r < rows; ++r) {
        if (allow_ignore && labels[r] == ignore_index) continue;
        REALN_REQUIRE(labels[r] >= 0 && labels[r] < vocab, "labels[", r, "]=", labels[r],
                      " is outside [0, vocab=", vocab, ")");
    }
}

REALN_API realn_status realn_op_logprobs_fwd(realn_stream_t stream, int32_t dtype, const void* logits,
                                             const int32_t* labels, const uint8_t* mask, int64_t rows,
                                             int64_t vocab, float temperature, float* logp,
                                             float* entropy, float* lse) {
    return realn::guard("realn_op_logprobs_fwd", [&] {
        REALN_NON_NEGATIVE(rows);
        REALN_POSITIVE(vocab);
        REALN_REQUIRE(temperature > 0 && std::isfinite(temperature),
                      "temperature must be finite and > 0 (got ", temperature, ")");
        if (rows == 0) return;
        REALN_NOT_NULL(logits);
        REALN_NOT_NULL(labels);
        REALN_NOT_NULL(logp);
        REALN_NOT_NULL(lse);
        check_labels(labels, rows, vocab, false, 0);
        DISPATCH(stream, Op::LogprobsFwd, dtype, logprobs_fwd)(stream, dtype, logits, labels, mask,
                                                               rows, vocab, temperature, logp,
                                                               entropy, lse);
    });
}

REALN_API realn_status realn_op_logprobs_bwd(realn_stream_t stream, int32_t dtype, const void* logits,
                                             const int32_t* labels, const uint8_t* mask, int64_t rows,
                                             int64_t vocab, float temperature, const float* lse,
                                             const float* dlogp, const float* dentropy,
                                             void* dlogits) {
    return realn::guard("realn_op_logprobs_bwd", [&] {
        REALN_NON_NEGATIVE(rows);
        REALN_POSITIVE(vocab);
        REALN_REQUIRE(temperature > 0 && std::isfinite(temperature),
                      "temperature must be finite and > 0 (got ", temperature, ")");
        if (rows == 0) return;
        REALN_NOT_NULL(logits);
        REALN_NOT_NULL(labels);
        REALN_NOT_NULL(lse);
        REALN_NOT_NULL(dlogp);
        REALN_NOT_NULL(dlogits);
        check_labels(labels, rows, vocab, false, 0);
        DISPATCH(stream, Op::LogprobsBwd, dtype, logprobs_bwd)(stream, dtype, logits, labels, mask,
                                                               rows, vocab, temperature, lse, dlogp,
                                                               dentropy, dlogits);
    });
}

REALN_API realn_status realn_op_cross_entropy_fwd(realn_stream_t stream, int32_t dtype,
                                                  const void* logits, const int32_t* labels,
                                                  int64_t rows, int64_t vocab, int32_t ignore_index,
                                                  float* loss, float* lse, double* mean_loss) {
    return realn::guard("realn_op_cross_entropy_fwd", [&] {
        REALN_NON_NEGATIVE(rows);
        REALN_POSITIVE(vocab);
        REALN_NOT_NULL(mean_loss);
        *mean_loss = 0.0;
        if (rows == 0) return;
        REALN_NOT_NULL(logits);
        REALN_NOT_NULL(labels);
        REALN_NOT_NULL(loss);
        REALN_NOT_NULL(lse);
        check_labels(labels, rows, vocab, true, ignore_index);
        *mean_loss = DISPATCH(stream, Op::CrossEntropyFwd, dtype, cross_entropy_fwd)(
            stream, dtype, logits, labels, rows, vocab, ignore_index, loss, lse);
    });
}

REALN_API realn_status realn_op_cross_entropy_bwd(realn_stream_t stream, int32_t dtype,
                                                  const void* logits, const int32_t* labels,
                                                  int64_t rows, int64_t vocab, int32_t ignore_index,
                                                  const float* lse, float grad_scale, void* dlogits) {
    return realn::guard("realn_op_cross_entropy_bwd", [&] {
        REALN_NON_NEGATIVE(rows);
        REALN_POSITIVE(vocab);
        if (rows == 0) return;
        REALN_NOT_NULL(logits);
        REALN_NOT_NULL(labels);
        REALN_NOT_NULL(lse);
        REALN_NOT_NULL(dlogits);
        check_labels(labels, rows, vocab, true, ignore_index);
        DISPATCH(stream, Op::CrossEntropyBwd, dtype, cross_entropy_bwd)(
            stream, dtype, logits, labels, rows, vocab, ignore_index, lse, grad_scale, dlogits);
    });
}

REALN_API realn_status realn_op_adamw(realn_stream_t stream, const realn_adamw_opts* opts, float* param,
                                      const float* grad, float* m, float* v, int64_t n) {
    return realn::guard("realn_op_adamw", [&] {
        REALN_NOT_NULL(opts);
        REALN_REQUIRE(opts->size >= static_cast<int32_t>(sizeof(realn_adamw_opts)) &&
                          opts->version == 1,
                      "opts must be initialised with REALN_ADAMW_OPTS_INIT (size ", opts->size,
                      ", version ", opts->version, ")");
        REALN_REQUIRE(opts->step >= 1, "opts->step must be >= 1 (got ", opts->step, ")");
        REALN_REQUIRE(opts->beta1 >= 0 && opts->beta1 < 1, "opts->beta1 must be in [0, 1) (got ",
                      opts->beta1, ")");
        REALN_REQUIRE(opts->beta2 >= 0 && opts->beta2 < 1, "opts->beta2 must be in [0, 1) (got ",
                      opts->beta2, ")");
        REALN_REQUIRE(opts->eps > 0, "opts->eps must be > 0 (got ", opts->eps, ")");
        REALN_REQUIRE(std::isfinite(opts->lr) && opts->lr >= 0, "opts->lr must be finite and >= 0");
        REALN_REQUIRE(std::isfinite(opts->grad_scale), "opts->grad_scale must be finite");
        REALN_NON_NEGATIVE(n);
        if (n == 0) return;
        REALN_NOT_NULL(param);
        REALN_NOT_NULL(grad);
        REALN_NOT_NULL(m);
        REALN_NOT_NULL(v);
        DISPATCH(stream, Op::Adamw, REALN_DTYPE_F32, adamw)(stream, opts, param, grad, m, v, n);
    });
}

REALN_API realn_status realn_op_sample(realn_stream_t stream, int32_t dtype, const void* logits,
                                       int64_t rows, int64_t vocab, const realn_sample_opts* opts,
                                       int32_t* tokens, uint8_t* mask_out, float* logp_out) {
    return realn::guard("realn_op_sample", [&] {
        REALN_NOT_NULL(opts);
        REALN_REQUIRE(opts->size >= static_cast<int32_t>(sizeof(realn_sample_opts)) &&
                          opts->version == 1,
                      "opts must be initialised with REALN_SAMPLE_OPTS_INIT (size ", opts->size,
                      ", version ", opts->version, ")");
        REALN_REQUIRE(opts->temperature >= 0 && std::isfinite(opts->temperature),
                      "opts->temperature must be finite and >= 0 (got ", opts->temperature, ")");
        REALN_REQUIRE(opts->top_k >= 0, "opts->top_k must be >= 0 (got ", opts->top_k, ")");
        REALN_REQUIRE(opts->top_p > 0 && opts->top_p <= 1, "opts->top_p must be in (0, 1] (got ",
                      opts->top_p, ")");
        REALN_NON_NEGATIVE(rows);
        REALN_POSITIVE(vocab);
        if (rows == 0) return;
        REALN_NOT_NULL(logits);
        REALN_NOT_NULL(tokens);
        DISPATCH(stream, Op::Sample, dtype, sample)(stream, dtype, logits, rows, vocab, opts, tokens,
                                                    mask_out, logp_out);
    });
}

REALN_API realn_status realn_op_gae(realn_stream_t stream, const float* rewards, const float* values,
                                    const int32_t* cu_seqlens, int64_t nseq, float gamma,
                                    float lambda, float* advantages, float* returns) {
    return realn::guard("realn_op_gae", [&] {
        REALN_NON_NEGATIVE(nseq);
        REALN_REQUIRE(gamma >= 0 && gamma <= 1, "gamma must be in [0, 1] (got ", gamma, ")");
        REALN_REQUIRE(lambda >= 0 && lambda <= 1, "lambda must be in [0, 1] (got ", lambda, ")");
        if (nseq == 0) return;
        REALN_NOT_NULL(cu_seqlens);
        REALN_REQUIRE(cu_seqlens[0] == 0, "cu_seqlens[0] must be 0 (got ", cu_seqlens[0], ")");
        for (int64_t i = 0; i < nseq; ++i)
            REALN_REQUIRE(cu_seqlens[i + 1] >= cu_seqlens[i], "cu_seqlens must be non-decreasing");
        REALN_NOT_NULL(rewards);
        REALN_NOT_NULL(values);
        REALN_NOT_NULL(advantages);
        REALN_NOT_NULL(returns);
        DISPATCH(stream, Op::Gae, REALN_DTYPE_F32, gae)(stream, rewards, values, cu_seqlens, nseq,
                                                        gamma, lambda, advantages, returns);
    });
}

}  // extern "C"
