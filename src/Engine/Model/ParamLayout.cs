using ReaLNative.Engine.Layout;

namespace ReaLNative.Engine.Model;

/// <summary>
/// Parameter layout of one model shard: every parameter of the shard in ONE contiguous float
/// buffer, as named views in pipeline-unit order (embedding; blocks 0..L-1 with input_layernorm,
/// q/k/v/o_proj, post_attention_layernorm, gate/up/down_proj; model.norm + head). Gradients and
/// AdamW moments use parallel buffers of the same layout.
/// </summary>
/// <remarks>
/// Each <see cref="ShardView"/> records the HF name, the GLOBAL shape (row-major, HF orientation
/// [out, in]), the split dim (0 = column-parallel q/k/v/gate/up and vocab-parallel
/// embed_tokens/lm_head, 1 = row-parallel o/down, -1 = whole tensor: norms, score.weight, or
/// tp = 1), the slice [SliceStart, SliceStart + SliceLength) of the split dim this shard holds
/// (tp rank r holds the r-th of tp equal parts) and the element Offset of the local tensor
/// (local shape = global shape with the split dim replaced by SliceLength) in the flat buffer.
/// Pipeline stages take contiguous runs of the L+2 units balanced by parameter count.
/// Single device = Create(cfg, head, 1, 0, 1, 0).
/// </remarks>
internal static class ParamLayout
{
    /// <summary>Layout of shard (ppRank, tpRank) of a model under pipeline size ppSize and
    /// tensor-parallel size tpSize. <paramref name="scalarHead"/>: critic / reward model
    /// ("score.weight" [1, hidden]); otherwise "lm_head.weight" [vocab, hidden] unless the
    /// config ties embeddings (then no separate head).</summary>
    public static ShardLayout Create(LlamaConfig cfg, bool scalarHead, int ppSize = 1, int ppRank = 0, int tpSize = 1, int tpRank = 0)
    {
        if (ppSize < 1 || (uint)ppRank >= (uint)ppSize) throw new ArgumentException($"pp rank {ppRank} outside pp size {ppSize}");
        if (tpSize < 1 || (uint)tpRank >= (uint)tpSize) throw new ArgumentException($"tp rank {tpRank} outside tp size {tpSize}");
        return LlamaShardLayouts.Factory(cfg.Validate().Shape(scalarHead))(ppSize, ppRank, tpSize, tpRank);
    }

    /// <summary>The factory of all shards' layouts of one model (what reallocation plans take).</summary>
    public static ShardLayoutFactory Factory(LlamaConfig cfg, bool scalarHead) =>
        LlamaShardLayouts.Factory(cfg.Validate().Shape(scalarHead));
}
