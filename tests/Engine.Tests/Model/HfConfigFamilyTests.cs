// config.json of the LLaMA family as the Hub ships them (real key sets, small sizes): what this
// model computes exactly loads (LLaMA 2, Mistral within its sliding window), what it would compute
// differently is refused by name (LLaMA 3.1 rope_scaling, Qwen2's q/k/v biases, other activations).
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
    }

    [Theory]
    [InlineData("\"model_type\": \"llama\", \"rope_scaling\": {\"factor\": 8.0, \"low_freq_factor\": 1.0, \"high_freq_factor\": 4.0, \"original_max_position_embeddings\": 8192, \"rope_type\": \"llama3\"}",
                "rope_scaling (\"llama3\") is not implemented")]
    [InlineData("\"model_type\": \"qwen2\", \"tie_word_embeddings\": true", "model_type 'qwen2' is not supported (supported: llama, mistral; qwen2 needs q/k/v projection biases")]
    [InlineData("\"model_type\": \"llama\", \"attention_bias\": true", "attention_bias true is not supported")]
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
