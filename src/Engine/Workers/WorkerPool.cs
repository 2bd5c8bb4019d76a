// The master's side of the model workers: starts one worker process per device (or, for a
// multi-node launch, waits for the launchers' workers to join), runs the rendezvous, joins the
// UCX world itself as the last rank (it holds the full models and the batches), and dispatches
// commands to a mesh's workers with a deadline while watching every worker: a worker process that
// exits, a heartbeat that stops, or a command that fails ends the job with an error naming the
// worker, its node, the call and the last error the worker reported. Disposing shuts the workers
// down and kills what does not exit, so no worker outlives its master.
using System.Text.Json.Nodes;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;
using ReaLNative.Engine.Control;
using ReaLNative.Engine.Layout;
using ReaLNative.Engine.Model;
using ReaLNative.Engine.Optim;
using ReaLNative.Engine.Parallelism;
using ReaLNative.Engine.Realloc;
using ReaLNative.Engine.Transport;

namespace ReaLNative.Engine.Workers;

/// <summary>How the master starts and watches its workers.</summary>
internal sealed record WorkerPoolOptions
{
    /// <summary>The realn executable the workers run (`realn worker --role model ...`); null when
    /// the workers are started by launchers (<see cref="ExternalWorkers"/>).</summary>
    public string? Executable { get; init; }
    /// <summary>Arguments before `worker` (e.g. the assembly when <see cref="Executable"/> is `dotnet`).</summary>
    public IReadOnlyList<string> ExecutablePrefix { get; init; } = [];
    /// <summary>Workers are started elsewhere (`realn launch` on each node): only wait for them to join.</summary>
    public bool ExternalWorkers { get; init; }
    /// <summary>With <see cref="ExternalWorkers"/>: the ranks this process starts itself anyway (node 0's).</summary>
    public IReadOnlyList<int> LocalRanks { get; init; } = [];
    /// <summary>Interface local workers' command servers bind.</summary>
    public string WorkerBindHost { get; init; } = "127.0.0.1";
    /// <summary>This node's name in messages.</summary>
    public string Node { get; init; } = System.Environment.MachineName;
    /// <summary>The control endpoint the master binds (tcp://127.0.0.1:0: loopback, a free port).</summary>
    public string Bind { get; init; } = "tcp://127.0.0.1:0";
    /// <summary>The job secret (generated when null) and id.</summary>
    public byte[]? Secret { get; init; }
    public string Job { get; init; } = "job-" + Guid.NewGuid().ToString("N")[..8];
    /// <summary>OpenMP / OpenBLAS threads per worker (0: the cores divided among the workers).</summary>
    public int ThreadsPerWorker { get; init; }
    /// <summary>Deadline for every worker to join.</summary>
    public TimeSpan StartTimeout { get; init; } = TimeSpan.FromSeconds(120);
    /// <summary>Deadline of one command (a call's operation on every worker of its mesh).</summary>
    public TimeSpan CallTimeout { get; init; } = TimeSpan.FromSeconds(600);
    /// <summary>A worker whose heartbeat is older than this is considered dead.</summary>
    public TimeSpan HeartbeatTimeout { get; init; } = TimeSpan.FromSeconds(15);
    /// <summary>Extra environment for spawned workers (tests, UCX settings).</summary>
    public IReadOnlyDictionary<string, string> Environment { get; init; } = new Dictionary<string, string>();
    public ILogger? Log { get; init; }
    /// <summary>Ends the wait for the workers to join (a signal during start-up).</summary>
    public CancellationToken Cancellation { get; init; }
    /// <summary>Told (once per source) when a worker or a node's launcher reports a SIGTERM / SIGINT it
    /// received, e.g. "SIGTERM to worker 1": the job should stop at its next safe point.</summary>
    public Action<string>? OnInterrupt { get; init; }
    /// <summary>Progress of the join for the person waiting (every 10 s: which ranks are still
    /// missing, and when the deadline falls); null: silent.</summary>
    public Action<string>? JoinNote { get; init; }
    public TimeSpan JoinNoteEvery { get; init; } = TimeSpan.FromSeconds(10);
    /// <summary>A generation's sequences stay with the workers that produced them, and later calls'
    /// workers read them from those workers (Workers/ResidentBatches.cs); false: the master sends
    /// every call its whole batch (for comparison). On by default; `REALN_WORKER_TO_WORKER_DATA=0`
    /// turns it off for `realn run`.</summary>
    public bool WorkerToWorkerData { get; init; } = System.Environment.GetEnvironmentVariable("REALN_WORKER_TO_WORKER_DATA") != "0";
}

internal sealed class WorkerPool : IReplicaHost
{
    private readonly WorkerPoolOptions _options;
    private readonly ILogger _log;
    private readonly byte[] _secret;
    private readonly MessageAuth _auth;
    private readonly ControlServer _server;
    private readonly Rendezvous _rv;
    private WorkerProcesses? _local;
    private readonly ControlClient?[] _clients;
    /// <summary>Per worker, the thread that sends it commands and waits for its replies (a command's
    /// request blocks on the control socket): kept for the run, where a thread started per command
    /// cost 0.12 ms median, 0.29 ms mean on the 2-core VM (session 23), twice per call with 2 workers.</summary>
    private readonly Requester?[] _requesters;
    // Null only while the constructor has not got that far (its failure path disposes a partial pool).
    private readonly UcxTransport? _transport;
    private readonly TransportRealloc? _mover;
    private readonly WorkerState[] _state;
    private readonly Lock _reallocGate = new();
    private int _localThreadsPerWorker;
    /// <summary>Round trips of replica operations (REALN_WORKER_TIMING=1 prints them at the end).</summary>
    internal OpTimings OpTimings { get; } = new();
    private int _nextId, _nextGroup;
    private long _nextData;
    private string? _failed;
    private volatile bool _done;
    private volatile bool _aborted;
    private bool _disposed;
    private readonly HashSet<string> _interruptsSeen = [];

    private sealed class WorkerState
    {
        public DateTime LastBeat = DateTime.UtcNow;
        public string Busy = "starting";
        public string? LastError;
        public string Node = "?";
        public int Pid;
        public int? ExitCode;   // reported by the worker's launcher
        public DateTime ExitReportedAt;
        public bool Silent;     // its heartbeat stopped (hung, SIGSTOP): killed at teardown without asking
        public string ExitTail = "";
    }

    /// <summary>Starts <paramref name="devices"/> workers (unless external) and waits until every one
    /// has joined; throws naming the missing workers after <see cref="WorkerPoolOptions.StartTimeout"/>.</summary>
    public WorkerPool(int devices, WorkerPoolOptions options)
    {
        if (devices < 1) throw new ArgumentOutOfRangeException(nameof(devices));
        _options = options;
        _log = options.Log ?? NullLogger.Instance;
        Devices = devices;
        _secret = options.Secret ?? JobSecret.Generate();
        _auth = new MessageAuth(_secret, options.Job);
        _rv = new Rendezvous(devices + 1);
        _state = Enumerable.Range(0, devices).Select(_ => new WorkerState()).ToArray();
        _clients = new ControlClient?[devices];
        _requesters = new Requester?[devices];
        _server = new ControlServer(options.Bind, _auth, Handle, _log);
        try
        {
            // Workers first: a child started after UCX is up would inherit its descriptors.
            Spawn(options.ExternalWorkers ? options.LocalRanks : Enumerable.Range(0, devices).ToArray());
            // While this node's workers compute on every core, the master's progress thread must not spin either.
            int localComputeThreads = (_local?.Ranks.Count ?? 0) * _localThreadsPerWorker;
            _transport = new UcxTransport(devices, devices + 1, UcxTransportOptions.Default.ForBusyCores(localComputeThreads)) { Timeout = options.CallTimeout };
            // The master reads workers' shards with process_vm_readv, never by mapping them: its reads
            // are rare (a full copy for tests and embedders) and a kept mapping would count the
            // workers' pages in the master's resident set for the rest of the run.
            _mover = new TransportRealloc(Tags.Realloc(_transport)) { SharedMemory = false };
            using var self = new ControlClient(_server.Endpoint, new MessageAuth(_secret, options.Job), "master-rank");
            JoinWatching(self);
            for (int r = 0; r < devices; r++)
            {
                var info = JsonNode.Parse(_rv.Info(r) ?? "null");
                if (info is null) Fail($"worker {r} registered without its command endpoint");
                _state[r].Node = WireJson.Str(info, "node");
                _state[r].Pid = WireJson.Int(info, "pid");
                _clients[r] = new ControlClient(WireJson.Str(info, "control"), new MessageAuth(_secret, options.Job), "master", _log);
                _requesters[r] = new Requester($"realn-request-{r}");
            }
            // Workers beat from the moment the rendezvous completes; a slow start (another node
            // joining late) must not count against them.
            foreach (var st in _state) lock (st) st.LastBeat = DateTime.UtcNow;
            _log.LogInformation("{Workers} model workers joined job {Job}", devices, options.Job);
        }
        catch
        {
            Dispose();
            throw;
        }
    }

    public int Devices { get; }
    /// <summary>Where workers (and launchers) reach the master.</summary>
    public string Endpoint => _server.Endpoint;
    public string Job => _options.Job;
    /// <summary>The job secret (for launchers started by the caller; pass it by file or environment).</summary>
    internal byte[] Secret => _secret;

    private void Spawn(IReadOnlyList<int> ranks)
    {
        if (ranks.Count == 0) return;
        string exe = _options.Executable ?? throw new ArgumentException("WorkerPoolOptions.Executable is required to start workers");
        int threads = _localThreadsPerWorker = _options.ThreadsPerWorker > 0 ? _options.ThreadsPerWorker : Math.Max(1, System.Environment.ProcessorCount / ranks.Count);
        _local = new WorkerProcesses(new WorkerCommandLine(exe, _options.ExecutablePrefix, _server.Endpoint, _options.Job, Devices + 1)
        {
            BindHost = _options.WorkerBindHost, Node = _options.Node, ThreadsPerWorker = threads, Environment = _options.Environment,
        }, _secret, ranks);
    }

    /// <summary>The master's own rendezvous (rank <see cref="Devices"/>), failing early when a spawned worker exits.</summary>
    private void JoinWatching(ControlClient self)
    {
        var join = Task.Run(() => Rendezvous.Join(self, Transport, _options.StartTimeout));
        var waited = System.Diagnostics.Stopwatch.StartNew();
        var nextNote = _options.JoinNoteEvery;
        while (!join.Wait(TimeSpan.FromMilliseconds(100)))
        {
            if (_options.Cancellation.IsCancellationRequested)
            {
                _ = join.ContinueWith(_ => { }, TaskScheduler.Default);
                throw new OperationCanceledException("interrupted while the workers were joining", _options.Cancellation);
            }
            for (int r = 0; r < Devices; r++)
                if (ExitOf(r) is { } code)
                    Fail($"worker {r} exited with code {code} before joining the job{StderrTail(r)}");
            if (_options.JoinNote is { } note && waited.Elapsed >= nextNote)
            {
                nextNote += _options.JoinNoteEvery;
                var missing = Enumerable.Range(0, Devices).Where(r => _rv.Info(r) is null).ToList();
                if (missing.Count > 0)
                    note($"waiting for worker rank(s) {string.Join(",", missing)} to join ({waited.Elapsed.TotalSeconds:F0} s of {_options.StartTimeout.TotalSeconds:F0} s); " +
                         "is `realn launch` running on every node, in a directory where CONFIG and PLAN exist?");
            }
        }
        join.GetAwaiter().GetResult();
    }

    private string Handle(ControlMessage m)
    {
        if (m.Type == "heartbeat")
        {
            var j = JsonNode.Parse(m.Payload)!;
            int r = WireJson.Int(j, "rank");
            if ((uint)r >= (uint)Devices) throw new ArgumentException($"heartbeat from rank {r} outside {Devices} workers");
            var s = _state[r];
            lock (s)
            {
                s.LastBeat = DateTime.UtcNow;
                s.Busy = j["busy"]?.GetValue<string>() ?? "?";
                if (j["error"]?.GetValue<string>() is { } e) s.LastError = e;
            }
            if (j["signal"]?.GetValue<string>() is { } sig) Interrupt($"{sig} to worker {r}");
            return _failed is null && !_aborted ? "ok" : "stop";
        }
        if (m.Type == "worker-exit")  // a launcher saw one of its workers exit
        {
            var j = JsonNode.Parse(m.Payload)!;
            int r = WireJson.Int(j, "rank");
            if ((uint)r >= (uint)Devices) throw new ArgumentException($"exit report for rank {r} outside {Devices} workers");
            lock (_state[r]) { _state[r].ExitCode = WireJson.Int(j, "code"); _state[r].ExitTail = j["tail"]?.GetValue<string>() ?? ""; _state[r].ExitReportedAt = DateTime.UtcNow; }
            return "ok";
        }
        if (m.Type == "launcher")
        {
            var j = JsonNode.Parse(m.Payload);
            if (j?["signal"]?.GetValue<string>() is { } sig) Interrupt($"{sig} to node {j["node"]}'s launcher");
            return _failed is null && !_aborted ? (_done ? "done" : "ok") : "stop";
        }
        return _rv.Handle(m);
    }

    private void Interrupt(string what)
    {
        lock (_interruptsSeen)
            if (!_interruptsSeen.Add(what)) return;
        _log.LogWarning("interrupt: {What}", what);
        _options.OnInterrupt?.Invoke(what);
    }

    /// <summary>Ends the job at once (a second signal): heartbeats and launchers are told "stop",
    /// this node's workers are killed; launchers get about a second and a half to hear it.</summary>
    public void Abort()
    {
        _aborted = true;
        try { _local?.Stop(TimeSpan.Zero); }
        catch (Exception e) when (e is InvalidOperationException or System.ComponentModel.Win32Exception) { /* being disposed meanwhile */ }
        if (_options.ExternalWorkers) Thread.Sleep(1500);
    }

    // ------------------------------------------------------------------ dispatch

    internal int NextReplicaId() => Interlocked.Increment(ref _nextId);

    /// <summary>Which workers hold which sequences of the batches generated on them.</summary>
    internal ResidentBatches Batches { get; } = new();

    public (long FromMaster, long BetweenWorkers, long ToMaster)? DataBytes => (Batches.BytesFromMaster, Batches.BytesBetweenWorkers, Batches.BytesToMaster);
    public int HeldOutputs => Batches.HeldOutputs;

    /// <summary>Whether generated sequences stay with the workers (<see cref="WorkerPoolOptions.WorkerToWorkerData"/>).</summary>
    internal bool WorkerToWorkerData => _options.WorkerToWorkerData;

    internal int AllocateGroups(ParallelLayout layout)
    {
        int n = ShardComm.GroupIdsNeeded(layout);
        lock (_state)
        {
            if (_nextGroup + n > Tags.MaxGroups) throw new InvalidOperationException($"the job's collective tag space ({Tags.MaxGroups} groups) is exhausted");
            int b = _nextGroup;
            _nextGroup += n;
            return b;
        }
    }

    /// <summary>A fresh pair of data tags (input blob, output blob) for one operation.</summary>
    internal (long In, long Out) DataTags()
    {
        long s = Interlocked.Add(ref _nextData, 2);
        return (Tags.Data(s), Tags.Data(s + 1));
    }

    internal UcxTransport Transport => _transport ?? throw new InvalidOperationException("the worker pool's transport is not started");
    internal int MasterRank => Devices;

    /// <summary>Bytes the master has read from workers' shards straight from their processes.</summary>
    internal long ProcessReadBytes => _mover?.ProcessReadBytes ?? 0;
    private TransportRealloc Mover => _mover ?? throw new InvalidOperationException("the worker pool's reallocation mover is not started");

    /// <summary>A description of worker r for error messages.</summary>
    /// <summary>The process id worker <paramref name="rank"/> reported when it joined.</summary>
    internal int WorkerPid(int rank) => _state[rank].Pid;

    private string Who(int r) => $"worker {r} (node {_state[r].Node}, pid {_state[r].Pid})";

    private string StderrTail(int r)
    {
        if (_local is { } l && l.Owns(r)) return l.Tail(r);
        lock (_state[r]) return _state[r].ExitTail;
    }

    private int? ExitOf(int r)
    {
        if (_local is { } l && l.Owns(r)) return l.ExitCode(r);
        lock (_state[r]) return _state[r].ExitCode;
    }

    /// <summary>When worker r's exit was seen (a local process's reaping, a launcher's report).</summary>
    private DateTime ExitTimeOf(int r)
    {
        if (_local is { } l && l.Owns(r)) return l.ExitTime(r) ?? DateTime.MaxValue;
        lock (_state[r]) return _state[r].ExitReportedAt;
    }

    /// <summary>Throws naming the first dead worker: an exited process or a stopped heartbeat.</summary>
    private void CheckHealth(string what)
    {
        // Of several exited workers, the first to go is named: a peer of a killed worker may abort
        // a moment later inside a transfer to it (UCX's cma path does), and must not be blamed.
        // Exits seen within SimultaneousExits of the first are one event (the process reaps its
        // children in one pass, so their exit times say nothing of their order): of those, a worker
        // that aborted (code 134, SIGABRT: UCX's fatal-error handler) is named only when every one did.
        var exited = Enumerable.Range(0, Devices).Where(r => ExitOf(r) is not null).OrderBy(ExitTimeOf).ThenBy(r => r).ToList();
        if (exited.Count > 0)
        {
            var firstSeen = ExitTimeOf(exited[0]);
            int r = exited.Where(x => ExitTimeOf(x) - firstSeen <= SimultaneousExits).OrderBy(x => ExitOf(x) == AbortExitCode ? 1 : 0).First();
            // An abort alone is named once no other exit followed within SimultaneousExits (the killed
            // peer it aborted over may be seen a moment later: its memory went before its exit did).
            bool wait = ExitOf(r) == AbortExitCode && exited.Count < Devices && DateTime.UtcNow - firstSeen < SimultaneousExits;
            string? last;
            lock (_state[r]) last = _state[r].LastError;
            if (!wait) Fail($"{Who(r)} exited with code {ExitOf(r)} during {what}" + (last is null ? "" : $"; its last error: {last}") + StderrTail(r));
        }
        for (int r = 0; r < Devices; r++)
        {
            var s = _state[r];
            string? last;
            lock (s) last = s.LastError;
            DateTime beat;
            lock (s) beat = s.LastBeat;
            if (DateTime.UtcNow - beat > _options.HeartbeatTimeout)
            {
                lock (s) s.Silent = true;
                Fail($"{Who(r)} sent no heartbeat for {(DateTime.UtcNow - beat).TotalSeconds:F0} s during {what} (was: {s.Busy})" + (last is null ? "" : $"; its last error: {last}"));
            }
        }
    }

    /// <summary>A worker's failure is often the echo of another's death (its reallocation read from a
    /// process that is gone, its collective lost a peer): before blaming the worker that reported,
    /// give the launchers and heartbeats a moment to show a worker that exited or went silent, and
    /// name that one (CheckHealth throws). Returns when none shows within the grace period.</summary>
    private void BlameADeadWorkerFirst(string what)
    {
        var until = DateTime.UtcNow + DeadWorkerGrace;
        do
        {
            CheckHealth(what);
            Thread.Sleep(50);
        } while (DateTime.UtcNow < until);
    }

    /// <summary>Worker exits seen this close to the first are taken as one event (<see cref="CheckHealth"/>).</summary>
    internal static readonly TimeSpan SimultaneousExits = TimeSpan.FromSeconds(1);

    /// <summary>A process's exit code after SIGABRT (128 + 6).</summary>
    private const int AbortExitCode = 134;

    /// <summary>How long a reported failure waits for another worker's exit to show (see <see cref="BlameADeadWorkerFirst"/>).</summary>
    internal static readonly TimeSpan DeadWorkerGrace = TimeSpan.FromSeconds(2);

    [System.Diagnostics.CodeAnalysis.DoesNotReturn]
    private void Fail(string message)
    {
        // Said at once: tearing the job down after a failure may take seconds (or, with UCX
        // stuck on a vanished peer, not finish), and the reason must not be lost with it.
        if (Interlocked.CompareExchange(ref _failed, message, null) is null && !_aborted)   // an abort says why itself
            Console.Error.WriteLine($"realn: job failed: {message}");
        throw new WorkerFailedException(message);
    }

    private readonly Dictionary<int, SortedSet<int>> _releaseWeights = new();
    private readonly SortedSet<int> _clearCaches = new();

    /// <summary>Every worker frees its free activation blocks before its next command (sent with it, as
    /// weight releases are).</summary>
    public void ClearActivationCaches()
    {
        lock (_clearCaches)
            for (int d = 0; d < Devices; d++) _clearCaches.Add(d);
    }

    /// <summary>Which of <paramref name="workers"/> clear their activation caches with their next command
    /// (then cleared): each worker takes the list and acts only where it names its own rank, so a
    /// worker that cleared before this iteration's earlier calls does not clear again.</summary>
    private JsonArray? TakeCacheClears(IReadOnlyList<int> workers)
    {
        lock (_clearCaches)
        {
            var ranks = workers.Where(_clearCaches.Remove).ToArray();
            return ranks.Length == 0 ? null : new JsonArray(ranks.Select(r => (JsonNode)r).ToArray());
        }
    }

    /// <summary>Has the workers of <paramref name="devices"/> give back the pages of replica
    /// <paramref name="id"/>'s weights before their next command (sent with it, as forgotten
    /// batches are: no round trip of its own). A worker that no longer holds the replica ignores it.</summary>
    internal void ReleaseWeights(int id, IReadOnlyList<int> devices)
    {
        lock (_releaseWeights)
            foreach (int d in devices)
                (_releaseWeights.TryGetValue(d, out var s) ? s : _releaseWeights[d] = new SortedSet<int>()).Add(id);
    }

    /// <summary>The replicas whose weights <paramref name="workers"/> release with their next command (then cleared).</summary>
    private JsonArray? TakeWeightReleases(IReadOnlyList<int> workers)
    {
        lock (_releaseWeights)
        {
            var ids = new SortedSet<int>();
            foreach (int w in workers)
                if (_releaseWeights.Remove(w, out var s)) ids.UnionWith(s);
            return ids.Count == 0 ? null : new JsonArray(ids.Select(i => (JsonNode)i).ToArray());
        }
    }

    /// <summary>Sends every worker of <paramref name="devices"/> the command and waits for every
    /// reply and every data-plane task of the master, watching the workers meanwhile. Returns the
    /// replies in device order.</summary>
    internal string[] Dispatch(string what, IReadOnlyList<int> devices, string type, JsonObject payload, params Task[] data)
    {
        if (Volatile.Read(ref _failed) is { } f) throw new WorkerFailedException($"the job has already failed: {f}");
        payload["what"] = what;
        if (Batches.TakeForgotten(devices) is { } forgotten) payload["drop_batches"] = forgotten;
        if (TakeWeightReleases(devices) is { } released) payload["release_weights"] = released;
        if (TakeCacheClears(devices) is { } clears) payload["clear_activation_cache"] = clears;
        else payload.Remove("clear_activation_cache");
        string json = payload.ToJsonString();
        var replies = new string[devices.Count];
        var tasks = new Task[devices.Count];
        for (int i = 0; i < devices.Count; i++)
        {
            int k = i, d = devices[i];
            tasks[k] = _requesters[d]!.Run(() => replies[k] = _clients[d]!.Request(type, json, _options.CallTimeout));
        }
        void CheckTasks()
        {
            for (int i = 0; i < tasks.Length; i++)
                if (tasks[i].IsFaulted)
                {
                    BlameADeadWorkerFirst(what);
                    Fail($"{Who(devices[i])} failed during {what}: {Inner(tasks[i]).Message}");
                }
            foreach (var t in data)
                if (t.IsFaulted)
                {
                    BlameADeadWorkerFirst(what);
                    Fail($"master's data plane failed during {what}: {Inner(t).Message}");
                }
        }
        var all = tasks.Concat(data).ToArray();
        var until = DateTime.UtcNow + _options.CallTimeout + TimeSpan.FromSeconds(10);
        // Task.WaitAll throws once every task ended and one faulted: CheckTasks says which worker (a dead one first).
        bool Ended() { try { return Task.WaitAll(all, TimeSpan.FromMilliseconds(200)); } catch (AggregateException) { return true; } }
        while (!Ended())
        {
            CheckTasks();
            CheckHealth(what);
            if (DateTime.UtcNow > until) Fail($"{what} did not finish within {_options.CallTimeout.TotalSeconds:F0} s on workers {string.Join(", ", devices.Where((_, i) => !tasks[i].IsCompleted))}");
        }
        CheckTasks();
        return replies;
    }

    private static Exception Inner(Task t) => t.Exception!.InnerException ?? t.Exception;

    /// <summary>Waits for the master's own data-plane tasks <paramref name="data"/> (reads from workers'
    /// registered buffers, no command), watching the workers meanwhile: a worker that exits or stops
    /// beating fails the wait naming it, and so does the call deadline.</summary>
    internal void AwaitData(string what, IReadOnlyList<Task> data)
    {
        if (Volatile.Read(ref _failed) is { } f) throw new WorkerFailedException($"the job has already failed: {f}");
        var all = data.ToArray();
        void CheckTasks()
        {
            foreach (var t in all)
                if (t.IsFaulted)
                {
                    BlameADeadWorkerFirst(what);
                    Fail($"master's data plane failed during {what}: {Inner(t).Message}");
                }
        }
        var until = DateTime.UtcNow + _options.CallTimeout;
        var done = Task.WhenAll(all).ContinueWith(_ => { }, TaskScheduler.Default);   // never throws: CheckTasks says why
        while (!done.Wait(TimeSpan.FromMilliseconds(200)))
        {
            CheckTasks();
            CheckHealth(what);
            if (DateTime.UtcNow > until) Fail($"{what} did not finish within {_options.CallTimeout.TotalSeconds:F0} s");
        }
        CheckTasks();
    }

    /// <summary>The master's part of a reallocation to or from its full copy, with the workers' parts.</summary>
    internal void ReallocWithMaster(string what, ReallocPlan plan, nint source, nint destination, IReadOnlyList<int> workers, JsonObject command)
    {
        lock (_reallocGate)
        {
            var schedule = ReallocSchedule.ForDevice(plan, MasterRank);
            var mine = Mover.ExecuteAsync(plan, schedule, source, destination);
            try { Dispatch(what, workers, "realloc", command, mine); }
            catch { _ = mine.ContinueWith(_ => { }, TaskScheduler.Default); throw; }
        }
    }

    /// <summary>Asks every worker for its memory report (the `memory` command: its VmHWM, base
    /// resident set, mapped peer shards, activation blocks, the command that raised its peak).</summary>
    public IReadOnlyList<JsonObject>? WorkerMemory()
    {
        var replies = Dispatch("memory", Enumerable.Range(0, Devices).ToArray(), "memory", new JsonObject());
        return replies.Select(r => JsonNode.Parse(r) as JsonObject ?? new JsonObject()).ToArray();
    }

    public IReplica Create(string name, LlamaConfig config, bool scalarHead, ParallelLayout layout, int microBatches, OptimizerSpec? optimizer,
                           ModelPrecision precision = ModelPrecision.Fp32)
    {
        foreach (var d in layout.Devices)
            if ((uint)d >= (uint)Devices) throw new ArgumentException($"{name}: layout device {d} outside the job's {Devices} workers");
        return new RemoteReplica(this, name, config, scalarHead, layout, microBatches, optimizer, precision);
    }

    public void Dispose()
    {
        if (_disposed) return;
        _disposed = true;
        _done = true;
        if (System.Environment.GetEnvironmentVariable("REALN_WORKER_TIMING") == "1" && OpTimings.Count > 0) Console.Error.Write(OpTimings.ToString());  // launchers asking now are told the job is over
        // A silent worker (hung, stopped) answers nothing: killed at once rather than asked and
        // waited for (that wait was 10 s of a stopped worker's 25 s to the master's exit).
        for (int r = 0; r < Devices; r++)
        {
            bool silent;
            lock (_state[r]) silent = _state[r].Silent;
            if (silent) _local?.Kill(r);
        }
        // Ask every other worker to stop, then kill what is still running here.
        var stops = new List<Task>();
        for (int r = 0; r < Devices; r++)
            if (_clients[r] is { } c && ExitOf(r) is null && !_state[r].Silent)
                stops.Add(Task.Run(() => { try { c.Request("shutdown", "{}", TimeSpan.FromSeconds(2)); } catch (Exception) { /* killed below, or by its launcher */ } }));
        Task.WaitAll(stops.ToArray(), TimeSpan.FromSeconds(5));
        _local?.Dispose();
        foreach (var q in _requesters) q?.Dispose();
        foreach (var c in _clients) c?.Dispose();
        _mover?.Dispose();
        _transport?.Dispose();
        // Launchers poll about once a second: give them the answer before the socket goes.
        if (_options.ExternalWorkers) Thread.Sleep(1500);
        _server.Dispose();
    }

    /// <summary>A thread that runs blocking requests one after another (in order) and completes each one's task.
    /// A request that never returns keeps its thread (a background thread: the process still ends); the
    /// requests queued behind it wait, as they would for the control client's lock anyway.</summary>
    private sealed class Requester : IDisposable
    {
        private readonly System.Collections.Concurrent.BlockingCollection<Action> _queue = new();

        public Requester(string name)
        {
            var t = new Thread(() =>
            {
                foreach (var run in _queue.GetConsumingEnumerable()) run();
            }) { IsBackground = true, Name = name };
            t.Start();
        }

        public Task Run(Action request)
        {
            var done = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
            try
            {
                _queue.Add(() =>
                {
                    try { request(); done.SetResult(); }
                    catch (Exception e) { done.SetException(e); }
                });
            }
            catch (InvalidOperationException) { done.SetException(new ObjectDisposedException(nameof(WorkerPool))); }
            return done.Task;
        }

        public void Dispose() => _queue.CompleteAdding();
    }
}
