// Log-probabilities / entropy and cross-entropy of the CUDA backend, with the CPU backend's
// semantics (native/src/cpu/logprobs.cpp, cross_entropy.cpp; see their header comments): one
// block of 256 threads per row, sums of exp in double through the fixed-order block tree
// (deterministic), exponent differences floored at -100 as on the CPU. labels and mask are
// device memory. Its cases pass on an NVIDIA H200 (docs/performance.md).
#include "common.cuh"

#define REALN_ROW_THREADS 256

REALN_DEVICE float realn_neg_inf() { return realn_u2f(0xff800000u); }

// z_j = x_j * inv_t, or -inf where the mask forbids j. Returns max_j z_j (-inf if all masked).
REALN_DEVICE float realn_row_zmax(const float* x, const unsigned char* mk, i64 vocab, float inv_t, float* fscratch) {
    float m = realn_neg_inf();
    for (i64 j = threadIdx.x; j < vocab; j += blockDim.x) {
        const float z = (!mk || mk[j]) ? x[j] * inv_t : realn_neg_inf();
        m = z > m ? z : m;
    }
    return realn_block_max(m, fscratch);
}

REALN_GLOBAL void realn_logprobs_fwd(const float* logits, const int* labels, const unsigned char* mask, i64 rows,
                                     i64 vocab, float inv_t, float* logp, float* entropy, float* lse) {
    REALN_SHARED double scratch[REALN_ROW_THREADS];
    REALN_SHARED float fscratch[REALN_ROW_THREADS];
    const i64 r = blockIdx.x;
    if (r >= rows) return;
    const float* x = logits + r * vocab;
    const unsigned char* mk = mask ? mask + r * vocab : 0;
    const float m = realn_row_zmax(x, mk, vocab, inv_t, fscratch);
    if (m == realn_neg_inf()) {
        if (threadIdx.x == 0) {
            lse[r] = realn_neg_inf();
            logp[r] = realn_neg_inf();
            if (entropy) entropy[r] = 0.0f;
        }
        return;
    }
    double s = 0.0, sd = 0.0;
    for (i64 j = threadIdx.x; j < vocab; j += blockDim.x) {
        float d = x[j] * inv_t - m;
        d = d > -100.0f ? d : -100.0f;
        const float p = (!mk || mk[j]) ? realn_exp(d) : 0.0f;
        s += p;
        sd += (double)(p * d);
    }
    s = realn_block_sum(s, scratch);
    sd = realn_block_sum(sd, scratch);
    if (threadIdx.x != 0) return;
    const double log_s = realn_log_d(s);
    const double l = (double)m + log_s;
    lse[r] = (float)l;
    const int y = labels[r];
    logp[r] = (mk && !mk[y]) ? realn_neg_inf() : (float)((double)(x[y] * inv_t) - l);
    if (entropy) entropy[r] = (float)(log_s - sd / s);
}

// dlogits = -a p - b p (log p + H) (+ a at the label when allowed); a = dlogp / T, b = dentropy / T.
REALN_GLOBAL void realn_logprobs_bwd(const float* logits, const int* labels, const unsigned char* mask, i64 rows,
                                     i64 vocab, float inv_t, const float* lse, const float* dlogp,
                                     const float* dentropy, float* dlogits) {
    REALN_SHARED double scratch[REALN_ROW_THREADS];
    const i64 r = blockIdx.x;
    if (r >= rows) return;
    const float* x = logits + r * vocab;
    const unsigned char* mk = mask ? mask + r * vocab : 0;
    float* g = dlogits + r * vocab;
    const float l = lse[r];
    if (l == realn_neg_inf()) {
        for (i64 j = threadIdx.x; j < vocab; j += blockDim.x) g[j] = 0.0f;
        return;
    }
    const float a = dlogp[r] * inv_t;
    const float b = dentropy ? dentropy[r] * inv_t : 0.0f;
    const int y = labels[r];
    float hf = 0.0f;
    if (b != 0.0f) {  // uniform in the block: every thread takes this branch or none does
        double h = 0.0;
        for (i64 j = threadIdx.x; j < vocab; j += blockDim.x) {
            float d = x[j] * inv_t - l;
            d = d > -100.0f ? d : -100.0f;
            const float p = (!mk || mk[j]) ? realn_exp(d) : 0.0f;
            h -= (double)(p * d);
        }
        hf = (float)realn_block_sum(h, scratch);
    }
    for (i64 j = threadIdx.x; j < vocab; j += blockDim.x) {
        const bool allowed = !mk || mk[j];
        float v = 0.0f;
        if (allowed) {
            float d = x[j] * inv_t - l;
            if (b != 0.0f) {
                d = d > -100.0f ? d : -100.0f;
                const float p = realn_exp(d);
                v = -p * (a + b * (d + hf));
            } else {
                v = -a * realn_exp(d);
            }
            if (j == y) v += a;
        }
        g[j] = v;
    }
}

// Ignored rows: loss = lse = 0 (not computed).
REALN_GLOBAL void realn_cross_entropy_fwd(const float* logits, const int* labels, i64 rows, i64 vocab, int ignore_index,
                                          float* loss, float* lse) {
    REALN_SHARED double scratch[REALN_ROW_THREADS];
    REALN_SHARED float fscratch[REALN_ROW_THREADS];
    const i64 r = blockIdx.x;
    if (r >= rows) return;
    const int y = labels[r];
    if (y == ignore_index) {
        if (threadIdx.x == 0) {
            loss[r] = 0.0f;
            lse[r] = 0.0f;
        }
        return;
    }
    const float* x = logits + r * vocab;
    const float m = realn_row_zmax(x, 0, vocab, 1.0f, fscratch);
    double s = 0.0;
    for (i64 j = threadIdx.x; j < vocab; j += blockDim.x) s += realn_exp(x[j] - m);
    s = realn_block_sum(s, scratch);
    if (threadIdx.x != 0) return;
    const double l = (double)m + realn_log_d(s);
    lse[r] = (float)l;
    loss[r] = (float)(l - (double)x[y]);
}

REALN_GLOBAL void realn_cross_entropy_bwd(const float* logits, const int* labels, i64 rows, i64 vocab, int ignore_index,
                                          const float* lse, float grad_scale, float* dlogits) {
    const i64 r = blockIdx.x;
    if (r >= rows) return;
    const float* x = logits + r * vocab;
    float* g = dlogits + r * vocab;
    const int y = labels[r];
    if (y == ignore_index) {
        for (i64 j = threadIdx.x; j < vocab; j += blockDim.x) g[j] = 0.0f;
        return;
    }
    const float l = lse[r];
    for (i64 j = threadIdx.x; j < vocab; j += blockDim.x) {
        float v = grad_scale * realn_exp(x[j] - l);
        if (j == y) v -= grad_scale;
        g[j] = v;
    }
}
