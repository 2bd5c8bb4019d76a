// Fuzzing the control plane (issue 6): junk of every kind sent to a running master while two
// legitimate workers rendezvous through it, and junk replies sent to a worker by a fake master.
// Seeded and bounded: a fixed number of iterations, a time bound, and a deadline on every wait.
using System.Collections.Concurrent;
using System.Diagnostics;
using System.Net.Sockets;
using System.Security.Cryptography;
using System.Text;
using System.Text.Json;
using NetMQ;
using NetMQ.Sockets;
using ReaLNative.Engine.Control;
using ReaLNative.Engine.Transport;
using Xunit;
using Xunit.Abstractions;

namespace ReaLNative.Engine.Tests.Control;

public sealed class ControlFuzzTests(ITestOutputHelper output)
{
    private const string Job = "job-fuzz";
    // Reproducible: a fixed seed; REALN_FUZZ_SEED / REALN_FUZZ_ITERATIONS explore further (the time bound stays).
    private static readonly int Seed = int.TryParse(Environment.GetEnvironmentVariable("REALN_FUZZ_SEED"), out int s) ? s : 20261201;
    private static readonly int Iterations = int.TryParse(Environment.GetEnvironmentVariable("REALN_FUZZ_ITERATIONS"), out int n) ? n : 2000;
    private static readonly TimeSpan RequestTimeout = TimeSpan.FromSeconds(10);

    // ---- helpers -------------------------------------------------------------------------------

    /// <summary>The wire MAC (as MessageAuth computes it), so the fuzzer can build authenticated
    /// frames MessageAuth.Seal would not (non-UTF-8 text, a bad sequence number).</summary>
    private static byte[] Mac(byte[] secret, IReadOnlyList<byte[]> parts)
    {
        using var h = IncrementalHash.CreateHMAC(HashAlgorithmName.SHA256, secret);
        var len = new byte[4];
        foreach (var p in parts.Take(5))
        {
            System.Buffers.Binary.BinaryPrimitives.WriteInt32LittleEndian(len, p.Length);
            h.AppendData(len);
            h.AppendData(p);
        }
        return h.GetHashAndReset();
    }

    private static byte[][] Raw(byte[] secret, params byte[][] five) => [.. five, Mac(secret, five)];

    private static byte[] Bytes(Random rng, int max)
    {
        var b = new byte[rng.Next(0, max + 1)];
        rng.NextBytes(b);
        return b;
    }

    private static string Letters(Random rng, int n) =>
        new(Enumerable.Range(0, n).Select(_ => (char)('a' + rng.Next(26))).ToArray());

    private static byte[][] Copy(byte[][] f) => f.Select(x => (byte[])x.Clone()).ToArray();

    private static bool Send(NetMQSocket s, IEnumerable<byte[]> frames)
    {
        var m = new NetMQMessage();
        foreach (var f in frames) m.Append(f);
        return s.TrySendMultipartMessage(TimeSpan.FromSeconds(5), m);
    }

    private static string RegisterPayload(int rank, int round) => JsonSerializer.Serialize(new { rank, address = $"addr-{rank}-{round}" });

    // ---- 1. master side -----------------------------------------------------------------------

    [Fact]
    public void MasterDropsJunkAndKeepsServingLegitimateWorkers()
    {
        var total = Stopwatch.StartNew();
        var deadline = DateTime.UtcNow.AddSeconds(60);  // the whole test, every loop below bounded by it
        var secret = MessageAuth.NewSecret();
        var rdv = new Rendezvous(2);
        var opt = new ControlOptions { MaxMessageBytes = 64 << 10 };  // small, so oversized junk is cheap
        using var server = new ControlServer("tcp://127.0.0.1:0", new MessageAuth(secret, Job), rdv.Handle, options: opt);
        int port = int.Parse(server.Endpoint[(server.Endpoint.LastIndexOf(':') + 1)..]);

        // Two legitimate workers: register, wait for the address table, barrier; round after round.
        long legitCalls = 0;
        var rounds = new int[2];
        var arrived = new[] { -1, -1 };
        int stopAt = int.MaxValue;
        var failures = new ConcurrentQueue<string>();
        var clients = new[]
        {
            new ControlClient(server.Endpoint, new MessageAuth(secret, Job), "worker-0"),
            new ControlClient(server.Endpoint, new MessageAuth(secret, Job), "worker-1"),
        };
        string Call(int rank, string type, string payload)
        {
            Interlocked.Increment(ref legitCalls);
            return clients[rank].Request(type, payload, RequestTimeout);
        }
        void Worker(int rank)
        {
            int other = 1 - rank;
            try
            {
                for (int k = 0; k < Volatile.Read(ref stopAt); k++)
                {
                    if (DateTime.UtcNow > deadline) { failures.Enqueue($"rank {rank}: deadline in round {k}"); return; }
                    if (Call(rank, "register", RegisterPayload(rank, k)) != "ok") failures.Enqueue($"rank {rank}: register not ok");
                    while (true)
                    {
                        var reply = Call(rank, "addresses", JsonSerializer.Serialize(new { rank }));
                        if (reply.StartsWith("wait:", StringComparison.Ordinal))
                        {
                            if (k > 0) failures.Enqueue($"rank {rank}: '{reply}' in round {k}");
                            if (DateTime.UtcNow > deadline) return;
                            Thread.Sleep(1);
                            continue;
                        }
                        var table = JsonSerializer.Deserialize<string[]>(reply)!;
                        if (table.Length != 2 || table[rank] != $"addr-{rank}-{k}"
                            || (table[other] != $"addr-{other}-{k}" && table[other] != $"addr-{other}-{k - 1}"))
                            failures.Enqueue($"rank {rank} round {k}: wrong table {reply}");
                        break;
                    }
                    Volatile.Write(ref arrived[rank], k);
                    while (true)
                    {
                        var reply = Call(rank, "barrier", JsonSerializer.Serialize(new { rank, name = $"round-{k}" }));
                        if (reply == "go")
                        {
                            if (Volatile.Read(ref arrived[other]) < k) failures.Enqueue($"rank {rank}: barrier {k} released before rank {other} arrived");
                            break;
                        }
                        if (reply != $"wait:{other}") failures.Enqueue($"rank {rank}: barrier reply '{reply}'");
                        if (DateTime.UtcNow > deadline) return;
                        Thread.Sleep(1);
                    }
                    Volatile.Write(ref rounds[rank], k + 1);
                }
            }
            catch (Exception e) { failures.Enqueue($"rank {rank}: {e.GetType().Name}: {e.Message}"); }
        }
        var workers = new[] { new Thread(() => Worker(0)) { IsBackground = true }, new Thread(() => Worker(1)) { IsBackground = true } };
        foreach (var t in workers) t.Start();
        while (Volatile.Read(ref rounds[0]) < 2 || Volatile.Read(ref rounds[1]) < 2)  // so "worker-N" seq 1 is accepted (replays below)
        {
            Assert.True(DateTime.UtcNow < deadline && failures.IsEmpty, "legitimate workers did not start: " + string.Join("; ", failures));
            Thread.Sleep(5);
        }

        // The fuzzer.
        var rng = new Random(Seed);
        var expected = Enum.GetValues<DropReason>().ToDictionary(r => r, _ => 0L);
        var fuzzAuth = new MessageAuth(secret, Job);          // seals junk that passes the MAC
        var foreignAuth = new MessageAuth(secret, "job-other");
        var pool = Enumerable.Range(0, 8).Select(_ => { var d = new DealerSocket(); d.Options.Linger = TimeSpan.Zero; d.Connect(server.Endpoint); return d; }).ToArray();
        var authDealer = new DealerSocket();                  // authenticated but meaningless requests: their error replies are checked
        authDealer.Options.Linger = TimeSpan.Zero;
        authDealer.Connect(server.Endpoint);
        var firstLegit = new[]
        {
            fuzzAuth.Seal(new ControlMessage(Job, "worker-0", 1, "register", RegisterPayload(0, 0))),  // byte for byte what worker-0 sent first
            fuzzAuth.Seal(new ControlMessage(Job, "worker-1", 1, "register", RegisterPayload(1, 0))),
        };
        var acceptedJunk = new List<byte[][]>();
        var authRequests = new Dictionary<long, string>();
        var jsonSeq = new long[pool.Length];  // one sender per connection: messages on different connections may overtake each other
        long authSeq = 0, headerSeq = 0;
        int iterations = 0, tcpConnections = 0, disconnectingOversized = 0, authBad = 0;
        var kinds = new int[12];
        string[] meaningless =
        [
            "{\"rank\":7}", "{\"rank\":-1}", "{}", "{\"rank\":\"x\"}", "{\"rank\":1.5}", "{\"rank\":1e100}", "[1,2]", "\"s\"", "3", "null",
            "{\"rank\":0}", "{\"rank\":0,\"address\":5}", "{\"rank\":1,\"name\":7}", "{\"rank\":0,\"json\":[]}",
            "{\"rank\":0,\"address\":null}", "{\"rank\":1,\"name\":null}", "{\"rank\":0,\"json\":null}",
        ];
        string[] failingTypes = ["register", "barrier", "report", "bogus", ""];  // ("addresses" with a valid rank is a harmless read)
        string[] types = ["register", "addresses", "barrier", "report", "bogus", ""];
        byte[][] Valid()  // a well-formed, authenticated request (never sent as is)
        {
            string sender = rng.Next(3) switch { 0 => "worker-0", 1 => "worker-1", _ => "fuzz-" + Letters(rng, 4) };
            return fuzzAuth.Seal(new ControlMessage(Job, sender, rng.NextInt64(1, 1L << 40), types[rng.Next(4)], RegisterPayload(rng.Next(2), rng.Next(100))));
        }
        int roundsBefore = Math.Min(Volatile.Read(ref rounds[0]), Volatile.Read(ref rounds[1]));
        var fuzzClock = Stopwatch.StartNew();
        int Progress() => Math.Min(Volatile.Read(ref rounds[0]), Volatile.Read(ref rounds[1])) - roundsBefore;
        // the bounded number of iterations, and on until the workers completed a few rounds alongside; at most 10 s
        for (; (iterations < Iterations || Progress() < 3) && fuzzClock.Elapsed < TimeSpan.FromSeconds(10); iterations++)
        {
            int si = rng.Next(pool.Length);
            var s = pool[si];
            int kind = rng.Next(100) switch { < 12 => 0, < 24 => 1, < 38 => 2, < 52 => 3, < 60 => 4, < 68 => 5, < 78 => 6, < 84 => 7, < 90 => 8, < 94 => 9, < 97 => 10, _ => 11 };
            kinds[kind]++;
            switch (kind)
            {
                case 0:  // random bytes, one frame
                    Assert.True(Send(s, [Bytes(rng, 512)]));
                    expected[DropReason.FrameCount]++;
                    break;
                case 1:  // random frame counts (sometimes thousands of frames)
                {
                    int n = rng.Next(20) == 0 ? rng.Next(1000, 5000) : rng.Next(1, 12);
                    var frames = Enumerable.Range(0, n).Select(_ => Bytes(rng, 64)).ToArray();
                    if (n == 6 && rng.Next(2) == 0) rng.NextBytes(frames[5] = new byte[MessageAuth.MacBytes]);
                    Assert.True(Send(s, frames));
                    expected[n != 6 ? DropReason.FrameCount : frames[5].Length == MessageAuth.MacBytes ? DropReason.Mac : DropReason.Header]++;
                    break;
                }
                case 2:  // truncated valid messages: frames cut off, a frame cut short, or one frame too many
                {
                    var f = Valid();
                    switch (rng.Next(3))
                    {
                        case 0:
                            Assert.True(Send(s, f.Take(rng.Next(1, 6))));
                            expected[DropReason.FrameCount]++;
                            break;
                        case 1:
                            int i = rng.Next(6);
                            f[i] = f[i][..rng.Next(f[i].Length)];
                            Assert.True(Send(s, f));
                            expected[i == 5 ? DropReason.Header : DropReason.Mac]++;
                            break;
                        default:
                            Assert.True(Send(s, [.. f, Bytes(rng, 16)]));
                            expected[DropReason.FrameCount]++;
                            break;
                    }
                    break;
                }
                case 3:  // one bit flipped, in each field in turn
                {
                    var f = Valid();
                    int i = kinds[3] % 6;
                    int at = rng.Next(f[i].Length);
                    f[i][at] ^= (byte)(1 << rng.Next(8));
                    Assert.True(Send(s, f));
                    expected[DropReason.Mac]++;
                    break;
                }
                case 4:  // replays: the legitimate workers' first requests, or junk accepted earlier
                {
                    // (junk accepted earlier goes out on the connection it came in on, so it cannot overtake the original)
                    if (acceptedJunk.Count > 0 && rng.Next(2) == 0) Assert.True(Send(authDealer, Copy(acceptedJunk[rng.Next(acceptedJunk.Count)])));
                    else Assert.True(Send(s, Copy(firstLegit[rng.Next(2)])));
                    expected[DropReason.Replay]++;
                    break;
                }
                case 5:  // another job's messages (same secret)
                {
                    string job = rng.Next(2) == 0 ? "job-other" : Job + Letters(rng, 1);
                    var auth = job == "job-other" ? foreignAuth : new MessageAuth(secret, job);
                    Assert.True(Send(s, auth.Seal(new ControlMessage(job, "worker-" + rng.Next(2), rng.NextInt64(1, 1L << 40), "register", RegisterPayload(0, 0)))));
                    expected[DropReason.ForeignJob]++;
                    break;
                }
                case 6:  // a valid MAC around a payload that is not JSON (or nested too deep)
                {
                    string p = rng.Next(4) switch
                    {
                        0 => "{not json " + Letters(rng, 8),
                        1 => new string('[', 40) + new string(']', 40),
                        2 => "{\"rank\":0} trailing",
                        _ => Letters(rng, rng.Next(1, 30)),
                    };
                    if (ControlServer.IsJson(p, out _)) p = "{" + p;
                    Assert.True(Send(s, fuzzAuth.Seal(new ControlMessage(Job, $"fuzz-json-{si}", ++jsonSeq[si], types[rng.Next(types.Length)], p))));
                    expected[DropReason.Payload]++;
                    break;
                }
                case 7:  // a valid MAC around a malformed header: text that is not UTF-8, a bad sequence number
                {
                    string seq = (++headerSeq).ToString();
                    var five = new[] { Encoding.UTF8.GetBytes(Job), "fuzz-header"u8.ToArray(), Encoding.UTF8.GetBytes(seq), "register"u8.ToArray(), "{}"u8.ToArray() };
                    switch (rng.Next(3))
                    {
                        case 0: five[rng.Next(1, 5)] = [0xC3, 0x28, 0xFF]; break;  // invalid UTF-8 (the job id frame would be a foreign job)
                        case 1: five[2] = Encoding.UTF8.GetBytes(new[] { "-5", "abc", "99999999999999999999999", "", " 7", "+3" }[rng.Next(6)]); break;
                        default: five[2] = [0xFF]; break;
                    }
                    Assert.True(Send(s, Raw(secret, five)));
                    expected[DropReason.Header]++;
                    break;
                }
                case 8:  // authenticated, JSON, but meaningless to the rendezvous: reaches the handler, must come back as an error
                {
                    var f = fuzzAuth.Seal(new ControlMessage(Job, "fuzz-auth", ++authSeq, failingTypes[rng.Next(failingTypes.Length)], meaningless[rng.Next(meaningless.Length)]));
                    Assert.True(Send(authDealer, f));
                    acceptedJunk.Add(Copy(f));
                    authRequests[authSeq] = $"'{Encoding.UTF8.GetString(f[3])}' {Encoding.UTF8.GetString(f[4])}";
                    authBad++;
                    break;
                }
                case 9:  // oversized in total (each frame under the limit): counted
                {
                    var f = Enumerable.Range(0, 6).Select(_ => new byte[20 << 10]).ToArray();
                    Assert.True(Send(s, f));
                    expected[DropReason.Oversized]++;
                    break;
                }
                case 10:  // one frame over the limit: NetMQ disconnects the peer (own socket), nothing is counted
                {
                    if (disconnectingOversized >= 10) goto case 9;
                    using var big = new DealerSocket();
                    big.Options.Linger = TimeSpan.FromMilliseconds(200);
                    big.Connect(server.Endpoint);
                    Assert.True(Send(big, [new byte[opt.MaxMessageBytes + 1 + rng.Next(1000)]]));
                    disconnectingOversized++;
                    Thread.Sleep(20);  // let it go out before the socket closes
                    break;
                }
                default:  // raw TCP garbage (sometimes after a ZMTP greeting) on a plain socket
                {
                    using var tcp = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp) { SendTimeout = 2000, ReceiveTimeout = 200 };
                    tcp.Connect(System.Net.IPAddress.Loopback, port);
                    var junk = new List<byte>();
                    if (rng.Next(2) == 0)
                    {
                        junk.AddRange([0xFF, 0, 0, 0, 0, 0, 0, 0, 1, 0x7F, 3, 0]);
                        junk.AddRange("NULL"u8.ToArray());
                        junk.AddRange(new byte[64 - junk.Count]);
                    }
                    junk.AddRange(Bytes(rng, 4096));
                    try { tcp.Send(junk.ToArray()); } catch (SocketException) { }  // the server may hang up first
                    tcp.Close(0);
                    tcpConnections++;
                    break;
                }
            }
        }
        var fuzzSeconds = fuzzClock.Elapsed.TotalSeconds;
        int roundsDuring = Progress();

        // Every attributable drop arrives; the server keeps running.
        long expectedTotal = expected.Values.Sum();
        var settle = DateTime.UtcNow.AddSeconds(10);
        while (expected.Any(kv => server.Drops[kv.Key] < kv.Value) && DateTime.UtcNow < settle) Thread.Sleep(10);
        Assert.True(server.IsRunning, "the control server's poller stopped");

        // The meaningless authenticated requests were all answered with an error.
        int errors = 0;
        var mine = new MessageAuth(secret, Job);
        while (errors < authBad && DateTime.UtcNow < deadline && BoundedReceive.TryReceive(authDealer, TimeSpan.FromSeconds(5), 6, 1 << 20, out var r))
        {
            var reply = mine.Open(r.Frames);
            long answers = long.Parse(reply.Type[(reply.Type.IndexOf(':') + 1)..]);
            Assert.True(reply.Type.StartsWith("error:", StringComparison.Ordinal),
                        $"authenticated but meaningless request {authRequests[answers]} was executed: {reply.Type} {reply.Payload}");
            errors++;
        }
        Assert.Equal(authBad, errors);

        // The workers go on for ten more rounds after the fuzzing, then stop together.
        int target = Math.Max(Volatile.Read(ref rounds[0]), Volatile.Read(ref rounds[1])) + 10;
        Volatile.Write(ref stopAt, target);
        foreach (var t in workers) Assert.True(t.Join(deadline - DateTime.UtcNow > TimeSpan.Zero ? deadline - DateTime.UtcNow : TimeSpan.Zero), "a legitimate worker hung");
        Assert.True(failures.IsEmpty, string.Join("\n", failures));
        Assert.Equal(target, rounds[0]);
        Assert.Equal(target, rounds[1]);
        Assert.True(server.IsRunning, "the control server's poller stopped");
        Assert.Equal("ok", clients[0].Request("report", JsonSerializer.Serialize(new { rank = 0, json = "{}" }), RequestTimeout));
        legitCalls++;

        var drops = server.Drops.Snapshot();
        output.WriteLine($"seed {Seed}: {iterations} fuzz iterations in {fuzzSeconds:F2} s (kinds {string.Join(" ", kinds)}), "
                         + $"{tcpConnections} raw TCP connections, {disconnectingOversized} disconnecting oversized frames, {authBad} authenticated meaningless requests; {roundsDuring} legitimate rounds completed during the fuzzing");
        output.WriteLine($"drops by reason: {string.Join(", ", drops.Select(kv => $"{kv.Key} {kv.Value} (expected {expected[kv.Key]})"))}; total {server.Rejected}, {server.Rejected - expectedTotal} more from raw TCP garbage decoded into frames");
        output.WriteLine($"legitimate: {legitCalls} requests, {target} rounds per rank; handled {server.Handled}; client drops {clients[0].Drops.Total}+{clients[1].Drops.Total}; test {total.Elapsed.TotalSeconds:F2} s");

        // Exact for everything but raw TCP: garbage on a plain socket can decode into frames (NetMQ
        // still speaks ZMTP/1.0, which has no handshake), which land as FrameCount, Header, Mac or
        // Oversized drops. Reasons that need the secret (replay, foreign job, payload) are exact.
        foreach (var r in Enum.GetValues<DropReason>())
        {
            if ((r is DropReason.FrameCount or DropReason.Header or DropReason.Mac or DropReason.Oversized) && tcpConnections > 0)
                Assert.InRange(drops[r], expected[r], long.MaxValue);
            else
                Assert.Equal(expected[r], drops[r]);
        }
        Assert.Equal(legitCalls + authBad, server.Handled);  // no junk reached the handler
        Assert.Equal(0, clients[0].Drops.Total + clients[1].Drops.Total);
        Assert.True(roundsDuring >= 1, "the legitimate workers made no progress while the fuzzer ran");
        Assert.True(total.Elapsed < TimeSpan.FromSeconds(45), $"took {total.Elapsed.TotalSeconds:F1} s");

        foreach (var d in pool) d.Dispose();
        authDealer.Dispose();
        foreach (var c in clients) c.Dispose();
    }

    /// <summary>What the fuzzer found: an authenticated "register" with a null address un-registered
    /// the rank (everyone's "addresses" went back to "wait"); a null report was queued.</summary>
    [Fact]
    public void RendezvousRefusesFieldsThatAreNotStrings()
    {
        var rdv = new Rendezvous(2);
        ControlMessage M(string type, string payload) => new(Job, "w", 1, type, payload);
        Assert.Equal("ok", rdv.Handle(M("register", RegisterPayload(0, 0))));
        Assert.Equal("ok", rdv.Handle(M("register", RegisterPayload(1, 0))));
        foreach (var p in new[] { "{\"rank\":0,\"address\":null}", "{\"rank\":0,\"address\":5}", "{\"rank\":0}" })
            Assert.Contains("'address' must be a string", Assert.Throws<ArgumentException>(() => rdv.Handle(M("register", p))).Message);
        Assert.Equal("[\"addr-0-0\",\"addr-1-0\"]", rdv.Handle(M("addresses", "{\"rank\":1}")));
        Assert.Contains("'json'", Assert.Throws<ArgumentException>(() => rdv.Handle(M("report", "{\"rank\":0,\"json\":null}"))).Message);
        Assert.Empty(rdv.Reports);
        Assert.Contains("'name'", Assert.Throws<ArgumentException>(() => rdv.Handle(M("barrier", "{\"rank\":0,\"name\":null}"))).Message);
        Assert.Equal("wait:1", rdv.Handle(M("barrier", "{\"rank\":0,\"name\":\"b\"}")));
    }

    /// <summary>A start (Rendezvous.Start, what `realn bench realloc` times its repetitions from)
    /// names one instant for every rank, fixed after the last rank arrived: every rank that takes part
    /// returns it and returns no earlier than it; one that takes no part returns it without waiting;
    /// before everyone arrived the master answers which ranks are missing.</summary>
    [Fact]
    public void AStartReleasesEveryRankAtOneInstantAfterTheLastArrival()
    {
        var secret = MessageAuth.NewSecret();
        var rdv = new Rendezvous(3);
        Assert.Equal("wait:1,2", rdv.Handle(new ControlMessage(Job, "w", 1, "start", "{\"rank\":0,\"name\":\"probe\"}")));
        using var server = new ControlServer("tcp://127.0.0.1:0", new MessageAuth(secret, Job), rdv.Handle);
        var at = new long[3];
        var arrived = new long[3];
        var returned = new long[3];
        var errors = new ConcurrentQueue<Exception>();
        var threads = Enumerable.Range(0, 3).Select(r => new Thread(() =>
        {
            try
            {
                using var client = new ControlClient(server.Endpoint, new MessageAuth(secret, Job), $"worker-{r}");
                Thread.Sleep(40 * r);  // the ranks arrive one after another
                arrived[r] = Stopwatch.GetTimestamp();
                at[r] = Rendezvous.Start(client, r, "s", TimeSpan.FromSeconds(30), wait: r != 1);
                returned[r] = Stopwatch.GetTimestamp();
            }
            catch (Exception e) { errors.Enqueue(e); }
        }) { IsBackground = true }).ToArray();
        foreach (var t in threads) t.Start();
        foreach (var t in threads) Assert.True(t.Join(TimeSpan.FromSeconds(60)), "a rank did not return from the start");
        Assert.Empty(errors);
        Assert.Equal(at[0], at[1]);
        Assert.Equal(at[0], at[2]);
        Assert.True(at[0] >= arrived.Max() + Rendezvous.StartMargin, "the instant was named before the last rank arrived");
        Assert.True(returned[0] >= at[0] && returned[2] >= at[0], "a rank that takes part returned before the instant");
        // Rank 2 arrived last, so its request fixed the instant StartMargin (20 ms) ahead: the rank that
        // takes no part learned it by polling and returned at once (as long as it polled in time).
        output.WriteLine($"instant {(at[0] - arrived.Max()) * 1e3 / Stopwatch.Frequency:F2} ms after the last arrival; returns at +{(returned[0] - at[0]) * 1e3 / Stopwatch.Frequency:F2}, "
                         + $"+{(returned[1] - at[0]) * 1e3 / Stopwatch.Frequency:F2} (no part), +{(returned[2] - at[0]) * 1e3 / Stopwatch.Frequency:F2} ms");
    }

    // ---- 2. worker side -----------------------------------------------------------------------

    [Fact]
    public void WorkerIgnoresJunkRepliesAndTimesOutClearly()
    {
        var total = Stopwatch.StartNew();
        var deadline = DateTime.UtcNow.AddSeconds(30);
        var secret = MessageAuth.NewSecret();
        var rng = new Random(Seed + 1);
        var expected = Enum.GetValues<DropReason>().ToDictionary(r => r, _ => 0L);
        var master = new MessageAuth(secret, Job);
        var foreign = new MessageAuth(secret, "job-other");
        long mseq = 0;
        const int rounds = 60;
        int junkReplies = 0, silentJunk = -1;
        // Per round: how the fake master answers. "valid" ends with the right reply, "error" with an
        // error reply, "silent" sends only junk (the client must time out).
        string Mode(int round) => round == rounds - 3 ? "error" : round == rounds - 2 ? "silent" : "valid";

        using var router = new RouterSocket();
        router.Options.Linger = TimeSpan.Zero;
        int port = router.BindRandomPort("tcp://127.0.0.1");
        var fakeFailures = new ConcurrentQueue<string>();
        var lastValid = new List<byte[][]>();
        var fake = new Thread(() =>
        {
            try
            {
                for (int round = 0; round < rounds && DateTime.UtcNow < deadline;)
                {
                    if (!BoundedReceive.TryReceive(router, TimeSpan.FromMilliseconds(100), 7, 1 << 20, out var m)) continue;
                    var id = m.Frames[0];
                    var req = master.Open(m.Frames.GetRange(1, 6));
                    void Reply(byte[][] frames, DropReason? reason)
                    {
                        var msg = new NetMQMessage();
                        msg.Append(id);
                        foreach (var f in frames) msg.Append(f);
                        if (!router.TrySendMultipartMessage(TimeSpan.FromSeconds(2), msg)) fakeFailures.Enqueue("send failed");
                        if (reason is DropReason r) { lock (expected) expected[r]++; Interlocked.Increment(ref junkReplies); }
                    }
                    byte[][] Sealed(string type, string payload) => master.Seal(new ControlMessage(Job, "master", ++mseq, type, payload));
                    int junk = rng.Next(1, 12);
                    if (Mode(round) == "silent") Volatile.Write(ref silentJunk, junk);
                    for (int j = 0; j < junk; j++)
                    {
                        switch (rng.Next(9))
                        {
                            case 0: Reply([Bytes(rng, 256)], DropReason.FrameCount); break;
                            case 1: { int n = rng.Next(1, 10); if (n == 6) n = 7; Reply(Enumerable.Range(0, n).Select(_ => Bytes(rng, 32)).ToArray(), DropReason.FrameCount); break; }
                            case 2: { var f = Sealed($"reply:{req.Seq}", "\"x\""); Reply(f.Take(rng.Next(1, 6)).ToArray(), DropReason.FrameCount); break; }
                            case 3: { var f = Sealed($"reply:{req.Seq}", "\"x\""); f[5] = f[5][..rng.Next(32)]; Reply(f, DropReason.Header); break; }
                            case 4: { var f = Sealed($"reply:{req.Seq}", "\"forged\""); int i = rng.Next(6); f[i][rng.Next(f[i].Length)] ^= (byte)(1 << rng.Next(8)); Reply(f, DropReason.Mac); break; }
                            case 5: Reply(Sealed($"reply:{Math.Max(0, req.Seq - 1 - rng.Next(3))}", "\"stale\""), DropReason.Stale); break;
                            case 6: if (lastValid.Count > 0) Reply(Copy(lastValid[rng.Next(lastValid.Count)]), DropReason.Replay); else goto case 5; break;
                            case 7: Reply(foreign.Seal(new ControlMessage("job-other", "master", ++mseq, $"reply:{req.Seq}", "\"foreign\"")), DropReason.ForeignJob); break;
                            default: Reply(Sealed(new[] { "reply", $"hello:{req.Seq}", "reply:-1", "reply:abc", $"reply: {req.Seq}", "" }[rng.Next(6)], "\"bad type\""), DropReason.Header); break;
                        }
                    }
                    if (round == 5) Reply(Enumerable.Range(0, 6).Select(_ => new byte[20 << 10]).ToArray(), DropReason.Oversized);
                    switch (Mode(round))
                    {
                        case "valid": { var f = Sealed($"reply:{req.Seq}", $"\"answer {req.Seq}\""); lastValid.Add(Copy(f)); Reply(f, null); break; }
                        case "error": Reply(Sealed($"error:{req.Seq}", "no such thing"), null); break;
                    }
                    round++;
                }
            }
            catch (Exception e) { fakeFailures.Enqueue($"{e.GetType().Name}: {e.Message}"); }
        }) { IsBackground = true };
        fake.Start();

        using var client = new ControlClient($"tcp://127.0.0.1:{port}", new MessageAuth(secret, Job), "worker-0",
                                             options: new ControlOptions { MaxMessageBytes = 64 << 10 });
        TimeSpan slowest = TimeSpan.Zero;
        for (int round = 0; round < rounds; round++)
        {
            Assert.True(DateTime.UtcNow < deadline, "deadline");
            var one = Stopwatch.StartNew();
            switch (Mode(round))
            {
                case "valid":
                    Assert.Equal($"\"answer {round + 1}\"", client.Request("ping", "{}", RequestTimeout));
                    break;
                case "error":
                    Assert.Contains("no such thing", Assert.Throws<InvalidOperationException>(() => client.Request("ping", "{}", RequestTimeout)).Message);
                    break;
                default:
                {
                    var e = Assert.Throws<TimeoutException>(() => client.Request("ping", "{}", TimeSpan.FromMilliseconds(700)));
                    output.WriteLine("silent master: " + e.Message);
                    Assert.Contains("'ping'", e.Message);
                    Assert.Contains($"request {round + 1}", e.Message);
                    int n = Volatile.Read(ref silentJunk);
                    Assert.Contains($"; {n} invalid repl{(n == 1 ? "y" : "ies")} dropped (", e.Message);  // this request's, not the totals
                    Assert.True(one.Elapsed < TimeSpan.FromSeconds(3), $"the timeout took {one.Elapsed.TotalSeconds:F1} s");
                    break;
                }
            }
            if (one.Elapsed > slowest) slowest = one.Elapsed;
        }
        Assert.True(fake.Join(TimeSpan.FromSeconds(5)), "the fake master hung");
        Assert.True(fakeFailures.IsEmpty, string.Join("\n", fakeFailures));

        var drops = client.Drops.Snapshot();
        output.WriteLine($"seed {Seed + 1}: {rounds} requests, {junkReplies} junk replies; slowest request {slowest.TotalSeconds:F2} s; test {total.Elapsed.TotalSeconds:F2} s");
        output.WriteLine($"client drops by reason: {string.Join(", ", drops.Select(kv => $"{kv.Key} {kv.Value} (expected {expected[kv.Key]})"))}");
        foreach (var r in Enum.GetValues<DropReason>()) Assert.Equal(expected[r], drops[r]);
        Assert.True(total.Elapsed < TimeSpan.FromSeconds(20), $"took {total.Elapsed.TotalSeconds:F1} s");
    }
}
