using ReaLNative.Engine.Realloc;
using ReaLNative.Interop;
using Xunit;

namespace ReaLNative.Engine.Tests.Realloc;

/// <summary>
/// A copy out of (or into) another process's shared shard leaves none of that shard's pages in this
/// process's resident set beyond the work items in flight and one batch of done pages (TransportRealloc.ReleasePeerPages): kept, they counted
/// in a worker's peak RSS though they are the owner's memory (session 19: ~0.3 GB of a gpt2-small
/// PPO worker's 2.6 GB). The block is mapped through /proc/self/fd, the same call as between processes;
/// the mapping's resident pages are read from /proc/self/smaps. Bit-exact either way.
/// </summary>
public sealed unsafe class PeerPagesTests
{
    private const long Bytes = 256L << 20;

    [Theory]
    [InlineData(true, true, 1)]
    [InlineData(true, false, 1)]
    [InlineData(true, true, 0)]
    [InlineData(true, false, 0)]
    [InlineData(false, true, 0)]
    [InlineData(false, false, 0)]
    public void PagesOfAMappedPeerBlockLeaveTheResidentSetAsTheyAreCopied(bool release, bool peerIsSource, int batch)
    {
        // 0: the default batch (TransportRealloc.PeerPageBatch); 1: every page as soon as its items are done.
        int batchPages = batch > 0 ? batch : TransportRealloc.PeerPageBatch;
        using var owner = new HostBlock(Bytes, HostAllocFlags.Prefault | HostAllocFlags.Shared);
        using var local = new HostBlock(Bytes);
        var rng = new Random(3);
        rng.NextBytes(new Span<byte>(owner.Pointer, (int)Bytes));
        rng.NextBytes(new Span<byte>(local.Pointer, (int)Bytes));
        var d = SharedHostMemory.Describe((nint)owner.Pointer) ?? throw new InvalidOperationException("the block is not shared");
        nint mapped = peerIsSource ? SharedHostMemory.Map(Environment.ProcessId, d) : SharedHostMemory.MapWritable(Environment.ProcessId, d);
        try
        {
            nint peer = mapped + (nint)d.Offset, mine = (nint)local.Pointer;
            // Every other 1 MiB piece, backwards (the intervals of a realloc need not be in address order).
            const int Mi = 1 << 20;
            var pieces = new List<(nint Src, nint Dst, long Bytes)>();
            for (long o = Bytes - 2 * Mi; o >= 0; o -= 2 * Mi)
                pieces.Add(peerIsSource ? (peer + (nint)o, mine + (nint)o, Mi) : (mine + (nint)o, peer + (nint)o, Mi));
            Assert.Equal(0, ResidentBytes(mapped));
            // Twice with the same pieces, new bytes each time: the second copy runs on the page counts worked out for
            // the first (kept with the pieces list, as a push's are every iteration) and must release the same way.
            for (int round = 0; round < 2; round++)
            {
                if (round > 0)
                {
                    rng.NextBytes(new Span<byte>(owner.Pointer, (int)Bytes));
                    rng.NextBytes(new Span<byte>(local.Pointer, (int)Bytes));
                }
                var ownerBefore = new Span<byte>(owner.Pointer, (int)Bytes).ToArray();
                var localBefore = new Span<byte>(local.Pointer, (int)Bytes).ToArray();
                long most = 0;
                TransportRealloc.CopyWithPeer(pieces, Bytes / 2, peerIsSource, [(mapped, d.Size)], release,
                                              release ? () => { long r = ResidentBytes(mapped); lock (pieces) most = Math.Max(most, r); } : null, batchPages);
                long resident = ResidentBytes(mapped);
                // During the copy: at most the 2 MiB pages of the items in flight (an item: 4 pieces of 1 MiB,
                // each in a page of its own), one per copy thread, and the one the sampling thread is between,
                // and one batch of done pages: fewer than batchPages waiting, or up to batchPages - 1 + 4 (an
                // item's) while they are dropped; pages at items' edges left until the end (session 19) made it
                // the pages of every item copied so far.
                long bound = ((InProcessRealloc.CopyThreads + 1) * 4 + batchPages + 3) * (2L << 20);
                Assert.True(bound < Bytes / 4, $"the bound ({bound} bytes) would not tell a release from keeping the pages");
                if (release) Assert.True(most <= bound, $"copy {round + 1}: {most} bytes of the peer block resident during the copy (bound {bound})");
                if (release) Assert.True(resident == 0, $"copy {round + 1}: {resident} bytes of the peer block resident after the copy");
                else Assert.True(resident >= Bytes / 2, $"copy {round + 1}: {resident} bytes of the peer block resident after the copy");
                // The copied bytes, and nothing else, changed (read through the owner's own pointer).
                var into = peerIsSource ? new Span<byte>(local.Pointer, (int)Bytes) : new Span<byte>(owner.Pointer, (int)Bytes);
                var from = peerIsSource ? ownerBefore : localBefore;
                var intoBefore = peerIsSource ? localBefore : ownerBefore;
                for (int o = 0; o < Bytes; o += Mi)
                {
                    bool copied = o / Mi % 2 == 0;
                    Assert.True(into.Slice(o, Mi).SequenceEqual((copied ? from : intoBefore).AsSpan(o, Mi)), $"copy {round + 1}: {(copied ? "copied" : "untouched")} piece at {o}");
                }
            }
        }
        finally { SharedHostMemory.Unmap(mapped, d.Size); }
    }

    /// <summary>The Rss line of /proc/self/smaps for the mapping that starts at <paramref name="start"/>.</summary>
    private static long ResidentBytes(nint start)
    {
        string head = ((long)start).ToString("x") + "-";
        bool inside = false;
        foreach (var line in File.ReadLines("/proc/self/smaps"))
        {
            string first = line.Split(' ', 2)[0];
            if (!first.EndsWith(':') && first.Contains('-')) inside = first.StartsWith(head, StringComparison.Ordinal);   // a mapping's header: start-end perms ...
            else if (inside && first == "Rss:") return long.Parse(line.Split(' ', StringSplitOptions.RemoveEmptyEntries)[1]) * 1024;
        }
        throw new InvalidOperationException($"no mapping at 0x{head} in /proc/self/smaps");
    }
}
