// KV cache of the CUDA backend, with the CPU backend's semantics (native/src/cpu/kv_cache.cpp):
// kv_store copies rows into [slot, position] (a bf16 cache rounds them to nearest even), decode
// attention runs one query token per sequence against its slot's first lens[b] rows.
// Its cases pass on an NVIDIA H200 (docs/performance.md).
#include "common.cuh"

// One thread per (stored row, element). dst_row[i]: the cache row (slot * max_len + position) that
// source token src_tok[i] goes to; the host lists each cache row once (the last token naming it),
// so no two threads write one element.
REALN_GLOBAL void realn_kv_store_f32(const float* k, const float* v, const int* src_tok, const i64* dst_row, i64 items,
                                     i64 row, float* kcache, float* vcache) {
    REALN_FOR(i, items * row) {
        const i64 it = i / row, e = i % row;
        const i64 s = (i64)src_tok[it] * row + e, d = dst_row[it] * row + e;
        kcache[d] = k[s];
        vcache[d] = v[s];
    }
}

REALN_GLOBAL void realn_kv_store_bf16(const float* k, const float* v, const int* src_tok, const i64* dst_row, i64 items,
                                      i64 row, u16* kcache, u16* vcache) {
    REALN_FOR(i, items * row) {
        const i64 it = i / row, e = i % row;
        const i64 s = (i64)src_tok[it] * row + e, d = dst_row[it] * row + e;
        kcache[d] = realn_f32_to_bf16(k[s]);
        vcache[d] = realn_f32_to_bf16(v[s]);
    }
}

#define REALN_DECODE_WARPS 8
#define REALN_DECODE_DMAX 256
#define REALN_DECODE_PER_LANE (REALN_DECODE_DMAX / 32)

REALN_DEVICE float realn_cache_load(const float* p, i64 i) { return p[i]; }
REALN_DEVICE float realn_cache_load(const u16* p, i64 i) { return realn_bf16_to_f32(p[i]); }

// One block (REALN_DECODE_WARPS warps) per (sequence b, query head h); grid (batch, hq). Warp w
// takes keys w, w + W, ... with an online softmax in fp32; lane l holds output dims l, l + 32, ...
// (d <= REALN_DECODE_DMAX, checked by the host). The warps' partial states are merged in warp
// order by warp 0, so the result is deterministic. slots, lens: device copies of the host arrays.
template <typename C>
REALN_DEVICE void realn_decode(const float* q, const C* kcache, const C* vcache, const int* slots, const int* lens,
                               i64 max_len, i64 hq, i64 hkv, i64 d, float scale, float* out) {
    REALN_SHARED float part_m[REALN_DECODE_WARPS], part_l[REALN_DECODE_WARPS];
    REALN_SHARED float part_acc[REALN_DECODE_WARPS][REALN_DECODE_DMAX];
    const i64 b = blockIdx.x, h = blockIdx.y;
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const i64 g = h / (hq / hkv), ldc = hkv * d, len = lens[b];
    const float* qh = q + (b * hq + h) * d;
    const C* kb = kcache + (i64)slots[b] * max_len * ldc + g * d;
    const C* vb = vcache + (i64)slots[b] * max_len * ldc + g * d;
    float qr[REALN_DECODE_PER_LANE], acc[REALN_DECODE_PER_LANE];
    for (int i = 0; i < REALN_DECODE_PER_LANE; ++i) {
        const i64 c = lane + 32 * i;
        qr[i] = c < d ? qh[c] : 0.0f;
        acc[i] = 0.0f;
    }
    float m = realn_u2f(0xff800000u), l = 0.0f;
    for (i64 j = warp; j < len; j += REALN_DECODE_WARPS) {  // uniform per warp: all lanes shuffle
        float part = 0.0f;
        for (int i = 0; i < REALN_DECODE_PER_LANE; ++i) {
            const i64 c = lane + 32 * i;
            if (c < d) part += qr[i] * realn_cache_load(kb, j * ldc + c);
        }
        const float s = realn_warp_sum(part) * scale;
        const float m_new = s > m ? s : m;
        const float corr = realn_exp(m - m_new), p = realn_exp(s - m_new);
        l = l * corr + p;
        for (int i = 0; i < REALN_DECODE_PER_LANE; ++i) {
            const i64 c = lane + 32 * i;
            acc[i] = acc[i] * corr + (c < d ? p * realn_cache_load(vb, j * ldc + c) : 0.0f);
        }
        m = m_new;
    }
    if (lane == 0) {
        part_m[warp] = m;
        part_l[warp] = l;
    }
    for (int i = 0; i < REALN_DECODE_PER_LANE; ++i) part_acc[warp][lane + 32 * i] = acc[i];
    realn_sync();
    if (warp != 0) return;  // no barrier follows
    float mt = realn_u2f(0xff800000u);
    for (int w = 0; w < REALN_DECODE_WARPS; ++w) mt = part_m[w] > mt ? part_m[w] : mt;
    float lt = 0.0f, o[REALN_DECODE_PER_LANE];
    for (int i = 0; i < REALN_DECODE_PER_LANE; ++i) o[i] = 0.0f;
    for (int w = 0; w < REALN_DECODE_WARPS; ++w) {
        if (part_l[w] == 0.0f) continue;  // a warp that saw no key (len < warps)
        const float f = realn_exp(part_m[w] - mt);
        lt += part_l[w] * f;
        for (int i = 0; i < REALN_DECODE_PER_LANE; ++i) o[i] += part_acc[w][lane + 32 * i] * f;
    }
    const float inv = 1.0f / lt;
    for (int i = 0; i < REALN_DECODE_PER_LANE; ++i) {
        const i64 c = lane + 32 * i;
        if (c < d) out[(b * hq + h) * d + c] = o[i] * inv;
    }
}

REALN_GLOBAL void realn_attention_decode_f32(const float* q, const float* kcache, const float* vcache, const int* slots,
                                             const int* lens, i64 max_len, i64 hq, i64 hkv, i64 d, float scale,
                                             float* out) {
    realn_decode(q, kcache, vcache, slots, lens, max_len, hq, hkv, d, scale, out);
}

REALN_GLOBAL void realn_attention_decode_bf16(const float* q, const u16* kcache, const u16* vcache, const int* slots,
                                              const int* lens, i64 max_len, i64 hq, i64 hkv, i64 d, float scale,
                                              float* out) {
    realn_decode(q, kcache, vcache, slots, lens, max_len, hq, hkv, d, scale, out);
}
