using System.Text.Json;
using System.Text.Json.Nodes;
using ReaLNative.Engine.Layout;

namespace ReaLNative.Engine.Model;

/// <summary>LLaMA-family architecture, as in a Hugging Face <c>config.json</c>.</summary>
internal sealed record LlamaConfig
{
    /// <summary>Decoder blocks (num_hidden_layers).</summary>
    public int Layers { get; init; }
    /// <summary>Model width (hidden_size).</summary>
    public int Hidden { get; init; }
    /// <summary>SwiGLU width (intermediate_size).</summary>
    public int Intermediate { get; init; }
    /// <summary>Query heads (num_attention_heads).</summary>
    public int Heads { get; init; }
    /// <summary>Key/value heads (num_key_value_heads; GQA when &lt; Heads).</summary>
    public int KvHeads { get; init; }
    /// <summary>Vocabulary size (vocab_size).</summary>
    public int Vocab { get; init; }
    /// <summary>Longest sequence (max_position_embeddings).</summary>
    public int MaxPositions { get; init; } = 4096;
    /// <summary>RMSNorm epsilon (rms_norm_eps).</summary>
    public float RmsEps { get; init; } = 1e-5f;
    /// <summary>Rotary base (rope_theta).</summary>
    public float RopeTheta { get; init; } = 10000f;
    /// <summary>lm_head shares model.embed_tokens.weight (tie_word_embeddings).</summary>
    public bool TiedEmbeddings { get; init; }
    /// <summary>LLaMA 3.1's rotary frequency scaling (rope_scaling with rope_type "llama3"); null: none.</summary>
    public Llama3RopeScaling? RopeScaling { get; init; }
    /// <summary>q_proj, k_proj and v_proj have biases (Qwen2; o_proj and the MLP have none).</summary>
    public bool QkvBias { get; init; }
    /// <summary>The config.json model_type written back (llama, mistral, qwen2).</summary>
    public string ModelType { get; init; } = "llama";

    /// <summary>Per-head width.</summary>
    public int HeadDim => Hidden / Heads;

    /// <summary>The presets of docs/experiment-config.md.</summary>
    public static LlamaConfig Preset(string name) => name switch
    {
        "tiny" => new() { Layers = 2, Hidden = 64, Intermediate = 176, Heads = 4, KvHeads = 2, Vocab = 32, MaxPositions = 128 },
        "gpt2-small" => new() { Layers = 12, Hidden = 768, Intermediate = 2048, Heads = 12, KvHeads = 12, Vocab = 50304 },
        "llama-7b" => new() { Layers = 32, Hidden = 4096, Intermediate = 11008, Heads = 32, KvHeads = 32, Vocab = 32000 },
        "llama-13b" => new() { Layers = 40, Hidden = 5120, Intermediate = 13824, Heads = 40, KvHeads = 40, Vocab = 32000 },
        "llama-34b" => new() { Layers = 48, Hidden = 8192, Intermediate = 22016, Heads = 64, KvHeads = 8, Vocab = 32000 },
        "llama-70b" => new() { Layers = 80, Hidden = 8192, Intermediate = 28672, Heads = 64, KvHeads = 8, Vocab = 32000 },
        _ => throw new ArgumentException($"unknown model preset '{name}' (allowed: tiny, gpt2-small, llama-7b, llama-13b, llama-34b, llama-70b)"),
    };

    /// <summary>Checks the numbers; the message names the field.</summary>
    public LlamaConfig Validate()
    {
        void Positive(int v, string n) { if (v <= 0) throw new ArgumentException($"model config: {n} must be > 0 (got {v})"); }
        Positive(Layers, "num_hidden_layers");
        Positive(Hidden, "hidden_size");
        Positive(Intermediate, "intermediate_size");
        Positive(Heads, "num_attention_heads");
        Positive(KvHeads, "num_key_value_heads");
        Positive(Vocab, "vocab_size");
        Positive(MaxPositions, "max_position_embeddings");
        if (Hidden % Heads != 0) throw new ArgumentException($"model config: hidden_size {Hidden} is not a multiple of num_attention_heads {Heads}");
        if (Heads % KvHeads != 0) throw new ArgumentException($"model config: num_attention_heads {Heads} is not a multiple of num_key_value_heads {KvHeads}");
        if (HeadDim % 2 != 0) throw new ArgumentException($"model config: head dim {HeadDim} must be even for rotary embeddings");
        if (!(RmsEps > 0)) throw new ArgumentException($"model config: rms_norm_eps must be > 0 (got {RmsEps})");
        if (!(RopeTheta > 0)) throw new ArgumentException($"model config: rope_theta must be > 0 (got {RopeTheta})");
        RopeScaling?.Validate();
        if (ModelType is not ("llama" or "mistral" or "qwen2")) throw new ArgumentException($"model config: model_type '{ModelType}' is not supported (supported: llama, mistral, qwen2)");
        return this;
    }

    /// <summary>The parameter layout shape for a language-model head or a scalar head.</summary>
    public LlamaShape Shape(bool scalarHead) =>
        new(Layers, Hidden, Intermediate, Heads, KvHeads, Vocab, scalarHead ? 1 : TiedEmbeddings ? 0 : Vocab, QkvBias);

    /// <summary>The rotary inverse frequencies of pairs i &lt; HeadDim/2, in double: rope_theta^(-2i/HeadDim),
    /// then <see cref="RopeScaling"/>'s adjustment when set.</summary>
    public double[] RotaryInverseFrequencies()
    {
        var f = new double[HeadDim / 2];
        for (int i = 0; i < f.Length; i++) f[i] = Math.Pow(RopeTheta, -2.0 * i / HeadDim);
        return RopeScaling is { } s ? s.Apply(f) : f;
    }

    /// <summary>Parameters of the language model (for FLOP counts).</summary>
    public long ParameterCount(bool scalarHead = false) => Shape(scalarHead).Parameters;

    /// <summary>Reads a Hugging Face config.json; errors name the file and the field.</summary>
    public static LlamaConfig FromHfJson(string path)
    {
        if (Directory.Exists(path)) throw new InvalidDataException($"model config {path} is a directory, not a config.json file");
        if (!File.Exists(path)) throw new FileNotFoundException($"model config {path} not found", path);
        string text = File.ReadAllText(path);
        JsonNode? root;
        try { root = JsonNode.Parse(text); }
        catch (JsonException e) { throw new InvalidDataException($"{path}: not valid JSON ({e.Message})"); }
        if (root is not JsonObject o) throw new InvalidDataException($"{path}: expected a JSON object");
        int Int(string k, int? dflt = null)
        {
            if (o[k] is JsonValue v && v.TryGetValue<int>(out var x)) return x;
            if (o[k] is null && dflt is int d) return d;
            throw new InvalidDataException($"{path}: '{k}' must be an integer{(o[k] is null ? " and is missing" : "")}");
        }
        float Flt(string k, float dflt) => o[k] is JsonValue v && v.TryGetValue<double>(out var x) ? (float)x : o[k] is null ? dflt
            : throw new InvalidDataException($"{path}: '{k}' must be a number");
        int heads = Int("num_attention_heads");
        RefuseUnsupported(o, path);
        int maxPositions = Int("max_position_embeddings", 4096);
        string modelType = o["model_type"] is JsonValue mtv && mtv.TryGetValue<string>(out var mts) ? mts : "llama";
        // Mistral's sliding-window attention equals full causal attention for sequences within the
        // window: such a checkpoint loads with its context limited to the window. (Qwen2 configs
        // carry sliding_window but attend fully unless use_sliding_window is true.)
        bool windowed = o["use_sliding_window"] is JsonValue usw && usw.TryGetValue<bool>(out var uses) ? uses : modelType != "qwen2";
        if (windowed && o["sliding_window"] is JsonValue sw && sw.TryGetValue<int>(out var window) && window > 0) maxPositions = Math.Min(maxPositions, window);
        return new LlamaConfig
        {
            Layers = Int("num_hidden_layers"),
            Hidden = Int("hidden_size"),
            Intermediate = Int("intermediate_size"),
            Heads = heads,
            KvHeads = Int("num_key_value_heads", heads),
            Vocab = Int("vocab_size"),
            MaxPositions = maxPositions,
            RmsEps = Flt("rms_norm_eps", 1e-5f),
            RopeTheta = Flt("rope_theta", 10000f),
            TiedEmbeddings = o["tie_word_embeddings"] is JsonValue t && t.TryGetValue<bool>(out var b) && b,
            RopeScaling = o["rope_scaling"] is JsonObject rs && !Llama3RopeScaling.IsDefault(rs) ? Llama3RopeScaling.FromHfJson(rs, path) : null,
            QkvBias = modelType == "qwen2",
            ModelType = modelType,
        }.Validate();
    }

    /// <summary>Refuses what this LLaMA implementation would silently compute differently: other model
    /// types, rope scaling other than LLaMA 3.1's "llama3", biases other than Qwen2's q/k/v ones, an
    /// explicit head_dim other than hidden/heads, activations other than SiLU.</summary>
    private static void RefuseUnsupported(JsonObject o, string path)
    {
        string? Str(string k) => o[k] is JsonValue v && v.TryGetValue<string>(out var s) ? s : null;
        if (Str("model_type") is { } mt && mt is not ("llama" or "mistral" or "qwen2"))
            throw new InvalidDataException($"{path}: model_type '{mt}' is not supported (supported: llama, mistral, qwen2)");
        foreach (var k in new[] { "attention_bias", "mlp_bias" })
            if (o[k] is JsonValue b && b.TryGetValue<bool>(out var on) && on)
                throw new InvalidDataException($"{path}: {k} true is not supported (biases: only qwen2's q/k/v projections have them)");
        if (Str("hidden_act") is { } act && act != "silu") throw new InvalidDataException($"{path}: hidden_act '{act}' is not supported (supported: silu)");
        if (o["head_dim"] is JsonValue hd && hd.TryGetValue<int>(out var headDim) && o["hidden_size"] is JsonValue hs && hs.TryGetValue<int>(out var hidden)
            && o["num_attention_heads"] is JsonValue nh && nh.TryGetValue<int>(out var nHeads) && nHeads > 0 && headDim * nHeads != hidden)
            throw new InvalidDataException($"{path}: head_dim {headDim} is not hidden_size / num_attention_heads ({hidden} / {nHeads}): not supported");
    }

    /// <summary>The fields a worker process needs beyond the basic shape (see Workers/Wire.cs): null when all are defaults.</summary>
    public JsonObject? FamilyJson()
    {
        if (RopeScaling is null && !QkvBias && ModelType == "llama") return null;
        var o = new JsonObject { ["model_type"] = ModelType, ["qkv_bias"] = QkvBias };
        if (RopeScaling is { } s) o["rope_scaling"] = s.ToHfJson();
        return o;
    }

    /// <summary>This config with <see cref="FamilyJson"/>'s fields (null: unchanged).</summary>
    public LlamaConfig WithFamily(JsonNode? family) => family is not JsonObject f ? this : this with
    {
        ModelType = f["model_type"]?.GetValue<string>() ?? "llama",
        QkvBias = f["qkv_bias"]?.GetValue<bool>() ?? false,
        RopeScaling = f["rope_scaling"] is JsonObject rs ? Llama3RopeScaling.FromHfJson(rs, "worker config") : null,
    };

    /// <summary>Writes a Hugging Face config.json (LlamaForCausalLM / Qwen2ForCausalLM, or the
    /// ...ForSequenceClassification with num_labels 1); <paramref name="torchDtype"/>: the stored tensors' dtype (float32 | bfloat16).</summary>
    public string ToHfJson(bool scalarHead = false, string torchDtype = "float32")
    {
        string arch = ModelType switch { "qwen2" => "Qwen2", "mistral" => "Mistral", _ => "Llama" };
        var o = new JsonObject
        {
            ["architectures"] = new JsonArray(arch + (scalarHead ? "ForSequenceClassification" : "ForCausalLM")),
            ["model_type"] = ModelType,
            ["hidden_act"] = "silu",
            ["num_hidden_layers"] = Layers,
            ["hidden_size"] = Hidden,
            ["intermediate_size"] = Intermediate,
            ["num_attention_heads"] = Heads,
            ["num_key_value_heads"] = KvHeads,
            ["vocab_size"] = Vocab,
            ["max_position_embeddings"] = MaxPositions,
            ["rms_norm_eps"] = RmsEps,
            ["rope_theta"] = RopeTheta,
            ["tie_word_embeddings"] = TiedEmbeddings,
            ["torch_dtype"] = torchDtype,
        };
        if (RopeScaling is { } rs) o["rope_scaling"] = rs.ToHfJson();
        if (ModelType == "qwen2") o["use_sliding_window"] = false;
        // Mistral loaded with its context cut to its window attends fully within max_position_embeddings;
        // an explicit null keeps transformers from applying its default window (4096).
        if (ModelType == "mistral") o["sliding_window"] = null;
        if (scalarHead) o["num_labels"] = 1;
        return o.ToJsonString(new JsonSerializerOptions { WriteIndented = true });
    }
}

/// <summary>LLaMA 3.1's rotary scaling (config.json rope_scaling, rope_type "llama3"), as Hugging Face
/// transformers computes it: with wavelength w = 2 pi / f of each unscaled inverse frequency f, pairs
/// with w &lt; original / high_freq_factor keep f, those with w &gt; original / low_freq_factor take
/// f / factor, and those between blend the two: (1 - s) f / factor + s f with
/// s = (original / w - low_freq_factor) / (high_freq_factor - low_freq_factor). No attention factor.</summary>
internal sealed record Llama3RopeScaling(double Factor, double LowFreqFactor, double HighFreqFactor, int OriginalMaxPositions)
{
    public Llama3RopeScaling Validate()
    {
        if (!(Factor > 0) || !double.IsFinite(Factor)) throw new ArgumentException($"model config: rope_scaling factor must be > 0 (got {Factor})");
        if (!(LowFreqFactor > 0) || !double.IsFinite(LowFreqFactor)) throw new ArgumentException($"model config: rope_scaling low_freq_factor must be > 0 (got {LowFreqFactor})");
        if (!(HighFreqFactor > LowFreqFactor) || !double.IsFinite(HighFreqFactor))
            throw new ArgumentException($"model config: rope_scaling high_freq_factor ({HighFreqFactor}) must be > low_freq_factor ({LowFreqFactor})");
        if (OriginalMaxPositions <= 0) throw new ArgumentException($"model config: rope_scaling original_max_position_embeddings must be > 0 (got {OriginalMaxPositions})");
        return this;
    }

    /// <summary>The scaled table of <paramref name="invFreq"/> (a new array).</summary>
    public double[] Apply(double[] invFreq)
    {
        double lowWavelen = OriginalMaxPositions / LowFreqFactor, highWavelen = OriginalMaxPositions / HighFreqFactor;
        var r = new double[invFreq.Length];
        for (int i = 0; i < r.Length; i++)
        {
            double f = invFreq[i], wavelen = 2 * Math.PI / f;
            if (wavelen < highWavelen) r[i] = f;
            else if (wavelen > lowWavelen) r[i] = f / Factor;
            else
            {
                double smooth = (OriginalMaxPositions / wavelen - LowFreqFactor) / (HighFreqFactor - LowFreqFactor);
                r[i] = (1 - smooth) * f / Factor + smooth * f;
            }
        }
        return r;
    }

    /// <summary>rope_scaling {"rope_type": "default"}: transformers' plain rotary (no scaling).</summary>
    public static bool IsDefault(JsonObject rs) => (rs["rope_type"] ?? rs["type"]) is JsonValue tv && tv.TryGetValue<string>(out var ts) && ts == "default";

    /// <summary>Reads rope_scaling; anything but rope_type "llama3" with its four numbers is refused, naming the file and field.</summary>
    public static Llama3RopeScaling FromHfJson(JsonObject rs, string path)
    {
        string? type = (rs["rope_type"] ?? rs["type"]) is JsonValue tv && tv.TryGetValue<string>(out var ts) ? ts : null;
        if (type != "llama3")
            throw new InvalidDataException($"{path}: rope_scaling type {(type is null ? "(missing)" : "'" + type + "'")} is not implemented (supported: llama3, LLaMA 3.1's): the rotary frequencies would differ from the checkpoint's");
        double Num(string k) => rs[k] is JsonValue v && v.TryGetValue<double>(out var x) ? x
            : throw new InvalidDataException($"{path}: rope_scaling.{k} must be a number{(rs[k] is null ? " and is missing" : "")}");
        try { return new Llama3RopeScaling(Num("factor"), Num("low_freq_factor"), Num("high_freq_factor"), checked((int)Num("original_max_position_embeddings"))).Validate(); }
        catch (ArgumentException e) { throw new InvalidDataException($"{path}: {e.Message}"); }
    }

    public JsonObject ToHfJson() => new()
    {
        ["rope_type"] = "llama3", ["factor"] = Factor, ["low_freq_factor"] = LowFreqFactor, ["high_freq_factor"] = HighFreqFactor,
        ["original_max_position_embeddings"] = OriginalMaxPositions,
    };
}
