// ctest `cuda_kernels_emulated`: the CUDA backend's attention, KV-cache and loss kernels
// (native/cuda/kernels/*.cu), compiled as host C++ and run on the CPU emulator (cuda_emulator.hpp),
// with the backend's own host work lists (native/cuda/host_plans.hpp), against the CPU backend's
// ops through the public ABI on random inputs (the CPU ops are themselves checked against float64
// references by the case list). This checks the kernels' logic - indexing, causal/GQA masking,
// tiles across sequence boundaries, online softmax, barrier placement, reductions - where no GPU
// is available; it says nothing about speed or the GPU's approximate exp/log (see common.cuh).
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
    const unsigned ntiles = static_cast<unsigned>(tiles.size() / 3), threads = realn::cuda::kAttentionRows * 32;
    std::vector<float> out(q.size(), NAN), lse(lse_ref.size(), NAN);
    realn::emu::launch(ntiles, static_cast<unsigned>(hq), threads, [&] {
        realn_attention_fwd(q.data(), k.data(), v.data(), tiles.data(), hq, hkv, d, scale, out.data(), lse.data());
    });
    expect_close("attention_fwd out", shape, out, out_ref, 2e-5);
    expect_close("attention_fwd lse", shape, lse, lse_ref, 2e-5);

    std::vector<float> delta(lse.size(), NAN), dq(q.size(), NAN), dk(k.size(), NAN), dv(v.size(), NAN);
    const int64_t rows = T * hq;
    realn::emu::launch(static_cast<unsigned>((rows + realn::cuda::kAttentionRows - 1) / realn::cuda::kAttentionRows), 1, threads,
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

}  // namespace

int main() {
    // Attention: sequences crossing 8-row blocks and a 32-key tile, an empty one, GQA groups of 2
    // and 3, head dims 40 (partial lanes) and 128 (the maximum). Decode: head dims up to 256,
    // groups of 1 to 3. Shapes are small: the emulator costs ~a context switch per shuffle.
    const auto timed = [](const char* what, const std::function<void()>& run) {
        const auto t0 = std::chrono::steady_clock::now();
        run();
        std::printf("     (%s: %.1f s)\n", what, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    };
    timed("attention 1", [] { attention_case({1, 0, 35}, 2, 1, 40); });
    timed("attention 2", [] { attention_case({10}, 3, 1, 128); });
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
    if (failures) {
        std::printf("%d failure(s)\n", failures);
        return 1;
    }
    std::printf("every emulated kernel matches the CPU backend\n");
    return 0;
}
