// The data the master and the model workers exchange over the data plane (UCX), and the JSON the
// control plane carries about it. Batches, gradients and outputs travel as length-prefixed blobs
// (an 8-byte size message, then the body, on consecutive tags) so a receiver never has to know a
// size in advance and never accepts more than its bound; the control message names the tags. The
// binary layout is little-endian and read with bounds checks: a malformed blob is an
// InvalidDataException naming what is wrong, never an out-of-range read.
using System.Text.Json.Nodes;
using ReaLNative.Engine.Generation;
using ReaLNative.Engine.Layout;
using ReaLNative.Engine.Model;
using ReaLNative.Engine.Optim;
using ReaLNative.Engine.Parallelism;
using ReaLNative.Engine.Tasks;
using ReaLNative.Engine.Transport;

namespace ReaLNative.Engine.Workers;

/// <summary>Tag spaces on the job's transport. Model-parallel groups (ShardComm, Collectives) use
/// tags below 2^38 (group ids below <see cref="MaxGroups"/>); reallocation runs on
/// <see cref="Realloc"/>, which sets bit 38; master-worker blobs use bit 39 with bit 38 clear.</summary>
internal static class Tags
{
    public const int MaxGroups = 1024;
    public const long ReallocBit = 1L << 38;
    public const long DataBase = 1L << 39;

    /// <summary>The transport seen by reallocation: every tag with bit 38 set.</summary>
    public static ITransport Realloc(ITransport t) => new TagOffsetTransport(t, ReallocBit);

    /// <summary>Tag of data blob <paramref name="seq"/> (each blob takes two tags: size and body).</summary>
    public static long Data(long seq) => DataBase | (seq * 2 & (ReallocBit - 1));

    private sealed class TagOffsetTransport(ITransport inner, long bit) : ITransport
    {
        public int Rank => inner.Rank;
        public int Size => inner.Size;
        public TimeSpan Timeout { get => inner.Timeout; set => inner.Timeout = value; }
        public Task SendAsync(int peer, long tag, nint data, long bytes, CancellationToken ct = default) => inner.SendAsync(peer, tag | bit, data, bytes, ct);
        public Task RecvAsync(int peer, long tag, nint data, long bytes, CancellationToken ct = default) => inner.RecvAsync(peer, tag | bit, data, bytes, ct);
        public int? LocalProcessOf(int peer) => inner.LocalProcessOf(peer);
        public void Dispose() { }  // the inner transport belongs to its owner
    }
}

/// <summary>Length-prefixed blobs over a transport (buffers pinned for the operation's lifetime).</summary>
internal static class Blobs
{
    /// <summary>Largest blob accepted (1 GiB): batches and outputs of one call, never parameters.</summary>
    public const long MaxBytes = 1L << 30;

    /// <summary>Sends <paramref name="body"/>, which must come from <see cref="WireWriter.ToArray"/>
    /// (the pinned object heap: it never moves, so one blob goes to many peers without a copy).</summary>
    /// <remarks>The transport reads both buffers when it gets to them (UCX: when its progress thread
    /// posts the send, or later when the lane is busy), possibly after this method has returned its
    /// task; "pinned" only means "never moved": an unreachable pinned array is collected and its
    /// memory given to the next allocation. So each buffer is used after the awaits, which keeps it
    /// in the state machine (a local used only before an await is not), and a failed operation's
    /// buffers are kept for good (<see cref="AbandonedBuffers"/>). Was: the 8-byte size was
    /// unreachable once posted, and under a collection workers read a size of 0 or of a stranger's
    /// bytes ("malformed data at byte 0 of 0", "Message truncated").</remarks>
    public static async Task SendAsync(ITransport t, int peer, long tag, byte[] body)
    {
        var size = GC.AllocateUninitializedArray<byte>(8, pinned: true);
        BitConverter.TryWriteBytes(size, (long)body.Length);
        try
        {
            var head = t.SendAsync(peer, tag, Ptr(size), 8);
            try
            {
                if (body.Length > 0) await t.SendAsync(peer, tag + 1, Ptr(body), body.Length).ConfigureAwait(false);
            }
            finally { await head.ConfigureAwait(false); }   // never leave the head in flight behind a failed body
        }
        catch
        {
            AbandonedBuffers.Keep(size, body);
            throw;
        }
        GC.KeepAlive(size);
        GC.KeepAlive(body);
    }

    public static async Task<byte[]> RecvAsync(ITransport t, int peer, long tag, string what)
    {
        var size = GC.AllocateUninitializedArray<byte>(8, pinned: true);
        byte[]? body = null;
        try
        {
            await t.RecvAsync(peer, tag, Ptr(size), 8).ConfigureAwait(false);
            long n = BitConverter.ToInt64(size);
            if (n < 0 || n > MaxBytes) throw new InvalidDataException($"{what}: rank {peer} announced a {n}-byte blob (limit {MaxBytes})");
            body = GC.AllocateUninitializedArray<byte>((int)n, pinned: true);
            if (n > 0) await t.RecvAsync(peer, tag + 1, Ptr(body), n).ConfigureAwait(false);
        }
        catch (Exception e) when (e is not InvalidDataException)
        {
            AbandonedBuffers.Keep(size, body);   // a receive UCX could not cancel may still write into them
            throw;
        }
        GC.KeepAlive(size);
        return body;
    }

    // Arrays from the pinned object heap never move.
    private static nint Ptr(byte[] a) => System.Runtime.InteropServices.Marshal.UnsafeAddrOfPinnedArrayElement(a, 0);
}

/// <summary>Binary writer of the blob layouts.</summary>
internal sealed class WireWriter
{
    private readonly MemoryStream _buffer = new();
    private readonly BinaryWriter _writer;
    public WireWriter() => _writer = new BinaryWriter(_buffer);

    public WireWriter Int(int v) { _writer.Write(v); return this; }
    public WireWriter Doubles(ReadOnlySpan<double> v) { _writer.Write(v.Length); foreach (var x in v) _writer.Write(x); return this; }
    public WireWriter Ints(ReadOnlySpan<int> v) { _writer.Write(v.Length); foreach (var x in v) _writer.Write(x); return this; }
    public WireWriter Floats(ReadOnlySpan<float> v) { _writer.Write(v.Length); foreach (var x in v) _writer.Write(x); return this; }
    public WireWriter Bytes(ReadOnlySpan<byte> v) { _writer.Write(v.Length); _writer.Write(v); return this; }

    /// <summary>Sequences and their prompt lengths (what <see cref="ScoredBatch"/> is built from).</summary>
    public WireWriter Batch(ScoredBatch b)
    {
        Int(b.Packed.Count);
        for (int i = 0; i < b.Packed.Count; i++)
        {
            var seq = b.Packed.Sequence(i);
            // prompt length = position of the first action (or the whole sequence when it has none)
            int prompt = b.ActionCu[i + 1] > b.ActionCu[i] ? b.ActionIndex[b.ActionCu[i]] - b.Packed.CuSeqlens[i] : seq.Length;
            Int(prompt).Ints(seq);
        }
        return this;
    }

    public WireWriter Prompts(IReadOnlyList<int[]> prompts)
    {
        Int(prompts.Count);
        foreach (var p in prompts) Ints(p);
        return this;
    }

    /// <summary>A data-parallel rank's share of a generation's prompts: a contiguous run of the batch
    /// (Split.Contiguous), as the id of its first prompt, then the prompts
    /// (<see cref="WireReader.PromptShare"/>).</summary>
    public WireWriter PromptShare(int first, IReadOnlyList<int[]> prompts) => Int(first).Prompts(prompts);

    /// <summary>The reference answers of a share's prompts' examples, for the ranks that score their
    /// answers (Tasks/SequenceScoring.cs: the pure rules read nothing else of an example), as UTF-8.</summary>
    public WireWriter Answers(IReadOnlyList<string> answers)
    {
        Int(answers.Count);
        foreach (var a in answers) Bytes(System.Text.Encoding.UTF8.GetBytes(a));
        return this;
    }

    public WireWriter Output(ShardOutput o) => Ints(o.Ids).Floats(o.Actions).Floats(o.Last);

    /// <summary>A collecting rank's generation output; without <paramref name="perToken"/> (the rank
    /// keeps the log-probs, RemoteReplica.KeptGenerate, and a synchronous run reads no sampling mask)
    /// every sequence's log-probs and mask are written empty.</summary>
    /// <remarks>Without <paramref name="ids"/> (the rank keeps the sequences, their log-probs, and
    /// scores them: the master reads the ids only if it needs them) each sequence is its new-token
    /// count and whether it ended with EOS, nothing else.</remarks>
    public WireWriter Generation((int[] Ids, GenerationResult Result) g, bool perToken = true, bool ids = true)
    {
        if (!ids && perToken) throw new ArgumentException("a generation output without token ids has no per-token values either");
        Ints(g.Ids);
        for (int k = 0; k < g.Ids.Length; k++)
        {
            if (!ids)
            {
                Int(g.Result.NewTokens[k].Length).Int(g.Result.EndedWithEos[k] ? 1 : 0);
                continue;
            }
            Ints(g.Result.NewTokens[k]).Floats(perToken ? g.Result.LogProbs[k] : []).Int(g.Result.EndedWithEos[k] ? 1 : 0);
            Bytes(perToken && g.Result.Masks is { } m ? m[k] : []);
        }
        return this;
    }

    /// <summary>The blob, on the pinned object heap (what <see cref="Blobs.SendAsync"/> needs).</summary>
    public byte[] ToArray()
    {
        _writer.Flush();
        var blob = GC.AllocateUninitializedArray<byte>((int)_buffer.Length, pinned: true);
        _buffer.GetBuffer().AsSpan(0, blob.Length).CopyTo(blob);
        return blob;
    }
}

/// <summary>Bounds-checked reader of the blob layouts.</summary>
internal sealed class WireReader(byte[] data, string what)
{
    private int _at;

    private InvalidDataException Bad(string why) => new($"{what}: malformed data at byte {_at} of {data.Length}: {why}");

    public int Int()
    {
        if (_at + 4 > data.Length) throw Bad("truncated");
        int v = BitConverter.ToInt32(data, _at);
        _at += 4;
        return v;
    }

    private int Count(int elementBytes)
    {
        int n = Int();
        if (n < 0 || (long)n * elementBytes > data.Length - _at) throw Bad($"a count of {n} exceeds what is left");
        return n;
    }

    public int[] Ints()
    {
        int n = Count(4);
        var r = new int[n];
        Buffer.BlockCopy(data, _at, r, 0, n * 4);
        _at += n * 4;
        return r;
    }

    public float[] Floats()
    {
        int n = Count(4);
        var r = new float[n];
        Buffer.BlockCopy(data, _at, r, 0, n * 4);
        _at += n * 4;
        return r;
    }

    /// <summary>The answers <see cref="WireWriter.Answers"/> wrote (malformed UTF-8 is refused).</summary>
    public string[] Answers()
    {
        int n = Count(4);
        var utf8 = new System.Text.UTF8Encoding(false, throwOnInvalidBytes: true);
        var answers = new string[n];
        for (int i = 0; i < n; i++)
        {
            var b = Bytes();
            try { answers[i] = utf8.GetString(b); }
            catch (System.Text.DecoderFallbackException) { throw Bad($"answer {i} is not UTF-8"); }
        }
        return answers;
    }

    public double[] Doubles()
    {
        int n = Count(8);
        var r = new double[n];
        Buffer.BlockCopy(data, _at, r, 0, n * 8);
        _at += n * 8;
        return r;
    }

    public byte[] Bytes()
    {
        int n = Count(1);
        var r = data.AsSpan(_at, n).ToArray();
        _at += n;
        return r;
    }

    public ScoredBatch Batch()
    {
        int n = Count(8);
        var seqs = new int[n][];
        var prompts = new int[n];
        for (int i = 0; i < n; i++) { prompts[i] = Int(); seqs[i] = Ints(); }
        try { return new ScoredBatch(seqs, prompts); }
        catch (ArgumentException e) { throw Bad(e.Message); }
    }

    public int[][] Prompts()
    {
        int n = Count(4);
        var r = new int[n][];
        for (int i = 0; i < n; i++) r[i] = Ints();
        return r;
    }

    /// <summary>A share of prompts (<see cref="WireWriter.PromptShare"/>) of a batch of
    /// <paramref name="batch"/> prompts: their ids (first, first + 1, ...) and the prompts; the run
    /// must lie inside the batch.</summary>
    public (int[] Ids, int[][] Prompts) PromptShare(int batch)
    {
        int first = Int();
        var prompts = Prompts();
        if (first < 0 || first > batch - prompts.Length) throw Bad($"prompts {first}..{first + prompts.Length - 1} outside a batch of {batch}");
        return (Enumerable.Range(first, prompts.Length).ToArray(), prompts);
    }

    public ShardOutput Output() => new(Ints(), Floats(), Floats());

    /// <summary>A collecting rank's generation output (<see cref="WireWriter.Generation"/>); without
    /// <paramref name="tokenIds"/>, the new-token counts only (the result's NewTokenCounts; its
    /// NewTokens then fail: the ids stayed with the worker), each at most <paramref name="maxNewTokens"/>.</summary>
    public (int[] Ids, GenerationResult Result) Generation(IReadOnlyList<int[]> prompts, bool masks, bool tokenIds = true, int maxNewTokens = int.MaxValue)
    {
        var ids = Ints();
        var tok = tokenIds ? new int[ids.Length][] : null; var counts = new int[ids.Length];
        var lp = new float[ids.Length][]; var eos = new bool[ids.Length];
        var m = masks ? new byte[ids.Length][] : null;
        for (int k = 0; k < ids.Length; k++)
        {
            if ((uint)ids[k] >= (uint)prompts.Count) throw Bad($"prompt id {ids[k]} of {prompts.Count}");
            if (tok is null)
            {
                if ((counts[k] = Int()) < 0 || counts[k] > maxNewTokens) throw Bad($"sequence {ids[k]}: {counts[k]} new tokens (at most {maxNewTokens})");
                eos[k] = Int() != 0; lp[k] = [];
                if (m is not null) m[k] = [];
                continue;
            }
            counts[k] = (tok[k] = Ints()).Length;
            lp[k] = Floats(); eos[k] = Int() != 0;
            var mk = Bytes();
            if (m is not null) m[k] = mk;
        }
        return (ids, new GenerationResult { Prompts = ids.Select(i => prompts[i]).ToArray(), NewTokens = tok!, NewTokenCounts = counts, LogProbs = lp, Masks = m, EndedWithEos = eos });
    }

    public void End()
    {
        if (_at != data.Length) throw Bad($"{data.Length - _at} trailing bytes");
    }
}

/// <summary>JSON forms of the metadata commands carry (AOT-safe: no reflection).</summary>
internal static class WireJson
{
    public static JsonObject Config(LlamaConfig c) => new()
    {
        ["layers"] = c.Layers, ["hidden"] = c.Hidden, ["intermediate"] = c.Intermediate, ["heads"] = c.Heads, ["kv_heads"] = c.KvHeads,
        ["vocab"] = c.Vocab, ["max_positions"] = c.MaxPositions, ["rms_eps"] = c.RmsEps, ["rope_theta"] = c.RopeTheta, ["tied"] = c.TiedEmbeddings,
        ["family"] = c.FamilyJson(),
    };

    public static LlamaConfig Config(JsonNode? j) => new LlamaConfig
    {
        Layers = Int(j, "layers"), Hidden = Int(j, "hidden"), Intermediate = Int(j, "intermediate"), Heads = Int(j, "heads"), KvHeads = Int(j, "kv_heads"),
        Vocab = Int(j, "vocab"), MaxPositions = Int(j, "max_positions"), RmsEps = (float)Num(j, "rms_eps"), RopeTheta = (float)Num(j, "rope_theta"),
        TiedEmbeddings = j?["tied"]?.GetValue<bool>() ?? throw Missing("tied"),
    }.WithFamily(j?["family"]);

    public static JsonObject Layout(ParallelLayout l) => new()
    {
        ["devices"] = new JsonArray(l.Devices.Select(d => (JsonNode)d).ToArray()), ["pp"] = l.Pp, ["dp"] = l.Dp, ["tp"] = l.Tp,
    };

    public static ParallelLayout Layout(JsonNode? j)
    {
        var devs = j?["devices"] as JsonArray ?? throw Missing("devices");
        try { return new ParallelLayout(devs.Select(d => d!.GetValue<int>()).ToArray(), Int(j, "pp"), Int(j, "dp"), Int(j, "tp")); }
        catch (ArgumentException e) { throw new InvalidDataException($"layout: {e.Message}"); }
    }

    public static JsonObject Optimizer(OptimizerSpec o) => new()
    {
        ["lr"] = o.Schedule.Lr, ["warmup"] = o.Schedule.WarmupSteps, ["decay"] = o.Schedule.Decay, ["min_lr_ratio"] = o.Schedule.MinLrRatio,
        ["total_steps"] = o.Schedule.TotalSteps, ["beta1"] = o.Beta1, ["beta2"] = o.Beta2, ["eps"] = o.Eps, ["weight_decay"] = o.WeightDecay, ["clip"] = o.ClipGradNorm,
    };

    public static OptimizerSpec Optimizer(JsonNode? j) => new(
        new LrSchedule(Num(j, "lr"), Int(j, "warmup"), j?["decay"]?.GetValue<string>() ?? throw Missing("decay"), Num(j, "min_lr_ratio"), Int(j, "total_steps")),
        (float)Num(j, "beta1"), (float)Num(j, "beta2"), (float)Num(j, "eps"), (float)Num(j, "weight_decay"), (float)Num(j, "clip"));

    public static JsonObject Generation(GenerationOptions o)
    {
        var j = GenerationFields(o);
        // Only a chunked generation (async weight_update: interrupt) carries its pause.
        if (o.Pause is { } p) j["pause"] = new JsonObject { ["session"] = p.Session, ["stop_before_step"] = p.StopBeforeStep, ["resume"] = p.Resume };
        return j;
    }

    private static JsonObject GenerationFields(GenerationOptions o) => new()
    {
        ["max_new_tokens"] = o.MaxNewTokens, ["temperature"] = o.Temperature, ["top_k"] = o.TopK, ["top_p"] = o.TopP, ["eos"] = o.EosToken, ["seed"] = o.Seed.ToString(System.Globalization.CultureInfo.InvariantCulture),
        ["continuous"] = o.Continuous, ["batch_independent_prefill"] = o.BatchIndependentPrefill,
    };

    public static GenerationOptions Generation(JsonNode? j) => new()
    {
        MaxNewTokens = Int(j, "max_new_tokens"), Temperature = (float)Num(j, "temperature"), TopK = Int(j, "top_k"), TopP = (float)Num(j, "top_p"), EosToken = Int(j, "eos"),
        Seed = ulong.Parse(j?["seed"]?.GetValue<string>() ?? throw Missing("seed"), System.Globalization.CultureInfo.InvariantCulture),
        Continuous = j?["continuous"]?.GetValue<bool>() ?? throw Missing("continuous"),
        BatchIndependentPrefill = j?["batch_independent_prefill"]?.GetValue<bool>() ?? throw Missing("batch_independent_prefill"),
        Pause = j?["pause"] is { } p ? new GenerationPause(Long(p, "session"), Int(p, "stop_before_step"), p["resume"]?.GetValue<bool>() ?? throw Missing("resume")) : null,
    };

    public static int Int(JsonNode? j, string name) => j?[name]?.GetValue<int>() ?? throw Missing(name);
    public static long Long(JsonNode? j, string name) => j?[name]?.GetValue<long>() ?? throw Missing(name);
    public static double Num(JsonNode? j, string name) => j?[name]?.GetValue<double>() ?? throw Missing(name);
    public static string Str(JsonNode? j, string name) => j?[name]?.GetValue<string>() ?? throw Missing(name);

    private static InvalidDataException Missing(string name) => new($"command field '{name}' missing or null");
}
