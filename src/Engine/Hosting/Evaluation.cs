// Held-out evaluation of a trained policy for hosts (`realn eval` too): greedy answers to a stage's
// held-out set (its dataset's held_out file, or the synthetic task's held-out draw), scored as a
// run's eval lines score them: the stage's rule-based reward, else exact match with the answer.
using ReaLNative.Engine.Checkpoints;
using ReaLNative.Engine.Config;
using ReaLNative.Engine.Runs;

namespace ReaLNative;

/// <summary>Scores a trained policy on an experiment stage's held-out set.</summary>
public static class Evaluation
{
    /// <summary>Loads the policy in <paramref name="modelDirectory"/> (Hugging Face layout) and scores its greedy
    /// answers to stage <paramref name="stage"/>'s held-out set. Writes nothing.</summary>
    /// <param name="experiment">The experiment whose stage gives the held-out set and the scorer.</param>
    /// <param name="modelDirectory">A model folder (config.json + safetensors), for example a checkpoint's actor/.</param>
    /// <param name="stage">0-based stage.</param>
    /// <exception cref="ArgumentOutOfRangeException">No such stage.</exception>
    /// <exception cref="ArgumentException">The stage has no actor (an rm stage).</exception>
    /// <exception cref="InvalidDataException">The model folder is incomplete or corrupt.</exception>
    /// <exception cref="InputException">The model folder carries a tokenizer.json other than the experiment models' tokenizer, or its vocabulary is smaller than that tokenizer's.</exception>
    public static HeldOutScore HeldOut(TrainingExperiment experiment, string modelDirectory, int stage)
    {
        ArgumentNullException.ThrowIfNull(experiment);
        ArgumentException.ThrowIfNullOrWhiteSpace(modelDirectory);
        var cfg = experiment.Config;
        if (stage < 0 || stage >= cfg.Stages.Count)
            throw new ArgumentOutOfRangeException(nameof(stage), stage, $"the experiment has stages 0..{cfg.Stages.Count - 1}");
        var st = cfg.Stages[stage];
        if (!st.Models.ContainsKey("actor")) throw new ArgumentException($"a {st.Algorithm} stage has no actor to evaluate", nameof(stage));
        using var model = Safetensors.Load(modelDirectory, scalarHead: false);
        // The pipeline is only asked to evaluate: it writes nothing (no run directory is created).
        using var pipeline = new Pipeline(cfg, Path.Combine(Path.GetTempPath(), "realn-eval-unused"));
        // A model folder that carries its tokenizer (a checkpoint of a run) must have been trained with the experiment's.
        string own = Path.Combine(modelDirectory, "tokenizer.json");
        if (File.Exists(own))
        {
            var files = pipeline.Tokenizer.Files();
            if (files.Count == 0 || !File.ReadAllBytes(files[0]).AsSpan().SequenceEqual(File.ReadAllBytes(own)))
                throw new InputException($"{own} is not the tokenizer of the experiment's models ({(files.Count == 0 ? "the character tokenizer: no tokenizer.json in their folder" : files[0])}): the model was trained with another tokenizer");
        }
        if (model.Config.Vocab < pipeline.Tokenizer.VocabSize)
            throw new InputException($"{modelDirectory}: vocab_size {model.Config.Vocab} is smaller than the experiment's tokenizer's {pipeline.Tokenizer.VocabSize} ids");
        var r = pipeline.EvaluateHeldOut(model, st);
        return new HeldOutScore
        {
            Stage = stage, Algorithm = st.Algorithm, HeldOutFile = st.Dataset?.HeldOut,
            Scorer = st.Reward.RuleBased && st.Reward.Kind != RewardConfig.Task ? st.Reward.Kind : "exact_match",
            Score = r.Score, Right = r.Right, RecordsSkipped = r.RecordsSkipped,
            Answers = r.Examples.Select((e, i) => new HeldOutAnswer(e.Prompt, r.Completions[i], r.EndedWithEos[i], r.Scores[i])).ToArray(),
        };
    }
}

/// <summary>A policy's held-out score (<see cref="Evaluation.HeldOut"/>).</summary>
public sealed record HeldOutScore
{
    /// <summary>The stage whose held-out set and scorer were used.</summary>
    public required int Stage { get; init; }
    /// <summary>That stage's algorithm.</summary>
    public required string Algorithm { get; init; }
    /// <summary>The held-out examples file (absolute), or null for the synthetic task's held-out draw.</summary>
    public string? HeldOutFile { get; init; }
    /// <summary>What scored the answers: the stage's rule-based reward, or <c>exact_match</c>.</summary>
    public required string Scorer { get; init; }
    /// <summary>Mean score in [0, 1].</summary>
    public required double Score { get; init; }
    /// <summary>Answers scored 1.</summary>
    public required int Right { get; init; }
    /// <summary>Records of the held-out file skipped as malformed.</summary>
    public required long RecordsSkipped { get; init; }
    /// <summary>Every held-out example's answer, in order.</summary>
    public required IReadOnlyList<HeldOutAnswer> Answers { get; init; }
}

/// <summary>One held-out example's greedy answer.</summary>
/// <param name="Prompt">The prompt text.</param>
/// <param name="Completion">The answer, up to (without) EOS.</param>
/// <param name="EndedWithEos">Whether the model ended it with EOS (false: cut at the length limit).</param>
/// <param name="Score">Its score.</param>
public sealed record HeldOutAnswer(string Prompt, string Completion, bool EndedWithEos, double Score);
