// Asynchronous RL (`mode: async`, Runs/AsyncRollouts.cs): max_staleness 0 is the synchronous run
// bit for bit; with N > 0 generation of iteration g samples with policy version max(g - N, 0)
// (metrics.jsonl's async lines say so), the run is reproducible, and differs from the synchronous
// one (its samples are off-policy); a resume from a checkpoint of an async run (which holds the
// batches generated ahead) ends bit-identical to the uninterrupted run; under a plan the
// generation calls need devices of their own, shared only with frozen models' inference, which
// then runs on the rollout side; the rollouts file names what is malformed.
using System.Text.Json.Nodes;
using ReaLNative.Engine.Config;
using ReaLNative.Engine.Dataflow;
using ReaLNative.Engine.Runs;
using ReaLNative.Engine.Stages;
using ReaLNative.Planner;
using Xunit;
using PlanCallType = ReaLNative.Planner.CallType;

namespace ReaLNative.Engine.Tests.Runs;

public sealed class AsyncRunTests
{
    internal static ExperimentConfig Config(string mode, string algorithm = "ppo", int iterations = 4, int checkpointEvery = 100) =>
        ExperimentConfig.Parse(Yaml(mode, algorithm, iterations, checkpointEvery), Path.GetTempPath());

    internal static string Yaml(string mode, string algorithm, int iterations, int checkpointEvery) => $$"""
        name: async-test
        algorithm: {{algorithm}}
        seed: 3
        {{mode}}
        iterations: {{iterations}}
        task: { name: sort-digits, min_len: 3, max_len: 4 }
        eval: { size: 8, every: 100 }
        checkpoint_every: {{checkpointEvery}}
        checkpoint_keep: 10
        models:
          actor:  { preset: tiny, init: sft }
          ref:    { preset: tiny, init: sft }
          reward: { preset: tiny, init: rm }
          {{(algorithm == "ppo" ? "critic: { preset: tiny, init: rm }" : "")}}
        batch: { size: 8, prompt_len: 8, gen_len: 6, minibatches: 2, group_size: {{(algorithm == "grpo" ? 4 : 1)}} }
        ppo: { kl_coef: 0.05, ppo_epochs: 2 }
        stages:
          - { algorithm: sft, iterations: 6, models: { actor: { preset: tiny, init: random } }, optim: { lr: 3.0e-3 } }
          - { algorithm: rm, iterations: 4, models: { reward: { preset: tiny, init: sft } } }
          - { algorithm: {{algorithm}}, optim: { lr: 5.0e-4 } }
        """;

    internal static (float[] Actor, List<JsonObject> Lines) Run(ExperimentConfig cfg, Plan? plan = null)
    {
        string d = PlanExecutionTests.TempDir();
        try
        {
            using var p = new Pipeline(cfg, d, plan: plan);
            p.Run(resume: false);
            return (p.Model("actor").Parameters.ToArray(), Lines(d));
        }
        finally { Directory.Delete(d, true); }
    }

    internal static List<JsonObject> Lines(string dir) =>
        File.ReadLines(Path.Combine(dir, "metrics.jsonl")).Select(l => JsonNode.Parse(l)!.AsObject()).ToList();

    /// <summary>The metric lines without wall times (which differ run to run).</summary>
    internal static IEnumerable<string> Content(IEnumerable<JsonObject> lines) => lines.Select(l =>
    {
        var c = l.DeepClone().AsObject();
        foreach (var k in new[] { "seconds", "wait_seconds", "push_seconds", "gen_utilisation", "train_utilisation" }) c.Remove(k);
        return c.ToJsonString();
    });

    [Theory]
    [InlineData("ppo")]
    [InlineData("grpo")]
    public void StalenessZeroIsTheSynchronousRunBitForBit(string algorithm)
    {
        var sync = Run(Config("mode: sync", algorithm));
        var async0 = Run(Config("mode: async\nmax_staleness: 0", algorithm));
        Assert.Equal(sync.Actor, async0.Actor);
        // The same metric lines, plus one async line per RL iteration saying staleness 0.
        Assert.Equal(Content(sync.Lines), Content(async0.Lines.Where(l => (string)l["call"]! != "async")));
        var asyncLines = async0.Lines.Where(l => (string)l["call"]! == "async").ToList();
        Assert.Equal(4, asyncLines.Count);
        Assert.All(asyncLines, l => Assert.Equal(0, (int)l["staleness"]!));
    }

    [Fact]
    public void StalenessOneSamplesWithTheVersionBeforeAndIsReproducible()
    {
        var cfg = Config("mode: async\nmax_staleness: 1");
        var a = Run(cfg);
        var b = Run(cfg);
        Assert.Equal(a.Actor, b.Actor);
        Assert.Equal(Content(a.Lines), Content(b.Lines));
        var asyncLines = a.Lines.Where(l => (string)l["call"]! == "async").ToList();
        Assert.Equal([0, 0, 1, 2], asyncLines.Select(l => (int)l["behaviour_version"]!));
        Assert.Equal([0, 1, 1, 1], asyncLines.Select(l => (int)l["staleness"]!));
        Assert.All(asyncLines, l => Assert.Equal(0, (int)l["dropped_stale"]!));
        // Off-policy samples train another model than the synchronous run, and the plain PPO ratio
        // against the behaviour policy (no proximal recompute) another than the decoupled objective.
        Assert.NotEqual(Run(Config("mode: sync")).Actor, a.Actor);
        var plain = Run(ExperimentConfig.Parse(Yaml("mode: async\nmax_staleness: 1", "ppo", 4, 100)
            .Replace("ppo: { kl_coef: 0.05, ppo_epochs: 2 }", "ppo: { kl_coef: 0.05, ppo_epochs: 2, decoupled_loss: false }"), Path.GetTempPath()));
        Assert.NotEqual(a.Actor, plain.Actor);
    }

    [Fact]
    public void ResumeFromAnAsyncCheckpointEndsBitIdenticalToTheUninterruptedRun() =>
        // N = 2 and a checkpoint after every iteration: the checkpoint after PPO iteration 2 holds
        // the batches of iterations 3 and 4, generated with versions 1 and 2 (older than its weights).
        ResumeFromTheCheckpointAfterPpoIteration2IsBitExact(Config("mode: async\nmax_staleness: 2", iterations: 5, checkpointEvery: 1));

    /// <summary>Runs <paramref name="cfg"/> (sft 6 + rm 4 + ppo iterations, a checkpoint after each)
    /// uninterrupted, and again stopped after PPO iteration 2 (its checkpoint must hold rollouts.bin)
    /// then resumed: the actor and every metric line (timings aside) are equal. Returns the
    /// uninterrupted run's metric lines.</summary>
    /// <param name="planFull">The plan of the uninterrupted run and of the resume.</param>
    /// <param name="planCut">The plan of the run that is stopped (default: <paramref name="planFull"/>).</param>
    internal static List<JsonObject> ResumeFromTheCheckpointAfterPpoIteration2IsBitExact(ExperimentConfig cfg, Plan? planFull = null, Plan? planCut = null)
    {
        string full = PlanExecutionTests.TempDir(), cut = PlanExecutionTests.TempDir();
        try
        {
            float[] want;
            using (var p = new Pipeline(cfg, full, plan: planFull)) { p.Run(resume: false); want = p.Model("actor").Parameters.ToArray(); }
            using (var p = new Pipeline(cfg, cut, plan: planCut ?? planFull))
                Assert.True((bool)p.Run(resume: false, stopAfterIterations: 6 + 4 + 2)["interrupted"]!);
            var latest = Directory.GetDirectories(Path.Combine(cut, "checkpoints"), "step-*").OrderBy(d => d.Length).ThenBy(d => d).Last();
            Assert.True(File.Exists(Path.Combine(latest, RolloutFile.Name)), $"{latest} holds no {RolloutFile.Name}");
            using (var p = new Pipeline(cfg, cut, plan: planFull))
            {
                p.Run(resume: true);
                Assert.Equal(want, p.Model("actor").Parameters.ToArray());
                Assert.Equal(Content(Lines(full)), Content(Lines(cut)));
            }
            return Lines(full);
        }
        finally { Directory.Delete(full, true); Directory.Delete(cut, true); }
    }

    private static PlanCall Call(string name, string model, PlanCallType type, int start, int count) =>
        new(name, model, type, new Mesh(0, 1, start, count), new Strategy(1, 1, 1), 1);

    /// <param name="scoringDevice">The device of the reward and reference inference (1: with the trainer).</param>
    /// <param name="criticInfDevice">The device of the critic's inference.</param>
    internal static Plan TwoGroups(int genDevice, int scoringDevice = 1, int criticInfDevice = 1) => new(1, 2,
    [
        Call("actor_gen", "actor", PlanCallType.Generate, genDevice, 1),
        Call("rew_inf", "reward", PlanCallType.Inference, scoringDevice, 1),
        Call("ref_inf", "ref", PlanCallType.Inference, scoringDevice, 1),
        Call("critic_inf", "critic", PlanCallType.Inference, criticInfDevice, 1),
        Call("actor_train", "actor", PlanCallType.TrainStep, 1, 1),
        Call("critic_train", "critic", PlanCallType.TrainStep, 1, 1),
    ], null);

    /// <summary>The decoupled loss's proximal log-probs of a stale batch, computed on the rollout side
    /// right after the push of the weights the batch trains with (off the trainer's critical path),
    /// are the trainer's own recompute bit for bit: the same parameters and metric lines; the async
    /// lines say where they came from (the last N iterations' weights are never pushed: the trainer's).</summary>
    [Theory]
    [InlineData("ppo", 1, true)]
    [InlineData("ppo", 2, false)]
    [InlineData("grpo", 1, false)]
    public void ProximalLogProbsFromTheRolloutSideAreTheTrainersRecompute(string algorithm, int staleness, bool plan)
    {
        var cfg = Config($"mode: async\nmax_staleness: {staleness}", algorithm, iterations: 5);
        (float[] Actor, List<JsonObject> Lines) RunWith(bool rolloutSide)
        {
            string d = PlanExecutionTests.TempDir();
            try
            {
                using var p = new Pipeline(cfg, d, plan: plan ? TwoGroups(genDevice: 0, scoringDevice: 0) : null) { ProximalOnRolloutSide = rolloutSide };
                p.Run(resume: false);
                return (p.Model("actor").Parameters.ToArray(), Lines(d));
            }
            finally { Directory.Delete(d, true); }
        }
        var (rollout, trainer) = (RunWith(true), RunWith(false));
        Assert.Equal(trainer.Actor, rollout.Actor);
        static IEnumerable<string> WithoutSource(List<JsonObject> lines) => Content(lines.Select(l => { var c = l.DeepClone().AsObject(); c.Remove("proximal_on_rollout_side"); return c; }));
        Assert.Equal(WithoutSource(trainer.Lines), WithoutSource(rollout.Lines));
        int[] Sources(List<JsonObject> lines) => lines.Where(l => (string)l["call"]! == "async").Select(l => (int)l["proximal_on_rollout_side"]!).ToArray();
        // Iteration g samples with version max(g - N, 0): stale from g = 1 on; the last N iterations train with weights never pushed.
        Assert.Equal(Enumerable.Range(0, 5).Select(it => it >= 1 && it < 5 - staleness ? 1 : 0), Sources(rollout.Lines));
        Assert.All(Sources(trainer.Lines), x => Assert.Equal(0, x));
    }

    /// <summary>A resume from the checkpoint after PPO iteration 3 of 5 with N = 2: the restored batches
    /// are the last ones and nothing is left to generate. The resumed run takes the proximal log-probs
    /// from where the uninterrupted run took them (here the trainer: those weights are never pushed,
    /// though the resumed generation side holds them from the start), so it ends bit-identical,
    /// metric lines included, well within the (shortened) deadline.</summary>
    [Fact]
    public void ResumeWithNothingLeftToGenerateTakesTheProximalLogProbsFromTheSameSide()
    {
        var cfg = Config("mode: async\nmax_staleness: 2", iterations: 5, checkpointEvery: 1);
        string full = PlanExecutionTests.TempDir(), cut = PlanExecutionTests.TempDir();
        try
        {
            float[] want;
            using (var p = new Pipeline(cfg, full)) { p.Run(resume: false); want = p.Model("actor").Parameters.ToArray(); }
            using (var p = new Pipeline(cfg, cut))
                Assert.True((bool)p.Run(resume: false, stopAfterIterations: 6 + 4 + 3)["interrupted"]!);
            using (var p = new Pipeline(cfg, cut) { AsyncDeadline = TimeSpan.FromSeconds(60) })
            {
                p.Run(resume: true);
                Assert.Equal(want, p.Model("actor").Parameters.ToArray());
            }
            Assert.Equal(Content(Lines(full)), Content(Lines(cut)));
            var asyncLines = Lines(cut).Where(l => (string)l["call"]! == "async").ToList();
            Assert.Equal([0, 1, 1, 0, 0], asyncLines.Select(l => (int)l["proximal_on_rollout_side"]!));
        }
        finally { Directory.Delete(full, true); Directory.Delete(cut, true); }
    }

    [Fact]
    public void UnderAPlanGenerationRunsOnItsOwnDevicesAndTrainsTheSameModel()
    {
        var cfg = Config("mode: async\nmax_staleness: 1");
        var noPlan = Run(cfg);
        var planned = Run(cfg, TwoGroups(genDevice: 0));
        // Every call on one device with (1, 1, 1): the same ops as the single device.
        Assert.Equal(noPlan.Actor, planned.Actor);
        Assert.Equal(Content(noPlan.Lines), Content(planned.Lines));
    }

    [Fact]
    public void FrozenModelsInferenceJoinsTheRolloutSideOnlyWhereAllowed()
    {
        var graph = DataflowGraph.For(Config("mode: async").Stages[^1]);
        var (gen, scoring, rest) = graph.SplitRollout(_ => true);
        Assert.Equal(["actor_gen"], gen.Calls.Select(c => c.Name));
        Assert.Equal(["rew_inf", "ref_inf"], scoring.Calls.Select(c => c.Name));   // critic_inf: the critic is trained
        Assert.Equal(["critic_inf", "actor_train", "critic_train"], rest.Calls.Select(c => c.Name));
        Assert.Contains("scores", rest.SourceKeys);
        Assert.Contains("ref_logprobs", rest.SourceKeys);
        // Only where the predicate (under a plan: the call's mesh lies on the generation devices) allows.
        var (_, onlyRef, rest2) = graph.SplitRollout(c => c.Name == "ref_inf");
        Assert.Equal(["ref_inf"], onlyRef.Calls.Select(c => c.Name));
        Assert.Contains(rest2.Calls, c => c.Name == "rew_inf");
        Assert.Empty(graph.SplitRollout(_ => false).Scoring.Calls);
    }

    [Fact]
    public void ScoringOnTheGenerationDevicesTrainsTheSameModelAndResumesAcrossPlans()
    {
        // Reward and reference inference on the generation device: they run on the rollout side, right
        // after each generation; the results are those of the run that scores on the trainer's side.
        var cfg = Config("mode: async\nmax_staleness: 2", iterations: 5, checkpointEvery: 1);
        var withTrainer = Run(cfg, TwoGroups(genDevice: 0));
        var lines = ResumeFromTheCheckpointAfterPpoIteration2IsBitExact(cfg, planFull: TwoGroups(genDevice: 0, scoringDevice: 0));
        Assert.Equal(Content(withTrainer.Lines), Content(lines));
        // Resumed from a checkpoint whose rollouts.bin lacks the scores (written while the trainer
        // scored): the restored batches are scored on the rollout side before anything else.
        ResumeFromTheCheckpointAfterPpoIteration2IsBitExact(cfg, planFull: TwoGroups(genDevice: 0, scoringDevice: 0), planCut: TwoGroups(genDevice: 0));
    }

    [Fact]
    public void ATrainedModelsInferenceOnTheGenerationDevicesIsRefused()
    {
        string d = PlanExecutionTests.TempDir();
        try
        {
            var e = Assert.Throws<ConfigException>(() => new Pipeline(Config("mode: async"), d, plan: TwoGroups(genDevice: 0, scoringDevice: 0, criticInfDevice: 0)));
            Assert.StartsWith("mode:", e.Message);
            Assert.Contains("critic_inf on device(s) 0", e.Message);
        }
        finally { Directory.Delete(d, true); }
    }

    [Fact]
    public void APlanWhoseGenerationSharesDevicesIsRefusedNamingMode()
    {
        string d = PlanExecutionTests.TempDir();
        try
        {
            // Refused when the run is made, before the SFT and RM stages run.
            var e = Assert.Throws<ConfigException>(() => new Pipeline(Config("mode: async"), d, plan: TwoGroups(genDevice: 1)));
            Assert.StartsWith("mode:", e.Message);
            Assert.Contains("device(s) 1", e.Message);
        }
        finally { Directory.Delete(d, true); }
    }

    [Theory]
    [InlineData("mode: async\nmax_staleness: 17", "max_staleness")]
    [InlineData("mode: async\nmax_staleness: -1", "max_staleness")]
    [InlineData("max_staleness: 2", "max_staleness: only meaningful with mode: async")]
    public void BadAsyncSettingsAreRefusedNamingTheField(string mode, string expected)
    {
        Assert.Contains(expected, Assert.Throws<ConfigException>(() => Config(mode)).Message);
    }

    [Fact]
    public void AsyncIsOnlyForRlAlgorithms()
    {
        var e = Assert.Throws<ConfigException>(() => ExperimentConfig.Parse("""
            algorithm: sft
            mode: async
            models: { actor: { preset: tiny } }
            """, Path.GetTempPath()));
        Assert.StartsWith("mode:", e.Message);
        Assert.Contains("'sft'", e.Message);
    }

    [Fact]
    public void AMalformedRolloutsFileIsNamed()
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
            var batch = new SampleBatch();
            var examples = new[] { new ReaLNative.Engine.Tasks.TaskExample("ab", "ba"), new ReaLNative.Engine.Tasks.TaskExample("c", "c") };
            batch.Set("prompts", examples);
            batch.Set("sequences", context.Assemble(examples, gen));
            batch.Set("logprobs", new[] { -0.5f, -1.25f, -2f });
            batch.Set("ended_with_eos", new[] { true, false });
            string file = Path.Combine(d, RolloutFile.Name);
            RolloutFile.Write(file, [new GeneratedBatch(3, batch, [new CallRecord("actor_gen", 0.25, new Dictionary<string, double> { ["tokens"] = 8 })], 2)],
                              ["sequences", "logprobs", "ended_with_eos"]);
            // Round trip: the same tokens, log-probs, version and figures.
            var read = RolloutFile.Read(file, context);
            var back = new SampleBatch();
            back.Set("prompts", examples);
            read[0].Fill(back);
            Assert.Equal((3, 2), (read[0].Iteration, read[0].Version));
            Assert.Equal(gen.NewTokens, back.Get<Rollout>("sequences").Gen.NewTokens);
            Assert.Equal(gen.LogProbs, back.Get<Rollout>("sequences").Gen.LogProbs);
            Assert.Equal(new[] { -0.5f, -1.25f, -2f }, back.Get<float[]>("logprobs"));
            Assert.Equal(8, read[0].Records[0].Figures["tokens"]);
            // Truncated: named with the file and the batch.
            var bytes = File.ReadAllBytes(file);
            File.WriteAllBytes(file, bytes[..(bytes.Length - 5)]);
            var e = Assert.Throws<InvalidDataException>(() => RolloutFile.Read(file, context));
            Assert.Contains(file, e.Message);
            Assert.Contains("truncated in batch 0", e.Message);
            File.WriteAllBytes(file, [.. "NOTROLLS"u8.ToArray(), 0, 0, 0, 0]);
            Assert.Contains("bad magic", Assert.Throws<InvalidDataException>(() => RolloutFile.Read(file, context)).Message);
        }
        finally { Directory.Delete(d, true); }
    }

    /// <summary>The generation thread waits for each version with the deadline too: a trainer that
    /// never pushes version 1 ends generation of iteration 3 (N = 1) with a TimeoutException naming
    /// the version, which the trainer's next wait rethrows at once; nothing hangs.</summary>
    [Fact]
    public void AVersionNeverPushedEndsGenerationWithinTheDeadline()
    {
        var (gen, _) = DataflowGraph.For(Config("mode: async").Stages[^1]).SplitGeneration();
        var rollout = new Rollout([], [[1, 2]], new ReaLNative.Engine.Generation.GenerationResult
        {
            Prompts = [[1, 2]], NewTokens = [[3]], LogProbs = [[-0.5f]], EndedWithEos = [true],
        }, new ReaLNative.Engine.Model.ScoredBatch([[1, 2, 3]], [2]), ["x"]);
        var handlers = gen.Calls.ToDictionary(c => c.Name, c => (CallHandler)((call, b) =>
        {
            foreach (var k in call.Outputs) b.Set(k, k == "sequences" ? rollout : new float[] { 0 });
            return new Dictionary<string, double>();
        }));
        SampleBatch Sources(int g)
        {
            var b = new SampleBatch();
            foreach (var k in gen.SourceKeys) b.Set(k, new[] { g });
            return b;
        }
        using var rollouts = new AsyncRollouts(new MeshExecutor(gen, handlers, _ => [0]), Sources, () => { }, 1, 0, 4, [],
                                               TimeSpan.FromMilliseconds(300), CancellationToken.None);
        Thread.Sleep(1500);   // iterations 0 and 1 (version 0) are generated; iteration 2 waits for version 1
        Assert.Equal(0, rollouts.Take(0).Iteration);
        var e = Assert.Throws<TimeoutException>(() => rollouts.Take(2));
        Assert.Contains("policy version 1 was not pushed within", e.Message);
    }
}
