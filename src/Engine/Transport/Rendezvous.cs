using System.Collections.Concurrent;
using System.Text.Json;
using ReaLNative.Engine.Control;

namespace ReaLNative.Engine.Transport;

/// <summary>
/// Address exchange and barriers over the control plane. The master's <see cref="Handle"/> answers
/// "register" (a rank's UCX address), "addresses" (the whole table once every rank registered,
/// "wait" before), "barrier" (released when all ranks arrived) and "report" (a worker's result);
/// workers use <see cref="Join"/> and <see cref="Barrier"/>. Every wait has a deadline.
/// </summary>
internal sealed class Rendezvous
{
    private readonly int _size;
    private readonly string?[] _addresses;
    private readonly string?[] _infos;
    private readonly ConcurrentDictionary<string, HashSet<int>> _barriers = new();
    private readonly Lock _gate = new();

    public Rendezvous(int size)
    {
        _size = size;
        _addresses = new string?[size];
        _infos = new string?[size];
    }

    /// <summary>What rank <paramref name="rank"/> registered besides its address (a worker's command
    /// endpoint, host and pid, as JSON), or null.</summary>
    public string? Info(int rank)
    {
        lock (_gate) return _infos[rank];
    }

    public ConcurrentQueue<(int Rank, string Json)> Reports { get; } = new();

    public string Handle(ControlMessage m)
    {
        using var doc = JsonDocument.Parse(m.Payload.Length == 0 ? "{}" : m.Payload);
        var root = doc.RootElement;
        int rank = root.TryGetProperty("rank", out var r) ? r.GetInt32() : -1;
        if ((uint)rank >= (uint)_size) throw new ArgumentException($"rank {rank} outside a world of {_size}");
        lock (_gate)
        {
            switch (m.Type)
            {
                case "register":
                    string address = Text(root, "address");
                    string? info = root.TryGetProperty("info", out _) ? Text(root, "info") : null;
                    _addresses[rank] = address;
                    _infos[rank] = info;
                    return "ok";
                case "addresses":
                    return _addresses.Any(a => a is null) ? Wait(r => _addresses[r] is null) : JsonSerializer.Serialize(_addresses);
                case "barrier":
                    var set = _barriers.GetOrAdd(Text(root, "name"), _ => []);
                    set.Add(rank);
                    return set.Count == _size ? "go" : Wait(r => !set.Contains(r));
                case "report":
                    Reports.Enqueue((rank, Text(root, "json")));
                    return "ok";
                default:
                    throw new ArgumentException($"unknown control request '{m.Type}'");
            }
        }
    }

    /// <summary>A required string property: a missing one, a null (which would un-register a rank)
    /// or another kind of value is refused before anything changes.</summary>
    private static string Text(JsonElement root, string name) =>
        root.TryGetProperty(name, out var v) && v.ValueKind == JsonValueKind.String
            ? v.GetString()!
            : throw new ArgumentException($"'{name}' must be a string");

    /// <summary>"wait:1,3": the ranks still missing, for the waiting rank's timeout message.</summary>
    private string Wait(Func<int, bool> missing) => "wait:" + string.Join(",", Enumerable.Range(0, _size).Where(missing));

    private static string Missing(string reply) => reply.Length > 5 ? $"rank(s) {reply[5..]} missing" : "ranks missing";

    /// <summary>Each request's deadline: what is left of the whole wait, at most 10 s.</summary>
    private static TimeSpan Step(DateTime until)
    {
        var left = until - DateTime.UtcNow;
        return left < TimeSpan.FromMilliseconds(100) ? TimeSpan.FromMilliseconds(100) : left > TimeSpan.FromSeconds(10) ? TimeSpan.FromSeconds(10) : left;
    }

    /// <summary>Registers this rank's address, waits for everyone's and connects; all within
    /// <paramref name="timeout"/>, else a <see cref="TimeoutException"/> naming the missing ranks.</summary>
    public static void Join(ControlClient client, UcxTransport transport, TimeSpan timeout, string? info = null)
    {
        var until = DateTime.UtcNow + timeout;
        var reg = new System.Text.Json.Nodes.JsonObject { ["rank"] = transport.Rank, ["address"] = Convert.ToBase64String(transport.LocalAddress) };
        if (info is not null) reg["info"] = info;
        client.Request("register", reg.ToJsonString(), Step(until));
        while (true)
        {
            var reply = client.Request("addresses", JsonSerializer.Serialize(new { rank = transport.Rank }), Step(until));
            if (!reply.StartsWith("wait", StringComparison.Ordinal))
            {
                var table = JsonSerializer.Deserialize<string[]>(reply)!;
                transport.Connect(table.Select(Convert.FromBase64String).ToArray());
                return;
            }
            if (DateTime.UtcNow > until)
                throw new TimeoutException($"rank {transport.Rank}: rendezvous at {client.Endpoint}: not every rank registered within {timeout.TotalSeconds:F0} s ({Missing(reply)})");
            Thread.Sleep(10);
        }
    }

    public static void Barrier(ControlClient client, int rank, string name, TimeSpan timeout)
    {
        var until = DateTime.UtcNow + timeout;
        string reply;
        while ((reply = client.Request("barrier", JsonSerializer.Serialize(new { rank, name }), Step(until))) != "go")
        {
            if (DateTime.UtcNow > until)
                throw new TimeoutException($"rank {rank}: barrier '{name}' not reached by every rank within {timeout.TotalSeconds:F0} s ({Missing(reply)})");
            Thread.Sleep(1);
        }
    }
}
