// The `reward:` section (docs/experiment-config.md): where an RL stage's sequence rewards come
// from (the reward model, or a rule: the task's checker, exact / numeric answer match, a regex,
// EOS, a weighted combination, an external program, a .NET delegate), and the held-out score's
// checker. The rules themselves live in Algorithms/Rewards.cs.
using YamlDotNet.RepresentationModel;

namespace ReaLNative.Engine.Config;

/// <summary>Where an RL stage's sequence rewards come from. "model": the reward model's last-token
/// score (`models.reward`); every other kind is a rule computed from the generated text (no model,
/// so it cannot be exploited): see <see cref="Kinds"/> and Algorithms/Rewards.cs.</summary>
internal sealed record RewardConfig(string Kind)
{
    public const string Model = "model", Task = "task", ExactMatch = "exact_match", NumericMatch = "numeric_match", Regex = "regex",
                        Combined = "combined", RequireEos = "require_eos", External = "external", Function = "function";
    /// <summary>Kinds a YAML file may name (<see cref="Function"/> is set through the public API only).</summary>
    public static readonly string[] Kinds = [Model, Task, ExactMatch, NumericMatch, Regex, Combined, RequireEos, External];

    public bool UsesModel => Kind == Model;
    /// <summary>Computed from the text (every kind but model).</summary>
    public bool RuleBased => Kind != Model;
    /// <summary>Compares with the example's reference answer (the dataset's `answer` field).</summary>
    public bool NeedsAnswer => Kind switch
    {
        Task or ExactMatch or NumericMatch => true,
        Combined => Components.Any(c => c.Reward.NeedsAnswer),
        _ => false,
    };

    /// <summary>numeric_match: largest |extracted - reference| still counted right.</summary>
    public double Tolerance { get; init; } = 1e-6;
    /// <summary>regex: the .NET regular expression a completion must contain a match of.</summary>
    public string? Pattern { get; init; }
    /// <summary>combined: the parts and their weights (the reward is the weighted sum).</summary>
    public IReadOnlyList<WeightedReward> Components { get; init; } = [];
    /// <summary>external: program and arguments (the program resolved against the YAML's folder when it holds a '/').</summary>
    public IReadOnlyList<string> Command { get; init; } = [];
    /// <summary>external: seconds one batch may take (all its replies) before the run ends naming the program.</summary>
    public double TimeoutSeconds { get; init; } = 60;
    /// <summary>function: the delegate given to <see cref="ReaLNative.TrainingExperiment.WithRewardFunction"/>.</summary>
    public Func<RewardInput, double>? Delegate { get; init; }

    public static RewardConfig Parse(MapReader rr, bool component = false)
    {
        var kind = rr.Enum("kind", component ? null : Model, component ? Kinds.Where(k => k != Model).ToArray() : Kinds);
        var cfg = new RewardConfig(kind);
        switch (kind)
        {
            case NumericMatch:
                cfg = cfg with { Tolerance = rr.Real("tolerance", 1e-6, 0, double.MaxValue) };
                break;
            case Regex:
                string pattern = rr.Str("pattern", null);
                try { _ = new System.Text.RegularExpressions.Regex(pattern); }
                catch (ArgumentException e) { throw new ConfigException(rr.Sub("pattern"), $"not a valid .NET regular expression: {e.Message}"); }
                cfg = cfg with { Pattern = pattern };
                break;
            case Combined:
                if (rr.Get("components") is not YamlSequenceNode seq || seq.Children.Count == 0)
                    throw new ConfigException(rr.Sub("components"), "required: a non-empty list such as [{ kind: numeric_match, weight: 1.0 }, { kind: require_eos, weight: 0.1 }]");
                var parts = new List<WeightedReward>();
                for (int i = 0; i < seq.Children.Count; i++)
                {
                    var cr = new MapReader(seq.Children[i], $"{rr.Sub("components")}[{i}]");
                    double w = cr.Real("weight", 1.0, -1e6, 1e6);
                    parts.Add(new WeightedReward(Parse(cr, component: true), w));
                }
                cfg = cfg with { Components = parts };
                break;
            case External:
                var node = rr.Get("command");
                string[] argv = node switch
                {
                    YamlScalarNode { Value: { Length: > 0 } s } => [s],
                    YamlSequenceNode l when l.Children.Count > 0 && l.Children.All(c => c is YamlScalarNode { Value: not null }) =>
                        l.Children.Select(c => ((YamlScalarNode)c).Value!).ToArray(),
                    null => throw new ConfigException(rr.Sub("command"), "required: the program and its arguments, e.g. [python3, score.py]"),
                    _ => throw new ConfigException(rr.Sub("command"), "expected a program path or a list [program, arg, ...] of strings"),
                };
                if (argv[0].Length == 0) throw new ConfigException(rr.Sub("command"), "the program is empty");
                cfg = cfg with { Command = argv, TimeoutSeconds = rr.Real("timeout_seconds", 60, 0, 86_400, minExclusive: true) };
                break;
        }
        rr.RejectUnknown();
        return cfg;
    }
}

/// <summary>One part of a combined reward.</summary>
internal sealed record WeightedReward(RewardConfig Reward, double Weight);
