// Runs one rank's shard of a (pp, dp, tp)-parallel model through a model function call: the
// data-parallel split of the batch (contiguous, balanced by tokens), micro-batches, the pipeline
// schedule (1F1B for training: warm-up forwards, then one forward one backward, then the
// remaining backwards, so a stage holds at most pp - stage micro-batches of activations),
// the gradient all-reduce over data-parallel replicas, and generation. Every rank of the layout
// calls the same method with the same global batch; losses see their micro-batch's global
// sequence ids, so a loss normalised over the whole batch gives the single-device gradient.
using ReaLNative.Engine.Generation;
using ReaLNative.Engine.Model;
using ReaLNative.Engine.Transport;
using ReaLNative.Interop;

namespace ReaLNative.Engine.Parallelism;

/// <summary>One micro-batch: the global ids of its sequences (in order) and their packing.</summary>
internal sealed class MicroBatch(int[] ids, PackedBatch packed)
{
    /// <summary>Ids of the sequences in the whole batch of the call.</summary>
    public int[] Ids { get; } = ids;
    /// <summary>The sequences, packed.</summary>
    public PackedBatch Packed { get; } = packed;
}

/// <summary>A loss on the last pipeline stage: reads the micro-batch's output [T, width] (logits
/// or values, full rows on every tensor rank), writes d loss / d output into <paramref name="dOutput"/>
/// ([T, width]) and returns the micro-batch's share of the loss. Normalise by whole-batch counts,
/// so the shares of all micro-batches and replicas add up to the batch's loss.</summary>
internal unsafe delegate double OutputLoss(MicroBatch mb, float* output, float* dOutput);

/// <summary>Receives a micro-batch's output [T, width] on the last pipeline stage (valid during the call).</summary>
internal unsafe delegate void OutputSink(MicroBatch mb, float* output);

/// <summary>A loss over per-token log-probs on the last pipeline stage: logp[p] is the log-prob of
/// token p + 1 of its sequence under row p (the last row of each sequence scores label 0 and must
/// get dLogp 0); writes d loss / d logp and returns the micro-batch's share of the loss.</summary>
internal delegate double TokenLoss(MicroBatch mb, ReadOnlySpan<float> logp, Span<float> dLogp);

/// <summary>Receives a micro-batch's per-token log-probs (as for <see cref="TokenLoss"/>) on the last stage.</summary>
internal delegate void LogProbSink(MicroBatch mb, ReadOnlySpan<float> logp);

/// <summary>Executes calls on one shard; with a model without <see cref="LlamaModel.Comm"/> it is the single-device engine.</summary>
internal sealed unsafe class ShardRunner(LlamaModel shard)
{
    private const int Forward = 0, Backward = 1;
    private readonly ShardComm? _comm = shard.Comm;

    /// <summary>The shard.</summary>
    public LlamaModel Shard => shard;
    private int Stage => _comm?.Pipe ?? 0;
    private int Stages => _comm?.Pp ?? 1;

    /// <summary>Ids of the sequences this rank's data-parallel replica handles.</summary>
    public int[] DataPart(IReadOnlyList<int[]> sequences)
    {
        int dp = _comm?.Dp ?? 1;
        return Split.Contiguous(sequences.Select(s => s.Length).ToArray(), dp)[_comm?.Data ?? 0];
    }

    /// <summary>This replica's micro-batches (at most <paramref name="microBatches"/>; fewer when it has fewer sequences).</summary>
    public MicroBatch[] MicroBatches(IReadOnlyList<int[]> sequences, int microBatches)
    {
        if (microBatches < 1) throw new ArgumentException($"micro_batches must be >= 1 (got {microBatches})");
        var part = DataPart(sequences);
        var groups = Split.Contiguous(part.Select(i => sequences[i].Length).ToArray(), Math.Min(microBatches, part.Length));
        return groups.Select(g =>
        {
            var ids = g.Select(k => part[k]).ToArray();
            return new MicroBatch(ids, PackedBatch.FromSequences(ids.Select(i => sequences[i]).ToArray()));
        }).ToArray();
    }

    /// <summary>
    /// Forward and backward of the whole batch: zeroes the gradients, runs the 1F1B schedule over
    /// this replica's micro-batches with <paramref name="loss"/> on the last stage, then sums the
    /// gradients over data-parallel replicas. Afterwards every shard holds the gradient of the
    /// whole batch's loss for its parameters (take the optimizer step next). Returns the sum of
    /// the loss shares this rank computed (0 off the last stage).
    /// </summary>
    public double TrainStep(IReadOnlyList<int[]> sequences, int microBatches, OutputLoss loss)
    {
        var mbs = MicroBatches(sequences, microBatches);
        int M = mbs.Length, s = Stage, S = Stages, H = shard.Config.Hidden;
        bool first = shard.HasEmbedding, last = shard.HasHead;
        int K = Math.Min(M, S - s);  // activation slots: micro-batches in flight on this stage
        int warmup = Math.Min(S - s - 1, M);
        long maxT = mbs.Max(m => m.Packed.TotalTokens);
        using var inBuf = new HostBlock(Math.Max(64, maxT * H * 4));
        var sends = new Task?[K];
        var dOut = new nint[K];
        double total = 0;
        shard.ZeroGrad();

        void F(int i)
        {
            int slot = i % K;
            var mb = mbs[i];
            float* o = StageForward(mb, slot, ref sends[slot], inBuf, out long bytes);
            if (last)
            {
                float* d = shard.OutputGradientBuffer(slot);
                total += loss(mb, o, d);
                dOut[slot] = (nint)d;
            }
            else sends[slot] = _comm!.SendStage(s + 1, Forward, o, bytes);
        }

        void B(int i)
        {
            int slot = i % K;
            var mb = mbs[i];
            long bytes = (long)mb.Packed.TotalTokens * H * 4;
            Drain(ref sends[slot]);
            float* d;
            if (last) d = (float*)dOut[slot];
            else
            {
                _comm!.RecvStage(s + 1, Backward, inBuf.Pointer, bytes);
                d = (float*)inBuf.Pointer;
            }
            float* dIn = shard.Backward(d, slot);
            if (!first) sends[slot] = _comm!.SendStage(s - 1, Backward, dIn, bytes);
        }

        int nf = 0, nb = 0;
        for (; nf < warmup; nf++) F(nf);
        while (nf < M) { F(nf++); B(nb++); }
        while (nb < M) B(nb++);
        for (int k = 0; k < K; k++) Drain(ref sends[k]);
        _comm?.DpAllReduce(shard.GradientsPointer, shard.ParameterCount);
        return total;
    }

    /// <summary>Forward only (inference) over this replica's micro-batches, pipelined across
    /// stages; <paramref name="sink"/> receives each micro-batch's output on the last stage.</summary>
    public void Infer(IReadOnlyList<int[]> sequences, int microBatches, OutputSink sink)
    {
        var mbs = MicroBatches(sequences, microBatches);
        int s = Stage, H = shard.Config.Hidden;
        bool first = shard.HasEmbedding, last = shard.HasHead;
        long maxT = mbs.Max(m => m.Packed.TotalTokens);
        using var inBuf = new HostBlock(Math.Max(64, maxT * H * 4));
        var sends = new Task?[2];
        for (int i = 0; i < mbs.Length; i++)
        {
            int slot = i % 2;
            var mb = mbs[i];
            float* o = StageForward(mb, slot, ref sends[slot], inBuf, out long bytes);
            if (last) sink(mb, o);
            else sends[slot] = _comm!.SendStage(s + 1, Forward, o, bytes);
        }
        for (int k = 0; k < 2; k++) Drain(ref sends[k]);
    }

    /// <summary>Generation of this replica's share of <paramref name="prompts"/> in
    /// <paramref name="microBatches"/> pipelined micro-batches. Returns (the global ids of the
    /// replica's prompts, their result) on the last stage, null elsewhere.</summary>
    public (int[] Ids, GenerationResult Result)? Generate(IReadOnlyList<int[]> prompts, GenerationOptions opt, int microBatches)
    {
        var part = DataPart(prompts);
        return GeneratePart(part, part.Select(i => prompts[i]).ToArray(), opt, microBatches);
    }

    /// <summary>Generation of this replica's share given as it is: the prompts of its data part
    /// (<see cref="DataPart"/> of the whole batch) and their global ids, which key the random draws
    /// (a worker process receives only its share). Returns (ids, result) on the last stage, null
    /// elsewhere.</summary>
    public (int[] Ids, GenerationResult Result)? GeneratePart(int[] ids, IReadOnlyList<int[]> prompts, GenerationOptions opt, int microBatches)
    {
        var r = Generator.GenerateShard(shard, prompts, ids, opt, microBatches);
        return r is null ? null : (ids, r);
    }

    /// <summary>
    /// <see cref="TrainStep"/> with a loss on per-token log-probs (PPO, SFT, DPO, ...), computed
    /// vocab-parallel: under tensor parallelism no rank materialises whole logits rows.
    /// </summary>
    public double TrainLogProbs(IReadOnlyList<int[]> sequences, int microBatches, float temperature, TokenLoss loss)
    {
        if (shard.ScalarHead) throw new ArgumentException("log-prob losses need a language-model head");
        bool gather = shard.GatherLogits;
        shard.GatherLogits = false;
        try
        {
            return TrainStep(sequences, microBatches, (mb, o, d) =>
            {
                int T = mb.Packed.TotalTokens;
                var labels = NextTokenLabels(mb.Packed);
                float[] logp = new float[T], lse = new float[T], dlogp = new float[T];
                VocabParallel.LogProbs(shard, o, T, labels, temperature, logp, lse);
                double share = loss(mb, logp, dlogp);
                VocabParallel.Backward(shard, o, T, labels, temperature, lse, dlogp, d);
                return share;
            });
        }
        finally { shard.GatherLogits = gather; }
    }

    /// <summary>Per-token log-probs (inference, vocab-parallel) delivered to <paramref name="sink"/> on the last stage.</summary>
    public void InferLogProbs(IReadOnlyList<int[]> sequences, int microBatches, float temperature, LogProbSink sink)
    {
        if (shard.ScalarHead) throw new ArgumentException("log-probs need a language-model head");
        bool gather = shard.GatherLogits;
        shard.GatherLogits = false;
        try
        {
            Infer(sequences, microBatches, (mb, o) =>
            {
                int T = mb.Packed.TotalTokens;
                float[] logp = new float[T], lse = new float[T];
                VocabParallel.LogProbs(shard, o, T, NextTokenLabels(mb.Packed), temperature, logp, lse);
                sink(mb, logp);
            });
        }
        finally { shard.GatherLogits = gather; }
    }

    /// <summary>Row p's label: token p + 1 of its sequence; 0 for each sequence's last row.</summary>
    public static int[] NextTokenLabels(PackedBatch b)
    {
        var labels = new int[b.TotalTokens];
        for (int i = 0; i < b.Count; i++)
            for (int p = 0; p + 1 < b.SeqLens[i]; p++)
                labels[b.CuSeqlens[i] + p] = b.Tokens[b.CuSeqlens[i] + p + 1];
        return labels;
    }

    /// <summary>The forward of one micro-batch on this stage in <paramref name="slot"/>: waits for
    /// the slot's previous send (its buffer is about to be reused), receives the previous stage's
    /// hidden states unless this is the first stage, runs the shard.</summary>
    private float* StageForward(MicroBatch mb, int slot, ref Task? slotSend, HostBlock inBuf, out long bytes)
    {
        Drain(ref slotSend);
        bytes = (long)mb.Packed.TotalTokens * shard.Config.Hidden * 4;
        float* input = null;
        if (!shard.HasEmbedding)
        {
            _comm!.RecvStage(Stage - 1, Forward, inBuf.Pointer, bytes);
            input = (float*)inBuf.Pointer;
        }
        return shard.Forward(mb.Packed, input, slot);
    }

    private static void Drain(ref Task? t)
    {
        if (t is null) return;
        ShardComm.Complete(t);
        t = null;
    }
}
