// The master's plan for moving a generation's sequences worker to worker (Workers/ResidentBatches.cs):
// each rank of a call's layout gets exactly the sequences of its data-parallel part that it lacks,
// read from the worker that generated it at the right offset; batches it does not hold go
// inline; the oldest batch is forgotten (its workers told), never while a call reads it.
using ReaLNative.Engine.Generation;
using ReaLNative.Engine.Layout;
using ReaLNative.Engine.Model;
using ReaLNative.Engine.Workers;
using Xunit;

namespace ReaLNative.Engine.Tests.Workers;

public sealed class ResidentBatchesTests
{
    /// <summary>Six sequences of varied lengths (prompt 2): ids 0-2 generated on worker 0, 3-5 on worker 2.</summary>
    private static (ResidentBatches Store, string Key, int[][] Seqs) Generated()
    {
        var store = new ResidentBatches();
        string key = store.NewKey();
        var rng = new Random(7);
        var seqs = Enumerable.Range(0, 6).Select(i => Enumerable.Range(0, 3 + i % 4).Select(_ => rng.Next(1, 50)).ToArray()).ToArray();
        store.Hold(key, 0, "d0", [0, 1, 2], [.. seqs[..3].Select(s => s.Length)]);
        store.Hold(key, 2, "d2", [3, 4, 5], [.. seqs[3..].Select(s => s.Length)]);
        return (store, key, seqs);
    }

    private static ScoredBatch Batch(ResidentBatches store, string key, int[][] seqs, int[] ids) =>
        new(ids.Select(i => seqs[i]).ToArray(), ids.Select(_ => 2).ToArray()) { Source = new BatchSource(store, key, ids) };

    [Fact]
    public void EveryRankGetsTheSequencesOfItsDataPartThatItLacksAtTheirOffsets()
    {
        var (store, key, seqs) = Generated();
        var batch = Batch(store, key, seqs, [0, 1, 2, 3, 4, 5]);
        // dp 2 x tp 2 over devices 0-3: ranks (data, model) = (0,0) (0,1) (1,0) (1,1); devices 0 and 2 hold halves.
        var layout = ParallelLayout.Contiguous(0, 1, 2, 2);
        var (reference, fetches) = store.Plan(batch, layout)!.Value;
        var parts = Split.Contiguous(seqs.Select(s => s.Length).ToArray(), 2);
        for (int r = 0; r < 4; r++)
        {
            int dev = layout.Devices[r];
            var want = parts[layout.Coords(r).Data].Where(i => !(dev == 0 && i < 3 || dev == 2 && i >= 3)).Order().ToArray();
            var got = fetches.Where(f => f.Dst == dev).SelectMany(f => f.Ids).Order().ToArray();
            Assert.Equal(want, got);
        }
        foreach (var f in fetches)
        {
            Assert.Equal(f.Src == 0 ? "d0" : "d2", f.Descriptor);
            int first = f.Src == 0 ? 0 : 3;
            for (int k = 0; k < f.Ids.Length; k++)
            {
                Assert.True(f.Ids[k] - first is >= 0 and < 3, $"sequence {f.Ids[k]} read from worker {f.Src}, which does not hold it");
                Assert.Equal(seqs[first..f.Ids[k]].Sum(s => s.Length), f.Offsets[k]);
                Assert.Equal(seqs[f.Ids[k]].Length, f.Lengths[k]);
            }
        }
        Assert.Equal(key, (string)reference["key"]!);
        Assert.Equal(seqs.Select(s => s.Length), reference["lens"]!.AsArray().Select(x => x!.GetValue<int>()));
        Assert.All(reference["prompts"]!.AsArray(), p => Assert.Equal(2, p!.GetValue<int>()));
        store.Done(key, fetches, succeeded: true);
        Assert.Equal(fetches.Sum(f => f.Bytes), store.BytesBetweenWorkers);
        // Read once: the same call again needs nothing.
        var again = store.Plan(batch, layout)!.Value;
        Assert.Empty(again.Fetches);
        store.Done(key, again.Fetches, succeeded: true);
    }

    /// <summary>A composite batch (the rm stage's pairs): held sequence 4 twice, once whole and once its
    /// prompt followed by a tail. Its reference carries the tail at its position, the reads fetch
    /// sequence 4 once, a slice keeps the tails aligned, and a tail whose length disagrees with the
    /// batch is refused naming the sequence.</summary>
    [Fact]
    public void ACompositeBatchCarriesItsTailsAndReadsEachHeldSequenceOnce()
    {
        var (store, key, seqs) = Generated();
        int[] tail = [7, 8, 9, 2];
        int[][] rows = [seqs[1], seqs[4], [.. seqs[4][..2], .. tail]];
        var batch = new ScoredBatch(rows, [2, 2, 2]) { Source = new BatchSource(store, key, [1, 4, 4]) { Tails = [null, null, tail] } };
        Assert.True(batch.Source.Composite);
        Assert.False(new BatchSource(store, key, [1, 4]).Composite);
        var (reference, fetches) = store.Plan(batch, ParallelLayout.Contiguous(1, 1, 1, 1))!.Value;
        var tails = reference["tails"]!.AsArray();
        Assert.Single(tails);
        Assert.Equal(2, (int)tails[0]!["at"]!);
        Assert.Equal(tail, tails[0]!["tokens"]!.AsArray().Select(x => x!.GetValue<int>()));
        Assert.Equal([1, 4], fetches.SelectMany(f => f.Ids).Order());
        store.Done(key, fetches, succeeded: true);
        Assert.Equal([null, tail], batch.Source.Slice(1, 3).Tails!);
        var wrong = new ScoredBatch(rows, [2, 2, 2]) { Source = new BatchSource(store, key, [1, 4, 4]) { Tails = [null, null, [7, 8]] } };
        var e = Assert.Throws<ArgumentException>(() => store.Plan(wrong, ParallelLayout.Contiguous(1, 1, 1, 1)));
        Assert.Contains("sequence 2: a tail of 2 tokens", e.Message);
    }

    [Fact]
    public void AReadCopyServesItsReaderButOnlyTheGeneratorServesOthersAndASliceKeepsItsIds()
    {
        var (store, key, seqs) = Generated();
        var everything = ParallelLayout.Contiguous(1, 1, 1, 1);   // device 1 needs all six
        var first = store.Plan(Batch(store, key, seqs, [0, 1, 2, 3, 4, 5]), everything)!.Value;
        Assert.Equal([0, 2], first.Fetches.Select(f => f.Src).Order());
        store.Done(key, first.Fetches, succeeded: true);
        Assert.Empty(store.Plan(Batch(store, key, seqs, [4, 5]), everything)!.Value.Fetches);
        store.Done(key, [], succeeded: true);
        // Device 3 reads ids 0-2 from worker 0, which registered them (device 1's copy is not registered).
        var slice = Batch(store, key, seqs, [0, 1, 2]);
        var (reference, fetches) = store.Plan(slice, ParallelLayout.Contiguous(3, 1, 1, 1))!.Value;
        Assert.Equal([0, 1, 2], reference["ids"]!.AsArray().Select(x => x!.GetValue<int>()));
        Assert.Equal([0, 1, 2], fetches.SelectMany(f => f.Ids).Order());
        Assert.All(fetches, f => Assert.Equal(0, f.Src));
        store.Done(key, fetches, succeeded: false);
        // A failed call records nothing: device 3 still lacks them.
        var retry = store.Plan(slice, ParallelLayout.Contiguous(3, 1, 1, 1))!.Value;
        Assert.Equal([0, 1, 2], retry.Fetches.SelectMany(f => f.Ids).Order());
        store.Done(key, retry.Fetches, succeeded: true);
    }

    [Fact]
    public void BatchesTheWorkersDoNotHoldGoInline()
    {
        var (store, key, seqs) = Generated();
        var layout = ParallelLayout.Contiguous(0, 1, 1, 1);
        Assert.Null(store.Plan(new ScoredBatch(seqs, seqs.Select(_ => 2).ToArray()), layout));                          // no source
        Assert.Null(store.Plan(Batch(new ResidentBatches(), key, seqs, [0, 1]), layout));                               // another pool's
        Assert.Null(store.Plan(Batch(store, "b99", seqs, [0, 1]), layout));                                            // unknown batch
        var longer = seqs.Select(s => s.Append(9).ToArray()).ToArray();
        Assert.Null(store.Plan(Batch(store, key, longer, [0, 1]), layout));                                            // not what was generated
    }

    [Fact]
    public void TheOldestBatchIsForgottenAndItsWorkersToldButNotWhileACallReadsIt()
    {
        var (store, key, seqs) = Generated();
        var reading = store.Plan(Batch(store, key, seqs, [0, 1, 2, 3, 4, 5]), ParallelLayout.Contiguous(1, 1, 1, 1))!.Value;
        for (int i = 0; i < ResidentBatches.Capacity; i++) store.NewKey();
        Assert.Null(store.TakeForgotten([0, 1, 2]));          // pinned by the call in flight
        store.Done(key, reading.Fetches, succeeded: true);
        store.NewKey();
        Assert.Equal([key], store.TakeForgotten([0])!.Select(k => (string)k!));
        Assert.Equal([key], store.TakeForgotten([1, 2])!.Select(k => (string)k!));   // the reader's copy too
        Assert.Null(store.TakeForgotten([0, 1, 2]));          // told once
        Assert.Null(store.Plan(Batch(store, key, seqs, [0]), ParallelLayout.Contiguous(3, 1, 1, 1)));
        // A holder that reports a batch forgotten meanwhile is told to drop it.
        store.Hold(key, 3, "d3", [0], [seqs[0].Length]);
        Assert.Equal([key], store.TakeForgotten([3])!.Select(k => (string)k!));
    }

    /// <summary>An output left with the workers that the master may still read (HoldOutput, one
    /// per output) keeps its batch however many newer ones come; once every such output is fetched or
    /// released the batch goes at the next new batch, its workers told.</summary>
    [Fact]
    public void ABatchWhoseOutputsTheMasterMayStillReadIsNotForgotten()
    {
        var (store, key, _) = Generated();
        Assert.True(store.HoldOutput(key));
        Assert.True(store.HoldOutput(key));
        for (int i = 0; i < 2 * ResidentBatches.Capacity; i++) store.NewKey();
        Assert.True(store.Tracked(key));
        Assert.Null(store.TakeForgotten([0, 2]));
        store.UnholdOutput(key);
        store.NewKey();
        Assert.True(store.Tracked(key));                      // one output still unread
        store.UnholdOutput(key);
        store.NewKey();
        Assert.False(store.Tracked(key));
        Assert.Equal([key], store.TakeForgotten([0, 2])!.Select(k => (string)k!));
        Assert.False(store.HoldOutput(key));                  // gone: nothing more is left with the workers
    }
}
