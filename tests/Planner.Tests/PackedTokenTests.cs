// What the estimator prices is what the engine computes: packed sequences of the task's expected prompt
// and answer lengths (not prompt_len + gen_len), every PPO epoch of a train call, a static-batch
// generation's decode steps until its longest sequence ends, and under `weight_update: interrupt` a
// generation split where it takes the new weights. Also: why a baseline has no plan, in words.
using Xunit;

namespace ReaLNative.Planner.Tests;

public class PackedTokenTests
{
    private static Experiment Exp(string extra, string batch = "{ size: 64, prompt_len: 16, gen_len: 8, minibatches: 4 }") => Experiment.Parse($"""
        name: packed
        algorithm: ppo
        {extra}
        models:
          actor: {"{"} preset: tiny {"}"}
          critic: {"{"} preset: tiny {"}"}
          ref: {"{"} preset: tiny {"}"}
          reward: {"{"} preset: tiny {"}"}
        batch: {batch}
        """);

    [Fact]
    public void TaskLengthsAreTheEnginesFormats()
    {
        // sort-digits n in 3..6: "BOS d..d =" n + 2 tokens, answer n digits + EOS
        var s = TaskLengths.For("sort-digits", 3, 6);
        Assert.Equal(6.5, s.MeanPromptTokens);
        Assert.Equal(5.5, s.MeanAnswerTokens);
        Assert.Equal(7, s.MaxAnswerTokens);
        // add: brute force over every operand pair of 1..2 digits (uniform digit count, then uniform value)
        double prompt = 0, answer = 0, weight = 0;
        for (int d1 = 1; d1 <= 2; d1++)
            for (int d2 = 1; d2 <= 2; d2++)
            {
                int lo1 = d1 == 1 ? 0 : 10, hi1 = d1 == 1 ? 9 : 99, lo2 = d2 == 1 ? 0 : 10, hi2 = d2 == 1 ? 9 : 99;
                double w = 1.0 / ((hi1 - lo1 + 1) * (hi2 - lo2 + 1)) / 4;
                for (int a = lo1; a <= hi1; a++)
                    for (int b = lo2; b <= hi2; b++)
                    {
                        prompt += w * $"{a}+{b}=".Length + w;           // + BOS
                        answer += w * (a + b).ToString().Length + w;    // + EOS
                        weight += w;
                    }
            }
        var add = TaskLengths.For("add", 1, 2);
        Assert.Equal(1.0, weight, 9);
        Assert.Equal(prompt, add.MeanPromptTokens, 9);
        Assert.Equal(answer, add.MeanAnswerTokens, 9);
        Assert.Equal(4, add.MaxAnswerTokens);
    }

    [Fact]
    public void ReadsTaskLengthsAndEpochs()
    {
        var e = Exp("task: { name: sort-digits, min_len: 3, max_len: 6 }\nppo: { ppo_epochs: 2 }");
        var gen = e.Calls.Single(c => c.Name == "actor_gen");
        Assert.Equal(12.0, gen.MeanSequenceTokens);
        Assert.Equal(7, gen.DecodeSteps);
        Assert.Equal(2, e.Calls.Single(c => c.Name == "actor_train").Epochs);
        Assert.Equal(1, e.Calls.Single(c => c.Name == "ref_inf").Epochs);
        // without `task` (a workload given by its lengths, as examples/scale) or with a dataset: the bounds
        var bare = Exp("").Calls.Single(c => c.Name == "actor_gen");
        Assert.Equal(24.0, bare.MeanSequenceTokens);
        Assert.Equal(8, bare.DecodeSteps);
        Assert.Equal(24.0, Exp("task: { name: add }\ndataset: { train: x.jsonl }").Calls[0].MeanSequenceTokens);
        // the add task's defaults (1..2 digits)
        Assert.Equal(TaskLengths.For("add", 1, 2).MeanPromptTokens, Exp("task: { name: add }").Calls[0].MeanPromptTokens);
        Assert.Contains("task.name: 'copy'", Assert.Throws<PlannerException>(() => Exp("task: { name: copy }")).Message);
    }

    private static Estimator Est(Experiment e) => new(TestData.Cluster(1, 2, 8), e);

    [Fact]
    public void ComputeIsPricedOnPackedTokens()
    {
        var e = Exp("");
        var est = Est(e);
        var o = new CallOption(new Mesh(0, 1, 0, 1), new Strategy(1, 1, 1), 1, false);
        foreach (string name in new[] { "ref_inf", "actor_train" })
        {
            var c = e.Calls.Single(x => x.Name == name);
            // expected lengths 10 + 4 cost what full-length sequences of 10 + 4 tokens cost
            var packed = c with { ExpectedPromptTokens = 10, ExpectedNewTokens = 4 };
            var full = c with { PromptTokens = 10, NewTokens = 4 };
            Assert.Equal(est.CallSeconds(full, o), est.CallSeconds(packed, o), 12);
            Assert.True(est.CallSeconds(packed, o) < 0.8 * est.CallSeconds(c, o), name);
        }
        // generation: decode steps until the longest answer, at the mean number of sequences still decoding
        var g = e.Calls.Single(x => x.Name == "actor_gen");
        double all = est.CallSeconds(g, o);
        double shorter = est.CallSeconds(g with { LongestNewTokens = 5, ExpectedNewTokens = 5 }, o);
        Assert.True(shorter < all);
        Assert.Equal(est.CallSeconds(g with { NewTokens = 5 }, o), shorter, 12);
        Assert.True(est.CallSeconds(g with { ExpectedNewTokens = 4 }, o) < all);
    }

    [Fact]
    public void EveryEpochOfATrainCallIsPriced()
    {
        var cl = TestData.Cluster(1, 2, 8) with { WorkerRoundTrip = 1e-3 };
        var e = Exp("");
        var est = new Estimator(cl, e);
        var t = e.Calls.Single(x => x.Name == "actor_train");
        var o = new CallOption(new Mesh(0, 1, 0, 1), new Strategy(1, 1, 1), 1, false);
        double one = est.CallSeconds(t, o), two = est.CallSeconds(t with { Epochs = 2 }, o);
        Assert.Equal(2 * one, two, 12);   // compute and round trips both double
        Assert.Equal(2 * Estimator.WorkerRoundTrips(t), Estimator.WorkerRoundTrips(t with { Epochs = 2 }));
        // train_step_overhead_us: once per optimizer step of every epoch (4 minibatches x 2 epochs)
        double over = new Estimator(cl with { TrainStepOverhead = 5e-3 }, e).CallSeconds(t with { Epochs = 2 }, o);
        Assert.Equal(two + 8 * 5e-3, over, 12);
    }

    [Fact]
    public void InterruptSplitsGenerationAndWaitsForTheTrainStep()
    {
        var a = Exp("mode: async\nmax_staleness: 1", "{ size: 32, prompt_len: 32, gen_len: 256, minibatches: 2 }");
        var b = Exp("mode: async\nmax_staleness: 1\nweight_update: interrupt", "{ size: 32, prompt_len: 32, gen_len: 256, minibatches: 2 }");
        Assert.True(b.Interrupt);
        Assert.Equal(128, b.InterruptStep);
        Assert.Equal(52, Exp("mode: async\nweight_update: interrupt\ninterrupt_at: 0.2", "{ size: 32, prompt_len: 32, gen_len: 256, minibatches: 2 }").InterruptStep);
        Assert.Contains("weight_update: interrupt needs max_staleness >= 1", Assert.Throws<PlannerException>(() => Exp("mode: async\nmax_staleness: 0\nweight_update: interrupt")).Message);
        Assert.Contains("weight_update: only meaningful with mode: async", Assert.Throws<PlannerException>(() => Exp("weight_update: interrupt")).Message);
        Assert.Contains("interrupt_at: only meaningful", Assert.Throws<PlannerException>(() => Exp("mode: async\ninterrupt_at: 0.3")).Message);
        Assert.False(b.Synchronous().Interrupt);

        // OpenRLHF-style placement (generation on devices of its own), priced both ways
        var cl = TestData.Cluster(1, 4, 4);
        var pa = new PlanningProblem(new Estimator(cl, a));
        var plan = Baselines.OpenRlhf(pa)!;
        var pb = new PlanningProblem(new Estimator(cl, b));
        var choice = plan.Choice.Select((c, i) => pb.IndexOf(i, pa.Options[i][c].Option)).ToArray();
        double finish = new Evaluator(pa).Evaluate(plan.Choice).IterationSeconds, interrupt = new Evaluator(pb).Evaluate(choice).IterationSeconds;
        // the second half of each generation waits for the train step before: less overlap
        Assert.True(interrupt > finish * 1.01, $"interrupt {interrupt} s vs finish_batch {finish} s");
        // the two chunks add up to the whole generation plus one more round trip
        int gen = pb.Calls.ToList().FindIndex(c => c.Name == "actor_gen");
        var go = pb.Options[gen][choice[gen]];
        var split = pb.Estimator.InterruptedGenerationSeconds(pb.Calls[gen], go.Option, b.InterruptStep)!.Value;
        Assert.Equal(go.Seconds + pb.Estimator.WorkerDispatchSeconds(pb.Calls[gen]), split.Before + split.After, 9);
        // the schedule shows both chunks and the push between them
        var tasks = new List<SimTask>();
        new Evaluator(pb).Simulate(choice, 4, tasks);
        var second = tasks.First(t => t.Name == "actor_gen (from step k)");
        var train = tasks.Single(t => t.Name == "actor_train" && t.Iteration == second.Iteration - 1);
        Assert.True(second.Start >= train.End - 1e-12, "the second chunk starts after the train step of iteration g - N");
        // a batch that ends before step k takes no weights mid-batch: finish_batch's price
        var late = Exp("mode: async\nmax_staleness: 1\nweight_update: interrupt\ninterrupt_at: 0.99\ntask: { name: sort-digits }",
                       "{ size: 32, prompt_len: 32, gen_len: 256, minibatches: 2 }");
        var early = Exp("mode: async\nmax_staleness: 1\ntask: { name: sort-digits }", "{ size: 32, prompt_len: 32, gen_len: 256, minibatches: 2 }");
        var pl = new PlanningProblem(new Estimator(cl, late)); var pe = new PlanningProblem(new Estimator(cl, early));
        var planE = Baselines.OpenRlhf(pe)!;
        var choiceL = planE.Choice.Select((c, i) => pl.IndexOf(i, pe.Options[i][c].Option)).ToArray();
        Assert.Equal(new Evaluator(pe).Evaluate(planE.Choice).IterationSeconds, new Evaluator(pl).Evaluate(choiceL).IterationSeconds, 12);
    }

    [Fact]
    public void TheProfilesRoundTripReplacesTheSpecsForAsManyDevicesAsItMeasured()
    {
        var spec = ClusterSpec.Load(TestData.Example("clusters/cpu-local.yaml"));
        var prof = new ProfileData { WorkerRoundTripUs = 12500, WorkerRoundTripDevices = 2 };
        prof.Validate();
        var e = Exp("");
        Assert.Equal(12.5e-3, new Estimator(spec, e, prof).Cluster.WorkerRoundTrip, 12);
        Assert.Equal(spec.WorkerRoundTrip, new Estimator(spec, e).Cluster.WorkerRoundTrip);
        // measured with 2 worker processes: not the 4-device spec's figure, nor an in-process estimate's (none)
        var four = ClusterSpec.Load(TestData.Example("clusters/cpu-local-4.yaml"));
        Assert.Equal(four.WorkerRoundTrip, new Estimator(four, e, prof).Cluster.WorkerRoundTrip);
        Assert.Equal(0, new Estimator(spec with { WorkerRoundTrip = 0 }, e, prof).Cluster.WorkerRoundTrip);
        // the plan's dispatch follows: a train call of 4 minibatches x 1 round trip (its loss computed on the workers)
        var t = e.Calls.Single(c => c.Name == "actor_train");
        Assert.Equal(4 * 12.5e-3, new Estimator(spec, e, prof).WorkerDispatchSeconds(t), 12);
        Assert.Contains("profile.worker_round_trip_devices", Assert.Throws<PlannerException>(() => new ProfileData { WorkerRoundTripUs = 5 }.Validate()).Message);
        Assert.Contains("profile.worker_round_trip_us", Assert.Throws<PlannerException>(() => new ProfileData { WorkerRoundTripUs = -5, WorkerRoundTripDevices = 2 }.Validate()).Message);
    }

    [Fact]
    public void ProfileBlocksAreReadAtTheRunsSequenceLength()
    {
        // `realn profile` measures packed batches of 16-token and of up-to-256-token sequences (context 16 / 256)
        LayerPoint P(string kind, long tokens, long ctx, double s) => new() { Kind = kind, Tokens = tokens, Context = ctx, Seconds = s };
        var prof = new ProfileData
        {
            Threads = 1,
            Layers = [new LayerProfile { Hidden = 64, Intermediate = 176, Heads = 4, KvHeads = 2, Points =
                [P("fwd", 64, 16, 1.0), P("fwd", 1024, 16, 10.0), P("fwd", 64, 256, 1.0), P("fwd", 256, 256, 5.0), P("fwd", 1024, 256, 20.0)] }],
        };
        prof.Validate();
        var tiny = ModelConfig.Presets["tiny"];
        Assert.Equal(10.0, prof.BlockSeconds(tiny, "fwd", 1024, null, 16)!.Value, 12);
        Assert.Equal(10.0, prof.BlockSeconds(tiny, "fwd", 1024, null, 8)!.Value, 12);     // clamped below
        Assert.Equal(20.0, prof.BlockSeconds(tiny, "fwd", 1024, null, 512)!.Value, 12);   // clamped above
        Assert.Equal(15.0, prof.BlockSeconds(tiny, "fwd", 1024, null, 136)!.Value, 12);   // halfway in sequence length
        // at 64 tokens the batches are 4 x 16 and 1 x 64 tokens: a 40-token sequence lies between (both 1.0 here)
        Assert.Equal(1.0, prof.BlockSeconds(tiny, "fwd", 64, null, 40)!.Value, 12);
        // older profiles (context 0) are read by tokens alone
        var old = prof with { Layers = [prof.Layers[0] with { Points = [P("fwd", 64, 0, 1.0), P("fwd", 1024, 0, 20.0)] }] };
        Assert.Equal(20.0, old.BlockSeconds(tiny, "fwd", 1024, null, 16)!.Value, 12);
    }

    [Fact]
    public void ABaselineWithoutAPlanSaysWhy()
    {
        var e = Experiment.Load(TestData.Example("scale/scale-actor-7b-long-p1k-g7k.yaml"));
        var cl = ClusterSpec.Load(TestData.Example("clusters/h100-80gb.yaml"));
        // 32 GPUs, 16 sequences: no DeepSpeed configuration gives each device a sequence (8 GPUs: priced with merged
        // minibatches, DeepSpeedChatTests)
        var p = new PlanningProblem(new Estimator(cl.WithNodes(4), e));
        var ds = Baselines.DeepSpeedChat(p);
        Assert.Null(ds);
        string why = Baselines.WhyNot(p, "deepspeed_chat", ds)!;
        Assert.Contains("over 32 devices needs at least one sequence per device", why);
        Assert.Contains("has 16 sequences in all", why);
        Assert.Null(Baselines.WhyNot(p, "heuristic", Baselines.Heuristic(p)));
        // async: a baseline with generation on shared devices is not what the engine runs
        var a = new PlanningProblem(new Estimator(TestData.Cluster(1, 4, 4), Exp("mode: async", "{ size: 32, prompt_len: 32, gen_len: 256, minibatches: 2 }")));
        var h = Baselines.Heuristic(a);
        Assert.Null(h);
        Assert.Contains("mode: async runs generation on devices no other call uses, and this baseline puts every call on all 4 devices", Baselines.WhyNot(a, "heuristic", h));
    }
}
