// The model families in llama.cpp (LLamaSharp 0.30.0, CPU): a random small LLaMA 3.1 (llama3 rope
// scaling, exported as llama.cpp's rope_freqs tensor) and a random small Qwen2 (llama.cpp's "qwen2"
// architecture: q/k/v biases, tied embeddings, NEOX rotary) are exported as F32 GGUF; llama.cpp must
// compute our logits at every position and generate our greedy tokens.
using ReaLNative.Engine.Checkpoints;
using ReaLNative.Engine.Generation;
using ReaLNative.Engine.Model;
using ReaLNative.Interop;
using Xunit;
using Xunit.Abstractions;

namespace ReaLNative.LlamaCppOracle.Tests;

public sealed class GgufFamilyTests(ITestOutputHelper output) : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("realn-gguf-family-").FullName;

    public void Dispose() => Directory.Delete(_dir, true);

    /// <summary>Head dim 16, theta 1e4: LLaMA 3.1's scaling (factor 8, 1, 8, original 256) keeps pairs 0-1,
    /// blends 2-3 and divides 4-7, so positions of a few dozen tokens show every kind.</summary>
    private static LlamaConfig Config(string family)
    {
        var c = new LlamaConfig { Layers = 2, Hidden = 64, Intermediate = 176, Heads = 4, KvHeads = 2, Vocab = 512, MaxPositions = 128 };
        return family switch
        {
            "llama3.1" => c with { RopeScaling = new Llama3RopeScaling(8, 1, 8, 256) },
            "qwen2" => c with { QkvBias = true, ModelType = "qwen2", TiedEmbeddings = true, RopeTheta = 1e6f },
            _ => throw new ArgumentException(family),
        };
    }

    private static LlamaModel Model(LlamaConfig cfg, int seed)
    {
        var m = new LlamaModel(cfg, scalarHead: false);
        m.InitRandom(seed, std: 0.2f);  // logits of order 1
        var rng = new Random(seed);
        foreach (var v in m.Layout.Views.Where(v => v.Name.EndsWith(".bias", StringComparison.Ordinal)))
            foreach (ref var b in m.Parameters.Slice((int)v.Offset, (int)v.LocalElements)) b = (float)(rng.NextDouble() - 0.5);
        return m;
    }

    private static int[] Tokens(int n, int seed)
    {
        var rng = new Random(seed);
        return Enumerable.Range(0, n).Select(_ => rng.Next(512)).ToArray();
    }

    private string Export(LlamaModel model, string name)
    {
        string path = Path.Combine(_dir, name + ".gguf");
        GgufWriter.Write(model, path, null, GgufDType.F32);
        return path;
    }

    private static unsafe (double RelL2, int Agree) Compare(LlamaModel model, LlamaCpp cpp, int[] tokens)
    {
        var theirs = cpp.AllLogits(tokens);
        float* ours = model.Forward(PackedBatch.FromSequences([tokens]));
        int V = model.Config.Vocab;
        double num = 0, den = 0;
        int agree = 0;
        for (int t = 0; t < tokens.Length; t++)
        {
            int am = 0, bm = 0;
            for (int j = 0; j < V; j++)
            {
                double a = ours[(long)t * V + j], b = theirs[(long)t * V + j];
                num += (a - b) * (a - b);
                den += b * b;
                if (a > ours[(long)t * V + am]) am = j;
                if (b > theirs[(long)t * V + bm]) bm = j;
            }
            if (am == bm) agree++;
        }
        return (Math.Sqrt(num / den), agree);
    }

    [Theory]
    [InlineData("llama3.1")]
    [InlineData("qwen2")]
    public void F32LogitsAndGreedyTokensEqualOurs(string family)
    {
        using var model = Model(Config(family), 3);
        using var cpp = new LlamaCpp(Export(model, family), Native.GetNumThreads(), 3, 128, 3 * 128);
        var tokens = Tokens(60, 9);
        var (rel, agree) = Compare(model, cpp, tokens);
        output.WriteLine($"{family} F32: relative L2 {rel:E2}, argmax {agree}/{tokens.Length}");
        Assert.True(rel < 1e-5, $"{family}: relative L2 {rel}");
        Assert.Equal(tokens.Length, agree);
        var prompts = new List<int[]> { Tokens(5, 1), Tokens(30, 2), Tokens(12, 4) };
        var ours = Generator.Generate(model, prompts, new GenerationOptions { MaxNewTokens = 16, Temperature = 0 }).NewTokens;
        var theirs = cpp.Greedy(prompts, 16).Tokens;
        for (int s = 0; s < prompts.Count; s++) Assert.Equal(ours[s], theirs[s]);
    }

    [Fact]
    public void LlamaCppReadsTheRopeFreqsTensor()
    {
        // The same weights exported without the scaling: llama.cpp's logits must move away from ours.
        using var model = Model(Config("llama3.1"), 3);
        using var plain = new LlamaModel(model.Config with { RopeScaling = null }, scalarHead: false);
        model.Parameters.CopyTo(plain.Parameters);
        using var cpp = new LlamaCpp(Export(plain, "plain"), Native.GetNumThreads(), 3, 128, 3 * 128);
        var (rel, _) = Compare(model, cpp, Tokens(60, 9));
        Assert.True(rel > 1e-3, $"without rope_freqs llama.cpp's logits differ by only {rel}: the test would not see a wrong table");
    }

    [Fact]
    public void RopeFreqFactorsAreTheUnscaledOverTheScaledFrequencies()
    {
        var c = Config("llama3.1");
        var f = GgufWriter.RopeFreqFactors(c);
        Assert.Equal(8, f.Length);
        Assert.Equal([1f, 1f], f[..2]);
        Assert.All(f[2..4], x => Assert.InRange(x, 1.0001f, 7.9999f));
        Assert.All(f[4..], x => Assert.Equal(8f, x, 5));
    }
}
