// One device's part of a model replica under a (pp, dp, tp) layout: its shard, runner and (for a
// trainable replica) AdamW, and the whole-batch operations of a model function call as that rank
// executes them. Every rank of the layout runs the same operation on the same global batch; the
// collecting ranks (last pipeline stage, tensor rank 0 of each data replica) return their
// replica's outputs as a ShardOutput, the others null. The in-process DistributedModel runs these
// on threads; a model worker process runs them for the master (Workers/ModelWorker).
using ReaLNative.Engine.Checkpoints;
using ReaLNative.Engine.Generation;
using ReaLNative.Engine.Layout;
using ReaLNative.Engine.Model;
using ReaLNative.Engine.Optim;
using ReaLNative.Engine.Transport;

namespace ReaLNative.Engine.Parallelism;

/// <summary>A collecting rank's outputs for the sequences of its data replica: their global ids (in
/// the order it processed them), per id its action values concatenated (log-probs or values of
/// the action tokens), and per id one scalar (the last token's value; empty when not asked).</summary>
internal sealed record ShardOutput(int[] Ids, float[] Actions, float[] Last)
{
    /// <summary>Per-action outputs of the whole batch, assembled from the collecting ranks' parts;
    /// every action must be covered exactly once.</summary>
    public static float[] MergeActions(ScoredBatch b, IEnumerable<ShardOutput> parts)
    {
        var result = new float[b.Actions];
        var seen = new bool[b.Packed.Count];
        foreach (var p in parts)
        {
            int at = 0;
            foreach (int i in p.Ids)
            {
                if ((uint)i >= (uint)seen.Length || seen[i]) throw new InvalidDataException($"shard outputs: sequence {i} out of range or reported twice");
                seen[i] = true;
                int n = b.ActionCu[i + 1] - b.ActionCu[i];
                if (at + n > p.Actions.Length) throw new InvalidDataException($"shard outputs: {p.Actions.Length} action values, sequence {i} needs more");
                Array.Copy(p.Actions, at, result, b.ActionCu[i], n);
                at += n;
            }
            if (at != p.Actions.Length) throw new InvalidDataException($"shard outputs: {p.Actions.Length} action values for {at} actions");
        }
        if (Array.IndexOf(seen, false) is var miss and >= 0) throw new InvalidDataException($"shard outputs: no collecting rank reported sequence {miss}");
        return result;
    }

    /// <summary>Per-sequence scalars of the whole batch from the parts.</summary>
    public static float[] MergeLast(int count, IEnumerable<ShardOutput> parts)
    {
        var result = new float[count];
        foreach (var p in parts)
        {
            if (p.Last.Length != p.Ids.Length) throw new InvalidDataException($"shard outputs: {p.Last.Length} last-token values for {p.Ids.Length} sequences");
            for (int j = 0; j < p.Ids.Length; j++) result[p.Ids[j]] = p.Last[j];
        }
        return result;
    }
}

/// <summary>One rank of a replica: shard, runner, optimizer, and the call operations.</summary>
internal sealed unsafe class ShardReplica : IDisposable
{
    /// <summary>The shard of layout rank <paramref name="rank"/> over <paramref name="transport"/>
    /// (tag space from <paramref name="groupBase"/>); with <paramref name="optimizer"/> trainable.
    /// <paramref name="precision"/> bf16: a trainable shard keeps its fp32 master (the optimizer's)
    /// and runs on a bf16 copy; an inference shard holds bf16 weights only. <paramref name="sharedParameters"/>:
    /// parameters and moments in shared host memory (<see cref="LlamaModel.ParameterMemory"/>).</summary>
    public ShardReplica(ITransport transport, LlamaConfig config, bool scalarHead, ParallelLayout layout, int rank, int groupBase,
                        int microBatches, Func<LlamaModel, AdamW>? optimizer, ModelPrecision precision = ModelPrecision.Fp32,
                        bool sharedParameters = false)
    {
        if (microBatches < 1) throw new ArgumentException($"micro_batches must be >= 1 (got {microBatches})");
        Layout = layout;
        MicroBatches = microBatches;
        Comm = new ShardComm(transport, layout, groupBase);
        if (Comm.LayoutRank != rank) { Comm.Dispose(); throw new ArgumentException($"transport rank {transport.Rank} is layout rank {Comm.LayoutRank}, not {rank}"); }
        try
        {
            Shard = new LlamaModel(config, scalarHead, Comm, sharedParameters: sharedParameters);
            Runner = new ShardRunner(Shard);
            Optimizer = optimizer?.Invoke(Shard);
            if (precision == ModelPrecision.Bf16)
            {
                if (Optimizer is null) Shard.FreezeToBf16();
                else Shard.SetPrecision(ModelPrecision.Bf16);
            }
        }
        catch
        {
            Optimizer?.Dispose();
            Shard?.Dispose();
            Comm.Dispose();
            throw;
        }
    }

    public ParallelLayout Layout { get; }
    public int MicroBatches { get; }
    public ShardComm Comm { get; }
    public LlamaModel Shard { get; }
    public ShardRunner Runner { get; }
    public AdamW? Optimizer { get; }

    /// <summary>Whether this rank returns its data replica's outputs.</summary>
    public bool Collects => Comm.LastStage && Comm.Model == 0;

    /// <summary>Whether this rank computes the loss of a training call (the last pipeline stage's
    /// ranks): the only ones that read the per-token gradients of <see cref="BackwardLogProbs"/> and
    /// <see cref="BackwardValues"/>.</summary>
    public bool ComputesLoss => Comm.LastStage;

    /// <summary>Log-probs of the action tokens of this replica's sequences (collecting ranks).</summary>
    public ShardOutput? LogProbs(ScoredBatch batch, float temperature)
    {
        var (ids, acts) = (new List<int>(), new List<float>());
        Runner.InferLogProbs(Sequences(batch), MicroBatches, temperature, (mb, lp) =>
        {
            if (!Collects) return;
            ids.AddRange(mb.Ids);
            foreach (var (_, row) in ActionRows(batch, mb)) acts.Add(lp[row]);
        });
        return Collects ? new ShardOutput([.. ids], [.. acts], []) : null;
    }

    /// <summary>Scalar-head outputs: the value before each action and each sequence's last-token score.</summary>
    public ShardOutput? Values(ScoredBatch batch)
    {
        if (!Shard.ScalarHead) throw new ArgumentException("values need a scalar-head model");
        var (ids, acts, last) = (new List<int>(), new List<float>(), new List<float>());
        Runner.Infer(Sequences(batch), MicroBatches, (mb, o) =>
        {
            if (!Collects) return;
            ids.AddRange(mb.Ids);
            foreach (var (_, row) in ActionRows(batch, mb)) acts.Add(o[row]);
            for (int j = 0, at = 0; j < mb.Ids.Length; at += mb.Packed.SeqLens[j], j++) last.Add(o[at + mb.Packed.SeqLens[j] - 1]);
        });
        return Collects ? new ShardOutput([.. ids], [.. acts], [.. last]) : null;
    }

    /// <summary>Gradients of sum_k dActionLogp[k] * logp(action k), zeroed first. Only the last
    /// pipeline stage computes the loss and reads <paramref name="dActionLogp"/>: the other stages'
    /// ranks may pass null (a worker process is sent the gradients only there).</summary>
    public void BackwardLogProbs(ScoredBatch batch, float temperature, float[]? dActionLogp)
    {
        if (dActionLogp is null && ComputesLoss) throw new ArgumentException($"the last pipeline stage needs the {batch.Actions} log-prob gradients");
        if (dActionLogp is not null && dActionLogp.Length != batch.Actions) throw new ArgumentException($"{dActionLogp.Length} log-prob gradients for {batch.Actions} actions");
        Runner.TrainLogProbs(Sequences(batch), MicroBatches, temperature, (mb, lp, d) =>
        {
            foreach (var (k, row) in ActionRows(batch, mb)) d[row] = dActionLogp![k];
            return 0;
        });
    }

    /// <summary>Gradients from d loss / d action values and d loss / d last scores (either may be empty), zeroed first.
    /// Only the last pipeline stage reads them: the other stages' ranks may pass empty arrays.</summary>
    public void BackwardValues(ScoredBatch batch, float[] dActionValues, float[] dLastScores)
    {
        if (dActionValues.Length is var a && a != 0 && a != batch.Actions) throw new ArgumentException($"{a} value gradients for {batch.Actions} actions");
        if (dLastScores.Length is var l && l != 0 && l != batch.Packed.Count) throw new ArgumentException($"{l} score gradients for {batch.Packed.Count} sequences");
        Runner.TrainStep(Sequences(batch), MicroBatches, (mb, o, d) =>
        {
            new Span<float>(d, mb.Packed.TotalTokens).Clear();
            if (dActionValues.Length > 0)
                foreach (var (k, row) in ActionRows(batch, mb)) d[row] += dActionValues[k];
            if (dLastScores.Length > 0)
                for (int j = 0, at = 0; j < mb.Ids.Length; at += mb.Packed.SeqLens[j], j++) d[at + mb.Packed.SeqLens[j] - 1] += dLastScores[mb.Ids[j]];
            return 0;
        });
    }

    /// <summary>SFT (mean NLL of the action tokens) backward, zeroed first; returns this rank's
    /// share of the loss (0 on ranks that do not collect), so the shares of all ranks add up.</summary>
    public double SftShare(ScoredBatch batch)
    {
        double n = Math.Max(1, batch.Actions);
        return Runner.TrainLogProbs(Sequences(batch), MicroBatches, 1f, (mb, lp, d) =>
        {
            double loss = 0;
            foreach (var (_, row) in ActionRows(batch, mb)) { loss -= lp[row] / n; d[row] = (float)(-1 / n); }
            return Collects ? loss : 0;
        });
    }

    /// <summary>
    /// One optimizer step of the clipped policy loss on minibatch <paramref name="batch"/>, sequences
    /// [s0, s0 + count) of a train call's rollout (its actions from <paramref name="a0"/>), with the
    /// loss computed here: every rank of the last pipeline stage takes its micro-batches' log-probs
    /// from the training forward, computes the loss's per-token gradient from
    /// <paramref name="inputs"/> (read at the rollout's indices of its data-parallel part only) and
    /// the minibatch's counts <paramref name="tokens"/> / <paramref name="seqs"/>
    /// (ShardLosses.ClippedPolicyCounts), then backward, the gradient all-reduce and the AdamW step
    /// run as for <see cref="BackwardLogProbs"/> and <see cref="Step"/>. The collecting ranks then
    /// hand the loss's running sums on in data-parallel order, so the last one (data index dp - 1)
    /// returns the figures of the whole minibatch with the bits of Losses.ClippedPolicy on it; other
    /// ranks return null figures. <paramref name="ratioBaseFromForward"/>: this minibatch's ratio
    /// base is the forward's own log-probs (the proximal policy of an off-policy batch, first epoch),
    /// written into inputs.RatioBase where <paramref name="writeRatioBase"/> for the later epochs.
    /// </summary>
    public (double GradNorm, ClippedPolicyStats? Stats) PolicyStep(ScoredBatch batch, int s0, int a0, float temperature, PolicyLossInputs inputs,
                                                                   int tokens, int seqs, bool ratioBaseFromForward, bool writeRatioBase)
    {
        var (first, end) = LossPart(batch);
        int p0 = batch.ActionCu[first], pn = batch.ActionCu[end] - p0;
        // The part's log-probs from the training forward, kept for the loss's figures.
        var partLogp = ComputesLoss ? new float[pn] : [];
        var o = inputs.Options;
        Runner.TrainLogProbs(Sequences(batch), MicroBatches, temperature, (mb, lp, d) =>
        {
            int f = mb.Ids[0], e = mb.Ids[^1] + 1, k0 = batch.ActionCu[f], len = batch.ActionCu[e] - k0;
            var lpA = partLogp.AsSpan(k0 - p0, len);
            var rows = ActionRows(batch, mb);
            foreach (var (k, row) in rows) lpA[k - k0] = lp[row];
            if (ratioBaseFromForward && writeRatioBase) lpA.CopyTo(inputs.RatioBase.AsSpan(a0 + k0, len));
            var dA = new float[len];
            var sums = new ClippedPolicySums();
            ShardLosses.ClippedPolicyTerms(lpA, ratioBaseFromForward ? lpA : inputs.RatioBase.AsSpan(a0 + k0, len), inputs.Advantages.AsSpan(a0 + k0, len),
                                           Slice(inputs.Ref, a0 + k0, len), LocalCu(batch, f, e), inputs.Keep.AsSpan(s0 + f, e - f), o, tokens, seqs, dA,
                                           Slice(inputs.Behaviour, a0 + k0, len), ref sums);
            foreach (var (k, row) in rows) d[row] = dA[k - k0];
            return 0;
        });
        double norm = Step();
        if (!Collects) return (norm, null);
        var chained = new double[ClippedPolicySums.Count];
        fixed (double* c = chained)
        {
            double* at = c;
            Comm.DpChain(c, ClippedPolicySums.Count, () =>
            {
                var sums = new ClippedPolicySums { Surrogate = at[0], Kl = at[1], K3 = at[2], Clipped = at[3] };
                ShardLosses.ClippedPolicyTerms(partLogp, inputs.RatioBase.AsSpan(a0 + p0, pn), inputs.Advantages.AsSpan(a0 + p0, pn), Slice(inputs.Ref, a0 + p0, pn),
                                               LocalCu(batch, first, end), inputs.Keep.AsSpan(s0 + first, end - first), o, tokens, seqs, new float[pn],
                                               Slice(inputs.Behaviour, a0 + p0, pn), ref sums);
                at[0] = sums.Surrogate; at[1] = sums.Kl; at[2] = sums.K3; at[3] = sums.Clipped;
            });
        }
        if (Comm.Data != Layout.Dp - 1) return (norm, null);
        var total = new ClippedPolicySums { Surrogate = chained[0], Kl = chained[1], K3 = chained[2], Clipped = chained[3] };
        return (norm, ShardLosses.ClippedPolicyResult(total, tokens, seqs));
    }

    /// <summary>
    /// One optimizer step of PPO's clipped value loss on minibatch <paramref name="batch"/> (its
    /// actions from <paramref name="a0"/> of the rollout), computed here as <see cref="PolicyStep"/>
    /// computes the policy loss: the last stage's ranks take the values from the training forward
    /// and the gradient from <paramref name="inputs"/> (their data-parallel part), backward and
    /// AdamW step follow, and the collecting rank of data index dp - 1 returns the whole minibatch's
    /// figures (the bits of Losses.ClippedValue on it); other ranks return null figures.
    /// </summary>
    public (double GradNorm, ValueLossStats? Stats) ValueStep(ScoredBatch batch, int a0, ValueLossInputs inputs)
    {
        if (!Shard.ScalarHead) throw new ArgumentException("values need a scalar-head model");
        var (first, end) = LossPart(batch);
        int p0 = batch.ActionCu[first], pn = batch.ActionCu[end] - p0, n = batch.Actions;
        var partValues = ComputesLoss ? new float[pn] : [];
        Runner.TrainStep(Sequences(batch), MicroBatches, (mb, output, d) =>
        {
            int f = mb.Ids[0], e = mb.Ids[^1] + 1, k0 = batch.ActionCu[f], len = batch.ActionCu[e] - k0;
            var vA = partValues.AsSpan(k0 - p0, len);
            var rows = ActionRows(batch, mb);
            foreach (var (k, row) in rows) vA[k - k0] = output[row];
            var dA = new float[len];
            var sums = new ClippedValueSums();
            ShardLosses.ClippedValueTerms(vA, inputs.OldValues.AsSpan(a0 + k0, len), inputs.Returns.AsSpan(a0 + k0, len), [], inputs.ClipEps, n, dA, ref sums);
            new Span<float>(d, mb.Packed.TotalTokens).Clear();
            foreach (var (k, row) in rows) d[row] += dA[k - k0];
            return 0;
        });
        double norm = Step();
        if (!Collects) return (norm, null);
        var chained = new double[ClippedValueSums.Count];
        fixed (double* c = chained)
        {
            double* at = c;
            Comm.DpChain(c, ClippedValueSums.Count, () =>
            {
                var sums = new ClippedValueSums { Loss = at[0], Clipped = at[1] };
                ShardLosses.ClippedValueTerms(partValues, inputs.OldValues.AsSpan(a0 + p0, pn), inputs.Returns.AsSpan(a0 + p0, pn), [], inputs.ClipEps, n,
                                              new float[pn], ref sums);
                at[0] = sums.Loss; at[1] = sums.Clipped;
            });
        }
        if (Comm.Data != Layout.Dp - 1) return (norm, null);
        return (norm, ShardLosses.ClippedValueResult(new ClippedValueSums { Loss = chained[0], Clipped = chained[1] }, n));
    }

    /// <summary>Sequences [first, end) of <paramref name="batch"/>: this rank's data-parallel part, whose loss inputs it reads.</summary>
    public (int First, int End) LossPart(ScoredBatch batch)
    {
        var part = Runner.DataPart(Sequences(batch));
        return part.Length == 0 ? (0, 0) : (part[0], part[^1] + 1);
    }

    private static ReadOnlySpan<float> Slice(float[] perAction, int at, int count) => perAction.Length == 0 ? default : perAction.AsSpan(at, count);

    /// <summary>Action offsets of sequences [first, end) of <paramref name="b"/>, from 0.</summary>
    private static int[] LocalCu(ScoredBatch b, int first, int end)
    {
        var cu = new int[end - first + 1];
        for (int j = 0; j <= end - first; j++) cu[j] = b.ActionCu[first + j] - b.ActionCu[first];
        return cu;
    }

    /// <summary>One AdamW step (every rank of a trainable replica); returns the global gradient norm before clipping.</summary>
    public double Step() => (Optimizer ?? throw new InvalidOperationException("an inference replica has no optimizer")).StepOnce();

    /// <summary>This replica's share of the prompts generated; (ids, result) on collecting ranks.</summary>
    public (int[] Ids, GenerationResult Result)? Generate(IReadOnlyList<int[]> prompts, GenerationOptions opt)
    {
        var r = Runner.Generate(prompts, opt, MicroBatches);
        return Collects ? r : null;
    }

    /// <summary>This replica's share of a generation given as it is (its prompts and their ids in
    /// the whole batch: what a worker process receives); (ids, result) on collecting ranks.</summary>
    public (int[] Ids, GenerationResult Result)? GeneratePart(int[] ids, IReadOnlyList<int[]> prompts, GenerationOptions opt)
    {
        var r = Runner.GeneratePart(ids, prompts, opt, MicroBatches);
        return Collects ? r : null;
    }

    /// <summary>Whole-batch generation result assembled from the collecting ranks' parts.</summary>
    public static GenerationResult MergeGeneration(IReadOnlyList<int[]> prompts, GenerationOptions opt, IEnumerable<(int[] Ids, GenerationResult Result)> parts,
                                                   BatchSource? source = null)
    {
        int B = prompts.Count;
        var tok = new int[B][]; var lp = new float[B][]; var eos = new bool[B];
        byte[][]? masks = opt.Filters ? new byte[B][] : null;
        foreach (var p in parts)
            for (int k = 0; k < p.Ids.Length; k++)
            {
                int i = p.Ids[k];
                if ((uint)i >= (uint)B || tok[i] is not null) throw new InvalidDataException($"generation outputs: prompt {i} out of range or reported twice");
                tok[i] = p.Result.NewTokens[k]; lp[i] = p.Result.LogProbs[k]; eos[i] = p.Result.EndedWithEos[k];
                if (masks is not null) masks[i] = p.Result.Masks![k];
            }
        if (Array.FindIndex(tok, t => t is null) is var miss and >= 0) throw new InvalidDataException($"generation outputs: no collecting rank reported prompt {miss}");
        return new GenerationResult { Prompts = prompts.Select(x => x.ToArray()).ToArray(), NewTokens = tok, LogProbs = lp, Masks = masks, EndedWithEos = eos, Source = source };
    }

    // ------------------------------------------------------------------ life cycle without a full model

    /// <summary>Initialises this rank's shard itself, as a single device initialises the whole model:
    /// every tensor from its own seeded stream (<see cref="LlamaModel.InitRandom"/>), then, with
    /// <paramref name="checkpoint"/>, its slices of that HF checkpoint by byte range (only the tensors
    /// the checkpoint shares with the model when <paramref name="sharedOnly"/>); a shard that holds bf16
    /// only is initialised on an fp32 twin and then frozen, as the single device freezes. Bit-identical
    /// to slicing the single device's model.</summary>
    public void Initialise(int seed, float std, string? checkpoint, bool sharedOnly, bool allowNonFinite)
    {
        Shard.ReacquireWeights();   // filled here whole
        if (!Shard.HoldsBf16Only) { Fill(Shard); return; }
        using var twin = new LlamaModel(Shard.Config, Shard.ScalarHead, Comm);
        Fill(twin);
        twin.FreezeToBf16();
        Shard.LoadFrozen(twin);

        void Fill(LlamaModel m)
        {
            // A checkpoint that fills every tensor makes the seeded values irrelevant: not drawn.
            if (checkpoint is null || sharedOnly) m.InitRandom(seed, std);
            if (checkpoint is not null)
                Checkpoints.Safetensors.LoadShard(checkpoint, m.Layout, m.ParametersPointer, allowNonFinite, sharedOnly);
        }
    }

    /// <summary>Writes this rank's pieces of checkpoint part <paramref name="part"/> (the tensors
    /// <see cref="ShardedSave.Mine"/> gives it: its slices, of its data replica's share) straight
    /// from its buffer into the files <paramref name="targets"/> names, which exist at their full
    /// size (<see cref="ShardedSave.Prepare"/>): the weights (bf16 for a bf16 model, else the fp32
    /// master), the fp32 master or an AdamW moment; fsynced. No copy of the shard is made.</summary>
    public void SaveState(CheckpointPart part, SaveTargets targets)
    {
        bool bf16 = part == CheckpointPart.Weights && Shard.Precision == ModelPrecision.Bf16;
        int es = bf16 ? 2 : 4;
        if (targets.ElementBytes != es)
            throw new ArgumentException($"save of {part}: the files hold {targets.ElementBytes}-byte elements, this shard's buffer {es}-byte ones");
        var mine = ShardedSave.Mine(Shard.Layout, Layout, Comm.Data, Comm.Model, Shard.Config, Shard.ScalarHead);
        if (mine.Count == 0) return;
        byte* data = part == CheckpointPart.Weights ? (bf16 ? (byte*)Shard.Bf16ParametersPointer : (byte*)Shard.ParametersPointer) : (byte*)StatePointer(part);
        Checkpoints.Safetensors.WriteSlices(Shard.Layout, data, es, targets.At, mine);
    }

    /// <summary>Reads <paramref name="part"/> of this rank's shard from a checkpoint by byte range
    /// (<paramref name="path"/>: the role's HF folder for the weights, else the flat file).</summary>
    public void LoadState(CheckpointPart part, string path, bool allowNonFinite)
    {
        if (Shard.HoldsBf16Only) throw new InvalidOperationException("a replica that holds bf16 weights only is not restored from a checkpoint (it is reallocated from the train replica)");
        if (part == CheckpointPart.Weights) Checkpoints.Safetensors.LoadShard(path, Shard.Layout, Shard.ParametersPointer, allowNonFinite);
        else Checkpoints.Safetensors.LoadFlatShard(path, Shard.Layout, ParamLayout.Create(Shard.Config, Shard.ScalarHead), StatePointer(part));
    }

    private float* StatePointer(CheckpointPart part)
    {
        if (part == CheckpointPart.Master) return Shard.ParametersPointer;
        var o = Optimizer ?? throw new InvalidOperationException("an inference replica has no optimizer state");
        var moment = part switch
        {
            CheckpointPart.FirstMoment => o.FirstMoment,
            CheckpointPart.SecondMoment => o.SecondMoment,
            _ => throw new ArgumentException($"no flat buffer for {part}"),
        };
        fixed (float* p = moment) return p;   // AdamW's moments live in native memory: the pointer is stable
    }

    // ------------------------------------------------------------------ batch mapping

    private static int[][] Sequences(ScoredBatch b) => Enumerable.Range(0, b.Packed.Count).Select(i => b.Packed.Sequence(i).ToArray()).ToArray();

    /// <summary>(action index in the batch, row of the micro-batch that scores it) for every action of mb's sequences, in id order.</summary>
    private static List<(int Action, int Row)> ActionRows(ScoredBatch b, MicroBatch mb)
    {
        var r = new List<(int, int)>();
        for (int j = 0, at = 0; j < mb.Ids.Length; at += mb.Packed.SeqLens[j], j++)
        {
            int i = mb.Ids[j], start = b.Packed.CuSeqlens[i];
            for (int k = b.ActionCu[i]; k < b.ActionCu[i + 1]; k++)
                r.Add((k, at + (b.ActionIndex[k] - start) - 1));
        }
        return r;
    }

    public void Dispose()
    {
        Optimizer?.Dispose();
        Shard.Dispose();
        Comm.Dispose();
    }
}
