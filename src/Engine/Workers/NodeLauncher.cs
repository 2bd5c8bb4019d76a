// One node's part of a multi-node job (`realn launch` on a node other than the master's): starts
// the node's model workers, reports any that exits to the master at once (so the master ends the
// job naming it instead of waiting for a heartbeat to lapse), and ends when the master says the job
// is over, when the master is unreachable for longer than a worker may be, or when a worker fails.
// Every way out stops the node's workers: nothing is left running. A SIGTERM / SIGINT the launcher
// receives (NodeSignals) is passed to the master, which stops the whole job at its next safe point.
using System.Diagnostics;
using System.Text.Json.Nodes;
using ReaLNative.Engine.Control;

namespace ReaLNative.Engine.Workers;

/// <summary>A signal the node's launcher received (set by the command's handler) and how to stop the node's workers at once.</summary>
internal sealed class NodeSignals
{
    public volatile string? Signal;
    /// <summary>Kills the node's workers (a second signal); set by <see cref="NodeLauncher.Run"/>.</summary>
    public Action? KillWorkers { get; internal set; }
}

internal static class NodeLauncher
{
    /// <summary>Runs node <paramref name="node"/>'s workers (ranks <paramref name="ranks"/>) until the
    /// job ends; returns 0 when it ended normally, non-zero otherwise.</summary>
    public static int Run(WorkerCommandLine cmd, byte[] secret, int node, IReadOnlyList<int> ranks, TimeSpan masterLoss, Action<string> log, NodeSignals? signals = null)
    {
        using var client = new ControlClient(cmd.Control, new MessageAuth(secret, cmd.Job), $"launcher-{node}");
        using var workers = new WorkerProcesses(cmd, secret, ranks);
        if (signals is not null) signals.KillWorkers = () => workers.Stop(TimeSpan.Zero);
        log($"node {node}: started workers {string.Join(", ", ranks)} (pids {string.Join(", ", ranks.Select(workers.Pid))}), master {cmd.Control}");
        var reported = new HashSet<int>();
        var lastOk = Stopwatch.StartNew();
        while (true)
        {
            foreach (int r in ranks)
                if (!reported.Contains(r) && workers.ExitCode(r) is { } code)
                {
                    reported.Add(r);
                    if (code != 0)  // 0 only follows the master's shutdown
                    {
                        string tail = workers.Tail(r);
                        log($"node {node}: worker {r} exited with code {code}{tail}");
                        try
                        {
                            client.Request("worker-exit", new JsonObject { ["rank"] = r, ["code"] = code, ["tail"] = tail }.ToJsonString(), TimeSpan.FromSeconds(5));
                        }
                        catch (Exception e) when (e is TimeoutException or InvalidOperationException) { /* the master may be gone too */ }
                        workers.Stop(TimeSpan.FromSeconds(10));
                        return 1;
                    }
                }
            if (reported.Count == ranks.Count)
            {
                log($"node {node}: the master shut the workers down");
                return 0;
            }
            try
            {
                var poll = new JsonObject { ["node"] = node };
                if (signals?.Signal is { } sig) poll["signal"] = sig;
                string reply = client.Request("launcher", poll.ToJsonString(), TimeSpan.FromSeconds(5));
                lastOk.Restart();
                if (reply is "done" or "stop")
                {
                    bool done = reply == "done";
                    workers.Stop(TimeSpan.FromSeconds(15));  // the workers were told (shutdown / heartbeat "stop")
                    log($"node {node}: the master {(done ? "finished the job" : "ended the job after a failure")}");
                    return done ? 0 : 1;
                }
            }
            catch (Exception e) when (e is TimeoutException or InvalidOperationException)
            {
                if (lastOk.Elapsed > masterLoss)
                {
                    log($"node {node}: the master at {cmd.Control} has not answered for {lastOk.Elapsed.TotalSeconds:F0} s ({e.Message}); stopping the node's workers");
                    workers.Stop(TimeSpan.Zero);
                    return 1;
                }
            }
            Thread.Sleep(1000);
        }
    }
}
