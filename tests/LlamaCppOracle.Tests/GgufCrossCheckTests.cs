// The GGUF export is right iff llama.cpp computes our logits from it: every position of a GQA model
// (positions > 0 exercise the rotary layout), and the check must catch q/k rows left in HF order.
using ReaLNative.Engine.Checkpoints;
using ReaLNative.Engine.Model;
using ReaLNative.Interop;
using Xunit;

namespace ReaLNative.LlamaCppOracle.Tests;

public class GgufCrossCheckTests
{
    private static (LlamaModel Model, int[] Tokens) Setup()
    {
        var model = new LlamaModel(Program.CheckConfig, scalarHead: false);
        model.InitRandom(3, std: 0.2f);
        var rng = new Random(9);
        return (model, Enumerable.Range(0, 20).Select(_ => rng.Next(model.Config.Vocab)).ToArray());
    }

    [Fact]
    public void LlamaCppLogitsEqualOursOnTheExportedModel()
    {
        var (model, tokens) = Setup();
        using var _ = model;
        var r = Program.CompareLogits(model, tokens, Native.GetNumThreads());
        Assert.True(r.RelL2 < 1e-5, $"relative L2 {r.RelL2}, max |diff| {r.MaxAbsDiff}");
        Assert.Equal(r.Positions, r.ArgmaxAgree);
    }

    [Fact]
    public void QkRowsInHfOrderAreCaught()
    {
        var (model, tokens) = Setup();
        using var _ = model;
        var r = Program.CompareLogits(model, tokens, Native.GetNumThreads(), permuteRope: false);
        Assert.True(r.RelL2 > 1e-2, $"unpermuted q/k rows should change llama.cpp's logits (relative L2 {r.RelL2})");
    }

    [Fact]
    public void RopePermutationIsAPermutationPairingHalves()
    {
        var p = GgufWriter.RopePermutation(2, 8);
        Assert.Equal(Enumerable.Range(0, 16), p.Order());
        // head 1, pair j = 1: new rows 8 + 2, 8 + 3 come from old rows 8 + 1 and 8 + 4 + 1
        Assert.Equal(9, p[10]);
        Assert.Equal(13, p[11]);
    }
}
