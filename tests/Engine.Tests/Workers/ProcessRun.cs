// A child process of a test (realn run / launch), its output collected, killed with its tree if
// the test leaves it running; and the checkpoint comparison the process tests share.
using System.Diagnostics;
using System.Text.Json.Nodes;

namespace ReaLNative.Engine.Tests.Workers;

internal sealed class Run(Process p, string name) : IDisposable
{
    private readonly System.Text.StringBuilder _out = new();
    public Process Process { get; } = p;
    public string Output { get { lock (_out) return _out.ToString(); } }

    /// <summary>Starts <paramref name="exe"/>; <paramref name="env"/> entries set variables, a null value removes one.</summary>
    public static Run Start(string name, string exe, IEnumerable<string> args, IDictionary<string, string?>? env = null)
    {
        var psi = new ProcessStartInfo(exe) { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        foreach (var a in args) psi.ArgumentList.Add(a);
        psi.Environment["NO_COLOR"] = "1";
        foreach (var (k, v) in env ?? new Dictionary<string, string?>())
            if (v is null) psi.Environment.Remove(k); else psi.Environment[k] = v;
        var r = new Run(Process.Start(psi)!, name);
        r.Process.OutputDataReceived += (_, e) => { if (e.Data is not null) lock (r._out) r._out.AppendLine(e.Data); };
        r.Process.ErrorDataReceived += (_, e) => { if (e.Data is not null) lock (r._out) r._out.AppendLine(e.Data); };
        r.Process.BeginOutputReadLine();
        r.Process.BeginErrorReadLine();
        return r;
    }

    public int Wait(TimeSpan limit)
    {
        if (!Process.WaitForExit(limit))
        {
            Process.Kill(entireProcessTree: true);
            throw new TimeoutException($"{name} did not exit within {limit.TotalSeconds:F0} s; output:\n{Output}");
        }
        Process.WaitForExit();
        return Process.ExitCode;
    }

    public void Dispose()
    {
        try { if (!Process.HasExited) Process.Kill(entireProcessTree: true); } catch (InvalidOperationException) { }
        Process.Dispose();
    }

    /// <summary>SHA-256 of every model and optimizer file of a run's newest checkpoint.</summary>
    public static Dictionary<string, string> Final(string dir)
    {
        var ck = Path.Combine(dir, "checkpoints");
        string latest = File.ReadAllText(Path.Combine(ck, "latest")).Trim();
        var files = JsonNode.Parse(File.ReadAllText(Path.Combine(ck, latest, "manifest.json")))!["files"]!.AsObject();
        return files.Where(kv => kv.Key != "state.json").ToDictionary(kv => kv.Key, kv => (string)kv.Value!["sha256"]!);
    }
}

/// <summary>Processes by pid (/proc): liveness, parent, model workers; and signals via kill(1).</summary>
internal static class Procs
{
    public static bool Alive(int pid)
    {
        try
        {
            var stat = File.ReadAllText($"/proc/{pid}/stat");
            return !stat[(stat.LastIndexOf(')') + 2)..].StartsWith('Z');
        }
        catch (IOException) { return false; }
    }

    /// <summary>SIGKILL to <paramref name="pid"/>, returning once it is gone (a zombie or reaped): a
    /// signalled process tears down its memory only when the kernel runs its exit, later on a loaded
    /// host, and until then a process read of it still succeeds.</summary>
    public static void KillAndWait(int pid)
    {
        System.Diagnostics.Process.GetProcessById(pid).Kill();
        var clock = System.Diagnostics.Stopwatch.StartNew();
        while (Alive(pid))
        {
            if (clock.Elapsed > TimeSpan.FromSeconds(30)) throw new TimeoutException($"process {pid} still runs 30 s after SIGKILL");
            Thread.Sleep(5);
        }
    }

    public static int ParentOf(int pid)
    {
        try
        {
            var stat = File.ReadAllText($"/proc/{pid}/stat");
            return int.Parse(stat[(stat.LastIndexOf(')') + 2)..].Split(' ')[1]);
        }
        catch (IOException) { return -1; }
    }

    /// <summary>Live model worker processes whose parent is <paramref name="parent"/>.</summary>
    public static List<int> WorkersOf(int parent)
    {
        var pids = new List<int>();
        foreach (var d in Directory.EnumerateDirectories("/proc"))
        {
            if (!int.TryParse(Path.GetFileName(d), out int pid)) continue;
            try
            {
                var cmd = File.ReadAllText(Path.Combine(d, "cmdline")).Replace('\0', ' ');
                if (cmd.Contains(" worker --role model") && Alive(pid) && ParentOf(pid) == parent) pids.Add(pid);
            }
            catch (IOException) { } catch (UnauthorizedAccessException) { }
        }
        return pids;
    }

    /// <summary>Sends <paramref name="signal"/> (TERM, INT ...) to a pid, or to a process group with a negative id.</summary>
    public static void Kill(string signal, int pid)
    {
        using var p = Process.Start(new ProcessStartInfo("kill", ["-s", signal, "--", pid.ToString()]) { UseShellExecute = false })!;
        p.WaitForExit(10_000);
        if (p.ExitCode != 0) throw new InvalidOperationException($"kill -s {signal} {pid} failed ({p.ExitCode})");
    }

    public static void WaitFor(Func<bool> cond, TimeSpan limit, string what)
    {
        var until = DateTime.UtcNow + limit;
        while (!cond())
        {
            if (DateTime.UtcNow > until) throw new TimeoutException($"waited {limit.TotalSeconds:F0} s for {what}");
            Thread.Sleep(50);
        }
    }

    /// <summary>SHA-256 over every file of a directory tree (relative path, size, content), to show nothing changed.</summary>
    public static string TreeHash(string dir)
    {
        using var h = System.Security.Cryptography.IncrementalHash.CreateHash(System.Security.Cryptography.HashAlgorithmName.SHA256);
        foreach (var e in Directory.EnumerateFileSystemEntries(dir, "*", SearchOption.AllDirectories).Order(StringComparer.Ordinal))
        {
            h.AppendData(System.Text.Encoding.UTF8.GetBytes(Path.GetRelativePath(dir, e) + "\n"));
            if (File.Exists(e)) h.AppendData(File.ReadAllBytes(e));
        }
        return Convert.ToHexString(h.GetHashAndReset());
    }
}
