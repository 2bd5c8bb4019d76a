// Host-side work lists of the CUDA backend's kernels, shared by backend_cuda.cpp and ctest
// `cuda_kernels_emulated` (which runs the kernels on the CPU with the same lists).
#pragma once

#include <cstdint>
#include <unordered_map>
#include <vector>

namespace realn::cuda {

// kernels/attention.cu: REALN_ATT_T rows per tile, REALN_ATT_THREADS threads per block, and the
// dynamic shared memory of dQ (Q, dO, K, V tiles of T x (128 + 4) floats and a T x (T + 1) dS tile)
// and of dK/dV (the same four tiles, P^T and dS^T, lse and delta of the query tile).
constexpr int32_t kAttentionRows = 32;
constexpr int32_t kAttentionThreads = 128;
constexpr int32_t kAttentionDeltaWarps = 8;  // REALN_ATT_DELTA_WARPS: delta rows per block, a warp each
constexpr int64_t kAttentionTileFloats = int64_t(kAttentionRows) * (128 + 4);
constexpr int64_t kAttentionPFloats = int64_t(kAttentionRows) * (kAttentionRows + 1);
constexpr int64_t kAttentionDqSmem = (4 * kAttentionTileFloats + kAttentionPFloats) * 4;
constexpr int64_t kAttentionDkvSmem = (4 * kAttentionTileFloats + 2 * kAttentionPFloats + 2 * kAttentionRows) * 4;

// (sequence start, sequence length, first row) of every kAttentionRows-row tile of every sequence
// (query rows for the forward and dQ, key rows for dK/dV); empty sequences have none.
inline std::vector<int32_t> attention_tiles(const int32_t* cu_seqlens, int64_t nseq) {
    std::vector<int32_t> tiles;
    for (int64_t i = 0; i < nseq; ++i) {
        const int32_t start = cu_seqlens[i], len = cu_seqlens[i + 1] - cu_seqlens[i];
        for (int32_t r = 0; r < len; r += kAttentionRows) tiles.insert(tiles.end(), {start, len, r});
    }
    return tiles;
}

// Interval gather/scatter work list: every interval cut into pieces of at most kIntervalPiece bytes
// (cut at multiples of the piece size from the interval's start, so a piece keeps its interval's
// alignment), as three arrays [offsets | lengths | staging positions] of one int64 list; a warp
// copies one piece, so a few huge intervals and many tiny ones both spread over the whole GPU.
// Empty intervals have no piece.
constexpr int64_t kIntervalPiece = 16384;

inline std::vector<int64_t> interval_pieces(const int64_t* off, const int64_t* len, int64_t count) {
    int64_t pieces = 0;
    for (int64_t i = 0; i < count; ++i) pieces += (len[i] + kIntervalPiece - 1) / kIntervalPiece;
    std::vector<int64_t> meta(static_cast<size_t>(3 * pieces));
    int64_t* o = meta.data();
    int64_t* l = o + pieces;
    int64_t* a = l + pieces;
    for (int64_t i = 0, at = 0, k = 0; i < count; at += len[i], ++i)
        for (int64_t p = 0; p < len[i]; p += kIntervalPiece, ++k) {
            o[k] = off[i] + p;
            l[k] = len[i] - p < kIntervalPiece ? len[i] - p : kIntervalPiece;
            a[k] = at + p;
        }
    return meta;
}

// kv_store's rows: each cache row (slot * max_len + position) once, with the LAST token naming it
// (the CPU backend's "later token wins"), so the kernel has one writer per element.
struct KvStorePlan {
    std::vector<int32_t> src_token;
    std::vector<int64_t> dst_row;
};

inline KvStorePlan kv_store_plan(const int32_t* slots, const int32_t* positions, int64_t tokens, int64_t max_len) {
    KvStorePlan plan;
    std::unordered_map<int64_t, size_t> index;  // cache row -> item
    for (int64_t t = 0; t < tokens; ++t) {
        const int64_t row = int64_t(slots[t]) * max_len + positions[t];
        auto [it, fresh] = index.emplace(row, plan.dst_row.size());
        if (fresh) {
            plan.dst_row.push_back(row);
            plan.src_token.push_back(static_cast<int32_t>(t));
        } else {
            plan.src_token[it->second] = static_cast<int32_t>(t);
        }
    }
    return plan;
}

}  // namespace realn::cuda
