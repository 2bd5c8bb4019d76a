// Planner benchmarks. `dotnet run -c Release -- --quick` times every example once (seconds to plan,
// plan vs baseline iteration times) and checks the goals: 70B actor+critic PPO on 16x8 GPUs < 30 s,
// every examples/ experiment < 5 s. Without --quick, BenchmarkDotNet runs the suite below; the
// 7B/8-GPU plan is the baseline so results read as ratios measured in the same run.
using System.Diagnostics;
using BenchmarkDotNet.Attributes;
using BenchmarkDotNet.Engines;
using BenchmarkDotNet.Running;
using ReaLNative.Planner;

namespace ReaLNative.Planner.Bench;

public static class Examples
{
    /// <summary>Nodes of 8 GPUs per scale setting (examples/scale/README.md): scale-actor and scale-critic
    /// 7B/13B/34B/70B on 8/16/32/64 GPUs, scale-both on 16/32/64/128.</summary>
    public static int LadderNodes(string name)
    {
        int step = name.Contains("-70b-") ? 8 : name.Contains("-34b-") ? 4 : name.Contains("-13b-") ? 2 : 1;
        return name.StartsWith("scale-both") ? 2 * step : step;
    }

    public static string Root { get; } = FindRoot();
    private static string FindRoot()
    {
        var d = new DirectoryInfo(AppContext.BaseDirectory);
        while (d is not null && !File.Exists(Path.Combine(d.FullName, "ReaLNative.sln"))) d = d.Parent;
        return d?.FullName ?? Directory.GetCurrentDirectory();
    }

    /// <summary>Every experiment under examples/ with the cluster it is planned for: scale examples on
    /// H100 nodes by the scaling ladder (<see cref="LadderNodes"/>), anything else on this CPU machine.</summary>
    public static IEnumerable<(string Name, string Path, ClusterSpec Cluster)> All()
    {
        var h100 = ClusterSpec.Load(System.IO.Path.Combine(Root, "examples/clusters/h100-80gb.yaml"));
        var cpu = ClusterSpec.Load(System.IO.Path.Combine(Root, "examples/clusters/cpu-local.yaml"));
        foreach (var f in Directory.GetFiles(System.IO.Path.Combine(Root, "examples"), "*.yaml", SearchOption.AllDirectories).Order())
        {
            if (f.Contains("/clusters/")) continue;
            string n = System.IO.Path.GetFileNameWithoutExtension(f);
            int nodes = LadderNodes(n);
            yield return (n, f, f.Contains("/scale/") ? h100.WithNodes(nodes) : cpu);
        }
    }
}

[SimpleJob(RunStrategy.Monitoring, launchCount: 1, warmupCount: 1, iterationCount: 3)]
public class PlannerBenchmarks
{
    private Experiment _e7 = null!, _e70 = null!;
    private ClusterSpec _c1 = null!, _c16 = null!;

    [GlobalSetup]
    public void Setup()
    {
        var h100 = ClusterSpec.Load(Path.Combine(Examples.Root, "examples/clusters/h100-80gb.yaml"));
        _c1 = h100.WithNodes(1); _c16 = h100.WithNodes(16);
        _e7 = Experiment.Load(Path.Combine(Examples.Root, "examples/scale/scale-both-7b-gen384.yaml"));
        _e70 = Experiment.Load(Path.Combine(Examples.Root, "examples/scale/scale-both-70b-gen896.yaml"));
    }

    [Benchmark(Baseline = true)]
    public double Plan7B_1x8() => PlanSearch.Run(_c1, _e7, new SearchOptions()).Best.Evaluation.IterationSeconds;

    [Benchmark]
    public double Plan70B_16x8() => PlanSearch.Run(_c16, _e70, new SearchOptions()).Best.Evaluation.IterationSeconds;
}

public static class Program
{
    public static int Main(string[] args)
    {
        if (args.Contains("--quick")) return Quick();
        BenchmarkSwitcher.FromAssembly(typeof(Program).Assembly).Run(args);
        return 0;
    }

    private static int Quick()
    {
        string[] keys = ["heuristic", "deepspeed_chat", "openrlhf", "symmetric"];
        Console.WriteLine($"{"experiment",-30} {"gpus",5} {"search s",9} {"cpu s",7} {"plan s",8}  speedup over {string.Join(" / ", keys)}  method");
        double worst = 0; string worstName = "";
        foreach (var (name, path, cl) in Examples.All())
        {
            var cpu0 = Process.GetCurrentProcess().TotalProcessorTime;
            var sw = Stopwatch.StartNew();
            SearchResult r;
            try { r = PlanSearch.Run(cl, Experiment.Load(path), new SearchOptions()); }
            catch (PlannerException e)
            {
                // e.g. a bf16 experiment on cpu-local, whose spec gives no bf16 peak (refused by design)
                Console.WriteLine($"{name,-30} {cl.TotalDevices,5} refused: {e.Message}");
                continue;
            }
            double s = sw.Elapsed.TotalSeconds;
            double cpu = (Process.GetCurrentProcess().TotalProcessorTime - cpu0).TotalSeconds;
            if (s > worst) { worst = s; worstName = name; }
            string B(string k) => r.Baselines[k] is { } b ? $"{b.Evaluation.IterationSeconds / r.Best.Evaluation.IterationSeconds,6:F2}x" : $"{"n/a",7}";
            Console.WriteLine($"{name,-30} {cl.TotalDevices,5} {s,9:F2} {cpu,7:F2} {r.Best.Evaluation.IterationSeconds,8:F2}  {string.Join(" ", keys.Select(B))}  {r.Method}, setup {r.SetupSeconds:F2} s, {r.Evaluations} evals, space {r.Problem.SpaceSize:E1}");
        }
        Console.WriteLine($"slowest: {worstName} {worst:F2} s (goal < 5 s)");
        var h = ClusterSpec.Load(Path.Combine(Examples.Root, "examples/clusters/h100-80gb.yaml")).WithNodes(16);
        var sw70 = Stopwatch.StartNew();
        PlanSearch.Run(h, Experiment.Load(Path.Combine(Examples.Root, "examples/scale/scale-both-70b-gen896.yaml")), new SearchOptions());
        Console.WriteLine($"70B actor+critic PPO on 16x8 H100: {sw70.Elapsed.TotalSeconds:F2} s (goal < 30 s)");
        return worst < 5 && sw70.Elapsed.TotalSeconds < 30 ? 0 : 1;
    }
}
