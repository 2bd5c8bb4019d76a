// A train call's minibatch is one command to the workers of its layout: the last pipeline stage
// computes the clipped policy or value loss and its per-token gradient itself, runs backward and
// the optimizer step, and returns only the loss figures (ShardReplica.PolicyStep / ValueStep). The
// old protocol took two master round trips per minibatch (the forward's log-probs or values back to
// the master, the master's per-token gradients out with the backward and step); both must give the
// same bits.
using ReaLNative.Engine.Algorithms;
using ReaLNative.Engine.Layout;
using ReaLNative.Engine.Model;
using ReaLNative.Engine.Optim;
using ReaLNative.Engine.Parallelism;
using ReaLNative.Engine.Runs;
using ReaLNative.Engine.Stages;
using ReaLNative.Engine.Tests.Runs;
using ReaLNative.Engine.Workers;
using Xunit;

namespace ReaLNative.Engine.Tests.Workers;

[Collection("worker processes")]
public sealed class TrainStepTests(Xunit.Abstractions.ITestOutputHelper output)
{
    /// <summary>A minibatch of a 5-sequence rollout (sequences 1..3, with their actions from index 3):
    /// per layout (pp2, pp2 x tp2, pp2 x dp2, dp2 x tp2; 2 micro-batches) and for the actor (clipped
    /// policy loss with a reference, behaviour log-probs, a dropped sequence, token and sequence
    /// aggregation) and the critic (clipped value loss), two steps on it (epochs): the first one's
    /// ratio base the forward's own log-probs. The in-process and the worker replica's fused steps
    /// equal the old two-step protocol (forward, the loss on the host, backward, step) bit for bit:
    /// loss figures, gradient norms and parameters. In worker processes each step is one operation
    /// (the old protocol: two), and the master sends the loss inputs of a rank's part once: the second
    /// epoch's step sends nothing but the batch.</summary>
    [Fact]
    public void FusedTrainStepsEqualTheHostLossOneRoundTripEach()
    {
        var cfg = LlamaConfig.Preset("tiny");
        var spec = new OptimizerSpec(new LrSchedule(1e-2), 0.9f, 0.95f, 1e-8f, 0f, 1f);
        using var pool = new WorkerPool(4, new WorkerPoolOptions { Executable = WorkerProcessTests.Realn(), ThreadsPerWorker = 1 });
        using var cluster = new LocalCluster(4);
        var batch = new ScoredBatch([[1, 2, 3, 4, 5, 6], [7, 8, 9], [10, 11, 12, 13]], [2, 1, 3]);
        long batchBytes = new WireWriter().Batch(batch).ToArray().Length;
        const int s0 = 1, a0 = 3, rolloutSeqs = 5;
        int actions = a0 + batch.Actions + 2;
        var rng = new Random(11);
        float[] Floats(int n, float scale, float shift) => [.. Enumerable.Range(0, n).Select(_ => (rng.NextSingle() - 0.5f) * scale + shift)];
        foreach (var layout in new[] { new ParallelLayout([0, 1], 2, 1, 1), new ParallelLayout([3, 2, 1, 0], 2, 1, 2), new ParallelLayout([0, 1, 2, 3], 2, 2, 1),
                                       new ParallelLayout([2, 3, 0, 1], 1, 2, 2) })
            foreach (string role in new[] { "actor-token", "actor-sequence", "critic" })
            {
                bool critic = role == "critic", fromForward = role == "actor-token";
                string what = $"{role} on {layout}";
                var keep = new bool[rolloutSeqs]; Array.Fill(keep, true); keep[s0 + 1] = false;
                // Log-probs near the model's: ratios within and beyond the clip range, behaviour weights beyond the cap.
                float[] Near(float[] lp, float scale) => [.. Enumerable.Range(0, actions).Select(i => i >= a0 && i < a0 + lp.Length ? lp[i - a0] + (rng.NextSingle() - 0.5f) * scale : 0f)];
                float[] modelLp;
                using (var probe = cluster.Create("probe", cfg, false, new ParallelLayout([0], 1, 1, 1), 1, null))
                {
                    probe.Initialise(41);
                    modelLp = probe.LogProbs(batch, 1f);
                }
                float[] adv = Floats(actions, 2, 0), behaviour = Near(modelLp, 1.4f), reference = Near(modelLp, 0.4f);
                // Every other token's ratio 1.65 or 0.61 (clipped: the direction its advantage pushes), the others within the range.
                var ratioBase = Near(modelLp, 0.1f);
                for (int i = a0; i < a0 + batch.Actions; i += 2) ratioBase[i] = modelLp[i - a0] - 0.5f * Math.Sign(adv[i]);
                float[] oldValues = Floats(actions, 0.2f, 0), returns = Floats(actions, 1, 0);
                var options = new PolicyLossOptions(0.2, 0.28, critic ? "token" : role[6..], 0.05, 2);
                var figures = new List<string>[3];
                var parameters = new float[3][];
                for (int k = 0; k < 3; k++)   // 0: host loss in process (the old protocol), 1: fused in process, 2: fused in workers
                {
                    figures[k] = [];
                    IReplicaHost host = k == 2 ? pool : cluster;
                    using var r = host.Create(what, cfg, critic, layout, 2, spec);
                    r.Initialise(41);
                    var policy = new PolicyLossInputs([.. adv], [.. ratioBase], [.. behaviour], [.. reference], [.. keep], options);
                    var values = new ValueLossInputs([.. oldValues], [.. returns], 0.2);
                    for (int epoch = 0; epoch < 2; epoch++)
                    {
                        int ops = pool.OpTimings.Count;
                        long sent = pool.DataBytes!.Value.FromMaster;
                        if (critic)
                        {
                            var (st, norm) = k == 0 ? HostLosses.ValueStep(new ReplicaOps(r), batch, a0, values) : r.ValueStep(batch, a0, values);
                            figures[k].Add($"{st} {norm:R}");
                        }
                        else
                        {
                            bool own = fromForward && epoch == 0;
                            var (st, norm) = k == 0 ? HostLosses.PolicyStep(new ReplicaOps(r), batch, s0, a0, 1f, policy, ratioBaseFromForward: own)
                                                    : r.PolicyStep(batch, s0, a0, 1f, policy, ratioBaseFromForward: own);
                            figures[k].Add($"{st} {norm:R}");
                            Assert.True(st.Tokens == batch.Actions - (batch.ActionCu[2] - batch.ActionCu[1]) && st.Sequences == 2, $"{what}: the dropped sequence counts ({st})");
                            if (!fromForward && epoch == 0) Assert.True(st.ClipFraction > 0 && st.ClipFraction < 1, $"{what}: a loss with some clipped tokens ({st})");
                        }
                        if (k != 2) continue;
                        Assert.Equal(ops + 1, pool.OpTimings.Count);
                        long expected = layout.Devices.Count * batchBytes;   // the batch goes inline to every rank (no generation kept it)
                        if (epoch == 0)
                        {
                            var parts = ReaLNative.Engine.Generation.Split.Contiguous(batch.Packed.SeqLens, layout.Dp);
                            for (int rank = 0; rank < layout.Devices.Count; rank++)
                            {
                                var (pipe, data, _) = layout.Coords(rank);
                                if (pipe != layout.Pp - 1) continue;
                                int first = parts[data][0], end = parts[data][^1] + 1;
                                long n = batch.ActionCu[end] - batch.ActionCu[first];
                                // old values and returns; or keep flags, advantages, ratio bases, behaviour and reference log-probs
                                expected += critic ? 2 * (4 + 4 * n) : 4 + (end - first) + 4 * (4 + 4 * n);
                            }
                        }
                        Assert.Equal(expected, pool.DataBytes!.Value.FromMaster - sent);
                    }
                    using var back = new LlamaModel(cfg, critic);
                    r.CopyTo(back);
                    parameters[k] = back.Parameters.ToArray();
                }
                output.WriteLine($"{what}: {string.Join(" | ", figures[0])}");
                for (int k = 1; k < 3; k++)
                {
                    Assert.Equal(figures[0], figures[k]);
                    Assert.True(parameters[0].AsSpan().SequenceEqual(parameters[k]), $"{what}: parameters after the steps ({(k == 1 ? "in process" : "workers")})");
                }
            }
    }

    /// <summary>A PPO run under the mixed test plan in worker processes (2 iterations, 2 epochs x 2
    /// minibatches): actor_train and critic_train make one master round trip per optimizer step
    /// (policy_step, value_step) and no other operation: no forward whose log-probs or values the
    /// master's loss needs, no backward carrying its gradients (the old protocol made 16 of each per
    /// run beside the inference calls' 2 log-prob and 4 value forwards).</summary>
    [Fact]
    public void PpoTrainCallsMakeOneMasterRoundTripPerOptimizerStep()
    {
        string dir = PlanExecutionTests.TempDir();
        try
        {
            WorkerPool? pool = null;
            var config = PlanExecutionTests.Config();
            using var run = new Pipeline(config, dir, plan: PlanExecutionTests.MixedPlan(),
                                         hosts: n => pool = (WorkerPool)WorkerProcessTests.Processes()(n));
            run.Run(resume: false);
            var t = pool!.OpTimings;
            output.WriteLine(t.ToString());
            int iterations = config.Stages[^1].Iterations, steps = iterations * config.Stages[^1].Ppo.PpoEpochs * config.Stages[^1].Batch.Minibatches;
            Assert.Equal(steps, t.CountOf("policy_step"));
            Assert.Equal(steps, t.CountOf("value_step"));
            Assert.Equal(iterations, t.CountOf("logprobs"));        // ref_inf
            Assert.Equal(2 * iterations, t.CountOf("values"));      // rew_inf, critic_inf
            foreach (var op in new[] { "backward_logprobs", "backward_values" })
            {
                Assert.Equal(0, t.CountOf(op));
                Assert.Equal(0, t.CountOf(op + " and optimizer step"));
            }
            Assert.Equal(t.CountOf("sft"), t.CountOf("step"));      // the SFT stage's steps (the plan's actor_train layout runs it)
        }
        finally { Directory.Delete(dir, true); }
    }

    /// <summary>The old protocol's operations on an IReplica (what HostLosses runs on the single device).</summary>
    private sealed class ReplicaOps(IReplica r) : IModelCalls
    {
        public float[] LogProbs(ScoredBatch b, float temperature) => r.LogProbs(b, temperature);
        public (float[] ActionValues, float[] LastScores) Values(ScoredBatch b) => r.Values(b);
        public void BackwardLogProbs(ScoredBatch b, float temperature, float[] d) => r.BackwardLogProbs(b, temperature, d);
        public void BackwardValues(ScoredBatch b, float[] dv, float[] dl) => r.BackwardValues(b, dv, dl);
        public double SftStep(ScoredBatch b) => r.SftStep(b);
        public double Step() => r.Step();
        public (ClippedPolicyStats Stats, double GradNorm) PolicyStep(ScoredBatch minibatch, int s0, int a0, float temperature, PolicyLossInputs inputs, bool ratioBaseFromForward) =>
            throw new NotSupportedException();
        public (ValueLossStats Stats, double GradNorm) ValueStep(ScoredBatch minibatch, int a0, ValueLossInputs inputs) => throw new NotSupportedException();
        public float LearningRate => r.LearningRate;
        public ReaLNative.Engine.Generation.GenerationResult Generate(IReadOnlyList<int[]> prompts, ReaLNative.Engine.Generation.GenerationOptions opt) => r.Generate(prompts, opt);
    }
}
