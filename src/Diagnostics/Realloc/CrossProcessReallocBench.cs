using System.Diagnostics;
using System.Text.Json;
using System.Text.Json.Nodes;
using ReaLNative.Engine.Control;
using ReaLNative.Engine.Layout;
using ReaLNative.Engine.Transport;
using ReaLNative.Interop;
using ReaLNative.Engine.Realloc;

namespace ReaLNative.Diagnostics;

/// <summary>
/// The worker side of the cross-process reallocation benchmark: every worker process is one
/// device (rank = device id), joins the job over the control plane, exchanges UCX addresses, then
/// (1) times point-to-point bandwidth rank 0 -> rank 1 and (2) for every layout pair moves the
/// model's parameters with <see cref="TransportRealloc"/>, checks every destination element
/// bit-exactly against the deterministic parameter function, and reports its best time. The
/// master (the `realn bench realloc` process) aggregates: a case takes as long as its slowest rank.
/// </summary>
internal static unsafe class CrossProcessReallocBench
{
    public static IReadOnlyList<(ParallelLayout From, ParallelLayout To)> Pairs() =>
    [
        (ParallelLayout.Contiguous(0, 1, 1, 1), ParallelLayout.Contiguous(1, 1, 1, 2)),  // one process -> tensor-split over two others
        (ParallelLayout.Contiguous(0, 1, 1, 2), ParallelLayout.Contiguous(2, 2, 1, 1)),  // tp2 -> pp2 on other processes
        (ParallelLayout.Contiguous(0, 1, 2, 1), ParallelLayout.Contiguous(2, 1, 1, 2)),  // dp replicas share the sending
    ];

    public const int Workers = 4;

    /// <summary>The benchmark's mover: <see cref="TransportRealloc"/>'s defaults, overridable for
    /// experiments with REALN_REALLOC_DIRECT_MIN, REALN_REALLOC_DIRECT_PIECE, REALN_REALLOC_CHUNK and
    /// REALN_REALLOC_RMA_MIN (bytes).</summary>
    public static TransportRealloc Mover(ITransport transport)
    {
        static long Env(string name, long fallback) => long.TryParse(Environment.GetEnvironmentVariable(name), out long v) && v >= 0 ? v : fallback;
        var d = new TransportRealloc(transport);
        var m = new TransportRealloc(transport)
        {
            DirectMinBytes = Env("REALN_REALLOC_DIRECT_MIN", d.DirectMinBytes),
            DirectPieceBytes = Env("REALN_REALLOC_DIRECT_PIECE", d.DirectPieceBytes),
            ChunkBytes = Env("REALN_REALLOC_CHUNK", d.ChunkBytes),
            RmaMinBytes = Env("REALN_REALLOC_RMA_MIN", d.RmaMinBytes),
        };
        d.Dispose();
        return m;
    }
    public const long P2pBytes = 256L << 20;

    /// <summary>How the cases' shards are allocated: as a worker process allocates its parameters
    /// (shared host memory, unless REALN_REALLOC_SHARED_MEMORY=0 turned the mapped path off).</summary>
    public static HostAllocFlags ShardMemory(TransportRealloc mover) =>
        mover.SharedMemory ? HostAllocFlags.Prefault | HostAllocFlags.Shared : HostAllocFlags.Default;

    public static int RunWorker(string endpoint, string jobId, byte[] secret, int rank, int size, LlamaShape shape, int reps, bool p2pOnly = false)
    {
        var auth = new MessageAuth(secret, jobId);
        using var client = new ControlClient(endpoint, auth, $"worker-{rank}");
        // Its "get" row times UCX's get (a job's workers read a local peer with process_vm_readv instead:
        // the "read" row; UcxTransportOptions.GetByProcessRead).
        using var transport = new UcxTransport(rank, size, UcxTransportOptions.Default with { GetByProcessRead = false }) { Timeout = TimeSpan.FromSeconds(120) };
        var limit = TimeSpan.FromSeconds(120);
        Rendezvous.Join(client, transport, limit);
        var report = new Dictionary<string, object> { ["transport"] = transport.Options.ToString() };

        report["ticks_per_second"] = Stopwatch.Frequency;
        foreach (var (name, ticks) in PointToPoint(client, transport, rank, reps, limit, rma: true)) report[name + "_ticks"] = ticks;
        if (p2pOnly)
        {
            client.Request("report", new JsonObject { ["rank"] = rank, ["json"] = JsonReport.Write(report, indented: false) }.ToJsonString(), TimeSpan.FromSeconds(10));
            Rendezvous.Barrier(client, rank, "done", limit);
            return 0;
        }

        // The cases run as a job's workers run on this host: a progress thread that spins takes a
        // core from the copies, and the copy threads of the workers fill the cores, so (as
        // WorkerProcesses starts a job's workers) without the spin unless REALN_UCX_SPIN says
        // otherwise. The point-to-point figures above keep the spin (UCX's best latency).
        if (UcxTransportOptions.SkipSpin(size * InProcessRealloc.CopyThreads)) transport.SpinIterations = 0;
        report["cases_spin"] = transport.SpinIterations;
        using var mover = Mover(transport);
        var factory = LlamaShardLayouts.Factory(shape);
        var pairs = Pairs();
        var repTicks = new List<List<long[]>>();
        var readTicks = new List<List<long[]>>();
        var mappedTicks = new List<List<long[]>>();
        var readAvailable = new List<bool>();
        var mappedAvailable = new List<bool>();
        var hugeFractions = new List<double>();
        for (int c = 0; c < pairs.Count; c++)
        {
            var plan = ReallocPlan.Build(pairs[c].From, pairs[c].To, factory, 4, _ => 0);
            var schedule = ReallocSchedule.ForDevice(plan, rank);
            HostBlock? src = null, dst = null;
            try
            {
                if (plan.From.Devices.Contains(rank))
                {
                    var l = plan.SourceLayoutOf(rank);
                    src = new HostBlock(l.TotalElements * 4, ShardMemory(mover));
                    Fill(l, (float*)src.Pointer);
                }
                if (plan.To.Devices.Contains(rank)) dst = new HostBlock(plan.DestinationLayoutOf(rank).TotalElements * 4, ShardMemory(mover));
                nint s = src is null ? 0 : (nint)src.Pointer, d = dst is null ? 0 : (nint)dst.Pointer;
                // How much of this rank's shards lies on 2 MiB pages (shared blocks are collapsed
                // into them where the kernel can: realn_host_alloc); 4 KiB pages would slow the
                // cases and the references alike.
                long shardBytes = (src?.Bytes ?? 0) + (dst?.Bytes ?? 0);
                hugeFractions.Add(shardBytes == 0 || !mover.SharedMemory ? 1.0 : Math.Min(1.0, ShmemPmdMappedBytes() / (double)shardBytes));
                using var contiguous = ContiguousReads.Prepare(transport, plan, schedule, s, c);
                // Who takes part: in the case every sender and receiver; in the references the
                // ranks that copy (the senders' shards are read, they do nothing).
                bool inCase = plan.From.Devices.Contains(rank) || plan.To.Devices.Contains(rank);
                var times = new List<long[]>();
                var reads = new List<long[]>();
                var mapped = new List<long[]>();
                // Candidate and references alternate, so all see the same load; each starts at one
                // instant on every rank (Rendezvous.Start) and is timed on the host's clock.
                for (int i = 0; i < reps + 1; i++)
                {
                    var t = Timed(client, rank, $"case-{c}-{i}", limit, inCase, () =>
                    {
                        if (!mover.ExecuteAsync(plan, schedule, s, d).Wait(limit))
                            throw new TimeoutException($"rank {rank}, case {c}: the reallocation did not finish within {limit.TotalSeconds:F0} s");
                    });
                    if (i == 0 && dst is not null)
                    {
                        string? bad = Verify(plan.DestinationLayoutOf(rank), (float*)dst.Pointer);
                        if (bad is not null) throw new InvalidOperationException($"rank {rank}, case {c}: {bad}");
                    }
                    var r = Timed(client, rank, $"case-{c}-{i}-reference", limit, contiguous.Available && contiguous.Reads, () => contiguous.Read(d, limit));
                    var m = Timed(client, rank, $"case-{c}-{i}-mapped", limit, contiguous.MappedAvailable && contiguous.Reads, () => contiguous.CopyMapped(d, limit));
                    if (i > 0) { times.Add(t); reads.Add(r); mapped.Add(m); }
                }
                readAvailable.Add(contiguous.Available);
                mappedAvailable.Add(contiguous.MappedAvailable);
                contiguous.Dispose();
                // No sender frees its shard while a receiver may still read it.
                Rendezvous.Barrier(client, rank, $"case-{c}-end", limit);
                repTicks.Add(times);
                readTicks.Add(reads);
                mappedTicks.Add(mapped);
            }
            finally
            {
                src?.Dispose();
                dst?.Dispose();
            }
        }
        report["process_read_bytes"] = mover.ProcessReadBytes;
        report["shared_read_bytes"] = mover.SharedMemoryReadBytes;
        report["pushed_bytes"] = mover.PushedBytes;
        report["shard_huge_page_fraction"] = hugeFractions;
        // Per case, per timed repetition: this rank's [release instant, start, end] (Stopwatch ticks
        // of the host's clock), [] where it takes no part; the master times a repetition from the
        // first participant's start to the last participant's end (RepSeconds).
        report["case_rep_ticks"] = repTicks;
        report["contiguous_read_rep_ticks"] = readTicks;    // the contiguous-read reference
        report["mapped_copy_rep_ticks"] = mappedTicks;      // copying the same regions out of the senders' mapped shards
        report["contiguous_read_available"] = readAvailable;
        report["mapped_copy_available"] = mappedAvailable;
        client.Request("report", new JsonObject { ["rank"] = rank, ["json"] = JsonReport.Write(report, indented: false) }.ToJsonString(), TimeSpan.FromSeconds(10));
        Rendezvous.Barrier(client, rank, "done", limit);
        return 0;
    }

    /// <summary>One timed repetition: every rank meets at <see cref="Rendezvous.Start"/>, which names
    /// one start instant for all; a rank that takes <paramref name="part"/> waits for it, runs
    /// <paramref name="run"/> and returns [the instant, its own start, its end] on the host's clock
    /// (Stopwatch ticks); the others return [] at once.</summary>
    private static long[] Timed(ControlClient client, int rank, string name, TimeSpan limit, bool part, Action run)
    {
        long at = Rendezvous.Start(client, rank, name, limit, wait: part);
        if (!part) return [];
        long t0 = Stopwatch.GetTimestamp();
        run();
        return [at, t0, Stopwatch.GetTimestamp()];
    }

    /// <summary>Seconds of one repetition from the ranks' entries (<see cref="Timed"/>): from the
    /// first participant's actual start to the last participant's end, on the host's clock; 0 when
    /// no rank took part. One rule for the cases and their references alike. Not from the release
    /// instant: a repetition whose every rank the scheduler woke late would be charged for the
    /// wake-up, not for its work. Not from the last participant's start: where one participant runs
    /// before the others wake (the cores are shared), that would leave its work out of the time, and
    /// a reference timed so measured 42-45 GB/s under load, above any copy this host can do (24-31
    /// GB/s). A participant that starts late counts from the first start, so whatever waited for it
    /// is part of the time.</summary>
    public static double RepSeconds(IEnumerable<long[]> entries, long ticksPerSecond)
    {
        var e = entries.Where(x => x.Length == 3).ToList();
        return e.Count == 0 ? 0 : (e.Max(x => x[2]) - e.Min(x => x[1])) / (double)ticksPerSecond;
    }

    /// <summary>How long after the first participant the last one started, seconds (a rank that
    /// learned the release instant late, or that the scheduler woke late).</summary>
    public static double StartSpread(IEnumerable<long[]> entries, long ticksPerSecond)
    {
        var e = entries.Where(x => x.Length == 3).ToList();
        return e.Count == 0 ? 0 : (e.Max(x => x[1]) - e.Min(x => x[1])) / (double)ticksPerSecond;
    }

    /// <summary>Shared memory of this process mapped with 2 MiB entries (ShmemPmdMapped of
    /// /proc/self/smaps_rollup), in bytes; 0 where it cannot be read.</summary>
    private static long ShmemPmdMappedBytes()
    {
        try
        {
            foreach (var line in File.ReadLines("/proc/self/smaps_rollup"))
                if (line.StartsWith("ShmemPmdMapped:", StringComparison.Ordinal))
                    return long.Parse(line.Split(' ', StringSplitOptions.RemoveEmptyEntries)[1], System.Globalization.CultureInfo.InvariantCulture) * 1024;
        }
        catch (IOException) { }
        return 0;
    }

    /// <summary>Sizes of the point-to-point figures (tagged messages rank 0 -> rank 1; the last one is
    /// the reference of the reallocation cases).</summary>
    public static readonly long[] P2pSizes = [4L << 20, 64L << 20, P2pBytes];

    /// <summary>Report key of <see cref="P2pBytes"/> moved as concurrent pieces of the mover's
    /// direct-piece size.</summary>
    public const string PiecesKey = "p2p_pieces";

    /// <summary>Per timed repetition, each rank's [start, end] (<see cref="Timed"/>) of a tagged rank 0
    /// -> rank 1 message per size ("p2p" for <see cref="P2pBytes"/>, "p2p_&lt;MiB&gt;" for the others),
    /// of <see cref="P2pBytes"/> as concurrent pieces (<see cref="PiecesKey"/>), of rank 1 reading
    /// them from rank 0's process ("read") and, with <paramref name="rma"/>, of a put and a get of
    /// <see cref="P2pBytes"/> into / from rank 1's registered buffer ("put", "get"): report keys
    /// NAME_ticks; the master times each as the cases (<see cref="RepSeconds"/>). Every rank takes
    /// part in the starts, so the process count (and the polling cores) match the reallocation cases.</summary>
    private static List<(string, List<long[]>)> PointToPoint(ControlClient client, UcxTransport transport, int rank, int reps, TimeSpan limit, bool rma)
    {
        var result = new List<(string, List<long[]>)>();
        using var buf = new HostBlock(P2pBytes);
        nint p = (nint)buf.Pointer;
        int round = 0;
        // part: the ranks that act (a one-sided put or get, or a read, leaves the other rank passive).
        List<long[]> Time(int[] part, Func<Task?> op)
        {
            var ticks = new List<long[]>();
            for (int i = 0; i < reps + 1; i++)
            {
                var t = Timed(client, rank, $"p2p-{round++}", limit, part.Contains(rank), () =>
                {
                    if (op() is { } task && !task.Wait(limit)) throw new TimeoutException($"rank {rank}: a point-to-point transfer did not finish within {limit.TotalSeconds:F0} s");
                });
                if (i > 0) ticks.Add(t);
            }
            return ticks;
        }
        int[] both = [0, 1];
        foreach (long bytes in P2pSizes)
        {
            long tag = 1000 + bytes / (1 << 20);
            var t = Time(both, () => rank == 0 ? transport.SendAsync(1, tag, p, bytes) : rank == 1 ? transport.RecvAsync(0, tag, p, bytes) : null);
            result.Add((bytes == P2pBytes ? "p2p" : $"p2p_{bytes >> 20}", t));
        }
        // The message size the reallocation moves its bulk in: P2pBytes as pieces of
        // TransportRealloc.DirectPieceBytes, all posted at once (as the cases post them).
        {
            long piece = TransportRealloc.DefaultDirectPieceBytes;
            int n = (int)(P2pBytes / piece);
            Task? Pieces()
            {
                if (rank > 1) return null;
                var ops = new Task[n];
                for (int k = 0; k < n; k++)
                    ops[k] = rank == 0 ? transport.SendAsync(1, 2000 + k, p + (nint)(k * piece), piece) : transport.RecvAsync(0, 2000 + k, p + (nint)(k * piece), piece);
                return Task.WhenAll(ops);
            }
            result.Add((PiecesKey, Time(both, Pieces)));
        }
        // One process reading P2pBytes straight from the other's buffer (process_vm_readv), the
        // system call under UCX's cma rendezvous and under the cases' reads: the same pair and bytes.
        if (transport.LocalProcessOf(rank == 0 ? 1 : 0) is int peerPid && rank < 2)
        {
            using var address = new HostBlock(8);
            *(long*)address.Pointer = p;
            (rank == 0 ? transport.SendAsync(1, 3000, (nint)address.Pointer, 8) : transport.RecvAsync(0, 3000, (nint)address.Pointer, 8)).Wait(limit);
            ulong remote = *(ulong*)address.Pointer;
            result.Add(("read", Time([1], () =>
            {
                long zero = 0, bytes = P2pBytes;
                Native.Check(Native.realn_process_read(peerPid, (void*)p, remote, &zero, &zero, &bytes, 1));
                return null;
            })));
        }
        else result.Add(("read", Time([], () => null)));  // the other ranks join the starts
        if (rma && transport.Size > 1)
        {
            using var region = transport.Register(p, P2pBytes);
            var group = new[] { 0, 1 };
            byte[][]? table = rank < 2 ? RmaBootstrap.AllGatherAsync(transport, group, 1 << 30, region.Descriptor).Result : null;
            using var remote = rank == 0 ? transport.Attach(1, table![1]) : null;
            result.Add(("put", Time([0], () => transport.PutAsync(remote!, 0, p, P2pBytes))));
            result.Add(("get", Time([0], () => transport.GetAsync(remote!, 0, p, P2pBytes))));
            Rendezvous.Barrier(client, rank, "rma-done", limit);
        }
        return result;
    }

    /// <summary>The benchmark's parameter values: a hash of (tensor, global element index), so
    /// every shard of every layout can be filled and checked independently.</summary>
    private static float Value(uint nameHash, long gi) =>
        ((uint)((ulong)gi * 2654435761UL) ^ nameHash) * (1f / 4294967296f);

    private static void Walk(ShardLayout layout, float* buf, bool fill, ref string? error)
    {
        foreach (var v in layout.Views)
        {
            uint h = 0;  // stable across processes (string.GetHashCode is randomised per process)
            foreach (char ch in v.Name) h = h * 31 + ch;
            long rows = v.GlobalShape.Length == 2 ? v.LocalShape[0] : 1, cols = v.GlobalShape.Length == 2 ? v.LocalShape[1] : v.LocalShape[0];
            long gcols = v.GlobalShape.Length == 2 ? v.GlobalShape[1] : v.GlobalShape[0];
            long r0 = v.SplitDim == 0 ? v.SliceStart : 0, c0 = v.SplitDim == 1 || (v.SplitDim == 0 && v.GlobalShape.Length == 1) ? v.SliceStart : 0;
            float* p = buf + v.Offset;
            for (long r = 0; r < rows; r++)
                for (long c = 0; c < cols; c++)
                {
                    float x = Value(h, (r0 + r) * gcols + c0 + c);
                    if (fill) p[r * cols + c] = x;
                    else if (p[r * cols + c] != x && error is null) error = $"'{v.Name}' element ({r}, {c}) differs";
                }
        }
    }

    private static void Fill(ShardLayout l, float* buf)
    {
        string? e = null;
        Walk(l, buf, true, ref e);
    }

    private static string? Verify(ShardLayout l, float* buf)
    {
        string? e = null;
        Walk(l, buf, false, ref e);
        return e;
    }

    /// <summary>One process's state for step-by-step runs (<see cref="CrossProcessReallocHost"/>):
    /// plans of every pair, buffers of the current case, the mover, which cases were verified.</summary>
    public sealed class Worker : IDisposable
    {
        private readonly UcxTransport _t;
        private readonly ControlClient? _client;
        private readonly ReallocPlan[] _plans;
        private readonly TransportRealloc _mover;
        private readonly HashSet<int> _verified = [];
        private readonly HostBlock _p2p;
        private int _case = -1;
        private HostBlock? _src, _dst;

        public Worker(UcxTransport transport, LlamaShape shape, ControlClient? client = null)
        {
            _t = transport;
            _client = client;
            var f = LlamaShardLayouts.Factory(shape);
            _plans = Pairs().Select(p => ReallocPlan.Build(p.From, p.To, f, 4, _ => 0)).ToArray();
            _mover = Mover(transport);
            _p2p = new HostBlock(P2pBytes);
        }

        public long CaseBytes(int c) => _plans[c].RemoteBytes + _plans[c].LocalBytes;

        public void PointToPoint(long bytes)
        {
            if (bytes > P2pBytes) throw new ArgumentOutOfRangeException(nameof(bytes));
            if (_t.Rank == 0) _t.SendAsync(1, 999, (nint)_p2p.Pointer, bytes).Wait(_t.Timeout);
            else if (_t.Rank == 1) _t.RecvAsync(0, 999, (nint)_p2p.Pointer, bytes).Wait(_t.Timeout);
        }

        public void RunCase(int c)
        {
            var plan = _plans[c];
            int rank = _t.Rank;
            if (_case != c)
            {
                _src?.Dispose();
                _dst?.Dispose();
                _src = _dst = null;
                if (plan.From.Devices.Contains(rank))
                {
                    var l = plan.SourceLayoutOf(rank);
                    _src = new HostBlock(l.TotalElements * 4, ShardMemory(_mover));
                    Fill(l, (float*)_src.Pointer);
                }
                if (plan.To.Devices.Contains(rank)) _dst = new HostBlock(plan.DestinationLayoutOf(rank).TotalElements * 4, ShardMemory(_mover));
                _case = c;
            }
            var schedule = ReallocSchedule.ForDevice(plan, rank);
            if (!_mover.ExecuteAsync(plan, schedule, _src is null ? 0 : (nint)_src.Pointer, _dst is null ? 0 : (nint)_dst.Pointer).Wait(_t.Timeout))
                throw new TimeoutException($"rank {rank}: case {c} did not finish within {_t.Timeout.TotalSeconds:F0} s");
            if (_dst is not null && _verified.Add(c) && Verify(plan.DestinationLayoutOf(rank), (float*)_dst.Pointer) is string bad)
                throw new InvalidOperationException($"rank {rank}, case {c}: {bad}");
        }

        public void Dispose()
        {
            _src?.Dispose();
            _dst?.Dispose();
            _p2p.Dispose();
            _mover.Dispose();
            _client?.Dispose();
        }
    }

    /// <summary>`realn worker --role bench-serve`: joins, then polls the master for numbered
    /// commands ("case C", "p2p BYTES", "quit"), runs each and reports it done (or its error).</summary>
    public static int Serve(string endpoint, string jobId, byte[] secret, int rank, int size, LlamaShape shape)
    {
        var auth = new MessageAuth(secret, jobId);
        using var client = new ControlClient(endpoint, auth, $"worker-{rank}");
        using var transport = new UcxTransport(rank, size) { Timeout = TimeSpan.FromSeconds(120) };
        Rendezvous.Join(client, transport, TimeSpan.FromSeconds(120));
        using var me = new Worker(transport, shape);
        var rq = TimeSpan.FromSeconds(10);
        var idleSince = DateTime.UtcNow;
        for (int seq = 0; ; seq++)
        {
            string cmd;
            while ((cmd = client.Request("command", new JsonObject { ["rank"] = rank, ["seq"] = seq }.ToJsonString(), rq)) == "wait")
            {
                if (DateTime.UtcNow - idleSince > TimeSpan.FromMinutes(30)) throw new TimeoutException($"rank {rank}: no command for 30 minutes");
                Thread.Sleep(1);  // each poll is a control-plane round trip: keep them off the cores the data plane needs
            }
            idleSince = DateTime.UtcNow;
            if (cmd == "quit") return 0;
            string? error = null;
            try
            {
                var parts = cmd.Split(' ');
                if (parts[0] == "case") me.RunCase(int.Parse(parts[1]));
                else if (parts[0] == "p2p") me.PointToPoint(long.Parse(parts[1]));
                else throw new InvalidOperationException($"unknown command '{cmd}'");
            }
            catch (Exception e) { error = e.GetBaseException().Message; }
            client.Request("done", new JsonObject { ["rank"] = rank, ["seq"] = seq, ["error"] = error }.ToJsonString(), rq);
            if (error is not null) return 1;
        }
    }
}
