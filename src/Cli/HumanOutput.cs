// Human output of every command, readable in a terminal and in a file: Spectre.Console wraps at the
// console width, which is 80 columns when output is redirected, splitting names, numbers and
// addresses; redirected output gets no wrapping (JSON output, --json, stays the machine interface).
// Numbers are rounded for people here; metrics.jsonl / summary.json keep the full values.
using System.Globalization;
using System.Text.Json.Nodes;
using Spectre.Console;

namespace ReaLNative.Cli;

internal static class HumanOutput
{
    /// <summary>Width given to Spectre when stdout is not a terminal: wide enough that no table or
    /// line of ours is ever wrapped, small enough for Spectre's layout arithmetic.</summary>
    public const int UnwrappedWidth = 4096;

    public static void Configure()
    {
        if (Console.IsOutputRedirected)
        {
            AnsiConsole.Profile.Width = UnwrappedWidth;
            AnsiConsole.Profile.Capabilities.Ansi = false;
            AnsiConsole.Profile.Capabilities.Links = false;
        }
    }

    /// <summary>A figure for people: 3 significant decimals (fewer digits for large values), "n/a" for none.</summary>
    public static string Num(double? v) => v is not { } x || !double.IsFinite(x) ? "n/a"
        : x.ToString(Math.Abs(x) >= 100 ? "F0" : Math.Abs(x) >= 10 ? "F1" : "F3", CultureInfo.InvariantCulture);

    public static string Num(JsonNode? v) => Num(v is JsonValue jv && jv.TryGetValue(out double d) ? d : null);

    /// <summary>Seconds for people: "5.3 s", "78 s", "0.012 s".</summary>
    public static string Seconds(double s) =>
        (s >= 100 ? s.ToString("F0", CultureInfo.InvariantCulture) : s >= 1 ? s.ToString("F1", CultureInfo.InvariantCulture) : s.ToString("G2", CultureInfo.InvariantCulture)) + " s";

    /// <summary>The closing line of a run: task score and (where an RL stage reports one) reward,
    /// first -> last, and the wall time.</summary>
    public static string SummaryLine(JsonObject summary)
    {
        var parts = new List<string>();
        if (summary["initial_task_score"] is not null || summary["final_task_score"] is not null)
            parts.Add($"task score {Num(summary["initial_task_score"])} -> {Num(summary["final_task_score"])}");
        if (summary["initial_reward"] is not null || summary["final_reward"] is not null)
            parts.Add($"reward {Num(summary["initial_reward"])} -> {Num(summary["final_reward"])}");
        if (summary["seconds"] is JsonValue sv && sv.TryGetValue(out double secs)) parts.Add(Seconds(secs));
        return string.Join(", ", parts);
    }

    /// <summary>The line printed after a run: each process's peak RSS beside the planner's estimate.</summary>
    public static string? MemoryLine(JsonObject summary)
    {
        if (summary["peak_rss_bytes_by_process"] is not JsonObject peak) return null;
        var planned = summary["planned_memory_bytes_by_process"] as JsonObject;
        var parts = peak.Select(kv =>
        {
            string measured = kv.Value is null ? "unknown" : MiB((long)kv.Value);
            return planned?[kv.Key] is { } pl ? $"{kv.Key} {measured} (planned {MiB((long)pl)})" : $"{kv.Key} {measured}";
        });
        return "peak RSS: " + string.Join(", ", parts);
    }

    private static string MiB(long bytes) => (bytes / 1048576.0).ToString("F0", CultureInfo.InvariantCulture) + " MiB";
}
