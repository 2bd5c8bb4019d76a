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
#include <vector>

#include <unistd.h>

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
// The folder is the build's source tree, or REALN_CUDA_HOST_DIR where the binary runs elsewhere
// (tools/gpu-check.sh with prebuilt binaries).
static std::string host_dir() {
    const char* env = std::getenv("REALN_CUDA_HOST_DIR");
    return env && *env ? env : REALN_CUDA_HOST_DIR;
}

static std::set<std::string> launched_kernels() {
    std::set<std::string> names;
    const std::regex literal("\"(realn_[a-z0-9_]+)\"");
    std::error_code ec;
    if (!std::filesystem::is_directory(host_dir(), ec)) return names;  // reported by the count check
    for (const auto& file : std::filesystem::directory_iterator(host_dir())) {
        if (file.path().extension() != ".cpp") continue;
        std::ifstream in(file.path());
        std::stringstream text;
        text << in.rdbuf();
        const std::string src = text.str();
        for (std::sregex_iterator it(src.begin(), src.end(), literal), end; it != end; ++it) names.insert((*it)[1].str());
    }
    return names;
}

// ---- On a GPU: the collectives and IPC handles run for real ------------------------------------
// A device buffer of n floats holding `values`.
static void* device_floats(realn_stream_t s, const std::vector<float>& values, std::vector<realn_buf_t>& bufs) {
    realn_buf_t b = nullptr;
    void* p = nullptr;
    if (realn_buf_alloc(s, static_cast<int64_t>(values.size() * 4), &b) != REALN_OK) return nullptr;
    bufs.push_back(b);
    realn_buf_ptr(b, &p);
    realn_copy(s, p, values.data(), static_cast<int64_t>(values.size() * 4), REALN_COPY_H2D);
    return p;
}

static std::vector<float> host_floats(realn_stream_t s, const void* p, size_t n) {
    std::vector<float> out(n);
    realn_copy(s, out.data(), p, static_cast<int64_t>(n * 4), REALN_COPY_D2H);
    realn_stream_synchronize(s);
    return out;
}

// One rank of NCCL (a communicator of one process on one GPU): every collective is then a copy, so
// the results must equal the input bit for bit; send/recv to itself inside a group. This runs the
// dlopen'd NCCL through our declarations (ids, enums, argument order) on hardware.
static void nccl_one_rank(realn_stream_t s) {
    uint8_t id[REALN_COMM_ID_BYTES] = {0};
    realn_comm_t comm = nullptr;
    if (realn_comm_unique_id(id) != REALN_OK || realn_comm_init(id, 1, 0, 0, &comm) != REALN_OK) {
        EXPECT(false, "NCCL one-rank communicator: %s", realn_last_error());
        return;
    }
    const size_t n = 1000003;
    std::vector<float> x(n);
    for (size_t i = 0; i < n; ++i) x[i] = static_cast<float>((i * 2654435761u) % 100003) / 777.0f - 50.0f;
    std::vector<realn_buf_t> bufs;
    void* send = device_floats(s, x, bufs);
    std::vector<float> zeros(n, 0.0f);
    const char* names[] = {"all_reduce", "all_gather", "reduce_scatter", "broadcast", "send/recv"};
    for (int which = 0; which < 5; ++which) {
        void* recv = device_floats(s, zeros, bufs);
        realn_status st = REALN_OK;
        switch (which) {
            case 0: st = realn_comm_all_reduce(comm, s, REALN_DTYPE_F32, send, recv, n, REALN_REDUCE_SUM); break;
            case 1: st = realn_comm_all_gather(comm, s, REALN_DTYPE_F32, send, recv, n); break;
            case 2: st = realn_comm_reduce_scatter(comm, s, REALN_DTYPE_F32, send, recv, n, REALN_REDUCE_SUM); break;
            case 3: st = realn_comm_broadcast(comm, s, REALN_DTYPE_F32, send, recv, n, 0); break;
            default:
                st = realn_comm_group_start();
                if (st == REALN_OK) st = realn_comm_send(comm, s, REALN_DTYPE_F32, send, n, 0);
                if (st == REALN_OK) st = realn_comm_recv(comm, s, REALN_DTYPE_F32, recv, n, 0);
                if (st == REALN_OK) st = realn_comm_group_end();
        }
        EXPECT(st == REALN_OK, "NCCL %s: %s", names[which], realn_last_error());
        if (st != REALN_OK) continue;
        const std::vector<float> got = host_floats(s, recv, n);
        EXPECT(std::memcmp(got.data(), x.data(), n * 4) == 0, "NCCL %s of one rank is not a bit-exact copy", names[which]);
    }
    for (realn_buf_t b : bufs) realn_buf_free(b);
    EXPECT(realn_comm_destroy(comm) == REALN_OK, "comm_destroy: %s", realn_last_error());
    std::printf("NCCL one-rank collectives and send/recv: bit-exact copies of 1000003 floats\n");
}

// CUDA IPC between two processes: this one fills a device buffer and hands its handle to a child
// (this binary again, `--ipc-child HEX`), which opens it, reads the values and prints their checksum.
static uint64_t checksum(const std::vector<float>& v) {
    uint64_t h = 1469598103934665603ull;
    const auto* b = reinterpret_cast<const unsigned char*>(v.data());
    for (size_t i = 0; i < v.size() * 4; ++i) h = (h ^ b[i]) * 1099511628211ull;
    return h;
}
static const size_t kIpcFloats = 262147;

static int ipc_child(const char* hex) {
    uint8_t handle[REALN_IPC_HANDLE_BYTES];
    for (int i = 0; i < REALN_IPC_HANDLE_BYTES; ++i) std::sscanf(hex + 2 * i, "%2hhx", &handle[i]);
    realn_stream_t s = nullptr;
    void* p = nullptr;
    if (realn_stream_create(REALN_BACKEND_CUDA, 0, &s) != REALN_OK || realn_ipc_open(s, handle, &p) != REALN_OK) {
        std::printf("ipc-child: %s\n", realn_last_error());
        return 1;
    }
    const std::vector<float> got = host_floats(s, p, kIpcFloats);
    std::printf("checksum %llu\n", static_cast<unsigned long long>(checksum(got)));
    const bool closed = realn_ipc_close(s, p) == REALN_OK;
    realn_stream_destroy(s);
    return closed ? 0 : 1;
}

static void ipc_two_processes(realn_stream_t s) {
    std::vector<float> x(kIpcFloats);
    for (size_t i = 0; i < x.size(); ++i) x[i] = static_cast<float>((i * 40503u) % 65521) * 0.125f - 4000.0f;
    std::vector<realn_buf_t> bufs;
    void* p = device_floats(s, x, bufs);
    realn_stream_synchronize(s);
    uint8_t handle[REALN_IPC_HANDLE_BYTES] = {0};
    if (realn_ipc_handle(s, p, handle) != REALN_OK) {
        EXPECT(false, "ipc_handle of a device buffer: %s", realn_last_error());
        return;
    }
    std::string cmd = "timeout 60 /proc/" + std::to_string(getpid()) + "/exe --ipc-child ";
    char byte[3];
    for (int i = 0; i < REALN_IPC_HANDLE_BYTES; ++i) { std::snprintf(byte, sizeof byte, "%02x", handle[i]); cmd += byte; }
    FILE* child = popen(cmd.c_str(), "r");
    std::string out;
    char line[512];
    while (child && std::fgets(line, sizeof line, child)) out += line;
    const int rc = child ? pclose(child) : -1;
    const std::string want = "checksum " + std::to_string(checksum(x));
    EXPECT(rc == 0 && out.find(want) != std::string::npos, "CUDA IPC: the child process read %s (want %s, exit %d)",
           out.c_str(), want.c_str(), rc);
    if (rc == 0 && out.find(want) != std::string::npos)
        std::printf("CUDA IPC: a second process read the %zu floats bit for bit\n", x.size());
    for (realn_buf_t b : bufs) realn_buf_free(b);
}

int main(int argc, char** argv) {
    if (argc == 3 && std::strcmp(argv[1], "--ipc-child") == 0) return ipc_child(argv[2]);
    const std::set<std::string> kernels = launched_kernels();
    EXPECT(kernels.size() >= 36, "only %zu kernel names found in %s (REALN_CUDA_HOST_DIR)", kernels.size(), host_dir().c_str());
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
        std::printf("NCCL and a CUDA device are present: the collectives run on one rank\n");
        realn_stream_t gpu = nullptr;
        EXPECT(realn_stream_create(REALN_BACKEND_CUDA, 0, &gpu) == REALN_OK, "cuda stream: %s", realn_last_error());
        if (gpu) {
            nccl_one_rank(gpu);
            realn_stream_destroy(gpu);
        }
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
        realn_stream_t gpu = nullptr;
        EXPECT(realn_stream_create(REALN_BACKEND_CUDA, 0, &gpu) == REALN_OK, "cuda stream: %s", realn_last_error());
        if (gpu) {
            ipc_two_processes(gpu);
            realn_stream_destroy(gpu);
        }
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
