// The parts of a run checkpoint a trained role has, and their names: the Hugging Face weights
// (role/), the fp32 master of a bf16 model (role.master) and the AdamW moments (role.adam_m,
// role.adam_v: the full model's flat fp32 buffers). A single device writes them from its full model;
// under an execution plan the replica's shards write them themselves (IReplica.SaveState).
namespace ReaLNative.Engine.Checkpoints;

/// <summary>One part of a trained role's checkpoint state.</summary>
internal enum CheckpointPart
{
    /// <summary>The weights as Hugging Face safetensors (bf16 for a bf16 model, as HF writes them; else fp32).</summary>
    Weights,
    /// <summary>A bf16 model's fp32 master weights (flat fp32).</summary>
    Master,
    /// <summary>AdamW's first moment (flat fp32).</summary>
    FirstMoment,
    /// <summary>AdamW's second moment (flat fp32).</summary>
    SecondMoment,
}

internal static class CheckpointParts
{
    /// <summary>The file (or, for the weights, folder) of <paramref name="part"/> of <paramref name="role"/> in a checkpoint directory.</summary>
    public static string Name(string role, CheckpointPart part) => part switch
    {
        CheckpointPart.Weights => role,
        CheckpointPart.Master => role + ".master",
        CheckpointPart.FirstMoment => role + ".adam_m",
        CheckpointPart.SecondMoment => role + ".adam_v",
        _ => throw new ArgumentOutOfRangeException(nameof(part)),
    };

    /// <summary>The wire name of a part (worker commands).</summary>
    public static string Wire(CheckpointPart part) => part.ToString().ToLowerInvariant();

    public static CheckpointPart FromWire(string s) => Enum.GetValues<CheckpointPart>().FirstOrDefault(p => Wire(p) == s, (CheckpointPart)(-1)) is var p && (int)p >= 0
        ? p : throw new ArgumentException($"unknown checkpoint part '{s}' (one of {string.Join(", ", Enum.GetValues<CheckpointPart>().Select(Wire))})");
}
