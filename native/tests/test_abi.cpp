// The C ABI's error contract, exercised through the shared library exactly as a host sees it:
// bad arguments return a status (never crash), the thread's last error names the argument,
// unsupported dtypes and missing backends are reported, handles free cleanly.
#include <cstdio>
#include <cstring>
#include <string>
#include <thread>

#include "realn.h"

static int g_failures = 0;
#define EXPECT(cond)                                                        \
    do {                                                                    \
        if (!(cond)) {                                                      \
            std::printf("FAIL %s:%d: %s\n", __FILE__, __LINE__, #cond);     \
            ++g_failures;                                                   \
        }                                                                   \
    } while (0)

static bool error_mentions(const char* needle) {
    return std::strstr(realn_last_error(), needle) != nullptr;
}

int main() {
    int32_t maj = -1, min = -1, pat = -1;
    EXPECT(realn_version(&maj, &min, &pat) == REALN_OK && maj == REALN_VERSION_MAJOR);
    EXPECT(realn_version(nullptr, &min, &pat) == REALN_ERR_INVALID_ARGUMENT);
    EXPECT(error_mentions("major"));
    EXPECT(std::strcmp(realn_status_string(REALN_ERR_UNSUPPORTED), "REALN_ERR_UNSUPPORTED") == 0);
    EXPECT(std::strstr(realn_build_info(), "cpu") != nullptr);

    realn_stream_t s = nullptr;
    EXPECT(realn_stream_create(REALN_BACKEND_CPU, 0, &s) == REALN_OK && s != nullptr);
    realn_stream_t bad = nullptr;
    EXPECT(realn_stream_create(REALN_BACKEND_CPU, 3, &bad) == REALN_ERR_NOT_FOUND && bad == nullptr);
    EXPECT(error_mentions("device 3"));
    EXPECT(realn_stream_create(42, 0, &bad) == REALN_ERR_NOT_FOUND);

    // Null and negative arguments name themselves.
    float x[4] = {1, 2, 3, 4}, w[4] = {1, 1, 1, 1}, y[4];
    EXPECT(realn_op_rmsnorm_fwd(s, REALN_DTYPE_F32, nullptr, w, y, nullptr, 1, 4, 1e-5f) ==
           REALN_ERR_INVALID_ARGUMENT);
    EXPECT(error_mentions("x must not be NULL"));
    EXPECT(realn_op_rmsnorm_fwd(s, REALN_DTYPE_F32, x, w, y, nullptr, -1, 4, 1e-5f) ==
           REALN_ERR_INVALID_ARGUMENT);
    EXPECT(error_mentions("rows must be >= 0"));
    EXPECT(realn_op_gemm(nullptr, REALN_DTYPE_F32, 0, 0, 2, 2, 2, 1, x, 2, 0, w, 2, 0, 0, y, 2, 0, 1) ==
           REALN_ERR_INVALID_ARGUMENT);
    EXPECT(error_mentions("stream must not be NULL"));
    EXPECT(realn_op_gemm(s, REALN_DTYPE_F32, 0, 0, 2, 2, 2, 1, x, 1, 0, w, 2, 0, 0, y, 2, 0, 1) ==
           REALN_ERR_INVALID_ARGUMENT);
    EXPECT(error_mentions("lda"));
    EXPECT(realn_op_gemm(s, 7, 0, 0, 2, 2, 2, 1, x, 2, 0, w, 2, 0, 0, y, 2, 0, 1) ==
           REALN_ERR_INVALID_ARGUMENT);
    EXPECT(error_mentions("dtype"));
    // The CPU backend runs bf16 weights for gemm/linear/embedding_fwd/rmsnorm_fwd only: the other
    // ops report bf16 unsupported, naming the op and dtype, not silently wrong.
    EXPECT(realn_op_swiglu_fwd(s, REALN_DTYPE_BF16, x, x, 2, y, 2, 1, 2) == REALN_ERR_UNSUPPORTED);
    EXPECT(error_mentions("bf16"));
    EXPECT(error_mentions("swiglu"));
    // A good call succeeds and leaves the previous message in place (no clearing contract).
    EXPECT(realn_op_gemm(s, REALN_DTYPE_F32, 0, 0, 2, 2, 2, 1, x, 2, 0, w, 2, 0, 0, y, 2, 0, 1) == REALN_OK);
    EXPECT(y[0] == 3 && y[3] == 7);

    // Intervals: negative offsets are rejected with the interval index.
    int64_t off[2] = {0, -4}, len[2] = {4, 4};
    char flat[16] = {}, stage[16] = {};
    EXPECT(realn_interval_gather(s, stage, flat, off, len, 2) == REALN_ERR_INVALID_ARGUMENT);
    EXPECT(error_mentions("interval 1"));

    // Option structs must be initialised.
    realn_adamw_opts o = REALN_ADAMW_OPTS_INIT;
    o.version = 9;
    float p[1] = {1}, g[1] = {1}, m[1] = {0}, v[1] = {0};
    EXPECT(realn_op_adamw(s, &o, p, g, m, v, 1) == REALN_ERR_INVALID_ARGUMENT);
    EXPECT(error_mentions("REALN_ADAMW_OPTS_INIT"));

    // Last error is per thread.
    std::string other;
    std::thread t([&] {
        realn_version(nullptr, nullptr, nullptr);
        other = realn_last_error();
    });
    t.join();
    EXPECT(error_mentions("REALN_ADAMW_OPTS_INIT"));
    EXPECT(other.find("major") != std::string::npos);

    // Buffers and host memory.
    realn_buf_t b = nullptr;
    EXPECT(realn_buf_alloc(s, 1 << 20, &b) == REALN_OK);
    int64_t size = 0;
    EXPECT(realn_buf_size(b, &size) == REALN_OK && size == (1 << 20));
    EXPECT(realn_buf_free(b) == REALN_OK);
    EXPECT(realn_buf_alloc(s, -1, &b) == REALN_ERR_INVALID_ARGUMENT);
    void* h = nullptr;
    EXPECT(realn_host_alloc(3 << 20, REALN_HOST_PREFAULT | REALN_HOST_HUGEPAGE | REALN_HOST_PINNED, &h) == REALN_OK);
    EXPECT(h != nullptr && (reinterpret_cast<uintptr_t>(h) & ((2u << 20) - 1)) == 0);
    std::memset(h, 0x5a, 3 << 20);
    EXPECT(realn_host_free(h) == REALN_OK);
    EXPECT(realn_host_free(h) == REALN_ERR_INVALID_ARGUMENT);  // double free is caught
    EXPECT(error_mentions("was not returned by realn_host_alloc"));

    // Selftest of a backend that is not built reports NOT_FOUND.
    int32_t cuda = 0;
    realn_backend_available(REALN_BACKEND_CUDA, &cuda);
    const char* json = nullptr;
    if (!cuda) EXPECT(realn_selftest_run(REALN_BACKEND_CUDA, nullptr, &json) == REALN_ERR_NOT_FOUND);
    EXPECT(realn_selftest_run(REALN_BACKEND_CPU, "gemm", &json) == REALN_OK && json &&
           std::strstr(json, "\"backend\": \"cpu\"") && std::strstr(json, "\"passed\": true"));

    EXPECT(realn_stream_destroy(s) == REALN_OK);
    EXPECT(realn_stream_destroy(nullptr) == REALN_OK);
    std::printf("%d failure(s)\n", g_failures);
    return g_failures == 0 ? 0 : 1;
}
