// Issue 19: deepspeed_chat on the long-context settings is priced, not only explained. DeepSpeed's training batch per
// optimizer step is micro-batch x accumulation x world size (at least one sequence per device), so with fewer
// sequences per step than devices DeepSpeed-Chat merges minibatches: the baseline is priced with floor(sequences /
// devices) optimizer steps per epoch, says so (Baselines.Note), and stays "not applicable" only where the whole batch
// has fewer sequences than devices.
using Xunit;

namespace ReaLNative.Planner.Tests;

public class DeepSpeedChatTests
{
    private static readonly Experiment Long = Experiment.Load(TestData.Example("scale/scale-actor-7b-long-p1k-g7k.yaml"));
    private static readonly ClusterSpec H100 = ClusterSpec.Load(TestData.Example("clusters/h100-80gb.yaml"));

    [Fact]
    public void FewerSequencesPerStepThanDevicesIsPricedWithMergedMinibatches()
    {
        var p = new PlanningProblem(new Estimator(H100, Long));   // 8 GPUs, 16 sequences in 4 minibatches: 4 per step
        var train = p.Calls.Single(c => c.Name == "actor_train");
        Assert.Equal(4, train.OptimizerSteps);
        var merged = Baselines.DeepSpeedChatCalls(p)!;
        Assert.Equal(2, merged.Single(c => c.Name == "actor_train").OptimizerSteps);    // 16 / 8 devices
        Assert.Equal(2, merged.Single(c => c.Name == "critic_train").OptimizerSteps);
        Assert.All(merged.Where(c => c.Type != CallType.TrainStep), c => Assert.Equal(p.Calls.Single(o => o.Name == c.Name), c));
        var ds = Baselines.DeepSpeedChat(p);
        Assert.NotNull(ds);
        Assert.NotNull(ds.PricedOn);
        Assert.Null(Baselines.WhyNot(p, "deepspeed_chat", ds));
        string note = Baselines.Note(p, "deepspeed_chat", ds)!;
        Assert.Contains("actor_train 4 -> 2", note);
        Assert.Contains("critic_train 4 -> 2", note);
        // every call ZeRO-3 on all 8 devices but generation (tp inside the node), as the rule says; the choice indexes the
        // merged problem, whose evaluation is the price
        var q = ds.PricedOn!;
        for (int i = 0; i < q.Calls.Count; i++)
        {
            var o = q.Options[i][ds.Choice[i]].Option;
            Assert.Equal(8, o.Mesh.Size);
            Assert.Equal(q.Calls[i].Type != CallType.Generate, o.Zero3);
        }
        Assert.Equal(new Evaluator(q).Evaluate(ds.Choice).IterationSeconds, ds.Evaluation.IterationSeconds, 9);
        Assert.True(ds.Evaluation.IterationSeconds > 0);
    }

    [Fact]
    public void TheSearchNeverStartsFromOrReturnsABaselinePricedOnAChangedExperiment()
    {
        // its choice indexes the changed experiment's options, not the search's (the search crashed on it, and a plan
        // with merged minibatches is not this experiment's)
        // scale-both-34b-gen896 on 64 GPUs: 128 sequences in 4 minibatches, 32 per step: priced with 2 steps
        var e = Experiment.Load(TestData.Example("scale/scale-both-34b-gen896.yaml"));
        var r = PlanSearch.Run(H100.WithNodes(8), e, new SearchOptions { Seed = 1, StepsPerChain = 2000 });
        var ds = r.Baselines["deepspeed_chat"]!;
        Assert.NotNull(ds.PricedOn);
        Assert.NotSame(ds, r.Best);
        Assert.Null(r.Best.PricedOn);
        Assert.True(r.Best.Evaluation.IterationSeconds > 0);
    }

    [Fact]
    public void EnoughSequencesPerStepKeepTheExperimentsSchedule()
    {
        var e = Experiment.Load(TestData.Example("scale/scale-actor-7b-gen384.yaml"));
        var p = new PlanningProblem(new Estimator(H100, e));
        Assert.Null(Baselines.DeepSpeedChatCalls(p));
        var ds = Baselines.DeepSpeedChat(p)!;
        Assert.Null(ds.PricedOn);
        Assert.Null(Baselines.Note(p, "deepspeed_chat", ds));
        Assert.Null(Baselines.Note(p, "heuristic", Baselines.Heuristic(p)));
    }
}
