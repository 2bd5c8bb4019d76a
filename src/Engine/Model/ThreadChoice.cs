// Threads only where they pay: each unit of model work (a forward with its head op, a backward, a prefill or decode
// step, an optimizer step) runs on the calling thread's OpenMP threads or on one thread, whichever this process has
// measured faster lately for models of that shape.
//
// Why (docs/cost-model.md, "Threads of the single device"): on the 2-core development VM a tiny model's
// two-thread train step took 5.7-6.9 ms or 9.8-11.2 ms from one minute to the next (one thread: 9.3-12.5 ms),
// in lockstep with the round trip of a cache line between the two cores (100-125 ns or 400-600 ns: the host
// places the virtual CPUs on nearby or distant physical cores), and under load from other processes the
// two-thread step's median reached 13-113 ms (a descheduled OpenMP thread stalls every barrier) where one
// thread is only time-sliced. No thread count fixed in advance is right in every state; the work measures it.
//
// Results do not depend on the choice: every CPU op gives bit-identical outputs for any thread count (README
// "Determinism"; ctest thread_determinism), so switching between units changes only the time.
using System.Diagnostics;
using ReaLNative.Interop;

namespace ReaLNative.Engine.Model;

/// <summary>
/// The choice between the calling thread's OpenMP threads (<c>n</c> = <see cref="Native.GetNumThreads"/> when the
/// unit starts; nothing to choose where that is 1) and one thread for the units of one kind of model (its shape:
/// <see cref="For"/>). One option runs at a time, for every unit, so a unit is timed next to units of the same option
/// (a unit after a change of option moves its data between the cores' caches: it is run but not timed). It starts with
/// a burst of <see cref="Burst"/> units on one thread, then one on threads, and takes the option whose recent timings
/// price the units seen on both as cheaper: per key (site, log2 work) the median of its last <see cref="Window"/>
/// seconds per unit of work, times the key's last work, summed over the keys timed both ways. After that the other
/// option runs a burst at most every <see cref="ExploreInterval"/> (less often after a burst that cost much:
/// <see cref="ExploreCostRatio"/>), so a change of the host (the cores' distance, other processes' load) is seen within
/// about that long, and every timed unit updates the comparison, so the option in use is left as soon as its recent
/// timings have become dearer. (Two designs were tried first: a choice per key, with a single unit to explore, stayed
/// on two threads with the cores far apart because a one-thread unit between two-thread units paid for moving their
/// data; and the minimum of the recent timings kept two threads under load through units of 300 ms that one thread
/// ran in 7.) Units nest: only the outermost unit of a thread chooses and is timed. Off (every unit on the calling
/// thread's threads) when <see cref="Enabled"/> is false: `realn profile` measures each thread count as it is, and
/// <c>REALN_THREAD_CHOICE=off</c> turns it off for a whole process (<c>=log</c>: on, and each shape's units and timings
/// are printed to stderr at exit).
/// </summary>
internal sealed class ThreadChoice
{
    /// <summary>Timings kept per option and key.</summary>
    public const int Window = 3;
    /// <summary>Units of one option in a row when it is tried (its first one is not timed): a tiny model's PPO train
    /// step is 3 units (log-probs, their backward, the optimizer step).</summary>
    public const int Burst = 7;
    /// <summary>Once both options are timed, the other option runs a burst at most this often (the gain: a change of
    /// the host is followed within about this long; the cost: a burst at the slower speed per interval).</summary>
    public static readonly TimeSpan ExploreInterval = TimeSpan.FromSeconds(1);
    /// <summary>After an exploring burst that took <c>x</c> seconds more than the preferred option would have, the next
    /// waits at least this many times <c>x</c> (exploring costs at most about 1% of the time: under load from other
    /// processes a two-thread unit of 7 ms took 300-550 ms).</summary>
    public const double ExploreCostRatio = 100;

    /// <summary>Process-wide switch (default: on unless REALN_THREAD_CHOICE=off).</summary>
    public static bool Enabled { get; set; } = !string.Equals(Environment.GetEnvironmentVariable("REALN_THREAD_CHOICE"), "off", StringComparison.OrdinalIgnoreCase);

    [ThreadStatic] private static int t_depth;
    /// <summary>The outermost unit in progress on this thread ran one-time work (<see cref="OffTheClock{T}"/>): not timed.</summary>
    [ThreadStatic] private static bool t_untimed;
    /// <summary>The calling thread's thread count, while the outermost unit in progress runs on one thread (else 0).</summary>
    [ThreadStatic] private static int t_oneThreadOf;

    private static readonly System.Collections.Concurrent.ConcurrentDictionary<string, ThreadChoice> s_shared = new();

    /// <summary>The process's choice for work of one kind of model (<paramref name="shape"/>: what makes its units'
    /// timings comparable, e.g. its shard's dimensions and precision).</summary>
    internal static ThreadChoice For(string shape) => s_shared.GetOrAdd(shape, _ => new ThreadChoice());

    static ThreadChoice()
    {
        // REALN_THREAD_CHOICE=log: at exit, each model shape's units on threads and on one thread, its option in use
        // and its keys' median timings (stderr)
        if (string.Equals(Environment.GetEnvironmentVariable("REALN_THREAD_CHOICE"), "log", StringComparison.OrdinalIgnoreCase))
            AppDomain.CurrentDomain.ProcessExit += (_, _) =>
            {
                foreach (var (shape, c) in s_shared)
                {
                    var (t, o) = c.Units();
                    Console.Error.WriteLine($"thread choice {shape}: {t} units on threads, {o} on one thread, now {(c.Preferred == 0 ? "threads" : "one thread")}; " +
                        string.Join("; ", c.Summary().Select(k => FormattableString.Invariant($"{k.Site} 2^{k.Bucket} {k.Threads * 1e6:F2}/{k.One * 1e6:F2} us"))));
                }
            };
    }

    /// <summary>Every unit of this instance on the calling thread's threads (tests compare it with the choice).</summary>
    internal bool Fixed { get; set; }

    private readonly Dictionary<(string Site, int Bucket), KeyTimes> _keys = [];
    private readonly Lock _gate = new();
    private readonly long[] _units = new long[2];
    /// <summary>Options: 0 = the calling thread's threads, 1 = one thread.</summary>
    private int _preferred;
    private int _burstOption = 1, _burstLeft = Burst + 1;   // the first burst: one thread (its first unit also warms up)
    private bool _initial = true, _exploring;
    private int _last = -1;
    private double _burstExcess;
    private TimeSpan _nextExplore;

    private sealed class KeyTimes
    {
        public readonly double[][] Recent = [new double[Window], new double[Window]];
        public readonly int[] Count = new int[2];
        public double LastWork;

        /// <summary>The median of an option's last <see cref="Window"/> seconds per unit of work (of 2: their mean).</summary>
        public double Median(int option)
        {
            int n = Math.Min(Count[option], Window);
            if (n == 0) return double.PositiveInfinity;
            Span<double> r = stackalloc double[Window];
            Recent[option].AsSpan(0, n).CopyTo(r);
            r[..n].Sort();
            return n % 2 == 1 ? r[n / 2] : (r[n / 2 - 1] + r[n / 2]) / 2;
        }
    }

    private static int Bucket(double work) => work >= 1 ? (int)Math.Floor(Math.Log2(work)) : 0;

    /// <summary>The option in use outside bursts: 0 = the calling thread's threads, 1 = one thread.</summary>
    internal int Preferred { get { lock (_gate) return _preferred; } }

    /// <summary>The option of the next unit of <paramref name="work"/> at <paramref name="site"/> at time
    /// <paramref name="now"/> (any clock that only goes forward), whether it is to be timed, and whether it explores.</summary>
    internal (int Option, bool Timed, bool Explore) Pick(string site, double work, TimeSpan now)
    {
        lock (_gate)
        {
            if (_burstLeft == 0 && !_initial && now >= _nextExplore)
            {
                _burstOption = 1 - _preferred;
                _burstLeft = Burst;
                _exploring = true;
                _burstExcess = 0;
            }
            int option = _burstLeft > 0 ? _burstOption : _preferred;
            bool explore = _burstLeft > 0 && _exploring;
            if (_burstLeft > 0) _burstLeft--;
            bool timed = option == _last;
            _last = option;
            return (option, timed, explore);
        }
    }

    /// <summary>Records a unit picked by <see cref="Pick"/> that took <paramref name="seconds"/>, ending at <paramref name="now"/>.</summary>
    internal void Record(string site, double work, int option, bool timed, bool explore, double seconds, TimeSpan now)
    {
        lock (_gate)
        {
            _units[option]++;
            var key = (site, Bucket(work));
            if (!_keys.TryGetValue(key, out var k)) _keys[key] = k = new KeyTimes();
            k.LastWork = work;
            if (timed)
            {
                if (explore && double.IsFinite(k.Median(1 - option))) _burstExcess += seconds - k.Median(1 - option) * work;
                k.Recent[option][k.Count[option] % Window] = seconds / work;
                k.Count[option]++;
            }
            if (_burstLeft > 0) return;
            if (_initial && _burstOption == 1)
            {
                _burstOption = 0;   // the second burst of the start: threads
                _burstLeft = Burst;
                return;
            }
            if (_initial || _exploring)
            {
                _nextExplore = now + (_exploring && _burstExcess > 0 ? Max(ExploreInterval, _burstExcess * ExploreCostRatio * TimeSpan.FromSeconds(1)) : ExploreInterval);
                _initial = _exploring = false;
            }
            Decide();
        }
    }

    private static TimeSpan Max(TimeSpan a, TimeSpan b) => a > b ? a : b;

    /// <summary>The option whose recent timings price the keys timed both ways cheaper (unchanged when none is).</summary>
    private void Decide()
    {
        double c0 = 0, c1 = 0;
        bool any = false;
        foreach (var k in _keys.Values)
        {
            if (k.Count[0] == 0 || k.Count[1] == 0) continue;
            any = true;
            c0 += k.LastWork * k.Median(0);
            c1 += k.LastWork * k.Median(1);
        }
        if (any) _preferred = c1 < c0 ? 1 : 0;
    }

    /// <summary>Units run with each option so far: (the calling thread's threads, one thread).</summary>
    public (long Threads, long One) Units()
    {
        lock (_gate) return (_units[0], _units[1]);
    }

    /// <summary>Per key: the median recent seconds per unit of work with the calling thread's threads and with one
    /// (diagnostics).</summary>
    internal IReadOnlyList<(string Site, int Bucket, double Threads, double One)> Summary()
    {
        lock (_gate)
            return _keys.Select(kv => (kv.Key.Site, kv.Key.Bucket, kv.Value.Median(0), kv.Value.Median(1))).ToList();
    }

    /// <summary>One-time work inside a unit (an activation block allocated and its pages faulted in): it runs on the
    /// calling thread's threads even where the unit runs on one, and the unit it falls in is not timed, so neither
    /// option's timings carry it (session 20: a critic's first forward, on one thread while the choice was
    /// exploring, spent 96 ms of its 107 faulting a 43 MB block in on one thread and was timed as a one-thread
    /// forward). Outside a unit it just runs.</summary>
    internal static T OffTheClock<T>(Func<T> work)
    {
        if (t_depth == 0) return work();
        t_untimed = true;
        int threads = t_oneThreadOf;
        if (threads > 1) Native.SetNumThreads(threads);
        try { return work(); }
        finally { if (threads > 1) Native.SetNumThreads(1); }
    }

    /// <summary>Starts a unit of <paramref name="work"/> (tokens, sequences or elements: any measure proportional to
    /// its compute, the same for every unit of a site) at <paramref name="site"/>; dispose it when the unit ends.</summary>
    public Unit Begin(string site, double work)
    {
        if (t_depth++ > 0) return default;
        t_untimed = false;
        t_oneThreadOf = 0;
        if (!Enabled || Fixed || !(work > 0)) return default;
        int n;
        try { n = Native.GetNumThreads(); }
        catch { t_depth--; throw; }
        if (n <= 1) return default;
        var (option, timed, explore) = Pick(site, work, Stopwatch.GetElapsedTime(0));
        if (option == 1)
        {
            try { Native.SetNumThreads(1); }
            catch { t_depth--; throw; }
            t_oneThreadOf = n;
        }
        return new Unit(this, site, work, option, timed, explore, n, Stopwatch.GetTimestamp());
    }

    /// <summary>A unit in progress: restores the thread count and records its time when disposed.</summary>
    public readonly struct Unit : IDisposable
    {
        private readonly ThreadChoice? _owner;
        private readonly string _site;
        private readonly double _work;
        private readonly int _option, _threads;
        private readonly bool _timed, _explore;
        private readonly long _start;

        internal Unit(ThreadChoice owner, string site, double work, int option, bool timed, bool explore, int threads, long start)
        {
            _owner = owner; _site = site; _work = work; _option = option; _timed = timed; _explore = explore; _threads = threads; _start = start;
        }

        public void Dispose()
        {
            t_depth--;
            if (_owner is null) return;
            double seconds = Stopwatch.GetElapsedTime(_start).TotalSeconds;
            t_oneThreadOf = 0;
            if (_option == 1) Native.SetNumThreads(_threads);
            _owner.Record(_site, _work, _option, _timed && !t_untimed, _explore, seconds, Stopwatch.GetElapsedTime(0));
        }
    }
}
