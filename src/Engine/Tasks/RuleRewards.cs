// The rule-based rewards that are pure functions of one answer's text (prompt, completion,
// ended_with_eos, reference answer, metadata): the task's exact checker, exact and numeric answer
// match (GSM8K `#### 42`, `\boxed{42}`), a regex, EOS and weighted combinations of those. They sit
// below the algorithms so that the model workers that hold generated sequences score them where the
// tokens are (SequenceScoring.cs); the kinds that call out of the run (a .NET delegate, an external
// program) stay in Algorithms/Rewards.cs, on the master.
using System.Globalization;
using System.Text.Json.Nodes;
using System.Text.RegularExpressions;
using ReaLNative.Engine.Config;

namespace ReaLNative.Engine.Tasks;
/// <summary>A rule-based reward of generated answers.</summary>
internal interface ISequenceReward : IDisposable
{
    string Kind { get; }
    /// <summary>One reward per answer.</summary>
    float[] Score(IReadOnlyList<RewardInput> batch);
    /// <summary>Why an example cannot be scored by this reward (a reference answer without a number
    /// for numeric_match), or null: a dataset's bad-record check.</summary>
    string? CheckExample(TaskExample example) => null;
}

/// <summary>Rewards that score each answer on its own.</summary>
internal abstract class PerAnswerReward : ISequenceReward
{
    public abstract string Kind { get; }
    public abstract float ScoreOne(RewardInput x);
    public float[] Score(IReadOnlyList<RewardInput> batch) => batch.Select(ScoreOne).ToArray();
    public virtual string? CheckExample(TaskExample example) => null;
    public void Dispose() { }
}

/// <summary>`kind: task`: 1 when the completion is exactly the reference answer and ended with EOS, else 0.</summary>
internal sealed class TaskCheckerReward : PerAnswerReward
{
    public override string Kind => RewardConfig.Task;
    public override float ScoreOne(RewardInput x) => x.EndedWithEos && x.Completion == x.Answer ? 1f : 0f;
}

/// <summary>`kind: exact_match`: 1 when the completion equals the reference answer, surrounding whitespace ignored.</summary>
internal sealed class ExactMatchReward : PerAnswerReward
{
    public override string Kind => RewardConfig.ExactMatch;
    public override float ScoreOne(RewardInput x) => x.Answer is not null && x.Completion.Trim() == x.Answer.Trim() ? 1f : 0f;
}

/// <summary>`kind: require_eos`: 1 when the answer ended with EOS (not cut at gen_len).</summary>
internal sealed class RequireEosReward : PerAnswerReward
{
    public override string Kind => RewardConfig.RequireEos;
    public override float ScoreOne(RewardInput x) => x.EndedWithEos ? 1f : 0f;
}

/// <summary>`kind: regex`: 1 when the completion contains a match of the pattern (a match may take
/// at most a second: a pathological pattern scores 0 instead of stalling the run).</summary>
internal sealed class RegexReward(string pattern) : PerAnswerReward
{
    private readonly Regex _re = new(pattern, RegexOptions.CultureInvariant, TimeSpan.FromSeconds(1));
    public override string Kind => RewardConfig.Regex;
    public override float ScoreOne(RewardInput x)
    {
        try { return _re.IsMatch(x.Completion) ? 1f : 0f; }
        catch (RegexMatchTimeoutException) { return 0f; }
    }
}

/// <summary>`kind: numeric_match`: 1 when the number the completion gives as its answer is within
/// `tolerance` of the reference. The answer of a text is the number after its last `####` (GSM8K),
/// else the content of its last `\boxed{...}`, else (for the reference only) the whole text; numbers
/// may carry a sign, thousands commas, a decimal part, a leading `$`, or be a fraction a/b.</summary>
internal sealed class NumericMatchReward(double tolerance) : PerAnswerReward
{
    public override string Kind => RewardConfig.NumericMatch;

    public override float ScoreOne(RewardInput x)
    {
        if (x.Answer is null || Reference(x.Answer) is not { } want) return 0f;
        return Extract(x.Completion) is { } got && Math.Abs(got - want) <= tolerance ? 1f : 0f;
    }

    public override string? CheckExample(TaskExample example) =>
        Reference(example.Answer) is null ? $"answer '{Short(example.Answer)}' holds no number (reward numeric_match needs one: `42`, `#### 42` or `\\boxed{{42}}`)" : null;

    private static string Short(string s) => s.Length > 60 ? s[..60] + "..." : s;

    private static readonly Regex Hashes = new(@"####\s*(?<n>[-+]?\$?[0-9][0-9,]*(?:\.[0-9]+)?(?:\s*/\s*[0-9]+)?)", RegexOptions.CultureInvariant | RegexOptions.RightToLeft);
    private static readonly Regex Number = new(@"^\s*[-+]?\$?\s*[0-9][0-9,]*(?:\.[0-9]+)?(?:\s*/\s*[0-9]+(?:\.[0-9]+)?)?\s*\.?\s*$", RegexOptions.CultureInvariant);

    /// <summary>The answer a generated text gives: after its last `####`, else in its last `\boxed{}`; null if none.</summary>
    public static double? Extract(string text)
    {
        var m = Hashes.Match(text);
        if (m.Success) return Parse(m.Groups["n"].Value);
        return Boxed(text) is { } b ? Parse(b) : null;
    }

    /// <summary>The reference answer: as <see cref="Extract"/>, or the whole text when it is a number.</summary>
    public static double? Reference(string text) => text.Contains("####") || text.Contains("\\boxed{") ? Extract(text) : Parse(text);

    /// <summary>Content of the last `\boxed{...}` (braces balanced), or null.</summary>
    private static string? Boxed(string text)
    {
        int at = text.LastIndexOf("\\boxed{", StringComparison.Ordinal);
        if (at < 0) return null;
        int start = at + "\\boxed{".Length, depth = 1;
        for (int i = start; i < text.Length; i++)
        {
            if (text[i] == '{') depth++;
            else if (text[i] == '}' && --depth == 0) return text[start..i];
        }
        return null;
    }

    public static double? Parse(string s)
    {
        if (!Number.IsMatch(s)) return null;
        s = s.Trim().TrimEnd('.').Replace("$", "").Replace(",", "").Replace(" ", "");
        int slash = s.IndexOf('/');
        if (slash < 0) return double.TryParse(s, NumberStyles.Float, CultureInfo.InvariantCulture, out double v) ? v : null;
        if (!double.TryParse(s[..slash], NumberStyles.Float, CultureInfo.InvariantCulture, out double a) ||
            !double.TryParse(s[(slash + 1)..], NumberStyles.Float, CultureInfo.InvariantCulture, out double b) || b == 0) return null;
        return a / b;
    }
}

/// <summary>`kind: combined`: the weighted sum of its components' rewards.</summary>
internal sealed class CombinedReward(IReadOnlyList<(ISequenceReward Reward, double Weight)> parts) : ISequenceReward
{
    public string Kind => RewardConfig.Combined;

    public float[] Score(IReadOnlyList<RewardInput> batch)
    {
        var sum = new double[batch.Count];
        foreach (var (r, w) in parts)
        {
            var s = r.Score(batch);
            for (int i = 0; i < sum.Length; i++) sum[i] += w * s[i];
        }
        return sum.Select(x => (float)x).ToArray();
    }

    public string? CheckExample(TaskExample example) => parts.Select(p => p.Reward.CheckExample(example)).FirstOrDefault(e => e is not null);

    public void Dispose()
    {
        foreach (var (r, _) in parts) r.Dispose();
    }
}

/// <summary>The pure rule kinds: creating them from a config, and the compact JSON form in which the
/// master describes one to the model workers (sent once, SequenceScoring.cs).</summary>
internal static class RuleRewards
{
    /// <summary>A kind that is a pure function of one answer's text (task, exact_match, numeric_match,
    /// regex, require_eos, and combined of only those): computable wherever the tokens are. These
    /// read the completion, ended_with_eos and the reference answer only (never the prompt or the
    /// metadata): the scoring workers get nothing else of an example (SequenceScorer.Example).</summary>
    public static bool Pure(RewardConfig cfg) => cfg.Kind switch
    {
        RewardConfig.Task or RewardConfig.ExactMatch or RewardConfig.NumericMatch or RewardConfig.Regex or RewardConfig.RequireEos => true,
        RewardConfig.Combined => cfg.Components.Count > 0 && cfg.Components.All(c => Pure(c.Reward)),
        _ => false,
    };

    /// <summary>The reward of a pure config (<see cref="Pure"/>).</summary>
    public static ISequenceReward Create(RewardConfig cfg) => cfg.Kind switch
    {
        RewardConfig.Task => new TaskCheckerReward(),
        RewardConfig.ExactMatch => new ExactMatchReward(),
        RewardConfig.NumericMatch => new NumericMatchReward(cfg.Tolerance),
        RewardConfig.Regex => new RegexReward(cfg.Pattern!),
        RewardConfig.RequireEos => new RequireEosReward(),
        RewardConfig.Combined when Pure(cfg) => new CombinedReward(cfg.Components.Select(c => (Create(c.Reward), c.Weight)).ToArray()),
        _ => throw new ArgumentException($"reward kind '{cfg.Kind}' is not a pure rule of the answer's text"),
    };

    /// <summary>The reward inputs of examples and their completions.</summary>
    public static RewardInput[] Inputs(IReadOnlyList<TaskExample> examples, IReadOnlyList<string> completions, IReadOnlyList<bool> endedWithEos) =>
        Enumerable.Range(0, examples.Count)
            .Select(i => new RewardInput(examples[i].Prompt, completions[i], endedWithEos[i], examples[i].Answer, examples[i].Metadata)).ToArray();

    /// <summary>A pure config as JSON (kind, tolerance, pattern, weighted components).</summary>
    public static JsonObject Describe(RewardConfig cfg)
    {
        if (!Pure(cfg)) throw new ArgumentException($"reward kind '{cfg.Kind}' is not a pure rule of the answer's text");
        var j = new JsonObject { ["kind"] = cfg.Kind };
        if (cfg.Kind == RewardConfig.NumericMatch) j["tolerance"] = BitConverter.DoubleToInt64Bits(cfg.Tolerance);
        if (cfg.Kind == RewardConfig.Regex) j["pattern"] = cfg.Pattern;
        if (cfg.Kind == RewardConfig.Combined)
            j["components"] = new JsonArray([.. cfg.Components.Select(c => (JsonNode)new JsonObject { ["weight"] = BitConverter.DoubleToInt64Bits(c.Weight), ["reward"] = Describe(c.Reward) })]);
        return j;
    }

    /// <summary>The config <see cref="Describe"/> wrote; malformed JSON is refused naming the field.</summary>
    public static RewardConfig Parse(JsonNode? j, string where)
    {
        string kind = (string?)j?["kind"] ?? throw new InvalidDataException($"{where}: 'kind' missing");
        var cfg = new RewardConfig(kind);
        double Bits(JsonNode? n, string field) => BitConverter.Int64BitsToDouble(n?[field]?.GetValue<long>() ?? throw new InvalidDataException($"{where}: '{field}' missing"));
        cfg = kind switch
        {
            RewardConfig.NumericMatch => cfg with { Tolerance = Bits(j, "tolerance") },
            RewardConfig.Regex => cfg with { Pattern = (string?)j!["pattern"] ?? throw new InvalidDataException($"{where}: 'pattern' missing") },
            RewardConfig.Combined => cfg with
            {
                Components = (j!["components"] as JsonArray ?? throw new InvalidDataException($"{where}: 'components' missing"))
                    .Select((c, i) => new WeightedReward(Parse(c?["reward"], $"{where}.components[{i}]"), Bits(c, "weight"))).ToArray(),
            },
            _ => cfg,
        };
        if (!Pure(cfg)) throw new InvalidDataException($"{where}: reward kind '{kind}' is not a pure rule of the answer's text");
        return cfg;
    }
}
