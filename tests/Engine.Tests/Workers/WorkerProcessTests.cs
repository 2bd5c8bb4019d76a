// Plans executed by model worker processes (one per device, this test process the master, UCX
// between them): the same parameters as the in-process execution of the plan, bit for bit (the
// same shard schedule and reduction order over another transport).
using ReaLNative.Engine.Layout;
using ReaLNative.Engine.Optim;
using ReaLNative.Engine.Parallelism;
using ReaLNative.Engine.Runs;
using ReaLNative.Engine.Tests.Runs;
using ReaLNative.Engine.Workers;
using Xunit;

namespace ReaLNative.Engine.Tests.Workers;

[Collection("worker processes")]
public sealed class WorkerProcessTests(Xunit.Abstractions.ITestOutputHelper output)
{
    /// <summary>The realn built from this checkout (./build.sh builds the whole solution before the
    /// tests): the ReadyToRun publish that ./realn runs when it is as new as the build, else the build.</summary>
    internal static string Realn()
    {
        for (var d = new DirectoryInfo(AppContext.BaseDirectory); d is not null; d = d.Parent)
            if (File.Exists(Path.Combine(d.FullName, "ReaLNative.sln")))
            {
                string bin = Path.Combine(d.FullName, "src", "Cli", "bin", "Release");
                string exe = Path.Combine(bin, "net10.0", "realn"), published = Path.Combine(bin, "publish", "realn");
                if (!File.Exists(exe)) throw new FileNotFoundException($"{exe} is missing: build the solution (./build.sh) first");
                bool current = File.Exists(published)
                    && File.GetLastWriteTimeUtc(Path.Combine(bin, "publish", "realn.dll")) >= File.GetLastWriteTimeUtc(Path.Combine(bin, "net10.0", "realn.dll"))
                    && File.GetLastWriteTimeUtc(Path.Combine(bin, "publish", "ReaLNative.Engine.dll")) >= File.GetLastWriteTimeUtc(Path.Combine(bin, "net10.0", "ReaLNative.Engine.dll"));
                return current ? published : exe;
            }
        throw new DirectoryNotFoundException("no ReaLNative.sln above " + AppContext.BaseDirectory);
    }

    internal static Func<int, IReplicaHost> Processes(Dictionary<string, string>? env = null, bool workerToWorkerData = true) =>
        n => new WorkerPool(n, new WorkerPoolOptions { Executable = Realn(), ThreadsPerWorker = 1, Environment = env ?? new(), WorkerToWorkerData = workerToWorkerData });

    /// <summary>In bf16 the train replicas keep the fp32 master and moments; the other replicas hold
    /// bf16 only and are reallocated bf16 (in worker processes: worker to worker over UCX or process reads).</summary>
    [Theory]
    [InlineData("fp32")]
    [InlineData("bf16")]
    public void PpoUnderAPlanInWorkerProcessesEqualsTheInProcessPlanRun(string precision)
    {
        string a = PlanExecutionTests.TempDir(), b = PlanExecutionTests.TempDir();
        try
        {
            using var inProcess = new Pipeline(PlanExecutionTests.Config(precision), a, plan: PlanExecutionTests.MixedPlan());
            using var workers = new Pipeline(PlanExecutionTests.Config(precision), b, plan: PlanExecutionTests.MixedPlan(), hosts: Processes());
            var inProcessSummary = inProcess.Run(resume: false);
            var workersSummary = workers.Run(resume: false);
            Assert.Equal(inProcess.Model("actor").Parameters.ToArray(), workers.Model("actor").Parameters.ToArray());
            Assert.Equal(inProcess.Model("critic").Parameters.ToArray(), workers.Model("critic").Parameters.ToArray());
            Assert.True((long)inProcessSummary["realloc_bytes"]! > 0);
            Assert.Equal((long)inProcessSummary["realloc_bytes"]!, (long)workersSummary["realloc_bytes"]!);
            // actor_gen's replica (another layout than actor_train's) gives its weights back after every generation.
            Assert.True((int)inProcessSummary["weight_releases"]! >= PlanExecutionTests.Config(precision).Stages[^1].Iterations, $"weight_releases {inProcessSummary["weight_releases"]}");
            Assert.Equal((int)inProcessSummary["weight_releases"]!, (int)workersSummary["weight_releases"]!);
            Assert.Equal(File.ReadLines(Path.Combine(a, "metrics.jsonl")).Select(Strip), File.ReadLines(Path.Combine(b, "metrics.jsonl")).Select(Strip));
            CheckMemoryFigures(inProcessSummary, workers: 0, Path.Combine(a, "summary.json"));
            CheckMemoryFigures(workersSummary, workers: PlanExecutionTests.MixedPlan().DevicesPerNode, Path.Combine(b, "summary.json"));
        }
        finally { Directory.Delete(a, true); Directory.Delete(b, true); }
    }

    /// <summary>`activation_cache_clear_every: 1`: after every iteration the master and, in the plan's
    /// stage, each worker free their free activation blocks (each worker once per iteration, with its first
    /// command); the run is the same bits as the in-process run that never clears.</summary>
    [Fact]
    public void ClearingActivationCachesEveryIterationLeavesThePlanRunUnchanged()
    {
        string a = PlanExecutionTests.TempDir(), b = PlanExecutionTests.TempDir();
        try
        {
            var cfg = PlanExecutionTests.Config("fp32");
            using var kept = new Pipeline(cfg, a, plan: PlanExecutionTests.MixedPlan());
            using var cleared = new Pipeline(cfg with { ActivationCacheClearEvery = 1 }, b, plan: PlanExecutionTests.MixedPlan(), hosts: Processes());
            var keptSummary = kept.Run(resume: false);
            var summary = cleared.Run(resume: false);
            Assert.Equal(kept.Model("actor").Parameters.ToArray(), cleared.Model("actor").Parameters.ToArray());
            Assert.Equal(kept.Model("critic").Parameters.ToArray(), cleared.Model("critic").Parameters.ToArray());
            Assert.Equal(File.ReadLines(Path.Combine(a, "metrics.jsonl")).Select(Strip), File.ReadLines(Path.Combine(b, "metrics.jsonl")).Select(Strip));
            int iterations = cfg.Stages.Sum(s => s.Iterations);
            Assert.Null(keptSummary["activation_cache_clears"]);
            Assert.Equal(iterations, (int)summary["activation_cache_clears"]!);
            // The plan's stage (the last) runs on the workers, every call on all four: each clears once in each
            // of its iterations; in the earlier stages a worker clears with its first command after a round
            // began (evaluation may run there), at most once per round.
            int planned = cfg.Stages[^1].Iterations;
            Assert.True(planned < iterations);
            var terms = summary["memory_terms_by_process"]!.AsObject();
            Assert.Equal(PlanExecutionTests.MixedPlan().DevicesPerNode, terms.Count);
            foreach (var (worker, t) in terms)
            {
                int clears = (int)t!["activation_cache_clears"]!;
                Assert.True(clears >= planned && clears <= iterations, $"{worker}: {clears} clears; the run had {iterations} iterations, {planned} under the plan");
            }
        }
        finally { Directory.Delete(a, true); Directory.Delete(b, true); }
    }

    /// <summary>GRPO and ReMax with a rule-based reward under a plan in worker processes, where
    /// actor_train's loss ranks read the generation's and the reference's log-probs worker to worker
    /// and spread the sequence advantages themselves: metrics (KL included) and the actor bit for bit
    /// as the in-process plan run's and as the worker run whose master sends every call its batch
    /// and the per-token loss inputs (REALN_WORKER_TO_WORKER_DATA=0); that run sends more.</summary>
    [Theory]
    [InlineData("grpo")]
    [InlineData("remax")]
    public void CriticFreeStageInWorkerProcessesEqualsTheInProcessPlanRun(string algorithm)
    {
        string a = PlanExecutionTests.TempDir(), b = PlanExecutionTests.TempDir(), c = PlanExecutionTests.TempDir();
        try
        {
            using var inProcess = new Pipeline(PlanExecutionTests.TaskRewardConfig(algorithm), a, plan: PlanExecutionTests.TaskRewardPlan(algorithm));
            using var direct = new Pipeline(PlanExecutionTests.TaskRewardConfig(algorithm), b, plan: PlanExecutionTests.TaskRewardPlan(algorithm), hosts: Processes());
            using var viaMaster = new Pipeline(PlanExecutionTests.TaskRewardConfig(algorithm), c, plan: PlanExecutionTests.TaskRewardPlan(algorithm), hosts: Processes(workerToWorkerData: false));
            inProcess.Run(resume: false);
            var d = direct.Run(resume: false);
            var m = viaMaster.Run(resume: false);
            Assert.Equal(inProcess.Model("actor").Parameters.ToArray(), direct.Model("actor").Parameters.ToArray());
            Assert.Equal(inProcess.Model("actor").Parameters.ToArray(), viaMaster.Model("actor").Parameters.ToArray());
            var want = File.ReadLines(Path.Combine(a, "metrics.jsonl")).Select(Strip).ToList();
            Assert.Equal(want, File.ReadLines(Path.Combine(b, "metrics.jsonl")).Select(Strip));
            Assert.Equal(want, File.ReadLines(Path.Combine(c, "metrics.jsonl")).Select(Strip));
            long Bytes(System.Text.Json.Nodes.JsonObject s, string k) => (long)s["data_bytes"]![k]!;
            output.WriteLine($"{algorithm}: master sent {Bytes(m, "from_master")} bytes via the master, {Bytes(d, "from_master")} with worker-to-worker data ({Bytes(d, "between_workers")} between workers)");
            output.WriteLine($"{algorithm}: master received {Bytes(m, "to_master")} bytes via the master, {Bytes(d, "to_master")} with worker-to-worker data");
            Assert.True(Bytes(d, "from_master") < Bytes(m, "from_master"));
            // No per-token loss input from the master: grpo 13,294 and remax 13,878 bytes, of which
            // 822 and 958 are the reference answers that the scoring ranks get with the prompts
            // (14,264 and 14,712 while the master sent the advantages, old and reference log-probs).
            Assert.True(Bytes(d, "from_master") < 14_000, $"{algorithm}: the master sent {Bytes(d, "from_master")} bytes with worker-to-worker data");
            // No per-token float comes back either (the generation's, the reference's and the held-out
            // evaluation's log-probs stay with the workers), nor a generated token id (the workers
            // that hold the answers score them: rule reward, held-out check): grpo 1,432 and remax
            // 1,752 bytes (2,348 and 2,992 while the tokens came back and the master scored them;
            // 3,568 and 4,520 while every output came back, as it still does via the master).
            Assert.Equal(algorithm == "grpo" ? 1_432 : 1_752, Bytes(d, "to_master"));
            Assert.True(Bytes(d, "to_master") < Bytes(m, "to_master"));
        }
        finally { Directory.Delete(a, true); Directory.Delete(b, true); Directory.Delete(c, true); }
    }

    /// <summary>Data between calls goes worker to worker: the generation's collecting ranks keep the
    /// sequences (registered for one-sided reads) and every later call's workers read the ones their
    /// data-parallel part needs straight from them (rew_inf on devices 0-1 reads device 2's half,
    /// ref_inf on 2-3 reads across the generation's split, actor_train's dp-1 pipeline reads
    /// everything), with calls on disjoint meshes running at once. The run is bit-identical to the one
    /// where the master sends every call its whole batch, and the master sends a fraction of the bytes.</summary>
    [Fact]
    public void BatchesMoveWorkerToWorkerAndTheRunIsUnchanged()
    {
        string a = PlanExecutionTests.TempDir(), b = PlanExecutionTests.TempDir();
        try
        {
            using var viaMaster = new Pipeline(PlanExecutionTests.Config(), a, plan: PlanExecutionTests.MixedPlan(), hosts: Processes(workerToWorkerData: false));
            using var direct = new Pipeline(PlanExecutionTests.Config(), b, plan: PlanExecutionTests.MixedPlan(), hosts: Processes(workerToWorkerData: true));
            var m = viaMaster.Run(resume: false);
            var d = direct.Run(resume: false);
            Assert.Equal(viaMaster.Model("actor").Parameters.ToArray(), direct.Model("actor").Parameters.ToArray());
            Assert.Equal(viaMaster.Model("critic").Parameters.ToArray(), direct.Model("critic").Parameters.ToArray());
            Assert.Equal(File.ReadLines(Path.Combine(a, "metrics.jsonl")).Select(Strip), File.ReadLines(Path.Combine(b, "metrics.jsonl")).Select(Strip));
            long Bytes(System.Text.Json.Nodes.JsonObject s, string k) => (long)s["data_bytes"]![k]!;
            output.WriteLine($"master sent {Bytes(m, "from_master")} bytes via the master, {Bytes(d, "from_master")} with worker-to-worker data ({Bytes(d, "between_workers")} bytes between workers)");
            output.WriteLine($"master received {Bytes(m, "to_master")} bytes via the master, {Bytes(d, "to_master")} with worker-to-worker data");
            Assert.Equal(0, Bytes(m, "between_workers"));
            Assert.True(Bytes(d, "between_workers") > 0, "no sequence moved between workers");
            // What the master still sends: prompts, per-token gradients of its losses, and the
            // evaluation's and earlier stages' batches.
            Assert.True(Bytes(d, "from_master") < Bytes(m, "from_master") / 2,
                $"the master sent {Bytes(d, "from_master")} bytes with worker-to-worker data and {Bytes(m, "from_master")} without");
            // The PPO train calls get no per-token float from the master (their loss ranks derive the
            // advantages and returns from the inference outputs the workers kept): 17,040 bytes before,
            // 15,296 after, of which the SFT stage's batches are 9,376 and prompts 5,296; 16,876 since
            // the scoring ranks get the reference answers of their prompts (1,580 bytes).
            Assert.True(Bytes(d, "from_master") < 17_000, $"the master sent {Bytes(d, "from_master")} bytes with worker-to-worker data (17,040 while it sent PPO's per-token loss inputs)");
            // The per-token outputs of the calls on a resident batch (the generation's and ref_inf's
            // log-probs, critic_inf's and rew_inf's per-action values, the evaluation's log-probs) stay
            // with the workers, and so do the generated tokens (the workers that hold them score the
            // answers): 1,592 bytes come back (new-token counts, EOS flags, held-out checks, the reward
            // model's sequence scores; the SFT and RM stages' outputs); 1,656 while critic_inf's kept
            // values still sent the last scores nothing reads (4 bytes x 8 sequences x 2 iterations),
            // 2,588 while the tokens came back, 4,176 while every output came back (as it still does via the master).
            Assert.True(Bytes(m, "to_master") > 0);
            Assert.Equal(1_592, Bytes(d, "to_master"));
        }
        finally { Directory.Delete(a, true); Directory.Delete(b, true); }
    }

    /// <summary>summary.json's per-process memory: a peak RSS for the master and each worker process
    /// (in-process devices count in the master), positive, the master's at least its planned bytes;
    /// the planner's estimate for the same processes.</summary>
    private static void CheckMemoryFigures(System.Text.Json.Nodes.JsonObject summary, int workers, string file)
    {
        var written = System.Text.Json.Nodes.JsonNode.Parse(File.ReadAllText(file))!;
        foreach (var key in new[] { "peak_rss_bytes_by_process", "planned_memory_bytes_by_process" })
        {
            var byProcess = summary[key]!.AsObject();
            Assert.Equal(byProcess.ToJsonString(), written[key]!.ToJsonString());
            var expected = new[] { "master" }.Concat(Enumerable.Range(0, workers).Select(d => $"worker_{d}")).Order().ToArray();
            Assert.Equal(expected, byProcess.Select(kv => kv.Key).Order().ToArray());
            Assert.All(byProcess, kv => Assert.True((long)kv.Value! > 0, $"{key}.{kv.Key} = {kv.Value}"));
        }
        // Beside them, per worker, the bytes of other workers' shards it maps (shared memory).
        if (workers > 0)
        {
            var mapped = summary["peer_mapped_bytes_by_process"]!.AsObject();
            Assert.Equal(Enumerable.Range(0, workers).Select(d => $"worker_{d}").Order().ToArray(), mapped.Select(kv => kv.Key).Order().ToArray());
            Assert.All(mapped, kv => Assert.True((long)kv.Value! >= 0, $"peer_mapped_bytes_by_process.{kv.Key} = {kv.Value}"));
            // Each worker's estimate and its terms: the planner's resident and active bytes, the base
            // resident set the worker measured after start-up; peak = resident + active + base (a
            // checkpoint adds no temporary writer shard: no such term). After the run no replica holds
            // activation blocks (each operation gives them back), and the planner's terms are those
            // of planned_memory_bytes_by_process.
            var estimated = summary["estimated_peak_bytes_by_process"]!.AsObject();
            var terms = summary["memory_terms_by_process"]!.AsObject();
            Assert.Equal(estimated.ToJsonString(), written["estimated_peak_bytes_by_process"]!.ToJsonString());
            for (int d = 0; d < workers; d++)
            {
                var t = terms[$"worker_{d}"]!;
                long resident = (long)t["resident_bytes"]!, active = (long)t["active_bytes"]!, baseRss = (long)t["base_rss_bytes"]!;
                Assert.Equal(["activation_arena_bytes", "activation_arena_held_bytes", "activation_arena_peak_bytes", "activation_cache_clears", "active_bytes", "base_rss_bytes", "peak_set_by", "resident_bytes"],
                             t.AsObject().Select(kv => kv.Key).Order(StringComparer.Ordinal).ToArray());
                Assert.True(baseRss > 10_000_000 && baseRss < (long)summary["peak_rss_bytes_by_process"]![$"worker_{d}"]!, $"worker {d}: base RSS {baseRss}");
                Assert.Equal(resident + active + baseRss, (long)estimated[$"worker_{d}"]!);
                Assert.True(resident + active >= (long)summary["planned_memory_bytes_by_process"]![$"worker_{d}"]! - 1, $"worker {d}");
                Assert.Equal(0, (long)t["activation_arena_held_bytes"]!);
                Assert.Equal(0, (int)t["activation_cache_clears"]!);   // activation_cache_clear_every: 0
                Assert.True((long)t["activation_arena_peak_bytes"]! > 0, $"worker {d} ran no forward");
                Assert.False(string.IsNullOrEmpty((string?)t["peak_set_by"]?["command"]), $"worker {d}: no command raised its peak");
            }
        }
        // The master holds the full models: its peak is at least what the planner counts for it.
        Assert.True((long)summary["peak_rss_bytes_by_process"]!["master"]! >= (long)summary["planned_memory_bytes_by_process"]!["master"]!);
    }

    /// <summary>A metrics line without its timing.</summary>
    private static string Strip(string line)
    {
        var o = System.Text.Json.Nodes.JsonNode.Parse(line)!.AsObject();
        o.Remove("seconds");
        return o.ToJsonString();
    }
}

[Collection("worker processes")]
public sealed class WorkerPoolTests
{
    /// <summary>The per-token gradients of a loss go only to the ranks of the last pipeline stage
    /// (the only ones that compute the loss), each data-parallel rank getting those of its part of
    /// the batch; the other stages get the batch alone. Under pp2, pp2 x tp2, pp2 x dp2 and dp2 x tp2,
    /// an actor (log-prob loss) and a critic (value loss) trained by worker processes reach the
    /// in-process replica's gradient norms and parameters bit for bit, and the master sends exactly
    /// the batch to every rank plus its part's gradients to each rank of the last stage.</summary>
    [Fact]
    public void PerTokenGradientsGoOnlyToTheLastPipelineStage()
    {
        var cfg = ReaLNative.Engine.Model.LlamaConfig.Preset("tiny");
        var spec = new OptimizerSpec(new ReaLNative.Engine.Optim.LrSchedule(1e-2), 0.9f, 0.95f, 1e-8f, 0f, 1f);
        using var pool = new WorkerPool(4, new WorkerPoolOptions { Executable = WorkerProcessTests.Realn(), ThreadsPerWorker = 1 });
        using var cluster = new LocalCluster(4);
        var batch = new ReaLNative.Engine.Model.ScoredBatch([[1, 2, 3, 4, 5, 6], [7, 8, 9], [10, 11, 12, 13]], [2, 1, 3]);
        var rng = new Random(3);
        float[] Grad(int n) => Enumerable.Range(0, n).Select(_ => rng.NextSingle() - 0.5f).ToArray();
        float[] dLogp = Grad(batch.Actions), dValues = Grad(batch.Actions), dLast = Grad(batch.Packed.Count);
        long batchBytes = new WireWriter().Batch(batch).ToArray().Length;
        foreach (var layout in new[] { new ParallelLayout([0, 1], 2, 1, 1), new ParallelLayout([3, 2, 1, 0], 2, 1, 2), new ParallelLayout([0, 1, 2, 3], 2, 2, 1),
                                       new ParallelLayout([2, 3, 0, 1], 1, 2, 2) })
            foreach (bool critic in new[] { false, true })
            {
                string what = $"{(critic ? "critic" : "actor")} on {layout}";
                var norms = new double[2];
                var parameters = new float[2][];
                long sent = 0;
                for (int k = 0; k < 2; k++)
                {
                    IReplicaHost host = k == 0 ? cluster : pool;
                    using var r = host.Create(what, cfg, critic, layout, 2, spec);
                    r.Initialise(41);
                    long before = pool.DataBytes!.Value.FromMaster;
                    if (critic) r.BackwardValues(batch, dValues, dLast);
                    else r.BackwardLogProbs(batch, 1f, dLogp);
                    norms[k] = r.Step();
                    sent = pool.DataBytes!.Value.FromMaster - before;
                    using var back = new ReaLNative.Engine.Model.LlamaModel(cfg, critic);
                    r.CopyTo(back);
                    parameters[k] = back.Parameters.ToArray();
                }
                Assert.Equal(norms[0], norms[1]);
                Assert.True(parameters[0].AsSpan().SequenceEqual(parameters[1]), $"{what}: parameters after the step");
                var parts = ReaLNative.Engine.Generation.Split.Contiguous(batch.Packed.SeqLens, layout.Dp);
                long expected = 0;
                for (int rank = 0; rank < layout.Devices.Count; rank++)
                {
                    expected += batchBytes;
                    var (pipe, data, _) = layout.Coords(rank);
                    if (pipe != layout.Pp - 1) continue;
                    int first = parts[data][0], end = parts[data][^1] + 1;
                    long actions = batch.ActionCu[end] - batch.ActionCu[first];
                    expected += critic ? 4 + 4 * actions + 4 + 4 * (end - first) : 4 + 4 * actions;
                }
                Assert.Equal(expected, sent);
            }
    }

    /// <summary>A generation sends each data-parallel rank only its share of the prompts (the part its
    /// shards generate, with where it starts in the batch): the master's bytes for the call are exactly the
    /// shares, every rank of a data-parallel part getting that part's; the generated tokens, log-probs,
    /// EOS flags and filter masks equal the in-process replica's bit for bit, and the sequences the
    /// collecting ranks keep score (log-probs read worker to worker) as the in-process batch does.</summary>
    [Fact]
    public void GenerationPromptsGoToEachDataParallelRankOnlyItsShare()
    {
        var cfg = ReaLNative.Engine.Model.LlamaConfig.Preset("tiny");
        using var pool = new WorkerPool(4, new WorkerPoolOptions { Executable = WorkerProcessTests.Realn(), ThreadsPerWorker = 1, WorkerToWorkerData = true });
        using var cluster = new LocalCluster(4);
        int[][] prompts = [[1, 2, 3, 4, 5], [6, 7], [8, 9, 10], [11, 12, 13, 14, 15, 16, 17], [18], [19, 20, 21, 22]];
        var opt = new ReaLNative.Engine.Generation.GenerationOptions { MaxNewTokens = 4, Temperature = 1f, TopK = 20, Seed = 7 };
        // The whole batch's bytes to one rank: what every rank got before.
        long whole = 4 + prompts.Sum(p => 4 + 4L * p.Length);
        foreach (var layout in new[] { new ParallelLayout([0, 1], 1, 2, 1), new ParallelLayout([3, 2, 1, 0], 1, 4, 1), new ParallelLayout([0, 1, 2, 3], 1, 2, 2),
                                       new ParallelLayout([2, 3, 0, 1], 2, 2, 1), new ParallelLayout([1, 2], 1, 1, 2) })
        {
            var results = new ReaLNative.Engine.Generation.GenerationResult[2];
            var logps = new float[2][];
            long sent = 0;
            for (int k = 0; k < 2; k++)
            {
                IReplicaHost host = k == 0 ? cluster : pool;
                using var r = host.Create($"actor on {layout}", cfg, false, layout, 2, null);
                r.Initialise(41);
                long before = pool.DataBytes!.Value.FromMaster;
                var g = results[k] = r.Generate(prompts, opt);
                sent = pool.DataBytes!.Value.FromMaster - before;
                var seqs = Enumerable.Range(0, prompts.Length).Select(g.Sequence).ToArray();
                logps[k] = r.LogProbs(new ReaLNative.Engine.Model.ScoredBatch(seqs, prompts.Select(p => p.Length).ToArray()) { Source = g.Source }, 1f);
            }
            Assert.Null(results[0].Source);
            Assert.NotNull(results[1].Source);
            for (int i = 0; i < prompts.Length; i++)
            {
                Assert.Equal(results[0].NewTokens[i], results[1].NewTokens[i]);
                Assert.Equal(results[0].LogProbs[i], results[1].LogProbs[i]);
                Assert.Equal(results[0].EndedWithEos[i], results[1].EndedWithEos[i]);
                Assert.Equal(results[0].Masks![i], results[1].Masks![i]);
            }
            Assert.Equal(logps[0], logps[1]);
            var parts = ReaLNative.Engine.Generation.Split.Contiguous(prompts.Select(p => p.Length).ToArray(), layout.Dp);
            long expected = 0;
            for (int rank = 0; rank < layout.Devices.Count; rank++)
            {
                var part = parts[layout.Coords(rank).Data];
                expected += 4 + 4 + part.Sum(i => 4 + 4L * prompts[i].Length);  // the first id, the count, the prompts
            }
            Assert.Equal(expected, sent);
            if (layout.Dp > 1) Assert.True(sent < layout.Devices.Count * whole, $"{layout}: {sent} bytes for the prompts, {layout.Devices.Count * whole} sent whole");
        }
    }

    /// <summary>Workers initialise, load and save their own shards (no byte of the model through the
    /// master), in worker processes and in process, under layouts with tp (each tensor rank writes its
    /// slices into the files), pp and dp (the tensors spread over the data replicas): initialised
    /// they equal the single-device model with the same seed; loaded from a sharded checkpoint (whole,
    /// or only its shared tensors into a scalar-head model) they equal the single device's load; every
    /// checkpoint part they write (HF weights, fp32 master, both AdamW moments) equals what the single
    /// device writes of the gathered state, and reads back into another layout; bit for bit.</summary>
    [Fact]
    public void WorkersInitialiseLoadAndSaveTheirOwnShards()
    {
        var cfg = ReaLNative.Engine.Model.LlamaConfig.Preset("tiny");
        string dir = Path.Combine(Path.GetTempPath(), "realn-shards-" + Guid.NewGuid().ToString("N"));
        var spec = new OptimizerSpec(new ReaLNative.Engine.Optim.LrSchedule(1e-3), 0.9f, 0.95f, 1e-8f, 0f, 1f);
        try
        {
            using var pool = new WorkerPool(2, new WorkerPoolOptions { Executable = WorkerProcessTests.Realn(), ThreadsPerWorker = 1 });
            using var cluster = new LocalCluster(2);
            using var single = new ReaLNative.Engine.Model.LlamaModel(cfg, false);
            single.InitRandom(31);
            using var saved = new ReaLNative.Engine.Model.LlamaModel(cfg, false);
            saved.InitRandom(32, 0.5f);
            string lm = Path.Combine(dir, "lm");
            ReaLNative.Engine.Checkpoints.Safetensors.Save(saved, lm, shardBytes: 40_000);
            // An LM checkpoint into a critic: the shared trunk is loaded, score.weight keeps its init.
            using var critic = new ReaLNative.Engine.Model.LlamaModel(cfg, true);
            critic.InitRandom(34);
            ReaLNative.Engine.Algorithms.ModelOps.CopyShared(saved, critic);
            // Optimizer state with random moments (never zeros) to scatter and write back.
            using var state = new ReaLNative.Engine.Model.LlamaModel(cfg, false);
            state.InitRandom(35, 0.5f);
            using var adam = spec.Create(state);
            var rng = new Random(5);
            var m = Enumerable.Range(0, (int)state.ParameterCount).Select(_ => (float)rng.NextDouble()).ToArray();
            var v = Enumerable.Range(0, (int)state.ParameterCount).Select(_ => (float)rng.NextDouble()).ToArray();
            adam.Restore(7, m, v);
            string reference = Path.Combine(dir, "reference");
            Directory.CreateDirectory(reference);
            foreach (var part in Enum.GetValues<ReaLNative.Engine.Checkpoints.CheckpointPart>())
                new ReaLNative.Engine.Checkpoints.FullModelState("actor", state, adam).Write(Path.Combine(reference, ReaLNative.Engine.Checkpoints.CheckpointParts.Name("actor", part)), part);

            var layouts = new[] { new ParallelLayout([1, 0], 1, 1, 2), new ParallelLayout([0, 1], 2, 1, 1), new ParallelLayout([1, 0], 1, 2, 1) };
            foreach (var layout in layouts)
                foreach (bool remote in new[] { true, false })
                {
                    IReplicaHost host = remote ? pool : cluster;
                    string what = $"{(remote ? "workers" : "in process")} {layout}";
                    using var back = new ReaLNative.Engine.Model.LlamaModel(cfg, false);
                    using (var r = host.Create("lm", cfg, false, layout, 1, null))
                    {
                        r.Initialise(31);
                        r.CopyTo(back);
                        Assert.True(single.Parameters.SequenceEqual(back.Parameters), $"{what}: init");
                        r.Initialise(99, lm);
                        r.CopyTo(back);
                        Assert.True(saved.Parameters.SequenceEqual(back.Parameters), $"{what}: load");
                    }
                    using (var r = host.Create("critic", cfg, true, layout, 1, null))
                    {
                        using var criticBack = new ReaLNative.Engine.Model.LlamaModel(cfg, true);
                        r.Initialise(34, lm, sharedOnly: true);
                        r.CopyTo(criticBack);
                        Assert.True(critic.Parameters.SequenceEqual(criticBack.Parameters), $"{what}: shared tensors of an LM checkpoint");
                    }
                    // Every part written by the shards equals the single device's file.
                    string written = Path.Combine(dir, $"written-{(remote ? "w" : "p")}-{layout.Pp}{layout.Dp}{layout.Tp}");
                    Directory.CreateDirectory(written);
                    using (var r = host.Create("actor", cfg, false, layout, 1, spec))
                    {
                        r.CopyFrom(state);
                        r.MoveOptimizerState(adam, toShards: true);
                        foreach (var part in Enum.GetValues<ReaLNative.Engine.Checkpoints.CheckpointPart>())
                            r.SaveState(Path.Combine(written, ReaLNative.Engine.Checkpoints.CheckpointParts.Name("actor", part)), part);
                        Assert.Equal(7, r.OptimizerStep);
                    }
                    using (var whole = ReaLNative.Engine.Checkpoints.Safetensors.Load(Path.Combine(written, "actor")))
                        Assert.True(state.Parameters.SequenceEqual(whole.Parameters), $"{what}: written weights");
                    foreach (var ext in new[] { ".master", ".adam_m", ".adam_v" })
                        Assert.True(File.ReadAllBytes(Path.Combine(reference, "actor" + ext)).AsSpan().SequenceEqual(File.ReadAllBytes(Path.Combine(written, "actor" + ext))),
                                    $"{what}: written actor{ext}");
                    Assert.Empty(Directory.GetFiles(written, "*.tmp", SearchOption.AllDirectories));
                    // Read back into the next layout (another plan), gathered: the same state.
                    var other = layouts[(Array.IndexOf(layouts, layout) + 1) % layouts.Length];
                    using (var r = host.Create("actor", cfg, false, other, 1, spec))
                    {
                        r.Initialise(1);
                        r.LoadState(Path.Combine(written, "actor"), ReaLNative.Engine.Checkpoints.CheckpointPart.Weights);
                        r.LoadState(Path.Combine(written, "actor.adam_m"), ReaLNative.Engine.Checkpoints.CheckpointPart.FirstMoment);
                        r.LoadState(Path.Combine(written, "actor.adam_v"), ReaLNative.Engine.Checkpoints.CheckpointPart.SecondMoment);
                        r.OptimizerStep = 7;
                        using var got = new ReaLNative.Engine.Model.LlamaModel(cfg, false);
                        using var gotAdam = spec.Create(got);
                        r.CopyTo(got);
                        r.MoveOptimizerState(gotAdam, toShards: false);
                        Assert.True(state.Parameters.SequenceEqual(got.Parameters), $"{what}: weights read back under {other}");
                        Assert.True(m.AsSpan().SequenceEqual(gotAdam.FirstMoment) && v.AsSpan().SequenceEqual(gotAdam.SecondMoment), $"{what}: moments read back under {other}");
                        Assert.Equal(7, gotAdam.Step);
                        r.LoadState(Path.Combine(written, "actor.master"), ReaLNative.Engine.Checkpoints.CheckpointPart.Master);
                        r.CopyTo(got);
                        Assert.True(state.Parameters.SequenceEqual(got.Parameters), $"{what}: master read back under {other}");
                    }
                }
            // The pp-2 writers wrote a file per stage and an HF index naming both.
            var index = System.Text.Json.Nodes.JsonNode.Parse(File.ReadAllText(Path.Combine(dir, "written-w-211", "actor", "model.safetensors.index.json")))!;
            Assert.Equal(["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"],
                         index["weight_map"]!.AsObject().Select(kv => (string)kv.Value!).Distinct().Order());
        }
        finally { if (Directory.Exists(dir)) Directory.Delete(dir, true); }
    }

    /// <summary>bf16 replicas in worker processes: the train replica gets the fp32 master, the
    /// inference replica the train shards' bf16 copies worker to worker (half the fp32 bytes);
    /// gathered into a frozen full model they are the bf16 rounding of the master, bit for bit, and
    /// the master comes back unrounded.</summary>
    [Fact]
    public void Bf16ReplicasReallocateBf16WorkerToWorkerBitExact()
    {
        var cfg = ReaLNative.Engine.Model.LlamaConfig.Preset("tiny");
        using var pool = new WorkerPool(2, new WorkerPoolOptions { Executable = WorkerProcessTests.Realn(), ThreadsPerWorker = 1 });
        using var full = new ReaLNative.Engine.Model.LlamaModel(cfg, false);
        full.InitRandom(11, 0.5f);
        var rounded = full.Parameters.ToArray().Select(ReaLNative.Engine.Tests.Model.Bf16Tests.Rne).ToArray();
        full.SetPrecision(ReaLNative.Engine.Model.ModelPrecision.Bf16);
        var spec = new OptimizerSpec(new ReaLNative.Engine.Optim.LrSchedule(1e-3), 0.9f, 0.95f, 1e-8f, 0f, 1f);
        using var tp = pool.Create("tp", cfg, false, new ParallelLayout([1, 0], 1, 1, 2), 1, spec, ReaLNative.Engine.Model.ModelPrecision.Bf16);
        using var pp = pool.Create("pp", cfg, false, new ParallelLayout([0, 1], 2, 1, 1), 2, null, ReaLNative.Engine.Model.ModelPrecision.Bf16);
        tp.CopyFrom(full);
        Assert.Equal(full.ParameterCount * 2, pp.CopyFrom(tp));
        using var back = new ReaLNative.Engine.Model.LlamaModel(cfg, false);
        back.FreezeToBf16();
        pp.CopyTo(back);
        Assert.Equal(rounded, back.Bf16Parameters.ToArray());
        using var master = new ReaLNative.Engine.Model.LlamaModel(cfg, false);
        tp.CopyTo(master);
        Assert.Equal(full.Parameters.ToArray(), master.Parameters.ToArray());
    }

    /// <summary>With process reads (the default: workers map each other's shards from shared memory,
    /// the master reads theirs with process_vm_readv and they read the master's that way), with
    /// REALN_REALLOC_SHARED_MEMORY=0 in the workers (process_vm_readv between workers too) and with
    /// REALN_REALLOC_PROCESS_READ=0 in the workers (their address header says so, and the master,
    /// which allows it, moves everything over UCX with them).</summary>
    [Theory]
    [InlineData(true, true)]
    [InlineData(true, false)]
    [InlineData(false, true)]
    public void ParametersAndMomentsRoundTripThroughWorkersBitExact(bool processRead, bool sharedMemory)
    {
        var cfg = ReaLNative.Engine.Model.LlamaConfig.Preset("tiny");
        var env = new Dictionary<string, string>();
        if (!processRead) env["REALN_REALLOC_PROCESS_READ"] = "0";
        if (!sharedMemory) env["REALN_REALLOC_SHARED_MEMORY"] = "0";
        using var pool = new WorkerPool(2, new WorkerPoolOptions { Executable = WorkerProcessTests.Realn(), ThreadsPerWorker = 1, Environment = env });
        using var full = new ReaLNative.Engine.Model.LlamaModel(cfg, false);
        full.InitRandom(11);
        var spec = new OptimizerSpec(new ReaLNative.Engine.Optim.LrSchedule(1e-3), 0.9f, 0.95f, 1e-8f, 0f, 1f);
        using var adam = spec.Create(full);
        var rng = new Random(5);
        var m = Enumerable.Range(0, (int)full.ParameterCount).Select(_ => rng.NextSingle() - 0.5f).ToArray();
        var v = Enumerable.Range(0, (int)full.ParameterCount).Select(_ => rng.NextSingle()).ToArray();
        adam.Restore(7, m, v);
        // tp 2 on devices 1, 0 (reversed), then pp 2 on 0, 1: the second replica is filled worker to worker.
        using var tp = pool.Create("tp", cfg, false, new ParallelLayout([1, 0], 1, 1, 2), 1, spec);
        using var pp = pool.Create("pp", cfg, false, new ParallelLayout([0, 1], 2, 1, 1), 2, null);
        tp.CopyFrom(full);
        tp.MoveOptimizerState(adam, toShards: true);
        pp.CopyFrom(tp);
        using var back = new ReaLNative.Engine.Model.LlamaModel(cfg, false);
        pp.CopyTo(back);
        Assert.Equal(full.Parameters.ToArray(), back.Parameters.ToArray());
        using var adam2 = spec.Create(back);
        tp.MoveOptimizerState(adam2, toShards: false);
        Assert.Equal(7, adam2.Step);
        Assert.Equal(m, adam2.FirstMoment.ToArray());
        Assert.Equal(v, adam2.SecondMoment.ToArray());
        Assert.Equal(1e-3f, tp.LearningRate, 6);
        // The master read the workers' shards from their processes, or never did.
        if (processRead) Assert.True(pool.ProcessReadBytes >= full.ParameterCount * 4 * 2, $"{pool.ProcessReadBytes} bytes read");
        else Assert.Equal(0, pool.ProcessReadBytes);
        // pp.CopyFrom(tp) went worker to worker: out of each other's mapped shards, or not at all mapped.
        long mapped = pool.WorkerMemory()!.Sum(r => (long)r["peer_mapped_bytes"]!);
        if (processRead && sharedMemory) Assert.True(mapped >= full.ParameterCount * 4, $"{mapped} bytes mapped");
        else Assert.Equal(0, mapped);
    }
}
