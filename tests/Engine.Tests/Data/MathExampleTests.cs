// examples/grpo-math.yaml and its data: the generator writes the committed files byte for byte and
// the splits share no prompt; tools/MathTokenizer's recipe (the engine's BpeTrainer) writes the
// committed byte-level BPE tokenizer and model config, which split numbers one digit per token; a shortened run of the example (a few SFT and GRPO iterations) goes
// through the dataset, numeric_match and `realn eval`, whose score must equal the run's last eval
// line. The full example (SFT then GRPO with the BPE tokenizer, held-out accuracy rising by at least
// 0.15) is opt-in: REALN_EXAMPLE_TESTS=1.
using System.Diagnostics;
using System.Text.RegularExpressions;
using System.Text.Json.Nodes;
using ReaLNative.Engine.Checkpoints;
using ReaLNative.Engine.Config;
using ReaLNative.Engine.Model;
using ReaLNative.Engine.Tests.Docs;
using ReaLNative.Engine.Tokenization;
using ReaLNative.Tools;
using Xunit;
using Xunit.Abstractions;

namespace ReaLNative.Engine.Tests.Data;

public sealed class MathExampleTests(ITestOutputHelper output) : IDisposable
{
    private readonly string _dir = Path.Combine(Path.GetTempPath(), "realn-math-" + Guid.NewGuid().ToString("N")[..8]);
    private static string Root => ReadmeCommandTableTests.Root();
    private static string Examples => Path.Combine(Root, "examples");

    public void Dispose() { if (Directory.Exists(_dir)) Directory.Delete(_dir, true); }

    private static JsonObject[] Lines(string file) => File.ReadAllLines(file).Select(l => JsonNode.Parse(l)!.AsObject()).ToArray();

    [SkippableFact]
    public void GeneratorWritesTheCommittedFilesAndTheSplitsDoNotOverlap()
    {
        var train = Lines(Path.Combine(Examples, "data", "math-train.jsonl"));
        var test = Lines(Path.Combine(Examples, "data", "math-test.jsonl"));
        Assert.Empty(train.Select(x => (string)x["prompt"]!).Intersect(test.Select(x => (string)x["prompt"]!)));
        foreach (var r in train.Concat(test))
        {
            // one response format: "<a><op><b>=<c> #### <c>", c right and equal to the answer
            var resp = (string)r["response"]!;
            var m = Regex.Match(resp, @"^(\d+)([-+*])(\d+)=(\d+) #### (\d+)$");
            Assert.True(m.Success, resp);
            long a = long.Parse(m.Groups[1].Value), b = long.Parse(m.Groups[3].Value);
            long c = m.Groups[2].Value switch { "+" => a + b, "-" => a - b, _ => a * b };
            Assert.Equal(c.ToString(), m.Groups[4].Value);
            Assert.Equal(c.ToString(), m.Groups[5].Value);
            Assert.Equal(c.ToString(), (string)r["answer"]!);
        }
        string? python = new[] { "/usr/bin/python3", "/usr/local/bin/python3" }.FirstOrDefault(File.Exists);
        Skip.If(python is null, "python3 not found: the generator's byte-for-byte check needs it (the split checks above ran)");
        Directory.CreateDirectory(_dir);
        var psi = new ProcessStartInfo(python!) { RedirectStandardOutput = true, RedirectStandardError = true };
        foreach (var a in new[] { Path.Combine(Root, "tools", "gen_math_data.py"), "--out", _dir }) psi.ArgumentList.Add(a);
        using var p = Process.Start(psi)!;
        Assert.True(p.WaitForExit(60_000), "generator did not finish in 60 s");
        Assert.True(p.ExitCode == 0, p.StandardError.ReadToEnd());
        foreach (var f in new[] { "math-train.jsonl", "math-test.jsonl" })
            Assert.True(File.ReadAllBytes(Path.Combine(_dir, f)).AsSpan().SequenceEqual(File.ReadAllBytes(Path.Combine(Examples, "data", f))),
                        $"tools/gen_math_data.py writes a different {f} than the committed one: regenerate and commit");
    }

    [Fact]
    public void TokenizerRecipeWritesTheCommittedFilesAndSplitsDigits()
    {
        string folder = Path.Combine(Examples, "models", "math-bpe");
        var files = MathBpeRecipe.Build(File.ReadLines(Path.Combine(Examples, "data", "math-train.jsonl")));
        Assert.Equal(["config.json", "tokenizer.json", "tokenizer_config.json"], files.Keys);
        foreach (var (name, text) in files)
            Assert.True(text == File.ReadAllText(Path.Combine(folder, name)),
                        $"tools/MathTokenizer writes a different {name} than examples/models/math-bpe's: run it (dotnet run --project tools/MathTokenizer -c Release) and commit");

        var tok = HfTokenizer.Load(folder);
        Assert.Equal(BpeStyle.ByteLevel, tok.Style);
        Assert.Equal(("<|begin_of_text|>", "<|end_of_text|>", true), (tok.BosToken, tok.EosToken, tok.AddBos));
        var model = LlamaConfig.FromHfJson(Path.Combine(folder, "config.json"));
        Assert.True(model.Vocab >= tok.VocabSize);
        // every digit its own token, wherever it stands; words, " ####" whole
        foreach (string number in new[] { "7", "12", "20", "108", "9876543210" })
            foreach (string text in new[] { number, " " + number, "=" + number, number + "=" })
            {
                var ids = tok.Encode(text);
                var digits = ids.Select(t => tok.Decode([t])).Where(p => p.Any(char.IsDigit)).ToArray();
                Assert.Equal(number.Select(c => c.ToString()), digits);
            }
        Assert.Single(tok.Encode(" ####"));
        Assert.Single(tok.Encode(" apples"));
        Assert.Equal("Tom had 7 apples, got 5 more. How many now?7+5=12 #### 12", tok.Decode(tok.Encode("Tom had 7 apples, got 5 more. How many now?7+5=12 #### 12")));
        // llama.cpp knows the pre-tokenizer (the GGUF export of a trained model tokenizes the same way)
        Assert.Equal("qwen2", GgufVocab.From(tok, model.Vocab).Pre);
        // the example's lengths hold every record: the longest prompt with BOS, the longest response with EOS
        var cfg = ExperimentConfig.Load(Path.Combine(Examples, "grpo-math.yaml"));
        var records = Lines(Path.Combine(Examples, "data", "math-train.jsonl")).Concat(Lines(Path.Combine(Examples, "data", "math-test.jsonl"))).ToArray();
        int prompt = records.Max(r => tok.Encode((string)r["prompt"]!).Length + 1), response = records.Max(r => tok.Encode((string)r["response"]!).Length + 1);
        output.WriteLine($"longest prompt {prompt} tokens, longest response {response} tokens, vocabulary {tok.VocabSize} (model {model.Vocab})");
        Assert.All(cfg.Stages, s => Assert.True(s.Batch.PromptLen >= prompt && s.Batch.GenLen >= response, $"{s.Algorithm}: prompt_len {s.Batch.PromptLen}, gen_len {s.Batch.GenLen}"));
        Assert.All(cfg.Stages, s => Assert.Equal(Path.Combine(folder, "config.json"), Path.GetFullPath(Path.Combine(cfg.BaseDirectory, s.Models["actor"].ConfigPath!))));
    }

    /// <summary>The example with absolute paths and the given iterations / eval size, in a temporary folder.</summary>
    private string Shortened(int sft, int grpo, int evalSize)
    {
        Directory.CreateDirectory(_dir);
        string yaml = File.ReadAllText(Path.Combine(Examples, "grpo-math.yaml"))
            .Replace("models/math-bpe/", Path.Combine(Examples, "models", "math-bpe") + "/")
            .Replace("data/math-", Path.Combine(Examples, "data") + "/math-");
        // the top-level iterations (grpo), the sft stage's (indented), the eval line: whatever the example's figures
        yaml = Regex.Replace(yaml, @"^iterations: \d+$", $"iterations: {grpo}", RegexOptions.Multiline);
        yaml = Regex.Replace(yaml, @"^    iterations: \d+$", $"    iterations: {sft}", RegexOptions.Multiline);
        yaml = Regex.Replace(yaml, @"^eval: \{[^}]*\}$", $"eval: {{ size: {evalSize}, every: 100 }}", RegexOptions.Multiline);
        string p = Path.Combine(_dir, "grpo-math.yaml");
        File.WriteAllText(p, yaml);
        var cfg = ExperimentConfig.Load(p);
        Assert.Equal((sft, grpo, evalSize), (cfg.Stages[0].Iterations, cfg.Stages[1].Iterations, cfg.Eval.Size));
        return p;
    }

    [Fact]
    public void ShortRunThenEvalGivesTheRunsHeldOutScore()
    {
        string cfg = Shortened(sft: 4, grpo: 1, evalSize: 8), run = Path.Combine(_dir, "run");
        var (code, text) = ReadmeCommandTableTests.Realn("run", cfg, "--out", run);
        Assert.True(code == 0, text);
        var summary = JsonNode.Parse(File.ReadAllText(Path.Combine(run, "summary.json")))!;
        Assert.NotNull(summary["stages"]![0]!["final_task_score"]);
        var lastEval = Lines(Path.Combine(run, "metrics.jsonl")).Last(l => (string)l["call"]! == "eval");
        Assert.Equal(0, (long)lastEval["held_out_records_skipped"]!);

        var (ec, eo) = ReadmeCommandTableTests.Realn("eval", cfg, "--checkpoint", run, "--json");
        Assert.True(ec == 0, eo);
        var r = JsonNode.Parse(eo.Trim().Split('\n')[^1])!;
        Assert.Equal(8, (int)r["examples"]!);
        Assert.Equal("numeric_match", (string)r["scorer"]!);
        Assert.Equal((double)lastEval["task_score"]!, (double)r["task_score"]!, 6);
        // the SFT artifact against the SFT stage: the SFT stage's last eval line
        var sftEval = Lines(Path.Combine(run, "metrics.jsonl")).Last(l => (string)l["call"]! == "eval" && (int)l["stage"]! == 0);
        var (sc, so) = ReadmeCommandTableTests.Realn("eval", cfg, "--checkpoint", Path.Combine(run, "checkpoints", "sft"), "--stage", "0", "--json");
        Assert.True(sc == 0, so);
        Assert.Equal((double)sftEval["task_score"]!, (double)JsonNode.Parse(so.Trim().Split('\n')[^1])!["task_score"]!, 6);

        var (bc, bo) = ReadmeCommandTableTests.Realn("eval", cfg, "--checkpoint", _dir);
        Assert.Equal(2, bc);
        Assert.Contains("not a model folder", bo);
    }

    [SkippableFact]
    public void FullExampleRaisesHeldOutAccuracyFromSftToGrpo()
    {
        Skip.IfNot(Environment.GetEnvironmentVariable("REALN_EXAMPLE_TESTS") == "1",
                   "the full examples/grpo-math.yaml run takes minutes: set REALN_EXAMPLE_TESTS=1 to run it");
        string run = Path.Combine(_dir, "run");
        Directory.CreateDirectory(_dir);
        var (code, text) = ReadmeCommandTableTests.Realn("run", Path.Combine(Examples, "grpo-math.yaml"), "--out", run);
        Assert.True(code == 0, text);
        // trained with the example's byte-level BPE tokenizer, which its checkpoints carry
        Assert.Equal(File.ReadAllBytes(Path.Combine(Examples, "models", "math-bpe", "tokenizer.json")),
                     File.ReadAllBytes(Path.Combine(run, "checkpoints", "sft", "tokenizer.json")));
        var s = JsonNode.Parse(File.ReadAllText(Path.Combine(run, "summary.json")))!;
        double sft = (double)s["stages"]![0]!["final_task_score"]!, grpo = (double)s["final_task_score"]!;
        output.WriteLine($"held-out accuracy after SFT {sft:0.000}, after GRPO {grpo:0.000}, {(double)s["seconds"]!:0} s");
        Assert.True(grpo >= sft + 0.15, $"held-out accuracy after SFT {sft:0.000}, after GRPO {grpo:0.000}: expected a clear rise (>= 0.15)");
    }
}
