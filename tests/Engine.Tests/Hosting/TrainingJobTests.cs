// The public hosting API end to end on a tiny pipeline: a run completes with metrics streamed,
// a second run cancelled midway ends Cancelled with its thread gone and a loadable checkpoint.
using Xunit;

namespace ReaLNative.Engine.Tests.Hosting;

public class TrainingJobTests
{
    private static TrainingExperiment Tiny() => TrainingExperiment.FromYamlText("""
        name: host-test
        algorithm: ppo
        seed: 3
        iterations: 4
        task: { name: sort-digits, min_len: 3, max_len: 4 }
        eval: { size: 8, every: 2 }
        checkpoint_every: 2
        models:
          actor:  { preset: tiny, init: sft }
          critic: { preset: tiny, init: rm }
          ref:    { preset: tiny, init: sft }
          reward: { preset: tiny, init: rm }
        batch: { size: 8, prompt_len: 8, gen_len: 6, minibatches: 2 }
        stages:
          - { algorithm: sft, iterations: 4, models: { actor: { preset: tiny, init: random } } }
          - { algorithm: rm, iterations: 2, models: { reward: { preset: tiny, init: sft } } }
          - { algorithm: ppo }
        """);

    private static string TempDir() => Path.Combine(Path.GetTempPath(), "realn-host-" + Guid.NewGuid().ToString("N")[..8]);

    [Fact]
    public async Task RunCompletesAndStreamsMetrics()
    {
        string dir = TempDir();
        try
        {
            var job = new TrainingJob(Tiny(), new TrainingOptions { OutputDirectory = dir });
            var seen = new List<MetricRecord>();
            var reader = Task.Run(async () => { await foreach (var m in job.Metrics) seen.Add(m); });
            var result = await job.RunAsync();
            await reader.WaitAsync(TimeSpan.FromSeconds(30));
            Assert.Equal(TrainingStatus.Completed, result.Status);
            Assert.False(job.IsRunning);
            Assert.Equal(File.ReadLines(Path.Combine(dir, "metrics.jsonl")).Count(l => l.Length > 0), seen.Count);
            Assert.Contains(seen, m => m.Call == "actor_train" && m.Stage == 2);
            Assert.NotNull(result.FinalTaskScore);
            var ck = Assert.IsType<CheckpointInfo>(result.LastCheckpoint);
            Assert.Equal(2, ck.Stage);
            ck.Verify();
            using var actor = Checkpoint.Load(ck.ModelDirectory("actor"));
            var text = new TextGenerator(actor).Generate("4213=", new GenerationSettings { MaxNewTokens = 6 });
            Assert.NotNull(text);
        }
        finally { if (Directory.Exists(dir)) Directory.Delete(dir, true); }
    }

    [Fact]
    public async Task CancelMidwayEndsCleanlyWithCompleteCheckpoint()
    {
        string dir = TempDir();
        try
        {
            using var cts = new CancellationTokenSource();
            var job = new TrainingJob(Tiny(), new TrainingOptions { OutputDirectory = dir });
            var progress = new SyncProgress(p => { if (p.Stage == 1 && p.Iteration >= 1) cts.Cancel(); });
            var result = await job.RunAsync(progress, cts.Token);
            Assert.Equal(TrainingStatus.Cancelled, result.Status);
            Assert.False(job.IsRunning);
            Assert.Null(result.SummaryJson);
            var ck = Assert.IsType<CheckpointInfo>(result.LastCheckpoint);
            ck.Verify();
            Assert.False(File.Exists(Path.Combine(dir, "summary.json")));
            Assert.Empty(Directory.EnumerateDirectories(Path.Combine(dir, "checkpoints"), "*.tmp"));
            int global = (ck.Stage == 0 ? 0 : 4) + ck.NextIteration;   // iterations of earlier stages (sft: 4) + this one's
            Assert.Equal(Path.Combine(dir, "checkpoints", "step-" + global), ck.Directory);
            // a corrupt file is caught by Verify's manifest check
            var adam = Path.Combine(ck.Directory, ck.Roles[0] + ".adam_m");
            var bytes = File.ReadAllBytes(adam);
            bytes[8] ^= 1;
            File.WriteAllBytes(adam, bytes);
            var e = Assert.Throws<InvalidDataException>(ck.Verify);
            Assert.Contains(ck.Roles[0] + ".adam_m checksum mismatch", e.Message);
        }
        finally { if (Directory.Exists(dir)) Directory.Delete(dir, true); }
    }

    [Fact]
    public async Task AFolderHoldingARunIsRefusedUnlessOverwriteWhichKeepsForeignFiles()
    {
        string dir = TempDir();
        try
        {
            Directory.CreateDirectory(Path.Combine(dir, "checkpoints", "step-99"));
            File.WriteAllText(Path.Combine(dir, "metrics.jsonl"), "{}\n");
            File.WriteAllText(Path.Combine(dir, "notes.txt"), "mine");
            var e = await Assert.ThrowsAsync<RunDirectoryException>(() => new TrainingJob(Tiny(), new TrainingOptions { OutputDirectory = dir }).RunAsync());
            Assert.Contains("already holds 1 checkpoint, metrics.jsonl (1 lines) and 1 other entry (notes.txt); pass TrainingOptions.Resume to continue or TrainingOptions.Overwrite", e.Message);
            Assert.True(Directory.Exists(Path.Combine(dir, "checkpoints", "step-99")));
            Assert.False(File.Exists(Path.Combine(dir, "plan.json")));
            Assert.Throws<ArgumentException>(() => new TrainingJob(Tiny(), new TrainingOptions { OutputDirectory = dir, Resume = true, Overwrite = true }));

            using var cts = new CancellationTokenSource();
            var job = new TrainingJob(Tiny(), new TrainingOptions { OutputDirectory = dir, Overwrite = true });
            var result = await job.RunAsync(new SyncProgress(p => { if (p.Iteration >= 1) cts.Cancel(); }), cts.Token);
            Assert.Equal(TrainingStatus.Cancelled, result.Status);
            Assert.False(Directory.Exists(Path.Combine(dir, "checkpoints", "step-99")));
            Assert.Equal("mine", File.ReadAllText(Path.Combine(dir, "notes.txt")));
            Assert.True(File.Exists(Path.Combine(dir, "plan.json")));
            Assert.DoesNotContain("{}", File.ReadAllLines(Path.Combine(dir, "metrics.jsonl")));
        }
        finally { if (Directory.Exists(dir)) Directory.Delete(dir, true); }
    }

    [Fact]
    public void BadInputNamesTheField()
    {
        var e = Assert.Throws<ExperimentConfigException>(() => TrainingExperiment.FromYamlText("algorithm: ppo\nbatch: { size: -1 }\n"));
        Assert.False(string.IsNullOrEmpty(e.Message));
        Assert.Throws<ArgumentOutOfRangeException>(() => Tiny().WithStageIterations(7, 1));
        Assert.Throws<ArgumentOutOfRangeException>(() => Tiny().WithCheckpointKeep(0));
        Assert.Equal(2, Tiny().CheckpointKeep);
        Assert.Equal(3, Tiny().WithCheckpointKeep(3).CheckpointKeep);
        Assert.Throws<FileNotFoundException>(() => TrainingExperiment.FromYaml("/nonexistent/x.yaml"));
    }

    /// <summary>IProgress that reports on the calling (training) thread, so the test cancels deterministically.</summary>
    private sealed class SyncProgress(Action<TrainingProgress> a) : IProgress<TrainingProgress>
    {
        public void Report(TrainingProgress value) => a(value);
    }
}
