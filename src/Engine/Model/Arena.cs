using ReaLNative.Interop;

namespace ReaLNative.Engine.Model;

/// <summary>
/// Bump allocator over one pre-faulted host block, reset per forward pass: activations and
/// backward scratch live here, so a training step allocates nothing once the arena has grown to
/// the largest batch seen (fresh pages are slow to touch on these machines). The block comes from
/// this process's <see cref="ArenaBlocks"/> and goes back there when it grows or is
/// <see cref="Release"/>d, so models whose calls run one after another (a worker process's
/// replicas) reuse one set of pre-faulted blocks instead of each keeping its own.
/// </summary>
internal sealed unsafe class Arena : IDisposable
{
    private HostBlock? _block;
    private long _used;
    /// <summary>The capacity of the last block this arena held, kept across <see cref="Release"/>: an arena that
    /// outgrows it allocates half as much again (as one that had kept its block), so a need that creeps up from one
    /// call to the next (a rollout's tokens vary) allocates a few times, not at every new maximum.</summary>
    private long _lastCapacityFloats;

    public long CapacityFloats => _block is null ? 0 : _block.Bytes / 4;

    /// <summary>Bytes of the block this arena holds (0 once released).</summary>
    public long HeldBytes => _block?.Bytes ?? 0;

    /// <summary>Makes room for <paramref name="floats"/> in total and resets; pointers handed out
    /// before are invalid afterwards.</summary>
    public void Reset(long floats)
    {
        if (CapacityFloats < floats)
        {
            long grown = (floats > _lastCapacityFloats ? Math.Max(floats, _lastCapacityFloats * 3 / 2) : floats) * 4 + 64;
            if (_block is { } old) ArenaBlocks.Return(old);
            _block = null;
            _block = ArenaBlocks.Take(floats * 4 + 64, grown);
            _lastCapacityFloats = CapacityFloats;
        }
        _used = 0;
    }

    public float* Take(long floats)
    {
        long n = (floats + 15) & ~15L;  // 64-byte alignment
        if (_block is null || _used + n > CapacityFloats)
            throw new InvalidOperationException($"activation arena overflow: need {_used + n} floats, have {CapacityFloats}");
        float* p = (float*)_block.Pointer + _used;
        _used += n;
        return p;
    }

    /// <summary>Gives the block back to <see cref="ArenaBlocks"/> (pointers handed out before are
    /// invalid afterwards); the next <see cref="Reset"/> takes one again.</summary>
    public void Release()
    {
        if (_block is { } b) ArenaBlocks.Return(b);
        _block = null;
        _used = 0;
    }

    public void Dispose() => Release();
}

/// <summary>
/// The pre-faulted host blocks of this process's activation arenas that no arena holds now, for
/// the next arena that needs one: a worker process runs its replicas' calls one at a time, and
/// each replica keeping the arenas of its largest call (released only with the replica) made a
/// worker hold the sum of its replicas' activations instead of the largest call's (session 19:
/// 0.6 GB of a 2.6 GB gpt2-small PPO worker, against 0.35 GB of activations in the planner's
/// estimate). <see cref="Take"/> hands out the smallest free block that fits; where none does it
/// frees the largest free block (too small for this call, and so likely for the next) before
/// allocating, so the free blocks never outnumber those the largest call used at once.
/// </summary>
internal static class ArenaBlocks
{
    private static readonly object s_lock = new();
    private static readonly List<HostBlock> s_free = [];
    private static long s_freeBytes, s_allocatedBytes;

    /// <summary>Bytes of the blocks no arena holds now.</summary>
    public static long FreeBytes { get { lock (s_lock) return s_freeBytes; } }

    /// <summary>Bytes of every arena block of this process, held by an arena or free.</summary>
    public static long AllocatedBytes { get { lock (s_lock) return s_allocatedBytes; } }

    /// <summary>The most <see cref="AllocatedBytes"/> has been in this process.</summary>
    public static long PeakAllocatedBytes { get { lock (s_lock) return s_peakBytes; } }
    private static long s_peakBytes;

    /// <summary>A free block of at least <paramref name="minBytes"/> (the smallest such), else a new
    /// pre-faulted one of <paramref name="newBytes"/> (at least <paramref name="minBytes"/>).</summary>
    public static HostBlock Take(long minBytes, long newBytes)
    {
        HostBlock? tooSmall = null;
        lock (s_lock)
        {
            HostBlock? best = null;
            foreach (var b in s_free)
                if (b.Bytes >= minBytes && (best is null || b.Bytes < best.Bytes)) best = b;
            if (best is not null)
            {
                s_free.Remove(best);
                s_freeBytes -= best.Bytes;
                return best;
            }
            if (s_free.Count > 0)
            {
                tooSmall = s_free.MaxBy(b => b.Bytes)!;
                s_free.Remove(tooSmall);
                s_freeBytes -= tooSmall.Bytes;
                s_allocatedBytes -= tooSmall.Bytes;
            }
        }
        // Fresh pages are faulted in here: on the calling thread's threads and off the clock of the unit of model work
        // it falls in (ThreadChoice.OffTheClock).
        var block = ThreadChoice.OffTheClock(() =>
        {
            tooSmall?.Dispose();
            return new HostBlock(Math.Max(minBytes, newBytes));
        });
        lock (s_lock)
        {
            s_allocatedBytes += block.Bytes;
            s_peakBytes = Math.Max(s_peakBytes, s_allocatedBytes);
        }
        return block;
    }

    /// <summary>Frees every block no arena holds (a worker process before it allocates a replica's
    /// shards, e.g. a checkpoint's temporary writers: the activations of the last call are not
    /// needed meanwhile); returns the bytes freed.</summary>
    public static long Trim()
    {
        List<HostBlock> free;
        lock (s_lock)
        {
            free = [.. s_free];
            s_free.Clear();
            s_allocatedBytes -= s_freeBytes;
            s_freeBytes = 0;
        }
        foreach (var b in free) b.Dispose();
        return free.Sum(b => b.Bytes);
    }

    /// <summary>Puts a block an arena no longer holds back for the next <see cref="Take"/>.</summary>
    public static void Return(HostBlock block)
    {
        lock (s_lock)
        {
            s_free.Add(block);
            s_freeBytes += block.Bytes;
        }
    }
}
