// Linear layer with the weight in [out, in] layout (HF/PyTorch), as two or three GEMMs through
// the thread-count-independent fixed_tile_sgemm (gemm.cpp). Forward seeds y with the bias rows and
// lets SGEMM accumulate (beta = 1), saving a pass. The bias gradient is a column sum per column in
// row order: the same for any thread count.
// REALN_DTYPE_BF16: the weight w is bf16, every other tensor fp32; products of bf16-rounded
// operands accumulate in fp32 (gemm_bf16.hpp), decode rows (<= kSmallMMaxRows) go to the small-M
// kernel reading bf16 weights (x rounded to bf16 there too; AMX or vdpbf16ps sums).
#include <cstring>

#include "cpu_ops.hpp"
#include "gemm_bf16.hpp"
#include "gemm_tiles.hpp"
#include "small_m_linear.hpp"

namespace realn::cpu {

namespace {
void seed_bias(float* Y, const float* Bv, int64_t rows, int64_t out) {
#pragma omp parallel for schedule(static) if (rows * out > (1 << 16))
    for (int64_t r = 0; r < rows; ++r) std::memcpy(Y + r * out, Bv, sizeof(float) * out);
}
}  // namespace

void linear_fwd(realn_stream_t, int32_t dtype, const void* x, const void* w, const void* bias, void* y,
                int64_t rows, int64_t in, int64_t out) {
    if (dtype == REALN_DTYPE_BF16) {
        const auto* X = static_cast<const float*>(x);
        const auto* W = static_cast<const uint16_t*>(w);
        const auto* Bv = static_cast<const float*>(bias);
        auto* Y = static_cast<float*>(y);
        if (rows <= kSmallMMaxRows) {
            small_m_linear_fwd_bf16(X, W, Bv, Y, rows, in, out);
            return;
        }
        if (Bv) seed_bias(Y, Bv, rows, out);
        gemm_mixed(bf16_gemm_path(), rows, out, in, 1.0f, {X, in, false, false}, {W, in, true, true},
                   Bv ? 1.0f : 0.0f, Y, out);
        return;
    }
    const auto* X = static_cast<const float*>(x);
    const auto* W = static_cast<const float*>(w);
    const auto* Bv = static_cast<const float*>(bias);
    auto* Y = static_cast<float*>(y);
    if (rows <= kSmallMMaxRows) {  // decode: stream the weights once, no SGEMM packing
        small_m_linear_fwd(small_m_best_isa(), X, W, Bv, Y, rows, in, out);
        return;
    }
    float beta = 0.0f;
    if (Bv) {
        seed_bias(Y, Bv, rows, out);
        beta = 1.0f;
    }
    fixed_tile_sgemm(false, true, rows, out, in, 1.0f, X, in, 0, W, in, 0, beta, Y, out, 0, 1);
}

void linear_bwd(realn_stream_t, int32_t dtype, const void* x, const void* w, const void* dy, void* dx,
                void* dw, void* dbias, int64_t rows, int64_t in, int64_t out, int32_t flags) {
    const auto* X = static_cast<const float*>(x);
    const auto* W = static_cast<const float*>(w);
    const auto* DY = static_cast<const float*>(dy);
    if (dtype == REALN_DTYPE_BF16) {
        const Bf16GemmPath path = bf16_gemm_path();
        if (dx)
            gemm_mixed(path, rows, in, out, 1.0f, {DY, out, false, false},
                       {static_cast<const uint16_t*>(w), in, false, true},
                       (flags & REALN_ACCUMULATE_DX) ? 1.0f : 0.0f, static_cast<float*>(dx), in);
        if (dw)
            gemm_mixed(path, out, in, rows, 1.0f, {DY, out, true, false}, {X, in, false, false}, 1.0f,
                       static_cast<float*>(dw), in);
        dx = dw = nullptr;  // done; the bias gradient below is fp32 either way
    }
    if (dx) {
        const float beta = (flags & REALN_ACCUMULATE_DX) ? 1.0f : 0.0f;
        fixed_tile_sgemm(false, false, rows, in, out, 1.0f, DY, out, 0, W, in, 0, beta,
                         static_cast<float*>(dx), in, 0, 1);
    }
    if (dw) {
        fixed_tile_sgemm(true, false, out, in, rows, 1.0f, DY, out, 0, X, in, 0, 1.0f,
                         static_cast<float*>(dw), in, 0, 1);
    }
    if (dbias) {
        auto* DB = static_cast<float*>(dbias);
        // Column sums in double, parallel over columns (deterministic).
#pragma omp parallel for schedule(static) if (rows * out > (1 << 16))
        for (int64_t j = 0; j < out; ++j) {
            double acc = 0.0;
            for (int64_t r = 0; r < rows; ++r) acc += DY[r * out + j];
            DB[j] += static_cast<float>(acc);
        }
    }
}

}  // namespace realn::cpu
