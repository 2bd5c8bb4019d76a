// A small BPE trainer that writes Hugging Face tokenizer.json files: byte-level (GPT-2 regex
// pre-tokenizer, as LLaMA-3/Qwen2 files are laid out) and SentencePiece-style (LLaMA-2 layout:
// Prepend/Replace normalizer, <0xXX> byte fallback). Enough to make real-format tokenizers from
// the repository's own text for tests, examples and the GGUF export checks; not a replacement
// for the `tokenizers` trainer on large corpora (it recounts pairs every merge).
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using System.Text.RegularExpressions;

namespace ReaLNative.Engine.Tokenization;

internal static class BpeTrainer
{
    /// <summary>GPT-2's printable spelling of each byte (bytes_to_unicode).</summary>
    public static readonly char[] ByteToChar = BuildByteMap();

    private static char[] BuildByteMap()
    {
        var map = new char[256];
        int n = 0;
        for (int b = 0; b < 256; b++)
        {
            bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
            map[b] = printable ? (char)b : (char)(256 + n++);
        }
        return map;
    }

    /// <summary>Byte-level BPE over <paramref name="texts"/> to <paramref name="vocabSize"/> tokens
    /// (including <paramref name="specialTokens"/>, which get the last ids); returns tokenizer.json.</summary>
    public static string ByteLevel(IEnumerable<string> texts, int vocabSize, IReadOnlyList<string> specialTokens, string pattern = HfTokenizer.Gpt2Pattern)
    {
        int baseVocab = vocabSize - specialTokens.Count;
        if (baseVocab < 256) throw new ArgumentException($"a byte-level vocabulary needs at least 256 + {specialTokens.Count} tokens (got {vocabSize})");
        var pre = new Regex(pattern, RegexOptions.CultureInvariant);
        var counts = new Dictionary<string, long>(StringComparer.Ordinal);
        foreach (var t in texts)
            foreach (Match m in pre.Matches(t))
            {
                string w = string.Concat(Encoding.UTF8.GetBytes(m.Value).Select(b => ByteToChar[b]));
                counts[w] = counts.GetValueOrDefault(w) + 1;
            }
        var vocab = new List<string>(ByteToChar.Select(c => c.ToString()));
        var merges = Learn(counts, vocab, baseVocab);
        var root = Header(specialTokens.Select((s, i) => (s, vocab.Count + i)));
        root["normalizer"] = null;
        root["pre_tokenizer"] = new JsonObject
        {
            ["type"] = "Sequence",
            ["pretokenizers"] = new JsonArray(
                new JsonObject { ["type"] = "Split", ["pattern"] = new JsonObject { ["Regex"] = pattern }, ["behavior"] = "Isolated", ["invert"] = false },
                new JsonObject { ["type"] = "ByteLevel", ["add_prefix_space"] = false, ["trim_offsets"] = true, ["use_regex"] = false }),
        };
        root["post_processor"] = null;
        root["decoder"] = new JsonObject { ["type"] = "ByteLevel", ["add_prefix_space"] = true, ["trim_offsets"] = true, ["use_regex"] = true };
        root["model"] = Model(vocab, merges, unk: null, byteFallback: false);
        return root.ToJsonString(new JsonSerializerOptions { WriteIndented = true });
    }

    /// <summary>SentencePiece-style BPE (&lt;unk&gt; 0, &lt;s&gt; 1, &lt;/s&gt; 2, 256 byte tokens, the characters seen, merges),
    /// <paramref name="extraSpecial"/> last; returns tokenizer.json.</summary>
    public static string SentencePiece(IEnumerable<string> texts, int vocabSize, IReadOnlyList<string> extraSpecial)
    {
        var vocab = new List<string> { "<unk>", "<s>", "</s>" };
        for (int b = 0; b < 256; b++) vocab.Add($"<0x{b:X2}>");
        var counts = new Dictionary<string, long>(StringComparer.Ordinal);
        var chars = new Dictionary<string, long>(StringComparer.Ordinal);
        foreach (var t in texts)
        {
            string norm = "▁" + t.Replace(' ', '▁');
            int start = 0;
            for (int i = 1; i <= norm.Length; i++)
            {
                if (i < norm.Length && norm[i] != '▁') continue;
                string w = norm[start..i];
                counts[w] = counts.GetValueOrDefault(w) + 1;
                start = i;
            }
            foreach (var r in norm.EnumerateRunes()) chars[r.ToString()] = chars.GetValueOrDefault(r.ToString()) + 1;
        }
        int baseVocab = vocabSize - extraSpecial.Count;
        foreach (var c in chars.OrderByDescending(kv => kv.Value).ThenBy(kv => kv.Key, StringComparer.Ordinal).Select(kv => kv.Key))
            if (vocab.Count < baseVocab) vocab.Add(c);
        if (vocab.Count >= baseVocab && vocab.Count < 3 + 256 + chars.Count)
            throw new ArgumentException($"vocabulary size {vocabSize} leaves no room for the {chars.Count} characters of the text");
        var merges = Learn(counts, vocab, baseVocab, splitRunes: true);
        var specials = new List<(string, int)> { ("<unk>", 0), ("<s>", 1), ("</s>", 2) };
        specials.AddRange(extraSpecial.Select((s, i) => (s, vocab.Count + i)));
        var root = Header(specials);
        root["normalizer"] = new JsonObject
        {
            ["type"] = "Sequence",
            ["normalizers"] = new JsonArray(
                new JsonObject { ["type"] = "Prepend", ["prepend"] = "▁" },
                new JsonObject { ["type"] = "Replace", ["pattern"] = new JsonObject { ["String"] = " " }, ["content"] = "▁" }),
        };
        root["pre_tokenizer"] = null;
        root["post_processor"] = null;
        root["decoder"] = new JsonObject
        {
            ["type"] = "Sequence",
            ["decoders"] = new JsonArray(
                new JsonObject { ["type"] = "Replace", ["pattern"] = new JsonObject { ["String"] = "▁" }, ["content"] = " " },
                new JsonObject { ["type"] = "ByteFallback" },
                new JsonObject { ["type"] = "Fuse" },
                new JsonObject { ["type"] = "Strip", ["content"] = " ", ["start"] = 1, ["stop"] = 0 }),
        };
        root["model"] = Model(vocab, merges, unk: "<unk>", byteFallback: true);
        return root.ToJsonString(new JsonSerializerOptions { WriteIndented = true, Encoder = System.Text.Encodings.Web.JavaScriptEncoder.UnsafeRelaxedJsonEscaping });
    }

    private static JsonObject Header(IEnumerable<(string Content, int Id)> added)
    {
        var arr = new JsonArray();
        foreach (var (c, id) in added)
            arr.Add((JsonNode)new JsonObject  // Add(JsonNode), not Add<T>: no reflection (NativeAOT)
            {
                ["id"] = id, ["content"] = c, ["single_word"] = false, ["lstrip"] = false, ["rstrip"] = false, ["normalized"] = false, ["special"] = true,
            });
        return new JsonObject { ["version"] = "1.0", ["truncation"] = null, ["padding"] = null, ["added_tokens"] = arr };
    }

    private static JsonObject Model(List<string> vocab, List<(string, string)> merges, string? unk, bool byteFallback)
    {
        var v = new JsonObject();
        for (int i = 0; i < vocab.Count; i++) v[vocab[i]] = i;
        var m = new JsonArray();
        foreach (var (a, b) in merges) m.Add((JsonNode)new JsonArray(a, b));
        return new JsonObject
        {
            ["type"] = "BPE", ["dropout"] = null, ["unk_token"] = unk, ["continuing_subword_prefix"] = null, ["end_of_word_suffix"] = null,
            ["fuse_unk"] = byteFallback, ["byte_fallback"] = byteFallback, ["ignore_merges"] = false, ["vocab"] = v, ["merges"] = m,
        };
    }

    /// <summary>Greedy BPE: merges the most frequent adjacent pair (ties: the ordinal-smallest) until
    /// <paramref name="target"/> tokens or no pair occurs twice. Appends the new tokens to <paramref name="vocab"/>.</summary>
    private static List<(string, string)> Learn(Dictionary<string, long> counts, List<string> vocab, int target, bool splitRunes = false)
    {
        var known = new HashSet<string>(vocab, StringComparer.Ordinal);
        var words = counts.OrderBy(kv => kv.Key, StringComparer.Ordinal)
            .Select(kv => (Symbols: (splitRunes ? kv.Key.EnumerateRunes().Select(r => r.ToString()) : kv.Key.Select(c => c.ToString())).ToList(), Count: kv.Value))
            .ToList();
        var merges = new List<(string, string)>();
        while (vocab.Count < target)
        {
            var pairs = new Dictionary<(string, string), long>();
            foreach (var (sym, n) in words)
                for (int i = 0; i + 1 < sym.Count; i++)
                {
                    if (!known.Contains(sym[i]) || !known.Contains(sym[i + 1])) continue;
                    var k = (sym[i], sym[i + 1]);
                    pairs[k] = pairs.GetValueOrDefault(k) + n;
                }
            if (pairs.Count == 0) break;
            var best = pairs.OrderByDescending(kv => kv.Value).ThenBy(kv => kv.Key.Item1, StringComparer.Ordinal).ThenBy(kv => kv.Key.Item2, StringComparer.Ordinal).First();
            if (best.Value < 2) break;
            var (a, b) = best.Key;
            string ab = a + b;
            if (!known.Add(ab)) { /* already a token (reachable another way): still a merge rule */ }
            else vocab.Add(ab);
            merges.Add((a, b));
            foreach (var (sym, _) in words)
                for (int i = 0; i + 1 < sym.Count; i++)
                    if (sym[i] == a && sym[i + 1] == b) { sym[i] = ab; sym.RemoveAt(i + 1); }
        }
        return merges;
    }
}
