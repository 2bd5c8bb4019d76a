using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;
using NetMQ;
using NetMQ.Sockets;

namespace ReaLNative.Engine.Control;

/// <summary>
/// The master's end of the control plane: a ROUTER socket answering authenticated requests from
/// workers with <paramref name="handler"/> on its own poller thread. Unauthenticated, replayed or
/// foreign-job messages are logged and dropped (no reply: the sender's deadline reports it).
/// </summary>
internal sealed class ControlServer : IDisposable
{
    private readonly RouterSocket _socket;
    private readonly NetMQPoller _poller;
    private readonly MessageAuth _auth;
    private readonly Func<ControlMessage, string> _handler;
    private readonly ILogger _log;
    private long _seq;

    /// <param name="endpoint">e.g. tcp://0.0.0.0:0 (a free port) or tcp://127.0.0.1:5555.</param>
    public ControlServer(string endpoint, MessageAuth auth, Func<ControlMessage, string> handler, ILogger? log = null)
    {
        _auth = auth;
        _handler = handler;
        _log = log ?? NullLogger.Instance;
        _socket = new RouterSocket();
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
    private int _rejected;

    /// <summary>Messages dropped because they failed authentication.</summary>
    public int Rejected => Volatile.Read(ref _rejected);

    private void OnReceive(object? sender, NetMQSocketEventArgs e)
    {
        var msg = new NetMQMessage();
        while (e.Socket.TryReceiveMultipartMessage(ref msg))
        {
            if (msg.FrameCount < 2) continue;
            var identity = msg[0].ToByteArray();
            var frames = Enumerable.Range(1, msg.FrameCount - 1).Select(i => msg[i].ToByteArray()).ToList();
            ControlMessage req;
            try { req = _auth.Open(frames); }
            catch (ControlAuthException ex)
            {
                Interlocked.Increment(ref _rejected);
                _log.LogWarning("control plane: rejected a message: {Reason}", ex.Message);
                continue;
            }
            string reply;
            string type = "reply";
            try { reply = _handler(req); }
            catch (Exception ex)
            {
                type = "error";
                reply = ex.Message;
            }
            var outFrames = _auth.Seal(new ControlMessage(_auth.JobId, "master", ++_seq, type, reply));
            var r = new NetMQMessage();
            r.Append(identity);
            foreach (var f in outFrames) r.Append(f);
            e.Socket.SendMultipartMessage(r);
        }
    }

    public void Dispose()
    {
        _poller.Stop();
        _poller.Dispose();
        _socket.Dispose();
    }
}

/// <summary>A worker's end: one request at a time (calls are serialised), each with a deadline;
/// a reply that fails authentication is ignored and the deadline reports the failure.</summary>
internal sealed class ControlClient : IDisposable
{
    private readonly DealerSocket _socket;
    private readonly MessageAuth _auth;
    private readonly string _name;
    private readonly Lock _gate = new();
    private long _seq;

    public ControlClient(string endpoint, MessageAuth auth, string name)
    {
        _auth = auth;
        _name = name;
        _socket = new DealerSocket();
        _socket.Options.Linger = TimeSpan.Zero;
        _socket.Connect(endpoint);
        Endpoint = endpoint;
    }

    public string Endpoint { get; }

    /// <summary>Sends a request and waits for its reply; a handler failure on the master comes back
    /// as <see cref="InvalidOperationException"/>, silence as <see cref="TimeoutException"/>.</summary>
    public string Request(string type, string payload, TimeSpan timeout)
    {
        lock (_gate)
        {
            var m = new NetMQMessage();
            foreach (var f in _auth.Seal(new ControlMessage(_auth.JobId, _name, ++_seq, type, payload))) m.Append(f);
            _socket.SendMultipartMessage(m);
            var until = DateTime.UtcNow + timeout;
            while (true)
            {
                var left = until - DateTime.UtcNow;
                NetMQMessage? r = null;
                if (left <= TimeSpan.Zero || !_socket.TryReceiveMultipartMessage(left, ref r) || r is null)
                    throw new TimeoutException($"{_name}: no authenticated reply from the master at {Endpoint} to '{type}' within {timeout.TotalSeconds:F1} s");
                ControlMessage reply;
                try { reply = _auth.Open(Enumerable.Range(0, r.FrameCount).Select(i => r[i].ToByteArray()).ToList()); }
                catch (ControlAuthException) { continue; }
                if (reply.Type == "error") throw new InvalidOperationException($"master refused '{type}': {reply.Payload}");
                return reply.Payload;
            }
        }
    }

    public void Dispose() => _socket.Dispose();
}
