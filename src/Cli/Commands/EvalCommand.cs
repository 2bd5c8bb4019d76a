// `realn eval CONFIG --checkpoint DIR [--stage N] [--json]`: the held-out score of a trained model
// on a stage's held-out set (its dataset's held_out file, or the synthetic task's held-out draw),
// with greedy answers scored as a run's eval lines score them (the stage's rule-based reward, else
// exact match with the answer). DIR is a model folder (config.json + *.safetensors: a stage
// artifact such as checkpoints/sft), a checkpoint (checkpoints/step-N, its actor/ is read) or a run
// directory (its latest checkpoint).
using System.CommandLine;
using System.Diagnostics;
using System.Globalization;
using System.Text.Json;
using System.Text.Json.Nodes;
using ReaLNative.Planner;

namespace ReaLNative.Cli.Commands;

public static class EvalCommand
{
    public static Command Create()
    {
        var config = new Argument<string>("config") { Description = "Experiment config (YAML): the stage's held-out set and reward" };
        var checkpoint = new Option<string>("--checkpoint")
        {
            Description = "Model to evaluate: a model folder (config.json + .safetensors), a checkpoint (checkpoints/step-N: its actor) or a run directory (its latest checkpoint)",
            Required = true,
        };
        var stageOpt = new Option<int?>("--stage") { Description = "0-based stage whose held-out set and reward are used (default: the last)" };
        var json = new Option<bool>("--json") { Description = "Print the result as one JSON object" };
        var cmd = new Command("eval", "Held-out score (accuracy / mean reward) of a trained model's greedy answers on a stage's held-out set");
        cmd.Arguments.Add(config);
        cmd.Options.Add(checkpoint);
        cmd.Options.Add(stageOpt);
        cmd.Options.Add(json);
        cmd.SetAction(p => Run(p.GetValue(config)!, p.GetValue(checkpoint)!, p.GetValue(stageOpt), p.GetValue(json)));
        return cmd;
    }

    /// <summary>The model folder a --checkpoint names, or a usage error saying what was looked for.</summary>
    internal static string ModelFolder(string dir)
    {
        static bool IsModel(string d) => File.Exists(Path.Combine(d, "config.json")) && Directory.EnumerateFiles(d, "*.safetensors").Any();
        if (!Directory.Exists(dir)) throw new UsageException($"--checkpoint {dir}: no such directory");
        if (IsModel(dir)) return dir;
        if (IsModel(Path.Combine(dir, "actor"))) return Path.Combine(dir, "actor");
        if (LatestPointer(dir) is { } latest && IsModel(Path.Combine(dir, "checkpoints", latest, "actor"))) return Path.Combine(dir, "checkpoints", latest, "actor");
        throw new UsageException($"--checkpoint {dir}: not a model folder (config.json + .safetensors), a checkpoint with actor/, or a run directory with checkpoints/latest");
    }

    /// <summary>The checkpoint a run directory's checkpoints/latest pointer names (step-N), or null.</summary>
    private static string? LatestPointer(string runDir)
    {
        string pointer = Path.Combine(runDir, "checkpoints", "latest");
        try
        {
            if (!File.Exists(pointer)) return null;
            string name = File.ReadAllText(pointer).Trim();
            return name.StartsWith("step-", StringComparison.Ordinal) && long.TryParse(name.AsSpan(5), NumberStyles.None, CultureInfo.InvariantCulture, out _) ? name : null;
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException) { return null; }
    }

    private static int Run(string configPath, string checkpoint, int? stageIndex, bool json)
    {
        var experiment = TrainingExperiment.FromYamlText(InputFile.ReadAllText(configPath, "config file"), Path.GetDirectoryName(Path.GetFullPath(configPath)));
        var stages = experiment.Stages;
        int si = stageIndex ?? stages.Count - 1;
        if (si < 0 || si >= stages.Count)
            throw new UsageException($"--stage {si}: the experiment has stages 0..{stages.Count - 1}");
        var stage = stages[si];
        if (!stage.Roles.Contains("actor"))
            throw new UsageException($"--stage {si}: a {stage.Algorithm} stage has no actor to evaluate");
        string folder = ModelFolder(checkpoint);
        var clock = Stopwatch.StartNew();
        var r = Evaluation.HeldOut(experiment, folder, si);
        var result = new JsonObject
        {
            ["checkpoint"] = folder, ["config"] = configPath, ["stage"] = si, ["algorithm"] = stage.Algorithm,
            ["held_out"] = r.HeldOutFile is { } h ? Path.GetRelativePath(experiment.BaseDirectory, h) : $"task {experiment.Task}",
            ["scorer"] = r.Scorer,
            ["examples"] = r.Answers.Count, ["task_score"] = Math.Round(r.Score, 6), ["right"] = r.Right,
            ["ended_with_eos"] = r.Answers.Count(a => a.EndedWithEos), ["records_skipped"] = r.RecordsSkipped,
            ["seconds"] = Math.Round(clock.Elapsed.TotalSeconds, 3),
        };
        if (json)
        {
            Console.WriteLine(result.ToJsonString(new JsonSerializerOptions { WriteIndented = false }));
            return 0;
        }
        var inv = CultureInfo.InvariantCulture;
        Console.WriteLine($"held-out score {r.Score.ToString("0.000", inv)} ({r.Right}/{r.Answers.Count} right, scored by {result["scorer"]}) " +
                          $"of {folder} on {result["held_out"]} (stage {si} {stage.Algorithm}), {clock.Elapsed.TotalSeconds.ToString("0.0", inv)} s");
        foreach (var a in r.Answers.Take(3))
            Console.WriteLine($"  {a.Prompt} -> {a.Completion}{(a.EndedWithEos ? "" : " (no EOS)")}  [{a.Score.ToString("0.##", inv)}]");
        return 0;
    }
}
