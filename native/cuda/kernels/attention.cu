// Causal GQA attention over packed variable-length sequences for the CUDA backend, with the CPU
// backend's semantics (native/src/cpu/attention.cpp): q [T, hq, d], k/v [T, hkv, d], query head h
// reads kv head h / (hq / hkv), lse [T, hq] = log-sum-exp of the scaled scores.
//
// Flash style, register-tiled (fp32 on CUDA cores): a block of REALN_ATT_THREADS threads owns a
// tile of REALN_ATT_T rows (query rows for the forward and dQ, key rows for dK/dV) and walks the
// other side in tiles of REALN_ATT_T rows staged in shared memory (row stride REALN_ATT_LD: padded
// so that the float4 reads of 8 rows at one column hit 32 different banks). Thread t owns rows
// 2 (t / 8) and 2 (t / 8) + 1 of its tile: of each score tile it computes the 2 x 4 scores against
// rows t % 8 + 8 j (j = 0..3), four columns at a time from float4 reads (32 FMAs per 6 shared
// reads), and of the output the 2 x 16 columns 4 (t % 8) + 32 q + e. The 8 threads of a row are 8
// consecutive lanes of one warp, so a row's max and sum are three butterfly shuffles. Online
// softmax (forward), fp32 accumulation, nothing T x T materialised, every sum in a fixed order and
// every output element written by one thread: deterministic. head_dim <= REALN_ATT_DMAX (checked by
// the host). dQ and dK/dV keep four tiles resident and take dynamic shared memory above 48 KiB
// (host_plans.hpp: the sizes; the host opts in with cuFuncSetAttribute).
// Work tiles come from the host as int triples (sequence start token, sequence length, first row
// of the tile relative to the start). Its cases pass on an NVIDIA H200 (docs/performance.md).
#include "common.cuh"

#define REALN_ATT_T 32
#define REALN_ATT_THREADS 128
#define REALN_ATT_DMAX 128
#define REALN_ATT_LD (REALN_ATT_DMAX + 4)
#define REALN_ATT_PLD (REALN_ATT_T + 1)
#define REALN_ATT_DELTA_WARPS 8

REALN_DEVICE float realn_att_neg_inf() { return realn_u2f(0xff800000u); }

REALN_DEVICE realn_f4 realn_ld4(const float* p) { return *(const realn_f4*)p; }

// dst[r][c] (row stride REALN_ATT_LD) = row row0 + r of head `head` of the sequence at `start` for
// rows < row_end and c < d, 0 elsewhere (up to REALN_ATT_DMAX). Called by the whole block. float4
// global reads where d and the source allow it.
REALN_DEVICE void realn_att_stage(float* dst, const float* src, i64 start, i64 row0, i64 row_end, i64 heads, i64 head,
                                  i64 d) {
    if ((d & 3) == 0 && ((u64)src & 15) == 0) {
        const int per_row = REALN_ATT_DMAX / 4;
        for (int e = threadIdx.x; e < REALN_ATT_T * per_row; e += blockDim.x) {
            const int r = e / per_row, c = 4 * (e % per_row);
            const i64 row = row0 + r;
            realn_f4 v = {0.0f, 0.0f, 0.0f, 0.0f};
            if (row < row_end && c < d) v = realn_ld4(src + ((start + row) * heads + head) * d + c);
            *(realn_f4*)(dst + r * REALN_ATT_LD + c) = v;
        }
        return;
    }
    for (int e = threadIdx.x; e < REALN_ATT_T * REALN_ATT_DMAX; e += blockDim.x) {
        const int r = e / REALN_ATT_DMAX, c = e % REALN_ATT_DMAX;
        const i64 row = row0 + r;
        dst[r * REALN_ATT_LD + c] = (row < row_end && c < d) ? src[((start + row) * heads + head) * d + c] : 0.0f;
    }
}

// s[i][j] = sum_{c < dpad} A[ra + i][c] * B[rb + 8 j][c] (tiles with row stride REALN_ATT_LD).
REALN_DEVICE void realn_att_dots(float s[2][4], const float* A, int ra, const float* B, int rb, int dpad) {
    REALN_UNROLL
    for (int i = 0; i < 2; ++i)
        REALN_UNROLL
        for (int j = 0; j < 4; ++j) s[i][j] = 0.0f;
    for (int c = 0; c < dpad; c += 4) {
        const realn_f4 a0 = realn_ld4(A + ra * REALN_ATT_LD + c), a1 = realn_ld4(A + (ra + 1) * REALN_ATT_LD + c);
        REALN_UNROLL
        for (int j = 0; j < 4; ++j) {
            const realn_f4 b = realn_ld4(B + (rb + 8 * j) * REALN_ATT_LD + c);
            s[0][j] += a0.x * b.x;
            s[0][j] += a0.y * b.y;
            s[0][j] += a0.z * b.z;
            s[0][j] += a0.w * b.w;
            s[1][j] += a1.x * b.x;
            s[1][j] += a1.y * b.y;
            s[1][j] += a1.z * b.z;
            s[1][j] += a1.w * b.w;
        }
    }
}

// o[i][4 q + e] += sum_{j < T} P[ra + i][j] * V[j][4 tc + 32 q + e] (P row stride REALN_ATT_PLD).
REALN_DEVICE void realn_att_acc(float o[2][16], const float* P, int ra, const float* V, int tc, int dpad) {
    for (int j = 0; j < REALN_ATT_T; ++j) {
        const float p0 = P[ra * REALN_ATT_PLD + j], p1 = P[(ra + 1) * REALN_ATT_PLD + j];
        REALN_UNROLL
        for (int q = 0; q < 4; ++q) {
            const int c = 4 * tc + 32 * q;
            if (c < dpad) {
                const realn_f4 v = realn_ld4(V + j * REALN_ATT_LD + c);
                o[0][4 * q + 0] += p0 * v.x;
                o[0][4 * q + 1] += p0 * v.y;
                o[0][4 * q + 2] += p0 * v.z;
                o[0][4 * q + 3] += p0 * v.w;
                o[1][4 * q + 0] += p1 * v.x;
                o[1][4 * q + 1] += p1 * v.y;
                o[1][4 * q + 2] += p1 * v.z;
                o[1][4 * q + 3] += p1 * v.w;
            }
        }
    }
}

// Max and sum over the 8 lanes of a row (lanes 8 k .. 8 k + 7 of a warp).
REALN_DEVICE float realn_att_row_max(float v) {
    for (int o = 4; o > 0; o >>= 1) {
        const float w = realn_shfl_xor(v, o);
        v = w > v ? w : v;
    }
    return v;
}
REALN_DEVICE float realn_att_row_sum(float v) {
    for (int o = 4; o > 0; o >>= 1) v += realn_shfl_xor(v, o);
    return v;
}

// Writes rows ra, ra + 1 of a tile (columns 4 tc + 32 q + e < d) scaled by mul[i].
REALN_DEVICE void realn_att_store(float* dst, const float o[2][16], const float mul[2], i64 start, i64 row0, int ra,
                                  i64 len, i64 heads, i64 head, i64 d, int tc) {
    REALN_UNROLL
    for (int i = 0; i < 2; ++i) {
        const i64 row = row0 + ra + i;
        if (row >= len) continue;
        float* out = dst + ((start + row) * heads + head) * d;
        REALN_UNROLL
        for (int q = 0; q < 4; ++q)
            REALN_UNROLL
            for (int e = 0; e < 4; ++e) {
                const int c = 4 * tc + 32 * q + e;
                if (c < d) out[c] = o[i][4 * q + e] * mul[i];
            }
    }
}

// Grid (tiles, hq), REALN_ATT_THREADS threads. Tile rows are query rows q0 .. q0 + T - 1.
REALN_GLOBAL void realn_attention_fwd(const float* q, const float* k, const float* v, const int* tiles, i64 hq, i64 hkv,
                                      i64 d, float scale, float* out, float* lse) {
    REALN_SHARED realn_f4 qs4[REALN_ATT_T * REALN_ATT_LD / 4];
    REALN_SHARED realn_f4 kv4[REALN_ATT_T * REALN_ATT_LD / 4];
    REALN_SHARED float ps[REALN_ATT_T * REALN_ATT_PLD];
    float* qs = (float*)qs4;
    float* kv = (float*)kv4;
    const i64 start = tiles[3 * blockIdx.x], len = tiles[3 * blockIdx.x + 1], q0 = tiles[3 * blockIdx.x + 2];
    const i64 h = blockIdx.y, g = h / (hq / hkv);
    const int tr = threadIdx.x / 8, tc = threadIdx.x % 8, ra = 2 * tr;
    const int dpad = (int)((d + 3) & ~(i64)3);
    const i64 kend = len < q0 + REALN_ATT_T ? len : q0 + REALN_ATT_T;  // keys any row here sees
    realn_att_stage(qs, q, start, q0, len, hq, h, d);
    float m[2], l[2], o[2][16];
    REALN_UNROLL
    for (int i = 0; i < 2; ++i) {
        m[i] = realn_att_neg_inf();
        l[i] = 0.0f;
        REALN_UNROLL
        for (int c = 0; c < 16; ++c) o[i][c] = 0.0f;
    }
    for (i64 k0 = 0; k0 < kend; k0 += REALN_ATT_T) {
        realn_sync();  // the previous V tile is consumed (and qs is written before the first use)
        realn_att_stage(kv, k, start, k0, kend, hkv, g, d);
        realn_sync();
        float s[2][4];
        realn_att_dots(s, qs, ra, kv, tc, dpad);
        REALN_UNROLL
        for (int i = 0; i < 2; ++i) {
            const i64 row = q0 + ra + i;
            float tmax = realn_att_neg_inf();
            REALN_UNROLL
            for (int j = 0; j < 4; ++j) {
                const bool seen = row < len && k0 + tc + 8 * j <= row;  // causal
                s[i][j] = seen ? s[i][j] * scale : realn_att_neg_inf();
                tmax = s[i][j] > tmax ? s[i][j] : tmax;
            }
            tmax = realn_att_row_max(tmax);
            const float m_new = tmax > m[i] ? tmax : m[i];
            const bool any = m_new > realn_att_neg_inf();  // false only for rows past the sequence
            const float corr = any ? realn_exp(m[i] - m_new) : 1.0f;
            float psum = 0.0f;
            REALN_UNROLL
            for (int j = 0; j < 4; ++j) {
                const float p = s[i][j] > realn_att_neg_inf() ? realn_exp(s[i][j] - m_new) : 0.0f;
                ps[(ra + i) * REALN_ATT_PLD + tc + 8 * j] = p;
                psum += p;
            }
            l[i] = l[i] * corr + realn_att_row_sum(psum);
            REALN_UNROLL
            for (int c = 0; c < 16; ++c) o[i][c] *= corr;
            m[i] = m_new;
        }
        realn_sync();  // K consumed, P written
        realn_att_stage(kv, v, start, k0, kend, hkv, g, d);
        realn_sync();
        realn_att_acc(o, ps, ra, kv, tc, dpad);
    }
    const float inv[2] = {l[0] > 0.0f ? 1.0f / l[0] : 0.0f, l[1] > 0.0f ? 1.0f / l[1] : 0.0f};
    realn_att_store(out, o, inv, start, q0, ra, len, hq, h, d, tc);
    if (lse && tc == 0)
        REALN_UNROLL
        for (int i = 0; i < 2; ++i) {
            const i64 row = q0 + ra + i;
            if (row < len) lse[(start + row) * hq + h] = m[i] + realn_log(l[i]);
        }
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

// dQ: grid (tiles, hq) as the forward; dynamic shared memory: Q, dO, K, V tiles and dS.
// dS_ij = P_ij (dP_ij - delta_i) with P_ij = exp(scale s_ij - lse_i), dP = dO V^T;
// dQ_i = scale sum_j dS_ij K_j.
REALN_GLOBAL void realn_attention_bwd_dq(const float* q, const float* k, const float* v, const float* lse,
                                         const float* dout, const float* delta, const int* tiles, i64 hq, i64 hkv,
                                         i64 d, float scale, float* dq) {
    float* qs = realn_dynamic_smem();
    float* dos = qs + REALN_ATT_T * REALN_ATT_LD;
    float* ks = dos + REALN_ATT_T * REALN_ATT_LD;
    float* vs = ks + REALN_ATT_T * REALN_ATT_LD;
    float* dss = vs + REALN_ATT_T * REALN_ATT_LD;
    const i64 start = tiles[3 * blockIdx.x], len = tiles[3 * blockIdx.x + 1], q0 = tiles[3 * blockIdx.x + 2];
    const i64 h = blockIdx.y, g = h / (hq / hkv);
    const int tr = threadIdx.x / 8, tc = threadIdx.x % 8, ra = 2 * tr;
    const int dpad = (int)((d + 3) & ~(i64)3);
    const i64 kend = len < q0 + REALN_ATT_T ? len : q0 + REALN_ATT_T;
    realn_att_stage(qs, q, start, q0, len, hq, h, d);
    realn_att_stage(dos, dout, start, q0, len, hq, h, d);
    float L[2], D[2], o[2][16];
    REALN_UNROLL
    for (int i = 0; i < 2; ++i) {
        const i64 row = q0 + ra + i;
        L[i] = row < len ? lse[(start + row) * hq + h] : 0.0f;
        D[i] = row < len ? delta[(start + row) * hq + h] : 0.0f;
        REALN_UNROLL
        for (int c = 0; c < 16; ++c) o[i][c] = 0.0f;
    }
    for (i64 k0 = 0; k0 < kend; k0 += REALN_ATT_T) {
        realn_sync();
        realn_att_stage(ks, k, start, k0, kend, hkv, g, d);
        realn_att_stage(vs, v, start, k0, kend, hkv, g, d);
        realn_sync();
        float s[2][4], dp[2][4];
        realn_att_dots(s, qs, ra, ks, tc, dpad);
        realn_att_dots(dp, dos, ra, vs, tc, dpad);
        REALN_UNROLL
        for (int i = 0; i < 2; ++i) {
            const i64 row = q0 + ra + i;
            REALN_UNROLL
            for (int j = 0; j < 4; ++j) {
                const bool seen = row < len && k0 + tc + 8 * j <= row;
                const float p = seen ? realn_exp(s[i][j] * scale - L[i]) : 0.0f;
                dss[(ra + i) * REALN_ATT_PLD + tc + 8 * j] = p * (dp[i][j] - D[i]);
            }
        }
        realn_sync();
        realn_att_acc(o, dss, ra, ks, tc, dpad);
    }
    const float mul[2] = {scale, scale};
    realn_att_store(dq, o, mul, start, q0, ra, len, hq, h, d, tc);
}

// dK, dV: grid (tiles, hkv); tile rows are KEY rows k0 .. k0 + T - 1 of kv head g. For every query
// head of the group and every query tile from k0 on: dV_j += sum_i P_ij dO_i, dK_j += scale sum_i
// dS_ij Q_i. Dynamic shared memory: K, V, Q, dO tiles, P^T and dS^T, and the tile's lse / delta.
REALN_GLOBAL void realn_attention_bwd_dkv(const float* q, const float* k, const float* v, const float* lse,
                                          const float* dout, const float* delta, const int* tiles, i64 hq, i64 hkv,
                                          i64 d, float scale, float* dk, float* dv) {
    float* ks = realn_dynamic_smem();
    float* vs = ks + REALN_ATT_T * REALN_ATT_LD;
    float* qs = vs + REALN_ATT_T * REALN_ATT_LD;
    float* dos = qs + REALN_ATT_T * REALN_ATT_LD;
    float* ps = dos + REALN_ATT_T * REALN_ATT_LD;
    float* dss = ps + REALN_ATT_T * REALN_ATT_PLD;
    float* ls = dss + REALN_ATT_T * REALN_ATT_PLD;
    float* dl = ls + REALN_ATT_T;
    const i64 start = tiles[3 * blockIdx.x], len = tiles[3 * blockIdx.x + 1], k0 = tiles[3 * blockIdx.x + 2];
    const i64 g = blockIdx.y, group = hq / hkv;
    const int tr = threadIdx.x / 8, tc = threadIdx.x % 8, ra = 2 * tr;
    const int dpad = (int)((d + 3) & ~(i64)3);
    realn_att_stage(ks, k, start, k0, len, hkv, g, d);
    realn_att_stage(vs, v, start, k0, len, hkv, g, d);
    float dka[2][16], dva[2][16];
    REALN_UNROLL
    for (int i = 0; i < 2; ++i)
        REALN_UNROLL
        for (int c = 0; c < 16; ++c) dka[i][c] = dva[i][c] = 0.0f;
    for (i64 h = g * group; h < (g + 1) * group; ++h) {
        for (i64 i0 = k0; i0 < len; i0 += REALN_ATT_T) {
            realn_sync();
            realn_att_stage(qs, q, start, i0, len, hq, h, d);
            realn_att_stage(dos, dout, start, i0, len, hq, h, d);
            if (threadIdx.x < REALN_ATT_T) {
                const i64 qrow = i0 + threadIdx.x;
                ls[threadIdx.x] = qrow < len ? lse[(start + qrow) * hq + h] : 0.0f;
                dl[threadIdx.x] = qrow < len ? delta[(start + qrow) * hq + h] : 0.0f;
            }
            realn_sync();
            float s[2][4], dp[2][4];
            realn_att_dots(s, ks, ra, qs, tc, dpad);   // s[i][j]: key ra + i, query tc + 8 j
            realn_att_dots(dp, vs, ra, dos, tc, dpad);
            REALN_UNROLL
            for (int i = 0; i < 2; ++i) {
                const i64 key = k0 + ra + i;
                REALN_UNROLL
                for (int j = 0; j < 4; ++j) {
                    const int qj = tc + 8 * j;
                    const i64 qi = i0 + qj;
                    const bool seen = key < len && qi < len && qi >= key;
                    const float p = seen ? realn_exp(s[i][j] * scale - ls[qj]) : 0.0f;
                    ps[(ra + i) * REALN_ATT_PLD + qj] = p;
                    dss[(ra + i) * REALN_ATT_PLD + qj] = p * (dp[i][j] - dl[qj]);
                }
            }
            realn_sync();
            realn_att_acc(dva, ps, ra, dos, tc, dpad);
            realn_att_acc(dka, dss, ra, qs, tc, dpad);
        }
    }
    const float kmul[2] = {scale, scale}, vmul[2] = {1.0f, 1.0f};
    realn_att_store(dk, dka, kmul, start, k0, ra, len, hkv, g, d, tc);
    realn_att_store(dv, dva, vmul, start, k0, ra, len, hkv, g, d, tc);
}
