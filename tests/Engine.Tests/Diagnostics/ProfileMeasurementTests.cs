// The rule behind `realn profile`'s block points (ProfileCommand.InterleavedDifferences), on a clock the test
// moves itself: every pair timed in each round, the median round counting, rounds added until every median is
// settled, and a difference that never settles refused. No wall time is measured here.
using ReaLNative.Diagnostics;
using Xunit;

namespace ReaLNative.Engine.Tests.Diagnostics;

public sealed class ProfileMeasurementTests
{
    /// <summary>A clock that only the timed actions advance.</summary>
    private sealed class FakeClock
    {
        public long Now;
        public long Read() => Now;
    }

    [Fact]
    public void EveryPairIsTimedInEachRoundAndTheMedianRoundCounts()
    {
        var clock = new FakeClock();
        var order = new List<string>();
        int roundA = 0, roundC = 0;
        // Pair 1: A - B is 200 ticks, except every fourth round, when a burst adds 5000 to A (a median ignores it; a
        // mean would not). Pair 2: C - D is 50 ticks; its setup runs before each of its timings.
        var pairs = new List<(string, Action?, Action, Action)>
        {
            ("first", () => order.Add("setup1"), () => { order.Add("A"); clock.Now += 300 + (roundA++ % 4 == 3 ? 5000 : 0); }, () => { order.Add("B"); clock.Now += 100; }),
            ("second", () => order.Add("setup2"), () => { order.Add("C"); roundC++; clock.Now += 150; }, () => { order.Add("D"); clock.Now += 100; }),
        };
        var d = ProfileCommand.InterleavedDifferences("test", pairs, clock.Read, ticksPerSecond: 1000);
        Assert.Equal(0.2, d[0], 12);
        Assert.Equal(0.05, d[1], 12);
        // a warm-up of each pair, then one set of 9 rounds, the pairs in turn within each
        Assert.Equal(10, roundC);
        Assert.Equal(60, order.Count);
        for (int round = 0; round < 10; round++)
            Assert.Equal(["setup1", "A", "B", "setup2", "C", "D"], order.Skip(6 * round).Take(6));
    }

    [Fact]
    public void RoundsAreAddedUntilEveryMedianIsSettledAndAnUnsettledOneIsRefusedNamingIt()
    {
        // Alternating 900 and 100 ticks of difference: a median of 900 and an interquartile range of 800, whose standard
        // error (0.93 x 800 / sqrt(n)) is 248 after 9 rounds, above a quarter of the median (225), and 175 after 18: a
        // second set of rounds is needed and suffices.
        var clock = new FakeClock();
        int k = 0;
        var pairs = new List<(string, Action?, Action, Action)>
        {
            ("steady", null, () => clock.Now += 400, () => clock.Now += 100),
            ("noisy", null, () => clock.Now += (k++ % 2 == 0 ? 200 : 1000), () => clock.Now += 100),
        };
        var d = ProfileCommand.InterleavedDifferences("test", pairs, clock.Read, ticksPerSecond: 1000);
        Assert.Equal(1 + 18, k);   // warm-up, then two sets of 9 rounds
        Assert.Equal(0.3, d[0], 12);
        Assert.Equal(0.9, d[1], 12);

        // A difference whose rounds spread far wider than its median for good (10, 100 and 1000 ticks in turn: a median
        // of 100, an interquartile range of 990): refused after the last set of rounds, the pair named; so is one that is
        // not above zero.
        k = 0;
        long[] spread = [10, 100, 1000];
        var wild = new List<(string, Action?, Action, Action)>
        {
            ("steady", null, () => clock.Now += 400, () => clock.Now += 100),
            ("wild (1 thread)", null, () => clock.Now += 100 + spread[k++ % 3], () => clock.Now += 100),
        };
        var e = Assert.Throws<MeasurementException>(() => ProfileCommand.InterleavedDifferences("a block", wild, clock.Read, ticksPerSecond: 1000));
        Assert.Contains("a block, wild (1 thread)", e.Message);
        Assert.Contains("in 45 rounds", e.Message);
        Assert.Equal(1 + 45, k);
        var none = new List<(string, Action?, Action, Action)> { ("flat", null, () => clock.Now += 100, () => clock.Now += 100) };
        Assert.Contains("flat", Assert.Throws<MeasurementException>(() => ProfileCommand.InterleavedDifferences("a block", none, clock.Read, ticksPerSecond: 1000)).Message);
    }
}
