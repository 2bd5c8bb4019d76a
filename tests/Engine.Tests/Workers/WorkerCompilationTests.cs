// Worker processes compile the engine's code once, at its first call: no tiered compilation, whose
// background re-compilation took a shared host's cores from the workers' compute (docs/cost-model.md,
// "Worker processes: compilation and reads").
using ReaLNative.Engine.Layout;
using ReaLNative.Engine.Model;
using ReaLNative.Engine.Optim;
using ReaLNative.Engine.Workers;
using Xunit;

namespace ReaLNative.Engine.Tests.Workers;

[Collection("worker processes")]
public sealed class WorkerCompilationTests
{
    private const string TieredVariable = "DOTNET_TieredCompilation";

    /// <summary>What a worker process's environment says about tiered compilation: a shell stands in for the
    /// worker executable and prints the variable (the real start path, the real environment).</summary>
    private static string WorkerSees(IReadOnlyDictionary<string, string> env)
    {
        var cmd = new WorkerCommandLine("/bin/sh", ["-c", "echo \"tiered=${DOTNET_TieredCompilation-unset}\" >&2", "sh"], "tcp://127.0.0.1:1", "job-env", 2)
        {
            Environment = env,
        };
        using var procs = new WorkerProcesses(cmd, new byte[32], [0]);
        var until = DateTime.UtcNow.AddSeconds(30);
        while (DateTime.UtcNow < until)
        {
            string tail = procs.Tail(0);
            if (tail.Contains("tiered=")) return tail[(tail.IndexOf("tiered=") + 7)..].Trim();
            Thread.Sleep(20);
        }
        throw new TimeoutException("the stand-in worker printed nothing within 30 s");
    }

    [Fact]
    public void WorkersStartWithTieredCompilationOffUnlessTheUserSetIt()
    {
        if (Environment.GetEnvironmentVariable(TieredVariable) is null
            && Environment.GetEnvironmentVariable("COMPlus_TieredCompilation") is null)
            Assert.Equal("0", WorkerSees(new Dictionary<string, string>()));
        Assert.Equal("1", WorkerSees(new Dictionary<string, string> { [TieredVariable] = "1" }));
    }

    /// <summary>Names of the threads of process <paramref name="pid"/> (/proc: the kernel keeps 15 characters).</summary>
    private static List<string> Threads(int pid)
    {
        var names = new List<string>();
        try
        {
            foreach (var task in Directory.GetDirectories($"/proc/{pid}/task"))
                try { names.Add(File.ReadAllText(Path.Combine(task, "comm")).Trim()); }
                catch (IOException) { /* the thread ended */ }
        }
        catch (DirectoryNotFoundException) { /* the process ended */ }
        return names;
    }

    /// <summary>Runs forward, backward and optimizer steps of a tiny actor on one worker for at least
    /// <paramref name="seconds"/> and 40 rounds, watching the worker's threads every 10 ms; returns whether the
    /// runtime's tiered-compilation thread (".NET Tiered Compilation Worker") ever ran in it.</summary>
    private static bool CompilesInTheBackground(Dictionary<string, string> env, double seconds)
    {
        var cfg = LlamaConfig.Preset("tiny");
        var spec = new OptimizerSpec(new LrSchedule(1e-3), 0.9f, 0.95f, 1e-8f, 0f, 1f);
        using var pool = new WorkerPool(1, new WorkerPoolOptions { Executable = WorkerProcessTests.Realn(), ThreadsPerWorker = 1, Environment = env });
        int pid = pool.WorkerPid(0);
        bool seen = false;
        using var stop = new CancellationTokenSource();
        var watch = Task.Run(() =>
        {
            while (!stop.IsCancellationRequested)
            {
                if (Threads(pid).Any(t => t.StartsWith(".NET Tiered", StringComparison.Ordinal))) { seen = true; return; }
                Thread.Sleep(10);
            }
        });
        using var r = pool.Create("actor", cfg, false, new ParallelLayout([0], 1, 1, 1), 1, spec);
        r.Initialise(7);
        var rng = new Random(5);
        var seqs = Enumerable.Range(0, 16).Select(_ => Enumerable.Range(0, 12).Select(_ => rng.Next(1, cfg.Vocab)).ToArray()).ToArray();
        var batch = new ScoredBatch(seqs, [.. Enumerable.Repeat(6, seqs.Length)]);
        var grad = Enumerable.Range(0, batch.Actions).Select(_ => rng.NextSingle() * 1e-3f).ToArray();
        var started = DateTime.UtcNow;
        for (int round = 0; (round < 40 || (DateTime.UtcNow - started).TotalSeconds < seconds) && !seen; round++)
        {
            r.LogProbs(batch, 1f);
            r.BackwardLogProbs(batch, 1f, grad);
            r.Step();
        }
        stop.Cancel();
        watch.Wait(TimeSpan.FromSeconds(10));
        return seen;
    }

    /// <summary>The regression: a worker that computes for 3 s runs no background compilation thread. The same
    /// worker with tiered compilation turned back on (the runtime's default, before) does, within the same rounds:
    /// what the first assertion watches for is there to be seen.</summary>
    [Fact]
    public void AWorkerCompilesNothingInTheBackgroundWhileItComputes()
    {
        Assert.False(CompilesInTheBackground(new Dictionary<string, string>(), seconds: 3), "a worker ran the runtime's tiered-compilation thread");
        Assert.True(CompilesInTheBackground(new Dictionary<string, string> { [TieredVariable] = "1" }, seconds: 30),
            "with DOTNET_TieredCompilation=1 the worker never showed the tiered-compilation thread: the check above cannot fail");
    }

    /// <summary>The flags of the ReadyToRun header of <paramref name="path"/> (READYTORUN_HEADER, which the CLI header's
    /// managed native header directory points to: signature "RTR", major and minor version, flags).</summary>
    internal static uint ReadyToRunFlags(string path)
    {
        using var pe = new System.Reflection.PortableExecutable.PEReader(File.OpenRead(path));
        var dir = pe.PEHeaders.CorHeader?.ManagedNativeHeaderDirectory ?? throw new InvalidDataException($"{path}: no CLI header");
        if (dir.Size < 12) throw new InvalidDataException($"{path}: no ReadyToRun header (not compiled ahead of time)");
        var header = pe.GetSectionData(dir.RelativeVirtualAddress).GetReader(0, 12);
        uint signature = header.ReadUInt32();
        if (signature != 0x00525452) throw new InvalidDataException($"{path}: managed native header signature 0x{signature:x8} is not ReadyToRun's");
        header.ReadUInt16();   // major version
        header.ReadUInt16();   // minor version
        return header.ReadUInt32();
    }

    /// <summary>READYTORUN_FLAG_UNRELATED_R2R_CODE: the image holds code of generic instantiations that are not
    /// its own (List&lt;(int, long, int)&gt;, LINQ over ints and tuples: definition and arguments from the framework).</summary>
    private const uint UnrelatedCode = 0x80;

    /// <summary>The ReadyToRun publish that ./realn and its worker processes run compiles the framework generics the
    /// engine instantiates (crossgen2 --non-local-generics-module, with --opt-cross-module): without them each process
    /// compiled them at their first call, a worker 122-135 methods (25 ms) and the master 94 (29 ms) in the first PPO
    /// iteration of examples/bench/ppo-tiny-timing.yaml (docs/cost-model.md, "The worker plan's first iteration").
    /// A publish made without the option has the same header without the flag.</summary>
    [Fact]
    public void ThePublishCompilesTheFrameworkGenericsTheEngineUsesAheadOfTime()
    {
        // ./build.sh publishes ReadyToRun on x86_64 only (elsewhere ./realn runs the build, compiled at run time).
        if (System.Runtime.InteropServices.RuntimeInformation.OSArchitecture != System.Runtime.InteropServices.Architecture.X64) return;
        string realn = WorkerProcessTests.Realn();
        string publish = Path.GetDirectoryName(realn)!;
        Assert.True(Path.GetFileName(publish) == "publish",
                    $"{realn} is not the ReadyToRun publish (src/Cli/bin/Release/publish, as new as the build): run ./build.sh");
        foreach (var dll in new[] { "realn.dll", "ReaLNative.Engine.dll", "ReaLNative.Interop.dll", "ReaLNative.Planner.dll" })
        {
            uint flags = ReadyToRunFlags(Path.Combine(publish, dll));
            Assert.True((flags & UnrelatedCode) != 0, $"{dll}: ReadyToRun flags 0x{flags:x}, without READYTORUN_FLAG_UNRELATED_R2R_CODE (0x80)");
        }
    }
}
