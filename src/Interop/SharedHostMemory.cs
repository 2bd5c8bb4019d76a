// Host memory shared between processes of one host (HostAllocFlags.Shared, native
// host_memory.cpp): the owner describes a pointer inside one of its shared blocks, another process
// maps the whole block from that description and copies out of it (or, writable, into it). The host-memory
// counterpart of CUDA IPC handles.
namespace ReaLNative.Interop;

public static unsafe class SharedHostMemory
{
    /// <summary>Where a pointer sits in a shared block of the process that described it: the
    /// block's memfd descriptor number in that process, the pointer's offset in the block, the
    /// block's size and its token (random, checked by <see cref="Map"/>).</summary>
    public readonly record struct Descriptor(int Fd, long Offset, long Size, ulong Token);

    /// <summary>The descriptor of <paramref name="pointer"/> when it lies in a shared block of this
    /// process, else null.</summary>
    public static Descriptor? Describe(nint pointer)
    {
        int fd;
        long offset, size;
        ulong token;
        Native.Check(Native.realn_host_shared_info((void*)pointer, &fd, &offset, &size, &token));
        return fd < 0 ? null : new Descriptor(fd, offset, size, token);
    }

    /// <summary>Maps, read-only, the block process <paramref name="pid"/> of this host described;
    /// returns its base (the described pointer is base + Offset). The mapping keeps the memory
    /// alive until <see cref="Unmap"/>, even after that process exits. Throws
    /// <see cref="RealnException"/>: status Unsupported when this process may not open the other's
    /// descriptors, NotFound when the process or block is gone or is not the one described.</summary>
    public static nint Map(int pid, Descriptor d)
    {
        void* p;
        Native.Check(Native.realn_shared_map(pid, d.Fd, d.Token, d.Size, &p));
        return (nint)p;
    }

    /// <summary><see cref="Map"/>, mapped for reading and writing: a reallocation's sender writes a
    /// receiver's destination shard this way (the receiver reads it only after the sender's word).
    /// Throws as <see cref="Map"/>.</summary>
    public static nint MapWritable(int pid, Descriptor d)
    {
        void* p;
        Native.Check(Native.realn_shared_map_writable(pid, d.Fd, d.Token, d.Size, &p));
        return (nint)p;
    }

    /// <summary>Drops this process's resident pages of [<paramref name="from"/>, <paramref name="to"/>)
    /// inside a block mapped with <see cref="Map"/> or <see cref="MapWritable"/> at
    /// <paramref name="baseAddress"/> (<paramref name="size"/> bytes), widened to whole pages and
    /// clipped to the block: they stop counting in this process's resident set (they are the
    /// owner's memory, counted there), their contents stay, a later access maps them again. Widened
    /// to whole 2 MiB pages: the blocks lie in transparent huge pages, and dropping part of one
    /// splits its mapping into 4 KiB entries, which a later copy faults in one by one (cross-process
    /// reallocation at 0.69-0.93 of its reference against 0.88-1.03 kept, `realn bench realloc`).</summary>
    public static void ReleasePages(nint baseAddress, long size, nint from, nint to) =>
        DropWithin(baseAddress, size, (long)from & ~(HugePage - 1), ((long)to + HugePage - 1) & ~(HugePage - 1));

    private const long HugePage = 2L << 20;

    private static void DropWithin(nint baseAddress, long size, long lo, long hi)
    {
        lo = Math.Max((long)baseAddress, lo);
        hi = Math.Min((long)baseAddress + size, hi);
        if (hi > lo) Posix.DropPageTableEntries((nint)lo, hi - lo);
    }

    /// <summary>Sleeps while the 32-bit word at <paramref name="word"/> (in a shared block, or a mapping
    /// of one) equals <paramref name="expected"/>, at most <paramref name="timeoutUs"/> microseconds;
    /// returns when woken (<see cref="FutexWake"/>, from any process), when the word differs, on the
    /// timeout or a signal, without saying which: the caller checks what it waits for.
    /// Throws <see cref="RealnException"/> (Unsupported) off Linux.</summary>
    public static void FutexWait(nint word, int expected, long timeoutUs) => Native.Check(Native.realn_futex_wait((int*)word, expected, timeoutUs));

    /// <summary>Wakes up to <paramref name="count"/> processes' threads sleeping in <see cref="FutexWait"/> on the word.</summary>
    public static void FutexWake(nint word, int count = 1) => Native.Check(Native.realn_futex_wake((int*)word, count));

    /// <summary>Unmaps what <see cref="Map"/> or <see cref="MapWritable"/> returned (<paramref name="size"/>: the descriptor's Size).</summary>
    public static void Unmap(nint baseAddress, long size) => Native.Check(Native.realn_shared_unmap((void*)baseAddress, size));
}
