// realn_cuda_bench: microbenchmarks of the CUDA backend against a reference measured in the same
// run (tools/gpu-check.sh runs it on a GPU host and writes docs/performance.md from its output).
//   gemm  : realn_op_gemm (fp32, and bf16 operands with fp32 accumulation, through the ABI) vs
//           cublasGemmStridedBatchedEx called directly with the same types
//   attention: realn_op_attention_fwd / _bwd (fp32, one causal sequence of 4096 tokens, 32 query
//           heads, 8 kv heads, head_dim 128): times only; tools/gpu-check.sh compares them with
//           PyTorch's scaled_dot_product_attention on the same shape (tools/sdpa_bench.py)
//   copy  : realn_copy D2D vs cuMemcpyDtoDAsync directly, 1 GiB
//   gather: realn_interval_gather of 256 MiB in 4 KiB and 64 KiB intervals (every other one) vs one
//           D2D copy of the same bytes
//   launch: one tiny op through the ABI, back to back (the planner's launch floor), beside tiny
//           driver copies issued directly
// Prints one JSON object per line; exits 77 where no CUDA device is usable.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <functional>
#include <vector>

#include "../cuda/driver.hpp"
#include "realn.h"

using namespace realn::cuda;

static void ok(realn_status st, const char* what) {
    if (st != REALN_OK) {
        std::printf("{\"error\": \"%s: %s\"}\n", what, realn_last_error());
        std::exit(1);
    }
}

// Best of `reps` timed runs (after one warm-up), synchronising the stream around each.
static double best(realn_stream_t s, int reps, const std::function<void()>& fn) {
    fn();
    ok(realn_stream_synchronize(s), "sync");
    double b = 1e30;
    for (int i = 0; i < reps; ++i) {
        auto t0 = std::chrono::steady_clock::now();
        fn();
        ok(realn_stream_synchronize(s), "sync");
        b = std::min(b, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    }
    return b;
}

int main() {
    int32_t avail = 0;
    realn_backend_available(REALN_BACKEND_CUDA, &avail);
    if (!avail) {
        realn_stream_t probe = nullptr;
        realn_stream_create(REALN_BACKEND_CUDA, 0, &probe);
        std::printf("no CUDA device: %s\n", realn_last_error());
        return 77;
    }
    const Driver& d = driver();
    realn_stream_t s = nullptr;
    ok(realn_stream_create(REALN_BACKEND_CUDA, 0, &s), "stream");
    CUstream native = nullptr;
    {
        // The backend's stream: the direct calls below run on the same one.
        struct Peek { const void* backend; int32_t device; void* native; };
        native = static_cast<CUstream>(reinterpret_cast<Peek*>(s)->native);
    }
    auto buf = [&](int64_t bytes) {
        realn_buf_t b = nullptr;
        ok(realn_buf_alloc(s, bytes, &b), "alloc");
        void* p = nullptr;
        realn_buf_ptr(b, &p);
        std::vector<float> init(static_cast<size_t>(bytes / 4));
        for (size_t i = 0; i < init.size(); ++i) init[i] = static_cast<float>((i * 2654435761u) % 1000) / 1000.0f - 0.5f;
        ok(realn_copy(s, p, init.data(), bytes, REALN_COPY_H2D), "h2d");
        return p;
    };

    cublasHandle_t h = nullptr;
    if (d.cublasCreate == nullptr || d.cublasCreate(&h) != 0) {
        std::printf("{\"error\": \"%s\"}\n", d.cublas_unavailable.c_str());
        return 1;
    }
    d.cublasSetStream(h, native);
    for (int64_t n : {1024, 4096, 8192}) {
        void* a = buf(n * n * 4);
        void* b = buf(n * n * 4);
        void* c = buf(n * n * 4);
        const int reps = n >= 8192 ? 5 : 20;
        double ours = best(s, reps, [&] {
            ok(realn_op_gemm(s, REALN_DTYPE_F32, 0, 0, n, n, n, 1.0f, a, n, 0, b, n, 0, 0.0f, c, n, 0, 1), "gemm");
        });
        const float one = 1.0f, zero = 0.0f;
        double direct = best(s, reps, [&] {
            d.cublasGemmStridedBatchedEx(h, CUBLAS_OP_N, CUBLAS_OP_N, static_cast<int>(n), static_cast<int>(n), static_cast<int>(n),
                                         &one, b, CUDA_R_32F, static_cast<int>(n), 0, a, CUDA_R_32F, static_cast<int>(n), 0,
                                         &zero, c, CUDA_R_32F, static_cast<int>(n), 0, 1, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
        });
        std::printf("{\"bench\": \"gemm_f32\", \"n\": %lld, \"ours_tflops\": %.2f, \"cublas_tflops\": %.2f, \"ratio\": %.3f}\n",
                    static_cast<long long>(n), 2.0 * n * n * n / ours / 1e12, 2.0 * n * n * n / direct / 1e12, direct / ours);
    }
    for (int64_t n : {4096, 8192}) {
        void* a32 = buf(n * n * 4);
        void* b32 = buf(n * n * 4);
        void* a = buf(n * n * 2);
        void* b = buf(n * n * 2);
        void* c = buf(n * n * 4);
        ok(realn_op_convert(s, REALN_DTYPE_BF16, a, REALN_DTYPE_F32, a32, n * n), "convert");
        ok(realn_op_convert(s, REALN_DTYPE_BF16, b, REALN_DTYPE_F32, b32, n * n), "convert");
        const int reps = n >= 8192 ? 5 : 20;
        double ours = best(s, reps, [&] {
            ok(realn_op_gemm(s, REALN_DTYPE_BF16, 0, 0, n, n, n, 1.0f, a, n, 0, b, n, 0, 0.0f, c, n, 0, 1), "gemm bf16");
        });
        const float one = 1.0f, zero = 0.0f;
        double direct = best(s, reps, [&] {
            d.cublasGemmStridedBatchedEx(h, CUBLAS_OP_N, CUBLAS_OP_N, static_cast<int>(n), static_cast<int>(n), static_cast<int>(n),
                                         &one, b, CUDA_R_16BF, static_cast<int>(n), 0, a, CUDA_R_16BF, static_cast<int>(n), 0,
                                         &zero, c, CUDA_R_32F, static_cast<int>(n), 0, 1, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
        });
        std::printf("{\"bench\": \"gemm_bf16\", \"n\": %lld, \"ours_tflops\": %.2f, \"cublas_tflops\": %.2f, \"ratio\": %.3f}\n",
                    static_cast<long long>(n), 2.0 * n * n * n / ours / 1e12, 2.0 * n * n * n / direct / 1e12, direct / ours);
    }
    {
        const int64_t T = 4096, hq = 32, hkv = 8, hd = 128;
        const float scale = 1.0f / std::sqrt(float(hd));
        const int32_t cu[2] = {0, static_cast<int32_t>(T)};
        void* q = buf(T * hq * hd * 4);
        void* k = buf(T * hkv * hd * 4);
        void* v = buf(T * hkv * hd * 4);
        void* o = buf(T * hq * hd * 4);
        void* dout = buf(T * hq * hd * 4);
        void* dq = buf(T * hq * hd * 4);
        void* dk = buf(T * hkv * hd * 4);
        void* dv = buf(T * hkv * hd * 4);
        auto* lse = static_cast<float*>(buf(T * hq * 4));
        double fwd = best(s, 5, [&] {
            ok(realn_op_attention_fwd(s, REALN_DTYPE_F32, q, k, v, cu, 1, T, hq, hkv, hd, scale, o, lse), "attention_fwd");
        });
        double bwd = best(s, 5, [&] {
            ok(realn_op_attention_bwd(s, REALN_DTYPE_F32, q, k, v, o, lse, dout, cu, 1, T, hq, hkv, hd, scale, dq, dk, dv),
               "attention_bwd");
        });
        std::printf("{\"bench\": \"attention_f32\", \"tokens\": %lld, \"hq\": %lld, \"hkv\": %lld, \"d\": %lld, "
                    "\"fwd_ms\": %.3f, \"bwd_ms\": %.3f, \"fwd_bwd_ms\": %.3f}\n",
                    static_cast<long long>(T), static_cast<long long>(hq), static_cast<long long>(hkv), static_cast<long long>(hd),
                    fwd * 1e3, bwd * 1e3, (fwd + bwd) * 1e3);
    }
    const int64_t bytes = int64_t(1) << 30;
    void* src = buf(bytes);
    void* dst = buf(bytes);
    double ours = best(s, 10, [&] { ok(realn_copy(s, dst, src, bytes, REALN_COPY_D2D), "copy"); });
    double direct = best(s, 10, [&] {
        d.cuMemcpyDtoDAsync(reinterpret_cast<CUdeviceptr>(dst), reinterpret_cast<CUdeviceptr>(src), bytes, native);
    });
    std::printf("{\"bench\": \"copy_d2d\", \"bytes\": %lld, \"ours_gbps\": %.1f, \"direct_gbps\": %.1f, \"ratio\": %.3f}\n",
                static_cast<long long>(bytes), bytes / ours / 1e9, bytes / direct / 1e9, direct / ours);
    // Reallocation-sized gathers: 256 MiB moved as every other interval of 4 KiB (row-parallel
    // shards of narrow rows) and of 64 KiB, against one D2D copy of the same bytes.
    for (int64_t ilen : {int64_t(4096), int64_t(65536)}) {
        std::vector<int64_t> off, len;
        for (int64_t o = 0; o + ilen <= bytes / 2; o += 2 * ilen) { off.push_back(o); len.push_back(ilen); }
        const int64_t moved = static_cast<int64_t>(off.size()) * ilen;
        double gather = best(s, 5, [&] {
            ok(realn_interval_gather(s, dst, src, off.data(), len.data(), static_cast<int64_t>(off.size())), "gather");
        });
        double plain = best(s, 5, [&] {
            d.cuMemcpyDtoDAsync(reinterpret_cast<CUdeviceptr>(dst), reinterpret_cast<CUdeviceptr>(src), moved, native);
        });
        std::printf("{\"bench\": \"interval_gather\", \"intervals\": %zu, \"interval_bytes\": %lld, \"bytes\": %lld, "
                    "\"ours_gbps\": %.1f, \"memcpy_gbps\": %.1f, \"ratio\": %.3f}\n",
                    off.size(), static_cast<long long>(ilen), static_cast<long long>(moved), moved / gather / 1e9,
                    moved / plain / 1e9, plain / gather);
    }
    {
        // The floor of one op through the ABI: host dispatch + launch of a tiny kernel, back to back
        // (what the planner's kernel_launch_us prices), against cuLaunchKernel's share measured by the
        // same loop of D2D copies of 64 bytes issued directly.
        void* t32 = buf(64);
        void* t16 = buf(64);
        const int n = 20000;
        double op = best(s, 3, [&] {
            for (int i = 0; i < n; ++i) ok(realn_op_convert(s, REALN_DTYPE_BF16, t16, REALN_DTYPE_F32, t32, 16), "convert");
        });
        double raw = best(s, 3, [&] {
            for (int i = 0; i < n; ++i)
                d.cuMemcpyDtoDAsync(reinterpret_cast<CUdeviceptr>(t16), reinterpret_cast<CUdeviceptr>(t32), 64, native);
        });
        std::printf("{\"bench\": \"launch\", \"abi_op_us\": %.2f, \"driver_copy_us\": %.2f}\n", op / n * 1e6, raw / n * 1e6);
    }
    d.cublasDestroy(h);
    realn_stream_destroy(s);
    return 0;
}
