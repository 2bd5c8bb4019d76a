// Executes one iteration of a DataflowGraph under an execution plan's meshes: a call starts as
// soon as the calls it reads from have finished and no running call occupies one of its devices,
// so calls on disjoint meshes run concurrently (ReaL's list scheduling of model function calls).
// With every call on one device it is the sequential order. Records come back in topological
// order whatever the completion order, so metrics files are reproducible. Cancellation is observed
// between calls: no new call starts, the running ones finish, then OperationCanceledException.
using System.Diagnostics;

namespace ReaLNative.Engine.Dataflow;

internal sealed class MeshExecutor(DataflowGraph graph, IReadOnlyDictionary<string, CallHandler> handlers, Func<string, IReadOnlyCollection<int>> devicesOf)
{
    public DataflowGraph Graph => graph;

    public IReadOnlyList<CallRecord> RunIteration(SampleBatch batch, CancellationToken cancellationToken = default)
    {
        foreach (var k in graph.SourceKeys)
            if (!batch.Contains(k)) throw new InvalidOperationException($"source key '{k}' missing from the batch");
        var order = graph.TopologicalOrder;
        foreach (var c in order)
            if (!handlers.ContainsKey(c.Name)) throw new InvalidOperationException($"no handler for call '{c.Name}'");
        var done = new Dictionary<string, CallRecord>();
        var running = new Dictionary<Task<CallRecord>, (ModelFunctionCall Call, HashSet<int> Devices)>();
        var pending = order.ToList();
        Exception? failure = null;
        while (pending.Count > 0 || running.Count > 0)
        {
            bool cancelled = cancellationToken.IsCancellationRequested;
            if (failure is null && !cancelled)
            {
                var ready = new List<(ModelFunctionCall Call, HashSet<int> Devices)>();
                foreach (var call in pending.ToList())
                {
                    if (!graph.Parents(call.Name).All(done.ContainsKey)) continue;
                    var devs = devicesOf(call.Name).ToHashSet();
                    if (running.Values.Any(r => r.Devices.Overlaps(devs)) || ready.Any(r => r.Devices.Overlaps(devs))) continue;
                    pending.Remove(call);
                    ready.Add((call, devs));
                }
                // A call that starts alone runs on this thread: nothing else can start before it ends (a call becomes ready
                // or its devices free only when a running call ends), and the native library's OpenMP team and per-thread
                // buffers stay those of one thread, as in a run without a plan (a new thread per call pays for new ones).
                if (ready.Count == 1 && running.Count == 0)
                {
                    var (call, _) = ready[0];
                    try { done[call.Name] = Run(call, handlers[call.Name], batch); }
                    catch (Exception e) { failure ??= e; }
                    continue;
                }
                foreach (var (call, devs) in ready)
                {
                    var h = handlers[call.Name];
                    running[Task.Factory.StartNew(() => Run(call, h, batch), TaskCreationOptions.LongRunning)] = (call, devs);
                }
            }
            if (running.Count == 0)
            {
                if (failure is not null || cancelled) break;
                throw new InvalidOperationException($"calls {string.Join(", ", pending.Select(p => p.Name))} can never start (a parent is missing)");
            }
            var t = Task.WaitAny([.. running.Keys]);
            var finished = running.Keys.ElementAt(t);
            running.Remove(finished);
            if (finished.IsFaulted) failure ??= finished.Exception!.InnerException ?? finished.Exception;
            else done[finished.Result.Call] = finished.Result;
        }
        if (failure is not null) System.Runtime.ExceptionServices.ExceptionDispatchInfo.Capture(failure).Throw();
        if (pending.Count > 0) throw new OperationCanceledException("cancelled between calls", cancellationToken);
        return order.Select(c => done[c.Name]).ToList();
    }

    private static CallRecord Run(ModelFunctionCall call, CallHandler h, SampleBatch batch)
    {
        var sw = Stopwatch.StartNew();
        var figures = h(call, batch);
        sw.Stop();
        foreach (var k in call.Outputs)
            if (!batch.Contains(k)) throw new InvalidOperationException($"call '{call.Name}' did not produce its output '{k}'");
        return new CallRecord(call.Name, sw.Elapsed.TotalSeconds, figures);
    }
}
