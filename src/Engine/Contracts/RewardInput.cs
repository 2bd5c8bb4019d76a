// What a user's reward function sees of one generated answer: the public type of
// TrainingExperiment.WithRewardFunction (and the fields of an external reward program's JSON line).
namespace ReaLNative;

/// <summary>One generated answer to be scored by a reward function.</summary>
/// <param name="Prompt">The prompt text (without the BOS token).</param>
/// <param name="Completion">The generated text, up to (without) the EOS token.</param>
/// <param name="EndedWithEos">Whether the model ended the answer with EOS (false: cut at batch.gen_len).</param>
/// <param name="Answer">The example's reference answer (the dataset's <c>answer</c> field; the synthetic task's exact answer), if any.</param>
/// <param name="Metadata">The record's <c>metadata</c> field as JSON text, if any.</param>
public sealed record RewardInput(string Prompt, string Completion, bool EndedWithEos, string? Answer, string? Metadata);
