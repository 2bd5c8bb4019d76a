// The GGUF file read back by a reader written here from the format description: header, metadata
// (tokenizer, chat template, file type), tensor table, alignment, and every tensor's bytes equal
// to the model's weights converted as the dtype says (F32 bit-exact, F16 = (Half) bits, BF16 =
// round-to-nearest-even against an independent reference; q/k rows permuted per head).
// `realn export` and `realn generate` run end to end on a saved checkpoint.
using System.Text;
using ReaLNative.Engine.Checkpoints;
using ReaLNative.Engine.Tests.Docs;
using ReaLNative.Engine.Generation;
using ReaLNative.Engine.Model;
using ReaLNative.Engine.Tests.Tokenization;
using ReaLNative.Engine.Tokenization;
using Xunit;

namespace ReaLNative.Engine.Tests.Gguf;

public sealed class GgufWriterTests : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("realn-gguf-unit-").FullName;

    public void Dispose() => Directory.Delete(_dir, true);

    internal sealed record GgufTensor(string Name, ulong[] Dims, uint Type, byte[] Data);

    internal sealed record GgufFile(Dictionary<string, object> Meta, List<GgufTensor> Tensors);

    /// <summary>A GGUF v3 reader (little-endian, alignment from general.alignment, default 32).</summary>
    internal static GgufFile Read(string path)
    {
        using var r = new BinaryReader(File.OpenRead(path), Encoding.UTF8);
        Assert.Equal(0x46554747u, r.ReadUInt32());
        Assert.Equal(3u, r.ReadUInt32());
        ulong nt = r.ReadUInt64(), nkv = r.ReadUInt64();
        string Str() => Encoding.UTF8.GetString(r.ReadBytes(checked((int)r.ReadUInt64())));
        object Value(uint type) => type switch
        {
            0 => r.ReadByte(), 1 => r.ReadSByte(), 2 => r.ReadUInt16(), 3 => r.ReadInt16(), 4 => r.ReadUInt32(), 5 => r.ReadInt32(),
            6 => r.ReadSingle(), 7 => r.ReadByte() != 0, 8 => Str(), 10 => r.ReadUInt64(), 11 => r.ReadInt64(), 12 => r.ReadDouble(),
            9 => ReadArray(),
            _ => throw new InvalidDataException($"GGUF value type {type}"),
        };
        object ReadArray()
        {
            uint et = r.ReadUInt32();
            ulong n = r.ReadUInt64();
            var a = new List<object>();
            for (ulong i = 0; i < n; i++) a.Add(Value(et));
            return a;
        }
        var meta = new Dictionary<string, object>();
        for (ulong i = 0; i < nkv; i++)
        {
            string k = Str();
            meta[k] = Value(r.ReadUInt32());
        }
        var infos = new List<(string Name, ulong[] Dims, uint Type, ulong Offset)>();
        for (ulong i = 0; i < nt; i++)
        {
            string name = Str();
            uint nd = r.ReadUInt32();
            var dims = Enumerable.Range(0, (int)nd).Select(_ => r.ReadUInt64()).ToArray();
            infos.Add((name, dims, r.ReadUInt32(), r.ReadUInt64()));
        }
        long align = meta.TryGetValue("general.alignment", out var a0) ? (uint)a0 : 32;
        long start = (r.BaseStream.Position + align - 1) / align * align;
        var tensors = new List<GgufTensor>();
        foreach (var (name, dims, type, off) in infos)
        {
            Assert.Equal(0UL, off % (ulong)align);
            long n = dims.Aggregate(1L, (x, y) => x * (long)y) * (type == 0 ? 4 : 2);
            r.BaseStream.Position = start + (long)off;
            tensors.Add(new(name, dims, type, r.ReadBytes((int)n)));
        }
        return new(meta, tensors);
    }

    /// <summary>Reference BF16: the nearer of the two bf16 neighbours by exact distance, ties to the even mantissa.</summary>
    private static ushort ReferenceBf16(float f)
    {
        if (float.IsNaN(f)) return 0x7fc0;
        uint u = BitConverter.SingleToUInt32Bits(f);
        ushort lo = (ushort)(u >> 16), hi = (ushort)(lo + 1);
        double x = f, a = GgufWriter.FromBf16(lo), b = float.IsInfinity(GgufWriter.FromBf16(hi)) && !float.IsInfinity(f)
            ? Math.Sign(x) * Math.Pow(2, 128) : GgufWriter.FromBf16(hi);  // one step past the largest finite bf16 rounds to infinity
        double da = Math.Abs(x - a), db = Math.Abs(x - b);
        return da < db ? lo : db < da ? hi : (lo & 1) == 0 ? lo : hi;
    }

    [Fact]
    public void Bf16RoundsToNearestEven()
    {
        var rng = new Random(4);
        var values = Enumerable.Range(0, 20000).Select(_ => (float)((rng.NextDouble() - 0.5) * Math.Pow(2, rng.Next(-30, 30)))).ToList();
        // exact ties (the lower 16 bits 0x8000) with odd and even mantissas, and the extremes
        values.AddRange([BitConverter.UInt32BitsToSingle(0x3f808000), BitConverter.UInt32BitsToSingle(0x3f818000), float.MaxValue, -float.MaxValue,
            float.Epsilon, 0f, -0f, float.PositiveInfinity, float.NegativeInfinity]);
        foreach (var v in values) Assert.True(ReferenceBf16(v) == GgufWriter.ToBf16(v), $"{v:R}: {GgufWriter.ToBf16(v):x4} vs reference {ReferenceBf16(v):x4}");
        Assert.True(float.IsNaN(GgufWriter.FromBf16(GgufWriter.ToBf16(float.NaN))));
    }

    private static LlamaModel RandomModel(int vocab, bool tied = false)
    {
        var m = new LlamaModel(new LlamaConfig { Layers = 2, Hidden = 32, Intermediate = 64, Heads = 4, KvHeads = 2, Vocab = vocab, MaxPositions = 64, TiedEmbeddings = tied }, scalarHead: false);
        m.InitRandom(7, std: 0.3f);
        return m;
    }

    [Theory]
    [InlineData("f32")]
    [InlineData("f16")]
    [InlineData("bf16")]
    public void TensorsAreTheWeightsInTheDtypeAndTheMetadataTheTokenizer(string dtypeName)
    {
        var tok = TrainedTokenizerTests.ByteLevelLlama3(_dir, 300);
        using var model = RandomModel(304);
        var dtype = GgufWriter.ParseDType(dtypeName);
        string path = Path.Combine(_dir, "m.gguf");
        GgufWriter.Write(model, path, GgufVocab.From(tok, 304), dtype);
        var f = Read(path);
        Assert.Equal("llama", f.Meta["general.architecture"]);
        Assert.Equal(dtype switch { GgufDType.F32 => 0u, GgufDType.F16 => 1u, _ => 32u }, f.Meta["general.file_type"]);
        Assert.Equal("gpt2", f.Meta["tokenizer.ggml.model"]);
        Assert.Equal("gpt-2", f.Meta["tokenizer.ggml.pre"]);
        Assert.Equal(tok.ChatTemplate!.Source, f.Meta["tokenizer.chat_template"]);
        Assert.Equal((uint)tok.Eos, f.Meta["tokenizer.ggml.eos_token_id"]);
        var tokens = ((List<object>)f.Meta["tokenizer.ggml.tokens"]).Cast<string>().ToList();
        Assert.Equal(304, tokens.Count);
        for (int i = 0; i < 300; i++) Assert.Equal(tok.TokenString(i), tokens[i]);
        Assert.Equal("[PAD303]", tokens[303]);
        var types = ((List<object>)f.Meta["tokenizer.ggml.token_type"]).Cast<int>().ToList();
        Assert.Equal(GgufVocab.Control, types[tok.Eos]);
        Assert.Equal(GgufVocab.Unused, types[303]);
        Assert.Equal(tok.Merges.Select(m => $"{m.Left} {m.Right}"), ((List<object>)f.Meta["tokenizer.ggml.merges"]).Cast<string>());

        var c = model.Config;
        Assert.Equal(2 + 9 * c.Layers + 1, f.Tensors.Count);  // embedding, 9 per block, final norm, output
        var perm = new Dictionary<string, int[]> { ["attn_q"] = GgufWriter.RopePermutation(c.Heads, c.HeadDim), ["attn_k"] = GgufWriter.RopePermutation(c.KvHeads, c.HeadDim) };
        string Hf(string g) => g switch
        {
            "token_embd.weight" => "model.embed_tokens.weight",
            "output_norm.weight" => "model.norm.weight",
            "output.weight" => "lm_head.weight",
            _ => "model.layers." + g.Split('.')[1] + "." + g.Split('.')[2] switch
            {
                "attn_norm" => "input_layernorm", "attn_q" => "self_attn.q_proj", "attn_k" => "self_attn.k_proj", "attn_v" => "self_attn.v_proj",
                "attn_output" => "self_attn.o_proj", "ffn_norm" => "post_attention_layernorm", "ffn_gate" => "mlp.gate_proj",
                "ffn_up" => "mlp.up_proj", "ffn_down" => "mlp.down_proj", var x => throw new InvalidDataException(x),
            } + ".weight",
        };
        foreach (var t in f.Tensors)
        {
            var w = model.View(Hf(t.Name)).ToArray();
            bool matrix = t.Dims.Length == 2;
            if (matrix && t.Name.Split('.') is [_, _, var kind, _] && perm.TryGetValue(kind, out var p))
            {
                int H = c.Hidden;
                var dst = new float[w.Length];
                for (int row = 0; row < p.Length; row++) Array.Copy(w, p[row] * H, dst, row * H, H);
                w = dst;
            }
            uint expectType = !matrix || dtype == GgufDType.F32 ? 0u : dtype == GgufDType.F16 ? 1u : 30u;
            Assert.True(expectType == t.Type, $"{t.Name}: type {t.Type}, expected {expectType}");
            byte[] expected = expectType switch
            {
                0 => System.Runtime.InteropServices.MemoryMarshal.AsBytes(w.AsSpan()).ToArray(),
                1 => System.Runtime.InteropServices.MemoryMarshal.AsBytes(w.Select(x => BitConverter.HalfToUInt16Bits((Half)x)).ToArray().AsSpan()).ToArray(),
                _ => System.Runtime.InteropServices.MemoryMarshal.AsBytes(w.Select(ReferenceBf16).ToArray().AsSpan()).ToArray(),
            };
            Assert.True(expected.AsSpan().SequenceEqual(t.Data), $"{t.Name}: bytes differ");
        }
    }

    [Fact]
    public void ExportAndGenerateRunFromTheCommandLine()
    {
        string ckpt = Path.Combine(_dir, "ckpt");
        Directory.CreateDirectory(ckpt);
        var tok = TrainedTokenizerTests.ByteLevelLlama3(ckpt, 300);
        using var model = RandomModel(300);
        Safetensors.Save(model, ckpt);

        // generate: the same greedy tokens as the engine in-process, decoded
        var (code, output) = ReadmeCommandTableTests.Realn("generate", ckpt, "--prompt", "The reward model", "--max-new-tokens", "6");
        Assert.True(code == 0, output);
        var expected = Generator.Generate(model, [tok.Encode("The reward model")], new GenerationOptions { MaxNewTokens = 6, Temperature = 0, EosToken = tok.Eos }).NewTokens[0];
        Assert.Equal(tok.Decode(expected.Where(t => t != tok.Eos).ToArray()), output.TrimEnd('\n'));
        (code, output) = ReadmeCommandTableTests.Realn("generate", ckpt, "--chat", "--system", "Be brief.", "--prompt", "Hi", "--max-new-tokens", "4");
        Assert.True(code == 0, output);
        var chatIds = ChatEncoder.EncodePrompt(tok, [new("system", "Be brief."), new("user", "Hi")]);
        expected = Generator.Generate(model, [chatIds], new GenerationOptions { MaxNewTokens = 4, Temperature = 0, EosToken = tok.Eos }).NewTokens[0];
        Assert.Equal(tok.Decode(expected.Where(t => t != tok.Eos).ToArray()), output.TrimEnd('\n'));

        string gguf = Path.Combine(_dir, "out.gguf");
        (code, output) = ReadmeCommandTableTests.Realn("export", ckpt, "--gguf", gguf, "--dtype", "bf16");
        Assert.True(code == 0, output);
        Assert.Contains("with its chat template", output);
        var f = Read(gguf);
        Assert.Equal(32u, f.Meta["general.file_type"]);
        Assert.Equal(tok.ChatTemplate!.Source, f.Meta["tokenizer.chat_template"]);

        // bad input: exit 2 with the reason
        (code, output) = ReadmeCommandTableTests.Realn("export", ckpt, "--gguf", gguf, "--dtype", "f8");
        Assert.Equal(2, code);
        Assert.Contains("GGUF dtype 'f8' is not supported", output);
        (code, output) = ReadmeCommandTableTests.Realn("generate", ckpt, "--prompt", "x", "--system", "s");
        Assert.Equal(2, code);
        Assert.Contains("--system needs --chat", output);
        (code, output) = ReadmeCommandTableTests.Realn("generate", Path.Combine(_dir, "nope"), "--prompt", "x");
        Assert.Equal(2, code);
        Assert.Contains("not found", output);
    }

    [Fact]
    public void CharacterTokenizerCheckpointsGenerateAndExport()
    {
        // what `realn run` writes for the synthetic tasks: no tokenizer.json, vocab 32
        string ckpt = Path.Combine(_dir, "tiny");
        using var model = new LlamaModel(LlamaConfig.Preset("tiny"), scalarHead: false);
        model.InitRandom(5, std: 0.3f);
        Safetensors.Save(model, ckpt);
        var ch = new CharTokenizer(32);
        var (code, output) = ReadmeCommandTableTests.Realn("generate", ckpt, "--prompt", "53142=", "--max-new-tokens", "8");
        Assert.True(code == 0, output);
        var expected = Generator.Generate(model, [[ch.Bos, .. ch.Encode("53142=")]], new GenerationOptions { MaxNewTokens = 8, Temperature = 0, EosToken = ch.Eos }).NewTokens[0];
        Assert.Equal(ch.Decode(expected), output.TrimEnd('\n'));
        (code, output) = ReadmeCommandTableTests.Realn("generate", ckpt, "--prompt", "abc");
        Assert.Equal(2, code);
        Assert.Contains("--prompt: character 'a' at 0 is not in the tokenizer's alphabet", output);
        string gguf = Path.Combine(_dir, "tiny.gguf");
        (code, output) = ReadmeCommandTableTests.Realn("export", ckpt, "--gguf", gguf);
        Assert.True(code == 0, output);
        Assert.Contains("character tokenizer", output);
        Assert.Equal("gpt2", Read(gguf).Meta["tokenizer.ggml.model"]);
    }
}
