// Continuous batching must not change what is generated: the same tokens, log-probs and masks as
// the static generator for the same seed, whatever the number of slots (so sequences are
// prefilled and decoded in different batch compositions), with EOS and per-prompt caps; shared
// prefixes do not change a prompt's K/V (prefills of at most 64 tokens, batch-independent); and a
// GRPO run with `generation.batching: continuous` ends with the parameters of `static` with
// `prefill: batch_independent`; continuous with a packed prefill is refused.
using System.Text.Json.Nodes;
using ReaLNative.Engine.Config;
using ReaLNative.Engine.Generation;
using ReaLNative.Engine.Model;
using ReaLNative.Engine.Runs;
using Xunit;

namespace ReaLNative.Engine.Tests.Model;

public sealed class ContinuousBatchingTests
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
        Assert.Equal(a.NewTokens.Length, b.NewTokens.Length);
        for (int i = 0; i < a.NewTokens.Length; i++)
        {
            Assert.Equal(a.NewTokens[i], b.NewTokens[i]);
            Assert.Equal(a.LogProbs[i], b.LogProbs[i]);
            Assert.Equal(a.EndedWithEos[i], b.EndedWithEos[i]);
            if (a.Masks is not null) Assert.Equal(a.Masks[i], b.Masks![i]);
        }
        Assert.Equal(a.Masks is null, b.Masks is null);
    }

    [Theory]
    [InlineData(1)]
    [InlineData(3)]
    [InlineData(5)]
    [InlineData(12)]
    public void SampledTokensEqualTheStaticGenerator(int slots)
    {
        using var m = Make(21);
        var prompts = Prompts(12, 4);
        var rng = new Random(8);
        var opt = new GenerationOptions
        {
            MaxNewTokens = 9, Temperature = 0.9f, TopK = 6, TopP = 0.95f, Seed = 77, EosToken = 3,
            MaxNewTokensPerPrompt = prompts.Select(_ => rng.Next(1, 10)).ToArray(),
        };
        var stat = Generator.Generate(m, prompts, opt with { BatchIndependentPrefill = true });
        var cont = Generator.GenerateContinuous(m, prompts, opt, slots);
        AssertSame(stat, cont);
        Assert.Contains(stat.EndedWithEos, e => e);  // EOS frees slots early in this draw
        for (int i = 0; i < prompts.Length; i++)
            Assert.True(stat.NewTokens[i].Length <= opt.MaxNewTokensPerPrompt![i]);
    }

    [Fact]
    public void GreedyTokensEqualTheStaticGenerator()
    {
        using var m = Make(22);
        var prompts = Prompts(7, 5);
        var opt = new GenerationOptions { MaxNewTokens = 12, Temperature = 0 };
        AssertSame(Generator.Generate(m, prompts, opt with { BatchIndependentPrefill = true }), Generator.GenerateContinuous(m, prompts, opt, 2));
    }

    [Theory]
    [InlineData(4)]
    [InlineData(6)]
    public void GroupsOfIdenticalPromptsShareOnePrefillAndSampleTheSame(int slots)
    {
        using var m = Make(24);
        var distinct = Prompts(3, 7);
        // GRPO-style groups of 4 samples per prompt: copies (equal content) and the same array.
        var prompts = distinct.SelectMany(p => new[] { p, p.ToArray(), p, p.ToArray() }).ToArray();
        var opt = new GenerationOptions { MaxNewTokens = 7, Temperature = 1f, TopK = 8, Seed = 5, EosToken = 2 };
        var stat = Generator.Generate(m, prompts, opt with { BatchIndependentPrefill = true });
        var cont = Generator.GenerateContinuous(m, prompts, opt, slots);
        AssertSame(stat, cont);
        Assert.Equal(prompts.Sum(p => p.Length), stat.PrefilledTokens);
        Assert.True(cont.PrefilledTokens < stat.PrefilledTokens, $"prefilled {cont.PrefilledTokens} of {stat.PrefilledTokens} prompt tokens");
        // Samples of one group differ (their draws are keyed by sequence), though they share the prefix.
        Assert.Contains(Enumerable.Range(1, 3), k => !stat.NewTokens[0].SequenceEqual(stat.NewTokens[k]));
    }

    [Theory]
    [InlineData(6, 4, 3, 6)]    // 24 prompts: the static prefill has > 64 token rows, the shared one would not
    [InlineData(10, 8, 1, 3)]   // 80 prompts: > 64 head rows (one per prompt) statically, 10 when shared
    [InlineData(40, 2, 1, 2)]   // 80 prompts, 40 distinct: both sides stay above
    public void SharedPrefillsKeepTheStaticSideOfTheKernelThreshold(int distinctCount, int group, int minLen, int maxLen)
    {
        using var m = Make(25);
        var rng = new Random(distinctCount);
        var distinct = Enumerable.Range(0, distinctCount).Select(_ => Enumerable.Range(0, rng.Next(minLen, maxLen + 1)).Select(_ => rng.Next(Small.Vocab)).ToArray()).ToArray();
        var prompts = distinct.SelectMany(p => Enumerable.Repeat(p, group)).ToArray();
        var opt = new GenerationOptions { MaxNewTokens = 6, Temperature = 1f, Seed = 9, EosToken = 1 };
        var stat = Generator.Generate(m, prompts, opt with { BatchIndependentPrefill = true });
        Assert.True(stat.PrefilledTokens > Generator.SmallMMaxRows || prompts.Length > Generator.SmallMMaxRows);
        var cont = Generator.GenerateContinuous(m, prompts, opt, prompts.Length);
        AssertSame(stat, cont);
        Assert.True(cont.PrefilledTokens < stat.PrefilledTokens, $"prefilled {cont.PrefilledTokens} of {stat.PrefilledTokens} prompt tokens");
        // The same through the options (the pipeline's path), micro-batched as the static path cuts it.
        AssertSame(stat, Generator.Generate(m, prompts, opt with { Continuous = true }));
        var shard = Generator.GenerateShard(m, prompts, Enumerable.Range(0, prompts.Length).ToArray(), opt with { Continuous = true }, 3)!;
        AssertSame(Generator.GenerateShard(m, prompts, Enumerable.Range(0, prompts.Length).ToArray(), opt with { BatchIndependentPrefill = true }, 3)!, shard);
    }

    [Fact]
    public void GrpoWithContinuousBatchingEndsWithTheParametersOfTheStaticBatch()
    {
        // 32 samples = 8 prompts x 4: a packed static prefill would have > 64 tokens, the 8 distinct prompts fewer.
        static ExperimentConfig Config(string batching) => ExperimentConfig.Parse($$"""
            name: cb
            algorithm: grpo
            seed: 3
            iterations: 2
            task: { name: sort-digits, min_len: 3, max_len: 4 }
            eval: { size: 8, every: 2 }
            models:
              actor: { preset: tiny, init: sft }
              ref:   { preset: tiny, init: sft }
            reward: { kind: task }
            generation: { temperature: 1.0, batching: {{batching}} }
            batch: { size: 32, prompt_len: 8, gen_len: 6, minibatches: 2, group_size: 4 }
            stages:
              - { algorithm: sft, iterations: 4, models: { actor: { preset: tiny, init: random } }, optim: { lr: 3.0e-3 } }
              - { algorithm: grpo, optim: { lr: 5.0e-4 } }
            """, Path.GetTempPath());
        string a = Path.Combine(Path.GetTempPath(), "realn-cb-" + Guid.NewGuid().ToString("N")[..8]);
        string b = a + "-static";
        Directory.CreateDirectory(a);
        Directory.CreateDirectory(b);
        try
        {
            float[] cont, stat;
            using (var p = new Pipeline(Config("continuous"), a)) { p.Run(resume: false); cont = p.Model("actor").Parameters.ToArray(); }
            using (var p = new Pipeline(Config("static, prefill: batch_independent"), b)) { p.Run(resume: false); stat = p.Model("actor").Parameters.ToArray(); }
            Assert.Equal(stat, cont);
            static List<string> Lines(string d) => File.ReadLines(Path.Combine(d, "metrics.jsonl"))
                .Select(l => JsonNode.Parse(l)!.AsObject()).Select(o => { o.Remove("seconds"); return o.ToJsonString(); }).ToList();
            var (lc, ls) = (Lines(a), Lines(b));
            Assert.Equal(ls, lc);
            Assert.Contains(lc, l => l.Contains("\"actor_gen\""));
        }
        finally { Directory.Delete(a, true); Directory.Delete(b, true); }
    }

    [Fact]
    public void BatchingSettingsAreReadAndAPackedPrefillIsRefusedUnderContinuousBatching()
    {
        static string Yaml(string gen) => $$"""
            name: cb
            algorithm: grpo
            seed: 3
            iterations: 2
            task: { name: sort-digits, min_len: 3, max_len: 4 }
            models:
              actor: { preset: tiny, init: sft }
              ref:   { preset: tiny, init: sft }
            reward: { kind: task }
            {{gen}}
            batch: { size: 32, prompt_len: 8, gen_len: 6, minibatches: 2, group_size: 4 }
            stages:
              - { algorithm: sft, iterations: 4, models: { actor: { preset: tiny, init: random } } }
              - { algorithm: grpo }
            """;
        var d = ExperimentConfig.Parse(Yaml(""), Path.GetTempPath()).Stages[1].Generation;
        Assert.False(d.Continuous);
        Assert.False(d.BatchIndependentPrefill);
        var c = ExperimentConfig.Parse(Yaml("generation: { batching: continuous }"), Path.GetTempPath()).Stages[1].Generation;
        Assert.True(c.Continuous && c.BatchIndependentPrefill);
        var e = Assert.Throws<ConfigException>(() => ExperimentConfig.Parse(Yaml("generation: { batching: continuous, prefill: packed }"), Path.GetTempPath()));
        Assert.Equal("generation.prefill", e.FieldPath);
        Assert.Throws<ConfigException>(() => ExperimentConfig.Parse(Yaml("generation: { batching: paged }"), Path.GetTempPath()));
    }

    [Theory]
    [InlineData(ReaLNative.Interop.DType.F32)]
    [InlineData(ReaLNative.Interop.DType.BF16)]
    public void CopyPrefixCopiesEveryLayerAndChecksBounds(int elementType)
    {
        using var cache = new KvCache(Small, 3, 8, elementType);
        var rng = new Random(1);
        unsafe
        {
            // Compared as raw 16-bit units: 2 per fp32 element, 1 per bf16 one.
            long units = cache.ElementBytes / 2;
            long per = 3L * 8 * Small.KvHeads * Small.HeadDim * units, row = Small.KvHeads * Small.HeadDim * units;
            Assert.Equal(2 * Small.Layers * per * 2, cache.Bytes);
            ushort* K(int l) => (ushort*)cache.K(l);
            ushort* V(int l) => (ushort*)cache.V(l);
            for (int l = 0; l < Small.Layers; l++)
                for (long e = 0; e < per; e++) { K(l)[e] = (ushort)rng.Next(1 << 16); V(l)[e] = (ushort)rng.Next(1 << 16); }
            var before = new ReadOnlySpan<ushort>(K(0), (int)per).ToArray();
            cache.CopyPrefix(2, 0, 5);
            for (int l = 0; l < Small.Layers; l++)
                for (long e = 0; e < 5 * row; e++)
                {
                    Assert.Equal(K(l)[2 * 8 * row + e], K(l)[e]);
                    Assert.Equal(V(l)[2 * 8 * row + e], V(l)[e]);
                }
            for (long e = 5 * row; e < per; e++) Assert.Equal(before[e], K(0)[e]);  // beyond the prefix: untouched
        }
        Assert.Throws<ArgumentOutOfRangeException>(() => cache.CopyPrefix(3, 0, 1));
        Assert.Throws<ArgumentOutOfRangeException>(() => cache.CopyPrefix(0, 1, 9));
    }

    [Fact]
    public void BadOptionsAreRefusedWithNames()
    {
        using var m = Make(23);
        var prompts = Prompts(3, 6);
        Assert.Contains("slots >= 1", Assert.Throws<ArgumentException>(() =>
            Generator.GenerateContinuous(m, prompts, new GenerationOptions(), 0)).Message);
        Assert.Contains("max_new_tokens[1]", Assert.Throws<ArgumentException>(() =>
            Generator.GenerateContinuous(m, prompts, new GenerationOptions { MaxNewTokens = 4, MaxNewTokensPerPrompt = [1, 5, 2] }, 2)).Message);
        Assert.Contains("2 per-prompt", Assert.Throws<ArgumentException>(() =>
            Generator.Generate(m, prompts, new GenerationOptions { MaxNewTokens = 4, MaxNewTokensPerPrompt = [1, 2] })).Message);
    }
}
