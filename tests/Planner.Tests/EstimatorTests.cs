// Estimator properties that follow from the cost model's physics: each checks a direction or a
// closed-form figure that a wrong formula would break.
using Xunit;

namespace ReaLNative.Planner.Tests;

public class EstimatorTests
{
    private static readonly ClusterSpec H100 = ClusterSpec.Load(TestData.Example("clusters/h100-80gb.yaml")).WithNodes(2);
    private static readonly Experiment Exp7 = Experiment.Load(TestData.Example("scale/scale-both-7b-gen384.yaml"));
    private static ModelCall Call(string n) => Exp7.Calls.First(c => c.Name == n);
    private static CallOption Opt(Mesh m, int pp, int dp, int tp, int mb = 1, bool f = false) => new(m, new Strategy(pp, dp, tp), mb, f);
    private static readonly Mesh Node0 = new(0, 1, 0, 8), Node1 = new(1, 1, 0, 8), Both = new(0, 2, 0, 8);

    [Fact]
    public void MemoryShrinksWithModelParallelismAndRecompute()
    {
        var est = new Estimator(H100, Exp7);
        var train = Call("actor_train");
        var m1 = est.Memory(train, Opt(Node0, 1, 8, 1, 2));
        var m2 = est.Memory(train, Opt(Node0, 1, 4, 2, 2));
        var m4 = est.Memory(train, Opt(Node0, 2, 2, 2, 4));
        Assert.True(m2.WeightBytes < m1.WeightBytes && m4.WeightBytes < m2.WeightBytes);
        // bf16 weights of LLaMA-7B on 1 tp rank: 2 bytes/param
        Assert.InRange(m1.WeightBytes / (2 * ModelConfig.Presets["llama-7b"].Params(false)), 0.999, 1.001);
        var rc = est.Memory(train, Opt(Node0, 1, 8, 1, 2, true));
        Assert.True(rc.ActiveBytes < m1.ActiveBytes);
        Assert.True(est.CallSeconds(train, Opt(Node0, 1, 8, 1, 2, true)) > est.CallSeconds(train, Opt(Node0, 1, 8, 1, 2)));
    }

    [Fact]
    public void TrainCostsAboutThreeForwardsAndGenerationIsDecodeBound()
    {
        var est = new Estimator(H100, Exp7);
        var o = Opt(Node0, 1, 8, 1, 1);
        double inf = est.CallSeconds(Call("ref_inf"), o);
        double train = est.CallSeconds(Call("actor_train"), Opt(Node0, 1, 8, 1, 1));
        Assert.InRange(train / inf, 2.5, 4.5);
        double gen = est.CallSeconds(Call("actor_gen"), o);
        // 383 decode steps each read the 13.5 GB of weights at 3.35 TB/s at least
        Assert.True(gen > 383 * 2 * ModelConfig.Presets["llama-7b"].Params(false) / 3350e9);
        Assert.True(gen > inf);
    }

    [Fact]
    public void ReallocationFollowsTheIntervalPlan()
    {
        var est = new Estimator(H100, Exp7);
        double bytes = 2 * ModelConfig.Presets["llama-7b"].Params(false);
        Assert.Equal(0, est.ReallocSeconds("actor", Opt(Node0, 1, 4, 2), Opt(Node0, 1, 4, 2, 2)));
        // node 0 (dp 8) -> node 1 (dp 8): every destination needs the whole model; one sender per piece
        // crosses to node 1 over 8 NICs, then a chain broadcast inside node 1.
        double cross = est.ReallocSeconds("actor", Opt(Node0, 1, 8, 1), Opt(Node1, 1, 8, 1));
        Assert.InRange(cross, bytes / (8 * H100.InterNodeBandwidth), bytes / H100.InterNodeBandwidth + bytes / H100.IntraNodeBandwidth + 1e-3);
        // same node, tp 1 -> tp 8: every device already holds its slice (local copy only)
        double local = est.ReallocSeconds("actor", Opt(Node0, 1, 8, 1), Opt(Node0, 1, 1, 8));
        Assert.True(local < cross / 5, $"local {local} vs cross-node {cross}");
        // growing onto both nodes costs less than moving everything to the other node
        Assert.True(est.ReallocSeconds("actor", Opt(Node0, 1, 8, 1), Opt(Both, 1, 16, 1)) <= cross + 1e-9);
    }

    [Fact]
    public void DataTransferIsZeroOnTheSameLayoutAndGrowsAcrossNodes()
    {
        var est = new Estimator(H100, Exp7);
        var gen = Call("actor_gen");
        Assert.Equal(0, est.TransferSeconds(gen, Opt(Node0, 1, 8, 1), Opt(Node0, 1, 8, 1, 2)));
        double intra = est.TransferSeconds(gen, Opt(Node0, 1, 8, 1), Opt(new Mesh(0, 1, 0, 4), 1, 4, 1));
        double inter = est.TransferSeconds(gen, Opt(Node0, 1, 8, 1), Opt(Node1, 1, 8, 1));
        Assert.True(intra > 0 && inter > intra);
    }

    [Fact]
    public void ProfileReplacesTheRoofline()
    {
        var cpu = ClusterSpec.Load(TestData.Example("clusters/cpu-local.yaml"));
        var exp = TestData.Exp("sft", "tiny", "tiny", 8, 32, 32);
        var call = exp.Calls[0];
        var o = Opt(new Mesh(0, 1, 0, 1), 1, 1, 1, 1);
        double roof = new Estimator(cpu, exp).CallSeconds(call, o);
        var prof = new ProfileData
        {
            Layers = [new LayerProfile { Hidden = 64, Intermediate = 176, Heads = 4, KvHeads = 2, Points = [
                new LayerPoint { Kind = "fwd", Tokens = 64, Seconds = 0.01 }, new LayerPoint { Kind = "fwd", Tokens = 1024, Seconds = 0.1 },
                new LayerPoint { Kind = "bwd", Tokens = 64, Seconds = 0.02 }, new LayerPoint { Kind = "bwd", Tokens = 1024, Seconds = 0.2 }] }],
        };
        prof.Validate();
        Assert.Equal(0.055, prof.BlockSeconds(exp.Models["actor"], "fwd", 544)!.Value, 6);
        Assert.Equal(0.2, prof.BlockSeconds(exp.Models["actor"], "fwd", 2048)!.Value, 6);
        Assert.Null(prof.BlockSeconds(ModelConfig.Presets["llama-7b"], "fwd", 10));
        double measured = new Estimator(cpu, exp, prof).CallSeconds(call, o);
        // 2 optimizer steps x 2 layers x (fwd 0.028 + bwd 0.056 at 256 tokens) = 0.336 s as profiled on the whole
        // host; a device of cpu-local's shared 2-core host has half the cores (x2) and computes in a worker process
        // next to the others (x worker_compute_slowdown), plus 2 worker round trips per optimizer step (forward,
        // then backward with the step), plus train_step_overhead_us per optimizer step (the step's non-block work)
        Assert.Equal(4, Estimator.WorkerRoundTrips(call));
        double dispatch = 4 * cpu.WorkerRoundTrip, slow = cpu.WorkerComputeSlowdown, steps = 2 * cpu.TrainStepOverhead;
        Assert.True(dispatch > 0 && slow > 1 && steps > 0);
        Assert.InRange(measured, slow * (2 * 0.336 + steps) + dispatch, slow * (2 * 0.336 + steps + 0.01) + dispatch);
        double own = new Estimator(cpu with { SharedHost = false, WorkerRoundTrip = 0 }, exp, prof).CallSeconds(call, o);
        Assert.InRange(own, 0.336 + steps, 0.345 + steps);
        Assert.True(measured - dispatch > 10 * (roof - dispatch));
        var back = System.Text.Json.JsonSerializer.Deserialize<ProfileData>(prof.ToJson())!;
        Assert.Equal(4, back.Layers[0].Points.Count);
    }

    [Fact]
    public void ASharedHostDeviceUsesThePointsMeasuredWithItsThreads()
    {
        // realn profile on 2 cores writes all-thread points and 1-thread points; a cpu-local device (1 core) takes
        // the 1-thread ones as measured (small blocks barely speed up with a second thread), a run without a plan
        // (one device with both cores) the all-thread ones; a profile without 1-thread points scales by 2.
        // (block terms alone: without the per-step overhead)
        var cpu = ClusterSpec.Load(TestData.Example("clusters/cpu-local.yaml")) with { TrainStepOverhead = 0 };
        var exp = TestData.Exp("sft", "tiny", "tiny", 8, 32, 32);
        var call = exp.Calls[0];
        var o = Opt(new Mesh(0, 1, 0, 1), 1, 1, 1, 1);
        LayerPoint P(string kind, double s, int? threads = null) => new() { Kind = kind, Tokens = 256, Seconds = s, Threads = threads };
        var both = new ProfileData
        {
            Threads = 2,
            Layers = [new LayerProfile { Hidden = 64, Intermediate = 176, Heads = 4, KvHeads = 2, Points = [
                P("fwd", 0.01), P("bwd", 0.02), P("fwd", 0.013, 1), P("bwd", 0.026, 1)] }],
        };
        both.Validate();
        Assert.Equal(0.013, both.BlockSeconds(exp.Models["actor"], "fwd", 256, 1)!.Value, 9);
        Assert.Equal(0.01, both.BlockSeconds(exp.Models["actor"], "fwd", 256)!.Value, 9);
        Assert.Null(both.BlockSeconds(exp.Models["actor"], "fwd", 256, 4));
        var allOnly = both with { Layers = [both.Layers[0] with { Points = both.Layers[0].Points.Where(p => p.Threads is null).ToList() }] };
        double dispatch = Estimator.WorkerRoundTrips(call) * cpu.WorkerRoundTrip, slow = cpu.WorkerComputeSlowdown;
        double own = (new Estimator(cpu, exp, both).CallSeconds(call, o) - dispatch) / slow;
        double scaled = (new Estimator(cpu, exp, allOnly).CallSeconds(call, o) - dispatch) / slow;
        // 2 optimizer steps x 2 layers x (fwd + bwd): 1-thread 0.039 s per layer pass vs 2 x 0.03 scaled
        Assert.InRange(own, 4 * 0.039, 4 * 0.039 + 0.005);
        Assert.InRange(scaled, 4 * 0.06, 4 * 0.06 + 0.005);
        // Four devices on the profile's two cores: one thread each, time-sliced, so the one-thread points x 4/2.
        double four = (new Estimator(cpu with { DevicesPerNode = 4 }, exp, both).CallSeconds(call, o) - dispatch) / slow;
        Assert.InRange(four, 2 * 4 * 0.039, 2 * 4 * 0.039 + 0.01);
        double single = new Estimator(cpu with { SharedHost = false, WorkerRoundTrip = 0, DevicesPerNode = 1 }, exp, both).CallSeconds(call, o);
        Assert.InRange(single, 4 * 0.03, 4 * 0.03 + 0.005);
        var back = System.Text.Json.JsonSerializer.Deserialize<ProfileData>(both.ToJson())!;
        Assert.Equal(2, back.Threads);
        Assert.Equal(2, back.Layers[0].Points.Count(p => p.Threads == 1));
        Assert.Contains("threads", Assert.Throws<PlannerException>(() => (both with { Threads = 0 }).Validate()).Message);
    }

    [Fact]
    public void SimulatorOverlapsDisjointMeshes()
    {
        var cl = TestData.Cluster(1, 2, 4);
        var exp = TestData.Exp("ppo", "tiny", "tiny", 8, 8, 8);
        var p = new PlanningProblem(new Estimator(cl, exp));
        var ev = new Evaluator(p);
        var d0 = new Mesh(0, 1, 0, 1); var d1 = new Mesh(0, 1, 1, 1);
        int[] Choice(Func<int, Mesh> mesh) => Enumerable.Range(0, p.Calls.Count).Select(i => p.IndexOf(i, new CallOption(mesh(i), new Strategy(1, 1, 1), 1, false))).ToArray();
        var serial = Choice(_ => d0);
        var split = Choice(i => p.Calls[i].Role is "critic" or "reward" ? d1 : d0);
        double sum = Enumerable.Range(0, p.Calls.Count).Sum(i => p.Options[i][serial[i]].Seconds);
        var tasks = new List<SimTask>();
        Assert.Equal(sum, ev.Simulate(serial, 1, tasks), 9);
        Assert.Equal(p.Calls.Count, tasks.Count);
        Assert.True(ev.Simulate(split, 1, null) < sum);
    }
}
