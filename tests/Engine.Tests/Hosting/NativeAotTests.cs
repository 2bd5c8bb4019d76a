// The NativeAOT realn (`./build.sh aot`: dist/realn-linux-x64) run as a host without .NET runs it: no .NET on PATH or in
// the environment, no library path, only what the folder carries. `./build.sh test` builds it and names it in
// REALN_AOT_DIR; without that (a bare `dotnet test`) these tests are skipped, saying why. Each run is compared with the
// same run by the JIT-compiled realn: the same code over the same librealn, so the same metrics and parameters.
using System.Runtime.Intrinsics.X86;
using System.Text.Json.Nodes;
using Parquet;
using Parquet.Schema;
using ReaLNative.Engine.Tests.Config;
using ReaLNative.Engine.Tests.Workers;
using Xunit;

namespace ReaLNative.Engine.Tests.Hosting;

public sealed class NativeAotTests : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("realn-aot-").FullName;

    public void Dispose()
    {
        try { Directory.Delete(_dir, recursive: true); } catch (IOException) { }
    }

    /// <summary>The published realn, or a skip naming why there is none.</summary>
    private static string Aot()
    {
        string? dir = Environment.GetEnvironmentVariable("REALN_AOT_DIR");
        Skip.If(string.IsNullOrEmpty(dir), "REALN_AOT_DIR is not set: `./build.sh test` publishes the NativeAOT realn (`./build.sh aot`) and names it there");
        Skip.IfNot(Avx2.IsSupported && Fma.IsSupported, "the NativeAOT realn is compiled for x86-64-v3 (AVX2, FMA), which this CPU lacks");
        string exe = Path.Combine(dir!, "realn");
        Assert.True(File.Exists(exe), $"REALN_AOT_DIR={dir} holds no realn: run ./build.sh aot");
        return exe;
    }

    /// <summary>Nothing of .NET or of this checkout's libraries reaches the process: no DOTNET_* variable, no library
    /// path or override, and a PATH that holds no program at all (the workers are started by their full path).</summary>
    private static Dictionary<string, string?> Bare()
    {
        var env = new Dictionary<string, string?> { ["PATH"] = "/nonexistent", ["LD_LIBRARY_PATH"] = null, ["REALN_LIBRARY"] = null, ["LD_PRELOAD"] = null };
        foreach (string k in Environment.GetEnvironmentVariables().Keys.Cast<string>())
            if (k.StartsWith("DOTNET_", StringComparison.Ordinal) || k.StartsWith("COMPlus_", StringComparison.Ordinal)) env[k] = null;
        return env;
    }

    private static string Exec(string exe, IDictionary<string, string?>? env, params string[] args)
    {
        using var r = Run.Start("realn " + string.Join(' ', args), exe, args, env);
        int code = r.Wait(TimeSpan.FromSeconds(300));
        Assert.True(code == 0, $"{exe} {string.Join(' ', args)} exited {code}:\n{r.Output}");
        return r.Output;
    }

    /// <summary>Every record of metrics.jsonl without its clock readings.</summary>
    private static List<string> Metrics(string runDir) =>
        File.ReadLines(Path.Combine(runDir, "metrics.jsonl")).Select(l =>
        {
            var o = JsonNode.Parse(l)!.AsObject();
            foreach (string k in o.Select(kv => kv.Key).Where(k => k.Contains("seconds") || k.EndsWith("_ms") || k.Contains("rss")).ToList()) o.Remove(k);
            return o.ToJsonString();
        }).ToList();

    private static void SameRun(string jitDir, string aotDir)
    {
        var jit = Metrics(jitDir);
        Assert.True(jit.Count > 10, $"{jitDir}: only {jit.Count} metric records");
        Assert.Equal(jit, Metrics(aotDir));
        Assert.Equal(Run.Final(jitDir), Run.Final(aotDir));
    }

    [SkippableFact]
    public void APlanInWorkerProcessesRunsAsTheJitBuildRunsIt()
    {
        string aot = Aot(), root = ConfigTests.RepoRoot();
        string cfg = Path.Combine(root, "examples", "bench", "ppo-tiny-timing.yaml"), plan = Path.Combine(_dir, "plan.json");
        // the planner (its Gantt chart drawn by SkiaSharp from the folder), then the plan in two worker processes over UCX
        Exec(aot, Bare(), "plan", cfg, "--cluster", Path.Combine(root, "examples", "clusters", "cpu-local.yaml"), "--out", plan);
        Assert.True(File.Exists(Path.ChangeExtension(plan, ".png")), "the plan's Gantt chart was not drawn");
        string aotRun = Path.Combine(_dir, "aot"), jitRun = Path.Combine(_dir, "jit");
        string output = Exec(aot, Bare(), "run", cfg, "--plan", plan, "--out", aotRun);
        Assert.Contains("model worker processes", output);
        Exec(WorkerProcessTests.Realn(), null, "run", cfg, "--plan", plan, "--out", jitRun);
        SameRun(jitRun, aotRun);
        // the native op cases through the folder's librealn, and the realloc benchmark's workers and JSON report
        Assert.Contains("0 failed", Exec(aot, Bare(), "selftest", "--filter", "gemm"));
        var p2p = JsonNode.Parse(Exec(aot, Bare(), "bench", "realloc", "--p2p-only", "--json", "--reps", "2"))!["p2p"]!.AsObject();
        Assert.True((double)p2p["tag_4MiB"]! > 0);
    }

    [SkippableFact]
    public void AParquetDatasetAndABpeTokenizerTrainAsInTheJitBuild()
    {
        string aot = Aot(), examples = Path.Combine(ConfigTests.RepoRoot(), "examples");
        // 96 rows of the math example's training set as a Parquet file of two row groups
        var rows = File.ReadLines(Path.Combine(examples, "data", "math-train.jsonl")).Take(96).Select(l => JsonNode.Parse(l)!).ToArray();
        var fields = new[] { "prompt", "response", "answer" }.Select(n => new DataField<string>(n)).ToArray();
        string data = Path.Combine(_dir, "math.parquet");
        using (var fs = File.Create(data))
        {
            var w = ParquetWriter.CreateAsync(new ParquetSchema(fields), fs).GetAwaiter().GetResult();
            foreach (var part in rows.Chunk(48))
            {
                using var rg = w.CreateRowGroup();
                foreach (var f in fields) rg.WriteAsync(f, part.Select(r => (string)r[f.Name]!).ToArray()).GetAwaiter().GetResult();
            }
            w.DisposeAsync().AsTask().GetAwaiter().GetResult();
        }
        string model = Path.Combine(examples, "models", "math-bpe", "config.json");
        string cfg = Path.Combine(_dir, "math.yaml");
        File.WriteAllText(cfg, $"""
            name: math-parquet
            algorithm: grpo
            seed: 3
            iterations: 2
            eval: {"{"} size: 16, every: 2 {"}"}
            checkpoint_every: 2
            models:
              actor: {"{"} config: {model}, init: sft {"}"}
              ref:   {"{"} config: {model}, init: sft {"}"}
            reward: {"{"} kind: numeric_match {"}"}
            dataset:
              train: {data}
              held_out: {Path.Combine(examples, "data", "math-test.jsonl")}
            batch: {"{"} size: 16, prompt_len: 24, gen_len: 14, minibatches: 2, group_size: 4 {"}"}
            optim: {"{"} lr: 3.0e-4, warmup_steps: 1, clip_grad_norm: 1.0, decay: constant {"}"}
            stages:
              - algorithm: sft
                iterations: 3
                models: {"{"} actor: {"{"} config: {model}, init: random {"}"} {"}"}
              - {"{"} algorithm: grpo {"}"}
            """);
        string aotRun = Path.Combine(_dir, "aot"), jitRun = Path.Combine(_dir, "jit");
        Exec(aot, Bare(), "run", cfg, "--out", aotRun);
        Exec(WorkerProcessTests.Realn(), null, "run", cfg, "--out", jitRun);
        SameRun(jitRun, aotRun);
    }
}
