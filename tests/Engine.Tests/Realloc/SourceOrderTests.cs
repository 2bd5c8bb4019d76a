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

/// <summary>A step split among the source shard's replicas on the destination's node
/// (ReallocPlan.Build): equal consecutive parts (IntervalMath.Split), every replica the same range
/// of every destination shard, bit-exact in process and between movers that push.</summary>
public sealed class ReplicaSplitTests
{
    private static readonly ShardLayoutFactory Shape =
        LlamaShardLayouts.Factory(new LlamaShape(Layers: 3, Hidden: 32, Intermediate: 24, Heads: 8, KvHeads: 4, Vocab: 32));

    [Fact]
    public void SplitCutsIntervalsIntoEqualConsecutiveParts()
    {
        var rng = new Random(3);
        for (int trial = 0; trial < 200; trial++)
        {
            var list = new List<Interval>();
            long s = 0, d = 1000;
            for (int i = rng.Next(0, 8); i > 0; i--)
            {
                long n = rng.Next(1, 50);
                s += rng.Next(0, 20);
                list.Add(new Interval(s, d, n));
                s += n; d += n + rng.Next(0, 5);
            }
            int parts = rng.Next(1, 6);
            var split = IntervalMath.Split(list, parts);
            Assert.Equal(parts, split.Length);
            long total = IntervalMath.TotalLength(list);
            for (int i = 0; i < parts; i++)
                Assert.Equal(total * (i + 1) / parts - total * i / parts, IntervalMath.TotalLength(split[i]));
            // In order, element for element the same (source and destination offsets).
            static IEnumerable<(long, long)> Elements(IEnumerable<Interval> ivs) => ivs.SelectMany(iv => Enumerable.Range(0, (int)iv.Length).Select(k => (iv.SrcOffset + k, iv.DstOffset + k)));
            Assert.Equal(Elements(list), Elements(split.SelectMany(p => p)));
        }
        Assert.Throws<ArgumentOutOfRangeException>(() => IntervalMath.Split([], 0));
    }

    [Fact]
    public void ReplicasOnTheNodeEachSendTheSameRangeOfEveryDestinationShard()
    {
        // dp 2 on devices 0, 1 -> tp 2 on devices 2, 3, one node: both replicas send to both
        // destinations, replica 0 the first half of each destination shard's intervals.
        var plan = ReallocPlan.Build(new ParallelLayout([0, 1], 1, 2, 1), new ParallelLayout([2, 3], 1, 1, 2), Shape, 4, _ => 0, splitMinBytes: 64);
        var remote = plan.Steps.Where(s => !s.IsLocal).ToList();
        Assert.Equal(4, remote.Count);
        foreach (var dst in new[] { 2, 3 })
        {
            var steps = remote.Where(s => s.DstDevices.Contains(dst)).OrderBy(s => s.SrcDevice).ToList();
            Assert.Equal([0, 1], steps.Select(s => s.SrcDevice));
            Assert.True(steps[0].Intervals[^1].SrcOffset < steps[1].Intervals[0].SrcOffset, $"device {dst}: replica 0 sends the earlier range");
        }
        var bytes = plan.SenderBytes;
        Assert.InRange(Math.Abs(bytes[0] - bytes[1]), 0, 2 * 4);
        // With the default threshold this tiny model's steps stay whole: one sender each.
        var whole = ReallocPlan.Build(new ParallelLayout([0, 1], 1, 2, 1), new ParallelLayout([2, 3], 1, 1, 2), Shape, 4, _ => 0);
        Assert.Equal(2, whole.Steps.Count(s => !s.IsLocal));
        // Replicas on another node than the destination: one sender per destination shard, as before.
        var far = ReallocPlan.Build(new ParallelLayout([0, 1], 1, 2, 1), new ParallelLayout([4, 5], 1, 1, 2), Shape, 4, d => d / 4, splitMinBytes: 64);
        Assert.Equal(2, far.Steps.Count(s => !s.IsLocal));
    }

    private static ParallelLayout Pick(Random rng, int n)
    {
        while (true)
        {
            int pp = rng.Next(1, 3), dp = rng.Next(1, 4), tp = 1 << rng.Next(0, 2);
            if (pp * dp * tp <= n)
                return new ParallelLayout(Enumerable.Range(0, n).OrderBy(_ => rng.Next()).Take(pp * dp * tp).ToArray(), pp, dp, tp);
        }
    }

    [Fact]
    public async Task SplitPlansAreBitExactInProcessAndBetweenPushingMovers()
    {
        const int n = 4;
        var world = Enumerable.Range(0, n).Select(r => new ReaLNative.Engine.Transport.UcxTransport(r, n, ReaLNative.Engine.Transport.UcxTransportOptions.Default with { ProcessRead = true })).ToArray();
        var addrs = world.Select(t => t.LocalAddress).ToArray();
        foreach (var t in world) t.Connect(addrs);
        var movers = world.Select(t => new TransportRealloc(t)).ToArray();
        var blocks = new List<ReaLNative.Interop.HostBlock>();
        try
        {
            var rng = new Random(41);
            var global = Shape(1, 0, 1, 0).Views.ToDictionary(v => v.Name, v => Enumerable.Range(0, (int)v.LocalElements).Select(_ => BitConverter.Int32BitsToSingle(rng.Next() ^ rng.Next() << 1)).ToArray());
            int split = 0;
            for (int trial = 0; trial < 12; trial++)
            {
                var a = Pick(rng, n);
                var b = Pick(rng, n);
                var plan = ReallocPlan.Build(a, b, Shape, 4, _ => 0, splitMinBytes: 64);
                split += plan.Steps.Where(s => !s.IsLocal).GroupBy(s => (s.SrcShard, s.DstShard, s.DstDevices[0])).Count(g => g.Count() > 1);
                unsafe ReaLNative.Interop.HostBlock Block(float[] values)
                {
                    var blk = new ReaLNative.Interop.HostBlock(Math.Max(4, values.LongLength * 4), ReaLNative.Interop.HostAllocFlags.Prefault | ReaLNative.Interop.HostAllocFlags.Shared);
                    values.AsSpan().CopyTo(new Span<float>(blk.Pointer, values.Length));
                    blocks.Add(blk);
                    return blk;
                }
                var src = a.Devices.ToDictionary(d => d, d => Block(TestLayouts.Shard(plan.SourceLayoutOf(d), global)));
                for (int w = 0; w < 2; w++)
                {
                    var dst = b.Devices.ToDictionary(d => d, d => Block(Enumerable.Repeat(float.NaN, (int)plan.DestinationLayoutOf(d).TotalElements).ToArray()));
                    unsafe
                    {
                        if (w == 0)
                            InProcessRealloc.Execute(plan, src.ToDictionary(kv => kv.Key, kv => new InProcessRealloc.DeviceBuffer((nint)kv.Value.Pointer, kv.Value.Bytes)),
                                                     dst.ToDictionary(kv => kv.Key, kv => new InProcessRealloc.DeviceBuffer((nint)kv.Value.Pointer, kv.Value.Bytes)));
                    }
                    if (w == 1)
                    {
                        nint P(Dictionary<int, ReaLNative.Interop.HostBlock> m, int d) { unsafe { return m.TryGetValue(d, out var x) ? (nint)x.Pointer : 0; } }
                        await Task.WhenAll(Enumerable.Range(0, n).Select(d => Task.Run(() =>
                            movers[d].ExecuteAsync(plan, ReallocSchedule.ForDevice(plan, d), P(src, d), P(dst, d))))).WaitAsync(TimeSpan.FromSeconds(60));
                    }
                    foreach (var d in b.Devices)
                    {
                        var want = System.Runtime.InteropServices.MemoryMarshal.Cast<float, int>(TestLayouts.Shard(plan.DestinationLayoutOf(d), global)).ToArray();
                        int[] got;
                        unsafe { got = new Span<int>(dst[d].Pointer, (int)plan.DestinationLayoutOf(d).TotalElements).ToArray(); }
                        Assert.True(want.AsSpan().SequenceEqual(got), $"{(w == 0 ? "in process" : "movers")}, trial {trial}: {a} -> {b}, device {d}");
                    }
                }
            }
            Assert.True(split > 0, "no trial split a step among replicas");
            Assert.True(movers.Sum(m => m.PushedBytes) > 0, "nothing was pushed");
        }
        finally
        {
            foreach (var m in movers) m.Dispose();
            foreach (var blk in blocks) blk.Dispose();
            foreach (var t in world) t.Dispose();
        }
    }
}
