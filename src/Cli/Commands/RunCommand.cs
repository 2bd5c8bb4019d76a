// `realn run CONFIG --out DIR [--resume]`: the single-device pipeline (sft -> rm -> ppo ...) of an
// experiment config, with a progress bar per stage and one line of figures per iteration;
// writes DIR/metrics.jsonl, DIR/summary.json, DIR/curves.png and DIR/checkpoints/.
using System.CommandLine;
using System.Globalization;
using System.Text.Json.Nodes;
using ReaLNative.Engine.Config;
using ReaLNative.Engine.Runs;
using Spectre.Console;

namespace ReaLNative.Cli.Commands;

public static class RunCommand
{
    public static Command Create()
    {
        var config = new Argument<string>("config") { Description = "Experiment config (YAML), see docs/experiment-config.md" };
        var output = new Option<string>("--out") { Description = "Output directory", Required = true };
        var resume = new Option<bool>("--resume") { Description = "Continue from the last checkpoint in --out" };
        var cmd = new Command("run", "Run an experiment's pipeline on this machine");
        cmd.Arguments.Add(config);
        cmd.Options.Add(output);
        cmd.Options.Add(resume);
        cmd.SetAction(p => Run(p.GetValue(config)!, p.GetValue(output)!, p.GetValue(resume)));
        return cmd;
    }

    private static string F(double v) => v.ToString(Math.Abs(v) >= 100 ? "F0" : "F3", CultureInfo.InvariantCulture);

    private static int Run(string configPath, string outDir, bool resume)
    {
        ExperimentConfig cfg;
        try { cfg = ExperimentConfig.Load(configPath); }
        catch (ConfigException e) { throw new UsageException($"{configPath}: {e.Message}"); }

        AnsiConsole.MarkupLine($"[bold]{Markup.Escape(cfg.Name)}[/]: {string.Join(" -> ", cfg.Stages.Select(s => $"{s.Algorithm} ({s.Iterations})"))}, task {cfg.Task.Name}, seed {cfg.Seed}");
        JsonObject summary = null!;
        AnsiConsole.Progress()
            .AutoClear(false)
            .Columns(new TaskDescriptionColumn(), new ProgressBarColumn(), new PercentageColumn(), new ElapsedTimeColumn(), new RemainingTimeColumn())
            .Start(ctx =>
            {
                var bars = cfg.Stages.Select(s => ctx.AddTask($"{s.Index}: {s.Algorithm}", autoStart: false, maxValue: s.Iterations)).ToList();
                using var pipeline = new Pipeline(cfg, outDir, ev =>
                {
                    var bar = bars[ev.Stage];
                    if (!bar.IsStarted) bar.StartTask();
                    bar.Value = ev.Iteration;
                    var shown = ev.Figures.Where(kv => kv.Key is "loss" or "reward_mean" or "kl" or "task_score" or "accuracy" or "sample_task_score")
                                          .Select(kv => $"{kv.Key} {F(kv.Value)}");
                    ctx.Refresh();
                    AnsiConsole.MarkupLine($"[grey]{ev.Algorithm} {ev.Iteration}/{ev.Iterations}[/] {Markup.Escape(string.Join("  ", shown))}");
                });
                summary = pipeline.Run(resume);
                foreach (var b in bars) b.StopTask();
            });
        Curves.Write(Path.Combine(outDir, "metrics.jsonl"), Path.Combine(outDir, "curves.png"));
        AnsiConsole.MarkupLine($"task score {summary["initial_task_score"]} -> {summary["final_task_score"]}, reward {summary["initial_reward"]} -> {summary["final_reward"]}, {summary["seconds"]} s");
        AnsiConsole.MarkupLine($"wrote {Markup.Escape(Path.Combine(outDir, "summary.json"))}, metrics.jsonl, curves.png");
        return 0;
    }
}

/// <summary>curves.png: reward and task score over iterations for each stage (ScottPlot).</summary>
public static class Curves
{
    public static void Write(string metricsPath, string pngPath)
    {
        var lines = File.ReadLines(metricsPath).Where(l => l.Length > 0).Select(l => JsonNode.Parse(l)!.AsObject()).ToList();
        var plot = new ScottPlot.Plot();
        int offset = 0;
        foreach (var g in lines.GroupBy(l => (int)l["stage"]!).OrderBy(g => g.Key))
        {
            string alg = (string)g.First()["algorithm"]!;
            var ev = g.Where(l => (string)l["call"]! == "eval").ToList();
            if (ev.Count > 0)
            {
                var s = plot.Add.Scatter(ev.Select(l => (double)((int)l["step"]! + offset)).ToArray(), ev.Select(l => (double)l["task_score"]!).ToArray());
                s.LegendText = $"{alg}: task score";
            }
            var rw = g.Where(l => (string)l["call"]! == "rew_inf" && l["reward_mean"] is not null).ToList();
            if (rw.Count > 0)
            {
                var s = plot.Add.Scatter(rw.Select(l => (double)((int)l["step"]! + offset)).ToArray(), rw.Select(l => (double)l["reward_mean"]!).ToArray());
                s.LegendText = $"{alg}: reward (RM score)";
                s.Axes.YAxis = plot.Axes.Right;
            }
            var acc = g.Where(l => (string)l["call"]! == "rew_train" && l["accuracy"] is not null).ToList();
            if (acc.Count > 0)
            {
                var s = plot.Add.Scatter(acc.Select(l => (double)((int)l["step"]! + offset)).ToArray(), acc.Select(l => (double)l["accuracy"]!).ToArray());
                s.LegendText = $"{alg}: pair accuracy";
            }
            offset += g.Max(l => (int)l["step"]!);
        }
        plot.Axes.Bottom.Label.Text = "iteration (stages back to back)";
        plot.Axes.Left.Label.Text = "task score / accuracy";
        plot.Axes.Right.Label.Text = "reward";
        plot.ShowLegend();
        plot.SavePng(pngPath, 1000, 500);
    }
}
