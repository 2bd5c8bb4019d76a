// Calibration profile: measured costs on the local backend that replace the roofline where present.
// Written by the engine's `realn profile`, read here; format documented on ProfileData.
using System.Text.Json;
using System.Text.Json.Serialization;

namespace ReaLNative.Planner;

/// <summary>
/// A calibration profile (JSON, snake_case). Example:
/// <code>
/// { "version": 1, "backend": "cpu", "device": "AMD EPYC 2 cores",
///   "gemm_gflops": 140.0,          // measured dense GEMM throughput per device (replaces peak x efficiency)
///   "memcpy_gbps": 11.0,           // measured device-memory copy bandwidth (replaces memory_bandwidth_gbps)
///   "layers": [ { "hidden": 64, "intermediate": 176, "heads": 4, "kv_heads": 2,
///                 "points": [ { "kind": "fwd",    "tokens": 256, "context": 0,  "seconds": 1.2e-4 },
///                             { "kind": "bwd",    "tokens": 256, "context": 0,  "seconds": 2.5e-4 },
///                             { "kind": "decode", "tokens": 8,   "context": 32, "seconds": 3.0e-5 } ] } ],
///   "train_steps": [ { "layers": 2, "hidden": 64, "intermediate": 176, "heads": 4, "kv_heads": 2, "vocab": 32, "scalar_head": false,
///                      "points": [ { "kind": "step", "tokens": 384, "context": 12, "seconds": 3.0e-4, "threads": 1 } ] } ],
///   "shared_compute": [ { "processes": 2, "over_alone": 1.07 }, { "processes": 4, "over_alone": 2.15 } ],
///   "worker_round_trips": [ { "devices": 2, "us": 3600 }, { "devices": 4, "us": 7700 } ] }
/// </code>
/// A point is the wall time of ONE transformer block (tp = 1) on one device: <c>fwd</c>/<c>bwd</c> for
/// <c>tokens</c> packed tokens in sequences of min(tokens, <c>context</c>) tokens (context 0, older profiles:
/// unknown), <c>decode</c> for one decode step of <c>tokens</c> sequences at <c>context</c> cached tokens. The estimator interpolates linearly in tokens between points of the
/// same kind (beyond the largest it scales proportionally, below the smallest it keeps the smallest),
/// divides by tp, and uses the roofline for everything a profile lacks (other models, head, comms).
/// <c>threads</c> (top level) is how many threads the process that measured had (every core of the
/// host); a point may carry its own <c>threads</c> (absent = the top-level count). On a shared-host
/// cluster a device gets cores / devices threads: the estimator takes the points measured with exactly
/// that many, else the all-thread points times the devices per host (perfect scaling, which small
/// blocks do not reach: a 1-thread block is often less than twice a 2-thread one).
/// </summary>
public sealed record ProfileData
{
    [JsonPropertyName("version")] public int Version { get; set; } = 1;
    [JsonPropertyName("backend")] public string Backend { get; set; } = "";
    [JsonPropertyName("device")] public string Device { get; set; } = "";
    [JsonPropertyName("gemm_gflops")] public double? GemmGflops { get; set; }
    [JsonPropertyName("memcpy_gbps")] public double? MemcpyGbps { get; set; }
    [JsonPropertyName("threads")] public int? Threads { get; set; }
    /// <summary>The mean master-worker round trip beyond compute measured on this host (`realn profile`: a short
    /// PPO in <see cref="WorkerRoundTripDevices"/> worker processes); on a shared-host spec with that many devices
    /// per node it replaces the spec's worker_round_trip_us.</summary>
    [JsonPropertyName("worker_round_trip_us")] [JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingNull)] public double? WorkerRoundTripUs { get; set; }
    /// <summary>Worker processes of the round-trip measurement.</summary>
    [JsonPropertyName("worker_round_trip_devices")] [JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingNull)] public int? WorkerRoundTripDevices { get; set; }
    /// <summary>Worker round trips measured with other device counts too (`realn profile`: one worker process per core
    /// and twice as many); an entry for a spec's devices per node replaces the spec's worker_round_trip_us.</summary>
    [JsonPropertyName("worker_round_trips")] public List<WorkerRoundTrip> WorkerRoundTrips { get; set; } = [];
    /// <summary>Devices as threads of one process (`realn run --plan --in-process`, `realn profile` since session 15): what
    /// an operation dispatched to <c>devices</c> in-process devices costs beyond its fastest device's compute (threads
    /// started and joined, the batch split and the outputs merged, the wait for the slowest device), by kind as
    /// <see cref="WorkerRoundTrips"/> (<c>us</c> the mean, <c>generate_us</c>, <c>forward_us</c>, <c>backward_us</c>: a
    /// train step's backward with its optimizer step), measured by the same short PPO with every call data parallel over
    /// that many in-process devices (REALN_INPROCESS_TIMING). An operation on one device runs on the calling thread and
    /// costs nothing beyond it.</summary>
    [JsonPropertyName("in_process_overheads")] public List<WorkerRoundTrip> InProcessOverheads { get; set; } = [];
    /// <summary>The round trip of a cache line between two cores (nanoseconds) when `realn profile` began its all-core
    /// points and when it ended them (session 16). On a virtual machine the host may place the virtual CPUs near or far
    /// apart (the 2-core development VM: 100-125 or 460-540 ns, changing within minutes), and the all-core points of a
    /// small model follow it; `realn bench plan` prints it next to each run's. Diagnostics only: no estimate reads it.</summary>
    [JsonPropertyName("core_round_trips_ns")] [JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingNull)] public List<double>? CoreRoundTripsNs { get; set; }
    [JsonPropertyName("layers")] public List<LayerProfile> Layers { get; set; } = [];
    /// <summary>A train call's optimizer step outside its blocks, measured on whole models (`realn profile`): see
    /// <see cref="TrainStepProfile"/>. Replaces the spec's train_step_overhead_us and the roofline's head, embedding and
    /// optimizer terms for a model of exactly that shape.</summary>
    [JsonPropertyName("train_steps")] public List<TrainStepProfile> TrainSteps { get; set; } = [];
    /// <summary>A generation call outside its blocks, measured on whole models (`realn profile`, session 14): the engine's
    /// <c>Generator.Generate</c> of <c>tokens</c> sequences (7-token prompts, 7 new tokens, sampling at temperature 1, no
    /// EOS) minus <c>layers x (prefill forward + 6 decode steps)</c> of its blocks, per decode step (<c>seconds</c> / 7;
    /// <c>context</c> = the 7 new tokens): the embedding, the LM head, sampling, the KV cache's bookkeeping and per-step host
    /// work. Points have kind <c>generate</c>; the rest is as <see cref="TrainSteps"/>.</summary>
    [JsonPropertyName("generations")] public List<TrainStepProfile> Generations { get; set; } = [];
    /// <summary>How much slower a one-thread process computes while others compute beside it on the same host
    /// (`realn profile`: the same train step timed in 1 and in n concurrent processes): see <see cref="SharedCompute"/>.</summary>
    [JsonPropertyName("shared_compute")] public List<SharedCompute> SharedCompute { get; set; } = [];

    public static ProfileData Load(string path)
    {
        try { InputFile.Check(path, "profile"); }
        catch (InputException e) { throw new PlannerException(e.Message); }
        ProfileData? p;
        try { p = JsonSerializer.Deserialize(File.ReadAllText(path), ProfileJson.Default.ProfileData); }
        catch (JsonException e) { throw new PlannerException($"profile: {e.Path}: {e.Message}"); }
        if (p is null) throw new PlannerException("profile: empty document");
        p.Validate();
        return p;
    }

    public string ToJson() => JsonSerializer.Serialize(this, ProfileJson.Default.ProfileData);

    public void Validate()
    {
        if (Version != 1) throw new PlannerException($"profile.version: {Version} is not supported (expected 1)");
        if (GemmGflops is { } g && !(g > 0 && double.IsFinite(g))) throw new PlannerException($"profile.gemm_gflops: {g} must be a positive number");
        if (MemcpyGbps is { } m && !(m > 0 && double.IsFinite(m))) throw new PlannerException($"profile.memcpy_gbps: {m} must be a positive number");
        if (Threads is { } th && th <= 0) throw new PlannerException($"profile.threads: {th} must be positive");
        for (int i = 0; i < (CoreRoundTripsNs?.Count ?? 0); i++)
            if (!(CoreRoundTripsNs![i] > 0 && double.IsFinite(CoreRoundTripsNs[i]))) throw new PlannerException($"profile.core_round_trips_ns[{i}]: {CoreRoundTripsNs[i]} must be a positive number");
        if (WorkerRoundTripUs is { } rt && !(rt > 0 && double.IsFinite(rt))) throw new PlannerException($"profile.worker_round_trip_us: {rt} must be a positive number");
        if ((WorkerRoundTripUs is null) != (WorkerRoundTripDevices is null)) throw new PlannerException("profile.worker_round_trip_devices: give it together with worker_round_trip_us");
        if (WorkerRoundTripDevices is { } rd && rd < 2) throw new PlannerException($"profile.worker_round_trip_devices: {rd} must be at least 2");
        for (int i = 0; i < WorkerRoundTrips.Count; i++)
        {
            var w = WorkerRoundTrips[i];
            if (w.Devices < 2) throw new PlannerException($"profile.worker_round_trips[{i}].devices: {w.Devices} must be at least 2");
            if (!(w.Us > 0 && double.IsFinite(w.Us))) throw new PlannerException($"profile.worker_round_trips[{i}].us: {w.Us} must be a positive number");
            if (WorkerRoundTrips.Take(i).Any(o => o.Devices == w.Devices)) throw new PlannerException($"profile.worker_round_trips[{i}].devices: {w.Devices} appears twice");
            foreach (var (name, v) in new[] { ("generate_us", w.GenerateUs), ("forward_us", w.ForwardUs), ("backward_us", w.BackwardUs) })
                if (v is { } x && !(x >= 0 && double.IsFinite(x))) throw new PlannerException($"profile.worker_round_trips[{i}].{name}: {x} must be a number >= 0");
        }
        for (int i = 0; i < InProcessOverheads.Count; i++)
        {
            var w = InProcessOverheads[i];
            if (w.Devices < 2) throw new PlannerException($"profile.in_process_overheads[{i}].devices: {w.Devices} must be at least 2");
            if (!(w.Us >= 0 && double.IsFinite(w.Us))) throw new PlannerException($"profile.in_process_overheads[{i}].us: {w.Us} must be a number >= 0");
            if (InProcessOverheads.Take(i).Any(o => o.Devices == w.Devices)) throw new PlannerException($"profile.in_process_overheads[{i}].devices: {w.Devices} appears twice");
            foreach (var (name, v) in new[] { ("generate_us", w.GenerateUs), ("forward_us", w.ForwardUs), ("backward_us", w.BackwardUs) })
                if (v is { } x && !(x >= 0 && double.IsFinite(x))) throw new PlannerException($"profile.in_process_overheads[{i}].{name}: {x} must be a number >= 0");
        }
        foreach (var (list, key) in new[] { (TrainSteps, "train_steps"), (Generations, "generations") })
        for (int i = 0; i < list.Count; i++)
        {
            var t = list[i];
            string f = $"profile.{key}[{i}]";
            if (t.Layers <= 0 || t.Hidden <= 0 || t.Intermediate <= 0 || t.Heads <= 0 || t.KvHeads <= 0 || t.Vocab <= 0)
                throw new PlannerException($"{f}: layers, hidden, intermediate, heads, kv_heads, vocab must be positive");
            if (t.Points.Count == 0) throw new PlannerException($"{f}.points: give at least one point");
            for (int j = 0; j < t.Points.Count; j++)
            {
                var pt = t.Points[j];
                if (pt.Tokens <= 0) throw new PlannerException($"{f}.points[{j}].tokens: {pt.Tokens} must be positive");
                // the overhead is a difference of measurements: it may be zero, never negative
                if (!(pt.Seconds >= 0 && double.IsFinite(pt.Seconds))) throw new PlannerException($"{f}.points[{j}].seconds: {pt.Seconds} must be a number >= 0");
                if (pt.Threads is { } th2 && th2 <= 0) throw new PlannerException($"{f}.points[{j}].threads: {th2} must be positive");
            }
        }
        for (int i = 0; i < SharedCompute.Count; i++)
        {
            var c = SharedCompute[i];
            if (c.Processes < 2) throw new PlannerException($"profile.shared_compute[{i}].processes: {c.Processes} must be at least 2");
            if (!(c.OverAlone > 0 && double.IsFinite(c.OverAlone))) throw new PlannerException($"profile.shared_compute[{i}].over_alone: {c.OverAlone} must be a positive number");
            if (SharedCompute.Take(i).Any(o => o.Processes == c.Processes)) throw new PlannerException($"profile.shared_compute[{i}].processes: {c.Processes} appears twice");
        }
        for (int i = 0; i < Layers.Count; i++)
        {
            var l = Layers[i];
            if (l.Hidden <= 0 || l.Intermediate <= 0 || l.Heads <= 0 || l.KvHeads <= 0)
                throw new PlannerException($"profile.layers[{i}]: hidden, intermediate, heads, kv_heads must be positive");
            for (int j = 0; j < l.Points.Count; j++)
            {
                var pt = l.Points[j];
                string f = $"profile.layers[{i}].points[{j}]";
                if (pt.Kind is not ("fwd" or "bwd" or "decode")) throw new PlannerException($"{f}.kind: '{pt.Kind}' is not one of fwd, bwd, decode");
                if (pt.Tokens <= 0) throw new PlannerException($"{f}.tokens: {pt.Tokens} must be positive");
                if (!(pt.Seconds > 0 && double.IsFinite(pt.Seconds))) throw new PlannerException($"{f}.seconds: {pt.Seconds} must be a positive number");
                if (pt.Threads is { } t && t <= 0) throw new PlannerException($"{f}.threads: {t} must be positive");
            }
        }
    }

    /// <summary>The profile as the single device of `realn run` computes (every core, the engine's ThreadChoice): each
    /// unit of model work runs on every core or on one thread, whichever has measured faster lately, so every all-thread
    /// point (blocks, train steps and generations outside their blocks) becomes the faster of itself and the one-thread
    /// point of the same kind, tokens and context where the profile has one. Unchanged with one core or no one-thread
    /// points.</summary>
    public ProfileData FasterOfThreads()
    {
        int? all = Threads;
        if (all is not > 1) return this;
        List<LayerPoint> Faster(List<LayerPoint> pts) => pts.Select(p =>
        {
            if ((p.Threads ?? all) != all) return p;
            var one = pts.FirstOrDefault(o => o.Threads == 1 && o.Kind == p.Kind && o.Tokens == p.Tokens && o.Context == p.Context);
            return one is not null && one.Seconds < p.Seconds ? p with { Seconds = one.Seconds } : p;
        }).ToList();
        return this with
        {
            Layers = Layers.Select(l => l with { Points = Faster(l.Points) }).ToList(),
            TrainSteps = TrainSteps.Select(t => t with { Points = Faster(t.Points) }).ToList(),
            Generations = Generations.Select(t => t with { Points = Faster(t.Points) }).ToList(),
        };
    }

    /// <summary>Measured block time for a model's layer shape, or null when the profile lacks it.</summary>
    /// <param name="threads">Only points measured with this many threads (null: the all-thread points).</param>
    /// <param name="seqLen">fwd/bwd: tokens per sequence of the packed batch. Points that record theirs (`context`
    /// > 0: batches of sequences of min(tokens, context) tokens; `realn profile` measures contexts 16 and 256) are
    /// interpolated in tokens within each context, then linearly in the sequence length (attention per token grows
    /// linearly with it), clamped to the measured lengths; points without one (older profiles) are interpolated in
    /// tokens alone.</param>
    public double? BlockSeconds(ModelConfig m, string kind, double tokens, int? threads = null, double? seqLen = null)
    {
        var l = Layers.FirstOrDefault(x => x.Hidden == m.Hidden && x.Intermediate == m.Intermediate && x.Heads == m.Heads && x.KvHeads == m.KvHeads);
        if (l is null) return null;
        int? all = Threads;
        var pts = l.Points.Where(p => p.Kind == kind && (p.Threads ?? all) == (threads ?? all)).OrderBy(p => p.Tokens).ToList();
        if (pts.Count == 0) return null;
        if (kind != "decode" && seqLen is { } sl && pts.All(p => p.Context > 0))
        {
            // a group's batches are sequences of min(tokens, context) tokens
            var byLen = pts.GroupBy(p => p.Context).Select(g => (Len: Math.Min(tokens, g.Key), T: Interpolate(g.OrderBy(p => p.Tokens).ToList(), tokens)))
                .OrderBy(x => x.Len).ToList();
            if (sl <= byLen[0].Len) return byLen[0].T;
            for (int i = 1; i < byLen.Count; i++)
                if (sl <= byLen[i].Len)
                {
                    double a = (sl - byLen[i - 1].Len) / (byLen[i].Len - byLen[i - 1].Len);
                    return byLen[i - 1].T + a * (byLen[i].T - byLen[i - 1].T);
                }
            return byLen[^1].T;
        }
        return Interpolate(pts, tokens);
    }

    /// <summary>Measured seconds of a train call's optimizer step outside its blocks for a model of exactly this shape and
    /// head, at <paramref name="tokens"/> packed tokens per step in sequences of <paramref name="seqLen"/> (interpolated
    /// like <see cref="BlockSeconds"/>); null when the profile lacks the model or the thread count.</summary>
    public double? TrainStepSeconds(ModelConfig m, bool scalarHead, double tokens, int? threads = null, double? seqLen = null) =>
        OutsideBlocks(TrainSteps, m, scalarHead, tokens, threads, seqLen);

    /// <summary>Measured seconds per decode step of a generation call outside its blocks (<see cref="Generations"/>) for an
    /// LM-head model of exactly this shape, generating for <paramref name="sequences"/> sequences on one device
    /// (interpolated in sequences); null when the profile lacks the model or the thread count.</summary>
    public double? GenerationStepSeconds(ModelConfig m, double sequences, int? threads = null) =>
        OutsideBlocks(Generations, m, false, sequences, threads, null);

    private double? OutsideBlocks(List<TrainStepProfile> list, ModelConfig m, bool scalarHead, double tokens, int? threads, double? seqLen)
    {
        var t = list.FirstOrDefault(x => x.Layers == m.Layers && x.Hidden == m.Hidden && x.Intermediate == m.Intermediate && x.Heads == m.Heads
                                               && x.KvHeads == m.KvHeads && x.Vocab == m.Vocab && x.ScalarHead == scalarHead);
        if (t is null) return null;
        int? all = Threads;
        var pts = t.Points.Where(p => (p.Threads ?? all) == (threads ?? all)).ToList();
        if (pts.Count == 0) return null;
        if (seqLen is { } sl && pts.All(p => p.Context > 0))
        {
            var byLen = pts.GroupBy(p => p.Context).Select(g => (Len: (double)g.Key, T: Interpolate(g.OrderBy(p => p.Tokens).ToList(), tokens))).OrderBy(x => x.Len).ToList();
            if (sl <= byLen[0].Len) return byLen[0].T;
            for (int i = 1; i < byLen.Count; i++)
                if (sl <= byLen[i].Len) return byLen[i - 1].T + (sl - byLen[i - 1].Len) / (byLen[i].Len - byLen[i - 1].Len) * (byLen[i].T - byLen[i - 1].T);
            return byLen[^1].T;
        }
        return Interpolate(pts.OrderBy(p => p.Tokens).ToList(), tokens);
    }

    /// <summary>The master-worker round trip beyond compute measured with <paramref name="devices"/> worker processes, in
    /// microseconds (<see cref="WorkerRoundTrips"/>, else <see cref="WorkerRoundTripUs"/> for its device count); null when
    /// the profile did not measure that many.</summary>
    public WorkerRoundTrip? WorkerRoundTripEntryFor(int devices) => WorkerRoundTrips.FirstOrDefault(w => w.Devices == devices);

    /// <summary>The in-process overhead measured with <paramref name="devices"/> in-process devices (<see cref="InProcessOverheads"/>).</summary>
    public WorkerRoundTrip? InProcessOverheadFor(int devices) => InProcessOverheads.FirstOrDefault(w => w.Devices == devices);

    public double? WorkerRoundTripUsFor(int devices) =>
        WorkerRoundTrips.FirstOrDefault(w => w.Devices == devices)?.Us ?? (WorkerRoundTripDevices == devices ? WorkerRoundTripUs : null);

    /// <summary>The measured slowdown of a one-thread process computing beside <paramref name="processes"/> - 1 others on
    /// this host (<see cref="SharedCompute"/>); null when the profile did not measure that many.</summary>
    public double? SharedComputeOverAlone(int processes) => SharedCompute.FirstOrDefault(c => c.Processes == processes)?.OverAlone;

    private static double Interpolate(List<LayerPoint> pts, double tokens)
    {
        if (tokens <= pts[0].Tokens) return pts[0].Seconds;
        for (int i = 1; i < pts.Count; i++)
            if (tokens <= pts[i].Tokens)
            {
                double a = (tokens - pts[i - 1].Tokens) / (pts[i].Tokens - pts[i - 1].Tokens);
                return pts[i - 1].Seconds + a * (pts[i].Seconds - pts[i - 1].Seconds);
            }
        return pts[^1].Seconds * tokens / pts[^1].Tokens;
    }
}

/// <summary>Measured points of one transformer block shape.</summary>
public sealed record LayerProfile
{
    [JsonPropertyName("hidden")] public int Hidden { get; set; }
    [JsonPropertyName("intermediate")] public int Intermediate { get; set; }
    [JsonPropertyName("heads")] public int Heads { get; set; }
    [JsonPropertyName("kv_heads")] public int KvHeads { get; set; }
    [JsonPropertyName("points")] public List<LayerPoint> Points { get; set; } = [];
}

/// <summary>One measurement: kind fwd | bwd | decode, tokens, cached context (decode), seconds.</summary>
public sealed record LayerPoint
{
    [JsonPropertyName("kind")] public string Kind { get; set; } = "";
    [JsonPropertyName("tokens")] public long Tokens { get; set; }
    [JsonPropertyName("context")] public long Context { get; set; }
    [JsonPropertyName("seconds")] public double Seconds { get; set; }
    /// <summary>Threads of the measuring process (absent: the profile's <see cref="ProfileData.Threads"/>).</summary>
    [JsonPropertyName("threads")] [JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingNull)] public int? Threads { get; set; }
}

/// <summary>
/// A train call's optimizer step outside its transformer blocks, for one whole model (shape, vocabulary and head):
/// the engine's step (forward for the loss, the loss and its gradient, the backward with its recomputed forward, gradient
/// clipping and AdamW) timed on the model, minus <c>layers x (2 forward + backward)</c> of its blocks at the same tokens,
/// sequence length and threads (from the profile's own block points). It holds the embedding, the head and log-softmax
/// (or scalar head) forward twice and backward, the loss, the optimizer and the per-op host work.
/// </summary>
public sealed record TrainStepProfile
{
    [JsonPropertyName("layers")] public int Layers { get; set; }
    [JsonPropertyName("hidden")] public int Hidden { get; set; }
    [JsonPropertyName("intermediate")] public int Intermediate { get; set; }
    [JsonPropertyName("heads")] public int Heads { get; set; }
    [JsonPropertyName("kv_heads")] public int KvHeads { get; set; }
    [JsonPropertyName("vocab")] public int Vocab { get; set; }
    /// <summary>A critic/reward model's value head (the clipped value loss) rather than the LM head (the clipped policy loss).</summary>
    [JsonPropertyName("scalar_head")] public bool ScalarHead { get; set; }
    /// <summary>Points: <c>tokens</c> per optimizer step in sequences of <c>context</c> tokens, <c>seconds</c> outside the blocks.</summary>
    [JsonPropertyName("points")] public List<LayerPoint> Points { get; set; } = [];
}

/// <summary>
/// <c>processes</c> one-thread processes on this host each timing the same train step at once: their median step time
/// over the step timed in one process alone (<c>over_alone</c>). With at most as many processes as cores it is what
/// sharing caches and memory bandwidth costs; with more, it also holds the time slicing (4 on 2 cores: about 2x more).
/// </summary>
public sealed record SharedCompute
{
    [JsonPropertyName("processes")] public int Processes { get; set; }
    [JsonPropertyName("over_alone")] public double OverAlone { get; set; }
}

/// <summary>A worker round trip beyond compute (microseconds) measured with <c>devices</c> worker processes.</summary>
public sealed record WorkerRoundTrip
{
    [JsonPropertyName("devices")] public int Devices { get; set; }
    /// <summary>The mean over every operation of the measurement run.</summary>
    [JsonPropertyName("us")] public double Us { get; set; }
    /// <summary>By operation (`realn profile` since session 14; absent in older profiles): a generation (its prompts out,
    /// its sequences and log-probs back), a forward (an inference call, or a train step's forward whose outputs the
    /// master's loss needs) and a backward sent with the optimizer step. The master's work around an operation differs by
    /// kind (a generation's round trip measured 12.6 ms beyond compute where a forward's was 3.8 ms).</summary>
    [JsonPropertyName("generate_us")] [JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingNull)] public double? GenerateUs { get; set; }
    [JsonPropertyName("forward_us")] [JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingNull)] public double? ForwardUs { get; set; }
    [JsonPropertyName("backward_us")] [JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingNull)] public double? BackwardUs { get; set; }
}

/// <summary>The profile's JSON reader and writer, generated at build time (no reflection: `realn` is also published
/// NativeAOT, where reflection-based serialization is off). Indented, as the reflection writer wrote it. The records'
/// properties have setters, not init accessors: the generated reader builds a record with every init-only property in
/// one object initializer, so a field the file leaves out would be written as default (version 0, a null list) over
/// the property's initializer; with setters it sets only the fields present, as the reflection reader did.</summary>
[JsonSourceGenerationOptions(WriteIndented = true)]
[JsonSerializable(typeof(ProfileData))]
internal sealed partial class ProfileJson : JsonSerializerContext;
