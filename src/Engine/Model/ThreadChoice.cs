// Threads only where they pay: a unit of model work (a forward, a backward, a prefill or decode step, an
// optimizer step) runs on the calling thread's OpenMP threads or on one thread, whichever this process has
// measured faster for that kind and size of work lately.
//
// Why (docs/cost-model.md, "Threads of the single device"): on the 2-core development VM a tiny model's
// two-thread train step took 5.8-6.1 ms or 9.9-10.6 ms from one minute to the next (one thread: 9.3-10.1 ms),
// in lockstep with the round trip of a cache line between the two cores (100-125 ns or 480-520 ns: the host
// moves the virtual CPUs between nearby and distant physical cores), and under load from other processes
// the two-thread step's median reached 19-113 ms (a descheduled OpenMP thread stalls every barrier) where one
// thread is only time-sliced. No thread count fixed in advance is right in both states; the work measures it.
//
// Results do not depend on the choice: every CPU op gives bit-identical outputs for any thread count (README
// "Determinism"; ctest thread_determinism), so switching between units changes only the time.
using System.Diagnostics;
using ReaLNative.Interop;

namespace ReaLNative.Engine.Model;

/// <summary>
/// The choice between the calling thread's OpenMP threads (<c>n</c> = <see cref="Native.GetNumThreads"/> when the
/// unit starts; nothing to choose where that is 1) and one thread, per (site, log2 size) of work, from the last
/// <see cref="Window"/> timings of each: after a first unit (not timed: it grows buffers and compiles code), each
/// option is timed twice (alternately, one thread first) before the faster is taken;
/// after that the slower option runs one unit at most every <see cref="ExploreInterval"/> (less often after an
/// exploring unit that cost much: <see cref="ExploreCostRatio"/>), so a change of the host (the cores' distance,
/// other processes' load) is seen within about that long. The median of the recent timings
/// is compared (per unit of work), so one unit slowed by a passing interruption does not flip the choice, while an
/// option that has become slower (two of its last three units) is left. (The minimum was tried first: under load
/// it kept two threads through units of 300 ms that one thread ran in 7.) Units nest: only the outermost
/// unit of a thread chooses and is timed. Off (every unit on the calling thread's threads) when
/// <see cref="Enabled"/> is false: `realn profile` measures each thread count as it is, and
/// <c>REALN_THREAD_CHOICE=off</c> turns it off for a whole process.
/// </summary>
internal sealed class ThreadChoice
{
    /// <summary>Timings kept per option and key.</summary>
    public const int Window = 3;
    /// <summary>Once both options are timed, the slower option runs one unit of a key at most this often (the cost:
    /// one unit per key at the slower speed per interval, about 1% of a busy second for a tiny model's
    /// 3-5 ms units; the gain: a change of the host is followed within about this long).</summary>
    public static readonly TimeSpan ExploreInterval = TimeSpan.FromSeconds(1);
    /// <summary>After an exploring unit that took <c>x</c> seconds more than the preferred option would have, the next
    /// waits at least this many times <c>x</c> (so exploring costs at most about 1% of the time: under load from other
    /// processes a two-thread unit of 7 ms took 300-550 ms).</summary>
    public const double ExploreCostRatio = 100;

    /// <summary>Process-wide switch (default: on unless REALN_THREAD_CHOICE=off).</summary>
    public static bool Enabled { get; set; } = !string.Equals(Environment.GetEnvironmentVariable("REALN_THREAD_CHOICE"), "off", StringComparison.OrdinalIgnoreCase);

    [ThreadStatic] private static int t_depth;

    private static readonly System.Collections.Concurrent.ConcurrentDictionary<string, ThreadChoice> s_shared = new();

    /// <summary>The process's choice for work of one kind of model (<paramref name="shape"/>: what makes its units'
    /// timings comparable, e.g. its shard's dimensions and precision).</summary>
    internal static ThreadChoice For(string shape) => s_shared.GetOrAdd(shape, _ => new ThreadChoice());

    /// <summary>Every unit of this instance on the calling thread's threads (tests compare it with the choice).</summary>
    internal bool Fixed { get; set; }

    private readonly Dictionary<(string Site, int Bucket), Entry> _entries = [];
    private readonly Lock _gate = new();

    /// <summary>Options: 0 = the calling thread's threads, 1 = one thread.</summary>
    internal sealed class Entry
    {
        internal readonly double[][] Recent = [new double[Window], new double[Window]];
        internal readonly int[] Count = new int[2];
        internal readonly long[] Chosen = new long[2];
        private TimeSpan _nextExplore;
        private bool _warm;

        /// <summary>The option for the next unit at time <paramref name="now"/> (any clock that only goes forward), and
        /// whether it explores (runs the option that is not preferred).</summary>
        internal (int Option, bool Explore) Pick(TimeSpan now)
        {
            if (Count[0] < 2 || Count[1] < 2)
            {
                _nextExplore = now + ExploreInterval;
                return (Count[1] <= Count[0] ? 1 : 0, false);
            }
            int best = Best(0) <= Best(1) ? 0 : 1;
            if (now < _nextExplore) return (best, false);
            _nextExplore = now + ExploreInterval;
            return (1 - best, true);
        }

        /// <summary>The typical recent seconds per unit of work of an option: the median of its last <see cref="Window"/>
        /// timings (of 2: their mean; +inf before any).</summary>
        internal double Best(int option)
        {
            int n = Math.Min(Count[option], Window);
            if (n == 0) return double.PositiveInfinity;
            Span<double> r = stackalloc double[Window];
            Recent[option].AsSpan(0, n).CopyTo(r);
            r[..n].Sort();
            return n % 2 == 1 ? r[n / 2] : (r[n / 2 - 1] + r[n / 2]) / 2;
        }

        /// <summary>Records a unit of <paramref name="work"/> that took <paramref name="seconds"/> with
        /// <paramref name="option"/>, ending at <paramref name="now"/>.</summary>
        internal void Record(int option, double seconds, double work, bool explore, TimeSpan now)
        {
            if (!_warm)
            {
                _warm = true;   // a key's first unit grows buffers and compiles code: not a timing of either option
                return;
            }
            if (explore)
            {
                double excess = seconds - Best(1 - option) * work;
                if (excess > 0 && now + excess * ExploreCostRatio * TimeSpan.FromSeconds(1) > _nextExplore)
                    _nextExplore = now + excess * ExploreCostRatio * TimeSpan.FromSeconds(1);
            }
            Recent[option][Count[option] % Window] = seconds / work;
            Count[option]++;
            Chosen[option]++;
        }
    }

    /// <summary>The entry of a key (tests read it).</summary>
    internal Entry EntryFor(string site, double work)
    {
        var key = (site, Bucket(work));
        lock (_gate)
        {
            if (!_entries.TryGetValue(key, out var e)) _entries[key] = e = new Entry();
            return e;
        }
    }

    private static int Bucket(double work) => work >= 1 ? (int)Math.Floor(Math.Log2(work)) : 0;

    /// <summary>Units run with each option so far, over every key: (the calling thread's threads, one thread).</summary>
    public (long Threads, long One) Units()
    {
        lock (_gate)
            return (_entries.Values.Sum(e => e.Chosen[0]), _entries.Values.Sum(e => e.Chosen[1]));
    }

    /// <summary>Per key: the lowest recent seconds per unit of work with the calling thread's threads and with one, and
    /// the units run with each (diagnostics).</summary>
    internal IReadOnlyList<(string Site, int Bucket, double Threads, double One, long ThreadsUnits, long OneUnits)> Summary()
    {
        lock (_gate)
            return _entries.Select(kv => (kv.Key.Site, kv.Key.Bucket, kv.Value.Best(0), kv.Value.Best(1), kv.Value.Chosen[0], kv.Value.Chosen[1])).ToList();
    }

    /// <summary>Starts a unit of <paramref name="work"/> (tokens, sequences or elements: any measure proportional to
    /// its compute, the same for every unit of a site) at <paramref name="site"/>; dispose it when the unit ends.</summary>
    public Unit Begin(string site, double work)
    {
        if (t_depth++ > 0 || !Enabled || Fixed || !(work > 0)) return new Unit(null, 0, false, 0, 0, 0);
        int n;
        try { n = Native.GetNumThreads(); }
        catch { t_depth--; throw; }
        if (n <= 1) return new Unit(null, 0, false, 0, 0, 0);
        var e = EntryFor(site, work);
        int option;
        bool explore;
        lock (e) (option, explore) = e.Pick(Stopwatch.GetElapsedTime(0));
        if (option == 1)
        {
            try { Native.SetNumThreads(1); }
            catch { t_depth--; throw; }
        }
        return new Unit(e, option, explore, n, work, Stopwatch.GetTimestamp());
    }

    /// <summary>A unit in progress: restores the thread count and records its time when disposed.</summary>
    public readonly struct Unit : IDisposable
    {
        private readonly Entry? _entry;
        private readonly int _option, _threads;
        private readonly bool _explore;
        private readonly double _work;
        private readonly long _start;

        internal Unit(Entry? entry, int option, bool explore, int threads, double work, long start)
        {
            _entry = entry; _option = option; _explore = explore; _threads = threads; _work = work; _start = start;
        }

        public void Dispose()
        {
            t_depth--;
            if (_entry is null) return;
            double seconds = Stopwatch.GetElapsedTime(_start).TotalSeconds;
            if (_option == 1) Native.SetNumThreads(_threads);
            lock (_entry) _entry.Record(_option, seconds, _work, _explore, Stopwatch.GetElapsedTime(0));
        }
    }
}
