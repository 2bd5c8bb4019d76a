using ReaLNative.Engine.Model;
using Xunit;

namespace ReaLNative.Engine.Tests.Model;

[CollectionDefinition("arena blocks alone", DisableParallelization = true)]
public sealed class ArenaBlocksAlone;

/// <summary>
/// Models whose calls run one after another (a worker process's replicas) share one set of
/// activation blocks (ArenaBlocks): a model that released its activations holds none, the next
/// model's forward takes the released block instead of allocating its own, and its outputs are the
/// same bits as on a fresh block (and a training step's gradients too: nothing reads what an
/// earlier model left in the block). Alone: the pool is the process's.
/// </summary>
[Collection("arena blocks alone")]
public sealed unsafe class ArenaBlocksTests
{
    private static readonly int[] Tokens = [1, 5, 2, 9, 0, 3, 3, 7, 10, 4], Lens = [3, 1, 6];

    private static float[] Forward(LlamaModel m, int[] tokens, int[] lens) =>
        new ReadOnlySpan<float>(m.Forward(new PackedBatch(tokens, lens)), tokens.Length * m.OutputWidth).ToArray();

    private static float[] Gradients(LlamaModel m)
    {
        m.ZeroGrad();
        m.Forward(new PackedBatch(Tokens, Lens));
        float* d = m.OutputGradientBuffer();
        for (int i = 0; i < Tokens.Length * m.OutputWidth; i++) d[i] = (i % 7 - 3) * 0.01f;
        m.Backward(d);
        return m.Gradients.ToArray();
    }

    [Fact]
    public void ModelsThatReleaseTheirActivationsShareOneBlockWithTheSameBits()
    {
        var cfg = LlamaConfig.Preset("tiny");
        using var a = new LlamaModel(cfg, false);
        using var b = new LlamaModel(cfg, false);
        a.InitRandom(1);
        b.InitRandom(2);
        ArenaBlocks.Trim();
        long before = ArenaBlocks.AllocatedBytes;
        // B on a fresh block: the reference bits.
        var want = Forward(b, Tokens, Lens);
        var wantGrads = Gradients(b);
        long one = ArenaBlocks.AllocatedBytes - before;
        Assert.True(one > 0);
        Assert.Equal(one, b.ActivationBytes);
        b.ReleaseActivations();
        Assert.Equal(0, b.ActivationBytes);
        Assert.Equal(one, ArenaBlocks.FreeBytes);
        // A takes B's block (the same batch on other weights writes other values everywhere B will), then gives it back.
        Assert.NotEqual(want, Forward(a, Tokens, Lens));
        Assert.Equal(before + one, ArenaBlocks.AllocatedBytes);
        Assert.Equal(0, ArenaBlocks.FreeBytes);
        a.ReleaseActivations();
        Assert.Equal(0, a.ActivationBytes);
        // B again, on the block A wrote: the same bits, and still one block in the process.
        Assert.Equal(want, Forward(b, Tokens, Lens));
        Assert.Equal(wantGrads, Gradients(b));
        Assert.Equal(before + one, ArenaBlocks.AllocatedBytes);
        // A backward after a release needs a new forward.
        b.ReleaseActivations();
        Assert.Throws<InvalidOperationException>(() => b.OutputGradientBuffer());
        Assert.Equal(one, ArenaBlocks.Trim());
        Assert.Equal(before, ArenaBlocks.AllocatedBytes);
    }

    [Fact]
    public void ABlockTooSmallForEveryFreeOneReplacesTheLargestFreeOne()
    {
        ArenaBlocks.Trim();
        long before = ArenaBlocks.AllocatedBytes;
        var small = ArenaBlocks.Take(1 << 20, 1 << 20);
        var smaller = ArenaBlocks.Take(1 << 19, 1 << 19);
        ArenaBlocks.Return(small);
        ArenaBlocks.Return(smaller);
        // Fits the 1 MiB block: the smallest that fits is taken, nothing allocated.
        var fit = ArenaBlocks.Take(600_000, 600_000);
        Assert.Same(small, fit);
        Assert.Equal(before + (1 << 20) + (1 << 19), ArenaBlocks.AllocatedBytes);
        ArenaBlocks.Return(fit);
        // Fits none: the largest free block (1 MiB) is freed and a new one allocated.
        var big = ArenaBlocks.Take(4 << 20, 4 << 20);
        Assert.True(small.IsDisposed);
        Assert.False(smaller.IsDisposed);
        Assert.Equal(before + (4 << 20) + (1 << 19), ArenaBlocks.AllocatedBytes);
        ArenaBlocks.Return(big);
        Assert.Equal((4 << 20) + (1 << 19), ArenaBlocks.Trim());
        Assert.Equal(before, ArenaBlocks.AllocatedBytes);
        Assert.True(big.IsDisposed && smaller.IsDisposed);
    }
}
