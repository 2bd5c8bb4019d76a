// Every exported realn_* function: argument validation shared by all backends, then dispatch
// through the stream's backend table. Validation lives here once so a backend never sees a null
// pointer, a negative size or an unknown dtype, and every failure names the argument.
// Handles (version, backends, streams, buffers) are written out; every op is one entry of the op
// table below (REALN_OP): its parameters, its checks and its backend dispatch, in one place.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "backend.hpp"
#include "error.hpp"
#include "options.hpp"

using realn::Backend;
using realn::Op;

namespace {

const Backend* be(realn_stream_t s) {
    REALN_REQUIRE(s != nullptr, "stream must not be NULL");
    REALN_REQUIRE(s->backend != nullptr, "stream is not initialised (destroyed twice?)");
    return s->backend;
}

void check_dtype(int32_t dtype) {
    REALN_REQUIRE(dtype == REALN_DTYPE_F32 || dtype == REALN_DTYPE_BF16 || dtype == REALN_DTYPE_F16,
                  "dtype must be REALN_DTYPE_F32 (0), BF16 (1) or F16 (2) (got ", dtype, ")");
}

// The stream's entry for an op: the stream is checked first, then the dtype, then that the
// backend has the entry and supports (op, dtype).
template <typename Fn>
Fn dispatch(realn_stream_t s, Op op, int32_t dtype, Fn Backend::*member) {
    const Backend* b = be(s);
    check_dtype(dtype);
    Fn fn = b->*member;
    if (fn == nullptr || !b->supports_op(op, dtype)) {
        static const char* dtypes[] = {"f32", "bf16", "f16"};
        realn::fail(REALN_ERR_UNSUPPORTED, "backend '", b->name, "' does not support op ",
                    realn::op_name(op), " with dtype ", dtypes[dtype]);
    }
    return fn;
}

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
#define REALN_OP_NAME(id, name) #name,
        REALN_OP_LIST(REALN_OP_NAME)
#undef REALN_OP_NAME
    };
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
        const Backend* b = realn::backend_get(backend);
        *available = (b != nullptr && b->device_count() > 0) ? 1 : 0;
    });
}

REALN_API realn_status realn_backend_device_count(int32_t backend, int32_t* count) {
    return realn::guard("realn_backend_device_count", [&] {
        REALN_NOT_NULL(count);
        const Backend* b = realn::backend_get(backend);
        *count = b ? b->device_count() : 0;
    });
}

REALN_API realn_status realn_stream_create(int32_t backend, int32_t device, realn_stream_t* out) {
    return realn::guard("realn_stream_create", [&] {
        REALN_NOT_NULL(out);
        *out = nullptr;
        const Backend* b = realn::backend_get(backend);
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
        const Backend* b = be(stream);
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
        const Backend* b = be(stream);
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

}  // extern "C"

// ---- The op table ----------------------------------------------------------------------------
// One entry per op:
//   REALN_OP(export, (parameters), (arguments), Op, dtype, entry) { checks }
// export and parameters are realn.h's (the compiler rejects a definition that differs from the
// header's declaration); arguments are the parameters' names. The checks get the arguments, throw
// realn::Error naming a bad one, and return false when the call has nothing to do (zero rows);
// otherwise the stream's backend entry `entry` runs with the same arguments, once
// supports_op(Op, dtype) holds (dtype: the op's dtype argument, REALN_DTYPE_F32 for fp32-only and
// byte-level ops). REALN_OP_CALL gives the entry other arguments; REALN_OP_RESULT also stores what
// the entry returns through an output parameter.
// Every entry runs under realn::guard, which turns the exception into the status and the message
// "<export>: <detail>".
#define REALN_OP_DEFINE(name, params, args, op, dtype, store, entry, entry_args)                  \
    static bool name##_checks params;                                                           \
    extern "C" REALN_API realn_status name params {                                             \
        return realn::guard(#name, [&] {                                                        \
            if (name##_checks args) store dispatch(stream, Op::op, dtype, &Backend::entry) entry_args; \
        });                                                                                     \
    }                                                                                           \
    static bool name##_checks params
#define REALN_OP(name, params, args, op, dtype, entry) \
    REALN_OP_DEFINE(name, params, args, op, dtype, , entry, args)
#define REALN_OP_CALL(name, params, args, op, dtype, entry, entry_args) \
    REALN_OP_DEFINE(name, params, args, op, dtype, , entry, entry_args)
#define REALN_OP_RESULT(name, params, args, result, op, dtype, entry, entry_args) \
    REALN_OP_DEFINE(name, params, args, op, dtype, result =, entry, entry_args)

// Shared checks.
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

static void check_rotary_shape(const void* x, const int32_t* positions, void* y, int64_t tokens,
                               int64_t heads, int64_t head_dim, int64_t rot_dim) {
    REALN_NON_NEGATIVE(tokens);
    REALN_POSITIVE(heads);
    REALN_POSITIVE(head_dim);
    REALN_REQUIRE(rot_dim > 0 && rot_dim <= head_dim && rot_dim % 2 == 0,
                  "rot_dim must be even and in (0, head_dim=", head_dim, "] (got ", rot_dim, ")");
    if (tokens == 0) return;
    REALN_NOT_NULL(x);
    REALN_NOT_NULL(positions);
    REALN_NOT_NULL(y);
}

static void check_rotary(const void* x, const int32_t* positions, void* y, int64_t tokens,
                         int64_t heads, int64_t head_dim, int64_t rot_dim, float theta) {
    check_rotary_shape(x, positions, y, tokens, heads, head_dim, rot_dim);
    REALN_REQUIRE(theta > 0 && std::isfinite(theta), "theta must be finite and > 0 (got ", theta,
                  ")");
}

static void check_rotary_freqs(const void* x, const int32_t* positions, void* y, int64_t tokens,
                               int64_t heads, int64_t head_dim, int64_t rot_dim,
                               const double* inv_freq) {
    check_rotary_shape(x, positions, y, tokens, heads, head_dim, rot_dim);
    REALN_NOT_NULL(inv_freq);
    for (int64_t i = 0; i < rot_dim / 2; ++i)
        REALN_REQUIRE(inv_freq[i] > 0 && std::isfinite(inv_freq[i]), "inv_freq[", i,
                      "] must be finite and > 0 (got ", inv_freq[i], ")");
}

// The unscaled rotary frequencies theta^(-2i/rot_dim), i < rot_dim/2 (a temporary: it lives
// until the backend entry it is passed to returns).
static std::vector<double> theta_inv_freq(float theta, int64_t rot_dim) {
    std::vector<double> f(static_cast<size_t>(rot_dim / 2));
    for (int64_t i = 0; i < rot_dim / 2; ++i)
        f[i] = std::pow(double(theta), -2.0 * double(i) / double(rot_dim));
    return f;
}

static void check_swiglu_shape(int64_t ld_in, int64_t ld_out, int64_t rows, int64_t cols) {
    REALN_NON_NEGATIVE(rows);
    REALN_POSITIVE(cols);
    REALN_REQUIRE(ld_in >= cols, "ld_in (", ld_in, ") must be >= cols (", cols, ")");
    REALN_REQUIRE(ld_out >= cols, "ld_out (", ld_out, ") must be >= cols (", cols, ")");
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

// labels live in the stream's backend memory: a device backend's are read through a copy to the host.
static void check_labels(realn_stream_t stream, const int32_t* device_or_host_labels, int64_t rows, int64_t vocab,
                         bool allow_ignore, int32_t ignore_index) {
    const int32_t* labels = device_or_host_labels;
    std::vector<int32_t> host;
    if (stream != nullptr && stream->backend->kind != REALN_BACKEND_CPU) {  // (a null stream is refused by dispatch)
        host.resize(static_cast<size_t>(rows));
        stream->backend->copy(stream, host.data(), labels, rows * static_cast<int64_t>(sizeof(int32_t)), REALN_COPY_D2H);
        stream->backend->stream_synchronize(stream);
        labels = host.data();
    }
    for (int64_t r = 0; r < rows; ++r) {
        if (allow_ignore && labels[r] == ignore_index) continue;
        REALN_REQUIRE(labels[r] >= 0 && labels[r] < vocab, "labels[", r, "]=", labels[r],
                      " is outside [0, vocab=", vocab, ")");
    }
}

static void check_temperature(float temperature) {
    REALN_REQUIRE(temperature > 0 && std::isfinite(temperature),
                  "temperature must be finite and > 0 (got ", temperature, ")");
}

// -- memory -------------------------------------------------------------------------------------

REALN_OP(realn_copy, (realn_stream_t stream, void* dst, const void* src, int64_t bytes, int32_t kind),
         (stream, dst, src, bytes, kind), Copy, REALN_DTYPE_F32, copy) {
    REALN_NON_NEGATIVE(bytes);
    REALN_REQUIRE(kind >= REALN_COPY_D2D && kind <= REALN_COPY_D2H,
                  "kind must be 0 (D2D), 1 (H2D) or 2 (D2H) (got ", kind, ")");
    if (bytes == 0) return false;
    REALN_NOT_NULL(dst);
    REALN_NOT_NULL(src);
    return true;
}

REALN_OP(realn_fill_f32, (realn_stream_t stream, float* dst, int64_t n, float value),
         (stream, dst, n, value), Fill, REALN_DTYPE_F32, fill_f32) {
    REALN_NON_NEGATIVE(n);
    if (n == 0) return false;
    REALN_NOT_NULL(dst);
    return true;
}

// -- reallocation primitives --------------------------------------------------------------------

REALN_OP(realn_interval_gather,
         (realn_stream_t stream, void* staging, const void* flat, const int64_t* offsets,
          const int64_t* lengths, int64_t count),
         (stream, staging, flat, offsets, lengths, count), IntervalGather, REALN_DTYPE_F32,
         interval_gather) {
    check_intervals(offsets, lengths, count);
    if (count == 0) return false;
    REALN_NOT_NULL(staging);
    REALN_NOT_NULL(flat);
    return true;
}

REALN_OP(realn_interval_scatter,
         (realn_stream_t stream, void* flat, const void* staging, const int64_t* offsets,
          const int64_t* lengths, int64_t count),
         (stream, flat, staging, offsets, lengths, count), IntervalScatter, REALN_DTYPE_F32,
         interval_scatter) {
    check_intervals(offsets, lengths, count);
    if (count == 0) return false;
    REALN_NOT_NULL(staging);
    REALN_NOT_NULL(flat);
    return true;
}

// Runs on the backend even for zero bytes (the hash of nothing is the seed).
REALN_OP_RESULT(realn_hash_bytes, (realn_stream_t stream, const void* data, int64_t bytes, uint64_t* out),
                (stream, data, bytes, out), *out, HashBytes, REALN_DTYPE_F32, hash_bytes,
                (stream, data, bytes)) {
    REALN_NOT_NULL(out);
    REALN_NON_NEGATIVE(bytes);
    if (bytes > 0) REALN_NOT_NULL(data);
    return true;
}

// -- dense linear algebra -----------------------------------------------------------------------

REALN_OP(realn_op_gemm,
         (realn_stream_t stream, int32_t dtype, int32_t trans_a, int32_t trans_b, int64_t m, int64_t n,
          int64_t k, float alpha, const void* a, int64_t lda, int64_t stride_a, const void* b,
          int64_t ldb, int64_t stride_b, float beta, void* c, int64_t ldc, int64_t stride_c,
          int64_t batch),
         (stream, dtype, trans_a, trans_b, m, n, k, alpha, a, lda, stride_a, b, ldb, stride_b, beta, c,
          ldc, stride_c, batch),
         Gemm, dtype, gemm) {
    REALN_REQUIRE(trans_a == 0 || trans_a == 1, "trans_a must be 0 or 1 (got ", trans_a, ")");
    REALN_REQUIRE(trans_b == 0 || trans_b == 1, "trans_b must be 0 or 1 (got ", trans_b, ")");
    REALN_NON_NEGATIVE(m);
    REALN_NON_NEGATIVE(n);
    REALN_NON_NEGATIVE(k);
    REALN_NON_NEGATIVE(batch);
    if (m == 0 || n == 0 || batch == 0) return false;
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
    return true;
}

REALN_OP(realn_op_linear_fwd,
         (realn_stream_t stream, int32_t dtype, const void* x, const void* w, const void* bias, void* y,
          int64_t rows, int64_t in_features, int64_t out_features),
         (stream, dtype, x, w, bias, y, rows, in_features, out_features), LinearFwd, dtype, linear_fwd) {
    REALN_NON_NEGATIVE(rows);
    REALN_POSITIVE(in_features);
    REALN_POSITIVE(out_features);
    if (rows == 0) return false;
    REALN_NOT_NULL(x);
    REALN_NOT_NULL(w);
    REALN_NOT_NULL(y);
    return true;
}

REALN_OP(realn_op_linear_bwd,
         (realn_stream_t stream, int32_t dtype, const void* x, const void* w, const void* dy, void* dx,
          void* dw, void* dbias, int64_t rows, int64_t in_features, int64_t out_features,
          int32_t flags),
         (stream, dtype, x, w, dy, dx, dw, dbias, rows, in_features, out_features, flags), LinearBwd,
         dtype, linear_bwd) {
    REALN_NON_NEGATIVE(rows);
    REALN_POSITIVE(in_features);
    REALN_POSITIVE(out_features);
    REALN_REQUIRE((flags & ~REALN_ACCUMULATE_DX) == 0, "unknown flags ", flags);
    if (rows == 0) return false;
    REALN_NOT_NULL(dy);
    if (dx) REALN_REQUIRE(w != nullptr, "w must not be NULL when dx is requested");
    if (dw) REALN_REQUIRE(x != nullptr, "x must not be NULL when dw is requested");
    return true;
}

// -- elementwise --------------------------------------------------------------------------------

REALN_OP(realn_op_axpby,
         (realn_stream_t stream, int32_t dtype, int64_t n, float alpha, const void* x, float beta, void* y),
         (stream, dtype, n, alpha, x, beta, y), Axpby, dtype, axpby) {
    REALN_NON_NEGATIVE(n);
    if (n == 0) return false;
    REALN_NOT_NULL(x);
    REALN_NOT_NULL(y);
    return true;
}

REALN_OP(realn_op_add,
         (realn_stream_t stream, int32_t dtype, int64_t n, const void* a, const void* b, void* out),
         (stream, dtype, n, a, b, out), Add, dtype, add) {
    REALN_NON_NEGATIVE(n);
    if (n == 0) return false;
    REALN_NOT_NULL(a);
    REALN_NOT_NULL(b);
    REALN_NOT_NULL(out);
    return true;
}

REALN_OP_RESULT(realn_op_sumsq, (realn_stream_t stream, const float* x, int64_t n, double* out),
                (stream, x, n, out), *out, Sumsq, REALN_DTYPE_F32, sumsq, (stream, x, n)) {
    REALN_NOT_NULL(out);
    REALN_NON_NEGATIVE(n);
    *out = 0.0;
    if (n == 0) return false;
    REALN_NOT_NULL(x);
    return true;
}

REALN_OP(realn_op_scale, (realn_stream_t stream, float* x, int64_t n, float alpha), (stream, x, n, alpha),
         Scale, REALN_DTYPE_F32, scale) {
    REALN_NON_NEGATIVE(n);
    if (n == 0) return false;
    REALN_NOT_NULL(x);
    return true;
}

REALN_OP_RESULT(realn_op_count_nonfinite, (realn_stream_t stream, const float* x, int64_t n, int64_t* out),
                (stream, x, n, out), *out, CountNonfinite, REALN_DTYPE_F32, count_nonfinite,
                (stream, x, n)) {
    REALN_NOT_NULL(out);
    REALN_NON_NEGATIVE(n);
    *out = 0;
    if (n == 0) return false;
    REALN_NOT_NULL(x);
    return true;
}

// Dispatched on the source dtype; the destination dtype is checked here.
REALN_OP(realn_op_convert,
         (realn_stream_t stream, int32_t dst_dtype, void* dst, int32_t src_dtype, const void* src, int64_t n),
         (stream, dst_dtype, dst, src_dtype, src, n), Convert, src_dtype, convert) {
    check_dtype(dst_dtype);
    REALN_NON_NEGATIVE(n);
    if (n == 0) return false;
    REALN_NOT_NULL(dst);
    REALN_NOT_NULL(src);
    return true;
}

// -- transformer layers -------------------------------------------------------------------------

REALN_OP(realn_op_embedding_fwd,
         (realn_stream_t stream, int32_t dtype, const int32_t* ids, int64_t n, const void* table,
          int64_t vocab, int64_t hidden, int64_t vocab_start, void* out),
         (stream, dtype, ids, n, table, vocab, hidden, vocab_start, out), EmbeddingFwd, dtype,
         embedding_fwd) {
    REALN_NON_NEGATIVE(n);
    REALN_POSITIVE(vocab);
    REALN_POSITIVE(hidden);
    REALN_NON_NEGATIVE(vocab_start);
    if (n == 0) return false;
    REALN_NOT_NULL(ids);
    REALN_NOT_NULL(table);
    REALN_NOT_NULL(out);
    return true;
}

REALN_OP(realn_op_embedding_bwd,
         (realn_stream_t stream, int32_t dtype, const int32_t* ids, int64_t n, const void* dout,
          int64_t vocab, int64_t hidden, int64_t vocab_start, void* dtable),
         (stream, dtype, ids, n, dout, vocab, hidden, vocab_start, dtable), EmbeddingBwd, dtype,
         embedding_bwd) {
    REALN_NON_NEGATIVE(n);
    REALN_POSITIVE(vocab);
    REALN_POSITIVE(hidden);
    REALN_NON_NEGATIVE(vocab_start);
    if (n == 0) return false;
    REALN_NOT_NULL(ids);
    REALN_NOT_NULL(dout);
    REALN_NOT_NULL(dtable);
    return true;
}

REALN_OP(realn_op_rmsnorm_fwd,
         (realn_stream_t stream, int32_t dtype, const void* x, const void* w, void* y, float* rstd,
          int64_t rows, int64_t dim, float eps),
         (stream, dtype, x, w, y, rstd, rows, dim, eps), RmsnormFwd, dtype, rmsnorm_fwd) {
    REALN_NON_NEGATIVE(rows);
    REALN_POSITIVE(dim);
    REALN_REQUIRE(eps >= 0 && std::isfinite(eps), "eps must be finite and >= 0 (got ", eps, ")");
    if (rows == 0) return false;
    REALN_NOT_NULL(x);
    REALN_NOT_NULL(w);
    REALN_NOT_NULL(y);
    return true;
}

REALN_OP(realn_op_rmsnorm_bwd,
         (realn_stream_t stream, int32_t dtype, const void* x, const void* w, const float* rstd,
          const void* dy, void* dx, void* dw, int64_t rows, int64_t dim),
         (stream, dtype, x, w, rstd, dy, dx, dw, rows, dim), RmsnormBwd, dtype, rmsnorm_bwd) {
    REALN_NON_NEGATIVE(rows);
    REALN_POSITIVE(dim);
    if (rows == 0) return false;
    REALN_NOT_NULL(x);
    REALN_NOT_NULL(w);
    REALN_NOT_NULL(rstd);
    REALN_NOT_NULL(dy);
    REALN_NOT_NULL(dx);
    REALN_NOT_NULL(dw);
    return true;
}

// Forward and backward share the backend's rotary entry (the backward rotates by -angle); the
// theta form passes the unscaled frequency table, the freqs form the caller's (same Ops: one
// backend entry serves both).
REALN_OP_CALL(realn_op_rotary_fwd,
         (realn_stream_t stream, int32_t dtype, const void* x, const int32_t* positions, void* y,
          int64_t tokens, int64_t heads, int64_t head_dim, int64_t rot_dim, float theta),
         (stream, dtype, x, positions, y, tokens, heads, head_dim, rot_dim, theta), RotaryFwd, dtype,
         rotary, (stream, dtype, x, positions, y, tokens, heads, head_dim, rot_dim,
                  theta_inv_freq(theta, rot_dim).data(), false)) {
    check_rotary(x, positions, y, tokens, heads, head_dim, rot_dim, theta);
    return tokens > 0;
}

REALN_OP_CALL(realn_op_rotary_bwd,
         (realn_stream_t stream, int32_t dtype, const void* dy, const int32_t* positions, void* dx,
          int64_t tokens, int64_t heads, int64_t head_dim, int64_t rot_dim, float theta),
         (stream, dtype, dy, positions, dx, tokens, heads, head_dim, rot_dim, theta), RotaryBwd, dtype,
         rotary, (stream, dtype, dy, positions, dx, tokens, heads, head_dim, rot_dim,
                  theta_inv_freq(theta, rot_dim).data(), true)) {
    check_rotary(dy, positions, dx, tokens, heads, head_dim, rot_dim, theta);
    return tokens > 0;
}

REALN_OP_CALL(realn_op_rotary_freqs_fwd,
         (realn_stream_t stream, int32_t dtype, const void* x, const int32_t* positions, void* y,
          int64_t tokens, int64_t heads, int64_t head_dim, int64_t rot_dim, const double* inv_freq),
         (stream, dtype, x, positions, y, tokens, heads, head_dim, rot_dim, inv_freq), RotaryFwd, dtype,
         rotary, (stream, dtype, x, positions, y, tokens, heads, head_dim, rot_dim, inv_freq, false)) {
    check_rotary_freqs(x, positions, y, tokens, heads, head_dim, rot_dim, inv_freq);
    return tokens > 0;
}

REALN_OP_CALL(realn_op_rotary_freqs_bwd,
         (realn_stream_t stream, int32_t dtype, const void* dy, const int32_t* positions, void* dx,
          int64_t tokens, int64_t heads, int64_t head_dim, int64_t rot_dim, const double* inv_freq),
         (stream, dtype, dy, positions, dx, tokens, heads, head_dim, rot_dim, inv_freq), RotaryBwd, dtype,
         rotary, (stream, dtype, dy, positions, dx, tokens, heads, head_dim, rot_dim, inv_freq, true)) {
    check_rotary_freqs(dy, positions, dx, tokens, heads, head_dim, rot_dim, inv_freq);
    return tokens > 0;
}

REALN_OP(realn_op_swiglu_fwd,
         (realn_stream_t stream, int32_t dtype, const void* gate, const void* up, int64_t ld_in, void* out,
          int64_t ld_out, int64_t rows, int64_t cols),
         (stream, dtype, gate, up, ld_in, out, ld_out, rows, cols), SwigluFwd, dtype, swiglu_fwd) {
    check_swiglu_shape(ld_in, ld_out, rows, cols);
    if (rows == 0) return false;
    REALN_NOT_NULL(gate);
    REALN_NOT_NULL(up);
    REALN_NOT_NULL(out);
    return true;
}

REALN_OP(realn_op_swiglu_bwd,
         (realn_stream_t stream, int32_t dtype, const void* gate, const void* up, int64_t ld_in,
          const void* dout, int64_t ld_out, void* dgate, void* dup, int64_t rows, int64_t cols),
         (stream, dtype, gate, up, ld_in, dout, ld_out, dgate, dup, rows, cols), SwigluBwd, dtype,
         swiglu_bwd) {
    check_swiglu_shape(ld_in, ld_out, rows, cols);
    if (rows == 0) return false;
    REALN_NOT_NULL(gate);
    REALN_NOT_NULL(up);
    REALN_NOT_NULL(dout);
    REALN_NOT_NULL(dgate);
    REALN_NOT_NULL(dup);
    return true;
}

REALN_OP(realn_op_attention_fwd,
         (realn_stream_t stream, int32_t dtype, const void* q, const void* k, const void* v,
          const int32_t* cu_seqlens, int64_t nseq, int64_t total_tokens, int64_t hq, int64_t hkv,
          int64_t head_dim, float scale, void* out, float* lse),
         (stream, dtype, q, k, v, cu_seqlens, nseq, total_tokens, hq, hkv, head_dim, scale, out, lse),
         AttentionFwd, dtype, attention_fwd) {
    check_attention_shape(cu_seqlens, nseq, total_tokens, hq, hkv, head_dim, scale);
    if (total_tokens == 0) return false;
    REALN_NOT_NULL(q);
    REALN_NOT_NULL(k);
    REALN_NOT_NULL(v);
    REALN_NOT_NULL(out);
    return true;
}

REALN_OP(realn_op_attention_bwd,
         (realn_stream_t stream, int32_t dtype, const void* q, const void* k, const void* v,
          const void* out, const float* lse, const void* dout, const int32_t* cu_seqlens, int64_t nseq,
          int64_t total_tokens, int64_t hq, int64_t hkv, int64_t head_dim, float scale, void* dq,
          void* dk, void* dv),
         (stream, dtype, q, k, v, out, lse, dout, cu_seqlens, nseq, total_tokens, hq, hkv, head_dim,
          scale, dq, dk, dv),
         AttentionBwd, dtype, attention_bwd) {
    check_attention_shape(cu_seqlens, nseq, total_tokens, hq, hkv, head_dim, scale);
    if (total_tokens == 0) return false;
    REALN_NOT_NULL(q);
    REALN_NOT_NULL(k);
    REALN_NOT_NULL(v);
    REALN_NOT_NULL(out);
    REALN_NOT_NULL(lse);
    REALN_NOT_NULL(dout);
    REALN_NOT_NULL(dq);
    REALN_NOT_NULL(dk);
    REALN_NOT_NULL(dv);
    return true;
}

REALN_OP(realn_op_kv_store,
         (realn_stream_t stream, int32_t dtype, const void* k, const void* v, const int32_t* slots,
          const int32_t* positions, int64_t tokens, void* kcache, void* vcache, int64_t num_slots,
          int64_t max_len, int64_t hkv, int64_t head_dim),
         (stream, dtype, k, v, slots, positions, tokens, kcache, vcache, num_slots, max_len, hkv,
          head_dim),
         KvStore, dtype, kv_store) {
    REALN_NON_NEGATIVE(tokens);
    REALN_POSITIVE(num_slots);
    REALN_POSITIVE(max_len);
    REALN_POSITIVE(hkv);
    REALN_POSITIVE(head_dim);
    if (tokens == 0) return false;
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
    return true;
}

REALN_OP(realn_op_attention_decode,
         (realn_stream_t stream, int32_t dtype, const void* q, const void* kcache, const void* vcache,
          const int32_t* slots, const int32_t* lens, int64_t batch, int64_t num_slots, int64_t max_len,
          int64_t hq, int64_t hkv, int64_t head_dim, float scale, void* out),
         (stream, dtype, q, kcache, vcache, slots, lens, batch, num_slots, max_len, hq, hkv, head_dim,
          scale, out),
         AttentionDecode, dtype, attention_decode) {
    REALN_NON_NEGATIVE(batch);
    REALN_POSITIVE(num_slots);
    REALN_POSITIVE(max_len);
    REALN_POSITIVE(hq);
    REALN_POSITIVE(hkv);
    REALN_POSITIVE(head_dim);
    REALN_REQUIRE(hq % hkv == 0, "hq (", hq, ") must be a multiple of hkv (", hkv, ")");
    REALN_REQUIRE(std::isfinite(scale) && scale > 0, "scale must be finite and > 0");
    if (batch == 0) return false;
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
    return true;
}

// -- log-probabilities and losses ---------------------------------------------------------------

REALN_OP(realn_op_logprobs_fwd,
         (realn_stream_t stream, int32_t dtype, const void* logits, const int32_t* labels,
          const uint8_t* mask, int64_t rows, int64_t vocab, float temperature, float* logp,
          float* entropy, float* lse),
         (stream, dtype, logits, labels, mask, rows, vocab, temperature, logp, entropy, lse),
         LogprobsFwd, dtype, logprobs_fwd) {
    REALN_NON_NEGATIVE(rows);
    REALN_POSITIVE(vocab);
    check_temperature(temperature);
    if (rows == 0) return false;
    REALN_NOT_NULL(logits);
    REALN_NOT_NULL(labels);
    REALN_NOT_NULL(logp);
    REALN_NOT_NULL(lse);
    check_labels(stream, labels, rows, vocab, false, 0);
    return true;
}

REALN_OP(realn_op_logprobs_bwd,
         (realn_stream_t stream, int32_t dtype, const void* logits, const int32_t* labels,
          const uint8_t* mask, int64_t rows, int64_t vocab, float temperature, const float* lse,
          const float* dlogp, const float* dentropy, void* dlogits),
         (stream, dtype, logits, labels, mask, rows, vocab, temperature, lse, dlogp, dentropy, dlogits),
         LogprobsBwd, dtype, logprobs_bwd) {
    REALN_NON_NEGATIVE(rows);
    REALN_POSITIVE(vocab);
    check_temperature(temperature);
    if (rows == 0) return false;
    REALN_NOT_NULL(logits);
    REALN_NOT_NULL(labels);
    REALN_NOT_NULL(lse);
    REALN_NOT_NULL(dlogp);
    REALN_NOT_NULL(dlogits);
    check_labels(stream, labels, rows, vocab, false, 0);
    return true;
}

REALN_OP_RESULT(realn_op_cross_entropy_fwd,
                (realn_stream_t stream, int32_t dtype, const void* logits, const int32_t* labels,
                 int64_t rows, int64_t vocab, int32_t ignore_index, float* loss, float* lse,
                 double* mean_loss),
                (stream, dtype, logits, labels, rows, vocab, ignore_index, loss, lse, mean_loss),
                *mean_loss, CrossEntropyFwd, dtype, cross_entropy_fwd,
                (stream, dtype, logits, labels, rows, vocab, ignore_index, loss, lse)) {
    REALN_NON_NEGATIVE(rows);
    REALN_POSITIVE(vocab);
    REALN_NOT_NULL(mean_loss);
    *mean_loss = 0.0;
    if (rows == 0) return false;
    REALN_NOT_NULL(logits);
    REALN_NOT_NULL(labels);
    REALN_NOT_NULL(loss);
    REALN_NOT_NULL(lse);
    check_labels(stream, labels, rows, vocab, true, ignore_index);
    return true;
}

REALN_OP(realn_op_cross_entropy_bwd,
         (realn_stream_t stream, int32_t dtype, const void* logits, const int32_t* labels, int64_t rows,
          int64_t vocab, int32_t ignore_index, const float* lse, float grad_scale, void* dlogits),
         (stream, dtype, logits, labels, rows, vocab, ignore_index, lse, grad_scale, dlogits),
         CrossEntropyBwd, dtype, cross_entropy_bwd) {
    REALN_NON_NEGATIVE(rows);
    REALN_POSITIVE(vocab);
    if (rows == 0) return false;
    REALN_NOT_NULL(logits);
    REALN_NOT_NULL(labels);
    REALN_NOT_NULL(lse);
    REALN_NOT_NULL(dlogits);
    check_labels(stream, labels, rows, vocab, true, ignore_index);
    return true;
}

// -- optimizer, sampling, RL --------------------------------------------------------------------

// Option structs: every released layout (options.hpp). Append a version here when a field is
// appended to the struct in realn.h (with the next version number in its INIT macro).
static const realn::OptsVersions<realn_adamw_opts, 1> kAdamwOptsVersions = {
    "realn_adamw_opts", "REALN_ADAMW_OPTS_INIT", {40}, REALN_ADAMW_OPTS_INIT};
static const realn::OptsVersions<realn_sample_opts, 1> kSampleOptsVersions = {
    "realn_sample_opts", "REALN_SAMPLE_OPTS_INIT", {40}, REALN_SAMPLE_OPTS_INIT};
static_assert(sizeof(realn_adamw_opts) == 40 && sizeof(realn_sample_opts) == 40,
              "an option struct changed size: append its new version to k*OptsVersions");

static realn::OptsInForce<realn_adamw_opts> adamw_opts_in_force(const realn_adamw_opts* given) {
    return {realn::read_opts(given, kAdamwOptsVersions)};
}
static realn::OptsInForce<realn_sample_opts> sample_opts_in_force(const realn_sample_opts* given) {
    return {realn::read_opts(given, kSampleOptsVersions)};
}

REALN_OP_CALL(realn_op_adamw,
         (realn_stream_t stream, const realn_adamw_opts* opts, float* param, const float* grad, float* m,
          float* v, int64_t n),
         (stream, opts, param, grad, m, v, n), Adamw, REALN_DTYPE_F32, adamw,
         (stream, adamw_opts_in_force(opts).get(), param, grad, m, v, n)) {
    REALN_NOT_NULL(opts);
    const realn_adamw_opts o = adamw_opts_in_force(opts).value;
    REALN_REQUIRE(o.step >= 1, "opts->step must be >= 1 (got ", o.step, ")");
    REALN_REQUIRE(o.beta1 >= 0 && o.beta1 < 1, "opts->beta1 must be in [0, 1) (got ", o.beta1, ")");
    REALN_REQUIRE(o.beta2 >= 0 && o.beta2 < 1, "opts->beta2 must be in [0, 1) (got ", o.beta2, ")");
    REALN_REQUIRE(o.eps > 0, "opts->eps must be > 0 (got ", o.eps, ")");
    REALN_REQUIRE(std::isfinite(o.lr) && o.lr >= 0, "opts->lr must be finite and >= 0");
    REALN_REQUIRE(std::isfinite(o.grad_scale), "opts->grad_scale must be finite");
    REALN_NON_NEGATIVE(n);
    if (n == 0) return false;
    REALN_NOT_NULL(param);
    REALN_NOT_NULL(grad);
    REALN_NOT_NULL(m);
    REALN_NOT_NULL(v);
    return true;
}

REALN_OP_CALL(realn_op_sample,
         (realn_stream_t stream, int32_t dtype, const void* logits, int64_t rows, int64_t vocab,
          const realn_sample_opts* opts, int32_t* tokens, uint8_t* mask_out, float* logp_out),
         (stream, dtype, logits, rows, vocab, opts, tokens, mask_out, logp_out), Sample, dtype, sample,
         (stream, dtype, logits, rows, vocab, sample_opts_in_force(opts).get(), tokens, mask_out, logp_out)) {
    REALN_NOT_NULL(opts);
    const realn_sample_opts o = sample_opts_in_force(opts).value;
    REALN_REQUIRE(o.temperature >= 0 && std::isfinite(o.temperature),
                  "opts->temperature must be finite and >= 0 (got ", o.temperature, ")");
    REALN_REQUIRE(o.top_k >= 0, "opts->top_k must be >= 0 (got ", o.top_k, ")");
    REALN_REQUIRE(o.top_p > 0 && o.top_p <= 1, "opts->top_p must be in (0, 1] (got ", o.top_p, ")");
    REALN_NON_NEGATIVE(rows);
    REALN_POSITIVE(vocab);
    if (rows == 0) return false;
    REALN_NOT_NULL(logits);
    REALN_NOT_NULL(tokens);
    return true;
}

REALN_OP(realn_op_gae,
         (realn_stream_t stream, const float* rewards, const float* values, const int32_t* cu_seqlens,
          int64_t nseq, float gamma, float lambda, float* advantages, float* returns),
         (stream, rewards, values, cu_seqlens, nseq, gamma, lambda, advantages, returns), Gae,
         REALN_DTYPE_F32, gae) {
    REALN_NON_NEGATIVE(nseq);
    REALN_REQUIRE(gamma >= 0 && gamma <= 1, "gamma must be in [0, 1] (got ", gamma, ")");
    REALN_REQUIRE(lambda >= 0 && lambda <= 1, "lambda must be in [0, 1] (got ", lambda, ")");
    if (nseq == 0) return false;
    REALN_NOT_NULL(cu_seqlens);
    REALN_REQUIRE(cu_seqlens[0] == 0, "cu_seqlens[0] must be 0 (got ", cu_seqlens[0], ")");
    for (int64_t i = 0; i < nseq; ++i)
        REALN_REQUIRE(cu_seqlens[i + 1] >= cu_seqlens[i], "cu_seqlens must be non-decreasing");
    REALN_NOT_NULL(rewards);
    REALN_NOT_NULL(values);
    REALN_NOT_NULL(advantages);
    REALN_NOT_NULL(returns);
    return true;
}
