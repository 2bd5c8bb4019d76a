// Scoring where the tokens are (Tasks/SequenceScoring.cs, Tasks/RuleRewards.cs): the description the
// master sends the workers once names the same tokenizer and reward, so a worker's scores are the
// master's bit for bit; the kinds that call out of the run are never described; a malformed
// description or request is refused naming the field.
using System.Text.Json.Nodes;
using ReaLNative.Engine.Algorithms;
using ReaLNative.Engine.Config;
using ReaLNative.Engine.Tasks;
using ReaLNative.Engine.Tokenization;
using Xunit;

namespace ReaLNative.Engine.Tests.Algorithms;

public sealed class SequenceScoringTests
{
    private static readonly RunTokenizer Tok = RunTokenizer.Of(new CharTokenizer(128));

    public static TheoryData<string> Rewards() =>
    [
        "{ kind: task }", "{ kind: exact_match }", "{ kind: numeric_match, tolerance: 0.25 }", "{ kind: regex, pattern: '^1[0-9]' }", "{ kind: require_eos }",
        "{ kind: combined, components: [{ kind: numeric_match, weight: 0.7 }, { kind: require_eos, weight: 0.1 }, { kind: regex, pattern: '2', weight: -0.3 }, { kind: exact_match, weight: 0.3 }] }",
    ];

    private static RewardConfig Parse(string reward)
    {
        var y = new YamlDotNet.RepresentationModel.YamlStream();
        y.Load(new StringReader(reward));
        return RewardConfig.Parse(new MapReader(y.Documents[0].RootNode, "reward"));
    }

    private static (TaskExample[] Ex, int[][] Tokens, bool[] Eos) Answers()
    {
        string[] texts = ["12", "1,2", "12.0", "#### 12", "7", "", "2 12", "1/2"];
        var ex = texts.Select((_, i) => new TaskExample($"p{i}", i % 3 == 0 ? "12" : "0.5") { Metadata = i == 2 ? "{}" : null }).ToArray();
        var tokens = texts.Select((t, i) => i % 2 == 0 ? Tok.Response("", t) : Tok.Response("", t)[..^1]).ToArray();
        return (ex, tokens, [.. texts.Select((_, i) => i % 2 == 0)]);
    }

    /// <summary>Every pure kind, described as JSON text (what goes over the wire) and built again: its
    /// rule rewards, held-out checks (StageContext.Checks: exact match under `task`) and graded scores
    /// equal the master's of the same ids.</summary>
    [Theory]
    [MemberData(nameof(Rewards))]
    public void ADescribedScorerScoresAsTheMaster(string reward)
    {
        var cfg = Parse(reward);
        var d = SequenceScorer.Describe(Tok, cfg, rule: true) ?? throw new Xunit.Sdk.XunitException($"{reward} not described");
        var worker = SequenceScorer.FromDescription(JsonNode.Parse(d.ToJsonString()), "score.scorer");
        var (ex, tokens, eos) = Answers();
        // The workers know an example by its answer only: the scores must not change.
        var got = worker.Score([.. ex.Select(e => SequenceScorer.Example(e.Answer))], tokens, eos, checks: true, grades: true);
        using var master = SequenceRewards.Create(cfg, Path.GetTempPath())!;
        var completions = tokens.Select(t => Tok.Completion(t)).ToArray();
        Assert.Equal(master.Score(SequenceRewards.Inputs(ex, completions, eos)), got.Rule);
        Assert.Equal(SequenceScorer.Checks(master, ex, completions, eos), got.Checks!.Select(x => (double)x));
        Assert.Equal(ex.Select((e, i) => SyntheticTask.Grade(e, completions[i])), got.Grades);
        Assert.Contains(got.Rule!, x => x != 0);
        // Checks only (a held-out evaluation): no rule rewards.
        Assert.Null(worker.Score(ex, tokens, eos, checks: true, withRule: false).Rule);
    }

    [Fact]
    public void TheRewardModelsStageChecksExactMatchAndKindsThatCallOutAreNotDescribed()
    {
        var d = SequenceScorer.Describe(Tok, new RewardConfig(RewardConfig.Model), rule: true)!;
        var (ex, tokens, eos) = Answers();
        var got = SequenceScorer.FromDescription(d, "s").Score(ex, tokens, eos, checks: true);
        Assert.Null(got.Rule);
        Assert.Equal(ex.Select((e, i) => (float)SyntheticTask.Exact(e, Tok.Completion(tokens[i]))), got.Checks);
        Assert.Null(SequenceScorer.Describe(Tok, Parse("{ kind: external, command: [python3, x.py] }"), rule: true));
        Assert.Null(SequenceScorer.Describe(Tok, new RewardConfig(RewardConfig.Function) { Delegate = _ => 1 }, rule: true));
        Assert.Null(SequenceScorer.Describe(Tok, Parse("{ kind: combined, components: [{ kind: task, weight: 1 }, { kind: external, command: [python3, x.py] }] }"), rule: true));
    }

    [Fact]
    public void AHuggingFaceTokenizerIsDescribedByItsFile()
    {
        string file = Path.Combine(ReaLNative.Engine.Tests.Docs.ReadmeCommandTableTests.Root(), "examples/models/math-bpe/tokenizer.json");
        var hf = RunTokenizer.Of(HfTokenizer.Load(file));
        var back = RunTokenizer.FromDescription(JsonNode.Parse(hf.Describe().ToJsonString()), "t");
        var ids = hf.Prompt("12 + 30 = 42");
        Assert.Equal(ids, back.Prompt("12 + 30 = 42"));
        Assert.Equal(hf.Completion(ids), back.Completion(ids));
        Assert.Equal(hf.VocabSize, back.VocabSize);
    }

    /// <summary>Bad descriptions and requests are refused naming the field.</summary>
    [Fact]
    public void MalformedDescriptionsAreRefusedNamingTheField()
    {
        var d = SequenceScorer.Describe(Tok, Parse("{ kind: combined, components: [{ kind: numeric_match, weight: 1 }] }"), rule: true)!;
        ((JsonObject)d["reward"]!["components"]![0]!["reward"]!).Remove("tolerance");
        var e = Assert.Throws<InvalidDataException>(() => SequenceScorer.FromDescription(d, "generate: score.scorer"));
        Assert.Contains("score.scorer.reward.components[0]", e.Message);
        Assert.Contains("tolerance", e.Message);
        e = Assert.Throws<InvalidDataException>(() => RuleRewards.Parse(JsonNode.Parse("""{ "kind": "external" }"""), "r"));
        Assert.Contains("not a pure rule", e.Message);
        e = Assert.Throws<InvalidDataException>(() => RunTokenizer.FromDescription(JsonNode.Parse("""{ "chat": false }"""), "score.scorer.tokenizer"));
        Assert.Contains("score.scorer.tokenizer", e.Message);
        // The reference answers go with a share's prompts, as UTF-8.
        string[] answers = ["a \u00e9", "", "12"];
        var blob = new ReaLNative.Engine.Workers.WireWriter().Answers(answers).ToArray();
        var rd = new ReaLNative.Engine.Workers.WireReader(blob, "generate: share");
        Assert.Equal(answers, rd.Answers());
        rd.End();
        blob[8] = 0xff;   // the first answer's 'a': its UTF-8 is broken
        var bad = Assert.Throws<InvalidDataException>(() => new ReaLNative.Engine.Workers.WireReader(blob, "generate: share").Answers());
        Assert.Contains("generate: share", bad.Message);
        Assert.Contains("answer 0 is not UTF-8", bad.Message);
        e = Assert.Throws<InvalidDataException>(() => new ReaLNative.Engine.Workers.WireReader(blob[..^1], "generate: share").Answers());
        Assert.Contains("generate: share", e.Message);
    }
}
