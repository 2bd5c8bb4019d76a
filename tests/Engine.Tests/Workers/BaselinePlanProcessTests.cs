// Every baseline of `realn plan` is a plan `realn run --plan` executes in worker processes: the heuristic,
// deepspeed_chat, openrlhf and symmetric plans of a tiny PPO (FaultTests' job, one PPO iteration) on the
// 2-device cpu-local spec validate and run to completion with one worker process per device
// (deepspeed_chat / openrlhf with the engine's data parallelism, not ZeRO-3; docs/cost-model.md).
// Hosting/BaselinePlanTests runs them with in-process devices.
using System.Text.Json.Nodes;
using ReaLNative.Planner;
using Xunit;
using Xunit.Abstractions;

namespace ReaLNative.Engine.Tests.Workers;

[Collection("worker processes")]
public sealed class BaselinePlanProcessTests(ITestOutputHelper output)
{
    [Fact]
    public void EveryBaselinePlanRunsInWorkerProcessesOnCpuLocal()
    {
        string root = Path.Combine(Path.GetTempPath(), "realn-baselines-" + Guid.NewGuid().ToString("N")[..8]);
        Directory.CreateDirectory(root);
        try
        {
            string cfg = Path.Combine(root, "ppo.yaml");
            File.WriteAllText(cfg, FaultTests.Config.Replace("name: fault-test", "name: baselines").Replace("PPO_ITERATIONS", "1"));
            var cluster = ClusterSpec.Load(Path.Combine(Config.ConfigTests.RepoRoot(), "examples/clusters/cpu-local.yaml"));
            var planned = Planner.Experiment.Load(cfg);
            var r = PlanSearch.Run(cluster, planned, new SearchOptions { Seed = 1, StepsPerChain = 500 });
            Assert.Equal(["deepspeed_chat", "heuristic", "openrlhf", "symmetric"], r.Baselines.Keys.Order());
            var ran = new Dictionary<string, string>();   // plan JSON (calls only) -> the first baseline that ran it
            foreach (var (name, b) in r.Baselines)
            {
                Assert.True(b is not null, $"{name}: {Baselines.WhyNot(r.Problem, name, b)}");
                PlanValidator.Validate(b!.Plan, cluster, planned);
                string json = PlanJson.ToJson(b.Plan with { Estimate = null });
                if (ran.TryGetValue(json, out var same)) { output.WriteLine($"{name}: the same plan as {same}"); continue; }
                string plan = Path.Combine(root, name + ".plan.json"), outDir = Path.Combine(root, name);
                File.WriteAllText(plan, PlanJson.ToJson(b.Plan));
                using var run = Run.Start("realn run " + name, WorkerProcessTests.Realn(), ["run", cfg, "--plan", plan, "--out", outDir]);
                int code = run.Wait(TimeSpan.FromMinutes(5));
                Assert.True(code == 0, $"baseline {name} (exit {code}):\n{run.Output}");
                var summary = JsonNode.Parse(File.ReadAllText(Path.Combine(outDir, "summary.json")))!;
                // one worker process per plan device reported its memory
                var procs = summary["peak_rss_bytes_by_process"]!.AsObject();
                Assert.True(procs.ContainsKey("worker_0") && procs.ContainsKey("worker_1"), procs.ToJsonString());
                var ppo = summary["stages"]![2]!;
                Assert.Equal("ppo", (string)ppo["algorithm"]!);
                Assert.Equal(1, (int)ppo["iterations"]!);
                ran[json] = name;
                output.WriteLine($"{name}: ran ({string.Join(", ", b.Plan.Calls.Select(c => $"{c.Name} {c.Mesh} {c.Strategy}"))})");
            }
        }
        finally { Directory.Delete(root, true); }
    }
}
