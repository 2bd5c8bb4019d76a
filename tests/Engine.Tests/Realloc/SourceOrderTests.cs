using ReaLNative.Engine.Layout;
using ReaLNative.Engine.Realloc;
using Xunit;

namespace ReaLNative.Engine.Tests.Realloc;

/// <summary>The copy order of a reallocation's pieces (InProcessRealloc.SourceOrder): the pieces
/// of every destination that reads one source come merged by source address, so a tensor split
/// along its rows is read row after row once, not once per destination; no piece lost or doubled.</summary>
public sealed class SourceOrderTests
{
    [Fact]
    public void RunsAreMergedBySourceAddressKeepingEveryPiece()
    {
        var rng = new Random(7);
        for (int trial = 0; trial < 50; trial++)
        {
            int k = rng.Next(1, 5);
            // k destinations, each taking one part of every row of a 64-row tensor (row r at r * 1000,
            // part j at r * 1000 + j * 250), as a row-parallel split does; run j in ascending order.
            var runs = Enumerable.Range(0, k).Select(j => Enumerable.Range(0, 64)
                .Select(r => ((nint)(r * 1000 + j * 250), (nint)(1_000_000 * (j + 1) + r * 250), 250L)).ToList()).ToList();
            var merged = new List<(nint Src, nint Dst, long Bytes)>();
            InProcessRealloc.SourceOrder(runs, merged);
            Assert.Equal(runs.SelectMany(r => r).Order(), merged.Order());
            for (int i = 1; i < merged.Count; i++) Assert.True(merged[i - 1].Src < merged[i].Src, $"trial {trial}: piece {i} out of source order");
        }
        // Runs out of order are still copied whole (the order is an optimisation, never a condition).
        var shuffled = new List<List<(nint, nint, long)>> { new() { (50, 1, 1), (10, 2, 1), (30, 3, 1) }, new() { (20, 4, 1), (5, 5, 1) } };
        var all = new List<(nint Src, nint Dst, long Bytes)>();
        InProcessRealloc.SourceOrder(shuffled, all);
        Assert.Equal(shuffled.SelectMany(r => r).Order(), all.Order());
    }

    [Fact]
    public unsafe void ASplitPlanIsBitExactWithItsPiecesMerged()
    {
        // tp1 -> tp2 on the same two devices: every row-parallel row goes half to each destination.
        var shape = new LlamaShape(Layers: 2, Hidden: 64, Intermediate: 96, Heads: 4, KvHeads: 2, Vocab: 40);
        var factory = LlamaShardLayouts.Factory(shape);
        var plan = ReallocPlan.Build(ParallelLayout.Contiguous(0, 1, 1, 1), ParallelLayout.Contiguous(0, 1, 1, 2), factory, 4, _ => 0);
        var rng = new Random(11);
        var global = factory(1, 0, 1, 0).Views.ToDictionary(v => v.Name, v => Enumerable.Range(0, (int)v.LocalElements).Select(_ => rng.NextSingle() - 0.5f).ToArray());
        var src = TestLayouts.Shard(plan.SourceLayoutOf(0), global);
        var dst = plan.To.Devices.ToDictionary(d => d, d => new float[plan.DestinationLayoutOf(d).TotalElements]);
        fixed (float* s = src, d0 = dst[0], d1 = dst[1])
        {
            InProcessRealloc.Execute(plan,
                new Dictionary<int, InProcessRealloc.DeviceBuffer> { [0] = new((nint)s, src.Length * 4L) },
                new Dictionary<int, InProcessRealloc.DeviceBuffer> { [0] = new((nint)d0, dst[0].Length * 4L), [1] = new((nint)d1, dst[1].Length * 4L) },
                streamMinBytes: 0);
        }
        foreach (var d in plan.To.Devices)
            Assert.Equal(TestLayouts.Shard(plan.DestinationLayoutOf(d), global), dst[d]);
    }
}
