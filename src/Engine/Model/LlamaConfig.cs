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
        return this;
    }

    /// <summary>The parameter layout shape for a language-model head or a scalar head.</summary>
    public LlamaShape Shape(bool scalarHead) =>
        new(Layers, Hidden, Intermediate, Heads, KvHeads, Vocab, scalarHead ? 1 : TiedEmbeddings ? 0 : Vocab);

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
        // Mistral's sliding-window attention equals full causal attention for sequences within the
        // window: such a checkpoint loads with its context limited to the window.
        if (o["sliding_window"] is JsonValue sw && sw.TryGetValue<int>(out var window) && window > 0) maxPositions = Math.Min(maxPositions, window);
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
        }.Validate();
    }

    /// <summary>Refuses what this LLaMA implementation would silently compute differently: other model
    /// types (Qwen2's q/k/v biases), rope scaling (LLaMA 3.1's "llama3" frequencies), biases, an
    /// explicit head_dim other than hidden/heads, activations other than SiLU.</summary>
    private static void RefuseUnsupported(JsonObject o, string path)
    {
        string? Str(string k) => o[k] is JsonValue v && v.TryGetValue<string>(out var s) ? s : null;
        if (Str("model_type") is { } mt && mt is not ("llama" or "mistral"))
            throw new InvalidDataException($"{path}: model_type '{mt}' is not supported (supported: llama, mistral{(mt == "qwen2" ? "; qwen2 needs q/k/v projection biases, which this model does not have" : "")})");
        if (o["rope_scaling"] is JsonObject rs)
            throw new InvalidDataException($"{path}: rope_scaling ({(rs["rope_type"] ?? rs["type"])?.ToJsonString() ?? "?"}) is not implemented: the rotary frequencies would differ from the checkpoint's (LLaMA 3.1's \"llama3\" scaling included)");
        foreach (var k in new[] { "attention_bias", "mlp_bias" })
            if (o[k] is JsonValue b && b.TryGetValue<bool>(out var on) && on) throw new InvalidDataException($"{path}: {k} true is not supported (no biases in this model)");
        if (Str("hidden_act") is { } act && act != "silu") throw new InvalidDataException($"{path}: hidden_act '{act}' is not supported (supported: silu)");
        if (o["head_dim"] is JsonValue hd && hd.TryGetValue<int>(out var headDim) && o["hidden_size"] is JsonValue hs && hs.TryGetValue<int>(out var hidden)
            && o["num_attention_heads"] is JsonValue nh && nh.TryGetValue<int>(out var nHeads) && nHeads > 0 && headDim * nHeads != hidden)
            throw new InvalidDataException($"{path}: head_dim {headDim} is not hidden_size / num_attention_heads ({hidden} / {nHeads}): not supported");
    }

    /// <summary>Writes a Hugging Face config.json (LlamaForCausalLM, or LlamaForSequenceClassification with num_labels 1);
    /// <paramref name="torchDtype"/>: the stored tensors' dtype (float32 | bfloat16).</summary>
    public string ToHfJson(bool scalarHead = false, string torchDtype = "float32")
    {
        var o = new JsonObject
        {
            ["architectures"] = new JsonArray(scalarHead ? "LlamaForSequenceClassification" : "LlamaForCausalLM"),
            ["model_type"] = "llama",
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
        if (scalarHead) o["num_labels"] = 1;
        return o.ToJsonString(new JsonSerializerOptions { WriteIndented = true });
    }
}
