// How a job gets its execution plan: the single-device default, a planner search on a cluster
// spec, or a plan JSON written earlier by `realn plan`. The chosen plan is validated against the
// experiment's calls, written to OUT/plan.json and reported; the stage it lists runs each call on
// its mesh and layout, the plan's devices being those of the job's JobHosts (in-process devices,
// worker processes, or every node's workers of a launch).
using ReaLNative.Engine.Dataflow;
using ReaLNative.Planner;
using EngineCallType = ReaLNative.Engine.Dataflow.CallType;
using PlanCallType = ReaLNative.Planner.CallType;

namespace ReaLNative;

/// <summary>Where a <see cref="TrainingJob"/>'s execution plan comes from. Create one with the static members.</summary>
public abstract class PlanChoice
{
    private protected PlanChoice() { }

    /// <summary>Every model function call on device 0 with pp = dp = tp = 1: the plan <c>realn run</c> executes.</summary>
    public static PlanChoice SingleDevice { get; } = new SingleDeviceChoice();

    /// <summary>Searches the best plan for the experiment on a cluster described by a cluster spec YAML
    /// (see <c>examples/clusters/</c>) with the planner's cost estimator.</summary>
    /// <param name="clusterSpecPath">Cluster spec YAML path.</param>
    /// <param name="options">Search settings (seed, time limit); default: <see cref="SearchOptions"/>' defaults.</param>
    /// <exception cref="ArgumentException"><paramref name="clusterSpecPath"/> is empty.</exception>
    public static PlanChoice Search(string clusterSpecPath, SearchOptions? options = null)
    {
        ArgumentException.ThrowIfNullOrWhiteSpace(clusterSpecPath);
        return new SearchChoice(null, clusterSpecPath, options ?? new SearchOptions());
    }

    /// <summary>Searches the best plan for the experiment on <paramref name="cluster"/>.</summary>
    /// <param name="cluster">The cluster.</param>
    /// <param name="options">Search settings; default: <see cref="SearchOptions"/>' defaults.</param>
    public static PlanChoice Search(ClusterSpec cluster, SearchOptions? options = null)
    {
        ArgumentNullException.ThrowIfNull(cluster);
        return new SearchChoice(cluster, null, options ?? new SearchOptions());
    }

    /// <summary>Loads a plan JSON (the format <c>realn plan</c> writes).</summary>
    /// <param name="planJsonPath">Plan JSON path.</param>
    /// <exception cref="ArgumentException"><paramref name="planJsonPath"/> is empty.</exception>
    public static PlanChoice FromJson(string planJsonPath)
    {
        ArgumentException.ThrowIfNullOrWhiteSpace(planJsonPath);
        return new GivenChoice(null, planJsonPath);
    }

    /// <summary>Uses a plan built or searched in code.</summary>
    /// <param name="plan">The plan.</param>
    public static PlanChoice FromPlan(Plan plan)
    {
        ArgumentNullException.ThrowIfNull(plan);
        return new GivenChoice(plan, null);
    }

    /// <summary>Short description for logs.</summary>
    public abstract override string ToString();

    /// <summary>Resolves the plan for an experiment and checks it covers the workload stage's calls.</summary>
    internal abstract Plan Resolve(TrainingExperiment experiment);

    /// <summary>Whether the run executes the plan (its stage's calls on their meshes and layouts, on the
    /// job's <see cref="JobHosts"/>); the single-device choice runs everything on this process's device.</summary>
    internal virtual bool Executed => true;

    /// <summary>Model function calls of the experiment's last (workload) stage.</summary>
    internal static IReadOnlyList<ModelFunctionCall> Calls(TrainingExperiment e)
    {
        var last = e.Config.Stages[^1];
        return DataflowGraph.For(last).Calls;
    }

    private static void CheckCovers(Plan plan, TrainingExperiment e, string source)
    {
        var have = plan.Calls.Select(c => c.Name).ToHashSet(StringComparer.Ordinal);
        var missing = Calls(e).Select(c => c.Name).Where(n => !have.Contains(n)).ToList();
        if (missing.Count > 0)
            throw new ArgumentException($"plan {source} has no entry for call(s) {string.Join(", ", missing)} of experiment '{e.Name}' ({e.Algorithm}); " +
                                        $"it lists {string.Join(", ", have)}");
    }

    private sealed class SingleDeviceChoice : PlanChoice
    {
        public override string ToString() => "single device";
        internal override bool Executed => false;

        internal override Plan Resolve(TrainingExperiment experiment)
        {
            var mesh = new Mesh(0, 1, 0, 1);
            var calls = Calls(experiment).Select(c => new PlanCall(c.Name, c.Model, c.Type switch
            {
                EngineCallType.Generate => PlanCallType.Generate,
                EngineCallType.Inference => PlanCallType.Inference,
                _ => PlanCallType.TrainStep,
            }, mesh, new Strategy(1, 1, 1), 1)).ToList();
            return new Plan(1, 1, calls, null);
        }
    }

    private sealed class SearchChoice(ClusterSpec? cluster, string? path, SearchOptions options) : PlanChoice
    {
        public override string ToString() => $"searched on {cluster?.Name ?? path}";

        internal override Plan Resolve(TrainingExperiment experiment)
        {
            var spec = cluster ?? ClusterSpec.Load(path!);
            // The mode may have been changed in code (TrainingExperiment.WithMaxStaleness) since the YAML.
            var exp = Planner.Experiment.Parse(experiment.YamlText, experiment.BaseDirectory, experiment.Name).WithMaxStaleness(experiment.MaxStaleness);
            var plan = PlanSearch.Run(spec, exp, options).Best.Plan;
            CheckCovers(plan, experiment, $"searched on '{spec.Name}'");
            return plan;
        }
    }

    private sealed class GivenChoice(Plan? plan, string? path) : PlanChoice
    {
        public override string ToString() => path is null ? "given plan" : $"plan {path}";

        internal override Plan Resolve(TrainingExperiment experiment)
        {
            if (plan is null && !File.Exists(path)) throw new FileNotFoundException($"plan JSON '{path}' does not exist", path);
            var p = plan ?? PlanJson.Load(path!);
            CheckCovers(p, experiment, path is null ? "(given in code)" : $"'{path}'");
            return p;
        }
    }
}
