// Who runs the devices of a job's execution plan: threads of this process (embedding hosts, tests,
// `realn run --in-process`), one model worker process per plan device on this machine (`realn run
// --plan`), or node 0 of a multi-node launch whose workers join from every node (`realn launch`).
// The choice is the third input of the one job builder (TrainingJob: experiment, plan choice,
// hosts); the worker processes run this executable's worker entry point (`realn worker --role
// model ...`; an embedding host's executable hands them to WorkerHost.RunModelWorker).
using ReaLNative.Engine.Parallelism;
using ReaLNative.Engine.Workers;
using ReaLNative.Planner;

namespace ReaLNative;

/// <summary>Where the devices of a <see cref="TrainingJob"/>'s plan run. Create one with the static members.
/// With <see cref="PlanChoice.SingleDevice"/> the run needs no devices beyond this process, whatever the choice.</summary>
public abstract class JobHosts
{
    private protected JobHosts() { }

    /// <summary>Each plan device is a set of threads of this process (the default).</summary>
    public static JobHosts InProcess { get; } = new InProcessHosts();

    /// <summary>One model worker process per plan device on this machine, this process the master, on
    /// loopback; they start when the first stage the plan lists starts (or at
    /// <see cref="TrainingJob.StartWorkers"/>) and stop when the run ends. What <c>realn run --plan</c> uses.</summary>
    /// <param name="options">How to start the workers; default: this process's executable.</param>
    public static JobHosts WorkerProcesses(WorkerProcessOptions? options = null) => new WorkerProcessHosts(options ?? new WorkerProcessOptions());

    /// <summary>Node 0 of a multi-node job (<c>realn launch</c>): binds the master's control endpoint,
    /// starts this node's share of the plan's devices as worker processes and waits for every other
    /// node's workers to join (<see cref="TrainingJob.StartWorkers"/>, or the start of the run).
    /// Needs a plan whose cluster has the job's nodes.</summary>
    /// <param name="options">Endpoint, job secret and id, and how this node's workers start.</param>
    public static JobHosts LauncherNode(LauncherNodeOptions options)
    {
        ArgumentNullException.ThrowIfNull(options);
        ArgumentException.ThrowIfNullOrWhiteSpace(options.MasterEndpoint);
        ArgumentException.ThrowIfNullOrWhiteSpace(options.Job);
        if (options.Secret is null || options.Secret.Length == 0) throw new ArgumentException("LauncherNodeOptions.Secret is empty", nameof(options));
        return new LauncherNodeHosts(options);
    }

    /// <summary>Short description for logs.</summary>
    public abstract override string ToString();

    /// <summary>Whether the devices are on this machine, so the experiment must fit in its memory.</summary>
    internal abstract bool OnThisMachine { get; }
    /// <summary>Whether every worker must have joined before the run starts (a multi-node job).</summary>
    internal virtual bool JoinBeforeRun => false;

    /// <summary>Starts <paramref name="devices"/> devices for <paramref name="plan"/>; <paramref name="cancellation"/>
    /// ends a wait for workers to join (OperationCanceledException).</summary>
    internal abstract IReplicaHost Start(int devices, Plan plan, CancellationToken cancellation);

    private sealed class InProcessHosts : JobHosts
    {
        public override string ToString() => "in-process devices";
        internal override bool OnThisMachine => true;
        internal override IReplicaHost Start(int devices, Plan plan, CancellationToken cancellation) => new LocalCluster(devices);
    }

    private sealed class WorkerProcessHosts(WorkerProcessOptions options) : JobHosts
    {
        public override string ToString() => "worker processes";
        internal override bool OnThisMachine => true;

        internal override IReplicaHost Start(int devices, Plan plan, CancellationToken cancellation)
        {
            var (exe, prefix) = WorkerProcessOptions.Resolve(options);
            return new WorkerPool(devices, new WorkerPoolOptions
            {
                Executable = exe, ExecutablePrefix = prefix, ThreadsPerWorker = options.ThreadsPerWorker,
                Cancellation = cancellation, OnInterrupt = options.OnWorkerSignal,
            });
        }
    }

    private sealed class LauncherNodeHosts(LauncherNodeOptions options) : JobHosts
    {
        public override string ToString() => $"node 0 of a launch (master {options.MasterEndpoint})";
        internal override bool OnThisMachine => false;
        internal override bool JoinBeforeRun => true;

        internal override IReplicaHost Start(int devices, Plan plan, CancellationToken cancellation)
        {
            int all = plan.Nodes * plan.DevicesPerNode;
            if (devices != all) throw new InvalidOperationException($"the plan needs {devices} devices, the launch has {all}");
            var (exe, prefix) = WorkerProcessOptions.Resolve(options);
            return new WorkerPool(all, new WorkerPoolOptions
            {
                Executable = exe, ExecutablePrefix = prefix, ExternalWorkers = true, LocalRanks = Enumerable.Range(0, plan.DevicesPerNode).ToArray(),
                Bind = options.MasterEndpoint, WorkerBindHost = options.WorkerBindHost, Node = options.NodeName, Secret = options.Secret, Job = options.Job,
                ThreadsPerWorker = options.ThreadsPerWorker, StartTimeout = options.StartTimeout, Cancellation = cancellation,
                OnInterrupt = options.OnWorkerSignal, JoinNote = options.JoinProgress,
            });
        }
    }
}

/// <summary>How a job starts its model worker processes (<see cref="JobHosts.WorkerProcesses"/>).</summary>
public record WorkerProcessOptions
{
    /// <summary>The executable a worker runs, given <c>worker --role model ...</c> after <see cref="ExecutableArguments"/>;
    /// it must hand them to <see cref="WorkerHost.RunModelWorker"/> (the <c>realn</c> executable does).
    /// Default: this process's executable (under <c>dotnet app.dll</c>: <c>dotnet app.dll</c>).</summary>
    public string? Executable { get; init; }
    /// <summary>Arguments before <c>worker</c> (for example an assembly path when <see cref="Executable"/> is <c>dotnet</c>).</summary>
    public IReadOnlyList<string> ExecutableArguments { get; init; } = [];
    /// <summary>OpenMP / OpenBLAS threads per worker (0, the default: this machine's cores divided among its workers).</summary>
    public int ThreadsPerWorker { get; init; }
    /// <summary>Told (once per source) when a worker or a node's launcher reports a SIGTERM / SIGINT it received, for
    /// example <c>"SIGTERM to worker 1"</c>: cancel the run's token to stop the job at its next safe point.</summary>
    public Action<string>? OnWorkerSignal { get; init; }

    /// <summary>The executable and the arguments before <c>worker</c> that start a worker process.</summary>
    [System.Diagnostics.CodeAnalysis.UnconditionalSuppressMessage("SingleFile", "IL3000", Justification = "only under `dotnet realn.dll`; a single-file or NativeAOT realn is its own process path")]
    internal static (string Executable, IReadOnlyList<string> Prefix) Resolve(WorkerProcessOptions o)
    {
        if (o.Executable is { } exe) return (exe, o.ExecutableArguments);
        string self = Environment.ProcessPath ?? throw new InvalidOperationException("cannot locate this process's executable; set WorkerProcessOptions.Executable");
        // Under `dotnet app.dll` the worker is `dotnet app.dll worker ...`. Assembly.Location is empty in a single-file or
        // NativeAOT app (IL3000), but there the process is the app itself, not `dotnet`, and this branch is not taken.
        return Path.GetFileNameWithoutExtension(self) == "dotnet" && System.Reflection.Assembly.GetEntryAssembly()?.Location is { Length: > 0 } dll
            ? (self, [dll, .. o.ExecutableArguments])
            : (self, o.ExecutableArguments);
    }
}

/// <summary>Node 0 of a multi-node job (<see cref="JobHosts.LauncherNode"/>): the master's endpoint, the
/// job's identity and this node's workers. The other nodes run their workers with <c>realn launch</c>.</summary>
public sealed record LauncherNodeOptions : WorkerProcessOptions
{
    /// <summary>The control endpoint the master binds, <c>tcp://HOST:PORT</c> (every node's workers join through it).</summary>
    public required string MasterEndpoint { get; init; }
    /// <summary>The job secret (the same on every node; messages are authenticated with it).</summary>
    public required byte[] Secret { get; init; }
    /// <summary>The job id (the same on every node).</summary>
    public required string Job { get; init; }
    /// <summary>Interface this node's workers bind and advertise (default loopback).</summary>
    public string WorkerBindHost { get; init; } = "127.0.0.1";
    /// <summary>This node's name in messages.</summary>
    public string NodeName { get; init; } = Environment.MachineName + "/0";
    /// <summary>Deadline for every node's workers to join (default 120 s).</summary>
    public TimeSpan StartTimeout { get; init; } = TimeSpan.FromSeconds(120);
    /// <summary>Told every 10 s while workers are still missing (which ranks, and the deadline); null: silent.</summary>
    public Action<string>? JoinProgress { get; init; }
}
