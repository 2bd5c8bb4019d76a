// Experiments built in code: the builder's YAML goes through the strict reader, so a built
// experiment equals the YAML one it describes, runs (here under a 2-device plan built in code
// too), and a bad setting is refused naming the field.
using ReaLNative.Planner;
using Xunit;

namespace ReaLNative.Engine.Tests.Hosting;

public class ExperimentBuilderTests
{
    private static ExperimentBuilder Tiny() => new ExperimentBuilder("built", "ppo")
        .Seed(3).Task("sort-digits", 3, 4).Models("tiny").Batch(8, 8, 6, 2).Evaluation(8, 2).CheckpointEvery(2)
        .Stage("sft", 4, lr: 3e-3).Stage("rm", 2).Stage("ppo", 2, lr: 5e-4);

    [Fact]
    public void BuildsTheStagesItDescribes()
    {
        var e = Tiny().Build();
        Assert.Equal("built", e.Name);
        Assert.Equal(3, e.Seed);
        Assert.Equal(["sft", "rm", "ppo"], e.Stages.Select(s => s.Algorithm));
        Assert.Equal([4, 2, 2], e.Stages.Select(s => s.Iterations));
        Assert.Equal(8, e.TotalIterations);
    }

    [Fact]
    public void BadSettingIsRefusedNamingTheField()
    {
        var ex = Assert.Throws<ExperimentConfigException>(() => Tiny().Task("sort-digits", 5, 2).Build());
        Assert.Contains("task", ex.FieldPath);
        Assert.Throws<ExperimentConfigException>(() => new ExperimentBuilder("x", "ppo").Models("no-such-model").Stage("ppo", 1).Build());
    }

    [Fact]
    public async Task BuiltExperimentRunsUnderAPlanBuiltInCode()
    {
        string dir = Path.Combine(Path.GetTempPath(), "realn-built-" + Guid.NewGuid().ToString("N")[..8]);
        try
        {
            static PlanCall C(string n, string m, CallType t, int start, int count, int dp) =>
                new(n, m, t, new Mesh(0, 1, start, count), new Strategy(1, dp, 1), 1);
            var plan = new Plan(1, 2, [
                C("actor_gen", "actor", CallType.Generate, 0, 2, 2), C("rew_inf", "reward", CallType.Inference, 0, 1, 1),
                C("ref_inf", "ref", CallType.Inference, 1, 1, 1), C("critic_inf", "critic", CallType.Inference, 0, 2, 2),
                C("actor_train", "actor", CallType.TrainStep, 0, 1, 1), C("critic_train", "critic", CallType.TrainStep, 1, 1, 1)], null);
            var job = new TrainingJob(Tiny().Build(), new TrainingOptions { OutputDirectory = dir, Plan = PlanChoice.FromPlan(plan) });
            var result = await job.RunAsync();
            Assert.Equal(TrainingStatus.Completed, result.Status);
            Assert.NotNull(result.FinalTaskScore);
        }
        finally { if (Directory.Exists(dir)) Directory.Delete(dir, true); }
    }

    [Fact]
    public async Task Bf16ExperimentRunsAndBadPrecisionIsRefused()
    {
        var ex = Assert.Throws<ExperimentConfigException>(() => Tiny().Precision("fp8").Build());
        Assert.Equal("precision", ex.FieldPath);
        Assert.Contains("fp32 | bf16", ex.Message);
        string dir = Path.Combine(Path.GetTempPath(), "realn-bf16-" + Guid.NewGuid().ToString("N")[..8]);
        try
        {
            var job = new TrainingJob(Tiny().Precision("bf16").Build(), new TrainingOptions { OutputDirectory = dir });
            var result = await job.RunAsync();
            Assert.Equal(TrainingStatus.Completed, result.Status);
            Assert.NotNull(result.FinalTaskScore);
            var summary = System.Text.Json.Nodes.JsonNode.Parse(File.ReadAllText(Path.Combine(dir, "summary.json")))!;
            long rss = (long)summary["peak_rss_bytes"]!;
            Assert.InRange(rss, 10L << 20, 64L << 30);  // this process's VmHWM: runtime + models
            // Under a plan too: the plan's train replicas keep the fp32 master, the others hold bf16.
            static PlanCall C(string n, string m, CallType t, int start, int count, int dp) =>
                new(n, m, t, new Mesh(0, 1, start, count), new Strategy(1, dp, 1), 1);
            var plan = new Plan(1, 2, [
                C("actor_gen", "actor", CallType.Generate, 0, 2, 2), C("rew_inf", "reward", CallType.Inference, 0, 1, 1),
                C("ref_inf", "ref", CallType.Inference, 1, 1, 1), C("critic_inf", "critic", CallType.Inference, 0, 2, 2),
                C("actor_train", "actor", CallType.TrainStep, 0, 1, 1), C("critic_train", "critic", CallType.TrainStep, 1, 1, 1)], null);
            var planned = new TrainingJob(Tiny().Precision("bf16").Build(),
                new TrainingOptions { OutputDirectory = dir + "-plan", Plan = PlanChoice.FromPlan(plan) });
            var plannedResult = await planned.RunAsync();
            Assert.Equal(TrainingStatus.Completed, plannedResult.Status);
            Assert.NotNull(plannedResult.FinalTaskScore);
        }
        finally
        {
            if (Directory.Exists(dir)) Directory.Delete(dir, true);
            if (Directory.Exists(dir + "-plan")) Directory.Delete(dir + "-plan", true);
        }
    }
}
