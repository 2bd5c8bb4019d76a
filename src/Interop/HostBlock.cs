// Page-aligned host memory from realn_host_alloc: pre-faulted (fresh pages cost ~3-4 us each on
// these machines, MACHINE.md), optionally page-locked and huge-page advised. Parameter buffers,
// activation workspaces and reallocation staging all live in HostBlocks; short-lived ones come
// from PinnedBufferPool so the fault cost is paid once per process.
using System.Runtime.InteropServices;

namespace ReaLNative.Interop;

[Flags]
public enum HostAllocFlags
{
    None = 0,
    Prefault = 1,
    Pinned = 2,
    HugePage = 4,
    /// <summary>A sealed memfd mapped shared: a process of this host maps it read-only
    /// (<see cref="SharedHostMemory"/>) and copies straight out of it; no transparent huge pages
    /// (HugePage is ignored). Freeing releases its pages even while another process maps it.</summary>
    Shared = 8,
    Default = Prefault | HugePage,
}

public sealed unsafe class HostBlock : IDisposable
{
    private readonly HostMemoryHandle _handle;

    public HostBlock(long bytes, HostAllocFlags flags = HostAllocFlags.Default)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(bytes);
        void* p;
        Native.Check(Native.realn_host_alloc(bytes, (int)flags, &p));
        _handle = new HostMemoryHandle((nint)p);
        Bytes = bytes;
    }

    public long Bytes { get; }

    public bool IsDisposed => _handle.IsClosed;

    public void* Pointer
    {
        get
        {
            ObjectDisposedException.ThrowIf(_handle.IsClosed, this);
            return (void*)_handle.DangerousGetHandle();
        }
    }

    /// <summary>Typed view of the first <paramref name="count"/> elements (default: all that fit).</summary>
    public Span<T> AsSpan<T>(long count = -1) where T : unmanaged
    {
        long max = Bytes / sizeof(T);
        if (count < 0) count = max;
        if (count > max || count > int.MaxValue)
            throw new ArgumentOutOfRangeException(nameof(count), $"{count} elements of {typeof(T).Name} exceed the block ({Bytes} bytes) or a span's int range");
        return new Span<T>(Pointer, (int)count);
    }

    /// <summary>Gives the block's pages back to the system, keeping its addresses (native
    /// realn_host_release): it reads as zeros and holds no memory until written; a
    /// <see cref="HostAllocFlags.Shared"/> block's pages go even where another process maps it.</summary>
    public void Release() => Native.Check(Native.realn_host_release(Pointer));

    /// <summary>Takes pages for the block again as its allocation did (2 MiB pages for a large shared
    /// block; touched where it was pre-faulted), keeping what it holds: after <see cref="Release"/>,
    /// before the block is refilled.</summary>
    public void Reacquire() => Native.Check(Native.realn_host_reacquire(Pointer));

    public void Dispose() => _handle.Dispose();

    private sealed class HostMemoryHandle : SafeHandle
    {
        public HostMemoryHandle(nint p) : base(0, ownsHandle: true) => SetHandle(p);
        public override bool IsInvalid => handle == 0;
        protected override bool ReleaseHandle() => Native.realn_host_free((void*)handle) == 0;
    }
}
