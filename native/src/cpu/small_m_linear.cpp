// Small-M linear forward (decode GEMV batch), see small_m_linear.hpp. A tile is MR rows of x by NR
// rows of W: each k-step loads NR weight vectors once and FMAs them into MR*NR accumulators, so
// the weights stream from memory once per call for up to 4 rows of x (then NR is 1: see
// run_tile_blocks; more rows re-read the tile from L1/L2). The accumulation order of an output element is fixed (vector lanes over k, the
// masked/scalar tail, then a fixed lane reduction) and independent of the thread split.
#include "small_m_linear.hpp"
#include "simd_sum.hpp"

#include <immintrin.h>
#include <omp.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <vector>

#include "bf16.hpp"
#include "gemm_bf16.hpp"

namespace realn::cpu {
namespace {

constexpr int64_t kNr = 4;  // weight rows per tile

// The weight tile after this one (the next NR rows, contiguous in W) is requested line by line in
// step with the reads of this one: a tile interleaves NR short row streams (1.5-3 KiB each for
// gpt2-small), a pattern the hardware prefetchers follow poorly, so without it a 1-row decode reads
// its weights at about half of what one core streams. A prefetch never faults (past the end of W it
// is dropped) and changes no result.
inline void prefetch_next_tile(const void* p) { _mm_prefetch(static_cast<const char*>(p), _MM_HINT_T0); }

// ---------------------------------------------------------------- AVX-512
// Keeps a loaded vector in its register: without it GCC folds the weight loads into every FMA as a
// memory operand (one load per FMA instead of one per weight vector), which made the full tiles
// load-bound at about half the FMA rate (64 rows of gpt2-small's decode linears, one thread on the
// EPYC: 5.4 -> 3.1 ms per row, OpenBLAS SGEMM at 256 rows 2.7-3.0). Changes no value.
template <typename V>
__attribute__((always_inline)) inline void keep_in_register(V& v) { asm("" : "+v"(v)); }

template <int MR, int NR>
__attribute__((target("avx512f"))) void tile_avx512(const float* X, const float* W, float* Y, int64_t K,
                                                     int64_t ldy) {
    __m512 acc[MR][NR];
    for (int m = 0; m < MR; ++m)
        for (int n = 0; n < NR; ++n) acc[m][n] = _mm512_setzero_ps();
    int64_t k = 0;
    for (; k + 16 <= K; k += 16) {
        __m512 w[NR];
        for (int n = 0; n < NR; ++n) w[n] = _mm512_loadu_ps(W + n * K + k);
        if constexpr (NR == 1) prefetch_next_tile(W + K + k);  // wide tiles: the driver prefetches the next block
        for (int n = 0; n < NR; ++n) keep_in_register(w[n]);
        for (int m = 0; m < MR; ++m) {
            const __m512 x = _mm512_loadu_ps(X + m * K + k);
            for (int n = 0; n < NR; ++n) acc[m][n] = _mm512_fmadd_ps(x, w[n], acc[m][n]);
        }
    }
    if (k < K) {
        const __mmask16 mask = static_cast<__mmask16>((1u << (K - k)) - 1u);
        __m512 w[NR];
        for (int n = 0; n < NR; ++n) w[n] = _mm512_maskz_loadu_ps(mask, W + n * K + k);
        for (int m = 0; m < MR; ++m) {
            const __m512 x = _mm512_maskz_loadu_ps(mask, X + m * K + k);
            for (int n = 0; n < NR; ++n) acc[m][n] = _mm512_fmadd_ps(x, w[n], acc[m][n]);
        }
    }
    for (int m = 0; m < MR; ++m)
        for (int n = 0; n < NR; ++n) Y[m * ldy + n] = hsum512(acc[m][n]);
}

// ---------------------------------------------------------------- AVX2 + FMA (16 registers: NR 2)
__attribute__((target("avx2,fma"))) inline float hsum256(__m256 v) {
    const __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    const __m128 t = _mm_add_ps(s, _mm_movehl_ps(s, s));
    return _mm_cvtss_f32(_mm_add_ss(t, _mm_shuffle_ps(t, t, 1)));
}

template <int MR, int NR>
__attribute__((target("avx2,fma"))) void tile_avx2(const float* X, const float* W, float* Y, int64_t K,
                                                   int64_t ldy) {
    __m256 acc[MR][NR];
    for (int m = 0; m < MR; ++m)
        for (int n = 0; n < NR; ++n) acc[m][n] = _mm256_setzero_ps();
    int64_t k = 0;
    for (; k + 8 <= K; k += 8) {
        __m256 w[NR];
        for (int n = 0; n < NR; ++n) w[n] = _mm256_loadu_ps(W + n * K + k);
        for (int m = 0; m < MR; ++m) {
            const __m256 x = _mm256_loadu_ps(X + m * K + k);
            for (int n = 0; n < NR; ++n) acc[m][n] = _mm256_fmadd_ps(x, w[n], acc[m][n]);
        }
    }
    for (int m = 0; m < MR; ++m)
        for (int n = 0; n < NR; ++n) {
            float s = hsum256(acc[m][n]);
            for (int64_t t = k; t < K; ++t) s += X[m * K + t] * W[n * K + t];
            Y[m * ldy + n] = s;
        }
}

// ---------------------------------------------------------------- scalar
template <int MR, int NR>
void tile_scalar(const float* X, const float* W, float* Y, int64_t K, int64_t ldy) {
    for (int m = 0; m < MR; ++m)
        for (int n = 0; n < NR; ++n) {
            float s = 0.0f;
            for (int64_t t = 0; t < K; ++t) s += X[m * K + t] * W[n * K + t];
            Y[m * ldy + n] = s;
        }
}

using TileFn = void (*)(const float*, const float*, float*, int64_t, int64_t);

// Tiles by MR - 1 of one ISA: a full weight block (NR = kNr; AVX2 runs it as two NR-2 tiles to
// stay within 16 registers) and single weight rows for the tail of `out`.
struct TileSet {
    TileFn full[4];
    TileFn one[4];
    int64_t nr;  // weight rows of a full tile
};

// Weight rows of the AVX-512 full tiles: 4 rows of x by 6 weight rows is 24 accumulators + 6
// weight vectors + 1 x vector (31 of 32 registers), 10 loads per 24 FMAs (4 x 4: 8 per 16), and x
// re-read from L2 once per 6 weight rows instead of 4.
constexpr int64_t kNrWide = 6;

template <int MR>
void avx2_full(const float* X, const float* W, float* Y, int64_t K, int64_t ldy) {
    tile_avx2<MR, 2>(X, W, Y, K, ldy);
    tile_avx2<MR, 2>(X, W + 2 * K, Y + 2, K, ldy);
}

const TileSet& tiles(SimdIsa isa) {
    static const TileSet k512{{tile_avx512<1, kNrWide>, tile_avx512<2, kNrWide>, tile_avx512<3, kNrWide>, tile_avx512<4, kNrWide>},
                              {tile_avx512<1, 1>, tile_avx512<2, 1>, tile_avx512<3, 1>, tile_avx512<4, 1>},
                              kNrWide};
    static const TileSet k256{{avx2_full<1>, avx2_full<2>, avx2_full<3>, avx2_full<4>},
                              {tile_avx2<1, 1>, tile_avx2<2, 1>, tile_avx2<3, 1>, tile_avx2<4, 1>},
                              kNr};
    static const TileSet kScalar{{tile_scalar<1, kNr>, tile_scalar<2, kNr>, tile_scalar<3, kNr>, tile_scalar<4, kNr>},
                                 {tile_scalar<1, 1>, tile_scalar<2, 1>, tile_scalar<3, 1>, tile_scalar<4, 1>},
                                 kNr};
    switch (isa) {
        case SimdIsa::Avx512: return k512;
        case SimdIsa::Avx2: return k256;
        default: return kScalar;
    }
}

// The driver of every kernel: blocks of output columns over the threads of the enclosing
// parallel region (an orphaned omp for: serial outside one), rows of X in tiles of up to 4. Up to 4
// rows of x (decode) read one weight row at a time (the one-row tile, blocks of kNr rows): each
// thread then streams its part of W strictly in order, which the hardware prefetchers follow (4
// interleaved rows read at 0.6-0.7 of the machine's bandwidth on a 2-core EPYC, in order at
// 0.9-1.0; bf16 one-row decode linears 9.5-10.3 -> 5.0-5.3 ms for gpt2-small). More rows go
// through the full-block tile (blocks of ts.nr weight rows), which loads each weight vector once
// for ts.nr weight rows (x is then re-read from L1/L2 per block); the next block is prefetched into
// L2 while this one is computed (its tiles carry no prefetches, which would be issued again for
// every tile of 4 rows of x). Both tiles sum every output element in the same order, so the
// choice changes no bit. Then the tail of `out` row by row, then the bias.
inline void prefetch_l2(const void* p, int64_t bytes) {
    const char* c = static_cast<const char*>(p);
    for (int64_t o = 0; o < bytes; o += 64) _mm_prefetch(c + o, _MM_HINT_T1);
}

template <typename TileSetT, typename XT, typename WT>
void run_tile_blocks(const TileSetT& ts, const XT* X, const WT* W, const float* B, float* Y, int64_t rows,
                     int64_t in, int64_t out) {
    const bool wide = rows > 4;
    const int64_t nrb = wide ? ts.nr : kNr;
    const int64_t blocks = (out + nrb - 1) / nrb;
#pragma omp for schedule(static)
    for (int64_t b = 0; b < blocks; ++b) {
        const int64_t n0 = b * nrb, nr = std::min(nrb, out - n0);
        const WT* Wb = W + n0 * in;
        if (wide && n0 + nrb < out)
            prefetch_l2(Wb + nrb * in, std::min(nrb, out - n0 - nrb) * in * static_cast<int64_t>(sizeof(WT)));
        for (int64_t m0 = 0; m0 < rows; m0 += 4) {
            const int64_t mr = std::min<int64_t>(4, rows - m0);
            const XT* Xm = X + m0 * in;
            float* Ym = Y + m0 * out + n0;
            if (nr == nrb && wide)
                ts.full[mr - 1](Xm, Wb, Ym, in, out);
            // else: one weight row at a time (decode, or the tail of `out`)
            else
                for (int64_t n = 0; n < nr; ++n) ts.one[mr - 1](Xm, Wb + n * in, Ym + n, in, out);
        }
        if (B)
            for (int64_t m = 0; m < rows; ++m)
                for (int64_t n = 0; n < nr; ++n) Y[m * out + n0 + n] += B[n0 + n];
    }
}

// Threads only when the weights are big enough to amortise the fork (~64 KiB).
template <typename TileSetT>
void run_tiles(const TileSetT& ts, const float* X, const float* W, const float* B, float* Y, int64_t rows,
               int64_t in, int64_t out) {
#pragma omp parallel if (in * out >= (1 << 14))
    run_tile_blocks(ts, X, W, B, Y, rows, in, out);
}

// ---------------------------------------------------------------- bf16 weights (vector ISAs)
// x is rounded to bf16 (RNE) once per call; an output element is the vdpbf16ps sum of its products
// of bf16 pairs: 16 fp32 lanes, lane i of a 32-element chunk c takes k = 32c + 2i + 1, then
// 32c + 2i (each an FMA of an exact product, round to nearest even, denormal inputs read as zero,
// denormal results flushed to zero), chunks in order, missing k (the tail) as zeros; then hsum512's
// fixed lane reduction. The AVX-512F, AVX2 and scalar kernels compute exactly this (the first two
// with MXCSR's DAZ/FTZ set around them, the scalar one by flushing explicitly), so every ISA gives
// the same bits.
constexpr int64_t kChunk = 32;  // bf16 elements per vdpbf16ps

__attribute__((target("avx512f,avx512bw"))) inline __mmask32 tail_mask32(int64_t left) {
    return left >= 32 ? ~__mmask32(0) : static_cast<__mmask32>((1u << left) - 1u);
}

template <int MR, int NR>
__attribute__((target("avx512f,avx512bw,avx512bf16"))) void tile_dp_bf16(const uint16_t* X, const uint16_t* W,
                                                                          float* Y, int64_t K, int64_t ldy) {
    __m512 acc[MR][NR];
    for (int m = 0; m < MR; ++m)
        for (int n = 0; n < NR; ++n) acc[m][n] = _mm512_setzero_ps();
    int64_t k = 0;
    for (; k + kChunk <= K; k += kChunk) {
        __m512bh w[NR];
        for (int n = 0; n < NR; ++n) w[n] = (__m512bh)_mm512_loadu_si512(W + n * K + k);
        if constexpr (NR == 1) prefetch_next_tile(W + K + k);  // wide tiles: the driver prefetches the next block
        for (int n = 0; n < NR; ++n) keep_in_register(w[n]);
        for (int m = 0; m < MR; ++m) {
            const __m512bh x = (__m512bh)_mm512_loadu_si512(X + m * K + k);
            for (int n = 0; n < NR; ++n) acc[m][n] = _mm512_dpbf16_ps(acc[m][n], x, w[n]);
        }
    }
    if (k < K) {
        const __mmask32 mask = tail_mask32(K - k);
        __m512bh w[NR];
        for (int n = 0; n < NR; ++n) w[n] = (__m512bh)_mm512_maskz_loadu_epi16(mask, W + n * K + k);
        for (int m = 0; m < MR; ++m) {
            const __m512bh x = (__m512bh)_mm512_maskz_loadu_epi16(mask, X + m * K + k);
            for (int n = 0; n < NR; ++n) acc[m][n] = _mm512_dpbf16_ps(acc[m][n], x, w[n]);
        }
    }
    for (int m = 0; m < MR; ++m)
        for (int n = 0; n < NR; ++n) Y[m * ldy + n] = hsum512(acc[m][n]);
}

// vdpbf16ps emulated with AVX-512F FMAs (needs DAZ/FTZ in MXCSR): the odd bf16 of each pair is the
// dword's high half, the even one its low half shifted up.
template <int MR, int NR>
__attribute__((target("avx512f,avx512bw"))) void tile_dp_avx512(const uint16_t* X, const uint16_t* W, float* Y,
                                                                 int64_t K, int64_t ldy) {
    const __m512i hi = _mm512_set1_epi32(static_cast<int32_t>(0xffff0000u));
    __m512 acc[MR][NR];
    for (int m = 0; m < MR; ++m)
        for (int n = 0; n < NR; ++n) acc[m][n] = _mm512_setzero_ps();
    for (int64_t k = 0; k < K; k += kChunk) {
        const __mmask32 mask = tail_mask32(K - k);
        __m512 wo[NR], we[NR];
        for (int n = 0; n < NR; ++n) {
            const __m512i v = _mm512_maskz_loadu_epi16(mask, W + n * K + k);
            wo[n] = _mm512_castsi512_ps(_mm512_and_si512(v, hi));
            we[n] = _mm512_castsi512_ps(_mm512_slli_epi32(v, 16));
        }
        for (int m = 0; m < MR; ++m) {
            const __m512i v = _mm512_maskz_loadu_epi16(mask, X + m * K + k);
            const __m512 xo = _mm512_castsi512_ps(_mm512_and_si512(v, hi));
            const __m512 xe = _mm512_castsi512_ps(_mm512_slli_epi32(v, 16));
            for (int n = 0; n < NR; ++n) {
                acc[m][n] = _mm512_fmadd_ps(xo, wo[n], acc[m][n]);
                acc[m][n] = _mm512_fmadd_ps(xe, we[n], acc[m][n]);
            }
        }
    }
    for (int m = 0; m < MR; ++m)
        for (int n = 0; n < NR; ++n) Y[m * ldy + n] = hsum512(acc[m][n]);
}

// The same with AVX2: lanes 0-7 and 8-15 in two registers; hsum512(v) = hsum256(lanes 0-7 + 8-15).
// Loads stop at K (a scalar tail copy pads the last chunk with zeros).
template <int MR, int NR>
__attribute__((target("avx2,fma"))) void tile_dp_avx2(const uint16_t* X, const uint16_t* W, float* Y, int64_t K,
                                                      int64_t ldy) {
    const __m256i hi = _mm256_set1_epi32(static_cast<int32_t>(0xffff0000u));
    __m256 acc[MR][NR][2];
    for (int m = 0; m < MR; ++m)
        for (int n = 0; n < NR; ++n) acc[m][n][0] = acc[m][n][1] = _mm256_setzero_ps();
    alignas(32) uint16_t pad[MR + NR][kChunk];
    for (int64_t k = 0; k < K; k += kChunk) {
        const bool full = k + kChunk <= K;
        auto src = [&](const uint16_t* base, int slot) -> const uint16_t* {
            if (full) return base + k;
            std::memset(pad[slot], 0, sizeof(pad[slot]));
            std::memcpy(pad[slot], base + k, sizeof(uint16_t) * (K - k));
            return pad[slot];
        };
        __m256 wo[NR][2], we[NR][2];
        for (int n = 0; n < NR; ++n) {
            const uint16_t* p = src(W + n * K, MR + n);
            for (int h = 0; h < 2; ++h) {
                const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + 16 * h));
                wo[n][h] = _mm256_castsi256_ps(_mm256_and_si256(v, hi));
                we[n][h] = _mm256_castsi256_ps(_mm256_slli_epi32(v, 16));
            }
        }
        for (int m = 0; m < MR; ++m) {
            const uint16_t* p = src(X + m * K, m);
            for (int h = 0; h < 2; ++h) {
                const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + 16 * h));
                const __m256 xo = _mm256_castsi256_ps(_mm256_and_si256(v, hi));
                const __m256 xe = _mm256_castsi256_ps(_mm256_slli_epi32(v, 16));
                for (int n = 0; n < NR; ++n) {
                    acc[m][n][h] = _mm256_fmadd_ps(xo, wo[n][h], acc[m][n][h]);
                    acc[m][n][h] = _mm256_fmadd_ps(xe, we[n][h], acc[m][n][h]);
                }
            }
        }
    }
    for (int m = 0; m < MR; ++m)
        for (int n = 0; n < NR; ++n) Y[m * ldy + n] = hsum256(_mm256_add_ps(acc[m][n][0], acc[m][n][1]));
}

// Scalar: flushes by hand (no reliance on MXCSR or on how fmaf is implemented).
inline float flush_denormal(float f) { return std::fabs(f) < 1.17549435e-38f ? std::copysign(0.0f, f) : f; }

template <int MR, int NR>
void tile_dp_scalar(const uint16_t* X, const uint16_t* W, float* Y, int64_t K, int64_t ldy) {
    auto at = [K](const uint16_t* row, int64_t k) {
        return k < K ? flush_denormal(bf16_to_f32(row[k])) : 0.0f;
    };
    for (int m = 0; m < MR; ++m)
        for (int n = 0; n < NR; ++n) {
            float lane[16] = {};
            for (int64_t k = 0; k < K; k += kChunk)
                for (int i = 0; i < 16; ++i) {
                    const int64_t ko = k + 2 * i + 1, ke = k + 2 * i;
                    lane[i] = flush_denormal(std::fma(at(X + m * K, ko), at(W + n * K, ko), lane[i]));
                    lane[i] = flush_denormal(std::fma(at(X + m * K, ke), at(W + n * K, ke), lane[i]));
                }
            float s8[8], s4[4];
            for (int i = 0; i < 8; ++i) s8[i] = lane[i] + lane[i + 8];
            for (int i = 0; i < 4; ++i) s4[i] = s8[i] + s8[i + 4];
            Y[m * ldy + n] = (s4[0] + s4[2]) + (s4[1] + s4[3]);
        }
}

using TileDpFn = void (*)(const uint16_t*, const uint16_t*, float*, int64_t, int64_t);
struct TileSetDp {
    TileDpFn full[4];
    TileDpFn one[4];
    int64_t nr;  // weight rows of a full tile
};

// Full tiles are 4 x 4: 4 x 6 vdpbf16ps tiles measured no faster (one EPYC core, gpt2-small's
// decode linears at 8, 16 and 64 rows: 3.6 / 2.5-2.8 / 1.8-2.0 ms per row against 3.2-3.3 /
// 2.4-2.5 / 1.7-1.8 for 4 x 4), and the emulating AVX-512F tile needs two registers per weight row.
#define REALN_DP_TILESET(fn, NR) \
    TileSetDp{{fn<1, NR>, fn<2, NR>, fn<3, NR>, fn<4, NR>}, {fn<1, 1>, fn<2, 1>, fn<3, 1>, fn<4, 1>}, NR}

const TileSetDp& dp_tiles(SimdIsa isa) {
    static const TileSetDp kBf16 = REALN_DP_TILESET(tile_dp_bf16, kNr);
    static const TileSetDp k512 = REALN_DP_TILESET(tile_dp_avx512, kNr);
    static const TileSetDp k256 = REALN_DP_TILESET(tile_dp_avx2, kNr);
    static const TileSetDp kScalar = REALN_DP_TILESET(tile_dp_scalar, kNr);
    switch (isa) {
        case SimdIsa::Avx512Bf16: return kBf16;
        case SimdIsa::Avx512: return k512;
        case SimdIsa::Avx2: return k256;
        default: return kScalar;
    }
}
#undef REALN_DP_TILESET


// ---------------------------------------------------------------- AMX (bf16 weights)
// The transposed product Y^T = W X^T on AMX tiles: an A tile is 16 weight rows x 32 k read straight
// from W (row stride `in`), a B tile 16 k pairs x 16 rows of x (x packed once per call: per group
// of 16 rows, pair q of row m at [q][m], zero-padded), a C tile 16 weight rows x 16 rows of x. K
// runs in blocks of kAmxKc (512) with the C tiles zeroed per block and each block's sum merged into
// y (first block: y = bias + sum, later: y += sum), as the AMX path of the bf16 GEMM does
// (gemm_bf16.cpp), so each element's sum is the same whatever the row count. A tail of `out`
// (< 16 rows) or a K that is not a multiple of 32 reads a zero-padded copy of the 16 rows.
constexpr int64_t kAmxKc = 512;

struct alignas(64) AmxConfig {
    uint8_t palette = 1, start_row = 0, reserved[14] = {};
    uint16_t colsb[16] = {};
    uint8_t rows[16] = {};
};

__attribute__((target("amx-tile,amx-bf16"))) void amx_small_m_config() {
    AmxConfig cfg;
    for (int t = 0; t < 7; ++t) {  // tmm0-3 C, tmm4 A, tmm5-6 B
        cfg.colsb[t] = 64;
        cfg.rows[t] = 16;
    }
    _tile_loadconfig(&cfg);
}

__attribute__((target("amx-tile"))) void amx_small_m_release() { _tile_release(); }

// One K block of 16 weight rows (A from `a`, row stride `lda` elements, kcp k) against the G
// groups of packed x (pairs [q0, q0 + kcp / 2) of each), sums into acc[G][16 w rows][16 x rows].
template <int G>
__attribute__((target("amx-tile,amx-bf16"))) void amx_small_m_block(const uint16_t* a, int64_t lda, int64_t kcp,
                                                                    const uint32_t* xp, int64_t pairs_total,
                                                                    int64_t q0, float* acc) {
    _tile_zero(0);
    if constexpr (G > 1) _tile_zero(1);
    if constexpr (G > 2) _tile_zero(2);
    if constexpr (G > 3) _tile_zero(3);
    for (int64_t s = 0; s < kcp; s += 32) {
        _tile_loadd(4, a + s, lda * 2);
        const uint32_t* b = xp + (q0 + s / 2) * 16;
        _tile_loadd(5, b, 64);
        _tile_dpbf16ps(0, 4, 5);
        if constexpr (G > 1) {
            _tile_loadd(6, b + pairs_total * 16, 64);
            _tile_dpbf16ps(1, 4, 6);
        }
        if constexpr (G > 2) {
            _tile_loadd(5, b + 2 * pairs_total * 16, 64);
            _tile_dpbf16ps(2, 4, 5);
        }
        if constexpr (G > 3) {
            _tile_loadd(6, b + 3 * pairs_total * 16, 64);
            _tile_dpbf16ps(3, 4, 6);
        }
    }
    _tile_stored(0, acc, 64);
    if constexpr (G > 1) _tile_stored(1, acc + 256, 64);
    if constexpr (G > 2) _tile_stored(2, acc + 512, 64);
    if constexpr (G > 3) _tile_stored(3, acc + 768, 64);
}

using AmxBlockFn = void (*)(const uint16_t*, int64_t, int64_t, const uint32_t*, int64_t, int64_t, float*);

// x [rows, in] fp32 -> bf16 pairs for B tiles: out[g][q][m] = (x[16g+m][2q], x[16g+m][2q+1]),
// q < pairs_total (K padded to a multiple of 32), zero for padded k and rows.
const uint32_t* amx_pack_x(const float* X, int64_t rows, int64_t in, int64_t groups, int64_t pairs_total) {
    thread_local std::vector<uint32_t> buf;
    thread_local std::vector<uint16_t> row;
    const size_t n = static_cast<size_t>(groups * pairs_total * 16);
    if (buf.size() < n) buf.resize(n);
    std::fill(buf.begin(), buf.begin() + static_cast<std::ptrdiff_t>(n), 0u);
    row.assign(static_cast<size_t>(pairs_total * 2), 0);
    for (int64_t m = 0; m < rows; ++m) {
        f32_to_bf16_n(X + m * in, row.data(), in);
        uint32_t* o = buf.data() + (m / 16) * pairs_total * 16 + (m % 16);
        for (int64_t q = 0; q < pairs_total; ++q)
            o[q * 16] = uint32_t(row[2 * q]) | (uint32_t(row[2 * q + 1]) << 16);
    }
    return buf.data();
}

__attribute__((target("amx-tile,amx-bf16,avx512f"))) void amx_small_m(const float* X, const uint16_t* W,
                                                                      const float* B, float* Y, int64_t rows,
                                                                      int64_t in, int64_t out) {
    const int64_t groups = (rows + 15) / 16, kp = (in + 31) / 32 * 32, pairs_total = kp / 2;
    const uint32_t* xp = amx_pack_x(X, rows, in, groups, pairs_total);
    static const AmxBlockFn fns[4] = {amx_small_m_block<1>, amx_small_m_block<2>, amx_small_m_block<3>,
                                      amx_small_m_block<4>};
    const AmxBlockFn block = fns[groups - 1];
    const int64_t nblocks = (out + 15) / 16;
    const bool direct_k = in % 32 == 0;
#pragma omp parallel if (in * out >= (1 << 14))
    {
        amx_small_m_config();
        alignas(64) float acc[4 * 256];
        std::vector<uint16_t> pad;  // a zero-padded copy of 16 rows when they cannot be tile-loaded in place
#pragma omp for schedule(static)
        for (int64_t b = 0; b < nblocks; ++b) {
            const int64_t n0 = b * 16, nr = std::min<int64_t>(16, out - n0);
            const uint16_t* a = W + n0 * in;
            int64_t lda = in;
            if (nr < 16 || !direct_k) {
                pad.assign(static_cast<size_t>(16 * kp), 0);
                for (int64_t i = 0; i < nr; ++i) std::memcpy(pad.data() + i * kp, a + i * in, sizeof(uint16_t) * in);
                a = pad.data();
                lda = kp;
            }
            for (int64_t pc = 0; pc < kp; pc += kAmxKc) {
                const int64_t kcp = std::min(kAmxKc, kp - pc);
                block(a + pc, lda, kcp, xp, pairs_total, pc / 2, acc);
                // acc[g][i][m % 16] -> y[m][n0 + i]: one 16-lane gather per row of x.
                const __mmask16 mask = static_cast<__mmask16>((1u << nr) - 1u);
                const __m512i idx = _mm512_mullo_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                                                       _mm512_set1_epi32(16));
                const __m512 bias = pc == 0 && B ? _mm512_maskz_loadu_ps(mask, B + n0) : _mm512_setzero_ps();
                for (int64_t m = 0; m < rows; ++m) {
                    const __m512 v = _mm512_i32gather_ps(idx, acc + (m / 16) * 256 + (m % 16), 4);
                    float* y = Y + m * out + n0;
                    const __m512 r = pc == 0 ? (B ? _mm512_add_ps(bias, v) : v) : _mm512_add_ps(_mm512_maskz_loadu_ps(mask, y), v);
                    _mm512_mask_storeu_ps(y, mask, r);
                }
            }
        }
        amx_small_m_release();
    }
}

// x rounded to bf16, one buffer per calling thread (decode calls come from one thread at a time).
const uint16_t* rounded_rows(const float* X, int64_t n) {
    thread_local std::vector<uint16_t> buf;
    if (static_cast<int64_t>(buf.size()) < n) buf.resize(static_cast<size_t>(n));
    f32_to_bf16_n(X, buf.data(), n);
    return buf.data();
}

std::atomic<int32_t> g_bf16_forced{-1};

}  // namespace

bool small_m_bf16_isa_supported(SimdIsa isa) {
    // The bf16 kernels' 16-bit masked loads need AVX-512BW besides F.
    return small_m_isa_supported(isa) && (isa != SimdIsa::Avx512 || __builtin_cpu_supports("avx512bw"));
}

void small_m_bf16_force_isa(SimdIsa isa) {
    // Checking support also asks Linux for AMX tile state (once per process) before a forced AMX run.
    if (small_m_bf16_isa_supported(isa)) g_bf16_forced.store(static_cast<int32_t>(isa));
}

SimdIsa small_m_bf16_isa() {
    const int32_t forced = g_bf16_forced.load();
    if (forced >= 0) return static_cast<SimdIsa>(forced);
    static const SimdIsa best = small_m_isa_supported(SimdIsa::AmxBf16)      ? SimdIsa::AmxBf16
                                : small_m_isa_supported(SimdIsa::Avx512Bf16) ? SimdIsa::Avx512Bf16
                                : small_m_bf16_isa_supported(SimdIsa::Avx512) ? SimdIsa::Avx512
                                : small_m_isa_supported(SimdIsa::Avx2)     ? SimdIsa::Avx2
                                                                           : SimdIsa::Scalar;
    return best;
}

void small_m_linear_fwd_bf16(const float* X, const uint16_t* W, const float* B, float* Y, int64_t rows,
                             int64_t in, int64_t out) {
    const SimdIsa isa = small_m_bf16_isa();
    if (isa == SimdIsa::AmxBf16) {
        amx_small_m(X, W, B, Y, rows, in, out);
        return;
    }
    const TileSetDp& ts = dp_tiles(isa);
    const uint16_t* Xh = rounded_rows(X, rows * in);
    // The emulating SIMD kernels need vdpbf16ps's denormal handling: DAZ (bit 6) and FTZ (bit 15).
    const bool flush = isa == SimdIsa::Avx512 || isa == SimdIsa::Avx2;
#pragma omp parallel if (in * out >= (1 << 14))
    {
        const unsigned csr = _mm_getcsr();
        if (flush) _mm_setcsr(csr | 0x8040u);
        run_tile_blocks(ts, Xh, W, B, Y, rows, in, out);
        if (flush) _mm_setcsr(csr);
    }
}

bool small_m_isa_supported(SimdIsa isa) {
    switch (isa) {
        case SimdIsa::Avx512: return __builtin_cpu_supports("avx512f");
        case SimdIsa::AmxBf16: return bf16_gemm_path_supported(Bf16GemmPath::Amx);
        case SimdIsa::Avx512Bf16:
            return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                   __builtin_cpu_supports("avx512bf16");
        case SimdIsa::Avx2: return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
        default: return true;
    }
}

SimdIsa small_m_best_isa() {
    static const SimdIsa best = small_m_isa_supported(SimdIsa::Avx512) ? SimdIsa::Avx512
                                : small_m_isa_supported(SimdIsa::Avx2)  ? SimdIsa::Avx2
                                                                        : SimdIsa::Scalar;
    return best;
}

void small_m_linear_fwd(SimdIsa isa, const float* X, const float* W, const float* B, float* Y, int64_t rows,
                        int64_t in, int64_t out) {
    run_tiles(tiles(isa), X, W, B, Y, rows, in, out);
}

}  // namespace realn::cpu
