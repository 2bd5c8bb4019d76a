// The planner's memory model applied before `realn run` allocates anything: a config whose models
// cannot fit this machine is refused with the message `realn plan` gives, instead of minutes of
// allocation and a native out-of-memory error. Pure arithmetic on the experiment; the caller says
// how much memory the machine has.
namespace ReaLNative.Planner;

/// <summary>Checks that an experiment (and, when given, a plan) fits in a machine's memory.</summary>
public static class MemoryFit
{
    /// <summary>Throws a <see cref="PlannerException"/> when <paramref name="exp"/> does not fit.
    /// Without a plan: every call on one device of <paramref name="availableBytes"/> (the search
    /// `realn plan` runs on a one-device cluster, with its messages). With a plan: its devices share
    /// the machine (the master holds no model of the stage the plan lists); each call on its plan layout.</summary>
    public static void Check(Experiment exp, Plan? plan, double availableBytes, string machine)
    {
        if (plan is null)
        {
            PlanSearch.Run(Machine($"{machine}, one device", 1, 1, availableBytes), exp, new SearchOptions { TimeLimitSeconds = 10 });
            return;
        }
        int devices = plan.Nodes * plan.DevicesPerNode;
        double perDevice = availableBytes / devices;
        var cluster = Machine($"{machine}, {devices} plan devices sharing {Units.Bytes(availableBytes)}", plan.Nodes, plan.DevicesPerNode, perDevice);
        var peak = DevicePeaks(exp, plan, cluster);   // a call no layout fits: `realn plan`'s message
        int worst = Array.IndexOf(peak, peak.Max());
        if (peak[worst] > perDevice)
            throw new PlannerException($"the plan does not fit in memory on cluster '{cluster.Name}': device {worst} needs {Units.Bytes(peak[worst])}, " +
                                       $"{Units.Bytes(peak[worst] - perDevice)} more than the {Units.Bytes(perDevice)} available to each device");
    }

    /// <summary>The planner's memory model for a run of <paramref name="exp"/>, per process: with a
    /// plan, no model bytes on the master (the plan's devices initialise, evaluate and checkpoint
    /// their own shards; the master keeps metadata, metrics and batches) and each plan device's peak (resident shards and optimizer state plus the largest
    /// activations of its calls); without one, the single device (the master) running every call.</summary>
    public static MemoryEstimate Estimate(Experiment exp, Plan? plan)
    {
        if (plan is null)
        {
            var one = Machine("one device", 1, 1, 1e18);
            var single = new Plan(1, 1, exp.Calls.Select(c => new PlanCall(c.Name, c.Role, c.Type, new Mesh(0, 1, 0, 1), new Strategy(1, 1, 1), 1)).ToList(), null);
            return new MemoryEstimate(DevicePeaks(exp, single, one)[0], []);
        }
        var cluster = Machine("plan devices", plan.Nodes, plan.DevicesPerNode, 1e18);
        var (resident, active) = BuildEvaluator(exp, plan, cluster, out var choice).MemoryParts(choice);
        return new MemoryEstimate(0, resident.Select((r, d) => r + active[d]).ToArray()) { DeviceResidentBytes = resident, DeviceActiveBytes = active };
    }

    /// <summary>Peak memory per device of the plan's choice for every call.</summary>
    private static double[] DevicePeaks(Experiment exp, Plan plan, ClusterSpec cluster) => BuildEvaluator(exp, plan, cluster, out var choice).PeakMemory(choice);

    private static Evaluator BuildEvaluator(Experiment exp, Plan plan, ClusterSpec cluster, out int[] choice)
    {
        var problem = new PlanningProblem(new Estimator(cluster, exp));
        choice = new int[problem.Calls.Count];
        for (int i = 0; i < choice.Length; i++)
        {
            var pc = plan.Calls.First(c => c.Name == problem.Calls[i].Name);
            choice[i] = problem.IndexOf(i, new CallOption(pc.Mesh, pc.Strategy, pc.MicroBatches, false));
        }
        return new Evaluator(problem);
    }

    /// <summary>A CPU machine as a cluster: fp32 activations (the engine's on every precision), only the
    /// memory matters (speeds are placeholders). Weights, train state and KV caches take each model's
    /// precision from the experiment (<see cref="Estimator.Memory"/>).</summary>
    private static ClusterSpec Machine(string name, int nodes, int devicesPerNode, double bytesPerDevice) => new()
    {
        Name = name, Nodes = nodes, DevicesPerNode = devicesPerNode, DeviceMemoryBytes = bytesPerDevice, Precision = Precision.Fp32,
        PeakFlops = 1e12, ComputeEfficiency = 0.5, MemoryBandwidth = 1e10, IntraNodeBandwidth = 1e10, IntraNodeLatency = 1e-6,
        InterNodeBandwidth = 1e9, InterNodeLatency = 1e-5, HostBandwidth = 1e10,
    };
}

/// <summary>The planner's memory estimate per process of a run: the master and each plan device
/// (empty without a plan), in bytes; with a plan, each device's peak split into its resident bytes
/// (weights and train state of the models that live there) and the largest active bytes of its calls.</summary>
public sealed record MemoryEstimate(double MasterBytes, double[] DeviceBytes)
{
    public double[] DeviceResidentBytes { get; init; } = [];
    public double[] DeviceActiveBytes { get; init; } = [];
}
