// `realn bench realloc [--json]`: parameter reallocation bandwidth between layouts of a LLaMA
// model of more than 1 GiB, each case as a ratio to a reference measured in the same run:
// same-process cases to the best copy of the same bytes (memcpy on one thread or several, or the
// streaming copy, between pre-faulted buffers), cross-process cases to the best process-to-process
// copy of the same bytes: the same receivers reading them from the same senders as contiguous
// regions (process_vm_readv), the same receivers copying the same bytes as contiguous regions out of
// the senders' shards mapped from shared memory, or point-to-point UCX, whichever is fastest. Each
// case is verified bit-exact before it is timed. Every cross-process repetition (case or reference)
// is timed alike: the master names one instant at which all ranks start (Rendezvous.Start), and the
// repetition lasts from the first participating rank's actual start to the last one's end, on the
// host's monotonic clock (Stopwatch: CLOCK_MONOTONIC, one clock for every process of the host); the
// best repetition counts.
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
        // 10: this VM's copies alternate between two speeds (about 24 and 31 GB/s) from moment to moment;
        // with 5, a reference caught the fast one where its case did not in 3 of 16 idle same-process
        // figures (0.76-0.78); with 10, nothing dipped in three idle runs (0.82-1.02). Cases and references alike.
        var reps = new Option<int>("--reps") { Description = "Timed repetitions per case and per reference (the best counts)", DefaultValueFactory = _ => 10 };
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
                ["cases_spin"] = extra["cases_spin"],
                ["process_read"] = extra["process_read"],
                ["shared_memory"] = extra["shared_memory"],
                ["push"] = extra["push"],
                ["p2p"] = extra["p2p"],
                ["cases"] = cases.Select(c => new Dictionary<string, object?>
                {
                    ["from"] = c.From, ["to"] = c.To, ["kind"] = c.Kind, ["bytes"] = c.Bytes,
                    ["seconds"] = Math.Round(c.Seconds, 4), ["gbps"] = Math.Round(c.Gbps, 2),
                    ["reference_gbps"] = Math.Round(c.ReferenceGbps, 2), ["ratio"] = Math.Round(c.Ratio, 3),
                    ["reference"] = c.Reference, ["goal"] = 0.80, ["goal_max"] = 1.10,
                    ["memcpy_1_thread_gbps"] = Round(c.MemcpyOneThreadGbps), ["memcpy_threads_gbps"] = Round(c.MemcpyThreadsGbps),
                    ["streaming_copy_threads_gbps"] = Round(c.StreamingCopyThreadsGbps),
                    ["case_pages_memcpy_threads_gbps"] = Round(c.CasePagesMemcpyThreadsGbps),
                    ["case_pages_streaming_copy_threads_gbps"] = Round(c.CasePagesStreamingCopyThreadsGbps),
                    ["contiguous_read_gbps"] = Round(c.ContiguousReadGbps), ["contiguous_mapped_copy_gbps"] = Round(c.MappedCopyGbps),
                    ["p2p_gbps"] = Round(c.P2pGbps), ["shard_huge_page_fraction"] = c.ShardHugePageFraction is double h ? Math.Round(h, 3) : null,
                    ["start_spread_ms"] = Round(c.StartSpreadMs), ["reference_start_spread_ms"] = Round(c.ReferenceStartSpreadMs),
                }.Where(kv => kv.Value is not null).ToDictionary(kv => kv.Key, kv => kv.Value!)).ToList(),
            };
            Console.WriteLine(JsonReport.Write(o));
        }
        return 0;
    }

    private static object? Round(double? x) => x is double v ? Math.Round(v, 2) : null;

    private static int P2pOnly(bool asJson, int reps)
    {
        var reports = StartWorkers("bench-p2p", reps);
        var o = P2pFigures(reports);
        if (asJson) Console.WriteLine(JsonReport.Write(o));
        else foreach (var (k, v) in o) Console.WriteLine($"{k}: {(v is Dictionary<string, double> d ? string.Join(", ", d.Select(x => $"{x.Key} {x.Value} GB/s")) : v)}");
        return 0;
    }

    /// <summary>The best repetition of a timed figure of the workers' reports (key NAME_ticks, or a
    /// case's entry of it): each repetition timed from its first participant's actual start to its
    /// last participant's end on the host's clock (CrossProcessReallocBench.RepSeconds, one rule for
    /// cases and references); how long after the first participant the last one started in that
    /// repetition beside it (milliseconds). Null when no rank took part.</summary>
    internal static (double Seconds, double SpreadMs)? Best(Dictionary<int, JsonElement> reports, string key, int? caseIndex = null)
    {
        long f = reports.Values.First().GetProperty("ticks_per_second").GetInt64();
        JsonElement Reps(JsonElement report) => caseIndex is int c ? report.GetProperty(key)[c] : report.GetProperty(key);
        static long[] Ticks(JsonElement e) => e.EnumerateArray().Select(x => x.GetInt64()).ToArray();
        int n = Reps(reports.Values.First()).GetArrayLength();
        (double, double)? best = null;
        for (int i = 0; i < n; i++)
        {
            var entries = reports.Values.Select(r => Ticks(Reps(r)[i])).ToList();
            if (entries.All(e => e.Length == 0)) continue;
            double sec = CrossProcessReallocBench.RepSeconds(entries, f);
            if (best is null || sec < best.Value.Item1) best = (sec, CrossProcessReallocBench.StartSpread(entries, f) * 1e3);
        }
        return best;
    }

    /// <summary>The point-to-point figures of the workers' reports: tagged GB/s per size, put, get, read.</summary>
    private static Dictionary<string, object> P2pFigures(Dictionary<int, JsonElement> reports)
    {
        var tagged = new Dictionary<string, double>();
        double Gbps(string name) => Best(reports, name + "_ticks") is var (s, _) ? Math.Round(CrossProcessReallocBench.P2pBytes / s / 1e9, 2) : 0;
        foreach (long b in CrossProcessReallocBench.P2pSizes)
        {
            string key = b == CrossProcessReallocBench.P2pBytes ? "p2p" : $"p2p_{b >> 20}";
            if (Best(reports, key + "_ticks") is var (s, _)) tagged[$"tag_{b >> 20}MiB"] = Math.Round(b / s / 1e9, 2);
        }
        tagged[$"tag_{CrossProcessReallocBench.P2pBytes >> 20}MiB_in_{TransportRealloc.DefaultDirectPieceBytes >> 20}MiB_pieces"] = Gbps(CrossProcessReallocBench.PiecesKey);
        foreach (var k in new[] { "put", "get", "read" })
            if (reports[0].TryGetProperty(k + "_ticks", out _) && Best(reports, k + "_ticks") is not null)
                tagged[$"{k}_{CrossProcessReallocBench.P2pBytes >> 20}MiB"] = Gbps(k);
        return new Dictionary<string, object> { ["transport"] = reports[1].GetProperty("transport").GetString()!, ["p2p"] = tagged };
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
        // Whether senders wrote their receivers' shared destinations themselves (push).
        extra["push"] = reports.Values.Any(r => r.TryGetProperty("pushed_bytes", out var b) && b.GetInt64() > 0);
        // The progress threads' spin count during the cases (0 where the copy threads fill the cores).
        extra["cases_spin"] = reports[0].GetProperty("cases_spin").GetInt32();
        // The point-to-point reference: the best tagged rank 0 -> rank 1 bandwidth among the bulk
        // message sizes (64 MiB, 256 MiB, 256 MiB as concurrent pieces of the size the cases move
        // their bulk in); the 4 MiB figure is latency-bound and left out.
        var p2pFig = (Dictionary<string, double>)extra["p2p"];
        double p2p = new[] { $"tag_64MiB", $"tag_{CrossProcessReallocBench.P2pBytes >> 20}MiB",
                             $"tag_{CrossProcessReallocBench.P2pBytes >> 20}MiB_in_{TransportRealloc.DefaultDirectPieceBytes >> 20}MiB_pieces" }
            .Max(k => p2pFig.GetValueOrDefault(k));
        log?.Invoke($"cross-process ({n} worker processes, UCX): point-to-point {p2p:F2} GB/s (best of the bulk sizes)");
        var pairs = CrossProcessReallocBench.Pairs();
        var factory = LlamaShardLayouts.Factory(Model);
        var result = new List<ReallocBenchCase>();
        for (int c = 0; c < pairs.Count; c++)
        {
            // Every repetition of the case and of its references is timed alike: all participants
            // are released at one instant (Rendezvous.Start), the repetition lasts from the first
            // participant's start to the last one's end; the figure is the best repetition.
            var (sec, spread) = Best(reports, "case_rep_ticks", c) ?? throw new InvalidOperationException($"case {c}: no rank took part");
            var plan = ReallocPlan.Build(pairs[c].From, pairs[c].To, factory, 4, _ => 0);
            long bytes = plan.RemoteBytes + plan.LocalBytes;
            // The process-to-process references: the same receivers reading the same bytes from the
            // same senders as contiguous regions, concurrently (ContiguousReads); null where a rank
            // could not read its senders' processes (or map their shards).
            (double Gbps, double SpreadMs)? Reference(string key, string available)
            {
                if (!reports.Values.All(rep => rep.GetProperty(available)[c].GetBoolean())) return null;
                return Best(reports, key, c) is var (s, sp) ? (bytes / s / 1e9, sp) : null;
            }
            var read = Reference("contiguous_read_rep_ticks", "contiguous_read_available");
            // Copies of the same contiguous regions out of the senders' mapped shards (shared memory).
            var mapped = Reference("mapped_copy_rep_ticks", "mapped_copy_available");
            var (refName, refGbps, refLate) = new[] { ("p2p", p2p, (double?)null), ("contiguous_read", read?.Gbps ?? 0, read?.SpreadMs), ("contiguous_mapped_copy", mapped?.Gbps ?? 0, mapped?.SpreadMs) }.MaxBy(x => x.Item2);
            var bc = new ReallocBenchCase(InProcessReallocBenchmark.Describe(pairs[c].From), InProcessReallocBenchmark.Describe(pairs[c].To),
                "cross-process", bytes, sec, bytes / sec / 1e9, refGbps)
            {
                Reference = refName, ContiguousReadGbps = read?.Gbps, MappedCopyGbps = mapped?.Gbps, P2pGbps = p2p,
                ShardHugePageFraction = reports.Values.Min(rep => rep.TryGetProperty("shard_huge_page_fraction", out var f) ? f[c].GetDouble() : 1.0),
                StartSpreadMs = spread, ReferenceStartSpreadMs = refLate,
            };
            log?.Invoke($"{bc.From} -> {bc.To}: {bytes / 1e9:F2} GB in {sec * 1e3:F0} ms, {bc.Gbps:F2} GB/s, contiguous reads {(read is { } r ? $"{r.Gbps:F2} GB/s" : "unavailable")}, "
                        + $"contiguous mapped copies {(mapped is { } m ? $"{m.Gbps:F2} GB/s" : "unavailable")}, p2p {p2p:F2} GB/s, ratio {bc.Ratio:F2} (of {bc.Reference}); "
                        + $"last start {spread:F2} ms after the first (reference {refLate?.ToString("F2") ?? "-"} ms); shards on 2 MiB pages: {bc.ShardHugePageFraction:P0}");
            result.Add(bc);
        }
        log?.Invoke((bool)extra["push"] ? "cross-process cases: the senders wrote their receivers' shared destination shards (REALN_REALLOC_PUSH=0: the receivers copy out of the senders' mapped shards)"
                    : (bool)extra["shared_memory"] ? "cross-process cases copied out of the senders' shards mapped from shared memory (REALN_REALLOC_SHARED_MEMORY=0: process_vm_readv)"
                    : (bool)extra["process_read"] ? "cross-process cases read the senders' shards with process_vm_readv (REALN_REALLOC_PROCESS_READ=0: over UCX)"
                    : "cross-process cases moved everything over UCX");
        log?.Invoke($"transport {extra["transport"]} (cases: spin {extra["cases_spin"]}); point-to-point GB/s: {string.Join(", ", p2pFig.Select(x => $"{x.Key} {x.Value}"))}");
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
