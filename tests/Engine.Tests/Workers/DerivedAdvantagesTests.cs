// PPO's advantages and returns under worker processes: the inference outputs (the generation's and
// the reference's log-probs, the critic's values) stay on the workers that computed them, and the
// ranks that compute a train call's loss read them worker to worker and derive the advantages,
// returns and KL themselves (Parallelism/RolloutAdvantages.cs, the master's function), so the
// master sends a train call nothing per token: the shaped scores, EOS and keep flags of the
// rollout's sequences, once per call.
using System.Diagnostics;
using ReaLNative.Engine.Config;
using ReaLNative.Engine.Generation;
using ReaLNative.Engine.Layout;
using ReaLNative.Engine.Model;
using ReaLNative.Engine.Optim;
using ReaLNative.Engine.Parallelism;
using ReaLNative.Engine.Workers;
using ReaLNative.Interop;
using Xunit;

namespace ReaLNative.Engine.Tests.Workers;

[Collection("worker processes")]
public sealed class DerivedAdvantagesTests(Xunit.Abstractions.ITestOutputHelper output)
{
    private static readonly LlamaConfig Cfg = LlamaConfig.Preset("tiny");
    private static readonly OptimizerSpec Spec = new(new LrSchedule(1e-2), 0.9f, 0.95f, 1e-8f, 0f, 1f);
    // gamma, lambda below 1 and a reward clip some scores exceed: every term of the computation matters.
    private static readonly PpoConfig Ppo = new(KlCoef: 0.05, ClipEps: 0.2, ValueClipEps: 0.2, Gamma: 0.97, Lambda: 0.9, PpoEpochs: 2, AdvNorm: true, MaxRewardClip: 1.5);
    private const int Minibatches = 2;

    /// <summary>A rollout the workers generated and scored: the batch (by store id), the generation's
    /// log-probs (attached as the ones its collecting ranks keep), the reference's log-probs and the
    /// critic's values (kept by their collecting ranks), scores and EOS flags.</summary>
    private sealed record Rollout(ScoredBatch Batch, int[][] Sequences, int[] Prompts, float[] LogProbs, float[] Ref, float[] Values, float[] Scores, bool[] Eos);

    private static Rollout Generate(WorkerPool pool, ParallelLayout gen, ParallelLayout reference, IReplica critic)
    {
        var rng = new Random(5);
        var prompts = Enumerable.Range(0, 6).Select(i => Enumerable.Range(0, 2 + i % 3).Select(_ => 3 + rng.Next(20)).ToArray()).ToArray();
        GenerationResult g;
        using (var actor = pool.Create("actor gen", Cfg, false, gen, 1, null))
        {
            actor.Initialise(41);
            g = actor.Generate(prompts, new GenerationOptions { MaxNewTokens = 5, Temperature = 1f, EosToken = 2, Seed = 7 });
        }
        int[][] seqs = [.. Enumerable.Range(0, prompts.Length).Select(g.Sequence)];
        int[] lens = [.. prompts.Select(p => p.Length)];
        var batch = new ScoredBatch(seqs, lens) { Source = g.Source };
        Assert.NotNull(g.Source);
        var logp = g.LogProbs.SelectMany(x => x).ToArray();
        g.Source!.AttachGenerationLogProbs(logp);
        float[] refLp;
        using (var r = pool.Create("ref", Cfg, false, reference, 2, null))
        {
            r.Initialise(43);
            refLp = r.LogProbs(batch, 1f);
        }
        var values = critic.Values(batch).ActionValues;
        var scores = Enumerable.Range(0, prompts.Length).Select(_ => (rng.NextSingle() - 0.5f) * 5).ToArray();
        // EOS flags of both kinds (the tiny random model seldom samples its EOS token): they select which scores reach the rewards.
        return new Rollout(batch, seqs, lens, logp, refLp, values, scores, [.. Enumerable.Range(0, prompts.Length).Select(i => i % 3 != 1)]);
    }

    /// <summary>Minibatch <paramref name="k"/> of the rollout (a run of sequences, as Stages/Rollout.Slice makes it).</summary>
    private static (ScoredBatch Batch, int S0, int A0) Minibatch(Rollout r, int k)
    {
        int n = r.Sequences.Length, s0 = k * n / Minibatches, s1 = (k + 1) * n / Minibatches;
        return (new ScoredBatch(r.Sequences[s0..s1], r.Prompts[s0..s1]) { Source = r.Batch.Source?.Slice(s0, s1) }, s0, r.Batch.ActionCu[s0]);
    }

    /// <summary>
    /// A rollout generated on workers 0-1 (dp2), scored by a reference on workers 2-3 (pp2) and a
    /// critic on all four (dp2 x tp2); then actor_train (pp2 x tp2) and critic_train (the critic's
    /// replica), 2 epochs x 2 minibatches each, with loss inputs the loss ranks derive. Against the
    /// in-process replicas trained on the master's advantages and returns (the same function on the
    /// master's copies): every loss figure, gradient norm and the final parameters bit for bit, the
    /// KL the workers report bit for bit; the master never computes the advantages, and sends a
    /// train call, once, exactly the scores and EOS flags (and the policy's keep flags) of the
    /// rollout to each loss rank: no per-token float. The loss ranks read the outputs worker to worker.
    /// </summary>
    [Fact]
    public void LossRanksDeriveTheAdvantagesFromResidentOutputsBitForBit()
    {
        using var pool = new WorkerPool(4, new WorkerPoolOptions { Executable = WorkerProcessTests.Realn(), ThreadsPerWorker = 1 });
        using var cluster = new LocalCluster(4);
        using var stream = NativeStream.Cpu();
        ParallelLayout gen = new([0, 1], 1, 2, 1), reference = new([2, 3], 2, 1, 1), critic = new([0, 1, 2, 3], 1, 2, 2), actor = new([3, 2, 1, 0], 2, 1, 2);
        using var criticW = pool.Create("critic", Cfg, true, critic, 2, Spec);
        criticW.Initialise(47);
        var ro = Generate(pool, gen, reference, criticW);
        int n = ro.Batch.Packed.Count;
        var (adv, ret, kl) = RolloutAdvantages.Ppo(stream, ro.LogProbs, ro.Ref, ro.Values, ro.Scores, ro.Eos, ro.Batch.ActionCu, Ppo);
        var keep = new bool[n]; Array.Fill(keep, true);
        var options = new PolicyLossOptions(0.2, 0.2, LossAggregation.Token, 0, 0);

        var figures = new List<string>[2];
        var parameters = new float[2][][];
        var derived = new PpoAdvantageInputs(ActionFloats.Here(ro.LogProbs), ActionFloats.Here(ro.Ref), ActionFloats.Here(ro.Values), ro.Scores, ro.Eos, ro.Batch.ActionCu, Ppo, stream) { Source = ro.Batch.Source };
        for (int k = 0; k < 2; k++)   // 0: in process, on the master's arrays; 1: workers, derived
        {
            figures[k] = [];
            IReplicaHost host = k == 0 ? cluster : pool;
            using var a = host.Create("actor", Cfg, false, actor, 2, Spec);
            a.Initialise(41);
            using var fresh = k == 0 ? cluster.Create("critic", Cfg, true, critic, 2, Spec) : null;
            fresh?.Initialise(47);
            var c = fresh ?? criticW;
            var policy = k == 0 ? new PolicyLossInputs(adv, ro.LogProbs, [], [], keep, options) : PolicyLossInputs.FromPpo(derived, keep, options);
            var value = k == 0 ? new ValueLossInputs(ro.Values, ret, Ppo.ValueClipEps) : ValueLossInputs.FromPpo(derived, Ppo.ValueClipEps);
            for (int epoch = 0; epoch < 2; epoch++)
                for (int m = 0; m < Minibatches; m++)
                {
                    var (mb, s0, a0) = Minibatch(ro, m);
                    var (fromMaster, between, _) = pool.DataBytes!.Value;
                    var (ps, pn) = a.PolicyStep(mb, s0, a0, 1f, policy, ratioBaseFromForward: false);
                    var (fromMaster2, between2, _) = pool.DataBytes!.Value;
                    var (vs, vn) = c.ValueStep(mb, a0, value);
                    var (fromMaster3, between3, _) = pool.DataBytes!.Value;
                    figures[k].Add($"{ps} {pn:R} | {vs} {vn:R}");
                    if (k == 0) continue;
                    bool first = epoch == 0 && m == 0;
                    // To each loss rank, once per call: keep flags, scores and EOS flags (policy); scores and EOS flags (value).
                    Assert.Equal(first ? 2 * ((4 + n) + (4 + 4 * n) + (4 + n)) : 0, fromMaster2 - fromMaster);
                    Assert.Equal(first ? 4 * ((4 + 4 * n) + (4 + n)) : 0, fromMaster3 - fromMaster2);
                    if (first) Assert.True(between2 > between && between3 > between2, "the loss ranks read the outputs from other workers");
                }
            parameters[k] = [.. new[] { a, c }.Select((r, i) =>
            {
                using var back = new LlamaModel(Cfg, i == 1);
                r.CopyTo(back);
                return back.Parameters.ToArray();
            })];
        }
        output.WriteLine(string.Join("\n", figures[0]));
        Assert.Equal(figures[0], figures[1]);
        Assert.True(parameters[0][0].AsSpan().SequenceEqual(parameters[1][0]), "actor parameters");
        Assert.True(parameters[0][1].AsSpan().SequenceEqual(parameters[1][1]), "critic parameters");
        Assert.False(derived.ComputedHere, "the master computed the advantages the loss ranks derive");
        Assert.Equal(BitConverter.DoubleToInt64Bits(kl), BitConverter.DoubleToInt64Bits(derived.Kl));
    }

    /// <summary>
    /// The critic-free algorithms (GRPO, RLOO, ReMax) the same way: per-sequence advantages (one
    /// sequence dropped, as dynamic sampling does), the clipped surrogate with the k3 term against the
    /// reference's log-probs, sequence aggregation; actor_train on a dp2 x tp2 layout. The loss ranks
    /// read the generation's and the reference's log-probs worker to worker and spread the advantages
    /// themselves: loss figures, gradient norms, parameters and the KL bit for bit against the
    /// in-process replica on the master's arrays, and the master sends each loss rank only the keep
    /// flags and the per-sequence advantages, once.
    /// </summary>
    [Fact]
    public void CriticFreeLossRanksSpreadTheSequenceAdvantagesAndReadTheLogProbsBitForBit()
    {
        using var pool = new WorkerPool(4, new WorkerPoolOptions { Executable = WorkerProcessTests.Realn(), ThreadsPerWorker = 1 });
        using var cluster = new LocalCluster(4);
        ParallelLayout gen = new([2, 3], 1, 2, 1), reference = new([0, 1], 2, 1, 1), critic = new([0, 1], 1, 2, 1), actor = new([1, 0, 3, 2], 1, 2, 2);
        using var criticW = pool.Create("critic", Cfg, true, critic, 1, Spec);   // unused here: the rollout helper scores with it
        criticW.Initialise(47);
        var ro = Generate(pool, gen, reference, criticW);
        int n = ro.Batch.Packed.Count;
        var seqAdv = ro.Scores.Select(x => x / 2).ToArray();
        var keep = new bool[n]; Array.Fill(keep, true); keep[1] = false;
        var options = new PolicyLossOptions(0.2, 0.28, LossAggregation.Sequence, 0.05, 0);
        var tokenAdv = RolloutAdvantages.TokenAdvantages(seqAdv, ro.Batch.ActionCu);
        double kl = RolloutAdvantages.MeanKl(ro.LogProbs, ro.Ref, n);
        var derived = new SequenceAdvantageInputs(ActionFloats.Here(ro.LogProbs), ActionFloats.Here(ro.Ref), seqAdv, ro.Batch.ActionCu) { Source = ro.Batch.Source };
        var figures = new List<string>[2];
        var parameters = new float[2][];
        for (int k = 0; k < 2; k++)
        {
            figures[k] = [];
            IReplicaHost host = k == 0 ? cluster : pool;
            using var a = host.Create("actor", Cfg, false, actor, 2, Spec);
            a.Initialise(41);
            var policy = k == 0 ? new PolicyLossInputs(tokenAdv, ro.LogProbs, [], ro.Ref, keep, options) : PolicyLossInputs.FromSequenceAdvantages(derived, keep, options);
            for (int epoch = 0; epoch < 2; epoch++)
                for (int m = 0; m < Minibatches; m++)
                {
                    var (mb, s0, a0) = Minibatch(ro, m);
                    var (fromMaster, between, _) = pool.DataBytes!.Value;
                    var (ps, pn) = a.PolicyStep(mb, s0, a0, 1f, policy, ratioBaseFromForward: false);
                    figures[k].Add($"{ps} {pn:R}");
                    if (k == 0) continue;
                    bool first = epoch == 0 && m == 0;
                    var (fromMaster2, between2, _) = pool.DataBytes!.Value;
                    Assert.Equal(first ? 4 * ((4 + n) + (4 + 4 * n)) : 0, fromMaster2 - fromMaster);
                    if (first) Assert.True(between2 > between, "the loss ranks read the log-probs from other workers");
                }
            using var back = new LlamaModel(Cfg, false);
            a.CopyTo(back);
            parameters[k] = back.Parameters.ToArray();
        }
        output.WriteLine(string.Join("\n", figures[0]));
        Assert.Equal(figures[0], figures[1]);
        Assert.True(parameters[0].AsSpan().SequenceEqual(parameters[1]), "actor parameters");
        Assert.False(derived.ComputedHere, "the master spread the advantages the loss ranks derive");
        Assert.Equal(BitConverter.DoubleToInt64Bits(kl), BitConverter.DoubleToInt64Bits(derived.Kl));
    }

    /// <summary>
    /// An off-policy batch of the decoupled objective (asynchronous RL): the ratio base is the
    /// proximal policy's log-probs (the trainer's weights before the call: minibatch 0's from the
    /// first step's own forward, minibatch 1's computed by the trainer before it, left with its
    /// workers: IReplica.KeptLogProbs), the generation's log-probs weight it. Against the in-process
    /// replica on the master's arrays: every loss figure, gradient norm and the parameters bit for bit;
    /// the master never computes the advantages nor reads the proximal log-probs, and sends each loss
    /// rank exactly what an on-policy call sends (keep flags, scores, EOS flags, once): the loss ranks
    /// read minibatch 1's proximal log-probs worker to worker with its first step.
    /// </summary>
    [Fact]
    public void OffPolicyLossRanksReadTheKeptProximalLogProbsBitForBit()
    {
        using var pool = new WorkerPool(4, new WorkerPoolOptions { Executable = WorkerProcessTests.Realn(), ThreadsPerWorker = 1 });
        using var cluster = new LocalCluster(4);
        using var stream = NativeStream.Cpu();
        ParallelLayout gen = new([0, 1], 1, 2, 1), reference = new([2, 3], 2, 1, 1), critic = new([0, 1, 2, 3], 1, 2, 2), actor = new([3, 2, 1, 0], 2, 1, 2);
        using var criticW = pool.Create("critic", Cfg, true, critic, 2, Spec);
        criticW.Initialise(47);
        var ro = Generate(pool, gen, reference, criticW);
        int n = ro.Batch.Packed.Count;
        var (adv, _, kl) = RolloutAdvantages.Ppo(stream, ro.LogProbs, ro.Ref, ro.Values, ro.Scores, ro.Eos, ro.Batch.ActionCu, Ppo);
        var keep = new bool[n]; Array.Fill(keep, true);
        var options = new PolicyLossOptions(0.2, 0.2, LossAggregation.Token, 0, 2.0);
        int[] starts = [.. Enumerable.Range(0, Minibatches + 1).Select(k => ro.Batch.ActionCu[k * n / Minibatches])];
        var derived = new PpoAdvantageInputs(ActionFloats.Here(ro.LogProbs), ActionFloats.Here(ro.Ref), ActionFloats.Here(ro.Values), ro.Scores, ro.Eos, ro.Batch.ActionCu, Ppo, stream) { Source = ro.Batch.Source };
        var figures = new List<string>[2];
        var parameters = new float[2][];
        ProximalLogProbs? kept = null;
        for (int k = 0; k < 2; k++)   // 0: in process, on the master's arrays; 1: workers, derived, the proximal log-probs kept
        {
            figures[k] = [];
            IReplicaHost host = k == 0 ? cluster : pool;
            using var a = host.Create("actor", Cfg, false, actor, 2, Spec);
            a.Initialise(41);
            PolicyLossInputs policy;
            if (k == 0)
            {
                var proximal = new float[ro.LogProbs.Length];
                a.LogProbs(Minibatch(ro, 1).Batch, 1f).CopyTo(proximal, starts[1]);
                policy = new PolicyLossInputs(adv, proximal, ro.LogProbs, [], keep, options);
            }
            else
            {
                kept = new ProximalLogProbs(starts);
                kept.Set([a.KeptLogProbs(Minibatch(ro, 1).Batch, 1f)]);
                Assert.False(kept.OfMinibatch(starts[1])!.Fetched);
                policy = PolicyLossInputs.FromPpo(derived, keep, options, kept);
            }
            for (int epoch = 0; epoch < 2; epoch++)
                for (int m = 0; m < Minibatches; m++)
                {
                    var (mb, s0, a0) = Minibatch(ro, m);
                    var (fromMaster, between, _) = pool.DataBytes!.Value;
                    var (ps, pn) = a.PolicyStep(mb, s0, a0, 1f, policy, ratioBaseFromForward: epoch == 0 && m == 0);
                    figures[k].Add($"{ps} {pn:R}");
                    if (k == 0) continue;
                    var (fromMaster2, between2, _) = pool.DataBytes!.Value;
                    Assert.Equal(epoch == 0 && m == 0 ? 2 * ((4 + n) + (4 + 4 * n) + (4 + n)) : 0, fromMaster2 - fromMaster);
                    if (epoch == 0) Assert.True(between2 > between, $"minibatch {m}: the loss ranks read {(m == 0 ? "the outputs" : "the proximal log-probs")} from other workers");
                    else Assert.Equal(between, between2);
                }
            using var back = new LlamaModel(Cfg, false);
            a.CopyTo(back);
            parameters[k] = back.Parameters.ToArray();
        }
        output.WriteLine(string.Join("\n", figures[0]));
        Assert.Equal(figures[0], figures[1]);
        Assert.True(parameters[0].AsSpan().SequenceEqual(parameters[1]), "actor parameters");
        Assert.False(derived.ComputedHere, "the master computed the advantages the loss ranks derive");
        Assert.False(kept!.OfMinibatch(starts[1])!.Fetched, "the master fetched the proximal log-probs the loss ranks read");
        Assert.Equal(BitConverter.DoubleToInt64Bits(kl), BitConverter.DoubleToInt64Bits(derived.Kl));
        kept.Release();
        Assert.Equal(0, pool.HeldOutputs);
    }

    /// <summary>The proximal log-probs of minibatch 1 are kept by a replica on worker 2 (outside the
    /// actor's layout): released before the step that reads them, the step fails saying so; with
    /// worker 2 killed, it fails naming it, well within the data plane's deadline.</summary>
    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void AStepReadingReleasedOrLostProximalLogProbsFailsNamingWhy(bool kill)
    {
        var env = new Dictionary<string, string> { ["REALN_OP_TIMEOUT"] = "20" };
        using var pool = new WorkerPool(4, new WorkerPoolOptions { Executable = WorkerProcessTests.Realn(), ThreadsPerWorker = 1, Environment = env });
        using var stream = NativeStream.Cpu();
        ParallelLayout gen = new([0, 1], 1, 2, 1), reference = new([0, 3], 2, 1, 1), critic = new([0, 1], 1, 2, 1), actor = new([0, 1], 1, 1, 2);
        using var criticW = pool.Create("critic", Cfg, true, critic, 1, Spec);
        criticW.Initialise(47);
        var ro = Generate(pool, gen, reference, criticW);
        int n = ro.Batch.Packed.Count;
        var keep = new bool[n]; Array.Fill(keep, true);
        var derived = new PpoAdvantageInputs(ActionFloats.Here(ro.LogProbs), ActionFloats.Here(ro.Ref), ActionFloats.Here(ro.Values), ro.Scores, ro.Eos, ro.Batch.ActionCu, Ppo, stream) { Source = ro.Batch.Source };
        var proximal = new ProximalLogProbs([.. Enumerable.Range(0, Minibatches + 1).Select(k => ro.Batch.ActionCu[k * n / Minibatches])]);
        using (var side = pool.Create("rollout side", Cfg, false, new ParallelLayout([2], 1, 1, 1), 1, null))
        {
            side.Initialise(41);
            proximal.Set([side.KeptLogProbs(Minibatch(ro, 1).Batch, 1f)]);
        }
        using var a = pool.Create("actor", Cfg, false, actor, 1, Spec);
        a.Initialise(41);
        var policy = PolicyLossInputs.FromPpo(derived, keep, new PolicyLossOptions(0.2, 0.2, LossAggregation.Token, 0, 0), proximal);
        var (mb0, s00, a00) = Minibatch(ro, 0);
        a.PolicyStep(mb0, s00, a00, 1f, policy, ratioBaseFromForward: true);
        var (mb, s0, a0) = Minibatch(ro, 1);
        var clock = Stopwatch.StartNew();
        if (kill)
        {
            Procs.KillAndWait(pool.WorkerPid(2));   // dead before the step: Kill() only sends the signal
            var e = Assert.Throws<WorkerFailedException>(() => a.PolicyStep(mb, s0, a0, 1f, policy, false));
            output.WriteLine($"{clock.Elapsed.TotalSeconds:F1} s: {e.Message}");
            Assert.Contains("worker 2", e.Message);
            Assert.True(clock.Elapsed < TimeSpan.FromSeconds(60), $"the step failed after {clock.Elapsed.TotalSeconds:F0} s");
        }
        else
        {
            proximal.Release();
            var e = Assert.Throws<InvalidOperationException>(() => a.PolicyStep(mb, s0, a0, 1f, policy, false));
            output.WriteLine(e.Message);
            Assert.Contains("proximal log-probs", e.Message);
            Assert.Contains("released", e.Message);
            Assert.Throws<InvalidOperationException>(() => proximal.Values);
        }
    }

    /// <summary>The worker that keeps the reference's log-probs is killed before the train step that
    /// reads them (it takes no part in the actor's layout): the step fails naming it, well within the
    /// data plane's deadline, and does not hang.</summary>
    [Fact]
    public void AKilledHolderFailsTheStepThatReadsFromItNamingIt()
    {
        var env = new Dictionary<string, string> { ["REALN_OP_TIMEOUT"] = "20" };
        using var pool = new WorkerPool(4, new WorkerPoolOptions { Executable = WorkerProcessTests.Realn(), ThreadsPerWorker = 1, Environment = env });
        using var stream = NativeStream.Cpu();
        ParallelLayout gen = new([0, 1], 1, 2, 1), reference = new([2, 3], 2, 1, 1), critic = new([0, 1], 1, 2, 1), actor = new([0, 1], 1, 1, 2);
        using var criticW = pool.Create("critic", Cfg, true, critic, 1, Spec);
        criticW.Initialise(47);
        var ro = Generate(pool, gen, reference, criticW);
        var keep = new bool[ro.Batch.Packed.Count]; Array.Fill(keep, true);
        var derived = new PpoAdvantageInputs(ActionFloats.Here(ro.LogProbs), ActionFloats.Here(ro.Ref), ActionFloats.Here(ro.Values), ro.Scores, ro.Eos, ro.Batch.ActionCu, Ppo, stream) { Source = ro.Batch.Source };
        using var a = pool.Create("actor", Cfg, false, actor, 1, Spec);
        a.Initialise(41);
        // Worker 3 is the reference's collecting rank (pp2: the last stage), the only holder of its log-probs.
        Procs.KillAndWait(pool.WorkerPid(3));
        var (mb, s0, a0) = Minibatch(ro, 0);
        var clock = Stopwatch.StartNew();
        var e = Assert.Throws<WorkerFailedException>(() => a.PolicyStep(mb, s0, a0, 1f, PolicyLossInputs.FromPpo(derived, keep, new PolicyLossOptions(0.2, 0.2, LossAggregation.Token, 0, 0)), false));
        output.WriteLine($"{clock.Elapsed.TotalSeconds:F1} s: {e.Message}");
        Assert.Contains("worker 3", e.Message);
        Assert.True(clock.Elapsed < TimeSpan.FromSeconds(60), $"the step failed after {clock.Elapsed.TotalSeconds:F0} s");
    }
}
