// `realn bench async CONFIG [--max-staleness N] [--plan PLAN.json] [--workers] [--reps R] [--out DIR]
// [--json]`: runs the experiment synchronously and asynchronously (`mode: async`, generation up to N
// policy versions ahead of training) in the same process, one after the other (async first in odd
// repetitions, sync first in even ones, so neither gets the warm start every time), and prints for
// each the final held-out score and the wall time of the whole run and of the RL stage's iterations,
// the async run's staleness and utilisation, and the ratios async / sync (medians over repetitions).
// The reference (sync) is the same experiment on the same devices in the same run.
using System.CommandLine;
using System.Globalization;
using System.Text.Json;
using System.Text.Json.Nodes;

namespace ReaLNative.Cli.Commands;

public static class BenchAsyncCommand
{
    public static Command Create()
    {
        var config = new Argument<string>("CONFIG") { Description = "Experiment YAML of an RL algorithm (ppo, grpo, rloo, remax), e.g. examples/grpo-tiny.yaml" };
        var staleness = new Option<int?>("--max-staleness") { Description = "N for the async run (default: the config's max_staleness, else 1)" };
        var planPath = new Option<string?>("--plan") { Description = "Execution plan JSON for both runs (its generation calls need devices of their own); default: no plan" };
        var workers = new Option<bool>("--workers") { Description = "Run the plan's devices as worker processes (default: in-process devices)" };
        var reps = new Option<int>("--reps") { Description = "Repetitions of the pair (medians are reported)", DefaultValueFactory = _ => 1 };
        var output = new Option<string>("--out") { Description = "Run directories go to OUT/{sync,async}-REP; must be new or empty", DefaultValueFactory = _ => "runs/bench-async" };
        var json = new Option<bool>("--json") { Description = "Print JSON" };
        var cmd = new Command("async", "Run an RL experiment synchronously and with mode: async: final held-out score, wall time, ratio");
        cmd.Arguments.Add(config);
        foreach (var o in new Option[] { staleness, planPath, workers, reps, output, json }) cmd.Options.Add(o);
        cmd.SetAction(p => Run(p.GetValue(config)!, p.GetValue(staleness), p.GetValue(planPath), p.GetValue(workers), p.GetValue(reps), p.GetValue(output)!, p.GetValue(json)));
        return cmd;
    }

    private static string F(double? v, string format = "F3") => v is { } x ? x.ToString(format, CultureInfo.InvariantCulture) : "-";

    private static double Median(IEnumerable<double> xs)
    {
        var a = xs.Order().ToArray();
        return a.Length % 2 == 1 ? a[a.Length / 2] : (a[a.Length / 2 - 1] + a[a.Length / 2]) / 2;
    }

    private static int Run(string configPath, int? staleness, string? planPath, bool workers, int reps, string outRoot, bool json)
    {
        if (reps < 1 || reps > 100) throw new UsageException($"--reps: {reps} must be in [1, 100]");
        if (staleness is { } s0 && (s0 < 0 || s0 > 16)) throw new UsageException($"--max-staleness: {s0} must be in [0, 16]");
        if (workers && planPath is null) throw new UsageException("--workers runs a plan's devices as worker processes: give --plan too");
        var experiment = RunCommand.LoadExperiment(configPath);
        int n = staleness ?? experiment.MaxStaleness ?? 1;
        TrainingExperiment sync, async;
        try { (sync, async) = (experiment.WithMaxStaleness(null), experiment.WithMaxStaleness(n)); }
        catch (ExperimentConfigException e) { throw new UsageException($"{configPath}: {e.Message}"); }
        var plan = planPath is null ? null : RunCommand.LoadPlan(planPath, configPath);
        if (File.Exists(outRoot)) throw new UsageException($"--out: '{outRoot}' is a file");
        if (Directory.Exists(outRoot) && Directory.EnumerateFileSystemEntries(outRoot).Any())
            throw new UsageException($"--out: '{outRoot}' is not empty; name a new directory");
        int rl = experiment.Stages.Count - 1;

        var rows = new JsonArray();
        for (int rep = 0; rep < reps; rep++)
            foreach (var mode in rep % 2 == 0 ? new[] { "async", "sync" } : ["sync", "async"])
            {
                string dir = Path.Combine(outRoot, $"{mode}-{rep + 1}");
                if (!json) Console.Error.WriteLine($"run {rep + 1}/{reps}, {mode}{(mode == "async" ? $" (max_staleness {n})" : "")}: {configPath} -> {dir}");
                var hosts = plan is null || !workers ? JobHosts.InProcess : JobHosts.WorkerProcesses();
                JsonObject summary;
                using (var job = new TrainingJob(mode == "async" ? async : sync, RunCommand.Options(dir, resume: false, overwrite: false, plan, hosts)))
                {
                    RunCommand.Prepare(job, configPath, planPath);
                    summary = JsonNode.Parse(job.Run().SummaryJson!)!.AsObject();
                }
                Curves.Write(Path.Combine(dir, "metrics.jsonl"), Path.Combine(dir, "curves.png"), $"{experiment.Name} ({mode}): training curves");
                var stage = summary["stages"]![rl]!.AsObject();
                var row = new JsonObject
                {
                    ["mode"] = mode, ["rep"] = rep + 1,
                    ["final_task_score"] = (double?)summary["final_task_score"],
                    ["seconds"] = (double)summary["seconds"]!,
                    ["rl_stage_seconds"] = (double)stage["seconds"]!,
                    ["rl_iterations_seconds"] = (double)stage["iterations_seconds"]!,
                };
                if (stage["async"] is JsonObject a) row["async"] = a.DeepClone();
                rows.Add(row);
            }

        JsonObject Medians(string mode)
        {
            var own = rows.Select(r => r!.AsObject()).Where(r => (string)r["mode"]! == mode).ToList();
            return new JsonObject
            {
                ["final_task_score"] = own.All(r => r["final_task_score"] is not null) ? Math.Round(Median(own.Select(r => (double)r["final_task_score"]!)), 4) : null,
                ["seconds"] = Math.Round(Median(own.Select(r => (double)r["seconds"]!)), 2),
                ["rl_iterations_seconds"] = Math.Round(Median(own.Select(r => (double)r["rl_iterations_seconds"]!)), 3),
            };
        }
        var (ms, ma) = (Medians("sync"), Medians("async"));
        double? scoreDiff = ms["final_task_score"] is { } ss && ma["final_task_score"] is { } sa ? Math.Round((double)sa - (double)ss, 4) : null;
        var result = new JsonObject
        {
            ["benchmark"] = "async", ["config"] = configPath, ["algorithm"] = experiment.Algorithm, ["max_staleness"] = n, ["weight_update"] = async.WeightUpdate,
            ["plan"] = planPath, ["hosts"] = plan is null ? "single device" : workers ? "worker processes" : "in-process devices",
            ["reps"] = reps, ["sync"] = ms, ["async"] = ma,
            ["score_difference"] = scoreDiff,
            ["seconds_ratio"] = Math.Round((double)ma["seconds"]! / (double)ms["seconds"]!, 3),
            ["rl_iterations_seconds_ratio"] = Math.Round((double)ma["rl_iterations_seconds"]! / (double)ms["rl_iterations_seconds"]!, 3),
            ["cores"] = Environment.ProcessorCount,
            ["load_average"] = LoadAverage(),
            ["rows"] = rows,
        };
        if (json)
        {
            Console.WriteLine(result.ToJsonString(new JsonSerializerOptions { WriteIndented = true }));
            return 0;
        }
        Console.WriteLine($"{experiment.Name}, {result["hosts"]}, async max_staleness {n} weight_update {async.WeightUpdate}, {reps} rep(s) (medians):");
        Console.WriteLine($"{"mode",-6} {"score",7} {"run s",8} {"RL iter s",10}");
        foreach (var (mode, m) in new[] { ("sync", ms), ("async", ma) })
            Console.WriteLine($"{mode,-6} {F((double?)m["final_task_score"]),7} {F((double?)m["seconds"], "F1"),8} {F((double?)m["rl_iterations_seconds"], "F2"),10}");
        Console.WriteLine($"async / sync: run {F((double?)result["seconds_ratio"], "F2")}x, RL iterations {F((double?)result["rl_iterations_seconds_ratio"], "F2")}x; score difference {F(scoreDiff)}");
        return 0;
    }

    /// <summary>The 1-minute load average (the machine may be shared), or null where /proc has none.</summary>
    private static double? LoadAverage()
    {
        try { return double.Parse(File.ReadAllText("/proc/loadavg").Split(' ')[0], CultureInfo.InvariantCulture); }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or FormatException) { return null; }
    }
}
