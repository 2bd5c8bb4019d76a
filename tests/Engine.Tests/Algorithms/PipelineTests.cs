// End-to-end runs of the pipeline on the tiny preset: resume reproduces the uninterrupted run
// bit for bit, and a short seeded PPO run raises the reward-model score of its samples.
using System.Text.Json.Nodes;
using ReaLNative.Engine.Config;
using ReaLNative.Engine.Runs;
using Xunit;

namespace ReaLNative.Engine.Tests.Algorithms;

public class PipelineTests
{
    private static ExperimentConfig Config(int sft, int rm, int ppo, int batch, string extra = "") => ExperimentConfig.Parse($"""
        name: test
        algorithm: ppo
        seed: 5
        iterations: {ppo}
        task: {"{"} name: sort-digits, min_len: 3, max_len: 4 {"}"}
        eval: {"{"} size: 16, every: 2 {"}"}
        checkpoint_every: 2
        models:
          actor:  {"{"} preset: tiny, init: sft {"}"}
          critic: {"{"} preset: tiny, init: rm {"}"}
          ref:    {"{"} preset: tiny, init: sft {"}"}
          reward: {"{"} preset: tiny, init: rm {"}"}
        batch: {"{"} size: {batch}, prompt_len: 8, gen_len: 6, minibatches: 2 {"}"}
        ppo: {"{"} kl_coef: 0.02, ppo_epochs: 2 {"}"}
        {extra}
        stages:
          - {"{"} algorithm: sft, iterations: {sft}, models: {"{"} actor: {"{"} preset: tiny, init: random {"}"} {"}"}, optim: {"{"} lr: 3.0e-3 {"}"} {"}"}
          - {"{"} algorithm: rm, iterations: {rm}, models: {"{"} reward: {"{"} preset: tiny, init: sft {"}"} {"}"} {"}"}
          - {"{"} algorithm: ppo, optim: {"{"} lr: 5.0e-4 {"}"} {"}"}
        """, Path.GetTempPath());

    private static string TempDir()
    {
        var d = Path.Combine(Path.GetTempPath(), "realn-test-" + Guid.NewGuid().ToString("N")[..8]);
        Directory.CreateDirectory(d);
        return d;
    }

    [Fact]
    public void ResumeEqualsUninterruptedRun()
    {
        var cfg = Config(sft: 6, rm: 4, ppo: 4, batch: 8);
        string a = TempDir(), b = TempDir();
        try
        {
            float[] actor, critic;
            using (var p = new Pipeline(cfg, a))
            {
                p.Run(resume: false);
                actor = p.Model("actor").Parameters.ToArray();
                critic = p.Model("critic").Parameters.ToArray();
            }
            using (var p = new Pipeline(cfg, b))
                Assert.True((bool)p.Run(resume: false, stopAfterIterations: 12)["interrupted"]!);  // sft 6 + rm 4 + ppo 2
            // a later resume discards metric lines written after the last checkpoint
            File.AppendAllText(Path.Combine(b, "metrics.jsonl"), "");
            using (var p = new Pipeline(cfg, b))
            {
                var summary = p.Run(resume: true);
                Assert.Equal(actor, p.Model("actor").Parameters.ToArray());
                Assert.Equal(critic, p.Model("critic").Parameters.ToArray());
                Assert.NotNull(summary["final_task_score"]);
            }
            Assert.Equal(File.ReadAllLines(Path.Combine(a, "metrics.jsonl")).Select(StripSeconds),
                         File.ReadAllLines(Path.Combine(b, "metrics.jsonl")).Select(StripSeconds));
        }
        finally { Directory.Delete(a, true); Directory.Delete(b, true); }
    }

    private static string StripSeconds(string line)
    {
        var o = JsonNode.Parse(line)!.AsObject();
        o.Remove("seconds");
        return o.ToJsonString();
    }

    [Fact]
    public void ShortPpoRunRaisesReward()
    {
        var cfg = Config(sft: 40, rm: 40, ppo: 16, batch: 32);
        string d = TempDir();
        try
        {
            using var p = new Pipeline(cfg, d);
            p.Run(resume: false);
            var rewards = File.ReadLines(Path.Combine(d, "metrics.jsonl")).Select(l => JsonNode.Parse(l)!.AsObject())
                .Where(o => (int)o["stage"]! == 2 && (string)o["call"]! == "rew_inf").Select(o => (double)o["reward_mean"]!).ToList();
            Assert.Equal(16, rewards.Count);
            double first = rewards.Take(4).Average(), last = rewards.TakeLast(4).Average();
            Assert.True(last > first + 0.1, $"reward did not rise: first 4 iterations {first:F3}, last 4 {last:F3}");
            var summary = JsonNode.Parse(File.ReadAllText(Path.Combine(d, "summary.json")))!;
            Assert.Equal(16, (int)summary["iterations"]!);
        }
        finally { Directory.Delete(d, true); }
    }

    [Theory]
    [InlineData("grpo", "task")] [InlineData("rloo", "task")] [InlineData("remax", "task")] [InlineData("ppo", "task")] [InlineData("dpo", "model")]
    public void EveryAlgorithmRunsEndToEnd(string algorithm, string reward)
    {
        // SFT then two iterations of the algorithm: every train line reports its loss, reward and KL
        // (finite); a task reward runs no reward model.
        var cfg = ExperimentConfig.Parse($$"""
            name: e2e
            algorithm: {{algorithm}}
            seed: 2
            iterations: 2
            task: { name: sort-digits, min_len: 3, max_len: 4 }
            eval: { size: 8, every: 2 }
            models:
              actor:  { preset: tiny, init: sft }
              ref:    { preset: tiny, init: sft }
              critic: { preset: tiny, init: sft }
            reward: { kind: {{reward}} }
            batch: { size: 8, prompt_len: 8, gen_len: 6, minibatches: 2, group_size: {{(algorithm is "grpo" or "rloo" ? 4 : 1)}} }
            ppo: { clip_eps_high: 0.28, dynamic_sampling: {{(algorithm == "rloo" ? "true" : "false")}}, overlong_buffer: 2 }
            stages:
              - { algorithm: sft, iterations: 4, models: { actor: { preset: tiny, init: random } }, optim: { lr: 3.0e-3 } }
              - { algorithm: {{algorithm}}, optim: { lr: 5.0e-4 } }
            """, Path.GetTempPath());
        string d = TempDir();
        try
        {
            using (var p = new Pipeline(cfg, d)) p.Run(resume: false);
            var lines = File.ReadLines(Path.Combine(d, "metrics.jsonl")).Select(l => JsonNode.Parse(l)!.AsObject()).Where(o => (int)o["stage"]! == 1).ToList();
            Assert.DoesNotContain(lines, o => (string)o["call"]! is "rew_inf" or "rew_greedy_inf");
            var train = lines.Where(o => (string)o["call"]! == "actor_train").ToList();
            Assert.Equal(2, train.Count);
            foreach (var o in train)
            {
                if (algorithm == "dpo" && (int)o["pairs"]! == 0) continue;
                Assert.NotNull(o["loss"]); Assert.NotNull(o["kl"]);
                if (algorithm != "dpo") Assert.InRange((double)o["reward_mean"]!, -1.0, 1.0);   // checker 0/1 plus overlong penalty in [-1, 0]
            }
            var summary = JsonNode.Parse(File.ReadAllText(Path.Combine(d, "summary.json")))!;
            Assert.NotNull(summary["final_task_score"]);
        }
        finally { Directory.Delete(d, true); }
    }
}
