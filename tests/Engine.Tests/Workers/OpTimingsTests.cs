// REALN_WORKER_TIMING's table read back by operation kind (what `realn profile` records as the worker round trip of a
// generation, a forward and a backward with the optimizer step; the planner prices each call with its own).
using System.Text.Json.Nodes;
using ReaLNative.Engine.Workers;
using Xunit;

namespace ReaLNative.Engine.Tests.Workers;

public class OpTimingsTests
{
    private static JsonNode Reply(double seconds, double input = 0, double output = 0) =>
        new JsonObject { ["seconds"] = seconds, ["input_seconds"] = input, ["output_seconds"] = output };

    [Fact]
    public void TheTableIsReadBackByOperationKind()
    {
        var t = new OpTimings();
        // generation: 30 ms wall, 18 ms in the worker of which 2 ms waiting for input -> 14 ms beyond compute
        t.Add("generate", 0.030, [Reply(0.018, input: 0.002), Reply(0.010)]);
        // forwards: logprobs 10 - 7 = 3 ms (x3), values 9 - 4 = 5 ms (x1) -> 3.5 ms
        for (int i = 0; i < 3; i++) t.Add("logprobs", 0.010, [Reply(0.007)]);
        t.Add("values", 0.009, [Reply(0.004)]);
        // backwards with the step: 12 - 9 = 3 and 12 - 10 = 2, and train steps whose workers compute the loss:
        // 12 - 8 = 4 (policy and value) -> 3.25; a step alone and sft are neither kind
        t.Add("backward_logprobs and optimizer step", 0.012, [Reply(0.009)]);
        t.Add("backward_values and optimizer step", 0.012, [Reply(0.010)]);
        t.Add("policy_step", 0.012, [Reply(0.008)]);
        t.Add("value_step", 0.012, [Reply(0.008)]);
        t.Add("step", 0.002, [Reply(0.001)]);
        t.Add("sft", 0.100, [Reply(0.090)]);
        var (gen, fwd, bwd) = OpTimings.RoundTripByKind("some log line 1 2 3 4 5 6\n" + t + "ppo 3/4 loss 0.1\n");
        Assert.Equal(14, gen!.Value, 2);
        Assert.Equal(3.5, fwd!.Value, 2);
        Assert.Equal(3.25, bwd!.Value, 2);
        // a run without generation: that kind is unknown
        var noGen = new OpTimings();
        noGen.Add("values", 0.009, [Reply(0.004)]);
        Assert.Null(OpTimings.RoundTripByKind(noGen.ToString()).GenerateMs);
    }
}
