using System.Buffers.Binary;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using ReaLNative.Engine.Layout;
using ReaLNative.Engine.Model;

namespace ReaLNative.Engine.Checkpoints;

/// <summary>
/// Hugging Face checkpoints: <c>config.json</c> + <c>model.safetensors</c> (fp32, or bf16 for a
/// model in bf16 precision with <c>torch_dtype: bfloat16</c> as HF writes them; HF LLaMA tensor
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
        int es = model.Precision == ModelPrecision.Bf16 ? 2 : 4;
        // Group tensors into shards.
        var shards = new List<List<string>>();
        long cur = 0;
        foreach (var v in model.Layout.Views)
        {
            long b = v.LocalElements * es;
            if (shards.Count == 0 || (cur + b > shardBytes && shards[^1].Count > 0)) { shards.Add([]); cur = 0; }
            shards[^1].Add(v.Name);
            cur += b;
        }
        Save(model, dir, shards, metadata);
    }

    /// <summary>Writes config.json and the tensors of a model that holds them whole (a single
    /// device's) into <paramref name="dir"/>, file i holding the tensors <paramref name="files"/>[i]
    /// in layout order (one file: model.safetensors; several: model-0000i-of-0000n.safetensors and
    /// model.safetensors.index.json), each file atomically (temporary name, fsync, rename).</summary>
    public static void Save(LlamaModel model, string dir, IReadOnlyList<IReadOnlyCollection<string>> files, IReadOnlyDictionary<string, string>? metadata = null)
    {
        Directory.CreateDirectory(dir);
        bool bf16 = model.Precision == ModelPrecision.Bf16;
        int es = bf16 ? 2 : 4;
        File.WriteAllText(Path.Combine(dir, "config.json"), model.Config.ToHfJson(model.ScalarHead, bf16 ? "bfloat16" : "float32"));
        var names = FileNames(files.Count);
        var fileOf = new Dictionary<string, string>(StringComparer.Ordinal);
        for (int s = 0; s < files.Count; s++)
        {
            var views = model.Layout.Views.Where(v => files[s].Contains(v.Name)).ToList();
            if (views.Count != files[s].Count) throw new ArgumentException($"{dir}: {names[s]} names {files[s].Count} tensors, the model has {views.Count} of them");
            WriteFile(Path.Combine(dir, names[s]), views, model, metadata);
            foreach (var v in views) fileOf[v.Name] = names[s];
        }
        string index = Path.Combine(dir, "model.safetensors.index.json");
        if (files.Count > 1) WriteIndex(dir, fileOf, model.ParameterCount * es);
        else if (File.Exists(index)) File.Delete(index);
    }

    /// <summary>The file names of a checkpoint of <paramref name="count"/> files: model.safetensors,
    /// or model-0000i-of-0000n.safetensors (Hugging Face's names).</summary>
    public static string[] FileNames(int count) => count == 1 ? ["model.safetensors"]
        : Enumerable.Range(1, count).Select(i => $"model-{i:D5}-of-{count:D5}.safetensors").ToArray();

    /// <summary>The index of a checkpoint of several files: each tensor's file, and the total size.</summary>
    public static void WriteIndex(string dir, IReadOnlyDictionary<string, string> fileOfTensor, long totalBytes)
    {
        var wm = new JsonObject();
        foreach (var (k, v) in fileOfTensor) wm[k] = v;
        var idx = new JsonObject { ["metadata"] = new JsonObject { ["total_size"] = totalBytes }, ["weight_map"] = wm };
        File.WriteAllText(Path.Combine(dir, "model.safetensors.index.json"), idx.ToJsonString(new JsonSerializerOptions { WriteIndented = true }));
    }

    /// <summary>The bytes of a .safetensors file before its data: the header's length (8 bytes,
    /// little-endian), the JSON header (<c>__metadata__</c>, then each tensor in file order with its
    /// dtype, shape and data_offsets) and spaces up to a multiple of 8; and each tensor's data offset
    /// from the end of these bytes, in file order, with the data's total size.</summary>
    public static (byte[] Prefix, long[] Offsets, long DataBytes) Header(IReadOnlyList<(string Name, long[] Shape)> tensors, bool bf16,
                                                                        IReadOnlyDictionary<string, string>? metadata = null)
    {
        var md = new JsonObject { ["format"] = "pt" };
        if (metadata is not null)
            foreach (var (k, v) in metadata) md[k] = v;
        var header = new JsonObject { ["__metadata__"] = md };
        var offsets = new long[tensors.Count];
        long off = 0;
        for (int i = 0; i < tensors.Count; i++)
        {
            var (name, shape) = tensors[i];
            long n = shape.Aggregate(1L, (a, d) => a * d) * (bf16 ? 2 : 4);
            header[name] = new JsonObject
            {
                ["dtype"] = bf16 ? "BF16" : "F32",
                ["shape"] = new JsonArray(shape.Select(d => (JsonNode)d).ToArray()),
                ["data_offsets"] = new JsonArray(off, off + n),
            };
            offsets[i] = off;
            off += n;
        }
        var hb = Encoding.UTF8.GetBytes(header.ToJsonString());
        int pad = (8 - hb.Length % 8) % 8;
        var prefix = new byte[8 + hb.Length + pad];
        BinaryPrimitives.WriteUInt64LittleEndian(prefix, (ulong)(hb.Length + pad));
        hb.CopyTo(prefix, 8);
        prefix.AsSpan(8 + hb.Length).Fill((byte)' ');
        return (prefix, offsets, off);
    }

    private static void WriteFile(string path, List<ShardView> views, LlamaModel model, IReadOnlyDictionary<string, string>? metadata)
    {
        bool bf16 = model.Precision == ModelPrecision.Bf16;
        var (prefix, _, _) = Header(views.Select(v => (v.Name, v.LocalShape)).ToList(), bf16, metadata);
        string tmp = path + ".tmp";
        using (var fs = new FileStream(tmp, FileMode.Create, FileAccess.Write, FileShare.None, 1 << 20))
        {
            fs.Write(prefix);
            if (bf16)
            {
                var half = model.Bf16Parameters;
                foreach (var v in views)
                    fs.Write(System.Runtime.InteropServices.MemoryMarshal.AsBytes(half.Slice((int)v.Offset, (int)v.LocalElements)));
            }
            else
            {
                var all = model.Parameters;
                foreach (var v in views)
                    fs.Write(System.Runtime.InteropServices.MemoryMarshal.AsBytes(all.Slice((int)v.Offset, (int)v.LocalElements)));
            }
            fs.Flush(true);
        }
        File.Move(tmp, path, overwrite: true);  // never a half-written checkpoint under the real name
    }

    /// <summary>Creates the .safetensors file <paramref name="path"/> of a sharded save at its full
    /// size, with its header (<see cref="Header"/>: the bytes a single device's save writes) and its
    /// data still to be written (a sparse range the shards' owners fill, <see cref="WriteSlices"/>);
    /// fsynced. Returns each tensor's absolute file offset, in file order.</summary>
    public static long[] CreateTensorFile(string path, IReadOnlyList<(string Name, long[] Shape)> tensors, bool bf16)
    {
        var (prefix, offsets, data) = Header(tensors, bf16);
        using (var fs = new FileStream(path, FileMode.Create, FileAccess.Write, FileShare.ReadWrite))
        {
            fs.SetLength(prefix.Length + data);
            fs.Write(prefix);
            fs.Flush(flushToDisk: true);
        }
        return offsets.Select(o => prefix.Length + o).ToArray();
    }

    /// <summary>Reads config.json and builds a model; <paramref name="scalarHead"/> null: decide from the
    /// file (score.weight present);
    /// <paramref name="allowNonFinite"/>: load NaN / infinite weights instead of refusing them.</summary>
    public static LlamaModel Load(string dir, bool? scalarHead = null, bool allowNonFinite = false)
    {
        if (!Directory.Exists(dir)) throw new DirectoryNotFoundException($"checkpoint directory {dir} not found");
        var cfg = LlamaConfig.FromHfJson(Path.Combine(dir, "config.json"));
        var tensors = ReadAll(dir);
        bool scalar = scalarHead ?? tensors.ContainsKey("score.weight");
        var model = new LlamaModel(cfg, scalar);
        try
        {
            LoadInto(model, tensors, dir, allowNonFinite);
        }
        catch
        {
            model.Dispose();
            throw;
        }
        return model;
    }

    /// <summary>Overwrites a model's parameters from a checkpoint directory of the same architecture.</summary>
    public static void LoadInto(LlamaModel model, string dir, bool allowNonFinite = false) => LoadInto(model, ReadAll(dir), dir, allowNonFinite);

    private static void LoadInto(LlamaModel model, Dictionary<string, (string Dtype, long[] Shape, byte[] Data)> tensors, string dir, bool allowNonFinite)
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
            if (!allowNonFinite) RefuseNonFinite(dst, v.Name, dir);
        }
        var extra = tensors.Keys.Where(k => !model.Layout.TryGet(k, out _) && !k.EndsWith("rotary_emb.inv_freq", StringComparison.Ordinal)).ToList();
        if (extra.Count > 0)
            throw new InvalidDataException($"checkpoint {dir}: unexpected tensor(s) {string.Join(", ", extra.Take(5))} for this model");
    }

    /// <summary>Weights that are NaN or infinite poison every later step (a stack trace at the
    /// first optimizer step at best): refused at load, naming the tensor and the first bad element.</summary>
    private static void RefuseNonFinite(ReadOnlySpan<float> w, string name, string dir)
    {
        int first = -1, count = 0;
        for (int i = 0; i < w.Length; i++)
            if (!float.IsFinite(w[i])) { if (first < 0) first = i; count++; }
        if (count > 0)
            throw new InvalidDataException($"checkpoint {dir}: tensor '{name}' holds {count} non-finite value(s) of {w.Length} (first: {w[first]} at element {first}); " +
                                           "refused (`allow_non_finite_weights: true` in the model's config entry loads it anyway)");
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

    /// <summary>Bytes per element of the safetensors dtypes.</summary>
    private static readonly Dictionary<string, int> DtypeBytes = new(StringComparer.Ordinal)
    {
        ["BOOL"] = 1, ["U8"] = 1, ["I8"] = 1, ["F8_E5M2"] = 1, ["F8_E4M3"] = 1,
        ["I16"] = 2, ["U16"] = 2, ["F16"] = 2, ["BF16"] = 2,
        ["I32"] = 4, ["U32"] = 4, ["F32"] = 4, ["I64"] = 8, ["U64"] = 8, ["F64"] = 8,
    };

    /// <summary>Reads one .safetensors file, checking its header the way the format requires: each
    /// tensor's dtype is known, its shape non-negative integers, its data_offsets two integers whose
    /// span is exactly shape x dtype bytes, and the tensors tile the data section with no gap, overlap
    /// or byte beyond the file. A duplicate tensor name (in the file or across shards) is refused.</summary>
    private static void ReadFile(string path, Dictionary<string, (string, long[], byte[])> into)
    {
        using var fs = OpenShard(path);
        var (dataStart, entries) = ReadHeader(fs, path);
        foreach (var (name, e) in entries)
        {
            if (into.ContainsKey(name)) throw new InvalidDataException($"{path}: tensor '{name}': appears in more than one shard");
            var data = new byte[e.End - e.Start];
            fs.Position = dataStart + e.Start;
            fs.ReadExactly(data);
            into[name] = (e.Dtype, e.Shape, data);
        }
    }

    private static FileStream OpenShard(string path)
    {
        if (Directory.Exists(path)) throw new InvalidDataException($"{path}: is a directory, not a .safetensors file");
        if (!File.Exists(path)) throw new FileNotFoundException($"checkpoint shard {path} is missing", path);
        return File.OpenRead(path);
    }

    /// <summary>One tensor of a .safetensors header: dtype, shape, [Start, End) of the data section.</summary>
    private readonly record struct Entry(string Dtype, long[] Shape, long Start, long End);

    /// <summary>Reads and checks a .safetensors header (see <see cref="ReadFile"/>); returns where
    /// the data section starts in the file and the tensors, in header order.</summary>
    private static (long DataStart, List<(string Name, Entry Entry)> Entries) ReadHeader(FileStream fs, string path)
    {
        Span<byte> len = stackalloc byte[8];
        if (fs.Length < 8 || fs.Read(len) != 8) throw new InvalidDataException($"{path}: truncated (no header length)");
        ulong hl = BinaryPrimitives.ReadUInt64LittleEndian(len);
        if (hl == 0 || hl > 100_000_000 || (long)hl + 8 > fs.Length) throw new InvalidDataException($"{path}: header length {hl} is invalid for a {fs.Length}-byte file");
        var hb = new byte[hl];
        fs.ReadExactly(hb);
        JsonObject header;
        try
        {
            header = JsonNode.Parse(hb, documentOptions: new JsonDocumentOptions { AllowDuplicateProperties = false }) as JsonObject
                     ?? throw new InvalidDataException($"{path}: header is not a JSON object");
        }
        catch (JsonException e) { throw new InvalidDataException($"{path}: header is not valid JSON ({e.Message})"); }
        long dataStart = 8 + (long)hl, dataLen = fs.Length - dataStart;
        var spans = new List<(long Start, long End, string Name)>();
        var entries = new List<(string Name, string Dtype, long[] Shape, long Start, long End)>();
        foreach (var (name, node) in header)
        {
            if (name == "__metadata__") continue;
            string where = $"{path}: tensor '{name}'";
            if (node is not JsonObject t) throw new InvalidDataException($"{where}: header entry is not an object");
            if (t["dtype"] is not JsonValue dv || !dv.TryGetValue<string>(out var dtype))
                throw new InvalidDataException($"{where}: 'dtype' is missing or not a string");
            if (!DtypeBytes.TryGetValue(dtype, out int eb))
                throw new InvalidDataException($"{where}: unknown dtype '{dtype}' (safetensors dtypes: {string.Join(", ", DtypeBytes.Keys)})");
            if (t["shape"] is not JsonArray shapeNode) throw new InvalidDataException($"{where}: 'shape' is missing or not an array");
            var shape = new long[shapeNode.Count];
            long elements = 1;
            for (int i = 0; i < shape.Length; i++)
            {
                shape[i] = NonNegativeInteger(shapeNode[i], $"{where}: shape[{i}]");
                try { elements = checked(elements * shape[i]); }
                catch (OverflowException) { throw new InvalidDataException($"{where}: shape [{string.Join(", ", shapeNode)}] overflows"); }
            }
            if (t["data_offsets"] is not JsonArray offs || offs.Count != 2)
                throw new InvalidDataException($"{where}: 'data_offsets' must be an array of two integers [begin, end]");
            long a = NonNegativeInteger(offs[0], $"{where}: data_offsets[0]"), b = NonNegativeInteger(offs[1], $"{where}: data_offsets[1]");
            if (b < a) throw new InvalidDataException($"{where}: data_offsets [{a}, {b}) end before they begin");
            if (b > dataLen) throw new InvalidDataException($"{where}: data [{a}, {b}) lies outside the {dataLen}-byte data section (the file is {fs.Length} bytes)");
            long want;
            try { want = checked(elements * eb); }
            catch (OverflowException) { want = long.MaxValue; }
            if (b - a != want)
                throw new InvalidDataException($"{where}: data_offsets [{a}, {b}) hold {b - a} bytes, but {dtype} x shape [{string.Join(", ", shape)}] needs {want}");
            spans.Add((a, b, name));
            entries.Add((name, dtype, shape, a, b));
        }
        // The tensors must tile the data section: sorted by start, each begins where the previous ends.
        spans.Sort((x, y) => x.Start != y.Start ? x.Start.CompareTo(y.Start) : x.End.CompareTo(y.End));
        long at = 0; string? prev = null;
        foreach (var (a, b, name) in spans)
        {
            if (a < at) throw new InvalidDataException($"{path}: tensor '{name}' data [{a}, {b}) overlaps tensor '{prev}' (which ends at {at})");
            if (a > at) throw new InvalidDataException($"{path}: bytes [{at}, {a}) of the data section belong to no tensor (before '{name}'); tensors must be contiguous");
            at = b; prev = name;
        }
        if (at != dataLen) throw new InvalidDataException($"{path}: the data section is {dataLen} bytes but its tensors end at {at}{(at < dataLen ? "; trailing bytes belong to no tensor" : "")}");
        return (dataStart, entries.Select(e => (e.Name, new Entry(e.Dtype, e.Shape, e.Start, e.End))).ToList());
    }

    /// <summary>Whether the HF checkpoint in <paramref name="dir"/> has a scalar head (a score.weight
    /// tensor), read from the index or the file's header only.</summary>
    public static bool HasScalarHead(string dir)
    {
        string index = Path.Combine(dir, "model.safetensors.index.json"), single = Path.Combine(dir, "model.safetensors");
        if (File.Exists(index))
            return JsonNode.Parse(File.ReadAllText(index)) is JsonObject o && o["weight_map"] is JsonObject wm ? wm.ContainsKey("score.weight")
                : throw new InvalidDataException($"{index}: 'weight_map' missing");
        if (!File.Exists(single)) throw new FileNotFoundException($"checkpoint {dir}: neither model.safetensors nor model.safetensors.index.json exists");
        using var fs = OpenShard(single);
        return ReadHeader(fs, single).Entries.Any(e => e.Name == "score.weight");
    }

    /// <summary>Loads one shard of a model (a pipeline stage's tensors, each cut to its tensor-
    /// parallel slice: <paramref name="layout"/>) from an HF checkpoint directory
    /// (model.safetensors, or shards with model.safetensors.index.json) into the shard's flat
    /// buffer, reading only the bytes of its slices from the files that hold its tensors: a
    /// worker loads its shards without anyone holding the whole model. F32, BF16 and F16 files
    /// (converted to fp32). Refuses, naming the file and tensor, a tensor that is missing or whose
    /// shape is not the layout's global shape, and (unless <paramref name="allowNonFinite"/>) NaN or
    /// infinite values. The result equals slicing the tensors <see cref="Load"/> reads, bit for bit.</summary>
    /// <param name="sharedOnly">Load only the tensors the checkpoint has with the layout's global
    /// shape and leave the others as they are (an LM checkpoint into a scalar-head model: what
    /// ModelOps.CopyShared does for a full model).</param>
    public static unsafe void LoadShard(string dir, ShardLayout layout, float* destination, bool allowNonFinite = false, bool sharedOnly = false)
    {
        if (!Directory.Exists(dir)) throw new DirectoryNotFoundException($"checkpoint directory {dir} not found");
        // Which file holds each tensor.
        string index = Path.Combine(dir, "model.safetensors.index.json"), single = Path.Combine(dir, "model.safetensors");
        Dictionary<string, string>? fileOf = null;
        if (File.Exists(index))
        {
            var o = JsonNode.Parse(File.ReadAllText(index)) as JsonObject ?? throw new InvalidDataException($"{index}: expected a JSON object");
            if (o["weight_map"] is not JsonObject wm) throw new InvalidDataException($"{index}: 'weight_map' missing");
            fileOf = wm.ToDictionary(kv => kv.Key, kv => kv.Value is JsonValue v && v.TryGetValue<string>(out var f) && f.Length > 0 && Path.GetFileName(f) == f
                ? f : throw new InvalidDataException($"{index}: weight_map entry '{kv.Key}' is not a file name of this directory"), StringComparer.Ordinal);
        }
        else if (!File.Exists(single)) throw new FileNotFoundException($"checkpoint {dir}: neither model.safetensors nor model.safetensors.index.json exists");
        var byFile = new Dictionary<string, List<ShardView>>(StringComparer.Ordinal);
        foreach (var v in layout.Views)
        {
            string file = "model.safetensors";
            if (fileOf is not null && !fileOf.TryGetValue(v.Name, out file!))
            {
                if (sharedOnly) continue;
                throw new InvalidDataException($"checkpoint {dir}: tensor '{v.Name}' is missing (not in {Path.GetFileName(index)})");
            }
            if (!byFile.TryGetValue(file, out var l)) byFile[file] = l = [];
            l.Add(v);
        }
        foreach (var (file, views) in byFile)
        {
            string path = Path.Combine(dir, file);
            using var fs = OpenShard(path);
            var (dataStart, entries) = ReadHeader(fs, path);
            var tensors = entries.ToDictionary(e => e.Name, e => e.Entry, StringComparer.Ordinal);
            foreach (var v in views)
            {
                if (!tensors.TryGetValue(v.Name, out var t))
                {
                    if (sharedOnly) continue;
                    throw new InvalidDataException($"{path}: tensor '{v.Name}' is missing");
                }
                if (!t.Shape.SequenceEqual(v.GlobalShape))
                    if (sharedOnly) continue;
                    else throw new InvalidDataException($"{path}: tensor '{v.Name}' has shape [{string.Join(", ", t.Shape)}], the model needs [{string.Join(", ", v.GlobalShape)}]");
                var dst = new Span<float>(destination + v.Offset, checked((int)v.LocalElements));
                ReadSlice(fs, path, dataStart + t.Start, t.Dtype, v, dst);
                if (!allowNonFinite) RefuseNonFinite(dst, v.Name, path);
            }
        }
    }

    /// <summary>Writes this shard's slices of the tensors <paramref name="names"/> (<paramref name="layout"/>'s
    /// views: whole tensors, or each cut to its tensor-parallel slice) from its flat buffer
    /// <paramref name="data"/> (elements of <paramref name="elementBytes"/> bytes, as the buffer holds
    /// them) into checkpoint files that exist at their full size: tensor t's element 0 is at byte
    /// <paramref name="at"/>[t].Offset of file <paramref name="at"/>[t].Path, the tensor row-major over
    /// its global shape (a flat fp32 file in the single device's layout, or a .safetensors file made
    /// by <see cref="CreateTensorFile"/>). A slice along dimension d is <c>outer</c> runs (the product
    /// of the dimensions before d) of <c>SliceLength x inner</c> elements, contiguous in the buffer and
    /// one positioned write each in the file: one run for a whole tensor or a column-parallel slice
    /// (dim 0), one per row for a row-parallel one (dim 1: its columns of every row, between the other
    /// ranks' columns). No staging buffer: the bytes go from the shard's buffer to the file. Every
    /// file written is fsynced before this returns. Other processes may write other byte ranges of
    /// the same files at the same time (the other owners of a sharded save).</summary>
    public static unsafe void WriteSlices(ShardLayout layout, byte* data, int elementBytes, IReadOnlyDictionary<string, (string Path, long Offset)> at,
                                          IReadOnlyCollection<string> names)
    {
        var byFile = new Dictionary<string, List<(ShardView View, long Offset)>>(StringComparer.Ordinal);
        foreach (var v in layout.Views)
        {
            if (!names.Contains(v.Name)) continue;
            if (!at.TryGetValue(v.Name, out var t)) throw new ArgumentException($"sharded save: no file offset for tensor '{v.Name}'");
            if (!byFile.TryGetValue(t.Path, out var l)) byFile[t.Path] = l = [];
            l.Add((v, t.Offset));
        }
        if (byFile.Values.Sum(l => l.Count) != names.Count) throw new ArgumentException($"sharded save: the shard holds {byFile.Values.Sum(l => l.Count)} of the {names.Count} tensors asked for");
        foreach (var (path, views) in byFile)
        {
            using var fs = new FileStream(path, FileMode.Open, FileAccess.Write, FileShare.ReadWrite, 1);
            long length = fs.Length;
            var handle = fs.SafeFileHandle;
            foreach (var (v, start) in views)
            {
                var (outer, runElements, runStart) = Runs(v);
                long runBytes = runElements * elementBytes, total = v.GlobalShape.Aggregate(1L, (a, d) => a * d) * elementBytes;
                if (start < 0 || start + total > length)
                    throw new InvalidDataException($"{path}: tensor '{v.Name}' at byte {start} ({total} bytes) does not fit in the file's {length} bytes");
                byte* src = data + v.Offset * elementBytes;
                for (long o = 0; o < outer; o++, src += runBytes)
                {
                    long fileAt = start + runStart(o) * elementBytes;
                    // Writes of up to 1 GiB each (RandomAccess takes an int-sized span).
                    for (long w = 0; w < runBytes;)
                    {
                        int n = (int)Math.Min(runBytes - w, 1 << 30);
                        RandomAccess.Write(handle, new ReadOnlySpan<byte>(src + w, n), fileAt + w);
                        w += n;
                    }
                }
            }
            fs.Flush(flushToDisk: true);
        }
    }

    /// <summary>Creates (or cuts back) <paramref name="path"/> to <paramref name="bytes"/> bytes of
    /// zeros, without writing them (a sparse file the shards' owners fill, <see cref="WriteSlices"/>); fsynced.</summary>
    public static void CreateFlat(string path, long bytes)
    {
        using var fs = new FileStream(path, FileMode.Create, FileAccess.Write, FileShare.ReadWrite);
        fs.SetLength(bytes);
        fs.Flush(flushToDisk: true);
    }

    /// <summary>Reads one shard (<paramref name="layout"/>: each tensor cut to its slice) of a flat
    /// fp32 file in the single-device layout <paramref name="full"/> by byte range: what
    /// <see cref="LoadShard"/> does for safetensors, for the run checkpoint's AdamW moments and fp32
    /// master. Refuses a file of the wrong size naming it.</summary>
    public static unsafe void LoadFlatShard(string path, ShardLayout layout, ShardLayout full, float* destination)
    {
        using var fs = OpenShard(path);
        if (fs.Length != full.TotalElements * 4) throw new InvalidDataException($"{path}: {fs.Length} bytes, expected {full.TotalElements * 4}");
        foreach (var v in layout.Views)
        {
            if (!full.TryGet(v.Name, out var f)) throw new ArgumentException($"{path}: tensor '{v.Name}' is not in the model");
            ReadSlice(fs, path, f.Offset * 4, "F32", v, new Span<float>(destination + v.Offset, checked((int)v.LocalElements)));
        }
    }

    /// <summary>Where a view's slice lies in its tensor stored row-major: the split dimension cuts the
    /// tensor into <c>Outer</c> runs (the product of the dimensions before it) of <c>RunElements</c>
    /// (SliceLength x the product of the dimensions after it) contiguous elements, run o starting
    /// <c>RunStart(o)</c> elements into the tensor; a whole tensor is one run from 0. The slice's runs
    /// follow one another in the shard's buffer. What <see cref="WriteSlices"/> writes and
    /// <see cref="ReadSlice"/> reads, one positioned write or read per run.</summary>
    private static (long Outer, long RunElements, Func<long, long> RunStart) Runs(ShardView v)
    {
        var g = v.GlobalShape;
        int split = v.SplitDim < 0 ? 0 : v.SplitDim;
        long outer = 1, inner = 1;
        for (int d = 0; d < split; d++) outer *= g[d];
        for (int d = split + 1; d < g.Length; d++) inner *= g[d];
        long first = v.SplitDim < 0 ? 0 : v.SliceStart, len = v.SplitDim < 0 ? g[0] : v.SliceLength, extent = g[split];
        return (outer, len * inner, o => (o * extent + first) * inner);
    }

    /// <summary>Reads a view's slice of a tensor stored row-major at <paramref name="start"/>
    /// (<see cref="Runs"/>), one positioned read per run.</summary>
    private static void ReadSlice(FileStream fs, string path, long start, string dtype, ShardView v, Span<float> dst)
    {
        int eb = dtype switch
        {
            "F32" => 4, "BF16" or "F16" => 2,
            _ => throw new InvalidDataException($"{path}: tensor '{v.Name}' has dtype {dtype} (supported: F32, BF16, F16)"),
        };
        var (outer, runElements, runStart) = Runs(v);
        int run = checked((int)runElements);
        var handle = fs.SafeFileHandle;
        byte[]? buf = eb == 4 ? null : new byte[run * eb];
        for (long o = 0; o < outer; o++)
        {
            long at = start + runStart(o) * eb;
            var target = dst.Slice((int)(o * run), run);
            var bytes = eb == 4 ? System.Runtime.InteropServices.MemoryMarshal.AsBytes(target) : buf.AsSpan();
            for (int got = 0; got < bytes.Length;)
            {
                int n = RandomAccess.Read(handle, bytes[got..], at + got);
                if (n <= 0) throw new InvalidDataException($"{path}: tensor '{v.Name}': the file ends inside its data");
                got += n;
            }
            if (eb == 2) Decode(dtype, buf!, target, v.Name, path);
        }
    }


    private static long NonNegativeInteger(JsonNode? n, string where)
    {
        if (n is JsonValue v && v.GetValueKind() == JsonValueKind.Number && v.TryGetValue<long>(out long x) && x >= 0) return x;
        throw new InvalidDataException($"{where}: {n?.ToJsonString() ?? "null"} is not a non-negative integer");
    }
}
