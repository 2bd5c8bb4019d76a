// Cross-process parameter reallocation of the 1.2 GB LLaMA of `realn bench realloc` between worker
// processes over UCX (this process is rank 0, three `realn worker --role bench-serve` processes are
// started once in GlobalSetup and stopped in GlobalCleanup). The baseline is UCX point-to-point
// bandwidth between the same processes (one 256 MiB tagged message rank 0 -> rank 1) measured in
// the same run; goal: every case >= 0.70 of it ("vs ref" column and the goal lines at the end).
// Needs the realn CLI built (src/Cli/bin/Release/net10.0/realn, or REALN_CLI).
using BenchmarkDotNet.Attributes;
using ReaLNative.Diagnostics;
using ReaLNative.Engine.Layout;
using ReaLNative.Engine.Realloc;

namespace ReaLNative.Bench;

public class CrossProcessReallocBenchmarks
{
    private static readonly LlamaShape Model = new(Layers: 20, Hidden: 1024, Intermediate: 2816, Heads: 16, KvHeads: 8, Vocab: 32000);
    // Bytes written into destination shards by each case (checked against the plans in setup).
    private const long Case0Bytes = 1206198272, Case1Bytes = 1206030336, Case2Bytes = 1206198272;
    private CrossProcessReallocHost _host = null!;

    [GlobalSetup]
    public void Setup()
    {
        _host = new CrossProcessReallocHost(Cli(), Model);
        long[] declared = [Case0Bytes, Case1Bytes, Case2Bytes];
        for (int c = 0; c < declared.Length; c++)
            if (_host.CaseBytes(c) != declared[c]) throw new InvalidOperationException($"case {c} moves {_host.CaseBytes(c)} bytes, the benchmark declares {declared[c]}");
        Console.WriteLine($"// cross-process transport: {_host.TransportDescription}");
    }

    [GlobalCleanup]
    public void Cleanup() => _host?.Dispose();

    [Benchmark(Baseline = true, Description = "UCX p2p 256 MiB")]
    [Work(CrossProcessReallocBench.P2pBytes, "GB/s")]
    public void PointToPoint() => _host.PointToPoint(CrossProcessReallocBench.P2pBytes);

    [Benchmark(Description = "xproc tp1 -> tp2 (1 sender)")]
    [Work(Case0Bytes, "GB/s", goal: 0.70)]
    public void SplitAcrossProcesses() => _host.RunCase(0);

    [Benchmark(Description = "xproc tp2 -> pp2")]
    [Work(Case1Bytes, "GB/s", goal: 0.70)]
    public void TensorToPipeline() => _host.RunCase(1);

    [Benchmark(Description = "xproc dp2 -> tp2")]
    [Work(Case2Bytes, "GB/s", goal: 0.70)]
    public void ReplicasToTensor() => _host.RunCase(2);

    private static string Cli()
    {
        if (Environment.GetEnvironmentVariable("REALN_CLI") is string env) return env;
        for (var d = new DirectoryInfo(AppContext.BaseDirectory); d is not null; d = d.Parent)
        {
            var p = Path.Combine(d.FullName, "src", "Cli", "bin", "Release", "net10.0", "realn");
            if (File.Exists(p)) return p;
        }
        throw new FileNotFoundException("the realn CLI (src/Cli/bin/Release/net10.0/realn): build the solution or set REALN_CLI");
    }
}
