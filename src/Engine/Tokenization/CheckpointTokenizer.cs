// The tokenizer of a checkpoint for GGUF export and generation (`realn export`, `realn generate`):
// --tokenizer PATH (a tokenizer.json or a directory holding one, tokenizer_config.json beside it), else the
// checkpoint directory's own tokenizer.json, else the synthetic tasks' character tokenizer
// when the model's vocabulary fits it (the models `realn run` trains on the built-in tasks).
namespace ReaLNative.Engine.Tokenization;

internal sealed record CheckpointTokenizer(HfTokenizer? Hf, CharTokenizer? Char)
{
    public ITokenizer Tokenizer => (ITokenizer?)Hf ?? Char!;

    public static CheckpointTokenizer Resolve(string checkpoint, string? tokenizerPath, int modelVocab)
    {
        string? path = tokenizerPath ?? (File.Exists(Path.Combine(checkpoint, "tokenizer.json")) ? checkpoint : null);
        if (path is not null)
        {
            var hf = HfTokenizer.Load(path);
            if (hf.VocabSize > modelVocab)
                throw new InputException($"tokenizer {hf.Path} has {hf.VocabSize} tokens, more than the model's vocab_size {modelVocab} ({checkpoint}/config.json)");
            return new(hf, null);
        }
        if (modelVocab >= 3 + CharTokenizer.Alphabet.Length && modelVocab < 260)
            return new(null, new CharTokenizer(modelVocab));
        return new(null, null);
    }
}
