// Online DPO / IPO: the actor samples two answers per prompt (actor_gen), the frozen reference
// scores them (ref_inf); actor_train ranks each prompt's two samples by the task's graded checker
// into chosen / rejected and takes one optimizer step on the loss of their sequence log-probs
// against the reference (DpoAlgorithm: `dpo.loss` sigmoid | ipo). With a dataset of chosen /
// rejected pairs (dataset.fields), nothing is sampled: the pairs are the file's (offline DPO).
using ReaLNative.Engine.Model;
using ReaLNative.Engine.Algorithms;
using ReaLNative.Engine.Config;
using ReaLNative.Engine.Dataflow;

namespace ReaLNative.Engine.Stages;

internal sealed class DpoStage(StageConfig stage) : StageAlgorithm(stage)
{
    public override int CopiesPerPrompt => 2;

    public override Dictionary<string, CallHandler> Handlers(StageContext context) => new()
    {
        ["actor_gen"] = context.SampleOrPairsCall(),
        ["ref_inf"] = context.ReferenceCall(),
        ["actor_train"] = Train(context),
    };

    /// <summary>The chosen / rejected pairs' loss; its gradient on each sequence log-prob spread over the sequence's action tokens.</summary>
    private CallHandler Train(StageContext context)
    {
        float temp = (float)Stage.Generation.Temperature;
        var dpo = new DpoAlgorithm(Stage.Dpo);
        return (call, b) =>
        {
            var r = b.Get<Rollout>("sequences");
            var refLp = b.Get<float[]>("ref_logprobs");
            var (ci, ri) = r.Pairs();
            b.Set("actor_stats", new object());
            if (ci.Length == 0) return new Dictionary<string, double> { ["pairs"] = 0 };
            var m = context.Calls(call.Name, "actor");
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
