using ReaLNative.Engine.Layout;

namespace ReaLNative.Engine.Realloc;

/// <summary>A copy of <see cref="Length"/> elements from source offset to destination offset.</summary>
internal readonly record struct Interval(long SrcOffset, long DstOffset, long Length);

/// <summary>
/// Which elements of a destination view come from a source view of the same parameter, as runs
/// that are contiguous in BOTH shard buffers. Views are boxes in the global index space (full
/// extent on every dimension but the split one), so their intersection is a box too; it is walked
/// row-major with the longest run that stays contiguous on both sides.
/// </summary>
internal static class IntervalMath
{
    public static void Intersect(ShardView src, ShardView dst, List<Interval> output)
    {
        if (!src.GlobalShape.AsSpan().SequenceEqual(dst.GlobalShape))
            throw new ArgumentException($"parameter '{src.Name}': shapes differ between layouts [{string.Join(", ", src.GlobalShape)}] vs [{string.Join(", ", dst.GlobalShape)}]");
        int nd = src.GlobalShape.Length;
        Span<long> lo = stackalloc long[nd], hi = stackalloc long[nd];
        for (int d = 0; d < nd; d++)
        {
            long l = 0, h = src.GlobalShape[d];
            if (src.SplitDim == d) { l = Math.Max(l, src.SliceStart); h = Math.Min(h, src.SliceStart + src.SliceLength); }
            if (dst.SplitDim == d) { l = Math.Max(l, dst.SliceStart); h = Math.Min(h, dst.SliceStart + dst.SliceLength); }
            if (h <= l) return;
            lo[d] = l; hi[d] = h;
        }
        long[] sShape = src.LocalShape, dShape = dst.LocalShape;
        // Strides of the local row-major layouts.
        Span<long> sStride = stackalloc long[nd], dStride = stackalloc long[nd];
        sStride[nd - 1] = dStride[nd - 1] = 1;
        for (int d = nd - 2; d >= 0; d--) { sStride[d] = sStride[d + 1] * sShape[d + 1]; dStride[d] = dStride[d + 1] * dShape[d + 1]; }
        // j = first dimension from which the box is a contiguous run on both sides: every dimension
        // after j is covered fully in both local shapes.
        int j = nd - 1;
        while (j > 0 && hi[j] - lo[j] == sShape[j] && hi[j] - lo[j] == dShape[j]) j--;
        long run = hi[j] - lo[j];
        for (int d = j + 1; d < nd; d++) run *= hi[d] - lo[d];
        long sBase = src.Offset, dBase = dst.Offset;
        for (int d = 0; d < nd; d++)
        {
            long sl = lo[d] - (src.SplitDim == d ? src.SliceStart : 0);
            long dl = lo[d] - (dst.SplitDim == d ? dst.SliceStart : 0);
            sBase += sl * sStride[d];
            dBase += dl * dStride[d];
        }
        // Odometer over dimensions < j.
        Span<long> idx = stackalloc long[Math.Max(j, 1)];
        long count = 1;
        for (int d = 0; d < j; d++) count *= hi[d] - lo[d];
        for (long it = 0; it < count; it++)
        {
            long so = sBase, dOff = dBase;
            for (int d = 0; d < j; d++) { so += idx[d] * sStride[d]; dOff += idx[d] * dStride[d]; }
            Append(output, new Interval(so, dOff, run));
            for (int d = j - 1; d >= 0; d--)
            {
                if (++idx[d] < hi[d] - lo[d]) break;
                idx[d] = 0;
            }
        }
    }

    /// <summary>Appends, merging with the previous interval when both sides continue it.</summary>
    public static void Append(List<Interval> output, Interval iv)
    {
        if (output.Count > 0)
        {
            var last = output[^1];
            if (last.SrcOffset + last.Length == iv.SrcOffset && last.DstOffset + last.Length == iv.DstOffset)
            {
                output[^1] = last with { Length = last.Length + iv.Length };
                return;
            }
        }
        output.Add(iv);
    }

    /// <summary>Every interval between two shards: for each destination view, the source view of
    /// the same parameter if the source shard holds one. Sorted by destination offset.</summary>
    /// <remarks><paramref name="takeReplicated"/> false skips parameters the source shard holds
    /// whole (replicated across tensor ranks), so that only one source tensor rank provides them.</remarks>
    public static List<Interval> Between(ShardLayout src, ShardLayout dst, bool takeReplicated = true)
    {
        var result = new List<Interval>();
        foreach (var dv in dst.Views)
            if (src.TryGet(dv.Name, out var sv) && (takeReplicated || sv.SplitDim >= 0)) Intersect(sv, dv, result);
        return result;
    }

    /// <summary><paramref name="intervals"/> cut into <paramref name="parts"/> consecutive parts of
    /// equal length (to an element; an interval that straddles a boundary is cut in two), in order.</summary>
    public static List<Interval>[] Split(IReadOnlyList<Interval> intervals, int parts)
    {
        if (parts < 1) throw new ArgumentOutOfRangeException(nameof(parts), parts, "at least one part");
        long total = TotalLength(intervals);
        var result = Enumerable.Range(0, parts).Select(_ => new List<Interval>()).ToArray();
        int part = 0;
        long done = 0;   // elements placed before the current interval's remainder
        foreach (var iv0 in intervals)
        {
            var iv = iv0;
            while (iv.Length > 0)
            {
                long end = total * (part + 1) / parts;   // this part ends at this many elements
                long take = Math.Min(iv.Length, end - done);
                if (take <= 0) { part++; continue; }
                result[part].Add(new Interval(iv.SrcOffset, iv.DstOffset, take));
                done += take;
                iv = new Interval(iv.SrcOffset + take, iv.DstOffset + take, iv.Length - take);
            }
        }
        return result;
    }

    public static long TotalLength(IReadOnlyList<Interval> intervals)
    {
        long n = 0;
        foreach (var iv in intervals) n += iv.Length;
        return n;
    }
}
