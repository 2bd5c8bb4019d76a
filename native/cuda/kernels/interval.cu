// Interval gather/scatter for many small intervals (reallocation of row-parallel shards): one
// block per interval (grid-stride over intervals), its threads copying 16-byte words where the
// source, destination and length allow it, else 4-byte words, else bytes. offsets, lengths and
// the staging positions are device copies of the host lists the ABI takes.
#include "common.cuh"

REALN_DEVICE void realn_copy_bytes(char* dst, const char* src, i64 n) {
    const u64 align = (u64)dst | (u64)src | (u64)n;
    if ((align & 15) == 0) {
        typedef struct { unsigned a, b, c, d; } v16;
        for (i64 i = threadIdx.x; i < n / 16; i += blockDim.x) ((v16*)dst)[i] = ((const v16*)src)[i];
    } else if ((align & 3) == 0) {
        for (i64 i = threadIdx.x; i < n / 4; i += blockDim.x) ((unsigned*)dst)[i] = ((const unsigned*)src)[i];
    } else {
        for (i64 i = threadIdx.x; i < n; i += blockDim.x) dst[i] = src[i];
    }
}

REALN_GLOBAL void realn_interval_gather(char* staging, const char* flat, const i64* offsets, const i64* lengths,
                                        const i64* at, i64 count) {
    for (i64 k = blockIdx.x; k < count; k += gridDim.x) realn_copy_bytes(staging + at[k], flat + offsets[k], lengths[k]);
}

REALN_GLOBAL void realn_interval_scatter(char* flat, const char* staging, const i64* offsets, const i64* lengths,
                                         const i64* at, i64 count) {
    for (i64 k = blockIdx.x; k < count; k += gridDim.x) realn_copy_bytes(flat + offsets[k], staging + at[k], lengths[k]);
}
