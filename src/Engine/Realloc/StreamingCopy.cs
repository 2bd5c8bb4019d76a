using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace ReaLNative.Engine.Realloc;

/// <summary>
/// Memory copies with non-temporal (streaming) stores, for copies far larger than the caches:
/// the destination lines are written without being read first. A plain store must first fetch
/// the line it writes (read for ownership), so a copy of many short pieces with plain stores
/// moves three bytes over the memory bus per byte copied (read source, read destination, write
/// destination) where a streaming copy moves two. glibc's memcpy streams only above its
/// non-temporal threshold (tens of MiB), so a reallocation made of per-row pieces (KiB) or
/// 4 MiB pieces ran at 0.58-0.69 of one large memcpy (`realn bench realloc`). The bytes are
/// copied unchanged: bit-exact by construction, and checked against Buffer.MemoryCopy in tests.
/// After the copies of a thread, <see cref="Fence"/> makes its streaming stores visible to
/// others (they are weakly ordered); a caller must fence before it reports the copy done.
/// </summary>
internal static unsafe class StreamingCopy
{
    /// <summary>Pieces shorter than this go through Buffer.MemoryCopy (the alignment head and tail
    /// would dominate).</summary>
    private const long MinStreamBytes = 256;

    private const int Page = 4096;
    private const long PageBlock = 4 * Page;

    /// <summary>Whether this CPU has streaming stores that the copy uses (x86 SSE2 and up);
    /// elsewhere <see cref="Copy(byte*, byte*, long)"/> is Buffer.MemoryCopy.</summary>
    public static bool IsSupported => Sse2.IsSupported;

    /// <summary>The vector width of the streaming stores; <see cref="Best"/> is this CPU's widest.</summary>
    public enum Width { Sse2 = 16, Avx = 32, Avx512 = 64 }

    public static Width Best => Avx512F.IsSupported ? Width.Avx512 : Avx.IsSupported ? Width.Avx : Width.Sse2;

    /// <summary>The widths this CPU can run (tests run each).</summary>
    public static IEnumerable<Width> Supported =>
        new[] { (Width.Sse2, Sse2.IsSupported), (Width.Avx, Avx.IsSupported), (Width.Avx512, Avx512F.IsSupported) }.Where(w => w.Item2).Select(w => w.Item1);

    /// <summary>Copies <paramref name="bytes"/> from <paramref name="src"/> to <paramref name="dst"/>
    /// (the ranges must not overlap) with streaming stores; call <see cref="Fence"/> after the last
    /// copy of the thread.</summary>
    public static void Copy(byte* src, byte* dst, long bytes) => Copy(src, dst, bytes, Best);

    /// <summary><see cref="Copy(byte*, byte*, long)"/> with stores of <paramref name="width"/>
    /// (which this CPU must support).</summary>
    public static void Copy(byte* src, byte* dst, long bytes, Width width)
    {
        if (bytes < MinStreamBytes || !IsSupported)
        {
            Buffer.MemoryCopy(src, dst, bytes, bytes);
            return;
        }
        if (!(width == Width.Avx512 ? Avx512F.IsSupported : width == Width.Avx ? Avx.IsSupported : Sse2.IsSupported))
            throw new ArgumentException($"streaming stores of {width} are not supported on this CPU");
        int align = (int)width;
        // Plain copy up to the destination's first aligned address.
        long head = (align - ((long)dst & (align - 1))) & (align - 1);
        if (head > 0)
        {
            Buffer.MemoryCopy(src, dst, head, head);
            src += head; dst += head; bytes -= head;
        }
        if (width == Width.Avx512 && bytes >= PageBlock)
        {
            // Whole blocks of 4 pages, the 4 pages read in step (as glibc's large memcpy does):
            // four streams keep more memory pages open and the prefetchers busy than one.
            long blocks = bytes / PageBlock;
            for (long k = 0; k < blocks; k++, src += PageBlock, dst += PageBlock)
                for (int o = 0; o < Page; o += 128)
                {
                    Sse.Prefetch0(src + o + 512);
                    Sse.Prefetch0(src + Page + o + 512);
                    Sse.Prefetch0(src + 2 * Page + o + 512);
                    Sse.Prefetch0(src + 3 * Page + o + 512);
                    var a0 = Vector512.Load(src + o);
                    var a1 = Vector512.Load(src + o + 64);
                    var b0 = Vector512.Load(src + Page + o);
                    var b1 = Vector512.Load(src + Page + o + 64);
                    var c0 = Vector512.Load(src + 2 * Page + o);
                    var c1 = Vector512.Load(src + 2 * Page + o + 64);
                    var d0 = Vector512.Load(src + 3 * Page + o);
                    var d1 = Vector512.Load(src + 3 * Page + o + 64);
                    Avx512F.StoreAlignedNonTemporal(dst + o, a0);
                    Avx512F.StoreAlignedNonTemporal(dst + o + 64, a1);
                    Avx512F.StoreAlignedNonTemporal(dst + Page + o, b0);
                    Avx512F.StoreAlignedNonTemporal(dst + Page + o + 64, b1);
                    Avx512F.StoreAlignedNonTemporal(dst + 2 * Page + o, c0);
                    Avx512F.StoreAlignedNonTemporal(dst + 2 * Page + o + 64, c1);
                    Avx512F.StoreAlignedNonTemporal(dst + 3 * Page + o, d0);
                    Avx512F.StoreAlignedNonTemporal(dst + 3 * Page + o + 64, d1);
                }
            bytes -= blocks * PageBlock;
        }
        long body = bytes & ~(4L * align - 1);
        byte* end = dst + body;
        if (width == Width.Avx512)
        {
            for (; dst < end; src += 256, dst += 256)
            {
                var a = Vector512.Load(src);
                var b = Vector512.Load(src + 64);
                var c = Vector512.Load(src + 128);
                var d = Vector512.Load(src + 192);
                Avx512F.StoreAlignedNonTemporal(dst, a);
                Avx512F.StoreAlignedNonTemporal(dst + 64, b);
                Avx512F.StoreAlignedNonTemporal(dst + 128, c);
                Avx512F.StoreAlignedNonTemporal(dst + 192, d);
            }
        }
        else if (width == Width.Avx)
        {
            for (; dst < end; src += 128, dst += 128)
            {
                var a = Vector256.Load(src);
                var b = Vector256.Load(src + 32);
                var c = Vector256.Load(src + 64);
                var d = Vector256.Load(src + 96);
                Avx.StoreAlignedNonTemporal(dst, a);
                Avx.StoreAlignedNonTemporal(dst + 32, b);
                Avx.StoreAlignedNonTemporal(dst + 64, c);
                Avx.StoreAlignedNonTemporal(dst + 96, d);
            }
        }
        else
        {
            for (; dst < end; src += 64, dst += 64)
            {
                var a = Vector128.Load(src);
                var b = Vector128.Load(src + 16);
                var c = Vector128.Load(src + 32);
                var d = Vector128.Load(src + 48);
                Sse2.StoreAlignedNonTemporal(dst, a);
                Sse2.StoreAlignedNonTemporal(dst + 16, b);
                Sse2.StoreAlignedNonTemporal(dst + 32, c);
                Sse2.StoreAlignedNonTemporal(dst + 48, d);
            }
        }
        long tail = bytes - body;
        if (tail > 0) Buffer.MemoryCopy(src, dst, tail, tail);
    }

    /// <summary>Orders this thread's streaming stores before its later stores (sfence).</summary>
    public static void Fence()
    {
        if (Sse.IsSupported) Sse.StoreFence();
    }
}
