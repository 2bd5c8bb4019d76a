// rollouts.bin in a checkpoint of an async run: the batches generated ahead with weights older
// than the checkpoint's (Runs/AsyncRollouts.cs), so a resume trains on exactly the samples the
// uninterrupted run trains on. Per batch: the iteration, the policy version that sampled it, the
// generation calls' records (seconds and figures: metrics.jsonl's lines) and the generation
// outputs (tokens, log-probs, masks, EOS flags, rule-based scores) and the policy version of each
// generated token (format 2; a format-1 file, written before per-token versions, is read with every
// token of a batch at the batch's version, which is what it held). Under worker processes the
// per-action outputs of a queued batch stay with the workers until it is consumed: writing the file
// fetches them (Model/ActionFloats), so it holds the same bits. The examples are not stored:
// the run's example source gives them again for the iteration. Little-endian binary; the
// checkpoint manifest's SHA-256 covers the file, and reading names what is malformed.
using System.Text;
using ReaLNative.Engine.Dataflow;
using ReaLNative.Engine.Generation;
using ReaLNative.Engine.Stages;
using ReaLNative.Engine.Tasks;

namespace ReaLNative.Engine.Runs;

internal static class RolloutFile
{
    public const string Name = "rollouts.bin";
    private static readonly byte[] Magic = "REALNRO2"u8.ToArray();
    /// <summary>Format 1 (no per-token versions; no int arrays), still read.</summary>
    private static readonly byte[] MagicFormat1 = "REALNRO1"u8.ToArray();
    private const byte RolloutTag = 1, FloatsTag = 2, BoolsTag = 3, BytesTag = 4, IntsTag = 5;

    public static void Write(string path, IReadOnlyList<GeneratedBatch> batches, IReadOnlyList<string> keys)
    {
        using var w = new BinaryWriter(File.Create(path), Encoding.UTF8);
        w.Write(Magic);
        w.Write(batches.Count);
        foreach (var b in batches)
        {
            w.Write(b.Iteration); w.Write(b.Version);
            w.Write(b.Records.Count);
            foreach (var r in b.Records)
            {
                w.Write(r.Call); w.Write(r.Seconds);
                w.Write(r.Figures.Count);
                foreach (var (k, v) in r.Figures) { w.Write(k); w.Write(v); }
            }
            w.Write(keys.Count);
            foreach (var k in keys)
            {
                w.Write(k);
                switch (b.Batch.Get<object>(k))
                {
                    case Rollout ro:
                        w.Write(RolloutTag);
                        var g = ro.Gen;
                        Jagged(w, g.Prompts, (w, x) => w.Write(x));
                        Jagged(w, g.NewTokens, (w, x) => w.Write(x));
                        Jagged(w, g.LogProbs, (w, x) => w.Write(x));   // fetched from the workers when they kept them
                        // A filtered generation whose workers kept its log-probs sent no sampling mask (nothing reads one: the batch's logits_mask is empty).
                        var masks = g.MasksDropped ? null : g.Masks;
                        w.Write(masks is not null);
                        if (masks is not null) Jagged(w, masks, (w, x) => w.Write(x));
                        Array(w, g.EndedWithEos, (w, x) => w.Write(x));
                        w.Write(g.PrefilledTokens);
                        break;
                    case float[] f: w.Write(FloatsTag); Array(w, f, (w, x) => w.Write(x)); break;
                    case Model.ActionFloats f: w.Write(FloatsTag); Array(w, f.Values, (w, x) => w.Write(x)); break;
                    case bool[] f: w.Write(BoolsTag); Array(w, f, (w, x) => w.Write(x)); break;
                    case byte[] f: w.Write(BytesTag); Array(w, f, (w, x) => w.Write(x)); break;
                    case int[] f: w.Write(IntsTag); Array(w, f, (w, x) => w.Write(x)); break;
                    case var o: throw new InvalidOperationException($"{Name}: key '{k}' holds a {o?.GetType().Name ?? "null"}, which is not stored");
                }
            }
        }
    }

    /// <summary>The batches of <paramref name="path"/>, each as what fills a batch whose source keys
    /// are set (its "prompts" give the rollouts' examples).</summary>
    public static List<(int Iteration, Action<SampleBatch> Fill, IReadOnlyList<CallRecord> Records, int Version)> Read(string path, StageContext context)
    {
        var result = new List<(int, Action<SampleBatch>, IReadOnlyList<CallRecord>, int)>();
        using var r = new BinaryReader(File.OpenRead(path), Encoding.UTF8);
        int batch = -1;
        try
        {
            var magic = r.ReadBytes(Magic.Length);
            bool format1 = magic.AsSpan().SequenceEqual(MagicFormat1);
            if (!format1 && !magic.AsSpan().SequenceEqual(Magic))
                throw new InvalidDataException(magic.AsSpan().StartsWith("REALNRO"u8)
                    ? $"rollouts file format '{(char)magic[^1]}' is not known (this build reads 1 and 2)" : "not a rollouts file (bad magic)");
            int n = Count(r, 1 << 20);
            for (batch = 0; batch < n; batch++)
            {
                int iteration = r.ReadInt32(), version = r.ReadInt32();
                var records = new List<CallRecord>();
                int nr = Count(r, 64);
                for (int i = 0; i < nr; i++)
                {
                    string call = r.ReadString(); double seconds = r.ReadDouble();
                    var figures = new Dictionary<string, double>();
                    int nf = Count(r, 4096);
                    for (int f = 0; f < nf; f++) figures[r.ReadString()] = r.ReadDouble();
                    records.Add(new CallRecord(call, seconds, figures));
                }
                var values = new List<(string Key, Func<SampleBatch, object> Make)>();
                int nk = Count(r, 64);
                for (int i = 0; i < nk; i++)
                {
                    string key = r.ReadString();
                    byte tag = r.ReadByte();
                    switch (tag)
                    {
                        case RolloutTag:
                            var gen = new GenerationResult
                            {
                                Prompts = Jagged(r, r => r.ReadInt32()),
                                NewTokens = Jagged(r, r => r.ReadInt32()),
                                LogProbs = Jagged(r, r => r.ReadSingle()),
                                Masks = r.ReadBoolean() ? Jagged(r, r => r.ReadByte()) : null,
                                EndedWithEos = Array(r, r => r.ReadBoolean()),
                                PrefilledTokens = r.ReadInt64(),
                            };
                            values.Add((key, b => context.Assemble(b.Get<TaskExample[]>("prompts"), gen)));
                            break;
                        case FloatsTag: { var a = Array(r, r => r.ReadSingle()); values.Add((key, _ => a)); break; }
                        case BoolsTag: { var a = Array(r, r => r.ReadBoolean()); values.Add((key, _ => a)); break; }
                        case BytesTag: { var a = Array(r, r => r.ReadByte()); values.Add((key, _ => a)); break; }
                        case IntsTag when !format1: { var a = Array(r, r => r.ReadInt32()); values.Add((key, _ => a)); break; }
                        default: throw new InvalidDataException($"key '{key}' has unknown type tag {tag}");
                    }
                }
                result.Add((iteration, b => { foreach (var (k, make) in values) b.Set(k, make(b)); }, records, version));
            }
            if (r.BaseStream.Position != r.BaseStream.Length) throw new InvalidDataException($"{r.BaseStream.Length - r.BaseStream.Position} bytes after the last batch");
        }
        catch (EndOfStreamException) { throw new InvalidDataException($"{path}: truncated{(batch >= 0 ? $" in batch {batch}" : "")}"); }
        catch (InvalidDataException e) when (!e.Message.StartsWith(path, StringComparison.Ordinal))
        {
            throw new InvalidDataException($"{path}: {(batch >= 0 ? $"batch {batch}: " : "")}{e.Message}");
        }
        return result;
    }

    private static int Count(BinaryReader r, int max)
    {
        int n = r.ReadInt32();
        if (n < 0 || n > max) throw new InvalidDataException($"count {n} outside [0, {max}]");
        return n;
    }

    private static void Array<T>(BinaryWriter w, T[] a, Action<BinaryWriter, T> put)
    {
        w.Write(a.Length);
        foreach (var x in a) put(w, x);
    }

    private static void Jagged<T>(BinaryWriter w, T[][] a, Action<BinaryWriter, T> put)
    {
        w.Write(a.Length);
        foreach (var x in a) Array(w, x, put);
    }

    private static T[] Array<T>(BinaryReader r, Func<BinaryReader, T> get)
    {
        int n = Count(r, 1 << 28);
        var a = new T[n];
        for (int i = 0; i < n; i++) a[i] = get(r);
        return a;
    }

    private static T[][] Jagged<T>(BinaryReader r, Func<BinaryReader, T> get)
    {
        int n = Count(r, 1 << 24);
        var a = new T[n][];
        for (int i = 0; i < n; i++) a[i] = Array(r, get);
        return a;
    }
}
