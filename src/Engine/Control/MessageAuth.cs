using System.Collections.Concurrent;
using System.Security.Cryptography;
using System.Text;

namespace ReaLNative.Engine.Control;

/// <summary>One control-plane message: who sent it, its per-sender sequence number, a type and a
/// JSON payload. Only metadata travels here; bulk data goes over the data plane.</summary>
internal sealed record ControlMessage(string JobId, string Sender, long Seq, string Type, string Payload);

/// <summary>Thrown for a message that fails authentication (never crashes the receiver).</summary>
internal sealed class ControlAuthException(string message) : Exception(message);

/// <summary>
/// Authenticates control messages with HMAC-SHA256 over a per-job secret. Wire form: six frames
/// [job id, sender, seq, type, payload, mac], mac = HMAC(secret, job|sender|seq|type|payload with
/// length prefixes). A receiver rejects a bad or missing MAC, another job's id, and replays (a
/// sequence number not above the last one accepted from that sender).
/// </summary>
internal sealed class MessageAuth
{
    private readonly byte[] _secret;
    private readonly ConcurrentDictionary<string, long> _lastSeq = new(StringComparer.Ordinal);

    public MessageAuth(byte[] secret, string jobId)
    {
        if (secret.Length < 16) throw new ArgumentException("the job secret must be at least 16 bytes");
        _secret = secret;
        JobId = jobId;
    }

    public string JobId { get; }

    public static byte[] NewSecret() => RandomNumberGenerator.GetBytes(32);

    public byte[][] Seal(ControlMessage m)
    {
        var f = new[] { m.JobId, m.Sender, m.Seq.ToString(System.Globalization.CultureInfo.InvariantCulture), m.Type, m.Payload }
            .Select(Encoding.UTF8.GetBytes).ToArray();
        return [.. f, Mac(f)];
    }

    public ControlMessage Open(IReadOnlyList<byte[]> frames)
    {
        if (frames.Count != 6) throw new ControlAuthException($"malformed message: {frames.Count} frames, expected 6");
        var expect = Mac(frames.Take(5).ToArray());
        if (!CryptographicOperations.FixedTimeEquals(expect, frames[5])) throw new ControlAuthException("bad message authentication code");
        var s = frames.Take(5).Select(b => Encoding.UTF8.GetString(b)).ToArray();
        if (s[0] != JobId) throw new ControlAuthException($"message for job '{s[0]}', this is job '{JobId}'");
        if (!long.TryParse(s[2], System.Globalization.NumberStyles.None, System.Globalization.CultureInfo.InvariantCulture, out long seq))
            throw new ControlAuthException("malformed sequence number");
        bool fresh = false;
        _lastSeq.AddOrUpdate(s[1], _ => { fresh = true; return seq; }, (_, last) => { fresh = seq > last; return fresh ? seq : last; });
        if (!fresh) throw new ControlAuthException($"replayed message from '{s[1]}' (sequence {seq})");
        return new ControlMessage(s[0], s[1], seq, s[3], s[4]);
    }

    private byte[] Mac(byte[][] parts)
    {
        using var h = IncrementalHash.CreateHMAC(HashAlgorithmName.SHA256, _secret);
        Span<byte> len = stackalloc byte[4];
        foreach (var p in parts)
        {
            System.Buffers.Binary.BinaryPrimitives.WriteInt32LittleEndian(len, p.Length);
            h.AppendData(len);
            h.AppendData(p);
        }
        return h.GetHashAndReset();
    }
}
