// `realn generate CHECKPOINT --prompt TEXT [--chat [--system TEXT]] [--max-new-tokens N] [--temperature T]
// [--top-p P] [--seed S] [--tokenizer PATH]`: one completion of a prompt by a checkpoint, printed
// to stdout. --chat renders the prompt as a user turn through the tokenizer's chat template
// (with the generation prompt); otherwise the text is encoded as is, after BOS when the
// tokenizer adds one. Generation stops at the tokenizer's EOS.
using System.CommandLine;

namespace ReaLNative.Cli.Commands;

public static class GenerateCommand
{
    public static Command Create()
    {
        var checkpoint = new Argument<string>("checkpoint") { Description = "Checkpoint directory (config.json + model.safetensors), e.g. runs/x/checkpoints/sft" };
        var prompt = new Option<string>("--prompt") { Description = "Prompt text", Required = true };
        var chat = new Option<bool>("--chat") { Description = "Render the prompt as a user message through the tokenizer's chat template" };
        var system = new Option<string?>("--system") { Description = "With --chat: a system message before the prompt" };
        var maxNew = new Option<int>("--max-new-tokens") { Description = "New tokens at most", DefaultValueFactory = _ => 64 };
        var temperature = new Option<float>("--temperature") { Description = "Sampling temperature; 0 = greedy", DefaultValueFactory = _ => 0f };
        var topP = new Option<float>("--top-p") { Description = "Nucleus sampling mass (1 = off)", DefaultValueFactory = _ => 1f };
        var seed = new Option<ulong>("--seed") { Description = "Sampling seed", DefaultValueFactory = _ => 1UL };
        var tokenizer = new Option<string?>("--tokenizer") { Description = "tokenizer.json (or its directory); default: the checkpoint's own, else the synthetic tasks' character tokenizer" };
        var cmd = new Command("generate", "Generate a completion of a prompt with a checkpoint");
        cmd.Arguments.Add(checkpoint);
        foreach (var o in new Option[] { prompt, chat, system, maxNew, temperature, topP, seed, tokenizer }) cmd.Options.Add(o);
        cmd.SetAction(p => Run(p.GetValue(checkpoint)!, p.GetValue(prompt)!, p.GetValue(chat), p.GetValue(system), p.GetValue(maxNew),
            p.GetValue(temperature), p.GetValue(topP), p.GetValue(seed), p.GetValue(tokenizer)));
        return cmd;
    }

    private static int Run(string checkpoint, string prompt, bool chat, string? system, int maxNew, float temperature, float topP, ulong seed, string? tokenizerPath)
    {
        if (maxNew < 1) throw new UsageException($"--max-new-tokens must be >= 1 (got {maxNew})");
        if (!(temperature >= 0)) throw new UsageException($"--temperature must be >= 0 (got {temperature})");
        if (!(topP > 0 && topP <= 1)) throw new UsageException($"--top-p must be in (0, 1] (got {topP})");
        if (system is not null && !chat) throw new UsageException("--system needs --chat");
        Console.WriteLine(TextGenerator.Complete(checkpoint, prompt, new CompletionSettings
        {
            Chat = chat, System = system, MaxNewTokens = maxNew, Temperature = temperature, TopP = topP, Seed = seed, TokenizerPath = tokenizerPath,
        }));
        return 0;
    }
}
