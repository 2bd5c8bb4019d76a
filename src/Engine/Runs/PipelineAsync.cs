// The run loop of an asynchronous RL stage (`mode: async`): the stage's generation calls run ahead
// on their own side (AsyncRollouts: the plan's generation mesh, or without a plan a generation
// copy of the actor), with the frozen models' scoring calls placed on that mesh (reward and
// reference inference: DataflowGraph.SplitRollout), the rest of the dataflow here, one iteration
// after another as in a synchronous stage, then the weight push, evaluation and checkpoints. Each iteration also writes
// an "async" metric line: the batch's staleness, the time the trainer waited, the push, and the
// generation and training sides' utilisation.
using System.Diagnostics;
using System.Text.Json.Nodes;
using ReaLNative.Engine.Config;
using ReaLNative.Engine.Dataflow;
using ReaLNative.Engine.Model;
using ReaLNative.Engine.Stages;

namespace ReaLNative.Engine.Runs;

internal sealed partial class Pipeline
{
    private AsyncRollouts? _rollouts;                   // the running async stage's generation side
    private IReadOnlyList<string> _rolloutKeys = [];    // the keys its generation calls produce

    /// <summary>How long the trainer waits for one generation (and the generation side for a stop) before the run fails.</summary>
    public TimeSpan AsyncDeadline { get; init; } = TimeSpan.FromMinutes(30);

    /// <summary>Whether the rollout side computes the decoupled loss's proximal log-probs of each stale
    /// batch (under finish_batch, with more than one minibatch), right after the push of the weights the
    /// batch trains with, while the trainer starts the iteration; false: the trainer recomputes them
    /// (the same values: tested). Off the trainer's critical path is the point.</summary>
    internal bool ProximalOnRolloutSide { get; init; } = true;

    /// <summary>Iterations <paramref name="first"/>.. of an async stage; false when the iteration
    /// budget ran out first (the run is interrupted).</summary>
    private bool RunAsyncIterations(StageConfig stage, int first, ref int budget, Stopwatch stageClock, CancellationToken cancellationToken)
    {
        int staleness = _cfg.MaxStaleness!.Value;
        var graph = DataflowGraph.For(stage);
        // Under a plan, the inference calls of frozen models (reference, reward) whose meshes lie on the
        // generation devices join the rollout side: they score each batch right after its generation,
        // ahead of the trainer (their results do not depend on the policy version). Without a plan they
        // stay with the trainer, which shares the master's models with nothing else.
        Func<ModelFunctionCall, bool> scoresOnRolloutSide = _ => false;
        if (_binding.Bound)
        {
            var genDevices0 = graph.Calls.Where(c => c.Type == CallType.Generate).SelectMany(c => _binding.MeshOf(c.Name)).ToHashSet();
            scoresOnRolloutSide = c => _binding.MeshOf(c.Name).All(genDevices0.Contains);
        }
        var (genGraph, scoreGraph, restGraph) = graph.SplitRollout(scoresOnRolloutSide);
        var genNames = genGraph.Calls.Select(c => c.Name).ToHashSet();
        var scoreNames = scoreGraph.Calls.Select(c => c.Name).ToHashSet();
        // The per-action outputs of the generation and inference calls stay with the worker processes
        // that hold the batch (IModelCalls.KeptLogProbs and friends) until the trainer has consumed the
        // batch (released after its iteration; a batch still queued when the stage ends or stops is
        // released by AsyncRollouts.Dispose); what reads them on the master (a stale batch's loss
        // inputs, a checkpoint's rollouts.bin) fetches them then. Without a plan nothing changes: there
        // are no workers (the generation copy and the master's models hold everything anyway). Under
        // weight_update: interrupt the actor's generation is two commands (PausingCalls: up to the
        // pause, then the rest on the same KV cache); the second returns every token so far and leaves
        // all their log-probs with the workers, but the first keeps no batch, so its tokens' log-probs
        // (up to the pause step) still come back.
        var handlers = _algorithm!.Handlers(Context(stage, keepOutputsOnWorkers: true));
        var restHandlers = handlers.Where(h => !genNames.Contains(h.Key) && !scoreNames.Contains(h.Key)).ToDictionary();
        var scoreHandlers = handlers.Where(h => scoreNames.Contains(h.Key)).ToDictionary();
        // weight_update: interrupt: the generation calls' actor pauses for the new weights (AsyncRollouts).
        int interruptStep = _cfg.WeightUpdate == WeightUpdates.Interrupt ? _cfg.InterruptStep(stage) : 0;
        var pausePoint = new PausePointRelay();
        IModelCalls Pausing(IModelCalls calls) => interruptStep > 0 ? new PausingCalls(calls, pausePoint) : calls;
        Dictionary<string, CallHandler> genHandlers;
        IModelCalls genActor;   // the generation side's actor (its weights: the version last pushed)
        Action push;
        Func<string, IReadOnlyCollection<int>> genDevices;
        LlamaModel? genCopy = null;
        try
        {
            if (_binding.Bound)
            {
                // The generation calls have devices of their own (PlanBinding.CheckAsyncGeneration, when the run was made).
                foreach (var c in genGraph.Calls) _binding.Pin(c.Name, c.Model);
                genHandlers = interruptStep == 0 ? handlers.Where(h => genNames.Contains(h.Key)).ToDictionary()
                    : _algorithm.Handlers(Context(stage, (call, role) => role == "actor" && genNames.Contains(call) ? Pausing(_binding.Calls(call, role)) : _binding.Calls(call, role), keepOutputsOnWorkers: true))
                                .Where(h => genNames.Contains(h.Key)).ToDictionary();
                push = () => { foreach (var c in genGraph.Calls) _binding.Push(c.Name, c.Model); };
                genActor = _binding.Calls(genGraph.Calls.First(c => c.Model == "actor").Name, "actor");
                genDevices = _binding.MeshOf;
            }
            else
            {
                // No plan: the trainer's actor is the master's; generation samples with a copy of it.
                var actor = _models["actor"];
                genCopy = new LlamaModel(actor.Config, actor.ScalarHead);
                genCopy.CopyParametersFrom(actor);
                if (actor.Precision == ModelPrecision.Bf16) genCopy.SetPrecision(ModelPrecision.Bf16);
                var copy = genCopy;
                var genContext = Context(stage, (call, role) => role == "actor" ? Pausing(new SingleModelCalls(copy, () => null)) : _binding.Calls(call, role), keepOutputsOnWorkers: true);
                genHandlers = _algorithm.Handlers(genContext).Where(h => genNames.Contains(h.Key)).ToDictionary();
                push = () => copy.CopyParametersFrom(actor);
                genActor = new SingleModelCalls(copy, () => null);
                genDevices = _ => [0];
            }

            var restored = _resume is { } r && r.Stage == stage.Index && r.NextIteration == first && File.Exists(Path.Combine(r.Dir, RolloutFile.Name))
                ? RolloutFile.Read(Path.Combine(r.Dir, RolloutFile.Name), Context(stage)) : [];
            SampleBatch Sources(int g)
            {
                var batch = new SampleBatch();
                batch.Set("iteration", new[] { g });
                _algorithm.SetSources(batch, _examples.Take(stage, g));
                return batch;
            }
            // The proximal log-probs of minibatches 1..: only the decoupled loss needs them, and only with several minibatches.
            // Kept by the generation side's workers that compute them: the train call's loss ranks read them there.
            var context = Context(stage, keepOutputsOnWorkers: true);
            Func<Rollout, ActionFloats[]>? proximal = ProximalOnRolloutSide && interruptStep == 0 && stage.Ppo.DecoupledLoss && stage.Batch.Minibatches > 1
                ? r => context.ProximalOfLaterMinibatches(genActor, r) : null;
            using var rollouts = new AsyncRollouts(new MeshExecutor(genGraph, genHandlers, genDevices), Sources, push, staleness, first, stage.Iterations,
                                                   restored, AsyncDeadline, cancellationToken, interruptStep, pausePoint,
                                                   scoreGraph.Calls.Count > 0 ? new MeshExecutor(scoreGraph, scoreHandlers, genDevices) : null, proximal);
            _rollouts = rollouts;
            _rolloutKeys = [.. genGraph.Calls.SelectMany(c => c.Outputs), .. scoreGraph.Calls.SelectMany(c => c.Outputs), StageContext.TokenVersionsKey];
            var exec = new MeshExecutor(restGraph, restHandlers, _binding.DevicesOf);
            for (int it = first; it < stage.Iterations; it++)
            {
                _position = $"{stage.Algorithm} iteration {it + 1}/{stage.Iterations}";
                if (budget-- <= 0) return false;
                cancellationToken.ThrowIfCancellationRequested();
                long start = Stopwatch.GetTimestamp();
                var ready = rollouts.Take(it);
                double waited = Stopwatch.GetElapsedTime(start).TotalSeconds;
                var figures = new Dictionary<string, double>();
                double training;
                try
                {
                    ready.Batch.Set(StageContext.PolicyVersionKey, new[] { it });
                    bool firstCall = true;
                    WriteCallRecords(stage, it, ready.Records, figures, ref firstCall);
                    long trainStart = Stopwatch.GetTimestamp();
                    WriteCallRecords(stage, it, exec.RunIteration(ready.Batch, cancellationToken), figures, ref firstCall);
                    training = Stopwatch.GetElapsedTime(trainStart).TotalSeconds;
                }
                finally { ready.Batch.Release(); }   // consumed: the workers may drop the outputs they kept for it
                ClearActivationCaches(it);   // before the push refills the generation replica
                var (pushWait, pushSeconds) = rollouts.Publish(it + 1);
                double wall = Stopwatch.GetElapsedTime(start).TotalSeconds;
                AddIterationSeconds(stage.Index, wall);
                double generating = rollouts.TakeBusySeconds();
                var line = new JsonObject
                {
                    ["stage"] = stage.Index, ["algorithm"] = stage.Algorithm, ["step"] = it + 1, ["call"] = "async",
                    ["max_staleness"] = staleness, ["behaviour_version"] = ready.Version, ["policy_version"] = it,
                    ["staleness"] = it - ready.Version, ["samples"] = stage.Batch.Size, ["dropped_stale"] = 0,
                    ["wait_seconds"] = Math.Round(waited + pushWait, 5), ["push_seconds"] = Math.Round(pushSeconds, 5),
                    ["interrupt_step"] = interruptStep,
                    // 1: the decoupled loss's proximal log-probs of this (stale) batch were computed on the rollout side,
                    // after the push; 0: by the trainer, or not needed (an on-policy batch, or no decoupled loss).
                    ["proximal_on_rollout_side"] = StageContext.Staleness(ready.Batch) > 0 && stage.Ppo.DecoupledLoss && ready.Batch.Contains(StageContext.RolloutProximalKey) ? 1 : 0,
                    ["gen_utilisation"] = Math.Round(Math.Min(1, generating / wall), 4),
                    ["train_utilisation"] = Math.Round(Math.Min(1, (training + pushSeconds) / wall), 4),
                };
                foreach (var (s, n) in TokenStaleness(ready.Batch, it)) line[TokenStalenessPrefix + s] = n;
                WriteMetric(line);
                figures["staleness"] = it - ready.Version;
                EndIteration(stage, it, figures, stageClock);
            }
            return true;
        }
        finally
        {
            _rollouts = null;
            genCopy?.Dispose();
        }
    }

    /// <summary>The async line's fields "tokens_staleness_S": the batch's generated tokens sampled S versions behind the trainer.</summary>
    internal const string TokenStalenessPrefix = "tokens_staleness_";

    /// <summary>The batch's generated tokens counted by staleness (versions behind <paramref name="policy"/>), ascending.</summary>
    private static IEnumerable<(int Staleness, int Tokens)> TokenStaleness(SampleBatch batch, int policy) =>
        batch.Contains(StageContext.TokenVersionsKey)
            ? batch.Get<int[]>(StageContext.TokenVersionsKey).GroupBy(v => policy - v).OrderBy(g => g.Key).Select(g => (g.Key, g.Count()))
            : [];
}
