// The communicators of one rank of a model under a (pp, dp, tp) layout: its tensor-parallel group
// (activations all-reduced inside a block), data-parallel group (gradients), model-parallel group
// (pp x tp ranks of one data replica: the global gradient norm) and its pipeline neighbours
// (activations forward, gradients backward). Synchronous wrappers over the async collectives:
// a model shard computes on one thread and blocks on each exchange, the transport's deadline
// bounding every wait.
using ReaLNative.Engine.Layout;
using ReaLNative.Interop;

namespace ReaLNative.Engine.Transport;

/// <summary>
/// One rank's view of a model's parallel layout and the collectives it needs. Transport ranks are
/// the layout's device ids (one worker per device). Every member of a group must call the same
/// exchanges in the same order. <paramref name="groupBase"/> separates the tag spaces of several
/// models sharing one transport (give each model its own base, <see cref="GroupIdsNeeded"/> apart).
/// </summary>
internal sealed unsafe class ShardComm : IDisposable
{
    private readonly ITransport _transport;
    private readonly Collectives? _tp, _dp, _mp;
    private readonly int _pipeGroup;
    private readonly long[,] _sent, _recvd;  // [kind, peer stage]
    private HostBlock? _scratch;

    /// <summary>Communicators of the rank whose device is <paramref name="transport"/>.Rank.</summary>
    public ShardComm(ITransport transport, ParallelLayout layout, int groupBase = 0)
    {
        _transport = transport;
        Layout = layout;
        LayoutRank = -1;
        for (int i = 0; i < layout.Devices.Count; i++)
            if (layout.Devices[i] == transport.Rank) LayoutRank = i;
        if (LayoutRank < 0) throw new ArgumentException($"rank {transport.Rank} is not a device of the layout ({layout})");
        foreach (var d in layout.Devices)
            if ((uint)d >= (uint)transport.Size) throw new ArgumentException($"layout device {d} outside the transport's world of {transport.Size}");
        (Pipe, Data, Model) = layout.Coords(LayoutRank);
        int pp = layout.Pp, dp = layout.Dp, tp = layout.Tp;
        if (groupBase < 0 || groupBase + GroupIdsNeeded(layout) > 4096)
            throw new ArgumentException($"group ids {groupBase}..{groupBase + GroupIdsNeeded(layout)} exceed the 4096 the tag space holds");
        int id = groupBase + 1;
        if (tp > 1)
            _tp = new Collectives(transport, Enumerable.Range(0, tp).Select(m => layout.Device(Pipe, Data, m)).ToArray(), id + Pipe * dp + Data);
        id += pp * dp;
        if (dp > 1)
            _dp = new Collectives(transport, Enumerable.Range(0, dp).Select(d => layout.Device(Pipe, d, Model)).ToArray(), id + Pipe * tp + Model);
        id += pp * tp;
        if (pp * tp > 1)
            _mp = new Collectives(transport, Enumerable.Range(0, pp * tp).Select(i => layout.Device(i / tp, Data, i % tp)).ToArray(), id + Data);
        id += dp;
        _pipeGroup = id + Data * tp + Model;
        _sent = new long[3, pp];
        _recvd = new long[3, pp];
    }

    /// <summary>Collective group ids one layout uses (tp, dp, model-parallel groups and pipelines).</summary>
    public static int GroupIdsNeeded(ParallelLayout l) => 1 + l.Pp * l.Dp + l.Pp * l.Tp + l.Dp + l.Dp * l.Tp;

    /// <summary>The model's layout.</summary>
    public ParallelLayout Layout { get; }
    /// <summary>This rank's index in the layout's device list.</summary>
    public int LayoutRank { get; }
    /// <summary>Pipeline stage of this rank.</summary>
    public int Pipe { get; }
    /// <summary>Data-parallel index of this rank.</summary>
    public int Data { get; }
    /// <summary>Tensor-parallel index of this rank.</summary>
    public int Model { get; }
    public int Pp => Layout.Pp;
    public int Dp => Layout.Dp;
    public int Tp => Layout.Tp;
    public bool FirstStage => Pipe == 0;
    public bool LastStage => Pipe == Layout.Pp - 1;
    /// <summary>The underlying transport (its rank is this rank's device).</summary>
    public ITransport Transport => _transport;

    private float* Scratch(long floats)
    {
        long bytes = Math.Max(64, floats * 4);
        if (_scratch is null || _scratch.Bytes < bytes)
        {
            _scratch?.Dispose();
            _scratch = new HostBlock(Math.Max(bytes, (_scratch?.Bytes ?? 0) * 3 / 2));
        }
        return (float*)_scratch.Pointer;
    }

    private static void Wait(Task t) => t.GetAwaiter().GetResult();

    /// <summary>In-place sum over the tensor-parallel group.</summary>
    public void TpAllReduce(float* x, long n)
    {
        if (_tp is null) return;
        Wait(_tp.AllReduceSumAsync((nint)x, n, (nint)Scratch((n + Tp - 1) / Tp)));
    }

    /// <summary>All-gather over the tensor-parallel group: member i contributes the i-th of Tp equal
    /// chunks of the n floats at x; afterwards every member holds all of them.</summary>
    public void TpAllGather(float* x, long n)
    {
        if (_tp is null) return;
        Wait(_tp.AllGatherAsync((nint)x, n));
    }

    /// <summary>In-place sum over the data-parallel group (gradients).</summary>
    public void DpAllReduce(float* x, long n)
    {
        if (_dp is null) return;
        Wait(_dp.AllReduceSumAsync((nint)x, n, (nint)Scratch((n + Dp - 1) / Dp)));
    }

    /// <summary>Sum of one double over the model-parallel group (pp x tp ranks of this data replica),
    /// added in member order so every member gets the same bits.</summary>
    public double MpSum(double v)
    {
        if (_mp is null) return v;
        double* data = (double*)Scratch(2 * _mp.Count);
        new Span<double>(data, _mp.Count).Clear();
        data[_mp.Index] = v;
        Wait(_mp.AllGatherAsync((nint)data, _mp.Count, elementSize: 8));
        double s = 0;
        for (int i = 0; i < _mp.Count; i++) s += data[i];
        return s;
    }

    /// <summary>A pass over the data-parallel group in data-parallel order: the rank of data index
    /// d > 0 receives the <paramref name="n"/> doubles at <paramref name="data"/> from index d - 1,
    /// every rank runs <paramref name="step"/> on them and hands them to d + 1; the last index ends
    /// with all steps applied in order (running sums over a batch split into contiguous parts).</summary>
    public void DpChain(double* data, int n, Action step)
    {
        if (_dp is null) { step(); return; }
        Wait(_dp.ChainAsync((nint)data, 8L * n, step));
    }

    // Pipeline point-to-point: kind 0 = activations forward, 1 = gradients backward, 2 = generation
    // control (last stage -> others). Sender and receiver count the messages of each kind between
    // them in the same order, so the count is the tag's sequence.
    private long Tag(int kind, long seq) => (long)_pipeGroup << 28 | (seq & 0xFFFFF) << 8 | (uint)kind;

    private int StageDevice(int stage) => Layout.Device(stage, Data, Model);

    /// <summary>Posts a send of <paramref name="bytes"/> to pipeline stage <paramref name="stage"/>;
    /// the buffer must stay valid until the task completes.</summary>
    public Task SendStage(int stage, int kind, void* data, long bytes) =>
        _transport.SendAsync(StageDevice(stage), Tag(kind, _sent[kind, stage]++), (nint)data, bytes);

    /// <summary>Receives <paramref name="bytes"/> from pipeline stage <paramref name="stage"/> (blocking).</summary>
    public void RecvStage(int stage, int kind, void* data, long bytes) =>
        Wait(_transport.RecvAsync(StageDevice(stage), Tag(kind, _recvd[kind, stage]++), (nint)data, bytes));

    /// <summary>Waits for a posted send.</summary>
    public static void Complete(Task send) => Wait(send);

    public void Dispose() => _scratch?.Dispose();
}
