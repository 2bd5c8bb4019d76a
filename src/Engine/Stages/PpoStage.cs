// PPO: the actor samples (actor_gen), the reward model (or the rule-based reward), the frozen
// reference and the critic score the samples (rew_inf, ref_inf, critic_inf); then actor_train
// (clipped policy loss) and critic_train (clipped value loss) each take ppo_epochs x minibatches
// optimizer steps on the advantages and returns of Ppo.Advantages (KL-shaped rewards, GAE).
using ReaLNative.Engine.Model;
using ReaLNative.Engine.Algorithms;
using ReaLNative.Engine.Config;
using ReaLNative.Engine.Dataflow;

namespace ReaLNative.Engine.Stages;

internal sealed class PpoStage(StageConfig stage) : StageAlgorithm(stage)
{
    public override int OptimizerStepsPerIteration => Stage.Ppo.PpoEpochs * Stage.Batch.Minibatches;

    public override Dictionary<string, CallHandler> Handlers(StageContext context)
    {
        float temp = (float)Stage.Generation.Temperature;
        var ppo = Stage.Ppo;
        // Advantages and returns are computed once per iteration and shared by both train calls.
        (float[] Adv, float[] Ret, double Kl, double Reward)? cache = null;
        int cachedFor = -1;
        var gate = new Lock();  // actor_train and critic_train may run concurrently under a plan
        (float[] Adv, float[] Ret, double Kl, double Reward) Advantages(SampleBatch b)
        {
            lock (gate) return AdvantagesLocked(b);
        }
        (float[] Adv, float[] Ret, double Kl, double Reward) AdvantagesLocked(SampleBatch b)
        {
            int it = b.Get<int[]>("iteration")[0];
            if (cachedFor == it && cache is { } c) return c;
            var r = b.Get<Rollout>("sequences");
            var logp = b.Get<float[]>("logprobs"); var refLp = b.Get<float[]>("ref_logprobs");
            var scores = context.Shaped(r, b.Get<float[]>("scores"));
            var (adv, ret, kl) = Ppo.Advantages(context.Stream, logp, refLp, b.Get<float[]>("values"), scores,
                                                r.Gen.EndedWithEos, r.Scored.ActionCu, ppo);
            cache = (adv, ret, kl, scores.Average());
            cachedFor = it;
            return cache.Value;
        }

        var h = new Dictionary<string, CallHandler>
        {
            ["actor_gen"] = context.SampleCall(),
            ["rew_inf"] = context.RewardCall("sequences", "scores"),
            ["ref_inf"] = context.ReferenceCall(),
            ["critic_inf"] = context.CriticCall(),
        };
        h["actor_train"] = (call, b) =>
        {
            var r = b.Get<Rollout>("sequences");
            var oldLp = b.Get<float[]>("logprobs");
            var (adv, _, kl, reward) = Advantages(b);
            var m = context.Calls(call.Name, "actor");
            // Asynchronous RL: an off-policy batch's ratio is against the proximal policy (recomputed),
            // the generation log-probs weight it (decoupled objective); on-policy they are the same.
            var proximal = context.ProximalLogProbs(b, m, r);
            var ratioBase = proximal ?? oldLp;
            double loss = 0, clip = 0; int steps = 0;
            int n = r.Examples.Length, mb = Stage.Batch.Minibatches;
            for (int e = 0; e < ppo.PpoEpochs; e++)
                for (int k = 0; k < mb; k++)
                {
                    if (e == 0 && k == 1) StageContext.AwaitProximal(b, proximal, r, mb);   // computed on the rollout side meanwhile
                    var (sb, a0, a1) = r.Slice(k * n / mb, (k + 1) * n / mb);
                    var lp = m.LogProbs(sb, temp);
                    if (proximal is not null && e == 0 && k == 0) lp.CopyTo(proximal, a0);   // the proximal weights' forward
                    var g = new float[lp.Length]; var keep = new bool[sb.Packed.Count]; Array.Fill(keep, true);
                    var st = Losses.ClippedPolicy(lp, ratioBase.AsSpan(a0, a1 - a0), adv.AsSpan(a0, a1 - a0), [], sb.ActionCu, keep,
                                                  ppo.ClipEpsLow, ppo.ClipEpsHigh, ppo.LossAgg, 0, g,
                                                  proximal is null ? default : oldLp.AsSpan(a0, a1 - a0), ppo.BehaviourWeightCap);
                    m.BackwardLogProbs(sb, temp, g);
                    m.Step();
                    loss += st.Loss; clip += st.ClipFraction; steps++;
                }
            b.Set("actor_stats", new object());
            return new Dictionary<string, double> { ["tokens"] = r.Scored.Packed.TotalTokens, ["loss"] = loss / steps, ["clip_fraction"] = clip / steps,
                ["reward_mean"] = reward, ["kl"] = kl, ["lr"] = m.LearningRate };
        };
        h["critic_train"] = (call, b) =>
        {
            var r = b.Get<Rollout>("sequences");
            var oldV = b.Get<float[]>("values");
            var (_, ret, _, _) = Advantages(b);
            var m = context.Calls(call.Name, "critic");
            double loss = 0; int steps = 0;
            int n = r.Examples.Length, mb = Stage.Batch.Minibatches;
            for (int e = 0; e < ppo.PpoEpochs; e++)
                for (int k = 0; k < mb; k++)
                {
                    var (sb, a0, a1) = r.Slice(k * n / mb, (k + 1) * n / mb);
                    var (v, _) = m.Values(sb);
                    var g = new float[v.Length]; var mask = new float[v.Length]; Array.Fill(mask, 1f);
                    var st = Losses.ClippedValue(v, oldV.AsSpan(a0, a1 - a0), ret.AsSpan(a0, a1 - a0), mask, ppo.ValueClipEps, g);
                    m.BackwardValues(sb, g, []);
                    m.Step();
                    loss += st.Loss; steps++;
                }
            b.Set("critic_stats", new object());
            return new Dictionary<string, double> { ["tokens"] = r.Scored.Packed.TotalTokens, ["loss"] = loss / steps };
        };
        return h;
    }
}
