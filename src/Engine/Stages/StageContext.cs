// What a stage's call handlers use of the run: the stage's config, where each call runs its model
// (single device or plan replica), the tokenizer and the stage's rule-based reward; and the steps
// several algorithms share: sampling a rollout, scoring it, and the generation and inference calls
// (actor_gen, actor_greedy_gen, rew_inf, ref_inf, critic_inf).
using ReaLNative.Engine.Algorithms;
using ReaLNative.Engine.Config;
using ReaLNative.Engine.Dataflow;
using ReaLNative.Engine.Generation;
using ReaLNative.Engine.Model;
using ReaLNative.Engine.Tasks;
using ReaLNative.Engine.Tokenization;

using ReaLNative.Interop;

namespace ReaLNative.Engine.Stages;

/// <summary>An iteration's samples: the examples, their prompts' token ids, what generation
/// returned, the sequences as a scored batch and the decoded completions.</summary>
internal sealed record Rollout(TaskExample[] Examples, int[][] Prompts, GenerationResult Gen, ScoredBatch Scored, string[] Completions)
{
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
            double a = SyntheticTask.Grade(Examples[i], Completions[i]) + (Gen.EndedWithEos[i] ? 0 : -1);
            double b = SyntheticTask.Grade(Examples[i + 1], Completions[i + 1]) + (Gen.EndedWithEos[i + 1] ? 0 : -1);
            if (a == b) continue;
            c.Add(a > b ? i : i + 1); j.Add(a > b ? i + 1 : i);
        }
        return (c.ToArray(), j.ToArray());
    }

    /// <summary>Selects sequences [s0, s1) as their own scored batch, with the matching slice [A0, A1) of per-action arrays.</summary>
    public (ScoredBatch Batch, int A0, int A1) Slice(int s0, int s1)
    {
        var seqs = Enumerable.Range(s0, s1 - s0).Select(Gen.Sequence).ToArray();
        var sb = new ScoredBatch(seqs, Enumerable.Range(s0, s1 - s0).Select(i => Prompts[i].Length).ToArray()) { Source = Scored.Source?.Slice(s0, s1) };
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
    /// to <paramref name="ex"/>, seeded by (seed, <paramref name="stream"/>, stage, <paramref name="it"/>).</summary>
    public Rollout Generate(IModelCalls actor, TaskExample[] ex, int it, string stream, bool greedy, bool keepOnWorkers = false)
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
        var gen = keepOnWorkers ? actor.KeptGenerate(prompts, opt) : actor.Generate(prompts, opt);
        return Assemble(ex, gen);
    }

    /// <summary>The rollout of examples <paramref name="ex"/> whose generation returned <paramref name="gen"/>.</summary>
    public Rollout Assemble(TaskExample[] ex, GenerationResult gen)
    {
        if (gen.Prompts.Length != ex.Length) throw new ArgumentException($"{gen.Prompts.Length} generated sequences for {ex.Length} examples");
        var seqs = Enumerable.Range(0, ex.Length).Select(gen.Sequence).ToArray();
        var scored = new ScoredBatch(seqs, gen.Prompts.Select(p => p.Length).ToArray()) { Source = gen.Source };
        var comps = gen.NewTokens.Select(t => tokenizer.Completion(t)).ToArray();
        return new Rollout(ex, gen.Prompts, gen, scored, comps);
    }

    /// <summary>Each completion's held-out score: the stage's rule-based reward (other than `task`),
    /// else 1 for exactly the reference answer.</summary>
    public double[] Checks(TaskExample[] ex, string[] completions, bool[] endedWithEos)
    {
        if (reward is null or TaskCheckerReward)
            return Enumerable.Range(0, ex.Length).Select(i => SyntheticTask.Exact(ex[i], completions[i])).ToArray();
        // One reward serves the generation thread of an async run and the trainer's evaluations (an
        // external program answers one batch at a time).
        lock (reward) return reward.Score(SequenceRewards.Inputs(ex, completions, endedWithEos)).Select(x => (double)x).ToArray();
    }

    /// <summary>The rule-based reward of each sample of a rollout (`reward.kind` other than model, in
    /// an RL stage), computed on the master where the generated text is; null when a reward model scores them.</summary>
    public float[]? RuleScores(Rollout r)
    {
        if (!AlgorithmNames.Rewarded(stage.Algorithm) || reward is null) return null;
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
    /// same weights, so the same values), which saves one minibatch's forward. When the rollout side
    /// computes minibatches 1.. (the batch holds a <see cref="RolloutProximal"/> that will deliver
    /// them), they are left too: the caller calls <see cref="AwaitProximal"/> before minibatch 1.</summary>
    public float[]? ProximalLogProbs(SampleBatch b, IModelCalls actor, Rollout r)
    {
        if (Staleness(b) == 0 || !stage.Ppo.DecoupledLoss) return null;
        if (b.Contains(RolloutProximalKey)) return new float[r.Scored.ActionCu[r.Examples.Length]];
        return ProximalOfLaterMinibatches(actor, r);
    }

    /// <summary>Minibatches 1.. of <paramref name="r"/>'s log-probs under <paramref name="actor"/>'s
    /// weights (minibatch 0's range left 0): what the trainer's recompute of the proximal policy gives,
    /// computed where those weights are (the trainer, or the rollout side right after their push).</summary>
    public float[] ProximalOfLaterMinibatches(IModelCalls actor, Rollout r)
    {
        int n = r.Examples.Length, mb = stage.Batch.Minibatches;
        var all = new float[r.Scored.ActionCu[n]];
        for (int k = 1; k < mb; k++)
        {
            var (sb, a0, _) = r.Slice(k * n / mb, (k + 1) * n / mb);
            actor.LogProbs(sb, (float)stage.Generation.Temperature).CopyTo(all, a0);
        }
        return all;
    }

    /// <summary>Before minibatch 1 of the first epoch: fills minibatches 1.. of
    /// <paramref name="proximal"/> from the rollout side's computation (waiting for it), when the
    /// batch has one; nothing otherwise.</summary>
    public static void AwaitProximal(SampleBatch b, float[]? proximal, Rollout r, int minibatches)
    {
        if (proximal is null || !b.Contains(RolloutProximalKey)) return;
        var from = b.Get<RolloutProximal>(RolloutProximalKey).Wait();
        int start = r.Scored.ActionCu[r.Examples.Length / minibatches];
        if (from.Length != proximal.Length) throw new InvalidOperationException($"the rollout side's proximal log-probs have {from.Length} values for {proximal.Length} actions");
        Array.Copy(from, start, proximal, start, proximal.Length - start);
    }

    /// <summary>Sequence rewards after DAPO's overlong penalty (ppo.overlong_buffer; unchanged when 0).</summary>
    public float[] Shaped(Rollout r, float[] scores)
    {
        var p = stage.Ppo;
        if (p.OverlongBuffer == 0) return scores;
        return scores.Select((s, i) => s + SequenceRewards.OverlongPenalty(r.Gen.NewTokens[i].Length, stage.Batch.GenLen, p.OverlongBuffer, p.OverlongPenalty)).ToArray();
    }

    // ---------------------------------------------------------------- calls several algorithms share

    /// <summary>actor_gen: samples the prompts ("sequences", "logprobs", "logits_mask",
    /// "ended_with_eos"; "scores" too under a rule-based reward).</summary>
    public CallHandler SampleCall() => (call, b) =>
    {
        var r = Generate(Calls(call.Name, "actor"), b.Get<TaskExample[]>("prompts"), Iteration(b), "gen", greedy: false, KeepOutputsOnWorkers);
        b.Set("sequences", r);
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
        double score = Checks(r.Examples, r.Completions, r.Gen.EndedWithEos).Average();
        return new Dictionary<string, double> { ["tokens"] = r.Scored.Packed.TotalTokens, ["sample_task_score"] = score,
            ["gen_len_mean"] = r.Gen.NewTokens.Average(t => t.Length) };
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
        var r = Generate(Calls(call.Name, "actor"), b.Get<TaskExample[]>("prompts"), Iteration(b), "greedy", greedy: true, KeepOutputsOnWorkers);
        if (r.Gen.KeptLogProbs is { } kept) b.OnRelease(kept.Release);   // nothing reads the greedy answers' log-probs
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
