namespace ReaLNative.Engine.Realloc;

/// <summary>
/// Executes a <see cref="ReallocPlan"/> whose source and destination buffers all live in this
/// process (the single-process engine and colocated layout changes): every interval is one memory
/// copy straight from the source shard buffer into the destination shard buffer, no staging,
/// split over <see cref="CopyThreads"/> threads. A reallocation of at least
/// <see cref="StreamMinBytes"/> copies with streaming stores (<see cref="StreamingCopy"/>): its
/// pieces (per-row runs of a dimension-1 split, KiB each) are far below the size where memcpy
/// streams, and plain stores read every destination line before writing it.
/// Buffers are given per device as base pointers; their sizes are checked against the layouts.
/// </summary>
internal static unsafe class InProcessRealloc
{
    public readonly record struct DeviceBuffer(nint Pointer, long Bytes);

    /// <param name="streamMinBytes">total bytes from which the copy streams (tests lower it)</param>
    public static void Execute(ReallocPlan plan, IReadOnlyDictionary<int, DeviceBuffer> source,
                               IReadOnlyDictionary<int, DeviceBuffer> destination, long streamMinBytes = StreamMinBytes)
    {
        foreach (var d in plan.From.Devices)
            Require(source, d, plan.SourceLayoutOf(d).TotalElements * plan.ElementSize, "source");
        foreach (var d in plan.To.Devices)
            Require(destination, d, plan.DestinationLayoutOf(d).TotalElements * plan.ElementSize, "destination");
        var c = Compile(plan, source, destination);
        CopyPieces(c.Pieces, c.Total, streamMinBytes, items: c.Items);
    }

    /// <summary>A plan's copy pieces and work items for one set of buffers (<see cref="Compile"/>).</summary>
    private sealed record Compiled(nint[] Sources, nint[] Destinations, List<(nint Src, nint Dst, long Bytes)> Pieces, long Total, List<int> Items);

    /// <summary>The last compiled pieces of each plan: a layout change runs again and again between the same
    /// buffers (every iteration's reallocation between a train call's layout and a generation's), and cutting
    /// tens of thousands of per-row intervals into pieces and merging them in source order took 3-36 ms (mostly
    /// 4-10) on top of a 56-78 ms copy of 1.2 GB (`realn bench realloc`, tp4 -> pp2 x tp2 and tp1 -> tp2, 82-164
    /// thousand pieces; session 22). Kept per plan object, for the buffers it last ran
    /// between (other buffers compile anew); the worker processes' push keeps its pieces the same way.</summary>
    private static readonly System.Runtime.CompilerServices.ConditionalWeakTable<ReallocPlan, Compiled> s_compiled = new();

    /// <summary>The pieces of <paramref name="plan"/> between these buffers: from <see cref="s_compiled"/> where
    /// the plan last ran between buffers at the same addresses, else cut anew (and kept).</summary>
    private static Compiled Compile(ReallocPlan plan, IReadOnlyDictionary<int, DeviceBuffer> source, IReadOnlyDictionary<int, DeviceBuffer> destination)
    {
        var sources = plan.From.Devices.Select(d => source[d].Pointer).ToArray();
        var destinations = plan.To.Devices.Select(d => destination[d].Pointer).ToArray();
        if (s_compiled.TryGetValue(plan, out var kept) && kept.Sources.AsSpan().SequenceEqual(sources) && kept.Destinations.AsSpan().SequenceEqual(destinations))
            return kept;
        long es = plan.ElementSize;
        // Copies as (src, dst, bytes) pieces of at most PieceBytes, taken by the threads in work
        // items of about PieceBytes: small per-row intervals are batched, big ones split. The pieces
        // of every step that reads one source device come in source order (SourceOrder).
        var runs = new List<(int SrcDevice, List<(nint Src, nint Dst, long Bytes)> Pieces)>();
        long total = 0;
        foreach (var step in plan.Steps)
        {
            byte* s = (byte*)source[step.SrcDevice].Pointer;
            foreach (var dd in step.DstDevices)
            {
                byte* t = (byte*)destination[dd].Pointer;
                var run = new List<(nint Src, nint Dst, long Bytes)>(step.Intervals.Count);
                foreach (var iv in step.Intervals)
                {
                    long n = iv.Length * es, so = iv.SrcOffset * es, to = iv.DstOffset * es;
                    for (long o = 0; o < n; o += PieceBytes)
                        run.Add(((nint)(s + so + o), (nint)(t + to + o), Math.Min(PieceBytes, n - o)));
                    total += n;
                }
                runs.Add((step.SrcDevice, run));
            }
        }
        var pieces = new List<(nint Src, nint Dst, long Bytes)>(runs.Sum(r => r.Pieces.Count));
        foreach (var group in runs.GroupBy(r => r.SrcDevice))
            SourceOrder(group.Select(r => r.Pieces).ToList(), pieces);
        var compiled = new Compiled(sources, destinations, pieces, total, Items(pieces));
        s_compiled.AddOrUpdate(plan, compiled);
        return compiled;
    }

    /// <summary>Appends the pieces of <paramref name="runs"/> (each in ascending source order, as a
    /// step's intervals are; all reading one source buffer) to <paramref name="into"/> merged by
    /// source address. A tensor split along its rows (the row-parallel weights of a tensor-parallel
    /// layout) sends part of every row to each destination: copied one destination after the
    /// other, each pass reads part rows, and part rows read at about half the bandwidth of whole
    /// ones, the hardware prefetchers fetching the rest of each row anyway (measured on the
    /// development machine, one thread, 2 KiB halves of 4 KiB rows: 10.5 GB/s against 20 for the
    /// same bytes as whole rows split to two destinations). Merged, every row is read once, in
    /// order. The order does not change the result: destination ranges never overlap.
    /// A linear scan of the runs' heads: there are few runs per source (its destinations).</summary>
    internal static void SourceOrder(List<List<(nint Src, nint Dst, long Bytes)>> runs, List<(nint Src, nint Dst, long Bytes)> into)
    {
        if (runs.Count == 1) { into.AddRange(runs[0]); return; }
        var next = new int[runs.Count];
        while (true)
        {
            int best = -1;
            for (int r = 0; r < runs.Count; r++)
                if (next[r] < runs[r].Count && (best < 0 || runs[r][next[r]].Src < runs[best][next[best]].Src)) best = r;
            if (best < 0) return;
            // Take the whole stretch of this run that comes before every other run's head.
            nint limit = nint.MaxValue;
            for (int r = 0; r < runs.Count; r++)
                if (r != best && next[r] < runs[r].Count && runs[r][next[r]].Src < limit) limit = runs[r][next[r]].Src;
            var run = runs[best];
            int i = next[best];
            do into.Add(run[i++]); while (i < run.Count && run[i].Src <= limit);
            next[best] = i;
        }
    }

    /// <summary>Copies (src, dst, bytes) pieces, none longer than 4 MiB, that total
    /// <paramref name="total"/> bytes: with streaming stores from <paramref name="streamMinBytes"/>
    /// bytes on, over <see cref="CopyThreads"/> threads from 8 MiB on. Used for the copies of a
    /// same-process reallocation and for those out of another process's mapped shard
    /// (<see cref="TransportRealloc"/>). <paramref name="items"/>: the pieces' <see cref="Items"/>
    /// where the caller keeps them.</summary>
    internal static void CopyPieces(List<(nint Src, nint Dst, long Bytes)> pieces, long total, long streamMinBytes = StreamMinBytes,
                                    Action<int, int>? copied = null, List<int>? items = null)
    {
        bool stream = total >= streamMinBytes;
        // copied(first, end): pieces [first, end) are written (fenced), on the thread that copied them.
        void CopyRange(int first, int end)
        {
            for (int i = first; i < end; i++)
            {
                var (src, dst, n) = pieces[i];
                if (stream) StreamingCopy.Copy((byte*)src, (byte*)dst, n);
                else Buffer.MemoryCopy((void*)src, (void*)dst, n, n);
            }
            if (copied is null) return;
            if (stream) StreamingCopy.Fence();
            copied(first, end);
        }
        int workers = total < ParallelBytes ? 1 : CopyThreads;
        if (workers == 1 && copied is null)
        {
            CopyRange(0, pieces.Count);
            if (stream) StreamingCopy.Fence();
            return;
        }
        items ??= Items(pieces);
        int next = -1;
        Parallel.For(0, workers, new ParallelOptions { MaxDegreeOfParallelism = workers }, _ =>
        {
            for (int k; (k = Interlocked.Increment(ref next)) < items.Count - 1;) CopyRange(items[k], items[k + 1]);
            if (stream) StreamingCopy.Fence();
        });
    }

    /// <summary>The work items of <see cref="CopyPieces"/> with a <c>copied</c> callback or more than one
    /// thread: item k is pieces [items[k], items[k + 1]), runs of consecutive pieces of about
    /// <see cref="PieceBytes"/>, taken by the threads in turn (a thread the scheduler delays, the cores
    /// being shared, holds up at most one item, where equal shares per thread would make the copy wait
    /// for its slowest thread).</summary>
    internal static List<int> Items(List<(nint Src, nint Dst, long Bytes)> pieces)
    {
        var items = new List<int> { 0 };
        long acc = 0;
        for (int i = 0; i < pieces.Count; i++)
        {
            acc += pieces[i].Bytes;
            if (acc >= PieceBytes) { items.Add(i + 1); acc = 0; }
        }
        if (items[^1] != pieces.Count) items.Add(pieces.Count);
        return items;
    }

    /// <summary>Threads of a large copy.</summary>
    public static int CopyThreads => Math.Min(Environment.ProcessorCount, 8);

    /// <summary>Total bytes from which a reallocation copies with streaming stores: beyond the
    /// caches, where nothing the copy writes would still be cached when it is read.</summary>
    public const long StreamMinBytes = 16L << 20;

    /// <summary>Longest piece of <see cref="CopyPieces"/>, and its threads' work item.</summary>
    internal const long PieceBytes = 4L << 20;
    private const long ParallelBytes = 8L << 20;

    private static void Require(IReadOnlyDictionary<int, DeviceBuffer> buffers, int device, long bytes, string side)
    {
        if (!buffers.TryGetValue(device, out var b) || b.Pointer == 0)
            throw new ArgumentException($"no {side} buffer for device {device}");
        if (b.Bytes < bytes)
            throw new ArgumentException($"{side} buffer of device {device} holds {b.Bytes} bytes, its shard needs {bytes}");
    }
}
