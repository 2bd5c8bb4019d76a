using ReaLNative.Engine.Layout;

namespace ReaLNative.Engine.Realloc;

/// <summary>
/// One movement of a reallocation: the intervals one destination shard needs from one source
/// shard, sent by <see cref="SrcDevice"/> (a data-parallel replica of the source shard) to every
/// device in <see cref="DstDevices"/> (replicas of the destination shard on one node: a broadcast
/// when there are several). <see cref="IsLocal"/>: source and destination are the same device, a
/// memory copy.
/// </summary>
internal sealed record ReallocStep(
    int SrcDevice,
    IReadOnlyList<int> DstDevices,
    (int Pipe, int Model) SrcShard,
    (int Pipe, int Model) DstShard,
    IReadOnlyList<Interval> Intervals,
    long Bytes)
{
    public bool IsLocal => DstDevices.Count == 1 && DstDevices[0] == SrcDevice;
}

/// <summary>
/// The interval plan that moves a model's parameters from one layout to another: for every
/// destination shard, the intervals of every source shard it overlaps; per (source shard,
/// destination node) the source's data-parallel replicas on that node each send an equal part (in
/// order: every replica the same range of every destination shard), or where there is one or none
/// (or the step is small), one sender chosen among the replicas to balance the bytes each sender
/// puts on its links (same-node senders first); a local copy where a replica of the
/// source shard already sits on the destination device; a broadcast where several destination
/// devices on one node need the same bytes. Executing it reproduces every destination shard
/// bit-exactly.
/// </summary>
internal sealed class ReallocPlan
{
    private ReallocPlan(ParallelLayout from, ParallelLayout to, int elementSize, List<ReallocStep> steps,
                       Dictionary<(int Pipe, int Model), ShardLayout> srcShards,
                       Dictionary<(int Pipe, int Model), ShardLayout> dstShards)
    {
        From = from;
        To = to;
        ElementSize = elementSize;
        Steps = steps;
        SourceShards = srcShards;
        DestinationShards = dstShards;
    }

    public ParallelLayout From { get; }
    public ParallelLayout To { get; }
    public int ElementSize { get; }
    public IReadOnlyList<ReallocStep> Steps { get; }
    public IReadOnlyDictionary<(int Pipe, int Model), ShardLayout> SourceShards { get; }
    public IReadOnlyDictionary<(int Pipe, int Model), ShardLayout> DestinationShards { get; }

    /// <summary>Bytes that cross between devices, counted once per receiving device.</summary>
    public long RemoteBytes => Steps.Where(s => !s.IsLocal).Sum(s => s.Bytes * s.DstDevices.Count);

    /// <summary>Bytes copied within a device.</summary>
    public long LocalBytes => Steps.Where(s => s.IsLocal).Sum(s => s.Bytes);

    /// <summary>Bytes each sending device puts on the wire (a broadcast counts once: it is pipelined).</summary>
    public IReadOnlyDictionary<int, long> SenderBytes =>
        Steps.Where(s => !s.IsLocal).GroupBy(s => s.SrcDevice).ToDictionary(g => g.Key, g => g.Sum(s => s.Bytes));

    public ShardLayout DestinationLayoutOf(int device)
    {
        int r = IndexOf(To.Devices, device);
        if (r < 0) throw new ArgumentException($"device {device} is not in the destination mesh {To}");
        var (p, _, m) = To.Coords(r);
        return DestinationShards[(p, m)];
    }

    public ShardLayout SourceLayoutOf(int device)
    {
        int r = IndexOf(From.Devices, device);
        if (r < 0) throw new ArgumentException($"device {device} is not in the source mesh {From}");
        var (p, _, m) = From.Coords(r);
        return SourceShards[(p, m)];
    }

    /// <summary>A step of at least this many bytes per replica is split among the source shard's
    /// replicas on the destination's node (<see cref="Build"/>).</summary>
    public const long SplitMinBytes = 1L << 20;

    /// <summary>Builds the plan. <paramref name="nodeOf"/> maps a device id to its node.
    /// <paramref name="splitMinBytes"/>: tests lower it (<see cref="SplitMinBytes"/>).</summary>
    public static ReallocPlan Build(ParallelLayout from, ParallelLayout to, ShardLayoutFactory layouts,
                                   int elementSize, Func<int, int> nodeOf, long splitMinBytes = SplitMinBytes)
    {
        if (elementSize <= 0) throw new ArgumentException($"element size {elementSize} must be positive");
        var src = new Dictionary<(int, int), ShardLayout>();
        var dst = new Dictionary<(int, int), ShardLayout>();
        for (int p = 0; p < from.Pp; p++)
            for (int m = 0; m < from.Tp; m++) src[(p, m)] = layouts(from.Pp, p, from.Tp, m);
        for (int p = 0; p < to.Pp; p++)
            for (int m = 0; m < to.Tp; m++) dst[(p, m)] = layouts(to.Pp, p, to.Tp, m);
        CheckCoverage(src, from.Tp, dst, to);

        var steps = new List<ReallocStep>();
        var senderLoad = new Dictionary<int, long>();
        for (int dp_ = 0; dp_ < to.Pp; dp_++)
            for (int dm = 0; dm < to.Tp; dm++)
            {
                var dstLayout = dst[(dp_, dm)];
                var dstDevices = Enumerable.Range(0, to.Dp).Select(d => to.Device(dp_, d, dm)).ToList();
                for (int sp = 0; sp < from.Pp; sp++)
                    for (int sm = 0; sm < from.Tp; sm++)
                    {
                        var intervals = IntervalMath.Between(src[(sp, sm)], dstLayout, TakesReplicated(sm, dm, from.Tp));
                        if (intervals.Count == 0) continue;
                        long bytes = IntervalMath.TotalLength(intervals) * elementSize;
                        var replicas = Enumerable.Range(0, from.Dp).Select(d => from.Device(sp, d, sm)).ToList();
                        var remote = new List<int>();
                        foreach (var x in dstDevices)
                        {
                            if (replicas.Contains(x))
                                steps.Add(new ReallocStep(x, [x], (sp, sm), (dp_, dm), intervals, bytes));
                            else remote.Add(x);
                        }
                        foreach (var group in remote.GroupBy(nodeOf).OrderBy(g => g.Key))
                        {
                            int node = group.Key;
                            // Several replicas on the destination's node: each sends its part, part i
                            // of every destination shard's intervals from the i-th replica. So each
                            // replica reads one range of the source shard for all destination shards
                            // (the parts of a tensor split along its rows come from whole rows read
                            // once, TransportRealloc.Push), and the senders share the bytes evenly.
                            var near = replicas.Where(r => nodeOf(r) == node).Order().ToList();
                            if (near.Count > 1 && bytes >= near.Count * splitMinBytes)
                            {
                                var parts = IntervalMath.Split(intervals, near.Count);
                                for (int i = 0; i < near.Count; i++)
                                {
                                    if (parts[i].Count == 0) continue;
                                    long partBytes = IntervalMath.TotalLength(parts[i]) * elementSize;
                                    senderLoad[near[i]] = senderLoad.GetValueOrDefault(near[i]) + partBytes;
                                    steps.Add(new ReallocStep(near[i], group.ToList(), (sp, sm), (dp_, dm), parts[i], partBytes));
                                }
                                continue;
                            }
                            // Same-node replicas first, then the least loaded sender; ties by rank order.
                            int sender = replicas
                                .OrderBy(r => nodeOf(r) == node ? 0 : 1)
                                .ThenBy(r => senderLoad.GetValueOrDefault(r))
                                .First();
                            senderLoad[sender] = senderLoad.GetValueOrDefault(sender) + bytes;
                            steps.Add(new ReallocStep(sender, group.ToList(), (sp, sm), (dp_, dm), intervals, bytes));
                        }
                    }
            }
        return new ReallocPlan(from, to, elementSize, steps, src, dst);
    }

    /// <summary>Every element of every destination shard must come from exactly one source shard
    /// (per data-parallel group); a gap means the two layouts disagree on the model.</summary>
    private static void CheckCoverage(Dictionary<(int, int), ShardLayout> src, int srcTp, Dictionary<(int, int), ShardLayout> dst, ParallelLayout to)
    {
        var srcNames = new HashSet<string>(src.Values.SelectMany(l => l.Views).Select(v => v.Name), StringComparer.Ordinal);
        foreach (var ((p, m), layout) in dst)
        {
            long covered = 0, needed = 0;
            foreach (var dv in layout.Views)
            {
                needed += dv.LocalElements;
                if (!srcNames.Contains(dv.Name))
                    throw new ArgumentException($"destination shard (stage {p}, tp rank {m}) of {to} needs parameter '{dv.Name}' that no source shard holds");
            }
            foreach (var ((_, sm), s) in src) covered += IntervalMath.TotalLength(IntervalMath.Between(s, layout, TakesReplicated(sm, m, srcTp)));
            if (covered != needed)
                throw new ArgumentException($"destination shard (stage {p}, tp rank {m}): source shards cover {covered} of {needed} elements; the layouts disagree on parameter shapes or splits");
        }
    }

    /// <summary>A parameter every source tensor rank holds whole is taken from one of them only:
    /// rank (destination tensor rank mod source tp), which spreads those reads over the ranks.</summary>
    private static bool TakesReplicated(int srcModel, int dstModel, int srcTp) => srcModel == dstModel % srcTp;

    private static int IndexOf(IReadOnlyList<int> list, int value)
    {
        for (int i = 0; i < list.Count; i++) if (list[i] == value) return i;
        return -1;
    }
}
