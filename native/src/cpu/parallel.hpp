// Small helpers for splitting memory-bound work across OpenMP threads.
#pragma once

#include <omp.h>

#include <algorithm>
#include <cstdint>
#include <cstring>

namespace realn::cpu {

// Below this many bytes a copy stays on one thread: thread wake-up costs more than it saves.
constexpr int64_t kParallelCopyBytes = int64_t(4) << 20;

inline void parallel_memcpy(void* dst, const void* src, int64_t bytes) {
    if (bytes < kParallelCopyBytes || omp_get_max_threads() == 1) {
        std::memcpy(dst, src, static_cast<size_t>(bytes));
        return;
    }
#pragma omp parallel
    {
        const int64_t nt = omp_get_num_threads(), t = omp_get_thread_num();
        // 4 KiB-aligned chunk boundaries keep each thread on whole pages.
        const int64_t chunk = ((bytes + nt - 1) / nt + 4095) / 4096 * 4096;
        const int64_t lo = std::min(bytes, t * chunk), hi = std::min(bytes, lo + chunk);
        if (hi > lo)
            std::memcpy(static_cast<char*>(dst) + lo, static_cast<const char*>(src) + lo,
                        static_cast<size_t>(hi - lo));
    }
}

}  // namespace realn::cpu
