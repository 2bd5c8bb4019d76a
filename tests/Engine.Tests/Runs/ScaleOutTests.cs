// Issue 18: a stage bound to the plan keeps no model on the master. Its replicas initialise, load
// and checkpoint their own shards, and a checkpoint written under one plan resumes under another
// plan (other meshes, another device count) bit-exactly.
using ReaLNative.Engine.Config;
using ReaLNative.Engine.Runs;
using ReaLNative.Planner;
using Xunit;
using PlanCallType = ReaLNative.Planner.CallType;

namespace ReaLNative.Engine.Tests.Runs;

public sealed class ScaleOutTests
{
    /// <summary>HF checkpoints the models start from (made once per process): an LM (actor, ref, and
    /// the critic's trunk: only the shared tensors load into a scalar head) and a reward model.</summary>
    private static readonly Lazy<string> Inits = new(() =>
    {
        string dir = Path.Combine(Path.GetTempPath(), "realn-scale-inits-" + Guid.NewGuid().ToString("N")[..8]);
        var cfg = ReaLNative.Engine.Model.LlamaConfig.Preset("tiny");
        using (var lm = new ReaLNative.Engine.Model.LlamaModel(cfg, false)) { lm.InitRandom(7, 0.1f); ReaLNative.Engine.Checkpoints.Safetensors.Save(lm, Path.Combine(dir, "lm")); }
        using (var rm = new ReaLNative.Engine.Model.LlamaModel(cfg, true)) { rm.InitRandom(8, 0.1f); ReaLNative.Engine.Checkpoints.Safetensors.Save(rm, Path.Combine(dir, "score")); }
        return dir;
    });

    private static ExperimentConfig Config(string precision) => ExperimentConfig.Parse($$"""
        name: scale-out-test
        algorithm: ppo
        seed: 5
        precision: {{precision}}
        iterations: 4
        task: { name: sort-digits, min_len: 3, max_len: 4 }
        eval: { size: 8, every: 2 }
        checkpoint_every: 1
        models:
          actor:  { preset: tiny, init: lm }
          critic: { preset: tiny, init: lm }
          ref:    { preset: tiny, init: lm }
          reward: { preset: tiny, init: score }
        batch: { size: 8, prompt_len: 8, gen_len: 6, minibatches: 2 }
        ppo: { kl_coef: 0.05, ppo_epochs: 1 }
        optim: { lr: 5.0e-4 }
        """, Inits.Value);

    /// <summary>Plan B: two devices (plan A, <see cref="PlanExecutionTests.MixedPlan"/>, has four),
    /// every call laid out differently.</summary>
    private static Plan TwoDevicePlan() => new(1, 2,
    [
        PlanExecutionTests.Call("actor_gen", "actor", PlanCallType.Generate, 0, 2, 1, 1, 2, 1),
        PlanExecutionTests.Call("rew_inf", "reward", PlanCallType.Inference, 0, 1, 1, 1, 1, 1),
        PlanExecutionTests.Call("ref_inf", "ref", PlanCallType.Inference, 1, 1, 1, 1, 1, 2),
        PlanExecutionTests.Call("critic_inf", "critic", PlanCallType.Inference, 0, 2, 2, 1, 1, 2),
        PlanExecutionTests.Call("actor_train", "actor", PlanCallType.TrainStep, 0, 2, 1, 2, 1, 2),
        PlanExecutionTests.Call("critic_train", "critic", PlanCallType.TrainStep, 0, 2, 2, 1, 1, 2),
    ], null);

    private static void CopyDirectory(string from, string to)
    {
        foreach (var d in Directory.EnumerateDirectories(from, "*", SearchOption.AllDirectories)) Directory.CreateDirectory(d.Replace(from, to));
        foreach (var f in Directory.EnumerateFiles(from, "*", SearchOption.AllDirectories)) File.Copy(f, f.Replace(from, to));
    }

    /// <summary>Run under plan A (4 devices), stop after 2 of 4 iterations (the shards wrote the
    /// checkpoint), resume under plan B (2 devices, other layouts) to the end: the parameters equal
    /// those of a run under plan B resumed from the same checkpoint, stopped after one more iteration
    /// (its checkpoint written by plan B's shards) and resumed again; bit for bit. The master held no
    /// model during the PPO stage of any of these runs.</summary>
    [Theory]
    [InlineData("fp32")]
    [InlineData("bf16")]
    public void ACheckpointWrittenUnderOnePlanResumesUnderAnotherBitExactly(string precision)
    {
        string a = PlanExecutionTests.TempDir(), b = PlanExecutionTests.TempDir();
        try
        {
            int held = -1;
            void Watch(Pipeline p) => held = Math.Max(held, p.FullModelsHeld);
            Pipeline? current = null;
            var progress = (ProgressEvent e) => Watch(current!);
            using (var p = current = new Pipeline(Config(precision), a, progress, plan: PlanExecutionTests.MixedPlan()))
                Assert.True((bool)p.Run(resume: false, stopAfterIterations: 2)["interrupted"]!);
            Assert.Equal(0, held);
            Assert.True(File.Exists(Path.Combine(a, "checkpoints", "step-2", "actor.adam_m")));
            CopyDirectory(a, b);
            float[] actor, critic;
            using (var p = current = new Pipeline(Config(precision), a, progress, plan: TwoDevicePlan()))
            {
                p.Run(resume: true);
                Assert.Contains(p.ResumeNotes, n => n.StartsWith("resuming from checkpoint step-2", StringComparison.Ordinal));
                actor = p.Model("actor").Parameters.ToArray();
                critic = p.Model("critic").Parameters.ToArray();
            }
            using (var p = current = new Pipeline(Config(precision), b, progress, plan: TwoDevicePlan()))
                Assert.True((bool)p.Run(resume: true, stopAfterIterations: 1)["interrupted"]!);
            using (var p = current = new Pipeline(Config(precision), b, progress, plan: TwoDevicePlan()))
            {
                p.Run(resume: true);
                Assert.Contains(p.ResumeNotes, n => n.StartsWith("resuming from checkpoint step-3", StringComparison.Ordinal));
                Assert.Equal(actor, p.Model("actor").Parameters.ToArray());
                Assert.Equal(critic, p.Model("critic").Parameters.ToArray());
            }
            Assert.Equal(0, held);
        }
        finally { Directory.Delete(a, true); Directory.Delete(b, true); }
    }

    /// <summary>A checkpoint the single device wrote (no plan) resumes under a plan, and the plan's
    /// checkpoint resumes without one: every layout reads every writer's files.</summary>
    [Fact]
    public void CheckpointsMoveBetweenTheSingleDeviceAndAPlan()
    {
        string a = PlanExecutionTests.TempDir(), b = PlanExecutionTests.TempDir();
        try
        {
            using (var p = new Pipeline(Config("fp32"), a))
                Assert.True((bool)p.Run(resume: false, stopAfterIterations: 1)["interrupted"]!);
            using (var p = new Pipeline(Config("fp32"), a, plan: TwoDevicePlan()))
                Assert.True((bool)p.Run(resume: true, stopAfterIterations: 2)["interrupted"]!);
            CopyDirectory(a, b);
            // Both continue from step-3 (written by plan B's shards): without a plan, and under the plan.
            float[] single;
            using (var p = new Pipeline(Config("fp32"), a))
            {
                p.Run(resume: true);
                Assert.Contains(p.ResumeNotes, n => n.StartsWith("resuming from checkpoint step-3", StringComparison.Ordinal));
                single = p.Model("actor").Parameters.ToArray();
            }
            using (var p = new Pipeline(Config("fp32"), b, plan: TwoDevicePlan()))
            {
                p.Run(resume: true);
                var planned = p.Model("actor").Parameters.ToArray();
                // Different layouts round differently: close, not equal.
                double diff = 0, norm = 0;
                for (int i = 0; i < single.Length; i++) { diff = Math.Max(diff, Math.Abs(single[i] - planned[i])); norm = Math.Max(norm, Math.Abs(single[i])); }
                Assert.True(diff < 1e-3 * norm, $"single device vs plan after the same checkpoint: max |diff| {diff}, max |w| {norm}");
            }
        }
        finally { Directory.Delete(a, true); Directory.Delete(b, true); }
    }
}
