// Where the sequences of a generation live among the workers (the master's metadata of ReaL's data
// redistribution). A generation's collecting ranks keep the sequences they produced in a buffer
// registered for one-sided access (UCX RMA) and tell the master its descriptor. A later call's
// workers that miss sequences of their data-parallel part read them straight from a holder's
// buffer, as the first step of the call's own command: the holder's command thread takes no part
// (UCX's progress thread serves the read), so a fetch never waits behind whatever the holder is
// doing, and calls on disjoint meshes can run at once. The master sends only metadata (store ids,
// lengths, where to read); it never sends the tokens again. Each sequence is read from the
// collecting rank that generated it (the only one with a registered copy); a worker that read it
// keeps it for its later calls. Capacity is bounded: the oldest batch is forgotten (its workers are told with their next command),
// and a batch the master no longer tracks goes inline, as before, so correctness never depends on
// the store. The per-action outputs of the calls on a batch (the generation's log-probs, an
// inference call's log-probs or values) are kept the same way by the collecting ranks that
// computed them (ResidentOutput, dropped with the batch), so that a train call's loss ranks read
// them worker to worker (RemoteReplica.Derivation) instead of the master sending its copy. In
// synchronous and async runs alike those outputs are not sent to the master at all (RemoteReplica.KeptLogProbs and
// friends): the master's Model/ActionFloats fetches one from its holders if something reads it, and
// the batch is not forgotten while such an output may still be read (HoldOutput, until fetched or
// released: at the end of its iteration, or of an async batch once consumed or dropped; a stage's
// end checks that none is left, HeldOutputs).
using System.Text.Json.Nodes;
using ReaLNative.Engine.Generation;
using ReaLNative.Engine.Layout;
using ReaLNative.Engine.Model;

namespace ReaLNative.Engine.Workers;

/// <summary>One read of a fetch: destination worker <see cref="Dst"/> reads sequences
/// <see cref="Ids"/> (at token offsets <see cref="Offsets"/>, <see cref="Lengths"/> tokens each)
/// from the registered buffer (<see cref="Descriptor"/>) of worker <see cref="Src"/>.</summary>
internal sealed record BatchFetch(int Dst, int Src, string Descriptor, int[] Ids, long[] Offsets, int[] Lengths)
{
    public long Bytes => 4L * Lengths.Sum(l => (long)l);
}

/// <summary>Per-action floats of a batch's sequences that worker <see cref="Worker"/> keeps in a
/// registered buffer (<see cref="Descriptor"/>): those of the sequences with store ids
/// <see cref="Ids"/>, back to back in this order, <see cref="Floats"/> in all.</summary>
internal sealed record ResidentPart(int Worker, string Descriptor, int[] Ids, long Floats);

/// <summary>A per-action output of batch <see cref="Key"/> (the generation's log-probs, an
/// inference call's log-probs or values) that the collecting ranks which computed it keep, each its
/// part, under <see cref="Name"/>: a later call's workers read it from them (the master holds a copy
/// too, but need not send it).</summary>
internal sealed record ResidentOutput(string Key, string Name, ResidentPart[] Parts);

/// <summary>The master's map of which workers hold which sequences of which batches.</summary>
internal sealed class ResidentBatches : IResidentOutputs
{
    /// <summary>Batches tracked at once (each a generation's sequences: tokens, 4 bytes each).</summary>
    public const int Capacity = 16;

    private sealed class Entry
    {
        /// <summary>Per holder with a registered buffer: its descriptor and each sequence's token offset and length there.</summary>
        public readonly Dictionary<int, (string Descriptor, Dictionary<int, (long Offset, int Length)> At)> Sources = new();
        /// <summary>Per sequence, the workers that have it (sources and fetched copies).</summary>
        public readonly Dictionary<int, HashSet<int>> Has = new();
        public int Pins;
        /// <summary>Outputs of the batch the master left with the workers and may still read
        /// (ActionFloats not yet fetched nor released): the batch is not forgotten meanwhile.</summary>
        public int Held;
        /// <summary>The generation's log-probs, kept by its collecting ranks (null: not kept).</summary>
        public ResidentOutput? GenerationLogProbs;
    }

    /// <summary>The master's copies of resident outputs (by identity) and where the workers keep them.</summary>
    private readonly System.Runtime.CompilerServices.ConditionalWeakTable<float[], ResidentOutput> _outputs = new();
    private long _nextOutput;

    private readonly Lock _gate = new();
    private readonly LinkedList<string> _order = new();
    private readonly Dictionary<string, Entry> _batches = new(StringComparer.Ordinal);
    private readonly Dictionary<int, HashSet<string>> _forget = new();
    private long _next;
    private long _fromMaster, _betweenWorkers, _toMaster;

    /// <summary>Bytes of call inputs (batches and their per-token gradients, prompts) the master sent to workers.</summary>
    public long BytesFromMaster => Interlocked.Read(ref _fromMaster);
    /// <summary>Bytes of sequences workers read from other workers.</summary>
    public long BytesBetweenWorkers => Interlocked.Read(ref _betweenWorkers);

    /// <summary>Bytes of call outputs the master received from workers (outputs of calls, and outputs left with the workers that it fetched later).</summary>
    public long BytesToMaster => Interlocked.Read(ref _toMaster);

    public void CountFromMaster(long bytes) => Interlocked.Add(ref _fromMaster, bytes);
    public void CountToMaster(long bytes) => Interlocked.Add(ref _toMaster, bytes);
    public void CountBetweenWorkers(long bytes) => Interlocked.Add(ref _betweenWorkers, bytes);

    /// <summary>A fresh name for an output the workers keep.</summary>
    public string NewOutputName() => "o" + Interlocked.Increment(ref _nextOutput).ToString(System.Globalization.CultureInfo.InvariantCulture);

    /// <summary>Records that <paramref name="array"/> (the master's copy of a per-action output of a
    /// batch) is kept by workers as <paramref name="output"/>; ignored when the batch is no longer tracked.</summary>
    public void Attach(float[] array, ResidentOutput output)
    {
        lock (_gate)
            if (_batches.ContainsKey(output.Key)) _outputs.AddOrUpdate(array, output);
    }

    /// <summary>Records the generation's log-probs of batch <paramref name="key"/> as kept by its collecting ranks.</summary>
    public void HoldGenerationLogProbs(string key, ResidentPart[] parts)
    {
        lock (_gate)
            if (_batches.TryGetValue(key, out var e)) e.GenerationLogProbs = new ResidentOutput(key, "generation", parts);
    }

    /// <summary>Records <paramref name="flat"/> (the generation's log-probs of the sequences of
    /// <paramref name="source"/>, flattened in their order) as the log-probs its collecting ranks keep.</summary>
    public void AttachGenerationLogProbs(float[] flat, BatchSource source)
    {
        lock (_gate)
            if (_batches.TryGetValue(source.Key, out var e) && e.GenerationLogProbs is { } g
                && g.Parts.Sum(p => p.Ids.Length) == source.Ids.Length && g.Parts.SelectMany(p => p.Ids).Order().SequenceEqual(source.Ids.Order()))
                _outputs.AddOrUpdate(flat, g);
    }

    /// <summary>Whether batch <paramref name="key"/> is still tracked (its workers keep it).</summary>
    public bool Tracked(string key)
    {
        lock (_gate) return _batches.ContainsKey(key);
    }

    /// <summary>An output of batch <paramref name="key"/> stays with the workers for the master to
    /// read later: the batch is not forgotten until <see cref="UnholdOutput"/>. False when the batch is no
    /// longer tracked.</summary>
    public bool HoldOutput(string key)
    {
        lock (_gate)
        {
            if (!_batches.TryGetValue(key, out var e)) return false;
            e.Held++;
            return true;
        }
    }

    /// <summary>Outputs held (<see cref="HoldOutput"/>) and not yet unheld, over every tracked batch.</summary>
    public int HeldOutputs
    {
        get { lock (_gate) return _batches.Values.Sum(e => e.Held); }
    }

    /// <summary>Ends a <see cref="HoldOutput"/> (the output was fetched, or released unread).</summary>
    public void UnholdOutput(string key)
    {
        lock (_gate)
            if (_batches.TryGetValue(key, out var e) && e.Held > 0) e.Held--;
    }

    /// <summary>Where the workers keep <paramref name="array"/>, when they do and its batch is still tracked.</summary>
    public ResidentOutput? Find(float[] array)
    {
        lock (_gate)
            return _outputs.TryGetValue(array, out var o) && _batches.ContainsKey(o.Key) ? o : null;
    }

    /// <summary>A fresh batch key; the oldest batch beyond <see cref="Capacity"/> that no call is
    /// reading and none of whose outputs the master may still read (<see cref="HoldOutput"/>) is forgotten.</summary>
    public string NewKey()
    {
        lock (_gate)
        {
            string key = "b" + (++_next).ToString(System.Globalization.CultureInfo.InvariantCulture);
            _order.AddLast(key);
            _batches[key] = new Entry();
            for (var node = _order.First; node is not null && _order.Count > Capacity;)
            {
                var next = node.Next;
                if (_batches[node.Value] is { Pins: 0, Held: 0 })
                {
                    foreach (var w in _batches[node.Value].Has.Values.SelectMany(h => h).Distinct()) Forget(w, node.Value);
                    _batches.Remove(node.Value);
                    _order.Remove(node);
                }
                node = next;
            }
            return key;
        }
    }

    private void Forget(int worker, string key) =>
        (_forget.TryGetValue(worker, out var s) ? s : _forget[worker] = new HashSet<string>(StringComparer.Ordinal)).Add(key);

    /// <summary>Records that <paramref name="worker"/> keeps sequences <paramref name="ids"/> (of
    /// <paramref name="lengths"/> tokens, in this order in its buffer) of <paramref name="key"/> in the
    /// registered buffer <paramref name="descriptor"/>.</summary>
    public void Hold(string key, int worker, string descriptor, IReadOnlyList<int> ids, IReadOnlyList<int> lengths)
    {
        lock (_gate)
        {
            if (!_batches.TryGetValue(key, out var e)) { Forget(worker, key); return; }   // forgotten meanwhile: the worker drops it
            var at = new Dictionary<int, (long, int)>();
            long offset = 0;
            for (int k = 0; k < ids.Count; k++)
            {
                at[ids[k]] = (offset, lengths[k]);
                offset += lengths[k];
                (e.Has.TryGetValue(ids[k], out var h) ? h : e.Has[ids[k]] = new HashSet<int>()).Add(worker);
            }
            e.Sources[worker] = (descriptor, at);
        }
    }

    /// <summary>The batches <paramref name="workers"/> should drop (sent with their next command; then cleared).</summary>
    public JsonArray? TakeForgotten(IReadOnlyList<int> workers)
    {
        lock (_gate)
        {
            var keys = new SortedSet<string>(StringComparer.Ordinal);
            foreach (int w in workers)
                if (_forget.Remove(w, out var s)) keys.UnionWith(s);
            return keys.Count == 0 ? null : new JsonArray(keys.Select(k => (JsonNode)k).ToArray());
        }
    }

    /// <summary>The reference a worker resolves <paramref name="batch"/> by, and the reads that give
    /// every rank of <paramref name="layout"/> the sequences of its data-parallel part (none when they
    /// have them already); null when this pool's workers do not hold the batch (send it inline). The
    /// batch stays tracked until <see cref="Done"/>.</summary>
    public (JsonObject Ref, List<BatchFetch> Fetches)? Plan(ScoredBatch batch, ParallelLayout layout)
    {
        if (batch.Source is not { } src || !ReferenceEquals(src.Owner, this)) return null;
        int n = batch.Packed.Count;
        if (src.Ids.Length != n) throw new ArgumentException($"batch {src.Key}: {src.Ids.Length} store ids for {n} sequences");
        var lens = new int[n]; var prompts = new int[n];
        for (int i = 0; i < n; i++)
        {
            lens[i] = batch.Packed.SeqLens[i];
            prompts[i] = batch.ActionCu[i + 1] > batch.ActionCu[i] ? batch.ActionIndex[batch.ActionCu[i]] - batch.Packed.CuSeqlens[i] : lens[i];
        }
        if (src.Tails is { } tails && tails.Length != n) throw new ArgumentException($"batch {src.Key}: {tails.Length} tails for {n} sequences");
        for (int i = 0; i < n; i++)
            if (src.Tails?[i] is { } t && t.Length != lens[i] - prompts[i])
                throw new ArgumentException($"batch {src.Key} sequence {i}: a tail of {t.Length} tokens after a prompt of {prompts[i]} in a sequence of {lens[i]}");
        var parts = Split.Contiguous(lens, layout.Dp);
        lock (_gate)
        {
            if (!_batches.TryGetValue(src.Key, out var e)) return null;
            // A sequence with a tail needs the held sequence's prompt (the worker checks its length).
            for (int i = 0; i < n; i++)
                if (!e.Sources.Values.Any(s => s.At.TryGetValue(src.Ids[i], out var a) && (src.Tails?[i] is null ? a.Length == lens[i] : a.Length >= prompts[i]))) return null;
            var fetches = new Dictionary<(int Dst, int Src), List<int>>();
            for (int r = 0; r < layout.Devices.Count; r++)
            {
                int dst = layout.Devices[r];
                foreach (int i in parts[layout.Coords(r).Data])
                {
                    int id = src.Ids[i];
                    if (e.Has[id].Contains(dst)) continue;
                    int from = e.Sources.Where(s => s.Value.At.ContainsKey(id)).Min(s => s.Key);
                    (fetches.TryGetValue((dst, from), out var l) ? l : fetches[(dst, from)] = []).Add(id);
                }
            }
            var list = fetches.OrderBy(kv => kv.Key.Dst).ThenBy(kv => kv.Key.Src).Select(kv =>
            {
                var (desc, at) = e.Sources[kv.Key.Src];
                var ids = kv.Value.Distinct().ToArray();
                return new BatchFetch(kv.Key.Dst, kv.Key.Src, desc, ids, [.. ids.Select(id => at[id].Offset)], [.. ids.Select(id => at[id].Length)]);
            }).ToList();
            e.Pins++;
            var reference = new JsonObject
            {
                ["key"] = src.Key,
                ["ids"] = new JsonArray(src.Ids.Select(i => (JsonNode)i).ToArray()),
                ["lens"] = new JsonArray(lens.Select(i => (JsonNode)i).ToArray()),
                ["prompts"] = new JsonArray(prompts.Select(i => (JsonNode)i).ToArray()),
            };
            if (src.Tails is { } tl && tl.Any(t => t is not null))
                reference["tails"] = new JsonArray([.. Enumerable.Range(0, n).Where(i => tl[i] is not null).Select(i => (JsonNode)new JsonObject
                {
                    ["at"] = i, ["tokens"] = new JsonArray(tl[i]!.Select(x => (JsonNode)x).ToArray()),
                })]);
            return (reference, list);
        }
    }

    /// <summary>Ends a call's use of a planned batch: when it succeeded, the destinations now have
    /// what they read.</summary>
    public void Done(string key, IEnumerable<BatchFetch> fetches, bool succeeded)
    {
        lock (_gate)
        {
            if (!_batches.TryGetValue(key, out var e)) return;
            e.Pins--;
            if (!succeeded) return;
            foreach (var f in fetches)
            {
                foreach (int id in f.Ids) e.Has[id].Add(f.Dst);
                _betweenWorkers += f.Bytes;
            }
        }
    }

    /// <summary>The reads as a command's JSON.</summary>
    public static JsonArray Wire(IEnumerable<BatchFetch> fetches) => new(fetches.Select(f => (JsonNode)new JsonObject
    {
        ["dst"] = f.Dst, ["src"] = f.Src, ["descriptor"] = f.Descriptor,
        ["ids"] = new JsonArray(f.Ids.Select(i => (JsonNode)i).ToArray()),
        ["offsets"] = new JsonArray(f.Offsets.Select(i => (JsonNode)i).ToArray()),
        ["lengths"] = new JsonArray(f.Lengths.Select(i => (JsonNode)i).ToArray()),
    }).ToArray());
}
