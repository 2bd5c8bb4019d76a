using Xunit;
using ReaLNative.Planner;

namespace ReaLNative.Planner.Tests;

/// <summary>Issue 19 item 6 on a shared CPU host: the devices / cores stretch counts the devices computing at the same time
/// in the schedule (cpu-local-4: 4 one-thread devices on 2 cores), the round trips while no more devices compute than
/// cores, and what an in-process operation on several devices costs beyond its compute.</summary>
public class SharedHostScheduleTests
{
    private static readonly Experiment Timing = Experiment.Load(TestData.Example("bench/ppo-tiny-timing.yaml"));
    private static readonly ClusterSpec Four = ClusterSpec.Load(TestData.Example("clusters/cpu-local-4.yaml"));
    private static readonly ClusterSpec Two = ClusterSpec.Load(TestData.Example("clusters/cpu-local.yaml"));

    /// <summary>A choice that puts every call on <paramref name="mesh"/> with dp = its size (the first such option).</summary>
    private static int[] AllOn(PlanningProblem p, Mesh mesh) => p.Calls.Select((c, i) =>
    {
        var s = new Strategy(1, mesh.Size, 1);
        int k = p.Options[i].FindIndex(o => o.Option.Mesh == mesh && o.Option.Strategy == s && !o.Option.Flag);
        return k >= 0 ? k : p.IndexOf(i, new CallOption(mesh, s, 1, false));
    }).ToArray();

    [Fact]
    public void TheStretchCountsOnlyTheDevicesComputingAtTheSameTime()
    {
        // cpu-local-4's plan that trained on 2 of its 4 devices had its train calls estimated at about 2x their measured
        // time: every device's one-thread time was stretched by devices / cores = 2 whether or not the others computed
        var prof = CostModelTests.MeasuredCpuLocalProfile();   // 2 cores
        var p = new PlanningProblem(new Estimator(PlanSearch.InProcessCluster(Four), Timing, prof));
        Assert.True(p.ScheduleStretch);
        Assert.Equal(2, p.Estimator.ComputeStretch, 12);
        var ev = new Evaluator(p);
        // one device computing at a time: no stretch, the calls' one-core compute back to back
        var one = AllOn(p, new Mesh(0, 1, 0, 1));
        double work = one.Select((k, i) => p.Options[i][k].Work + p.Options[i][k].DispatchUncrowded).Sum();
        Assert.Equal(work, ev.Evaluate(one).IterationSeconds, 9);
        // what the static stretch charged before: every call's blocks 2x (the spec's per-step overhead is not stretched)
        double stat = one.Select((k, i) => p.Options[i][k].Seconds).Sum();
        Assert.True(stat > 1.8 * one.Select((k, i) => p.Options[i][k].Work).Sum(), $"static {stat}");
        // two devices computing at once (the two train calls side by side on devices 0 and 1): still no stretch
        var pair = (int[])one.Clone();
        int critic = p.Calls.ToList().FindIndex(c => c.Name == "critic_train"), criticInf = p.Calls.ToList().FindIndex(c => c.Name == "critic_inf");
        pair[critic] = p.IndexOf(critic, p.Options[critic][one[critic]].Option with { Mesh = new Mesh(0, 1, 1, 1) });
        var tasks = new List<SimTask>();
        ev.Simulate(pair, 1, tasks);
        var ct = tasks.Single(t => t.Name == "critic_train");
        Assert.Equal(p.Options[critic][pair[critic]].Work, ct.End - ct.Start, 9);
        // all four computing (every call data parallel over the 4 devices): each at half speed
        var all = AllOn(p, new Mesh(0, 1, 0, 4));
        tasks.Clear();
        ev.Simulate(all, 1, tasks);
        var gen = tasks.Single(t => t.Name == "actor_gen");
        var g = p.Options[0][all[0]];
        Assert.Equal(2 * g.Work + g.Dispatch, gen.End - gen.Start, 9);
        Assert.True(criticInf >= 0);
        // off such a host (devices <= cores) the old schedule stays
        Assert.False(new PlanningProblem(new Estimator(Two, Timing, prof)).ScheduleStretch);
    }

    [Fact]
    public void WorkerRoundTripsAreTheUncrowdedOnesWhileNoMoreDevicesComputeThanCores()
    {
        // `realn profile` measures the round trips with one worker process per core and with twice as many (every call on
        // all of them: the workers and the master wait for each other's time slices); the schedule charges the first
        // while no more devices compute than cores
        var prof = CostModelTests.MeasuredCpuLocalProfile() with
        {
            WorkerRoundTrips = [new WorkerRoundTrip { Devices = 2, Us = 3000, GenerateUs = 5000, ForwardUs = 3000, BackwardUs = 2000 },
                                new WorkerRoundTrip { Devices = 4, Us = 15000, GenerateUs = 20000, ForwardUs = 15000, BackwardUs = 7000 }],
        };
        var e = new Estimator(Four, Timing, prof);
        var train = Timing.Calls.Single(c => c.Name == "actor_train");
        int steps = train.OptimizerSteps * train.Epochs;
        Assert.True(train.LossOnWorkers);   // PPO: one round trip per optimizer step, the backward-with-step kind
        Assert.Equal(steps * 7e-3, e.WorkerDispatchSeconds(train), 9);
        Assert.Equal(steps * 2e-3, e.WorkerDispatchSeconds(train, crowded: false), 9);
        Assert.Equal(5e-3, e.WorkerDispatchSeconds(Timing.Calls.Single(c => c.Name == "actor_gen"), crowded: false), 9);
        // cpu-local (devices = cores) has no uncrowded figure of its own: the same
        var two = new Estimator(Two, Timing, prof);
        Assert.Equal(two.WorkerDispatchSeconds(train), two.WorkerDispatchSeconds(train, crowded: false), 12);
        // the schedule of one device at a time pays the uncrowded round trips
        var p = new PlanningProblem(e);
        var one = AllOn(p, new Mesh(0, 1, 0, 1));
        double expected = one.Select((k, i) => p.Options[i][k].Work + p.Options[i][k].DispatchUncrowded).Sum();
        Assert.Equal(expected, new Evaluator(p).Evaluate(one).IterationSeconds, 9);
        Assert.True(expected < one.Select((k, i) => p.Options[i][k].Seconds).Sum() - 0.1);
    }

    [Fact]
    public void AnInProcessOperationOnSeveralDevicesPaysTheMeasuredDispatch()
    {
        // in-process devices measured (session 15, REALN_INPROCESS_TIMING): a generation over two device threads took
        // 11.6-14.6 ms of master wall time while its fastest device computed 8.4-8.8 ms; the estimate priced the compute
        var prof = CostModelTests.MeasuredCpuLocalProfile() with
        {
            InProcessOverheads = [new WorkerRoundTrip { Devices = 2, Us = 1000, GenerateUs = 3000, ForwardUs = 500, BackwardUs = 800 }],
        };
        prof.Validate();
        var threads = new Estimator(PlanSearch.InProcessCluster(Two), Timing, prof);
        var without = new Estimator(PlanSearch.InProcessCluster(Two), Timing, CostModelTests.MeasuredCpuLocalProfile());
        var dp2 = new CallOption(new Mesh(0, 1, 0, 2), new Strategy(1, 2, 1), 1, false);
        var one = new CallOption(new Mesh(0, 1, 0, 1), new Strategy(1, 1, 1), 1, false);
        var gen = Timing.Calls.Single(c => c.Name == "actor_gen");
        var inf = Timing.Calls.Single(c => c.Name == "ref_inf");
        var train = Timing.Calls.Single(c => c.Name == "actor_train");
        Assert.Equal(3e-3, threads.CallSeconds(gen, dp2) - without.CallSeconds(gen, dp2), 12);
        Assert.Equal(0.5e-3, threads.CallSeconds(inf, dp2) - without.CallSeconds(inf, dp2), 12);
        // PPO's train step is one fused operation on the devices (forward, loss, backward, step): the backward kind
        Assert.Equal(train.OptimizerSteps * train.Epochs * 0.8e-3, threads.CallSeconds(train, dp2) - without.CallSeconds(train, dp2), 12);
        // one device: the operation runs on the calling thread
        Assert.Equal(without.CallSeconds(gen, one), threads.CallSeconds(gen, one), 12);
        // worker processes pay their round trips instead
        Assert.Equal(0, new Estimator(Two, Timing, prof).InProcessDispatchSeconds(gen, dp2));
        // refused by name
        void Refused(ProfileData p, string field) => Assert.Contains(field, Assert.Throws<PlannerException>(p.Validate).Message);
        Refused(prof with { InProcessOverheads = [new WorkerRoundTrip { Devices = 1, Us = 5 }] }, "profile.in_process_overheads[0].devices");
        Refused(prof with { InProcessOverheads = [new WorkerRoundTrip { Devices = 2, Us = 5, GenerateUs = -1 }] }, "profile.in_process_overheads[0].generate_us");
        string json = prof.ToJson();
        Assert.Contains("\"in_process_overheads\"", json);
        Assert.Equal(3000, System.Text.Json.JsonSerializer.Deserialize<ProfileData>(json)!.InProcessOverheadFor(2)!.GenerateUs);
    }
}
