using ReaLNative.Planner;
using Xunit;

namespace ReaLNative.Planner.Tests;

/// <summary>The single device (`realn run` without a plan: one process, every core) runs each unit of model work on every
/// core or on one thread, whichever has measured faster lately (the engine's ThreadChoice), so the planner prices each
/// of its profile points as the faster of the two (<see cref="ProfileData.FasterOfThreads"/>).</summary>
public class SingleDeviceThreadsTests
{
    private static ProfileData AllCore(ProfileData p, Func<LayerPoint, LayerPoint, double> seconds) => p with
    {
        Layers = p.Layers.Select(l => l with
        {
            Points = l.Points.Select(pt => pt.Threads == 1 ? pt : pt with
            {
                Seconds = seconds(pt, l.Points.Single(o => o.Threads == 1 && o.Kind == pt.Kind && o.Tokens == pt.Tokens && o.Context == pt.Context)),
            }).ToList(),
        }).ToList(),
    };

    [Fact]
    public void EachPointIsTheFasterOfEveryCoreAndOneThread()
    {
        var prof = CostModelTests.MeasuredCpuLocalProfile();
        var faster = prof.FasterOfThreads();
        var m = new ModelConfig("tiny", 2, 64, 176, 4, 2, 32, false);
        foreach (var kind in new[] { "fwd", "bwd", "decode" })
            foreach (double tokens in new[] { 8.0, 32, 64, 256, 1024 })
            {
                double all = prof.BlockSeconds(m, kind, tokens)!.Value, one = prof.BlockSeconds(m, kind, tokens, 1)!.Value;
                Assert.Equal(Math.Min(all, one), faster.BlockSeconds(m, kind, tokens)!.Value, 15);
                Assert.Equal(one, faster.BlockSeconds(m, kind, tokens, 1)!.Value, 15);   // the one-thread points stay
            }
        // the measured profile has one point where one thread was faster (a decode step of 8 sequences)
        Assert.True(prof.BlockSeconds(m, "decode", 8)!.Value > faster.BlockSeconds(m, "decode", 8)!.Value);
        // a profile of one core has nothing to choose
        var single = prof with { Threads = 1 };
        Assert.Same(single, single.FasterOfThreads());
    }

    [Fact]
    public void TheSingleDeviceIsPricedAtOneThreadWhereEveryCoreMeasuredSlower()
    {
        // the 2-core VM with its cores far apart (a cache line's round trip 480 ns instead of 110): a tiny model's two-thread
        // train step 10.2 ms against 9.5 on one thread; near, 5.8. Here: every all-core point 1.7x its one-thread point.
        var cpu = ClusterSpec.Load(TestData.Example("clusters/cpu-local.yaml"));
        var timing = Experiment.Load(TestData.Example("bench/ppo-tiny-timing.yaml"));
        var prof = CostModelTests.MeasuredCpuLocalProfile();
        var far = AllCore(prof, (_, one) => 1.7 * one.Seconds);
        var likeOne = AllCore(prof, (_, one) => one.Seconds);
        double? atFar = PlanSearch.SingleDeviceSeconds(cpu, timing, far), atOne = PlanSearch.SingleDeviceSeconds(cpu, timing, likeOne);
        Assert.NotNull(atFar);
        Assert.Equal(atOne!.Value, atFar!.Value, 12);
        // where every core was faster (this profile, mostly) the single device is priced faster than on one thread
        Assert.True(PlanSearch.SingleDeviceSeconds(cpu, timing, prof) < 0.9 * atOne, $"{PlanSearch.SingleDeviceSeconds(cpu, timing, prof)} vs one thread {atOne}");
    }
}
