// REALN_INPROCESS_TIMING's summary, which `realn profile` reads as the in-process overhead by kind (the planner's
// in_process_overheads): what an operation on more than one in-process device costs beyond its fastest device.
using ReaLNative.Engine.Parallelism;
using Xunit;

namespace ReaLNative.Engine.Tests.Parallelism;

public class InProcessTimingsTests
{
    [Fact]
    public void TheSummaryIsWallMinusTheFastestDeviceByKindOverMultiDeviceOperations()
    {
        // labels as DistributedModel dispatches them: "<replica> (<role>) <op> on <layout>"
        InProcessTimings.Add("ut_gen (actor) generate on pp1 dp2 tp1", 2, 0.012, 0.009, 0.008);
        InProcessTimings.Add("ut_gen (actor) generate on pp1 dp2 tp1", 2, 0.014, 0.009, 0.008);
        InProcessTimings.Add("ut_inf (ref) logprobs on pp1 dp2 tp1", 2, 0.006, 0.005, 0.005);
        InProcessTimings.Add("ut_train (actor) train (log-probs) on pp1 dp2 tp1", 2, 0.009, 0.008, 0.008);
        InProcessTimings.Add("ut_train (actor) optimizer step on pp1 dp2 tp1", 2, 0.0005, 0.0002, 0.0002);
        InProcessTimings.Add("ut_one (actor) generate on pp1 dp1 tp1", 1, 0.100, 0.001, 0.001);   // one device: not counted
        var summary = InProcessTimings.ReadSummary(InProcessTimings.Table());
        Assert.NotNull(summary);
        var (gen, fwd, bwd) = summary!.Value;
        // other tests add no rows (Spmd records only with REALN_INPROCESS_TIMING=1), so these are exactly the rows above
        Assert.Equal(5.0, gen!.Value, 3);          // (12 - 8 + 14 - 8) / 2
        Assert.Equal(1.0, fwd!.Value, 3);
        Assert.Equal(1.0 + 0.3, bwd!.Value, 3);    // the backward and its optimizer step
        // a train step whose devices compute the loss is one fused operation (PPO's policy step): that is the backward kind
        InProcessTimings.Add("ut_train (actor) policy step on pp1 dp2 tp1", 2, 0.010, 0.009, 0.0085);
        Assert.Equal(1.5, InProcessTimings.ReadSummary(InProcessTimings.Table())!.Value.BackwardMs!.Value, 3);
        Assert.Null(InProcessTimings.ReadSummary("no summary here"));
        Assert.Equal((null, 2.5, null), InProcessTimings.ReadSummary($"x\n{InProcessTimings.SummaryPrefix} generate - forward 2.5 backward -\n")!.Value);
    }
}
