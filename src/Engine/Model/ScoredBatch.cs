// A packed batch with its action tokens marked: what every model call that scores tokens (log-probs,
// values, rewards) takes and returns. It sits beside PackedBatch so that the replicas (Parallelism,
// Workers) and the algorithms share it without depending on each other.
namespace ReaLNative.Engine.Model;

/// <summary>Packed sequences plus the packed indices of their action (scored) tokens.</summary>
internal sealed class ScoredBatch
{
    public ScoredBatch(IReadOnlyList<int[]> sequences, IReadOnlyList<int> promptLengths)
        : this(PackedBatch.FromSequences(sequences), promptLengths) { }

    /// <summary>Sequences of <paramref name="seqLens"/> tokens whose ids <paramref name="tokens"/>
    /// reads on first use (PackedBatch's lazy form): the actions need only the lengths.</summary>
    public ScoredBatch(int[] seqLens, IReadOnlyList<int> promptLengths, Func<int[]> tokens)
        : this(new PackedBatch(seqLens, tokens), promptLengths) { }

    private ScoredBatch(PackedBatch packed, IReadOnlyList<int> promptLengths)
    {
        Packed = packed;
        int n = packed.Count;
        if (promptLengths.Count != n) throw new ArgumentException($"{promptLengths.Count} prompt lengths for {n} sequences");
        var idx = new List<int>();
        var cu = new int[n + 1];
        for (int i = 0; i < n; i++)
        {
            int len = packed.SeqLens[i];
            if (promptLengths[i] < 1 || promptLengths[i] > len)
                throw new ArgumentException($"sequence {i}: prompt length {promptLengths[i]} outside 1..{len}");
            for (int p = promptLengths[i]; p < len; p++) idx.Add(Packed.CuSeqlens[i] + p);
            cu[i + 1] = idx.Count;
        }
        ActionIndex = idx.ToArray();
        ActionCu = cu;
    }

    public PackedBatch Packed { get; }
    /// <summary>Packed index of each action token, sequence by sequence.</summary>
    public int[] ActionIndex { get; }
    /// <summary>Offsets of each sequence's actions in <see cref="ActionIndex"/> (the GAE cu_seqlens).</summary>
    public int[] ActionCu { get; }
    public int Actions => ActionIndex.Length;

    /// <summary>Where worker processes already hold these sequences (the generation that produced
    /// them); null when only this process has them.</summary>
    public BatchSource? Source { get; init; }
}

/// <summary>Sequences that model workers hold: batch <paramref name="Key"/> of <paramref name="Owner"/>
/// (the worker pool), store id of each sequence in order (Workers/ResidentBatches.cs).</summary>
internal sealed record BatchSource(object Owner, string Key, int[] Ids)
{
    /// <summary>Per sequence, null or the tokens that replace the held sequence's answer: sequence k
    /// is then the prompt of held sequence Ids[k] followed by Tails[k] (a reward model's chosen
    /// reference answer to a sampled prompt). Null: every sequence is the held one.</summary>
    public int[]?[]? Tails { get; init; }

    /// <summary>Whether a sequence of this batch is not exactly one held sequence (a tail) or one is
    /// listed twice: the workers must not keep per-sequence outputs of it by store id.</summary>
    public bool Composite => (Tails is { } t && t.Any(x => x is not null)) || Ids.Distinct().Count() != Ids.Length;

    /// <summary>Sequences [s0, s1) of this source.</summary>
    public BatchSource Slice(int s0, int s1) => this with { Ids = Ids[s0..s1], Tails = Tails?[s0..s1] };

    /// <summary>Records <paramref name="flat"/> (the generation's per-action log-probs of these
    /// sequences, in their order) as the copy of the log-probs the generating workers keep beside the
    /// sequences, so that a later call can have them read there instead of sending it; nothing when
    /// the owner keeps none.</summary>
    public void AttachGenerationLogProbs(float[] flat) => (Owner as IResidentOutputs)?.AttachGenerationLogProbs(flat, this);
}

/// <summary>An owner of <see cref="BatchSource"/>s that also keeps per-action outputs on the workers
/// (Workers/ResidentBatches.cs).</summary>
internal interface IResidentOutputs
{
    void AttachGenerationLogProbs(float[] flat, BatchSource source);
}
