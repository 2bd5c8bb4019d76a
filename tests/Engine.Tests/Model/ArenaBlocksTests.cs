using ReaLNative.Engine.Algorithms;
using ReaLNative.Engine.Layout;
using ReaLNative.Engine.Model;
using ReaLNative.Engine.Optim;
using ReaLNative.Engine.Parallelism;
using ReaLNative.Engine.Stages;
using ReaLNative.Interop;
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

    private static ScoredBatch Batch(int seqs, int len, int seed)
    {
        var rng = new Random(seed);
        return new ScoredBatch(Enumerable.Range(0, seqs).Select(_ => Enumerable.Range(0, len).Select(_ => rng.Next(32)).ToArray()).ToArray(),
                               Enumerable.Repeat(len / 2, seqs).ToArray());
    }

    [Fact]
    public void TheSingleDevicesModelsGiveTheirBlocksBackAfterEachOperationWithTheSameBits()
    {
        // The single device's calls (SingleModelCalls) release the model's activations after each operation, as a
        // worker does after each command: a second model's operations then take the first's block instead of
        // faulting in one of their own (a PPO stage's reference and critic did, in the stage's first iteration).
        var cfg = LlamaConfig.Preset("tiny");
        using var actor = new LlamaModel(cfg, false);
        using var critic = new LlamaModel(cfg, true);
        using var refActor = new LlamaModel(cfg, false);
        actor.InitRandom(1); critic.InitRandom(2); refActor.InitRandom(1);
        using var opt = new AdamW(actor, new LrSchedule(1e-3), clipGradNorm: 1f);
        using var refOpt = new AdamW(refActor, new LrSchedule(1e-3), clipGradNorm: 1f);
        var b = Batch(16, 12, 3);
        ArenaBlocks.Trim();
        long before = ArenaBlocks.AllocatedBytes;
        var calls = new SingleModelCalls(actor, () => opt);
        var lp = calls.LogProbs(b, 1f);
        Assert.Equal(0, actor.ActivationBytes);
        long one = ArenaBlocks.AllocatedBytes - before;
        Assert.True(one > 0);
        var (values, _) = new SingleModelCalls(critic, () => null).Values(b);
        Assert.Equal(0, critic.ActivationBytes);
        var d = lp.Select((x, i) => (float)(0.01 * Math.Sin(i + x))).ToArray();
        calls.BackwardLogProbs(b, 1f, d);
        calls.Step();
        Assert.Equal(0, actor.ActivationBytes);
        // one block served the three operations of both models
        Assert.Equal(before + one, ArenaBlocks.AllocatedBytes);
        Assert.Equal(one, ArenaBlocks.FreeBytes);
        // the same bits as the operations on models that keep their arenas
        Assert.Equal(ModelOps.LogProbs(refActor, b, 1f, out var lse), lp);
        refActor.ZeroGrad();
        ModelOps.BackwardLogProbs(refActor, b, 1f, lse, d);
        refOpt.StepOnce();
        Assert.Equal(refActor.Parameters.ToArray(), actor.Parameters.ToArray());
        using var critic2 = new LlamaModel(cfg, true);
        critic2.InitRandom(2);
        Assert.Equal(ModelOps.Values(critic2, b).ActionValues, values);
        refActor.ReleaseActivations(); critic2.ReleaseActivations();
        ArenaBlocks.Trim();
    }

    [Fact]
    public void APlanReplicaInThisProcessGivesItsShardsBlocksBackAfterEachOperation()
    {
        // Devices as threads (DistributedModel): each shard releases its activations after each operation, so the
        // next replica's operation on that device takes its blocks, and the first replica's outputs are the same
        // bits on blocks the other wrote.
        var cfg = LlamaConfig.Preset("tiny");
        using var cluster = new LocalCluster(2);
        using var full = new LlamaModel(cfg, false);
        using var other = new LlamaModel(cfg, false);
        full.InitRandom(5);
        other.InitRandom(6);
        var layout = new ParallelLayout([0, 1], 1, 2, 1);
        using var replica = new DistributedModel(cluster, "ref_inf", cfg, false, layout, 1);
        using var replica2 = new DistributedModel(cluster, "actor_gen", cfg, false, layout, 1);
        replica.CopyFrom(full);
        replica2.CopyFrom(other);
        var b = Batch(8, 10, 4);
        ArenaBlocks.Trim();
        long before = ArenaBlocks.AllocatedBytes;
        var want = replica.LogProbs(b, 1f);
        Assert.Equal(0, replica.Shard(0).ActivationBytes);
        Assert.Equal(0, replica.Shard(1).ActivationBytes);
        long blocks = ArenaBlocks.AllocatedBytes;
        Assert.True(blocks > before);
        Assert.NotEqual(want, replica2.LogProbs(b, 1f));
        Assert.Equal(0, replica2.Shard(0).ActivationBytes);
        Assert.Equal(want, replica.LogProbs(b, 1f));
        // At most one block per device: the first operation allocated one (a shard that finished first gave its
        // block to the other) or two; the next replica's ran on those (and, after one, a second).
        Assert.InRange(ArenaBlocks.AllocatedBytes - before, blocks - before, 2 * (blocks - before));
        Assert.Equal(ArenaBlocks.AllocatedBytes - before, ArenaBlocks.FreeBytes);
        ArenaBlocks.Trim();
    }

    [Fact]
    public void AnArenaThatOutgrowsTheBlockItLastHeldAllocatesHalfAsMuchAgainAfterARelease()
    {
        // As an arena that had kept its block: a need that creeps up from one call to the next (a rollout's tokens
        // vary) allocates a few times, not at every new maximum.
        ArenaBlocks.Trim();
        using var a = new Arena();
        a.Reset(100_000);
        long first = a.CapacityFloats;
        Assert.InRange(first, 100_000, 100_016);
        a.Release();
        ArenaBlocks.Trim();
        a.Reset(120_000);
        Assert.Equal(first * 3 / 2, a.CapacityFloats - 16);
        a.Release();
        // A need within the last block's capacity, with no free block: exactly that need.
        ArenaBlocks.Trim();
        a.Reset(50_000);
        Assert.InRange(a.CapacityFloats, 50_000, 50_016);
        a.Release();
        ArenaBlocks.Trim();
    }

    [Fact]
    public void AnActivationBlockAllocatedInAUnitOfModelWorkIsNotTimedAndFaultsOnEveryThread()
    {
        if (!ThreadChoice.Enabled) return;   // REALN_THREAD_CHOICE=off: no unit is timed
        int saved = Native.GetNumThreads();
        Native.SetNumThreads(2);
        try
        {
            var c = new ThreadChoice();   // its first burst runs on one thread; the burst's first unit is not timed
            using (c.Begin("forward", 100)) { }
            ArenaBlocks.Trim();
            using (c.Begin("forward", 100))
            {
                Assert.Equal(1, Native.GetNumThreads());
                ArenaBlocks.Return(ArenaBlocks.Take(1 << 20, 1 << 20));   // no free block: allocated and faulted in
            }
            Assert.True(double.IsPositiveInfinity(c.Summary().Single().One), "the unit that allocated was timed");
            using (c.Begin("forward", 100)) { }
            Assert.True(double.IsFinite(c.Summary().Single().One), "a plain unit after it was not timed");
            // the allocation's pages are faulted in on the calling thread's threads, though the unit runs on one
            int threadsInside = 0;
            using (c.Begin("forward", 100)) threadsInside = ThreadChoice.OffTheClock(Native.GetNumThreads);
            Assert.Equal(2, threadsInside);
            ArenaBlocks.Trim();
        }
        finally { Native.SetNumThreads(saved); }
    }

    /// <summary>`activation_cache_clear_every` (Runs/Pipeline.ClearActivationCaches, a worker's
    /// clear_activation_cache): the free blocks go, a block a model holds stays, and what the models
    /// compute afterwards is the same bits.</summary>
    [Fact]
    public void ClearingTheCacheFreesTheFreeBlocksAndKeepsHeldOnes()
    {
        var cfg = LlamaConfig.Preset("tiny");
        using var a = new LlamaModel(cfg, false);
        using var b = new LlamaModel(cfg, false);
        a.InitRandom(3);
        b.InitRandom(4);
        ArenaBlocks.Trim();
        long before = ArenaBlocks.AllocatedBytes;
        var wantA = Forward(a, Tokens, Lens);
        a.ReleaseActivations();
        long one = ArenaBlocks.FreeBytes;
        Assert.True(one > 0);
        // B holds a block of its own (A's free one is taken by B's forward: a second batch, longer, needs a larger one).
        int[] longer = [.. Tokens, .. Tokens, .. Tokens], longerLens = [13, 10, 7];
        var wantB = Forward(b, longer, longerLens);
        long held = b.ActivationBytes;
        Assert.True(held > one, $"B holds {held} bytes, A's free block is {one}");
        a.Forward(new PackedBatch(Tokens, Lens));
        a.ReleaseActivations();
        Assert.Equal(one, ArenaBlocks.FreeBytes);
        Assert.Equal(one, ArenaBlocks.Trim());
        Assert.Equal(0, ArenaBlocks.FreeBytes);
        Assert.Equal(before + held, ArenaBlocks.AllocatedBytes);
        Assert.Equal(held, b.ActivationBytes);
        // A allocates afresh, B computes on the block it kept: the same bits as before the clear.
        Assert.Equal(wantA, Forward(a, Tokens, Lens));
        Assert.Equal(wantB, Forward(b, longer, longerLens));
        a.ReleaseActivations();
        b.ReleaseActivations();
        ArenaBlocks.Trim();
    }
}
