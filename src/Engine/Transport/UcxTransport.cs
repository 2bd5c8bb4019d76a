using System.Collections.Concurrent;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using ReaLNative.Interop;
using ReaLNative.Interop.Ucx;

namespace ReaLNative.Engine.Transport;

/// <summary>
/// <see cref="ITransport"/> over UCX tag matching (ucp_tag_send_nbx / ucp_tag_recv_nbx) and
/// <see cref="IRmaTransport"/> over UCX RMA (ucp_mem_map, ucp_rkey_pack / ucp_ep_rkey_unpack,
/// ucp_put_nbx / ucp_get_nbx, ucp_ep_flush_nbx): zero-copy where the transport supports it (cma,
/// rdma), shared memory or TCP otherwise, as UCX chooses (UCX_TLS or
/// <see cref="UcxTransportOptions.Transports"/> restrict it). One UCP context and worker per rank;
/// every UCX call happens on this object's progress thread, which polls or sleeps as
/// <see cref="UcxTransportOptions"/> says (default: poll with back-off, which keeps shared memory
/// and cma between local processes). Endpoints come from worker addresses exchanged through a
/// bootstrap (<see cref="Connect"/>). The 64-bit UCX tag carries the source rank (24 bits) and the
/// user tag (40 bits), receives match both exactly.
/// A get from a rank that is a process of this host whose memory this process may read
/// (<see cref="LocalProcessOf"/>) is one process_vm_readv on the calling thread
/// (<see cref="UcxTransportOptions.GetByProcessRead"/>): UCX would serve it with software RMA, active
/// messages that the owner's progress thread answers, and an owner with nothing else to do naps up to
/// <see cref="UcxTransportOptions.MaxSleep"/> between polls (docs/cost-model.md, "Worker processes: compilation and reads").
/// Deadlines: an operation that misses its deadline is cancelled (ucp_request_cancel; tagged sends
/// and receives) and, for sends and RMA, the peer is treated as failed: no new operation to it is
/// accepted and, with <see cref="UcxTransportOptions.PeerFailureDetection"/>, its endpoint is
/// force-closed (which fails UCX's outstanding operations and gives their buffers back). The task
/// fails with a <see cref="TimeoutException"/> naming the peer once UCX released the buffer, or at
/// the latest 0.5 s after the deadline with a message saying UCX still holds the buffer (keep it
/// alive until the transport is disposed).
/// </summary>
internal sealed unsafe class UcxTransport : ITransport, IRmaTransport
{
    private const int RankBits = 24, TagBits = 40;
    private readonly nint _context, _worker;
    private nint[] _eps = [];
    private string?[] _closed = [];
    private readonly List<nint> _closing = [];
    private readonly ConcurrentQueue<Op> _queue = new();
    private readonly Thread _thread;
    private volatile bool _stop;
    private readonly HashSet<Op> _pending = [];
    private readonly Timer? _watchdog;
    private readonly ManualResetEventSlim _kick = new(false, 1);
    private readonly Doorbell? _bell;
    private readonly byte[] _address;
    private readonly HashSet<Region> _regions = [];
    private readonly HashSet<RemoteRegion> _remotes = [];
    private Exception? _fatal;

    private enum Kind { Send, Recv, Put, Get, Call }

    private sealed class Op
    {
        public UcxTransport Owner = null!;
        public Kind Kind;
        public int Peer;
        public ulong Tag;
        public nint Data;
        public long Bytes;
        public ulong RemoteAddress;
        public nint Rkey;
        public Action? Call;
        public void* Request;
        public int Outstanding;          // RMA: UCX requests still running (put + flush)
        public ucs_status_t Status;      // first error among them
        public GCHandle Self;
        public DateTime Deadline;
        public readonly TaskCompletionSource Done = new(TaskCreationOptions.RunContinuationsAsynchronously);
        public CancellationTokenRegistration Cancel;
        public CancellationToken Token;
        public volatile bool CancelRequested;
        public string? Failure;  // set when the deadline passed: the task fails with it once UCX released the buffer

        public string What => Kind switch
        {
            Kind.Send => "send to", Kind.Recv => "receive from", Kind.Put => "put to", Kind.Get => "get from", _ => "call on",
        };
    }

    public UcxTransport(int rank, int size) : this(rank, size, UcxTransportOptions.Default) { }

    public UcxTransport(int rank, int size, UcxTransportOptions options)
    {
        if (size < 1 || rank < 0 || rank >= size) throw new ArgumentException($"rank {rank} outside a world of {size}");
        if (size > 1 << RankBits) throw new ArgumentException($"at most {1 << RankBits} ranks");
        Rank = rank;
        Size = size;
        Options = options;
        _spin = options.SpinIterations;
        nint cfg;
        Check(Ucp.ucp_config_read(null, null, &cfg), "ucp_config_read");
        if (options.Transports is string tls)
        {
            var name = "TLS\0"u8.ToArray();
            var value = System.Text.Encoding.UTF8.GetBytes(tls + "\0");
            fixed (byte* n = name, v = value)
            {
                var s = Ucp.ucp_config_modify(cfg, n, v);
                if (s != ucs_status_t.UCS_OK) { Ucp.ucp_config_release(cfg); Check(s, $"UCX TLS={tls}"); }
            }
        }
        var features = ucp_feature.UCP_FEATURE_TAG | ucp_feature.UCP_FEATURE_RMA;
        // UCP_FEATURE_WAKEUP lets idle workers sleep in ucp_worker_wait; on this UCX build it also
        // excludes the shared-memory / cma transports between processes (tcp remains).
        if (options.Wakeup) features |= ucp_feature.UCP_FEATURE_WAKEUP;
        var p = new ucp_params { field_mask = (ulong)ucp_params_field.UCP_PARAM_FIELD_FEATURES, features = (ulong)features };
        nint ctx;
        var st = Ucp.ucp_init(&p, cfg, &ctx);
        Ucp.ucp_config_release(cfg);
        Check(st, "ucp_init");
        _context = ctx;
        var wp = new ucp_worker_params
        {
            field_mask = (ulong)ucp_worker_params_field.UCP_WORKER_PARAM_FIELD_THREAD_MODE,
            thread_mode = ucs_thread_mode_t.UCS_THREAD_MODE_MULTI,
        };
        nint w;
        st = Ucp.ucp_worker_create(_context, &wp, &w);
        if (st != ucs_status_t.UCS_OK)
        {
            Ucp.ucp_cleanup(_context);
            Check(st, "ucp_worker_create");
        }
        _worker = w;
        nint addr;
        ulong len;
        Check(Ucp.ucp_worker_get_address(_worker, &addr, &len), "ucp_worker_get_address");
        if (!options.Wakeup && options.Doorbell) _bell = Doorbell.TryCreate();
        _address = ProcessHeader.Write(options, new ReadOnlySpan<byte>((void*)addr, checked((int)len)), _bell?.Descriptor);
        Ucp.ucp_worker_release_address(_worker, addr);
        _thread = new Thread(Loop) { IsBackground = true, Name = $"ucx-progress-{rank}" };
        if (options.Wakeup)
            _watchdog = new Timer(_ => { if (!_stop && (_pending.Count > 0 || !_queue.IsEmpty)) Ucp.ucp_worker_signal(_worker); }, null, 20, 20);
        _thread.Start();
    }

    public int Rank { get; }
    public int Size { get; }
    public UcxTransportOptions Options { get; }
    public TimeSpan Timeout { get; set; } = TimeSpan.FromSeconds(60);

    /// <summary>Idle rounds the progress thread spins before it yields and naps: at first
    /// <see cref="UcxTransportOptions.SpinIterations"/>; settable while it runs (0: no spin), for a
    /// process whose phases differ (`realn bench realloc` times point-to-point messages with the spin
    /// and reallocations as a job's workers run them, UcxTransportOptions.SkipSpin).</summary>
    public int SpinIterations
    {
        get => Volatile.Read(ref _spin);
        set => Volatile.Write(ref _spin, value >= 0 ? value : throw new ArgumentOutOfRangeException(nameof(value), "a spin count is >= 0"));
    }
    private int _spin;

    /// <summary>This rank's address, to hand to the other ranks: a header naming its process
    /// (host key, pid, whether it allows process reads; <see cref="ProcessHeader"/>) followed by
    /// the UCX worker address.</summary>
    public byte[] LocalAddress => _address;

    private int?[] _localPids = [];
    /// <summary>Peers whose memory the kernel refused to let this process read: their gets go over UCX.</summary>
    private volatile bool[] _readRefused = [];

    /// <summary>How many peers this transport rings when it gives them work (<see cref="Doorbell"/>): the
    /// local ones whose doorbell it could map; set by <see cref="Connect"/>.</summary>
    public int RungPeers { get; private set; }

    /// <inheritdoc/>
    public int? LocalProcessOf(int peer) => (uint)peer < (uint)_localPids.Length ? _localPids[peer] : null;

    /// <summary>Creates an endpoint to every rank from their addresses (index = rank).</summary>
    public void Connect(IReadOnlyList<byte[]> addresses)
    {
        if (addresses.Count != Size) throw new ArgumentException($"expected {Size} addresses, got {addresses.Count}");
        if (_eps.Length != 0) throw new InvalidOperationException("already connected");
        var mine = ProcessHeader.Read(_address, Rank);
        var ucx = new byte[Size][];
        var pids = new int?[Size];
        var bells = new (int Pid, SharedHostMemory.Descriptor Block)?[Size];
        for (int r = 0; r < Size; r++)
        {
            var h = ProcessHeader.Read(addresses[r], r);
            ucx[r] = h.Ucx;
            if (h.ProcessRead && mine.ProcessRead && h.HostKey == mine.HostKey) pids[r] = h.Pid;
            if (pids[r] is int pid && r != Rank && h.Doorbell is { } d) bells[r] = (pid, d);
        }
        _localPids = pids;
        RungPeers = _bell?.Attach(bells) ?? 0;
        _readRefused = new bool[Size];
        Invoke(() =>
        {
            var eps = new nint[Size];
            try
            {
                for (int r = 0; r < Size; r++)
                {
                    fixed (byte* a = ucx[r])
                    {
                        var ep = new ucp_ep_params
                        {
                            field_mask = (ulong)(ucp_ep_params_field.UCP_EP_PARAM_FIELD_REMOTE_ADDRESS | ucp_ep_params_field.UCP_EP_PARAM_FIELD_ERR_HANDLING_MODE),
                            address = (nint)a,
                            // PEER restricts UCX 1.13 to transports that detect peer failure (tcp):
                            // no sysv/posix/self; see UcxTransportOptions.PeerFailureDetection.
                            err_mode = Options.PeerFailureDetection ? ucp_err_handling_mode_t.UCP_ERR_HANDLING_MODE_PEER : ucp_err_handling_mode_t.UCP_ERR_HANDLING_MODE_NONE,
                        };
                        nint h;
                        Check(Ucp.ucp_ep_create(_worker, &ep, &h), $"ucp_ep_create to rank {r}");
                        eps[r] = h;
                    }
                }
            }
            finally
            {
                _closed = new string?[Size];
                _eps = eps;  // the ones created are closed at dispose
            }
        });
    }

    public Task SendAsync(int peer, long tag, nint data, long bytes, CancellationToken ct = default) => PostTagged(Kind.Send, peer, tag, data, bytes, ct);
    public Task RecvAsync(int peer, long tag, nint data, long bytes, CancellationToken ct = default) => PostTagged(Kind.Recv, peer, tag, data, bytes, ct);

    // ---- RMA ------------------------------------------------------------------------------------

    private sealed class Region(UcxTransport owner, nint memh, nint address, long bytes, byte[] descriptor) : IRmaRegion
    {
        public nint Memh = memh;
        public nint Address { get; } = address;
        public long Bytes { get; } = bytes;
        public byte[] Descriptor { get; } = descriptor;
        public void Dispose() => owner.Release(this);
    }

    private sealed class RemoteRegion(UcxTransport owner, int peer, ulong address, long bytes, nint rkey) : IRemoteRegion
    {
        public readonly UcxTransport Owner = owner;
        public readonly ulong Address = address;
        public nint Rkey = rkey;
        public int Peer { get; } = peer;
        public long Bytes { get; } = bytes;
        public void Dispose() => Owner.Release(this);
    }

    public IRmaRegion Register(nint data, long bytes)
    {
        if (data == 0 || bytes <= 0) throw new ArgumentException("register a non-empty buffer");
        Region? region = null;
        Invoke(() =>
        {
            var prm = new ucp_mem_map_params
            {
                field_mask = (ulong)(ucp_mem_map_params_field.UCP_MEM_MAP_PARAM_FIELD_ADDRESS | ucp_mem_map_params_field.UCP_MEM_MAP_PARAM_FIELD_LENGTH),
                address = (void*)data,
                length = (ulong)bytes,
            };
            nint memh;
            Check(Ucp.ucp_mem_map(_context, &prm, &memh), "ucp_mem_map");
            void* key;
            ulong keyLen;
            var st = Ucp.ucp_rkey_pack(_context, memh, &key, &keyLen);
            if (st != ucs_status_t.UCS_OK) { Ucp.ucp_mem_unmap(_context, memh); Check(st, "ucp_rkey_pack"); }
            var d = new byte[16 + (int)keyLen];
            BitConverter.TryWriteBytes(d.AsSpan(0, 8), (ulong)data);
            BitConverter.TryWriteBytes(d.AsSpan(8, 8), bytes);
            new ReadOnlySpan<byte>(key, (int)keyLen).CopyTo(d.AsSpan(16));
            Ucp.ucp_rkey_buffer_release(key);
            region = new Region(this, memh, data, bytes, d);
            _regions.Add(region);
        });
        return region!;
    }

    public IRemoteRegion Attach(int peer, byte[] descriptor)
    {
        if ((uint)peer >= (uint)Size) throw new ArgumentOutOfRangeException(nameof(peer), $"peer {peer} outside a world of {Size}");
        if (descriptor.Length <= 16) throw new ArgumentException("not an RMA descriptor");
        if (_eps.Length == 0) throw new InvalidOperationException("Connect() first");
        ulong address = BitConverter.ToUInt64(descriptor, 0);
        long bytes = BitConverter.ToInt64(descriptor, 8);
        RemoteRegion? remote = null;
        Invoke(() =>
        {
            nint rkey;
            fixed (byte* k = descriptor)
                Check(Ucp.ucp_ep_rkey_unpack(Endpoint(peer), k + 16, &rkey), $"ucp_ep_rkey_unpack of rank {peer}'s region");
            remote = new RemoteRegion(this, peer, address, bytes, rkey);
            _remotes.Add(remote);
        });
        return remote!;
    }

    public Task PutAsync(IRemoteRegion remote, long offset, nint local, long bytes, CancellationToken ct = default) => PostRma(Kind.Put, remote, offset, local, bytes, ct);
    public Task GetAsync(IRemoteRegion remote, long offset, nint local, long bytes, CancellationToken ct = default) => PostRma(Kind.Get, remote, offset, local, bytes, ct);

    private Task PostRma(Kind kind, IRemoteRegion remote, long offset, nint local, long bytes, CancellationToken ct)
    {
        if (remote is not RemoteRegion r || r.Owner != this) throw new ArgumentException("a region attached through this transport");
        if (r.Rkey == 0) throw new ObjectDisposedException(nameof(IRemoteRegion));
        if (offset < 0 || bytes < 0 || offset > r.Bytes - bytes) throw new ArgumentOutOfRangeException(nameof(offset), $"[{offset}, +{bytes}) outside rank {r.Peer}'s region of {r.Bytes} bytes");
        if (bytes > 0 && local == 0) throw new ArgumentException("null buffer with a positive size");
        if (kind == Kind.Get && ReadProcess(r, offset, local, bytes) is { } done) return done;
        return Post(new Op { Kind = kind, Peer = r.Peer, Data = local, Bytes = bytes, RemoteAddress = r.Address + (ulong)offset, Rkey = r.Rkey }, ct);
    }

    /// <summary>A get from a process of this host that this process may read: process_vm_readv of the region's bytes
    /// straight into <paramref name="local"/> (<c>realn_process_read</c>), completed when this returns; nothing of the
    /// owner takes part (its progress thread may nap, or be busy computing). Null where the get goes over UCX: another
    /// host, process reads off on either end or in <see cref="UcxTransportOptions.GetByProcessRead"/>, or the kernel
    /// refused a read of that peer before (another user, ptrace restrictions; remembered).</summary>
    private Task? ReadProcess(RemoteRegion r, long offset, nint local, long bytes)
    {
        if (!Options.GetByProcessRead || (uint)r.Peer >= (uint)_localPids.Length || _localPids[r.Peer] is not int pid || _readRefused[r.Peer]) return null;
        if (_fatal is not null) return Task.FromException(_fatal);
        if (_stop) return Task.FromException(new ObjectDisposedException(nameof(UcxTransport)));
        if (_closed[r.Peer] is string why) return Task.FromException(new IOException($"rank {Rank}: the endpoint to rank {r.Peer} was closed: {why}"));
        if (bytes == 0) return Task.CompletedTask;
        try
        {
            long zero = 0, n = bytes;
            Native.Check(Native.realn_process_read(pid, (void*)local, r.Address + (ulong)offset, &zero, &zero, &n, 1));
            return Task.CompletedTask;
        }
        catch (RealnException e) when (e.Status == RealnStatus.Unsupported)
        {
            _readRefused[r.Peer] = true;
            return null;
        }
        catch (RealnException e)
        {
            return Task.FromException(new IOException($"rank {Rank}: get from rank {r.Peer} ({bytes} bytes, read from process {pid}) failed: {e.Message}", e));
        }
    }

    private void Release(Region region)
    {
        if (region.Memh == 0 || _stop) return;
        Invoke(() =>
        {
            if (region.Memh == 0) return;
            Ucp.ucp_mem_unmap(_context, region.Memh);
            region.Memh = 0;
            _regions.Remove(region);
        });
    }

    private void Release(RemoteRegion remote)
    {
        if (remote.Rkey == 0 || _stop) return;
        Invoke(() =>
        {
            if (remote.Rkey == 0) return;
            Ucp.ucp_rkey_destroy(remote.Rkey);
            remote.Rkey = 0;
            _remotes.Remove(remote);
        });
    }

    // ---- posting and the progress thread --------------------------------------------------------

    private Task PostTagged(Kind kind, int peer, long tag, nint data, long bytes, CancellationToken ct)
    {
        if ((uint)peer >= (uint)Size) throw new ArgumentOutOfRangeException(nameof(peer), $"peer {peer} outside a world of {Size}");
        if (tag < 0 || tag >= 1L << TagBits) throw new ArgumentOutOfRangeException(nameof(tag), $"tag {tag} outside [0, 2^{TagBits})");
        if (bytes < 0 || (bytes > 0 && data == 0)) throw new ArgumentException("null buffer with a positive size");
        if (_eps.Length == 0) throw new InvalidOperationException("Connect() first");
        int src = kind == Kind.Send ? Rank : peer;
        return Post(new Op { Kind = kind, Peer = peer, Data = data, Bytes = bytes, Tag = ((ulong)src << TagBits) | (ulong)tag }, ct);
    }

    private Task Post(Op op, CancellationToken ct)
    {
        if (_fatal is not null) return Task.FromException(_fatal);
        if (_stop) return Task.FromException(new ObjectDisposedException(nameof(UcxTransport)));
        op.Owner = this;
        op.Deadline = DateTime.UtcNow + Timeout;
        if (ct.CanBeCanceled)
        {
            op.Token = ct;
            op.Cancel = ct.Register(() => { op.CancelRequested = true; Kick(); });
        }
        _queue.Enqueue(op);
        Kick();
        return op.Done.Task;
    }

    /// <summary>Runs <paramref name="call"/> on the progress thread (UCX calls stay on one thread)
    /// and waits for it, within the deadline.</summary>
    private static readonly TimeSpan CallTimeout = TimeSpan.FromSeconds(30);

    private void Invoke(Action call)
    {
        if (Thread.CurrentThread == _thread) { call(); return; }
        var t = Post(new Op { Kind = Kind.Call, Call = call }, default);
        // Internal calls (registration, endpoint set-up) get their own generous deadline: a short
        // operation deadline set by the caller must not fail the set-up of that operation.
        var limit = Timeout > CallTimeout ? Timeout : CallTimeout;
        if (!t.Wait(limit)) throw new TimeoutException($"rank {Rank}: the UCX progress thread did not run a call within {limit.TotalSeconds:F0} s");
        t.GetAwaiter().GetResult();
    }

    private void Kick()
    {
        if (Options.Wakeup) Ucp.ucp_worker_signal(_worker);
        else if (_bell is not null) _bell.RingSelf();
        else _kick.Set();
    }

    private void Loop()
    {
        try
        {
            int idle = 0;
            while (!_stop)
            {
                bool any = false;
                while (_queue.TryDequeue(out var op)) { Start(op); any = true; }
                while (Ucp.ucp_worker_progress(_worker) != 0) any = true;
                if (_pending.Count > 0) ExpireDeadlines();
                if (any) { idle = 0; continue; }
                idle++;
                int spin = Volatile.Read(ref _spin);
                if (Options.Wakeup)
                {
                    if (idle < 200) { Thread.SpinWait(50); continue; }
                    idle = 0;
                    var st = Ucp.ucp_worker_arm(_worker);
                    if (st == ucs_status_t.UCS_OK && _queue.IsEmpty && !_stop) Ucp.ucp_worker_wait(_worker);
                }
                else if (idle <= spin) Thread.SpinWait(20);
                else if (idle <= spin + Options.YieldIterations) Thread.Yield();
                else
                {
                    // Operations in flight: PendingNap (1 ms; a peer may be computing); idle: 1, 2, 4 .. MaxSleep ms.
                    // With a doorbell, a local peer that gives this process work ends the nap at once.
                    int step = idle - spin - Options.YieldIterations;
                    int ms = _pending.Count > 0 ? (int)Math.Max(1, Options.PendingNap.TotalMilliseconds) : (int)Math.Min(Options.MaxSleep.TotalMilliseconds, 1 << Math.Min(step, 10));
                    if (_bell is not null)
                        _bell.Sleep(ms, () => _stop || !_queue.IsEmpty || Ucp.ucp_worker_progress(_worker) != 0);
                    else
                    {
                        _kick.Wait(Math.Max(ms, 1));
                        _kick.Reset();
                    }
                }
            }
        }
        catch (Exception e)
        {
            _fatal = e;
            foreach (var op in _pending) op.Done.TrySetException(e);
            while (_queue.TryDequeue(out var op)) op.Done.TrySetException(e);
        }
    }

    private nint Endpoint(int peer)
    {
        if (_closed[peer] is string why) throw new IOException($"rank {Rank}: the endpoint to rank {peer} was closed: {why}");
        return _eps[peer];
    }

    private void Start(Op op)
    {
        if (op.CancelRequested)
        {
            op.Cancel.Dispose();
            op.Done.TrySetCanceled(op.Token);
            return;
        }
        if (op.Kind == Kind.Call)
        {
            try { op.Call!(); op.Done.TrySetResult(); }
            catch (Exception e) { op.Done.TrySetException(e); }
            return;
        }
        nint ep = 0;
        if (op.Kind != Kind.Recv)
        {
            if (_closed[op.Peer] is string why)
            {
                op.Cancel.Dispose();
                op.Done.TrySetException(new IOException($"rank {Rank}: the endpoint to rank {op.Peer} was closed: {why}"));
                return;
            }
            ep = _eps[op.Peer];
        }
        op.Self = GCHandle.Alloc(op);
        var prm = new ucp_request_param_t
        {
            op_attr_mask = (uint)(ucp_op_attr_t.UCP_OP_ATTR_FIELD_CALLBACK | ucp_op_attr_t.UCP_OP_ATTR_FIELD_USER_DATA),
            user_data = (void*)GCHandle.ToIntPtr(op.Self),
        };
        switch (op.Kind)
        {
            case Kind.Send:
            {
                prm.send = (nint)(delegate* unmanaged[Cdecl]<void*, ucs_status_t, void*, void>)&OnSend;
                Started(op, Ucp.ucp_tag_send_nbx(ep, (void*)op.Data, (ulong)op.Bytes, op.Tag, &prm));
                break;
            }
            case Kind.Recv:
            {
                prm.recv = (nint)(delegate* unmanaged[Cdecl]<void*, ucs_status_t, ucp_tag_recv_info*, void*, void>)&OnRecv;
                Started(op, Ucp.ucp_tag_recv_nbx(_worker, (void*)op.Data, (ulong)op.Bytes, op.Tag, ulong.MaxValue, &prm));
                break;
            }
            case Kind.Get:
            {
                prm.send = (nint)(delegate* unmanaged[Cdecl]<void*, ucs_status_t, void*, void>)&OnRma;
                void* req = Ucp.ucp_get_nbx(ep, (void*)op.Data, (ulong)op.Bytes, op.RemoteAddress, op.Rkey, &prm);
                StartedRma(op, req);
                if (op.Outstanding == 0) Finish(op, op.Status);
                else _pending.Add(op);
                break;
            }
            case Kind.Put:
            {
                // The put's completion only frees the local buffer; the flush behind it completes
                // once the bytes reached the target's memory.
                prm.send = (nint)(delegate* unmanaged[Cdecl]<void*, ucs_status_t, void*, void>)&OnRma;
                StartedRma(op, Ucp.ucp_put_nbx(ep, (void*)op.Data, (ulong)op.Bytes, op.RemoteAddress, op.Rkey, &prm));
                if (op.Status == ucs_status_t.UCS_OK) StartedRma(op, Ucp.ucp_ep_flush_nbx(ep, &prm));
                if (op.Outstanding == 0) Finish(op, op.Status);
                else _pending.Add(op);
                break;
            }
        }
        // The peer has work now: a message (or a rendezvous request) in its queue, a matched receive
        // whose data it may now serve, an RMA request it answers.
        _bell?.Ring(op.Peer);
    }

    private void Started(Op op, void* req)
    {
        if (req == null) Finish(op, ucs_status_t.UCS_OK);
        else if (Ucp.IsError(req)) Finish(op, Ucp.Status(req));
        else
        {
            op.Request = req;
            _pending.Add(op);
        }
    }

    private static void StartedRma(Op op, void* req)
    {
        if (req == null) return;
        if (Ucp.IsError(req)) { if (op.Status == ucs_status_t.UCS_OK) op.Status = Ucp.Status(req); }
        else op.Outstanding++;
    }

    private void ExpireDeadlines()
    {
        var now = DateTime.UtcNow;
        List<Op>? late = null;
        foreach (var op in _pending)
        {
            if (op.Failure is null && (op.CancelRequested || now > op.Deadline)) (late ??= []).Add(op);
            else if (op.Failure is not null && !op.Done.Task.IsCompleted && now > op.Deadline + AbandonAfter)
                // UCX neither completed nor cancelled it: report the timeout now; UCX owns the buffer
                // until the callback comes or the transport is disposed.
                op.Done.TrySetException(new TimeoutException(op.Failure + "; UCX still holds the buffer: keep it alive until the transport is disposed"));
        }
        if (late is null) return;
        foreach (var op in late)
        {
            op.Failure = op.CancelRequested ? "cancelled" :
                $"rank {Rank}: {op.What} rank {op.Peer} ({(op.Kind is Kind.Send or Kind.Recv ? $"tag {op.Tag & ((1UL << TagBits) - 1)}, " : "")}{op.Bytes} bytes) did not complete within {Timeout.TotalSeconds:F1} s";
            if (op.CancelRequested) op.Deadline = now;
            if (op.Kind is Kind.Recv or Kind.Send)
                Ucp.ucp_request_cancel(_worker, op.Request);  // the callback follows, UCS_ERR_CANCELED or UCS_OK
            if (op.Kind != Kind.Recv && !op.CancelRequested)
                CloseEndpoint(op.Peer, op.Failure);           // the peer is treated as failed
        }
    }

    /// <summary>How long after its deadline an operation UCX could not cancel is reported failed anyway.</summary>
    private static readonly TimeSpan AbandonAfter = TimeSpan.FromMilliseconds(500);

    private void CloseEndpoint(int peer, string why)
    {
        if (_closed[peer] is not null) return;
        _closed[peer] = why;  // no new operations to that peer
        // A forced close fails the endpoint's outstanding operations (UCS_ERR_CANCELED), which is
        // what gives RMA and send buffers back; UCX allows it only with UCP_ERR_HANDLING_MODE_PEER.
        if (!Options.PeerFailureDetection) return;
        var prm = new ucp_request_param_t
        {
            op_attr_mask = (uint)ucp_op_attr_t.UCP_OP_ATTR_FIELD_FLAGS,
            flags = (uint)ucp_ep_close_flags_t.UCP_EP_CLOSE_FLAG_FORCE,
        };
        void* req = Ucp.ucp_ep_close_nbx(_eps[peer], &prm);
        _eps[peer] = 0;
        if (req != null && !Ucp.IsError(req)) _closing.Add((nint)req);
    }

    private static void Finish(Op op, ucs_status_t st)
    {
        if (op.Self.IsAllocated) op.Self.Free();
        op.Cancel.Dispose();
        if (op.Failure is not null && op.CancelRequested) op.Done.TrySetCanceled(op.Token);
        else if (op.Failure is not null) op.Done.TrySetException(new TimeoutException(op.Failure));
        else if (st == ucs_status_t.UCS_OK) op.Done.TrySetResult();
        else op.Done.TrySetException(new IOException($"UCX {op.What} rank {op.Peer} failed: {Ucp.StatusText(st)}"));
    }

    private static void Complete(void* request, ucs_status_t st, void* user)
    {
        var op = (Op)GCHandle.FromIntPtr((nint)user).Target!;
        op.Owner._pending.Remove(op);
        Finish(op, st);
        Ucp.ucp_request_free(request);
        // A receive that completed a rendezvous sent the sender its acknowledgement: the sender's
        // send completes when it reads it.
        op.Owner._bell?.Ring(op.Peer);
    }

    [UnmanagedCallersOnly(CallConvs = [typeof(CallConvCdecl)])]
    private static void OnSend(void* request, ucs_status_t st, void* user) => Complete(request, st, user);

    [UnmanagedCallersOnly(CallConvs = [typeof(CallConvCdecl)])]
    private static void OnRecv(void* request, ucs_status_t st, ucp_tag_recv_info* info, void* user) => Complete(request, st, user);

    [UnmanagedCallersOnly(CallConvs = [typeof(CallConvCdecl)])]
    private static void OnRma(void* request, ucs_status_t st, void* user)
    {
        var op = (Op)GCHandle.FromIntPtr((nint)user).Target!;
        if (st != ucs_status_t.UCS_OK && op.Status == ucs_status_t.UCS_OK) op.Status = st;
        Ucp.ucp_request_free(request);
        if (--op.Outstanding > 0) return;
        op.Owner._pending.Remove(op);
        Finish(op, op.Status);
        op.Owner._bell?.Ring(op.Peer);
    }

    public void Dispose()
    {
        if (_stop) return;
        _stop = true;
        _watchdog?.Dispose();
        if (_thread.IsAlive)
        {
            Kick();
            if (!_thread.Join(TimeSpan.FromSeconds(10)))
            {
                // The progress thread is stuck inside UCX (a peer that vanished mid-connection, say):
                // destroying the worker under it crashed the process. Leave it; the process is ending.
                foreach (var op in _pending) op.Done.TrySetException(new ObjectDisposedException(nameof(UcxTransport)));
                Console.Error.WriteLine($"rank {Rank}: the UCX progress thread did not stop within 10 s; its resources are left to process exit");
                return;
            }
        }
        // Let operations UCX still runs (one abandoned after its deadline, say) finish before any
        // endpoint is destroyed: UCX 1.13 aborts in uct_tcp_ep_pending_purge when a tcp endpoint with
        // queued operations is destroyed. Bounded: progress until quiet for 50 ms, at most 5 s.
        var drainUntil = DateTime.UtcNow.AddSeconds(5);
        var quietSince = DateTime.UtcNow;
        while (_pending.Count > 0 && DateTime.UtcNow < drainUntil && DateTime.UtcNow - quietSince < TimeSpan.FromMilliseconds(50))
            if (Ucp.ucp_worker_progress(_worker) != 0) quietSince = DateTime.UtcNow;
        int stuck = _pending.Count;
        foreach (var op in _pending) op.Done.TrySetException(new ObjectDisposedException(nameof(UcxTransport)));
        while (_queue.TryDequeue(out var op)) op.Done.TrySetException(new ObjectDisposedException(nameof(UcxTransport)));
        if (stuck > 0)
        {
            // An operation UCX neither completed nor cancelled (a rendezvous send whose receiver never
            // posted, a peer that died): destroying its endpoint or the worker is what UCX 1.13 aborts
            // the process on (uct_tcp_ep_pending_purge, seen in UcxRmaTests). Nothing progresses this
            // worker any more, so UCX touches no buffer again; its resources are left to process exit.
            Console.Error.WriteLine($"rank {Rank}: {stuck} UCX operation{(stuck == 1 ? "" : "s")} neither completed nor cancelled at close; the endpoints and worker are left to process exit");
            return;
        }
        foreach (var r in _remotes) Ucp.ucp_rkey_destroy(r.Rkey);
        foreach (var r in _regions) Ucp.ucp_mem_unmap(_context, r.Memh);
        var requests = new List<nint>(_closing);
        foreach (var ep in _eps)
        {
            if (ep == 0) continue;  // never created, or already closed after a timeout
            // Forced even without UCP_ERR_HANDLING_MODE_PEER (which the header asks for): a flushing
            // close waits on peers that may already be gone; the wait below is bounded either way.
            var prm = new ucp_request_param_t
            {
                op_attr_mask = (uint)ucp_op_attr_t.UCP_OP_ATTR_FIELD_FLAGS,
                flags = (uint)ucp_ep_close_flags_t.UCP_EP_CLOSE_FLAG_FORCE,
            };
            void* req = Ucp.ucp_ep_close_nbx(ep, &prm);
            if (req != null && !Ucp.IsError(req)) requests.Add((nint)req);
        }
        var until = DateTime.UtcNow.AddSeconds(5);
        foreach (var req in requests)
        {
            while (Ucp.ucp_request_check_status((void*)req) == ucs_status_t.UCS_INPROGRESS && DateTime.UtcNow < until)
                Ucp.ucp_worker_progress(_worker);
            Ucp.ucp_request_free((void*)req);
        }
        Ucp.ucp_worker_destroy(_worker);
        Ucp.ucp_cleanup(_context);
        _kick.Dispose();
        _bell?.Dispose();
    }

    private static void Check(ucs_status_t st, string what)
    {
        if (st != ucs_status_t.UCS_OK) throw new IOException($"{what} failed: {Ucp.StatusText(st)}");
    }
}

/// <summary>The header of a rank's address: which process it is and where. Layout: "RLNP", a
/// version byte (2), a flags byte (bit 0: the process allows process reads), the pid (int32), its
/// <see cref="Doorbell"/>'s block (descriptor number int32, -1 for none; offset, size int64; token
/// uint64), the host key's length (uint16) and UTF-8 bytes, then the UCX worker address.</summary>
internal static class ProcessHeader
{
    private static readonly byte[] Magic = "RLNP"u8.ToArray();

    public readonly record struct Parsed(bool ProcessRead, int Pid, string HostKey, byte[] Ucx, SharedHostMemory.Descriptor? Doorbell);

    private const byte Version = 2;
    private const int Fixed = 4 + 1 + 1 + 4 + 4 + 8 + 8 + 8 + 2;   // through the host key's length

    public static byte[] Write(UcxTransportOptions o, ReadOnlySpan<byte> ucx, SharedHostMemory.Descriptor? doorbell = null)
    {
        var key = System.Text.Encoding.UTF8.GetBytes(o.HostKey ?? ThisHost.Value);
        if (key.Length > ushort.MaxValue) throw new ArgumentException("host key longer than 65535 bytes");
        var b = new byte[Fixed + key.Length + ucx.Length];
        Magic.CopyTo(b, 0);
        b[4] = Version;
        b[5] = (byte)(o.ProcessRead ? 1 : 0);
        BitConverter.TryWriteBytes(b.AsSpan(6), Environment.ProcessId);
        var d = doorbell ?? new SharedHostMemory.Descriptor(-1, 0, 0, 0);
        BitConverter.TryWriteBytes(b.AsSpan(10), d.Fd);
        BitConverter.TryWriteBytes(b.AsSpan(14), d.Offset);
        BitConverter.TryWriteBytes(b.AsSpan(22), d.Size);
        BitConverter.TryWriteBytes(b.AsSpan(30), d.Token);
        BitConverter.TryWriteBytes(b.AsSpan(38), (ushort)key.Length);
        key.CopyTo(b, Fixed);
        ucx.CopyTo(b.AsSpan(Fixed + key.Length));
        return b;
    }

    public static Parsed Read(byte[] a, int rank)
    {
        if (a.Length < Fixed || !a.AsSpan(0, 4).SequenceEqual(Magic) || a[4] != Version)
            throw new ArgumentException($"rank {rank}'s address has no ReaLNative process header (version {Version}): is every rank running this build of realn?");
        int keyLength = BitConverter.ToUInt16(a, 38);
        if (Fixed + keyLength >= a.Length) throw new ArgumentException($"rank {rank}'s address is truncated ({a.Length} bytes, host key of {keyLength})");
        int fd = BitConverter.ToInt32(a, 10);
        var bell = fd >= 0 ? new SharedHostMemory.Descriptor(fd, BitConverter.ToInt64(a, 14), BitConverter.ToInt64(a, 22), BitConverter.ToUInt64(a, 30)) : (SharedHostMemory.Descriptor?)null;
        return new Parsed((a[5] & 1) != 0, BitConverter.ToInt32(a, 6), System.Text.Encoding.UTF8.GetString(a, Fixed, keyLength), a[(Fixed + keyLength)..], bell);
    }

    /// <summary>This host: the kernel's boot id, with this process's pid and network namespaces.</summary>
    private static readonly Lazy<string> ThisHost = new(() =>
    {
        static string Try(Func<string> f) { try { return f(); } catch (Exception e) when (e is IOException or UnauthorizedAccessException) { return "?"; } }
        string boot = Try(() => File.ReadAllText("/proc/sys/kernel/random/boot_id").Trim());
        string pidNs = Try(() => new FileInfo("/proc/self/ns/pid").LinkTarget ?? "?");
        string netNs = Try(() => new FileInfo("/proc/self/ns/net").LinkTarget ?? "?");
        // Without /proc nothing says two processes share a kernel: the machine name is all there is,
        // and a unique suffix keeps such processes apart (no process reads between them).
        return boot == "?" ? $"{Environment.MachineName}/{Guid.NewGuid():N}" : $"{boot}|{pidNs}|{netNs}";
    });
}
