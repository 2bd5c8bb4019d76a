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

namespace ReaLNative.Engine.Stages;

/// <summary>An iteration's samples: the examples, their prompts' token ids, what generation
/// returned, the sequences as a scored batch and the decoded completions.</summary>
internal sealed record Rollout(TaskExample[] Examples, int[][] Prompts, GenerationResult Gen, ScoredBatch Scored, string[] Completions)
{
    /// <summary>Preference pairs from consecutive sample pairs of one prompt, ranked by the task's graded checker.</summary>
    public (int[] Chosen, int[] Rejected) Pairs()
    {
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
        var sb = new ScoredBatch(seqs, Enumerable.Range(s0, s1 - s0).Select(i => Prompts[i].Length).ToArray());
        return (sb, Scored.ActionCu[s0], Scored.ActionCu[s1]);
    }
}

/// <param name="stage">The stage whose calls run.</param>
/// <param name="seed">The experiment's seed (every random draw is seeded by seed, stream, stage, iteration).</param>
/// <param name="tokenizer">The run's tokenizer.</param>
/// <param name="reward">The stage's rule-based reward; null where a reward model (or, for held-out checks, exact match) scores.</param>
/// <param name="calls">Where a call (name, model role) runs its model.</param>
/// <param name="model">The full (master) model of a role.</param>
internal sealed class StageContext(StageConfig stage, long seed, CharTokenizer tokenizer, ISequenceReward? reward,
                                   Func<string, string, IModelCalls> calls, Func<string, LlamaModel> model)
{
    public StageConfig Stage => stage;
    public CharTokenizer Tokenizer => tokenizer;

    /// <summary>Where call <paramref name="call"/> runs its model <paramref name="role"/>.</summary>
    public IModelCalls Calls(string call, string role) => calls(call, role);

    /// <summary>The full model of <paramref name="role"/> on the master.</summary>
    public LlamaModel Model(string role) => model(role);

    /// <summary>BOS then the prompt's tokens.</summary>
    public static int[] PromptIds(CharTokenizer tokenizer, string prompt) => [tokenizer.Bos, .. tokenizer.Encode(prompt)];

    public int[] PromptIds(string prompt) => PromptIds(tokenizer, prompt);

    /// <summary>The iteration number the run put in the batch.</summary>
    public static int Iteration(SampleBatch b) => b.Get<int[]>("iteration")[0];

    /// <summary>Samples (or, <paramref name="greedy"/>, the greedy answers) of <paramref name="actor"/>
    /// to <paramref name="ex"/>, seeded by (seed, <paramref name="stream"/>, stage, <paramref name="it"/>).</summary>
    public Rollout Generate(IModelCalls actor, TaskExample[] ex, int it, string stream, bool greedy)
    {
        var prompts = ex.Select(e => PromptIds(e.Prompt)).ToArray();
        var gen = actor.Generate(prompts, new GenerationOptions
        {
            MaxNewTokens = stage.Batch.GenLen,
            Temperature = greedy ? 0f : (float)stage.Generation.Temperature,
            EosToken = tokenizer.Eos,
            Seed = StepRandom.Seed64(seed, stream, stage.Index, it),
            Continuous = stage.Generation.Continuous,
            BatchIndependentPrefill = stage.Generation.BatchIndependentPrefill,
        });
        var seqs = Enumerable.Range(0, ex.Length).Select(gen.Sequence).ToArray();
        var scored = new ScoredBatch(seqs, prompts.Select(p => p.Length).ToArray());
        var comps = gen.NewTokens.Select(t => tokenizer.Decode(t)).ToArray();
        return new Rollout(ex, prompts, gen, scored, comps);
    }

    /// <summary>Each completion's held-out score: the stage's rule-based reward (other than `task`),
    /// else 1 for exactly the reference answer.</summary>
    public double[] Checks(TaskExample[] ex, string[] completions, bool[] endedWithEos)
    {
        if (reward is null or TaskCheckerReward)
            return Enumerable.Range(0, ex.Length).Select(i => SyntheticTask.Exact(ex[i], completions[i])).ToArray();
        return reward.Score(SequenceRewards.Inputs(ex, completions, endedWithEos)).Select(x => (double)x).ToArray();
    }

    /// <summary>The rule-based reward of each sample of a rollout (`reward.kind` other than model, in
    /// an RL stage), computed on the master where the generated text is; null when a reward model scores them.</summary>
    public float[]? RuleScores(Rollout r)
    {
        if (!AlgorithmNames.Rewarded(stage.Algorithm) || reward is null) return null;
        return reward.Score(SequenceRewards.Inputs(r.Examples, r.Completions, r.Gen.EndedWithEos));
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
        var r = Generate(Calls(call.Name, "actor"), b.Get<TaskExample[]>("prompts"), Iteration(b), "gen", greedy: false);
        b.Set("sequences", r); b.Set("logprobs", r.Gen.LogProbs.SelectMany(x => x).ToArray());
        b.Set("logits_mask", Array.Empty<byte>()); b.Set("ended_with_eos", r.Gen.EndedWithEos);
        if (RuleScores(r) is { } scores) b.Set("scores", scores);
        double score = Checks(r.Examples, r.Completions, r.Gen.EndedWithEos).Average();
        return new Dictionary<string, double> { ["tokens"] = r.Scored.Packed.TotalTokens, ["sample_task_score"] = score,
            ["gen_len_mean"] = r.Gen.NewTokens.Average(t => t.Length) };
    };

    /// <summary>actor_greedy_gen: the greedy answers ("greedy_sequences", "greedy_ended_with_eos";
    /// "greedy_scores" too under a rule-based reward).</summary>
    public CallHandler GreedyCall() => (call, b) =>
    {
        var r = Generate(Calls(call.Name, "actor"), b.Get<TaskExample[]>("prompts"), Iteration(b), "greedy", greedy: true);
        b.Set("greedy_sequences", r); b.Set("greedy_ended_with_eos", r.Gen.EndedWithEos);
        if (RuleScores(r) is { } scores) b.Set("greedy_scores", scores);
        return new Dictionary<string, double> { ["tokens"] = r.Scored.Packed.TotalTokens };
    };

    /// <summary>rew_inf, rew_greedy_inf: the reward model's score of each sequence of <paramref name="seqKey"/>, as <paramref name="outKey"/>.</summary>
    public CallHandler RewardCall(string seqKey, string outKey) => (call, b) =>
    {
        var r = b.Get<Rollout>(seqKey);
        var (_, last) = Calls(call.Name, "reward").Values(r.Scored);
        b.Set(outKey, last);
        return new Dictionary<string, double> { ["tokens"] = r.Scored.Packed.TotalTokens, ["reward_mean"] = last.Average() };
    };

    /// <summary>ref_inf: the frozen reference's log-probs of the sampled actions ("ref_logprobs").</summary>
    public CallHandler ReferenceCall() => (call, b) =>
    {
        var r = b.Get<Rollout>("sequences");
        b.Set("ref_logprobs", Calls(call.Name, "ref").LogProbs(r.Scored, (float)stage.Generation.Temperature));
        return new Dictionary<string, double> { ["tokens"] = r.Scored.Packed.TotalTokens };
    };

    /// <summary>critic_inf: the critic's value before each sampled action ("values").</summary>
    public CallHandler CriticCall() => (call, b) =>
    {
        var r = b.Get<Rollout>("sequences");
        b.Set("values", Calls(call.Name, "critic").Values(r.Scored).ActionValues);
        return new Dictionary<string, double> { ["tokens"] = r.Scored.Packed.TotalTokens };
    };
}
