// Causal self-attention over packed variable-length sequences with grouped-query heads.
// Forward: work items are (sequence, query head), longest first (cost ~ L^2) and scheduled
// dynamically; each query row materialises its causal score row in thread-local scratch (exact
// two-pass softmax, the row's log-sum-exp saved for backward), then accumulates P.V with
// vectorised axpys. Backward: work items are (sequence, kv head) so that every query head of a
// group updates dK/dV of its kv head inside one item: no atomics, deterministic.
//   dV_j += P_ij dO_i;  dP_ij = dO_i . V_j;  dS_ij = P_ij (dP_ij - D_i), D_i = dO_i . O_i;
//   dQ_i = scale sum_j dS_ij K_j;  dK_j += scale dS_ij Q_i.
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "cpu_ops.hpp"

namespace realn::cpu {
namespace {

inline float dot(const float* __restrict a, const float* __restrict b, int64_t d) {
    float s = 0.0f;
#pragma omp simd reduction(+ : s)
    for (int64_t i = 0; i < d; ++i) s += a[i] * b[i];
    return s;
}

inline void axpy(float a, const float* __restrict x, float* __restrict y, int64_t d) {
#pragma omp simd
    for (int64_t i = 0; i < d; ++i) y[i] += a * x[i];
}

struct Item {
    int64_t seq, head, cost;
};

// (sequence, head) items ordered by descending cost so dynamic scheduling balances well.
std::vector<Item> items(const int32_t* cu, int64_t nseq, int64_t heads) {
    std::vector<Item> it;
    it.reserve(static_cast<size_t>(nseq * heads));
    for (int64_t s = 0; s < nseq; ++s) {
        const int64_t L = cu[s + 1] - cu[s];
        if (L == 0) continue;
        for (int64_t h = 0; h < heads; ++h) it.push_back({s, h, L * (L + 1) / 2});
    }
    std::stable_sort(it.begin(), it.end(), [](const Item& a, const Item& b) { return a.cost > b.cost; });
    return it;
}

int threads_for(const std::vector<Item>& it, int64_t d) {
    int64_t work = 0;
    for (const auto& x : it) work += x.cost;
    if (work * d < (1 << 15)) return 1;
    return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(omp_get_max_threads(), int64_t(it.size()))));
}

}  // namespace

void attention_fwd(realn_stream_t, int32_t, const void* q, const void* k, const void* v,
                   const int32_t* cu, int64_t nseq, int64_t, int64_t hq, int64_t hkv, int64_t d,
                   float scale, void* out, float* lse) {
    const auto* Q = static_cast<const float*>(q);
    const auto* K = static_cast<const float*>(k);
    const auto* V = static_cast<const float*>(v);
    auto* O = static_cast<float*>(out);
    const int64_t group = hq / hkv;
    const auto work = items(cu, nseq, hq);
    const int64_t n = static_cast<int64_t>(work.size());
#pragma omp parallel num_threads(threads_for(work, d))
    {
        thread_local std::vector<float> scratch;
#pragma omp for schedule(dynamic, 1)
        for (int64_t w = 0; w < n; ++w) {
            const int64_t s0 = cu[work[w].seq], L = cu[work[w].seq + 1] - s0, h = work[w].head;
            const int64_t g = h / group;
            if (scratch.size() < static_cast<size_t>(L)) scratch.resize(static_cast<size_t>(L));
            float* p = scratch.data();
            for (int64_t i = 0; i < L; ++i) {
                const float* qi = Q + ((s0 + i) * hq + h) * d;
                float mx = -std::numeric_limits<float>::infinity();
                for (int64_t j = 0; j <= i; ++j) {
                    p[j] = scale * dot(qi, K + ((s0 + j) * hkv + g) * d, d);
                    mx = std::max(mx, p[j]);
                }
                double sum = 0.0;
                for (int64_t j = 0; j <= i; ++j) {
                    p[j] = std::exp(p[j] - mx);
                    sum += p[j];
                }
                const float inv = static_cast<float>(1.0 / sum);
                float* oi = O + ((s0 + i) * hq + h) * d;
                std::fill(oi, oi + d, 0.0f);
                for (int64_t j = 0; j <= i; ++j) axpy(p[j] * inv, V + ((s0 + j) * hkv + g) * d, oi, d);
                if (lse) lse[(s0 + i) * hq + h] = mx + static_cast<float>(std::log(sum));
            }
        }
    }
}

void attention_bwd(realn_stream_t, int32_t, const void* q, const void* k, const void* v,
                   const void* out, const float* lse, const void* dout, const int32_t* cu,
                   int64_t nseq, int64_t total, int64_t hq, int64_t hkv, int64_t d, float scale,
                   void* dq, void* dk, void* dv) {
    const auto* Q = static_cast<const float*>(q);
    const auto* K = static_cast<const float*>(k);
    const auto* V = static_cast<const float*>(v);
    const auto* O = static_cast<const float*>(out);
    const auto* dO = static_cast<const float*>(dout);
    auto* dQ = static_cast<float*>(dq);
    auto* dK = static_cast<float*>(dk);
    auto* dV = static_cast<float*>(dv);
    const int64_t group = hq / hkv;
    (void)total;
    const auto work = items(cu, nseq, hkv);
    const int64_t n = static_cast<int64_t>(work.size());
#pragma omp parallel num_threads(threads_for(work, d * group * 2))
    {
        thread_local std::vector<float> scratch;
#pragma omp for schedule(dynamic, 1)
        for (int64_t w = 0; w < n; ++w) {
            const int64_t s0 = cu[work[w].seq], L = cu[work[w].seq + 1] - s0, g = work[w].head;
            if (scratch.size() < static_cast<size_t>(L)) scratch.resize(static_cast<size_t>(L));
            float* ds = scratch.data();
            for (int64_t j = 0; j < L; ++j) {
                std::fill(dK + ((s0 + j) * hkv + g) * d, dK + ((s0 + j) * hkv + g + 1) * d, 0.0f);
                std::fill(dV + ((s0 + j) * hkv + g) * d, dV + ((s0 + j) * hkv + g + 1) * d, 0.0f);
            }
            for (int64_t h = g * group; h < (g + 1) * group; ++h) {
                for (int64_t i = 0; i < L; ++i) {
                    const int64_t row = (s0 + i) * hq + h;
                    const float* qi = Q + row * d;
                    const float* doi = dO + row * d;
                    const float Di = dot(doi, O + row * d, d);
                    const float li = lse[row];
                    for (int64_t j = 0; j <= i; ++j) {
                        const float* kj = K + ((s0 + j) * hkv + g) * d;
                        const float* vj = V + ((s0 + j) * hkv + g) * d;
                        const float pij = std::exp(scale * dot(qi, kj, d) - li);
                        axpy(pij, doi, dV + ((s0 + j) * hkv + g) * d, d);
                        ds[j] = pij * (dot(doi, vj, d) - Di) * scale;
                    }
                    float* dqi = dQ + row * d;
                    std::fill(dqi, dqi + d, 0.0f);
                    for (int64_t j = 0; j <= i; ++j) {
                        axpy(ds[j], K + ((s0 + j) * hkv + g) * d, dqi, d);
                        axpy(ds[j], qi, dK + ((s0 + j) * hkv + g) * d, d);
                    }
                }
            }
        }
    }
}

}  // namespace realn::cpu
