// Cases: packed causal attention (forward against a float64 reference; backward against central
// finite differences of that reference), the KV-cache store (bit-exact) and decode attention
// (the last token's decode equals the last row of full causal attention over its sequence), and
// the same for a bf16 cache: stored rows bit for bit the nearest-even bf16 of the inputs, decode
// (AVX-512 and scalar kernels) against the float64 reference of the bf16-rounded K/V with the fp32
// tolerance and against that of the unrounded K/V with a bf16 tolerance.
// Finite differences are local: perturbing q[t, h] changes only row (t, h); perturbing k/v[t, g]
// changes only rows >= t of t's sequence in the query heads of group g. So each derivative costs
// one sequence-sized forward, and long shapes check a random sample of coordinates.
#include <algorithm>
#include <chrono>
#include <cstring>
#include <numeric>

#include "../cpu/cpu_ops.hpp"
#include "../cpu/kv_cache.hpp"
#include "harness.hpp"

namespace realn::testing {
namespace {

struct Attn {
    std::vector<int32_t> cu;  // cu_seqlens
    int64_t hq, hkv, d;
    int64_t nseq() const { return static_cast<int64_t>(cu.size()) - 1; }
    int64_t total() const { return cu.back(); }
    double scale() const { return 1.0 / std::sqrt(double(d)); }
};

Attn make_attn(const std::vector<int>& lens, int64_t hq, int64_t hkv, int64_t d) {
    Attn a{{0}, hq, hkv, d};
    for (int l : lens) a.cu.push_back(a.cu.back() + l);
    return a;
}

std::string attn_shape(const Attn& a) {
    std::ostringstream os;
    os << "lens=";
    for (int64_t s = 0; s < a.nseq(); ++s) os << (s ? "," : "") << a.cu[s + 1] - a.cu[s];
    os << " hq=" << a.hq << " hkv=" << a.hkv << " d=" << a.d;
    return os.str();
}

// float64 causal attention of query row t (head h) over keys [base, t]; writes o[d], returns lse.
double ref_row(const Attn& a, const std::vector<double>& Q, const std::vector<double>& K,
               const std::vector<double>& V, int64_t base, int64_t t, int64_t h, double* o) {
    const int64_t d = a.d, g = h / (a.hq / a.hkv);
    const double* q = &Q[(t * a.hq + h) * d];
    std::vector<double> sc(static_cast<size_t>(t - base + 1));
    double m = -INFINITY;
    for (int64_t j = base; j <= t; ++j) {
        const double* k = &K[(j * a.hkv + g) * d];
        double acc = 0;
        for (int64_t c = 0; c < d; ++c) acc += q[c] * k[c];
        sc[j - base] = acc * a.scale();
        m = std::max(m, sc[j - base]);
    }
    double sum = 0;
    for (double& s : sc) sum += (s = std::exp(s - m));
    for (int64_t c = 0; c < d; ++c) o[c] = 0;
    for (int64_t j = base; j <= t; ++j) {
        const double* v = &V[(j * a.hkv + g) * d];
        const double p = sc[j - base] / sum;
        for (int64_t c = 0; c < d; ++c) o[c] += p * v[c];
    }
    return m + std::log(sum);
}

void ref_fwd(const Attn& a, const std::vector<double>& Q, const std::vector<double>& K,
             const std::vector<double>& V, std::vector<double>& out, std::vector<double>& lse) {
    out.assign(static_cast<size_t>(a.total() * a.hq * a.d), 0.0);
    lse.assign(static_cast<size_t>(a.total() * a.hq), 0.0);
    for (int64_t s = 0; s < a.nseq(); ++s)
        for (int64_t t = a.cu[s]; t < a.cu[s + 1]; ++t)
            for (int64_t h = 0; h < a.hq; ++h)
                lse[t * a.hq + h] = ref_row(a, Q, K, V, a.cu[s], t, h, &out[(t * a.hq + h) * a.d]);
}

struct Inputs {
    std::vector<float> q, k, v;
};

// Scores of a few units: peaked but not one-hot softmax rows.
Inputs draw(Rng& r, const Attn& a) {
    return {r.normal_vec(a.total() * a.hq * a.d, 1.5f), r.normal_vec(a.total() * a.hkv * a.d, 1.5f),
            r.uniform_vec(a.total() * a.hkv * a.d)};
}

// Multiply-adds x 2 of causal attention (QK^T and PV over key <= query), per forward.
double causal_flops(const Attn& a) {
    double pairs = 0;
    for (int64_t s = 0; s < a.nseq(); ++s) {
        const double l = a.cu[s + 1] - a.cu[s];
        pairs += l * (l + 1) / 2;
    }
    return 4.0 * pairs * double(a.hq) * double(a.d);
}

double ms_since(std::chrono::steady_clock::time_point t0) {
    return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
}

// Expect an invalid-argument status; returns "" if so, else a description.
std::string expect_invalid(realn_status st, const char* what) {
    if (st == REALN_ERR_INVALID_ARGUMENT) return "";
    return std::string(what) + " was not rejected (" + realn_status_string(st) + ")";
}

Outcome attention_fwd_case(Env& env, const Attn& a, bool timing, bool probe_errors) {
    Inputs in = draw(env.rng(), a);
    const int64_t T = a.total();
    float* dq = env.upload(in.q);
    float* dk = env.upload(in.k);
    float* dv = env.upload(in.v);
    auto* dout = static_cast<float*>(env.alloc(T * a.hq * a.d * 4));
    auto* dlse = static_cast<float*>(env.alloc(T * a.hq * 4));
    const float scale = static_cast<float>(a.scale());
    Env::check(realn_op_attention_fwd(env.stream(), REALN_DTYPE_F32, dq, dk, dv, a.cu.data(),
                                      a.nseq(), T, a.hq, a.hkv, a.d, scale, dout, dlse));
    auto out = env.download(dout, T * a.hq * a.d);
    auto lse = env.download(dlse, T * a.hq);
    std::vector<double> rout, rlse;
    ref_fwd(a, to_double(in.q), to_double(in.k), to_double(in.v), rout, rlse);
    Outcome o{worst({rel_err(out, rout), rel_err(lse, rlse)}), ""};
    if (probe_errors) {
        std::string bad = expect_invalid(
            realn_op_attention_fwd(env.stream(), REALN_DTYPE_F32, dq, dk, dv, a.cu.data(), a.nseq(),
                                   T + 1, a.hq, a.hkv, a.d, scale, dout, dlse),
            "cu_seqlens[nseq] != total_tokens");
        if (bad.empty())
            bad = expect_invalid(realn_op_attention_fwd(env.stream(), REALN_DTYPE_F32, dq, dk, dv,
                                                        a.cu.data(), a.nseq(), T, a.hq, a.hq + 1,
                                                        a.d, scale, dout, dlse),
                                 "hq not a multiple of hkv");
        if (!bad.empty()) return {INFINITY, bad};
    }
    if (timing) {
        const int reps = 10;
        auto t0 = std::chrono::steady_clock::now();
        for (int i = 0; i < reps; ++i)
            Env::check(realn_op_attention_fwd(env.stream(), REALN_DTYPE_F32, dq, dk, dv,
                                              a.cu.data(), a.nseq(), T, a.hq, a.hkv, a.d, scale,
                                              dout, dlse));
        Env::check(realn_stream_synchronize(env.stream()));
        const double ms = ms_since(t0) / reps;
        o.note = concat_shape("fwd ", ms, " ms/call, ", causal_flops(a) / ms * 1e-6, " GFLOP/s");
    }
    return o;
}

// sample == 0: every coordinate of dq, dk, dv; else that many random coordinates of each.
Outcome attention_bwd_case(Env& env, const Attn& a, int64_t sample, bool timing) {
    Rng& r = env.rng();
    Inputs in = draw(r, a);
    const int64_t T = a.total(), nq = T * a.hq * a.d, nk = T * a.hkv * a.d;
    auto G = r.uniform_vec(nq);
    float* dq = env.upload(in.q);
    float* dk = env.upload(in.k);
    float* dv = env.upload(in.v);
    float* dgo = env.upload(G);
    auto* dout = static_cast<float*>(env.alloc(nq * 4));
    auto* dlse = static_cast<float*>(env.alloc(T * a.hq * 4));
    auto* gq = static_cast<float*>(env.alloc(nq * 4));
    // dk/dv start non-zero: the op must overwrite, not accumulate.
    float* gk = env.upload(r.uniform_vec(nk));
    float* gv = env.upload(r.uniform_vec(nk));
    const float scale = static_cast<float>(a.scale());
    Env::check(realn_op_attention_fwd(env.stream(), REALN_DTYPE_F32, dq, dk, dv, a.cu.data(),
                                      a.nseq(), T, a.hq, a.hkv, a.d, scale, dout, dlse));
    auto bwd = [&] {
        Env::check(realn_op_attention_bwd(env.stream(), REALN_DTYPE_F32, dq, dk, dv, dout, dlse, dgo,
                                          a.cu.data(), a.nseq(), T, a.hq, a.hkv, a.d, scale, gq,
                                          gk, gv));
    };
    bwd();
    auto out_q = env.download(gq, nq), out_k = env.download(gk, nk), out_v = env.download(gv, nk);

    std::vector<double> Q = to_double(in.q), K = to_double(in.k), V = to_double(in.v);
    std::vector<int64_t> seq_of(static_cast<size_t>(T));
    for (int64_t s = 0; s < a.nseq(); ++s)
        for (int64_t t = a.cu[s]; t < a.cu[s + 1]; ++t) seq_of[t] = s;
    const int64_t group = a.hq / a.hkv;
    std::vector<double> orow(static_cast<size_t>(a.d));
    auto row_loss = [&](int64_t t, int64_t h) {
        ref_row(a, Q, K, V, a.cu[seq_of[t]], t, h, orow.data());
        double s = 0;
        for (int64_t c = 0; c < a.d; ++c) s += orow[c] * G[(t * a.hq + h) * a.d + c];
        return s;
    };
    // Loss terms that depend on q[t, h] (is_q) or on k/v[t, g].
    auto local_loss = [&](bool is_q, int64_t t, int64_t head) {
        if (is_q) return row_loss(t, head);
        double s = 0;
        for (int64_t i = t; i < a.cu[seq_of[t] + 1]; ++i)
            for (int64_t h = head * group; h < (head + 1) * group; ++h) s += row_loss(i, h);
        return s;
    };
    const double step = 1e-6;
    auto check = [&](std::vector<double>& X, bool is_q, int64_t heads,
                     const std::vector<float>& got) {
        const int64_t n = static_cast<int64_t>(X.size());
        std::vector<int64_t> idx;
        if (sample == 0 || sample >= n) {
            idx.resize(static_cast<size_t>(n));
            std::iota(idx.begin(), idx.end(), int64_t(0));
        } else {
            for (int64_t i = 0; i < sample; ++i) idx.push_back(r.integer(0, int32_t(n - 1)));
        }
        std::vector<float> g;
        std::vector<double> ref;
        for (int64_t e : idx) {
            const int64_t t = e / (heads * a.d), head = (e / a.d) % heads;
            const double x = X[e];
            X[e] = x + step;
            const double fp = local_loss(is_q, t, head);
            X[e] = x - step;
            const double fm = local_loss(is_q, t, head);
            X[e] = x;
            ref.push_back((fp - fm) / (2 * step));
            g.push_back(got[e]);
        }
        return rel_err(g, ref);
    };
    Outcome o{worst({check(Q, true, a.hq, out_q), check(K, false, a.hkv, out_k),
                     check(V, false, a.hkv, out_v)}),
              ""};
    if (timing) {
        const int reps = 5;
        auto t0 = std::chrono::steady_clock::now();
        for (int i = 0; i < reps; ++i) bwd();
        Env::check(realn_stream_synchronize(env.stream()));
        const double ms = ms_since(t0) / reps;  // backward: 5 tile products vs 2 forward
        o.note = concat_shape("bwd ", ms, " ms/call, ", 2.5 * causal_flops(a) / ms * 1e-6, " GFLOP/s");
    }
    return o;
}

Outcome kv_store_case(Env& env, int64_t num_slots, int64_t max_len, int64_t hkv, int64_t d,
                      int64_t tokens, bool probe_errors) {
    Rng& r = env.rng();
    const int64_t row = hkv * d, cache_n = num_slots * max_len * row;
    // Distinct (slot, position) targets in random order.
    std::vector<int32_t> cells(static_cast<size_t>(num_slots * max_len));
    std::iota(cells.begin(), cells.end(), 0);
    std::shuffle(cells.begin(), cells.end(), r.gen);
    std::vector<int32_t> slots, pos;
    for (int64_t t = 0; t < tokens; ++t) {
        slots.push_back(int32_t(cells[t] / max_len));
        pos.push_back(int32_t(cells[t] % max_len));
    }
    auto kc0 = r.uniform_vec(cache_n), vc0 = r.uniform_vec(cache_n);
    auto k = r.uniform_vec(tokens * row), v = r.uniform_vec(tokens * row);
    float* dkc = env.upload(kc0);
    float* dvc = env.upload(vc0);
    float* dk = env.upload(k);
    float* dv = env.upload(v);
    Env::check(realn_op_kv_store(env.stream(), REALN_DTYPE_F32, dk, dv, slots.data(), pos.data(),
                                 tokens, dkc, dvc, num_slots, max_len, hkv, d));
    auto rk = kc0, rv = vc0;
    for (int64_t t = 0; t < tokens; ++t) {
        const int64_t dst = (int64_t(slots[t]) * max_len + pos[t]) * row;
        std::copy(k.begin() + t * row, k.begin() + (t + 1) * row, rk.begin() + dst);
        std::copy(v.begin() + t * row, v.begin() + (t + 1) * row, rv.begin() + dst);
    }
    Outcome o{worst({rel_err(env.download(dkc, cache_n), rk), rel_err(env.download(dvc, cache_n), rv)}),
              ""};
    if (probe_errors) {
        auto bad_slots = slots;
        bad_slots.back() = int32_t(num_slots);
        std::string bad = expect_invalid(
            realn_op_kv_store(env.stream(), REALN_DTYPE_F32, dk, dv, bad_slots.data(), pos.data(),
                              tokens, dkc, dvc, num_slots, max_len, hkv, d),
            "slot == num_slots");
        auto bad_pos = pos;
        bad_pos.front() = -1;
        if (bad.empty())
            bad = expect_invalid(realn_op_kv_store(env.stream(), REALN_DTYPE_F32, dk, dv,
                                                   slots.data(), bad_pos.data(), tokens, dkc, dvc,
                                                   num_slots, max_len, hkv, d),
                                 "position -1");
        if (!bad.empty()) return {INFINITY, bad};
        // A rejected call must leave the cache as it was.
        o.max_rel_err = worst({o.max_rel_err, rel_err(env.download(dkc, cache_n), rk)});
    }
    return o;
}

// Sequences of lengths lens live in random distinct slots of a cache full of random values;
// their K/V rows go in through kv_store (prefill), then one decode step per sequence for its last
// token, compared with the float64 last row of causal attention and with attention_fwd's.
Outcome attention_decode_case(Env& env, const std::vector<int>& lens, int64_t hq, int64_t hkv,
                              int64_t d, bool timing) {
    Rng& r = env.rng();
    const Attn a = make_attn(lens, hq, hkv, d);
    const int64_t B = a.nseq(), T = a.total();
    const int64_t max_len = *std::max_element(lens.begin(), lens.end()) + 3, num_slots = B + 2;
    std::vector<int32_t> perm(static_cast<size_t>(num_slots));
    std::iota(perm.begin(), perm.end(), 0);
    std::shuffle(perm.begin(), perm.end(), r.gen);
    std::vector<int32_t> slot_of(perm.begin(), perm.begin() + B), tok_slot, tok_pos, dlens;
    for (int64_t b = 0; b < B; ++b) {
        dlens.push_back(lens[b]);
        for (int p = 0; p < lens[b]; ++p) {
            tok_slot.push_back(slot_of[b]);
            tok_pos.push_back(p);
        }
    }
    Inputs in = draw(r, a);
    const int64_t cache_n = num_slots * max_len * hkv * d;
    float* kc = env.upload(r.uniform_vec(cache_n, -3.0f, 3.0f));
    float* vc = env.upload(r.uniform_vec(cache_n, -3.0f, 3.0f));
    float* dk = env.upload(in.k);
    float* dv = env.upload(in.v);
    Env::check(realn_op_kv_store(env.stream(), REALN_DTYPE_F32, dk, dv, tok_slot.data(),
                                 tok_pos.data(), T, kc, vc, num_slots, max_len, hkv, d));
    std::vector<float> qlast;
    for (int64_t b = 0; b < B; ++b) {
        const int64_t t = a.cu[b + 1] - 1;
        qlast.insert(qlast.end(), in.q.begin() + t * hq * d, in.q.begin() + (t + 1) * hq * d);
    }
    float* dql = env.upload(qlast);
    auto* dout = static_cast<float*>(env.alloc(B * hq * d * 4));
    const float scale = static_cast<float>(a.scale());
    auto decode = [&] {
        Env::check(realn_op_attention_decode(env.stream(), REALN_DTYPE_F32, dql, kc, vc,
                                             slot_of.data(), dlens.data(), B, num_slots, max_len,
                                             hq, hkv, d, scale, dout));
    };
    decode();
    auto out = env.download(dout, B * hq * d);
    // float64 reference: last row of each sequence's causal attention.
    auto Q = to_double(in.q), K = to_double(in.k), V = to_double(in.v);
    std::vector<double> ref(static_cast<size_t>(B * hq * d));
    for (int64_t b = 0; b < B; ++b)
        for (int64_t h = 0; h < hq; ++h)
            ref_row(a, Q, K, V, a.cu[b], a.cu[b + 1] - 1, h, &ref[(b * hq + h) * d]);
    // The same rows from the packed forward op.
    float* dqf = env.upload(in.q);
    auto* fout = static_cast<float*>(env.alloc(T * hq * d * 4));
    Env::check(realn_op_attention_fwd(env.stream(), REALN_DTYPE_F32, dqf, dk, dv, a.cu.data(), B, T,
                                      hq, hkv, d, scale, fout, nullptr));
    auto full = env.download(fout, T * hq * d);
    std::vector<float> fwd_last;
    for (int64_t b = 0; b < B; ++b) {
        const int64_t t = a.cu[b + 1] - 1;
        fwd_last.insert(fwd_last.end(), full.begin() + t * hq * d, full.begin() + (t + 1) * hq * d);
    }
    Outcome o{worst({rel_err(out, ref), rel_err(out, fwd_last)}), ""};
    if (timing) {
        const int reps = 20;
        auto t0 = std::chrono::steady_clock::now();
        for (int i = 0; i < reps; ++i) decode();
        Env::check(realn_stream_synchronize(env.stream()));
        const double ms = ms_since(t0) / reps;
        const double bytes = 2.0 * 4.0 * double(T) * double(hkv) * double(d);  // K and V read once
        o.note = concat_shape("decode ", ms, " ms/call, ", bytes / ms * 1e-6, " GB/s of cache");
    }
    return o;
}

// ---------------------------------------------------------------- bf16 cache
float widen_bf16(uint16_t h) {
    const uint32_t u = uint32_t(h) << 16;
    float f;
    std::memcpy(&f, &u, 4);
    return f;
}

// The store into a bf16 cache of random bf16 values: every stored element is bit for bit the
// nearest-even bf16 of its input (exact ties included), untouched cells keep their bits, a repeated
// (slot, position) keeps the later token's row, and a refused call leaves the cache as it was.
Outcome kv_store_bf16_case(Env& env, int64_t num_slots, int64_t max_len, int64_t hkv, int64_t d, int64_t tokens) {
    Rng& r = env.rng();
    const int64_t row = hkv * d, cache_n = num_slots * max_len * row;
    std::vector<int32_t> cells(static_cast<size_t>(num_slots * max_len));
    std::iota(cells.begin(), cells.end(), 0);
    std::shuffle(cells.begin(), cells.end(), r.gen);
    std::vector<int32_t> slots, pos;
    for (int64_t t = 0; t < tokens; ++t) {
        slots.push_back(int32_t(cells[t % (tokens - 1)] / max_len));  // the last token repeats the first's cell
        pos.push_back(int32_t(cells[t % (tokens - 1)] % max_len));
    }
    std::vector<uint16_t> kc0(cache_n), vc0(cache_n);
    for (int64_t i = 0; i < cache_n; ++i) {
        kc0[i] = ref_bf16(r.normal(2.0f));
        vc0[i] = ref_bf16(r.normal(2.0f));
    }
    auto k = r.normal_vec(tokens * row, 2.0f), v = r.uniform_vec(tokens * row);
    for (int64_t i = 0; i < tokens * row; i += 5) {  // exact ties: the low half is 0x8000
        uint32_t u;
        std::memcpy(&u, &k[i], 4);
        u = (u & 0xffff0000u) | 0x8000u;
        std::memcpy(&k[i], &u, 4);
    }
    auto* dkc = env.upload(kc0);
    auto* dvc = env.upload(vc0);
    float* dk = env.upload(k);
    float* dv = env.upload(v);
    Env::check(realn_op_kv_store(env.stream(), REALN_DTYPE_BF16, dk, dv, slots.data(), pos.data(), tokens, dkc, dvc,
                                 num_slots, max_len, hkv, d));
    auto rk = kc0, rv = vc0;
    for (int64_t t = 0; t < tokens; ++t) {
        const int64_t dst = (int64_t(slots[t]) * max_len + pos[t]) * row;
        for (int64_t e = 0; e < row; ++e) {
            rk[dst + e] = ref_bf16(k[t * row + e]);
            rv[dst + e] = ref_bf16(v[t * row + e]);
        }
    }
    auto count = [&](const std::vector<uint16_t>& got, const std::vector<uint16_t>& want) {
        int64_t bad = 0;
        for (int64_t i = 0; i < cache_n; ++i) bad += got[i] != want[i];
        return bad;
    };
    int64_t bad = count(env.download(dkc, cache_n), rk) + count(env.download(dvc, cache_n), rv);
    if (bad) return {double(bad), concat_shape(bad, " cache elements differ from the nearest-even bf16")};
    auto bad_pos = pos;
    bad_pos.back() = int32_t(max_len);
    const std::string refused = expect_invalid(realn_op_kv_store(env.stream(), REALN_DTYPE_BF16, dk, dv, slots.data(),
                                                                 bad_pos.data(), tokens, dkc, dvc, num_slots, max_len,
                                                                 hkv, d),
                                               "position == max_len");
    if (!refused.empty()) return {INFINITY, refused};
    bad = count(env.download(dkc, cache_n), rk) + count(env.download(dvc, cache_n), rv);
    return {double(bad), bad ? concat_shape(bad, " elements changed by a refused store") : ""};
}

// Decode against a bf16 cache (kernel forced to scalar or AVX-512), sequences prefilled through
// the bf16 kv_store into random slots of a cache of random bf16 values.
Outcome attention_decode_bf16_case(Env& env, const std::vector<int>& lens, int64_t hq, int64_t hkv, int64_t d,
                                   bool scalar) {
    if (env.backend() != REALN_BACKEND_CPU) return {0.0, "CPU kernel choice: not run on this backend"};
    if (!scalar && !cpu::attention_decode_bf16_has_avx512()) return {0.0, "AVX-512 not on this CPU: skipped"};
    struct Force {
        explicit Force(bool s) { cpu::attention_decode_bf16_force_isa(s ? cpu::SimdIsa::Scalar : cpu::SimdIsa::Avx512); }
        ~Force() { cpu::attention_decode_bf16_force_isa(cpu::SimdIsa::Avx512); }
    } force(scalar);
    Rng& r = env.rng();
    const Attn a = make_attn(lens, hq, hkv, d);
    const int64_t B = a.nseq(), T = a.total();
    const int64_t max_len = *std::max_element(lens.begin(), lens.end()) + 3, num_slots = B + 2;
    std::vector<int32_t> perm(static_cast<size_t>(num_slots));
    std::iota(perm.begin(), perm.end(), 0);
    std::shuffle(perm.begin(), perm.end(), r.gen);
    std::vector<int32_t> slot_of(perm.begin(), perm.begin() + B), tok_slot, tok_pos, dlens;
    for (int64_t b = 0; b < B; ++b) {
        dlens.push_back(lens[b]);
        for (int p = 0; p < lens[b]; ++p) {
            tok_slot.push_back(slot_of[b]);
            tok_pos.push_back(p);
        }
    }
    Inputs in = draw(r, a);
    const int64_t cache_n = num_slots * max_len * hkv * d;
    std::vector<uint16_t> junk(cache_n);
    for (auto& h : junk) h = ref_bf16(r.uniform(-3.0f, 3.0f));
    auto* kc = env.upload(junk);
    auto* vc = env.upload(junk);
    Env::check(realn_op_kv_store(env.stream(), REALN_DTYPE_BF16, env.upload(in.k), env.upload(in.v), tok_slot.data(),
                                 tok_pos.data(), T, kc, vc, num_slots, max_len, hkv, d));
    std::vector<float> qlast;
    for (int64_t b = 0; b < B; ++b) {
        const int64_t t = a.cu[b + 1] - 1;
        qlast.insert(qlast.end(), in.q.begin() + t * hq * d, in.q.begin() + (t + 1) * hq * d);
    }
    auto* dout = static_cast<float*>(env.alloc(B * hq * d * 4));
    if (scalar)  // this library's copy of the kernel (librealn_selftest compiles it too), whose choice Force sets
        cpu::attention_decode(env.stream(), REALN_DTYPE_BF16, env.upload(qlast), kc, vc, slot_of.data(), dlens.data(),
                              B, num_slots, max_len, hq, hkv, d, float(a.scale()), dout);
    else  // the op: librealn's best kernel
        Env::check(realn_op_attention_decode(env.stream(), REALN_DTYPE_BF16, env.upload(qlast), kc, vc, slot_of.data(),
                                             dlens.data(), B, num_slots, max_len, hq, hkv, d, float(a.scale()), dout));
    const auto out = env.download(dout, B * hq * d);
    auto Q = to_double(in.q), K = to_double(in.k), V = to_double(in.v), Kr = K, Vr = V;
    for (size_t i = 0; i < K.size(); ++i) {
        Kr[i] = widen_bf16(ref_bf16(in.k[i]));
        Vr[i] = widen_bf16(ref_bf16(in.v[i]));
    }
    std::vector<double> ref(static_cast<size_t>(B * hq * d)), ref_rounded(ref.size());
    for (int64_t b = 0; b < B; ++b)
        for (int64_t h = 0; h < hq; ++h) {
            ref_row(a, Q, K, V, a.cu[b], a.cu[b + 1] - 1, h, &ref[(b * hq + h) * d]);
            ref_row(a, Q, Kr, Vr, a.cu[b], a.cu[b + 1] - 1, h, &ref_rounded[(b * hq + h) * d]);
        }
    // bf16 storage alone (K and V each within 2^-9 relative): measured up to 7e-3 of the largest
    // output on these shapes; 2e-2 bounds it.
    const double vs_fp32 = rel_err(out, ref), vs_rounded = rel_err(out, ref_rounded);
    if (!(vs_fp32 <= 2e-2)) return {INFINITY, concat_shape("vs the unrounded float64 reference: ", vs_fp32, " > 2e-2")};
    return {vs_rounded, concat_shape("vs unrounded K/V ", vs_fp32)};
}

}  // namespace

void add_attention_cases() {
    struct F { std::vector<int> lens; int64_t hq, hkv, d; bool timing, probe; };
    for (const F& f : {F{{5, 1, 17, 0, 3}, 4, 4, 16, false, true},
                       F{{1, 33, 70, 2}, 4, 2, 64, false, false},
                       F{{130, 1, 9}, 8, 2, 16, false, false},
                       F{{7, 1, 12}, 3, 1, 5, false, false},
                       F{{200}, 2, 1, 24, false, false},
                       F{{64, 64, 64, 64}, 12, 12, 64, true, false}}) {
        const Attn a = make_attn(f.lens, f.hq, f.hkv, f.d);
        add_case({"attention_fwd", attn_shape(a), kTolF32,
                  [a, f](Env& e) { return attention_fwd_case(e, a, f.timing, f.probe); }});
    }
    struct Bw { std::vector<int> lens; int64_t hq, hkv, d, sample; bool timing; };
    for (const Bw& b : {Bw{{3, 1, 6}, 2, 2, 16, 0, false},
                        Bw{{4, 1, 7}, 4, 2, 64, 0, false},
                        Bw{{2, 9, 1}, 8, 2, 16, 0, false},
                        Bw{{5, 1, 3}, 3, 3, 5, 0, false},
                        Bw{{70, 1, 67}, 4, 1, 16, 300, false},
                        Bw{{64, 64, 64, 64}, 12, 12, 64, 120, true}}) {
        const Attn a = make_attn(b.lens, b.hq, b.hkv, b.d);
        add_case({"attention_bwd",
                  attn_shape(a) + (b.sample ? concat_shape(" fd_sample=", b.sample) : ""), kTolGrad,
                  [a, b](Env& e) { return attention_bwd_case(e, a, b.sample, b.timing); }});
    }
    struct S { int64_t slots, max_len, hkv, d, tokens; bool probe; };
    for (const S& s : {S{5, 11, 2, 16, 17, true}, S{3, 70, 4, 64, 150, false},
                       S{8, 4, 1, 5, 1, false}}) {
        add_case({"kv_store",
                  concat_shape("slots=", s.slots, " max_len=", s.max_len, " hkv=", s.hkv, " d=", s.d,
                               " tokens=", s.tokens),
                  0.0, [s](Env& e) { return kv_store_case(e, s.slots, s.max_len, s.hkv, s.d, s.tokens, s.probe); }});
    }
    struct D { std::vector<int> lens; int64_t hq, hkv, d; bool timing; };
    for (const D& dc : {D{{1, 9, 64, 130}, 4, 4, 16, false}, D{{3, 1, 40}, 4, 2, 64, false},
                        D{{17, 1}, 8, 2, 16, false}, D{{6, 2}, 3, 1, 5, false},
                        D{{96, 128, 100, 120}, 12, 12, 64, true}}) {
        const Attn a = make_attn(dc.lens, dc.hq, dc.hkv, dc.d);
        add_case({"attention_decode", attn_shape(a), kTolF32,
                  [dc](Env& e) { return attention_decode_case(e, dc.lens, dc.hq, dc.hkv, dc.d, dc.timing); }});
    }
    for (const S& s : {S{5, 11, 2, 16, 17, false}, S{3, 70, 4, 64, 150, false}, S{8, 4, 1, 5, 2, false}})
        add_case({"kv_store",
                  concat_shape("dtype=bf16 slots=", s.slots, " max_len=", s.max_len, " hkv=", s.hkv, " d=", s.d,
                               " tokens=", s.tokens, " (last repeats the first's cell)"),
                  0.0, [s](Env& e) { return kv_store_bf16_case(e, s.slots, s.max_len, s.hkv, s.d, s.tokens); }});
    // d 16 / 64: whole 16-lane blocks; 5 and 40: the masked tail; groups of 1, 2 and 3.
    for (bool scalar : {false, true})
        for (const D& dc : {D{{1, 9, 64, 130}, 4, 4, 16, false}, D{{3, 1, 40}, 4, 2, 64, false},
                            D{{17, 1}, 8, 2, 40, false}, D{{6, 2}, 3, 1, 5, false}}) {
            const Attn a = make_attn(dc.lens, dc.hq, dc.hkv, dc.d);
            add_case({scalar ? "attention_decode_bf16_scalar" : "attention_decode_bf16_avx512", attn_shape(a), kTolF32,
                      [dc, scalar](Env& e) { return attention_decode_bf16_case(e, dc.lens, dc.hq, dc.hkv, dc.d, scalar); }});
        }
}

}  // namespace realn::testing
