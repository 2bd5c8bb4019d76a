using System.Collections.Concurrent;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using ReaLNative.Interop.Ucx;

namespace ReaLNative.Engine.Transport;

/// <summary>
/// <see cref="ITransport"/> over UCX tag matching (ucp_tag_send_nbx / ucp_tag_recv_nbx): zero-copy
/// for the transports that support it (cma, rdma), shared memory or TCP otherwise, as UCX chooses
/// (UCX_TLS may restrict it). One UCP context and worker per rank; all UCX calls happen on this
/// object's progress thread, which spins briefly on ucp_worker_progress and otherwise sleeps in
/// ucp_worker_wait (woken by ucp_worker_signal when work is queued), so idle CPU workers do not
/// burn a core. Endpoints come from worker addresses exchanged through a bootstrap
/// (<see cref="Connect"/>). The 64-bit UCX tag carries the source rank (24 bits) and the user tag
/// (40 bits), receives match both exactly.
/// </summary>
internal unsafe class UcxTransport : ITransport
{
    private const int RankBits = 24, TagBits = 40;
    private readonly nint _context, _worker;
    private nint[] _eps = [];
    private readonly ConcurrentQueue<Op> _queue = new();
    private readonly Thread _thread;
    private volatile bool _stop;
    private readonly HashSet<Op> _pending = [];
    private readonly Timer _watchdog;
    private readonly byte[] _address;
    private Exception? _fatal;

    private sealed class Op
    {
        public UcxTransport Owner = null!;
        public bool Send;
        public int Peer;
        public ulong Tag;
        public nint Data;
        public long Bytes;
        public void* Request;
        public GCHandle Self;
        public DateTime Deadline;
        public readonly TaskCompletionSource Done = new(TaskCreationOptions.RunContinuationsAsynchronously);
        public CancellationTokenRegistration Cancel;
        public CancellationToken Token;
        public volatile bool CancelRequested;
        public string? Failure;  // set when the deadline passed: the task fails with it once UCX released the buffer
    }

    public UcxTransport(int rank, int size)
    {
        if (size < 1 || rank < 0 || rank >= size) throw new ArgumentException($"rank {rank} outside a world of {size}");
        if (size > 1 << RankBits) throw new ArgumentException($"at most {1 << RankBits} ranks");
        Rank = rank;
        Size = size;
        nint cfg;
        Check(Ucp.ucp_config_read(null, null, &cfg), "ucp_config_read");
        var p = new ucp_params
        {
            field_mask = (ulong)ucp_params_field.UCP_PARAM_FIELD_FEATURES,
            // UCP_FEATURE_WAKEUP lets idle workers sleep in ucp_worker_wait; on this UCX build it
            // also excludes the shared-memory / cma transports between processes (tcp remains).
            features = (ulong)(ucp_feature.UCP_FEATURE_TAG | ucp_feature.UCP_FEATURE_RMA | ucp_feature.UCP_FEATURE_WAKEUP),
        };
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
        _address = new ReadOnlySpan<byte>((void*)addr, checked((int)len)).ToArray();
        Ucp.ucp_worker_release_address(_worker, addr);
        _thread = new Thread(Loop) { IsBackground = true, Name = $"ucx-progress-{rank}" };
        _watchdog = new Timer(_ => { if (_pending.Count > 0 || !_queue.IsEmpty) Ucp.ucp_worker_signal(_worker); }, null, 20, 20);
    }

    public int Rank { get; }
    public int Size { get; }
    public TimeSpan Timeout { get; set; } = TimeSpan.FromSeconds(60);

    /// <summary>This worker's UCX address, to hand to the other ranks.</summary>
    public byte[] LocalAddress => _address;

    /// <summary>Creates an endpoint to every rank from their addresses (index = rank) and starts
    /// the progress thread.</summary>
    public void Connect(IReadOnlyList<byte[]> addresses)
    {
        if (addresses.Count != Size) throw new ArgumentException($"expected {Size} addresses, got {addresses.Count}");
        _eps = new nint[Size];
        for (int r = 0; r < Size; r++)
        {
            fixed (byte* a = addresses[r])
            {
                var ep = new ucp_ep_params
                {
                    field_mask = (ulong)(ucp_ep_params_field.UCP_EP_PARAM_FIELD_REMOTE_ADDRESS | ucp_ep_params_field.UCP_EP_PARAM_FIELD_ERR_HANDLING_MODE),
                    address = (nint)a,
                    err_mode = ucp_err_handling_mode_t.UCP_ERR_HANDLING_MODE_PEER,
                };
                nint h;
                Check(Ucp.ucp_ep_create(_worker, &ep, &h), $"ucp_ep_create to rank {r}");
                _eps[r] = h;
            }
        }
        _thread.Start();
    }

    public Task SendAsync(int peer, long tag, nint data, long bytes, CancellationToken ct = default) => Post(true, peer, tag, data, bytes, ct);
    public Task RecvAsync(int peer, long tag, nint data, long bytes, CancellationToken ct = default) => Post(false, peer, tag, data, bytes, ct);

    private Task Post(bool send, int peer, long tag, nint data, long bytes, CancellationToken ct)
    {
        if ((uint)peer >= (uint)Size) throw new ArgumentOutOfRangeException(nameof(peer), $"peer {peer} outside a world of {Size}");
        if (tag < 0 || tag >= 1L << TagBits) throw new ArgumentOutOfRangeException(nameof(tag), $"tag {tag} outside [0, 2^{TagBits})");
        if (bytes < 0 || (bytes > 0 && data == 0)) throw new ArgumentException("null buffer with a positive size");
        if (_fatal is not null) return Task.FromException(_fatal);
        if (_eps.Length == 0) throw new InvalidOperationException("Connect() first");
        int src = send ? Rank : peer;
        var op = new Op
        {
            Owner = this, Send = send, Peer = peer, Data = data, Bytes = bytes,
            Tag = ((ulong)src << TagBits) | (ulong)tag,
            Deadline = DateTime.UtcNow + Timeout,
        };
        if (ct.CanBeCanceled)
        {
            op.Token = ct;
            op.Cancel = ct.Register(() => { op.CancelRequested = true; Ucp.ucp_worker_signal(_worker); });
        }
        _queue.Enqueue(op);
        Ucp.ucp_worker_signal(_worker);
        return op.Done.Task;
    }

    private void Loop()
    {
        try
        {
            int idle = 0;
            while (!_stop)
            {
                while (_queue.TryDequeue(out var op)) Start(op);
                bool any = false;
                while (Ucp.ucp_worker_progress(_worker) != 0) any = true;
                if (_pending.Count > 0) ExpireDeadlines();
                if (any) { idle = 0; continue; }
                if (++idle < 200) { Thread.SpinWait(50); continue; }
                idle = 0;
                var st = Ucp.ucp_worker_arm(_worker);
                if (st == ucs_status_t.UCS_OK && _queue.IsEmpty && !_stop) Ucp.ucp_worker_wait(_worker);
            }
        }
        catch (Exception e)
        {
            _fatal = e;
            foreach (var op in _pending) op.Done.TrySetException(e);
        }
    }

    private void Start(Op op)
    {
        if (op.CancelRequested)
        {
            op.Cancel.Dispose();
            op.Done.TrySetCanceled(op.Token);
            return;
        }
        op.Self = GCHandle.Alloc(op);
        var prm = new ucp_request_param_t
        {
            op_attr_mask = (uint)(ucp_op_attr_t.UCP_OP_ATTR_FIELD_CALLBACK | ucp_op_attr_t.UCP_OP_ATTR_FIELD_USER_DATA),
            user_data = (void*)GCHandle.ToIntPtr(op.Self),
        };
        void* req;
        if (op.Send)
        {
            prm.send = (nint)(delegate* unmanaged[Cdecl]<void*, ucs_status_t, void*, void>)&OnSend;
            req = Ucp.ucp_tag_send_nbx(_eps[op.Peer], (void*)op.Data, (ulong)op.Bytes, op.Tag, &prm);
        }
        else
        {
            prm.recv = (nint)(delegate* unmanaged[Cdecl]<void*, ucs_status_t, ucp_tag_recv_info*, void*, void>)&OnRecv;
            req = Ucp.ucp_tag_recv_nbx(_worker, (void*)op.Data, (ulong)op.Bytes, op.Tag, ulong.MaxValue, &prm);
        }
        if (req == null) Finish(op, ucs_status_t.UCS_OK);
        else if (Ucp.IsError(req)) Finish(op, Ucp.Status(req));
        else
        {
            op.Request = req;
            _pending.Add(op);
        }
    }

    private void ExpireDeadlines()
    {
        var now = DateTime.UtcNow;
        List<Op>? late = null;
        foreach (var op in _pending)
            if (op.Failure is null && !op.CancelRequested && now > op.Deadline || op.CancelRequested && op.Failure is null) (late ??= []).Add(op);
        if (late is null) return;
        foreach (var op in late)
        {
            op.Failure = op.CancelRequested ? "cancelled" :
                $"rank {Rank}: {(op.Send ? "send to" : "receive from")} rank {op.Peer} (tag {op.Tag & ((1UL << TagBits) - 1)}, {op.Bytes} bytes) did not complete within {Timeout.TotalSeconds:F0} s";
            // The callback follows with UCS_ERR_CANCELED; only then is the buffer free again.
            Ucp.ucp_request_cancel(_worker, op.Request);
        }
    }

    private static void Finish(Op op, ucs_status_t st)
    {
        if (op.Self.IsAllocated) op.Self.Free();
        op.Cancel.Dispose();
        if (st == ucs_status_t.UCS_OK) op.Done.TrySetResult();
        else if (op.CancelRequested) op.Done.TrySetCanceled(op.Token);
        else if (op.Failure is not null) op.Done.TrySetException(new TimeoutException(op.Failure));
        else op.Done.TrySetException(new IOException($"UCX {(op.Send ? "send to" : "receive from")} rank {op.Peer} failed: {Ucp.StatusText(st)}"));
    }

    private static void Complete(void* request, ucs_status_t st, void* user)
    {
        var op = (Op)GCHandle.FromIntPtr((nint)user).Target!;
        op.Owner._pending.Remove(op);
        Finish(op, st);
        Ucp.ucp_request_free(request);
    }

    [UnmanagedCallersOnly(CallConvs = [typeof(CallConvCdecl)])]
    private static void OnSend(void* request, ucs_status_t st, void* user) => Complete(request, st, user);

    [UnmanagedCallersOnly(CallConvs = [typeof(CallConvCdecl)])]
    private static void OnRecv(void* request, ucs_status_t st, ucp_tag_recv_info* info, void* user) => Complete(request, st, user);

    public void Dispose()
    {
        if (_stop) return;
        _stop = true;
        _watchdog.Dispose();
        if (_thread.IsAlive)
        {
            Ucp.ucp_worker_signal(_worker);
            _thread.Join(TimeSpan.FromSeconds(10));
        }
        foreach (var op in _pending) op.Done.TrySetException(new ObjectDisposedException(nameof(UcxTransport)));
        foreach (var ep in _eps)
        {
            if (ep == 0) continue;  // Connect failed before creating it
            var prm = new ucp_request_param_t
            {
                op_attr_mask = (uint)ucp_op_attr_t.UCP_OP_ATTR_FIELD_FLAGS,
                flags = (uint)ucp_ep_close_flags_t.UCP_EP_CLOSE_FLAG_FORCE,
            };
            void* req = Ucp.ucp_ep_close_nbx(ep, &prm);
            if (req != null && !Ucp.IsError(req))
            {
                var until = DateTime.UtcNow.AddSeconds(5);
                while (Ucp.ucp_request_check_status(req) == ucs_status_t.UCS_INPROGRESS && DateTime.UtcNow < until)
                    Ucp.ucp_worker_progress(_worker);
                Ucp.ucp_request_free(req);
            }
        }
        Ucp.ucp_worker_destroy(_worker);
        Ucp.ucp_cleanup(_context);
    }

    private static void Check(ucs_status_t st, string what)
    {
        if (st != ucs_status_t.UCS_OK) throw new IOException($"{what} failed: {Ucp.StatusText(st)}");
    }
}
