// The loss -> log-prob -> model gradient path: a step on the PPO loss raises the log-probs of
// actions with positive advantage and lowers those with negative advantage.
using ReaLNative.Engine.Algorithms;
using ReaLNative.Engine.Model;
using ReaLNative.Engine.Optim;
using Xunit;

namespace ReaLNative.Engine.Tests.Algorithms;

public class ModelOpsTests
{
    [Fact]
    public void PolicyStepFollowsAdvantageSign()
    {
        using var m = new LlamaModel(LlamaConfig.Preset("tiny"), scalarHead: false);
        m.InitRandom(3);
        int[][] seqs = [[1, 4, 5, 6, 7, 8], [1, 9, 10, 11, 12, 13, 2]];
        var sb = new ScoredBatch(seqs, [2, 3]);
        var lp0 = ModelOps.LogProbs(m, sb, 1f, out var lse);
        var adv = sb.ActionIndex.Select((_, k) => k < 4 ? 1f : -1f).ToArray();   // seq 0 good, seq 1 bad
        var g = new float[lp0.Length];
        Losses.ClippedPolicy(lp0, lp0, adv, [], sb.ActionCu, [true, true], 0.2, 0.2, "token", 0, g);
        using var opt = new AdamW(m, new LrSchedule(1e-3f), clipGradNorm: 0);
        m.ZeroGrad();
        ModelOps.BackwardLogProbs(m, sb, 1f, lse, g);
        opt.StepOnce();
        var lp1 = ModelOps.LogProbs(m, sb, 1f, out _);
        Assert.True(lp1.Take(4).Sum() > lp0.Take(4).Sum(), $"positive-advantage log-prob fell: {lp0.Take(4).Sum()} -> {lp1.Take(4).Sum()}");
        Assert.True(lp1.Skip(4).Sum() < lp0.Skip(4).Sum(), $"negative-advantage log-prob rose: {lp0.Skip(4).Sum()} -> {lp1.Skip(4).Sum()}");
    }
}
