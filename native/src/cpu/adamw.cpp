// AdamW step, decoupled weight decay, bias correction; one fused vectorised pass over
// param/grad/m/v, split statically across threads (memory bound: 5 streams of n floats).
#include <cmath>

#include "cpu_ops.hpp"

namespace realn::cpu {

void adamw(realn_stream_t, const realn_adamw_opts* o, float* p, const float* g, float* m, float* v,
           int64_t n) {
    const float b1 = o->beta1, b2 = o->beta2, lr = o->lr, eps = o->eps, wd = o->weight_decay;
    const float gs = o->grad_scale;
    const double t = static_cast<double>(o->step);
    const float c1 = static_cast<float>(1.0 / (1.0 - std::pow(double(b1), t)));
    const float c2 = static_cast<float>(1.0 / (1.0 - std::pow(double(b2), t)));
#pragma omp parallel for simd schedule(static) if (n > (1 << 16))
    for (int64_t i = 0; i < n; ++i) {
        const float gi = g[i] * gs;
        const float mi = b1 * m[i] + (1.0f - b1) * gi;
        const float vi = b2 * v[i] + (1.0f - b2) * gi * gi;
        m[i] = mi;
        v[i] = vi;
        p[i] -= lr * (mi * c1) / (std::sqrt(vi * c2) + eps) + lr * wd * p[i];
    }
}

}  // namespace realn::cpu
