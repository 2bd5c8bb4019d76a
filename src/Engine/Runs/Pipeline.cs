// The run loop: executes the config's stages in order (sft -> rm -> ppo ...), each iteration as
// the stage's dataflow graph on a MeshExecutor (calls on the single device, or on the meshes of an
// execution plan: in-process devices or model worker processes), writing metrics.jsonl,
// checkpoints (HF safetensors + AdamW state) and stage artifacts (`sft`, `rm`) for later stages'
// `init`. Every random draw is seeded by (seed, stream, stage, iteration), so a run resumed from
// a checkpoint reproduces the uninterrupted run's parameters exactly. The loop knows no algorithm:
// a stage's calls are its IStageAlgorithm's (src/Engine/Stages), the plan's replicas PlanBinding's,
// checkpoints RunCheckpoints' (src/Engine/Checkpoints); docs/architecture.md has the map.
using System.Diagnostics;
using System.Text.Json;
using System.Text.Json.Nodes;
using ReaLNative.Engine.Algorithms;
using ReaLNative.Engine.Checkpoints;
using ReaLNative.Engine.Config;
using ReaLNative.Engine.Dataflow;
using ReaLNative.Engine.Generation;
using ReaLNative.Engine.Layout;
using ReaLNative.Engine.Model;
using ReaLNative.Engine.Optim;
using ReaLNative.Engine.Parallelism;
using ReaLNative.Engine.Stages;
using Plan = ReaLNative.Planner.Plan;
using ReaLNative.Engine.Tasks;
using ReaLNative.Engine.Tokenization;
using ReaLNative.Engine.Workers;
using ReaLNative.Interop;

namespace ReaLNative.Engine.Runs;

/// <summary>A held-out evaluation: the examples, the greedy answers, and each answer's score.</summary>
internal sealed record HeldOutResult(TaskExample[] Examples, Lazy<string[]> Decoded, bool[] EndedWithEos, double[] Scores, long RecordsSkipped)
{
    /// <summary>The greedy answers' text (decoded on first read; under worker processes a run's own
    /// evaluation reads only the scores, and its answers' ids are released with the evaluation).</summary>
    public string[] Completions => Decoded.Value;
    /// <summary>The held-out score (task_score): the mean of <see cref="Scores"/>.</summary>
    public double Score => Scores.Average();
    /// <summary>Answers that scored at least 1 (right, for 0/1 rewards).</summary>
    public int Right => Scores.Count(x => x >= 1);
}

/// <summary>One finished iteration (or evaluation) of a stage, for progress displays.</summary>
internal sealed record ProgressEvent(int Stage, string Algorithm, int Iteration, int Iterations, IReadOnlyDictionary<string, double> Figures);

internal sealed partial class Pipeline : IDisposable
{
    private readonly ExperimentConfig _cfg;
    private readonly string _out;
    private readonly Action<ProgressEvent>? _progress;
    private readonly SyntheticTask _task;
    private readonly RunTokenizer _tok;
    private readonly StageExamples _examples;   // each stage's training and held-out examples
    private IStageAlgorithm? _algorithm; // the current stage's algorithm: its call handlers, trained roles, batch shape
    private ISequenceReward? _reward;    // the current stage's rule-based reward (null: reward model / exact match)
    private readonly Dictionary<string, LlamaModel> _models = new();
    private readonly Dictionary<string, AdamW> _optims = new();
    private readonly Plan? _plan;
    private readonly PlanBinding _binding;   // where each call runs its model: its plan replica, or the single device
    private readonly NativeStream _stream = NativeStream.Cpu();   // the master's own compute (GAE)
    private readonly List<LlamaModel> _gathered = [];   // full copies gathered for Model(role) callers
    private StreamWriter? _metrics;
    private int _metricLines;
    private readonly RunCheckpoints _checkpoints;
    private readonly Action<string>? _note;
    private readonly List<string> _resumeNotes = [];
    private ResumePoint? _resume;   // the verified checkpoint a resumed run continues from

    /// <summary>A run of <paramref name="cfg"/> into <paramref name="outDir"/>. With <paramref name="plan"/>
    /// the stage whose calls the plan lists runs each call on its own mesh and (pp, dp, tp) layout
    /// (in-process devices, parameters reallocated between the layouts); other stages and the
    /// held-out evaluation run on the single device.
    /// <paramref name="note"/> receives resume's messages (refused checkpoints, the one resumed from) as they happen.
    /// <paramref name="hosts"/> makes the plan's devices (given their count) when the first stage
    /// under the plan starts: in-process devices by default, or model worker processes
    /// (<see cref="WorkerPool"/>); the plan is checked before that, so a refused plan starts nothing.</summary>
    public Pipeline(ExperimentConfig cfg, string outDir, Action<ProgressEvent>? progress = null, Plan? plan = null, Action<string>? note = null,
                    Func<int, IReplicaHost>? hosts = null)
    {
        _note = note;
        _plan = plan;
        _binding = new PlanBinding(plan, hosts ?? (n => new LocalCluster(n)), _models, _optims);
        _cfg = cfg;
        _out = Path.GetFullPath(outDir);
        _progress = progress;
        _task = SyntheticTask.Create(cfg.Task);
        _tok = RunTokenizers.Resolve(cfg, Arch);
        var tok = _tok;
        _checkpoints = new RunCheckpoints(cfg, Path.Combine(_out, "checkpoints"), Note)
        {
            ModelFolderFiles = tok.Hf is null ? null : tok.CopyFilesTo,
        };
        _examples = new StageExamples(cfg, _task, _tok, note);
        if (plan is not null)
        {
            PlanBinding.CheckLayouts(cfg, plan, Arch);
            PlanBinding.CheckAsyncGeneration(cfg, plan);
        }
    }

    /// <summary>The run's tokenizer (RunTokenizers.Resolve).</summary>
    public RunTokenizer Tokenizer => _tok;

    public string MetricsPath => Path.Combine(_out, "metrics.jsonl");
    private string CkptDir => _checkpoints.Root;

    /// <summary>What the last resume said: each refused checkpoint (and why) and the one it continued from.</summary>
    public IReadOnlyList<string> ResumeNotes => _resumeNotes;

    private void Note(string message)
    {
        _resumeNotes.Add(message);
        _note?.Invoke(message);
    }

    private LlamaConfig Arch(ModelSpec m) =>
        m.Preset is not null ? LlamaConfig.Preset(m.Preset) : LlamaConfig.FromHfJson(Path.Combine(_cfg.BaseDirectory, m.ConfigPath!));

    /// <summary>How the caller names resume and overwrite in messages (CLI flags by default).</summary>
    public (string Resume, string Overwrite) OptionNames { get; init; } = ("--resume", "--overwrite");

    /// <summary>Written as OUT/plan.json once the run directory is checked (the hosting API records its resolved plan).</summary>
    public string? PlanRecord { get; init; }

    private RunStart? _checked;
    private volatile string _position = "start-up";

    /// <summary>Where the run is, for interruption messages ("ppo iteration 7/40", "start-up").</summary>
    public string Position => _position;

    /// <summary>The newest complete checkpoint's name (the `latest` pointer), or null.</summary>
    public string? LastCheckpoint => _checkpoints.Store.Pointer();

    /// <summary>Checks the output directory for a run started as <paramref name="start"/> before
    /// anything runs (see <see cref="RunDirectory.Check"/>): a fresh start refuses a directory that
    /// holds anything; every start probes writability. Deletes nothing. <see cref="Run"/> calls it
    /// when the caller has not.</summary>
    public void CheckOutput(RunStart start)
    {
        RunDirectory.Check(_out, start, OptionNames.Resume, OptionNames.Overwrite);
        _checked = start;
    }

    /// <summary>Runs (or, with <paramref name="resume"/>, continues) the pipeline; returns summary.json's content,
    /// or <c>{"interrupted": true}</c> after <paramref name="stopAfterIterations"/> iterations, or
    /// <c>{"cancelled": true, ...where...}</c> when <paramref name="cancellationToken"/> fires. The token is observed
    /// between iterations and between an iteration's calls (never inside a checkpoint write), so the last
    /// checkpoint stays complete; a cancelled run leaves no temporary directory.
    /// Without <paramref name="resume"/> the output directory must be empty unless <paramref name="overwrite"/>,
    /// which deletes only what a run wrote there. Nothing in the directory is deleted or cut back
    /// before the resume point is verified and the stage set up.</summary>
    public JsonObject Run(bool resume, int? stopAfterIterations = null, CancellationToken cancellationToken = default, bool overwrite = false)
    {
        if (resume && overwrite) throw new ArgumentException($"{OptionNames.Resume} and {OptionNames.Overwrite} exclude each other");
        var start = resume ? RunStart.Resume : overwrite ? RunStart.Overwrite : RunStart.Fresh;
        if (_checked != start) CheckOutput(start);
        _checked = null;   // a second Run checks again
        if (cancellationToken.IsCancellationRequested) return Cancelled();
        try { return RunChecked(start, stopAfterIterations, cancellationToken); }
        catch (OperationCanceledException) when (cancellationToken.IsCancellationRequested) { return Cancelled(); }
    }

    private (long KeepBytes, long Step)? _pendingCut;   // resume's cut-back, applied by CommitStart
    private bool _startCommitted;

    // Wall time: the run's part before a resume, this process's part, each stage's (set-up,
    // iterations, evaluations, checkpoints: summary.json's per-stage seconds) and of which the
    // iterations' dataflow (every call of an iteration, no evaluation or checkpoint). Carried in
    // checkpoints so a resumed run accounts for both halves.
    private double _priorSeconds;
    private Stopwatch _clock = new();
    private double[] _stageSeconds = [], _iterationSeconds = [];
    /// <summary>The wall time of each stage's first iteration run by this process (NaN: none yet): it carries the
    /// one-time costs (code compiled at its first call in every process, a layout's first reallocation, buffers
    /// touched the first time) that the planner's per-iteration estimate leaves out.</summary>
    private double[] _firstIterationSeconds = [];

    /// <summary>Adds an iteration's wall time to its stage's (and keeps it when it is the stage's first here).</summary>
    private void AddIterationSeconds(int stage, double wall)
    {
        _iterationSeconds[stage] += wall;
        if (double.IsNaN(_firstIterationSeconds[stage])) _firstIterationSeconds[stage] = wall;
    }

    /// <summary>The run loop: stages in order, each set up (models, optimizers, plan replicas) and
    /// then its iterations, each the stage's dataflow graph followed by evaluation, the stage
    /// artifact and a checkpoint when due.</summary>
    private JsonObject RunChecked(RunStart start, int? stopAfterIterations, CancellationToken cancellationToken)
    {
        var (startStage, startIter) = StartingPoint(start);
        _clock = Stopwatch.StartNew();
        int budget = stopAfterIterations ?? int.MaxValue;
        for (int s = startStage; s < _cfg.Stages.Count; s++)
        {
            var stage = _cfg.Stages[s];
            int first = s == startStage ? startIter : 0;
            if (first >= stage.Iterations) continue;
            _position = $"{stage.Algorithm} set-up";
            var stageClock = Stopwatch.StartNew();
            SetUpStage(stage, resumeFrom: s == startStage && first > 0, first);
            CommitStart(start);
            // A synchronous stage consumes each batch on-policy within its iteration: the calls' per-action
            // outputs may stay with the worker processes that hold the batch (released at the iteration's end).
            var exec = new MeshExecutor(DataflowGraph.For(stage), _algorithm!.Handlers(Context(stage, keepOutputsOnWorkers: !_cfg.Asynchronous(stage))), _binding.DevicesOf);
            if (_algorithm.EvaluatesActor && first == 0) Evaluate(stage, 0);
            if (_cfg.Asynchronous(stage))
            {
                bool done = RunAsyncIterations(stage, first, ref budget, stageClock, cancellationToken);
                CheckNothingHeld(stage);
                if (!done) { CloseMetrics(); return new JsonObject { ["interrupted"] = true }; }
            }
            else for (int it = first; it < stage.Iterations; it++)
            {
                _position = $"{stage.Algorithm} iteration {it + 1}/{stage.Iterations}";
                if (budget-- <= 0) { CloseMetrics(); return new JsonObject { ["interrupted"] = true }; }
                cancellationToken.ThrowIfCancellationRequested();
                var figures = RunIteration(stage, exec, it, cancellationToken);
                ClearActivationCaches(it);
                EndIteration(stage, it, figures, stageClock);
            }
            CheckNothingHeld(stage);
            _stageSeconds[s] += stageClock.Elapsed.TotalSeconds;
        }
        CommitStart(start);
        CloseMetrics();
        return WriteSummary();
    }

    /// <summary>Every batch of the stage is released (consumed, or dropped when the stage stopped):
    /// no output its calls left with the worker processes may still be read, so none is pinned there.</summary>
    private void CheckNothingHeld(StageConfig stage)
    {
        if (_binding.Host?.HeldOutputs is > 0 and var n)
            throw new InvalidOperationException($"stage {stage.Index} ({stage.Algorithm}): {n} per-action output{(n == 1 ? " is" : "s are")} still held by the workers after its batches were released");
    }

    /// <summary>Where the run starts: the beginning, or (resume) the verified checkpoint's stage and
    /// iteration, with its wall times and metric lines; metrics.jsonl's cut-back waits for CommitStart.</summary>
    private (int Stage, int Iteration) StartingPoint(RunStart start)
    {
        _priorSeconds = 0;
        _stageSeconds = new double[_cfg.Stages.Count];
        _iterationSeconds = new double[_cfg.Stages.Count];
        _firstIterationSeconds = Enumerable.Repeat(double.NaN, _cfg.Stages.Count).ToArray();
        _resumeNotes.Clear();
        _resume = null;
        _pendingCut = null; _startCommitted = false;
        _position = "start-up";
        var chosen = start == RunStart.Resume ? _checkpoints.Select(OptionNames.Overwrite) : null;
        if (start == RunStart.Resume && chosen is null)
            Note($"no checkpoint in {_checkpoints.Store.Root}; starting from the beginning" + (File.Exists(MetricsPath) ? $" ({RunDirectory.Metrics} is replaced)" : ""));
        if (chosen is not { } c)
        {
            _metricLines = 0;
            return (0, 0);
        }
        _resume = c;
        _priorSeconds = c.Seconds;
        c.ReadStageSeconds(_stageSeconds, _iterationSeconds);
        var cut = RunDirectory.ResumeCut(MetricsPath, c.Stage, c.NextIteration, c.MetricLines, c.Name);
        foreach (var n in cut.Notes) Note(n);
        _metricLines = cut.KeepLines;
        // Applied once the stage is set up: a resume that fails before leaves everything as it was.
        _pendingCut = (cut.KeepBytes, c.Step);
        return (c.Stage, c.NextIteration);
    }

    /// <summary>One iteration: the stage's source keys, then every call of its dataflow graph, each
    /// call's figures written as a metric line; returns the figures for progress displays.</summary>
    private Dictionary<string, double> RunIteration(StageConfig stage, MeshExecutor exec, int it, CancellationToken cancellationToken)
    {
        var batch = new SampleBatch();
        batch.Set("iteration", new int[] { it });
        _algorithm!.SetSources(batch, _examples.Take(stage, it));
        var figures = new Dictionary<string, double>();
        long iterationStart = Stopwatch.GetTimestamp();
        bool firstCall = true;
        try { WriteCallRecords(stage, it, exec.RunIteration(batch, cancellationToken), figures, ref firstCall); }
        finally { batch.Release(); }   // the workers may drop the per-action outputs they kept for it
        AddIterationSeconds(stage.Index, Stopwatch.GetElapsedTime(iterationStart).TotalSeconds);
        return figures;
    }

    /// <summary>A metric line per call record of iteration <paramref name="it"/>; the figures also into <paramref name="figures"/>.</summary>
    private void WriteCallRecords(StageConfig stage, int it, IEnumerable<CallRecord> records, Dictionary<string, double> figures, ref bool firstCall)
    {
        foreach (var rec in records)
        {
            var line = new JsonObject { ["stage"] = stage.Index, ["algorithm"] = stage.Algorithm, ["step"] = it + 1, ["call"] = rec.Call, ["seconds"] = Math.Round(rec.Seconds, 5) };
            // A dataset stage's first line of each iteration counts the bad records skipped so far.
            if (firstCall && stage.Dataset is not null) line["records_skipped"] = _examples.RecordsSkipped;
            firstCall = false;
            foreach (var (k, v) in rec.Figures) { line[k] = double.IsFinite(v) ? Math.Round(v, 6) : null; figures[k] = v; }
            WriteMetric(line);
        }
    }

    /// <summary>After iteration <paramref name="it"/>: the held-out evaluation (every eval.every and
    /// last), the progress event, the stage artifact (last iteration) and a checkpoint (every
    /// checkpoint_every and last), the full models synced back from the plan replicas first.</summary>
    private void EndIteration(StageConfig stage, int it, Dictionary<string, double> figures, Stopwatch stageClock)
    {
        bool last = it + 1 == stage.Iterations;
        bool eval = _algorithm!.EvaluatesActor && ((it + 1) % _cfg.Eval.Every == 0 || last);
        bool ckpt = (it + 1) % _cfg.CheckpointEvery == 0 || last;
        if (eval) figures["task_score"] = Evaluate(stage, it + 1);
        _progress?.Invoke(new ProgressEvent(stage.Index, stage.Algorithm, it + 1, stage.Iterations, figures));
        // The stage artifact is written before the stage's last checkpoint: a run resumed
        // from that checkpoint skips the stage and needs the artifact already there.
        if (last && _algorithm.Produces is { } prod)
        {
            if (_binding.Holds(prod.Role)) _checkpoints.WriteArtifact(prod.Artifact, tmp => _binding.SaveState(prod.Role, tmp, CheckpointPart.Weights));
            else _checkpoints.WriteArtifact(prod.Artifact, _models[prod.Role]);
        }
        if (ckpt)
        {
            var upToNow = (double[])_stageSeconds.Clone();
            upToNow[stage.Index] += stageClock.Elapsed.TotalSeconds;
            SaveCheckpoint(stage, it + 1, _priorSeconds + _clock.Elapsed.TotalSeconds, upToNow, _iterationSeconds);
        }
    }

    private int _activationCacheClears;

    /// <summary>`activation_cache_clear_every: N`: after the calls of iterations N - 1, 2N - 1, ... of a stage
    /// (before its evaluation, its checkpoint and the next iteration, whose first reallocations refill
    /// released replicas) this process frees the activation blocks no call holds, and every worker process
    /// its own with its next command.</summary>
    private void ClearActivationCaches(int it)
    {
        if (_cfg.ActivationCacheClearEvery is not (> 0 and var every) || (it + 1) % every != 0) return;
        ArenaBlocks.Trim();
        _binding.Host?.ClearActivationCaches();
        _activationCacheClears++;
    }

    /// <summary>summary.json, from metrics.jsonl and the wall times, with the processes' peak memory.</summary>
    private JsonObject WriteSummary()
    {
        _position = "summary";
        var summary = RunSummary.FromMetrics(MetricsPath, _cfg, _priorSeconds + _clock.Elapsed.TotalSeconds, _stageSeconds, _iterationSeconds, _firstIterationSeconds);
        // The process that ran the run (VmHWM; under a resume, the resumed process only); per process below.
        if (ProcessMemory.PeakRssBytes() is { } rss) summary["peak_rss_bytes"] = rss;
        MemoryCheck.AddToSummary(summary, _cfg, _plan, _binding.Host);
        if (_cfg.ActivationCacheClearEvery > 0) summary["activation_cache_clears"] = _activationCacheClears;
        if (_binding.Host is not null)
        {
            summary["realloc_bytes"] = _binding.ReallocatedBytes;
            // Inference replicas of trained models that gave their weights back after a call (PlanBinding.Bind).
            summary["weight_releases"] = _binding.WeightReleases;
        }
        if (_binding.Host?.DataBytes is var (fromMaster, betweenWorkers, toMaster))
            summary["data_bytes"] = new JsonObject { ["from_master"] = fromMaster, ["between_workers"] = betweenWorkers, ["to_master"] = toMaster };
        File.WriteAllText(Path.Combine(_out, "summary.json"), summary.ToJsonString(new JsonSerializerOptions { WriteIndented = true }));
        return summary;
    }

    /// <summary>The point of no return of a start, reached once the resume point is verified and the
    /// first stage set up: resume cuts metrics.jsonl back to the checkpoint and drops refused newer
    /// checkpoints (their iterations are redone); overwrite deletes the earlier run's files; a fresh
    /// start creates metrics.jsonl. Then metrics.jsonl is opened for appending.</summary>
    private void CommitStart(RunStart start)
    {
        if (_startCommitted) return;
        _startCommitted = true;
        if (_pendingCut is { } cut)
        {
            RunDirectory.CutMetrics(MetricsPath, cut.KeepBytes);
            _checkpoints.Store.DropNewerThan(cut.Step);
        }
        else
        {
            if (start == RunStart.Overwrite) RunDirectory.DeleteRunFiles(_out);
            else if (start == RunStart.Resume)
            {
                // Resumed with no checkpoint at all: whatever an earlier start left is redone.
                RunDirectory.DeleteRunFiles(_out);
            }
            Directory.CreateDirectory(CkptDir);
            File.WriteAllText(MetricsPath, "");
        }
        RunDirectory.RemoveTemporaries(_out);
        if (PlanRecord is not null) File.WriteAllText(Path.Combine(_out, "plan.json"), PlanRecord);
        _metrics = new StreamWriter(new FileStream(MetricsPath, FileMode.Append, FileAccess.Write, FileShare.Read)) { AutoFlush = true };
    }

    private void CloseMetrics()
    {
        _metrics?.Dispose();
        _metrics = null;
    }

    /// <summary>The result of a cancelled run: where it stopped and its last checkpoint; temporaries removed.</summary>
    private JsonObject Cancelled()
    {
        CloseMetrics();
        RunDirectory.RemoveTemporaries(_out);
        return new JsonObject { ["cancelled"] = true, ["position"] = _position, ["last_checkpoint"] = LastCheckpoint };
    }

    /// <summary>Full models the master holds now (none while a stage bound to the plan runs; gathered copies not counted).</summary>
    internal int FullModelsHeld => _models.Count + _optims.Count;

    /// <summary>Final parameters of a role (for tests and for saving). A role of a stage bound to the
    /// plan lives on the plan's devices only: its full model is gathered from the shards on request
    /// (owned by the pipeline), which the run itself never does.</summary>
    public LlamaModel Model(string role)
    {
        if (_models.TryGetValue(role, out var m)) return m;
        var full = _binding.Gather(role);
        _gathered.Add(full);
        return full;
    }

    private void WriteMetric(JsonObject line)
    {
        if (_metrics is null) throw new InvalidOperationException("metric line before the run's start was committed");
        _metrics.WriteLine(line.ToJsonString());
        _metricLines++;
    }

    // ---------------------------------------------------------------- models, init, checkpoints

    private void SetUpStage(StageConfig stage, bool resumeFrom, int firstIteration = 0)
    {
        _reward?.Dispose(); _reward = null;
        _reward = SequenceRewards.Create(stage.Reward, _cfg.BaseDirectory);
        _rewardStage = stage.Index;
        _algorithm = StageAlgorithms.For(stage);
        _examples.Open(stage, _algorithm, _reward, firstIteration);
        _binding.Release();
        foreach (var o in _optims.Values) o.Dispose();
        foreach (var m in _models.Values) m.Dispose();
        _optims.Clear(); _models.Clear();
        foreach (var g in _gathered) g.Dispose();
        _gathered.Clear();
        if (_binding.Covers(stage)) { SetUpBound(stage, resumeFrom); return; }
        foreach (var (role, spec) in stage.Models)
        {
            var model = new LlamaModel(Arch(spec), AlgorithmNames.ScalarHead(role));
            _models[role] = model;
            model.InitRandom(InitSeed(stage, role));
            if (InitSource(spec) is { } src)
            {
                using var loaded = Safetensors.Load(src, allowNonFinite: spec.AllowNonFiniteWeights);
                if (loaded.ScalarHead == model.ScalarHead) model.CopyParametersFrom(loaded);
                else ModelOps.CopyShared(loaded, model);
            }
            ApplyPrecision(stage, role, spec);   // a frozen bf16 model frees its fp32 buffers before the next one loads
        }
        foreach (var role in _algorithm.TrainedRoles)
            _optims[role] = NewOptimizer(stage, _models[role]);
        if (resumeFrom) RunCheckpoints.Restore(_resume!, stage, _models, _optims);
    }

    private int InitSeed(StageConfig stage, string role) => (int)(StepRandom.Seed64(_cfg.Seed, "init-" + role, stage.Index, 0) & 0x7fffffff);

    /// <summary>The checkpoint a model's `init` names (a stage artifact, verified against its
    /// manifest, or an HF folder), or null for `random`.</summary>
    private string? InitSource(ModelSpec spec)
    {
        string? src = spec.Init switch
        {
            "random" => null,
            "sft" or "rm" => _checkpoints.ArtifactPath(spec.Init),
            _ => Path.Combine(_cfg.BaseDirectory, spec.Init),
        };
        // A stage artifact carries a manifest; a torn or corrupt one is refused, not trained from.
        if (src is not null && spec.Init is "sft" or "rm" && CheckpointStore.VerifyArtifact(src) is { } why)
            throw new InvalidDataException($"stage artifact {src} refused: {why}; rerun the stage that writes it (start over with {OptionNames.Overwrite})");
        return src;
    }

    /// <summary>A stage the plan lists: its models live on the plan's devices only. Each role's source
    /// replica initialises its own shards exactly as the single device initialises the whole model
    /// (seeded streams, then its slices of the init checkpoint: only the shared tensors when the
    /// checkpoint's head differs, as ModelOps.CopyShared), a resume reads the trained roles' slices of
    /// the checkpoint, and the roles' other replicas are reallocated from the source. The master
    /// holds no model.</summary>
    private void SetUpBound(StageConfig stage, bool resumeFrom)
    {
        foreach (var (role, spec) in stage.Models)
            if (spec.Precision == Precisions.Bf16)
            {
                try { LlamaModel.ProbeBf16(_stream); }
                catch (NotSupportedException e) { throw new ConfigException(PrecisionField(stage, role), $"'bf16' is not available: {e.Message}; allowed values on this backend: fp32"); }
            }
        var trained = _algorithm!.TrainedRoles.ToHashSet();
        _binding.Bind(stage, () => Optimizer(stage),
            role => (Arch(stage.Models[role]), AlgorithmNames.ScalarHead(role), stage.Models[role].Precision == Precisions.Bf16 ? ModelPrecision.Bf16 : ModelPrecision.Fp32),
            (role, replica) =>
            {
                var spec = stage.Models[role];
                string? src = InitSource(spec);
                bool sharedOnly = src is not null && Safetensors.HasScalarHead(src) != replica.ScalarHead;
                replica.Initialise(InitSeed(stage, role), src, sharedOnly, spec.AllowNonFiniteWeights);
                if (resumeFrom && trained.Contains(role))
                    RunCheckpoints.RestoreShards(_resume!, stage, role, new ReplicaCheckpoint(role, replica));
            });
    }

    /// <summary>`precision: bf16` models: trained ones keep their fp32 master (the optimizer's) and
    /// forward/backward through a bf16 copy; frozen ones hold bf16 only (so do the plan replicas
    /// that do not train: PlanBinding). Refused, naming the field, where the backend lacks bf16.</summary>
    private void ApplyPrecision(StageConfig stage, string role, ModelSpec spec)
    {
        if (spec.Precision != Precisions.Bf16) return;
        try
        {
            if (_algorithm!.TrainedRoles.Contains(role)) _models[role].SetPrecision(ModelPrecision.Bf16);
            else _models[role].FreezeToBf16();
        }
        catch (NotSupportedException e)
        {
            throw new ConfigException(PrecisionField(stage, role), $"'bf16' is not available: {e.Message}; allowed values on this backend: fp32");
        }
    }

    private string PrecisionField(StageConfig stage, string role) =>
        _cfg.ExplicitStages ? $"{stage.Path}.models.{role}.precision" : $"models.{role}.precision";

    private AdamW NewOptimizer(StageConfig stage, LlamaModel model) => Optimizer(stage).Create(model);

    private static OptimizerSpec Optimizer(StageConfig stage)
    {
        var o = stage.Optim;
        int stepsPerIter = StageAlgorithms.For(stage).OptimizerStepsPerIteration;
        return new OptimizerSpec(new LrSchedule(o.Lr, o.WarmupSteps, o.Decay, o.MinLrRatio, stage.Iterations * stepsPerIter),
            (float)o.Beta1, (float)o.Beta2, (float)o.Eps, (float)o.WeightDecay, (float)o.ClipGradNorm);
    }


    private void SaveCheckpoint(StageConfig stage, int nextIteration, double seconds, double[] stageSeconds, double[] iterationSeconds)
    {
        // The metric lines the checkpoint counts reach the disk first: a resume finds them.
        if (_metrics?.BaseStream is FileStream mf) mf.Flush(flushToDisk: true);
        // An async stage's batches generated ahead with older weights go with the checkpoint (AsyncRollouts).
        var ahead = _rollouts?.Ahead(nextIteration);
        // A bound stage's trained roles are written by their train replicas' shards; the master commits.
        var roles = _optims.Select(kv => (ICheckpointRole)new FullModelState(kv.Key, _models[kv.Key], kv.Value))
            .Concat(_algorithm!.TrainedRoles.Where(_binding.Holds).Select(r => (ICheckpointRole)new ReplicaCheckpoint(r, _binding.TrainReplica(r)))).ToList();
        _checkpoints.Save(new RunProgress(stage.Index, stage.Algorithm, nextIteration, _metricLines, seconds, stageSeconds, iterationSeconds),
                          roles, ahead is { Count: > 0 } ? dir => RolloutFile.Write(Path.Combine(dir, RolloutFile.Name), ahead, _rolloutKeys) : null);
    }



    /// <summary>What the stage's call handlers use of this run (models: the plan replica of a call, else
    /// the single device; or where <paramref name="calls"/> says).</summary>
    private StageContext Context(StageConfig stage, Func<string, string, IModelCalls>? calls = null, bool keepOutputsOnWorkers = false) =>
        new(stage, _cfg.Seed, _tok.WithChat(stage.Dataset?.Chat == true), _reward, calls ?? _binding.Calls, _stream) { KeepOutputsOnWorkers = keepOutputsOnWorkers };

    /// <summary>Greedy answers of <paramref name="actor"/> to stage <paramref name="stage"/>'s held-out
    /// examples and each one's score (the stage's rule-based reward, else exact match): what
    /// metrics.jsonl's eval lines and `realn eval` report.</summary>
    public HeldOutResult EvaluateHeldOut(LlamaModel actor, StageConfig stage) => EvaluateHeldOut(new SingleModelCalls(actor, () => null), stage);

    private HeldOutResult EvaluateHeldOut(IModelCalls actor, StageConfig stage)
    {
        if (_rewardStage != stage.Index)
        {
            _reward?.Dispose();
            _reward = SequenceRewards.Create(stage.Reward, _cfg.BaseDirectory);
            _rewardStage = stage.Index;
        }
        var heldOut = _examples.HeldOut(stage, _reward);
        var context = Context(stage);
        // Only the answers are scored, by the worker processes that hold them (their log-probs and
        // token ids, never read, are released at once).
        var r = context.Generate(actor, heldOut, 0, "eval", greedy: true, keepOnWorkers: true, WorkerScoring.Checks);
        r.Gen.KeptLogProbs?.Release();
        var scores = context.SampleChecks(r);
        r.Gen.KeptTokens?.Release();
        return new HeldOutResult(heldOut, r.Decoded, r.Gen.EndedWithEos, scores, _examples.HeldOutSkipped(stage));
    }

    private int _rewardStage = -1;

    /// <summary>Greedy held-out task score of the current actor; writes an "eval" metric line.</summary>
    private double Evaluate(StageConfig stage, int step)
    {
        var clock = Stopwatch.StartNew();
        // A bound stage evaluates on the actor's replica (the master holds no model).
        double score = EvaluateHeldOut(_binding.Holds("actor") ? _binding.EvaluationCalls() : new SingleModelCalls(_models["actor"], () => null), stage).Score;
        var line = new JsonObject { ["stage"] = stage.Index, ["algorithm"] = stage.Algorithm, ["step"] = step, ["call"] = "eval", ["task_score"] = score,
                                    ["seconds"] = Math.Round(clock.Elapsed.TotalSeconds, 5) };
        if (stage.Dataset is not null) line["held_out_records_skipped"] = _examples.HeldOutSkipped(stage);
        WriteMetric(line);
        if (step == 0) _progress?.Invoke(new ProgressEvent(stage.Index, stage.Algorithm, 0, stage.Iterations, new Dictionary<string, double> { ["task_score"] = score }));
        return score;
    }

    public void Dispose()
    {
        _metrics?.Dispose();
        _examples.Dispose();
        _reward?.Dispose();
        foreach (var g in _gathered) g.Dispose();
        _binding.Dispose();
        _stream.Dispose();
        foreach (var o in _optims.Values) o.Dispose();
        foreach (var m in _models.Values) m.Dispose();
    }
}
