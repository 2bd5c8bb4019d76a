// SwiGLU: out = silu(gate) * up, silu(g) = g * sigmoid(g); rows apart by ld_in (inputs) and
// ld_out (output) so a fused [rows, 2*cols] gate|up projection is read in place. Parallel over
// rows; the inner loops vectorise through simd_expf (glibc expf would run scalar).
//   backward: s = sigmoid(g); dgate = dout * up * s * (1 + g (1 - s)); dup = dout * g * s.
#include "cpu_ops.hpp"
#include "simd_exp.hpp"

namespace realn::cpu {
namespace {
constexpr int64_t kPar = 1 << 14;

inline float sigmoid(float g) { return 1.0f / (1.0f + simd_expf(-g)); }
}  // namespace

void swiglu_fwd(realn_stream_t, int32_t, const void* gate, const void* up, int64_t ld_in,
                void* out, int64_t ld_out, int64_t rows, int64_t cols) {
    const auto* G = static_cast<const float*>(gate);
    const auto* U = static_cast<const float*>(up);
    auto* O = static_cast<float*>(out);
#pragma omp parallel for schedule(static) if (rows * cols > kPar)
    for (int64_t r = 0; r < rows; ++r) {
        const float* __restrict g = G + r * ld_in;
        const float* __restrict u = U + r * ld_in;
        float* __restrict o = O + r * ld_out;
#pragma omp simd
        for (int64_t j = 0; j < cols; ++j) o[j] = g[j] * sigmoid(g[j]) * u[j];
    }
}

void swiglu_bwd(realn_stream_t, int32_t, const void* gate, const void* up, int64_t ld_in,
                const void* dout, int64_t ld_out, void* dgate, void* dup, int64_t rows,
                int64_t cols) {
    const auto* G = static_cast<const float*>(gate);
    const auto* U = static_cast<const float*>(up);
    const auto* D = static_cast<const float*>(dout);
    auto* DG = static_cast<float*>(dgate);
    auto* DU = static_cast<float*>(dup);
#pragma omp parallel for schedule(static) if (rows * cols > kPar)
    for (int64_t r = 0; r < rows; ++r) {
        const float* __restrict g = G + r * ld_in;
        const float* __restrict u = U + r * ld_in;
        const float* __restrict d = D + r * ld_out;
        float* __restrict dg = DG + r * ld_in;
        float* __restrict du = DU + r * ld_in;
#pragma omp simd
        for (int64_t j = 0; j < cols; ++j) {
            const float s = sigmoid(g[j]);
            dg[j] = d[j] * u[j] * s * (1.0f + g[j] * (1.0f - s));
            du[j] = d[j] * g[j] * s;
        }
    }
}

}  // namespace realn::cpu
