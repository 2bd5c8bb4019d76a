using System.Collections.Concurrent;
using System.Security.Cryptography;
using System.Text;

namespace ReaLNative.Engine.Control;

/// <summary>One control-plane message: who sent it, its per-sender sequence number, a type and a
/// JSON payload. Only metadata travels here; bulk data goes over the data plane.</summary>
internal sealed record ControlMessage(string JobId, string Sender, long Seq, string Type, string Payload);

/// <summary>Why a receiver dropped a message without executing it.</summary>
internal enum DropReason
{
    /// <summary>Not the six frames of the wire form (plus the identity on the master).</summary>
    FrameCount,
    /// <summary>More bytes than <see cref="ControlOptions.MaxMessageBytes"/> in all frames together.</summary>
    Oversized,
    /// <summary>Malformed header: a MAC frame of the wrong length, text that is not UTF-8, a bad sequence number.</summary>
    Header,
    /// <summary>The message authentication code does not match (wrong secret, altered frame).</summary>
    Mac,
    /// <summary>Authenticated for another job id.</summary>
    ForeignJob,
    /// <summary>A sequence number not above the last one accepted from that sender.</summary>
    Replay,
    /// <summary>Authenticated, but the payload is not JSON (the master answers it with an error, never runs it).</summary>
    Payload,
    /// <summary>An authenticated reply to an earlier request (worker side: that request had already timed out).</summary>
    Stale,
}

/// <summary>Thrown for a message that fails authentication (never crashes the receiver).</summary>
internal sealed class ControlAuthException(DropReason reason, string message) : Exception(message)
{
    public DropReason Reason { get; } = reason;
}

/// <summary>
/// Authenticates control messages with HMAC-SHA256 over a per-job secret. Wire form: six frames
/// [job id, sender, seq, type, payload, mac], mac = HMAC(secret, job|sender|seq|type|payload with
/// 4-byte little-endian length prefixes). A receiver rejects a wrong frame count, a MAC frame that
/// is not 32 bytes, a bad MAC, text that is not strict UTF-8, another job's id, and replays (a
/// sequence number not above the last one accepted from that sender). The MAC is checked before
/// any frame is decoded; sizes are bounded by the socket before this is reached (ControlPlane).
/// Replies from the master carry type <c>reply:SEQ</c> or <c>error:SEQ</c>, SEQ the request's.
/// </summary>
internal sealed class MessageAuth
{
    public const int FrameCount = 6;
    public const int MacBytes = 32;

    private static readonly UTF8Encoding StrictUtf8 = new(encoderShouldEmitUTF8Identifier: false, throwOnInvalidBytes: true);
    private readonly byte[] _secret;
    private readonly ConcurrentDictionary<string, long> _lastSeq = new(StringComparer.Ordinal);

    public MessageAuth(byte[] secret, string jobId)
    {
        if (secret.Length < 16) throw new ArgumentException("the job secret must be at least 16 bytes");
        _secret = secret;
        JobId = jobId;
    }

    public string JobId { get; }

    public static byte[] NewSecret() => JobSecret.Generate();

    public byte[][] Seal(ControlMessage m)
    {
        var f = new[] { m.JobId, m.Sender, m.Seq.ToString(System.Globalization.CultureInfo.InvariantCulture), m.Type, m.Payload }
            .Select(Encoding.UTF8.GetBytes).ToArray();
        return [.. f, Mac(f)];
    }

    public ControlMessage Open(IReadOnlyList<byte[]> frames)
    {
        if (frames.Count != FrameCount)
            throw new ControlAuthException(DropReason.FrameCount, $"malformed message: {frames.Count} frames, expected {FrameCount}");
        if (frames[5].Length != MacBytes)
            throw new ControlAuthException(DropReason.Header, $"malformed header: a {frames[5].Length}-byte MAC frame, expected {MacBytes}");
        var expect = Mac(frames.Take(5).ToArray());
        if (!CryptographicOperations.FixedTimeEquals(expect, frames[5]))
            throw new ControlAuthException(DropReason.Mac, "bad message authentication code");
        string[] s;
        try { s = frames.Take(5).Select(b => StrictUtf8.GetString(b)).ToArray(); }
        catch (DecoderFallbackException) { throw new ControlAuthException(DropReason.Header, "malformed header: a frame is not UTF-8"); }
        if (s[0] != JobId) throw new ControlAuthException(DropReason.ForeignJob, $"message for job '{s[0]}', this is job '{JobId}'");
        if (!long.TryParse(s[2], System.Globalization.NumberStyles.None, System.Globalization.CultureInfo.InvariantCulture, out long seq))
            throw new ControlAuthException(DropReason.Header, "malformed header: bad sequence number");
        bool fresh = false;
        _lastSeq.AddOrUpdate(s[1], _ => { fresh = true; return seq; }, (_, last) => { fresh = seq > last; return fresh ? seq : last; });
        if (!fresh) throw new ControlAuthException(DropReason.Replay, $"replayed message from '{s[1]}' (sequence {seq})");
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
