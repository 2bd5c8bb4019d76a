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
/// (whole-step messages serialized them: gather all, move all, scatter all). Intervals of at least
/// <see cref="DirectMinBytes"/> skip the staging altogether: each is a tagged message (or several,
/// of at most <see cref="DirectPieceBytes"/>) from the source shard straight into the destination
/// shard, one copy over UCX's cma rendezvous instead of three passes over memory; a packed piece
/// that is one run of the source (destination) shard is sent from (received into) the shard
/// itself, skipping the gather (scatter). Both sides cut a step identically, so a piece's tag is
/// (step, piece index). Over an
/// <see cref="IRmaTransport"/>, intervals of at least <see cref="RmaMinBytes"/> skip the staging:
/// the sender registers its shard and sends the descriptor, the receiver gets them straight into
/// its shard and then tells the sender it is done (the sender returns only after that). All
/// receives are posted before the sends, so no ordering between devices can deadlock.
/// </summary>
internal sealed class TransportRealloc : IDisposable
{
    private readonly ITransport _transport;
    private readonly NativeStream _stream = NativeStream.Cpu();
    private readonly List<HostBlock> _staging = [];

    public TransportRealloc(ITransport transport) => _transport = transport;

    /// <summary>Intervals at least this long are read by the receiver straight from the sender's
    /// shard with RMA get (one copy, e.g. cma's process_vm_readv) when the transport is an
    /// <see cref="IRmaTransport"/>; shorter ones are staged (gather, message, scatter: three passes
    /// over memory, but one message for many intervals). 0 (the default) disables RMA: measured
    /// here with 32 KiB (UCX 1.13, cma, 4 processes on 2 cores) it was slower than staging
    /// (cross-process cases 0.12-0.38 of p2p against 0.42-0.67 staged). Likely cause (UCX 1.13
    /// source and `ucx_info -e`): cma is only an rma_bw lane (used by the tagged rendezvous); RMA
    /// get/put use the rma lanes (sysv/posix), which cannot reach memory UCX did not allocate, so
    /// the rkey resolves to UCX's software RMA ("sw_rma"): active messages served by the target's
    /// progress thread, copied through shared-memory fragments (two copies, and waits on a peer
    /// that naps between polls). The direct tagged messages (<see cref="DirectMinBytes"/>) give the
    /// one-copy path instead.</summary>
    public long RmaMinBytes { get; init; }

    private const long DescriptorTag = 1L << 39 | 1, DoneTag = 1L << 39 | 2, ProcAddressTag = 1L << 39 | 3, ProcDoneTag = 1L << 39 | 4, DestinationTag = 1L << 39 | 5;

    /// <summary>Whether a receiver reads its intervals straight from the shard of a sender that the
    /// transport names a process on this host (<see cref="ITransport.LocalProcessOf"/>): out of the
    /// sender's shard mapped from shared memory (<see cref="SharedMemory"/>), else with one
    /// process_vm_readv per batch of intervals (<c>realn_process_read</c>): one copy, no gather,
    /// no scatter, no message per interval; the sender only announces its shard and waits for
    /// the receiver's "done". Every other peer (another host, process reads off) goes over the
    /// transport as below. Where the kernel refuses the read (another user, ptrace scope) the pair
    /// falls back to tagged messages, one per interval. Every mover of a job must agree (the
    /// default; tests turn it off to exercise the transport paths).</summary>
    public bool ProcessRead { get; init; } = true;

    /// <summary>Whether a receiver that reads a sender's process (<see cref="ProcessRead"/>) maps
    /// the sender's shard instead, where the shard lies in shared host memory
    /// (<see cref="HostAllocFlags.Shared"/>; worker processes allocate their parameters and AdamW
    /// moments so): the sender announces its block (memfd descriptor number, offset, size, token),
    /// the receiver maps it read-only once (<see cref="PeerMappings"/>, kept for later
    /// reallocations) and copies every interval straight from it into its destination shard, as a
    /// same-process reallocation does (<see cref="InProcessRealloc.CopyPieces"/>: streaming stores,
    /// its threads), with no system call per interval. Where the block cannot be opened (another
    /// user, ptrace restrictions) the receiver reads with process_vm_readv as before; a sender
    /// whose shard is not shared is read that way too. Reader-side only: movers need not agree.
    /// REALN_REALLOC_SHARED_MEMORY=0 turns it off by default.</summary>
    public bool SharedMemory { get; init; } = Environment.GetEnvironmentVariable("REALN_REALLOC_SHARED_MEMORY") != "0";

    /// <summary>Whether a sender on this host writes its receivers' destination shards itself (push)
    /// where they lie in shared host memory, instead of each receiver copying out of the sender's
    /// shard (pull, <see cref="SharedMemory"/>): each receiver that reads this sender's process
    /// first announces its destination block (as a sender announces its shard); the sender maps
    /// every such block writable once (<see cref="PeerMappings"/>, kept), copies the intervals of
    /// all of them in one pass in source order (<see cref="InProcessRealloc.SourceOrder"/>:
    /// streaming stores, its threads) and then tells each receiver its destination is written.
    /// Why: a tensor split along its rows (the row-parallel weights of a tensor-parallel layout)
    /// gives each receiver part of every row; receivers that each pull their parts read part rows,
    /// at about half the bandwidth of reading whole rows once (the hardware prefetchers fetch the
    /// rest of each row anyway), while the sender reads each row once and writes every part where
    /// it goes. A receiver whose destination is not shared, or that the sender may not map, is
    /// served by pull as before. Every mover of a job must agree (the receiver's announcement is
    /// a message the sender must take): the default; REALN_REALLOC_PUSH=0 turns it off.</summary>
    public bool Push { get; init; } = Environment.GetEnvironmentVariable("REALN_REALLOC_PUSH") != "0";

    /// <summary>Whether this mover drops its page-table entries of another process's shared block as
    /// it copies out of it (pull) or into it (push): each copy thread drops the whole 2 MiB pages of
    /// the work item it has just copied, and the edges go at the end of the copy, so that the block's
    /// pages, the owner's memory, never count in this process's resident set (and peak) beyond the
    /// items in flight (InProcessRealloc.CopyThreads x PieceBytes, and their edge pages): kept mapped, a worker's peak held about 0.3 GB of its peers' shards (session
    /// 19, gpt2-small PPO on 4 workers: 0.16 GB left mapped by the generation's reallocation and 0.16
    /// GB during a checkpoint's). The mapping itself stays (<see cref="PeerMappings"/>); the price is a
    /// page fault per page touched again in a later reallocation. REALN_REALLOC_KEEP_PEER_PAGES=1
    /// keeps them (the earlier behaviour).</summary>
    public bool ReleasePeerPages { get; init; } = Environment.GetEnvironmentVariable("REALN_REALLOC_KEEP_PEER_PAGES") != "1";

    /// <summary>Copies <paramref name="pieces"/> (<paramref name="total"/> bytes) whose source
    /// (<paramref name="peerIsSource"/>) or destination lies in the mapped peer spans
    /// <paramref name="spans"/> (mapping base, size); with <see cref="ReleasePeerPages"/>
    /// (<paramref name="release"/>) dropping the peer pages from this process's page table as they
    /// are copied. One copy either way (same threads, same streaming choice), so the same bytes.</summary>
    private void CopyWithPeer(List<(nint Src, nint Dst, long Bytes)> pieces, long total, bool peerIsSource, IReadOnlyList<(nint Base, long Size)> spans) =>
        CopyWithPeer(pieces, total, peerIsSource, spans, ReleasePeerPages);

    /// <summary>How many done peer pages (2 MiB) a copy that releases them drops together (at most this
    /// many minus one wait, 30 MiB at 16): each drop is one madvise that unmaps them and flushes the TLB
    /// of every core running this process's threads, i.e. interrupts the other copy threads; dropping
    /// each 4 MiB work item's pages alone cost the cross-process bench case with one sender (d0 tp1 to
    /// d1-2 tp2) 0.74-0.79 of its reference against 0.89 with the pages kept (session 21, under load).
    /// REALN_PEER_PAGE_BATCH overrides it.</summary>
    internal static readonly int PeerPageBatch = int.TryParse(Environment.GetEnvironmentVariable("REALN_PEER_PAGE_BATCH"), out int n) && n > 0 ? n : 16;

    /// <param name="afterItem">tests: called on the copy thread after each work item (and the drop of the batch of pages it filled)</param>
    internal static void CopyWithPeer(List<(nint Src, nint Dst, long Bytes)> pieces, long total, bool peerIsSource, IReadOnlyList<(nint Base, long Size)> spans, bool release,
                                      Action? afterItem = null, int batchPages = 0)
    {
        if (!release)
        {
            InProcessRealloc.CopyPieces(pieces, total);
            return;
        }
        // Each peer page (2 MiB: the shards lie in huge pages) leaves this process's page table as
        // soon as every work item that touches it is copied: a count per page of the items touching
        // it, decremented once per item by the copy thread that finished it; pages at zero go in
        // batches (below). So at any time only the pages of the items in flight and one batch are
        // mapped, edges included (until session 20 an item's edge pages
        // stayed until the end of the copy: 86 MB of a gpt2-small refill). One copy, one set of
        // threads: releasing in separate windows copied each window with its own threads
        // (cross-process reallocation at 0.77 of its reference against 0.94 kept, session 19).
        if (batchPages <= 0) batchPages = PeerPageBatch;
        var book = PageBook.For(pieces, peerIsSource, spans);
        var (items, firstPage, itemPages, itemOf) = (book.Items, book.FirstPage, book.ItemPages, book.ItemOf);
        var refs = book.Refs.Select(r => (int[])r.Clone()).ToArray();   // counted down by this copy
        // Pages whose count reached zero wait in one list until it holds batchPages of them, then go in
        // runs (one call per run of adjacent pages): each call unmaps and flushes the TLB of every core that
        // runs this process's threads, so dropping each item's 2 pages alone interrupted the other copy threads
        // once per 4 MiB.
        var ready = new List<(int Span, long Page)>();
        void Drop(List<(int Span, long Page)> pages)
        {
            pages.Sort();
            for (int i = 0; i < pages.Count;)
            {
                int j = i + 1;
                while (j < pages.Count && pages[j].Span == pages[i].Span && pages[j].Page == pages[j - 1].Page + 1) j++;
                var (b, size) = spans[pages[i].Span];
                long a = (firstPage[pages[i].Span] + pages[i].Page) << PageBook.PageShift, z = (firstPage[pages[i].Span] + pages[j - 1].Page + 1) << PageBook.PageShift;
                SharedHostMemory.ReleasePages(b, size, (nint)a, (nint)z);
                i = j;
            }
        }
        try
        {
            InProcessRealloc.CopyPieces(pieces, total, InProcessRealloc.StreamMinBytes, items: items, copied: (first, end) =>
            {
                List<(int Span, long Page)>? done = null;
                foreach (var (k, p0, p1) in itemPages[itemOf[first]])
                    for (long p = p0; p <= p1; p++)
                        if (Interlocked.Decrement(ref refs[k][p]) == 0) (done ??= []).Add((k, p));
                // Dropped under the lock: a thread that finishes an item meanwhile waits (tens of microseconds) rather
                // than fill another batch while this one is still mapped, so at most one batch is.
                if (done is not null)
                    lock (ready)
                    {
                        ready.AddRange(done);
                        if (ready.Count >= batchPages)
                        {
                            Drop(ready);
                            ready.Clear();
                        }
                    }
                afterItem?.Invoke();
            });
        }
        finally { lock (ready) Drop(ready); }   // the batch not yet full, also when the copy failed
    }

    /// <summary>Which peer pages (2 MiB) each work item of a copy touches, and how many items touch each page
    /// (<see cref="CopyWithPeer(List{ValueTuple{nint, nint, long}}, long, bool, IReadOnlyList{ValueTuple{nint, long}}, bool, Action?, int)"/>
    /// counts a copy of <see cref="Refs"/> down). Worked out once per pieces list and kept with it: a push's pieces
    /// are kept per plan (<see cref="_pushPieces"/>) and run every iteration, and walking their tens of thousands of
    /// per-row pieces took 3-7 ms of a 63-97 ms copy of 1.2 GB from one sender (`realn bench realloc`, d0 tp1 to
    /// d1-2 tp2; session 22).</summary>
    private sealed class PageBook
    {
        public const int PageShift = 21;
        public required (nint Base, long Size)[] Spans { get; init; }
        public required bool PeerIsSource { get; init; }
        public required List<int> Items { get; init; }
        public required long[] FirstPage { get; init; }
        /// <summary>Per span, the items touching each of its pages (read only: a copy counts down a clone).</summary>
        public required int[][] Refs { get; init; }
        /// <summary>Per item, per span it touches, the pages from the lowest to the highest it touches.</summary>
        public required List<(int Span, long First, long Last)>[] ItemPages { get; init; }
        /// <summary>The item that starts at a piece index.</summary>
        public required Dictionary<int, int> ItemOf { get; init; }

        private static readonly System.Runtime.CompilerServices.ConditionalWeakTable<List<(nint Src, nint Dst, long Bytes)>, PageBook> s_kept = new();

        /// <summary>The book of <paramref name="pieces"/> (their peer side: sources where
        /// <paramref name="peerIsSource"/>, else destinations) over <paramref name="spans"/>: kept where the same list
        /// ran last with the same spans and direction, else worked out (and kept). The caller must not change a list
        /// it has copied with.</summary>
        public static PageBook For(List<(nint Src, nint Dst, long Bytes)> pieces, bool peerIsSource, IReadOnlyList<(nint Base, long Size)> spans)
        {
            if (s_kept.TryGetValue(pieces, out var kept) && kept.PeerIsSource == peerIsSource && kept.Spans.AsSpan().SequenceEqual(spans.ToArray()))
                return kept;
            var book = Build(pieces, peerIsSource, spans);
            s_kept.AddOrUpdate(pieces, book);
            return book;
        }

        private static PageBook Build(List<(nint Src, nint Dst, long Bytes)> pieces, bool peerIsSource, IReadOnlyList<(nint Base, long Size)> spans)
        {
            var items = InProcessRealloc.Items(pieces);
            var firstPage = new long[spans.Count];
            var refs = new int[spans.Count][];
            for (int k = 0; k < spans.Count; k++)
            {
                firstPage[k] = (long)spans[k].Base >> PageShift;
                refs[k] = new int[(int)((((long)spans[k].Base + spans[k].Size - 1) >> PageShift) - firstPage[k] + 1)];
            }
            // Per item and span, the pages from the lowest to the highest it touches (a page in between that
            // it does not touch only waits for it too: no sort of the pieces, which may be thousands of rows).
            var itemPages = new List<(int Span, long First, long Last)>[items.Count - 1];
            var itemOf = new Dictionary<int, int>(items.Count);
            var lo = new long[spans.Count];
            var hi = new long[spans.Count];
            for (int t = 0; t + 1 < items.Count; t++)
            {
                itemOf[items[t]] = t;
                Array.Fill(lo, long.MaxValue);
                Array.Fill(hi, long.MinValue);
                for (int i = items[t]; i < items[t + 1]; i++)
                {
                    long at = peerIsSource ? pieces[i].Src : pieces[i].Dst;
                    if (pieces[i].Bytes <= 0) continue;
                    for (int k = 0; k < spans.Count; k++)
                        if (at >= spans[k].Base && at < spans[k].Base + spans[k].Size)
                        {
                            lo[k] = Math.Min(lo[k], at >> PageShift);
                            hi[k] = Math.Max(hi[k], (at + pieces[i].Bytes - 1) >> PageShift);
                            break;
                        }
                }
                var runs = new List<(int, long, long)>();
                for (int k = 0; k < spans.Count; k++)
                {
                    if (hi[k] < lo[k]) continue;
                    long p0 = lo[k] - firstPage[k], p1 = hi[k] - firstPage[k];
                    runs.Add((k, p0, p1));
                    for (long p = p0; p <= p1; p++) refs[k][p]++;
                }
                itemPages[t] = runs;
            }
            return new PageBook { Spans = [.. spans], PeerIsSource = peerIsSource, Items = items, FirstPage = firstPage, Refs = refs, ItemPages = itemPages, ItemOf = itemOf };
        }
    }

    /// <summary>Bytes this mover has written into other processes' destination shards (push).</summary>
    public long PushedBytes => Interlocked.Read(ref _pushedBytes);
    private long _pushedBytes;

    /// <summary>Bytes this mover has read from other processes' shards on this host (process_vm_readv
    /// or mapped shared memory).</summary>
    public long ProcessReadBytes => Interlocked.Read(ref _processReadBytes);
    private long _processReadBytes;

    /// <summary>Of <see cref="ProcessReadBytes"/>, those copied out of mapped shared shards.</summary>
    public long SharedMemoryReadBytes => Interlocked.Read(ref _sharedReadBytes);
    private long _sharedReadBytes;

    /// <summary>Bytes of other processes' shared shards this mover keeps mapped (their pages read so
    /// far count in this process's resident set too).</summary>
    public long PeerMappedBytes => _mappings.MappedBytes;

    /// <summary>Shared blocks of other processes this mover keeps mapped.</summary>
    internal int PeerMappingCount => _mappings.Count;

    private readonly PeerMappings _mappings = new();

    /// <summary>The announcement a sender sends each receiver that reads its process: its shard's
    /// address, then (when the shard lies in a shared block) the block's descriptor number, the
    /// shard's offset in it, the block's size and token; descriptor -1 otherwise, <see cref="Written"/>
    /// when the sender wrote the receiver's intervals itself (<see cref="Push"/>), <see cref="WriteFailed"/>
    /// when it failed to. A receiver's announcement of its destination block (<see cref="Push"/>)
    /// has the same form.</summary>
    private const int AnnouncementBytes = 40;
    private const long Written = -2, WriteFailed = -3;

    private bool ReadsFrom(int peer) => ProcessRead && _transport.LocalProcessOf(peer) is not null;
    private const int DescriptorMax = 4096;

    /// <param name="source">this device's source shard (0 when it holds none)</param>
    /// <param name="destination">this device's destination shard (0 when it receives none)</param>
    public async Task ExecuteAsync(ReallocPlan plan, ReallocSchedule schedule, nint source, nint destination, CancellationToken ct = default)
    {
        _mappings.Sweep();
        try { await ExecuteCoreAsync(plan, schedule, source, destination, ct); }
        catch
        {
            // A peer may have died: keep no mapping of its memory alive.
            _mappings.DropUnused();
            // A failed move may leave transfers in flight on the staging blocks (a deadline passed and
            // the transport could not cancel them): they are never freed nor reused (AbandonedBuffers).
            AbandonedBuffers.Keep([.. _staging]);
            _staging.Clear();
            throw;
        }
    }

    private async Task ExecuteCoreAsync(ReallocPlan plan, ReallocSchedule schedule, nint source, nint destination, CancellationToken ct)
    {
        long es = plan.ElementSize;
        var rma = RmaMinBytes > 0 ? _transport as IRmaTransport : null;
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
        // One staging buffer for the pieces of a step that are not contiguous on this side; each
        // such piece gets its StagingOffset in it (sender and receiver lay out their own buffers).
        HostBlock? StagingFor(List<Chunk> chunks, Func<Chunk, bool> direct)
        {
            long off = 0;
            foreach (var c in chunks)
                if (!direct(c)) { c.StagingOffset = off; off += c.Bytes; }
            return off == 0 ? null : Staging(off);
        }
        // Per multi-interval step: the intervals moved by RMA get (long) and the staged ones.
        (List<(long S, long D, long L)> Get, List<(long S, long D, long L)> Staged) Split(ReallocStep step)
        {
            var get = new List<(long, long, long)>();
            var staged = new List<(long, long, long)>();
            foreach (var iv in step.Intervals)
                (rma is not null && iv.Length * es >= RmaMinBytes ? get : staged).Add((iv.SrcOffset * es, iv.DstOffset * es, iv.Length * es));
            return (get, staged);
        }
        var recvs = new List<Task>();
        var scatters = new List<(Task Recv, Chunk Piece, HostBlock Buf)>();
        var getsFrom = new Dictionary<int, List<(long S, long D, long L)>>();  // sender -> intervals this device gets
        // Sender -> its steps whose intervals this device reads from its process; the intervals
        // are listed only where they are read (ReadFromAsync): a sender that pushes writes them
        // itself, and listing the 41 000 of a tensor-parallel half of a 1.2 GB model before
        // announcing the destination delayed every push by 1-8 ms (session 23).
        var readFrom = new Dictionary<int, List<ReallocSchedule.Remote>>();
        foreach (var r in schedule.Receives)
        {
            if (destination == 0) throw new ArgumentException($"device {schedule.Device} receives but has no destination buffer");
            if (ReadsFrom(r.Peer))
            {
                if (!readFrom.TryGetValue(r.Peer, out var l)) readFrom[r.Peer] = l = [];
                if (r.Step.Intervals.Count >= 1 << 20) throw new InvalidOperationException($"a step of {r.Step.Intervals.Count} intervals (at most 2^20)");
                l.Add(r);
                continue;
            }
            if (r.Step.Intervals.Count == 1)
            {
                recvs.Add(_transport.RecvAsync(r.Peer, ChunkTag(r.Tag, 0), destination + (nint)(r.Step.Intervals[0].DstOffset * es), r.Step.Bytes, ct));
                continue;
            }
            var (get, staged) = Split(r.Step);
            if (get.Count > 0)
            {
                if (!getsFrom.TryGetValue(r.Peer, out var l)) getsFrom[r.Peer] = l = [];
                l.AddRange(get);
            }
            if (staged.Count == 0) continue;
            var chunks = Chunks(staged, ChunkBytes, DirectMinBytes);
            var buf = StagingFor(chunks, c => c.DstContiguous);
            foreach (var c in chunks)
            {
                if (c.DstContiguous)
                {
                    // Straight into the destination shard: no scatter.
                    recvs.Add(_transport.RecvAsync(r.Peer, ChunkTag(r.Tag, c.Index), destination + (nint)c.Dst[0], c.Bytes, ct));
                    continue;
                }
                var task = _transport.RecvAsync(r.Peer, ChunkTag(r.Tag, c.Index), Ptr(buf!) + (nint)c.StagingOffset, c.Bytes, ct);
                recvs.Add(task);
                scatters.Add((task, c, buf!));
            }
        }
        // RMA set-up: this device's senders send their region descriptors; it tells them when done.
        var descriptors = new Dictionary<int, (Task Recv, HostBlock Buf)>();
        foreach (var peer in getsFrom.Keys)
        {
            var b = Staging(DescriptorMax);
            descriptors[peer] = (_transport.RecvAsync(peer, DescriptorTag, Ptr(b), DescriptorMax, ct), b);
        }
        // Senders whose process this device reads: their shard's address, then (after the read) "done".
        var addresses = readFrom.Keys.ToDictionary(peer => peer, peer =>
        {
            var b = Staging(AnnouncementBytes);
            return (Recv: _transport.RecvAsync(peer, ProcAddressTag, Ptr(b), AnnouncementBytes, ct), Buf: b);
        });
        // Push: this device's destination block, announced to each of them (they may write into it).
        var destinationSends = new List<Task>();
        if (Push && readFrom.Count > 0)
        {
            var db = Staging(AnnouncementBytes);
            Announce(db, destination);
            foreach (var peer in readFrom.Keys) destinationSends.Add(_transport.SendAsync(peer, DestinationTag, Ptr(db), AnnouncementBytes, ct));
        }
        // Receivers that read this device's shard from its process, and the others.
        var sendSteps = schedule.Sends.Where(snd => !ReadsFrom(snd.Peer)).ToList();
        var readers = schedule.Sends.Where(snd => ReadsFrom(snd.Peer)).GroupBy(snd => snd.Peer).ToDictionary(g => g.Key, g => g.ToList());
        var getPeers = new SortedSet<int>();  // receivers that read this device's shard
        foreach (var snd in sendSteps)
            if (snd.Step.Intervals.Count > 1 && Split(snd.Step).Get.Count > 0) getPeers.Add(snd.Peer);
        IRmaRegion? region = null;
        var sends = new List<Task>();
        var doneFrom = new List<Task>();
        HostBlock? doneBuf = null;
        var remotes = new List<IRemoteRegion>();
        var readerDone = new List<(int Peer, Task Recv, nint Status)>();
        Task<(List<Task> Sends, List<(int Peer, Task Recv, nint Status)> Pulled)>? pushing = null;
        try
        {
            if (readers.Count > 0)
            {
                if (source == 0) throw new ArgumentException($"device {schedule.Device} sends but has no source buffer");
                var ab = Staging(AnnouncementBytes + 8 * readers.Count);
                Announce(ab, source);
                int k = 0;
                var statusOf = readers.Keys.ToDictionary(peer => peer, _ => Ptr(ab) + AnnouncementBytes + 8 * k++);
                if (Push)
                {
                    // The receivers' destination blocks: written here where they can be mapped.
                    var dests = readers.Keys.ToDictionary(peer => peer, peer =>
                    {
                        var b = Staging(AnnouncementBytes);
                        return (Recv: _transport.RecvAsync(peer, DestinationTag, Ptr(b), AnnouncementBytes, ct), Buf: b);
                    });
                    var words = Staging(2 * AnnouncementBytes);
                    unsafe
                    {
                        long* w = (long*)words.Pointer;
                        w[1] = Written;
                        w[5 + 1] = WriteFailed;
                    }
                    pushing = Task.Run(() => PushAsync(plan, schedule, source, readers, dests, statusOf, ab, words, ct), ct);
                }
                else
                    foreach (var peer in readers.Keys)
                    {
                        readerDone.Add((peer, _transport.RecvAsync(peer, ProcDoneTag, statusOf[peer], 8, ct), statusOf[peer]));
                        sends.Add(_transport.SendAsync(peer, ProcAddressTag, Ptr(ab), AnnouncementBytes, ct));
                    }
            }
            if (getPeers.Count > 0)
            {
                if (source == 0) throw new ArgumentException($"device {schedule.Device} sends but has no source buffer");
                region = rma!.Register(source, plan.SourceLayoutOf(schedule.Device).TotalElements * es);
                var d = region.Descriptor;
                if (d.Length + 4 > DescriptorMax) throw new InvalidOperationException($"RMA descriptor of {d.Length} bytes");
                var db = Staging(DescriptorMax);
                unsafe
                {
                    *(int*)db.Pointer = d.Length;
                    d.AsSpan().CopyTo(new Span<byte>((byte*)db.Pointer + 4, d.Length));
                }
                doneBuf = Staging(8 * getPeers.Count);
                int k = 0;
                foreach (var peer in getPeers)
                {
                    doneFrom.Add(_transport.RecvAsync(peer, DoneTag, Ptr(doneBuf) + 8 * k++, 8, ct));
                    sends.Add(_transport.SendAsync(peer, DescriptorTag, Ptr(db), 4 + d.Length, ct));
                }
            }
            var gathers = new List<(int First, int End, List<Chunk> Chunks)>();
            int i = 0;
            while (i < sendSteps.Count)
            {
                var step = sendSteps[i].Step;
                int first = i;
                while (i < sendSteps.Count && ReferenceEquals(sendSteps[i].Step, step)) i++;
                if (source == 0) throw new ArgumentException($"device {schedule.Device} sends but has no source buffer");
                if (step.Intervals.Count == 1)
                {
                    nint from = source + (nint)(step.Intervals[0].SrcOffset * es);
                    for (int k = first; k < i; k++)
                        sends.Add(_transport.SendAsync(sendSteps[k].Peer, ChunkTag(sendSteps[k].Tag, 0), from, step.Bytes, ct));
                    continue;
                }
                var staged = Split(step).Staged;
                if (staged.Count == 0) continue;
                var chunks = Chunks(staged, ChunkBytes, DirectMinBytes);
                // Pieces contiguous in the source shard go first, straight from it (no gather; the
                // receiver pulls them while this device gathers the rest).
                foreach (var c in chunks)
                    if (c.SrcContiguous)
                        for (int k = first; k < i; k++)
                            sends.Add(_transport.SendAsync(sendSteps[k].Peer, ChunkTag(sendSteps[k].Tag, c.Index), source + (nint)c.Src[0], c.Bytes, ct));
                gathers.Add((first, i, chunks));
            }
            // Gather chunk by chunk: chunk j is on the wire (the receiver pulls it) while j + 1 is gathered.
            foreach (var (first, end, chunks) in gathers)
            {
                var buf = StagingFor(chunks, c => c.SrcContiguous);
                foreach (var c in chunks)
                {
                    if (c.SrcContiguous) continue;
                    GatherChunk(c, source, buf!);
                    for (int k = first; k < end; k++)
                        sends.Add(_transport.SendAsync(sendSteps[k].Peer, ChunkTag(sendSteps[k].Tag, c.Index), Ptr(buf!) + (nint)c.StagingOffset, c.Bytes, ct));
                }
            }
            foreach (var step in schedule.LocalCopies) LocalCopy(step, (int)es, source, destination);
            // Intervals of senders on this host: read from their processes, concurrently with the rest.
            var reads = readFrom.Select(kv => Task.Run(() => ReadFromAsync(kv.Key, addresses[kv.Key].Recv, addresses[kv.Key].Buf, kv.Value, es, destination, ct), ct)).ToList();
            // Long intervals: read them from each sender's shard, then tell it so.
            var gets = new List<Task>();
            foreach (var (peer, list) in getsFrom)
            {
                var (task, b) = descriptors[peer];
                await task;
                byte[] desc;
                unsafe { desc = new ReadOnlySpan<byte>((byte*)b.Pointer + 4, *(int*)b.Pointer).ToArray(); }
                var remote = rma!.Attach(peer, desc);
                remotes.Add(remote);
                var mine = list.Select(iv => rma.GetAsync(remote, iv.S, destination + (nint)iv.D, iv.L, ct)).ToList();
                gets.Add(Task.WhenAll(mine).ContinueWith(t => { t.GetAwaiter().GetResult(); return _transport.SendAsync(peer, DoneTag, Ptr(b), 8, ct); }, TaskScheduler.Default).Unwrap());
            }
            foreach (var (task, c, buf) in scatters)
            {
                await task;
                ScatterChunk(c, destination, buf);
            }
            if (pushing is not null)
            {
                var (pushSends, pulled) = await pushing;
                sends.AddRange(pushSends);
                readerDone.AddRange(pulled);
            }
            await Task.WhenAll(recvs);
            await Task.WhenAll(gets);
            await Task.WhenAll(reads);
            await Task.WhenAll(destinationSends);
            await Task.WhenAll(sends);
            await Task.WhenAll(doneFrom);  // nobody reads this shard any more
            foreach (var (peer, done, status) in readerDone)
            {
                await done;   // the reader is done with this shard
                long st;
                unsafe { st = *(long*)status; }
                if (st == ReadFailed) throw new InvalidOperationException($"device {peer} could not read device {schedule.Device}'s shard from its process (see device {peer}'s error)");
                if (st != ReadRefused) continue;
                // The kernel refused the read: the intervals go as tagged messages, one each.
                var fallback = new List<Task>();
                foreach (var snd in readers[peer])
                    for (int k = 0; k < snd.Step.Intervals.Count; k++)
                    {
                        var iv = snd.Step.Intervals[k];
                        fallback.Add(_transport.SendAsync(peer, ChunkTag(snd.Tag, k), source + (nint)(iv.SrcOffset * es), iv.Length * es, ct));
                    }
                await Task.WhenAll(fallback);
            }
        }
        finally
        {
            foreach (var r in remotes) r.Dispose();
            region?.Dispose();
        }
    }

    private const long ReadDone = 0, ReadRefused = 1, ReadFailed = 2;

    /// <summary>The intervals of <paramref name="steps"/> in bytes, each with its message tag (the tag a
    /// sender uses when the kernel refuses the read and the intervals go as messages).</summary>
    private static List<(long Tag, long S, long D, long L)> ReadIntervals(List<ReallocSchedule.Remote> steps, long es)
    {
        var l = new List<(long Tag, long S, long D, long L)>(steps.Sum(r => r.Step.Intervals.Count));
        foreach (var r in steps)
            for (int k = 0; k < r.Step.Intervals.Count; k++)
            {
                var iv = r.Step.Intervals[k];
                l.Add((ChunkTag(r.Tag, k), iv.SrcOffset * es, iv.DstOffset * es, iv.Length * es));
            }
        return l;
    }

    /// <summary>The receiver's side of a process read: waits for the sender's announcement, copies
    /// every interval out of the sender's shard (mapped, when it lies in shared memory and
    /// <see cref="SharedMemory"/>; else process_vm_readv), tells the sender it is done. When the
    /// kernel refuses both (EPERM), the intervals are received as tagged messages instead (the
    /// sender sends them on the "refused" status); any other failure is reported to the sender and
    /// thrown.</summary>
    private async Task ReadFromAsync(int peer, Task address, HostBlock buf, List<ReallocSchedule.Remote> steps, long es, nint destination, CancellationToken ct)
    {
        // Without push the sender's announcement is awaited anyway: list the intervals meanwhile.
        var listed = Push ? null : ReadIntervals(steps, es);
        await address.ConfigureAwait(false);
        long word;
        unsafe { word = ((long*)buf.Pointer)[1]; }
        if (word == Written)
        {
            Interlocked.Add(ref _writtenByPeerBytes, steps.Sum(r => r.Step.Bytes));
            return;   // the sender wrote this device's intervals itself (Push): nothing to read, no reply
        }
        if (word == WriteFailed)
            throw new InvalidOperationException($"device {peer} failed to write device {_transport.Rank}'s destination shard (see device {peer}'s error)");
        var intervals = listed ?? ReadIntervals(steps, es);
        int pid = _transport.LocalProcessOf(peer) ?? throw new InvalidOperationException($"device {peer} is not a process on this host");
        long status = ReadDone;
        Exception? failure = null;
        try
        {
            ulong remote;
            SharedHostMemory.Descriptor? shared;
            unsafe
            {
                long* w = (long*)buf.Pointer;
                remote = (ulong)w[0];
                if (w[1] > int.MaxValue || w[1] < -1) throw new InvalidOperationException($"device {peer} announced descriptor number {w[1]}");
                shared = w[1] >= 0 ? new SharedHostMemory.Descriptor((int)w[1], w[2], w[3], (ulong)w[4]) : null;
            }
            bool copied = false;
            if (shared is { } d && SharedMemory)
            {
                PeerMappings.Lease? lease = null;
                try { lease = _mappings.Acquire(pid, d); }
                catch (RealnException e) when (e.Status == RealnStatus.Unsupported) { }  // not allowed to open it: read the process
                if (lease is not null)
                    using (lease)
                    {
                        long total = CopyFromMapping(peer, lease.Base, d, intervals, destination, CopyWithPeer);
                        Interlocked.Add(ref _processReadBytes, total);
                        Interlocked.Add(ref _sharedReadBytes, total);
                        copied = true;
                    }
            }
            if (!copied)
            {
                var so = intervals.Select(x => x.S).ToArray();
                var dd = intervals.Select(x => x.D).ToArray();
                var l = intervals.Select(x => x.L).ToArray();
                unsafe
                {
                    fixed (long* ps = so, pd = dd, pl = l)
                        Native.Check(Native.realn_process_read(pid, (void*)destination, remote, ps, pd, pl, so.Length));
                }
                Interlocked.Add(ref _processReadBytes, l.Sum());
            }
        }
        catch (RealnException e) when (e.Status == RealnStatus.Unsupported) { status = ReadRefused; }
        catch (Exception e)
        {
            status = ReadFailed;
            failure = new InvalidOperationException($"reading device {peer}'s shard from process {pid}: {e.Message}", e);
        }
        var fallback = new List<Task>();
        if (status == ReadRefused)
            foreach (var (tag, _, dst, len) in intervals)
                fallback.Add(_transport.RecvAsync(peer, tag, destination + (nint)dst, len, ct));
        unsafe { *(long*)buf.Pointer = status; }
        await _transport.SendAsync(peer, ProcDoneTag, Ptr(buf), 8, ct).ConfigureAwait(false);
        await Task.WhenAll(fallback).ConfigureAwait(false);
        if (failure is not null) throw failure;
    }

    /// <summary>Bytes other processes wrote into this mover's destination shards (<see cref="Push"/>).</summary>
    public long WrittenByPeerBytes => Interlocked.Read(ref _writtenByPeerBytes);
    private long _writtenByPeerBytes;

    /// <summary>Writes the announcement of <paramref name="shard"/> (<see cref="AnnouncementBytes"/>)
    /// into <paramref name="into"/>: its address, then its shared block's descriptor number, offset,
    /// size and token (descriptor -1 when it lies in no shared block).</summary>
    private static unsafe void Announce(HostBlock into, nint shard)
    {
        var shared = SharedHostMemory.Describe(shard);
        long* w = (long*)into.Pointer;
        w[0] = shard;
        w[1] = shared?.Fd ?? -1;
        w[2] = shared?.Offset ?? 0;
        w[3] = shared?.Size ?? 0;
        w[4] = (long)(shared?.Token ?? 0);
    }

    /// <summary>The sender's side of <see cref="Push"/>: takes each reader's destination announcement;
    /// maps the shared ones writable (a reader whose destination is not shared, or whose block this
    /// process may not open, gets this device's shard announcement and pulls, as without push);
    /// copies every mapped reader's intervals in one pass in source order, with every interval
    /// checked to lie inside the reader's shard and this device's; then tells each of them it is
    /// written (<see cref="Written"/>; <see cref="WriteFailed"/> when the copy failed, and throws).
    /// Returns its sends and the pulling readers' "done" receives.</summary>
    private async Task<(List<Task> Sends, List<(int Peer, Task Recv, nint Status)> Pulled)> PushAsync(
        ReallocPlan plan, ReallocSchedule schedule, nint source, Dictionary<int, List<ReallocSchedule.Remote>> readers,
        Dictionary<int, (Task Recv, HostBlock Buf)> dests, Dictionary<int, nint> statusOf, HostBlock announcement, HostBlock words, CancellationToken ct)
    {
        long es = plan.ElementSize;
        long sourceBytes = plan.SourceLayoutOf(schedule.Device).TotalElements * es;
        var sends = new List<Task>();
        var pulled = new List<(int Peer, Task Recv, nint Status)>();
        var leases = new List<(int Peer, PeerMappings.Lease Lease, long Room, nint At)>();
        var told = new HashSet<int>();
        try
        {
            foreach (var (peer, (recv, buf)) in dests)
            {
                await recv.ConfigureAwait(false);
                SharedHostMemory.Descriptor? d;
                unsafe
                {
                    long* w = (long*)buf.Pointer;
                    if (w[1] > int.MaxValue || w[1] < -1) throw new InvalidOperationException($"device {peer} announced descriptor number {w[1]}");
                    d = w[1] >= 0 ? new SharedHostMemory.Descriptor((int)w[1], w[2], w[3], (ulong)w[4]) : null;
                }
                PeerMappings.Lease? lease = null;
                if (d is { } dd && SharedMemory)
                {
                    int pid = _transport.LocalProcessOf(peer) ?? throw new InvalidOperationException($"device {peer} is not a process on this host");
                    try { lease = _mappings.Acquire(pid, dd, writable: true); }
                    catch (RealnException e) when (e.Status == RealnStatus.Unsupported) { }  // not allowed to open it: the reader pulls
                    catch (Exception e) { throw new InvalidOperationException($"mapping device {peer}'s destination shard (process {pid}) to write it: {e.Message}", e); }
                }
                if (lease is null)
                {
                    pulled.Add((peer, _transport.RecvAsync(peer, ProcDoneTag, statusOf[peer], 8, ct), statusOf[peer]));
                    sends.Add(_transport.SendAsync(peer, ProcAddressTag, Ptr(announcement), AnnouncementBytes, ct));
                    told.Add(peer);
                    continue;
                }
                leases.Add((peer, lease, d!.Value.Size - d.Value.Offset, lease.Base + (nint)d.Value.Offset));
            }
            if (leases.Count > 0)
            {
                // The same plan between the same shards again (every iteration of a run): its
                // merged pieces are kept (building 80 000 of them costs ~5 ms, a tenth of the copy).
                var key = (source, string.Join(",", leases.Select(l => $"{l.Peer}@{l.At}:{l.Room}")));
                var cache = _pushPieces.GetOrCreateValue(plan);
                (List<(nint Src, nint Dst, long Bytes)> Pieces, long Total) job;
                lock (cache)
                    if (!cache.TryGetValue(key, out job)) job = default;
                if (job.Pieces is null)
                {
                    job = PushPieces(plan, schedule, source, sourceBytes, readers, leases);
                    lock (cache)
                    {
                        if (cache.Count >= 4) cache.Clear();
                        cache[key] = job;
                    }
                }
                // Its threads fence their streaming stores; the receivers' pages leave this process's page table as written.
                CopyWithPeer(job.Pieces, job.Total, peerIsSource: false, [.. leases.Select(l => (l.Lease.Base, l.Room + (long)(l.At - l.Lease.Base)))]);
                Interlocked.Add(ref _pushedBytes, job.Total);
                foreach (var (peer, _, _, _) in leases)
                {
                    sends.Add(_transport.SendAsync(peer, ProcAddressTag, Ptr(words), AnnouncementBytes, ct));
                    told.Add(peer);
                }
            }
            return (sends, pulled);
        }
        catch
        {
            // Every reader not yet told waits for this device's word: it hears of the failure.
            var failed = dests.Keys.Where(p => !told.Contains(p))
                .Select(p => _transport.SendAsync(p, ProcAddressTag, Ptr(words) + AnnouncementBytes, AnnouncementBytes, CancellationToken.None)).ToArray();
            try { await Task.WhenAll(failed).WaitAsync(TimeSpan.FromSeconds(10)).ConfigureAwait(false); }
            catch (Exception) { }   // the readers' own deadlines end them then
            throw;
        }
        finally
        {
            foreach (var (_, lease, _, _) in leases) lease.Dispose();
        }
    }

    /// <summary>Per plan, the merged pieces of its recent pushes (by source and mapped destinations).</summary>
    private readonly System.Runtime.CompilerServices.ConditionalWeakTable<ReallocPlan, Dictionary<(nint, string), (List<(nint Src, nint Dst, long Bytes)> Pieces, long Total)>> _pushPieces = new();

    /// <summary>The pieces of a push: every mapped reader's intervals (each checked to lie inside this
    /// device's shard and the reader's), merged in source order.</summary>
    private static (List<(nint Src, nint Dst, long Bytes)> Pieces, long Total) PushPieces(ReallocPlan plan, ReallocSchedule schedule, nint source, long sourceBytes,
        Dictionary<int, List<ReallocSchedule.Remote>> readers, List<(int Peer, PeerMappings.Lease Lease, long Room, nint At)> leases)
    {
        long es = plan.ElementSize;
        var runs = new List<List<(nint Src, nint Dst, long Bytes)>>();
        long total = 0;
        foreach (var (peer, _, room, at) in leases)
        {
            long need = plan.DestinationLayoutOf(peer).TotalElements * es;
            if (need > room) throw new InvalidOperationException($"device {peer}'s announced destination block holds {room} bytes from its shard, its shard needs {need}");
            foreach (var snd in readers[peer])
            {
                var run = new List<(nint Src, nint Dst, long Bytes)>(snd.Step.Intervals.Count);
                foreach (var iv in snd.Step.Intervals)
                {
                    long so = iv.SrcOffset * es, d = iv.DstOffset * es, n = iv.Length * es;
                    if (so < 0 || n < 0 || so > sourceBytes - n || d < 0 || d > need - n)
                        throw new InvalidOperationException($"interval [{iv.SrcOffset}, +{iv.Length}) -> {iv.DstOffset} lies outside device {schedule.Device}'s shard or device {peer}'s");
                    for (long o = 0; o < n; o += InProcessRealloc.PieceBytes)
                        run.Add((source + (nint)(so + o), at + (nint)(d + o), Math.Min(InProcessRealloc.PieceBytes, n - o)));
                    total += n;
                }
                runs.Add(run);
            }
        }
        var pieces = new List<(nint Src, nint Dst, long Bytes)>(runs.Sum(r => r.Count));
        InProcessRealloc.SourceOrder(runs, pieces);
        return (pieces, total);
    }

    /// <summary>Copies the intervals (source offsets relative to the announced shard) out of the
    /// mapped block at <paramref name="mapped"/> into <paramref name="destination"/>; every interval
    /// is checked to lie inside the block first. Returns the bytes copied.</summary>
    private static long CopyFromMapping(int peer, nint mapped, SharedHostMemory.Descriptor d, List<(long Tag, long S, long D, long L)> intervals, nint destination,
                                        Action<List<(nint Src, nint Dst, long Bytes)>, long, bool, IReadOnlyList<(nint Base, long Size)>> copy)
    {
        var pieces = new List<(nint Src, nint Dst, long Bytes)>(intervals.Count);
        long total = 0, room = d.Size - d.Offset;
        nint from = mapped + (nint)d.Offset;
        foreach (var (_, s, dst, len) in intervals)
        {
            if (s < 0 || len < 0 || d.Offset < 0 || s > room - len)
                throw new InvalidOperationException($"device {peer}: interval [{s}, +{len}) lies outside its shared shard ({room} bytes from offset {d.Offset})");
            for (long o = 0; o < len; o += InProcessRealloc.PieceBytes)
                pieces.Add((from + (nint)(s + o), destination + (nint)(dst + o), Math.Min(InProcessRealloc.PieceBytes, len - o)));
            total += len;
        }
        copy(pieces, total, true, [(mapped, d.Size)]);
        return total;
    }

    /// <summary>Bytes of one staged message: a multi-interval step is cut into pieces of about this
    /// size so that gather, transfer and scatter of consecutive pieces overlap.</summary>
    public long ChunkBytes { get; init; } = 8L << 20;

    private static long ChunkTag(int stepTag, int chunk) => (long)stepTag << 20 | (uint)chunk;

    /// <summary>A piece of a staged step: byte intervals (source offsets, destination offsets,
    /// lengths) that fill [StagingOffset, StagingOffset + Bytes) of the step's staging buffer.</summary>
    private sealed record Chunk(int Index, long Bytes, long[] Src, long[] Dst, long[] Len)
    {
        /// <summary>Where the piece sits in this side's staging buffer (set by the side that stages it).</summary>
        public long StagingOffset { get; set; }

        /// <summary>The piece is one run of the source shard: sent from it without a gather.</summary>
        public bool SrcContiguous { get; } = Contiguous(Src, Len);

        /// <summary>The piece is one run of the destination shard: received into it without a scatter.</summary>
        public bool DstContiguous { get; } = Contiguous(Dst, Len);

        private static bool Contiguous(long[] off, long[] len)
        {
            for (int i = 1; i < off.Length; i++) if (off[i] != off[i - 1] + len[i - 1]) return false;
            return true;
        }
    }

    /// <summary>Intervals of a multi-interval step at least this long (bytes) travel as messages of
    /// their own, straight from the source shard into the destination shard (one copy: UCX's
    /// rendezvous over cma is a single process_vm_readv), in pieces of at most
    /// <see cref="DirectPieceBytes"/>; shorter ones (the per-row pieces of dimension-1 splits) are
    /// packed into <see cref="ChunkBytes"/> pieces, which skip the gather (scatter) where they are
    /// contiguous in the source (destination) shard. 0 packs every interval.</summary>
    public long DirectMinBytes { get; init; } = 256L << 10;

    /// <summary>Largest message of one direct interval (longer ones are cut).</summary>
    public long DirectPieceBytes { get; init; } = DefaultDirectPieceBytes;

    public const long DefaultDirectPieceBytes = 16L << 20;

    /// <summary>Cuts byte intervals (source offset, destination offset, length), in order, into
    /// pieces: an interval of at least <paramref name="direct"/> bytes (when positive) into pieces
    /// of its own of at most <see cref="DirectPieceBytes"/>, the others packed into pieces of at
    /// most <paramref name="chunk"/> bytes (an interval longer than that is split). Sender and
    /// receiver cut identically.</summary>
    private List<Chunk> Chunks(List<(long S, long D, long L)> intervals, long chunk, long direct)
    {
        var result = new List<Chunk>();
        var src = new List<long>();
        var dst = new List<long>();
        var len = new List<long>();
        long filled = 0;
        void Flush()
        {
            if (filled == 0) return;
            result.Add(new Chunk(result.Count, filled, [.. src], [.. dst], [.. len]));
            filled = 0;
            src.Clear(); dst.Clear(); len.Clear();
        }
        long piece = Math.Max(1, DirectPieceBytes);
        foreach (var (s0, d0, l0) in intervals)
        {
            long so = s0, d = d0, left = l0;
            if (direct > 0 && l0 >= direct)
            {
                Flush();
                for (long k = (left + piece - 1) / piece; left > 0; k--)
                {
                    long take = (left + k - 1) / k;  // equal pieces
                    result.Add(new Chunk(result.Count, take, [so], [d], [take]));
                    so += take; d += take; left -= take;
                }
                continue;
            }
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
        _mappings.Dispose();
    }
}
