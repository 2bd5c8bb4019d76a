// Linear layer with the weight in [out, in] layout (HF/PyTorch), as two or three GEMMs.
// Forward seeds y with the bias rows and lets SGEMM accumulate (beta = 1), saving a pass.
#include <cblas.h>

#include <cstring>

#include "cpu_ops.hpp"
#include "small_m_linear.hpp"

namespace realn::cpu {

void linear_fwd(realn_stream_t, int32_t, const void* x, const void* w, const void* bias, void* y,
                int64_t rows, int64_t in, int64_t out) {
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
#pragma omp parallel for schedule(static) if (rows * out > (1 << 16))
        for (int64_t r = 0; r < rows; ++r) std::memcpy(Y + r * out, Bv, sizeof(float) * out);
        beta = 1.0f;
    }
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (blasint)rows, (blasint)out, (blasint)in,
                1.0f, X, (blasint)in, W, (blasint)in, beta, Y, (blasint)out);
}

void linear_bwd(realn_stream_t, int32_t, const void* x, const void* w, const void* dy, void* dx,
                void* dw, void* dbias, int64_t rows, int64_t in, int64_t out, int32_t flags) {
    const auto* X = static_cast<const float*>(x);
    const auto* W = static_cast<const float*>(w);
    const auto* DY = static_cast<const float*>(dy);
    if (dx) {
        const float beta = (flags & REALN_ACCUMULATE_DX) ? 1.0f : 0.0f;
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (blasint)rows, (blasint)in,
                    (blasint)out, 1.0f, DY, (blasint)out, W, (blasint)in, beta,
                    static_cast<float*>(dx), (blasint)in);
    }
    if (dw) {
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (blasint)out, (blasint)in,
                    (blasint)rows, 1.0f, DY, (blasint)out, X, (blasint)in, 1.0f,
                    static_cast<float*>(dw), (blasint)in);
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
