// GGUF v3 export of a single-device LLaMA model (F32), so llama.cpp can run exactly our weights:
// the in-run reference of the generation benchmark (bench/LlamaCppOracle) and its logits cross-check.
// Our rotary is Hugging Face's rotate_half; llama.cpp's "llama" architecture rotates adjacent pairs,
// so q_proj / k_proj rows are permuted per head exactly as llama.cpp's convert_hf_to_gguf.py does.
using System.Text;
using ReaLNative.Engine.Model;

namespace ReaLNative.Engine.Checkpoints;

/// <summary>Writes a model as a GGUF v3 file of F32 tensors with the "llama" architecture and a
/// synthetic SentencePiece-style vocabulary (&lt;unk&gt;, &lt;s&gt;, &lt;/s&gt;, 256 byte tokens, then
/// "t{id}"), enough for llama.cpp to load it and run token ids.</summary>
internal static class GgufWriter
{
    private const uint Magic = 0x46554747;  // "GGUF" little-endian
    private const uint Version = 3;
    private const int Alignment = 32;
    private const uint TypeU32 = 4, TypeI32 = 5, TypeF32 = 6, TypeString = 8, TypeArray = 9;
    private const uint GgmlF32 = 0;

    /// <summary>Row permutation of a q/k projection [heads * headDim, hidden] from HF's rotate_half
    /// rotary layout to llama.cpp's interleaved one: new row h*d + 2j + half = old row h*d + half*d/2 + j.</summary>
    public static int[] RopePermutation(int heads, int headDim)
    {
        var perm = new int[heads * headDim];
        int half = headDim / 2;
        for (int h = 0; h < heads; h++)
            for (int j = 0; j < half; j++)
                for (int s = 0; s < 2; s++)
                    perm[h * headDim + 2 * j + s] = h * headDim + s * half + j;
        return perm;
    }

    private sealed record Tensor(string Name, long[] Dims, Func<float[]> Data);

    /// <summary>Writes <paramref name="model"/> (single device, language-model head) to <paramref name="path"/>.
    /// <paramref name="permuteRope"/> false keeps q/k rows in HF order (wrong for llama.cpp: only the
    /// cross-check's negative test uses it).</summary>
    public static void Write(LlamaModel model, string path, bool permuteRope = true)
    {
        if (model.ScalarHead) throw new ArgumentException("GGUF export needs a language-model head, not a scalar head");
        if (model.Comm is not null) throw new ArgumentException("GGUF export needs a single-device model (pp 1, tp 1)");
        var c = model.Config;
        if (c.Vocab < 260) throw new ArgumentException($"GGUF export needs vocab_size >= 260 for its synthetic vocabulary (got {c.Vocab})");
        int H = c.Hidden, I = c.Intermediate, d = c.HeadDim, kd = c.KvHeads * d;
        var tensors = new List<Tensor>();
        float[] Copy(string n) => model.View(n).ToArray();
        float[] Permuted(string n, int heads)
        {
            var src = model.View(n);
            if (!permuteRope) return src.ToArray();
            var perm = RopePermutation(heads, d);
            var dst = new float[src.Length];
            for (int r = 0; r < perm.Length; r++) src.Slice(perm[r] * H, H).CopyTo(dst.AsSpan(r * H, H));
            return dst;
        }
        tensors.Add(new("token_embd.weight", [H, c.Vocab], () => Copy("model.embed_tokens.weight")));
        for (int l = 0; l < c.Layers; l++)
        {
            string p = $"model.layers.{l}.", b = $"blk.{l}.";
            tensors.Add(new(b + "attn_norm.weight", [H], () => Copy(p + "input_layernorm.weight")));
            tensors.Add(new(b + "attn_q.weight", [H, c.Heads * d], () => Permuted(p + "self_attn.q_proj.weight", c.Heads)));
            tensors.Add(new(b + "attn_k.weight", [H, kd], () => Permuted(p + "self_attn.k_proj.weight", c.KvHeads)));
            tensors.Add(new(b + "attn_v.weight", [H, kd], () => Copy(p + "self_attn.v_proj.weight")));
            tensors.Add(new(b + "attn_output.weight", [c.Heads * d, H], () => Copy(p + "self_attn.o_proj.weight")));
            tensors.Add(new(b + "ffn_norm.weight", [H], () => Copy(p + "post_attention_layernorm.weight")));
            tensors.Add(new(b + "ffn_gate.weight", [H, I], () => Copy(p + "mlp.gate_proj.weight")));
            tensors.Add(new(b + "ffn_up.weight", [H, I], () => Copy(p + "mlp.up_proj.weight")));
            tensors.Add(new(b + "ffn_down.weight", [I, H], () => Copy(p + "mlp.down_proj.weight")));
        }
        tensors.Add(new("output_norm.weight", [H], () => Copy("model.norm.weight")));
        if (!c.TiedEmbeddings) tensors.Add(new("output.weight", [H, c.Vocab], () => Copy("lm_head.weight")));

        using var fs = new FileStream(path, FileMode.Create, FileAccess.Write, FileShare.None, 1 << 20);
        using var w = new BinaryWriter(fs, Encoding.UTF8, leaveOpen: true);
        var kv = new List<Action>();
        void Str(string s) { var u = Encoding.UTF8.GetBytes(s); w.Write((ulong)u.Length); w.Write(u); }
        void KvU32(string k, uint v) => kv.Add(() => { Str(k); w.Write(TypeU32); w.Write(v); });
        void KvF32(string k, float v) => kv.Add(() => { Str(k); w.Write(TypeF32); w.Write(v); });
        void KvStr(string k, string v) => kv.Add(() => { Str(k); w.Write(TypeString); Str(v); });
        KvStr("general.architecture", "llama");
        KvStr("general.name", "realn-export");
        KvU32("general.alignment", Alignment);
        KvU32("llama.context_length", (uint)c.MaxPositions);
        KvU32("llama.embedding_length", (uint)H);
        KvU32("llama.block_count", (uint)c.Layers);
        KvU32("llama.feed_forward_length", (uint)I);
        KvU32("llama.attention.head_count", (uint)c.Heads);
        KvU32("llama.attention.head_count_kv", (uint)c.KvHeads);
        KvU32("llama.rope.dimension_count", (uint)d);
        KvU32("llama.vocab_size", (uint)c.Vocab);
        KvF32("llama.attention.layer_norm_rms_epsilon", c.RmsEps);
        KvF32("llama.rope.freq_base", c.RopeTheta);
        KvU32("general.file_type", 0);  // all F32
        KvStr("tokenizer.ggml.model", "llama");
        kv.Add(() =>
        {
            Str("tokenizer.ggml.tokens"); w.Write(TypeArray); w.Write(TypeString); w.Write((ulong)c.Vocab);
            for (int t = 0; t < c.Vocab; t++) Str(t switch { 0 => "<unk>", 1 => "<s>", 2 => "</s>", < 259 => $"<0x{t - 3:X2}>", _ => $"t{t}" });
        });
        kv.Add(() =>
        {
            Str("tokenizer.ggml.scores"); w.Write(TypeArray); w.Write(TypeF32); w.Write((ulong)c.Vocab);
            for (int t = 0; t < c.Vocab; t++) w.Write(t < 259 ? 0f : -(float)t);
        });
        kv.Add(() =>
        {
            // 1 normal, 2 unknown, 3 control, 6 byte
            Str("tokenizer.ggml.token_type"); w.Write(TypeArray); w.Write(TypeI32); w.Write((ulong)c.Vocab);
            for (int t = 0; t < c.Vocab; t++) w.Write(t switch { 0 => 2, 1 or 2 => 3, < 259 => 6, _ => 1 });
        });
        KvU32("tokenizer.ggml.bos_token_id", 1);
        KvU32("tokenizer.ggml.eos_token_id", 2);
        KvU32("tokenizer.ggml.unknown_token_id", 0);

        w.Write(Magic);
        w.Write(Version);
        w.Write((ulong)tensors.Count);
        w.Write((ulong)kv.Count);
        foreach (var a in kv) a();
        long offset = 0;
        var offsets = new long[tensors.Count];
        for (int i = 0; i < tensors.Count; i++)
        {
            var t = tensors[i];
            Str(t.Name);
            w.Write((uint)t.Dims.Length);
            foreach (var dim in t.Dims) w.Write((ulong)dim);
            w.Write(GgmlF32);
            w.Write((ulong)offset);
            offsets[i] = offset;
            offset += Align(t.Dims.Aggregate(1L, (x, y) => x * y) * 4);
        }
        Pad(w);
        long dataStart = fs.Position;
        for (int i = 0; i < tensors.Count; i++)
        {
            if (fs.Position - dataStart != offsets[i]) throw new InvalidOperationException($"GGUF writer: tensor {tensors[i].Name} at {fs.Position - dataStart}, expected {offsets[i]}");
            var data = tensors[i].Data();
            long expected = tensors[i].Dims.Aggregate(1L, (x, y) => x * y);
            if (data.Length != expected) throw new InvalidOperationException($"GGUF writer: tensor {tensors[i].Name} has {data.Length} elements, dims say {expected}");
            w.Write(System.Runtime.InteropServices.MemoryMarshal.AsBytes(data.AsSpan()));
            Pad(w);
        }
    }

    private static long Align(long n) => (n + Alignment - 1) / Alignment * Alignment;

    private static void Pad(BinaryWriter w)
    {
        long pos = w.BaseStream.Position;
        for (long i = pos; i < Align(pos); i++) w.Write((byte)0);
    }
}
