// GGUF export for hosts (`realn export` too): a checkpoint in Hugging Face layout as a GGUF v3 file
// llama.cpp and Ollama load (LLaMA architecture; matrices in the chosen dtype, norms F32; q/k rows
// permuted to llama.cpp's rotary layout), with the tokenizer and its chat template in the metadata:
// the given tokenizer.json, else the checkpoint's own, else the synthetic tasks' character tokenizer.
using ReaLNative.Engine.Checkpoints;
using ReaLNative.Engine.Tokenization;

namespace ReaLNative;

/// <summary>Writes checkpoints as GGUF files.</summary>
public static class GgufExport
{
    /// <summary>Writes the checkpoint in <paramref name="checkpointDirectory"/> as the GGUF file <paramref name="outputPath"/>.</summary>
    /// <param name="checkpointDirectory">A model folder (config.json + model.safetensors), for example runs/x/checkpoints/sft.</param>
    /// <param name="outputPath">The GGUF file to write.</param>
    /// <param name="dtype">Matrix element type: f32, f16 or bf16 (norms stay f32).</param>
    /// <param name="tokenizerPath">tokenizer.json (or its folder, with tokenizer_config.json) to embed; default: the
    /// checkpoint's own, else the synthetic tasks' character tokenizer when the vocabulary fits it, else token ids only.</param>
    /// <exception cref="ArgumentException"><paramref name="dtype"/> is not one of f32, f16, bf16.</exception>
    /// <exception cref="InputException">The tokenizer has more tokens than the model's vocabulary, or cannot be read.</exception>
    public static GgufExportResult Write(string checkpointDirectory, string outputPath, string dtype = "f32", string? tokenizerPath = null)
    {
        ArgumentException.ThrowIfNullOrWhiteSpace(checkpointDirectory);
        ArgumentException.ThrowIfNullOrWhiteSpace(outputPath);
        var type = GgufWriter.ParseDType(dtype);
        using var model = Safetensors.Load(checkpointDirectory);
        var tok = CheckpointTokenizer.Resolve(checkpointDirectory, tokenizerPath, model.Config.Vocab);
        var vocab = tok.Hf is not null ? GgufVocab.From(tok.Hf, model.Config.Vocab)
            : tok.Char is not null ? GgufVocab.FromChar(tok.Char, model.Config.Vocab)
            : GgufVocab.Synthetic(model.Config.Vocab);
        GgufWriter.Write(model, outputPath, vocab, type);
        string what = tok.Hf is not null ? $"tokenizer {tok.Hf.Path} ({vocab.Model}{(vocab.Pre is null ? "" : ", pre " + vocab.Pre)}){(vocab.ChatTemplate is null ? "" : " with its chat template")}"
            : tok.Char is not null ? "the synthetic tasks' character tokenizer" : "a synthetic vocabulary (token ids only)";
        return new GgufExportResult(model.ParameterCount, new FileInfo(outputPath).Length, what);
    }
}

/// <summary>What <see cref="GgufExport.Write"/> wrote.</summary>
/// <param name="Parameters">Parameters of the model.</param>
/// <param name="Bytes">Size of the GGUF file.</param>
/// <param name="Tokenizer">The tokenizer in the metadata, in words ("tokenizer PATH (gpt2, pre llama-bpe) with its chat template").</param>
public sealed record GgufExportResult(long Parameters, long Bytes, string Tokenizer);
