// Token sampling: greedy (temperature 0: argmax, lowest index on ties), or temperature with
// optional top-k and top-p filtering, drawing from a counter-based random stream that is a pure
// function of (seed, offset, row): the same tokens whatever the thread count or batch split.
// mask_out records the tokens that survived filtering (training recomputes log-probs under the
// same mask); logp_out is the chosen token's log-prob under the filtered, tempered distribution
// (greedy: under softmax(logits)).
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <numeric>
#include <vector>

#include "cpu_ops.hpp"

namespace realn::cpu {
namespace {

inline uint64_t splitmix64(uint64_t x) {
    x += 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

// Uniform in [0, 1) with 53 random bits.
inline double uniform(uint64_t seed, uint64_t offset, int64_t row) {
    const uint64_t h = splitmix64(splitmix64(splitmix64(seed) ^ offset) ^ static_cast<uint64_t>(row));
    return static_cast<double>(h >> 11) * (1.0 / 9007199254740992.0);
}

struct Scratch {
    std::vector<int32_t> idx;
    std::vector<double> prob;
    std::vector<std::pair<int32_t, double>> kept;
};

}  // namespace

void sample(realn_stream_t, int32_t, const void* logits, int64_t rows, int64_t vocab,
            const realn_sample_opts* o, int32_t* tokens, uint8_t* mask_out, float* logp_out) {
    const auto* X = static_cast<const float*>(logits);
    const bool greedy = o->temperature == 0.0f;
    const int64_t k = (o->top_k > 0 && o->top_k < vocab) ? o->top_k : vocab;
    const bool use_p = o->top_p < 1.0f;
    const double inv_t = greedy ? 1.0 : 1.0 / double(o->temperature);
#pragma omp parallel for schedule(dynamic, 1) if (rows * vocab > (1 << 16))
    for (int64_t r = 0; r < rows; ++r) {
        thread_local Scratch sc;
        const float* x = X + r * vocab;
        uint8_t* mrow = mask_out ? mask_out + r * vocab : nullptr;
        // Row max (and argmax for greedy), then log-sum-exp of the tempered logits.
        int64_t arg = 0;
        float mx = x[0];
        for (int64_t j = 1; j < vocab; ++j)
            if (x[j] > mx) { mx = x[j]; arg = j; }
        if (greedy) {
            double sum = 0.0;
            for (int64_t j = 0; j < vocab; ++j) sum += std::exp(double(x[j]) - mx);
            tokens[r] = static_cast<int32_t>(arg);
            if (mrow) std::memset(mrow, 1, static_cast<size_t>(vocab));
            if (logp_out) logp_out[r] = static_cast<float>(-std::log(sum));
            continue;
        }
        // Candidates: every token, or the k largest (ties to the lower index).
        auto& idx = sc.idx;
        auto& prob = sc.prob;
        idx.resize(static_cast<size_t>(vocab));
        std::iota(idx.begin(), idx.end(), 0);
        auto before = [x](int32_t a, int32_t b) { return x[a] > x[b] || (x[a] == x[b] && a < b); };
        int64_t n = vocab;
        if (k < vocab) {
            std::nth_element(idx.begin(), idx.begin() + (k - 1), idx.end(), before);
            n = k;
        }
        if (use_p) std::sort(idx.begin(), idx.begin() + n, before);
        prob.resize(static_cast<size_t>(n));
        double sum = 0.0;
        for (int64_t i = 0; i < n; ++i) {
            prob[i] = std::exp((double(x[idx[i]]) - mx) * inv_t);
            sum += prob[i];
        }
        if (use_p) {
            // Smallest prefix (by descending probability) whose mass reaches top_p; at least one.
            const double target = double(o->top_p) * sum;
            double acc = 0.0;
            int64_t keep = 0;
            while (keep < n) {
                acc += prob[keep++];
                if (acc >= target) break;
            }
            n = keep;
            sum = acc;
        }
        // Draw by inverse CDF over the kept tokens in ascending token order (independent of how
        // the candidates were found).
        if (!use_p && k < vocab) std::sort(idx.begin(), idx.begin() + n);
        else if (use_p) {
            auto& kept = sc.kept;
            kept.resize(static_cast<size_t>(n));
            for (int64_t i = 0; i < n; ++i) kept[i] = {idx[i], prob[i]};
            std::sort(kept.begin(), kept.end());
            for (int64_t i = 0; i < n; ++i) { idx[i] = kept[i].first; prob[i] = kept[i].second; }
        }
        if (!use_p && k < vocab)
            for (int64_t i = 0; i < n; ++i) prob[i] = std::exp((double(x[idx[i]]) - mx) * inv_t);
        const double u = uniform(o->seed, o->offset, r) * sum;
        double acc = 0.0;
        int64_t pick = n - 1;
        for (int64_t i = 0; i < n; ++i) {
            acc += prob[i];
            if (u < acc) { pick = i; break; }
        }
        // Zero-probability picks cannot happen (u < acc needs prob > 0), except by rounding at the
        // end: step back to the last token with mass.
        while (pick > 0 && prob[pick] == 0.0) --pick;
        tokens[r] = idx[pick];
        if (mrow) {
            if (n == vocab) std::memset(mrow, 1, static_cast<size_t>(vocab));
            else {
                std::memset(mrow, 0, static_cast<size_t>(vocab));
                for (int64_t i = 0; i < n; ++i) mrow[idx[i]] = 1;
            }
        }
        if (logp_out) logp_out[r] = static_cast<float>(std::log(prob[pick] / sum));
    }
}

}  // namespace realn::cpu
