// Generalised advantage estimation over packed sequences: one backward recurrence per sequence,
// sequences in parallel (dynamic schedule: lengths are ragged). The recurrence runs in double so
// long sequences with gamma*lambda near 1 do not accumulate fp32 rounding.
#include "cpu_ops.hpp"

namespace realn::cpu {

void gae(realn_stream_t, const float* rewards, const float* values, const int32_t* cu_seqlens,
         int64_t nseq, float gamma, float lambda, float* adv, float* ret) {
    const double g = gamma, gl = double(gamma) * double(lambda);
#pragma omp parallel for schedule(dynamic, 16) if (nseq > 64)
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
