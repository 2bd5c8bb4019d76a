// Interval gather/scatter of large intervals (the parameter-reallocation staging path): 256 MiB
// in 64 intervals of 4 MiB, spread with 2 MiB gaps over a 384 MiB flat buffer, against a plain
// memcpy of the same 256 MiB. All buffers are pre-faulted pooled memory (PinnedBufferPool), so
// neither side pays first-touch page faults (~1 GB/s here, MACHINE.md). Goal ratio >= 0.80.
using BenchmarkDotNet.Attributes;
using ReaLNative.Interop;

namespace ReaLNative.Bench;

public unsafe class IntervalBench
{
    private const long Count = 64, Interval = 4L << 20, Stride = Interval + (Interval / 2);
    private const long Total = Count * Interval;  // 256 MiB moved per invocation
    private const long FlatBytes = Count * Stride;

    private PinnedBufferPool _pool = null!;
    private PinnedBuffer<byte> _flat = null!, _staging = null!, _dst = null!;
    private PinnedBuffer<long> _offsets = null!, _lengths = null!;
    private NativeStream _stream = null!;

    [GlobalSetup]
    public void Setup()
    {
        _stream = NativeStream.Cpu();
        _pool = new PinnedBufferPool(retainPerClass: 2, flags: HostAllocFlags.Default);
        _flat = _pool.Rent<byte>(FlatBytes);
        _staging = _pool.Rent<byte>(Total);
        _dst = _pool.Rent<byte>(Total);
        _offsets = _pool.Rent<long>(Count);
        _lengths = _pool.Rent<long>(Count);
        var rng = new Random(2);
        byte* f = _flat.Pointer;
        for (long i = 0; i < FlatBytes; i += 4096) f[i] = (byte)rng.Next(256);  // touch every page with random data
        for (int i = 0; i < Count; i++)
        {
            _offsets.Pointer[i] = i * Stride;
            _lengths.Pointer[i] = Interval;
        }
        // Check once that gather + scatter round-trips the bytes.
        RealnGather();
        new Span<byte>(_flat.Pointer, 4096).Clear();
        RealnScatter();
        if (_flat.Pointer[0] != _staging.Pointer[0] || _flat.Pointer[Stride] != _staging.Pointer[Interval])
            throw new InvalidOperationException("interval gather/scatter round trip failed");
    }

    [Benchmark(Baseline = true, Description = "memcpy 256 MiB")]
    [Work(Total, "GB/s")]
    public void Memcpy() => Buffer.MemoryCopy(_flat.Pointer, _dst.Pointer, Total, Total);

    [Benchmark(Description = "realn_interval_gather 64x4 MiB")]
    [Work(Total, "GB/s", goal: 0.80)]
    public void RealnGather() =>
        Native.Check(Native.realn_interval_gather(_stream.Ptr, _staging.Pointer, _flat.Pointer, _offsets.Pointer,
            _lengths.Pointer, Count));

    [Benchmark(Description = "realn_interval_scatter 64x4 MiB")]
    [Work(Total, "GB/s", goal: 0.80)]
    public void RealnScatter() =>
        Native.Check(Native.realn_interval_scatter(_stream.Ptr, _flat.Pointer, _staging.Pointer, _offsets.Pointer,
            _lengths.Pointer, Count));

    [GlobalCleanup]
    public void Cleanup()
    {
        _flat.Dispose();
        _staging.Dispose();
        _dst.Dispose();
        _offsets.Dispose();
        _lengths.Dispose();
        _pool.Dispose();
        _stream.Dispose();
    }
}
