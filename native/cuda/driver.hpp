// The CUDA driver API and cuBLAS, loaded at run time with dlopen: no CUDA toolkit header and no
// link-time dependency, so librealn builds and loads on every machine and a machine without an
// NVIDIA driver only loses the cuda backend. The declarations below are the documented ABI of the
// few functions the backend calls (CUDA driver API reference; cuBLAS library reference): opaque
// handles are pointers, CUdeviceptr is a 64-bit integer, CUresult / cublasStatus_t are ints.
#pragma once

#include <cstdint>
#include <string>

namespace realn::cuda {

using CUresult = int;
using CUdevice = int;
using CUdeviceptr = unsigned long long;
using CUcontext = struct CUctx_st*;
using CUmodule = struct CUmod_st*;
using CUfunction = struct CUfunc_st*;
using CUstream = struct CUstream_st*;
using cublasHandle_t = struct cublasContext*;
using cublasStatus_t = int;

constexpr CUresult CUDA_SUCCESS = 0;
// CUipcMemHandle: 64 opaque bytes (CU_IPC_HANDLE_SIZE), passed by value; CU_IPC_MEM_LAZY_ENABLE_PEER_ACCESS.
struct CUipcMemHandle {
    char reserved[64];
};
constexpr unsigned CU_IPC_MEM_LAZY_ENABLE_PEER_ACCESS = 1;
constexpr unsigned CU_STREAM_NON_BLOCKING = 1;
// CUfunction_attribute (cuda.h): the dynamic shared memory a kernel may be launched with (above 48 KiB
// only after this opt-in).
constexpr int CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES = 8;
// CUjit_option values (cuda.h): the error log of a failed PTX JIT.
constexpr int CU_JIT_ERROR_LOG_BUFFER = 5;
constexpr int CU_JIT_ERROR_LOG_BUFFER_SIZE_BYTES = 6;
// cublasOperation_t, cudaDataType_t, cublasComputeType_t, cublasGemmAlgo_t (cublas_api.h, library_types.h).
constexpr int CUBLAS_OP_N = 0, CUBLAS_OP_T = 1;
constexpr int CUDA_R_32F = 0, CUDA_R_16BF = 14;
constexpr int CUBLAS_COMPUTE_32F = 68;
constexpr int CUBLAS_GEMM_DEFAULT = -1;

struct Driver {
    CUresult (*cuInit)(unsigned);
    CUresult (*cuDeviceGetCount)(int*);
    CUresult (*cuDeviceGet)(CUdevice*, int);
    CUresult (*cuDevicePrimaryCtxRetain)(CUcontext*, CUdevice);
    CUresult (*cuCtxSetCurrent)(CUcontext);
    CUresult (*cuGetErrorString)(CUresult, const char**);
    CUresult (*cuModuleLoadDataEx)(CUmodule*, const void*, unsigned, int*, void**);
    CUresult (*cuModuleGetFunction)(CUfunction*, CUmodule, const char*);
    CUresult (*cuLaunchKernel)(CUfunction, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned,
                               unsigned, CUstream, void**, void**);
    CUresult (*cuFuncSetAttribute)(CUfunction, int, int);
    CUresult (*cuStreamCreate)(CUstream*, unsigned);
    CUresult (*cuStreamSynchronize)(CUstream);
    CUresult (*cuStreamDestroy)(CUstream);
    CUresult (*cuMemAlloc)(CUdeviceptr*, size_t);
    CUresult (*cuMemFree)(CUdeviceptr);
    CUresult (*cuMemcpyHtoDAsync)(CUdeviceptr, const void*, size_t, CUstream);
    CUresult (*cuMemcpyDtoHAsync)(void*, CUdeviceptr, size_t, CUstream);
    CUresult (*cuMemcpyDtoDAsync)(CUdeviceptr, CUdeviceptr, size_t, CUstream);

    // cuBLAS (optional until the first GEMM: a driver without cuBLAS still runs the other ops).
    // CUDA IPC (optional: a driver without them only loses realn_ipc_*).
    CUresult (*cuIpcGetMemHandle)(CUipcMemHandle*, CUdeviceptr);
    CUresult (*cuIpcOpenMemHandle)(CUdeviceptr*, CUipcMemHandle, unsigned);
    CUresult (*cuIpcCloseMemHandle)(CUdeviceptr);

    cublasStatus_t (*cublasCreate)(cublasHandle_t*);
    cublasStatus_t (*cublasDestroy)(cublasHandle_t);
    cublasStatus_t (*cublasSetStream)(cublasHandle_t, CUstream);
    cublasStatus_t (*cublasGemmStridedBatchedEx)(cublasHandle_t, int, int, int, int, int, const void*,
                                                 const void*, int, int, long long, const void*, int, int,
                                                 long long, const void*, void*, int, int, long long, int,
                                                 int, int);

    int devices = 0;
    std::string unavailable;  // why there is no usable device ("" when there is one)
    std::string cublas_unavailable;
};

// Loads libcuda.so.1 (and cuBLAS) once; never throws. devices == 0 with `unavailable` set when
// the driver library, its symbols or a device are missing.
const Driver& driver();

// Throws realn::Error (REALN_ERR_BACKEND) naming the call and the driver's message.
void check(CUresult r, const char* what);

}  // namespace realn::cuda

namespace realn {
// Makes device's primary context current on this thread (backend_cuda.cpp).
void cuda_bind_device(int32_t device);
}  // namespace realn
