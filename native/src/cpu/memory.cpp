// Plain copies and fills on the CPU backend. Large copies are split across the OpenMP threads;
// on the development machine one thread already saturates memory (~11 GB/s), a second adds a
// little on other hosts with more memory channels.
#include <cstring>

#include "cpu_ops.hpp"
#include "parallel.hpp"

namespace realn::cpu {

void copy(realn_stream_t, void* dst, const void* src, int64_t bytes, int32_t) {
    parallel_memcpy(dst, src, bytes);
}

void fill_f32(realn_stream_t, float* dst, int64_t n, float value) {
#pragma omp parallel for simd schedule(static) if (n > (1 << 16))
    for (int64_t i = 0; i < n; ++i) dst[i] = value;
}

}  // namespace realn::cpu
