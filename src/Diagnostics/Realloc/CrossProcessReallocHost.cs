using System.Collections.Concurrent;
using System.Diagnostics;
using System.Text.Json;
using ReaLNative.Engine.Control;
using ReaLNative.Engine.Layout;
using ReaLNative.Engine.Transport;
using ReaLNative.Interop;
using ReaLNative.Engine.Realloc;

namespace ReaLNative.Diagnostics;

/// <summary>
/// Cross-process reallocation driven one step at a time, for benchmark harnesses that time each
/// invocation themselves (BenchmarkDotNet): this process is rank 0 (master and worker), the other
/// ranks are `realn worker --role bench-serve` processes started once. <see cref="RunCase"/> and
/// <see cref="PointToPoint"/> issue a numbered command to every worker (they poll the control plane
/// for it), do rank 0's part, and return once every worker reported the command done, so a call's
/// time is that of the slowest rank. Destination shards are verified bit-exact on each case's first
/// run. Buffers are kept for the current case only.
/// </summary>
internal sealed unsafe class CrossProcessReallocHost : IDisposable
{
    private readonly int _size;
    private readonly ControlServer _server;
    private readonly Rendezvous _rv;
    private readonly List<Process> _procs = [];
    private readonly UcxTransport _transport;
    private readonly CrossProcessReallocBench.Worker _me;
    private readonly ConcurrentDictionary<int, string> _commands = new();
    private readonly ConcurrentDictionary<(int Seq, int Rank), string> _done = new();
    private int _seq;
    private static readonly TimeSpan Limit = TimeSpan.FromSeconds(120);

    public CrossProcessReallocHost(string realnExecutable, LlamaShape shape, int size = CrossProcessReallocBench.Workers)
    {
        _size = size;
        var secret = MessageAuth.NewSecret();
        string job = "bench-" + Guid.NewGuid().ToString("N")[..8];
        _rv = new Rendezvous(size);
        _server = new ControlServer("tcp://127.0.0.1:0", new MessageAuth(secret, job), Handle);
        for (int r = 1; r < size; r++)
        {
            var psi = new ProcessStartInfo(realnExecutable) { RedirectStandardError = true, RedirectStandardOutput = true, UseShellExecute = false };
            foreach (var a in new[] { "worker", "--control", _server.Endpoint, "--job", job, "--rank", r.ToString(), "--size", size.ToString(), "--role", "bench-serve" })
                psi.ArgumentList.Add(a);
            psi.Environment["REALN_JOB_SECRET"] = Convert.ToHexString(secret);
            psi.Environment["OMP_NUM_THREADS"] = "1";
            _procs.Add(Process.Start(psi)!);
        }
        _transport = new UcxTransport(0, size) { Timeout = Limit };
        var client = new ControlClient(_server.Endpoint, new MessageAuth(secret, job), "rank-0");
        try
        {
            Rendezvous.Join(client, _transport, Limit);
        }
        catch
        {
            Dispose();
            throw;
        }
        _me = new CrossProcessReallocBench.Worker(_transport, shape, client);
    }

    public string TransportDescription => _transport.Options.ToString();

    private string Handle(ControlMessage m)
    {
        if (m.Type is "command" or "done")
        {
            using var doc = JsonDocument.Parse(m.Payload);
            int rank = doc.RootElement.GetProperty("rank").GetInt32();
            int seq = doc.RootElement.GetProperty("seq").GetInt32();
            if (m.Type == "command") return _commands.TryGetValue(seq, out var c) ? c : "wait";
            _done[(seq, rank)] = doc.RootElement.GetProperty("error").GetString() ?? "";
            return "ok";
        }
        return _rv.Handle(m);
    }

    /// <summary>Moves the parameters once for <see cref="CrossProcessReallocBench.Pairs"/>[c].</summary>
    public void RunCase(int c) => Command($"case {c}", () => _me.RunCase(c));

    /// <summary>One tagged message of <paramref name="bytes"/> rank 0 -> rank 1.</summary>
    public void PointToPoint(long bytes) => Command($"p2p {bytes}", () => _me.PointToPoint(bytes));

    /// <summary>Bytes a case writes into destination shards.</summary>
    public long CaseBytes(int c) => _me.CaseBytes(c);

    private void Command(string command, Action mine)
    {
        int seq = _seq++;
        _commands[seq] = command;
        mine();
        var until = DateTime.UtcNow + Limit;
        for (int r = 1; r < _size; r++)
        {
            string? err;
            while (!_done.TryGetValue((seq, r), out err))
            {
                if (_procs[r - 1].HasExited) throw new InvalidOperationException($"worker {r} exited ({_procs[r - 1].ExitCode}): {_procs[r - 1].StandardError.ReadToEnd().Trim()}");
                if (DateTime.UtcNow > until) throw new TimeoutException($"worker {r} did not finish '{command}' within {Limit.TotalSeconds:F0} s");
                Thread.Sleep(1);  // not a spin: the workers need the cores
            }
            if (err.Length > 0) throw new InvalidOperationException($"worker {r}, '{command}': {err}");
        }
        _commands.TryRemove(seq - 2, out _);
    }

    public void Dispose()
    {
        _commands[_seq] = "quit";
        foreach (var p in _procs)
        {
            if (!p.WaitForExit(TimeSpan.FromSeconds(20))) p.Kill(entireProcessTree: true);
            p.Dispose();
        }
        _me?.Dispose();
        _transport.Dispose();
        _server.Dispose();
    }
}
