// Register-blocked micro-kernels shared by attention.cpp and kv_cache.cpp. Attention tiles are
// small (64 x 64 x head_dim), too small for OpenBLAS calls from inside an OpenMP region to pay, so
// one accumulate kernel C += A * B (A read by broadcasts with any strides, B and C row-major with
// widths padded to 8 floats) does every product, plus an AVX2 exp (Cephes polynomial, ~2 ulp).
// Without AVX2+FMA the same functions compile to plain loops.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define REALN_ATTN_AVX2 1
#endif

namespace realn::cpu::attn {

inline int64_t round_up8(int64_t n) { return (n + 7) & ~int64_t(7); }

#ifdef REALN_ATTN_AVX2
template <int R, int V>
inline void tile_acc(int64_t kk, const float* A, int64_t sai, int64_t sap, const float* B,
                     int64_t ldb, float* C, int64_t ldc) {
    __m256 acc[R][V];
    for (int r = 0; r < R; ++r)
        for (int v = 0; v < V; ++v) acc[r][v] = _mm256_loadu_ps(C + r * ldc + 8 * v);
    for (int64_t p = 0; p < kk; ++p) {
        __m256 b[V];
        for (int v = 0; v < V; ++v) b[v] = _mm256_loadu_ps(B + p * ldb + 8 * v);
        for (int r = 0; r < R; ++r) {
            const __m256 a = _mm256_broadcast_ss(A + r * sai + p * sap);
            for (int v = 0; v < V; ++v) acc[r][v] = _mm256_fmadd_ps(a, b[v], acc[r][v]);
        }
    }
    for (int r = 0; r < R; ++r)
        for (int v = 0; v < V; ++v) _mm256_storeu_ps(C + r * ldc + 8 * v, acc[r][v]);
}

template <int R>
inline void rows_acc(int64_t n, int64_t kk, const float* A, int64_t sai, int64_t sap,
                     const float* B, int64_t ldb, float* C, int64_t ldc) {
    int64_t c = 0;
    for (; c + 16 <= n; c += 16) tile_acc<R, 2>(kk, A, sai, sap, B + c, ldb, C + c, ldc);
    if (c < n) tile_acc<R, 1>(kk, A, sai, sap, B + c, ldb, C + c, ldc);
}
#endif

// C[i][c] += sum_{p < kk} A(i, p) * B[p][c]  for i < m, c < n; A(i, p) = A[i * sai + p * sap].
// n must be a multiple of 8 (pad B and C with zero columns).
inline void gemm_acc(int64_t m, int64_t n, int64_t kk, const float* A, int64_t sai, int64_t sap,
                     const float* B, int64_t ldb, float* C, int64_t ldc) {
#ifdef REALN_ATTN_AVX2
    int64_t i = 0;
    for (; i + 4 <= m; i += 4) rows_acc<4>(n, kk, A + i * sai, sai, sap, B, ldb, C + i * ldc, ldc);
    switch (m - i) {
        case 3: rows_acc<3>(n, kk, A + i * sai, sai, sap, B, ldb, C + i * ldc, ldc); break;
        case 2: rows_acc<2>(n, kk, A + i * sai, sai, sap, B, ldb, C + i * ldc, ldc); break;
        case 1: rows_acc<1>(n, kk, A + i * sai, sai, sap, B, ldb, C + i * ldc, ldc); break;
        default: break;
    }
#else
    for (int64_t i = 0; i < m; ++i)
        for (int64_t p = 0; p < kk; ++p) {
            const float a = A[i * sai + p * sap];
            for (int64_t c = 0; c < n; ++c) C[i * ldc + c] += a * B[p * ldb + c];
        }
#endif
}

#ifdef REALN_ATTN_AVX2
// exp of 8 floats; inputs below -88.37 give ~0 (callers zero masked entries explicitly).
inline __m256 exp8(__m256 x) {
    x = _mm256_min_ps(x, _mm256_set1_ps(88.3762626647949f));
    x = _mm256_max_ps(x, _mm256_set1_ps(-88.3762626647949f));
    __m256 fx = _mm256_fmadd_ps(x, _mm256_set1_ps(1.44269504088896341f), _mm256_set1_ps(0.5f));
    fx = _mm256_floor_ps(fx);
    x = _mm256_fnmadd_ps(fx, _mm256_set1_ps(0.693359375f), x);
    x = _mm256_fnmadd_ps(fx, _mm256_set1_ps(-2.12194440e-4f), x);
    const __m256 z = _mm256_mul_ps(x, x);
    __m256 y = _mm256_set1_ps(1.9875691500E-4f);
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.3981999507E-3f));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(8.3334519073E-3f));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(4.1665795894E-2f));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.6666665459E-1f));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(5.0000001201E-1f));
    y = _mm256_fmadd_ps(y, z, x);
    y = _mm256_add_ps(y, _mm256_set1_ps(1.0f));
    __m256i e = _mm256_cvttps_epi32(fx);
    e = _mm256_slli_epi32(_mm256_add_epi32(e, _mm256_set1_epi32(0x7f)), 23);
    return _mm256_mul_ps(y, _mm256_castsi256_ps(e));
}

inline float hsum8(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}
#endif

// max of x[0, n), n >= 1.
inline float row_max(const float* x, int64_t n) {
    int64_t j = 0;
    float m = -std::numeric_limits<float>::infinity();
#ifdef REALN_ATTN_AVX2
    if (n >= 8) {
        __m256 vm = _mm256_loadu_ps(x);
        for (j = 8; j + 8 <= n; j += 8) vm = _mm256_max_ps(vm, _mm256_loadu_ps(x + j));
        __m128 h = _mm_max_ps(_mm256_castps256_ps128(vm), _mm256_extractf128_ps(vm, 1));
        h = _mm_max_ps(h, _mm_movehl_ps(h, h));
        h = _mm_max_ss(h, _mm_movehdup_ps(h));
        m = _mm_cvtss_f32(h);
    }
#endif
    for (; j < n; ++j) m = std::max(m, x[j]);
    return m;
}

// x[j] = exp(x[j] * a - b) for j < n, then x[j] = 0 for n <= j < npad; returns sum_{j<n} x[j].
// x must hold round_up8(n) floats.
inline float exp_row(float* x, int64_t n, int64_t npad, float a, float b) {
    float sum = 0.0f;
    int64_t j = 0;
#ifdef REALN_ATTN_AVX2
    const __m256 va = _mm256_set1_ps(a), vb = _mm256_set1_ps(b);
    __m256 vs = _mm256_setzero_ps();
    for (; j + 8 <= n; j += 8) {
        const __m256 e = exp8(_mm256_fmsub_ps(_mm256_loadu_ps(x + j), va, vb));
        _mm256_storeu_ps(x + j, e);
        vs = _mm256_add_ps(vs, e);
    }
    sum = hsum8(vs);
#endif
    for (; j < n; ++j) {
        x[j] = std::exp(x[j] * a - b);
        sum += x[j];
    }
    for (; j < npad; ++j) x[j] = 0.0f;
    return sum;
}

inline float dot(const float* a, const float* b, int64_t n) {
    int64_t c = 0;
    float s = 0.0f;
#ifdef REALN_ATTN_AVX2
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
    for (; c + 16 <= n; c += 16) {
        acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + c), _mm256_loadu_ps(b + c), acc0);
        acc1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + c + 8), _mm256_loadu_ps(b + c + 8), acc1);
    }
    for (; c + 8 <= n; c += 8)
        acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + c), _mm256_loadu_ps(b + c), acc0);
    s = hsum8(_mm256_add_ps(acc0, acc1));
#endif
    for (; c < n; ++c) s += a[c] * b[c];
    return s;
}

}  // namespace realn::cpu::attn
