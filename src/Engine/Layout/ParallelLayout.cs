namespace ReaLNative.Engine.Layout;

/// <summary>
/// Where and how a model is laid out: the mesh's devices (global device ids, rank order) and its
/// (pp, dp, tp) strategy. Ranks map to coordinates row-major over [pipe, data, model], tensor
/// parallel innermost (DESIGN.md).
/// </summary>
internal sealed record ParallelLayout
{
    public ParallelLayout(IReadOnlyList<int> devices, int pp, int dp, int tp)
    {
        if (pp < 1 || dp < 1 || tp < 1) throw new ArgumentException($"strategy pp={pp} dp={dp} tp={tp}: every degree must be >= 1");
        if (devices.Count != pp * dp * tp)
            throw new ArgumentException($"strategy pp={pp} dp={dp} tp={tp} needs {pp * dp * tp} devices, the mesh has {devices.Count}");
        if (devices.Distinct().Count() != devices.Count) throw new ArgumentException("a mesh lists the same device twice");
        Devices = devices;
        Pp = pp;
        Dp = dp;
        Tp = tp;
    }

    public IReadOnlyList<int> Devices { get; }
    public int Pp { get; }
    public int Dp { get; }
    public int Tp { get; }

    public (int Pipe, int Data, int Model) Coords(int rank) => (rank / (Dp * Tp), rank / Tp % Dp, rank % Tp);
    public int Rank(int pipe, int data, int model) => (pipe * Dp + data) * Tp + model;
    public int Device(int pipe, int data, int model) => Devices[Rank(pipe, data, model)];

    /// <summary>A contiguous range of devices [start, start + count).</summary>
    public static ParallelLayout Contiguous(int start, int pp, int dp, int tp) =>
        new(Enumerable.Range(start, pp * dp * tp).ToArray(), pp, dp, tp);

    /// <summary>Devices and degrees as one string: a key for tables of plans between layouts (the record's own equality
    /// compares <see cref="Devices"/> by reference).</summary>
    public string Key => $"{string.Join(',', Devices)}|{Pp}|{Dp}|{Tp}";

    public override string ToString() =>
        $"devices {Devices[0]}..{Devices[^1]} pp{Pp} dp{Dp} tp{Tp}";
}
