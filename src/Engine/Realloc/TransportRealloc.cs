using ReaLNative.Engine.Transport;
using ReaLNative.Interop;

namespace ReaLNative.Engine.Realloc;

/// <summary>
/// Executes one device's part of a <see cref="ReallocPlan"/> over an <see cref="ITransport"/>
/// (ranks = device ids): local copies straight between its buffers; a step that is one interval
/// is sent from / received into the shard buffer itself (zero-copy); a multi-interval step is
/// gathered into a pooled, pre-faulted staging buffer with the native interval gather, sent to
/// every destination of its broadcast group, and scattered on arrival with the native interval
/// scatter, in pieces of <see cref="ChunkBytes"/> so that gather, transfer and scatter overlap
/// (whole-step messages serialized them: gather all, move all, scatter all). All receives are posted before the sends, so no ordering between devices can deadlock.
/// </summary>
public sealed class TransportRealloc : IDisposable
{
    private readonly ITransport _t;
    private readonly NativeStream _stream = NativeStream.Cpu();
    private readonly List<HostBlock> _staging = [];

    public TransportRealloc(ITransport transport) => _t = transport;

    /// <param name="source">this device's source shard (0 when it holds none)</param>
    /// <param name="destination">this device's destination shard (0 when it receives none)</param>
    public async Task ExecuteAsync(ReallocPlan plan, ReallocSchedule schedule, nint source, nint destination, CancellationToken ct = default)
    {
        long es = plan.ElementSize;
        int si = 0;
        HostBlock Staging(long bytes)
        {
            if (si == _staging.Count) _staging.Add(new HostBlock(Math.Max(bytes, 4096)));
            else if (_staging[si].Bytes < bytes)
            {
                _staging[si].Dispose();
                _staging[si] = new HostBlock(bytes);
            }
            return _staging[si++];
        }
        var recvs = new List<Task>();
        var scatters = new List<(Task Recv, Chunk Piece, HostBlock Buf)>();
        foreach (var r in schedule.Receives)
        {
            if (destination == 0) throw new ArgumentException($"device {schedule.Device} receives but has no destination buffer");
            if (r.Step.Intervals.Count == 1)
                recvs.Add(_t.RecvAsync(r.Peer, ChunkTag(r.Tag, 0), destination + (nint)(r.Step.Intervals[0].DstOffset * es), r.Step.Bytes, ct));
            else
            {
                var buf = Staging(r.Step.Bytes);
                foreach (var c in Chunks(r.Step, (int)es, ChunkBytes))
                {
                    var task = _t.RecvAsync(r.Peer, ChunkTag(r.Tag, c.Index), Ptr(buf) + (nint)c.StagingOffset, c.Bytes, ct);
                    recvs.Add(task);
                    scatters.Add((task, c, buf));
                }
            }
        }
        var sends = new List<Task>();
        int i = 0;
        while (i < schedule.Sends.Count)
        {
            var step = schedule.Sends[i].Step;
            int first = i;
            while (i < schedule.Sends.Count && ReferenceEquals(schedule.Sends[i].Step, step)) i++;
            if (source == 0) throw new ArgumentException($"device {schedule.Device} sends but has no source buffer");
            if (step.Intervals.Count == 1)
            {
                nint from = source + (nint)(step.Intervals[0].SrcOffset * es);
                for (int k = first; k < i; k++)
                    sends.Add(_t.SendAsync(schedule.Sends[k].Peer, ChunkTag(schedule.Sends[k].Tag, 0), from, step.Bytes, ct));
                continue;
            }
            // Gather chunk by chunk: chunk j is on the wire (the receiver pulls it) while j + 1 is gathered.
            var buf = Staging(step.Bytes);
            foreach (var c in Chunks(step, (int)es, ChunkBytes))
            {
                GatherChunk(c, source, buf);
                for (int k = first; k < i; k++)
                    sends.Add(_t.SendAsync(schedule.Sends[k].Peer, ChunkTag(schedule.Sends[k].Tag, c.Index), Ptr(buf) + (nint)c.StagingOffset, c.Bytes, ct));
            }
        }
        foreach (var step in schedule.LocalCopies) LocalCopy(step, (int)es, source, destination);
        foreach (var (task, c, buf) in scatters)
        {
            await task;
            ScatterChunk(c, destination, buf);
        }
        await Task.WhenAll(recvs);
        await Task.WhenAll(sends);
    }

    /// <summary>Bytes of one staged message: a multi-interval step is cut into pieces of about this
    /// size so that gather, transfer and scatter of consecutive pieces overlap.</summary>
    public long ChunkBytes { get; init; } = 8L << 20;

    private static long ChunkTag(int stepTag, int chunk) => (long)stepTag << 20 | (uint)chunk;

    /// <summary>A piece of a staged step: byte intervals (source offsets, destination offsets,
    /// lengths) that fill [StagingOffset, StagingOffset + Bytes) of the step's staging buffer.</summary>
    private sealed record Chunk(int Index, long StagingOffset, long Bytes, long[] Src, long[] Dst, long[] Len);

    /// <summary>Cuts a step's intervals, in order, into pieces of at most <paramref name="chunk"/>
    /// bytes (an interval longer than that is split). Sender and receiver cut identically.</summary>
    private static List<Chunk> Chunks(ReallocStep step, int es, long chunk)
    {
        var result = new List<Chunk>();
        var src = new List<long>();
        var dst = new List<long>();
        var len = new List<long>();
        long start = 0, filled = 0;
        void Flush()
        {
            if (filled == 0) return;
            result.Add(new Chunk(result.Count, start, filled, [.. src], [.. dst], [.. len]));
            start += filled;
            filled = 0;
            src.Clear(); dst.Clear(); len.Clear();
        }
        foreach (var iv in step.Intervals)
        {
            long so = iv.SrcOffset * es, d = iv.DstOffset * es, left = iv.Length * es;
            while (left > 0)
            {
                long take = Math.Min(left, chunk - filled);
                src.Add(so); dst.Add(d); len.Add(take);
                so += take; d += take; left -= take; filled += take;
                if (filled == chunk) Flush();
            }
        }
        Flush();
        return result;
    }

    private unsafe void GatherChunk(Chunk c, nint source, HostBlock buf)
    {
        fixed (long* po = c.Src, pl = c.Len)
            Native.Check(Native.realn_interval_gather(_stream.Ptr, (byte*)buf.Pointer + c.StagingOffset, (void*)source, po, pl, c.Src.Length));
    }

    private unsafe void ScatterChunk(Chunk c, nint destination, HostBlock buf)
    {
        fixed (long* po = c.Dst, pl = c.Len)
            Native.Check(Native.realn_interval_scatter(_stream.Ptr, (void*)destination, (byte*)buf.Pointer + c.StagingOffset, po, pl, c.Dst.Length));
    }

    private static unsafe nint Ptr(HostBlock b) => (nint)b.Pointer;

    private static unsafe void LocalCopy(ReallocStep step, int es, nint source, nint destination)
    {
        foreach (var iv in step.Intervals)
            Buffer.MemoryCopy((void*)(source + (nint)(iv.SrcOffset * es)), (void*)(destination + (nint)(iv.DstOffset * es)), iv.Length * es, iv.Length * es);
    }

    public void Dispose()
    {
        foreach (var b in _staging) b.Dispose();
        _stream.Dispose();
    }
}
