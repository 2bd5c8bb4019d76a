using System.Runtime.InteropServices;
using ReaLNative.Engine.Layout;
using ReaLNative.Engine.Realloc;
using Xunit;

namespace ReaLNative.Engine.Tests.Realloc;

/// <summary>Reference slicing of global tensors into shards, element by element, independent of
/// the interval machinery under test.</summary>
internal static class TestLayouts
{
    /// <summary>Reference slicing, element by element from the global tensors.</summary>
    public static T[] Shard<T>(ShardLayout layout, IReadOnlyDictionary<string, T[]> global)
    {
        var buf = new T[layout.TotalElements];
        foreach (var v in layout.Views)
        {
            var g = global[v.Name];
            long[] gs = v.GlobalShape, ls = v.LocalShape;
            long n = v.LocalElements;
            var idx = new long[ls.Length];
            for (long i = 0; i < n; i++)
            {
                long rem = i;
                for (int d = ls.Length - 1; d >= 0; d--) { idx[d] = rem % ls[d]; rem /= ls[d]; }
                long gi = 0;
                for (int d = 0; d < gs.Length; d++) gi = gi * gs[d] + idx[d] + (d == v.SplitDim ? v.SliceStart : 0);
                buf[v.Offset + i] = g[gi];
            }
        }
        return buf;
    }
}

public sealed class ReallocTests
{
    private static readonly ShardLayoutFactory Tiny = LlamaShardLayouts.Factory(new LlamaShape(Layers: 3, Hidden: 32, Intermediate: 24, Heads: 8, KvHeads: 4, Vocab: 32));

    private static Dictionary<string, float[]> RandomParams(ShardLayoutFactory f, Random rng)
    {
        var g = new Dictionary<string, float[]>();
        foreach (var v in f(1, 0, 1, 0).Views)
        {
            var a = new float[v.LocalElements];
            for (int i = 0; i < a.Length; i++) a[i] = (float)(rng.NextDouble() * 2 - 1) + i * 1e-3f;
            g[v.Name] = a;
        }
        return g;
    }

    private static ParallelLayout RandomLayout(Random rng, int devices)
    {
        while (true)
        {
            int pp = rng.Next(1, 4), dp = rng.Next(1, 4), tp = 1 << rng.Next(0, 3);
            int n = pp * dp * tp;
            if (n > devices) continue;
            // Any n distinct devices, in a random order (meshes may overlap the other layout or not).
            var ids = Enumerable.Range(0, devices).OrderBy(_ => rng.Next()).Take(n).ToArray();
            return new ParallelLayout(ids, pp, dp, tp);
        }
    }

    private static unsafe Dictionary<int, float[]> Run(ReallocPlan plan, Dictionary<int, float[]> src, long streamMinBytes = InProcessRealloc.StreamMinBytes)
    {
        var dst = plan.To.Devices.ToDictionary(d => d, d => new float[plan.DestinationLayoutOf(d).TotalElements]);
        var handles = new List<GCHandle>();
        try
        {
            InProcessRealloc.DeviceBuffer Pin(float[] a)
            {
                var h = GCHandle.Alloc(a, GCHandleType.Pinned);
                handles.Add(h);
                return new(h.AddrOfPinnedObject(), a.LongLength * 4);
            }
            var s = src.ToDictionary(kv => kv.Key, kv => Pin(kv.Value));
            var t = dst.ToDictionary(kv => kv.Key, kv => Pin(kv.Value));
            InProcessRealloc.Execute(plan, s, t, streamMinBytes);
        }
        finally
        {
            foreach (var h in handles) h.Free();
        }
        return dst;
    }

    [Theory]
    [InlineData(false, false)]
    [InlineData(true, false)]  // Qwen2's q/k/v biases: 1-D column-parallel tensors
    [InlineData(false, true)]  // streaming stores (a reallocation above InProcessRealloc.StreamMinBytes)
    public void RandomLayoutPairsAreBitExactIncludingRoundTrips(bool qkvBias, bool streaming)
    {
        var Tiny = qkvBias ? LlamaShardLayouts.Factory(new LlamaShape(Layers: 3, Hidden: 32, Intermediate: 24, Heads: 8, KvHeads: 4, Vocab: 32, QkvBias: true))
            : ReallocTests.Tiny;
        var rng = new Random(12345);
        for (int trial = 0; trial < (qkvBias ? 30 : 60); trial++)
        {
            var g = RandomParams(Tiny, rng);
            var a = RandomLayout(rng, 12);
            var b = RandomLayout(rng, 12);
            Func<int, int> node = d => d / 4;
            var src = a.Devices.ToDictionary(d => d, d =>
            {
                var (p, _, m) = a.Coords(a.Devices.ToList().IndexOf(d));
                return TestLayouts.Shard(Tiny(a.Pp, p, a.Tp, m), g);
            });
            var forward = ReallocPlan.Build(a, b, Tiny, 4, node);
            var moved = Run(forward, src, streaming ? 0 : long.MaxValue);
            foreach (var d in b.Devices)
            {
                var expect = TestLayouts.Shard(forward.DestinationLayoutOf(d), g);
                Assert.True(expect.AsSpan().SequenceEqual(moved[d]), $"trial {trial}: {a} -> {b}, device {d} differs");
            }
            var back = Run(ReallocPlan.Build(b, a, Tiny, 4, node), moved, streaming ? 0 : long.MaxValue);
            foreach (var d in a.Devices)
                Assert.True(src[d].AsSpan().SequenceEqual(back[d]), $"trial {trial}: round trip {a} -> {b} -> {a}, device {d} differs");
        }
    }

    /// <summary>A model of ~30 MB: above the parallel-copy and streaming thresholds, with per-row
    /// runs of 1000 bytes (intermediate 1000 / tp 4 floats) that start off the streaming stores'
    /// alignment, so the threaded streaming path with its unaligned heads and tails is what runs.</summary>
    [Fact]
    public void LargeReallocationsCopyOnThreadsWithStreamingStoresBitExact()
    {
        var shape = new LlamaShape(Layers: 2, Hidden: 384, Intermediate: 1000, Heads: 8, KvHeads: 4, Vocab: 6000);
        var f = LlamaShardLayouts.Factory(shape);
        Assert.True(shape.Parameters * 4 > InProcessRealloc.StreamMinBytes);
        var rng = new Random(2024);
        var g = RandomParams(f, rng);
        ParallelLayout[] layouts =
        [
            ParallelLayout.Contiguous(0, 1, 1, 1), ParallelLayout.Contiguous(1, 1, 1, 4), ParallelLayout.Contiguous(5, 2, 1, 2),
            new ParallelLayout([7, 2, 4, 0], 1, 2, 2), ParallelLayout.Contiguous(0, 2, 1, 1),
        ];
        for (int i = 0; i < layouts.Length; i++)
        {
            var a = layouts[i];
            var b = layouts[(i + 1) % layouts.Length];
            var src = a.Devices.ToDictionary(d => d, d =>
            {
                var (p, _, m) = a.Coords(a.Devices.ToList().IndexOf(d));
                return TestLayouts.Shard(f(a.Pp, p, a.Tp, m), g);
            });
            var plan = ReallocPlan.Build(a, b, f, 4, _ => 0);
            Assert.True(plan.LocalBytes + plan.RemoteBytes >= InProcessRealloc.StreamMinBytes);
            var moved = Run(plan, src);
            foreach (var d in b.Devices)
                Assert.True(TestLayouts.Shard(plan.DestinationLayoutOf(d), g).AsSpan().SequenceEqual(moved[d]), $"{a} -> {b}, device {d} differs");
        }
    }

    /// <summary>A plan keeps its copy pieces for the buffers it last ran between (InProcessRealloc.Compile): run again
    /// between the same buffers it copies their new contents, and run between other buffers it writes those and
    /// leaves the first ones alone. A model above the threads' and streaming thresholds, tp1 -> tp4 (per-row pieces).</summary>
    [Fact]
    public unsafe void APlanRunAgainCopiesBetweenTheBuffersItIsGiven()
    {
        var shape = new LlamaShape(Layers: 2, Hidden: 384, Intermediate: 1000, Heads: 8, KvHeads: 4, Vocab: 6000);
        var f = LlamaShardLayouts.Factory(shape);
        var rng = new Random(77);
        var (a, b) = (ParallelLayout.Contiguous(0, 1, 1, 1), new ParallelLayout([3, 1, 2, 0], 1, 1, 4));
        var plan = ReallocPlan.Build(a, b, f, 4, _ => 0);
        Assert.True(plan.LocalBytes + plan.RemoteBytes >= InProcessRealloc.StreamMinBytes);
        Dictionary<int, float[]> Source(Dictionary<string, float[]> g) => a.Devices.ToDictionary(d => d, d => TestLayouts.Shard(f(1, 0, 1, 0), g));
        Dictionary<int, float[]> Destination() => b.Devices.ToDictionary(d => d, d => new float[plan.DestinationLayoutOf(d).TotalElements]);
        var handles = new List<GCHandle>();
        Dictionary<int, InProcessRealloc.DeviceBuffer> Pin(Dictionary<int, float[]> arrays) => arrays.ToDictionary(kv => kv.Key, kv =>
        {
            var h = GCHandle.Alloc(kv.Value, GCHandleType.Pinned);
            handles.Add(h);
            return new InProcessRealloc.DeviceBuffer(h.AddrOfPinnedObject(), kv.Value.LongLength * 4);
        });
        void Check(Dictionary<string, float[]> g, Dictionary<int, float[]> moved, string what)
        {
            foreach (var d in b.Devices)
                Assert.True(TestLayouts.Shard(plan.DestinationLayoutOf(d), g).AsSpan().SequenceEqual(moved[d]), $"{what}: device {d} differs");
        }
        try
        {
            var g1 = RandomParams(f, rng);
            var (src1, dst1) = (Source(g1), Destination());
            var (s1, d1) = (Pin(src1), Pin(dst1));
            InProcessRealloc.Execute(plan, s1, d1);
            Check(g1, dst1, "first run");
            // New parameters in the same source buffers: the kept pieces copy them.
            var g2 = RandomParams(f, rng);
            var again = Source(g2);
            foreach (var (d, arr) in again) arr.CopyTo(src1[d], 0);
            InProcessRealloc.Execute(plan, s1, d1);
            Check(g2, dst1, "the same buffers again");
            // Other buffers: written, and the first destination untouched.
            var g3 = RandomParams(f, rng);
            var (src3, dst3) = (Source(g3), Destination());
            InProcessRealloc.Execute(plan, Pin(src3), Pin(dst3));
            Check(g3, dst3, "other buffers");
            Check(g2, dst1, "the first buffers after a run between others");
        }
        finally
        {
            foreach (var h in handles) h.Free();
        }
    }

    /// <summary>Streaming copies equal Buffer.MemoryCopy for every length and source/destination
    /// misalignment, at every store width this CPU has, and write nothing outside the destination
    /// range.</summary>
    [Fact]
    public unsafe void StreamingCopyEqualsMemoryCopyAtEveryAlignment()
    {
        var rng = new Random(99);
        const int Guard = 192;
        const int Max = 100000;
        var src = new byte[Max + 2 * Guard];
        rng.NextBytes(src);
        var lengths = new List<int> { 0, 1, 63, 64, 255, 256, 257, 511, 1000, 4096, 5632, 16384, 16384 + 64, 65536 + 1000, Max - 128 };
        for (int i = 0; i < 40; i++) lengths.Add(rng.Next(0, Max - 128));
        foreach (int n in lengths)
            for (int t = 0; t < 6; t++)
            {
                int so = rng.Next(0, 128), dOff = rng.Next(0, 128);
                var dst = new byte[n + 2 * Guard + 128];
                rng.NextBytes(dst);
                var expect = (byte[])dst.Clone();
                src.AsSpan(Guard + so, n).CopyTo(expect.AsSpan(Guard + dOff, n));
                foreach (var width in StreamingCopy.Supported)
                {
                    var got = (byte[])dst.Clone();
                    fixed (byte* ps = src, pd = got)
                        StreamingCopy.Copy(ps + Guard + so, pd + Guard + dOff, n, width);
                    StreamingCopy.Fence();
                    Assert.True(expect.AsSpan().SequenceEqual(got), $"{width}: length {n}, source offset {so}, destination offset {dOff}");
                }
            }
    }

    [Fact]
    public void SameDeviceReplicasCopyLocallyAndRemoteNodesGetOneSender()
    {
        // Source: dp=4 on devices 0..3 (node 0). Destination: dp=2 x tp=2 on devices 2..5
        // (devices 2,3 on node 0 hold source replicas; 4,5 on node 1 do not).
        var a = new ParallelLayout([0, 1, 2, 3], 1, 4, 1);
        var b = new ParallelLayout([2, 3, 4, 5], 1, 2, 2);
        var plan = ReallocPlan.Build(a, b, Tiny, 4, d => d / 4);
        Assert.Contains(plan.Steps, s => s.IsLocal && s.SrcDevice == 2);
        Assert.Contains(plan.Steps, s => s.IsLocal && s.SrcDevice == 3);
        Assert.All(plan.Steps.Where(s => !s.IsLocal), s => Assert.All(s.DstDevices, d => Assert.Equal(1, d / 4)));
        // Destination tp rank r on node 1 is device 4+r; each gets its shard from exactly one sender.
        Assert.Equal(2, plan.Steps.Count(s => !s.IsLocal));
        // Both remote steps are from different senders (balanced): neither sender carries both.
        var senders = plan.Steps.Where(s => !s.IsLocal).Select(s => s.SrcDevice).ToList();
        Assert.Equal(2, senders.Distinct().Count());
    }

    [Fact]
    public void SeveralDestinationsOnOneNodeAreOneBroadcast()
    {
        var a = new ParallelLayout([0], 1, 1, 1);
        var b = new ParallelLayout([4, 5, 6, 7], 1, 4, 1);
        var plan = ReallocPlan.Build(a, b, Tiny, 4, d => d / 4);
        var step = Assert.Single(plan.Steps);
        Assert.Equal([4, 5, 6, 7], step.DstDevices);
        Assert.Equal(Tiny(1, 0, 1, 0).TotalElements * 4, step.Bytes);
        Assert.Equal(step.Bytes * 4, plan.RemoteBytes);
    }

    [Fact]
    public void TensorSplitIntervalsAreMergedRuns()
    {
        // tp=1 -> tp=2 for one row-parallel matrix [16, 24] split on dim 1: 16 runs of 12.
        var full = new ShardView("w", [16, 24], -1, 0, 0, 0);
        var half = new ShardView("w", [16, 24], 1, 12, 12, 0);
        var list = new List<Interval>();
        IntervalMath.Intersect(full, half, list);
        Assert.Equal(16, list.Count);
        Assert.All(list, iv => Assert.Equal(12, iv.Length));
        Assert.Equal(12, list[0].SrcOffset);
        Assert.Equal(24 + 12, list[1].SrcOffset);
        // Column split (dim 0) of the same shapes is one contiguous run.
        list.Clear();
        IntervalMath.Intersect(new ShardView("w", [16, 24], -1, 0, 0, 0), new ShardView("w", [16, 24], 0, 8, 8, 100), list);
        Assert.Equal(new Interval(8 * 24, 100, 8 * 24), Assert.Single(list));
    }

    [Fact]
    public void BadInputsAreNamed()
    {
        var ex = Assert.Throws<ArgumentException>(() => new ParallelLayout([0, 1, 2], 1, 2, 2));
        Assert.Contains("needs 4 devices", ex.Message);
        ex = Assert.Throws<ArgumentException>(() => new ShardLayout([new ShardView("w", [4, 4], 0, 2, 4, 0)], 100));
        Assert.Contains("'w'", ex.Message);
        ShardLayoutFactory other = (pp, p, tp, m) => new ShardLayout([new ShardView("x", [8], -1, 0, 0, 0)], 8);
        ex = Assert.Throws<ArgumentException>(() => ReallocPlan.Build(new ParallelLayout([0], 1, 1, 1), new ParallelLayout([1, 2], 1, 1, 2),
            (pp, p, tp, m) => pp == 1 && tp == 1 && p == 0 ? Tiny(pp, p, tp, m) : other(pp, p, tp, m), 4, d => 0));
        Assert.Contains("needs parameter 'x' that no source shard holds", ex.Message);
        // Same names, disagreeing shapes.
        ShardLayoutFactory wide = (pp, p, tp, m) => new ShardLayout([new ShardView("model.embed_tokens.weight", [33, 32], -1, 0, 0, 0)], 33 * 32);
        ex = Assert.Throws<ArgumentException>(() => ReallocPlan.Build(new ParallelLayout([0], 1, 1, 1), new ParallelLayout([1, 2], 1, 1, 2),
            (pp, p, tp, m) => tp == 1 ? Tiny(pp, p, tp, m) : wide(pp, p, tp, m), 4, d => 0));
        Assert.Contains("shapes differ", ex.Message);
    }
}

public sealed class ReallocScheduleTests
{
    [Fact]
    public void EveryRemoteStepIsSentAndReceivedExactlyOncePerDestination()
    {
        var f = LlamaShardLayouts.Factory(new LlamaShape(4, 32, 48, 8, 4, 64));
        var rng = new Random(3);
        for (int t = 0; t < 30; t++)
        {
            int pp = rng.Next(1, 3), dp = rng.Next(1, 3), tp = 1 << rng.Next(0, 2);
            var a = new ParallelLayout(Enumerable.Range(0, 8).OrderBy(_ => rng.Next()).Take(pp * dp * tp).ToArray(), pp, dp, tp);
            pp = rng.Next(1, 3); dp = rng.Next(1, 3); tp = 1 << rng.Next(0, 3);
            if (pp * dp * tp > 8) dp = 1;
            var b = new ParallelLayout(Enumerable.Range(0, 8).OrderBy(_ => rng.Next()).Take(pp * dp * tp).ToArray(), pp, dp, tp);
            var plan = ReallocPlan.Build(a, b, f, 4, d => d / 4);
            var schedules = Enumerable.Range(0, 8).Select(d => ReallocSchedule.ForDevice(plan, d)).ToList();
            var sent = schedules.SelectMany(s => s.Sends.Select(x => (x.Tag, From: s.Device, To: x.Peer))).OrderBy(x => x).ToList();
            var recv = schedules.SelectMany(s => s.Receives.Select(x => (x.Tag, From: x.Peer, To: s.Device))).OrderBy(x => x).ToList();
            Assert.Equal(sent, recv);
            Assert.Equal(plan.RemoteBytes, schedules.Sum(s => s.Receives.Sum(r => r.Step.Bytes)));
            Assert.Equal(plan.LocalBytes, schedules.Sum(s => s.LocalCopies.Sum(r => r.Bytes)));
            // Destination byte intervals of a step tile exactly its bytes.
            foreach (var step in plan.Steps)
            {
                var (_, lens) = ReallocSchedule.ByteIntervals(step, 4, source: false);
                Assert.Equal(step.Bytes, lens.Sum());
            }
        }
    }
}

/// <summary>Reallocation over the UCX transport between 4 ranks (UCX workers on threads): staged
/// multi-interval steps, zero-copy single-interval steps, broadcasts and local copies, bit-exact.</summary>
public sealed class TransportReallocTests
{
    [Theory]
    [InlineData(8L << 20, 0L, 0L, 0L)]       // all packed, whole steps in one piece
    [InlineData(100L, 0L, 0L, 0L)]           // packed steps cut into many pieces, intervals split across pieces
    [InlineData(100L, 64L, 0L, 0L)]          // long intervals by RMA get, short ones packed
    [InlineData(8L << 20, 4L, 0L, 0L)]       // every interval of a multi-interval step by RMA get
    [InlineData(8L << 20, 0L, 64L, 1L << 20)] // intervals >= 64 B as direct messages shard to shard, short ones packed
    [InlineData(100L, 0L, 32L, 40L)]         // direct intervals cut into 40-byte pieces, packed pieces of 100 bytes
    [InlineData(8L << 20, 0L, 4L, 16L << 20)] // every interval a direct message
    [InlineData(100L, 256L, 32L, 64L)]       // RMA get >= 256 B, direct messages 32..255 B in 64-byte pieces, shorter packed
    public async Task RandomLayoutPairsOverUcxAreBitExact(long chunkBytes, long rmaMinBytes, long directMinBytes, long directPieceBytes)
    {
        var f = LlamaShardLayouts.Factory(new LlamaShape(Layers: 3, Hidden: 32, Intermediate: 24, Heads: 8, KvHeads: 4, Vocab: 32));
        const int n = 4;
        var world = Enumerable.Range(0, n).Select(r => new ReaLNative.Engine.Transport.UcxTransport(r, n)).ToArray();
        var addrs = world.Select(t => t.LocalAddress).ToArray();
        foreach (var t in world) t.Connect(addrs);
        // The transport's own paths: ranks of one process would otherwise read each other's shards.
        var movers = world.Select(t => new TransportRealloc(t) { ChunkBytes = chunkBytes, RmaMinBytes = rmaMinBytes, DirectMinBytes = directMinBytes, DirectPieceBytes = directPieceBytes, ProcessRead = false }).ToArray();
        try
        {
            var rng = new Random(77);
            var global = new Dictionary<string, float[]>();
            foreach (var v in f(1, 0, 1, 0).Views)
                global[v.Name] = Enumerable.Range(0, (int)v.LocalElements).Select(_ => (float)rng.NextDouble()).ToArray();
            for (int trial = 0; trial < 12; trial++)
            {
                ParallelLayout Pick()
                {
                    while (true)
                    {
                        int pp = rng.Next(1, 3), dp = rng.Next(1, 3), tp = 1 << rng.Next(0, 3);
                        if (pp * dp * tp <= n)
                            return new ParallelLayout(Enumerable.Range(0, n).OrderBy(_ => rng.Next()).Take(pp * dp * tp).ToArray(), pp, dp, tp);
                    }
                }
                var a = Pick();
                var b = Pick();
                var plan = ReallocPlan.Build(a, b, f, 4, d => d / 2);
                var src = a.Devices.ToDictionary(d => d, d => TestLayouts.Shard(plan.SourceLayoutOf(d), global));
                var dst = b.Devices.ToDictionary(d => d, d => new float[plan.DestinationLayoutOf(d).TotalElements]);
                var pins = src.Values.Concat(dst.Values).Select(x => System.Runtime.InteropServices.GCHandle.Alloc(x, System.Runtime.InteropServices.GCHandleType.Pinned)).ToList();
                try
                {
                    nint P(Dictionary<int, float[]> m, int d) => m.TryGetValue(d, out var x) ? System.Runtime.InteropServices.Marshal.UnsafeAddrOfPinnedArrayElement(x, 0) : 0;
                    await Task.WhenAll(Enumerable.Range(0, n).Select(d => Task.Run(() =>
                        movers[d].ExecuteAsync(plan, ReallocSchedule.ForDevice(plan, d), P(src, d), P(dst, d))))).WaitAsync(TimeSpan.FromSeconds(60));
                }
                finally { foreach (var h in pins) h.Free(); }
                foreach (var d in b.Devices)
                    Assert.True(TestLayouts.Shard(plan.DestinationLayoutOf(d), global).AsSpan().SequenceEqual(dst[d]), $"trial {trial}: {a} -> {b}, device {d}");
            }
        }
        finally
        {
            foreach (var m in movers) m.Dispose();
            foreach (var t in world) t.Dispose();
        }
    }
}

/// <summary>Process reads (process_vm_readv from the sender's shard) between UCX ranks that their
/// address headers put on one host: bit-exact against the plain reference and against the
/// transport's own path on the same random parameters; off (one rank or all), or across "hosts",
/// nothing is read that way and the result is the same.</summary>
public sealed class ProcessReadReallocTests
{
    private static readonly ShardLayoutFactory Shape =
        LlamaShardLayouts.Factory(new LlamaShape(Layers: 3, Hidden: 32, Intermediate: 24, Heads: 8, KvHeads: 4, Vocab: 32));

    private static ReaLNative.Engine.Transport.UcxTransport[] World(int n, Func<int, ReaLNative.Engine.Transport.UcxTransportOptions> options)
    {
        var world = Enumerable.Range(0, n).Select(r => new ReaLNative.Engine.Transport.UcxTransport(r, n, options(r))).ToArray();
        var addrs = world.Select(t => t.LocalAddress).ToArray();
        foreach (var t in world) t.Connect(addrs);
        return world;
    }

    /// <summary>Runs <paramref name="trials"/> random layout pairs with movers of each world; returns
    /// every destination shard of every trial per world, checked against the reference.</summary>
    private static async Task<(List<float[]>[] Shards, long[] ReadBytes)> Run(ReaLNative.Engine.Transport.UcxTransport[][] worlds, bool[] processRead, int trials, int seed)
    {
        int n = worlds[0].Length;
        var movers = worlds.Select((w, i) => w.Select(t => new TransportRealloc(t) { ProcessRead = processRead[i], DirectMinBytes = 64, ChunkBytes = 200 }).ToArray()).ToArray();
        var results = worlds.Select(_ => new List<float[]>()).ToArray();
        try
        {
            var rng = new Random(seed);
            var global = new Dictionary<string, float[]>();
            foreach (var v in Shape(1, 0, 1, 0).Views)
                global[v.Name] = Enumerable.Range(0, (int)v.LocalElements).Select(_ => rng.NextSingle() - 0.5f).ToArray();
            for (int trial = 0; trial < trials; trial++)
            {
                ParallelLayout Pick()
                {
                    while (true)
                    {
                        int pp = rng.Next(1, 3), dp = rng.Next(1, 3), tp = 1 << rng.Next(0, 3);
                        if (pp * dp * tp <= n)
                            return new ParallelLayout(Enumerable.Range(0, n).OrderBy(_ => rng.Next()).Take(pp * dp * tp).ToArray(), pp, dp, tp);
                    }
                }
                var a = Pick();
                var b = Pick();
                var plan = ReallocPlan.Build(a, b, Shape, 4, d => d / 2);
                for (int w = 0; w < worlds.Length; w++)
                {
                    var src = a.Devices.ToDictionary(d => d, d => TestLayouts.Shard(plan.SourceLayoutOf(d), global));
                    var dst = b.Devices.ToDictionary(d => d, d => Enumerable.Repeat(float.NaN, (int)plan.DestinationLayoutOf(d).TotalElements).ToArray());
                    var pins = src.Values.Concat(dst.Values).Select(x => System.Runtime.InteropServices.GCHandle.Alloc(x, System.Runtime.InteropServices.GCHandleType.Pinned)).ToList();
                    try
                    {
                        nint P(Dictionary<int, float[]> m, int d) => m.TryGetValue(d, out var x) ? System.Runtime.InteropServices.Marshal.UnsafeAddrOfPinnedArrayElement(x, 0) : 0;
                        var ms = movers[w];
                        await Task.WhenAll(Enumerable.Range(0, n).Select(d => Task.Run(() =>
                            ms[d].ExecuteAsync(plan, ReallocSchedule.ForDevice(plan, d), P(src, d), P(dst, d))))).WaitAsync(TimeSpan.FromSeconds(60));
                    }
                    finally { foreach (var h in pins) h.Free(); }
                    foreach (var d in b.Devices.Order())
                    {
                        Assert.True(TestLayouts.Shard(plan.DestinationLayoutOf(d), global).AsSpan().SequenceEqual(dst[d]), $"world {w}, trial {trial}: {a} -> {b}, device {d}");
                        results[w].Add(dst[d]);
                    }
                }
            }
            return (results, movers.Select(w => w.Sum(m => m.ProcessReadBytes)).ToArray());
        }
        finally { foreach (var m in movers.SelectMany(x => x)) m.Dispose(); }
    }

    [Fact]
    public async Task ProcessReadsAreBitExactAndEqualTheTransportPath()
    {
        const int n = 4;
        var on = World(n, _ => ReaLNative.Engine.Transport.UcxTransportOptions.Default with { ProcessRead = true });
        var off = World(n, _ => ReaLNative.Engine.Transport.UcxTransportOptions.Default with { ProcessRead = true });
        try
        {
            // Ranks of this process: every peer is a process on this host (this one).
            for (int r = 0; r < n; r++)
                for (int q = 0; q < n; q++) Assert.Equal(Environment.ProcessId, on[r].LocalProcessOf(q));
            var (results, read) = await Run([on, off], [true, false], trials: 10, seed: 91);
            Assert.True(read[0] > 0, "no bytes were read from a process");
            Assert.Equal(0, read[1]);
            Assert.Equal(results[0].Count, results[1].Count);
            for (int i = 0; i < results[0].Count; i++) Assert.True(results[0][i].AsSpan().SequenceEqual(results[1][i]), $"shard {i}");
        }
        finally { foreach (var t in on.Concat(off)) t.Dispose(); }
    }

    [Fact]
    public async Task PeersOnAnotherHostOrWithProcessReadsOffAreNeverRead()
    {
        const int n = 4;
        // Ranks 0, 1 on host "a", 2, 3 on host "b"; in the second world rank 3 turned process reads off.
        var hosts = World(n, r => ReaLNative.Engine.Transport.UcxTransportOptions.Default with { HostKey = r < 2 ? "a" : "b" });
        var oneOff = World(n, r => ReaLNative.Engine.Transport.UcxTransportOptions.Default with { ProcessRead = r != 3 });
        try
        {
            for (int r = 0; r < n; r++)
                for (int q = 0; q < n; q++)
                {
                    Assert.Equal(r / 2 == q / 2 ? Environment.ProcessId : null, hosts[r].LocalProcessOf(q));
                    Assert.Equal(r != 3 && q != 3 ? Environment.ProcessId : null, oneOff[r].LocalProcessOf(q));
                }
            // Every rank on a host of its own: no process reads at all, still bit-exact.
            var alone = World(n, r => ReaLNative.Engine.Transport.UcxTransportOptions.Default with { HostKey = $"host-{r}" });
            try
            {
                for (int r = 0; r < n; r++)
                    for (int q = 0; q < n; q++)
                        if (q != r) Assert.Null(alone[r].LocalProcessOf(q));
                var (_, read) = await Run([alone, oneOff], [true, true], trials: 6, seed: 17);
                Assert.Equal(0, read[0]);
                Assert.True(read[1] > 0, "ranks 0-2 read nothing from each other");
            }
            finally { foreach (var t in alone) t.Dispose(); }
            await Run([hosts, hosts], [true, true], trials: 4, seed: 5);
        }
        finally { foreach (var t in hosts.Concat(oneOff)) t.Dispose(); }
    }

    [Fact]
    public void AnAddressWithoutTheProcessHeaderIsRefused()
    {
        using var t = new ReaLNative.Engine.Transport.UcxTransport(0, 2);
        var foreign = t.LocalAddress[12..];   // a bare UCX address
        var e = Assert.Throws<ArgumentException>(() => t.Connect([t.LocalAddress, foreign]));
        Assert.Contains("rank 1", e.Message);
    }
}

/// <summary>bf16 parameters (2 bytes per element) moved between random layouts, in process and over
/// UCX (staged, direct and zero-copy paths): bit-exact against slicing the global tensors. Odd
/// splits (11 columns of down_proj per tensor rank, 17 vocab rows) put intervals at offsets that
/// are only 2-byte aligned.</summary>
public sealed class Bf16ReallocTests
{
    private static readonly ShardLayoutFactory Odd =
        LlamaShardLayouts.Factory(new LlamaShape(Layers: 3, Hidden: 36, Intermediate: 22, Heads: 4, KvHeads: 2, Vocab: 34));

    /// <summary>Random bit patterns (every bf16 value, NaNs included: a copy must keep them all).</summary>
    private static Dictionary<string, ushort[]> RandomBf16(Random rng) =>
        Odd(1, 0, 1, 0).Views.ToDictionary(v => v.Name, v => Enumerable.Range(0, (int)v.LocalElements).Select(_ => (ushort)rng.Next(0x10000)).ToArray());

    private static ParallelLayout Pick(Random rng, int n)
    {
        while (true)
        {
            int pp = rng.Next(1, 4), dp = rng.Next(1, 3), tp = rng.Next(1, 3);
            if (pp * dp * tp <= n)
                return new ParallelLayout(Enumerable.Range(0, n).OrderBy(_ => rng.Next()).Take(pp * dp * tp).ToArray(), pp, dp, tp);
        }
    }

    private static List<System.Runtime.InteropServices.GCHandle> Pin(IEnumerable<ushort[]> arrays) =>
        arrays.Select(x => System.Runtime.InteropServices.GCHandle.Alloc(x, System.Runtime.InteropServices.GCHandleType.Pinned)).ToList();

    [Fact]
    public void InProcessRandomLayoutPairsAreBitExactAndMoveHalfTheFp32Bytes()
    {
        var rng = new Random(4242);
        for (int trial = 0; trial < 40; trial++)
        {
            var g = RandomBf16(rng);
            var (a, b) = (Pick(rng, 8), Pick(rng, 8));
            var plan = ReallocPlan.Build(a, b, Odd, 2, d => d / 4);
            var fp32 = ReallocPlan.Build(a, b, Odd, 4, d => d / 4);
            Assert.Equal(fp32.RemoteBytes, 2 * plan.RemoteBytes);
            Assert.Equal(fp32.LocalBytes, 2 * plan.LocalBytes);
            var src = a.Devices.ToDictionary(d => d, d => TestLayouts.Shard(plan.SourceLayoutOf(d), g));
            var dst = b.Devices.ToDictionary(d => d, d => Enumerable.Repeat((ushort)0x7fc1, (int)plan.DestinationLayoutOf(d).TotalElements).ToArray());
            var pins = Pin(src.Values.Concat(dst.Values));
            try
            {
                InProcessRealloc.DeviceBuffer Buf(ushort[] x) => new(System.Runtime.InteropServices.Marshal.UnsafeAddrOfPinnedArrayElement(x, 0), x.LongLength * 2);
                InProcessRealloc.Execute(plan, src.ToDictionary(kv => kv.Key, kv => Buf(kv.Value)), dst.ToDictionary(kv => kv.Key, kv => Buf(kv.Value)));
            }
            finally { foreach (var h in pins) h.Free(); }
            foreach (var d in b.Devices)
                Assert.True(TestLayouts.Shard(plan.DestinationLayoutOf(d), g).AsSpan().SequenceEqual(dst[d]), $"trial {trial}: {a} -> {b}, device {d}");
        }
    }

    [Theory]
    [InlineData(8L << 20, 0L, 0L)]    // all packed, whole steps in one piece
    [InlineData(102L, 0L, 0L)]        // packed pieces of 51 elements: intervals split across pieces
    [InlineData(8L << 20, 30L, 38L)]  // intervals >= 15 elements as direct messages in 19-element pieces
    public async Task OverUcxRandomLayoutPairsAreBitExact(long chunkBytes, long directMinBytes, long directPieceBytes)
    {
        const int n = 4;
        var world = Enumerable.Range(0, n).Select(r => new ReaLNative.Engine.Transport.UcxTransport(r, n)).ToArray();
        var addrs = world.Select(t => t.LocalAddress).ToArray();
        foreach (var t in world) t.Connect(addrs);
        var movers = world.Select(t => new TransportRealloc(t)
        {
            ChunkBytes = chunkBytes, DirectMinBytes = directMinBytes, DirectPieceBytes = directPieceBytes == 0 ? TransportRealloc.DefaultDirectPieceBytes : directPieceBytes,
            ProcessRead = false,
        }).ToArray();
        try
        {
            var rng = new Random(97);
            var g = RandomBf16(rng);
            for (int trial = 0; trial < 8; trial++)
            {
                var (a, b) = (Pick(rng, n), Pick(rng, n));
                var plan = ReallocPlan.Build(a, b, Odd, 2, d => d / 2);
                var src = a.Devices.ToDictionary(d => d, d => TestLayouts.Shard(plan.SourceLayoutOf(d), g));
                var dst = b.Devices.ToDictionary(d => d, d => new ushort[plan.DestinationLayoutOf(d).TotalElements]);
                var pins = Pin(src.Values.Concat(dst.Values));
                try
                {
                    nint P(Dictionary<int, ushort[]> m, int d) => m.TryGetValue(d, out var x) ? System.Runtime.InteropServices.Marshal.UnsafeAddrOfPinnedArrayElement(x, 0) : 0;
                    await Task.WhenAll(Enumerable.Range(0, n).Select(d => Task.Run(() =>
                        movers[d].ExecuteAsync(plan, ReallocSchedule.ForDevice(plan, d), P(src, d), P(dst, d))))).WaitAsync(TimeSpan.FromSeconds(60));
                }
                finally { foreach (var h in pins) h.Free(); }
                foreach (var d in b.Devices)
                    Assert.True(TestLayouts.Shard(plan.DestinationLayoutOf(d), g).AsSpan().SequenceEqual(dst[d]), $"trial {trial}: {a} -> {b}, device {d}");
            }
        }
        finally
        {
            foreach (var m in movers) m.Dispose();
            foreach (var t in world) t.Dispose();
        }
    }
}
