// Cases: AdamW (several steps, bias correction from step 1 and from a resumed step, weight
// decay, grad scale), sampling (greedy = argmax, top-k / top-p support, filtered log-probs and
// masks, chi-square goodness of fit of the empirical token distribution, seed reproducibility
// across thread counts) and GAE over ragged packed sequences (lengths 0 and 1 included).
#include <omp.h>

#include <algorithm>
#include <numeric>

#include "harness.hpp"

namespace realn::testing {
namespace {

// ---- adamw -------------------------------------------------------------------------------------
Outcome adamw_case(Env& env, int64_t n, int64_t first_step, int steps, float wd, float gscale) {
    Rng& r = env.rng();
    auto p = r.uniform_vec(n), m = r.uniform_vec(n, -0.1f, 0.1f), v = r.uniform_vec(n, 0.0f, 0.01f);
    if (first_step == 1) std::fill(m.begin(), m.end(), 0.0f), std::fill(v.begin(), v.end(), 0.0f);
    float* dp = env.upload(p);
    float* dm = env.upload(m);
    float* dv = env.upload(v);
    auto P = to_double(p), M = to_double(m), V = to_double(v);
    realn_adamw_opts o = REALN_ADAMW_OPTS_INIT;
    o.lr = 1e-2f, o.beta1 = 0.9f, o.beta2 = 0.95f, o.eps = 1e-6f, o.weight_decay = wd;
    o.grad_scale = gscale;
    for (int s = 0; s < steps; ++s) {
        auto g = r.normal_vec(n);
        o.step = first_step + s;
        Env::check(realn_op_adamw(env.stream(), &o, dp, env.upload(g), dm, dv, n));
        const double b1 = o.beta1, b2 = o.beta2, t = double(o.step);
        const double bc1 = 1 - std::pow(b1, t), bc2 = 1 - std::pow(b2, t);
        for (int64_t i = 0; i < n; ++i) {
            const double gi = double(g[i]) * gscale;
            M[i] = b1 * M[i] + (1 - b1) * gi;
            V[i] = b2 * V[i] + (1 - b2) * gi * gi;
            P[i] = P[i] - double(o.lr) * (M[i] / bc1) / (std::sqrt(V[i] / bc2) + double(o.eps)) -
                   double(o.lr) * double(wd) * P[i];
        }
    }
    // Bad options are refused with a status, never applied.
    realn_adamw_opts bad = o;
    bad.step = 0;
    const bool refused = realn_op_adamw(env.stream(), &bad, dp, dm, dm, dv, n) != REALN_OK;
    double err = worst({rel_err(env.download(dp, n), P), rel_err(env.download(dm, n), M),
                        rel_err(env.download(dv, n), V)});
    if (!refused) return {INFINITY, "step=0 was accepted"};
    return {err, ""};
}

// ---- gae ---------------------------------------------------------------------------------------
Outcome gae_case(Env& env, std::vector<int32_t> lens, float gamma, float lambda) {
    Rng& r = env.rng();
    const int64_t nseq = static_cast<int64_t>(lens.size());
    std::vector<int32_t> cu(nseq + 1, 0);
    for (int64_t i = 0; i < nseq; ++i) cu[i + 1] = cu[i] + lens[i];
    const int64_t T = cu[nseq];
    auto rew = r.uniform_vec(T), val = r.uniform_vec(T + nseq);
    float* da = static_cast<float*>(env.alloc(std::max<int64_t>(T, 1) * 4));
    float* dr = static_cast<float*>(env.alloc(std::max<int64_t>(T, 1) * 4));
    Env::check(realn_op_gae(env.stream(), env.upload(rew), env.upload(val), cu.data(), nseq, gamma,
                            lambda, da, dr));
    std::vector<double> A(T), R(T);
    for (int64_t s = 0; s < nseq; ++s) {
        double next_adv = 0;
        for (int64_t t = cu[s + 1] - 1; t >= cu[s]; --t) {
            const int64_t vi = t + s;  // value index of step t; vi + 1 is the next (or bootstrap)
            const double delta = double(rew[t]) + double(gamma) * val[vi + 1] - double(val[vi]);
            next_adv = delta + double(gamma) * double(lambda) * next_adv;
            A[t] = next_adv;
            R[t] = next_adv + double(val[vi]);
        }
    }
    // Decreasing offsets are refused with a status.
    if (nseq >= 2) {
        std::vector<int32_t> bad = cu;
        std::swap(bad[1], bad[2]);
        if (bad[1] != bad[2] && realn_op_gae(env.stream(), env.upload(rew), env.upload(val), bad.data(), nseq,
                                             gamma, lambda, da, dr) == REALN_OK)
            return {INFINITY, "decreasing cu_seqlens accepted"};
        Env::check(realn_op_gae(env.stream(), env.upload(rew), env.upload(val), cu.data(), nseq, gamma,
                                lambda, da, dr));
    }
    return {worst({rel_err(env.download(da, T), A), rel_err(env.download(dr, T), R)}), ""};
}

// ---- sample ------------------------------------------------------------------------------------
// Float64 reference of one row: the kept set (ordered by prob desc, index asc) and the
// normalised filtered probabilities, as realn.h specifies.
struct RowRef {
    std::vector<int32_t> kept;
    std::vector<double> prob;  // [vocab], 0 outside the kept set
};
RowRef row_ref(const float* x, int64_t vocab, float temp, int32_t k, float p) {
    const double mx = *std::max_element(x, x + vocab);
    std::vector<double> e(vocab);
    for (int64_t i = 0; i < vocab; ++i) e[i] = std::exp((double(x[i]) - mx) / double(temp));
    std::vector<int32_t> ord(vocab);
    std::iota(ord.begin(), ord.end(), 0);
    std::stable_sort(ord.begin(), ord.end(), [&](int32_t a, int32_t b) { return e[a] > e[b]; });
    int64_t kept = (k > 0 && k < vocab) ? k : vocab;
    double mass = 0;
    for (int64_t j = 0; j < kept; ++j) mass += e[ord[j]];
    if (p < 1.0f) {
        double c = 0;
        int64_t j = 0;
        while (j < kept) {
            c += e[ord[j++]];
            if (c >= double(p) * mass) break;
        }
        kept = j;
        mass = c;
    }
    RowRef rr;
    rr.kept.assign(ord.begin(), ord.begin() + kept);
    rr.prob.assign(vocab, 0.0);
    for (int32_t t : rr.kept) rr.prob[t] = e[t] / mass;
    return rr;
}

struct SampleOut {
    std::vector<int32_t> tokens;
    std::vector<uint8_t> mask;
    std::vector<float> logp;
};
SampleOut run_sample(Env& env, const float* dlogits, int64_t rows, int64_t vocab,
                     const realn_sample_opts& o) {
    int32_t* dt = static_cast<int32_t*>(env.alloc(rows * 4));
    uint8_t* dmask = static_cast<uint8_t*>(env.alloc(rows * vocab));
    float* dlp = static_cast<float*>(env.alloc(rows * 4));
    Env::check(realn_op_sample(env.stream(), REALN_DTYPE_F32, dlogits, rows, vocab, &o, dt, dmask, dlp));
    return {env.download(dt, rows), env.download(dmask, rows * vocab), env.download(dlp, rows)};
}

// Filtering / greedy: every token inside the reference support, mask equal to the support,
// logp equal to the reference log-probability of the emitted token.
Outcome sample_support_case(Env& env, int64_t rows, int64_t vocab, float temp, int32_t k, float p) {
    auto x = env.rng().normal_vec(rows * vocab, 2.0f);
    realn_sample_opts o = REALN_SAMPLE_OPTS_INIT;
    o.temperature = temp, o.top_k = k, o.top_p = p, o.seed = 1234, o.offset = 7;
    auto out = run_sample(env, env.upload(x), rows, vocab, o);
    std::vector<double> ref_lp(rows);
    for (int64_t r = 0; r < rows; ++r) {
        const float* xr = x.data() + r * vocab;
        const int32_t tok = out.tokens[r];
        if (tok < 0 || tok >= vocab) return {INFINITY, concat_shape("row ", r, ": token ", tok, " out of range")};
        if (temp == 0.0f) {
            const int64_t am = std::max_element(xr, xr + vocab) - xr;  // first maximum
            if (tok != am) return {INFINITY, concat_shape("row ", r, ": greedy ", tok, " != argmax ", am)};
            const double mx = xr[am];
            double s = 0;
            for (int64_t i = 0; i < vocab; ++i) s += std::exp(double(xr[i]) - mx);
            ref_lp[r] = double(xr[tok]) - mx - std::log(s);
            for (int64_t i = 0; i < vocab; ++i)
                if (out.mask[r * vocab + i] != 1) return {INFINITY, "greedy mask not all ones"};
            continue;
        }
        RowRef rr = row_ref(xr, vocab, temp, k, p);
        if (rr.prob[tok] == 0.0)
            return {INFINITY, concat_shape("row ", r, ": token ", tok, " outside the top-k/top-p set")};
        for (int64_t i = 0; i < vocab; ++i)
            if (out.mask[r * vocab + i] != (rr.prob[i] > 0 ? 1 : 0))
                return {INFINITY, concat_shape("row ", r, ": mask differs at ", i)};
        ref_lp[r] = std::log(rr.prob[tok]);
    }
    return {rel_err(out.logp, ref_lp), ""};
}

// Chi-square goodness of fit: one logits row repeated `rows` times; the empirical distribution of
// tokens against the reference filtered, tempered softmax. The error reported is chi2 / bound
// (the bound is far above the 1e-6 quantile for df <= 15, so a correct sampler never fails;
// the seed is fixed, so the outcome is reproducible).
Outcome sample_chi2_case(Env& env, int64_t rows, int64_t vocab, float temp, int32_t k, float p) {
    auto row = env.rng().normal_vec(vocab, 1.0f);
    std::vector<float> x(rows * vocab);
    for (int64_t r = 0; r < rows; ++r) std::copy(row.begin(), row.end(), x.begin() + r * vocab);
    realn_sample_opts o = REALN_SAMPLE_OPTS_INIT;
    o.temperature = temp, o.top_k = k, o.top_p = p, o.seed = 42, o.offset = 3;
    auto out = run_sample(env, env.upload(x), rows, vocab, o);
    RowRef rr = row_ref(row.data(), vocab, temp, k, p);
    std::vector<double> count(vocab, 0.0);
    for (int32_t t : out.tokens) {
        if (t < 0 || t >= vocab || rr.prob[t] == 0.0)
            return {INFINITY, concat_shape("token ", t, " outside the kept set")};
        count[t] += 1;
    }
    double chi2 = 0;
    for (int32_t t : rr.kept) {
        const double e = rr.prob[t] * double(rows);
        chi2 += (count[t] - e) * (count[t] - e) / e;
    }
    const double df = double(rr.kept.size()) - 1;
    const double bound = 3.0 * df + 30.0;  // > chi2 quantile 1-1e-6 for df in [1, 15]
    return {chi2 / bound, concat_shape("chi2=", chi2, " df=", df, " bound=", bound)};
}

// Same seed and offset -> identical tokens on 1 thread and on all threads; another offset draws
// different numbers.
Outcome sample_repro_case(Env& env, int64_t rows, int64_t vocab, float temp, int32_t k, float p) {
    auto x = env.rng().normal_vec(rows * vocab, 1.0f);
    const float* dx = env.upload(x);
    realn_sample_opts o = REALN_SAMPLE_OPTS_INIT;
    o.temperature = temp, o.top_k = k, o.top_p = p, o.seed = 99, o.offset = 0;
    const int threads = omp_get_max_threads();
    auto a = run_sample(env, dx, rows, vocab, o);
    omp_set_num_threads(1);
    SampleOut b;
    try {
        b = run_sample(env, dx, rows, vocab, o);
    } catch (...) {
        omp_set_num_threads(threads);
        throw;
    }
    omp_set_num_threads(threads);
    if (a.tokens != b.tokens || a.mask != b.mask || a.logp != b.logp)
        return {INFINITY, "tokens differ between thread counts for the same seed"};
    auto c = run_sample(env, dx, rows, vocab, o);
    if (a.tokens != c.tokens) return {INFINITY, "tokens differ between two runs with the same seed"};
    realn_sample_opts bad = o;
    bad.top_p = 0.0f;
    int32_t tok = 0;
    if (realn_op_sample(env.stream(), REALN_DTYPE_F32, dx, 1, vocab, &bad, &tok, nullptr, nullptr) == REALN_OK)
        return {INFINITY, "top_p=0 accepted"};
    o.offset = 1;
    auto d = run_sample(env, dx, rows, vocab, o);
    int64_t same = 0;
    for (int64_t r = 0; r < rows; ++r) same += a.tokens[r] == d.tokens[r];
    if (same == rows) return {INFINITY, "another offset drew the same tokens"};
    return {0.0, concat_shape("threads=", threads, " same tokens at offset+1: ", same, "/", rows)};
}

}  // namespace

void add_optim_cases() {
    // adamw: from step 1 (fresh state), resumed at step 1000, several steps each.
    add_case({"adamw", "n=1000 steps 1..3 wd=0.1", 1e-5,
              [](Env& e) { return adamw_case(e, 1000, 1, 3, 0.1f, 1.0f); }});
    add_case({"adamw", "n=100003 steps 1..4 wd=0.01 gscale=0.5", 1e-5,
              [](Env& e) { return adamw_case(e, 100003, 1, 4, 0.01f, 0.5f); }});
    add_case({"adamw", "n=4097 steps 1000..1002 wd=0.1", 1e-5,
              [](Env& e) { return adamw_case(e, 4097, 1000, 3, 0.1f, 2.0f); }});

    // sample
    add_case({"sample", "greedy rows=64 vocab=1000", kTolF32,
              [](Env& e) { return sample_support_case(e, 64, 1000, 0.0f, 0, 1.0f); }});
    add_case({"sample", "T=0.8 top_k=10 rows=256 vocab=500", kTolF32,
              [](Env& e) { return sample_support_case(e, 256, 500, 0.8f, 10, 1.0f); }});
    add_case({"sample", "T=1.2 top_p=0.7 rows=256 vocab=300", kTolF32,
              [](Env& e) { return sample_support_case(e, 256, 300, 1.2f, 0, 0.7f); }});
    add_case({"sample", "T=0.7 top_k=40 top_p=0.9 rows=128 vocab=777", kTolF32,
              [](Env& e) { return sample_support_case(e, 128, 777, 0.7f, 40, 0.9f); }});
    add_case({"sample", "T=1 rows=64 vocab=257 unfiltered", kTolF32,
              [](Env& e) { return sample_support_case(e, 64, 257, 1.0f, 0, 1.0f); }});
    add_case({"sample", "chi2 T=1.3 rows=20000 vocab=12", 1.0,
              [](Env& e) { return sample_chi2_case(e, 20000, 12, 1.3f, 0, 1.0f); }});
    add_case({"sample", "chi2 T=0.7 top_k=6 rows=20000 vocab=16", 1.0,
              [](Env& e) { return sample_chi2_case(e, 20000, 16, 0.7f, 6, 1.0f); }});
    add_case({"sample", "chi2 T=1 top_p=0.8 rows=20000 vocab=16", 1.0,
              [](Env& e) { return sample_chi2_case(e, 20000, 16, 1.0f, 0, 0.8f); }});
    add_case({"sample", "repro T=0.9 top_k=50 top_p=0.95 rows=512 vocab=256", 0.0,
              [](Env& e) { return sample_repro_case(e, 512, 256, 0.9f, 50, 0.95f); }});

    // gae: ragged, with lengths 1 and 0; many sequences; gamma = lambda = 1; over 2^20 tokens (the
    // parallel path: smaller batches run on one thread, cpu/gae.cpp).
    add_case({"gae", "lens={1,5,0,37,1,200} g=0.99 l=0.95", kTolF32,
              [](Env& e) { return gae_case(e, {1, 5, 0, 37, 1, 200}, 0.99f, 0.95f); }});
    add_case({"gae", "nseq=300 lens 1..60 g=1 l=1", kTolF32, [](Env& e) {
                  std::vector<int32_t> lens(300);
                  for (auto& l : lens) l = e.rng().integer(1, 60);
                  return gae_case(e, lens, 1.0f, 1.0f);
              }});
    add_case({"gae", "nseq=4400 lens 1..511 (>= 2^20 tokens: parallel) g=0.99 l=0.95", kTolF32, [](Env& e) {
                  std::vector<int32_t> lens(4400);
                  for (auto& l : lens) l = e.rng().integer(1, 511);
                  return gae_case(e, lens, 0.99f, 0.95f);
              }});
    add_case({"gae", "single step nseq=1 g=0.9 l=0.5", kTolF32,
              [](Env& e) { return gae_case(e, {1}, 0.9f, 0.5f); }});
}

}  // namespace realn::testing
