// Issue 18: a worker's memory estimate beside its measured peak. The planner counts shards, train
// state and the largest call's activations; the estimate adds what the plan determines besides (the
// checkpoint writers' temporary shard) and the worker's base resident set measured after start-up,
// each with its source (MemoryCheck.Estimates, README "No process holds a whole model").
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

    /// <summary>gpt2-small (12 blocks of 7 079 424 parameters, embedding and LM head of 38 633 472,
    /// final norm 768): actor and critic train pp2 x tp2 on devices 0-3, so each part of their
    /// checkpoints goes through a temporary tp-1 pipeline of 4 stages on devices 0-3; each device
    /// holds its stage's parameters, 4 bytes each, the larger of actor's and critic's stage.</summary>
    [Fact]
    public void CheckpointWritersOfTheScaleOutExampleHoldTheirPipelineStageOfTheLargerModel()
    {
        var (cfg, plan, dir) = Example();
        try
        {
            var writers = MemoryCheck.CheckpointWriterBytes(cfg, cfg.Stages[^1], plan);
            // embedding | blocks 0-5 | blocks 6-11 | norm + lm_head
            Assert.Equal(new long[] { 38_633_472L * 4, 6 * 7_079_424L * 4, 6 * 7_079_424L * 4, (768 + 38_633_472L) * 4 }, writers);
            // Every stage is whole units (embedding, blocks, norm + head) of the LM: the four add up to the model.
            var arch = LlamaConfig.Preset("gpt2-small");
            Assert.Equal(ParamLayout.Create(arch, false).TotalElements * 4, writers.Sum());
            Assert.Equal(162_220_800L * 4, writers.Sum());
            // A plan whose trained models train at tp 1 writes from their own shards: nothing temporary.
            var tp1 = plan with { Calls = [.. plan.Calls.Select(c => c.Type == CallType.TrainStep ? c with { Strategy = new Strategy(4, 1, 1) } : c)] };
            Assert.Equal(new long[4], MemoryCheck.CheckpointWriterBytes(cfg, cfg.Stages[^1], tp1));
        }
        finally { Directory.Delete(dir, true); }
    }

    /// <summary>Each worker's estimate: the planner's resident and active bytes (their sum is
    /// planned_memory_bytes_by_process), the checkpoint writers' shard beside the active bytes (a
    /// checkpoint is written between calls), and the measured base resident set on top.</summary>
    [Fact]
    public void AWorkersEstimateIsResidentPlusTheLargerOfActiveAndCheckpointWritersPlusItsBase()
    {
        var (cfg, plan, dir) = Example();
        try
        {
            long[] baseRss = [74_900_000, 75_100_000, 0, 80_000_000];
            var est = MemoryCheck.Estimates(cfg, plan, [baseRss[0], baseRss[1], null, baseRss[3]])!;
            var planned = MemoryCheck.Planned(cfg, plan);
            var writers = MemoryCheck.CheckpointWriterBytes(cfg, cfg.Stages[^1], plan);
            Assert.Equal(4, est.Length);
            for (int d = 0; d < 4; d++)
            {
                var w = est[d];
                Assert.InRange(w.Resident + w.Active - planned[MemoryCheck.WorkerKey(d)], 0, 1);   // each rounded down from the planner's double
                Assert.Equal(writers[d], w.CheckpointWriters);
                Assert.Equal(baseRss[d], w.BaseRss);
                Assert.Equal(w.Resident + Math.Max(w.Active, w.CheckpointWriters) + baseRss[d], w.Peak);
            }
            // The planner's 1 813 930 496 bytes on every device (its generation layout's weights and KV
            // cache, active while actor_gen runs, exceed each writer's stage), plus each base.
            Assert.Equal(new long[] { 1_813_930_496 + 74_900_000, 1_813_930_496 + 75_100_000, 1_813_930_496, 1_813_930_496 + 80_000_000 }, est.Select(w => w.Peak).ToArray());
            Assert.All(est, w => Assert.True(w.Active > w.CheckpointWriters, $"active {w.Active}, writers {w.CheckpointWriters}"));
            Assert.Null(MemoryCheck.Estimates(cfg, null, null));
        }
        finally { Directory.Delete(dir, true); }
    }
}
