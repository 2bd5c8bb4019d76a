// The collectives of realn.h (realn_comm_*): NCCL loaded at run time (native/cuda/nccl.hpp) over
// cuda streams. A build without the cuda backend, or a machine without NCCL or a CUDA driver,
// refuses every call with REALN_ERR_UNSUPPORTED naming what is missing (the arguments are checked
// first, so a bad call is still named as such). Run with NCCL on one rank of one H200 (every
// collective and send/recv bit-exact there); never with several ranks.
#include <cstring>

#include "backend.hpp"
#include "error.hpp"

#ifdef REALN_HAVE_CUDA
#include "../../cuda/nccl.hpp"
#endif

struct realn_comm {
    void* nccl_comm;  // ncclComm_t
    int32_t device;
    int32_t nranks;
    int32_t rank;
};

namespace {

#ifdef REALN_HAVE_CUDA
using namespace realn::cuda;

const Nccl& loaded() {
    const Nccl& n = nccl();
    if (!n.unavailable.empty()) realn::fail(REALN_ERR_UNSUPPORTED, "collectives: ", n.unavailable);
    return n;
}
#else
[[noreturn]] void refuse() {
    realn::fail(REALN_ERR_UNSUPPORTED, "collectives: the cuda backend is not compiled into this build (no clang++-14 or nvcc "
                                       "when it was configured), so NCCL cannot be used");
}
#endif

int nccl_type(int32_t dtype) {
    switch (dtype) {
        case REALN_DTYPE_F32: return 7;   // ncclFloat32
        case REALN_DTYPE_BF16: return 9;  // ncclBfloat16
        case REALN_DTYPE_F16: return 6;   // ncclFloat16
        default: realn::fail(REALN_ERR_INVALID_ARGUMENT, "dtype must be F32 (0), BF16 (1) or F16 (2) (got ", dtype, ")");
    }
}

void check_op(int32_t op) {
    REALN_REQUIRE(op >= REALN_REDUCE_SUM && op <= REALN_REDUCE_AVG, "op must be a realn_reduce_op (0..4) (got ", op, ")");
}

// The common checks of a collective call; returns false when count is 0 (nothing to do).
bool check_call(realn_comm_t comm, realn_stream_t stream, int32_t dtype, int64_t count) {
    REALN_NOT_NULL(comm);
    REALN_NOT_NULL(stream);
    REALN_REQUIRE(stream->backend != nullptr && stream->backend->kind == REALN_BACKEND_CUDA,
                  "stream must be a cuda stream (collectives run over NCCL on the device)");
    REALN_REQUIRE(stream->device == comm->device, "stream is on cuda device ", stream->device,
                  " but the communicator on device ", comm->device);
    nccl_type(dtype);
    REALN_NON_NEGATIVE(count);
    return count > 0;
}

void check_rank(const char* what, int32_t r, const realn_comm* comm) {
    REALN_REQUIRE(r >= 0 && r < comm->nranks, what, " must be in [0, nranks=", comm->nranks, ") (got ", r, ")");
}

#ifdef REALN_HAVE_CUDA
ncclComm_t nc(realn_comm_t c) { return static_cast<ncclComm_t>(c->nccl_comm); }
CUstream cs(realn_stream_t s) { return static_cast<CUstream>(s->native); }
size_t n_(int64_t count) { return static_cast<size_t>(count); }
#endif

}  // namespace

extern "C" {

REALN_API realn_status realn_comm_unique_id(uint8_t* id) {
    return realn::guard("realn_comm_unique_id", [&] {
        REALN_NOT_NULL(id);
#ifdef REALN_HAVE_CUDA
        ncclUniqueId uid{};
        nccl_check(loaded().ncclGetUniqueId(&uid), "ncclGetUniqueId");
        std::memcpy(id, uid.internal, REALN_COMM_ID_BYTES);
#else
        refuse();
#endif
    });
}

REALN_API realn_status realn_comm_init(const uint8_t* id, int32_t nranks, int32_t rank, int32_t device, realn_comm_t* out) {
    return realn::guard("realn_comm_init", [&] {
        REALN_NOT_NULL(out);
        *out = nullptr;
        REALN_NOT_NULL(id);
        REALN_REQUIRE(nranks >= 1, "nranks must be >= 1 (got ", nranks, ")");
        REALN_REQUIRE(rank >= 0 && rank < nranks, "rank must be in [0, nranks=", nranks, ") (got ", rank, ")");
        REALN_NON_NEGATIVE(device);
#ifdef REALN_HAVE_CUDA
        const Nccl& n = loaded();
        REALN_REQUIRE(device < driver().devices, "device ", device, " does not exist (", driver().devices, " cuda device(s))");
        realn::cuda_bind_device(device);
        ncclUniqueId uid{};
        std::memcpy(uid.internal, id, REALN_COMM_ID_BYTES);
        ncclComm_t c = nullptr;
        nccl_check(n.ncclCommInitRank(&c, nranks, uid, rank), "ncclCommInitRank");
        *out = new realn_comm{c, device, nranks, rank};
#else
        refuse();
#endif
    });
}

REALN_API realn_status realn_comm_destroy(realn_comm_t comm) {
    return realn::guard("realn_comm_destroy", [&] {
        if (comm == nullptr) return;
#ifdef REALN_HAVE_CUDA
        realn::cuda_bind_device(comm->device);
        const ncclResult_t r = loaded().ncclCommDestroy(nc(comm));
        delete comm;
        nccl_check(r, "ncclCommDestroy");
#else
        delete comm;  // unreachable in practice: no communicator can be made without NCCL
#endif
    });
}

REALN_API realn_status realn_comm_all_reduce(realn_comm_t comm, realn_stream_t stream, int32_t dtype, const void* send,
                                             void* recv, int64_t count, int32_t op) {
    return realn::guard("realn_comm_all_reduce", [&] {
        check_op(op);
        if (!check_call(comm, stream, dtype, count)) return;
        REALN_NOT_NULL(send);
        REALN_NOT_NULL(recv);
#ifdef REALN_HAVE_CUDA
        realn::cuda_bind_device(comm->device);
        nccl_check(loaded().ncclAllReduce(send, recv, n_(count), nccl_type(dtype), op, nc(comm), cs(stream)), "ncclAllReduce");
#else
        refuse();
#endif
    });
}

REALN_API realn_status realn_comm_all_gather(realn_comm_t comm, realn_stream_t stream, int32_t dtype, const void* send,
                                             void* recv, int64_t send_count) {
    return realn::guard("realn_comm_all_gather", [&] {
        if (!check_call(comm, stream, dtype, send_count)) return;
        REALN_NOT_NULL(send);
        REALN_NOT_NULL(recv);
#ifdef REALN_HAVE_CUDA
        realn::cuda_bind_device(comm->device);
        nccl_check(loaded().ncclAllGather(send, recv, n_(send_count), nccl_type(dtype), nc(comm), cs(stream)), "ncclAllGather");
#else
        refuse();
#endif
    });
}

REALN_API realn_status realn_comm_reduce_scatter(realn_comm_t comm, realn_stream_t stream, int32_t dtype, const void* send,
                                                 void* recv, int64_t recv_count, int32_t op) {
    return realn::guard("realn_comm_reduce_scatter", [&] {
        check_op(op);
        if (!check_call(comm, stream, dtype, recv_count)) return;
        REALN_NOT_NULL(send);
        REALN_NOT_NULL(recv);
#ifdef REALN_HAVE_CUDA
        realn::cuda_bind_device(comm->device);
        nccl_check(loaded().ncclReduceScatter(send, recv, n_(recv_count), nccl_type(dtype), op, nc(comm), cs(stream)),
                   "ncclReduceScatter");
#else
        refuse();
#endif
    });
}

REALN_API realn_status realn_comm_broadcast(realn_comm_t comm, realn_stream_t stream, int32_t dtype, const void* send,
                                            void* recv, int64_t count, int32_t root) {
    return realn::guard("realn_comm_broadcast", [&] {
        if (!check_call(comm, stream, dtype, count)) return;
        check_rank("root", root, comm);
        if (comm->rank == root) REALN_NOT_NULL(send);
        REALN_NOT_NULL(recv);
#ifdef REALN_HAVE_CUDA
        realn::cuda_bind_device(comm->device);
        nccl_check(loaded().ncclBroadcast(send, recv, n_(count), nccl_type(dtype), root, nc(comm), cs(stream)), "ncclBroadcast");
#else
        refuse();
#endif
    });
}

REALN_API realn_status realn_comm_send(realn_comm_t comm, realn_stream_t stream, int32_t dtype, const void* send,
                                       int64_t count, int32_t peer) {
    return realn::guard("realn_comm_send", [&] {
        if (!check_call(comm, stream, dtype, count)) return;
        check_rank("peer", peer, comm);
        REALN_NOT_NULL(send);
#ifdef REALN_HAVE_CUDA
        realn::cuda_bind_device(comm->device);
        nccl_check(loaded().ncclSend(send, n_(count), nccl_type(dtype), peer, nc(comm), cs(stream)), "ncclSend");
#else
        refuse();
#endif
    });
}

REALN_API realn_status realn_comm_recv(realn_comm_t comm, realn_stream_t stream, int32_t dtype, void* recv, int64_t count,
                                       int32_t peer) {
    return realn::guard("realn_comm_recv", [&] {
        if (!check_call(comm, stream, dtype, count)) return;
        check_rank("peer", peer, comm);
        REALN_NOT_NULL(recv);
#ifdef REALN_HAVE_CUDA
        realn::cuda_bind_device(comm->device);
        nccl_check(loaded().ncclRecv(recv, n_(count), nccl_type(dtype), peer, nc(comm), cs(stream)), "ncclRecv");
#else
        refuse();
#endif
    });
}

REALN_API realn_status realn_comm_group_start(void) {
    return realn::guard("realn_comm_group_start", [&] {
#ifdef REALN_HAVE_CUDA
        nccl_check(loaded().ncclGroupStart(), "ncclGroupStart");
#else
        refuse();
#endif
    });
}

REALN_API realn_status realn_comm_group_end(void) {
    return realn::guard("realn_comm_group_end", [&] {
#ifdef REALN_HAVE_CUDA
        nccl_check(loaded().ncclGroupEnd(), "ncclGroupEnd");
#else
        refuse();
#endif
    });
}

}  // extern "C"
