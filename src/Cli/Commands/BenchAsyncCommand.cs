// `realn bench async [CONFIG] [--max-staleness N] [--plan PLAN.json] [--in-process] [--examples DIR]
// [--only a,b] [--seeds S,..] [--reps R] [--out DIR] [--json]`: runs an RL workload synchronously and asynchronously
// (`mode: async`, generation up to N policy versions ahead of training) under the same plan and
// prints for each the final held-out score, the wall time of the whole run, of the RL stage and of
// its iterations, the async run's staleness and utilisation, and the ratios async / sync (medians
// over repetitions). Without CONFIG it runs the suite the async goal names: ppo-tiny and grpo-math
// under their two-device plans in examples/bench (generation and the frozen models' scoring on
// device 0, the training on device 1).
//
// The same start for both modes: the stages before the RL stage (sft, rm) run once, into
// OUT/NAME/pre-rl, and every run of the RL stage resumes a copy of that directory (a resume from
// the checkpoint after those stages continues exactly as the uninterrupted run: tested). So the
// pair differs only in the mode, and a bench that runs grpo-math twice runs its SFT stage once.
// The whole-run wall time of each run is the shared stages' time plus its own RL stage (summary.json
// "seconds" carries the first part over in the checkpoint). Async first in odd repetitions, sync
// first in even ones, so neither gets the warm start every time; the 1-minute load average is
// recorded before and after every run (timings on a shared machine say little).
//
// --seeds: the RL stage runs once per seed in each mode (its sampling and data order; the shared
// start stays the config's seed, so every run resumes the same weights), and each mode's score is
// the mean over the seeds. The runs are deterministic, so one seed's sync-async difference is one
// draw of the trajectory noise: on grpo-math three sampling seeds from one SFT start ended
// synchronously at 0.664, 0.629 and 0.582 (2026-12-04), a spread larger than the goal's 0.03.
using System.CommandLine;
using System.Globalization;
using System.Text.Json;
using System.Text.Json.Nodes;

namespace ReaLNative.Cli.Commands;

public static class BenchAsyncCommand
{
    /// <summary>The suite without CONFIG: (name, config, plan) relative to --examples.</summary>
    public static readonly (string Name, string Config, string Plan)[] Suite =
    [
        ("ppo-tiny", "ppo-tiny.yaml", "bench/ppo-tiny-two-groups.plan.json"),
        ("grpo-math", "grpo-math.yaml", "bench/grpo-math-two-groups.plan.json"),
    ];

    /// <summary>The async goal: the async run's final held-out score within this of the sync run's.</summary>
    public const double ScoreTolerance = 0.03;

    public static Command Create()
    {
        var config = new Argument<string?>("CONFIG") { Description = "Experiment YAML of an RL algorithm (ppo, grpo, rloo, remax); default: the suite (ppo-tiny and grpo-math under their two-device plans in examples/bench)", Arity = ArgumentArity.ZeroOrOne };
        var staleness = new Option<int?>("--max-staleness") { Description = "N for the async run (default: the config's max_staleness, else 1)" };
        var planPath = new Option<string?>("--plan") { Description = "Execution plan JSON for both runs of CONFIG (its generation calls need devices of their own); default: no plan" };
        var inProcess = new Option<bool>("--in-process") { Description = "Run the plan's devices as threads of this process (default: one worker process per device, as `realn run --plan`)" };
        var examples = new Option<string>("--examples") { Description = "Folder of the suite's configs and plans", DefaultValueFactory = _ => "examples" };
        var only = new Option<string?>("--only") { Description = $"Comma-separated subset of the suite: {string.Join(",", Suite.Select(s => s.Name))}" };
        var reps = new Option<int>("--reps") { Description = "Repetitions of each pair (medians are reported)", DefaultValueFactory = _ => 1 };
        var seeds = new Option<string?>("--seeds") { Description = "Comma-separated seeds of the RL stage (sampling and data order; the shared start keeps the config's seed): each mode runs once per seed and its score is the mean; default: the config's seed" };
        var output = new Option<string>("--out") { Description = "Run directories go to OUT[/NAME]/{pre-rl,sync-REP,async-REP}; must be new or empty", DefaultValueFactory = _ => "runs/bench-async" };
        var json = new Option<bool>("--json") { Description = "Print JSON" };
        var cmd = new Command("async", "Run RL workloads synchronously and with mode: async from the same start: held-out scores, wall times, ratio");
        cmd.Arguments.Add(config);
        foreach (var o in new Option[] { staleness, planPath, inProcess, examples, only, seeds, reps, output, json }) cmd.Options.Add(o);
        cmd.SetAction(p => Run(p.GetValue(config), p.GetValue(staleness), p.GetValue(planPath), p.GetValue(inProcess), p.GetValue(examples)!,
                               p.GetValue(only), p.GetValue(seeds), p.GetValue(reps), p.GetValue(output)!, p.GetValue(json)));
        return cmd;
    }

    private static string F(double? v, string format = "F3") => v is { } x ? x.ToString(format, CultureInfo.InvariantCulture) : "-";

    private static double Median(IEnumerable<double> xs)
    {
        var a = xs.Order().ToArray();
        return a.Length % 2 == 1 ? a[a.Length / 2] : (a[a.Length / 2 - 1] + a[a.Length / 2]) / 2;
    }

    private sealed record Workload(string Name, string ConfigPath, string? PlanPath, string Dir);

    /// <summary>--seeds: distinct integers, at most 16; null when not given.</summary>
    internal static long[]? ParseSeeds(string? text)
    {
        if (text is null) return null;
        var parts = text.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);
        if (parts.Length == 0 || parts.Length > 16) throw new UsageException($"--seeds: '{text}' must name 1 to 16 seeds, comma-separated");
        var seeds = new long[parts.Length];
        for (int i = 0; i < parts.Length; i++)
            if (!long.TryParse(parts[i], NumberStyles.Integer, CultureInfo.InvariantCulture, out seeds[i]) || seeds[i] < 0)
                throw new UsageException($"--seeds: '{parts[i]}' is not a non-negative integer");
        if (seeds.Distinct().Count() != seeds.Length) throw new UsageException($"--seeds: '{text}' names a seed twice");
        return seeds;
    }

    private static int Run(string? configPath, int? staleness, string? planPath, bool inProcess, string examplesDir, string? only,
                           string? seedsText, int reps, string outRoot, bool json)
    {
        if (reps < 1 || reps > 100) throw new UsageException($"--reps: {reps} must be in [1, 100]");
        var seeds = ParseSeeds(seedsText);
        if (staleness is { } s0 && (s0 < 0 || s0 > 16)) throw new UsageException($"--max-staleness: {s0} must be in [0, 16]");
        var workloads = new List<Workload>();
        if (configPath is not null)
        {
            if (only is not null) throw new UsageException("--only selects from the suite: give it without CONFIG");
            workloads.Add(new Workload(Path.GetFileNameWithoutExtension(configPath), configPath, planPath, outRoot));
        }
        else
        {
            if (planPath is not null) throw new UsageException("--plan goes with CONFIG: the suite uses the plans in --examples' bench folder");
            var names = only is null ? Suite.Select(s => s.Name).ToArray() : only.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);
            foreach (var n in names)
            {
                var w = Suite.FirstOrDefault(s => s.Name == n);
                if (w.Name is null) throw new UsageException($"--only: '{n}' is not one of {string.Join(", ", Suite.Select(s => s.Name))}");
                workloads.Add(new Workload(w.Name, Path.Combine(examplesDir, w.Config), Path.Combine(examplesDir, w.Plan), Path.Combine(outRoot, w.Name)));
            }
        }
        if (File.Exists(outRoot)) throw new UsageException($"--out: '{outRoot}' is a file");
        if (Directory.Exists(outRoot) && Directory.EnumerateFileSystemEntries(outRoot).Any())
            throw new UsageException($"--out: '{outRoot}' is not empty; name a new directory");
        // Every config and plan is read (and refused, naming it) before anything runs.
        var loaded = workloads.Select(w =>
        {
            var experiment = RunCommand.LoadExperiment(w.ConfigPath);
            int n = staleness ?? experiment.MaxStaleness ?? 1;
            TrainingExperiment sync, async;
            try { (sync, async) = (experiment.WithMaxStaleness(null), experiment.WithMaxStaleness(n)); }
            catch (ExperimentConfigException e) { throw new UsageException($"{w.ConfigPath}: {e.Message}"); }
            var plan = w.PlanPath is null ? null : RunCommand.LoadPlan(w.PlanPath, w.ConfigPath);
            return (w, experiment, n, sync, async, plan);
        }).ToList();

        var results = new JsonArray();
        double? loadStart = LoadAverage();
        foreach (var (w, experiment, n, sync, async, plan) in loaded)
            results.Add((JsonNode)RunWorkload(w, experiment, n, sync, async, plan, inProcess, seeds, reps, json));
        var result = new JsonObject
        {
            ["benchmark"] = "async", ["cores"] = Environment.ProcessorCount,
            ["load_average_start"] = loadStart, ["load_average_end"] = LoadAverage(),
            ["score_tolerance"] = ScoreTolerance,
            ["workloads"] = results,
        };
        if (json)
        {
            Console.WriteLine(result.ToJsonString(new JsonSerializerOptions { WriteIndented = true }));
            return 0;
        }
        foreach (var r in results.Select(x => x!.AsObject()))
        {
            Console.WriteLine($"{r["workload"]}: {r["hosts"]}, async max_staleness {r["max_staleness"]} weight_update {r["weight_update"]}, {r["reps"]} rep(s) (medians)"
                              + (r["seeds"] is JsonArray sd ? $", RL seeds {string.Join(",", sd.Select(x => (long)x!))} (scores: means)" : "")
                              + (r["shared_start"] is JsonObject sh ? $"; shared start ({string.Join(", ", sh["stages"]!.AsArray().Select(x => (string)x!))}) {F((double?)sh["seconds"], "F1")} s, score {F((double?)sh["task_score"])}" : ""));
            Console.WriteLine($"  {"mode",-6} {"score",7} {"run s",8} {"RL stage s",11} {"RL iter s",10}");
            foreach (var mode in new[] { "sync", "async" })
            {
                var m = r[mode]!.AsObject();
                Console.WriteLine($"  {mode,-6} {F((double?)m["final_task_score"]),7} {F((double?)m["seconds"], "F1"),8} {F((double?)m["rl_stage_seconds"], "F1"),11} {F((double?)m["rl_iterations_seconds"], "F2"),10}");
            }
            var a = r["async"]!.AsObject();
            Console.WriteLine($"  async / sync: run {F((double?)r["seconds_ratio"], "F2")}x, RL stage {F((double?)r["rl_stage_seconds_ratio"], "F2")}x, RL iterations {F((double?)r["rl_iterations_seconds_ratio"], "F2")}x; " +
                              $"score difference {F((double?)r["score_difference"])} (goal: within {ScoreTolerance}); " +
                              $"async: samples by staleness {a["staleness_histogram"]?.ToJsonString() ?? "-"}, generation busy {F((double?)a["gen_utilisation"], "P0")}, training busy {F((double?)a["train_utilisation"], "P0")}");
        }
        Console.WriteLine($"load average {F(loadStart, "F2")} at the start, {F((double?)result["load_average_end"], "F2")} at the end, {Environment.ProcessorCount} cores");
        return 0;
    }

    private static JsonObject RunWorkload(Workload w, TrainingExperiment experiment, int n, TrainingExperiment sync, TrainingExperiment async,
                                          Planner.Plan? plan, bool inProcess, long[]? seeds, int reps, bool json)
    {
        int rl = experiment.Stages.Count - 1;
        string hostsName = plan is null ? "single device" : inProcess ? "in-process devices" : "worker processes";
        JobHosts Hosts() => plan is null || inProcess ? JobHosts.InProcess : JobHosts.WorkerProcesses();

        // The stages before the RL stage, once: every RL run resumes a copy of this directory.
        string? pre = null;
        JsonObject? shared = null;
        if (rl > 0)
        {
            pre = Path.Combine(w.Dir, "pre-rl");
            if (!json) Console.Error.WriteLine($"{w.Name}: the stages before the RL stage, once: {w.ConfigPath} -> {pre}");
            double? before = LoadAverage();
            JsonObject summary;
            double carried;
            using (var job = new TrainingJob(sync.WithFirstStages(rl), Options(pre, resume: false, plan: null, JobHosts.InProcess, json)))
            {
                RunCommand.Prepare(job, w.ConfigPath, null);
                var result = job.Run();
                summary = JsonNode.Parse(result.SummaryJson!)!.AsObject();
                // The wall time the RL runs carry over from the checkpoint they resume (its state.json "seconds").
                carried = (double)JsonNode.Parse(File.ReadAllText(Path.Combine(result.LastCheckpoint!.Directory, "state.json")))!["seconds"]!;
            }
            shared = new JsonObject
            {
                ["stages"] = new JsonArray(experiment.Stages.Take(rl).Select(s => (JsonNode)s.Algorithm).ToArray()),
                ["seconds"] = Math.Round(carried, 3),
                // The RL stage's start: the last of these stages that scores the actor (sft; rm does not).
                ["task_score"] = summary["stages"]!.AsArray().Select(st => (double?)st!["final_task_score"]).LastOrDefault(x => x is not null),
                ["dir"] = pre,
                ["load_average_before"] = before, ["load_average_after"] = LoadAverage(),
            };
        }

        var rows = new JsonArray();
        for (int rep = 0; rep < reps; rep++)
            foreach (long? seed in seeds is null ? [null] : seeds.Select(x => (long?)x))
            foreach (var mode in rep % 2 == 0 ? new[] { "async", "sync" } : ["sync", "async"])
            {
                string dir = Path.Combine(w.Dir, seed is { } sd ? $"{mode}-seed{sd}-{rep + 1}" : $"{mode}-{rep + 1}");
                if (!json) Console.Error.WriteLine($"{w.Name}: run {rep + 1}/{reps}{(seed is { } s1 ? $", RL seed {s1}" : "")}, {mode}{(mode == "async" ? $" (max_staleness {n})" : "")}, {hostsName} -> {dir}");
                if (pre is not null) CopyRun(pre, dir);
                double? before = LoadAverage();
                JsonObject summary;
                var run = mode == "async" ? async : sync;
                using (var job = new TrainingJob(seed is { } s2 ? run.WithSeed(s2) : run, Options(dir, resume: pre is not null, plan, Hosts(), json)))
                {
                    RunCommand.Prepare(job, w.ConfigPath, w.PlanPath);
                    summary = JsonNode.Parse(job.Run().SummaryJson!)!.AsObject();
                }
                double? after = LoadAverage();
                Curves.Write(Path.Combine(dir, "metrics.jsonl"), Path.Combine(dir, "curves.png"), $"{experiment.Name} ({mode}): training curves");
                var stage = summary["stages"]![rl]!.AsObject();
                var row = new JsonObject
                {
                    ["mode"] = mode, ["rep"] = rep + 1, ["seed"] = seed ?? experiment.Seed,
                    ["final_task_score"] = (double?)summary["final_task_score"],
                    ["seconds"] = (double)summary["seconds"]!,
                    ["rl_stage_seconds"] = (double)stage["seconds"]!,
                    ["rl_iterations_seconds"] = (double)stage["iterations_seconds"]!,
                    ["rl_eval_seconds"] = (double?)stage["eval_seconds"],
                    ["load_average_before"] = before, ["load_average_after"] = after,
                };
                if (stage["async"] is JsonObject a) row["async"] = a.DeepClone();
                rows.Add((JsonNode)row);
            }

        JsonObject Medians(string mode)
        {
            var own = rows.Select(r => r!.AsObject()).Where(r => (string)r["mode"]! == mode).ToList();
            double M(string key, int digits) => Math.Round(Median(own.Select(r => (double)r[key]!)), digits);
            // The score: per seed the median over repetitions (the runs are deterministic: they agree), then the mean over seeds.
            var bySeed = own.GroupBy(r => (long)r["seed"]!).OrderBy(g => g.Key)
                            .Select(g => (Seed: g.Key, Score: g.All(r => r["final_task_score"] is not null) ? Median(g.Select(r => (double)r["final_task_score"]!)) : (double?)null)).ToList();
            var m = new JsonObject
            {
                ["final_task_score"] = bySeed.All(x => x.Score is not null) ? Math.Round(bySeed.Average(x => x.Score!.Value), 4) : null,
                ["seconds"] = M("seconds", 2),
                ["rl_stage_seconds"] = M("rl_stage_seconds", 2),
                ["rl_iterations_seconds"] = M("rl_iterations_seconds", 3),
            };
            if (seeds is not null)
                m["final_task_score_by_seed"] = new JsonObject(bySeed.Select(x => KeyValuePair.Create(x.Seed.ToString(CultureInfo.InvariantCulture), (JsonNode?)(x.Score is { } v ? Math.Round(v, 4) : null))));
            // The async runs' staleness and utilisation (the runs are deterministic: the histograms are the
            // same in every repetition; utilisations and waits are medians).
            if (own[0]["async"] is JsonObject first)
            {
                m["staleness_histogram"] = first["staleness_histogram"]?.DeepClone();
                m["token_staleness_histogram"] = first["token_staleness_histogram"]?.DeepClone();
                m["dropped_stale"] = first["dropped_stale"]?.DeepClone();
                foreach (var k in new[] { "gen_utilisation", "train_utilisation", "wait_seconds", "push_seconds" })
                    m[k] = Math.Round(Median(own.Select(r => (double)r["async"]![k]!)), 4);
            }
            return m;
        }
        var (ms, ma) = (Medians("sync"), Medians("async"));
        double? scoreDiff = ms["final_task_score"] is { } ss && ma["final_task_score"] is { } sa ? Math.Round((double)sa - (double)ss, 4) : null;
        double Ratio(string key) => Math.Round((double)ma[key]! / (double)ms[key]!, 3);
        return new JsonObject
        {
            ["workload"] = w.Name, ["config"] = w.ConfigPath, ["algorithm"] = experiment.Algorithm,
            ["max_staleness"] = n, ["weight_update"] = async.WeightUpdate,
            ["plan"] = w.PlanPath, ["hosts"] = hostsName, ["reps"] = reps,
            ["seeds"] = seeds is null ? null : new JsonArray(seeds.Select(x => (JsonNode)x).ToArray()),
            ["shared_start"] = shared,
            ["sync"] = ms, ["async"] = ma,
            ["score_difference"] = scoreDiff,
            ["score_within_tolerance"] = scoreDiff is { } d ? Math.Abs(d) <= ScoreTolerance : null,
            ["seconds_ratio"] = Ratio("seconds"),
            ["rl_stage_seconds_ratio"] = Ratio("rl_stage_seconds"),
            ["rl_iterations_seconds_ratio"] = Ratio("rl_iterations_seconds"),
            ["rows"] = rows,
        };
    }

    /// <summary>A run's options: as `realn run`'s, its notes (the checkpoint each run resumes from) on
    /// stderr, none with --json (stdout is the JSON document).</summary>
    private static TrainingOptions Options(string dir, bool resume, Planner.Plan? plan, JobHosts hosts, bool json) => new()
    {
        OutputDirectory = dir, Resume = resume,
        Plan = plan is null ? PlanChoice.SingleDevice : PlanChoice.FromPlan(plan), Hosts = hosts,
        ResumeOptionName = "--resume", OverwriteOptionName = "--overwrite", WritePlanJson = false,
        OnNote = json ? null : n => Console.Error.WriteLine(n),
    };

    /// <summary>A copy of the shared start's run directory (metrics.jsonl and checkpoints/, with the
    /// stage artifacts) for one RL run to resume.</summary>
    private static void CopyRun(string from, string to)
    {
        Directory.CreateDirectory(to);
        File.Copy(Path.Combine(from, "metrics.jsonl"), Path.Combine(to, "metrics.jsonl"));
        string src = Path.Combine(from, "checkpoints");
        foreach (var d in Directory.EnumerateDirectories(src, "*", SearchOption.AllDirectories))
            Directory.CreateDirectory(Path.Combine(to, "checkpoints", Path.GetRelativePath(src, d)));
        Directory.CreateDirectory(Path.Combine(to, "checkpoints"));
        foreach (var f in Directory.EnumerateFiles(src, "*", SearchOption.AllDirectories))
            File.Copy(f, Path.Combine(to, "checkpoints", Path.GetRelativePath(src, f)));
    }

    /// <summary>The 1-minute load average (the machine may be shared), or null where /proc has none.</summary>
    private static double? LoadAverage()
    {
        try { return double.Parse(File.ReadAllText("/proc/loadavg").Split(' ')[0], CultureInfo.InvariantCulture); }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or FormatException) { return null; }
    }
}
