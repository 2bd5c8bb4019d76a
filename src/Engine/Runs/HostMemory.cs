// How much memory a job whose devices are on this machine (`realn run`, TrainingJob) may use: MemAvailable from /proc/meminfo, capped by
// the cgroup (v2) limit of this process when one is set (containers report the host's meminfo).
namespace ReaLNative.Engine.Runs;

internal static class HostMemory
{
    /// <summary>Available bytes, and a description of where the figure came from.</summary>
    public static (double Bytes, string Source) Available()
    {
        double bytes = double.PositiveInfinity;
        string source = "this machine";
        try
        {
            foreach (var line in File.ReadLines("/proc/meminfo"))
                if (line.StartsWith("MemAvailable:", StringComparison.Ordinal))
                {
                    bytes = double.Parse(line.Split(' ', StringSplitOptions.RemoveEmptyEntries)[1], System.Globalization.CultureInfo.InvariantCulture) * 1024;
                    source = "this machine (MemAvailable in /proc/meminfo)";
                }
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or FormatException) { }
        try
        {
            string max = File.ReadAllText("/sys/fs/cgroup/memory.max").Trim(), cur = File.ReadAllText("/sys/fs/cgroup/memory.current").Trim();
            if (max != "max" && double.TryParse(max, out double m) && double.TryParse(cur, out double c) && m - c < bytes)
            {
                bytes = Math.Max(0, m - c);
                source = "this machine (cgroup memory.max - memory.current)";
            }
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException) { }
        return (bytes, source);
    }
}
