// The examples a run feeds its stages: each stage's training examples (its dataset file, streamed
// from the iteration it starts at, or the synthetic task's draw) and its held-out examples for
// evaluation, with the check that makes a dataset record bad and the count of skipped records.
using ReaLNative.Engine.Algorithms;
using ReaLNative.Engine.Config;
using ReaLNative.Engine.Data;
using ReaLNative.Engine.Stages;
using ReaLNative.Engine.Tasks;
using ReaLNative.Engine.Tokenization;

namespace ReaLNative.Engine.Runs;

/// <param name="note">Receives the first few skipped records' messages.</param>
/// <param name="tokenizer">The run's tokenizer (each stage formats with it, through the chat template under `dataset.chat`).</param>
internal sealed class StageExamples(ExperimentConfig cfg, SyntheticTask task, RunTokenizer tokenizer, Action<string>? note) : IDisposable
{
    private IExampleSource? _source;     // the current stage's training examples
    private IStageAlgorithm? _algorithm;
    private readonly Dictionary<int, TaskExample[]> _heldOuts = new();
    private readonly Dictionary<int, long> _heldOutSkipped = new();
    private int _skipNotes;

    /// <summary>Bad training records of the current stage skipped so far (metrics.jsonl's records_skipped).</summary>
    public long RecordsSkipped => _source!.Skipped;

    /// <summary>Bad records skipped while reading stage <paramref name="stage"/>'s held-out examples.</summary>
    public long HeldOutSkipped(StageConfig stage) => _heldOutSkipped.GetValueOrDefault(stage.Index);

    /// <summary>Opens stage <paramref name="stage"/>'s training examples from iteration
    /// <paramref name="firstIteration"/> on; <paramref name="reward"/> (the stage's rule-based reward)
    /// refuses records it cannot score.</summary>
    public void Open(StageConfig stage, IStageAlgorithm algorithm, ISequenceReward? reward, int firstIteration)
    {
        _source?.Dispose(); _source = null;
        _algorithm = algorithm;
        _source = stage.Dataset is { } ds
            ? new ExampleStream(TrainSpec(stage, ds, reward), firstIteration, PromptsPerIteration(stage, algorithm))
            : new SyntheticSource(task, cfg.Seed, stage.Index);
    }

    private static int PromptsPerIteration(StageConfig stage, IStageAlgorithm algorithm) => Math.Max(1, stage.Batch.Size / algorithm.CopiesPerPrompt);

    /// <summary>The iteration's prompts: batch.size examples (rm, dpo: size/2 prompts sampled twice;
    /// grpo: size/group_size prompts sampled group_size times), consecutive copies.</summary>
    public TaskExample[] Take(StageConfig stage, int it)
    {
        int copies = _algorithm!.CopiesPerPrompt;
        return _source!.Take(it, PromptsPerIteration(stage, _algorithm)).SelectMany(e => Enumerable.Repeat(e, copies)).ToArray();
    }

    /// <summary>How a stage reads a dataset file: the fields its algorithm and reward need, and the
    /// check that makes a record bad (text the tokenizer cannot encode, a prompt longer than
    /// batch.prompt_len, an SFT response longer than batch.gen_len, an answer the reward cannot use).</summary>
    private DatasetSpec Spec(StageConfig stage, DatasetConfig ds, string path, string format, bool heldOut, ISequenceReward? reward)
    {
        var tok = tokenizer.WithChat(ds.Chat);
        string? Check(TaskExample e)
        {
            int promptTokens, targetTokens = 0;
            string target = "response";
            try
            {
                promptTokens = tok.Prompt(e.Prompt).Length;
                if (!heldOut && stage.Algorithm == AlgorithmNames.Sft) targetTokens = tok.Response(e.Prompt, e.Target).Length;
                if (!heldOut && ds.Fields.OfflinePairs)
                {
                    int c = tok.Response(e.Prompt, e.Chosen!).Length, r = tok.Response(e.Prompt, e.Rejected!).Length;
                    (targetTokens, target) = c >= r ? (c, "chosen response") : (r, "rejected response");
                }
            }
            catch (ArgumentException x) { return $"{x.Message.Split(" (Parameter")[0]} (the tokenizer of this run cannot encode it)"; }
            catch (InvalidDataException x) { return x.Message; }
            catch (ChatTemplateException x) { return $"chat template: {x.Message}"; }
            if (promptTokens == 0)
                return "prompt encodes to no tokens (and the tokenizer adds no BOS): generation needs at least one";
            if (promptTokens > stage.Batch.PromptLen)
                return $"prompt is {promptTokens} tokens{(tok.Chat ? " in the chat template" : " with BOS")}, longer than batch.prompt_len ({stage.Batch.PromptLen})";
            if (targetTokens > stage.Batch.GenLen)
                return $"{target} is {targetTokens} tokens with EOS, longer than batch.gen_len ({stage.Batch.GenLen})";
            return reward?.CheckExample(e);
        }
        void Skipped(string what)
        {
            if (_skipNotes++ < 5) note?.Invoke($"dataset: skipped {what}" + (_skipNotes == 5 ? " (further skips are only counted: records_skipped in metrics.jsonl)" : ""));
        }
        return new DatasetSpec(path, format, ds.Fields, DatasetConfig.RequiredFields(stage.Algorithm, stage.Reward, heldOut, ds.Fields.OfflinePairs),
                               ds.ShuffleBuffer, ds.Seed ?? cfg.Seed, stage.Index, ds.SkipBadRecords, Check, Skipped);
    }

    private DatasetSpec TrainSpec(StageConfig stage, DatasetConfig ds, ISequenceReward? reward) =>
        Spec(stage, ds, ds.Train, ds.Format, heldOut: false, reward);

    /// <summary>The stage's held-out examples: the first eval.size usable records of its held-out
    /// file, or the synthetic task's fixed held-out draw.</summary>
    public TaskExample[] HeldOut(StageConfig stage, ISequenceReward? reward)
    {
        if (_heldOuts.TryGetValue(stage.Index, out var h)) return h;
        if (stage.Dataset is { HeldOut: { } path } ds)
        {
            var (ex, skipped) = ExampleStream.ReadFirst(Spec(stage, ds, path, ds.HeldOutFormat!, heldOut: true, reward), cfg.Eval.Size);
            _heldOutSkipped[stage.Index] = skipped;
            h = ex;
        }
        else h = task.HeldOut(cfg.Seed, cfg.Eval.Size);
        return _heldOuts[stage.Index] = h;
    }

    public void Dispose() => _source?.Dispose();
}
