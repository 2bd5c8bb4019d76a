namespace ReaLNative.Engine.Transport;

/// <summary>
/// Point-to-point data plane between the ranks of one job: tagged messages whose buffers the
/// caller keeps alive (pinned or native) until the returned task completes. Messages between a
/// pair of ranks with the same tag are matched in order. UCX implements it for CPU workers and
/// between hosts; an NCCL implementation for GPU workers plugs in behind the same interface.
/// Every operation has a deadline: a peer that never answers fails the task with a
/// <see cref="TimeoutException"/> naming the peer, never a hang.
/// </summary>
internal interface ITransport : IDisposable
{
    int Rank { get; }
    int Size { get; }

    /// <summary>Default deadline of one operation.</summary>
    TimeSpan Timeout { get; set; }

    Task SendAsync(int peer, long tag, nint data, long bytes, CancellationToken ct = default);
    Task RecvAsync(int peer, long tag, nint data, long bytes, CancellationToken ct = default);

    /// <summary>The process id of <paramref name="peer"/> when it runs on this host (same kernel,
    /// pid and network namespaces) and both ranks allow their memory to be read by the other
    /// (<c>REALN_REALLOC_PROCESS_READ</c> not 0): a one-copy process_vm_readv path between them
    /// (<see cref="Realloc.TransportRealloc"/>). Null otherwise: another host, ranks in this
    /// process's own fabric, or a transport that cannot tell.</summary>
    int? LocalProcessOf(int peer) => null;
}
