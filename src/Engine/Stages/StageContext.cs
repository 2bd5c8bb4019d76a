// What a stage's call handlers use of the run: the stage's config, where each call runs its model
// (single device or plan replica), the tokenizer and the stage's rule-based reward; and the steps
// several algorithms share: sampling a rollout, scoring it, and the generation and inference calls
// (actor_gen, actor_greedy_gen, rew_inf, ref_inf, critic_inf).
using System.Text.Json.Nodes;
using ReaLNative.Engine.Algorithms;
using ReaLNative.Engine.Config;
using ReaLNative.Engine.Dataflow;
using ReaLNative.Engine.Generation;
using ReaLNative.Engine.Model;
using ReaLNative.Engine.Tasks;
using ReaLNative.Engine.Parallelism;
using ReaLNative.Engine.Tokenization;

using ReaLNative.Interop;

namespace ReaLNative.Engine.Stages;

/// <summary>An iteration's samples: the examples, their prompts' token ids, what generation
/// returned, the sequences as a scored batch and the decoded completions (decoded on first read:
/// where the workers that hold the answers scored them, nothing on the master may need the text).</summary>
internal sealed record Rollout(TaskExample[] Examples, int[][] Prompts, GenerationResult Gen, ScoredBatch Scored, Lazy<string[]> Decoded)
{
    public Rollout(TaskExample[] examples, int[][] prompts, GenerationResult gen, ScoredBatch scored, string[] completions)
        : this(examples, prompts, gen, scored, new Lazy<string[]>(completions)) { }

    /// <summary>The generated answers' text, up to (without) EOS.</summary>
    public string[] Completions => Decoded.Value;

    /// <summary>The sequences are a dataset's chosen (even index) / rejected (odd) responses, not samples.</summary>
    public bool OfflinePairs { get; init; }

    /// <summary>Preference pairs from consecutive sample pairs of one prompt, ranked by the task's graded
    /// checker; of offline pairs, each (chosen, rejected) as the dataset gives it.</summary>
    public (int[] Chosen, int[] Rejected) Pairs()
    {
        if (OfflinePairs)
            return (Enumerable.Range(0, Examples.Length / 2).Select(p => 2 * p).ToArray(), Enumerable.Range(0, Examples.Length / 2).Select(p => 2 * p + 1).ToArray());
        var c = new List<int>(); var j = new List<int>();
        for (int i = 0; i + 1 < Examples.Length; i += 2)
        {
            double a = Grade(i) + (Gen.EndedWithEos[i] ? 0 : -1);
            double b = Grade(i + 1) + (Gen.EndedWithEos[i + 1] ? 0 : -1);
            if (a == b) continue;
            c.Add(a > b ? i : i + 1); j.Add(a > b ? i + 1 : i);
        }
        return (c.ToArray(), j.ToArray());
    }

    /// <summary>The graded score of sample <paramref name="i"/>: as the workers that hold it computed it, else from its decoded text.</summary>
    private double Grade(int i) => Gen.Scores?.Grades is { } g ? g[i] : SyntheticTask.Grade(Examples[i], Completions[i]);

    /// <summary>Whether sample <paramref name="i"/> is exactly its example's answer (the graded score
    /// is 1 exactly then: SyntheticTask.Grade), without its text where the workers graded it.</summary>
    public bool Exact(int i) => Gen.Scores?.Grades is { } g ? g[i] >= 1 : SyntheticTask.Exact(Examples[i], Completions[i]) >= 1;

    /// <summary>A batch of this rollout's samples, each the sample (<c>Tail</c> null) or its prompt
    /// followed by <c>Tail</c>: built from the lengths, and where the workers hold the samples a
    /// composite batch of theirs (Model/ScoredBatch.cs), so that neither the samples' ids nor their
    /// text are read here.</summary>
    public ScoredBatch Compose(IReadOnlyList<(int Sample, int[]? Tail)> seqs)
    {
        var packed = Scored.Packed;
        int[] lens = [.. seqs.Select(x => x.Tail is null ? packed.SeqLens[x.Sample] : Prompts[x.Sample].Length + x.Tail.Length)];
        int[] prompts = [.. seqs.Select(x => Prompts[x.Sample].Length)];
        int[] Tokens()
        {
            var all = new List<int>(lens.Sum());
            foreach (var (i, tail) in seqs)
                if (tail is null) all.AddRange(packed.Tokens.AsSpan(packed.CuSeqlens[i], packed.SeqLens[i]));
                else { all.AddRange(Prompts[i]); all.AddRange(tail); }
            return [.. all];
        }
        return new ScoredBatch(lens, prompts, Tokens)
            { Source = Scored.Source is { } s ? s with { Ids = [.. seqs.Select(x => s.Ids[x.Sample])], Tails = [.. seqs.Select(x => x.Tail)] } : null };
    }

    /// <summary>Selects sequences [s0, s1) as their own scored batch, with the matching slice [A0, A1) of per-action arrays.</summary>
    public (ScoredBatch Batch, int A0, int A1) Slice(int s0, int s1)
    {
        // From the lengths: the ids are the rollout's (read from the workers only if something reads these).
        var packed = Scored.Packed;
        int t0 = packed.CuSeqlens[s0], t1 = packed.CuSeqlens[s1];
        var sb = new ScoredBatch(packed.SeqLens[s0..s1], Enumerable.Range(s0, s1 - s0).Select(i => Prompts[i].Length).ToArray(), () => packed.Tokens[t0..t1])
            { Source = Scored.Source?.Slice(s0, s1) };
        return (sb, Scored.ActionCu[s0], Scored.ActionCu[s1]);
    }
}

/// <param name="stage">The stage whose calls run.</param>
/// <param name="seed">The experiment's seed (every random draw is seeded by seed, stream, stage, iteration).</param>
/// <param name="tokenizer">The run's tokenizer.</param>
/// <param name="reward">The stage's rule-based reward; null where a reward model (or, for held-out checks, exact match) scores.</param>
/// <param name="calls">Where a call (name, model role) runs its model.</param>
/// <param name="stream">The master's own compute stream (GAE and other per-batch math on the master).</param>
internal sealed class StageContext(StageConfig stage, long seed, RunTokenizer tokenizer, ISequenceReward? reward,
                                   Func<string, string, IModelCalls> calls, NativeStream stream)
{
    public StageConfig Stage => stage;

    /// <summary>The per-action outputs of the generation and inference calls may stay with the worker
    /// processes that hold the batch (IModelCalls.KeptLogProbs; released with the batch: a synchronous
    /// run's at its iteration's end, an async run's once the trainer consumed it, Runs/PipelineAsync.cs).</summary>
    public bool KeepOutputsOnWorkers { get; init; }
    /// <summary>The run's tokenizer, formatting this stage's examples (the chat template under `dataset.chat`).</summary>
    public RunTokenizer Tokenizer => tokenizer;

    /// <summary>Where call <paramref name="call"/> runs its model <paramref name="role"/>.</summary>
    public IModelCalls Calls(string call, string role) => calls(call, role);

    /// <summary>The master's compute stream (the master holds no model under a plan).</summary>
    public NativeStream Stream => stream;

    /// <summary>The prompt's token ids (BOS then the prompt's tokens, or its chat-template rendering).</summary>
    public int[] PromptIds(string prompt) => tokenizer.Prompt(prompt);

    /// <summary>The iteration number the run put in the batch.</summary>
    public static int Iteration(SampleBatch b) => b.Get<int[]>("iteration")[0];

    /// <summary>Samples (or, <paramref name="greedy"/>, the greedy answers) of <paramref name="actor"/>
    /// to <paramref name="ex"/>, seeded by (seed, <paramref name="stream"/>, stage, <paramref name="it"/>).
    /// With <paramref name="keepOnWorkers"/> and <paramref name="score"/>, worker processes that keep
    /// the answers also score them (the rule reward; with <see cref="WorkerScoring.RuleAndChecks"/> the
    /// held-out check too), so that <see cref="RuleScores"/> and <see cref="SampleChecks"/> need no text here.</summary>
    public Rollout Generate(IModelCalls actor, TaskExample[] ex, int it, string stream, bool greedy, bool keepOnWorkers = false, WorkerScoring score = WorkerScoring.None)
    {
        var prompts = ex.Select(e => PromptIds(e.Prompt)).ToArray();
        var opt = new GenerationOptions
        {
            MaxNewTokens = stage.Batch.GenLen,
            Temperature = greedy ? 0f : (float)stage.Generation.Temperature,
            EosToken = tokenizer.Eos,
            Seed = StepRandom.Seed64(seed, stream, stage.Index, it),
            Continuous = stage.Generation.Continuous,
            BatchIndependentPrefill = stage.Generation.BatchIndependentPrefill,
        };
        // rm and dpo rank pairs of sampled answers by their graded score.
        var scoring = keepOnWorkers && score != WorkerScoring.None && Scorer is { } desc
            ? new ScoringRequest(desc, ex, score != WorkerScoring.Rule) { Rule = score != WorkerScoring.Checks, Grades = !greedy && stage.Algorithm is AlgorithmNames.Dpo or AlgorithmNames.Rm }
            : null;
        var gen = keepOnWorkers ? actor.KeptGenerate(prompts, opt, scoring) : actor.Generate(prompts, opt);
        return Assemble(ex, gen);
    }

    /// <summary>The stage's answer scorer as the workers build it (Tasks/SequenceScoring.cs); null
    /// when its reward cannot be computed outside the master (an external program, a .NET delegate).</summary>
    private JsonObject? Scorer => (_scorer ??= new(() => SequenceScorer.Describe(tokenizer, stage.Reward, AlgorithmNames.Rewarded(stage.Algorithm) && reward is not null))).Value;
    private Lazy<JsonObject?>? _scorer;

    /// <summary>The rollout of examples <paramref name="ex"/> whose generation returned <paramref name="gen"/>.</summary>
    public Rollout Assemble(TaskExample[] ex, GenerationResult gen)
    {
        if (gen.Prompts.Length != ex.Length) throw new ArgumentException($"{gen.Prompts.Length} generated sequences for {ex.Length} examples");
        var promptLengths = gen.Prompts.Select(p => p.Length).ToArray();
        // Ids the workers kept are read from them only if something here reads them (lengths suffice for the rest).
        var scored = gen.KeptTokens is { } kept
            ? new ScoredBatch([.. promptLengths.Select((p, i) => p + gen.NewTokenCounts[i])], promptLengths, () => kept.Values) { Source = gen.Source }
            : new ScoredBatch([.. Enumerable.Range(0, ex.Length).Select(gen.Sequence)], promptLengths) { Source = gen.Source };
        var decoded = new Lazy<string[]>(() => gen.NewTokens.Select(t => tokenizer.Completion(t)).ToArray());
        return new Rollout(ex, gen.Prompts, gen, scored, decoded);
    }

    /// <summary>Each completion's held-out score: the stage's rule-based reward (other than `task`),
    /// else 1 for exactly the reference answer.</summary>
    // One reward serves the generation thread of an async run and the trainer's evaluations (an
    // external program answers one batch at a time): SequenceScorer.Checks locks it.
    public double[] Checks(TaskExample[] ex, string[] completions, bool[] endedWithEos) => SequenceScorer.Checks(reward, ex, completions, endedWithEos);

    /// <summary>The held-out checks of a rollout's samples: as the workers that hold them computed
    /// them, else <see cref="Checks"/> of the decoded completions.</summary>
    public double[] SampleChecks(Rollout r) =>
        r.Gen.Scores?.Checks is { } c ? [.. c.Select(x => (double)x)] : Checks(r.Examples, r.Completions, r.Gen.EndedWithEos);

    /// <summary>The rule-based reward of each sample of a rollout (`reward.kind` other than model, in
    /// an RL stage): as the workers that hold the answers computed it, else computed here from the
    /// decoded text; null when a reward model scores them.</summary>
    public float[]? RuleScores(Rollout r)
    {
        if (!AlgorithmNames.Rewarded(stage.Algorithm) || reward is null) return null;
        if (r.Gen.Scores is { Rule: { } s }) return s;
        lock (reward) return reward.Score(SequenceRewards.Inputs(r.Examples, r.Completions, r.Gen.EndedWithEos));
    }

    // ---------------------------------------------------------------- asynchronous RL

    /// <summary>The policy version that sampled an async batch (Runs/AsyncRollouts.cs).</summary>
    public const string BehaviourVersionKey = "behaviour_version";
    /// <summary>The policy version that sampled each new token of an async batch's "sequences"
    /// (aligned with "logprobs"); under `weight_update: interrupt` a batch's later tokens are a
    /// version newer than its <see cref="BehaviourVersionKey"/> (the oldest).</summary>
    public const string TokenVersionsKey = "token_versions";
    /// <summary>The policy version the trainer holds when it trains on an async batch.</summary>
    public const string PolicyVersionKey = "policy_version";

    /// <summary>How many policy versions the batch's samples are behind the trainer (0 in a synchronous run).</summary>
    public static int Staleness(SampleBatch b) =>
        b.Contains(PolicyVersionKey) && b.Contains(BehaviourVersionKey) ? b.Get<int[]>(PolicyVersionKey)[0] - b.Get<int[]>(BehaviourVersionKey)[0] : 0;

    /// <summary>An async batch's proximal log-probs of minibatches 1.. computed on the rollout side
    /// (Runs/AsyncRollouts.cs), set in the batch when it is handed to the trainer.</summary>
    public const string RolloutProximalKey = "rollout_proximal";

    /// <summary>The proximal policy's log-probs of the sampled actions (the trainer's weights before
    /// the iteration's first step, minibatch by minibatch) for an off-policy batch of the decoupled
    /// objective; null for an on-policy batch, whose generation log-probs are the proximal ones, and
    /// with `ppo.decoupled_loss: false` (the ratio is then against the behaviour log-probs).
    /// Minibatch 0 is left for the caller to fill from its first forward (epoch 0, minibatch 0: the
    /// same weights, so the same values), which saves one minibatch's forward. Minibatches 1.. are
    /// computed here with <paramref name="actor"/> (kept by the workers that computed them, where the
    /// run keeps outputs there), unless the rollout side computes them (the batch holds a
    /// <see cref="RolloutProximal"/> that will deliver them): the caller then calls
    /// <see cref="AwaitProximal"/> before minibatch 1. Released with the batch.</summary>
    public ProximalLogProbs? Proximal(SampleBatch b, IModelCalls actor, Rollout r)
    {
        if (Staleness(b) == 0 || !stage.Ppo.DecoupledLoss) return null;
        int n = r.Examples.Length, mb = stage.Batch.Minibatches;
        var p = new ProximalLogProbs([.. Enumerable.Range(0, mb + 1).Select(k => r.Scored.ActionCu[k * n / mb])]);
        b.OnRelease(p.Release);
        if (!b.Contains(RolloutProximalKey)) p.Set(ProximalOfLaterMinibatches(actor, r));
        return p;
    }

    /// <summary>Minibatches 1.. of <paramref name="r"/>'s log-probs under <paramref name="actor"/>'s
    /// weights, one output per minibatch: what the trainer's recompute of the proximal policy gives,
    /// computed where those weights are (the trainer, or the rollout side right after their push).
    /// Where the run keeps outputs on the workers (<see cref="KeepOutputsOnWorkers"/>), the workers
    /// that computed them keep them (IModelCalls.KeptLogProbs): the train call's loss ranks read them there.</summary>
    public ActionFloats[] ProximalOfLaterMinibatches(IModelCalls actor, Rollout r)
    {
        int n = r.Examples.Length, mb = stage.Batch.Minibatches;
        float temperature = (float)stage.Generation.Temperature;
        var parts = new List<ActionFloats>();
        try
        {
            for (int k = 1; k < mb; k++)
            {
                var (sb, _, _) = r.Slice(k * n / mb, (k + 1) * n / mb);
                parts.Add(KeepOutputsOnWorkers ? actor.KeptLogProbs(sb, temperature) : ActionFloats.Here(actor.LogProbs(sb, temperature)));
            }
        }
        catch
        {
            foreach (var p in parts) p.Release();
            throw;
        }
        return [.. parts];
    }

    /// <summary>Before minibatch 1 of the first epoch: sets minibatches 1.. of
    /// <paramref name="proximal"/> from the rollout side's computation (waiting for it), when the
    /// batch has one; nothing otherwise.</summary>
    public static void AwaitProximal(SampleBatch b, ProximalLogProbs? proximal)
    {
        if (proximal is null || !b.Contains(RolloutProximalKey)) return;
        proximal.Set(b.Get<RolloutProximal>(RolloutProximalKey).Wait());
    }

    /// <summary>Sequence rewards after DAPO's overlong penalty (ppo.overlong_buffer; unchanged when 0).</summary>
    public float[] Shaped(Rollout r, float[] scores)
    {
        var p = stage.Ppo;
        if (p.OverlongBuffer == 0) return scores;
        return scores.Select((s, i) => s + SequenceRewards.OverlongPenalty(r.Gen.NewTokenCounts[i], stage.Batch.GenLen, p.OverlongBuffer, p.OverlongPenalty)).ToArray();
    }

    // ---------------------------------------------------------------- calls several algorithms share

    /// <summary>actor_gen: samples the prompts ("sequences", "logprobs", "logits_mask",
    /// "ended_with_eos"; "scores" too under a rule-based reward).</summary>
    public CallHandler SampleCall() => (call, b) =>
    {
        var r = Generate(Calls(call.Name, "actor"), b.Get<TaskExample[]>("prompts"), Iteration(b), "gen", greedy: false, KeepOutputsOnWorkers, WorkerScoring.RuleAndChecks);
        b.Set("sequences", r);
        if (r.Gen.KeptTokens is { } ids) b.OnRelease(ids.Release);   // the ids stay readable until the iteration ends
        if (r.Gen.KeptLogProbs is { } kept) b.Set("logprobs", kept);   // left with the workers (fetched on first read)
        else
        {
            var logProbs = r.Gen.LogProbs.SelectMany(x => x).ToArray();
            // Worker processes keep the generation's log-probs with its sequences: this array is theirs.
            r.Scored.Source?.AttachGenerationLogProbs(logProbs);
            b.Set("logprobs", logProbs);
        }
        b.Set("logits_mask", Array.Empty<byte>()); b.Set("ended_with_eos", r.Gen.EndedWithEos);
        if (RuleScores(r) is { } scores) b.Set("scores", scores);
        double score = SampleChecks(r).Average();
        return new Dictionary<string, double> { ["tokens"] = r.Scored.Packed.TotalTokens, ["sample_task_score"] = score,
            ["gen_len_mean"] = r.Gen.NewTokenCounts.Average() };
    };

    /// <summary>actor_gen of rm and dpo: the actor's samples, or, with a dataset of chosen / rejected
    /// pairs, those responses (<see cref="PairsCall"/>).</summary>
    public CallHandler SampleOrPairsCall() => stage.Dataset is { Fields.OfflinePairs: true } ? PairsCall() : SampleCall();

    /// <summary>The iteration's offline pairs as a rollout: each prompt's two copies hold its chosen
    /// and its rejected response (tokens, then EOS), nothing is generated.</summary>
    public CallHandler PairsCall() => (call, b) =>
    {
        var ex = b.Get<TaskExample[]>("prompts");
        var prompts = ex.Select(e => PromptIds(e.Prompt)).ToArray();
        var responses = ex.Select((e, i) => tokenizer.Response(e.Prompt, i % 2 == 0 ? e.Chosen! : e.Rejected!)).ToArray();
        var gen = new GenerationResult
        {
            Prompts = prompts, NewTokens = responses, LogProbs = responses.Select(t => new float[t.Length]).ToArray(),
            EndedWithEos = responses.Select(_ => true).ToArray(),
        };
        var seqs = Enumerable.Range(0, ex.Length).Select(gen.Sequence).ToArray();
        var r = new Rollout(ex, prompts, gen, new ScoredBatch(seqs, prompts.Select(p => p.Length).ToArray()),
                            ex.Select((e, i) => i % 2 == 0 ? e.Chosen! : e.Rejected!).ToArray()) { OfflinePairs = true };
        b.Set("sequences", r); b.Set("logprobs", gen.LogProbs.SelectMany(x => x).ToArray());
        b.Set("logits_mask", Array.Empty<byte>()); b.Set("ended_with_eos", gen.EndedWithEos);
        return new Dictionary<string, double> { ["tokens"] = r.Scored.Packed.TotalTokens, ["offline_pairs"] = ex.Length / 2 };
    };

    /// <summary>actor_greedy_gen: the greedy answers ("greedy_sequences", "greedy_ended_with_eos";
    /// "greedy_scores" too under a rule-based reward).</summary>
    public CallHandler GreedyCall() => (call, b) =>
    {
        var r = Generate(Calls(call.Name, "actor"), b.Get<TaskExample[]>("prompts"), Iteration(b), "greedy", greedy: true, KeepOutputsOnWorkers, WorkerScoring.Rule);
        if (r.Gen.KeptLogProbs is { } kept) b.OnRelease(kept.Release);   // nothing reads the greedy answers' log-probs
        if (r.Gen.KeptTokens is { } ids) b.OnRelease(ids.Release);
        b.Set("greedy_sequences", r); b.Set("greedy_ended_with_eos", r.Gen.EndedWithEos);
        if (RuleScores(r) is { } scores) b.Set("greedy_scores", scores);
        return new Dictionary<string, double> { ["tokens"] = r.Scored.Packed.TotalTokens };
    };

    /// <summary>rew_inf, rew_greedy_inf: the reward model's score of each sequence of <paramref name="seqKey"/>, as <paramref name="outKey"/>.</summary>
    public CallHandler RewardCall(string seqKey, string outKey) => (call, b) =>
    {
        var r = b.Get<Rollout>(seqKey);
        float[] last;
        if (KeepOutputsOnWorkers)
        {
            // Only the sequence scores are read: the per-action values never come to the master.
            (var actions, last) = Calls(call.Name, "reward").KeptValues(r.Scored);
            actions.Release();
        }
        else (_, last) = Calls(call.Name, "reward").Values(r.Scored);
        b.Set(outKey, last);
        return new Dictionary<string, double> { ["tokens"] = r.Scored.Packed.TotalTokens, ["reward_mean"] = last.Average() };
    };

    /// <summary>ref_inf: the frozen reference's log-probs of the sampled actions ("ref_logprobs").</summary>
    public CallHandler ReferenceCall() => (call, b) =>
    {
        var r = b.Get<Rollout>("sequences");
        float temperature = (float)stage.Generation.Temperature;
        b.Set("ref_logprobs", KeepOutputsOnWorkers ? Calls(call.Name, "ref").KeptLogProbs(r.Scored, temperature) : Calls(call.Name, "ref").LogProbs(r.Scored, temperature));
        return new Dictionary<string, double> { ["tokens"] = r.Scored.Packed.TotalTokens };
    };

    /// <summary>critic_inf: the critic's value before each sampled action ("values").</summary>
    public CallHandler CriticCall() => (call, b) =>
    {
        var r = b.Get<Rollout>("sequences");
        // Nothing reads the critic's last scores: kept, they do not come back either.
        b.Set("values", KeepOutputsOnWorkers ? Calls(call.Name, "critic").KeptActionValues(r.Scored) : Calls(call.Name, "critic").Values(r.Scored).ActionValues);
        return new Dictionary<string, double> { ["tokens"] = r.Scored.Packed.TotalTokens };
    };
}

/// <summary>What the workers that keep a generation's answers score of them (StageContext.Generate).</summary>
internal enum WorkerScoring
{
    /// <summary>Nothing: the master scores the text.</summary>
    None,
    /// <summary>The stage's rule reward.</summary>
    Rule,
    /// <summary>The rule reward and the held-out check (`sample_task_score`).</summary>
    RuleAndChecks,
    /// <summary>The held-out check only (a held-out evaluation's task_score).</summary>
    Checks,
}
