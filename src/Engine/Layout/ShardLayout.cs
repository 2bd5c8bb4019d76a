namespace ReaLNative.Engine.Layout;

/// <summary>
/// One parameter's piece held by a shard. The global tensor is row-major with
/// <see cref="GlobalShape"/>; the shard holds the slice [<see cref="SliceStart"/>,
/// <see cref="SliceStart"/> + <see cref="SliceLength"/>) along <see cref="SplitDim"/> (-1: the whole
/// tensor, replicated), stored contiguously and row-major over its local shape, starting at element
/// <see cref="Offset"/> of the shard's one flat parameter buffer.
/// </summary>
internal sealed record ShardView(string Name, long[] GlobalShape, int SplitDim, long SliceStart, long SliceLength, long Offset)
{
    /// <summary>The shape this shard stores: the global shape with the split dimension cut to the slice.</summary>
    public long[] LocalShape
    {
        get
        {
            var s = (long[])GlobalShape.Clone();
            if (SplitDim >= 0) s[SplitDim] = SliceLength;
            return s;
        }
    }

    /// <summary>Elements stored by this shard.</summary>
    public long LocalElements
    {
        get
        {
            long n = 1;
            foreach (var d in LocalShape) n *= d;
            return n;
        }
    }

    /// <summary>Checks the view against its own shape; throws naming the parameter.</summary>
    public void Validate()
    {
        if (GlobalShape.Length == 0) throw new ArgumentException($"parameter '{Name}': empty shape");
        foreach (var d in GlobalShape)
            if (d <= 0) throw new ArgumentException($"parameter '{Name}': non-positive dimension in [{string.Join(", ", GlobalShape)}]");
        if (SplitDim < -1 || SplitDim >= GlobalShape.Length)
            throw new ArgumentException($"parameter '{Name}': split dim {SplitDim} outside 0..{GlobalShape.Length - 1}");
        if (SplitDim >= 0 && (SliceStart < 0 || SliceLength <= 0 || SliceStart + SliceLength > GlobalShape[SplitDim]))
            throw new ArgumentException($"parameter '{Name}': slice [{SliceStart}, {SliceStart + SliceLength}) outside dim {SplitDim} of size {GlobalShape[SplitDim]}");
        if (Offset < 0) throw new ArgumentException($"parameter '{Name}': negative offset {Offset}");
    }
}

/// <summary>
/// The parameter layout of one shard (one pipeline stage and one tensor-parallel rank of a model):
/// its views, in buffer order, and the size of its flat buffer in elements.
/// </summary>
internal sealed class ShardLayout
{
    private readonly Dictionary<string, ShardView> _byName;

    public ShardLayout(IReadOnlyList<ShardView> views, long totalElements)
    {
        Views = views;
        TotalElements = totalElements;
        _byName = new Dictionary<string, ShardView>(views.Count, StringComparer.Ordinal);
        foreach (var v in views)
        {
            v.Validate();
            if (v.Offset + v.LocalElements > totalElements)
                throw new ArgumentException($"parameter '{v.Name}': [{v.Offset}, {v.Offset + v.LocalElements}) exceeds the shard buffer of {totalElements} elements");
            if (!_byName.TryAdd(v.Name, v)) throw new ArgumentException($"parameter '{v.Name}' appears twice in one shard");
        }
    }

    public IReadOnlyList<ShardView> Views { get; }
    public long TotalElements { get; }
    public bool TryGet(string name, out ShardView view) => _byName.TryGetValue(name, out view!);
}

/// <summary>Builds the shard layout of (pipeline stage <paramref name="ppRank"/> of <paramref name="pp"/>,
/// tensor rank <paramref name="tpRank"/> of <paramref name="tp"/>) of one model.</summary>
internal delegate ShardLayout ShardLayoutFactory(int pp, int ppRank, int tp, int tpRank);
