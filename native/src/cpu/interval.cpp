// Reallocation primitives: gather many [offset, length) byte intervals of a flat parameter
// buffer into a packed staging buffer, or scatter them back. The work is split by STAGING bytes,
// not by interval, so one huge interval and a million tiny ones both spread evenly across
// threads: each thread takes a contiguous byte range of the staging buffer, finds its first
// interval by binary search over the prefix sums, and memcpy's the pieces it covers.
#include <omp.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "cpu_ops.hpp"
#include "parallel.hpp"

namespace realn::cpu {
namespace {

// dir = 0: gather (staging <- flat), dir = 1: scatter (flat <- staging).
void interval_copy(char* flat, char* staging, const int64_t* offsets, const int64_t* lengths,
                   int64_t count, int dir) {
    if (count == 1) {
        char* f = flat + offsets[0];
        if (dir == 0) parallel_memcpy(staging, f, lengths[0]);
        else parallel_memcpy(f, staging, lengths[0]);
        return;
    }
    std::vector<int64_t> start(static_cast<size_t>(count) + 1);
    start[0] = 0;
    for (int64_t i = 0; i < count; ++i) start[i + 1] = start[i] + lengths[i];
    const int64_t total = start[count];
    if (total == 0) return;
    const int nthreads = total < kParallelCopyBytes ? 1 : omp_get_max_threads();
#pragma omp parallel num_threads(nthreads)
    {
        const int64_t nt = omp_get_num_threads(), t = omp_get_thread_num();
        const int64_t chunk = (total + nt - 1) / nt;
        const int64_t lo = std::min(total, t * chunk), hi = std::min(total, lo + chunk);
        if (hi > lo) {
            // First interval whose end is past lo.
            int64_t i = std::upper_bound(start.begin(), start.end(), lo) - start.begin() - 1;
            int64_t pos = lo;
            while (pos < hi && i < count) {
                const int64_t a = std::max(pos, start[i]);
                const int64_t b = std::min(hi, start[i + 1]);
                if (b > a) {
                    char* f = flat + offsets[i] + (a - start[i]);
                    char* st = staging + a;
                    if (dir == 0) std::memcpy(st, f, static_cast<size_t>(b - a));
                    else std::memcpy(f, st, static_cast<size_t>(b - a));
                }
                pos = b;
                ++i;
            }
        }
    }
}

}  // namespace

void interval_gather(realn_stream_t, void* staging, const void* flat, const int64_t* offsets,
                     const int64_t* lengths, int64_t count) {
    interval_copy(const_cast<char*>(static_cast<const char*>(flat)), static_cast<char*>(staging),
                  offsets, lengths, count, 0);
}

void interval_scatter(realn_stream_t, void* flat, const void* staging, const int64_t* offsets,
                      const int64_t* lengths, int64_t count) {
    interval_copy(static_cast<char*>(flat), const_cast<char*>(static_cast<const char*>(staging)),
                  offsets, lengths, count, 1);
}

// realn hash v1: the input is cut into 1 MiB chunks; each chunk is folded 8 bytes at a time
// (little-endian words, the tail zero-padded) with a multiply-xorshift mix; the chunk hashes
// and the total length are folded in order. Chunks hash in parallel, the result does not
// depend on the thread count, and any backend can reproduce it.
namespace {
constexpr uint64_t kMul = 0x9E3779B97F4A7C15ull;
inline uint64_t mix(uint64_t h, uint64_t w) {
    h ^= w;
    h *= kMul;
    h ^= h >> 29;
    return h;
}
uint64_t hash_chunk(const unsigned char* p, int64_t n) {
    uint64_t h = 0xCBF29CE484222325ull;
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        uint64_t w;
        std::memcpy(&w, p + i, 8);
        h = mix(h, w);
    }
    if (i < n) {
        uint64_t w = 0;
        std::memcpy(&w, p + i, static_cast<size_t>(n - i));
        h = mix(h, w);
    }
    return h;
}
}  // namespace

uint64_t hash_bytes(realn_stream_t, const void* data, int64_t bytes) {
    constexpr int64_t kChunk = int64_t(1) << 20;
    const auto* p = static_cast<const unsigned char*>(data);
    const int64_t chunks = (bytes + kChunk - 1) / kChunk;
    std::vector<uint64_t> hs(static_cast<size_t>(chunks));
#pragma omp parallel for schedule(static) if (chunks > 4)
    for (int64_t c = 0; c < chunks; ++c)
        hs[c] = hash_chunk(p + c * kChunk, std::min(kChunk, bytes - c * kChunk));
    uint64_t h = mix(0x84222325CBF29CE4ull, static_cast<uint64_t>(bytes));
    for (uint64_t x : hs) h = mix(h, x);
    return h;
}

}  // namespace realn::cpu
