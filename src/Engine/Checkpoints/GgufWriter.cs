// GGUF v3 export of a single-device LLaMA model so llama.cpp / Ollama run exactly our weights:
// `realn export CHECKPOINT --gguf OUT.gguf`, and the in-run reference of the generation benchmark
// (bench/LlamaCppOracle). Matrices are written as F32, F16 or BF16 (norms stay F32, as
// llama.cpp's converter writes them); the tokenizer (GgufVocab) and chat template go in the
// metadata. Our rotary is Hugging Face's rotate_half; llama.cpp's "llama" architecture rotates
// adjacent pairs, so q_proj / k_proj rows are permuted per head as convert_hf_to_gguf.py does.
// Families: LLaMA 3.1's rope scaling goes in as llama.cpp's "rope_freqs.weight" tensor (per pair,
// the unscaled frequency over the scaled one: llama.cpp divides by it); Qwen2 is llama.cpp's
// "qwen2" architecture (NEOX rotary = rotate_half: no permutation) with blk.N.attn_{q,k,v}.bias.
using System.Text;
using ReaLNative.Engine.Model;

namespace ReaLNative.Engine.Checkpoints;

/// <summary>Element type of the exported matrices.</summary>
internal enum GgufDType { F32, F16, BF16 }

internal static class GgufWriter
{
    public const uint Magic = 0x46554747;  // "GGUF" little-endian
    public const uint Version = 3;
    public const int Alignment = 32;
    public const uint TypeU8 = 0, TypeU32 = 4, TypeI32 = 5, TypeF32 = 6, TypeBool = 7, TypeString = 8, TypeArray = 9;
    /// <summary>ggml tensor types.</summary>
    public const uint GgmlF32 = 0, GgmlF16 = 1, GgmlBF16 = 30;

    public static GgufDType ParseDType(string s) => s.ToLowerInvariant() switch
    {
        "f32" => GgufDType.F32,
        "f16" => GgufDType.F16,
        "bf16" => GgufDType.BF16,
        _ => throw new ArgumentException($"GGUF dtype '{s}' is not supported (allowed: f32, f16, bf16)"),
    };

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

    /// <summary>F32 to BF16, round to nearest even (as torch's .to(bfloat16)); NaN stays a quiet NaN.</summary>
    public static ushort ToBf16(float f)
    {
        uint u = BitConverter.SingleToUInt32Bits(f);
        if ((u & 0x7fffffff) > 0x7f800000) return (ushort)((u >> 16) | 0x40);
        u += 0x7fff + ((u >> 16) & 1);
        return (ushort)(u >> 16);
    }

    public static float FromBf16(ushort h) => BitConverter.UInt32BitsToSingle((uint)h << 16);

    private sealed record Tensor(string Name, long[] Dims, bool Matrix, Func<float[]> Data);

    /// <summary>F32 export with the synthetic vocabulary (the benchmark's and cross-check's form).</summary>
    public static void Write(LlamaModel model, string path, bool permuteRope) => Write(model, path, null, GgufDType.F32, permuteRope);

    /// <summary>Writes <paramref name="model"/> (single device, language-model head) to <paramref name="path"/>:
    /// matrices as <paramref name="dtype"/>, <paramref name="vocab"/> (null: a synthetic vocabulary) in the metadata.
    /// <paramref name="permuteRope"/> false keeps q/k rows in HF order (wrong for llama.cpp: only the
    /// cross-check's negative test uses it).</summary>
    public static void Write(LlamaModel model, string path, GgufVocab? vocab = null, GgufDType dtype = GgufDType.F32, bool permuteRope = true)
    {
        if (model.ScalarHead) throw new ArgumentException("GGUF export needs a language-model head, not a scalar head (a reward or critic model)");
        if (model.Comm is not null) throw new ArgumentException("GGUF export needs a single-device model (pp 1, tp 1)");
        var c = model.Config;
        vocab ??= GgufVocab.Synthetic(c.Vocab);
        if (vocab.Tokens.Length != c.Vocab)
            throw new ArgumentException($"GGUF export: the vocabulary has {vocab.Tokens.Length} tokens, the model's vocab_size is {c.Vocab}");
        int H = c.Hidden, I = c.Intermediate, d = c.HeadDim, kd = c.KvHeads * d;
        string arch = c.ModelType == "qwen2" ? "qwen2" : "llama";
        if (arch == "qwen2") permuteRope = false;  // llama.cpp's qwen2 rotates halves, as we do
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
        tensors.Add(new("token_embd.weight", [H, c.Vocab], true, () => Copy("model.embed_tokens.weight")));
        if (c.RopeScaling is not null)
            tensors.Add(new("rope_freqs.weight", [d / 2], false, () => RopeFreqFactors(c)));
        for (int l = 0; l < c.Layers; l++)
        {
            string p = $"model.layers.{l}.", b = $"blk.{l}.";
            tensors.Add(new(b + "attn_norm.weight", [H], false, () => Copy(p + "input_layernorm.weight")));
            tensors.Add(new(b + "attn_q.weight", [H, c.Heads * d], true, () => Permuted(p + "self_attn.q_proj.weight", c.Heads)));
            tensors.Add(new(b + "attn_k.weight", [H, kd], true, () => Permuted(p + "self_attn.k_proj.weight", c.KvHeads)));
            tensors.Add(new(b + "attn_v.weight", [H, kd], true, () => Copy(p + "self_attn.v_proj.weight")));
            if (c.QkvBias)
            {
                tensors.Add(new(b + "attn_q.bias", [c.Heads * d], false, () => Copy(p + "self_attn.q_proj.bias")));
                tensors.Add(new(b + "attn_k.bias", [kd], false, () => Copy(p + "self_attn.k_proj.bias")));
                tensors.Add(new(b + "attn_v.bias", [kd], false, () => Copy(p + "self_attn.v_proj.bias")));
            }
            tensors.Add(new(b + "attn_output.weight", [c.Heads * d, H], true, () => Copy(p + "self_attn.o_proj.weight")));
            tensors.Add(new(b + "ffn_norm.weight", [H], false, () => Copy(p + "post_attention_layernorm.weight")));
            tensors.Add(new(b + "ffn_gate.weight", [H, I], true, () => Copy(p + "mlp.gate_proj.weight")));
            tensors.Add(new(b + "ffn_up.weight", [H, I], true, () => Copy(p + "mlp.up_proj.weight")));
            tensors.Add(new(b + "ffn_down.weight", [I, H], true, () => Copy(p + "mlp.down_proj.weight")));
        }
        tensors.Add(new("output_norm.weight", [H], false, () => Copy("model.norm.weight")));
        if (!c.TiedEmbeddings) tensors.Add(new("output.weight", [H, c.Vocab], true, () => Copy("lm_head.weight")));

        string tmp = path + ".tmp";
        using (var fs = new FileStream(tmp, FileMode.Create, FileAccess.Write, FileShare.None, 1 << 20))
        using (var w = new BinaryWriter(fs, Encoding.UTF8, leaveOpen: true))
        {
            var kv = new List<Action>();
            void Str(string s) { var u = Encoding.UTF8.GetBytes(s); w.Write((ulong)u.Length); w.Write(u); }
            void KvU32(string k, uint v) => kv.Add(() => { Str(k); w.Write(TypeU32); w.Write(v); });
            void KvF32(string k, float v) => kv.Add(() => { Str(k); w.Write(TypeF32); w.Write(v); });
            void KvBool(string k, bool v) => kv.Add(() => { Str(k); w.Write(TypeBool); w.Write((byte)(v ? 1 : 0)); });
            void KvStr(string k, string v) => kv.Add(() => { Str(k); w.Write(TypeString); Str(v); });
            KvStr("general.architecture", arch);
            KvStr("general.name", "realn-export");
            KvU32("general.alignment", Alignment);
            KvU32(arch + ".context_length", (uint)c.MaxPositions);
            KvU32(arch + ".embedding_length", (uint)H);
            KvU32(arch + ".block_count", (uint)c.Layers);
            KvU32(arch + ".feed_forward_length", (uint)I);
            KvU32(arch + ".attention.head_count", (uint)c.Heads);
            KvU32(arch + ".attention.head_count_kv", (uint)c.KvHeads);
            KvU32(arch + ".rope.dimension_count", (uint)d);
            KvU32(arch + ".vocab_size", (uint)c.Vocab);
            KvF32(arch + ".attention.layer_norm_rms_epsilon", c.RmsEps);
            KvF32(arch + ".rope.freq_base", c.RopeTheta);
            KvU32("general.file_type", dtype switch { GgufDType.F32 => 0u, GgufDType.F16 => 1u, _ => 32u });  // LLAMA_FTYPE_ALL_F32 / MOSTLY_F16 / MOSTLY_BF16
            KvStr("tokenizer.ggml.model", vocab.Model);
            if (vocab.Pre is not null) KvStr("tokenizer.ggml.pre", vocab.Pre);
            kv.Add(() =>
            {
                Str("tokenizer.ggml.tokens"); w.Write(TypeArray); w.Write(TypeString); w.Write((ulong)vocab.Tokens.Length);
                foreach (var t in vocab.Tokens) Str(t);
            });
            if (vocab.Scores is { } scores)
                kv.Add(() =>
                {
                    Str("tokenizer.ggml.scores"); w.Write(TypeArray); w.Write(TypeF32); w.Write((ulong)scores.Length);
                    foreach (var s in scores) w.Write(s);
                });
            kv.Add(() =>
            {
                Str("tokenizer.ggml.token_type"); w.Write(TypeArray); w.Write(TypeI32); w.Write((ulong)vocab.Types.Length);
                foreach (var t in vocab.Types) w.Write(t);
            });
            if (vocab.Merges is { } merges)
                kv.Add(() =>
                {
                    Str("tokenizer.ggml.merges"); w.Write(TypeArray); w.Write(TypeString); w.Write((ulong)merges.Length);
                    foreach (var m in merges) Str(m);
                });
            if (vocab.Bos >= 0) KvU32("tokenizer.ggml.bos_token_id", (uint)vocab.Bos);
            if (vocab.Eos >= 0) KvU32("tokenizer.ggml.eos_token_id", (uint)vocab.Eos);
            if (vocab.Unk >= 0) KvU32("tokenizer.ggml.unknown_token_id", (uint)vocab.Unk);
            if (vocab.Pad >= 0) KvU32("tokenizer.ggml.padding_token_id", (uint)vocab.Pad);
            KvBool("tokenizer.ggml.add_bos_token", vocab.AddBos);
            KvBool("tokenizer.ggml.add_eos_token", false);
            if (vocab.AddSpacePrefix is bool asp) KvBool("tokenizer.ggml.add_space_prefix", asp);
            if (vocab.ChatTemplate is { } tpl) KvStr("tokenizer.chat_template", tpl);

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
                var (type, size) = TypeOf(t, dtype);
                w.Write(type);
                w.Write((ulong)offset);
                offsets[i] = offset;
                offset += Align(t.Dims.Aggregate(1L, (x, y) => x * y) * size);
            }
            Pad(w);
            long dataStart = fs.Position;
            for (int i = 0; i < tensors.Count; i++)
            {
                if (fs.Position - dataStart != offsets[i]) throw new InvalidOperationException($"GGUF writer: tensor {tensors[i].Name} at {fs.Position - dataStart}, expected {offsets[i]}");
                var data = tensors[i].Data();
                long expected = tensors[i].Dims.Aggregate(1L, (x, y) => x * y);
                if (data.Length != expected) throw new InvalidOperationException($"GGUF writer: tensor {tensors[i].Name} has {data.Length} elements, dims say {expected}");
                var (type, _) = TypeOf(tensors[i], dtype);
                if (type == GgmlF32) w.Write(System.Runtime.InteropServices.MemoryMarshal.AsBytes(data.AsSpan()));
                else
                {
                    var half = new ushort[data.Length];
                    if (type == GgmlF16) for (int j = 0; j < data.Length; j++) half[j] = BitConverter.HalfToUInt16Bits((Half)data[j]);
                    else for (int j = 0; j < data.Length; j++) half[j] = ToBf16(data[j]);
                    w.Write(System.Runtime.InteropServices.MemoryMarshal.AsBytes(half.AsSpan()));
                }
                Pad(w);
            }
            w.Flush();
            fs.Flush(true);
        }
        File.Move(tmp, path, overwrite: true);  // never a half-written file under the real name
    }

    /// <summary>llama.cpp's rope_freqs of a scaled rotary: per pair, the unscaled inverse frequency over the
    /// scaled one (llama.cpp turns pair i by pos * theta^(-2i/d) / factor[i]).</summary>
    public static float[] RopeFreqFactors(LlamaConfig c)
    {
        var scaled = c.RotaryInverseFrequencies();
        var plain = (c with { RopeScaling = null }).RotaryInverseFrequencies();
        return plain.Select((f, i) => (float)(f / scaled[i])).ToArray();
    }

    private static (uint Type, int Size) TypeOf(Tensor t, GgufDType dtype) => !t.Matrix ? (GgmlF32, 4) : dtype switch
    {
        GgufDType.F32 => (GgmlF32, 4),
        GgufDType.F16 => (GgmlF16, 2),
        _ => (GgmlBF16, 2),
    };

    private static long Align(long n) => (n + Alignment - 1) / Alignment * Alignment;

    private static void Pad(BinaryWriter w)
    {
        long pos = w.BaseStream.Position;
        for (long i = pos; i < Align(pos); i++) w.Write((byte)0);
    }
}
