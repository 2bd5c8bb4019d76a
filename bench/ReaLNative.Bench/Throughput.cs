// Throughput of a benchmark from its mean time and the work one invocation does, declared on the
// method with [Work], and the end-of-run goal report (ratio of each candidate to its suite's
// baseline, i.e. the reference measured in the same run).
using System.Reflection;
using BenchmarkDotNet.Columns;
using BenchmarkDotNet.Reports;
using BenchmarkDotNet.Running;

namespace ReaLNative.Bench;

/// <summary>Work per invocation (flops or bytes) and its unit; goal = minimum ratio to the baseline.</summary>
[AttributeUsage(AttributeTargets.Method)]
public sealed class WorkAttribute(double amount, string unit, double goal = 0) : Attribute
{
    public double Amount { get; } = amount;
    public string Unit { get; } = unit;  // "GFLOP/s" (amount in flops) or "GB/s" (amount in bytes)
    public double Goal { get; } = goal;
}

public sealed class ThroughputColumn : IColumn
{
    public string Id => nameof(ThroughputColumn);
    public string ColumnName => "Throughput";
    public bool AlwaysShow => true;
    public ColumnCategory Category => ColumnCategory.Custom;
    public int PriorityInCategory => 0;
    public bool IsNumeric => true;
    public UnitType UnitType => UnitType.Dimensionless;
    public string Legend => "Work per invocation / mean time (GFLOP/s or GB/s, 1e9 units)";
    public bool IsAvailable(Summary summary) => true;
    public bool IsDefault(Summary summary, BenchmarkCase benchmarkCase) => false;
    public string GetValue(Summary summary, BenchmarkCase benchmarkCase) => GetValue(summary, benchmarkCase, SummaryStyle.Default);

    public string GetValue(Summary summary, BenchmarkCase benchmarkCase, SummaryStyle style)
    {
        var work = Work(benchmarkCase);
        double? rate = Rate(summary, benchmarkCase);
        return work is null || rate is null ? "-" : $"{rate.Value:F2} {work.Unit}";
    }

    internal static WorkAttribute? Work(BenchmarkCase c) =>
        c.Descriptor.WorkloadMethod.GetCustomAttribute<WorkAttribute>();

    /// <summary>Units per second / 1e9, from the mean of the case's measurements.</summary>
    internal static double? Rate(Summary summary, BenchmarkCase c)
    {
        var work = Work(c);
        var stats = summary[c]?.ResultStatistics;
        if (work is null || stats is null || stats.Mean <= 0) return null;
        return work.Amount / (stats.Mean * 1e-9) / 1e9;
    }
}

/// <summary>Throughput relative to the suite's baseline (reference time / candidate time, same
/// work), i.e. the figure the goals are stated in; BenchmarkDotNet's own Ratio is the inverse.</summary>
public sealed class SpeedRatioColumn : IColumn
{
    public string Id => nameof(SpeedRatioColumn);
    public string ColumnName => "vs ref";
    public bool AlwaysShow => true;
    public ColumnCategory Category => ColumnCategory.Custom;
    public int PriorityInCategory => 1;
    public bool IsNumeric => true;
    public UnitType UnitType => UnitType.Dimensionless;
    public string Legend => "Throughput / baseline throughput in the same run (goal: GEMM >= 0.95, intervals >= 0.80)";
    public bool IsAvailable(Summary summary) => true;
    public bool IsDefault(Summary summary, BenchmarkCase benchmarkCase) => false;
    public string GetValue(Summary summary, BenchmarkCase benchmarkCase) => GetValue(summary, benchmarkCase, SummaryStyle.Default);

    public string GetValue(Summary summary, BenchmarkCase benchmarkCase, SummaryStyle style)
    {
        var baseline = summary.BenchmarksCases.FirstOrDefault(c =>
            c.Descriptor.Baseline && c.Descriptor.Type == benchmarkCase.Descriptor.Type);
        if (baseline is null) return "-";
        double? r = ThroughputColumn.Rate(summary, benchmarkCase), b = ThroughputColumn.Rate(summary, baseline);
        return r is null || b is null ? "-" : $"{r.Value / b.Value:F3}";
    }
}

public static class GoalReport
{
    public static void Print(IEnumerable<Summary> summaries)
    {
        foreach (var summary in summaries)
        {
            var cases = summary.BenchmarksCases;
            var baseline = cases.FirstOrDefault(c => c.Descriptor.Baseline);
            if (baseline is null) continue;
            double? refRate = ThroughputColumn.Rate(summary, baseline);
            if (refRate is null) continue;
            var bw = ThroughputColumn.Work(baseline)!;
            Console.WriteLine($"// {baseline.Descriptor.Type.Name}: reference {baseline.Descriptor.WorkloadMethod.Name} " +
                              $"{refRate:F2} {bw.Unit}");
            foreach (var c in cases.Where(c => !c.Descriptor.Baseline))
            {
                var w = ThroughputColumn.Work(c);
                double? rate = ThroughputColumn.Rate(summary, c);
                if (w is null || rate is null) continue;
                double ratio = rate.Value / refRate.Value;
                string verdict = w.Goal > 0 ? (ratio >= w.Goal ? $"meets goal >= {w.Goal}" : $"BELOW goal >= {w.Goal}") : "";
                Console.WriteLine($"//   {c.Descriptor.WorkloadMethod.Name}: {rate:F2} {w.Unit}, ratio {ratio:F3} {verdict}");
            }
        }
    }
}
