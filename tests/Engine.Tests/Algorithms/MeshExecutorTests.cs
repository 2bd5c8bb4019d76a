// The plan executor's scheduling: calls on disjoint meshes overlap in time, calls sharing a device
// never do, parents always finish first, records come back in topological order, and a failing
// call fails the iteration naming it after the others finished; a call that starts alone runs on the
// executor's own thread (one OpenMP team for the whole run, as without a plan).
using ReaLNative.Engine.Config;
using ReaLNative.Engine.Dataflow;
using Xunit;

namespace ReaLNative.Engine.Tests.Algorithms;

public class MeshExecutorTests
{
    private static readonly BatchConfig Batch = new(8, 16, 8, 2, 1);

    /// <param name="together">Groups of calls expected to run at once: each call of a group, once started, waits (up to
    /// 10 s) until every call of its group has started, so their overlap does not depend on how fast a loaded host starts
    /// threads (with 150 ms sleeps alone, a thread started late under heavy parallel tests missed its siblings). Run one
    /// after another they cannot all start, the wait ends at its deadline and the spans do not overlap: the assertion fails.</param>
    private static (IReadOnlyList<CallRecord> Records, Dictionary<string, (DateTime Start, DateTime End)> Spans) Run(Func<string, int[]> devices, string? failing = null, string[][]? together = null)
    {
        var g = DataflowGraph.For("ppo", Batch);
        var spans = new Dictionary<string, (DateTime, DateTime)>();
        var groups = (together ?? []).Select(names => (Names: names, Started: new CountdownEvent(names.Length))).ToList();
        var handlers = g.Calls.ToDictionary(c => c.Name, c => (CallHandler)((call, b) =>
        {
            var start = DateTime.UtcNow;
            foreach (var k in call.Inputs) Assert.True(b.Contains(k), $"{call.Name} started before its input {k} existed");
            foreach (var (names, started) in groups.Where(x => x.Names.Contains(call.Name)))
            {
                started.Signal();
                started.Wait(TimeSpan.FromSeconds(10));
            }
            Thread.Sleep(150);
            if (call.Name == failing) throw new InvalidOperationException($"{call.Name} broke");
            foreach (var k in call.Outputs) b.Set(k, new object());
            lock (spans) spans[call.Name] = (start, DateTime.UtcNow);
            return new Dictionary<string, double>();
        }));
        var batch = new SampleBatch();
        foreach (var k in g.SourceKeys) batch.Set(k, new object());
        var records = new MeshExecutor(g, handlers, n => devices(n)).RunIteration(batch);
        return (records, spans);
    }

    private static bool Overlap((DateTime S, DateTime E) a, (DateTime S, DateTime E) b) => a.S < b.E && b.S < a.E;

    [Fact]
    public void DisjointMeshesRunConcurrentlySharedDevicesDoNot()
    {
        // PPO: the three inference calls on devices 0, 1, 2; the two train calls on 0-1 and 2-3.
        var mesh = new Dictionary<string, int[]>
        {
            ["actor_gen"] = [0, 1, 2, 3], ["rew_inf"] = [0], ["ref_inf"] = [1], ["critic_inf"] = [2],
            ["actor_train"] = [0, 1], ["critic_train"] = [2, 3],
        };
        var (records, spans) = Run(n => mesh[n], together: [["rew_inf", "ref_inf", "critic_inf"], ["actor_train", "critic_train"]]);
        Assert.Equal(DataflowGraph.For("ppo", Batch).TopologicalOrder.Select(c => c.Name), records.Select(r => r.Call));
        Assert.True(Overlap(spans["rew_inf"], spans["ref_inf"]) && Overlap(spans["ref_inf"], spans["critic_inf"]), "inference calls on disjoint devices did not overlap");
        Assert.True(Overlap(spans["actor_train"], spans["critic_train"]), "train calls on disjoint meshes did not overlap");
        foreach (var (a, da) in mesh)
            foreach (var (b, db) in mesh)
                if (a != b && da.Intersect(db).Any()) Assert.False(Overlap(spans[a], spans[b]), $"{a} and {b} share a device but overlapped");
    }

    [Fact]
    public void OneDeviceIsSequentialAndAFailureNamesTheCall()
    {
        var (_, spans) = Run(_ => [0]);
        var all = spans.Values.ToList();
        for (int i = 0; i < all.Count; i++)
            for (int j = i + 1; j < all.Count; j++) Assert.False(Overlap(all[i], all[j]));
        var e = Assert.Throws<InvalidOperationException>(() => Run(n => n == "ref_inf" ? [1] : [0], failing: "ref_inf"));
        Assert.Contains("ref_inf broke", e.Message);
    }

    [Fact]
    public void ACallThatStartsAloneRunsOnTheCallersThread()
    {
        // PPO on one device: every call starts alone. With rew/ref/critic on disjoint devices they start together.
        var g = DataflowGraph.For("ppo", Batch);
        foreach (var (devices, concurrent) in new (Func<string, int[]>, string[])[]
                 {
                     (_ => [0], []),
                     (n => n switch { "rew_inf" => [0], "ref_inf" => [1], "critic_inf" => [2], _ => [0, 1, 2] }, ["rew_inf", "ref_inf", "critic_inf"]),
                 })
        {
            var threads = new Dictionary<string, int>();
            var handlers = g.Calls.ToDictionary(c => c.Name, c => (CallHandler)((call, b) =>
            {
                if (concurrent.Contains(call.Name)) Thread.Sleep(100);
                lock (threads) threads[call.Name] = Environment.CurrentManagedThreadId;
                foreach (var k in call.Outputs) b.Set(k, new object());
                return new Dictionary<string, double>();
            }));
            var batch = new SampleBatch();
            foreach (var k in g.SourceKeys) batch.Set(k, new object());
            new MeshExecutor(g, handlers, n => devices(n)).RunIteration(batch);
            int me = Environment.CurrentManagedThreadId;
            foreach (var c in g.Calls)
                if (concurrent.Contains(c.Name)) Assert.NotEqual(me, threads[c.Name]);
                else Assert.True(me == threads[c.Name], $"{c.Name} started alone but ran on another thread");
        }
    }
}
