// An async run (`mode: async`) under a plan in worker processes: generation on worker 0, every
// other call on worker 1. Killing the generation worker mid-run ends the run non-zero within 30 s,
// naming worker 0, and leaves no worker behind; a resume from the last checkpoint (which holds the
// batches generated ahead) reaches the parameters of the uninterrupted in-process run bit for bit.
using System.Diagnostics;
using System.Text.Json.Nodes;
using Xunit;
using Xunit.Abstractions;

namespace ReaLNative.Engine.Tests.Workers;

[Collection("worker processes")]
public sealed class AsyncFaultTests(ITestOutputHelper output)
{
    private static string TwoGroupPlan()
    {
        JsonObject Call(string name, string model, string type, int device) => new()
        {
            ["name"] = name, ["model"] = model, ["type"] = type,
            ["mesh"] = new JsonObject { ["node_start"] = 0, ["node_count"] = 1, ["device_start"] = device, ["device_count"] = 1 },
            ["strategy"] = new JsonObject { ["pp"] = 1, ["dp"] = 1, ["tp"] = 1 }, ["micro_batches"] = 1,
        };
        var calls = new JsonArray
        {
            Call("actor_gen", "actor", "generate", 0),
            Call("rew_inf", "reward", "inference", 1), Call("ref_inf", "ref", "inference", 1), Call("critic_inf", "critic", "inference", 1),
            Call("actor_train", "actor", "train_step", 1), Call("critic_train", "critic", "train_step", 1),
        };
        return new JsonObject { ["version"] = 1, ["cluster"] = new JsonObject { ["nodes"] = 1, ["devices_per_node"] = 2 }, ["calls"] = calls }.ToJsonString();
    }

    private static int AsyncSteps(string dir)
    {
        var m = Path.Combine(dir, "metrics.jsonl");
        if (!File.Exists(m)) return 0;
        try
        {
            using var f = new FileStream(m, FileMode.Open, FileAccess.Read, FileShare.ReadWrite);
            using var r = new StreamReader(f);
            return r.ReadToEnd().Split('\n').Count(l => l.Contains("\"call\":\"async\""));
        }
        catch (IOException) { return 0; }
    }

    [Fact]
    public void KilledGenerationWorkerEndsTheRunNamingItAndResumeReachesTheUninterruptedParameters()
    {
        string dir = FaultTests.Dir();
        try
        {
            string exe = WorkerProcessTests.Realn();
            string cfg = FaultTests.Write(dir, "exp.yaml", FaultTests.Config.Replace("PPO_ITERATIONS", "30")
                .Replace("seed: 3", "seed: 3\nmode: async\nmax_staleness: 2").Replace("checkpoint_every: 2", "checkpoint_every: 3"));
            string plan = FaultTests.Write(dir, "plan.json", TwoGroupPlan());
            string refDir = Path.Combine(dir, "ref"), runDir = Path.Combine(dir, "run");
            using (var r = Run.Start("reference run", exe, ["run", cfg, "--plan", plan, "--in-process", "--out", refDir]))
                Assert.True(r.Wait(TimeSpan.FromMinutes(3)) == 0, r.Output);

            using (var run = Run.Start("async plan run", exe, ["run", cfg, "--plan", plan, "--out", runDir]))
            {
                FaultTests.WaitFor(() => AsyncSteps(runDir) >= 4 || run.Process.HasExited, TimeSpan.FromMinutes(2), "4 async PPO iterations");
                Assert.False(run.Process.HasExited, run.Output);
                var workers = FaultTests.Workers(c => true).Where(p => Procs.ParentOf(p) == run.Process.Id).ToList();
                Assert.Equal(2, workers.Count);
                int victim = workers.First(p => File.ReadAllText($"/proc/{p}/cmdline").Replace('\0', ' ').Contains("--rank 0 "));
                var killed = Stopwatch.StartNew();
                Process.GetProcessById(victim).Kill();
                int code = run.Wait(TimeSpan.FromSeconds(60));
                output.WriteLine($"master exited {code} {killed.Elapsed.TotalSeconds:F1} s after the kill:\n{run.Output[^Math.Min(1500, run.Output.Length)..]}");
                Assert.NotEqual(0, code);
                Assert.True(killed.Elapsed < TimeSpan.FromSeconds(30), $"took {killed.Elapsed.TotalSeconds:F1} s");
                Assert.Contains("worker 0", run.Output);
                Assert.Contains("exited with code", run.Output);
                FaultTests.WaitFor(() => workers.All(p => !Procs.Alive(p)), TimeSpan.FromSeconds(15), "the surviving worker to exit");
            }
            Assert.True(AsyncSteps(runDir) < 30);
            using (var resumed = Run.Start("resumed run", exe, ["run", cfg, "--plan", plan, "--out", runDir, "--resume"]))
                Assert.True(resumed.Wait(TimeSpan.FromMinutes(3)) == 0, resumed.Output);
            Assert.Equal(Run.Final(refDir), Run.Final(runDir));
        }
        finally { Directory.Delete(dir, true); }
    }
}
