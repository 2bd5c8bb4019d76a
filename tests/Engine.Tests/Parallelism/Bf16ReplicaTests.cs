// Replicas of a bf16 model under execution-plan layouts (devices as threads of this process): the
// train replica keeps the fp32 master and AdamW moments, every other replica holds bf16 weights
// only and receives bf16 (half the bytes of fp32) when reallocated, bit for bit the bf16 rounding
// of the master sliced to its layout; a frozen full model (ref, reward) loads into and gathers
// from bf16 replicas bit for bit; a pair that cannot be served is refused naming the replica.
using ReaLNative.Engine.Algorithms;
using ReaLNative.Engine.Layout;
using ReaLNative.Engine.Model;
using ReaLNative.Engine.Optim;
using ReaLNative.Engine.Parallelism;
using ReaLNative.Engine.Tests.Model;
using ReaLNative.Engine.Tests.Realloc;
using Xunit;

namespace ReaLNative.Engine.Tests.Parallelism;

public sealed class Bf16ReplicaTests
{
    private static readonly LlamaConfig Cfg = LlamaConfig.Preset("tiny");
    private static readonly OptimizerSpec Spec = new(new LrSchedule(1e-3), 0.9f, 0.95f, 1e-8f, 0f, 1f);
    private static readonly ParallelLayout TrainLayout = new([1, 0], 1, 1, 2);
    private static readonly ParallelLayout InferLayout = new([3, 2, 1, 0], 2, 1, 2);

    private static LlamaModel Full(int seed, ModelPrecision precision)
    {
        var m = new LlamaModel(Cfg, false);
        m.InitRandom(seed, std: 0.5f);
        m.SetPrecision(precision);
        return m;
    }

    /// <summary>The global tensors of a full model rounded to bf16 (an independent rounding).</summary>
    private static Dictionary<string, ushort[]> RoundedTensors(LlamaModel full) =>
        full.Layout.Views.ToDictionary(v => v.Name, v => full.View(v.Name).ToArray().Select(Bf16Tests.Rne).ToArray());

    private static void AssertShardsHold(DistributedModel replica, Dictionary<string, ushort[]> global, string what)
    {
        for (int r = 0; r < replica.Layout.Devices.Count; r++)
        {
            var shard = replica.Shard(r);
            Assert.True(shard.HoldsBf16Only, $"{what}: rank {r} holds an fp32 master");
            Assert.True(TestLayouts.Shard(shard.Layout, global).AsSpan().SequenceEqual(shard.Bf16Parameters), $"{what}: rank {r} differs from the sliced bf16 rounding");
        }
    }

    [Fact]
    public void TrainReplicaKeepsTheMasterAndInferenceReplicasReceiveBf16BitExactAtHalfTheBytes()
    {
        using var cluster = new LocalCluster(4);
        using var full = Full(11, ModelPrecision.Bf16);
        using var train = new DistributedModel(cluster, "train", Cfg, false, TrainLayout, 1, Spec.Create, ModelPrecision.Bf16);
        using var infer = new DistributedModel(cluster, "infer", Cfg, false, InferLayout, 2, null, ModelPrecision.Bf16);
        Assert.False(((IReplica)train).HoldsBf16Only);
        Assert.True(((IReplica)infer).HoldsBf16Only);
        train.CopyFrom(full);                      // the fp32 master
        long bytes = infer.CopyFrom(train);        // the train shards' bf16 copies
        AssertShardsHold(infer, RoundedTensors(full), "after the first reallocation");
        long elements = Enumerable.Range(0, InferLayout.Devices.Count).Sum(r => infer.Shard(r).ParameterCount);
        Assert.Equal(elements * 2, bytes);

        // The same pair in fp32 moves twice the bytes.
        using var full32 = Full(11, ModelPrecision.Fp32);
        using var train32 = new DistributedModel(cluster, "train32", Cfg, false, TrainLayout, 1, Spec.Create);
        using var infer32 = new DistributedModel(cluster, "infer32", Cfg, false, InferLayout, 2);
        train32.CopyFrom(full32);
        Assert.Equal(2 * bytes, infer32.CopyFrom(train32));

        // The master moves on (a new load): the train shards' bf16 copies follow, not a stale one.
        using var next = Full(12, ModelPrecision.Bf16);
        train.CopyFrom(next);
        infer.CopyFrom(train);
        AssertShardsHold(infer, RoundedTensors(next), "after the master changed");
        // The master itself went over unrounded, and comes back bit for bit.
        using var back = Full(1, ModelPrecision.Bf16);
        train.CopyTo(back);
        Assert.Equal(next.Parameters.ToArray(), back.Parameters.ToArray());

        // The bf16 replica computes what the full model's bf16 copy computes (tp and pp change the
        // summation order of its all-reduces only).
        var seqs = new[] { new[] { 1, 5, 9, 2, 7 }, new[] { 3, 3, 8, 1 }, new[] { 6, 2, 4, 4, 9, 1 } };
        var batch = new ScoredBatch(seqs, [2, 1, 3]);
        var want = ModelOps.LogProbs(next, batch, 1f, out _);
        var got = infer.LogProbs(batch, 1f);
        for (int k = 0; k < want.Length; k++) Assert.True(Math.Abs(want[k] - got[k]) < 1e-4, $"log-prob {k}: {got[k]} vs {want[k]}");
    }

    [Fact]
    public void FrozenFullModelLoadsIntoAndGathersFromBf16ReplicasBitExact()
    {
        using var cluster = new LocalCluster(4);
        using var reference = Full(21, ModelPrecision.Fp32);
        var global = RoundedTensors(reference);
        reference.FreezeToBf16();
        using var infer = new DistributedModel(cluster, "ref_inf", Cfg, false, InferLayout, 1, null, ModelPrecision.Bf16);
        infer.CopyFrom(reference);
        AssertShardsHold(infer, global, "loaded from a frozen model");
        using var back = new LlamaModel(Cfg, false);
        back.FreezeToBf16();
        infer.CopyTo(back);
        Assert.Equal(reference.Bf16Parameters.ToArray(), back.Bf16Parameters.ToArray());
    }

    [Fact]
    public void PairsThatCannotBeServedAreRefusedNamingTheReplica()
    {
        using var cluster = new LocalCluster(4);
        using var frozen = Full(31, ModelPrecision.Fp32);
        frozen.FreezeToBf16();
        using var train = new DistributedModel(cluster, "actor_train", Cfg, false, TrainLayout, 1, Spec.Create, ModelPrecision.Bf16);
        var e = Assert.Throws<ArgumentException>(() => train.CopyFrom(frozen));
        Assert.Contains("actor_train", e.Message);
        Assert.Contains("holds bf16 weights only", e.Message);
        using var fp32 = new DistributedModel(cluster, "critic_train", Cfg, false, TrainLayout, 1, Spec.Create);
        using var infer = new DistributedModel(cluster, "critic_inf", Cfg, false, InferLayout, 1, null, ModelPrecision.Bf16);
        e = Assert.Throws<ArgumentException>(() => infer.CopyFrom(fp32));
        Assert.Contains("critic_inf", e.Message);
        Assert.Contains("precision is fp32", e.Message);
    }
}
