using ReaLNative.Engine.Model;
using ReaLNative.Engine.Optim;
using Xunit;

namespace ReaLNative.Engine.Tests.Model;

/// <summary>Precision bf16: bf16 weights (a copy of the fp32 master) feed the forward and backward;
/// the optimizer updates the master; a frozen model holds bf16 only.</summary>
public sealed unsafe class Bf16Tests
{
    // Hidden 48 and 100 tokens: the linear layers take the bf16 GEMM path (rows > 64), 3 tokens the
    // small-M decode path.
    private static readonly LlamaConfig Cfg = new() { Layers = 2, Hidden = 48, Intermediate = 64, Heads = 4, KvHeads = 2, Vocab = 37, MaxPositions = 128 };

    private static LlamaModel Make(int seed, bool scalar = false)
    {
        var m = new LlamaModel(Cfg, scalar);
        m.InitRandom(seed, std: 0.2f);
        var rng = new Random(seed + 1);
        foreach (var v in m.Layout.Views.Where(v => v.GlobalShape.Length == 1))
            foreach (ref var w in m.Parameters.Slice((int)v.Offset, (int)v.LocalElements)) w = 0.5f + (float)rng.NextDouble();
        return m;
    }

    private static (int[] Tokens, int[] Lens) Batch(int seed, int[] lens)
    {
        var rng = new Random(seed);
        return (Enumerable.Range(0, lens.Sum()).Select(_ => rng.Next(Cfg.Vocab)).ToArray(), lens);
    }

    // Round to nearest even, written independently of the native conversion.
    internal static ushort Rne(float f)
    {
        uint u = BitConverter.SingleToUInt32Bits(f);
        if (float.IsNaN(f)) return (ushort)((u >> 16) | 0x40);
        uint lower = u & 0xffff, upper = u >> 16;
        if (lower > 0x8000 || (lower == 0x8000 && (upper & 1) == 1)) upper++;
        return (ushort)upper;
    }

    private static float Widen(ushort h) => BitConverter.UInt32BitsToSingle((uint)h << 16);

    private static double RelErr(float[] got, double[] want) =>
        got.Zip(want, (a, b) => Math.Abs(a - b)).Max() / want.Max(Math.Abs);

    [Theory]
    [InlineData(new[] { 40, 25, 35 })]  // GEMM path
    [InlineData(new[] { 2, 1 })]        // small-M path
    public void ForwardMatchesFloat64ReferenceOfBf16Weights(int[] lens)
    {
        using var m = Make(3);
        var (tokens, _) = Batch(7, lens);
        var fp32 = new ReadOnlySpan<float>(m.Forward(new PackedBatch(tokens, lens)), tokens.Length * m.OutputWidth).ToArray();
        m.SetPrecision(ModelPrecision.Bf16);
        var bf = new ReadOnlySpan<float>(m.Forward(new PackedBatch(tokens, lens)), tokens.Length * m.OutputWidth).ToArray();
        // Reference with the weights rounded to bf16 (what the model's copy holds).
        var want = ReferenceLlama.Forward(Cfg, false, n => m.View(n).ToArray().Select(f => (double)Widen(Rne(f))).ToArray(), tokens, lens);
        // Every GEMM also rounds its activation operand to bf16 (2^-9 relative per element): through
        // two blocks and the head that is ~1e-2 normwise here (measured 1.7e-2); 5e-2 bounds it.
        double err = RelErr(bf, want);
        Assert.True(err < 5e-2, $"bf16 forward vs float64 reference of the bf16 weights: max rel err {err}");
        Assert.NotEqual(fp32, bf);  // the bf16 path ran
        var want32 = ReferenceLlama.Forward(Cfg, false, n => m.View(n).ToArray().Select(f => (double)f).ToArray(), tokens, lens);
        Assert.True(RelErr(fp32, want32) < 2e-5);
    }

    [Fact]
    public void OptimizerUpdatesTheMasterAndTheBf16CopyFollows()
    {
        using var m = Make(5);
        using var m32 = Make(5);
        m.SetPrecision(ModelPrecision.Bf16);
        var (tokens, lens) = Batch(11, [50, 30]);
        using var opt = new AdamW(m, new LrSchedule(1e-2, 0, "constant", 0, 10));
        using var opt32 = new AdamW(m32, new LrSchedule(1e-2, 0, "constant", 0, 10));
        var rng = new Random(3);
        var g = Enumerable.Range(0, tokens.Length * Cfg.Vocab).Select(_ => (float)(rng.NextDouble() * 2 - 1)).ToArray();
        foreach (var (model, o) in new[] { (m, opt), (m32, opt32) })
        {
            model.ZeroGrad();
            model.Forward(new PackedBatch(tokens, lens));
            float* d = model.OutputGradientBuffer();
            g.CopyTo(new Span<float>(d, g.Length));
            model.Backward(d);
        }
        // bf16 gradients (fp32, from bf16 weights and bf16-rounded activations) near the fp32 ones
        // (measured 3.0e-2 normwise).
        var gb = m.Gradients.ToArray();
        var g32 = m32.Gradients.ToArray().Select(f => (double)f).ToArray();
        double gerr = RelErr(gb, g32);
        Assert.True(gerr < 6e-2 && gerr > 0, $"bf16 vs fp32 gradients: max rel err {gerr}");
        var before = m.Parameters.ToArray();
        opt.StepOnce();
        var after = m.Parameters.ToArray();
        Assert.NotEqual(before, after);  // the fp32 master moved (by less than a bf16 ulp in places)
        var copy = m.Bf16Parameters.ToArray();
        for (int i = 0; i < after.Length; i++)
            Assert.True(copy[i] == Rne(after[i]), $"bf16 copy [{i}] = {copy[i]:x4}, RNE(master) = {Rne(after[i]):x4}");
        // The next forward reads the new copy: it equals a fresh bf16 model loaded with the new master.
        using var fresh = new LlamaModel(Cfg, false);
        fresh.CopyParametersFrom(m);
        fresh.SetPrecision(ModelPrecision.Bf16);
        int n = tokens.Length * Cfg.Vocab;
        var a = new ReadOnlySpan<float>(m.Forward(new PackedBatch(tokens, lens)), n).ToArray();
        var b = new ReadOnlySpan<float>(fresh.Forward(new PackedBatch(tokens, lens)), n).ToArray();
        Assert.Equal(a, b);
    }

    /// <summary>The backward reads the bf16 weights the forward read (RMSNorm and linear layers
    /// alike), not the fp32 master: two models with different masters but the same bf16 copy have
    /// bit-identical gradients. Make's norm weights are not bf16 values, so a backward reading the
    /// master would differ.</summary>
    [Fact]
    public void BackwardReadsTheBf16WeightsNotTheMaster()
    {
        using var m = Make(41);
        using var r = Make(41);
        var p = r.Parameters;
        for (int i = 0; i < p.Length; i++) p[i] = Widen(Rne(p[i]));
        Assert.NotEqual(m.Parameters.ToArray(), r.Parameters.ToArray());
        var (tokens, lens) = Batch(43, [40, 30]);
        var rng = new Random(44);
        var g = Enumerable.Range(0, tokens.Length * Cfg.Vocab).Select(_ => (float)(rng.NextDouble() * 2 - 1)).ToArray();
        float[] Gradients(LlamaModel model)
        {
            model.SetPrecision(ModelPrecision.Bf16);
            model.ZeroGrad();
            model.Forward(new PackedBatch(tokens, lens));
            float* d = model.OutputGradientBuffer();
            g.CopyTo(new Span<float>(d, g.Length));
            model.Backward(d);
            return model.Gradients.ToArray();
        }
        var (gm, gr) = (Gradients(m), Gradients(r));
        Assert.Contains(gm, x => x != 0);
        Assert.Equal(gr, gm);
    }

    [Fact]
    public void FrozenModelHoldsBf16OnlyAndGivesTheSameOutputs()
    {
        using var m = Make(9, scalar: true);
        using var frozen = Make(9, scalar: true);
        m.SetPrecision(ModelPrecision.Bf16);
        frozen.FreezeToBf16();
        Assert.True(frozen.HoldsBf16Only);
        var (tokens, lens) = Batch(13, [70, 3]);
        var a = new ReadOnlySpan<float>(m.Forward(new PackedBatch(tokens, lens)), tokens.Length).ToArray();
        var b = new ReadOnlySpan<float>(frozen.Forward(new PackedBatch(tokens, lens)), tokens.Length).ToArray();
        Assert.Equal(a, b);
        Assert.Contains("bf16 weights only", Assert.Throws<InvalidOperationException>(() => frozen.Parameters.Length).Message);
        Assert.Contains("bf16 weights only", Assert.Throws<InvalidOperationException>(() => frozen.Backward(frozen.OutputGradientBuffer())).Message);
        Assert.Throws<InvalidOperationException>(() => frozen.SetPrecision(ModelPrecision.Fp32));
    }

    [Fact]
    public void KvCachedDecodeInBf16MatchesTheFullForward()
    {
        using var m = Make(21);
        m.SetPrecision(ModelPrecision.Bf16);
        int[] seq = [3, 7, 1, 30, 2, 9];
        using var cache = m.NewKvCache(1, 16);
        using var cache32 = new KvCache(Cfg, 1, 16);
        Assert.Equal(ReaLNative.Interop.DType.BF16, cache.ElementType);  // a bf16 model's cache is bf16: half the bytes
        Assert.Equal(cache32.Bytes, 2 * cache.Bytes);
        float[] Decode(KvCache c)
        {
            var logits = new float[Cfg.Vocab];
            fixed (float* o = logits)
            {
                m.ForwardCached(c, seq[..5], [0, 0, 0, 0, 0], [0, 1, 2, 3, 4], decode: false, o);
                m.ForwardCached(c, [seq[5]], [0], [5], decode: true, o);
            }
            return logits;
        }
        var full = new ReadOnlySpan<float>(m.Forward(new PackedBatch(seq, [seq.Length])) + 5 * Cfg.Vocab, Cfg.Vocab).ToArray();
        double Err(float[] logits) => logits.Zip(full, (x, y) => Math.Abs(x - y)).Max() / full.Max(Math.Abs);
        // With an fp32 cache both are small-M (6 tokens): the same bf16 kernels, so close to fp32 rounding.
        double err32 = Err(Decode(cache32));
        Assert.True(err32 < 1e-4, $"cached decode (fp32 cache) vs full forward: {err32}");
        // The bf16 cache rounds every K/V element (2^-9 relative): measured 4.4e-3 here.
        double err = Err(Decode(cache));
        Assert.True(err < 1e-2 && err > err32, $"cached decode (bf16 cache) vs full forward: {err} (fp32 cache: {err32})");
    }

    /// <summary>Greedy generation of a bf16 model (bf16 KV cache) picks the argmax of the full forward
    /// (no cache, fp32 K/V) at every step whose top-two logit margin exceeds what bf16 K/V can move
    /// (checked: most steps), and its log-probs are those of the full forward within that bound.</summary>
    [Fact]
    public void GreedyGenerationWithABf16CacheEqualsStepwiseArgmax()
    {
        using var m = Make(31);
        m.SetPrecision(ModelPrecision.Bf16);
        int[][] prompts = [[1, 2, 3], [4], [5, 6, 7, 8, 9, 10, 11], [12, 13]];
        const int steps = 10;
        var res = Generation.Generator.Generate(m, prompts, new Generation.GenerationOptions { MaxNewTokens = steps, Temperature = 0 });
        int checkedSteps = 0;
        double worstLogp = 0;
        for (int i = 0; i < prompts.Length; i++)
        {
            Assert.Equal(steps, res.NewTokens[i].Length);
            var seq = prompts[i].ToList();
            for (int step = 0; step < steps; step++)
            {
                var last = new ReadOnlySpan<float>(m.Forward(new PackedBatch(seq.ToArray(), [seq.Count])) + (seq.Count - 1) * Cfg.Vocab, Cfg.Vocab).ToArray();
                var order = Enumerable.Range(0, Cfg.Vocab).OrderByDescending(j => last[j]).ToArray();
                double scale = last.Max(Math.Abs);
                if (last[order[0]] - last[order[1]] > 2e-2 * scale)
                {
                    Assert.Equal(order[0], res.NewTokens[i][step]);
                    checkedSteps++;
                }
                double mx = last[order[0]], sum = last.Sum(z => Math.Exp(z - mx));
                double want = last[res.NewTokens[i][step]] - mx - Math.Log(sum);
                worstLogp = Math.Max(worstLogp, Math.Abs(want - res.LogProbs[i][step]));
                seq.Add(res.NewTokens[i][step]);  // continue on the generated token
            }
        }
        Assert.True(checkedSteps >= prompts.Length * steps * 3 / 4, $"only {checkedSteps} steps had a clear argmax");
        Assert.True(worstLogp < 5e-2, $"log-prob vs full forward: {worstLogp}");  // measured 1.6e-2 (36 of 40 steps checked)
    }
}
