// Generation for hosts: text in, text out with the synthetic tasks' character tokenizer (the
// vocabulary the tiny presets train on), or token ids in and out for any vocabulary; and one
// completion of a checkpoint folder with its own tokenizer and chat template (`realn generate`).
using ReaLNative.Engine.Checkpoints;
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

    /// <summary>One completion of <paramref name="prompt"/> by the checkpoint in <paramref name="checkpointDirectory"/>, with
    /// the tokenizer <see cref="CompletionSettings.TokenizerPath"/>, else the checkpoint's own tokenizer.json, else the
    /// synthetic tasks' character tokenizer; stops at the tokenizer's EOS (not included). With
    /// <see cref="CompletionSettings.Chat"/> the prompt is a user turn rendered through the tokenizer's chat template
    /// (with the generation prompt); otherwise it is encoded as is, after BOS when the tokenizer adds one. This is
    /// <c>realn generate</c>; refusals name its options (--chat, --tokenizer, --prompt, --max-new-tokens).</summary>
    /// <exception cref="InputException">The model has a value head, no usable tokenizer, a prompt that does not encode
    /// or does not fit <c>max_position_embeddings</c> with the new tokens.</exception>
    /// <exception cref="ArgumentException">A setting is out of range.</exception>
    public static string Complete(string checkpointDirectory, string prompt, CompletionSettings settings)
    {
        ArgumentException.ThrowIfNullOrWhiteSpace(checkpointDirectory);
        ArgumentNullException.ThrowIfNull(prompt);
        ArgumentNullException.ThrowIfNull(settings);
        if (settings.MaxNewTokens < 1) throw new ArgumentException($"MaxNewTokens must be >= 1 (got {settings.MaxNewTokens})", nameof(settings));
        if (!(settings.Temperature >= 0)) throw new ArgumentException($"Temperature must be >= 0 (got {settings.Temperature})", nameof(settings));
        if (!(settings.TopP > 0 && settings.TopP <= 1)) throw new ArgumentException($"TopP must be in (0, 1] (got {settings.TopP})", nameof(settings));
        if (settings.System is not null && !settings.Chat) throw new ArgumentException("System needs Chat", nameof(settings));
        string checkpoint = checkpointDirectory;
        int maxNew = settings.MaxNewTokens;
        using var model = Safetensors.Load(checkpoint);
        if (model.ScalarHead) throw new InputException($"{checkpoint} is a scalar-head model (reward or critic): it scores, it does not generate");
        var tok = CheckpointTokenizer.Resolve(checkpoint, settings.TokenizerPath, model.Config.Vocab);
        int[] ids;
        if (settings.Chat)
        {
            var hf = tok.Hf ?? throw new InputException($"--chat needs a Hugging Face tokenizer with a chat_template ({checkpoint} has no tokenizer.json; give --tokenizer)");
            var messages = new List<ChatMessage>();
            if (settings.System is not null) messages.Add(new("system", settings.System));
            messages.Add(new("user", prompt));
            ids = ChatEncoder.EncodePrompt(hf, messages);
        }
        else if (tok.Hf is { } hf) ids = hf.AddBos && hf.Bos >= 0 ? [hf.Bos, .. hf.Encode(prompt)] : hf.Encode(prompt);
        else if (tok.Char is { } ch)
        {
            try { ids = [ch.Bos, .. ch.Encode(prompt)]; }
            catch (ArgumentException e) { throw new InputException($"--prompt: {e.Message}"); }
        }
        else throw new InputException($"{checkpoint} has no tokenizer.json and its vocab_size {model.Config.Vocab} is not the synthetic tasks' tokenizer: give --tokenizer");
        if (ids.Length == 0) throw new InputException("--prompt encodes to no tokens");
        if (ids.Length + maxNew > model.Config.MaxPositions)
            throw new InputException($"prompt ({ids.Length} tokens) + --max-new-tokens {maxNew} exceed the model's max_position_embeddings {model.Config.MaxPositions}");
        var r = Generator.Generate(model, [ids], new GenerationOptions
        {
            MaxNewTokens = maxNew, Temperature = settings.Temperature, TopP = settings.TopP, Seed = settings.Seed, EosToken = tok.Tokenizer.Eos,
        });
        var outIds = r.NewTokens[0];
        int n = outIds.Length > 0 && outIds[^1] == tok.Tokenizer.Eos ? outIds.Length - 1 : outIds.Length;
        return tok.Tokenizer.Decode(outIds.AsSpan(0, n));
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

/// <summary>Settings of <see cref="TextGenerator.Complete"/>.</summary>
public sealed record CompletionSettings
{
    /// <summary>Render the prompt as a user turn through the tokenizer's chat template.</summary>
    public bool Chat { get; init; }
    /// <summary>With <see cref="Chat"/>: a system message before the prompt.</summary>
    public string? System { get; init; }
    /// <summary>New tokens at most (default 64).</summary>
    public int MaxNewTokens { get; init; } = 64;
    /// <summary>Sampling temperature; 0 (the default) is greedy.</summary>
    public float Temperature { get; init; }
    /// <summary>Nucleus sampling mass (1, the default: off).</summary>
    public float TopP { get; init; } = 1f;
    /// <summary>Sampling seed (default 1).</summary>
    public ulong Seed { get; init; } = 1;
    /// <summary>tokenizer.json (or its folder); default: the checkpoint's own, else the synthetic tasks' character tokenizer.</summary>
    public string? TokenizerPath { get; init; }
}
