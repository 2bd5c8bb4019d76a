// A run under an execution plan: the stage whose calls the plan lists runs each call on its own
// mesh and (pp, dp, tp) layout. Binding a stage makes one replica per (model, layout,
// micro-batches) on the plan's devices (in-process devices or model worker processes), the train
// call's replica trainable. No process holds a whole model of a bound stage: each role's source
// replica (the train replica, else its first) initialises its own shards (seeded streams, its slices
// of the init checkpoint, or on resume its slices of the run checkpoint by byte range), the role's
// other replicas are reallocated from it, and checkpoints and stage artifacts are written by the
// shards themselves (IReplica.SaveState). A bf16 model's train replica keeps the fp32 master and
// AdamW moments, its other replicas hold bf16 weights only (and receive bf16 when reallocated:
// half the bytes). Without a plan (or for a stage the plan does not list) every call runs on the
// single device, on the full models the run loop keeps.
using ReaLNative.Engine.Checkpoints;
using ReaLNative.Engine.Layout;
using ReaLNative.Engine.Config;
using ReaLNative.Engine.Dataflow;
using ReaLNative.Engine.Model;
using ReaLNative.Engine.Optim;
using ReaLNative.Engine.Parallelism;
using ReaLNative.Engine.Realloc;
using ReaLNative.Engine.Stages;
using ReaLNative.Engine.Workers;
using Plan = ReaLNative.Planner.Plan;

namespace ReaLNative.Engine.Runs;

/// <param name="plan">The execution plan, or null: every call on the single device.</param>
/// <param name="hosts">Makes the plan's devices (given their count) when the first stage under the plan is bound.</param>
/// <param name="models">The run's full models by role (the current stage's, when it is not bound: the single device's).</param>
/// <param name="optims">The run's optimizers of the trained roles.</param>
internal sealed class PlanBinding(Plan? plan, Func<int, IReplicaHost> hosts,
                                  Dictionary<string, LlamaModel> models, Dictionary<string, AdamW> optims) : IDisposable
{
    private IReplicaHost? _host;
    private readonly Dictionary<string, ModelReplicas> _replicas = new();
    private readonly Dictionary<string, IReplica> _callReplica = new();

    /// <summary>The plan's devices once a stage was bound (in-process devices or worker processes), else null.</summary>
    public IReplicaHost? Host => _host;

    /// <summary>Refuses, before anything runs, a plan whose layouts the engine cannot build for
    /// the stage's models (tp not dividing heads / kv heads / vocab / intermediate, pp above
    /// layers + 2), naming the call; and a plan that matches no stage.</summary>
    public static void CheckLayouts(ExperimentConfig cfg, Plan plan, Func<ModelSpec, LlamaConfig> arch)
    {
        bool any = false;
        foreach (var stage in cfg.Stages)
        {
            var graph = DataflowGraph.For(stage);
            if (!graph.Calls.All(c => plan.Calls.Any(p => p.Name == c.Name))) continue;
            any = true;
            foreach (var call in graph.Calls)
            {
                var pc = plan.Call(call.Name);
                if (!stage.Models.TryGetValue(call.Model, out var spec))
                    throw new ConfigException($"plan call {call.Name}", $"stage {stage.Index} has no model '{call.Model}'");
                try
                {
                    for (int p = 0; p < pc.Strategy.Pp; p++)
                        ParamLayout.Create(arch(spec), AlgorithmNames.ScalarHead(call.Model), pc.Strategy.Pp, p, pc.Strategy.Tp, 0);
                }
                catch (ArgumentException e) { throw new ConfigException($"plan call {call.Name}", $"strategy {pc.Strategy}: {e.Message}"); }
            }
        }
        if (!any) throw new ConfigException("plan", $"no stage of '{cfg.Name}' has exactly the plan's calls ({string.Join(", ", plan.Calls.Select(c => c.Name))})");
    }

    /// <summary>`mode: async`: refuses, before anything runs, a plan that puts a generation call of an
    /// async stage on a device another call of the stage uses (the generation group runs apart),
    /// except the scoring calls that run on the generation side with it (DataflowGraph.SplitRollout:
    /// a frozen model's inference whose whole mesh lies on the generation devices).</summary>
    public static void CheckAsyncGeneration(ExperimentConfig cfg, Plan plan)
    {
        foreach (var stage in cfg.Stages.Where(cfg.Asynchronous))
        {
            var graph = DataflowGraph.For(stage);
            if (!graph.Calls.All(c => plan.Calls.Any(p => p.Name == c.Name))) continue;
            int[] Devices(string call) { var pc = plan.Call(call); return Enumerable.Range(0, pc.Mesh.Size).Select(r => pc.Mesh.Device(r, plan.DevicesPerNode)).ToArray(); }
            var gen = graph.Calls.Where(c => c.Type == CallType.Generate).ToList();
            // weight_update: interrupt pauses a generation between decode steps (Generation/Generator.cs GenerationPause).
            if (cfg.WeightUpdate == WeightUpdates.Interrupt && gen.FirstOrDefault(c => plan.Call(c.Name).Strategy.Pp > 1) is { } piped)
                throw new ConfigException("weight_update", $"interrupt pauses generation between decode steps, which {piped.Name}'s pipeline parallelism (pp {plan.Call(piped.Name).Strategy.Pp}) cannot; use a plan without pp for it or finish_batch");
            var mesh = gen.SelectMany(c => Devices(c.Name)).ToHashSet();
            // Scoring calls (frozen models' inference on the generation group's devices) run on the rollout side too.
            var (_, _, rest) = graph.SplitRollout(c => Devices(c.Name).All(mesh.Contains));
            foreach (var c in rest.Calls)
                if (Devices(c.Name).Where(mesh.Contains).ToList() is { Count: > 0 } shared)
                    throw new ConfigException("mode", $"async runs generation ({string.Join(", ", gen.Select(g => g.Name))}) on devices of its own, but the plan also puts {c.Name} " +
                                                      $"on device(s) {string.Join(", ", shared)}{(c.Type == CallType.Inference && !graph.TrainedModels.Contains(c.Model) ? " (an inference call of a frozen model joins the generation side only when its whole mesh lies on the generation devices)" : "")}; " +
                                                      "use a plan with a separate generation group (realn plan searches one for mode: async) or mode: sync");
        }
    }

    /// <summary>Whether the plan lists exactly this stage's calls (the stage is bound: its models live on the plan's devices only).</summary>
    public bool Covers(StageConfig stage) => plan is not null && DataflowGraph.For(stage).Calls.All(c => plan.Calls.Any(p => p.Name == c.Name));

    /// <summary>Under a plan that lists this stage's calls: one replica per (role, layout,
    /// micro-batches), the train call's trainable. <paramref name="initialise"/> fills each role's
    /// source replica (its train replica, else its first) on its own shards (seeded init, init
    /// checkpoint, resume); the role's other replicas are then reallocated from it.</summary>
    /// <param name="arch">A role's architecture, head and precision.</param>
    public void Bind(StageConfig stage, Func<OptimizerSpec> optimizer, Func<string, (LlamaConfig Config, bool ScalarHead, ModelPrecision Precision)> arch,
                     Action<string, IReplica> initialise)
    {
        if (!Covers(stage)) return;  // no plan, or the plan is for another stage
        var graph = DataflowGraph.For(stage);
        int dpn = plan!.DevicesPerNode;
        // Calls of one model with the same layout and micro-batches share one replica (nothing to
        // reallocate between them); the replica of the model's train call is trainable.
        var keyOf = new Dictionary<string, (string Key, ParallelLayout Layout, int Micro)>();
        foreach (var call in graph.Calls)
        {
            var pc = plan.Call(call.Name);
            if (pc.Model != call.Model) throw new ConfigException("plan", $"call {call.Name}: the plan runs it on model '{pc.Model}', the experiment on '{call.Model}'");
            var layout = new ParallelLayout(Enumerable.Range(0, pc.Mesh.Size).Select(r => pc.Mesh.Device(r, dpn)).ToArray(), pc.Strategy.Pp, pc.Strategy.Dp, pc.Strategy.Tp);
            keyOf[call.Name] = ($"{call.Model}|{string.Join(",", layout.Devices)}|{layout.Pp}/{layout.Dp}/{layout.Tp}|{pc.MicroBatches}", layout, pc.MicroBatches);
        }
        var trainedKeys = graph.Calls.Where(c => c.Type == CallType.TrainStep).Select(c => keyOf[c.Name].Key).ToHashSet();
        var byKey = new Dictionary<string, IReplica>();
        _host ??= hosts(plan.Nodes * dpn);
        foreach (var call in graph.Calls)
        {
            var (key, layout, micro) = keyOf[call.Name];
            string role = call.Model;
            if (!_replicas.TryGetValue(role, out var reps)) _replicas[role] = reps = new ModelReplicas(role);
            if (!byKey.TryGetValue(key, out var rep))
            {
                var (config, scalarHead, precision) = arch(role);
                bool train = trainedKeys.Contains(key);
                try
                {
                    rep = _host.Create($"{call.Name} ({role})", config, scalarHead, layout, micro, train ? optimizer() : null, precision);
                }
                catch (ArgumentException e) { throw new ConfigException($"plan call {call.Name}", e.Message); }
                byKey[key] = rep;
                reps.Add(rep);
                if (train) reps.Train = rep;
            }
            _callReplica[call.Name] = rep;
            if (role == "actor" && call.Type == CallType.Generate) _actorGenerate ??= call.Name;
            else if (role == "actor") _actorAny ??= call.Name;
        }
        foreach (var reps in _replicas.Values) reps.Initialise(r => initialise(reps.Role, r));
        // A trained model's replica that serves one call (its generation, or an inference in another
        // layout) goes stale at the model's next step: its weights are given back after the call and
        // reallocated into it before the next (ModelReplicas.ReleaseAfterUse), as the planner counts them.
        if (!KeepInferenceWeights)
            foreach (var reps in _replicas.Values.Where(x => x.Train is not null))
                foreach (var rep in reps.All.Where(r => !ReferenceEquals(r, reps.Train)))
                    if (_callReplica.Values.Count(c => ReferenceEquals(c, rep)) == 1) reps.ReleaseAfterUse(rep);
    }

    /// <summary>REALN_KEEP_INFERENCE_WEIGHTS=1 keeps a trained model's inference replicas' weights
    /// between their calls (more memory than the plan's estimate, no page faults at the refill).</summary>
    internal static bool KeepInferenceWeights => Environment.GetEnvironmentVariable("REALN_KEEP_INFERENCE_WEIGHTS") == "1";

    /// <summary>How many times inference replicas of trained models gave their weights back between calls.</summary>
    public int WeightReleases => _earlierWeightReleases + _replicas.Values.Sum(r => r.Releases);
    private int _earlierWeightReleases;

    private string? _actorGenerate, _actorAny;

    /// <summary>Where the bound stage's held-out evaluation generates: the actor's generation call's
    /// replica (refreshed from the train replica first), or, where that replica is pinned (async
    /// runs) or the stage has none, the actor's train replica.</summary>
    public IModelCalls EvaluationCalls()
    {
        var reps = _replicas.GetValueOrDefault("actor") ?? throw new InvalidOperationException("the bound stage has no actor");
        if (_actorGenerate is { } g && !reps.IsPinned(_callReplica[g])) return Calls(g, "actor");
        if (reps.Train is { } t) return new ReplicaCalls(t, reps);
        return Calls(_actorAny ?? _actorGenerate!, "actor");
    }

    /// <summary>Writes <paramref name="part"/> of trained <paramref name="role"/> to <paramref name="path"/>
    /// from its train replica's shards (checkpoints, stage artifacts); nobody holds the whole model.</summary>
    public void SaveState(string role, string path, CheckpointPart part) => TrainReplica(role).SaveState(path, part);

    /// <summary>The optimizer step count of trained <paramref name="role"/>.</summary>
    public long OptimizerStep(string role) => TrainReplica(role).OptimizerStep;

    /// <summary>The train replica of <paramref name="role"/> in the bound stage.</summary>
    public IReplica TrainReplica(string role) =>
        _replicas.GetValueOrDefault(role)?.Train ?? throw new InvalidOperationException($"the bound stage has no train replica of {role}");

    /// <summary>Whether <paramref name="role"/> is a model of the bound stage (its shards live on the plan's devices).</summary>
    public bool Holds(string role) => _replicas.ContainsKey(role);

    /// <summary>A full single-device copy of <paramref name="role"/> gathered from its shards
    /// (the train replica, else its first): for tests and embedding callers only, never in the run
    /// loop. A trained bf16 model is gathered from its fp32 master; a frozen one holds bf16 only.</summary>
    public LlamaModel Gather(string role)
    {
        var reps = _replicas.GetValueOrDefault(role) ?? throw new ArgumentException($"the bound stage has no model '{role}'");
        var src = reps.Train ?? reps.All[0];
        var full = new LlamaModel(src.Config, src.ScalarHead);
        try
        {
            if (src.Precision == ModelPrecision.Bf16)
            {
                if (src.HoldsBf16Only) full.FreezeToBf16();
                else full.SetPrecision(ModelPrecision.Bf16);
            }
            src.CopyTo(full);
            return full;
        }
        catch { full.Dispose(); throw; }
    }

    /// <summary>The devices a call occupies: its plan mesh (and, when its replica may have to be
    /// reallocated from the model's train replica first, that replica's mesh, whose devices send),
    /// or the single device 0.</summary>
    public IReadOnlyCollection<int> DevicesOf(string call)
    {
        if (!_callReplica.TryGetValue(call, out var r)) return [0];
        var train = _replicas.Values.FirstOrDefault(x => x.All.Contains(r))?.Train;
        return train is null || ReferenceEquals(train, r) ? r.Layout.Devices : r.Layout.Devices.Union(train.Layout.Devices).ToArray();
    }

    /// <summary>Whether the plan laid out the bound stage's calls (else they run on the single device).</summary>
    public bool Bound => _callReplica.Count > 0;

    /// <summary>The devices of call <paramref name="call"/>'s own replica (its plan mesh), without the train replica's.</summary>
    public IReadOnlyList<int> MeshOf(string call) => _callReplica[call].Layout.Devices;

    /// <summary>Async RL: call <paramref name="call"/>'s replica (of <paramref name="role"/>) takes
    /// new weights only from <see cref="Push"/>, never before an operation.</summary>
    public void Pin(string call, string role) => _replicas[role].Pin(_callReplica[call]);

    /// <summary>Async RL: copies the train replica of <paramref name="role"/> into call <paramref name="call"/>'s replica.</summary>
    public void Push(string call, string role) => _replicas[role].Push(_callReplica[call]);

    /// <summary>Where call <paramref name="call"/> runs its model: its plan replica, or the single device.</summary>
    public IModelCalls Calls(string call, string role) =>
        _callReplica.TryGetValue(call, out var r) ? new ReplicaCalls(r, _replicas[role])
            : new SingleModelCalls(models[role], () => optims.GetValueOrDefault(role));

    /// <summary>Parameter bytes reallocated from train replicas to the other replicas of their
    /// models so far (bf16 weights for a bf16 model: half the fp32 figure).</summary>
    public long ReallocatedBytes => _releasedBytes + _replicas.Values.Sum(r => r.ReallocatedBytes);
    private long _releasedBytes;

    /// <summary>Drops the bound stage's replicas (a new stage is about to be set up); the host stays.</summary>
    public void Release()
    {
        _releasedBytes += _replicas.Values.Sum(r => r.ReallocatedBytes);
        _earlierWeightReleases += _replicas.Values.Sum(r => r.Releases);
        foreach (var r in _replicas.Values) r.Dispose();
        _replicas.Clear(); _callReplica.Clear();
    }

    public void Dispose()
    {
        foreach (var r in _replicas.Values) r.Dispose();
        _replicas.Clear();
        _host?.Dispose();
    }
}
