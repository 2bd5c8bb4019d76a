// The dataflow graph per algorithm: edges follow data keys, a model's first call waits for its
// previous train call, and the sequential executor runs calls in a valid order.
using ReaLNative.Engine.Config;
using ReaLNative.Engine.Dataflow;
using Xunit;

namespace ReaLNative.Engine.Tests.Algorithms;

public class DataflowTests
{
    private static readonly BatchConfig Batch = new(8, 16, 8, 2, 1);

    [Fact]
    public void PpoGraphEdgesAndIterationDependencies()
    {
        var g = DataflowGraph.For("ppo", Batch);
        Assert.Equal(6, g.Calls.Count);
        Assert.Equal(["actor_gen"], g.Parents("rew_inf"));
        Assert.Equal(["actor_gen"], g.Parents("ref_inf"));
        Assert.Equal(["actor_gen", "critic_inf", "ref_inf", "rew_inf"], g.Parents("actor_train").Order());
        Assert.Contains(new DataEdge("rew_inf", "critic_train", "scores"), g.Edges);
        Assert.Equal("actor_train", g.PreviousIterationDependency("actor_gen"));
        Assert.Equal("critic_train", g.PreviousIterationDependency("critic_inf"));
        Assert.Null(g.PreviousIterationDependency("actor_train"));
        Assert.Null(g.PreviousIterationDependency("ref_inf"));   // ref is never trained
        Assert.Equal(["actor", "critic"], g.TrainedModels.Order());
        var order = g.TopologicalOrder.Select(c => c.Name).ToList();
        foreach (var e in g.Edges) Assert.True(order.IndexOf(e.From) < order.IndexOf(e.To), $"{e.From} before {e.To}");
    }

    [Theory]
    [InlineData("sft", 1)] [InlineData("rm", 2)] [InlineData("grpo", 4)] [InlineData("rloo", 4)] [InlineData("remax", 6)] [InlineData("dpo", 3)]
    public void EveryAlgorithmHasAValidGraph(string algorithm, int calls)
    {
        var g = DataflowGraph.For(algorithm, Batch);
        Assert.Equal(calls, g.Calls.Count);
        Assert.All(g.Calls, c => Assert.Equal(8, c.BatchSize));
        var roles = AlgorithmNames.Roles(algorithm);
        Assert.All(g.Calls, c => Assert.Contains(c.Model, roles));
    }

    [Theory]
    [InlineData("ppo", 5)] [InlineData("grpo", 3)] [InlineData("rloo", 3)] [InlineData("remax", 4)]
    public void RuleBasedRewardHasNoRewardCall(string algorithm, int calls)
    {
        // reward.kind: task: the generation calls score their own samples on the master
        var g = DataflowGraph.For(algorithm, Batch, rewardModel: false);
        Assert.Equal(calls, g.Calls.Count);
        var roles = AlgorithmNames.Roles(algorithm, rewardModel: false);
        Assert.DoesNotContain("reward", roles);
        Assert.All(g.Calls, c => Assert.Contains(c.Model, roles));
        Assert.Contains("scores", g["actor_gen"].Outputs);
        if (algorithm == "remax") Assert.Contains("greedy_scores", g["actor_greedy_gen"].Outputs);
    }

    [Theory]
    [InlineData("ppo", "model")] [InlineData("ppo", "task")] [InlineData("grpo", "model")] [InlineData("grpo", "task")]
    [InlineData("rloo", "model")] [InlineData("rloo", "task")] [InlineData("remax", "model")] [InlineData("remax", "task")]
    [InlineData("dpo", "model")]
    public void PlannerReadsTheEngineGraph(string algorithm, string rewardKind)
    {
        // `realn plan` must list exactly the calls `realn run --plan` executes, with the same models
        bool rm = rewardKind == "model";
        string models = "actor: { preset: tiny }\n  ref: { preset: tiny }" + (algorithm == "ppo" ? "\n  critic: { preset: tiny }" : "") +
                        (rm && algorithm != "dpo" ? "\n  reward: { preset: tiny }" : "");
        var exp = ReaLNative.Planner.Experiment.Parse($"algorithm: {algorithm}\nreward: {{ kind: {rewardKind} }}\nmodels:\n  {models}\n" +
                                                       "batch: { size: 8, prompt_len: 16, gen_len: 8, minibatches: 2 }\n");
        var g = DataflowGraph.For(algorithm, Batch, rm);
        Assert.Equal(g.Calls.Select(c => (c.Name, c.Model)).Order(), exp.Calls.Select(c => (c.Name, c.Role)).Order());
        Assert.Equal(g.Calls.Select(c => c.Model).Distinct().Order(), exp.Models.Keys.Order());
    }

    [Fact]
    public void BadGraphsAreRejected()
    {
        ModelFunctionCall C(string n, string[] i, string[] o) => new(n, "m", CallType.Inference, i, o, 1);
        Assert.Contains("no call produces", Assert.Throws<ArgumentException>(() => new DataflowGraph(["a"], [C("x", ["b"], ["c"])])).Message);
        Assert.Contains("produced by both", Assert.Throws<ArgumentException>(() => new DataflowGraph(["a"], [C("x", ["a"], ["c"]), C("y", ["a"], ["c"])])).Message);
        Assert.Contains("cycle", Assert.Throws<InvalidOperationException>(() => new DataflowGraph([], [C("x", ["d"], ["c"]), C("y", ["c"], ["d"])])).Message);
    }

    [Fact]
    public void ExecutorRunsInOrderAndChecksOutputs()
    {
        var g = DataflowGraph.For("grpo", Batch);
        var ran = new List<string>();
        var handlers = g.Calls.ToDictionary(c => c.Name, c => (CallHandler)((call, b) =>
        {
            foreach (var k in call.Inputs) Assert.True(b.Contains(k), $"{call.Name} ran before '{k}' existed");
            foreach (var k in call.Outputs) b.Set(k, new float[1]);
            ran.Add(call.Name);
            return new Dictionary<string, double> { ["n"] = ran.Count };
        }));
        var batch = new SampleBatch();
        batch.Set("prompts", new int[1]);
        var records = new SequentialExecutor(g, handlers).RunIteration(batch);
        Assert.Equal(g.TopologicalOrder.Select(c => c.Name), ran);
        Assert.Equal(4, records.Count);

        handlers["rew_inf"] = (call, b) => new Dictionary<string, double>();
        var b2 = new SampleBatch();
        b2.Set("prompts", new int[1]);
        Assert.Contains("did not produce its output 'scores'",
            Assert.Throws<InvalidOperationException>(() => new SequentialExecutor(g, handlers).RunIteration(b2)).Message);
    }
}
