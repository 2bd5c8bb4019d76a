// A benchmark or profile that cannot be trusted: the machine was too busy to time what was asked.
// The CLI prints it as one line with exit code 1 (never as an internal error).
namespace ReaLNative.Diagnostics;

/// <summary>A measurement that cannot be trusted (the machine too busy to time what was asked);
/// printed as one line, exit code 1.</summary>
public sealed class MeasurementException(string message) : Exception(message);
