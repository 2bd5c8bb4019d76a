// Generation for hosts: text in, text out with the synthetic tasks' character tokenizer (the
// vocabulary the tiny presets train on), or token ids in and out for any vocabulary.
using ReaLNative.Engine.Generation;
using ReaLNative.Engine.Tokenization;

namespace ReaLNative;

/// <summary>Sampling settings for <see cref="TextGenerator"/>.</summary>
public sealed record GenerationSettings
{
    /// <summary>New tokens per sequence at most (default 16).</summary>
    public int MaxNewTokens { get; init; } = 16;
    /// <summary>Softmax temperature; 0 (the default) is greedy argmax.</summary>
    public float Temperature { get; init; }
    /// <summary>Keep only the k most likely tokens (0 = all).</summary>
    public int TopK { get; init; }
    /// <summary>Nucleus sampling: the smallest set of tokens with mass at least p (1 = all).</summary>
    public float TopP { get; init; } = 1f;
    /// <summary>Sampling seed: the same seed and prompts give the same output.</summary>
    public ulong Seed { get; init; }
}

/// <summary>Batched generation (one packed prefill, then KV-cache decode) with a trained policy.</summary>
public sealed class TextGenerator
{
    private readonly TrainedModel _model;
    private readonly CharTokenizer? _tok;

    /// <summary>Creates a generator over <paramref name="model"/> (which stays owned by the caller).</summary>
    /// <exception cref="ArgumentException">The model has a value head (a critic or reward model), not a language-model head.</exception>
    public TextGenerator(TrainedModel model)
    {
        ArgumentNullException.ThrowIfNull(model);
        if (model.HasValueHead) throw new ArgumentException("generation needs a policy (language-model head); this model has a value head (critic / reward)", nameof(model));
        _model = model;
        _tok = model.VocabularySize >= 3 + CharTokenizer.Alphabet.Length ? new CharTokenizer(model.VocabularySize) : null;
    }

    /// <summary>Characters text prompts may use (the synthetic tasks' alphabet).</summary>
    public static string Alphabet => CharTokenizer.Alphabet;

    /// <summary>Generates a completion of one text prompt (for example "53142=" for the sort-digits task).</summary>
    /// <exception cref="ArgumentException">A character is outside <see cref="Alphabet"/>, or a setting is out of range.</exception>
    public string Generate(string prompt, GenerationSettings? settings = null) => Generate([prompt], settings)[0];

    /// <summary>Generates completions of several text prompts in one batch; the completion stops before EOS.</summary>
    /// <exception cref="ArgumentException">A character is outside <see cref="Alphabet"/>, or a setting is out of range.</exception>
    public IReadOnlyList<string> Generate(IReadOnlyList<string> prompts, GenerationSettings? settings = null)
    {
        ArgumentNullException.ThrowIfNull(prompts);
        var tok = _tok ?? throw new InvalidOperationException($"text generation uses the synthetic-task tokenizer, which needs a vocabulary of at least {3 + CharTokenizer.Alphabet.Length}; use GenerateTokens");
        var ids = prompts.Select((p, i) => p is null ? throw new ArgumentException($"prompt {i} is null", nameof(prompts)) : (int[])[tok.Bos, .. tok.Encode(p)]).ToArray();
        var r = Run(ids, settings, tok.Eos);
        return r.NewTokens.Select(t => tok.Decode(t)).ToArray();
    }

    /// <summary>Generates new token ids for prompts given as token ids.</summary>
    /// <param name="prompts">Non-empty token id arrays.</param>
    /// <param name="settings">Sampling settings.</param>
    /// <param name="eosToken">Token that ends a sequence (-1: none).</param>
    /// <returns>The new tokens of each prompt (EOS included when reached).</returns>
    public IReadOnlyList<int[]> GenerateTokens(IReadOnlyList<int[]> prompts, GenerationSettings? settings = null, int eosToken = -1)
    {
        ArgumentNullException.ThrowIfNull(prompts);
        for (int i = 0; i < prompts.Count; i++)
            foreach (int t in prompts[i] ?? throw new ArgumentException($"prompt {i} is null", nameof(prompts)))
                if (t < 0 || t >= _model.VocabularySize) throw new ArgumentException($"prompt {i}: token {t} is outside the vocabulary [0, {_model.VocabularySize})", nameof(prompts));
        return Run(prompts, settings, eosToken).NewTokens;
    }

    private GenerationResult Run(IReadOnlyList<int[]> prompts, GenerationSettings? s, int eos)
    {
        s ??= new GenerationSettings();
        _ = _model.ParameterCount; // throws when disposed
        return Generator.Generate(_model.Model, prompts, new GenerationOptions
        {
            MaxNewTokens = s.MaxNewTokens, Temperature = s.Temperature, TopK = s.TopK, TopP = s.TopP, Seed = s.Seed, EosToken = eos,
        });
    }
}
