// Rule-based rewards on answers the test writes: each kind's score, GSM8K / \boxed extraction and
// tolerance, combinations, the `reward:` config, the .NET delegate through the public API, and
// external programs (shell scripts the test writes): one that scores, one that hangs past the
// deadline, one that crashes, one that answers garbage: each ends with an error naming it.
using System.Diagnostics;
using ReaLNative.Engine.Algorithms;
using ReaLNative.Engine.Config;
using ReaLNative.Engine.Runs;
using ReaLNative.Engine.Tasks;
using Xunit;

namespace ReaLNative.Engine.Tests.Algorithms;

public sealed class RewardTests : IDisposable
{
    private readonly string _dir = Path.Combine(Path.GetTempPath(), "realn-reward-" + Guid.NewGuid().ToString("N")[..8]);
    public RewardTests() => Directory.CreateDirectory(_dir);
    public void Dispose() => Directory.Delete(_dir, true);

    private static RewardInput In(string completion, string? answer = "42", bool eos = true, string prompt = "p") =>
        new(prompt, completion, eos, answer, null);

    private static float One(ISequenceReward r, RewardInput x) => r.Score([x])[0];

    [Theory]
    [InlineData("so the total is 42. #### 42", 1)]
    [InlineData("#### 1,042", 0)]
    [InlineData("first #### 41 then #### 42", 1)]        // the last #### counts
    [InlineData("#### -42", 0)]
    [InlineData("the answer is \\boxed{42}", 1)]
    [InlineData("\\boxed{84/2}", 1)]
    [InlineData("\\boxed{\\frac{1}{2}} no", 0)]
    [InlineData("$42", 0)]                                 // no #### / \boxed: no answer given
    [InlineData("#### $42.00", 1)]
    [InlineData("#### forty-two", 0)]
    public void NumericMatchExtractsTheGivenAnswer(string completion, float want) =>
        Assert.Equal(want, One(new NumericMatchReward(1e-6), In(completion)));

    [Fact]
    public void NumericMatchReferenceFormsAndTolerance()
    {
        var r = new NumericMatchReward(0.01);
        Assert.Equal(1f, One(r, In("#### 1234", answer: "1,234")));
        Assert.Equal(1f, One(r, In("#### 0.5", answer: "She pays 3/6 ... #### 1/2")));
        Assert.Equal(1f, One(r, In("#### 3.005", answer: "3")));
        Assert.Equal(0f, One(r, In("#### 3.02", answer: "3")));
        Assert.Equal(1f, One(r, In("\\boxed{7}", answer: "\\boxed{7}")));
        Assert.Equal(0f, One(r, In("#### 7", answer: null)));
        Assert.Null(r.CheckExample(new TaskExample("p", "42")));
        Assert.Contains("holds no number", r.CheckExample(new TaskExample("p", "forty-two")));
    }

    [Fact]
    public void ExactRegexEosTaskAndCombined()
    {
        Assert.Equal(1f, One(new ExactMatchReward(), In(" 42\n")));
        Assert.Equal(0f, One(new ExactMatchReward(), In("42.")));
        Assert.Equal(1f, One(new TaskCheckerReward(), In("42")));
        Assert.Equal(0f, One(new TaskCheckerReward(), In("42", eos: false)));
        Assert.Equal(0f, One(new TaskCheckerReward(), In(" 42")));
        Assert.Equal(1f, One(new RegexReward(@"#### -?\d+$"), In("x #### 5")));
        Assert.Equal(0f, One(new RegexReward(@"#### -?\d+$"), In("x #### 5 more")));
        Assert.Equal(0f, One(new RequireEosReward(), In("42", eos: false)));
        var c = new CombinedReward([(new NumericMatchReward(1e-6), 1.0), (new RequireEosReward(), 0.25), (new RegexReward("^#"), -0.5)]);
        Assert.Equal([1.25f, 0.75f, 0.25f], c.Score([In("a #### 42"), In("#### 42"), In("a #### 7")]));
        Assert.Contains("holds no number", c.CheckExample(new TaskExample("p", "x")));
    }

    private static RewardConfig Parse(string yaml)
    {
        var doc = ReaLNative.YamlText.Load(yaml, "test").Documents[0].RootNode;
        return RewardConfig.Parse(new MapReader(doc, "reward"));
    }

    [Fact]
    public void ConfigKinds()
    {
        Assert.Equal(RewardConfig.Model, Parse("{}").Kind);
        Assert.Equal(0.5, Parse("{ kind: numeric_match, tolerance: 0.5 }").Tolerance);
        var c = Parse("{ kind: combined, components: [{ kind: numeric_match }, { kind: regex, pattern: '^#', weight: 0.2 }] }");
        Assert.Equal([1.0, 0.2], c.Components.Select(x => x.Weight));
        Assert.True(c.NeedsAnswer);
        Assert.False(Parse("{ kind: regex, pattern: x }").NeedsAnswer);
        var e = Parse("{ kind: external, command: [sh, score.sh], timeout_seconds: 5 }");
        Assert.Equal(["sh", "score.sh"], e.Command);
        Assert.Equal(5, e.TimeoutSeconds);

        string Bad(string y) => Assert.Throws<ConfigException>(() => Parse(y)).FieldPath;
        Assert.Equal("reward.kind", Bad("{ kind: gsm8k }"));
        Assert.Equal("reward.pattern", Bad("{ kind: regex, pattern: '(' }"));
        Assert.Equal("reward.pattern", Bad("{ kind: regex }"));
        Assert.Equal("reward.components", Bad("{ kind: combined }"));
        Assert.Equal("reward.components[0].kind", Bad("{ kind: combined, components: [{ kind: model }] }"));
        Assert.Equal("reward.command", Bad("{ kind: external }"));
        Assert.Equal("reward.tolerance", Bad("{ kind: regex, pattern: x, tolerance: 1 }"));
        Assert.Equal("reward.timeout_seconds", Bad("{ kind: external, command: x, timeout_seconds: 0 }"));
    }

    // ------------------------------------------------------------------ external programs

    private string Script(string name, string body)
    {
        string p = Path.Combine(_dir, name);
        File.WriteAllText(p, "#!/bin/sh\n" + body + "\n");
        File.SetUnixFileMode(p, UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute);
        return p;
    }

    [Fact]
    public void ExternalProgramScoresEachAnswerInOrder()
    {
        // 1 for a line whose completion is "42" and whose metadata made it through, else {"reward": 0.5}
        Script("score.sh", """
            while IFS= read -r line; do
              case "$line" in
                *'"completion":"42"'*'"metadata":{"k":1}'*) echo 1 ;;
                *) echo '{"reward": 0.5}' ;;
              esac
            done
            """);
        using var r = new ExternalReward(["./score.sh"], 10, _dir);
        var batch = new[] { new RewardInput("p", "42", true, "42", """{"k":1}"""), In("41"), new RewardInput("p", "42", true, "42", """{"k":1}""") };
        Assert.Equal([1f, 0.5f, 1f], r.Score(batch));
        Assert.Equal([0.5f, 0.5f], r.Score([In("1"), In("2")]));   // the same process, a second batch
    }

    [Fact]
    public void ExternalProgramThatHangsEndsTheRunAtTheDeadline()
    {
        Script("hang.sh", "read line; sleep 600");
        using var r = new ExternalReward(["./hang.sh"], 1, _dir);
        var clock = Stopwatch.StartNew();
        var e = Assert.Throws<TrainingFailedException>(() => r.Score([In("1"), In("2")]));
        Assert.True(clock.Elapsed < TimeSpan.FromSeconds(10), $"took {clock.Elapsed}");
        Assert.Contains("external reward program './hang.sh' did not answer within 1 s (reward.timeout_seconds) for a batch of 2", e.Message);
    }

    [Fact]
    public void ExternalProgramThatCrashesEndsTheRunNamingIt()
    {
        Script("crash.sh", "read line; echo 1; read line; echo 'Traceback: boom' >&2; exit 3");
        using var r = new ExternalReward(["sh", "crash.sh"], 30, _dir);
        var clock = Stopwatch.StartNew();
        var e = Assert.Throws<TrainingFailedException>(() => r.Score([In("1"), In("2"), In("3")]));
        Assert.True(clock.Elapsed < TimeSpan.FromSeconds(10), $"took {clock.Elapsed}");
        Assert.Contains("external reward program 'sh crash.sh' exited with code 3 before answering answer 2 of a batch of 3", e.Message);
        Assert.Contains("Traceback: boom", e.Message);
    }

    [Fact]
    public void ExternalProgramGarbageOrMissingIsRefused()
    {
        Script("garbage.sh", "while read line; do echo hello; done");
        using (var r = new ExternalReward(["./garbage.sh"], 30, _dir))
            Assert.Contains("answered 'hello' to answer 1 of a batch of 1; expected one line per answer holding a finite number",
                            Assert.Throws<TrainingFailedException>(() => r.Score([In("1")])).Message);
        using (var r = new ExternalReward(["./no-such-program"], 30, _dir))
            Assert.Contains("external reward program './no-such-program' could not be started",
                            Assert.Throws<TrainingFailedException>(() => r.Score([In("1")])).Message);
    }

    // ------------------------------------------------------------------ in a run

    private const string Grpo = """
        name: fn
        algorithm: grpo
        seed: 2
        iterations: 1
        task: { name: sort-digits, min_len: 3, max_len: 3 }
        eval: { size: 4, every: 1 }
        models:
          actor: { preset: tiny, init: sft }
          ref: { preset: tiny, init: sft }
          reward: { preset: tiny, init: sft }
        batch: { size: 8, prompt_len: 8, gen_len: 5, group_size: 4 }
        stages:
          - { algorithm: sft, iterations: 1, models: { actor: { preset: tiny, init: random } } }
          - { algorithm: grpo }
        """;

    [Fact]
    public void DotNetRewardFunctionReplacesTheRewardModel()
    {
        var seen = new List<RewardInput>();
        var exp = TrainingExperiment.FromYamlText(Grpo, _dir).WithRewardFunction(x => { lock (seen) seen.Add(x); return x.Completion.Length; });
        Assert.DoesNotContain("reward", exp.Stages[1].Roles);
        string run = Path.Combine(_dir, "run");
        using (var p = new Pipeline(exp.Config, run)) p.Run(resume: false);
        Assert.Contains(seen, x => x.Answer is { Length: 3 } && x.Prompt.EndsWith('='));
        Assert.DoesNotContain(File.ReadAllLines(Path.Combine(run, "metrics.jsonl")), l => l.Contains("rew_inf"));

        var throwing = TrainingExperiment.FromYamlText(Grpo, _dir).WithRewardFunction(_ => double.NaN);
        using var q = new Pipeline(throwing.Config, Path.Combine(_dir, "run2"));
        var e = Assert.Throws<TrainingFailedException>(() => q.Run(resume: false));
        Assert.Contains("returned NaN", e.Message);
    }

    [Fact]
    public void ExternalRewardThatHangsEndsARun()
    {
        Script("hang.sh", "sleep 600");
        string yaml = Grpo.Replace("          reward: { preset: tiny, init: sft }\n", "") +
                      "\nreward: { kind: external, command: ./hang.sh, timeout_seconds: 1 }\n";
        var cfg = ExperimentConfig.Parse(yaml, _dir);
        using var p = new Pipeline(cfg, Path.Combine(_dir, "run"));
        var clock = Stopwatch.StartNew();
        var e = Assert.Throws<TrainingFailedException>(() => p.Run(resume: false));
        Assert.Contains("external reward program './hang.sh' did not answer within 1 s", e.Message);
        Assert.True(clock.Elapsed < TimeSpan.FromSeconds(60), $"took {clock.Elapsed}");
    }
}
