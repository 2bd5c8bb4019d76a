// `realn bench algorithms [--json] [--examples DIR] [--out DIR] [--only a,b]`: runs the tuned
// tiny examples of every algorithm (examples/{ppo,grpo,rloo,remax,dpo}-tiny.yaml) one after the
// other and prints, side by side, the held-out task score of the SFT model (the RL stage's start)
// and at the end, the cut in held-out error, the reward and KL of the last iteration, and seconds.
// The reference each algorithm is measured against is its own SFT start, in the same run.
using System.CommandLine;
using System.Diagnostics;
using System.Globalization;
using System.Text.Json;
using System.Text.Json.Nodes;

namespace ReaLNative.Cli.Commands;

public static class BenchAlgorithmsCommand
{
    public static readonly string[] Examples = ["ppo", "grpo", "rloo", "remax", "dpo"];

    public static Command Create()
    {
        var json = new Option<bool>("--json") { Description = "Print JSON" };
        var dir = new Option<string>("--examples") { Description = "Folder holding the ALGO-tiny.yaml examples", DefaultValueFactory = _ => "examples" };
        var output = new Option<string>("--out") { Description = "Run directories go to OUT/ALGO-tiny", DefaultValueFactory = _ => "runs/bench-algorithms" };
        var only = new Option<string?>("--only") { Description = $"Comma-separated subset of {string.Join(",", Examples)}" };
        var cmd = new Command("algorithms", "Every algorithm's tiny example: held-out task score of the SFT start vs the end, reward, KL, seconds");
        foreach (var o in new Option[] { json, dir, output, only }) cmd.Options.Add(o);
        cmd.SetAction(p => Run(p.GetValue(json), p.GetValue(dir)!, p.GetValue(output)!, p.GetValue(only)));
        return cmd;
    }

    private static string F(double? v) => v is { } x ? x.ToString("F3", CultureInfo.InvariantCulture) : "-";

    private static int Run(bool json, string examplesDir, string outRoot, string? only)
    {
        var names = only is null ? Examples : only.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);
        foreach (var n in names)
            if (!Examples.Contains(n)) throw new UsageException($"--only: '{n}' is not one of {string.Join(", ", Examples)}");
        var rows = new JsonArray();
        foreach (var name in names)
        {
            string summaryJson;
            string path = Path.Combine(examplesDir, $"{name}-tiny.yaml");
            var experiment = RunCommand.LoadExperiment(path);
            string outDir = Path.Combine(outRoot, $"{name}-tiny");
            if (!json) Console.Error.WriteLine($"running {path} -> {outDir}");
            var clock = Stopwatch.StartNew();
            using (var job = new TrainingJob(experiment, new TrainingOptions { OutputDirectory = outDir, WritePlanJson = false, ResumeOptionName = "--resume", OverwriteOptionName = "--overwrite" }))
            {
                try { job.Prepare(); }
                catch (ExperimentConfigException e) { throw new UsageException($"{path}: {e.Message}"); }
                summaryJson = job.Run().SummaryJson!;
            }
            var summary = JsonNode.Parse(summaryJson)!.AsObject();
            double wall = clock.Elapsed.TotalSeconds;
            Curves.Write(Path.Combine(outDir, "metrics.jsonl"), Path.Combine(outDir, "curves.png"));
            var last = experiment.Stages[^1];
            var trainLines = File.ReadLines(Path.Combine(outDir, "metrics.jsonl")).Where(l => l.Length > 0)
                .Select(l => JsonNode.Parse(l)!.AsObject())
                .Where(o => (int)o["stage"]! == last.Index && (string)o["call"]! == "actor_train").ToList();
            double? start = (double?)summary["initial_task_score"], end = (double?)summary["final_task_score"];
            double? cut = start is { } s && end is { } e2 && s < 1 ? ((1 - s) - (1 - e2)) / (1 - s) : null;
            double? kl = trainLines.Count > 0 && trainLines[^1]["kl"] is { } k ? (double)k : null;
            double? maxKl = trainLines.Where(o => o["kl"] is not null).Select(o => (double?)(double)o["kl"]!).Max();
            rows.Add((JsonNode)new JsonObject  // Add(JsonNode), not Add<T>: no reflection (NativeAOT)
            {
                ["example"] = $"{name}-tiny", ["algorithm"] = last.Algorithm,
                ["reward"] = last.Reward ?? "pairs (graded checker)",
                ["start_task_score"] = start, ["end_task_score"] = end,
                ["error_cut"] = cut is { } c ? Math.Round(c, 4) : null,
                ["start_reward"] = (double?)summary["initial_reward"], ["end_reward"] = (double?)summary["final_reward"],
                ["end_kl"] = kl, ["max_kl"] = maxKl,
                ["iterations"] = last.Iterations, ["wall_seconds"] = Math.Round(wall, 1),
            });
        }
        if (json)
        {
            Console.WriteLine(new JsonObject { ["benchmark"] = "algorithms", ["rows"] = rows }.ToJsonString(new JsonSerializerOptions { WriteIndented = true }));
            return 0;
        }
        Console.WriteLine($"{"example",-12} {"reward",-8} {"start",6} {"end",6} {"err cut",8} {"reward",15} {"kl end/max",12} {"wall s",7}");
        foreach (var r in rows.Select(x => x!.AsObject()))
        {
            string rw = r["start_reward"] is null ? "-" : $"{F((double?)r["start_reward"])}->{F((double?)r["end_reward"])}";
            string kl = r["end_kl"] is null ? "-" : $"{F((double?)r["end_kl"])}/{F((double?)r["max_kl"])}";
            string cut = r["error_cut"] is { } c ? ((double)c).ToString("P0", CultureInfo.InvariantCulture) : "-";
            string kind = ((string)r["reward"]!).Split(' ')[0];
            Console.WriteLine($"{(string)r["example"]!,-12} {kind,-8} {F((double?)r["start_task_score"]),6} {F((double?)r["end_task_score"]),6} {cut,8} {rw,15} {kl,12} {(double)r["wall_seconds"]!,7:F1}");
        }
        return 0;
    }
}
