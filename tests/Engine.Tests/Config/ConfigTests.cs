// Experiment config: the shipped examples load; bad configs fail with the field path and the
// allowed values in the message.
using ReaLNative.Engine.Config;
using ReaLNative.Engine.Optim;
using ReaLNative.Engine.Tasks;
using ReaLNative.Engine.Tokenization;
using Xunit;

namespace ReaLNative.Engine.Tests.Config;

public class ConfigTests
{
    internal static string RepoRoot()
    {
        var d = new DirectoryInfo(AppContext.BaseDirectory);
        while (d is not null && !File.Exists(Path.Combine(d.FullName, "ReaLNative.sln"))) d = d.Parent;
        return d?.FullName ?? throw new InvalidOperationException("repository root not found above " + AppContext.BaseDirectory);
    }

    private const string Valid = """
        name: t
        algorithm: ppo
        seed: 3
        iterations: 7
        task: { name: sort-digits, min_len: 3, max_len: 5 }
        models:
          actor:  { preset: tiny, init: sft }
          critic: { preset: tiny, init: rm }
          ref:    { preset: tiny, init: sft }
          reward: { preset: tiny, init: rm }
        batch: { size: 8, prompt_len: 16, gen_len: 8, minibatches: 2 }
        ppo: { kl_coef: 0.1 }
        stages:
          - { algorithm: sft, iterations: 20, models: { actor: { preset: tiny, init: random } } }
          - { algorithm: rm, iterations: 10, models: { reward: { preset: tiny, init: sft } } }
          - { algorithm: ppo, ppo: { clip_eps: 0.3 } }
        """;

    private static ConfigException Fails(string yaml) =>
        Assert.Throws<ConfigException>(() => ExperimentConfig.Parse(yaml, Path.GetTempPath()));

    [Theory]
    [InlineData("ppo-tiny.yaml", "ppo")]
    [InlineData("grpo-tiny.yaml", "grpo")]
    [InlineData("remax-tiny.yaml", "remax")]
    [InlineData("dpo-tiny.yaml", "dpo")]
    [InlineData("rloo-tiny.yaml", "rloo")]
    [InlineData("ppo-tiny-bf16.yaml", "ppo")]
    public void ExamplesLoad(string file, string algorithm)
    {
        var cfg = ExperimentConfig.Load(Path.Combine(RepoRoot(), "examples", file));
        Assert.Equal(algorithm, cfg.Algorithm);
        Assert.Equal("sft", cfg.Stages[0].Algorithm);
        Assert.Equal(algorithm, cfg.Stages[^1].Algorithm);
    }

    [Fact]
    public void PrecisionDefaultsFromTopLevelAndModelsOverrideIt()
    {
        var fp = ExperimentConfig.Parse(Valid, Path.GetTempPath());
        Assert.All(fp.Stages.SelectMany(s => s.Models.Values), m => Assert.Equal("fp32", m.Precision));
        var bf = ExperimentConfig.Parse(Valid.Replace("seed: 3", "seed: 3\nprecision: bf16")
            .Replace("ref:    { preset: tiny, init: sft }", "ref:    { preset: tiny, init: sft, precision: fp32 }"), Path.GetTempPath());
        var ppo = bf.Stages[^1];
        Assert.Equal("bf16", ppo.Models["actor"].Precision);
        Assert.Equal("bf16", ppo.Models["reward"].Precision);
        Assert.Equal("fp32", ppo.Models["ref"].Precision);
        Assert.Equal("bf16", bf.Stages[0].Models["actor"].Precision);
        // The memory check plans each model in its own precision.
        var (exp, _) = ReaLNative.Engine.Runs.MemoryCheck.StageExperiment(bf, ppo, null);
        Assert.Equal(ReaLNative.Planner.Precision.Bf16, exp.PrecisionOf("actor"));
        Assert.Equal(ReaLNative.Planner.Precision.Fp32, exp.PrecisionOf("ref"));
        var (exp32, _) = ReaLNative.Engine.Runs.MemoryCheck.StageExperiment(fp, fp.Stages[^1], null);
        Assert.All(exp32.Models.Keys, r => Assert.Equal(ReaLNative.Planner.Precision.Fp32, exp32.PrecisionOf(r)));
    }

    [Theory]
    [InlineData("seed: 3", "seed: 3\nprecision: fp8", "precision: 'fp8' is not allowed; allowed values: fp32 | bf16")]
    [InlineData("ref:    { preset: tiny, init: sft }", "ref:    { preset: tiny, init: sft, precision: f16 }",
                "models.ref.precision: 'f16' is not allowed; allowed values: fp32 | bf16")]
    public void UnknownPrecisionIsRefusedNamingTheField(string from, string to, string expected)
    {
        var e = Fails(Valid.Replace(from, to));
        Assert.Contains(expected, e.Message);
    }

    [Theory]
    [InlineData("seed: 3\nmode: later", "mode: 'later' is not allowed; allowed values: sync | async")]
    [InlineData("seed: 3\nmax_staleness: 2", "max_staleness: only meaningful with mode: async")]
    [InlineData("seed: 3\nmode: async\nmax_staleness: 20", "max_staleness")]
    public void AsyncModeSettingsAreChecked(string to, string expected)
    {
        Assert.Contains(expected, Fails(Valid.Replace("seed: 3", to)).Message);
        Assert.Null(ExperimentConfig.Parse(Valid.Replace("seed: 3", "seed: 3\nmode: sync"), Path.GetTempPath()).MaxStaleness);
        Assert.Equal(1, ExperimentConfig.Parse(Valid.Replace("seed: 3", "seed: 3\nmode: async"), Path.GetTempPath()).MaxStaleness);
    }

    [Fact]
    public void StagesInheritAndOverrideTopLevel()
    {
        var cfg = ExperimentConfig.Parse(Valid, Path.GetTempPath());
        Assert.Equal(3, cfg.Stages.Count);
        Assert.Equal(20, cfg.Stages[0].Iterations);
        Assert.Equal(7, cfg.Stages[2].Iterations);           // from the top level
        Assert.Equal(0.3, cfg.Stages[2].Ppo.ClipEps);         // stage override
        Assert.Equal(0.1, cfg.Stages[2].Ppo.KlCoef);          // top level, merged per key
        Assert.Equal(0.95, cfg.Stages[2].Ppo.Lambda);         // default
        Assert.Equal("random", cfg.Stages[0].Models["actor"].Init);
        Assert.Equal("sft", cfg.Stages[1].Models["actor"].Init);
        Assert.Equal("rm", cfg.Stages[2].Models["critic"].Init);
        Assert.Equal(["actor", "reward"], cfg.Stages[1].Models.Keys.Order());
        Assert.Equal(3, cfg.Seed);
    }

    [Fact]
    public void UnknownKeyNamesPathAndAllowedKeys()
    {
        var e = Fails(Valid.Replace("ppo: { kl_coef: 0.1 }", "ppo: { kl_coeff: 0.1 }"));
        Assert.Equal("ppo.kl_coeff", e.FieldPath);
        Assert.Contains("unknown key", e.Message);
        Assert.Contains("kl_coef", e.Message);
        Assert.Contains("clip_eps", e.Message);

        e = Fails(Valid.Replace("seed: 3", "seed: 3\nlearning_rate: 1"));
        Assert.Equal("learning_rate", e.FieldPath);
    }

    [Fact]
    public void BadEnumListsAllowedValues()
    {
        var e = Fails(Valid.Replace("algorithm: ppo\n", "algorithm: ppoo\n"));
        Assert.Equal("algorithm", e.FieldPath);
        Assert.Contains("sft | rm | ppo | grpo | remax | rloo | dpo", e.Message);

        e = Fails(Valid.Replace("{ preset: tiny, init: rm }\n  ref", "{ preset: huge, init: rm }\n  ref"));
        Assert.Equal("models.critic.preset", e.FieldPath);
        Assert.Contains("tiny | gpt2-small", e.Message);

        e = Fails(Valid.Replace("name: sort-digits", "name: multiply"));
        Assert.Equal("task.name", e.FieldPath);
        Assert.Contains("sort-digits | add", e.Message);
    }

    [Fact]
    public void StageValueErrorsNameTheStage()
    {
        var e = Fails(Valid.Replace("ppo: { clip_eps: 0.3 }", "ppo: { clip_eps: -1 }"));
        Assert.Equal("stages[2].ppo.clip_eps", e.FieldPath);
        Assert.Contains("(0, 10]", e.Message);

        e = Fails(Valid.Replace("iterations: 20", "iterations: twenty"));
        Assert.Equal("stages[0].iterations", e.FieldPath);
        Assert.Contains("not an integer", e.Message);
    }

    [Fact]
    public void OutOfRangeAndInconsistentValues()
    {
        var e = Fails(Valid.Replace("ppo: { kl_coef: 0.1 }", "ppo: { kl_coef: 0.1 }\noptim: { lr: -1 }"));
        Assert.Equal("optim.lr", e.FieldPath);

        e = Fails(Valid.Replace("minibatches: 2", "minibatches: 3"));
        Assert.Equal("batch.minibatches", e.FieldPath);
        Assert.Contains("divisors of 8", e.Message);

        e = Fails(Valid.Replace("prompt_len: 16", "prompt_len: 4"));
        Assert.Equal("stages[0].batch.prompt_len", e.FieldPath);
        Assert.Contains("integers >= 7", e.Message);

        e = Fails(Valid.Replace("optim: { lr: -1 }", "").Replace("ppo: { kl_coef: 0.1 }", "optim: { betas: [0.9] }"));
        Assert.Equal("optim.betas", e.FieldPath);

        e = Fails(Valid.Replace("ppo: { kl_coef: 0.1 }", "generation: { top_p: 0 }"));
        Assert.Equal("generation.top_p", e.FieldPath);
        Assert.Contains("(0, 1]", e.Message);

        // Sampling filters are refused when the config is read, not at the first stage's set-up (a stack trace before).
        e = Fails(Valid.Replace("ppo: { kl_coef: 0.1 }", "generation: { top_k: 5 }"));
        Assert.Equal("generation.top_k", e.FieldPath);
        Assert.Contains("allowed values: 0", e.Message);
        e = Fails(Valid.Replace("- { algorithm: ppo, ppo: { clip_eps: 0.3 } }", "- { algorithm: ppo, generation: { top_p: 0.9 } }"));
        Assert.Equal("stages[2].generation.top_p", e.FieldPath);
    }

    [Fact]
    public void AllowNonFiniteWeightsIsAModelField()
    {
        var cfg = ExperimentConfig.Parse(Valid, Path.GetTempPath());
        Assert.False(cfg.Stages[2].Models["actor"].AllowNonFiniteWeights);
        cfg = ExperimentConfig.Parse(Valid.Replace("actor:  { preset: tiny, init: sft }", "actor:  { preset: tiny, init: sft, allow_non_finite_weights: true }"), Path.GetTempPath());
        Assert.True(cfg.Stages[2].Models["actor"].AllowNonFiniteWeights);
        Assert.False(cfg.Stages[2].Models["ref"].AllowNonFiniteWeights);
        var e = Fails(Valid.Replace("ref:    { preset: tiny, init: sft }", "ref:    { preset: tiny, init: sft, allow_non_finite_weights: maybe }"));
        Assert.Equal("models.ref.allow_non_finite_weights", e.FieldPath);
    }

    [Fact]
    public void ConfigErrorsAreInputExceptions() =>
        Assert.IsAssignableFrom<InputException>(Fails(Valid.Replace("seed: 3", "seed: -3")));

    [Fact]
    public void CheckpointKeepDefaultsValidatesAndIsTopLevelOnly()
    {
        Assert.Equal(2, ExperimentConfig.Parse(Valid, Path.GetTempPath()).CheckpointKeep);
        Assert.Equal(5, ExperimentConfig.Parse(Valid.Replace("seed: 3", "seed: 3\ncheckpoint_keep: 5"), Path.GetTempPath()).CheckpointKeep);

        var e = Fails(Valid.Replace("seed: 3", "seed: 3\ncheckpoint_keep: 0"));
        Assert.Equal("checkpoint_keep", e.FieldPath);
        Assert.Contains("out of range", e.Message);
        Assert.Contains("checkpoint_keep", e.Message);

        e = Fails(Valid.Replace("seed: 3", "seed: 3\ncheckpoint_keep: two"));
        Assert.Equal("checkpoint_keep", e.FieldPath);

        e = Fails(Valid.Replace("- { algorithm: ppo, ppo: { clip_eps: 0.3 } }", "- { algorithm: ppo, checkpoint_keep: 3 }"));
        Assert.Equal("stages[2].checkpoint_keep", e.FieldPath);

        // a single-stage config (no `stages`) accepts it at the top level too
        var single = ExperimentConfig.Parse("""
            algorithm: sft
            iterations: 3
            checkpoint_keep: 4
            models: { actor: { preset: tiny, init: random } }
            batch: { size: 8, prompt_len: 16, gen_len: 8 }
            """, Path.GetTempPath());
        Assert.Equal(4, single.CheckpointKeep);
    }

    [Fact]
    public void ActivationCacheClearEveryDefaultsToNeverValidatesAndIsTopLevelOnly()
    {
        Assert.Equal(0, ExperimentConfig.Parse(Valid, Path.GetTempPath()).ActivationCacheClearEvery);
        Assert.Equal(3, ExperimentConfig.Parse(Valid.Replace("seed: 3", "seed: 3\nactivation_cache_clear_every: 3"), Path.GetTempPath()).ActivationCacheClearEvery);

        var e = Fails(Valid.Replace("seed: 3", "seed: 3\nactivation_cache_clear_every: -1"));
        Assert.Equal("activation_cache_clear_every", e.FieldPath);
        Assert.Contains("out of range", e.Message);

        e = Fails(Valid.Replace("seed: 3", "seed: 3\nactivation_cache_clear_every: often"));
        Assert.Equal("activation_cache_clear_every", e.FieldPath);

        e = Fails(Valid.Replace("- { algorithm: ppo, ppo: { clip_eps: 0.3 } }", "- { algorithm: ppo, activation_cache_clear_every: 1 }"));
        Assert.Equal("stages[2].activation_cache_clear_every", e.FieldPath);
    }

    [Fact]
    public void PipelineChecks()
    {
        // init: rm without an earlier rm stage
        var e = Fails(Valid.Replace("  - { algorithm: rm, iterations: 10, models: { reward: { preset: tiny, init: sft } } }\n", "")
                           .Replace("  - { algorithm: ppo", "  - { algorithm: ppo"));
        Assert.Equal("stages[1].models.critic.init", e.FieldPath);
        Assert.Contains("earlier 'rm' stage", e.Message);

        // a role the algorithm needs is missing
        e = Fails(Valid.Replace("  critic: { preset: tiny, init: rm }\n", ""));
        Assert.Equal("stages[2].models.critic", e.FieldPath);
        Assert.Contains("actor, critic, ref, reward", e.Message);

        // the top-level algorithm must be the last stage's
        e = Fails(Valid.Replace("algorithm: ppo\n", "algorithm: grpo\n"));
        Assert.Equal("algorithm", e.FieldPath);

        // frozen model initialised at random
        e = Fails(Valid.Replace("ref:    { preset: tiny, init: sft }", "ref:    { preset: tiny, init: random }"));
        Assert.Equal("stages[2].models.ref.init", e.FieldPath);

        // architecture mismatch between the sft output and its consumer
        e = Fails(Valid.Replace("ref:    { preset: tiny, init: sft }", "ref:    { preset: gpt2-small, init: sft }"));
        Assert.Contains("architectures must match", e.Message);
    }

    [Fact]
    public void SyntaxAndShapeErrors()
    {
        var e = Fails("name: [unclosed\n");
        Assert.Contains("invalid YAML at line", e.Message);
        // YamlDotNet throws InvalidOperationException (no position) for this one: the open '{' is named.
        e = Fails("name: x\nalgorithm: sft\nmodels: {actor: {preset: tiny}\nbatch: 1\n");
        Assert.Contains("invalid YAML at line 3, column 9: the flow mapping '{' opened here is not closed", e.Message);
        Assert.Contains("empty", Fails("").Message);
        Assert.Contains("empty", Fails("# only a comment\n").Message);
        e = Fails(Valid.Replace("batch: { size: 8,", "batch: [ 8,").Replace("minibatches: 2 }", "2 ]"));
        Assert.Equal("batch", e.FieldPath);
        e = Fails(Valid.Replace("stages:\n", "stages: 3\nx:\n"));
        Assert.Equal("x", e.FieldPath);
    }

    private const string TaskRewarded = """
        algorithm: grpo
        iterations: 5
        task: { name: sort-digits, min_len: 3, max_len: 5 }
        models: { actor: { preset: tiny, init: sft }, ref: { preset: tiny, init: sft } }
        reward: { kind: task }
        batch: { size: 8, prompt_len: 16, gen_len: 8, group_size: 4 }
        stages:
          - { algorithm: sft, iterations: 2, models: { actor: { preset: tiny, init: random } } }
          - { algorithm: grpo }
        """;

    [Fact]
    public void TaskRewardNeedsNoRewardModelAndDropsTheRewardCall()
    {
        var cfg = ExperimentConfig.Parse(TaskRewarded, Path.GetTempPath());
        var st = cfg.Stages[1];
        Assert.Equal("task", st.Reward.Kind);
        Assert.False(st.UsesRewardModel);
        Assert.Equal(["actor", "ref"], st.Models.Keys.Order());
        var g = ReaLNative.Engine.Dataflow.DataflowGraph.For(st);
        Assert.DoesNotContain(g.Calls, c => c.Model == "reward");
        Assert.Contains("scores", g["actor_gen"].Outputs);
        // a reward model named anyway is not needed, and an unknown kind lists the allowed ones
        var e = Fails(TaskRewarded.Replace("kind: task", "kind: judge"));
        Assert.Equal("reward.kind", e.FieldPath);   // the shared top-level section names its own path
        Assert.Contains("model | task", e.Message);
        // without `reward`, grpo still wants its reward model
        e = Fails(TaskRewarded.Replace("reward: { kind: task }\n", ""));
        Assert.Equal("stages[1].models.reward", e.FieldPath);
        // rloo is grouped like grpo
        e = Fails(TaskRewarded.Replace("grpo", "rloo").Replace("group_size: 4", "group_size: 1"));
        Assert.Equal("stages[1].batch.group_size", e.FieldPath);
    }

    [Fact]
    public void PolicyGradientOptionsDefaultAndValidate()
    {
        var st = ExperimentConfig.Parse(TaskRewarded, Path.GetTempPath()).Stages[1];
        Assert.Equal(0.2, st.Ppo.ClipEpsLow); Assert.Equal(0.2, st.Ppo.ClipEpsHigh);
        Assert.Equal("sequence", st.Ppo.LossAgg);            // GRPO as published
        Assert.True(st.Ppo.StdNorm); Assert.False(st.Ppo.DynamicSampling); Assert.Equal(0, st.Ppo.OverlongBuffer);
        var dapo = ExperimentConfig.Parse(TaskRewarded.Replace("reward: { kind: task }",
            "reward: { kind: task }\nppo: { clip_eps_low: 0.2, clip_eps_high: 0.28, loss_agg: token, dynamic_sampling: true, overlong_buffer: 3, std_norm: false }"),
            Path.GetTempPath()).Stages[1].Ppo;
        Assert.Equal(0.28, dapo.ClipEpsHigh); Assert.Equal("token", dapo.LossAgg); Assert.True(dapo.DynamicSampling);
        Assert.Equal(3, dapo.OverlongBuffer); Assert.False(dapo.StdNorm);
        var e = Fails(TaskRewarded.Replace("reward: { kind: task }", "reward: { kind: task }\nppo: { overlong_buffer: 8 }"));
        Assert.Equal("stages[1].ppo.overlong_buffer", e.FieldPath);
        e = Fails(TaskRewarded.Replace("reward: { kind: task }", "reward: { kind: task }\nppo: { loss_agg: mean }"));
        Assert.Contains("token | sequence", e.Message);
        e = Fails(TaskRewarded.Replace("reward: { kind: task }", "reward: { kind: task }\ndpo: { loss: hinge }"));
        Assert.Contains("sigmoid | ipo", e.Message);
        // PPO's default aggregation stays the token mean
        Assert.Equal("token", ExperimentConfig.Parse(Valid, Path.GetTempPath()).Stages[2].Ppo.LossAgg);
    }

    [Fact]
    public void SingleStageConfig()
    {
        var cfg = ExperimentConfig.Parse("""
            algorithm: sft
            iterations: 5
            task: { name: add, min_len: 1, max_len: 2 }
            models: { actor: { preset: tiny } }
            batch: { size: 4, prompt_len: 8, gen_len: 4 }
            """, Path.GetTempPath());
        Assert.Single(cfg.Stages);
        Assert.Equal("random", cfg.Stages[0].Models["actor"].Init);
        Assert.Equal(5, cfg.Stages[0].Iterations);
    }

    [Fact]
    public void LearningRateSchedule()
    {
        var o = new OptimConfig(1.0, 0, 0.9, 0.95, 1e-8, 2, "cosine", 0.1, 1);
        Assert.Equal(0.5, o.LrAt(0, 12), 12);
        Assert.Equal(1.0, o.LrAt(2, 12), 12);
        Assert.Equal(0.55, o.LrAt(7, 12), 12);  // halfway through the decay: 0.1 + 0.9 * 0.5
        Assert.Equal(0.1, o.LrAt(12, 12), 12);
    }

    [Fact]
    public void TaskConfigTokenBoundsAreTheTasksOwn()
    {
        // Config checks that a batch fits the task from TaskConfig's bounds, without the generators.
        foreach (var name in ExperimentConfig.Tasks)
            for (int maxLen = 1; maxLen <= 12; maxLen++)
            {
                var cfg = new TaskConfig(name, 1, maxLen);
                var task = SyntheticTask.Create(cfg);
                Assert.Equal(task.MaxPromptTokens, cfg.MaxPromptTokens);
                Assert.Equal(task.MaxAnswerTokens, cfg.MaxAnswerTokens);
            }
        var unknown = Assert.Throws<ConfigException>(() => new TaskConfig("reverse", 1, 3).MaxPromptTokens);
        Assert.Contains("'reverse' is not allowed; allowed values: sort-digits | add", unknown.Message);
    }

    [Fact]
    public void TasksAndTokenizerRoundTrip()
    {
        var tok = new CharTokenizer();
        var sort = SyntheticTask.Create(new TaskConfig("sort-digits", 3, 6));
        var add = SyntheticTask.Create(new TaskConfig("add", 1, 3));
        Assert.Equal("01234", sort.Solve("31204="));
        Assert.Equal("357", add.Solve("12+345="));
        Assert.Equal(1.0, sort.Score("31204=", "01234"));
        Assert.Equal(0.0, sort.Score("31204=", "0123"));
        Assert.Equal(0.8, sort.Grade("31204=", "01235"), 12);
        Assert.Equal(5.0 / 6, sort.Grade("31204=", "012344"), 12);  // 5 right places of 6
        var rng = StepRandom.Create(1, "t", 0, 0);
        for (int i = 0; i < 200; i++)
        {
            foreach (var t in new[] { sort, add })
            {
                var ex = t.Sample(rng);
                var ids = tok.Encode(ex.Prompt);
                Assert.True(ids.Length + 1 <= t.MaxPromptTokens);
                Assert.True(ex.Answer.Length + 1 <= t.MaxAnswerTokens);
                Assert.Equal(ex.Prompt, tok.Decode([tok.Bos, .. ids, tok.Eos, 5]));
                Assert.Equal(1.0, t.Score(ex.Prompt, ex.Answer));
            }
        }
        Assert.Throws<ArgumentException>(() => tok.Encode("12a"));
        Assert.Equal("1?", tok.Decode([4, 31]));
        // per-step streams: same inputs, same numbers; different step, different numbers
        Assert.Equal(StepRandom.Create(7, "gen", 1, 5).Next(), StepRandom.Create(7, "gen", 1, 5).Next());
        Assert.NotEqual(StepRandom.Seed64(7, "gen", 1, 5), StepRandom.Seed64(7, "gen", 1, 6));
    }
}
