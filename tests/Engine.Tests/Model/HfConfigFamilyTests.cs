// config.json of the LLaMA family as the Hub ships them (real key sets, small sizes): what this
// model computes exactly loads (LLaMA 2, Mistral within its sliding window, LLaMA 3.1 with its
// "llama3" rope scaling, Qwen2 with q/k/v biases), what it would compute differently is refused by
// name (other rope scalings, other biases, other activations). Checkpoints of the families save
// back in HF layout (names, config fields) and load to the same model.
using ReaLNative.Engine.Checkpoints;
using ReaLNative.Engine.Model;
using Xunit;

namespace ReaLNative.Engine.Tests.Model;

public sealed class HfConfigFamilyTests : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("realn-hfcfg-").FullName;

    public void Dispose() => Directory.Delete(_dir, true);

    private string Write(string json)
    {
        string p = Path.Combine(_dir, Guid.NewGuid().ToString("N") + ".json");
        File.WriteAllText(p, json);
        return p;
    }

    private const string Sizes = "\"hidden_size\": 64, \"intermediate_size\": 176, \"num_attention_heads\": 4, \"num_key_value_heads\": 2, \"num_hidden_layers\": 2, \"vocab_size\": 300";

    [Fact]
    public void Llama2AndMistralLoad()
    {
        var l2 = LlamaConfig.FromHfJson(Write($$"""{"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_act": "silu", {{Sizes}}, "max_position_embeddings": 4096, "rms_norm_eps": 1e-05, "rope_scaling": null, "rope_theta": 10000.0, "attention_bias": false, "tie_word_embeddings": false}"""));
        Assert.Equal(4096, l2.MaxPositions);
        // Mistral 7B v0.1: sliding_window 4096 under max_position_embeddings 32768: the context is the window
        var m = LlamaConfig.FromHfJson(Write($$"""{"architectures": ["MistralForCausalLM"], "model_type": "mistral", "hidden_act": "silu", {{Sizes}}, "max_position_embeddings": 32768, "rms_norm_eps": 1e-05, "rope_theta": 10000.0, "sliding_window": 4096, "tie_word_embeddings": false}"""));
        Assert.Equal(4096, m.MaxPositions);
        // Mistral 7B v0.3: no sliding window
        var m3 = LlamaConfig.FromHfJson(Write($$"""{"model_type": "mistral", {{Sizes}}, "max_position_embeddings": 32768, "rope_theta": 1000000.0, "sliding_window": null}"""));
        Assert.Equal(32768, m3.MaxPositions);
        Assert.Equal(1e6f, m3.RopeTheta);
        // Written back as mistral with no window (transformers would otherwise default to 4096), it reads the same.
        var back = System.Text.Json.Nodes.JsonNode.Parse(m3.ToHfJson())!.AsObject();
        Assert.Equal(("mistral", "MistralForCausalLM"), ((string?)back["model_type"], (string?)back["architectures"]![0]));
        Assert.True(back.ContainsKey("sliding_window") && back["sliding_window"] is null);
        Assert.Equal(m3, LlamaConfig.FromHfJson(Write(m3.ToHfJson())));
    }

    [Fact]
    public void Llama31WithRopeScalingAndQwen2Load()
    {
        // LLaMA 3.1 8B's rope keys (sizes small)
        var l31 = LlamaConfig.FromHfJson(Write($$"""{"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_act": "silu", {{Sizes}}, "max_position_embeddings": 131072, "rms_norm_eps": 1e-05, "rope_scaling": {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192, "rope_type": "llama3"}, "rope_theta": 500000.0, "attention_bias": false, "mlp_bias": false, "tie_word_embeddings": false}"""));
        Assert.Equal(new Llama3RopeScaling(8, 1, 4, 8192), l31.RopeScaling);
        Assert.Null(LlamaConfig.FromHfJson(Write($$"""{"model_type": "llama", {{Sizes}}, "rope_scaling": {"rope_type": "default"} }""")).RopeScaling);
        Assert.False(l31.QkvBias);
        // head dim 16, theta 5e5: wavelengths 2 pi 5e5^(i/8) = 6.3, 32, 167, 862, 4447, 22950, ...:
        // pairs 0-3 under 8192/4 kept, pair 4 blended, pairs 5-7 over 8192/1 divided by 8
        var f = l31.RotaryInverseFrequencies();
        var plain = (l31 with { RopeScaling = null }).RotaryInverseFrequencies();
        Assert.Equal(8, f.Length);
        for (int i = 0; i < 4; i++) Assert.Equal(plain[i], f[i]);
        Assert.InRange(f[4], plain[4] / 8 * (1 + 1e-9), plain[4] * (1 - 1e-9));
        for (int i = 5; i < 8; i++) Assert.Equal(plain[i] / 8, f[i], 15);
        var reference = ReferenceLlama.InverseFrequencies(l31);  // written out separately from HF's definition
        for (int i = 0; i < 8; i++) Assert.True(Math.Abs(f[i] - reference[i]) <= 1e-14 * reference[i], $"pair {i}: {f[i]} vs {reference[i]}");
        // Qwen2-0.5B's keys (sizes small): q/k/v biases, tied embeddings, a sliding_window that is off
        var q = LlamaConfig.FromHfJson(Write($$"""{"architectures": ["Qwen2ForCausalLM"], "attention_dropout": 0.0, "bos_token_id": 151643, "eos_token_id": 151643, "hidden_act": "silu", {{Sizes}}, "initializer_range": 0.02, "max_position_embeddings": 32768, "max_window_layers": 24, "model_type": "qwen2", "rms_norm_eps": 1e-06, "rope_theta": 1000000.0, "sliding_window": 32768, "tie_word_embeddings": true, "torch_dtype": "bfloat16", "use_cache": true, "use_sliding_window": false}"""));
        Assert.True(q.QkvBias);
        Assert.True(q.TiedEmbeddings);
        Assert.Equal(32768, q.MaxPositions);
        Assert.Equal("qwen2", q.ModelType);
        var names = q.Shape(false).Units().SelectMany(u => u).Select(p => p.Name).ToList();
        Assert.Contains("model.layers.1.self_attn.q_proj.bias", names);
        Assert.Contains("model.layers.1.self_attn.v_proj.bias", names);
        Assert.DoesNotContain("model.layers.1.self_attn.o_proj.bias", names);
        Assert.DoesNotContain("lm_head.weight", names);
    }

    [Theory]
    [InlineData("llama3.1")]
    [InlineData("qwen2")]
    public void FamiliesSaveBackInHfLayoutAndReload(string family)
    {
        var cfg = ModelTests.Family(family);
        using var m = new LlamaModel(cfg, scalarHead: false);
        m.InitRandom(4, std: 0.3f);
        var rng = new Random(2);
        foreach (ref var w in m.Parameters) w += (float)(rng.NextDouble() * 0.01);  // biases and norms not 0 / 1
        string dir = Path.Combine(_dir, family);
        Safetensors.Save(m, dir);
        var json = System.Text.Json.Nodes.JsonNode.Parse(File.ReadAllText(Path.Combine(dir, "config.json")))!;
        Assert.Equal(family == "qwen2" ? "qwen2" : "llama", (string?)json["model_type"]);
        Assert.Equal(family == "qwen2" ? "Qwen2ForCausalLM" : "LlamaForCausalLM", (string?)json["architectures"]![0]);
        if (family == "llama3.1") Assert.Equal("llama3", (string?)json["rope_scaling"]!["rope_type"]);
        var bytes = File.ReadAllBytes(Path.Combine(dir, "model.safetensors"));
        var header = System.Text.Json.Nodes.JsonNode.Parse(bytes.AsSpan(8, (int)BitConverter.ToUInt64(bytes, 0)))!.AsObject();
        Assert.Equal(family == "qwen2", header.ContainsKey("model.layers.0.self_attn.k_proj.bias"));
        if (family == "qwen2") Assert.Equal("[16]", header["model.layers.0.self_attn.k_proj.bias"]!["shape"]!.ToJsonString());
        using var back = Safetensors.Load(dir);
        Assert.Equal(cfg, back.Config);
        Assert.True(m.Parameters.SequenceEqual(back.Parameters), "parameters differ after a save/load round trip");
    }

    [Theory]
    [InlineData("llama")]
    [InlineData("llama3.1")]
    [InlineData("qwen2")]
    public void WorkerProcessesGetTheFamilyFields(string family)
    {
        var cfg = ModelTests.Family(family);
        var sent = ReaLNative.Engine.Workers.WireJson.Config(cfg).ToJsonString();
        Assert.Equal(cfg, ReaLNative.Engine.Workers.WireJson.Config(System.Text.Json.Nodes.JsonNode.Parse(sent)));
    }

    [Theory]
    [InlineData("\"model_type\": \"llama\", \"rope_scaling\": {\"factor\": 4.0, \"original_max_position_embeddings\": 32768, \"rope_type\": \"yarn\"}",
                "rope_scaling type 'yarn' is not implemented (supported: llama3")]
    [InlineData("\"model_type\": \"llama\", \"rope_scaling\": {\"factor\": 2.0, \"type\": \"dynamic\"}", "rope_scaling type 'dynamic' is not implemented")]
    [InlineData("\"model_type\": \"llama\", \"rope_scaling\": {\"factor\": 8.0, \"low_freq_factor\": 1.0, \"original_max_position_embeddings\": 8192, \"rope_type\": \"llama3\"}",
                "rope_scaling.high_freq_factor must be a number and is missing")]
    [InlineData("\"model_type\": \"llama\", \"rope_scaling\": {\"factor\": 8.0, \"low_freq_factor\": 4.0, \"high_freq_factor\": 4.0, \"original_max_position_embeddings\": 8192, \"rope_type\": \"llama3\"}",
                "high_freq_factor (4) must be > low_freq_factor (4)")]
    [InlineData("\"model_type\": \"llama\", \"attention_bias\": true", "attention_bias true is not supported")]
    [InlineData("\"model_type\": \"qwen2\", \"mlp_bias\": true", "mlp_bias true is not supported")]
    [InlineData("\"model_type\": \"gemma\", \"hidden_act\": \"gelu_pytorch_tanh\"", "model_type 'gemma' is not supported")]
    [InlineData("\"model_type\": \"llama\", \"hidden_act\": \"gelu\"", "hidden_act 'gelu' is not supported")]
    [InlineData("\"model_type\": \"llama\", \"head_dim\": 32", "head_dim 32 is not hidden_size / num_attention_heads (64 / 4)")]
    public void WhatWouldComputeDifferentlyIsRefusedByName(string extra, string message)
    {
        string p = Write($$"""{ {{Sizes}}, "max_position_embeddings": 8192, {{extra}} }""");
        var e = Assert.Throws<InvalidDataException>(() => LlamaConfig.FromHfJson(p));
        Assert.Contains(message, e.Message);
        Assert.StartsWith(p, e.Message);
    }
}
