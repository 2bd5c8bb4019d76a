// Cases: GEMM (all transposes, strided batches, alpha/beta, odd shapes) and the linear layer
// (forward against float64; backward against finite differences of the float64 forward).
#include "harness.hpp"

namespace realn::testing {
namespace {

Outcome gemm_case(Env& env, int ta, int tb, int64_t m, int64_t n, int64_t k, int64_t batch,
                  float alpha, float beta) {
    Rng& r = env.rng();
    const int64_t lda = (ta ? m : k) + 3, ldb = (tb ? k : n) + 1, ldc = n + 2;  // padded rows
    const int64_t ra = ta ? k : m, rb = tb ? n : k;
    const int64_t sa = ra * lda + 5, sb = rb * ldb + 7, sc = m * ldc + 1;
    auto A = r.uniform_vec(sa * batch), B = r.uniform_vec(sb * batch), C = r.uniform_vec(sc * batch);
    float* dA = env.upload(A);
    float* dB = env.upload(B);
    float* dC = env.upload(C);
    Env::check(realn_op_gemm(env.stream(), REALN_DTYPE_F32, ta, tb, m, n, k, alpha, dA, lda, sa, dB,
                             ldb, sb, beta, dC, ldc, sc, batch));
    auto out = env.download(dC, sc * batch);
    std::vector<double> ref(C.begin(), C.end());
    for (int64_t bi = 0; bi < batch; ++bi)
        for (int64_t i = 0; i < m; ++i)
            for (int64_t j = 0; j < n; ++j) {
                double acc = 0;
                for (int64_t p = 0; p < k; ++p) {
                    double a = ta ? A[bi * sa + p * lda + i] : A[bi * sa + i * lda + p];
                    double b = tb ? B[bi * sb + j * ldb + p] : B[bi * sb + p * ldb + j];
                    acc += a * b;
                }
                double& c = ref[bi * sc + i * ldc + j];
                c = alpha * acc + beta * double(C[bi * sc + i * ldc + j]);
            }
    return {rel_err(out, ref), ""};
}

std::vector<double> linear_ref(const std::vector<double>& x, const std::vector<double>& w,
                               const std::vector<double>* b, int64_t rows, int64_t in, int64_t out) {
    std::vector<double> y(rows * out);
    for (int64_t r = 0; r < rows; ++r)
        for (int64_t o = 0; o < out; ++o) {
            double acc = b ? (*b)[o] : 0.0;
            for (int64_t i = 0; i < in; ++i) acc += x[r * in + i] * w[o * in + i];
            y[r * out + o] = acc;
        }
    return y;
}

Outcome linear_fwd_case(Env& env, int64_t rows, int64_t in, int64_t out, bool bias) {
    Rng& r = env.rng();
    auto x = r.uniform_vec(rows * in), w = r.uniform_vec(out * in), b = r.uniform_vec(out);
    float* dy = static_cast<float*>(env.alloc(rows * out * 4));
    Env::check(realn_op_linear_fwd(env.stream(), REALN_DTYPE_F32, env.upload(x), env.upload(w),
                                   bias ? env.upload(b) : nullptr, dy, rows, in, out));
    auto bd = to_double(b);
    auto ref = linear_ref(to_double(x), to_double(w), bias ? &bd : nullptr, rows, in, out);
    return {rel_err(env.download(dy, rows * out), ref), ""};
}

Outcome linear_bwd_case(Env& env, int64_t rows, int64_t in, int64_t out, bool accumulate) {
    Rng& r = env.rng();
    auto x = r.uniform_vec(rows * in), w = r.uniform_vec(out * in), b = r.uniform_vec(out);
    auto gy = r.uniform_vec(rows * out);
    // Pre-existing gradient contents: dw and dbias accumulate; dx accumulates only if asked.
    auto dx0 = r.uniform_vec(rows * in), dw0 = r.uniform_vec(out * in), db0 = r.uniform_vec(out);
    float* ddx = env.upload(dx0);
    float* ddw = env.upload(dw0);
    float* ddb = env.upload(db0);
    Env::check(realn_op_linear_bwd(env.stream(), REALN_DTYPE_F32, env.upload(x), env.upload(w),
                                   env.upload(gy), ddx, ddw, ddb, rows, in, out,
                                   accumulate ? REALN_ACCUMULATE_DX : 0));
    auto X = to_double(x), W = to_double(w), B = to_double(b), G = to_double(gy);
    auto loss = [&](const std::vector<double>& xx, const std::vector<double>& ww,
                    const std::vector<double>& bb) {
        auto y = linear_ref(xx, ww, &bb, rows, in, out);
        double s = 0;
        for (size_t i = 0; i < y.size(); ++i) s += y[i] * G[i];
        return s;
    };
    auto gx = finite_diff([&](const std::vector<double>& v) { return loss(v, W, B); }, X);
    auto gw = finite_diff([&](const std::vector<double>& v) { return loss(X, v, B); }, W);
    auto gb = finite_diff([&](const std::vector<double>& v) { return loss(X, W, v); }, B);
    for (size_t i = 0; i < gw.size(); ++i) gw[i] += dw0[i];
    for (size_t i = 0; i < gb.size(); ++i) gb[i] += db0[i];
    if (accumulate)
        for (size_t i = 0; i < gx.size(); ++i) gx[i] += dx0[i];
    return {worst({rel_err(env.download(ddx, rows * in), gx), rel_err(env.download(ddw, out * in), gw),
                   rel_err(env.download(ddb, out), gb)}),
            ""};
}

}  // namespace

void add_dense_cases() {
    struct G { int ta, tb; int64_t m, n, k, batch; float alpha, beta; };
    for (G g : {G{0, 0, 17, 23, 31, 1, 1.0f, 0.0f}, G{1, 0, 8, 5, 64, 1, 0.5f, 1.0f},
                G{0, 1, 33, 9, 16, 3, -1.0f, 0.25f}, G{1, 1, 4, 70, 3, 2, 2.0f, -0.5f},
                G{0, 0, 1, 1, 1, 1, 1.0f, 0.0f}, G{0, 1, 64, 48, 80, 1, 1.0f, 0.0f},
                G{0, 0, 6, 7, 8, 16, 1.0f, 1.0f}}) {
        add_case({"gemm",
                  concat_shape("ta=", g.ta, " tb=", g.tb, " m=", g.m, " n=", g.n, " k=", g.k,
                               " batch=", g.batch, " alpha=", g.alpha, " beta=", g.beta),
                  kTolF32, [g](Env& e) { return gemm_case(e, g.ta, g.tb, g.m, g.n, g.k, g.batch, g.alpha, g.beta); }});
    }
    for (auto [rows, in, out, bias] : {std::tuple{13, 24, 10, true}, std::tuple{1, 7, 3, false},
                                       std::tuple{40, 64, 96, true}}) {
        add_case({"linear_fwd", concat_shape("rows=", rows, " in=", in, " out=", out, " bias=", bias),
                  kTolF32, [=](Env& e) { return linear_fwd_case(e, rows, in, out, bias); }});
    }
    for (auto [rows, in, out, acc] : {std::tuple{5, 6, 4, false}, std::tuple{1, 3, 7, true},
                                      std::tuple{9, 8, 5, true}}) {
        add_case({"linear_bwd", concat_shape("rows=", rows, " in=", in, " out=", out, " acc_dx=", acc),
                  kTolGrad, [=](Env& e) { return linear_bwd_case(e, rows, in, out, acc); }});
    }
}

}  // namespace realn::testing
