// `realn run CONFIG --out DIR [--resume | --overwrite] [--plan PLAN.json [--in-process]]`: the pipeline (sft -> rm -> ppo ...)
// of an experiment config (single device, or the plan's layouts for the stage it lists: one model
// worker process per plan device, this process the master), with a progress bar per stage and one
// line of figures per iteration; writes DIR/metrics.jsonl, DIR/summary.json, DIR/curves.png and DIR/checkpoints/.
// A non-empty DIR needs --resume or --overwrite; SIGTERM / SIGINT stop it at the next safe point.
using System.CommandLine;
using System.Globalization;
using System.Text.Json.Nodes;
using ReaLNative.Planner;
using Spectre.Console;

namespace ReaLNative.Cli.Commands;

public static class RunCommand
{
    public static Command Create()
    {
        var config = new Argument<string>("config") { Description = "Experiment config (YAML), see docs/experiment-config.md" };
        var output = new Option<string>("--out")
        {
            Description = "Run directory: new or empty, unless --resume or --overwrite (receives metrics.jsonl, summary.json, curves.png, checkpoints/)",
            Required = true,
        };
        var resume = new Option<bool>("--resume") { Description = "Continue from the last checkpoint in --out that verifies" };
        var overwrite = new Option<bool>("--overwrite") { Description = "Start over in a --out that holds an earlier run: deletes only what a run wrote there" };
        var planOpt = new Option<string?>("--plan")
        {
            Description = "Execution plan (JSON from `realn plan`): each call of the stage it matches runs on its own mesh and (pp, dp, tp) layout, one model worker process per device",
        };
        var inProcess = new Option<bool>("--in-process") { Description = "Run the plan's devices as threads of this process instead of worker processes" };
        var cmd = new Command("run", "Run an experiment's pipeline on this machine. SIGTERM / SIGINT (Ctrl-C) stop it at the next safe point " +
                                     "(between iterations or calls), workers included, exit 143 / 130; a second signal stops at once; continue with --resume");
        cmd.Arguments.Add(config);
        cmd.Options.Add(output);
        cmd.Options.Add(resume);
        cmd.Options.Add(overwrite);
        cmd.Options.Add(planOpt);
        cmd.Options.Add(inProcess);
        cmd.SetAction(p => Run(p.GetValue(config)!, p.GetValue(output)!, p.GetValue(resume), p.GetValue(overwrite), p.GetValue(planOpt), p.GetValue(inProcess)));
        return cmd;
    }

    private static string F(double v) => HumanOutput.Num(v);

    /// <summary>Where the stages' examples come from: the synthetic task, or each dataset file once.</summary>
    private static string Source(TrainingExperiment experiment)
    {
        var files = experiment.Stages.Select(s => s.TrainingData is { } d ? "data " + Path.GetRelativePath(experiment.BaseDirectory, d) : "task " + experiment.Task).Distinct();
        return string.Join(", ", files);
    }

    /// <summary>Who runs the plan's devices, and what that costs on this machine.</summary>
    private static string DevicesLine(Plan plan, bool inProcess)
    {
        int devices = plan.Nodes * plan.DevicesPerNode, cores = Environment.ProcessorCount;
        string who = inProcess
            ? $"devices: {devices} threads of this process (--in-process)"
            : $"devices: {devices} model worker processes (`realn worker --role model`, {Math.Max(1, cores / devices)} OpenMP thread(s) each), this process the master (UCX rank {devices})";
        return devices >= cores
            ? who + $"; {cores} cores here: the devices share them, so expect this run to be slower than a single-device one (README, \"Execution plans\")"
            : who;
    }

    /// <summary>Most devices a plan run on one machine may ask for (each a worker process or a thread with its own shards).</summary>
    private const int MaxLocalDevices = 64;

    /// <summary>Reads and validates an experiment config; errors name the file and the field (exit 2).</summary>
    internal static TrainingExperiment LoadExperiment(string configPath)
    {
        try { return TrainingExperiment.FromYamlText(InputFile.ReadAllText(configPath, "config file"), Path.GetDirectoryName(Path.GetFullPath(configPath))); }
        catch (InputException e) { throw new UsageException($"{configPath}: {e.Message}"); }
    }

    /// <summary>Loads and validates a plan against the experiment (structure: calls, models, meshes,
    /// degrees); errors name the call and the reason.</summary>
    internal static Plan LoadPlan(string planPath, string configPath, int maxDevices = MaxLocalDevices)
    {
        try
        {
            var plan = PlanJson.Load(planPath);
            var exp = Experiment.Load(configPath);
            var cluster = new ClusterSpec
            {
                Name = $"{plan.Nodes}x{plan.DevicesPerNode} (from the plan)", Nodes = plan.Nodes, DevicesPerNode = plan.DevicesPerNode,
                DeviceMemoryBytes = 1, Precision = Precision.Fp32, PeakFlops = 1, ComputeEfficiency = 1, MemoryBandwidth = 1,
                IntraNodeBandwidth = 1, IntraNodeLatency = 0, InterNodeBandwidth = 1, InterNodeLatency = 0, HostBandwidth = 1,
            };
            PlanValidator.Validate(plan, cluster, exp);
            if (plan.Nodes * plan.DevicesPerNode > maxDevices)
                throw new UsageException($"{planPath}: {plan.Nodes * plan.DevicesPerNode} devices; `realn run` runs at most {MaxLocalDevices} devices on one machine; use `realn launch` on each node");
            return plan;
        }
        catch (PlannerException e) { throw new UsageException($"{planPath}: {e.Message}"); }
    }

    /// <summary>Checks everything before anything runs (TrainingJob.Prepare): memory, the plan's layouts, --out.
    /// Bad input is exit 2, nothing changed.</summary>
    internal static void Prepare(TrainingJob job, string configPath, string? planPath)
    {
        try { job.Prepare(); }
        catch (ExperimentConfigException e) { throw new UsageException($"{configPath}: {e.Message}"); }
        catch (PlannerException e) { throw new UsageException($"{planPath ?? configPath}: {e.Message}"); }
        catch (RunDirectoryException e) { throw new UsageException(e.Message); }
    }

    /// <summary>The job options every CLI run shares: flag names in messages, resume's notes in yellow, no plan.json.</summary>
    internal static TrainingOptions Options(string outDir, bool resume, bool overwrite, Plan? plan, JobHosts hosts) => new()
    {
        OutputDirectory = outDir, Resume = resume, Overwrite = overwrite,
        Plan = plan is null ? PlanChoice.SingleDevice : PlanChoice.FromPlan(plan), Hosts = hosts,
        ResumeOptionName = "--resume", OverwriteOptionName = "--overwrite", WritePlanJson = false,
        OnNote = n => AnsiConsole.MarkupLine($"[yellow]{Markup.Escape(n)}[/]"),
    };

    /// <summary>A second signal: stop the job at once; the line says where it was.</summary>
    internal static void AbortOnSecondSignal(Interruption interruption, TrainingJob job)
    {
        interruption.Abort = job.Abort;
        interruption.AbortDetail = () => $" at {job.Position}; last checkpoint {LastCheckpointName(job.Options.OutputDirectory) ?? "none"}; resume with --resume";
    }

    private static string? LastCheckpointName(string outDir) =>
        Checkpoint.Latest(outDir) is { } c ? Path.GetFileName(c.Directory) : null;

    /// <summary>The line an interrupted run ends with, from the cancelled run's result.</summary>
    internal static string InterruptedLine(Interruption interruption, TrainingResult result) =>
        $"interrupted by {interruption.Describe()} at {result.StoppedAt}; " +
        (result.LastCheckpoint is { } ck ? $"last checkpoint {Path.GetFileName(ck.Directory)}; resume with --resume" : "no checkpoint yet; start over with --overwrite");

    /// <summary>How to start this realn again: the apphost, or `dotnet realn.dll`.</summary>
    // Assembly.Location is empty in a single-file or NativeAOT realn (IL3000), but that one is its own process path.
    [System.Diagnostics.CodeAnalysis.UnconditionalSuppressMessage("SingleFile", "IL3000", Justification = "only under `dotnet realn.dll`; a single-file or NativeAOT realn is its own process path")]
    internal static (string Exe, string[] Prefix) Self()
    {
        string exe = Environment.ProcessPath ?? throw new InvalidOperationException("cannot locate the realn executable");
        return Path.GetFileNameWithoutExtension(exe) == "dotnet"
            ? (exe, [typeof(RunCommand).Assembly.Location])
            : (exe, []);
    }

    private static int Run(string configPath, string outDir, bool resume, bool overwrite, string? planPath, bool inProcess)
    {
        using var interruption = new Interruption();
        var experiment = LoadExperiment(configPath);
        var plan = planPath is null ? null : LoadPlan(planPath, configPath);
        if (resume && overwrite) throw new UsageException("--resume and --overwrite exclude each other");
        var hosts = plan is null || inProcess ? JobHosts.InProcess : JobHosts.WorkerProcesses(new WorkerProcessOptions { OnWorkerSignal = interruption.Request });
        using var job = new TrainingJob(experiment, Options(outDir, resume, overwrite, plan, hosts));
        // Checked before the display, so a refused plan or --out is a usage error before anything runs.
        Prepare(job, configPath, planPath);

        TrainingResult result = null!;
        Action<TrainingProgress>? show = null;
        AnsiConsole.MarkupLine($"[bold]{Markup.Escape(experiment.Name)}[/]: {string.Join(" -> ", experiment.Stages.Select(s => $"{s.Algorithm} ({s.Iterations})"))}, {Markup.Escape(Source(experiment))}, seed {experiment.Seed}");
        if (plan is not null) PlanReport.PrintPlan(plan, planPath!, DevicesLine(plan, inProcess));
        AbortOnSecondSignal(interruption, job);
        AnsiConsole.Progress()
            .AutoClear(false)
            .Columns(new TaskDescriptionColumn(), new ProgressBarColumn(), new PercentageColumn(), new ElapsedTimeColumn(), new RemainingTimeColumn())
            .Start(ctx =>
            {
                var bars = experiment.Stages.Select(s => ctx.AddTask($"{s.Index}: {s.Algorithm}", autoStart: false, maxValue: s.Iterations)).ToList();
                show = ev =>
                {
                    var bar = bars[ev.Stage];
                    if (!bar.IsStarted) bar.StartTask();
                    bar.Value = ev.Iteration;
                    if (ev.Iteration >= ev.Iterations) bar.StopTask();  // its clock stops with the stage
                    var shown = ev.Figures.Where(kv => kv.Key is "loss" or "reward_mean" or "kl" or "task_score" or "accuracy" or "sample_task_score")
                                          .Select(kv => $"{kv.Key} {F(kv.Value)}");
                    ctx.Refresh();
                    AnsiConsole.MarkupLine($"[grey]{ev.Algorithm} {ev.Iteration}/{ev.Iterations}[/] {Markup.Escape(string.Join("  ", shown))}");
                };
                result = job.Run(new Reporter(ev => show?.Invoke(ev)), interruption.Token);   // workers stopped when it returns
                foreach (var b in bars) b.StopTask();
            });
        if (result.Status == TrainingStatus.Cancelled)
        {
            if (Interruption.ClaimLastLine()) Console.Error.WriteLine($"realn: {InterruptedLine(interruption, result)}");
            return interruption.ExitCode;
        }
        var summary = JsonNode.Parse(result.SummaryJson!)!.AsObject();
        Curves.Write(Path.Combine(outDir, "metrics.jsonl"), Path.Combine(outDir, "curves.png"), $"{experiment.Name}: training curves");
        if (plan is not null) PlanReport.PrintMeasured(plan, Path.Combine(outDir, "metrics.jsonl"));
        AnsiConsole.MarkupLine(Markup.Escape(HumanOutput.SummaryLine(summary)));
        if (HumanOutput.MemoryLine(summary) is { } memory) AnsiConsole.MarkupLine(Markup.Escape(memory));
        AnsiConsole.MarkupLine($"wrote {Markup.Escape(Path.Combine(outDir, "summary.json"))}, metrics.jsonl, curves.png");
        return 0;
    }

    /// <summary>Progress reported on the run's thread (the command's own), straight to the display.</summary>
    internal sealed class Reporter(Action<TrainingProgress> report) : IProgress<TrainingProgress>
    {
        public void Report(TrainingProgress value) => report(value);
    }
}

/// <summary>curves.png: task score (each stage's last in its legend), pair accuracy and reward over iterations, the stages back to
/// back with a dashed line and the stage's name at each stage's start (ScottPlot).</summary>
public static class Curves
{
    public static void Write(string metricsPath, string pngPath, string? title = null)
    {
        var lines = File.ReadLines(metricsPath).Where(l => l.Length > 0).Select(l => JsonNode.Parse(l)!.AsObject()).ToList();
        var plot = new ScottPlot.Plot();
        int offset = 0;
        bool rewards = false, staleness = false;
        var starts = new List<(int At, string Name)>();
        foreach (var g in lines.GroupBy(l => (int)l["stage"]!).OrderBy(g => g.Key))
        {
            string alg = (string)g.First()["algorithm"]!;
            starts.Add((offset, $"{g.Key}: {alg}"));
            var ev = g.Where(l => (string)l["call"]! == "eval").ToList();
            if (ev.Count > 0)
            {
                var s = plot.Add.Scatter(ev.Select(l => (double)((int)l["step"]! + offset)).ToArray(), ev.Select(l => (double)l["task_score"]!).ToArray());
                s.LegendText = $"{alg}: task score ({((double)ev[^1]["task_score"]!).ToString("0.000", CultureInfo.InvariantCulture)} at its end)";
            }
            // reward and KL of the samples: the train call's figures (any reward kind: RM score or task checker)
            var tr = g.Where(l => (string)l["call"]! == "actor_train").ToList();
            var rw = tr.Where(l => l["reward_mean"] is not null).ToList();
            if (rw.Count > 0)
            {
                var s = plot.Add.Scatter(rw.Select(l => (double)((int)l["step"]! + offset)).ToArray(), rw.Select(l => (double)l["reward_mean"]!).ToArray());
                s.LegendText = $"{alg}: reward (right axis)";
                s.Axes.YAxis = plot.Axes.Right;
                rewards = true;
            }
            var kl = tr.Where(l => l["kl"] is not null).ToList();
            if (kl.Count > 0)
            {
                var s = plot.Add.Scatter(kl.Select(l => (double)((int)l["step"]! + offset)).ToArray(), kl.Select(l => (double)l["kl"]!).ToArray());
                s.LegendText = $"{alg}: KL to ref (nats/seq, right axis)";
                s.Axes.YAxis = plot.Axes.Right;
                rewards = true;
            }
            // async stages: how busy the generation and training sides were
            var asy = g.Where(l => (string)l["call"]! == "async").ToList();
            foreach (var (key, name) in new[] { ("gen_utilisation", "generation utilisation"), ("train_utilisation", "training utilisation") })
                if (asy.Count > 0)
                {
                    var s = plot.Add.Scatter(asy.Select(l => (double)((int)l["step"]! + offset)).ToArray(), asy.Select(l => (double)l[key]!).ToArray());
                    s.LegendText = $"{alg}: {name} (async)";
                }
            // async stages: how many versions behind the trainer the batch's generated tokens were sampled (mean over
            // the tokens, from the line's tokens_staleness_S counts), and the samples dropped for staleness (as a
            // fraction of the batch; the line says "none dropped" while no iteration dropped any)
            if (asy.Count > 0)
            {
                static double MeanStaleness(JsonObject l)
                {
                    double tokens = 0, sum = 0;
                    foreach (var (k, v) in l)
                        if (k.StartsWith("tokens_staleness_", StringComparison.Ordinal)
                            && int.TryParse(k.AsSpan("tokens_staleness_".Length), NumberStyles.None, CultureInfo.InvariantCulture, out int s))
                        { tokens += (double)v!; sum += s * (double)v!; }
                    return tokens > 0 ? sum / tokens : (double?)l["staleness"] ?? 0;
                }
                bool anyDropped = asy.Any(l => (double?)l["dropped_stale"] > 0);
                var st = plot.Add.Scatter(asy.Select(l => (double)((int)l["step"]! + offset)).ToArray(), asy.Select(MeanStaleness).ToArray());
                st.LegendText = $"{alg}: token staleness, mean versions (async, right axis{(anyDropped ? "" : "; no sample dropped")})";
                st.Axes.YAxis = plot.Axes.Right;
                rewards = staleness = true;
                if (anyDropped)
                {
                    var dr = plot.Add.Scatter(asy.Select(l => (double)((int)l["step"]! + offset)).ToArray(),
                                              asy.Select(l => ((double?)l["dropped_stale"] ?? 0) / Math.Max(1.0, (double?)l["samples"] ?? 1)).ToArray());
                    dr.LegendText = $"{alg}: samples dropped for staleness (fraction, async)";
                }
            }
            var acc = g.Where(l => (string)l["call"]! == "rew_train" && l["accuracy"] is not null).ToList();
            if (acc.Count > 0)
            {
                var s = plot.Add.Scatter(acc.Select(l => (double)((int)l["step"]! + offset)).ToArray(), acc.Select(l => (double)l["accuracy"]!).ToArray());
                s.LegendText = $"{alg}: pair accuracy";
            }
            offset += g.Max(l => (int)l["step"]!);
        }
        foreach (var (at, name) in starts)
        {
            var line = plot.Add.VerticalLine(at);
            line.LinePattern = ScottPlot.LinePattern.Dashed;
            line.Color = ScottPlot.Colors.Gray;
            line.LineWidth = 1;
            line.ExcludeFromLegend = true;
            var label = plot.Add.Text(name, at, 1.0);
            label.LabelFontSize = 11;
            label.LabelAlignment = ScottPlot.Alignment.UpperLeft;
        }
        plot.Title(title ?? $"{Path.GetFileName(Path.GetDirectoryName(Path.GetFullPath(metricsPath)))}: training curves");
        plot.Axes.Bottom.Label.Text = "iteration (stages back to back)";
        plot.Axes.Left.Label.Text = "task score / pair accuracy";
        if (rewards) plot.Axes.Right.Label.Text = staleness ? "reward / KL / staleness (versions)" : "reward / KL";
        plot.Axes.SetLimitsX(0, Math.Max(1, offset));
        plot.Axes.SetLimitsY(0, 1.05);
        plot.ShowLegend(ScottPlot.Alignment.LowerRight);
        plot.SavePng(pngPath, 1000, 500);
    }
}
