using System.Collections.Concurrent;
using System.Diagnostics;
using System.Globalization;
using System.Text.Json;
using System.Text.Json.Nodes;
using ReaLNative.Engine.Control;

namespace ReaLNative.Engine.Transport;

/// <summary>
/// Address exchange and barriers over the control plane. The master's <see cref="Handle"/> answers
/// "register" (a rank's UCX address), "addresses" (the whole table once every rank registered,
/// "wait" before), "barrier" (released when all ranks arrived), "start" (a barrier whose release
/// names one instant for every rank to start at, <see cref="Start"/>) and "report" (a worker's
/// result); workers use <see cref="Join"/>, <see cref="Barrier"/> and <see cref="Start"/>. Every
/// wait has a deadline.
/// </summary>
internal sealed class Rendezvous
{
    private readonly int _size;
    private readonly string?[] _addresses;
    private readonly string?[] _infos;
    private readonly ConcurrentDictionary<string, HashSet<int>> _barriers = new();
    private readonly ConcurrentDictionary<string, HashSet<int>> _startArrivals = new();
    private readonly ConcurrentDictionary<string, long> _starts = new();
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
                    return _addresses.Any(a => a is null) ? Wait(r => _addresses[r] is null) : new JsonArray([.. _addresses.Select(a => (JsonNode?)a)]).ToJsonString();
                case "barrier":
                    var set = _barriers.GetOrAdd(Text(root, "name"), _ => []);
                    set.Add(rank);
                    return set.Count == _size ? "go" : Wait(r => !set.Contains(r));
                case "start":
                    var arrived = _startArrivals.GetOrAdd(Text(root, "name"), _ => []);
                    arrived.Add(rank);
                    if (arrived.Count < _size) return Wait(r => !arrived.Contains(r));
                    // Fixed when the last rank arrives: every rank's next poll (1 ms apart) lands before it.
                    long at = _starts.GetOrAdd(Text(root, "name"), _ => Stopwatch.GetTimestamp() + StartMargin);
                    return "go:" + at.ToString(CultureInfo.InvariantCulture);
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
        var reg = new JsonObject { ["rank"] = transport.Rank, ["address"] = Convert.ToBase64String(transport.LocalAddress) };
        if (info is not null) reg["info"] = info;
        client.Request("register", reg.ToJsonString(), Step(until));
        while (true)
        {
            var reply = client.Request("addresses", new JsonObject { ["rank"] = transport.Rank }.ToJsonString(), Step(until));
            if (!reply.StartsWith("wait", StringComparison.Ordinal))
            {
                var table = JsonNode.Parse(reply)!.AsArray().Select(n => n!.GetValue<string>()).ToArray();
                transport.Connect(table.Select(Convert.FromBase64String).ToArray());
                return;
            }
            if (DateTime.UtcNow > until)
                throw new TimeoutException($"rank {transport.Rank}: rendezvous at {client.Endpoint}: not every rank registered within {timeout.TotalSeconds:F0} s ({Missing(reply)})");
            Thread.Sleep(10);
        }
    }

    /// <summary>How far after the last rank's arrival at a <see cref="Start"/> its ranks start: longer
    /// than a waiting rank's poll (1 ms sleep and a control-plane round trip), so that every rank
    /// learns the instant before it comes. 20 ms: with 5 ms, idle runs of `realn bench realloc` (4 worker
    /// processes and the master on 2 cores) had a rank learn the instant 2-8 ms after it in every
    /// repetition of some references; with 20 ms none did.</summary>
    public static readonly long StartMargin = Stopwatch.Frequency * 20 / 1000;

    /// <summary>A barrier that releases every rank at one instant: when the last rank has arrived, the
    /// master names a start time (<see cref="StartMargin"/> later, on <see cref="Stopwatch"/>'s clock:
    /// CLOCK_MONOTONIC, one clock for every process of a host, so only for ranks of one host); each
    /// rank learns it by polling, sleeps until about a millisecond before and yields the core until
    /// it comes (a spin would keep an equal-priority real-time process off the core), then
    /// returns it. A rank that learns it late returns at once (its own start is later: callers
    /// time with their own timestamps). With <paramref name="wait"/> false a rank that takes no part
    /// in what follows returns as soon as it knows the instant, without waiting for it.</summary>
    public static long Start(ControlClient client, int rank, string name, TimeSpan timeout, bool wait = true)
    {
        var until = DateTime.UtcNow + timeout;
        string reply;
        while (!(reply = client.Request("start", new JsonObject { ["rank"] = rank, ["name"] = name }.ToJsonString(), Step(until))).StartsWith("go:", StringComparison.Ordinal))
        {
            if (DateTime.UtcNow > until)
                throw new TimeoutException($"rank {rank}: start '{name}' not reached by every rank within {timeout.TotalSeconds:F0} s ({Missing(reply)})");
            Thread.Sleep(1);
        }
        long at = long.Parse(reply.AsSpan(3), NumberStyles.Integer, CultureInfo.InvariantCulture);
        if (at - Stopwatch.GetTimestamp() > 1000 * StartMargin)
            throw new InvalidOperationException($"rank {rank}: start '{name}' named an instant {(at - Stopwatch.GetTimestamp()) / (double)Stopwatch.Frequency:F1} s ahead (another host's clock?)");
        if (!wait) return at;
        long spin = Stopwatch.Frequency * 3 / 2000;  // the last 1.5 ms: polled (a sleep overshoots by up to a tick)
        for (long left; (left = at - Stopwatch.GetTimestamp()) > 0;)
        {
            if (left > spin) Thread.Sleep(TimeSpan.FromTicks((left - spin) * TimeSpan.TicksPerSecond / Stopwatch.Frequency));
            else Thread.Yield();
        }
        return at;
    }

    public static void Barrier(ControlClient client, int rank, string name, TimeSpan timeout)
    {
        var until = DateTime.UtcNow + timeout;
        string reply;
        while ((reply = client.Request("barrier", new JsonObject { ["rank"] = rank, ["name"] = name }.ToJsonString(), Step(until))) != "go")
        {
            if (DateTime.UtcNow > until)
                throw new TimeoutException($"rank {rank}: barrier '{name}' not reached by every rank within {timeout.TotalSeconds:F0} s ({Missing(reply)})");
            Thread.Sleep(1);
        }
    }
}
