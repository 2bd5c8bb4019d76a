// A CPU emulation of the CUDA execution model, just enough to run native/cuda/kernels/*.cu as host
// C++ (common.cuh's REALN_CUDA_EMULATE spelling) in ctest `cuda_kernels_emulated`: every GPU thread
// of a block is an OS thread; __syncthreads and warp shuffles are real barriers (with a deadline:
// a thread that skips one makes the test abort naming it, instead of hanging); blocks run one
// after another, so a kernel's function statics stand for its shared memory. Checks indexing,
// masking, barrier placement and reduction logic; it cannot show GPU timing, memory-model or
// hardware-approximation effects (exp2/log2 are the C library's here).
#pragma once

#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

namespace realn::emu {

struct Dim3 {
    unsigned x = 0, y = 0, z = 0;
};
inline thread_local Dim3 threadIdx, blockIdx, blockDim, gridDim;

// A reusable barrier for n threads whose wait gives up after a deadline.
class Barrier {
public:
    explicit Barrier(unsigned n) : n_(n) {}
    void wait(const char* what) {
        std::unique_lock<std::mutex> lock(mu_);
        const unsigned long long gen = gen_;
        if (++waiting_ == n_) {
            waiting_ = 0;
            ++gen_;
            cv_.notify_all();
            return;
        }
        if (!cv_.wait_for(lock, std::chrono::seconds(60), [&] { return gen_ != gen; })) {
            std::fprintf(stderr, "emulated kernel: %s not reached by every thread within 60 s (a thread skipped it or "
                                 "returned early)\n", what);
            std::abort();
        }
    }

private:
    std::mutex mu_;
    std::condition_variable cv_;
    unsigned n_, waiting_ = 0;
    unsigned long long gen_ = 0;
};

struct Warp {
    Barrier bar{32};
    float slot[32] = {};
};

struct Launch {
    explicit Launch(unsigned threads) : sync(threads), block_end(threads), warps(threads / 32) {
        for (auto& w : warps) w = std::make_unique<Warp>();
    }
    Barrier sync, block_end;
    std::vector<std::unique_ptr<Warp>> warps;
};
inline Launch* current = nullptr;

inline void syncthreads() { current->sync.wait("__syncthreads"); }

inline float exchange(float v, int src_lane) {
    Warp& w = *current->warps[threadIdx.x / 32];
    w.slot[threadIdx.x % 32] = v;
    w.bar.wait("a warp shuffle");
    const float r = w.slot[src_lane & 31];
    w.bar.wait("a warp shuffle");
    return r;
}
inline float shfl_xor(float v, int lane_mask) { return exchange(v, static_cast<int>(threadIdx.x % 32) ^ lane_mask); }
inline float shfl(float v, int src_lane) { return exchange(v, src_lane); }

inline float exp2_(float x) { return std::exp2(x); }
inline float log2_(float x) { return std::log2(x); }
inline float sin_(float x) { return std::sin(x); }
inline float cos_(float x) { return std::cos(x); }

// Runs body (one kernel call) for every block of grid (gx, gy) with `threads` threads per block.
inline void launch(unsigned gx, unsigned gy, unsigned threads, const std::function<void()>& body) {
    if (threads % 32 != 0 || threads > 1024) {
        std::fprintf(stderr, "emulated launch: %u threads per block (want a multiple of 32, <= 1024)\n", threads);
        std::abort();
    }
    Launch state(threads);
    current = &state;
    std::vector<std::thread> pool;
    for (unsigned t = 0; t < threads; ++t)
        pool.emplace_back([&, t] {
            threadIdx = {t, 0, 0};
            blockDim = {threads, 1, 1};
            gridDim = {gx, gy, 1};
            for (unsigned y = 0; y < gy; ++y)
                for (unsigned x = 0; x < gx; ++x) {
                    blockIdx = {x, y, 0};
                    body();
                    state.block_end.wait("the end of the block");
                }
        });
    for (auto& th : pool) th.join();
    current = nullptr;
}

}  // namespace realn::emu
