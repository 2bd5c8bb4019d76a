// Small-M linear forward (decode GEMV batch), see small_m_linear.hpp. A tile is MR rows of x by NR
// rows of W: each k-step loads NR weight vectors once and FMAs them into MR*NR accumulators, so
// the weights stream from memory once per call for up to 4 rows of x (more rows re-read the tile
// from L1/L2). The accumulation order of an output element is fixed (vector lanes over k, the
// masked/scalar tail, then a fixed lane reduction) and independent of the thread split.
#include "small_m_linear.hpp"

#include <immintrin.h>
#include <omp.h>

#include <algorithm>
#include <atomic>
#include <cstring>

namespace realn::cpu {
namespace {

constexpr int64_t kNr = 4;  // weight rows per tile

// ---------------------------------------------------------------- AVX-512
// Lane sum in a fixed order: 16 -> 8 (halves) -> 4 -> 2 -> 1 (GCC 12's _mm512_reduce_add_ps warns).
__attribute__((target("avx512f"))) inline float hsum512(__m512 v) {
    const __m256 lo = _mm512_castps512_ps256(v);
    const __m256 hi = _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1));
    const __m256 s8 = _mm256_add_ps(lo, hi);
    const __m128 s = _mm_add_ps(_mm256_castps256_ps128(s8), _mm256_extractf128_ps(s8, 1));
    const __m128 t = _mm_add_ps(s, _mm_movehl_ps(s, s));
    return _mm_cvtss_f32(_mm_add_ss(t, _mm_shuffle_ps(t, t, 1)));
}

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
};

template <int MR>
void avx2_full(const float* X, const float* W, float* Y, int64_t K, int64_t ldy) {
    tile_avx2<MR, 2>(X, W, Y, K, ldy);
    tile_avx2<MR, 2>(X, W + 2 * K, Y + 2, K, ldy);
}

const TileSet& tiles(SimdIsa isa) {
    static const TileSet k512{{tile_avx512<1, kNr>, tile_avx512<2, kNr>, tile_avx512<3, kNr>, tile_avx512<4, kNr>},
                              {tile_avx512<1, 1>, tile_avx512<2, 1>, tile_avx512<3, 1>, tile_avx512<4, 1>}};
    static const TileSet k256{{avx2_full<1>, avx2_full<2>, avx2_full<3>, avx2_full<4>},
                              {tile_avx2<1, 1>, tile_avx2<2, 1>, tile_avx2<3, 1>, tile_avx2<4, 1>}};
    static const TileSet kScalar{{tile_scalar<1, kNr>, tile_scalar<2, kNr>, tile_scalar<3, kNr>, tile_scalar<4, kNr>},
                                 {tile_scalar<1, 1>, tile_scalar<2, 1>, tile_scalar<3, 1>, tile_scalar<4, 1>}};
    switch (isa) {
        case SimdIsa::Avx512: return k512;
        case SimdIsa::Avx2: return k256;
        default: return kScalar;
    }
}

// ---------------------------------------------------------------- bf16 weights
__attribute__((target("avx512f,avx512bw"))) inline __m512 widen16(__m256i h) {
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

template <int MR, int NR>
__attribute__((target("avx512f,avx512bw,avx512vl"))) void tile_bf16_avx512(const float* X, const uint16_t* W,
                                                                          float* Y, int64_t K, int64_t ldy) {
    __m512 acc[MR][NR];
    for (int m = 0; m < MR; ++m)
        for (int n = 0; n < NR; ++n) acc[m][n] = _mm512_setzero_ps();
    int64_t k = 0;
    for (; k + 16 <= K; k += 16) {
        __m512 w[NR];
        for (int n = 0; n < NR; ++n)
            w[n] = widen16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(W + n * K + k)));
        for (int m = 0; m < MR; ++m) {
            const __m512 x = _mm512_loadu_ps(X + m * K + k);
            for (int n = 0; n < NR; ++n) acc[m][n] = _mm512_fmadd_ps(x, w[n], acc[m][n]);
        }
    }
    if (k < K) {
        const __mmask16 mask = static_cast<__mmask16>((1u << (K - k)) - 1u);
        __m512 w[NR];
        for (int n = 0; n < NR; ++n) w[n] = widen16(_mm256_maskz_loadu_epi16(mask, W + n * K + k));
        for (int m = 0; m < MR; ++m) {
            const __m512 x = _mm512_maskz_loadu_ps(mask, X + m * K + k);
            for (int n = 0; n < NR; ++n) acc[m][n] = _mm512_fmadd_ps(x, w[n], acc[m][n]);
        }
    }
    for (int m = 0; m < MR; ++m)
        for (int n = 0; n < NR; ++n) Y[m * ldy + n] = hsum512(acc[m][n]);
}

template <int MR, int NR>
void tile_bf16_scalar(const float* X, const uint16_t* W, float* Y, int64_t K, int64_t ldy) {
    for (int m = 0; m < MR; ++m)
        for (int n = 0; n < NR; ++n) {
            float s = 0.0f;
            for (int64_t t = 0; t < K; ++t) {
                const uint32_t u = uint32_t(W[n * K + t]) << 16;
                float wf;
                std::memcpy(&wf, &u, 4);
                s += X[m * K + t] * wf;
            }
            Y[m * ldy + n] = s;
        }
}

// The driver of both weight types: blocks of kNr output columns over the threads, rows of X in
// tiles of up to 4 through the ISA's full-block tile, the tail of `out` row by row, then the bias.
// Threads only when the weights are big enough to amortise the fork (~64 KiB).
template <typename TileSetT, typename WT>
void run_tiles(const TileSetT& ts, const float* X, const WT* W, const float* B, float* Y, int64_t rows, int64_t in,
               int64_t out) {
    const int64_t blocks = (out + kNr - 1) / kNr;
#pragma omp parallel for schedule(static) if (in * out >= (1 << 14))
    for (int64_t b = 0; b < blocks; ++b) {
        const int64_t n0 = b * kNr, nr = std::min(kNr, out - n0);
        const WT* Wb = W + n0 * in;
        for (int64_t m0 = 0; m0 < rows; m0 += 4) {
            const int64_t mr = std::min<int64_t>(4, rows - m0);
            const float* Xm = X + m0 * in;
            float* Ym = Y + m0 * out + n0;
            if (nr == kNr)
                ts.full[mr - 1](Xm, Wb, Ym, in, out);
            else
                for (int64_t n = 0; n < nr; ++n) ts.one[mr - 1](Xm, Wb + n * in, Ym + n, in, out);
        }
        if (B)
            for (int64_t m = 0; m < rows; ++m)
                for (int64_t n = 0; n < nr; ++n) Y[m * out + n0 + n] += B[n0 + n];
    }
}

using TileBf16Fn = void (*)(const float*, const uint16_t*, float*, int64_t, int64_t);
struct TileSetBf16 {
    TileBf16Fn full[4];
    TileBf16Fn one[4];
};

std::atomic<int32_t> g_bf16_forced{-1};

}  // namespace

void small_m_bf16_force_isa(SimdIsa isa) { g_bf16_forced.store(static_cast<int32_t>(isa)); }

void small_m_linear_fwd_bf16(const float* X, const uint16_t* W, const float* B, float* Y, int64_t rows,
                             int64_t in, int64_t out) {
    static const TileSetBf16 k512{
        {tile_bf16_avx512<1, kNr>, tile_bf16_avx512<2, kNr>, tile_bf16_avx512<3, kNr>, tile_bf16_avx512<4, kNr>},
        {tile_bf16_avx512<1, 1>, tile_bf16_avx512<2, 1>, tile_bf16_avx512<3, 1>, tile_bf16_avx512<4, 1>}};
    static const TileSetBf16 kScalar{
        {tile_bf16_scalar<1, kNr>, tile_bf16_scalar<2, kNr>, tile_bf16_scalar<3, kNr>, tile_bf16_scalar<4, kNr>},
        {tile_bf16_scalar<1, 1>, tile_bf16_scalar<2, 1>, tile_bf16_scalar<3, 1>, tile_bf16_scalar<4, 1>}};
    static const bool has512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                               __builtin_cpu_supports("avx512vl");
    const int32_t forced = g_bf16_forced.load();
    const bool use512 = forced == static_cast<int32_t>(SimdIsa::Scalar) ? false : has512;
    const TileSetBf16& ts = use512 ? k512 : kScalar;
    run_tiles(ts, X, W, B, Y, rows, in, out);
}

bool small_m_isa_supported(SimdIsa isa) {
    switch (isa) {
        case SimdIsa::Avx512: return __builtin_cpu_supports("avx512f");
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
