// Cases: bf16 (bf16 weights, fp32 activations; realn.h). The fp32 -> bf16 conversion bit for bit
// against an independent float64 nearest-even reference (ties, subnormals, overflow, NaN); the
// bf16 GEMM on every path this CPU runs (REALN_BF16_GEMM) and the bf16 linear layer, embedding and
// rmsnorm (forward and backward) against float64 references computed from the same bf16-rounded operands (so the
// tolerance is the fp32 accumulation's, not bf16's); the small-M bf16 kernel per ISA.
#include <omp.h>

#include <cstdlib>
#include <cstring>
#include <string>
#include <tuple>

#include "../cpu/gemm_bf16.hpp"
#include "../cpu/small_m_linear.hpp"
#include "harness.hpp"

namespace realn::testing {
namespace {

float bits_f(uint32_t u) {
    float f;
    std::memcpy(&f, &u, 4);
    return f;
}
uint32_t f_bits(float f) {
    uint32_t u;
    std::memcpy(&u, &f, 4);
    return u;
}

}  // namespace

// Nearest bf16 to f by comparing the two bf16 neighbours (truncation and one step up in
// magnitude) in float64, ties to the even one; the step past the largest finite bf16 counts as
// 2^128, so values from the midpoint on overflow to infinity as IEEE rounding does.
uint16_t ref_bf16(float f) {
    if (std::isnan(f)) return 0;  // compared separately (any quiet NaN)
    const uint32_t u = f_bits(f);
    const uint16_t lo = static_cast<uint16_t>(u >> 16), hi = static_cast<uint16_t>(lo + 1);
    if (std::isinf(f)) return lo;
    const double x = std::fabs(double(f)), vlo = std::fabs(double(bits_f(uint32_t(lo) << 16)));
    const double vhi = (hi & 0x7fff) == 0x7f80 ? std::ldexp(1.0, 128) : std::fabs(double(bits_f(uint32_t(hi) << 16)));
    const double dlo = x - vlo, dhi = vhi - x;
    if (dlo < dhi) return lo;
    if (dhi < dlo) return hi;
    return (lo & 1) ? hi : lo;
}

namespace {

float widen(uint16_t h) { return bits_f(uint32_t(h) << 16); }
float rnd(float f) { return widen(ref_bf16(f)); }
std::vector<uint16_t> to_bf16(const std::vector<float>& v) {
    std::vector<uint16_t> o(v.size());
    for (size_t i = 0; i < v.size(); ++i) o[i] = ref_bf16(v[i]);
    return o;
}
std::vector<double> widened(const std::vector<uint16_t>& v) {
    std::vector<double> o(v.size());
    for (size_t i = 0; i < v.size(); ++i) o[i] = widen(v[i]);
    return o;
}
std::vector<double> rounded(const std::vector<float>& v) {
    std::vector<double> o(v.size());
    for (size_t i = 0; i < v.size(); ++i) o[i] = rnd(v[i]);
    return o;
}

Outcome convert_case(Env& env, int64_t n) {
    Rng& r = env.rng();
    std::vector<float> a(n);
    for (int64_t i = 0; i < n; ++i) {
        switch (i % 8) {
            case 0: a[i] = r.normal(3.0f); break;
            case 1: a[i] = bits_f((f_bits(r.normal()) & 0xffff0000u) | 0x8000u); break;  // exact tie
            case 2: a[i] = bits_f(uint32_t(r.integer(1, 0x7fffff)));  break;            // subnormal
            case 3: a[i] = -bits_f(uint32_t(r.integer(0x7f7f0000, 0x7f7fffff))); break;  // near max: some overflow
            case 4: a[i] = r.uniform(-1e-30f, 1e-30f); break;
            case 5: a[i] = bits_f((f_bits(r.uniform(1.0f, 2.0f)) & 0xffff0000u) | uint32_t(r.integer(0x7fff, 0x8001))); break;
            case 6: a[i] = (i % 3 == 0) ? NAN : (i % 3 == 1 ? INFINITY : -0.0f); break;
            default: a[i] = r.uniform(-65504.0f, 65504.0f); break;
        }
    }
    uint16_t* mid = static_cast<uint16_t*>(env.alloc(n * 2));
    float* back = static_cast<float*>(env.alloc(n * 4));
    Env::check(realn_op_convert(env.stream(), REALN_DTYPE_BF16, mid, REALN_DTYPE_F32, env.upload(a), n));
    Env::check(realn_op_convert(env.stream(), REALN_DTYPE_F32, back, REALN_DTYPE_BF16, mid, n));
    auto h = env.download(mid, n);
    auto f = env.download(back, n);
    int64_t bad = 0, first = -1;
    for (int64_t i = 0; i < n; ++i) {
        const bool ok = std::isnan(a[i]) ? (std::isnan(widen(h[i])) && (h[i] & 0x40))
                                         : (h[i] == ref_bf16(a[i]));
        const bool ok2 = std::isnan(a[i]) ? std::isnan(f[i]) : f_bits(f[i]) == (uint32_t(h[i]) << 16);
        if (!ok || !ok2) {
            ++bad;
            if (first < 0) first = i;
        }
    }
    return {double(bad), bad ? concat_shape(bad, " mismatches, first at ", first, " (", a[first], ")") : ""};
}

// Runs fn with REALN_BF16_GEMM set to path (restored after).
struct PathEnv {
    std::string saved;
    bool had;
    explicit PathEnv(const char* path) {
        const char* v = std::getenv("REALN_BF16_GEMM");
        had = v != nullptr;
        if (had) saved = v;
        setenv("REALN_BF16_GEMM", path, 1);
    }
    ~PathEnv() {
        if (had) setenv("REALN_BF16_GEMM", saved.c_str(), 1);
        else unsetenv("REALN_BF16_GEMM");
    }
};

bool path_runs(const char* path) {
    const std::string p(path);
    return p == "convert" ? true
           : p == "amx"   ? cpu::bf16_gemm_path_supported(cpu::Bf16GemmPath::Amx)
                          : cpu::bf16_gemm_path_supported(cpu::Bf16GemmPath::Avx512Bf16);
}

Outcome gemm_case(Env& env, const char* path, int ta, int tb, int64_t m, int64_t n, int64_t k, int64_t batch,
                  float alpha, float beta) {
    if (!path_runs(path)) return {0.0, std::string(path) + " not available on this CPU: skipped"};
    PathEnv pe(path);
    Rng& r = env.rng();
    const int64_t lda = (ta ? m : k) + 3, ldb = (tb ? k : n) + 1, ldc = n + 2;
    const int64_t sa = (ta ? k : m) * lda + 5, sb = (tb ? n : k) * ldb + 7, sc = m * ldc + 1;
    auto A = to_bf16(r.uniform_vec(sa * batch)), B = to_bf16(r.uniform_vec(sb * batch));
    auto C = r.uniform_vec(sc * batch);
    float* dC = env.upload(C);
    Env::check(realn_op_gemm(env.stream(), REALN_DTYPE_BF16, ta, tb, m, n, k, alpha, env.upload(A), lda, sa,
                             env.upload(B), ldb, sb, beta, dC, ldc, sc, batch));
    auto out = env.download(dC, sc * batch);
    std::vector<double> ref(C.begin(), C.end());
    for (int64_t bi = 0; bi < batch; ++bi)
        for (int64_t i = 0; i < m; ++i)
            for (int64_t j = 0; j < n; ++j) {
                double acc = 0;
                for (int64_t p = 0; p < k; ++p) {
                    const double a = widen(ta ? A[bi * sa + p * lda + i] : A[bi * sa + i * lda + p]);
                    const double b = widen(tb ? B[bi * sb + j * ldb + p] : B[bi * sb + p * ldb + j]);
                    acc += a * b;
                }
                double& c = ref[bi * sc + i * ldc + j];
                c = alpha * acc + beta * double(C[bi * sc + i * ldc + j]);
            }
    return {rel_err(out, ref), ""};
}

// x [rows, in] fp32 (rounded to bf16 by the op, by the small-M kernel too), w bf16.
Outcome linear_fwd_case(Env& env, const char* path, int64_t rows, int64_t in, int64_t out, bool bias) {
    if (!path_runs(path)) return {0.0, std::string(path) + " not available on this CPU: skipped"};
    PathEnv pe(path);
    Rng& r = env.rng();
    auto x = r.uniform_vec(rows * in), b = r.uniform_vec(out);
    auto w = to_bf16(r.uniform_vec(out * in));
    float* dy = static_cast<float*>(env.alloc(rows * out * 4));
    Env::check(realn_op_linear_fwd(env.stream(), REALN_DTYPE_BF16, env.upload(x), env.upload(w),
                                   bias ? env.upload(b) : nullptr, dy, rows, in, out));
    const auto X = rounded(x);
    const auto W = widened(w);
    std::vector<double> ref(rows * out);
    for (int64_t i = 0; i < rows; ++i)
        for (int64_t o = 0; o < out; ++o) {
            double acc = bias ? b[o] : 0.0;
            for (int64_t p = 0; p < in; ++p) acc += X[i * in + p] * W[o * in + p];
            ref[i * out + o] = acc;
        }
    return {rel_err(env.download(dy, rows * out), ref), ""};
}

// dx (= or +=) dy W, dw += dy^T x (dy, x rounded to bf16), dbias += column sums of dy (fp32).
Outcome linear_bwd_case(Env& env, const char* path, int64_t rows, int64_t in, int64_t out, bool acc) {
    if (!path_runs(path)) return {0.0, std::string(path) + " not available on this CPU: skipped"};
    PathEnv pe(path);
    Rng& r = env.rng();
    auto x = r.uniform_vec(rows * in), gy = r.uniform_vec(rows * out);
    auto w = to_bf16(r.uniform_vec(out * in));
    auto dx0 = r.uniform_vec(rows * in), dw0 = r.uniform_vec(out * in), db0 = r.uniform_vec(out);
    float* ddx = env.upload(dx0);
    float* ddw = env.upload(dw0);
    float* ddb = env.upload(db0);
    Env::check(realn_op_linear_bwd(env.stream(), REALN_DTYPE_BF16, env.upload(x), env.upload(w), env.upload(gy),
                                   ddx, ddw, ddb, rows, in, out, acc ? REALN_ACCUMULATE_DX : 0));
    const auto X = rounded(x), G = rounded(gy), W = widened(w);
    std::vector<double> gx(rows * in), gw(out * in), gb(out);
    for (int64_t i = 0; i < rows; ++i)
        for (int64_t p = 0; p < in; ++p) {
            double s = acc ? dx0[i * in + p] : 0.0;
            for (int64_t o = 0; o < out; ++o) s += G[i * out + o] * W[o * in + p];
            gx[i * in + p] = s;
        }
    for (int64_t o = 0; o < out; ++o) {
        for (int64_t p = 0; p < in; ++p) {
            double s = dw0[o * in + p];
            for (int64_t i = 0; i < rows; ++i) s += G[i * out + o] * X[i * in + p];
            gw[o * in + p] = s;
        }
        double s = db0[o];
        for (int64_t i = 0; i < rows; ++i) s += gy[i * out + o];
        gb[o] = s;
    }
    return {worst({rel_err(env.download(ddx, rows * in), gx), rel_err(env.download(ddw, out * in), gw),
                   rel_err(env.download(ddb, out), gb)}),
            ""};
}

Outcome embedding_case(Env& env, int64_t n, int64_t vocab, int64_t hidden, int64_t start) {
    Rng& r = env.rng();
    auto table = to_bf16(r.uniform_vec(vocab * hidden));
    std::vector<int32_t> ids(n);
    for (auto& id : ids) id = r.integer(int32_t(start) - 3, int32_t(start + vocab) + 2);  // some out of range
    float* out = env.upload(r.uniform_vec(n * hidden));  // overwritten, zero rows included
    Env::check(realn_op_embedding_fwd(env.stream(), REALN_DTYPE_BF16, env.upload(ids), n, env.upload(table), vocab,
                                      hidden, start, out));
    auto got = env.download(out, n * hidden);
    int64_t bad = 0;
    for (int64_t t = 0; t < n; ++t) {
        const int64_t local = ids[t] - start;
        for (int64_t j = 0; j < hidden; ++j) {
            const float want = (local >= 0 && local < vocab) ? widen(table[local * hidden + j]) : 0.0f;
            bad += f_bits(got[t * hidden + j]) != f_bits(want);
        }
    }
    return {double(bad), bad ? concat_shape(bad, " elements differ") : ""};
}

Outcome rmsnorm_case(Env& env, int64_t rows, int64_t dim) {
    Rng& r = env.rng();
    auto x = r.uniform_vec(rows * dim, -2.0f, 2.0f);
    auto w = to_bf16(r.uniform_vec(dim, 0.5f, 1.5f));
    float* y = static_cast<float*>(env.alloc(rows * dim * 4));
    float* rs = static_cast<float*>(env.alloc(rows * 4));
    const float eps = 1e-5f;
    Env::check(realn_op_rmsnorm_fwd(env.stream(), REALN_DTYPE_BF16, env.upload(x), env.upload(w), y, rs, rows, dim, eps));
    std::vector<double> ref(rows * dim), rref(rows);
    for (int64_t i = 0; i < rows; ++i) {
        double ss = 0;
        for (int64_t j = 0; j < dim; ++j) ss += double(x[i * dim + j]) * x[i * dim + j];
        rref[i] = 1.0 / std::sqrt(ss / dim + eps);
        for (int64_t j = 0; j < dim; ++j) ref[i * dim + j] = x[i * dim + j] * rref[i] * widen(w[j]);
    }
    return {worst({rel_err(env.download(y, rows * dim), ref), rel_err(env.download(rs, rows), rref)}), ""};
}

// Backward with a bf16 weight: dx (overwritten) and dw (accumulated) against the float64 gradient of
// y = x r w with w the widened bf16 weight, and bit for bit the fp32 op given that widened weight.
Outcome rmsnorm_bwd_case(Env& env, int64_t rows, int64_t dim) {
    Rng& r = env.rng();
    auto x = r.uniform_vec(rows * dim, -2.0f, 2.0f), g = r.uniform_vec(rows * dim), dw0 = r.uniform_vec(dim);
    auto w = to_bf16(r.uniform_vec(dim, 0.5f, 1.5f));
    std::vector<float> wf(dim);
    for (int64_t j = 0; j < dim; ++j) wf[j] = widen(w[j]);
    const float eps = 1e-5f;
    float* X = env.upload(x);
    float* rs = static_cast<float*>(env.alloc(rows * 4));
    Env::check(realn_op_rmsnorm_fwd(env.stream(), REALN_DTYPE_BF16, X, env.upload(w), env.alloc(rows * dim * 4), rs, rows, dim, eps));
    float* dx = env.upload(r.uniform_vec(rows * dim));  // overwritten
    float* dw = env.upload(dw0);
    float* G = env.upload(g);
    Env::check(realn_op_rmsnorm_bwd(env.stream(), REALN_DTYPE_BF16, X, env.upload(w), rs, G, dx, dw, rows, dim));
    float* dx32 = static_cast<float*>(env.alloc(rows * dim * 4));
    float* dw32 = env.upload(dw0);
    Env::check(realn_op_rmsnorm_bwd(env.stream(), REALN_DTYPE_F32, X, env.upload(wf), rs, G, dx32, dw32, rows, dim));
    const auto gx = env.download(dx, rows * dim), gw = env.download(dw, dim);
    if (gx != env.download(dx32, rows * dim) || gw != env.download(dw32, dim))
        return {1.0, "differs from the fp32 op given the widened weight"};
    // dx_j = r w_j g_j - x_j r^3 / dim * sum_k g_k w_k x_k;  dw_j += sum_rows g_j x_j r.
    std::vector<double> rx(rows * dim), rw(dw0.begin(), dw0.end());
    for (int64_t i = 0; i < rows; ++i) {
        const float* xi = &x[i * dim];
        const float* gi = &g[i * dim];
        double ss = 0, dot = 0;
        for (int64_t j = 0; j < dim; ++j) ss += double(xi[j]) * xi[j];
        const double rr = 1.0 / std::sqrt(ss / dim + eps);
        for (int64_t j = 0; j < dim; ++j) dot += double(gi[j]) * wf[j] * xi[j];
        for (int64_t j = 0; j < dim; ++j) {
            rx[i * dim + j] = rr * wf[j] * gi[j] - xi[j] * rr * rr * rr / dim * dot;
            rw[j] += double(gi[j]) * xi[j] * rr;
        }
    }
    return {worst({rel_err(gx, rx), rel_err(gw, rw)}), ""};
}

// A bf16 table's gradient: fp32, accumulated; the op never reads the table, so it is the fp32 op
// bit for bit, and the float64 sum of the output gradients of each row's tokens.
Outcome embedding_bwd_case(Env& env, int64_t n, int64_t vocab, int64_t hidden, int64_t start) {
    Rng& r = env.rng();
    std::vector<int32_t> ids(n);
    for (auto& id : ids) id = r.integer(int32_t(start) - 3, int32_t(start + vocab) + 2);  // some out of range
    auto gout = r.uniform_vec(n * hidden), dt0 = r.uniform_vec(vocab * hidden);
    int32_t* I = env.upload(ids);
    float* G = env.upload(gout);
    float* dt = env.upload(dt0);
    float* dt32 = env.upload(dt0);
    Env::check(realn_op_embedding_bwd(env.stream(), REALN_DTYPE_BF16, I, n, G, vocab, hidden, start, dt));
    Env::check(realn_op_embedding_bwd(env.stream(), REALN_DTYPE_F32, I, n, G, vocab, hidden, start, dt32));
    const auto got = env.download(dt, vocab * hidden);
    if (got != env.download(dt32, vocab * hidden)) return {1.0, "differs from the fp32 op"};
    std::vector<double> ref(dt0.begin(), dt0.end());
    for (int64_t t = 0; t < n; ++t) {
        const int64_t local = ids[t] - start;
        if (local < 0 || local >= vocab) continue;
        for (int64_t j = 0; j < hidden; ++j) ref[local * hidden + j] += gout[t * hidden + j];
    }
    return {rel_err(got, ref), ""};
}

// One ISA of the small-M bf16 kernel: against float64 of the bf16-rounded x and w; bit-identical to
// the scalar kernel (every vector ISA emulates vdpbf16ps exactly) or, for AMX, to the bf16 GEMM's
// AMX path (the prefill/training linear), to itself with one thread and to each row computed alone.
Outcome small_m_case(Env& env, cpu::SimdIsa isa, int64_t rows, int64_t in, int64_t out, bool bias) {
    if (env.backend() != REALN_BACKEND_CPU) return {0.0, "CPU kernel: not run on this backend"};
    if (!cpu::small_m_bf16_isa_supported(isa)) return {0.0, "ISA not on this CPU: skipped"};
    Rng& r = env.rng();
    auto x = r.uniform_vec(rows * in), b = r.uniform_vec(out);
    auto w = to_bf16(r.uniform_vec(out * in));
    std::vector<float> y(rows * out), y1(rows * out), ys(rows * out);
    const float* bp = bias ? b.data() : nullptr;
    struct Force {
        explicit Force(cpu::SimdIsa i) : prev(cpu::small_m_bf16_isa()) { cpu::small_m_bf16_force_isa(i); }
        ~Force() { cpu::small_m_bf16_force_isa(prev); }
        cpu::SimdIsa prev;
    };
    const char* twin = "the scalar kernel";
    if (isa == cpu::SimdIsa::AmxBf16) {
        twin = "the AMX bf16 GEMM";
        for (int64_t m = 0; m < rows; ++m)
            for (int64_t o = 0; o < out; ++o) ys[m * out + o] = bias ? b[o] : 0.0f;
        cpu::gemm_mixed(cpu::Bf16GemmPath::Amx, rows, out, in, 1.0f, {x.data(), in, false, false},
                        {w.data(), in, true, true}, bias ? 1.0f : 0.0f, ys.data(), out);
    } else {
        Force force(cpu::SimdIsa::Scalar);
        cpu::small_m_linear_fwd_bf16(x.data(), w.data(), bp, ys.data(), rows, in, out);
    }
    Force force(isa);
    cpu::small_m_linear_fwd_bf16(x.data(), w.data(), bp, y.data(), rows, in, out);
    const int threads = omp_get_max_threads();
    omp_set_num_threads(1);
    cpu::small_m_linear_fwd_bf16(x.data(), w.data(), bp, y1.data(), rows, in, out);
    omp_set_num_threads(threads);
    if (y != y1) return {1.0, "result differs between 1 thread and " + std::to_string(threads)};
    for (size_t i = 0; i < y.size(); ++i)
        if (f_bits(y[i]) != f_bits(ys[i]))
            return {1.0, concat_shape("element ", i, " differs from ", twin, ": ", y[i], " vs ", ys[i])};
    for (int64_t m = 0; m < rows; ++m) {
        std::vector<float> row(out);
        cpu::small_m_linear_fwd_bf16(x.data() + m * in, w.data(), bp, row.data(), 1, in, out);
        if (!std::equal(row.begin(), row.end(), y.begin() + m * out))
            return {1.0, "row " + std::to_string(m) + " alone differs from the batch"};
    }
    const auto X = rounded(x);
    const auto W = widened(w);
    std::vector<double> ref(rows * out);
    for (int64_t i = 0; i < rows; ++i)
        for (int64_t o = 0; o < out; ++o) {
            double acc = bias ? b[o] : 0.0;
            for (int64_t p = 0; p < in; ++p) acc += X[i * in + p] * W[o * in + p];
            ref[i * out + o] = acc;
        }
    return {rel_err(y, ref), ""};
}

}  // namespace

void add_bf16_cases() {
    for (int64_t n : {int64_t(1001), int64_t(70001)})
        add_case({"convert", concat_shape("f32->bf16 RNE bit-exact n=", n, " (ties, subnormals, overflow, nan)"), 0.0,
                  [n](Env& e) { return convert_case(e, n); }});
    struct G { int ta, tb; int64_t m, n, k, batch; float alpha, beta; };
    for (const char* path : {"amx", "avx512bf16", "convert"}) {
        for (G g : {G{0, 0, 17, 23, 31, 1, 1.0f, 0.0f}, G{1, 0, 8, 5, 64, 1, 0.5f, 1.0f},
                    G{0, 1, 33, 9, 17, 3, -1.0f, 0.25f}, G{1, 1, 4, 70, 3, 2, 2.0f, -0.5f},
                    G{0, 0, 1, 1, 1, 1, 1.0f, 0.0f}, G{0, 1, 200, 530, 1100, 1, 1.0f, 1.0f},
                    G{1, 1, 70, 45, 97, 1, 1.0f, 0.0f},
                    G{1, 0, 13, 40, 0, 1, 1.0f, 0.5f}}) {
            add_case({"gemm",
                      concat_shape("dtype=bf16 path=", path, " ta=", g.ta, " tb=", g.tb, " m=", g.m, " n=", g.n, " k=",
                                   g.k, " batch=", g.batch, " alpha=", g.alpha, " beta=", g.beta),
                      kTolF32, [=](Env& e) { return gemm_case(e, path, g.ta, g.tb, g.m, g.n, g.k, g.batch, g.alpha, g.beta); }});
        }
        for (auto [rows, in, out, bias] : {std::tuple{3, 70, 33, true}, std::tuple{64, 40, 17, false},
                                           std::tuple{65, 24, 10, true}, std::tuple{130, 600, 70, false}}) {
            add_case({"linear_fwd", concat_shape("dtype=bf16 path=", path, " rows=", rows, " in=", in, " out=", out, " bias=", bias),
                      kTolF32, [=](Env& e) { return linear_fwd_case(e, path, rows, in, out, bias); }});
        }
        for (auto [rows, in, out, acc] : {std::tuple{5, 6, 4, false}, std::tuple{1, 3, 7, true},
                                          std::tuple{77, 130, 45, true}, std::tuple{600, 35, 40, false}}) {
            add_case({"linear_bwd", concat_shape("dtype=bf16 path=", path, " rows=", rows, " in=", in, " out=", out, " acc_dx=", acc),
                      kTolF32, [=](Env& e) { return linear_bwd_case(e, path, rows, in, out, acc); }});
        }
    }
    // REALN_BF16_GEMM picks one of the CPU backend's bf16 kernels: the CPU backend refuses a bogus
    // value naming the variable; another backend's GEMM does not read it and must run unaffected.
    add_case({"gemm", "dtype=bf16 REALN_BF16_GEMM=bogus: cpu refuses naming it, others ignore it", 0.0, [](Env& e) {
                  PathEnv pe("bogus");
                  auto a = to_bf16(e.rng().uniform_vec(4));
                  float* c = static_cast<float*>(e.alloc(16));
                  const realn_status st = realn_op_gemm(e.stream(), REALN_DTYPE_BF16, 0, 0, 2, 2, 2, 1.0f, e.upload(a), 2,
                                                        0, e.upload(a), 2, 0, 0.0f, c, 2, 0, 1);
                  const std::string msg = realn_last_error();
                  const bool ok = e.backend() == REALN_BACKEND_CPU
                                      ? st == REALN_ERR_INVALID_ARGUMENT && msg.find("REALN_BF16_GEMM") != std::string::npos
                                      : st == REALN_OK;
                  return Outcome{ok ? 0.0 : 1.0, ok ? "" : concat_shape("status ", st, ": ", msg)};
              }});
    for (auto [n, vocab, hidden, start] : {std::tuple{40, 50, 24, 0}, std::tuple{300, 100, 130, 100}})
        add_case({"embedding_fwd", concat_shape("dtype=bf16 n=", n, " vocab=", vocab, " hidden=", hidden, " start=", start),
                  0.0, [=](Env& e) { return embedding_case(e, n, vocab, hidden, start); }});
    for (auto [rows, dim] : {std::tuple{7, 64}, std::tuple{301, 96}})
        add_case({"rmsnorm_fwd", concat_shape("dtype=bf16 rows=", rows, " dim=", dim), kTolF32,
                  [=](Env& e) { return rmsnorm_case(e, rows, dim); }});
    // One row, odd dims, a threaded shape (rows x dim > 2^14), many row blocks.
    for (auto [rows, dim] : {std::tuple{1, 7}, std::tuple{5, 33}, std::tuple{40, 420}, std::tuple{301, 96}})
        add_case({"rmsnorm_bwd", concat_shape("dtype=bf16 rows=", rows, " dim=", dim), kTolF32,
                  [=](Env& e) { return rmsnorm_bwd_case(e, rows, dim); }});
    // Ids repeat; a second vocab shard; the threaded column split.
    for (auto [n, vocab, hidden, start] : {std::tuple{40, 50, 24, 0}, std::tuple{500, 40, 200, 20}})
        add_case({"embedding_bwd", concat_shape("dtype=bf16 n=", n, " vocab=", vocab, " hidden=", hidden, " start=", start),
                  kTolF32, [=](Env& e) { return embedding_bwd_case(e, n, vocab, hidden, start); }});
    // Tails of every length class (in % 32), one row, the threaded shape, all four row tiles.
    for (auto [isa, name] : {std::tuple{cpu::SimdIsa::AmxBf16, "amx"}, std::tuple{cpu::SimdIsa::Avx512Bf16, "avx512bf16"},
                             std::tuple{cpu::SimdIsa::Avx512, "avx512"},
                             std::tuple{cpu::SimdIsa::Avx2, "avx2"}, std::tuple{cpu::SimdIsa::Scalar, "scalar"}})
        for (auto [rows, in, out, bias] : {std::tuple{1, 1, 1, false}, std::tuple{3, 45, 7, true},
                                           std::tuple{8, 1031, 65, true}, std::tuple{37, 129, 70, false},
                                           std::tuple{64, 96, 33, true}, std::tuple{2, 300, 257, false},
                                           std::tuple{17, 1100, 48, true}, std::tuple{5, 2048, 80, false}})
            add_case({std::string("small_m_linear_bf16_") + name,
                      concat_shape("rows=", rows, " in=", in, " out=", out, " bias=", bias), kTolF32,
                      [=](Env& e) { return small_m_case(e, isa, rows, in, out, bias); }});
}

}  // namespace realn::testing
