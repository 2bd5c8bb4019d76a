using System.Diagnostics;
using ReaLNative.Engine.Layout;
using ReaLNative.Interop;
using ReaLNative.Engine.Realloc;

namespace ReaLNative.Diagnostics;

/// <summary>One measured layout change.</summary>
internal sealed record ReallocBenchCase(string From, string To, string Kind, long Bytes, double Seconds, double Gbps, double ReferenceGbps)
{
    public double Ratio => Gbps / ReferenceGbps;

    /// <summary>Which figure <see cref="ReferenceGbps"/> is: memcpy (same process), the
    /// contiguous reads, the contiguous copies out of mapped shards or point-to-point (cross
    /// process), whichever was fastest.</summary>
    public string Reference { get; init; } = "memcpy";

    /// <summary>The candidates of the reference (null where they do not apply).</summary>
    public double? MemcpyOneThreadGbps { get; init; }
    public double? MemcpyThreadsGbps { get; init; }
    public double? StreamingCopyThreadsGbps { get; init; }
    /// <summary>Same-process cases: the same copies between the case's own source and destination pages.</summary>
    public double? CasePagesMemcpyThreadsGbps { get; init; }
    public double? CasePagesStreamingCopyThreadsGbps { get; init; }
    public double? ContiguousReadGbps { get; init; }
    public double? MappedCopyGbps { get; init; }
    /// <summary>Cross-process cases: the least share of a rank's shards on 2 MiB pages.</summary>
    public double? ShardHugePageFraction { get; init; }
    public double? P2pGbps { get; init; }
    /// <summary>Cross-process cases: how long after the first participant of the timed repetition
    /// the last one started (milliseconds), in the case and in the reference chosen.</summary>
    public double? StartSpreadMs { get; init; }
    public double? ReferenceStartSpreadMs { get; init; }
}

/// <summary>
/// Same-process layout changes of a LLaMA model's parameters (every "device" a pre-faulted host
/// buffer in this process), measured against the best copy of the same number of bytes in the
/// same run (memcpy on one thread or on the reallocation's threads, or the reallocation's
/// streaming copy on its threads, between pre-faulted buffers),
/// candidate and reference interleaved, best of n. Each case is verified bit-exact first: the
/// round trip from -> to -> from must reproduce every source shard's hash.
/// </summary>
internal static unsafe class InProcessReallocBenchmark
{
    public static (double MemcpyGbps, List<ReallocBenchCase> Cases) Run(
        LlamaShape shape, IReadOnlyList<(ParallelLayout From, ParallelLayout To)> pairs, int reps, Action<string>? log = null)
    {
        var factory = LlamaShardLayouts.Factory(shape);
        using var stream = NativeStream.Cpu();
        var cases = new List<ReallocBenchCase>();
        var rng = new Random(7);
        long maxBytes = 0;
        var plans = pairs.Select(p => (Fwd: ReallocPlan.Build(p.From, p.To, factory, 4, _ => 0),
                                       Back: ReallocPlan.Build(p.To, p.From, factory, 4, _ => 0))).ToList();
        foreach (var (fwd, _) in plans) maxBytes = Math.Max(maxBytes, fwd.LocalBytes + fwd.RemoteBytes);
        using var refSrc = new HostBlock(maxBytes);
        using var refDst = new HostBlock(maxBytes);
        Fill(refSrc, rng);
        double bestMemcpy = 0;
        foreach (var (fwd, back) in plans)
        {
            var blocks = new List<HostBlock>();
            try
            {
                var src = Allocate(fwd.From, fwd.SourceLayoutOf, blocks);
                var dst = Allocate(fwd.To, fwd.DestinationLayoutOf, blocks);
                // Consistent sources (replicated tensors equal on every tensor rank, data-parallel
                // replicas equal): random parameters in the unsharded layout, reallocated to the source.
                var whole = ParallelLayout.Contiguous(-1, 1, 1, 1);
                var seed = ReallocPlan.Build(whole, fwd.From, factory, 4, _ => 0);
                var wholeBufs = Allocate(whole, seed.SourceLayoutOf, blocks);
                Fill(wholeBufs[-1].Block, rng);
                InProcessRealloc.Execute(seed, wholeBufs.ToDictionary(kv => kv.Key, kv => kv.Value.Buffer),
                                         src.ToDictionary(kv => kv.Key, kv => kv.Value.Buffer));
                wholeBufs[-1].Block.Dispose();
                var hashes = src.ToDictionary(kv => kv.Key, kv => Native.Hash(stream, kv.Value.Block.Pointer, kv.Value.Buffer.Bytes));
                var srcBufs = src.ToDictionary(kv => kv.Key, kv => kv.Value.Buffer);
                var dstBufs = dst.ToDictionary(kv => kv.Key, kv => kv.Value.Buffer);
                InProcessRealloc.Execute(fwd, srcBufs, dstBufs);
                foreach (var b in src.Values) new Span<byte>(b.Block.Pointer, (int)Math.Min(b.Block.Bytes, 1 << 20)).Clear();
                InProcessRealloc.Execute(back, dstBufs, srcBufs);
                foreach (var (d, h) in hashes)
                    if (Native.Hash(stream, src[d].Block.Pointer, src[d].Buffer.Bytes) != h)
                        throw new InvalidOperationException($"reallocation {fwd.From} -> {fwd.To} -> back is not bit-exact on device {d}");

                long bytes = fwd.LocalBytes + fwd.RemoteBytes;
                byte* rs = (byte*)refSrc.Pointer, rd = (byte*)refDst.Pointer;
                // The reference: the best copy of the same bytes this machine does between
                // pre-faulted buffers: memcpy on one thread, memcpy split over the threads the
                // reallocation's copy uses, and the reallocation's own streaming copy split the
                // same way; interleaved with the candidate so all see the same load.
                // Also the same copies between the case's own pages (its destination shards filled
                // from its source shards in order), so that where the buffers lie in memory (huge
                // pages or not, which channels) favours no side.
                var ownItems = CopyItems(src.Values.Select(v => v.Buffer).ToList(), dst.Values.Select(v => v.Buffer).ToList());
                long ownBytes = ownItems.Sum(x => x.Bytes);
                var refItems = CopyItems([new InProcessRealloc.DeviceBuffer((nint)rs, bytes)], [new InProcessRealloc.DeviceBuffer((nint)rd, bytes)]);
                double best = double.MaxValue, one = double.MaxValue, threads = double.MaxValue, streaming = double.MaxValue,
                       ownMemcpy = double.MaxValue, ownStreaming = double.MaxValue;
                static double Seconds(long t0, long t1) => (t1 - t0) / (double)Stopwatch.Frequency;
                for (int i = 0; i < reps; i++)
                {
                    long t0 = Stopwatch.GetTimestamp();
                    InProcessRealloc.Execute(fwd, srcBufs, dstBufs);
                    long t1 = Stopwatch.GetTimestamp();
                    Buffer.MemoryCopy(rs, rd, bytes, bytes);
                    long t2 = Stopwatch.GetTimestamp();
                    ParallelCopy(rs, rd, bytes);
                    long t3 = Stopwatch.GetTimestamp();
                    ItemCopy(refItems, streamingStores: true);
                    long t4 = Stopwatch.GetTimestamp();
                    ItemCopy(ownItems, streamingStores: false);
                    long t5 = Stopwatch.GetTimestamp();
                    ItemCopy(ownItems, streamingStores: true);
                    long t6 = Stopwatch.GetTimestamp();
                    ownMemcpy = Math.Min(ownMemcpy, Seconds(t4, t5) * bytes / ownBytes);
                    ownStreaming = Math.Min(ownStreaming, Seconds(t5, t6) * bytes / ownBytes);
                    best = Math.Min(best, Seconds(t0, t1));
                    one = Math.Min(one, Seconds(t1, t2));
                    threads = Math.Min(threads, Seconds(t2, t3));
                    streaming = Math.Min(streaming, Seconds(t3, t4));
                }
                double bestRef = new[] { one, threads, streaming, ownMemcpy, ownStreaming }.Min();
                var c = new ReallocBenchCase(Describe(fwd.From), Describe(fwd.To), "same-process", bytes, best, bytes / best / 1e9, bytes / bestRef / 1e9)
                {
                    Reference = bestRef == one ? "memcpy_1_thread" : bestRef == threads ? "memcpy_threads" : bestRef == streaming ? "streaming_copy_threads"
                              : bestRef == ownMemcpy ? "memcpy_threads_case_pages" : "streaming_copy_threads_case_pages",
                    MemcpyOneThreadGbps = bytes / one / 1e9, MemcpyThreadsGbps = bytes / threads / 1e9,
                    StreamingCopyThreadsGbps = bytes / streaming / 1e9,
                    CasePagesMemcpyThreadsGbps = bytes / ownMemcpy / 1e9, CasePagesStreamingCopyThreadsGbps = bytes / ownStreaming / 1e9,
                };
                bestMemcpy = Math.Max(bestMemcpy, c.ReferenceGbps);
                log?.Invoke($"{c.From} -> {c.To}: {bytes / 1e9:F2} GB in {best * 1e3:F1} ms, {c.Gbps:F2} GB/s, best copy {c.ReferenceGbps:F2} GB/s ({c.Reference}), ratio {c.Ratio:F2}");
                cases.Add(c);
            }
            finally
            {
                foreach (var b in blocks) b.Dispose();
            }
        }
        return (bestMemcpy, cases);
    }

    /// <summary>memcpy split into equal parts over the threads the reallocation's copy uses.</summary>
    private static void ParallelCopy(byte* src, byte* dst, long bytes)
    {
        int workers = InProcessRealloc.CopyThreads;
        long part = (bytes + workers - 1) / workers;
        Parallel.For(0, workers, new ParallelOptions { MaxDegreeOfParallelism = workers }, k =>
        {
            long o = k * part, n = Math.Min(part, bytes - o);
            if (n > 0) Buffer.MemoryCopy(src + o, dst + o, n, n);
        });
    }

    /// <summary>The destination buffers <paramref name="dst"/>, each filled from the source buffers
    /// read in order (wrapping round: a replicated tensor makes a case's destinations larger than its
    /// sources), as copy items of at most 4 MiB that never cross a buffer's end: the reallocation's
    /// streaming copy schedule (<see cref="ItemCopy"/>).</summary>
    private static List<(nint Src, nint Dst, long Bytes)> CopyItems(List<InProcessRealloc.DeviceBuffer> src, List<InProcessRealloc.DeviceBuffer> dst)
    {
        const long Item = 4L << 20;
        var items = new List<(nint, nint, long)>();
        src = src.Where(b => b.Bytes > 0).ToList();
        if (src.Count == 0) throw new InvalidOperationException("a reallocation case without source bytes");
        int si = 0; long so = 0;
        foreach (var d in dst)
            for (long o = 0; o < d.Bytes;)
            {
                long n = Math.Min(Math.Min(Item, d.Bytes - o), src[si].Bytes - so);
                items.Add((src[si].Pointer + (nint)so, d.Pointer + (nint)o, n));
                o += n; so += n;
                if (so == src[si].Bytes) { si = (si + 1) % src.Count; so = 0; }
            }
        return items;
    }

    /// <summary>Copies <paramref name="items"/> over the reallocation's copy threads, taken in turn.</summary>
    private static void ItemCopy(List<(nint Src, nint Dst, long Bytes)> items, bool streamingStores)
    {
        int workers = InProcessRealloc.CopyThreads, next = -1;
        Parallel.For(0, workers, new ParallelOptions { MaxDegreeOfParallelism = workers }, _ =>
        {
            for (int k; (k = Interlocked.Increment(ref next)) < items.Count;)
            {
                var (s, d, n) = items[k];
                if (streamingStores) StreamingCopy.Copy((byte*)s, (byte*)d, n);
                else Buffer.MemoryCopy((void*)s, (void*)d, n, n);
            }
            if (streamingStores) StreamingCopy.Fence();
        });
    }

    public static string Describe(ParallelLayout l) =>
        $"d{l.Devices[0]}{(l.Devices.Count > 1 ? "-" + l.Devices[^1] : "")}:pp{l.Pp}dp{l.Dp}tp{l.Tp}";

    private static Dictionary<int, (HostBlock Block, InProcessRealloc.DeviceBuffer Buffer)> Allocate(
        ParallelLayout layout, Func<int, ShardLayout> shardOf, List<HostBlock> owned)
    {
        var result = new Dictionary<int, (HostBlock, InProcessRealloc.DeviceBuffer)>();
        foreach (var d in layout.Devices)
        {
            long bytes = shardOf(d).TotalElements * 4;
            var b = new HostBlock(Math.Max(bytes, 64));
            owned.Add(b);
            result[d] = (b, new InProcessRealloc.DeviceBuffer((nint)b.Pointer, bytes));
        }
        return result;
    }

    private static void Fill(HostBlock b, Random rng)
    {
        var s = b.AsSpan<float>();
        for (int i = 0; i < s.Length; i += 1024)
        {
            int n = Math.Min(1024, s.Length - i);
            for (int j = 0; j < n; j++) s[i + j] = (float)rng.NextDouble();
        }
    }
}
