// KV cache for generation: kv_store writes new K/V rows into [slots, max_len, hkv, d] caches;
// attention_decode runs one query token per sequence against its slot's first lens[b]
// positions. Decode work items are (sequence, kv head): the group's query heads share each K/V
// row while it is in cache. Exact two-pass softmax per query head, like attention_fwd.
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "cpu_ops.hpp"

namespace realn::cpu {

void kv_store(realn_stream_t, int32_t, const void* k, const void* v, const int32_t* slots,
              const int32_t* positions, int64_t tokens, void* kcache, void* vcache, int64_t,
              int64_t max_len, int64_t hkv, int64_t d) {
    const auto* K = static_cast<const float*>(k);
    const auto* V = static_cast<const float*>(v);
    auto* KC = static_cast<float*>(kcache);
    auto* VC = static_cast<float*>(vcache);
    const int64_t row = hkv * d;
#pragma omp parallel for schedule(static) if (tokens * row > (1 << 16))
    for (int64_t t = 0; t < tokens; ++t) {
        const int64_t dst = (int64_t(slots[t]) * max_len + positions[t]) * row;
        std::memcpy(KC + dst, K + t * row, static_cast<size_t>(row) * sizeof(float));
        std::memcpy(VC + dst, V + t * row, static_cast<size_t>(row) * sizeof(float));
    }
}

void attention_decode(realn_stream_t, int32_t, const void* q, const void* kcache, const void* vcache,
                      const int32_t* slots, const int32_t* lens, int64_t batch, int64_t,
                      int64_t max_len, int64_t hq, int64_t hkv, int64_t d, float scale, void* out) {
    const auto* Q = static_cast<const float*>(q);
    const auto* KC = static_cast<const float*>(kcache);
    const auto* VC = static_cast<const float*>(vcache);
    auto* O = static_cast<float*>(out);
    const int64_t group = hq / hkv, n = batch * hkv;
    int64_t work = 0;
    for (int64_t b = 0; b < batch; ++b) work += lens[b];
    const bool par = work * hq * d > (1 << 15);
#pragma omp parallel if (par)
    {
        thread_local std::vector<float> scratch;
#pragma omp for schedule(dynamic, 1)
        for (int64_t w = 0; w < n; ++w) {
            const int64_t b = w / hkv, g = w % hkv, L = lens[b];
            const int64_t base = int64_t(slots[b]) * max_len;
            if (scratch.size() < static_cast<size_t>(L * group)) scratch.resize(static_cast<size_t>(L * group));
            float* p = scratch.data();
            // Scores for all heads of the group, K row by K row.
            for (int64_t j = 0; j < L; ++j) {
                const float* kj = KC + ((base + j) * hkv + g) * d;
                for (int64_t hh = 0; hh < group; ++hh) {
                    const float* qh = Q + (b * hq + g * group + hh) * d;
                    float s = 0.0f;
#pragma omp simd reduction(+ : s)
                    for (int64_t i = 0; i < d; ++i) s += qh[i] * kj[i];
                    p[hh * L + j] = s * scale;
                }
            }
            for (int64_t hh = 0; hh < group; ++hh) {
                float* ph = p + hh * L;
                float mx = -std::numeric_limits<float>::infinity();
                for (int64_t j = 0; j < L; ++j) mx = std::max(mx, ph[j]);
                double sum = 0.0;
                for (int64_t j = 0; j < L; ++j) {
                    ph[j] = std::exp(ph[j] - mx);
                    sum += ph[j];
                }
                const float inv = static_cast<float>(1.0 / sum);
                for (int64_t j = 0; j < L; ++j) ph[j] *= inv;
                float* oh = O + (b * hq + g * group + hh) * d;
                std::fill(oh, oh + d, 0.0f);
            }
            for (int64_t j = 0; j < L; ++j) {
                const float* vj = VC + ((base + j) * hkv + g) * d;
                for (int64_t hh = 0; hh < group; ++hh) {
                    float* oh = O + (b * hq + g * group + hh) * d;
                    const float a = p[hh * L + j];
#pragma omp simd
                    for (int64_t i = 0; i < d; ++i) oh[i] += a * vj[i];
                }
            }
        }
    }
}

}  // namespace realn::cpu
