// PPO: the actor samples (actor_gen), the reward model (or the rule-based reward), the frozen
// reference and the critic score the samples (rew_inf, ref_inf, critic_inf); then actor_train
// (clipped policy loss) and critic_train (clipped value loss) each take ppo_epochs x minibatches
// optimizer steps on the advantages and returns of Ppo.Advantages (KL-shaped rewards, GAE), each
// step's loss computed where the model is (IModelCalls.PolicyStep, ValueStep); under worker
// processes the advantages too (Parallelism/RolloutAdvantages.cs, PpoAdvantageInputs).
using ReaLNative.Engine.Model;
using ReaLNative.Engine.Algorithms;
using ReaLNative.Engine.Config;
using ReaLNative.Engine.Dataflow;
using ReaLNative.Engine.Parallelism;

namespace ReaLNative.Engine.Stages;

internal sealed class PpoStage(StageConfig stage) : StageAlgorithm(stage)
{
    public override int OptimizerStepsPerIteration => Stage.Ppo.PpoEpochs * Stage.Batch.Minibatches;

    public override Dictionary<string, CallHandler> Handlers(StageContext context)
    {
        float temp = (float)Stage.Generation.Temperature;
        var ppo = Stage.Ppo;
        // The inputs of the advantages and returns, shared by both train calls of an iteration: on
        // the single device and in-process plans the master computes them once (on first use); under
        // worker processes the loss ranks of each train call derive them from the inference outputs
        // the workers kept (Workers/RemoteReplica.PolicyStep), and the master never does.
        PpoAdvantageInputs? cache = null;
        int cachedFor = -1;
        var gate = new Lock();  // actor_train and critic_train may run concurrently under a plan
        PpoAdvantageInputs Advantages(SampleBatch b)
        {
            lock (gate)
            {
                int it = b.Get<int[]>("iteration")[0];
                if (cachedFor == it && cache is { } c) return c;
                var r = b.Get<Rollout>("sequences");
                var scores = context.Shaped(r, b.Get<float[]>("scores"));
                cache = new PpoAdvantageInputs(b.Get<ActionFloats>("logprobs"), b.Get<ActionFloats>("ref_logprobs"), b.Get<ActionFloats>("values"), scores,
                                               r.Gen.EndedWithEos, r.Scored.ActionCu, ppo, context.Stream) { Source = r.Scored.Source };
                cachedFor = it;
                return cache;
            }
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
            var adv = Advantages(b);
            var m = context.Calls(call.Name, "actor");
            // Asynchronous RL: an off-policy batch's ratio is against the proximal policy (recomputed),
            // the generation log-probs weight it (decoupled objective); on-policy they are the same.
            var proximal = context.Proximal(b, m, r);
            int n = r.Examples.Length, mb = Stage.Batch.Minibatches;
            var keep = new bool[n]; Array.Fill(keep, true);
            // The loss and its gradient are computed where the actor is (its train layout's last stage);
            // under worker processes its loss ranks derive the advantages and read the log-probs
            // (generation, proximal) from the workers that keep them (Workers/RemoteReplica.PolicyStep).
            var options = new PolicyLossOptions(ppo.ClipEpsLow, ppo.ClipEpsHigh, ppo.LossAgg, 0, ppo.BehaviourWeightCap);
            var inputs = PolicyLossInputs.FromPpo(adv, keep, options, proximal);
            double loss = 0, clip = 0; int steps = 0;
            for (int e = 0; e < ppo.PpoEpochs; e++)
                for (int k = 0; k < mb; k++)
                {
                    if (e == 0 && k == 1) StageContext.AwaitProximal(b, proximal);   // computed on the rollout side meanwhile
                    int s0 = k * n / mb;
                    var (sb, a0, _) = r.Slice(s0, (k + 1) * n / mb);
                    // Epoch 0, minibatch 0 of an off-policy batch: the proximal weights' forward is this step's own.
                    var (st, _) = m.PolicyStep(sb, s0, a0, temp, inputs, ratioBaseFromForward: proximal is not null && e == 0 && k == 0);
                    loss += st.Loss; clip += st.ClipFraction; steps++;
                }
            b.Set("actor_stats", new object());
            return new Dictionary<string, double> { ["tokens"] = r.Scored.Packed.TotalTokens, ["loss"] = loss / steps, ["clip_fraction"] = clip / steps,
                ["reward_mean"] = adv.Scores.Average(), ["kl"] = adv.Kl, ["lr"] = m.LearningRate };
        };
        h["critic_train"] = (call, b) =>
        {
            var r = b.Get<Rollout>("sequences");
            var m = context.Calls(call.Name, "critic");
            var inputs = ValueLossInputs.FromPpo(Advantages(b), ppo.ValueClipEps);
            double loss = 0; int steps = 0;
            int n = r.Examples.Length, mb = Stage.Batch.Minibatches;
            for (int e = 0; e < ppo.PpoEpochs; e++)
                for (int k = 0; k < mb; k++)
                {
                    var (sb, a0, _) = r.Slice(k * n / mb, (k + 1) * n / mb);
                    var (st, _) = m.ValueStep(sb, a0, inputs);
                    loss += st.Loss; steps++;
                }
            b.Set("critic_stats", new object());
            return new Dictionary<string, double> { ["tokens"] = r.Scored.Packed.TotalTokens, ["loss"] = loss / steps };
        };
        return h;
    }
}
