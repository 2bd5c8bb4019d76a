// Token sampling: greedy, temperature, top-k, top-p. Each row draws ONE uniform number that is a
// pure function of (seed, offset, row) (splitmix64 hashing, no shared generator state), so the
// tokens do not depend on the thread count or on how rows are split. Candidates are ordered by
// (probability desc, index asc); top-k keeps the first k, top-p the shortest prefix of that
// order whose mass reaches top_p; the draw inverts the CDF over the kept tokens in that order.
#include <algorithm>
#include <cmath>
#include <cstring>
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
inline double row_uniform(uint64_t seed, uint64_t offset, int64_t row) {
    uint64_t h = splitmix64(seed);
    h = splitmix64(h ^ offset);
    h = splitmix64(h ^ static_cast<uint64_t>(row));
    return static_cast<double>(h >> 11) * 0x1.0p-53;
}

// Argmax, lowest index on ties; NaN never wins.
inline int64_t argmax(const float* x, int64_t n) {
    int64_t best = 0;
    float bv = -INFINITY;
    bool found = false;
    for (int64_t i = 0; i < n; ++i)
        if (x[i] > bv || (!found && x[i] == bv)) {
            bv = x[i];
            best = i;
            found = true;
        }
    return best;
}

struct Scratch {
    std::vector<double> prob;   // unnormalised exp((z - max)), 0 for NaN logits
    std::vector<int32_t> order;
};

void sample_row(const float* x, int64_t vocab, const realn_sample_opts* o, int64_t row,
                Scratch& sc, int32_t* token, uint8_t* mask, float* logp) {
    if (vocab <= 0) return;  // validated by the ABI; tells the compiler the fills are bounded
    const int64_t amax = argmax(x, vocab);
    const double mx = x[amax];
    if (o->temperature == 0.0f || !std::isfinite(mx)) {
        // Greedy: no filtering, log-prob under softmax(logits).
        *token = static_cast<int32_t>(amax);
        if (mask) std::fill(mask, mask + vocab, uint8_t(1));
        if (logp) {
            double s = 0.0;
            for (int64_t i = 0; i < vocab; ++i)
                if (x[i] == x[i]) s += std::exp(double(x[i]) - mx);
            *logp = std::isfinite(mx) ? static_cast<float>(-std::log(s)) : -INFINITY;
        }
        return;
    }
    const double inv_t = 1.0 / double(o->temperature);
    sc.prob.resize(static_cast<size_t>(vocab));
    double* P = sc.prob.data();
    double total = 0.0;
    for (int64_t i = 0; i < vocab; ++i) {
        const double z = (double(x[i]) - mx) * inv_t;
        P[i] = (x[i] == x[i]) ? std::exp(z) : 0.0;
        total += P[i];
    }
    const double u = row_uniform(o->seed, o->offset, row);
    const bool use_k = o->top_k > 0 && o->top_k < vocab;
    const bool use_p = o->top_p < 1.0f;
    int32_t tok = -1;
    double kept_mass = 0.0;
    if (!use_k && !use_p) {
        // No filtering: invert the CDF in index order.
        const double target = u * total;
        double c = 0.0;
        for (int64_t i = 0; i < vocab; ++i) {
            if (P[i] <= 0.0) continue;
            c += P[i];
            tok = static_cast<int32_t>(i);
            if (c > target) break;
        }
        kept_mass = total;
        if (mask) std::fill(mask, mask + vocab, uint8_t(1));
    } else {
        auto& ord = sc.order;
        ord.resize(static_cast<size_t>(vocab));
        for (int64_t i = 0; i < vocab; ++i) ord[i] = static_cast<int32_t>(i);
        auto before = [P](int32_t a, int32_t b) { return P[a] > P[b] || (P[a] == P[b] && a < b); };
        int64_t kept = vocab;
        if (use_k) {
            kept = o->top_k;
            std::nth_element(ord.begin(), ord.begin() + (kept - 1), ord.end(), before);
            std::sort(ord.begin(), ord.begin() + kept, before);
        } else {
            std::sort(ord.begin(), ord.end(), before);
        }
        double mass = 0.0;
        for (int64_t j = 0; j < kept; ++j) mass += P[ord[j]];
        if (use_p) {
            const double need = double(o->top_p) * mass;
            double c = 0.0;
            int64_t j = 0;
            while (j < kept) {
                c += P[ord[j]];
                ++j;
                if (c >= need) break;
            }
            kept = j;
            mass = c;
        }
        const double target = u * mass;
        double c = 0.0;
        for (int64_t j = 0; j < kept; ++j) {
            if (P[ord[j]] <= 0.0) continue;
            c += P[ord[j]];
            tok = ord[j];
            if (c > target) break;
        }
        if (tok < 0) tok = ord[0];
        kept_mass = mass;
        if (mask) {
            std::fill(mask, mask + vocab, uint8_t(0));
            for (int64_t j = 0; j < kept; ++j) mask[ord[j]] = 1;
        }
    }
    if (tok < 0) tok = static_cast<int32_t>(amax);
    *token = tok;
    if (logp) *logp = static_cast<float>(std::log(P[tok]) - std::log(kept_mass));
}

}  // namespace

void sample(realn_stream_t, int32_t, const void* logits, int64_t rows, int64_t vocab,
            const realn_sample_opts* o, int32_t* tokens, uint8_t* mask_out, float* logp_out) {
    const auto* L = static_cast<const float*>(logits);
#pragma omp parallel if (rows > 1 && rows * vocab > (1 << 14))
    {
        Scratch sc;
#pragma omp for schedule(static)
        for (int64_t r = 0; r < rows; ++r)
            sample_row(L + r * vocab, vocab, o, r, sc, tokens + r, mask_out ? mask_out + r * vocab : nullptr,
                       logp_out ? logp_out + r : nullptr);
    }
}

}  // namespace realn::cpu
