// A run's output directory cannot be used as asked. Public (hosts catch it) and thrown by
// Runs/RunDirectory.cs, so it lives here at the bottom of the folders, in the public namespace.
namespace ReaLNative;

/// <summary>The output directory of a run cannot be used as asked: it already holds a run (and
/// neither resume nor overwrite was asked), it is a file, or it is not writable. Nothing in it
/// was changed.</summary>
public sealed class RunDirectoryException(string message) : IOException(message);
