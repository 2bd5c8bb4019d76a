// ctest `cuda_backend`: what can be checked of the CUDA backend on any machine. Every kernel the
// backend launches must be in the embedded PTX (compiled by clang-14 or nvcc in this build), the
// build must report the backend, and a machine without a usable GPU must refuse a cuda stream and
// the cuda self-test with REALN_ERR_UNSUPPORTED naming the reason. Where a GPU is present the op
// cases run on it (ops_* tests); here the test then exits 77 (skipped, with the reason printed).
#include <cstdio>
#include <cstring>
#include <string>

#include "realn.h"
#include "realn_selftest.h"

namespace realn::cuda {
struct PtxBlob {
    const char* name;
    const char* ptx;
};
extern const PtxBlob kPtx[];
extern const int kPtxCount;
}  // namespace realn::cuda

static int failures = 0;
#define EXPECT(cond, ...)                              \
    do {                                               \
        if (!(cond)) {                                 \
            std::printf("FAIL: " __VA_ARGS__);         \
            std::printf("\n");                         \
            ++failures;                                \
        }                                              \
    } while (0)

int main() {
    // Kernels launched by native/cuda/backend_cuda.cpp (by name, at run time).
    const char* kernels[] = {"realn_fill_f32", "realn_axpby_f32", "realn_add_f32", "realn_scale_f32", "realn_f32_to_bf16",
                             "realn_bf16_to_f32", "realn_sumsq_partial", "realn_nonfinite_partial", "realn_sum_partials",
                             "realn_add_bias", "realn_colsum_acc", "realn_rmsnorm_fwd", "realn_rmsnorm_bwd_dx",
                             "realn_rmsnorm_bwd_dw", "realn_swiglu_fwd", "realn_swiglu_bwd", "realn_rotary",
                             "realn_rotary_tail", "realn_embedding_fwd", "realn_embedding_bwd", "realn_adamw", "realn_gae",
                             "realn_interval_gather", "realn_interval_scatter"};
    EXPECT(realn::cuda::kPtxCount >= 3, "only %d PTX modules embedded", realn::cuda::kPtxCount);
    for (const char* k : kernels) {
        const std::string entry = std::string(".entry ") + k + "(";
        int found = 0;
        for (int i = 0; i < realn::cuda::kPtxCount; ++i) {
            const char* ptx = realn::cuda::kPtx[i].ptx;
            EXPECT(std::strstr(ptx, ".version") != nullptr && std::strstr(ptx, ".target sm_80") != nullptr,
                   "module %s is not PTX for sm_80", realn::cuda::kPtx[i].name);
            if (std::strstr(ptx, entry.c_str())) ++found;
        }
        EXPECT(found == 1, "kernel %s found in %d PTX modules (want exactly 1)", k, found);
    }
    EXPECT(std::strstr(realn_build_info(), "cuda") != nullptr, "build info lacks cuda: %s", realn_build_info());

    int32_t available = -1;
    EXPECT(realn_backend_available(REALN_BACKEND_CUDA, &available) == REALN_OK, "backend_available failed");
    if (available) {
        std::printf("a CUDA device is present: the ops_* tests run every case on it\n");
        return failures == 0 ? 0 : 1;
    }
    realn_stream_t s = nullptr;
    realn_status st = realn_stream_create(REALN_BACKEND_CUDA, 0, &s);
    const std::string why = realn_last_error();
    EXPECT(st == REALN_ERR_UNSUPPORTED && s == nullptr, "cuda stream without a device: status %d", st);
    EXPECT(why.find("cuda backend: ") != std::string::npos &&
               (why.find("no CUDA driver") != std::string::npos || why.find("cuInit") != std::string::npos ||
                why.find("no device") != std::string::npos || why.find("lacks") != std::string::npos),
           "refusal does not name the reason: %s", why.c_str());
    const char* json = nullptr;
    st = realn_selftest_run(REALN_BACKEND_CUDA, nullptr, &json);
    EXPECT(st == REALN_ERR_UNSUPPORTED && std::string(realn_selftest_last_error()).find("cuda backend: ") != std::string::npos,
           "cuda selftest without a device: status %d, %s", st, realn_selftest_last_error());
    if (failures) return 1;
    std::printf("cuda backend compiled (%d PTX modules, %zu kernels); not run: %s\n", realn::cuda::kPtxCount,
                sizeof kernels / sizeof kernels[0], why.c_str());
    return 77;
}
