namespace ReaLNative.Engine.Model;

/// <summary>
/// Sequences packed back to back: one token array and the sequence lengths; no padding. Derived:
/// cumulative offsets (cu_seqlens) and each token's position within its sequence.
/// </summary>
internal sealed class PackedBatch
{
    /// <summary>Packs tokens with per-sequence lengths (each &gt;= 1, summing to the token count).</summary>
    public PackedBatch(int[] tokens, int[] seqLens)
    {
        long sum = 0;
        foreach (var l in seqLens)
        {
            if (l <= 0) throw new ArgumentException($"packed batch: sequence lengths must be >= 1 (got {l})");
            sum += l;
        }
        if (sum != tokens.Length)
            throw new ArgumentException($"packed batch: lengths sum to {sum} but there are {tokens.Length} tokens");
        Tokens = tokens;
        SeqLens = seqLens;
        CuSeqlens = new int[seqLens.Length + 1];
        Positions = new int[tokens.Length];
        for (int i = 0; i < seqLens.Length; i++)
        {
            CuSeqlens[i + 1] = CuSeqlens[i] + seqLens[i];
            for (int p = 0; p < seqLens[i]; p++) Positions[CuSeqlens[i] + p] = p;
        }
    }

    /// <summary>All token ids, sequences back to back.</summary>
    public int[] Tokens { get; }
    /// <summary>Length of each sequence.</summary>
    public int[] SeqLens { get; }
    /// <summary>Cumulative offsets [Count + 1], starting at 0.</summary>
    public int[] CuSeqlens { get; }
    /// <summary>Each token's position within its sequence.</summary>
    public int[] Positions { get; }
    /// <summary>Tokens in the batch (T).</summary>
    public int TotalTokens => Tokens.Length;
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
