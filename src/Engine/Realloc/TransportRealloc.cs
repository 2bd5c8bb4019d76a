using ReaLNative.Engine.Transport;
using ReaLNative.Interop;

namespace ReaLNative.Engine.Realloc;

/// <summary>
/// Executes one device's part of a <see cref="ReallocPlan"/> over an <see cref="ITransport"/>
/// (ranks = device ids): local copies straight between its buffers; a step that is one interval
/// is sent from / received into the shard buffer itself (zero-copy); a multi-interval step is
/// gathered into a pooled, pre-faulted staging buffer with the native interval gather, sent to
/// every destination of its broadcast group, and scattered on arrival with the native interval
/// scatter. All receives are posted before the sends, so no ordering between devices can deadlock.
/// </summary>
internal sealed class TransportRealloc : IDisposable
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
        var scatters = new List<(Task Recv, ReallocStep Step, HostBlock Buf)>();
        foreach (var r in schedule.Receives)
        {
            if (destination == 0) throw new ArgumentException($"device {schedule.Device} receives but has no destination buffer");
            if (r.Step.Intervals.Count == 1)
                recvs.Add(_t.RecvAsync(r.Peer, r.Tag, destination + (nint)(r.Step.Intervals[0].DstOffset * es), r.Step.Bytes, ct));
            else
            {
                var buf = Staging(r.Step.Bytes);
                var task = _t.RecvAsync(r.Peer, r.Tag, Ptr(buf), r.Step.Bytes, ct);
                recvs.Add(task);
                scatters.Add((task, r.Step, buf));
            }
        }
        var sends = new List<Task>();
        int i = 0;
        while (i < schedule.Sends.Count)
        {
            var step = schedule.Sends[i].Step;
            if (source == 0) throw new ArgumentException($"device {schedule.Device} sends but has no source buffer");
            nint from;
            if (step.Intervals.Count == 1) from = source + (nint)(step.Intervals[0].SrcOffset * es);
            else
            {
                var buf = Staging(step.Bytes);
                Gather(step, (int)es, source, buf);
                from = Ptr(buf);
            }
            for (; i < schedule.Sends.Count && ReferenceEquals(schedule.Sends[i].Step, step); i++)
                sends.Add(_t.SendAsync(schedule.Sends[i].Peer, schedule.Sends[i].Tag, from, step.Bytes, ct));
        }
        foreach (var step in schedule.LocalCopies) LocalCopy(step, (int)es, source, destination);
        foreach (var (task, step, buf) in scatters)
        {
            await task;
            Scatter(step, (int)es, destination, buf);
        }
        await Task.WhenAll(recvs);
        await Task.WhenAll(sends);
    }

    private static unsafe nint Ptr(HostBlock b) => (nint)b.Pointer;

    private unsafe void Gather(ReallocStep step, int es, nint source, HostBlock buf)
    {
        var (offs, lens) = ReallocSchedule.ByteIntervals(step, es, source: true);
        fixed (long* po = offs, pl = lens)
            Native.Check(Native.realn_interval_gather(_stream.Ptr, buf.Pointer, (void*)source, po, pl, offs.Length));
    }

    private unsafe void Scatter(ReallocStep step, int es, nint destination, HostBlock buf)
    {
        var (offs, lens) = ReallocSchedule.ByteIntervals(step, es, source: false);
        fixed (long* po = offs, pl = lens)
            Native.Check(Native.realn_interval_scatter(_stream.Ptr, (void*)destination, buf.Pointer, po, pl, offs.Length));
    }

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
