// `realn bench plan CONFIG [--cluster SPEC] [--profile PROFILE.json] [--only single,threads,workers]
// [--out DIR] [--timeout SEC] [--json]`: closes the planner's loop on this machine. It searches the plan
// of CONFIG on a one-node cluster spec (the machine it runs on), then runs the experiment three ways as
// child `realn run` processes - without a plan (the single device: one process, every core), under the
// plan with its devices as threads (--in-process), and under the plan with worker processes - and prints,
// for each, the estimated and the measured wall time of one iteration of the planned stage and their
// ratio, plus each plan run against the measured single device. The measurement is the stage's
// `iterations_seconds` in summary.json (the iterations' dataflow, no evaluation or checkpoint) divided by
// its iterations, so examples/bench/ppo-tiny-timing.yaml keeps the earlier stages short; next to it the steady
// iteration, the mean of the iterations after the first (`first_iteration_seconds` in summary.json carries the run's
// one-time costs: code compiled at its first call in every process, a layout's first reallocation). The workers
// run also reports its mean master-worker round trip beyond the workers' compute (REALN_WORKER_TIMING),
// printed next to the cluster spec's worker_round_trip_us. The plan is searched for each execution (worker processes:
// OUT/plan.json; devices as threads: OUT/plan-in-process.json, `plan_in_process` in --json), and the run `realn plan`
// chooses among the three (the fastest estimate) is marked (`chosen` in --json: single, threads or workers); its
// measurement over the single device's is the loop's check. The host's load average is
// printed with the runs (measurements on a loaded host are not the model's error), and the round trip of a cache
// line between two cores before and after each run next to the profile's (a virtual machine's host moves its CPUs
// near or far apart, and a small model's all-core speed follows). With --repeat N each run is made N times,
// the modes interleaved (single, threads, workers, single, ...), and every figure is the median over the N
// trials, each trial listed beside it (a virtual machine's neighbours take a core for tens of seconds at a time).
using System.CommandLine;
using System.Diagnostics;
using System.Globalization;
using System.Text.Json;
using System.Text.Json.Nodes;
using ReaLNative.Diagnostics;
using ReaLNative.Planner;

namespace ReaLNative.Cli.Commands;

public static class BenchPlanCommand
{
    /// <summary>The ways the experiment is run and timed: no plan, the plan in-process, the plan in worker processes.</summary>
    public static readonly string[] Modes = ["single", "threads", "workers"];

    public static Command Create()
    {
        var config = new Argument<string>("CONFIG") { Description = "Experiment YAML (examples/bench/ppo-tiny-timing.yaml: short SFT and RM stages, 12 PPO iterations)" };
        var cluster = new Option<string>("--cluster") { Description = "One-node cluster spec of this machine", DefaultValueFactory = _ => "examples/clusters/cpu-local.yaml" };
        var profile = new Option<string?>("--profile") { Description = "Calibration profile JSON (from realn profile) for the estimates" };
        var only = new Option<string?>("--only") { Description = $"Comma-separated subset of {string.Join(",", Modes)}" };
        var output = new Option<string>("--out") { Description = "Plan and run directories go to OUT (OUT/plan.json, OUT/MODE/, OUT/MODE.log); must be new or empty", DefaultValueFactory = _ => "runs/bench-plan" };
        var timeout = new Option<double>("--timeout") { Description = "Deadline of each run in seconds", DefaultValueFactory = _ => 1800 };
        var json = new Option<bool>("--json") { Description = "Print JSON" };
        var repeat = new Option<int>("--repeat") { Description = "Runs of each mode, interleaved; the figures are the medians (OUT/MODE-K/ for K = 1..N)", DefaultValueFactory = _ => 1 };
        var cmd = new Command("plan", "Plan an experiment for this machine, run it without a plan, with the plan in-process and in worker processes: estimated vs measured seconds per iteration");
        cmd.Arguments.Add(config);
        foreach (var o in new Option[] { cluster, profile, only, output, timeout, repeat, json }) cmd.Options.Add(o);
        cmd.SetAction(p => Run(p.GetValue(config)!, p.GetValue(cluster)!, p.GetValue(profile), p.GetValue(only), p.GetValue(output)!, p.GetValue(timeout), p.GetValue(repeat), p.GetValue(json)));
        return cmd;
    }

    private static string F(double? v) => v is { } x ? x.ToString("F3", CultureInfo.InvariantCulture) : "-";

    /// <summary>One run of one mode: its seconds per iteration (mean, first, steady), the per-call medians, what the host did.</summary>
    private sealed record Trial(string Dir, double Measured, double? First, double? Steady, double? TaskScore, double? Load,
                                double? CoreBefore, double? CoreAfter, double? RoundTripMs, Dictionary<string, (double? Seconds, double? Tokens)> Calls);

    private static double? Median(IEnumerable<double?> values)
    {
        var v = values.Where(x => x is not null).Select(x => x!.Value).Order().ToList();
        return v.Count == 0 ? null : v.Count % 2 == 1 ? v[v.Count / 2] : (v[v.Count / 2 - 1] + v[v.Count / 2]) / 2;
    }

    private static int Run(string configPath, string clusterPath, string? profilePath, string? only, string outRoot, double timeout, int repeat, bool json)
    {
        if (repeat < 1) throw new UsageException($"--repeat: {repeat} must be at least 1");
        var modes = only is null ? Modes : only.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);
        if (modes.Length == 0) throw new UsageException($"--only: name at least one of {string.Join(", ", Modes)}");
        foreach (var m in modes)
            if (!Modes.Contains(m)) throw new UsageException($"--only: '{m}' is not one of {string.Join(", ", Modes)}");
        if (!(timeout > 0)) throw new UsageException($"--timeout: {timeout} must be positive");
        var experiment = RunCommand.LoadExperiment(configPath);
        if (File.Exists(outRoot)) throw new UsageException($"--out: '{outRoot}' is a file");
        if (Directory.Exists(outRoot) && Directory.EnumerateFileSystemEntries(outRoot).Any())
            throw new UsageException($"--out: '{outRoot}' is not empty; name a new directory");

        SearchResult r;
        ClusterSpec spec;
        List<double>? profileCores = null;
        PlanResult? singlePlan;
        PlanResult threadsPlan;
        try
        {
            spec = ClusterSpec.Load(clusterPath);
            if (spec.Nodes != 1) throw new UsageException($"{clusterPath}: nodes: {spec.Nodes}; `realn bench plan` runs the plan on this machine, so the spec must describe one node");
            var prof = profilePath is null ? null : ProfileData.Load(profilePath);
            profileCores = prof?.CoreRoundTripsNs;
            r = PlanSearch.Run(spec, Experiment.Load(configPath), new SearchOptions(), prof);
            singlePlan = PlanSearch.SingleDevice(r.Problem.Cluster, r.Problem.Experiment, prof);
            // the plan searched for devices as threads (its own search: no round trips), priced as such
            threadsPlan = r.InProcessSearch?.Best ?? PlanSearch.InProcess(r);
        }
        catch (PlannerException e) { throw new UsageException(e.Message); }
        var plan = r.Workers.Best.Plan;   // the plan searched for worker processes
        var threadsRun = threadsPlan.Plan;
        double? singleEstimate = r.SingleDeviceSeconds;
        // what `realn plan` tells the user to run
        string chosen = r.Chosen switch { ExecutionChoice.SingleDevice => "single", ExecutionChoice.PlanInProcess => "threads", _ => "workers" };
        double threadsEstimate = threadsPlan.Evaluation.IterationSeconds;
        int stage = PlannedStage(experiment, plan)
            ?? throw new UsageException($"{configPath}: no stage runs exactly the calls of the plan ({string.Join(", ", plan.Calls.Select(c => c.Name))})");

        Directory.CreateDirectory(outRoot);
        string planPath = Path.Combine(outRoot, "plan.json"), threadsPlanPath = Path.Combine(outRoot, "plan-in-process.json");
        File.WriteAllText(planPath, PlanJson.ToJson(plan));
        File.WriteAllText(threadsPlanPath, PlanJson.ToJson(threadsRun));
        string Describe(Plan p) => string.Join(", ", p.Calls.Select(c => $"{c.Name} {c.Mesh} {c.Strategy} x{c.MicroBatches}"));
        if (!json)
            Console.Error.WriteLine($"plans for {spec.Name} ({spec.DevicesPerNode} devices): in worker processes {Describe(plan)}, estimated {F(r.Workers.Best.Evaluation.IterationSeconds)} s/iteration; " +
                                    $"in process {Describe(threadsRun)}, {F(threadsEstimate)} s; single device {F(singleEstimate)} s; chosen: {chosen}");

        var rows = new JsonArray();
        double? singleMeasured = null, measuredRoundTripMs = null;
        double? loadBefore = LoadAverage();
        var trials = modes.ToDictionary(m => m, _ => new List<Trial>());
        for (int k = 1; k <= repeat; k++)
            foreach (var mode in Modes.Where(modes.Contains))
            {
                string dir = Path.Combine(outRoot, repeat == 1 ? mode : $"{mode}-{k}");
                var args = new List<string> { "run", configPath, "--out", dir };
                if (mode != "single") { args.Add("--plan"); args.Add(mode == "threads" ? threadsPlanPath : planPath); }
                if (mode == "threads") args.Add("--in-process");
                if (!json) Console.Error.WriteLine($"{mode}{(repeat == 1 ? "" : $" {k}/{repeat}")}: realn {string.Join(' ', args)} (log: {dir}.log)");
                double? coreBefore = CoreRoundTrip.Nanoseconds();
                RunChild(args, dir + ".log", timeout, mode, mode == "workers" ? new() { ["REALN_WORKER_TIMING"] = "1" } : new());
                double? coreAfter = CoreRoundTrip.Nanoseconds();
                double? runLoad = LoadAverage();
                var summary = JsonNode.Parse(File.ReadAllText(Path.Combine(dir, "summary.json")))!.AsObject();
                var st = summary["stages"]![stage]!.AsObject();
                int iterations = (int)st["iterations"]!;
                double measured = (double)st["iterations_seconds"]! / iterations;
                // the iterations after the first: what a per-iteration estimate describes (the first carries one-time costs)
                double? first = (double?)st["first_iteration_seconds"];
                double? steady = first is { } f1 && iterations > 1 ? ((double)st["iterations_seconds"]! - f1) / (iterations - 1) : null;
                trials[mode].Add(new Trial(dir, measured, first, steady, (double?)st["final_task_score"], runLoad, coreBefore, coreAfter,
                                           mode == "workers" ? RoundTripMs(dir + ".log") : null, CallMetrics(Path.Combine(dir, "metrics.jsonl"), stage)));
            }
        foreach (var mode in Modes.Where(modes.Contains))
        {
            var ts = trials[mode];
            double measured = Median(ts.Select(t => (double?)t.Measured))!.Value;
            double? first = Median(ts.Select(t => t.First)), steady = Median(ts.Select(t => t.Steady));
            double estimate = mode switch { "single" => singleEstimate ?? double.NaN, "threads" => threadsEstimate, _ => r.Workers.Best.Evaluation.IterationSeconds };
            if (mode == "single") singleMeasured = measured;
            if (mode == "workers") measuredRoundTripMs = Median(ts.Select(t => t.RoundTripMs));
            // per call: the estimate's seconds and packed tokens against the run's metrics.jsonl (median seconds of the
            // planned stage's iterations, mean tokens; over trials, the median of those): which term is off, rather than only the whole iteration
            var estCalls = (mode switch { "single" => singlePlan?.Plan, "threads" => threadsRun, _ => plan })?.Estimate?.CallSeconds;
            var calls = new JsonObject();
            foreach (var c in r.Problem.Calls)
            {
                double? ms = Median(ts.Select(t => t.Calls.TryGetValue(c.Name, out var mc) ? mc.Seconds : null));
                double? mt = Median(ts.Select(t => t.Calls.TryGetValue(c.Name, out var mc) ? mc.Tokens : null));
                double? est = estCalls is not null && estCalls.TryGetValue(c.Name, out double e) ? e : null;
                calls[c.Name] = new JsonObject
                {
                    ["estimate_seconds"] = est is { } x ? Math.Round(x, 5) : null,
                    ["measured_seconds"] = ms is { } m1 ? Math.Round(m1, 5) : null,
                    ["measured_over_estimate"] = est is { } x2 && x2 > 0 && ms is { } ms2 ? Math.Round(ms2 / x2, 3) : null,
                    ["estimate_tokens"] = Math.Round(c.Sequences * c.MeanSequenceTokens, 1),
                    ["measured_tokens"] = mt is { } t1 ? Math.Round(t1, 1) : null,
                };
            }
            var last = ts[^1];
            rows.Add((JsonNode)new JsonObject  // Add(JsonNode), not Add<T>: no reflection (NativeAOT)
            {
                ["calls"] = calls,
                ["mode"] = mode,
                ["chosen"] = mode == chosen,
                ["estimate_seconds"] = double.IsFinite(estimate) ? Math.Round(estimate, 5) : null,
                ["measured_seconds"] = Math.Round(measured, 5),
                ["measured_over_estimate"] = double.IsFinite(estimate) && estimate > 0 ? Math.Round(measured / estimate, 3) : null,
                ["first_iteration_seconds"] = first is { } f2 ? Math.Round(f2, 5) : null,
                ["steady_seconds"] = steady is { } sd ? Math.Round(sd, 5) : null,
                ["steady_over_estimate"] = steady is { } sd2 && double.IsFinite(estimate) && estimate > 0 ? Math.Round(sd2 / estimate, 3) : null,
                ["task_score"] = Median(ts.Select(t => t.TaskScore)),
                ["load_average_after"] = last.Load,
                ["core_round_trip_ns"] = new JsonObject { ["before"] = ts[0].CoreBefore, ["after"] = last.CoreAfter },
                ["trials"] = new JsonArray([.. ts.Select(t => (JsonNode)new JsonObject
                {
                    ["dir"] = t.Dir,
                    ["measured_seconds"] = Math.Round(t.Measured, 5),
                    ["measured_over_estimate"] = double.IsFinite(estimate) && estimate > 0 ? Math.Round(t.Measured / estimate, 3) : null,
                    ["steady_seconds"] = t.Steady is { } ts1 ? Math.Round(ts1, 5) : null,
                    ["first_iteration_seconds"] = t.First is { } tf ? Math.Round(tf, 5) : null,
                    ["load_average_after"] = t.Load,
                    ["core_round_trip_ns"] = new JsonObject { ["before"] = t.CoreBefore, ["after"] = t.CoreAfter },
                })]),
            });
        }
        foreach (var row in rows.Select(x => x!.AsObject()))
            row["over_single_measured"] = singleMeasured is { } s && (string)row["mode"]! != "single" ? Math.Round((double)row["measured_seconds"]! / s, 3) : null;

        if (json)
        {
            Console.WriteLine(new JsonObject
            {
                ["benchmark"] = "plan", ["config"] = configPath, ["cluster"] = spec.Name, ["stage"] = stage,
                ["stage_algorithm"] = experiment.Stages[stage].Algorithm, ["iterations"] = experiment.Stages[stage].Iterations, ["repeat"] = repeat,
                ["load_average_before"] = loadBefore, ["chosen"] = chosen, ["plan"] = JsonNode.Parse(PlanJson.ToJson(plan)),
                ["plan_in_process"] = JsonNode.Parse(PlanJson.ToJson(threadsRun)), ["rows"] = rows,
                ["worker_round_trip_ms"] = new JsonObject { ["spec"] = Math.Round(spec.WorkerRoundTrip * 1e3, 3), ["measured"] = measuredRoundTripMs },
                ["profile_core_round_trips_ns"] = profileCores is null ? null : new JsonArray(profileCores.Select(x => (JsonNode?)x).ToArray()),
            }.ToJsonString(new JsonSerializerOptions { WriteIndented = true, Encoder = System.Text.Encodings.Web.JavaScriptEncoder.UnsafeRelaxedJsonEscaping }));
            return 0;
        }
        Console.WriteLine($"stage {stage} ({experiment.Stages[stage].Algorithm}, {experiment.Stages[stage].Iterations} iterations), seconds per iteration:");
        Console.WriteLine($"{"run",-8} {"estimate",9} {"measured",9} {"meas/est",9} {"steady",9} {"st/est",7} {"first",7} {"vs single",10} {"load after",10} {"cores ns",11}");
        foreach (var row in rows.Select(x => x!.AsObject()))
        {
            string ratio = row["measured_over_estimate"] is { } q ? ((double)q).ToString("F2", CultureInfo.InvariantCulture) : "-";
            string vs = row["over_single_measured"] is { } v ? ((double)v).ToString("F2", CultureInfo.InvariantCulture) + "x" : "-";
            var cores = row["core_round_trip_ns"]!.AsObject();
            string Ns(JsonNode? n) => n is null ? "-" : ((double)n).ToString("F0", CultureInfo.InvariantCulture);
            string steadyRatio = row["steady_over_estimate"] is { } sq ? ((double)sq).ToString("F2", CultureInfo.InvariantCulture) : "-";
            Console.WriteLine($"{(string)row["mode"]! + ((bool)row["chosen"]! ? "*" : ""),-8} {F((double?)row["estimate_seconds"]),9} {F((double?)row["measured_seconds"]),9} {ratio,9} {F((double?)row["steady_seconds"]),9} {steadyRatio,7} {F((double?)row["first_iteration_seconds"]),7} {vs,10} {(row["load_average_after"] is { } la ? ((double)la).ToString("F1", CultureInfo.InvariantCulture) : "-"),10} {Ns(cores["before"]) + "/" + Ns(cores["after"]),11}");
        }
        if (repeat > 1)
            foreach (var row in rows.Select(x => x!.AsObject()))
                Console.WriteLine($"  {(string)row["mode"]!} trials, measured/estimate: " + string.Join(", ", row["trials"]!.AsArray().Select(t =>
                    $"{F((double?)t!["measured_seconds"])} s" + (t["measured_over_estimate"] is { } q ? $" ({((double)q).ToString("F2", CultureInfo.InvariantCulture)})" : ""))));
        if (repeat > 1) Console.WriteLine($"every figure above is the median of {repeat} trials per run, the modes interleaved");
        Console.WriteLine("single: realn run without --plan (one process, every core); threads: --plan plan-in-process.json --in-process; workers: --plan plan.json, one worker process per device; *: what realn plan chooses");
        Console.WriteLine("measured: the mean of every iteration; steady: of the iterations after the first; first: the first iteration (its one-time costs: code compiled at its first call in every process, a first reallocation)");
        Console.WriteLine("per call, seconds estimated / measured (median over the stage's iterations, metrics.jsonl) and packed tokens estimated / measured:");
        foreach (var row in rows.Select(x => x!.AsObject()))
        {
            var parts = new List<string>();
            foreach (var (name, node) in row["calls"]!.AsObject())
            {
                var c = node!.AsObject();
                parts.Add($"{name} {F((double?)c["estimate_seconds"])}/{F((double?)c["measured_seconds"])} s, {((double?)c["estimate_tokens"])?.ToString("F0", CultureInfo.InvariantCulture) ?? "-"}/{((double?)c["measured_tokens"])?.ToString("F0", CultureInfo.InvariantCulture) ?? "-"} tok");
            }
            Console.WriteLine($"  {(string)row["mode"]!}: {string.Join("; ", parts)}");
        }
        if (loadBefore is { } lb)
            Console.WriteLine($"load average (1 min) before: {lb.ToString("F1", CultureInfo.InvariantCulture)} on {Environment.ProcessorCount} cores; other jobs' threads inflate every measurement, workers most");
        Console.WriteLine($"cores ns: a cache line's round trip between two cores before/after each run; the profile's, before/after its all-core points: " +
                          (profileCores is null ? "not recorded" : string.Join("/", profileCores.Select(x => x.ToString("F0", CultureInfo.InvariantCulture)))) +
                          " (a virtual machine's host may move its CPUs near or far apart; a small model's all-core speed follows: docs/cost-model.md)");
        if (measuredRoundTripMs is { } rt)
            Console.WriteLine($"worker round trip beyond compute: {rt.ToString("F2", CultureInfo.InvariantCulture)} ms measured, {(spec.WorkerRoundTrip * 1e3).ToString("F2", CultureInfo.InvariantCulture)} ms in {spec.Name}'s worker_round_trip_us");
        return 0;
    }

    /// <summary>The last stage whose dataflow is exactly the plan's calls (the stage `realn run --plan` lays out).</summary>
    internal static int? PlannedStage(TrainingExperiment experiment, Plan plan)
    {
        var names = plan.Calls.Select(c => c.Name).ToHashSet();
        var stages = experiment.Stages;
        for (int s = stages.Count - 1; s >= 0; s--)
        {
            var calls = stages[s].Calls.ToHashSet();
            if (calls.SetEquals(names)) return s;
        }
        return null;
    }

    /// <summary>Runs `realn ARGS` with its output in LOG; a non-zero exit or the deadline is a failure naming the log.</summary>
    private static void RunChild(List<string> args, string log, double timeout, string mode, Dictionary<string, string> environment)
    {
        var (exe, prefix) = RunCommand.Self();
        var psi = new ProcessStartInfo(exe) { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        foreach (var (k, v) in environment) psi.Environment[k] = v;
        foreach (var a in prefix.Concat(args)) psi.ArgumentList.Add(a);
        using var p = Process.Start(psi) ?? throw new InvalidOperationException($"cannot start {exe}");
        using var w = new StreamWriter(log);
        var gate = new object();
        p.OutputDataReceived += (_, e) => { if (e.Data is not null) lock (gate) w.WriteLine(e.Data); };
        p.ErrorDataReceived += (_, e) => { if (e.Data is not null) lock (gate) w.WriteLine(e.Data); };
        p.BeginOutputReadLine();
        p.BeginErrorReadLine();
        if (!p.WaitForExit(TimeSpan.FromSeconds(timeout)))
        {
            p.Kill(entireProcessTree: true);
            p.WaitForExit(10_000);
            throw new TimeoutException($"bench plan: the {mode} run did not finish within --timeout {timeout} s (log: {log})");
        }
        p.WaitForExit();   // drains the redirected output
        if (p.ExitCode != 0)
            throw new MeasurementException($"bench plan: the {mode} run failed with exit code {p.ExitCode}; see {log}");
    }

    /// <summary>Per call of stage <paramref name="stage"/> in a run's metrics.jsonl: the median `seconds` and the
    /// mean `tokens` over its iterations.</summary>
    internal static Dictionary<string, (double? Seconds, double? Tokens)> CallMetrics(string metricsPath, int stage)
    {
        var seconds = new Dictionary<string, List<double>>();
        var tokens = new Dictionary<string, List<double>>();
        foreach (var line in File.ReadLines(metricsPath))
        {
            if (string.IsNullOrWhiteSpace(line)) continue;
            JsonObject o;
            try { o = JsonNode.Parse(line)!.AsObject(); }
            catch (JsonException) { continue; }   // a torn last line of a killed run
            if (o["stage"]?.GetValue<int>() != stage || o["call"]?.GetValue<string>() is not { } call) continue;
            if (o["seconds"] is { } sec) { if (!seconds.TryGetValue(call, out var l)) seconds[call] = l = []; l.Add(sec.GetValue<double>()); }
            if (o["tokens"] is { } tok) { if (!tokens.TryGetValue(call, out var l)) tokens[call] = l = []; l.Add(tok.GetValue<double>()); }
        }
        var result = new Dictionary<string, (double?, double?)>();
        foreach (var call in seconds.Keys.Union(tokens.Keys))
        {
            double? med = null;
            if (seconds.TryGetValue(call, out var s) && s.Count > 0) { s.Sort(); med = s.Count % 2 == 1 ? s[s.Count / 2] : (s[s.Count / 2 - 1] + s[s.Count / 2]) / 2; }
            result[call] = (med, tokens.TryGetValue(call, out var t) && t.Count > 0 ? t.Average() : null);
        }
        return result;
    }

    /// <summary>The host's 1-minute load average (/proc/loadavg), printed with the measurements; null where absent.</summary>
    private static double? LoadAverage()
    {
        try
        {
            var first = File.ReadAllText("/proc/loadavg").Split(' ')[0];
            return double.TryParse(first, NumberStyles.Float, CultureInfo.InvariantCulture, out double l) ? l : null;
        }
        catch (IOException) { return null; }
        catch (UnauthorizedAccessException) { return null; }
    }

    /// <summary>The mean round trip a worker-process run reported at its end (the last line the engine's
    /// OpTimings writes with REALN_WORKER_TIMING=1), in ms; null when the log has none.</summary>
    private static double? RoundTripMs(string log)
    {
        const string prefix = "worker round trip beyond compute, ms:";
        var line = File.ReadLines(log).LastOrDefault(l => l.StartsWith(prefix, StringComparison.Ordinal));
        if (line is null) return null;
        var first = line[prefix.Length..].Trim().Split(' ')[0];
        return double.TryParse(first, NumberStyles.Float, CultureInfo.InvariantCulture, out double ms) ? ms : null;
    }
}
