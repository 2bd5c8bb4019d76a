// Shared inputs for the planner tests: paths of the shipped examples and small generated instances.
namespace ReaLNative.Planner.Tests;

internal static class TestData
{
    public static string Root { get; } = FindRoot();

    private static string FindRoot()
    {
        var d = new DirectoryInfo(AppContext.BaseDirectory);
        while (d is not null && !File.Exists(Path.Combine(d.FullName, "ReaLNative.sln"))) d = d.Parent;
        return d?.FullName ?? throw new InvalidOperationException("repository root not found");
    }

    public static string Example(string rel) => Path.Combine(Root, "examples", rel);

    public static ClusterSpec Cluster(int nodes, int dpn, double memGib, string prec = "fp32") => ClusterSpec.Parse($"""
        name: test-{nodes}x{dpn}
        nodes: {nodes}
        devices_per_node: {dpn}
        device_memory_gib: {memGib.ToString(System.Globalization.CultureInfo.InvariantCulture)}
        precision: {prec}
        peak_tflops: 0.1
        compute_efficiency: 0.7
        memory_bandwidth_gbps: 11
        intra_node_bandwidth_gbps: 8
        intra_node_latency_us: 10
        inter_node_bandwidth_gbps: 2
        inter_node_latency_us: 50
        host_bandwidth_gbps: 10
        """);

    public static Experiment Exp(string algo, string actor, string critic, int batch, int prompt, int gen, int mbs = 2)
    {
        string models = algo switch
        {
            "ppo" => $"actor: {{ preset: {actor} }}\n  critic: {{ preset: {critic} }}\n  ref: {{ preset: {actor} }}\n  reward: {{ preset: {critic} }}",
            "grpo" or "remax" => $"actor: {{ preset: {actor} }}\n  ref: {{ preset: {actor} }}\n  reward: {{ preset: {critic} }}",
            "dpo" => $"actor: {{ preset: {actor} }}\n  ref: {{ preset: {actor} }}",
            "sft" => $"actor: {{ preset: {actor} }}",
            _ => $"reward: {{ preset: {critic} }}",
        };
        return Experiment.Parse($"""
            name: gen-{algo}
            algorithm: {algo}
            models:
              {models}
            batch:
              size: {batch}
              prompt_len: {prompt}
              gen_len: {gen}
              minibatches: {mbs}
            """);
    }
}
