// The experiment's `precision` drives the planner's memory and time model: bytes per weight (bf16 2,
// fp32 4, plus the fp32 master bf16 training keeps) and the GEMM peak of that precision
// (peak_tflops_bf16 / peak_tflops_fp32 of the cluster spec); a spec without the needed peak is refused.
using Xunit;

namespace ReaLNative.Planner.Tests;

public class PrecisionTests
{
    private const string Cluster = """
        name: c
        nodes: 1
        devices_per_node: 8
        device_memory_gib: 80
        precision: bf16
        peak_tflops: 989
        peak_tflops_fp32: 67
        compute_efficiency: 0.5
        memory_bandwidth_gbps: 3350
        intra_node_bandwidth_gbps: 360
        intra_node_latency_us: 6
        inter_node_bandwidth_gbps: 45
        inter_node_latency_us: 12
        host_bandwidth_gbps: 50
        """;

    private const string Exp = """
        name: e
        algorithm: ppo
        models:
          actor: { preset: llama-7b }
          critic: { preset: llama-7b }
          ref: { preset: llama-7b }
          reward: { preset: llama-7b }
        batch: { size: 64, prompt_len: 128, gen_len: 128, minibatches: 2 }
        """;

    [Fact]
    public void ExperimentPrecisionSetsBytesAndGemmPeak()
    {
        var spec = ClusterSpec.Parse(Cluster);
        var fp32 = Experiment.Parse(Exp.Replace("name: e", "name: e\nprecision: fp32"));
        var bf16 = Experiment.Parse(Exp.Replace("name: e", "name: e\nprecision: bf16"));
        Assert.Equal(Precision.Fp32, fp32.Precision);
        Assert.Null(Experiment.Parse(Exp).Precision);
        var c32 = spec.ForPrecision(Precision.Fp32);
        Assert.Equal(67e12, c32.PeakFlops);
        Assert.Equal(4, c32.ElementBytes);
        Assert.Equal(989e12, spec.ForPrecision(Precision.Bf16).PeakFlops);
        var e32 = new Estimator(c32, fp32);
        var e16 = new Estimator(spec.ForPrecision(Precision.Bf16), bf16);
        var opt = new CallOption(new Mesh(0, 1, 0, 8), new Strategy(1, 1, 8), 1, false);
        var inf = fp32.Calls.First(c => c.Name == "ref_inf");
        Assert.Equal(2.0, e32.Memory(inf, opt).WeightBytes / e16.Memory(inf, opt).WeightBytes, 3);
        Assert.True(e32.CallSeconds(inf, opt) > 3 * e16.CallSeconds(inf, opt), "fp32 GEMMs at 67 TFLOP/s vs bf16 at 989");
        // Through the search: the bf16 experiment plans on the same spec faster than the fp32 one.
        var o = new SearchOptions { Seed = 1, TimeLimitSeconds = 5 };
        Assert.True(PlanSearch.Run(spec, bf16, o).Best.Evaluation.IterationSeconds < PlanSearch.Run(spec, fp32, o).Best.Evaluation.IterationSeconds);
    }

    [Fact]
    public void MissingPeakForTheExperimentPrecisionIsRefused()
    {
        var spec = ClusterSpec.Parse(Cluster.Replace("peak_tflops_fp32: 67\n", ""));
        var e = Assert.Throws<PlannerException>(() => spec.ForPrecision(Precision.Fp32));
        Assert.Contains("cluster.peak_tflops_fp32: missing", e.Message);
        Assert.Contains("precision: 'fp8' is not one of", Assert.Throws<PlannerException>(() => Experiment.Parse(Exp.Replace("name: e", "name: e\nprecision: fp8"))).Message);
    }
}
