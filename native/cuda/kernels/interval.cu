// Interval gather/scatter for many small intervals (reallocation of row-parallel shards). The host
// cuts the intervals into pieces of at most 16 KiB (host_plans.hpp: interval_pieces); a warp copies
// one piece (grid-stride over pieces by global warp index), its lanes moving 16-byte words, four in
// flight per lane, where the source, destination and length allow it, else 4-byte words, else bytes.
// offsets, lengths and the staging positions are a device copy of the host's piece list.
#include "common.cuh"

// Field by field: a whole-struct assignment is lowered to a copy through local memory.
REALN_DEVICE void realn_st4u(realn_u4* d, realn_u4 w) {
    d->a = w.a;
    d->b = w.b;
    d->c = w.c;
    d->d = w.d;
}

REALN_DEVICE void realn_copy_bytes_warp(char* dst, const char* src, i64 n, int lane) {
    const u64 align = (u64)dst | (u64)src | (u64)n;
    if ((align & 15) == 0) {
        realn_u4* d = (realn_u4*)dst;
        const realn_u4* s = (const realn_u4*)src;
        const i64 words = n / 16;
        i64 i = lane;
        for (; i + 96 < words; i += 128) {  // four independent loads in flight before the stores
            const realn_u4 w0 = s[i], w1 = s[i + 32], w2 = s[i + 64], w3 = s[i + 96];
            realn_st4u(d + i, w0);
            realn_st4u(d + i + 32, w1);
            realn_st4u(d + i + 64, w2);
            realn_st4u(d + i + 96, w3);
        }
        for (; i < words; i += 32) realn_st4u(d + i, s[i]);
    } else if ((align & 3) == 0) {
        for (i64 i = lane; i < n / 4; i += 32) ((unsigned*)dst)[i] = ((const unsigned*)src)[i];
    } else {
        for (i64 i = lane; i < n; i += 32) dst[i] = src[i];
    }
}

// blockDim.x a multiple of 32.
REALN_GLOBAL void realn_interval_gather(char* staging, const char* flat, const i64* offsets, const i64* lengths,
                                        const i64* at, i64 count) {
    const i64 warps = (i64)gridDim.x * (blockDim.x / 32);
    const int lane = threadIdx.x % 32;
    for (i64 k = (i64)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32; k < count; k += warps)
        realn_copy_bytes_warp(staging + at[k], flat + offsets[k], lengths[k], lane);
}

REALN_GLOBAL void realn_interval_scatter(char* flat, const char* staging, const i64* offsets, const i64* lengths,
                                         const i64* at, i64 count) {
    const i64 warps = (i64)gridDim.x * (blockDim.x / 32);
    const int lane = threadIdx.x % 32;
    for (i64 k = (i64)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32; k < count; k += warps)
        realn_copy_bytes_warp(flat + offsets[k], staging + at[k], lengths[k], lane);
}
