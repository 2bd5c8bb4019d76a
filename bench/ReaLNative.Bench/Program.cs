// Entry point: `dotnet run -c Release --project bench/ReaLNative.Bench -- --filter '*'`.
// The default job is ShortRun-like and in-process (the work is native; an out-of-process child
// would only add a rebuild on this 2-core machine). Each suite marks its reference as the
// baseline; the Throughput column gives GFLOP/s or GB/s and "vs ref" the throughput ratio to the
// reference measured in the same run (BenchmarkDotNet's Ratio is its inverse, a time ratio); a
// goal summary is printed after the tables.
using BenchmarkDotNet.Configs;
using BenchmarkDotNet.Jobs;
using BenchmarkDotNet.Running;
using BenchmarkDotNet.Toolchains.InProcess.Emit;
using ReaLNative.Bench;

var job = Job.ShortRun
    .WithToolchain(InProcessEmitToolchain.Instance)
    .WithWarmupCount(3)
    .WithIterationCount(5)
    .AsDefault();
var config = DefaultConfig.Instance
    .AddJob(job)
    .AddColumn(new ThroughputColumn(), new SpeedRatioColumn());
var summaries = BenchmarkSwitcher.FromAssembly(typeof(ThroughputColumn).Assembly).Run(args, config);
GoalReport.Print(summaries);
