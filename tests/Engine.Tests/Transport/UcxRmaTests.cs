using System.Runtime.InteropServices;
using ReaLNative.Engine.Transport;
using Xunit;

namespace ReaLNative.Engine.Tests.Transport;

/// <summary>UCX RMA between in-process ranks: registered regions, descriptors exchanged over the
/// tagged channel, put and get of random bytes at random offsets (bit-exact), bounds, deadlines,
/// and the poll / wakeup progress modes carrying the same tagged traffic.</summary>
/// <summary>Runs alone. UCX 1.13 aborted the process (stubs.c "Assertion '0' failed" in
/// uct_tcp_ep_pending_purge) when the timed-out rendezvous send's endpoint was destroyed with the
/// send still queued (three times in whole-assembly runs, the last with this collection alone);
/// UcxTransport.Dispose now leaves a transport with such an operation to process exit.</summary>
[CollectionDefinition("ucx alone", DisableParallelization = true)]
public sealed class UcxAloneCollection;

[Collection("ucx alone")]
public sealed class UcxRmaTests
{
    private static UcxTransport[] World(int n, UcxTransportOptions? options = null, TimeSpan? timeout = null)
    {
        var ts = Enumerable.Range(0, n).Select(r => new UcxTransport(r, n, options ?? UcxTransportOptions.Default)).ToArray();
        var addrs = ts.Select(t => t.LocalAddress).ToArray();
        foreach (var t in ts)
        {
            if (timeout is TimeSpan to) t.Timeout = to;
            t.Connect(addrs);
        }
        return ts;
    }

    private static byte[] Random(int n, int seed)
    {
        var b = new byte[n];
        new Random(seed).NextBytes(b);
        return b;
    }

    /// <summary>Gets by process_vm_readv (the default between processes of one host, here ranks of one process) and
    /// over UCX (<see cref="UcxTransportOptions.GetByProcessRead"/> off: the path between hosts).</summary>
    [Theory]
    [InlineData(null, true)]
    [InlineData(null, false)]
    [InlineData("tcp", false)]
    public async Task PutAndGetBetweenRanksAreBitExact(string? tls, bool getByProcessRead)
    {
        const int n = 3, bytes = 3 << 20;  // 3 MiB per region: above the rendezvous threshold
        var w = World(n, new UcxTransportOptions { Transports = tls, GetByProcessRead = getByProcessRead });
        var mem = Enumerable.Range(0, n).Select(r => Random(bytes, 10 + r)).ToArray();
        var local = Enumerable.Range(0, n).Select(r => Random(bytes, 20 + r)).ToArray();
        var handles = mem.Concat(local).Select(x => GCHandle.Alloc(x, GCHandleType.Pinned)).ToArray();
        var regions = new List<IRmaRegion>();
        var remotes = new List<IRemoteRegion>();
        try
        {
            for (int r = 0; r < n; r++) regions.Add(w[r].Register(handles[r].AddrOfPinnedObject(), bytes));
            var group = Enumerable.Range(0, n).ToArray();
            var tables = await Task.WhenAll(Enumerable.Range(0, n).Select(r => RmaBootstrap.AllGatherAsync(w[r], group, 77, regions[r].Descriptor)))
                .WaitAsync(TimeSpan.FromSeconds(30));
            for (int r = 0; r < n; r++) Assert.Equal(regions[r].Descriptor, tables[(r + 1) % n][r]);
            // Rank r puts a random slice of its local buffer into rank r+1's region, then gets
            // another slice of rank r+2's region back.
            var rng = new Random(3);
            var puts = new (int Src, int Dst, int Off, int Len, int LocalOff)[n];
            var gets = new (int Src, int Off, int Len, int LocalOff)[n];
            var expectMem = mem.Select(x => x.ToArray()).ToArray();
            for (int r = 0; r < n; r++)
            {
                int len = rng.Next(1, bytes / 2), off = rng.Next(0, bytes / 3), loff = rng.Next(0, bytes / 2);
                puts[r] = (r, (r + 1) % n, off, len, loff);
                Array.Copy(local[r], loff, expectMem[(r + 1) % n], off, len);
            }
            await Task.WhenAll(Enumerable.Range(0, n).Select(r =>
            {
                var remote = w[r].Attach(puts[r].Dst, tables[r][puts[r].Dst]);
                remotes.Add(remote);
                return w[r].PutAsync(remote, puts[r].Off, handles[n + r].AddrOfPinnedObject() + puts[r].LocalOff, puts[r].Len);
            })).WaitAsync(TimeSpan.FromSeconds(30));
            for (int r = 0; r < n; r++) Assert.True(expectMem[r].AsSpan().SequenceEqual(mem[r]), $"rank {r}'s region after the puts");
            var expectLocal = local.Select(x => x.ToArray()).ToArray();
            for (int r = 0; r < n; r++)
            {
                int src = (r + 2) % n, len = rng.Next(1, bytes / 2), off = rng.Next(0, bytes / 2), loff = rng.Next(0, bytes / 2);
                gets[r] = (src, off, len, loff);
                Array.Copy(mem[src], off, expectLocal[r], loff, len);
            }
            await Task.WhenAll(Enumerable.Range(0, n).Select(r =>
            {
                var remote = w[r].Attach(gets[r].Src, tables[r][gets[r].Src]);
                remotes.Add(remote);
                return w[r].GetAsync(remote, gets[r].Off, handles[n + r].AddrOfPinnedObject() + gets[r].LocalOff, gets[r].Len);
            })).WaitAsync(TimeSpan.FromSeconds(30));
            for (int r = 0; r < n; r++) Assert.True(expectLocal[r].AsSpan().SequenceEqual(local[r]), $"rank {r}'s buffer after the get");
            // Out of bounds is refused before anything moves.
            Assert.Throws<ArgumentOutOfRangeException>(() => { _ = w[0].GetAsync(remotes[0], bytes - 4, handles[n].AddrOfPinnedObject(), 8); });
        }
        finally
        {
            foreach (var x in remotes) x.Dispose();
            foreach (var x in regions) x.Dispose();
            foreach (var t in w) t.Dispose();
            foreach (var h in handles) h.Free();
        }
    }

    [Fact]
    public async Task AnRmaOperationPastItsDeadlineFailsNamingThePeer()
    {
        // 256 MiB over tcp cannot finish in 1 ms; the endpoint is closed and the task fails.
        const long bytes = 256L << 20;
        var w = World(2, new UcxTransportOptions { Transports = "tcp", GetByProcessRead = false });
        var a = Marshal.AllocHGlobal((nint)bytes);
        var b = Marshal.AllocHGlobal((nint)bytes);
        try
        {
            using var region = w[1].Register(b, bytes);
            using var remote = w[0].Attach(1, region.Descriptor);
            w[0].Timeout = TimeSpan.FromMilliseconds(1);
            var e = await Assert.ThrowsAnyAsync<Exception>(() => w[0].GetAsync(remote, 0, a, bytes).WaitAsync(TimeSpan.FromSeconds(30)));
            Assert.True(e is TimeoutException || e is IOException, e.ToString());
            Assert.Contains("rank 1", e.Message);
        }
        finally
        {
            foreach (var t in w) t.Dispose();
            Marshal.FreeHGlobal(a);
            Marshal.FreeHGlobal(b);
        }
    }

    /// <summary>A get from a rank of this host takes nothing from that rank: it completes, bit-exact and within its
    /// deadline, after the owner's transport was disposed (its progress thread gone; the memory kept alive, as the
    /// owner of a region must). Before, UCX's software RMA over the shared-memory lanes waited for the owner's
    /// progress thread to answer (a napping owner: up to 10 ms per get; here never).</summary>
    [Fact]
    public async Task AGetFromARankOfThisHostNeedsNothingOfIt()
    {
        const int bytes = 1 << 16;
        var w = World(2, timeout: TimeSpan.FromSeconds(3));
        var mem = Random(bytes, 31);
        var got = new byte[bytes];
        var h = new[] { GCHandle.Alloc(mem, GCHandleType.Pinned), GCHandle.Alloc(got, GCHandleType.Pinned) };
        try
        {
            var region = w[1].Register(h[0].AddrOfPinnedObject(), bytes);
            using var remote = w[0].Attach(1, region.Descriptor);
            Assert.NotNull(w[0].LocalProcessOf(1));
            region.Dispose();
            w[1].Dispose();
            var rng = new Random(4);
            for (int i = 0; i < 50; i++)
            {
                int off = rng.Next(0, bytes - 64), len = rng.Next(1, 64);
                await w[0].GetAsync(remote, off, h[1].AddrOfPinnedObject() + off, len).WaitAsync(TimeSpan.FromSeconds(10));
                Assert.True(mem.AsSpan(off, len).SequenceEqual(got.AsSpan(off, len)), $"get {i}: [{off}, +{len})");
            }
        }
        finally
        {
            foreach (var t in w) t.Dispose();
            foreach (var x in h) x.Free();
        }
    }

    [Fact]
    public async Task ARendezvousSendNobodyReceivesTimesOutNamingThePeer()
    {
        // UCX cannot cancel a started send; the deadline closes the endpoint instead.
        var w = World(2, timeout: TimeSpan.FromMilliseconds(300));
        var a = Marshal.AllocHGlobal(4 << 20);
        try
        {
            var e = await Assert.ThrowsAsync<TimeoutException>(() => w[0].SendAsync(1, 1, a, 4 << 20).WaitAsync(TimeSpan.FromSeconds(20)));
            Assert.Contains("send to rank 1", e.Message);
            await Assert.ThrowsAsync<IOException>(() => w[0].SendAsync(1, 2, a, 8).WaitAsync(TimeSpan.FromSeconds(20)));
        }
        finally
        {
            foreach (var t in w) t.Dispose();
            Marshal.FreeHGlobal(a);
        }
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public async Task BothProgressModesCarryTaggedMessagesAfterIdling(bool wakeup)
    {
        var w = World(2, new UcxTransportOptions { Wakeup = wakeup, SpinIterations = 100, YieldIterations = 10 });
        try
        {
            var a = Random(1 << 20, 5);
            var got = new byte[a.Length];
            var h = new[] { GCHandle.Alloc(a, GCHandleType.Pinned), GCHandle.Alloc(got, GCHandleType.Pinned) };
            try
            {
                for (int i = 0; i < 3; i++)
                {
                    Array.Clear(got);
                    var recv = w[1].RecvAsync(0, i, h[1].AddrOfPinnedObject(), a.Length);
                    await Task.Delay(60);  // both progress threads back off to their naps
                    await Task.WhenAll(w[0].SendAsync(1, i, h[0].AddrOfPinnedObject(), a.Length), recv).WaitAsync(TimeSpan.FromSeconds(20));
                    Assert.Equal(a, got);
                }
            }
            finally { foreach (var x in h) x.Free(); }
        }
        finally { foreach (var t in w) t.Dispose(); }
    }
}
