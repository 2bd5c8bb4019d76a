// Memory a process has used: the kernel's high-water mark of its resident set (VmHWM in
// /proc/<pid>/status), what a model worker reports when asked and summary.json shows per process
// of a run (Runs/MemoryCheck.cs puts it beside the planner's estimate).
using System.Globalization;

namespace ReaLNative.Engine.Workers;

internal static class ProcessMemory
{
    /// <summary>Peak resident set of this process in bytes; null where /proc is not there.</summary>
    public static long? PeakRssBytes() => PeakRssBytes("self");

    /// <summary>Peak resident set (VmHWM) of process <paramref name="pid"/> ("self" for this one) in
    /// bytes; null where its /proc/PID/status cannot be read (no /proc, the process is gone).</summary>
    public static long? PeakRssBytes(string pid)
    {
        string path = $"/proc/{pid}/status";
        string[] lines;
        try { lines = File.ReadAllLines(path); }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException) { return null; }
        return Parse(lines, path);
    }

    /// <summary>The VmHWM line of a /proc/PID/status ("VmHWM:   123456 kB"), in bytes.</summary>
    internal static long? Parse(IEnumerable<string> statusLines, string what)
    {
        foreach (var line in statusLines)
        {
            if (!line.StartsWith("VmHWM:", StringComparison.Ordinal)) continue;
            var parts = line[6..].Split((char[]?)null, StringSplitOptions.RemoveEmptyEntries);
            if (parts.Length != 2 || parts[1] != "kB" || !long.TryParse(parts[0], NumberStyles.None, CultureInfo.InvariantCulture, out long kb))
                throw new InvalidDataException($"{what}: unexpected VmHWM line '{line}'");
            return kb * 1024;
        }
        return null;  // kernel threads and some sandboxes have no VmHWM
    }
}
