// A model worker of a multi-process job failed: its process exited, its heartbeat stopped or a
// command failed on it. The master prints who, where and during what the moment it happens
// (`realn: job failed: ...`), then tears the job down; the CLI exits 1 without repeating it.
namespace ReaLNative;

/// <summary>A model worker of the job failed; the message names the worker, its node and pid, the call
/// it was running and the last error it reported.</summary>
public sealed class WorkerFailedException(string message, Exception? inner = null) : Exception(message, inner);
