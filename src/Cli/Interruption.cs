// SIGTERM / SIGINT for the long-running commands (`realn run`, `realn launch`, workers): what
// Slurm, systemd and a terminal send. The first signal cancels a token the job observes at its next
// safe point (between iterations / calls), after which the command stops its workers, removes
// temporaries and exits 143 (SIGTERM) or 130 (SIGINT) with one line saying why; a second signal
// stops at once: the registered abort (kill the workers, remove temporaries) runs, the line is
// printed and the process exits with the same code.
using System.Runtime.InteropServices;

namespace ReaLNative.Cli;

internal sealed class Interruption : IDisposable
{
    private readonly CancellationTokenSource _cts = new();
    private readonly PosixSignalRegistration[] _registrations;
    private int _count;
    private volatile string? _signal;
    private volatile string? _source;
    private static volatile bool s_exiting;

    /// <summary>True once a second signal is ending the process: the command's thread must not
    /// return an exit code of its own meanwhile (<see cref="CliRunner"/> waits for the exit).</summary>
    public static bool ExitingAtOnce => s_exiting;

    private static int s_lastLineClaimed;

    /// <summary>True for the first caller only: the run's own "interrupted ..." line and the second
    /// signal's "stopped at once" line race when the second signal arrives as the run reaches its
    /// safe point; exactly one of them is printed.</summary>
    public static bool ClaimLastLine() => Interlocked.Exchange(ref s_lastLineClaimed, 1) == 0;

    /// <summary>Runs on a second signal before the process exits (kill workers, remove temporaries); may be replaced as the job progresses.</summary>
    public Action? Abort { get; set; }
    /// <summary>The line printed on a second signal (after "realn: interrupted by SIG... "); e.g. where the run was.</summary>
    public Func<string>? AbortDetail { get; set; }

    public Interruption()
    {
        _registrations =
        [
            PosixSignalRegistration.Create(PosixSignal.SIGTERM, OnSignal),
            PosixSignalRegistration.Create(PosixSignal.SIGINT, OnSignal),
        ];
    }

    public CancellationToken Token => _cts.Token;
    public bool Requested => _cts.IsCancellationRequested;
    /// <summary>"SIGTERM" or "SIGINT", once one arrived (here or reported by a worker / launcher).</summary>
    public string? Signal => _signal;
    /// <summary>The exit code for the signal: 130 for SIGINT, 143 otherwise.</summary>
    public int ExitCode => _signal == "SIGINT" ? 130 : 143;
    /// <summary>"SIGTERM" or "SIGTERM (to worker 1)" for messages.</summary>
    public string Describe() => _source is null ? _signal ?? "a signal" : $"{_signal} ({_source})";

    /// <summary>A signal another process of the job received (worker, launcher): the first stage only, never the immediate stop.</summary>
    public void Request(string what)
    {
        string sig = what.StartsWith("SIGINT", StringComparison.Ordinal) ? "SIGINT" : "SIGTERM";
        if (_signal is null)
        {
            _signal = sig;
            int sp = what.IndexOf(' ');
            _source = sp > 0 ? what[(sp + 1)..] : null;
        }
        try { _cts.Cancel(); } catch (ObjectDisposedException) { /* the command has ended */ }
    }

    private void OnSignal(PosixSignalContext context)
    {
        context.Cancel = true;   // no default termination: the job stops itself
        string sig = context.Signal == PosixSignal.SIGINT ? "SIGINT" : "SIGTERM";
        if (Interlocked.Increment(ref _count) == 1)
        {
            if (_signal is null) { _signal = sig; _source = null; }
            else if (_source is not null) { _signal = sig; _source = null; }   // this process got it too
            try { _cts.Cancel(); } catch (AggregateException) { /* a callback failed; the job still sees the token */ }
            return;
        }
        // Second signal: stop at once.
        s_exiting = true;
        _signal = sig; _source = null;
        try { Abort?.Invoke(); }
        catch (Exception e) { Console.Error.WriteLine($"realn: while stopping: {e.Message}"); }
        string detail = "";
        try { detail = AbortDetail?.Invoke() ?? ""; } catch (Exception) { /* the line still goes out */ }
        if (ClaimLastLine()) Console.Error.WriteLine($"realn: interrupted by a second {sig}: stopped at once{detail}");
        Console.Error.Flush();
        Environment.Exit(ExitCode);
    }

    public void Dispose()
    {
        foreach (var r in _registrations) r.Dispose();
        _cts.Dispose();
    }
}
