// The interop layer's contract: native failures surface as RealnException with the native text,
// every handle is released exactly once (and children keep parents alive), pooled buffers are
// reused, and misuse (bad sizes, disposed objects, null) gives a clear managed exception rather
// than a crash.
using System.Runtime.InteropServices;
using System.Text.Json;
using ReaLNative.Interop;
using Xunit;

namespace ReaLNative.Interop.Tests;

public unsafe class ErrorTests
{
    [Fact]
    public void NullArgumentBecomesExceptionWithNativeMessage()
    {
        using var s = NativeStream.Cpu();
        float w = 1, y = 0;
        int st = Native.realn_op_rmsnorm_fwd(s.Ptr, DType.F32, null, &w, &y, null, 1, 1, 1e-5f);
        var ex = Assert.Throws<RealnException>(() => Native.Check(st));
        Assert.Equal(RealnStatus.InvalidArgument, ex.Status);
        Assert.Contains("x must not be NULL", ex.NativeMessage);
        Assert.Contains("realn_op_rmsnorm_fwd", ex.Message);
    }

    [Fact]
    public void UnsupportedDtypeNamesBackendAndDtype()
    {
        using var s = NativeStream.Cpu();
        float x = 1;
        // The CPU backend runs bf16 weights for gemm / linear / embedding_fwd / rmsnorm_fwd only.
        int st = Native.realn_op_swiglu_fwd(s.Ptr, DType.BF16, &x, &x, 1, &x, 1, 1, 1);
        var ex = Assert.Throws<RealnException>(() => Native.Check(st));
        Assert.Equal(RealnStatus.Unsupported, ex.Status);
        Assert.Contains("cpu", ex.NativeMessage);
        Assert.Contains("bf16", ex.NativeMessage);
        Assert.Contains("swiglu", ex.NativeMessage);
        // F16 is on no op of the CPU backend.
        st = Native.realn_op_gemm(s.Ptr, DType.F16, 0, 0, 1, 1, 1, 1, &x, 1, 0, &x, 1, 0, 0, &x, 1, 0, 1);
        ex = Assert.Throws<RealnException>(() => Native.Check(st));
        Assert.Equal(RealnStatus.Unsupported, ex.Status);
        Assert.Contains("f16", ex.NativeMessage);
    }

    [Fact]
    public void MissingDeviceIsNotFound()
    {
        var ex = Assert.Throws<RealnException>(() => NativeStream.Create(Backend.Cpu, 5));
        Assert.Equal(RealnStatus.NotFound, ex.Status);
        Assert.Contains("device 5", ex.NativeMessage);
        if (!Native.BackendAvailable(Backend.Cuda))
            Assert.Throws<RealnException>(() => NativeStream.Create(Backend.Cuda));
    }

    [Fact]
    public void ErrorsAreThreadLocal()
    {
        using var s = NativeStream.Cpu();
        string? other = null;
        var t = new Thread(() =>
        {
            Native.realn_stream_create(99, 0, null);
            other = Native.LastError();
        });
        t.Start();
        t.Join();
        float w = 1, y = 0;
        int st = Native.realn_op_rmsnorm_fwd(s.Ptr, DType.F32, null, &w, &y, null, 1, 1, 1e-5f);
        Assert.Throws<RealnException>(() => Native.Check(st));
        Assert.Contains("x must not be NULL", Native.LastError());
        Assert.Contains("stream_create", other);
    }

    [Fact]
    public void CaseListLivesInTheSelfTestLibraryNotInLibrealn()
    {
        Assert.Contains("interval", Native.SelfTest(Backend.Cpu, "interval"));
        nint realn = NativeLibrary.Load(NativeLibraryResolver.LoadedFrom!);
        Assert.False(NativeLibrary.TryGetExport(realn, "realn_selftest_run", out _), "librealn.so must not export the op cases");
        Assert.True(NativeLibrary.TryGetExport(realn, "realn_op_gemm", out _));
        string beside = Path.Combine(Path.GetDirectoryName(NativeLibraryResolver.LoadedFrom!)!, "librealn_selftest.so");
        Assert.Equal(beside, NativeLibraryResolver.SelfTestCandidates()[0]);
        nint selfTest = NativeLibrary.Load(beside);
        Assert.True(NativeLibrary.TryGetExport(selfTest, "realn_selftest_run", out _));
    }

    [Fact]
    public void LibraryResolvedAndDescribed()
    {
        Assert.Contains("cpu", Native.BuildInfo());
        Assert.NotNull(NativeLibraryResolver.LoadedFrom);
        Assert.Contains(NativeLibraryResolver.Candidates(), c => c.EndsWith("librealn.so"));
        int maj, min, pat;
        Native.Check(Native.realn_version(&maj, &min, &pat));
        Assert.Equal(0, maj);
    }
}

public unsafe class HandleTests
{
    [Fact]
    public void StreamDisposeIsIdempotentAndUseAfterDisposeThrows()
    {
        var s = NativeStream.Cpu();
        s.Dispose();
        s.Dispose();
        Assert.Throws<ObjectDisposedException>(() => s.Ptr);
        Assert.Throws<ObjectDisposedException>(() => s.Synchronize());
    }

    [Fact]
    public void BufferKeepsItsStreamAlive()
    {
        var s = NativeStream.Cpu();
        var buf = new DeviceBuffer(s, 1024);
        s.Dispose();  // the buffer still holds a reference: the native stream is not destroyed yet
        Assert.False(s.Handle.IsClosed && s.Handle.IsInvalid);
        new Span<byte>(buf.Pointer, 1024).Fill(7);
        buf.Dispose();  // releases the buffer, then the stream
        buf.Dispose();
        Assert.True(s.Handle.IsClosed);
        Assert.Throws<ObjectDisposedException>(() => { _ = (nint)buf.Pointer; });
    }

    [Fact]
    public void HostBlockIsAlignedPrefaultedAndFreedOnce()
    {
        var b = new HostBlock(3 << 20);
        Assert.Equal(0, (long)b.Pointer % (2 << 20));
        var span = b.AsSpan<float>();
        Assert.Equal((3 << 20) / 4, span.Length);
        span.Fill(1.5f);
        Assert.Equal(1.5f, span[^1]);
        b.Dispose();
        b.Dispose();
        Assert.True(b.IsDisposed);
        Assert.Throws<ObjectDisposedException>(() => b.AsSpan<float>());
    }

    [Fact]
    public void BadSizesAreRejectedClearly()
    {
        Assert.Throws<ArgumentOutOfRangeException>(() => new HostBlock(0));
        using var b = new HostBlock(4096);
        var ex = Assert.Throws<ArgumentOutOfRangeException>(() => b.AsSpan<double>(513));
        Assert.Contains("exceed", ex.Message);
        using var s = NativeStream.Cpu();
        Assert.Throws<ArgumentOutOfRangeException>(() => new DeviceBuffer(s, -1));
        var nat = Assert.Throws<RealnException>(() => Native.Check(Native.realn_host_alloc(-5, 0, null)));
        Assert.Contains("must not be NULL", nat.NativeMessage);
    }

    [Fact]
    public void NativeDoubleFreeIsCaughtNotCrashed()
    {
        void* p;
        Native.Check(Native.realn_host_alloc(8192, 0, &p));
        Native.Check(Native.realn_host_free(p));
        int st = Native.realn_host_free(p);
        var ex = Assert.Throws<RealnException>(() => Native.Check(st));
        Assert.Contains("was not returned by realn_host_alloc", ex.NativeMessage);
    }
}

public unsafe class PoolTests
{
    [Fact]
    public void ReturnedBuffersAreReused()
    {
        using var pool = new PinnedBufferPool(retainPerClass: 2, flags: HostAllocFlags.Prefault);
        nint first;
        using (var a = pool.Rent<float>(1000))
        {
            first = (nint)a.Pointer;
            a.Span.Fill(3f);
            Assert.Equal(1000, a.Span.Length);
        }
        using (var b = pool.Rent<float>(900))  // same 4 KiB size class
        {
            Assert.Equal(first, (nint)b.Pointer);
        }
        Assert.Equal(1, pool.Allocations);
        using var c = pool.Rent<float>(1000);
        using var d = pool.Rent<float>(1000);  // two outstanding: a second block
        Assert.NotEqual((nint)c.Pointer, (nint)d.Pointer);
        Assert.Equal(2, pool.Allocations);
    }

    [Fact]
    public void SizeClassesSeparateLargeAndSmall()
    {
        using var pool = new PinnedBufferPool(flags: HostAllocFlags.None);
        using var small = pool.Rent<byte>(100);
        using var big = pool.Rent<byte>(5 << 20);
        Assert.Equal(5 << 20, big.Span.Length);
        Assert.Equal(2, pool.Allocations);
    }

    [Fact]
    public void LeaseDisposeIsIdempotentAndUseAfterReturnThrows()
    {
        using var pool = new PinnedBufferPool(flags: HostAllocFlags.None);
        var a = pool.Rent<int>(10);
        a.Dispose();
        a.Dispose();
        Assert.Throws<ObjectDisposedException>(() => a.Span.Length);
        using var b = pool.Rent<int>(10);
        using var c = pool.Rent<int>(10);
        Assert.NotEqual((nint)b.Pointer, (nint)c.Pointer);  // a was returned once, not twice
        Assert.Throws<ArgumentOutOfRangeException>(() => pool.Rent<int>(0));
    }

    [Fact]
    public void DisposedPoolRefusesAndFreesLateReturns()
    {
        var pool = new PinnedBufferPool(flags: HostAllocFlags.None);
        var lease = pool.Rent<byte>(64);
        pool.Dispose();
        Assert.Throws<ObjectDisposedException>(() => pool.Rent<byte>(64));
        lease.Dispose();  // freed, not returned to a dead pool
    }
}

public unsafe class OpTests
{
    [Fact]
    public void GemmThroughInteropMatchesManagedReference()
    {
        using var s = NativeStream.Cpu();
        const int m = 5, n = 7, k = 9;
        var rng = new Random(3);
        float[] a = Enumerable.Range(0, m * k).Select(_ => (float)rng.NextDouble() - 0.5f).ToArray();
        float[] b = Enumerable.Range(0, k * n).Select(_ => (float)rng.NextDouble() - 0.5f).ToArray();
        float[] c = new float[m * n];
        fixed (float* pa = a, pb = b, pc = c)
            Native.Check(Native.realn_op_gemm(s.Ptr, DType.F32, 0, 0, m, n, k, 1f, pa, k, 0, pb, n, 0, 0f, pc, n, 0, 1));
        for (int i = 0; i < m; i++)
            for (int j = 0; j < n; j++)
            {
                double r = 0;
                for (int p = 0; p < k; p++) r += (double)a[i * k + p] * b[p * n + j];
                Assert.True(Math.Abs(r - c[i * n + j]) <= 1e-5 * (1 + Math.Abs(r)), $"c[{i},{j}] = {c[i * n + j]}, expected {r}");
            }
    }

    [Fact]
    public void IntervalRoundTripIsBitExactAndHashAgrees()
    {
        using var s = NativeStream.Cpu();
        var rng = new Random(5);
        byte[] flat = new byte[10000];
        rng.NextBytes(flat);
        long[] off = [3, 100, 4000, 9990];
        long[] len = [50, 1, 3000, 10];
        byte[] staging = new byte[len.Sum()];
        byte[] back = new byte[flat.Length];
        fixed (byte* pf = flat, ps = staging, pb = back)
        fixed (long* po = off, pl = len)
        {
            Native.Check(Native.realn_interval_gather(s.Ptr, ps, pf, po, pl, off.Length));
            Native.Check(Native.realn_interval_scatter(s.Ptr, pb, ps, po, pl, off.Length));
            for (int i = 0; i < off.Length; i++)
                Assert.True(flat.AsSpan((int)off[i], (int)len[i]).SequenceEqual(back.AsSpan((int)off[i], (int)len[i])));
            Assert.Equal(Native.Hash(s, pf, flat.Length), Native.Hash(s, pf, flat.Length));
            Assert.NotEqual(Native.Hash(s, pf, flat.Length), Native.Hash(s, pb, back.Length));
        }
    }

    [Fact]
    public void SelfTestReportsJson()
    {
        string json = Native.SelfTest(Backend.Cpu, "interval");
        using var doc = JsonDocument.Parse(json);
        Assert.Equal("cpu", doc.RootElement.GetProperty("backend").GetString());
        var ops = doc.RootElement.GetProperty("ops").EnumerateArray().ToList();
        Assert.NotEmpty(ops);
        Assert.All(ops, o => Assert.True(o.GetProperty("passed").GetBoolean(), o.ToString()));
    }

    [Fact]
    public void ThreadCountCanBeSetAndRestored()
    {
        int before = Native.GetNumThreads();
        Native.SetNumThreads(1);
        Assert.Equal(1, Native.GetNumThreads());
        Native.SetNumThreads(0);
        Assert.Equal(before, Native.GetNumThreads());
    }
}
