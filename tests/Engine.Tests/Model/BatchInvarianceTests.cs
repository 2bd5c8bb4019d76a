// Generation is batch-invariant: a sequence's logits, K/V, tokens and log-probs do not depend on
// which other sequences share its forwards. Each part is checked on its own so that a failure
// names the part: a decode step's rows (linears, norms, decode attention, head) with fewer and more
// than 64 rows (the old small-M / SGEMM threshold of the linear), a prefill of a prompt alone and
// packed with others (more than 64 token rows), and the S-slot continuous batch against the static
// batch with more than 64 rows per decode step.
using ReaLNative.Engine.Generation;
using ReaLNative.Engine.Model;
using ReaLNative.Interop;
using Xunit;

namespace ReaLNative.Engine.Tests.Model;

public sealed unsafe class BatchInvarianceTests
{
    private static readonly LlamaConfig Small = new() { Layers = 2, Hidden = 48, Intermediate = 80, Heads = 4, KvHeads = 2, Vocab = 29, MaxPositions = 64 };

    private static LlamaModel Make(int seed, bool bf16)
    {
        var m = new LlamaModel(Small, false);
        m.InitRandom(seed, std: 0.3f);
        if (bf16) m.FreezeToBf16();
        return m;
    }

    private static int[][] Prompts(int n, int seed, int minLen = 1, int maxLen = 7)
    {
        var rng = new Random(seed);
        return Enumerable.Range(0, n).Select(_ => Enumerable.Range(0, rng.Next(minLen, maxLen)).Select(_ => rng.Next(Small.Vocab)).ToArray()).ToArray();
    }

    /// <summary>Logits rows [rows, V] as arrays.</summary>
    private static float[][] Rows(float* p, int rows, int v) => Enumerable.Range(0, rows).Select(r => new ReadOnlySpan<float>(p + (long)r * v, v).ToArray()).ToArray();

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void ADecodeRowDoesNotDependOnTheRowsBesideIt(bool bf16)
    {
        using var m = Make(31, bf16);
        const int B = 150;
        int V = Small.Vocab;
        var prompts = Prompts(B, 3);
        using var cache = m.NewKvCache(B, 16);
        using var outBuf = new HostBlock((long)B * V * 4);
        float* o = (float*)outBuf.Pointer;
        Generator.Prefill(m, cache, prompts, Enumerable.Range(0, B).ToArray(), o, V);
        var rng = new Random(9);
        int[] tok = prompts.Select(_ => rng.Next(V)).ToArray(), pos = prompts.Select(p => p.Length).ToArray();
        // One decode step (position p of every slot) for all 150 rows, then for subsets: 1, 40, 64,
        // 65 and 100 rows, in other orders. Rerunning a step rewrites the same K/V at the same position.
        m.ForwardCached(cache, tok, Enumerable.Range(0, B).ToArray(), pos, true, o);
        var all = Rows(o, B, V);
        foreach (int n in new[] { 1, 40, 64, 65, 100 })
        {
            var slots = Enumerable.Range(0, B).OrderBy(_ => rng.Next()).Take(n).ToArray();
            m.ForwardCached(cache, slots.Select(s => tok[s]).ToArray(), slots, slots.Select(s => pos[s]).ToArray(), true, o);
            var sub = Rows(o, n, V);
            for (int r = 0; r < n; r++)
                Assert.True(all[slots[r]].AsSpan().SequenceEqual(sub[r]), $"slot {slots[r]}: decoded with {n} rows its logits differ from the step of {B} rows");
        }
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void APrefillDoesNotDependOnThePromptsBesideIt(bool bf16)
    {
        using var m = Make(32, bf16);
        const int B = 40;
        int V = Small.Vocab;
        var prompts = Prompts(B, 4, 3, 12);   // ~300 prompt tokens: packed forwards of more than 64 rows
        using var together = m.NewKvCache(B, 16);
        using var alone = m.NewKvCache(B, 16);
        using var outBuf = new HostBlock((long)B * V * 4);
        float* o = (float*)outBuf.Pointer;
        Generator.Prefill(m, together, prompts, Enumerable.Range(0, B).ToArray(), o, V);
        var packed = Rows(o, B, V);
        for (int i = 0; i < B; i++)
        {
            Generator.Prefill(m, alone, [prompts[i]], [i], o, V);
            Assert.True(packed[i].AsSpan().SequenceEqual(Rows(o, 1, V)[0]), $"prompt {i}: prefilled alone its logits differ from the packed prefill");
        }
        Assert.True(new ReadOnlySpan<byte>(together.K(0), (int)(together.Bytes / 2 / Small.Layers)).SequenceEqual(new ReadOnlySpan<byte>(alone.K(0), (int)(alone.Bytes / 2 / Small.Layers))), "layer 0 K differs");
        Assert.True(new ReadOnlySpan<byte>(together.V(Small.Layers - 1), (int)(together.Bytes / 2 / Small.Layers)).SequenceEqual(
            new ReadOnlySpan<byte>(alone.V(Small.Layers - 1), (int)(alone.Bytes / 2 / Small.Layers))), "last layer V differs");
    }

    [Theory]
    [InlineData(100, 16, false)]
    [InlineData(100, 16, true)]
    [InlineData(130, 64, false)]
    public void SlotsOfTheContinuousBatchGiveTheStaticBatchWithMoreThan64Rows(int prompts, int slots, bool bf16)
    {
        using var m = Make(33, bf16);
        var p = Prompts(prompts, 5);
        var rng = new Random(prompts);
        var opt = new GenerationOptions
        {
            MaxNewTokens = 10, Temperature = 1f, Seed = 17, EosToken = 2,
            MaxNewTokensPerPrompt = p.Select(_ => rng.Next(1, 11)).ToArray(),
        };
        var stat = Generator.Generate(m, p, opt with { BatchIndependentPrefill = true, RecordSteps = true });
        Assert.Contains(stat.Steps!, s => s.Decode && s.Rows > 64);   // the static decode steps do run more than 64 rows
        var cont = Generator.GenerateContinuous(m, p, opt, slots);
        for (int i = 0; i < prompts; i++)
        {
            Assert.Equal(stat.NewTokens[i], cont.NewTokens[i]);
            Assert.Equal(stat.LogProbs[i], cont.LogProbs[i]);
            Assert.Equal(stat.EndedWithEos[i], cont.EndedWithEos[i]);
        }
    }
}
