// Per-action outputs left with the workers (IReplica.KeptGenerate, KeptLogProbs, KeptValues): the
// collecting ranks keep the generation's log-probs, an inference call's log-probs or values and do
// not send them; the master's ActionFloats reads them from those ranks on first use (one-sided reads
// of their registered buffers), bit for bit what the call would have sent, and counted in
// data_bytes.to_master only then. A read after release fails, and so does a read from a holder
// that was killed, naming it.
using System.Diagnostics;
using ReaLNative.Engine.Generation;
using ReaLNative.Engine.Layout;
using ReaLNative.Engine.Model;
using ReaLNative.Engine.Optim;
using ReaLNative.Engine.Parallelism;
using ReaLNative.Engine.Config;
using ReaLNative.Engine.Tasks;
using ReaLNative.Engine.Tokenization;
using ReaLNative.Planner;
using PlanCallType = ReaLNative.Planner.CallType;
using ReaLNative.Engine.Runs;
using ReaLNative.Engine.Tests.Runs;
using ReaLNative.Engine.Workers;
using Xunit;

namespace ReaLNative.Engine.Tests.Workers;

[Collection("worker processes")]
public sealed class KeptOutputsTests(Xunit.Abstractions.ITestOutputHelper output)
{
    private static readonly LlamaConfig Cfg = LlamaConfig.Preset("tiny");

    private static int[][] Prompts()
    {
        var rng = new Random(9);
        return [.. Enumerable.Range(0, 6).Select(i => Enumerable.Range(0, 2 + i % 3).Select(_ => 3 + rng.Next(20)).ToArray())];
    }

    private static GenerationOptions Options => new() { MaxNewTokens = 5, Temperature = 1f, EosToken = 2, Seed = 7 };

    private static long ToMaster(WorkerPool pool) => pool.DataBytes!.Value.ToMaster;

    private static bool Same(float[] a, float[] b) => a.AsSpan().SequenceEqual(b);

    /// <summary>
    /// A generation on workers 0-1 (dp2), the reference's log-probs on 2-3 (pp2) and the critic's
    /// values on all four (dp2 x tp2), each once as today (outputs sent) and once left with the
    /// workers: the kept call returns exactly 4 bytes per action fewer to the master, the first read
    /// fetches exactly those bytes and gives the same bits, a second read fetches nothing; an output
    /// released unread cannot be read.
    /// </summary>
    [Fact]
    public void KeptOutputsComeBackOnlyWhenReadAndBitForBit()
    {
        using var pool = new WorkerPool(4, new WorkerPoolOptions { Executable = WorkerProcessTests.Realn(), ThreadsPerWorker = 1 });
        ParallelLayout gen = new([0, 1], 1, 2, 1), reference = new([2, 3], 2, 1, 1), critic = new([0, 1, 2, 3], 1, 2, 2);
        var prompts = Prompts();
        using var actor = pool.Create("actor", Cfg, false, gen, 1, null);
        actor.Initialise(41);

        long t0 = ToMaster(pool);
        var sent = actor.Generate(prompts, Options);
        long t1 = ToMaster(pool);
        var kept = actor.KeptGenerate(prompts, Options);
        long t2 = ToMaster(pool);
        int actions = sent.NewTokens.Sum(t => t.Length);
        output.WriteLine($"generation: {t1 - t0} bytes back with its log-probs, {t2 - t1} without; {actions} actions");
        Assert.True(actions > 0);
        Assert.Equal(t1 - t0 - 4L * actions, t2 - t1);
        Assert.Equal(sent.NewTokens.Select(t => string.Join(",", t)), kept.NewTokens.Select(t => string.Join(",", t)));
        var lazy = kept.KeptLogProbs ?? throw new Xunit.Sdk.XunitException("the kept generation has no kept log-probs");
        Assert.False(lazy.Fetched);
        Assert.Equal(actions, lazy.Length);
        Assert.True(Same(sent.LogProbs.SelectMany(x => x).ToArray(), kept.LogProbs.SelectMany(x => x).ToArray()), "generation log-probs");
        Assert.True(lazy.Fetched);
        Assert.Equal(t2 + 4L * actions, ToMaster(pool));
        _ = kept.LogProbs; _ = lazy.Values;
        Assert.Equal(t2 + 4L * actions, ToMaster(pool));   // fetched once

        // A filtered generation (top-k) sends a vocab-byte sampling mask per token too: left out as well.
        var topK = Options with { TopK = 5 };
        long f0 = ToMaster(pool);
        var fs = actor.Generate(prompts, topK);
        long f1 = ToMaster(pool);
        var fk = actor.KeptGenerate(prompts, topK);
        long f2 = ToMaster(pool);
        int fa = fs.NewTokens.Sum(t => t.Length);
        output.WriteLine($"top-k generation: {f1 - f0} bytes back with log-probs and masks, {f2 - f1} without; {fa} actions, vocab {Cfg.Vocab}");
        Assert.Equal(f1 - f0 - (4L + Cfg.Vocab) * fa, f2 - f1);
        Assert.Equal((long)Cfg.Vocab * fa, fs.Masks!.Sum(m => (long)m.Length));
        Assert.Throws<InvalidOperationException>(() => fk.Masks);
        Assert.True(Same(fs.LogProbs.SelectMany(x => x).ToArray(), fk.KeptLogProbs!.Values), "top-k generation log-probs");
        fk.KeptLogProbs.Release();

        var batch = new ScoredBatch([.. Enumerable.Range(0, prompts.Length).Select(kept.Sequence)], [.. prompts.Select(p => p.Length)]) { Source = kept.Source };
        Assert.Equal(actions, batch.Actions);
        using (var r = pool.Create("ref", Cfg, false, reference, 2, null))
        {
            r.Initialise(43);
            long a0 = ToMaster(pool);
            var lp = r.LogProbs(batch, 1f);
            long a1 = ToMaster(pool);
            var klp = r.KeptLogProbs(batch, 1f);
            long a2 = ToMaster(pool);
            output.WriteLine($"ref log-probs: {a1 - a0} bytes back sent, {a2 - a1} kept");
            Assert.Equal(a1 - a0 - 4L * actions, a2 - a1);
            Assert.True(Same(lp, klp.Values), "reference log-probs");
            Assert.Equal(a2 + 4L * actions, ToMaster(pool));
            // Released unread: no read, and a later read fails instead of giving zeros.
            var unread = r.KeptLogProbs(batch, 1f);
            long a3 = ToMaster(pool);
            unread.Release();
            var e = Assert.Throws<InvalidOperationException>(() => unread.Values);
            Assert.Contains("released", e.Message);
            Assert.Equal(a3, ToMaster(pool));
        }
        using var c = pool.Create("critic", Cfg, true, critic, 2, null);
        c.Initialise(47);
        long v0 = ToMaster(pool);
        var (values, last) = c.Values(batch);
        long v1 = ToMaster(pool);
        var (kv, klast) = c.KeptValues(batch);
        long v2 = ToMaster(pool);
        output.WriteLine($"critic values: {v1 - v0} bytes back sent, {v2 - v1} kept");
        Assert.Equal(v1 - v0 - 4L * actions, v2 - v1);
        Assert.True(Same(last, klast), "last scores");
        Assert.True(Same(values, kv.Values), "critic values");
        Assert.Equal(v2 + 4L * actions, ToMaster(pool));
    }

    private static ExperimentConfig DpoConfig() => ExperimentConfig.Parse("""
        name: kept-dpo
        algorithm: dpo
        seed: 3
        iterations: 2
        task: { name: sort-digits, min_len: 3, max_len: 4 }
        eval: { size: 8, every: 2 }
        models:
          actor: { preset: tiny, init: sft }
          ref:   { preset: tiny, init: sft }
        batch: { size: 8, prompt_len: 8, gen_len: 6 }
        stages:
          - { algorithm: sft, iterations: 6, models: { actor: { preset: tiny, init: random } }, optim: { lr: 3.0e-3 } }
          - { algorithm: dpo, optim: { lr: 5.0e-4 } }
        """, Path.GetTempPath());

    private static Plan DpoPlan() => new(1, 4,
    [
        PlanExecutionTests.Call("actor_gen", "actor", PlanCallType.Generate, 0, 2, 1, 2, 1, 1),
        PlanExecutionTests.Call("ref_inf", "ref", PlanCallType.Inference, 2, 2, 2, 1, 1, 2),
        PlanExecutionTests.Call("actor_train", "actor", PlanCallType.TrainStep, 0, 4, 1, 2, 2, 2),
    ], null);

    /// <summary>Runs <paramref name="config"/> under <paramref name="plan"/> in process, in worker
    /// processes, and in worker processes whose master gets every output
    /// (REALN_WORKER_TO_WORKER_DATA=0): the trained model (<paramref name="trained"/>) and
    /// metrics.jsonl (which holds a line <paramref name="expected"/> matches) are the same in all
    /// three. Returns the bytes the master received from the workers in the second run and in the third.</summary>
    private (long Direct, long ViaMaster) RunThreeWays(string what, Func<ExperimentConfig> config, Func<Plan> plan, Func<string, bool> expected, string trained = "actor")
    {
        string a = PlanExecutionTests.TempDir(), b = PlanExecutionTests.TempDir(), c = PlanExecutionTests.TempDir();
        try
        {
            using var inProcess = new Pipeline(config(), a, plan: plan());
            using var direct = new Pipeline(config(), b, plan: plan(), hosts: WorkerProcessTests.Processes());
            using var viaMaster = new Pipeline(config(), c, plan: plan(), hosts: WorkerProcessTests.Processes(workerToWorkerData: false));
            inProcess.Run(resume: false);
            var d = direct.Run(resume: false);
            var m = viaMaster.Run(resume: false);
            Assert.Equal(inProcess.Model(trained).Parameters.ToArray(), direct.Model(trained).Parameters.ToArray());
            Assert.Equal(inProcess.Model(trained).Parameters.ToArray(), viaMaster.Model(trained).Parameters.ToArray());
            var want = File.ReadLines(Path.Combine(a, "metrics.jsonl")).Select(Strip).ToList();
            Assert.Contains(want, l => expected(l));
            Assert.Equal(want, File.ReadLines(Path.Combine(b, "metrics.jsonl")).Select(Strip));
            Assert.Equal(want, File.ReadLines(Path.Combine(c, "metrics.jsonl")).Select(Strip));
            static long ToMaster(System.Text.Json.Nodes.JsonObject s) => (long)s["data_bytes"]!["to_master"]!;
            output.WriteLine($"{what}: master received {ToMaster(m)} bytes via the master, {ToMaster(d)} with worker-to-worker data");
            return (ToMaster(d), ToMaster(m));
        }
        finally { Directory.Delete(a, true); Directory.Delete(b, true); Directory.Delete(c, true); }
    }

    private static string Strip(string line)
    {
        var o = System.Text.Json.Nodes.JsonNode.Parse(line)!.AsObject();
        o.Remove("seconds");
        return o.ToJsonString();
    }

    /// <summary>
    /// DPO reads the reference's log-probs on the master (its loss sums them per sequence there), so
    /// in worker processes the master fetches the log-probs ref_inf left with its collecting rank:
    /// the run (metrics, actor) is bit-identical to the in-process plan run and to the worker run whose
    /// master gets every output with its call (REALN_WORKER_TO_WORKER_DATA=0), and the bytes that came
    /// back are fewer (the generation's and the evaluation's log-probs never do).
    /// </summary>
    [Fact]
    public void AStageThatReadsAKeptOutputOnTheMasterFetchesItAndTheRunIsUnchanged()
    {
        var (d, m) = RunThreeWays("dpo", DpoConfig, DpoPlan, l => l.Contains("\"call\":\"actor_train\"") && l.Contains("\"loss\""));
        Assert.True(d < m);
        // The generated pairs are ranked by their graded score where the answers are: no token id
        // comes back (3,128 bytes while they did).
        Assert.Equal(2_216, d);
    }

    private static ExperimentConfig RmConfig() => ExperimentConfig.Parse("""
        name: kept-rm
        algorithm: rm
        seed: 3
        iterations: 3
        task: { name: sort-digits, min_len: 3, max_len: 4 }
        models:
          actor:  { preset: tiny, init: sft }
          reward: { preset: tiny, init: sft }
        batch: { size: 8, prompt_len: 8, gen_len: 6 }
        stages:
          - { algorithm: sft, iterations: 4, models: { actor: { preset: tiny, init: random } }, optim: { lr: 3.0e-3 } }
          - { algorithm: rm, optim: { lr: 5.0e-4 } }
        """, Path.GetTempPath());

    // rew_train's dp2 x tp2 layout spans the generation's two workers and two that hold nothing.
    private static Plan RmPlan() => new(1, 4,
    [
        PlanExecutionTests.Call("actor_gen", "actor", PlanCallType.Generate, 0, 2, 1, 2, 1, 1),
        PlanExecutionTests.Call("rew_train", "reward", PlanCallType.TrainStep, 0, 4, 1, 2, 2, 1),
    ], null);

    /// <summary>
    /// The reward model's stage trains on pairs of sampled answers and, for each wrong answer, on its
    /// prompt followed by the reference answer against it. In worker processes its batch is a
    /// composite of the sequences the generation's workers hold (BatchSource.Tails): the reference
    /// answers go out with the command, the samples are read worker to worker, the workers rank them
    /// (graded scores) and send back only the sequence scores; no token id and no per-action value
    /// comes back. The reward model and metrics are bit-identical to the in-process run and to the
    /// run via the master.
    /// </summary>
    [Fact]
    public void TheRewardModelStageBuildsItsPairsWhereTheSamplesAre()
    {
        var (d, m) = RunThreeWays("rm", RmConfig, RmPlan, l => l.Contains("\"call\":\"rew_train\"") && l.Contains("\"margin\""), trained: "reward");
        Assert.True(d < m);
        // Back to the master: the generations' new-token counts, EOS flags and graded scores, and
        // rew_train's sequence scores. 3,548 bytes while the samples' ids came back to build the
        // pairs there (and rew_train sent its per-action values too: via the master 3,340 then, 2,064 now).
        Assert.Equal(1_272, d);
        Assert.Equal(2_064, m);
    }

    /// <summary>The worker that keeps the reference's log-probs (the collecting rank of a pp2 layout)
    /// is killed before the master reads them: the read fails naming it, well within the deadline.</summary>
    [Fact]
    public void AKilledHolderFailsTheReadNamingIt()
    {
        using var pool = new WorkerPool(4, new WorkerPoolOptions { Executable = WorkerProcessTests.Realn(), ThreadsPerWorker = 1 });
        ParallelLayout gen = new([0, 1], 1, 2, 1), reference = new([2, 3], 2, 1, 1);
        var prompts = Prompts();
        GenerationResult g;
        using (var actor = pool.Create("actor", Cfg, false, gen, 1, null))
        {
            actor.Initialise(41);
            g = actor.KeptGenerate(prompts, Options);
        }
        var batch = new ScoredBatch([.. Enumerable.Range(0, prompts.Length).Select(g.Sequence)], [.. prompts.Select(p => p.Length)]) { Source = g.Source };
        using var r = pool.Create("ref", Cfg, false, reference, 2, null);
        r.Initialise(43);
        var lp = r.KeptLogProbs(batch, 1f);
        Procs.KillAndWait(pool.WorkerPid(3));
        var clock = Stopwatch.StartNew();
        var e = Assert.Throws<WorkerFailedException>(() => lp.Values);
        output.WriteLine($"{clock.Elapsed.TotalSeconds:F1} s: {e.Message}");
        Assert.Contains("worker 3", e.Message);
        Assert.True(clock.Elapsed < TimeSpan.FromSeconds(60), $"the read failed after {clock.Elapsed.TotalSeconds:F0} s");
    }

    /// <summary>A combined reward of every pure rule kind, as the workers that score answers build it.</summary>
    private static RewardConfig Combined() => new(RewardConfig.Combined)
    {
        Components =
        [
            new(new RewardConfig(RewardConfig.NumericMatch) { Tolerance = 0.5 }, 1.0),
            new(new RewardConfig(RewardConfig.RequireEos), 0.1),
            new(new RewardConfig(RewardConfig.Regex) { Pattern = "[0-9],[0-9]" }, 0.25),
            new(new RewardConfig(RewardConfig.ExactMatch), 0.3),
        ],
    };

    private static TaskExample[] Examples(int n) =>
        [.. Enumerable.Range(0, n).Select(i => new TaskExample($"sort {i}", i % 2 == 0 ? "1,2" : $"{i}") { Metadata = i == 1 ? "{\"k\": 1}" : null })];

    /// <summary>
    /// A generation whose answers its collecting ranks score (dp2 on workers 0-1): per sequence only
    /// the new-token count, the EOS flag and the scores come back, exactly 4 bytes per generated token
    /// fewer than with the ids, less 12 bytes per rank of score arrays' lengths, plus the scores; the
    /// scores are bit for bit those this process computes from the ids (rule reward of a combined
    /// reward of every pure kind, held-out checks, graded scores); the ids are read from the workers
    /// only when read (exactly their 4 bytes each, prompts included), the same ids; released unread,
    /// a read fails.
    /// </summary>
    [Fact]
    public void ScoredAnswersSendScoresNotTokensAndTheIdsComeOnlyWhenRead()
    {
        using var pool = new WorkerPool(4, new WorkerPoolOptions { Executable = WorkerProcessTests.Realn(), ThreadsPerWorker = 1 });
        var prompts = Prompts();
        using var actor = pool.Create("actor", Cfg, false, new ParallelLayout([0, 1], 1, 2, 1), 1, null);
        actor.Initialise(41);
        var tok = RunTokenizer.Of(new CharTokenizer(Cfg.Vocab));
        var ex = Examples(prompts.Length);
        var request = new ScoringRequest(SequenceScorer.Describe(tok, Combined(), rule: true)!, ex, Checks: true) { Grades = true };
        var opt = Options with { MaxNewTokens = 8 };

        long t0 = ToMaster(pool);
        var sent = actor.KeptGenerate(prompts, opt);
        long t1 = ToMaster(pool);
        var scored = actor.KeptGenerate(prompts, opt, request);
        long t2 = ToMaster(pool);
        int actions = sent.NewTokens.Sum(t => t.Length);
        output.WriteLine($"generation: {t1 - t0} bytes back with the ids, {t2 - t1} with the scores instead; {actions} new tokens");
        Assert.True(actions > 0);
        // Per sequence 4 (count) + 4 (EOS) instead of 4 + 4 x ids + 4 + 4 + 4 (empty log-probs, EOS,
        // empty mask); per rank 3 array lengths, then 4 + 4 + 8 bytes of scores per sequence.
        Assert.Equal(t1 - t0 - 4L * actions - 8L * prompts.Length + 2 * 12 + 16L * prompts.Length, t2 - t1);
        Assert.Equal(sent.NewTokens.Select(t => t.Length), scored.NewTokenCounts);
        Assert.Equal(sent.EndedWithEos, scored.EndedWithEos);

        var want = new SequenceScorer(tok, RuleRewards.Create(Combined()), true).Score(ex, sent.NewTokens, sent.EndedWithEos, checks: true, grades: true);
        var got = scored.Scores ?? throw new Xunit.Sdk.XunitException("no scores from the workers");
        Assert.True(want.Rule!.AsSpan().SequenceEqual(got.Rule), "rule rewards");
        Assert.True(want.Checks!.AsSpan().SequenceEqual(got.Checks), "held-out checks");
        Assert.True(want.Grades!.AsSpan().SequenceEqual(got.Grades), "graded scores");
        var completions = sent.NewTokens.Select(t => tok.Completion(t)).ToArray();
        Assert.Equal(SequenceScorer.Checks(RuleRewards.Create(Combined()), ex, completions, sent.EndedWithEos), got.Checks!.Select(x => (double)x));
        Assert.Contains(got.Rule!, x => x != 0);

        var ids = scored.KeptTokens ?? throw new Xunit.Sdk.XunitException("the scored generation sent its ids");
        Assert.False(ids.Fetched);
        Assert.Equal(t2, ToMaster(pool));
        Assert.Equal(sent.NewTokens.Select(t => string.Join(",", t)), scored.NewTokens.Select(t => string.Join(",", t)));
        long sequenceTokens = prompts.Sum(p => p.Length) + actions;
        Assert.Equal(t2 + 4L * sequenceTokens, ToMaster(pool));
        _ = scored.NewTokens; _ = ids.Values;
        Assert.Equal(t2 + 4L * sequenceTokens, ToMaster(pool));   // read once
        Assert.True(sent.LogProbs.SelectMany(x => x).SequenceEqual(scored.LogProbs.SelectMany(x => x)), "log-probs of the scored generation");

        // Released unread: a later read fails instead of giving zeros or stale ids.
        var unread = actor.KeptGenerate(prompts, opt, request);
        long t3 = ToMaster(pool);
        unread.KeptTokens!.Release();
        var e = Assert.Throws<InvalidOperationException>(() => unread.NewTokens);
        Assert.Contains("released", e.Message);
        Assert.Equal(t3, ToMaster(pool));
    }

    /// <summary>A worker that would score answers (a collecting rank) is killed: the scored generation
    /// fails naming it within the deadline; and one killed after scoring, before the master reads the
    /// ids it keeps, fails that read naming it.</summary>
    [Fact]
    public void AKilledScorerOrIdHolderFailsNamingIt()
    {
        var prompts = Prompts();
        var tok = RunTokenizer.Of(new CharTokenizer(Cfg.Vocab));
        var request = new ScoringRequest(SequenceScorer.Describe(tok, new RewardConfig(RewardConfig.Task), rule: true)!, Examples(prompts.Length), Checks: true);
        using (var pool = new WorkerPool(4, new WorkerPoolOptions { Executable = WorkerProcessTests.Realn(), ThreadsPerWorker = 1 }))
        {
            using var actor = pool.Create("actor", Cfg, false, new ParallelLayout([0, 1], 1, 2, 1), 1, null);
            actor.Initialise(41);
            var g = actor.KeptGenerate(prompts, Options, request);
            Procs.KillAndWait(pool.WorkerPid(1));
            var clock = Stopwatch.StartNew();
            var e = Assert.Throws<WorkerFailedException>(() => g.NewTokens);
            output.WriteLine($"read of the ids: {clock.Elapsed.TotalSeconds:F1} s: {e.Message}");
            Assert.Contains("worker 1", e.Message);
            Assert.True(clock.Elapsed < TimeSpan.FromSeconds(60), $"the read failed after {clock.Elapsed.TotalSeconds:F0} s");
        }
        using (var pool = new WorkerPool(4, new WorkerPoolOptions { Executable = WorkerProcessTests.Realn(), ThreadsPerWorker = 1 }))
        {
            using var actor = pool.Create("actor", Cfg, false, new ParallelLayout([0, 1], 1, 2, 1), 1, null);
            actor.Initialise(41);
            Procs.KillAndWait(pool.WorkerPid(1));
            var clock = Stopwatch.StartNew();
            var e = Assert.ThrowsAny<Exception>(() => actor.KeptGenerate(prompts, Options, request));
            output.WriteLine($"scored generation: {clock.Elapsed.TotalSeconds:F1} s: {e.GetType().Name}: {e.Message}");
            Assert.Contains("worker 1", e.Message);
            Assert.True(clock.Elapsed < TimeSpan.FromSeconds(60), $"the call failed after {clock.Elapsed.TotalSeconds:F0} s");
        }
    }

    /// <summary>GRPO with a combined reward of every pure rule kind and DAPO's overlong penalty (from
    /// the lengths alone), and ReMax with numeric_match: the workers that hold the answers score
    /// them, and the run (metrics, actor) is bit-identical to the in-process plan run and to the
    /// worker run whose master gets every output and scores the text itself
    /// (REALN_WORKER_TO_WORKER_DATA=0); no token id comes back.</summary>
    [Theory]
    [InlineData("grpo", "{ kind: combined, components: [{ kind: numeric_match, tolerance: 0.5, weight: 1.0 }, { kind: require_eos, weight: 0.1 }, { kind: regex, pattern: '[0-9],[0-9]', weight: 0.25 }, { kind: exact_match, weight: 0.3 }] }", "{ overlong_buffer: 3, overlong_penalty: 0.5 }")]
    [InlineData("remax", "{ kind: numeric_match }", "{}")]
    public void RuleRewardsScoredOnTheWorkersLeaveTheRunUnchanged(string algorithm, string reward, string ppo)
    {
        var (d, m) = RunThreeWays(algorithm, () => PlanExecutionTests.TaskRewardConfig(algorithm, reward, ppo), () => PlanExecutionTests.TaskRewardPlan(algorithm),
                                  l => l.Contains("\"call\":\"actor_gen\"") && l.Contains("\"sample_task_score\""));
        Assert.True(d < m / 2);
    }
}
