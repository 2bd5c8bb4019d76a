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

    private static byte[] Flip(byte[] b, Random rng)
    {
        var c = (byte[])b.Clone();
        if (c.Length > 0) c[rng.Next(c.Length)] ^= (byte)(1 << rng.Next(8));
        return c;
    }
}
