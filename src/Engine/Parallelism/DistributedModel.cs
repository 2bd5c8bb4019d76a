// A model role laid out over the devices of one process under a (pp, dp, tp) layout: one shard per
// device, every operation dispatched to all of its devices at once (one thread per device, SPMD,
// the shards talking over the in-process fabric) and its outputs collected from the last pipeline
// stage of tensor rank 0 of each data replica. Reallocation moves parameters (and AdamW moments)
// between two such layouts of one model, or to and from the single full copy the run loop keeps
// for initialisation and checkpoints. This is the in-process execution of an execution plan;
// worker processes run the same ShardRunner over UCX.
using ReaLNative.Engine.Algorithms;
using ReaLNative.Engine.Generation;
using ReaLNative.Engine.Model;
using ReaLNative.Engine.Optim;
using ReaLNative.Engine.Realloc;
using ReaLNative.Engine.Transport;

namespace ReaLNative.Engine.Parallelism;

/// <summary>The devices of one process: an in-process fabric, tag spaces for the models laid out
/// on it, and SPMD dispatch with a deadline.</summary>
internal sealed class LocalCluster
{
    private int _nextGroup;
    private readonly ITransport[] _ranks;

    /// <summary>A cluster of <paramref name="devices"/> in-process devices.</summary>
    public LocalCluster(int devices, TimeSpan? timeout = null)
    {
        var fabric = new LocalFabric(devices);
        _ranks = Enumerable.Range(0, devices).Select(fabric.Rank).ToArray();
        foreach (var r in _ranks) r.Timeout = timeout ?? TimeSpan.FromSeconds(120);
        Timeout = timeout ?? TimeSpan.FromSeconds(120);
    }

    /// <summary>Devices in the cluster.</summary>
    public int Devices => _ranks.Length;

    /// <summary>Deadline of one SPMD dispatch and of each exchange inside it.</summary>
    public TimeSpan Timeout { get; }

    internal ITransport Transport(int device) => _ranks[device];

    internal int AllocateGroups(ParallelLayout layout)
    {
        int n = ShardComm.GroupIdsNeeded(layout);
        lock (this)
        {
            if (_nextGroup + n > 4096) throw new InvalidOperationException("the cluster's collective tag space (4096 groups) is exhausted");
            int b = _nextGroup;
            _nextGroup += n;
            return b;
        }
    }

    /// <summary>Runs <paramref name="body"/>(index) for every index on its own thread and waits for
    /// all; the first failure is rethrown naming the index; a body that does not finish within the
    /// deadline fails the dispatch (naming <paramref name="what"/>).</summary>
    public T[] Spmd<T>(int count, string what, Func<int, T> body)
    {
        var results = new T[count];
        if (count == 1) { results[0] = body(0); return results; }
        var errors = new Exception?[count];
        var threads = new Thread[count];
        for (int i = 0; i < count; i++)
        {
            int k = i;
            threads[k] = new Thread(() =>
            {
                try { results[k] = body(k); }
                catch (Exception e) { errors[k] = e; }
            }) { IsBackground = true, Name = $"{what} #{k}" };
            threads[k].Start();
        }
        var deadline = DateTime.UtcNow + Timeout + TimeSpan.FromSeconds(5);
        foreach (var t in threads)
            if (!t.Join(Max(TimeSpan.Zero, deadline - DateTime.UtcNow)))
                throw new TimeoutException($"{what}: a device did not finish within {Timeout.TotalSeconds:F0} s");
        // Report the root cause, not the peers' timeouts waiting for the failed rank.
        var first = errors.Select((e, i) => (e, i)).Where(x => x.e is not null).OrderBy(x => x.e is TimeoutException ? 1 : 0).FirstOrDefault();
        if (first.e is not null) throw new InvalidOperationException($"{what}: device rank {first.i} failed: {first.e.Message}", first.e);
        return results;
    }

    private static TimeSpan Max(TimeSpan a, TimeSpan b) => a > b ? a : b;
}

/// <summary>
/// One model's replica under one layout on a <see cref="LocalCluster"/>: the shards, their
/// runners and (for trainable replicas) their AdamW states. The operations mirror
/// <see cref="ModelOps"/> on whole batches; every one of them runs on all of the layout's devices.
/// </summary>
internal sealed unsafe class DistributedModel : IDisposable
{
    private readonly LocalCluster _cluster;
    private readonly ShardComm[] _comms;
    private readonly LlamaModel[] _shards;
    private readonly ShardRunner[] _runners;
    private readonly AdamW?[] _optims;
    private readonly string _name;

    /// <summary>Shards of a model (parameters uninitialised; fill them with <see cref="CopyFrom(LlamaModel)"/>).
    /// <paramref name="optimizer"/> makes a trainable replica (one AdamW per shard).</summary>
    public DistributedModel(LocalCluster cluster, string name, LlamaConfig config, bool scalarHead, ParallelLayout layout,
                            int microBatches, Func<LlamaModel, AdamW>? optimizer = null)
    {
        foreach (var d in layout.Devices)
            if ((uint)d >= (uint)cluster.Devices) throw new ArgumentException($"{name}: layout device {d} outside the cluster's {cluster.Devices} devices");
        if (microBatches < 1) throw new ArgumentException($"{name}: micro_batches must be >= 1 (got {microBatches})");
        _cluster = cluster;
        _name = name;
        Layout = layout;
        Config = config;
        ScalarHead = scalarHead;
        MicroBatches = microBatches;
        int groups = cluster.AllocateGroups(layout);
        int n = layout.Devices.Count;
        _comms = new ShardComm[n];
        _shards = new LlamaModel[n];
        _runners = new ShardRunner[n];
        _optims = new AdamW?[n];
        try
        {
            for (int r = 0; r < n; r++)
            {
                _comms[r] = new ShardComm(cluster.Transport(layout.Devices[r]), layout, groups);
                _shards[r] = new LlamaModel(config, scalarHead, _comms[r]);
                _runners[r] = new ShardRunner(_shards[r]);
                _optims[r] = optimizer?.Invoke(_shards[r]);
            }
        }
        catch
        {
            Dispose();
            throw;
        }
    }

    public ParallelLayout Layout { get; }
    public LlamaConfig Config { get; }
    public bool ScalarHead { get; }
    public int MicroBatches { get; }
    /// <summary>The shard of layout rank r.</summary>
    public LlamaModel Shard(int rank) => _shards[rank];
    /// <summary>The optimizer of layout rank r (null for an inference replica).</summary>
    public AdamW? Optimizer(int rank) => _optims[rank];

    private T[] Run<T>(string op, Func<int, T> body) => _cluster.Spmd(_shards.Length, $"{_name} {op} on {Layout}", body);

    private bool Collects(int rank)
    {
        var (pipe, _, model) = Layout.Coords(rank);
        return pipe == Layout.Pp - 1 && model == 0;
    }

    /// <summary>Log-probs of the action tokens (as <see cref="ModelOps.LogProbs"/>).</summary>
    public float[] LogProbs(ScoredBatch batch, float temperature)
    {
        var seqs = Sequences(batch);
        var result = new float[batch.Actions];
        Run("logprobs", r =>
        {
            _runners[r].InferLogProbs(seqs, MicroBatches, temperature, (mb, lp) =>
            {
                if (!Collects(r)) return;
                foreach (var (k, row) in ActionRows(batch, mb)) result[k] = lp[row];
            });
            return 0;
        });
        return result;
    }

    /// <summary>Scalar-head outputs: the value before each action and each sequence's last-token score (as <see cref="ModelOps.Values"/>).</summary>
    public (float[] ActionValues, float[] LastScores) Values(ScoredBatch batch)
    {
        if (!ScalarHead) throw new ArgumentException($"{_name}: values need a scalar-head model");
        var seqs = Sequences(batch);
        var v = new float[batch.Actions];
        var last = new float[batch.Packed.Count];
        Run("values", r =>
        {
            _runners[r].Infer(seqs, MicroBatches, (mb, o) =>
            {
                if (!Collects(r)) return;
                foreach (var (k, row) in ActionRows(batch, mb)) v[k] = o[row];
                for (int j = 0, at = 0; j < mb.Ids.Length; at += mb.Packed.SeqLens[j], j++) last[mb.Ids[j]] = o[at + mb.Packed.SeqLens[j] - 1];
            });
            return 0;
        });
        return (v, last);
    }

    /// <summary>Gradients of sum_k dActionLogp[k] * logp(action k) (zeroed first; as
    /// <see cref="ModelOps.BackwardLogProbs"/> after <see cref="ModelOps.LogProbs"/>).</summary>
    public void BackwardLogProbs(ScoredBatch batch, float temperature, float[] dActionLogp)
    {
        var seqs = Sequences(batch);
        Run("train (log-probs)", r => _runners[r].TrainLogProbs(seqs, MicroBatches, temperature, (mb, lp, d) =>
        {
            foreach (var (k, row) in ActionRows(batch, mb)) d[row] = dActionLogp[k];
            return 0;
        }));
    }

    /// <summary>Gradients from d loss / d action values and d loss / d last scores (zeroed first; as <see cref="ModelOps.BackwardValues"/>).</summary>
    public void BackwardValues(ScoredBatch batch, float[] dActionValues, float[] dLastScores)
    {
        var seqs = Sequences(batch);
        Run("train (values)", r => _runners[r].TrainStep(seqs, MicroBatches, (mb, o, d) =>
        {
            new Span<float>(d, mb.Packed.TotalTokens).Clear();
            if (dActionValues.Length > 0)
                foreach (var (k, row) in ActionRows(batch, mb)) d[row] += dActionValues[k];
            if (dLastScores.Length > 0)
                for (int j = 0, at = 0; j < mb.Ids.Length; at += mb.Packed.SeqLens[j], j++) d[at + mb.Packed.SeqLens[j] - 1] += dLastScores[mb.Ids[j]];
            return 0;
        }));
    }

    /// <summary>SFT: mean negative log-likelihood of the action tokens (as <see cref="ModelOps.SftStep"/>); gradients zeroed first.</summary>
    public double SftStep(ScoredBatch batch)
    {
        var seqs = Sequences(batch);
        double n = Math.Max(1, batch.Actions);
        var shares = Run("train (sft)", r => _runners[r].TrainLogProbs(seqs, MicroBatches, 1f, (mb, lp, d) =>
        {
            double loss = 0;
            foreach (var (k, row) in ActionRows(batch, mb)) { loss -= lp[row] / n; d[row] = (float)(-1 / n); }
            return Collects(r) ? loss : 0;
        }));
        return shares.Sum();
    }

    /// <summary>One AdamW step on every shard; returns the global gradient norm before clipping.</summary>
    public double Step()
    {
        if (_optims[0] is null) throw new InvalidOperationException($"{_name}: an inference replica has no optimizer");
        return Run("optimizer step", r => _optims[r]!.StepOnce())[0];
    }

    /// <summary>Generation of all prompts (each data replica its share, pipelined in micro-batches).</summary>
    public GenerationResult Generate(IReadOnlyList<int[]> prompts, GenerationOptions opt)
    {
        var parts = Run("generate", r => _runners[r].Generate(prompts, opt, MicroBatches));
        int B = prompts.Count;
        var tok = new int[B][]; var lp = new float[B][]; var eos = new bool[B];
        byte[][]? masks = opt.Filters ? new byte[B][] : null;
        for (int r = 0; r < parts.Length; r++)
        {
            if (!Collects(r) || parts[r] is not { } p) continue;
            for (int k = 0; k < p.Ids.Length; k++)
            {
                int i = p.Ids[k];
                tok[i] = p.Result.NewTokens[k]; lp[i] = p.Result.LogProbs[k]; eos[i] = p.Result.EndedWithEos[k];
                if (masks is not null) masks[i] = p.Result.Masks![k];
            }
        }
        return new GenerationResult { Prompts = prompts.Select(x => x.ToArray()).ToArray(), NewTokens = tok, LogProbs = lp, Masks = masks, EndedWithEos = eos };
    }

    // ------------------------------------------------------------------ reallocation

    private Dictionary<int, InProcessRealloc.DeviceBuffer> Buffers(Func<int, nint> ptr) =>
        Enumerable.Range(0, _shards.Length).ToDictionary(r => Layout.Devices[r], r => new InProcessRealloc.DeviceBuffer(ptr(r), _shards[r].ParameterCount * 4));

    private static ReallocPlan Plan(ParallelLayout from, ParallelLayout to, LlamaConfig c, bool scalar) =>
        ReallocPlan.Build(from, to, ParamLayout.Factory(c, scalar), 4, _ => 0);

    /// <summary>Parameter reallocation from another replica of the same model (bit-exact interval copies).</summary>
    public void CopyFrom(DistributedModel src)
    {
        if (src.Config != Config || src.ScalarHead != ScalarHead) throw new ArgumentException($"{_name}: replicas of different models");
        InProcessRealloc.Execute(Plan(src.Layout, Layout, Config, ScalarHead), src.Buffers(r => (nint)src._shards[r].ParametersPointer),
            Buffers(r => (nint)_shards[r].ParametersPointer));
    }

    private static readonly ParallelLayout Single = ParallelLayout.Contiguous(0, 1, 1, 1);

    /// <summary>Scatters a full single-device model (same architecture) into the shards.</summary>
    public void CopyFrom(LlamaModel full) => Move(full.ParametersPointer, full.ParameterCount, toShards: true, r => (nint)_shards[r].ParametersPointer);

    /// <summary>Gathers the shards into a full single-device model (same architecture).</summary>
    public void CopyTo(LlamaModel full) => Move(full.ParametersPointer, full.ParameterCount, toShards: false, r => (nint)_shards[r].ParametersPointer);

    /// <summary>Scatters (toShards) or gathers AdamW moments and parameters between the shards and a
    /// full model's optimizer (checkpoints and resume).</summary>
    public void MoveOptimizerState(AdamW full, bool toShards)
    {
        if (_optims[0] is null) throw new InvalidOperationException($"{_name}: an inference replica has no optimizer");
        fixed (float* m = full.FirstMoment)
        fixed (float* v = full.SecondMoment)
        {
            long n = full.FirstMoment.Length;
            Move(m, n, toShards, r => { fixed (float* p = _optims[r]!.FirstMoment) return (nint)p; });
            Move(v, n, toShards, r => { fixed (float* p = _optims[r]!.SecondMoment) return (nint)p; });
        }
        if (toShards) foreach (var o in _optims) o!.Step = full.Step;
        else full.Step = _optims[0]!.Step;
    }

    private void Move(float* full, long count, bool toShards, Func<int, nint> shardPtr)
    {
        var one = new Dictionary<int, InProcessRealloc.DeviceBuffer> { [Single.Devices[0]] = new((nint)full, count * 4) };
        // The full copy is "device 0 alone": a device the layout may also use; buffers are per side, so that is fine.
        if (toShards) InProcessRealloc.Execute(Plan(Single, Layout, Config, ScalarHead), one, Buffers(shardPtr));
        else InProcessRealloc.Execute(Plan(Layout, Single, Config, ScalarHead), Buffers(shardPtr), one);
    }

    // ------------------------------------------------------------------ batch mapping

    private static int[][] Sequences(ScoredBatch b) => Enumerable.Range(0, b.Packed.Count).Select(i => b.Packed.Sequence(i).ToArray()).ToArray();

    /// <summary>(action index in the batch, row of the micro-batch that scores it) for every action of mb's sequences.</summary>
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
        foreach (var o in _optims) o?.Dispose();
        foreach (var s in _shards) s?.Dispose();
        foreach (var c in _comms) c?.Dispose();
    }
}
