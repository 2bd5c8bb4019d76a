// Building an experiment in code: a fluent description of the task, models and stages that is
// written out as the YAML of docs/experiment-config.md and read back by the same strict reader,
// so code-built and file-based experiments have one set of defaults and one validation (errors
// name the YAML field the builder produced).
using System.Globalization;
using System.Text;

namespace ReaLNative;

/// <summary>
/// A fluent builder of a <see cref="TrainingExperiment"/>: <c>new ExperimentBuilder("ppo-demo", "ppo")
/// .Task("sort-digits", 3, 6).Models("tiny").Batch(64, 16, 8, 2).Stage("sft", 50, lr: 3e-3)
/// .Stage("rm", 50).Stage("ppo", 20).Build()</c>. Anything not set takes the reader's defaults.
/// </summary>
public sealed class ExperimentBuilder
{
    private readonly string _name, _algorithm;
    private long _seed = 1;
    private string _task = "sort-digits";
    private int _minLen = 3, _maxLen = 6;
    private string _preset = "tiny";
    private (int Size, int PromptLen, int GenLen, int Minibatches)? _batch;
    private (int Size, int Every)? _eval;
    private int? _checkpointEvery;
    private string? _precision;
    private readonly List<(string Algorithm, int Iterations, double? Lr)> _stages = [];

    /// <summary>An experiment named <paramref name="name"/> whose final algorithm is <paramref name="algorithm"/>
    /// (sft, rm, ppo, grpo, remax or dpo).</summary>
    /// <param name="name">Experiment name.</param>
    /// <param name="algorithm">The experiment's algorithm.</param>
    public ExperimentBuilder(string name, string algorithm)
    {
        ArgumentException.ThrowIfNullOrWhiteSpace(name);
        ArgumentException.ThrowIfNullOrWhiteSpace(algorithm);
        _name = name;
        _algorithm = algorithm;
    }

    /// <summary>Seed of every random draw.</summary>
    /// <param name="seed">The seed.</param>
    public ExperimentBuilder Seed(long seed) { _seed = seed; return this; }

    /// <summary>The synthetic task and its problem sizes.</summary>
    /// <param name="name">sort-digits or add.</param>
    /// <param name="minLen">Shortest problem.</param>
    /// <param name="maxLen">Longest problem.</param>
    public ExperimentBuilder Task(string name, int minLen, int maxLen) { _task = name; _minLen = minLen; _maxLen = maxLen; return this; }

    /// <summary>The model preset of every role (actor, critic, ref, reward).</summary>
    /// <param name="preset">A preset name such as tiny.</param>
    public ExperimentBuilder Models(string preset) { _preset = preset; return this; }

    /// <summary>Batch shape of every stage.</summary>
    /// <param name="size">Sequences per iteration.</param>
    /// <param name="promptLen">Longest prompt in tokens.</param>
    /// <param name="genLen">New tokens per sequence.</param>
    /// <param name="minibatches">Optimizer minibatches per iteration.</param>
    public ExperimentBuilder Batch(int size, int promptLen, int genLen, int minibatches) { _batch = (size, promptLen, genLen, minibatches); return this; }

    /// <summary>Held-out evaluation size and period.</summary>
    /// <param name="size">Held-out examples.</param>
    /// <param name="every">Iterations between evaluations.</param>
    public ExperimentBuilder Evaluation(int size, int every) { _eval = (size, every); return this; }

    /// <summary>Iterations between checkpoints.</summary>
    /// <param name="iterations">The interval.</param>
    public ExperimentBuilder CheckpointEvery(int iterations) { _checkpointEvery = iterations; return this; }

    /// <summary>Weight precision of every model: "fp32" (default) or "bf16" (bf16 weights, fp32
    /// master parameters, optimizer state and activations; docs/experiment-config.md `precision`).</summary>
    /// <param name="precision">fp32 | bf16; anything else is refused by <see cref="Build"/>, naming the field.</param>
    public ExperimentBuilder Precision(string precision) { _precision = precision; return this; }

    /// <summary>Appends a stage; stages run in order and later ones start from earlier ones'
    /// artifacts (sft initialises actor and ref, rm the reward model and critic).</summary>
    /// <param name="algorithm">The stage's algorithm.</param>
    /// <param name="iterations">Its iterations.</param>
    /// <param name="lr">Its learning rate (default: the reader's).</param>
    public ExperimentBuilder Stage(string algorithm, int iterations, double? lr = null) { _stages.Add((algorithm, iterations, lr)); return this; }

    /// <summary>The experiment's YAML, as <see cref="Build"/> reads it.</summary>
    public string ToYaml()
    {
        var c = CultureInfo.InvariantCulture;
        var y = new StringBuilder();
        y.AppendLine(c, $"name: {_name}");
        y.AppendLine(c, $"algorithm: {_algorithm}");
        y.AppendLine(c, $"seed: {_seed}");
        var last = _stages.LastOrDefault(s => s.Algorithm == _algorithm);
        if (last.Algorithm is not null) y.AppendLine(c, $"iterations: {last.Iterations}");
        y.AppendLine(c, $"task: {{ name: {_task}, min_len: {_minLen}, max_len: {_maxLen} }}");
        if (_eval is { } e) y.AppendLine(c, $"eval: {{ size: {e.Size}, every: {e.Every} }}");
        if (_checkpointEvery is { } k) y.AppendLine(c, $"checkpoint_every: {k}");
        if (_precision is { } pr) y.AppendLine(c, $"precision: '{pr.Replace("'", "''", StringComparison.Ordinal)}'");
        y.AppendLine("models:");
        y.AppendLine(c, $"  actor:  {{ preset: {_preset}, init: sft }}");
        y.AppendLine(c, $"  critic: {{ preset: {_preset}, init: rm }}");
        y.AppendLine(c, $"  ref:    {{ preset: {_preset}, init: sft }}");
        y.AppendLine(c, $"  reward: {{ preset: {_preset}, init: rm }}");
        if (_batch is { } b) y.AppendLine(c, $"batch: {{ size: {b.Size}, prompt_len: {b.PromptLen}, gen_len: {b.GenLen}, minibatches: {b.Minibatches} }}");
        if (_stages.Count > 0)
        {
            y.AppendLine("stages:");
            foreach (var (alg, it, lr) in _stages)
            {
                string models = alg switch
                {
                    "sft" => $", models: {{ actor: {{ preset: {_preset}, init: random }} }}",
                    "rm" => $", models: {{ reward: {{ preset: {_preset}, init: sft }} }}",
                    _ => "",
                };
                string optim = lr is { } r ? string.Create(c, $", optim: {{ lr: {r:R} }}") : "";
                y.AppendLine(c, $"  - {{ algorithm: {alg}, iterations: {it}{models}{optim} }}");
            }
        }
        return y.ToString();
    }

    /// <summary>Validates and builds the experiment.</summary>
    /// <exception cref="ExperimentConfigException">A setting is invalid; the message names the field.</exception>
    public TrainingExperiment Build() => TrainingExperiment.FromYamlText(ToYaml());
}
