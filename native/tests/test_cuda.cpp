// ctest `cuda_backend`: what can be checked of the CUDA backend on any machine. Every kernel the
// backend launches (by name: the names are read from native/cuda/*.cpp) must be in the embedded PTX
// (compiled by clang-14 or nvcc in this build) and every PTX kernel must be launched; the build
// must report the backend, and a machine without a usable GPU must refuse a cuda stream and
// the cuda self-test with REALN_ERR_UNSUPPORTED naming the reason. Where a GPU is present the op
// cases run on it (ops_* tests); here the test then exits 77 (skipped, with the reason printed).
#include <dlfcn.h>

#include <cstdio>
#include <cstdlib>
#include <tuple>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <regex>
#include <set>
#include <sstream>
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

// The kernel names the host code launches: every "realn_..." string literal in native/cuda/*.cpp
// (kernels are launched by name; the host code has no other such literals).
static std::set<std::string> launched_kernels() {
    std::set<std::string> names;
    const std::regex literal("\"(realn_[a-z0-9_]+)\"");
    for (const auto& file : std::filesystem::directory_iterator(REALN_CUDA_HOST_DIR)) {
        if (file.path().extension() != ".cpp") continue;
        std::ifstream in(file.path());
        std::stringstream text;
        text << in.rdbuf();
        const std::string src = text.str();
        for (std::sregex_iterator it(src.begin(), src.end(), literal), end; it != end; ++it) names.insert((*it)[1].str());
    }
    return names;
}

int main() {
    const std::set<std::string> kernels = launched_kernels();
    EXPECT(kernels.size() >= 36, "only %zu kernel names found in %s", kernels.size(), REALN_CUDA_HOST_DIR);
    EXPECT(realn::cuda::kPtxCount >= 3, "only %d PTX modules embedded", realn::cuda::kPtxCount);
    for (int i = 0; i < realn::cuda::kPtxCount; ++i) {
        const char* ptx = realn::cuda::kPtx[i].ptx;
        EXPECT(std::strstr(ptx, ".version") != nullptr && std::strstr(ptx, ".target sm_80") != nullptr,
               "module %s is not PTX for sm_80", realn::cuda::kPtx[i].name);
    }
    // Every launched kernel is in exactly one module ...
    for (const std::string& k : kernels) {
        const std::string entry = ".entry " + k + "(";
        int found = 0;
        for (int i = 0; i < realn::cuda::kPtxCount; ++i)
            if (std::strstr(realn::cuda::kPtx[i].ptx, entry.c_str())) ++found;
        EXPECT(found == 1, "kernel %s found in %d PTX modules (want exactly 1)", k.c_str(), found);
    }
    // ... and every kernel in the PTX is launched (no dead device code).
    const std::regex entry_re("\\.entry ([A-Za-z0-9_]+)\\(");
    for (int i = 0; i < realn::cuda::kPtxCount; ++i) {
        const std::string ptx = realn::cuda::kPtx[i].ptx;
        for (std::sregex_iterator it(ptx.begin(), ptx.end(), entry_re), end; it != end; ++it)
            EXPECT(kernels.count((*it)[1].str()) == 1, "PTX module %s has kernel %s, which the host never launches",
                   realn::cuda::kPtx[i].name, (*it)[1].str().c_str());
    }
    EXPECT(std::strstr(realn_build_info(), "cuda") != nullptr, "build info lacks cuda: %s", realn_build_info());

    int32_t available = -1;
    EXPECT(realn_backend_available(REALN_BACKEND_CUDA, &available) == REALN_OK, "backend_available failed");

    // Collectives (NCCL loaded at run time): bad arguments are named first, then a machine without
    // NCCL or a CUDA driver is refused naming what is missing.
    EXPECT(realn_comm_all_reduce(nullptr, nullptr, REALN_DTYPE_F32, nullptr, nullptr, 4, REALN_REDUCE_SUM) ==
                   REALN_ERR_INVALID_ARGUMENT &&
               std::string(realn_last_error()).find("comm must not be NULL") != std::string::npos,
           "all_reduce without a communicator: %s", realn_last_error());
    uint8_t comm_id[REALN_COMM_ID_BYTES] = {0};
    realn_comm_t comm = nullptr;
    EXPECT(realn_comm_init(comm_id, 2, 2, 0, &comm) == REALN_ERR_INVALID_ARGUMENT && comm == nullptr &&
               std::string(realn_last_error()).find("rank must be in [0, nranks=2)") != std::string::npos,
           "comm_init with rank 2 of 2: %s", realn_last_error());
    void* libnccl = dlopen(std::getenv("REALN_NCCL_LIBRARY") ? std::getenv("REALN_NCCL_LIBRARY") : "libnccl.so.2", RTLD_NOW | RTLD_LOCAL);
    if (libnccl != nullptr && available) {
        std::printf("NCCL and a CUDA device are present: the collectives are not refused here\n");
    } else {
        const realn_status ids = realn_comm_unique_id(comm_id);
        const std::string id_why = realn_last_error();
        const realn_status inits = realn_comm_init(comm_id, 2, 0, 0, &comm);
        const std::string init_why = realn_last_error();
        const realn_status groups = realn_comm_group_start();
        const std::string group_why = realn_last_error();
        for (const auto& [st_, why_, call] : {std::tuple{ids, id_why, "realn_comm_unique_id"}, std::tuple{inits, init_why, "realn_comm_init"},
                                              std::tuple{groups, group_why, "realn_comm_group_start"}}) {
            EXPECT(st_ == REALN_ERR_UNSUPPORTED && why_.find(std::string(call) + ": collectives: ") == 0,
                   "%s without NCCL or a GPU: status %d, %s", call, st_, why_.c_str());
            if (libnccl == nullptr)
                EXPECT(why_.find("NCCL not found (") != std::string::npos && why_.find("REALN_NCCL_LIBRARY") != std::string::npos,
                       "%s: refusal does not name the missing NCCL: %s", call, why_.c_str());
            if (!available)
                EXPECT(why_.find("cuda backend: ") != std::string::npos, "%s: refusal does not name the missing driver: %s", call,
                       why_.c_str());
        }
        EXPECT(comm == nullptr, "a communicator was made without NCCL");
        std::printf("collectives refused as expected: %s\n", init_why.c_str());
    }
    if (libnccl) dlclose(libnccl);

    // CUDA IPC handles: a cpu stream is refused naming the backend (no cuda stream can exist here).
    realn_stream_t cpu = nullptr;
    EXPECT(realn_stream_create(REALN_BACKEND_CPU, 0, &cpu) == REALN_OK, "cpu stream: %s", realn_last_error());
    uint8_t ipc[REALN_IPC_HANDLE_BYTES] = {0};
    float host_value = 0;
    EXPECT(realn_ipc_handle(cpu, &host_value, ipc) == REALN_ERR_UNSUPPORTED &&
               std::string(realn_last_error()).find("realn_ipc_handle: IPC handles are device memory's: the 'cpu' backend") == 0,
           "ipc handle of host memory: %s", realn_last_error());
    void* opened = &host_value;
    EXPECT(realn_ipc_open(cpu, ipc, &opened) == REALN_ERR_UNSUPPORTED && opened == nullptr, "ipc open on a cpu stream: %s",
           realn_last_error());
    EXPECT(realn_ipc_handle(cpu, nullptr, ipc) == REALN_ERR_INVALID_ARGUMENT &&
               std::string(realn_last_error()).find("device_ptr must not be NULL") != std::string::npos,
           "ipc handle of NULL: %s", realn_last_error());
    realn_stream_destroy(cpu);
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
                kernels.size(), why.c_str());
    return 77;
}
