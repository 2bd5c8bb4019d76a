// In-process data plane: the ranks of one job as threads of one process (tests of 3D parallelism,
// embedded single-process runs). A send copies its bytes into the receiver's mailbox at once
// (eager, so a send never waits for its receive and pipelines cannot deadlock on send order);
// a receive takes the oldest matching message or waits for it until the deadline.
namespace ReaLNative.Engine.Transport;

/// <summary>The shared mailboxes of a group of in-process ranks; <see cref="Rank"/> gives each rank's transport.</summary>
internal sealed class LocalFabric
{
    private readonly Mailbox[] _boxes;

    /// <summary>A fabric of <paramref name="size"/> ranks.</summary>
    public LocalFabric(int size)
    {
        if (size < 1) throw new ArgumentException($"a fabric needs at least one rank (got {size})");
        _boxes = Enumerable.Range(0, size).Select(_ => new Mailbox()).ToArray();
    }

    /// <summary>Ranks in the fabric.</summary>
    public int Size => _boxes.Length;

    /// <summary>The transport of rank <paramref name="rank"/> (one per rank; each may be used from any thread).</summary>
    public ITransport Rank(int rank)
    {
        if ((uint)rank >= (uint)Size) throw new ArgumentException($"rank {rank} outside a fabric of {Size}");
        return new LocalTransport(this, rank);
    }

    internal Mailbox Box(int rank) => _boxes[rank];

    internal sealed class Mailbox
    {
        public readonly Lock Gate = new();
        // (source, tag) -> queued messages and waiting receivers; one of the two is empty at any time.
        public readonly Dictionary<(int, long), Queue<byte[]>> Messages = new();
        public readonly Dictionary<(int, long), Queue<Waiter>> Waiters = new();
    }

    internal sealed class Waiter(nint data, long bytes)
    {
        public readonly nint Data = data;
        public readonly long Bytes = bytes;
        public readonly TaskCompletionSource Done = new(TaskCreationOptions.RunContinuationsAsynchronously);
    }
}

internal sealed class LocalTransport(LocalFabric fabric, int rank) : ITransport
{
    public int Rank => rank;
    public int Size => fabric.Size;
    public TimeSpan Timeout { get; set; } = TimeSpan.FromSeconds(60);

    public unsafe Task SendAsync(int peer, long tag, nint data, long bytes, CancellationToken ct = default)
    {
        CheckPeer(peer, bytes);
        var box = fabric.Box(peer);
        var key = (rank, tag);
        lock (box.Gate)
        {
            if (box.Waiters.TryGetValue(key, out var ws) && ws.Count > 0)
            {
                var w = ws.Dequeue();
                if (w.Bytes != bytes)
                {
                    w.Done.TrySetException(new InvalidOperationException(
                        $"rank {peer}: receive from rank {rank} (tag {tag}) expected {w.Bytes} bytes, the message has {bytes}"));
                    throw new InvalidOperationException($"rank {rank}: send to rank {peer} (tag {tag}) of {bytes} bytes met a receive of {w.Bytes} bytes");
                }
                Buffer.MemoryCopy((void*)data, (void*)w.Data, bytes, bytes);
                w.Done.TrySetResult();
                return Task.CompletedTask;
            }
            var copy = new byte[bytes];
            new ReadOnlySpan<byte>((void*)data, checked((int)bytes)).CopyTo(copy);
            if (!box.Messages.TryGetValue(key, out var q)) box.Messages[key] = q = new Queue<byte[]>();
            q.Enqueue(copy);
        }
        return Task.CompletedTask;
    }

    public unsafe Task RecvAsync(int peer, long tag, nint data, long bytes, CancellationToken ct = default)
    {
        CheckPeer(peer, bytes);
        var box = fabric.Box(rank);
        var key = (peer, tag);
        LocalFabric.Waiter w;
        lock (box.Gate)
        {
            if (box.Messages.TryGetValue(key, out var q) && q.Count > 0)
            {
                var m = q.Dequeue();
                if (m.Length != bytes)
                    throw new InvalidOperationException($"rank {rank}: receive from rank {peer} (tag {tag}) expected {bytes} bytes, the message has {m.Length}");
                m.AsSpan().CopyTo(new Span<byte>((void*)data, checked((int)bytes)));
                return Task.CompletedTask;
            }
            w = new LocalFabric.Waiter(data, bytes);
            if (!box.Waiters.TryGetValue(key, out var ws)) box.Waiters[key] = ws = new Queue<LocalFabric.Waiter>();
            ws.Enqueue(w);
        }
        return Await(w, box, key, peer, tag, ct);
    }

    private async Task Await(LocalFabric.Waiter w, LocalFabric.Mailbox box, (int, long) key, int peer, long tag, CancellationToken ct)
    {
        using var cts = CancellationTokenSource.CreateLinkedTokenSource(ct);
        cts.CancelAfter(Timeout);
        try
        {
            await w.Done.Task.WaitAsync(cts.Token).ConfigureAwait(false);
        }
        catch (OperationCanceledException) when (!w.Done.Task.IsCompleted)
        {
            bool removed;
            lock (box.Gate)
            {
                // Withdraw the receive so a late message cannot write into a buffer the caller reuses.
                removed = box.Waiters.TryGetValue(key, out var ws) && Remove(ws, w);
            }
            if (!removed) { await w.Done.Task.ConfigureAwait(false); return; }  // matched meanwhile: it completed
            if (ct.IsCancellationRequested) throw new OperationCanceledException(ct);
            throw new TimeoutException($"rank {rank}: receive from rank {peer} (tag {tag}, {w.Bytes} bytes) did not complete within {Timeout.TotalSeconds:F0} s");
        }
    }

    private static bool Remove(Queue<LocalFabric.Waiter> q, LocalFabric.Waiter w)
    {
        int n = q.Count;
        bool found = false;
        for (int i = 0; i < n; i++)
        {
            var x = q.Dequeue();
            if (ReferenceEquals(x, w)) found = true;
            else q.Enqueue(x);
        }
        return found;
    }

    private void CheckPeer(int peer, long bytes)
    {
        if ((uint)peer >= (uint)Size) throw new ArgumentException($"rank {rank}: peer {peer} outside a world of {Size}");
        if (bytes < 0 || bytes > int.MaxValue) throw new ArgumentException($"rank {rank}: message of {bytes} bytes (in-process messages hold at most 2 GiB)");
    }

    public void Dispose() { }
}
