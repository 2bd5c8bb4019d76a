// Scoring generated answers where their tokens are: in a synchronous run with worker processes, the
// workers that hold a kept generation's sequences (its collecting ranks) decode each completion with
// the run's tokenizer and compute the stage's rule reward and the held-out check that the
// `sample_task_score` metric averages, and send only those per-sequence scalars to the master. The
// master describes the tokenizer and the reward once (SequenceScorer.Describe; a worker builds the
// scorer once per description) and sends each data-parallel part of a request the reference answers
// of its prompts' examples with the prompts: the pure rules, the held-out check and the graded score
// read nothing else of an example (not its prompt text, not its metadata), which stay on the master. Rewards that call out of the run (an external program, a .NET
// delegate) are not described: the master scores those itself, as before.
using System.Text.Json.Nodes;
using ReaLNative.Engine.Config;
using ReaLNative.Engine.Tokenization;

namespace ReaLNative.Engine.Tasks;

/// <summary>What the master asks of the workers that generate a batch: score each answer to
/// <paramref name="Examples"/> (in prompt order) with the scorer <paramref name="Scorer"/> describes;
/// <paramref name="Checks"/>: the held-out check too (else the rule reward only).</summary>
internal sealed record ScoringRequest(JsonObject Scorer, IReadOnlyList<TaskExample> Examples, bool Checks)
{
    /// <summary>The graded score too (SyntheticTask.Grade: what ranks sampled answers into preference
    /// pairs for rm and dpo, Rollout.Pairs).</summary>
    public bool Grades { get; init; }
    /// <summary>The stage's rule reward, when its scorer computes one (false: a held-out evaluation's checks only).</summary>
    public bool Rule { get; init; } = true;
}

/// <summary>Per sequence, in prompt order: the rule reward (null when the stage has none to compute
/// there), the held-out check and the graded score (each null when not asked).</summary>
internal sealed record SequenceScores(float[]? Rule, float[]? Checks, double[]? Grades = null);

/// <summary>Decodes completions and scores them: the rule reward (StageContext.RuleScores) and the
/// held-out check (StageContext.Checks), bit for bit what the master computes of the same tokens.</summary>
internal sealed class SequenceScorer(RunTokenizer tokenizer, ISequenceReward? reward, bool rule)
{
    /// <summary>The scorer of a stage as JSON, or null when it cannot run outside the master (a
    /// reward that is not a pure rule). <paramref name="rule"/>: the stage scores its samples with
    /// <paramref name="reward"/> (an RL stage); the held-out check uses it in any stage, exact match
    /// when it is the reward model or `task`.</summary>
    public static JsonObject? Describe(RunTokenizer tokenizer, RewardConfig reward, bool rule)
    {
        if (!reward.UsesModel && !RuleRewards.Pure(reward)) return null;
        return new JsonObject
        {
            ["tokenizer"] = tokenizer.Describe(),
            ["reward"] = reward.UsesModel ? null : RuleRewards.Describe(reward),
            ["rule"] = rule && !reward.UsesModel,
        };
    }

    /// <summary>The scorer <see cref="Describe"/> described.</summary>
    public static SequenceScorer FromDescription(JsonNode? j, string where)
    {
        var tok = RunTokenizer.FromDescription(j?["tokenizer"], $"{where}.tokenizer");
        var reward = j!["reward"] is { } r ? RuleRewards.Create(RuleRewards.Parse(r, $"{where}.reward")) : null;
        return new SequenceScorer(tok, reward, j["rule"]?.GetValue<bool>() ?? throw new InvalidDataException($"{where}: 'rule' missing"));
    }

    /// <summary>An example as the scoring workers know it: its reference answer only (the pure
    /// rules, Exact and Grade read nothing else; a rule that read the prompt or the metadata would
    /// not be pure in this sense and would stay on the master).</summary>
    public static TaskExample Example(string answer) => new("", answer);

    /// <summary>The scores of answers <paramref name="newTokens"/> to <paramref name="examples"/>.</summary>
    public SequenceScores Score(IReadOnlyList<TaskExample> examples, IReadOnlyList<int[]> newTokens, IReadOnlyList<bool> endedWithEos, bool checks, bool grades = false, bool withRule = true)
    {
        bool ruleHere = withRule && rule;
        var completions = newTokens.Select(t => tokenizer.Completion(t)).ToArray();
        float[]? scores = reward is not null && (ruleHere || (checks && reward is not TaskCheckerReward))
            ? reward.Score(RuleRewards.Inputs(examples, completions, endedWithEos)) : null;
        float[]? c = null;
        if (checks)
            c = reward is null or TaskCheckerReward ? [.. examples.Select((e, i) => (float)SyntheticTask.Exact(e, completions[i]))] : scores;
        double[]? g = grades ? [.. examples.Select((e, i) => SyntheticTask.Grade(e, completions[i]))] : null;
        return new SequenceScores(ruleHere ? scores : null, c, g);
    }

    /// <summary>Each completion's held-out score: <paramref name="reward"/> (other than `task`), else
    /// 1 for exactly the reference answer (StageContext.Checks).</summary>
    public static double[] Checks(ISequenceReward? reward, IReadOnlyList<TaskExample> ex, IReadOnlyList<string> completions, IReadOnlyList<bool> endedWithEos)
    {
        if (reward is null or TaskCheckerReward)
            return [.. Enumerable.Range(0, ex.Count).Select(i => SyntheticTask.Exact(ex[i], completions[i]))];
        lock (reward) return [.. reward.Score(RuleRewards.Inputs(ex, completions, endedWithEos)).Select(x => (double)x)];
    }
}
