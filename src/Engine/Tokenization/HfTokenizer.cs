using System.Text.Json;
using System.Text.Json.Nodes;
using Microsoft.ML.Tokenizers;

namespace ReaLNative.Engine.Tokenization;

/// <summary>
/// A Hugging Face <c>tokenizer.json</c> of a BPE model (LLaMA-3, Qwen, GPT-2 style byte-level BPE,
/// or plain BPE) through Microsoft.ML.Tokenizers: vocabulary, merges (either "a b" strings or
/// ["a", "b"] pairs), added/special tokens, and BOS/EOS from the added tokens. Other model types
/// (Unigram, WordPiece) are refused with a message naming the type.
/// </summary>
internal sealed class HfTokenizer : ITokenizer
{
    private readonly BpeTokenizer _bpe;

    private HfTokenizer(BpeTokenizer bpe, int vocab, int bos, int eos)
    {
        _bpe = bpe;
        VocabSize = vocab;
        Bos = bos;
        Eos = eos;
    }

    public int VocabSize { get; }
    public int Bos { get; }
    public int Eos { get; }

    public static HfTokenizer Load(string path)
    {
        if (Directory.Exists(path)) throw new InvalidDataException($"tokenizer {path} is a directory, not a tokenizer.json file");
        if (!File.Exists(path)) throw new FileNotFoundException($"tokenizer {path} not found", path);
        // A field of the wrong JSON kind (a number where a string belongs, a null id) surfaces as
        // InvalidOperationException / FormatException from the node API: named here as bad input.
        try { return Parse(path); }
        catch (Exception e) when (e is InvalidOperationException or FormatException or NullReferenceException or KeyNotFoundException or ArgumentException)
        {
            throw new InvalidDataException($"{path}: malformed tokenizer.json ({e.Message})", e);
        }
    }

    private static HfTokenizer Parse(string path)
    {
        JsonObject root;
        try { root = JsonNode.Parse(File.ReadAllText(path)) as JsonObject ?? throw new InvalidDataException($"{path}: expected a JSON object"); }
        catch (JsonException e) { throw new InvalidDataException($"{path}: not valid JSON ({e.Message})"); }
        if (root["model"] is not JsonObject model) throw new InvalidDataException($"{path}: 'model' is missing");
        string type = model["type"]?.GetValue<string>() ?? "BPE";
        if (type != "BPE") throw new InvalidDataException($"{path}: tokenizer model type '{type}' is not supported (supported: BPE)");
        if (model["vocab"] is not JsonObject vocabNode) throw new InvalidDataException($"{path}: 'model.vocab' is missing");
        var vocab = vocabNode.ToDictionary(kv => kv.Key, kv => kv.Value!.GetValue<int>());
        var merges = new List<string>();
        if (model["merges"] is JsonArray ma)
            foreach (var m in ma)
                merges.Add(m switch
                {
                    JsonValue v => v.GetValue<string>(),
                    JsonArray pair when pair.Count == 2 => $"{pair[0]!.GetValue<string>()} {pair[1]!.GetValue<string>()}",
                    _ => throw new InvalidDataException($"{path}: malformed merge entry {m?.ToJsonString()}"),
                });
        var special = new Dictionary<string, int>();
        if (root["added_tokens"] is JsonArray added)
            foreach (var t in added.OfType<JsonObject>())
                if (t["special"]?.GetValue<bool>() == true)
                    special[t["content"]!.GetValue<string>()] = t["id"]!.GetValue<int>();
        bool byteLevel = ContainsType(root["pre_tokenizer"], "ByteLevel") || ContainsType(root["decoder"], "ByteLevel");
        var options = new BpeOptions(vocab)
        {
            Merges = merges,
            SpecialTokens = special.Count > 0 ? special : null,
            ByteLevel = byteLevel,
            UnknownToken = model["unk_token"]?.GetValue<string>(),
            PreTokenizer = PreTokenizer.CreateWordOrNonWord(),
        };
        var bpe = BpeTokenizer.Create(options);
        int Find(params string[] names)
        {
            foreach (var n in names) if (special.TryGetValue(n, out var id) || vocab.TryGetValue(n, out id)) return id;
            return -1;
        }
        int bos = Find("<s>", "<|begin_of_text|>", "<|startoftext|>", "<|endoftext|>");
        int eos = Find("</s>", "<|end_of_text|>", "<|eot_id|>", "<|im_end|>", "<|endoftext|>");
        int size = Math.Max(vocab.Values.DefaultIfEmpty(-1).Max(), special.Values.DefaultIfEmpty(-1).Max()) + 1;
        return new HfTokenizer(bpe, size, bos, eos);
    }

    private static bool ContainsType(JsonNode? node, string type) => node switch
    {
        JsonObject o => o["type"]?.GetValue<string>() == type || o.Any(kv => ContainsType(kv.Value, type)),
        JsonArray a => a.Any(x => ContainsType(x, type)),
        _ => false,
    };

    public int[] Encode(string text) => [.. _bpe.EncodeToIds(text)];

    public string Decode(ReadOnlySpan<int> ids) => _bpe.Decode(ids.ToArray()) ?? "";
}
