// The execution plan: the contract between the planner (writes it) and the engine (runs it).
// JSON format in docs/plan-format.md; PlanJson reads/writes it, PlanValidator checks it against a cluster
// and an experiment with field-path errors.
using System.Text.Json;

namespace ReaLNative.Planner;

/// <summary>
/// A device mesh: a contiguous, aligned range of one node's devices (<see cref="NodeCount"/> = 1,
/// <see cref="DeviceCount"/> a power of two, <see cref="DeviceStart"/> a multiple of it) or a
/// contiguous range of whole nodes (<see cref="DeviceStart"/> = 0, <see cref="DeviceCount"/> =
/// devices per node). Global device index = node * devices_per_node + device.
/// </summary>
public readonly record struct Mesh(int NodeStart, int NodeCount, int DeviceStart, int DeviceCount)
{
    /// <summary>Number of devices in the mesh.</summary>
    public int Size => NodeCount * DeviceCount;
    /// <summary>First global device index.</summary>
    public int FirstDevice(int devicesPerNode) => NodeStart * devicesPerNode + DeviceStart;
    /// <summary>Global device index of mesh rank <paramref name="rank"/>.</summary>
    public int Device(int rank, int devicesPerNode) =>
        (NodeStart + rank / DeviceCount) * devicesPerNode + DeviceStart + rank % DeviceCount;
    /// <summary>Whether two meshes share a device.</summary>
    public bool Overlaps(Mesh o) =>
        NodeStart < o.NodeStart + o.NodeCount && o.NodeStart < NodeStart + NodeCount &&
        DeviceStart < o.DeviceStart + o.DeviceCount && o.DeviceStart < DeviceStart + DeviceCount;
    public override string ToString() =>
        NodeCount > 1 ? $"n{NodeStart}-{NodeStart + NodeCount - 1}" : $"n{NodeStart}:d{DeviceStart}-{DeviceStart + DeviceCount - 1}";
}

/// <summary>3D-parallel strategy. Ranks map to coordinates row-major over [pipe, data, model].</summary>
public readonly record struct Strategy(int Pp, int Dp, int Tp)
{
    public int Size => Pp * Dp * Tp;
    public override string ToString() => $"{Pp}/{Dp}/{Tp}";
}

/// <summary>One call of the plan: which mesh and strategy the call of <see cref="Model"/> runs on.</summary>
public sealed record PlanCall(string Name, string Model, CallType Type, Mesh Mesh, Strategy Strategy, int MicroBatches);

/// <summary>Planner estimate stored with a plan (informational for the engine; `realn run --plan`
/// prints each call's measured time beside <see cref="CallSeconds"/>).</summary>
public sealed record PlanEstimate(double IterationSeconds, long[] PeakMemoryBytes, IReadOnlyDictionary<string, double>? CallSeconds = null);

/// <summary>An execution plan (docs/plan-format.md). Produced by <c>realn plan</c>,
/// consumed by <c>realn run</c>/<c>realn launch</c>; validate with <see cref="PlanValidator"/>.</summary>
public sealed record Plan(int Nodes, int DevicesPerNode, IReadOnlyList<PlanCall> Calls, PlanEstimate? Estimate)
{
    public int Version => 1;
    public PlanCall Call(string name) => Calls.First(c => c.Name == name);
}

/// <summary>Reads and writes the plan JSON. Reading reports the JSON path of a bad field.</summary>
public static class PlanJson
{
    public static string TypeName(CallType t) => t switch { CallType.Generate => "generate", CallType.Inference => "inference", _ => "train_step" };

    public static void Write(Utf8JsonWriter w, Plan p)
    {
        w.WriteStartObject();
        w.WriteNumber("version", p.Version);
        w.WriteStartObject("cluster"); w.WriteNumber("nodes", p.Nodes); w.WriteNumber("devices_per_node", p.DevicesPerNode); w.WriteEndObject();
        w.WriteStartArray("calls");
        foreach (var c in p.Calls)
        {
            w.WriteStartObject();
            w.WriteString("name", c.Name); w.WriteString("model", c.Model); w.WriteString("type", TypeName(c.Type));
            w.WriteStartObject("mesh");
            w.WriteNumber("node_start", c.Mesh.NodeStart); w.WriteNumber("node_count", c.Mesh.NodeCount);
            w.WriteNumber("device_start", c.Mesh.DeviceStart); w.WriteNumber("device_count", c.Mesh.DeviceCount);
            w.WriteEndObject();
            w.WriteStartObject("strategy"); w.WriteNumber("pp", c.Strategy.Pp); w.WriteNumber("dp", c.Strategy.Dp); w.WriteNumber("tp", c.Strategy.Tp); w.WriteEndObject();
            w.WriteNumber("micro_batches", c.MicroBatches);
            w.WriteEndObject();
        }
        w.WriteEndArray();
        if (p.Estimate is { } e)
        {
            w.WriteStartObject("estimate");
            w.WriteNumber("iteration_seconds", Math.Round(e.IterationSeconds, 6));
            w.WriteStartArray("peak_memory_bytes"); foreach (var b in e.PeakMemoryBytes) w.WriteNumberValue(b); w.WriteEndArray();
            if (e.CallSeconds is { } cs)
            {
                w.WriteStartObject("call_seconds");
                foreach (var c in p.Calls) if (cs.TryGetValue(c.Name, out double v)) w.WriteNumber(c.Name, Math.Round(v, 6));
                w.WriteEndObject();
            }
            w.WriteEndObject();
        }
        w.WriteEndObject();
    }

    public static string ToJson(Plan p, bool indented = true)
    {
        using var ms = new MemoryStream();
        using (var w = new Utf8JsonWriter(ms, new JsonWriterOptions { Indented = indented })) Write(w, p);
        return System.Text.Encoding.UTF8.GetString(ms.ToArray());
    }

    public static Plan Load(string path)
    {
        string text;
        try { text = InputFile.ReadAllText(path, "plan"); }
        catch (InputException e) { throw new PlannerException(e.Message); }
        return Parse(text);
    }

    /// <summary>Parses plan JSON strictly: an unknown field is an error naming its JSON path and the
    /// allowed fields, as the experiment config reader does; syntax errors name the line and column.</summary>
    public static Plan Parse(string json)
    {
        if (string.IsNullOrWhiteSpace(json)) throw new PlannerException("plan: the file is empty; a plan is the JSON `realn plan` writes");
        JsonDocument doc;
        try { doc = JsonDocument.Parse(json, new JsonDocumentOptions { AllowDuplicateProperties = false }); }
        catch (JsonException e)
        {
            // The parser's message ends with its own 0-based "LineNumber: .. | BytePositionInLine: .." suffix.
            string why = e.Message;
            int cut = why.IndexOf(" LineNumber:", StringComparison.Ordinal);
            if (cut > 0) why = why[..cut];
            throw new PlannerException($"plan: not valid JSON at line {(e.LineNumber ?? 0) + 1}, column {(e.BytePositionInLine ?? 0) + 1}: {why}");
        }
        using (doc)
        {
            var root = doc.RootElement;
            if (root.ValueKind != JsonValueKind.Object) throw new PlannerException("plan: expected a JSON object");
            Known(root, "plan", "version", "cluster", "calls", "estimate");
            int version = Int(root, "version", "plan");
            if (version != 1) throw new PlannerException($"plan.version: {version} is not supported (expected 1)");
            var cl = Obj(root, "cluster", "plan");
            Known(cl, "plan.cluster", "nodes", "devices_per_node");
            int nodes = Int(cl, "nodes", "plan.cluster"), dpn = Int(cl, "devices_per_node", "plan.cluster");
            if (!root.TryGetProperty("calls", out var calls) || calls.ValueKind != JsonValueKind.Array)
                throw new PlannerException("plan.calls: missing or not an array");
            var list = new List<PlanCall>();
            int i = 0;
            foreach (var c in calls.EnumerateArray())
            {
                string f = $"plan.calls[{i++}]";
                if (c.ValueKind != JsonValueKind.Object) throw new PlannerException($"{f}: expected an object");
                Known(c, f, "name", "model", "type", "mesh", "strategy", "micro_batches");
                string type = Str(c, "type", f);
                var ct = type switch
                {
                    "generate" => CallType.Generate, "inference" => CallType.Inference, "train_step" => CallType.TrainStep,
                    _ => throw new PlannerException($"{f}.type: '{type}' is not one of generate, inference, train_step"),
                };
                var m = Obj(c, "mesh", f); var s = Obj(c, "strategy", f);
                Known(m, f + ".mesh", "node_start", "node_count", "device_start", "device_count");
                Known(s, f + ".strategy", "pp", "dp", "tp");
                int micro = c.TryGetProperty("micro_batches", out _) ? Int(c, "micro_batches", f) : 1;
                if (micro < 1) throw new PlannerException($"{f}.micro_batches: {micro} must be at least 1");
                list.Add(new PlanCall(Str(c, "name", f), Str(c, "model", f), ct,
                    new Mesh(Int(m, "node_start", f + ".mesh"), Int(m, "node_count", f + ".mesh"), Int(m, "device_start", f + ".mesh"), Int(m, "device_count", f + ".mesh")),
                    new Strategy(Int(s, "pp", f + ".strategy"), Int(s, "dp", f + ".strategy"), Int(s, "tp", f + ".strategy")),
                    micro));
            }
            PlanEstimate? est = null;
            if (root.TryGetProperty("estimate", out var e0))
            {
                if (e0.ValueKind != JsonValueKind.Object) throw new PlannerException("plan.estimate: expected an object");
                Known(e0, "plan.estimate", "iteration_seconds", "peak_memory_bytes", "call_seconds");
            }
            if (root.TryGetProperty("estimate", out var e) && e.ValueKind == JsonValueKind.Object &&
                e.TryGetProperty("iteration_seconds", out var it) && it.ValueKind == JsonValueKind.Number)
            {
                var peaks = e.TryGetProperty("peak_memory_bytes", out var pk) && pk.ValueKind == JsonValueKind.Array
                    ? pk.EnumerateArray().Select(x => x.ValueKind == JsonValueKind.Number ? x.GetInt64() : 0L).ToArray() : [];
                Dictionary<string, double>? callSeconds = null;
                if (e.TryGetProperty("call_seconds", out var cs) && cs.ValueKind == JsonValueKind.Object)
                    callSeconds = cs.EnumerateObject().Where(x => x.Value.ValueKind == JsonValueKind.Number).ToDictionary(x => x.Name, x => x.Value.GetDouble());
                est = new PlanEstimate(it.GetDouble(), peaks, callSeconds);
            }
            return new Plan(nodes, dpn, list, est);
        }
    }

    /// <summary>Throws on the first property of <paramref name="e"/> that is not one of <paramref name="allowed"/>.</summary>
    private static void Known(JsonElement e, string f, params string[] allowed)
    {
        foreach (var p in e.EnumerateObject())
            if (Array.IndexOf(allowed, p.Name) < 0)
                throw new PlannerException($"{f}.{p.Name}: unknown field; allowed fields here: {string.Join(", ", allowed)}");
    }

    private static JsonElement Obj(JsonElement e, string k, string f) =>
        e.TryGetProperty(k, out var v) && v.ValueKind == JsonValueKind.Object ? v : throw new PlannerException($"{f}.{k}: missing or not an object");
    private static string Str(JsonElement e, string k, string f) =>
        e.TryGetProperty(k, out var v) && v.ValueKind == JsonValueKind.String ? v.GetString()! : throw new PlannerException($"{f}.{k}: missing or not a string");
    private static int Int(JsonElement e, string k, string f)
    {
        if (!e.TryGetProperty(k, out var v)) throw new PlannerException($"{f}.{k}: missing");
        if (v.ValueKind != JsonValueKind.Number || !v.TryGetInt32(out int x)) throw new PlannerException($"{f}.{k}: expected an integer, got {v.GetRawText()}");
        return x;
    }
}

/// <summary>Structural checks of a plan against a cluster and an experiment; memory is checked by
/// <see cref="Estimator.Memory"/>. Throws <see cref="PlannerException"/> naming the field.</summary>
public static class PlanValidator
{
    public static void ValidateMesh(Mesh m, int nodes, int dpn, string f)
    {
        if (m.NodeCount < 1 || m.NodeStart < 0 || m.NodeStart + m.NodeCount > nodes)
            throw new PlannerException($"{f}.mesh: nodes {m.NodeStart}..{m.NodeStart + m.NodeCount - 1} are outside the cluster's {nodes} node(s)");
        if (m.NodeCount > 1 && (m.DeviceStart != 0 || m.DeviceCount != dpn))
            throw new PlannerException($"{f}.mesh: a multi-node mesh must cover whole nodes (device_start 0, device_count {dpn}), got {m.DeviceStart}/{m.DeviceCount}");
        if (m.DeviceCount < 1 || (m.DeviceCount & (m.DeviceCount - 1)) != 0 || m.DeviceStart < 0 || m.DeviceStart % m.DeviceCount != 0 || m.DeviceStart + m.DeviceCount > dpn)
            throw new PlannerException($"{f}.mesh: devices {m.DeviceStart}..{m.DeviceStart + m.DeviceCount - 1} must be an aligned power-of-two range within {dpn} devices per node");
    }

    /// <summary>Checks strategy constraints of a call on a model (tp divides heads, pp at most layers,
    /// enough sequences for dp and micro-batches).</summary>
    public static string? StrategyProblem(Strategy s, int microBatches, ModelConfig m, ModelCall c, int dpn)
    {
        if (s.Pp < 1 || s.Dp < 1 || s.Tp < 1) return "pp, dp, tp must be at least 1";
        if (s.Tp > dpn) return $"tp {s.Tp} exceeds the {dpn} devices of a node";
        if (m.Heads % s.Tp != 0) return $"tp {s.Tp} does not divide the {m.Heads} attention heads of the model";
        if (m.KvHeads % s.Tp != 0 && s.Tp % m.KvHeads != 0) return $"tp {s.Tp} and the {m.KvHeads} kv heads do not divide one another";
        if (s.Pp > m.Layers) return $"pp {s.Pp} exceeds the {m.Layers} layers";
        int seqs = c.Sequences / c.OptimizerSteps;
        if (seqs < s.Dp) return $"dp {s.Dp} exceeds the {seqs} sequences per step";
        if (microBatches < 1) return $"micro_batches {microBatches} must be at least 1";
        if (microBatches * s.Dp > seqs) return $"micro_batches {microBatches} x dp {s.Dp} exceeds the {seqs} sequences per step";
        return null;
    }

    /// <summary>Validates the plan's structure for this cluster and experiment.</summary>
    public static void Validate(Plan plan, ClusterSpec cluster, Experiment exp)
    {
        if (plan.Nodes != cluster.Nodes || plan.DevicesPerNode != cluster.DevicesPerNode)
            throw new PlannerException($"plan.cluster: plan is for {plan.Nodes}x{plan.DevicesPerNode} devices, cluster '{cluster.Name}' has {cluster.Nodes}x{cluster.DevicesPerNode}");
        var seen = new HashSet<string>();
        for (int i = 0; i < plan.Calls.Count; i++)
        {
            var pc = plan.Calls[i];
            string f = $"plan.calls[{i}] ({pc.Name})";
            if (!seen.Add(pc.Name)) throw new PlannerException($"{f}.name: duplicate call");
            var call = exp.Calls.FirstOrDefault(c => c.Name == pc.Name)
                ?? throw new PlannerException($"{f}.name: experiment '{exp.Name}' ({exp.Algorithm}) has no call '{pc.Name}' (calls: {string.Join(", ", exp.Calls.Select(c => c.Name))})");
            if (pc.Model != call.Role) throw new PlannerException($"{f}.model: '{pc.Model}' but call {call.Name} belongs to '{call.Role}'");
            if (pc.Type != call.Type) throw new PlannerException($"{f}.type: '{PlanJson.TypeName(pc.Type)}' but call {call.Name} is '{PlanJson.TypeName(call.Type)}'");
            ValidateMesh(pc.Mesh, cluster.Nodes, cluster.DevicesPerNode, f);
            if (pc.Strategy.Size != pc.Mesh.Size)
                throw new PlannerException($"{f}.strategy: pp*dp*tp = {pc.Strategy.Size} but the mesh has {pc.Mesh.Size} devices");
            if (pc.Strategy.Tp > pc.Mesh.DeviceCount || pc.Mesh.DeviceCount % pc.Strategy.Tp != 0)
                throw new PlannerException($"{f}.strategy: tp {pc.Strategy.Tp} would span nodes (it must divide the mesh's {pc.Mesh.DeviceCount} devices per node)");
            if (StrategyProblem(pc.Strategy, pc.MicroBatches, exp.Models[call.Role], call, cluster.DevicesPerNode) is { } why)
                throw new PlannerException($"{f}.strategy: {why}");
        }
        foreach (var c in exp.Calls)
            if (!seen.Contains(c.Name)) throw new PlannerException($"plan.calls: call '{c.Name}' of the experiment is missing");
    }
}
