using ReaLNative.Engine.Generation;
using ReaLNative.Engine.Model;
using Xunit;

namespace ReaLNative.Engine.Tests.Model;

/// <summary>A plain float64 LLaMA forward written from the HF definition, reading the model's flat
/// parameter buffer by name: the reference for forward outputs and for finite-difference gradients.</summary>
internal static class ReferenceLlama
{
    public static double[] Forward(LlamaConfig c, bool scalar, Func<string, double[]> p, int[] tokens, int[] lens)
    {
        int T = tokens.Length, H = c.Hidden, d = c.HeadDim, hq = c.Heads, hkv = c.KvHeads, I = c.Intermediate;
        var emb = p("model.embed_tokens.weight");
        var x = new double[T * H];
        for (int t = 0; t < T; t++) Array.Copy(emb, tokens[t] * H, x, t * H, H);
        var pos = new int[T];
        var start = new int[T];
        for (int s = 0, o = 0; s < lens.Length; o += lens[s], s++)
            for (int i = 0; i < lens[s]; i++) { pos[o + i] = i; start[o + i] = o; }
        for (int l = 0; l < c.Layers; l++)
        {
            string pre = $"model.layers.{l}.";
            var h = Norm(x, p(pre + "input_layernorm.weight"), T, H, c.RmsEps);
            var q = Lin(h, p(pre + "self_attn.q_proj.weight"), T, H, hq * d);
            var k = Lin(h, p(pre + "self_attn.k_proj.weight"), T, H, hkv * d);
            var v = Lin(h, p(pre + "self_attn.v_proj.weight"), T, H, hkv * d);
            if (c.QkvBias)  // Qwen2
            {
                AddBias(q, p(pre + "self_attn.q_proj.bias"));
                AddBias(k, p(pre + "self_attn.k_proj.bias"));
                AddBias(v, p(pre + "self_attn.v_proj.bias"));
            }
            var invFreq = InverseFrequencies(c);
            Rope(q, pos, hq, d, invFreq);
            Rope(k, pos, hkv, d, invFreq);
            var att = new double[T * hq * d];
            for (int t = 0; t < T; t++)
                for (int hh = 0; hh < hq; hh++)
                {
                    int g = hh / (hq / hkv);
                    var sc = new double[t - start[t] + 1];
                    double mx = double.NegativeInfinity;
                    for (int j = start[t]; j <= t; j++)
                    {
                        double dot = 0;
                        for (int e = 0; e < d; e++) dot += q[(t * hq + hh) * d + e] * k[(j * hkv + g) * d + e];
                        sc[j - start[t]] = dot / Math.Sqrt(d);
                        mx = Math.Max(mx, sc[j - start[t]]);
                    }
                    double sum = sc.Sum(z => Math.Exp(z - mx));
                    for (int j = start[t]; j <= t; j++)
                    {
                        double pr = Math.Exp(sc[j - start[t]] - mx) / sum;
                        for (int e = 0; e < d; e++) att[(t * hq + hh) * d + e] += pr * v[(j * hkv + g) * d + e];
                    }
                }
            var o = Lin(att, p(pre + "self_attn.o_proj.weight"), T, hq * d, H);
            for (int i = 0; i < x.Length; i++) x[i] += o[i];
            var h2 = Norm(x, p(pre + "post_attention_layernorm.weight"), T, H, c.RmsEps);
            var gt = Lin(h2, p(pre + "mlp.gate_proj.weight"), T, H, I);
            var up = Lin(h2, p(pre + "mlp.up_proj.weight"), T, H, I);
            for (int i = 0; i < gt.Length; i++) gt[i] = gt[i] / (1 + Math.Exp(-gt[i])) * up[i];
            var dn = Lin(gt, p(pre + "mlp.down_proj.weight"), T, I, H);
            for (int i = 0; i < x.Length; i++) x[i] += dn[i];
        }
        var hf = Norm(x, p("model.norm.weight"), T, H, c.RmsEps);
        string head = scalar ? "score.weight" : c.TiedEmbeddings ? "model.embed_tokens.weight" : "lm_head.weight";
        return Lin(hf, p(head), T, H, scalar ? 1 : c.Vocab);
    }

    private static double[] Norm(double[] x, double[] w, int T, int H, double eps)
    {
        var y = new double[x.Length];
        for (int t = 0; t < T; t++)
        {
            double ss = 0;
            for (int i = 0; i < H; i++) ss += x[t * H + i] * x[t * H + i];
            double r = 1 / Math.Sqrt(ss / H + eps);
            for (int i = 0; i < H; i++) y[t * H + i] = x[t * H + i] * r * w[i];
        }
        return y;
    }

    private static double[] Lin(double[] x, double[] w, int T, int inF, int outF)
    {
        var y = new double[T * outF];
        for (int t = 0; t < T; t++)
            for (int o = 0; o < outF; o++)
            {
                double s = 0;
                for (int i = 0; i < inF; i++) s += x[t * inF + i] * w[o * inF + i];
                y[t * outF + o] = s;
            }
        return y;
    }

    private static void AddBias(double[] y, double[] b)
    {
        for (int i = 0; i < y.Length; i++) y[i] += b[i % b.Length];
    }

    /// <summary>theta^(-2i/d), then LLaMA 3.1's scaling written out from HF's _compute_llama3_parameters:
    /// wavelength &lt; original/high_freq_factor: kept; &gt; original/low_freq_factor: divided by factor;
    /// else smooth = (original/wavelength - low)/(high - low), (1 - smooth) f/factor + smooth f.</summary>
    public static double[] InverseFrequencies(LlamaConfig c)
    {
        int d = c.HeadDim;
        var f = new double[d / 2];
        for (int i = 0; i < f.Length; i++)
        {
            f[i] = 1.0 / Math.Pow(c.RopeTheta, 2.0 * i / d);
            if (c.RopeScaling is not { } s) continue;
            double wavelen = 2 * Math.PI / f[i];
            if (wavelen < s.OriginalMaxPositions / s.HighFreqFactor) continue;
            if (wavelen > s.OriginalMaxPositions / s.LowFreqFactor) { f[i] /= s.Factor; continue; }
            double smooth = (s.OriginalMaxPositions / wavelen - s.LowFreqFactor) / (s.HighFreqFactor - s.LowFreqFactor);
            f[i] = (1 - smooth) * f[i] / s.Factor + smooth * f[i];
        }
        return f;
    }

    private static void Rope(double[] x, int[] pos, int heads, int d, double[] invFreq)
    {
        int half = d / 2;
        for (int t = 0; t < pos.Length; t++)
            for (int h = 0; h < heads; h++)
                for (int i = 0; i < half; i++)
                {
                    double a = pos[t] * invFreq[i];
                    int b = (t * heads + h) * d;
                    double x1 = x[b + i], x2 = x[b + i + half];
                    x[b + i] = x1 * Math.Cos(a) - x2 * Math.Sin(a);
                    x[b + i + half] = x2 * Math.Cos(a) + x1 * Math.Sin(a);
                }
    }
}

public sealed unsafe class ModelTests
{
    private static readonly LlamaConfig Tiny = new() { Layers = 2, Hidden = 16, Intermediate = 24, Heads = 4, KvHeads = 2, Vocab = 11, MaxPositions = 64 };

    /// <summary>The model families on a shape where they matter: head dim 8, so LLaMA 3.1's scaling
    /// keeps pair 0, blends pair 1 and divides pairs 2-3 (wavelengths 6.3, 63, 628, 6283 against
    /// 256/8 and 256/1); Qwen2 adds q/k/v biases (random in the tests, as every 1-D tensor).</summary>
    internal static LlamaConfig Family(string family)
    {
        var c = new LlamaConfig { Layers = 2, Hidden = 32, Intermediate = 24, Heads = 4, KvHeads = 2, Vocab = 11, MaxPositions = 64 };
        return family switch
        {
            "llama" => c,
            "llama3.1" => c with { RopeScaling = new Llama3RopeScaling(8, 1, 8, 256) },
            "qwen2" => c with { QkvBias = true, ModelType = "qwen2", TiedEmbeddings = true, RopeTheta = 1e6f },
            _ => throw new ArgumentException(family),
        };
    }

    private static Func<string, double[]> Params(LlamaModel m) => name => m.View(name).ToArray().Select(f => (double)f).ToArray();

    private static LlamaModel Make(bool scalar, int seed, LlamaConfig? cfg = null)
    {
        var m = new LlamaModel(cfg ?? Tiny, scalar);
        m.InitRandom(seed, std: 0.3f);
        // Norm weights random too (never all ones in a test).
        var rng = new Random(seed + 1);
        foreach (var v in m.Layout.Views.Where(v => v.GlobalShape.Length == 1))
            foreach (ref var w in m.Parameters.Slice((int)v.Offset, (int)v.LocalElements)) w = 0.5f + (float)rng.NextDouble();
        return m;
    }

    [Theory]
    [InlineData(false, false)]
    [InlineData(true, false)]
    [InlineData(false, true)]
    public void ForwardMatchesFloat64Reference(bool scalar, bool tied) => ForwardMatches(Tiny with { TiedEmbeddings = tied }, scalar);

    [Theory]
    [InlineData("llama3.1", false)]
    [InlineData("llama3.1", true)]
    [InlineData("qwen2", false)]
    [InlineData("qwen2", true)]
    public void FamiliesForwardMatchFloat64Reference(string family, bool scalar)
    {
        var cfg = Family(family);
        ForwardMatches(cfg, scalar);
        // The family's feature changes the outputs (so the match above is evidence of it).
        using var m = Make(scalar, 3, cfg);
        int[] tokens = [1, 5, 2, 9, 0, 3, 3, 7, 10, 4], lens = [3, 1, 6];
        var with = ReferenceLlama.Forward(cfg, scalar, Params(m), tokens, lens);
        var without = ReferenceLlama.Forward(cfg with { RopeScaling = null, QkvBias = false }, scalar, Params(m), tokens, lens);
        double diff = with.Zip(without, (a, b) => Math.Abs(a - b)).Max() / with.Max(Math.Abs);
        Assert.True(diff > 1e-3, $"{family}'s feature moved the outputs by only {diff}");
    }

    private static void ForwardMatches(LlamaConfig cfg, bool scalar)
    {
        using var m = Make(scalar, 3, cfg);
        int[] tokens = [1, 5, 2, 9, 0, 3, 3, 7, 10, 4], lens = [3, 1, 6];
        float* o = m.Forward(new PackedBatch(tokens, lens));
        var got = new ReadOnlySpan<float>(o, tokens.Length * m.OutputWidth).ToArray();
        var want = ReferenceLlama.Forward(cfg, scalar, Params(m), tokens, lens);
        double err = got.Zip(want, (a, b) => Math.Abs(a - b)).Max() / want.Max(Math.Abs);
        Assert.True(err < 2e-5, $"max rel err {err}");
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void GradientsMatchFiniteDifferencesOfReference(bool scalar) => GradientsMatch(Tiny, scalar);

    [Theory]
    [InlineData("llama3.1", false)]
    [InlineData("qwen2", false)]
    [InlineData("qwen2", true)]
    public void FamiliesGradientsMatchFiniteDifferencesOfReference(string family, bool scalar) => GradientsMatch(Family(family), scalar);

    private static void GradientsMatch(LlamaConfig cfg, bool scalar)
    {
        using var m = Make(scalar, 5, cfg);
        int[] tokens = [1, 5, 2, 9, 0, 3, 7], lens = [3, 1, 3];
        int W = m.OutputWidth, T = tokens.Length;
        var rng = new Random(9);
        var G = Enumerable.Range(0, T * W).Select(_ => rng.NextDouble() * 2 - 1).ToArray();
        m.ZeroGrad();
        m.Forward(new PackedBatch(tokens, lens));
        float* dOut = m.OutputGradientBuffer();
        for (int i = 0; i < G.Length; i++) dOut[i] = (float)G[i];
        m.Backward(dOut);
        var grads = m.Gradients.ToArray();
        var flat = m.Parameters.ToArray().Select(f => (double)f).ToArray();
        double Loss()
        {
            var outp = ReferenceLlama.Forward(cfg, scalar, n => { m.Layout.TryGet(n, out var v); return flat.AsSpan((int)v.Offset, (int)v.LocalElements).ToArray(); }, tokens, lens);
            return outp.Select((y, i) => y * G[i]).Sum();
        }
        // Every parameter of every view type (sampled within big views).
        double maxErr = 0, maxG = 0;
        foreach (var v in m.Layout.Views)
        {
            var idx = Enumerable.Range(0, (int)v.LocalElements).OrderBy(_ => rng.Next()).Take(12);
            foreach (var j in idx)
            {
                int i = (int)v.Offset + j;
                double x0 = flat[i];
                flat[i] = x0 + 1e-5; double fp = Loss();
                flat[i] = x0 - 1e-5; double fm = Loss();
                flat[i] = x0;
                double fd = (fp - fm) / 2e-5;
                maxErr = Math.Max(maxErr, Math.Abs(fd - grads[i]));
                maxG = Math.Max(maxG, Math.Abs(fd));
            }
        }
        Assert.True(maxG > 1e-3, "gradients vanished: the test would prove nothing");
        Assert.True(maxErr / maxG < 1e-3, $"max gradient error {maxErr} (scale {maxG})");
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void ActivationRecomputationGivesTheSameOutputsAndGradients(bool scalar)
    {
        using var m = Make(scalar, 6);
        int[] tokens = [4, 1, 8, 2, 10, 3, 3, 6, 0], lens = [4, 2, 3];
        var rng = new Random(12);
        int n = tokens.Length * m.OutputWidth;
        var G = Enumerable.Range(0, n).Select(_ => (float)(rng.NextDouble() * 2 - 1)).ToArray();
        (float[] outp, float[] grads) Run(bool rc)
        {
            m.Recompute = rc;
            m.ZeroGrad();
            float* o = m.Forward(new PackedBatch(tokens, lens));
            var outp = new Span<float>(o, n).ToArray();
            float* d = m.OutputGradientBuffer();
            G.CopyTo(new Span<float>(d, n));
            m.Backward(d);
            return (outp, m.Gradients.ToArray());
        }
        var a = Run(false);
        var b = Run(true);
        Assert.Equal(a.outp, b.outp);
        Assert.Contains(a.grads, g => g != 0);
        for (int i = 0; i < a.grads.Length; i++)
            Assert.True(Math.Abs(a.grads[i] - b.grads[i]) <= 1e-6f * (1 + Math.Abs(a.grads[i])), $"gradient {i}: {a.grads[i]} vs {b.grads[i]}");
    }

    [Fact]
    public void GreedyGenerationEqualsStepwiseArgmaxAndKvDecodeEqualsRecompute() => GreedyGenerationMatches(Tiny);

    [Theory]
    [InlineData("llama3.1")]
    [InlineData("qwen2")]  // decode's fused q|k|v projection with the fused biases
    public void FamiliesGreedyGenerationEqualsStepwiseArgmax(string family) => GreedyGenerationMatches(Family(family));

    [Fact]
    public void Qwen2FrozenToBf16KeepsItsBiases()
    {
        var cfg = Family("qwen2");
        using var m = Make(false, 4, cfg);
        using var frozen = Make(false, 4, cfg);
        m.SetPrecision(ModelPrecision.Bf16);
        var bf16 = m.Bf16Parameters.ToArray();
        frozen.FreezeToBf16();
        int[] tokens = [1, 5, 2, 9, 0, 3, 3, 7], lens = [5, 3];
        int n = tokens.Length * cfg.Vocab;
        var a = new ReadOnlySpan<float>(m.Forward(new PackedBatch(tokens, lens)), n).ToArray();
        var b = new ReadOnlySpan<float>(frozen.Forward(new PackedBatch(tokens, lens)), n).ToArray();
        Assert.Equal(a, b);
        // Loaded from bf16 values (a bf16 checkpoint), the biases are those values widened: the bf16
        // model whose fp32 master holds the rounded parameters computes the same outputs.
        frozen.LoadBf16(bf16);
        using var rounded = Make(false, 4, cfg);
        var widened = bf16.Select(h => BitConverter.UInt32BitsToSingle((uint)h << 16)).ToArray();
        widened.CopyTo(rounded.Parameters);
        rounded.SetPrecision(ModelPrecision.Bf16);
        var c = new ReadOnlySpan<float>(rounded.Forward(new PackedBatch(tokens, lens)), n).ToArray();
        var d = new ReadOnlySpan<float>(frozen.Forward(new PackedBatch(tokens, lens)), n).ToArray();
        Assert.Equal(c, d);
        Assert.NotEqual(a, c);  // the biases' rounding shows: the reload did replace them
    }

    private static void GreedyGenerationMatches(LlamaConfig cfg)
    {
        using var m = Make(false, 11, cfg);
        var Tiny = cfg;
        int[][] prompts = [[1, 2, 3], [4], [5, 6, 7, 8, 9]];
        var res = Generator.Generate(m, prompts, new GenerationOptions { MaxNewTokens = 6, Temperature = 0 });
        for (int i = 0; i < prompts.Length; i++)
        {
            var seq = prompts[i].ToList();
            for (int step = 0; step < 6; step++)
            {
                float* o = m.Forward(new PackedBatch(seq.ToArray(), [seq.Count]));
                var last = new ReadOnlySpan<float>(o + (seq.Count - 1) * Tiny.Vocab, Tiny.Vocab);
                int arg = 0;
                for (int j = 1; j < last.Length; j++) if (last[j] > last[arg]) arg = j;
                Assert.Equal(arg, res.NewTokens[i][step]);
                // The KV-cache log-prob equals log-softmax of the full recompute.
                double mx = last[arg], sum = 0;
                foreach (var z in last) sum += Math.Exp(z - mx);
                Assert.Equal(-Math.Log(sum), res.LogProbs[i][step], 4);
                seq.Add(arg);
            }
        }
    }

    [Fact]
    public void SampledGenerationIsSeededAndRespectsEos()
    {
        using var m = Make(false, 12);
        int[][] prompts = [[1, 2], [3], [4, 5, 6]];
        var opt = new GenerationOptions { MaxNewTokens = 8, Temperature = 1.0f, TopK = 5, Seed = 42, EosToken = 0 };
        var a = Generator.Generate(m, prompts, opt);
        var b = Generator.Generate(m, prompts, opt);
        for (int i = 0; i < prompts.Length; i++)
        {
            Assert.Equal(a.NewTokens[i], b.NewTokens[i]);
            int eos = Array.IndexOf(a.NewTokens[i], 0);
            if (eos >= 0) { Assert.Equal(eos + 1, a.NewTokens[i].Length); Assert.True(a.EndedWithEos[i]); }
            else Assert.Equal(8, a.NewTokens[i].Length);
            Assert.NotNull(a.Masks);
            Assert.Equal(a.NewTokens[i].Length * Tiny.Vocab, a.Masks![i].Length);
            for (int s = 0; s < a.NewTokens[i].Length; s++)
                Assert.Equal(5, a.Masks[i].AsSpan(s * Tiny.Vocab, Tiny.Vocab).ToArray().Count(x => x == 1));
        }
    }

    [Fact]
    public void BadInputsAreRefusedWithNames()
    {
        using var m = Make(false, 1);
        Assert.Contains("token id 11", Assert.Throws<ArgumentException>(() => m.Forward(new PackedBatch([1, 11], [2]))).Message);
        Assert.Contains("lengths sum", Assert.Throws<ArgumentException>(() => new PackedBatch([1, 2], [3])).Message);
        Assert.Contains("num_key_value_heads", Assert.Throws<ArgumentException>(() => new LlamaModel(Tiny with { KvHeads = 3 }, false)).Message);
        Assert.Contains("max_position_embeddings", Assert.Throws<ArgumentException>(() =>
            Generator.Generate(m, [[1, 2]], new GenerationOptions { MaxNewTokens = 100 })).Message);
    }
}

public sealed class CheckpointTests
{
    private static readonly LlamaConfig Tiny = new() { Layers = 2, Hidden = 16, Intermediate = 24, Heads = 4, KvHeads = 2, Vocab = 11, MaxPositions = 64 };

    [Theory]
    [InlineData(false, 1L << 30)]
    [InlineData(true, 1L << 30)]
    [InlineData(false, 2000)]  // forces several shards + index
    public void RoundTripIsBitExact(bool scalar, long shardBytes)
    {
        string dir = Path.Combine(Path.GetTempPath(), "realn-ckpt-" + Guid.NewGuid().ToString("N"));
        try
        {
            using var m = new LlamaModel(Tiny, scalar);
            m.InitRandom(4, 0.5f);
            Checkpoints.Safetensors.Save(m, dir, shardBytes);
            Assert.Equal(shardBytes < 10000, File.Exists(Path.Combine(dir, "model.safetensors.index.json")));
            using var back = Checkpoints.Safetensors.Load(dir);
            Assert.Equal(scalar, back.ScalarHead);
            Assert.True(m.Parameters.SequenceEqual(back.Parameters));
            Assert.Equal(Tiny with { }, back.Config);
        }
        finally { if (Directory.Exists(dir)) Directory.Delete(dir, true); }
    }

    [Fact]
    public void CorruptCheckpointsAreNamed()
    {
        string dir = Path.Combine(Path.GetTempPath(), "realn-ckpt-" + Guid.NewGuid().ToString("N"));
        try
        {
            using var m = new LlamaModel(Tiny, false);
            m.InitRandom(4);
            Checkpoints.Safetensors.Save(m, dir);
            string f = Path.Combine(dir, "model.safetensors");
            var bytes = File.ReadAllBytes(f);
            File.WriteAllBytes(f, bytes.AsSpan(0, bytes.Length - 100).ToArray());
            var e = Assert.Throws<InvalidDataException>(() => Checkpoints.Safetensors.Load(dir));
            Assert.Contains("outside", e.Message);
            File.WriteAllBytes(f, [1, 2, 3]);
            Assert.Contains("truncated", Assert.Throws<InvalidDataException>(() => Checkpoints.Safetensors.Load(dir)).Message);
            Checkpoints.Safetensors.Save(m, dir);
            using var other = new LlamaModel(Tiny with { Intermediate = 32 }, false);
            Assert.Contains("mlp.gate_proj.weight", Assert.Throws<InvalidDataException>(() => Checkpoints.Safetensors.LoadInto(other, dir)).Message);
        }
        finally { if (Directory.Exists(dir)) Directory.Delete(dir, true); }
    }
}

/// <summary>The safetensors loader checks a header the way the format defines it; every refusal names
/// the file and the tensor. Each header is edited in place, the data section left as saved.</summary>
public sealed class SafetensorsHeaderTests : IDisposable
{
    private static readonly LlamaConfig Tiny = new() { Layers = 1, Hidden = 8, Intermediate = 12, Heads = 2, KvHeads = 1, Vocab = 5, MaxPositions = 16 };
    private readonly string _dir = Directory.CreateTempSubdirectory("realn-st-").FullName;
    private string File_ => Path.Combine(_dir, "model.safetensors");

    public void Dispose() => Directory.Delete(_dir, true);

    private LlamaModel Saved(float? fill = null)
    {
        var m = new LlamaModel(Tiny, false);
        m.InitRandom(7);
        if (fill is { } f) m.Parameters.Fill(f);
        Checkpoints.Safetensors.Save(m, _dir);
        return m;
    }

    private static long[] Offsets(System.Text.Json.Nodes.JsonObject h, string n) =>
        [h[n]!["data_offsets"]![0]!.GetValue<long>(), h[n]!["data_offsets"]![1]!.GetValue<long>()];

    private string Refused(Action<System.Text.Json.Nodes.JsonObject> edit)
    {
        using (Saved()) { }
        Workers.BadInputTests.RewriteHeader(File_, edit);
        var e = Assert.Throws<InvalidDataException>(() => { using var _ = Checkpoints.Safetensors.Load(_dir); });
        Assert.Contains("model.safetensors", e.Message);
        return e.Message;
    }

    [Fact]
    public void OverlappingOffsetsAreRefused()
    {
        // Two tensors of the same size aliasing the same bytes: loaded (exit 0) before.
        string m = Refused(h =>
        {
            var a = Offsets(h, "model.layers.0.input_layernorm.weight");
            h["model.layers.0.post_attention_layernorm.weight"]!["data_offsets"] = new System.Text.Json.Nodes.JsonArray(a[0], a[1]);
        });
        Assert.Contains("overlaps", m);
        Assert.Contains("layernorm.weight", m);
    }

    private static string Edge(System.Text.Json.Nodes.JsonObject h, bool first) =>
        first ? h.Where(kv => kv.Key != "__metadata__").OrderBy(kv => Offsets(h, kv.Key)[0]).First().Key
              : h.Where(kv => kv.Key != "__metadata__").OrderBy(kv => Offsets(h, kv.Key)[1]).Last().Key;

    [Fact]
    public void GapsTrailingBytesAndOffsetsBeyondTheFileAreRefused()
    {
        Assert.Contains("must be contiguous", Refused(h => h.Remove(Edge(h, first: true))));
        Assert.Contains("trailing bytes belong to no tensor", Refused(h => h.Remove(Edge(h, first: false))));
        Assert.Contains("outside", Refused(h =>
        {
            string last = Edge(h, first: false);
            var o = Offsets(h, last);
            h[last]!["data_offsets"] = new System.Text.Json.Nodes.JsonArray(o[0] + 4, o[1] + 4);
        }));
    }

    [Fact]
    public void DtypeShapeAndByteCountMustAgree()
    {
        string m = Refused(h => h["model.norm.weight"]!["dtype"] = "BF16");
        Assert.Contains("model.norm.weight", m);
        Assert.Contains("needs", m);
        Assert.Contains("unknown dtype 'F33'", Refused(h => h["model.norm.weight"]!["dtype"] = "F33"));
        Assert.Contains("needs", Refused(h => h["model.norm.weight"]!["shape"] = new System.Text.Json.Nodes.JsonArray(4)));
        Assert.Contains("shape[0]", Refused(h => h["model.norm.weight"]!["shape"] = new System.Text.Json.Nodes.JsonArray(-8)));
        Assert.Contains("data_offsets[0]", Refused(h => h["model.norm.weight"]!["data_offsets"]![0] = 0.5));
        Assert.Contains("data_offsets", Refused(h => h["model.norm.weight"]!["data_offsets"] = new System.Text.Json.Nodes.JsonArray(0)));
    }

    [Fact]
    public void NonFiniteWeightsAreRefusedUnlessAllowed()
    {
        using var m = Saved();
        var w = m.View("model.layers.0.mlp.down_proj.weight");
        w[3] = float.PositiveInfinity;
        w[5] = float.NaN;
        Checkpoints.Safetensors.Save(m, _dir);
        var e = Assert.Throws<InvalidDataException>(() => { using var _ = Checkpoints.Safetensors.Load(_dir); });
        Assert.Contains("model.layers.0.mlp.down_proj.weight", e.Message);
        Assert.Contains("2 non-finite", e.Message);
        Assert.Contains("element 3", e.Message);
        using var loaded = Checkpoints.Safetensors.Load(_dir, allowNonFinite: true);
        Assert.True(float.IsNaN(loaded.View("model.layers.0.mlp.down_proj.weight")[5]));
        using var into = new LlamaModel(Tiny, false);
        Assert.Throws<InvalidDataException>(() => Checkpoints.Safetensors.LoadInto(into, _dir));
    }
}

public sealed class ParamLayoutTests
{
    private static readonly LlamaConfig Cfg = new() { Layers = 4, Hidden = 8, Intermediate = 12, Heads = 4, KvHeads = 2, Vocab = 10, MaxPositions = 16 };

    /// <summary>Cuts a single-device parameter buffer into every (pp, tp) shard by the views'
    /// slices, then rebuilds each global tensor from the shards: must equal the original exactly,
    /// every element covered once per tp rank of its stage, and shard offsets contiguous.</summary>
    [Theory]
    [InlineData(false, 1, 2)]
    [InlineData(false, 3, 2)]
    [InlineData(true, 2, 1)]
    [InlineData(true, 6, 2)]
    public void ShardsTileTheSingleDeviceLayoutExactly(bool scalar, int pp, int tp)
    {
        var single = ParamLayout.Create(Cfg, scalar);
        var rng = new Random(pp * 10 + tp);
        var flat = Enumerable.Range(0, (int)single.TotalElements).Select(_ => (float)rng.NextDouble()).ToArray();
        var rebuilt = new float[flat.Length];
        var covered = new int[flat.Length];
        var stageOfName = new Dictionary<string, int>();
        for (int s = 0; s < pp; s++)
            for (int r = 0; r < tp; r++)
            {
                var shard = ParamLayout.Create(Cfg, scalar, pp, s, tp, r);
                var shardBuf = new float[shard.TotalElements];
                long expectOffset = 0;
                foreach (var v in shard.Views)
                {
                    Assert.Equal(expectOffset, v.Offset);
                    expectOffset += v.LocalElements;
                    if (stageOfName.TryGetValue(v.Name, out int st)) Assert.Equal(s, st);
                    else stageOfName[v.Name] = s;
                    Assert.True(single.TryGet(v.Name, out var g));
                    Assert.Equal(g.GlobalShape, v.GlobalShape);
                    long rows = v.GlobalShape[0], cols = v.GlobalShape.Length > 1 ? v.GlobalShape[1] : 1;
                    long local = 0;
                    for (long i = 0; i < rows; i++)
                        for (long j = 0; j < cols; j++)
                        {
                            bool mine = v.SplitDim switch
                            {
                                0 => i >= v.SliceStart && i < v.SliceStart + v.SliceLength,
                                1 => j >= v.SliceStart && j < v.SliceStart + v.SliceLength,
                                _ => true,
                            };
                            if (!mine) continue;
                            long gi = g.Offset + i * cols + j;
                            // Documented local layout: row-major over LocalShape.
                            long localCols = v.LocalShape.Length > 1 ? v.LocalShape[1] : 1;
                            long li = (i - (v.SplitDim == 0 ? v.SliceStart : 0)) * localCols + (j - (v.SplitDim == 1 ? v.SliceStart : 0));
                            Assert.Equal(local, li);
                            shardBuf[v.Offset + li] = flat[gi];  // gather (sender side)
                            local++;
                        }
                    // Scatter (receiver side) from the shard buffer, by the same view arithmetic.
                    for (long li = 0; li < v.LocalElements; li++)
                    {
                        long localCols = v.LocalShape.Length > 1 ? v.LocalShape[1] : 1;
                        long i = li / localCols + (v.SplitDim == 0 ? v.SliceStart : 0), j = li % localCols + (v.SplitDim == 1 ? v.SliceStart : 0);
                        long gi = g.Offset + i * cols + j;
                        if (v.SplitDim < 0 && r > 0) { Assert.Equal(rebuilt[gi], shardBuf[v.Offset + li]); continue; }
                        rebuilt[gi] = shardBuf[v.Offset + li];
                        covered[gi]++;
                    }
                    Assert.Equal(v.LocalElements, local);
                }
                Assert.Equal(expectOffset, shard.TotalElements);
            }
        Assert.All(covered, c => Assert.Equal(1, c));
        Assert.Equal(flat, rebuilt);
        Assert.Equal(single.Views.Count, stageOfName.Count);
        // Stages hold contiguous runs of units in order.
        var order = single.Views.Select(v => stageOfName[v.Name]).ToArray();
        for (int i = 1; i < order.Length; i++) Assert.True(order[i] >= order[i - 1]);
    }

    [Fact]
    public void BadShardCoordinatesAreNamed()
    {
        Assert.Contains("tp rank", Assert.Throws<ArgumentException>(() => ParamLayout.Create(Cfg, false, 1, 0, 2, 2)).Message);
        Assert.Contains("pp rank", Assert.Throws<ArgumentException>(() => ParamLayout.Create(Cfg, false, 2, -1)).Message);
        Assert.Contains("tp=3", Assert.Throws<ArgumentException>(() => ParamLayout.Create(Cfg, false, 1, 0, 3, 0)).Message);
    }
}
