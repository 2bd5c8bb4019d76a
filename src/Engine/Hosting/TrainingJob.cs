// One run of an experiment for a host: the synchronous run loop (Pipeline) on a dedicated thread,
// progress through IProgress<T>, metric lines as an IAsyncEnumerable fed by a bounded channel as
// iterations finish (tailing metrics.jsonl, which the loop flushes per line), cancellation observed
// between iterations and calls (the mechanism `realn run` uses for SIGTERM / SIGINT). Cancellation
// does not throw: the result says Cancelled, the last checkpoint is complete and the training
// thread has ended when RunAsync returns.
using System.Diagnostics;
using System.Text.Json.Nodes;
using System.Threading.Channels;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;
using ReaLNative.Engine.Runs;
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

/// <summary>A single run of a <see cref="TrainingExperiment"/> on this machine. Call <see cref="RunAsync"/> once.</summary>
public sealed class TrainingJob
{
    private readonly Channel<MetricRecord> _metrics;
    private readonly ILogger _log;
    private int _started;
    private volatile bool _running;

    /// <summary>Creates a job; nothing runs until <see cref="RunAsync"/>.</summary>
    /// <exception cref="ArgumentException">The output folder is empty or the buffer capacity is below 1.</exception>
    public TrainingJob(TrainingExperiment experiment, TrainingOptions options)
    {
        ArgumentNullException.ThrowIfNull(experiment);
        ArgumentNullException.ThrowIfNull(options);
        if (string.IsNullOrWhiteSpace(options.OutputDirectory)) throw new ArgumentException("TrainingOptions.OutputDirectory is empty", nameof(options));
        if (options.MetricsBufferCapacity < 1) throw new ArgumentException($"TrainingOptions.MetricsBufferCapacity must be >= 1 (got {options.MetricsBufferCapacity})", nameof(options));
        ArgumentNullException.ThrowIfNull(options.Plan, "options.Plan");
        if (options.Resume && options.Overwrite) throw new ArgumentException("TrainingOptions.Resume and TrainingOptions.Overwrite exclude each other", nameof(options));
        Experiment = experiment;
        Options = options;
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

    /// <summary>Metric records as iterations finish; the sequence ends when the run ends (and faults if it failed).
    /// Enumerate it once, concurrently with <see cref="RunAsync"/>.</summary>
    public IAsyncEnumerable<MetricRecord> Metrics => _metrics.Reader.ReadAllAsync();

    /// <summary>Resolves the execution plan per <see cref="TrainingOptions.Plan"/> without running.</summary>
    public Plan ResolvePlan() => Options.Plan.Resolve(Experiment);

    /// <summary>Runs the experiment on a dedicated thread. Cancelling <paramref name="cancellationToken"/> stops it
    /// between iterations: the returned result has <see cref="TrainingStatus.Cancelled"/> (no exception), the last
    /// checkpoint is complete, and the training thread has ended.</summary>
    /// <exception cref="InvalidOperationException">The job was already run.</exception>
    /// <exception cref="PlannerException">The plan could not be found or loaded.</exception>
    /// <exception cref="RunDirectoryException">The output folder holds an earlier run (and neither Resume nor Overwrite is set),
    /// is a file, or is not writable; checked before any training, nothing in it changed.</exception>
    public async Task<TrainingResult> RunAsync(IProgress<TrainingProgress>? progress = null, CancellationToken cancellationToken = default)
    {
        if (Interlocked.Exchange(ref _started, 1) != 0) throw new InvalidOperationException("a TrainingJob runs once; create a new job for another run");
        string outDir = Path.GetFullPath(Options.OutputDirectory);
        var clock = Stopwatch.StartNew();
        Plan plan;
        try
        {
            plan = await Task.Run(() => Options.Plan.Resolve(Experiment), cancellationToken).ConfigureAwait(false);
        }
        catch (Exception e) { _metrics.Writer.TryComplete(e); throw; }
        // A plan over several devices runs its stage's calls on their layouts (in-process devices);
        // one that keeps everything on device 0 is the single-device run.
        bool distributed = plan.Calls.Any(c => c.Mesh.Size > 1 || c.Mesh.FirstDevice(plan.DevicesPerNode) != 0);
        if (distributed) _log.LogInformation("plan ({Choice}): {Devices} in-process devices", Options.Plan, plan.Nodes * plan.DevicesPerNode);
        if (cancellationToken.IsCancellationRequested)
        {
            _metrics.Writer.TryComplete();
            return new TrainingResult { Status = TrainingStatus.Cancelled, OutputDirectory = outDir, Plan = plan, Elapsed = clock.Elapsed, LastCheckpoint = Checkpoint.Latest(outDir) };
        }
        _log.LogInformation("run {Experiment} into {Out} (plan: {Choice}, resume: {Resume})", Experiment.ToString(), outDir, Options.Plan, Options.Resume);

        var tcs = new TaskCompletionSource<JsonObject>(TaskCreationOptions.RunContinuationsAsynchronously);
        var tail = new MetricsTail(Path.Combine(outDir, "metrics.jsonl"), _metrics.Writer);
        var stages = Experiment.Config.Stages;
        int total = Experiment.TotalIterations, lastStage = -1;
        var thread = new Thread(() =>
        {
            try
            {
                using var pipeline = new Pipeline(Experiment.Config, outDir, plan: distributed ? plan : null, progress: ev =>
                {
                    tail.Pump();
                    if (ev.Stage != lastStage) { lastStage = ev.Stage; _log.LogInformation("stage {Stage}: {Algorithm}, {Iterations} iterations", ev.Stage, ev.Algorithm, ev.Iterations); }
                    _log.LogDebug("{Algorithm} {Iteration}/{Iterations}", ev.Algorithm, ev.Iteration, ev.Iterations);
                    int done = stages.Take(ev.Stage).Sum(s => s.Iterations) + ev.Iteration;
                    progress?.Report(new TrainingProgress(ev.Stage, stages.Count, ev.Algorithm, ev.Iteration, ev.Iterations,
                        Math.Clamp((double)done / total, 0, 1), ev.Figures, clock.Elapsed));
                }, note: n =>
                {
                    if (n.Contains(" refused: ", StringComparison.Ordinal)) _log.LogWarning("{Note}", n);
                    else _log.LogInformation("{Note}", n);
                }) { OptionNames = ("TrainingOptions.Resume", "TrainingOptions.Overwrite"), PlanRecord = PlanJson.ToJson(plan) };
                var summary = pipeline.Run(Options.Resume, null, cancellationToken, Options.Overwrite);
                tail.Pump();
                tcs.SetResult(summary);
            }
            catch (Exception e) { tcs.SetException(e); }
        }) { Name = "realn-train", IsBackground = false };
        _running = true;
        thread.Start();
        JsonObject result;
        try { result = await tcs.Task.ConfigureAwait(false); }
        catch (Exception e)
        {
            thread.Join();
            _running = false;
            tail.Dispose();
            _metrics.Writer.TryComplete(e);
            _log.LogError(e, "run {Name} failed", Experiment.Name);
            throw;
        }
        thread.Join();
        _running = false;
        tail.Dispose();
        _metrics.Writer.TryComplete();
        var ckpt = Checkpoint.Latest(outDir);
        if (result["cancelled"] is not null)
        {
            _log.LogInformation("run {Name} cancelled after {Seconds:F1} s; last checkpoint: {Checkpoint}", Experiment.Name, clock.Elapsed.TotalSeconds, ckpt?.ToString() ?? "none");
            return new TrainingResult { Status = TrainingStatus.Cancelled, OutputDirectory = outDir, Plan = plan, Elapsed = clock.Elapsed, LastCheckpoint = ckpt };
        }
        _log.LogInformation("run {Name} completed in {Seconds:F1} s", Experiment.Name, clock.Elapsed.TotalSeconds);
        return new TrainingResult
        {
            Status = TrainingStatus.Completed, OutputDirectory = outDir, Plan = plan, Elapsed = clock.Elapsed, LastCheckpoint = ckpt,
            SummaryJson = result.ToJsonString(),
            InitialTaskScore = (double?)result["initial_task_score"], FinalTaskScore = (double?)result["final_task_score"],
            InitialReward = (double?)result["initial_reward"], FinalReward = (double?)result["final_reward"],
        };
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
