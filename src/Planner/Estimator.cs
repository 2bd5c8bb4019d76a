// Cost estimator: per-call seconds by roofline (or a calibration profile), per-device memory, the
// reallocation cost from the interval plan between two layouts (bytes per link) and the data
// transfer between calls. Everything is in seconds and bytes; no hidden unit conversions.
namespace ReaLNative.Planner;

/// <summary>A call's layout choice: mesh, strategy, micro-batches and a flag — activation
/// recomputation for train calls, host offload for calls of non-trainable models.</summary>
public readonly record struct CallOption(Mesh Mesh, Strategy Strategy, int MicroBatches, bool Flag)
{
    public bool SameLayout(CallOption o) => Mesh == o.Mesh && Strategy == o.Strategy;
}

/// <summary>Per-device memory of one call option (uniform over the mesh: stages are balanced).</summary>
public readonly record struct CallMemory(double WeightBytes, double TrainStateBytes, double ActiveBytes);

public sealed class Estimator
{
    public ClusterSpec Cluster { get; }
    public Experiment Experiment { get; }
    public ProfileData? Profile { get; }
    private readonly double _flops, _membw;
    private readonly int _eb;

    public Estimator(ClusterSpec cluster, Experiment exp, ProfileData? profile = null)
    {
        Cluster = cluster; Experiment = exp; Profile = profile;
        _flops = profile?.GemmGflops is { } g ? g * 1e9 : cluster.PeakFlops * cluster.ComputeEfficiency;
        _membw = profile?.MemcpyGbps is { } m ? m * 1e9 : cluster.MemoryBandwidth;
        _eb = cluster.ElementBytes;
    }

    private double Roof(double flops, double bytes) => Math.Max(flops / _flops, bytes / _membw);

    /// <summary>Ring all-reduce of <paramref name="bytes"/> over <paramref name="n"/> ranks.</summary>
    public double AllReduce(double bytes, int n, bool interNode)
    {
        if (n <= 1) return 0;
        double bw = interNode ? Cluster.InterNodeBandwidth : Cluster.IntraNodeBandwidth;
        double lat = interNode ? Cluster.InterNodeLatency : Cluster.IntraNodeLatency;
        return 2.0 * (n - 1) / n * bytes / bw + 2.0 * (n - 1) * lat;
    }

    private double P2P(double bytes, bool interNode) =>
        interNode ? bytes / Cluster.InterNodeBandwidth + Cluster.InterNodeLatency : bytes / Cluster.IntraNodeBandwidth + Cluster.IntraNodeLatency;

    private bool DpInter(CallOption o) => o.Mesh.NodeCount > 1 && o.Strategy.Dp * o.Strategy.Tp > Cluster.DevicesPerNode;
    private bool PpInter(CallOption o) => o.Mesh.NodeCount > 1 && o.Strategy.Dp * o.Strategy.Tp >= Cluster.DevicesPerNode;

    /// <summary>Forward FLOPs per token of one pipeline stage on one tp rank, at average attention context <paramref name="ctx"/>.</summary>
    private static double FwdFlopsPerToken(ModelConfig m, bool scalar, Strategy s, double ctx)
    {
        double head = scalar ? m.Hidden : (double)m.Vocab * m.Hidden;
        return (2.0 * (m.Layers * m.BlockParams + head) + 4.0 * m.Hidden * ctx * m.Layers) / s.Pp / s.Tp;
    }

    /// <summary>Block time on one stage/tp rank for <paramref name="tokens"/> tokens: profile if present, else roofline.</summary>
    private double StageCompute(ModelConfig m, bool scalar, Strategy s, string kind, double tokens, double ctx, double kvBytes)
    {
        double layers = (double)m.Layers / s.Pp;
        double head = scalar ? m.Hidden : (double)m.Vocab * m.Hidden;
        double weightBytes = (m.Layers * m.BlockParams + head) / s.Pp / s.Tp * _eb;
        double mult = kind == "bwd" ? 2 : 1;
        double actBytes = tokens * layers * m.Hidden * 24.0 * _eb / s.Tp * mult; // elementwise traffic
        if (Profile?.BlockSeconds(m, kind, tokens) is { } blk)
            return layers * blk / s.Tp + Roof(2.0 * head * tokens * mult / s.Pp / s.Tp, head / s.Pp / s.Tp * _eb);
        return Roof(FwdFlopsPerToken(m, scalar, s, ctx) * tokens * mult, weightBytes + actBytes + kvBytes)
            + layers * mult * Cluster.KernelOverhead;
    }

    /// <summary>Seconds of one call under an option (excludes reallocation and data transfer).</summary>
    public double CallSeconds(ModelCall c, CallOption o)
    {
        var m = Experiment.Models[c.Role];
        bool scalar = Experiment.HasScalarHead(c.Role);
        var s = o.Strategy;
        int mb = o.MicroBatches;
        double layersPerStage = (double)m.Layers / s.Pp;
        bool ppInter = PpInter(o);
        double PipeTime(double perMb, double actBytesMb, int passes) =>
            (mb + s.Pp - 1) * perMb + (s.Pp > 1 ? passes * (mb + s.Pp - 1) * P2P(actBytesMb, ppInter) : 0);
        double offload = o.Flag && c.Type != CallType.TrainStep ? Memory(c, o).WeightBytes / Cluster.HostBandwidth : 0;

        switch (c.Type)
        {
            case CallType.TrainStep:
            {
                double tokensStep = (double)c.Sequences / c.OptimizerSteps * c.SequenceTokens / s.Dp;
                double tmb = tokensStep / mb, ctx = c.SequenceTokens / 2.0;
                double fwd = StageCompute(m, scalar, s, "fwd", tmb, ctx, 0), bwd = StageCompute(m, scalar, s, "bwd", tmb, ctx, 0);
                double arBytes = tmb * m.Hidden * _eb;
                int ars = o.Flag ? 6 : 4;
                double tpComm = layersPerStage * ars * AllReduce(arBytes, s.Tp, false);
                double perMb = fwd * (o.Flag ? 2 : 1) + bwd + tpComm;
                double pipe = PipeTime(perMb, arBytes, 2);
                double stageParams = (m.Params(scalar)) / s.Pp / s.Tp;
                double gradReduce = AllReduce(stageParams * 4, s.Dp, DpInter(o));
                double stateBytes = Cluster.Precision == Precision.Bf16 ? 12 : 8;
                double optim = stageParams / s.Dp * (2 * stateBytes + 4 + _eb) / _membw;
                return c.OptimizerSteps * (pipe + gradReduce + optim);
            }
            case CallType.Inference:
            {
                double tokens = (double)c.Sequences * c.SequenceTokens / s.Dp, tmb = tokens / mb;
                double fwd = StageCompute(m, scalar, s, "fwd", tmb, c.SequenceTokens / 2.0, 0);
                double arBytes = tmb * m.Hidden * _eb;
                double perMb = fwd + layersPerStage * 2 * AllReduce(arBytes, s.Tp, false);
                return PipeTime(perMb, arBytes, 1) + offload;
            }
            default:
            {
                // prefill of the prompts, then new_tokens - 1 decode steps reading weights and the KV cache.
                double seqs = (double)c.Sequences / s.Dp;
                double pmb = seqs * c.PromptTokens / mb;
                double prefill = PipeTime(StageCompute(m, scalar, s, "fwd", pmb, c.PromptTokens / 2.0, 0)
                    + layersPerStage * 2 * AllReduce(pmb * m.Hidden * _eb, s.Tp, false), pmb * m.Hidden * _eb, 1);
                double bs = seqs / mb, ctx = c.PromptTokens + c.NewTokens / 2.0;
                double kvShard = Math.Max(m.KvHeads / s.Tp, 1) * m.HeadDim;
                double kvBytes = bs * ctx * 2 * kvShard * layersPerStage * _eb;
                double stage = StageCompute(m, scalar, s, "decode", bs, ctx, kvBytes)
                    + layersPerStage * 2 * AllReduce(bs * m.Hidden * _eb, s.Tp, false);
                double hop = s.Pp > 1 ? P2P(bs * m.Hidden * _eb, ppInter) : 0;
                double step = Math.Max(mb, s.Pp) * (stage + hop);
                return prefill + Math.Max(0, c.NewTokens - 1) * step + offload;
            }
        }
    }

    /// <summary>Per-device memory of a call option: weights of the layout, train state (grads +
    /// distributed optimizer) for train calls, and active memory (activations, logits, KV cache).</summary>
    public CallMemory Memory(ModelCall c, CallOption o)
    {
        var m = Experiment.Models[c.Role];
        bool scalar = Experiment.HasScalarHead(c.Role);
        var s = o.Strategy;
        double stageParams = m.Params(scalar) / s.Pp / s.Tp;
        double weights = stageParams * _eb;
        double layers = Math.Ceiling((double)m.Layers / s.Pp);
        double vocabShard = scalar ? 1 : (double)m.Vocab / s.Tp;
        int mb = o.MicroBatches;
        switch (c.Type)
        {
            case CallType.TrainStep:
            {
                double tmb = (double)c.Sequences / c.OptimizerSteps * c.SequenceTokens / s.Dp / mb;
                double inflight = Math.Min(mb, s.Pp);
                double perLayer = tmb * m.Hidden * _eb * 17.0 / s.Tp; // flash attention, packed: no s^2 term
                double acts = o.Flag ? layers * tmb * m.Hidden * _eb * inflight + perLayer : layers * perLayer * inflight;
                double logits = tmb * vocabShard * 4 * 2;
                double state = stageParams * 4 + stageParams / s.Dp * (Cluster.Precision == Precision.Bf16 ? 12 : 8);
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
                double kv = seqs * c.SequenceTokens * 2 * kvShard * layers * _eb;
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
    /// bytes / bandwidth plus latency.</summary>
    public double ReallocSeconds(string role, CallOption src, CallOption dst)
    {
        if (src.SameLayout(dst)) return 0;
        var m = Experiment.Models[role];
        double total = m.Params(Experiment.HasScalarHead(role)) * _eb;
        int dpn = Cluster.DevicesPerNode, nd = Cluster.TotalDevices;
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
                double fs = Overlap((double)sStage / ss.Pp, (double)(sStage + 1) / ss.Pp, (double)j / ds.Pp, (double)(j + 1) / ds.Pp);
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
        double bytes = (double)producer.Sequences * producer.SequenceTokens * producer.OutputBytesPerToken;
        int streams = Math.Min(from.Strategy.Dp, to.Mesh.Size);
        bool sameNode = from.Mesh.NodeCount == 1 && to.Mesh.NodeCount == 1 && from.Mesh.NodeStart == to.Mesh.NodeStart;
        return sameNode ? bytes / streams / Cluster.IntraNodeBandwidth + Cluster.IntraNodeLatency
                        : bytes / streams / Cluster.InterNodeBandwidth + Cluster.InterNodeLatency;
    }
}
