// The in-process fabric: messages arrive intact and in order per (peer, tag) whichever side comes
// first, a receive with no sender fails at its deadline naming the peer (and is withdrawn, so a
// late message does not land in the caller's buffer), and size mismatches are named.
using System.Runtime.InteropServices;
using ReaLNative.Engine.Transport;
using Xunit;

namespace ReaLNative.Engine.Tests.Transport;

public sealed class LocalTransportTests
{
    private sealed class Pinned(byte[] data) : IDisposable
    {
        private GCHandle _h = GCHandle.Alloc(data, GCHandleType.Pinned);
        public nint Ptr => _h.AddrOfPinnedObject();
        public void Dispose() => _h.Free();
    }

    [Fact]
    public void MessagesArriveIntactInOrderEitherSideFirst()
    {
        var f = new LocalFabric(2);
        var a = f.Rank(0); var b = f.Rank(1);
        var rng = new Random(4);
        var msgs = Enumerable.Range(0, 5).Select(i => Enumerable.Range(0, 100 + i).Select(_ => (byte)rng.Next(256)).ToArray()).ToArray();
        // Sends first for tag 7 ...
        foreach (var m in msgs) using (var p = new Pinned(m)) a.SendAsync(1, 7, p.Ptr, m.Length).Wait();
        var got = msgs.Select(m => new byte[m.Length]).ToArray();
        foreach (var g in got) using (var p = new Pinned(g)) b.RecvAsync(0, 7, p.Ptr, g.Length).Wait();
        Assert.Equal(msgs, got);
        // ... receive first for tag 8.
        var buf = new byte[msgs[0].Length];
        using var pb = new Pinned(buf);
        var recv = b.RecvAsync(0, 8, pb.Ptr, buf.Length);
        Assert.False(recv.IsCompleted);
        using (var p = new Pinned(msgs[0])) a.SendAsync(1, 8, p.Ptr, msgs[0].Length).Wait();
        Assert.True(recv.Wait(TimeSpan.FromSeconds(5)));
        Assert.Equal(msgs[0], buf);
    }

    [Fact]
    public void ReceiveWithoutSenderFailsAtItsDeadlineAndIsWithdrawn()
    {
        var f = new LocalFabric(2);
        var a = f.Rank(0); var b = f.Rank(1);
        b.Timeout = TimeSpan.FromMilliseconds(200);
        var buf = new byte[8];
        using var pb = new Pinned(buf);
        var e = Assert.Throws<AggregateException>(() => b.RecvAsync(0, 3, pb.Ptr, 8).Wait()).InnerException;
        Assert.IsType<TimeoutException>(e);
        Assert.Contains("receive from rank 0", e!.Message);
        var late = new byte[] { 1, 2, 3, 4, 5, 6, 7, 8 };
        using (var p = new Pinned(late)) a.SendAsync(1, 3, p.Ptr, 8).Wait();
        Assert.All(buf, x => Assert.Equal(0, x));  // queued for a later receive, not written into the withdrawn buffer
        var again = new byte[8];
        using (var p = new Pinned(again)) b.RecvAsync(0, 3, p.Ptr, 8).Wait();
        Assert.Equal(late, again);
    }

    [Fact]
    public void SizeMismatchAndBadPeerAreNamed()
    {
        var f = new LocalFabric(2);
        var a = f.Rank(0); var b = f.Rank(1);
        var m = new byte[16];
        using var p = new Pinned(m);
        a.SendAsync(1, 1, p.Ptr, 16).Wait();
        // Both are refused synchronously, before any task exists.
        Exception? Sync(Action act) { try { act(); return null; } catch (Exception x) { return x; } }
        var e = Sync(() => b.RecvAsync(0, 1, p.Ptr, 8));
        Assert.IsType<InvalidOperationException>(e);
        Assert.Contains("expected 8 bytes, the message has 16", e!.Message);
        var bad = Sync(() => a.SendAsync(5, 1, p.Ptr, 1));
        Assert.IsType<ArgumentException>(bad);
        Assert.Contains("peer 5", bad!.Message);
        Assert.Throws<ArgumentException>(() => f.Rank(2));
    }
}
