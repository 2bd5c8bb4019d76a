// ctest `cuda_kernels_emulated`: the CUDA backend's kernels (native/cuda/kernels/*.cu: attention,
// KV cache, losses, and the row-wise, elementwise, optimizer and interval ones), compiled as host C++ and run on the CPU emulator (cuda_emulator.hpp),
// with the backend's own host work lists (native/cuda/host_plans.hpp), against the CPU backend's
// ops through the public ABI on random inputs (the CPU ops are themselves checked against float64
// references by the case list). This checks the kernels' logic - indexing, causal/GQA masking,
// tiles across sequence boundaries, online softmax, barrier placement, reductions - where no GPU
// is available; it says nothing about speed or the GPU's approximate exp/log (see common.cuh).
// Built with ThreadSanitizer where available (native/tests/CMakeLists.txt), so a missing or
// misplaced barrier shows up as a data race on the block's shared memory and fails the test.
#include <algorithm>
#include <chrono>
#include <functional>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "cuda_emulator.hpp"
#define REALN_CUDA_EMULATE 1
#include "../cuda/host_plans.hpp"
#include "../cuda/kernels/attention.cu"
#include "../cuda/kernels/kv_cache.cu"
#include "../cuda/kernels/losses.cu"
#include "../cuda/kernels/elementwise.cu"
#include "../cuda/kernels/interval.cu"
#include "../cuda/kernels/optim.cu"
#include "../cuda/kernels/rowwise.cu"
#include "realn.h"

namespace {

int failures = 0;

void check(realn_status st, const char* what) {
    if (st != REALN_OK) {
        std::printf("FAIL: %s: %s\n", what, realn_last_error());
        ++failures;
    }
}

// max|out - ref| / max|ref|; infinite if out is non-finite where ref is finite, or -inf is not matched.
double rel_err(const std::vector<float>& out, const std::vector<float>& ref) {
    double max_ref = 0, max_diff = 0;
    for (size_t i = 0; i < out.size(); ++i) {
        if (!std::isfinite(ref[i])) {
            if (!(out[i] == ref[i])) return INFINITY;
            continue;
        }
        if (!std::isfinite(out[i])) return INFINITY;
        max_ref = std::max(max_ref, std::fabs(double(ref[i])));
        max_diff = std::max(max_diff, std::fabs(double(out[i]) - double(ref[i])));
    }
    return max_ref > 0 ? max_diff / max_ref : max_diff;
}

void expect_close(const char* what, const std::string& shape, const std::vector<float>& out, const std::vector<float>& ref,
                  double tol) {
    const double e = rel_err(out, ref);
    const bool ok = e <= tol;
    std::printf("%s %s %s: rel err %.3g (tol %.0e)\n", ok ? "ok  " : "FAIL", what, shape.c_str(), e, tol);
    if (!ok) ++failures;
}

std::mt19937_64 gen(20261203);
std::vector<float> uniform(int64_t n, float lo = -1.0f, float hi = 1.0f) {
    std::uniform_real_distribution<float> u(lo, hi);
    std::vector<float> v(static_cast<size_t>(n));
    for (auto& x : v) x = u(gen);
    return v;
}

realn_stream_t cpu_stream() {
    static realn_stream_t s = [] {
        realn_stream_t st = nullptr;
        check(realn_stream_create(REALN_BACKEND_CPU, 0, &st), "cpu stream");
        return st;
    }();
    return s;
}

void attention_case(const std::vector<int>& lens, int64_t hq, int64_t hkv, int64_t d) {
    std::vector<int32_t> cu{0};
    for (int l : lens) cu.push_back(cu.back() + l);
    const int64_t T = cu.back(), nseq = static_cast<int64_t>(lens.size());
    const float scale = 1.0f / std::sqrt(float(d));
    std::string shape = "lens=";
    for (size_t i = 0; i < lens.size(); ++i) shape += (i ? "," : "") + std::to_string(lens[i]);
    shape += " hq=" + std::to_string(hq) + " hkv=" + std::to_string(hkv) + " d=" + std::to_string(d);
    const auto q = uniform(T * hq * d, -2, 2), k = uniform(T * hkv * d, -2, 2), v = uniform(T * hkv * d);
    const auto dout = uniform(T * hq * d);

    std::vector<float> out_ref(q.size()), lse_ref(static_cast<size_t>(T * hq));
    check(realn_op_attention_fwd(cpu_stream(), REALN_DTYPE_F32, q.data(), k.data(), v.data(), cu.data(), nseq, T, hq, hkv, d,
                                 scale, out_ref.data(), lse_ref.data()),
          "cpu attention_fwd");
    std::vector<float> dq_ref(q.size()), dk_ref(k.size()), dv_ref(v.size());
    check(realn_op_attention_bwd(cpu_stream(), REALN_DTYPE_F32, q.data(), k.data(), v.data(), out_ref.data(), lse_ref.data(),
                                 dout.data(), cu.data(), nseq, T, hq, hkv, d, scale, dq_ref.data(), dk_ref.data(),
                                 dv_ref.data()),
          "cpu attention_bwd");

    const std::vector<int32_t> tiles = realn::cuda::attention_tiles(cu.data(), nseq);
    const unsigned ntiles = static_cast<unsigned>(tiles.size() / 3), threads = realn::cuda::kAttentionThreads;
    static_assert(realn::cuda::kAttentionDkvSmem <= 24 * 1024 * 4 && realn::cuda::kAttentionDqSmem <= 24 * 1024 * 4,
                  "the emulator's dynamic shared memory (common.cuh) holds the attention kernels' tiles");
    std::vector<float> out(q.size(), NAN), lse(lse_ref.size(), NAN);
    realn::emu::launch(ntiles, static_cast<unsigned>(hq), threads, [&] {
        realn_attention_fwd(q.data(), k.data(), v.data(), tiles.data(), hq, hkv, d, scale, out.data(), lse.data());
    });
    expect_close("attention_fwd out", shape, out, out_ref, 2e-5);
    expect_close("attention_fwd lse", shape, lse, lse_ref, 2e-5);

    std::vector<float> delta(lse.size(), NAN), dq(q.size(), NAN), dk(k.size(), NAN), dv(v.size(), NAN);
    const int64_t rows = T * hq;
    realn::emu::launch(static_cast<unsigned>((rows + realn::cuda::kAttentionDeltaWarps - 1) / realn::cuda::kAttentionDeltaWarps), 1,
                       realn::cuda::kAttentionDeltaWarps * 32,
                       [&] { realn_attention_bwd_delta(out.data(), dout.data(), rows, d, delta.data()); });
    realn::emu::launch(ntiles, static_cast<unsigned>(hq), threads, [&] {
        realn_attention_bwd_dq(q.data(), k.data(), v.data(), lse.data(), dout.data(), delta.data(), tiles.data(), hq, hkv, d,
                               scale, dq.data());
    });
    realn::emu::launch(ntiles, static_cast<unsigned>(hkv), threads, [&] {
        realn_attention_bwd_dkv(q.data(), k.data(), v.data(), lse.data(), dout.data(), delta.data(), tiles.data(), hq, hkv, d,
                                scale, dk.data(), dv.data());
    });
    expect_close("attention_bwd dq", shape, dq, dq_ref, 1e-4);
    expect_close("attention_bwd dk", shape, dk, dk_ref, 1e-4);
    expect_close("attention_bwd dv", shape, dv, dv_ref, 1e-4);
}

// kv_store (bit-exact, repeated cells: the later token wins) and decode against the CPU backend,
// for an fp32 and a bf16 cache.
void kv_cache_case(bool bf16, const std::vector<int>& lens, int64_t hq, int64_t hkv, int64_t d) {
    const int64_t B = static_cast<int64_t>(lens.size()), max_len = *std::max_element(lens.begin(), lens.end()) + 2;
    const int64_t num_slots = B + 1, row = hkv * d, cache_n = num_slots * max_len * row;
    std::vector<int32_t> slot_of(static_cast<size_t>(B)), tok_slot, tok_pos;
    for (int64_t b = 0; b < B; ++b) slot_of[b] = static_cast<int32_t>((b * 7 + 1) % num_slots);
    for (int64_t b = 0; b < B; ++b)
        for (int p = 0; p < lens[b]; ++p) {
            tok_slot.push_back(slot_of[b]);
            tok_pos.push_back(p);
        }
    tok_slot.push_back(tok_slot.front());  // a repeated cell: this later token's row must win
    tok_pos.push_back(tok_pos.front());
    const int64_t T = static_cast<int64_t>(tok_slot.size());
    const auto kin = uniform(T * row, -3, 3), vin = uniform(T * row, -3, 3);
    const int32_t dtype = bf16 ? REALN_DTYPE_BF16 : REALN_DTYPE_F32;
    const size_t esize = bf16 ? 2 : 4;
    const auto junk = uniform(cache_n * 2, -3, 3);  // the cache starts full of random values
    std::vector<unsigned char> kc_ref(cache_n * esize), vc_ref(cache_n * esize);
    std::memcpy(kc_ref.data(), junk.data(), kc_ref.size());
    std::memcpy(vc_ref.data(), junk.data() + cache_n, vc_ref.size());
    if (bf16)  // junk bytes read as bf16 may be NaN: make every cache entry a finite bf16
        for (size_t i = 0; i < kc_ref.size(); i += 2) kc_ref[i + 1] = vc_ref[i + 1] = 0x3f;
    auto kc = kc_ref, vc = vc_ref;
    check(realn_op_kv_store(cpu_stream(), dtype, kin.data(), vin.data(), tok_slot.data(), tok_pos.data(), T, kc_ref.data(),
                            vc_ref.data(), num_slots, max_len, hkv, d),
          "cpu kv_store");
    const realn::cuda::KvStorePlan plan = realn::cuda::kv_store_plan(tok_slot.data(), tok_pos.data(), T, max_len);
    const int64_t items = static_cast<int64_t>(plan.dst_row.size());
    realn::emu::launch(4, 1, 64, [&] {
        if (bf16)
            realn_kv_store_bf16(kin.data(), vin.data(), plan.src_token.data(), reinterpret_cast<const i64*>(plan.dst_row.data()),
                                items, row, reinterpret_cast<u16*>(kc.data()), reinterpret_cast<u16*>(vc.data()));
        else
            realn_kv_store_f32(kin.data(), vin.data(), plan.src_token.data(), reinterpret_cast<const i64*>(plan.dst_row.data()),
                               items, row, reinterpret_cast<float*>(kc.data()), reinterpret_cast<float*>(vc.data()));
    });
    const std::string shape = std::string(bf16 ? "bf16" : "f32") + " B=" + std::to_string(B) + " hq=" + std::to_string(hq) +
                              " hkv=" + std::to_string(hkv) + " d=" + std::to_string(d);
    const bool same = kc == kc_ref && vc == vc_ref;
    std::printf("%s kv_store %s: %s\n", same ? "ok  " : "FAIL", shape.c_str(), same ? "bit-exact" : "differs");
    if (!same) ++failures;

    const auto q = uniform(B * hq * d, -2, 2);
    std::vector<int32_t> dlens(lens.begin(), lens.end());
    const float scale = 1.0f / std::sqrt(float(d));
    std::vector<float> out_ref(q.size()), out(q.size(), NAN);
    check(realn_op_attention_decode(cpu_stream(), dtype, q.data(), kc_ref.data(), vc_ref.data(), slot_of.data(), dlens.data(), B,
                                    num_slots, max_len, hq, hkv, d, scale, out_ref.data()),
          "cpu attention_decode");
    realn::emu::launch(static_cast<unsigned>(B), static_cast<unsigned>(hq), 256, [&] {
        if (bf16)
            realn_attention_decode_bf16(q.data(), reinterpret_cast<const u16*>(kc.data()), reinterpret_cast<const u16*>(vc.data()),
                                        slot_of.data(), dlens.data(), max_len, hq, hkv, d, scale, out.data());
        else
            realn_attention_decode_f32(q.data(), reinterpret_cast<const float*>(kc.data()),
                                       reinterpret_cast<const float*>(vc.data()), slot_of.data(), dlens.data(), max_len, hq, hkv,
                                       d, scale, out.data());
    });
    expect_close("attention_decode", shape, out, out_ref, 2e-5);
}

void logprobs_case(int64_t rows, int64_t vocab, float temp, bool masked, bool entropy) {
    const auto x = uniform(rows * vocab, -4, 4);
    std::vector<int32_t> labels(static_cast<size_t>(rows));
    std::uniform_int_distribution<int32_t> pick(0, static_cast<int32_t>(vocab - 1));
    for (auto& l : labels) l = pick(gen);
    std::vector<uint8_t> mask;
    if (masked) {
        mask.resize(static_cast<size_t>(rows * vocab));
        for (auto& m : mask) m = pick(gen) % 3 != 0;
        for (int64_t r = 0; r < rows; ++r) mask[r * vocab + labels[r]] = 1;
        mask[labels[0]] = 0;                                              // row 0: a masked-out label
        if (rows > 2) std::fill(mask.begin() + 2 * vocab, mask.begin() + 3 * vocab, 0);  // row 2: nothing allowed
    }
    const uint8_t* mk = masked ? mask.data() : nullptr;
    const std::string shape = "rows=" + std::to_string(rows) + " vocab=" + std::to_string(vocab) + " T=" + std::to_string(temp) +
                              (masked ? " masked" : "") + (entropy ? " entropy" : "");
    std::vector<float> lp_ref(rows), h_ref(rows), lse_ref(rows), lp(rows, NAN), h(rows, NAN), lse(rows, NAN);
    check(realn_op_logprobs_fwd(cpu_stream(), REALN_DTYPE_F32, x.data(), labels.data(), mk, rows, vocab, temp, lp_ref.data(),
                                entropy ? h_ref.data() : nullptr, lse_ref.data()),
          "cpu logprobs_fwd");
    realn::emu::launch(static_cast<unsigned>(rows), 1, 256, [&] {
        realn_logprobs_fwd(x.data(), labels.data(), mk, rows, vocab, 1.0f / temp, lp.data(), entropy ? h.data() : nullptr,
                           lse.data());
    });
    expect_close("logprobs_fwd logp", shape, lp, lp_ref, 2e-5);
    expect_close("logprobs_fwd lse", shape, lse, lse_ref, 2e-5);
    if (entropy) expect_close("logprobs_fwd entropy", shape, h, h_ref, 2e-5);

    const auto dlogp = uniform(rows), dent = uniform(rows);
    std::vector<float> g_ref(x.size()), g(x.size(), NAN);
    check(realn_op_logprobs_bwd(cpu_stream(), REALN_DTYPE_F32, x.data(), labels.data(), mk, rows, vocab, temp, lse_ref.data(),
                                dlogp.data(), entropy ? dent.data() : nullptr, g_ref.data()),
          "cpu logprobs_bwd");
    realn::emu::launch(static_cast<unsigned>(rows), 1, 256, [&] {
        realn_logprobs_bwd(x.data(), labels.data(), mk, rows, vocab, 1.0f / temp, lse.data(), dlogp.data(),
                           entropy ? dent.data() : nullptr, g.data());
    });
    expect_close("logprobs_bwd", shape, g, g_ref, 2e-5);
}

void cross_entropy_case(int64_t rows, int64_t vocab) {
    const auto x = uniform(rows * vocab, -4, 4);
    std::vector<int32_t> labels(static_cast<size_t>(rows));
    std::uniform_int_distribution<int32_t> pick(0, static_cast<int32_t>(vocab - 1));
    for (auto& l : labels) l = pick(gen);
    const int32_t ignore = -100;
    labels[1] = ignore;
    const std::string shape = "rows=" + std::to_string(rows) + " vocab=" + std::to_string(vocab);
    std::vector<float> loss_ref(rows), lse_ref(rows), loss(rows, NAN), lse(rows, NAN);
    double mean = 0;
    check(realn_op_cross_entropy_fwd(cpu_stream(), REALN_DTYPE_F32, x.data(), labels.data(), rows, vocab, ignore, loss_ref.data(),
                                     lse_ref.data(), &mean),
          "cpu cross_entropy_fwd");
    realn::emu::launch(static_cast<unsigned>(rows), 1, 256, [&] {
        realn_cross_entropy_fwd(x.data(), labels.data(), rows, vocab, ignore, loss.data(), lse.data());
    });
    expect_close("cross_entropy_fwd loss", shape, loss, loss_ref, 2e-5);
    expect_close("cross_entropy_fwd lse", shape, lse, lse_ref, 2e-5);
    std::vector<float> g_ref(x.size()), g(x.size(), NAN);
    check(realn_op_cross_entropy_bwd(cpu_stream(), REALN_DTYPE_F32, x.data(), labels.data(), rows, vocab, ignore, lse_ref.data(),
                                     0.25f, g_ref.data()),
          "cpu cross_entropy_bwd");
    realn::emu::launch(static_cast<unsigned>(rows), 1, 256, [&] {
        realn_cross_entropy_bwd(x.data(), labels.data(), rows, vocab, ignore, lse.data(), 0.25f, g.data());
    });
    expect_close("cross_entropy_bwd", shape, g, g_ref, 2e-5);
}


void expect_same(const char* what, const std::string& shape, const void* a, const void* b, size_t bytes) {
    const bool same = std::memcmp(a, b, bytes) == 0;
    std::printf("%s %s %s: %s\n", same ? "ok  " : "FAIL", what, shape.c_str(), same ? "bit-exact" : "differs");
    if (!same) ++failures;
}

// RMSNorm, SwiGLU (strided gate|up), rotary (a partial rotation), embedding (vocab-parallel, ids
// outside the shard), with small grids so the grid-stride loops wrap.
void rowwise_case() {
    const int64_t rows = 5, dim = 300;
    const auto x = uniform(rows * dim), w = uniform(dim), dy = uniform(rows * dim);
    std::vector<float> y_ref(x.size()), rs_ref(rows), y(x.size(), NAN), rs(rows, NAN);
    check(realn_op_rmsnorm_fwd(cpu_stream(), REALN_DTYPE_F32, x.data(), w.data(), y_ref.data(), rs_ref.data(), rows, dim, 1e-5f),
          "cpu rmsnorm_fwd");
    realn::emu::launch(static_cast<unsigned>(rows), 1, 128,
                       [&] { realn_rmsnorm_fwd(x.data(), w.data(), y.data(), rs.data(), rows, dim, 1e-5f); });
    const std::string shape = "rows=5 dim=300";
    expect_close("rmsnorm_fwd y", shape, y, y_ref, 2e-6);
    expect_close("rmsnorm_fwd rstd", shape, rs, rs_ref, 2e-6);
    const auto dw0 = uniform(dim);
    std::vector<float> dx_ref(x.size()), dw_ref = dw0, dx(x.size(), NAN), dw = dw0;
    check(realn_op_rmsnorm_bwd(cpu_stream(), REALN_DTYPE_F32, x.data(), w.data(), rs_ref.data(), dy.data(), dx_ref.data(),
                               dw_ref.data(), rows, dim),
          "cpu rmsnorm_bwd");
    realn::emu::launch(static_cast<unsigned>(rows), 1, 128,
                       [&] { realn_rmsnorm_bwd_dx(x.data(), w.data(), rs.data(), dy.data(), dx.data(), rows, dim); });
    realn::emu::launch(2, 1, 64, [&] { realn_rmsnorm_bwd_dw(x.data(), rs.data(), dy.data(), dw.data(), rows, dim); });
    expect_close("rmsnorm_bwd dx", shape, dx, dx_ref, 2e-6);
    expect_close("rmsnorm_bwd dw", shape, dw, dw_ref, 2e-6);

    const int64_t cols = 70, ld_in = 2 * cols + 3, ld_out = cols + 1;
    const auto gu = uniform(rows * ld_in, -4, 4), dout = uniform(rows * ld_out);
    std::vector<float> o_ref(rows * ld_out, 0), o(rows * ld_out, 0), dg_ref(gu.size(), 0), dg(gu.size(), 0);
    check(realn_op_swiglu_fwd(cpu_stream(), REALN_DTYPE_F32, gu.data(), gu.data() + cols, ld_in, o_ref.data(), ld_out, rows, cols),
          "cpu swiglu_fwd");
    check(realn_op_swiglu_bwd(cpu_stream(), REALN_DTYPE_F32, gu.data(), gu.data() + cols, ld_in, dout.data(), ld_out,
                              dg_ref.data(), dg_ref.data() + cols, rows, cols),
          "cpu swiglu_bwd");
    realn::emu::launch(2, 1, 64, [&] {
        realn_swiglu_fwd(gu.data(), gu.data() + cols, ld_in, o.data(), ld_out, rows, cols);
        realn_swiglu_bwd(gu.data(), gu.data() + cols, ld_in, dout.data(), ld_out, dg.data(), dg.data() + cols, rows, cols);
    });
    expect_close("swiglu_fwd", "rows=5 cols=70 strided", o, o_ref, 2e-6);
    expect_close("swiglu_bwd", "rows=5 cols=70 strided", dg, dg_ref, 2e-6);

    const int64_t tokens = 6, heads = 3, head_dim = 20, rot_dim = 12;
    const auto rx = uniform(tokens * heads * head_dim);
    std::vector<int32_t> pos{0, 1, 7, 100, 4095, 33};
    std::vector<double> inv_freq(rot_dim / 2);
    for (int64_t i = 0; i < rot_dim / 2; ++i) inv_freq[i] = std::pow(10000.0, -2.0 * double(i) / double(rot_dim));
    std::vector<float> ry_ref(rx.size()), ry(rx.size(), NAN);
    check(realn_op_rotary_freqs_fwd(cpu_stream(), REALN_DTYPE_F32, rx.data(), pos.data(), ry_ref.data(), tokens, heads, head_dim,
                                    rot_dim, inv_freq.data()),
          "cpu rotary");
    realn::emu::launch(2, 1, 64, [&] {
        realn_rotary(rx.data(), pos.data(), ry.data(), tokens, heads, head_dim, rot_dim, inv_freq.data(), 1.0f);
        realn_rotary_tail(rx.data(), ry.data(), tokens * heads, head_dim, rot_dim);
    });
    expect_close("rotary", "tokens=6 heads=3 head_dim=20 rot_dim=12", ry, ry_ref, 2e-6);

    const int64_t vocab = 11, hidden = 36, vs = 5, n = 9;
    std::vector<int32_t> ids{5, 6, 15, 0, 4, 16, 5, 10, 15};  // ids outside [5, 16) and repeats
    const auto table = uniform(vocab * hidden), gout = uniform(n * hidden), dt0 = uniform(vocab * hidden);
    std::vector<float> e_ref(n * hidden), e(n * hidden, NAN), dt_ref = dt0, dt = dt0;
    check(realn_op_embedding_fwd(cpu_stream(), REALN_DTYPE_F32, ids.data(), n, table.data(), vocab, hidden, vs, e_ref.data()),
          "cpu embedding_fwd");
    check(realn_op_embedding_bwd(cpu_stream(), REALN_DTYPE_F32, ids.data(), n, gout.data(), vocab, hidden, vs, dt_ref.data()),
          "cpu embedding_bwd");
    realn::emu::launch(2, 1, 64, [&] {
        realn_embedding_fwd(ids.data(), n, table.data(), vocab, hidden, vs, e.data());
        realn_embedding_bwd(ids.data(), n, gout.data(), vocab, hidden, vs, dt.data());
    });
    expect_same("embedding_fwd", "vocab=11 of [5, 16) hidden=36", e.data(), e_ref.data(), e.size() * 4);
    std::vector<uint16_t> table_bf16(table.size());
    check(realn_op_convert(cpu_stream(), REALN_DTYPE_BF16, table_bf16.data(), REALN_DTYPE_F32, table.data(), vocab * hidden),
          "cpu convert");
    check(realn_op_embedding_fwd(cpu_stream(), REALN_DTYPE_BF16, ids.data(), n, table_bf16.data(), vocab, hidden, vs, e_ref.data()),
          "cpu embedding_fwd bf16");
    realn::emu::launch(2, 1, 64, [&] { realn_embedding_fwd_bf16(ids.data(), n, table_bf16.data(), vocab, hidden, vs, e.data()); });
    expect_same("embedding_fwd", "bf16 table vocab=11 of [5, 16) hidden=36", e.data(), e_ref.data(), e.size() * 4);
    expect_close("embedding_bwd", "vocab=11 of [5, 16) hidden=36", dt, dt_ref, 2e-6);
}

// sumsq / count_nonfinite (partials then their sum), convert both ways, AdamW, GAE, interval
// gather/scatter (16-byte, 4-byte and byte paths).
void elementwise_case() {
    const int64_t n = 5000;
    auto x = uniform(n, -3, 3);
    x[17] = NAN;
    x[4000] = INFINITY;
    double ss_ref = 0;
    int64_t bad_ref = 0;
    std::vector<float> finite = x;
    finite[17] = finite[4000] = 0.5f;
    check(realn_op_sumsq(cpu_stream(), finite.data(), n, &ss_ref), "cpu sumsq");
    check(realn_op_count_nonfinite(cpu_stream(), x.data(), n, &bad_ref), "cpu count_nonfinite");
    const int blocks = 3;
    std::vector<double> partial(blocks, NAN), total(1, NAN), bad_partial(blocks, NAN), bad_total(1, NAN);
    realn::emu::launch(blocks, 1, 128, [&] {
        realn_sumsq_partial(finite.data(), n, partial.data());
        realn_nonfinite_partial(x.data(), n, bad_partial.data());
    });
    realn::emu::launch(1, 1, 64, [&] {
        realn_sum_partials(partial.data(), blocks, total.data());
        realn_sum_partials(bad_partial.data(), blocks, bad_total.data());
    });
    expect_close("sumsq", "n=5000", {float(total[0])}, {float(ss_ref)}, 1e-7);
    expect_close("count_nonfinite", "n=5000 (2 bad)", {float(bad_total[0])}, {float(bad_ref)}, 0);

    std::vector<uint16_t> h_ref(n), h(n);
    std::vector<float> back_ref(n), back(n);
    check(realn_op_convert(cpu_stream(), REALN_DTYPE_BF16, h_ref.data(), REALN_DTYPE_F32, x.data(), n), "cpu convert");
    check(realn_op_convert(cpu_stream(), REALN_DTYPE_F32, back_ref.data(), REALN_DTYPE_BF16, h_ref.data(), n), "cpu convert");
    realn::emu::launch(2, 1, 64, [&] { realn_f32_to_bf16(x.data(), h.data(), n); });
    realn::emu::launch(2, 1, 64, [&] { realn_bf16_to_f32(h.data(), back.data(), n); });
    expect_same("convert f32->bf16", "n=5000 with NaN, inf", h.data(), h_ref.data(), h.size() * 2);
    expect_same("convert bf16->f32", "n=5000", back.data(), back_ref.data(), back.size() * 4);
    {
        // f16 both ways against the CPU's _Float16: every 2^-13 step of the fp32 bit patterns from
        // 0 to inf (subnormal, normal, ties at each exponent, overflow), both signs, NaN; and
        // every one of the 65536 half bit patterns back to fp32 (NaNs compared as NaN).
        auto as_float = [](uint32_t u) { float f; std::memcpy(&f, &u, 4); return f; };
        auto as_bits = [](float f) { uint32_t u; std::memcpy(&u, &f, 4); return u; };
        std::vector<float> xs;
        for (uint64_t u = 0; u <= 0x7f800000u; u += 0x2001u)
            for (uint32_t sign : {0u, 0x80000000u}) xs.push_back(as_float(uint32_t(u) | sign));
        // At every exponent from below the subnormal range to above the largest half: the exact
        // ties (even and odd kept bit, for the normal and each subnormal rounding position) and
        // their neighbours.
        for (uint32_t e = 100; e <= 143; ++e)
            for (uint32_t shift = 13; shift <= 24; ++shift)
                for (uint32_t kept : {0u, 1u, 0x155u})
                    for (int32_t nudge : {-1, 0, 1}) {
                        const uint32_t man = ((kept << shift) | (1u << (shift - 1))) & 0x7fffffu;
                        xs.push_back(as_float((e << 23) | ((man + uint32_t(nudge)) & 0x7fffffu)));
                    }
        for (uint32_t u : {0x477fefffu, 0x477ff000u, 0x33000000u, 0x33000001u, 0x387fe000u, 0x387ff000u, 0x7fc00001u, 0xffa00000u})
            xs.push_back(as_float(u));
        const int64_t m = static_cast<int64_t>(xs.size());
        std::vector<uint16_t> f16_ref(m), f16(m);
        check(realn_op_convert(cpu_stream(), REALN_DTYPE_F16, f16_ref.data(), REALN_DTYPE_F32, xs.data(), m), "cpu convert f16");
        realn::emu::launch(4, 1, 64, [&] { realn_convert_any(xs.data(), REALN_DTYPE_F32, f16.data(), REALN_DTYPE_F16, m); });
        expect_same("convert f32->f16", "fp32 patterns 0..inf, both signs, ties, NaN", f16.data(), f16_ref.data(), m * 2);
        std::vector<uint16_t> all(65536);
        for (uint32_t i = 0; i < 65536; ++i) all[i] = uint16_t(i);
        std::vector<float> wide_ref(65536), wide(65536);
        check(realn_op_convert(cpu_stream(), REALN_DTYPE_F32, wide_ref.data(), REALN_DTYPE_F16, all.data(), 65536), "cpu convert");
        realn::emu::launch(4, 1, 64, [&] { realn_convert_any(all.data(), REALN_DTYPE_F16, wide.data(), REALN_DTYPE_F32, 65536); });
        int bad = 0;
        for (int i = 0; i < 65536; ++i)
            if (!(std::isnan(wide[i]) && std::isnan(wide_ref[i])) && as_bits(wide[i]) != as_bits(wide_ref[i]))
                ++bad;
        expect_close("convert f16->f32", "all 65536 half patterns (NaN as NaN)", {float(bad)}, {0.0f}, 0);
        // bf16 -> f16 through fp32, as the CPU backend.
        std::vector<uint16_t> hb(m), f16b_ref(m), f16b(m);
        check(realn_op_convert(cpu_stream(), REALN_DTYPE_BF16, hb.data(), REALN_DTYPE_F32, xs.data(), m), "cpu convert");
        check(realn_op_convert(cpu_stream(), REALN_DTYPE_F16, f16b_ref.data(), REALN_DTYPE_BF16, hb.data(), m), "cpu convert");
        realn::emu::launch(4, 1, 64, [&] { realn_convert_any(hb.data(), REALN_DTYPE_BF16, f16b.data(), REALN_DTYPE_F16, m); });
        expect_same("convert bf16->f16", "the same patterns rounded to bf16", f16b.data(), f16b_ref.data(), m * 2);
    }

    // AdamW: the step size and bias correction as backend_cuda.cpp's host code forms them.
    realn_adamw_opts o = REALN_ADAMW_OPTS_INIT;
    o.lr = 3e-3f;
    o.weight_decay = 0.1f;
    o.grad_scale = 0.5f;
    o.step = 7;
    const auto p0 = uniform(n), g = uniform(n), m0 = uniform(n, -0.1f, 0.1f), v0 = uniform(n, 0.0f, 0.01f);
    auto p_ref = p0, m_ref = m0, v_ref = v0, p = p0, m = m0, v = v0;
    check(realn_op_adamw(cpu_stream(), &o, p_ref.data(), g.data(), m_ref.data(), v_ref.data(), n), "cpu adamw");
    const float step_size = static_cast<float>(o.lr / (1.0 - std::pow(double(o.beta1), double(o.step))));
    const float inv_sqrt_bc2 = static_cast<float>(1.0 / std::sqrt(1.0 - std::pow(double(o.beta2), double(o.step))));
    realn::emu::launch(2, 1, 64, [&] {
        realn_adamw(p.data(), g.data(), m.data(), v.data(), n, o.beta1, o.beta2, o.eps, o.grad_scale, step_size, inv_sqrt_bc2,
                    o.lr * o.weight_decay);
    });
    expect_close("adamw p", "n=5000 step=7", p, p_ref, 1e-6);
    expect_close("adamw m", "n=5000 step=7", m, m_ref, 1e-6);
    expect_close("adamw v", "n=5000 step=7", v, v_ref, 1e-6);

    std::vector<int32_t> cu{0, 4, 4, 13};
    const auto rewards = uniform(13), values = uniform(13 + 3);
    std::vector<float> adv_ref(13), ret_ref(13), adv(13, NAN), ret(13, NAN);
    check(realn_op_gae(cpu_stream(), rewards.data(), values.data(), cu.data(), 3, 0.99f, 0.95f, adv_ref.data(), ret_ref.data()),
          "cpu gae");
    realn::emu::launch(1, 1, 32, [&] {
        realn_gae(rewards.data(), values.data(), cu.data(), 3, 0.99f, 0.95f, adv.data(), ret.data());
    });
    expect_close("gae advantages", "lens=4,0,9", adv, adv_ref, 1e-6);
    expect_close("gae returns", "lens=4,0,9", ret, ret_ref, 1e-6);

    // 16-byte, 16, 4, empty, byte paths; then intervals above the 16 KiB piece size (16-byte
    // aligned with a 16-byte tail, 4-byte aligned, odd), cut by the host's piece list, so the
    // four-words-in-flight loop, the piece cuts and the staging positions are all exercised.
    std::vector<unsigned char> flat(4096 + 120000);
    for (size_t i = 0; i < flat.size(); ++i) flat[i] = static_cast<unsigned char>(i * 131 + 7);
    const std::vector<int64_t> user_off{0, 64, 1004, 2048, 3000, 4096, 41000, 81924},
        user_len{32, 48, 20, 0, 77, 36880, 20004, 33333};
    const std::vector<int64_t> meta = realn::cuda::interval_pieces(user_off.data(), user_len.data(), 8);
    const int64_t pieces = static_cast<int64_t>(meta.size() / 3);
    const std::vector<int64_t> off(meta.begin(), meta.begin() + pieces), len(meta.begin() + pieces, meta.begin() + 2 * pieces),
        at(meta.begin() + 2 * pieces, meta.end());
    int64_t total_bytes = 0;
    for (int64_t l : user_len) total_bytes += l;
    std::vector<unsigned char> st_ref(total_bytes), st(total_bytes);
    check(realn_interval_gather(cpu_stream(), st_ref.data(), flat.data(), user_off.data(), user_len.data(), 8), "cpu gather");
    realn::emu::launch(2, 1, 64, [&] {
        realn_interval_gather(reinterpret_cast<char*>(st.data()), reinterpret_cast<const char*>(flat.data()),
                              reinterpret_cast<const i64*>(off.data()), reinterpret_cast<const i64*>(len.data()),
                              reinterpret_cast<const i64*>(at.data()), pieces);
    });
    expect_same("interval_gather", "8 intervals (16/4/1-byte paths, 3 above the piece size)", st.data(), st_ref.data(), st.size());
    std::vector<unsigned char> flat2(flat.size(), 0), flat2_ref(flat.size(), 0);
    check(realn_interval_scatter(cpu_stream(), flat2_ref.data(), st_ref.data(), user_off.data(), user_len.data(), 8), "cpu scatter");
    realn::emu::launch(2, 1, 64, [&] {
        realn_interval_scatter(reinterpret_cast<char*>(flat2.data()), reinterpret_cast<const char*>(st_ref.data()),
                               reinterpret_cast<const i64*>(off.data()), reinterpret_cast<const i64*>(len.data()),
                               reinterpret_cast<const i64*>(at.data()), pieces);
    });
    expect_same("interval_scatter", "8 intervals (16/4/1-byte paths, 3 above the piece size)", flat2.data(), flat2_ref.data(), flat2.size());
}
}  // namespace

int main() {
    // Attention: sequences crossing 32-row tiles, an empty one, GQA groups of 2
    // and 3, head dims 40 (partial lanes) and 128 (the maximum). Decode: head dims up to 256,
    // groups of 1 to 3. Shapes are small: the emulator costs ~a context switch per shuffle.
    const auto timed = [](const char* what, const std::function<void()>& run) {
        const auto t0 = std::chrono::steady_clock::now();
        run();
        std::printf("     (%s: %.1f s)\n", what, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    };
    timed("attention 1", [] { attention_case({1, 0, 35}, 2, 1, 40); });
    timed("attention 2", [] { attention_case({10}, 3, 1, 128); });
    // Three query tiles and key tiles (70 rows), GQA groups of 2, a head dim that is not a multiple
    // of 4 (the scalar staging path, padded columns).
    timed("attention 3", [] { attention_case({70, 3}, 4, 2, 38); });
    timed("kv cache", [] {
        kv_cache_case(false, {5, 1, 12}, 4, 2, 40);
        kv_cache_case(true, {5, 1, 12}, 6, 2, 64);
        kv_cache_case(false, {20}, 2, 1, 256);
    });
    timed("losses", [] {
        logprobs_case(5, 1000, 1.0f, false, false);
        logprobs_case(5, 777, 0.7f, true, true);
        logprobs_case(3, 300, 1.3f, false, true);
        cross_entropy_case(4, 1500);
    });
    timed("row-wise, elementwise, optimizer, intervals", [] {
        rowwise_case();
        elementwise_case();
    });
    if (failures) {
        std::printf("%d failure(s)\n", failures);
        return 1;
    }
#ifdef REALN_EMULATED_UNDER_TSAN
    std::printf("every emulated kernel matches the CPU backend (under ThreadSanitizer: no shared-memory race)\n");
#else
    std::printf("every emulated kernel matches the CPU backend (no ThreadSanitizer in this compiler: races not checked)\n");
#endif
    return 0;
}
