using ReaLNative.Engine.Config;
using Xunit;

namespace ReaLNative.Engine.Tests.Config;

/// <summary>The planner (which references no engine code) keeps its own copy of what it must accept.</summary>
public class PlannerAgreementTests
{
    [Fact]
    public void PlannerAcceptsExactlyTheEnginesRewardKinds() =>
        Assert.Equal(RewardConfig.Kinds.Order(), ReaLNative.Planner.Experiment.RewardKinds.Order());
}
