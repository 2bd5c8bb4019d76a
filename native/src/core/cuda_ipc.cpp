// realn_ipc_* of realn.h: CUDA IPC memory handles through the driver API loaded at run time
// (native/cuda/driver.hpp). Streams of other backends, and builds without the cuda backend, are
// refused with REALN_ERR_UNSUPPORTED naming why. Its cases pass on an NVIDIA H200 (docs/performance.md).
#include <cstring>

#include "backend.hpp"
#include "error.hpp"

#ifdef REALN_HAVE_CUDA
#include "../../cuda/driver.hpp"
#endif

namespace {

// The checks every call shares: a live stream of the cuda backend, whose driver has the IPC calls.
void check_stream(realn_stream_t stream) {
    REALN_NOT_NULL(stream);
    REALN_REQUIRE(stream->backend != nullptr, "stream is not initialised (destroyed twice?)");
    if (stream->backend->kind != REALN_BACKEND_CUDA)
        realn::fail(REALN_ERR_UNSUPPORTED, "IPC handles are device memory's: the '", stream->backend->name,
                    "' backend has none (host memory of another process: realn_process_read)");
#ifdef REALN_HAVE_CUDA
    if (realn::cuda::driver().cuIpcGetMemHandle == nullptr)
        realn::fail(REALN_ERR_UNSUPPORTED, "the CUDA driver lacks cuIpcGetMemHandle / cuIpcOpenMemHandle / cuIpcCloseMemHandle");
    realn::cuda_bind_device(stream->device);
#endif
}

}  // namespace

extern "C" {

REALN_API realn_status realn_ipc_handle(realn_stream_t stream, const void* device_ptr, uint8_t* handle) {
    return realn::guard("realn_ipc_handle", [&] {
        REALN_NOT_NULL(device_ptr);
        REALN_NOT_NULL(handle);
        check_stream(stream);
#ifdef REALN_HAVE_CUDA
        realn::cuda::CUipcMemHandle h{};
        realn::cuda::check(realn::cuda::driver().cuIpcGetMemHandle(&h, reinterpret_cast<realn::cuda::CUdeviceptr>(device_ptr)),
                           "cuIpcGetMemHandle");
        std::memcpy(handle, h.reserved, REALN_IPC_HANDLE_BYTES);
#endif
    });
}

REALN_API realn_status realn_ipc_open(realn_stream_t stream, const uint8_t* handle, void** device_ptr) {
    return realn::guard("realn_ipc_open", [&] {
        REALN_NOT_NULL(device_ptr);
        *device_ptr = nullptr;
        REALN_NOT_NULL(handle);
        check_stream(stream);
#ifdef REALN_HAVE_CUDA
        realn::cuda::CUipcMemHandle h{};
        std::memcpy(h.reserved, handle, REALN_IPC_HANDLE_BYTES);
        realn::cuda::CUdeviceptr p = 0;
        realn::cuda::check(realn::cuda::driver().cuIpcOpenMemHandle(&p, h, realn::cuda::CU_IPC_MEM_LAZY_ENABLE_PEER_ACCESS),
                           "cuIpcOpenMemHandle");
        *device_ptr = reinterpret_cast<void*>(p);
#endif
    });
}

REALN_API realn_status realn_ipc_close(realn_stream_t stream, void* device_ptr) {
    return realn::guard("realn_ipc_close", [&] {
        REALN_NOT_NULL(device_ptr);
        check_stream(stream);
#ifdef REALN_HAVE_CUDA
        realn::cuda::check(realn::cuda::driver().cuIpcCloseMemHandle(reinterpret_cast<realn::cuda::CUdeviceptr>(device_ptr)),
                           "cuIpcCloseMemHandle");
#endif
    });
}

}  // extern "C"
