using ReaLNative.Engine.Workers;
using Xunit;

namespace ReaLNative.Engine.Tests.Workers;

public sealed class ProcessMemoryTests
{
    [Fact]
    public void PeakRssIsTheKernelsHighWaterMarkInBytes()
    {
        long now = Environment.WorkingSet;   // VmRSS in bytes
        // Touch 64 MiB more: the high-water mark follows.
        var block = new byte[64 << 20];
        for (int i = 0; i < block.Length; i += 4096) block[i] = 1;
        long peak = ProcessMemory.PeakRssBytes() ?? throw new InvalidOperationException("no /proc/self/status VmHWM");
        Assert.True(peak >= now + (48 << 20), $"VmHWM {peak} B, VmRSS before the 64 MiB {now} B");
        GC.KeepAlive(block);
        Assert.Equal(12345L * 1024, ProcessMemory.Parse(["Name:\tx", "VmHWM:\t   12345 kB", "VmRSS:\t 1 kB"], "status"));
        Assert.Null(ProcessMemory.Parse(["Name:\tkthreadd"], "status"));
        var e = Assert.Throws<InvalidDataException>(() => ProcessMemory.Parse(["VmHWM:\t12 MB"], "/proc/1/status"));
        Assert.Contains("/proc/1/status", e.Message);
        Assert.Null(ProcessMemory.PeakRssBytes("999999999"));
    }
}
