// Row-wise transformer ops of the CUDA backend, with the CPU backend's semantics
// (native/src/cpu): RMSNorm (double statistics), SwiGLU, rotary embedding (angles reduced in
// double from a host-computed inverse-frequency table) and the vocab-parallel embedding.
#include "common.cuh"

// One block per row; blockDim.x a power of two <= 256.
REALN_GLOBAL void realn_rmsnorm_fwd(const float* x, const float* w, float* y, float* rstd, i64 rows,
                                    i64 dim, float eps) {
    REALN_SHARED double scratch[256];
    const i64 r = blockIdx.x;
    if (r >= rows) return;
    const float* xr = x + r * dim;
    double ss = 0.0;
    for (i64 j = threadIdx.x; j < dim; j += blockDim.x) ss += (double)xr[j] * (double)xr[j];
    const double total = realn_block_sum(ss, scratch);
    const float rs = (float)(1.0 / realn_sqrt_d(total / (double)dim + (double)eps));
    if (threadIdx.x == 0 && rstd) rstd[r] = rs;
    for (i64 j = threadIdx.x; j < dim; j += blockDim.x) y[r * dim + j] = xr[j] * rs * w[j];
}

// dx per row (one block per row); dw is accumulated by realn_rmsnorm_bwd_dw.
REALN_GLOBAL void realn_rmsnorm_bwd_dx(const float* x, const float* w, const float* rstd,
                                       const float* dy, float* dx, i64 rows, i64 dim) {
    REALN_SHARED double scratch[256];
    const i64 r = blockIdx.x;
    if (r >= rows) return;
    const float* xr = x + r * dim;
    const float* gr = dy + r * dim;
    const double rs = rstd[r];
    double dot = 0.0;
    for (i64 j = threadIdx.x; j < dim; j += blockDim.x) dot += (double)(gr[j] * w[j]) * (double)xr[j];
    const double total = realn_block_sum(dot, scratch);
    const float a = (float)rs;
    const float c = (float)(rs * rs * rs * total / (double)dim);
    for (i64 j = threadIdx.x; j < dim; j += blockDim.x) dx[r * dim + j] = a * w[j] * gr[j] - c * xr[j];
}

// dw[j] += sum_r dy[r, j] x[r, j] rstd[r]: one thread per column, rows in order (deterministic).
REALN_GLOBAL void realn_rmsnorm_bwd_dw(const float* x, const float* rstd, const float* dy, float* dw,
                                       i64 rows, i64 dim) {
    REALN_FOR(j, dim) {
        double acc = 0.0;
        for (i64 r = 0; r < rows; ++r) acc += (double)(dy[r * dim + j] * x[r * dim + j]) * (double)rstd[r];
        dw[j] += (float)acc;
    }
}

REALN_DEVICE float realn_silu(float g) { return g / (1.0f + realn_exp(-g)); }

REALN_GLOBAL void realn_swiglu_fwd(const float* gate, const float* up, i64 ld_in, float* out, i64 ld_out,
                                   i64 rows, i64 cols) {
    REALN_FOR(i, rows * cols) {
        const i64 r = i / cols, c = i % cols;
        const float g = gate[r * ld_in + c];
        out[r * ld_out + c] = realn_silu(g) * up[r * ld_in + c];
    }
}

REALN_GLOBAL void realn_swiglu_bwd(const float* gate, const float* up, i64 ld_in, const float* dout,
                                   i64 ld_out, float* dgate, float* dup, i64 rows, i64 cols) {
    REALN_FOR(i, rows * cols) {
        const i64 r = i / cols, c = i % cols;
        const float g = gate[r * ld_in + c], u = up[r * ld_in + c], d = dout[r * ld_out + c];
        const float s = 1.0f / (1.0f + realn_exp(-g));
        dgate[r * ld_in + c] = d * u * s * (1.0f + g * (1.0f - s));
        dup[r * ld_in + c] = d * g * s;
    }
}

// Rotary (rotate_half): one thread per (token, head, pair i < rot_dim/2). inv_freq: double [rot_dim/2].
// The angle pos * inv_freq is formed and reduced to [-pi, pi] in double, then sin/cos in fp32.
REALN_GLOBAL void realn_rotary(const float* x, const int* positions, float* y, i64 tokens, i64 heads,
                               i64 head_dim, i64 rot_dim, const double* inv_freq, float sign) {
    const i64 half = rot_dim / 2;
    REALN_FOR(i, tokens * heads * half) {
        const i64 k = i % half, th = i / half;
        const i64 t = th / heads;
        const double a = (double)positions[t] * inv_freq[k];
        const double two_pi = 6.283185307179586;
        const double turns = realn_rint_d(a / two_pi);
        const float red = (float)(a - turns * two_pi);
        const float c = realn_cos(red), s = sign * realn_sin(red);
        const float* xh = x + th * head_dim;
        float* yh = y + th * head_dim;
        const float p = xh[k], q = xh[k + half];
        yh[k] = p * c - q * s;
        yh[k + half] = q * c + p * s;
    }
}

// The dims past rot_dim pass through unchanged (when y is not x).
REALN_GLOBAL void realn_rotary_tail(const float* x, float* y, i64 rows, i64 head_dim, i64 rot_dim) {
    const i64 tail = head_dim - rot_dim;
    REALN_FOR(i, rows * tail) {
        const i64 r = i / tail, j = rot_dim + i % tail;
        y[r * head_dim + j] = x[r * head_dim + j];
    }
}

REALN_GLOBAL void realn_embedding_fwd(const int* ids, i64 n, const float* table, i64 vocab, i64 hidden,
                                      i64 vocab_start, float* out) {
    REALN_FOR(i, n * hidden) {
        const i64 t = i / hidden, h = i % hidden;
        const i64 row = (i64)ids[t] - vocab_start;
        out[i] = (row >= 0 && row < vocab) ? table[row * hidden + h] : 0.0f;
    }
}

// dtable[id - vocab_start] += dout[t]: one thread per hidden column walks the tokens in order, so
// repeated ids accumulate in a fixed order (deterministic, as on the CPU backend).
REALN_GLOBAL void realn_embedding_bwd(const int* ids, i64 n, const float* dout, i64 vocab, i64 hidden,
                                      i64 vocab_start, float* dtable) {
    REALN_FOR(h, hidden) {
        for (i64 t = 0; t < n; ++t) {
            const i64 row = (i64)ids[t] - vocab_start;
            if (row >= 0 && row < vocab) dtable[row * hidden + h] += dout[t * hidden + h];
        }
    }
}

// A bf16 table (dtype BF16): rows widened exactly into the fp32 output.
REALN_GLOBAL void realn_embedding_fwd_bf16(const int* ids, i64 n, const u16* table, i64 vocab, i64 hidden,
                                           i64 vocab_start, float* out) {
    REALN_FOR(i, n * hidden) {
        const i64 t = i / hidden, h = i % hidden;
        const i64 row = (i64)ids[t] - vocab_start;
        out[i] = (row >= 0 && row < vocab) ? realn_bf16_to_f32(table[row * hidden + h]) : 0.0f;
    }
}
