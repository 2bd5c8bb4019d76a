// Where the replicas of an execution plan live: devices that are threads of this process
// (LocalCluster) or worker processes (Workers/WorkerPool). The run loop holds one and asks it for
// replicas; the interface sits beside IReplica so that neither side depends on the other.
using ReaLNative.Engine.Layout;
using ReaLNative.Engine.Model;
using ReaLNative.Engine.Optim;

namespace ReaLNative.Engine.Parallelism;

/// <summary>Where replicas of an execution plan live: in-process devices or worker processes.</summary>
internal interface IReplicaHost : IDisposable
{
    int Devices { get; }
    /// <summary>A replica of a model under <paramref name="layout"/>; with <paramref name="optimizer"/>
    /// trainable. <paramref name="precision"/> bf16: a trainable replica keeps the fp32 master and
    /// AdamW moments and runs on their bf16 copy, an inference replica holds bf16 weights only.</summary>
    IReplica Create(string name, LlamaConfig config, bool scalarHead, ParallelLayout layout, int microBatches, OptimizerSpec? optimizer,
                    ModelPrecision precision = ModelPrecision.Fp32);

    /// <summary>Each worker process's peak resident set in bytes (null where a worker cannot tell),
    /// by device; null when the devices are threads of this process (counted in its own).</summary>
    IReadOnlyList<long?>? WorkerPeakRssBytes() => null;

    /// <summary>Bytes of other workers' shared shards each worker process keeps mapped, by device
    /// (the pages it has read of them count in its resident set as well as in their owner's); null
    /// for in-process devices.</summary>
    IReadOnlyList<long>? WorkerPeerMappedBytes() => null;

    /// <summary>Bytes of call inputs the master sent to worker processes, bytes of sequences and
    /// outputs the workers moved between themselves (Workers/ResidentBatches.cs), and bytes of call
    /// outputs the master received from them; null for in-process devices.</summary>
    (long FromMaster, long BetweenWorkers, long ToMaster)? DataBytes => null;

    /// <summary>Per-action outputs the master left with the worker processes and may still read
    /// (Workers/ResidentBatches.HoldOutput: neither fetched nor released); 0 once every batch that
    /// holds one is released, which a stage's end checks. 0 for in-process devices.</summary>
    int HeldOutputs => 0;
}
