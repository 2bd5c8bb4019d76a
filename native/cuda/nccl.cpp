// dlopen of NCCL (see nccl.hpp). Library: REALN_NCCL_LIBRARY if set, else libnccl.so.2 (NCCL's
// soname; a PyTorch install keeps it in site-packages/nvidia/nccl/lib, reachable through
// LD_LIBRARY_PATH). Run on one rank of one GPU (H200), never with several ranks.
#include "nccl.hpp"

#include <dlfcn.h>

#include <cstdlib>

#include "../src/core/error.hpp"

namespace realn::cuda {
namespace {

template <typename Fn>
void sym(void* lib, const char* name, Fn& out, std::string& missing) {
    out = reinterpret_cast<Fn>(dlsym(lib, name));
    if (out == nullptr && missing.empty()) missing = name;
}

Nccl load() {
    Nccl n{};
    const char* env = std::getenv("REALN_NCCL_LIBRARY");
    const char* name = (env && *env) ? env : "libnccl.so.2";
    void* lib = dlopen(name, RTLD_NOW | RTLD_LOCAL);
    if (lib == nullptr) {
        const char* e = dlerror();
        n.unavailable = std::string("NCCL not found (") + (e ? e : name) +
                        "; set REALN_NCCL_LIBRARY or LD_LIBRARY_PATH)";
    } else {
        std::string missing;
        sym(lib, "ncclGetUniqueId", n.ncclGetUniqueId, missing);
        sym(lib, "ncclCommInitRank", n.ncclCommInitRank, missing);
        sym(lib, "ncclCommDestroy", n.ncclCommDestroy, missing);
        sym(lib, "ncclAllReduce", n.ncclAllReduce, missing);
        sym(lib, "ncclAllGather", n.ncclAllGather, missing);
        sym(lib, "ncclReduceScatter", n.ncclReduceScatter, missing);
        sym(lib, "ncclBroadcast", n.ncclBroadcast, missing);
        sym(lib, "ncclSend", n.ncclSend, missing);
        sym(lib, "ncclRecv", n.ncclRecv, missing);
        sym(lib, "ncclGroupStart", n.ncclGroupStart, missing);
        sym(lib, "ncclGroupEnd", n.ncclGroupEnd, missing);
        sym(lib, "ncclGetErrorString", n.ncclGetErrorString, missing);
        if (!missing.empty()) n.unavailable = std::string("NCCL (") + name + ") lacks " + missing + " (NCCL too old: 2.7+ needed)";
    }
    const Driver& drv = driver();
    if (drv.devices == 0) {
        if (!n.unavailable.empty()) n.unavailable += "; ";
        n.unavailable += "cuda backend: " + drv.unavailable;
    }
    return n;
}

}  // namespace

const Nccl& nccl() {
    static const Nccl n = load();
    return n;
}

void nccl_check(ncclResult_t r, const char* what) {
    if (r == ncclSuccess) return;
    const char* msg = nccl().ncclGetErrorString ? nccl().ncclGetErrorString(r) : nullptr;
    fail(REALN_ERR_BACKEND, what, " failed: ", msg ? msg : "NCCL error", " (", r, ")");
}

}  // namespace realn::cuda
