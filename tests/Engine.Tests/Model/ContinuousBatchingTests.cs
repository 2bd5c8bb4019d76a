// Continuous batching must not change what is generated: the same tokens, log-probs and masks as
// the static generator for the same seed, whatever the number of slots (so sequences are
// prefilled and decoded in different batch compositions), with EOS and per-prompt caps.
using ReaLNative.Engine.Generation;
using ReaLNative.Engine.Model;
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
        var stat = Generator.Generate(m, prompts, opt);
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
        AssertSame(Generator.Generate(m, prompts, opt), Generator.GenerateContinuous(m, prompts, opt, 2));
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
