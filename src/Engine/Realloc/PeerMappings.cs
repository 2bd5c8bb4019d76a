using ReaLNative.Interop;

namespace ReaLNative.Engine.Realloc;

/// <summary>
/// The shared shard blocks of other processes of this host that a <see cref="TransportRealloc"/>
/// has mapped (<see cref="SharedHostMemory"/>: read-only, a sender's shard it reads; writable, a
/// receiver's destination shard it writes), kept between reallocations: mapping a
/// block costs a page-table entry per 4 KiB page on its first reads (about as long as copying the
/// block once), so a reallocation that mapped afresh every time would run at half speed. A block is
/// known by its owner's process id and its random token (a freed and reallocated buffer has a new
/// one). Lifetime:
/// - an entry is used only between the owner's announcement of the block (at the start of a
///   reallocation) and this process's "done" (the owner does not return from the reallocation,
///   and so neither writes nor frees the block, before every reader said done); a writable entry
///   only between a receiver's announcement of its destination and this process's word that it
///   wrote it (the receiver neither reads nor frees its destination before that word);
/// - a lease (<see cref="Acquire"/>) pins an entry while a copy runs; only unleased entries are unmapped;
/// - entries of processes that have exited are unmapped at the next <see cref="Sweep"/> (the start
///   of each reallocation), all entries after a failed reallocation (<see cref="DropUnused"/>),
///   the least recently used beyond <see cref="MaxEntries"/>, and all at <see cref="Dispose"/>;
/// - an owner that frees a block releases its pages at once, mapped or not (native
///   realn_host_free punches the memfd), so a stale entry holds address space, not memory.
/// The pages read through a mapping count in this process's resident set (RssShmem) as well as
/// in the owner's, though they exist once: <see cref="MappedBytes"/> says how much is mapped, and
/// TransportRealloc drops its page-table entries of a block as it copies (ReleasePeerPages), so
/// that a mapped block holds address space between reallocations, not resident pages.
/// </summary>
internal sealed class PeerMappings : IDisposable
{
    internal sealed class Entry
    {
        public required int Pid;
        public required ulong Token;
        public required bool Writable;
        public required nint Base;
        public required long Size;
        public long LastUse;
        public int Leases;
    }

    private readonly object _lock = new();
    private readonly Dictionary<(int Pid, ulong Token, bool Writable), Entry> _entries = [];
    private long _clock;
    private bool _disposed;

    /// <summary>Most blocks kept mapped; beyond it the least recently used unleased ones go.</summary>
    public const int MaxEntries = 64;

    /// <summary>Bytes of other processes' blocks mapped now.</summary>
    public long MappedBytes { get { lock (_lock) return _entries.Values.Sum(e => e.Size); } }

    public int Count { get { lock (_lock) return _entries.Count; } }

    /// <summary>A mapped block held while a copy reads it; dispose when the copy is done.</summary>
    public sealed class Lease : IDisposable
    {
        private PeerMappings? _owner;
        private readonly Entry _entry;
        internal Lease(PeerMappings owner, Entry entry) { _owner = owner; _entry = entry; }

        /// <summary>The mapped block's base (the announced pointer is Base + descriptor Offset).</summary>
        public nint Base => _entry.Base;

        public void Dispose()
        {
            var o = Interlocked.Exchange(ref _owner, null);
            if (o is null) return;
            lock (o._lock) _entry.Leases--;
        }
    }

    /// <summary>The block process <paramref name="pid"/> announced, mapped now or earlier: read-only,
    /// or for reading and writing (<paramref name="writable"/>: a receiver's destination shard that
    /// this process writes, kept apart from read-only mappings of the same block). Throws what
    /// <see cref="SharedHostMemory.Map"/> throws.</summary>
    public Lease Acquire(int pid, SharedHostMemory.Descriptor d, bool writable = false)
    {
        var key = (pid, d.Token, writable);
        lock (_lock)
        {
            ObjectDisposedException.ThrowIf(_disposed, this);
            if (_entries.TryGetValue(key, out var e) && e.Size == d.Size)
            {
                e.LastUse = ++_clock;
                e.Leases++;
                return new Lease(this, e);
            }
        }
        // Mapped outside the lock (it reads the other process's /proc entries).
        nint b = writable ? SharedHostMemory.MapWritable(pid, d) : SharedHostMemory.Map(pid, d);
        lock (_lock)
        {
            if (_disposed || _entries.ContainsKey(key))
            {
                // Disposed meanwhile, or another thread mapped the same block first: keep one.
                SharedHostMemory.Unmap(b, d.Size);
                ObjectDisposedException.ThrowIf(_disposed, this);
                var other = _entries[key];
                other.LastUse = ++_clock;
                other.Leases++;
                return new Lease(this, other);
            }
            var e = new Entry { Pid = pid, Token = d.Token, Writable = writable, Base = b, Size = d.Size, LastUse = ++_clock, Leases = 1 };
            _entries[key] = e;
            while (_entries.Count > MaxEntries)
            {
                var victim = _entries.Values.Where(x => x.Leases == 0).MinBy(x => x.LastUse);
                if (victim is null) break;
                Remove(victim);
            }
            return new Lease(this, e);
        }
    }

    /// <summary>Unmaps the unleased blocks of processes that have exited.</summary>
    public void Sweep()
    {
        lock (_lock)
            foreach (var e in _entries.Values.Where(e => e.Leases == 0 && !Alive(e.Pid)).ToList()) Remove(e);
    }

    /// <summary>Unmaps every unleased block (after a failed reallocation: a peer may have died).</summary>
    public void DropUnused()
    {
        lock (_lock)
            foreach (var e in _entries.Values.Where(e => e.Leases == 0).ToList()) Remove(e);
    }

    private static bool Alive(int pid) => Directory.Exists($"/proc/{pid}");

    private void Remove(Entry e)
    {
        _entries.Remove((e.Pid, e.Token, e.Writable));
        SharedHostMemory.Unmap(e.Base, e.Size);
    }

    /// <summary>Unmaps everything; a lease still held (a copy still running after a failure) keeps
    /// its block mapped for good rather than let the copy touch unmapped memory.</summary>
    public void Dispose()
    {
        lock (_lock)
        {
            if (_disposed) return;
            _disposed = true;
            foreach (var e in _entries.Values.Where(e => e.Leases == 0).ToList()) Remove(e);
            _entries.Clear();
        }
    }
}
