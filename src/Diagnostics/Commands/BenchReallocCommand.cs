// `realn bench realloc [--json]`: parameter reallocation bandwidth between layouts of a LLaMA
// model of more than 1 GiB, each case as a ratio to a reference measured in the same run:
// same-process cases to the best copy of the same bytes (memcpy on one thread or several, or the
// streaming copy, between pre-faulted buffers), cross-process cases to the best process-to-process
// copy of the same bytes: the same receivers reading them from the same senders as contiguous
// regions (process_vm_readv), the same receivers copying the same bytes as contiguous regions out of
// the senders' shards mapped from shared memory, or point-to-point UCX, whichever is fastest. Each
// case is verified bit-exact before it is timed.
using System.CommandLine;
using System.Diagnostics;
using System.Text.Json;
using ReaLNative.Engine.Control;
using ReaLNative.Engine.Layout;
using ReaLNative.Engine.Realloc;
using ReaLNative.Engine.Transport;

namespace ReaLNative.Diagnostics;

public static class BenchReallocCommand
{
    public static Command Create()
    {
        var json = new Option<bool>("--json") { Description = "Print JSON" };
        var reps = new Option<int>("--reps") { Description = "Timed repetitions per case", DefaultValueFactory = _ => 5 };
        var p2pOnly = new Option<bool>("--p2p-only") { Description = "Only the UCX point-to-point figures between the worker processes (tagged, put, get)" };
        var cmd = new Command("realloc", "Parameter reallocation bandwidth vs the best copy of the same bytes (model > 1 GiB)");
        cmd.Options.Add(json);
        cmd.Options.Add(reps);
        cmd.Options.Add(p2pOnly);
        cmd.SetAction(p => p.GetValue(p2pOnly) ? P2pOnly(p.GetValue(json), Math.Max(1, p.GetValue(reps))) : Run(p.GetValue(json), Math.Max(1, p.GetValue(reps))));
        return cmd;
    }

    /// <summary>~1.3 GB of fp32 parameters: 20 layers, hidden 1024, intermediate 2816, vocab 32000.</summary>
    internal static readonly LlamaShape Model = new(Layers: 20, Hidden: 1024, Intermediate: 2816, Heads: 16, KvHeads: 8, Vocab: 32000);

    internal static IReadOnlyList<(ParallelLayout, ParallelLayout)> SameProcessPairs() =>
    [
        (ParallelLayout.Contiguous(0, 1, 1, 1), ParallelLayout.Contiguous(0, 1, 1, 2)),   // split tensors
        (ParallelLayout.Contiguous(0, 1, 1, 2), ParallelLayout.Contiguous(2, 1, 1, 1)),   // merge tensors
        (ParallelLayout.Contiguous(0, 2, 1, 1), ParallelLayout.Contiguous(2, 1, 1, 2)),   // pipeline -> tensor
        (ParallelLayout.Contiguous(0, 1, 1, 4), ParallelLayout.Contiguous(0, 2, 1, 2)),   // tensor -> pipeline x tensor, overlapping
    ];

    /// <summary>The worker roles of this benchmark (`realn worker --role ROLE`), run on the worker's side.</summary>
    public static readonly string[] WorkerRoles = ["bench-realloc", "bench-p2p", "bench-serve"];

    /// <summary>One worker process of the benchmark (a role of <see cref="WorkerRoles"/>): joins the master at
    /// <paramref name="control"/>, runs its part and returns the exit code.</summary>
    public static int RunWorker(string role, string control, string job, byte[] secret, int rank, int size, int reps) => role switch
    {
        "bench-realloc" => CrossProcessReallocBench.RunWorker(control, job, secret, rank, size, Model, reps),
        "bench-p2p" => CrossProcessReallocBench.RunWorker(control, job, secret, rank, size, Model, reps, p2pOnly: true),
        "bench-serve" => CrossProcessReallocBench.Serve(control, job, secret, rank, size, Model),
        _ => throw new InputException($"unknown worker role '{role}'"),
    };

    private static int Run(bool asJson, int reps)
    {
        var log = asJson ? null : new Action<string>(Console.WriteLine);
        if (!asJson) Console.WriteLine($"model: {Model.Parameters * 4 / 1e9:F2} GB fp32 ({Model})");
        var (memcpy, cases) = InProcessReallocBenchmark.Run(Model, SameProcessPairs(), reps, log);
        var (p2p, cross, extra) = CrossProcess(reps, log);
        cases.AddRange(cross);
        if (asJson)
        {
            var o = new Dictionary<string, object>
            {
                ["model_bytes"] = Model.Parameters * 4,
                ["memcpy_gbps"] = Math.Round(memcpy, 2),
                ["p2p_gbps"] = Math.Round(p2p, 2),
                ["workers"] = CrossProcessReallocBench.Workers,
                ["transport"] = extra["transport"],
                ["process_read"] = extra["process_read"],
                ["shared_memory"] = extra["shared_memory"],
                ["p2p"] = extra["p2p"],
                ["cases"] = cases.Select(c => new Dictionary<string, object?>
                {
                    ["from"] = c.From, ["to"] = c.To, ["kind"] = c.Kind, ["bytes"] = c.Bytes,
                    ["seconds"] = Math.Round(c.Seconds, 4), ["gbps"] = Math.Round(c.Gbps, 2),
                    ["reference_gbps"] = Math.Round(c.ReferenceGbps, 2), ["ratio"] = Math.Round(c.Ratio, 3),
                    ["reference"] = c.Reference, ["goal"] = 0.80, ["goal_max"] = 1.10,
                    ["memcpy_1_thread_gbps"] = Round(c.MemcpyOneThreadGbps), ["memcpy_threads_gbps"] = Round(c.MemcpyThreadsGbps),
                    ["streaming_copy_threads_gbps"] = Round(c.StreamingCopyThreadsGbps),
                    ["contiguous_read_gbps"] = Round(c.ContiguousReadGbps), ["contiguous_mapped_copy_gbps"] = Round(c.MappedCopyGbps),
                    ["p2p_gbps"] = Round(c.P2pGbps), ["shard_huge_page_fraction"] = c.ShardHugePageFraction is double h ? Math.Round(h, 3) : null,
                }.Where(kv => kv.Value is not null).ToDictionary(kv => kv.Key, kv => kv.Value!)).ToList(),
            };
            Console.WriteLine(JsonSerializer.Serialize(o, new JsonSerializerOptions { WriteIndented = true }));
        }
        return 0;
    }

    private static object? Round(double? x) => x is double v ? Math.Round(v, 2) : null;

    private static int P2pOnly(bool asJson, int reps)
    {
        var reports = StartWorkers("bench-p2p", reps);
        var o = P2pFigures(reports);
        if (asJson) Console.WriteLine(JsonSerializer.Serialize(o, new JsonSerializerOptions { WriteIndented = true }));
        else foreach (var (k, v) in o) Console.WriteLine($"{k}: {(v is Dictionary<string, double> d ? string.Join(", ", d.Select(x => $"{x.Key} {x.Value} GB/s")) : v)}");
        return 0;
    }

    /// <summary>The point-to-point figures of the workers' reports: tagged GB/s per size, put, get.</summary>
    private static Dictionary<string, object> P2pFigures(Dictionary<int, JsonElement> reports)
    {
        var r1 = reports[1];
        var r0 = reports[0];
        var tagged = new Dictionary<string, double>();
        foreach (long b in CrossProcessReallocBench.P2pSizes)
        {
            string key = b == CrossProcessReallocBench.P2pBytes ? "p2p_seconds" : $"p2p_seconds_{b >> 20}";
            tagged[$"tag_{b >> 20}MiB"] = Math.Round(b / r1.GetProperty(key).GetDouble() / 1e9, 2);
        }
        if (r1.TryGetProperty(CrossProcessReallocBench.PiecesKey, out var ps))
            tagged[$"tag_{CrossProcessReallocBench.P2pBytes >> 20}MiB_in_{TransportRealloc.DefaultDirectPieceBytes >> 20}MiB_pieces"] = Math.Round(CrossProcessReallocBench.P2pBytes / ps.GetDouble() / 1e9, 2);
        foreach (var k in new[] { "put", "get", "read" })
            if ((k == "read" ? r1 : r0).TryGetProperty(k + "_seconds", out var s)) tagged[$"{k}_{CrossProcessReallocBench.P2pBytes >> 20}MiB"] = Math.Round(CrossProcessReallocBench.P2pBytes / s.GetDouble() / 1e9, 2);
        return new Dictionary<string, object> { ["transport"] = r1.GetProperty("transport").GetString()!, ["p2p"] = tagged };
    }

    /// <summary>Starts the worker processes, runs the rendezvous and collects their reports.
    /// Workers that fail or hang are killed; the error names the rank.</summary>
    private static (double P2pGbps, List<ReallocBenchCase> Cases, Dictionary<string, object> P2p) CrossProcess(int reps, Action<string>? log)
    {
        int n = CrossProcessReallocBench.Workers;
        var reports = StartWorkers("bench-realloc", reps);
        var extra = P2pFigures(reports);
        // Whether the cases read shards from the other processes (process_vm_readv) or moved them over UCX.
        extra["process_read"] = reports.Values.Any(r => r.TryGetProperty("process_read_bytes", out var b) && b.GetInt64() > 0);
        // Whether they copied out of the senders' mapped shards (shared memory).
        extra["shared_memory"] = reports.Values.Any(r => r.TryGetProperty("shared_read_bytes", out var b) && b.GetInt64() > 0);
        // The reference: the best tagged rank 0 -> rank 1 bandwidth among the bulk message sizes
        // (64 MiB, 256 MiB, 256 MiB as concurrent pieces of the size the cases move their bulk in);
        // the 4 MiB figure is latency-bound and left out. Taking the best keeps the ratio conservative.
        var r1 = reports[1];
        double p2p = Math.Max(Math.Max(CrossProcessReallocBench.P2pBytes / r1.GetProperty("p2p_seconds").GetDouble(),
                                       (64L << 20) / r1.GetProperty("p2p_seconds_64").GetDouble()),
                              r1.TryGetProperty(CrossProcessReallocBench.PiecesKey, out var ps) ? CrossProcessReallocBench.P2pBytes / ps.GetDouble() : 0) / 1e9;
        log?.Invoke($"cross-process ({n} worker processes, UCX): point-to-point {p2p:F2} GB/s (best of the bulk sizes)");
        var pairs = CrossProcessReallocBench.Pairs();
        var factory = LlamaShardLayouts.Factory(Model);
        var result = new List<ReallocBenchCase>();
        for (int c = 0; c < pairs.Count; c++)
        {
            // A repetition takes as long as its slowest rank; the case's time is its best repetition
            // (not the max over ranks of each rank's own best, which can mix repetitions).
            int nrep = reports.Values.First().GetProperty("case_rep_seconds")[c].GetArrayLength();
            double sec = Enumerable.Range(0, nrep).Min(i => reports.Values.Max(rep => rep.GetProperty("case_rep_seconds")[c][i].GetDouble()));
            var plan = ReallocPlan.Build(pairs[c].From, pairs[c].To, factory, 4, _ => 0);
            long bytes = plan.RemoteBytes + plan.LocalBytes;
            // The process-to-process reference: the same receivers reading the same bytes from the
            // same senders as contiguous regions, concurrently (ContiguousReads); -1 on a rank
            // means it could not read its senders' processes.
            double? Reference(string key)
            {
                bool available = reports.Values.All(rep => rep.GetProperty(key)[c].EnumerateArray().All(x => x.GetDouble() >= 0));
                return available ? bytes / Enumerable.Range(0, nrep).Min(i => reports.Values.Max(rep => rep.GetProperty(key)[c][i].GetDouble())) / 1e9 : null;
            }
            double? read = Reference("contiguous_read_rep_seconds");
            // Copies of the same contiguous regions out of the senders' mapped shards (shared memory).
            double? mapped = Reference("mapped_copy_rep_seconds");
            var (refName, refGbps) = new[] { ("p2p", p2p), ("contiguous_read", read ?? 0), ("contiguous_mapped_copy", mapped ?? 0) }.MaxBy(x => x.Item2);
            var bc = new ReallocBenchCase(InProcessReallocBenchmark.Describe(pairs[c].From), InProcessReallocBenchmark.Describe(pairs[c].To),
                "cross-process", bytes, sec, bytes / sec / 1e9, refGbps)
            {
                Reference = refName, ContiguousReadGbps = read, MappedCopyGbps = mapped, P2pGbps = p2p,
                ShardHugePageFraction = reports.Values.Min(rep => rep.TryGetProperty("shard_huge_page_fraction", out var f) ? f[c].GetDouble() : 1.0),
            };
            log?.Invoke($"{bc.From} -> {bc.To}: {bytes / 1e9:F2} GB in {sec * 1e3:F0} ms, {bc.Gbps:F2} GB/s, contiguous reads {(read is double r ? $"{r:F2} GB/s" : "unavailable")}, "
                        + $"contiguous mapped copies {(mapped is double m ? $"{m:F2} GB/s" : "unavailable")}, p2p {p2p:F2} GB/s, ratio {bc.Ratio:F2} (of {bc.Reference}); "
                        + $"shards on 2 MiB pages: {bc.ShardHugePageFraction:P0}");
            result.Add(bc);
        }
        log?.Invoke((bool)extra["shared_memory"] ? "cross-process cases copied out of the senders' shards mapped from shared memory (REALN_REALLOC_SHARED_MEMORY=0: process_vm_readv)"
                    : (bool)extra["process_read"] ? "cross-process cases read the senders' shards with process_vm_readv (REALN_REALLOC_PROCESS_READ=0: over UCX)"
                    : "cross-process cases moved everything over UCX");
        log?.Invoke($"transport {extra["transport"]}; point-to-point GB/s: {string.Join(", ", ((Dictionary<string, double>)extra["p2p"]).Select(x => $"{x.Key} {x.Value}"))}");
        return (p2p, result, extra);
    }

    private static Dictionary<int, JsonElement> StartWorkers(string role, int reps)
    {
        int n = CrossProcessReallocBench.Workers;
        var secret = MessageAuth.NewSecret();
        string job = "bench-" + Guid.NewGuid().ToString("N")[..8];
        var rv = new Rendezvous(n);
        using var server = new ControlServer("tcp://127.0.0.1:0", new MessageAuth(secret, job), rv.Handle);
        string exe = Environment.ProcessPath ?? throw new InvalidOperationException("cannot locate the realn executable");
        var procs = new List<Process>();
        try
        {
            for (int r = 0; r < n; r++)
            {
                var psi = new ProcessStartInfo(exe) { RedirectStandardError = true, RedirectStandardOutput = true, UseShellExecute = false };
                foreach (var a in new[] { "worker", "--control", server.Endpoint, "--job", job, "--rank", r.ToString(), "--size", n.ToString(), "--role", role, "--reps", reps.ToString() })
                    psi.ArgumentList.Add(a);
                psi.Environment[JobSecret.Variable] = Convert.ToHexString(secret);
                psi.Environment["OMP_NUM_THREADS"] = "1";
                procs.Add(Process.Start(psi)!);
            }
            var deadline = DateTime.UtcNow.AddMinutes(8);
            foreach (var (p, r) in procs.Select((p, r) => (p, r)))
            {
                var left = deadline - DateTime.UtcNow;
                if (!p.WaitForExit(left > TimeSpan.Zero ? left : TimeSpan.Zero))
                    throw new TimeoutException($"worker {r} did not finish within 8 minutes");
                if (p.ExitCode != 0)
                    throw new InvalidOperationException($"worker {r} failed (exit {p.ExitCode}): {p.StandardError.ReadToEnd().Trim()}");
            }
        }
        finally
        {
            foreach (var p in procs) { if (!p.HasExited) p.Kill(entireProcessTree: true); p.Dispose(); }
        }
        var reports = rv.Reports.ToDictionary(x => x.Rank, x => JsonDocument.Parse(x.Json).RootElement);
        if (reports.Count != n) throw new InvalidOperationException($"only {reports.Count} of {n} workers reported");
        return reports;
    }
}
