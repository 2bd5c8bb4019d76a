// Elementwise ops, dtype conversion and the deterministic reductions (sumsq, count_nonfinite) of
// the CUDA backend. Reductions run on a fixed grid (REALN_REDUCE_BLOCKS x 256 threads) with a
// fixed-order tree per block and one block summing the partials, so the result does not depend on
// scheduling: the same input gives the same bits on every run.
#include "common.cuh"

REALN_GLOBAL void realn_fill_f32(float* y, i64 n, float v) { REALN_FOR(i, n) y[i] = v; }

REALN_GLOBAL void realn_axpby_f32(i64 n, float alpha, const float* x, float beta, float* y) {
    REALN_FOR(i, n) y[i] = alpha * x[i] + beta * y[i];
}

REALN_GLOBAL void realn_add_f32(i64 n, const float* a, const float* b, float* out) {
    REALN_FOR(i, n) out[i] = a[i] + b[i];
}

REALN_GLOBAL void realn_scale_f32(float* x, i64 n, float alpha) { REALN_FOR(i, n) x[i] *= alpha; }

REALN_GLOBAL void realn_f32_to_bf16(const float* src, u16* dst, i64 n) {
    REALN_FOR(i, n) dst[i] = realn_f32_to_bf16(src[i]);
}

REALN_GLOBAL void realn_bf16_to_f32(const u16* src, float* dst, i64 n) {
    REALN_FOR(i, n) dst[i] = realn_bf16_to_f32(src[i]);
}

// Any other pair of F32 / BF16 / F16 (the F16 pairs): through fp32, as the CPU backend converts.
REALN_GLOBAL void realn_convert_any(const void* src, int src_dtype, void* dst, int dst_dtype, i64 n) {
    REALN_FOR(i, n) realn_store_any(dst, dst_dtype, i, realn_load_any(src, src_dtype, i));
}

// Per block: the sum of x^2 (double) over its grid-stride share, into partial[blockIdx.x].
REALN_GLOBAL void realn_sumsq_partial(const float* x, i64 n, double* partial) {
    REALN_SHARED double scratch[256];
    double acc = 0.0;
    REALN_FOR(i, n) acc += (double)x[i] * (double)x[i];
    double s = realn_block_sum(acc, scratch);
    if (threadIdx.x == 0) partial[blockIdx.x] = s;
}

// Per block: the count of non-finite values, as a double (exact below 2^53).
REALN_GLOBAL void realn_nonfinite_partial(const float* x, i64 n, double* partial) {
    REALN_SHARED double scratch[256];
    double acc = 0.0;
    REALN_FOR(i, n) acc += realn_isfinite(x[i]) ? 0.0 : 1.0;
    double s = realn_block_sum(acc, scratch);
    if (threadIdx.x == 0) partial[blockIdx.x] = s;
}

// One block: out[0] = sum of count partials, in a fixed order.
REALN_GLOBAL void realn_sum_partials(const double* partial, int count, double* out) {
    REALN_SHARED double scratch[256];
    double acc = 0.0;
    for (int i = threadIdx.x; i < count; i += blockDim.x) acc += partial[i];
    double s = realn_block_sum(acc, scratch);
    if (threadIdx.x == 0) out[0] = s;
}

// y[r, j] += bias[j] (the linear layer's bias after its GEMM).
REALN_GLOBAL void realn_add_bias(float* y, const float* bias, i64 rows, i64 cols) {
    REALN_FOR(i, rows * cols) y[i] += bias[i % cols];
}

// out[j] += sum_r x[r, j] in double, rows in order (deterministic column sums: dbias).
REALN_GLOBAL void realn_colsum_acc(const float* x, float* out, i64 rows, i64 cols) {
    REALN_FOR(j, cols) {
        double acc = 0.0;
        for (i64 r = 0; r < rows; ++r) acc += x[r * cols + j];
        out[j] += (float)acc;
    }
}
