using ReaLNative.Engine.Config;
using ReaLNative.Engine.Tasks;
using Xunit;

namespace ReaLNative.Engine.Tests.Config;

/// <summary>The planner (which references no engine code) keeps its own copy of what it must accept.</summary>
public class PlannerAgreementTests
{
    [Fact]
    public void PlannerAcceptsExactlyTheEnginesRewardKinds() =>
        Assert.Equal(RewardConfig.Kinds.Order(), ReaLNative.Planner.Experiment.RewardKinds.Order());

    /// <summary>The planner prices the tokens the engine packs from a task's expected prompt and answer lengths
    /// (Planner/TaskLengths.cs): they are the means of the engine's own samples (tokens = characters + BOS / EOS),
    /// and the task names and default lengths are the engine's.</summary>
    [Theory]
    [InlineData("sort-digits", 3, 6)]
    [InlineData("sort-digits", 1, 12)]
    [InlineData("add", 1, 2)]
    [InlineData("add", 2, 4)]
    public void PlannerTaskLengthsAreTheMeansOfTheEnginesSamples(string name, int min, int max)
    {
        var task = SyntheticTask.Create(new TaskConfig(name, min, max));
        var rng = new Random(7);
        const int n = 40000;
        double prompt = 0, answer = 0;
        for (int i = 0; i < n; i++)
        {
            var ex = task.Sample(rng);
            prompt += ex.Prompt.Length + 1;
            answer += ex.Answer.Length + 1;
        }
        var planned = ReaLNative.Planner.TaskLengths.For(name, min, max);
        Assert.Equal(prompt / n, planned.MeanPromptTokens, 0.02 * planned.MeanPromptTokens);
        Assert.Equal(answer / n, planned.MeanAnswerTokens, 0.02 * planned.MeanAnswerTokens);
        Assert.Equal(task.MaxAnswerTokens, planned.MaxAnswerTokens);
        Assert.Equal(ExperimentConfig.Tasks.Order(), ReaLNative.Planner.TaskLengths.Defaults.Keys.Order());
    }
}
