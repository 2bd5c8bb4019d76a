// Training itself failed (not the input, not a worker): e.g. a gradient norm that is NaN or
// infinite. The CLI prints it as `realn: job failed: ...` with exit 1, never as an internal error.
namespace ReaLNative;

/// <summary>The training run cannot continue (a non-finite gradient norm, a diverged loss); the message
/// says what and where.</summary>
public sealed class TrainingFailedException(string message) : Exception(message);
