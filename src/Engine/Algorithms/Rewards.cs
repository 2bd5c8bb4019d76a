// Sequence rewards that do not come from a reward model (`reward.kind` other than model): the
// task's exact checker, exact and numeric answer match (GSM8K `#### 42`, `\boxed{42}`), a regex,
// EOS, weighted combinations, a .NET delegate and an external program (ExternalReward.cs). They
// score a whole batch at once, so an external program answers a batch under one deadline. DAPO's
// overlong penalty shapes any kind's reward by the answer's length.
using System.Globalization;
using System.Text.RegularExpressions;
using ReaLNative.Engine.Config;
using ReaLNative.Engine.Tasks;

namespace ReaLNative.Engine.Algorithms;

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

/// <summary>A .NET delegate (TrainingExperiment.WithRewardFunction); an exception or a non-finite
/// value from it ends the run naming the answer.</summary>
internal sealed class FunctionReward(Func<RewardInput, double> function) : PerAnswerReward
{
    public override string Kind => RewardConfig.Function;
    public override float ScoreOne(RewardInput x)
    {
        double v;
        try { v = function(x); }
        catch (Exception e) { throw new TrainingFailedException($"the reward function (TrainingExperiment.WithRewardFunction) threw {e.GetType().Name} for prompt '{x.Prompt}': {e.Message}"); }
        if (!double.IsFinite(v))
            throw new TrainingFailedException($"the reward function (TrainingExperiment.WithRewardFunction) returned {v} for prompt '{x.Prompt}'; rewards must be finite");
        return (float)v;
    }
}

internal static class SequenceRewards
{
    /// <summary>The rule-based reward of a config, or null for `kind: model` (scores come from the
    /// reward model's call). External programs start at their first batch, in <paramref name="baseDirectory"/>.</summary>
    public static ISequenceReward? Create(RewardConfig cfg, string baseDirectory) => cfg.Kind switch
    {
        RewardConfig.Model => null,
        RewardConfig.Task => new TaskCheckerReward(),
        RewardConfig.ExactMatch => new ExactMatchReward(),
        RewardConfig.NumericMatch => new NumericMatchReward(cfg.Tolerance),
        RewardConfig.Regex => new RegexReward(cfg.Pattern!),
        RewardConfig.RequireEos => new RequireEosReward(),
        RewardConfig.Combined => new CombinedReward(cfg.Components.Select(c => (Create(c.Reward, baseDirectory)!, c.Weight)).ToArray()),
        RewardConfig.External => new ExternalReward(cfg.Command, cfg.TimeoutSeconds, baseDirectory),
        RewardConfig.Function => new FunctionReward(cfg.Delegate ?? throw new InvalidOperationException("reward kind function without a function")),
        _ => throw new ConfigException("reward.kind", $"'{cfg.Kind}' is not allowed; allowed values: {string.Join(" | ", RewardConfig.Kinds)}"),
    };

    /// <summary>The reward inputs of examples and their completions.</summary>
    public static RewardInput[] Inputs(IReadOnlyList<TaskExample> examples, IReadOnlyList<string> completions, IReadOnlyList<bool> endedWithEos) =>
        Enumerable.Range(0, examples.Count)
            .Select(i => new RewardInput(examples[i].Prompt, completions[i], endedWithEos[i], examples[i].Answer, examples[i].Metadata)).ToArray();

    /// <summary>
    /// DAPO's soft overlong punishment (Yu et al. 2025) for an answer of <paramref name="length"/> new
    /// tokens with at most <paramref name="maxLength"/>: 0 up to maxLength - buffer, then falling
    /// linearly, ((maxLength - buffer) - length) / buffer * penalty, to -penalty at maxLength; 0 when buffer is 0.
    /// </summary>
    public static float OverlongPenalty(int length, int maxLength, int buffer, double penalty)
    {
        if (buffer <= 0) return 0;
        int free = maxLength - buffer;
        if (length <= free) return 0;
        if (length > maxLength) return (float)-penalty;
        return (float)((double)(free - length) / buffer * penalty);
    }
}
