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
/// <c>compute_efficiency</c> (0..1, share of peak a large GEMM reaches; smaller shapes get less, see
/// <c>gemm_half_dim</c>), <c>memory_bandwidth_gbps</c> (device memory, GB/s),
/// <c>intra_node_bandwidth_gbps</c> (all-reduce bus bandwidth inside a node, nccl-tests busbw at large messages),
/// <c>intra_node_latency_us</c> (base time of one collective or p2p message inside a node),
/// <c>inter_node_bandwidth_gbps</c> (per device NIC share, one direction),
/// <c>inter_node_latency_us</c> (base time of one collective or message across nodes), <c>host_bandwidth_gbps</c>
/// (device-host copies for offload). Optional: <c>reserved_memory_gib</c> (runtime/fragmentation reserve, default 0),
/// <c>gemm_half_dim</c> (GEMM dimension at which efficiency per dimension halves, default 128),
/// <c>gemm_max_efficiency</c> (the share of peak no GEMM exceeds, the measured plateau of large layer-shaped GEMMs;
/// default none: the shape factor alone),
/// <c>attention_efficiency</c> (share of peak of fused attention at long sequences, default compute_efficiency),
/// <c>attention_half_seq</c> (sequence length at which it halves, default 256),
/// <c>memory_efficiency</c> (share of memory_bandwidth_gbps a streaming kernel reaches, default 1),
/// <c>kernel_launch_us</c> (floor of any kernel: launch + minimal execution, default 0),
/// <c>layer_overhead_us</c> (host work per transformer block per pass, default 0),
/// <c>train_step_overhead_us</c> (per optimizer step of a train call, the work beyond its blocks, default 0),
/// <c>peak_tflops_bf16</c> / <c>peak_tflops_fp32</c> (dense peak in each precision, for experiments whose
/// <c>precision</c> differs from the spec's; see <see cref="ForPrecision"/>),
/// <c>attention_kernel</c> (flash | materialized, default flash), <c>shared_host</c> (true: the node's devices are
/// cores of one host sharing memory_bandwidth_gbps, default false), <c>worker_round_trip_us</c> (per master-worker round trip of a call in worker processes, default 0;
/// see <see cref="Estimator.WorkerRoundTrips"/>), <c>worker_compute_slowdown</c> (a shared host's device computing in a
/// one-thread worker process, relative to the profile's one-thread point measured with the host otherwise idle, default 1).
/// docs/cost-model.md gives each constant's source for the shipped specs.
/// </summary>
public sealed record ClusterSpec
{
    public required string Name { get; init; }
    public required int Nodes { get; init; }
    public required int DevicesPerNode { get; init; }
    public required double DeviceMemoryBytes { get; init; }
    public required Precision Precision { get; init; }
    public required double PeakFlops { get; init; }
    /// <summary>Dense peak FLOP/s per precision where the spec gives it (peak_tflops_bf16 / peak_tflops_fp32).</summary>
    public IReadOnlyDictionary<Precision, double> PeakFlopsByPrecision { get; init; } = new Dictionary<Precision, double>();
    public required double ComputeEfficiency { get; init; }
    public required double MemoryBandwidth { get; init; }
    public required double IntraNodeBandwidth { get; init; }
    public required double IntraNodeLatency { get; init; }
    public required double InterNodeBandwidth { get; init; }
    public required double InterNodeLatency { get; init; }
    public required double HostBandwidth { get; init; }
    public double ReservedMemoryBytes { get; init; }
    /// <summary>GEMM dimension d at which the per-dimension efficiency factor d/(d+half) is 1/2.</summary>
    public double GemmHalfDim { get; init; } = 128;
    /// <summary>The share of peak no GEMM exceeds (a measured plateau); null: no cap beyond the shape factor.</summary>
    public double? GemmMaxEfficiency { get; init; }
    /// <summary>Share of peak a fused (flash) attention kernel reaches at long sequences.</summary>
    public double AttentionEfficiency { get; init; } = 0.5;
    /// <summary>Sequence length at which attention efficiency is half of <see cref="AttentionEfficiency"/>.</summary>
    public double AttentionHalfSeq { get; init; } = 256;
    /// <summary>Fused (flash) attention; false prices the materialized s x s scores of pre-2022 systems
    /// (QK^T, masked softmax, dropout and PV over the full matrix in device memory).</summary>
    public bool FlashAttention { get; init; } = true;
    /// <summary>The node's devices are cores of one host (CPU backend): they share its memory bandwidth, and a
    /// run without a plan gives its single device every core (<see cref="PlanSearch.SingleDeviceSeconds"/>).</summary>
    public bool SharedHost { get; init; }
    /// <summary>Seconds per master-worker round trip when calls run in worker processes (control command, batch
    /// in, outputs back, beyond the worker's compute); a call makes <see cref="Estimator.WorkerRoundTrips"/> of them.</summary>
    public double WorkerRoundTrip { get; init; }
    /// <summary>On a <see cref="SharedHost"/>: how much longer a device's compute takes in a one-thread worker process
    /// than the profile's one-thread point, which was measured with the other cores idle: in a run the other devices'
    /// workers and the master compute on the same cores, caches and memory bandwidth. 1 = as profiled; devices as
    /// threads of one process (`--in-process`) and the single device are priced without it.</summary>
    public double WorkerComputeSlowdown { get; init; } = 1;
    /// <summary>Share of <see cref="MemoryBandwidth"/> a streaming kernel reaches.</summary>
    public double MemoryEfficiency { get; init; } = 1;
    /// <summary>Seconds a kernel takes at least (launch and minimal execution): the floor of every op.</summary>
    public double KernelLaunch { get; init; }
    /// <summary>Host seconds per transformer block per pass (dispatch of its ops).</summary>
    public double LayerOverhead { get; init; }
    /// <summary>Seconds per optimizer step of a train call beyond its blocks: the step's non-block work (embedding,
    /// head and log-softmax backward, the loss and its gradient, gradient clipping, AdamW and zeroing per tensor:
    /// many small ops) that the block terms and a profile's block points do not hold. Default 0.</summary>
    public double TrainStepOverhead { get; init; }

    public int TotalDevices => Nodes * DevicesPerNode;
    /// <summary>Memory the planner may fill on each device.</summary>
    public double UsableMemoryBytes => DeviceMemoryBytes - ReservedMemoryBytes;
    /// <summary>Bytes per weight/activation element in this precision.</summary>
    public int ElementBytes => Precision == Precision.Bf16 ? 2 : 4;

    /// <summary>This cluster training in <paramref name="precision"/> (an experiment's `precision`):
    /// element bytes, master/optimizer bytes and the GEMM peak of that precision. The peak is
    /// peak_tflops_&lt;precision&gt;, or peak_tflops when the spec's own precision matches; otherwise refused.</summary>
    public ClusterSpec ForPrecision(Precision precision)
    {
        string key = precision == Precision.Bf16 ? "peak_tflops_bf16" : "peak_tflops_fp32";
        if (precision == Precision) return PeakFlopsByPrecision.TryGetValue(precision, out double own) ? this with { PeakFlops = own } : this;
        // the GEMM plateau was measured in the spec's precision: another precision's peak has no measured cap
        if (PeakFlopsByPrecision.TryGetValue(precision, out double peak)) return this with { Precision = precision, PeakFlops = peak, GemmMaxEfficiency = null };
        throw new PlannerException($"cluster.{key}: missing; the experiment's precision is {key[^4..]} and the spec's peak_tflops is for {(Precision == Precision.Bf16 ? "bf16" : "fp32")}");
    }

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
            "inter_node_bandwidth_gbps", "inter_node_latency_us", "host_bandwidth_gbps", "reserved_memory_gib", "description",
            "gemm_half_dim", "gemm_max_efficiency", "attention_efficiency", "attention_half_seq", "memory_efficiency", "kernel_launch_us", "layer_overhead_us", "attention_kernel", "shared_host", "worker_round_trip_us", "worker_compute_slowdown", "train_step_overhead_us",
            "peak_tflops_bf16", "peak_tflops_fp32" };
        foreach (var k in map.Children.Keys)
            if (!known.Contains(k.ToString())) throw new PlannerException($"cluster.{k}: unknown key in {source} (known: {string.Join(", ", known.Order())})");
        var r = new Yaml.Reader(map, "cluster");
        int dpn = r.Int("devices_per_node", 1, 64);
        if ((dpn & (dpn - 1)) != 0) throw new PlannerException($"cluster.devices_per_node: {dpn} is not a power of two");
        string prec = r.Str("precision");
        double eff = r.Double("compute_efficiency", 0.01, 1.0);
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
            PeakFlopsByPrecision = new[] { (Precision.Bf16, "peak_tflops_bf16"), (Precision.Fp32, "peak_tflops_fp32") }
                .Where(x => r.Get(x.Item2) is not null).ToDictionary(x => x.Item1, x => r.Double(x.Item2, 1e-6, 1e6) * 1e12),
            ComputeEfficiency = eff,
            MemoryBandwidth = r.Double("memory_bandwidth_gbps", 0.01, 1e6) * 1e9,
            IntraNodeBandwidth = r.Double("intra_node_bandwidth_gbps", 0.001, 1e6) * 1e9,
            IntraNodeLatency = r.Double("intra_node_latency_us", 0, 1e6) * 1e-6,
            InterNodeBandwidth = r.Double("inter_node_bandwidth_gbps", 0.001, 1e6) * 1e9,
            InterNodeLatency = r.Double("inter_node_latency_us", 0, 1e6) * 1e-6,
            HostBandwidth = r.Double("host_bandwidth_gbps", 0.001, 1e6) * 1e9,
            ReservedMemoryBytes = r.OptDouble("reserved_memory_gib", 0, 1e6, 0) * Units.GiB,
            GemmHalfDim = r.OptDouble("gemm_half_dim", 0, 1e6, 128),
            GemmMaxEfficiency = r.Get("gemm_max_efficiency") is null ? null : r.Double("gemm_max_efficiency", 0.01, 1.0),
            AttentionEfficiency = r.OptDouble("attention_efficiency", 0.01, 1.0, eff),
            AttentionHalfSeq = r.OptDouble("attention_half_seq", 0, 1e7, 256),
            MemoryEfficiency = r.OptDouble("memory_efficiency", 0.01, 1.0, 1.0),
            KernelLaunch = r.OptDouble("kernel_launch_us", 0, 1e6, 0) * 1e-6,
            LayerOverhead = r.OptDouble("layer_overhead_us", 0, 1e6, 0) * 1e-6,
            TrainStepOverhead = r.OptDouble("train_step_overhead_us", 0, 1e9, 0) * 1e-6,
            SharedHost = (r.OptStr("shared_host") ?? "false") switch
            {
                "true" => true,
                "false" => false,
                var v => throw new PlannerException($"cluster.shared_host: '{v}' is not true or false"),
            },
            WorkerRoundTrip = r.OptDouble("worker_round_trip_us", 0, 1e9, 0) * 1e-6,
            WorkerComputeSlowdown = r.OptDouble("worker_compute_slowdown", 1, 10, 1),
            FlashAttention = (r.OptStr("attention_kernel") ?? "flash") switch
            {
                "flash" => true,
                "materialized" => false,
                var k => throw new PlannerException($"cluster.attention_kernel: '{k}' is not one of flash, materialized"),
            },
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
