using System.Runtime.InteropServices;
using ReaLNative.Engine.Layout;
using ReaLNative.Engine.Realloc;
using ReaLNative.Engine.Transport;
using ReaLNative.Interop;
using Xunit;

namespace ReaLNative.Engine.Tests.Realloc;

/// <summary>
/// Reallocation out of senders' shards mapped from shared host memory (HostAllocFlags.Shared,
/// TransportRealloc.SharedMemory) between UCX ranks that their address headers put on one host
/// (ranks of this process: mapping goes through /proc/self/fd, the same calls as between
/// processes): bit-exact on random bit patterns against slicing the global tensors and against
/// the transport's own path, exactly the bytes of shared senders copied from mappings (the others
/// read with process_vm_readv), one mapping per block kept across reallocations, and a receiver
/// that cannot map what was announced fails both sides at once instead of hanging. With
/// TransportRealloc.Push (the default) the senders write the receivers' shared destination shards
/// themselves: bit-exact, exactly those bytes pushed (the rest pulled), and a sender that cannot
/// map an announced destination fails both sides at once too.
/// </summary>
public sealed class SharedMemoryReallocTests
{
    private static readonly ShardLayoutFactory Shape =
        LlamaShardLayouts.Factory(new LlamaShape(Layers: 3, Hidden: 32, Intermediate: 24, Heads: 8, KvHeads: 4, Vocab: 32));

    private static UcxTransport[] World(int n)
    {
        var world = Enumerable.Range(0, n).Select(r => new UcxTransport(r, n, UcxTransportOptions.Default with { ProcessRead = true })).ToArray();
        var addrs = world.Select(t => t.LocalAddress).ToArray();
        foreach (var t in world) t.Connect(addrs);
        return world;
    }

    private static ParallelLayout Pick(Random rng, int n)
    {
        while (true)
        {
            int pp = rng.Next(1, 3), dp = rng.Next(1, 3), tp = 1 << rng.Next(0, 3);
            if (pp * dp * tp <= n)
                return new ParallelLayout(Enumerable.Range(0, n).OrderBy(_ => rng.Next()).Take(pp * dp * tp).ToArray(), pp, dp, tp);
        }
    }

    /// <summary>Shards in HostBlocks (shared or not), filled from / compared with the reference.</summary>
    private static unsafe HostBlock Block(float[] values, bool shared)
    {
        var b = new HostBlock(Math.Max(4, values.LongLength * 4), shared ? HostAllocFlags.Prefault | HostAllocFlags.Shared : HostAllocFlags.Default);
        values.AsSpan().CopyTo(new Span<float>(b.Pointer, values.Length));
        return b;
    }

    private static unsafe int[] Bits(HostBlock b, long elements) => new Span<int>(b.Pointer, (int)elements).ToArray();

    private static unsafe nint Ptr(Dictionary<int, HostBlock> m, int d) => m.TryGetValue(d, out var x) ? (nint)x.Pointer : 0;

    private static Task Execute(TransportRealloc[] movers, ReallocPlan plan, Dictionary<int, HostBlock> src, Dictionary<int, HostBlock> dst) =>
        Execute(movers, plan, src.ToDictionary(kv => kv.Key, kv => Ptr(src, kv.Key)), dst);

    private static async Task Execute(TransportRealloc[] movers, ReallocPlan plan, Dictionary<int, nint> src, Dictionary<int, HostBlock> dst)
    {
        var tasks = Enumerable.Range(0, movers.Length).Select(d => Task.Run(() =>
            movers[d].ExecuteAsync(plan, ReallocSchedule.ForDevice(plan, d), src.GetValueOrDefault(d), Ptr(dst, d)))).ToArray();
        await Task.WhenAll(tasks).WaitAsync(TimeSpan.FromSeconds(60));
    }

    /// <summary>Bytes the plan moves from <paramref name="from"/>'s shard to other devices.</summary>
    private static long RemoteBytesFrom(ReallocPlan plan, int from) =>
        plan.Steps.Where(s => s.SrcDevice == from && !s.IsLocal).Sum(s => s.Bytes * s.DstDevices.Count(d => d != from));

    [Fact]
    public async Task MappedShardsAreCopiedBitExactAndOnlyFromSharedSenders()
    {
        const int n = 4;
        var shared = World(n);
        var plain = World(n);
        var movers = shared.Select(t => new TransportRealloc(t) { SharedMemory = true, Push = false, DirectMinBytes = 64, ChunkBytes = 200 }).ToArray();
        var transportPath = plain.Select(t => new TransportRealloc(t) { ProcessRead = false, DirectMinBytes = 64, ChunkBytes = 200 }).ToArray();
        var blocks = new List<HostBlock>();
        try
        {
            var rng = new Random(2027);
            // Random bit patterns (NaNs with payloads included): a copy must keep every bit.
            var global = Shape(1, 0, 1, 0).Views.ToDictionary(v => v.Name, v => Enumerable.Range(0, (int)v.LocalElements).Select(_ => BitConverter.Int32BitsToSingle(rng.Next() ^ rng.Next() << 1)).ToArray());
            long expectShared = 0, expectRemote = 0;
            for (int trial = 0; trial < 12; trial++)
            {
                var a = Pick(rng, n);
                var b = Pick(rng, n);
                var plan = ReallocPlan.Build(a, b, Shape, 4, d => d / 2);
                // Some senders' shards in shared memory, some not (the master's full copy is not).
                var sharedSender = a.Devices.ToDictionary(d => d, _ => rng.Next(3) > 0);
                foreach (var d in a.Devices)
                {
                    expectRemote += RemoteBytesFrom(plan, d);
                    if (sharedSender[d]) expectShared += RemoteBytesFrom(plan, d);
                }
                var results = new List<int[]>[2];
                for (int w = 0; w < 2; w++)
                {
                    var src = a.Devices.ToDictionary(d => d, d => Block(TestLayouts.Shard(plan.SourceLayoutOf(d), global), w == 0 && sharedSender[d]));
                    var srcAt = src.ToDictionary(kv => kv.Key, kv => Ptr(src, kv.Key));
                    if (w == 0 && trial % 2 == 1)
                    {
                        // Shared senders' shards inside one shared block, at offsets (the announced
                        // offset must be honoured), the senders' own blocks unused.
                        var shards = a.Devices.Where(d => sharedSender[d]).ToList();
                        long at = 0;
                        var offsets = new Dictionary<int, long>();
                        foreach (var d in shards) { at += 4096 + 64 * (d + 1); offsets[d] = at; at += plan.SourceLayoutOf(d).TotalElements * 4; }
                        var arena = new HostBlock(Math.Max(at, 4), HostAllocFlags.Prefault | HostAllocFlags.Shared);
                        blocks.Add(arena);
                        foreach (var d in shards)
                        {
                            srcAt[d] = Ptr(new Dictionary<int, HostBlock> { [0] = arena }, 0) + (nint)offsets[d];
                            unsafe { Buffer.MemoryCopy((void*)Ptr(src, d), (void*)srcAt[d], src[d].Bytes, plan.SourceLayoutOf(d).TotalElements * 4); }
                            Assert.Equal(offsets[d], SharedHostMemory.Describe(srcAt[d])!.Value.Offset);
                        }
                    }
                    var dst = b.Devices.ToDictionary(d => d, d => Block(Enumerable.Repeat(float.NaN, (int)plan.DestinationLayoutOf(d).TotalElements).ToArray(), w == 0 && rng.Next(2) == 0));
                    blocks.AddRange(src.Values.Concat(dst.Values));
                    await Execute(w == 0 ? movers : transportPath, plan, srcAt, dst);
                    results[w] = [];
                    foreach (var d in b.Devices.Order())
                    {
                        var want = MemoryMarshal.Cast<float, int>(TestLayouts.Shard(plan.DestinationLayoutOf(d), global)).ToArray();
                        var got = Bits(dst[d], plan.DestinationLayoutOf(d).TotalElements);
                        Assert.True(want.AsSpan().SequenceEqual(got), $"world {w}, trial {trial}: {a} -> {b}, device {d}");
                        results[w].Add(got);
                    }
                }
                for (int i = 0; i < results[0].Count; i++) Assert.True(results[0][i].AsSpan().SequenceEqual(results[1][i]), $"trial {trial}, shard {i}");
            }
            Assert.True(expectShared > 0, "no trial had a shared sender");
            Assert.Equal(expectShared, movers.Sum(m => m.SharedMemoryReadBytes));
            Assert.Equal(expectRemote, movers.Sum(m => m.ProcessReadBytes));   // the rest with process_vm_readv
            Assert.Equal(0, transportPath.Sum(m => m.ProcessReadBytes));
        }
        finally
        {
            foreach (var m in movers.Concat(transportPath)) m.Dispose();
            foreach (var b in blocks) b.Dispose();
            foreach (var t in shared.Concat(plain)) t.Dispose();
        }
    }

    [Fact]
    public async Task ABlockIsMappedOnceAcrossReallocationsAndNotAtAllWhenSharedMemoryIsOff()
    {
        const int n = 4;
        var world = World(n);
        var movers = world.Select(t => new TransportRealloc(t) { Push = false }).ToArray();
        var off = World(n);
        var offMovers = off.Select(t => new TransportRealloc(t) { SharedMemory = false, Push = false }).ToArray();
        var blocks = new List<HostBlock>();
        try
        {
            var rng = new Random(3);
            var global = Shape(1, 0, 1, 0).Views.ToDictionary(v => v.Name, v => Enumerable.Range(0, (int)v.LocalElements).Select(_ => rng.NextSingle() - 0.5f).ToArray());
            var a = new ParallelLayout([0, 1], 1, 1, 2);
            var b = new ParallelLayout([2, 3], 2, 1, 1);
            var plan = ReallocPlan.Build(a, b, Shape, 4, _ => 0);
            foreach (var (ms, label) in new[] { (movers, "on"), (offMovers, "off") })
            {
                var src = a.Devices.ToDictionary(d => d, d => Block(TestLayouts.Shard(plan.SourceLayoutOf(d), global), true));
                var dst = b.Devices.ToDictionary(d => d, d => Block(new float[plan.DestinationLayoutOf(d).TotalElements], true));
                blocks.AddRange(src.Values.Concat(dst.Values));
                for (int rep = 0; rep < 3; rep++)
                {
                    foreach (var x in dst.Values) x.AsSpan<byte>().Fill(0xff);
                    await Execute(ms, plan, src, dst);
                    foreach (var d in b.Devices)
                        Assert.True(MemoryMarshal.Cast<float, int>(TestLayouts.Shard(plan.DestinationLayoutOf(d), global)).SequenceEqual(Bits(dst[d], plan.DestinationLayoutOf(d).TotalElements)), $"{label}, rep {rep}, device {d}");
                }
            }
            // Devices 2 and 3 read both senders' blocks, each mapped once for the three reallocations.
            Assert.Equal(2, movers[2].PeerMappingCount);
            Assert.Equal(2, movers[3].PeerMappingCount);
            Assert.Equal(3 * (RemoteBytesFrom(plan, 0) + RemoteBytesFrom(plan, 1)), movers.Sum(m => m.SharedMemoryReadBytes));
            Assert.Equal(0, offMovers.Sum(m => m.SharedMemoryReadBytes));
            Assert.Equal(0, offMovers.Sum(m => m.PeerMappingCount));
            Assert.Equal(3 * (RemoteBytesFrom(plan, 0) + RemoteBytesFrom(plan, 1)), offMovers.Sum(m => m.ProcessReadBytes));
            // Disposing a mover unmaps what it mapped.
            movers[2].Dispose();
            Assert.Equal(0, movers[2].PeerMappingCount);
        }
        finally
        {
            foreach (var m in movers.Concat(offMovers)) m.Dispose();
            foreach (var b in blocks) b.Dispose();
            foreach (var t in world.Concat(off)) t.Dispose();
        }
    }

    /// <summary>A transport that changes the token of every shared-block announcement it sends (the
    /// receiver then finds another block than announced, as after a descriptor number was reused).</summary>
    private sealed class WrongToken(ITransport inner) : ITransport
    {
        public int Rank => inner.Rank;
        public int Size => inner.Size;
        public TimeSpan Timeout { get => inner.Timeout; set => inner.Timeout = value; }
        public int? LocalProcessOf(int peer) => inner.LocalProcessOf(peer);
        public void Dispose() { }
        private readonly List<HostBlock> _copies = [];

        public unsafe Task SendAsync(int peer, long tag, nint data, long bytes, CancellationToken ct = default)
        {
            if (bytes == 40 && ((long*)data)[1] >= 0)
            {
                var copy = new HostBlock(40);
                lock (_copies) _copies.Add(copy);
                Buffer.MemoryCopy((void*)data, copy.Pointer, 40, 40);
                ((long*)copy.Pointer)[4] ^= 1;
                data = (nint)copy.Pointer;
            }
            return inner.SendAsync(peer, tag, data, bytes, ct);
        }

        public Task RecvAsync(int peer, long tag, nint data, long bytes, CancellationToken ct = default) => inner.RecvAsync(peer, tag, data, bytes, ct);
    }

    [Fact]
    public async Task ABlockThatIsNotTheOneAnnouncedFailsBothSidesWithoutHanging()
    {
        const int n = 2;
        var world = World(n);
        var wrapped = world.Select(t => new WrongToken(t)).ToArray();
        var movers = wrapped.Select(t => new TransportRealloc(t) { Push = false }).ToArray();
        var blocks = new List<HostBlock>();
        try
        {
            var rng = new Random(4);
            var global = Shape(1, 0, 1, 0).Views.ToDictionary(v => v.Name, v => Enumerable.Range(0, (int)v.LocalElements).Select(_ => rng.NextSingle()).ToArray());
            var plan = ReallocPlan.Build(new ParallelLayout([0], 1, 1, 1), new ParallelLayout([1], 1, 1, 1), Shape, 4, _ => 0);
            var src = new Dictionary<int, HostBlock> { [0] = Block(TestLayouts.Shard(plan.SourceLayoutOf(0), global), true) };
            var dst = new Dictionary<int, HostBlock> { [1] = Block(new float[plan.DestinationLayoutOf(1).TotalElements], true) };
            blocks.AddRange(src.Values.Concat(dst.Values));
            var sender = Task.Run(() => movers[0].ExecuteAsync(plan, ReallocSchedule.ForDevice(plan, 0), Ptr(src, 0), 0));
            var receiver = Task.Run(() => movers[1].ExecuteAsync(plan, ReallocSchedule.ForDevice(plan, 1), 0, Ptr(dst, 1)));
            var r = await Assert.ThrowsAsync<InvalidOperationException>(() => receiver.WaitAsync(TimeSpan.FromSeconds(30)));
            Assert.Contains("device 0's shard", r.Message);
            Assert.Contains("not the shared buffer announced", r.Message);
            var s = await Assert.ThrowsAsync<InvalidOperationException>(() => sender.WaitAsync(TimeSpan.FromSeconds(30)));
            Assert.Contains("device 1 could not read device 0's shard", s.Message);
            Assert.Equal(0, movers[1].PeerMappingCount);
        }
        finally
        {
            foreach (var m in movers) m.Dispose();
            foreach (var b in blocks) b.Dispose();
            foreach (var t in world) t.Dispose();
        }
    }

    [Fact]
    public async Task SendersWriteSharedDestinationsBitExactAndTheOthersPull()
    {
        const int n = 4;
        var pushing = World(n);
        var pulling = World(n);
        var movers = pushing.Select(t => new TransportRealloc(t) { DirectMinBytes = 64, ChunkBytes = 200 }).ToArray();
        var pullMovers = pulling.Select(t => new TransportRealloc(t) { Push = false, DirectMinBytes = 64, ChunkBytes = 200 }).ToArray();
        Assert.All(movers, m => Assert.True(m.Push));   // the default
        var blocks = new List<HostBlock>();
        try
        {
            var rng = new Random(2031);
            var global = Shape(1, 0, 1, 0).Views.ToDictionary(v => v.Name, v => Enumerable.Range(0, (int)v.LocalElements).Select(_ => BitConverter.Int32BitsToSingle(rng.Next() ^ rng.Next() << 1)).ToArray());
            long expectPushed = 0, expectPulled = 0;
            for (int trial = 0; trial < 12; trial++)
            {
                var a = Pick(rng, n);
                var b = Pick(rng, n);
                var plan = ReallocPlan.Build(a, b, Shape, 4, d => d / 2);
                // Some destinations in shared memory (written by their senders), some not (pulled);
                // senders' shards shared or not (a sender writes from either).
                var sharedDst = b.Devices.ToDictionary(d => d, _ => rng.Next(3) > 0);
                var sharedSrc = a.Devices.ToDictionary(d => d, _ => rng.Next(2) > 0);
                foreach (var st in plan.Steps.Where(x => !x.IsLocal))
                    foreach (var d in st.DstDevices)
                        if (sharedDst[d]) expectPushed += st.Bytes; else expectPulled += st.Bytes;
                var results = new List<int[]>[2];
                for (int w = 0; w < 2; w++)
                {
                    var src = a.Devices.ToDictionary(d => d, d => Block(TestLayouts.Shard(plan.SourceLayoutOf(d), global), sharedSrc[d]));
                    var dstAt = new Dictionary<int, HostBlock>();
                    var dst = b.Devices.ToDictionary(d => d, d => Block(Enumerable.Repeat(float.NaN, (int)plan.DestinationLayoutOf(d).TotalElements).ToArray(), w == 0 && sharedDst[d]));
                    blocks.AddRange(src.Values.Concat(dst.Values));
                    var dstPtr = dst.ToDictionary(kv => kv.Key, kv => Ptr(dst, kv.Key));
                    if (w == 0 && trial % 2 == 1)
                    {
                        // Shared destinations inside one shared block at offsets: the announced offset must be honoured.
                        var shards = b.Devices.Where(d => sharedDst[d]).ToList();
                        long at = 0;
                        var offsets = new Dictionary<int, long>();
                        foreach (var d in shards) { at += 4096 + 64 * (d + 1); offsets[d] = at; at += plan.DestinationLayoutOf(d).TotalElements * 4; }
                        var arena = new HostBlock(Math.Max(at, 4), HostAllocFlags.Prefault | HostAllocFlags.Shared);
                        blocks.Add(arena);
                        arena.AsSpan<byte>().Fill(0xff);
                        foreach (var d in shards)
                        {
                            dstPtr[d] = Ptr(new Dictionary<int, HostBlock> { [0] = arena }, 0) + (nint)offsets[d];
                            Assert.Equal(offsets[d], SharedHostMemory.Describe(dstPtr[d])!.Value.Offset);
                        }
                    }
                    var ms = w == 0 ? movers : pullMovers;
                    await Task.WhenAll(Enumerable.Range(0, n).Select(d => Task.Run(() =>
                        ms[d].ExecuteAsync(plan, ReallocSchedule.ForDevice(plan, d), Ptr(src, d), dstPtr.GetValueOrDefault(d))))).WaitAsync(TimeSpan.FromSeconds(60));
                    results[w] = [];
                    foreach (var d in b.Devices.Order())
                    {
                        var want = MemoryMarshal.Cast<float, int>(TestLayouts.Shard(plan.DestinationLayoutOf(d), global)).ToArray();
                        int[] got;
                        unsafe { got = new Span<int>((void*)dstPtr[d], (int)plan.DestinationLayoutOf(d).TotalElements).ToArray(); }
                        Assert.True(want.AsSpan().SequenceEqual(got), $"world {w}, trial {trial}: {a} -> {b}, device {d}");
                        results[w].Add(got);
                    }
                }
                for (int i = 0; i < results[0].Count; i++) Assert.True(results[0][i].AsSpan().SequenceEqual(results[1][i]), $"trial {trial}, shard {i}");
            }
            Assert.True(expectPushed > 0 && expectPulled > 0, "the trials did not mix shared and private destinations");
            Assert.Equal(expectPushed, movers.Sum(m => m.PushedBytes));
            Assert.Equal(expectPushed, movers.Sum(m => m.WrittenByPeerBytes));
            Assert.Equal(expectPulled, movers.Sum(m => m.ProcessReadBytes));   // the private destinations pulled
            Assert.Equal(0, pullMovers.Sum(m => m.PushedBytes));
            Assert.Equal(expectPushed + expectPulled, pullMovers.Sum(m => m.ProcessReadBytes));
        }
        finally
        {
            foreach (var m in movers.Concat(pullMovers)) m.Dispose();
            foreach (var b in blocks) b.Dispose();
            foreach (var t in pushing.Concat(pulling)) t.Dispose();
        }
    }

    [Fact]
    public async Task ADestinationThatIsNotTheOneAnnouncedFailsBothSidesWithoutHanging()
    {
        const int n = 2;
        var world = World(n);
        var wrapped = world.Select(t => new WrongToken(t)).ToArray();
        var movers = wrapped.Select(t => new TransportRealloc(t)).ToArray();
        var blocks = new List<HostBlock>();
        try
        {
            var rng = new Random(5);
            var global = Shape(1, 0, 1, 0).Views.ToDictionary(v => v.Name, v => Enumerable.Range(0, (int)v.LocalElements).Select(_ => rng.NextSingle()).ToArray());
            var plan = ReallocPlan.Build(new ParallelLayout([0], 1, 1, 1), new ParallelLayout([1], 1, 1, 1), Shape, 4, _ => 0);
            // The sender's shard is private: only the receiver's destination announcement carries a
            // (wrong) token, so the failure is the sender's mapping of it.
            var src = new Dictionary<int, HostBlock> { [0] = Block(TestLayouts.Shard(plan.SourceLayoutOf(0), global), false) };
            var dst = new Dictionary<int, HostBlock> { [1] = Block(new float[plan.DestinationLayoutOf(1).TotalElements], true) };
            blocks.AddRange(src.Values.Concat(dst.Values));
            var sender = Task.Run(() => movers[0].ExecuteAsync(plan, ReallocSchedule.ForDevice(plan, 0), Ptr(src, 0), 0));
            var receiver = Task.Run(() => movers[1].ExecuteAsync(plan, ReallocSchedule.ForDevice(plan, 1), 0, Ptr(dst, 1)));
            var s = await Assert.ThrowsAsync<InvalidOperationException>(() => sender.WaitAsync(TimeSpan.FromSeconds(30)));
            Assert.Contains("device 1's destination shard", s.Message);
            Assert.Contains("not the shared buffer announced", s.Message);
            var r = await Assert.ThrowsAsync<InvalidOperationException>(() => receiver.WaitAsync(TimeSpan.FromSeconds(30)));
            Assert.Contains("device 0 failed to write device 1's destination shard", r.Message);
            Assert.Equal(0, movers[0].PeerMappingCount);
            Assert.Equal(0, movers[0].PushedBytes);
        }
        finally
        {
            foreach (var m in movers) m.Dispose();
            foreach (var b in blocks) b.Dispose();
            foreach (var t in world) t.Dispose();
        }
    }
}

/// <summary>The mapping cache on its own: one mapping per block, leases keep a block mapped
/// through DropUnused and Dispose, the least recently used go beyond the limit, a freed or
/// mislabelled block is refused.</summary>
public sealed unsafe class PeerMappingsTests
{
    private static HostBlock Shared(long bytes, byte fill)
    {
        var b = new HostBlock(bytes, HostAllocFlags.Prefault | HostAllocFlags.Shared);
        new Span<byte>(b.Pointer, (int)bytes).Fill(fill);
        return b;
    }

    [Fact]
    public void MapsOnceKeepsLeasedBlocksAndEvictsTheLeastRecentlyUsed()
    {
        int pid = Environment.ProcessId;
        using var a = Shared(3 << 20, 0x11);
        var d = SharedHostMemory.Describe((nint)a.Pointer + 100)!.Value;
        Assert.Equal(100, d.Offset);
        Assert.True(d.Size >= 3 << 20);
        using (var plain = new HostBlock(4096)) Assert.Null(SharedHostMemory.Describe((nint)plain.Pointer));
        var m = new PeerMappings();
        var l1 = m.Acquire(pid, d);
        var l2 = m.Acquire(pid, d);
        Assert.Equal(l1.Base, l2.Base);
        Assert.Equal(1, m.Count);
        Assert.Equal(d.Size, m.MappedBytes);
        Assert.Equal(0x11, ((byte*)l1.Base)[d.Offset + 5]);
        Assert.NotEqual((nint)a.Pointer, l1.Base);   // a mapping of its own, read-only
        m.DropUnused();
        Assert.Equal(1, m.Count);   // leased
        l1.Dispose();
        l2.Dispose();
        l2.Dispose();   // twice is harmless
        m.Sweep();
        Assert.Equal(1, m.Count);   // this process is alive
        m.DropUnused();
        Assert.Equal(0, m.Count);

        var many = Enumerable.Range(0, PeerMappings.MaxEntries + 6).Select(i => Shared(4096, (byte)i)).ToList();
        try
        {
            foreach (var b in many) m.Acquire(pid, SharedHostMemory.Describe((nint)b.Pointer)!.Value).Dispose();
            Assert.Equal(PeerMappings.MaxEntries, m.Count);
            // The first ones went: mapping them again adds an entry and evicts another.
            using (var again = m.Acquire(pid, SharedHostMemory.Describe((nint)many[0].Pointer)!.Value))
                Assert.Equal(0, ((byte*)again.Base)[0]);
            Assert.Equal(PeerMappings.MaxEntries, m.Count);
        }
        finally { foreach (var b in many) b.Dispose(); }
        var held = m.Acquire(pid, d);
        m.Dispose();
        Assert.Throws<ObjectDisposedException>(() => m.Acquire(pid, d));
        held.Dispose();
    }

    [Fact]
    public void AFreedOrMislabelledBlockIsRefused()
    {
        int pid = Environment.ProcessId;
        var a = Shared(1 << 20, 0x22);
        var d = SharedHostMemory.Describe((nint)a.Pointer)!.Value;
        using var m = new PeerMappings();
        var e = Assert.Throws<RealnException>(() => m.Acquire(pid, d with { Token = d.Token ^ 1 }));
        Assert.Equal(RealnStatus.NotFound, e.Status);
        e = Assert.Throws<RealnException>(() => m.Acquire(pid, d with { Size = d.Size * 2 }));
        Assert.Equal(RealnStatus.NotFound, e.Status);
        // Mapped, then freed by its owner: the pages are released (the mapping reads zeros).
        var lease = m.Acquire(pid, d);
        Assert.Equal(0x22, ((byte*)lease.Base)[12345]);
        a.Dispose();
        Assert.Equal(0, ((byte*)lease.Base)[12345]);
        lease.Dispose();
        // Its descriptor is closed (or its number already reused by another file of this process).
        using var fresh = new PeerMappings();
        e = Assert.Throws<RealnException>(() => fresh.Acquire(pid, d));
        Assert.Equal(RealnStatus.NotFound, e.Status);
        Assert.True(e.Message.Contains("gone") || e.Message.Contains("not the shared buffer announced"), e.Message);
    }
}
