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

    /// <summary>A made-up host: seconds per token of each option (0 = threads, 1 = one thread) for a train step's three
    /// units of 768 tokens; a unit after a change of option costs <see cref="Move"/> more (its data moves between caches).</summary>
    private sealed class Host(ThreadChoice c)
    {
        public double Threads = 6e-6, One = 10e-6, Move = 0;
        public TimeSpan Now;
        public readonly List<int> Ran = [];
        private int _last = -1;
        private static readonly string[] Sites = ["log-probs", "log-probs backward", "optimizer step"];

        public double Unit(int i)
        {
            string site = Sites[i % 3];
            var (o, timed, explore) = c.Pick(site, 768, Now);
            double s = (o == 0 ? Threads : One) * 768 + (o != _last ? Move : 0);
            _last = o;
            Now += S(s);
            c.Record(site, 768, o, timed, explore, s, Now);
            Ran.Add(o);
            return s;
        }

        public List<int> Run(int units) { int n = Ran.Count; for (int i = 0; i < units; i++) Unit(n + i); return Ran.Skip(n).ToList(); }
    }

    [Fact]
    public void TimesABurstOfEachOptionThenKeepsTheFaster()
    {
        var h = new Host(new ThreadChoice());
        var start = h.Run(2 * ThreadChoice.Burst + 1);
        // a burst on one thread (its first unit warms up, untimed), then one on threads
        Assert.Equal(Enumerable.Repeat(1, ThreadChoice.Burst + 1).Concat(Enumerable.Repeat(0, ThreadChoice.Burst)), start);
        Assert.All(h.Run(60), o => Assert.Equal(0, o));
        // and the other way round
        var g = new Host(new ThreadChoice()) { Threads = 10e-6, One = 6e-6 };
        g.Run(2 * ThreadChoice.Burst + 1);
        Assert.All(g.Run(60), o => Assert.Equal(1, o));
    }

    [Fact]
    public void ExploresABurstPerIntervalAndFollowsAChangeOfTheHost()
    {
        // the cores near: threads 6 us per token, one thread 10; a unit after a change of option moves its data (1 ms)
        var h = new Host(new ThreadChoice()) { Move = 1e-3 };
        h.Run(2 * ThreadChoice.Burst + 1);
        var t0 = h.Now;
        var steady = h.Run(1000);   // ~5 s of ~5 ms units
        double seconds = (h.Now - t0).TotalSeconds;
        int explored = steady.Count(o => o == 1);
        // a burst costs ~20 ms more than threads (7 units of 7.7 instead of 4.6 ms): the next waits 100 x that, ~2 s
        Assert.InRange(explored, ThreadChoice.Burst, ThreadChoice.Burst * (int)Math.Ceiling(seconds / 1.5));
        Assert.True(explored * (10e-6 - 6e-6) * 768 < 0.015 * seconds, $"{explored} units explored in {seconds:F1} s");
        // the cores move apart: threads become slower than one thread (12 us); within two steps the choice follows
        h.Threads = 12e-6;
        var far = h.Run(200);
        int switched = far.FindIndex(o => o == 1);
        Assert.InRange(switched, 0, 6);   // two slow timings of each of the step's three units (the median of three)
        Assert.True(far.Skip(switched).Count(o => o == 0) <= 2 * ThreadChoice.Burst, "threads only in exploring bursts");
        // and back: threads are faster again; seen at the next exploring burst
        h.Threads = 6e-6;
        var near = h.Run(400);
        int back = Enumerable.Range(0, near.Count - 20).First(i => near.Skip(i).Take(20).All(o => o == 0));
        Assert.InRange(back, 0, 250);   // within about a second (the interval) of ~5 ms units
    }

    [Fact]
    public void AChoicePerUnitWouldStayOnThreadsWhereEveryUnitOnOneThreadPaysForMovingData()
    {
        // the cores far apart: a whole step is cheaper on one thread (3 x 7.68 ms) than on threads (3 x 8.45 ms), but a
        // single one-thread unit between two-thread units moves their data (+2 ms) and looks dearer (9.68 ms): bursts
        // time each option next to its own kind, so the choice goes to one thread
        var h = new Host(new ThreadChoice()) { Threads = 11e-6, One = 10e-6, Move = 2e-3 };
        h.Run(2 * ThreadChoice.Burst + 1);
        var after = h.Run(100);
        Assert.True(after.Count(o => o == 1) >= 100 - ThreadChoice.Burst, $"one thread {after.Count(o => o == 1)} of 100");
    }

    [Fact]
    public void OneSlowUnitDoesNotFlipTheChoice()
    {
        var c = new ThreadChoice();
        var h = new Host(c);
        h.Run(2 * ThreadChoice.Burst + 10);
        Assert.Equal(0, c.Preferred);
        // one unit interrupted (50x), then the host is as before
        var (o, timed, explore) = c.Pick("log-probs", 768, h.Now);
        Assert.Equal((0, true, false), (o, timed, explore));
        c.Record("log-probs", 768, 0, true, false, 50 * 6e-6 * 768, h.Now);
        Assert.Equal(0, c.Preferred);
        Assert.All(h.Run(30), x => Assert.Equal(0, x));
    }

    [Fact]
    public void AnExpensiveExplorationWaitsLongerBeforeTheNext()
    {
        // under load a two-thread unit took 300-550 ms where one thread took 7: exploring a burst once a second would cost
        // most of the time
        var h = new Host(new ThreadChoice()) { Threads = 0.4 / 768, One = 0.007 / 768 };
        double onThreads = 0;
        int i = 0;
        while (h.Now < S(120)) { double s = h.Unit(i++); if (h.Ran[^1] == 0) onThreads += s; }
        // the starting burst (7 x 0.4 s) and one exploring burst: the next waits 100 x its ~2.8 s of excess
        Assert.InRange(onThreads, 2 * ThreadChoice.Burst * 0.4 - 0.01, 2 * ThreadChoice.Burst * 0.4 + 0.01);
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
