// 3D parallelism against the single-device engine: for every (pp, dp, tp) with pp*dp*tp <= 4 on
// the tiny config, the ranks run as threads over the in-process transport; forward outputs, the
// loss, every gradient (shards reassembled into global tensors), the parameters after one AdamW
// step with global-norm clipping, and greedy and sampled generation must match a single
// LlamaModel on the same random parameters and batch.
using ReaLNative.Engine.Generation;
using ReaLNative.Engine.Layout;
using ReaLNative.Engine.Model;
using ReaLNative.Engine.Optim;
using ReaLNative.Engine.Parallelism;
using ReaLNative.Engine.Realloc;
using ReaLNative.Engine.Transport;
using ReaLNative.Interop;
using Xunit;

namespace ReaLNative.Engine.Tests.Parallelism;

public sealed unsafe class ParallelEquivalenceTests
{
    // GQA tiny (4 heads, 2 kv heads) where tp divides the kv heads; its MHA twin for tp = 4.
    private static LlamaConfig Config(int tp) =>
        tp <= 2 ? LlamaConfig.Preset("tiny") : LlamaConfig.Preset("tiny") with { KvHeads = 4 };

    public static TheoryData<int, int, int> Layouts()
    {
        var d = new TheoryData<int, int, int>();
        foreach (var (pp, dp, tp) in new[] { (1, 1, 1), (2, 1, 1), (1, 2, 1), (1, 1, 2), (4, 1, 1), (1, 4, 1), (1, 1, 4), (2, 2, 1), (2, 1, 2), (1, 2, 2) })
            d.Add(pp, dp, tp);
        return d;
    }

    private static int[][] Batch(int seed, int count, int vocab)
    {
        var rng = new Random(seed);
        return Enumerable.Range(0, count).Select(_ => Enumerable.Range(0, rng.Next(3, 13)).Select(_ => rng.Next(vocab)).ToArray()).ToArray();
    }

    /// <summary>Runs body on every rank of a layout of n devices, each on its own thread; fails (never hangs) after 120 s.</summary>
    internal static T[] OnRanks<T>(int n, Func<ITransport, T> body, ITransport[]? transports = null)
    {
        var fabric = new LocalFabric(n);
        var results = new T[n];
        var errors = new Exception?[n];
        var threads = Enumerable.Range(0, n).Select(r => new Thread(() =>
        {
            var t = transports?[r] ?? fabric.Rank(r);
            t.Timeout = TimeSpan.FromSeconds(30);
            try { results[r] = body(t); }
            catch (Exception e) { errors[r] = e; }
        })).ToArray();
        foreach (var th in threads) th.Start();
        foreach (var th in threads)
            Assert.True(th.Join(TimeSpan.FromSeconds(120)), "a rank did not finish within 120 s");
        foreach (var e in errors) if (e is not null) throw new Exception("a rank failed: " + e.Message, e);
        return results;
    }

    /// <summary>Mean next-token cross-entropy over the whole batch (the last token of each sequence has no label).</summary>
    private static OutputLoss CrossEntropy(int[][] seqs, int vocab)
    {
        long n = seqs.Sum(s => s.Length - 1);
        return (mb, o, d) =>
        {
            var b = mb.Packed;
            int T = b.TotalTokens;
            var labels = new int[T];
            for (int i = 0; i < b.Count; i++)
                for (int p = 0; p < b.SeqLens[i]; p++)
                    labels[b.CuSeqlens[i] + p] = p + 1 < b.SeqLens[i] ? b.Tokens[b.CuSeqlens[i] + p + 1] : -100;
            var loss = new float[T];
            var lse = new float[T];
            double mean;
            using var s = NativeStream.Cpu();
            fixed (int* pl = labels)
            fixed (float* plo = loss, ps = lse)
            {
                Native.Check(Native.realn_op_cross_entropy_fwd(s.Ptr, DType.F32, o, pl, T, vocab, -100, plo, ps, &mean));
                Native.Check(Native.realn_op_cross_entropy_bwd(s.Ptr, DType.F32, o, pl, T, vocab, -100, ps, 1f / n, d));
            }
            return loss.Sum(x => (double)x) / n;
        };
    }

    /// <summary>Squared error of values against per-token targets (seeded by sequence id), averaged over the batch.</summary>
    private static OutputLoss ValueLoss(int[][] seqs)
    {
        long n = seqs.Sum(s => s.Length);
        return (mb, o, d) =>
        {
            double sum = 0;
            int t = 0;
            foreach (var id in mb.Ids)
            {
                var rng = new Random(1000 + id);
                for (int p = 0; p < seqs[id].Length; p++, t++)
                {
                    double e = o[t] - (rng.NextDouble() * 2 - 1);
                    sum += 0.5 * e * e / n;
                    d[t] = (float)(e / n);
                }
            }
            return sum;
        };
    }

    /// <summary>The global tensors of a layout's shards (data replica 0), by name.</summary>
    private static Dictionary<string, float[]> Assemble(IEnumerable<(ShardLayout Layout, float[] Data)> shards)
    {
        var all = new Dictionary<string, float[]>();
        foreach (var (layout, data) in shards)
            foreach (var v in layout.Views)
            {
                long total = v.GlobalShape.Aggregate(1L, (a, b) => a * b);
                if (!all.TryGetValue(v.Name, out var g)) all[v.Name] = g = new float[total];
                var local = data.AsSpan((int)v.Offset, (int)v.LocalElements);
                if (v.SplitDim < 0) { local.CopyTo(g); continue; }
                long outer = 1, inner = 1;
                for (int k = 0; k < v.SplitDim; k++) outer *= v.GlobalShape[k];
                for (int k = v.SplitDim + 1; k < v.GlobalShape.Length; k++) inner *= v.GlobalShape[k];
                int run = (int)(v.SliceLength * inner);
                for (long o = 0; o < outer; o++)
                    local.Slice((int)(o * run), run).CopyTo(g.AsSpan((int)((o * v.GlobalShape[v.SplitDim] + v.SliceStart) * inner), run));
            }
        return all;
    }

    private static Dictionary<string, float[]> ByName(LlamaModel m, ReadOnlySpan<float> flat)
    {
        var r = new Dictionary<string, float[]>();
        foreach (var v in m.Layout.Views) r[v.Name] = flat.Slice((int)v.Offset, (int)v.LocalElements).ToArray();
        return r;
    }

    private static void AssertClose(Dictionary<string, float[]> want, Dictionary<string, float[]> got, double rel, string what)
    {
        Assert.Equal(want.Keys.Order(), got.Keys.Order());
        foreach (var (name, w) in want)
        {
            var g = got[name];
            double scale = Math.Max(1e-12, w.Max(x => Math.Abs(x)));
            double err = w.Zip(g, (a, b) => Math.Abs(a - b)).Max();
            Assert.True(err <= rel * scale, $"{what} of {name}: max |diff| {err:E3} > {rel:E1} x max |ref| {scale:E3}");
        }
    }

    private sealed record Outcome(ShardLayout Layout, int Data, double Loss, float[] Grads, float[] Params, double Norm, Dictionary<int, float[]> Outputs);

    private static AdamW Optimizer(LlamaModel m) => new(m, new LrSchedule(1e-3), eps: 1e-6f, weightDecay: 0.01f, clipGradNorm: 0.05f);

    private static Outcome RunLayout(LlamaConfig cfg, bool scalar, int[][] seqs, int pp, int dp, int tp, int microBatches, ITransport? t)
    {
        var layout = ParallelLayout.Contiguous(0, pp, dp, tp);
        using var comm = t is null ? null : new ShardComm(t, layout);
        using var m = new LlamaModel(cfg, scalar, comm);
        m.InitRandom(7);
        RandomBiases(m);
        var runner = new ShardRunner(m);
        var outputs = new Dictionary<int, float[]>();
        int W = m.OutputWidth;
        runner.Infer(seqs, microBatches, (mb, o) =>
        {
            for (int k = 0, at = 0; k < mb.Ids.Length; at += mb.Packed.SeqLens[k], k++)
                outputs[mb.Ids[k]] = new ReadOnlySpan<float>(o + (long)at * W, mb.Packed.SeqLens[k] * W).ToArray();
        });
        double loss = runner.TrainStep(seqs, microBatches, scalar ? ValueLoss(seqs) : CrossEntropy(seqs, cfg.Vocab));
        var grads = m.Gradients.ToArray();
        using var opt = Optimizer(m);
        double norm = opt.StepOnce();
        return new Outcome(m.Layout, comm?.Data ?? 0, loss, grads, m.Parameters.ToArray(), norm, outputs);
    }

    /// <summary>Seeded random values (by name, global tensor, this shard's slice) for the q/k/v biases
    /// that InitRandom leaves 0, so the forward exercises their sharding.</summary>
    private static void RandomBiases(LlamaModel m)
    {
        foreach (var v in m.Layout.Views.Where(v => v.Name.EndsWith(".bias", StringComparison.Ordinal)))
        {
            var rng = new Random(v.Name.Sum(ch => ch) * 31 + v.Name.Length);
            var global = Enumerable.Range(0, (int)v.GlobalShape[0]).Select(_ => (float)(rng.NextDouble() - 0.5)).ToArray();
            LlamaModel.CopySlice(v, global, m.Parameters.Slice((int)v.Offset, (int)v.LocalElements));
        }
    }

    /// <summary>The tiny config of the families: LLaMA 3.1's rope scaling (head dim 16: pairs kept,
    /// blended and divided), Qwen2's q/k/v biases (untied here, so pipeline layouts apply).</summary>
    private static LlamaConfig FamilyConfig(string family, int tp) => family switch
    {
        "llama3.1" => Config(tp) with { RopeScaling = new Llama3RopeScaling(8, 1, 8, 256) },
        "qwen2" => Config(tp) with { QkvBias = true, ModelType = "qwen2" },
        _ => throw new ArgumentException(family),
    };

    [Theory]
    [InlineData("qwen2", 1, 1, 2)]
    [InlineData("qwen2", 2, 1, 2)]
    [InlineData("qwen2", 1, 1, 4)]
    [InlineData("llama3.1", 2, 1, 2)]
    public void FamiliesTrainStepMatchesSingleDevice(string family, int pp, int dp, int tp) => TrainStepMatches(FamilyConfig(family, tp), pp, dp, tp);

    [Theory]
    [MemberData(nameof(Layouts))]
    public void TrainStepMatchesSingleDevice(int pp, int dp, int tp) => TrainStepMatches(Config(tp), pp, dp, tp);

    private static void TrainStepMatches(LlamaConfig cfg, int pp, int dp, int tp)
    {
        foreach (bool scalar in new[] { false, true })
        {
            var seqs = Batch(11, 8, cfg.Vocab);
            var single = RunLayout(cfg, scalar, seqs, 1, 1, 1, 1, null);
            int micro = pp > 1 ? 2 * pp : 2;  // the planner's default for training: 2 pp micro-batches
            var ranks = OnRanks(pp * dp * tp, t => RunLayout(cfg, scalar, seqs, pp, dp, tp, micro, t));
            string tag = $"pp{pp} dp{dp} tp{tp} {(scalar ? "value head" : "lm head")}";

            // The loss shares of the last stage of each replica (tensor ranks compute the same share).
            var layout = ParallelLayout.Contiguous(0, pp, dp, tp);
            double loss = Enumerable.Range(0, ranks.Length).Where(r => layout.Coords(r).Pipe == pp - 1 && layout.Coords(r).Model == 0).Sum(r => ranks[r].Loss);
            Assert.True(Math.Abs(loss - single.Loss) <= 1e-5 * Math.Abs(single.Loss), $"{tag}: loss {loss} vs {single.Loss}");
            foreach (var r in ranks) Assert.True(Math.Abs(r.Norm - single.Norm) <= 1e-4 * single.Norm, $"{tag}: grad norm {r.Norm} vs {single.Norm}");

            var outputs = ranks.Where((_, r) => layout.Coords(r).Model == 0).SelectMany(r => r.Outputs).ToDictionary(kv => kv.Key, kv => kv.Value);
            Assert.Equal(seqs.Length, outputs.Count);
            foreach (var (id, o) in single.Outputs)
            {
                double scale = o.Max(x => Math.Abs(x)), err = o.Zip(outputs[id], (a, b) => Math.Abs(a - b)).Max();
                Assert.True(err <= 2e-5 * scale, $"{tag}: forward output of sequence {id} differs by {err:E3} (max {scale:E3})");
            }

            using var m1 = new LlamaModel(cfg, scalar);
            var wantGrad = ByName(m1, single.Grads);
            var wantParams = ByName(m1, single.Params);
            for (int d = 0; d < dp; d++)
            {
                var replica = ranks.Where(r => r.Data == d).ToArray();
                AssertClose(wantGrad, Assemble(replica.Select(r => (r.Layout, r.Grads))), 1e-4, $"{tag} replica {d}: gradient");
                AssertClose(wantParams, Assemble(replica.Select(r => (r.Layout, r.Params))), 1e-5, $"{tag} replica {d}: parameter after AdamW");
            }
        }
    }

    /// <summary>-sum of w * logp over the labelled rows / their count, w in [-1, 1) seeded by (sequence id, position).</summary>
    private static TokenLoss WeightedLogProbs(int[][] seqs)
    {
        long n = seqs.Sum(s => s.Length - 1);
        return (mb, logp, d) =>
        {
            double sum = 0;
            for (int k = 0, at = 0; k < mb.Ids.Length; at += mb.Packed.SeqLens[k], k++)
            {
                var rng = new Random(500 + mb.Ids[k]);
                for (int p = 0; p + 1 < mb.Packed.SeqLens[k]; p++)
                {
                    double w = rng.NextDouble() * 2 - 1;
                    sum -= w * logp[at + p] / n;
                    d[at + p] = (float)(-w / n);
                }
            }
            return sum;
        };
    }

    private static (float[] Params, Dictionary<int, float[]> LogProbs, ShardLayout Layout, int Data) RunLogProbs(LlamaConfig cfg, int[][] seqs, int pp, int dp, int tp, ITransport? t)
    {
        var layout = ParallelLayout.Contiguous(0, pp, dp, tp);
        using var comm = t is null ? null : new ShardComm(t, layout);
        using var m = new LlamaModel(cfg, false, comm);
        m.InitRandom(13);
        var runner = new ShardRunner(m);
        var lps = new Dictionary<int, float[]>();
        runner.InferLogProbs(seqs, Math.Max(1, pp), 0.7f, (mb, lp) =>
        {
            for (int k = 0, at = 0; k < mb.Ids.Length; at += mb.Packed.SeqLens[k], k++)
                lps[mb.Ids[k]] = lp.Slice(at, mb.Packed.SeqLens[k] - 1).ToArray();
        });
        runner.TrainLogProbs(seqs, 2 * pp, 0.7f, WeightedLogProbs(seqs));
        using var opt = Optimizer(m);
        opt.StepOnce();
        return (m.Parameters.ToArray(), lps, m.Layout, comm?.Data ?? 0);
    }

    [Theory]
    [MemberData(nameof(Layouts))]
    public void VocabParallelLogProbTrainingMatchesSingleDevice(int pp, int dp, int tp)
    {
        var cfg = Config(tp);
        var seqs = Batch(17, 8, cfg.Vocab);
        var single = RunLogProbs(cfg, seqs, 1, 1, 1, null);
        var ranks = OnRanks(pp * dp * tp, t => RunLogProbs(cfg, seqs, pp, dp, tp, t));
        var layout = ParallelLayout.Contiguous(0, pp, dp, tp);
        string tag = $"pp{pp} dp{dp} tp{tp}";
        for (int r = 0; r < ranks.Length; r++)
        {
            if (layout.Coords(r).Pipe != pp - 1) { Assert.Empty(ranks[r].LogProbs); continue; }
            foreach (var (id, lp) in ranks[r].LogProbs)
                for (int j = 0; j < lp.Length; j++)
                    Assert.True(Math.Abs(lp[j] - single.LogProbs[id][j]) < 2e-5, $"{tag} rank {r}: logp {j} of sequence {id}: {lp[j]} vs {single.LogProbs[id][j]}");
        }
        Assert.Equal(seqs.Length, ranks.Where((_, r) => layout.Coords(r).Model == 0).Sum(x => x.LogProbs.Count));
        using var m1 = new LlamaModel(cfg, false);
        for (int d = 0; d < dp; d++)
            AssertClose(ByName(m1, single.Params), Assemble(ranks.Where(x => x.Data == d).Select(x => (x.Layout, x.Params))), 1e-5,
                $"{tag} replica {d}: parameter after a log-prob loss step");
    }

    [Theory]
    [MemberData(nameof(Layouts))]
    public void GenerationMatchesSingleDevice(int pp, int dp, int tp)
    {
        var cfg = Config(tp);
        var prompts = Batch(23, 6, cfg.Vocab).Select(s => s[..Math.Min(s.Length, 5)]).ToArray();
        foreach (var opt in new[]
        {
            new GenerationOptions { MaxNewTokens = 7, Temperature = 0 },
            new GenerationOptions { MaxNewTokens = 7, Temperature = 1f, TopK = 8, Seed = 5, EosToken = 3 },
        })
        {
            using var single = new LlamaModel(cfg, false);
            single.InitRandom(7);
            var want = Generator.Generate(single, prompts, opt);
            var parts = OnRanks(pp * dp * tp, t =>
            {
                var layout = ParallelLayout.Contiguous(0, pp, dp, tp);
                using var comm = new ShardComm(t, layout);
                using var m = new LlamaModel(cfg, false, comm);
                m.InitRandom(7);
                return new ShardRunner(m).Generate(prompts, opt, Math.Max(1, pp));
            });
            var layout = ParallelLayout.Contiguous(0, pp, dp, tp);
            for (int r = 0; r < parts.Length; r++)
                Assert.Equal(layout.Coords(r).Pipe == pp - 1, parts[r] is not null);
            var seen = new HashSet<int>();
            for (int r = 0; r < parts.Length; r++)
            {
                if (parts[r] is not { } p || layout.Coords(r).Model != 0) continue;
                for (int k = 0; k < p.Ids.Length; k++)
                {
                    int i = p.Ids[k];
                    seen.Add(i);
                    string tag = $"pp{pp} dp{dp} tp{tp} T={opt.Temperature}: sequence {i}";
                    Assert.True(want.NewTokens[i].SequenceEqual(p.Result.NewTokens[k]),
                        $"{tag}: tokens [{string.Join(",", p.Result.NewTokens[k])}] vs [{string.Join(",", want.NewTokens[i])}]");
                    Assert.Equal(want.EndedWithEos[i], p.Result.EndedWithEos[k]);
                    for (int j = 0; j < want.LogProbs[i].Length; j++)
                        Assert.True(Math.Abs(want.LogProbs[i][j] - p.Result.LogProbs[k][j]) < 1e-4, $"{tag}: logp {j}");
                }
            }
            Assert.Equal(prompts.Length, seen.Count);
        }
    }

    [Fact]
    public void TrainStepOverUcxMatchesSingleDevice()
    {
        // The same schedule over the real data plane: UCX between 4 in-process workers (pp 2, tp 2).
        var cfg = Config(2);
        var seqs = Batch(31, 6, cfg.Vocab);
        var single = RunLayout(cfg, false, seqs, 1, 1, 1, 1, null);
        var ucx = Enumerable.Range(0, 4).Select(r => new UcxTransport(r, 4)).ToArray();
        try
        {
            var addrs = ucx.Select(t => t.LocalAddress).ToArray();
            foreach (var t in ucx) t.Connect(addrs);
            var ranks = OnRanks(4, t => RunLayout(cfg, false, seqs, 2, 1, 2, 3, t), ucx);
            using var m1 = new LlamaModel(cfg, false);
            AssertClose(ByName(m1, single.Params), Assemble(ranks.Select(r => (r.Layout, r.Params))), 1e-5, "pp2 tp2 over UCX: parameter after AdamW");
        }
        finally
        {
            foreach (var t in ucx) t.Dispose();
        }
    }

    [Fact]
    public void SamplingDoesNotDependOnBatchComposition()
    {
        var cfg = Config(1);
        using var m = new LlamaModel(cfg, false);
        m.InitRandom(3);
        var prompts = Batch(5, 5, cfg.Vocab);
        var opt = new GenerationOptions { MaxNewTokens = 6, Temperature = 1f, Seed = 9 };
        var all = Generator.Generate(m, prompts, opt);
        var ids = new[] { 1, 3, 4 };
        var sub = Generator.GenerateShard(m, ids.Select(i => prompts[i]).ToArray(), ids, opt, 2)!;
        for (int k = 0; k < ids.Length; k++) Assert.Equal(all.NewTokens[ids[k]], sub.NewTokens[k]);
    }

    [Fact]
    public void BalancedSplitIsContiguousAndNonEmpty()
    {
        var g = Split.Contiguous([5, 5, 5, 5, 20], 2);
        Assert.Equal([[0, 1, 2, 3], [4]], g);
        var h = Split.Contiguous([1, 1, 1], 3);
        Assert.All(h, x => Assert.Single(x));
        Assert.Contains("cannot be split", Assert.Throws<ArgumentException>(() => Split.Contiguous([1, 2], 3)).Message);
    }

    [Fact]
    public void LayoutThatDoesNotDivideIsRefusedNamingTheDimension()
    {
        var e = Assert.Throws<Exception>(() => OnRanks(4, t =>
        {
            using var comm = new ShardComm(t, ParallelLayout.Contiguous(0, 1, 1, 4));
            using var m = new LlamaModel(LlamaConfig.Preset("tiny"), false, comm);  // 2 kv heads
            return 0;
        }));
        Assert.Contains("kv heads", e.InnerException!.Message);
    }
}
