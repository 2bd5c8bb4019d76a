// Generalised advantage estimation over packed sequences: one backward recurrence per sequence,
// sequences in parallel (dynamic schedule: lengths are ragged) once the batch is large enough to
// pay for an OpenMP team. The recurrence runs in double so long sequences with gamma*lambda near 1
// do not accumulate fp32 rounding; each sequence's result is the same serial or in parallel.
//
// Why a token threshold, not a sequence count: the op runs on the master, which under a plan holds
// no model while its worker processes compute on every core. A parallel region there has to wake
// the master's OpenMP threads on cores the workers use and leaves them spinning on those cores
// after it ends; for an RL batch (ppo-tiny: 256 sequences, ~1.4k tokens, a few microseconds of
// work) that cost the trainer's actor_train ~7-12 ms per iteration of an async run, where the
// generation worker is busy at the same time (measured under SCHED_FIFO on the 2-core host). One
// thread does ~1M tokens in about a millisecond, so the team only pays from there on.
#include "cpu_ops.hpp"

namespace realn::cpu {

// Fewer packed tokens than this: one thread (see above).
constexpr int64_t kParallelTokens = int64_t(1) << 20;

void gae(realn_stream_t, const float* rewards, const float* values, const int32_t* cu_seqlens,
         int64_t nseq, float gamma, float lambda, float* adv, float* ret) {
    const double g = gamma, gl = double(gamma) * double(lambda);
#pragma omp parallel for schedule(dynamic, 16) if (nseq > 64 && cu_seqlens[nseq] >= kParallelTokens)
    for (int64_t s = 0; s < nseq; ++s) {
        const int64_t lo = cu_seqlens[s], hi = cu_seqlens[s + 1];
        const float* V = values + lo + s;  // this sequence's values, bootstrap at V[hi - lo]
        double a = 0.0;
        for (int64_t t = hi - 1; t >= lo; --t) {
            const int64_t j = t - lo;
            const double delta = double(rewards[t]) + g * double(V[j + 1]) - double(V[j]);
            a = delta + gl * a;
            adv[t] = static_cast<float>(a);
            ret[t] = static_cast<float>(a + double(V[j]));
        }
    }
}

}  // namespace realn::cpu
