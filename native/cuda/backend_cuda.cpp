// The CUDA backend's table (core/backend.hpp): device memory, streams and the ops implemented so
// far, on the driver API loaded at run time (driver.hpp) and PTX built from native/cuda/kernels
// (embedded by CMake, JIT-compiled by the driver for the GPU at first use: PTX 7.5 loads on
// drivers since CUDA 11.5 and runs on sm_80 / sm_90).
//
// STATUS: compiled on every build; every op case passes on an NVIDIA H200 (tools/gpu-check.sh,
// docs/performance.md); the engine does not run on it yet.
// Implemented: memory, copies, fill, interval gather/scatter, hash, GEMM / linear (fp32, and bf16
// operands with fp32 accumulation, through cuBLAS), axpby, add, scale, sumsq, count_nonfinite,
// convert (f32, bf16, f16: every pair), embedding and RMSNorm (fp32, or a bf16 table / weight), rotary, SwiGLU, attention fwd/bwd (fp32, head_dim
// <= 128), KV store and decode attention (fp32 or bf16 cache, head_dim <= 256), log-probs /
// entropy, cross-entropy, sampling (on the host: the CPU sampler), AdamW, GAE.
// Host-side metadata (cu_seqlens, slots, positions, lens, interval lists) is read from host memory
// as on the CPU backend; labels and masks are device memory.
#include <cmath>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "../src/core/backend.hpp"
#include "../src/core/error.hpp"
#include "../src/cpu/cpu_ops.hpp"
#include "driver.hpp"
#include "host_plans.hpp"

namespace realn::cuda {

struct PtxBlob {
    const char* name;
    const char* ptx;
};
extern const PtxBlob kPtx[];
extern const int kPtxCount;

namespace {

struct Device {
    CUcontext ctx = nullptr;
    std::vector<CUmodule> modules;
    std::unordered_map<std::string, CUfunction> functions;
    std::mutex mu;
};

Device& device(int32_t d) {
    static std::mutex mu;
    static std::map<int32_t, std::unique_ptr<Device>> devices;
    std::lock_guard<std::mutex> lock(mu);
    auto& slot = devices[d];
    if (!slot) {
        const Driver& drv = driver();
        auto dev = std::make_unique<Device>();
        CUdevice h = 0;
        check(drv.cuDeviceGet(&h, d), "cuDeviceGet");
        check(drv.cuDevicePrimaryCtxRetain(&dev->ctx, h), "cuDevicePrimaryCtxRetain");
        check(drv.cuCtxSetCurrent(dev->ctx), "cuCtxSetCurrent");
        for (int i = 0; i < kPtxCount; ++i) {
            char log[4096] = {0};
            int opts[] = {CU_JIT_ERROR_LOG_BUFFER, CU_JIT_ERROR_LOG_BUFFER_SIZE_BYTES};
            void* vals[] = {log, reinterpret_cast<void*>(static_cast<uintptr_t>(sizeof log))};
            CUmodule m = nullptr;
            CUresult r = drv.cuModuleLoadDataEx(&m, kPtx[i].ptx, 2, opts, vals);
            if (r != CUDA_SUCCESS)
                fail(REALN_ERR_BACKEND, "loading the PTX of ", kPtx[i].name, " failed (", r, "): ", log);
            dev->modules.push_back(m);
        }
        slot = std::move(dev);
    }
    return *slot;
}

CUstream native(realn_stream_t s) { return static_cast<CUstream>(s->native); }

// Makes the stream's device current on this thread (ops may come from any thread).
void bind(realn_stream_t s) { check(driver().cuCtxSetCurrent(device(s->device).ctx), "cuCtxSetCurrent"); }

CUfunction function(realn_stream_t s, const char* name) {
    Device& d = device(s->device);
    std::lock_guard<std::mutex> lock(d.mu);
    auto it = d.functions.find(name);
    if (it != d.functions.end()) return it->second;
    for (CUmodule m : d.modules) {
        CUfunction f = nullptr;
        if (driver().cuModuleGetFunction(&f, m, name) == CUDA_SUCCESS) return d.functions[name] = f;
    }
    fail(REALN_ERR_INTERNAL, "kernel ", name, " is not in the embedded PTX");
}

constexpr unsigned kBlock = 256;
constexpr unsigned kReduceBlocks = 256;

unsigned grid_for(int64_t n) {
    int64_t g = (n + kBlock - 1) / kBlock;
    return static_cast<unsigned>(std::max<int64_t>(1, std::min<int64_t>(g, int64_t(1) << 20)));
}

template <typename... A>
void launch(realn_stream_t s, const char* name, unsigned grid, unsigned block, A... args) {
    bind(s);
    void* params[] = {static_cast<void*>(&args)...};
    check(driver().cuLaunchKernel(function(s, name), grid, 1, 1, block, 1, 1, 0, native(s), params, nullptr), name);
}

template <typename... A>
void launch2(realn_stream_t s, const char* name, unsigned grid_x, unsigned grid_y, unsigned block, A... args) {
    bind(s);
    void* params[] = {static_cast<void*>(&args)...};
    check(driver().cuLaunchKernel(function(s, name), grid_x, grid_y, 1, block, 1, 1, 0, native(s), params, nullptr), name);
}

// A 2-D grid with `smem` bytes of dynamic shared memory; above 48 KiB the kernel is opted in once
// per device (CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES).
template <typename... A>
void launch2_smem(realn_stream_t s, const char* name, unsigned grid_x, unsigned grid_y, unsigned block, int64_t smem,
                  A... args) {
    bind(s);
    CUfunction f = function(s, name);
    if (smem > 48 * 1024) {
        static std::mutex mu;
        static std::map<CUfunction, int64_t> opted;
        std::lock_guard<std::mutex> lock(mu);
        if (opted[f] < smem) {
            check(driver().cuFuncSetAttribute(f, CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, static_cast<int>(smem)),
                  "cuFuncSetAttribute (dynamic shared memory)");
            opted[f] = smem;
        }
    }
    void* params[] = {static_cast<void*>(&args)...};
    check(driver().cuLaunchKernel(f, grid_x, grid_y, 1, block, 1, 1, static_cast<unsigned>(smem), native(s), params, nullptr), name);
}

CUdeviceptr dp(const void* p) { return reinterpret_cast<CUdeviceptr>(p); }

// Device scratch freed when it goes out of scope (after the stream has consumed it: callers synchronise).
struct Scratch {
    CUdeviceptr ptr = 0;
    explicit Scratch(int64_t bytes) { check(driver().cuMemAlloc(&ptr, static_cast<size_t>(std::max<int64_t>(bytes, 8))), "cuMemAlloc"); }
    ~Scratch() { if (ptr) driver().cuMemFree(ptr); }
    template <typename T>
    T* as() const { return reinterpret_cast<T*>(ptr); }
};

void sync(realn_stream_t s) {
    bind(s);
    check(driver().cuStreamSynchronize(native(s)), "cuStreamSynchronize");
}

// Host metadata (slots, lens, tile lists) copied to device scratch; the caller synchronises before
// the scratch goes out of scope.
template <typename T>
std::unique_ptr<Scratch> upload(realn_stream_t s, const std::vector<T>& host) {
    const int64_t bytes = static_cast<int64_t>(host.size() * sizeof(T));
    auto dev = std::make_unique<Scratch>(bytes);
    if (bytes > 0) {
        bind(s);
        check(driver().cuMemcpyHtoDAsync(dev->ptr, host.data(), static_cast<size_t>(bytes), native(s)), "cuMemcpyHtoDAsync");
    }
    return dev;
}

// ---- streams and memory ------------------------------------------------------------------------

int32_t device_count() { return driver().devices; }

void* stream_create(int32_t d) {
    const Driver& drv = driver();
    if (drv.devices == 0) fail(REALN_ERR_UNSUPPORTED, "cuda backend: ", drv.unavailable);
    check(drv.cuCtxSetCurrent(device(d).ctx), "cuCtxSetCurrent");
    CUstream st = nullptr;
    check(drv.cuStreamCreate(&st, CU_STREAM_NON_BLOCKING), "cuStreamCreate");
    return st;
}

std::mutex g_blas_mu;
std::map<CUstream, cublasHandle_t> g_blas;

// Per stream: a device buffer for an op's host metadata (interval lists) that lives as long as the
// stream and only grows, so a call costs one H2D copy, not an allocation, a copy and a free that
// waits for the device. Stream order makes reuse safe: the next op's copy into it runs after the
// last kernel that read it. Growing synchronises the stream before the old buffer is freed.
struct MetaBuffer {
    CUdeviceptr ptr = 0;
    size_t bytes = 0;
};
std::mutex g_meta_mu;
std::map<CUstream, MetaBuffer> g_meta;

void stream_destroy(void* p) {
    auto st = static_cast<CUstream>(p);
    {
        std::lock_guard<std::mutex> lock(g_blas_mu);
        auto it = g_blas.find(st);
        if (it != g_blas.end()) {
            driver().cublasDestroy(it->second);
            g_blas.erase(it);
        }
    }
    {
        std::lock_guard<std::mutex> lock(g_meta_mu);
        auto it = g_meta.find(st);
        if (it != g_meta.end()) {
            if (st) driver().cuStreamSynchronize(st);
            if (it->second.ptr) driver().cuMemFree(it->second.ptr);
            g_meta.erase(it);
        }
    }
    if (st) driver().cuStreamDestroy(st);
}

void* alloc(realn_stream_t s, int64_t bytes) {
    bind(s);
    CUdeviceptr p = 0;
    CUresult r = driver().cuMemAlloc(&p, static_cast<size_t>(std::max<int64_t>(bytes, 256)));
    if (r != CUDA_SUCCESS) fail(REALN_ERR_OUT_OF_MEMORY, "cannot allocate ", bytes, " bytes of device memory (CUDA error ", r, ")");
    return reinterpret_cast<void*>(p);
}

void free_(realn_stream_t s, void* p) {
    bind(s);
    driver().cuMemFree(dp(p));
}

void copy(realn_stream_t s, void* dst, const void* src, int64_t bytes, int32_t kind) {
    bind(s);
    const Driver& drv = driver();
    const auto n = static_cast<size_t>(bytes);
    switch (kind) {
        case REALN_COPY_H2D: check(drv.cuMemcpyHtoDAsync(dp(dst), src, n, native(s)), "cuMemcpyHtoDAsync"); break;
        case REALN_COPY_D2H: check(drv.cuMemcpyDtoHAsync(dst, dp(src), n, native(s)), "cuMemcpyDtoHAsync"); break;
        default: check(drv.cuMemcpyDtoDAsync(dp(dst), dp(src), n, native(s)), "cuMemcpyDtoDAsync"); break;
    }
}

void fill_f32(realn_stream_t s, float* dst, int64_t n, float v) { launch(s, "realn_fill_f32", grid_for(n), kBlock, dst, n, v); }

// Few intervals: one DMA copy each (full bandwidth for large ones). Many: one kernel launch, a warp
// per piece of at most 16 KiB (per-call overhead of thousands of small copies would dominate).
constexpr int64_t kDmaIntervals = 64;

void intervals(realn_stream_t s, bool gather, void* flat, void* staging, const int64_t* off, const int64_t* len, int64_t count) {
    bind(s);
    if (count <= kDmaIntervals) {
        int64_t at = 0;
        for (int64_t i = 0; i < count; ++i) {
            if (len[i] > 0) {
                CUdeviceptr f = dp(flat) + off[i], st = dp(staging) + at;
                check(driver().cuMemcpyDtoDAsync(gather ? st : f, gather ? f : st, static_cast<size_t>(len[i]), native(s)),
                      "cuMemcpyDtoDAsync");
            }
            at += len[i];
        }
        return;
    }
    const std::vector<int64_t> meta = interval_pieces(off, len, count);
    const int64_t pieces = static_cast<int64_t>(meta.size() / 3);
    if (pieces == 0) return;
    const size_t bytes = meta.size() * sizeof(int64_t);
    CUdeviceptr buf = 0;
    {
        std::lock_guard<std::mutex> lock(g_meta_mu);
        MetaBuffer& mb = g_meta[native(s)];
        if (mb.bytes < bytes) {
            if (mb.ptr) {
                sync(s);  // a kernel enqueued earlier may still read the old lists
                driver().cuMemFree(mb.ptr);
                mb = MetaBuffer{};
            }
            const size_t grown = std::max<size_t>(bytes, 1 << 16);
            check(driver().cuMemAlloc(&mb.ptr, grown), "cuMemAlloc");
            mb.bytes = grown;
        }
        buf = mb.ptr;
    }
    // Pageable source: the call returns once the lists are staged, so `meta` may go out of scope.
    check(driver().cuMemcpyHtoDAsync(buf, meta.data(), bytes, native(s)), "cuMemcpyHtoDAsync");
    const int64_t* d = reinterpret_cast<const int64_t*>(buf);
    // A warp per piece; enough blocks to fill every SM several times over, then grid-stride.
    const unsigned grid = static_cast<unsigned>(std::min<int64_t>((pieces + kBlock / 32 - 1) / (kBlock / 32), 8192));
    if (gather)
        launch(s, "realn_interval_gather", grid, kBlock, static_cast<char*>(staging), static_cast<const char*>(flat), d, d + pieces,
               d + 2 * pieces, pieces);
    else
        launch(s, "realn_interval_scatter", grid, kBlock, static_cast<char*>(flat), static_cast<const char*>(staging), d, d + pieces,
               d + 2 * pieces, pieces);
}

void interval_gather(realn_stream_t s, void* staging, const void* flat, const int64_t* off, const int64_t* len, int64_t count) {
    intervals(s, true, const_cast<void*>(flat), staging, off, len, count);
}

void interval_scatter(realn_stream_t s, void* flat, const void* staging, const int64_t* off, const int64_t* len, int64_t count) {
    intervals(s, false, flat, const_cast<void*>(staging), off, len, count);
}

// The same hash as the CPU backend, of the bytes brought to the host (a check, not a hot path).
uint64_t hash_bytes(realn_stream_t s, const void* data, int64_t bytes) {
    std::vector<unsigned char> host(static_cast<size_t>(bytes));
    if (bytes > 0) copy(s, host.data(), data, bytes, REALN_COPY_D2H);
    sync(s);
    return realn::cpu::hash_bytes(nullptr, host.data(), bytes);
}

// ---- dense (cuBLAS) ----------------------------------------------------------------------------

cublasHandle_t blas(realn_stream_t s) {
    const Driver& drv = driver();
    if (drv.cublasCreate == nullptr) fail(REALN_ERR_UNSUPPORTED, "cuda backend: ", drv.cublas_unavailable);
    bind(s);
    std::lock_guard<std::mutex> lock(g_blas_mu);
    auto it = g_blas.find(native(s));
    if (it != g_blas.end()) return it->second;
    cublasHandle_t h = nullptr;
    if (drv.cublasCreate(&h) != 0) fail(REALN_ERR_BACKEND, "cublasCreate failed");
    if (drv.cublasSetStream(h, native(s)) != 0) fail(REALN_ERR_BACKEND, "cublasSetStream failed");
    return g_blas[native(s)] = h;
}

// Row-major C = alpha op(A) op(B) + beta C is column-major C^T = alpha op(B)^T op(A)^T + beta C^T:
// cuBLAS gets B first, with the same transpose flags, and m and n swapped. ab_type: the storage
// of A and B (CUDA_R_32F, or CUDA_R_16BF: bf16 operands); C is fp32 and the compute type is fp32
// either way (CUBLAS_COMPUTE_32F: fp32 accumulation, as the CPU backend's bf16 GEMM).
void gemm_typed(realn_stream_t s, int ab_type, int32_t ta, int32_t tb, int64_t m, int64_t n, int64_t k, float alpha,
                const void* a, int64_t lda, int64_t sa, const void* b, int64_t ldb, int64_t sb, float beta, void* c,
                int64_t ldc, int64_t sc, int64_t batch) {
    cublasHandle_t h = blas(s);
    cublasStatus_t st = driver().cublasGemmStridedBatchedEx(
        h, tb ? CUBLAS_OP_T : CUBLAS_OP_N, ta ? CUBLAS_OP_T : CUBLAS_OP_N, static_cast<int>(n), static_cast<int>(m),
        static_cast<int>(k), &alpha, b, ab_type, static_cast<int>(ldb), sb, a, ab_type, static_cast<int>(lda), sa,
        &beta, c, CUDA_R_32F, static_cast<int>(ldc), sc, static_cast<int>(batch), CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
    if (st != 0) fail(REALN_ERR_BACKEND, "cublasGemmStridedBatchedEx failed (status ", st, ")");
}

// dtype BF16 (realn.h): A and B bf16, C fp32.
void gemm(realn_stream_t s, int32_t dt, int32_t ta, int32_t tb, int64_t m, int64_t n, int64_t k, float alpha,
          const void* a, int64_t lda, int64_t sa, const void* b, int64_t ldb, int64_t sb, float beta, void* c,
          int64_t ldc, int64_t sc, int64_t batch) {
    gemm_typed(s, dt == REALN_DTYPE_BF16 ? CUDA_R_16BF : CUDA_R_32F, ta, tb, m, n, k, alpha, a, lda, sa, b, ldb, sb, beta,
               c, ldc, sc, batch);
}

// An fp32 tensor rounded to bf16 (nearest even, as the CPU backend rounds fp32 operands of its
// bf16 GEMM) in device scratch.
std::unique_ptr<Scratch> to_bf16(realn_stream_t s, const void* src, int64_t n) {
    auto dst = std::make_unique<Scratch>(n * 2);
    launch(s, "realn_f32_to_bf16", grid_for(n), kBlock, static_cast<const float*>(src), dst->as<unsigned short>(), n);
    return dst;
}

// dtype BF16: w bf16, every other tensor fp32; products of bf16-rounded operands, fp32 accumulation.
void linear_fwd(realn_stream_t s, int32_t dt, const void* x, const void* w, const void* bias, void* y, int64_t rows,
                int64_t in, int64_t out) {
    if (dt == REALN_DTYPE_BF16) {
        auto xb = to_bf16(s, x, rows * in);
        gemm_typed(s, CUDA_R_16BF, 0, 1, rows, out, in, 1.0f, xb->as<void>(), in, 0, w, in, 0, 0.0f, y, out, 0, 1);
        sync(s);  // xb is freed on return
    } else {
        gemm(s, dt, 0, 1, rows, out, in, 1.0f, x, in, 0, w, in, 0, 0.0f, y, out, 0, 1);
    }
    if (bias) launch(s, "realn_add_bias", grid_for(rows * out), kBlock, static_cast<float*>(y), static_cast<const float*>(bias), rows, out);
}

void linear_bwd(realn_stream_t s, int32_t dt, const void* x, const void* w, const void* dy, void* dx, void* dw,
                void* dbias, int64_t rows, int64_t in, int64_t out, int32_t flags) {
    const float dx_beta = (flags & REALN_ACCUMULATE_DX) ? 1.0f : 0.0f;
    if (dt == REALN_DTYPE_BF16) {
        auto dyb = to_bf16(s, dy, rows * out);
        if (dx) gemm_typed(s, CUDA_R_16BF, 0, 0, rows, in, out, 1.0f, dyb->as<void>(), out, 0, w, in, 0, dx_beta, dx, in, 0, 1);
        if (dw) {
            auto xb = to_bf16(s, x, rows * in);
            gemm_typed(s, CUDA_R_16BF, 1, 0, out, in, rows, 1.0f, dyb->as<void>(), out, 0, xb->as<void>(), in, 0, 1.0f, dw, in, 0, 1);
            sync(s);
        }
        sync(s);  // the bf16 copies are freed on return
    } else {
        if (dx) gemm(s, dt, 0, 0, rows, in, out, 1.0f, dy, out, 0, w, in, 0, dx_beta, dx, in, 0, 1);
        if (dw) gemm(s, dt, 1, 0, out, in, rows, 1.0f, dy, out, 0, x, in, 0, 1.0f, dw, in, 0, 1);
    }
    if (dbias) launch(s, "realn_colsum_acc", grid_for(out), kBlock, static_cast<const float*>(dy), static_cast<float*>(dbias), rows, out);
}

// ---- elementwise and reductions ----------------------------------------------------------------

void axpby(realn_stream_t s, int32_t, int64_t n, float alpha, const void* x, float beta, void* y) {
    launch(s, "realn_axpby_f32", grid_for(n), kBlock, n, alpha, static_cast<const float*>(x), beta, static_cast<float*>(y));
}
void add(realn_stream_t s, int32_t, int64_t n, const void* a, const void* b, void* out) {
    launch(s, "realn_add_f32", grid_for(n), kBlock, n, static_cast<const float*>(a), static_cast<const float*>(b), static_cast<float*>(out));
}
void scale(realn_stream_t s, float* x, int64_t n, float alpha) { launch(s, "realn_scale_f32", grid_for(n), kBlock, x, n, alpha); }

double reduce(realn_stream_t s, const char* partial_kernel, const float* x, int64_t n) {
    Scratch partial(kReduceBlocks * sizeof(double)), total(sizeof(double));
    launch(s, partial_kernel, kReduceBlocks, kBlock, x, n, partial.as<double>());
    launch(s, "realn_sum_partials", 1, kBlock, static_cast<const double*>(partial.as<double>()), static_cast<int>(kReduceBlocks), total.as<double>());
    double out = 0;
    copy(s, &out, total.as<double>(), sizeof out, REALN_COPY_D2H);
    sync(s);
    return out;
}
double sumsq(realn_stream_t s, const float* x, int64_t n) { return reduce(s, "realn_sumsq_partial", x, n); }
int64_t count_nonfinite(realn_stream_t s, const float* x, int64_t n) {
    return static_cast<int64_t>(reduce(s, "realn_nonfinite_partial", x, n));
}

void convert(realn_stream_t s, int32_t dst_dtype, void* dst, int32_t src_dtype, const void* src, int64_t n) {
    if (dst_dtype == src_dtype) {
        copy(s, dst, src, n * (dst_dtype == REALN_DTYPE_F32 ? 4 : 2), REALN_COPY_D2D);
    } else if (src_dtype == REALN_DTYPE_F32 && dst_dtype == REALN_DTYPE_BF16) {
        launch(s, "realn_f32_to_bf16", grid_for(n), kBlock, static_cast<const float*>(src), static_cast<unsigned short*>(dst), n);
    } else if (src_dtype == REALN_DTYPE_BF16 && dst_dtype == REALN_DTYPE_F32) {
        launch(s, "realn_bf16_to_f32", grid_for(n), kBlock, static_cast<const unsigned short*>(src), static_cast<float*>(dst), n);
    } else {
        launch(s, "realn_convert_any", grid_for(n), kBlock, src, static_cast<int>(src_dtype), dst, static_cast<int>(dst_dtype), n);
    }
}

// ---- transformer layers ------------------------------------------------------------------------

// dtype BF16 (as on the CPU backend): a bf16 table widened into fp32 rows; the backward never
// reads the table, so a bf16 table's gradient (fp32) is the fp32 kernel.
void embedding_fwd(realn_stream_t s, int32_t dt, const int32_t* ids, int64_t n, const void* table, int64_t vocab,
                   int64_t hidden, int64_t vs, void* out) {
    if (dt == REALN_DTYPE_BF16)
        launch(s, "realn_embedding_fwd_bf16", grid_for(n * hidden), kBlock, ids, n, static_cast<const unsigned short*>(table), vocab,
               hidden, vs, static_cast<float*>(out));
    else
        launch(s, "realn_embedding_fwd", grid_for(n * hidden), kBlock, ids, n, static_cast<const float*>(table), vocab, hidden, vs,
               static_cast<float*>(out));
}
void embedding_bwd(realn_stream_t s, int32_t, const int32_t* ids, int64_t n, const void* dout, int64_t vocab,
                   int64_t hidden, int64_t vs, void* dtable) {
    launch(s, "realn_embedding_bwd", grid_for(hidden), kBlock, ids, n, static_cast<const float*>(dout), vocab, hidden, vs,
           static_cast<float*>(dtable));
}

// dtype BF16 (as on the CPU backend): the bf16 weight is widened once per call (exactly) into
// device scratch; everything else is the fp32 path. The caller synchronises before it is freed.
std::unique_ptr<Scratch> widen_weight(realn_stream_t s, int32_t dt, const void* w, int64_t dim) {
    if (dt != REALN_DTYPE_BF16) return nullptr;
    auto wide = std::make_unique<Scratch>(dim * 4);
    launch(s, "realn_bf16_to_f32", grid_for(dim), kBlock, static_cast<const unsigned short*>(w), wide->as<float>(), dim);
    return wide;
}

void rmsnorm_fwd(realn_stream_t s, int32_t dt, const void* x, const void* w, void* y, float* rstd, int64_t rows, int64_t dim,
                 float eps) {
    auto wide = widen_weight(s, dt, w, dim);
    const float* wf = wide ? wide->as<float>() : static_cast<const float*>(w);
    launch(s, "realn_rmsnorm_fwd", static_cast<unsigned>(rows), kBlock, static_cast<const float*>(x), wf,
           static_cast<float*>(y), rstd, rows, dim, eps);
    if (wide) sync(s);
}
void rmsnorm_bwd(realn_stream_t s, int32_t dt, const void* x, const void* w, const float* rstd, const void* dy, void* dx,
                 void* dw, int64_t rows, int64_t dim) {
    auto wide = widen_weight(s, dt, w, dim);
    const float* wf = wide ? wide->as<float>() : static_cast<const float*>(w);
    launch(s, "realn_rmsnorm_bwd_dx", static_cast<unsigned>(rows), kBlock, static_cast<const float*>(x), wf,
           rstd, static_cast<const float*>(dy), static_cast<float*>(dx), rows, dim);
    launch(s, "realn_rmsnorm_bwd_dw", grid_for(dim), kBlock, static_cast<const float*>(x), rstd, static_cast<const float*>(dy),
           static_cast<float*>(dw), rows, dim);
    if (wide) sync(s);
}

void rotary(realn_stream_t s, int32_t, const void* x, const int32_t* positions, void* y, int64_t tokens, int64_t heads,
            int64_t head_dim, int64_t rot_dim, const double* inv_freq, bool inverse) {
    // inv_freq: the caller's host table (uploaded per call).
    const int64_t half = rot_dim / 2;
    Scratch table(half * static_cast<int64_t>(sizeof(double)));
    copy(s, table.as<double>(), inv_freq, half * static_cast<int64_t>(sizeof(double)), REALN_COPY_H2D);
    launch(s, "realn_rotary", grid_for(tokens * heads * half), kBlock, static_cast<const float*>(x), positions,
           static_cast<float*>(y), tokens, heads, head_dim, rot_dim, static_cast<const double*>(table.as<double>()),
           inverse ? -1.0f : 1.0f);
    if (rot_dim < head_dim && x != y)
        launch(s, "realn_rotary_tail", grid_for(tokens * heads * (head_dim - rot_dim)), kBlock, static_cast<const float*>(x),
               static_cast<float*>(y), tokens * heads, head_dim, rot_dim);
    sync(s);  // the table is freed on return
}

void swiglu_fwd(realn_stream_t s, int32_t, const void* gate, const void* up, int64_t ld_in, void* out, int64_t ld_out,
                int64_t rows, int64_t cols) {
    launch(s, "realn_swiglu_fwd", grid_for(rows * cols), kBlock, static_cast<const float*>(gate), static_cast<const float*>(up),
           ld_in, static_cast<float*>(out), ld_out, rows, cols);
}
void swiglu_bwd(realn_stream_t s, int32_t, const void* gate, const void* up, int64_t ld_in, const void* dout, int64_t ld_out,
                void* dgate, void* dup, int64_t rows, int64_t cols) {
    launch(s, "realn_swiglu_bwd", grid_for(rows * cols), kBlock, static_cast<const float*>(gate), static_cast<const float*>(up),
           ld_in, static_cast<const float*>(dout), ld_out, static_cast<float*>(dgate), static_cast<float*>(dup), rows, cols);
}

// ---- optimizer, RL -----------------------------------------------------------------------------

void adamw(realn_stream_t s, const realn_adamw_opts* o, float* p, const float* g, float* m, float* v, int64_t n) {
    const double t = static_cast<double>(o->step);
    const float step_size = static_cast<float>(o->lr / (1.0 - std::pow(double(o->beta1), t)));
    const float inv_sqrt_bc2 = static_cast<float>(1.0 / std::sqrt(1.0 - std::pow(double(o->beta2), t)));
    launch(s, "realn_adamw", grid_for(n), kBlock, p, g, m, v, n, o->beta1, o->beta2, o->eps, o->grad_scale, step_size,
           inv_sqrt_bc2, o->lr * o->weight_decay);
}

void gae(realn_stream_t s, const float* rewards, const float* values, const int32_t* cu_seqlens, int64_t nseq, float gamma,
         float lambda, float* adv, float* ret) {
    Scratch cu((nseq + 1) * static_cast<int64_t>(sizeof(int32_t)));
    copy(s, cu.as<int32_t>(), cu_seqlens, (nseq + 1) * static_cast<int64_t>(sizeof(int32_t)), REALN_COPY_H2D);
    launch(s, "realn_gae", grid_for(nseq), kBlock, rewards, values, static_cast<const int32_t*>(cu.as<int32_t>()), nseq, gamma,
           lambda, adv, ret);
    sync(s);
}

// ---- KV cache and attention ----------------------------------------------------------------------

void kv_store(realn_stream_t s, int32_t dtype, const void* k, const void* v, const int32_t* slots, const int32_t* positions,
              int64_t tokens, void* kcache, void* vcache, int64_t, int64_t max_len, int64_t hkv, int64_t d) {
    const KvStorePlan plan = kv_store_plan(slots, positions, tokens, max_len);
    const auto& dst_row = plan.dst_row;
    const auto& src_tok = plan.src_token;
    const int64_t items = static_cast<int64_t>(dst_row.size()), row = hkv * d;
    auto dev_src = upload(s, src_tok);
    auto dev_dst = upload(s, dst_row);
    if (dtype == REALN_DTYPE_BF16)
        launch(s, "realn_kv_store_bf16", grid_for(items * row), kBlock, static_cast<const float*>(k), static_cast<const float*>(v),
               static_cast<const int*>(dev_src->as<int>()), static_cast<const int64_t*>(dev_dst->as<int64_t>()), items, row,
               static_cast<unsigned short*>(kcache), static_cast<unsigned short*>(vcache));
    else
        launch(s, "realn_kv_store_f32", grid_for(items * row), kBlock, static_cast<const float*>(k), static_cast<const float*>(v),
               static_cast<const int*>(dev_src->as<int>()), static_cast<const int64_t*>(dev_dst->as<int64_t>()), items, row,
               static_cast<float*>(kcache), static_cast<float*>(vcache));
    sync(s);  // the lists are freed on return
}

constexpr int64_t kDecodeMaxHeadDim = 256;   // REALN_DECODE_DMAX in kernels/kv_cache.cu
constexpr int64_t kAttentionMaxHeadDim = 128;  // REALN_ATT_DMAX in kernels/attention.cu

void attention_decode(realn_stream_t s, int32_t dtype, const void* q, const void* kcache, const void* vcache,
                      const int32_t* slots, const int32_t* lens, int64_t batch, int64_t, int64_t max_len, int64_t hq,
                      int64_t hkv, int64_t d, float scale, void* out) {
    if (d > kDecodeMaxHeadDim)
        fail(REALN_ERR_UNSUPPORTED, "cuda backend: attention_decode supports head_dim <= ", kDecodeMaxHeadDim, " (got ", d, ")");
    auto dev_slots = upload(s, std::vector<int32_t>(slots, slots + batch));
    auto dev_lens = upload(s, std::vector<int32_t>(lens, lens + batch));
    const char* kernel = dtype == REALN_DTYPE_BF16 ? "realn_attention_decode_bf16" : "realn_attention_decode_f32";
    launch2(s, kernel, static_cast<unsigned>(batch), static_cast<unsigned>(hq), 256, q, kcache, vcache,
            static_cast<const int*>(dev_slots->as<int>()), static_cast<const int*>(dev_lens->as<int>()), max_len, hq, hkv, d,
            scale, static_cast<float*>(out));
    sync(s);
}

void check_attention_head_dim(const char* op, int64_t d) {
    if (d > kAttentionMaxHeadDim)
        fail(REALN_ERR_UNSUPPORTED, "cuda backend: ", op, " supports head_dim <= ", kAttentionMaxHeadDim, " (got ", d, ")");
}

void attention_fwd(realn_stream_t s, int32_t, const void* q, const void* k, const void* v, const int32_t* cu_seqlens,
                   int64_t nseq, int64_t, int64_t hq, int64_t hkv, int64_t d, float scale, void* out, float* lse) {
    check_attention_head_dim("attention_fwd", d);
    const std::vector<int32_t> tiles = attention_tiles(cu_seqlens, nseq);
    if (tiles.empty()) return;
    auto dev_tiles = upload(s, tiles);
    launch2(s, "realn_attention_fwd", static_cast<unsigned>(tiles.size() / 3), static_cast<unsigned>(hq), static_cast<unsigned>(kAttentionThreads),
            static_cast<const float*>(q), static_cast<const float*>(k), static_cast<const float*>(v),
            static_cast<const int*>(dev_tiles->as<int>()), hq, hkv, d, scale, static_cast<float*>(out), lse);
    sync(s);
}

void attention_bwd(realn_stream_t s, int32_t, const void* q, const void* k, const void* v, const void* out, const float* lse,
                   const void* dout, const int32_t* cu_seqlens, int64_t nseq, int64_t total, int64_t hq, int64_t hkv,
                   int64_t d, float scale, void* dq, void* dk, void* dv) {
    check_attention_head_dim("attention_bwd", d);
    const std::vector<int32_t> tiles = attention_tiles(cu_seqlens, nseq);
    if (tiles.empty()) return;
    auto dev_tiles = upload(s, tiles);
    Scratch delta(total * hq * static_cast<int64_t>(sizeof(float)));
    const int64_t rows = total * hq;
    launch(s, "realn_attention_bwd_delta", static_cast<unsigned>((rows + kAttentionDeltaWarps - 1) / kAttentionDeltaWarps),
           static_cast<unsigned>(kAttentionDeltaWarps * 32),
           static_cast<const float*>(out), static_cast<const float*>(dout), rows, d, delta.as<float>());
    const auto* tl = static_cast<const int*>(dev_tiles->as<int>());
    const unsigned ntiles = static_cast<unsigned>(tiles.size() / 3);
    launch2_smem(s, "realn_attention_bwd_dq", ntiles, static_cast<unsigned>(hq), static_cast<unsigned>(kAttentionThreads), kAttentionDqSmem,
            static_cast<const float*>(q),
            static_cast<const float*>(k), static_cast<const float*>(v), lse, static_cast<const float*>(dout),
            static_cast<const float*>(delta.as<float>()), tl, hq, hkv, d, scale, static_cast<float*>(dq));
    launch2_smem(s, "realn_attention_bwd_dkv", ntiles, static_cast<unsigned>(hkv), static_cast<unsigned>(kAttentionThreads), kAttentionDkvSmem,
            static_cast<const float*>(q),
            static_cast<const float*>(k), static_cast<const float*>(v), lse, static_cast<const float*>(dout),
            static_cast<const float*>(delta.as<float>()), tl, hq, hkv, d, scale, static_cast<float*>(dk), static_cast<float*>(dv));
    sync(s);
}

// ---- log-probs, losses, sampling ---------------------------------------------------------------

constexpr unsigned kRowThreads = 256;  // REALN_ROW_THREADS in kernels/losses.cu

void logprobs_fwd(realn_stream_t s, int32_t, const void* logits, const int32_t* labels, const uint8_t* mask, int64_t rows,
                  int64_t vocab, float temperature, float* logp, float* entropy, float* lse) {
    launch(s, "realn_logprobs_fwd", static_cast<unsigned>(rows), kRowThreads, static_cast<const float*>(logits), labels, mask,
           rows, vocab, 1.0f / temperature, logp, entropy, lse);
}

void logprobs_bwd(realn_stream_t s, int32_t, const void* logits, const int32_t* labels, const uint8_t* mask, int64_t rows,
                  int64_t vocab, float temperature, const float* lse, const float* dlogp, const float* dentropy,
                  void* dlogits) {
    launch(s, "realn_logprobs_bwd", static_cast<unsigned>(rows), kRowThreads, static_cast<const float*>(logits), labels, mask,
           rows, vocab, 1.0f / temperature, lse, dlogp, dentropy, static_cast<float*>(dlogits));
}

// The mean over non-ignored rows is summed on the host in row order (double), as on the CPU.
double cross_entropy_fwd(realn_stream_t s, int32_t, const void* logits, const int32_t* labels, int64_t rows, int64_t vocab,
                         int32_t ignore_index, float* loss, float* lse) {
    launch(s, "realn_cross_entropy_fwd", static_cast<unsigned>(rows), kRowThreads, static_cast<const float*>(logits), labels,
           rows, vocab, ignore_index, loss, lse);
    std::vector<float> host_loss(static_cast<size_t>(rows));
    std::vector<int32_t> host_labels(static_cast<size_t>(rows));
    copy(s, host_loss.data(), loss, rows * static_cast<int64_t>(sizeof(float)), REALN_COPY_D2H);
    copy(s, host_labels.data(), labels, rows * static_cast<int64_t>(sizeof(int32_t)), REALN_COPY_D2H);
    sync(s);
    double sum = 0.0;
    int64_t count = 0;
    for (int64_t r = 0; r < rows; ++r) {
        if (host_labels[r] == ignore_index) continue;
        sum += host_loss[r];
        ++count;
    }
    return count ? sum / double(count) : 0.0;
}

void cross_entropy_bwd(realn_stream_t s, int32_t, const void* logits, const int32_t* labels, int64_t rows, int64_t vocab,
                       int32_t ignore_index, const float* lse, float grad_scale, void* dlogits) {
    launch(s, "realn_cross_entropy_bwd", static_cast<unsigned>(rows), kRowThreads, static_cast<const float*>(logits), labels,
           rows, vocab, ignore_index, lse, grad_scale, static_cast<float*>(dlogits));
}

// Sampling runs the CPU backend's sampler on the logits brought to the host (rows x vocab x 4
// bytes per call), so a seed gives exactly the CPU backend's tokens, mask and log-probs; the
// results go back to device memory. No device kernel for it yet.
void sample(realn_stream_t s, int32_t dtype, const void* logits, int64_t rows, int64_t vocab, const realn_sample_opts* o,
            int32_t* tokens, uint8_t* mask_out, float* logp_out) {
    std::vector<float> host(static_cast<size_t>(rows * vocab));
    copy(s, host.data(), logits, rows * vocab * static_cast<int64_t>(sizeof(float)), REALN_COPY_D2H);
    sync(s);
    std::vector<int32_t> tok(static_cast<size_t>(rows));
    std::vector<uint8_t> mask(mask_out ? static_cast<size_t>(rows * vocab) : 0);
    std::vector<float> logp(logp_out ? static_cast<size_t>(rows) : 0);
    realn::cpu::sample(nullptr, dtype, host.data(), rows, vocab, o, tok.data(), mask_out ? mask.data() : nullptr,
                       logp_out ? logp.data() : nullptr);
    copy(s, tokens, tok.data(), rows * static_cast<int64_t>(sizeof(int32_t)), REALN_COPY_H2D);
    if (mask_out) copy(s, mask_out, mask.data(), rows * vocab, REALN_COPY_H2D);
    if (logp_out) copy(s, logp_out, logp.data(), rows * static_cast<int64_t>(sizeof(float)), REALN_COPY_H2D);
    sync(s);
}

bool supports(Op op, int32_t dtype) {
    switch (op) {
        case Op::IntervalGather: case Op::IntervalScatter: case Op::HashBytes: case Op::Copy: case Op::Fill:
            return true;
        case Op::Convert:  // every pair of F32, BF16, F16
            return dtype == REALN_DTYPE_F32 || dtype == REALN_DTYPE_BF16 || dtype == REALN_DTYPE_F16;
        // bf16 as on the CPU backend (realn.h): GEMM operands / linear, embedding and RMSNorm
        // weights; a bf16 KV cache.
        case Op::Gemm: case Op::LinearFwd: case Op::LinearBwd: case Op::KvStore: case Op::AttentionDecode:
        case Op::EmbeddingFwd: case Op::EmbeddingBwd: case Op::RmsnormFwd: case Op::RmsnormBwd:
            return dtype == REALN_DTYPE_F32 || dtype == REALN_DTYPE_BF16;
        case Op::Axpby: case Op::Add: case Op::Sumsq: case Op::Scale: case Op::CountNonfinite: case Op::RotaryFwd: case Op::RotaryBwd:
        case Op::SwigluFwd: case Op::SwigluBwd: case Op::Adamw: case Op::Gae: case Op::AttentionFwd:
        case Op::AttentionBwd: case Op::LogprobsFwd: case Op::LogprobsBwd: case Op::CrossEntropyFwd:
        case Op::CrossEntropyBwd: case Op::Sample:
            return dtype == REALN_DTYPE_F32;
        default:
            return false;
    }
}

Backend make() {
    Backend b{};
    b.name = "cuda";
    b.kind = REALN_BACKEND_CUDA;
    b.device_count = device_count;
    b.supports_op = supports;
    b.stream_create = stream_create;
    b.stream_synchronize = sync;
    b.stream_destroy = stream_destroy;
    b.alloc = alloc;
    b.free = free_;
    b.copy = copy;
    b.fill_f32 = fill_f32;
    b.interval_gather = interval_gather;
    b.interval_scatter = interval_scatter;
    b.hash_bytes = hash_bytes;
    b.gemm = gemm;
    b.linear_fwd = linear_fwd;
    b.linear_bwd = linear_bwd;
    b.axpby = axpby;
    b.add = add;
    b.sumsq = sumsq;
    b.scale = scale;
    b.count_nonfinite = count_nonfinite;
    b.convert = convert;
    b.embedding_fwd = embedding_fwd;
    b.embedding_bwd = embedding_bwd;
    b.rmsnorm_fwd = rmsnorm_fwd;
    b.rmsnorm_bwd = rmsnorm_bwd;
    b.rotary = rotary;
    b.swiglu_fwd = swiglu_fwd;
    b.swiglu_bwd = swiglu_bwd;
    b.attention_fwd = attention_fwd;
    b.attention_bwd = attention_bwd;
    b.kv_store = kv_store;
    b.attention_decode = attention_decode;
    b.logprobs_fwd = logprobs_fwd;
    b.logprobs_bwd = logprobs_bwd;
    b.cross_entropy_fwd = cross_entropy_fwd;
    b.cross_entropy_bwd = cross_entropy_bwd;
    b.adamw = adamw;
    b.sample = sample;
    b.gae = gae;
    return b;
}

}  // namespace
}  // namespace realn::cuda

namespace realn {

const Backend* cuda_backend() {
    static const Backend b = cuda::make();
    return &b;
}

void cuda_bind_device(int32_t d) { cuda::check(cuda::driver().cuCtxSetCurrent(cuda::device(d).ctx), "cuCtxSetCurrent"); }

// Why the cuda backend has no device here ("" when it has one).
const char* cuda_unavailable_reason() { return cuda::driver().unavailable.c_str(); }

}  // namespace realn
