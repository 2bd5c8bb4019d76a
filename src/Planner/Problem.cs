// The search space of one planning problem: per call, the candidate options (mesh x strategy x
// micro-batches x recompute/offload) with their costs precomputed, and the evaluator that turns
// one choice per call into memory use and a simulated iteration time.
using System.Collections.Concurrent;

namespace ReaLNative.Planner;

/// <summary>One candidate of one call with its estimated seconds and memory.</summary>
public sealed record OptionInfo(CallOption Option, double Seconds, CallMemory Memory)
{
    /// <summary>Of <see cref="Seconds"/>: the master-worker round trips or the in-process dispatch
    /// (<see cref="Estimator.DispatchSeconds"/>), which no device computes in.</summary>
    public double Dispatch { get; init; }
    /// <summary>The call's compute on one device as if it had its core alone (<see cref="Estimator.Unstretched"/>): what the
    /// schedule stretches by the devices computing at the same time on a shared host with more devices than cores.</summary>
    public double Work { get; init; }
    /// <summary>The round trips while no more devices compute than cores (<see cref="Estimator.WorkerDispatchSeconds"/>
    /// uncrowded); <see cref="Dispatch"/> is with every device of the spec computing.</summary>
    public double DispatchUncrowded { get; init; }
}

public sealed class PlanningProblem
{
    public Estimator Estimator { get; }
    public ClusterSpec Cluster => Estimator.Cluster;
    public Experiment Experiment => Estimator.Experiment;
    public IReadOnlyList<ModelCall> Calls { get; }
    /// <summary>Candidate options per call (after memory filtering and Pareto pruning).</summary>
    public List<OptionInfo>[] Options { get; }
    internal readonly int[] TrainCallOfRole; // per call: index of its role's train call, or -1
    internal readonly int[][] InputIdx;
    internal readonly bool[] Trainable;
    private readonly ConcurrentDictionary<long, double> _realloc = new();
    /// <summary>Per call, how many of <see cref="Options"/> the search explores: options added later by
    /// baselines (for example ZeRO-3 priced ones, which the engine cannot run) are not searched.</summary>
    public int[] SearchCount { get; }

    public PlanningProblem(Estimator est)
    {
        Estimator = est;
        Calls = est.Experiment.Calls;
        int n = Calls.Count;
        TrainCallOfRole = new int[n]; InputIdx = new int[n][]; Trainable = new bool[n];
        for (int i = 0; i < n; i++)
        {
            var c = Calls[i];
            TrainCallOfRole[i] = Calls.ToList().FindIndex(x => x.Role == c.Role && x.Type == CallType.TrainStep);
            Trainable[i] = TrainCallOfRole[i] >= 0;
            InputIdx[i] = c.Inputs.Select(x => Calls.ToList().FindIndex(y => y.Name == x)).ToArray();
        }
        Options = new List<OptionInfo>[n];
        for (int i = 0; i < n; i++)
        {
            var kept = new List<OptionInfo>();
            foreach (var mesh in Meshes(est.Cluster))
                kept.AddRange(Pareto(Raw(i, mesh)));
            if (kept.Count == 0) throw Infeasible(i);
            Options[i] = kept;
        }
        // A non-train call of a trainable model that runs on its train layout needs no reallocation and
        // no second copy of the weights, which the per-mesh Pareto filter cannot see: keep, per kept
        // train layout, the fastest option of that call on the same layout.
        for (int i = 0; i < n; i++)
        {
            int tc = TrainCallOfRole[i];
            if (tc < 0 || tc == i) continue;
            var layouts = Options[tc].Select(o => (o.Option.Mesh, o.Option.Strategy)).Distinct().ToList();
            var extra = new List<OptionInfo>();
            foreach (var g in layouts.GroupBy(l => l.Mesh))
            {
                var strategies = g.Select(l => l.Strategy).ToHashSet();
                foreach (var best in Raw(i, g.Key).Where(o => strategies.Contains(o.Option.Strategy))
                             .GroupBy(o => o.Option.Strategy).Select(s => s.OrderBy(o => o.Seconds).First()))
                    if (!Options[i].Any(o => o.Option == best.Option)) extra.Add(best);
            }
            // insert next to options on the same mesh so the search's same-mesh moves see them
            foreach (var e in extra)
            {
                int at = Options[i].FindLastIndex(o => o.Option.Mesh == e.Option.Mesh);
                Options[i].Insert(at < 0 ? Options[i].Count : at + 1, e);
            }
        }
        SearchCount = Options.Select(o => o.Count).ToArray();
    }

    /// <summary>Every aligned single-node mesh and every contiguous range of whole nodes.</summary>
    public static IEnumerable<Mesh> Meshes(ClusterSpec c)
    {
        for (int node = 0; node < c.Nodes; node++)
            for (int k = 1; k <= c.DevicesPerNode; k *= 2)
                for (int s = 0; s < c.DevicesPerNode; s += k)
                    yield return new Mesh(node, 1, s, k);
        for (int cnt = 2; cnt <= c.Nodes; cnt++)
            for (int s = 0; s + cnt <= c.Nodes; s++)
                yield return new Mesh(s, cnt, 0, c.DevicesPerNode);
    }

    public Mesh FullMesh => Cluster.Nodes > 1 ? new Mesh(0, Cluster.Nodes, 0, Cluster.DevicesPerNode) : new Mesh(0, 1, 0, Cluster.DevicesPerNode);

    /// <summary>Memory of an option that must fit on its own (weights, train state, active).</summary>
    internal static double AloneBytes(CallMemory m) => m.WeightBytes + m.TrainStateBytes + m.ActiveBytes;

    /// <summary>All valid options of call <paramref name="ci"/> on a mesh whose memory fits on its own.</summary>
    public IEnumerable<OptionInfo> Raw(int ci, Mesh mesh)
    {
        var c = Calls[ci];
        var model = Experiment.Models[c.Role];
        int size = mesh.Size;
        bool[] flags = c.Type == CallType.TrainStep || !Trainable[ci] ? [false, true] : [false];
        for (int tp = 1; tp <= mesh.DeviceCount; tp *= 2)
        {
            if (size % tp != 0) continue;
            for (int pp = 1; pp <= size / tp; pp++)
            {
                if (size / tp % pp != 0) continue;
                var s = new Strategy(pp, size / tp / pp, tp);
                // pp, 2pp, 4pp micro-batches; with fewer sequences per replica than stages (long contexts),
                // as many as there are: a pipeline that is mostly bubble can still be the only one that fits
                int most = c.Sequences / c.OptimizerSteps / s.Dp;
                foreach (int mb in pp <= most ? (int[])[pp, 2 * pp, 4 * pp] : most >= 1 ? [most] : [])
                {
                    if (PlanValidator.StrategyProblem(s, mb, model, c, Cluster.DevicesPerNode) is not null) continue;
                    foreach (bool f in flags)
                    {
                        var o = new CallOption(mesh, s, mb, f);
                        var mem = Estimator.Memory(c, o);
                        if (AloneBytes(mem) > Cluster.UsableMemoryBytes) continue;
                        yield return Info(ci, o, mem);
                    }
                }
            }
        }
    }

    /// <summary>Keeps options not dominated in (seconds, resident bytes, active bytes) by another on the same mesh.</summary>
    private static List<OptionInfo> Pareto(IEnumerable<OptionInfo> raw)
    {
        var list = raw.OrderBy(o => o.Seconds).ToList();
        var keep = new List<OptionInfo>();
        foreach (var o in list)
        {
            var (rs, ra) = Split(o);
            bool dominated = keep.Any(k => { var (ks, ka) = Split(k); return ks <= rs && ka <= ra; });
            if (!dominated) keep.Add(o);
        }
        return keep;
        static (double, double) Split(OptionInfo o) => o.Option.Flag && o.Memory.TrainStateBytes == 0
            ? (0, o.Memory.WeightBytes + o.Memory.ActiveBytes) : (o.Memory.WeightBytes + o.Memory.TrainStateBytes, o.Memory.ActiveBytes);
    }

    private PlannerException Infeasible(int ci)
    {
        var c = Calls[ci];
        var model = Experiment.Models[c.Role];
        double best = double.MaxValue; CallOption? bo = null;
        foreach (var mesh in new[] { FullMesh })
        {
            int size = mesh.Size;
            for (int tp = 1; tp <= mesh.DeviceCount; tp *= 2)
                for (int pp = 1; size % tp == 0 && pp <= size / tp; pp++)
                {
                    if (size / tp % pp != 0) continue;
                    var s = new Strategy(pp, size / tp / pp, tp);
                    int mb = Math.Min(4 * pp, Math.Max(1, c.Sequences / c.OptimizerSteps / s.Dp));
                    if (PlanValidator.StrategyProblem(s, mb, model, c, Cluster.DevicesPerNode) is not null) continue;
                    var o = new CallOption(mesh, s, mb, true);
                    double b = AloneBytes(Estimator.Memory(c, o));
                    if (b < best) { best = b; bo = o; }
                }
        }
        if (bo is null)
            return new PlannerException($"call {c.Name} (model {c.Role}, {model.Name}): no valid strategy on {Cluster.TotalDevices} devices (heads {model.Heads}, layers {model.Layers}, {c.Sequences} sequences)");
        return new PlannerException($"call {c.Name} (model {c.Role}, {model.Name}, {model.Params(Experiment.HasScalarHead(c.Role)) / 1e9:F1}B params) does not fit: " +
            $"the most memory-frugal layout ({bo.Value.Mesh}, pp/dp/tp {bo.Value.Strategy}, {bo.Value.MicroBatches} micro-batches) needs {Units.Bytes(best)} per device, " +
            $"{Units.Bytes(best - Cluster.UsableMemoryBytes)} more than the {Units.Bytes(Cluster.UsableMemoryBytes)} available on cluster '{Cluster.Name}'");
    }

    /// <summary>Index of an option in a call's list, adding it (with its costs) when absent.</summary>
    public int IndexOf(int ci, CallOption o)
    {
        int i = Options[ci].FindIndex(x => x.Option == o);
        if (i >= 0) return i;
        Options[ci].Add(Info(ci, o, Estimator.Memory(Calls[ci], o)));
        return Options[ci].Count - 1;
    }

    /// <summary>An option of call <paramref name="ci"/> with its seconds, round trips and one device's compute alone.</summary>
    public OptionInfo Info(int ci, CallOption o, CallMemory mem)
    {
        var c = Calls[ci];
        double dispatch = Estimator.DispatchSeconds(c, o);
        double seconds = Estimator.CallSeconds(c, o);
        double work = ScheduleStretch ? Estimator.Unstretched.CallSeconds(c, o) - dispatch : seconds - dispatch;
        return new OptionInfo(o, seconds, mem) { Dispatch = dispatch, Work = Math.Max(0, work), DispatchUncrowded = Estimator.DispatchSeconds(c, o, crowded: false) };
    }

    /// <summary>Whether the synchronous schedule stretches compute by the devices computing at the same time (a shared
    /// host with more devices than cores, <see cref="Estimator.ComputeStretch"/>) instead of every call by all devices.</summary>
    public bool ScheduleStretch => Estimator.ComputeStretch > 1 && Estimator.HostCores is > 0;

    internal double Realloc(int ci, int homeIdx, int optIdx) =>
        _realloc.GetOrAdd(((long)ci << 48) | ((long)homeIdx << 24) | (uint)optIdx, _ => Estimator.ReallocSeconds(Calls[ci].Role,
            Options[TrainCallOfRole[ci]][homeIdx].Option, Options[ci][optIdx].Option));

    internal double Transfer(int from, int fromIdx, int to, int toIdx) =>
        Estimator.TransferSeconds(Calls[from], Options[from][fromIdx].Option, Options[to][toIdx].Option);

    /// <summary>Size of the search space (product of option counts), saturating at double precision.</summary>
    public double SpaceSize => SearchCount.Aggregate(1.0, (a, c) => a * c);
}
