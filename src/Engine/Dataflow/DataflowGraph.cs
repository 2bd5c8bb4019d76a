// The RLHF dataflow (DESIGN.md "RLHF dataflow"): model function calls (MFCs) and the edges
// between them. Edges follow data keys (a call depends on the producer of each of its inputs);
// a model's first call of iteration i also waits for that model's train call of iteration i-1.
// This file is only the graph: executing it (one device here, a plan later) lives elsewhere.
using ReaLNative.Engine.Config;

namespace ReaLNative.Engine.Dataflow;

internal enum CallType { Generate, Inference, TrainStep }

/// <summary>One model function call: (model role, call type, input keys, output keys, batch size).</summary>
internal sealed record ModelFunctionCall(string Name, string Model, CallType Type, IReadOnlyList<string> Inputs,
                                       IReadOnlyList<string> Outputs, int BatchSize)
{
    public override string ToString() => $"{Name} [{Model} {Type}] ({string.Join(", ", Inputs)}) -> ({string.Join(", ", Outputs)})";
}

/// <summary>An edge of one iteration: <see cref="From"/> produces <see cref="Key"/>, which <see cref="To"/> reads.</summary>
internal readonly record struct DataEdge(string From, string To, string Key);

internal sealed class DataflowGraph
{
    /// <summary>Keys present before any call runs (the master loads them).</summary>
    public IReadOnlyList<string> SourceKeys { get; }
    public IReadOnlyList<ModelFunctionCall> Calls { get; }
    public IReadOnlyList<DataEdge> Edges { get; }

    public DataflowGraph(IReadOnlyList<string> sourceKeys, IReadOnlyList<ModelFunctionCall> calls)
    {
        SourceKeys = sourceKeys;
        Calls = calls;
        var names = new HashSet<string>(StringComparer.Ordinal);
        var producer = new Dictionary<string, string>(StringComparer.Ordinal);
        foreach (var k in sourceKeys) producer[k] = "";
        foreach (var c in calls)
        {
            if (!names.Add(c.Name)) throw new ArgumentException($"duplicate call name '{c.Name}'", nameof(calls));
            foreach (var k in c.Outputs)
                if (!producer.TryAdd(k, c.Name))
                    throw new ArgumentException($"key '{k}' is produced by both '{(producer[k] == "" ? "the source" : producer[k])}' and '{c.Name}'", nameof(calls));
        }
        var edges = new List<DataEdge>();
        foreach (var c in calls)
            foreach (var k in c.Inputs)
            {
                if (!producer.TryGetValue(k, out var from))
                    throw new ArgumentException($"call '{c.Name}' reads key '{k}' that no call produces", nameof(calls));
                if (from == c.Name) throw new ArgumentException($"call '{c.Name}' reads its own output '{k}'", nameof(calls));
                if (from != "") edges.Add(new DataEdge(from, c.Name, k));
            }
        Edges = edges;
        TopologicalOrder = Sort();
    }

    public ModelFunctionCall this[string name] =>
        Calls.FirstOrDefault(c => c.Name == name) ?? throw new KeyNotFoundException($"no call named '{name}'");

    /// <summary>Calls that must finish, in the same iteration, before <paramref name="name"/> starts.</summary>
    public IEnumerable<string> Parents(string name) => Edges.Where(e => e.To == name).Select(e => e.From).Distinct();

    /// <summary>
    /// The train call of the same model in iteration i-1 that this call of iteration i waits for
    /// (only for the model's first call in an iteration), or null.
    /// </summary>
    public string? PreviousIterationDependency(string name)
    {
        var call = this[name];
        var first = TopologicalOrder.First(c => c.Model == call.Model);
        if (first.Name != name) return null;
        return Calls.LastOrDefault(c => c.Model == call.Model && c.Type == CallType.TrainStep)?.Name;
    }

    /// <summary>Calls in an order that respects all in-iteration edges; ties keep declaration order.</summary>
    public IReadOnlyList<ModelFunctionCall> TopologicalOrder { get; }

    private List<ModelFunctionCall> Sort()
    {
        var indeg = Calls.ToDictionary(c => c.Name, c => Parents(c.Name).Count(), StringComparer.Ordinal);
        var done = new List<ModelFunctionCall>();
        var left = Calls.ToList();
        while (left.Count > 0)
        {
            var next = left.FirstOrDefault(c => indeg[c.Name] == 0)
                ?? throw new InvalidOperationException($"the dataflow has a cycle among: {string.Join(", ", left.Select(c => c.Name))}");
            left.Remove(next);
            done.Add(next);
            foreach (var e in Edges.Where(e => e.From == next.Name).Select(e => e.To).Distinct()) indeg[e]--;
        }
        return done;
    }

    /// <summary>The graph split for asynchronous RL: the generation calls (with the source keys) and
    /// the rest, which reads the generation calls' outputs as its source keys.</summary>
    public (DataflowGraph Generation, DataflowGraph Others) SplitGeneration()
    {
        var (gen, _, rest) = SplitRollout(_ => false);
        return (gen, rest);
    }

    /// <summary>The graph split for asynchronous RL with the rollout side's scoring: the generation
    /// calls; the scoring calls, which join the rollout side (inference calls of models that no call
    /// of the graph trains, reading only source keys and outputs of the rollout side, for which
    /// <paramref name="joins"/> holds: their results do not depend on the policy version, so they
    /// can run ahead with the generation); and the rest (the trainer side), whose source keys include
    /// every output of the other two. Scoring is empty when no call qualifies.</summary>
    public (DataflowGraph Generation, DataflowGraph Scoring, DataflowGraph Others) SplitRollout(Func<ModelFunctionCall, bool> joins)
    {
        var gen = Calls.Where(c => c.Type == CallType.Generate).ToList();
        if (gen.Count == 0) throw new InvalidOperationException("the graph has no generation call");
        var trained = TrainedModels.ToHashSet(StringComparer.Ordinal);
        var produced = new HashSet<string>([.. SourceKeys, .. gen.SelectMany(c => c.Outputs)], StringComparer.Ordinal);
        var scoring = new List<ModelFunctionCall>();
        foreach (var c in TopologicalOrder)
            if (c.Type == CallType.Inference && !trained.Contains(c.Model) && c.Inputs.All(produced.Contains) && joins(c))
            {
                scoring.Add(c);
                produced.UnionWith(c.Outputs);
            }
        var rest = Calls.Where(c => c.Type != CallType.Generate && !scoring.Contains(c)).ToList();
        string[] genOut = [.. SourceKeys, .. gen.SelectMany(c => c.Outputs)];
        return (new DataflowGraph(SourceKeys, gen), new DataflowGraph(genOut, scoring),
                new DataflowGraph([.. genOut, .. scoring.SelectMany(c => c.Outputs)], rest));
    }

    /// <summary>Models whose parameters some call trains.</summary>
    public IEnumerable<string> TrainedModels => Calls.Where(c => c.Type == CallType.TrainStep).Select(c => c.Model).Distinct();

    /// <summary>The graph of a stage (its algorithm, batch and whether a reward model scores the samples).</summary>
    public static DataflowGraph For(StageConfig stage) => For(stage.Algorithm, stage.Batch, stage.UsesRewardModel);

    /// <summary>The graph of one stage's algorithm (REFERENCE.md "Algorithms and their dataflow").
    /// With a rule-based reward (<paramref name="rewardModel"/> false) there is no reward call: the
    /// generation call scores its own samples on the master ("scores", ReMax's "greedy_scores").</summary>
    public static DataflowGraph For(string algorithm, BatchConfig batch, bool rewardModel = true)
    {
        int n = batch.Size;
        ModelFunctionCall C(string name, string model, CallType t, string[] i, string[] o) => new(name, model, t, i, o, n);
        string[] gen = ["sequences", "logprobs", "logits_mask", "ended_with_eos"];
        string[] scoredGen = rewardModel ? gen : [.. gen, "scores"];
        ModelFunctionCall[] Reward(string name, string seqKey, string outKey) =>
            rewardModel ? [C(name, "reward", CallType.Inference, [seqKey], [outKey])] : [];
        return algorithm switch
        {
            AlgorithmNames.Sft => new(["prompts", "answers"], [
                C("actor_train", "actor", CallType.TrainStep, ["prompts", "answers"], ["actor_stats"])]),
            AlgorithmNames.Rm => new(["prompts"], [
                C("actor_gen", "actor", CallType.Generate, ["prompts"], gen),
                C("rew_train", "reward", CallType.TrainStep, ["prompts", "sequences", "ended_with_eos"], ["reward_stats"])]),
            AlgorithmNames.Ppo => new(["prompts"], [
                C("actor_gen", "actor", CallType.Generate, ["prompts"], scoredGen),
                .. Reward("rew_inf", "sequences", "scores"),
                C("ref_inf", "ref", CallType.Inference, ["sequences", "logits_mask"], ["ref_logprobs"]),
                C("critic_inf", "critic", CallType.Inference, ["sequences"], ["values"]),
                C("actor_train", "actor", CallType.TrainStep,
                  ["sequences", "logprobs", "logits_mask", "ended_with_eos", "scores", "ref_logprobs", "values"], ["actor_stats"]),
                C("critic_train", "critic", CallType.TrainStep,
                  ["sequences", "logprobs", "ended_with_eos", "scores", "ref_logprobs", "values"], ["critic_stats"])]),
            AlgorithmNames.Grpo or AlgorithmNames.Rloo => new(["prompts"], [
                C("actor_gen", "actor", CallType.Generate, ["prompts"], scoredGen),
                .. Reward("rew_inf", "sequences", "scores"),
                C("ref_inf", "ref", CallType.Inference, ["sequences", "logits_mask"], ["ref_logprobs"]),
                C("actor_train", "actor", CallType.TrainStep,
                  ["sequences", "logprobs", "logits_mask", "ended_with_eos", "scores", "ref_logprobs"], ["actor_stats"])]),
            AlgorithmNames.Remax => new(["prompts"], [
                C("actor_gen", "actor", CallType.Generate, ["prompts"], scoredGen),
                C("actor_greedy_gen", "actor", CallType.Generate, ["prompts"],
                  rewardModel ? ["greedy_sequences", "greedy_ended_with_eos"] : ["greedy_sequences", "greedy_ended_with_eos", "greedy_scores"]),
                .. Reward("rew_inf", "sequences", "scores"),
                .. Reward("rew_greedy_inf", "greedy_sequences", "greedy_scores"),
                C("ref_inf", "ref", CallType.Inference, ["sequences", "logits_mask"], ["ref_logprobs"]),
                C("actor_train", "actor", CallType.TrainStep,
                  ["sequences", "logprobs", "logits_mask", "ended_with_eos", "scores", "greedy_scores", "ref_logprobs"], ["actor_stats"])]),
            AlgorithmNames.Dpo => new(["prompts"], [
                C("actor_gen", "actor", CallType.Generate, ["prompts"], gen),
                C("ref_inf", "ref", CallType.Inference, ["sequences"], ["ref_logprobs"]),
                C("actor_train", "actor", CallType.TrainStep, ["prompts", "sequences", "ref_logprobs"], ["actor_stats"])]),
            _ => throw new ArgumentOutOfRangeException(nameof(algorithm), algorithm, $"allowed values: {string.Join(" | ", AlgorithmNames.All)}"),
        };
    }
}
