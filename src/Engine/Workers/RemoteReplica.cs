// A model replica whose shards live in model worker processes: each operation is one command to
// every worker of the layout (metadata only), with the batch sent to them (by reference when the
// workers hold it; a backward's per-token gradients only to the last pipeline stage; a generation's
// prompts to each data-parallel rank only its share) and the
// collecting ranks' outputs returned over UCX (and, for a batch the workers hold, kept by them
// for later calls: an on-policy RL train call's loss ranks read them worker to worker and derive
// their loss inputs themselves, see Derivation). A backward is sent with the optimizer step that follows it
// (one round trip instead of two; a backward only writes gradients, which only the step reads):
// any other operation sends a deferred backward on its own first. Reallocation between two replicas runs entirely between the
// workers (TransportRealloc, no byte through the master); to and from the full model the master
// takes part as the rank holding it.
using System.Text.Json.Nodes;
using ReaLNative.Engine.Checkpoints;
using ReaLNative.Engine.Generation;
using ReaLNative.Engine.Layout;
using ReaLNative.Engine.Model;
using ReaLNative.Engine.Tasks;
using ReaLNative.Engine.Optim;
using ReaLNative.Engine.Parallelism;
using ReaLNative.Engine.Realloc;

namespace ReaLNative.Engine.Workers;

internal sealed unsafe class RemoteReplica : IReplica
{
    private readonly WorkerPool _pool;
    private readonly string _name;
    private readonly int _id;
    private readonly OptimizerSpec? _optimizer;
    private readonly int[] _collectors;
    private long _step;
    private bool _disposed;
    /// <summary>A backward not sent yet: it goes with the next <see cref="Step"/>, or alone before any other operation.</summary>
    private (string Op, JsonObject Args, Inputs Input, BatchReads? Reads)? _deferredBackward;

    /// <summary>The input blobs of an operation: <see cref="Rest"/> to every rank (none when null),
    /// except that the last pipeline stage's ranks get <see cref="LastStage"/>[their data-parallel
    /// index] when it is set: the per-token gradients of a loss go only to the stage that computes the
    /// loss, each data-parallel rank getting those of its own part of the batch; with
    /// <see cref="PerData"/> every rank gets PerData[its data-parallel index] (a generation's prompts:
    /// each data-parallel rank only its share).</summary>
    private sealed record Inputs(byte[]? Rest, byte[][]? LastStage = null, byte[][]? PerData = null)
    {
        public static readonly Inputs None = new((byte[]?)null);
        public byte[]? For(ParallelLayout layout, int rank)
        {
            var (pipe, data, _) = layout.Coords(rank);
            if (PerData is not null) return PerData[data];
            return pipe == layout.Pp - 1 && LastStage is not null ? LastStage[data] : Rest;
        }
    }

    public RemoteReplica(WorkerPool pool, string name, LlamaConfig config, bool scalarHead, ParallelLayout layout, int microBatches, OptimizerSpec? optimizer,
                         ModelPrecision precision = ModelPrecision.Fp32)
    {
        if (microBatches < 1) throw new ArgumentException($"{name}: micro_batches must be >= 1 (got {microBatches})");
        // Shapes are checked here, before any worker allocates (the same check the shards make).
        for (int p = 0; p < layout.Pp; p++) ParamLayout.Create(config, scalarHead, layout.Pp, p, layout.Tp, 0);
        _pool = pool;
        _name = name;
        _optimizer = optimizer;
        Layout = layout;
        Config = config;
        ScalarHead = scalarHead;
        MicroBatches = microBatches;
        Precision = precision;
        _id = pool.NextReplicaId();
        _collectors = Enumerable.Range(0, layout.Devices.Count).Where(r =>
        {
            var (pipe, _, model) = layout.Coords(r);
            return pipe == layout.Pp - 1 && model == 0;
        }).Select(r => layout.Devices[r]).ToArray();
        int group = pool.AllocateGroups(layout);
        var cmd = new JsonObject
        {
            ["id"] = _id, ["layout"] = WireJson.Layout(layout), ["config"] = WireJson.Config(config), ["scalar"] = scalarHead,
            ["group"] = group, ["micro"] = microBatches,
        };
        if (optimizer is not null) cmd["optimizer"] = WireJson.Optimizer(optimizer);
        if (precision == ModelPrecision.Bf16) cmd["precision"] = "bf16";
        pool.Dispatch($"{name}: create on {layout}", layout.Devices, "create", cmd);
    }

    public ParallelLayout Layout { get; }
    public LlamaConfig Config { get; }
    public bool ScalarHead { get; }
    public int MicroBatches { get; }
    public ModelPrecision Precision { get; }
    public bool Trainable => _optimizer is not null;
    public float LearningRate => _optimizer is { } o ? o.Schedule.At(_step) : throw new InvalidOperationException($"{_name}: an inference replica has no optimizer");

    private string What(string op) => $"{_name} {op} on {Layout}";

    /// <summary>Runs an operation on every worker: its <paramref name="input"/> blob (if any) sent to
    /// each, the collecting ranks' output blobs returned; the replies' values in device order.</summary>
    private (double[] Values, byte[][] Outputs) Op(string op, JsonObject args, Inputs input, bool output, BatchReads? reads = null) =>
        Op(op, args, input, output, reads, out _);

    private (double[] Values, byte[][] Outputs) Op(string op, JsonObject args, Inputs input, bool output, BatchReads? reads, out JsonNode?[] replies)
    {
        SendDeferredBackward();
        return Send(op, args, input, output, reads, out replies);
    }

    /// <summary>Sends a deferred backward on its own (before any other operation reaches the workers).</summary>
    private void SendDeferredBackward()
    {
        if (_deferredBackward is not { } d) return;
        _deferredBackward = null;
        Send(d.Op, d.Args, d.Input, output: false, d.Reads);
    }

    private (double[] Values, byte[][] Outputs) Send(string op, JsonObject args, Inputs input, bool output, BatchReads? reads) =>
        Send(op, args, input, output, reads, out _);

    /// <summary>Sends an operation; a batch it refers to (<paramref name="reads"/>) is released once it returns.</summary>
    private (double[] Values, byte[][] Outputs) Send(string op, JsonObject args, Inputs input, bool output, BatchReads? reads, out JsonNode?[] replies)
    {
        bool ok = false;
        try
        {
            var r = SendOnce(op, args, input, output, out replies);
            ok = true;
            return r;
        }
        finally
        {
            if (reads is not null) _pool.Batches.Done(reads.Key, reads.Fetches, ok);
        }
    }

    private (double[] Values, byte[][] Outputs) SendOnce(string op, JsonObject args, Inputs input, bool output, out JsonNode?[] parsed)
    {
        long start = System.Diagnostics.Stopwatch.GetTimestamp();
        string label = args["then_step"] is not null ? op + " and optimizer step" : op;
        var (tagIn, tagOut) = _pool.DataTags();
        var t = _pool.Transport;
        var data = new List<Task>();
        for (int r = 0; r < Layout.Devices.Count; r++)
        {
            if (input.For(Layout, r) is not { } blob) continue;
            data.Add(Blobs.SendAsync(t, Layout.Devices[r], tagIn, blob));
            _pool.Batches.CountFromMaster(blob.Length);
        }
        var outs = output ? _collectors.Select(d => Blobs.RecvAsync(t, d, tagOut, $"{What(label)}: output of worker {d}")).ToArray() : [];
        data.AddRange(outs);
        args["id"] = _id; args["op"] = op; args["tag_in"] = tagIn; args["tag_out"] = tagOut;
        var replies = _pool.Dispatch(What(label), Layout.Devices, "op", args, [.. data]);
        parsed = replies.Select(r => JsonNode.Parse(r)).ToArray();
        var values = parsed.Select(r => WireJson.Num(r, "value")).ToArray();
        foreach (var o in outs) _pool.Batches.CountToMaster(o.Result.Length);
        _pool.OpTimings.Add(label, System.Diagnostics.Stopwatch.GetElapsedTime(start).TotalSeconds, parsed);
        return (values, outs.Select(o => o.Result).ToArray());
    }

    private IEnumerable<ShardOutput> Outputs(byte[][] blobs, string op) => blobs.Select((b, i) =>
    {
        var r = new WireReader(b, $"{What(op)}: output of worker {_collectors[i]}");
        var o = r.Output();
        r.End();
        return o;
    });

    // ------------------------------------------------------------------ batches between workers

    /// <summary>A batch an operation refers to (held by workers), and the reads its command carries.</summary>
    private sealed record BatchReads(string Key, List<BatchFetch> Fetches);

    /// <summary>The batch of an operation: when this job's workers hold its sequences (the generation
    /// that produced them kept them), <paramref name="args"/> gets a reference (store ids and lengths:
    /// metadata) and, for the workers of this layout that miss sequences of their data-parallel part,
    /// where to read them (Workers/ResidentBatches.cs); the input writer then holds nothing of the
    /// batch. Otherwise the batch goes inline from the master, in the input writer.</summary>
    private (WireWriter Input, BatchReads? Reads) BatchInput(JsonObject args, ScoredBatch batch)
    {
        if (_pool.Batches.Plan(batch, Layout) is not var (reference, fetches)) return (new WireWriter().Batch(batch), null);
        args["batch_ref"] = reference;
        // The tokens of a composite batch's tails (Model/ScoredBatch.cs) go from here to every rank, in the command.
        if (batch.Source!.Tails is { } tails) _pool.Batches.CountFromMaster(4L * Layout.Devices.Count * tails.Sum(t => (long)(t?.Length ?? 0)));
        if (fetches.Count > 0) args["fetch"] = ResidentBatches.Wire(fetches);
        return (new WireWriter(), new BatchReads((string)reference["key"]!, fetches));
    }

    /// <summary>The input of an operation that carries nothing but its batch: none when the batch went by reference.</summary>
    private static Inputs Blob((WireWriter Input, BatchReads? Reads) b) => new(b.Reads is null ? b.Input.ToArray() : null);

    /// <summary>The input of a backward: the batch (when inline) to every rank, and to each rank of the
    /// last pipeline stage the batch followed by the per-token gradients of its data-parallel part
    /// (<paramref name="gradients"/> writes those of sequences [first, end); ModelWorker.Gradients reads them).</summary>
    private Inputs WithGradients(ScoredBatch batch, (WireWriter Input, BatchReads? Reads) b, Func<WireWriter, int, int, WireWriter> gradients)
    {
        WireWriter Start() => b.Reads is null ? new WireWriter().Batch(batch) : new WireWriter();
        var parts = Split.Contiguous(batch.Packed.SeqLens, Layout.Dp);
        return new Inputs(b.Reads is null ? Start().ToArray() : null,
                          [.. parts.Select(p => gradients(Start(), p[0], p[^1] + 1).ToArray())]);
    }

    /// <summary><paramref name="perAction"/>'s entries of the actions of sequences [first, end).</summary>
    private static ReadOnlySpan<float> ActionSlice(ScoredBatch batch, float[] perAction, int first, int end) =>
        perAction.AsSpan(batch.ActionCu[first], batch.ActionCu[end] - batch.ActionCu[first]);

    public float[] LogProbs(ScoredBatch batch, float temperature) => Scored("logprobs", batch, new JsonObject { ["temperature"] = temperature }, leave: false).Actions.Values;

    public (float[] ActionValues, float[] LastScores) Values(ScoredBatch batch)
    {
        var (actions, parts) = Scored("values", batch, new JsonObject(), leave: false);
        return (actions.Values, ShardOutput.MergeLast(batch.Packed.Count, parts));
    }

    public ActionFloats KeptLogProbs(ScoredBatch batch, float temperature) => Scored("logprobs", batch, new JsonObject { ["temperature"] = temperature }, leave: true).Actions;

    public (ActionFloats ActionValues, float[] LastScores) KeptValues(ScoredBatch batch)
    {
        var (actions, parts) = Scored("values", batch, new JsonObject(), leave: true);
        return (actions, ShardOutput.MergeLast(batch.Packed.Count, parts));
    }

    /// <summary>As <see cref="KeptValues"/>; when the values stay with the workers ("lazy"), the
    /// collecting ranks send no last score either ("no_last": nothing but their sequence ids).</summary>
    public ActionFloats KeptActionValues(ScoredBatch batch) => Scored("values", batch, new JsonObject(), leave: true, noLast: true).Actions;

    /// <summary>The collecting ranks send the last scores only ("last_only"); nothing is kept.</summary>
    public float[] SequenceScores(ScoredBatch batch)
    {
        if (!ScalarHead) throw new ArgumentException($"{_name}: values need a scalar-head model");
        var args = new JsonObject { ["last_only"] = true };
        var input = BatchInput(args, batch);
        var (_, outs) = Op("values", args, Blob(input), output: true, input.Reads);
        return ShardOutput.MergeLast(batch.Packed.Count, [.. Outputs(outs, "values")]);
    }

    /// <summary>An inference operation (log-probs, values) on <paramref name="batch"/>. With
    /// <paramref name="leave"/>, for a batch the workers hold: the collecting ranks keep their part of
    /// the per-action output and do not send it ("lazy"); the master gets an ActionFloats that reads
    /// it from them on first read (the batch stays tracked until it is fetched or released).</summary>
    private (ActionFloats Actions, List<ShardOutput> Parts) Scored(string op, ScoredBatch batch, JsonObject args, bool leave, bool noLast = false)
    {
        if (op == "values" && !ScalarHead) throw new ArgumentException($"{_name}: values need a scalar-head model");
        SendDeferredBackward();
        var input = BatchInput(args, batch);
        string? name = batch.Source is { Composite: true } ? null : KeepOutput(args, input);
        string? held = leave && name is not null && _pool.Batches.HoldOutput(input.Reads!.Key) ? input.Reads!.Key : null;
        if (held is not null) args["lazy"] = true;
        if (held is not null && noLast) args["no_last"] = true;
        try
        {
            var (_, outs) = Op(op, args, Blob(input), output: true, input.Reads, out var replies);
            var parts = Outputs(outs, op).ToList();
            if (held is null)
            {
                var merged = ShardOutput.MergeActions(batch, parts);
                if (name is not null) AttachKept(merged, batch, parts, replies, name);
                return (ActionFloats.Here(merged), parts);
            }
            var cu = batch.ActionCu;
            var kept = Kept(parts.Select(p => (p.Ids, p.Actions.Length, p.Ids.Sum(k => (long)(cu[k + 1] - cu[k])))).ToList(), batch.Source!, replies, "kept_output", name!, op);
            return (Left(kept, batch.Source!.Ids, cu, $"{_name} {op} of batch {kept.Key}"), parts);
        }
        catch
        {
            if (held is not null) _pool.Batches.UnholdOutput(held);
            throw;
        }
    }

    /// <summary>Where the collecting ranks keep their parts of an output they did not send: per
    /// part, its sequences (batch positions), the floats it sent (none) and those it keeps.</summary>
    private ResidentOutput Kept(List<(int[] Ids, int Sent, long Floats)> parts, BatchSource src, JsonNode?[] replies, string field, string name, string op)
    {
        var kept = new ResidentPart[parts.Count];
        for (int i = 0; i < parts.Count; i++)
        {
            var reply = replies[Layout.Devices.ToList().IndexOf(_collectors[i])];
            if (parts[i].Sent != 0) throw new InvalidDataException($"{What(op)}: worker {_collectors[i]} sent {parts[i].Sent} floats of an output it was to keep");
            // A collector with no action of its own keeps nothing ("").
            if (((string?)reply?[field] ?? (parts[i].Floats == 0 ? "" : null)) is not { } descriptor || (descriptor.Length == 0) != (parts[i].Floats == 0))
                throw new InvalidDataException($"{What(op)}: worker {_collectors[i]} did not keep its {parts[i].Floats} floats of the output");
            kept[i] = new ResidentPart(_collectors[i], descriptor, [.. parts[i].Ids.Select(k => src.Ids[k])], parts[i].Floats);
        }
        return new ResidentOutput(src.Key, name, kept);
    }

    /// <summary>The master's handle of output <paramref name="o"/> that the workers keep: the
    /// sequences with store ids <paramref name="ids"/>, in this order, with action offsets
    /// <paramref name="cu"/>; read from the workers on first use (<see cref="Fetch"/>).</summary>
    private ActionFloats Left(ResidentOutput o, int[] ids, int[] cu, string what) =>
        ActionFloats.Remote(cu[^1], o, () => Fetch<float>(o, ids, cu, what), () => _pool.Batches.UnholdOutput(o.Key), what);

    /// <summary>Reads output <paramref name="o"/> from the workers that keep it (one-sided reads of
    /// their registered buffers: their command threads take no part), all posted at once and waited
    /// for watching the workers (a holder that exited or went silent is named) and with the call
    /// deadline; the floats in the order of <paramref name="ids"/>.</summary>
    private T[] Fetch<T>(ResidentOutput o, int[] ids, int[] cu, string what) where T : unmanaged
    {
        if (!_pool.Batches.Tracked(o.Key)) throw new InvalidOperationException($"{what}: its batch is no longer kept by the workers");
        var index = new Dictionary<int, int>();
        for (int i = 0; i < ids.Length; i++) index[ids[i]] = i;
        var flat = new T[cu[^1]];
        long size = System.Runtime.CompilerServices.Unsafe.SizeOf<T>();
        var rma = (Transport.IRmaTransport)_pool.Transport;
        var remotes = new List<Transport.IRemoteRegion>();
        var pending = new List<(Task Read, T[] Into, ResidentPart Part)>();
        try
        {
            foreach (var p in o.Parts)
            {
                long floats = 0;
                foreach (int id in p.Ids)
                {
                    if (!index.TryGetValue(id, out int k)) throw new InvalidDataException($"{what}: worker {p.Worker} keeps sequence {id}, which is not in the batch");
                    floats += cu[k + 1] - cu[k];
                }
                if (floats != p.Floats) throw new InvalidDataException($"{what}: worker {p.Worker} keeps {p.Floats} floats, its sequences have {floats} actions");
                if (floats == 0) continue;
                var remote = rma.Attach(p.Worker, Convert.FromBase64String(p.Descriptor));
                remotes.Add(remote);
                if (remote.Bytes < size * floats) throw new InvalidDataException($"{what}: worker {p.Worker}'s buffer holds {remote.Bytes / size} values, the part needs {floats}");
                var into = GC.AllocateUninitializedArray<T>((int)floats, pinned: true);
                pending.Add((rma.GetAsync(remote, 0, System.Runtime.InteropServices.Marshal.UnsafeAddrOfPinnedArrayElement(into, 0), size * floats), into, p));
            }
            _pool.AwaitData($"{what}: read from worker{(pending.Count == 1 ? "" : "s")} {string.Join(", ", pending.Select(x => x.Part.Worker))}", [.. pending.Select(x => x.Read)]);
        }
        catch
        {
            // UCX cannot cancel an RMA read: one still running writes into its array later (Workers/ModelWorker.Fetch).
            Transport.AbandonedBuffers.KeepUnfinished(pending.Select(x => (x.Read, (object)x.Into)), remotes);
            throw;
        }
        finally
        {
            foreach (var r in remotes) r.Dispose();
        }
        foreach (var (_, into, p) in pending)
        {
            int at = 0;
            foreach (int id in p.Ids)
            {
                int k = index[id];
                Array.Copy(into, at, flat, cu[k], cu[k + 1] - cu[k]);
                at += cu[k + 1] - cu[k];
            }
            _pool.Batches.CountToMaster(size * into.Length);
        }
        return flat;
    }

    /// <summary>For a batch the workers hold: asks the collecting ranks to keep their part of the
    /// per-action output for later calls (the train calls' loss ranks read it from them); the name it is kept under.</summary>
    private string? KeepOutput(JsonObject args, (WireWriter Input, BatchReads? Reads) input)
    {
        if (input.Reads is null) return null;
        string name = _pool.Batches.NewOutputName();
        args["keep_output"] = name;
        return name;
    }

    /// <summary>Records where the collecting ranks keep their parts of <paramref name="merged"/> (by
    /// the batch's store ids); nothing when a collector kept none.</summary>
    private void AttachKept(float[] merged, ScoredBatch batch, List<ShardOutput> parts, JsonNode?[] replies, string name)
    {
        var src = batch.Source!;
        var kept = new ResidentPart[parts.Count];
        for (int i = 0; i < parts.Count; i++)
        {
            var reply = replies[Layout.Devices.ToList().IndexOf(_collectors[i])];
            if ((string?)reply?["kept_output"] is not { } descriptor || (descriptor.Length == 0) != (parts[i].Actions.Length == 0)) return;
            kept[i] = new ResidentPart(_collectors[i], descriptor, [.. parts[i].Ids.Select(k => src.Ids[k])], parts[i].Actions.Length);
        }
        _pool.Batches.Attach(merged, new ResidentOutput(src.Key, name, kept));
    }

    public void BackwardLogProbs(ScoredBatch batch, float temperature, float[] dActionLogp)
    {
        if (dActionLogp.Length != batch.Actions) throw new ArgumentException($"{_name}: {dActionLogp.Length} log-prob gradients for {batch.Actions} actions");
        SendDeferredBackward();
        var args = new JsonObject { ["temperature"] = temperature };
        var input = BatchInput(args, batch);
        Defer("backward_logprobs", args, WithGradients(batch, input, (w, first, end) => w.Floats(ActionSlice(batch, dActionLogp, first, end))), input.Reads);
    }

    public void BackwardValues(ScoredBatch batch, float[] dActionValues, float[] dLastScores)
    {
        SendDeferredBackward();
        var args = new JsonObject();
        var input = BatchInput(args, batch);
        // An empty array (no gradient of that output) stays empty.
        Defer("backward_values", args, WithGradients(batch, input, (w, first, end) =>
            w.Floats(dActionValues.Length == 0 ? [] : ActionSlice(batch, dActionValues, first, end))
             .Floats(dLastScores.Length == 0 ? [] : dLastScores.AsSpan(first, end - first))), input.Reads);
    }

    /// <summary>Keeps a backward for the step that follows it (an inference replica has none: sent at once).</summary>
    private void Defer(string op, JsonObject args, Inputs input, BatchReads? reads)
    {
        SendDeferredBackward();
        if (_optimizer is null) { Send(op, args, input, output: false, reads); return; }
        _deferredBackward = (op, args, input, reads);
    }

    public double SftStep(ScoredBatch batch)
    {
        SendDeferredBackward();
        var args = new JsonObject();
        var input = BatchInput(args, batch);
        return Op("sft", args, Blob(input), output: false, input.Reads).Values.Sum();
    }

    public double Step()
    {
        if (_optimizer is null) throw new InvalidOperationException($"{_name}: an inference replica has no optimizer");
        double norm;
        if (_deferredBackward is { } d)
        {
            _deferredBackward = null;
            d.Args["then_step"] = true;
            norm = Send(d.Op, d.Args, d.Input, output: false, d.Reads).Values[0];
        }
        else norm = Op("step", new JsonObject(), Inputs.None, output: false).Values[0];
        _step++;
        return norm;
    }

    // ------------------------------------------------------------------ train steps that compute their loss on the workers

    /// <summary>The loss inputs of the train call in progress (one object per call), their key on the
    /// workers, the minibatches (by first sequence or action) whose parts the loss ranks already hold,
    /// and whether the loss ranks derive them (PPO: <see cref="Derivation"/>; then the call's first
    /// command carries everything, and the loss ranks hold the whole rollout's inputs after it).</summary>
    private (object Inputs, string Key, HashSet<int> Sent, bool Derived)? _lossInputs;
    private int _lossCalls;

    /// <summary>The workers' key of <paramref name="inputs"/>, whether the command sends loss inputs
    /// (the minibatch's first step in this call: each part goes once, the later epochs reuse it; when
    /// derived, the call's first command only), whether the loss ranks derive them
    /// (<paramref name="derive"/> decides that at the call's first command) and whether this is the
    /// minibatch's first step in this call.</summary>
    private (string Key, bool Send, bool Derived, bool FirstOfMinibatch) LossInputs(object inputs, int s0, Func<bool> derive)
    {
        if (_lossInputs is not { } h || !ReferenceEquals(h.Inputs, inputs))
            _lossInputs = h = (inputs, "l" + (++_lossCalls).ToString(System.Globalization.CultureInfo.InvariantCulture), [], derive());
        bool first = h.Sent.Count == 0, added = h.Sent.Add(s0);
        return (h.Key, h.Derived ? first : added, h.Derived, added);
    }

    /// <summary>
    /// When the PPO advantages of a train call can be derived by its loss ranks (the generation's and
    /// the reference's log-probs and the critic's values of the rollout are all kept by workers of
    /// this job, and the minibatch's batch, pinned by <paramref name="reads"/>, is the same rollout):
    /// the command entry that tells each loss rank where to read them (per array, each holder's part
    /// and the rollout indices of its sequences) and the options of the computation, and the bytes
    /// the loss ranks will read from other workers; null otherwise (the master computes them and
    /// sends each rank its part, as before).
    /// </summary>
    private (JsonObject Spec, long Bytes)? Derivation(DerivedLossInputs? d, BatchReads? reads)
    {
        if (d is null || reads is null || d.Source is not { } src || !ReferenceEquals(src.Owner, _pool.Batches) || src.Key != reads.Key) return null;
        d.Check();
        if (src.Ids.Length != d.Sequences) return null;
        var index = new Dictionary<int, int>();
        for (int i = 0; i < src.Ids.Length; i++) index[src.Ids[i]] = i;
        var arrays = new JsonObject();
        var parts = new List<ResidentPart>();
        (string, ActionFloats)[] resident = d is PpoAdvantageInputs p0
            ? [("logprobs", d.LogProbs), ("ref", d.RefLogProbs), ("values", p0.Values)]
            : [("logprobs", d.LogProbs), ("ref", d.RefLogProbs)];
        foreach (var (name, array) in resident)
        {
            if (Where(array) is not { } o || o.Key != src.Key) return null;
            var list = new JsonArray();
            foreach (var p in o.Parts)
            {
                if (p.Ids.Any(id => !index.ContainsKey(id))) return null;
                list.Add((JsonNode)new JsonObject  // Add(JsonNode), not Add<T>: no reflection (NativeAOT)
                {
                    ["src"] = p.Worker, ["key"] = o.Key, ["name"] = o.Name, ["descriptor"] = p.Descriptor,
                    ["seqs"] = new JsonArray([.. p.Ids.Select(id => (JsonNode)index[id])]),
                });
                parts.Add(p);
            }
            arrays[name] = list;
        }
        static long Bits(double x) => BitConverter.DoubleToInt64Bits(x);
        var spec = new JsonObject { ["cu"] = new JsonArray([.. d.ActionCu.Select(x => (JsonNode)x)]), ["arrays"] = arrays };
        if (d is PpoAdvantageInputs ppo)
        {
            spec["kind"] = "ppo";
            spec["kl_coef"] = Bits(ppo.Ppo.KlCoef); spec["gamma"] = Bits(ppo.Ppo.Gamma); spec["lambda"] = Bits(ppo.Ppo.Lambda);
            spec["max_reward_clip"] = Bits(ppo.Ppo.MaxRewardClip); spec["adv_norm"] = ppo.Ppo.AdvNorm;
        }
        else spec["kind"] = "sequence";
        long bytes = 0;
        foreach (int dst in LossDevices)
            bytes += parts.Where(p => p.Worker != dst).Sum(p => 4 * p.Floats);
        return (spec, bytes);
    }

    /// <summary>Where the workers keep <paramref name="a"/> (left with them, or a copy the master also
    /// holds), while its batch is tracked; null otherwise. Never fetches.</summary>
    private ResidentOutput? Where(ActionFloats a) =>
        a.Resident is ResidentOutput r ? (_pool.Batches.Tracked(r.Key) ? r : null)
        : a.Fetched ? _pool.Batches.Find(a.Values) : null;

    /// <summary>
    /// The command entry that tells the loss ranks where to read the proximal log-probs of the
    /// minibatch whose actions start at <paramref name="a0"/> (an off-policy batch's ratio base, kept
    /// by the workers that computed them: per holder, its part and the rollout indices of its
    /// sequences), and the bytes the loss ranks read from other workers. Fails when they are not
    /// set, were released, or are not kept by workers of this job with the rollout's batch.
    /// </summary>
    private (JsonArray Parts, long Bytes) ProximalPart(ProximalLogProbs proximal, ScoredBatch minibatch, int a0, DerivedLossInputs d)
    {
        string what = $"{_name} policy step: the proximal log-probs of the minibatch at action {a0}";
        var p = proximal.OfMinibatch(a0) ?? throw new InvalidOperationException($"{what} were not computed before its first step");
        if (p.Released) throw new InvalidOperationException($"{what}: read after they were released (the batch was consumed)");
        if (Where(p) is not { } o || d.Source is not { } src || o.Key != src.Key)
            throw new InvalidOperationException($"{what} are not kept by the workers that hold the rollout (the loss ranks derive the rest of the inputs there)");
        var index = new Dictionary<int, int>();
        for (int i = 0; i < src.Ids.Length; i++) index[src.Ids[i]] = i;
        var mine = minibatch.Source?.Ids.ToHashSet() ?? throw new InvalidOperationException($"{what}: the minibatch has no sequences on the workers");
        var list = new JsonArray();
        foreach (var part in o.Parts)
        {
            if (part.Ids.Any(id => !mine.Contains(id) || !index.ContainsKey(id)))
                throw new InvalidDataException($"{what}: worker {part.Worker} keeps sequences outside the minibatch");
            list.Add((JsonNode)new JsonObject  // Add(JsonNode), not Add<T>: no reflection (NativeAOT)
            {
                ["src"] = part.Worker, ["key"] = o.Key, ["name"] = o.Name, ["descriptor"] = part.Descriptor,
                ["seqs"] = new JsonArray([.. part.Ids.Select(id => (JsonNode)index[id])]),
            });
        }
        long bytes = 0;
        foreach (int dst in LossDevices)
            bytes += o.Parts.Where(x => x.Worker != dst).Sum(x => 4 * x.Floats);
        return (list, bytes);
    }

    /// <summary>The devices of the ranks that compute a train call's loss (the last pipeline stage).</summary>
    private IEnumerable<int> LossDevices => Enumerable.Range(0, Layout.Devices.Count).Where(r => Layout.Coords(r).Pipe == Layout.Pp - 1).Select(r => Layout.Devices[r]);

    /// <summary>The input blob of a derived call's first command, to every loss rank: the keep flags
    /// (policy), then PPO's shaped scores and EOS flags, or the critic-free per-sequence advantages,
    /// of the rollout's sequences.</summary>
    private Inputs DerivationBlob(DerivedLossInputs d, bool[]? keep)
    {
        static byte[] Flags(bool[] x) => [.. x.Select(k => k ? (byte)1 : (byte)0)];
        var w = new WireWriter();
        if (keep is not null) w.Bytes(Flags(keep));
        if (d is PpoAdvantageInputs p) w.Floats(p.Scores).Bytes(Flags(p.EndedWithEos));
        else w.Floats(((SequenceAdvantageInputs)d).SequenceAdvantages);
        var blob = w.ToArray();
        return new Inputs(null, LastStage: [.. Enumerable.Repeat(blob, Layout.Dp)]);
    }

    /// <summary>The KL the figures rank derived (its reply's "kl", bits), reported to <paramref name="d"/>.</summary>
    private void DerivedKl(JsonNode?[] replies, DerivedLossInputs d, string op)
    {
        var reply = replies[Layout.Devices.ToList().IndexOf(FiguresDevice)];
        var bits = reply?["kl"] ?? throw new InvalidDataException($"{What(op)}: worker {FiguresDevice} derived the advantages but returned no KL");
        d.ReportKl(BitConverter.Int64BitsToDouble(bits.GetValue<long>()));
    }

    /// <summary>The device of the rank that returns a loss's figures: the collecting rank of the last data-parallel index.</summary>
    private int FiguresDevice => Layout.Device(Layout.Pp - 1, Layout.Dp - 1, 0);

    private double[] Figures(JsonNode?[] replies, string op, int count)
    {
        var reply = replies[Layout.Devices.ToList().IndexOf(FiguresDevice)];
        var bits = reply?["stats"]?.AsArray() ?? throw new InvalidDataException($"{What(op)}: worker {FiguresDevice} returned no loss figures");
        if (bits.Count != count) throw new InvalidDataException($"{What(op)}: worker {FiguresDevice} returned {bits.Count} loss figures, expected {count}");
        return [.. bits.Select(b => BitConverter.Int64BitsToDouble(b!.GetValue<long>()))];
    }

    /// <summary>One command per minibatch: the workers run forward, loss, backward and step
    /// (ShardReplica.PolicyStep); the last stage's ranks get their part of the loss inputs with the
    /// minibatch's first step of the call, and only the loss figures come back.</summary>
    public (ClippedPolicyStats Stats, double GradNorm) PolicyStep(ScoredBatch batch, int s0, int a0, float temperature, PolicyLossInputs inputs, bool ratioBaseFromForward)
    {
        if (_optimizer is null) throw new InvalidOperationException($"{_name}: an inference replica has no optimizer");
        var (tokens, seqs) = inputs.Minibatch(batch, s0, a0);
        SendDeferredBackward();
        var o = inputs.Options;
        var args = new JsonObject
        {
            ["temperature"] = temperature, ["s0"] = s0, ["a0"] = a0, ["tokens"] = tokens, ["seqs"] = seqs, ["from_forward"] = ratioBaseFromForward,
        };
        var input = BatchInput(args, batch);
        // The loss ranks derive the advantages from the resident inference outputs (PPO's loss has no
        // k3 term; the critic-free algorithms' uses the reference's log-probs they read). On-policy the
        // ratio base is the generation's log-probs; off-policy those are the behaviour log-probs and
        // the ratio base is the proximal log-probs, which the loss ranks take from the minibatch's
        // first forward (minibatch 0) or read from the workers that keep them (the others: ProximalPart).
        var d = inputs.Derived is { } x
                && (inputs.Proximal is null ? ReferenceEquals(inputs.RatioBaseOutput, x.LogProbs) && inputs.BehaviourOutput.Length == 0
                                            : ReferenceEquals(inputs.BehaviourOutput, x.LogProbs))
                && (x is PpoAdvantageInputs ? inputs.RefOutput.Length == 0 : ReferenceEquals(inputs.RefOutput, x.RefLogProbs)) ? x : null;
        (JsonObject Spec, long Bytes)? derivation = null;
        var (key, send, derived, firstOfMinibatch) = LossInputs(inputs, s0, () => (derivation = Derivation(d, input.Reads)) is not null);
        var li = new JsonObject
        {
            ["key"] = key, ["sent"] = send, ["actions"] = inputs.Actions, ["sequences"] = inputs.Keep.Length,
            ["behaviour"] = inputs.BehaviourOutput.Length > 0, ["ref"] = inputs.RefOutput.Length > 0,
            ["clip_low"] = o.ClipLow, ["clip_high"] = o.ClipHigh, ["aggregation"] = o.Aggregation, ["kl_coef"] = o.KlCoef, ["behaviour_weight_cap"] = o.BehaviourWeightCap,
        };
        args["loss_inputs"] = li;
        long proximalBytes = 0;
        if (derived && inputs.Proximal is { } proximal && firstOfMinibatch && !ratioBaseFromForward)
        {
            try { (li["proximal"], proximalBytes) = ProximalPart(proximal, batch, a0, inputs.Derived!); }
            catch
            {
                if (input.Reads is { } r) _pool.Batches.Done(r.Key, r.Fetches, succeeded: false);   // the command is never sent
                _lossInputs = null;   // nor is this minibatch's part: a later step starts the call's inputs afresh
                throw;
            }
        }
        ReadOnlySpan<float> Part(float[] x, int first, int end) => x.Length == 0 ? [] : x.AsSpan(a0 + batch.ActionCu[first], batch.ActionCu[end] - batch.ActionCu[first]);
        Inputs blobs;
        if (derived && send)
        {
            li["derive"] = derivation!.Value.Spec;
            blobs = DerivationBlob(d!, inputs.Keep);
        }
        else blobs = send && !derived
            ? WithGradients(batch, input, (w, first, end) => w.Bytes([.. inputs.Keep.AsSpan(s0 + first, end - first).ToArray().Select(k => k ? (byte)1 : (byte)0)])
                .Floats(Part(inputs.Advantages, first, end)).Floats(Part(inputs.RatioBase, first, end))
                .Floats(Part(inputs.Behaviour, first, end)).Floats(Part(inputs.Ref, first, end)))
            : Blob(input);
        var (values, _) = Op("policy_step", args, blobs, output: false, input.Reads, out var replies);
        _step++;
        _pool.Batches.CountBetweenWorkers(proximalBytes);
        if (derived && send)
        {
            _pool.Batches.CountBetweenWorkers(derivation!.Value.Bytes);
            DerivedKl(replies, d!, "policy_step");
        }
        var f = Figures(replies, "policy_step", 5);
        return (new ClippedPolicyStats(f[0], f[1], f[2], f[3], f[4], tokens, seqs), values[0]);
    }

    /// <summary>As <see cref="PolicyStep"/>, for the clipped value loss (ShardReplica.ValueStep).</summary>
    public (ValueLossStats Stats, double GradNorm) ValueStep(ScoredBatch batch, int a0, ValueLossInputs inputs)
    {
        if (_optimizer is null) throw new InvalidOperationException($"{_name}: an inference replica has no optimizer");
        if (!ScalarHead) throw new ArgumentException($"{_name}: values need a scalar-head model");
        inputs.CheckMinibatch(batch, a0);
        SendDeferredBackward();
        var args = new JsonObject { ["a0"] = a0 };
        var input = BatchInput(args, batch);
        // PPO: the loss ranks derive the returns from the resident inference outputs.
        var d = inputs.Derived is { } x && ReferenceEquals(inputs.OldValuesOutput, x.Values) ? x : null;
        (JsonObject Spec, long Bytes)? derivation = null;
        var (key, send, derived, _) = LossInputs(inputs, a0, () => (derivation = Derivation(d, input.Reads)) is not null);
        var li = new JsonObject { ["key"] = key, ["sent"] = send, ["actions"] = inputs.OldValuesOutput.Length, ["clip_eps"] = inputs.ClipEps };
        args["loss_inputs"] = li;
        ReadOnlySpan<float> Part(float[] x, int first, int end) => x.AsSpan(a0 + batch.ActionCu[first], batch.ActionCu[end] - batch.ActionCu[first]);
        Inputs blobs;
        if (derived && send)
        {
            li["derive"] = derivation!.Value.Spec;
            li["sequences"] = d!.Sequences;
            blobs = DerivationBlob(d, null);
        }
        else blobs = send && !derived ? WithGradients(batch, input, (w, first, end) => w.Floats(Part(inputs.OldValues, first, end)).Floats(Part(inputs.Returns, first, end))) : Blob(input);
        var (values, _) = Op("value_step", args, blobs, output: false, input.Reads, out var replies);
        _step++;
        if (derived && send)
        {
            _pool.Batches.CountBetweenWorkers(derivation!.Value.Bytes);
            DerivedKl(replies, d!, "value_step");
        }
        var f = Figures(replies, "value_step", 2);
        return (new ValueLossStats(f[0], f[1], batch.Actions), values[0]);
    }

    public GenerationResult Generate(IReadOnlyList<int[]> prompts, GenerationOptions opt) => Generate(prompts, opt, leave: false);

    public GenerationResult KeptGenerate(IReadOnlyList<int[]> prompts, GenerationOptions opt, ScoringRequest? scoring = null) => Generate(prompts, opt, leave: true, scoring);

    /// <summary>Scorer descriptions this replica's workers were sent, with the id they know each by.</summary>
    private readonly Dictionary<string, string> _scorers = new(StringComparer.Ordinal);

    /// <summary>A generation; with <paramref name="leave"/>, when the workers keep the sequences, the
    /// collecting ranks do not send the log-probs either (the result's KeptLogProbs reads them on first
    /// use), nor a filtered generation's sampling masks (vocab bytes per token, which a synchronous
    /// run's train calls do not read: its batch's logits_mask is empty; the result's Masks then fails).</summary>
    /// <remarks>With <paramref name="scoring"/> and the sequences kept, the collecting ranks also
    /// score their answers (Tasks/SequenceScoring.cs) and send the scores with them.</remarks>
    private GenerationResult Generate(IReadOnlyList<int[]> prompts, GenerationOptions opt, bool leave, ScoringRequest? scoring = null)
    {
        var args = new JsonObject { ["gen"] = WireJson.Generation(opt) };
        // The collecting ranks keep the sequences for the calls that score them next (the last chunk
        // of a paused generation: every chunk returns the tokens so far).
        string? key = _pool.WorkerToWorkerData && opt.Pause is null or { Resume: true, StopBeforeStep: 0 } ? _pool.Batches.NewKey() : null;
        if (key is not null) args["keep_as"] = key;
        bool held = leave && key is not null && _pool.Batches.HoldOutput(key);
        if (held) args["lazy"] = true;
        bool scored = held && scoring is not null;
        if (scored)
        {
            if (scoring!.Examples.Count != prompts.Count) throw new ArgumentException($"{_name}: scoring {scoring.Examples.Count} examples for {prompts.Count} prompts");
            // The scorer (tokenizer, reward) is described once; later requests name it by id.
            string desc = scoring.Scorer.ToJsonString();
            // The reference answers go with each data-parallel part's prompts (Generated).
            var score = new JsonObject { ["checks"] = scoring.Checks, ["grades"] = scoring.Grades, ["rule"] = scoring.Rule };
            if (!_scorers.TryGetValue(desc, out var id))
            {
                _scorers[desc] = id = $"{_id}.{_scorers.Count}";
                score["scorer"] = scoring.Scorer.DeepClone();
            }
            score["scorer_id"] = id;
            args["score"] = score;
            // The answers are scored where they are: their token ids stay there too (read only if the master needs them).
            args["lazy_tokens"] = true;
        }
        try { return Generated(prompts, opt, args, key, held, scored ? scoring : null); }
        catch
        {
            if (held) _pool.Batches.UnholdOutput(key!);
            throw;
        }
    }

    private GenerationResult Generated(IReadOnlyList<int[]> prompts, GenerationOptions opt, JsonObject args, string? key, bool held, ScoringRequest? scoring)
    {
        // Each data-parallel rank gets only the prompts of its part (the split its shards make of the
        // whole batch, ShardRunner.DataPart: a contiguous run) and where the run starts in the batch
        // (the ids key the random draws).
        args["batch"] = prompts.Count;
        // With scoring, each part's reference answers follow its prompts (its collecting rank scores the generated answers).
        var shares = Split.Contiguous(prompts.Select(p => p.Length).ToArray(), Layout.Dp)
            .Select(part =>
            {
                var w = new WireWriter().PromptShare(part[0], [.. part.Select(i => prompts[i])]);
                if (scoring is not null) w.Answers([.. part.Select(i => scoring.Examples[i].Answer)]);
                return w.ToArray();
            }).ToArray();
        var (_, outs) = Op("generate", args, new Inputs(null, PerData: shares), output: true, null, out var replies);
        var scores = scoring is null ? null : new SequenceScoresBuilder(prompts.Count);
        var parts = outs.Select((b, i) =>
        {
            var r = new WireReader(b, $"{What("generate")}: output of worker {_collectors[i]}");
            var g = r.Generation(prompts, opt.Filters, tokenIds: scoring is null, opt.MaxNewTokens);
            scores?.Add(r, g.Ids, $"{What("generate")}: scores of worker {_collectors[i]}");
            r.End();
            return g;
        }).ToList();
        if (key is null) return ShardReplica.MergeGeneration(prompts, opt, parts);
        for (int i = 0; i < parts.Count; i++)
        {
            var reply = replies[Layout.Devices.ToList().IndexOf(_collectors[i])];
            // A collector with no sequence of its own registers no buffer.
            if ((string?)reply?["kept"] is { } descriptor)
                _pool.Batches.Hold(key, _collectors[i], descriptor, parts[i].Ids, [.. parts[i].Ids.Select((id, k) => prompts[id].Length + parts[i].Result.NewTokenCounts[k])]);
        }
        var source = new BatchSource(_pool.Batches, key, [.. Enumerable.Range(0, prompts.Count)]);
        if (held)
        {
            // The log-probs stayed with the collecting ranks: where, and the master's handle of them.
            var kept = Kept(parts.Select(p => (p.Ids, p.Result.LogProbs.Sum(l => l.Length), p.Result.NewTokenCounts.Sum(t => (long)t))).ToList(),
                            source, replies, "kept_logprobs", "generation", "generate");
            _pool.Batches.HoldGenerationLogProbs(key, kept.Parts);
            var m = scoring is null ? ShardReplica.MergeGeneration(prompts, opt, parts, source) : MergeCounts(prompts, parts);
            var cu = new int[prompts.Count + 1];
            for (int i = 0; i < prompts.Count; i++) cu[i + 1] = cu[i] + m.NewTokenCounts[i];
            return new GenerationResult
            {
                Prompts = m.Prompts, NewTokens = scoring is null ? m.NewTokens : null!, NewTokenCounts = m.NewTokenCounts, LogProbs = null!, Masks = null,
                MasksDropped = opt.Filters, EndedWithEos = m.EndedWithEos, PrefilledTokens = m.PrefilledTokens, Steps = m.Steps, Source = source,
                KeptLogProbs = Left(kept, source.Ids, cu, $"{_name} generation log-probs of batch {key}"),
                KeptTokens = scoring is null ? null : KeptSequences(key, source, m, parts, replies),
                Scores = scores?.Build(scoring!.Checks, scoring.Grades, $"{What("generate")}: scores"),
            };
        }
        // The generation's log-probs, kept by the same ranks (read by the train calls' loss ranks).
        var logProbs = new List<ResidentPart>();
        for (int i = 0; i < parts.Count; i++)
        {
            var reply = replies[Layout.Devices.ToList().IndexOf(_collectors[i])];
            long floats = parts[i].Result.LogProbs.Sum(l => (long)l.Length);
            if (((string?)reply?["kept_logprobs"] ?? (floats == 0 ? "" : null)) is not { } d || (d.Length == 0) != (floats == 0)) { logProbs = null; break; }
            logProbs.Add(new ResidentPart(_collectors[i], d, parts[i].Ids, floats));
        }
        if (logProbs is not null) _pool.Batches.HoldGenerationLogProbs(key, [.. logProbs]);
        return ShardReplica.MergeGeneration(prompts, opt, parts, source);
    }

    /// <summary>The collecting ranks' parts of a generation that sent new-token counts instead of
    /// ids, in prompt order (ShardReplica.MergeGeneration's checks).</summary>
    private static GenerationResult MergeCounts(IReadOnlyList<int[]> prompts, List<(int[] Ids, GenerationResult Result)> parts)
    {
        int n = prompts.Count;
        var counts = new int[n]; var eos = new bool[n]; var seen = new bool[n];
        foreach (var p in parts)
            for (int k = 0; k < p.Ids.Length; k++)
            {
                int i = p.Ids[k];
                if ((uint)i >= (uint)n || seen[i]) throw new InvalidDataException($"generation outputs: prompt {i} out of range or reported twice");
                seen[i] = true; counts[i] = p.Result.NewTokenCounts[k]; eos[i] = p.Result.EndedWithEos[k];
            }
        if (Array.IndexOf(seen, false) is var miss and >= 0) throw new InvalidDataException($"generation outputs: no collecting rank reported prompt {miss}");
        return new GenerationResult { Prompts = [.. prompts.Select(x => x.ToArray())], NewTokens = null!, NewTokenCounts = counts, LogProbs = null!, EndedWithEos = eos };
    }

    /// <summary>The master's handle of a kept generation's sequences (prompt and new tokens, packed in
    /// prompt order) that the collecting ranks keep in their registered buffers: read from them
    /// (one-sided, as <see cref="Fetch{T}"/>) on first use; the batch stays with the workers until then or until released.</summary>
    private KeptInts KeptSequences(string key, BatchSource source, GenerationResult m, List<(int[] Ids, GenerationResult Result)> parts, JsonNode?[] replies)
    {
        var cu = new int[m.Prompts.Length + 1];
        for (int i = 0; i < m.Prompts.Length; i++) cu[i + 1] = cu[i] + m.Prompts[i].Length + m.NewTokenCounts[i];
        var held = new ResidentPart[parts.Count];
        for (int i = 0; i < parts.Count; i++)
        {
            var reply = replies[Layout.Devices.ToList().IndexOf(_collectors[i])];
            long ints = parts[i].Ids.Sum(k => (long)(cu[k + 1] - cu[k]));
            string descriptor = (string?)reply?["kept"] ?? (ints == 0 ? "" : throw new InvalidDataException($"{What("generate")}: worker {_collectors[i]} did not keep its {ints} tokens"));
            held[i] = new ResidentPart(_collectors[i], descriptor, [.. parts[i].Ids.Select(k => source.Ids[k])], ints);
        }
        var o = new ResidentOutput(key, "sequences", held);
        string what = $"{_name} generated sequences of batch {key}";
        if (!_pool.Batches.HoldOutput(key)) throw new InvalidOperationException($"{what}: the batch is no longer kept by the workers");
        return KeptInts.Remote(cu[^1], () => Fetch<int>(o, source.Ids, cu, what), () => _pool.Batches.UnholdOutput(key), what);
    }

    // ------------------------------------------------------------------ reallocation

    /// <summary>The reallocation plan of this model between two layouts, built once and kept with the replica (the master
    /// counts a reallocation's bytes with it every iteration, 0.6-0.9 ms for gpt2-small pp2 x tp2 to dp2 x tp2, and executes
    /// its part of loads and gathers); keyed as DistributedModel keeps its plans.</summary>
    private ReallocPlan Plan(ParallelLayout from, ParallelLayout to, int elementSize) =>
        _plans.GetOrAdd((from.Key, to.Key, elementSize),
                        _ => ReallocPlan.Build(from, to, ParamLayout.Factory(Config, ScalarHead), elementSize, _ => 0));

    private readonly System.Collections.Concurrent.ConcurrentDictionary<(string, string, int), ReallocPlan> _plans = new();

    /// <summary>The realloc kind that moves parameter buffer <paramref name="b"/> (ModelWorker's names).</summary>
    private static string Kind(ParameterBuffer b) => b == ParameterBuffer.Bf16 ? "params_bf16" : "params";

    private JsonObject Realloc(string kind, ParallelLayout from, ParallelLayout to, int src, int dst) => new()
    {
        ["kind"] = kind, ["from"] = WireJson.Layout(from), ["to"] = WireJson.Layout(to), ["src"] = src, ["dst"] = dst,
        ["config"] = WireJson.Config(Config), ["scalar"] = ScalarHead,
    };

    public long CopyFrom(IReplica source)
    {
        if (source is not RemoteReplica src || !ReferenceEquals(src._pool, _pool)) throw new ArgumentException($"{_name}: a worker replica copies only from replicas of the same job");
        if (src.Config != Config || src.ScalarHead != ScalarHead) throw new ArgumentException($"{_name}: replicas of different models");
        src.SendDeferredBackward();
        SendDeferredBackward();
        var kind = ParameterBuffers.Between($"{_name}: reallocation from {src._name}", src.Precision, ((IReplica)src).HoldsBf16Only, Precision, ((IReplica)this).HoldsBf16Only);
        var devices = src.Layout.Devices.Union(Layout.Devices).ToArray();
        _pool.Dispatch(What($"reallocation from {src.Layout}"), devices, "realloc", Realloc(Kind(kind), src.Layout, Layout, src._id, _id));
        var plan = Plan(src.Layout, Layout, ParameterBuffers.ElementSize(kind));
        return plan.RemoteBytes + plan.LocalBytes;
    }

    private ParallelLayout Full => ParallelLayout.Contiguous(_pool.MasterRank, 1, 1, 1);

    /// <summary>Moves one buffer kind (elements of <paramref name="elementSize"/> bytes) between the master's full copy and the shards.</summary>
    private void Move(string kind, nint full, int elementSize, bool toShards)
    {
        SendDeferredBackward();
        var (from, to) = toShards ? (Full, Layout) : (Layout, Full);
        _pool.ReallocWithMaster(What(toShards ? $"load {kind}" : $"gather {kind}"), Plan(from, to, elementSize), toShards ? full : 0, toShards ? 0 : full,
            Layout.Devices, Realloc(kind, from, to, toShards ? -1 : _id, toShards ? _id : -1));
    }

    private void CheckFull(LlamaModel full)
    {
        if (full.Config != Config || full.ScalarHead != ScalarHead) throw new ArgumentException($"{_name}: the full model has another architecture");
    }

    private static nint ParameterPointer(LlamaModel m, ParameterBuffer b) =>
        b == ParameterBuffer.Bf16 ? (nint)m.Bf16ParametersPointer : (nint)m.ParametersPointer;

    public void CopyFrom(LlamaModel full)
    {
        CheckFull(full);
        var kind = ParameterBuffers.Between($"{_name}: load from the full model", full.Precision, full.HoldsBf16Only, Precision, ((IReplica)this).HoldsBf16Only);
        Move(Kind(kind), ParameterPointer(full, kind), ParameterBuffers.ElementSize(kind), toShards: true);
    }

    public void CopyTo(LlamaModel full)
    {
        CheckFull(full);
        var kind = ParameterBuffers.Between($"{_name}: gather into the full model", Precision, ((IReplica)this).HoldsBf16Only, full.Precision, full.HoldsBf16Only);
        Move(Kind(kind), ParameterPointer(full, kind), ParameterBuffers.ElementSize(kind), toShards: false);
    }

    public void Initialise(int seed, string? checkpoint = null, bool sharedOnly = false, bool allowNonFinite = false)
    {
        SendDeferredBackward();
        var cmd = new JsonObject { ["id"] = _id, ["seed"] = seed, ["std"] = 0.02, ["shared_only"] = sharedOnly, ["allow_non_finite"] = allowNonFinite };
        // Each worker reads the checkpoint itself: the path must name the same files on every worker's node (a shared file system, or copies).
        if (checkpoint is not null) cmd["dir"] = Path.GetFullPath(checkpoint);
        _pool.Dispatch(What("initialise"), Layout.Devices, "init-shard", cmd);
    }

    /// <summary>Writes a part of the checkpoint without the master holding it and without a copy
    /// of any shard: the master creates the files (full size, the weights' headers), each worker
    /// that owns pieces of it writes them at their offsets and fsyncs (<see cref="ShardedSave"/>);
    /// the master writes config.json and the index. The path must name the same files on every
    /// worker's node (one machine, or a shared file system). The caller commits the checkpoint
    /// folder once this returns.</summary>
    public void SaveState(string path, CheckpointPart part)
    {
        SendDeferredBackward();
        bool bf16Weights = part == CheckpointPart.Weights && Precision == ModelPrecision.Bf16;
        var targets = ShardedSave.Prepare(path, part, Layout, Config, ScalarHead, bf16Weights);
        _pool.Dispatch(What($"save {Path.GetFileName(path)}"), ShardedSave.WriterDevices(Layout, Config, ScalarHead), "save-state",
                       new JsonObject { ["id"] = _id, ["part"] = CheckpointParts.Wire(part), ["targets"] = targets.ToJson() });
        ShardedSave.Finish(Path.GetFullPath(path), part, Layout, Config, ScalarHead, bf16Weights);
    }

    /// <summary>Each worker reads its slices itself: the path must name the same files on every worker's node.</summary>
    public void LoadState(string path, CheckpointPart part, bool allowNonFinite = false)
    {
        SendDeferredBackward();
        _pool.Dispatch(What($"load {Path.GetFileName(path)}"), Layout.Devices, "load-state",
                       new JsonObject { ["id"] = _id, ["part"] = CheckpointParts.Wire(part), ["path"] = Path.GetFullPath(path),
                                        ["allow_non_finite"] = allowNonFinite });
    }

    public long OptimizerStep
    {
        get
        {
            if (_optimizer is null) throw new InvalidOperationException($"{_name}: an inference replica has no optimizer");
            SendDeferredBackward();
            var steps = _pool.Dispatch(What("optimizer step count"), Layout.Devices, "optim-step", new JsonObject { ["id"] = _id })
                .Select(r => WireJson.Long(JsonNode.Parse(r), "step")).Distinct().ToArray();
            if (steps.Length != 1) throw new InvalidOperationException($"{_name}: shards disagree on the optimizer step ({string.Join(", ", steps)})");
            return _step = steps[0];
        }
        set
        {
            if (_optimizer is null) throw new InvalidOperationException($"{_name}: an inference replica has no optimizer");
            SendDeferredBackward();
            _pool.Dispatch(What("set optimizer step"), Layout.Devices, "optim-step", new JsonObject { ["id"] = _id, ["set"] = value });
            _step = value;
        }
    }

    public void MoveOptimizerState(AdamW full, bool toShards)
    {
        if (_optimizer is null) throw new InvalidOperationException($"{_name}: an inference replica has no optimizer");
        SendDeferredBackward();
        fixed (float* m = full.FirstMoment)
        fixed (float* v = full.SecondMoment)
        {
            Move("adam_m", (nint)m, 4, toShards);
            Move("adam_v", (nint)v, 4, toShards);
        }
        if (toShards)
        {
            long step = full.Step;
            _pool.Dispatch(What("set optimizer step"), Layout.Devices, "optim-step", new JsonObject { ["id"] = _id, ["set"] = step });
            _step = step;
        }
        else
        {
            var steps = _pool.Dispatch(What("optimizer step count"), Layout.Devices, "optim-step", new JsonObject { ["id"] = _id })
                .Select(r => WireJson.Long(JsonNode.Parse(r), "step")).Distinct().ToArray();
            if (steps.Length != 1) throw new InvalidOperationException($"{_name}: shards disagree on the optimizer step ({string.Join(", ", steps)})");
            full.Step = steps[0];
            _step = steps[0];
        }
    }

    public void ReleaseWeights()
    {
        if (Trainable) throw new InvalidOperationException($"{_name}: a train replica keeps its weights");
        _pool.ReleaseWeights(_id, Layout.Devices);
    }

    public void Dispose()
    {
        if (_disposed) return;
        _disposed = true;
        if (_deferredBackward is { Reads: { } reads }) _pool.Batches.Done(reads.Key, reads.Fetches, succeeded: false);
        _deferredBackward = null;  // its gradients go with the replica
        try { _pool.Dispatch(What("drop"), Layout.Devices, "drop", new JsonObject { ["id"] = _id }); }
        catch (WorkerFailedException) { /* the job is ending; the workers go with it */ }
    }
}

/// <summary>The collecting ranks' answer scores merged into prompt order (their outputs' tails:
/// rule rewards, then held-out checks, each empty when not computed).</summary>
internal sealed class SequenceScoresBuilder(int count)
{
    private float[]? _rule;
    private readonly float[] _checks = new float[count];
    private readonly double[] _grades = new double[count];
    private bool _hasGrades;
    private readonly bool[] _seen = new bool[count];
    private bool? _hasRule;
    private bool _hasChecks;

    public void Add(WireReader r, int[] ids, string what)
    {
        var rule = r.Floats();
        var checks = r.Floats();
        var grades = r.Doubles();
        if (grades.Length != 0 && grades.Length != ids.Length) throw new InvalidDataException($"{what}: {grades.Length} graded scores for {ids.Length} answers");
        if (rule.Length != 0 && rule.Length != ids.Length) throw new InvalidDataException($"{what}: {rule.Length} rule rewards for {ids.Length} answers");
        if (checks.Length != 0 && checks.Length != ids.Length) throw new InvalidDataException($"{what}: {checks.Length} checks for {ids.Length} answers");
        if (ids.Length == 0) return;
        if (_hasRule is { } h && h != (rule.Length != 0)) throw new InvalidDataException($"{what}: rule rewards from some collecting ranks only");
        _hasRule = rule.Length != 0;
        _hasChecks |= checks.Length != 0;
        _hasGrades |= grades.Length != 0;
        if (_hasRule == true) _rule ??= new float[count];
        for (int k = 0; k < ids.Length; k++)
        {
            int i = ids[k];
            if ((uint)i >= (uint)count || _seen[i]) throw new InvalidDataException($"{what}: answer {i} out of range or scored twice");
            _seen[i] = true;
            if (_rule is not null) _rule[i] = rule[k];
            if (checks.Length != 0) _checks[i] = checks[k];
            if (grades.Length != 0) _grades[i] = grades[k];
        }
    }

    public SequenceScores Build(bool checks, bool grades, string what)
    {
        if (Array.IndexOf(_seen, false) is var miss and >= 0) throw new InvalidDataException($"{what}: no collecting rank scored answer {miss}");
        if (checks != _hasChecks) throw new InvalidDataException($"{what}: held-out checks {(checks ? "missing" : "not asked for")}");
        if (grades != _hasGrades) throw new InvalidDataException($"{what}: graded scores {(grades ? "missing" : "not asked for")}");
        return new SequenceScores(_rule, checks ? _checks : null, grades ? _grades : null);
    }
}
