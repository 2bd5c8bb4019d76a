// Cases: packed varlen causal attention with grouped-query heads (forward against a float64
// reference, backward against central finite differences of it), the KV-cache store (bit-exact
// placement), and decode attention (equals the last row of full causal attention over the cached
// prefix, which is how generation uses it).
#include <algorithm>
#include <cmath>

#include "harness.hpp"

namespace realn::testing {
namespace {

using Vec = std::vector<double>;

std::vector<int32_t> cu_from(const std::vector<int32_t>& lens) {
    std::vector<int32_t> cu(lens.size() + 1, 0);
    for (size_t i = 0; i < lens.size(); ++i) cu[i + 1] = cu[i] + lens[i];
    return cu;
}

// out[t, h, :] for every packed token; lse[t, h].
void attention_ref(const Vec& q, const Vec& k, const Vec& v, const std::vector<int32_t>& cu, int64_t hq,
                   int64_t hkv, int64_t d, double scale, Vec& out, Vec* lse) {
    const int64_t group = hq / hkv;
    out.assign(static_cast<size_t>(cu.back() * hq * d), 0.0);
    if (lse) lse->assign(static_cast<size_t>(cu.back() * hq), 0.0);
    std::vector<double> s;
    for (size_t sq = 0; sq + 1 < cu.size(); ++sq) {
        const int64_t a = cu[sq], L = cu[sq + 1] - a;
        for (int64_t h = 0; h < hq; ++h) {
            const int64_t g = h / group;
            for (int64_t i = 0; i < L; ++i) {
                s.assign(static_cast<size_t>(i + 1), 0.0);
                double mx = -INFINITY;
                for (int64_t j = 0; j <= i; ++j) {
                    double dot = 0;
                    for (int64_t x = 0; x < d; ++x) dot += q[((a + i) * hq + h) * d + x] * k[((a + j) * hkv + g) * d + x];
                    s[j] = dot * scale;
                    mx = std::max(mx, s[j]);
                }
                double sum = 0;
                for (auto& e : s) sum += std::exp(e - mx);
                for (int64_t j = 0; j <= i; ++j) {
                    const double p = std::exp(s[j] - mx) / sum;
                    for (int64_t x = 0; x < d; ++x) out[((a + i) * hq + h) * d + x] += p * v[((a + j) * hkv + g) * d + x];
                }
                if (lse) (*lse)[(a + i) * hq + h] = mx + std::log(sum);
            }
        }
    }
}

Outcome attention_fwd_case(Env& env, std::vector<int32_t> lens, int64_t hq, int64_t hkv, int64_t d) {
    Rng& r = env.rng();
    const auto cu = cu_from(lens);
    const int64_t T = cu.back();
    auto q = r.normal_vec(T * hq * d), k = r.normal_vec(T * hkv * d), v = r.normal_vec(T * hkv * d);
    const float scale = 1.0f / std::sqrt(float(d));
    float* out = static_cast<float*>(env.alloc(T * hq * d * 4));
    float* lse = static_cast<float*>(env.alloc(T * hq * 4));
    Env::check(realn_op_attention_fwd(env.stream(), REALN_DTYPE_F32, env.upload(q), env.upload(k), env.upload(v),
                                      cu.data(), int64_t(lens.size()), T, hq, hkv, d, scale, out, lse));
    Vec ro, rl;
    attention_ref(to_double(q), to_double(k), to_double(v), cu, hq, hkv, d, scale, ro, &rl);
    return {worst({rel_err(env.download(out, T * hq * d), ro), rel_err(env.download(lse, T * hq), rl)}), ""};
}

// Loss = sum(out * G); gradients by central differences of the float64 forward.
Outcome attention_bwd_case(Env& env, std::vector<int32_t> lens, int64_t hq, int64_t hkv, int64_t d) {
    Rng& r = env.rng();
    const auto cu = cu_from(lens);
    const int64_t T = cu.back();
    auto q = r.normal_vec(T * hq * d), k = r.normal_vec(T * hkv * d), v = r.normal_vec(T * hkv * d);
    auto G = r.uniform_vec(T * hq * d);
    const float scale = 1.0f / std::sqrt(float(d));
    float *dq_ = env.upload(q), *dk_ = env.upload(k), *dv_ = env.upload(v);
    float* out = static_cast<float*>(env.alloc(T * hq * d * 4));
    float* lse = static_cast<float*>(env.alloc(T * hq * 4));
    Env::check(realn_op_attention_fwd(env.stream(), REALN_DTYPE_F32, dq_, dk_, dv_, cu.data(), int64_t(lens.size()),
                                      T, hq, hkv, d, scale, out, lse));
    // Gradient outputs start as garbage: the op must overwrite them.
    float* gq = env.upload(r.uniform_vec(T * hq * d));
    float* gk = env.upload(r.uniform_vec(T * hkv * d));
    float* gv = env.upload(r.uniform_vec(T * hkv * d));
    Env::check(realn_op_attention_bwd(env.stream(), REALN_DTYPE_F32, dq_, dk_, dv_, out, lse, env.upload(G), cu.data(),
                                      int64_t(lens.size()), T, hq, hkv, d, scale, gq, gk, gv));
    Vec Q = to_double(q), K = to_double(k), V = to_double(v), Gd = to_double(G), o;
    auto loss = [&] {
        attention_ref(Q, K, V, cu, hq, hkv, d, scale, o, nullptr);
        double s = 0;
        for (size_t i = 0; i < o.size(); ++i) s += o[i] * Gd[i];
        return s;
    };
    auto fd = [&](Vec& x) {
        Vec g(x.size());
        for (size_t i = 0; i < x.size(); ++i) {
            const double xi = x[i];
            x[i] = xi + 1e-5;
            const double fp = loss();
            x[i] = xi - 1e-5;
            const double fm = loss();
            x[i] = xi;
            g[i] = (fp - fm) / 2e-5;
        }
        return g;
    };
    return {worst({rel_err(env.download(gq, T * hq * d), fd(Q)), rel_err(env.download(gk, T * hkv * d), fd(K)),
                   rel_err(env.download(gv, T * hkv * d), fd(V))}), ""};
}

// Stores tokens at (slot, position) pairs in random order; every other cache entry untouched.
Outcome kv_store_case(Env& env, int64_t slots, int64_t max_len, int64_t hkv, int64_t d, int64_t tokens) {
    Rng& r = env.rng();
    const int64_t row = hkv * d, cache = slots * max_len * row;
    auto k = r.uniform_vec(tokens * row), v = r.uniform_vec(tokens * row);
    auto kc0 = r.uniform_vec(cache), vc0 = r.uniform_vec(cache);
    // Distinct (slot, pos) targets.
    std::vector<int32_t> all(static_cast<size_t>(slots * max_len));
    for (size_t i = 0; i < all.size(); ++i) all[i] = int32_t(i);
    for (size_t i = all.size() - 1; i > 0; --i) std::swap(all[i], all[size_t(r.integer(0, int32_t(i)))]);
    std::vector<int32_t> sl(tokens), pos(tokens);
    for (int64_t t = 0; t < tokens; ++t) { sl[t] = all[t] / int32_t(max_len); pos[t] = all[t] % int32_t(max_len); }
    float *kc = env.upload(kc0), *vc = env.upload(vc0);
    Env::check(realn_op_kv_store(env.stream(), REALN_DTYPE_F32, env.upload(k), env.upload(v), sl.data(), pos.data(),
                                 tokens, kc, vc, slots, max_len, hkv, d));
    auto ek = kc0, ev = vc0;
    for (int64_t t = 0; t < tokens; ++t)
        for (int64_t x = 0; x < row; ++x) {
            ek[(sl[t] * max_len + pos[t]) * row + x] = k[t * row + x];
            ev[(sl[t] * max_len + pos[t]) * row + x] = v[t * row + x];
        }
    const bool same = env.download(kc, cache) == ek && env.download(vc, cache) == ev;
    return {same ? 0.0 : INFINITY, same ? "" : "cache contents differ"};
}

// Sequences of random lengths prefilled into random slots (through kv_store); the decode query
// of each is compared with the last row of full causal attention over its prefix.
Outcome decode_case(Env& env, std::vector<int32_t> lens, int64_t hq, int64_t hkv, int64_t d, int64_t max_len) {
    Rng& r = env.rng();
    const int64_t B = int64_t(lens.size()), slots = B + 2, row = hkv * d;
    std::vector<int32_t> slot_of(B);
    for (int64_t b = 0; b < B; ++b) slot_of[b] = int32_t(slots - 1 - ((b * 2) % slots + (b * 2 >= slots)));  // distinct, shuffled
    const auto cu = cu_from(lens);
    const int64_t T = cu.back();
    auto q = r.normal_vec(T * hq * d), k = r.normal_vec(T * row), v = r.normal_vec(T * row);
    std::vector<int32_t> tok_slot(T), tok_pos(T);
    for (int64_t b = 0; b < B; ++b)
        for (int32_t i = 0; i < lens[b]; ++i) { tok_slot[cu[b] + i] = slot_of[b]; tok_pos[cu[b] + i] = i; }
    float* kc = env.upload(r.uniform_vec(slots * max_len * row));
    float* vc = env.upload(r.uniform_vec(slots * max_len * row));
    Env::check(realn_op_kv_store(env.stream(), REALN_DTYPE_F32, env.upload(k), env.upload(v), tok_slot.data(),
                                 tok_pos.data(), T, kc, vc, slots, max_len, hkv, d));
    std::vector<float> qlast(B * hq * d);
    for (int64_t b = 0; b < B; ++b)
        std::copy_n(&q[(cu[b + 1] - 1) * hq * d], hq * d, &qlast[b * hq * d]);
    const float scale = 1.0f / std::sqrt(float(d));
    float* out = static_cast<float*>(env.alloc(B * hq * d * 4));
    Env::check(realn_op_attention_decode(env.stream(), REALN_DTYPE_F32, env.upload(qlast), kc, vc, slot_of.data(),
                                         lens.data(), B, slots, max_len, hq, hkv, d, scale, out));
    Vec ro;
    attention_ref(to_double(q), to_double(k), to_double(v), cu, hq, hkv, d, scale, ro, nullptr);
    Vec expect(B * hq * d);
    for (int64_t b = 0; b < B; ++b)
        std::copy_n(&ro[(cu[b + 1] - 1) * hq * d], hq * d, &expect[b * hq * d]);
    return {rel_err(env.download(out, B * hq * d), expect), ""};
}

Outcome attention_rejects_bad_groups(Env& env) {
    std::vector<int32_t> cu{0, 2};
    std::vector<float> x(2 * 3 * 4, 0.5f);
    float* p = env.upload(x);
    float* o = static_cast<float*>(env.alloc(2 * 3 * 4 * 4));
    const realn_status st = realn_op_attention_fwd(env.stream(), REALN_DTYPE_F32, p, p, p, cu.data(), 1, 2, 3, 2, 4,
                                                   0.5f, o, nullptr);
    if (st == REALN_ERR_INVALID_ARGUMENT) return {0.0, ""};
    return {INFINITY, std::string("hq=3 hkv=2 accepted: ") + realn_status_string(st)};
}

std::string lens_str(const std::vector<int32_t>& lens) {
    std::string s = "lens=[";
    for (size_t i = 0; i < lens.size(); ++i) s += (i ? "," : "") + std::to_string(lens[i]);
    return s + "]";
}

}  // namespace

REALN_TEST_CASES {
    struct A { std::vector<int32_t> lens; int64_t hq, hkv, d; };
    for (const A& c : {A{{1}, 1, 1, 4}, A{{5, 1, 3}, 2, 1, 16}, A{{7, 2, 11, 1}, 4, 2, 16}, A{{64, 64, 64, 64}, 12, 12, 64},
                       A{{130, 3, 77}, 8, 2, 64}, A{{300}, 4, 1, 32}}) {
        add_case({"attention_fwd", concat_shape(lens_str(c.lens), " hq=", c.hq, " hkv=", c.hkv, " d=", c.d), kTolF32,
                  [=](Env& e) { return attention_fwd_case(e, c.lens, c.hq, c.hkv, c.d); }});
    }
    add_case({"attention_fwd", "hq=3 hkv=2 rejected", 0.0, [](Env& e) { return attention_rejects_bad_groups(e); }});
    for (const A& c : {A{{1}, 1, 1, 3}, A{{4, 1, 3}, 2, 1, 4}, A{{5, 2}, 4, 2, 4}, A{{6, 1, 2}, 4, 1, 8}}) {
        add_case({"attention_bwd", concat_shape(lens_str(c.lens), " hq=", c.hq, " hkv=", c.hkv, " d=", c.d), kTolGrad,
                  [=](Env& e) { return attention_bwd_case(e, c.lens, c.hq, c.hkv, c.d); }});
    }
    struct K { int64_t slots, max_len, hkv, d, tokens; };
    for (K c : {K{1, 1, 1, 1, 1}, K{3, 8, 2, 4, 13}, K{8, 64, 4, 64, 300}}) {
        add_case({"kv_store", concat_shape("slots=", c.slots, " max_len=", c.max_len, " hkv=", c.hkv, " d=", c.d, " tokens=", c.tokens),
                  0.0, [=](Env& e) { return kv_store_case(e, c.slots, c.max_len, c.hkv, c.d, c.tokens); }});
    }
    struct D { std::vector<int32_t> lens; int64_t hq, hkv, d, max_len; };
    for (const D& c : {D{{1}, 1, 1, 4, 1}, D{{3, 1, 9}, 4, 2, 16, 12}, D{{40, 17, 64, 5}, 12, 4, 64, 64}, D{{100, 7}, 8, 1, 32, 128}}) {
        add_case({"attention_decode", concat_shape(lens_str(c.lens), " hq=", c.hq, " hkv=", c.hkv, " d=", c.d, " max_len=", c.max_len),
                  kTolF32, [=](Env& e) { return decode_case(e, c.lens, c.hq, c.hkv, c.d, c.max_len); }});
    }
}

}  // namespace realn::testing
