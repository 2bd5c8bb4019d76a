// Async runs with `weight_update: interrupt` (Runs/AsyncRollouts.cs): the generation in flight
// takes the next policy version at decode step k = ceil(interrupt_at * gen_len), so a batch's
// tokens have two versions (metrics.jsonl's tokens_staleness_S count them); the run is reproducible
// bit for bit, resumes bit for bit from a checkpoint whose rollouts.bin holds the per-token
// versions, gives the same parameters without a plan, under an in-process 2-device plan and in
// worker processes; an explicit `weight_update: finish_batch` is the default bit for bit; bad
// settings are refused naming the field; rollouts.bin of format 1 is still read, an unknown
// format refused.
using System.Text.Json.Nodes;
using ReaLNative.Engine.Config;
using ReaLNative.Engine.Dataflow;
using ReaLNative.Engine.Runs;
using ReaLNative.Engine.Stages;
using ReaLNative.Engine.Tests.Workers;
using ReaLNative.Planner;
using Xunit;

namespace ReaLNative.Engine.Tests.Runs;

[Collection("worker processes")]
public sealed class AsyncInterruptTests
{
    private const string Interrupt = "mode: async\nmax_staleness: 1\nweight_update: interrupt";

    private static ExperimentConfig Config(string mode, int iterations = 4, int checkpointEvery = 100) =>
        AsyncRunTests.Config(mode, "ppo", iterations, checkpointEvery);

    private static List<JsonObject> AsyncLines(List<JsonObject> lines) => lines.Where(l => (string)l["call"]! == "async").ToList();

    private static int Tokens(JsonObject line, int staleness) => (int?)line[$"tokens_staleness_{staleness}"] ?? 0;

    private static string TokenFields(JsonObject line) => string.Join(", ", line.Where(kv => kv.Key.StartsWith("tokens_staleness_")).Select(kv => $"{kv.Key} {kv.Value}"));

    [Fact]
    public void InterruptIsReproducibleAndItsLaterTokensAreTheNewVersions()
    {
        var cfg = Config(Interrupt);
        Assert.Equal(3, cfg.InterruptStep(cfg.Stages[^1]));   // ceil(0.5 * gen_len 6)
        var a = AsyncRunTests.Run(cfg);
        var b = AsyncRunTests.Run(cfg);
        Assert.Equal(a.Actor, b.Actor);
        Assert.Equal(AsyncRunTests.Content(a.Lines), AsyncRunTests.Content(b.Lines));
        var lines = AsyncLines(a.Lines);
        Assert.Equal([0, 0, 1, 2], lines.Select(l => (int)l["behaviour_version"]!));
        Assert.All(lines, l => Assert.Equal(3, (int)l["interrupt_step"]!));
        // Iteration 1 generates with version 0 and takes version 1 (what finish_batch pushes after it)
        // at step 3: its first 3 tokens per sequence are 1 version behind, the rest on-policy.
        Assert.Equal(0, Tokens(lines[0], 1));
        for (int it = 1; it < 4; it++)
        {
            Assert.True(Tokens(lines[it], 1) > 0, $"iteration {it}: {TokenFields(lines[it])}");
            Assert.True(Tokens(lines[it], 1) <= 3 * 8, $"iteration {it}: {TokenFields(lines[it])}");
        }
        Assert.True(Enumerable.Range(1, 3).Sum(it => Tokens(lines[it], 0)) > 0, "no sequence went on past the pause step");
        // The samples are not finish_batch's.
        var finish = AsyncRunTests.Run(Config("mode: async\nmax_staleness: 1"));
        Assert.NotEqual(finish.Actor, a.Actor);
        // finish_batch: every token of a batch has the batch's staleness.
        Assert.All(AsyncLines(finish.Lines), l =>
            Assert.Equal([$"tokens_staleness_{l["staleness"]}"], l.Where(kv => kv.Key.StartsWith("tokens_staleness_")).Select(kv => kv.Key)));
        Assert.All(AsyncLines(finish.Lines), l => Assert.Equal(0, (int)l["interrupt_step"]!));
    }

    [Fact]
    public async Task TheHostingApiStreamsTheAsyncLinesAsNumbers()
    {
        // MetricRecord holds numbers only: the async line's per-staleness token counts are fields of their own.
        string dir = PlanExecutionTests.TempDir();
        try
        {
            var job = new TrainingJob(TrainingExperiment.FromYamlText(AsyncRunTests.Yaml(Interrupt, "grpo", 3, 100)), new TrainingOptions { OutputDirectory = dir, Overwrite = true });
            var seen = new List<MetricRecord>();
            var reader = Task.Run(async () => { await foreach (var m in job.Metrics) seen.Add(m); });
            var result = await job.RunAsync();
            await reader.WaitAsync(TimeSpan.FromSeconds(30));
            Assert.Equal(TrainingStatus.Completed, result.Status);
            var asyncRecords = seen.Where(m => m.Call == "async").ToList();
            Assert.Equal(3, asyncRecords.Count);
            Assert.All(asyncRecords, m => Assert.Equal(3, m.Values["interrupt_step"]));
            Assert.True(asyncRecords[1].Values["tokens_staleness_0"] > 0 && asyncRecords[1].Values["tokens_staleness_1"] > 0);
        }
        finally { Directory.Delete(dir, true); }
    }

    [Fact]
    public void AnExplicitFinishBatchIsTheDefaultBitForBit()
    {
        var dflt = AsyncRunTests.Run(Config("mode: async\nmax_staleness: 1"));
        var explicitFinish = AsyncRunTests.Run(Config("mode: async\nmax_staleness: 1\nweight_update: finish_batch"));
        Assert.Equal(dflt.Actor, explicitFinish.Actor);
        Assert.Equal(AsyncRunTests.Content(dflt.Lines), AsyncRunTests.Content(explicitFinish.Lines));
    }

    [Fact]
    public void ResumeOfAnInterruptRunEndsBitIdenticalToTheUninterruptedRun()
    {
        // N = 2, a checkpoint after every iteration: the checkpoint after PPO iteration 2 holds the
        // batches of iterations 3 (versions 0 and 1) and 4 (versions 1 and 2: it took version 2 mid-batch).
        var lines = AsyncLines(AsyncRunTests.ResumeFromTheCheckpointAfterPpoIteration2IsBitExact(
            Config("mode: async\nmax_staleness: 2\nweight_update: interrupt\ninterrupt_at: 0.4", iterations: 5, checkpointEvery: 1)));
        Assert.True(Tokens(lines[4], 1) > 0 && Tokens(lines[4], 2) > 0, $"iteration 5: {TokenFields(lines[4])}");
    }

    [Fact]
    public void UnderATwoDevicePlanInProcessAndInWorkerProcessesTheRunIsTheNoPlanRun()
    {
        var cfg = Config(Interrupt, iterations: 3);
        var noPlan = AsyncRunTests.Run(cfg);
        var planned = AsyncRunTests.Run(cfg, AsyncRunTests.TwoGroups(genDevice: 0));
        Assert.Equal(noPlan.Actor, planned.Actor);
        Assert.Equal(AsyncRunTests.Content(noPlan.Lines), AsyncRunTests.Content(planned.Lines));
        string d = PlanExecutionTests.TempDir();
        try
        {
            // In worker processes with the reward and reference scoring on the generation device (the rollout side).
            using var p = new Pipeline(cfg, d, plan: AsyncRunTests.TwoGroups(genDevice: 0, scoringDevice: 0), hosts: WorkerProcessTests.Processes());
            p.Run(resume: false);
            Assert.Equal(noPlan.Actor, p.Model("actor").Parameters.ToArray());
            Assert.Equal(AsyncRunTests.Content(noPlan.Lines), AsyncRunTests.Content(AsyncRunTests.Lines(d)));
        }
        finally { Directory.Delete(d, true); }
    }

    private static Plan GenerationOn(int devices, Strategy genStrategy)
    {
        PlanCall Call(string name, string model, ReaLNative.Planner.CallType type, int start, int count, Strategy s) => new(name, model, type, new Mesh(0, 1, start, count), s, 1);
        var one = new Strategy(1, 1, 1);
        return new(1, devices + 1,
        [
            Call("actor_gen", "actor", ReaLNative.Planner.CallType.Generate, 0, devices, genStrategy),
            Call("rew_inf", "reward", ReaLNative.Planner.CallType.Inference, devices, 1, one),
            Call("ref_inf", "ref", ReaLNative.Planner.CallType.Inference, devices, 1, one),
            Call("critic_inf", "critic", ReaLNative.Planner.CallType.Inference, devices, 1, one),
            Call("actor_train", "actor", ReaLNative.Planner.CallType.TrainStep, devices, 1, one),
            Call("critic_train", "critic", ReaLNative.Planner.CallType.TrainStep, devices, 1, one),
        ], null);
    }

    [Fact]
    public void APipelinedGenerationCallIsRefusedNamingWeightUpdate()
    {
        string d = PlanExecutionTests.TempDir();
        try
        {
            var e = Assert.Throws<ConfigException>(() => new Pipeline(Config(Interrupt), d, plan: GenerationOn(2, new Strategy(2, 1, 1))));
            Assert.StartsWith("weight_update:", e.Message);
            Assert.Contains("pp 2", e.Message);
        }
        finally { Directory.Delete(d, true); }
    }

    [Theory]
    [InlineData(1, 2)]   // tensor-parallel generation: both ranks pause and resume together
    [InlineData(2, 1)]   // data-parallel generation: each rank keeps its share's state
    public void TensorAndDataParallelGenerationMeshesPauseAndReproduce(int dp, int tp)
    {
        var cfg = Config(Interrupt, iterations: 3);
        var plan = GenerationOn(2, new Strategy(1, dp, tp));
        var a = AsyncRunTests.Run(cfg, plan);
        var b = AsyncRunTests.Run(cfg, plan);
        Assert.Equal(a.Actor, b.Actor);
        Assert.Equal(AsyncRunTests.Content(a.Lines), AsyncRunTests.Content(b.Lines));
        Assert.True(AsyncLines(a.Lines).Skip(1).Sum(l => Tokens(l, 0)) > 0, "no token sampled by the new version");
        if (dp > 1) Assert.Equal(AsyncRunTests.Run(cfg).Actor, a.Actor);   // data parallelism changes no op: the no-plan run
    }

    [Theory]
    [InlineData("mode: async\nweight_update: sometimes", "weight_update: 'sometimes'")]
    [InlineData("mode: async\nmax_staleness: 0\nweight_update: interrupt", "weight_update: interrupt needs max_staleness >= 1")]
    [InlineData("mode: async\nweight_update: interrupt\ninterrupt_at: 1", "interrupt_at:")]
    [InlineData("mode: async\nweight_update: interrupt\ninterrupt_at: 0", "interrupt_at:")]
    [InlineData("mode: async\ninterrupt_at: 0.5", "interrupt_at: only meaningful with weight_update: interrupt")]
    [InlineData("weight_update: interrupt", "weight_update: only meaningful with mode: async")]
    public void BadSettingsAreRefusedNamingTheField(string mode, string expected)
    {
        Assert.Contains(expected, Assert.Throws<ConfigException>(() => Config(mode)).Message);
    }

    [Fact]
    public void InterruptIsRefusedForRemaxAndContinuousBatching()
    {
        Assert.StartsWith("weight_update:", Assert.Throws<ConfigException>(() => AsyncRunTests.Config(Interrupt, "remax")).Message);
        var yaml = AsyncRunTests.Yaml(Interrupt, "grpo", 4, 100).Replace("ppo: { kl_coef", "generation: { batching: continuous, prefill: batch_independent }\nppo: { kl_coef");
        var e = Assert.Throws<ConfigException>(() => ExperimentConfig.Parse(yaml, Path.GetTempPath()));
        Assert.StartsWith("weight_update:", e.Message);
        Assert.Contains("continuous", e.Message);
    }

    [Fact]
    public void RolloutsFilesOfFormatOneAreReadAndUnknownFormatsRefused()
    {
        string d = PlanExecutionTests.TempDir();
        try
        {
            var stage = Config("mode: async").Stages[^1];
            var context = new StageContext(stage, 3, ReaLNative.Engine.Tokenization.RunTokenizer.Of(new ReaLNative.Engine.Tokenization.CharTokenizer(64)), null, (_, _) => throw new InvalidOperationException(), null!);
            var gen = new ReaLNative.Engine.Generation.GenerationResult
            {
                Prompts = [[1, 5, 6], [1, 7]], NewTokens = [[9, 2], [8]], LogProbs = [[-0.5f, -1.25f], [-2f]], EndedWithEos = [true, false],
            };
            var examples = new[] { new ReaLNative.Engine.Tasks.TaskExample("ab", "ba"), new ReaLNative.Engine.Tasks.TaskExample("c", "c") };
            var batch = new SampleBatch();
            batch.Set("prompts", examples);
            batch.Set("sequences", context.Assemble(examples, gen));
            batch.Set(StageContext.TokenVersionsKey, new[] { 1, 2, 2 });
            string file = Path.Combine(d, RolloutFile.Name);
            var records = new[] { new CallRecord("actor_gen", 0.25, new Dictionary<string, double>()) };
            // Format 2: per-token versions round trip.
            RolloutFile.Write(file, [new GeneratedBatch(3, batch, records, 1)], ["sequences", StageContext.TokenVersionsKey]);
            var back = new SampleBatch();
            back.Set("prompts", examples);
            RolloutFile.Read(file, context)[0].Fill(back);
            Assert.Equal(new[] { 1, 2, 2 }, back.Get<int[]>(StageContext.TokenVersionsKey));
            // Format 1 (no int arrays; otherwise the same layout): read, without per-token versions.
            RolloutFile.Write(file, [new GeneratedBatch(3, batch, records, 1)], ["sequences"]);
            var bytes = File.ReadAllBytes(file);
            Assert.Equal("REALNRO2"u8.ToArray(), bytes[..8]);
            bytes[7] = (byte)'1';
            File.WriteAllBytes(file, bytes);
            var old = new SampleBatch();
            old.Set("prompts", examples);
            var read = RolloutFile.Read(file, context);
            read[0].Fill(old);
            Assert.Equal(gen.NewTokens, old.Get<Rollout>("sequences").Gen.NewTokens);
            Assert.False(old.Contains(StageContext.TokenVersionsKey));
            bytes[7] = (byte)'3';
            File.WriteAllBytes(file, bytes);
            var e = Assert.Throws<InvalidDataException>(() => RolloutFile.Read(file, context));
            Assert.Contains("rollouts file format '3' is not known", e.Message);
            Assert.Contains(file, e.Message);
        }
        finally { Directory.Delete(d, true); }
    }
}
