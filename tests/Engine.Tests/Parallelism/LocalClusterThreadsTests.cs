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
}
