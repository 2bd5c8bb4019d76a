// Slot-based KV cache: kv_store copies new K/V rows into [slot, position]; attention_decode runs
// one query token per sequence against its slot. Decode is bound by reading the cache, so a work
// item is (sequence, kv head): every query head of the group reuses each K and V row while it is
// in L1. Scores go to thread-local scratch (two passes: scores + softmax, then the V sum).
// dtype BF16: the cache holds bf16 (k, v, q and out stay fp32); kv_store rounds each row to nearest
// even and decode widens cache rows to fp32 in registers (AVX-512 where present, else scalar), so
// decode reads half the bytes and computes in fp32 in the same fixed order per (sequence, kv head).
#include "kv_cache.hpp"

#include <immintrin.h>
#include <omp.h>

#include <atomic>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "attention_kernels.hpp"
#include "bf16.hpp"
#include "cpu_ops.hpp"
#include "simd_sum.hpp"

namespace realn::cpu {
namespace {

// ---------------------------------------------------------------- bf16 cache rows
__attribute__((target("avx512f,avx512bw,avx512vl"))) inline __m512 widen16(__m256i h) {
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}


struct Bf16RowsAvx512 {
    // sum_c q[c] * widen(k[c]): 16 lanes over c, the masked tail, then the fixed lane sum.
    __attribute__((target("avx512f,avx512bw,avx512vl"))) static float dot(const float* q, const uint16_t* k,
                                                                        int64_t d) {
        __m512 acc = _mm512_setzero_ps();
        int64_t c = 0;
        for (; c + 16 <= d; c += 16)
            acc = _mm512_fmadd_ps(_mm512_loadu_ps(q + c),
                                  widen16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(k + c))), acc);
        if (c < d) {
            const __mmask16 m = static_cast<__mmask16>((1u << (d - c)) - 1u);
            acc = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, q + c), widen16(_mm256_maskz_loadu_epi16(m, k + c)), acc);
        }
        return hsum512(acc);
    }
    // a[c] += p * widen(v[c]) (one FMA per element).
    __attribute__((target("avx512f,avx512bw,avx512vl"))) static void axpy(float p, const uint16_t* v, float* a,
                                                                        int64_t d) {
        const __m512 vp = _mm512_set1_ps(p);
        int64_t c = 0;
        for (; c + 16 <= d; c += 16)
            _mm512_storeu_ps(a + c, _mm512_fmadd_ps(vp, widen16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(v + c))),
                                                    _mm512_loadu_ps(a + c)));
        if (c < d) {
            const __mmask16 m = static_cast<__mmask16>((1u << (d - c)) - 1u);
            _mm512_mask_storeu_ps(a + c, m,
                                  _mm512_fmadd_ps(vp, widen16(_mm256_maskz_loadu_epi16(m, v + c)), _mm512_maskz_loadu_ps(m, a + c)));
        }
    }
};

struct Bf16RowsScalar {
    static float dot(const float* q, const uint16_t* k, int64_t d) {
        float s = 0.0f;
        for (int64_t c = 0; c < d; ++c) s += q[c] * bf16_to_f32(k[c]);
        return s;
    }
    static void axpy(float p, const uint16_t* v, float* a, int64_t d) {
        for (int64_t c = 0; c < d; ++c) a[c] += p * bf16_to_f32(v[c]);
    }
};

// One (sequence, kv head) item against a bf16 cache: scores of the group's query heads, softmax in
// fp32 (the fp32 path's row_max / exp_row), then the V sum. sc: [group][lp], acc: [group][d].
template <class Rows>
void decode_item_bf16(const float* qb, const uint16_t* kb, const uint16_t* vb, int64_t len, int64_t group,
                      int64_t d, int64_t ldc, int64_t lp, float scale, float* sc, float* acc, float* out) {
    for (int64_t j = 0; j < len; ++j) {
        const uint16_t* krow = kb + j * ldc;
        for (int64_t r = 0; r < group; ++r) sc[r * lp + j] = Rows::dot(qb + r * d, krow, d);
    }
    for (int64_t r = 0; r < group; ++r) {
        float* s = sc + r * lp;
        const float mx = attn::row_max(s, len) * scale;
        const float inv = 1.0f / attn::exp_row(s, len, len, scale, mx);
        for (int64_t j = 0; j < len; ++j) s[j] *= inv;
    }
    std::memset(acc, 0, sizeof(float) * group * d);
    for (int64_t j = 0; j < len; ++j) {
        const uint16_t* vrow = vb + j * ldc;
        for (int64_t r = 0; r < group; ++r) Rows::axpy(sc[r * lp + j], vrow, acc + r * d, d);
    }
    std::memcpy(out, acc, sizeof(float) * group * d);
}

using DecodeItemBf16 = void (*)(const float*, const uint16_t*, const uint16_t*, int64_t, int64_t, int64_t, int64_t,
                                int64_t, float, float*, float*, float*);

std::atomic<int32_t> g_decode_bf16_forced{static_cast<int32_t>(SimdIsa::Avx512)};

}  // namespace

bool attention_decode_bf16_has_avx512() {
    static const bool has = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                            __builtin_cpu_supports("avx512vl");
    return has;
}

void attention_decode_bf16_force_isa(SimdIsa isa) { g_decode_bf16_forced.store(static_cast<int32_t>(isa)); }

void kv_store(realn_stream_t, int32_t dtype, const void* k, const void* v, const int32_t* slots,
              const int32_t* positions, int64_t tokens, void* kcache, void* vcache,
              int64_t num_slots, int64_t max_len, int64_t hkv, int64_t d) {
    // Memory bound and usually small (one row per sequence when decoding): one thread, in token
    // order, so that a repeated (slot, position) deterministically keeps the last token's row.
    const int64_t row = hkv * d;
    const auto* K = static_cast<const float*>(k);
    const auto* V = static_cast<const float*>(v);
    if (dtype == REALN_DTYPE_BF16) {
        auto* KC = static_cast<uint16_t*>(kcache);
        auto* VC = static_cast<uint16_t*>(vcache);
        for (int64_t t = 0; t < tokens; ++t) {
            const int64_t dst = (int64_t(slots[t]) * max_len + positions[t]) * row;
            f32_to_bf16_n(K + t * row, KC + dst, row);
            f32_to_bf16_n(V + t * row, VC + dst, row);
        }
        return;
    }
    auto* KC = static_cast<float*>(kcache);
    auto* VC = static_cast<float*>(vcache);
    for (int64_t t = 0; t < tokens; ++t) {
        const int64_t dst = (int64_t(slots[t]) * max_len + positions[t]) * row;
        std::memcpy(KC + dst, K + t * row, sizeof(float) * row);
        std::memcpy(VC + dst, V + t * row, sizeof(float) * row);
    }
}

namespace {

// Runs item(it, lp, sc, acc) for every (sequence, kv head) work item it = b * hkv + g, over the
// threads when there is enough work; sc is [group][lp] thread-local scores (lp = the longest length
// rounded up to 8), acc [group][d] accumulators. The schedule of both cache dtypes.
template <class Item>
void for_each_decode_item(const int32_t* lens, int64_t batch, int64_t hq, int64_t hkv, int64_t d, Item item) {
    const int64_t group = hq / hkv, n_items = batch * hkv;
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
        float* sc = buf.data();        // [group][lp] scores, then probabilities
        float* acc = sc + group * lp;  // [group][d] output accumulators
#pragma omp for schedule(dynamic, 1)
        for (int64_t it = 0; it < n_items; ++it) item(it, lp, sc, acc);
    }
}

void attention_decode_bf16(const float* Q, const uint16_t* KC, const uint16_t* VC, const int32_t* slots,
                           const int32_t* lens, int64_t batch, int64_t max_len, int64_t hq, int64_t hkv, int64_t d,
                           float scale, float* O) {
    const bool use512 = g_decode_bf16_forced.load() != static_cast<int32_t>(SimdIsa::Scalar) &&
                        attention_decode_bf16_has_avx512();
    const DecodeItemBf16 item = use512 ? decode_item_bf16<Bf16RowsAvx512> : decode_item_bf16<Bf16RowsScalar>;
    const int64_t group = hq / hkv, ldc = hkv * d;
    for_each_decode_item(lens, batch, hq, hkv, d, [&](int64_t it, int64_t lp, float* sc, float* acc) {
        const int64_t b = it / hkv, g = it % hkv;
        const int64_t base = int64_t(slots[b]) * max_len * ldc + g * d;
        item(Q + (b * hq + g * group) * d, KC + base, VC + base, lens[b], group, d, ldc, lp, scale, sc, acc,
             O + (b * hq + g * group) * d);
    });
}

}  // namespace

void attention_decode(realn_stream_t, int32_t dtype, const void* q, const void* kcache,
                      const void* vcache, const int32_t* slots, const int32_t* lens, int64_t batch,
                      int64_t num_slots, int64_t max_len, int64_t hq, int64_t hkv, int64_t d,
                      float scale, void* out) {
    if (dtype == REALN_DTYPE_BF16) {
        attention_decode_bf16(static_cast<const float*>(q), static_cast<const uint16_t*>(kcache),
                              static_cast<const uint16_t*>(vcache), slots, lens, batch, max_len, hq, hkv, d, scale,
                              static_cast<float*>(out));
        return;
    }
    const auto* Q = static_cast<const float*>(q);
    const auto* KC = static_cast<const float*>(kcache);
    const auto* VC = static_cast<const float*>(vcache);
    auto* O = static_cast<float*>(out);
    const int64_t group = hq / hkv, ldc = hkv * d;
    for_each_decode_item(lens, batch, hq, hkv, d, [&](int64_t it, int64_t lp, float* sc, float* acc) {
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
    });
}

}  // namespace realn::cpu
