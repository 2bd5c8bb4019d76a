// Sequence rewards that do not come from a reward model (`reward.kind` other than model): the pure
// rules of one answer's text (the task's exact checker, exact and numeric answer match, a regex,
// EOS, weighted combinations: Tasks/RuleRewards.cs), a .NET delegate and an external program
// (ExternalReward.cs). They
// score a whole batch at once, so an external program answers a batch under one deadline. DAPO's
// overlong penalty shapes any kind's reward by the answer's length.
using ReaLNative.Engine.Config;
using ReaLNative.Engine.Tasks;

namespace ReaLNative.Engine.Algorithms;

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
        RewardConfig.Combined when !RuleRewards.Pure(cfg) => new CombinedReward(cfg.Components.Select(c => (Create(c.Reward, baseDirectory)!, c.Weight)).ToArray()),
        RewardConfig.External => new ExternalReward(cfg.Command, cfg.TimeoutSeconds, baseDirectory),
        RewardConfig.Function => new FunctionReward(cfg.Delegate ?? throw new InvalidOperationException("reward kind function without a function")),
        _ when RuleRewards.Pure(cfg) => RuleRewards.Create(cfg),
        _ => throw new ConfigException("reward.kind", $"'{cfg.Kind}' is not allowed; allowed values: {string.Join(" | ", RewardConfig.Kinds)}"),
    };

    /// <summary>The reward inputs of examples and their completions.</summary>
    public static RewardInput[] Inputs(IReadOnlyList<TaskExample> examples, IReadOnlyList<string> completions, IReadOnlyList<bool> endedWithEos) =>
        RuleRewards.Inputs(examples, completions, endedWithEos);

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
