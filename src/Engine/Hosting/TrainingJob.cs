// One run of an experiment, and the one place a run is built: from the experiment, the plan choice
// (single device, searched, or a plan JSON) and the hosts of the plan's devices (in-process, worker
// processes, or node 0 of a multi-node launch). Embedding hosts, `realn run` and `realn launch` all
// go through it. Before anything runs it resolves the plan, checks memory, the plan's layouts and the
// output folder (Prepare); the synchronous run loop (Pipeline) runs on a dedicated thread (RunAsync)
// or the caller's (Run), progress through IProgress<T>, metric lines as an IAsyncEnumerable fed by a
// bounded channel as iterations finish (tailing metrics.jsonl, which the loop flushes per line),
// cancellation observed between iterations and calls (the mechanism `realn run` uses for SIGTERM /
// SIGINT). Cancellation does not throw: the result says Cancelled, the last checkpoint is complete
// and the training thread has ended when RunAsync returns.
using System.Diagnostics;
using System.Text.Json.Nodes;
using System.Threading.Channels;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;
using ReaLNative.Engine.Parallelism;
using ReaLNative.Engine.Config;
using ReaLNative.Engine.Runs;
using ReaLNative.Engine.Workers;
using ReaLNative.Planner;

namespace ReaLNative;

/// <summary>Settings of a <see cref="TrainingJob"/>.</summary>
public sealed class TrainingOptions
{
    /// <summary>Folder that receives metrics.jsonl, summary.json, plan.json and checkpoints/ (required).</summary>
    public required string OutputDirectory { get; init; }
    /// <summary>Continue from the last checkpoint in <see cref="OutputDirectory"/> that verifies. Without it (and without
    /// <see cref="Overwrite"/>) the folder must be new or empty: a folder holding an earlier run is refused with
    /// <see cref="RunDirectoryException"/>, nothing changed.</summary>
    public bool Resume { get; init; }
    /// <summary>Start over in an <see cref="OutputDirectory"/> that holds an earlier run: deletes only what a run wrote
    /// there (checkpoints, metrics.jsonl, summary.json, curves.png, plan.json), never other files. Excludes <see cref="Resume"/>.</summary>
    public bool Overwrite { get; init; }
    /// <summary>Where the execution plan comes from (default <see cref="PlanChoice.SingleDevice"/>).</summary>
    public PlanChoice Plan { get; init; } = PlanChoice.SingleDevice;
    /// <summary>Where the plan's devices run (default <see cref="JobHosts.InProcess"/>).</summary>
    public JobHosts Hosts { get; init; } = JobHosts.InProcess;
    /// <summary>How messages name <see cref="Resume"/> (a command-line host names its flag, e.g. <c>--resume</c>).</summary>
    public string ResumeOptionName { get; init; } = "TrainingOptions.Resume";
    /// <summary>How messages name <see cref="Overwrite"/> (e.g. <c>--overwrite</c>).</summary>
    public string OverwriteOptionName { get; init; } = "TrainingOptions.Overwrite";
    /// <summary>Write the resolved plan to OUTPUT/plan.json when the run starts (default true; <c>realn run</c> and
    /// <c>realn launch</c> do not: their plan is the file given with <c>--plan</c>).</summary>
    public bool WritePlanJson { get; init; } = true;
    /// <summary>Told each message a person should see as it happens (each checkpoint resume refused and why, the one it
    /// continues from, skipped dataset records); they are logged too. Called on the run's thread.</summary>
    public Action<string>? OnNote { get; init; }
    /// <summary>Logger factory for the job's log (default: none).</summary>
    public ILoggerFactory? LoggerFactory { get; init; }
    /// <summary>Metric records buffered for <see cref="TrainingJob.Metrics"/>; when full the oldest are dropped (metrics.jsonl keeps all). Default 4096.</summary>
    public int MetricsBufferCapacity { get; init; } = 4096;
}

/// <summary>Progress after one finished iteration (or the initial evaluation, iteration 0) of a stage.</summary>
/// <param name="Stage">0-based stage.</param>
/// <param name="StageCount">Number of stages.</param>
/// <param name="Algorithm">The stage's algorithm.</param>
/// <param name="Iteration">Iterations of the stage finished.</param>
/// <param name="Iterations">Iterations of the stage in all.</param>
/// <param name="Fraction">Fraction of all stages' iterations finished, in [0, 1].</param>
/// <param name="Figures">The iteration's figures (loss, reward_mean, kl, task_score ...).</param>
/// <param name="Elapsed">Time since the run started.</param>
public sealed record TrainingProgress(int Stage, int StageCount, string Algorithm, int Iteration, int Iterations, double Fraction,
                                      IReadOnlyDictionary<string, double> Figures, TimeSpan Elapsed);

/// <summary>One line of metrics.jsonl: the figures of one model function call (or "eval") of one iteration.</summary>
/// <param name="Stage">0-based stage.</param>
/// <param name="Algorithm">The stage's algorithm.</param>
/// <param name="Step">1-based iteration (0: evaluation before the first).</param>
/// <param name="Call">Call name (actor_gen, rew_inf, actor_train ... or eval).</param>
/// <param name="Seconds">Call duration, when recorded.</param>
/// <param name="Values">Other figures; non-finite values are NaN.</param>
public sealed record MetricRecord(int Stage, string Algorithm, int Step, string Call, double? Seconds, IReadOnlyDictionary<string, double> Values);

/// <summary>How a run ended.</summary>
public enum TrainingStatus
{
    /// <summary>Every stage ran to its last iteration; summary.json was written.</summary>
    Completed,
    /// <summary>The cancellation token fired; the run stopped between iterations.</summary>
    Cancelled,
}

/// <summary>Outcome of <see cref="TrainingJob.RunAsync"/>.</summary>
public sealed class TrainingResult
{
    internal TrainingResult() { }
    /// <summary>Completed or cancelled.</summary>
    public required TrainingStatus Status { get; init; }
    /// <summary>The output folder.</summary>
    public required string OutputDirectory { get; init; }
    /// <summary>The plan the job resolved (also in OUT/plan.json).</summary>
    public required Plan Plan { get; init; }
    /// <summary>Wall time of this run.</summary>
    public required TimeSpan Elapsed { get; init; }
    /// <summary>The last complete checkpoint (resume point), or null.</summary>
    public CheckpointInfo? LastCheckpoint { get; init; }
    /// <summary>Where a cancelled run stopped (<c>"ppo iteration 7/40"</c>, <c>"start-up"</c>); null when completed.</summary>
    public string? StoppedAt { get; init; }
    /// <summary>summary.json's content (null when cancelled).</summary>
    public string? SummaryJson { get; init; }
    /// <summary>Held-out task score before the last stage (null when cancelled).</summary>
    public double? InitialTaskScore { get; init; }
    /// <summary>Held-out task score after the last stage (null when cancelled).</summary>
    public double? FinalTaskScore { get; init; }
    /// <summary>Reward-model score of the first workload iteration's samples (null when cancelled or not an RL stage).</summary>
    public double? InitialReward { get; init; }
    /// <summary>Reward-model score of the last workload iteration's samples.</summary>
    public double? FinalReward { get; init; }
}

/// <summary>A single run of a <see cref="TrainingExperiment"/>: the one builder of a job from the experiment, the
/// plan choice (<see cref="TrainingOptions.Plan"/>) and the hosts of the plan's devices (<see cref="TrainingOptions.Hosts"/>);
/// <c>realn run</c> and <c>realn launch</c> build theirs here too. Call <see cref="RunAsync"/> (or <see cref="Run"/>) once;
/// <see cref="Prepare"/> and <see cref="StartWorkers"/> may be called before it to fail early or to wait for workers.</summary>
public sealed class TrainingJob : IDisposable
{
    private readonly Channel<MetricRecord> _metrics;
    private readonly ILogger _log;
    private readonly string _outDir;
    private readonly Lock _gate = new();
    private int _started;
    private volatile bool _running;
    private Plan? _plan;
    private Pipeline? _pipeline;
    private IReplicaHost? _workers;
    private bool _workersHandedOver;   // the pipeline owns (and disposes) them
    private Action<ProgressEvent>? _onProgress;
    private bool _disposed;

    /// <summary>Creates a job; nothing runs until <see cref="RunAsync"/>.</summary>
    /// <exception cref="ArgumentException">The output folder is empty, the buffer capacity is below 1, Resume and Overwrite
    /// are both set, or <see cref="JobHosts.LauncherNode"/> is asked without a plan.</exception>
    public TrainingJob(TrainingExperiment experiment, TrainingOptions options)
    {
        ArgumentNullException.ThrowIfNull(experiment);
        ArgumentNullException.ThrowIfNull(options);
        if (string.IsNullOrWhiteSpace(options.OutputDirectory)) throw new ArgumentException("TrainingOptions.OutputDirectory is empty", nameof(options));
        if (options.MetricsBufferCapacity < 1) throw new ArgumentException($"TrainingOptions.MetricsBufferCapacity must be >= 1 (got {options.MetricsBufferCapacity})", nameof(options));
        ArgumentNullException.ThrowIfNull(options.Plan, "options.Plan");
        ArgumentNullException.ThrowIfNull(options.Hosts, "options.Hosts");
        if (options.Resume && options.Overwrite) throw new ArgumentException($"{options.ResumeOptionName} and {options.OverwriteOptionName} exclude each other", nameof(options));
        if (options.Hosts.JoinBeforeRun && !options.Plan.Executed) throw new ArgumentException($"{options.Hosts} runs a plan's devices; choose a plan (PlanChoice.FromJson, FromPlan or Search)", nameof(options));
        Experiment = experiment;
        Options = options;
        _outDir = Path.GetFullPath(options.OutputDirectory);
        _log = (ILogger?)options.LoggerFactory?.CreateLogger<TrainingJob>() ?? NullLogger.Instance;
        _metrics = Channel.CreateBounded<MetricRecord>(new BoundedChannelOptions(options.MetricsBufferCapacity)
        { FullMode = BoundedChannelFullMode.DropOldest, SingleReader = true, SingleWriter = true });
    }

    /// <summary>The experiment.</summary>
    public TrainingExperiment Experiment { get; }
    /// <summary>The settings.</summary>
    public TrainingOptions Options { get; }
    /// <summary>True while the training thread runs.</summary>
    public bool IsRunning => _running;
    /// <summary>Where the run is, for messages: <c>"start-up"</c>, <c>"ppo iteration 7/40"</c> ...</summary>
    public string Position => _pipeline?.Position ?? "start-up";

    /// <summary>Metric records as iterations finish; the sequence ends when the run ends (and faults if it failed).
    /// Enumerate it once, concurrently with <see cref="RunAsync"/>.</summary>
    public IAsyncEnumerable<MetricRecord> Metrics => _metrics.Reader.ReadAllAsync();

    /// <summary>Resolves the execution plan per <see cref="TrainingOptions.Plan"/> without running.</summary>
    public Plan ResolvePlan() => _plan ?? Options.Plan.Resolve(Experiment);

    /// <summary>Checks everything that can be checked before anything runs, in this order: resolves the plan; refuses
    /// an experiment whose models do not fit in this machine's available memory (devices on this machine); refuses a
    /// plan the engine cannot execute for the experiment's models; checks the output folder as
    /// <see cref="TrainingOptions.Resume"/> / <see cref="TrainingOptions.Overwrite"/> ask. Nothing is allocated and
    /// nothing in the folder changes. <see cref="RunAsync"/> calls it when the caller has not. Returns the plan.</summary>
    /// <exception cref="PlannerException">The plan could not be found or loaded, or the engine cannot execute it
    /// (a layout the models cannot be split into, bf16 weights); the message names the call or field.</exception>
    /// <exception cref="ExperimentConfigException">The experiment does not fit in this machine's memory (the message names the stage).</exception>
    /// <exception cref="RunDirectoryException">The output folder holds an earlier run (and neither Resume nor Overwrite is set),
    /// is a file, or is not writable.</exception>
    public Plan Prepare()
    {
        lock (_gate)
        {
            ObjectDisposedException.ThrowIf(_disposed, this);
            if (_pipeline is not null) return _plan!;
            var plan = Options.Plan.Resolve(Experiment);
            var executed = Options.Plan.Executed ? plan : null;
            var cfg = Experiment.Config;
            if (Options.Hosts.OnThisMachine)
            {
                var (available, machine) = HostMemory.Available();
                if (!double.IsInfinity(available))   // no /proc/meminfo: nothing to check against
                {
                    try { MemoryCheck.Check(cfg, executed, available, machine); }
                    catch (ConfigException e) { throw new ExperimentConfigException(e.FieldPath, e.Message, e); }
                }
            }
            Pipeline pipeline;
            try
            {
                pipeline = new Pipeline(cfg, _outDir, plan: executed, progress: ev => _onProgress?.Invoke(ev), note: Note,
                                        hosts: executed is null ? null : StartedWorkers)
                {
                    OptionNames = (Options.ResumeOptionName, Options.OverwriteOptionName),
                    PlanRecord = Options.WritePlanJson ? PlanJson.ToJson(plan) : null,
                };
            }
            catch (ConfigException e) when (executed is not null) { throw new PlannerException(e.Message); }
            catch (ConfigException e) { throw new ExperimentConfigException(e.FieldPath, e.Message, e); }
            try { pipeline.CheckOutput(Options.Resume ? RunStart.Resume : Options.Overwrite ? RunStart.Overwrite : RunStart.Fresh); }
            catch { pipeline.Dispose(); throw; }
            _plan = plan;
            _pipeline = pipeline;
            return plan;
        }
    }

    /// <summary>Starts the plan's model workers now and waits until every one has joined (<see cref="JobHosts.LauncherNode"/>:
    /// every node's); in-process devices are made now too. Without it the run starts them when the stage the plan
    /// lists starts (a launch: before the run), so earlier stages' single-device work holds no workers. Calls
    /// <see cref="Prepare"/> first when the caller has not; nothing happens for <see cref="PlanChoice.SingleDevice"/>.</summary>
    /// <param name="cancellationToken">Ends the wait for the workers (OperationCanceledException); the started ones are stopped.</param>
    /// <exception cref="TimeoutException">A worker did not join within the start timeout; the message names the missing ones.</exception>
    public void StartWorkers(CancellationToken cancellationToken = default)
    {
        var plan = Prepare();
        if (!Options.Plan.Executed) return;
        lock (_gate)
            if (_workers is not null) return;
        // Not under the lock: Abort (a second signal) must not wait for the join.
        var workers = Options.Hosts.Start(plan.Nodes * plan.DevicesPerNode, plan, cancellationToken);
        lock (_gate) _workers = workers;
    }

    /// <summary>The plan's devices for the pipeline: the ones started earlier, else started now.</summary>
    private IReplicaHost StartedWorkers(int devices)
    {
        IReplicaHost? workers;
        lock (_gate) workers = _workers;
        if (workers is null)
        {
            workers = Options.Hosts.Start(devices, _plan!, _runToken);   // not under the lock: see StartWorkers
            lock (_gate) _workers = workers;
        }
        if (workers.Devices != devices) throw new InvalidOperationException($"the plan needs {devices} devices, the started workers are {workers.Devices}");
        lock (_gate) _workersHandedOver = true;
        return workers;
    }

    private CancellationToken _runToken;

    private void Note(string n)
    {
        if (n.Contains(" refused: ", StringComparison.Ordinal)) _log.LogWarning("{Note}", n);
        else _log.LogInformation("{Note}", n);
        Options.OnNote?.Invoke(n);
    }

    /// <summary>Stops at once, for a host process that is about to exit (a second SIGTERM): kills this node's worker
    /// processes (a launch's other nodes are told to stop) and removes the temporary files of a checkpoint being
    /// written. The last complete checkpoint stays; the run's thread is left to the process exit.</summary>
    public void Abort()
    {
        // No lock: a second signal must not wait for a join or a plan search in progress.
        (Volatile.Read(ref _workers) as WorkerPool)?.Abort();
        RunDirectory.RemoveTemporaries(_outDir);
    }

    /// <summary>Runs the experiment on a dedicated thread. Cancelling <paramref name="cancellationToken"/> stops it
    /// between iterations: the returned result has <see cref="TrainingStatus.Cancelled"/> (no exception), the last
    /// checkpoint is complete, and the training thread has ended.</summary>
    /// <exception cref="InvalidOperationException">The job was already run.</exception>
    /// <exception cref="PlannerException">The plan could not be found or loaded, or cannot be executed (see <see cref="Prepare"/>).</exception>
    /// <exception cref="ExperimentConfigException">The experiment does not fit in this machine's memory.</exception>
    /// <exception cref="RunDirectoryException">The output folder holds an earlier run (and neither Resume nor Overwrite is set),
    /// is a file, or is not writable; checked before any training, nothing in it changed.</exception>
    public async Task<TrainingResult> RunAsync(IProgress<TrainingProgress>? progress = null, CancellationToken cancellationToken = default)
    {
        Begin();
        var clock = Stopwatch.StartNew();
        Plan plan;
        try { plan = await Task.Run(Prepare, cancellationToken).ConfigureAwait(false); }
        catch (Exception e) { Fail(e); throw; }
        var tcs = new TaskCompletionSource<TrainingResult>(TaskCreationOptions.RunContinuationsAsynchronously);
        var thread = new Thread(() =>
        {
            try { tcs.SetResult(Execute(plan, progress, clock, cancellationToken)); }
            catch (Exception e) { tcs.SetException(e); }
        }) { Name = "realn-train", IsBackground = false };
        _running = true;
        thread.Start();
        try { return await tcs.Task.ConfigureAwait(false); }
        finally { thread.Join(); }
    }

    /// <summary>Runs the experiment on the calling thread (a command-line host); otherwise as <see cref="RunAsync"/>:
    /// progress is reported on this thread, cancellation returns <see cref="TrainingStatus.Cancelled"/>.</summary>
    /// <exception cref="InvalidOperationException">The job was already run.</exception>
    /// <exception cref="PlannerException">See <see cref="RunAsync"/>.</exception>
    /// <exception cref="ExperimentConfigException">See <see cref="RunAsync"/>.</exception>
    /// <exception cref="RunDirectoryException">See <see cref="RunAsync"/>.</exception>
    public TrainingResult Run(IProgress<TrainingProgress>? progress = null, CancellationToken cancellationToken = default)
    {
        Begin();
        var clock = Stopwatch.StartNew();
        Plan plan;
        try { plan = Prepare(); }
        catch (Exception e) { Fail(e); throw; }
        return Execute(plan, progress, clock, cancellationToken);
    }

    private void Begin()
    {
        if (Interlocked.Exchange(ref _started, 1) != 0) throw new InvalidOperationException("a TrainingJob runs once; create a new job for another run");
    }

    private void Fail(Exception e)
    {
        _running = false;
        Dispose();
        _metrics.Writer.TryComplete(e);
    }

    private TrainingResult Execute(Plan plan, IProgress<TrainingProgress>? progress, Stopwatch clock, CancellationToken cancellationToken)
    {
        var pipeline = _pipeline!;
        if (Options.Plan.Executed && (plan.Nodes * plan.DevicesPerNode > 1 || Options.Hosts != JobHosts.InProcess))
            _log.LogInformation("plan ({Choice}): {Devices} devices, {Hosts}", Options.Plan, plan.Nodes * plan.DevicesPerNode, Options.Hosts);
        if (cancellationToken.IsCancellationRequested)
        {
            _running = false;
            Dispose();
            _metrics.Writer.TryComplete();
            return new TrainingResult { Status = TrainingStatus.Cancelled, OutputDirectory = _outDir, Plan = plan, Elapsed = clock.Elapsed, LastCheckpoint = Checkpoint.Latest(_outDir), StoppedAt = "start-up" };
        }
        _log.LogInformation("run {Experiment} into {Out} (plan: {Choice}, resume: {Resume})", Experiment.ToString(), _outDir, Options.Plan, Options.Resume);
        _running = true;
        _runToken = cancellationToken;
        var stages = Experiment.Config.Stages;
        int total = Experiment.TotalIterations, lastStage = -1;
        JsonObject result;
        using (var tail = new MetricsTail(Path.Combine(_outDir, "metrics.jsonl"), _metrics.Writer))
        {
            _onProgress = ev =>
            {
                tail.Pump();
                if (ev.Stage != lastStage) { lastStage = ev.Stage; _log.LogInformation("stage {Stage}: {Algorithm}, {Iterations} iterations", ev.Stage, ev.Algorithm, ev.Iterations); }
                _log.LogDebug("{Algorithm} {Iteration}/{Iterations}", ev.Algorithm, ev.Iteration, ev.Iterations);
                int done = stages.Take(ev.Stage).Sum(s => s.Iterations) + ev.Iteration;
                progress?.Report(new TrainingProgress(ev.Stage, stages.Count, ev.Algorithm, ev.Iteration, ev.Iterations,
                    Math.Clamp((double)done / total, 0, 1), ev.Figures, clock.Elapsed));
            };
            try
            {
                if (Options.Hosts.JoinBeforeRun) StartWorkers(cancellationToken);
                result = pipeline.Run(Options.Resume, null, cancellationToken, Options.Overwrite);
                tail.Pump();
            }
            catch (OperationCanceledException) when (cancellationToken.IsCancellationRequested && _workers is null)
            {
                // Cancelled while a launch's workers were joining: nothing ran.
                result = new JsonObject { ["cancelled"] = true, ["position"] = "start-up", ["last_checkpoint"] = null };
            }
            catch (Exception e)
            {
                Fail(e);
                _log.LogError(e, "run {Name} failed", Experiment.Name);
                throw;
            }
        }
        Dispose();   // the models, and the workers stopped
        _running = false;
        _metrics.Writer.TryComplete();
        var ckpt = Checkpoint.Latest(_outDir);
        if (result["cancelled"] is not null)
        {
            _log.LogInformation("run {Name} cancelled after {Seconds:F1} s; last checkpoint: {Checkpoint}", Experiment.Name, clock.Elapsed.TotalSeconds, ckpt?.ToString() ?? "none");
            return new TrainingResult
            {
                Status = TrainingStatus.Cancelled, OutputDirectory = _outDir, Plan = plan, Elapsed = clock.Elapsed, LastCheckpoint = ckpt,
                StoppedAt = (string?)result["position"],
            };
        }
        _log.LogInformation("run {Name} completed in {Seconds:F1} s", Experiment.Name, clock.Elapsed.TotalSeconds);
        return new TrainingResult
        {
            Status = TrainingStatus.Completed, OutputDirectory = _outDir, Plan = plan, Elapsed = clock.Elapsed, LastCheckpoint = ckpt,
            SummaryJson = result.ToJsonString(),
            InitialTaskScore = (double?)result["initial_task_score"], FinalTaskScore = (double?)result["final_task_score"],
            InitialReward = (double?)result["initial_reward"], FinalReward = (double?)result["final_reward"],
        };
    }

    /// <summary>Frees what the job holds when it is not run to its end (a prepared pipeline, started workers);
    /// a run frees everything itself when it ends.</summary>
    public void Dispose()
    {
        Pipeline? pipeline;
        IReplicaHost? workers;
        lock (_gate)
        {
            if (_disposed) return;
            _disposed = true;
            pipeline = _pipeline;
            workers = _workersHandedOver ? null : _workers;
        }
        pipeline?.Dispose();   // with the workers it was handed
        workers?.Dispose();
    }

    /// <summary>Reads complete lines appended to metrics.jsonl since the last call and publishes them.</summary>
    private sealed class MetricsTail(string path, ChannelWriter<MetricRecord> writer) : IDisposable
    {
        private FileStream? _fs;
        private readonly System.Text.StringBuilder _partial = new();

        public void Pump()
        {
            _fs ??= File.Exists(path) ? new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.ReadWrite | FileShare.Delete) : null;
            if (_fs is null) return;
            var buf = new byte[64 * 1024];
            int n;
            while ((n = _fs.Read(buf)) > 0) _partial.Append(System.Text.Encoding.UTF8.GetString(buf, 0, n));
            string s = _partial.ToString();
            int end = s.LastIndexOf('\n');
            if (end < 0) return;
            foreach (var line in s[..end].Split('\n'))
                if (line.Length > 0 && Parse(line) is { } r) writer.TryWrite(r);
            _partial.Clear().Append(s[(end + 1)..]);
        }

        private static MetricRecord? Parse(string line)
        {
            if (JsonNode.Parse(line) is not JsonObject o) return null;
            var values = new Dictionary<string, double>(StringComparer.Ordinal);
            foreach (var (k, v) in o)
                if (k is not ("stage" or "algorithm" or "step" or "call" or "seconds"))
                    values[k] = v is null ? double.NaN : (double)v;
            return new MetricRecord((int)o["stage"]!, (string)o["algorithm"]!, (int)o["step"]!, (string)o["call"]!, (double?)o["seconds"], values);
        }

        public void Dispose() => _fs?.Dispose();
    }
}
