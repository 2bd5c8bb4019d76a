// One exception type for every bad planner input (cluster spec, experiment, plan, profile) and for
// experiments that cannot fit: the message names the field or the model and says by how much.
namespace ReaLNative.Planner;

/// <summary>Bad planner input or an infeasible experiment; <see cref="Exception.Message"/> names the
/// offending field (e.g. <c>cluster.device_memory_gib</c>) and what is wrong with it.</summary>
public sealed class PlannerException(string message, string? file = null, int line = 0, int column = 0)
    : InputException(message, file, line, column);

internal static class Units
{
    public const double GiB = 1024.0 * 1024 * 1024;
    public static string Bytes(double b) => b >= GiB ? $"{b / GiB:F2} GiB" : $"{b / (1024 * 1024):F1} MiB";
}
