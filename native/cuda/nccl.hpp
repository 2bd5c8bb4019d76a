// NCCL, loaded at run time with dlopen (libnccl.so.2, or REALN_NCCL_LIBRARY): no NCCL header and no
// link-time dependency. The declarations are the documented ABI of the few functions the
// collectives (core/collectives.cpp) call (NCCL API reference, nccl.h): ncclResult_t is an int
// (ncclSuccess = 0), ncclComm_t an opaque pointer, ncclUniqueId a 128-byte struct passed by value,
// the stream a CUstream. Run on one GPU only (one rank: ctest cuda_backend on an H200); never
// with several ranks.
#pragma once

#include <cstddef>
#include <string>

#include "driver.hpp"

namespace realn::cuda {

using ncclResult_t = int;
using ncclComm_t = struct ncclComm*;
struct ncclUniqueId {
    char internal[128];  // NCCL_UNIQUE_ID_BYTES
};
constexpr ncclResult_t ncclSuccess = 0;
// ncclDataType_t and ncclRedOp_t values (nccl.h).
constexpr int ncclUint8 = 1, ncclFloat16 = 6, ncclFloat32 = 7, ncclBfloat16 = 9;
constexpr int ncclSum = 0, ncclProd = 1, ncclMax = 2, ncclMin = 3, ncclAvg = 4;

struct Nccl {
    ncclResult_t (*ncclGetUniqueId)(ncclUniqueId*);
    ncclResult_t (*ncclCommInitRank)(ncclComm_t*, int, ncclUniqueId, int);
    ncclResult_t (*ncclCommDestroy)(ncclComm_t);
    ncclResult_t (*ncclAllReduce)(const void*, void*, size_t, int, int, ncclComm_t, CUstream);
    ncclResult_t (*ncclAllGather)(const void*, void*, size_t, int, ncclComm_t, CUstream);
    ncclResult_t (*ncclReduceScatter)(const void*, void*, size_t, int, int, ncclComm_t, CUstream);
    ncclResult_t (*ncclBroadcast)(const void*, void*, size_t, int, int, ncclComm_t, CUstream);
    ncclResult_t (*ncclSend)(const void*, size_t, int, int, ncclComm_t, CUstream);
    ncclResult_t (*ncclRecv)(void*, size_t, int, int, ncclComm_t, CUstream);
    ncclResult_t (*ncclGroupStart)();
    ncclResult_t (*ncclGroupEnd)();
    const char* (*ncclGetErrorString)(ncclResult_t);

    std::string unavailable;  // why NCCL cannot be used ("" when it can)
};

// Loads NCCL once (never throws); `unavailable` names what is missing: the library, a symbol, or
// the CUDA driver (NCCL needs a GPU).
const Nccl& nccl();

// Throws realn::Error (REALN_ERR_BACKEND) naming the call and NCCL's message.
void nccl_check(ncclResult_t r, const char* what);

}  // namespace realn::cuda
