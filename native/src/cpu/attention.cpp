// Causal self-attention over packed variable-length sequences, flash-attention style: 64 x 64
// tiles, online softmax, nothing of size T x T ever materialised. Forward work items are
// (sequence, query head, 64-row query block); backward items are (sequence, kv head) so that one
// thread owns dK/dV of that kv head and dQ of every query head reading it (no atomics, no
// reductions across threads). Items are ordered by cost (longest first) and handed out
// dynamically. Tiles are packed into thread-local scratch with the head dim padded to 8.
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "attention_kernels.hpp"
#include "cpu_ops.hpp"

namespace realn::cpu {

namespace {

constexpr int64_t kBlock = 64;  // query rows and keys per tile (equal: keeps the diagonal aligned)

struct Item {
    int64_t cost;
    int32_t seq, head, block;
};

// Items sorted by decreasing cost; reused across calls by the calling thread.
std::vector<Item>& item_list() {
    static thread_local std::vector<Item> items;
    items.clear();
    return items;
}

void sort_items(std::vector<Item>& items) {
    std::stable_sort(items.begin(), items.end(),
                     [](const Item& a, const Item& b) { return a.cost > b.cost; });
}

float* scratch(int64_t floats) {
    static thread_local std::vector<float> buf;
    if (static_cast<int64_t>(buf.size()) < floats) buf.resize(static_cast<size_t>(floats));
    return buf.data();
}

// rows [0, n) of a head slice (row stride ld, width d) into dst [n][dp], zero-padded, times mul.
void pack_rows(float* dst, int64_t dp, const float* src, int64_t ld, int64_t n, int64_t d,
               float mul) {
    for (int64_t i = 0; i < n; ++i) {
        const float* s = src + i * ld;
        float* o = dst + i * dp;
        for (int64_t c = 0; c < d; ++c) o[c] = s[c] * mul;
        for (int64_t c = d; c < dp; ++c) o[c] = 0.0f;
    }
}

// rows [0, n) of a head slice into dst [dp][kBlock] transposed; columns [n, round8(n)) and rows
// [d, dp) zero.
void pack_cols(float* dst, int64_t dp, const float* src, int64_t ld, int64_t n, int64_t d) {
    const int64_t np = attn::round_up8(n);
    for (int64_t c = d; c < dp; ++c) std::memset(dst + c * kBlock, 0, sizeof(float) * np);
    for (int64_t j = 0; j < n; ++j) {
        const float* s = src + j * ld;
        for (int64_t c = 0; c < d; ++c) dst[c * kBlock + j] = s[c];
    }
    for (int64_t c = 0; c < d; ++c)
        for (int64_t j = n; j < np; ++j) dst[c * kBlock + j] = 0.0f;
}

}  // namespace

void attention_fwd(realn_stream_t, int32_t, const void* q, const void* k, const void* v,
                   const int32_t* cu_seqlens, int64_t nseq, int64_t total, int64_t hq, int64_t hkv,
                   int64_t d, float scale, void* out, float* lse) {
    const auto* Q = static_cast<const float*>(q);
    const auto* K = static_cast<const float*>(k);
    const auto* V = static_cast<const float*>(v);
    auto* O = static_cast<float*>(out);
    const int64_t group = hq / hkv, ldq = hq * d, ldk = hkv * d, dp = attn::round_up8(d);

    auto& items = item_list();
    int64_t work = 0;
    for (int64_t s = 0; s < nseq; ++s) {
        const int64_t len = cu_seqlens[s + 1] - cu_seqlens[s];
        for (int64_t b = 0; b * kBlock < len; ++b) {
            const int64_t rows = std::min(kBlock, len - b * kBlock), keys = b * kBlock + rows;
            for (int64_t h = 0; h < hq; ++h)
                items.push_back({rows * keys, int32_t(s), int32_t(h), int32_t(b)});
            work += hq * rows * keys;
        }
    }
    sort_items(items);
    const int64_t n_items = static_cast<int64_t>(items.size());

    // Per thread: Q block, K^T tile, V tile, S tile, O block, m and l.
    const int64_t scratch_floats = 3 * kBlock * dp + dp * kBlock + kBlock * kBlock + 2 * kBlock;
#pragma omp parallel if (n_items > 1 && work * d > (1 << 15))
    {
        float* Qs = scratch(scratch_floats);
        float* KT = Qs + kBlock * dp;
        float* Vs = KT + dp * kBlock;
        float* S = Vs + kBlock * dp;
        float* Ob = S + kBlock * kBlock;
        float* m = Ob + kBlock * dp;
        float* l = m + kBlock;
#pragma omp for schedule(dynamic, 1)
        for (int64_t it = 0; it < n_items; ++it) {
            const Item& w = items[it];
            const int64_t base = cu_seqlens[w.seq], len = cu_seqlens[w.seq + 1] - base;
            const int64_t h = w.head, g = h / group, i0 = int64_t(w.block) * kBlock;
            const int64_t nq = std::min(kBlock, len - i0), kend = i0 + nq;
            pack_rows(Qs, dp, Q + (base + i0) * ldq + h * d, ldq, nq, d, scale);
            std::memset(Ob, 0, sizeof(float) * nq * dp);
            for (int64_t i = 0; i < nq; ++i) {
                m[i] = -INFINITY;
                l[i] = 0.0f;
            }
            for (int64_t j0 = 0; j0 < kend; j0 += kBlock) {
                const int64_t nk = std::min(kBlock, kend - j0), nkp = attn::round_up8(nk);
                pack_cols(KT, dp, K + (base + j0) * ldk + g * d, ldk, nk, d);
                pack_rows(Vs, dp, V + (base + j0) * ldk + g * d, ldk, nk, d, 1.0f);
                for (int64_t i = 0; i < nq; ++i) std::memset(S + i * kBlock, 0, sizeof(float) * nkp);
                attn::gemm_acc(nq, nkp, dp, Qs, dp, 1, KT, kBlock, S, kBlock);
                for (int64_t i = 0; i < nq; ++i) {
                    float* srow = S + i * kBlock;
                    const int64_t nv = std::min(nk, i0 + i - j0 + 1);  // causal: key <= query
                    if (nv <= 0) {
                        std::memset(srow, 0, sizeof(float) * nkp);
                        continue;
                    }
                    const float mnew = std::max(m[i], attn::row_max(srow, nv));
                    const float alpha = std::exp(m[i] - mnew);  // 0 on the first tile
                    const float psum = attn::exp_row(srow, nv, nkp, 1.0f, mnew);
                    l[i] = l[i] * alpha + psum;
                    m[i] = mnew;
                    if (alpha != 1.0f) {
                        float* orow = Ob + i * dp;
                        for (int64_t c = 0; c < dp; ++c) orow[c] *= alpha;
                    }
                }
                attn::gemm_acc(nq, dp, nk, S, kBlock, 1, Vs, dp, Ob, dp);
            }
            for (int64_t i = 0; i < nq; ++i) {
                const float inv = 1.0f / l[i];
                float* o = O + (base + i0 + i) * ldq + h * d;
                const float* orow = Ob + i * dp;
                for (int64_t c = 0; c < d; ++c) o[c] = orow[c] * inv;
                if (lse) lse[(base + i0 + i) * hq + h] = m[i] + std::log(l[i]);
            }
        }
    }
}

void attention_bwd(realn_stream_t, int32_t, const void* q, const void* k, const void* v,
                   const void* out, const float* lse, const void* dout, const int32_t* cu_seqlens,
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
    const int64_t group = hq / hkv, ldq = hq * d, ldk = hkv * d, dp = attn::round_up8(d);

    auto& items = item_list();
    int64_t work = 0, max_len = 0;
    for (int64_t s = 0; s < nseq; ++s) {
        const int64_t len = cu_seqlens[s + 1] - cu_seqlens[s];
        max_len = std::max(max_len, len);
        if (len == 0) continue;
        for (int64_t g = 0; g < hkv; ++g) items.push_back({group * len * len, int32_t(s), int32_t(g), 0});
        work += hkv * group * len * len;
    }
    sort_items(items);
    const int64_t n_items = static_cast<int64_t>(items.size());

    // Per thread, for the whole sequence and every head of the group: Q, dO, dQ [len][dp], lse
    // and Delta = rowsum(dO * O) [len]; per key tile: K, dK, dV [kBlock][dp], K^T and V^T
    // [dp][kBlock]; per query tile: P and dS [kBlock][kBlock].
    const int64_t seq_floats = group * max_len * (3 * dp + 2);
    const int64_t scratch_floats =
        seq_floats + 3 * kBlock * dp + 2 * dp * kBlock + 2 * kBlock * kBlock;
#pragma omp parallel if (n_items > 1 && work * d > (1 << 15))
    {
        float* Qs = scratch(scratch_floats);
        float* dOs = Qs + group * max_len * dp;
        float* dQs = dOs + group * max_len * dp;
        float* L = dQs + group * max_len * dp;
        float* Dl = L + group * max_len;
        float* Ks = Dl + group * max_len;
        float* dKs = Ks + kBlock * dp;
        float* dVs = dKs + kBlock * dp;
        float* KT = dVs + kBlock * dp;
        float* VT = KT + dp * kBlock;
        float* P = VT + dp * kBlock;
        float* dS = P + kBlock * kBlock;
#pragma omp for schedule(dynamic, 1)
        for (int64_t it = 0; it < n_items; ++it) {
            const Item& w = items[it];
            const int64_t base = cu_seqlens[w.seq], len = cu_seqlens[w.seq + 1] - base;
            const int64_t g = w.head;
            for (int64_t r = 0; r < group; ++r) {
                const int64_t h = g * group + r;
                pack_rows(Qs + r * len * dp, dp, Q + base * ldq + h * d, ldq, len, d, 1.0f);
                pack_rows(dOs + r * len * dp, dp, dO + base * ldq + h * d, ldq, len, d, 1.0f);
                std::memset(dQs + r * len * dp, 0, sizeof(float) * len * dp);
                for (int64_t i = 0; i < len; ++i) {
                    const int64_t row = (base + i) * ldq + h * d;
                    L[r * len + i] = lse[(base + i) * hq + h];
                    Dl[r * len + i] = attn::dot(dO + row, O + row, d);
                }
            }
            for (int64_t j0 = 0; j0 < len; j0 += kBlock) {
                const int64_t nk = std::min(kBlock, len - j0), nkp = attn::round_up8(nk);
                const float* kt = K + (base + j0) * ldk + g * d;
                const float* vt = V + (base + j0) * ldk + g * d;
                pack_rows(Ks, dp, kt, ldk, nk, d, 1.0f);
                pack_cols(KT, dp, kt, ldk, nk, d);
                pack_cols(VT, dp, vt, ldk, nk, d);
                std::memset(dKs, 0, sizeof(float) * nk * dp);
                std::memset(dVs, 0, sizeof(float) * nk * dp);
                for (int64_t r = 0; r < group; ++r) {
                    const float* Qr = Qs + r * len * dp;
                    const float* dOr = dOs + r * len * dp;
                    float* dQr = dQs + r * len * dp;
                    for (int64_t i0 = j0; i0 < len; i0 += kBlock) {  // queries >= first key
                        const int64_t nq = std::min(kBlock, len - i0);
                        for (int64_t i = 0; i < nq; ++i) {
                            std::memset(P + i * kBlock, 0, sizeof(float) * nkp);
                            std::memset(dS + i * kBlock, 0, sizeof(float) * nkp);
                        }
                        attn::gemm_acc(nq, nkp, dp, Qr + i0 * dp, dp, 1, KT, kBlock, P, kBlock);
                        attn::gemm_acc(nq, nkp, dp, dOr + i0 * dp, dp, 1, VT, kBlock, dS, kBlock);
                        for (int64_t i = 0; i < nq; ++i) {
                            float* prow = P + i * kBlock;
                            float* srow = dS + i * kBlock;
                            const int64_t nv = std::max<int64_t>(0, std::min(nk, i0 + i - j0 + 1));
                            attn::exp_row(prow, nv, nkp, scale, L[r * len + i0 + i]);
                            const float delta = Dl[r * len + i0 + i];
                            // dS = P * (dP - Delta), times scale for dQ and dK.
                            for (int64_t j = 0; j < nkp; ++j)
                                srow[j] = prow[j] * (srow[j] - delta) * scale;
                        }
                        attn::gemm_acc(nk, dp, nq, P, 1, kBlock, dOr + i0 * dp, dp, dVs, dp);
                        attn::gemm_acc(nk, dp, nq, dS, 1, kBlock, Qr + i0 * dp, dp, dKs, dp);
                        attn::gemm_acc(nq, dp, nk, dS, kBlock, 1, Ks, dp, dQr + i0 * dp, dp);
                    }
                }
                for (int64_t j = 0; j < nk; ++j) {
                    std::memcpy(dK + (base + j0 + j) * ldk + g * d, dKs + j * dp, sizeof(float) * d);
                    std::memcpy(dV + (base + j0 + j) * ldk + g * d, dVs + j * dp, sizeof(float) * d);
                }
            }
            for (int64_t r = 0; r < group; ++r) {
                const int64_t h = g * group + r;
                for (int64_t i = 0; i < len; ++i)
                    std::memcpy(dQ + (base + i) * ldq + h * d, dQs + (r * len + i) * dp,
                                sizeof(float) * d);
            }
        }
    }
}

}  // namespace realn::cpu
