// What `realn run --plan` / `realn launch` print about the plan they execute: before the run, each
// call's mesh, devices and (pp, dp, tp) and who runs the devices (worker processes or threads); after
// it, each call's measured seconds per iteration (from metrics.jsonl) beside the plan's estimate.
using System.Text.Json.Nodes;
using ReaLNative.Planner;
using Spectre.Console;

namespace ReaLNative.Cli;

internal static class PlanReport
{
    /// <summary>The plan as a table, and one line on how its devices run.</summary>
    public static void PrintPlan(Plan plan, string planPath, string devicesLine)
    {
        int dpn = plan.DevicesPerNode;
        AnsiConsole.MarkupLine($"plan {Markup.Escape(planPath)}: {plan.Nodes} node(s) x {dpn} device(s), {plan.Calls.Count} calls" +
            (plan.Estimate is { } e ? $", estimated {HumanOutput.Seconds(e.IterationSeconds)} per iteration" : ""));
        var table = new Table().AddColumns("call", "model", "type", "mesh", "devices", "pp/dp/tp", "micro", "estimate s");
        foreach (var c in plan.Calls)
        {
            int d0 = c.Mesh.FirstDevice(dpn);
            string devices = c.Mesh.NodeCount == 1 ? (c.Mesh.Size == 1 ? $"{d0}" : $"{d0}..{d0 + c.Mesh.Size - 1}")
                : string.Join(",", Enumerable.Range(0, c.Mesh.Size).Select(r => c.Mesh.Device(r, dpn)));
            string est = plan.Estimate?.CallSeconds is { } cs && cs.TryGetValue(c.Name, out double v) ? Commands.PlanCommand.S(v) : "";
            table.AddRow(Markup.Escape(c.Name), Markup.Escape(c.Model), PlanJson.TypeName(c.Type), Markup.Escape(c.Mesh.ToString()), devices,
                         c.Strategy.ToString(), c.MicroBatches.ToString(), est);
        }
        AnsiConsole.Write(table);
        AnsiConsole.MarkupLine(Markup.Escape(devicesLine));
    }

    /// <summary>Mean measured seconds per iteration of each plan call (the stage that ran the
    /// plan's calls, from metrics.jsonl) beside the plan's estimate; nothing if no stage ran them.</summary>
    public static void PrintMeasured(Plan plan, string metricsPath)
    {
        if (!File.Exists(metricsPath)) return;
        var names = plan.Calls.Select(c => c.Name).ToHashSet();
        var lines = File.ReadLines(metricsPath).Where(l => l.Length > 0).Select(l => JsonNode.Parse(l)!.AsObject())
                        .Where(l => names.Contains((string?)l["call"] ?? "") && l["seconds"] is not null).ToList();
        if (lines.Count == 0) return;
        // The plan's stage: the last stage whose lines cover the most plan calls.
        int stage = lines.GroupBy(l => (int)l["stage"]!).OrderByDescending(g => g.Select(l => (string)l["call"]!).Distinct().Count()).ThenByDescending(g => g.Key).First().Key;
        var own = lines.Where(l => (int)l["stage"]! == stage).ToList();
        var table = new Table().AddColumns("call", "mesh", "pp/dp/tp", "measured s/iter", "estimate s", "measured/estimate");
        foreach (var c in plan.Calls)
        {
            var mine = own.Where(l => (string)l["call"]! == c.Name).ToList();
            if (mine.Count == 0) continue;
            int iterations = mine.Select(l => (int)l["step"]!).Distinct().Count();
            double measured = mine.Sum(l => (double)l["seconds"]!) / Math.Max(1, iterations);
            double? est = plan.Estimate?.CallSeconds is { } cs && cs.TryGetValue(c.Name, out double v) ? v : null;
            table.AddRow(Markup.Escape(c.Name), Markup.Escape(c.Mesh.ToString()), c.Strategy.ToString(), HumanOutput.Num(measured),
                         est is null ? "n/a" : Commands.PlanCommand.S(est.Value), est is > 0 ? $"{measured / est.Value:F1}x" : "");
        }
        AnsiConsole.MarkupLine($"per call, stage {stage} ({Markup.Escape((string)own[0]["algorithm"]!)}), mean over its iterations:");
        AnsiConsole.Write(table);
        if (plan.Estimate?.CallSeconds is null)
            AnsiConsole.MarkupLine("(the plan has no per-call estimate: it was written before `realn plan` stored one; re-run `realn plan`)");
    }
}
