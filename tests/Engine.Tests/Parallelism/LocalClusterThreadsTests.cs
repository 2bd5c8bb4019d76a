// In-process devices share the host's cores as worker processes do: each device's operations run with the cluster's
// threads per device (the OpenMP thread count is per calling thread), and the calling thread gets its own count back.
// Before, every device thread started a team of all the cores: two devices of a 2-core host ran 4 threads on 2 cores,
// which the planner prices as one thread each.
using ReaLNative.Engine.Parallelism;
using ReaLNative.Interop;
using Xunit;

namespace ReaLNative.Engine.Tests.Parallelism;

public class LocalClusterThreadsTests
{
    [Fact]
    public void DeviceOperationsRunWithTheClustersThreadsPerDevice()
    {
        int before = Native.GetNumThreads();
        int per = before == 3 ? 2 : 3;   // any count other than the caller's
        using var cluster = new LocalCluster(2, threadsPerDevice: per);
        Assert.Equal(per, cluster.ThreadsPerDevice);
        Assert.All(cluster.Spmd(2, "threads", _ => Native.GetNumThreads()), n => Assert.Equal(per, n));
        Assert.Equal(per, cluster.Spmd(1, "threads", _ => Native.GetNumThreads())[0]);   // one device: on this thread
        Assert.Equal(before, Native.GetNumThreads());                                    // and this thread's count restored
    }

    [Fact]
    public void TheDefaultSharesThisProcessesThreadsAmongTheDevices()
    {
        int all = Native.GetNumThreads();
        using var two = new LocalCluster(2);
        Assert.Equal(Math.Max(1, all / 2), two.ThreadsPerDevice);
        using var many = new LocalCluster(4 * all);
        Assert.Equal(1, many.ThreadsPerDevice);
        Assert.Throws<ArgumentOutOfRangeException>(() => new LocalCluster(2, threadsPerDevice: 0));
    }

    /// <summary>An operation's bodies run on the caller's thread (index 0) and on threads the cluster
    /// keeps (SpmdThreads): the next operation runs on the same threads, not new ones (a new thread
    /// per device and operation, with its own OpenMP team, cost in-process operations 1.5 ms beyond
    /// their slowest device at load 12).</summary>
    [Fact]
    public void OperationsRunOnTheCallersThreadAndOnKeptThreads()
    {
        using var cluster = new LocalCluster(3, threadsPerDevice: 1);
        int caller = Environment.CurrentManagedThreadId;
        var first = cluster.Spmd(3, "ids", _ => Environment.CurrentManagedThreadId);
        Assert.Equal(caller, first[0]);
        Assert.Equal(3, first.Distinct().Count());
        for (int k = 0; k < 5; k++)
            Assert.Equal(first.Skip(1).Order(), cluster.Spmd(3, "ids", _ => Environment.CurrentManagedThreadId).Skip(1).Order());
    }

    /// <summary>Operations on disjoint meshes at once each get their bodies run together (they
    /// exchange data: a barrier of each operation's bodies must be reached), and a body past the
    /// deadline fails its operation without taking a kept thread from the next.</summary>
    [Fact]
    public void ConcurrentOperationsRunTogetherAndAHungBodyFailsOnlyItsOperation()
    {
        using var cluster = new LocalCluster(4, timeout: TimeSpan.FromSeconds(2), threadsPerDevice: 1);
        var ops = Enumerable.Range(0, 3).Select(o => Task.Run(() =>
        {
            using var together = new Barrier(4);
            return cluster.Spmd(4, $"op {o}", i => together.SignalAndWait(TimeSpan.FromSeconds(20)) ? i : -1);
        })).ToArray();
        Assert.True(Task.WaitAll(ops, TimeSpan.FromSeconds(60)));
        Assert.All(ops, t => Assert.Equal([0, 1, 2, 3], t.Result));
        using var release = new ManualResetEventSlim();
        var hung = Assert.Throws<TimeoutException>(() => cluster.Spmd(2, "hung", i => { if (i == 1) release.Wait(TimeSpan.FromSeconds(30)); return i; }));
        Assert.Contains("hung", hung.Message);
        Assert.Equal([0, 1], cluster.Spmd(2, "after", i => i));   // another thread takes the busy one's place
        release.Set();
        var failed = Assert.Throws<InvalidOperationException>(() => cluster.Spmd(2, "fails", i => i == 1 ? throw new ArgumentException("bad shard") : i));
        Assert.Contains("device rank 1 failed: bad shard", failed.Message);
    }
}
