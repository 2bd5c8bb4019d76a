using ReaLNative.Engine.Realloc;
using ReaLNative.Engine.Transport;
using ReaLNative.Interop;

namespace ReaLNative.Diagnostics;

/// <summary>
/// The cross-process cases' process-to-process references: every receiving rank of a case reads,
/// from every rank it receives from, as many bytes as the case moves between them, but as one
/// contiguous region (of the sender's source shard, distinct bytes for each of its receivers, into
/// consecutive bytes of the receiver's destination shard), with the same threads and the same
/// concurrency as the case (all receivers at once, each reading its senders concurrently), in
/// each of the two ways a reallocation copies between processes of one host: the system call
/// (process_vm_readv through <c>realn_process_read</c>), and, where the senders' shards lie in
/// shared memory, a copy out of the sender's mapped shard (the copy routine of the cases,
/// <see cref="InProcessRealloc.CopyPieces"/>). So the case is compared with the best copy this
/// machine does between the same processes for the same bytes, not with one pair of processes
/// exchanging one message (UCX point-to-point moves one pair's bytes on one core while a case has
/// several receivers reading on every core). Timed as the cases are: every receiver starts at one
/// instant named by the master, the repetition ends with the last receiver's copy (the senders do
/// nothing: their shards are read).
/// </summary>
internal sealed unsafe class ContiguousReads : IDisposable
{
    private readonly List<(int Pid, ulong Remote, long LocalOffset, long Bytes)> _reads;
    private readonly List<(nint From, long LocalOffset, long Bytes)> _copies;
    private readonly List<(nint Base, long Size)> _mapped;

    private ContiguousReads(List<(int, ulong, long, long)> reads, bool available, List<(nint, long, long)> copies, List<(nint, long)> mapped, bool mappable)
    {
        _reads = reads;
        Available = available;
        _copies = copies;
        _mapped = mapped;
        MappedAvailable = mappable;
    }

    /// <summary>False when a sender's shard is not in shared memory or cannot be mapped here: the
    /// mapped-copy reference is then left out.</summary>
    public bool MappedAvailable { get; }

    /// <summary>False when a sender of this rank is not a process it can read (another host, or
    /// REALN_REALLOC_PROCESS_READ=0): the reference is then point-to-point only.</summary>
    public bool Available { get; }

    private const long AddressTag = 1L << 38;

    /// <summary>Exchanges the source shards' addresses between the ranks of case
    /// <paramref name="caseIndex"/>; every rank calls it at the same point.</summary>
    public static ContiguousReads Prepare(ITransport transport, ReallocPlan plan, ReallocSchedule schedule, nint source, int caseIndex)
    {
        var bytesFrom = new SortedDictionary<int, long>();
        foreach (var r in schedule.Receives) bytesFrom[r.Peer] = bytesFrom.GetValueOrDefault(r.Peer) + r.Step.Bytes;
        // Where in each sender's shard this rank's region starts: after the regions of the
        // sender's lower-numbered receivers, so receivers of one sender read distinct bytes as in
        // the case (two receivers reading the same region at once would share its trips to memory).
        var remoteStart = new Dictionary<int, long>();
        foreach (int sender in bytesFrom.Keys)
        {
            var perReceiver = new SortedDictionary<int, long>();
            foreach (var step in plan.Steps.Where(st => st.SrcDevice == sender && !st.IsLocal))
                foreach (int d in step.DstDevices) perReceiver[d] = perReceiver.GetValueOrDefault(d) + step.Bytes;
            long before = perReceiver.Where(kv => kv.Key < schedule.Device).Sum(kv => kv.Value);
            long shard = plan.SourceLayoutOf(sender).TotalElements * plan.ElementSize;
            remoteStart[sender] = Math.Max(0, Math.Min(before % Math.Max(shard, 1), shard - bytesFrom[sender]));
        }
        var sendTo = schedule.Sends.Select(s => s.Peer).Distinct().Where(p => transport.LocalProcessOf(p) is not null).ToList();
        bool available = bytesFrom.Keys.All(p => transport.LocalProcessOf(p) is not null);
        // Per rank 5 words: shard address, then its shared block (descriptor number, offset, size,
        // token; descriptor -1 when not shared).
        const int Words = 5;
        using var buf = new HostBlock(8L * Words * (1 + bytesFrom.Count));
        long* words = (long*)buf.Pointer;
        words[0] = source;
        var shared = source == 0 ? null : SharedHostMemory.Describe(source);
        words[1] = shared?.Fd ?? -1;
        words[2] = shared?.Offset ?? 0;
        words[3] = shared?.Size ?? 0;
        words[4] = (long)(shared?.Token ?? 0);
        var ops = new List<Task>();
        foreach (var peer in sendTo) ops.Add(transport.SendAsync(peer, AddressTag | (uint)caseIndex, (nint)words, 8 * Words));
        int k = 1;
        foreach (var peer in bytesFrom.Keys)
            if (transport.LocalProcessOf(peer) is not null) ops.Add(transport.RecvAsync(peer, AddressTag | (uint)caseIndex, (nint)(words + Words * k++), 8 * Words));
        if (!Task.WhenAll(ops).Wait(TimeSpan.FromSeconds(60)))
            throw new TimeoutException($"rank {schedule.Device}: the shard addresses of case {caseIndex} were not exchanged within 60 s");
        var reads = new List<(int, ulong, long, long)>();
        var copies = new List<(nint, long, long)>();
        var mapped = new List<(nint, long)>();
        bool mappable = available;
        long offset = 0;
        k = 1;
        try
        {
            foreach (var (peer, bytes) in bytesFrom)
            {
                if (transport.LocalProcessOf(peer) is not int pid) continue;
                long* w = words + Words * k++;
                reads.Add((pid, (ulong)w[0] + (ulong)remoteStart[peer], offset, bytes));
                if (mappable && w[1] >= 0)
                {
                    var d = new SharedHostMemory.Descriptor(checked((int)w[1]), w[2], w[3], (ulong)w[4]);
                    try
                    {
                        nint b = SharedHostMemory.Map(pid, d);
                        mapped.Add((b, d.Size));
                        copies.Add((b + (nint)(d.Offset + remoteStart[peer]), offset, bytes));
                    }
                    catch (RealnException e) when (e.Status == RealnStatus.Unsupported) { mappable = false; }
                }
                else mappable = false;
                offset += bytes;
            }
        }
        catch
        {
            foreach (var (b, size) in mapped) SharedHostMemory.Unmap(b, size);
            throw;
        }
        return new ContiguousReads(reads, available, copies, mapped, mappable);
    }

    /// <summary>Whether this rank reads anything (it receives in the case).</summary>
    public bool Reads => _reads.Count > 0;

    /// <summary>Copies this rank's regions out of its senders' mapped shards into
    /// <paramref name="destination"/>, each sender's concurrently (the caller times it).</summary>
    public void CopyMapped(nint destination, TimeSpan limit)
    {
        if (!MappedAvailable) throw new InvalidOperationException("the senders' shards are not mapped here");
        void Copy((nint From, long LocalOffset, long Bytes) c)
        {
            var pieces = new List<(nint, nint, long)>();
            for (long o = 0; o < c.Bytes; o += InProcessRealloc.PieceBytes)
                pieces.Add((c.From + (nint)o, destination + (nint)(c.LocalOffset + o), Math.Min(InProcessRealloc.PieceBytes, c.Bytes - o)));
            InProcessRealloc.CopyPieces(pieces, c.Bytes);
        }
        if (_copies.Count == 1) Copy(_copies[0]);
        else if (_copies.Count > 1 && !Task.WhenAll(_copies.Select(c => Task.Run(() => Copy(c)))).Wait(limit))
            throw new TimeoutException($"mapped copies did not finish within {limit.TotalSeconds:F0} s");
    }

    /// <summary>Unmaps the senders' shards (before they free them).</summary>
    public void Dispose()
    {
        foreach (var (b, size) in _mapped) SharedHostMemory.Unmap(b, size);
        _mapped.Clear();
    }

    /// <summary>Reads this rank's regions into <paramref name="destination"/> with process_vm_readv,
    /// each sender's concurrently (the caller times it).</summary>
    public void Read(nint destination, TimeSpan limit)
    {
        if (!Available) throw new InvalidOperationException("a sender's process cannot be read from here");
        if (_reads.Count == 1) Read(_reads[0], destination);
        else if (_reads.Count > 1 && !Task.WhenAll(_reads.Select(r => Task.Run(() => Read(r, destination)))).Wait(limit))
            throw new TimeoutException($"contiguous reads did not finish within {limit.TotalSeconds:F0} s");
    }

    private static void Read((int Pid, ulong Remote, long LocalOffset, long Bytes) r, nint destination)
    {
        long remoteOffset = 0, localOffset = r.LocalOffset, bytes = r.Bytes;
        Native.Check(Native.realn_process_read(r.Pid, (void*)destination, r.Remote, &remoteOffset, &localOffset, &bytes, 1));
    }
}
