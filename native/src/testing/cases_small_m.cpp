// Cases: the small-M (decode) linear forward. Through the public ABI (linear_fwd with rows <= 64
// takes that path), and on the CPU backend each ISA this CPU runs (AVX-512, AVX2, scalar) directly,
// against the float64 reference, plus bit-equality of 1 thread vs all threads and of each row
// alone vs inside the batch.
#include <omp.h>

#include <algorithm>
#include <tuple>

#include "../cpu/small_m_linear.hpp"
#include "harness.hpp"

namespace realn::testing {
namespace {

std::vector<double> small_m_ref(const std::vector<float>& x, const std::vector<float>& w, const std::vector<float>* b,
                                int64_t rows, int64_t in, int64_t out) {
    std::vector<double> y(rows * out);
    for (int64_t r = 0; r < rows; ++r)
        for (int64_t o = 0; o < out; ++o) {
            double acc = b ? double((*b)[o]) : 0.0;
            for (int64_t i = 0; i < in; ++i) acc += double(x[r * in + i]) * double(w[o * in + i]);
            y[r * out + o] = acc;
        }
    return y;
}

Outcome abi_case(Env& env, int64_t rows, int64_t in, int64_t out, bool bias) {
    Rng& r = env.rng();
    auto x = r.uniform_vec(rows * in), w = r.uniform_vec(out * in), b = r.uniform_vec(out);
    float* dy = static_cast<float*>(env.alloc(rows * out * 4));
    Env::check(realn_op_linear_fwd(env.stream(), REALN_DTYPE_F32, env.upload(x), env.upload(w),
                                   bias ? env.upload(b) : nullptr, dy, rows, in, out));
    return {rel_err(env.download(dy, rows * out), small_m_ref(x, w, bias ? &b : nullptr, rows, in, out)), ""};
}

Outcome isa_case(Env& env, cpu::SimdIsa isa, int64_t rows, int64_t in, int64_t out, bool bias) {
    if (env.backend() != REALN_BACKEND_CPU) return {0.0, "CPU kernel: not run on this backend"};
    if (!cpu::small_m_isa_supported(isa)) return {0.0, "ISA not supported by this CPU: skipped"};
    Rng& r = env.rng();
    auto x = r.uniform_vec(rows * in), w = r.uniform_vec(out * in), b = r.uniform_vec(out);
    std::vector<float> y(rows * out), y1(rows * out);
    const float* bp = bias ? b.data() : nullptr;
    cpu::small_m_linear_fwd(isa, x.data(), w.data(), bp, y.data(), rows, in, out);
    const int threads = omp_get_max_threads();
    omp_set_num_threads(1);
    cpu::small_m_linear_fwd(isa, x.data(), w.data(), bp, y1.data(), rows, in, out);
    omp_set_num_threads(threads);
    if (y != y1) return {1.0, "result differs between 1 thread and " + std::to_string(threads)};
    // Row invariance: each row alone gives the same bits as inside the batch.
    for (int64_t m = 0; m < rows; ++m) {
        std::vector<float> row(out);
        cpu::small_m_linear_fwd(isa, x.data() + m * in, w.data(), bp, row.data(), 1, in, out);
        if (!std::equal(row.begin(), row.end(), y.begin() + m * out))
            return {1.0, "row " + std::to_string(m) + " alone differs from the batch"};
    }
    return {rel_err(y, small_m_ref(x, w, bias ? &b : nullptr, rows, in, out)), ""};
}

}  // namespace

void add_small_m_cases() {
    for (auto [rows, in, out, bias] : {std::tuple{1, 768, 37, false}, std::tuple{2, 33, 9, true},
                                       std::tuple{4, 130, 64, false}, std::tuple{7, 17, 130, true},
                                       std::tuple{8, 256, 129, false}, std::tuple{64, 96, 40, true}}) {
        add_case({"linear_fwd_small_m", concat_shape("rows=", rows, " in=", in, " out=", out, " bias=", bias),
                  kTolF32, [=](Env& e) { return abi_case(e, rows, in, out, bias); }});
    }
    for (auto [isa, name] : {std::tuple{cpu::SimdIsa::Avx512, "avx512"}, std::tuple{cpu::SimdIsa::Avx2, "avx2"},
                             std::tuple{cpu::SimdIsa::Scalar, "scalar"}}) {
        for (auto [rows, in, out, bias] : {std::tuple{1, 1, 1, false}, std::tuple{3, 45, 7, true},
                                           std::tuple{5, 200, 300, false}, std::tuple{8, 1031, 65, true},
                                           std::tuple{37, 129, 70, false}, std::tuple{150, 96, 71, true}}) {
            add_case({"small_m_linear_" + std::string(name),
                      concat_shape("rows=", rows, " in=", in, " out=", out, " bias=", bias), kTolF32,
                      [=](Env& e) { return isa_case(e, isa, rows, in, out, bias); }});
        }
    }
}

}  // namespace realn::testing
