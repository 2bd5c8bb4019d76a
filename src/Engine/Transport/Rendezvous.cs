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
    private readonly ConcurrentDictionary<string, HashSet<int>> _barriers = new();
    private readonly Lock _gate = new();

    public Rendezvous(int size)
    {
        _size = size;
        _addresses = new string?[size];
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
                    _addresses[rank] = root.GetProperty("address").GetString();
                    return "ok";
                case "addresses":
                    return _addresses.Any(a => a is null) ? "wait" : JsonSerializer.Serialize(_addresses);
                case "barrier":
                    var set = _barriers.GetOrAdd(root.GetProperty("name").GetString()!, _ => []);
                    set.Add(rank);
                    return set.Count == _size ? "go" : "wait";
                case "report":
                    Reports.Enqueue((rank, root.GetProperty("json").GetString()!));
                    return "ok";
                default:
                    throw new ArgumentException($"unknown control request '{m.Type}'");
            }
        }
    }

    /// <summary>Registers this rank's address, waits for everyone's and connects.</summary>
    public static void Join(ControlClient client, UcxTransport transport, TimeSpan timeout)
    {
        var rq = TimeSpan.FromSeconds(10);
        client.Request("register", JsonSerializer.Serialize(new { rank = transport.Rank, address = Convert.ToBase64String(transport.LocalAddress) }), rq);
        var until = DateTime.UtcNow + timeout;
        while (true)
        {
            var reply = client.Request("addresses", JsonSerializer.Serialize(new { rank = transport.Rank }), rq);
            if (reply != "wait")
            {
                var table = JsonSerializer.Deserialize<string[]>(reply)!;
                transport.Connect(table.Select(Convert.FromBase64String).ToArray());
                return;
            }
            if (DateTime.UtcNow > until) throw new TimeoutException($"rank {transport.Rank}: not every rank registered within {timeout.TotalSeconds:F0} s");
            Thread.Sleep(10);
        }
    }

    public static void Barrier(ControlClient client, int rank, string name, TimeSpan timeout)
    {
        var until = DateTime.UtcNow + timeout;
        while (client.Request("barrier", JsonSerializer.Serialize(new { rank, name }), TimeSpan.FromSeconds(10)) != "go")
        {
            if (DateTime.UtcNow > until) throw new TimeoutException($"rank {rank}: barrier '{name}' not reached by every rank within {timeout.TotalSeconds:F0} s");
            Thread.Sleep(1);
        }
    }
}
