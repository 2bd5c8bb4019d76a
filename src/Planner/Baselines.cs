// The plans users compare an RLHF system with, each built by its own rule (not by our search) and
// priced by the same estimator: heuristic (Megatron-LM-style symmetric 3D parallelism chosen by
// practitioner rules), deepspeed_chat (ZeRO-3 training + hybrid-engine TP generation, all colocated),
// openrlhf (disjoint GPU groups per model, vLLM-style TP generation, weight broadcast after each step)
// and symmetric (the best single strategy on all devices, by the estimator). docs/cost-model.md has the rules.
namespace ReaLNative.Planner;

public static class Baselines
{
    /// <summary>Each baseline's rule in one line (printed by `realn plan`, documented in docs/cost-model.md).</summary>
    public static readonly IReadOnlyDictionary<string, string> Rules = new Dictionary<string, string>
    {
        ["heuristic"] = "Megatron-LM-style symmetric plan: every call on all devices with one (pp, dp, tp); tp the smallest power of two within a node, then pp across nodes, such that all models' weights + the trained ones' fp32 grads take at most half a device; dp the rest",
        ["deepspeed_chat"] = "DeepSpeed-Chat hybrid engine: all models colocated on all devices; training and inference as ZeRO-3 data parallelism (per-layer parameter all-gather, gradient reduce-scatter); generation with tp inside a node after gathering the parameters",
        ["openrlhf"] = "OpenRLHF: disjoint device groups for actor training, generation, critic, reference and reward, sized by parameter count (powers of two); ZeRO-3 in each group, tp generation, actor weights broadcast from one rank to the generation group after each step",
        ["symmetric"] = "every call on all devices with the single (pp, dp, tp) the estimator finds fastest",
    };

    public static Dictionary<string, PlanResult?> All(PlanningProblem p) => new()
    {
        ["heuristic"] = Heuristic(p),
        ["deepspeed_chat"] = DeepSpeedChat(p),
        ["openrlhf"] = OpenRlhf(p),
        ["symmetric"] = Symmetric(p),
    };

    /// <summary>Why baseline <paramref name="name"/> has no plan for this experiment and cluster (its rule cannot
    /// place a call, or its plan does not fit in memory), in words `realn plan` prints; null when it has one.</summary>
    public static string? WhyNot(PlanningProblem p, string name, PlanResult? result)
    {
        if (result is not null) return null;
        int n = p.FullMesh.Size;
        string? Zero3Batch(IEnumerable<ModelCall> calls, int devices)
        {
            foreach (var c in calls.Where(c => c.Type != CallType.Generate))
            {
                int per = c.Sequences / c.OptimizerSteps;
                if (per < devices)
                    return $"ZeRO-3 data parallelism over {devices} devices needs at least one sequence per device in every optimizer step " +
                           $"(DeepSpeed's train batch = micro-batch x gradient accumulation x world size, micro-batch >= 1), and {c.Name} has {per} " +
                           $"({c.Sequences} sequences / {c.OptimizerSteps} minibatch{(c.OptimizerSteps == 1 ? "" : "es")}); DeepSpeed-Chat has no tensor, pipeline or sequence parallelism for training to use the other devices";
            }
            return null;
        }
        string? GenTp(Mesh mesh)
        {
            foreach (var (c, i) in p.Calls.Select((c, i) => (c, i)).Where(x => x.c.Type == CallType.Generate))
                if (GenerationTp(p, i, mesh) < 0)
                    return $"no tensor-parallel degree within a node of {mesh.Size} devices divides {c.Name}'s model ({p.Experiment.Models[c.Role].Heads} heads)";
            return null;
        }
        string async = $"mode: async runs generation on devices no other call uses, and this baseline puts generation on devices shared with other calls";
        if (p.Experiment.Asynchronous)
        {
            if (name is "heuristic" or "deepspeed_chat" or "symmetric") return $"mode: async runs generation on devices no other call uses, and this baseline puts every call on all {n} devices";
            if (name == "openrlhf" && OpenRlhfGroups(p) is { } g && g.TryGetValue("gen", out var gm) && g.Any(kv => kv.Key != "gen" && kv.Value.Overlaps(gm)))
                return async;
        }
        string memory = $"its plan does not fit in memory ({Units.Bytes(p.Cluster.UsableMemoryBytes)} per device on cluster '{p.Cluster.Name}', even with recomputation, offload and the most micro-batches its rule allows)";
        switch (name)
        {
            case "deepspeed_chat":
                // fewer sequences per step than devices is priced with merged minibatches (DeepSpeedChatCalls); fewer in all cannot run
                foreach (var c in p.Calls.Where(c => c.Type != CallType.Generate && c.Sequences < n))
                    return $"ZeRO-3 data parallelism over {n} devices needs at least one sequence per device in every optimizer step " +
                           $"(DeepSpeed's train batch = micro-batch x gradient accumulation x world size, micro-batch >= 1), and {c.Name} has {c.Sequences} sequences in all, " +
                           "so even one optimizer step per epoch leaves devices without one; DeepSpeed-Chat has no tensor, pipeline or sequence parallelism for training to use the other devices";
                return (DeepSpeedChatCalls(p) is null ? Zero3Batch(p.Calls, n) : null) ?? GenTp(p.FullMesh) ?? memory;
            case "openrlhf":
            {
                var groups = OpenRlhfGroups(p);
                if (groups is null)
                    return $"its device groups (actor, generation, critic, reference, reward sized by parameter count, powers of two) cannot be placed on {n} devices of {p.Cluster.DevicesPerNode} per node";
                foreach (var g in groups.GroupBy(kv => kv.Value))
                {
                    var calls = p.Calls.Where(c => g.Any(kv => kv.Key == GroupKey(c)));
                    if (Zero3Batch(calls, g.Key.Size) is { } why) return why;
                    if (g.Any(kv => kv.Key == "gen") && GenTp(g.Key) is { } t) return t;
                }
                return memory;
            }
            case "heuristic":
                return HeuristicStrategy(p) is null ? $"no single (pp, dp, tp) on {n} devices is valid for every call (heads, layers and sequences must divide)" : memory;
            default:
                return $"no single (pp, dp, tp) on all {n} devices fits every call in memory";
        }
    }

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

    /// <summary>The practitioner's rule for one symmetric (pp, dp, tp): tp grows within a node (1, 2, ... devices
    /// per node), then pp across nodes (divisors of the node count), until the weights of all models (bf16) plus
    /// the fp32 gradients of the trained ones (6 B/param trained, 2 frozen; fp32: 8 and 4) take at most half the
    /// usable memory per device, the rest left to optimizer shards and activations; every call must admit the
    /// strategy. Null when none does.</summary>
    public static Strategy? HeuristicStrategy(PlanningProblem p)
    {
        var c = p.Cluster;
        // every model lives on every device: trainable ones with weights + fp32 gradients, frozen ones with weights
        double bytes = p.Experiment.Models.Sum(kv => kv.Value.Params(Experiment.HasScalarHead(kv.Key))
            * (p.Experiment.IsTrainable(kv.Key) ? c.ElementBytes + 4 : c.ElementBytes));
        int n = c.TotalDevices;
        Strategy? lastValid = null;
        for (int pp = 1; pp <= c.Nodes; pp++)
        {
            if (c.Nodes % pp != 0) continue;
            for (int tp = 1; tp <= c.DevicesPerNode; tp *= 2)
            {
                if (n % (tp * pp) != 0) continue;
                var s = new Strategy(pp, n / tp / pp, tp);
                if (!Enumerable.Range(0, p.Calls.Count).All(i => Problem(p, i, s, 1) is null)) continue;
                lastValid = s;
                if (bytes / (tp * pp) <= 0.5 * c.UsableMemoryBytes) return s;
            }
        }
        return lastValid; // nothing meets the memory rule: the most model-parallel valid strategy
    }

    private static string? Problem(PlanningProblem p, int ci, Strategy s, int mb) =>
        PlanValidator.StrategyProblem(s, mb, p.Experiment.Models[p.Calls[ci].Role], p.Calls[ci], p.Cluster.DevicesPerNode);

    /// <summary>Megatron-LM-style symmetric plan (see <see cref="HeuristicStrategy"/>): train calls with
    /// 4 x pp micro-batches (fewer when sequences run out), others with pp; recomputation or more
    /// micro-batches only when memory requires.</summary>
    public static PlanResult? Heuristic(PlanningProblem p)
    {
        if (HeuristicStrategy(p) is not { } s) return null;
        var full = p.FullMesh;
        var choice = new int[p.Calls.Count];
        for (int i = 0; i < choice.Length; i++)
        {
            var call = p.Calls[i];
            int seqs = call.Sequences / call.OptimizerSteps / s.Dp;
            int mb = Math.Max(1, Math.Min(call.Type == CallType.TrainStep ? 4 * s.Pp : s.Pp, seqs));
            choice[i] = p.IndexOf(i, new CallOption(full, s, mb, false));
        }
        return FixFeasible(p, new Evaluator(p), choice, i => Variants(p, i, full, s, zero3: false));
    }

    /// <summary>Options of a call on one mesh and strategy: micro-batches 1, 2, 4, ... and the flag
    /// (recompute for train calls; offload only for non-ZeRO calls of frozen models).</summary>
    private static IEnumerable<OptionInfo> Variants(PlanningProblem p, int ci, Mesh mesh, Strategy s, bool zero3)
    {
        var call = p.Calls[ci];
        bool flagOk = call.Type == CallType.TrainStep || (!zero3 && !p.Trainable[ci]);
        var list = new List<OptionInfo>();
        for (int mb = 1; mb <= call.Sequences / call.OptimizerSteps / s.Dp; mb *= 2)
        {
            if (Problem(p, ci, s, mb) is not null) continue;
            foreach (bool f in flagOk ? [false, true] : new[] { false })
            {
                var o = new CallOption(mesh, s, mb, f, zero3);
                int k = p.IndexOf(ci, o);
                list.Add(p.Options[ci][k]);
            }
        }
        return list;
    }

    /// <summary>Smallest power-of-two tp (within a node and the mesh, dividing the heads) whose weight shard
    /// takes at most half a device, leaving the rest to the KV cache: the inference engines' usual choice.</summary>
    private static int GenerationTp(PlanningProblem p, int ci, Mesh mesh)
    {
        var call = p.Calls[ci];
        var m = p.Experiment.Models[call.Role];
        int best = -1;
        for (int tp = 1; tp <= Math.Min(mesh.DeviceCount, p.Cluster.DevicesPerNode); tp *= 2)
        {
            if (Problem(p, ci, new Strategy(1, mesh.Size / tp, tp), 1) is not null) continue;
            best = tp;
            if (m.Params(false) * p.Cluster.ElementBytes / tp <= 0.5 * p.Cluster.UsableMemoryBytes) return tp;
        }
        return best;
    }

    /// <summary>DeepSpeed-Chat: every call on all devices; generation with tp inside a node (parameters
    /// gathered from the ZeRO-3 shards before it), every other call ZeRO-3 over all devices with the fewest
    /// micro-batches that fit (gradient checkpointing when needed). Null when a call cannot run that way
    /// (more devices than sequences per optimizer step, which ZeRO-3 data parallelism needs).</summary>
    public static PlanResult? DeepSpeedChat(PlanningProblem p)
    {
        // DeepSpeed's training batch per optimizer step is micro-batch x accumulation x world size, at least one sequence
        // per device: a call with fewer per step runs (DeepSpeed-Chat's nearest configuration) with its minibatches merged,
        // floor(sequences / devices) optimizer steps per epoch, and is priced so (same sequences, fewer steps)
        if (DeepSpeedChatCalls(p) is { } merged)
        {
            var q = new PlanningProblem(new Estimator(p.Cluster, p.Experiment.WithCalls(merged), p.Estimator.Profile));
            return DeepSpeedChatRule(q) is { } r ? r with { PricedOn = q } : null;
        }
        return DeepSpeedChatRule(p);
    }

    /// <summary>The experiment's calls as DeepSpeed-Chat runs them on <paramref name="p"/>'s devices when some call has fewer
    /// sequences per optimizer step than devices (its optimizer steps cut to floor(sequences / devices)); null when none
    /// has, or when a call has fewer sequences in all than devices (no DeepSpeed configuration runs it).</summary>
    public static IReadOnlyList<ModelCall>? DeepSpeedChatCalls(PlanningProblem p)
    {
        int n = p.FullMesh.Size;
        var zero = p.Calls.Where(c => c.Type != CallType.Generate).ToList();
        if (zero.All(c => c.Sequences / c.OptimizerSteps >= n) || zero.Any(c => c.Sequences < n)) return null;
        return p.Calls.Select(c => c.Type != CallType.Generate && c.Sequences / c.OptimizerSteps < n ? c with { OptimizerSteps = c.Sequences / n } : c).ToList();
    }

    /// <summary>What a baseline's price assumes beyond its rule (null: nothing): deepspeed_chat with merged minibatches.</summary>
    public static string? Note(PlanningProblem p, string name, PlanResult? result)
    {
        if (name != "deepspeed_chat" || result?.PricedOn is not { } q) return null;
        int n = p.FullMesh.Size;
        var changed = p.Calls.Zip(q.Calls).Where(x => x.First.OptimizerSteps != x.Second.OptimizerSteps)
            .Select(x => $"{x.First.Name} {x.First.OptimizerSteps} -> {x.Second.OptimizerSteps}");
        return $"priced with fewer optimizer steps per epoch ({string.Join(", ", changed)}; same sequences): DeepSpeed's training batch is " +
               $"micro-batch x gradient accumulation x world size, at least one sequence on each of the {n} devices, so DeepSpeed-Chat merges minibatches; " +
               "not this experiment's optimizer schedule, and not a plan the engine runs for it";
    }

    private static PlanResult? DeepSpeedChatRule(PlanningProblem p)
    {
        var full = p.FullMesh;
        int n = full.Size;
        var allowed = new List<OptionInfo>[p.Calls.Count];
        for (int i = 0; i < p.Calls.Count; i++)
        {
            if (p.Calls[i].Type == CallType.Generate)
            {
                int tp = GenerationTp(p, i, full);
                if (tp < 0) return null;
                allowed[i] = Variants(p, i, full, new Strategy(1, n / tp, tp), zero3: false).ToList();
            }
            else allowed[i] = Variants(p, i, full, new Strategy(1, n, 1), zero3: true).ToList();
            if (allowed[i].Count == 0) return null;
        }
        return Leanest(p, allowed);
    }

    /// <summary>OpenRLHF: one group of devices per role (actor training, generation, critic, reference,
    /// reward; critic inference on the critic's group), sized in proportion to parameter count (inference-only
    /// models count half), rounded to powers of two, a ZeRO-3 group at most one device per sequence of an
    /// optimizer step, and packed in order of size; with fewer devices than
    /// groups, reference joins the actor, reward the critic, then generation the actor (OpenRLHF's colocation
    /// flags). Training and inference are ZeRO-3 in their group; generation uses tp inside a node.</summary>
    public static PlanResult? OpenRlhf(PlanningProblem p)
    {
        var groups = OpenRlhfGroups(p);
        if (groups is null) return null;
        var allowed = new List<OptionInfo>[p.Calls.Count];
        for (int i = 0; i < p.Calls.Count; i++)
        {
            var mesh = groups[GroupKey(p.Calls[i])];
            if (p.Calls[i].Type == CallType.Generate)
            {
                int tp = GenerationTp(p, i, mesh);
                if (tp < 0) return null;
                allowed[i] = Variants(p, i, mesh, new Strategy(1, mesh.Size / tp, tp), zero3: false).ToList();
            }
            else allowed[i] = Variants(p, i, mesh, new Strategy(1, mesh.Size, 1), zero3: true).ToList();
            if (allowed[i].Count == 0) return null;
        }
        return Leanest(p, allowed);
    }

    private static string GroupKey(ModelCall c) => c.Type == CallType.Generate ? "gen" : c.Role;

    /// <summary>The meshes of OpenRLHF's groups by key (role, or "gen"); null when they cannot be placed.</summary>
    public static Dictionary<string, Mesh>? OpenRlhfGroups(PlanningProblem p)
    {
        var c = p.Cluster;
        var exp = p.Experiment;
        // group key -> (members, weight)
        var groups = new List<(List<string> Keys, double Weight)>();
        foreach (var call in p.Calls)
        {
            string key = GroupKey(call);
            if (groups.Any(g => g.Keys.Contains(key))) continue;
            double w = exp.Models[call.Role].Params(Experiment.HasScalarHead(call.Role)) * (exp.IsTrainable(call.Role) || key == "gen" ? 1 : 0.5);
            groups.Add(([key], w));
        }
        void Merge(string from, string into)
        {
            int a = groups.FindIndex(g => g.Keys.Contains(from)), b = groups.FindIndex(g => g.Keys.Contains(into));
            if (a < 0 || b < 0 || a == b) return;
            groups[b] = ([.. groups[b].Keys, .. groups[a].Keys], groups[b].Weight + groups[a].Weight);
            groups.RemoveAt(a);
        }
        int n = c.TotalDevices;
        foreach (var (from, into) in new[] { ("ref", "actor"), ("reward", "critic"), ("gen", "actor"), ("reward", "actor"), ("critic", "actor") })
            if (groups.Count > n) Merge(from, into);
        if (groups.Count > n) return null;
        // sizes: powers of two proportional to weight, each at least 1, total at most n; a ZeRO-3 group has at
        // most one device per sequence of an optimizer step (DeepSpeed's batch = micro-batch x accumulation x world)
        double sum = groups.Sum(g => g.Weight);
        var cap = groups.Select(g => (int)PowFloor(p.Calls.Where(c => g.Keys.Contains(GroupKey(c)) && c.Type != CallType.Generate)
            .Select(c => c.Sequences / c.OptimizerSteps).DefaultIfEmpty(n).Min())).ToArray();
        var size = groups.Select((g, k) => (int)Math.Min(cap[k], Math.Max(1, PowFloor(n * g.Weight / sum)))).ToArray();
        while (size.Sum() > n) { int k = Array.IndexOf(size, size.Max()); size[k] /= 2; }
        while (true)
        {
            int best = -1; double ratio = 0;
            for (int k = 0; k < size.Length; k++)
            {
                double want = n * groups[k].Weight / sum / size[k];
                if (size.Sum() + size[k] <= n && 2 * size[k] <= cap[k] && Packable(size, k, c) && want > ratio) { ratio = want; best = k; }
            }
            if (best < 0) break;
            size[best] *= 2;
        }
        if (!Packable(size, -1, c)) return null;
        // pack largest first: powers of two in descending order stay aligned
        var order = Enumerable.Range(0, size.Length).OrderByDescending(k => size[k]).ThenBy(k => k).ToList();
        var result = new Dictionary<string, Mesh>();
        int next = 0, dpn = c.DevicesPerNode;
        foreach (int k in order)
        {
            var mesh = size[k] >= dpn ? new Mesh(next / dpn, size[k] / dpn, 0, dpn) : new Mesh(next / dpn, 1, next % dpn, size[k]);
            foreach (var key in groups[k].Keys) result[key] = mesh;
            next += size[k];
        }
        return result;
    }

    private static double PowFloor(double x) => x < 1 ? 1 : Math.Pow(2, Math.Floor(Math.Log2(x)));

    /// <summary>Whether sizes (group <paramref name="grow"/> doubled) are valid meshes: a group larger than a
    /// node must be whole nodes.</summary>
    private static bool Packable(int[] size, int grow, ClusterSpec c)
    {
        for (int k = 0; k < size.Length; k++)
        {
            int s = k == grow ? 2 * size[k] : size[k];
            if (s > c.DevicesPerNode && s % c.DevicesPerNode != 0) return false;
        }
        return true;
    }

    /// <summary>Per call, the allowed option with the fewest micro-batches and no flag, then the leanest
    /// variants until memory fits.</summary>
    private static PlanResult? Leanest(PlanningProblem p, List<OptionInfo>[] allowed)
    {
        var choice = new int[p.Calls.Count];
        for (int i = 0; i < choice.Length; i++)
        {
            var first = allowed[i].OrderBy(o => o.Option.Flag).ThenBy(o => o.Option.MicroBatches).First();
            choice[i] = p.IndexOf(i, first.Option);
        }
        return FixFeasible(p, new Evaluator(p), choice, i => allowed[i]);
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
