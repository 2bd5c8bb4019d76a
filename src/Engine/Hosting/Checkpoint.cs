// Checkpoints for hosts: load and save a model in Hugging Face layout (config.json +
// model.safetensors), and find a run's last complete checkpoint. The run loop writes each
// checkpoint into checkpoints/step-N.tmp (N: iterations of all stages so far), fsyncs every file,
// writes manifest.json (sizes + SHA-256) last, renames it to checkpoints/step-N and then replaces
// the checkpoints/latest pointer file (tmp + fsync + rename); see Engine/Checkpoints/CheckpointStore.
using System.Text.Json.Nodes;
using ReaLNative.Engine.Checkpoints;
using ReaLNative.Engine.Model;

namespace ReaLNative;

/// <summary>A model's parameters in memory (a LLaMA-family policy with a language-model head, or a
/// critic / reward model with a scalar value head). Dispose it to free its native buffers.</summary>
public sealed class TrainedModel : IDisposable
{
    internal LlamaModel Model { get; }
    private bool _disposed;

    internal TrainedModel(LlamaModel model) => Model = model;

    /// <summary>True for critic / reward models (a scalar value head), false for policies (a language-model head).</summary>
    public bool HasValueHead => Live.ScalarHead;
    /// <summary>Number of parameters.</summary>
    public long ParameterCount => Live.ParameterCount;
    /// <summary>Transformer blocks.</summary>
    public int Layers => Live.Config.Layers;
    /// <summary>Hidden size.</summary>
    public int HiddenSize => Live.Config.Hidden;
    /// <summary>Vocabulary size.</summary>
    public int VocabularySize => Live.Config.Vocab;
    /// <summary>Longest sequence (prompt + generated tokens) the model accepts.</summary>
    public int MaxPositions => Live.Config.MaxPositions;

    private LlamaModel Live => _disposed ? throw new ObjectDisposedException(nameof(TrainedModel)) : Model;

    /// <summary>Frees the model's native buffers.</summary>
    public void Dispose()
    {
        if (_disposed) return;
        _disposed = true;
        Model.Dispose();
    }
}

/// <summary>Loading and saving models, and finding a run's last checkpoint.</summary>
public static class Checkpoint
{
    /// <summary>Loads a model from a Hugging Face layout folder (config.json + model.safetensors or a sharded index).
    /// A <c>score.weight</c> tensor makes it a value-head model.</summary>
    /// <param name="directory">The model folder, for example <see cref="CheckpointInfo.ModelDirectory"/>.</param>
    /// <exception cref="DirectoryNotFoundException">The folder does not exist.</exception>
    /// <exception cref="FileNotFoundException">config.json or the safetensors file is missing.</exception>
    /// <exception cref="InvalidDataException">A tensor is missing, has the wrong shape or dtype, or the file is truncated.</exception>
    public static TrainedModel Load(string directory)
    {
        ArgumentException.ThrowIfNullOrWhiteSpace(directory);
        return new TrainedModel(Safetensors.Load(directory));
    }

    /// <summary>Saves a model in Hugging Face layout; each file is written to a temporary name and renamed, so an
    /// interrupted save never leaves a half-written file under the real name.</summary>
    /// <param name="model">The model.</param>
    /// <param name="directory">Target folder (created when missing).</param>
    public static void Save(TrainedModel model, string directory)
    {
        ArgumentNullException.ThrowIfNull(model);
        ArgumentException.ThrowIfNullOrWhiteSpace(directory);
        _ = model.ParameterCount; // throws when disposed
        Safetensors.Save(model.Model, directory);
    }

    /// <summary>The last complete checkpoint of a run's output folder (the one the <c>latest</c> pointer names,
    /// else the newest <c>step-N</c> with a manifest), or null when it has none. It is not checksummed
    /// here: <see cref="CheckpointInfo.Verify"/> does that.</summary>
    /// <param name="outputDirectory">The run's output folder (<see cref="TrainingOptions.OutputDirectory"/>).</param>
    /// <exception cref="InvalidDataException">The checkpoint's state.json is malformed.</exception>
    public static CheckpointInfo? Latest(string outputDirectory)
    {
        ArgumentException.ThrowIfNullOrWhiteSpace(outputDirectory);
        var store = new CheckpointStore(Path.Combine(Path.GetFullPath(outputDirectory), "checkpoints"), 1);
        string? name = store.Candidates().FirstOrDefault(n =>
            File.Exists(Path.Combine(store.PathOf(n), CheckpointStore.ManifestName)) && File.Exists(Path.Combine(store.PathOf(n), "state.json")));
        if (name is null) return null;
        string dir = store.PathOf(name);
        string state = Path.Combine(dir, "state.json");
        try
        {
            var o = JsonNode.Parse(File.ReadAllText(state))!.AsObject();
            var roles = o["optimizer_steps"]!.AsObject().Select(kv => kv.Key).ToArray();
            return new CheckpointInfo(dir, (int)o["stage"]!, (string)o["algorithm"]!, (int)o["next_iteration"]!, roles);
        }
        catch (Exception e) when (e is System.Text.Json.JsonException or NullReferenceException or InvalidOperationException or FormatException)
        {
            throw new InvalidDataException($"{state}: not a checkpoint state file ({e.Message})", e);
        }
    }
}

/// <summary>A run's checkpoint: the trained roles' models plus optimizer state, after
/// <see cref="NextIteration"/> iterations of stage <see cref="Stage"/>. Resuming continues from it.</summary>
/// <param name="Directory">The checkpoint folder (OUT/checkpoints/step-N).</param>
/// <param name="Stage">0-based stage the checkpoint belongs to.</param>
/// <param name="Algorithm">That stage's algorithm.</param>
/// <param name="NextIteration">Iterations of the stage completed (the next one to run, 0-based).</param>
/// <param name="Roles">Trained roles saved in it (for PPO: actor, critic).</param>
public sealed record CheckpointInfo(string Directory, int Stage, string Algorithm, int NextIteration, IReadOnlyList<string> Roles)
{
    /// <summary>The Hugging Face layout folder of one role, for <see cref="Checkpoint.Load"/>.</summary>
    /// <exception cref="ArgumentException">The checkpoint holds no such role.</exception>
    public string ModelDirectory(string role) => Roles.Contains(role)
        ? Path.Combine(Directory, role)
        : throw new ArgumentException($"checkpoint {Directory} holds roles {string.Join(", ", Roles)}, not '{role}'", nameof(role));

    /// <summary>Checks every file against the checkpoint's manifest.json (size and SHA-256), then loads every
    /// role's model and checks the optimizer state sizes, to prove the checkpoint is complete and readable.</summary>
    /// <exception cref="InvalidDataException">Something is missing, torn or corrupt; the message names it.</exception>
    public void Verify()
    {
        if (CheckpointStore.VerifyDirectory(Directory) is { } why)
            throw new InvalidDataException($"checkpoint {Directory}: {why}");
        foreach (var role in Roles)
        {
            using var m = Checkpoint.Load(ModelDirectory(role));
            foreach (var ext in new[] { ".adam_m", ".adam_v" })
            {
                var f = new FileInfo(Path.Combine(Directory, role + ext));
                if (!f.Exists || f.Length != m.ParameterCount * 4)
                    throw new InvalidDataException($"checkpoint {Directory}: {f.Name} is {(f.Exists ? $"{f.Length} bytes, expected {m.ParameterCount * 4}" : "missing")}");
            }
        }
    }
}
