using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using System.Text.RegularExpressions;
using Microsoft.ML.Tokenizers;

namespace ReaLNative.Engine.Tokenization;

/// <summary>How a BPE tokenizer.json splits and spells text.</summary>
internal enum BpeStyle
{
    /// <summary>GPT-2 / LLaMA-3 / Qwen2: a pre-tokenizer regex, then BPE over the bytes of each piece (bytes as printable characters).</summary>
    ByteLevel,
    /// <summary>LLaMA-2 / Mistral / Gemma tokenizer.json: spaces as '▁', a '▁' prepended, BPE over characters, &lt;0xXX&gt; byte fallback.</summary>
    SentencePiece,
    /// <summary>Plain BPE over words and non-word runs (no byte mapping).</summary>
    Plain,
}

/// <summary>
/// A Hugging Face tokenizer: <c>tokenizer.json</c> of a BPE model (byte-level with the file's
/// pre-tokenizer regex, SentencePiece-style with byte fallback, or plain) through
/// Microsoft.ML.Tokenizers, plus <c>tokenizer_config.json</c> when it sits beside it (BOS/EOS tokens,
/// add_bos_token, chat_template). Merges may be "a b" strings or ["a", "b"] pairs. Special (added)
/// tokens in the text are matched first and never split. Other model types (Unigram, WordPiece)
/// are refused with a message naming the type.
/// </summary>
internal sealed class HfTokenizer : ITokenizer
{
    /// <summary>The GPT-2 pre-tokenizer (ByteLevel with use_regex).</summary>
    public const string Gpt2Pattern = @"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";

    private static readonly Regex WholeText = new(@"[\s\S]+", RegexOptions.CultureInvariant);

    private readonly BpeTokenizer _bpe;
    private readonly Regex? _pre;
    private readonly Regex? _specialSplit;
    private readonly Dictionary<string, int> _special;
    private readonly HashSet<int> _control = [];
    private readonly Dictionary<string, int> _vocab;
    private readonly string[] _tokens;
    private readonly int _unk;
    private readonly int[] _byteTokens;  // SentencePiece byte fallback: <0xXX> ids, -1 when missing
    private readonly bool _prependSpace;

    private HfTokenizer(BpeTokenizer bpe, BpeStyle style, Regex? pre, Dictionary<string, int> vocab, Dictionary<string, int> special,
        List<(string, string)> merges, int unk, bool prependSpace)
    {
        _bpe = bpe;
        Style = style;
        _pre = pre;
        _vocab = vocab;
        _special = special;
        Merges = merges;
        _unk = unk;
        _prependSpace = prependSpace;
        int size = Math.Max(vocab.Values.DefaultIfEmpty(-1).Max(), special.Values.DefaultIfEmpty(-1).Max()) + 1;
        VocabSize = size;
        _tokens = new string[size];
        foreach (var (k, v) in vocab) _tokens[v] = k;
        foreach (var (k, v) in special) _tokens[v] = k;
        _specialSplit = special.Count == 0 ? null
            : new Regex(string.Join("|", special.Keys.OrderByDescending(k => k.Length).Select(Regex.Escape)), RegexOptions.CultureInvariant);
        _byteTokens = new int[256];
        for (int b = 0; b < 256; b++) _byteTokens[b] = vocab.TryGetValue($"<0x{b:X2}>", out var id) ? id : -1;
    }

    public int VocabSize { get; }
    /// <summary>SentencePiece-style: a '▁' goes in front of each piece of text.</summary>
    public bool PrependsSpace => _prependSpace;
    public int Bos { get; private set; } = -1;
    public int Eos { get; private set; } = -1;
    public BpeStyle Style { get; }
    /// <summary>The pre-tokenizer regex of a byte-level tokenizer.</summary>
    public string? PreTokenizerPattern => _pre?.ToString();
    /// <summary>Merges in rank order.</summary>
    public IReadOnlyList<(string Left, string Right)> Merges { get; }
    /// <summary>tokenizer_config.json's add_bos_token (SentencePiece-style default true, else false).</summary>
    public bool AddBos { get; private set; }
    public string? BosToken => Bos >= 0 ? _tokens[Bos] : null;
    public string? EosToken => Eos >= 0 ? _tokens[Eos] : null;
    /// <summary>tokenizer_config.json's chat_template, parsed; null when there is none.</summary>
    public ChatTemplate? ChatTemplate { get; private set; }
    /// <summary>Where the chat template came from (for messages).</summary>
    public string? ChatTemplateSource { get; private set; }
    /// <summary>The tokenizer.json read.</summary>
    public string Path { get; private set; } = "";

    /// <summary>The token's string (vocabulary spelling: byte-level characters, '▁', &lt;0xXX&gt;), or null for an id no token has.</summary>
    public string? TokenString(int id) => id >= 0 && id < _tokens.Length ? _tokens[id] : null;
    public bool IsSpecial(int id) => id >= 0 && id < _tokens.Length && _tokens[id] is { } t && _special.TryGetValue(t, out var s) && s == id;
    /// <summary>An added token marked "special": true (BOS, EOS, chat markers): GGUF's control type.</summary>
    public bool IsControl(int id) => _control.Contains(id);
    public int? TokenId(string token) => _special.TryGetValue(token, out var id) || _vocab.TryGetValue(token, out id) ? id : null;

    /// <summary>The variables a chat template sees besides messages: the special tokens by their config names.</summary>
    public Dictionary<string, object?> TemplateVariables()
    {
        var v = new Dictionary<string, object?>();
        if (BosToken is { } b) v["bos_token"] = b;
        if (EosToken is { } e) v["eos_token"] = e;
        if (_unk >= 0) v["unk_token"] = _tokens[_unk];
        return v;
    }

    /// <summary>Loads <paramref name="path"/>: a tokenizer.json, or a directory holding one (and maybe
    /// tokenizer_config.json). A tokenizer_config.json beside the file is read too.</summary>
    public static HfTokenizer Load(string path)
    {
        string file = path;
        if (Directory.Exists(path))
        {
            file = System.IO.Path.Combine(path, "tokenizer.json");
            if (!File.Exists(file)) throw new FileNotFoundException($"tokenizer directory {path} has no tokenizer.json", file);
        }
        if (!File.Exists(file)) throw new FileNotFoundException($"tokenizer {file} not found", file);
        // A field of the wrong JSON kind (a number where a string belongs, a null id) surfaces as
        // InvalidOperationException / FormatException from the node API: named here as bad input.
        HfTokenizer tok;
        try { tok = Parse(file); }
        catch (Exception e) when (e is InvalidOperationException or FormatException or NullReferenceException or KeyNotFoundException or ArgumentException)
        {
            throw new InvalidDataException($"{file}: malformed tokenizer.json ({e.Message})", e);
        }
        tok.Path = file;
        string cfg = System.IO.Path.Combine(System.IO.Path.GetDirectoryName(System.IO.Path.GetFullPath(file))!, "tokenizer_config.json");
        if (File.Exists(cfg)) tok.ApplyConfig(cfg);
        return tok;
    }

    private static JsonObject ReadObject(string path)
    {
        try { return JsonNode.Parse(File.ReadAllText(path)) as JsonObject ?? throw new InvalidDataException($"{path}: expected a JSON object"); }
        catch (JsonException e) { throw new InvalidDataException($"{path}: not valid JSON ({e.Message})"); }
    }

    private static HfTokenizer Parse(string path)
    {
        var root = ReadObject(path);
        if (root["model"] is not JsonObject model) throw new InvalidDataException($"{path}: 'model' is missing");
        string type = model["type"]?.GetValue<string>() ?? "BPE";
        if (type != "BPE") throw new InvalidDataException($"{path}: tokenizer model type '{type}' is not supported (supported: BPE)");
        if (model["vocab"] is not JsonObject vocabNode) throw new InvalidDataException($"{path}: 'model.vocab' is missing");
        var vocab = vocabNode.ToDictionary(kv => kv.Key, kv => kv.Value!.GetValue<int>());
        var merges = new List<(string, string)>();
        if (model["merges"] is JsonArray ma)
            foreach (var m in ma)
            {
                switch (m)
                {
                    case JsonValue v:
                    {
                        string s = v.GetValue<string>();
                        int sp = s.IndexOf(' ', 1);
                        if (sp < 0) throw new InvalidDataException($"{path}: merge \"{s}\" is not two tokens separated by a space");
                        merges.Add((s[..sp], s[(sp + 1)..]));
                        break;
                    }
                    case JsonArray pair when pair.Count == 2:
                        merges.Add((pair[0]!.GetValue<string>(), pair[1]!.GetValue<string>()));
                        break;
                    default:
                        throw new InvalidDataException($"{path}: malformed merge entry {m?.ToJsonString()}");
                }
            }
        var special = new Dictionary<string, int>();
        var control = new HashSet<int>();
        if (root["added_tokens"] is JsonArray added)
            foreach (var t in added.OfType<JsonObject>())
            {
                special[t["content"]!.GetValue<string>()] = t["id"]!.GetValue<int>();
                if (t["special"]?.GetValue<bool>() == true) control.Add(t["id"]!.GetValue<int>());
            }

        bool byteLevel = ContainsType(root["pre_tokenizer"], "ByteLevel") || ContainsType(root["decoder"], "ByteLevel");
        bool spm = !byteLevel && (model["byte_fallback"]?.GetValue<bool>() == true || ContainsType(root["pre_tokenizer"], "Metaspace")
            || ContainsType(root["decoder"], "Metaspace") || ContainsType(root["decoder"], "ByteFallback"));
        var style = byteLevel ? BpeStyle.ByteLevel : spm ? BpeStyle.SentencePiece : BpeStyle.Plain;
        Regex? pre = null;
        if (style == BpeStyle.ByteLevel)
        {
            // The Split pre-tokenizer's regex (LLaMA-3, Qwen2), else ByteLevel's own GPT-2 regex.
            string? pattern = FindSplitRegex(root["pre_tokenizer"]);
            if (pattern is null && FindType(root["pre_tokenizer"], "ByteLevel") is JsonObject bl && bl["use_regex"]?.GetValue<bool>() != false) pattern = Gpt2Pattern;
            pattern ??= @"[\s\S]+";
            try { pre = new Regex(pattern, RegexOptions.CultureInvariant); }
            catch (ArgumentException e) { throw new InvalidDataException($"{path}: pre-tokenizer regex is not supported by .NET ({e.Message}): {pattern}"); }
        }
        bool prepend = style == BpeStyle.SentencePiece && PrependsSpaceIn(root);
        string? unkToken = model["unk_token"]?.GetValue<string>();
        var options = new BpeOptions(vocab)
        {
            Merges = merges.Select(m => $"{m.Item1} {m.Item2}"),
            ByteLevel = style == BpeStyle.ByteLevel,
            UnknownToken = unkToken is not null && vocab.ContainsKey(unkToken) ? unkToken : null,
            // Byte-level and SentencePiece-style input arrives here already split (regex pieces, special
            // tokens out): the library must take each piece whole (its default splits at whitespace).
            PreTokenizer = style == BpeStyle.Plain ? PreTokenizer.CreateWordOrNonWord() : new RegexPreTokenizer(WholeText, null),
        };
        var bpe = BpeTokenizer.Create(options);
        int unk = unkToken is not null && vocab.TryGetValue(unkToken, out var u) ? u : -1;
        var tok = new HfTokenizer(bpe, style, pre, vocab, special, merges, unk, prepend);
        tok._control.UnionWith(control);
        int Find(params string[] names)
        {
            foreach (var n in names) if (special.TryGetValue(n, out var id) || vocab.TryGetValue(n, out id)) return id;
            return -1;
        }
        tok.Bos = Find("<s>", "<|begin_of_text|>", "<bos>", "<|startoftext|>", "<|endoftext|>");
        tok.Eos = Find("</s>", "<|end_of_text|>", "<eos>", "<|eot_id|>", "<|im_end|>", "<|endoftext|>");
        tok.AddBos = style == BpeStyle.SentencePiece && tok.Bos >= 0;
        // LLaMA-3 style: the post-processor's single-sequence template starts with the BOS token.
        if (FindType(root["post_processor"], "TemplateProcessing") is JsonObject tp && tp["single"] is JsonArray single
            && single.FirstOrDefault() is JsonObject firstPiece && firstPiece["SpecialToken"] is JsonObject st && st["id"]?.GetValue<string>() is { } bosName)
        {
            tok.AddBos = true;
            if (tok.TokenId(bosName) is int bosId) tok.Bos = bosId;
        }
        return tok;
    }

    /// <summary>Reads tokenizer_config.json: bos_token / eos_token (a string or {"content": ...}), add_bos_token, chat_template.</summary>
    private void ApplyConfig(string cfgPath)
    {
        JsonObject cfg;
        try { cfg = ReadObject(cfgPath); }
        catch (InvalidDataException) { throw; }
        int Token(string key, int current)
        {
            var n = cfg[key];
            string? s = n switch
            {
                null => null,
                JsonValue v when v.TryGetValue<string>(out var x) => x,
                JsonObject o when o["content"] is JsonValue c && c.TryGetValue<string>(out var x) => x,
                _ => throw new InvalidDataException($"{cfgPath}: '{key}' must be a string, an object with 'content', or null"),
            };
            if (n is null && !cfg.ContainsKey(key)) return current;
            if (s is null) return -1;
            return TokenId(s) ?? throw new InvalidDataException($"{cfgPath}: {key} \"{s}\" is not a token of {Path}");
        }
        Bos = Token("bos_token", Bos);
        Eos = Token("eos_token", Eos);
        if (cfg["add_bos_token"] is JsonValue ab)
            AddBos = ab.TryGetValue<bool>(out var b) ? b : throw new InvalidDataException($"{cfgPath}: 'add_bos_token' must be true or false");
        string? template = cfg["chat_template"] switch
        {
            null => null,
            JsonValue v when v.TryGetValue<string>(out var x) => x,
            // [{"name": "default", "template": ...}, {"name": "tool_use", ...}]: the default one
            JsonArray a => a.OfType<JsonObject>().FirstOrDefault(o => o["name"]?.GetValue<string>() == "default")?["template"]?.GetValue<string>()
                ?? throw new InvalidDataException($"{cfgPath}: 'chat_template' is a list without a \"default\" entry"),
            _ => throw new InvalidDataException($"{cfgPath}: 'chat_template' must be a string or a list of {{name, template}}"),
        };
        if (template is not null)
        {
            try { ChatTemplate = ChatTemplate.Parse(template); }
            catch (ChatTemplateException e) { throw new ChatTemplateException($"{cfgPath}: chat_template: {e.Message}"); }
            ChatTemplateSource = cfgPath;
        }
    }

    private static bool ContainsType(JsonNode? node, string type) => FindType(node, type) is not null;

    private static JsonObject? FindType(JsonNode? node, string type)
    {
        switch (node)
        {
            case JsonObject o:
                if (o["type"] is JsonValue t && t.TryGetValue<string>(out var s) && s == type) return o;
                foreach (var kv in o) if (FindType(kv.Value, type) is { } f) return f;
                return null;
            case JsonArray a:
                foreach (var x in a) if (FindType(x, type) is { } f) return f;
                return null;
            default:
                return null;
        }
    }

    private static string? FindSplitRegex(JsonNode? node) =>
        FindType(node, "Split") is JsonObject split && split["pattern"] is JsonObject p && p["Regex"] is JsonValue r ? r.GetValue<string>()
        : FindType(node, "Split") is JsonObject s2 && s2["pattern"] is JsonObject p2 && p2["String"] is JsonValue sv ? Regex.Escape(sv.GetValue<string>())
        : null;

    /// <summary>SentencePiece-style: a '▁' goes in front of the text (normalizer Prepend, or Metaspace with add_prefix_space / prepend_scheme first|always).</summary>
    private static bool PrependsSpaceIn(JsonObject root)
    {
        if (FindType(root["normalizer"], "Prepend") is not null) return true;
        if (FindType(root["pre_tokenizer"], "Metaspace") is JsonObject m)
            return m["prepend_scheme"]?.GetValue<string>() is "first" or "always" || m["add_prefix_space"]?.GetValue<bool>() == true;
        return false;
    }

    /// <summary>Token ids of <paramref name="text"/> (no BOS added: <see cref="AddBos"/> says whether the model expects one).</summary>
    public int[] Encode(string text)
    {
        var ids = new List<int>();
        int pos = 0;
        bool first = true;
        if (_specialSplit is not null)
        {
            foreach (Match m in _specialSplit.Matches(text))
            {
                if (m.Index > pos) EncodeSegment(text[pos..m.Index], first, ids);
                ids.Add(_special[m.Value]);
                pos = m.Index + m.Length;
                first = false;
            }
        }
        if (pos < text.Length) EncodeSegment(text[pos..], first, ids);
        return [.. ids];
    }

    private void EncodeSegment(string s, bool first, List<int> ids)
    {
        switch (Style)
        {
            case BpeStyle.ByteLevel:
                foreach (Match m in _pre!.Matches(s)) ids.AddRange(_bpe.EncodeToIds(m.Value));
                break;
            case BpeStyle.Plain:
                ids.AddRange(_bpe.EncodeToIds(s));
                break;
            default:
            {
                // HF splits the added tokens out first and normalizes each piece: Prepend applies to each.
                string norm = (_prependSpace ? "▁" : "") + s.Replace(' ', '▁');
                foreach (var t in _bpe.EncodeToTokens(norm, out _))
                {
                    if (t.Id != _unk || _unk < 0 || t.Value != _tokens[_unk] || norm[t.Offset] == _tokens[_unk]) { ids.Add(t.Id); continue; }
                    // byte fallback: the unknown characters as their UTF-8 bytes
                    foreach (byte b in Encoding.UTF8.GetBytes(norm[t.Offset]))
                        ids.Add(_byteTokens[b] >= 0 ? _byteTokens[b] : _unk);
                }
                break;
            }
        }
    }

    public string Decode(ReadOnlySpan<int> ids)
    {
        if (Style != BpeStyle.SentencePiece)
        {
            // Special tokens decode as their text; the rest through the BPE model (byte-level aware).
            var sb = new StringBuilder();
            var run = new List<int>();
            void Flush() { if (run.Count > 0) { sb.Append(_bpe.Decode(run) ?? ""); run.Clear(); } }
            foreach (int id in ids)
            {
                if (IsSpecial(id)) { Flush(); sb.Append(_tokens[id]); }
                else if (id >= 0 && id < _tokens.Length && _tokens[id] is not null) run.Add(id);
            }
            Flush();
            return sb.ToString();
        }
        var bytes = new List<byte>();
        bool atStart = true;
        foreach (int id in ids)
        {
            if (id < 0 || id >= _tokens.Length || _tokens[id] is not { } t) continue;
            if (IsSpecial(id)) { bytes.AddRange(Encoding.UTF8.GetBytes(t)); atStart = false; continue; }
            if (t.Length == 6 && t.StartsWith("<0x", StringComparison.Ordinal) && t[5] == '>' && _byteTokens[Convert.ToInt32(t[3..5], 16)] == id)
            {
                bytes.Add((byte)Convert.ToInt32(t[3..5], 16));
                atStart = false;
                continue;
            }
            string piece = t.Replace('▁', ' ');
            if (atStart && _prependSpace && piece.StartsWith(' ')) piece = piece[1..];  // decoder Strip(start=1)
            atStart = false;
            bytes.AddRange(Encoding.UTF8.GetBytes(piece));
        }
        return Encoding.UTF8.GetString(bytes.ToArray());
    }
}
