// Cross-entropy over the vocabulary with ignore_index, parallel over rows; per row a max pass and
// one exp pass (the row is still in L2), so the logits stream from memory once. Ignored rows are
// skipped entirely (loss = lse = 0, zero gradient): in RLHF/SFT batches they are often the
// prompt half. The mean is summed in row order in double, so it is deterministic.
// Measured (256 x 50304, 2 threads, same run as a 51 MB memcpy of 3.9 ms): fwd 2.9 ms, bwd 2.3 ms.
#include <cmath>

#include "cpu_ops.hpp"
#include "softmax_rows.hpp"

namespace realn::cpu {

double cross_entropy_fwd(realn_stream_t, int32_t, const void* logits, const int32_t* labels,
                         int64_t rows, int64_t vocab, int32_t ignore_index, float* loss,
                         float* lse) {
    const auto* L = static_cast<const float*>(logits);
#pragma omp parallel for schedule(static) if (rows * vocab > (1 << 15))
    for (int64_t r = 0; r < rows; ++r) {
        const int32_t y = labels[r];
        if (y == ignore_index) {
            loss[r] = 0.0f;
            lse[r] = 0.0f;
            continue;
        }
        const float* x = L + r * vocab;
        const float m = row_max(x, nullptr, vocab, 1.0f);
        const double l = double(m) + std::log(row_sumexp(x, nullptr, vocab, 1.0f, m, false).s);
        lse[r] = static_cast<float>(l);
        loss[r] = static_cast<float>(l - double(x[y]));
    }
    double sum = 0.0;
    int64_t count = 0;
    for (int64_t r = 0; r < rows; ++r) {
        if (labels[r] == ignore_index) continue;
        sum += loss[r];
        ++count;
    }
    return count ? sum / double(count) : 0.0;
}

void cross_entropy_bwd(realn_stream_t, int32_t, const void* logits, const int32_t* labels,
                       int64_t rows, int64_t vocab, int32_t ignore_index, const float* lse,
                       float grad_scale, void* dlogits) {
    const auto* L = static_cast<const float*>(logits);
    auto* DL = static_cast<float*>(dlogits);
#pragma omp parallel for schedule(static) if (rows * vocab > (1 << 15))
    for (int64_t r = 0; r < rows; ++r) {
        const float* __restrict x = L + r * vocab;
        float* __restrict g = DL + r * vocab;
        const int32_t y = labels[r];
        if (y == ignore_index) {
#pragma omp simd
            for (int64_t j = 0; j < vocab; ++j) g[j] = 0.0f;
            continue;
        }
        const float l = lse[r];
#pragma omp simd
        for (int64_t j = 0; j < vocab; ++j) g[j] = grad_scale * simd_expf(x[j] - l);
        g[y] -= grad_scale;
    }
}

}  // namespace realn::cpu
