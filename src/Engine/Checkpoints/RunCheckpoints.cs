// A run's checkpoints (OUT/checkpoints, kept by CheckpointStore): what one holds (each trained
// role's safetensors, its fp32 master under bf16, its AdamW moments, and state.json: where the run
// stands), choosing the one a resume continues from, and restoring a stage's models and optimizers
// from it. Stage artifacts (`sft`, `rm`) for later stages' `init` live next to the checkpoints.
using System.Text.Json;
using System.Text.Json.Nodes;
using ReaLNative.Engine.Config;
using ReaLNative.Engine.Model;
using ReaLNative.Engine.Optim;

namespace ReaLNative.Engine.Checkpoints;

/// <summary>Where a run stands at a checkpoint: state.json's fields other than the optimizer steps.</summary>
/// <param name="StageSeconds">Wall time of each stage so far (summary.json's per-stage seconds).</param>
/// <param name="IterationSeconds">Of which each stage's iterations' dataflow.</param>
internal sealed record RunProgress(int Stage, string Algorithm, int NextIteration, int MetricLines, double Seconds,
                                   double[] StageSeconds, double[] IterationSeconds);

/// <summary>The verified checkpoint a resumed run continues from, and its state.json.</summary>
internal sealed record ResumePoint(string Dir, JsonNode State)
{
    public string Name => Path.GetFileName(Dir);
    public int Stage => (int)State["stage"]!;
    public int NextIteration => (int)State["next_iteration"]!;
    public int MetricLines => (int)State["metric_lines"]!;
    public double Seconds => (double)State["seconds"]!;
    /// <summary>The checkpoint name's number (the global iteration).</summary>
    public long Step => CheckpointStore.StepOf(Name)!.Value;

    /// <summary>Copies state.json's per-stage seconds into <paramref name="stageSeconds"/> and
    /// <paramref name="iterationSeconds"/> (each left as it is when absent or of another length).</summary>
    public void ReadStageSeconds(double[] stageSeconds, double[] iterationSeconds)
    {
        if (State["stage_seconds"] is JsonArray prior && prior.Count == stageSeconds.Length)
            for (int i = 0; i < prior.Count; i++) stageSeconds[i] = prior[i] is JsonValue v && v.TryGetValue(out double d) ? d : 0;
        if (State["stage_iterations_seconds"] is JsonArray priorIt && priorIt.Count == iterationSeconds.Length)
            for (int i = 0; i < priorIt.Count; i++) iterationSeconds[i] = priorIt[i] is JsonValue v && v.TryGetValue(out double d) ? d : 0;
    }
}

/// <param name="cfg">The experiment (its stages decide which checkpoints fit).</param>
/// <param name="root">OUT/checkpoints.</param>
/// <param name="note">Receives resume's messages (refused checkpoints, the one resumed from).</param>
internal sealed class RunCheckpoints(ExperimentConfig cfg, string root, Action<string> note)
{
    /// <summary>Writes the run's further files into each model folder a checkpoint or stage artifact
    /// holds (the tokenizer files, so the folder is a complete Hugging Face model for `realn
    /// generate / eval / export`); nothing when null.</summary>
    public Action<string>? ModelFolderFiles { get; init; }

    public CheckpointStore Store { get; } = new(root, cfg.CheckpointKeep);
    public string Root => root;

    /// <summary>Where stage artifact <paramref name="name"/> (`sft`, `rm`) lives.</summary>
    public string ArtifactPath(string name) => Path.Combine(root, name);

    /// <summary>The checkpoint name's number: iterations of every earlier stage plus <paramref name="nextIteration"/>.</summary>
    public long GlobalIteration(int stage, int nextIteration) =>
        cfg.Stages.Take(stage).Sum(s => (long)s.Iterations) + nextIteration;

    /// <summary>The newest checkpoint that verifies against its manifest (pointer first, then newest
    /// name first), noting each refused one; null when there is none at all; throws naming every
    /// refusal when none verifies (the message says to start over with <paramref name="overwriteOption"/>).</summary>
    public ResumePoint? Select(string overwriteOption)
    {
        var candidates = Store.Candidates();
        if (candidates.Count == 0) return null;
        var refused = new List<string>();
        for (int i = 0; i < candidates.Count; i++)
        {
            string name = candidates[i];
            string? why = Store.Verify(name);
            JsonNode? st = null;
            if (why is null)
            {
                try
                {
                    st = JsonNode.Parse(File.ReadAllText(Path.Combine(Store.PathOf(name), "state.json")))!;
                    int stage = (int)st["stage"]!, next = (int)st["next_iteration"]!;
                    _ = (int)st["metric_lines"]!; _ = (double)st["seconds"]!;
                    if (stage < 0 || stage >= cfg.Stages.Count || next < 0 || next > cfg.Stages[stage].Iterations || (string?)st["algorithm"] != cfg.Stages[stage].Algorithm)
                        why = $"state.json (stage {stage}, iteration {next}) does not fit this experiment's stages";
                }
                catch (Exception e) when (e is JsonException or NullReferenceException or InvalidOperationException or FormatException)
                { why = $"state.json malformed ({e.Message})"; }
            }
            if (why is null)
            {
                int stage = (int)st!["stage"]!, next = (int)st["next_iteration"]!;
                note($"resuming from checkpoint {name} (stage {stage} {cfg.Stages[stage].Algorithm}, iteration {next})");
                return new ResumePoint(Store.PathOf(name), st);
            }
            refused.Add($"{name}: {why}");
            note($"checkpoint {name} refused: {why}; " + (i + 1 < candidates.Count ? $"falling back to {candidates[i + 1]}" : "no older checkpoint left"));
        }
        throw new InvalidDataException($"cannot resume: no checkpoint in {Store.Root} verifies ({string.Join("; ", refused)}); " +
                                       $"start over with {overwriteOption}");
    }

    /// <summary>Writes checkpoint step-(global iteration): each trained role's parameters and AdamW
    /// state, and state.json. CheckpointStore fsyncs every file, writes manifest.json last, renames
    /// step-N.tmp -> step-N and moves the `latest` pointer; a crash at any point leaves the previous
    /// checkpoint usable.</summary>
    /// <param name="extraFiles">Writes further files of the run's state into the checkpoint directory (covered by the manifest).</param>
    public void Save(RunProgress progress, IReadOnlyDictionary<string, LlamaModel> models, IReadOnlyDictionary<string, AdamW> optimizers,
                     Action<string>? extraFiles = null) =>
        Save(progress, optimizers.Select(kv => (ICheckpointRole)new FullModelState(kv.Key, models[kv.Key], kv.Value)).ToList(), extraFiles);

    /// <summary>Writes checkpoint step-(global iteration) from each trained role's state, wherever it
    /// lives (a full model, or a plan replica whose shards write their parts themselves: the master
    /// then only commits). Phase 1: every part is written and fsynced into step-N.tmp; phase 2
    /// (CheckpointStore): manifest, rename, pointer.</summary>
    public void Save(RunProgress progress, IReadOnlyList<ICheckpointRole> roles, Action<string>? extraFiles = null)
    {
        Store.Write(GlobalIteration(progress.Stage, progress.NextIteration), tmp =>
        {
            extraFiles?.Invoke(tmp);
            var steps = new JsonObject();
            foreach (var r in roles)
            {
                // bf16: the safetensors hold the bf16 weights (HF style); the fp32 master the
                // optimizer updates is resumable state next to the moments.
                foreach (var part in Parts(r.Bf16))
                    r.Write(Path.Combine(tmp, CheckpointParts.Name(r.Role, part)), part);
                ModelFolderFiles?.Invoke(Path.Combine(tmp, CheckpointParts.Name(r.Role, CheckpointPart.Weights)));
                steps[r.Role] = r.OptimizerStep;
            }
            var state = new JsonObject
            {
                ["stage"] = progress.Stage, ["algorithm"] = progress.Algorithm, ["next_iteration"] = progress.NextIteration,
                ["metric_lines"] = progress.MetricLines, ["seconds"] = progress.Seconds, ["optimizer_steps"] = steps,
                ["stage_seconds"] = new JsonArray(progress.StageSeconds.Select(x => (JsonNode?)JsonValue.Create(Math.Round(x, 3))).ToArray()),
                ["stage_iterations_seconds"] = new JsonArray(progress.IterationSeconds.Select(x => (JsonNode?)JsonValue.Create(Math.Round(x, 5))).ToArray()),
            };
            File.WriteAllText(Path.Combine(tmp, "state.json"), state.ToJsonString());
        });
    }

    /// <summary>The parts a trained role's checkpoint holds.</summary>
    private static CheckpointPart[] Parts(bool bf16) => bf16
        ? [CheckpointPart.Weights, CheckpointPart.Master, CheckpointPart.FirstMoment, CheckpointPart.SecondMoment]
        : [CheckpointPart.Weights, CheckpointPart.FirstMoment, CheckpointPart.SecondMoment];

    /// <summary>Restores trained <paramref name="role"/> of a bound stage from checkpoint <paramref name="from"/>
    /// into its train replica, every shard reading its own slices by byte range (whatever plan, or
    /// the single device, wrote it): the fp32 weights (a bf16 model: its fp32 master), both AdamW
    /// moments and the optimizer step.</summary>
    public static void RestoreShards(ResumePoint from, StageConfig stage, string role, ICheckpointTarget target)
    {
        string dir = from.Dir;
        if (target.Bf16)
        {
            string master = Path.Combine(dir, CheckpointParts.Name(role, CheckpointPart.Master));
            if (!File.Exists(master))
                throw new InvalidDataException($"checkpoint {dir}: {role} is bf16 but {role}.master (its fp32 master weights) is missing; resume it with the precision it was written with");
            target.Read(master, CheckpointPart.Master, false);
        }
        else target.Read(Path.Combine(dir, role), CheckpointPart.Weights, stage.Models[role].AllowNonFiniteWeights);
        target.Read(Path.Combine(dir, CheckpointParts.Name(role, CheckpointPart.FirstMoment)), CheckpointPart.FirstMoment, true);
        target.Read(Path.Combine(dir, CheckpointParts.Name(role, CheckpointPart.SecondMoment)), CheckpointPart.SecondMoment, true);
        target.OptimizerStep = (long)from.State["optimizer_steps"]![role]!;
    }

    /// <summary>Loads each trained role's parameters (and fp32 master under bf16) and its optimizer
    /// state from checkpoint <paramref name="from"/> into the freshly set-up stage.</summary>
    public static void Restore(ResumePoint from, StageConfig stage, IReadOnlyDictionary<string, LlamaModel> models, IReadOnlyDictionary<string, AdamW> optimizers)
    {
        string dir = from.Dir;
        var st = from.State;
        foreach (var (role, opt) in optimizers)
        {
            Safetensors.LoadInto(models[role], Path.Combine(dir, role), stage.Models[role].AllowNonFiniteWeights);
            string master = Path.Combine(dir, role + ".master");
            if (models[role].Precision == ModelPrecision.Bf16)
            {
                if (!File.Exists(master))
                    throw new InvalidDataException($"checkpoint {dir}: {role} is bf16 but {role}.master (its fp32 master weights) is missing; resume it with the precision it was written with");
                ReadFloats(master, models[role].ParameterCount).CopyTo(models[role].Parameters);
            }
            long step = (long)st["optimizer_steps"]![role]!;
            opt.Restore(step, ReadFloats(Path.Combine(dir, role + ".adam_m"), models[role].ParameterCount),
                        ReadFloats(Path.Combine(dir, role + ".adam_v"), models[role].ParameterCount));
        }
    }

    /// <summary>Writes a stage artifact (a model's safetensors under its manifest) for later stages' `init`.</summary>
    public void WriteArtifact(string name, LlamaModel model) => WriteArtifact(name, tmp => Safetensors.Save(model, tmp));

    /// <summary>Writes a stage artifact whose HF folder <paramref name="write"/> fills (a plan replica's shards write it).</summary>
    public void WriteArtifact(string name, Action<string> write) => CheckpointStore.WriteArtifact(ArtifactPath(name), tmp =>
    {
        write(tmp);
        ModelFolderFiles?.Invoke(tmp);
    });

    internal static void WriteFloats(string path, ReadOnlySpan<float> data)
    {
        using var f = File.Create(path);
        f.Write(System.Runtime.InteropServices.MemoryMarshal.AsBytes(data));
    }

    private static float[] ReadFloats(string path, long count)
    {
        var bytes = File.ReadAllBytes(path);
        if (bytes.Length != count * 4) throw new InvalidDataException($"{path}: {bytes.Length} bytes, expected {count * 4}");
        var r = new float[count];
        Buffer.BlockCopy(bytes, 0, r, 0, bytes.Length);
        return r;
    }
}

/// <summary>A trained role's checkpoint state as a checkpoint writes it, wherever it lives.</summary>
internal interface ICheckpointRole
{
    string Role { get; }
    /// <summary>Whether the role is bf16 (its checkpoint has the fp32 master besides the bf16 weights).</summary>
    bool Bf16 { get; }
    long OptimizerStep { get; }
    /// <summary>Writes <paramref name="part"/> to <paramref name="path"/> (the weights' HF folder, or a flat file), complete and fsynced or at least flushed for the store's fsync.</summary>
    void Write(string path, CheckpointPart part);
}

/// <summary>Where a resume reads a trained role's checkpoint state into (a plan's train replica).</summary>
internal interface ICheckpointTarget
{
    bool Bf16 { get; }
    long OptimizerStep { set; }
    void Read(string path, CheckpointPart part, bool allowNonFinite);
}

/// <summary>A trained role's state in a full single-device model and its optimizer.</summary>
internal sealed class FullModelState(string role, LlamaModel model, AdamW optimizer) : ICheckpointRole
{
    public string Role => role;
    public bool Bf16 => model.Precision == ModelPrecision.Bf16;
    public long OptimizerStep => optimizer.Step;

    public void Write(string path, CheckpointPart part)
    {
        switch (part)
        {
            case CheckpointPart.Weights: Safetensors.Save(model, path); break;
            case CheckpointPart.Master: RunCheckpoints.WriteFloats(path, model.Parameters); break;
            case CheckpointPart.FirstMoment: RunCheckpoints.WriteFloats(path, optimizer.FirstMoment); break;
            case CheckpointPart.SecondMoment: RunCheckpoints.WriteFloats(path, optimizer.SecondMoment); break;
        }
    }
}
