// A per-action float output of a batch on the master (a generation's log-probs, an inference call's
// log-probs or values): either here, or kept by the worker processes that computed it and fetched
// from them on first read (Workers/RemoteReplica.cs). Under worker processes, a synchronous run's
// on-policy train calls read these outputs worker to worker and derive their loss inputs there
// (Workers/ResidentBatches.cs), so the master needs only their length and where they are: the
// floats never come back unless something on the master reads them (an off-policy fallback, a
// batch the workers no longer hold). A read after the output was released (its iteration is over)
// fails: it never reads zeros.
namespace ReaLNative.Engine.Model;

/// <summary>An array the workers may keep (<see cref="ActionFloats"/>, <see cref="KeptInts"/>): here, or
/// fetched from them once on first read of <see cref="Values"/>; a read after release fails.</summary>
internal abstract class KeptArray<T>
{
    private readonly Lock _gate = new();
    private T[]? _values;
    private Func<T[]>? _fetch;
    private Action? _release;
    private bool _released;

    protected KeptArray(int length, T[]? values, object? resident, Func<T[]>? fetch, Action? release, string what)
    {
        Length = length;
        _values = values;
        Resident = resident;
        _fetch = fetch;
        _release = release;
        What = what;
    }

    /// <summary>Elements, known without fetching.</summary>
    public int Length { get; }
    /// <summary>Where the workers keep this output (the Workers folder's ResidentOutput), or null.</summary>
    public object? Resident { get; }
    /// <summary>What the output is, for messages.</summary>
    public string What { get; }

    /// <summary>Whether the values are in this process (held from the start, or fetched).</summary>
    public bool Fetched
    {
        get { lock (_gate) return _values is not null; }
    }

    /// <summary>Whether the master released it (a read of values never fetched then fails).</summary>
    public bool Released
    {
        get { lock (_gate) return _released; }
    }

    /// <summary>The values; the first read of an output the workers keep fetches it from them (once).</summary>
    public T[] Values
    {
        get
        {
            Action? release;
            T[] v;
            lock (_gate)
            {
                if (_values is { } have) return have;
                if (_released) throw new InvalidOperationException($"{What}: read after it was released (its iteration is over); it was never fetched from the workers");
                v = _fetch!();
                if (v.Length != Length) throw new InvalidDataException($"{What}: fetched {v.Length} {(typeof(T) == typeof(float) ? "floats" : "values")}, expected {Length}");
                _values = v;
                _fetch = null;
                release = _release;
                _release = null;
            }
            release?.Invoke();
            return v;
        }
    }

    /// <summary>The master will not read this output any more: the workers may drop it with its
    /// batch. A later read of an output never fetched fails.</summary>
    public void Release()
    {
        Action? release;
        lock (_gate)
        {
            _released = true;
            _fetch = null;
            release = _release;
            _release = null;
        }
        release?.Invoke();
    }
}

internal sealed class ActionFloats : KeptArray<float>
{
    private ActionFloats(int length, float[]? values, object? resident, Func<float[]>? fetch, Action? release, string what)
        : base(length, values, resident, fetch, release, what) { }

    /// <summary>An output this process holds.</summary>
    public static ActionFloats Here(float[] values) => new(values.Length, values, null, null, null, "per-action output");

    /// <summary>An output of <paramref name="length"/> floats the workers keep (<paramref name="resident"/>:
    /// where, Workers/ResidentOutput); <paramref name="fetch"/> reads it from them (with a deadline,
    /// failing naming the worker); <paramref name="release"/> tells the owner the master will not
    /// read it any more (called once: at the first fetch or at <see cref="Release"/>).</summary>
    public static ActionFloats Remote(int length, object resident, Func<float[]> fetch, Action release, string what) =>
        new(length, null, resident, fetch, release, what);
}

/// <summary>Token ids the workers keep (a kept generation's sequences, prompt and answer, packed in
/// batch order: RemoteReplica.KeptGenerate when the workers score the answers): only their count
/// is known on the master until something reads them.</summary>
internal sealed class KeptInts : KeptArray<int>
{
    private KeptInts(int length, int[]? values, Func<int[]>? fetch, Action? release, string what)
        : base(length, values, null, fetch, release, what) { }

    /// <summary>Ids this process holds.</summary>
    public static KeptInts Here(int[] values) => new(values.Length, values, null, null, "token ids");

    /// <summary><paramref name="length"/> ids the workers keep, read by <paramref name="fetch"/> (with
    /// a deadline, naming a failed worker); <paramref name="release"/> as for <see cref="ActionFloats.Remote"/>.</summary>
    public static KeptInts Remote(int length, Func<int[]> fetch, Action release, string what) => new(length, null, fetch, release, what);
}
