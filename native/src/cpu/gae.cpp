// Generalised advantage estimation over packed sequences: one backward recurrence per
// sequence (sequences in parallel). Sequence i's values start at cu[i] + i (one bootstrap value
// after each sequence).
#include "cpu_ops.hpp"

namespace realn::cpu {

void gae(realn_stream_t, const float* rewards, const float* values, const int32_t* cu, int64_t nseq,
         float gamma, float lambda, float* adv, float* ret) {
#pragma omp parallel for schedule(dynamic, 4) if (nseq > 64)
    for (int64_t s = 0; s < nseq; ++s) {
        const int64_t a = cu[s], b = cu[s + 1];
        const float* V = values + a + s;  // V[0 .. L] (V[L] = bootstrap)
        double A = 0.0;
        for (int64_t t = b - 1; t >= a; --t) {
            const int64_t j = t - a;
            const double delta = double(rewards[t]) + double(gamma) * V[j + 1] - V[j];
            A = delta + double(gamma) * double(lambda) * A;
            adv[t] = static_cast<float>(A);
            ret[t] = static_cast<float>(A + V[j]);
        }
    }
}

}  // namespace realn::cpu
