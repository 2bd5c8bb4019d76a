namespace ReaLNative.Engine.Transport;

/// <summary>
/// One-sided remote memory access next to the tagged messages of <see cref="ITransport"/>. A rank
/// registers a buffer (<see cref="Register"/>), hands the region's <see cref="IRmaRegion.Descriptor"/>
/// to its peers through a bootstrap (the control-plane rendezvous, or <see cref="RmaBootstrap"/>
/// over the tagged channel), and each peer attaches it (<see cref="Attach"/>) and reads or writes it
/// without the owner taking part. Contract:
/// <list type="bullet">
/// <item>The owner keeps the registered memory alive and unmoved until it disposes the region and
/// every peer is done with it (a tagged message or a barrier says so).</item>
/// <item><see cref="PutAsync"/> completes when the bytes are in the target's memory: a tagged message
/// sent after it completes is a valid "data is there" notification. <see cref="GetAsync"/> completes
/// when the bytes are in the local buffer. Neither notifies the owner.</item>
/// <item>Every operation has the transport's deadline. An RMA operation that misses it fails with a
/// <see cref="TimeoutException"/> naming the peer, and the peer is treated as failed (no further
/// operations to it). UCX cannot cancel an RMA operation in flight: unless the message says the
/// buffer was released, keep it alive until the transport is disposed.</item>
/// </list>
/// UCX implements it (<see cref="UcxTransport"/>). A transport that cannot do one-sided access (NCCL
/// has no RMA) simply does not implement this interface; callers test <c>transport is IRmaTransport</c>
/// and fall back to tagged messages.
/// </summary>
internal interface IRmaTransport
{
    /// <summary>Registers [<paramref name="data"/>, +<paramref name="bytes"/>) for remote access.</summary>
    IRmaRegion Register(nint data, long bytes);

    /// <summary>Makes <paramref name="peer"/>'s region, described by the descriptor its
    /// <see cref="Register"/> returned, accessible from this rank.</summary>
    IRemoteRegion Attach(int peer, byte[] descriptor);

    /// <summary>Writes <paramref name="bytes"/> from <paramref name="local"/> to the remote region at
    /// <paramref name="offset"/>; completes when they are in the target's memory.</summary>
    Task PutAsync(IRemoteRegion remote, long offset, nint local, long bytes, CancellationToken ct = default);

    /// <summary>Reads <paramref name="bytes"/> of the remote region at <paramref name="offset"/> into
    /// <paramref name="local"/>.</summary>
    Task GetAsync(IRemoteRegion remote, long offset, nint local, long bytes, CancellationToken ct = default);
}

/// <summary>A local buffer registered for remote access.</summary>
internal interface IRmaRegion : IDisposable
{
    nint Address { get; }
    long Bytes { get; }

    /// <summary>Opaque bytes a peer passes to <see cref="IRmaTransport.Attach"/> (address, length, packed key).</summary>
    byte[] Descriptor { get; }
}

/// <summary>A peer's registered region as seen from this rank.</summary>
internal interface IRemoteRegion : IDisposable
{
    int Peer { get; }
    long Bytes { get; }
}

/// <summary>Exchanges RMA descriptors (or any small blobs) between the members of a group over the
/// tagged channel: every member sends its blob (length, then bytes) to every other member. Uses
/// user tags <paramref name="tag"/> and <paramref name="tag"/> + 1.</summary>
internal static class RmaBootstrap
{
    public static async Task<byte[][]> AllGatherAsync(ITransport t, IReadOnlyList<int> group, long tag, byte[] mine, CancellationToken ct = default)
    {
        var result = new byte[group.Count][];
        var lengths = new long[group.Count];
        var myLength = new long[] { mine.Length };
        var handles = new List<System.Runtime.InteropServices.GCHandle>();
        nint Pin(object o)
        {
            var h = System.Runtime.InteropServices.GCHandle.Alloc(o, System.Runtime.InteropServices.GCHandleType.Pinned);
            handles.Add(h);
            return h.AddrOfPinnedObject();
        }
        try
        {
            nint myLen = Pin(myLength), myData = Pin(mine), lens = Pin(lengths);
            var sends = new List<Task>();
            var recvs = new List<(int I, Task T)>();
            for (int i = 0; i < group.Count; i++)
            {
                if (group[i] == t.Rank) { result[i] = mine; continue; }
                recvs.Add((i, t.RecvAsync(group[i], tag, lens + i * 8, 8, ct)));
                sends.Add(t.SendAsync(group[i], tag, myLen, 8, ct));
                sends.Add(t.SendAsync(group[i], tag + 1, myData, mine.Length, ct));
            }
            var data = new List<Task>();
            foreach (var (i, task) in recvs)
            {
                await task;
                result[i] = new byte[lengths[i]];
                data.Add(t.RecvAsync(group[i], tag + 1, Pin(result[i]), lengths[i], ct));
            }
            await Task.WhenAll(data);
            await Task.WhenAll(sends);
            return result;
        }
        finally
        {
            foreach (var h in handles) h.Free();
        }
    }
}
