// Owning wrappers of native handles: a SafeHandle per handle type so every handle is freed
// exactly once (also from the finalizer if a caller forgets), and a child (a buffer) keeps its
// parent stream alive with DangerousAddRef, as LLamaSharp's context handle does.
using System.Runtime.InteropServices;

namespace ReaLNative.Interop;

/// <summary>realn_stream_t.</summary>
public sealed class StreamHandle : SafeHandle
{
    public StreamHandle() : base(0, ownsHandle: true) { }
    public override bool IsInvalid => handle == 0;
    protected override bool ReleaseHandle() => Native.realn_stream_destroy(handle) == 0;
    internal void Set(nint h) => SetHandle(h);
}

/// <summary>A stream of a backend device: every op and copy runs on one.</summary>
public sealed unsafe class NativeStream : IDisposable
{
    private readonly StreamHandle _handle;

    private NativeStream(StreamHandle handle, Backend backend, int device)
    {
        _handle = handle;
        Backend = backend;
        Device = device;
    }

    public Backend Backend { get; }
    public int Device { get; }

    /// <summary>Raw realn_stream_t for op calls. Throws if the stream was disposed.</summary>
    public nint Ptr
    {
        get
        {
            ObjectDisposedException.ThrowIf(_handle.IsClosed, this);
            return _handle.DangerousGetHandle();
        }
    }

    public StreamHandle Handle => _handle;

    public static NativeStream Create(Backend backend, int device = 0)
    {
        nint raw;
        Native.Check(Native.realn_stream_create((int)backend, device, &raw));
        var h = new StreamHandle();
        h.Set(raw);
        return new NativeStream(h, backend, device);
    }

    public static NativeStream Cpu() => Create(Backend.Cpu, 0);

    public void Synchronize() => Native.Check(Native.realn_stream_synchronize(Ptr));

    public void Dispose() => _handle.Dispose();
}

/// <summary>realn_buf_t: backend memory owned by its handle.</summary>
public sealed unsafe class DeviceBuffer : IDisposable
{
    private readonly BufferHandle _handle;

    public DeviceBuffer(NativeStream stream, long bytes)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(bytes);
        _handle = new BufferHandle(stream.Handle);
        nint raw;
        Native.Check(Native.realn_buf_alloc(stream.Ptr, bytes, &raw));
        _handle.Set(raw);
        void* p;
        Native.Check(Native.realn_buf_ptr(raw, &p));
        Pointer = p;
        Bytes = bytes;
        Stream = stream;
    }

    public NativeStream Stream { get; }
    public long Bytes { get; }

    /// <summary>Address in the stream's memory space (host memory for the CPU backend).</summary>
    public void* Pointer
    {
        get
        {
            ObjectDisposedException.ThrowIf(_handle.IsClosed, this);
            return field;
        }
    }

    public void Dispose() => _handle.Dispose();

    private sealed class BufferHandle : SafeHandle
    {
        private readonly StreamHandle _parent;
        private bool _addedRef;

        public BufferHandle(StreamHandle parent) : base(0, ownsHandle: true)
        {
            _parent = parent;
            _parent.DangerousAddRef(ref _addedRef);  // the stream outlives its buffers
        }

        public override bool IsInvalid => handle == 0;

        internal void Set(nint h) => SetHandle(h);

        protected override bool ReleaseHandle()
        {
            bool ok = Native.realn_buf_free(handle) == 0;
            if (_addedRef) _parent.DangerousRelease();
            return ok;
        }
    }
}
