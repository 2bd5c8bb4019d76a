// Sequence rewards that do not come from a reward model (`reward.kind` other than model): the
// task's exact checker today; rule-based kinds (math answer match, format regex, code tests)
// implement ISequenceReward too and get a `reward.kind` value. DAPO's overlong penalty shapes any
// kind's reward by the answer's length.
using ReaLNative.Engine.Config;
using ReaLNative.Engine.Tasks;

namespace ReaLNative.Engine.Algorithms;

/// <summary>A rule-based reward of one generated answer.</summary>
internal interface ISequenceReward
{
    string Kind { get; }
    float Score(TaskExample example, string completion, bool endedWithEos);
}

/// <summary>`reward.kind: task`: 1 when the completion is exactly the task's answer and ended with EOS, else 0.</summary>
internal sealed class TaskCheckerReward(SyntheticTask task) : ISequenceReward
{
    public string Kind => RewardConfig.Task;
    public float Score(TaskExample example, string completion, bool endedWithEos) =>
        endedWithEos && task.Score(example.Prompt, completion) == 1 ? 1f : 0f;
}

internal static class SequenceRewards
{
    /// <summary>The rule-based reward of a config, or null for `kind: model` (scores come from the reward model's call).</summary>
    public static ISequenceReward? Create(RewardConfig cfg, SyntheticTask task) => cfg.Kind switch
    {
        RewardConfig.Model => null,
        RewardConfig.Task => new TaskCheckerReward(task),
        _ => throw new ConfigException("reward.kind", $"'{cfg.Kind}' is not allowed; allowed values: {string.Join(" | ", RewardConfig.Kinds)}"),
    };

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
