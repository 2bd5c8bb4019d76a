// Embedding lookup and its gradient, vocab-parallel aware (a rank holds rows
// [vocab_start, vocab_start + vocab) of the table; other ids give zero rows / no gradient).
// Forward: one memcpy per token, parallel over tokens. Backward must be deterministic although
// ids repeat, so threads split the HIDDEN dimension (each owns a column slice of every table row)
// and walk the tokens in order: no atomics, no scratch, same sums for any thread count.
// REALN_DTYPE_BF16: a bf16 table; the forward widens its rows into fp32 output rows; the backward
// never reads the table, so a bf16 table's gradient (fp32, as every gradient) is the fp32 code.
#include <omp.h>

#include <algorithm>
#include <cstring>

#include "bf16.hpp"
#include "cpu_ops.hpp"

namespace realn::cpu {

void embedding_fwd(realn_stream_t, int32_t dtype, const int32_t* ids, int64_t n, const void* table,
                   int64_t vocab, int64_t hidden, int64_t vocab_start, void* out) {
    auto* O = static_cast<float*>(out);
    if (dtype == REALN_DTYPE_BF16) {  // bf16 table, fp32 rows out (exact widening)
        const auto* Tb = static_cast<const uint16_t*>(table);
#pragma omp parallel for schedule(static) if (n * hidden > (1 << 15))
        for (int64_t t = 0; t < n; ++t) {
            const int64_t local = static_cast<int64_t>(ids[t]) - vocab_start;
            float* dst = O + t * hidden;
            if (local >= 0 && local < vocab) bf16_to_f32_n(Tb + local * hidden, dst, hidden);
            else std::memset(dst, 0, sizeof(float) * static_cast<size_t>(hidden));
        }
        return;
    }
    const auto* T = static_cast<const float*>(table);
    const size_t row_bytes = sizeof(float) * static_cast<size_t>(hidden);
#pragma omp parallel for schedule(static) if (n * hidden > (1 << 15))
    for (int64_t t = 0; t < n; ++t) {
        const int64_t local = static_cast<int64_t>(ids[t]) - vocab_start;
        float* dst = O + t * hidden;
        if (local >= 0 && local < vocab) std::memcpy(dst, T + local * hidden, row_bytes);
        else std::memset(dst, 0, row_bytes);
    }
}

void embedding_bwd(realn_stream_t, int32_t, const int32_t* ids, int64_t n, const void* dout,
                   int64_t vocab, int64_t hidden, int64_t vocab_start, void* dtable) {
    const auto* D = static_cast<const float*>(dout);
    auto* G = static_cast<float*>(dtable);
    // Column slices of at least 64 floats (a few cache lines) so threads never share a line.
    const int64_t max_threads = std::max<int64_t>(1, std::min<int64_t>(omp_get_max_threads(), hidden / 64));
    const int nt = n * hidden > (1 << 15) ? static_cast<int>(max_threads) : 1;
#pragma omp parallel num_threads(nt)
    {
        const int64_t T = omp_get_num_threads(), th = omp_get_thread_num();
        const int64_t chunk = ((hidden + T - 1) / T + 15) / 16 * 16;
        const int64_t lo = std::min(hidden, th * chunk), hi = std::min(hidden, lo + chunk);
        for (int64_t t = 0; t < n && hi > lo; ++t) {
            const int64_t local = static_cast<int64_t>(ids[t]) - vocab_start;
            if (local < 0 || local >= vocab) continue;
            float* __restrict g = G + local * hidden;
            const float* __restrict d = D + t * hidden;
#pragma omp simd
            for (int64_t j = lo; j < hi; ++j) g[j] += d[j];
        }
    }
}

}  // namespace realn::cpu
