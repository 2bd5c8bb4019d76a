namespace ReaLNative.Engine.Model;

/// <summary>
/// Sequences packed back to back: one token array and the sequence lengths; no padding. Derived:
/// cumulative offsets (cu_seqlens) and each token's position within its sequence.
/// </summary>
internal sealed class PackedBatch
{
    /// <summary>Packs tokens with per-sequence lengths (each &gt;= 1, summing to the token count).</summary>
    public PackedBatch(int[] tokens, int[] seqLens) : this(seqLens, tokens, null) { }

    /// <summary>Sequences of <paramref name="seqLens"/> whose token ids are read by
    /// <paramref name="tokens"/> on first use of <see cref="Tokens"/> (the ids the workers keep, fetched
    /// from them: ActionFloats.cs's KeptInts); everything else here needs only the lengths.</summary>
    public PackedBatch(int[] seqLens, Func<int[]> tokens) : this(seqLens, null, tokens) { }

    private PackedBatch(int[] seqLens, int[]? tokens, Func<int[]>? fetch)
    {
        long sum = 0;
        foreach (var l in seqLens)
        {
            if (l <= 0) throw new ArgumentException($"packed batch: sequence lengths must be >= 1 (got {l})");
            sum += l;
        }
        if (tokens is not null && sum != tokens.Length)
            throw new ArgumentException($"packed batch: lengths sum to {sum} but there are {tokens.Length} tokens");
        _tokens = tokens;
        _fetch = fetch;
        SeqLens = seqLens;
        CuSeqlens = new int[seqLens.Length + 1];
        Positions = new int[sum];
        for (int i = 0; i < seqLens.Length; i++)
        {
            CuSeqlens[i + 1] = CuSeqlens[i] + seqLens[i];
            for (int p = 0; p < seqLens[i]; p++) Positions[CuSeqlens[i] + p] = p;
        }
    }

    private int[]? _tokens;
    private Func<int[]>? _fetch;
    private readonly Lock _gate = new();

    /// <summary>All token ids, sequences back to back (fetched on first read when they were left with the workers).</summary>
    public int[] Tokens
    {
        get
        {
            if (Volatile.Read(ref _tokens) is { } t) return t;
            lock (_gate)
            {
                if (_tokens is not null) return _tokens;
                var v = _fetch!();
                if (v.Length != CuSeqlens[^1]) throw new InvalidDataException($"packed batch: fetched {v.Length} token ids for {CuSeqlens[^1]} tokens");
                _fetch = null;
                return _tokens = v;
            }
        }
    }

    /// <summary>Whether the token ids are in this process (given, or fetched).</summary>
    public bool HasTokens => Volatile.Read(ref _tokens) is not null;
    /// <summary>Length of each sequence.</summary>
    public int[] SeqLens { get; }
    /// <summary>Cumulative offsets [Count + 1], starting at 0.</summary>
    public int[] CuSeqlens { get; }
    /// <summary>Each token's position within its sequence.</summary>
    public int[] Positions { get; }
    /// <summary>Tokens in the batch (T).</summary>
    public int TotalTokens => CuSeqlens[^1];
    /// <summary>Sequences in the batch.</summary>
    public int Count => SeqLens.Length;

    /// <summary>The tokens of sequence i.</summary>
    public ReadOnlySpan<int> Sequence(int i) => Tokens.AsSpan(CuSeqlens[i], SeqLens[i]);

    /// <summary>Packs a list of sequences.</summary>
    public static PackedBatch FromSequences(IReadOnlyList<int[]> seqs)
    {
        var lens = seqs.Select(s => s.Length).ToArray();
        var toks = new int[lens.Sum()];
        int o = 0;
        foreach (var s in seqs) { s.CopyTo(toks, o); o += s.Length; }
        return new PackedBatch(toks, lens);
    }
}
