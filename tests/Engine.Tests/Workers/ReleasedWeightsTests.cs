// An inference replica of a trained model gives its weights back between its calls
// (IReplica.ReleaseWeights: the planner counts a trained model's weights in another layout than its
// train call's only while that call runs) and is refilled by the next reallocation into it: its
// log-probs afterwards are bit for bit those before, on devices that are threads of this process and
// in worker processes (where the release rides on the workers' next command and the memory report
// names the bytes given back). An operation on released weights fails naming why; a train replica
// never releases.
using ReaLNative.Engine.Layout;
using ReaLNative.Engine.Model;
using ReaLNative.Engine.Optim;
using ReaLNative.Engine.Parallelism;
using ReaLNative.Engine.Workers;
using Xunit;

namespace ReaLNative.Engine.Tests.Workers;

public sealed class ReleasedWeightsTests
{
    private static readonly LlamaConfig Cfg = LlamaConfig.Preset("tiny");
    private static readonly OptimizerSpec Spec = new(new LrSchedule(1e-3), 0.9f, 0.95f, 1e-8f, 0f, 1f);
    private static readonly ParallelLayout TrainLayout = new([0, 1], 1, 1, 2);
    private static readonly ParallelLayout GenLayout = new([1, 0], 2, 1, 1);

    [Theory]
    [InlineData(false, "fp32")]
    [InlineData(false, "bf16")]
    [InlineData(true, "fp32")]
    [InlineData(true, "bf16")]
    public void AReleasedInferenceReplicaIsRefilledBitForBitByItsNextReallocation(bool processes, string precision)
    {
        var p = precision == "bf16" ? ModelPrecision.Bf16 : ModelPrecision.Fp32;
        using IReplicaHost host = processes
            ? new WorkerPool(2, new WorkerPoolOptions { Executable = WorkerProcessTests.Realn(), ThreadsPerWorker = 1 })
            : new LocalCluster(2);
        using var train = host.Create("actor_train", Cfg, false, TrainLayout, 1, Spec, p);
        train.Initialise(17);
        using var gen = host.Create("actor_gen", Cfg, false, GenLayout, 2, null, p);
        gen.CopyFrom(train);
        var batch = new ScoredBatch([[1, 5, 9, 2, 7], [3, 3, 8, 1], [6, 2, 4, 4, 9, 1]], [2, 1, 3]);
        var want = gen.LogProbs(batch, 1f);
        Assert.Contains(want, x => x != 0);

        Assert.Contains("keeps its weights", Assert.Throws<InvalidOperationException>(() => train.ReleaseWeights()).Message);
        // Per device, the bytes of its gen shard's weights (fp32, or bf16 where the replica holds bf16 only).
        long[] shardBytes = GenLayout.Devices.Select((_, stage) => ParamLayout.Create(Cfg, false, GenLayout.Pp, stage, 1, 0).TotalElements * (p == ModelPrecision.Bf16 ? 2 : 4)).ToArray();
        long Released(int device)
        {
            if (host is WorkerPool pool) return pool.WorkerMemory()![device]["released_weight_bytes"]!.GetValue<long>();
            var dm = (DistributedModel)gen;
            int rank = GenLayout.Devices.ToList().IndexOf(device);
            return dm.Shard(rank).WeightsReleased ? dm.Shard(rank).WeightBytes : 0;
        }
        for (int round = 0; round < 2; round++)
        {
            gen.ReleaseWeights();
            for (int r = 0; r < GenLayout.Devices.Count; r++) Assert.Equal(shardBytes[r], Released(GenLayout.Devices[r]));
            if (!processes)   // a worker fails the job instead (an operation the run never sends: ModelReplicas refills first)
                Assert.Contains("released", Assert.Throws<InvalidOperationException>(() => gen.LogProbs(batch, 1f)).Message);
            gen.CopyFrom(train);
            for (int r = 0; r < GenLayout.Devices.Count; r++) Assert.Equal(0, Released(GenLayout.Devices[r]));
            var got = gen.LogProbs(batch, 1f);
            Assert.True(want.AsSpan().SequenceEqual(got), $"round {round}: log-probs after the refill differ");
        }
    }
}
