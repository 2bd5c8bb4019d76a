// Heuristic baselines computed for the same experiment and estimator: symmetric (Megatron-style:
// every call on all devices with the single best strategy), ReaL's heuristic (generation and
// inference on all devices, actor and critic training on the two halves) and colocated-all
// (DeepSpeed-Chat style: every call on all devices, each model keeps one layout, no reallocation).
namespace ReaLNative.Planner;

public static class Baselines
{
    public static Dictionary<string, PlanResult?> All(PlanningProblem p) => new()
    {
        ["symmetric"] = Symmetric(p),
        ["heuristic"] = Heuristic(p),
        ["colocated"] = Colocated(p),
    };

    /// <summary>Best single strategy on the full mesh for every call (micro-batches/flags per call).</summary>
    public static PlanResult? Symmetric(PlanningProblem p)
    {
        var ev = new Evaluator(p);
        var full = p.FullMesh;
        var perCall = Enumerable.Range(0, p.Calls.Count).Select(i => p.Raw(i, full).ToList()).ToArray();
        var strategies = perCall[0].Select(o => o.Option.Strategy).Distinct().Where(s => perCall.All(l => l.Any(o => o.Option.Strategy == s)));
        PlanResult? best = null;
        foreach (var s in strategies)
        {
            var choice = new int[p.Calls.Count];
            for (int i = 0; i < choice.Length; i++)
                choice[i] = p.IndexOf(i, perCall[i].Where(o => o.Option.Strategy == s).OrderBy(o => o.Seconds).First().Option);
            var r = FixFeasible(p, ev, choice, i => perCall[i].Where(o => o.Option.Strategy == s));
            if (r is not null && (best is null || r.Evaluation.Cost < best.Evaluation.Cost)) best = r;
        }
        return best;
    }

    /// <summary>ReaL's heuristic: generation and inference on all devices, actor training on the first
    /// half and critic training on the second (all devices when there is no critic or one device).</summary>
    public static PlanResult? Heuristic(PlanningProblem p)
    {
        var c = p.Cluster;
        var full = p.FullMesh;
        Mesh first = full, second = full;
        if (c.Nodes > 1) { int h = c.Nodes / 2; first = Span(0, h, c); second = Span(h, c.Nodes - h, c); }
        else if (c.DevicesPerNode > 1) { int h = c.DevicesPerNode / 2; first = new Mesh(0, 1, 0, h); second = new Mesh(0, 1, h, h); }
        bool hasCritic = p.Calls.Any(x => x.Role == "critic" && x.Type == CallType.TrainStep);
        var meshes = p.Calls.Select(x => x.Type != CallType.TrainStep ? full
            : !hasCritic ? full : x.Role == "critic" ? second : first).ToArray();
        return OnMeshes(p, meshes, sameLayoutPerModel: false);
    }

    private static Mesh Span(int start, int count, ClusterSpec c) => count == 1 ? new Mesh(start, 1, 0, c.DevicesPerNode) : new Mesh(start, count, 0, c.DevicesPerNode);

    /// <summary>DeepSpeed-Chat style: everything on all devices, one layout per model.</summary>
    public static PlanResult? Colocated(PlanningProblem p) =>
        OnMeshes(p, p.Calls.Select(_ => p.FullMesh).ToArray(), sameLayoutPerModel: true);

    private static PlanResult? OnMeshes(PlanningProblem p, Mesh[] meshes, bool sameLayoutPerModel)
    {
        var ev = new Evaluator(p);
        var perCall = meshes.Select((m, i) => p.Raw(i, m).ToList()).ToArray();
        if (perCall.Any(l => l.Count == 0)) return null;
        if (!sameLayoutPerModel)
        {
            var choice = perCall.Select((l, i) => p.IndexOf(i, l.OrderBy(o => o.Seconds).First().Option)).ToArray();
            return FixFeasible(p, ev, choice, i => perCall[i]);
        }
        // one strategy per model: coordinate descent over each model's strategies.
        var roles = p.Calls.Select(x => x.Role).Distinct().ToList();
        var strat = new Dictionary<string, Strategy>();
        foreach (var r in roles)
        {
            var idx = Enumerable.Range(0, p.Calls.Count).Where(i => p.Calls[i].Role == r).ToList();
            var common = perCall[idx[0]].Select(o => o.Option.Strategy).Distinct().Where(s => idx.All(i => perCall[i].Any(o => o.Option.Strategy == s))).ToList();
            if (common.Count == 0) return null;
            strat[r] = common.OrderBy(s => idx.Sum(i => perCall[i].Where(o => o.Option.Strategy == s).Min(o => PlanningProblem.AloneBytes(o.Memory)))).First();
        }
        int[] Build() => Enumerable.Range(0, p.Calls.Count).Select(i =>
            p.IndexOf(i, perCall[i].Where(o => o.Option.Strategy == strat[p.Calls[i].Role]).OrderBy(o => o.Seconds).First().Option)).ToArray();
        PlanResult? best = FixFeasible(p, ev, Build(), i => perCall[i].Where(o => o.Option.Strategy == strat[p.Calls[i].Role]));
        for (int pass = 0; pass < 2; pass++)
            foreach (var r in roles)
            {
                var idx = Enumerable.Range(0, p.Calls.Count).Where(i => p.Calls[i].Role == r).ToList();
                var common = perCall[idx[0]].Select(o => o.Option.Strategy).Distinct().Where(s => idx.All(i => perCall[i].Any(o => o.Option.Strategy == s))).ToList();
                var keep = strat[r];
                foreach (var s in common)
                {
                    strat[r] = s;
                    var res = FixFeasible(p, ev, Build(), i => perCall[i].Where(o => o.Option.Strategy == strat[p.Calls[i].Role]));
                    if (res is not null && (best is null || res.Evaluation.Cost < best.Evaluation.Cost)) { best = res; keep = s; }
                }
                strat[r] = keep;
            }
        return best;
    }

    /// <summary>If the choice overflows memory, moves calls on the overflowing devices to their
    /// leanest allowed option (recompute/offload first) until it fits; null when it cannot.</summary>
    private static PlanResult? FixFeasible(PlanningProblem p, Evaluator ev, int[] choice, Func<int, IEnumerable<OptionInfo>> allowed)
    {
        var e = ev.Evaluate(choice);
        for (int guard = 0; !e.Feasible && guard < 4 * p.Calls.Count; guard++)
        {
            int bestCall = -1, bestIdx = -1; double bestOver = e.OverflowBytes;
            for (int i = 0; i < choice.Length; i++)
                foreach (var o in allowed(i).OrderBy(o => o.Seconds))
                {
                    int keep = choice[i];
                    int k = p.IndexOf(i, o.Option);
                    if (k == keep) continue;
                    choice[i] = k;
                    var x = ev.Evaluate(choice);
                    choice[i] = keep;
                    if (x.OverflowBytes < bestOver) { bestOver = x.OverflowBytes; bestCall = i; bestIdx = k; }
                }
            if (bestCall < 0) return null;
            choice[bestCall] = bestIdx;
            e = ev.Evaluate(choice);
        }
        return e.Feasible ? PlanSearch.Finish(p, choice, ev) : null;
    }
}
