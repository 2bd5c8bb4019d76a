// Datasets on files the test writes: JSONL and Parquet records through the field mapping, bad
// records (malformed JSON, wrong types, missing fields, untokenizable or too long text, a corrupt
// Parquet file) skipped and counted or fatal naming file and line / row, the shuffle deterministic
// by seed, lazy reading, resume positioning, the `dataset:` config, and a stage run on a file.
using System.Text.Json.Nodes;
using Parquet;
using Parquet.Schema;
using ReaLNative.Engine.Config;
using ReaLNative.Engine.Data;
using ReaLNative.Engine.Runs;
using ReaLNative.Engine.Tasks;
using Xunit;

namespace ReaLNative.Engine.Tests.Data;

public sealed class DatasetTests : IDisposable
{
    private readonly string _dir = Path.Combine(Path.GetTempPath(), "realn-data-" + Guid.NewGuid().ToString("N")[..8]);

    public DatasetTests() => Directory.CreateDirectory(_dir);
    public void Dispose() => Directory.Delete(_dir, true);

    private string Write(string name, params string[] lines)
    {
        string p = Path.Combine(_dir, name);
        File.WriteAllLines(p, lines);
        return p;
    }

    private static DatasetSpec Spec(string path, bool skip = false, int buffer = 1, long seed = 1, string[]? required = null,
                                    Func<TaskExample, string?>? check = null, DatasetFields? fields = null) =>
        new(path, DatasetFormats.FormatOf(path)!, fields ?? DatasetFields.Default, required ?? ["prompt", "answer"], buffer, seed, 0, skip, check);

    private string Numbers(int n) => Write("n.jsonl", Enumerable.Range(0, n).Select(i => $$"""{"prompt": "{{i}}+0=", "answer": "{{i}}"}""").ToArray());

    [Fact]
    public void JsonlRecordsThroughTheFieldMapping()
    {
        string p = Write("a.jsonl",
            """{"q": "1+2=", "sol": "so 3", "a": 3, "meta": {"id": 7}}""",
            "",
            """{"q": "2+2=", "sol": "so 4", "a": "4"}""");
        var fields = new DatasetFields(new Dictionary<string, string> { ["prompt"] = "q", ["response"] = "sol", ["answer"] = "a", ["metadata"] = "meta" });
        var ex = Spec(p, fields: fields, required: ["prompt", "response", "answer"]).Examples(null).ToArray();
        Assert.Equal(2, ex.Length);
        Assert.Equal(("1+2=", "3", "so 3", "so 3"), (ex[0].Prompt, ex[0].Answer, ex[0].Response, ex[0].Target));
        Assert.Equal("""{"id":7}""", ex[0].Metadata);
        Assert.Equal(p + ":3", ex[1].Source);   // the blank line counts
        Assert.Null(ex[1].Metadata);
    }

    private string Malformed() => Write("bad.jsonl",
        """{"prompt": "1=", "answer": "1"}""",
        """{"prompt": "2=", "answer": """,             // line 2: truncated JSON
        """["prompt", "3="]""",                          // line 3: not an object
        """{"prompt": "4=", "answer": [4]}""",           // line 4: answer of the wrong type
        """{"prompt": "5="}""",                          // line 5: answer missing
        """{"prompt": "6=", "answer": "6"}""");

    [Fact]
    public void BadJsonlRecordFailsNamingFileAndLine()
    {
        string p = Malformed();
        var e = Assert.Throws<InputException>(() => Spec(p).Examples(null).ToArray());
        Assert.Equal(p, e.File);
        Assert.Equal(2, e.Line);
        Assert.Contains("not valid JSON", e.Message);
        Assert.Contains("on_bad_record", e.Message);
    }

    [Fact]
    public void BadJsonlRecordsAreSkippedAndCounted()
    {
        string p = Malformed();
        var notes = new List<string>();
        long skipped = 0;
        var ex = (Spec(p, skip: true) with { OnSkip = notes.Add }).Examples(() => skipped++).ToArray();
        Assert.Equal(["1=", "6="], ex.Select(x => x.Prompt));
        Assert.Equal(4, skipped);
        Assert.Equal([$"{p}:2", $"{p}:3", $"{p}:4", $"{p}:5"], notes.Select(n => n[..n.IndexOf(": ", p.Length, StringComparison.Ordinal)]));
        Assert.Contains("expected a JSON object", notes[1]);
        Assert.Contains("field 'answer' (answer) is a JSON array", notes[2]);
        Assert.Contains("field 'answer' (answer) is missing", notes[3]);
    }

    [Fact]
    public void ChecksMakeBadRecords()
    {
        string p = Write("c.jsonl", """{"prompt": "1=", "answer": "1"}""", """{"prompt": "x=", "answer": "2"}""");
        var spec = Spec(p, check: e => e.Prompt.Contains('x') ? "character 'x' at 0 is not in the alphabet" : null);
        var e = Assert.Throws<InputException>(() => spec.Examples(null).ToArray());
        Assert.Equal(2, e.Line);
        Assert.Contains("character 'x'", e.Message);
    }

    private string WriteParquet(string name, string?[] prompts, long[] answers, int rowGroups = 2)
    {
        string p = Path.Combine(_dir, name);
        var pf = new DataField<string>("prompt", nullable: true);
        var af = new DataField<long>("answer");
        var schema = new ParquetSchema(pf, af);
        using (var fs = File.Create(p))
        {
            var w = ParquetWriter.CreateAsync(schema, fs).GetAwaiter().GetResult();
            int per = (prompts.Length + rowGroups - 1) / rowGroups;
            for (int g = 0; g < rowGroups; g++)
            {
                int a = g * per, b = Math.Min(prompts.Length, a + per);
                using var rg = w.CreateRowGroup();
                rg.WriteAsync(pf, prompts[a..b]).GetAwaiter().GetResult();
                rg.WriteAsync<long>(af, answers.AsMemory(a, b - a)).GetAwaiter().GetResult();
            }
            w.DisposeAsync().AsTask().GetAwaiter().GetResult();
        }
        return p;
    }

    [Fact]
    public void ParquetRowsAcrossRowGroups()
    {
        string p = WriteParquet("a.parquet", ["1+1=", "2+2=", "3+3=", "4+4=", "5+5="], [2, 4, 6, 8, 10]);
        var ex = Spec(p).Examples(null).ToArray();
        Assert.Equal(["1+1=", "2+2=", "3+3=", "4+4=", "5+5="], ex.Select(x => x.Prompt));
        Assert.Equal(["2", "4", "6", "8", "10"], ex.Select(x => x.Answer));
        Assert.Equal(p + ": row 4", ex[3].Source);
    }

    [Fact]
    public void ParquetBadRowSkippedOrFatalNamingTheRow()
    {
        string p = WriteParquet("b.parquet", ["1=", "2=", null, "4="], [1, 2, 3, 4]);
        var e = Assert.Throws<InputException>(() => Spec(p).Examples(null).ToArray());
        Assert.Equal(p, e.File);
        Assert.Contains("row 3: field 'prompt' (prompt) is missing or null", e.Message);
        long skipped = 0;
        Assert.Equal(["1=", "2=", "4="], Spec(p, skip: true).Examples(() => skipped++).Select(x => x.Prompt));
        Assert.Equal(1, skipped);
    }

    [Fact]
    public void MalformedParquetIsRefusedNamingTheFile()
    {
        string good = WriteParquet("c.parquet", ["1=", "2="], [1, 2], rowGroups: 1);
        var bytes = File.ReadAllBytes(good);
        string cut = Path.Combine(_dir, "cut.parquet");
        File.WriteAllBytes(cut, bytes[..(bytes.Length / 2)]);
        var e = Assert.Throws<InputException>(() => Spec(cut).Examples(null).ToArray());
        Assert.Equal(cut, e.File);
        Assert.Contains("Parquet", e.Message);
        string garbage = Write("g.parquet", "prompt,answer", "1=,1");
        Assert.Equal(garbage, Assert.Throws<InputException>(() => Spec(garbage).Examples(null).ToArray()).File);
        // a column of the mapping that the file lacks
        var fields = new DatasetFields(new Dictionary<string, string>(DatasetFields.Default.Mapped) { ["answer"] = "solution" });
        var m = Assert.Throws<InputException>(() => Spec(good, fields: fields).Examples(null).ToArray());
        Assert.Contains("column 'solution' (answer) is missing; the file has: prompt, answer", m.Message);
    }

    [Fact]
    public void ShuffleIsDeterministicBySeedAndEachEpochIsAPermutation()
    {
        string p = Numbers(50);
        string[] Order(long seed, int buffer, int n)
        {
            using var s = new ExampleStream(Spec(p, buffer: buffer, seed: seed));
            return Enumerable.Range(0, n).Select(_ => s.Next().Prompt).ToArray();
        }
        var a = Order(7, 16, 150);
        Assert.Equal(a, Order(7, 16, 150));
        Assert.NotEqual(a, Order(8, 16, 150));
        var fileOrder = Enumerable.Range(0, 50).Select(i => $"{i}+0=").ToArray();
        Assert.NotEqual(fileOrder, a[..50]);
        for (int epoch = 0; epoch < 3; epoch++)
            Assert.Equal(fileOrder.Order(), a[(epoch * 50)..((epoch + 1) * 50)].Order());
        Assert.NotEqual(a[..50], a[50..100]);                        // every epoch its own order
        Assert.Equal(fileOrder, Order(7, 1, 50));                    // shuffle_buffer 1: file order
    }

    [Fact]
    public void ReadsLazilySoABadRecordLaterIsNotReachedYet()
    {
        // A stream takes what it needs: with on_bad_record fail, a bad last line is only met when the
        // stream gets there (a file larger than memory never has to be read whole).
        var lines = Enumerable.Range(0, 1000).Select(i => $$"""{"prompt": "{{i}}=", "answer": "{{i}}"}""").Append("{broken").ToArray();
        string p = Write("big.jsonl", lines);
        using var s = new ExampleStream(Spec(p, buffer: 8));
        var first = s.Take(0, 100);
        Assert.Equal(100, first.Distinct().Count());
        var e = Assert.Throws<InputException>(() => { for (int i = 0; i < 1000; i++) s.Next(); });
        Assert.Equal(1001, e.Line);
    }

    [Fact]
    public void ResumedStreamContinuesWhereTheIterationsLeftOff()
    {
        string p = Numbers(30);
        using var whole = new ExampleStream(Spec(p, buffer: 10, seed: 3));
        var all = Enumerable.Range(0, 6).SelectMany(it => whole.Take(it, 8)).ToArray();
        using var resumed = new ExampleStream(Spec(p, buffer: 10, seed: 3), firstIteration: 4, perIteration: 8);
        Assert.Equal(all[32..40], resumed.Take(4, 8));
        Assert.Throws<InvalidOperationException>(() => resumed.Take(7, 8));
    }

    [Fact]
    public void AFileWithoutUsableRecordsIsRefused()
    {
        string p = Write("none.jsonl", "{", "[]");
        using var s = new ExampleStream(Spec(p, skip: true));
        var e = Assert.Throws<InputException>(() => s.Next());
        Assert.Contains("no usable record (2 bad record(s) skipped)", e.Message);
    }

    [Fact]
    public void CharTokenizerWithRoomEncodesText()
    {
        var text = new ReaLNative.Engine.Tokenization.CharTokenizer(88);
        var digits = new ReaLNative.Engine.Tokenization.CharTokenizer(32);
        const string s = "Tom has 3 apples (1/2 red). How many? #### 3 \\boxed{3}";
        Assert.Equal(s, text.Decode(text.Encode(s)));
        Assert.Equal(digits.Encode("12+3=45, -:"), text.Encode("12+3=45, -:"));   // the task alphabet keeps its ids
        Assert.Throws<ArgumentException>(() => digits.Encode("Tom"));
        Assert.Throws<ArgumentException>(() => text.Encode("caf\u00e9"));
    }

    // ------------------------------------------------------------------ config and runs

    private string Yaml(string dataset, string algorithm = "sft", string reward = "") => $$"""
        name: data
        algorithm: {{algorithm}}
        seed: 3
        iterations: 3
        eval: { size: 4, every: 2 }
        models:
          actor: { preset: tiny, init: random }
        batch: { size: 4, prompt_len: 8, gen_len: 6 }
        optim: { lr: 3.0e-3 }
        {{reward}}
        dataset: {{dataset}}
        """;

    [Fact]
    public void ConfigReadsTheDatasetSection()
    {
        string train = Numbers(10), held = Write("h.jsonl", """{"prompt": "1+0=", "answer": "1"}""");
        var cfg = ExperimentConfig.Parse(Yaml("{ train: n.jsonl, held_out: h.jsonl, shuffle_buffer: 4, seed: 9, on_bad_record: skip, fields: { response: answer } }"), _dir);
        var ds = cfg.Stages[0].Dataset!;
        Assert.Equal((train, held, "jsonl", 4, 9L, true), (ds.Train, ds.HeldOut, ds.Format, ds.ShuffleBuffer, ds.Seed, ds.SkipBadRecords));
        Assert.Equal("answer", ds.Fields.Column("response"));
        Assert.Equal("prompt", ds.Fields.Column("prompt"));

        ConfigException Bad(string ds) => Assert.Throws<ConfigException>(() => ExperimentConfig.Parse(Yaml(ds), _dir));
        Assert.Equal("dataset.train", Bad("{ train: missing.jsonl, held_out: h.jsonl }").FieldPath);
        Assert.Equal("dataset.held_out", Bad("{ train: n.jsonl }").FieldPath);
        Assert.Equal("dataset.shufle", Bad("{ train: n.jsonl, held_out: h.jsonl, shufle: 3 }").FieldPath);
        Assert.Equal("dataset.on_bad_record", Bad("{ train: n.jsonl, held_out: h.jsonl, on_bad_record: ignore }").FieldPath);
        Assert.Equal("dataset.fields.promt", Bad("{ train: n.jsonl, held_out: h.jsonl, fields: { promt: q } }").FieldPath);
        File.WriteAllText(Path.Combine(_dir, "x.csv"), "");
        Assert.Equal("dataset.format", Bad("{ train: x.csv, held_out: h.jsonl }").FieldPath);
        // without a dataset the synthetic task's lengths are checked when the config is read (the
        // default sort-digits answers need gen_len 7); with one, each record as it is read
        Assert.Equal("batch.gen_len", Bad("~").FieldPath);
    }

    [Fact]
    public void SftStageTrainsOnAFileSkippingBadRecords()
    {
        Write("train.jsonl",
            """{"prompt": "12=", "response": "21"}""",
            """{"prompt": "123456789=", "response": "1"}""",    // line 2: prompt longer than prompt_len
            """{"prompt": "ab=", "response": "1"}""",           // line 3: letters the tiny vocabulary lacks
            """{"prompt": "34=", "response": "43"}""",
            """{"prompt": "56=", "response": "65", "answer": "65"}""");
        Write("held.jsonl", """{"prompt": "21=", "answer": "12"}""", """{"prompt": "43=", "answer": "34"}""");
        var cfg = ExperimentConfig.Parse(Yaml("{ train: train.jsonl, held_out: held.jsonl, on_bad_record: skip, shuffle_buffer: 2 }"), _dir);
        string run = Path.Combine(_dir, "run");
        var notes = new List<string>();
        using (var p = new Pipeline(cfg, run, note: notes.Add)) p.Run(resume: false);
        var lines = File.ReadAllLines(Path.Combine(run, "metrics.jsonl")).Select(l => JsonNode.Parse(l)!).ToArray();
        var train = lines.Where(l => (string)l["call"]! == "actor_train").ToArray();
        Assert.Equal(3, train.Length);
        Assert.All(train, l => Assert.Equal(2, (long)l["records_skipped"]!));
        Assert.All(lines.Where(l => (string)l["call"]! == "eval"), l => Assert.Equal(0, (long)l["held_out_records_skipped"]!));
        Assert.Contains(notes, n => n.Contains("train.jsonl:2: prompt is 11 tokens with BOS, longer than batch.prompt_len (8)"));
        Assert.Contains(notes, n => n.Contains("train.jsonl:3: character 'a' at 0 is not in the tokenizer's alphabet"));

        var fail = ExperimentConfig.Parse(Yaml("{ train: train.jsonl, held_out: held.jsonl }"), _dir);
        using var q = new Pipeline(fail, Path.Combine(_dir, "run2"));
        var e = Assert.Throws<InputException>(() => q.Run(resume: false));
        Assert.Equal((Path.Combine(_dir, "train.jsonl"), 2), (e.File, e.Line));
    }

    [Fact]
    public void ResumedDatasetRunEqualsTheUninterruptedRun()
    {
        Write("t.jsonl", Enumerable.Range(0, 23).Select(i => $$"""{"prompt": "{{i % 10}}{{i / 10}}=", "response": "{{i / 10}}{{i % 10}}"}""").ToArray());
        Write("h.jsonl", """{"prompt": "12=", "answer": "21"}""");
        var cfg = ExperimentConfig.Parse(Yaml("{ train: t.jsonl, held_out: h.jsonl, shuffle_buffer: 5 }").Replace("iterations: 3", "iterations: 8")
                                         + "\ncheckpoint_every: 2\n", _dir);
        string a = Path.Combine(_dir, "a"), b = Path.Combine(_dir, "b");
        float[] whole;
        using (var p = new Pipeline(cfg, a)) { p.Run(resume: false); whole = p.Model("actor").Parameters.ToArray(); }
        using (var p = new Pipeline(cfg, b)) Assert.True((bool)p.Run(resume: false, stopAfterIterations: 5)["interrupted"]!);
        using (var p = new Pipeline(cfg, b)) { p.Run(resume: true); Assert.Equal(whole, p.Model("actor").Parameters.ToArray()); }
    }
}

// Offline preference pairs: `fields: { chosen, rejected }` make rm and dpo stages train on the
// file's pairs instead of ranking their own samples.
public sealed class PreferencePairDatasetTests : IDisposable
{
    private readonly string _dir = Path.Combine(Path.GetTempPath(), "realn-pairs-" + Guid.NewGuid().ToString("N")[..8]);

    public PreferencePairDatasetTests()
    {
        Directory.CreateDirectory(_dir);
        // The frozen models' checkpoint (a frozen model may not be initialised at random).
        using var m = new ReaLNative.Engine.Model.LlamaModel(ReaLNative.Engine.Model.LlamaConfig.Preset("tiny"), scalarHead: false);
        m.InitRandom(1);
        ReaLNative.Engine.Checkpoints.Safetensors.Save(m, Path.Combine(_dir, "init"));
    }
    public void Dispose() => Directory.Delete(_dir, true);

    private void Write(string name, params string[] lines) => File.WriteAllLines(Path.Combine(_dir, name), lines);

    private static string Yaml(string algorithm, string dataset, int iterations = 3) => $$"""
        name: pairs
        algorithm: {{algorithm}}
        seed: 3
        iterations: {{iterations}}
        eval: { size: 2, every: 100 }
        models:
          actor: { preset: tiny, init: init }
          {{(algorithm == "rm" ? "reward: { preset: tiny, init: random }" : "ref: { preset: tiny, init: init }")}}
        batch: { size: 8, prompt_len: 8, gen_len: 6 }
        optim: { lr: 3.0e-3 }
        dataset: {{dataset}}
        """;

    /// <summary>Prompts "d=" with the chosen answer the digit doubled-ish and a fixed wrong rejected one.</summary>
    private void Pairs(string name, int n) =>
        Write(name, Enumerable.Range(0, n).Select(i => $$"""{"q": "{{i % 10}}=", "good": "{{i % 10}}{{i % 10}}", "bad": "0"}""").ToArray());

    private static JsonNode[] Metrics(string run) =>
        File.ReadAllLines(Path.Combine(run, "metrics.jsonl")).Select(l => JsonNode.Parse(l)!).ToArray();

    [Fact]
    public void ConfigMapsPairsOnlyForRmAndDpoAndOnlyBothTogether()
    {
        Pairs("p.jsonl", 4);
        Write("h.jsonl", """{"q": "1=", "answer": "11"}""");
        var cfg = ExperimentConfig.Parse(Yaml("rm", "{ train: p.jsonl, fields: { prompt: q, chosen: good, rejected: bad } }"), _dir);
        var f = cfg.Stages[0].Dataset!.Fields;
        Assert.True(f.OfflinePairs);
        Assert.Equal(("good", "bad"), (f.Column("chosen"), f.Column("rejected")));
        Assert.False(ExperimentConfig.Parse(Yaml("rm", "{ train: p.jsonl, fields: { prompt: q } }"), _dir).Stages[0].Dataset!.Fields.OfflinePairs);
        ConfigException Bad(string algorithm, string ds) => Assert.Throws<ConfigException>(() => ExperimentConfig.Parse(Yaml(algorithm, ds), _dir));
        var e = Bad("rm", "{ train: p.jsonl, fields: { prompt: q, chosen: good } }");
        Assert.Equal("dataset.fields.rejected", e.FieldPath);
        Assert.Contains("need both fields.chosen and fields.rejected", e.Message);
        Assert.Equal("dataset.fields.chosen", Bad("rm", "{ train: p.jsonl, fields: { prompt: q, rejected: bad } }").FieldPath);
        e = Assert.Throws<ConfigException>(() => ExperimentConfig.Parse(Yaml("rm", "{ train: p.jsonl, held_out: h.jsonl, fields: { prompt: q, chosen: good, rejected: bad } }")
            .Replace("algorithm: rm", "algorithm: sft").Replace("reward: { preset: tiny, init: random }", "").Replace("init: init", "init: random"), _dir));
        Assert.Equal("dataset.fields.chosen", e.FieldPath);
        Assert.Contains("preference pairs are for rm and dpo stages, not sft", e.Message);
    }

    [Fact]
    public void RewardModelTrainsOnTheFilesPairs()
    {
        Pairs("p.jsonl", 12);
        var cfg = ExperimentConfig.Parse(Yaml("rm", "{ train: p.jsonl, fields: { prompt: q, chosen: good, rejected: bad } }", iterations: 12), _dir);
        string run = Path.Combine(_dir, "rm");
        using (var p = new Pipeline(cfg, run)) p.Run(resume: false);
        var lines = Metrics(run);
        var gen = lines.Where(l => (string)l["call"]! == "actor_gen").ToArray();
        var train = lines.Where(l => (string)l["call"]! == "rew_train").ToArray();
        Assert.Equal(12, train.Length);
        Assert.All(gen, l => Assert.Equal(4, (double)l["offline_pairs"]!));
        Assert.All(train, l => Assert.Equal(4, (double)l["pairs"]!));  // batch 8 = 4 prompts x (chosen, rejected), no checker pairs added
        // The file's preference is learnt: the last steps rank every chosen response above its rejected one.
        Assert.Equal(1.0, (double)train[^1]["accuracy"]!);
        Assert.True((double)train[^1]["loss"]! < (double)train[0]["loss"]!, $"loss {train[0]["loss"]} -> {train[^1]["loss"]}");
    }

    [Fact]
    public void DpoTrainsOnTheFilesPairs()
    {
        Pairs("p.jsonl", 12);
        Write("h.jsonl", """{"q": "1=", "answer": "11"}""", """{"q": "2=", "answer": "22"}""");
        var cfg = ExperimentConfig.Parse(Yaml("dpo", "{ train: p.jsonl, held_out: h.jsonl, fields: { prompt: q, chosen: good, rejected: bad } }", iterations: 8), _dir);
        string run = Path.Combine(_dir, "dpo");
        using (var p = new Pipeline(cfg, run)) p.Run(resume: false);
        var train = Metrics(run).Where(l => (string)l["call"]! == "actor_train").ToArray();
        Assert.Equal(8, train.Length);
        Assert.All(train, l => Assert.Equal(4, (double)l["pairs"]!));
        // The policy moves toward the chosen responses relative to the reference: the margin grows from 0.
        Assert.Equal(0.0, (double)train[0]["margin"]!, 6);  // actor = reference at the first step
        Assert.True((double)train[^1]["margin"]! > 0.1, $"DPO margin after 8 steps: {train[^1]["margin"]}");
    }

    [Fact]
    public void ParquetPairsAreReadAndANullRejectedIsNamedByRow()
    {
        string p = Path.Combine(_dir, "p.parquet");
        var q = new DataField<string>("q"); var good = new DataField<string>("good"); var bad = new DataField<string>("bad", nullable: true);
        using (var fs = File.Create(p))
        {
            var w = ParquetWriter.CreateAsync(new ParquetSchema(q, good, bad), fs).GetAwaiter().GetResult();
            using (var rg = w.CreateRowGroup())
            {
                rg.WriteAsync(q, new[] { "1=", "2=", "3=" }).GetAwaiter().GetResult();
                rg.WriteAsync(good, new[] { "11", "22", "33" }).GetAwaiter().GetResult();
                rg.WriteAsync(bad, new string?[] { "0", null, "0" }).GetAwaiter().GetResult();
            }
            w.DisposeAsync().AsTask().GetAwaiter().GetResult();
        }
        var fields = new DatasetFields(new Dictionary<string, string>(DatasetFields.Default.Mapped) { ["prompt"] = "q", ["chosen"] = "good", ["rejected"] = "bad" });
        var required = DatasetConfig.RequiredFields("rm", ExperimentConfig.Parse(Yaml("rm", "{ train: p.parquet }"), _dir).Stages[0].Reward, heldOut: false, offlinePairs: true);
        Assert.Equal(["prompt", "chosen", "rejected"], required);
        var spec = new DatasetSpec(p, "parquet", fields, required, 1, 1, 0, true, null);
        var ex = spec.Examples(null).ToArray();
        Assert.Equal([("1=", "11", "0"), ("3=", "33", "0")], ex.Select(e => (e.Prompt, e.Chosen, e.Rejected)));
        var e = Assert.Throws<InputException>(() => (spec with { SkipBad = false }).Examples(null).ToArray());
        Assert.Contains("row 2: field 'bad' (rejected) is missing or null", e.Message);
    }

    [Fact]
    public void MalformedPairRecordsAreNamedWithFileAndLine()
    {
        Write("p.jsonl",
            """{"q": "1=", "good": "11", "bad": "0"}""",
            """{"q": "2=", "good": "22"}""",                          // line 2: rejected missing
            """{"q": "3=", "good": ["33"], "bad": "0"}""",            // line 3: chosen not a string
            """{"q": "4=", "good": "4444444444", "bad": "0"}""",      // line 4: chosen longer than gen_len
            """{"q": "5=", "good": "55", "bad": "0"}""");
        var skip = ExperimentConfig.Parse(Yaml("rm", "{ train: p.jsonl, on_bad_record: skip, fields: { prompt: q, chosen: good, rejected: bad } }", iterations: 1), _dir);
        var notes = new List<string>();
        using (var p = new Pipeline(skip, Path.Combine(_dir, "skip"), note: notes.Add)) p.Run(resume: false);
        string file = Path.Combine(_dir, "p.jsonl");
        Assert.Contains(notes, n => n.Contains(file + ":2: field 'bad' (rejected) is missing or null"));
        Assert.Contains(notes, n => n.Contains(file + ":3: field 'good' (chosen) is a JSON array, expected a string"));
        Assert.Contains(notes, n => n.Contains(file + ":4: chosen response is 11 tokens with EOS, longer than batch.gen_len (6)"));
        var fail = ExperimentConfig.Parse(Yaml("rm", "{ train: p.jsonl, fields: { prompt: q, chosen: good, rejected: bad } }", iterations: 1), _dir);
        using var q = new Pipeline(fail, Path.Combine(_dir, "fail"));
        var e = Assert.Throws<InputException>(() => q.Run(resume: false));
        Assert.Equal((file, 2), (e.File, e.Line));
    }
}
