// The planner's view of an experiment: only the workload keys marked [P] in
// docs/experiment-config.md (other keys belong to the engine and are ignored here), the model
// architectures (preset or Hugging Face config.json) and the dataflow graph of model function calls.
using System.Text.Json;
using YamlDotNet.RepresentationModel;

namespace ReaLNative.Planner;

/// <summary>LLaMA-family architecture; the same fields `realn run` derives from a preset or config.json.</summary>
public sealed record ModelConfig(string Name, int Layers, int Hidden, int Intermediate, int Heads, int KvHeads, int Vocab, bool Tied)
{
    public int HeadDim => Hidden / Heads;
    public int KvDim => KvHeads * HeadDim;

    /// <summary>Parameters of one transformer block: q,o (h*h each), k,v (h*kv), gate/up/down (3*h*i), two norms.</summary>
    public double BlockParams => 2.0 * Hidden * Hidden + 2.0 * Hidden * KvDim + 3.0 * Hidden * Intermediate + 2.0 * Hidden;

    /// <summary>Total parameters; <paramref name="scalarHead"/> for critic/reward (value head of width 1).</summary>
    public double Params(bool scalarHead) =>
        (double)Vocab * Hidden + Layers * BlockParams + Hidden + (scalarHead ? Hidden : Tied ? 0 : (double)Vocab * Hidden);

    public static readonly IReadOnlyDictionary<string, ModelConfig> Presets = new Dictionary<string, ModelConfig>
    {
        ["tiny"] = new("tiny", 2, 64, 176, 4, 2, 32, false),
        ["gpt2-small"] = new("gpt2-small", 12, 768, 2048, 12, 12, 50304, false),
        ["llama-7b"] = new("llama-7b", 32, 4096, 11008, 32, 32, 32000, false),
        ["llama-13b"] = new("llama-13b", 40, 5120, 13824, 40, 40, 32000, false),
        ["llama-34b"] = new("llama-34b", 48, 8192, 22016, 64, 8, 32000, false),
        ["llama-70b"] = new("llama-70b", 80, 8192, 28672, 64, 8, 32000, false),
    };

    /// <summary>Reads the architecture fields of a Hugging Face LLaMA config.json.</summary>
    public static ModelConfig FromHfConfig(string path, string field)
    {
        string text;
        try { text = InputFile.ReadAllText(path, "config file", field); }
        catch (InputException e) { throw new PlannerException(e.Message); }
        JsonDocument doc;
        try { doc = JsonDocument.Parse(text); }
        catch (JsonException e) { throw new PlannerException($"{field}: '{path}' is not valid JSON: {e.Message}"); }
        using (doc)
        {
            var root = doc.RootElement;
            int Get(string k, int? dflt = null)
            {
                if (!root.TryGetProperty(k, out var v))
                    return dflt ?? throw new PlannerException($"{field}: '{path}' lacks '{k}'");
                if (v.ValueKind != JsonValueKind.Number || !v.TryGetInt32(out int x) || x <= 0)
                    throw new PlannerException($"{field}: '{path}' key '{k}' must be a positive integer");
                return x;
            }
            int heads = Get("num_attention_heads");
            bool tied = root.TryGetProperty("tie_word_embeddings", out var t) && t.ValueKind == JsonValueKind.True;
            var m = new ModelConfig(Path.GetFileName(Path.GetDirectoryName(Path.GetFullPath(path))) ?? "hf", Get("num_hidden_layers"), Get("hidden_size"),
                Get("intermediate_size"), heads, Get("num_key_value_heads", heads), Get("vocab_size"), tied);
            m.Check(field);
            return m;
        }
    }

    internal void Check(string field)
    {
        if (Hidden % Heads != 0) throw new PlannerException($"{field}: hidden_size {Hidden} is not a multiple of num_attention_heads {Heads}");
        if (Heads % KvHeads != 0) throw new PlannerException($"{field}: num_attention_heads {Heads} is not a multiple of num_key_value_heads {KvHeads}");
    }
}

/// <summary>Kind of model function call.</summary>
public enum CallType { Generate, Inference, TrainStep }

/// <summary>One model function call of the dataflow: its model role, type, the calls it consumes
/// and the work size (sequences and tokens per sequence). Train calls run <see cref="OptimizerSteps"/>
/// optimizer steps (PPO minibatches) per epoch, <see cref="Epochs"/> times. <see cref="PromptTokens"/> and
/// <see cref="NewTokens"/> are the bounds (batch.prompt_len, gen_len: memory is sized for them); the engine
/// packs sequences without padding, so compute is priced on the expected lengths
/// (<see cref="MeanPromptTokens"/>, <see cref="MeanNewTokens"/>) and a static-batch generation decodes
/// <see cref="DecodeSteps"/> steps (until its longest sequence ends).</summary>
public sealed record ModelCall(string Name, string Role, CallType Type, string[] Inputs, int Sequences, int PromptTokens, int NewTokens,
    int OptimizerSteps, int OutputBytesPerToken)
{
    /// <summary>Longest sequence: prompt_len + gen_len (memory bound).</summary>
    public int SequenceTokens => PromptTokens + NewTokens;
    /// <summary>Expected prompt tokens per sequence (null: <see cref="PromptTokens"/>, every prompt full length).</summary>
    public double? ExpectedPromptTokens { get; init; }
    /// <summary>Expected generated (or response) tokens per sequence (null: <see cref="NewTokens"/>).</summary>
    public double? ExpectedNewTokens { get; init; }
    /// <summary>Decode steps of a static batch: its longest generation (null: <see cref="NewTokens"/>).</summary>
    public int? LongestNewTokens { get; init; }
    /// <summary>Passes over the batch per train call (ppo.ppo_epochs for the RL algorithms; 1 otherwise).</summary>
    public int Epochs { get; init; } = 1;
    /// <summary>A train call whose workers compute its loss themselves (the RL algorithms' actor and critic
    /// train calls): in worker processes one master round trip per optimizer step (forward, loss, backward
    /// and step in one command) instead of two (the forward's outputs to the master's loss, then the
    /// backward with the step).</summary>
    public bool LossOnWorkers { get; init; }
    public double MeanPromptTokens => Math.Min(PromptTokens, ExpectedPromptTokens ?? PromptTokens);
    public double MeanNewTokens => Math.Min(NewTokens, ExpectedNewTokens ?? NewTokens);
    /// <summary>Tokens the engine packs per sequence (prompt + response, no padding).</summary>
    public double MeanSequenceTokens => MeanPromptTokens + MeanNewTokens;
    public int DecodeSteps => Math.Max(1, Math.Min(NewTokens, LongestNewTokens ?? NewTokens));
}

/// <summary>The planner's part of an experiment YAML plus the derived dataflow graph.</summary>
public sealed class Experiment
{
    public required string Name { get; init; }
    public required string Algorithm { get; init; }
    public required int Iterations { get; init; }
    public required int BatchSize { get; init; }
    public required int PromptLen { get; init; }
    public required int GenLen { get; init; }
    public required int Minibatches { get; init; }
    public required IReadOnlyDictionary<string, ModelConfig> Models { get; init; }
    public required IReadOnlyList<ModelCall> Calls { get; init; }
    /// <summary>Expected lengths of the synthetic task the experiment samples from (null: a `dataset`, priced at
    /// prompt_len + gen_len per sequence); the calls carry them (<see cref="ModelCall.MeanSequenceTokens"/>).</summary>
    public TaskLengths? Lengths { get; init; }
    /// <summary>`reward.kind`: "model" (a reward model scores the samples: rew_inf calls) or a
    /// rule-based kind such as "task" (scored on the master, no reward model and no reward call).</summary>
    public string RewardKind { get; init; } = "model";
    /// <summary>The experiment's `precision` (bf16 | fp32), or null when it sets none: the cluster spec's then.</summary>
    public Precision? Precision { get; init; }
    /// <summary>Per-model `precision` where a model sets its own (the engine's `models.ROLE.precision`);
    /// a role not listed takes <see cref="Precision"/>.</summary>
    public IReadOnlyDictionary<string, Precision>? ModelPrecisions { get; init; }
    /// <summary>The precision role <paramref name="role"/> holds its weights in: its own, else the
    /// experiment's, else null (the cluster spec's).</summary>
    public Precision? PrecisionOf(string role) =>
        ModelPrecisions is not null && ModelPrecisions.TryGetValue(role, out var p) ? p : Precision;
    /// <summary>`mode: async` with `max_staleness: N`: generation runs ahead of training by up to N
    /// policy versions (the samples of iteration i come from weights of version >= i - N); null for
    /// the synchronous dataflow (`mode: sync`, the default).</summary>
    public int? MaxStaleness { get; init; }
    /// <summary>True for `mode: async`.</summary>
    public bool Asynchronous => MaxStaleness is not null;
    /// <summary>`weight_update: interrupt` (mode: async): a generation in flight pauses before decode step
    /// <see cref="InterruptStep"/>, takes the next policy version and continues; false: finish_batch.</summary>
    public bool Interrupt { get; init; }
    /// <summary>`interrupt_at` (fraction of gen_len, default 0.5).</summary>
    public double InterruptAt { get; init; } = 0.5;
    /// <summary>The decode step before which an interrupted generation takes the new weights: the engine's
    /// ceil(interrupt_at x gen_len) clamped to 1 .. gen_len - 1 (src/Engine/Config/ExperimentConfig.cs).</summary>
    public int InterruptStep => Math.Clamp((int)Math.Ceiling(InterruptAt * GenLen), 1, Math.Max(1, GenLen - 1));

    /// <summary>The same experiment with the synchronous dataflow (what an async plan is compared with).</summary>
    public Experiment Synchronous() => WithMaxStaleness(null);

    /// <summary>The same experiment with `max_staleness` <paramref name="maxStaleness"/> (null: `mode: sync`).</summary>
    public Experiment WithMaxStaleness(int? maxStaleness) => new()
    {
        Name = Name, Algorithm = Algorithm, Iterations = Iterations, BatchSize = BatchSize, PromptLen = PromptLen, GenLen = GenLen,
        Minibatches = Minibatches, Models = Models, Calls = Calls, Lengths = Lengths, RewardKind = RewardKind, Precision = Precision, MaxStaleness = maxStaleness,
        Interrupt = maxStaleness is not null && Interrupt, InterruptAt = InterruptAt,
        ModelPrecisions = ModelPrecisions,
    };

    /// <summary>The same experiment with per-model precisions <paramref name="modelPrecisions"/>.</summary>
    public Experiment WithModelPrecisions(IReadOnlyDictionary<string, Precision>? modelPrecisions) => new()
    {
        Name = Name, Algorithm = Algorithm, Iterations = Iterations, BatchSize = BatchSize, PromptLen = PromptLen, GenLen = GenLen,
        Minibatches = Minibatches, Models = Models, Calls = Calls, Lengths = Lengths, RewardKind = RewardKind, Precision = Precision, MaxStaleness = MaxStaleness,
        Interrupt = Interrupt, InterruptAt = InterruptAt,
        ModelPrecisions = modelPrecisions,
    };

    /// <summary>The same experiment with calls <paramref name="calls"/> (a baseline priced on a configuration its system can run).</summary>
    public Experiment WithCalls(IReadOnlyList<ModelCall> calls) => new()
    {
        Name = Name, Algorithm = Algorithm, Iterations = Iterations, BatchSize = BatchSize, PromptLen = PromptLen, GenLen = GenLen,
        Minibatches = Minibatches, Models = Models, Calls = calls, Lengths = Lengths, RewardKind = RewardKind, Precision = Precision, MaxStaleness = MaxStaleness,
        Interrupt = Interrupt, InterruptAt = InterruptAt,
        ModelPrecisions = ModelPrecisions,
    };

    /// <summary>Roles with a value (scalar) head instead of the LM head.</summary>
    public static bool HasScalarHead(string role) => role is "critic" or "reward";

    /// <summary>Roles trained by some call of this experiment (their train layout is their home).</summary>
    public bool IsTrainable(string role) => Calls.Any(c => c.Role == role && c.Type == CallType.TrainStep);

    public static Experiment Load(string path)
    {
        string text;
        try { text = InputFile.ReadAllText(path, "experiment"); }
        catch (InputException e) { throw new PlannerException(e.Message); }
        return Parse(text, Path.GetDirectoryName(Path.GetFullPath(path)) ?? ".", path);
    }

    /// <summary>The engine's reward kinds (src/Engine/Config/RewardConfig.cs, which a test keeps equal): only
    /// `model` runs a reward model; every other kind scores on the master without one.</summary>
    public static readonly string[] RewardKinds = ["model", "task", "exact_match", "numeric_match", "regex", "combined", "require_eos", "external"];

    public static Experiment Parse(string yaml, string baseDir = ".", string source = "experiment")
    {
        var root = Yaml.LoadRoot(yaml, source);
        var r = new Yaml.Reader(root, "experiment");
        string algo = r.Str("algorithm");
        string rewardKind = "model";
        if (r.Get("reward") is { } rn)
        {
            if (rn is not YamlMappingNode rm) throw new PlannerException("reward: expected a mapping, e.g. { kind: task }");
            rewardKind = new Yaml.Reader(rm, "reward").OptStr("kind") ?? "model";
            if (!RewardKinds.Contains(rewardKind)) throw new PlannerException($"reward.kind: '{rewardKind}' is not one of {string.Join(", ", RewardKinds)}");
        }
        bool rewardModel = rewardKind == "model";
        Precision? precision = r.OptStr("precision") switch
        {
            null => null,
            "bf16" => ReaLNative.Planner.Precision.Bf16,
            "fp32" => ReaLNative.Planner.Precision.Fp32,
            var other => throw new PlannerException($"precision: '{other}' is not one of fp32, bf16"),
        };
        int? maxStaleness = r.OptStr("mode") switch
        {
            null or "sync" => r.Get("max_staleness") is null ? null
                : throw new PlannerException("max_staleness: only meaningful with mode: async"),
            "async" => algo is "ppo" or "grpo" or "remax" or "rloo"
                ? r.OptInt("max_staleness", 0, 16, 1)
                : throw new PlannerException($"mode: async needs an algorithm that generates and trains (ppo, grpo, rloo, remax), not {algo}"),
            var other => throw new PlannerException($"mode: '{other}' is not one of sync, async"),
        };
        bool interrupt = false;
        double interruptAt = 0.5;
        if (maxStaleness is null && r.Get("weight_update") is not null) throw new PlannerException("weight_update: only meaningful with mode: async");
        switch (r.OptStr("weight_update"))
        {
            case null or "finish_batch":
                if (r.Get("interrupt_at") is not null) throw new PlannerException("interrupt_at: only meaningful with weight_update: interrupt");
                break;
            case "interrupt":
                if (maxStaleness is null) throw new PlannerException("weight_update: only meaningful with mode: async");
                if (maxStaleness == 0) throw new PlannerException("weight_update: interrupt needs max_staleness >= 1");
                if (algo == "remax") throw new PlannerException("weight_update: interrupt is not supported for remax; use finish_batch");
                interrupt = true;
                interruptAt = r.OptDouble("interrupt_at", 1e-9, 1 - 1e-9, 0.5);
                break;
            case var other:
                throw new PlannerException($"weight_update: '{other}' is not one of finish_batch, interrupt");
        }
        string[] roles = algo switch
        {
            "ppo" => rewardModel ? ["actor", "critic", "ref", "reward"] : ["actor", "critic", "ref"],
            "grpo" or "remax" or "rloo" => rewardModel ? ["actor", "ref", "reward"] : ["actor", "ref"],
            "dpo" => ["actor", "ref"],
            "sft" => ["actor"],
            "rm" => ["reward"],
            _ => throw new PlannerException($"algorithm: '{algo}' is not one of sft, rm, ppo, grpo, remax, rloo, dpo"),
        };
        var modelsNode = r.Get("models") as YamlMappingNode ?? throw new PlannerException("models: missing or not a mapping");
        var models = new Dictionary<string, ModelConfig>();
        foreach (var role in roles)
        {
            string f = $"models.{role}";
            var mn = modelsNode.Children.TryGetValue(new YamlScalarNode(role), out var n) ? n as YamlMappingNode : null;
            if (mn is null) throw new PlannerException($"{f}: missing (algorithm {algo} needs {string.Join(", ", roles)})");
            var mr = new Yaml.Reader(mn, f);
            string? preset = mr.OptStr("preset"), config = mr.OptStr("config");
            if ((preset is null) == (config is null)) throw new PlannerException($"{f}: give exactly one of 'preset' or 'config'");
            if (preset is not null)
                models[role] = ModelConfig.Presets.TryGetValue(preset, out var m) ? m
                    : throw new PlannerException($"{f}.preset: '{preset}' is not one of {string.Join(", ", ModelConfig.Presets.Keys)}");
            else
                models[role] = ModelConfig.FromHfConfig(Path.Combine(baseDir, config!), $"{f}.config");
        }
        var b = new Yaml.Reader(r.Get("batch") as YamlMappingNode ?? throw new PlannerException("batch: missing or not a mapping"), "batch");
        int size = b.Int("size", 1, 1 << 24), prompt = b.Int("prompt_len", 1, 1 << 20), gen = b.OptInt("gen_len", 0, 1 << 20, 0);
        int mbs = b.OptInt("minibatches", 1, 1 << 16, 1);
        if (mbs > size) throw new PlannerException($"batch.minibatches: {mbs} exceeds batch.size {size}");
        if (algo is "ppo" or "grpo" or "remax" or "rloo" && gen < 1) throw new PlannerException($"batch.gen_len: {algo} generates, needs at least 1 new token");
        // The tokens the engine packs: the expected lengths of the synthetic task the experiment names (`task:`,
        // without a `dataset`); without one (a dataset, or a workload described by its lengths alone, as the
        // examples/scale settings are) every sequence is priced at prompt_len + gen_len (an upper bound).
        TaskLengths? lengths = null;
        if (r.Get("dataset") is null && r.Get("task") is { } tn)
        {
            if (tn is not YamlMappingNode tm) throw new PlannerException("task: expected a mapping, e.g. { name: sort-digits, min_len: 3, max_len: 6 }");
            var tr = new Yaml.Reader(tm, "task");
            string task = tr.OptStr("name") ?? "sort-digits";
            if (!TaskLengths.Defaults.ContainsKey(task)) throw new PlannerException($"task.name: '{task}' is not one of {string.Join(", ", TaskLengths.Defaults.Keys)}");
            var (dmin, dmax) = TaskLengths.Defaults[task];
            lengths = TaskLengths.For(task, tr.OptInt("min_len", 1, 64, dmin), tr.OptInt("max_len", 1, 64, dmax));
        }
        int epochs = 1;
        if (algo is "ppo" or "grpo" or "remax" or "rloo" && r.Get("ppo") is YamlMappingNode pn)
            epochs = new Yaml.Reader(pn, "ppo").OptInt("ppo_epochs", 1, 1000, 1);
        var calls = BuildCalls(algo, size, prompt, gen, mbs, rewardModel)
            .Select(c => c with
            {
                ExpectedPromptTokens = lengths?.MeanPromptTokens,
                ExpectedNewTokens = lengths?.MeanAnswerTokens,
                LongestNewTokens = lengths?.MaxAnswerTokens,
                Epochs = c.Type == CallType.TrainStep ? epochs : 1,
            }).ToList();
        return new Experiment
        {
            Name = r.OptStr("name") ?? Path.GetFileNameWithoutExtension(source),
            Algorithm = algo,
            Iterations = r.OptInt("iterations", 1, int.MaxValue, 1),
            BatchSize = size, PromptLen = prompt, GenLen = gen, Minibatches = mbs,
            Models = models,
            Calls = calls,
            Lengths = lengths,
            RewardKind = rewardKind,
            Precision = precision,
            MaxStaleness = maxStaleness,
            Interrupt = interrupt, InterruptAt = interruptAt,
        };
    }

    /// <summary>An experiment built in code (the engine's view of one stage, for memory checks).</summary>
    public static Experiment Create(string name, string algorithm, int iterations, int batchSize, int promptLen, int genLen, int minibatches,
                                    IReadOnlyDictionary<string, ModelConfig> models) => new()
    {
        Name = name, Algorithm = algorithm, Iterations = iterations,
        BatchSize = batchSize, PromptLen = promptLen, GenLen = genLen, Minibatches = minibatches,
        Models = models,
        Calls = BuildCalls(algorithm, batchSize, promptLen, genLen, minibatches, rewardModel: models.ContainsKey("reward")),
    };

    /// <summary>The dataflow per algorithm (REFERENCE.md), the same calls as the engine's
    /// DataflowGraph: data edges follow keys. Without a reward model (<paramref name="rewardModel"/>
    /// false: a rule-based reward scored on the master) there are no rew_inf calls.</summary>
    internal static List<ModelCall> BuildCalls(string algo, int b, int p, int g, int mbs, bool rewardModel = true) =>
        [.. DataflowCalls(algo, b, p, g, mbs, rewardModel).Select(c => c with { LossOnWorkers = c.Type == CallType.TrainStep && algo is "ppo" or "grpo" or "remax" or "rloo" })];

    private static List<ModelCall> DataflowCalls(string algo, int b, int p, int g, int mbs, bool rewardModel)
    {
        // Output bytes per token: token ids + logprobs (+ mask) for generation, one fp32 per token for inference.
        ModelCall[] Rew(string name, string from) => rewardModel ? [new(name, "reward", CallType.Inference, [from], b, p, g, 1, 4)] : [];
        string[] Scored(params string[] deps) => rewardModel ? [.. deps, "rew_inf"] : deps;
        switch (algo)
        {
            case "ppo":
                return [
                    new("actor_gen", "actor", CallType.Generate, [], b, p, g, 1, 12),
                    .. Rew("rew_inf", "actor_gen"),
                    new("ref_inf", "ref", CallType.Inference, ["actor_gen"], b, p, g, 1, 4),
                    new("critic_inf", "critic", CallType.Inference, ["actor_gen"], b, p, g, 1, 4),
                    new("actor_train", "actor", CallType.TrainStep, Scored("actor_gen", "ref_inf", "critic_inf"), b, p, g, mbs, 0),
                    new("critic_train", "critic", CallType.TrainStep, Scored("actor_gen", "ref_inf", "critic_inf"), b, p, g, mbs, 0)];
            case "grpo":
            case "rloo":
                return [
                    new("actor_gen", "actor", CallType.Generate, [], b, p, g, 1, 12),
                    .. Rew("rew_inf", "actor_gen"),
                    new("ref_inf", "ref", CallType.Inference, ["actor_gen"], b, p, g, 1, 4),
                    new("actor_train", "actor", CallType.TrainStep, Scored("actor_gen", "ref_inf"), b, p, g, mbs, 0)];
            case "remax":
                // a sampled and a greedy generation per prompt, each scored.
                return [
                    new("actor_gen", "actor", CallType.Generate, [], b, p, g, 1, 12),
                    new("actor_greedy_gen", "actor", CallType.Generate, [], b, p, g, 1, 12),
                    .. Rew("rew_inf", "actor_gen"),
                    .. Rew("rew_greedy_inf", "actor_greedy_gen"),
                    new("ref_inf", "ref", CallType.Inference, ["actor_gen"], b, p, g, 1, 4),
                    new("actor_train", "actor", CallType.TrainStep,
                        rewardModel ? ["actor_gen", "actor_greedy_gen", "rew_inf", "rew_greedy_inf", "ref_inf"] : ["actor_gen", "actor_greedy_gen", "ref_inf"],
                        b, p, g, mbs, 0)];
            case "dpo":
                // online: two samples per prompt, ranked into chosen / rejected.
                return [
                    new("actor_gen", "actor", CallType.Generate, [], b, p, Math.Max(g, 1), 1, 12),
                    new("ref_inf", "ref", CallType.Inference, ["actor_gen"], b, p, Math.Max(g, 1), 1, 4),
                    new("actor_train", "actor", CallType.TrainStep, ["actor_gen", "ref_inf"], b, p, Math.Max(g, 1), 1, 0)];
            case "sft":
                return [new("actor_train", "actor", CallType.TrainStep, [], b, p, g, mbs, 0)];
            default: // rm: chosen + rejected
                return [new("reward_train", "reward", CallType.TrainStep, [], 2 * b, p, g, mbs, 0)];
        }
    }
}
