// Before `realn run` allocates a model: every stage of the experiment, as the planner sees it,
// must fit in the memory this machine has (the plan's stage on the plan's layouts, every other
// stage on one device). A refusal is `realn plan`'s message, prefixed with the stage.
using ReaLNative.Engine.Config;
using ReaLNative.Engine.Model;
using ReaLNative.Planner;

namespace ReaLNative.Engine.Runs;

internal static class MemoryCheck
{
    /// <summary>Throws a <see cref="ConfigException"/> naming the stage when a stage does not fit in
    /// <paramref name="availableBytes"/> (described by <paramref name="machine"/>).</summary>
    public static void Check(ExperimentConfig cfg, Plan? plan, double availableBytes, string machine)
    {
        foreach (var stage in cfg.Stages)
        {
            var models = stage.Models.ToDictionary(kv => kv.Key, kv =>
            {
                var a = kv.Value.Preset is not null ? LlamaConfig.Preset(kv.Value.Preset)
                    : LlamaConfig.FromHfJson(Path.Combine(cfg.BaseDirectory, kv.Value.ConfigPath!));
                return new ModelConfig(kv.Value.Preset ?? kv.Value.ConfigPath!, a.Layers, a.Hidden, a.Intermediate, a.Heads, a.KvHeads, a.Vocab, a.TiedEmbeddings);
            });
            var exp = Planner.Experiment.Create(cfg.Name, stage.Algorithm, stage.Iterations, stage.Batch.Size, stage.Batch.PromptLen,
                                                stage.Batch.GenLen, stage.Batch.Minibatches, models);
            bool planned = plan is not null && exp.Calls.All(c => plan.Calls.Any(p => p.Name == c.Name)) && exp.Calls.Count == plan.Calls.Count;
            try { MemoryFit.Check(exp, planned ? plan : null, availableBytes, machine); }
            catch (PlannerException e)
            {
                throw new ConfigException(cfg.ExplicitStages ? $"{stage.Path} ({stage.Algorithm})" : "", $"does not fit in memory: {e.Message}");
            }
        }
    }
}
