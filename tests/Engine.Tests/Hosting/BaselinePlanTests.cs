// Every baseline of `realn plan` is a plan the engine executes: the heuristic, deepspeed_chat, openrlhf
// and symmetric plans of a tiny PPO on the 2-device cpu-local spec run to completion in process
// (deepspeed_chat / openrlhf run with the engine's data parallelism, not ZeRO-3; docs/cost-model.md).
using ReaLNative.Planner;
using Xunit;

namespace ReaLNative.Engine.Tests.Hosting;

public class BaselinePlanTests
{
    [Fact]
    public async Task EveryBaselinePlanRunsOnCpuLocal()
    {
        var exp = new ExperimentBuilder("baselines", "ppo").Seed(5).Task("sort-digits", 3, 4).Models("tiny").Batch(8, 8, 6, 2)
            .Evaluation(8, 2).Stage("sft", 1, lr: 3e-3).Stage("rm", 1).Stage("ppo", 1, lr: 5e-4).Build();
        string root = Directory.GetCurrentDirectory();
        while (!File.Exists(Path.Combine(root, "ReaLNative.sln"))) root = Path.GetDirectoryName(root)!;
        var cluster = ClusterSpec.Load(Path.Combine(root, "examples/clusters/cpu-local.yaml"));
        var planned = Planner.Experiment.Parse(exp.YamlText, exp.BaseDirectory, exp.Name);
        var r = PlanSearch.Run(cluster, planned, new SearchOptions { Seed = 1, StepsPerChain = 500 });
        Assert.Equal(["deepspeed_chat", "heuristic", "openrlhf", "symmetric"], r.Baselines.Keys.Order());
        foreach (var (name, b) in r.Baselines)
        {
            Assert.NotNull(b);
            PlanValidator.Validate(b!.Plan, cluster, planned);
            string dir = Path.Combine(Path.GetTempPath(), $"realn-{name}-" + Guid.NewGuid().ToString("N")[..8]);
            try
            {
                var job = new TrainingJob(exp, new TrainingOptions { OutputDirectory = dir, Plan = PlanChoice.FromPlan(b.Plan) });
                var result = await job.RunAsync();
                Assert.True(result.Status == TrainingStatus.Completed, $"baseline {name}: {result.Status}");
            }
            finally { if (Directory.Exists(dir)) Directory.Delete(dir, true); }
        }
    }
}
