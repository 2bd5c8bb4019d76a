// Cost estimator: per-call seconds from per-kernel costs (GEMM efficiency by shape, fused attention by
// sequence length, streaming kernels, launch floors, host overhead per layer), the engine's integer layer
// assignment per pipeline stage, collectives by message size on the link the ranks actually share,
// per-device memory, reallocation by the busiest link and data transfer between calls. Every constant
// and its source: docs/cost-model.md. Everything is in seconds and bytes; no hidden unit conversions.
using System.Collections.Concurrent;

namespace ReaLNative.Planner;

/// <summary>A call's layout choice: mesh, strategy, micro-batches and a flag — activation
/// recomputation for train calls, host offload for calls of non-trainable models. <see cref="Zero3"/>
/// prices the call as DeepSpeed ZeRO-3 data parallelism (parameters sharded over the mesh, gathered per
/// layer); only the deepspeed_chat and openrlhf baselines use it, the search never does.</summary>
public readonly record struct CallOption(Mesh Mesh, Strategy Strategy, int MicroBatches, bool Flag, bool Zero3 = false)
{
    public bool SameLayout(CallOption o) => Mesh == o.Mesh && Strategy == o.Strategy && Zero3 == o.Zero3;
}

/// <summary>Per-device memory of one call option on its fullest pipeline stage.</summary>
public readonly record struct CallMemory(double WeightBytes, double TrainStateBytes, double ActiveBytes);

/// <summary>How a model's L+2 pipeline units (embedding, blocks, final norm + head) fall on pp stages:
/// the engine's rule (src/Engine/Layout/LlamaShardLayouts.cs): a unit goes to the stage its cumulative
/// parameter midpoint falls in, clamped so that no stage is left empty.</summary>
public sealed record StageLayout(int[] Blocks, bool[] Embedding, bool[] Head, double[] ParamStart, double[] ParamEnd, double TotalParams)
{
    public int Stages => Blocks.Length;
    public int MaxBlocks => Blocks.Max();
    public double MaxParams => Enumerable.Range(0, Stages).Max(j => ParamEnd[j] - ParamStart[j]);

    public static StageLayout For(ModelConfig m, bool scalarHead, int pp)
    {
        int count = m.Layers + 2;
        if (pp < 1 || pp > m.Layers) throw new PlannerException($"pp {pp} leaves a pipeline stage of {m.Name} without a transformer block ({m.Layers} layers)");
        long headRows = scalarHead ? 1 : m.Tied ? 0 : m.Vocab;
        long Cost(int u) => u == 0 ? (long)m.Vocab * m.Hidden : u == count - 1 ? m.Hidden + headRows * m.Hidden : (long)m.BlockParams;
        long total = 0;
        for (int u = 0; u < count; u++) total += Cost(u);
        var blocks = new int[pp]; var emb = new bool[pp]; var head = new bool[pp];
        var start = new double[pp]; var end = new double[pp];
        Array.Fill(start, double.NaN);
        long acc = 0;
        for (int u = 0; u < count; u++)
        {
            long c = Cost(u);
            int s = (int)Math.Min(pp - 1, (acc + c / 2) * pp / total);
            s = Math.Clamp(s, Math.Max(0, pp - (count - u)), Math.Min(u, pp - 1));
            if (double.IsNaN(start[s])) start[s] = acc;
            end[s] = acc + c;
            acc += c;
            if (u == 0) emb[s] = true; else if (u == count - 1) head[s] = true; else blocks[s]++;
        }
        return new StageLayout(blocks, emb, head, start, end, total);
    }
}

public sealed class Estimator
{
    /// <summary>What the model leaves out (docs/cost-model.md, "What the model leaves out"); `realn plan` prints it.</summary>
    public static readonly IReadOnlyList<string> Limits =
    [
        "no compute/communication overlap for tp and pipeline messages (ZeRO-3 gathers do overlap)",
        "no interleaved pipeline schedule, sequence/context or expert parallelism",
        "static-batch generation: a batch decodes until its longest sequence ends, at the mean number still decoding; no continuous batching, paged KV or speculative decoding",
        "sequence lengths: a named synthetic task's expected prompt and answer (a trained policy's answer length); a dataset or a workload without `task` at prompt_len + gen_len",
        "no network contention between concurrent calls or groups sharing NICs",
        "CPU devices of one machine (shared_host) share its memory bandwidth evenly and worker processes compute at a measured slowdown whether or not the others are busy; only the cores are shared by the devices computing at the same time (more devices than cores, synchronous schedules)",
        "no stragglers, failures, data loading, checkpointing or evaluation time",
    ];

    public ClusterSpec Cluster { get; }
    public Experiment Experiment { get; }
    public ProfileData? Profile { get; }
    private readonly double _gemm, _gemmCap, _membw, _workerSlowdown;
    // master-worker round trips by operation (seconds): the spec's (or the profile's mean) figure for each, unless the
    // profile measured them by kind for this many worker processes
    private readonly double _rtGenerate, _rtForward, _rtBackward;
    // the same with no more worker processes computing than cores (ComputeStretch > 1 only; else equal to the above)
    private readonly double _rtGenerateAlone, _rtForwardAlone, _rtBackwardAlone;
    private readonly int _eb, _hostShare;
    // more devices than profiled cores on a shared host: a one-thread device gets cores / devices of a core while all of
    // them compute; 1 when the schedule applies it instead (ComputeStretch), from the devices computing at the same time
    private readonly double _stretch;
    private readonly ConcurrentDictionary<(ModelConfig, bool, int), StageLayout> _layouts = new();
    private Estimator? _unstretched;

    /// <param name="staticStretch">Whether a shared host's devices / cores stretch is priced into every call (as if every
    /// device computed all the time); false prices one device's compute alone and leaves the stretch to the schedule
    /// (<see cref="Unstretched"/>, <see cref="Evaluator"/>).</param>
    public Estimator(ClusterSpec cluster, Experiment exp, ProfileData? profile = null, bool staticStretch = true)
    {
        // the round trip measured by `realn profile` on this host replaces the spec's, for as many worker processes
        // as it measured (a spec that prices none, WorkerRoundTrip 0, as the in-process estimate does, keeps none)
        if (cluster.SharedHost && cluster.WorkerRoundTrip > 0 && profile?.WorkerRoundTripUsFor(cluster.DevicesPerNode) is { } rt)
            cluster = cluster with { WorkerRoundTrip = rt * 1e-6 };
        Cluster = cluster; Experiment = exp; Profile = profile;
        _rtGenerate = _rtForward = _rtBackward = cluster.WorkerRoundTrip;
        if (cluster.SharedHost && cluster.WorkerRoundTrip > 0 && profile?.WorkerRoundTripEntryFor(cluster.DevicesPerNode) is { } kinds)
        {
            _rtGenerate = kinds.GenerateUs * 1e-6 ?? _rtGenerate;
            _rtForward = kinds.ForwardUs * 1e-6 ?? _rtForward;
            _rtBackward = kinds.BackwardUs * 1e-6 ?? _rtBackward;
        }
        // a profile is measured by one process on every core of the host; a device of a shared host has 1/n of them
        _hostShare = cluster.SharedHost ? cluster.DevicesPerNode : 1;
        ComputeStretch = _hostShare > 1 && profile?.Threads is { } hostCores && _hostShare > hostCores ? (double)_hostShare / hostCores : 1;
        _stretch = staticStretch ? ComputeStretch : 1;
        // more devices than cores: the round trips measured with as many worker processes as cores (no process waits for
        // a time slice), for the moments the schedule has no more devices computing than cores
        (_rtGenerateAlone, _rtForwardAlone, _rtBackwardAlone) = (_rtGenerate, _rtForward, _rtBackward);
        if (ComputeStretch > 1 && cluster.WorkerRoundTrip > 0 && profile!.WorkerRoundTripEntryFor(profile.Threads!.Value) is { } alone)
        {
            double mean = alone.Us * 1e-6;
            _rtGenerateAlone = alone.GenerateUs * 1e-6 ?? mean;
            _rtForwardAlone = alone.ForwardUs * 1e-6 ?? mean;
            _rtBackwardAlone = alone.BackwardUs * 1e-6 ?? mean;
        }
        _gemm = profile?.GemmGflops is { } g ? g * 1e9 / _hostShare : cluster.PeakFlops * cluster.ComputeEfficiency;
        // the measured plateau of large GEMMs caps the shape factor's rise (a profile's GEMM rate is its own measurement)
        _gemmCap = profile?.GemmGflops is null && cluster.GemmMaxEfficiency is { } cap ? cluster.PeakFlops * cap : double.PositiveInfinity;
        _membw = (profile?.MemcpyGbps is { } m ? m * 1e9 : cluster.MemoryBandwidth * cluster.MemoryEfficiency)
            / (cluster.SharedHost ? cluster.DevicesPerNode : 1); // cores of one host share its memory bandwidth
        _eb = cluster.ElementBytes;
        // devices in one-thread worker processes of a shared host compute alongside each other and the master: the
        // slowdown `realn profile` measured with as many one-thread processes as devices replaces the spec's (for
        // worker processes only: a spec that prices none, WorkerRoundTrip 0, is the in-process estimate). The
        // measurement includes the time slicing of more processes than cores, which Block already charges as the
        // devices / cores stretch, so that stretch is divided out here.
        _workerSlowdown = cluster.SharedHost ? cluster.WorkerComputeSlowdown : 1;
        if (cluster.SharedHost && cluster.WorkerRoundTrip > 0 && profile?.SharedComputeOverAlone(cluster.DevicesPerNode) is { } over)
            _workerSlowdown = over / (profile.Threads is { } cores ? Math.Max(1.0, (double)cluster.DevicesPerNode / cores) : 1.0);
    }

    /// <summary>On a shared host with more devices than the profile's cores (cpu-local-4: 4 one-thread devices on 2 cores):
    /// devices / cores, the stretch of a device's compute while every device computes; 1 elsewhere. The synchronous
    /// schedule applies it by the devices computing at each moment (<see cref="Evaluator"/>), not to every call.</summary>
    public double ComputeStretch { get; }

    /// <summary>The cores the devices of a shared host share (the profile's threads); null without a profile.</summary>
    public int? HostCores => Cluster.SharedHost ? Profile?.Threads : null;

    /// <summary>This estimator without the static devices / cores stretch (<see cref="ComputeStretch"/>): one device's
    /// compute as if it had its core alone, for the schedule to stretch by the devices computing at the same time.</summary>
    public Estimator Unstretched => _stretch == 1 ? this : _unstretched ??= new Estimator(Cluster, Experiment, Profile, staticStretch: false);

    /// <summary>The slowdown applied to a call's compute in worker processes (1 off a shared host).</summary>
    public double WorkerComputeSlowdown => _workerSlowdown;

    public StageLayout Layout(ModelConfig m, bool scalar, int pp) => _layouts.GetOrAdd((m, scalar, pp), k => StageLayout.For(k.Item1, k.Item2, k.Item3));

    // ---- kernels ---------------------------------------------------------------------------------

    private double Sat(double d) => d / (d + Cluster.GemmHalfDim);

    /// <summary>One GEMM (M x K) * (K x N): the slower of compute at shape-dependent efficiency
    /// (large-GEMM throughput x d/(d+half) per dimension, at most the measured plateau <c>gemm_max_efficiency</c>)
    /// and reading/writing its operands, at least a launch.</summary>
    public double Gemm(double m, double n, double k)
    {
        if (m <= 0 || n <= 0 || k <= 0) return 0;
        double compute = 2 * m * n * k / Math.Min(_gemm * Sat(m) * Sat(n) * Sat(k), _gemmCap);
        double memory = (m * k + k * n + m * n) * _eb / _membw;
        return Math.Max(Math.Max(compute, memory), Cluster.KernelLaunch);
    }

    /// <summary>A memory-bound kernel moving <paramref name="bytes"/>, at least a launch.</summary>
    public double Stream(double bytes) => Math.Max(bytes / _membw, Cluster.KernelLaunch);

    /// <summary>Fused causal attention for <paramref name="tokens"/> queries attending to <paramref name="ctx"/>
    /// keys on average, in sequences of <paramref name="seqLen"/> (efficiency grows with it); decode reads the KV cache.</summary>
    private double Attention(double tokens, double ctx, double seqLen, int qDim, int kvDim, int heads, bool decode, double flopScale = 1)
    {
        if (!decode && !Cluster.FlashAttention)
        {
            // materialized scores: full (unmasked) QK^T and PV as batched GEMMs, and ~6 passes over the
            // heads x s x s scores per sequence (write, softmax read/write, dropout read/write, PV read)
            double gemm = 4.0 * tokens * seqLen * qDim * flopScale / _gemm;
            double scores = 6.0 * tokens * seqLen * heads * _eb * flopScale / _membw;
            return Math.Max(gemm + scores, Cluster.KernelLaunch);
        }
        double eff = Cluster.AttentionEfficiency * seqLen / (seqLen + Cluster.AttentionHalfSeq);
        double flops = 4.0 * tokens * ctx * qDim * flopScale;
        double bytes = decode ? tokens * ctx * 2.0 * kvDim * _eb + 2.0 * tokens * qDim * _eb
                              : tokens * (2.0 * qDim + 2.0 * kvDim) * _eb * flopScale;
        return Math.Max(Math.Max(flops / (Cluster.PeakFlops * eff), bytes / _membw), Cluster.KernelLaunch);
    }

    // ---- links and collectives -------------------------------------------------------------------

    /// <summary>Bus bandwidth of a collective group: NVLink-class inside a node; across nodes the NICs of
    /// the group's members on one node (one NIC share per device), capped by the intra-node figure.</summary>
    private double GroupBandwidth(bool interNode, int membersPerNode) =>
        interNode ? Math.Min(Cluster.IntraNodeBandwidth, Math.Max(1, membersPerNode) * Cluster.InterNodeBandwidth) : Cluster.IntraNodeBandwidth;

    /// <summary>Base latency of a message or collective. Between the worker processes of a shared host it is a
    /// master-worker round trip's (<see cref="ClusterSpec.WorkerRoundTrip"/>): the same control messages and thread
    /// wake-ups, and with more devices than cores the same waits for a peer's time slice.</summary>
    private double Latency(bool interNode) => interNode ? Cluster.InterNodeLatency
        : Cluster.SharedHost ? Math.Max(Cluster.IntraNodeLatency, Cluster.WorkerRoundTrip) : Cluster.IntraNodeLatency;

    /// <summary>Ring all-reduce of <paramref name="bytes"/> over <paramref name="n"/> ranks: one base latency
    /// plus 2(n-1)/n bytes at the group's bus bandwidth (the alpha-beta fit of nccl-tests curves).</summary>
    public double AllReduce(double bytes, int n, bool interNode, int membersPerNode = 1) =>
        n <= 1 ? 0 : Latency(interNode) + 2.0 * (n - 1) / n * bytes / GroupBandwidth(interNode, membersPerNode);

    /// <summary>All-gather (or reduce-scatter) of <paramref name="bytes"/> in total over <paramref name="n"/> ranks.</summary>
    public double AllGather(double bytes, int n, bool interNode, int membersPerNode = 1) =>
        n <= 1 ? 0 : Latency(interNode) + (double)(n - 1) / n * bytes / GroupBandwidth(interNode, membersPerNode);

    /// <summary>One point-to-point message: inside a node over NVLink, else over the sender's NIC share.</summary>
    public double P2P(double bytes, bool interNode) =>
        Latency(interNode) + bytes / (interNode ? Cluster.InterNodeBandwidth : Cluster.IntraNodeBandwidth);

    /// <summary>Whether the data-parallel group of a stage spans nodes, and its members per node.
    /// Ranks are row-major over [pipe, data, model], so a stage's dp x tp ranks are contiguous.</summary>
    public (bool Inter, int PerNode) DpGroup(CallOption o)
    {
        var s = o.Strategy;
        if (o.Mesh.NodeCount == 1 || s.Dp * s.Tp <= o.Mesh.DeviceCount) return (false, s.Dp);
        return (true, o.Mesh.DeviceCount / s.Tp);
    }

    /// <summary>Whether any pipeline hop (stage j to j+1, same data/tensor coordinate) crosses nodes.</summary>
    public bool PipelineCrossesNodes(CallOption o)
    {
        var s = o.Strategy;
        if (s.Pp <= 1 || o.Mesh.NodeCount == 1) return false;
        int dpn = Cluster.DevicesPerNode, stride = s.Dp * s.Tp;
        for (int j = 0; j + 1 < s.Pp; j++)
            if (o.Mesh.Device(j * stride, dpn) / dpn != o.Mesh.Device((j + 1) * stride, dpn) / dpn) return true;
        return false;
    }

    // ---- one transformer block, one pipeline stage ----------------------------------------------

    private enum Pass { Fwd, Bwd, Decode }

    /// <summary>One block on one tensor rank: <paramref name="tokens"/> packed tokens (decode: sequences,
    /// one token each) attending to <paramref name="ctx"/> keys on average; includes its tp all-reduces.</summary>
    private double Block(ModelConfig m, int tp, double tokens, double ctx, double seqLen, Pass pass)
    {
        double ar = tp > 1 ? 2 * AllReduce(tokens * m.Hidden * _eb, tp, false) : 0;
        string kind = pass switch { Pass.Fwd => "fwd", Pass.Bwd => "bwd", _ => "decode" };
        // A device of a shared host has cores / devices threads: its own measured points when the profile has
        // them, else the all-core points scaled as if the block's time were inversely proportional to threads.
        // More devices than cores (4 worker processes on 2 cores): each one-thread device gets cores / devices
        // of a core while all compute, so its one-thread time is stretched by devices / cores.
        if (_hostShare > 1 && Profile?.Threads is { } all && Profile.BlockSeconds(m, kind, tokens, Math.Max(1, all / _hostShare), seqLen) is { } own)
            return own * _stretch / tp + ar;
        if (Profile?.BlockSeconds(m, kind, tokens, null, seqLen) is { } measured) return measured * _hostShare / tp + ar;
        int h = m.Hidden, qd = m.Heads / tp * m.HeadDim, kvd = Math.Max(m.KvHeads / tp, 1) * m.HeadDim;
        double inter = (double)m.Intermediate / tp, t = tokens;
        double gemms = Gemm(t, qd + 2 * kvd, h) + Gemm(t, h, qd) + Gemm(t, 2 * inter, h) + Gemm(t, h, inter);
        // rmsnorm x2, rotary, residual add x2, SwiGLU: read + write of their operands
        double elem = Stream(2.0 * h * t * _eb) * 2 + Stream(2.0 * (qd + kvd) * t * _eb) + Stream(3.0 * h * t * _eb) * 2 + Stream(3.0 * inter * t * _eb);
        bool decode = pass == Pass.Decode;
        int heads = m.Heads / tp;
        double attn = Attention(t, ctx, seqLen, qd, kvd, heads, decode);
        double x = pass switch
        {
            // backward: data and weight gradient GEMMs (twice the forward work), FlashAttention-2's backward
            // (2.5x the forward's matmul FLOPs), elementwise backward twice the traffic
            Pass.Bwd => Gemm(t, h, qd + 2 * kvd) + Gemm(qd + 2 * kvd, h, t) + Gemm(t, qd, h) + Gemm(h, qd, t)
                      + Gemm(t, h, 2 * inter) + Gemm(2 * inter, h, t) + Gemm(t, inter, h) + Gemm(h, inter, t)
                      + Attention(t, ctx, seqLen, qd, kvd, heads, false, 2.5) + 2 * elem,
            _ => gemms + attn + elem,
        };
        return x + ar + Cluster.LayerOverhead;
    }

    /// <summary>A train call's optimizer step outside its blocks as `realn profile` measured it on this model
    /// (<see cref="ProfileData.TrainStepSeconds"/>), for <paramref name="tokens"/> packed tokens per step on one device;
    /// picked and scaled by threads as <see cref="Block"/> picks block points. Null without such a measurement.</summary>
    public double? MeasuredTrainStepSeconds(ModelConfig m, bool scalar, double tokens, double seqLen)
    {
        if (Profile is null) return null;
        if (_hostShare > 1 && Profile.Threads is { } all && Profile.TrainStepSeconds(m, scalar, tokens, Math.Max(1, all / _hostShare), seqLen) is { } own)
            return own * _stretch;
        return Profile.TrainStepSeconds(m, scalar, tokens, null, seqLen) is { } measured ? measured * _hostShare : null;
    }

    /// <summary>A generation's seconds per decode step outside its blocks as `realn profile` measured it on this model
    /// (<see cref="ProfileData.GenerationStepSeconds"/>) for <paramref name="sequences"/> sequences on one device; picked and
    /// scaled by threads as <see cref="Block"/> picks block points. Null without such a measurement.</summary>
    public double? MeasuredGenerationStepSeconds(ModelConfig m, bool scalar, double sequences)
    {
        if (Profile is null || scalar) return null;
        if (_hostShare > 1 && Profile.Threads is { } all && Profile.GenerationStepSeconds(m, sequences, Math.Max(1, all / _hostShare)) is { } own)
            return own * _stretch;
        return Profile.GenerationStepSeconds(m, sequences) is { } measured ? measured * _hostShare : null;
    }

    /// <summary>Seconds of the slowest pipeline stage for one micro-batch (integer blocks per stage; the
    /// first stage holds the embedding, the last the final norm, head and log-softmax / sampling; without
    /// <paramref name="ends"/> the blocks alone, when a measured train step holds the rest).</summary>
    private double SlowestStage(ModelConfig m, bool scalar, Strategy s, double tokens, double ctx, double seqLen, Pass pass, bool ends = true)
    {
        var lay = Layout(m, scalar, s.Pp);
        double block = Block(m, s.Tp, tokens, ctx, seqLen, pass);
        double vshard = scalar ? 1 : (double)m.Vocab / s.Tp;
        double head = pass == Pass.Bwd ? Gemm(tokens, m.Hidden, vshard) + Gemm(vshard, m.Hidden, tokens) + Stream(tokens * vshard * 8)
                                       : Gemm(tokens, vshard, m.Hidden) + Stream(tokens * vshard * 8) + (s.Tp > 1 ? AllReduce(tokens * 8, s.Tp, false) : 0);
        double embed = Stream(2.0 * tokens * m.Hidden * _eb) + (s.Tp > 1 ? AllReduce(tokens * m.Hidden * _eb, s.Tp, false) : 0);
        double worst = 0;
        for (int j = 0; j < lay.Stages; j++)
            worst = Math.Max(worst, lay.Blocks[j] * block + (ends && lay.Embedding[j] ? embed : 0) + (ends && lay.Head[j] ? head : 0));
        return worst;
    }

    /// <summary>Seconds of one call under an option (excludes reallocation and data transfer).</summary>
    public double CallSeconds(ModelCall c, CallOption o)
    {
        var m = Experiment.Models[c.Role];
        bool scalar = Experiment.HasScalarHead(c.Role);
        double dispatch = DispatchSeconds(c, o);
        if (o.Zero3) return Zero3Seconds(c, o, m, scalar) * _workerSlowdown + dispatch;
        return dispatch + NativeSeconds(c, o, m, scalar) * _workerSlowdown;
    }

    /// <summary>Master-worker round trips of a call in worker processes: one for generation and inference; a
    /// train call, for each of its epochs, one per optimizer step when its workers compute the loss
    /// (<see cref="ModelCall.LossOnWorkers"/>: forward, loss, backward and step in one command), else two (the
    /// forward whose outputs the master's loss needs, then the backward sent together with the optimizer step).</summary>
    public static int WorkerRoundTrips(ModelCall c) => c.Type == CallType.TrainStep ? (c.LossOnWorkers ? 1 : 2) * c.OptimizerSteps * c.Epochs : 1;

    /// <summary>What a call costs beyond its devices' compute: its master-worker round trips (<see cref="WorkerDispatchSeconds"/>)
    /// in worker processes, or with its devices as threads of one process (a shared host priced without round trips) the
    /// in-process dispatch of each operation on more than one device (<see cref="InProcessDispatchSeconds"/>).</summary>
    public double DispatchSeconds(ModelCall c, CallOption o, bool crowded = true) => WorkerDispatchSeconds(c, crowded) + InProcessDispatchSeconds(c, o);

    /// <summary>Devices as threads of one process (a shared host priced without worker round trips): an operation on
    /// <c>n</c> &gt; 1 devices costs what `realn profile` measured beyond its fastest device's compute with n in-process
    /// devices (<see cref="ProfileData.InProcessOverheads"/>: threads started and joined, the batch split, the outputs
    /// merged, the wait for the slowest device): a generation one, an inference call one forward, a train call per
    /// optimizer step and epoch one backward with its optimizer step (<see cref="ModelCall.LossOnWorkers"/>: one fused
    /// operation), else a forward and a backward with its optimizer step. 0 on one device (the operation runs on the
    /// calling thread), in worker processes, off a shared host, or without the measurement.</summary>
    public double InProcessDispatchSeconds(ModelCall c, CallOption o)
    {
        if (!Cluster.SharedHost || Cluster.WorkerRoundTrip > 0 || o.Mesh.Size < 2 || Profile is null) return 0;
        if ((Profile.InProcessOverheadFor(o.Mesh.Size) ?? Profile.InProcessOverheadFor(Cluster.DevicesPerNode)) is not { } w) return 0;
        double Kind(double? us) => (us ?? w.Us) * 1e-6;
        return c.Type switch
        {
            CallType.Generate => Kind(w.GenerateUs),
            CallType.Inference => Kind(w.ForwardUs),
            _ => c.OptimizerSteps * c.Epochs * (c.LossOnWorkers ? Kind(w.BackwardUs) : Kind(w.ForwardUs) + Kind(w.BackwardUs)),
        };
    }

    /// <summary>Seconds of a call's master-worker round trips: <see cref="ClusterSpec.WorkerRoundTrip"/> each, or what the
    /// profile measured for the operation (a generation; a forward - inference, or a train step's first round trip; a
    /// train step's round trip carrying its backward and optimizer step - the only one where the workers compute the loss).</summary>
    /// <param name="crowded">False: while no more devices compute than the host has cores (a shared host with more
    /// devices than cores), the round trips `realn profile` measured with as many worker processes as cores.</param>
    public double WorkerDispatchSeconds(ModelCall c, bool crowded = true) => c.Type switch
    {
        CallType.Generate => crowded ? _rtGenerate : _rtGenerateAlone,
        CallType.Inference => crowded ? _rtForward : _rtForwardAlone,
        _ => c.OptimizerSteps * c.Epochs * (c.LossOnWorkers ? (crowded ? _rtBackward : _rtBackwardAlone)
                                                              : crowded ? _rtForward + _rtBackward : _rtForwardAlone + _rtBackwardAlone),
    };

    private double NativeSeconds(ModelCall c, CallOption o, ModelConfig m, bool scalar)
    {
        var s = o.Strategy;
        int mb = o.MicroBatches;
        bool ppInter = PipelineCrossesNodes(o);
        double Hop(double tokens) => s.Pp > 1 ? P2P(tokens * m.Hidden * _eb / s.Tp, ppInter) : 0; // Megatron scatter/gather: 1/tp per rank
        double offload = o.Flag && c.Type != CallType.TrainStep ? Memory(c, o).WeightBytes / Cluster.HostBandwidth : 0;
        double seqLen = c.MeanSequenceTokens;   // packed: prompt + response tokens the engine computes, no padding

        switch (c.Type)
        {
            case CallType.TrainStep:
            {
                double tmb = (double)c.Sequences / c.OptimizerSteps * seqLen / s.Dp / mb;
                // Measured on this engine (`realn profile`): its step runs the forward for the loss, then the backward with
                // the forward again (one more with recompute), and the rest of the step (embedding, head, loss, AdamW,
                // per-op host work) as measured on the whole model; else the roofline's ends, optimizer and the spec's overhead.
                if (MeasuredTrainStepSeconds(m, scalar, tmb * mb, seqLen) is { } rest)
                {
                    double fm = SlowestStage(m, scalar, s, tmb, seqLen / 2, seqLen, Pass.Fwd, ends: false);
                    double bm = SlowestStage(m, scalar, s, tmb, seqLen / 2, seqLen, Pass.Bwd, ends: false);
                    double pipeM = (mb + s.Pp - 1) * (fm * (o.Flag ? 3 : 2) + bm + 2 * Hop(tmb));
                    // pp or tp > 1: the whole model's figure on every rank (not measured sharded: an upper bound)
                    return c.Epochs * c.OptimizerSteps * (pipeM + GradSync(m, scalar, o) + rest);
                }
                double f = SlowestStage(m, scalar, s, tmb, seqLen / 2, seqLen, Pass.Fwd);
                double b = SlowestStage(m, scalar, s, tmb, seqLen / 2, seqLen, Pass.Bwd);
                double pipe = (mb + s.Pp - 1) * (f * (o.Flag ? 2 : 1) + b + 2 * Hop(tmb));
                return c.Epochs * c.OptimizerSteps * (pipe + GradSync(m, scalar, o) + OptimizerStep(Layout(m, scalar, s.Pp).MaxParams / s.Tp / s.Dp)
                    + Cluster.TrainStepOverhead);
            }
            case CallType.Inference:
            {
                double tmb = (double)c.Sequences * seqLen / s.Dp / mb;
                double f = SlowestStage(m, scalar, s, tmb, seqLen / 2, seqLen, Pass.Fwd);
                return (mb + s.Pp - 1) * (f + Hop(tmb)) + offload;
            }
            default:
            {
                var (prefill, step) = GenerationParts(c, o, m, scalar);
                return prefill + Math.Max(0, c.DecodeSteps - 1) * step + offload;
            }
        }
    }

    /// <summary>A generation call's prefill and one decode step. Prefill of the packed prompts (pipelined like
    /// inference), then decode steps until the batch's longest sequence ends (<see cref="ModelCall.DecodeSteps"/>
    /// - 1 after the prefill's token); a step computes the sequences still decoding: on average seqs x mean new /
    /// steps of them. Each step passes every micro-batch through every stage: max(micro-batches, pp) stage times.</summary>
    private (double Prefill, double Step) GenerationParts(ModelCall c, CallOption o, ModelConfig m, bool scalar)
    {
        var s = o.Strategy;
        int mb = o.MicroBatches;
        bool ppInter = PipelineCrossesNodes(o);
        double Hop(double tokens) => s.Pp > 1 ? P2P(tokens * m.Hidden * _eb / s.Tp, ppInter) : 0;
        double seqs = (double)c.Sequences / s.Dp, prompt = c.MeanPromptTokens;
        double pmb = seqs * prompt / mb;
        // Measured on this engine (`realn profile`): per decode step, what a whole generation costs beyond its blocks
        // (embedding, head, sampling, KV-cache bookkeeping, host work), in place of the roofline's ends; the prefill
        // (which samples the first token) counts as a step
        double? rest = MeasuredGenerationStepSeconds(m, scalar, seqs);
        bool ends = rest is null;
        double prefill = (mb + s.Pp - 1) * (SlowestStage(m, scalar, s, pmb, prompt / 2.0, prompt, Pass.Fwd, ends) + Hop(pmb)) + (rest ?? 0);
        double bs = seqs / mb * Math.Min(1.0, c.MeanNewTokens / c.DecodeSteps), ctx = prompt + c.MeanNewTokens / 2.0;
        double step = Math.Max(mb, s.Pp) * (SlowestStage(m, scalar, s, bs, ctx, ctx, Pass.Decode, ends) + Hop(bs)) + (rest ?? 0);
        return (prefill, step);
    }

    /// <summary>A generation call under `weight_update: interrupt`, split where it takes the new weights: the
    /// first chunk (prefill and decode steps 1 .. k - 1) and the second (steps k .. the last), each a call of its
    /// own (a round trip each in worker processes). Null when the batch ends before step k (the engine then takes
    /// no weights mid-batch: finish_batch).</summary>
    public (double Before, double After)? InterruptedGenerationSeconds(ModelCall c, CallOption o, int k)
    {
        if (c.Type != CallType.Generate || o.Zero3 || k >= c.DecodeSteps) return null;
        var m = Experiment.Models[c.Role];
        bool scalar = Experiment.HasScalarHead(c.Role);
        double offload = o.Flag ? Memory(c, o).WeightBytes / Cluster.HostBandwidth : 0;
        var (prefill, step) = GenerationParts(c, o, m, scalar);
        double dispatch = WorkerDispatchSeconds(c);
        return (dispatch + (prefill + (k - 1) * step + offload) * _workerSlowdown,
                dispatch + (c.DecodeSteps - k) * step * _workerSlowdown);
    }

    /// <summary>Distributed-optimizer gradient sync per optimizer step: reduce-scatter of fp32 gradients and
    /// all-gather of the updated weights over the stage's data-parallel group.</summary>
    private double GradSync(ModelConfig m, bool scalar, CallOption o)
    {
        var s = o.Strategy;
        if (s.Dp <= 1) return 0;
        double p = Layout(m, scalar, s.Pp).MaxParams / s.Tp;
        var (inter, perNode) = DpGroup(o);
        return AllGather(p * 4, s.Dp, inter, perNode) + AllGather(p * _eb, s.Dp, inter, perNode);
    }

    /// <summary>AdamW over <paramref name="params"/> local parameters: memory bound; bf16 training reads and
    /// writes fp32 master, m, v (24 B), reads the fp32 gradient (4 B) and writes the bf16 weight (2 B).</summary>
    public double OptimizerStep(double @params) => Stream(@params * (Cluster.Precision == Precision.Bf16 ? 30 : 28));

    /// <summary>DeepSpeed ZeRO-3 over the mesh (pp = tp = 1): each layer's parameters are all-gathered before
    /// its forward and again before its backward (per micro-batch; prefetch overlaps the gather with the
    /// previous layer's compute, so a layer costs the slower of the two), gradients are reduce-scattered
    /// (bf16) during the backward, and the optimizer updates a 1/N shard.</summary>
    private double Zero3Seconds(ModelCall c, CallOption o, ModelConfig m, bool scalar)
    {
        var s = o.Strategy;
        int n = s.Dp, mb = o.MicroBatches;
        var (inter, perNode) = DpGroup(o);
        double layerBytes = m.BlockParams * _eb;
        double gather = AllGather(layerBytes, n, inter, perNode);
        double seqLen = c.MeanSequenceTokens;
        double headBytes = (double)m.Vocab * m.Hidden * _eb;
        var single1 = new Strategy(1, 1, 1);
        if (c.Type == CallType.TrainStep)
        {
            double tmb = (double)c.Sequences / c.OptimizerSteps * seqLen / n / mb;
            double f = Block(m, 1, tmb, seqLen / 2, seqLen, Pass.Fwd), b = Block(m, 1, tmb, seqLen / 2, seqLen, Pass.Bwd);
            double perLayer = Math.Max(f, gather) * (o.Flag ? 2 : 1) + Math.Max(b, gather + AllGather(layerBytes, n, inter, perNode));
            double ends = SlowestStage(m, scalar, single1, tmb, seqLen / 2, seqLen, Pass.Fwd) - m.Layers * f
                        + SlowestStage(m, scalar, single1, tmb, seqLen / 2, seqLen, Pass.Bwd) - m.Layers * b
                        + 3 * AllGather(headBytes, n, inter, perNode);
            double step = mb * (m.Layers * perLayer + Math.Max(0, ends)) + OptimizerStep(m.Params(scalar) / n) + Cluster.TrainStepOverhead;
            return c.Epochs * c.OptimizerSteps * step;
        }
        // inference (ref/reward/critic under ZeRO-3): gathered per layer as in the forward above
        double tokens = (double)c.Sequences * seqLen / n / mb;
        double fi = Block(m, 1, tokens, seqLen / 2, seqLen, Pass.Fwd);
        double endsI = SlowestStage(m, scalar, single1, tokens, seqLen / 2, seqLen, Pass.Fwd) - m.Layers * fi + AllGather(headBytes, n, inter, perNode);
        return mb * (m.Layers * Math.Max(fi, gather) + Math.Max(0, endsI));
    }

    /// <summary>Per-device memory of a call option on its fullest stage: weights of the layout, train state
    /// (fp32 gradients + distributed optimizer) for train calls, and active memory (activations, logits, KV cache).
    /// Weights, train state and the KV cache are in the model's precision (<see cref="Experiment.PrecisionOf"/>,
    /// else the cluster's): bf16 weights 2 B with fp32 gradients 4 B + fp32 master, m, v 12 B (18 B trained, 2 B
    /// frozen); fp32 4 B + 4 B + m, v 8 B (16 B trained). Activations are in the cluster's precision.</summary>
    public CallMemory Memory(ModelCall c, CallOption o)
    {
        var m = Experiment.Models[c.Role];
        bool scalar = Experiment.HasScalarHead(c.Role);
        var s = o.Strategy;
        double vocabShard = scalar ? 1 : (double)m.Vocab / s.Tp;
        int mb = o.MicroBatches;
        bool bf16 = (Experiment.PrecisionOf(c.Role) ?? Cluster.Precision) == Precision.Bf16;
        double wb = bf16 ? 2 : 4;         // bytes per weight and per KV-cache element
        double adam = bf16 ? 12 : 8;      // fp32 master + m + v (fp32 training: m + v)
        // activation bytes per token per layer, Korthikanti et al. 2022 (tensor parallel, no sequence
        // parallelism, flash attention so no s^2 term): h (10 + 24/tp) at 2-byte activations
        double ActPerToken(int tp) => m.Hidden * (10.0 + 24.0 / tp) * _eb / 2.0;
        if (o.Zero3)
        {
            double p = m.Params(scalar), n = s.Dp;
            double gathered = 2 * m.BlockParams * wb + (double)m.Vocab * m.Hidden * wb; // prefetch buffers + gathered head
            if (c.Type == CallType.TrainStep)
            {
                double tmb = (double)c.Sequences / c.OptimizerSteps * c.SequenceTokens / n / mb;
                double acts = o.Flag ? m.Layers * tmb * m.Hidden * _eb + tmb * ActPerToken(1) : m.Layers * tmb * ActPerToken(1);
                return new CallMemory(p * wb / n, p * (wb + adam) / n, acts + gathered + tmb * m.Vocab * 8.0);
            }
            double t = (double)c.Sequences * c.SequenceTokens / n / mb;
            return new CallMemory(p * wb / n, 0, gathered + t * (4.0 * m.Hidden + 2.0 * m.Intermediate) * _eb + t * m.Vocab * 4.0);
        }
        var lay = Layout(m, scalar, s.Pp);
        double stageParams = lay.MaxParams / s.Tp;
        double weights = stageParams * wb;
        double layers = lay.MaxBlocks;
        switch (c.Type)
        {
            case CallType.TrainStep:
            {
                double tmb = (double)c.Sequences / c.OptimizerSteps * c.SequenceTokens / s.Dp / mb;
                double inflight = Math.Min(mb, s.Pp); // 1F1B: the first stage holds pp micro-batches
                double perLayer = tmb * ActPerToken(s.Tp);
                double acts = o.Flag ? layers * tmb * m.Hidden * _eb * inflight + perLayer : layers * perLayer * inflight;
                double logits = tmb * vocabShard * 4 * 2;
                double state = stageParams * 4 + stageParams / s.Dp * adam;
                return new CallMemory(weights, state, acts + logits);
            }
            case CallType.Inference:
            {
                double tmb = (double)c.Sequences * c.SequenceTokens / s.Dp / mb;
                double acts = tmb * (4.0 * m.Hidden + 2.0 * m.Intermediate / s.Tp) * _eb + tmb * vocabShard * 4;
                return new CallMemory(weights, 0, acts);
            }
            default:
            {
                double seqs = (double)c.Sequences / s.Dp;
                double kvShard = Math.Max(m.KvHeads / s.Tp, 1) * m.HeadDim;
                double kv = seqs * c.SequenceTokens * 2 * kvShard * layers * wb;
                double pmb = seqs * c.PromptTokens / mb;
                double prefill = pmb * (4.0 * m.Hidden + 2.0 * m.Intermediate / s.Tp) * _eb + seqs / mb * vocabShard * 4;
                return new CallMemory(weights, 0, kv + prefill);
            }
        }
    }

    /// <summary>Parameter reallocation from layout <paramref name="src"/> to <paramref name="dst"/> of a
    /// model (weights only): builds the interval plan at the granularity of (pipeline-stage parameter
    /// range x tensor-parallel slice) pieces, picks one sender per (piece, destination node) among the
    /// source's data-parallel replicas (same node first, else the least-loaded node), copies locally where
    /// source and destination share a device, broadcasts inside a node, and returns the busiest link's
    /// bytes / bandwidth plus latency. From a ZeRO-3 layout (baselines only): DeepSpeed-Chat's hybrid engine
    /// all-gathers the tensor-parallel shards on the same devices; OpenRLHF gathers on the training group and
    /// broadcasts every tensor from one rank to the generation group.</summary>
    public double ReallocSeconds(string role, CallOption src, CallOption dst)
    {
        if (src.SameLayout(dst)) return 0;
        var m = Experiment.Models[role];
        bool scalar = Experiment.HasScalarHead(role);
        double total = m.Params(scalar) * _eb;
        int dpn = Cluster.DevicesPerNode, nd = Cluster.TotalDevices;
        if (src.Zero3)
        {
            var (inter, perNode) = DpGroup(src);
            if (src.Mesh.Overlaps(dst.Mesh))
                return AllGather(total / dst.Strategy.Tp, src.Strategy.Dp, inter, perNode) + m.Layers * Latency(inter);
            bool cross = src.Mesh.NodeStart != dst.Mesh.NodeStart || src.Mesh.NodeCount > 1 || dst.Mesh.NodeCount > 1;
            int tensors = 9 * m.Layers + 3;
            return AllGather(total, src.Strategy.Dp, inter, perNode) + tensors * (Latency(inter) + Latency(cross))
                + total / (cross ? Cluster.InterNodeBandwidth : Cluster.IntraNodeBandwidth);
        }
        var srcLay = Layout(m, scalar, src.Strategy.Pp); var dstLay = Layout(m, scalar, dst.Strategy.Pp);
        double tp = srcLay.TotalParams;
        var intraOut = new double[nd]; var intraIn = new double[nd]; var local = new double[nd];
        var interOut = new double[Cluster.Nodes]; var interIn = new double[Cluster.Nodes];
        var isSrc = new bool[nd];
        var ss = src.Strategy; var ds = dst.Strategy;
        var dests = new int[ds.Dp]; var srcDev = new int[ss.Dp]; var remaining = new int[ds.Dp];
        for (int j = 0; j < ds.Pp; j++)
        for (int q = 0; q < ds.Tp; q++)
        {
            // destination replicas in rank order: their devices (and nodes) are non-decreasing
            for (int e = 0; e < ds.Dp; e++) dests[e] = dst.Mesh.Device((j * ds.Dp + e) * ds.Tp + q, dpn);
            for (int sStage = 0; sStage < ss.Pp; sStage++)
            {
                double fs = Overlap(srcLay.ParamStart[sStage] / tp, srcLay.ParamEnd[sStage] / tp, dstLay.ParamStart[j] / tp, dstLay.ParamEnd[j] / tp);
                if (fs <= 0) continue;
                for (int r = 0; r < ss.Tp; r++)
                {
                    double ft = Overlap((double)r / ss.Tp, (double)(r + 1) / ss.Tp, (double)q / ds.Tp, (double)(q + 1) / ds.Tp);
                    if (ft <= 0) continue;
                    double bytes = fs * ft * total;
                    for (int e = 0; e < ss.Dp; e++) { srcDev[e] = src.Mesh.Device((sStage * ss.Dp + e) * ss.Tp + r, dpn); isSrc[srcDev[e]] = true; }
                    for (int a = 0; a < ds.Dp;)
                    {
                        int node = dests[a] / dpn, b = a, nRem = 0;
                        for (; b < ds.Dp && dests[b] / dpn == node; b++)
                            if (isSrc[dests[b]]) local[dests[b]] += bytes; else remaining[nRem++] = dests[b];
                        a = b;
                        if (nRem == 0) continue;
                        int bestLocalNode = -1, bestRemote = -1;
                        for (int e = 0; e < ss.Dp; e++)
                        {
                            int sd = srcDev[e];
                            if (sd / dpn == node) { if (bestLocalNode < 0 || intraOut[sd] < intraOut[bestLocalNode]) bestLocalNode = sd; }
                            else if (bestRemote < 0 || interOut[sd / dpn] < interOut[bestRemote / dpn]) bestRemote = sd;
                        }
                        if (bestLocalNode >= 0)
                        {
                            intraOut[bestLocalNode] += bytes; // chain broadcast: the sender sends once
                            for (int k = 0; k < nRem; k++) intraIn[remaining[k]] += bytes;
                        }
                        else
                        {
                            interOut[bestRemote / dpn] += bytes; interIn[node] += bytes;
                            for (int k = 0; k < nRem; k++) { intraIn[remaining[k]] += bytes; if (k > 0) intraOut[remaining[k - 1]] += bytes; }
                        }
                    }
                    for (int e = 0; e < ss.Dp; e++) isSrc[srcDev[e]] = false;
                }
            }
        }
        double t = 0, interT = 0;
        for (int d = 0; d < nd; d++)
            t = Math.Max(t, Math.Max(Math.Max(intraOut[d], intraIn[d]) / Cluster.IntraNodeBandwidth, local[d] / _membw));
        for (int n = 0; n < Cluster.Nodes; n++)
            interT = Math.Max(interT, Math.Max(interOut[n], interIn[n]) / (Cluster.InterNodeBandwidth * dpn));
        return t + interT + Cluster.IntraNodeLatency + (interT > 0 ? Cluster.InterNodeLatency : 0);
    }

    private static double Overlap(double a0, double a1, double b0, double b1) => Math.Max(0, Math.Min(a1, b1) - Math.Max(a0, b0));

    /// <summary>Moving a producer call's outputs to a consumer call: the data-parallel heads of the
    /// producer send their share to the consumer ranks; zero when both run on the same layout.</summary>
    public double TransferSeconds(ModelCall producer, CallOption from, CallOption to)
    {
        if (from.SameLayout(to) || producer.OutputBytesPerToken == 0) return 0;
        double bytes = (double)producer.Sequences * producer.MeanSequenceTokens * producer.OutputBytesPerToken;
        int streams = Math.Min(from.Strategy.Dp, to.Mesh.Size);
        bool sameNode = from.Mesh.NodeCount == 1 && to.Mesh.NodeCount == 1 && from.Mesh.NodeStart == to.Mesh.NodeStart;
        return sameNode ? bytes / streams / Cluster.IntraNodeBandwidth + Cluster.IntraNodeLatency
                        : bytes / streams / Cluster.InterNodeBandwidth + Cluster.InterNodeLatency;
    }
}
