// `realn bench async` (src/Cli/Commands/BenchAsyncCommand.cs) as a child process, on tiny stand-ins
// for the suite's workloads (a folder given as --examples holding ppo-tiny.yaml, grpo-math.yaml and
// their two-device plans): the JSON names every figure the async goal needs for each workload (both
// modes' held-out scores and their difference, whole-run, RL-stage and RL-iteration wall times and
// their ratios, the async run's staleness), and the runs of the RL stage start from the same point:
// the bench's sync run of a workload is the plain `realn run` of its config, metric line for metric
// line. The full benchmark (the real examples) is the bench's, not the tests'.
using System.Text.Json.Nodes;
using ReaLNative.Engine.Tests.Docs;
using ReaLNative.Engine.Tests.Runs;
using Xunit;

namespace ReaLNative.Engine.Tests.Workers;

public sealed class BenchAsyncTests(Xunit.Abstractions.ITestOutputHelper output) : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("realn-bench-async-").FullName;

    public void Dispose() => Directory.Delete(_dir, true);

    private const string Grpo = """
        name: grpo-bench-test
        algorithm: grpo
        seed: 5
        iterations: 3
        task: { name: sort-digits, min_len: 3, max_len: 4 }
        eval: { size: 8, every: 2 }
        checkpoint_every: 100
        models:
          actor: { preset: tiny, init: sft }
          ref:   { preset: tiny, init: sft }
        reward: { kind: task }
        batch: { size: 8, prompt_len: 8, gen_len: 6, minibatches: 2, group_size: 4 }
        ppo: { kl_coef: 0.05, ppo_epochs: 1 }
        stages:
          - { algorithm: sft, iterations: 4, models: { actor: { preset: tiny, init: random } }, optim: { lr: 3.0e-3 } }
          - { algorithm: grpo, optim: { lr: 5.0e-4 } }
        """;

    private string Examples()
    {
        string ex = Path.Combine(_dir, "examples"), root = ReadmeCommandTableTests.Root();
        Directory.CreateDirectory(Path.Combine(ex, "bench"));
        File.WriteAllText(Path.Combine(ex, "ppo-tiny.yaml"), AsyncRunTests.Yaml("mode: sync", "ppo", 3, 100));
        File.WriteAllText(Path.Combine(ex, "grpo-math.yaml"), Grpo);
        File.Copy(Path.Combine(root, "examples", "bench", "ppo-tiny-two-groups.plan.json"), Path.Combine(ex, "bench", "ppo-tiny-two-groups.plan.json"));
        File.Copy(Path.Combine(root, "examples", "bench", "grpo-math-two-groups.plan.json"), Path.Combine(ex, "bench", "grpo-math-two-groups.plan.json"));
        return ex;
    }

    private static List<string> RlContent(string dir, int stage) =>
        AsyncRunTests.Content(AsyncRunTests.Lines(dir).Where(l => (int)l["stage"]! == stage)).ToList();

    [Fact]
    public void TheSuitePrintsBothModesOfEachWorkloadFromTheSameStart()
    {
        string ex = Examples(), outDir = Path.Combine(_dir, "out");
        var (code, text) = ReadmeCommandTableTests.Realn("bench", "async", "--examples", ex, "--out", outDir, "--in-process", "--json");
        output.WriteLine(text);
        Assert.True(code == 0, $"exit {code}: {text}");
        var doc = JsonNode.Parse(text)!.AsObject();
        Assert.Equal("async", (string)doc["benchmark"]!);
        Assert.Equal(0.03, (double)doc["score_tolerance"]!);
        var workloads = doc["workloads"]!.AsArray().Select(w => w!.AsObject()).ToList();
        Assert.Equal(["ppo-tiny", "grpo-math"], workloads.Select(w => (string)w["workload"]!));
        foreach (var w in workloads)
        {
            string name = (string)w["workload"]!;
            Assert.Equal("in-process devices", (string)w["hosts"]!);
            Assert.Equal(1, (int)w["max_staleness"]!);
            var shared = w["shared_start"]!.AsObject();
            Assert.Equal(name == "ppo-tiny" ? ["sft", "rm"] : ["sft"], shared["stages"]!.AsArray().Select(x => (string)x!));
            Assert.True((double)shared["seconds"]! > 0);
            var (sync, async) = (w["sync"]!.AsObject(), w["async"]!.AsObject());
            foreach (var m in new[] { sync, async })
            {
                Assert.InRange((double)m["final_task_score"]!, 0, 1);
                foreach (var k in new[] { "seconds", "rl_stage_seconds", "rl_iterations_seconds" }) Assert.True((double)m[k]! > 0, $"{name}: {k}");
                // The whole run is the shared start plus the run's own RL stage.
                Assert.True((double)m["seconds"]! >= (double)m["rl_stage_seconds"]! + (double)shared["seconds"]! - 0.02, $"{name}: whole run shorter than its parts");
            }
            Assert.Equal(Math.Round((double)async["final_task_score"]! - (double)sync["final_task_score"]!, 4), (double)w["score_difference"]!, 6);
            Assert.Equal(Math.Abs((double)w["score_difference"]!) <= 0.03, (bool)w["score_within_tolerance"]!);
            foreach (var k in new[] { "seconds", "rl_stage_seconds", "rl_iterations_seconds" })
                Assert.Equal(Math.Round((double)async[k]! / (double)sync[k]!, 3), (double)w[k + "_ratio"]!, 3);
            // Staleness: iteration 0 samples with the start's weights (0 versions behind), the rest 1 behind.
            var hist = async["staleness_histogram"]!.AsObject();
            const int batch = 8;   // samples per iteration (batch.size) in both configs
            Assert.Equal(batch, (int)hist["0"]!);
            Assert.Equal(2 * batch, (int)hist["1"]!);
            Assert.Equal(0, (int)async["dropped_stale"]!);
            Assert.InRange((double)async["gen_utilisation"]!, 0, 1);
            Assert.Null(sync["staleness_histogram"]);
            var rows = w["rows"]!.AsArray().Select(r => r!.AsObject()).ToList();
            Assert.Equal(["async", "sync"], rows.Select(r => (string)r["mode"]!));
            Assert.All(rows, r => Assert.True(r.ContainsKey("load_average_before") && r.ContainsKey("load_average_after")));

            // Same start: both runs hold the shared stages' metric lines unchanged, and the RL stage of
            // the bench's sync run is the plain run's (resuming the shared start is the uninterrupted run).
            string wdir = Path.Combine(outDir, name), cfg = Path.Combine(ex, $"{name}.yaml");
            int rl = name == "ppo-tiny" ? 2 : 1;
            for (int s = 0; s < rl; s++)
            {
                Assert.Equal(RlContent(Path.Combine(wdir, "pre-rl"), s), RlContent(Path.Combine(wdir, "sync-1"), s));
                Assert.Equal(RlContent(Path.Combine(wdir, "pre-rl"), s), RlContent(Path.Combine(wdir, "async-1"), s));
            }
            if (name != "grpo-math") continue;
            string plain = Path.Combine(_dir, "plain");
            var (rc, o) = ReadmeCommandTableTests.Realn("run", cfg, "--plan", Path.Combine(ex, "bench", "grpo-math-two-groups.plan.json"), "--in-process", "--out", plain);
            Assert.True(rc == 0, o);
            Assert.Equal(RlContent(plain, rl), RlContent(Path.Combine(wdir, "sync-1"), rl));
            Assert.NotEqual(RlContent(plain, rl), RlContent(Path.Combine(wdir, "async-1"), rl).Where(l => !l.Contains("\"call\":\"async\"")).ToList());
        }
    }

    /// <summary>--seeds: each mode's RL stage runs once per seed from the one shared start (the
    /// config's seed), the seed changes the RL stage's samples, and each mode's score is the mean of
    /// its seeds' scores (listed per seed); a malformed list is refused naming the option.</summary>
    [Fact]
    public void SeedsRunTheRlStageOncePerSeedFromTheSameStartAndAverageTheScores()
    {
        string cfg = Path.Combine(_dir, "grpo.yaml"), outDir = Path.Combine(_dir, "out-seeds");
        File.WriteAllText(cfg, Grpo);
        var (code, text) = ReadmeCommandTableTests.Realn("bench", "async", cfg, "--seeds", "5,6", "--out", outDir, "--json");
        output.WriteLine(text);
        Assert.True(code == 0, $"exit {code}: {text}");
        var w = JsonNode.Parse(text)!["workloads"]![0]!.AsObject();
        Assert.Equal([5L, 6L], w["seeds"]!.AsArray().Select(x => (long)x!));
        var rows = w["rows"]!.AsArray().Select(r => r!.AsObject()).ToList();
        Assert.Equal(["5 async", "5 sync", "6 async", "6 sync"], rows.Select(r => $"{(long)r["seed"]!} {(string)r["mode"]!}"));
        foreach (var mode in new[] { "sync", "async" })
        {
            var m = w[mode]!.AsObject();
            var bySeed = m["final_task_score_by_seed"]!.AsObject();
            Assert.Equal(["5", "6"], bySeed.Select(kv => kv.Key));
            foreach (var r in rows.Where(r => (string)r["mode"]! == mode))
                Assert.Equal((double)r["final_task_score"]!, (double)bySeed[((long)r["seed"]!).ToString()]!, 4);
            Assert.Equal(Math.Round(((double)bySeed["5"]! + (double)bySeed["6"]!) / 2, 4), (double)m["final_task_score"]!, 4);
        }
        // One shared start (the SFT stage, the config's seed), then the RL stage with each seed's samples.
        string D(string name) => Path.Combine(outDir, name);
        foreach (var run in new[] { "sync-seed5-1", "sync-seed6-1", "async-seed5-1", "async-seed6-1" })
            Assert.Equal(RlContent(D("pre-rl"), 0), RlContent(D(run), 0));
        Assert.NotEqual(RlContent(D("sync-seed5-1"), 1), RlContent(D("sync-seed6-1"), 1));
        // Seed 5 is the config's own: its sync run is the plain bench's.
        var (rc, o) = ReadmeCommandTableTests.Realn("bench", "async", cfg, "--out", Path.Combine(_dir, "out-plain"), "--json");
        Assert.True(rc == 0, o);
        Assert.Equal(RlContent(Path.Combine(_dir, "out-plain", "sync-1"), 1), RlContent(D("sync-seed5-1"), 1));

        foreach (var bad in new[] { "5,5", "x", "-1", "" })
        {
            var (badCode, badText) = ReadmeCommandTableTests.Realn("bench", "async", cfg, "--seeds", bad, "--out", Path.Combine(_dir, "never"));
            Assert.True(badCode != 0, $"--seeds '{bad}' accepted");
            Assert.Contains("--seeds", badText);
        }
    }
}
