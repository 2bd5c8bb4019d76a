// AdamW's hyperparameters as a value: the run loop builds one from the experiment's optim section
// and every process (in-process devices, worker processes over the wire) makes its shards'
// optimizers from it.
using ReaLNative.Engine.Model;

namespace ReaLNative.Engine.Optim;

/// <summary>AdamW's hyperparameters: what makes an optimizer for a shard in any process.</summary>
internal sealed record OptimizerSpec(LrSchedule Schedule, float Beta1, float Beta2, float Eps, float WeightDecay, float ClipGradNorm)
{
    public AdamW Create(LlamaModel model) => new(model, Schedule, Beta1, Beta2, Eps, WeightDecay, ClipGradNorm);
}
