// SFT: one call, actor_train, on the prompt followed by the reference answer and EOS; the loss is
// the mean next-token cross-entropy over the answer tokens (ModelOps.SftStep). Leaves the `sft`
// artifact (the actor) for later stages' `init`.
using ReaLNative.Engine.Model;
using ReaLNative.Engine.Algorithms;
using ReaLNative.Engine.Config;
using ReaLNative.Engine.Dataflow;
using ReaLNative.Engine.Tasks;

namespace ReaLNative.Engine.Stages;

internal sealed class SftStage(StageConfig stage) : StageAlgorithm(stage)
{

    public override void SetSources(SampleBatch batch, TaskExample[] examples)
    {
        base.SetSources(batch, examples);
        batch.Set("answers", examples.Select(e => e.Target).ToArray());
    }

    public override Dictionary<string, CallHandler> Handlers(StageContext context)
    {
        var tok = context.Tokenizer;
        return new Dictionary<string, CallHandler>
        {
            ["actor_train"] = (call, b) =>
            {
                var ex = b.Get<TaskExample[]>("prompts");
                var prompts = ex.Select(e => context.PromptIds(e.Prompt)).ToArray();
                var seqs = ex.Select((e, i) => (int[])[.. prompts[i], .. tok.Response(e.Prompt, e.Target)]).ToArray();
                var sb = new ScoredBatch(seqs, prompts.Select(p => p.Length).ToArray());
                var m = context.Calls(call.Name, "actor");
                double loss = m.SftStep(sb);
                double gn = m.Step();
                b.Set("actor_stats", new object());
                return new Dictionary<string, double> { ["tokens"] = sb.Packed.TotalTokens, ["loss"] = loss, ["grad_norm"] = gn };
            },
        };
    }
}
