// Cluster spec: homogeneous nodes of identical devices, read from YAML. All quantities are kept in
// SI base units (bytes, FLOP/s, bytes/s, seconds) so the estimator never mixes ms and us.
using YamlDotNet.RepresentationModel;

namespace ReaLNative.Planner;

/// <summary>Numeric precision a cluster trains in: bf16 (GPU: bf16 weights, fp32 master/optimizer)
/// or fp32 (CPU backend).</summary>
public enum Precision { Bf16, Fp32 }

/// <summary>
/// A homogeneous cluster. YAML keys (all required unless noted):
/// <c>name</c>, <c>nodes</c> (1..32), <c>devices_per_node</c> (power of two, 1..64),
/// <c>device_memory_gib</c>, <c>precision</c> (bf16|fp32), <c>peak_tflops</c> (dense, in that precision),
/// <c>compute_efficiency</c> (0..1, achieved share of peak for large GEMMs),
/// <c>memory_bandwidth_gbps</c> (device memory, GB/s), <c>intra_node_bandwidth_gbps</c> (per device, one direction),
/// <c>intra_node_latency_us</c>, <c>inter_node_bandwidth_gbps</c> (per device NIC share, one direction),
/// <c>inter_node_latency_us</c>, <c>host_bandwidth_gbps</c> (device-host copies for offload),
/// optional <c>reserved_memory_gib</c> (runtime/fragmentation reserve, default 0), optional
/// <c>kernel_overhead_us</c> (fixed launch/sync cost per transformer block per pass, default 0).
/// </summary>
public sealed record ClusterSpec
{
    public required string Name { get; init; }
    public required int Nodes { get; init; }
    public required int DevicesPerNode { get; init; }
    public required double DeviceMemoryBytes { get; init; }
    public required Precision Precision { get; init; }
    public required double PeakFlops { get; init; }
    public required double ComputeEfficiency { get; init; }
    public required double MemoryBandwidth { get; init; }
    public required double IntraNodeBandwidth { get; init; }
    public required double IntraNodeLatency { get; init; }
    public required double InterNodeBandwidth { get; init; }
    public required double InterNodeLatency { get; init; }
    public required double HostBandwidth { get; init; }
    public double ReservedMemoryBytes { get; init; }
    /// <summary>Fixed seconds per transformer block per forward/decode pass (kernel launches, syncs);
    /// dominates small decode steps where the roofline alone is far too optimistic.</summary>
    public double KernelOverhead { get; init; }

    public int TotalDevices => Nodes * DevicesPerNode;
    /// <summary>Memory the planner may fill on each device.</summary>
    public double UsableMemoryBytes => DeviceMemoryBytes - ReservedMemoryBytes;
    /// <summary>Bytes per weight/activation element in this precision.</summary>
    public int ElementBytes => Precision == Precision.Bf16 ? 2 : 4;

    /// <summary>The same nodes, another node count (node specs are shipped once, used for 1..16 nodes).</summary>
    public ClusterSpec WithNodes(int nodes)
    {
        if (nodes < 1 || nodes > 32) throw new PlannerException($"cluster.nodes: {nodes} is out of range 1..32 (the planner enumerates every contiguous node range; 32 nodes plan in ~30 s on 2 cores)");
        return this with { Nodes = nodes };
    }

    public static ClusterSpec Load(string path)
    {
        string text;
        try { text = InputFile.ReadAllText(path, "cluster spec"); }
        catch (InputException e) { throw new PlannerException(e.Message); }
        return Parse(text, path);
    }

    public static ClusterSpec Parse(string yaml, string source = "cluster")
    {
        var map = Yaml.LoadRoot(yaml, source);
        var known = new HashSet<string> { "name", "nodes", "devices_per_node", "device_memory_gib", "precision", "peak_tflops",
            "compute_efficiency", "memory_bandwidth_gbps", "intra_node_bandwidth_gbps", "intra_node_latency_us",
            "inter_node_bandwidth_gbps", "inter_node_latency_us", "host_bandwidth_gbps", "reserved_memory_gib", "kernel_overhead_us", "description" };
        foreach (var k in map.Children.Keys)
            if (!known.Contains(k.ToString())) throw new PlannerException($"cluster.{k}: unknown key in {source} (known: {string.Join(", ", known.Order())})");
        var r = new Yaml.Reader(map, "cluster");
        int dpn = r.Int("devices_per_node", 1, 64);
        if ((dpn & (dpn - 1)) != 0) throw new PlannerException($"cluster.devices_per_node: {dpn} is not a power of two");
        string prec = r.Str("precision");
        var spec = new ClusterSpec
        {
            Name = r.Str("name"),
            Nodes = r.Int("nodes", 1, 32),
            DevicesPerNode = dpn,
            DeviceMemoryBytes = r.Double("device_memory_gib", 0.01, 1e6) * Units.GiB,
            Precision = prec switch
            {
                "bf16" => Precision.Bf16,
                "fp32" => Precision.Fp32,
                _ => throw new PlannerException($"cluster.precision: '{prec}' is not one of bf16, fp32"),
            },
            PeakFlops = r.Double("peak_tflops", 1e-6, 1e6) * 1e12,
            ComputeEfficiency = r.Double("compute_efficiency", 0.01, 1.0),
            MemoryBandwidth = r.Double("memory_bandwidth_gbps", 0.01, 1e6) * 1e9,
            IntraNodeBandwidth = r.Double("intra_node_bandwidth_gbps", 0.001, 1e6) * 1e9,
            IntraNodeLatency = r.Double("intra_node_latency_us", 0, 1e6) * 1e-6,
            InterNodeBandwidth = r.Double("inter_node_bandwidth_gbps", 0.001, 1e6) * 1e9,
            InterNodeLatency = r.Double("inter_node_latency_us", 0, 1e6) * 1e-6,
            HostBandwidth = r.Double("host_bandwidth_gbps", 0.001, 1e6) * 1e9,
            ReservedMemoryBytes = r.OptDouble("reserved_memory_gib", 0, 1e6, 0) * Units.GiB,
            KernelOverhead = r.OptDouble("kernel_overhead_us", 0, 1e6, 0) * 1e-6,
        };
        if (spec.ReservedMemoryBytes >= spec.DeviceMemoryBytes)
            throw new PlannerException($"cluster.reserved_memory_gib: {spec.ReservedMemoryBytes / Units.GiB} GiB leaves nothing of device_memory_gib {spec.DeviceMemoryBytes / Units.GiB} GiB");
        return spec;
    }
}

/// <summary>Small strict YAML helpers shared by the cluster and experiment readers.</summary>
internal static class Yaml
{
    public static YamlMappingNode LoadRoot(string text, string source)
    {
        YamlStream ys;
        try { ys = YamlText.Load(text, source); }
        catch (InputException e) { throw new PlannerException($"YAML syntax error: {e.Detail["invalid YAML: ".Length..]}", e.File, e.Line, e.Column); }
        if (ys.Documents.Count == 0 || ys.Documents[0].RootNode is not YamlMappingNode m)
            throw new PlannerException($"{source}: expected a YAML mapping at the top level");
        return m;
    }

    public sealed class Reader(YamlMappingNode map, string path)
    {
        public YamlMappingNode Map => map;
        public string Path => path;
        public YamlNode? Get(string key) => map.Children.TryGetValue(new YamlScalarNode(key), out var n) ? n : null;

        private string Scalar(string key)
        {
            var n = Get(key) ?? throw new PlannerException($"{path}.{key}: missing");
            if (n is not YamlScalarNode s || s.Value is null) throw new PlannerException($"{path}.{key}: expected a scalar value");
            return s.Value;
        }

        public string Str(string key) => Scalar(key);
        public string? OptStr(string key) => Get(key) is null ? null : Scalar(key);

        public int Int(string key, int min, int max)
        {
            string v = Scalar(key);
            if (!int.TryParse(v, System.Globalization.NumberStyles.Integer, System.Globalization.CultureInfo.InvariantCulture, out int x))
                throw new PlannerException($"{path}.{key}: '{v}' is not an integer");
            if (x < min || x > max) throw new PlannerException($"{path}.{key}: {x} is out of range {min}..{max}");
            return x;
        }

        public int OptInt(string key, int min, int max, int dflt) => Get(key) is null ? dflt : Int(key, min, max);

        public double Double(string key, double min, double max)
        {
            string v = Scalar(key);
            if (!double.TryParse(v, System.Globalization.NumberStyles.Float, System.Globalization.CultureInfo.InvariantCulture, out double x) || !double.IsFinite(x))
                throw new PlannerException($"{path}.{key}: '{v}' is not a finite number");
            if (x < min || x > max) throw new PlannerException($"{path}.{key}: {x} is out of range {min}..{max}");
            return x;
        }

        public double OptDouble(string key, double min, double max, double dflt) => Get(key) is null ? dflt : Double(key, min, max);
    }
}
