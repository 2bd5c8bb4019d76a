// The CPU backend's table: fp32 everything plus bf16 weights for gemm/linear/embedding/rmsnorm (forward and backward)
// and a bf16 KV cache (kv_store, attention_decode), executed synchronously on the calling thread with
// OpenMP parallel loops and OpenBLAS (OpenMP build, so BLAS shares our thread pool and runs
// single-threaded when called inside a parallel region). This backend is the reference every
// other backend is tested against.
#include <cstdlib>
#include <cstring>

#include "../core/error.hpp"
#include "cpu_ops.hpp"

namespace realn {
namespace {

int32_t cpu_device_count() { return 1; }

bool cpu_supports(Op op, int32_t dtype) {
    switch (op) {
        // Byte-level ops ignore the dtype; convert handles every dtype pair itself.
        case Op::IntervalGather:
        case Op::IntervalScatter:
        case Op::HashBytes:
        case Op::Copy:
        case Op::Convert:
            return true;
        // bf16 weights, fp32 activations (realn.h "bf16 on the CPU backend").
        case Op::Gemm:
        case Op::LinearFwd:
        case Op::LinearBwd:
        case Op::EmbeddingFwd:
        case Op::EmbeddingBwd:
        case Op::RmsnormFwd:
        case Op::RmsnormBwd:
        // A bf16 KV cache (k, v, q, out fp32).
        case Op::KvStore:
        case Op::AttentionDecode:
            return dtype == REALN_DTYPE_F32 || dtype == REALN_DTYPE_BF16;
        default:
            return dtype == REALN_DTYPE_F32;
    }
}

void* cpu_stream_create(int32_t) { return nullptr; }
void cpu_stream_synchronize(realn_stream_t) {}
void cpu_stream_destroy(void*) {}

void* cpu_alloc(realn_stream_t, int64_t bytes) {
    // 64-byte aligned for SIMD; zero-size allocations still return a unique pointer.
    size_t size = (static_cast<size_t>(bytes) + 63) / 64 * 64;
    void* p = std::aligned_alloc(64, size == 0 ? 64 : size);
    if (p == nullptr) fail(REALN_ERR_OUT_OF_MEMORY, "cannot allocate ", bytes, " bytes of host memory");
    return p;
}
void cpu_free(realn_stream_t, void* p) { std::free(p); }

const Backend kCpu = {
    "cpu",
    REALN_BACKEND_CPU,
    cpu_device_count,
    cpu_supports,
    cpu_stream_create,
    cpu_stream_synchronize,
    cpu_stream_destroy,
    cpu_alloc,
    cpu_free,
    cpu::copy,
    cpu::fill_f32,
    cpu::interval_gather,
    cpu::interval_scatter,
    cpu::hash_bytes,
    cpu::gemm,
    cpu::linear_fwd,
    cpu::linear_bwd,
    cpu::axpby,
    cpu::add,
    cpu::sumsq,
    cpu::scale,
    cpu::count_nonfinite,
    cpu::convert,
    cpu::embedding_fwd,
    cpu::embedding_bwd,
    cpu::rmsnorm_fwd,
    cpu::rmsnorm_bwd,
    cpu::rotary,
    cpu::swiglu_fwd,
    cpu::swiglu_bwd,
    cpu::attention_fwd,
    cpu::attention_bwd,
    cpu::kv_store,
    cpu::attention_decode,
    cpu::logprobs_fwd,
    cpu::logprobs_bwd,
    cpu::cross_entropy_fwd,
    cpu::cross_entropy_bwd,
    cpu::adamw,
    cpu::sample,
    cpu::gae,
};

}  // namespace

const Backend* cpu_backend() { return &kCpu; }

}  // namespace realn
