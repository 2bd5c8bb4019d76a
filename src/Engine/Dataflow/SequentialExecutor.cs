// Executes one iteration of a DataflowGraph on a single device: calls run one after another in
// topological order, each reading its input keys from and writing its output keys to the
// iteration's SampleBatch. Keeping this apart from the graph lets the distributed runtime execute
// the same graph under an execution plan.
using System.Diagnostics;

namespace ReaLNative.Engine.Dataflow;

/// <summary>Data of one iteration, by key (DESIGN.md: sequences are packed arrays, never padded).</summary>
internal sealed class SampleBatch
{
    // Calls on disjoint meshes run concurrently (MeshExecutor): every access takes the lock.
    private readonly Dictionary<string, object> _data = new(StringComparer.Ordinal);
    private readonly Lock _gate = new();

    public bool Contains(string key) { lock (_gate) return _data.ContainsKey(key); }
    public IEnumerable<string> Keys { get { lock (_gate) return _data.Keys.ToArray(); } }

    public void Set(string key, object value)
    {
        lock (_gate)
            if (!_data.TryAdd(key, value)) throw new InvalidOperationException($"key '{key}' is already set in this iteration");
    }

    /// <summary>The value of <paramref name="key"/>. A per-action output (<see cref="Model.ActionFloats"/>,
    /// which may stay on the worker processes) reads as float[] (fetched on first read) and a float[]
    /// as an ActionFloats (the same one on every read).</summary>
    public T Get<T>(string key) where T : class
    {
        object? v;
        lock (_gate)
        {
            if (!_data.TryGetValue(key, out v)) throw new KeyNotFoundException($"key '{key}' is not in this iteration's batch");
            if (typeof(T) == typeof(Model.ActionFloats) && v is float[] f) _data[key] = v = Model.ActionFloats.Here(f);
        }
        if (typeof(T) == typeof(float[]) && v is Model.ActionFloats a) return (T)(object)a.Values;
        return v as T ?? throw new InvalidCastException($"key '{key}' holds {v.GetType().Name}, not {typeof(T).Name}");
    }

    /// <summary>Runs <paramref name="action"/> when the iteration is over (<see cref="Release"/>).</summary>
    public void OnRelease(Action action)
    {
        lock (_gate) _onRelease.Add(action);
    }

    private readonly List<Action> _onRelease = [];

    /// <summary>The iteration is over: the per-action outputs the workers keep (<see cref="Model.ActionFloats"/>)
    /// will not be read any more (a later read fails), and what handlers registered with <see cref="OnRelease"/> runs.</summary>
    public void Release()
    {
        List<Action> actions;
        List<Model.ActionFloats> outputs;
        lock (_gate)
        {
            actions = [.. _onRelease];
            _onRelease.Clear();
            outputs = [.. _data.Values.OfType<Model.ActionFloats>()];
        }
        foreach (var o in outputs) o.Release();
        foreach (var a in actions) a();
    }
}

/// <summary>What one call did: its name, wall time and the handler's scalar figures.</summary>
internal sealed record CallRecord(string Call, double Seconds, IReadOnlyDictionary<string, double> Figures);

/// <summary>A call's implementation: reads its inputs from the batch, sets its outputs, returns figures for metrics.</summary>
internal delegate IReadOnlyDictionary<string, double> CallHandler(ModelFunctionCall call, SampleBatch batch);

internal sealed class SequentialExecutor(DataflowGraph graph, IReadOnlyDictionary<string, CallHandler> handlers)
{
    public DataflowGraph Graph => graph;

    public IReadOnlyList<CallRecord> RunIteration(SampleBatch batch)
    {
        foreach (var k in graph.SourceKeys)
            if (!batch.Contains(k)) throw new InvalidOperationException($"source key '{k}' missing from the batch");
        var records = new List<CallRecord>(graph.Calls.Count);
        foreach (var call in graph.TopologicalOrder)
        {
            if (!handlers.TryGetValue(call.Name, out var h))
                throw new InvalidOperationException($"no handler for call '{call.Name}'");
            var sw = Stopwatch.StartNew();
            var figures = h(call, batch);
            sw.Stop();
            foreach (var k in call.Outputs)
                if (!batch.Contains(k)) throw new InvalidOperationException($"call '{call.Name}' did not produce its output '{k}'");
            records.Add(new CallRecord(call.Name, sw.Elapsed.TotalSeconds, figures));
        }
        return records;
    }
}
