// The worker processes one node runs: started with the job secret in their environment (never on
// the command line), threads per worker set so the node's cores are not oversubscribed, their
// last output lines kept for error messages, and killed (whole process tree) when the node's
// part of the job ends, so no worker is left behind.
using System.Collections.Concurrent;
using System.Diagnostics;
using ReaLNative.Engine.Control;
using ReaLNative.Engine.Transport;

namespace ReaLNative.Engine.Workers;

/// <summary>How to start `realn worker --role model` processes for one job.</summary>
internal sealed record WorkerCommandLine(string Executable, IReadOnlyList<string> Prefix, string Control, string Job, int Size)
{
    /// <summary>Interface the workers' command servers bind (and advertise).</summary>
    public string BindHost { get; init; } = "127.0.0.1";
    public string Node { get; init; } = System.Environment.MachineName;
    public int ThreadsPerWorker { get; init; } = 1;
    public IReadOnlyDictionary<string, string> Environment { get; init; } = new Dictionary<string, string>();
}

internal sealed class WorkerProcesses : IDisposable
{
    /// <summary>The runtime's switch for tiered compilation, off in every worker unless the user set it.</summary>
    public const string TieredCompilationVariable = "DOTNET_TieredCompilation";

    private readonly Dictionary<int, Process> _procs = new();
    private readonly Dictionary<int, ConcurrentQueue<string>> _tails = new();

    public WorkerProcesses(WorkerCommandLine cmd, byte[] secret, IEnumerable<int> ranks)
    {
        bool echo = System.Environment.GetEnvironmentVariable("REALN_WORKER_ECHO") == "1";
        var list = ranks.ToList();
        // The workers' compute threads fill the node's cores: their transports' progress threads
        // must not spin (UcxTransportOptions.SkipSpin).
        bool skipSpin = UcxTransportOptions.SkipSpin(list.Count * cmd.ThreadsPerWorker);
        try
        {
            foreach (int r in list)
            {
                var psi = new ProcessStartInfo(cmd.Executable) { RedirectStandardError = true, RedirectStandardOutput = true, UseShellExecute = false };
                foreach (var a in cmd.Prefix) psi.ArgumentList.Add(a);
                foreach (var a in new[] { "worker", "--role", "model", "--control", cmd.Control, "--job", cmd.Job, "--rank", r.ToString(), "--size", cmd.Size.ToString(),
                                          "--bind", cmd.BindHost, "--node", cmd.Node })
                    psi.ArgumentList.Add(a);
                psi.Environment[JobSecret.Variable] = Convert.ToHexString(secret);
                psi.Environment.Remove(JobSecret.FileVariable);
                psi.Environment["OMP_NUM_THREADS"] = cmd.ThreadsPerWorker.ToString();
                psi.Environment["OPENBLAS_NUM_THREADS"] = cmd.ThreadsPerWorker.ToString();
                if (skipSpin) psi.Environment[UcxTransportOptions.SpinVariable] = "0";
                // Code compiled once, optimized, at its first call: with the runtime's tiered compilation a
                // worker ran its first hundreds of operations partly in unoptimized code while a background
                // thread compiled it again (with profiling instrumentation, then optimized), and that thread
                // takes a shared host's cores from the workers' compute: ppo-tiny on 2 cores spent 0.4-1.7
                // core-seconds of its 12-iteration PPO stage compiling (11-28% of the cores), 0.18 against
                // 0.25-0.28 s per iteration with 4 workers (docs/cost-model.md, "Worker processes:
                // compilation and reads"). The realn executable is built so (its runtimeconfig); this covers any other
                // host's workers. A value the user set (DOTNET_ or COMPlus_ prefix) is kept.
                if (!psi.Environment.ContainsKey(TieredCompilationVariable) && !psi.Environment.ContainsKey("COMPlus_TieredCompilation"))
                    psi.Environment[TieredCompilationVariable] = "0";
                // A worker needs no UCX fault handlers: libucs would install them for SEGV/BUS/ILL/FPE
                // when it loads, and a managed null dereference on another thread before the resolver
                // puts the runtime's handlers back killed a worker at start-up ("Caught signal 11 ...
                // (nil)", seen under load). Set for the child before exec: no setenv race. A value the
                // user set is kept.
                if (!psi.Environment.ContainsKey("UCX_ERROR_SIGNALS")) psi.Environment["UCX_ERROR_SIGNALS"] = "";
                // Nor UCX's memory hooks: when libucs loads, UCM hot-patches mmap/munmap ("bistro") and
                // malloc in place, and a thread inside the patched code at that moment resumes on
                // half-written instructions (SIGSEGV; openucx/ucx's own hook test flakes the same way).
                // The .NET runtime's threads call mmap all the time: workers died at start-up with
                // exit 139 and no output, under load, in the full suite. Without the hooks UCX keeps no
                // registration cache, which the transports used here (shared memory, cma, tcp) do not need.
                if (!psi.Environment.ContainsKey("UCX_MEM_MMAP_HOOK_MODE")) psi.Environment["UCX_MEM_MMAP_HOOK_MODE"] = "none";
                if (!psi.Environment.ContainsKey("UCX_MEM_MALLOC_HOOKS")) psi.Environment["UCX_MEM_MALLOC_HOOKS"] = "no";
                foreach (var (k, v) in cmd.Environment) psi.Environment[k] = v;
                var p = Process.Start(psi) ?? throw new InvalidOperationException($"could not start worker {r} ({cmd.Executable})");
                var tail = new ConcurrentQueue<string>();
                int rank = r;
                p.ErrorDataReceived += (_, e) =>
                {
                    if (e.Data is null) return;
                    if (echo) Console.Error.WriteLine($"[worker {rank}] {e.Data}");
                    tail.Enqueue(e.Data);
                    while (tail.Count > 40 && tail.TryDequeue(out string? _)) { }
                };
                p.OutputDataReceived += (_, _) => { };
                p.BeginErrorReadLine();
                p.BeginOutputReadLine();
                _procs[r] = p;
                _tails[r] = tail;
            }
        }
        catch
        {
            Dispose();
            throw;
        }
    }

    public IReadOnlyCollection<int> Ranks => _procs.Keys;
    public bool Owns(int rank) => _procs.ContainsKey(rank);
    public int Pid(int rank) => _procs[rank].Id;

    /// <summary>The exit code of local worker <paramref name="rank"/>, or null while it runs (or when it is not local).</summary>
    public int? ExitCode(int rank) => _procs.TryGetValue(rank, out var p) && p.HasExited ? p.ExitCode : null;

    /// <summary>When local worker <paramref name="rank"/> exited (UTC, as the runtime reaped it), or null while it runs.</summary>
    public DateTime? ExitTime(int rank) => _procs.TryGetValue(rank, out var p) && p.HasExited ? p.ExitTime.ToUniversalTime() : null;

    /// <summary>The worker's last lines of output, for error messages ("" when none).</summary>
    public string Tail(int rank, int lines = 8)
    {
        if (!_tails.TryGetValue(rank, out var t)) return "";
        var l = t.ToArray();
        return l.Length == 0 ? "" : $"; its last output:\n  {string.Join("\n  ", l.TakeLast(lines))}";
    }

    /// <summary>Kills local worker <paramref name="rank"/> (SIGKILL ends a stopped process too).</summary>
    public void Kill(int rank)
    {
        if (!_procs.TryGetValue(rank, out var p)) return;
        try { p.Kill(entireProcessTree: true); p.WaitForExit(TimeSpan.FromSeconds(5)); }
        catch (InvalidOperationException) { /* already reaped */ }
    }

    /// <summary>Waits up to <paramref name="grace"/> for every worker to exit, then kills the rest.</summary>
    public void Stop(TimeSpan grace)
    {
        var until = DateTime.UtcNow + grace;
        foreach (var p in _procs.Values.ToArray())
        {
            try
            {
                var left = until - DateTime.UtcNow;
                if (!p.WaitForExit(left > TimeSpan.Zero ? left : TimeSpan.Zero)) p.Kill(entireProcessTree: true);
                p.WaitForExit(TimeSpan.FromSeconds(5));
            }
            catch (InvalidOperationException) { /* never started or already reaped */ }
        }
    }

    public void Dispose()
    {
        Stop(TimeSpan.FromSeconds(5));
        foreach (var p in _procs.Values) p.Dispose();
        _procs.Clear();
    }
}
