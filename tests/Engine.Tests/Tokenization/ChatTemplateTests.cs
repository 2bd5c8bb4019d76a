// The chat-template interpreter against Jinja2 (what transformers' apply_chat_template runs): the
// LLaMA-3, Mistral, Qwen2/ChatML and Gemma templates as their tokenizer_config.json holds them, and a
// template using every supported construct, on multi-turn conversations with and without a system
// message and a generation prompt. The expected strings were rendered by Jinja2 3.1.6 with
// tools/render_chat_templates.py (trim_blocks, lstrip_blocks, loopcontrols, raise_exception).
using System.Text.Json.Nodes;
using ReaLNative.Engine.Tokenization;
using Xunit;

namespace ReaLNative.Engine.Tests.Tokenization;

public sealed class ChatTemplateTests
{
    private static readonly Dictionary<string, ChatMessage[]> Conversations = new()
    {
        ["multi"] = [new("user", "Hello!"), new("assistant", "  Hi there.  "), new("user", "What is 2+2?\n"), new("assistant", "4"), new("user", "Thanks")],
        ["system"] = [new("system", " Be brief. "), new("user", "Hello!"), new("assistant", "Hi."), new("user", "Bye")],
        ["stop"] = [new("system", "sys"), new("user", "a"), new("tool", "t"), new("assistant", "please stop here"), new("user", "never")],
    };

    public static TheoryData<string, string, bool, string> Expected => new()
    {
        {"llama3", "multi", false, "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHello!<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\nHi there.<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nWhat is 2+2?<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n4<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nThanks<|eot_id|>"},
        {"llama3", "multi", true, "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHello!<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\nHi there.<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nWhat is 2+2?<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n4<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nThanks<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"},
        {"llama3", "system", false, "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nHello!<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\nHi.<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nBye<|eot_id|>"},
        {"llama3", "system", true, "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nHello!<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\nHi.<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nBye<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"},
        {"llama3", "stop", false, "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nsys<|eot_id|><|start_header_id|>user<|end_header_id|>\n\na<|eot_id|><|start_header_id|>tool<|end_header_id|>\n\nt<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\nplease stop here<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nnever<|eot_id|>"},
        {"llama3", "stop", true, "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nsys<|eot_id|><|start_header_id|>user<|end_header_id|>\n\na<|eot_id|><|start_header_id|>tool<|end_header_id|>\n\nt<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\nplease stop here<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nnever<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"},
        {"mistral", "multi", false, "<s>[INST] Hello! [/INST]  Hi there.  </s>[INST] What is 2+2?\n [/INST]4</s>[INST] Thanks [/INST]"},
        {"mistral", "multi", true, "<s>[INST] Hello! [/INST]  Hi there.  </s>[INST] What is 2+2?\n [/INST]4</s>[INST] Thanks [/INST]"},
        {"mistral", "system", false, "ERROR:Conversation roles must alternate user/assistant/user/assistant/..."},
        {"mistral", "system", true, "ERROR:Conversation roles must alternate user/assistant/user/assistant/..."},
        {"mistral", "stop", false, "ERROR:Conversation roles must alternate user/assistant/user/assistant/..."},
        {"mistral", "stop", true, "ERROR:Conversation roles must alternate user/assistant/user/assistant/..."},
        {"qwen2", "multi", false, "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nHello!<|im_end|>\n<|im_start|>assistant\n  Hi there.  <|im_end|>\n<|im_start|>user\nWhat is 2+2?\n<|im_end|>\n<|im_start|>assistant\n4<|im_end|>\n<|im_start|>user\nThanks<|im_end|>\n"},
        {"qwen2", "multi", true, "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nHello!<|im_end|>\n<|im_start|>assistant\n  Hi there.  <|im_end|>\n<|im_start|>user\nWhat is 2+2?\n<|im_end|>\n<|im_start|>assistant\n4<|im_end|>\n<|im_start|>user\nThanks<|im_end|>\n<|im_start|>assistant\n"},
        {"qwen2", "system", false, "<|im_start|>system\n Be brief. <|im_end|>\n<|im_start|>user\nHello!<|im_end|>\n<|im_start|>assistant\nHi.<|im_end|>\n<|im_start|>user\nBye<|im_end|>\n"},
        {"qwen2", "system", true, "<|im_start|>system\n Be brief. <|im_end|>\n<|im_start|>user\nHello!<|im_end|>\n<|im_start|>assistant\nHi.<|im_end|>\n<|im_start|>user\nBye<|im_end|>\n<|im_start|>assistant\n"},
        {"qwen2", "stop", false, "<|im_start|>system\nsys<|im_end|>\n<|im_start|>user\na<|im_end|>\n<|im_start|>tool\nt<|im_end|>\n<|im_start|>assistant\nplease stop here<|im_end|>\n<|im_start|>user\nnever<|im_end|>\n"},
        {"qwen2", "stop", true, "<|im_start|>system\nsys<|im_end|>\n<|im_start|>user\na<|im_end|>\n<|im_start|>tool\nt<|im_end|>\n<|im_start|>assistant\nplease stop here<|im_end|>\n<|im_start|>user\nnever<|im_end|>\n<|im_start|>assistant\n"},
        {"gemma", "multi", false, "<bos><start_of_turn>user\nHello!<end_of_turn>\n<start_of_turn>model\nHi there.<end_of_turn>\n<start_of_turn>user\nWhat is 2+2?<end_of_turn>\n<start_of_turn>model\n4<end_of_turn>\n<start_of_turn>user\nThanks<end_of_turn>\n"},
        {"gemma", "multi", true, "<bos><start_of_turn>user\nHello!<end_of_turn>\n<start_of_turn>model\nHi there.<end_of_turn>\n<start_of_turn>user\nWhat is 2+2?<end_of_turn>\n<start_of_turn>model\n4<end_of_turn>\n<start_of_turn>user\nThanks<end_of_turn>\n<start_of_turn>model\n"},
        {"gemma", "system", false, "ERROR:System role not supported"},
        {"gemma", "system", true, "ERROR:System role not supported"},
        {"gemma", "stop", false, "ERROR:System role not supported"},
        {"gemma", "stop", true, "ERROR:System role not supported"},
        {"features", "multi", false, "<s>first:user=Hello! (4, 0)\n    <True>\nmid2/5:assistant=Hi there. (3, 1)\n    <True>\nmid3/5:user=What is 2+2? (2, 2)\n    <True>\nmid4/5:assistant=4 (1, 0)\n    <False>\nlast:user=Thanks (0, 1)\n    <True>\nb:2;a:[1, 2.5, None, True];5 3 cba True False -2 -2 1024 0.25{\"x\": \"a\\u003cb\", \"y\": [1, {\"z\": null}]}\n012|empty"},
        {"features", "multi", true, "<s>first:user=Hello! (4, 0)\n    <True>\nmid2/5:assistant=Hi there. (3, 1)\n    <True>\nmid3/5:user=What is 2+2? (2, 2)\n    <True>\nmid4/5:assistant=4 (1, 0)\n    <False>\nlast:user=Thanks (0, 1)\n    <True>\nb:2;a:[1, 2.5, None, True];5 3 cba True False -2 -2 1024 0.25GEN!!!{\"x\": \"a\\u003cb\", \"y\": [1, {\"z\": null}]}\n012|empty"},
        {"features", "system", false, "<s>[SYS 9] BE BRIEF.\nfirst:user=Hello! (2, 0)\n    <True>\nmid2/3:assistant=Hi. (1, 1)\n    <False>\nlast:user=Bye (0, 2)\n    <False>\nb:2;a:[1, 2.5, None, True];3 3 cba True False -2 -2 1024 0.25{\"x\": \"a\\u003cb\", \"y\": [1, {\"z\": null}]}\n012|empty"},
        {"features", "system", true, "<s>[SYS 9] BE BRIEF.\nfirst:user=Hello! (2, 0)\n    <True>\nmid2/3:assistant=Hi. (1, 1)\n    <False>\nlast:user=Bye (0, 2)\n    <False>\nb:2;a:[1, 2.5, None, True];3 3 cba True False -2 -2 1024 0.25GEN!!!{\"x\": \"a\\u003cb\", \"y\": [1, {\"z\": null}]}\n012|empty"},
        {"features", "stop", false, "<s>[SYS 3] SYS\nfirst:user=a (3, 0)\n    <False>\nmid2/4:tool=t (2, 1)\nmid3/4:assistant=please stop here (1, 2)\nb:2;a:[1, 2.5, None, True];3 3 cba True False -2 -2 1024 0.25{\"x\": \"a\\u003cb\", \"y\": [1, {\"z\": null}]}\n012|empty"},
        {"features", "stop", true, "<s>[SYS 3] SYS\nfirst:user=a (3, 0)\n    <False>\nmid2/4:tool=t (2, 1)\nmid3/4:assistant=please stop here (1, 2)\nb:2;a:[1, 2.5, None, True];3 3 cba True False -2 -2 1024 0.25GEN!!!{\"x\": \"a\\u003cb\", \"y\": [1, {\"z\": null}]}\n012|empty"},
    };

    internal static (ChatTemplate Template, Dictionary<string, object?> Vars) Load(string name)
    {
        string dir = Path.Combine(AppContext.BaseDirectory, "Tokenization", "ChatTemplates");
        if (name == "features") return (ChatTemplate.Parse(File.ReadAllText(Path.Combine(dir, "features.jinja"))), new() { ["bos_token"] = "<s>", ["eos_token"] = "</s>" });
        var cfg = JsonNode.Parse(File.ReadAllText(Path.Combine(dir, name + ".json")))!.AsObject();
        var vars = new Dictionary<string, object?>();
        foreach (var k in new[] { "bos_token", "eos_token" })
            if (cfg[k] is JsonValue v) vars[k] = v.GetValue<string>();
        return (ChatTemplate.Parse(cfg["chat_template"]!.GetValue<string>()), vars);
    }

    [Theory]
    [MemberData(nameof(Expected))]
    public void RendersAsJinja2Does(string template, string conversation, bool addGenerationPrompt, string expected)
    {
        var (t, vars) = Load(template);
        var messages = Conversations[conversation];
        if (expected.StartsWith("ERROR:", StringComparison.Ordinal))
        {
            var e = Assert.Throws<ChatTemplateException>(() => t.Render(messages, addGenerationPrompt, vars));
            Assert.Contains(expected["ERROR:".Length..], e.Message);
        }
        else Assert.Equal(expected, t.Render(messages, addGenerationPrompt, vars));
    }

    [Fact]
    public void UnknownTagIsRefusedWithItsLineAndColumn()
    {
        var e = Assert.Throws<ChatTemplateException>(() => ChatTemplate.Parse("{% for m in messages %}\n  {% macro f() %}x{% endmacro %}\n{% endfor %}"));
        Assert.Equal("chat template line 2, column 3: unknown tag 'macro' (supported: if, elif, else, endif, for, endfor, set, break, continue)", e.Message);
    }

    [Theory]
    [InlineData("{% if x %}a", "line 1, column 1: 'if' is never closed with 'endif'")]
    [InlineData("a\n{% for m in messages %}{% endif %}", "line 2, column 24: unexpected 'endif' inside 'for'")]
    [InlineData("{{ 'a' + }}", "line 1, column 10: expected an expression")]
    [InlineData("x {{ 'a'", "line 1, column 3: '{{' is never closed with '}}'")]
    [InlineData("{% endfor %}", "line 1, column 1: unexpected 'endfor' (no block is open)")]
    [InlineData("{% set x %}", "line 1, column 10: 'set' needs '= value'")]
    public void MalformedTemplatesAreRefusedWithTheirPosition(string source, string message)
    {
        var e = Assert.Throws<ChatTemplateException>(() => ChatTemplate.Parse(source));
        Assert.Contains(message, e.Message);
    }

    [Theory]
    [InlineData("{{ messages[0].content | nosuchfilter }}", "line 1, column 24: unknown filter 'nosuchfilter'")]
    [InlineData("{{ nothing.here }}", "line 1, column 11: 'nothing' is undefined")]
    [InlineData("{{ 'a' + 1 }}", "unsupported operand types for +: str and int")]
    [InlineData("{{ raise_exception('custom ' ~ messages | length) }}", "chat template raised an exception: custom 1")]
    public void RenderErrorsNameThePlace(string source, string message)
    {
        var e = Assert.Throws<ChatTemplateException>(() => ChatTemplate.Parse(source).Render([new("user", "hi")], false));
        Assert.Contains(message, e.Message);
    }

    [Fact]
    public void UndefinedPrintsEmptyAndSetInsideALoopDoesNotLeak()
    {
        // Jinja scoping: a plain `set` inside a for body is local to the iteration; a namespace carries state out.
        var t = ChatTemplate.Parse("[{{ undefined_name }}]{% set x = 1 %}{% for m in messages %}{% set x = x + 1 %}{% endfor %}{{ x }}");
        Assert.Equal("[]1", t.Render([new("user", "a"), new("user", "b")], false));
    }
}
