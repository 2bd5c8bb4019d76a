// Durability helpers the BCL lacks. .NET can fsync a file (FileStream.Flush(true)) but not a
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
