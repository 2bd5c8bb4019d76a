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
