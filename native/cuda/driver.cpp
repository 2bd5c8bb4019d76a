// dlopen of the CUDA driver and cuBLAS (see driver.hpp). Library names: libcuda.so.1 (the
// driver's soname on every Linux distribution); cuBLAS from REALN_CUBLAS_LIBRARY if set, else
// libcublas.so.13 / .12 / .11 / libcublas.so on the loader's search path (LD_LIBRARY_PATH: a
// PyTorch install keeps it in site-packages/nvidia/cublas/lib).
#include "driver.hpp"

#include <dlfcn.h>

#include <cstdlib>
#include <mutex>

#include "../src/core/error.hpp"

namespace realn::cuda {
namespace {

template <typename Fn>
bool sym(void* lib, const char* name, Fn& out, std::string& missing) {
    out = reinterpret_cast<Fn>(dlsym(lib, name));
    if (out == nullptr && missing.empty()) missing = name;
    return out != nullptr;
}

Driver load() {
    Driver d{};
    void* lib = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
    if (lib == nullptr) {
        const char* e = dlerror();
        d.unavailable = std::string("no CUDA driver (") + (e ? e : "libcuda.so.1 not found") + ")";
        return d;
    }
    std::string missing;
    sym(lib, "cuInit", d.cuInit, missing);
    sym(lib, "cuDeviceGetCount", d.cuDeviceGetCount, missing);
    sym(lib, "cuDeviceGet", d.cuDeviceGet, missing);
    sym(lib, "cuDevicePrimaryCtxRetain", d.cuDevicePrimaryCtxRetain, missing);
    sym(lib, "cuCtxSetCurrent", d.cuCtxSetCurrent, missing);
    sym(lib, "cuGetErrorString", d.cuGetErrorString, missing);
    sym(lib, "cuModuleLoadDataEx", d.cuModuleLoadDataEx, missing);
    sym(lib, "cuModuleGetFunction", d.cuModuleGetFunction, missing);
    sym(lib, "cuLaunchKernel", d.cuLaunchKernel, missing);
    sym(lib, "cuFuncSetAttribute", d.cuFuncSetAttribute, missing);
    sym(lib, "cuStreamCreate", d.cuStreamCreate, missing);
    sym(lib, "cuStreamSynchronize", d.cuStreamSynchronize, missing);
    sym(lib, "cuStreamDestroy_v2", d.cuStreamDestroy, missing);
    sym(lib, "cuMemAlloc_v2", d.cuMemAlloc, missing);
    sym(lib, "cuMemFree_v2", d.cuMemFree, missing);
    sym(lib, "cuMemcpyHtoDAsync_v2", d.cuMemcpyHtoDAsync, missing);
    sym(lib, "cuMemcpyDtoHAsync_v2", d.cuMemcpyDtoHAsync, missing);
    sym(lib, "cuMemcpyDtoDAsync_v2", d.cuMemcpyDtoDAsync, missing);
    if (!missing.empty()) {
        d.unavailable = "the CUDA driver libcuda.so.1 lacks " + missing + " (driver too old)";
        return d;
    }
    std::string ipc_missing;  // optional: realn_ipc_* name what is missing when used
    sym(lib, "cuIpcGetMemHandle", d.cuIpcGetMemHandle, ipc_missing);
    if (!sym(lib, "cuIpcOpenMemHandle_v2", d.cuIpcOpenMemHandle, ipc_missing)) {
        ipc_missing.clear();
        sym(lib, "cuIpcGetMemHandle", d.cuIpcGetMemHandle, ipc_missing);
        sym(lib, "cuIpcOpenMemHandle", d.cuIpcOpenMemHandle, ipc_missing);
    }
    sym(lib, "cuIpcCloseMemHandle", d.cuIpcCloseMemHandle, ipc_missing);
    if (!ipc_missing.empty()) d.cuIpcGetMemHandle = nullptr;  // all or nothing
    CUresult r = d.cuInit(0);
    if (r != CUDA_SUCCESS) {
        const char* msg = nullptr;
        d.cuGetErrorString(r, &msg);
        d.unavailable = std::string("cuInit failed: ") + (msg ? msg : "error " + std::to_string(r));
        return d;
    }
    int n = 0;
    if (d.cuDeviceGetCount(&n) != CUDA_SUCCESS || n <= 0) {
        d.unavailable = "the CUDA driver reports no device";
        return d;
    }
    d.devices = n;

    const char* names[] = {std::getenv("REALN_CUBLAS_LIBRARY"), "libcublas.so.13", "libcublas.so.12",
                           "libcublas.so.11", "libcublas.so"};
    void* blas = nullptr;
    std::string tried;
    for (const char* name : names) {
        if (name == nullptr || *name == '\0') continue;
        blas = dlopen(name, RTLD_NOW | RTLD_LOCAL);
        if (blas) break;
        tried += tried.empty() ? name : std::string(", ") + name;
    }
    if (blas == nullptr) {
        d.cublas_unavailable = "cuBLAS not found (tried " + tried + "; set REALN_CUBLAS_LIBRARY or LD_LIBRARY_PATH)";
        return d;
    }
    std::string bmissing;
    sym(blas, "cublasCreate_v2", d.cublasCreate, bmissing);
    sym(blas, "cublasDestroy_v2", d.cublasDestroy, bmissing);
    sym(blas, "cublasSetStream_v2", d.cublasSetStream, bmissing);
    sym(blas, "cublasGemmStridedBatchedEx", d.cublasGemmStridedBatchedEx, bmissing);
    if (!bmissing.empty()) {
        d.cublas_unavailable = "cuBLAS lacks " + bmissing;
        d.cublasCreate = nullptr;
    }
    return d;
}

}  // namespace

const Driver& driver() {
    static const Driver d = load();
    return d;
}

void check(CUresult r, const char* what) {
    if (r == CUDA_SUCCESS) return;
    const char* msg = nullptr;
    if (driver().cuGetErrorString) driver().cuGetErrorString(r, &msg);
    fail(REALN_ERR_BACKEND, what, " failed: ", msg ? msg : "CUDA error", " (", r, ")");
}

}  // namespace realn::cuda
