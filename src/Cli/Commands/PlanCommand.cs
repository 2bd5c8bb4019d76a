// `realn plan CONFIG --cluster CLUSTER [--nodes N] [--seed S] [--time-limit SEC] [--out PLAN.json]
// [--profile PROFILE.json] [--show plan|BASELINE] [--json]`: searches the execution plan, prints it as a
// table with every baseline's time and the searched plan's speedup over it and the model's limits (or the
// JSON document {"iteration_seconds", "baselines", ["execution", "single_device_seconds", "plan_in_process_seconds",
// "plan_workers_seconds", "chosen", "run",] "search_seconds", "limits", "plan"}). On a shared-host CPU cluster the plan is
// searched twice, for worker processes and for devices as threads of one process (`--in-process`), and the faster is
// the plan (`execution`); chosen: single_device (a run without --plan on every core), plan_in_process or plan_workers,
// whichever is estimated fastest, and `run` is its command line. Writes the plan
// JSON and a Gantt chart PNG of one iteration (of the plan or the baseline named by --show) beside it.
using System.CommandLine;
using System.Text.Json;
using ReaLNative.Planner;
using Spectre.Console;

namespace ReaLNative.Cli.Commands;

public static class PlanCommand
{
    public static Command Create()
    {
        var config = new Argument<string>("CONFIG") { Description = "Experiment YAML" };
        var cluster = new Option<string>("--cluster") { Description = "Cluster spec YAML", Required = true };
        var nodes = new Option<int?>("--nodes") { Description = "Override the spec's node count" };
        var seed = new Option<int>("--seed") { Description = "Search seed", DefaultValueFactory = _ => 1 };
        var limit = new Option<double>("--time-limit") { Description = "Search time cap in seconds", DefaultValueFactory = _ => 60 };
        var outPath = new Option<string?>("--out") { Description = "Plan JSON path (default: CONFIG name + .plan.json in the current directory)" };
        var profile = new Option<string?>("--profile") { Description = "Calibration profile JSON (from realn profile)" };
        var json = new Option<bool>("--json") { Description = "Print the JSON result instead of a table" };
        var show = new Option<string>("--show") { Description = $"Gantt chart of: plan, {string.Join(", ", Baselines.Rules.Keys)}", DefaultValueFactory = _ => "plan" };
        var cmd = new Command("plan", "Search the execution plan (per-call mesh and pp/dp/tp) of an experiment on a cluster");
        cmd.Arguments.Add(config);
        foreach (var o in new Option[] { cluster, nodes, seed, limit, outPath, profile, show, json }) cmd.Options.Add(o);
        cmd.SetAction(p => Run(p.GetValue(config)!, p.GetValue(cluster)!, p.GetValue(nodes), p.GetValue(seed), p.GetValue(limit),
            p.GetValue(outPath), p.GetValue(profile), p.GetValue(show)!, p.GetValue(json)));
        return cmd;
    }

    /// <summary>The command line that runs <paramref name="chosen"/> (the plan written to <paramref name="planPath"/>).</summary>
    internal static string RunLine(ExecutionChoice chosen, string configPath, string planPath) => chosen switch
    {
        ExecutionChoice.SingleDevice => $"realn run {configPath} --out RUN_DIR",
        ExecutionChoice.PlanInProcess => $"realn run {configPath} --plan {planPath} --in-process --out RUN_DIR",
        _ => $"realn run {configPath} --plan {planPath} --out RUN_DIR",
    };

    /// <summary>Seconds in fixed notation (never 5.93E-05): 2 decimals from 1 s, 5 below 0.01 s.</summary>
    internal static string S(double seconds) => seconds.ToString(seconds >= 1 ? "F2" : seconds >= 0.01 ? "F3" : "F5", System.Globalization.CultureInfo.InvariantCulture);

    private static int Run(string configPath, string clusterPath, int? nodes, int seed, double limit, string? outPath, string? profilePath, string show, bool asJson)
    {
        if (!(limit > 0)) throw new UsageException($"--time-limit: {limit} must be positive");
        if (show != "plan" && !Baselines.Rules.ContainsKey(show))
            throw new UsageException($"--show: '{show}' is not one of plan, {string.Join(", ", Baselines.Rules.Keys)}");
        SearchResult r;
        try
        {
            var spec = ClusterSpec.Load(clusterPath);
            if (nodes is { } n) spec = spec.WithNodes(n);
            var exp = Experiment.Load(configPath);
            var prof = profilePath is null ? null : ProfileData.Load(profilePath);
            r = PlanSearch.Run(spec, exp, new SearchOptions { Seed = seed, TimeLimitSeconds = limit }, prof);
        }
        catch (PlannerException e) { throw new UsageException(e.Message); }
        var sync = r.Synchronous;   // an async experiment: the best synchronous plan, for comparison
        double? single = r.SingleDeviceSeconds;

        outPath ??= Path.GetFileNameWithoutExtension(configPath) + ".plan.json";
        string png = Path.ChangeExtension(outPath, ".png");
        var tasks = new List<SimTask>();
        new Evaluator(r.Problem).Simulate(r.Best.Choice, 1, tasks);
        var shown = tasks;
        if (show != "plan")
        {
            var b = r.Baselines[show] ?? throw new UsageException($"--show: baseline {show} has no plan for this experiment and cluster: {Baselines.WhyNot(r.Problem, show, null)}");
            shown = [];
            new Evaluator(b.PricedOn ?? r.Problem).Simulate(b.Choice, 1, shown);
        }
        try
        {
            if (Path.GetDirectoryName(Path.GetFullPath(outPath)) is { } dir) Directory.CreateDirectory(dir);
            File.WriteAllText(outPath, PlanJson.ToJson(r.Best.Plan));
            Gantt.Write(png, shown, r.Problem.Cluster.TotalDevices, r.Problem.Cluster.DevicesPerNode, show == "plan" ? r.Problem.Experiment.Name : $"{r.Problem.Experiment.Name} ({show} baseline)");
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new UsageException($"--out: cannot write '{outPath}' / '{png}': {e.Message}");
        }

        if (asJson)
        {
            using var ms = new MemoryStream();
            using (var w = new Utf8JsonWriter(ms, new JsonWriterOptions { Indented = true, Encoder = System.Text.Encodings.Web.JavaScriptEncoder.UnsafeRelaxedJsonEscaping }))
            {
                w.WriteStartObject();
                w.WriteNumber("iteration_seconds", r.Best.Evaluation.IterationSeconds);
                w.WriteString("mode", sync is null ? "sync" : "async");
                if (sync is not null)
                {
                    w.WriteNumber("max_staleness", r.Problem.Experiment.MaxStaleness!.Value);
                    w.WriteString("weight_update", r.Problem.Experiment.Interrupt ? "interrupt" : "finish_batch");
                    if (r.Problem.Experiment.Interrupt) w.WriteNumber("interrupt_step", r.Problem.Experiment.InterruptStep);
                    w.WriteStartObject("synchronous");
                    w.WriteNumber("iteration_seconds", sync.Best.Evaluation.IterationSeconds);
                    w.WriteNumber("speedup", Math.Round(sync.Best.Evaluation.IterationSeconds / r.Best.Evaluation.IterationSeconds, 4));
                    w.WriteString("rule", "the best plan of the same experiment with the synchronous dataflow (mode: sync)");
                    w.WriteEndObject();
                }
                w.WriteStartObject("baselines");
                foreach (var (name, b) in r.Baselines)
                {
                    w.WriteStartObject(name);
                    if (b is null) { w.WriteNull("iteration_seconds"); w.WriteNull("speedup"); w.WriteString("note", "not applicable: " + Baselines.WhyNot(r.Problem, name, b)); }
                    else
                    {
                        w.WriteNumber("iteration_seconds", b.Evaluation.IterationSeconds);
                        w.WriteNumber("speedup", Math.Round(b.Evaluation.IterationSeconds / r.Best.Evaluation.IterationSeconds, 4));
                        if (Baselines.Note(r.Problem, name, b) is { } note) w.WriteString("note", note);
                    }
                    w.WriteString("rule", Baselines.Rules[name]);
                    w.WriteEndObject();
                }
                w.WriteEndObject();
                if (r.Problem.Cluster.SharedHost)
                {
                    // the three ways to run the experiment on a shared host, each estimated; `plan` is the faster plan
                    // execution's plan (`execution`), and `run` the command line of the chosen one
                    w.WriteString("execution", r.Execution == PlanExecution.InProcess ? "in_process" : "workers");
                    if (single is { } sd) w.WriteNumber("single_device_seconds", sd);
                    if (r.InProcessSearch is { } ip) w.WriteNumber("plan_in_process_seconds", ip.Best.Evaluation.IterationSeconds);
                    w.WriteNumber("plan_workers_seconds", r.Workers.Best.Evaluation.IterationSeconds);
                    w.WriteString("chosen", PlanSearch.Key(r.Chosen));
                    w.WriteString("run", RunLine(r.Chosen, configPath, outPath));
                }
                w.WriteNumber("search_seconds", r.SearchSeconds);
                w.WriteStartArray("limits");
                foreach (var l in Estimator.Limits) w.WriteStringValue(l);
                w.WriteEndArray();
                w.WritePropertyName("plan");
                PlanJson.Write(w, r.Best.Plan);
                w.WriteEndObject();
            }
            Console.WriteLine(System.Text.Encoding.UTF8.GetString(ms.ToArray()));
            return 0;
        }

        var table = new Table().AddColumns("call", "model", "mesh", "pp/dp/tp", "micro", "start s", "end s", "memory/device");
        var first = tasks.Where(t => !t.IsRealloc).ToDictionary(t => t.Name);
        int dpn = r.Problem.Cluster.DevicesPerNode;
        foreach (var (c, i) in r.Best.Plan.Calls.Select((c, i) => (c, i)))
        {
            var t = first[c.Name];
            int d0 = c.Mesh.FirstDevice(dpn);
            double mem = r.Best.PeakMemory.Skip(d0).Take(c.Mesh.Size).Max();
            table.AddRow(Markup.Escape(c.Name), Markup.Escape(c.Model), c.Mesh.ToString(), c.Strategy.ToString(), c.MicroBatches.ToString(),
                S(t.Start), S(t.End), mem >= 1024.0 * 1024 * 1024 ? $"{mem / (1024.0 * 1024 * 1024):F1} GiB" : $"{mem / (1024.0 * 1024):F1} MiB");
        }
        foreach (var t in tasks.Where(t => t.IsRealloc))
            table.AddRow(Markup.Escape(t.Name), "", "", "", "", S(t.Start), S(t.End), "");
        AnsiConsole.Write(table);
        AnsiConsole.MarkupLine($"estimated iteration: [bold]{S(r.Best.Evaluation.IterationSeconds)} s[/] ({Markup.Escape(r.Method)}, {r.Evaluations} plans evaluated, {r.SearchSeconds:F2} s{(r.TimedOut ? ", time limit hit" : "")})");
        if (sync is not null)
            AnsiConsole.MarkupLine($"asynchronous dataflow, max_staleness {r.Problem.Experiment.MaxStaleness}, weight_update " +
                (r.Problem.Experiment.Interrupt ? $"interrupt (new weights before decode step {r.Problem.Experiment.InterruptStep})" : "finish_batch") + ": the best synchronous plan takes " +
                $"{S(sync.Best.Evaluation.IterationSeconds)} s -> speedup {sync.Best.Evaluation.IterationSeconds / r.Best.Evaluation.IterationSeconds:F2}x (steady state)");
        AnsiConsole.MarkupLine("baselines (speedup of the plan over each; rules in docs/cost-model.md):");
        foreach (var (name, b) in r.Baselines)
            AnsiConsole.MarkupLine(b is null ? $"  {name}: not applicable: {Markup.Escape(Baselines.WhyNot(r.Problem, name, b)!)}"
                : $"  {name}: {S(b.Evaluation.IterationSeconds)} s -> speedup {b.Evaluation.IterationSeconds / r.Best.Evaluation.IterationSeconds:F2}x"
                  + (Baselines.Note(r.Problem, name, b) is { } note ? $" ({Markup.Escape(note)})" : ""));
        if (r.Problem.Cluster.SharedHost)
        {
            // a shared host runs the experiment three ways; each estimated, the fastest chosen
            string Mark(ExecutionChoice c) => r.Chosen == c ? " [yellow](chosen)[/]" : "";
            AnsiConsole.MarkupLine($"this plan is {(r.Execution == PlanExecution.InProcess ? "for its devices as threads of one process (--in-process)" : "for one worker process per device")}; ways to run the experiment on this shared host, estimated per iteration:");
            if (single is { } one)
                AnsiConsole.MarkupLine($"  single device (no plan, all {r.Problem.Cluster.DevicesPerNode} cores in one process): {S(one)} s{Mark(ExecutionChoice.SingleDevice)}");
            if (r.InProcessSearch is { } ip)
                AnsiConsole.MarkupLine($"  plan with devices as threads of one process (--in-process): {S(ip.Best.Evaluation.IterationSeconds)} s{Mark(ExecutionChoice.PlanInProcess)}");
            AnsiConsole.MarkupLine($"  plan in worker processes: {S(r.Workers.Best.Evaluation.IterationSeconds)} s{Mark(ExecutionChoice.PlanWorkers)}");
            AnsiConsole.MarkupLine($"[yellow]run: {Markup.Escape(RunLine(r.Chosen, configPath, outPath))}[/]");
        }
        AnsiConsole.MarkupLine("the estimate leaves out:");
        foreach (var l in Estimator.Limits) AnsiConsole.MarkupLine($"  - {Markup.Escape(l)}");
        AnsiConsole.MarkupLine($"plan: {Markup.Escape(outPath)}, Gantt chart{(show == "plan" ? "" : $" ({show})")}: {Markup.Escape(png)}");
        return 0;
    }
}

/// <summary>Gantt chart of one simulated iteration: one row per device (integer ticks), nodes
/// separated and labelled, one coloured box per call named in the legend (and inside the box where
/// it fits), reallocations as hatched bars at least a few pixels wide, listed in the legend.</summary>
internal static class Gantt
{
    private const int Width = 1400, PlotAreaPixels = 1000;  // the data area is what is left of Width after axes and legend
    private const double MinBarPixels = 4, CharPixels = 6.5;

    public static void Write(string path, List<SimTask> tasks, int devices, int devicesPerNode, string title)
    {
        var plt = new ScottPlot.Plot();
        var pal = new ScottPlot.Palettes.Category10();
        var names = tasks.Select(t => t.Name).Distinct().ToList();
        double end = Math.Max(1e-9, tasks.Count == 0 ? 1 : tasks.Max(t => t.End));
        double minWidth = end * MinBarPixels / PlotAreaPixels;
        var legend = new List<ScottPlot.LegendItem>();
        foreach (var name in names)
        {
            var color = pal.GetColor(names.IndexOf(name));
            var mine = tasks.Where(t => t.Name == name).ToList();
            bool realloc = mine[0].IsRealloc;
            foreach (var t in mine)
            {
                double x1 = Math.Max(t.End, t.Start + minWidth);
                void Box(int d0, int n)
                {
                    if (n <= 0) return;
                    var rect = plt.Add.Rectangle(t.Start, x1, d0, d0 + n);
                    rect.FillStyle.Color = color.WithAlpha(realloc ? 0.45 : 0.8);
                    if (realloc) { rect.FillStyle.Hatch = new ScottPlot.Hatches.Striped(); rect.FillStyle.HatchColor = ScottPlot.Colors.Black.WithAlpha(0.5); }
                    rect.LineStyle.Color = ScottPlot.Colors.Black;
                    rect.LineStyle.Width = 1;
                }
                Box(t.FirstDevice, t.DeviceCount);
                if (realloc) { Box(t.FirstDevice2, t.DeviceCount2); continue; }
                // Inside the box, in the middle of its first device row, only where the name fits.
                if ((t.End - t.Start) / end * PlotAreaPixels >= name.Length * CharPixels + 6)
                {
                    var txt = plt.Add.Text(name, t.Start + end * 3 / PlotAreaPixels, t.FirstDevice + 0.5);
                    txt.LabelFontSize = 10;
                    txt.LabelAlignment = ScottPlot.Alignment.MiddleLeft;
                }
            }
            double seconds = mine.Sum(t => t.End - t.Start);
            legend.Add(new ScottPlot.LegendItem
            {
                LabelText = realloc ? $"{name} ({S(seconds)})" : name,
                FillColor = color.WithAlpha(realloc ? 0.45 : 0.8),
            });
        }
        // Device rows: a tick per device (centred on its row); thick lines and labels between nodes.
        var ticks = new ScottPlot.TickGenerators.NumericManual();
        for (int d = 0; d < devices; d++) ticks.AddMajor(d + 0.5, d.ToString());
        plt.Axes.Left.TickGenerator = ticks;
        int nodes = devicesPerNode > 0 ? devices / devicesPerNode : 1;
        if (nodes > 1)
            for (int n = 0; n < nodes; n++)
            {
                if (n > 0)
                {
                    var line = plt.Add.HorizontalLine(n * devicesPerNode);
                    line.LineWidth = 3;
                    line.Color = ScottPlot.Colors.Black;
                }
                var label = plt.Add.Text($"node {n}", end, n * devicesPerNode + 0.05);
                label.LabelFontSize = 11;
                label.LabelBold = true;
                label.LabelAlignment = ScottPlot.Alignment.UpperRight;
            }
        plt.Legend.ManualItems.AddRange(legend);
        plt.ShowLegend(ScottPlot.Edge.Right);
        plt.Title($"{title}: one iteration{(nodes > 1 ? $", {nodes} nodes x {devicesPerNode} devices" : $", {devices} devices")}");
        plt.XLabel("seconds");
        plt.YLabel("device");
        plt.Axes.SetLimitsX(0, end * 1.02);
        plt.Axes.SetLimitsY(devices, 0);
        plt.SavePng(path, Width, Math.Max(400, Math.Min(2000, 120 + devices * 28)));
    }

    private static string S(double seconds) => PlanCommand.S(seconds) + " s";
}
