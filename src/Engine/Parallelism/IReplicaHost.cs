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
    IReadOnlyList<long?>? WorkerPeakRssBytes() => WorkerMemory()?.Select(r => r["peak_rss_bytes"]?.GetValue<long?>()).ToArray();

    /// <summary>Each worker process's memory report, by device (ModelWorker's `memory` command:
    /// peak_rss_bytes, its VmHWM; base_rss_bytes, its resident set after start-up; peer_mapped_bytes,
    /// other workers' shared shards it keeps mapped; activation_arena_bytes; peak_set_by, the command
    /// during which its peak last rose); null for in-process devices.</summary>
    IReadOnlyList<System.Text.Json.Nodes.JsonObject>? WorkerMemory() => null;

    /// <summary>Bytes of call inputs the master sent to worker processes, bytes of sequences and
    /// outputs the workers moved between themselves (Workers/ResidentBatches.cs), and bytes of call
    /// outputs the master received from them; null for in-process devices.</summary>
    (long FromMaster, long BetweenWorkers, long ToMaster)? DataBytes => null;

    /// <summary>Per-action outputs the master left with the worker processes and may still read
    /// (Workers/ResidentBatches.HoldOutput: neither fetched nor released); 0 once every batch that
    /// holds one is released, which a stage's end checks. 0 for in-process devices.</summary>
    int HeldOutputs => 0;

    /// <summary>Has every worker process free the activation blocks no call holds (Model/ArenaBlocks.Trim)
    /// before its next command (`activation_cache_clear_every`); in-process devices share this process's
    /// blocks, which the caller frees itself.</summary>
    void ClearActivationCaches() { }
}
