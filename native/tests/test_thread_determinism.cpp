// ctest: every CPU op whose work is split across threads gives bit-identical outputs with 1, 2, 3
// and 4 OpenMP threads (README "Determinism"). Each case draws random (never zero) inputs from a
// fixed seed, runs the op through the C ABI once per thread count in a fresh Env (fresh buffers),
// and compares every output byte with the 1-thread run. GEMM shapes include small M (1, 3, 17),
// odd N/K and K between OpenBLAS's GEMM_Q and 2 GEMM_Q (320..640 on Haswell kernels, 448..896 on
// SkylakeX), where OpenBLAS's own threaded and single-threaded drivers round differently.
// Registered three times in CMake: OPENBLAS_CORETYPE=Haswell, =SkylakeX, and unset.
#include <strings.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include "cpu/gemm_bf16.hpp"
#include "cpu/gemm_tiles.hpp"
#include "cpu/small_m_linear.hpp"
#include "testing/harness.hpp"

using namespace realn::testing;

extern "C" char* openblas_get_corename(void);

namespace {

// Exit code ctest reads as "skipped" (SKIP_RETURN_CODE in CMakeLists.txt).
constexpr int kSkipped = 77;

// Whether this CPU can run the kernels of a forced OpenBLAS core type (0.3.21 does not check, and
// SkylakeX kernels on a CPU without AVX-512 die of SIGILL). Unknown names: assume yes.
bool cpu_can_run(const char* core) {
    __builtin_cpu_init();
    if (!strcasecmp(core, "Haswell") || !strcasecmp(core, "Zen"))
        return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    if (!strcasecmp(core, "SkylakeX"))
        return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
               __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl");
    return true;
}

using Bytes = std::vector<unsigned char>;

template <typename T>
void append(Bytes& out, const std::vector<T>& v) {
    const auto* p = reinterpret_cast<const unsigned char*>(v.data());
    out.insert(out.end(), p, p + v.size() * sizeof(T));
}

struct DetCase {
    std::string name, shape;
    std::function<Bytes(Env&)> run;  // the op's outputs, as bytes
};

std::vector<DetCase>& det_cases() {
    static std::vector<DetCase> c;
    return c;
}

void add(std::string name, std::string shape, std::function<Bytes(Env&)> run) {
    det_cases().push_back({std::move(name), std::move(shape), std::move(run)});
}

// Uniform in [0.5, 1.5) with a random sign: never zero.
std::vector<float> nonzero(Rng& r, int64_t n) {
    std::vector<float> v(static_cast<size_t>(n));
    for (auto& x : v) x = r.uniform(0.5f, 1.5f) * (r.integer(0, 1) ? 1.0f : -1.0f);
    return v;
}

void register_cases() {
    struct G {
        int ta, tb;
        int64_t m, n, k, batch;
        float alpha, beta;
    };
    for (G g : {G{0, 0, 1, 700, 500, 1, 1.0f, 0.0f}, G{0, 1, 1, 1030, 384, 1, 1.0f, 1.0f},
                G{0, 1, 3, 1001, 450, 1, 1.0f, 0.0f}, G{0, 0, 17, 333, 517, 1, 0.5f, 1.0f},
                G{1, 0, 64, 96, 700, 1, 1.0f, 1.0f}, G{0, 1, 256, 384, 600, 1, 1.0f, 0.0f},
                G{1, 1, 129, 200, 333, 1, -1.0f, 0.25f}, G{0, 0, 300, 515, 481, 1, 1.0f, 0.0f},
                G{0, 0, 48, 64, 500, 6, 1.0f, 0.0f}, G{1, 0, 5, 7, 9, 16, 1.0f, 1.0f}}) {
        const auto t = realn::cpu::tiling_for(g.m, g.n, g.k);
        add("gemm",
            concat_shape("ta=", g.ta, " tb=", g.tb, " m=", g.m, " n=", g.n, " k=", g.k,
                         " batch=", g.batch, " (", t.gm, "x", t.gn, " tiles)"),
            [g](Env& e) {
                const int64_t lda = (g.ta ? g.m : g.k) + 3, ldb = (g.tb ? g.k : g.n) + 1,
                              ldc = g.n + 2;
                const int64_t sa = (g.ta ? g.k : g.m) * lda + 5, sb = (g.tb ? g.n : g.k) * ldb + 7,
                              sc = g.m * ldc + 1;
                float* A = e.upload(nonzero(e.rng(), sa * g.batch));
                float* B = e.upload(nonzero(e.rng(), sb * g.batch));
                float* C = e.upload(nonzero(e.rng(), sc * g.batch));
                Env::check(realn_op_gemm(e.stream(), REALN_DTYPE_F32, g.ta, g.tb, g.m, g.n, g.k,
                                         g.alpha, A, lda, sa, B, ldb, sb, g.beta, C, ldc, sc,
                                         g.batch));
                Bytes out;
                append(out, e.download(C, sc * g.batch));
                return out;
            });
    }
    struct L {
        int64_t rows, in, out;
    };
    for (L l :
         {L{1, 500, 300}, L{37, 500, 300}, L{450, 96, 130}, L{600, 64, 176}, L{300, 700, 900}}) {
        const std::string shape = concat_shape("rows=", l.rows, " in=", l.in, " out=", l.out);
        add("linear_fwd", shape, [l](Env& e) {
            Rng& r = e.rng();
            float* x = e.upload(nonzero(r, l.rows * l.in));
            float* w = e.upload(nonzero(r, l.out * l.in));
            float* b = e.upload(nonzero(r, l.out));
            float* y = static_cast<float*>(e.alloc(l.rows * l.out * 4));
            Env::check(
                realn_op_linear_fwd(e.stream(), REALN_DTYPE_F32, x, w, b, y, l.rows, l.in, l.out));
            Bytes out;
            append(out, e.download(y, l.rows * l.out));
            return out;
        });
        add("linear_bwd", shape, [l](Env& e) {
            Rng& r = e.rng();
            float* x = e.upload(nonzero(r, l.rows * l.in));
            float* w = e.upload(nonzero(r, l.out * l.in));
            float* dy = e.upload(nonzero(r, l.rows * l.out));
            float* dx = e.upload(nonzero(r, l.rows * l.in));
            float* dw = e.upload(nonzero(r, l.out * l.in));
            float* db = e.upload(nonzero(r, l.out));
            Env::check(realn_op_linear_bwd(e.stream(), REALN_DTYPE_F32, x, w, dy, dx, dw, db,
                                           l.rows, l.in, l.out, REALN_ACCUMULATE_DX));
            Bytes out;
            append(out, e.download(dx, l.rows * l.in));
            append(out, e.download(dw, l.out * l.in));
            append(out, e.download(db, l.out));
            return out;
        });
    }
    // bf16 weights (fp32 activations) on each bf16 GEMM path this CPU runs (REALN_BF16_GEMM).
    for (auto [path, kind] : {std::pair{"amx", realn::cpu::Bf16GemmPath::Amx},
                              std::pair{"avx512bf16", realn::cpu::Bf16GemmPath::Avx512Bf16},
                              std::pair{"convert", realn::cpu::Bf16GemmPath::Convert}}) {
        if (!realn::cpu::bf16_gemm_path_supported(kind)) {
            std::printf("[SKIP] bf16 GEMM path %s: not available on this CPU/kernel\n", path);
            continue;
        }
        for (G g : {G{0, 0, 17, 333, 1517, 1, 0.5f, 1.0f}, G{1, 0, 64, 96, 700, 1, 1.0f, 1.0f},
                    G{1, 1, 129, 200, 333, 1, -1.0f, 0.25f}, G{0, 1, 300, 515, 481, 2, 1.0f, 0.0f}}) {
            add("gemm",
                concat_shape("dtype=bf16 path=", path, " ta=", g.ta, " tb=", g.tb, " m=", g.m, " n=", g.n,
                             " k=", g.k, " batch=", g.batch),
                [g, path](Env& e) {
                    setenv("REALN_BF16_GEMM", path, 1);
                    const int64_t lda = (g.ta ? g.m : g.k) + 3, ldb = (g.tb ? g.k : g.n) + 1, ldc = g.n + 2;
                    const int64_t sa = (g.ta ? g.k : g.m) * lda + 5, sb = (g.tb ? g.n : g.k) * ldb + 7,
                                  sc = g.m * ldc + 1;
                    float* Af = e.upload(nonzero(e.rng(), sa * g.batch));
                    float* Bf = e.upload(nonzero(e.rng(), sb * g.batch));
                    float* C = e.upload(nonzero(e.rng(), sc * g.batch));
                    void* A = e.alloc(sa * g.batch * 2);
                    void* B = e.alloc(sb * g.batch * 2);
                    Env::check(realn_op_convert(e.stream(), REALN_DTYPE_BF16, A, REALN_DTYPE_F32, Af, sa * g.batch));
                    Env::check(realn_op_convert(e.stream(), REALN_DTYPE_BF16, B, REALN_DTYPE_F32, Bf, sb * g.batch));
                    Env::check(realn_op_gemm(e.stream(), REALN_DTYPE_BF16, g.ta, g.tb, g.m, g.n, g.k, g.alpha, A,
                                             lda, sa, B, ldb, sb, g.beta, C, ldc, sc, g.batch));
                    unsetenv("REALN_BF16_GEMM");
                    Bytes out;
                    append(out, e.download(C, sc * g.batch));
                    return out;
                });
        }
        for (L l : {L{1, 500, 300}, L{37, 500, 300}, L{65, 600, 130}, L{300, 700, 900}, L{450, 1100, 96}}) {
            const std::string shape =
                concat_shape("dtype=bf16 path=", path, " rows=", l.rows, " in=", l.in, " out=", l.out);
            add("linear_fwd+bwd", shape, [l, path](Env& e) {
                setenv("REALN_BF16_GEMM", path, 1);
                Rng& r = e.rng();
                auto wf = nonzero(r, l.out * l.in);
                float* wf_dev = e.upload(wf);
                uint16_t* w = static_cast<uint16_t*>(e.alloc(l.out * l.in * 2));
                Env::check(realn_op_convert(e.stream(), REALN_DTYPE_BF16, w, REALN_DTYPE_F32, wf_dev, l.out * l.in));
                float* x = e.upload(nonzero(r, l.rows * l.in));
                float* b = e.upload(nonzero(r, l.out));
                float* y = static_cast<float*>(e.alloc(l.rows * l.out * 4));
                float* dy = e.upload(nonzero(r, l.rows * l.out));
                float* dx = e.upload(nonzero(r, l.rows * l.in));
                float* dw = e.upload(nonzero(r, l.out * l.in));
                float* db = e.upload(nonzero(r, l.out));
                Env::check(realn_op_linear_fwd(e.stream(), REALN_DTYPE_BF16, x, w, b, y, l.rows, l.in, l.out));
                Env::check(realn_op_linear_bwd(e.stream(), REALN_DTYPE_BF16, x, w, dy, dx, dw, db, l.rows,
                                               l.in, l.out, REALN_ACCUMULATE_DX));
                unsetenv("REALN_BF16_GEMM");
                Bytes out;
                append(out, e.download(y, l.rows * l.out));
                append(out, e.download(dx, l.rows * l.in));
                append(out, e.download(dw, l.out * l.in));
                append(out, e.download(db, l.out));
                return out;
            });
        }
    }
    // The decode (small-M) bf16 linear on each kernel this CPU runs; threads split the output columns.
    for (auto [isa, name] : {std::pair{realn::cpu::SimdIsa::AmxBf16, "amx"}, std::pair{realn::cpu::SimdIsa::Avx512Bf16, "avx512bf16"},
                             std::pair{realn::cpu::SimdIsa::Avx512, "avx512"}, std::pair{realn::cpu::SimdIsa::Avx2, "avx2"},
                             std::pair{realn::cpu::SimdIsa::Scalar, "scalar"}}) {
        if (!realn::cpu::small_m_bf16_isa_supported(isa)) {
            std::printf("[SKIP] small-M bf16 kernel %s: not available on this CPU/kernel\n", name);
            continue;
        }
        for (auto [rows, in, out] : {std::tuple<int64_t, int64_t, int64_t>{1, 768, 300}, {4, 1100, 97}, {64, 200, 333}}) {
            add("linear_fwd small-M", concat_shape("dtype=bf16 kernel=", name, " rows=", rows, " in=", in, " out=", out),
                [isa = isa, rows = rows, in = in, out = out](Env& e) {
                    const realn::cpu::SimdIsa prev = realn::cpu::small_m_bf16_isa();
                    realn::cpu::small_m_bf16_force_isa(isa);
                    Rng& r = e.rng();
                    float* wf = e.upload(nonzero(r, out * in));
                    uint16_t* w = static_cast<uint16_t*>(e.alloc(out * in * 2));
                    Env::check(realn_op_convert(e.stream(), REALN_DTYPE_BF16, w, REALN_DTYPE_F32, wf, out * in));
                    float* x = e.upload(nonzero(r, rows * in));
                    float* b = e.upload(nonzero(r, out));
                    float* y = static_cast<float*>(e.alloc(rows * out * 4));
                    Env::check(realn_op_linear_fwd(e.stream(), REALN_DTYPE_BF16, x, w, b, y, rows, in, out));
                    realn::cpu::small_m_bf16_force_isa(prev);
                    Bytes o;
                    append(o, e.download(y, rows * out));
                    return o;
                });
        }
    }
    for (int64_t n : {int64_t(40000), int64_t(100003)}) {
        add("sumsq", concat_shape("n=", n), [n](Env& e) {
            float* x = e.upload(nonzero(e.rng(), n));
            double s = 0;
            Env::check(realn_op_sumsq(e.stream(), x, n, &s));
            return Bytes(reinterpret_cast<unsigned char*>(&s),
                         reinterpret_cast<unsigned char*>(&s) + 8);
        });
    }
    for (auto [rows, dim] : {std::pair<int64_t, int64_t>{301, 96}, {1000, 64}, {7, 4000}}) {
        add("rmsnorm_fwd+bwd", concat_shape("rows=", rows, " dim=", dim), [rows, dim](Env& e) {
            Rng& r = e.rng();
            float* x = e.upload(nonzero(r, rows * dim));
            float* w = e.upload(nonzero(r, dim));
            float* dy = e.upload(nonzero(r, rows * dim));
            float* dw = e.upload(nonzero(r, dim));
            float* y = static_cast<float*>(e.alloc(rows * dim * 4));
            float* dx = static_cast<float*>(e.alloc(rows * dim * 4));
            float* rstd = static_cast<float*>(e.alloc(rows * 4));
            Env::check(
                realn_op_rmsnorm_fwd(e.stream(), REALN_DTYPE_F32, x, w, y, rstd, rows, dim, 1e-5f));
            Env::check(realn_op_rmsnorm_bwd(e.stream(), REALN_DTYPE_F32, x, w, rstd, dy, dx, dw,
                                            rows, dim));
            Bytes out;
            append(out, e.download(y, rows * dim));
            append(out, e.download(rstd, rows));
            append(out, e.download(dx, rows * dim));
            append(out, e.download(dw, dim));
            return out;
        });
    }
    for (auto [rows, dim] : {std::pair<int64_t, int64_t>{301, 96}, {7, 4000}}) {
        add("rmsnorm_fwd+bwd", concat_shape("dtype=bf16 rows=", rows, " dim=", dim), [rows, dim](Env& e) {
            Rng& r = e.rng();
            float* x = e.upload(nonzero(r, rows * dim));
            float* wf = e.upload(nonzero(r, dim));
            auto* w = static_cast<uint16_t*>(e.alloc(dim * 2));
            Env::check(realn_op_convert(e.stream(), REALN_DTYPE_BF16, w, REALN_DTYPE_F32, wf, dim));
            float* dy = e.upload(nonzero(r, rows * dim));
            float* dw = e.upload(nonzero(r, dim));
            float* y = static_cast<float*>(e.alloc(rows * dim * 4));
            float* dx = static_cast<float*>(e.alloc(rows * dim * 4));
            float* rstd = static_cast<float*>(e.alloc(rows * 4));
            Env::check(realn_op_rmsnorm_fwd(e.stream(), REALN_DTYPE_BF16, x, w, y, rstd, rows, dim, 1e-5f));
            Env::check(realn_op_rmsnorm_bwd(e.stream(), REALN_DTYPE_BF16, x, w, rstd, dy, dx, dw, rows, dim));
            Bytes out;
            append(out, e.download(y, rows * dim));
            append(out, e.download(rstd, rows));
            append(out, e.download(dx, rows * dim));
            append(out, e.download(dw, dim));
            return out;
        });
    }
    for (auto [rows, vocab] : {std::pair<int64_t, int64_t>{64, 1000}, {5, 50304}}) {
        const std::string shape = concat_shape("rows=", rows, " vocab=", vocab);
        add("cross_entropy_fwd+bwd", shape, [rows, vocab](Env& e) {
            Rng& r = e.rng();
            float* logits = e.upload(r.uniform_vec(rows * vocab, -4.0f, 4.0f));
            std::vector<int32_t> labels(static_cast<size_t>(rows));
            for (auto& y : labels) y = r.integer(0, static_cast<int32_t>(vocab - 1));
            labels[1] = -100;
            const int32_t* lab = e.upload(labels);
            float* loss = static_cast<float*>(e.alloc(rows * 4));
            float* lse = static_cast<float*>(e.alloc(rows * 4));
            float* dl = static_cast<float*>(e.alloc(rows * vocab * 4));
            double mean = 0;
            Env::check(realn_op_cross_entropy_fwd(e.stream(), REALN_DTYPE_F32, logits, lab, rows,
                                                  vocab, -100, loss, lse, &mean));
            Env::check(realn_op_cross_entropy_bwd(e.stream(), REALN_DTYPE_F32, logits, lab, rows,
                                                  vocab, -100, lse, 0.3f, dl));
            Bytes out(reinterpret_cast<unsigned char*>(&mean),
                      reinterpret_cast<unsigned char*>(&mean) + 8);
            append(out, e.download(loss, rows));
            append(out, e.download(lse, rows));
            append(out, e.download(dl, rows * vocab));
            return out;
        });
        add("logprobs_fwd+bwd", shape, [rows, vocab](Env& e) {
            Rng& r = e.rng();
            float* logits = e.upload(r.uniform_vec(rows * vocab, -4.0f, 4.0f));
            std::vector<int32_t> labels(static_cast<size_t>(rows));
            for (auto& y : labels) y = r.integer(0, static_cast<int32_t>(vocab - 1));
            const int32_t* lab = e.upload(labels);
            float* dlogp = e.upload(nonzero(r, rows));
            float* dent = e.upload(nonzero(r, rows));
            float* logp = static_cast<float*>(e.alloc(rows * 4));
            float* ent = static_cast<float*>(e.alloc(rows * 4));
            float* lse = static_cast<float*>(e.alloc(rows * 4));
            float* dl = static_cast<float*>(e.alloc(rows * vocab * 4));
            Env::check(realn_op_logprobs_fwd(e.stream(), REALN_DTYPE_F32, logits, lab, nullptr,
                                             rows, vocab, 0.7f, logp, ent, lse));
            Env::check(realn_op_logprobs_bwd(e.stream(), REALN_DTYPE_F32, logits, lab, nullptr,
                                             rows, vocab, 0.7f, lse, dlogp, dent, dl));
            Bytes out;
            append(out, e.download(logp, rows));
            append(out, e.download(ent, rows));
            append(out, e.download(lse, rows));
            append(out, e.download(dl, rows * vocab));
            return out;
        });
    }
    add("attention_fwd+bwd", "lens=100,37,130 hq=4 hkv=2 d=16", [](Env& e) {
        Rng& r = e.rng();
        const std::vector<int32_t> cu = {0, 100, 137, 267};
        const int64_t T = 267, hq = 4, hkv = 2, d = 16;
        float* q = e.upload(nonzero(r, T * hq * d));
        float* k = e.upload(nonzero(r, T * hkv * d));
        float* v = e.upload(nonzero(r, T * hkv * d));
        float* dout = e.upload(nonzero(r, T * hq * d));
        float* o = static_cast<float*>(e.alloc(T * hq * d * 4));
        float* lse = static_cast<float*>(e.alloc(T * hq * 4));
        float* dq = static_cast<float*>(e.alloc(T * hq * d * 4));
        float* dk = static_cast<float*>(e.alloc(T * hkv * d * 4));
        float* dv = static_cast<float*>(e.alloc(T * hkv * d * 4));
        Env::check(realn_op_attention_fwd(e.stream(), REALN_DTYPE_F32, q, k, v, cu.data(), 3, T, hq,
                                          hkv, d, 0.25f, o, lse));
        Env::check(realn_op_attention_bwd(e.stream(), REALN_DTYPE_F32, q, k, v, o, lse, dout,
                                          cu.data(), 3, T, hq, hkv, d, 0.25f, dq, dk, dv));
        Bytes out;
        for (auto [p, n] : {std::pair<float*, int64_t>{o, T * hq * d},
                            {lse, T * hq},
                            {dq, T * hq * d},
                            {dk, T * hkv * d},
                            {dv, T * hkv * d}})
            append(out, e.download(p, n));
        return out;
    });
    add("attention_decode", "batch=6 max_len=200 hq=8 hkv=2 d=32", [](Env& e) {
        Rng& r = e.rng();
        const int64_t B = 6, slots_n = 8, L = 200, hq = 8, hkv = 2, d = 32;
        float* q = e.upload(nonzero(r, B * hq * d));
        float* kc = e.upload(nonzero(r, slots_n * L * hkv * d));
        float* vc = e.upload(nonzero(r, slots_n * L * hkv * d));
        const std::vector<int32_t> slots = {3, 0, 7, 1, 5, 2}, lens = {200, 17, 150, 1, 99, 64};
        float* o = static_cast<float*>(e.alloc(B * hq * d * 4));
        Env::check(realn_op_attention_decode(e.stream(), REALN_DTYPE_F32, q, kc, vc, slots.data(),
                                             lens.data(), B, slots_n, L, hq, hkv, d, 0.17f, o));
        Bytes out;
        append(out, e.download(o, B * hq * d));
        return out;
    });
    // A bf16 KV cache: the store (rows rounded to bf16) and decode (AVX-512 kernel where present).
    add("kv_store+attention_decode", "dtype=bf16 batch=6 max_len=200 hq=8 hkv=2 d=40", [](Env& e) {
        Rng& r = e.rng();
        const int64_t B = 6, slots_n = 8, L = 200, hq = 8, hkv = 2, d = 40, T = slots_n * L;
        std::vector<int32_t> all_slots, all_pos;
        for (int32_t t = 0; t < T; ++t) {
            all_slots.push_back(t / int32_t(L));
            all_pos.push_back(t % int32_t(L));
        }
        auto* kc = static_cast<uint16_t*>(e.alloc(T * hkv * d * 2));
        auto* vc = static_cast<uint16_t*>(e.alloc(T * hkv * d * 2));
        Env::check(realn_op_kv_store(e.stream(), REALN_DTYPE_BF16, e.upload(nonzero(r, T * hkv * d)),
                                     e.upload(nonzero(r, T * hkv * d)), all_slots.data(), all_pos.data(), T, kc,
                                     vc, slots_n, L, hkv, d));
        float* q = e.upload(nonzero(r, B * hq * d));
        const std::vector<int32_t> slots = {3, 0, 7, 1, 5, 2}, lens = {200, 17, 150, 1, 99, 64};
        float* o = static_cast<float*>(e.alloc(B * hq * d * 4));
        Env::check(realn_op_attention_decode(e.stream(), REALN_DTYPE_BF16, q, kc, vc, slots.data(),
                                             lens.data(), B, slots_n, L, hq, hkv, d, 0.17f, o));
        Bytes out;
        append(out, e.download(kc, T * hkv * d));
        append(out, e.download(o, B * hq * d));
        return out;
    });
    add("embedding_bwd", "n=500 vocab=40 hidden=200 (ids repeat)", [](Env& e) {
        Rng& r = e.rng();
        const int64_t n = 500, vocab = 40, hidden = 200;
        std::vector<int32_t> ids(static_cast<size_t>(n));
        for (auto& i : ids) i = r.integer(0, 49);  // some out of this rank's range
        float* dout = e.upload(nonzero(r, n * hidden));
        float* dt = e.upload(nonzero(r, vocab * hidden));
        Env::check(realn_op_embedding_bwd(e.stream(), REALN_DTYPE_F32, e.upload(ids), n, dout,
                                          vocab, hidden, 0, dt));
        Bytes out;
        append(out, e.download(dt, vocab * hidden));
        return out;
    });
    add("embedding_bwd", "dtype=bf16 n=500 vocab=40 hidden=200 (ids repeat)", [](Env& e) {
        Rng& r = e.rng();
        const int64_t n = 500, vocab = 40, hidden = 200;
        std::vector<int32_t> ids(static_cast<size_t>(n));
        for (auto& i : ids) i = r.integer(0, 49);  // some out of this rank's range
        float* dout = e.upload(nonzero(r, n * hidden));
        float* dt = e.upload(nonzero(r, vocab * hidden));
        Env::check(realn_op_embedding_bwd(e.stream(), REALN_DTYPE_BF16, e.upload(ids), n, dout,
                                          vocab, hidden, 0, dt));
        Bytes out;
        append(out, e.download(dt, vocab * hidden));
        return out;
    });
    add("adamw", "n=100003", [](Env& e) {
        Rng& r = e.rng();
        const int64_t n = 100003;
        float* p = e.upload(nonzero(r, n));
        float* g = e.upload(nonzero(r, n));
        float* m = e.upload(nonzero(r, n));
        auto v0 = nonzero(r, n);
        for (auto& x : v0) x = x * x;
        float* v = e.upload(v0);
        realn_adamw_opts o = REALN_ADAMW_OPTS_INIT;
        o.weight_decay = 0.01f;
        o.step = 3;
        Env::check(realn_op_adamw(e.stream(), &o, p, g, m, v, n));
        Bytes out;
        append(out, e.download(p, n));
        append(out, e.download(m, n));
        append(out, e.download(v, n));
        return out;
    });
    add("sample", "rows=16 vocab=5000 top_k=50 top_p=0.9", [](Env& e) {
        Rng& r = e.rng();
        const int64_t rows = 16, vocab = 5000;
        float* logits = e.upload(r.uniform_vec(rows * vocab, -3.0f, 3.0f));
        realn_sample_opts o = REALN_SAMPLE_OPTS_INIT;
        o.temperature = 0.8f;
        o.top_k = 50;
        o.top_p = 0.9f;
        o.seed = 99;
        auto* tokens = static_cast<int32_t*>(e.alloc(rows * 4));
        auto* mask = static_cast<uint8_t*>(e.alloc(rows * vocab));
        auto* logp = static_cast<float*>(e.alloc(rows * 4));
        Env::check(realn_op_sample(e.stream(), REALN_DTYPE_F32, logits, rows, vocab, &o, tokens,
                                   mask, logp));
        Bytes out;
        append(out, e.download(tokens, rows));
        append(out, e.download(mask, rows * vocab));
        append(out, e.download(logp, rows));
        return out;
    });
}

}  // namespace

int main(int argc, char** argv) {
    // --threads a,b,...: the thread counts compared (default 1,2,3,4).
    std::vector<int> threads = {1, 2, 3, 4};
    for (int i = 1; i + 1 < argc; ++i)
        if (!std::strcmp(argv[i], "--threads")) {
            threads.clear();
            for (char* s = std::strtok(argv[i + 1], ","); s; s = std::strtok(nullptr, ","))
                threads.push_back(std::atoi(s));
        }
    const char* core = std::getenv("OPENBLAS_CORETYPE");
    const char* l2 = std::getenv("OPENBLAS_L2_SIZE");
    std::printf("OPENBLAS_CORETYPE=%s OPENBLAS_L2_SIZE=%s; OpenBLAS kernels: %s; %s\n",
                core ? core : "(unset)", l2 ? l2 : "(unset)", openblas_get_corename(),
                realn_build_info());
    if (core && std::strcmp(openblas_get_corename(), "reference") == 0) {
        std::printf("built with the reference SGEMM (REALN_BLAS=reference): no OpenBLAS kernel set to force: skipped\n");
        return kSkipped;
    }
    if (core && !cpu_can_run(core)) {
        std::printf("this CPU cannot run OpenBLAS's %s kernels: skipped\n", core);
        return kSkipped;
    }
    if (core && strcasecmp(core, openblas_get_corename()) != 0) {
        std::printf("OPENBLAS_CORETYPE=%s did not take effect (kernels: %s)\n", core,
                    openblas_get_corename());
        return 1;
    }
    register_cases();
    int failed = 0;
    uint64_t seed = 4321;
    for (const DetCase& c : det_cases()) {
        ++seed;
        Bytes first;
        std::string verdict = "bit-identical";
        bool ok = true;
        for (int t : threads) {
            Bytes got;
            try {
                Env::check(realn_set_num_threads(t));
                Env env(REALN_BACKEND_CPU, seed);
                got = c.run(env);
                int32_t now = 0;
                Env::check(realn_get_num_threads(&now));
                if (now != t)
                    throw std::runtime_error("the op changed the thread count to " +
                                             std::to_string(now));
            } catch (const std::exception& e) {
                ok = false;
                verdict = std::string("error: ") + e.what();
                break;
            }
            if (t == threads.front()) {
                first = std::move(got);
                continue;
            }
            if (got.size() != first.size() ||
                std::memcmp(got.data(), first.data(), got.size()) != 0) {
                size_t at = 0;
                while (at < got.size() && at < first.size() && got[at] == first[at]) ++at;
                ok = false;
                char buf[160];
                std::snprintf(buf, sizeof buf,
                              "%d threads differ from %d threads (first differing byte %zu of %zu)",
                              t, threads.front(), at, first.size());
                verdict = buf;
                break;
            }
        }
        failed += ok ? 0 : 1;
        std::printf("[%s] %-22s %-44s %s\n", ok ? "PASS" : "FAIL", c.name.c_str(), c.shape.c_str(),
                    verdict.c_str());
    }
    realn_set_num_threads(0);
    std::printf("%zu passed, %d failed\n", det_cases().size() - failed, failed);
    return failed == 0 ? 0 : 1;
}
