// Cases: AdamW (several steps against a float64 reference, bias correction, weight decay, grad
// scale), sampling (greedy = argmax; top-k / top-p never leave their sets; masks and log-probs
// exact; the empirical distribution matches the filtered softmax by a chi-square bound; same seed
// -> same tokens, different offset -> fresh draws), and GAE over ragged packed sequences.
#include <algorithm>
#include <cmath>
#include <numeric>

#include "harness.hpp"

namespace realn::testing {
namespace {

using Vec = std::vector<double>;

Outcome adamw_case(Env& env, int64_t n, int steps, float wd, float gscale) {
    Rng& r = env.rng();
    auto p0 = r.normal_vec(n);
    float* p = env.upload(p0);
    float* m = env.upload(std::vector<float>(n, 0.0f));
    float* v = env.upload(std::vector<float>(n, 0.0f));
    Vec P = to_double(p0), M(n, 0.0), V(n, 0.0);
    realn_adamw_opts o = REALN_ADAMW_OPTS_INIT;
    o.lr = 1e-2f;
    o.beta1 = 0.9f;
    o.beta2 = 0.95f;
    o.eps = 1e-6f;
    o.weight_decay = wd;
    o.grad_scale = gscale;
    for (int s = 1; s <= steps; ++s) {
        auto g = r.normal_vec(n);
        o.step = s;
        Env::check(realn_op_adamw(env.stream(), &o, p, env.upload(g), m, v, n));
        const double b1 = o.beta1, b2 = o.beta2;
        for (int64_t i = 0; i < n; ++i) {
            const double gi = double(g[i]) * gscale;
            M[i] = b1 * M[i] + (1 - b1) * gi;
            V[i] = b2 * V[i] + (1 - b2) * gi * gi;
            const double mh = M[i] / (1 - std::pow(b1, s)), vh = V[i] / (1 - std::pow(b2, s));
            P[i] -= double(o.lr) * mh / (std::sqrt(vh) + double(o.eps)) + double(o.lr) * wd * P[i];
        }
    }
    return {worst({rel_err(env.download(p, n), P), rel_err(env.download(m, n), M), rel_err(env.download(v, n), V)}), ""};
}

Outcome adamw_rejects_step0(Env& env) {
    realn_adamw_opts o = REALN_ADAMW_OPTS_INIT;
    o.step = 0;
    float* x = env.upload(std::vector<float>{1.0f});
    const realn_status st = realn_op_adamw(env.stream(), &o, x, x, x, x, 1);
    if (st == REALN_ERR_INVALID_ARGUMENT) return {0.0, ""};
    return {INFINITY, std::string("step 0 accepted: ") + realn_status_string(st)};
}

struct SampleOut {
    std::vector<int32_t> tok;
    std::vector<uint8_t> mask;
    std::vector<float> logp;
};

SampleOut run_sample(Env& env, const float* logits, int64_t rows, int64_t vocab, const realn_sample_opts& o) {
    auto* tok = static_cast<int32_t*>(env.alloc(rows * 4));
    auto* mask = static_cast<uint8_t*>(env.alloc(rows * vocab));
    auto* lp = static_cast<float*>(env.alloc(rows * 4));
    Env::check(realn_op_sample(env.stream(), REALN_DTYPE_F32, logits, rows, vocab, &o, tok, mask, lp));
    return {env.download(tok, rows), env.download(mask, rows * vocab), env.download(lp, rows)};
}

// The filtered distribution of one row in float64: kept set (ascending ids) and probabilities.
std::vector<std::pair<int32_t, double>> filtered(const float* x, int64_t vocab, double temp, int64_t k, double top_p) {
    std::vector<int32_t> idx(vocab);
    std::iota(idx.begin(), idx.end(), 0);
    std::stable_sort(idx.begin(), idx.end(), [&](int32_t a, int32_t b) { return x[a] > x[b]; });
    const int64_t n = (k > 0 && k < vocab) ? k : vocab;
    const double mx = x[idx[0]];
    std::vector<double> w(n);
    double sum = 0;
    for (int64_t i = 0; i < n; ++i) sum += (w[i] = std::exp((x[idx[i]] - mx) / temp));
    int64_t keep = n;
    if (top_p < 1.0) {
        double acc = 0;
        keep = 0;
        while (keep < n) {
            acc += w[keep++];
            if (acc >= top_p * sum) break;
        }
        sum = acc;
    }
    std::vector<std::pair<int32_t, double>> out;
    for (int64_t i = 0; i < keep; ++i) out.push_back({idx[i], w[i] / sum});
    std::sort(out.begin(), out.end());
    return out;
}

// One logits row repeated `rows` times: the tokens are `rows` independent draws from it.
Outcome sample_distribution_case(Env& env, int64_t vocab, float temp, int32_t k, float top_p) {
    Rng& r = env.rng();
    const int64_t rows = 4000;
    auto row = r.normal_vec(vocab, 1.5f);
    std::vector<float> x(rows * vocab);
    for (int64_t i = 0; i < rows; ++i) std::copy(row.begin(), row.end(), x.begin() + i * vocab);
    float* dx = env.upload(x);
    realn_sample_opts o = REALN_SAMPLE_OPTS_INIT;
    o.temperature = temp;
    o.top_k = k;
    o.top_p = top_p;
    o.seed = 1234;
    o.offset = 7;
    const auto a = run_sample(env, dx, rows, vocab, o);
    const auto b = run_sample(env, dx, rows, vocab, o);
    if (a.tok != b.tok) return {INFINITY, "same seed gave different tokens"};
    const auto f = filtered(row.data(), vocab, temp, k, top_p);
    o.offset = 8;
    const auto c = run_sample(env, dx, rows, vocab, o);
    if (f.size() > 1 && a.tok == c.tok) return {INFINITY, "a new offset repeated the same draws"};
    std::vector<double> prob(vocab, 0.0);
    for (auto [id, p] : f) prob[id] = p;
    // Mask and log-prob of every row; tokens inside the kept set.
    for (int64_t i = 0; i < rows; ++i) {
        const int32_t t = a.tok[i];
        if (t < 0 || t >= vocab || prob[t] == 0.0) return {INFINITY, "token " + std::to_string(t) + " outside the filtered set"};
        for (int64_t j = 0; j < vocab; ++j)
            if (a.mask[i * vocab + j] != (prob[j] > 0 ? 1 : 0)) return {INFINITY, "mask differs at token " + std::to_string(j)};
        if (std::fabs(a.logp[i] - std::log(prob[t])) > 1e-4 * std::max(1.0, std::fabs(std::log(prob[t]))))
            return {INFINITY, "logp differs for token " + std::to_string(t)};
    }
    // Chi-square over kept tokens (bins with expected < 5 merged into one).
    std::vector<double> count(vocab, 0.0);
    for (auto t : a.tok) count[t] += 1;
    double chi = 0, eo = 0, oo = 0;
    int bins = 0;
    for (auto [id, p] : f) {
        const double e = p * rows;
        if (e < 5) { eo += e; oo += count[id]; continue; }
        chi += (count[id] - e) * (count[id] - e) / e;
        ++bins;
    }
    if (eo > 0) { chi += (oo - eo) * (oo - eo) / std::max(eo, 1e-9); ++bins; }
    // Mean bins - 1, sd sqrt(2 (bins - 1)): 6 sd is a failure with probability < 1e-6.
    const double df = std::max(1, bins - 1), bound = df + 6 * std::sqrt(2 * df) + 10;
    return {chi <= bound ? 0.0 : INFINITY, "chi2=" + std::to_string(chi) + " bound=" + std::to_string(bound)};
}

Outcome sample_greedy_case(Env& env, int64_t rows, int64_t vocab) {
    Rng& r = env.rng();
    auto x = r.normal_vec(rows * vocab);
    // A tie in row 0: the lower index must win.
    if (vocab > 3) { x[2] = 9.0f; x[vocab - 1] = 9.0f; }
    realn_sample_opts o = REALN_SAMPLE_OPTS_INIT;
    o.temperature = 0.0f;
    const auto s = run_sample(env, env.upload(x), rows, vocab, o);
    Vec lp(rows);
    for (int64_t i = 0; i < rows; ++i) {
        const float* xr = &x[i * vocab];
        const int64_t arg = std::max_element(xr, xr + vocab) - xr;
        if (s.tok[i] != arg) return {INFINITY, "row " + std::to_string(i) + ": not the argmax"};
        double sum = 0;
        for (int64_t j = 0; j < vocab; ++j) sum += std::exp(double(xr[j]) - xr[arg]);
        lp[i] = -std::log(sum);
    }
    return {rel_err(s.logp, lp), ""};
}

Outcome gae_case(Env& env, std::vector<int32_t> lens, float gamma, float lambda) {
    Rng& r = env.rng();
    std::vector<int32_t> cu(lens.size() + 1, 0);
    for (size_t i = 0; i < lens.size(); ++i) cu[i + 1] = cu[i] + lens[i];
    const int64_t T = cu.back(), n = int64_t(lens.size());
    auto rw = r.normal_vec(T), vals = r.normal_vec(T + n);
    float* adv = env.upload(r.uniform_vec(T));
    float* ret = env.upload(r.uniform_vec(T));
    Env::check(realn_op_gae(env.stream(), env.upload(rw), env.upload(vals), cu.data(), n, gamma, lambda, adv, ret));
    Vec A(T), R(T);
    for (int64_t s = 0; s < n; ++s) {
        const int64_t vb = cu[s] + s;
        double next = 0;
        for (int64_t t = lens[s] - 1; t >= 0; --t) {
            const double delta = rw[cu[s] + t] + double(gamma) * vals[vb + t + 1] - vals[vb + t];
            next = delta + double(gamma) * lambda * next;
            A[cu[s] + t] = next;
            R[cu[s] + t] = next + vals[vb + t];
        }
    }
    return {worst({rel_err(env.download(adv, T), A), rel_err(env.download(ret, T), R)}), ""};
}

}  // namespace

REALN_TEST_CASES {
    for (auto [n, steps, wd, gs] : {std::tuple{1, 1, 0.0f, 1.0f}, std::tuple{1000, 3, 0.1f, 0.5f},
                                    std::tuple{300001, 2, 0.01f, 1.0f}}) {
        add_case({"adamw", concat_shape("n=", n, " steps=", steps, " wd=", wd, " grad_scale=", gs), kTolF32,
                  [=](Env& e) { return adamw_case(e, n, steps, wd, gs); }});
    }
    add_case({"adamw", "step=0 rejected", 0.0, [](Env& e) { return adamw_rejects_step0(e); }});
    add_case({"sample", "greedy rows=1 vocab=1", kTolF32, [](Env& e) { return sample_greedy_case(e, 1, 1); }});
    add_case({"sample", "greedy rows=37 vocab=50304", kTolF32, [](Env& e) { return sample_greedy_case(e, 37, 50304); }});
    struct S { int64_t vocab; float temp; int32_t k; float p; };
    for (S c : {S{20, 1.0f, 0, 1.0f}, S{20, 0.7f, 5, 1.0f}, S{30, 1.3f, 0, 0.8f}, S{40, 1.0f, 10, 0.9f}, S{2, 1.0f, 1, 1.0f}}) {
        add_case({"sample", concat_shape("rows=4000 vocab=", c.vocab, " T=", c.temp, " top_k=", c.k, " top_p=", c.p), 0.0,
                  [=](Env& e) { return sample_distribution_case(e, c.vocab, c.temp, c.k, c.p); }});
    }
    for (auto [lens, g, l] : {std::tuple{std::vector<int32_t>{1}, 1.0f, 1.0f}, std::tuple{std::vector<int32_t>{5, 1, 9, 2}, 0.99f, 0.95f},
                              std::tuple{std::vector<int32_t>(200, 17), 1.0f, 0.9f}}) {
        std::string s = "nseq=" + std::to_string(lens.size()) + " len0=" + std::to_string(lens[0]);
        add_case({"gae", concat_shape(s, " gamma=", g, " lambda=", l), kTolF32,
                  [=](Env& e) { return gae_case(e, lens, g, l); }});
    }
}

}  // namespace realn::testing
