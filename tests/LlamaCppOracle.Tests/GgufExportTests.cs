// `realn export`'s GGUF against llama.cpp (LLamaSharp 0.30.0, CPU): random small LLaMA models with
// tokenizers trained from the repository's documents are exported and loaded in llama.cpp, which
// must compute our logits (F32: to float rounding; F16/BF16: our model with its weights rounded the
// same way, llama.cpp also rounding activations), generate our greedy tokens, tokenize text to our
// ids, and report the chat template and special tokens we wrote.
using System.Text;
using ReaLNative.Engine.Checkpoints;
using ReaLNative.Engine.Generation;
using ReaLNative.Engine.Model;
using ReaLNative.Engine.Tokenization;
using ReaLNative.Interop;
using Xunit;
using Xunit.Abstractions;

namespace ReaLNative.LlamaCppOracle.Tests;

public sealed class GgufExportTests(ITestOutputHelper output) : IDisposable
{
    private static readonly string[] Llama3Specials = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"];
    private const string Llama3Template = "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}";
    private const string MistralTemplate = "{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token}}{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}{% endfor %}";

    private readonly string _dir = Directory.CreateTempSubdirectory("realn-gguf-").FullName;

    public void Dispose() => Directory.Delete(_dir, true);

    private static readonly Lazy<string[]> s_corpus = new(() =>
    {
        var d = new DirectoryInfo(AppContext.BaseDirectory);
        while (d is not null && !File.Exists(Path.Combine(d.FullName, "ReaLNative.sln"))) d = d.Parent;
        string root = d?.FullName ?? throw new DirectoryNotFoundException("no ReaLNative.sln above " + AppContext.BaseDirectory);
        return [.. new[] { "README.md", "docs/experiment-config.md" }.SelectMany(f => File.ReadAllText(Path.Combine(root, f)).Split("\n\n"))];
    });
    private static readonly Lazy<string> s_byteLevel = new(() => BpeTrainer.ByteLevel(s_corpus.Value, 512, Llama3Specials));
    private static readonly Lazy<string> s_spm = new(() => BpeTrainer.SentencePiece(s_corpus.Value, 600, []));

    private HfTokenizer Tokenizer(bool spm)
    {
        string dir = Path.Combine(_dir, spm ? "spm" : "bytes");
        Directory.CreateDirectory(dir);
        File.WriteAllText(Path.Combine(dir, "tokenizer.json"), spm ? s_spm.Value : s_byteLevel.Value);
        var cfg = spm
            ? new System.Text.Json.Nodes.JsonObject { ["bos_token"] = "<s>", ["eos_token"] = "</s>", ["chat_template"] = MistralTemplate }
            : new System.Text.Json.Nodes.JsonObject { ["bos_token"] = "<|begin_of_text|>", ["eos_token"] = "<|eot_id|>", ["chat_template"] = Llama3Template };
        File.WriteAllText(Path.Combine(dir, "tokenizer_config.json"), cfg.ToJsonString());
        return HfTokenizer.Load(dir);
    }

    private static LlamaModel Model(int vocab, bool tied = false, int seed = 3)
    {
        var cfg = new LlamaConfig { Layers = 2, Hidden = 64, Intermediate = 176, Heads = 4, KvHeads = 2, Vocab = vocab, MaxPositions = 128, TiedEmbeddings = tied };
        var m = new LlamaModel(cfg, scalarHead: false);
        m.InitRandom(seed, std: 0.2f);  // logits of order 1: a wrong layout or rounding shows
        return m;
    }

    private static readonly string[] Samples =
    [
        "Hello world! The reward model scores 42 responses.",
        "  leading spaces,\ttabs\nand new lines\n\n  indented",
        "unicode: café, naïve, 漢字 and ß",
        "realn run examples/ppo-tiny.yaml --out runs/ppo-tiny",
    ];

    private static int[] ChatTokens(HfTokenizer tok) =>
        ChatEncoder.EncodeConversation(tok, [new("user", "What does realn plan do?"), new("assistant", "It searches the execution plan.")]).Ids;

    private sealed record Cmp(double RelL2, double MaxAbs, int Agree, int Positions);

    private static unsafe Cmp Compare(LlamaModel model, LlamaCpp cpp, int[] tokens)
    {
        var theirs = cpp.AllLogits(tokens);
        float* ours = model.Forward(PackedBatch.FromSequences([tokens]));
        int V = model.Config.Vocab;
        double num = 0, den = 0, mx = 0;
        int agree = 0;
        for (int t = 0; t < tokens.Length; t++)
        {
            int am = 0, bm = 0;
            for (int j = 0; j < V; j++)
            {
                double a = ours[(long)t * V + j], b = theirs[(long)t * V + j];
                num += (a - b) * (a - b);
                den += b * b;
                mx = Math.Max(mx, Math.Abs(a - b));
                if (a > ours[(long)t * V + am]) am = j;
                if (b > theirs[(long)t * V + bm]) bm = j;
            }
            if (am == bm) agree++;
        }
        return new Cmp(Math.Sqrt(num / den), mx, agree, tokens.Length);
    }

    private string Export(LlamaModel model, GgufVocab? vocab, GgufDType dtype, string name)
    {
        string path = Path.Combine(_dir, name + ".gguf");
        GgufWriter.Write(model, path, vocab, dtype);
        return path;
    }

    private static LlamaCpp Load(string path, int maxLen = 128) => new(path, Native.GetNumThreads(), 3, maxLen, 3 * maxLen);

    [Fact]
    public void F32LogitsEqualOursWithTheByteLevelTokenizer()
    {
        var tok = Tokenizer(spm: false);
        using var model = Model(512);
        using var cpp = Load(Export(model, GgufVocab.From(tok, 512), GgufDType.F32, "f32"));
        var r = Compare(model, cpp, ChatTokens(tok));
        output.WriteLine($"F32: relative L2 {r.RelL2:E2}, max |diff| {r.MaxAbs:E2}, argmax {r.Agree}/{r.Positions}");
        Assert.True(r.RelL2 < 1e-5, $"relative L2 {r.RelL2}");
        Assert.Equal(r.Positions, r.Agree);
    }

    [Fact]
    public void F32GreedyTokensEqualOurs()
    {
        var tok = Tokenizer(spm: false);
        using var model = Model(512, seed: 5);
        using var cpp = Load(Export(model, GgufVocab.From(tok, 512), GgufDType.F32, "greedy"));
        var prompts = new List<int[]> { ChatEncoder.EncodePrompt(tok, [new("user", "Hi")]), tok.Encode(Samples[0]), tok.Encode(Samples[3]) };
        var ours = Generator.Generate(model, prompts, new GenerationOptions { MaxNewTokens = 16, Temperature = 0 }).NewTokens;
        var theirs = cpp.Greedy(prompts, 16).Tokens;
        for (int s = 0; s < prompts.Count; s++) Assert.Equal(ours[s], theirs[s]);
    }

    [Theory]
    [InlineData("f16", 2e-3)]
    [InlineData("bf16", 2e-2)]
    public void HalfPrecisionExportsMatchOurModelWithRoundedWeights(string dtypeName, double tolerance)
    {
        var dtype = GgufWriter.ParseDType(dtypeName);
        var tok = Tokenizer(spm: false);
        using var model = Model(512);
        string path = Export(model, GgufVocab.From(tok, 512), dtype, dtype.ToString());
        // Our model with the matrices rounded as the file stores them (norms stay F32 in both).
        foreach (var name in model.Layout.Views.Select(v => v.Name).Where(n => !n.EndsWith("norm.weight", StringComparison.Ordinal)))
        {
            var w = model.View(name);
            for (int i = 0; i < w.Length; i++)
                w[i] = dtype == GgufDType.F16 ? (float)(Half)w[i] : GgufWriter.FromBf16(GgufWriter.ToBf16(w[i]));
        }
        using var cpp = Load(path);
        var r = Compare(model, cpp, ChatTokens(tok));
        output.WriteLine($"{dtype}: relative L2 {r.RelL2:E2}, max |diff| {r.MaxAbs:E2}, argmax {r.Agree}/{r.Positions}");
        Assert.True(r.RelL2 < tolerance, $"relative L2 {r.RelL2} (tolerance {tolerance})");
        Assert.True(r.Agree >= r.Positions * 9 / 10, $"argmax agrees at {r.Agree}/{r.Positions} positions");
    }

    [Fact]
    public void LlamaCppTokenizesTextAsWeDo()
    {
        var tok = Tokenizer(spm: false);
        using var model = Model(512);
        using var cpp = Load(Export(model, GgufVocab.From(tok, 512), GgufDType.F32, "tokenize"));
        string chat = tok.ChatTemplate!.Render([new("system", "Be brief."), new("user", "What is 2+2?"), new("assistant", "4")], true, tok.TemplateVariables());
        foreach (var s in Samples.Append(chat).Concat(s_corpus.Value.Take(10)))
            Assert.Equal(tok.Encode(s), cpp.Tokenize(s));
    }

    [Fact]
    public void ChatTemplateAndSpecialTokensAreInTheMetadata()
    {
        var tok = Tokenizer(spm: false);
        using var model = Model(512);
        using var cpp = Load(Export(model, GgufVocab.From(tok, 512), GgufDType.F32, "meta"));
        Assert.Equal(Llama3Template, cpp.Metadata["tokenizer.chat_template"]);
        Assert.Equal(tok.Bos.ToString(), cpp.Metadata["tokenizer.ggml.bos_token_id"]);
        Assert.Equal(tok.Eos.ToString(), cpp.Metadata["tokenizer.ggml.eos_token_id"]);
        Assert.Equal("gpt-2", cpp.Metadata["tokenizer.ggml.pre"]);
    }

    [Fact]
    public void SentencePieceStyleExportRunsAndTokenizesAsWeDo()
    {
        var tok = Tokenizer(spm: true);
        using var model = Model(600);
        using var cpp = Load(Export(model, GgufVocab.From(tok, 600), GgufDType.F32, "spm"));
        var ids = ChatEncoder.EncodePrompt(tok, [new("user", "What does realn plan do?")]);
        var r = Compare(model, cpp, ids);
        Assert.True(r.RelL2 < 1e-5, $"relative L2 {r.RelL2}");
        Assert.Equal(r.Positions, r.Agree);
        foreach (var s in Samples.Concat(s_corpus.Value.Take(10)))
            Assert.Equal(tok.Encode(s), cpp.Tokenize(s));
    }

    [Fact]
    public void CharacterTokenizerModelsExportWithTheirVocabulary()
    {
        using var model = Model(32);
        var ch = new CharTokenizer(32);
        using var cpp = Load(Export(model, GgufVocab.FromChar(ch, 32), GgufDType.F32, "char"));
        Assert.Equal(32, cpp.Vocab);
        foreach (var s in new[] { "53142=12345", "12+34=46", "3, 1 - 2: 0" })
            Assert.Equal(ch.Encode(s), cpp.Tokenize(s));
        int[] prompt = [ch.Bos, .. ch.Encode("53142=")];
        var r = Compare(model, cpp, prompt);
        Assert.True(r.RelL2 < 1e-5, $"relative L2 {r.RelL2}");
    }

    [Fact]
    public void PaddedVocabularyAndTiedEmbeddingsExport()
    {
        var tok = Tokenizer(spm: false);
        using var model = Model(520, tied: true);
        using var cpp = Load(Export(model, GgufVocab.From(tok, 520), GgufDType.F32, "padded"));
        Assert.Equal(520, cpp.Vocab);
        var r = Compare(model, cpp, ChatTokens(tok));
        Assert.True(r.RelL2 < 1e-5, $"relative L2 {r.RelL2}");
        Assert.Equal(r.Positions, r.Agree);
    }

    [Fact]
    public void TooSmallAModelVocabularyIsRefused()
    {
        var tok = Tokenizer(spm: false);
        var e = Assert.Throws<ArgumentException>(() => GgufVocab.From(tok, 500));
        Assert.Contains("has 512 tokens, more than the model's vocab_size 500", e.Message);
    }
}
