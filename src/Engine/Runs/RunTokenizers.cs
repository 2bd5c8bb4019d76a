// Which tokenizer a run trains with: the Hugging Face tokenizer.json (with tokenizer_config.json
// beside it) of the models' folder (the folder of a model's `config:`, or its `init:` checkpoint
// directory) when there is one, otherwise the synthetic tasks' character tokenizer sized to the
// smallest vocabulary. Every model of the run must have room for the tokenizer's ids, and two
// different tokenizer.json files among the models are refused.
using ReaLNative.Engine.Config;
using ReaLNative.Engine.Model;
using ReaLNative.Engine.Tokenization;

namespace ReaLNative.Engine.Runs;

internal static class RunTokenizers
{
    /// <summary>The run's tokenizer; <paramref name="arch"/> gives each model's architecture.</summary>
    /// <exception cref="ConfigException">A model's vocabulary is smaller than the tokenizer's, the models' folders
    /// hold different tokenizers, a tokenizer file is missing or malformed, or a `dataset.chat` stage's tokenizer
    /// has no chat template; the message names the field and the file.</exception>
    public static RunTokenizer Resolve(ExperimentConfig cfg, Func<ModelSpec, LlamaConfig> arch)
    {
        var models = cfg.Stages.SelectMany(s => s.Models.Select(kv => (Stage: s, Role: kv.Key, Spec: kv.Value))).ToList();
        string Field(StageConfig s, string role, string key) => cfg.ExplicitStages ? $"{s.Path}.models.{role}.{key}" : $"models.{role}.{key}";
        var found = new List<(string Field, string File)>();
        foreach (var (s, role, m) in models)
        {
            if (m.ConfigPath is not null)
            {
                string dir = Path.GetDirectoryName(Path.GetFullPath(Path.Combine(cfg.BaseDirectory, m.ConfigPath)))!;
                if (File.Exists(Path.Combine(dir, "tokenizer.json"))) found.Add((Field(s, role, "config"), Path.Combine(dir, "tokenizer.json")));
            }
            if (m.InitFromPath)
            {
                string dir = Path.GetFullPath(Path.Combine(cfg.BaseDirectory, m.Init));
                if (File.Exists(Path.Combine(dir, "tokenizer.json"))) found.Add((Field(s, role, "init"), Path.Combine(dir, "tokenizer.json")));
            }
        }
        if (found.Count == 0)
        {
            var vocab = models.Select(x => arch(x.Spec).Vocab).Min();
            var tok = RunTokenizer.Of(new CharTokenizer(vocab));
            foreach (var s in cfg.Stages.Where(s => s.Dataset is { Chat: true }))
                throw new ConfigException(ChatField(cfg, s), "needs a Hugging Face tokenizer with a chat_template: put tokenizer.json and tokenizer_config.json in the model's folder (beside its config.json)");
            return tok;
        }
        var (firstField, firstFile) = found[0];
        byte[] bytes = File.ReadAllBytes(firstFile);
        foreach (var (field, file) in found.Skip(1))
            if (Path.GetFullPath(file) != Path.GetFullPath(firstFile) && !File.ReadAllBytes(file).AsSpan().SequenceEqual(bytes))
                throw new ConfigException(field, $"the models of a run share one tokenizer, but {file} differs from {firstFile} ({firstField})");
        HfTokenizer hf;
        RunTokenizer run;
        try
        {
            hf = HfTokenizer.Load(firstFile);
            run = RunTokenizer.Of(hf);
        }
        catch (Exception e) when (e is InvalidDataException or FileNotFoundException or ChatTemplateException)
        {
            throw new ConfigException(firstField, $"tokenizer of the model's folder: {e.Message}");
        }
        foreach (var (s, role, m) in models)
        {
            var a = arch(m);
            if (a.Vocab < hf.VocabSize)
                throw new ConfigException(Field(s, role, m.ConfigPath is not null ? "config" : "preset"),
                    $"the model's vocab_size {a.Vocab} is smaller than the tokenizer's {hf.VocabSize} ids ({firstFile})");
        }
        foreach (var s in cfg.Stages.Where(s => s.Dataset is { Chat: true }))
        {
            try { run.WithChat(true); }
            catch (InvalidDataException e) { throw new ConfigException(ChatField(cfg, s), e.Message); }
        }
        return run;
    }

    private static string ChatField(ExperimentConfig cfg, StageConfig s) => cfg.ExplicitStages ? $"{s.Path}.dataset.chat" : "dataset.chat";
}
