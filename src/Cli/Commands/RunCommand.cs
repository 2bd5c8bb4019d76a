// `realn run CONFIG --out DIR [--resume | --overwrite] [--plan PLAN.json [--in-process]]`: the pipeline (sft -> rm -> ppo ...)
// of an experiment config (single device, or the plan's layouts for the stage it lists: one model
// worker process per plan device, this process the master), with a progress bar per stage and one
// line of figures per iteration; writes DIR/metrics.jsonl, DIR/summary.json, DIR/curves.png and DIR/checkpoints/.
// A non-empty DIR needs --resume or --overwrite; SIGTERM / SIGINT stop it at the next safe point.
using System.CommandLine;
using System.Globalization;
using System.Text.Json.Nodes;
using ReaLNative.Engine.Config;
using ReaLNative.Engine.Parallelism;
using ReaLNative.Engine.Runs;
using ReaLNative.Engine.Workers;
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
    private static string Source(ExperimentConfig cfg)
    {
        var files = cfg.Stages.Select(s => s.Dataset is { } d ? "data " + Path.GetRelativePath(cfg.BaseDirectory, d.Train) : "task " + cfg.Task.Name).Distinct();
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

    /// <summary>Refuses, before anything is allocated, an experiment whose models do not fit in this
    /// machine's available memory (the planner's memory model; `realn plan`'s message).</summary>
    internal static void CheckMemory(ExperimentConfig cfg, string configPath, Plan? plan)
    {
        var (available, machine) = HostMemory.Available();
        if (double.IsInfinity(available)) return;  // no /proc/meminfo: nothing to check against
        try { MemoryCheck.Check(cfg, plan, available, machine); }
        catch (ConfigException e) { throw new UsageException($"{configPath}: {e.Message}"); }
    }

    /// <summary>Model worker processes of this executable, one per plan device, on loopback; a signal
    /// a worker reports interrupts the job, a second signal here kills them.</summary>
    internal static Func<int, IReplicaHost> WorkerProcesses(Interruption interruption) => n =>
    {
        var (exe, prefix) = Self();
        var pool = new WorkerPool(n, new WorkerPoolOptions { Executable = exe, ExecutablePrefix = prefix, Cancellation = interruption.Token, OnInterrupt = interruption.Request });
        var before = interruption.Abort;
        interruption.Abort = () => { pool.Abort(); before?.Invoke(); };
        return pool;
    };

    /// <summary>Checks --out before anything runs (bad input: exit 2, nothing changed).</summary>
    internal static void CheckOutput(Pipeline pipeline, bool resume, bool overwrite)
    {
        if (resume && overwrite) throw new UsageException("--resume and --overwrite exclude each other");
        try { pipeline.CheckOutput(resume ? RunStart.Resume : overwrite ? RunStart.Overwrite : RunStart.Fresh); }
        catch (RunDirectoryException e) { throw new UsageException(e.Message); }
    }

    /// <summary>The line an interrupted run ends with, from the cancelled run's result.</summary>
    internal static string InterruptedLine(Interruption interruption, JsonObject result) =>
        $"interrupted by {interruption.Describe()} at {result["position"]}; " +
        (result["last_checkpoint"] is { } ck ? $"last checkpoint {ck}; resume with --resume" : "no checkpoint yet; start over with --overwrite");

    /// <summary>How to start this realn again: the apphost, or `dotnet realn.dll`.</summary>
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
        ExperimentConfig cfg;
        try { cfg = ExperimentConfig.Load(configPath); }
        catch (ConfigException e) { throw new UsageException($"{configPath}: {e.Message}"); }
        var plan = planPath is null ? null : LoadPlan(planPath, configPath);
        CheckMemory(cfg, configPath, plan);

        JsonObject summary = null!;
        Action<ProgressEvent>? show = null;
        Pipeline pipeline;
        // Built before the display so a refused plan is a usage error before anything runs.
        try { pipeline = new Pipeline(cfg, outDir, plan: plan, progress: ev => show?.Invoke(ev),
                                           note: n => AnsiConsole.MarkupLine($"[yellow]{Markup.Escape(n)}[/]"),
                                           hosts: plan is null || inProcess ? null : WorkerProcesses(interruption)); }
        catch (ConfigException e) { throw new UsageException($"{planPath ?? configPath}: {e.Message}"); }
        using (pipeline)
        {
            CheckOutput(pipeline, resume, overwrite);
            AnsiConsole.MarkupLine($"[bold]{Markup.Escape(cfg.Name)}[/]: {string.Join(" -> ", cfg.Stages.Select(s => $"{s.Algorithm} ({s.Iterations})"))}, {Markup.Escape(Source(cfg))}, seed {cfg.Seed}");
            if (plan is not null) PlanReport.PrintPlan(plan, planPath!, DevicesLine(plan, inProcess));
            var before = interruption.Abort;
            interruption.Abort = () => { before?.Invoke(); RunDirectory.RemoveTemporaries(Path.GetFullPath(outDir)); };
            interruption.AbortDetail = () => $" at {pipeline.Position}; last checkpoint {pipeline.LastCheckpoint ?? "none"}; resume with --resume";
            AnsiConsole.Progress()
                .AutoClear(false)
                .Columns(new TaskDescriptionColumn(), new ProgressBarColumn(), new PercentageColumn(), new ElapsedTimeColumn(), new RemainingTimeColumn())
                .Start(ctx =>
                {
                    var bars = cfg.Stages.Select(s => ctx.AddTask($"{s.Index}: {s.Algorithm}", autoStart: false, maxValue: s.Iterations)).ToList();
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
                    summary = pipeline.Run(resume, cancellationToken: interruption.Token, overwrite: overwrite);
                    foreach (var b in bars) b.StopTask();
                });
        }   // workers stopped
        if (summary["cancelled"] is not null)
        {
            Console.Error.WriteLine($"realn: {InterruptedLine(interruption, summary)}");
            return interruption.ExitCode;
        }
        Curves.Write(Path.Combine(outDir, "metrics.jsonl"), Path.Combine(outDir, "curves.png"), $"{cfg.Name}: training curves");
        if (plan is not null) PlanReport.PrintMeasured(plan, Path.Combine(outDir, "metrics.jsonl"));
        AnsiConsole.MarkupLine(Markup.Escape(HumanOutput.SummaryLine(summary)));
        if (MemoryCheck.Line(summary) is { } memory) AnsiConsole.MarkupLine(Markup.Escape(memory));
        AnsiConsole.MarkupLine($"wrote {Markup.Escape(Path.Combine(outDir, "summary.json"))}, metrics.jsonl, curves.png");
        return 0;
    }
}

/// <summary>curves.png: task score, pair accuracy and reward over iterations, the stages back to
/// back with a dashed line and the stage's name at each stage's start (ScottPlot).</summary>
public static class Curves
{
    public static void Write(string metricsPath, string pngPath, string? title = null)
    {
        var lines = File.ReadLines(metricsPath).Where(l => l.Length > 0).Select(l => JsonNode.Parse(l)!.AsObject()).ToList();
        var plot = new ScottPlot.Plot();
        int offset = 0;
        bool rewards = false;
        var starts = new List<(int At, string Name)>();
        foreach (var g in lines.GroupBy(l => (int)l["stage"]!).OrderBy(g => g.Key))
        {
            string alg = (string)g.First()["algorithm"]!;
            starts.Add((offset, $"{g.Key}: {alg}"));
            var ev = g.Where(l => (string)l["call"]! == "eval").ToList();
            if (ev.Count > 0)
            {
                var s = plot.Add.Scatter(ev.Select(l => (double)((int)l["step"]! + offset)).ToArray(), ev.Select(l => (double)l["task_score"]!).ToArray());
                s.LegendText = $"{alg}: task score";
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
        if (rewards) plot.Axes.Right.Label.Text = "reward / KL";
        plot.Axes.SetLimitsX(0, Math.Max(1, offset));
        plot.Axes.SetLimitsY(0, 1.05);
        plot.ShowLegend(ScottPlot.Alignment.LowerRight);
        plot.SavePng(pngPath, 1000, 500);
    }
}
