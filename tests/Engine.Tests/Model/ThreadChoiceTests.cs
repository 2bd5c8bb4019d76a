using ReaLNative.Engine.Algorithms;
using ReaLNative.Engine.Model;
using ReaLNative.Engine.Optim;
using ReaLNative.Interop;
using Xunit;

namespace ReaLNative.Engine.Tests.Model;

/// <summary>The choice between the calling thread's threads and one thread per unit of model work
/// (<see cref="ThreadChoice"/>): the policy on made-up timings, and that a model trained with the choice switching
/// between units ends bit-identical to the same training on fixed thread counts.</summary>
public class ThreadChoiceTests
{
    private static TimeSpan S(double s) => TimeSpan.FromSeconds(s);

    /// <summary>Runs one unit of <paramref name="work"/> at <paramref name="now"/>, timed by <paramref name="perWork"/>
    /// (seconds per unit of work for option 0 = threads, 1 = one thread); returns the option it ran.</summary>
    private static int Unit(ThreadChoice.Entry e, TimeSpan now, double work, Func<int, double> perWork)
    {
        var (option, explore) = e.Pick(now);
        double seconds = perWork(option) * work;
        e.Record(option, seconds, work, explore, now + S(seconds));
        return option;
    }

    [Fact]
    public void TimesBothOptionsThenKeepsTheFaster()
    {
        var e = new ThreadChoice().EntryFor("forward", 768);
        var ran = new List<int>();
        for (int i = 0; i < 5; i++) ran.Add(Unit(e, S(i * 0.01), 768, o => o == 0 ? 6e-6 : 10e-6));
        // the first unit warms up (untimed), then one thread and threads alternate until each is timed twice
        Assert.Equal([1, 1, 0, 1, 0], ran);
        for (int i = 5; i < 50; i++) Assert.Equal(0, Unit(e, S(i * 0.01), 768, o => o == 0 ? 6e-6 : 10e-6));
        // and the other way round
        var f = new ThreadChoice().EntryFor("forward", 768);
        for (int i = 0; i < 5; i++) Unit(f, S(i * 0.01), 768, o => o == 0 ? 10e-6 : 6e-6);
        for (int i = 5; i < 50; i++) Assert.Equal(1, Unit(f, S(i * 0.01), 768, o => o == 0 ? 10e-6 : 6e-6));
    }

    [Fact]
    public void ExploresOncePerIntervalAndFollowsAChangeOfTheHost()
    {
        var e = new ThreadChoice().EntryFor("backward", 768);
        double threads = 6e-6, one = 10e-6;
        var t = S(0);
        int Next() { int o = Unit(e, t, 768, x => x == 0 ? threads : one); t += S(0.01); return o; }
        for (int i = 0; i < 5; i++) Next();
        // 10 ms units: 100 per second, one of them (after the interval) on the slower option
        var second = Enumerable.Range(0, 300).Select(_ => Next()).ToList();
        Assert.InRange(second.Count(o => o == 1), 2, 4);
        // the cores move apart: threads become slower than one thread; within a few units the choice follows
        threads = 12e-6;
        for (int i = 0; i < 3; i++) Next();
        Assert.All(Enumerable.Range(0, 90).Select(_ => Next()), o => Assert.Equal(1, o));
        // and back: threads are faster again; seen at the next exploration (within the interval) and kept
        threads = 6e-6;
        var back = Enumerable.Range(0, 250).Select(_ => Next()).ToList();
        // an exploration is one unit: two in a row on threads mean threads are preferred again
        int settled = Enumerable.Range(0, back.Count - 1).First(i => back[i] == 0 && back[i + 1] == 0);
        Assert.InRange(settled, 1, 150);   // within 1.5 s (two explorations: the median needs two fast timings)
        Assert.InRange(back.Skip(settled).Count(o => o == 1), 0, 2);   // then one thread only when exploring
    }

    [Fact]
    public void OneSlowUnitDoesNotFlipTheChoice()
    {
        var e = new ThreadChoice().EntryFor("log-probs", 768);
        var t = S(0);
        for (int i = 0; i < 8; i++) { Unit(e, t, 768, o => o == 0 ? 6e-6 : 10e-6); t += S(0.01); }
        // one unit interrupted (50x), then the host is as before
        var (opt, explore) = e.Pick(t);
        Assert.Equal((0, false), (opt, explore));
        e.Record(0, 50 * 6e-6 * 768, 768, false, t);
        for (int i = 0; i < 20; i++) { t += S(0.01); Assert.Equal(0, Unit(e, t, 768, o => o == 0 ? 6e-6 : 10e-6)); }
    }

    [Fact]
    public void AnExpensiveExplorationWaitsLongerBeforeTheNext()
    {
        // under load a two-thread unit took 300-550 ms where one thread took 7: exploring once a second would cost
        // most of the time
        var e = new ThreadChoice().EntryFor("log-probs backward", 768);
        var t = S(0);
        double threads = 0.4 / 768, one = 0.007 / 768;
        double spent = 0, onThreads = 0;
        while (t < S(60))
        {
            int o = Unit(e, t, 768, x => x == 0 ? threads : one);
            double s = (o == 0 ? threads : one) * 768;
            spent += s;
            if (o == 0) onThreads += s;
            t += S(s);
        }
        // the initial timings (2 x 0.4 s) and explorations at most every 100 x 0.39 s
        Assert.InRange(onThreads, 0.8, 0.8 + 2 * 0.4 + 1e-9);
    }

    [Fact]
    public void TrainingWithTheChoiceEndsBitIdenticalToFixedThreadCounts()
    {
        float[] Train(int threads, bool choose, out (long Threads, long One) units)
        {
            int saved = Native.GetNumThreads();
            Native.SetNumThreads(threads);
            try
            {
                // a shape of its own: the choice is shared by the process's models of one shape
                var cfg = LlamaConfig.Preset("tiny") with { Vocab = 37 };
                using var m = new LlamaModel(cfg, false);
                m.InitRandom(4);
                m.ThreadChoice.Fixed = !choose;
                var before = m.ThreadChoice.Units();
                using var opt = new AdamW(m, new LrSchedule(1e-3), clipGradNorm: 1f);
                var rng = new Random(9);
                for (int step = 0; step < 8; step++)
                {
                    var seqs = Enumerable.Range(0, 24).Select(_ => Enumerable.Range(0, 12).Select(_ => rng.Next(cfg.Vocab)).ToArray()).ToArray();
                    var b = new ScoredBatch(seqs, Enumerable.Repeat(6, seqs.Length).ToArray());
                    var lp = ModelOps.LogProbs(m, b, 1f, out var lse);
                    var g = lp.Select((x, i) => (float)(0.01 * Math.Sin(i + x))).ToArray();
                    m.ZeroGrad();
                    ModelOps.BackwardLogProbs(m, b, 1f, lse, g);
                    opt.StepOnce();
                }
                var after = m.ThreadChoice.Units();
                units = (after.Threads - before.Threads, after.One - before.One);
                return m.Parameters.ToArray();
            }
            finally { Native.SetNumThreads(saved); }
        }
        if (!ThreadChoice.Enabled) return;   // REALN_THREAD_CHOICE=off: nothing switches
        var one = Train(1, false, out _);
        var two = Train(2, false, out _);
        var chosen = Train(2, true, out var units);
        // the choice switched between units (its first timings alternate), so the comparison means something
        Assert.True(units.Threads > 0 && units.One > 0, $"units on threads / one thread: {units.Threads} / {units.One}");
        Assert.Equal(one, two);
        Assert.Equal(two, chosen);
    }
}
