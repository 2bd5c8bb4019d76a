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
using ReaLNative.Engine.Checkpoints;
using ReaLNative.Engine.Config;
using ReaLNative.Engine.Runs;

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
        var store = new CheckpointStore(Path.Combine(dir, "checkpoints"), 1);
        if (store.Pointer() is { } latest && IsModel(Path.Combine(store.PathOf(latest), "actor"))) return Path.Combine(store.PathOf(latest), "actor");
        throw new UsageException($"--checkpoint {dir}: not a model folder (config.json + .safetensors), a checkpoint with actor/, or a run directory with checkpoints/latest");
    }

    private static int Run(string configPath, string checkpoint, int? stageIndex, bool json)
    {
        var cfg = ExperimentConfig.Load(configPath);
        int si = stageIndex ?? cfg.Stages.Count - 1;
        if (si < 0 || si >= cfg.Stages.Count)
            throw new UsageException($"--stage {si}: the experiment has stages 0..{cfg.Stages.Count - 1}");
        var stage = cfg.Stages[si];
        if (!stage.Models.ContainsKey("actor"))
            throw new UsageException($"--stage {si}: a {stage.Algorithm} stage has no actor to evaluate");
        string folder = ModelFolder(checkpoint);
        var clock = Stopwatch.StartNew();
        using var model = Safetensors.Load(folder, scalarHead: false);
        // The pipeline is only asked to evaluate: it writes nothing (no run directory is created).
        using var pipeline = new Pipeline(cfg, Path.Combine(Path.GetTempPath(), "realn-eval-unused"));
        var r = pipeline.EvaluateHeldOut(model, stage);
        var ds = stage.Dataset;
        var result = new JsonObject
        {
            ["checkpoint"] = folder, ["config"] = configPath, ["stage"] = si, ["algorithm"] = stage.Algorithm,
            ["held_out"] = ds?.HeldOut is { } h ? Path.GetRelativePath(cfg.BaseDirectory, h) : $"task {cfg.Task.Name}",
            ["scorer"] = stage.Reward.RuleBased && stage.Reward.Kind != RewardConfig.Task ? stage.Reward.Kind : "exact_match",
            ["examples"] = r.Examples.Length, ["task_score"] = Math.Round(r.Score, 6), ["right"] = r.Right,
            ["ended_with_eos"] = r.EndedWithEos.Count(x => x), ["records_skipped"] = r.RecordsSkipped,
            ["seconds"] = Math.Round(clock.Elapsed.TotalSeconds, 3),
        };
        if (json)
        {
            Console.WriteLine(result.ToJsonString(new JsonSerializerOptions { WriteIndented = false }));
            return 0;
        }
        var inv = CultureInfo.InvariantCulture;
        Console.WriteLine($"held-out score {r.Score.ToString("0.000", inv)} ({r.Right}/{r.Examples.Length} right, scored by {result["scorer"]}) " +
                          $"of {folder} on {result["held_out"]} (stage {si} {stage.Algorithm}), {clock.Elapsed.TotalSeconds.ToString("0.0", inv)} s");
        for (int i = 0; i < Math.Min(3, r.Examples.Length); i++)
            Console.WriteLine($"  {r.Examples[i].Prompt} -> {r.Completions[i]}{(r.EndedWithEos[i] ? "" : " (no EOS)")}  [{r.Scores[i].ToString("0.##", inv)}]");
        return 0;
    }
}
