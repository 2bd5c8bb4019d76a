// A replica writes its part of a run checkpoint without any process holding the whole model: the
// writers are pipeline stages that hold whole tensors (data replica 0 of a tp-1 layout, or a
// temporary tp-1 pipeline over the replica's first devices that the part is reallocated into),
// each writes its tensors (one file of a sharded HF checkpoint, or its byte ranges of a flat fp32
// file) and fsyncs; the caller (the master) writes only config.json and the index, and commits the
// checkpoint folder once every writer is done (CheckpointStore: manifest, then rename).
using ReaLNative.Engine.Checkpoints;
using ReaLNative.Engine.Layout;
using ReaLNative.Engine.Model;

namespace ReaLNative.Engine.Parallelism;

/// <summary>One writer of a sharded save: the layout rank of the writers' layout, its file, its tensors.</summary>
internal sealed record ShardWrite(int WriterRank, string Path, string[] Tensors);

internal static class ShardedSave
{
    /// <summary>The writers of a replica laid out as <paramref name="l"/>: with tp 1 its own data
    /// replica 0 (no copy); otherwise a tp-1 pipeline over its first devices (at most layers + 2
    /// stages; one stage where tied embeddings forbid pipelining) that a temporary replica holds.</summary>
    public static (ParallelLayout Writers, bool Temporary) Writers(ParallelLayout l, LlamaConfig config, bool scalarHead)
    {
        if (l.Tp == 1) return (new ParallelLayout(Enumerable.Range(0, l.Pp).Select(p => l.Device(p, 0, 0)).ToArray(), l.Pp, 1, 1), false);
        int stages = config.TiedEmbeddings && !scalarHead ? 1 : Math.Min(l.Devices.Count, config.Layers + 2);
        return (new ParallelLayout(l.Devices.Take(stages).ToArray(), stages, 1, 1), true);
    }

    /// <summary>Prepares <paramref name="part"/> at <paramref name="target"/> (the weights' folder, or
    /// the flat file) for writers laid out as <paramref name="writers"/> (a tp-1 pipeline):
    /// the weights' folder, or the flat file at its full size; returns each stage's write (a tensor
    /// two stages hold is written by the first).</summary>
    public static List<ShardWrite> Prepare(string target, CheckpointPart part, ParallelLayout writers, LlamaConfig config, bool scalarHead)
    {
        if (writers.Tp != 1 || writers.Dp != 1) throw new ArgumentException($"writers {writers}: a sharded save writes from a tp-1 pipeline");
        target = Path.GetFullPath(target);
        var seen = new HashSet<string>(StringComparer.Ordinal);
        var writes = new List<ShardWrite>();
        int stages = writers.Pp;
        for (int p = 0; p < stages; p++)
        {
            var names = ParamLayout.Create(config, scalarHead, stages, p, 1, 0).Views.Select(v => v.Name).Where(seen.Add).ToArray();
            string path = part != CheckpointPart.Weights ? target
                : Path.Combine(target, stages == 1 ? "model.safetensors" : $"model-{p + 1:D5}-of-{stages:D5}.safetensors");
            writes.Add(new ShardWrite(writers.Rank(p, 0, 0), path, names));
        }
        if (part == CheckpointPart.Weights) Directory.CreateDirectory(target);
        else Safetensors.CreateFlat(target, ParamLayout.Create(config, scalarHead).TotalElements * 4);
        return writes;
    }

    /// <summary>After every writer is done: the weights' config.json and (several files) index.</summary>
    public static void Finish(string target, CheckpointPart part, IReadOnlyList<ShardWrite> writes, LlamaConfig config, bool scalarHead, bool bf16)
    {
        if (part != CheckpointPart.Weights) return;
        File.WriteAllText(Path.Combine(target, "config.json"), config.ToHfJson(scalarHead, bf16 ? "bfloat16" : "float32"));
        if (writes.Count == 1) return;
        var full = ParamLayout.Create(config, scalarHead);
        var fileOf = new Dictionary<string, string>(StringComparer.Ordinal);
        foreach (var w in writes)
            foreach (var t in w.Tensors) fileOf[t] = Path.GetFileName(w.Path);
        Safetensors.WriteIndex(target, fileOf, full.TotalElements * (bf16 ? 2 : 4));
    }
}
