// Checkpoints on real files: a torn newest checkpoint is refused and resume falls back to the
// previous one, still ending bit-identical to the uninterrupted run (it redoes the iterations);
// a flipped byte is a checksum mismatch; a missing manifest is an incomplete checkpoint; when
// none verifies the error names every refusal; checkpoint_keep prunes older checkpoints.
using System.Text.Json.Nodes;
using ReaLNative.Engine.Checkpoints;
using ReaLNative.Engine.Config;
using ReaLNative.Engine.Runs;
using Xunit;

namespace ReaLNative.Engine.Tests.Runs;

/// <summary>One uninterrupted run and one run interrupted after 14 of 16 iterations (checkpoints
/// step-12 and step-14 kept), shared by the tests; each test corrupts its own copy.</summary>
public sealed class CheckpointRunFixture : IDisposable
{
    internal static ExperimentConfig Config(int keep = 2) => ExperimentConfig.Parse($"""
        name: ckpt-test
        algorithm: ppo
        seed: 5
        iterations: 6
        task: {"{"} name: sort-digits, min_len: 3, max_len: 4 {"}"}
        eval: {"{"} size: 8, every: 2 {"}"}
        checkpoint_every: 2
        checkpoint_keep: {keep}
        models:
          actor:  {"{"} preset: tiny, init: sft {"}"}
          critic: {"{"} preset: tiny, init: rm {"}"}
          ref:    {"{"} preset: tiny, init: sft {"}"}
          reward: {"{"} preset: tiny, init: rm {"}"}
        batch: {"{"} size: 8, prompt_len: 8, gen_len: 6, minibatches: 2 {"}"}
        ppo: {"{"} kl_coef: 0.02, ppo_epochs: 2 {"}"}
        stages:
          - {"{"} algorithm: sft, iterations: 6, models: {"{"} actor: {"{"} preset: tiny, init: random {"}"} {"}"}, optim: {"{"} lr: 3.0e-3 {"}"} {"}"}
          - {"{"} algorithm: rm, iterations: 4, models: {"{"} reward: {"{"} preset: tiny, init: sft {"}"} {"}"} {"}"}
          - {"{"} algorithm: ppo, optim: {"{"} lr: 5.0e-4 {"}"} {"}"}
        """, Path.GetTempPath());

    public string Full { get; } = TempDir();
    public string Interrupted { get; } = TempDir();
    public float[] Actor { get; }
    public float[] Critic { get; }

    public CheckpointRunFixture()
    {
        var cfg = Config();
        using (var p = new Pipeline(cfg, Full))
        {
            p.Run(resume: false);
            Actor = p.Model("actor").Parameters.ToArray();
            Critic = p.Model("critic").Parameters.ToArray();
        }
        using (var p = new Pipeline(cfg, Interrupted))
            Assert.True((bool)p.Run(resume: false, stopAfterIterations: 14)["interrupted"]!);  // sft 6 + rm 4 + ppo 4 of 6
    }

    internal static string TempDir()
    {
        var d = Path.Combine(Path.GetTempPath(), "realn-ckpt-" + Guid.NewGuid().ToString("N")[..8]);
        Directory.CreateDirectory(d);
        return d;
    }

    /// <summary>A private copy of the interrupted run's output folder.</summary>
    public string CopyOfInterrupted()
    {
        string d = TempDir();
        foreach (var f in Directory.EnumerateFiles(Interrupted, "*", SearchOption.AllDirectories))
        {
            string t = Path.Combine(d, Path.GetRelativePath(Interrupted, f));
            Directory.CreateDirectory(Path.GetDirectoryName(t)!);
            File.Copy(f, t);
        }
        return d;
    }

    public void Dispose()
    {
        Directory.Delete(Full, true);
        Directory.Delete(Interrupted, true);
    }
}

public sealed class CheckpointResumeTests(CheckpointRunFixture run) : IClassFixture<CheckpointRunFixture>
{
    private static string Ckpt(string outDir, string name) => Path.Combine(outDir, "checkpoints", name);

    private static string StripSeconds(string line)
    {
        var o = JsonNode.Parse(line)!.AsObject();
        o.Remove("seconds");
        return o.ToJsonString();
    }

    private static void FlipByte(string path, long at)
    {
        using var f = new FileStream(path, FileMode.Open, FileAccess.ReadWrite);
        f.Position = at;
        int b = f.ReadByte();
        f.Position = at;
        f.WriteByte((byte)(b ^ 0x5a));
    }

    [Fact]
    public void InterruptedRunKeepsTheNewestTwoWithManifestsAndPointer()
    {
        var store = new CheckpointStore(Path.Combine(run.Interrupted, "checkpoints"), 2);
        Assert.Equal(["step-14", "step-12"], store.Names());
        Assert.Equal("step-14", store.Pointer());
        foreach (var n in store.Names()) Assert.Null(store.Verify(n));
        Assert.Empty(Directory.EnumerateDirectories(store.Root, "*.tmp"));
        Assert.True(File.Exists(Path.Combine(store.Root, "sft", "model.safetensors")));  // stage artifacts are not pruned
        Assert.True(File.Exists(Path.Combine(store.Root, "rm", "model.safetensors")));
        var manifest = JsonNode.Parse(File.ReadAllText(Path.Combine(store.Root, "step-14", "manifest.json")))!["files"]!.AsObject();
        Assert.Contains("state.json", manifest.Select(kv => kv.Key));
        Assert.Contains("actor/model.safetensors", manifest.Select(kv => kv.Key));
        Assert.Contains("critic.adam_v", manifest.Select(kv => kv.Key));
        var info = Assert.IsType<CheckpointInfo>(Checkpoint.Latest(run.Interrupted));
        Assert.Equal(Ckpt(run.Interrupted, "step-14"), info.Directory);
        Assert.Equal(2, info.Stage);
        Assert.Equal(4, info.NextIteration);
        info.Verify();
    }

    [Fact]
    public void TornNewestCheckpointFallsBackAndStillReachesTheUninterruptedParameters()
    {
        string d = run.CopyOfInterrupted();
        try
        {
            string model = Path.Combine(Ckpt(d, "step-14"), "actor", "model.safetensors");
            using (var f = new FileStream(model, FileMode.Open)) f.SetLength(f.Length / 2);   // a torn write
            var e = Assert.Throws<InvalidDataException>(() => Checkpoint.Latest(d)!.Verify());
            Assert.Contains("size mismatch", e.Message);

            using var p = new Pipeline(CheckpointRunFixture.Config(), d);
            var summary = p.Run(resume: true);
            Assert.Contains(p.ResumeNotes, n => n.StartsWith("checkpoint step-14 refused: actor/model.safetensors size mismatch", StringComparison.Ordinal)
                                                && n.EndsWith("falling back to step-12", StringComparison.Ordinal));
            Assert.Contains(p.ResumeNotes, n => n.StartsWith("resuming from checkpoint step-12 (stage 2 ppo, iteration 2)", StringComparison.Ordinal));
            Assert.Equal(run.Actor, p.Model("actor").Parameters.ToArray());
            Assert.Equal(run.Critic, p.Model("critic").Parameters.ToArray());
            Assert.NotNull(summary["final_task_score"]);
            Assert.Equal(File.ReadAllLines(Path.Combine(run.Full, "metrics.jsonl")).Select(StripSeconds),
                         File.ReadAllLines(Path.Combine(d, "metrics.jsonl")).Select(StripSeconds));
            var store = new CheckpointStore(Path.Combine(d, "checkpoints"), 2);
            Assert.Equal(["step-16", "step-14"], store.Names());     // step-14 redone, step-12 pruned
            Assert.Null(store.Verify("step-14"));
        }
        finally { Directory.Delete(d, true); }
    }

    [Fact]
    public void FlippedByteIsRefusedAsAChecksumMismatch()
    {
        string d = run.CopyOfInterrupted();
        try
        {
            FlipByte(Path.Combine(Ckpt(d, "step-14"), "critic.adam_m"), 100);
            using var p = new Pipeline(CheckpointRunFixture.Config(), d);
            Assert.True((bool)p.Run(resume: true, stopAfterIterations: 0)["interrupted"]!);
            Assert.Equal("checkpoint step-14 refused: critic.adam_m checksum mismatch; falling back to step-12", p.ResumeNotes[0]);
            Assert.StartsWith("resuming from checkpoint step-12", p.ResumeNotes[1]);
            Assert.False(Directory.Exists(Ckpt(d, "step-14")));   // refused and newer than the resume point: redone
        }
        finally { Directory.Delete(d, true); }
    }

    [Fact]
    public void CorruptStageArtifactIsRefusedNamingItInsteadOfTrainingFromIt()
    {
        string d = run.CopyOfInterrupted();
        try
        {
            Assert.Null(CheckpointStore.VerifyArtifact(Ckpt(d, "sft")));
            FlipByte(Path.Combine(Ckpt(d, "sft"), "model.safetensors"), 4000);
            using var p = new Pipeline(CheckpointRunFixture.Config(), d);
            // resuming inside the PPO stage initialises the actor and ref from the sft artifact
            var e = Assert.Throws<InvalidDataException>(() => p.Run(resume: true, stopAfterIterations: 0));
            Assert.Contains("stage artifact", e.Message);
            Assert.Contains("model.safetensors checksum mismatch", e.Message);
        }
        finally { Directory.Delete(d, true); }
    }

    [Fact]
    public void MissingManifestIsRefusedAsIncomplete()
    {
        string d = run.CopyOfInterrupted();
        try
        {
            File.Delete(Path.Combine(Ckpt(d, "step-14"), "manifest.json"));
            var notes = new List<string>();
            using var p = new Pipeline(CheckpointRunFixture.Config(), d, note: notes.Add);
            p.Run(resume: true, stopAfterIterations: 0);
            Assert.Equal(p.ResumeNotes, notes);   // the callback sees the same lines, as they happen
            Assert.Contains("checkpoint step-14 refused: manifest.json missing", notes[0]);
            Assert.EndsWith("falling back to step-12", notes[0]);
            // the hosting facade skips it too
            Assert.Equal(Ckpt(d, "step-12"), Checkpoint.Latest(d)!.Directory);
        }
        finally { Directory.Delete(d, true); }
    }

    [Fact]
    public void NoVerifyingCheckpointIsAClearErrorNamingEachRefusal()
    {
        string d = run.CopyOfInterrupted();
        try
        {
            FlipByte(Path.Combine(Ckpt(d, "step-14"), "state.json"), 3);
            File.Delete(Path.Combine(Ckpt(d, "step-12"), "actor.adam_v"));
            string metrics = File.ReadAllText(Path.Combine(d, "metrics.jsonl"));
            using var p = new Pipeline(CheckpointRunFixture.Config(), d);
            var e = Assert.Throws<InvalidDataException>(() => p.Run(resume: true));
            Assert.Contains("cannot resume: no checkpoint", e.Message);
            Assert.Contains("step-14: state.json checksum mismatch", e.Message);
            Assert.Contains("step-12: actor.adam_v missing", e.Message);
            Assert.EndsWith("no older checkpoint left", p.ResumeNotes[^1]);
            Assert.Equal(metrics, File.ReadAllText(Path.Combine(d, "metrics.jsonl")));   // nothing touched
            Assert.True(Directory.Exists(Ckpt(d, "step-14")));
        }
        finally { Directory.Delete(d, true); }
    }
}

/// <summary>The store alone, with small fake checkpoints: numeric order, pointer, pruning.</summary>
public sealed class CheckpointStoreTests
{
    private static string Write(CheckpointStore s, long step) => s.Write(step, dir =>
    {
        File.WriteAllText(Path.Combine(dir, "state.json"), $"{{\"step\":{step}}}");
        Directory.CreateDirectory(Path.Combine(dir, "actor"));
        File.WriteAllBytes(Path.Combine(dir, "actor", "model.safetensors"), new byte[1000 + step]);
    });

    [Theory]
    [InlineData(1)]
    [InlineData(3)]
    public void KeepPrunesOlderCheckpointsInNumericOrder(int keep)
    {
        string root = Path.Combine(CheckpointRunFixture.TempDir(), "checkpoints");
        try
        {
            var s = new CheckpointStore(root, keep);
            Directory.CreateDirectory(Path.Combine(root, "sft"));              // a stage artifact: never pruned
            Directory.CreateDirectory(Path.Combine(root, "step-20.tmp"));      // a crashed write: removed
            foreach (long step in new long[] { 2, 9, 10, 11, 100 }) Write(s, step);
            Assert.Equal(new[] { "step-100", "step-11", "step-10" }.Take(keep), s.Names());
            Assert.Equal("step-100", s.Pointer());
            Assert.True(Directory.Exists(Path.Combine(root, "sft")));
            Assert.False(Directory.Exists(Path.Combine(root, "step-20.tmp")));
            Assert.False(File.Exists(Path.Combine(root, "latest.tmp")));
            foreach (var n in s.Names()) Assert.Null(s.Verify(n));
        }
        finally { Directory.Delete(Path.GetDirectoryName(root)!, true); }
    }

    [Fact]
    public void PointerComesFirstThenNewestNames()
    {
        string root = Path.Combine(CheckpointRunFixture.TempDir(), "checkpoints");
        try
        {
            var s = new CheckpointStore(root, 3);
            Write(s, 4); Write(s, 6); Write(s, 8);
            File.WriteAllText(Path.Combine(root, "latest"), "step-6\n");
            Assert.Equal(["step-6", "step-8", "step-4"], s.Candidates());
            File.WriteAllText(Path.Combine(root, "latest"), "garbage");
            Assert.Equal(["step-8", "step-6", "step-4"], s.Candidates());
            Assert.Throws<ArgumentOutOfRangeException>(() => new CheckpointStore(root, 0));
            File.AppendAllText(Path.Combine(root, "step-8", "actor", "model.safetensors"), "x");
            Assert.Contains("size mismatch", s.Verify("step-8"));
        }
        finally { Directory.Delete(Path.GetDirectoryName(root)!, true); }
    }
}

/// <summary>precision: bf16 checkpoints: HF-style bf16 safetensors (torch_dtype bfloat16) plus the
/// fp32 master and AdamW moments; a run interrupted and resumed ends bit-identical (master, bf16
/// copy and metrics) to the uninterrupted run.</summary>
public sealed class Bf16CheckpointResumeTests
{
    [Fact]
    public void Bf16RunResumesBitExact()
    {
        var cfg = ExperimentConfig.Parse(Bf16Yaml, Path.GetTempPath());
        string full = CheckpointRunFixture.TempDir(), cut = CheckpointRunFixture.TempDir();
        try
        {
            float[] actor, critic;
            ushort[] actorBf16;
            using (var p = new Pipeline(cfg, full))
            {
                p.Run(resume: false);
                actor = p.Model("actor").Parameters.ToArray();
                critic = p.Model("critic").Parameters.ToArray();
                actorBf16 = p.Model("actor").Bf16Parameters.ToArray();
                Assert.True(p.Model("ref").HoldsBf16Only);
                Assert.True(p.Model("reward").HoldsBf16Only);
            }
            using (var p = new Pipeline(cfg, cut))
                Assert.True((bool)p.Run(resume: false, stopAfterIterations: 14)["interrupted"]!);
            string step = Path.Combine(cut, "checkpoints", "step-14");
            Assert.Contains("\"torch_dtype\": \"bfloat16\"", File.ReadAllText(Path.Combine(step, "actor", "config.json")));
            var header = Header(Path.Combine(step, "actor", "model.safetensors"));
            Assert.Equal("BF16", (string)header["model.norm.weight"]!["dtype"]!);
            Assert.True(File.Exists(Path.Combine(step, "actor.master")));
            Assert.True(File.Exists(Path.Combine(step, "critic.master")));
            Assert.Null(new CheckpointStore(Path.Combine(cut, "checkpoints"), 2).Verify("step-14"));
            using (var p = new Pipeline(cfg, cut))
            {
                p.Run(resume: true);
                Assert.Equal(actor, p.Model("actor").Parameters.ToArray());
                Assert.Equal(critic, p.Model("critic").Parameters.ToArray());
                Assert.Equal(actorBf16, p.Model("actor").Bf16Parameters.ToArray());
            }
            Assert.Equal(File.ReadAllLines(Path.Combine(full, "metrics.jsonl")).Select(StripSeconds),
                         File.ReadAllLines(Path.Combine(cut, "metrics.jsonl")).Select(StripSeconds));
        }
        finally
        {
            Directory.Delete(full, true);
            Directory.Delete(cut, true);
        }
    }

    private static readonly string Bf16Yaml = """
        name: ckpt-bf16
        algorithm: ppo
        seed: 5
        precision: bf16
        iterations: 6
        task: { name: sort-digits, min_len: 3, max_len: 4 }
        eval: { size: 8, every: 2 }
        checkpoint_every: 2
        models:
          actor:  { preset: tiny, init: sft }
          critic: { preset: tiny, init: rm }
          ref:    { preset: tiny, init: sft }
          reward: { preset: tiny, init: rm }
        batch: { size: 8, prompt_len: 8, gen_len: 6, minibatches: 2 }
        ppo: { kl_coef: 0.02, ppo_epochs: 2 }
        stages:
          - { algorithm: sft, iterations: 6, models: { actor: { preset: tiny, init: random } }, optim: { lr: 3.0e-3 } }
          - { algorithm: rm, iterations: 4, models: { reward: { preset: tiny, init: sft } } }
          - { algorithm: ppo, optim: { lr: 5.0e-4 } }
        """;

    private static JsonObject Header(string path)
    {
        using var f = File.OpenRead(path);
        var len = new byte[8];
        f.ReadExactly(len);
        var hb = new byte[BitConverter.ToInt64(len)];
        f.ReadExactly(hb);
        return JsonNode.Parse(hb)!.AsObject();
    }

    private static string StripSeconds(string line)
    {
        var o = JsonNode.Parse(line)!.AsObject();
        o.Remove("seconds");
        return o.ToJsonString();
    }
}
