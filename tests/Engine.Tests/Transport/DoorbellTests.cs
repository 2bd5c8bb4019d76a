using System.Diagnostics;
using System.Runtime.InteropServices;
using ReaLNative.Engine.Transport;
using Xunit;

namespace ReaLNative.Engine.Tests.Transport;

/// <summary>The doorbells that wake a progress thread when a local peer gives it work
/// (<see cref="Doorbell"/>): a ring ends a sleep through another mapping of the block (the shared
/// futex, which a private one would not do), a sleep with work to do does not start, a transport's
/// messages between local peers do not wait for the receivers' naps. The naps in these tests are
/// seconds long, so that a lost or missing ring shows as a test that takes minutes and fails its
/// bound, never as a slower pass.</summary>
public sealed class DoorbellTests
{
    [Fact]
    public void ARingThroughAPeersMappingEndsTheSleep()
    {
        using var owner = Doorbell.TryCreate() ?? throw new InvalidOperationException("no doorbell on this host");
        using var peer = Doorbell.TryCreate()!;
        // The peer maps the owner's block as another process would (here: this process's descriptor, a second mapping).
        Assert.Equal(1, peer.Attach([(Environment.ProcessId, owner.Descriptor), null]));
        for (int round = 0; round < 5; round++)
        {
            var asleep = new ManualResetEventSlim();
            var sw = new Stopwatch();
            var sleeper = new Thread(() =>
            {
                sw.Start();
                owner.Sleep(30_000, () => { asleep.Set(); return false; });
                sw.Stop();
            });
            sleeper.Start();
            Assert.True(asleep.Wait(TimeSpan.FromSeconds(10)));
            Thread.Sleep(50);   // well inside the futex wait (a ring before it would end it at once too)
            peer.Ring(0);
            Assert.True(sleeper.Join(TimeSpan.FromSeconds(10)), $"round {round}: the ring did not end a 30 s sleep within 10 s");
            Assert.True(sw.Elapsed < TimeSpan.FromSeconds(10));
        }
        peer.Ring(1);   // a peer without a doorbell: nothing
        peer.Ring(7);   // outside the world: nothing
    }

    [Fact]
    public void ASleepWithWorkToDoDoesNotStart()
    {
        using var bell = Doorbell.TryCreate()!;
        var sw = Stopwatch.StartNew();
        for (int i = 0; i < 100; i++) bell.Sleep(30_000, () => true);
        Assert.True(sw.Elapsed < TimeSpan.FromSeconds(10));
        // A ring between the sleeper's look for work and its wait (an operation posted meanwhile) is not lost.
        var t = new Thread(() => bell.Sleep(30_000, () => { bell.RingSelf(); return false; }));
        t.Start();
        Assert.True(t.Join(TimeSpan.FromSeconds(10)), "a ring before the sleep was lost");
    }

    [Fact]
    public void RingingADisposedBellDoesNothing()
    {
        var bell = Doorbell.TryCreate()!;
        bell.Dispose();
        bell.RingSelf();
        bell.Ring(0);
        bell.Dispose();
    }

    /// <summary>Two transports with 3 s naps and neither spin nor yields: 20 round trips of small (eager) and
    /// 1 MiB (rendezvous) messages, each hop waiting for a nap without the doorbell (about a minute).</summary>
    [Fact]
    public async Task LocalMessagesDoNotWaitForTheReceiversNap()
    {
        var options = new UcxTransportOptions { SpinIterations = 0, YieldIterations = 0, PendingNap = TimeSpan.FromSeconds(3), MaxSleep = TimeSpan.FromSeconds(3) };
        var w = new[] { new UcxTransport(0, 2, options), new UcxTransport(1, 2, options) };
        try
        {
            var addrs = w.Select(t => t.LocalAddress).ToArray();
            foreach (var t in w) t.Connect(addrs);
            Assert.All(w, t => Assert.Equal(1, t.RungPeers));
            var rnd = new Random(3);
            var big = new byte[1 << 20];
            rnd.NextBytes(big);
            var back = new byte[big.Length];
            var echoed = new byte[big.Length];
            var hb = GCHandle.Alloc(big, GCHandleType.Pinned);
            var hk = GCHandle.Alloc(back, GCHandleType.Pinned);
            var he = GCHandle.Alloc(echoed, GCHandleType.Pinned);
            try
            {
                var sw = Stopwatch.StartNew();
                for (int i = 0; i < 10; i++)
                {
                    foreach (long bytes in new long[] { 8, big.Length })
                    {
                        Array.Clear(back);
                        Array.Clear(echoed);
                        var r = w[1].RecvAsync(0, 2 * i, hk.AddrOfPinnedObject(), bytes);
                        await Task.Delay(5);   // the receiver is asleep when the message comes
                        await Task.WhenAll(w[0].SendAsync(1, 2 * i, hb.AddrOfPinnedObject(), bytes), r).WaitAsync(TimeSpan.FromSeconds(60));
                        var echo = w[0].RecvAsync(1, 2 * i + 1, he.AddrOfPinnedObject(), bytes);
                        await Task.Delay(5);
                        await Task.WhenAll(w[1].SendAsync(0, 2 * i + 1, hk.AddrOfPinnedObject(), bytes), echo).WaitAsync(TimeSpan.FromSeconds(60));
                        Assert.True(big.AsSpan(0, (int)bytes).SequenceEqual(echoed.AsSpan(0, (int)bytes)), $"round trip {i}, {bytes} bytes");
                    }
                }
                Assert.True(sw.Elapsed < TimeSpan.FromSeconds(20), $"40 messages took {sw.Elapsed.TotalSeconds:F1} s: they waited for the receivers' 3 s naps");
            }
            finally
            {
                hb.Free();
                hk.Free();
                he.Free();
            }
        }
        finally { foreach (var t in w) t.Dispose(); }
    }
}
