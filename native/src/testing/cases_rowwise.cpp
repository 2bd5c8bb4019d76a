// Cases: the row-wise transformer ops -- embedding, RMSNorm, rotary, SwiGLU, log-probabilities
// (temperature, mask, entropy) and cross-entropy (ignore_index). Forwards against a float64
// reference; backwards against central finite differences of that float64 forward. The losses
// are separable (per row, per token or per element), so the finite differences perturb one entry
// and re-evaluate only the part of the loss it touches: exact FD, affordable at real sizes.
// Large logits rows sample their FD entries (every label entry plus random ones).
#include <algorithm>
#include <cmath>
#include <cstring>

#include "harness.hpp"

namespace realn::testing {
namespace {

using Vec = std::vector<double>;
constexpr double kH = 1e-6;  // FD step

// Central difference of f at x[i] (x restored afterwards).
template <typename F>
double cdiff(std::vector<double>& x, size_t i, F&& f) {
    const double xi = x[i];
    x[i] = xi + kH;
    const double fp = f();
    x[i] = xi - kH;
    const double fm = f();
    x[i] = xi;
    return (fp - fm) / (2 * kH);
}

Outcome expect_invalid(realn_status st, const char* what) {
    if (st == REALN_ERR_INVALID_ARGUMENT) return {0.0, ""};
    return {INFINITY, std::string("expected INVALID_ARGUMENT for ") + what + ", got " +
                          realn_status_string(st)};
}

// ---------------------------------------------------------------- embedding
std::vector<int32_t> embedding_ids(Rng& r, int64_t n, int64_t vocab, int64_t vocab_start) {
    std::vector<int32_t> ids(n);
    // Mostly in range (with repeats), some below and above the shard.
    for (auto& id : ids)
        id = r.integer(std::max<int32_t>(0, int32_t(vocab_start) - 4), int32_t(vocab_start + vocab + 3));
    return ids;
}

Outcome embedding_fwd_case(Env& env, int64_t n, int64_t vocab, int64_t hidden, int64_t vs) {
    Rng& r = env.rng();
    auto ids = embedding_ids(r, n, vocab, vs);
    auto table = r.uniform_vec(vocab * hidden);
    auto* out = static_cast<float*>(env.alloc(n * hidden * 4));
    // Pre-fill with garbage: out-of-range rows must be written as zeros, not left alone.
    Env::check(realn_copy(env.stream(), out, r.uniform_vec(n * hidden).data(), n * hidden * 4, REALN_COPY_H2D));
    Env::check(realn_op_embedding_fwd(env.stream(), REALN_DTYPE_F32, env.upload(ids), n,
                                      env.upload(table), vocab, hidden, vs, out));
    Vec ref(n * hidden, 0.0);
    for (int64_t t = 0; t < n; ++t) {
        const int64_t l = ids[t] - vs;
        if (l >= 0 && l < vocab)
            for (int64_t j = 0; j < hidden; ++j) ref[t * hidden + j] = table[l * hidden + j];
    }
    return {rel_err(env.download(out, n * hidden), ref), ""};
}

Outcome embedding_bwd_case(Env& env, int64_t n, int64_t vocab, int64_t hidden, int64_t vs) {
    Rng& r = env.rng();
    auto ids = embedding_ids(r, n, vocab, vs);
    auto table = r.uniform_vec(vocab * hidden), gout = r.uniform_vec(n * hidden);
    // dtable accumulates into existing contents; a guard row after it must stay untouched.
    auto dt0 = r.uniform_vec((vocab + 1) * hidden);
    float* dt = env.upload(dt0);
    Env::check(realn_op_embedding_bwd(env.stream(), REALN_DTYPE_F32, env.upload(ids), n,
                                      env.upload(gout), vocab, hidden, vs, dt));
    // loss = sum_t <fwd(table)[t], gout[t]>; d/d table[v, j] touches the tokens with id v.
    Vec T = to_double(table), ref((vocab + 1) * hidden);
    for (int64_t j = 0; j < hidden; ++j) ref[vocab * hidden + j] = dt0[vocab * hidden + j];
    std::vector<std::vector<int64_t>> users(vocab);
    for (int64_t t = 0; t < n; ++t)
        if (ids[t] - vs >= 0 && ids[t] - vs < vocab) users[ids[t] - vs].push_back(t);
    for (int64_t v = 0; v < vocab; ++v)
        for (int64_t j = 0; j < hidden; ++j) {
            const size_t i = v * hidden + j;
            ref[i] = dt0[i] + cdiff(T, i, [&] {
                double s = 0;
                for (int64_t t : users[v]) s += T[i] * gout[t * hidden + j];
                return s;
            });
        }
    return {rel_err(env.download(dt, (vocab + 1) * hidden), ref), ""};
}

// ---------------------------------------------------------------- rmsnorm
double rms_rstd(const double* x, int64_t dim, double eps) {
    double ss = 0;
    for (int64_t j = 0; j < dim; ++j) ss += x[j] * x[j];
    return 1.0 / std::sqrt(ss / dim + eps);
}

Outcome rmsnorm_fwd_case(Env& env, int64_t rows, int64_t dim, float eps, bool want_rstd) {
    Rng& r = env.rng();
    auto x = r.normal_vec(rows * dim, 2.0f), w = r.uniform_vec(dim, 0.5f, 1.5f);
    auto* y = static_cast<float*>(env.alloc(rows * dim * 4));
    auto* rs = want_rstd ? static_cast<float*>(env.alloc(rows * 4)) : nullptr;
    Env::check(realn_op_rmsnorm_fwd(env.stream(), REALN_DTYPE_F32, env.upload(x), env.upload(w), y,
                                    rs, rows, dim, eps));
    Vec X = to_double(x), ry(rows * dim), rr(rows);
    for (int64_t i = 0; i < rows; ++i) {
        rr[i] = rms_rstd(&X[i * dim], dim, eps);
        for (int64_t j = 0; j < dim; ++j) ry[i * dim + j] = X[i * dim + j] * rr[i] * w[j];
    }
    double e = rel_err(env.download(y, rows * dim), ry);
    if (want_rstd) e = worst({e, rel_err(env.download(rs, rows), rr)});
    return {e, ""};
}

Outcome rmsnorm_bwd_case(Env& env, int64_t rows, int64_t dim, float eps) {
    Rng& r = env.rng();
    auto x = r.normal_vec(rows * dim), w = r.uniform_vec(dim, 0.5f, 1.5f), g = r.uniform_vec(rows * dim);
    auto dw0 = r.uniform_vec(dim);
    float* dx = env.upload(r.uniform_vec(rows * dim));  // overwritten
    float* dw = env.upload(dw0);                         // accumulated
    float* rs = static_cast<float*>(env.alloc(rows * 4));
    float* dX = env.upload(x);
    float* dW = env.upload(w);
    Env::check(realn_op_rmsnorm_fwd(env.stream(), REALN_DTYPE_F32, dX, dW, env.alloc(rows * dim * 4),
                                    rs, rows, dim, eps));
    Env::check(realn_op_rmsnorm_bwd(env.stream(), REALN_DTYPE_F32, dX, dW, rs, env.upload(g), dx,
                                    dw, rows, dim));
    Vec X = to_double(x), W = to_double(w);
    auto row_loss = [&](int64_t i) {
        const double rr = rms_rstd(&X[i * dim], dim, eps);
        double s = 0;
        for (int64_t j = 0; j < dim; ++j) s += X[i * dim + j] * rr * W[j] * g[i * dim + j];
        return s;
    };
    Vec gx(rows * dim), gw(dim);
    for (int64_t i = 0; i < rows; ++i)
        for (int64_t j = 0; j < dim; ++j) gx[i * dim + j] = cdiff(X, i * dim + j, [&] { return row_loss(i); });
    for (int64_t j = 0; j < dim; ++j)
        gw[j] = dw0[j] + cdiff(W, j, [&] {
                    double s = 0;
                    for (int64_t i = 0; i < rows; ++i) s += row_loss(i);
                    return s;
                });
    return {worst({rel_err(env.download(dx, rows * dim), gx), rel_err(env.download(dw, dim), gw)}), ""};
}

// ---------------------------------------------------------------- rotary
// Packed positions: ragged sequences, each counting from 0 (plus an offset for decode-like ids).
std::vector<int32_t> packed_positions(Rng& r, int64_t tokens, int32_t max_start) {
    std::vector<int32_t> p(tokens);
    int64_t t = 0;
    while (t < tokens) {
        const int64_t len = std::min<int64_t>(tokens - t, r.integer(1, 40));
        const int32_t start = r.integer(0, max_start);
        for (int64_t k = 0; k < len; ++k) p[t + k] = start + int32_t(k);
        t += len;
    }
    return p;
}

// The frequency table of rotary_fwd's theta form: theta^(-2i/rot), i < rot/2.
std::vector<double> theta_table(int64_t rot, double theta) {
    std::vector<double> f(rot / 2);
    for (int64_t i = 0; i < rot / 2; ++i) f[i] = std::pow(theta, -2.0 * i / rot);
    return f;
}

// A scaled table as LLaMA 3.1's rope_scaling makes (computed here independently in double):
// theta's table with each pair's frequency divided by a random factor in [1, 32] (a few left
// unscaled), so every pair turns at its own rate.
std::vector<double> scaled_table(Rng& r, int64_t rot, double theta) {
    auto f = theta_table(rot, theta);
    for (auto& v : f) v /= (r.integer(0, 3) == 0 ? 1.0 : double(r.uniform(1.0f, 32.0f)));
    return f;
}

// One head of one token at position pos: y = rotate(x) over the first rot dims, copy the rest.
void rotary_head_ref(const double* xh, double* yh, int32_t pos, int64_t hd, int64_t rot,
                     const std::vector<double>& inv_freq) {
    const int64_t half = rot / 2;
    for (int64_t i = 0; i < hd; ++i) yh[i] = xh[i];
    for (int64_t i = 0; i < half; ++i) {
        const double a = pos * inv_freq[i];
        yh[i] = xh[i] * std::cos(a) - xh[i + half] * std::sin(a);
        yh[i + half] = xh[i + half] * std::cos(a) + xh[i] * std::sin(a);
    }
}

void rotary_ref(const Vec& x, Vec& y, const std::vector<int32_t>& pos, int64_t tokens, int64_t heads,
                int64_t hd, int64_t rot, const std::vector<double>& inv_freq) {
    for (int64_t t = 0; t < tokens; ++t)
        for (int64_t h = 0; h < heads; ++h)
            rotary_head_ref(&x[(t * heads + h) * hd], &y[(t * heads + h) * hd], pos[t], hd, rot, inv_freq);
}

// scaled: the freqs form (rotary_freqs_fwd/bwd) with a scaled_table; otherwise the theta form.
Outcome rotary_fwd_case(Env& env, int64_t tokens, int64_t heads, int64_t hd, int64_t rot,
                        float theta, int32_t max_start, bool inplace, bool scaled) {
    Rng& r = env.rng();
    auto x = r.uniform_vec(tokens * heads * hd);
    auto pos = packed_positions(r, tokens, max_start);
    const auto table = scaled ? scaled_table(r, rot, theta) : theta_table(rot, theta);
    float* dx = env.upload(x);
    float* dy = inplace ? dx : static_cast<float*>(env.alloc(tokens * heads * hd * 4));
    if (scaled)
        Env::check(realn_op_rotary_freqs_fwd(env.stream(), REALN_DTYPE_F32, dx, env.upload(pos), dy, tokens,
                                             heads, hd, rot, table.data()));
    else
        Env::check(realn_op_rotary_fwd(env.stream(), REALN_DTYPE_F32, dx, env.upload(pos), dy, tokens,
                                       heads, hd, rot, theta));
    Vec ref(x.size());
    rotary_ref(to_double(x), ref, pos, tokens, heads, hd, rot, table);
    Outcome o{rel_err(env.download(dy, tokens * heads * hd), ref), ""};
    if (tokens == 1 && !scaled) {  // argument checks: odd rot_dim, rot_dim > head_dim
        Outcome a = expect_invalid(realn_op_rotary_fwd(env.stream(), REALN_DTYPE_F32, dx, env.upload(pos),
                                                       dy, tokens, heads, hd, 3, theta), "odd rot_dim");
        Outcome b = expect_invalid(realn_op_rotary_fwd(env.stream(), REALN_DTYPE_F32, dx, env.upload(pos),
                                                       dy, tokens, heads, hd, hd + 2, theta), "rot_dim > head_dim");
        o.max_rel_err = worst({o.max_rel_err, a.max_rel_err, b.max_rel_err});
        o.note = a.note + b.note;
    }
    if (tokens == 1 && scaled) {  // argument checks: a missing table, a zero or non-finite entry
        auto bad = table;
        bad[bad.size() - 1] = 0.0;
        Outcome a = expect_invalid(realn_op_rotary_freqs_fwd(env.stream(), REALN_DTYPE_F32, dx, env.upload(pos),
                                                             dy, tokens, heads, hd, rot, nullptr), "inv_freq NULL");
        Outcome b = expect_invalid(realn_op_rotary_freqs_fwd(env.stream(), REALN_DTYPE_F32, dx, env.upload(pos),
                                                             dy, tokens, heads, hd, rot, bad.data()), "inv_freq 0");
        bad[0] = std::nan("");
        Outcome c = expect_invalid(realn_op_rotary_freqs_fwd(env.stream(), REALN_DTYPE_F32, dx, env.upload(pos),
                                                             dy, tokens, heads, hd, rot, bad.data()), "inv_freq NaN");
        o.max_rel_err = worst({o.max_rel_err, a.max_rel_err, b.max_rel_err, c.max_rel_err});
        o.note = a.note + b.note + c.note;
    }
    return o;
}

// Packed sequences that all start at position 0 repeat positions, so the CPU kernel computes a cos/sin row per
// position instead of per token: the whole call must give the same bits as the same tokens one call each (per-token
// rows), forward and inverse, for the theta table and a scaled one.
Outcome rotary_rows_case(Env& env, int64_t tokens, int64_t heads, int64_t hd, int64_t rot, bool scaled) {
    Rng& r = env.rng();
    auto x = r.uniform_vec(tokens * heads * hd);
    auto pos = packed_positions(r, tokens, 0);
    const auto table = scaled ? scaled_table(r, rot, 10000.0) : theta_table(rot, 10000.0);
    const int64_t row = heads * hd;
    double worst_diff = 0.0;
    std::string note;
    for (bool inverse : {false, true}) {
        auto run = [&](const float* xs, const int32_t* ps, int64_t n) {
            float* dx = env.upload(std::vector<float>(xs, xs + n * row));
            float* dy = static_cast<float*>(env.alloc(n * row * 4));
            int32_t* dp = env.upload(std::vector<int32_t>(ps, ps + n));
            if (inverse)
                Env::check(realn_op_rotary_freqs_bwd(env.stream(), REALN_DTYPE_F32, dx, dp, dy, n, heads, hd, rot, table.data()));
            else
                Env::check(realn_op_rotary_freqs_fwd(env.stream(), REALN_DTYPE_F32, dx, dp, dy, n, heads, hd, rot, table.data()));
            return env.download(dy, n * row);
        };
        const auto whole = run(x.data(), pos.data(), tokens);
        for (int64_t t = 0; t < tokens; ++t) {
            const auto one = run(x.data() + t * row, pos.data() + t, 1);
            for (int64_t j = 0; j < row; ++j) {
                const float a = whole[t * row + j], b = one[j];
                if (std::memcmp(&a, &b, sizeof a) != 0) {
                    worst_diff = std::max(worst_diff, std::abs(double(a) - b) / std::max(1e-30, std::abs(double(b))) + 1e-30);
                    if (note.empty())
                        note = concat_shape(inverse ? "inverse" : "forward", ": token ", t, " (position ", pos[t], ") element ", j,
                                            " differs from its one-token call");
                }
            }
        }
    }
    return {worst_diff, note};
}

Outcome rotary_bwd_case(Env& env, int64_t tokens, int64_t heads, int64_t hd, int64_t rot,
                        float theta, int32_t max_start, bool inplace, bool scaled) {
    Rng& r = env.rng();
    const int64_t n = tokens * heads * hd;
    auto x = r.uniform_vec(n), g = r.uniform_vec(n);
    auto pos = packed_positions(r, tokens, max_start);
    const auto table = scaled ? scaled_table(r, rot, theta) : theta_table(rot, theta);
    float* dg = env.upload(g);
    float* dx = inplace ? dg : static_cast<float*>(env.alloc(n * 4));
    if (scaled)
        Env::check(realn_op_rotary_freqs_bwd(env.stream(), REALN_DTYPE_F32, dg, env.upload(pos), dx, tokens,
                                             heads, hd, rot, table.data()));
    else
        Env::check(realn_op_rotary_bwd(env.stream(), REALN_DTYPE_F32, dg, env.upload(pos), dx, tokens,
                                       heads, hd, rot, theta));
    // loss = sum <rotary(x), g>; entry k of head (t, h) only moves that head's output.
    Vec X = to_double(x), Y(hd), ref(n);
    for (int64_t th = 0; th < tokens * heads; ++th)
        for (int64_t k = 0; k < hd; ++k)
            ref[th * hd + k] = cdiff(X, th * hd + k, [&] {
                rotary_head_ref(&X[th * hd], Y.data(), pos[th / heads], hd, rot, table);
                double s = 0;
                for (int64_t q = 0; q < hd; ++q) s += Y[q] * g[th * hd + q];
                return s;
            });
    return {rel_err(env.download(dx, n), ref), ""};
}

// ---------------------------------------------------------------- swiglu
double silu(double g) { return g / (1.0 + std::exp(-g)); }

// gate/up laid out as a fused [rows, ld_in] buffer (gate at column 0, up at column up_off).
struct SwigluIo {
    std::vector<float> buf;
    int64_t ld_in, up_off;
};
SwigluIo swiglu_inputs(Rng& r, int64_t rows, int64_t cols, bool fused) {
    SwigluIo io;
    io.up_off = fused ? cols : 0;
    io.ld_in = fused ? 2 * cols + 1 : cols + 3;
    io.buf = r.normal_vec(rows * io.ld_in + (fused ? 0 : rows * io.ld_in), 3.0f);
    if (!fused) io.up_off = rows * io.ld_in;  // separate tensors with padded rows
    // A few saturating values (exp overflow/underflow paths).
    for (float v : {-95.0f, 95.0f, -30.0f, 30.0f, 0.0f})
        io.buf[r.integer(0, int32_t(rows * cols - 1)) % cols] = v;
    return io;
}

Outcome swiglu_fwd_case(Env& env, int64_t rows, int64_t cols, bool fused) {
    Rng& r = env.rng();
    auto io = swiglu_inputs(r, rows, cols, fused);
    const int64_t ld_out = cols + 2;
    float* in = env.upload(io.buf);
    auto* out = static_cast<float*>(env.alloc(rows * ld_out * 4));
    Env::check(realn_op_swiglu_fwd(env.stream(), REALN_DTYPE_F32, in, in + io.up_off, io.ld_in, out,
                                   ld_out, rows, cols));
    auto o = env.download(out, rows * ld_out);
    std::vector<float> got;
    Vec ref;
    for (int64_t i = 0; i < rows; ++i)
        for (int64_t j = 0; j < cols; ++j) {
            got.push_back(o[i * ld_out + j]);
            ref.push_back(silu(io.buf[i * io.ld_in + j]) * double(io.buf[io.up_off + i * io.ld_in + j]));
        }
    // Padding columns of out stay untouched (zero from alloc).
    for (int64_t i = 0; i < rows; ++i)
        for (int64_t j = cols; j < ld_out; ++j) got.push_back(o[i * ld_out + j]), ref.push_back(0.0);
    return {rel_err(got, ref), ""};
}

Outcome swiglu_bwd_case(Env& env, int64_t rows, int64_t cols, bool fused) {
    Rng& r = env.rng();
    auto io = swiglu_inputs(r, rows, cols, fused);
    const int64_t ld_out = cols + 1;
    auto dout = r.uniform_vec(rows * ld_out);
    float* in = env.upload(io.buf);
    auto* grad = static_cast<float*>(env.alloc(io.buf.size() * 4));
    Env::check(realn_op_swiglu_bwd(env.stream(), REALN_DTYPE_F32, in, in + io.up_off, io.ld_in,
                                   env.upload(dout), ld_out, grad, grad + io.up_off, rows, cols));
    auto gd = env.download(grad, io.buf.size());
    Vec B = to_double(io.buf);
    std::vector<float> got;
    Vec ref;
    for (int64_t i = 0; i < rows; ++i)
        for (int64_t j = 0; j < cols; ++j) {
            const size_t gi = i * io.ld_in + j, ui = io.up_off + gi;
            auto f = [&] { return silu(B[gi]) * B[ui] * dout[i * ld_out + j]; };
            got.push_back(gd[gi]), ref.push_back(cdiff(B, gi, f));
            got.push_back(gd[ui]), ref.push_back(cdiff(B, ui, f));
        }
    return {rel_err(got, ref), ""};
}

// ---------------------------------------------------------------- logprobs
struct LpRef {
    double lse, logp, ent;
};
LpRef logprobs_row_ref(const double* x, const uint8_t* mk, int32_t label, int64_t vocab, double t) {
    double m = -INFINITY;
    for (int64_t j = 0; j < vocab; ++j)
        if (!mk || mk[j]) m = std::max(m, x[j] / t);
    double s = 0;
    for (int64_t j = 0; j < vocab; ++j)
        if (!mk || mk[j]) s += std::exp(x[j] / t - m);
    const double lse = m + std::log(s);
    double ent = 0;
    for (int64_t j = 0; j < vocab; ++j)
        if (!mk || mk[j]) {
            const double lp = x[j] / t - lse;
            ent -= std::exp(lp) * lp;
        }
    const double logp = (mk && !mk[label]) ? -INFINITY : x[label] / t - lse;
    return {lse, logp, ent};
}

struct LpInputs {
    std::vector<float> logits;
    std::vector<int32_t> labels;
    std::vector<uint8_t> mask;  // empty = no mask
};
LpInputs logprobs_inputs(Rng& r, int64_t rows, int64_t vocab, bool masked, float scale) {
    LpInputs in;
    in.logits = r.normal_vec(rows * vocab, scale);
    in.labels.resize(rows);
    for (auto& l : in.labels) l = r.integer(0, int32_t(vocab - 1));
    if (masked) {
        in.mask.resize(rows * vocab);
        for (auto& m : in.mask) m = r.integer(0, 2) != 0;  // ~2/3 allowed
        for (int64_t i = 0; i < rows; ++i) in.mask[i * vocab + in.labels[i]] = 1;
    }
    return in;
}

Outcome logprobs_fwd_case(Env& env, int64_t rows, int64_t vocab, float temp, bool masked,
                          bool want_entropy, bool masked_label_row) {
    Rng& r = env.rng();
    auto in = logprobs_inputs(r, rows, vocab, masked, 3.0f);
    if (masked_label_row) in.mask[in.labels[0]] = 0;  // row 0: label masked out => logp = -inf
    const uint8_t* mk = masked ? env.upload(in.mask) : nullptr;
    auto* lp = static_cast<float*>(env.alloc(rows * 4));
    auto* ent = want_entropy ? static_cast<float*>(env.alloc(rows * 4)) : nullptr;
    auto* lse = static_cast<float*>(env.alloc(rows * 4));
    float* dl = env.upload(in.logits);
    int32_t* dlab = env.upload(in.labels);
    Env::check(realn_op_logprobs_fwd(env.stream(), REALN_DTYPE_F32, dl, dlab, mk, rows, vocab, temp,
                                     lp, ent, lse));
    Vec X = to_double(in.logits), rl(rows), rp(rows), re(rows);
    for (int64_t i = 0; i < rows; ++i) {
        auto o = logprobs_row_ref(&X[i * vocab], masked ? &in.mask[i * vocab] : nullptr, in.labels[i], vocab, temp);
        rl[i] = o.lse, rp[i] = o.logp, re[i] = o.ent;
    }
    double e = worst({rel_err(env.download(lp, rows), rp), rel_err(env.download(lse, rows), rl)});
    if (want_entropy) e = worst({e, rel_err(env.download(ent, rows), re)});
    Outcome o{e, ""};
    if (rows == 1) {  // argument checks: label out of range, temperature <= 0
        std::vector<int32_t> bad{int32_t(vocab)};
        Outcome a = expect_invalid(realn_op_logprobs_fwd(env.stream(), REALN_DTYPE_F32, dl, env.upload(bad),
                                                         mk, rows, vocab, temp, lp, ent, lse), "label == vocab");
        Outcome b = expect_invalid(realn_op_logprobs_fwd(env.stream(), REALN_DTYPE_F32, dl, dlab, mk, rows,
                                                         vocab, 0.0f, lp, ent, lse), "temperature 0");
        o.max_rel_err = worst({o.max_rel_err, a.max_rel_err, b.max_rel_err});
        o.note = a.note + b.note;
    }
    return o;
}

// FD entries of a [rows, vocab] gradient: all of them when small, else every label entry plus
// `sample` random entries per row.
std::vector<int64_t> fd_entries(Rng& r, int64_t rows, int64_t vocab, const std::vector<int32_t>& labels,
                                int64_t sample) {
    std::vector<int64_t> idx;
    for (int64_t i = 0; i < rows; ++i) {
        if (vocab <= sample) {
            for (int64_t j = 0; j < vocab; ++j) idx.push_back(i * vocab + j);
            continue;
        }
        // The label's entry, where the row has one: an ignored row's label (e.g. -100) is no column,
        // and i * vocab + label would index another row, or before the buffer for row 0.
        if (labels[i] >= 0 && labels[i] < vocab) idx.push_back(i * vocab + labels[i]);
        for (int64_t k = 0; k < sample; ++k) idx.push_back(i * vocab + r.integer(0, int32_t(vocab - 1)));
    }
    return idx;
}

// masked_label: row 0's label is masked out; its logp is then the constant -inf minus lse, so its
// gradient is that of -dlogp * lse (+ the entropy term): the reference differentiates exactly that.
Outcome logprobs_bwd_case(Env& env, int64_t rows, int64_t vocab, float temp, bool masked,
                          bool with_entropy, bool masked_label) {
    Rng& r = env.rng();
    auto in = logprobs_inputs(r, rows, vocab, masked, 2.0f);
    if (masked_label) in.mask[in.labels[0]] = 0;
    auto dlogp = r.uniform_vec(rows), dent = r.uniform_vec(rows);
    const uint8_t* mk = masked ? env.upload(in.mask) : nullptr;
    float* dl = env.upload(in.logits);
    int32_t* dlab = env.upload(in.labels);
    auto* lp = static_cast<float*>(env.alloc(rows * 4));
    auto* lse = static_cast<float*>(env.alloc(rows * 4));
    Env::check(realn_op_logprobs_fwd(env.stream(), REALN_DTYPE_F32, dl, dlab, mk, rows, vocab, temp,
                                     lp, nullptr, lse));
    float* grad = env.upload(r.uniform_vec(rows * vocab));  // overwritten
    Env::check(realn_op_logprobs_bwd(env.stream(), REALN_DTYPE_F32, dl, dlab, mk, rows, vocab, temp,
                                     lse, env.upload(dlogp), with_entropy ? env.upload(dent) : nullptr,
                                     grad));
    auto g = env.download(grad, rows * vocab);
    Vec X = to_double(in.logits);
    std::vector<float> got;
    Vec ref;
    for (int64_t idx : fd_entries(r, rows, vocab, in.labels, 150)) {
        const int64_t i = idx / vocab;
        const uint8_t* m = masked ? &in.mask[i * vocab] : nullptr;
        got.push_back(g[idx]);
        ref.push_back(cdiff(X, idx, [&] {
            auto o = logprobs_row_ref(&X[i * vocab], m, in.labels[i], vocab, temp);
            const double lp = (masked_label && i == 0) ? -o.lse : o.logp;
            return dlogp[i] * lp + (with_entropy ? dent[i] * o.ent : 0.0);
        }));
    }
    return {rel_err(got, ref), ""};
}

// ---------------------------------------------------------------- cross-entropy
std::vector<int32_t> ce_labels(Rng& r, int64_t rows, int64_t vocab, int32_t ignore, int ignore_every) {
    std::vector<int32_t> l(rows);
    for (auto& v : l) v = r.integer(0, int32_t(vocab - 1));
    if (ignore_every > 0)
        for (int64_t i = 0; i < rows; ++i)
            if (r.integer(0, ignore_every - 1) == 0) l[i] = ignore;
    return l;
}

double ce_row_ref(const double* x, int64_t vocab, int32_t label, double* lse_out) {
    double m = -INFINITY, s = 0;
    for (int64_t j = 0; j < vocab; ++j) m = std::max(m, x[j]);
    for (int64_t j = 0; j < vocab; ++j) s += std::exp(x[j] - m);
    const double lse = m + std::log(s);
    if (lse_out) *lse_out = lse;
    return lse - x[label];
}

Outcome cross_entropy_fwd_case(Env& env, int64_t rows, int64_t vocab, int32_t ignore, int ignore_every) {
    Rng& r = env.rng();
    auto x = r.normal_vec(rows * vocab, 3.0f);
    auto labels = ce_labels(r, rows, vocab, ignore, ignore_every);
    auto* loss = static_cast<float*>(env.alloc(rows * 4));
    auto* lse = static_cast<float*>(env.alloc(rows * 4));
    double mean = -1;
    float* dx = env.upload(x);
    Env::check(realn_op_cross_entropy_fwd(env.stream(), REALN_DTYPE_F32, dx, env.upload(labels), rows,
                                          vocab, ignore, loss, lse, &mean));
    Vec X = to_double(x), rl(rows, 0.0), rs(rows, 0.0);
    double sum = 0;
    int64_t cnt = 0;
    for (int64_t i = 0; i < rows; ++i) {
        if (labels[i] == ignore) continue;
        rl[i] = ce_row_ref(&X[i * vocab], vocab, labels[i], &rs[i]);
        sum += rl[i], ++cnt;
    }
    const double rmean = cnt ? sum / cnt : 0.0;
    const double emean = rmean == 0.0 ? std::fabs(mean) : std::fabs(mean - rmean) / std::fabs(rmean);
    Outcome o{worst({rel_err(env.download(loss, rows), rl), rel_err(env.download(lse, rows), rs), emean}), ""};
    if (rows == 1) {  // a label outside [0, vocab) that is not ignore_index is rejected
        std::vector<int32_t> bad{-1};
        Outcome a = expect_invalid(realn_op_cross_entropy_fwd(env.stream(), REALN_DTYPE_F32, dx, env.upload(bad),
                                                              rows, vocab, -100, loss, lse, &mean), "label -1");
        o.max_rel_err = worst({o.max_rel_err, a.max_rel_err});
        o.note = a.note;
    }
    return o;
}

Outcome cross_entropy_bwd_case(Env& env, int64_t rows, int64_t vocab, int32_t ignore, int ignore_every) {
    Rng& r = env.rng();
    auto x = r.normal_vec(rows * vocab, 2.0f);
    auto labels = ce_labels(r, rows, vocab, ignore, ignore_every);
    int64_t cnt = 0;
    for (auto l : labels) cnt += l != ignore;
    const float scale = cnt ? 1.0f / float(cnt) : 1.0f;
    float* dx = env.upload(x);
    int32_t* dlab = env.upload(labels);
    auto* loss = static_cast<float*>(env.alloc(rows * 4));
    auto* lse = static_cast<float*>(env.alloc(rows * 4));
    double mean;
    Env::check(realn_op_cross_entropy_fwd(env.stream(), REALN_DTYPE_F32, dx, dlab, rows, vocab, ignore,
                                          loss, lse, &mean));
    float* grad = env.upload(r.uniform_vec(rows * vocab));  // overwritten, ignored rows too
    Env::check(realn_op_cross_entropy_bwd(env.stream(), REALN_DTYPE_F32, dx, dlab, rows, vocab, ignore,
                                          lse, scale, grad));
    auto g = env.download(grad, rows * vocab);
    Vec X = to_double(x);
    std::vector<float> got;
    Vec ref;
    for (int64_t idx : fd_entries(r, rows, vocab, labels, 100)) {
        const int64_t i = idx / vocab;
        got.push_back(g[idx]);
        if (labels[i] == ignore) {
            ref.push_back(0.0);
            continue;
        }
        ref.push_back(cdiff(X, idx, [&] { return scale * ce_row_ref(&X[i * vocab], vocab, labels[i], nullptr); }));
    }
    // Ignored rows are zero everywhere, not just at the sampled entries.
    for (int64_t i = 0; i < rows; ++i)
        if (labels[i] == ignore)
            for (int64_t j = 0; j < vocab; ++j) got.push_back(g[i * vocab + j]), ref.push_back(0.0);
    return {rel_err(got, ref), ""};
}

}  // namespace

void add_rowwise_cases() {
    // embedding: (n, vocab, hidden, vocab_start); a second shard (vocab_start > 0) sees ids of
    // other shards; the large case runs the threaded column split.
    for (auto [n, v, h, vs] : {std::tuple{37, 50, 24, 0}, std::tuple{1, 7, 5, 0}, std::tuple{64, 30, 130, 20},
                               std::tuple{300, 64, 520, 32}}) {
        const auto shape = concat_shape("n=", n, " vocab=", v, " hidden=", h, " vocab_start=", vs);
        add_case({"embedding_fwd", shape, 0.0, [=](Env& e) { return embedding_fwd_case(e, n, v, h, vs); }});
        add_case({"embedding_bwd", shape, kTolGrad, [=](Env& e) { return embedding_bwd_case(e, n, v, h, vs); }});
    }
    // rmsnorm: single row, odd dims, one threaded shape, a real hidden size.
    for (auto [rows, dim, rstd] : {std::tuple{1, 1, true}, std::tuple{7, 33, true}, std::tuple{3, 130, false},
                                   std::tuple{64, 4096, true}}) {
        add_case({"rmsnorm_fwd", concat_shape("rows=", rows, " dim=", dim, rstd ? "" : " rstd=NULL"), kTolF32,
                  [=](Env& e) { return rmsnorm_fwd_case(e, rows, dim, 1e-5f, rstd); }});
    }
    for (auto [rows, dim] : {std::tuple{1, 7}, std::tuple{5, 33}, std::tuple{3, 130}, std::tuple{40, 420}}) {
        add_case({"rmsnorm_bwd", concat_shape("rows=", rows, " dim=", dim), kTolGrad,
                  [=](Env& e) { return rmsnorm_bwd_case(e, rows, dim, 1e-6f); }});
    }
    // rotary: (tokens, heads, head_dim, rot_dim, theta, max start position, in place).
    struct R { int64_t t, h, hd, rot; float theta; int32_t start; bool inplace; };
    for (R c : {R{1, 1, 2, 2, 10000.0f, 5, false}, R{9, 2, 12, 6, 10000.0f, 0, false},
                R{33, 3, 16, 16, 10000.0f, 100, true}, R{200, 8, 64, 64, 500000.0f, 4000, false},
                R{64, 4, 128, 64, 10000.0f, 30000, true}}) {
        const auto shape = concat_shape("tokens=", c.t, " heads=", c.h, " head_dim=", c.hd, " rot=", c.rot,
                                        " theta=", c.theta, " pos<=", c.start + 40, c.inplace ? " in-place" : "");
        add_case({"rotary_fwd", shape, kTolF32,
                  [=](Env& e) { return rotary_fwd_case(e, c.t, c.h, c.hd, c.rot, c.theta, c.start, c.inplace, false); }});
        add_case({"rotary_bwd", shape, kTolGrad,
                  [=](Env& e) { return rotary_bwd_case(e, c.t, c.h, c.hd, c.rot, c.theta, c.start, c.inplace, false); }});
        // The freqs form (a per-pair table, as LLaMA 3.1's scaling makes) on the same shapes.
        add_case({"rotary_freqs_fwd", shape + " scaled table", kTolF32,
                  [=](Env& e) { return rotary_fwd_case(e, c.t, c.h, c.hd, c.rot, c.theta, c.start, c.inplace, true); }});
        add_case({"rotary_freqs_bwd", shape + " scaled table", kTolGrad,
                  [=](Env& e) { return rotary_bwd_case(e, c.t, c.h, c.hd, c.rot, c.theta, c.start, c.inplace, true); }});
    }
    for (auto [t, h, hd, rot, scaled] : {std::tuple{96, 3, 16, 16, false}, std::tuple{160, 2, 24, 16, true}}) {
        add_case({"rotary_fwd", concat_shape("tokens=", t, " heads=", h, " head_dim=", hd, " rot=", rot,
                                             " sequences from 0, whole call = one call per token", scaled ? ", scaled table" : ""),
                  0.0, [=](Env& e) { return rotary_rows_case(e, t, h, hd, rot, scaled); }});
    }
    // swiglu: (rows, cols, fused gate|up layout).
    for (auto [rows, cols, fused] : {std::tuple{1, 1, false}, std::tuple{7, 33, true}, std::tuple{5, 19, false},
                                     std::tuple{48, 700, true}}) {
        const auto shape = concat_shape("rows=", rows, " cols=", cols, fused ? " fused" : " separate");
        add_case({"swiglu_fwd", shape, kTolF32, [=](Env& e) { return swiglu_fwd_case(e, rows, cols, fused); }});
        add_case({"swiglu_bwd", shape, kTolGrad, [=](Env& e) { return swiglu_bwd_case(e, rows, cols, fused); }});
    }
    // logprobs fwd: (rows, vocab, temperature, mask, entropy, row 0 with a masked-out label).
    struct L { int64_t rows, vocab; float temp; bool mask, ent, masked_label; };
    for (L c : {L{1, 1, 1.0f, false, true, false}, L{1, 37, 0.7f, true, true, false},
                L{5, 37, 1.0f, false, true, false}, L{6, 100, 0.7f, true, true, true},
                L{17, 1000, 1.3f, true, false, false}, L{3, 50304, 1.0f, false, true, false},
                L{4, 50304, 0.9f, true, true, false}}) {
        add_case({"logprobs_fwd",
                  concat_shape("rows=", c.rows, " vocab=", c.vocab, " T=", c.temp, c.mask ? " mask" : "",
                               c.ent ? " entropy" : "", c.masked_label ? " masked-label" : ""),
                  kTolF32, [=](Env& e) { return logprobs_fwd_case(e, c.rows, c.vocab, c.temp, c.mask, c.ent, c.masked_label); }});
    }
    for (L c : {L{1, 1, 1.0f, false, true, false}, L{4, 50, 1.0f, false, false, false},
                L{3, 64, 0.6f, true, true, false}, L{4, 90, 1.2f, true, true, true}, L{5, 200, 1.7f, false, true, false},
                L{9, 4100, 0.8f, true, true, false}, L{2, 50304, 1.0f, false, false, false}}) {
        add_case({"logprobs_bwd",
                  concat_shape("rows=", c.rows, " vocab=", c.vocab, " T=", c.temp, c.mask ? " mask" : "",
                               c.ent ? " entropy" : "", c.masked_label ? " masked-label" : ""),
                  kTolGrad, [=](Env& e) { return logprobs_bwd_case(e, c.rows, c.vocab, c.temp, c.mask, c.ent, c.masked_label); }});
    }
    // cross-entropy: (rows, vocab, ignore_index, ~1/k rows ignored; 0 = none, 1 = all).
    struct C { int64_t rows, vocab; int32_t ignore; int every; };
    for (C c : {C{1, 1, -100, 0}, C{1, 9, -100, 0}, C{7, 33, -100, 3}, C{5, 40, 3, 2}, C{4, 20, -100, 1},
                C{12, 50304, -100, 4}}) {
        const auto shape = concat_shape("rows=", c.rows, " vocab=", c.vocab, " ignore=", c.ignore,
                                        c.every == 0 ? "" : c.every == 1 ? " all-ignored" : " some-ignored");
        add_case({"cross_entropy_fwd", shape, kTolF32,
                  [=](Env& e) { return cross_entropy_fwd_case(e, c.rows, c.vocab, c.ignore, c.every); }});
        add_case({"cross_entropy_bwd", shape, kTolGrad,
                  [=](Env& e) { return cross_entropy_bwd_case(e, c.rows, c.vocab, c.ignore, c.every); }});
    }
}

}  // namespace realn::testing
