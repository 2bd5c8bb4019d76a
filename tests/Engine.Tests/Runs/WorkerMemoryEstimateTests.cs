// Issue 18: a worker's memory estimate beside its measured peak. The planner counts shards, train
// state and the largest call's activations; the estimate adds the worker's base resident set
// measured after start-up (MemoryCheck.Estimates, README "No process holds a whole model"). A
// checkpoint adds no term: every shard writes its own pieces into the files (ShardedSave).
using ReaLNative.Engine.Config;
using ReaLNative.Engine.Model;
using ReaLNative.Engine.Runs;
using ReaLNative.Planner;
using Xunit;

namespace ReaLNative.Engine.Tests.Runs;

public sealed class WorkerMemoryEstimateTests
{
    private static string Root()
    {
        for (var d = new DirectoryInfo(AppContext.BaseDirectory); d is not null; d = d.Parent)
            if (File.Exists(Path.Combine(d.FullName, "ReaLNative.sln"))) return d.FullName;
        throw new DirectoryNotFoundException("no ReaLNative.sln above " + AppContext.BaseDirectory);
    }

    /// <summary>The scale-out example (PPO of four gpt2-small models) under its 4-worker plan.</summary>
    private static (ExperimentConfig Cfg, Plan Plan, string Dir) Example()
    {
        string dir = PlanExecutionTests.TempDir();
        Directory.CreateDirectory(Path.Combine(dir, "inits", "lm"));     // the config checks that its init folders exist
        Directory.CreateDirectory(Path.Combine(dir, "inits", "score"));
        var cfg = ExperimentConfig.Parse(File.ReadAllText(Path.Combine(Root(), "examples", "scale-out", "ppo-gpt2-small.yaml")), dir);
        return (cfg, PlanJson.Load(Path.Combine(Root(), "examples", "scale-out", "ppo-gpt2-small-4workers.plan.json")), dir);
    }

    /// <summary>Each worker's estimate: the planner's resident and active bytes (their sum is
    /// planned_memory_bytes_by_process) and the measured base resident set on top; nothing for
    /// checkpoints (no temporary writer shard any more).</summary>
    [Fact]
    public void AWorkersEstimateIsResidentPlusActivePlusItsBase()
    {
        var (cfg, plan, dir) = Example();
        try
        {
            long[] baseRss = [74_900_000, 75_100_000, 0, 80_000_000];
            var est = MemoryCheck.Estimates(cfg, plan, [baseRss[0], baseRss[1], null, baseRss[3]])!;
            var planned = MemoryCheck.Planned(cfg, plan);
            Assert.Equal(4, est.Length);
            for (int d = 0; d < 4; d++)
            {
                var w = est[d];
                Assert.InRange(w.Resident + w.Active - planned[MemoryCheck.WorkerKey(d)], 0, 1);   // each rounded down from the planner's double
                Assert.Equal(baseRss[d], w.BaseRss);
                Assert.Equal(w.Resident + w.Active + baseRss[d], w.Peak);
            }
            // The planner's 1 813 930 496 bytes on every device, plus each base.
            Assert.Equal(new long[] { 1_813_930_496 + 74_900_000, 1_813_930_496 + 75_100_000, 1_813_930_496, 1_813_930_496 + 80_000_000 }, est.Select(w => w.Peak).ToArray());
            Assert.Null(MemoryCheck.Estimates(cfg, null, null));
        }
        finally { Directory.Delete(dir, true); }
    }
}
