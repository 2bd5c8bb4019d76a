// `realn plan` on examples/scale settings (issue 19, "Done when"): the table output names every baseline with the
// searched plan's speedup over it (or why it does not apply) and the model's limits, `--show BASELINE` draws that
// baseline's Gantt chart, and `--json` carries the same baselines, limits and the search time on the largest
// setting (70B actor + critic on 128 GPUs, goal 30 s).
using System.Text.Json.Nodes;
using System.Text.RegularExpressions;
using ReaLNative.Planner;
using Xunit;
using static ReaLNative.Engine.Tests.Docs.ReadmeCommandTableTests;

namespace ReaLNative.Engine.Tests.Docs;

[Collection("worker processes")]
public sealed class PlanOnScaleSettingsTests : IDisposable
{
    private readonly string _dir = Path.Combine(Path.GetTempPath(), "realn-plan-scale-" + Guid.NewGuid().ToString("N")[..8]);

    public PlanOnScaleSettingsTests() => Directory.CreateDirectory(_dir);
    public void Dispose() { try { Directory.Delete(_dir, true); } catch (IOException) { } }

    private static string Scale(string name) => Path.Combine(Root(), "examples", "scale", name + ".yaml");
    private static string H100 => Path.Combine(Root(), "examples", "clusters", "h100-80gb.yaml");

    [Fact]
    public void TheTableNamesEveryBaselineWithItsSpeedupTheLimitsAndTheShownBaselinesChart()
    {
        string plan = Path.Combine(_dir, "actor-7b.plan.json");
        var (code, output) = Realn("plan", Scale("scale-actor-7b-gen128"), "--cluster", H100, "--nodes", "1", "--show", "deepspeed_chat", "--out", plan);
        Assert.True(code == 0, output);
        var lines = output.Split('\n').Select(l => l.TrimEnd('\r')).ToList();
        foreach (var name in Baselines.Rules.Keys)
            Assert.True(lines.Any(l => Regex.IsMatch(l, $@"^  {name}: \d+(\.\d+)? s -> speedup \d+\.\d\dx")), $"no speedup over {name}:\n{output}");
        int at = lines.IndexOf("the estimate leaves out:");
        Assert.True(at >= 0, output);
        Assert.Equal(Estimator.Limits.Select(l => "  - " + l), lines.Skip(at + 1).Take(Estimator.Limits.Count));
        string png = Path.ChangeExtension(plan, ".png");
        Assert.Contains(lines, l => l == $"plan: {plan}, Gantt chart (deepspeed_chat): {png}");
        Assert.True(new FileInfo(png).Length > 1000, "no Gantt chart of the deepspeed_chat baseline");
        // a name that is neither the plan nor a baseline is refused, naming the choices
        var (bad, badOut) = Realn("plan", Scale("scale-actor-7b-gen128"), "--cluster", H100, "--nodes", "1", "--show", "megatron", "--out", plan);
        Assert.NotEqual(0, bad);
        Assert.Contains("--show: 'megatron' is not one of plan, heuristic", badOut);
    }

    [Theory]
    [InlineData("scale-both-70b-gen896", true)]          // every baseline applies
    [InlineData("scale-both-70b-long-p2k-g14k", false)]  // 8 sequences on 128 GPUs: deepspeed_chat cannot place them
    public void TheJsonOnTheLargestSettingsHasEveryBaselineTheLimitsAndTheSearchTime(string name, bool allApply)
    {
        string plan = Path.Combine(_dir, name + ".plan.json");
        var (code, output) = Realn("plan", Scale(name), "--cluster", H100, "--nodes", "16", "--json", "--out", plan);
        Assert.True(code == 0, output);
        var doc = JsonNode.Parse(output[output.IndexOf('{')..])!;
        var baselines = doc["baselines"]!.AsObject();
        Assert.Equal(Baselines.Rules.Keys.Order(), baselines.Select(b => b.Key).Order());
        foreach (var (b, v) in baselines)
        {
            Assert.Equal(Baselines.Rules[b], (string)v!["rule"]!);
            if (v["speedup"] is JsonValue s)
            {
                Assert.True((double)s > 0 && (double)v["iteration_seconds"]! > 0, $"{b}: {v.ToJsonString()}");
                Assert.Equal((double)v["iteration_seconds"]! / (double)doc["iteration_seconds"]!, (double)s, 3);
            }
            else
            {
                Assert.False(allApply, $"{name}: {b} not applicable: {v.ToJsonString()}");
                Assert.StartsWith("not applicable: ", (string)v["note"]!);
            }
        }
        if (!allApply) Assert.Null(baselines["deepspeed_chat"]!["speedup"]);
        Assert.Equal(Estimator.Limits, doc["limits"]!.AsArray().Select(l => (string)l!));
        Assert.True((double)doc["search_seconds"]! <= 30, $"search {(double)doc["search_seconds"]!} s (goal: 30 s for 70B on 128 GPUs)");
    }
}
