// The tokenizer as GGUF metadata (tokenizer.ggml.*), in the forms llama.cpp reads: "gpt2" (byte-level
// BPE: tokens in their byte-level spelling, merges, the pre-tokenizer by name) or "llama"
// (SentencePiece: tokens with '▁', scores, <0xXX> byte tokens). Ids past the tokenizer's own
// vocabulary (a model whose vocab_size is padded) are written as unused "[PAD{id}]" tokens.
using ReaLNative.Engine.Tokenization;

namespace ReaLNative.Engine.Checkpoints;

internal sealed class GgufVocab
{
    /// <summary>llama.cpp token types.</summary>
    public const int Normal = 1, Unknown = 2, Control = 3, UserDefined = 4, Unused = 5, Byte = 6;

    public required string Model { get; init; }
    public string? Pre { get; init; }
    public required string[] Tokens { get; init; }
    public required int[] Types { get; init; }
    public float[]? Scores { get; init; }
    public string[]? Merges { get; init; }
    public int Bos { get; init; } = -1;
    public int Eos { get; init; } = -1;
    public int Unk { get; init; } = -1;
    public int Pad { get; init; } = -1;
    public bool AddBos { get; init; }
    public bool? AddSpacePrefix { get; init; }
    public string? ChatTemplate { get; init; }

    /// <summary>llama.cpp's name for a byte-level pre-tokenizer regex (llama-vocab.cpp's pre types).</summary>
    private static readonly Dictionary<string, string> PreNames = new(StringComparer.Ordinal)
    {
        [HfTokenizer.Gpt2Pattern] = "gpt-2",
        [@"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"] = "llama-bpe",
        [@"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"] = "qwen2",
    };

    /// <summary>The vocabulary llama.cpp needs to run token ids of a model trained without a tokenizer
    /// file: &lt;unk&gt;, &lt;s&gt;, &lt;/s&gt;, 256 byte tokens, then "t{id}" (needs vocab_size &gt;= 260).</summary>
    public static GgufVocab Synthetic(int vocab)
    {
        if (vocab < 260) throw new ArgumentException($"GGUF export without a tokenizer needs vocab_size >= 260 for its synthetic vocabulary (got {vocab}); give the tokenizer");
        return new GgufVocab
        {
            Model = "llama",
            Tokens = [.. Enumerable.Range(0, vocab).Select(t => t switch { 0 => "<unk>", 1 => "<s>", 2 => "</s>", < 259 => $"<0x{t - 3:X2}>", _ => $"t{t}" })],
            Scores = [.. Enumerable.Range(0, vocab).Select(t => t < 259 ? 0f : -(float)t)],
            Types = [.. Enumerable.Range(0, vocab).Select(t => t switch { 0 => Unknown, 1 or 2 => Control, < 259 => Byte, _ => Normal })],
            Bos = 1,
            Eos = 2,
            Unk = 0,
            AddBos = true,
        };
    }

    /// <summary>The synthetic tasks' character tokenizer as a byte-level vocabulary without merges: each
    /// character is its own token, so llama.cpp tokenizes task text to the same ids.</summary>
    public static GgufVocab FromChar(CharTokenizer tok, int modelVocab)
    {
        var tokens = new string[modelVocab];
        var types = new int[modelVocab];
        for (int i = 0; i < modelVocab; i++) { tokens[i] = $"[PAD{i}]"; types[i] = Unused; }
        tokens[0] = "<pad>"; types[0] = Control;
        tokens[tok.Bos] = "<s>"; types[tok.Bos] = Control;
        tokens[tok.Eos] = "</s>"; types[tok.Eos] = Control;
        for (int k = 0; k < CharTokenizer.Alphabet.Length; k++)
        {
            int id = tok.Encode(CharTokenizer.Alphabet[k].ToString())[0];
            tokens[id] = BpeTrainer.ByteToChar[(byte)CharTokenizer.Alphabet[k]].ToString();
            types[id] = Normal;
        }
        return new GgufVocab { Model = "gpt2", Pre = "gpt-2", Tokens = tokens, Types = types, Merges = [], Bos = tok.Bos, Eos = tok.Eos, Pad = 0, AddBos = true };
    }

    /// <summary>A Hugging Face tokenizer (and its chat template) for a model of <paramref name="modelVocab"/> ids.</summary>
    public static GgufVocab From(HfTokenizer tok, int modelVocab)
    {
        if (tok.VocabSize > modelVocab)
            throw new ArgumentException($"tokenizer {tok.Path} has {tok.VocabSize} tokens, more than the model's vocab_size {modelVocab}");
        var tokens = new string[modelVocab];
        var types = new int[modelVocab];
        for (int i = 0; i < modelVocab; i++)
        {
            var s = tok.TokenString(i);
            if (s is null) { tokens[i] = $"[PAD{i}]"; types[i] = Unused; continue; }
            tokens[i] = s;
            types[i] = tok.IsControl(i) ? Control : tok.IsSpecial(i) ? UserDefined : Normal;
        }
        string? template = tok.ChatTemplate?.Source;
        switch (tok.Style)
        {
            case BpeStyle.ByteLevel:
            {
                string pattern = tok.PreTokenizerPattern ?? "";
                if (!PreNames.TryGetValue(pattern, out var pre))
                    throw new ArgumentException($"tokenizer {tok.Path}: its pre-tokenizer regex has no llama.cpp equivalent (supported: GPT-2, LLaMA-3, Qwen2): {pattern}");
                return new GgufVocab
                {
                    Model = "gpt2", Pre = pre, Tokens = tokens, Types = types,
                    Merges = [.. tok.Merges.Select(m => $"{m.Left} {m.Right}")],
                    Bos = tok.Bos, Eos = tok.Eos, AddBos = tok.AddBos, ChatTemplate = template,
                };
            }
            case BpeStyle.SentencePiece:
            {
                // SentencePiece merges by score: a merged token scores minus the rank of the merge that made it.
                var scores = new float[modelVocab];
                for (int r = 0; r < tok.Merges.Count; r++)
                    if (tok.TokenId(tok.Merges[r].Left + tok.Merges[r].Right) is int id && scores[id] == 0) scores[id] = -(r + 1);
                int unk = -1;
                for (int i = 0; i < modelVocab; i++)
                {
                    var s = tok.TokenString(i);
                    if (s is null) continue;
                    if (s.Length == 6 && s.StartsWith("<0x", StringComparison.Ordinal) && s[5] == '>') types[i] = Byte;
                    if (s == "<unk>") { types[i] = Unknown; unk = i; }
                }
                return new GgufVocab
                {
                    Model = "llama", Tokens = tokens, Types = types, Scores = scores,
                    Bos = tok.Bos, Eos = tok.Eos, Unk = unk, AddBos = tok.AddBos, AddSpacePrefix = tok.PrependsSpace, ChatTemplate = template,
                };
            }
            default:
                throw new ArgumentException($"tokenizer {tok.Path}: plain (non byte-level, non SentencePiece) BPE has no llama.cpp tokenizer model");
        }
    }
}
