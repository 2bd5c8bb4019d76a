// A model worker process: one device of an execution plan. It joins the job over the control
// plane (UCX address, its own command endpoint), then executes the master's commands one at a
// time on its command server: create / drop a replica's shard on this device, run a call's
// operation on it (inputs and outputs over UCX, only metadata in the command), reallocate
// parameters or AdamW moments between layouts (TransportRealloc), shut down. A heartbeat tells
// the master it is alive, what it is doing and its last error; a worker that cannot reach its
// master for HeartbeatLoss exits, so no worker outlives its job.
using System.Diagnostics;
using System.Text.Json.Nodes;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;
using ReaLNative.Engine.Control;
using ReaLNative.Engine.Generation;
using ReaLNative.Engine.Checkpoints;
using ReaLNative.Engine.Layout;
using ReaLNative.Engine.Model;
using ReaLNative.Engine.Tasks;
using ReaLNative.Engine.Parallelism;
using ReaLNative.Engine.Realloc;
using ReaLNative.Engine.Transport;

namespace ReaLNative.Engine.Workers;

/// <summary>How a worker process reaches its master and presents itself.</summary>
internal sealed record WorkerArgs(string Control, string Job, byte[] Secret, int Rank, int Size)
{
    /// <summary>Interface the command server binds (127.0.0.1 unless the job spans nodes).</summary>
    public string BindHost { get; init; } = "127.0.0.1";
    /// <summary>Host the master should use to reach the command server (default: <see cref="BindHost"/>).</summary>
    public string? AdvertiseHost { get; init; }
    /// <summary>Name of the node, for the master's messages.</summary>
    public string Node { get; init; } = Environment.MachineName;
}

internal sealed unsafe class ModelWorker : IDisposable
{
    /// <summary>Deadline of rendezvous and of each data-plane operation.</summary>
    public static TimeSpan OperationTimeout => TimeSpan.FromSeconds(Seconds("REALN_OP_TIMEOUT", 120));
    /// <summary>How long a worker keeps running without reaching its master.</summary>
    public static readonly TimeSpan HeartbeatLoss = TimeSpan.FromSeconds(20);
    public static readonly TimeSpan HeartbeatEvery = TimeSpan.FromSeconds(1);

    private readonly WorkerArgs _args;
    private readonly ILogger _log;
    private readonly ControlClient _client;
    private readonly UcxTransport _transport;
    private readonly ITransport _reallocTransport;
    private readonly TransportRealloc _mover;
    private readonly ControlServer _server;
    private readonly Dictionary<int, ShardReplica> _replicas = new();
    private readonly Dictionary<string, (ReallocPlan Plan, ReallocSchedule Schedule)> _plans = new();
    /// <summary>Answer scorers the master described (Tasks/SequenceScoring.cs), by id.</summary>
    private readonly Dictionary<string, SequenceScorer> _scorers = new(StringComparer.Ordinal);
    /// <summary>Sequences this worker keeps for later calls (Workers/ResidentBatches.cs): batch key ->
    /// store id -> (prompt length, prompt + generated tokens).</summary>
    private readonly Dictionary<string, Dictionary<int, (int Prompt, int[] Tokens)>> _batches = new(StringComparer.Ordinal);
    /// <summary>The registered buffers of the batches this worker generated (read by other workers).</summary>
    private readonly Dictionary<string, (IRmaRegion Region, nint Buffer)> _kept = new(StringComparer.Ordinal);
    /// <summary>Per-action outputs this worker keeps for later calls (a generation's log-probs, an
    /// inference call's log-probs or values of its part): batch key -> output name -> a native buffer
    /// registered for one-sided reads, with its float count. Dropped with the batch.</summary>
    private readonly Dictionary<string, Dictionary<string, (IRmaRegion Region, nint Buffer, long Floats)>> _outputs = new(StringComparer.Ordinal);
    private volatile string _busy = "idle";
    private volatile string? _lastError;
    private readonly ManualResetEventSlim _stop = new();
    /// <summary>How many times this worker freed its free activation blocks (`activation_cache_clear_every`).</summary>
    private int _activationCacheClears;
    /// <summary>Set once the rendezvous has connected the data plane: the master may send a command
    /// as soon as every rank registered, which can be before this rank has connected.</summary>
    private readonly ManualResetEventSlim _connected = new();
    private static volatile string? s_signal;

    /// <summary>A SIGTERM / SIGINT this process received (the whole job is usually signalled at once:
    /// a terminal's Ctrl-C, Slurm, systemd): the worker keeps serving and tells its master with the
    /// next heartbeat, so the master stops the job at a safe point and then shuts the workers down.</summary>
    public static void NoteSignal(string signal) => s_signal ??= signal;

    private ModelWorker(WorkerArgs a, ILogger log)
    {
        _args = a;
        _log = log;
        // One MessageAuth (replay window) per socket: the master's replies and its commands are
        // two sequences, both sent as "master".
        _client = new ControlClient(a.Control, new MessageAuth(a.Secret, a.Job), $"worker-{a.Rank}", log);
        _transport = new UcxTransport(a.Rank, a.Size) { Timeout = OperationTimeout };
        _reallocTransport = Tags.Realloc(_transport);
        _mover = new TransportRealloc(_reallocTransport);
        _server = new ControlServer($"tcp://{a.BindHost}:0", new MessageAuth(a.Secret, a.Job), Handle, log);
    }

    private int MasterRank => _args.Size - 1;

    /// <summary>Runs a worker until the master shuts it down (0), a command fails fatally, or the
    /// master is unreachable for <see cref="HeartbeatLoss"/> (3).</summary>
    public static int Run(WorkerArgs a, ILogger? log = null)
    {
        log ??= NullLogger.Instance;
        using var w = new ModelWorker(a, log);
        string endpoint = w._server.Endpoint;
        if (a.AdvertiseHost is { } adv) endpoint = $"tcp://{adv}:{endpoint[(endpoint.LastIndexOf(':') + 1)..]}";
        var info = new JsonObject { ["control"] = endpoint, ["node"] = a.Node, ["pid"] = Environment.ProcessId };
        Rendezvous.Join(w._client, w._transport, OperationTimeout, info.ToJsonString());
        w._baseMemory = ProcessMemory.Sample();
        w._seenPeak = w._baseMemory?.Peak ?? 0;
        if (s_memoryTrace) Console.Error.WriteLine($"worker {a.Rank} memory: after rendezvous: {w._baseMemory}");
        w._connected.Set();
        int code = w.Heartbeats();
        // Without its master a command may still be blocked in a collective (up to its deadline),
        // and disposing would wait for it: leave at once, the process's end releases everything.
        if (code != 0) Environment.Exit(code);
        return code;
    }

    private int Heartbeats()
    {
        var lastOk = Stopwatch.StartNew();
        while (!_stop.Wait(HeartbeatEvery))
        {
            try
            {
                var beat = new JsonObject { ["rank"] = _args.Rank, ["busy"] = _busy, ["error"] = _lastError };
                if (s_signal is { } sig) beat["signal"] = sig;
                string reply = _client.Request("heartbeat", beat.ToJsonString(), TimeSpan.FromSeconds(5));
                lastOk.Restart();
                if (reply == "stop")
                {
                    Console.Error.WriteLine($"worker {_args.Rank}: the master ended the job after a failure; exiting");
                    return 1;
                }
            }
            catch (Exception e) when (e is TimeoutException or InvalidOperationException)
            {
                if (lastOk.Elapsed > HeartbeatLoss)
                {
                    Console.Error.WriteLine($"worker {_args.Rank}: the master at {_args.Control} has not answered for {lastOk.Elapsed.TotalSeconds:F0} s ({e.Message}); exiting");
                    return 3;
                }
            }
        }
        Thread.Sleep(100);  // let the shutdown reply leave before the sockets close
        return 0;
    }

    // ------------------------------------------------------------------ commands

    private string Handle(ControlMessage m)
    {
        // The handler runs on the NetMQ poller thread, whose SynchronizationContext is the poller
        // itself: an await inside a command (TransportRealloc, blobs) would queue its continuation
        // behind the very handler that waits for it. Commands run without that context.
        var context = SynchronizationContext.Current;
        SynchronizationContext.SetSynchronizationContext(null);
        try { return Execute(m); }
        finally { SynchronizationContext.SetSynchronizationContext(context); }
    }

    private string Execute(ControlMessage m)
    {
        var j = m.Payload.Length == 0 ? new JsonObject() : JsonNode.Parse(m.Payload) ?? new JsonObject();
        string label = m.Type + (j["what"] is JsonNode w ? " " + w.GetValue<string>() : "");
        _busy = label;
        bool noted = m.Type is not ("ping" or "memory" or "shutdown");
        var before = noted && s_memoryTrace ? ProcessMemory.Sample() : null;   // only the trace prints it
        long started = Stopwatch.GetTimestamp(), compiled = s_memoryTrace ? System.Runtime.JitInfo.GetCompiledMethodCount() : 0;
        try
        {
            if (m.Type is not ("ping" or "memory" or "shutdown") && !_connected.Wait(OperationTimeout))
                throw new TimeoutException($"worker {_args.Rank}: its data plane did not connect within {OperationTimeout.TotalSeconds:F0} s of the master's first command");
            if (j["drop_batches"] is JsonArray drop)
                foreach (var k in drop) Drop(k!.GetValue<string>());
            // Inference replicas whose weights went stale (IReplica.ReleaseWeights): their pages go
            // before this command runs; the next reallocation into them takes pages again.
            if (j["release_weights"] is JsonArray release)
                foreach (var id in release)
                    if (_replicas.TryGetValue(id!.GetValue<int>(), out var held) && held.Optimizer is null) held.Shard.ReleaseWeights();
            // activation_cache_clear_every: the activation blocks no call holds go before this command runs
            // (the list names the workers that have not cleared yet this round).
            if (j["clear_activation_cache"] is JsonArray clear && clear.Any(r => r!.GetValue<int>() == _args.Rank))
            {
                Model.ArenaBlocks.Trim();
                _activationCacheClears++;
            }
            return m.Type switch
            {
                "create" => Create(j),
                "drop" => Drop(j),
                "op" => Op(j),
                "realloc" => Realloc(j),
                "optim-step" => OptimStep(j),
                "init-shard" => InitShard(j),
                "load-state" => LoadState(j),
                "save-state" => SaveState(j),
                "ping" => "ok",
                // peer_mapped_bytes: other workers' shared shards this one maps; the pages it has read
                // of them count in its resident set (and its peak) as well as in their owner's.
                "memory" => MemoryReport(),
                "shutdown" => Shutdown(),
                _ => throw new ArgumentException($"unknown worker command '{m.Type}'"),
            };
        }
        catch (Exception e)
        {
            _lastError = $"{m.Type}: {e.Message}";
            _log.LogError(e, "worker {Rank}: {Command} failed", _args.Rank, m.Type);
            Console.Error.WriteLine($"worker {_args.Rank}: {m.Type} failed: {e}");
            throw;
        }
        finally
        {
            _busy = "idle";
            if (noted) NoteMemory(label, before, Stopwatch.GetElapsedTime(started).TotalSeconds, System.Runtime.JitInfo.GetCompiledMethodCount() - compiled);
        }
    }

    /// <summary>Resident set after rendezvous, before the first command: the process itself (.NET
    /// runtime, librealn, OpenBLAS, UCX and their buffers), no model yet.</summary>
    private MemorySample? _baseMemory;
    /// <summary>The command during which the peak resident set (VmHWM) last rose, the peak before it
    /// and the resident set after it.</summary>
    private (string Command, long PeakBefore, MemorySample After)? _peakSetBy;
    /// <summary>The peak (VmHWM) of the last sample: one read of /proc per command, after it (a rise
    /// between two commands, by a background thread, counts to the next one).</summary>
    private long _seenPeak;
    private readonly Lock _memoryGate = new();
    private static readonly bool s_memoryTrace = Environment.GetEnvironmentVariable("REALN_WORKER_MEMORY_TRACE") == "1";

    /// <summary>Notes the peak after a command; with REALN_WORKER_MEMORY_TRACE=1 prints the command's memory before and
    /// after, its wall time and the methods this process compiled at run time meanwhile (code ReadyToRun did not cover).</summary>
    private void NoteMemory(string command, MemorySample? before, double seconds, long compiledMethods)
    {
        if (ProcessMemory.Sample() is not { } after) return;
        lock (_memoryGate)
        {
            if (after.Peak > _seenPeak) _peakSetBy = (command, _seenPeak, after);
            _seenPeak = Math.Max(_seenPeak, after.Peak);
        }
        if (s_memoryTrace)
            Console.Error.WriteLine($"worker {_args.Rank} memory: {command} ({1e3 * seconds:F1} ms, {compiledMethods} methods compiled): before {before}; after {after}; activation arenas {Model.ArenaBlocks.AllocatedBytes / 1e6:F1} MB ({Model.ArenaBlocks.FreeBytes / 1e6:F1} free), managed heap committed {GC.GetGCMemoryInfo().TotalCommittedBytes / 1e6:F1} MB");
    }

    private string MemoryReport()
    {
        var o = new JsonObject { ["peak_rss_bytes"] = ProcessMemory.PeakRssBytes(), ["peer_mapped_bytes"] = _mover.PeerMappedBytes, ["activation_arena_bytes"] = Model.ArenaBlocks.AllocatedBytes,
                              ["activation_arena_held_bytes"] = Model.ArenaBlocks.AllocatedBytes - Model.ArenaBlocks.FreeBytes,
                              ["activation_arena_peak_bytes"] = Model.ArenaBlocks.PeakAllocatedBytes,
                              ["activation_cache_clears"] = _activationCacheClears,
                              // weights of inference replicas given back between their calls (IReplica.ReleaseWeights)
                              ["released_weight_bytes"] = _replicas.Values.Where(r => r.Shard.WeightsReleased).Sum(r => r.Shard.WeightBytes) };
        if (_baseMemory is { } b) o["base_rss_bytes"] = b.Rss;
        (string Command, long PeakBefore, MemorySample After)? peakSetBy;
        lock (_memoryGate) peakSetBy = _peakSetBy;
        if (peakSetBy is { } p)
            o["peak_set_by"] = new JsonObject { ["command"] = p.Command, ["peak_before_bytes"] = p.PeakBefore, ["rss_after_bytes"] = p.After.Rss, ["shmem_after_bytes"] = p.After.Shmem };
        return o.ToJsonString();
    }

    private string Shutdown()
    {
        _stop.Set();
        return "ok";
    }

    private ShardReplica Replica(JsonNode j)
    {
        int id = WireJson.Int(j, "id");
        return _replicas.TryGetValue(id, out var r) ? r : throw new ArgumentException($"worker {_args.Rank} holds no shard of replica {id}");
    }

    private string Create(JsonNode j)
    {
        int id = WireJson.Int(j, "id");
        if (_replicas.ContainsKey(id)) throw new ArgumentException($"replica {id} exists");
        var layout = WireJson.Layout(j["layout"]);
        int rank = layout.Devices.ToList().IndexOf(_args.Rank);
        if (rank < 0) throw new ArgumentException($"replica {id}'s layout {layout} does not use device {_args.Rank}");
        int group = WireJson.Int(j, "group");
        if (group < 0 || group + ShardComm.GroupIdsNeeded(layout) > Tags.MaxGroups) throw new ArgumentException($"group ids {group}.. outside the {Tags.MaxGroups} a job holds");
        var optim = j["optimizer"] is { } o ? WireJson.Optimizer(o) : null;
        // The free activation blocks go first: the new shards take their place rather than add to them
        // (a checkpoint's temporary writers are created between calls, when no activation is live).
        Model.ArenaBlocks.Trim();
        var precision = (string?)j["precision"] switch
        {
            null or "fp32" => ModelPrecision.Fp32,
            "bf16" => ModelPrecision.Bf16,
            var other => throw new ArgumentException($"replica {id}: precision '{other}' is not one of fp32, bf16"),
        };
        _replicas[id] = new ShardReplica(_transport, WireJson.Config(j["config"]), j["scalar"]!.GetValue<bool>(), layout, rank, group,
            WireJson.Int(j, "micro"), optim is null ? null : optim.Create, precision, sharedParameters: _mover.SharedMemory);
        return "ok";
    }

    private string Drop(JsonNode j)
    {
        _lossInputs.Remove(WireJson.Int(j, "id"));
        if (_replicas.Remove(WireJson.Int(j, "id"), out var r)) r.Dispose();
        return "ok";
    }

    /// <summary>Initialises this worker's shard of a replica itself (per-tensor seeded streams, then
    /// its slices of an HF checkpoint by byte range when "dir" is given).</summary>
    private string InitShard(JsonNode j)
    {
        Replica(j).Initialise(WireJson.Int(j, "seed"), (float)WireJson.Num(j, "std"), (string?)j["dir"],
                              j["shared_only"]?.GetValue<bool>() ?? false, j["allow_non_finite"]?.GetValue<bool>() ?? false);
        return "ok";
    }

    /// <summary>Reads this worker's slices of a checkpoint part by byte range.</summary>
    private string LoadState(JsonNode j)
    {
        Replica(j).LoadState(CheckpointParts.FromWire(WireJson.Str(j, "part")), WireJson.Str(j, "path"), j["allow_non_finite"]?.GetValue<bool>() ?? false);
        return "ok";
    }

    /// <summary>Writes this worker's pieces of a checkpoint part into the files the master created
    /// (its slices at their offsets: <see cref="ShardReplica.SaveState"/>), fsynced.</summary>
    private string SaveState(JsonNode j)
    {
        var targets = SaveTargets.FromJson(j["targets"]);
        // Fault injection (tests): REALN_FAILPOINT=save-state:TEXT kills this worker (SIGKILL) when it is
        // to write a path containing TEXT: a worker lost in the middle of a sharded checkpoint write.
        if (Environment.GetEnvironmentVariable("REALN_FAILPOINT") is { } fp && fp.StartsWith("save-state:", StringComparison.Ordinal)
            && targets.At.Values.Any(t => t.Path.Contains(fp["save-state:".Length..], StringComparison.Ordinal)))
            Process.GetCurrentProcess().Kill();
        Replica(j).SaveState(CheckpointParts.FromWire(WireJson.Str(j, "part")), targets);
        return "ok";
    }

    private string OptimStep(JsonNode j)
    {
        var o = Replica(j).Optimizer ?? throw new ArgumentException("an inference replica has no optimizer");
        if (j["set"] is { } s) o.Step = s.GetValue<long>();
        return new JsonObject { ["step"] = o.Step }.ToJsonString();
    }

    private byte[] Input(JsonNode j, string what)
    {
        long t0 = Stopwatch.GetTimestamp();
        var b = Wait(Blobs.RecvAsync(_transport, MasterRank, WireJson.Long(j, "tag_in"), what), what);
        _inputSeconds += Stopwatch.GetElapsedTime(t0).TotalSeconds;
        return b;
    }

    // Seconds of the current operation spent waiting for its input blob and sending its output.
    private double _inputSeconds, _outputSeconds;

    private void Output(JsonNode j, ShardReplica r, Func<WireWriter, WireWriter>? write, string what)
    {
        if (!r.Collects) return;
        if (write is null) throw new InvalidOperationException($"{what}: a collecting rank produced no output");
        long t0 = Stopwatch.GetTimestamp();
        try { Wait(Blobs.SendAsync(_transport, MasterRank, WireJson.Long(j, "tag_out"), write(new WireWriter()).ToArray()), what); }
        finally { _outputSeconds += Stopwatch.GetElapsedTime(t0).TotalSeconds; }
    }

    private static T Wait<T>(Task<T> t, string what)
    {
        Wait((Task)t, what);
        return t.Result;
    }

    private static void Wait(Task t, string what)
    {
        if (!t.Wait(OperationTimeout + TimeSpan.FromSeconds(5)))
            throw new TimeoutException($"{what}: the data plane did not complete within {OperationTimeout.TotalSeconds:F0} s");
        if (t.IsFaulted) throw t.Exception!.InnerException!;
    }

    // ------------------------------------------------------------------ scoring where the tokens are

    /// <summary>The scorer of a generation's "score" request and the examples of this rank's share
    /// (their answers read from <paramref name="share"/> after its prompts, by batch id; null without a request):
    /// the scorer is described once per id (the first request that names it), built once and kept.</summary>
    private (SequenceScorer Scorer, Dictionary<int, TaskExample> Examples, bool Checks, bool Grades, bool Rule)? Scoring(JsonNode? j, WireReader share, int[] ids, string op)
    {
        if (j is null) return null;
        string id = (string?)j["scorer_id"] ?? throw new ArgumentException($"{op}: score without 'scorer_id'");
        if (!_scorers.TryGetValue(id, out var scorer))
        {
            if (j["scorer"] is not { } d) throw new ArgumentException($"{op}: scorer '{id}' was never described to worker {_args.Rank}");
            _scorers[id] = scorer = SequenceScorer.FromDescription(d, $"{op}: score.scorer");
        }
        // The pure rules read an example's answer only (SequenceScorer): the prompt text and metadata stay on the master.
        var answers = share.Answers();
        if (answers.Length != ids.Length) throw new ArgumentException($"{op}: score: {answers.Length} answers for a share of {ids.Length} prompts");
        var ex = answers.Select(a => SequenceScorer.Example(a)).ToArray();
        return (scorer, ids.Select((id, k) => (id, k)).ToDictionary(x => x.id, x => ex[x.k]), j["checks"]?.GetValue<bool>() ?? throw new ArgumentException($"{op}: score without 'checks'"), j["grades"]?.GetValue<bool>() == true, j["rule"]?.GetValue<bool>() != false);
    }

    /// <summary>Appends the scores of this rank's answers <paramref name="g"/> (rule rewards,
    /// held-out checks, graded scores, each empty when not computed) to its generation output.</summary>
    private static WireWriter Scored(WireWriter w, (int[] Ids, GenerationResult Result) g, (SequenceScorer Scorer, Dictionary<int, TaskExample> Examples, bool Checks, bool Grades, bool Rule)? score, string op)
    {
        if (score is not { } s) return w;
        var sc = s.Scorer.Score([.. g.Ids.Select(i => s.Examples[i])], g.Result.NewTokens, g.Result.EndedWithEos, s.Checks, s.Grades, s.Rule);
        return w.Floats(sc.Rule ?? []).Floats(sc.Checks ?? []).Doubles(sc.Grades ?? []);
    }

    // ------------------------------------------------------------------ batches between workers

    /// <summary>Keeps a generation's sequences (this rank's <paramref name="ids"/>) under
    /// <paramref name="key"/>: for this worker's own calls, and in one native buffer registered for
    /// one-sided reads by the other workers (their tokens back to back, in <paramref name="ids"/>
    /// order; <paramref name="prompts"/> are theirs, in the same order). Returns the buffer's
    /// descriptor (base64), null when this rank generated no sequence.</summary>
    private string? Keep(string key, int[] ids, IReadOnlyList<int[]> prompts, GenerationResult result)
    {
        Drop(key);
        var held = new Dictionary<int, (int, int[])>();
        for (int k = 0; k < ids.Length; k++) held[ids[k]] = (prompts[k].Length, result.Sequence(k));
        _batches[key] = held;
        _keptLogProbs = KeepOutput(key, "generation", [.. Enumerable.Range(0, ids.Length).SelectMany(k => result.LogProbs[k])]);
        long tokens = ids.Select((id, k) => (long)held[id].Item2.Length).Sum();
        if (tokens == 0) return null;
        nint buffer = (nint)System.Runtime.InteropServices.NativeMemory.Alloc((nuint)(4 * tokens));
        try
        {
            long at = 0;
            foreach (int id in ids)
            {
                var t = held[id].Item2;
                t.CopyTo(new Span<int>((int*)buffer + at, t.Length));
                at += t.Length;
            }
            var region = ((IRmaTransport)_transport).Register(buffer, 4 * tokens);
            _kept[key] = (region, buffer);
            return Convert.ToBase64String(region.Descriptor);
        }
        catch
        {
            System.Runtime.InteropServices.NativeMemory.Free((void*)buffer);
            throw;
        }
    }

    /// <summary>Keeps <paramref name="floats"/> (this rank's part of a per-action output of batch
    /// <paramref name="key"/>, its sequences' values back to back) under <paramref name="name"/> in a
    /// native buffer registered for one-sided reads; returns its descriptor (base64), "" when the
    /// part is empty (nothing to read).</summary>
    private string KeepOutput(string key, string name, float[] floats)
    {
        var of = _outputs.TryGetValue(key, out var o) ? o : _outputs[key] = new(StringComparer.Ordinal);
        if (of.Remove(name, out var old)) { old.Region.Dispose(); System.Runtime.InteropServices.NativeMemory.Free((void*)old.Buffer); }
        if (floats.Length == 0) return "";
        nint buffer = (nint)System.Runtime.InteropServices.NativeMemory.Alloc((nuint)(4L * floats.Length));
        try
        {
            floats.CopyTo(new Span<float>((float*)buffer, floats.Length));
            var region = ((IRmaTransport)_transport).Register(buffer, 4L * floats.Length);
            of[name] = (region, buffer, floats.Length);
            return Convert.ToBase64String(region.Descriptor);
        }
        catch
        {
            System.Runtime.InteropServices.NativeMemory.Free((void*)buffer);
            throw;
        }
    }

    /// <summary>What a collecting rank sends of inference output <paramref name="o"/>: all of it, or with
    /// "lazy" (the rank keeps the per-action floats, <paramref name="kept"/>) the last scores only, and
    /// with "no_last" too (the caller reads no last score: critic_inf) not even those; with
    /// "last_only" the last scores only, nothing kept.</summary>
    private static ShardOutput Lazy(JsonNode j, ShardOutput o, string? kept, string op)
    {
        // "last_only": the caller reads the sequence scores alone (IReplica.SequenceScores).
        if (j["last_only"]?.GetValue<bool>() == true)
            return j["lazy"] is not null || j["no_last"] is not null ? throw new ArgumentException($"{op}: 'last_only' with 'lazy' or 'no_last'") : o with { Actions = [] };
        bool noLast = j["no_last"]?.GetValue<bool>() == true;
        if (j["lazy"]?.GetValue<bool>() != true)
            return noLast ? throw new ArgumentException($"{op}: 'no_last' without 'lazy': the last scores are sent with the per-action output") : o;
        if (kept is null) throw new ArgumentException($"{op}: 'lazy' without 'keep_output' of a batch by reference: the output would be neither sent nor kept");
        return o with { Actions = [], Last = noLast ? [] : o.Last };
    }

    /// <summary>Forgets batch <paramref name="key"/> (its registered buffer too).</summary>
    private void Drop(string key)
    {
        if (_outputs.Remove(key, out var outputs))
            foreach (var o in outputs.Values) { o.Region.Dispose(); System.Runtime.InteropServices.NativeMemory.Free((void*)o.Buffer); }
        _batches.Remove(key);
        if (_kept.Remove(key, out var k))
        {
            k.Region.Dispose();
            System.Runtime.InteropServices.NativeMemory.Free((void*)k.Buffer);
        }
    }

    /// <summary>Reads the sequences this worker misses from the holders' registered buffers (the
    /// command's "fetch" entries for this worker; all reads posted at once, each with the data plane's
    /// deadline) and keeps them under the batch's key.</summary>
    private void Fetch(JsonNode j, JsonNode reference, string op)
    {
        if (j["fetch"] is not JsonArray reads) return;
        long t0 = Stopwatch.GetTimestamp();
        string key = WireJson.Str(reference, "key");
        var promptOf = new Dictionary<int, int>();
        var refIds = reference["ids"]!.AsArray(); var refPrompts = reference["prompts"]!.AsArray();
        for (int i = 0; i < refIds.Count; i++) promptOf[refIds[i]!.GetValue<int>()] = refPrompts[i]!.GetValue<int>();
        // Every entry is checked before the first read is posted (a read in flight cannot be cancelled).
        var mine = new List<(int Src, string Descriptor, List<(int Id, long Offset, int Length)> Seqs)>();
        foreach (var f in reads)
        {
            if (WireJson.Int(f, "dst") != _args.Rank) continue;
            var ids = f!["ids"]!.AsArray(); var offsets = f["offsets"]!.AsArray(); var lengths = f["lengths"]!.AsArray();
            if (offsets.Count != ids.Count || lengths.Count != ids.Count) throw new ArgumentException($"{op}: batch {key}: a read of {ids.Count} ids, {offsets.Count} offsets, {lengths.Count} lengths");
            var seqs = new List<(int, long, int)>();
            for (int k = 0; k < ids.Count; k++)
            {
                int id = ids[k]!.GetValue<int>(), len = lengths[k]!.GetValue<int>();
                long offset = offsets[k]!.GetValue<long>();
                if (!promptOf.ContainsKey(id)) throw new ArgumentException($"{op}: batch {key}: a read of sequence {id}, which is not in the call's batch");
                if (len < 1 || offset < 0) throw new ArgumentException($"{op}: batch {key} sequence {id}: tokens [{offset}, +{len})");
                seqs.Add((id, offset, len));
            }
            mine.Add((WireJson.Int(f, "src"), WireJson.Str(f, "descriptor"), seqs));
        }
        var rma = (IRmaTransport)_transport;
        var remotes = new List<IRemoteRegion>();
        var pending = new List<(Task Read, int Id, int[] Tokens, int Src)>();
        try
        {
            foreach (var (src, descriptor, seqs) in mine)
            {
                var remote = rma.Attach(src, Convert.FromBase64String(descriptor));
                remotes.Add(remote);
                if (seqs.FirstOrDefault(q => 4 * (q.Offset + q.Length) > remote.Bytes) is { Length: > 0 } bad)
                    throw new ArgumentException($"{op}: batch {key} sequence {bad.Id}: tokens [{bad.Offset}, +{bad.Length}) outside worker {src}'s buffer of {remote.Bytes / 4}");
            }
            for (int m = 0; m < mine.Count; m++)
                foreach (var (id, offset, len) in mine[m].Seqs)
                {
                    // On the pinned object heap (never moved) and in `pending` until the read completed;
                    // a read still in flight after a failure keeps its array for good (below).
                    var tokens = GC.AllocateUninitializedArray<int>(len, pinned: true);
                    pending.Add((rma.GetAsync(remotes[m], 4 * offset, System.Runtime.InteropServices.Marshal.UnsafeAddrOfPinnedArrayElement(tokens, 0), 4L * len), id, tokens, mine[m].Src));
                }
            var held = _batches.TryGetValue(key, out var b) ? b : _batches[key] = new Dictionary<int, (int, int[])>();
            foreach (var (read, id, tokens, src) in pending)
            {
                Wait(read, $"{op}: batch {key}: read sequence {id} from worker {src}");
                held[id] = (promptOf[id], tokens);
            }
        }
        catch
        {
            // UCX cannot cancel an RMA read: one still running writes into its array later, and
            // uses its remote key until then (the transport destroys that at its disposal).
            AbandonedBuffers.KeepUnfinished(pending.Select(p => (p.Read, (object)p.Tokens)), remotes);
            throw;
        }
        finally
        {
            foreach (var r in remotes) r.Dispose();
            _inputSeconds += Stopwatch.GetElapsedTime(t0).TotalSeconds;
        }
    }

    /// <summary>The input blob of a backward: the batch when it is inline, and on the last pipeline
    /// stage the per-token gradients; none on another stage's rank when the batch went by reference.</summary>
    private WireReader? BackwardInput(JsonNode j, ShardReplica r, string op) =>
        j["batch_ref"] is null || r.ComputesLoss ? new WireReader(Input(j, op), op) : null;

    /// <summary>Per-token gradients of this rank's data-parallel part of <paramref name="b"/> (per
    /// action, or per sequence), as RemoteReplica.WithGradients writes them, placed in a whole-batch
    /// array (zeros outside the part, which this rank never reads); an <paramref name="optional"/>
    /// gradient may be empty (none).</summary>
    private static float[] Gradients(WireReader rd, ScoredBatch b, ShardReplica r, bool perAction, bool optional, string op)
    {
        var part = Split.Contiguous(b.Packed.SeqLens, r.Layout.Dp)[r.Comm.Data];
        int first = part[0], end = part[^1] + 1;
        int at = perAction ? b.ActionCu[first] : first, count = perAction ? b.ActionCu[end] - b.ActionCu[first] : end - first;
        var slice = rd.Floats();
        if (optional && slice.Length == 0) return [];
        if (slice.Length != count)
            throw new InvalidDataException($"{op}: {slice.Length} {(perAction ? "action" : "sequence")} gradients for data-parallel part {r.Comm.Data} (sequences {first}..{end - 1}), which has {count}");
        var whole = new float[perAction ? b.Actions : b.Packed.Count];
        slice.CopyTo(whole, at);
        return whole;
    }

    /// <summary>The input blob of a train step with its loss: the batch when it is inline, and on the
    /// last pipeline stage the part of the loss inputs when the command says they are sent.</summary>
    private WireReader? StepInput(JsonNode j, ShardReplica r, string op) =>
        j["batch_ref"] is null || (r.ComputesLoss && (j["loss_inputs"]?["sent"]?.GetValue<bool>() ?? false)) ? new WireReader(Input(j, op), op) : null;

    /// <summary>The loss inputs of the train call in progress, by replica: their key, the inputs
    /// (arrays over the call's whole rollout, filled at this rank's parts) and which sequences
    /// (policy) or actions (value) this rank holds.</summary>
    private readonly Dictionary<int, (string Key, object Inputs, bool[] Held)> _lossInputs = new();
    /// <summary>The key of the derived off-policy loss inputs held per replica (their ratio base comes minibatch by minibatch).</summary>
    private readonly Dictionary<int, string> _offPolicy = new();

    /// <summary>The held loss inputs of replica <paramref name="id"/> under the command's key, or new
    /// ones from <paramref name="create"/> when the command sends a first part of a new key.</summary>
    private (T Inputs, bool[] Held) Held<T>(int id, JsonNode li, bool sent, Func<(T, bool[])> create, string op) where T : class
    {
        string key = WireJson.Str(li, "key");
        if (_lossInputs.TryGetValue(id, out var h) && h.Key == key && h.Inputs is T held) return (held, h.Held);
        if (!sent) throw new ArgumentException($"{op}: worker {_args.Rank} holds no loss inputs '{key}' of replica {id} (its part was never sent)");
        var (inputs, have) = create();
        _lossInputs[id] = (key, inputs, have);
        return (inputs, have);
    }

    /// <summary>A policy step's loss inputs: on a rank of the last stage the call's held inputs, with
    /// the part the command sends placed at its rollout indices (RemoteReplica.PolicyStep writes it:
    /// keep flags, advantages, ratio bases, behaviour and reference log-probs of this rank's
    /// sequences), or derived here ("derive", the call's first command: <see cref="Derive"/>; an
    /// off-policy call's ratio base then comes with each minibatch's first step: the forward's own
    /// for "from_forward", else read from the workers that keep it, "proximal"); elsewhere empty
    /// arrays (the rank never reads them).</summary>
    private PolicyLossInputs PolicyInputs(JsonNode j, WireReader? rd, ScoredBatch b, ShardReplica r, string op)
    {
        var li = j["loss_inputs"] ?? throw new ArgumentException($"{op}: no 'loss_inputs'");
        var options = new PolicyLossOptions(WireJson.Num(li, "clip_low"), WireJson.Num(li, "clip_high"), WireJson.Str(li, "aggregation"),
                                            WireJson.Num(li, "kl_coef"), WireJson.Num(li, "behaviour_weight_cap"));
        options.Check();
        if (!r.ComputesLoss) return new PolicyLossInputs([], [], [], [], [], options);
        int actions = WireJson.Int(li, "actions"), sequences = WireJson.Int(li, "sequences"), s0 = WireJson.Int(j, "s0"), a0 = WireJson.Int(j, "a0");
        bool sent = li["sent"]?.GetValue<bool>() ?? false, behaviour = li["behaviour"]?.GetValue<bool>() ?? false, reference = li["ref"]?.GetValue<bool>() ?? false;
        if (actions < 0 || sequences < 0 || s0 < 0 || a0 < 0 || s0 + b.Packed.Count > sequences || a0 + b.Actions > actions)
            throw new ArgumentException($"{op}: minibatch sequences [{s0}, +{b.Packed.Count}) and actions [{a0}, +{b.Actions}) outside the call's {sequences} sequences and {actions} actions");
        bool derive = li["derive"] is not null;
        var (inputs, held) = Held(WireJson.Int(j, "id"), li, sent, () =>
        {
            if (!derive)
                return (new PolicyLossInputs(new float[actions], new float[actions], behaviour ? new float[actions] : [], reference ? new float[actions] : [], new bool[sequences], options),
                        new bool[sequences]);
            // RL: this rank derives the advantages of the whole rollout itself; the k3 term's
            // reference log-probs are read with the rest. On-policy the ratio base is the generation's
            // log-probs; off-policy ("behaviour": the decoupled objective) those are the behaviour
            // log-probs, and the ratio base, the proximal log-probs, comes minibatch by minibatch:
            // minibatch 0's from its first step's forward, the others read with their first step ("proximal").
            var reader = rd ?? throw new ArgumentException($"{op}: loss inputs sent without an input blob");
            var keep = Flags(reader.Bytes(), sequences, "keep flags", op);
            var d = Derive(li["derive"]!, reader, r, sequences, actions, op);
            var all = new bool[sequences]; Array.Fill(all, !behaviour);
            if (behaviour) _offPolicy[WireJson.Int(j, "id")] = WireJson.Str(li, "key");
            return (behaviour ? new PolicyLossInputs(d.Advantages, new float[actions], d.LogProbs, reference ? d.Ref : [], keep, options)
                              : new PolicyLossInputs(d.Advantages, d.LogProbs, [], reference ? d.Ref : [], keep, options), all);
        }, op);
        if (inputs.Advantages.Length != actions || inputs.Keep.Length != sequences || inputs.Options != options
            || (inputs.Behaviour.Length > 0) != behaviour || (inputs.Ref.Length > 0) != reference)
            throw new ArgumentException($"{op}: loss inputs '{WireJson.Str(li, "key")}' held with other sizes or options than the command's");
        var (first, end) = r.LossPart(b);
        int p0 = a0 + b.ActionCu[first], pn = b.ActionCu[end] - b.ActionCu[first];
        if (sent && !derive)
        {
            var reader = rd ?? throw new ArgumentException($"{op}: loss inputs sent without an input blob");
            var keep = reader.Bytes();
            if (keep.Length != end - first) throw new InvalidDataException($"{op}: {keep.Length} keep flags for data-parallel part {r.Comm.Data} (sequences {first}..{end - 1})");
            for (int k = 0; k < keep.Length; k++)
                inputs.Keep[s0 + first + k] = keep[k] switch { 0 => false, 1 => true, var x => throw new InvalidDataException($"{op}: keep flag {x}") };
            void Place(float[] into, string what, bool optional)
            {
                var part = reader.Floats();
                if (optional && into.Length == 0 && part.Length == 0) return;
                if (part.Length != pn) throw new InvalidDataException($"{op}: {part.Length} {what} for data-parallel part {r.Comm.Data}, which has {pn} actions");
                part.CopyTo(into, p0);
            }
            Place(inputs.Advantages, "advantages", false);
            Place(inputs.RatioBase, "ratio bases", false);
            Place(inputs.Behaviour, "behaviour log-probs", true);
            Place(inputs.Ref, "reference log-probs", true);
            held.AsSpan(s0 + first, end - first).Fill(true);
        }
        if (_offPolicy.TryGetValue(WireJson.Int(j, "id"), out var offKey) && offKey == WireJson.Str(li, "key"))
        {
            // An off-policy minibatch's ratio base: this step's forward writes this rank's part, or the proximal log-probs are read now.
            if (j["from_forward"]?.GetValue<bool>() == true) held.AsSpan(s0 + first, end - first).Fill(true);
            if (li["proximal"] is JsonArray parts)
            {
                var got = ReadKept([("proximal log-probs", parts, inputs.RatioBase)], sequences, s =>
                    s >= s0 && s < s0 + b.Packed.Count ? (a0 + b.ActionCu[s - s0], b.ActionCu[s - s0 + 1] - b.ActionCu[s - s0])
                    : throw new ArgumentException($"{op}: proximal log-probs of sequence {s}, outside the minibatch's sequences [{s0}, +{b.Packed.Count})"), "proximal", op)[0];
                for (int s = s0; s < s0 + b.Packed.Count; s++)
                    if (!got[s]) throw new ArgumentException($"{op}: no part holds the proximal log-probs of sequence {s}");
                held.AsSpan(s0, b.Packed.Count).Fill(true);
            }
        }
        else if (li["proximal"] is not null) throw new ArgumentException($"{op}: 'proximal' log-probs for loss inputs that are not derived off-policy ('derive' with 'behaviour')");
        if (held.AsSpan(s0 + first, end - first).Contains(false))
            throw new ArgumentException($"{op}: worker {_args.Rank} holds no loss inputs of sequences {s0 + first}..{s0 + end - 1} (its part of this minibatch was never sent)");
        return inputs;
    }

    /// <summary>A value step's loss inputs (old values and returns of this rank's part), as <see cref="PolicyInputs"/>.</summary>
    private ValueLossInputs ValueInputs(JsonNode j, WireReader? rd, ScoredBatch b, ShardReplica r, string op)
    {
        var li = j["loss_inputs"] ?? throw new ArgumentException($"{op}: no 'loss_inputs'");
        double clipEps = WireJson.Num(li, "clip_eps");
        if (!r.ComputesLoss) return new ValueLossInputs([], [], clipEps);
        int actions = WireJson.Int(li, "actions"), a0 = WireJson.Int(j, "a0");
        bool sent = li["sent"]?.GetValue<bool>() ?? false;
        if (actions < 0 || a0 < 0 || a0 + b.Actions > actions)
            throw new ArgumentException($"{op}: minibatch actions [{a0}, +{b.Actions}) outside the call's {actions} actions");
        bool derive = li["derive"] is not null;
        var (inputs, held) = Held(WireJson.Int(j, "id"), li, sent, () =>
        {
            if (!derive) return (new ValueLossInputs(new float[actions], new float[actions], clipEps), new bool[actions]);
            // PPO: this rank derives the returns of the whole rollout itself; the old values are the critic's inference values.
            var reader = rd ?? throw new ArgumentException($"{op}: loss inputs sent without an input blob");
            var d = Derive(li["derive"]!, reader, r, WireJson.Int(li, "sequences"), actions, op);
            var all = new bool[actions]; Array.Fill(all, true);
            return (new ValueLossInputs(d.Values, d.Returns, clipEps), all);
        }, op);
        if (inputs.OldValues.Length != actions || inputs.ClipEps != clipEps)
            throw new ArgumentException($"{op}: loss inputs '{WireJson.Str(li, "key")}' held with other sizes or options than the command's");
        var (first, end) = r.LossPart(b);
        int p0 = a0 + b.ActionCu[first], pn = b.ActionCu[end] - b.ActionCu[first];
        if (sent && !derive)
        {
            var reader = rd ?? throw new ArgumentException($"{op}: loss inputs sent without an input blob");
            foreach (var (into, what) in new[] { (inputs.OldValues, "old values"), (inputs.Returns, "returns") })
            {
                var part = reader.Floats();
                if (part.Length != pn) throw new InvalidDataException($"{op}: {part.Length} {what} for data-parallel part {r.Comm.Data}, which has {pn} actions");
                part.CopyTo(into, p0);
            }
            held.AsSpan(p0, pn).Fill(true);
        }
        if (held.AsSpan(p0, pn).Contains(false))
            throw new ArgumentException($"{op}: worker {_args.Rank} holds no loss inputs of actions {p0}..{p0 + pn - 1} (its part of this minibatch was never sent)");
        return inputs;
    }

    // The kept generation log-probs and the derived KL of the current operation, for its reply.
    private string? _keptLogProbs;
    private double? _derivedKl;

    private static bool[] Flags(byte[] bytes, int count, string what, string op)
    {
        if (bytes.Length != count) throw new InvalidDataException($"{op}: {bytes.Length} {what} for {count} sequences");
        return [.. bytes.Select(x => x switch { 0 => false, 1 => true, _ => throw new InvalidDataException($"{op}: {what}: value {x}") })];
    }

    /// <summary>
    /// Reads per-action outputs that workers keep into this rank's arrays: per array, its parts (the
    /// holder "src", the output's batch "key" and "name", the holder's registered "descriptor" and the
    /// rollout indices "seqs" of its sequences, in the order it keeps them), each sequence s placed at
    /// <paramref name="place"/>(s) (action offset, actions) of the array; this worker's own parts are
    /// copied. Every read is posted at once and waited for with the data plane's deadline; a failed
    /// holder fails the operation naming it. Which sequences each array got, per array.
    /// </summary>
    private bool[][] ReadKept(IReadOnlyList<(string Name, JsonArray Parts, float[] Into)> arrays, int sequences, Func<int, (int At, int Length)> place, string what, string op)
    {
        var covered = arrays.Select(_ => new bool[sequences]).ToArray();
        var rma = (IRmaTransport)_transport;
        var remotes = new List<IRemoteRegion>();
        var pending = new List<(Task Read, float[] Into, int Array, int[] Seqs, int Src)>();
        long t0 = Stopwatch.GetTimestamp();
        try
        {
            var local = new List<(float[] Floats, int Array, int[] Seqs)>();
            for (int a = 0; a < arrays.Count; a++)
            {
                string name0 = arrays[a].Name;
                foreach (var part in arrays[a].Parts)
                {
                    int src = WireJson.Int(part, "src");
                    var seqs = part!["seqs"]?.AsArray().Select(x => x!.GetValue<int>()).ToArray() ?? throw new ArgumentException($"{op}: {what}: a part of '{name0}' without 'seqs'");
                    long floats = 0;
                    foreach (int s in seqs)
                    {
                        if ((uint)s >= (uint)sequences) throw new ArgumentException($"{op}: {what}: '{name0}' of sequence {s}, outside the rollout's {sequences}");
                        if (covered[a][s]) throw new ArgumentException($"{op}: {what}: '{name0}' of sequence {s} from two parts");
                        covered[a][s] = true;
                        floats += place(s).Length;
                    }
                    if (floats == 0) continue;
                    string key = WireJson.Str(part, "key"), name = WireJson.Str(part, "name");
                    if (src == _args.Rank)
                    {
                        if (!_outputs.TryGetValue(key, out var mine) || !mine.TryGetValue(name, out var o))
                            throw new ArgumentException($"{op}: {what}: worker {_args.Rank} keeps no output '{name}' of batch {key}");
                        if (o.Floats != floats) throw new ArgumentException($"{op}: {what}: output '{name}' of batch {key} holds {o.Floats} values here, the part needs {floats}");
                        local.Add((new ReadOnlySpan<float>((float*)o.Buffer, (int)floats).ToArray(), a, seqs));
                        continue;
                    }
                    var remote = rma.Attach(src, Convert.FromBase64String(WireJson.Str(part, "descriptor")));
                    remotes.Add(remote);
                    if (remote.Bytes < 4 * floats) throw new ArgumentException($"{op}: {what}: '{name0}' part of worker {src} holds {remote.Bytes / 4} values, the part needs {floats}");
                    var into = GC.AllocateUninitializedArray<float>((int)floats, pinned: true);
                    pending.Add((rma.GetAsync(remote, 0, System.Runtime.InteropServices.Marshal.UnsafeAddrOfPinnedArrayElement(into, 0), 4 * floats), into, a, seqs, src));
                }
            }
            foreach (var (read, _, a, _, src) in pending) Wait(read, $"{op}: read the {arrays[a].Name} of its rollout from worker {src}");
            foreach (var (floats, a, seqs) in local.Concat(pending.Select(p => (p.Into, p.Array, p.Seqs))))
            {
                int at = 0;
                foreach (int s in seqs)
                {
                    var (to, len) = place(s);
                    Array.Copy(floats, at, arrays[a].Into, to, len);
                    at += len;
                }
            }
        }
        catch
        {
            AbandonedBuffers.KeepUnfinished(pending.Select(p => (p.Read, (object)p.Into)), remotes);
            throw;
        }
        finally
        {
            foreach (var x in remotes) x.Dispose();
            _inputSeconds += Stopwatch.GetElapsedTime(t0).TotalSeconds;
        }
        return covered;
    }

    /// <summary>
    /// The per-action loss inputs of a train call's whole rollout, derived on this rank by the
    /// function the master runs (Parallelism/RolloutAdvantages.cs): PPO's advantages and returns
    /// ("kind": "ppo"), or the critic-free algorithms' per-sequence advantages spread over their
    /// actions ("sequence"), and the mean KL. The generation's and the reference's log-probs (and
    /// PPO's critic values) are read from the workers that computed them (the command's "derive"
    /// entry: per array, each holder's registered part and the rollout indices of its sequences;
    /// this worker's own parts are copied); the per-sequence inputs (PPO's shaped scores and EOS
    /// flags, or the sequence advantages) come in the input blob. Every read is posted at once and
    /// waited for with the data plane's deadline; a failed or missing holder fails the operation naming it.
    /// </summary>
    private (float[] LogProbs, float[] Ref, float[] Values, float[] Advantages, float[] Returns) Derive(JsonNode d, WireReader reader, ShardReplica r, int sequences, int actions, string op)
    {
        string kind = WireJson.Str(d, "kind");
        if (kind is not ("ppo" or "sequence")) throw new ArgumentException($"{op}: derive: kind '{kind}' is not one of ppo, sequence");
        float[] Floats(string what)
        {
            var x = reader.Floats();
            return x.Length == sequences ? x : throw new InvalidDataException($"{op}: {x.Length} {what} for {sequences} sequences");
        }
        var scores = Floats(kind == "ppo" ? "scores" : "sequence advantages");
        var eos = kind == "ppo" ? Flags(reader.Bytes(), sequences, "EOS flags", op) : [];
        var cu = d["cu"]?.AsArray().Select(x => x!.GetValue<int>()).ToArray() ?? throw new ArgumentException($"{op}: derive: no 'cu'");
        if (cu.Length != sequences + 1 || cu[0] != 0 || cu[^1] != actions || cu.Zip(cu.Skip(1)).Any(p => p.Second < p.First))
            throw new ArgumentException($"{op}: derive: action offsets of {cu.Length - 1} sequences ending at {cu[^1]} for {sequences} sequences and {actions} actions");
        string[] names = kind == "ppo" ? ["logprobs", "ref", "values"] : ["logprobs", "ref"];
        var arrays = names.Select(_ => new float[actions]).ToArray();
        var covered = ReadKept([.. names.Select((n, a) => (n, d["arrays"]?[n]?.AsArray() ?? throw new ArgumentException($"{op}: derive: no parts of '{n}'"), arrays[a]))],
                               sequences, s => (cu[s], cu[s + 1] - cu[s]), "derive", op);
        for (int a = 0; a < names.Length; a++)
            if (Array.IndexOf(covered[a], false) is var miss and >= 0) throw new ArgumentException($"{op}: derive: no part holds '{names[a]}' of sequence {miss}");
        if (kind == "sequence")
        {
            _derivedKl = RolloutAdvantages.MeanKl(arrays[0], arrays[1], sequences);
            return (arrays[0], arrays[1], [], RolloutAdvantages.TokenAdvantages(scores, cu), []);
        }
        double Bits(string name) => BitConverter.Int64BitsToDouble(WireJson.Long(d, name));
        var ppo = new Config.PpoConfig(Bits("kl_coef"), 0, 0, Bits("gamma"), Bits("lambda"), 1, d["adv_norm"]?.GetValue<bool>() ?? false, Bits("max_reward_clip"));
        var (adv, ret, kl) = RolloutAdvantages.Ppo(r.Shard.Stream, arrays[0], arrays[1], arrays[2], scores, eos, cu, ppo);
        _derivedKl = kl;
        return (arrays[0], arrays[1], arrays[2], adv, ret);
    }

    /// <summary>The batch of an operation that carries nothing else: by reference, or the input blob.</summary>
    private ScoredBatch BatchOnly(JsonNode j, ShardReplica r, string op)
    {
        if (j["batch_ref"] is not null) return Batch(j, r, null, op);
        var rd = new WireReader(Input(j, op), op);
        var b = rd.Batch();
        rd.End();
        return b;
    }

    /// <summary>The batch of an operation: from the sequences this worker holds when the command
    /// refers to them (after the command's reads), else read from the input blob. Only this rank's
    /// data-parallel part must be held: the other sequences are placed by their lengths alone (the
    /// shard never reads their tokens), so they are zero tokens of the right length.</summary>
    private ScoredBatch Batch(JsonNode j, ShardReplica r, WireReader? input, string op)
    {
        if (j["batch_ref"] is not { } br) return (input ?? throw new ArgumentException($"{op}: no batch")).Batch();
        Fetch(j, br, op);
        string key = WireJson.Str(br, "key");
        int[] Ints(string name) => br[name]?.AsArray().Select(x => x!.GetValue<int>()).ToArray() ?? throw new ArgumentException($"{op}: batch {key}: no '{name}'");
        int[] ids = Ints("ids"), lens = Ints("lens"), prompts = Ints("prompts");
        if (lens.Length != ids.Length || prompts.Length != ids.Length)
            throw new ArgumentException($"{op}: batch {key}: {ids.Length} ids, {lens.Length} lengths, {prompts.Length} prompt lengths");
        if (lens.Any(l => l < 1)) throw new ArgumentException($"{op}: batch {key}: a sequence length below 1");
        // A composite batch (Model/ScoredBatch.cs BatchSource.Tails): sequence "at" is the prompt of
        // held sequence ids[at] followed by "tokens".
        var tails = new Dictionary<int, int[]>();
        foreach (var t in br["tails"]?.AsArray() ?? [])
        {
            int at = WireJson.Int(t, "at");
            var tokens = t!["tokens"]?.AsArray().Select(x => x!.GetValue<int>()).ToArray() ?? throw new ArgumentException($"{op}: batch {key}: tails[{tails.Count}]: no 'tokens'");
            if (at < 0 || at >= ids.Length || !tails.TryAdd(at, tokens))
                throw new ArgumentException($"{op}: batch {key}: a tail at sequence {at} (the batch has {ids.Length}, each at most one tail)");
            if (tokens.Length != lens[at] - prompts[at])
                throw new ArgumentException($"{op}: batch {key} sequence {at}: a tail of {tokens.Length} tokens after a prompt of {prompts[at]} in a sequence of {lens[at]}");
        }
        var part = Split.Contiguous(lens, r.Layout.Dp)[r.Comm.Data].ToHashSet();
        _batches.TryGetValue(key, out var held);
        var seqs = new int[ids.Length][];
        for (int i = 0; i < ids.Length; i++)
        {
            if (!part.Contains(i)) { seqs[i] = new int[lens[i]]; continue; }
            if (held is null || !held.TryGetValue(ids[i], out var q))
                throw new ArgumentException($"{op}: worker {_args.Rank} holds no sequence {ids[i]} of batch {key} (its data-parallel part needs it)");
            if (tails.TryGetValue(i, out var tail))
            {
                if (q.Prompt != prompts[i])
                    throw new ArgumentException($"{op}: batch {key} sequence {ids[i]}: held with a prompt of {q.Prompt} tokens, the call's tail follows {prompts[i]}");
                seqs[i] = [.. q.Tokens.AsSpan(0, q.Prompt), .. tail];
                continue;
            }
            if (q.Tokens.Length != lens[i] || q.Prompt != prompts[i])
                throw new ArgumentException($"{op}: batch {key} sequence {ids[i]}: held with {q.Tokens.Length} tokens (prompt {q.Prompt}), the call has {lens[i]} (prompt {prompts[i]})");
            seqs[i] = q.Tokens;
        }
        try { return new ScoredBatch(seqs, prompts); }
        catch (ArgumentException e) { throw new ArgumentException($"{op}: batch {key}: {e.Message}"); }
    }

    /// <summary>An operation on a replica; afterwards its activation arenas go back to this process's
    /// ArenaBlocks (nothing of them is read after the operation), so the worker's replicas share one
    /// set of pre-faulted blocks: it holds the largest operation's activations, not every replica's.</summary>
    private string Op(JsonNode j)
    {
        try { return OpCore(j); }
        finally
        {
            if (_replicas.TryGetValue(WireJson.Int(j, "id"), out var r)) r.Shard.ReleaseActivations();
        }
    }

    private string OpCore(JsonNode j)
    {
        long start = Stopwatch.GetTimestamp();
        _inputSeconds = _outputSeconds = 0;
        var r = Replica(j);
        string op = WireJson.Str(j, "op");
        double value = 0;
        double[]? figures = null;
        string? descriptor = null, keptOutput = null;
        _keptLogProbs = null;
        _derivedKl = null;
        switch (op)
        {
            // With "keep_output" (a batch by reference), a collecting rank also keeps its part of
            // the per-action output for later calls to read (Workers/ResidentBatches.cs).
            // With "lazy" too, it sends no per-action float (values: the last scores only): the master reads them later if at all.
            case "logprobs":
            {
                var b = BatchOnly(j, r, op);
                var o = r.LogProbs(b, (float)WireJson.Num(j, "temperature"));
                if (o is not null && (string?)j["keep_output"] is { } name && j["batch_ref"] is { } br) keptOutput = KeepOutput(WireJson.Str(br, "key"), name, o.Actions);
                Output(j, r, o is null ? null : w => w.Output(Lazy(j, o, keptOutput, op)), op);
                break;
            }
            case "values":
            {
                var b = BatchOnly(j, r, op);
                var o = r.Values(b);
                if (o is not null && (string?)j["keep_output"] is { } name && j["batch_ref"] is { } br) keptOutput = KeepOutput(WireJson.Str(br, "key"), name, o.Actions);
                Output(j, r, o is null ? null : w => w.Output(Lazy(j, o, keptOutput, op)), op);
                break;
            }
            // The per-token gradients come only to the last pipeline stage (which computes the loss),
            // those of this rank's data-parallel part; a rank of another stage gets an input blob only
            // for a batch sent inline.
            case "backward_logprobs":
            {
                var rd = BackwardInput(j, r, op);
                var b = Batch(j, r, rd, op);
                var d = r.ComputesLoss ? Gradients(rd!, b, r, perAction: true, optional: false, op) : null;
                rd?.End();
                r.BackwardLogProbs(b, (float)WireJson.Num(j, "temperature"), d);
                break;
            }
            case "backward_values":
            {
                var rd = BackwardInput(j, r, op);
                var b = Batch(j, r, rd, op);
                float[] dv = r.ComputesLoss ? Gradients(rd!, b, r, perAction: true, optional: true, op) : [];
                float[] dl = r.ComputesLoss ? Gradients(rd!, b, r, perAction: false, optional: true, op) : [];
                rd?.End();
                r.BackwardValues(b, dv, dl);
                break;
            }
            // A train step that computes its loss here (ShardReplica.PolicyStep / ValueStep): the last
            // stage's ranks get their part of the call's loss inputs with a minibatch's first step and
            // keep it for the later epochs; the reply carries the loss figures (as bits) on the rank
            // that ends the data-parallel pass.
            case "policy_step":
            {
                var rd = StepInput(j, r, op);
                var b = Batch(j, r, rd, op);
                var inputs = PolicyInputs(j, rd, b, r, op);
                rd?.End();
                var (norm, st) = r.PolicyStep(b, WireJson.Int(j, "s0"), WireJson.Int(j, "a0"), (float)WireJson.Num(j, "temperature"), inputs,
                                              WireJson.Int(j, "tokens"), WireJson.Int(j, "seqs"), j["from_forward"]?.GetValue<bool>() ?? false, writeRatioBase: true);
                value = norm;
                if (st is { } x) figures = [x.Loss, x.Surrogate, x.KlTerm, x.ClipFraction, x.K3];
                break;
            }
            case "value_step":
            {
                var rd = StepInput(j, r, op);
                var b = Batch(j, r, rd, op);
                var inputs = ValueInputs(j, rd, b, r, op);
                rd?.End();
                var (norm, st) = r.ValueStep(b, WireJson.Int(j, "a0"), inputs);
                value = norm;
                if (st is { } x) figures = [x.Loss, x.ClipFraction];
                break;
            }
            case "sft":
            {
                var b = BatchOnly(j, r, op);
                value = r.SftShare(b);
                break;
            }
            case "step":
                value = r.Step();
                break;
            case "generate":
            {
                // This rank's share of the prompts only (its data-parallel part, with their ids in the batch).
                var rd = new WireReader(Input(j, op), op);
                var (ids, prompts) = rd.PromptShare(WireJson.Int(j, "batch"));
                var score = Scoring(j["score"], rd, ids, op);
                rd.End();
                var g = r.GeneratePart(ids, prompts, WireJson.Generation(j["gen"]));
                if ((string?)j["keep_as"] is { } key && g is { } kept) descriptor = Keep(key, kept.Ids, prompts, kept.Result);
                bool lazy = j["lazy"]?.GetValue<bool>() == true;
                if (lazy && j["keep_as"] is null) throw new ArgumentException($"{op}: 'lazy' without 'keep_as': the log-probs would be neither sent nor kept");
                // With "score", the answers' scores follow (Tasks/SequenceScoring.cs): computed here, where the tokens are.
                // The answers scored here, the kept sequences' ids stay too: the master reads them only if it needs them.
                bool idsStay = j["lazy_tokens"]?.GetValue<bool>() == true;
                if (idsStay && (!lazy || score is null)) throw new ArgumentException($"{op}: 'lazy_tokens' without 'lazy' and 'score': the token ids would be neither sent nor kept and scored");
                Output(j, r, g is { } x ? w => Scored(w.Generation(x, perToken: !lazy, ids: !idsStay), x, score, op) : null, op);
                break;
            }
            default:
                throw new ArgumentException($"unknown operation '{op}'");
        }
        // A backward followed by the optimizer step in one command (RemoteReplica defers a backward
        // until its step): the step's gradient norm is the reply's value.
        if (j["then_step"]?.GetValue<bool>() == true)
        {
            if (op is not ("backward_logprobs" or "backward_values")) throw new ArgumentException($"then_step after '{op}': only a backward is followed by a step");
            value = r.Step();
        }
        var reply = new JsonObject
        {
            ["value"] = value, ["seconds"] = Stopwatch.GetElapsedTime(start).TotalSeconds, ["input_seconds"] = _inputSeconds, ["output_seconds"] = _outputSeconds,
        };
        if (descriptor is not null) reply["kept"] = descriptor;
        if (_keptLogProbs is not null) reply["kept_logprobs"] = _keptLogProbs;
        if (keptOutput is not null) reply["kept_output"] = keptOutput;
        if (_derivedKl is { } kl) reply["kl"] = BitConverter.DoubleToInt64Bits(kl);
        if (figures is not null) reply["stats"] = new JsonArray([.. figures.Select(f => (JsonNode)BitConverter.DoubleToInt64Bits(f))]);
        return reply.ToJsonString();
    }

    /// <summary>This device's part of a reallocation of parameters ("params": the fp32 master;
    /// "params_bf16": the bf16 weights, 2 bytes each) or AdamW moments ("adam_m", "adam_v") between
    /// two layouts; replica -1 is the master's full copy.</summary>
    private string Realloc(JsonNode j)
    {
        string kind = WireJson.Str(j, "kind");
        var from = WireJson.Layout(j["from"]);
        var to = WireJson.Layout(j["to"]);
        int src = WireJson.Int(j, "src"), dst = WireJson.Int(j, "dst");
        var config = WireJson.Config(j["config"]);
        bool scalar = j["scalar"]!.GetValue<bool>();
        int elementSize = kind == "params_bf16" ? 2 : 4;
        string key = $"{WireJson.Layout(from).ToJsonString()}>{WireJson.Layout(to).ToJsonString()}|{WireJson.Config(config).ToJsonString()}|{scalar}|{elementSize}";
        if (!_plans.TryGetValue(key, out var p))
        {
            var plan = ReallocPlan.Build(from, to, ParamLayout.Factory(config, scalar), elementSize, _ => 0);
            _plans[key] = p = (plan, ReallocSchedule.ForDevice(plan, _args.Rank));
        }
        nint Buffer(int id, ParallelLayout layout, string side, string kind)
        {
            if (!layout.Devices.Contains(_args.Rank)) return 0;
            if (!_replicas.TryGetValue(id, out var r)) throw new ArgumentException($"realloc {side}: worker {_args.Rank} holds no shard of replica {id}");
            if (kind == "params") return (nint)r.Shard.ParametersPointer;
            if (kind == "params_bf16") return (nint)r.Shard.Bf16ParametersPointer;
            var o = r.Optimizer ?? throw new ArgumentException($"realloc {kind}: replica {id} has no optimizer");
            // AdamW's moments live in native memory: the pointer is stable.
            var moments = kind switch { "adam_m" => o.FirstMoment, "adam_v" => o.SecondMoment, _ => throw new ArgumentException($"unknown realloc kind '{kind}'") };
            fixed (float* p = moments) return (nint)p;
        }
        // A replica whose weights were released takes pages again now: the plan writes every byte of
        // them, its senders included (whose mappings of it stay valid; what they write is kept). The
        // free activation blocks stay (freeing them here lowered the refill's peak by up to 0.12 GB
        // per worker, but every later call of the iteration faulted its blocks in again: the worker
        // plan of ppo-tiny-timing took 0.182 s per iteration against 0.153-0.163, session 20).
        if (kind is "params" or "params_bf16" && to.Devices.Contains(_args.Rank) && _replicas.TryGetValue(dst, out var into)) into.Shard.ReacquireWeights();
        nint s = Buffer(src, from, "source", kind), d = Buffer(dst, to, "destination", kind);
        Wait(_mover.ExecuteAsync(p.Plan, p.Schedule, s, d), $"realloc {kind} {from} -> {to}");
        // A bf16-only shard's fp32 q/k/v biases follow its new bf16 weights.
        if (kind == "params_bf16" && to.Devices.Contains(_args.Rank)) _replicas[dst].Shard.BiasesFromBf16();
        return "ok";
    }

    private static double Seconds(string variable, double fallback) =>
        double.TryParse(Environment.GetEnvironmentVariable(variable), System.Globalization.CultureInfo.InvariantCulture, out double s) && s > 0 ? s : fallback;

    public void Dispose()
    {
        _server.Dispose();
        foreach (var key in _kept.Keys.Union(_outputs.Keys).ToList()) Drop(key);   // unregisters its memory: needs the transport
        // The transport first: operations a failure left in flight end with it, before the memory
        // they read or write (shards, staging blocks) is freed.
        _transport.Dispose();
        foreach (var r in _replicas.Values) r.Dispose();
        _replicas.Clear();
        _mover.Dispose();
        _client.Dispose();
    }
}
