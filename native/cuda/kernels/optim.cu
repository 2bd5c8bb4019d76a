// AdamW (fp32 master, moments) and GAE of the CUDA backend, with the CPU backend's formulas.
#include "common.cuh"

REALN_GLOBAL void realn_adamw(float* p, const float* g, float* m, float* v, i64 n, float b1, float b2,
                              float eps, float grad_scale, float step_size, float inv_sqrt_bc2, float decay) {
    const float c1 = 1.0f - b1, c2 = 1.0f - b2;
    REALN_FOR(i, n) {
        const float gi = g[i] * grad_scale;
        const float mi = b1 * m[i] + c1 * gi;
        const float vi = b2 * v[i] + c2 * gi * gi;
        m[i] = mi;
        v[i] = vi;
        const float pi = p[i];
        p[i] = pi - step_size * mi / (realn_sqrt(vi) * inv_sqrt_bc2 + eps) - decay * pi;
    }
}

// One thread per sequence, backwards over its steps, in double as on the CPU backend. cu_seqlens is
// a device copy of the host array the ABI takes.
REALN_GLOBAL void realn_gae(const float* rewards, const float* values, const int* cu_seqlens, i64 nseq,
                            float gamma, float lambda, float* adv, float* ret) {
    const double g = gamma, gl = (double)gamma * (double)lambda;
    REALN_FOR(s, nseq) {
        const i64 lo = cu_seqlens[s], hi = cu_seqlens[s + 1];
        const float* vs = values + lo + s;  // this sequence's values, plus its bootstrap value at [hi - lo]
        double a = 0.0;
        for (i64 t = hi - 1; t >= lo; --t) {
            const i64 j = t - lo;
            const double delta = (double)rewards[t] + g * (double)vs[j + 1] - (double)vs[j];
            a = delta + gl * a;
            adv[t] = (float)a;
            ret[t] = (float)(a + (double)vs[j]);
        }
    }
}
