// Durability helpers the BCL lacks (and madvise, for SharedHostMemory.ReleasePages). .NET can fsync a file (FileStream.Flush(true)) but not a
// directory, and a rename is only durable once its directory is synced: checkpoints
// (src/Engine/Checkpoints) need both. Linux libc only; a no-op elsewhere.
using System.Runtime.InteropServices;
using System.Text;

namespace ReaLNative.Interop;

public static unsafe partial class Posix
{
    private const string Libc = "libc.so.6";
    private const int O_RDONLY = 0, EINTR = 4, EINVAL = 22;

    [LibraryImport(Libc, EntryPoint = "open", SetLastError = true)]
    private static partial int open(byte* path, int flags);

    [LibraryImport(Libc, EntryPoint = "fsync", SetLastError = true)]
    private static partial int fsync(int fd);

    [LibraryImport(Libc, EntryPoint = "close", SetLastError = true)]
    private static partial int close(int fd);

    [LibraryImport(Libc, EntryPoint = "madvise", SetLastError = true)]
    private static partial int madvise(void* addr, nuint length, int advice);

    private const int MADV_DONTNEED = 4;

    /// <summary>madvise(MADV_DONTNEED) of [<paramref name="address"/>, +<paramref name="bytes"/>)
    /// (<paramref name="address"/> page-aligned): drops this process's page-table entries there. On
    /// a shared mapping the memory and its contents stay (in the shared object); the next access maps
    /// the pages again. Linux only: a no-op elsewhere.</summary>
    public static void DropPageTableEntries(nint address, long bytes)
    {
        if (!OperatingSystem.IsLinux() || bytes <= 0) return;
        if (madvise((void*)address, (nuint)bytes, MADV_DONTNEED) != 0)
            throw new IOException($"madvise(MADV_DONTNEED) of {bytes} bytes at 0x{address:x} failed (errno {Marshal.GetLastPInvokeError()})");
    }

    /// <summary>fsyncs a directory so that entries created or renamed in it survive a crash.
    /// Filesystems that cannot sync a directory (EINVAL) are accepted silently.</summary>
    public static void FsyncDirectory(string path)
    {
        if (!OperatingSystem.IsLinux()) return;
        var bytes = Encoding.UTF8.GetBytes(Path.GetFullPath(path) + "\0");
        int fd;
        fixed (byte* p = bytes) fd = open(p, O_RDONLY);
        if (fd < 0) throw new IOException($"cannot open directory {path} to sync it (errno {Marshal.GetLastPInvokeError()})");
        try
        {
            int rc;
            do rc = fsync(fd); while (rc != 0 && Marshal.GetLastPInvokeError() == EINTR);
            if (rc != 0 && Marshal.GetLastPInvokeError() != EINVAL)
                throw new IOException($"fsync of directory {path} failed (errno {Marshal.GetLastPInvokeError()})");
        }
        finally { close(fd); }
    }
}
