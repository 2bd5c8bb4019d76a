// Faults with real processes: `realn run` / `realn launch` as child processes, a model worker
// killed with SIGKILL, the master killed, a two-"node" job in two network namespaces joined by a
// veth pair and the veth cut. Each must end every process of the job non-zero with an error naming
// what failed, leave no worker behind, and `--resume` must reach the parameters of an uninterrupted
// run bit for bit (checkpoint files compared by their manifest's SHA-256).
using System.Diagnostics;
using System.Text.Json.Nodes;
using Xunit;
using Xunit.Abstractions;

namespace ReaLNative.Engine.Tests.Workers;

[Collection("worker processes")]
public sealed class FaultTests(ITestOutputHelper output)
{
    internal const string Config = """
        name: fault-test
        algorithm: ppo
        seed: 3
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
          - { algorithm: sft, iterations: 4, models: { actor: { preset: tiny, init: random } }, optim: { lr: 3.0e-3 } }
          - { algorithm: rm, iterations: 2, models: { reward: { preset: tiny, init: sft } } }
          - { algorithm: ppo, iterations: PPO_ITERATIONS, optim: { lr: 5.0e-4 } }
        """;

    /// <summary>A plan over <paramref name="nodes"/> x <paramref name="perNode"/> devices whose
    /// calls use different meshes and layouts (pipeline and data parallel across all devices).</summary>
    internal static string Plan(int nodes, int perNode)
    {
        JsonObject Call(string name, string model, string type, int n0, int nc, int d0, int dc, int pp, int dp, int micro) => new()
        {
            ["name"] = name, ["model"] = model, ["type"] = type,
            ["mesh"] = new JsonObject { ["node_start"] = n0, ["node_count"] = nc, ["device_start"] = d0, ["device_count"] = dc },
            ["strategy"] = new JsonObject { ["pp"] = pp, ["dp"] = dp, ["tp"] = 1 }, ["micro_batches"] = micro,
        };
        int all = nodes * perNode;
        var calls = new JsonArray
        {
            Call("actor_gen", "actor", "generate", 0, 1, 0, 1, 1, 1, 1),
            Call("rew_inf", "reward", "inference", nodes - 1, 1, perNode - 1, 1, 1, 1, 1),
            Call("ref_inf", "ref", "inference", 0, nodes, 0, perNode, 1, all, 1),
            Call("critic_inf", "critic", "inference", 0, nodes, 0, perNode, 1, all, 2),
            Call("actor_train", "actor", "train_step", 0, nodes, 0, perNode, all, 1, 2),
            Call("critic_train", "critic", "train_step", 0, nodes, 0, perNode, 1, all, 2),
        };
        return new JsonObject { ["version"] = 1, ["cluster"] = new JsonObject { ["nodes"] = nodes, ["devices_per_node"] = perNode }, ["calls"] = calls }.ToJsonString();
    }

    internal static string Dir()
    {
        var d = Path.Combine(Path.GetTempPath(), "realn-fault-" + Guid.NewGuid().ToString("N")[..8]);
        Directory.CreateDirectory(d);
        return d;
    }

    internal static string Write(string dir, string name, string text)
    {
        var p = Path.Combine(dir, name);
        File.WriteAllText(p, text);
        return p;
    }

    internal static void WaitFor(Func<bool> cond, TimeSpan limit, string what)
    {
        var until = DateTime.UtcNow + limit;
        while (!cond())
        {
            if (DateTime.UtcNow > until) throw new TimeoutException($"waited {limit.TotalSeconds:F0} s for {what}");
            Thread.Sleep(100);
        }
    }

    /// <summary>PPO iterations logged so far in a run directory.</summary>
    private static int PpoSteps(string dir)
    {
        var m = Path.Combine(dir, "metrics.jsonl");
        if (!File.Exists(m)) return 0;
        try
        {
            using var f = new FileStream(m, FileMode.Open, FileAccess.Read, FileShare.ReadWrite);
            using var r = new StreamReader(f);
            return r.ReadToEnd().Split('\n').Count(l => l.Contains("\"algorithm\":\"ppo\"") && l.Contains("\"call\":\"critic_train\""));
        }
        catch (IOException) { return 0; }
    }

    [Fact]
    public void KilledWorkerEndsTheRunNamingItAndResumeReachesTheUninterruptedParameters() =>
        KillAWorkerMidRunThenResume(output, Config.Replace("PPO_ITERATIONS", "40"), Plan(1, 2), victimRank: 1, PpoSteps, stepsBeforeKill: 5, totalSteps: 40);

    /// <summary>Workers write a bound stage's checkpoints themselves (phase 1) before the master commits
    /// them (phase 2: manifest, rename, pointer). Both workers are killed as they start to write the
    /// second PPO checkpoint (step-10; fault injection): the run ends non-zero naming a worker, the
    /// previous checkpoint (step-8, also written by the workers) stays the latest and verifies, and
    /// `--resume` continues from it to the uninterrupted in-process run's checkpoint files, bit for bit.</summary>
    [Fact]
    public void WorkersKilledDuringAShardedCheckpointWriteLeaveThePreviousCheckpointToResumeFrom()
    {
        string dir = Dir();
        try
        {
            string exe = WorkerProcessTests.Realn();
            string cfg = Write(dir, "exp.yaml", Config.Replace("PPO_ITERATIONS", "4"));
            string plan = Write(dir, "plan.json", Plan(1, 2));
            string refDir = Path.Combine(dir, "ref"), runDir = Path.Combine(dir, "run");
            using (var r = Run.Start("reference run", exe, ["run", cfg, "--plan", plan, "--in-process", "--out", refDir]))
                Assert.True(r.Wait(TimeSpan.FromMinutes(3)) == 0, r.Output);
            using (var run = Run.Start("plan run", exe, ["run", cfg, "--plan", plan, "--out", runDir], new Dictionary<string, string?> { ["REALN_FAILPOINT"] = "save-state:step-10.tmp" }))
            {
                int code = run.Wait(TimeSpan.FromMinutes(3));
                output.WriteLine(run.Output[^Math.Min(1500, run.Output.Length)..]);
                Assert.NotEqual(0, code);
                Assert.Contains("exited with code", run.Output);
                Assert.Contains("save actor", run.Output);
            }
            string ckpts = Path.Combine(runDir, "checkpoints");
            Assert.Equal("step-8", File.ReadAllText(Path.Combine(ckpts, "latest")).Trim());
            Assert.False(Directory.Exists(Path.Combine(ckpts, "step-10")));
            Assert.Null(ReaLNative.Engine.Checkpoints.CheckpointStore.VerifyDirectory(Path.Combine(ckpts, "step-8")));
            using (var resumed = Run.Start("resumed run", exe, ["run", cfg, "--plan", plan, "--out", runDir, "--resume"]))
            {
                Assert.True(resumed.Wait(TimeSpan.FromMinutes(3)) == 0, resumed.Output);
                Assert.Contains("resuming from checkpoint step-8", resumed.Output);
            }
            Assert.Equal(Run.Final(refDir), Run.Final(runDir));
            Assert.Empty(Directory.EnumerateDirectories(ckpts, "*.tmp"));
        }
        finally { Directory.Delete(dir, true); }
    }

    /// <summary>Runs the experiment in-process under the plan (the reference), then with worker
    /// processes; once <paramref name="stepsBeforeKill"/> iterations are logged (<paramref name="steps"/>
    /// counts them in a run directory) kills the worker of <paramref name="victimRank"/>. The run must
    /// end non-zero within 30 s naming that worker, leave no worker behind, and `--resume` must reach
    /// the reference's checkpoint files bit for bit.</summary>
    internal static void KillAWorkerMidRunThenResume(ITestOutputHelper output, string config, string planJson, int victimRank,
                                                     Func<string, int> steps, int stepsBeforeKill, int totalSteps)
    {
        string dir = Dir();
        try
        {
            string exe = WorkerProcessTests.Realn();
            string cfg = Write(dir, "exp.yaml", config);
            string plan = Write(dir, "plan.json", planJson);
            string refDir = Path.Combine(dir, "ref"), runDir = Path.Combine(dir, "run");
            using (var r = Run.Start("reference run", exe, ["run", cfg, "--plan", plan, "--in-process", "--out", refDir]))
                Assert.True(r.Wait(TimeSpan.FromMinutes(3)) == 0, r.Output);

            using (var run = Run.Start("plan run", exe, ["run", cfg, "--plan", plan, "--out", runDir]))
            {
                WaitFor(() => steps(runDir) >= stepsBeforeKill || run.Process.HasExited, TimeSpan.FromMinutes(2), $"{stepsBeforeKill} iterations");
                Assert.False(run.Process.HasExited, run.Output);
                var workers = Procs.WorkersOf(run.Process.Id);
                Assert.Equal(2, workers.Count);
                int victim = workers.First(p => File.ReadAllText($"/proc/{p}/cmdline").Replace('\0', ' ').Contains($"--rank {victimRank} "));
                var killed = Stopwatch.StartNew();
                Process.GetProcessById(victim).Kill();
                int code = run.Wait(TimeSpan.FromSeconds(60));
                output.WriteLine($"master exited {code} {killed.Elapsed.TotalSeconds:F1} s after the kill:\n{run.Output[^Math.Min(1500, run.Output.Length)..]}");
                Assert.NotEqual(0, code);
                Assert.True(killed.Elapsed < TimeSpan.FromSeconds(30), $"took {killed.Elapsed.TotalSeconds:F1} s");
                Assert.Contains($"worker {victimRank}", run.Output);
                Assert.Contains("exited with code", run.Output);
                Assert.Contains("during", run.Output);
                WaitFor(() => workers.All(p => !Procs.Alive(p)), TimeSpan.FromSeconds(15), "the surviving worker to exit");
            }
            Assert.True(steps(runDir) < totalSteps);
            using (var resumed = Run.Start("resumed run", exe, ["run", cfg, "--plan", plan, "--out", runDir, "--resume"]))
                Assert.True(resumed.Wait(TimeSpan.FromMinutes(3)) == 0, resumed.Output);
            Assert.Equal(Run.Final(refDir), Run.Final(runDir));
        }
        finally { Directory.Delete(dir, true); }
    }

    /// <summary>A hung worker (SIGSTOP: alive, silent) must be named within the documented 15 s
    /// heartbeat timeout (+ one 1 s beat period) and the master gone soon after: its teardown
    /// kills the silent worker instead of asking it to shut down and waiting (24.7 s to exit before).</summary>
    [Fact]
    public void StoppedWorkerIsNamedWithinTheHeartbeatTimeout()
    {
        string dir = Dir();
        int victim = -1;
        try
        {
            string exe = WorkerProcessTests.Realn();
            string cfg = Write(dir, "exp.yaml", Config.Replace("PPO_ITERATIONS", "400"));
            string plan = Write(dir, "plan.json", Plan(1, 2));
            string runDir = Path.Combine(dir, "run");
            using var run = Run.Start("plan run", exe, ["run", cfg, "--plan", plan, "--out", runDir]);
            WaitFor(() => PpoSteps(runDir) >= 2 || run.Process.HasExited, TimeSpan.FromMinutes(2), "2 PPO iterations");
            Assert.False(run.Process.HasExited, run.Output);
            var workers = Procs.WorkersOf(run.Process.Id);
            Assert.Equal(2, workers.Count);
            victim = workers.First(p => File.ReadAllText($"/proc/{p}/cmdline").Replace('\0', ' ').Contains("--rank 1 "));
            var stopped = Stopwatch.StartNew();
            using (var kill = Process.Start("kill", ["-STOP", victim.ToString()]))
            {
                Assert.True(kill.WaitForExit(5000) && kill.ExitCode == 0, "kill -STOP failed");
            }
            WaitFor(() => run.Output.Contains("job failed") || run.Process.HasExited, TimeSpan.FromSeconds(40), "the failure line");
            double named = stopped.Elapsed.TotalSeconds;
            int code = run.Wait(TimeSpan.FromSeconds(40));
            double exited = stopped.Elapsed.TotalSeconds;
            output.WriteLine($"named {named:F1} s, master exited {exited:F1} s after SIGSTOP:\n{run.Output[^Math.Min(1500, run.Output.Length)..]}");
            Assert.Equal(1, code);
            Assert.Contains("worker 1", run.Output);
            Assert.Contains("sent no heartbeat for", run.Output);
            Assert.True(named >= 14 && named < 18.5, $"named after {named:F1} s; README: a worker that stops beating for 15 s ends the run");
            Assert.True(exited < 21, $"the master exited {exited:F1} s after the stop");
            WaitFor(() => workers.All(p => !Procs.Alive(p)), TimeSpan.FromSeconds(10), "every worker to be gone");
        }
        finally
        {
            if (victim > 0 && Procs.Alive(victim)) try { Process.GetProcessById(victim).Kill(); } catch (ArgumentException) { }
            Directory.Delete(dir, true);
        }
    }

    [Fact]
    public void WorkersOfAKilledMasterExitOnTheirOwn()
    {
        string dir = Dir();
        try
        {
            string exe = WorkerProcessTests.Realn();
            string cfg = Write(dir, "exp.yaml", Config.Replace("PPO_ITERATIONS", "400"));
            string plan = Write(dir, "plan.json", Plan(1, 2));
            string runDir = Path.Combine(dir, "run");
            using var run = Run.Start("plan run", exe, ["run", cfg, "--plan", plan, "--out", runDir]);
            WaitFor(() => PpoSteps(runDir) >= 2 || run.Process.HasExited, TimeSpan.FromMinutes(2), "2 PPO iterations");
            Assert.False(run.Process.HasExited, run.Output);
            var workers = Procs.WorkersOf(run.Process.Id);
            Assert.Equal(2, workers.Count);
            run.Process.Kill();  // SIGKILL: the master cannot tell anyone
            var sw = Stopwatch.StartNew();
            WaitFor(() => workers.All(p => !Procs.Alive(p)), TimeSpan.FromSeconds(40), "the orphaned workers to exit");
            output.WriteLine($"workers gone {sw.Elapsed.TotalSeconds:F1} s after the master was killed");
        }
        finally { Directory.Delete(dir, true); }
    }
}
