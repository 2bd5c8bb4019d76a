// The master-worker blob layouts: round trips are exact, and truncated, bit-flipped or random
// blobs are refused with InvalidDataException (never an out-of-range read or a huge allocation).
using ReaLNative.Engine.Algorithms;
using ReaLNative.Engine.Generation;
using ReaLNative.Engine.Model;
using ReaLNative.Engine.Parallelism;
using ReaLNative.Engine.Workers;
using Xunit;

namespace ReaLNative.Engine.Tests.Workers;

public sealed class WireTests
{
    private static ScoredBatch Batch(Random rng)
    {
        int n = rng.Next(1, 6);
        var seqs = Enumerable.Range(0, n).Select(_ => Enumerable.Range(0, rng.Next(2, 12)).Select(_ => rng.Next(0, 50)).ToArray()).ToArray();
        var prompts = seqs.Select(s => rng.Next(1, s.Length + 1)).ToArray();
        return new ScoredBatch(seqs, prompts);
    }

    [Fact]
    public void BatchOutputAndGenerationRoundTripExactly()
    {
        var rng = new Random(7);
        for (int trial = 0; trial < 50; trial++)
        {
            var b = Batch(rng);
            var d = Enumerable.Range(0, b.Actions).Select(_ => rng.NextSingle() - 0.5f).ToArray();
            var r = new WireReader(new WireWriter().Batch(b).Floats(d).ToArray(), "test");
            var b2 = r.Batch();
            var d2 = r.Floats();
            r.End();
            Assert.Equal(b.Packed.Tokens.ToArray(), b2.Packed.Tokens.ToArray());
            Assert.Equal(b.ActionIndex, b2.ActionIndex);
            Assert.Equal(b.ActionCu, b2.ActionCu);
            Assert.Equal(d, d2);

            var o = new ShardOutput([2, 0], [1.5f, -2f, 3f], [0.25f, 7f]);
            var o2 = new WireReader(new WireWriter().Output(o).ToArray(), "test").Output();
            Assert.Equal(o.Ids, o2.Ids); Assert.Equal(o.Actions, o2.Actions); Assert.Equal(o.Last, o2.Last);

            int[][] prompts = [[1, 2], [3], [4, 5, 6]];
            var g = (new[] { 2, 0 }, new GenerationResult
            {
                Prompts = [prompts[2], prompts[0]], NewTokens = [[7, 8], [9]], LogProbs = [[-0.5f, -1f], [-2f]], EndedWithEos = [true, false], Masks = null,
            });
            var g2 = new WireReader(new WireWriter().Generation(g).ToArray(), "test").Generation(prompts, masks: false);
            Assert.Equal(g.Item1, g2.Ids);
            Assert.Equal(g.Item2.NewTokens, g2.Result.NewTokens);
            Assert.Equal(g.Item2.LogProbs, g2.Result.LogProbs);
            Assert.Equal(g.Item2.EndedWithEos, g2.Result.EndedWithEos);
        }
    }

    [Fact]
    public void TruncatedFlippedAndRandomBlobsAreRefusedCleanly()
    {
        var rng = new Random(11);
        int refused = 0;
        for (int trial = 0; trial < 2000; trial++)
        {
            var blob = new WireWriter().Batch(Batch(rng)).Floats([1f, 2f]).ToArray();
            blob = (trial % 3) switch
            {
                0 => blob[..rng.Next(blob.Length)],                                          // truncated
                1 => Flip(blob, rng),                                                         // one byte changed
                _ => Enumerable.Range(0, rng.Next(0, 64)).Select(_ => (byte)rng.Next(256)).ToArray(),  // junk
            };
            try
            {
                var r = new WireReader(blob, "fuzz");
                r.Batch(); r.Floats(); r.End();
            }
            catch (InvalidDataException e)
            {
                Assert.StartsWith("fuzz: ", e.Message);
                refused++;
            }
        }
        Assert.True(refused > 1300, $"only {refused} of 2000 damaged blobs refused");
    }

    /// <summary>A transport may read a send buffer long after the send was posted (UCX: when its
    /// progress thread starts the send, or when a busy lane frees up), and a garbage collection
    /// may run meanwhile: every buffer of a blob stays alive until its send completes. Here each
    /// send is held until a full collection has run and the pinned heap has been churned with
    /// other arrays, then delivered from its pointer. Was: the 8-byte size of the blob was dead
    /// once its send was posted, and a worker read a size of 0 ("generate: malformed data at byte
    /// 0 of 0").</summary>
    [Fact]
    public async Task ABlobsBuffersStayAliveUntilTheTransportHasReadThem()
    {
        var fabric = new ReaLNative.Engine.Transport.LocalFabric(2);
        var late = new LateTransport(fabric.Rank(0));
        var receiver = fabric.Rank(1);
        const int blobs = 64;
        var bodies = Enumerable.Range(0, blobs).Select(i => new WireWriter().Ints(Enumerable.Range(i, 3 + i % 5).ToArray()).ToArray()).ToArray();
        var sends = Enumerable.Range(0, blobs).Select(i => Blobs.SendAsync(late, 1, 1000 + 2 * i, bodies[i])).ToArray();
        late.Deliver();
        await Task.WhenAll(sends);
        for (int i = 0; i < blobs; i++)
            Assert.Equal(bodies[i], await Blobs.RecvAsync(receiver, 0, 1000 + 2 * i, $"blob {i}"));
    }

    /// <summary>Holds every send until <see cref="Deliver"/>, which first collects garbage and fills
    /// the pinned heap's free space with other arrays, then sends from the held pointers.</summary>
    private sealed class LateTransport(ReaLNative.Engine.Transport.ITransport inner) : ReaLNative.Engine.Transport.ITransport
    {
        private readonly List<(int Peer, long Tag, nint Data, long Bytes, TaskCompletionSource Done)> _held = [];
        public int Rank => inner.Rank;
        public int Size => inner.Size;
        public TimeSpan Timeout { get => inner.Timeout; set => inner.Timeout = value; }

        public Task SendAsync(int peer, long tag, nint data, long bytes, CancellationToken ct = default)
        {
            var done = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
            lock (_held) _held.Add((peer, tag, data, bytes, done));
            return done.Task;
        }

        public Task RecvAsync(int peer, long tag, nint data, long bytes, CancellationToken ct = default) => inner.RecvAsync(peer, tag, data, bytes, ct);
        public int? LocalProcessOf(int peer) => null;

        public void Deliver()
        {
            var churn = new List<byte[]>();
            for (int round = 0; round < 3; round++)
            {
                GC.Collect(GC.MaxGeneration, GCCollectionMode.Forced, blocking: true, compacting: true);
                GC.WaitForPendingFinalizers();
                for (int k = 0; k < 4096; k++)
                {
                    var a = GC.AllocateArray<byte>(8 + k % 3 * 8, pinned: true);
                    a.AsSpan().Fill(0xEE);
                    churn.Add(a);
                }
            }
            List<(int Peer, long Tag, nint Data, long Bytes, TaskCompletionSource Done)> held;
            lock (_held) { held = [.. _held]; _held.Clear(); }
            foreach (var (peer, tag, data, bytes, done) in held)
            {
                inner.SendAsync(peer, tag, data, bytes).GetAwaiter().GetResult();
                done.SetResult();
            }
            GC.KeepAlive(churn);
        }

        public void Dispose() { }
    }

    private static byte[] Flip(byte[] b, Random rng)
    {
        var c = (byte[])b.Clone();
        if (c.Length > 0) c[rng.Next(c.Length)] ^= (byte)(1 << rng.Next(8));
        return c;
    }
}
