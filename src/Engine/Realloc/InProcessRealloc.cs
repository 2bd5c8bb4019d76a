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
        long es = plan.ElementSize;
        // Copies as (src, dst, bytes) pieces of at most PieceBytes, taken by the threads in work
        // items of about PieceBytes: small per-row intervals are batched, big ones split.
        var pieces = new List<(nint Src, nint Dst, long Bytes)>();
        long total = 0;
        foreach (var step in plan.Steps)
        {
            byte* s = (byte*)source[step.SrcDevice].Pointer;
            foreach (var dd in step.DstDevices)
            {
                byte* t = (byte*)destination[dd].Pointer;
                foreach (var iv in step.Intervals)
                {
                    long n = iv.Length * es, so = iv.SrcOffset * es, to = iv.DstOffset * es;
                    for (long o = 0; o < n; o += PieceBytes)
                        pieces.Add(((nint)(s + so + o), (nint)(t + to + o), Math.Min(PieceBytes, n - o)));
                    total += n;
                }
            }
        }
        CopyPieces(pieces, total, streamMinBytes);
    }

    /// <summary>Copies (src, dst, bytes) pieces, none longer than 4 MiB, that total
    /// <paramref name="total"/> bytes: with streaming stores from <paramref name="streamMinBytes"/>
    /// bytes on, over <see cref="CopyThreads"/> threads from 8 MiB on. Used for the copies of a
    /// same-process reallocation and for those out of another process's mapped shard
    /// (<see cref="TransportRealloc"/>).</summary>
    internal static void CopyPieces(List<(nint Src, nint Dst, long Bytes)> pieces, long total, long streamMinBytes = StreamMinBytes)
    {
        bool stream = total >= streamMinBytes;
        void CopyRange(int first, int end)
        {
            for (int i = first; i < end; i++)
            {
                var (src, dst, n) = pieces[i];
                if (stream) StreamingCopy.Copy((byte*)src, (byte*)dst, n);
                else Buffer.MemoryCopy((void*)src, (void*)dst, n, n);
            }
        }
        int workers = total < ParallelBytes ? 1 : CopyThreads;
        if (workers == 1)
        {
            CopyRange(0, pieces.Count);
            if (stream) StreamingCopy.Fence();
            return;
        }
        // Work items of about PieceBytes (runs of consecutive pieces), taken by the threads in
        // turn: a thread the scheduler delays (the cores are shared) holds up at most one item,
        // where equal shares per thread would make the copy wait for its slowest thread.
        var items = new List<int> { 0 };
        long acc = 0;
        for (int i = 0; i < pieces.Count; i++)
        {
            acc += pieces[i].Bytes;
            if (acc >= PieceBytes) { items.Add(i + 1); acc = 0; }
        }
        if (items[^1] != pieces.Count) items.Add(pieces.Count);
        int next = -1;
        Parallel.For(0, workers, new ParallelOptions { MaxDegreeOfParallelism = workers }, _ =>
        {
            for (int k; (k = Interlocked.Increment(ref next)) < items.Count - 1;) CopyRange(items[k], items[k + 1]);
            if (stream) StreamingCopy.Fence();
        });
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
