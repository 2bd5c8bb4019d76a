// RM: the frozen actor samples two answers per prompt (actor_gen); rew_train trains the reward
// model on preference pairs, mean -log sigmoid(chosen - rejected) (Losses.PairwiseReward). Leaves
// the `rm` artifact (the reward model) for later stages' `init`; the actor is not evaluated.
// With a dataset of chosen / rejected pairs (dataset.fields), the pairs are the file's, as given.
using ReaLNative.Engine.Model;
using ReaLNative.Engine.Algorithms;
using ReaLNative.Engine.Config;
using ReaLNative.Engine.Dataflow;
using ReaLNative.Engine.Tasks;

namespace ReaLNative.Engine.Stages;

internal sealed class RewardModelStage(StageConfig stage) : StageAlgorithm(stage)
{
    public override int CopiesPerPrompt => 2;
    public override bool EvaluatesActor => false;

    public override Dictionary<string, CallHandler> Handlers(StageContext context)
    {
        var tok = context.Tokenizer;
        return new Dictionary<string, CallHandler>
        {
            ["actor_gen"] = context.SampleOrPairsCall(),
            ["rew_train"] = (call, b) =>
            {
                var r = b.Get<Rollout>("sequences");
                // Pairs: the two samples of a prompt ranked by the graded checker, and the
                // checker's exact answer preferred over every wrong sample. Each entry is a sample
                // (tail null) or its prompt followed by the reference answer: where the workers hold
                // the samples, they build the batch (Rollout.Compose) and no id comes back here.
                var (ci, ri) = r.Pairs();
                var chosen = ci.Select(i => (i, (int[]?)null)).ToList();
                var rejected = ri.Select(i => (i, (int[]?)null)).ToList();
                for (int i = 0; i < r.Examples.Length && !r.OfflinePairs; i++)
                    if (!r.Exact(i) || !r.Gen.EndedWithEos[i])
                    {
                        chosen.Add((i, tok.Response(r.Examples[i].Prompt, r.Examples[i].Target)));
                        rejected.Add((i, null));
                    }
                b.Set("reward_stats", new object());
                if (chosen.Count == 0) return new Dictionary<string, double> { ["pairs"] = 0 };
                var sb = r.Compose([.. chosen, .. rejected]);
                var m = context.Calls(call.Name, "reward");
                var last = m.SequenceScores(sb);
                int n = chosen.Count;
                var dc = new float[n]; var dr = new float[n];
                var st = Losses.PairwiseReward(last.AsSpan(0, n), last.AsSpan(n), dc, dr);
                m.BackwardValues(sb, [], [.. dc, .. dr]);
                double gn = m.Step();
                return new Dictionary<string, double> { ["tokens"] = sb.Packed.TotalTokens, ["loss"] = st.Loss, ["accuracy"] = st.Accuracy,
                    ["pairs"] = n, ["margin"] = st.MeanMargin, ["grad_norm"] = gn };
            },
        };
    }
}
