// The public face of an experiment config: load it from YAML (a file or text built in code) and
// adjust it in code before a run. It wraps the engine's validated ExperimentConfig, so every
// error names the YAML field path, and keeps the YAML text for the planner's own reader.
using ReaLNative.Engine.Config;
using ReaLNative.Engine.Dataflow;

namespace ReaLNative;

/// <summary>
/// An RLHF experiment: its ordered stages (for example sft -> rm -> ppo), task, seed and
/// checkpoint cadence, read from the YAML format of <c>docs/experiment-config.md</c>.
/// Instances are immutable; the <c>With*</c> methods return adjusted copies.
/// </summary>
public sealed class TrainingExperiment
{
    internal ExperimentConfig Config { get; }
    internal string YamlText { get; }

    private TrainingExperiment(ExperimentConfig config, string yamlText)
    {
        Config = config;
        YamlText = yamlText;
    }

    /// <summary>Reads and validates an experiment YAML file; relative paths in it resolve against its folder.</summary>
    /// <param name="path">Path of the YAML file.</param>
    /// <exception cref="ArgumentException"><paramref name="path"/> is empty.</exception>
    /// <exception cref="FileNotFoundException">The file does not exist.</exception>
    /// <exception cref="ExperimentConfigException">The YAML is invalid; the message names the field.</exception>
    public static TrainingExperiment FromYaml(string path)
    {
        ArgumentException.ThrowIfNullOrWhiteSpace(path);
        string full = Path.GetFullPath(path);
        if (Directory.Exists(full)) throw new ExperimentConfigException("", $"experiment config '{path}' is a directory, not a file");
        if (!File.Exists(full)) throw new FileNotFoundException($"experiment config '{path}' does not exist", full);
        return FromYamlText(File.ReadAllText(full), Path.GetDirectoryName(full));
    }

    /// <summary>Parses and validates experiment YAML given as text (for example built in code).</summary>
    /// <param name="yaml">The YAML document.</param>
    /// <param name="baseDirectory">Folder that relative paths in the YAML resolve against; default: the current directory.</param>
    /// <exception cref="ExperimentConfigException">The YAML is invalid; the message names the field.</exception>
    public static TrainingExperiment FromYamlText(string yaml, string? baseDirectory = null)
    {
        ArgumentNullException.ThrowIfNull(yaml);
        string dir = Path.GetFullPath(baseDirectory ?? Directory.GetCurrentDirectory());
        try { return new TrainingExperiment(ExperimentConfig.Parse(yaml, dir), yaml); }
        catch (ConfigException e) { throw new ExperimentConfigException(e.FieldPath, e.Message, e); }
    }

    /// <summary>The experiment's name (YAML <c>name</c>).</summary>
    public string Name => Config.Name;
    /// <summary>The workload algorithm: the last stage's (YAML <c>algorithm</c>): sft, rm, ppo, grpo, remax or dpo.</summary>
    public string Algorithm => Config.Algorithm;
    /// <summary>Seed of every random draw of the run.</summary>
    public long Seed => Config.Seed;
    /// <summary>Synthetic task name (sort-digits or add).</summary>
    public string Task => Config.Task.Name;
    /// <summary>A checkpoint is written every this many iterations of a stage, and after its last one.</summary>
    public int CheckpointEvery => Config.CheckpointEvery;
    /// <summary>How many of the newest checkpoints (checkpoints/step-N) a run keeps (<c>checkpoint_keep</c>).</summary>
    public int CheckpointKeep => Config.CheckpointKeep;
    /// <summary>Folder that relative paths of the config resolve against.</summary>
    public string BaseDirectory => Config.BaseDirectory;
    /// <summary>The stages in run order.</summary>
    public IReadOnlyList<ExperimentStage> Stages =>
        Config.Stages.Select(s => new ExperimentStage(s.Index, s.Algorithm, s.Iterations, s.Models.Keys.ToArray())
        {
            TrainingData = s.Dataset?.Train,
            Reward = AlgorithmNames.Rewarded(s.Algorithm) ? s.Reward.Kind : null,
            Calls = DataflowGraph.For(s).Calls.Select(c => c.Name).ToArray(),
        }).ToArray();
    /// <summary>Iterations of all stages together.</summary>
    public int TotalIterations => Config.Stages.Sum(s => s.Iterations);

    /// <summary>`mode: async` with `max_staleness`, or null for `mode: sync`.</summary>
    public int? MaxStaleness => Config.MaxStaleness;

    /// <summary>`weight_update` of an async run: finish_batch (a generation in flight finishes on its
    /// weights) or interrupt (it takes the new weights at a decode step).</summary>
    public string WeightUpdate => Config.WeightUpdate;

    /// <summary>A copy run asynchronously with <paramref name="maxStaleness"/> (`mode: async`,
    /// `max_staleness: N`), or synchronously when null (`mode: sync`).</summary>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="maxStaleness"/> outside [0, 16].</exception>
    /// <exception cref="ExperimentConfigException">Async for an experiment whose algorithm is not an RL one (ppo, grpo, rloo, remax);
    /// 0 for an experiment with `weight_update: interrupt`.</exception>
    public TrainingExperiment WithMaxStaleness(int? maxStaleness)
    {
        if (maxStaleness is { } n && (n < 0 || n > 16)) throw new ArgumentOutOfRangeException(nameof(maxStaleness), n, "max_staleness must be in [0, 16]");
        if (maxStaleness is not null && !AlgorithmNames.Rewarded(Config.Algorithm))
            throw new ExperimentConfigException("mode", $"async runs the RL algorithms (ppo | grpo | rloo | remax), not '{Config.Algorithm}'");
        if (maxStaleness == 0 && Config.WeightUpdate == WeightUpdates.Interrupt)
            throw new ExperimentConfigException("weight_update", "interrupt needs max_staleness >= 1 (at 0 no newer policy exists while a batch is generated)");
        return new TrainingExperiment(Config with { MaxStaleness = maxStaleness }, YamlText);
    }

    /// <summary>A copy with another seed.</summary>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="seed"/> is negative.</exception>
    public TrainingExperiment WithSeed(long seed)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(seed);
        return new TrainingExperiment(Config with { Seed = seed }, YamlText);
    }

    /// <summary>A copy whose stage <paramref name="stage"/> (0-based) runs <paramref name="iterations"/> iterations,
    /// for example to shorten a run in a test or a demo.</summary>
    /// <exception cref="ArgumentOutOfRangeException">No such stage, or iterations below 1.</exception>
    public TrainingExperiment WithStageIterations(int stage, int iterations)
    {
        if (stage < 0 || stage >= Config.Stages.Count)
            throw new ArgumentOutOfRangeException(nameof(stage), stage, $"the experiment has stages 0..{Config.Stages.Count - 1}");
        if (iterations < 1 || iterations > 1_000_000)
            throw new ArgumentOutOfRangeException(nameof(iterations), iterations, "iterations must be in [1, 1000000]");
        var stages = Config.Stages.Select(s => s.Index == stage ? s with { Iterations = iterations } : s).ToArray();
        return new TrainingExperiment(Config with { Stages = stages }, YamlText);
    }

    /// <summary>A copy with only the first <paramref name="count"/> stages (its workload algorithm the
    /// last kept stage's). Its stages run exactly as in the whole experiment, so a run of the copy ends
    /// with the checkpoint (and stage artifacts) that the whole experiment resumes from at the next
    /// stage: for example to run the stages before an RL stage once and start several runs of that
    /// stage from the same point (<c>realn bench async</c>).</summary>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="count"/> is not in [1, stage count].</exception>
    public TrainingExperiment WithFirstStages(int count)
    {
        if (count < 1 || count > Config.Stages.Count)
            throw new ArgumentOutOfRangeException(nameof(count), count, $"the experiment has {Config.Stages.Count} stages");
        var stages = Config.Stages.Take(count).ToArray();
        return new TrainingExperiment(Config with { Stages = stages, Algorithm = stages[^1].Algorithm }, YamlText);
    }

    /// <summary>A copy that writes a checkpoint every <paramref name="iterations"/> iterations (and after each stage's last).</summary>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="iterations"/> is below 1.</exception>
    public TrainingExperiment WithCheckpointEvery(int iterations)
    {
        if (iterations < 1) throw new ArgumentOutOfRangeException(nameof(iterations), iterations, "checkpoint_every must be >= 1");
        return new TrainingExperiment(Config with { CheckpointEvery = iterations }, YamlText);
    }

    /// <summary>A copy that keeps the newest <paramref name="count"/> checkpoints, deleting older ones.</summary>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="count"/> is below 1.</exception>
    public TrainingExperiment WithCheckpointKeep(int count)
    {
        if (count < 1) throw new ArgumentOutOfRangeException(nameof(count), count, "checkpoint_keep must be >= 1");
        return new TrainingExperiment(Config with { CheckpointKeep = count }, YamlText);
    }

    /// <summary>A copy whose held-out evaluation uses <paramref name="size"/> examples every <paramref name="every"/> iterations.</summary>
    /// <exception cref="ArgumentOutOfRangeException">A value is below 1.</exception>
    public TrainingExperiment WithEvaluation(int size, int every)
    {
        if (size < 1) throw new ArgumentOutOfRangeException(nameof(size), size, "eval.size must be >= 1");
        if (every < 1) throw new ArgumentOutOfRangeException(nameof(every), every, "eval.every must be >= 1");
        return new TrainingExperiment(Config with { Eval = new EvalConfig(size, every) }, YamlText);
    }

    /// <summary>A copy whose RL stages score their samples with <paramref name="reward"/> (instead of
    /// the YAML's <c>reward</c>: no reward model is loaded), and whose held-out evaluation scores
    /// greedy answers with it too (every stage). The function is called on the run's thread, once
    /// per generated answer; an exception or a non-finite value ends the run
    /// (<see cref="TrainingFailedException"/>). Plans made from the YAML by <c>realn plan</c> keep
    /// the YAML's reward calls.</summary>
    /// <param name="reward">Maps an answer (prompt, completion, whether it ended with EOS, the
    /// example's reference answer and metadata) to its reward.</param>
    /// <exception cref="ArgumentNullException"><paramref name="reward"/> is null.</exception>
    public TrainingExperiment WithRewardFunction(Func<RewardInput, double> reward)
    {
        ArgumentNullException.ThrowIfNull(reward);
        var rc = new RewardConfig(RewardConfig.Function) { Delegate = reward };
        var stages = Config.Stages.Select(s => s with
        {
            Reward = rc,
            Models = AlgorithmNames.Rewarded(s.Algorithm)
                ? s.Models.Where(m => m.Key != "reward").ToDictionary(m => m.Key, m => m.Value, StringComparer.Ordinal)
                : s.Models,
        }).ToArray();
        return new TrainingExperiment(Config with { Stages = stages }, YamlText);
    }

    /// <inheritdoc/>
    public override string ToString() =>
        $"{Name}: {string.Join(" -> ", Config.Stages.Select(s => $"{s.Algorithm} ({s.Iterations})"))}, task {Task}, seed {Seed}";
}

/// <summary>One stage of an experiment.</summary>
/// <param name="Index">0-based position in the run.</param>
/// <param name="Algorithm">sft, rm, ppo, grpo, remax or dpo.</param>
/// <param name="Iterations">Iterations the stage runs.</param>
/// <param name="Roles">Model roles the stage uses (actor, critic, ref, reward).</param>
public sealed record ExperimentStage(int Index, string Algorithm, int Iterations, IReadOnlyList<string> Roles)
{
    /// <summary>The stage's training examples file (YAML <c>dataset.train</c>, absolute), or null when it draws from the synthetic task.</summary>
    public string? TrainingData { get; init; }
    /// <summary>How an RL stage rewards its samples (YAML <c>reward.kind</c>: model, task, a rule, function, program);
    /// null for stages that are not rewarded (sft, rm, dpo).</summary>
    public string? Reward { get; init; }
    /// <summary>The stage's model function calls (actor_gen, rew_inf, actor_train ...), the names a plan's calls match.</summary>
    public IReadOnlyList<string> Calls { get; init; } = [];
}

/// <summary>An experiment config is invalid; <see cref="FieldPath"/> names the offending field.</summary>
public sealed class ExperimentConfigException : InputException
{
    /// <summary>Creates the exception.</summary>
    /// <param name="fieldPath">YAML path of the bad field, such as <c>stages[1].optim.lr</c> (empty: the document).</param>
    /// <param name="message">What is wrong, including the field path.</param>
    /// <param name="inner">The underlying error, if any.</param>
    public ExperimentConfigException(string fieldPath, string message, Exception? inner = null) : base(message, inner: inner) => FieldPath = fieldPath;

    /// <summary>YAML path of the bad field (empty when the document as a whole is wrong).</summary>
    public string FieldPath { get; }
}
