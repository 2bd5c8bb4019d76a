// Managed buffers that a transport may still use after the operation on them failed: a deadline
// passed and UCX could neither complete nor cancel the operation (UcxTransport's contract: "keep
// it alive until the transport is disposed"; RMA reads cannot be cancelled at all). Such buffers
// are kept reachable for the rest of the process, so a late write or read by UCX never meets
// memory the GC has given to another object. Only failed operations land here (a failed data-plane
// operation ends the job), so what it holds stays small.
using System.Collections.Concurrent;

namespace ReaLNative.Engine.Transport;

internal static class AbandonedBuffers
{
    private static readonly ConcurrentBag<object> s_kept = [];

    /// <summary>Keeps <paramref name="buffers"/> (nulls ignored) reachable until the process ends.</summary>
    public static void Keep(params object?[] buffers)
    {
        foreach (var b in buffers)
            if (b is not null) s_kept.Add(b);
    }

    /// <summary>After a failure among one-sided reads (which UCX cannot cancel): keeps the arrays of the reads
    /// still in flight and, if there is one, empties <paramref name="remotes"/> so the caller does not dispose the
    /// regions (remote keys) such a read still uses (the transport destroys them at its disposal).</summary>
    public static void KeepUnfinished<TRemote>(IEnumerable<(Task Read, object Into)> reads, List<TRemote> remotes)
    {
        var running = reads.Where(r => !r.Read.IsCompleted).Select(r => r.Into).ToArray();
        Keep(running);
        if (running.Length > 0) remotes.Clear();
    }

    /// <summary>How many buffers are kept (tests).</summary>
    internal static int Count => s_kept.Count;
}
