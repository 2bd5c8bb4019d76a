using System.Buffers.Binary;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using ReaLNative.Engine.Model;

namespace ReaLNative.Engine.Checkpoints;

/// <summary>
/// Hugging Face checkpoints: <c>config.json</c> + <c>model.safetensors</c> (fp32, HF LLaMA tensor
/// names), sharded as <c>model-0000i-of-0000n.safetensors</c> with <c>model.safetensors.index.json</c>
/// above <see cref="DefaultShardBytes"/>. Loading accepts F32, BF16 and F16 tensors (converted to
/// fp32) and refuses missing, unexpected or mis-shaped tensors by name. A round trip is bit-exact.
/// </summary>
internal static class Safetensors
{
    /// <summary>Shard size above which model.safetensors is split (2 GiB).</summary>
    public const long DefaultShardBytes = 2L << 30;

    /// <summary>Writes config.json and the fp32 tensors (sharded with an index above
    /// <paramref name="shardBytes"/>) into <paramref name="dir"/>, atomically per file.</summary>
    public static void Save(LlamaModel model, string dir, long shardBytes = DefaultShardBytes, IReadOnlyDictionary<string, string>? metadata = null)
    {
        Directory.CreateDirectory(dir);
        File.WriteAllText(Path.Combine(dir, "config.json"), model.Config.ToHfJson(model.ScalarHead));
        var views = model.Layout.Views;
        // Group tensors into shards.
        var shards = new List<List<Realloc.ShardView>>();
        long cur = 0;
        foreach (var v in views)
        {
            long b = v.LocalElements * 4;
            if (shards.Count == 0 || (cur + b > shardBytes && shards[^1].Count > 0)) { shards.Add([]); cur = 0; }
            shards[^1].Add(v);
            cur += b;
        }
        var names = shards.Count == 1 ? ["model.safetensors"]
            : Enumerable.Range(1, shards.Count).Select(i => $"model-{i:D5}-of-{shards.Count:D5}.safetensors").ToArray();
        var weightMap = new JsonObject();
        for (int s = 0; s < shards.Count; s++)
        {
            WriteFile(Path.Combine(dir, names[s]), shards[s], model, metadata);
            foreach (var v in shards[s]) weightMap[v.Name] = names[s];
        }
        string index = Path.Combine(dir, "model.safetensors.index.json");
        if (shards.Count > 1)
        {
            var idx = new JsonObject { ["metadata"] = new JsonObject { ["total_size"] = model.ParameterCount * 4 }, ["weight_map"] = weightMap };
            File.WriteAllText(index, idx.ToJsonString(new JsonSerializerOptions { WriteIndented = true }));
        }
        else if (File.Exists(index)) File.Delete(index);
    }

    private static void WriteFile(string path, List<Realloc.ShardView> views, LlamaModel model, IReadOnlyDictionary<string, string>? metadata)
    {
        var header = new JsonObject();
        if (metadata is not null)
        {
            var md = new JsonObject { ["format"] = "pt" };
            foreach (var (k, v) in metadata) md[k] = v;
            header["__metadata__"] = md;
        }
        else header["__metadata__"] = new JsonObject { ["format"] = "pt" };
        long off = 0;
        foreach (var v in views)
        {
            long n = v.LocalElements * 4;
            header[v.Name] = new JsonObject
            {
                ["dtype"] = "F32",
                ["shape"] = new JsonArray(v.LocalShape.Select(d => (JsonNode)d).ToArray()),
                ["data_offsets"] = new JsonArray(off, off + n),
            };
            off += n;
        }
        var hb = Encoding.UTF8.GetBytes(header.ToJsonString());
        int pad = (8 - hb.Length % 8) % 8;
        string tmp = path + ".tmp";
        using (var fs = new FileStream(tmp, FileMode.Create, FileAccess.Write, FileShare.None, 1 << 20))
        {
            Span<byte> len = stackalloc byte[8];
            BinaryPrimitives.WriteUInt64LittleEndian(len, (ulong)(hb.Length + pad));
            fs.Write(len);
            fs.Write(hb);
            for (int i = 0; i < pad; i++) fs.WriteByte((byte)' ');
            var all = model.Parameters;
            foreach (var v in views)
                fs.Write(System.Runtime.InteropServices.MemoryMarshal.AsBytes(all.Slice((int)v.Offset, (int)v.LocalElements)));
            fs.Flush(true);
        }
        File.Move(tmp, path, overwrite: true);  // never a half-written checkpoint under the real name
    }

    /// <summary>Reads config.json and builds a model; <paramref name="scalarHead"/> null: decide from the
    /// file (score.weight present).</summary>
    public static LlamaModel Load(string dir, bool? scalarHead = null)
    {
        if (!Directory.Exists(dir)) throw new DirectoryNotFoundException($"checkpoint directory {dir} not found");
        var cfg = LlamaConfig.FromHfJson(Path.Combine(dir, "config.json"));
        var tensors = ReadAll(dir);
        bool scalar = scalarHead ?? tensors.ContainsKey("score.weight");
        var model = new LlamaModel(cfg, scalar);
        try
        {
            LoadInto(model, tensors, dir);
        }
        catch
        {
            model.Dispose();
            throw;
        }
        return model;
    }

    /// <summary>Overwrites a model's parameters from a checkpoint directory of the same architecture.</summary>
    public static void LoadInto(LlamaModel model, string dir) => LoadInto(model, ReadAll(dir), dir);

    private static void LoadInto(LlamaModel model, Dictionary<string, (string Dtype, long[] Shape, byte[] Data)> tensors, string dir)
    {
        var all = model.Parameters;
        foreach (var v in model.Layout.Views)
        {
            if (!tensors.TryGetValue(v.Name, out var t))
                throw new InvalidDataException($"checkpoint {dir}: tensor '{v.Name}' is missing");
            if (!t.Shape.SequenceEqual(v.LocalShape))
                throw new InvalidDataException($"checkpoint {dir}: tensor '{v.Name}' has shape [{string.Join(", ", t.Shape)}], the model needs [{string.Join(", ", v.LocalShape)}]");
            var dst = all.Slice((int)v.Offset, (int)v.LocalElements);
            Decode(t.Dtype, t.Data, dst, v.Name, dir);
        }
        var extra = tensors.Keys.Where(k => !model.Layout.TryGet(k, out _) && !k.EndsWith("rotary_emb.inv_freq", StringComparison.Ordinal)).ToList();
        if (extra.Count > 0)
            throw new InvalidDataException($"checkpoint {dir}: unexpected tensor(s) {string.Join(", ", extra.Take(5))} for this model");
    }

    private static void Decode(string dtype, byte[] data, Span<float> dst, string name, string dir)
    {
        switch (dtype)
        {
            case "F32":
                Check(data.Length, dst.Length * 4);
                System.Runtime.InteropServices.MemoryMarshal.Cast<byte, float>(data).CopyTo(dst);
                break;
            case "BF16":
                Check(data.Length, dst.Length * 2);
                for (int i = 0; i < dst.Length; i++)
                    dst[i] = BitConverter.Int32BitsToSingle(BinaryPrimitives.ReadUInt16LittleEndian(data.AsSpan(2 * i)) << 16);
                break;
            case "F16":
                Check(data.Length, dst.Length * 2);
                for (int i = 0; i < dst.Length; i++)
                    dst[i] = (float)BitConverter.UInt16BitsToHalf(BinaryPrimitives.ReadUInt16LittleEndian(data.AsSpan(2 * i)));
                break;
            default:
                throw new InvalidDataException($"checkpoint {dir}: tensor '{name}' has dtype {dtype} (supported: F32, BF16, F16)");
        }
        void Check(int have, int want)
        {
            if (have != want) throw new InvalidDataException($"checkpoint {dir}: tensor '{name}' holds {have} bytes, its shape needs {want}");
        }
    }

    private static Dictionary<string, (string, long[], byte[])> ReadAll(string dir)
    {
        var files = new List<string>();
        string index = Path.Combine(dir, "model.safetensors.index.json"), single = Path.Combine(dir, "model.safetensors");
        if (File.Exists(index))
        {
            var o = JsonNode.Parse(File.ReadAllText(index)) as JsonObject
                    ?? throw new InvalidDataException($"{index}: expected a JSON object");
            if (o["weight_map"] is not JsonObject wm) throw new InvalidDataException($"{index}: 'weight_map' missing");
            files.AddRange(wm.Select(kv => kv.Value?.GetValue<string>() ?? throw new InvalidDataException($"{index}: bad entry {kv.Key}")).Distinct());
        }
        else if (File.Exists(single)) files.Add("model.safetensors");
        else throw new FileNotFoundException($"checkpoint {dir}: neither model.safetensors nor model.safetensors.index.json exists");
        var result = new Dictionary<string, (string, long[], byte[])>(StringComparer.Ordinal);
        foreach (var f in files) ReadFile(Path.Combine(dir, f), result);
        return result;
    }

    private static void ReadFile(string path, Dictionary<string, (string, long[], byte[])> into)
    {
        if (!File.Exists(path)) throw new FileNotFoundException($"checkpoint shard {path} is missing", path);
        using var fs = File.OpenRead(path);
        Span<byte> len = stackalloc byte[8];
        if (fs.Read(len) != 8) throw new InvalidDataException($"{path}: truncated (no header length)");
        ulong hl = BinaryPrimitives.ReadUInt64LittleEndian(len);
        if (hl == 0 || hl > 100_000_000 || (long)hl + 8 > fs.Length) throw new InvalidDataException($"{path}: header length {hl} is invalid for a {fs.Length}-byte file");
        var hb = new byte[hl];
        fs.ReadExactly(hb);
        JsonObject header;
        try { header = JsonNode.Parse(hb) as JsonObject ?? throw new InvalidDataException($"{path}: header is not a JSON object"); }
        catch (JsonException e) { throw new InvalidDataException($"{path}: header is not valid JSON ({e.Message})"); }
        long dataStart = 8 + (long)hl, dataLen = fs.Length - dataStart;
        foreach (var (name, node) in header)
        {
            if (name == "__metadata__") continue;
            if (node is not JsonObject t || t["dtype"] is null || t["shape"] is not JsonArray shape || t["data_offsets"] is not JsonArray offs || offs.Count != 2)
                throw new InvalidDataException($"{path}: tensor '{name}' has a malformed header entry");
            long a = offs[0]!.GetValue<long>(), b = offs[1]!.GetValue<long>();
            if (a < 0 || b < a || b > dataLen) throw new InvalidDataException($"{path}: tensor '{name}' data [{a}, {b}) lies outside the {dataLen}-byte data section");
            var data = new byte[b - a];
            fs.Position = dataStart + a;
            fs.ReadExactly(data);
            into[name] = (t["dtype"]!.GetValue<string>(), shape.Select(x => x!.GetValue<long>()).ToArray(), data);
        }
    }
}
