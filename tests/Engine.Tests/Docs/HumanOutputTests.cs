// What a person reads, in a file as in a terminal: redirected output is never hard-wrapped at 80
// columns, figures are rounded, an SFT-only run reports no empty reward, `realn run --plan` prints
// the plan it runs and each call's measured time beside the estimate, and summary.json accounts
// for the whole wall time.
using System.Text.Json.Nodes;
using System.Text.RegularExpressions;
using Xunit;
using static ReaLNative.Engine.Tests.Docs.ReadmeCommandTableTests;

namespace ReaLNative.Engine.Tests.Docs;

[Collection("worker processes")]
public sealed class HumanOutputTests : IDisposable
{
    private readonly string _dir = Path.Combine(Path.GetTempPath(), "realn-human-output-with-a-long-enough-folder-name-" + Guid.NewGuid().ToString("N")[..8]);

    public HumanOutputTests() => Directory.CreateDirectory(_dir);
    public void Dispose() { try { Directory.Delete(_dir, true); } catch (IOException) { } }

    /// <summary>examples/ppo-tiny.yaml cut to a few iterations of small batches.</summary>
    private string ShortPpo()
    {
        string yaml = File.ReadAllText(Path.Combine(Root(), "examples", "ppo-tiny.yaml"));
        yaml = Regex.Replace(yaml, @"iterations: \d+", "iterations: 2");
        yaml = yaml.Replace("eval: { size: 128, every: 5 }", "eval: { size: 16, every: 2 }").Replace("batch: { size: 256", "batch: { size: 32");
        string path = Path.Combine(_dir, "ppo-short.yaml");
        File.WriteAllText(path, yaml);
        return path;
    }

    [Fact]
    public void PlanTableAndPathsAreNotWrappedInAFileAndNumbersAreFixedPoint()
    {
        string plan = Path.Combine(_dir, "plans", "two-nodes-of-the-tiny-ppo-experiment.plan.json");  // a folder `realn plan` creates
        var (code, output) = Realn("plan", Path.Combine(Root(), "examples", "ppo-tiny.yaml"), "--cluster", Path.Combine(Root(), "examples", "clusters", "cpu-local.yaml"),
                                   "--nodes", "2", "--time-limit", "1", "--out", plan);
        Assert.True(code == 0, output);
        var lines = output.Split('\n').Select(l => l.TrimEnd('\r')).ToList();
        // The old output wrapped at 80 columns: table rows broke in two and the closing line split the paths.
        var rows = lines.Where(l => l.StartsWith('│') || l.StartsWith('┌') || l.StartsWith('├') || l.StartsWith('└')).ToList();
        Assert.True(rows.Count >= 8, output);
        Assert.Single(rows.Select(r => r.Length).Distinct());
        Assert.Contains(lines, l => l.Contains($"plan: {plan}, Gantt chart: {Path.ChangeExtension(plan, ".png")}"));
        Assert.DoesNotMatch(@"\dE-\d", output);
        Assert.True(File.Exists(Path.ChangeExtension(plan, ".png")));
        var estimate = JsonNode.Parse(File.ReadAllText(plan))!["estimate"]!["call_seconds"]!.AsObject();
        Assert.Equal(6, estimate.Count);  // ppo's six calls, each with its estimated seconds
    }

    [Fact]
    public void SftOnlyRunEndsWithoutAnEmptyRewardAndRoundedFigures()
    {
        string cfg = Path.Combine(_dir, "sft.yaml");
        File.WriteAllText(cfg, """
            name: sft-only
            algorithm: sft
            iterations: 2
            task: { name: sort-digits, min_len: 3, max_len: 4 }
            eval: { size: 8, every: 1 }
            models: { actor: { preset: tiny } }
            batch: { size: 8, prompt_len: 8, gen_len: 6 }
            """);
        var (code, output) = Realn("run", cfg, "--out", Path.Combine(_dir, "sft"));
        Assert.True(code == 0, output);
        Assert.DoesNotContain("reward", output);
        Assert.Matches(@"(?m)^task score \d\.\d{3} -> \d\.\d{3}, [\d.]+ s$", output);
        Assert.DoesNotMatch(@"\d\.\d{4,}", output);  // no unrounded figure anywhere
        Assert.Contains("wrote ", output);
        AssertWallTimeAccountedFor(Path.Combine(_dir, "sft", "summary.json"), sequentialCalls: true);
    }

    [Fact]
    public void RunWithAPlanPrintsThePlanAndMeasuredTimesBesideTheEstimate()
    {
        string cfg = ShortPpo(), plan = Path.Combine(_dir, "ppo.plan.json"), outDir = Path.Combine(_dir, "run");
        var (pc, po) = Realn("plan", cfg, "--cluster", Path.Combine(Root(), "examples", "clusters", "cpu-local.yaml"), "--time-limit", "1", "--out", plan);
        Assert.True(pc == 0, po);
        // a shared host: the three executions estimated, the chosen one's command line printed (issue 19 item 6)
        Assert.Contains("plan with devices as threads of one process (--in-process):", po);
        Assert.Contains("plan in worker processes:", po);
        var runLine = po.Split('\n').Select(l => l.TrimEnd('\r')).Single(l => l.StartsWith("run: realn run ", StringComparison.Ordinal));
        Assert.Contains(runLine.Contains("--plan") ? $"--plan {plan}" : "--out RUN_DIR", runLine);
        var (code, output) = Realn("run", cfg, "--plan", plan, "--in-process", "--out", outDir);
        Assert.True(code == 0, output);
        Assert.Contains($"plan {plan}: 1 node(s) x 2 device(s), 6 calls", output);
        Assert.Contains("devices: 2 threads of this process (--in-process)", output);
        Assert.Matches(@"│ actor_gen +│ actor +│ generate +│ n0:d\d-\d +│", output);
        Assert.Contains("measured s/iter", output);
        Assert.Matches(@"│ critic_train +│ n0:d\d-\d +│ \d/\d/\d +│ \d+\.\d+ +│ \d+\.\d+ +│ \d+\.\dx", output);
        AssertWallTimeAccountedFor(Path.Combine(outDir, "summary.json"));  // calls overlap here: they may sum past a stage's wall time
    }

    /// <summary>summary.json: the stages' wall times plus other_seconds are the run's seconds (the
    /// old summary's stage times covered only the calls: 57.7 of 78 s).</summary>
    private static void AssertWallTimeAccountedFor(string summaryPath, bool sequentialCalls = false)
    {
        var s = JsonNode.Parse(File.ReadAllText(summaryPath))!.AsObject();
        double total = (double)s["seconds"]!;
        double parts = s["stages"]!.AsArray().Sum(st => (double)st!["seconds"]!) + (double)s["other_seconds"]!;
        Assert.InRange(parts, total - 0.05, total + 0.05);
        Assert.InRange((double)s["other_seconds"]!, 0, Math.Max(0.5, total * 0.2));
        foreach (var st in s["stages"]!.AsArray())
        {
            Assert.InRange((double)st!["eval_seconds"]!, 0, (double)st["seconds"]! + 0.01);
            // the iterations' dataflow is inside the stage's wall time, beside its evaluations, and holds every call of a
            // sequential run
            double iterations = (double)st["iterations_seconds"]!;
            Assert.InRange(iterations + (double)st["eval_seconds"]!, 0, (double)st["seconds"]! + 0.01);
            // the first iteration is one of them (a run that was not resumed ran every iteration here)
            Assert.InRange((double)st["first_iteration_seconds"]!, 1e-6, iterations + 1e-4);
            if (sequentialCalls) Assert.InRange((double)st["calls_seconds"]!, 0, iterations + 0.01);
            if (sequentialCalls) Assert.InRange((double)st["calls_seconds"]! + (double)st["eval_seconds"]!, 0, (double)st["seconds"]! + 0.01);
        }
    }
}
