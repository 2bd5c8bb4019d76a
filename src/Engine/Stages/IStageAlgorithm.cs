// One training algorithm as a stage of a run. A stage type owns the call handlers of its
// algorithm's dataflow graph (Dataflow/DataflowGraph.cs names the calls and their batch keys):
// they bind the maths of src/Engine/Algorithms (advantages, losses) to the batch keys and the model
// calls. The run loop (Runs/Pipeline.cs) knows an algorithm only through this interface.
using ReaLNative.Engine.Model;
using ReaLNative.Engine.Config;
using ReaLNative.Engine.Dataflow;
using ReaLNative.Engine.Tasks;

namespace ReaLNative.Engine.Stages;

internal interface IStageAlgorithm
{
    /// <summary>The handler of each call of the stage's dataflow graph.</summary>
    Dictionary<string, CallHandler> Handlers(StageContext context);

    /// <summary>Roles whose parameters the algorithm trains: each gets an optimizer and is checkpointed.</summary>
    IReadOnlyList<string> TrainedRoles { get; }

    /// <summary>Optimizer steps one iteration takes (the LR schedule spans the stage's steps).</summary>
    int OptimizerStepsPerIteration { get; }

    /// <summary>Copies of each prompt in an iteration's batch, consecutive (rm, dpo: 2; grpo, rloo: group_size).</summary>
    int CopiesPerPrompt { get; }

    /// <summary>Whether the run scores the actor on held-out examples (eval lines, task_score).</summary>
    bool EvaluatesActor { get; }

    /// <summary>The artifact the stage leaves for later stages' `init` (its name and the role saved), or null.</summary>
    (string Artifact, string Role)? Produces { get; }

    /// <summary>Sets the iteration's source keys (the graph's SourceKeys) from its examples.</summary>
    void SetSources(SampleBatch batch, TaskExample[] examples);
}

/// <summary>The stage type of each algorithm name.</summary>
internal static class StageAlgorithms
{
    public static IStageAlgorithm For(StageConfig stage) => stage.Algorithm switch
    {
        AlgorithmNames.Sft => new SftStage(stage),
        AlgorithmNames.Rm => new RewardModelStage(stage),
        AlgorithmNames.Dpo => new DpoStage(stage),
        AlgorithmNames.Ppo => new PpoStage(stage),
        AlgorithmNames.Grpo or AlgorithmNames.Rloo or AlgorithmNames.Remax => new CriticFreeStage(stage),
        _ => throw new ArgumentOutOfRangeException(nameof(stage), stage.Algorithm, $"allowed values: {string.Join(" | ", AlgorithmNames.All)}"),
    };
}

/// <summary>What most stages share: one optimizer step and one copy of each prompt per iteration,
/// the actor evaluated, "prompts" the only source. Trained roles and the artifact are the config's
/// (AlgorithmNames, which the config's checks use too).</summary>
internal abstract class StageAlgorithm(StageConfig stage) : IStageAlgorithm
{
    protected StageConfig Stage { get; } = stage;
    public abstract Dictionary<string, CallHandler> Handlers(StageContext context);
    public IReadOnlyList<string> TrainedRoles => AlgorithmNames.TrainedRoles(Stage.Algorithm);
    public virtual int OptimizerStepsPerIteration => 1;
    public virtual int CopiesPerPrompt => 1;
    public virtual bool EvaluatesActor => true;
    public (string Artifact, string Role)? Produces => AlgorithmNames.Produces(Stage.Algorithm);
    public virtual void SetSources(SampleBatch batch, TaskExample[] examples) => batch.Set("prompts", examples);
}
