using System.Runtime.InteropServices;
using ReaLNative.Engine.Transport;
using Xunit;

namespace ReaLNative.Engine.Tests.Transport;

/// <summary>UCX transport and collectives between several UCX workers (one per "rank", each with
/// its own context and progress thread) in this process, on random data against plain references.</summary>
public sealed class UcxTransportTests
{
    private static UcxTransport[] World(int n, TimeSpan? timeout = null)
    {
        var ts = Enumerable.Range(0, n).Select(r => new UcxTransport(r, n)).ToArray();
        var addrs = ts.Select(t => t.LocalAddress).ToArray();
        foreach (var t in ts)
        {
            if (timeout is TimeSpan to) t.Timeout = to;
            t.Connect(addrs);
        }
        return ts;
    }

    private static float[] Random(int n, int seed)
    {
        var r = new Random(seed);
        return Enumerable.Range(0, n).Select(_ => (float)(r.NextDouble() * 2 - 1)).ToArray();
    }

    [Fact]
    public async Task TaggedMessagesArriveIntactAndInTagOrder()
    {
        var w = World(2);
        try
        {
            var a = Random(1 << 20, 1);  // 4 MiB: rendezvous protocol
            var small = Random(7, 2);
            var gotA = new float[a.Length];
            var gotS = new float[small.Length];
            var h = new[] { a, small, gotA, gotS }.Select(x => GCHandle.Alloc(x, GCHandleType.Pinned)).ToArray();
            try
            {
                // Receives posted in the opposite order of the sends: tags keep them apart.
                var r1 = w[1].RecvAsync(0, 5, h[2].AddrOfPinnedObject(), a.Length * 4L);
                var r2 = w[1].RecvAsync(0, 9, h[3].AddrOfPinnedObject(), small.Length * 4L);
                await Task.WhenAll(w[0].SendAsync(1, 9, h[1].AddrOfPinnedObject(), small.Length * 4L),
                                   w[0].SendAsync(1, 5, h[0].AddrOfPinnedObject(), a.Length * 4L), r1, r2)
                    .WaitAsync(TimeSpan.FromSeconds(30));
            }
            finally { foreach (var x in h) x.Free(); }
            Assert.Equal(a, gotA);
            Assert.Equal(small, gotS);
        }
        finally { foreach (var t in w) t.Dispose(); }
    }

    [Theory]
    [InlineData(1, 10)]
    [InlineData(2, 1)]
    [InlineData(3, 1001)]
    [InlineData(4, 65537)]
    public async Task CollectivesMatchReferences(int p, int n)
    {
        var w = World(p);
        try
        {
            var inputs = Enumerable.Range(0, p).Select(r => Random(n, 100 + r)).ToArray();
            var sum = new double[n];
            foreach (var x in inputs) for (int i = 0; i < n; i++) sum[i] += x[i];
            var bufs = inputs.Select(x => x.ToArray()).ToArray();
            var handles = bufs.Select(b => GCHandle.Alloc(b, GCHandleType.Pinned)).ToList();
            var scratch = Enumerable.Range(0, p).Select(_ => new float[n / p + 2]).ToArray();
            handles.AddRange(scratch.Select(b => GCHandle.Alloc(b, GCHandleType.Pinned)));
            try
            {
                var group = Enumerable.Range(0, p).ToArray();
                var coll = w.Select(t => new Collectives(t, group, groupId: 3) { SegmentBytes = 4096 }).ToArray();
                await Task.WhenAll(Enumerable.Range(0, p).Select(r =>
                    coll[r].AllReduceSumAsync(handles[r].AddrOfPinnedObject(), n, handles[p + r].AddrOfPinnedObject()))).WaitAsync(TimeSpan.FromSeconds(60));
                foreach (var b in bufs)
                    for (int i = 0; i < n; i++) Assert.True(Math.Abs(b[i] - sum[i]) <= 1e-5 * (1 + Math.Abs(sum[i])), $"all-reduce element {i}: {b[i]} vs {sum[i]}");

                // Broadcast from the last member: bit-exact copies.
                var root = Random(n, 7);
                root.CopyTo(bufs[p - 1], 0);
                await Task.WhenAll(Enumerable.Range(0, p).Select(r =>
                    coll[r].BroadcastAsync(handles[r].AddrOfPinnedObject(), n * 4L, p - 1))).WaitAsync(TimeSpan.FromSeconds(60));
                foreach (var b in bufs) Assert.Equal(root, b);

                // All-gather: member r contributes its chunk [n*r/p, n*(r+1)/p) of its own random data.
                var full = Random(n, 8);
                for (int r = 0; r < p; r++)
                {
                    Array.Fill(bufs[r], float.NaN);
                    Array.Copy(full, (long)n * r / p, bufs[r], (long)n * r / p, (long)n * (r + 1) / p - (long)n * r / p);
                }
                await Task.WhenAll(Enumerable.Range(0, p).Select(r =>
                    coll[r].AllGatherAsync(handles[r].AddrOfPinnedObject(), n))).WaitAsync(TimeSpan.FromSeconds(60));
                foreach (var b in bufs) Assert.Equal(full, b);

                // Reduce-scatter: member r's chunk holds the sum.
                for (int r = 0; r < p; r++) inputs[r].CopyTo(bufs[r], 0);
                await Task.WhenAll(Enumerable.Range(0, p).Select(r =>
                    coll[r].ReduceScatterSumAsync(handles[r].AddrOfPinnedObject(), n, handles[p + r].AddrOfPinnedObject()))).WaitAsync(TimeSpan.FromSeconds(60));
                for (int r = 0; r < p; r++)
                    for (long i = (long)n * r / p; i < (long)n * (r + 1) / p; i++)
                        Assert.True(Math.Abs(bufs[r][i] - sum[i]) <= 1e-5 * (1 + Math.Abs(sum[i])));
            }
            finally { foreach (var h in handles) h.Free(); }
        }
        finally { foreach (var t in w) t.Dispose(); }
    }

    [Fact]
    public async Task APeerThatNeverSendsTimesOutNamingIt()
    {
        var w = World(2, TimeSpan.FromMilliseconds(300));
        try
        {
            var buf = new float[16];
            var h = GCHandle.Alloc(buf, GCHandleType.Pinned);
            try
            {
                var e = await Assert.ThrowsAsync<TimeoutException>(() => w[0].RecvAsync(1, 1, h.AddrOfPinnedObject(), 64).WaitAsync(TimeSpan.FromSeconds(20)));
                Assert.Contains("receive from rank 1", e.Message);
            }
            finally { h.Free(); }
        }
        finally { foreach (var t in w) t.Dispose(); }
    }

    [Fact]
    public void BadArgumentsAreRefused()
    {
        Assert.Throws<ArgumentException>(() => new UcxTransport(2, 2));
        var w = World(1);
        try
        {
            Assert.Throws<ArgumentOutOfRangeException>(() => { _ = w[0].SendAsync(3, 0, 0, 0); });
            Assert.Throws<ArgumentOutOfRangeException>(() => { _ = w[0].SendAsync(0, -1, 0, 0); });
            Assert.Throws<ArgumentException>(() => new Collectives(w[0], [1, 2]));
        }
        finally { w[0].Dispose(); }
    }
}
