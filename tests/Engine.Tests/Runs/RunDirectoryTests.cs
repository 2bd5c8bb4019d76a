// The run directory's rules on small fake directories (no training): what a fresh start refuses and
// how it names it, what --overwrite deletes (only a run's files), the writability probe, and
// resume's cut-back of metrics.jsonl (to the checkpoint's step; torn and malformed lines).
using System.Text;
using ReaLNative.Engine.Runs;
using Xunit;

namespace ReaLNative.Engine.Tests.Runs;

public sealed class RunDirectoryTests : IDisposable
{
    private readonly string _dir = Path.Combine(Path.GetTempPath(), "realn-rd-" + Guid.NewGuid().ToString("N")[..8]);

    public RunDirectoryTests() => Directory.CreateDirectory(_dir);
    public void Dispose() => Directory.Delete(_dir, true);

    private static string Line(int stage, int step, string call = "actor_train") =>
        $"{{\"stage\":{stage},\"algorithm\":\"x\",\"step\":{step},\"call\":\"{call}\"}}\n";

    private string Metrics(string text)
    {
        string p = Path.Combine(_dir, "metrics.jsonl");
        File.WriteAllText(p, text);
        return p;
    }

    [Fact]
    public void FreshStartRefusesANonEmptyDirectoryNamingWhatIsThere()
    {
        Assert.Null(RunDirectory.Describe(_dir));
        RunDirectory.Check(_dir, RunStart.Fresh, "--resume", "--overwrite");   // empty: fine
        Assert.Empty(Directory.EnumerateFiles(_dir, "*", SearchOption.AllDirectories));   // the probe left nothing
        RunDirectory.Check(_dir, RunStart.Fresh, "--resume", "--overwrite");   // checking twice (launch, then the run) is fine: an empty checkpoints/ is nothing
        Directory.CreateDirectory(Path.Combine(_dir, "checkpoints", "step-2"));
        Directory.CreateDirectory(Path.Combine(_dir, "checkpoints", "step-4"));
        Metrics(Line(0, 1) + Line(0, 2) + Line(0, 3));
        File.WriteAllText(Path.Combine(_dir, "notes.txt"), "x");
        var e = Assert.Throws<RunDirectoryException>(() => RunDirectory.Check(_dir, RunStart.Fresh, "--resume", "--overwrite"));
        Assert.Equal($"{_dir} already holds 2 checkpoints, metrics.jsonl (3 lines) and 1 other entry (notes.txt); " +
                     "pass --resume to continue or --overwrite to start over (it deletes only what a run wrote)", e.Message);
        RunDirectory.Check(_dir, RunStart.Overwrite, "--resume", "--overwrite");   // checks, deletes nothing
        Assert.True(Directory.Exists(Path.Combine(_dir, "checkpoints", "step-4")));
    }

    [Fact]
    public void DeleteRunFilesKeepsForeignFiles()
    {
        string ck = Path.Combine(_dir, "checkpoints");
        foreach (var d in new[] { "step-2", "step-4.tmp", "sft", "rm.tmp", "mine" }) Directory.CreateDirectory(Path.Combine(ck, d));
        foreach (var f in new[] { "latest", "latest.tmp", "notes.tmp" }) File.WriteAllText(Path.Combine(ck, f), "");
        foreach (var f in new[] { "metrics.jsonl", "summary.json", "curves.png", "plan.json", "exp.yaml" }) File.WriteAllText(Path.Combine(_dir, f), "");
        RunDirectory.DeleteRunFiles(_dir);
        Assert.Equal(["exp.yaml"], Directory.EnumerateFiles(_dir).Select(Path.GetFileName));
        Assert.Equal(["mine", "notes.tmp"], Directory.EnumerateFileSystemEntries(ck).Select(Path.GetFileName).Order());
    }

    [Fact]
    public void ProbeRefusesAPathThatCannotTakeAFile()
    {
        // A path under a regular file fails for root too (ENOTDIR), unlike permission bits.
        string file = Path.Combine(_dir, "file");
        File.WriteAllText(file, "");
        var e = Assert.Throws<RunDirectoryException>(() => RunDirectory.Probe(Path.Combine(file, "checkpoints")));
        Assert.Contains("is not writable", e.Message);
        Assert.Throws<RunDirectoryException>(() => RunDirectory.Check(file, RunStart.Fresh, "--resume", "--overwrite"));
        Assert.Throws<RunDirectoryException>(() => RunDirectory.Check(Path.Combine(file, "run"), RunStart.Fresh, "--resume", "--overwrite"));
        // checkpoints/ a file: refused before anything
        string d = Path.Combine(_dir, "run");
        Directory.CreateDirectory(d);
        File.WriteAllText(Path.Combine(d, "checkpoints"), "");
        Assert.Contains("is a file", Assert.Throws<RunDirectoryException>(() => RunDirectory.Check(d, RunStart.Resume, "--resume", "--overwrite")).Message);
    }

    [Fact]
    public void ResumeCutKeepsTheLinesUpToTheCheckpointsStep()
    {
        // stage 0 done (2 iterations), stage 1 checkpointed after iteration 2, lines of iteration 3 follow
        string text = Line(0, 0, "eval") + Line(0, 1) + Line(0, 2) + Line(1, 0, "eval") + Line(1, 1) + Line(1, 2) + Line(1, 2, "eval");
        string p = Metrics(text + Line(1, 3) + Line(2, 0, "eval"));
        var cut = RunDirectory.ResumeCut(p, 1, 2, 7, "step-4");
        Assert.Equal(7, cut.KeepLines);
        Assert.Equal(Encoding.UTF8.GetByteCount(text), cut.KeepBytes);
        Assert.Empty(cut.Notes);
        RunDirectory.CutMetrics(p, cut.KeepBytes);
        Assert.Equal(text, File.ReadAllText(p));
    }

    [Fact]
    public void ResumeCutDropsATornLastLineAndToleratesALostTail()
    {
        string whole = Line(0, 1) + Line(0, 2);
        string p = Metrics(whole + "{\"stage\":0,\"algor");
        var cut = RunDirectory.ResumeCut(p, 0, 4, 5, "step-4");
        Assert.Equal(2, cut.KeepLines);
        Assert.Equal(Encoding.UTF8.GetByteCount(whole), cut.KeepBytes);
        Assert.Equal("metrics.jsonl: dropped a torn last line (17 bytes without a line end)", cut.Notes[0]);
        Assert.StartsWith("metrics.jsonl holds 2 of the 5 lines checkpoint step-4 recorded", cut.Notes[1]);
        Assert.Equal(whole + "{\"stage\":0,\"algor", File.ReadAllText(p));   // computing the cut changes nothing
    }

    [Fact]
    public void ResumeCutStopsAtAMalformedLine()
    {
        string p = Metrics(Line(0, 1) + "garbage\n" + Line(0, 2));
        var cut = RunDirectory.ResumeCut(p, 0, 2, 3, "step-2");
        Assert.Equal(1, cut.KeepLines);
        Assert.Contains("metrics.jsonl line 2 is malformed; kept the 1 lines before it", cut.Notes);
    }
}
