// Slot-based KV cache: kv_store copies new K/V rows into [slot, position]; attention_decode runs
// one query token per sequence against its slot. Decode is bound by reading the cache, so a work
// item is (sequence, kv head): every query head of the group reuses each K and V row while it is
// in L1. Scores go to thread-local scratch (two passes: scores + softmax, then the V sum).
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "attention_kernels.hpp"
#include "cpu_ops.hpp"

namespace realn::cpu {

void kv_store(realn_stream_t, int32_t, const void* k, const void* v, const int32_t* slots,
              const int32_t* positions, int64_t tokens, void* kcache, void* vcache,
              int64_t num_slots, int64_t max_len, int64_t hkv, int64_t d) {
    // Memory bound and usually small (one row per sequence when decoding): one thread, in token
    // order, so that a repeated (slot, position) deterministically keeps the last token's row.
    const int64_t row = hkv * d;
    const auto* K = static_cast<const float*>(k);
    const auto* V = static_cast<const float*>(v);
    auto* KC = static_cast<float*>(kcache);
    auto* VC = static_cast<float*>(vcache);
    for (int64_t t = 0; t < tokens; ++t) {
        const int64_t dst = (int64_t(slots[t]) * max_len + positions[t]) * row;
        std::memcpy(KC + dst, K + t * row, sizeof(float) * row);
        std::memcpy(VC + dst, V + t * row, sizeof(float) * row);
    }
}

void attention_decode(realn_stream_t, int32_t, const void* q, const void* kcache,
                      const void* vcache, const int32_t* slots, const int32_t* lens, int64_t batch,
                      int64_t num_slots, int64_t max_len, int64_t hq, int64_t hkv, int64_t d,
                      float scale, void* out) {
    const auto* Q = static_cast<const float*>(q);
    const auto* KC = static_cast<const float*>(kcache);
    const auto* VC = static_cast<const float*>(vcache);
    auto* O = static_cast<float*>(out);
    const int64_t group = hq / hkv, ldc = hkv * d;
    const int64_t n_items = batch * hkv;
    int64_t work = 0, longest = 0;
    for (int64_t b = 0; b < batch; ++b) {
        work += int64_t(lens[b]) * hq * d;
        longest = std::max<int64_t>(longest, lens[b]);
    }
    const int64_t lp = attn::round_up8(longest);
#pragma omp parallel if (n_items > 1 && work > (1 << 15))
    {
        static thread_local std::vector<float> buf;
        const size_t need = static_cast<size_t>(group * (lp + d));
        if (buf.size() < need) buf.resize(need);
        float* sc = buf.data();             // [group][lp] scores, then probabilities
        float* acc = sc + group * lp;       // [group][d] output accumulators
#pragma omp for schedule(dynamic, 1)
        for (int64_t it = 0; it < n_items; ++it) {
            const int64_t b = it / hkv, g = it % hkv, len = lens[b];
            const float* kb = KC + int64_t(slots[b]) * max_len * ldc + g * d;
            const float* vb = VC + int64_t(slots[b]) * max_len * ldc + g * d;
            const float* qb = Q + (b * hq + g * group) * d;
            for (int64_t j = 0; j < len; ++j) {
                const float* krow = kb + j * ldc;
                for (int64_t r = 0; r < group; ++r) sc[r * lp + j] = attn::dot(qb + r * d, krow, d);
            }
            for (int64_t r = 0; r < group; ++r) {
                float* s = sc + r * lp;
                const float mx = attn::row_max(s, len) * scale;
                const float inv = 1.0f / attn::exp_row(s, len, len, scale, mx);
                for (int64_t j = 0; j < len; ++j) s[j] *= inv;
            }
            std::memset(acc, 0, sizeof(float) * group * d);
            for (int64_t j = 0; j < len; ++j) {
                const float* vrow = vb + j * ldc;
                for (int64_t r = 0; r < group; ++r) {
                    const float p = sc[r * lp + j];
                    float* a = acc + r * d;
                    for (int64_t c = 0; c < d; ++c) a[c] += p * vrow[c];
                }
            }
            std::memcpy(O + (b * hq + g * group) * d, acc, sizeof(float) * group * d);
        }
    }
}

}  // namespace realn::cpu
