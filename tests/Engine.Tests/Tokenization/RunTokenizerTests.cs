// Training with a Hugging Face tokenizer: the model folder's tokenizer.json (+ tokenizer_config.json)
// becomes the run's tokenizer (prompts with its BOS, responses ending with its EOS, the chat template
// under `dataset.chat`), checkpoints and stage artifacts carry the tokenizer files, and `realn eval`,
// generation and GGUF export of a trained byte-level BPE model work from them. Bad input (a vocabulary
// smaller than the tokenizer's, a garbled or EOS-less tokenizer.json, two different tokenizers,
// `dataset.chat` without a chat template) is refused naming the field and the file.
using System.Text.Json.Nodes;
using ReaLNative.Engine.Config;
using ReaLNative.Engine.Runs;
using ReaLNative.Engine.Tokenization;
using Xunit;

namespace ReaLNative.Engine.Tests.Tokenization;

public sealed class RunTokenizerTests : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("realn-run-tok-").FullName;

    public void Dispose() => Directory.Delete(_dir, true);

    /// <summary>A model folder: a small LLaMA config.json of <paramref name="vocab"/> ids and, unless
    /// <paramref name="tokenizer"/> is false, the LLaMA-3-layout byte-level tokenizer (512 ids) with its chat template.</summary>
    private string ModelFolder(string name, int vocab = 512, bool tokenizer = true)
    {
        string dir = Path.Combine(_dir, name);
        Directory.CreateDirectory(dir);
        File.WriteAllText(Path.Combine(dir, "config.json"), $$"""
            { "model_type": "llama", "num_hidden_layers": 2, "hidden_size": 32, "intermediate_size": 64,
              "num_attention_heads": 2, "num_key_value_heads": 2, "vocab_size": {{vocab}}, "max_position_embeddings": 128,
              "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "tie_word_embeddings": false }
            """);
        if (tokenizer) TrainedTokenizerTests.ByteLevelLlama3(dir);
        return dir;
    }

    private void Data()
    {
        var rows = Enumerable.Range(0, 40).Select(i => (a: i % 7 + 1, b: i / 7 + 2)).ToArray();
        File.WriteAllLines(Path.Combine(_dir, "train.jsonl"), rows.Select(r =>
            $$"""{"prompt": "Tom has {{r.a}} pens and gets {{r.b}} more. How many?", "response": "{{r.a}}+{{r.b}}={{r.a + r.b}} #### {{r.a + r.b}}", "answer": "{{r.a + r.b}}"}"""));
        File.WriteAllText(Path.Combine(_dir, "held.jsonl"), """{"prompt": "Ann has 3 cards and gets 4 more. How many?", "answer": "7"}""" + "\n");
    }

    private string Yaml(string model, string dataset = "{ train: train.jsonl, held_out: held.jsonl }", string extraModels = "") => $$"""
        name: bpe
        algorithm: grpo
        seed: 5
        iterations: 2
        eval: { size: 1, every: 100 }
        models:
          actor: { config: {{model}}/config.json, init: sft }
          ref: { config: {{model}}/config.json, init: sft }
        {{extraModels}}
        reward: { kind: numeric_match }
        dataset: {{dataset}}
        batch: { size: 8, prompt_len: 32, gen_len: 16, group_size: 4 }
        optim: { lr: 1.0e-3 }
        stages:
          - algorithm: sft
            iterations: 6
            batch: { size: 8 }
            optim: { lr: 3.0e-3 }
            models: { actor: { config: {{model}}/config.json, init: random } }
          - { algorithm: grpo }
        """;

    [Fact]
    public void ByteLevelPromptsResponsesAndCompletions()
    {
        var hf = TrainedTokenizerTests.ByteLevelLlama3(_dir);
        var run = RunTokenizer.Of(hf);
        // tokenizer_config.json makes <|eot_id|> EOS; without a BOS-adding post-processor or add_bos_token no BOS
        int bos = hf.TokenId("<|begin_of_text|>")!.Value, eos = hf.TokenId("<|eot_id|>")!.Value;
        Assert.Equal((bos, eos, false), (hf.Bos, run.Eos, hf.AddBos));
        Assert.Equal(hf.Encode("How many pens?"), run.Prompt("How many pens?"));
        var cfg = JsonNode.Parse(File.ReadAllText(Path.Combine(_dir, "tokenizer_config.json")))!.AsObject();
        cfg["add_bos_token"] = true;
        File.WriteAllText(Path.Combine(_dir, "tokenizer_config.json"), cfg.ToJsonString());
        var withBos = RunTokenizer.Of(HfTokenizer.Load(_dir));
        Assert.Equal([bos, .. hf.Encode("How many pens?")], withBos.Prompt("How many pens?"));
        Assert.Equal([.. hf.Encode("7+5=12 #### 12"), eos], run.Response("How many pens?", "7+5=12 #### 12"));
        // a completion stops before the first EOS, whatever follows
        Assert.Equal("7+5=12", run.Completion([.. hf.Encode("7+5=12"), eos, .. hf.Encode("junk")]));
        Assert.Equal("7+5", run.Completion(hf.Encode("7+5")));
        Assert.Equal([Path.Combine(_dir, "tokenizer.json"), Path.Combine(_dir, "tokenizer_config.json")], run.Files());
    }

    [Fact]
    public void ChatFormattingRendersTheTemplateAndEndsTheAnswerWithEos()
    {
        var hf = TrainedTokenizerTests.ByteLevelLlama3(_dir);
        var chat = RunTokenizer.Of(hf).WithChat(true);
        var prompt = chat.Prompt("How many pens?");
        Assert.Equal(ChatEncoder.EncodePrompt(hf, [new ChatMessage("user", "How many pens?")]), prompt);
        var response = chat.Response("How many pens?", "12");
        Assert.Equal(hf.Eos, response[^1]);
        Assert.Equal(1, response.Count(t => t == hf.Eos));
        // prompt + response is the whole conversation as the template renders it (up to the answer's EOS)
        string full = hf.ChatTemplate!.Render([new ChatMessage("user", "How many pens?"), new ChatMessage("assistant", "12")], false, hf.TemplateVariables());
        Assert.Equal(full, hf.Decode([.. prompt, .. response]));
        Assert.Equal("12", chat.Completion(response));

        // no template: chat formatting is refused, naming the file
        File.WriteAllText(Path.Combine(_dir, "tokenizer_config.json"), """{ "eos_token": "<|eot_id|>" }""");
        var plain = RunTokenizer.Of(HfTokenizer.Load(_dir));
        var e = Assert.Throws<InvalidDataException>(() => plain.WithChat(true));
        Assert.Contains("tokenizer_config.json beside " + Path.Combine(_dir, "tokenizer.json"), e.Message);
        Assert.Throws<InvalidDataException>(() => RunTokenizer.Of(new CharTokenizer(32)).WithChat(true));
    }

    [Fact]
    public void CharTokenizerFormatsAsBefore()
    {
        var ch = new CharTokenizer(32);
        var run = RunTokenizer.Of(ch);
        Assert.Equal([ch.Bos, .. ch.Encode("53142=")], run.Prompt("53142="));
        Assert.Equal([.. ch.Encode("12345"), ch.Eos], run.Response("53142=", "12345"));
        Assert.Equal(ch.Decode([.. ch.Encode("123"), ch.Eos, .. ch.Encode("45")]), run.Completion([.. ch.Encode("123"), ch.Eos, .. ch.Encode("45")]));
        Assert.Empty(run.Files());
    }

    [Fact]
    public void BpeRunCarriesTheTokenizerIntoCheckpointsAndEvalGenerateExportUseIt()
    {
        string model = ModelFolder("model");
        Data();
        var cfg = ExperimentConfig.Parse(Yaml(model) + "\ncheckpoint_every: 1\n", _dir);
        string run = Path.Combine(_dir, "run");
        using (var p = new Pipeline(cfg, run)) p.Run(resume: false);
        byte[] tokJson = File.ReadAllBytes(Path.Combine(model, "tokenizer.json")), tokCfg = File.ReadAllBytes(Path.Combine(model, "tokenizer_config.json"));
        string sft = Path.Combine(run, "checkpoints", "sft");
        string last = Path.Combine(run, "checkpoints", File.ReadAllText(Path.Combine(run, "checkpoints", "latest")).Trim(), "actor");
        foreach (var dir in new[] { sft, last })
        {
            Assert.Equal(tokJson, File.ReadAllBytes(Path.Combine(dir, "tokenizer.json")));
            Assert.Equal(tokCfg, File.ReadAllBytes(Path.Combine(dir, "tokenizer_config.json")));
        }
        // the artifact's manifest covers them
        Assert.Null(ReaLNative.Engine.Checkpoints.CheckpointStore.VerifyArtifact(sft));

        // `realn eval` of the checkpoint: the run's last eval line, and the answer generation gives
        var exp = TrainingExperiment.FromYamlText(Yaml(model), _dir);
        var score = Evaluation.HeldOut(exp, last, 1);
        var evals = File.ReadAllLines(Path.Combine(run, "metrics.jsonl")).Select(l => JsonNode.Parse(l)!).Where(l => (string)l["call"]! == "eval").ToArray();
        Assert.Equal((double)evals[^1]["task_score"]!, score.Score, 9);
        var answer = score.Answers[0];
        string generated = TextGenerator.Complete(last, answer.Prompt, new CompletionSettings { MaxNewTokens = 16 });
        Assert.Equal(answer.Completion, generated);
        var g = GgufExport.Write(last, Path.Combine(_dir, "m.gguf"));
        Assert.Contains("tokenizer " + Path.Combine(last, "tokenizer.json"), g.Tokenizer);

        // a model folder trained with another tokenizer is refused by `realn eval`
        string copy = Path.Combine(_dir, "copy");
        Directory.CreateDirectory(copy);
        foreach (var f in Directory.GetFiles(last)) File.Copy(f, Path.Combine(copy, Path.GetFileName(f)));
        File.WriteAllText(Path.Combine(copy, "tokenizer.json"), BpeTrainer.ByteLevel(["a b c", "b c d"], 300, ["<s>", "</s>"]));
        var other = Assert.Throws<InputException>(() => Evaluation.HeldOut(exp, copy, 1));
        Assert.Contains(Path.Combine(copy, "tokenizer.json") + " is not the tokenizer of the experiment's models", other.Message);
    }

    [Fact]
    public void ChatDatasetTrains()
    {
        string model = ModelFolder("model");
        Data();
        // the LLaMA-3 template's headers make prompts longer
        var cfg = ExperimentConfig.Parse(Yaml(model, "{ train: train.jsonl, held_out: held.jsonl, chat: true }").Replace("prompt_len: 32", "prompt_len: 64"), _dir);
        Assert.True(cfg.Stages[0].Dataset!.Chat);
        using var p = new Pipeline(cfg, Path.Combine(_dir, "run"));
        p.Run(resume: false);
        Assert.True(File.Exists(Path.Combine(_dir, "run", "summary.json")));
    }

    [Fact]
    public void BadTokenizerInputIsRefusedNamingFieldAndFile()
    {
        Data();
        ConfigException Refused(string yaml) => Assert.Throws<ConfigException>(() => new Pipeline(ExperimentConfig.Parse(yaml, _dir), Path.Combine(_dir, "run")).Dispose());

        string small = ModelFolder("small", vocab: 300);
        var e = Refused(Yaml(small));
        Assert.Equal("stages[0].models.actor.config", e.FieldPath);
        Assert.Contains("vocab_size 300 is smaller than the tokenizer's 512 ids (" + Path.Combine(small, "tokenizer.json") + ")", e.Message);

        string garbled = ModelFolder("garbled");
        File.WriteAllText(Path.Combine(garbled, "tokenizer.json"), "{ \"model\": { \"type\": \"BPE\", \"vocab\": ");
        e = Refused(Yaml(garbled));
        Assert.Equal("stages[0].models.actor.config", e.FieldPath);
        Assert.Contains(Path.Combine(garbled, "tokenizer.json") + ": not valid JSON", e.Message);

        string noEos = ModelFolder("noeos");
        File.WriteAllText(Path.Combine(noEos, "tokenizer_config.json"), """{ "eos_token": null }""");
        e = Refused(Yaml(noEos));
        Assert.Contains("has no EOS token: name it as eos_token in tokenizer_config.json", e.Message);

        string badCfg = ModelFolder("badcfg");
        File.WriteAllText(Path.Combine(badCfg, "tokenizer_config.json"), """{ "eos_token": "<|no_such|>" }""");
        e = Refused(Yaml(badCfg));
        Assert.Contains("eos_token \"<|no_such|>\" is not a token of", e.Message);

        // two models, two different tokenizers
        string other = ModelFolder("other", tokenizer: false);
        File.WriteAllText(Path.Combine(other, "tokenizer.json"), BpeTrainer.ByteLevel(["a b c", "b c d"], 300, ["<s>", "</s>"]));
        string good = ModelFolder("good");
        e = Refused(Yaml(good).Replace($"ref: {{ config: {good}/config.json, init: sft", $"ref: {{ config: {good}/config.json, init: {other}"));
        Assert.Equal("stages[1].models.ref.init", e.FieldPath);
        Assert.Contains("share one tokenizer", e.Message);

        // dataset.chat: the character tokenizer, and a tokenizer without a template
        string charModel = ModelFolder("char", vocab: 88, tokenizer: false);
        e = Refused(Yaml(charModel, "{ train: train.jsonl, held_out: held.jsonl, chat: true }"));
        Assert.Equal("stages[0].dataset.chat", e.FieldPath);
        string noTemplate = ModelFolder("notemplate");
        File.WriteAllText(Path.Combine(noTemplate, "tokenizer_config.json"), """{ "eos_token": "<|eot_id|>" }""");
        e = Refused(Yaml(noTemplate, "{ train: train.jsonl, held_out: held.jsonl, chat: true }"));
        Assert.Equal("stages[0].dataset.chat", e.FieldPath);
        Assert.Contains("chat_template", e.Message);
    }
}
