namespace ReaLNative.Engine.Transport;

/// <summary>
/// Collectives over an <see cref="ITransport"/> for a group of ranks (a sub-communicator: the
/// ranks of one data- or tensor-parallel group), all fp32 sums or byte copies on caller buffers:
/// ring all-reduce (reduce-scatter + all-gather, 2(p-1)/p of the data per link), ring all-gather,
/// ring reduce-scatter, a pipelined chain broadcast (segments forwarded as they arrive) and a
/// sequential pass in member order (running sums handed on, ChainAsync). Every
/// member must call the same collectives in the same order; a per-group sequence number keeps
/// consecutive collectives' messages apart.
/// </summary>
internal sealed class Collectives
{
    private readonly ITransport _transport;
    private readonly int[] _group;
    private readonly int _me;
    private long _seq;

    /// <summary>Chunk size of the pipelined broadcast.</summary>
    public long SegmentBytes { get; init; } = 1L << 20;

    public Collectives(ITransport transport, IReadOnlyList<int> group, int groupId = 0)
    {
        _transport = transport;
        _group = [.. group];
        _me = Array.IndexOf(_group, transport.Rank);
        if (_me < 0) throw new ArgumentException($"rank {transport.Rank} is not in the group [{string.Join(", ", group)}]");
        if (_group.Distinct().Count() != _group.Length) throw new ArgumentException("a group lists a rank twice");
        if (groupId < 0 || groupId >= 1 << 12) throw new ArgumentOutOfRangeException(nameof(groupId));
        GroupId = groupId;
    }

    public int GroupId { get; }
    public int Count => _group.Length;
    public int Index => _me;

    // Tag: group id (12 bits) | sequence (20 bits) | step (8 bits) -- 40 bits.
    private long Tag(long seq, int step) => ((long)GroupId << 28 | (seq & 0xFFFFF) << 8 | (uint)(step & 0xFF));

    private (long Lo, long Hi) Chunk(long n, int i) => (n * i / Count, n * (i + 1) / Count);

    /// <summary>In-place sum over the group of <paramref name="n"/> floats; <paramref name="scratch"/>
    /// holds at least ceil(n / group) floats.</summary>
    public async Task AllReduceSumAsync(nint data, long n, nint scratch, CancellationToken ct = default)
    {
        long seq = _seq++;
        int p = Count;
        if (p == 1 || n == 0) return;
        await ReduceScatterSteps(data, n, scratch, seq, ct);
        await AllGatherSteps(data, n, seq, ct);
    }

    /// <summary>After it, chunk <see cref="Index"/> of <paramref name="data"/> (elements
    /// [n*i/p, n*(i+1)/p)) holds the group's sum; other chunks are partial sums.</summary>
    public async Task ReduceScatterSumAsync(nint data, long n, nint scratch, CancellationToken ct = default)
    {
        long seq = _seq++;
        if (Count == 1 || n == 0) return;
        await ReduceScatterSteps(data, n, scratch, seq, ct);
    }

    /// <summary>Every member contributes chunk <see cref="Index"/> of <paramref name="data"/>
    /// ([n*i/p, n*(i+1)/p) elements of <paramref name="elementSize"/> bytes); afterwards all hold all.</summary>
    public async Task AllGatherAsync(nint data, long n, int elementSize = 4, CancellationToken ct = default)
    {
        long seq = _seq++;
        if (Count == 1 || n == 0) return;
        await AllGatherSteps(data, n, seq, ct, elementSize);
    }

    /// <summary>Copies <paramref name="bytes"/> from the group member <paramref name="rootIndex"/> to
    /// all others along a chain, in segments so every link is busy at once.</summary>
    public async Task BroadcastAsync(nint data, long bytes, int rootIndex, CancellationToken ct = default)
    {
        long seq = _seq++;
        int p = Count;
        if ((uint)rootIndex >= (uint)p) throw new ArgumentOutOfRangeException(nameof(rootIndex));
        if (p == 1 || bytes == 0) return;
        int pos = (_me - rootIndex + p) % p;  // position in the chain
        int prev = _group[(_me - 1 + p) % p], next = _group[(_me + 1) % p];
        long segs = (bytes + SegmentBytes - 1) / SegmentBytes;
        var sends = new List<Task>();
        for (long s = 0; s < segs; s++)
        {
            long off = s * SegmentBytes, len = Math.Min(SegmentBytes, bytes - off);
            int step = (int)(s & 0xFF);
            if (pos > 0) await _transport.RecvAsync(prev, Tag(seq, step), data + (nint)off, len, ct);
            if (pos < p - 1) sends.Add(_transport.SendAsync(next, Tag(seq, step), data + (nint)off, len, ct));
            if (sends.Count >= 4) { await sends[0]; sends.RemoveAt(0); }  // bound the outstanding sends (tags repeat after 256)
        }
        await Task.WhenAll(sends);
    }

    /// <summary>A sequential pass in member order: member i > 0 first receives <paramref name="bytes"/>
    /// at <paramref name="data"/> from member i - 1, then every member runs <paramref name="step"/> on
    /// them and sends them to member i + 1. The last member ends with every member's step applied in
    /// order: a running sum handed on this way has the bits of one process's loop over all members' parts.</summary>
    public async Task ChainAsync(nint data, long bytes, Action step, CancellationToken ct = default)
    {
        long seq = _seq++;
        if (_me > 0) await _transport.RecvAsync(_group[_me - 1], Tag(seq, 0), data, bytes, ct);
        step();
        if (_me < Count - 1) await _transport.SendAsync(_group[_me + 1], Tag(seq, 0), data, bytes, ct);
    }

    private async Task ReduceScatterSteps(nint data, long n, nint scratch, long seq, CancellationToken ct)
    {
        int p = Count;
        int right = _group[(_me + 1) % p], left = _group[(_me - 1 + p) % p];
        for (int s = 0; s < p - 1; s++)
        {
            var (slo, shi) = Chunk(n, ((_me - s - 1) % p + p) % p);
            var (rlo, rhi) = Chunk(n, ((_me - s - 2) % p + p) % p);
            var send = _transport.SendAsync(right, Tag(seq, s), data + (nint)(slo * 4), (shi - slo) * 4, ct);
            var recv = _transport.RecvAsync(left, Tag(seq, s), scratch, (rhi - rlo) * 4, ct);
            await Task.WhenAll(send, recv);
            AddInto(data + (nint)(rlo * 4), scratch, rhi - rlo);
        }
        // Now chunk (_me) holds the full sum: the last received chunk was (_me - (p-2) - 2) = _me - p = _me.
    }

    private static unsafe void AddInto(nint dst, nint src, long n)
    {
        for (long o = 0; o < n; o += int.MaxValue / 4)
        {
            int m = (int)Math.Min(int.MaxValue / 4, n - o);
            var d = new Span<float>((float*)dst + o, m);
            System.Numerics.Tensors.TensorPrimitives.Add(d, new ReadOnlySpan<float>((float*)src + o, m), d);
        }
    }

    // Member i starts owning chunk i (after a reduce-scatter, or as its own contribution).
    private async Task AllGatherSteps(nint data, long n, long seq, CancellationToken ct, int es = 4)
    {
        int p = Count;
        int right = _group[(_me + 1) % p], left = _group[(_me - 1 + p) % p];
        for (int s = 0; s < p - 1; s++)
        {
            var (slo, shi) = Chunk(n, ((_me - s) % p + p) % p);
            var (rlo, rhi) = Chunk(n, ((_me - s - 1) % p + p) % p);
            int step = 128 + s;
            var send = _transport.SendAsync(right, Tag(seq, step), data + (nint)(slo * es), (shi - slo) * es, ct);
            var recv = _transport.RecvAsync(left, Tag(seq, step), data + (nint)(rlo * es), (rhi - rlo) * es, ct);
            await Task.WhenAll(send, recv);
        }
    }
}
