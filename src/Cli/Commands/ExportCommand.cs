// `realn export CHECKPOINT --gguf OUT.gguf [--dtype f32|f16|bf16] [--tokenizer PATH]`: a Hugging Face
// checkpoint directory (config.json + safetensors, as `realn run` writes under checkpoints/) as a
// GGUF file llama.cpp and Ollama load: LLaMA architecture, matrices in the chosen dtype, the
// tokenizer and its chat template in the metadata.
using System.CommandLine;

namespace ReaLNative.Cli.Commands;

public static class ExportCommand
{
    public static Command Create()
    {
        var checkpoint = new Argument<string>("checkpoint") { Description = "Checkpoint directory (config.json + model.safetensors), e.g. runs/x/checkpoints/sft" };
        var gguf = new Option<string>("--gguf") { Description = "GGUF file to write", Required = true };
        var dtype = new Option<string>("--dtype") { Description = "Matrix element type: f32, f16 or bf16 (norms stay f32)", DefaultValueFactory = _ => "f32" };
        var tokenizer = new Option<string?>("--tokenizer") { Description = "tokenizer.json (or its directory, with tokenizer_config.json) to embed; default: the checkpoint's own, else the synthetic tasks' character tokenizer" };
        var cmd = new Command("export", "Write a checkpoint as a GGUF file for llama.cpp / Ollama (tokenizer and chat template included)");
        cmd.Arguments.Add(checkpoint);
        cmd.Options.Add(gguf);
        cmd.Options.Add(dtype);
        cmd.Options.Add(tokenizer);
        cmd.SetAction(p => Run(p.GetValue(checkpoint)!, p.GetValue(gguf)!, p.GetValue(dtype)!, p.GetValue(tokenizer)));
        return cmd;
    }

    private static int Run(string checkpoint, string output, string dtypeName, string? tokenizerPath)
    {
        var r = GgufExport.Write(checkpoint, output, dtypeName, tokenizerPath);
        Console.WriteLine($"wrote {output}: {r.Parameters:N0} parameters as {dtypeName.ToLowerInvariant()}, {r.Bytes / 1e6:F1} MB, {r.Tokenizer}");
        return 0;
    }
}
