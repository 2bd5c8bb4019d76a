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

    /// <summary>This process's resident set now: VmRSS, VmHWM and VmRSS's parts RssAnon (private
    /// memory: managed heap, malloc, native buffers not shared), RssFile (mapped files: the runtime's
    /// and native libraries' code) and RssShmem (shared memory: this process's shared shards and the
    /// pages it has touched of other processes' shared blocks), in bytes; null without /proc.</summary>
    public static MemorySample? Sample()
    {
        string[] lines;
        try { lines = File.ReadAllLines("/proc/self/status"); }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException) { return null; }
        return ParseSample(lines, "/proc/self/status");
    }

    /// <summary>The VmRSS, VmHWM, RssAnon, RssFile and RssShmem lines of a /proc/PID/status, in bytes (null when one is missing).</summary>
    internal static MemorySample? ParseSample(IEnumerable<string> statusLines, string what)
    {
        long? rss = null, hwm = null, anon = null, file = null, shmem = null;
        foreach (var line in statusLines)
        {
            int colon = line.IndexOf(':');
            if (colon < 0) continue;
            string key = line[..colon];
            if (key is not ("VmRSS" or "VmHWM" or "RssAnon" or "RssFile" or "RssShmem")) continue;
            var parts = line[(colon + 1)..].Split((char[]?)null, StringSplitOptions.RemoveEmptyEntries);
            if (parts.Length != 2 || parts[1] != "kB" || !long.TryParse(parts[0], NumberStyles.None, CultureInfo.InvariantCulture, out long kb))
                throw new InvalidDataException($"{what}: unexpected {key} line '{line}'");
            long b = kb * 1024;
            switch (key)
            {
                case "VmRSS": rss = b; break;
                case "VmHWM": hwm = b; break;
                case "RssAnon": anon = b; break;
                case "RssFile": file = b; break;
                default: shmem = b; break;
            }
        }
        return rss is { } r && hwm is { } h && anon is { } a && file is { } f && shmem is { } s ? new MemorySample(r, h, a, f, s) : null;
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

/// <summary>A process's resident set at one moment (<see cref="ProcessMemory.Sample"/>), in bytes.</summary>
internal readonly record struct MemorySample(long Rss, long Peak, long Anon, long File, long Shmem)
{
    public override string ToString() =>
        FormattableString.Invariant($"rss {Rss / 1e6:F1} MB (anon {Anon / 1e6:F1}, file {File / 1e6:F1}, shmem {Shmem / 1e6:F1}), peak {Peak / 1e6:F1} MB");
}
