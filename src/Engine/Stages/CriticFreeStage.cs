// GRPO, RLOO, ReMax: the actor samples (actor_gen; ReMax also its greedy answer, actor_greedy_gen),
// the reward model (or the rule-based reward) and the frozen reference score the samples; then
// actor_train spreads the algorithm's sequence advantages (CriticFreeAlgorithm: Grpo, Rloo, Remax)
// over every token and takes ppo_epochs x minibatches optimizer steps on the clipped surrogate with
// k3 KL to the reference. No critic.
using ReaLNative.Engine.Model;
using ReaLNative.Engine.Algorithms;
using ReaLNative.Engine.Config;
using ReaLNative.Engine.Dataflow;
using ReaLNative.Engine.Parallelism;

namespace ReaLNative.Engine.Stages;

internal sealed class CriticFreeStage(StageConfig stage) : StageAlgorithm(stage)
{
    private readonly CriticFreeAlgorithm _algorithm = CriticFreeAlgorithm.For(stage.Algorithm, stage.Ppo);

    public override int OptimizerStepsPerIteration => Stage.Ppo.PpoEpochs * Stage.Batch.Minibatches;
    /// <summary>grpo, rloo: group_size samples of each prompt; remax: one (its baseline is the greedy answer).</summary>
    public override int CopiesPerPrompt => AlgorithmNames.Grouped(Stage.Algorithm) ? Stage.Batch.GroupSize : 1;

    public override Dictionary<string, CallHandler> Handlers(StageContext context)
    {
        var h = new Dictionary<string, CallHandler>
        {
            ["actor_gen"] = context.SampleCall(),
            ["rew_inf"] = context.RewardCall("sequences", "scores"),
            ["ref_inf"] = context.ReferenceCall(),
            ["actor_train"] = Train(context),
        };
        if (_algorithm.NeedsGreedyBaseline)
        {
            h["actor_greedy_gen"] = context.GreedyCall();
            h["rew_greedy_inf"] = context.RewardCall("greedy_sequences", "greedy_scores");
        }
        return h;
    }

    private CallHandler Train(StageContext context)
    {
        float temp = (float)Stage.Generation.Temperature;
        var algo = _algorithm;
        int group = CopiesPerPrompt;
        return (call, b) =>
        {
            var r = b.Get<Rollout>("sequences");
            var oldLp = b.Get<ActionFloats>("logprobs"); var refLp = b.Get<ActionFloats>("ref_logprobs");
            var scores = context.Shaped(r, b.Get<float[]>("scores"));
            float[] greedy = algo.NeedsGreedyBaseline ? context.Shaped(b.Get<Rollout>("greedy_sequences"), b.Get<float[]>("greedy_scores")) : [];
            var seqAdv = algo.Advantages(scores, greedy, group);
            var keep = algo.Keep(scores, greedy, group);
            var m = context.Calls(call.Name, "actor");
            // Asynchronous RL: an off-policy batch's ratio is against the proximal policy (recomputed),
            // the generation log-probs weight it (decoupled objective); on-policy they are the same.
            var proximal = context.Proximal(b, m, r);
            var o = algo.Options;
            // The loss and its gradient are computed where the actor is (its train layout's last stage).
            var options = new PolicyLossOptions(o.ClipEpsLow, o.ClipEpsHigh, o.LossAgg, o.KlCoef, o.BehaviourWeightCap);
            // Under worker processes the loss ranks spread the sequence advantages and read the
            // log-probs themselves (generation, reference, an off-policy batch's proximal ones: from
            // the workers that keep them, Workers/RemoteReplica.PolicyStep); the master sends no per-token float.
            var derived = new SequenceAdvantageInputs(oldLp, refLp, seqAdv, r.Scored.ActionCu) { Source = r.Scored.Source };
            var inputs = PolicyLossInputs.FromSequenceAdvantages(derived, keep, options, proximal);
            int n = r.Examples.Length, mb = Stage.Batch.Minibatches;
            double loss = 0, klTerm = 0, k3 = 0, clip = 0, gradNorm = 0; int steps = 0;
            for (int e = 0; e < Stage.Ppo.PpoEpochs; e++)
                for (int k = 0; k < mb; k++)
                {
                    if (e == 0 && k == 1) StageContext.AwaitProximal(b, proximal);   // computed on the rollout side meanwhile
                    int s0 = k * n / mb, s1 = (k + 1) * n / mb;
                    if (!keep.AsSpan(s0, s1 - s0).Contains(true)) continue;  // dynamic sampling dropped the whole minibatch
                    var (sb, a0, _) = r.Slice(s0, s1);
                    // Epoch 0, minibatch 0 of an off-policy batch: the proximal weights' forward is this step's own.
                    var (st, norm) = m.PolicyStep(sb, s0, a0, temp, inputs, ratioBaseFromForward: proximal is not null && e == 0 && k == 0);
                    gradNorm += norm;
                    loss += st.Loss; klTerm += st.KlTerm; k3 += st.K3; clip += st.ClipFraction; steps++;
                }
            b.Set("actor_stats", new object());
            int div = Math.Max(steps, 1);
            var figures = new Dictionary<string, double>
            {
                ["tokens"] = r.Scored.Packed.TotalTokens, ["loss"] = loss / div, ["kl_penalty"] = klTerm / div, ["k3"] = k3 / div,
                ["clip_fraction"] = clip / div, ["reward_mean"] = scores.Average(), ["kl"] = derived.Kl,
                ["kept_fraction"] = keep.Count(x => x) / (double)n, ["grad_norm"] = gradNorm / div, ["lr"] = m.LearningRate,
            };
            if (greedy.Length > 0) figures["greedy_reward_mean"] = greedy.Average();
            return figures;
        };
    }
}
