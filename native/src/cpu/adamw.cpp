// AdamW over one flat fp32 parameter buffer (the shard's contiguous parameter/grad/m/v buffers).
// Decoupled weight decay uses the old parameter value, as realn.h documents. Bias corrections
// are computed once in double; the per-element update is a single fused, vectorised pass.
#include <cmath>

#include "cpu_ops.hpp"

namespace realn::cpu {

void adamw(realn_stream_t, const realn_adamw_opts* o, float* p, const float* g, float* m, float* v,
           int64_t n) {
    const double t = static_cast<double>(o->step);
    const float b1 = o->beta1, b2 = o->beta2, eps = o->eps, gs = o->grad_scale;
    const float step_size = static_cast<float>(o->lr / (1.0 - std::pow(double(b1), t)));
    const float inv_sqrt_bc2 = static_cast<float>(1.0 / std::sqrt(1.0 - std::pow(double(b2), t)));
    const float decay = o->lr * o->weight_decay;
    const float c1 = 1.0f - b1, c2 = 1.0f - b2;
#pragma omp parallel for simd schedule(static) if (n > (1 << 15))
    for (int64_t i = 0; i < n; ++i) {
        const float gi = g[i] * gs;
        const float mi = b1 * m[i] + c1 * gi;
        const float vi = b2 * v[i] + c2 * gi * gi;
        m[i] = mi;
        v[i] = vi;
        const float pi = p[i];
        p[i] = pi - step_size * mi / (std::sqrt(vi) * inv_sqrt_bc2 + eps) - decay * pi;
    }
}

}  // namespace realn::cpu
