using ReaLNative.Interop;

namespace ReaLNative.Engine.Transport;

/// <summary>
/// Wakes a <see cref="UcxTransport"/>'s progress thread the moment a process of the same host gave it
/// something to do, instead of at the end of its nap. Without the spin (the cores busy with compute,
/// <see cref="UcxTransportOptions.SkipSpin"/>) a progress thread with operations in flight polls UCX,
/// then naps 1 ms (<see cref="UcxTransportOptions.PendingNap"/>), and UCX's shared-memory lanes have no
/// event to wake it: every message between two local processes waited for the receiver's nap, and a
/// rendezvous send for the sender's too. A push between processes waits on two such messages (the
/// receivers' destinations, then the sender's "written"): traced in `realn bench realloc` (session 23),
/// the sender saw its receivers' announcements 0.03-3.7 ms after they were sent, and the receivers its
/// word 0.2-1.2 ms after. Between two transports with the spin off, the median message took 0.41 ms
/// (8 bytes) and 1.41 ms (1 MiB, rendezvous) without doorbells, 0.09 and 0.25 ms with them.
///
/// Each transport owns a 4 KiB shared block (<see cref="HostAllocFlags.Shared"/>): word 0 counts rings,
/// word 1 says whether its thread sleeps. Its rank's address carries the block's descriptor
/// (<see cref="ProcessHeader"/>); every local peer that may open it (<see cref="SharedHostMemory.MapWritable"/>:
/// same user, ptrace rules) maps it. <see cref="Ring"/> counts one ring and, only where the owner sleeps,
/// wakes it with the shared futex (one system call); <see cref="Sleep"/> says it sleeps, reads the count,
/// looks for work once more and sleeps while the count is unchanged, at most the nap. Both sides write
/// their word and then read the other's with a full fence between (Interlocked), so a ring either
/// comes before the sleeper's last look for work or finds it asleep and wakes it: no ring is lost, and
/// the nap stays the bound when a peer cannot ring (another host, a peer whose block could not be mapped,
/// UCX's internal messages that no operation here stands for).
/// </summary>
internal sealed unsafe class Doorbell : IDisposable
{
    private const int BlockBytes = 4096;
    private readonly HostBlock _block;
    private readonly int* _own;          // [0] rings, [1] sleeping
    private int*[] _peers = [];          // each local peer's words, null where none
    private readonly List<(nint Base, long Size)> _mappings = [];
    private bool _disposed;

    private Doorbell(HostBlock block, SharedHostMemory.Descriptor d)
    {
        _block = block;
        _own = (int*)block.Pointer;
        Descriptor = d;
    }

    /// <summary>This process's block: what a peer maps.</summary>
    public SharedHostMemory.Descriptor Descriptor { get; }

    /// <summary>A doorbell in a new shared block; null where this host has none (not Linux, no memfd).</summary>
    public static Doorbell? TryCreate()
    {
        if (!OperatingSystem.IsLinux()) return null;
        HostBlock? b = null;
        try
        {
            b = new HostBlock(BlockBytes, HostAllocFlags.Shared);
            if (SharedHostMemory.Describe((nint)b.Pointer) is not { } d) { b.Dispose(); return null; }
            new Span<byte>(b.Pointer, BlockBytes).Clear();
            return new Doorbell(b, d);
        }
        catch (RealnException)
        {
            b?.Dispose();
            return null;
        }
    }

    /// <summary>Maps the blocks of the peers that are processes of this host (<paramref name="peers"/>[rank]:
    /// its pid and block, null for a peer elsewhere, without a doorbell, or this rank itself). A peer whose
    /// block cannot be opened or is not the one described stays without (its messages wait for the nap, as
    /// before). Returns how many peers can be rung.</summary>
    public int Attach(IReadOnlyList<(int Pid, SharedHostMemory.Descriptor Block)?> peers)
    {
        var words = new int*[peers.Count];
        int n = 0;
        for (int r = 0; r < peers.Count; r++)
        {
            if (peers[r] is not { } p) continue;
            if (p.Block.Size < BlockBytes || p.Block.Offset < 0 || p.Block.Offset > p.Block.Size - 8) continue;
            nint at;
            try { at = SharedHostMemory.MapWritable(p.Pid, p.Block); }
            catch (RealnException) { continue; }
            _mappings.Add((at, p.Block.Size));
            words[r] = (int*)(at + (nint)p.Block.Offset);
            n++;
        }
        _peers = words;
        return n;
    }

    /// <summary>Rings peer <paramref name="rank"/>'s doorbell, if it has one here.</summary>
    public void Ring(int rank)
    {
        var w = (uint)rank < (uint)_peers.Length ? _peers[rank] : null;
        if (w is not null) RingWord(w);
    }

    /// <summary>Rings this process's own doorbell (an operation posted by another thread here); nothing
    /// once disposed (a cancellation may still kick a disposed transport).</summary>
    public void RingSelf()
    {
        lock (_gate)
            if (!_disposed) RingWord(_own);
    }
    private readonly object _gate = new();

    private static void RingWord(int* w)
    {
        Interlocked.Increment(ref w[0]);
        if (Volatile.Read(ref w[1]) != 0) SharedHostMemory.FutexWake((nint)w);
    }

    /// <summary>Sleeps at most <paramref name="timeoutMs"/> ms unless rung, where <paramref name="work"/>,
    /// asked after this thread said it sleeps, finds nothing to do. The owner's progress thread only.</summary>
    public void Sleep(int timeoutMs, Func<bool> work)
    {
        Volatile.Write(ref _own[1], 1);
        Interlocked.MemoryBarrier();
        int rings = Volatile.Read(ref _own[0]);
        try
        {
            if (!work()) SharedHostMemory.FutexWait((nint)_own, rings, Math.Max(1, timeoutMs) * 1000L);
        }
        finally { Volatile.Write(ref _own[1], 0); }
    }

    /// <summary>After the owner's progress thread stopped: unmaps the peers' blocks, frees its own.</summary>
    public void Dispose()
    {
        lock (_gate)
        {
            if (_disposed) return;
            _disposed = true;
        }
        _peers = [];
        foreach (var (b, size) in _mappings)
        {
            try { SharedHostMemory.Unmap(b, size); }
            catch (RealnException) { }   // nothing to give back then
        }
        _mappings.Clear();
        _block.Dispose();
    }
}
