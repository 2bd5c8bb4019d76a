// Memory a process has used: the kernel's high-water mark of its resident set (VmHWM in
// /proc/<pid>/status), what summary.json reports per process of a run (master and each worker).
using System.Globalization;
using System.Text.Json.Nodes;
using ReaLNative.Engine.Config;
using ReaLNative.Engine.Workers;
using ReaLNative.Planner;

namespace ReaLNative.Engine.Runs;

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

    /// <summary>summary.json's memory figures: <c>peak_rss_bytes_by_process</c> (this process as
    /// "master", each worker process as "worker_D": their VmHWM, so far in this invocation of the
    /// run) and <c>planned_memory_bytes_by_process</c> (the planner's estimate, <see cref="MemoryCheck.Planned"/>;
    /// plan devices that are threads of this process are added to "master").</summary>
    public static void AddToSummary(JsonObject summary, ExperimentConfig cfg, Plan? plan, IReplicaHost? host)
    {
        var peak = new JsonObject { ["master"] = PeakRssBytes() };
        var workers = host?.WorkerPeakRssBytes();
        for (int d = 0; d < (workers?.Count ?? 0); d++) peak[MemoryCheck.WorkerKey(d)] = workers![d];
        summary["peak_rss_bytes_by_process"] = peak;
        SortedDictionary<string, long> planned;
        try { planned = MemoryCheck.Planned(cfg, plan); }
        catch (PlannerException) { return; }   // no estimate for this experiment: the measured figures stand alone
        var p = new JsonObject { ["master"] = planned["master"] };
        foreach (var (k, v) in planned)
        {
            if (k == "master") continue;
            if (workers is null) p["master"] = (long)p["master"]! + v;   // in-process devices
            else p[k] = v;
        }
        summary["planned_memory_bytes_by_process"] = p;
    }
}
