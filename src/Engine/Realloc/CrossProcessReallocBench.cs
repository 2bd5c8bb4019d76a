using System.Diagnostics;
using System.Text.Json;
using ReaLNative.Engine.Control;
using ReaLNative.Engine.Transport;
using ReaLNative.Interop;

namespace ReaLNative.Engine.Realloc;

/// <summary>
/// The worker side of the cross-process reallocation benchmark: every worker process is one
/// device (rank = device id), joins the job over the control plane, exchanges UCX addresses, then
/// (1) times point-to-point bandwidth rank 0 -> rank 1 and (2) for every layout pair moves the
/// model's parameters with <see cref="TransportRealloc"/>, checks every destination element
/// bit-exactly against the deterministic parameter function, and reports its best time. The
/// master (the `realn bench realloc` process) aggregates: a case takes as long as its slowest rank.
/// </summary>
internal unsafe class CrossProcessReallocBench
{
    public static IReadOnlyList<(ParallelLayout From, ParallelLayout To)> Pairs() =>
    [
        (ParallelLayout.Contiguous(0, 1, 1, 1), ParallelLayout.Contiguous(1, 1, 1, 2)),  // one process -> tensor-split over two others
        (ParallelLayout.Contiguous(0, 1, 1, 2), ParallelLayout.Contiguous(2, 2, 1, 1)),  // tp2 -> pp2 on other processes
        (ParallelLayout.Contiguous(0, 1, 2, 1), ParallelLayout.Contiguous(2, 1, 1, 2)),  // dp replicas share the sending
    ];

    public const int Workers = 4;
    public const long P2pBytes = 256L << 20;

    public static int RunWorker(string endpoint, string jobId, byte[] secret, int rank, int size, LlamaShape shape, int reps)
    {
        var auth = new MessageAuth(secret, jobId);
        using var client = new ControlClient(endpoint, auth, $"worker-{rank}");
        using var transport = new UcxTransport(rank, size) { Timeout = TimeSpan.FromSeconds(120) };
        var limit = TimeSpan.FromSeconds(120);
        Rendezvous.Join(client, transport, limit);
        using var mover = new TransportRealloc(transport);
        var factory = LlamaShardLayouts.Factory(shape);
        var report = new Dictionary<string, object>();

        // Point-to-point: rank 0 -> rank 1.
        using (var buf = new HostBlock(P2pBytes))
        {
            double best = double.MaxValue;
            for (int i = 0; i < reps + 1; i++)
            {
                Rendezvous.Barrier(client, rank, $"p2p-{i}", limit);
                long t0 = Stopwatch.GetTimestamp();
                if (rank == 0) transport.SendAsync(1, 1000 + i, (nint)buf.Pointer, P2pBytes).Wait(limit);
                else if (rank == 1) transport.RecvAsync(0, 1000 + i, (nint)buf.Pointer, P2pBytes).Wait(limit);
                if (i > 0) best = Math.Min(best, Stopwatch.GetElapsedTime(t0).TotalSeconds);
            }
            if (rank == 1) report["p2p_seconds"] = best;
        }

        var pairs = Pairs();
        var cases = new List<double>();
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
                    src = new HostBlock(l.TotalElements * 4);
                    Fill(l, (float*)src.Pointer);
                }
                if (plan.To.Devices.Contains(rank)) dst = new HostBlock(plan.DestinationLayoutOf(rank).TotalElements * 4);
                nint s = src is null ? 0 : (nint)src.Pointer, d = dst is null ? 0 : (nint)dst.Pointer;
                double best = double.MaxValue;
                for (int i = 0; i < reps + 1; i++)
                {
                    Rendezvous.Barrier(client, rank, $"case-{c}-{i}", limit);
                    long t0 = Stopwatch.GetTimestamp();
                    mover.ExecuteAsync(plan, schedule, s, d).Wait(limit);
                    double sec = Stopwatch.GetElapsedTime(t0).TotalSeconds;
                    if (i == 0 && dst is not null)
                    {
                        string? bad = Verify(plan.DestinationLayoutOf(rank), (float*)dst.Pointer);
                        if (bad is not null) throw new InvalidOperationException($"rank {rank}, case {c}: {bad}");
                    }
                    if (i > 0) best = Math.Min(best, sec);
                }
                cases.Add(best);
            }
            finally
            {
                src?.Dispose();
                dst?.Dispose();
            }
        }
        report["case_seconds"] = cases;
        client.Request("report", JsonSerializer.Serialize(new { rank, json = JsonSerializer.Serialize(report) }), TimeSpan.FromSeconds(10));
        Rendezvous.Barrier(client, rank, "done", limit);
        return 0;
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
}
