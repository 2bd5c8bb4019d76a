namespace ReaLNative.Engine.Layout;

/// <summary>Architecture numbers a LLaMA shard layout depends on.</summary>
/// <remarks><paramref name="HeadRows"/>: rows of the output head -- Vocab (language-model head
/// "lm_head.weight", vocab-parallel), 1 (scalar head "score.weight" of critics and reward models,
/// replicated) or 0 (tied to the embedding: no separate head). -1 means Vocab.
/// <paramref name="QkvBias"/>: q/k/v projection biases (Qwen2), column-parallel like their weights.</remarks>
internal sealed record LlamaShape(int Layers, int Hidden, int Intermediate, int Heads, int KvHeads, int Vocab, int HeadRows = -1, bool QkvBias = false)
{
    public int EffectiveHeadRows => HeadRows < 0 ? Vocab : HeadRows;

    public long Parameters => Units().Sum(u => u.Sum(p => p.Shape.Aggregate(1L, (a, b) => a * b)));

    /// <summary>The L+2 pipeline units (embedding, blocks, norm+head) with their parameters
    /// (HF LLaMA names, shapes, tensor-parallel split dim: 0 column/vocab-parallel, 1 row-parallel,
    /// -1 replicated).</summary>
    public List<List<(string Name, long[] Shape, int Split)>> Units()
    {
        int hd = Hidden / Heads;
        var units = new List<List<(string, long[], int)>> { new() { ("model.embed_tokens.weight", [Vocab, Hidden], 0) } };
        for (int l = 0; l < Layers; l++)
        {
            string p = $"model.layers.{l}.";
            var block = new List<(string, long[], int)>
            {
                (p + "input_layernorm.weight", [Hidden], -1),
                (p + "self_attn.q_proj.weight", [Heads * hd, Hidden], 0),
                (p + "self_attn.k_proj.weight", [KvHeads * hd, Hidden], 0),
                (p + "self_attn.v_proj.weight", [KvHeads * hd, Hidden], 0),
            };
            if (QkvBias)  // after the three weights (which stay one q|k|v matrix), q|k|v in order too
                block.AddRange([
                    (p + "self_attn.q_proj.bias", [Heads * hd], 0),
                    (p + "self_attn.k_proj.bias", [KvHeads * hd], 0),
                    (p + "self_attn.v_proj.bias", [KvHeads * hd], 0)]);
            block.AddRange([
                (p + "self_attn.o_proj.weight", [Hidden, Heads * hd], 1),
                (p + "post_attention_layernorm.weight", [Hidden], -1),
                (p + "mlp.gate_proj.weight", [Intermediate, Hidden], 0),
                (p + "mlp.up_proj.weight", [Intermediate, Hidden], 0),
                (p + "mlp.down_proj.weight", [Hidden, Intermediate], 1)]);
            units.Add(block);
        }
        var last = new List<(string, long[], int)> { ("model.norm.weight", [Hidden], -1) };
        if (EffectiveHeadRows == 1) last.Add(("score.weight", [1, Hidden], -1));
        else if (EffectiveHeadRows > 0) last.Add(("lm_head.weight", [EffectiveHeadRows, Hidden], 0));
        units.Add(last);
        return units;
    }
}

/// <summary>
/// The shard layout of a LLaMA model under (pp, tp) following DESIGN.md: pipeline stages split the
/// L+2 units balanced by parameter count (a unit goes to the stage its cumulative midpoint falls
/// in), tensor parallel splits column-parallel weights on dim 0 and row-parallel ones on dim 1,
/// norms are replicated. Views are stored in unit order, contiguously.
/// </summary>
internal static class LlamaShardLayouts
{
    public static ShardLayoutFactory Factory(LlamaShape shape)
    {
        var units = shape.Units();
        long[] cost = units.Select(u => u.Sum(p => p.Shape.Aggregate(1L, (a, b) => a * b))).ToArray();
        long total = cost.Sum();
        return (pp, ppRank, tp, tpRank) =>
        {
            if (shape.Heads % tp != 0 || shape.KvHeads % tp != 0 || shape.Vocab % tp != 0 || shape.Intermediate % tp != 0)
                throw new ArgumentException($"tp={tp} must divide heads {shape.Heads}, kv heads {shape.KvHeads}, vocab {shape.Vocab} and intermediate {shape.Intermediate}");
            if (pp > units.Count) throw new ArgumentException($"pp={pp} exceeds the {units.Count} pipeline units (layers + 2)");
            var views = new List<ShardView>();
            long acc = 0, offset = 0;
            for (int u = 0; u < units.Count; u++)
            {
                int stage = StageOf(acc, cost[u], total, pp, u, units.Count);
                acc += cost[u];
                if (stage != ppRank) continue;
                foreach (var (name, s, split) in units[u])
                {
                    int sd = tp > 1 ? split : -1;
                    long len = sd >= 0 ? s[sd] / tp : 0;
                    var v = new ShardView(name, s, sd, sd >= 0 ? len * tpRank : 0, len, offset);
                    views.Add(v);
                    offset += v.LocalElements;
                }
            }
            return new ShardLayout(views, offset);
        };
    }

    /// <summary>Stage of unit <paramref name="u"/>: by cumulative midpoint, but never leaving a stage
    /// empty (unit u can go no later than stage u and no earlier than stage pp - (count - u)).</summary>
    private static int StageOf(long before, long cost, long total, int pp, int u, int count)
    {
        int s = (int)Math.Min(pp - 1, (before + cost / 2) * pp / total);
        return Math.Clamp(s, Math.Max(0, pp - (count - u)), Math.Min(u, pp - 1));
    }
}
