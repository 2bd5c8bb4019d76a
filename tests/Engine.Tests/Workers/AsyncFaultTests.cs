// An async run (`mode: async`) under a plan in worker processes: generation on worker 0, every
// other call on worker 1. Killing the generation worker mid-run ends the run non-zero within 30 s,
// naming worker 0, and leaves no worker behind; a resume from the last checkpoint (which holds the
// batches generated ahead) reaches the parameters of the uninterrupted in-process run bit for bit.
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
    public void KilledGenerationWorkerEndsTheRunNamingItAndResumeReachesTheUninterruptedParameters() =>
        FaultTests.KillAWorkerMidRunThenResume(output,
            FaultTests.Config.Replace("PPO_ITERATIONS", "30").Replace("seed: 3", "seed: 3\nmode: async\nmax_staleness: 2").Replace("checkpoint_every: 2", "checkpoint_every: 3"),
            TwoGroupPlan(), victimRank: 0, AsyncSteps, stepsBeforeKill: 4, totalSteps: 30);
}
