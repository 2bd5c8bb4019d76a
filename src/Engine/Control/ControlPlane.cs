// The control plane: a ROUTER on the master, a DEALER per worker, every message HMAC-sealed
// (MessageAuth). Whatever arrives is bounded before it is looked at: NetMQ's MaxMsgSize
// disconnects a peer that announces a frame above the limit before buffering it, and the reader
// below keeps at most the expected frames and bytes of a message. Only then come the MAC, the
// header checks and a JSON parse of the payload; a message failing any of them is counted by
// reason, logged and dropped, never executed.
using System.Text.Json;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;
using NetMQ;
using NetMQ.Sockets;

namespace ReaLNative.Engine.Control;

/// <summary>Limits of one control-plane socket.</summary>
internal sealed record ControlOptions
{
    /// <summary>16 MiB: control messages carry metadata (addresses, plans, small reports), never tensors.</summary>
    public const long DefaultMaxMessageBytes = 16L << 20;

    /// <summary>Upper bound on one frame (enforced by NetMQ, which disconnects the sender) and on all
    /// frames of one message together (enforced here; the message is dropped).</summary>
    public long MaxMessageBytes { get; init; } = DefaultMaxMessageBytes;

    /// <summary>Requests whose payload is neither empty nor JSON are refused (an error reply) unexecuted.</summary>
    public bool RequireJsonPayload { get; init; } = true;

    /// <summary>Messages queued per peer before NetMQ stops reading that peer's connection.</summary>
    public int ReceiveHighWatermark { get; init; } = 256;

    public static ControlOptions Default { get; } = new();

    internal void Apply(NetMQSocket s)
    {
        if (MaxMessageBytes < 1024) throw new ArgumentOutOfRangeException(nameof(MaxMessageBytes), MaxMessageBytes, "at least 1024 bytes");
        s.Options.MaxMsgSize = MaxMessageBytes;
        s.Options.ReceiveHighWatermark = ReceiveHighWatermark;
        s.Options.Linger = TimeSpan.Zero;
    }
}

/// <summary>Counts of dropped messages by reason, thread-safe, with rate-limited logging.</summary>
internal sealed class DropCounters
{
    private readonly long[] _counts = new long[Enum.GetValues<DropReason>().Length];

    public long this[DropReason r] => Interlocked.Read(ref _counts[(int)r]);
    public long Total
    {
        get
        {
            long t = 0;
            for (int i = 0; i < _counts.Length; i++) t += Interlocked.Read(ref _counts[i]);
            return t;
        }
    }

    public IReadOnlyDictionary<DropReason, long> Snapshot() =>
        Enum.GetValues<DropReason>().ToDictionary(r => r, r => this[r]);

    /// <summary>Counts one drop; logs the first ten of a reason, then every thousandth.</summary>
    internal void Add(DropReason r, string detail, ILogger log, string where)
    {
        long n = Interlocked.Increment(ref _counts[(int)r]);
        if (n <= 10 || n % 1000 == 0)
            log.LogWarning("{Where}: dropped a message ({Reason}, {Count} so far): {Detail}", where, r, n, detail);
    }

    public override string ToString() =>
        string.Join(", ", Snapshot().Where(kv => kv.Value > 0).Select(kv => $"{kv.Key} {kv.Value}"));
}

/// <summary>Reads one multipart message keeping at most <c>keep</c> frames and <c>maxBytes</c>
/// bytes; the rest is skipped without being copied.</summary>
internal static class BoundedReceive
{
    internal readonly record struct Received(List<byte[]> Frames, int FrameCount, long Bytes);

    internal static bool TryReceive(NetMQSocket s, TimeSpan timeout, int keep, long maxBytes, out Received m)
    {
        m = default;
        if (!s.TryReceiveFrameBytes(timeout, out var first, out bool more)) return false;
        var frames = new List<byte[]>(keep) { first };
        int count = 1;
        long bytes = first.Length;
        while (more)  // the rest of a multipart message arrives with its first frame
        {
            if (count < keep && bytes <= maxBytes)
            {
                var f = s.ReceiveFrameBytes(out more);
                frames.Add(f);
                bytes += f.Length;
            }
            else s.SkipFrame(out more);
            count++;
        }
        m = new Received(frames, count, bytes);
        return true;
    }
}

/// <summary>
/// The master's end of the control plane: a ROUTER socket answering authenticated requests from
/// workers with the handler on its own poller thread. Malformed, oversized, unauthenticated,
/// replayed or foreign-job messages are counted in <see cref="Drops"/>, logged and dropped (no
/// reply: the sender's deadline reports it); an authenticated request whose payload is not JSON
/// gets an error reply without reaching the handler.
/// </summary>
internal sealed class ControlServer : IDisposable
{
    private readonly RouterSocket _socket;
    private readonly NetMQPoller _poller;
    private readonly MessageAuth _auth;
    private readonly Func<ControlMessage, string> _handler;
    private readonly ILogger _log;
    private readonly ControlOptions _opt;
    private long _seq, _handled;

    /// <param name="endpoint">e.g. tcp://0.0.0.0:0 (a free port) or tcp://127.0.0.1:5555.</param>
    public ControlServer(string endpoint, MessageAuth auth, Func<ControlMessage, string> handler, ILogger? log = null, ControlOptions? options = null)
    {
        _auth = auth;
        _handler = handler;
        _log = log ?? NullLogger.Instance;
        _opt = options ?? ControlOptions.Default;
        _socket = new RouterSocket();
        _opt.Apply(_socket);
        if (endpoint.EndsWith(":0", StringComparison.Ordinal))
        {
            int port = _socket.BindRandomPort(endpoint[..endpoint.LastIndexOf(':')]);
            Endpoint = endpoint[..endpoint.LastIndexOf(':')].Replace("0.0.0.0", "127.0.0.1").Replace("*", "127.0.0.1") + ":" + port;
        }
        else
        {
            _socket.Bind(endpoint);
            Endpoint = endpoint;
        }
        _socket.ReceiveReady += OnReceive;
        _poller = [_socket];
        _poller.RunAsync("realn-control");
    }

    /// <summary>Where workers connect.</summary>
    public string Endpoint { get; }

    /// <summary>Messages dropped (or refused) unexecuted, by reason.</summary>
    public DropCounters Drops { get; } = new();

    /// <summary>Messages dropped because they failed a check (all reasons).</summary>
    public long Rejected => Drops.Total;

    /// <summary>Requests that reached the handler.</summary>
    public long Handled => Interlocked.Read(ref _handled);

    /// <summary>Whether the poller thread answering requests is still running.</summary>
    public bool IsRunning => _poller.IsRunning;

    private void OnReceive(object? sender, NetMQSocketEventArgs e)
    {
        // One identity frame (added by ROUTER, at most 255 bytes) + the six frames of the wire form.
        while (BoundedReceive.TryReceive(e.Socket, TimeSpan.Zero, 1 + MessageAuth.FrameCount, _opt.MaxMessageBytes + 256, out var m))
        {
            try { Process(e.Socket, m); }
            catch (Exception ex)  // never let one message stop the poller thread
            {
                _log.LogError(ex, "control plane: failed while answering a message");
            }
        }
    }

    private void Process(NetMQSocket socket, BoundedReceive.Received m)
    {
        var identity = m.Frames[0];
        if (m.Bytes - identity.Length > _opt.MaxMessageBytes)
        {
            Drops.Add(DropReason.Oversized, $"{m.Bytes - identity.Length} bytes in {m.FrameCount - 1} frames, the limit is {_opt.MaxMessageBytes}", _log, "control plane");
            return;
        }
        if (m.FrameCount != 1 + MessageAuth.FrameCount)
        {
            Drops.Add(DropReason.FrameCount, $"{m.FrameCount - 1} frames, expected {MessageAuth.FrameCount}", _log, "control plane");
            return;
        }
        ControlMessage req;
        try { req = _auth.Open(m.Frames.GetRange(1, MessageAuth.FrameCount)); }
        catch (ControlAuthException ex)
        {
            Drops.Add(ex.Reason, ex.Message, _log, "control plane");
            return;
        }
        string type = "reply", reply;
        if (_opt.RequireJsonPayload && !IsJson(req.Payload, out string? why))
        {
            Drops.Add(DropReason.Payload, $"'{req.Type}' from '{req.Sender}': {why}", _log, "control plane");
            type = "error";
            reply = $"malformed JSON payload ({why})";
        }
        else
        {
            Interlocked.Increment(ref _handled);
            try { reply = _handler(req); }
            catch (Exception ex)
            {
                type = "error";
                reply = ex.Message;
            }
        }
        var outFrames = _auth.Seal(new ControlMessage(_auth.JobId, "master", ++_seq, $"{type}:{req.Seq}", reply));
        var r = new NetMQMessage();
        r.Append(identity);
        foreach (var f in outFrames) r.Append(f);
        socket.TrySendMultipartMessage(r);  // ROUTER never blocks: a vanished peer's reply is dropped
    }

    internal static bool IsJson(string payload, out string? why)
    {
        why = null;
        if (payload.Length == 0) return true;
        try
        {
            using var _ = JsonDocument.Parse(payload, new JsonDocumentOptions { MaxDepth = 32 });
            return true;
        }
        catch (JsonException e)
        {
            why = e.Message;
            return false;
        }
    }

    public void Dispose()
    {
        _poller.Stop();
        _poller.Dispose();
        _socket.Dispose();
    }
}

/// <summary>A worker's end: one request at a time (calls are serialised), each with a deadline.
/// A reply that fails a check, or answers an earlier (timed-out) request, is counted in
/// <see cref="Drops"/> and ignored; the deadline then reports the failure.</summary>
internal sealed class ControlClient : IDisposable
{
    private readonly DealerSocket _socket;
    private readonly MessageAuth _auth;
    private readonly string _name;
    private readonly ControlOptions _opt;
    private readonly ILogger _log;
    private readonly Lock _gate = new();
    private long _seq;

    public ControlClient(string endpoint, MessageAuth auth, string name, ILogger? log = null, ControlOptions? options = null)
    {
        _auth = auth;
        _name = name;
        _opt = options ?? ControlOptions.Default;
        _log = log ?? NullLogger.Instance;
        _socket = new DealerSocket();
        _opt.Apply(_socket);
        _socket.Connect(endpoint);
        Endpoint = endpoint;
    }

    public string Endpoint { get; }

    /// <summary>Replies dropped unexecuted, by reason.</summary>
    public DropCounters Drops { get; } = new();

    /// <summary>Sends a request and waits for its reply; a handler failure on the master comes back
    /// as <see cref="InvalidOperationException"/>, silence as <see cref="TimeoutException"/> naming
    /// the master, the request and what was dropped meanwhile.</summary>
    public string Request(string type, string payload, TimeSpan timeout)
    {
        lock (_gate)
        {
            long seq = ++_seq;
            var until = DateTime.UtcNow + timeout;
            var m = new NetMQMessage();
            foreach (var f in _auth.Seal(new ControlMessage(_auth.JobId, _name, seq, type, payload))) m.Append(f);
            if (!_socket.TrySendMultipartMessage(timeout, m))
                throw new TimeoutException($"{_name}: could not send '{type}' to the master at {Endpoint} within {timeout.TotalSeconds:F1} s (send queue full)");
            var droppedBefore = Drops.Snapshot();
            while (true)
            {
                var left = until - DateTime.UtcNow;
                if (left <= TimeSpan.Zero || !BoundedReceive.TryReceive(_socket, left, MessageAuth.FrameCount, _opt.MaxMessageBytes, out var r))
                {
                    // what was dropped while waiting for this reply (the counters themselves are totals)
                    var meanwhile = Drops.Snapshot().Select(kv => (kv.Key, N: kv.Value - droppedBefore[kv.Key])).Where(d => d.N > 0).ToList();
                    long dropped = meanwhile.Sum(d => d.N);
                    throw new TimeoutException($"{_name}: no authenticated reply from the master at {Endpoint} to '{type}' (request {seq}) within {timeout.TotalSeconds:F1} s"
                                               + (dropped > 0 ? $"; {dropped} invalid repl{(dropped == 1 ? "y" : "ies")} dropped ({string.Join(", ", meanwhile.Select(d => $"{d.Key} {d.N}"))})" : ""));
                }
                if (r.Bytes > _opt.MaxMessageBytes) { Drops.Add(DropReason.Oversized, $"{r.Bytes} bytes", _log, _name); continue; }
                if (r.FrameCount != MessageAuth.FrameCount) { Drops.Add(DropReason.FrameCount, $"{r.FrameCount} frames", _log, _name); continue; }
                ControlMessage reply;
                try { reply = _auth.Open(r.Frames); }
                catch (ControlAuthException ex) { Drops.Add(ex.Reason, ex.Message, _log, _name); continue; }
                int colon = reply.Type.IndexOf(':');
                string kind = colon < 0 ? reply.Type : reply.Type[..colon];
                if (colon < 0 || kind is not ("reply" or "error")
                    || !long.TryParse(reply.Type.AsSpan(colon + 1), System.Globalization.NumberStyles.None, System.Globalization.CultureInfo.InvariantCulture, out long answers))
                {
                    Drops.Add(DropReason.Header, $"reply type '{reply.Type}'", _log, _name);
                    continue;
                }
                if (answers != seq) { Drops.Add(DropReason.Stale, $"a reply to request {answers}, waiting for {seq}", _log, _name); continue; }
                if (kind == "error") throw new InvalidOperationException($"master refused '{type}': {reply.Payload}");
                return reply.Payload;
            }
        }
    }

    public void Dispose() => _socket.Dispose();
}
