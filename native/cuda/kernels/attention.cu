// Causal GQA attention over packed variable-length sequences for the CUDA backend, with the CPU
// backend's semantics (native/src/cpu/attention.cpp): q [T, hq, d], k/v [T, hkv, d], query head h
// reads kv head h / (hq / hkv), lse [T, hq] = log-sum-exp of the scaled scores.
// Flash style: K/V (or Q/dO) tiles of REALN_ATT_KT rows staged in shared memory, online softmax,
// fp32 accumulation, nothing T x T materialised. A block is REALN_ATT_WARPS warps; a warp owns
// one query row (forward, dQ) or one key row (dK/dV); lane j of a warp scores tile row j, and
// lane l accumulates output dims l, l + 32, ... (head_dim <= REALN_ATT_DMAX, checked by the
// host). Every sum runs in a fixed order and every output element has one writer: deterministic.
// Work tiles come from the host as int triples (sequence start token, sequence length, first row
// of the tile relative to the start). Its cases pass on an NVIDIA H200 (docs/performance.md).
#include "common.cuh"

#define REALN_ATT_WARPS 8
#define REALN_ATT_KT 32
#define REALN_ATT_DMAX 128
#define REALN_ATT_PL (REALN_ATT_DMAX / 32)

REALN_DEVICE float realn_att_neg_inf() { return realn_u2f(0xff800000u); }

// dst[r][c] = src row (row0 + r) of head `head` for c < d, 0 elsewhere (and for rows >= row_end).
// Called by the whole block.
REALN_DEVICE void realn_att_stage(float* dst, int ld, int nrows, const float* src, i64 start, i64 row0, i64 row_end,
                                  i64 heads, i64 head, i64 d) {
    for (int e = threadIdx.x; e < nrows * REALN_ATT_DMAX; e += blockDim.x) {
        const int r = e / REALN_ATT_DMAX, c = e % REALN_ATT_DMAX;
        const i64 row = row0 + r;
        dst[r * ld + c] = (row < row_end && c < d) ? src[((start + row) * heads + head) * d + c] : 0.0f;
    }
}

// Grid (tiles, hq). Tile rows are query rows q0 .. q0 + WARPS - 1 of one sequence.
REALN_GLOBAL void realn_attention_fwd(const float* q, const float* k, const float* v, const int* tiles, i64 hq, i64 hkv,
                                      i64 d, float scale, float* out, float* lse) {
    REALN_SHARED float ks[REALN_ATT_KT][REALN_ATT_DMAX + 1];
    REALN_SHARED float vs[REALN_ATT_KT][REALN_ATT_DMAX + 1];
    REALN_SHARED float qs[REALN_ATT_WARPS][REALN_ATT_DMAX];
    const i64 start = tiles[3 * blockIdx.x], len = tiles[3 * blockIdx.x + 1], q0 = tiles[3 * blockIdx.x + 2];
    const i64 h = blockIdx.y, g = h / (hq / hkv);
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const i64 qi = q0 + warp;
    const bool active = qi < len;  // uniform per warp
    const i64 kend = len < q0 + REALN_ATT_WARPS ? len : q0 + REALN_ATT_WARPS;  // keys any row here sees
    realn_att_stage(&qs[0][0], REALN_ATT_DMAX, REALN_ATT_WARPS, q, start, q0, len, hq, h, d);
    float m = realn_att_neg_inf(), l = 0.0f, acc[REALN_ATT_PL];
    for (int i = 0; i < REALN_ATT_PL; ++i) acc[i] = 0.0f;
    for (i64 k0 = 0; k0 < kend; k0 += REALN_ATT_KT) {
        realn_sync();  // the previous tile is consumed (and qs is written before the first use)
        realn_att_stage(&ks[0][0], REALN_ATT_DMAX + 1, REALN_ATT_KT, k, start, k0, kend, hkv, g, d);
        realn_att_stage(&vs[0][0], REALN_ATT_DMAX + 1, REALN_ATT_KT, v, start, k0, kend, hkv, g, d);
        realn_sync();
        if (active) {
            const i64 kj = k0 + lane;
            const bool seen = kj <= qi;  // causal (kj <= qi < kend)
            float s = realn_att_neg_inf();
            if (seen) {
                float dot = 0.0f;
                for (int c = 0; c < d; ++c) dot += qs[warp][c] * ks[lane][c];
                s = dot * scale;
            }
            const float tmax = realn_warp_max(s);
            const float m_new = tmax > m ? tmax : m;  // finite: key 0 is in the first tile
            const float corr = realn_exp(m - m_new);
            const float p = seen ? realn_exp(s - m_new) : 0.0f;
            l = l * corr + realn_warp_sum(p);
            for (int i = 0; i < REALN_ATT_PL; ++i) acc[i] *= corr;
            for (int j = 0; j < REALN_ATT_KT; ++j) {
                const float pj = realn_shfl(p, j);
                for (int i = 0; i < REALN_ATT_PL; ++i) acc[i] += pj * vs[j][lane + 32 * i];
            }
            m = m_new;
        }
    }
    if (!active) return;  // no barrier follows
    const float inv = 1.0f / l;
    const i64 row = (start + qi) * hq + h;
    for (int i = 0; i < REALN_ATT_PL; ++i) {
        const int c = lane + 32 * i;
        if (c < d) out[row * d + c] = acc[i] * inv;
    }
    if (lse && lane == 0) lse[row] = m + realn_log(l);
}

// delta[t, h] = sum_c dout[t, h, c] out[t, h, c]: one warp per (t, h) row; rows = T * hq.
REALN_GLOBAL void realn_attention_bwd_delta(const float* out, const float* dout, i64 rows, i64 d, float* delta) {
    const i64 row = (i64)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    const int lane = threadIdx.x % 32;
    if (row >= rows) return;  // whole warps leave together
    float part = 0.0f;
    for (i64 c = lane; c < d; c += 32) part += dout[row * d + c] * out[row * d + c];
    const float total = realn_warp_sum(part);
    if (lane == 0) delta[row] = total;
}

// dQ: grid (tiles, hq) as the forward. dS_ij = P_ij (dP_ij - delta_i), dQ_i = scale sum_j dS_ij K_j.
REALN_GLOBAL void realn_attention_bwd_dq(const float* q, const float* k, const float* v, const float* lse,
                                         const float* dout, const float* delta, const int* tiles, i64 hq, i64 hkv,
                                         i64 d, float scale, float* dq) {
    REALN_SHARED float ks[REALN_ATT_KT][REALN_ATT_DMAX + 1];
    REALN_SHARED float vs[REALN_ATT_KT][REALN_ATT_DMAX + 1];
    REALN_SHARED float qs[REALN_ATT_WARPS][REALN_ATT_DMAX];
    REALN_SHARED float dos[REALN_ATT_WARPS][REALN_ATT_DMAX];
    const i64 start = tiles[3 * blockIdx.x], len = tiles[3 * blockIdx.x + 1], q0 = tiles[3 * blockIdx.x + 2];
    const i64 h = blockIdx.y, g = h / (hq / hkv);
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const i64 qi = q0 + warp;
    const bool active = qi < len;
    const i64 kend = len < q0 + REALN_ATT_WARPS ? len : q0 + REALN_ATT_WARPS;
    realn_att_stage(&qs[0][0], REALN_ATT_DMAX, REALN_ATT_WARPS, q, start, q0, len, hq, h, d);
    realn_att_stage(&dos[0][0], REALN_ATT_DMAX, REALN_ATT_WARPS, dout, start, q0, len, hq, h, d);
    const i64 row = (start + qi) * hq + h;
    const float L = active ? lse[row] : 0.0f, D = active ? delta[row] : 0.0f;
    float acc[REALN_ATT_PL];
    for (int i = 0; i < REALN_ATT_PL; ++i) acc[i] = 0.0f;
    for (i64 k0 = 0; k0 < kend; k0 += REALN_ATT_KT) {
        realn_sync();
        realn_att_stage(&ks[0][0], REALN_ATT_DMAX + 1, REALN_ATT_KT, k, start, k0, kend, hkv, g, d);
        realn_att_stage(&vs[0][0], REALN_ATT_DMAX + 1, REALN_ATT_KT, v, start, k0, kend, hkv, g, d);
        realn_sync();
        if (active) {
            const i64 kj = k0 + lane;
            float ds = 0.0f;
            if (kj <= qi) {
                float s = 0.0f, dp = 0.0f;
                for (int c = 0; c < d; ++c) {
                    s += qs[warp][c] * ks[lane][c];
                    dp += dos[warp][c] * vs[lane][c];
                }
                const float p = realn_exp(s * scale - L);
                ds = p * (dp - D);
            }
            for (int j = 0; j < REALN_ATT_KT; ++j) {
                const float dsj = realn_shfl(ds, j);
                for (int i = 0; i < REALN_ATT_PL; ++i) acc[i] += dsj * ks[j][lane + 32 * i];
            }
        }
    }
    if (!active) return;
    for (int i = 0; i < REALN_ATT_PL; ++i) {
        const int c = lane + 32 * i;
        if (c < d) dq[row * d + c] = scale * acc[i];
    }
}

// dK, dV: grid (tiles, hkv); tile rows are KEY rows k0 .. k0 + WARPS - 1, warp w owns key k0 + w and
// walks every query head of its group, then the queries from k0 on in tiles:
// dV_j = sum_{h, i >= j} P_ij dO_i, dK_j = scale sum_{h, i >= j} dS_ij Q_i.
REALN_GLOBAL void realn_attention_bwd_dkv(const float* q, const float* k, const float* v, const float* lse,
                                          const float* dout, const float* delta, const int* tiles, i64 hq, i64 hkv,
                                          i64 d, float scale, float* dk, float* dv) {
    REALN_SHARED float qs[REALN_ATT_KT][REALN_ATT_DMAX + 1];
    REALN_SHARED float dos[REALN_ATT_KT][REALN_ATT_DMAX + 1];
    REALN_SHARED float kw[REALN_ATT_WARPS][REALN_ATT_DMAX];
    REALN_SHARED float vw[REALN_ATT_WARPS][REALN_ATT_DMAX];
    REALN_SHARED float ls[REALN_ATT_KT], dl[REALN_ATT_KT];
    const i64 start = tiles[3 * blockIdx.x], len = tiles[3 * blockIdx.x + 1], k0 = tiles[3 * blockIdx.x + 2];
    const i64 g = blockIdx.y, group = hq / hkv;
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const i64 kj = k0 + warp;
    const bool active = kj < len;
    realn_att_stage(&kw[0][0], REALN_ATT_DMAX, REALN_ATT_WARPS, k, start, k0, len, hkv, g, d);
    realn_att_stage(&vw[0][0], REALN_ATT_DMAX, REALN_ATT_WARPS, v, start, k0, len, hkv, g, d);
    float dka[REALN_ATT_PL], dva[REALN_ATT_PL];
    for (int i = 0; i < REALN_ATT_PL; ++i) dka[i] = dva[i] = 0.0f;
    for (i64 h = g * group; h < (g + 1) * group; ++h) {
        for (i64 i0 = k0; i0 < len; i0 += REALN_ATT_KT) {
            realn_sync();
            realn_att_stage(&qs[0][0], REALN_ATT_DMAX + 1, REALN_ATT_KT, q, start, i0, len, hq, h, d);
            realn_att_stage(&dos[0][0], REALN_ATT_DMAX + 1, REALN_ATT_KT, dout, start, i0, len, hq, h, d);
            if (threadIdx.x < REALN_ATT_KT) {
                const i64 qrow = i0 + threadIdx.x;
                ls[threadIdx.x] = qrow < len ? lse[(start + qrow) * hq + h] : 0.0f;
                dl[threadIdx.x] = qrow < len ? delta[(start + qrow) * hq + h] : 0.0f;
            }
            realn_sync();
            if (active) {
                const i64 qi = i0 + lane;
                float p = 0.0f, ds = 0.0f;
                if (qi < len && qi >= kj) {
                    float s = 0.0f, dp = 0.0f;
                    for (int c = 0; c < d; ++c) {
                        s += qs[lane][c] * kw[warp][c];
                        dp += dos[lane][c] * vw[warp][c];
                    }
                    p = realn_exp(s * scale - ls[lane]);
                    ds = p * (dp - dl[lane]);
                }
                for (int j = 0; j < REALN_ATT_KT; ++j) {
                    const float pj = realn_shfl(p, j), dsj = realn_shfl(ds, j);
                    for (int i = 0; i < REALN_ATT_PL; ++i) {
                        dva[i] += pj * dos[j][lane + 32 * i];
                        dka[i] += dsj * qs[j][lane + 32 * i];
                    }
                }
            }
        }
    }
    if (!active) return;
    const i64 row = (start + kj) * hkv + g;
    for (int i = 0; i < REALN_ATT_PL; ++i) {
        const int c = lane + 32 * i;
        if (c < d) {
            dk[row * d + c] = scale * dka[i];
            dv[row * d + c] = dva[i];
        }
    }
}
