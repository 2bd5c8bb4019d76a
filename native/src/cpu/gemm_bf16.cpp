// bf16 GEMM (see gemm_bf16.hpp).
//
// amx path: the same blocking and B panels; A blocks as bf16 rows (AMX tiles read 16 rows x 32 k),
// a 32 x 32 C block per 2 x 2 tiles of tdpbf16ps, merged into C like the avx512bf16 path.
//
// avx512bf16 path, GotoBLAS-style: each output tile of tiling_for (gemm_tiles.hpp; threads take
// tiles) loops over blocks of kNc columns, kKc of K and kMc rows. B's block is packed into panels
// of kNr = 32 columns, one uint32 per (pair of k, column) holding the two bf16 values of k = 2p
// (low half) and 2p + 1 (high half); A's block into strips of kMr rows the same way. The
// micro-kernel keeps a kMr x 32 fp32 block in 2 kMr zmm registers and for each k pair
// broadcasts an A pair and runs vdpbf16ps against the two B vectors: acc[j] += a0 b0j + a1 b1j.
// Odd K and edge rows/columns are padded with zeros in the packs (adding 0 products changes no
// sum), stores are masked. At the end of each K block the block's sum is merged into C
// (first block: C = beta C + alpha acc, beta == 0 never reading C; later blocks: C += alpha acc),
// so an element's value depends on (K, its operands) only: not on the tile, thread or thread count.
#include "gemm_bf16.hpp"

#include <cpuid.h>
#include <immintrin.h>
#include <omp.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "../core/error.hpp"
#include "bf16.hpp"
#include "gemm_tiles.hpp"

namespace realn::cpu {
namespace {

constexpr int64_t kMr = 12, kNr = 32;
constexpr int64_t kKc = 512;  // k per block (256 pairs): an A strip is 12 KiB (L1)
constexpr int64_t kMc = 192;  // rows per packed A block (multiple of kMr): 192 KiB
constexpr int64_t kNc = 512;  // columns per packed B block: 512 KiB (L2)

template <typename T>
inline uint16_t bf16_of(const T* p, int64_t idx) {
    if constexpr (sizeof(T) == 2) return p[idx];
    else return f32_to_bf16(p[idx]);
}

inline uint32_t pair(uint16_t lo, uint16_t hi) { return uint32_t(lo) | (uint32_t(hi) << 16); }

// Packs rows [i0, i0 + rows) x k [k0, k0 + kc) of op(X) (X = A, or B seen as op(B)^T, i.e. rows are
// B's output columns) into strips of R rows: out[strip][pair][r]. "Rows" of op(X): element (i, k)
// is p[i*ld + k] when !kmajor, p[k*ld + i] when kmajor.
template <typename T, int64_t R>
void pack(const T* p, int64_t ld, bool kmajor, int64_t i0, int64_t rows, int64_t k0, int64_t kc,
          uint32_t* out, int64_t stride_pairs) {
    const int64_t pairs = (kc + 1) / 2;
    for (int64_t s = 0; s < rows; s += R) {
        uint32_t* o = out + (s / R) * stride_pairs * R;
        const int64_t rr = std::min(R, rows - s);
        if (!kmajor) {
            uint16_t t[kKc + 2];
            for (int64_t r = 0; r < rr; ++r) {
                const T* row = p + (i0 + s + r) * ld + k0;
                if constexpr (sizeof(T) == 2) std::memcpy(t, row, size_t(kc) * 2);
                else f32_to_bf16_n(row, t, kc);
                t[kc] = 0;  // odd kc: the last pair's high half
                for (int64_t q = 0; q < pairs; ++q) o[q * R + r] = pair(t[2 * q], t[2 * q + 1]);
            }
        } else {
            uint16_t t0[R], t1[R];
            for (int64_t q = 0; q < pairs; ++q) {
                const T* r0 = p + (k0 + 2 * q) * ld + i0 + s;
                const bool has1 = 2 * q + 1 < kc;
                if constexpr (sizeof(T) == 2) {
                    std::memcpy(t0, r0, size_t(rr) * 2);
                    if (has1) std::memcpy(t1, r0 + ld, size_t(rr) * 2);
                } else {
                    f32_to_bf16_n(r0, t0, rr);
                    if (has1) f32_to_bf16_n(r0 + ld, t1, rr);
                }
                if (!has1) std::memset(t1, 0, sizeof(t1));
                for (int64_t r = 0; r < rr; ++r) o[q * R + r] = pair(t0[r], t1[r]);
            }
        }
        for (int64_t q = 0; q < pairs; ++q)
            for (int64_t r = rr; r < R; ++r) o[q * R + r] = 0;
        for (int64_t q = pairs; q < stride_pairs; ++q)
            for (int64_t r = 0; r < R; ++r) o[q * R + r] = 0;
    }
}

void pack_any(const MixedOperand& x, bool kmajor, int64_t i0, int64_t rows, int64_t k0, int64_t kc,
              uint32_t* out, bool is_b, int64_t stride_pairs) {
    if (is_b) {
        if (x.bf16) pack<uint16_t, kNr>(static_cast<const uint16_t*>(x.p), x.ld, kmajor, i0, rows, k0, kc, out, stride_pairs);
        else pack<float, kNr>(static_cast<const float*>(x.p), x.ld, kmajor, i0, rows, k0, kc, out, stride_pairs);
    } else {
        if (x.bf16) pack<uint16_t, kMr>(static_cast<const uint16_t*>(x.p), x.ld, kmajor, i0, rows, k0, kc, out, stride_pairs);
        else pack<float, kMr>(static_cast<const float*>(x.p), x.ld, kmajor, i0, rows, k0, kc, out, stride_pairs);
    }
}

// AMX A block: rows [i0, i0 + rows) of op(A), k [k0, k0 + kc), as row-major bf16 rows of kcp
// elements (kc zero-padded to kcp), `rows` zero-padded to a multiple of 32 rows.
template <typename T>
void pack_rows(const T* p, int64_t ld, bool kmajor, int64_t i0, int64_t rows, int64_t k0, int64_t kc,
               int64_t kcp, uint16_t* out) {
    const int64_t rows_p = (rows + 31) / 32 * 32;
    if (kmajor) {  // op(A) = A^T: read A's rows (k) contiguously, convert, scatter down the columns
        uint16_t tmp[kMc];
        for (int64_t q = 0; q < kc; ++q) {
            const T* src = p + (k0 + q) * ld + i0;
            if constexpr (sizeof(T) == 2) std::memcpy(tmp, src, size_t(rows) * 2);
            else f32_to_bf16_n(src, tmp, rows);
            for (int64_t r = 0; r < rows; ++r) out[r * kcp + q] = tmp[r];
        }
        for (int64_t r = 0; r < rows_p; ++r) {
            if (r >= rows) std::memset(out + r * kcp, 0, size_t(kcp) * 2);
            else for (int64_t q = kc; q < kcp; ++q) out[r * kcp + q] = 0;
        }
        return;
    }
    for (int64_t r = 0; r < rows_p; ++r) {
        uint16_t* o = out + r * kcp;
        if (r >= rows) {
            std::memset(o, 0, size_t(kcp) * 2);
            continue;
        }
        if (!kmajor) {
            const T* row = p + (i0 + r) * ld + k0;
            if constexpr (sizeof(T) == 2) std::memcpy(o, row, size_t(kc) * 2);
            else f32_to_bf16_n(row, o, kc);
        } else {
            for (int64_t q = 0; q < kc; ++q) o[q] = bf16_of(p + (k0 + q) * ld + i0 + r, 0);
        }
        for (int64_t q = kc; q < kcp; ++q) o[q] = 0;
    }
}

__attribute__((target("avx512f,avx512bf16"))) void micro_kernel(int64_t pairs, const uint32_t* Ap,
                                                                 const uint32_t* Bp, float* C,
                                                                 int64_t ldc, int64_t rows,
                                                                 int64_t cols, float alpha,
                                                                 float beta, bool first) {
    __m512 acc[kMr][2];
    for (int r = 0; r < kMr; ++r) acc[r][0] = acc[r][1] = _mm512_setzero_ps();
    for (int64_t q = 0; q < pairs; ++q) {
        const __m512bh b0 = (__m512bh)_mm512_loadu_si512(Bp + q * kNr);
        const __m512bh b1 = (__m512bh)_mm512_loadu_si512(Bp + q * kNr + 16);
        const uint32_t* a = Ap + q * kMr;
        for (int r = 0; r < kMr; ++r) {
            const __m512bh av = (__m512bh)_mm512_set1_epi32(static_cast<int>(a[r]));
            acc[r][0] = _mm512_dpbf16_ps(acc[r][0], av, b0);
            acc[r][1] = _mm512_dpbf16_ps(acc[r][1], av, b1);
        }
    }
    const __mmask16 m0 = cols >= 16 ? __mmask16(0xffff) : __mmask16((1u << cols) - 1u);
    const __mmask16 m1 = cols >= 32 ? __mmask16(0xffff) : cols > 16 ? __mmask16((1u << (cols - 16)) - 1u) : __mmask16(0);
    const __m512 va = _mm512_set1_ps(alpha), vb = _mm512_set1_ps(beta);
    for (int64_t r = 0; r < rows; ++r) {
        float* c = C + r * ldc;
        for (int h = 0; h < 2; ++h) {
            const __mmask16 m = h ? m1 : m0;
            if (!m) continue;
            __m512 v;
            if (first && beta == 0.0f) v = _mm512_mul_ps(va, acc[r][h]);
            else if (first) v = _mm512_fmadd_ps(va, acc[r][h], _mm512_mul_ps(vb, _mm512_maskz_loadu_ps(m, c + 16 * h)));
            else v = _mm512_fmadd_ps(va, acc[r][h], _mm512_maskz_loadu_ps(m, c + 16 * h));
            _mm512_mask_storeu_ps(c + 16 * h, m, v);
        }
    }
}

// C rows [0, rows) x cols [0, cols) (cols <= 32) merged with a 32-wide fp32 block acc (row stride 32).
__attribute__((target("avx512f"))) void merge_block(const float* acc, float* C, int64_t ldc, int64_t rows,
                                                    int64_t cols, float alpha, float beta, bool first) {
    const __mmask16 m0 = cols >= 16 ? __mmask16(0xffff) : __mmask16((1u << cols) - 1u);
    const __mmask16 m1 = cols >= 32 ? __mmask16(0xffff) : cols > 16 ? __mmask16((1u << (cols - 16)) - 1u) : __mmask16(0);
    const __m512 va = _mm512_set1_ps(alpha), vb = _mm512_set1_ps(beta);
    for (int64_t r = 0; r < rows; ++r) {
        float* c = C + r * ldc;
        for (int h = 0; h < 2; ++h) {
            const __mmask16 m = h ? m1 : m0;
            if (!m) continue;
            const __m512 a = _mm512_loadu_ps(acc + r * 32 + 16 * h);
            __m512 v;
            if (first && beta == 0.0f) v = _mm512_mul_ps(va, a);
            else if (first) v = _mm512_fmadd_ps(va, a, _mm512_mul_ps(vb, _mm512_maskz_loadu_ps(m, c + 16 * h)));
            else v = _mm512_fmadd_ps(va, a, _mm512_maskz_loadu_ps(m, c + 16 * h));
            _mm512_mask_storeu_ps(c + 16 * h, m, v);
        }
    }
}

// AMX: a 32 x 32 C block as 2 x 2 tiles of 16 x 16 fp32 (tmm0-3); A tiles 16 rows x 32 k (tmm4-5,
// from pack_rows), B tiles 16 k pairs x 16 columns (tmm6-7, the avx512bf16 B panel: pair rows of
// 32 uint32, read 16 columns at a time with a 128-byte stride). acc: 32 x 32 fp32 out.
struct alignas(64) TileConfig {
    uint8_t palette = 1, start_row = 0, reserved[14] = {};
    uint16_t colsb[16] = {};
    uint8_t rows[16] = {};
};

__attribute__((target("amx-tile,amx-bf16"))) void amx_config() {
    TileConfig cfg;
    for (int t = 0; t < 8; ++t) {
        cfg.colsb[t] = 64;
        cfg.rows[t] = 16;
    }
    _tile_loadconfig(&cfg);
}

__attribute__((target("amx-tile,amx-bf16"))) void amx_block(const uint16_t* Ap, int64_t kcp, const uint32_t* Bp,
                                                           float* acc) {
    _tile_zero(0);
    _tile_zero(1);
    _tile_zero(2);
    _tile_zero(3);
    const int64_t astride = kcp * 2;
    for (int64_t s = 0; s < kcp; s += 32) {
        _tile_loadd(4, Ap + s, astride);
        _tile_loadd(5, Ap + 16 * kcp + s, astride);
        _tile_loadd(6, Bp + (s / 2) * kNr, kNr * 4);
        _tile_loadd(7, Bp + (s / 2) * kNr + 16, kNr * 4);
        _tile_dpbf16ps(0, 4, 6);
        _tile_dpbf16ps(1, 4, 7);
        _tile_dpbf16ps(2, 5, 6);
        _tile_dpbf16ps(3, 5, 7);
    }
    _tile_stored(0, acc, 128);
    _tile_stored(1, acc + 16, 128);
    _tile_stored(2, acc + 16 * 32, 128);
    _tile_stored(3, acc + 16 * 32 + 16, 128);
}

__attribute__((target("amx-tile"))) void amx_release() { _tile_release(); }

bool amx_cpu() {
    unsigned a, b, c, d;
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return false;
    return (d & (1u << 22)) && (d & (1u << 24)) && __builtin_cpu_supports("avx512f");
}

// Linux gives a process AMX tile state only on request (arch_prctl ARCH_REQ_XCOMP_PERM for
// XFEATURE_XTILEDATA); asked once per process.
bool amx_usable() {
    static const bool ok = amx_cpu() && syscall(SYS_arch_prctl, 0x1023 /* ARCH_REQ_XCOMP_PERM */, 18) == 0;
    return ok;
}

struct Scratch {
    std::vector<uint32_t> a, b;
    std::vector<uint16_t> rows;
};

void tile_amx(int64_t r0, int64_t rows, int64_t c0, int64_t cols, int64_t k, float alpha, const MixedOperand& A,
              const MixedOperand& B, float beta, float* C, int64_t ldc) {
    thread_local Scratch scr;
    if (scr.rows.size() < size_t(kMc * kKc)) scr.rows.resize(kMc * kKc);
    if (scr.b.size() < size_t(kNc * kKc / 2)) scr.b.resize(kNc * kKc / 2);
    alignas(64) float acc[32 * 32];
    amx_config();
    for (int64_t jc = 0; jc < cols; jc += kNc) {
        const int64_t nc = std::min(kNc, cols - jc);
        for (int64_t pc = 0; pc < k; pc += kKc) {
            const int64_t kc = std::min(kKc, k - pc), kcp = (kc + 31) / 32 * 32;
            pack_any(B, !B.trans, c0 + jc, nc, pc, kc, scr.b.data(), true, kcp / 2);
            for (int64_t ic = 0; ic < rows; ic += kMc) {
                const int64_t mc = std::min(kMc, rows - ic);
                if (A.bf16) pack_rows(static_cast<const uint16_t*>(A.p), A.ld, A.trans, r0 + ic, mc, pc, kc, kcp, scr.rows.data());
                else pack_rows(static_cast<const float*>(A.p), A.ld, A.trans, r0 + ic, mc, pc, kc, kcp, scr.rows.data());
                for (int64_t jr = 0; jr < nc; jr += kNr) {
                    const uint32_t* bp = scr.b.data() + (jr / kNr) * (kcp / 2) * kNr;
                    for (int64_t ir = 0; ir < mc; ir += 32) {
                        amx_block(scr.rows.data() + ir * kcp, kcp, bp, acc);
                        merge_block(acc, C + (r0 + ic + ir) * ldc + c0 + jc + jr, ldc, std::min<int64_t>(32, mc - ir),
                                    std::min(kNr, nc - jr), alpha, beta, pc == 0);
                    }
                }
            }
        }
    }
    amx_release();
}

void tile_avx512bf16(int64_t r0, int64_t rows, int64_t c0, int64_t cols, int64_t k, float alpha,
                     const MixedOperand& A, const MixedOperand& B, float beta, float* C, int64_t ldc) {
    thread_local Scratch scr;
    if (scr.a.size() < size_t(kMc * kKc / 2)) scr.a.resize(kMc * kKc / 2);
    if (scr.b.size() < size_t(kNc * kKc / 2)) scr.b.resize(kNc * kKc / 2);
    if (k <= 0) {  // no products: C = beta C (beta == 0 writes zeros)
        for (int64_t i = 0; i < rows; ++i)
            for (int64_t j = 0; j < cols; ++j) {
                float& c = C[(r0 + i) * ldc + c0 + j];
                c = beta == 0.0f ? 0.0f : beta * c;
            }
        return;
    }
    for (int64_t jc = 0; jc < cols; jc += kNc) {
        const int64_t nc = std::min(kNc, cols - jc);
        for (int64_t pc = 0; pc < k; pc += kKc) {
            const int64_t kc = std::min(kKc, k - pc), pairs = (kc + 1) / 2;
            // op(B) columns are packed as "rows" of B^T: kmajor when B is not transposed.
            pack_any(B, !B.trans, c0 + jc, nc, pc, kc, scr.b.data(), true, pairs);
            for (int64_t ic = 0; ic < rows; ic += kMc) {
                const int64_t mc = std::min(kMc, rows - ic);
                pack_any(A, A.trans, r0 + ic, mc, pc, kc, scr.a.data(), false, pairs);
                for (int64_t jr = 0; jr < nc; jr += kNr) {
                    const uint32_t* bp = scr.b.data() + (jr / kNr) * pairs * kNr;
                    for (int64_t ir = 0; ir < mc; ir += kMr) {
                        const uint32_t* ap = scr.a.data() + (ir / kMr) * pairs * kMr;
                        float* c = C + (r0 + ic + ir) * ldc + c0 + jc + jr;
                        micro_kernel(pairs, ap, bp, c, ldc, std::min(kMr, mc - ir),
                                     std::min(kNr, nc - jr), alpha, beta, pc == 0);
                    }
                }
            }
        }
    }
}

// convert path: the operand rounded to bf16 and widened back to fp32, as a plain row-major
// matrix with the operand's own layout (so fixed_tile_sgemm sees the same transposes).
std::vector<float> widened(const MixedOperand& x, int64_t stored_rows, int64_t stored_cols) {
    std::vector<float> w(size_t(stored_rows * stored_cols));
#pragma omp parallel for schedule(static) if (stored_rows * stored_cols > (1 << 16))
    for (int64_t r = 0; r < stored_rows; ++r)
        for (int64_t c = 0; c < stored_cols; ++c) {
            const int64_t idx = r * x.ld + c;
            w[size_t(r * stored_cols + c)] =
                x.bf16 ? bf16_to_f32(static_cast<const uint16_t*>(x.p)[idx])
                       : round_to_bf16(static_cast<const float*>(x.p)[idx]);
        }
    return w;
}

Bf16GemmPath parse_env() {
    const char* v = std::getenv("REALN_BF16_GEMM");
    if (v == nullptr || *v == '\0') {
        return bf16_gemm_path_supported(Bf16GemmPath::Amx)          ? Bf16GemmPath::Amx
               : bf16_gemm_path_supported(Bf16GemmPath::Avx512Bf16) ? Bf16GemmPath::Avx512Bf16
                                                                    : Bf16GemmPath::Convert;
    }
    const std::string s(v);
    if (s == "amx") {
        if (!bf16_gemm_path_supported(Bf16GemmPath::Amx))
            fail(REALN_ERR_UNSUPPORTED, "REALN_BF16_GEMM=amx but this CPU or kernel gives no AMX-BF16 tiles");
        return Bf16GemmPath::Amx;
    }
    if (s == "avx512bf16") {
        if (!bf16_gemm_path_supported(Bf16GemmPath::Avx512Bf16))
            fail(REALN_ERR_UNSUPPORTED, "REALN_BF16_GEMM=avx512bf16 but this CPU lacks AVX512_BF16");
        return Bf16GemmPath::Avx512Bf16;
    }
    if (s == "convert") return Bf16GemmPath::Convert;
    fail(REALN_ERR_INVALID_ARGUMENT, "REALN_BF16_GEMM must be amx, avx512bf16 or convert (got '", s, "')");
}

}  // namespace

bool bf16_gemm_path_supported(Bf16GemmPath p) {
    if (p == Bf16GemmPath::Convert) return true;
    if (p == Bf16GemmPath::Amx) return amx_usable();
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bf16");
}

const char* bf16_gemm_path_name(Bf16GemmPath p) {
    return p == Bf16GemmPath::Amx ? "amx" : p == Bf16GemmPath::Avx512Bf16 ? "avx512bf16" : "convert";
}

Bf16GemmPath bf16_gemm_path() {
    // Parsed on every call (a getenv is cheap next to a GEMM) so a bad value fails every call.
    return parse_env();
}

void gemm_mixed(Bf16GemmPath path, int64_t m, int64_t n, int64_t k, float alpha, MixedOperand A,
                MixedOperand B, float beta, float* C, int64_t ldc) {
    if (m <= 0 || n <= 0) return;
    if (path == Bf16GemmPath::Convert) {
        const int64_t kk = std::max<int64_t>(k, 0);
        auto a = widened(A, A.trans ? kk : m, A.trans ? m : kk);
        auto b = widened(B, B.trans ? n : kk, B.trans ? kk : n);
        fixed_tile_sgemm(A.trans, B.trans, m, n, k, alpha, a.data(), A.trans ? m : std::max<int64_t>(kk, 1), 0,
                         b.data(), B.trans ? std::max<int64_t>(kk, 1) : n, 0, beta, C, ldc, 0, 1);
        return;
    }
    const GemmTiling t = tiling_for(m, n, k);
    const int64_t total = t.gm * t.gn;
    auto tile = [&](int64_t id) {
        const int64_t i = id / t.gn, j = id % t.gn, r0 = i * t.tm, c0 = j * t.tn;
        if (path == Bf16GemmPath::Amx && k > 0)
            tile_amx(r0, std::min(t.tm, m - r0), c0, std::min(t.tn, n - c0), k, alpha, A, B, beta, C, ldc);
        else
        tile_avx512bf16(r0, std::min(t.tm, m - r0), c0, std::min(t.tn, n - c0), k, alpha, A, B, beta, C, ldc);
    };
    const int threads = static_cast<int>(std::min<int64_t>(omp_get_max_threads(), total));
    if (threads <= 1) {
        for (int64_t id = 0; id < total; ++id) tile(id);
        return;
    }
#pragma omp parallel for num_threads(threads) schedule(dynamic, 1)
    for (int64_t id = 0; id < total; ++id) tile(id);
}

}  // namespace realn::cpu
