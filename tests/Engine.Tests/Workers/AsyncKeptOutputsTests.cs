// An asynchronous run (`mode: async`, Runs/AsyncRollouts.cs) under a plan in worker processes keeps
// the per-action outputs of its generation and inference calls with the workers (as a synchronous
// run does) until the trainer has consumed the batch: what the master reads of them (a stale
// batch's loss inputs, a checkpoint's rollouts.bin) it fetches then. The run, its checkpoints
// (rollouts.bin included) and a resume are bit-identical to the run whose master gets every output
// with its call (REALN_WORKER_TO_WORKER_DATA=0), the master receives fewer bytes, and no output is
// left held when the stage ends or stops (Pipeline.CheckNothingHeld). critic_inf's kept values send
// no last score (nothing reads them).
using System.Text.Json.Nodes;
using ReaLNative.Engine.Generation;
using ReaLNative.Engine.Layout;
using ReaLNative.Engine.Model;
using ReaLNative.Engine.Parallelism;
using ReaLNative.Engine.Runs;
using ReaLNative.Engine.Tests.Runs;
using ReaLNative.Engine.Workers;
using Xunit;

namespace ReaLNative.Engine.Tests.Workers;

[Collection("worker processes")]
public sealed class AsyncKeptOutputsTests(Xunit.Abstractions.ITestOutputHelper output)
{
    private static long Bytes(JsonObject s, string k) => (long)s["data_bytes"]![k]!;

    /// <summary>Every file of every checkpoint of <paramref name="dir"/> whose bytes are the run's
    /// state (weights, optimizer moments, rollouts.bin with its records' wall times zeroed), by relative path.</summary>
    private static SortedDictionary<string, byte[]> CheckpointFiles(string dir)
    {
        var root = Path.Combine(dir, "checkpoints");
        var files = new SortedDictionary<string, byte[]>(StringComparer.Ordinal);
        foreach (var f in Directory.GetFiles(root, "*", SearchOption.AllDirectories))
            if (f.EndsWith(".safetensors", StringComparison.Ordinal) || f.EndsWith(".bin", StringComparison.Ordinal))
                files[Path.GetRelativePath(root, f)] = Path.GetFileName(f) == RolloutFile.Name ? WithoutSeconds(File.ReadAllBytes(f)) : File.ReadAllBytes(f);
        return files;
    }

    /// <summary>A rollouts.bin (format 2) with each call record's seconds zeroed (wall times differ
    /// run to run); everything else as written, walked field by field (a malformed file fails).</summary>
    private static byte[] WithoutSeconds(byte[] bytes)
    {
        var copy = (byte[])bytes.Clone();
        using var r = new BinaryReader(new MemoryStream(bytes));
        Assert.Equal("REALNRO2"u8.ToArray(), r.ReadBytes(8));
        void Skip(int elementSize) { long n = r.ReadInt32(); r.BaseStream.Position += elementSize * n; }
        void Jagged(int elementSize) { int n = r.ReadInt32(); for (int i = 0; i < n; i++) Skip(elementSize); }
        int batches = r.ReadInt32();
        for (int b = 0; b < batches; b++)
        {
            r.ReadInt32(); r.ReadInt32();
            int records = r.ReadInt32();
            for (int i = 0; i < records; i++)
            {
                r.ReadString();
                Array.Clear(copy, (int)r.BaseStream.Position, 8);
                r.ReadDouble();
                int figures = r.ReadInt32();
                for (int f = 0; f < figures; f++) { r.ReadString(); r.ReadDouble(); }
            }
            int keys = r.ReadInt32();
            for (int k = 0; k < keys; k++)
            {
                r.ReadString();
                switch (r.ReadByte())
                {
                    case 1:
                        Jagged(4); Jagged(4); Jagged(4);
                        if (r.ReadBoolean()) Jagged(1);
                        Skip(1); r.ReadInt64();
                        break;
                    case 2: Skip(4); break;
                    case 3: Skip(1); break;
                    case 4: Skip(1); break;
                    case 5: Skip(4); break;
                    case var t: throw new Xunit.Sdk.XunitException($"rollouts.bin: unknown tag {t}");
                }
            }
        }
        Assert.Equal(bytes.Length, r.BaseStream.Position);
        return copy;
    }

    /// <summary>
    /// Async PPO or GRPO (sft 6 + rm 4 + 4 RL iterations, a checkpoint every 2) on a two-device plan,
    /// generation on device 0 (with the reward and reference inference where
    /// <paramref name="scoreOnRolloutSide"/>), decoupled loss, finish_batch or interrupt: metrics,
    /// models and every checkpoint file (rollouts.bin with the batches generated ahead) of the run in
    /// worker processes equal those of the run whose master gets every output with its call
    /// (REALN_WORKER_TO_WORKER_DATA=0) and of the in-process run. A stale batch's loss inputs are
    /// built on the loss ranks (advantages derived there, behaviour log-probs the kept generation's,
    /// the proximal log-probs of minibatches 1.. kept where they were computed: the trainer or the
    /// rollout side): the master receives exactly <paramref name="toMaster"/> bytes; before, with
    /// those inputs built on the master, <paramref name="masterLoss"/> (what is left: the generation's
    /// per-sequence counts and scores, the interrupted generations' first commands, the proximal
    /// log-prob calls' sequence ids, and the kept outputs that rollouts.bin fetches at a checkpoint);
    /// before the outputs stayed on the workers at all (session 17), <paramref name="before"/> (0: not measured).
    /// </summary>
    [Theory]
    [InlineData("ppo", 1, false, false, 2_380L, 3_748L, 5_720L)]
    [InlineData("ppo", 2, true, false, 3_096L, 4_100L, 5_800L)]
    [InlineData("ppo", 1, true, true, 3_532L, 4_744L, 6_716L)]
    [InlineData("grpo", 1, true, false, 2_376L, 3_156L, 0L)]
    public void AsyncRunsKeepTheirOutputsOnTheWorkersAndTheRunIsUnchanged(string algorithm, int staleness, bool scoreOnRolloutSide, bool interrupt,
                                                                         long toMaster, long masterLoss, long before)
    {
        var cfg = AsyncRunTests.Config($"mode: async\nmax_staleness: {staleness}{(interrupt ? "\nweight_update: interrupt" : "")}", algorithm, iterations: 4, checkpointEvery: 2);
        var plan = AsyncRunTests.TwoGroups(genDevice: 0, scoringDevice: scoreOnRolloutSide ? 0 : 1);
        if (algorithm != "ppo") plan = plan with { Calls = [.. plan.Calls.Where(c => c.Model != "critic")] };
        string[] models = algorithm == "ppo" ? ["actor", "critic"] : ["actor"];
        string a = PlanExecutionTests.TempDir(), b = PlanExecutionTests.TempDir(), c = PlanExecutionTests.TempDir();
        try
        {
            using var direct = new Pipeline(cfg, a, plan: plan, hosts: WorkerProcessTests.Processes());
            using var viaMaster = new Pipeline(cfg, b, plan: plan, hosts: WorkerProcessTests.Processes(workerToWorkerData: false));
            using var inProcess = new Pipeline(cfg, c, plan: plan);
            var d = direct.Run(resume: false);
            var m = viaMaster.Run(resume: false);
            inProcess.Run(resume: false);
            foreach (var model in models)
            {
                Assert.Equal(inProcess.Model(model).Parameters.ToArray(), direct.Model(model).Parameters.ToArray());
                Assert.Equal(inProcess.Model(model).Parameters.ToArray(), viaMaster.Model(model).Parameters.ToArray());
            }
            var want = AsyncRunTests.Content(AsyncRunTests.Lines(c)).ToList();
            Assert.Contains(want, l => l.Contains("\"call\":\"async\"") && l.Contains("\"staleness\":" + staleness));
            Assert.Equal(want, AsyncRunTests.Content(AsyncRunTests.Lines(a)));
            Assert.Equal(want, AsyncRunTests.Content(AsyncRunTests.Lines(b)));
            var fc = CheckpointFiles(c);
            Assert.Contains(fc.Keys, k => k.EndsWith(RolloutFile.Name, StringComparison.Ordinal));
            foreach (var (run, files) in new[] { ("worker to worker", CheckpointFiles(a)), ("via the master", CheckpointFiles(b)) })
            {
                Assert.Equal(fc.Keys, files.Keys);
                foreach (var k in fc.Keys) Assert.True(fc[k].AsSpan().SequenceEqual(files[k]), $"checkpoint file {k} differs ({run})");
            }
            output.WriteLine($"async {algorithm}, max_staleness {staleness}{(interrupt ? ", interrupt" : "")}: master received {Bytes(m, "to_master")} bytes via the master, {Bytes(d, "to_master")} with worker-to-worker data");
            Assert.Equal(toMaster, Bytes(d, "to_master"));
            Assert.True(Bytes(d, "to_master") < masterLoss && masterLoss < Bytes(m, "to_master") && (before == 0 || masterLoss < before));
        }
        finally { Directory.Delete(a, true); Directory.Delete(b, true); Directory.Delete(c, true); }
    }

    /// <summary>An async run in worker processes stopped after PPO iteration 2 (its checkpoint holds
    /// the batches generated ahead, fetched from the workers; the queued batches are released, or the
    /// stage's end would fail naming the outputs still held) and resumed ends bit-identical to the
    /// uninterrupted worker run, which equals the in-process run.</summary>
    [Fact]
    public void AStoppedAsyncRunReleasesItsQueuedBatchesAndResumesBitExactly()
    {
        var cfg = AsyncRunTests.Config("mode: async\nmax_staleness: 2", iterations: 5, checkpointEvery: 1);
        var plan = AsyncRunTests.TwoGroups(genDevice: 0, scoringDevice: 0);
        string full = PlanExecutionTests.TempDir(), cut = PlanExecutionTests.TempDir();
        try
        {
            float[] want;
            using (var p = new Pipeline(cfg, full, plan: plan, hosts: WorkerProcessTests.Processes())) { p.Run(resume: false); want = p.Model("actor").Parameters.ToArray(); }
            Assert.Equal(AsyncRunTests.Run(cfg, plan).Actor, want);
            IReplicaHost? host = null;
            Func<int, IReplicaHost> capture = n => host = WorkerProcessTests.Processes()(n);
            using (var p = new Pipeline(cfg, cut, plan: plan, hosts: capture))
            {
                Assert.True((bool)p.Run(resume: false, stopAfterIterations: 6 + 4 + 2)["interrupted"]!);
                Assert.NotNull(host);
                Assert.Equal(0, host!.HeldOutputs);
            }
            var latest = Directory.GetDirectories(Path.Combine(cut, "checkpoints"), "step-*").OrderBy(d => d.Length).ThenBy(d => d).Last();
            Assert.True(File.Exists(Path.Combine(latest, RolloutFile.Name)), $"{latest} holds no {RolloutFile.Name}");
            using (var p = new Pipeline(cfg, cut, plan: plan, hosts: WorkerProcessTests.Processes()))
            {
                p.Run(resume: true);
                Assert.Equal(want, p.Model("actor").Parameters.ToArray());
                Assert.Equal(AsyncRunTests.Content(AsyncRunTests.Lines(full)), AsyncRunTests.Content(AsyncRunTests.Lines(cut)));
            }
        }
        finally { Directory.Delete(full, true); Directory.Delete(cut, true); }
    }

    /// <summary>critic_inf reads no last score: its kept values (KeptActionValues) bring back
    /// exactly one float per sequence fewer than KeptValues (which rew_inf uses for its scores), and
    /// the values fetched later are the same bits.</summary>
    [Fact]
    public void KeptActionValuesSendNoLastScores()
    {
        using var pool = new WorkerPool(4, new WorkerPoolOptions { Executable = WorkerProcessTests.Realn(), ThreadsPerWorker = 1 });
        ParallelLayout gen = new([0, 1], 1, 2, 1), critic = new([0, 1, 2, 3], 1, 2, 2);
        var rng = new Random(9);
        int[][] prompts = [.. Enumerable.Range(0, 6).Select(i => Enumerable.Range(0, 2 + i % 3).Select(_ => 3 + rng.Next(20)).ToArray())];
        GenerationResult g;
        using (var actor = pool.Create("actor", LlamaConfig.Preset("tiny"), false, gen, 1, null))
        {
            actor.Initialise(41);
            g = actor.Generate(prompts, new GenerationOptions { MaxNewTokens = 5, Temperature = 1f, EosToken = 2, Seed = 7 });
        }
        var batch = new ScoredBatch([.. Enumerable.Range(0, prompts.Length).Select(g.Sequence)], [.. prompts.Select(p => p.Length)]) { Source = g.Source };
        using var c = pool.Create("critic", LlamaConfig.Preset("tiny"), true, critic, 2, null);
        c.Initialise(47);
        long v0 = pool.DataBytes!.Value.ToMaster;
        var (kv, _) = c.KeptValues(batch);
        long v1 = pool.DataBytes!.Value.ToMaster;
        var ka = c.KeptActionValues(batch);
        long v2 = pool.DataBytes!.Value.ToMaster;
        output.WriteLine($"critic values kept: {v1 - v0} bytes back with the last scores, {v2 - v1} without; {prompts.Length} sequences");
        Assert.Equal(v1 - v0 - 4L * prompts.Length, v2 - v1);
        Assert.False(ka.Fetched);
        Assert.True(kv.Values.AsSpan().SequenceEqual(ka.Values), "critic values");
        kv.Release(); ka.Release();
        Assert.Equal(0, pool.HeldOutputs);
    }
}
