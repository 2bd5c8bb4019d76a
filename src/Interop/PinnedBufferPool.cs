// Pooled, pre-faulted host buffers for staging (reallocation, data transfer, workspaces), on
// Microsoft.Extensions.ObjectPool: one pool per power-of-two size class, so a lease of N bytes
// reuses a block of the next class up. Blocks that the pool does not retain are freed (the
// provider builds a disposing pool for IDisposable items), and disposing the pool frees all.
using Microsoft.Extensions.ObjectPool;

namespace ReaLNative.Interop;

public sealed class PinnedBufferPool : IDisposable
{
    private const int MinClass = 12;  // 4 KiB
    private const int MaxClass = 40;  // 1 TiB
    private readonly ObjectPool<HostBlock>?[] _pools = new ObjectPool<HostBlock>?[MaxClass + 1];
    private readonly int _retainPerClass;
    private readonly HostAllocFlags _flags;
    private long _allocations;
    private bool _disposed;

    public PinnedBufferPool(int retainPerClass = 4, HostAllocFlags flags = HostAllocFlags.Default | HostAllocFlags.Pinned)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(retainPerClass);
        _retainPerClass = retainPerClass;
        _flags = flags;
    }

    /// <summary>A process-wide pool for callers that do not manage their own.</summary>
    public static PinnedBufferPool Shared { get; } = new();

    /// <summary>Number of blocks allocated from the OS so far (a reuse shows as no increase).</summary>
    public long Allocations => Interlocked.Read(ref _allocations);

    /// <summary>Leases a buffer of at least <paramref name="count"/> elements. Dispose the lease to return it.</summary>
    public PinnedBuffer<T> Rent<T>(long count) where T : unmanaged
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(count);
        long bytes = checked(count * System.Runtime.CompilerServices.Unsafe.SizeOf<T>());
        int cls = Math.Max(MinClass, 64 - System.Numerics.BitOperations.LeadingZeroCount((ulong)(bytes - 1)));
        if (cls > MaxClass) throw new ArgumentOutOfRangeException(nameof(count), $"{bytes} bytes is larger than the pool's largest class");
        ObjectPool<HostBlock> pool = PoolFor(cls);
        HostBlock block = pool.Get();
        return new PinnedBuffer<T>(this, pool, block, count);
    }

    private ObjectPool<HostBlock> PoolFor(int cls)
    {
        ObjectPool<HostBlock>? p = Volatile.Read(ref _pools[cls]);
        if (p is not null) return p;
        var provider = new DefaultObjectPoolProvider { MaximumRetained = _retainPerClass };
        var created = provider.Create(new BlockPolicy(this, 1L << cls));
        return Interlocked.CompareExchange(ref _pools[cls], created, null) ?? created;
    }

    internal bool IsDisposed => _disposed;

    public void Dispose()
    {
        if (_disposed) return;
        _disposed = true;
        foreach (var p in _pools)
            (p as IDisposable)?.Dispose();
    }

    private sealed class BlockPolicy(PinnedBufferPool owner, long bytes) : IPooledObjectPolicy<HostBlock>
    {
        public HostBlock Create()
        {
            Interlocked.Increment(ref owner._allocations);
            return new HostBlock(bytes, owner._flags);
        }

        public bool Return(HostBlock obj) => !obj.IsDisposed && !owner._disposed;
    }
}

/// <summary>A lease of pooled host memory. Dispose returns it to its pool (exactly once).</summary>
public sealed unsafe class PinnedBuffer<T> : IDisposable where T : unmanaged
{
    private readonly PinnedBufferPool _owner;
    private readonly ObjectPool<HostBlock> _pool;
    private HostBlock? _block;

    internal PinnedBuffer(PinnedBufferPool owner, ObjectPool<HostBlock> pool, HostBlock block, long count)
    {
        _owner = owner;
        _pool = pool;
        _block = block;
        Length = count;
    }

    /// <summary>Elements requested (the block may be larger).</summary>
    public long Length { get; }

    public long Bytes => Length * sizeof(T);

    public T* Pointer => (T*)Block.Pointer;

    public Span<T> Span => Block.AsSpan<T>(Length);

    private HostBlock Block => _block ?? throw new ObjectDisposedException(nameof(PinnedBuffer<T>), "the lease was returned to its pool");

    public void Dispose()
    {
        HostBlock? b = Interlocked.Exchange(ref _block, null);
        if (b is null) return;
        if (_owner.IsDisposed) b.Dispose();
        else _pool.Return(b);
    }
}
