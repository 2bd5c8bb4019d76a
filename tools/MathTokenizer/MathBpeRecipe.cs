// The recipe of examples/models/math-bpe: a byte-level BPE tokenizer (LLaMA-3 / Qwen2 layout) learnt
// by the engine's BpeTrainer from the prompts and responses of the grpo-math training set, and the
// small LLaMA config that uses it. Digits are split one per token by the pre-tokenizer (`\p{N}`,
// as LLaMA-1/2 and Qwen2 do, where GPT-2 keeps a run of digits whole and BPE would merge frequent
// numbers into one token; the pattern is Qwen2's): the model then reads and writes numbers digit by digit and the
// arithmetic stays learnable; words, punctuation and " ####" become single tokens.
using System.Text.Json;
using System.Text.Json.Nodes;
using ReaLNative.Engine.Tokenization;

namespace ReaLNative.Tools;

internal static class MathBpeRecipe
{
    /// <summary>Qwen2's pre-tokenizer (single digits; llama.cpp knows it as "qwen2", so the GGUF export of a trained model tokenizes as the engine does).</summary>
    public const string Pattern = @"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
    public const string Bos = "<|begin_of_text|>", Eos = "<|end_of_text|>";
    /// <summary>Tokens at most (256 bytes, merges, the two special tokens); merging stops earlier when no pair occurs twice.</summary>
    public const int MaxVocab = 384;

    /// <summary>File name -> content of tokenizer.json, tokenizer_config.json and config.json, from the JSONL lines of the training set.</summary>
    public static SortedDictionary<string, string> Build(IEnumerable<string> trainLines)
    {
        var texts = new List<string>();
        int line = 0;
        foreach (var l in trainLines)
        {
            line++;
            if (l.Trim().Length == 0) continue;
            var o = JsonNode.Parse(l) as JsonObject ?? throw new InvalidDataException($"line {line}: not a JSON object");
            texts.Add(o["prompt"]?.GetValue<string>() ?? throw new InvalidDataException($"line {line}: no prompt"));
            texts.Add(o["response"]?.GetValue<string>() ?? throw new InvalidDataException($"line {line}: no response"));
        }
        string tokenizer = BpeTrainer.ByteLevel(texts, MaxVocab, [Bos, Eos], Pattern);
        var indented = new JsonSerializerOptions { WriteIndented = true };
        var vocab = JsonNode.Parse(tokenizer)!["model"]!["vocab"]!.AsObject();
        int bosId = vocab.Count, eosId = vocab.Count + 1;
        int modelVocab = (eosId + 1 + 63) / 64 * 64;   // room for every id, rounded up
        var tokConfig = new JsonObject
        {
            ["tokenizer_class"] = "PreTrainedTokenizerFast",
            ["bos_token"] = Bos, ["eos_token"] = Eos, ["pad_token"] = Eos,
            ["add_bos_token"] = true, ["add_eos_token"] = false,
            ["model_max_length"] = 80,
        };
        var config = new JsonObject
        {
            ["architectures"] = new JsonArray("LlamaForCausalLM"),
            ["model_type"] = "llama",
            ["num_hidden_layers"] = 4,
            ["hidden_size"] = 128,
            ["intermediate_size"] = 352,
            ["num_attention_heads"] = 4,
            ["num_key_value_heads"] = 4,
            ["vocab_size"] = modelVocab,
            ["max_position_embeddings"] = 80,
            ["rms_norm_eps"] = 1e-5,
            ["rope_theta"] = 10000.0,
            ["tie_word_embeddings"] = false,
            ["bos_token_id"] = bosId,
            ["eos_token_id"] = eosId,
        };
        return new SortedDictionary<string, string>(StringComparer.Ordinal)
        {
            ["tokenizer.json"] = tokenizer.ReplaceLineEndings("\n") + "\n",
            ["tokenizer_config.json"] = tokConfig.ToJsonString(indented).ReplaceLineEndings("\n") + "\n",
            ["config.json"] = config.ToJsonString(indented).ReplaceLineEndings("\n") + "\n",
        };
    }
}
