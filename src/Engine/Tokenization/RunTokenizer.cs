// The tokenizer of a training run and how a stage turns its examples into token ids: the synthetic
// tasks' character tokenizer, or the Hugging Face tokenizer (tokenizer.json + tokenizer_config.json)
// that sits in the models' folder. A prompt is BOS (when the tokenizer adds one) and the prompt's
// tokens, or, for a dataset with `chat: true`, the prompt as one user turn rendered through the
// tokenizer's chat template with the generation prompt; a response (an SFT target, a preference
// pair's answer) is its tokens then EOS, or the assistant turn the template writes after that
// prompt, cut after its first EOS (EOS added when the template writes none). A completion is
// decoded up to (without) the first EOS.
using System.Text.Json.Nodes;

namespace ReaLNative.Engine.Tokenization;

internal sealed class RunTokenizer
{
    private readonly CharTokenizer? _char;
    private readonly HfTokenizer? _hf;

    private RunTokenizer(CharTokenizer? ch, HfTokenizer? hf, bool chat)
    {
        _char = ch;
        _hf = hf;
        Chat = chat;
    }

    public static RunTokenizer Of(CharTokenizer tokenizer) => new(tokenizer, null, false);

    /// <summary>A Hugging Face tokenizer; refused when it has no EOS (a run's generation must end) or a model's vocabulary is smaller.</summary>
    public static RunTokenizer Of(HfTokenizer tokenizer)
    {
        if (tokenizer.Eos < 0)
            throw new InvalidDataException($"tokenizer {tokenizer.Path} has no EOS token: name it as eos_token in tokenizer_config.json beside it");
        return new(null, tokenizer, false);
    }

    /// <summary>This tokenizer as JSON that names it in another process of the run (the model workers
    /// that score generated sequences where they are): the character tokenizer's vocabulary size, or
    /// the full path of the Hugging Face tokenizer.json (the same files on every node, as for
    /// checkpoints), and whether the chat template formats.</summary>
    public JsonObject Describe() => _char is not null
        ? new JsonObject { ["char_vocab"] = _char.VocabSize, ["chat"] = Chat }
        : new JsonObject { ["hf"] = System.IO.Path.GetFullPath(_hf!.Path), ["chat"] = Chat };

    /// <summary>The tokenizer <see cref="Describe"/> named (a Hugging Face one loaded from its file).</summary>
    public static RunTokenizer FromDescription(JsonNode? j, string where)
    {
        bool chat = j?["chat"]?.GetValue<bool>() ?? throw new InvalidDataException($"{where}: 'chat' missing");
        if (j["char_vocab"] is { } v) return Of(new CharTokenizer(v.GetValue<int>())).WithChat(chat);
        string path = (string?)j["hf"] ?? throw new InvalidDataException($"{where}: neither 'char_vocab' nor 'hf'");
        return Of(HfTokenizer.Load(path)).WithChat(chat);
    }

    public ITokenizer Tokenizer => (ITokenizer?)_hf ?? _char!;
    /// <summary>The Hugging Face tokenizer, or null for the character tokenizer.</summary>
    public HfTokenizer? Hf => _hf;
    public int VocabSize => Tokenizer.VocabSize;
    public int Eos => Tokenizer.Eos;
    /// <summary>Prompts and responses go through the chat template (a stage's `dataset.chat`).</summary>
    public bool Chat { get; }

    /// <summary>This tokenizer formatting a stage's examples with (<paramref name="chat"/>) or without the chat template.</summary>
    public RunTokenizer WithChat(bool chat)
    {
        if (chat == Chat) return this;
        if (chat && _hf?.ChatTemplate is null)
            throw new InvalidDataException(_hf is null
                ? "dataset.chat needs a Hugging Face tokenizer with a chat_template (tokenizer.json + tokenizer_config.json in the model's folder); this run uses the character tokenizer"
                : $"dataset.chat needs a chat_template in tokenizer_config.json beside {_hf.Path}");
        return new(_char, _hf, chat);
    }

    /// <summary>The prompt's token ids, as generation and training see them.</summary>
    public int[] Prompt(string prompt)
    {
        if (_char is not null) return [_char.Bos, .. _char.Encode(prompt)];
        if (Chat) return ChatEncoder.EncodePrompt(_hf!, [new ChatMessage("user", prompt)]);
        return _hf!.AddBos && _hf.Bos >= 0 ? [_hf.Bos, .. _hf.Encode(prompt)] : _hf.Encode(prompt);
    }

    /// <summary>The tokens of <paramref name="response"/> as the answer to <paramref name="prompt"/>, ending with EOS.</summary>
    public int[] Response(string prompt, string response)
    {
        if (_char is not null) return [.. _char.Encode(response), _char.Eos];
        if (!Chat) return [.. _hf!.Encode(response), _hf.Eos];
        var t = _hf!.ChatTemplate!;
        var vars = _hf.TemplateVariables();
        List<ChatMessage> user = [new("user", prompt)];
        string gen = t.Render(user, addGenerationPrompt: true, vars);
        string full = t.Render([.. user, new ChatMessage("assistant", response)], addGenerationPrompt: false, vars);
        if (!full.StartsWith(gen, StringComparison.Ordinal))
            throw new InvalidDataException($"chat template of {_hf.ChatTemplateSource}: the rendered conversation with the answer does not extend the rendered prompt, so the answer cannot be cut from it");
        var ids = _hf.Encode(full[gen.Length..]);
        int eos = Array.IndexOf(ids, _hf.Eos);
        return eos >= 0 ? ids[..(eos + 1)] : [.. ids, _hf.Eos];
    }

    /// <summary>The text of generated tokens up to (without) the first EOS.</summary>
    public string Completion(ReadOnlySpan<int> ids)
    {
        int eos = ids.IndexOf(Eos);
        return Tokenizer.Decode(eos >= 0 ? ids[..eos] : ids);
    }

    /// <summary>The tokenizer files a checkpoint's model folders carry (tokenizer.json and, when
    /// present, tokenizer_config.json), so `realn generate/eval/export` of it find them; none for
    /// the character tokenizer.</summary>
    public IReadOnlyList<string> Files()
    {
        if (_hf is null) return [];
        var files = new List<string> { Path.GetFullPath(_hf.Path) };
        string cfg = Path.Combine(Path.GetDirectoryName(files[0])!, "tokenizer_config.json");
        if (File.Exists(cfg)) files.Add(cfg);
        return files;
    }

    /// <summary>Copies <see cref="Files"/> into the model folder <paramref name="dir"/>.</summary>
    public void CopyFilesTo(string dir)
    {
        Directory.CreateDirectory(dir);
        foreach (var f in Files())
        {
            string name = Path.GetFileName(f) == "tokenizer_config.json" ? "tokenizer_config.json" : "tokenizer.json";
            File.Copy(f, Path.Combine(dir, name), overwrite: true);
        }
    }
}
