// Two "nodes" on one machine: two network namespaces joined by a veth pair, one `realn launch` in
// each with its own address, UCX restricted to tcp so the data plane (collectives, pipeline
// messages, reallocation) crosses the veth. A PPO run under a plan whose calls span both nodes
// must end with the parameters of the single-node run of that plan, bit for bit; cutting the veth
// mid-run must end both launchers non-zero with an error instead of hanging. Skipped (with the
// reason) where the machine does not allow network namespaces.
using System.Diagnostics;
using System.Text.Json.Nodes;
using Xunit;
using Xunit.Abstractions;

namespace ReaLNative.Engine.Tests.Workers;

[Collection("worker processes")]
public sealed class TwoNodeTests(ITestOutputHelper output) : IDisposable
{
    private readonly string _id = Guid.NewGuid().ToString("N")[..6];
    private readonly List<string> _namespaces = [];
    private string Ns(int node) => $"realn{_id}n{node}";
    private string Veth(int node) => $"rv{_id}{node}";
    private readonly int _subnet = Random.Shared.Next(10, 250);
    private string Address(int node) => $"10.231.{_subnet}.{node + 1}";

    private static (int Code, string Output) Sh(string file, params string[] args)
    {
        var psi = new ProcessStartInfo(file) { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        foreach (var a in args) psi.ArgumentList.Add(a);
        using var p = Process.Start(psi)!;
        string o = p.StandardOutput.ReadToEnd() + p.StandardError.ReadToEnd();
        if (!p.WaitForExit(TimeSpan.FromSeconds(30))) { p.Kill(true); return (-1, o + " (timed out)"); }
        return (p.ExitCode, o);
    }

    /// <summary>Creates the namespaces and the veth; skips the test when the machine does not allow it.</summary>
    private void Network()
    {
        Skip.IfNot(Environment.UserName == "root" || Sh("id", "-u").Output.Trim() == "0", "network namespaces need root");
        var probe = Sh("ip", "netns", "add", Ns(0));
        Skip.If(probe.Code != 0, $"cannot create a network namespace here (ip netns add: {probe.Output.Trim()})");
        _namespaces.Add(Ns(0));
        Must("ip", "netns", "add", Ns(1));
        _namespaces.Add(Ns(1));
        Must("ip", "link", "add", Veth(0), "type", "veth", "peer", "name", Veth(1));
        for (int n = 0; n < 2; n++)
        {
            Must("ip", "link", "set", Veth(n), "netns", Ns(n));
            Must("ip", "netns", "exec", Ns(n), "ip", "addr", "add", Address(n) + "/24", "dev", Veth(n));
            Must("ip", "netns", "exec", Ns(n), "ip", "link", "set", Veth(n), "up");
            Must("ip", "netns", "exec", Ns(n), "ip", "link", "set", "lo", "up");
        }
    }

    private static void Must(string file, params string[] args)
    {
        var (code, o) = Sh(file, args);
        Assert.True(code == 0, $"{file} {string.Join(' ', args)}: {o}");
    }

    private static string Config(int ppoIterations) => """
        name: two-node
        algorithm: ppo
        seed: 5
        iterations: 2
        task: { name: sort-digits, min_len: 3, max_len: 4 }
        eval: { size: 8, every: 1000 }
        checkpoint_every: 2
        models:
          actor:  { preset: tiny, init: sft }
          critic: { preset: tiny, init: rm }
          ref:    { preset: tiny, init: sft }
          reward: { preset: tiny, init: rm }
        batch: { size: 8, prompt_len: 8, gen_len: 6, minibatches: 2 }
        ppo: { kl_coef: 0.05, ppo_epochs: 2 }
        stages:
          - { algorithm: sft, iterations: 3, models: { actor: { preset: tiny, init: random } }, optim: { lr: 3.0e-3 } }
          - { algorithm: rm, iterations: 2, models: { reward: { preset: tiny, init: sft } } }
        """ + $"\n  - {{ algorithm: ppo, iterations: {ppoIterations}, optim: {{ lr: 5.0e-4 }} }}\n";

    /// <summary>2 nodes x 1 device: generation on node 0, reward on node 1, the rest pipeline- or
    /// data-parallel over both, so every iteration reallocates and reduces across the veth.</summary>
    private static string Plan()
    {
        JsonObject Call(string name, string model, string type, int n0, int nc, int pp, int dp, int micro) => new()
        {
            ["name"] = name, ["model"] = model, ["type"] = type,
            ["mesh"] = new JsonObject { ["node_start"] = n0, ["node_count"] = nc, ["device_start"] = 0, ["device_count"] = 1 },
            ["strategy"] = new JsonObject { ["pp"] = pp, ["dp"] = dp, ["tp"] = 1 }, ["micro_batches"] = micro,
        };
        return new JsonObject
        {
            ["version"] = 1, ["cluster"] = new JsonObject { ["nodes"] = 2, ["devices_per_node"] = 1 },
            ["calls"] = new JsonArray
            {
                Call("actor_gen", "actor", "generate", 0, 1, 1, 1, 1), Call("rew_inf", "reward", "inference", 1, 1, 1, 1, 1),
                Call("ref_inf", "ref", "inference", 0, 2, 1, 2, 1), Call("critic_inf", "critic", "inference", 0, 2, 1, 2, 2),
                Call("actor_train", "actor", "train_step", 0, 2, 2, 1, 2), Call("critic_train", "critic", "train_step", 0, 2, 1, 2, 2),
            },
        }.ToJsonString();
    }

    private sealed record Files(string Dir, string Config, string Plan, string Secret);

    private static Files Prepare(int ppoIterations)
    {
        var d = Path.Combine(Path.GetTempPath(), "realn-2node-" + Guid.NewGuid().ToString("N")[..8]);
        Directory.CreateDirectory(d);
        File.WriteAllText(Path.Combine(d, "exp.yaml"), Config(ppoIterations));
        File.WriteAllText(Path.Combine(d, "plan.json"), Plan());
        string secret = Path.Combine(d, "secret");
        File.WriteAllText(secret, Convert.ToHexString(System.Security.Cryptography.RandomNumberGenerator.GetBytes(32)));
        File.SetUnixFileMode(secret, UnixFileMode.UserRead | UnixFileMode.UserWrite);
        return new Files(d, Path.Combine(d, "exp.yaml"), Path.Combine(d, "plan.json"), secret);
    }

    private Run Launch(Files f, int node, string outDir, int port)
    {
        var args = new List<string> { "netns", "exec", Ns(node), WorkerProcessTests.Realn(), "launch", f.Config, "--plan", f.Plan, "--nnodes", "2",
                                      "--node-rank", node.ToString(), "--master", $"{Address(0)}:{port}" };
        if (node == 0) args.AddRange(["--out", outDir]);
        return Run.Start($"node {node}", "ip", args, new Dictionary<string, string?>
        {
            ["REALN_JOB_SECRET_FILE"] = f.Secret, ["REALN_JOB_SECRET"] = null,
            ["UCX_TLS"] = "tcp,self",  // namespaces share /dev/shm: make the bytes cross the veth
        });
    }

    /// <summary>A port below the ephemeral range, where the job's own processes bind port 0.</summary>
    private static int Port() => 20000 + Random.Shared.Next(12000);

    [SkippableFact]
    public void PpoAcrossTwoNamespacesEqualsTheSingleNodeRun()
    {
        Network();
        var f = Prepare(ppoIterations: 3);
        try
        {
            string single = Path.Combine(f.Dir, "single"), multi = Path.Combine(f.Dir, "multi");
            var psi = new ProcessStartInfo(WorkerProcessTests.Realn(), ["run", f.Config, "--plan", f.Plan, "--in-process", "--out", single]) { RedirectStandardOutput = true, RedirectStandardError = true };
            using (var p = Process.Start(psi)!)
            {
                string o = p.StandardOutput.ReadToEnd() + p.StandardError.ReadToEnd();
                Assert.True(p.WaitForExit(TimeSpan.FromMinutes(3)) && p.ExitCode == 0, o);
            }
            int port = Port();
            using var n1 = Launch(f, 1, "", port);
            using var n0 = Launch(f, 0, multi, port);
            int c0 = n0.Wait(TimeSpan.FromMinutes(4));
            int c1 = n1.Wait(TimeSpan.FromMinutes(1));
            string both = $"node 0 (exit {c0}):\n{n0.Output}\nnode 1 (exit {c1}):\n{n1.Output}";
            output.WriteLine(both);
            Assert.True(c0 == 0 && c1 == 0, both);
            Assert.Equal(Run.Final(single), Run.Final(multi));
        }
        finally { Directory.Delete(f.Dir, true); }
    }

    [SkippableFact]
    public void CuttingTheLinkEndsBothNodesWithAnError()
    {
        Network();
        var f = Prepare(ppoIterations: 2000);
        try
        {
            string multi = Path.Combine(f.Dir, "multi");
            int port = Port();
            using var n1 = Launch(f, 1, "", port);
            using var n0 = Launch(f, 0, multi, port);
            var until = DateTime.UtcNow + TimeSpan.FromMinutes(2);
            while (!n0.Output.Contains("ppo 3/") && !n0.Process.HasExited && DateTime.UtcNow < until) Thread.Sleep(100);
            Assert.False(n0.Process.HasExited, n0.Output);
            Assert.Contains("ppo 3/", n0.Output);
            var cut = Stopwatch.StartNew();
            Must("ip", "netns", "exec", Ns(0), "ip", "link", "del", Veth(0));  // both ends go
            int c0 = n0.Wait(TimeSpan.FromSeconds(90));
            int c1 = n1.Wait(TimeSpan.FromSeconds(60));
            output.WriteLine($"both ended {cut.Elapsed.TotalSeconds:F1} s after the cut\nnode 0 ({c0}):\n{n0.Output}\nnode 1 ({c1}):\n{n1.Output}");
            Assert.NotEqual(0, c0);
            Assert.NotEqual(0, c1);
            // The master names the worker it lost and what it was doing (node 0's own worker loses
            // the master too: the cut removes the address it reaches the master at).
            Assert.Matches("job failed: worker [01] .*(sent no heartbeat|exited|failed)", n0.Output);
            Assert.True(cut.Elapsed < TimeSpan.FromSeconds(60), $"took {cut.Elapsed.TotalSeconds:F0} s");
        }
        finally { Directory.Delete(f.Dir, true); }
    }

    [SkippableFact]
    public void SigtermToTheOtherNodesLauncherStopsTheWholeJobAtASafePoint()
    {
        Network();
        var f = Prepare(ppoIterations: 2000);
        try
        {
            string multi = Path.Combine(f.Dir, "multi");
            int port = Port();
            using var n1 = Launch(f, 1, "", port);
            using var n0 = Launch(f, 0, multi, port);
            var until = DateTime.UtcNow + TimeSpan.FromMinutes(2);
            while (!n0.Output.Contains("ppo 2/") && !n0.Process.HasExited && DateTime.UtcNow < until) Thread.Sleep(100);
            Assert.False(n0.Process.HasExited, n0.Output);
            var workers1 = Procs.WorkersOf(n1.Process.Id);   // `ip netns exec` execs the launcher: same pid
            Assert.Single(workers1);
            var sw = Stopwatch.StartNew();
            Procs.Kill("TERM", n1.Process.Id);
            int c0 = n0.Wait(TimeSpan.FromSeconds(60));
            int c1 = n1.Wait(TimeSpan.FromSeconds(60));
            output.WriteLine($"both ended {sw.Elapsed.TotalSeconds:F1} s after SIGTERM to node 1\nnode 0 ({c0}):\n{n0.Output}\nnode 1 ({c1}):\n{n1.Output}");
            Assert.Equal(143, c0);
            Assert.Equal(143, c1);
            Assert.Matches(@"realn: interrupted by SIGTERM \(to node 1's launcher\) at ppo iteration \d+/2000; last checkpoint step-\d+; resume with --resume", n0.Output);
            Assert.Contains("realn: interrupted by SIGTERM; node 1's workers stopped", n1.Output);
            Assert.DoesNotContain("job failed", n0.Output);
            Assert.All(workers1, p => Assert.False(Procs.Alive(p), $"node 1's worker {p} still running"));
            Assert.Empty(Directory.EnumerateFileSystemEntries(Path.Combine(multi, "checkpoints"), "*.tmp"));
            Assert.True(sw.Elapsed < TimeSpan.FromSeconds(30), $"took {sw.Elapsed.TotalSeconds:F0} s");
        }
        finally { Directory.Delete(f.Dir, true); }
    }

    public void Dispose()
    {
        foreach (var ns in _namespaces)
        {
            // nothing of the test may outlive it: kill what still runs in the namespace, then delete it
            var (_, pids) = Sh("ip", "netns", "pids", ns);
            foreach (var pid in pids.Split('\n', StringSplitOptions.RemoveEmptyEntries))
                if (int.TryParse(pid, out int id)) try { Process.GetProcessById(id).Kill(true); } catch (ArgumentException) { }
            Sh("ip", "netns", "del", ns);
        }
    }
}
