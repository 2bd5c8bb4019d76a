// A generation that pauses at a decode step (GenerationPause, async `weight_update: interrupt`):
// with the weights unchanged the chunks give exactly the one-call result; with new weights set
// between the chunks, tokens before the stop step are the old weights' and the rest are sampled
// by the new weights on the KV cache the old ones wrote, as a plain per-sequence reference
// (prefill and decode steps on one KV cache, switching models at the step) computes them.
using ReaLNative.Engine.Generation;
using ReaLNative.Engine.Model;
using ReaLNative.Interop;
using Xunit;

namespace ReaLNative.Engine.Tests.Model;

public sealed unsafe class PausedGenerationTests
{
    private static readonly LlamaConfig Small = new() { Layers = 2, Hidden = 32, Intermediate = 48, Heads = 4, KvHeads = 2, Vocab = 13, MaxPositions = 64 };

    private static LlamaModel Make(int seed)
    {
        var m = new LlamaModel(Small, false);
        m.InitRandom(seed, std: 0.3f);
        return m;
    }

    private static int[][] Prompts(int n, int seed)
    {
        var rng = new Random(seed);
        return Enumerable.Range(0, n).Select(_ => Enumerable.Range(0, rng.Next(1, 7)).Select(_ => rng.Next(Small.Vocab)).ToArray()).ToArray();
    }

    private static void AssertSame(GenerationResult a, GenerationResult b)
    {
        Assert.Equal(a.NewTokens, b.NewTokens);
        Assert.Equal(a.LogProbs, b.LogProbs);
        Assert.Equal(a.EndedWithEos, b.EndedWithEos);
        Assert.Equal(a.Masks is null, b.Masks is null);
        if (a.Masks is not null) Assert.Equal(a.Masks, b.Masks!);
    }

    private static readonly GenerationOptions Sampled = new() { MaxNewTokens = 10, Temperature = 0.9f, TopK = 6, TopP = 0.95f, Seed = 77, EosToken = 3 };

    [Theory]
    [InlineData(1, 1)]
    [InlineData(4, 1)]
    [InlineData(9, 3)]
    [InlineData(30, 2)]   // past the end: the whole generation in the first chunk
    public void ChunksWithTheSameWeightsGiveTheOneCallResult(int stop, int microBatches)
    {
        using var m = Make(21);
        var prompts = Prompts(9, 4);
        var ids = Enumerable.Range(0, prompts.Length).ToArray();
        var whole = Generator.GenerateShard(m, prompts, ids, Sampled, microBatches)!;
        var first = Generator.GenerateShard(m, prompts, ids, Sampled with { Pause = new GenerationPause(5, stop, Resume: false) }, microBatches)!;
        Assert.All(first.NewTokens, t => Assert.True(t.Length <= stop));
        var rest = Generator.GenerateShard(m, prompts, ids, Sampled with { Pause = new GenerationPause(5, 0, Resume: true) }, microBatches)!;
        AssertSame(whole, rest);
        Assert.Contains(whole.EndedWithEos, e => e);   // EOS ends some sequences in this draw
        // Three chunks.
        Generator.GenerateShard(m, prompts, ids, Sampled with { Pause = new GenerationPause(6, 2, Resume: false) }, microBatches);
        Generator.GenerateShard(m, prompts, ids, Sampled with { Pause = new GenerationPause(6, 5, Resume: true) }, microBatches);
        AssertSame(whole, Generator.GenerateShard(m, prompts, ids, Sampled with { Pause = new GenerationPause(6, 0, Resume: true) }, microBatches)!);
    }

    [Theory]
    [InlineData(1)]
    [InlineData(3)]
    [InlineData(6)]
    public void AfterThePauseTheNewWeightsSampleOnTheOldKvCache(int stop)
    {
        using var oldW = Make(21);
        using var newW = Make(22);
        using var g = Make(21);
        var prompts = Prompts(8, 5);
        var opt = new GenerationOptions { MaxNewTokens = 9, Temperature = 0.8f, Seed = 91, EosToken = 3, BatchIndependentPrefill = true };
        Generator.Generate(g, prompts, opt with { Pause = new GenerationPause(1, stop, Resume: false) });
        g.CopyParametersFrom(newW);
        var got = Generator.Generate(g, prompts, opt with { Pause = new GenerationPause(1, 0, Resume: true) });
        for (int i = 0; i < prompts.Length; i++)
        {
            var (tokens, logProbs, eos) = Reference(oldW, newW, stop, prompts[i], i, opt);
            Assert.Equal(tokens, got.NewTokens[i]);
            Assert.Equal(logProbs, got.LogProbs[i]);
            Assert.Equal(eos, got.EndedWithEos[i]);
        }
        // Neither weights alone give these samples.
        Assert.NotEqual(Generator.Generate(oldW, prompts, opt).NewTokens, got.NewTokens);
        Assert.NotEqual(Generator.Generate(newW, prompts, opt).NewTokens, got.NewTokens);
    }

    /// <summary>One sequence: prefill and decode on one KV cache, token s sampled from the logits of
    /// <paramref name="oldW"/> for s &lt; <paramref name="stop"/> and of <paramref name="newW"/> after.</summary>
    private static (int[] Tokens, float[] LogProbs, bool Eos) Reference(LlamaModel oldW, LlamaModel newW, int stop, int[] prompt, int id, GenerationOptions opt)
    {
        using var cache = oldW.NewKvCache(1, prompt.Length + opt.MaxNewTokens);
        var logits = new float[Small.Vocab];
        var tokens = new List<int>();
        var lps = new List<float>();
        var so = SampleOpts.Default;
        so.Temperature = opt.Temperature; so.TopK = opt.TopK; so.TopP = opt.TopP; so.Seed = opt.Seed;
        fixed (float* o = logits)
        {
            Generator.Prefill(oldW, cache, [prompt], [0], o, Small.Vocab);
            for (int s = 0; ; s++)
            {
                if (s > 0) (s < stop ? oldW : newW).ForwardCached(cache, [tokens[^1]], [0], [prompt.Length + s - 1], true, o);
                int tok;
                float lp;
                so.Offset = (ulong)s << 32 | (uint)id;
                Native.Check(Native.realn_op_sample(oldW.Stream.Ptr, DType.F32, o, 1, Small.Vocab, &so, &tok, null, &lp));
                tokens.Add(tok); lps.Add(lp);
                if (tok == opt.EosToken) return (tokens.ToArray(), lps.ToArray(), true);
                if (tokens.Count == opt.MaxNewTokens) return (tokens.ToArray(), lps.ToArray(), false);
            }
        }
    }

    [Fact]
    public void ResumingWhatIsNotPausedOrWithOtherOptionsIsRefused()
    {
        using var m = Make(21);
        var prompts = Prompts(3, 6);
        var resume = Sampled with { Pause = new GenerationPause(8, 0, Resume: true) };
        Assert.Contains("no paused generation 8", Assert.Throws<InvalidOperationException>(() => Generator.Generate(m, prompts, resume)).Message);
        Generator.Generate(m, prompts, Sampled with { Pause = new GenerationPause(8, 2, Resume: false) });
        Assert.Contains("seed", Assert.Throws<ArgumentException>(() => Generator.Generate(m, prompts, resume with { Seed = 1 })).Message);
        Assert.Contains("stop step >= 1", Assert.Throws<ArgumentException>(() => Generator.Generate(m, prompts, Sampled with { Pause = new GenerationPause(9, 0, Resume: false) })).Message);
        Assert.Contains("continuous batching", Assert.Throws<ArgumentException>(() =>
            Generator.Generate(m, prompts, Sampled with { Continuous = true, Pause = new GenerationPause(9, 2, Resume: false) })).Message);
    }
}
