// A short SFT -> RM -> PPO run whose PPO stage executes under an execution plan with a different
// mesh and (pp, dp, tp) per call on 4 in-process devices (parameters reallocated between the
// layouts) must end with the same actor and critic as the single-device run; a plan the engine
// cannot lay out is refused before anything runs, naming the call.
using ReaLNative.Engine.Config;
using ReaLNative.Engine.Runs;
using ReaLNative.Planner;
using Xunit;
using PlanCallType = ReaLNative.Planner.CallType;

namespace ReaLNative.Engine.Tests.Runs;

public sealed class PlanExecutionTests
{
    /// <summary>SFT -> RM -> PPO on the tiny preset, every model in <paramref name="precision"/>.</summary>
    internal static ExperimentConfig Config(string precision = "fp32") => ExperimentConfig.Parse(ConfigText.Replace("seed: 3\n", $"seed: 3\nprecision: {precision}\n"), Path.GetTempPath());

    private const string ConfigText = """
        name: plan-test
        algorithm: ppo
        seed: 3
        iterations: 2
        task: { name: sort-digits, min_len: 3, max_len: 4 }
        eval: { size: 8, every: 2 }
        checkpoint_every: 2
        models:
          actor:  { preset: tiny, init: sft }
          critic: { preset: tiny, init: rm }
          ref:    { preset: tiny, init: sft }
          reward: { preset: tiny, init: rm }
        batch: { size: 8, prompt_len: 8, gen_len: 6, minibatches: 2 }
        ppo: { kl_coef: 0.05, ppo_epochs: 2 }
        stages:
          - { algorithm: sft, iterations: 6, models: { actor: { preset: tiny, init: random } }, optim: { lr: 3.0e-3 } }
          - { algorithm: rm, iterations: 4, models: { reward: { preset: tiny, init: sft } } }
          - { algorithm: ppo, optim: { lr: 5.0e-4 } }
        """;

    internal static PlanCall Call(string name, string model, PlanCallType type, int start, int count, int pp, int dp, int tp, int micro) =>
        new(name, model, type, new Mesh(0, 1, start, count), new Strategy(pp, dp, tp), micro);

    internal static Plan MixedPlan(int actorTrainTp = 2) => new(1, 4,
    [
        Call("actor_gen", "actor", PlanCallType.Generate, 0, 4, 1, 2, 2, 2),
        Call("rew_inf", "reward", PlanCallType.Inference, 0, 2, 2, 1, 1, 2),
        Call("ref_inf", "ref", PlanCallType.Inference, 2, 2, 1, 2, 1, 1),
        Call("critic_inf", "critic", PlanCallType.Inference, 0, 4, 1, 2, 2, 2),  // shares critic_train's replica
        Call("actor_train", "actor", PlanCallType.TrainStep, 0, 4, 4 / actorTrainTp, 1, actorTrainTp, 4),
        Call("critic_train", "critic", PlanCallType.TrainStep, 0, 4, 1, 2, 2, 2),
    ], null);

    internal static string TempDir()
    {
        var d = Path.Combine(Path.GetTempPath(), "realn-plan-" + Guid.NewGuid().ToString("N")[..8]);
        Directory.CreateDirectory(d);
        return d;
    }

    /// <summary>Parameters after several AdamW steps: different reduction orders change gradients
    /// by fp32 rounding, which Adam's normalised update amplifies only where a gradient element is
    /// itself at rounding level (its update may then flip sign). So: almost every element (all but
    /// 0.2%) within 1e-6, and none further than the optimizer could move it (lr x steps). A wrong
    /// gradient or a stale reallocation moves most elements by about lr per step.</summary>
    internal static void AssertClose(ReaLNative.Engine.Model.LlamaModel want, ReaLNative.Engine.Model.LlamaModel got, double lrTimesSteps, string what)
    {
        long total = 0, off = 0;
        foreach (var v in want.Layout.Views)
        {
            var w = want.View(v.Name).ToArray();
            var g = got.View(v.Name).ToArray();
            double err = w.Zip(g, (x, y) => Math.Abs(x - y)).Max();
            Assert.True(err <= lrTimesSteps, $"{what}, {v.Name}: max |diff| {err:E3} exceeds lr x steps = {lrTimesSteps:E3}");
            off += w.Zip(g, (x, y) => Math.Abs(x - y) > 1e-6 ? 1 : 0).Sum();
            total += w.Length;
        }
        Assert.True(off <= total / 500, $"{what}: {off} of {total} parameters differ by more than 1e-6");
    }

    internal static ExperimentConfig TaskRewardConfig(string algorithm, string reward = "{ kind: task }", string ppo = "{}") => ExperimentConfig.Parse($$"""
        name: plan-task-reward
        algorithm: {{algorithm}}
        seed: 3
        iterations: 2
        task: { name: sort-digits, min_len: 3, max_len: 4 }
        eval: { size: 8, every: 2 }
        models:
          actor: { preset: tiny, init: sft }
          ref:   { preset: tiny, init: sft }
        reward: {{reward}}
        ppo: {{ppo}}
        batch: { size: 8, prompt_len: 8, gen_len: 6, minibatches: 2, group_size: {{(algorithm == "remax" ? 1 : 4)}} }
        stages:
          - { algorithm: sft, iterations: 6, models: { actor: { preset: tiny, init: random } }, optim: { lr: 3.0e-3 } }
          - { algorithm: {{algorithm}}, optim: { lr: 5.0e-4 } }
        """, Path.GetTempPath());

    /// <summary>A 4-device plan of a critic-free stage with a rule-based reward (<see cref="TaskRewardConfig"/>).</summary>
    internal static Plan TaskRewardPlan(string algorithm)
    {
        var calls = new List<PlanCall>
        {
            Call("actor_gen", "actor", PlanCallType.Generate, 0, 2, 1, 2, 1, 1),
            Call("ref_inf", "ref", PlanCallType.Inference, 2, 2, 2, 1, 1, 2),
            Call("actor_train", "actor", PlanCallType.TrainStep, 0, 4, 1, 2, 2, 2),
        };
        if (algorithm == "remax") calls.Insert(1, Call("actor_greedy_gen", "actor", PlanCallType.Generate, 0, 2, 1, 2, 1, 1));
        return new Plan(1, 4, calls, null);
    }

    [Theory]
    [InlineData("grpo")]
    [InlineData("remax")]
    public void TaskRewardStageWithoutRewardModelRunsUnderAPlan(string algorithm)
    {
        // No reward model and no rew_inf call: the plan lists only the actor's and ref's calls,
        // is accepted, and the run matches the single-device one.
        var plan = TaskRewardPlan(algorithm);
        string a = TempDir(), b = TempDir();
        try
        {
            using var single = new Pipeline(TaskRewardConfig(algorithm), a);
            using var planned = new Pipeline(TaskRewardConfig(algorithm), b, plan: plan);
            single.Run(resume: false);
            planned.Run(resume: false);
            // After 6 SFT steps (nearly) every sample is wrong (reward 0, advantage 0): the gradient is rounding
            // noise that Adam scales to lr, so only the bound lr x steps holds, not element equality.
            var (want, got) = (single.Model("actor"), planned.Model("actor"));
            foreach (var v in want.Layout.Views)
            {
                double err = want.View(v.Name).ToArray().Zip(got.View(v.Name).ToArray(), (x, y) => Math.Abs(x - y)).Max();
                Assert.True(err <= 5e-4 * 4 * 1.01, $"{algorithm} under the plan, {v.Name}: max |diff| {err:E3} exceeds lr x steps");
            }
            static List<string> Lines(string d, string call) => File.ReadLines(Path.Combine(d, "metrics.jsonl"))
                .Select(l => System.Text.Json.Nodes.JsonNode.Parse(l)!.AsObject()).Where(o => (string?)o["call"] == call && (int)o["stage"]! == 1)
                .Select(o => { o.Remove("seconds"); return o.ToJsonString(); }).ToList();
            Assert.Equal(Lines(a, "actor_gen")[0], Lines(b, "actor_gen")[0]);   // the same samples, scored by the checker
            Assert.Equal(2, Lines(b, "actor_train").Count);
            Assert.DoesNotContain(File.ReadLines(Path.Combine(b, "metrics.jsonl")), l => l.Contains("\"rew_inf\""));
        }
        finally { Directory.Delete(a, true); Directory.Delete(b, true); }
    }

    [Fact]
    public void PpoUnderMixedLayoutPlanMatchesSingleDevice()
    {
        string a = TempDir(), b = TempDir();
        try
        {
            using (var single = new Pipeline(Config(), a))
            using (var planned = new Pipeline(Config(), b, plan: MixedPlan()))
            {
                single.Run(resume: false);
                planned.Run(resume: false);
                AssertClose(single.Model("actor"), planned.Model("actor"), 5e-4 * 8, "actor after 2 PPO iterations under the plan");
                AssertClose(single.Model("critic"), planned.Model("critic"), 5e-4 * 8, "critic after 2 PPO iterations under the plan");
            }
            // The same samples were drawn: identical generation metrics line by line.
            static IEnumerable<string?> Gen(string d) => File.ReadLines(Path.Combine(d, "metrics.jsonl"))
                .Select(l => System.Text.Json.Nodes.JsonNode.Parse(l)!).Where(o => (string?)o["call"] == "actor_gen").Select(o => o["tokens"]?.ToJsonString());
            Assert.Equal(Gen(a), Gen(b));
        }
        finally { Directory.Delete(a, true); Directory.Delete(b, true); }
    }

    /// <summary>bf16: the plan's train replicas keep the fp32 master and moments, its other replicas
    /// hold bf16 only and are reallocated bf16. The bf16 GEMMs round their activation operand, and
    /// which kernel runs depends on the rows of a call (micro-batches differ under the plan), so
    /// the plan run is not within fp32 rounding of the single-device bf16 run: it must draw the same
    /// samples in every iteration (a generation replica left stale draws others), and its PPO update
    /// must be the single-device one up to bf16 noise (measured 0.17 / 0.27 of the update's norm for
    /// actor / critic; a wrong gradient is 1 or more). It moves exactly half the fp32 plan run's
    /// parameter bytes between the replicas.</summary>
    [Fact]
    public void Bf16PpoUnderMixedLayoutPlanMatchesSingleDeviceAndMovesHalfTheBytes()
    {
        string a = TempDir(), b = TempDir(), c = TempDir();
        try
        {
            using var single = new Pipeline(Config("bf16"), a);
            using var planned = new Pipeline(Config("bf16"), b, plan: MixedPlan());
            using var planned32 = new Pipeline(Config(), c, plan: MixedPlan());
            single.Run(resume: false);
            var bf16 = planned.Run(resume: false);
            var fp32 = planned32.Run(resume: false);
            Assert.Equal(ReaLNative.Engine.Model.ModelPrecision.Bf16, planned.Model("actor").Precision);
            Assert.True(planned.Model("ref").HoldsBf16Only);
            static IEnumerable<string?> Gen(string d) => File.ReadLines(Path.Combine(d, "metrics.jsonl"))
                .Select(l => System.Text.Json.Nodes.JsonNode.Parse(l)!).Where(o => (string?)o["call"] == "actor_gen").Select(o => o["tokens"]?.ToJsonString() + o["gen_len_mean"]?.ToJsonString());
            Assert.Equal(Gen(a), Gen(b));
            foreach (var (role, artifact) in new[] { ("actor", "sft"), ("critic", "rm") })
            {
                // The PPO stage starts from the previous stage's artifact (bf16 weights, widened).
                using var start = ReaLNative.Engine.Checkpoints.Safetensors.Load(Path.Combine(a, "checkpoints", artifact));
                var s0 = start.Parameters.ToArray();
                var want = single.Model(role).Parameters.ToArray();
                var got = planned.Model(role).Parameters.ToArray();
                double update = 0, diff = 0;
                for (int i = 0; i < want.Length; i++)
                {
                    update += (double)(want[i] - s0[i]) * (want[i] - s0[i]);
                    diff += (double)(want[i] - got[i]) * (want[i] - got[i]);
                }
                Assert.True(update > 0, $"{role}: PPO did not move the parameters");
                double rel = Math.Sqrt(diff / update);
                Assert.True(rel < 0.5, $"bf16 {role} under the plan: |difference| / |PPO update| = {rel:F3} (bf16 noise ~0.2)");
            }
            long moved = (long)bf16["realloc_bytes"]!;
            Assert.True(moved > 0, "no parameters were reallocated");
            Assert.Equal((long)fp32["realloc_bytes"]!, 2 * moved);
        }
        finally { Directory.Delete(a, true); Directory.Delete(b, true); Directory.Delete(c, true); }
    }

    /// <summary>bf16 too: the checkpoint's fp32 masters and moments go back to the train replicas,
    /// the other replicas get bf16 from them.</summary>
    [Theory]
    [InlineData("fp32")]
    [InlineData("bf16")]
    public void ResumeUnderAPlanEqualsTheUninterruptedPlanRun(string precision)
    {
        string a = TempDir(), b = TempDir();
        try
        {
            float[] actor, critic;
            using (var p = new Pipeline(Config(precision), a, plan: MixedPlan()))
            {
                p.Run(resume: false);
                actor = p.Model("actor").Parameters.ToArray();
                critic = p.Model("critic").Parameters.ToArray();
            }
            using (var p = new Pipeline(Config(precision), b, plan: MixedPlan()))
                Assert.True((bool)p.Run(resume: false, stopAfterIterations: 11)["interrupted"]!);  // sft 6 + rm 4 + ppo 1
            using (var p = new Pipeline(Config(precision), b, plan: MixedPlan()))
            {
                p.Run(resume: true);
                Assert.Equal(actor, p.Model("actor").Parameters.ToArray());
                Assert.Equal(critic, p.Model("critic").Parameters.ToArray());
            }
        }
        finally { Directory.Delete(a, true); Directory.Delete(b, true); }
    }

    [Fact]
    public void PlanTheEngineCannotLayOutIsRefusedNamingTheCall()
    {
        // tp 4 does not divide the tiny model's 2 kv heads. Refused before any device (worker process) is made.
        int hostsMade = 0;
        var e = Assert.Throws<ConfigException>(() => new Pipeline(Config(), TempDir(), plan: MixedPlan(actorTrainTp: 4),
            hosts: n => { hostsMade++; return new ReaLNative.Engine.Parallelism.LocalCluster(n); }));
        Assert.Contains("actor_train", e.Message);
        Assert.Contains("kv heads", e.Message);
        Assert.Equal(0, hostsMade);
    }
}
