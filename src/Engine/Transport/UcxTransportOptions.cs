namespace ReaLNative.Engine.Transport;

/// <summary>
/// How a <see cref="UcxTransport"/> waits for work. With <see cref="Wakeup"/> the context requests
/// UCP_FEATURE_WAKEUP and an idle progress thread sleeps in ucp_worker_wait; on UCX 1.13 here that
/// restricts the transports between processes to those with an event fd (tcp), see
/// <c>realn bench realloc --p2p-only</c> for the measured difference. Without it (the default) UCX
/// keeps shared memory (sysv/posix) and cma between local processes and the progress thread polls:
/// it spins <see cref="SpinIterations"/> idle rounds, then yields the core
/// <see cref="YieldIterations"/> times, then sleeps in steps growing to <see cref="MaxSleep"/> (1 ms
/// while operations are in flight), and is woken at once when an operation is posted.
/// Environment: REALN_UCX_WAKEUP=1 selects wakeup, REALN_UCX_SPIN the spin count, UCX_TLS (UCX's
/// own) restricts transports.
/// A progress thread that spins takes a core from compute: where the node's compute threads
/// already fill every core (<see cref="ForBusyCores"/>), the spin phase is skipped. Measured on the
/// 2-core host, ppo-tiny with two worker processes: a worker's train call 0.41 s with the spin,
/// 0.22 s without (docs/cost-model.md).
/// </summary>
internal sealed record UcxTransportOptions
{
    public bool Wakeup { get; init; }

    /// <summary>Endpoints with UCP_ERR_HANDLING_MODE_PEER: UCX reports a dead peer as an error on
    /// its operations. On UCX 1.13 that mode excludes every transport without peer-failure
    /// detection (self, sysv, posix), so between local processes only tcp remains: off by default,
    /// the transport's own deadlines catch a dead peer instead. REALN_UCX_ERRMODE=peer turns it on.</summary>
    public bool PeerFailureDetection { get; init; }
    public int SpinIterations { get; init; } = 4000;
    public int YieldIterations { get; init; } = 200;
    public TimeSpan MaxSleep { get; init; } = TimeSpan.FromMilliseconds(10);

    /// <summary>The nap of a progress thread with operations in flight (after the spin and the yields).</summary>
    public TimeSpan PendingNap { get; init; } = TimeSpan.FromMilliseconds(1);

    /// <summary>Whether a polling progress thread naps on a <see cref="Transport.Doorbell"/> that the
    /// processes of its host ring when they give it work (a message, a rendezvous step), so that it wakes
    /// at once instead of at the end of its nap. No effect with <see cref="Wakeup"/>.
    /// REALN_UCX_DOORBELL=0 turns it off.</summary>
    public bool Doorbell { get; init; } = true;

    /// <summary>UCX transport list for this context only (UCX's TLS setting, e.g. "tcp" or
    /// "sm,cma,self"); null keeps UCX_TLS / UCX's choice.</summary>
    public string? Transports { get; init; }

    /// <summary>Whether peers on this host may read this process's memory (process_vm_readv) and
    /// this process theirs; both ends must allow it (the address header carries it).
    /// REALN_REALLOC_PROCESS_READ=0 turns it off: reallocation then moves everything over UCX.</summary>
    public bool ProcessRead { get; init; } = true;

    /// <summary>Whether a get from a peer this process may read (<see cref="ProcessRead"/> on both ends, one host) is
    /// a process_vm_readv on the calling thread instead of UCX's get, which on the shared-memory lanes is software RMA
    /// served by the owner's progress thread: a worker reading a generation's sequences from an idle peer waited for
    /// that peer's nap (up to <see cref="MaxSleep"/>) per read, 8-24 ms per operation with 4 workers on 2 cores
    /// (docs/cost-model.md, "Worker processes: compilation and reads"). REALN_RMA_GET_PROCESS_READ=0 turns it off.</summary>
    public bool GetByProcessRead { get; init; } = true;

    /// <summary>What identifies this host to its peers: ranks with equal keys are processes of one
    /// kernel that can read each other's memory. Null: the boot id with the pid and network
    /// namespaces (processes in two network namespaces are two nodes, as the multi-node tests
    /// simulate them). Tests set it to put ranks of one host on "different hosts".</summary>
    public string? HostKey { get; init; }

    public static UcxTransportOptions Default { get; } = FromEnvironment();

    /// <summary>The environment variable that sets <see cref="SpinIterations"/>.</summary>
    public const string SpinVariable = "REALN_UCX_SPIN";

    /// <summary>Whether the spin phase should be skipped on this host: the compute threads of the
    /// node's processes (<paramref name="computeThreads"/> in all) use every core, so a spinning
    /// progress thread would run only by taking a core from them. False when the user set
    /// <see cref="SpinVariable"/> (their value is kept).</summary>
    public static bool SkipSpin(int computeThreads) =>
        Environment.GetEnvironmentVariable(SpinVariable) is null && computeThreads >= Environment.ProcessorCount;

    /// <summary>These options, without the spin phase when <see cref="SkipSpin"/> says so.</summary>
    public UcxTransportOptions ForBusyCores(int computeThreads) => SkipSpin(computeThreads) ? this with { SpinIterations = 0 } : this;

    public static UcxTransportOptions FromEnvironment()
    {
        var o = new UcxTransportOptions();
        var w = Environment.GetEnvironmentVariable("REALN_UCX_WAKEUP");
        if (w is not null) o = o with { Wakeup = w is "1" or "true" or "yes" or "on" };
        if (Environment.GetEnvironmentVariable("REALN_UCX_ERRMODE") is string e) o = o with { PeerFailureDetection = e == "peer" };
        if (int.TryParse(Environment.GetEnvironmentVariable(SpinVariable), out int s) && s >= 0) o = o with { SpinIterations = s };
        if (Environment.GetEnvironmentVariable("REALN_REALLOC_PROCESS_READ") == "0") o = o with { ProcessRead = false };
        if (Environment.GetEnvironmentVariable("REALN_RMA_GET_PROCESS_READ") == "0") o = o with { GetByProcessRead = false };
        if (Environment.GetEnvironmentVariable("REALN_UCX_DOORBELL") == "0") o = o with { Doorbell = false };
        return o;
    }

    public override string ToString() => (Wakeup ? "wakeup" : $"poll (spin {SpinIterations}, yield {YieldIterations}, sleep <= {MaxSleep.TotalMilliseconds:F0} ms{(Doorbell ? ", doorbell" : "")})")
        + (PeerFailureDetection ? ", err mode peer" : "") + (Transports is null ? "" : $", tls {Transports}") + (ProcessRead ? "" : ", no process read") + (GetByProcessRead ? "" : ", gets over UCX");
}
