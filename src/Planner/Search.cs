// Execution-plan search: exhaustive enumeration when the space is small, otherwise several seeded
// simulated-annealing chains in parallel (Metropolis acceptance on the real cost difference, a
// geometric temperature schedule calibrated from sampled move sizes), then a greedy polish. The
// step budget is fixed, so a seed gives the same plan on any machine; the time limit only cuts short.
using System.Diagnostics;

namespace ReaLNative.Planner;

/// <summary>Search settings.</summary>
public sealed record SearchOptions
{
    public int Seed { get; init; } = 1;
    /// <summary>Wall-clock cap in seconds; when hit, chains stop early (results then depend on timing).</summary>
    public double TimeLimitSeconds { get; init; } = 60;
    public int Chains { get; init; } = 4;
    public int StepsPerChain { get; init; } = 20000;
    /// <summary>Spaces with at most this many plans are searched exhaustively.</summary>
    public double ExhaustiveLimit { get; init; } = 200_000;
}

/// <summary>A finished plan with its evaluation.</summary>
public sealed record PlanResult(Plan Plan, int[] Choice, Evaluation Evaluation, double[] PeakMemory)
{
    /// <summary>A baseline priced on a changed experiment (<see cref="Baselines.DeepSpeedChat"/>: fewer optimizer steps): the
    /// problem its <see cref="Choice"/> indexes; null when it is the search's own problem.</summary>
    public PlanningProblem? PricedOn { get; init; }
}

/// <summary>Search outcome: best plan, baselines, search time and how it was found.</summary>
public sealed record SearchResult(PlanResult Best, IReadOnlyDictionary<string, PlanResult?> Baselines, double SearchSeconds,
    string Method, long Evaluations, bool TimedOut, PlanningProblem Problem, double SetupSeconds)
{
    /// <summary>For an asynchronous experiment: the search of the same experiment with the synchronous
    /// dataflow (its best plan also seeds the asynchronous search); null otherwise.</summary>
    public SearchResult? Synchronous { get; init; }

    /// <summary>On a <see cref="ClusterSpec.SharedHost"/> cluster: the estimated iteration of the run without a plan
    /// (<see cref="PlanSearch.SingleDeviceSeconds"/>); null elsewhere or when it does not fit.</summary>
    public double? SingleDeviceSeconds { get; init; }

    /// <summary>How <see cref="Best"/> is priced and run: one worker process per device (`realn run --plan`, the default),
    /// or, on a shared host, the devices as threads of one process (`realn run --plan --in-process`).</summary>
    public PlanExecution Execution { get; init; } = PlanExecution.Workers;

    /// <summary>On a shared host: the search of the same experiment priced in the other execution (in process when this
    /// one is in worker processes, and the reverse); null elsewhere.</summary>
    public SearchResult? OtherExecution { get; init; }

    /// <summary>The search priced in worker processes (this one, or <see cref="OtherExecution"/>).</summary>
    public SearchResult Workers => Execution == PlanExecution.Workers ? this : OtherExecution!;

    /// <summary>On a shared host, the search priced with the devices as threads of one process; null elsewhere.</summary>
    public SearchResult? InProcessSearch => Execution == PlanExecution.InProcess ? this : OtherExecution;

    /// <summary>The search's choice on a shared host among the single device (`realn run` without --plan), the plan in
    /// process (`--plan --in-process`) and the plan in worker processes (`--plan`): the fastest estimate (the single
    /// device on a tie with a plan, the plan in process on a tie between the two plans). Off a shared host the plan
    /// in worker processes.</summary>
    public ExecutionChoice Chosen => SingleDeviceSeconds is { } s && s <= Best.Evaluation.IterationSeconds ? ExecutionChoice.SingleDevice
        : Execution == PlanExecution.InProcess ? ExecutionChoice.PlanInProcess : ExecutionChoice.PlanWorkers;

    /// <summary>Whether the single device is chosen (<see cref="Chosen"/>).</summary>
    public bool SingleDeviceChosen => Chosen == ExecutionChoice.SingleDevice;
}

/// <summary>How a plan's devices run: worker processes (one per device) or threads of one process.</summary>
public enum PlanExecution { Workers, InProcess }

/// <summary>What `realn plan` tells the user to run on a shared host.</summary>
public enum ExecutionChoice { SingleDevice, PlanInProcess, PlanWorkers }

public static class PlanSearch
{
    /// <summary>`realn plan --json`'s name of a choice.</summary>
    public static string Key(ExecutionChoice c) => c switch
    {
        ExecutionChoice.SingleDevice => "single_device", ExecutionChoice.PlanInProcess => "plan_in_process", _ => "plan_workers",
    };

    /// <summary>Searches the plan. On a shared host (<see cref="ClusterSpec.SharedHost"/>) it searches twice, the devices
    /// priced as worker processes (round trips, the shared-compute slowdown) and as threads of one process (neither),
    /// and returns the faster of the two as <see cref="SearchResult.Best"/> (<see cref="SearchResult.Execution"/>), the
    /// other in <see cref="SearchResult.OtherExecution"/>, with the single device's estimate beside them.</summary>
    public static SearchResult Run(ClusterSpec cluster, Experiment exp, SearchOptions opt, ProfileData? profile = null)
    {
        var workers = RunOne(cluster, exp, opt, profile);
        if (!cluster.SharedHost) return workers;
        var inProcess = RunOne(InProcessCluster(cluster), exp, opt, profile) with { Execution = PlanExecution.InProcess };
        double? single = workers.SingleDeviceSeconds;
        var best = inProcess.Best.Evaluation.IterationSeconds <= workers.Best.Evaluation.IterationSeconds ? inProcess : workers;
        var other = ReferenceEquals(best, workers) ? inProcess : workers;
        return best with { OtherExecution = other with { SingleDeviceSeconds = single }, SingleDeviceSeconds = single };
    }

    /// <summary>A shared-host spec as its devices run as threads of one process: no master-worker round trips and no
    /// worker-process slowdown (collectives then take the spec's in-node latency).</summary>
    public static ClusterSpec InProcessCluster(ClusterSpec cluster) => cluster with { WorkerRoundTrip = 0, WorkerComputeSlowdown = 1 };

    private static SearchResult RunOne(ClusterSpec cluster, Experiment exp, SearchOptions opt, ProfileData? profile)
    {
        var sw = Stopwatch.StartNew();
        var sync = exp.Asynchronous ? RunOne(cluster, exp.Synchronous(), opt, profile) : null;
        if (exp.Precision is { } precision) cluster = cluster.ForPrecision(precision);
        var problem = new PlanningProblem(new Estimator(cluster, exp, profile));
        var baselines = Baselines.All(problem);
        double setup = sw.Elapsed.TotalSeconds;
        int[]? best = null; string method; long evals = 0; bool timedOut = false;
        var ev = new Evaluator(problem);
        if (problem.SpaceSize <= opt.ExhaustiveLimit)
        {
            (best, evals) = Exhaustive(problem);
            method = "exhaustive";
        }
        else
        {
            var starts = baselines.Values.Where(b => b is not null && b.Evaluation.Feasible && Executable(problem, b)).Select(b => b!.Choice).ToList();
            if (sync is not null) starts.Add(InProblem(sync, problem));
            (best, evals, timedOut) = Anneal(problem, opt, starts, sw);
            method = $"annealing ({opt.Chains} chains x {opt.StepsPerChain} steps)";
        }
        var result = Finish(problem, best!, ev);
        // an asynchronous plan is never worse than the best synchronous plan run asynchronously
        if (sync is not null && Finish(problem, InProblem(sync, problem), ev) is { } fromSync
            && fromSync.Evaluation.Feasible && fromSync.Evaluation.Cost < result.Evaluation.Cost) result = fromSync;
        // never worse than a baseline priced like the engine runs it (the search starts from them, this only
        // guards the polish order); ZeRO-3 priced baselines model other systems and may well be faster
        foreach (var b in baselines.Values)
            if (b is not null && b.Evaluation.Feasible && Executable(problem, b) && b.Evaluation.Cost < result.Evaluation.Cost) result = b;
        if (!result.Evaluation.Feasible && result.Evaluation.GenerationShared && result.Evaluation.OverflowBytes <= 0)
            throw new PlannerException($"mode: async runs generation on devices of its own, and no plan on cluster '{cluster.Name}' ({cluster.TotalDevices} devices) " +
                                       "gives the generation calls devices that no other call uses; use mode: sync");
        if (!result.Evaluation.Feasible)
            throw new PlannerException($"no plan fits in memory on cluster '{cluster.Name}' ({cluster.TotalDevices} devices of {Units.Bytes(cluster.UsableMemoryBytes)}): " +
                $"the best found overflows a device by {Units.Bytes(result.Evaluation.OverflowBytes)}");
        // a shared CPU host can also run the experiment without a plan, on one device with every core
        double? single = SingleDeviceSeconds(problem.Cluster, problem.Experiment, profile);
        return new SearchResult(result, baselines, sw.Elapsed.TotalSeconds, method, evals, timedOut, problem, setup)
            { Synchronous = sync, SingleDeviceSeconds = single };
    }

    /// <summary>The best plan of <paramref name="r"/> as a choice in <paramref name="p"/> (same calls; options found by content).</summary>
    private static int[] InProblem(SearchResult r, PlanningProblem p) =>
        r.Best.Choice.Select((c, i) => p.IndexOf(i, r.Problem.Options[i][c].Option)).ToArray();

    /// <summary>For a <see cref="ClusterSpec.SharedHost"/> cluster: the estimated iteration of a run without a plan
    /// (`realn run` default), one device in one process with every core of the node (compute x devices per node,
    /// the whole memory bandwidth, no worker dispatch; a profile is used as measured, `realn profile` runs on
    /// every core, each point the faster of its all-core and one-thread measurement as the engine's ThreadChoice runs each
    /// unit of work: <see cref="ProfileData.FasterOfThreads"/>); its fastest micro-batch/recompute choice. Null for other
    /// clusters or when it does not fit.</summary>
    public static double? SingleDeviceSeconds(ClusterSpec cluster, Experiment exp, ProfileData? profile = null) =>
        SingleDevice(cluster, exp, profile)?.Evaluation.IterationSeconds;

    /// <summary>The run without a plan priced as <see cref="SingleDeviceSeconds"/> does, with its per-call seconds
    /// (<see cref="PlanEstimate.CallSeconds"/>); null where that is null.</summary>
    public static PlanResult? SingleDevice(ClusterSpec cluster, Experiment exp, ProfileData? profile = null)
    {
        if (!cluster.SharedHost) return null;
        var one = cluster with
        {
            Nodes = 1, DevicesPerNode = 1, SharedHost = false, WorkerRoundTrip = 0, WorkerComputeSlowdown = 1,
            PeakFlops = cluster.PeakFlops * cluster.DevicesPerNode,
            DeviceMemoryBytes = cluster.DeviceMemoryBytes * cluster.DevicesPerNode,
            ReservedMemoryBytes = cluster.ReservedMemoryBytes * cluster.DevicesPerNode,
        };
        try { return Baselines.Symmetric(new PlanningProblem(new Estimator(one, exp, profile?.FasterOfThreads()))); }
        catch (PlannerException) { return null; }
    }

    /// <summary>The estimated iteration of a searched plan when its devices run as threads of one process
    /// (`realn run --plan --in-process`): the same calls without the master-worker round trips
    /// (<see cref="ClusterSpec.WorkerRoundTrip"/>) and at the profiled one-thread speed
    /// (<see cref="ClusterSpec.WorkerComputeSlowdown"/> is for one-thread worker processes).</summary>
    public static double InProcessSeconds(SearchResult r) => InProcess(r).Evaluation.IterationSeconds;

    /// <summary>The searched plan priced in process as <see cref="InProcessSeconds"/> does, with its per-call seconds.</summary>
    public static PlanResult InProcess(SearchResult r)
    {
        var p = r.Problem;
        if (r.Execution == PlanExecution.InProcess) return r.Best;
        var q = new PlanningProblem(new Estimator(InProcessCluster(p.Cluster), p.Experiment, p.Estimator.Profile));
        // The option lists are filtered by cost, so the same option may sit at another index (or be
        // filtered out) without the dispatch term: find each chosen option by its content, else add it.
        var choice = new int[p.Calls.Count];
        for (int i = 0; i < choice.Length; i++)
        {
            var chosen = p.Options[i][r.Best.Choice[i]];
            int k = q.Options[i].FindIndex(o => o.Option == chosen.Option);
            if (k < 0)
            {
                q.Options[i].Add(q.Info(i, chosen.Option, chosen.Memory));
                k = q.Options[i].Count - 1;
            }
            choice[i] = k;
        }
        var again = Finish(q, choice, new Evaluator(q));
        if (!again.Plan.Calls.SequenceEqual(r.Best.Plan.Calls))
            throw new PlannerException("internal: the plan's options differ without worker dispatch; cannot price it in-process");
        return again;
    }

    /// <summary>Whether every call of a result is priced as the engine executes it (no ZeRO-3 pricing).</summary>
    internal static bool Executable(PlanningProblem p, PlanResult r) =>
        r.PricedOn is null && r.Choice.Select((k, i) => p.Options[i][k].Option.Zero3).All(z => !z);

    internal static PlanResult Finish(PlanningProblem p, int[] choice, Evaluator ev)
    {
        var e = ev.Evaluate(choice);
        var peak = ev.PeakMemory(choice);
        var calls = p.Calls.Select((c, i) =>
        {
            var o = p.Options[i][choice[i]].Option;
            return new PlanCall(c.Name, c.Role, c.Type, o.Mesh, o.Strategy, o.MicroBatches);
        }).ToList();
        var tasks = new List<SimTask>();
        ev.Simulate(choice, 1, tasks);
        var callSeconds = tasks.Where(t => !t.IsRealloc).GroupBy(t => t.Name).ToDictionary(g => g.Key, g => g.Sum(t => t.End - t.Start));
        var plan = new Plan(p.Cluster.Nodes, p.Cluster.DevicesPerNode, calls, new PlanEstimate(e.IterationSeconds, peak.Select(x => (long)x).ToArray(), callSeconds));
        return new PlanResult(plan, (int[])choice.Clone(), e, peak);
    }

    /// <summary>Evaluates every plan; parallel over the first call's options, ties broken by index.</summary>
    public static (int[] Best, long Evaluations) Exhaustive(PlanningProblem p)
    {
        int n = p.Calls.Count;
        var counts = p.SearchCount;
        var results = new (double Cost, int[] Choice)[counts[0]];
        Parallel.For(0, counts[0], () => new Evaluator(p), (first, _, ev) =>
        {
            var c = new int[n]; c[0] = first;
            double bestCost = double.MaxValue; int[] bestC = (int[])c.Clone();
            while (true)
            {
                double cost = ev.Evaluate(c).Cost;
                if (cost < bestCost) { bestCost = cost; bestC = (int[])c.Clone(); }
                int k = n - 1;
                while (k >= 1 && ++c[k] == counts[k]) { c[k] = 0; k--; }
                if (k < 1) break;
            }
            results[first] = (bestCost, bestC);
            return ev;
        }, _ => { });
        int bi = 0;
        for (int i = 1; i < results.Length; i++) if (results[i].Cost < results[bi].Cost) bi = i;
        return (results[bi].Choice, (long)p.SpaceSize);
    }

    internal static (int[] Best, long Evals, bool TimedOut) Anneal(PlanningProblem p, SearchOptions opt, List<int[]> starts, Stopwatch sw)
    {
        int n = p.Calls.Count;
        var results = new (double Cost, int[] Choice, long Evals, bool TimedOut)[opt.Chains];
        Parallel.For(0, opt.Chains, new ParallelOptions { MaxDegreeOfParallelism = Environment.ProcessorCount }, chain =>
        {
            var rng = new Random(unchecked(opt.Seed * 1000003 + chain * 7919)); // System.Random(seed) is stable across runs
            var ev = new Evaluator(p);
            long evals = 0;
            int[] cur = chain < starts.Count ? (int[])starts[chain].Clone() : Enumerable.Range(0, n).Select(i => rng.Next(p.SearchCount[i])).ToArray();
            double curCost = ev.Evaluate(cur).Cost; evals++;
            // temperature: initial so that the mean uphill move is accepted with probability 1/2,
            // cooled geometrically to 1e-4 of that over the chain.
            double sumUp = 0; int ups = 0;
            var probe = (int[])cur.Clone();
            for (int k = 0; k < 64; k++)
            {
                int ci = rng.Next(n); int old = probe[ci];
                probe[ci] = rng.Next(p.SearchCount[ci]);
                double d = ev.Evaluate(probe).Cost - curCost; evals++;
                if (d > 0 && double.IsFinite(d)) { sumUp += Math.Min(d, curCost); ups++; }
                probe[ci] = old;
            }
            double t0 = ups > 0 ? sumUp / ups / Math.Log(2) : curCost * 0.1, tEnd = t0 * 1e-4;
            double alpha = Math.Pow(tEnd / t0, 1.0 / opt.StepsPerChain);
            double temp = t0;
            int[] best = (int[])cur.Clone(); double bestCost = curCost;
            bool timedOut = false;
            for (int step = 0; step < opt.StepsPerChain; step++, temp *= alpha)
            {
                if ((step & 255) == 0 && sw.Elapsed.TotalSeconds > opt.TimeLimitSeconds) { timedOut = true; break; }
                int ci = rng.Next(n), old = cur[ci];
                var list = p.Options[ci];
                int next;
                if (rng.NextDouble() < 0.5)
                {
                    // neighbour: another option on the same mesh (options are grouped by mesh)
                    var mesh = list[old].Option.Mesh;
                    int lo = old, hi = old;
                    while (lo > 0 && list[lo - 1].Option.Mesh == mesh) lo--;
                    while (hi < p.SearchCount[ci] - 1 && list[hi + 1].Option.Mesh == mesh) hi++;
                    next = lo + rng.Next(hi - lo + 1);
                }
                else next = rng.Next(p.SearchCount[ci]);
                if (next == old) continue;
                cur[ci] = next;
                double c = ev.Evaluate(cur).Cost; evals++;
                double delta = c - curCost;
                if (delta <= 0 || rng.NextDouble() < Math.Exp(-delta / temp))
                {
                    curCost = c;
                    if (c < bestCost) { bestCost = c; best = (int[])cur.Clone(); }
                }
                else cur[ci] = old;
            }
            results[chain] = (bestCost, best, evals, timedOut);
        });
        int bi = 0;
        for (int i = 1; i < results.Length; i++) if (results[i].Cost < results[bi].Cost) bi = i;
        // polish the best chain's plan once (coordinate descent to a local optimum)
        var final = results[bi].Choice; double cost = results[bi].Cost;
        long polish = Polish(p, new Evaluator(p), final, ref cost);
        return (final, results.Sum(r => r.Evals) + polish, results.Any(r => r.TimedOut));
    }

    /// <summary>Greedy coordinate descent: best option per call with the others fixed, until no gain.</summary>
    internal static long Polish(PlanningProblem p, Evaluator ev, int[] c, ref double cost)
    {
        long evals = 0;
        for (int pass = 0; pass < 4; pass++)
        {
            bool improved = false;
            for (int ci = 0; ci < c.Length; ci++)
            {
                int keep = c[ci];
                for (int k = 0; k < p.Options[ci].Count; k++)
                {
                    if (k == keep || p.Options[ci][k].Option.Zero3) continue;
                    c[ci] = k;
                    double x = ev.Evaluate(c).Cost; evals++;
                    if (x < cost - 1e-12) { cost = x; keep = k; improved = true; }
                }
                c[ci] = keep;
            }
            if (!improved) break;
        }
        return evals;
    }
}
