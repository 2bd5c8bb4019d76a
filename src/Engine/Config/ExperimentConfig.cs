// The experiment config (docs/experiment-config.md): typed, validated, resolved into an ordered
// list of stages. Each stage is parsed from the top-level mapping deep-merged with the stage's
// own keys, so "missing keys default from the top level" holds for every section and errors
// still name the stage's field path.
using YamlDotNet.RepresentationModel;

namespace ReaLNative.Engine.Config;

internal static class AlgorithmNames
{
    public const string Sft = "sft", Rm = "rm", Ppo = "ppo", Grpo = "grpo", Remax = "remax", Rloo = "rloo", Dpo = "dpo";
    public static readonly string[] All = [Sft, Rm, Ppo, Grpo, Remax, Rloo, Dpo];

    /// <summary>Algorithms that sample a group of answers per prompt (batch.group_size >= 2).</summary>
    public static bool Grouped(string algorithm) => algorithm is Grpo or Rloo;

    /// <summary>Algorithms whose samples are scored by a reward (model or rule-based, `reward.kind`).</summary>
    public static bool Rewarded(string algorithm) => algorithm is Ppo or Grpo or Remax or Rloo;

    /// <summary>Model roles each algorithm needs; an RL algorithm whose reward is rule-based
    /// (<paramref name="rewardModel"/> false) has no reward model.</summary>
    public static string[] Roles(string algorithm, bool rewardModel = true) => algorithm switch
    {
        Sft => ["actor"],
        Rm => ["actor", "reward"], // the frozen actor generates the samples the pairs are made of
        Ppo => rewardModel ? ["actor", "critic", "ref", "reward"] : ["actor", "critic", "ref"],
        Grpo or Remax or Rloo => rewardModel ? ["actor", "ref", "reward"] : ["actor", "ref"],
        Dpo => ["actor", "ref"],
        _ => throw new ArgumentOutOfRangeException(nameof(algorithm), algorithm, null),
    };

    /// <summary>Roles whose parameters the algorithm trains.</summary>
    public static string[] TrainedRoles(string algorithm) => algorithm switch
    {
        Rm => ["reward"],
        Ppo => ["actor", "critic"],
        _ => ["actor"],
    };

    /// <summary>Name of the artifact a stage leaves for later stages' `init`, if any.</summary>
    public static (string Artifact, string Role)? Produces(string algorithm) => algorithm switch
    {
        Sft => ("sft", "actor"),
        Rm => ("rm", "reward"),
        _ => null,
    };

    /// <summary>Roles with a scalar (value) head instead of the LM head.</summary>
    public static bool ScalarHead(string role) => role is "critic" or "reward";
}

/// <summary>The `task:` section: a synthetic task and its operand lengths. The token bounds are what
/// a stage's batch must fit; they equal the tasks' own MaxPromptTokens / MaxAnswerTokens
/// (Tasks/SyntheticTask.cs, held equal by a test), so that Config checks the fit without the task
/// generators.</summary>
internal sealed record TaskConfig(string Name, int MinLen, int MaxLen)
{
    /// <summary>Longest prompt in tokens, BOS included: BOS, the digits and '=' (sort-digits); BOS,
    /// two operands, '+' and '=' (add).</summary>
    public int MaxPromptTokens => Name switch
    {
        "sort-digits" => 1 + MaxLen + 1,
        "add" => 1 + 2 * MaxLen + 2,
        _ => throw UnknownName(),
    };

    /// <summary>Longest answer in tokens, EOS included (a sum has at most one digit more than its operands).</summary>
    public int MaxAnswerTokens => Name switch
    {
        "sort-digits" => MaxLen + 1,
        "add" => MaxLen + 2,
        _ => throw UnknownName(),
    };

    private ConfigException UnknownName() =>
        new("task.name", $"'{Name}' is not allowed; allowed values: {string.Join(" | ", ExperimentConfig.Tasks)}");
}

internal sealed record EvalConfig(int Size, int Every);

internal sealed record ModelSpec(string Role, string? Preset, string? ConfigPath, string Init)
{
    /// <summary>`allow_non_finite_weights`: load NaN / infinite weights from the init checkpoint
    /// instead of refusing them (default false: refused, naming the tensor).</summary>
    public bool AllowNonFiniteWeights { get; init; }

    /// <summary>`precision`: fp32 | bf16 (default: the top-level `precision`, itself default fp32).</summary>
    public string Precision { get; init; } = Precisions.Fp32;

    /// <summary>Identity of the architecture, to check that an init source has the same shape.</summary>
    public string ArchitectureKey => Preset is not null ? $"preset:{Preset}" : $"config:{ConfigPath}";
    public bool InitFromPath => Init is not ("random" or "sft" or "rm");
}

/// <summary>Model weight precisions (`precision`, top level and per model).</summary>
internal static class Precisions
{
    public const string Fp32 = "fp32", Bf16 = "bf16";
    public static readonly string[] All = [Fp32, Bf16];
}

internal sealed record BatchConfig(int Size, int PromptLen, int GenLen, int Minibatches, int GroupSize);

internal sealed record OptimConfig(double Lr, double WeightDecay, double Beta1, double Beta2, double Eps,
                                 int WarmupSteps, string Decay, double MinLrRatio, double ClipGradNorm);

/// <summary>Sampling settings of actor_gen. Continuous (`batching: continuous`): continuous batching
/// with one KV slot per sequence, identical prompts (GRPO/RLOO groups) prefilled once and their K/V
/// prefix shared, always with the batch-independent prefill. BatchIndependentPrefill (`prefill:
/// batch_independent`; `packed`, one forward of all prompts, is the static default): prompts
/// prefilled in forwards of at most 64 tokens, so static and continuous give the same tokens,
/// log-probs and masks.</summary>
internal sealed record GenerationConfig(double Temperature, int TopK, double TopP)
{
    public bool Continuous { get; init; }
    public bool BatchIndependentPrefill { get; init; }
}

/// <summary>Policy-gradient options (ppo, grpo, remax, rloo). ClipEpsLow/High: the ratio's clip
/// range [1 - low, 1 + high] (both clip_eps unless set; DAPO's clip-higher sets high above low).
/// LossAgg: "token" (mean over every token of the batch: DAPO, PPO) or "sequence" (mean over
/// sequences of each sequence's token mean: GRPO as published). StdNorm: GRPO divides the
/// group-centred rewards by the group's std (false: Dr. GRPO). DynamicSampling: drop groups whose
/// rewards are all equal (DAPO). OverlongBuffer/OverlongPenalty: DAPO's soft overlong punishment
/// over the last `overlong_buffer` tokens before gen_len (0 = off).</summary>
internal sealed record PpoConfig(double KlCoef, double ClipEps, double ValueClipEps, double Gamma, double Lambda,
                               int PpoEpochs, bool AdvNorm, double MaxRewardClip)
{
    public double ClipEpsLow { get; init; } = ClipEps;
    public double ClipEpsHigh { get; init; } = ClipEps;
    public string LossAgg { get; init; } = LossAggregation.Token;
    public bool StdNorm { get; init; } = true;
    public bool DynamicSampling { get; init; }
    public int OverlongBuffer { get; init; }
    public double OverlongPenalty { get; init; } = 1.0;
    /// <summary>Asynchronous RL's decoupled objective: tokens whose behaviour weight
    /// exp(proximal - behaviour) exceeds this leave the surrogate (0: no cap).</summary>
    public double BehaviourWeightCap { get; init; }
    /// <summary>Asynchronous RL: stale batches train with the decoupled objective (the proximal
    /// log-probs recomputed); false: the ratio is against the behaviour log-probs (no recompute).</summary>
    public bool DecoupledLoss { get; init; } = true;
}

internal static class LossAggregation
{
    public const string Token = "token", Sequence = "sequence";
}

/// <summary>DPO options: beta and the loss ("sigmoid": DPO; "ipo": IPO's squared loss).</summary>
internal sealed record DpoConfig(double Beta)
{
    public string Loss { get; init; } = "sigmoid";
}

/// <summary>One stage of the pipeline, fully resolved (no missing values).</summary>
internal sealed record StageConfig(int Index, string Algorithm, int Iterations, IReadOnlyDictionary<string, ModelSpec> Models,
                                 BatchConfig Batch, OptimConfig Optim, GenerationConfig Generation, PpoConfig Ppo, DpoConfig Dpo)
{
    public string Path => $"stages[{Index}]";
    public RewardConfig Reward { get; init; } = new(RewardConfig.Model);
    /// <summary>The stage's `dataset:` (null: examples come from the synthetic `task:`).</summary>
    public DatasetConfig? Dataset { get; init; }
    /// <summary>Whether this stage calls a reward model (an RL algorithm with `reward.kind: model`).</summary>
    public bool UsesRewardModel => AlgorithmNames.Rewarded(Algorithm) && Reward.UsesModel;
}

/// <summary>Values of `weight_update` (mode: async).</summary>
internal static class WeightUpdates
{
    /// <summary>A generation in flight finishes on the weights it started with; the push waits for it.</summary>
    public const string FinishBatch = "finish_batch";
    /// <summary>A generation in flight pauses at a decode step, takes the new weights and continues on its KV cache.</summary>
    public const string Interrupt = "interrupt";
    public static readonly string[] All = [FinishBatch, Interrupt];
}

internal sealed record ExperimentConfig(string Name, string Algorithm, long Seed, string BaseDirectory, TaskConfig Task,
                                      EvalConfig Eval, int CheckpointEvery, IReadOnlyList<StageConfig> Stages,
                                      bool ExplicitStages)
{
    /// <summary>How many of the newest checkpoints are kept (`checkpoint_keep`, >= 1, default 2).</summary>
    public int CheckpointKeep { get; init; } = 2;

    /// <summary>`activation_cache_clear_every: N`: after the calls of every Nth iteration (before its
    /// evaluation, checkpoint and the next iteration) each process frees the activation blocks no call
    /// holds (Model/ArenaBlocks, the cache its calls take their activations from), so that the
    /// reallocations that refill released inference replicas next (evaluation's generation, the next
    /// iteration's) take their room instead of adding to it; the next calls fault their blocks in again.
    /// 0 (the default): never, the blocks stay for the next call. ReaLHF's `cache_clear_freq` (its model
    /// workers call torch.cuda.empty_cache every 10 steps by default) makes the same trade.</summary>
    public int ActivationCacheClearEvery { get; init; }

    /// <summary>`mode: async` with `max_staleness: N`: in the RL stages, generation of iteration g
    /// runs with the policy of iteration g - N, overlapping the training of the iterations before
    /// (Runs/AsyncRollouts.cs); null: `mode: sync`.</summary>
    public int? MaxStaleness { get; init; }

    /// <summary>`weight_update` of an async run: what a generation in flight does when the next
    /// policy version is pushed (docs/algorithms.md "Asynchronous RL").</summary>
    public string WeightUpdate { get; init; } = WeightUpdates.FinishBatch;

    /// <summary>`interrupt_at` of `weight_update: interrupt`: the fraction of a stage's
    /// max_new_tokens after which a generation takes the new weights.</summary>
    public double InterruptAt { get; init; } = 0.5;

    /// <summary>The decode step before which a generation of <paramref name="stage"/> takes the new
    /// weights under `weight_update: interrupt`: tokens 0 .. step - 1 of each sequence are sampled
    /// by the old version, the rest by the new one (1 .. max_new_tokens - 1).</summary>
    public int InterruptStep(StageConfig stage) => Math.Clamp((int)Math.Ceiling(InterruptAt * stage.Batch.GenLen), 1, Math.Max(1, stage.Batch.GenLen - 1));

    /// <summary>Whether stage <paramref name="stage"/> runs asynchronously (an RL stage of an async experiment).</summary>
    public bool Asynchronous(StageConfig stage) => MaxStaleness is not null && AlgorithmNames.Rewarded(stage.Algorithm);

    public static readonly string[] Presets = ["tiny", "gpt2-small", "llama-7b", "llama-13b", "llama-34b", "llama-70b"];
    public static readonly string[] Tasks = ["sort-digits", "add"];

    public static ExperimentConfig Load(string file)
    {
        string text;
        try { text = InputFile.ReadAllText(file, "config file"); }
        catch (InputException e) { throw new ConfigException("", e.Message); }
        return Parse(text, Path.GetDirectoryName(Path.GetFullPath(file))!);
    }

    public static ExperimentConfig Parse(string yaml, string baseDirectory)
    {
        YamlStream stream;
        try { stream = YamlText.Load(yaml, "config"); }
        catch (InputException e) { throw new ConfigException("", $"invalid YAML at line {e.Line}, column {e.Column}: {e.Detail["invalid YAML: ".Length..]}"); }
        if (stream.Documents.Count == 0) throw new ConfigException("", "the file is empty; an experiment needs at least 'algorithm' and 'models' (docs/experiment-config.md)");
        if (stream.Documents.Count != 1) throw new ConfigException("", "expected exactly one YAML document");
        if (stream.Documents[0].RootNode is not YamlMappingNode root)
            throw new ConfigException("", "the top level must be a mapping");

        var top = new MapReader(root, "");
        string name = top.Str("name", "experiment");
        string algorithm = top.Enum("algorithm", null, AlgorithmNames.All);
        long seed = top.Int("seed", 1, 0, long.MaxValue);
        top.Int("iterations", 1, 1, 1_000_000);
        string precision = top.Enum("precision", Precisions.Fp32, Precisions.All);
        // The asynchronous dataflow (docs/algorithms.md "Asynchronous RL"): generation runs up to
        // max_staleness policy versions ahead of training in the RL stages.
        int? maxStaleness = null;
        string weightUpdate = WeightUpdates.FinishBatch;
        double interruptAt = 0.5;
        if (top.Enum("mode", "sync", ["sync", "async"]) == "async")
        {
            if (!AlgorithmNames.Rewarded(algorithm))
                throw new ConfigException("mode", $"async runs the RL algorithms (ppo | grpo | rloo | remax), not '{algorithm}'; use mode: sync");
            maxStaleness = (int)top.Int("max_staleness", 1, 0, 16);
            weightUpdate = top.Enum("weight_update", WeightUpdates.FinishBatch, WeightUpdates.All);
            if (weightUpdate == WeightUpdates.Interrupt)
            {
                if (maxStaleness == 0)
                    throw new ConfigException("weight_update", "interrupt needs max_staleness >= 1 (at 0 no newer policy exists while a batch is generated)");
                if (algorithm == "remax")
                    throw new ConfigException("weight_update", "interrupt is not supported for remax (its greedy baseline must be generated by the same policy versions as the samples); use finish_batch");
                interruptAt = top.Real("interrupt_at", 0.5, 0, 1, minExclusive: true, maxExclusive: true);
            }
            else if (top.Has("interrupt_at")) throw new ConfigException("interrupt_at", "only meaningful with weight_update: interrupt");
        }
        else
        {
            if (top.Has("max_staleness")) throw new ConfigException("max_staleness", "only meaningful with mode: async");
            if (top.Has("weight_update")) throw new ConfigException("weight_update", "only meaningful with mode: async");
            if (top.Has("interrupt_at")) throw new ConfigException("interrupt_at", "only meaningful with mode: async");
        }

        var task = ParseTask(new MapReader(top.Get("task"), "task"));
        var ev = new MapReader(top.Get("eval"), "eval");
        var eval = new EvalConfig((int)ev.Int("size", 64, 1, 100_000), (int)ev.Int("every", 5, 1, 1_000_000));
        ev.RejectUnknown();
        int ckptEvery = (int)top.Int("checkpoint_every", 10, 1, 1_000_000);
        int ckptKeep = (int)top.Int("checkpoint_keep", 2, 1, 1_000_000);
        int cacheClearEvery = (int)top.Int("activation_cache_clear_every", 0, 0, 1_000_000);
        // Sections are validated as part of every stage; reading them here marks them known.
        foreach (var k in new[] { "models", "batch", "optim", "generation", "ppo", "dpo", "reward", "dataset" }) top.Get(k);
        var stagesNode = top.Get("stages");
        top.RejectUnknown();

        var stages = new List<StageConfig>();
        bool explicitStages = stagesNode is not null;
        if (!explicitStages)
        {
            stages.Add(ParseStage(root, 0, "", precision, baseDirectory));
        }
        else
        {
            if (stagesNode is not YamlSequenceNode seq || seq.Children.Count == 0)
                throw new ConfigException("stages", "expected a non-empty list of stages, e.g. - { algorithm: sft, iterations: 200 }");
            ValidateSharedSections(top, algorithm, precision, baseDirectory);
            var baseMap = new YamlMappingNode();
            foreach (var (k, v) in root.Children)
                if (((YamlScalarNode)k).Value is "models" or "batch" or "optim" or "generation" or "ppo" or "dpo" or "reward" or "dataset" or "iterations")
                    baseMap.Children[k] = v;
            for (int i = 0; i < seq.Children.Count; i++)
            {
                string p = $"stages[{i}]";
                var sr = new MapReader(seq.Children[i], p);
                sr.Enum("algorithm", null, AlgorithmNames.All);
                foreach (var k in new[] { "iterations", "models", "batch", "optim", "generation", "ppo", "dpo", "reward", "dataset" }) sr.Get(k);
                sr.RejectUnknown();
                var merged = MapReader.Merge(baseMap, (YamlMappingNode)seq.Children[i]);
                stages.Add(ParseStage(merged, i, p, precision, baseDirectory));
            }
            if (stages[^1].Algorithm != algorithm)
                throw new ConfigException("algorithm",
                    $"'{algorithm}' must name the last stage's algorithm ('{stages[^1].Algorithm}'): the planner reads it as the workload");
        }
        ValidatePipeline(stages, baseDirectory, explicitStages);
        ValidateTaskFits(task, stages, explicitStages);
        if (weightUpdate == WeightUpdates.Interrupt && stages.FirstOrDefault(s => AlgorithmNames.Rewarded(s.Algorithm) && s.Generation.Continuous) is { } cs)
            throw new ConfigException("weight_update", $"interrupt pauses the static generation at a decode step; stage {cs.Index} has generation.batching: continuous");
        return new ExperimentConfig(name, algorithm, seed, baseDirectory, task, eval, ckptEvery, stages, explicitStages)
        {
            CheckpointKeep = ckptKeep, ActivationCacheClearEvery = cacheClearEvery, MaxStaleness = maxStaleness, WeightUpdate = weightUpdate, InterruptAt = interruptAt,
        };
    }

    private static TaskConfig ParseTask(MapReader r)
    {
        string name = r.Enum("name", "sort-digits", Tasks);
        int maxAllowed = name == "add" ? 4 : 12;
        int min = (int)r.Int("min_len", name == "add" ? 1 : 3, 1, maxAllowed);
        int max = (int)r.Int("max_len", name == "add" ? 2 : 6, 1, maxAllowed);
        if (max < min) throw new ConfigException(r.Sub("max_len"), $"{max} is below min_len ({min}); allowed values: integers in [{min}, {maxAllowed}]");
        r.RejectUnknown();
        return new TaskConfig(name, min, max);
    }

    private static StageConfig ParseStage(YamlMappingNode node, int index, string path, string precision, string baseDirectory)
    {
        var r = new MapReader(node, path);
        string algorithm = r.Enum("algorithm", null, AlgorithmNames.All);
        int iterations = (int)r.Int("iterations", null, 1, 1_000_000);

        var reward = RewardConfig.Parse(new MapReader(r.Get("reward"), r.Sub("reward")));
        var dataset = DatasetConfig.Parse(r.Get("dataset"), r.Sub("dataset"), baseDirectory, algorithm);
        var mr = new MapReader(r.Get("models"), r.Sub("models"));
        var roles = AlgorithmNames.Roles(algorithm, reward.UsesModel);
        var models = new Dictionary<string, ModelSpec>(StringComparer.Ordinal);
        foreach (var role in new[] { "actor", "critic", "ref", "reward" })
        {
            var n = mr.Get(role);
            if (!roles.Contains(role)) continue; // other stages' roles may live in the shared section
            if (n is null)
                throw new ConfigException(mr.Sub(role), $"required for algorithm '{algorithm}' (it needs: {string.Join(", ", roles)})");
            models[role] = ParseModel(new MapReader(n, mr.Sub(role)), role, algorithm, precision);
        }
        mr.RejectUnknown();

        var batch = ParseBatch(new MapReader(r.Get("batch"), r.Sub("batch")), algorithm);
        var optim = ParseOptim(new MapReader(r.Get("optim"), r.Sub("optim")));
        var gen = ParseGeneration(new MapReader(r.Get("generation"), r.Sub("generation")));
        var ppo = ParsePpo(new MapReader(r.Get("ppo"), r.Sub("ppo")), algorithm);
        var dpo = ParseDpo(new MapReader(r.Get("dpo"), r.Sub("dpo")));
        if (algorithm == AlgorithmNames.Ppo && ppo.DynamicSampling)
            throw new ConfigException(r.Sub("ppo") + ".dynamic_sampling",
                "drops groups of equal rewards, which only grpo | rloo | remax have (ppo's critic baseline gives them non-zero advantages); allowed values for ppo: false");
        if (AlgorithmNames.Rewarded(algorithm) && ppo.OverlongBuffer >= batch.GenLen)
            throw new ConfigException(r.Sub("ppo") + ".overlong_buffer",
                $"{ppo.OverlongBuffer} is not below batch.gen_len ({batch.GenLen}); allowed values: integers in [0, {batch.GenLen - 1}]");

        // Top-level-only keys are allowed in the merged single-stage mapping.
        if (path.Length == 0)
            foreach (var k in new[] { "name", "seed", "task", "eval", "checkpoint_every", "checkpoint_keep", "activation_cache_clear_every", "stages", "precision" }) r.Get(k);
        r.RejectUnknown();
        return new StageConfig(index, algorithm, iterations, models, batch, optim, gen, ppo, dpo) { Reward = reward, Dataset = dataset };
    }

    private static BatchConfig ParseBatch(MapReader br, string algorithm)
    {
        int size = (int)br.Int("size", 64, 1, 1_000_000);
        var batch = new BatchConfig(size, (int)br.Int("prompt_len", 16, 1, 1_000_000), (int)br.Int("gen_len", 16, 1, 1_000_000),
                                    (int)br.Int("minibatches", 1, 1, size), (int)br.Int("group_size", 1, 1, size));
        if (size % batch.Minibatches != 0)
            throw new ConfigException(br.Sub("minibatches"), $"{batch.Minibatches} does not divide batch.size ({size}); allowed values: divisors of {size}");
        if (size % batch.GroupSize != 0)
            throw new ConfigException(br.Sub("group_size"), $"{batch.GroupSize} does not divide batch.size ({size}); allowed values: divisors of {size}");
        if (AlgorithmNames.Grouped(algorithm) && batch.GroupSize < 2)
            throw new ConfigException(br.Sub("group_size"), $"{algorithm} compares the samples of a group; allowed values: integers >= 2 dividing batch.size");
        br.RejectUnknown();
        return batch;
    }

    private static OptimConfig ParseOptim(MapReader or)
    {
        var betas = or.RealList("betas", [0.9, 0.95], 2, 0, 1, maxExclusive: true);
        var optim = new OptimConfig(or.Real("lr", 1e-3, 0, 10, minExclusive: true), or.Real("weight_decay", 0.0, 0, 10),
                                    betas[0], betas[1], or.Real("eps", 1e-8, 0, 1, minExclusive: true),
                                    (int)or.Int("warmup_steps", 0, 0, 1_000_000), or.Enum("decay", "cosine", "constant", "linear", "cosine"),
                                    or.Real("min_lr_ratio", 0.1, 0, 1), or.Real("clip_grad_norm", 1.0, 0, 1e6));
        or.RejectUnknown();
        return optim;
    }

    private static GenerationConfig ParseGeneration(MapReader gr)
    {
        var gen = new GenerationConfig(gr.Real("temperature", 1.0, 0, 100), (int)gr.Int("top_k", 0, 0, 1_000_000),
                                       gr.Real("top_p", 1.0, 0, 1, minExclusive: true))
        {
            Continuous = gr.Enum("batching", "static", "static", "continuous") == "continuous",
        };
        gen = gen with { BatchIndependentPrefill = gr.Enum("prefill", gen.Continuous ? "batch_independent" : "packed", "packed", "batch_independent") == "batch_independent" };
        if (gen.Continuous && !gen.BatchIndependentPrefill)
            throw new ConfigException(gr.Sub("prefill"), "packed: continuous batching prefills batch-independently (shared prefixes must not change a prompt's K/V); allowed values with batching: continuous: batch_independent");
        // Sampling filters change which tokens can be drawn; the training log-prob recompute does not
        // apply them yet, so PPO's ratios would be wrong: refused here, before anything runs.
        const string why = "sampling filters are not supported yet (the training log-prob recompute does not reproduce them)";
        if (gen.TopK != 0) throw new ConfigException(gr.Sub("top_k"), $"{gen.TopK}: {why}; allowed values: 0 (no filter)");
        if (gen.TopP < 1) throw new ConfigException(gr.Sub("top_p"), $"{gen.TopP.ToString(System.Globalization.CultureInfo.InvariantCulture)}: {why}; allowed values: 1 (no filter)");
        gr.RejectUnknown();
        return gen;
    }

    private static PpoConfig ParsePpo(MapReader pr, string algorithm)
    {
        double clip = pr.Real("clip_eps", 0.2, 0, 10, minExclusive: true);
        var ppo = new PpoConfig(pr.Real("kl_coef", 0.05, 0, 100), clip,
                                pr.Real("value_clip_eps", 0.2, 0, 1e6, minExclusive: true), pr.Real("gamma", 1.0, 0, 1),
                                pr.Real("lambda", 0.95, 0, 1), (int)pr.Int("ppo_epochs", 1, 1, 1000), pr.Bool("adv_norm", true),
                                pr.Real("max_reward_clip", 5.0, 0, 1e6, minExclusive: true))
        {
            ClipEpsLow = pr.Real("clip_eps_low", clip, 0, 10, minExclusive: true),
            ClipEpsHigh = pr.Real("clip_eps_high", clip, 0, 10, minExclusive: true),
            LossAgg = pr.Enum("loss_agg", algorithm == AlgorithmNames.Grpo ? LossAggregation.Sequence : LossAggregation.Token,
                              LossAggregation.Token, LossAggregation.Sequence),
            StdNorm = pr.Bool("std_norm", true),
            DynamicSampling = pr.Bool("dynamic_sampling", false),
            OverlongBuffer = (int)pr.Int("overlong_buffer", 0, 0, 1_000_000),
            OverlongPenalty = pr.Real("overlong_penalty", 1.0, 0, 1e6),
            BehaviourWeightCap = pr.Real("behaviour_weight_cap", 0, 0, 1e6),
            DecoupledLoss = pr.Bool("decoupled_loss", true),
        };
        pr.RejectUnknown();
        return ppo;
    }

    private static DpoConfig ParseDpo(MapReader dr)
    {
        var dpo = new DpoConfig(dr.Real("beta", 0.1, 0, 1000, minExclusive: true)) { Loss = dr.Enum("loss", "sigmoid", "sigmoid", "ipo") };
        dr.RejectUnknown();
        return dpo;
    }

    /// <summary>With explicit stages, the shared top-level sections are checked on their own first, so an
    /// error in them names the top-level path rather than the first stage's.</summary>
    private static void ValidateSharedSections(MapReader top, string algorithm, string precision, string baseDirectory)
    {
        if (top.Get("batch") is { } b) ParseBatch(new MapReader(b, "batch"), AlgorithmNames.Sft);
        if (top.Get("optim") is { } o) ParseOptim(new MapReader(o, "optim"));
        if (top.Get("generation") is { } g) ParseGeneration(new MapReader(g, "generation"));
        if (top.Get("ppo") is { } p) ParsePpo(new MapReader(p, "ppo"), algorithm);
        if (top.Get("reward") is { } rw) RewardConfig.Parse(new MapReader(rw, "reward"));
        if (top.Get("dataset") is { } ds) DatasetConfig.Parse(ds, "dataset", baseDirectory, AlgorithmNames.Rm);
        if (top.Get("dpo") is { } d) ParseDpo(new MapReader(d, "dpo"));
        if (top.Get("models") is { } m)
        {
            var mr = new MapReader(m, "models");
            foreach (var role in new[] { "actor", "critic", "ref", "reward" })
                if (mr.Get(role) is { } n)
                {
                    var r = new MapReader(n, mr.Sub(role));
                    ParseModel(r, role, algorithm, precision, requireInit: false);
                }
            mr.RejectUnknown();
        }
    }

    private static ModelSpec ParseModel(MapReader r, string role, string algorithm, string precision, bool requireInit = true)
    {
        string? preset = r.OptStr("preset");
        string? config = r.OptStr("config");
        if (preset is null == config is null)
            throw new ConfigException(r.Path, $"give exactly one of 'preset' ({string.Join(" | ", Presets)}) or 'config' (path to a Hugging Face config.json)");
        if (preset is not null) r.Enum("preset", null, Presets);
        bool trained = AlgorithmNames.TrainedRoles(algorithm).Contains(role);
        string init = r.Str("init", trained || !requireInit ? "random" : null);
        bool allowNonFinite = r.Bool("allow_non_finite_weights", false);
        string modelPrecision = r.Enum("precision", precision, Precisions.All);
        r.RejectUnknown();
        return new ModelSpec(role, preset, config, init) { AllowNonFiniteWeights = allowNonFinite, Precision = modelPrecision };
    }

    /// <summary>Cross-stage checks: init sources exist earlier and have the same architecture; paths exist.</summary>
    private static void ValidatePipeline(List<StageConfig> stages, string baseDir, bool explicitStages)
    {
        var produced = new Dictionary<string, ModelSpec>(StringComparer.Ordinal);
        foreach (var st in stages)
        {
            string sp = explicitStages ? st.Path + "." : "";
            foreach (var (role, m) in st.Models)
            {
                string p = $"{sp}models.{role}";
                if (m.ConfigPath is not null && !File.Exists(Path.Combine(baseDir, m.ConfigPath)))
                    throw new ConfigException(p + ".config", $"file '{m.ConfigPath}' not found (paths are relative to the YAML file)");
                if (m.Init is "sft" or "rm")
                {
                    if (!produced.TryGetValue(m.Init, out var src))
                        throw new ConfigException(p + ".init",
                            $"'{m.Init}' needs an earlier '{m.Init}' stage in `stages`; allowed values: random | {string.Join(" | ", produced.Keys.Order())}{(produced.Count > 0 ? " | " : "")}path to a Hugging Face checkpoint directory");
                    if (src.ArchitectureKey != m.ArchitectureKey)
                        throw new ConfigException(p + ".init",
                            $"'{m.Init}' produced a model of {src.ArchitectureKey}, this role is {m.ArchitectureKey}; the architectures must match");
                }
                else if (m.InitFromPath && !Directory.Exists(Path.Combine(baseDir, m.Init)))
                    throw new ConfigException(p + ".init",
                        $"'{m.Init}' is neither random | sft | rm nor an existing checkpoint directory (relative to the YAML file)");
                else if (m.Init == "random" && !AlgorithmNames.TrainedRoles(st.Algorithm).Contains(role))
                    throw new ConfigException(p + ".init",
                        $"a frozen {role} model initialised at random gives meaningless results; allowed values: sft | rm | path to a checkpoint directory");
            }
            if (AlgorithmNames.Produces(st.Algorithm) is { } prod)
                produced[prod.Artifact] = st.Models[prod.Role];
        }
    }

    private static void ValidateTaskFits(TaskConfig task, List<StageConfig> stages, bool explicitStages)
    {
        int promptLen = task.MaxPromptTokens, answerLen = task.MaxAnswerTokens;
        foreach (var st in stages.Where(s => s.Dataset is null))  // a dataset's records are checked as they are read
        {
            string sp = explicitStages ? st.Path + "." : "";
            if (st.Batch.PromptLen < promptLen)
                throw new ConfigException(sp + "batch.prompt_len",
                    $"{st.Batch.PromptLen} is shorter than the longest '{task.Name}' prompt ({promptLen} tokens); allowed values: integers >= {promptLen}");
            if (st.Batch.GenLen < answerLen)
                throw new ConfigException(sp + "batch.gen_len",
                    $"{st.Batch.GenLen} is shorter than the longest '{task.Name}' answer plus EOS ({answerLen} tokens); allowed values: integers >= {answerLen}");
        }
    }
}
