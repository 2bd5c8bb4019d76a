// Conversations to token ids with a loss mask through the tokenizer's chat template: the text of
// every assistant turn (its content and the end-of-turn marker the template writes after it) is
// trained on; system/user turns, role headers and the generation prompt are context. Each span
// is tokenized on its own (as TRL's assistant masks are), so a mask boundary is a token boundary.
namespace ReaLNative.Engine.Tokenization;

/// <summary>Token ids and, per token, whether the loss counts it (an assistant token).</summary>
internal sealed record ChatEncoding(int[] Ids, bool[] LossMask)
{
    /// <summary>Index of the first trained token (the prompt length for a prompt + response pair).</summary>
    public int FirstTrained => Array.IndexOf(LossMask, true) is var i && i >= 0 ? i : Ids.Length;
}

internal static class ChatEncoder
{
    private static ChatTemplate TemplateOf(HfTokenizer tok) =>
        tok.ChatTemplate ?? throw new InvalidDataException($"tokenizer {tok.Path} has no chat_template (tokenizer_config.json beside it)");

    /// <summary>The prompt a model answers: the conversation rendered with the generation prompt.</summary>
    public static int[] EncodePrompt(HfTokenizer tok, IReadOnlyList<ChatMessage> messages) =>
        tok.Encode(TemplateOf(tok).Render(messages, addGenerationPrompt: true, tok.TemplateVariables()));

    /// <summary>A prompt conversation and the assistant's response to it.</summary>
    public static ChatEncoding EncodePromptResponse(HfTokenizer tok, IReadOnlyList<ChatMessage> prompt, string response) =>
        EncodeConversation(tok, [.. prompt, new ChatMessage("assistant", response)]);

    /// <summary>A whole conversation; every assistant turn is trained on.</summary>
    public static ChatEncoding EncodeConversation(HfTokenizer tok, IReadOnlyList<ChatMessage> messages)
    {
        var t = TemplateOf(tok);
        var vars = tok.TemplateVariables();
        var ids = new List<int>();
        var mask = new List<bool>();
        string done = "";
        void Add(string text, bool trained)
        {
            if (text.Length == 0) return;
            var part = tok.Encode(text);
            ids.AddRange(part);
            mask.AddRange(Enumerable.Repeat(trained, part.Length));
        }
        string Prefix(string text, int i, string what)
        {
            if (!text.StartsWith(done, StringComparison.Ordinal))
                throw new InvalidDataException($"chat template of {tok.ChatTemplateSource}: rendering messages 0..{i} {what} does not extend the rendering of the messages before it, so a loss mask cannot be cut from it");
            return text[done.Length..];
        }
        for (int i = 0; i < messages.Count; i++)
        {
            var upTo = messages.Take(i + 1).ToList();
            if (messages[i].Role == "assistant")
            {
                string gen = t.Render(messages.Take(i).ToList(), addGenerationPrompt: true, vars);
                Add(Prefix(gen, i - 1, "with the generation prompt"), false);
                done = gen;
                string full = t.Render(upTo, addGenerationPrompt: false, vars);
                Add(Prefix(full, i, ""), true);
                done = full;
            }
            else
            {
                string full = t.Render(upTo, addGenerationPrompt: false, vars);
                Add(Prefix(full, i, ""), false);
                done = full;
            }
        }
        return new ChatEncoding([.. ids], [.. mask]);
    }
}
