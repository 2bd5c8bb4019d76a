// Tokenizers trained by BpeTrainer on the repository's own documents, loaded back through
// HfTokenizer (Microsoft.ML.Tokenizers): ids equal a plain reference BPE written here (rank-ordered
// merges per pre-token; SentencePiece-style with byte fallback), text round-trips, special tokens
// stay whole, tokenizer_config.json supplies BOS/EOS and the chat template, and ChatEncoder's
// loss mask covers exactly the assistant turns.
using System.Text;
using System.Text.RegularExpressions;
using ReaLNative.Engine.Tests.Config;
using ReaLNative.Engine.Tokenization;
using Xunit;

namespace ReaLNative.Engine.Tests.Tokenization;

public sealed class TrainedTokenizerTests : IDisposable
{
    internal static readonly string[] Llama3Specials = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"];

    private readonly string _dir = Directory.CreateTempSubdirectory("realn-trained-tok-").FullName;

    public void Dispose() => Directory.Delete(_dir, true);

    private static readonly Lazy<string[]> s_corpus = new(LoadCorpus);
    private static readonly Dictionary<string, string> s_trained = [];

    /// <summary>Trains once per (kind, size) in this test run.</summary>
    private static string Trained(string kind, int vocab, Func<string> train)
    {
        lock (s_trained)
        {
            if (!s_trained.TryGetValue($"{kind}/{vocab}", out var json)) s_trained[$"{kind}/{vocab}"] = json = train();
            return json;
        }
    }

    internal static string[] Corpus() => s_corpus.Value;

    private static string[] LoadCorpus()
    {
        string root = ConfigTests.RepoRoot();
        return [.. new[] { "README.md", "docs/experiment-config.md", "docs/plan-format.md" }
            .Select(f => Path.Combine(root, f)).Where(File.Exists)
            .SelectMany(f => File.ReadAllText(f).Split("\n\n"))];
    }

    /// <summary>A byte-level tokenizer (LLaMA-3 layout) with the LLaMA-3 chat template beside it.</summary>
    internal static HfTokenizer ByteLevelLlama3(string dir, int vocab = 512)
    {
        File.WriteAllText(Path.Combine(dir, "tokenizer.json"), Trained("byte", vocab, () => BpeTrainer.ByteLevel(Corpus(), vocab, Llama3Specials)));
        File.Copy(Path.Combine(AppContext.BaseDirectory, "Tokenization", "ChatTemplates", "llama3.json"), Path.Combine(dir, "tokenizer_config.json"), true);
        return HfTokenizer.Load(dir);
    }

    internal static HfTokenizer SentencePieceMistral(string dir, int vocab = 600)
    {
        File.WriteAllText(Path.Combine(dir, "tokenizer.json"), Trained("spm", vocab, () => BpeTrainer.SentencePiece(Corpus(), vocab, [])));
        File.Copy(Path.Combine(AppContext.BaseDirectory, "Tokenization", "ChatTemplates", "mistral.json"), Path.Combine(dir, "tokenizer_config.json"), true);
        return HfTokenizer.Load(dir);
    }

    private static readonly string[] Samples =
    [
        "Hello world! The reward model scores 42 responses.",
        "  leading spaces,\ttabs\nand new lines\n\n  indented",
        "unicode: café, naïve, 漢字, emoji 🙂 and ß",
        "numbers 1234567 and symbols $%^&*()[]{}",
        "realn run examples/ppo-tiny.yaml --out runs/ppo-tiny",
    ];

    /// <summary>Reference BPE: each symbol pair merged in rank order until no ranked pair is left.</summary>
    private static List<string> ReferenceBpe(List<string> symbols, Dictionary<(string, string), int> ranks)
    {
        while (symbols.Count > 1)
        {
            int best = -1, bestRank = int.MaxValue;
            for (int i = 0; i + 1 < symbols.Count; i++)
                if (ranks.TryGetValue((symbols[i], symbols[i + 1]), out var r) && r < bestRank) { bestRank = r; best = i; }
            if (best < 0) break;
            symbols[best] += symbols[best + 1];
            symbols.RemoveAt(best + 1);
        }
        return symbols;
    }

    private static Dictionary<(string, string), int> Ranks(HfTokenizer t) =>
        t.Merges.Select((m, i) => (m, i)).ToDictionary(x => (x.m.Left, x.m.Right), x => x.i);

    [Fact]
    public void ByteLevelIdsEqualAReferenceBpeAndTextRoundTrips()
    {
        var t = ByteLevelLlama3(_dir);
        Assert.Equal(BpeStyle.ByteLevel, t.Style);
        Assert.Equal(512, t.VocabSize);
        Assert.True(t.Merges.Count > 200, $"only {t.Merges.Count} merges learned");
        var ranks = Ranks(t);
        var pre = new Regex(HfTokenizer.Gpt2Pattern);
        foreach (var s in Samples.Concat(Corpus().Take(20)))
        {
            var expected = new List<int>();
            foreach (Match m in pre.Matches(s))
            {
                var sym = Encoding.UTF8.GetBytes(m.Value).Select(b => BpeTrainer.ByteToChar[b].ToString()).ToList();
                expected.AddRange(ReferenceBpe(sym, ranks).Select(x => t.TokenId(x)!.Value));
            }
            var ids = t.Encode(s);
            Assert.Equal(expected, ids);
            Assert.Equal(s, t.Decode(ids));
        }
        // the merges compress the training text (all of it: its first paragraph alone, README's
        // 12-byte title, went from 7 to 8 tokens when other paragraphs of README changed)
        string text = string.Join("\n\n", Corpus());
        int tokens = t.Encode(text).Length, bytes = Encoding.UTF8.GetByteCount(text);
        Assert.True(tokens < bytes * 0.6, $"the training text: {tokens} tokens for {bytes} bytes ({(double)tokens / bytes:F3}; {t.Merges.Count} merges)");
    }

    [Fact]
    public void SpecialTokensStayWholeAndTheConfigNamesBosEosAndTemplate()
    {
        var t = ByteLevelLlama3(_dir);
        Assert.Equal("<|begin_of_text|>", t.BosToken);
        Assert.Equal("<|eot_id|>", t.EosToken);  // from tokenizer_config.json, not the first guess (<|end_of_text|>)
        Assert.NotNull(t.ChatTemplate);
        var ids = t.Encode("<|start_header_id|>user<|end_header_id|>\n\nhi<|eot_id|>");
        Assert.Equal(t.TokenId("<|start_header_id|>"), ids[0]);
        Assert.Equal(t.Eos, ids[^1]);
        Assert.True(t.IsControl(t.Eos));
        Assert.Equal("<|start_header_id|>user<|end_header_id|>\n\nhi<|eot_id|>", t.Decode(ids));
    }

    [Fact]
    public void SentencePieceStyleMatchesAReferenceWithByteFallback()
    {
        var t = SentencePieceMistral(_dir);
        Assert.Equal(BpeStyle.SentencePiece, t.Style);
        Assert.Equal(1, t.Bos);
        Assert.Equal(2, t.Eos);
        Assert.True(t.AddBos);
        var ranks = Ranks(t);
        foreach (var s in Samples.Concat(Corpus().Take(20)))
        {
            var expected = new List<int>();
            var sym = ("▁" + s.Replace(' ', '▁')).EnumerateRunes().Select(r => r.ToString()).ToList();
            foreach (var piece in ReferenceBpe(sym, ranks))
            {
                if (t.TokenId(piece) is int id) expected.Add(id);
                else expected.AddRange(Encoding.UTF8.GetBytes(piece).Select(b => t.TokenId($"<0x{b:X2}>")!.Value));
            }
            var ids = t.Encode(s);
            Assert.Equal(expected, ids);
            Assert.Equal(s, t.Decode(ids));
        }
        // characters the corpus never had go through <0xXX> byte tokens
        var emoji = t.Encode("🙂");
        Assert.Contains(t.TokenId("<0xF0>")!.Value, emoji);
        // As transformers' (legacy) LLaMA-2 tokenizer: each piece between special tokens gets its '▁',
        // so a space appears after <s> when decoding.
        Assert.Equal("<s> [INST] hi [/INST]", t.Decode(t.Encode("<s>[INST] hi [/INST]")));
    }

    [Fact]
    public void ChatEncoderMasksExactlyTheAssistantTurns()
    {
        var t = ByteLevelLlama3(_dir);
        ChatMessage[] conv = [new("system", "Be brief."), new("user", "What is 2+2?"), new("assistant", "4"), new("user", "And 3+3?"), new("assistant", "6, of course.")];
        var e = ChatEncoder.EncodeConversation(t, conv);
        Assert.Equal(e.Ids.Length, e.LossMask.Length);
        string whole = t.Decode(e.Ids);
        Assert.Equal(t.ChatTemplate!.Render(conv, false, t.TemplateVariables()), whole);
        // the trained spans, in order: each assistant content and its end-of-turn token
        var spans = new List<string>();
        for (int i = 0; i < e.Ids.Length; i++)
        {
            if (!e.LossMask[i]) continue;
            int j = i;
            while (j < e.Ids.Length && e.LossMask[j]) j++;
            spans.Add(t.Decode(e.Ids[i..j]));
            i = j;
        }
        Assert.Equal(["4<|eot_id|>", "6, of course.<|eot_id|>"], spans);
        // prompt + response: the prompt is the generation-prompt rendering
        var pr = ChatEncoder.EncodePromptResponse(t, conv[..2], "4");
        Assert.Equal(ChatEncoder.EncodePrompt(t, conv[..2]), pr.Ids[..pr.FirstTrained]);
        Assert.EndsWith("<|start_header_id|>assistant<|end_header_id|>\n\n", t.Decode(pr.Ids[..pr.FirstTrained]));
        Assert.Equal(t.Eos, pr.Ids[^1]);
    }

    [Fact]
    public void APostProcessorThatPrependsBosSetsAddBos()
    {
        var t = ByteLevelLlama3(_dir, 300);
        Assert.False(t.AddBos);
        var root = System.Text.Json.Nodes.JsonNode.Parse(File.ReadAllText(Path.Combine(_dir, "tokenizer.json")))!.AsObject();
        // as in LLaMA-3's tokenizer.json
        root["post_processor"] = System.Text.Json.Nodes.JsonNode.Parse("""
            {"type": "Sequence", "processors": [{"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": false, "use_regex": true},
             {"type": "TemplateProcessing", "single": [{"SpecialToken": {"id": "<|begin_of_text|>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
              "pair": [], "special_tokens": {}}]}
            """);
        File.WriteAllText(Path.Combine(_dir, "tokenizer.json"), root.ToJsonString());
        t = HfTokenizer.Load(_dir);
        Assert.True(t.AddBos);
        Assert.Equal("<|begin_of_text|>", t.BosToken);
    }

    [Fact]
    public void BadTokenizerConfigIsNamed()
    {
        File.WriteAllText(Path.Combine(_dir, "tokenizer.json"), BpeTrainer.ByteLevel(Corpus().Take(5), 300, Llama3Specials));
        string cfg = Path.Combine(_dir, "tokenizer_config.json");
        File.WriteAllText(cfg, """{ "eos_token": "<|nope|>" }""");
        Assert.Contains($"{cfg}: eos_token \"<|nope|>\" is not a token", Assert.Throws<InvalidDataException>(() => HfTokenizer.Load(_dir)).Message);
        File.WriteAllText(cfg, """{ "chat_template": "{% for m in messages %}\n{% include 'x' %}{% endfor %}" }""");
        var e = Assert.Throws<ChatTemplateException>(() => HfTokenizer.Load(_dir));
        Assert.Contains($"{cfg}: chat_template: chat template line 2, column 1: unknown tag 'include'", e.Message);
        File.WriteAllText(cfg, """{ "bos_token": {"content": "<|begin_of_text|>"}, "eos_token": null, "chat_template": [{"name": "tool_use", "template": "x"}, {"name": "default", "template": "{{ bos_token }}"}] }""");
        var t = HfTokenizer.Load(_dir);
        Assert.Equal(-1, t.Eos);
        Assert.Equal("<|begin_of_text|>", t.ChatTemplate!.Render([], false, t.TemplateVariables()));
    }
}
