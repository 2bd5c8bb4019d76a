// The call handlers of the critic-free algorithms (GRPO, RLOO, ReMax) and DPO, and the rule-based
// rewards of RL stages: the algorithms' own logic (advantages, losses) lives in
// src/Engine/Algorithms; this part of Pipeline binds it to the batch keys and the model calls.
using ReaLNative.Engine.Algorithms;
using ReaLNative.Engine.Config;
using ReaLNative.Engine.Dataflow;

namespace ReaLNative.Engine.Runs;

internal sealed partial class Pipeline
{
    /// <summary>Optimizer steps one iteration takes (the LR schedule spans the stage's steps).</summary>
    private static int OptimizerStepsPerIteration(StageConfig stage) => stage.Algorithm switch
    {
        AlgorithmNames.Ppo or AlgorithmNames.Grpo or AlgorithmNames.Rloo or AlgorithmNames.Remax => stage.Ppo.PpoEpochs * stage.Batch.Minibatches,
        _ => 1,
    };

    /// <summary>The rule-based reward of each sample of a rollout (`reward.kind` other than model, in
    /// an RL stage), computed on the master where the generated text is; null when a reward model scores them.</summary>
    private float[]? RuleScores(StageConfig stage, Rollout r)
    {
        if (!AlgorithmNames.Rewarded(stage.Algorithm) || _reward is not { } reward) return null;
        return reward.Score(SequenceRewards.Inputs(r.Examples, r.Completions, r.Gen.EndedWithEos));
    }

    /// <summary>Sequence rewards after DAPO's overlong penalty (ppo.overlong_buffer; unchanged when 0).</summary>
    private static float[] Shaped(StageConfig stage, Rollout r, float[] scores)
    {
        var p = stage.Ppo;
        if (p.OverlongBuffer == 0) return scores;
        return scores.Select((s, i) => s + SequenceRewards.OverlongPenalty(r.Gen.NewTokens[i].Length, stage.Batch.GenLen, p.OverlongBuffer, p.OverlongPenalty)).ToArray();
    }

    /// <summary>GRPO, RLOO, ReMax: the algorithm's sequence advantages on every token, clipped
    /// surrogate with k3 KL to the reference, ppo_epochs x minibatches optimizer steps.</summary>
    private void AddCriticFree(StageConfig stage, Dictionary<string, CallHandler> h, float temp)
    {
        var algo = CriticFreeAlgorithm.For(stage.Algorithm, stage.Ppo);
        int group = AlgorithmNames.Grouped(stage.Algorithm) ? stage.Batch.GroupSize : 1;
        h["actor_train"] = (call, b) =>
        {
            var r = b.Get<Rollout>("sequences");
            var oldLp = b.Get<float[]>("logprobs"); var refLp = b.Get<float[]>("ref_logprobs");
            var scores = Shaped(stage, r, b.Get<float[]>("scores"));
            float[] greedy = algo.NeedsGreedyBaseline ? Shaped(stage, b.Get<Rollout>("greedy_sequences"), b.Get<float[]>("greedy_scores")) : [];
            var seqAdv = algo.Advantages(scores, greedy, group);
            var keep = algo.Keep(scores, greedy, group);
            var m = Calls(call.Name, "actor");
            int n = r.Examples.Length, mb = stage.Batch.Minibatches;
            double loss = 0, klTerm = 0, k3 = 0, clip = 0, gradNorm = 0; int steps = 0;
            for (int e = 0; e < stage.Ppo.PpoEpochs; e++)
                for (int k = 0; k < mb; k++)
                {
                    int s0 = k * n / mb, s1 = (k + 1) * n / mb;
                    if (!keep.AsSpan(s0, s1 - s0).Contains(true)) continue;  // dynamic sampling dropped the whole minibatch
                    var (sb, a0, a1) = Slice(r, s0, s1);
                    var lp = m.LogProbs(sb, temp);
                    var g = new float[lp.Length];
                    var st = algo.Loss(lp, oldLp.AsSpan(a0, a1 - a0), refLp.AsSpan(a0, a1 - a0), sb.ActionCu,
                                       seqAdv.AsSpan(s0, s1 - s0), keep.AsSpan(s0, s1 - s0), g);
                    m.BackwardLogProbs(sb, temp, g);
                    gradNorm += m.Step();
                    loss += st.Loss; klTerm += st.KlTerm; k3 += st.K3; clip += st.ClipFraction; steps++;
                }
            double kl = 0; for (int k = 0; k < oldLp.Length; k++) kl += oldLp[k] - refLp[k];
            b.Set("actor_stats", new object());
            int div = Math.Max(steps, 1);
            var figures = new Dictionary<string, double>
            {
                ["tokens"] = r.Scored.Packed.TotalTokens, ["loss"] = loss / div, ["kl_penalty"] = klTerm / div, ["k3"] = k3 / div,
                ["clip_fraction"] = clip / div, ["reward_mean"] = scores.Average(), ["kl"] = kl / n,
                ["kept_fraction"] = keep.Count(x => x) / (double)n, ["grad_norm"] = gradNorm / div, ["lr"] = m.LearningRate,
            };
            if (greedy.Length > 0) figures["greedy_reward_mean"] = greedy.Average();
            return figures;
        };
    }

    /// <summary>Online DPO / IPO: the two samples of each prompt ranked by the task's graded checker
    /// into chosen / rejected; the loss on their sequence log-probs against the frozen reference.</summary>
    private void AddDpo(StageConfig stage, Dictionary<string, CallHandler> h, float temp)
    {
        var dpo = new DpoAlgorithm(stage.Dpo);
        h["actor_train"] = (call, b) =>
        {
            var r = b.Get<Rollout>("sequences");
            var refLp = b.Get<float[]>("ref_logprobs");
            var (ci, ri) = Pairs(r);
            b.Set("actor_stats", new object());
            if (ci.Length == 0) return new Dictionary<string, double> { ["pairs"] = 0 };
            var m = Calls(call.Name, "actor");
            var lp = m.LogProbs(r.Scored, temp);
            float SeqSum(float[] a, int i) { float s = 0; for (int k = r.Scored.ActionCu[i]; k < r.Scored.ActionCu[i + 1]; k++) s += a[k]; return s; }
            int n = ci.Length;
            var pc = ci.Select(i => SeqSum(lp, i)).ToArray(); var pr = ri.Select(i => SeqSum(lp, i)).ToArray();
            var rc = ci.Select(i => SeqSum(refLp, i)).ToArray(); var rr = ri.Select(i => SeqSum(refLp, i)).ToArray();
            var gc = new float[n]; var gr = new float[n];
            var st = dpo.Loss(pc, pr, rc, rr, gc, gr);
            var d = new float[lp.Length];
            for (int p = 0; p < n; p++)
            {
                for (int k = r.Scored.ActionCu[ci[p]]; k < r.Scored.ActionCu[ci[p] + 1]; k++) d[k] += gc[p];
                for (int k = r.Scored.ActionCu[ri[p]]; k < r.Scored.ActionCu[ri[p] + 1]; k++) d[k] += gr[p];
            }
            m.BackwardLogProbs(r.Scored, temp, d);
            double gn = m.Step();
            double kl = 0; for (int k = 0; k < lp.Length; k++) kl += lp[k] - refLp[k];
            return new Dictionary<string, double> { ["tokens"] = r.Scored.Packed.TotalTokens, ["loss"] = st.Loss, ["accuracy"] = st.Accuracy,
                ["pairs"] = n, ["margin"] = st.MeanMargin, ["grad_norm"] = gn, ["kl"] = kl / r.Examples.Length };
        };
    }
}
