// A replica writes its part of a run checkpoint without any process holding the whole model and
// without any copy of its state: every owner writes its own pieces straight from its shard into
// the checkpoint files. The master (the caller) first creates each file at its full size: a flat
// fp32 file (the fp32 master, an AdamW moment), or each .safetensors file of the weights with its
// header (the master writes every header); then each writing rank writes its slices at their
// offsets (Safetensors.WriteSlices: a whole tensor or a column-parallel slice in one positioned
// write, a row-parallel slice one write per row) and fsyncs; the master writes config.json and
// the index, and commits the checkpoint folder once every writer is done (CheckpointStore:
// manifest, then rename). The files are the single device's bytes: the same tensors in the same
// files at the same offsets, whatever the layout that wrote them.
//
// Several processes, on one node or several, write disjoint byte ranges of the same files at once:
// the checkpoint folder must be one file system every worker and the master see (one machine, or
// a shared file system across nodes, as README's "Worker processes" requires), which keeps
// concurrent writes to disjoint ranges of a file; each writer fsyncs its files before it reports
// done, and the master reads them (the manifest's hashes) only after every writer has reported.
using System.Text.Json.Nodes;
using ReaLNative.Engine.Checkpoints;
using ReaLNative.Engine.Layout;
using ReaLNative.Engine.Model;

namespace ReaLNative.Engine.Parallelism;

/// <summary>Where a sharded save writes each tensor of a checkpoint part: the file and the byte
/// offset of its element 0 (the tensor row-major over its global shape from there), and the bytes
/// per element (4: fp32; 2: a bf16 model's weights).</summary>
internal sealed record SaveTargets(int ElementBytes, IReadOnlyDictionary<string, (string Path, long Offset)> At)
{
    /// <summary>The wire form (a save-state command): element_bytes, and per file each tensor's offset.</summary>
    public JsonObject ToJson()
    {
        var files = new JsonObject();
        foreach (var (name, (path, offset)) in At)
        {
            if (files[path] is not JsonObject f) files[path] = f = new JsonObject();
            f[name] = offset;
        }
        return new JsonObject { ["element_bytes"] = ElementBytes, ["files"] = files };
    }

    /// <summary>Reads <see cref="ToJson"/>'s form; refuses a malformed one naming the field.</summary>
    public static SaveTargets FromJson(JsonNode? j)
    {
        if (j is not JsonObject o) throw new ArgumentException("save-state: 'targets' is not an object");
        int es = o["element_bytes"] is JsonValue e && e.TryGetValue<int>(out int x) && x is 2 or 4
            ? x : throw new ArgumentException($"save-state: targets.element_bytes {o["element_bytes"]?.ToJsonString() ?? "missing"} is not 2 or 4");
        if (o["files"] is not JsonObject files) throw new ArgumentException("save-state: targets.files is not an object");
        var at = new Dictionary<string, (string, long)>(StringComparer.Ordinal);
        foreach (var (path, tensors) in files)
        {
            if (!Path.IsPathFullyQualified(path)) throw new ArgumentException($"save-state: targets.files: '{path}' is not an absolute path");
            if (tensors is not JsonObject t) throw new ArgumentException($"save-state: targets.files['{path}'] is not an object");
            foreach (var (name, off) in t)
            {
                if (off is not JsonValue v || !v.TryGetValue<long>(out long offset) || offset < 0)
                    throw new ArgumentException($"save-state: targets.files['{path}']['{name}'] = {off?.ToJsonString() ?? "null"} is not a non-negative byte offset");
                if (!at.TryAdd(name, (path, offset))) throw new ArgumentException($"save-state: tensor '{name}' has two targets");
            }
        }
        return new SaveTargets(es, at);
    }
}

internal static class ShardedSave
{
    /// <summary>The tensors of each file of the weights (in file order; the files are named
    /// <see cref="Safetensors.FileNames"/>): one file per stage of a tp-1 pipeline, of the layout's
    /// own pp stages when it has tp 1, else of min(devices, layers + 2) stages (one where tied
    /// embeddings forbid pipelining). Tensor parallelism never splits a file: a checkpoint written
    /// from a tp &gt; 1 layout has the files its devices would write as a tp-1 pipeline (its
    /// grouping since sharded saves began, kept so the files stay the same).</summary>
    public static List<string[]> WeightFiles(ParallelLayout l, LlamaConfig config, bool scalarHead)
    {
        int stages = l.Tp == 1 ? l.Pp : config.TiedEmbeddings && !scalarHead ? 1 : Math.Min(l.Devices.Count, config.Layers + 2);
        var seen = new HashSet<string>(StringComparer.Ordinal);
        return Enumerable.Range(0, stages)
            .Select(p => ParamLayout.Create(config, scalarHead, stages, p, 1, 0).Views.Select(v => v.Name).Where(seen.Add).ToArray()).ToList();
    }

    /// <summary>The tensors rank (<paramref name="data"/>, <paramref name="tpRank"/>) of a pipeline
    /// stage whose shard is <paramref name="shard"/> writes, of layout <paramref name="l"/>: every
    /// byte once. Tensor i (of the single device's layout) is written by data replica i mod dp
    /// (the data replicas hold the same values; the tensors spread over them); of it, each tensor
    /// rank writes its slice, or, for a tensor every tensor rank holds whole (norms, a scalar
    /// head), tensor rank i mod tp. A tensor belongs to one pipeline stage.</summary>
    public static HashSet<string> Mine(ShardLayout shard, ParallelLayout l, int data, int tpRank, LlamaConfig config, bool scalarHead)
    {
        var index = ParamLayout.Create(config, scalarHead).Views.Select((v, i) => (v.Name, i)).ToDictionary(x => x.Name, x => x.i, StringComparer.Ordinal);
        var mine = new HashSet<string>(StringComparer.Ordinal);
        foreach (var v in shard.Views)
        {
            int i = index.TryGetValue(v.Name, out int k) ? k : throw new ArgumentException($"tensor '{v.Name}' is not in the model");
            if (i % l.Dp == data && (v.SplitDim >= 0 || i % l.Tp == tpRank)) mine.Add(v.Name);
        }
        return mine;
    }

    /// <summary>The devices of <paramref name="l"/> that write something (<see cref="Mine"/>).</summary>
    public static int[] WriterDevices(ParallelLayout l, LlamaConfig config, bool scalarHead)
    {
        var devices = new List<int>();
        for (int p = 0; p < l.Pp; p++)
            for (int m = 0; m < l.Tp; m++)
            {
                var shard = ParamLayout.Create(config, scalarHead, l.Pp, p, l.Tp, m);
                for (int d = 0; d < l.Dp; d++)
                    if (Mine(shard, l, d, m, config, scalarHead).Count > 0) devices.Add(l.Device(p, d, m));
            }
        return [.. devices];
    }

    /// <summary>Creates the files of <paramref name="part"/> at <paramref name="target"/> for its
    /// owners to fill: the flat fp32 file at its full size, or the weights' folder with each
    /// .safetensors file at its full size and its header written (<see cref="WeightFiles"/>; BF16
    /// tensors when <paramref name="bf16Weights"/>: a bf16 model's weights, as a single device
    /// writes them), fsynced. Returns where each tensor goes.</summary>
    public static SaveTargets Prepare(string target, CheckpointPart part, ParallelLayout l, LlamaConfig config, bool scalarHead, bool bf16Weights)
    {
        if (bf16Weights && part != CheckpointPart.Weights) throw new ArgumentException($"{target}: only the weights are written in bf16");
        target = Path.GetFullPath(target);
        var full = ParamLayout.Create(config, scalarHead);
        var at = new Dictionary<string, (string, long)>(StringComparer.Ordinal);
        if (part != CheckpointPart.Weights)
        {
            Safetensors.CreateFlat(target, full.TotalElements * 4);
            foreach (var v in full.Views) at[v.Name] = (target, v.Offset * 4);
            return new SaveTargets(4, at);
        }
        Directory.CreateDirectory(target);
        var files = WeightFiles(l, config, scalarHead);
        var names = Safetensors.FileNames(files.Count);
        for (int f = 0; f < files.Count; f++)
        {
            string path = Path.Combine(target, names[f]);
            var tensors = files[f].Select(n => (n, full.TryGet(n, out var v) ? v.GlobalShape : throw new ArgumentException($"tensor '{n}' is not in the model"))).ToList();
            var offsets = Safetensors.CreateTensorFile(path, tensors, bf16Weights);
            for (int i = 0; i < tensors.Count; i++) at[tensors[i].Item1] = (path, offsets[i]);
        }
        return new SaveTargets(bf16Weights ? 2 : 4, at);
    }

    /// <summary>After every owner is done: the weights' config.json and (several files) index.</summary>
    public static void Finish(string target, CheckpointPart part, ParallelLayout l, LlamaConfig config, bool scalarHead, bool bf16Weights)
    {
        if (part != CheckpointPart.Weights) return;
        File.WriteAllText(Path.Combine(target, "config.json"), config.ToHfJson(scalarHead, bf16Weights ? "bfloat16" : "float32"));
        var files = WeightFiles(l, config, scalarHead);
        if (files.Count == 1) return;
        var names = Safetensors.FileNames(files.Count);
        var fileOf = new Dictionary<string, string>(StringComparer.Ordinal);
        for (int f = 0; f < files.Count; f++)
            foreach (var t in files[f]) fileOf[t] = names[f];
        Safetensors.WriteIndex(target, fileOf, ParamLayout.Create(config, scalarHead).TotalElements * (bf16Weights ? 2 : 4));
    }
}
