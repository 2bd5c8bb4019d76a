// The processes of a multi-process job other than its master, for the executable that runs them
// (`realn worker` and `realn launch` on nodes other than 0; an embedding host's own executable
// likewise): a model worker serves one plan device, a worker node runs one node's model workers for
// a launch. Both authenticate with the per-job secret, which travels by environment or by a file of
// mode 0600, never on a command line.
using ReaLNative.Engine.Control;
using ReaLNative.Engine.Workers;

namespace ReaLNative;

/// <summary>Entry points of a job's worker processes, and the job secret they share.</summary>
public static class WorkerHost
{
    /// <summary>The environment variable holding the job secret as hex.</summary>
    public const string SecretVariable = JobSecret.Variable;
    /// <summary>The environment variable naming a file (mode 0600) that holds the job secret as hex.</summary>
    public const string SecretFileVariable = JobSecret.FileVariable;
    /// <summary>How long a worker (or worker node) goes on without hearing from its master before it exits.</summary>
    public static TimeSpan MasterLoss => ModelWorker.HeartbeatLoss;

    /// <summary>A fresh job secret (32 bytes from the system's cryptographic generator).</summary>
    public static byte[] NewSecret() => JobSecret.Generate();

    /// <summary>The job secret this process was given through <see cref="SecretVariable"/> or <see cref="SecretFileVariable"/>.</summary>
    /// <exception cref="InvalidOperationException">Neither or both are set, the file's mode grants group or others access,
    /// the secret is short or not hex, or it appears on this process's command line.</exception>
    public static byte[] SecretFromEnvironment() => JobSecret.FromEnvironment();

    /// <summary>Whether a job secret is set in this process's environment (either variable).</summary>
    public static bool SecretInEnvironment =>
        !string.IsNullOrEmpty(Environment.GetEnvironmentVariable(SecretVariable)) || !string.IsNullOrEmpty(Environment.GetEnvironmentVariable(SecretFileVariable));

    /// <summary>Runs the model worker of one plan device: joins the master at <see cref="ModelWorkerOptions.Control"/>,
    /// serves its commands until the master shuts the job down, and returns the process exit code (0: shut down by
    /// the master; non-zero: the master was lost or the worker failed, with the reason on stderr).</summary>
    public static int RunModelWorker(ModelWorkerOptions options)
    {
        ArgumentNullException.ThrowIfNull(options);
        return ModelWorker.Run(new WorkerArgs(options.Control, options.Job, options.Secret, options.Rank, options.Size)
        {
            BindHost = options.BindHost, AdvertiseHost = options.AdvertiseHost, Node = options.NodeName,
        });
    }

    /// <summary>A model worker received <paramref name="signal"/> (<c>"SIGTERM"</c> or <c>"SIGINT"</c>): it keeps
    /// serving and tells its master, which stops the job at the next safe point and shuts the workers down.</summary>
    public static void ReportSignal(string signal) => ModelWorker.NoteSignal(signal);
}

/// <summary>The model worker of one plan device (<see cref="WorkerHost.RunModelWorker"/>); a job's master starts
/// it with these on its command line (<c>worker --role model --control ... --job ... --rank ... --size ...</c>).</summary>
public sealed record ModelWorkerOptions
{
    /// <summary>The master's control endpoint, <c>tcp://HOST:PORT</c>.</summary>
    public required string Control { get; init; }
    /// <summary>The job id.</summary>
    public required string Job { get; init; }
    /// <summary>The job secret (<see cref="WorkerHost.SecretFromEnvironment"/>).</summary>
    public required byte[] Secret { get; init; }
    /// <summary>This worker's UCX rank (its plan device).</summary>
    public required int Rank { get; init; }
    /// <summary>The UCX world size: the workers plus the master.</summary>
    public required int Size { get; init; }
    /// <summary>Interface the worker's command server binds (loopback unless the job spans nodes).</summary>
    public string BindHost { get; init; } = "127.0.0.1";
    /// <summary>Host the master reaches the command server at (default: <see cref="BindHost"/>).</summary>
    public string? AdvertiseHost { get; init; }
    /// <summary>This node's name in the master's messages.</summary>
    public string NodeName { get; init; } = Environment.MachineName;
}

/// <summary>One node other than node 0 of a multi-node launch: starts the node's model workers (which join the
/// master on node 0), reports any that exits to the master, and ends when the master ends the job, when it is
/// unreachable for longer than <see cref="WorkerHost.MasterLoss"/>, or when a worker fails. Every way out
/// stops the node's workers.</summary>
public sealed class WorkerNode
{
    private readonly WorkerNodeOptions _options;
    private readonly NodeSignals _signals = new();

    /// <summary>A node; nothing starts until <see cref="Run"/>.</summary>
    public WorkerNode(WorkerNodeOptions options)
    {
        ArgumentNullException.ThrowIfNull(options);
        ArgumentException.ThrowIfNullOrWhiteSpace(options.Control);
        if (options.Ranks.Count == 0) throw new ArgumentException("WorkerNodeOptions.Ranks is empty", nameof(options));
        _options = options;
    }

    /// <summary>Runs the node's workers until the job ends; returns 0 when it ended normally, non-zero otherwise.</summary>
    /// <param name="log">Told what the node does (workers started, a worker's exit, the master lost).</param>
    public int Run(Action<string> log)
    {
        ArgumentNullException.ThrowIfNull(log);
        var o = _options;
        var (exe, prefix) = WorkerProcessOptions.Resolve(o);
        var cmd = new WorkerCommandLine(exe, prefix, o.Control, o.Job, o.Size)
        {
            BindHost = o.WorkerBindHost, Node = o.NodeName, ThreadsPerWorker = o.ThreadsPerWorker,
        };
        return NodeLauncher.Run(cmd, o.Secret, o.Node, o.Ranks, WorkerHost.MasterLoss, log, _signals);
    }

    /// <summary>The node received <paramref name="signal"/> (<c>"SIGTERM"</c> / <c>"SIGINT"</c>): passed to the master,
    /// which stops the whole job at its next safe point.</summary>
    public void ReportSignal(string signal) => _signals.Signal = signal;

    /// <summary>Kills the node's workers at once (a second signal).</summary>
    public void KillWorkers() => _signals.KillWorkers?.Invoke();
}

/// <summary>Settings of a <see cref="WorkerNode"/>: the same endpoint, job and secret as node 0, and this node's ranks.</summary>
public sealed record WorkerNodeOptions : WorkerProcessOptions
{
    /// <summary>The master's control endpoint on node 0, <c>tcp://HOST:PORT</c>.</summary>
    public required string Control { get; init; }
    /// <summary>The job id (the same on every node).</summary>
    public required string Job { get; init; }
    /// <summary>The job secret (the same on every node).</summary>
    public required byte[] Secret { get; init; }
    /// <summary>This node's rank (1 and up).</summary>
    public required int Node { get; init; }
    /// <summary>The plan devices (UCX ranks) this node's workers serve.</summary>
    public required IReadOnlyList<int> Ranks { get; init; }
    /// <summary>The UCX world size: every node's workers plus the master.</summary>
    public required int Size { get; init; }
    /// <summary>Interface this node's workers bind and advertise.</summary>
    public string WorkerBindHost { get; init; } = "127.0.0.1";
    /// <summary>This node's name in messages.</summary>
    public string NodeName { get; init; } = Environment.MachineName;
}
