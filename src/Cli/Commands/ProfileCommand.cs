// `realn profile [--model PRESET ...] [--out PROFILE.json]`: measures, on this machine's backend,
// the wall time of ONE transformer block (forward and backward at several packed token counts,
// and one decode step at several batch sizes) plus GEMM and memcpy throughput, and writes the
// calibration profile the planner's estimator uses instead of its roofline (src/Planner/Profile.cs
// documents the format). A block is timed as the difference between a 2-block and a 1-block model
// with a tiny vocabulary, so embedding and head costs cancel.
using System.CommandLine;
using System.Diagnostics;
using ReaLNative.Engine.Generation;
using ReaLNative.Engine.Model;
using ReaLNative.Interop;
using ReaLNative.Planner;

namespace ReaLNative.Cli.Commands;

public static class ProfileCommand
{
    public static Command Create()
    {
        var models = new Option<string[]>("--model") { Description = "Model presets to profile (repeatable)", DefaultValueFactory = _ => ["tiny"], AllowMultipleArgumentsPerToken = true };
        var output = new Option<string>("--out") { Description = "Profile JSON to write", DefaultValueFactory = _ => "profile.json" };
        var cmd = new Command("profile", "Measure block costs on this machine and write a planner calibration profile");
        cmd.Options.Add(models);
        cmd.Options.Add(output);
        cmd.SetAction(p => Run(p.GetValue(models)!, p.GetValue(output)!));
        return cmd;
    }

    private static double Best(Action a, int reps = 5)
    {
        a();
        double best = double.MaxValue;
        for (int i = 0; i < reps; i++)
        {
            long t0 = Stopwatch.GetTimestamp();
            a();
            best = Math.Min(best, Stopwatch.GetElapsedTime(t0).TotalSeconds);
        }
        return best;
    }

    private static unsafe double TrainSeconds(LlamaModel m, PackedBatch b, bool backward)
    {
        return Best(() =>
        {
            m.ZeroGrad();
            float* o = m.Forward(b);
            if (!backward) return;
            float* g = m.OutputGradientBuffer();
            new Span<float>(g, b.TotalTokens * m.OutputWidth).Fill(1e-3f);
            m.Backward(g);
        });
    }

    private static int Run(string[] presets, string output)
    {
        var layers = new List<LayerProfile>();
        foreach (var name in presets)
        {
            LlamaConfig cfg;
            try { cfg = LlamaConfig.Preset(name); }
            catch (ArgumentException e) { throw new UsageException(e.Message); }
            var small = cfg with { Vocab = 64, Layers = 1, MaxPositions = 4096 };
            using var one = new LlamaModel(small, false);
            using var two = new LlamaModel(small with { Layers = 2 }, false);
            one.InitRandom(1);
            two.InitRandom(1);
            var points = new List<LayerPoint>();
            var rng = new Random(3);
            foreach (int tokens in new[] { 64, 256, 1024 })
            {
                int seqLen = Math.Min(tokens, 256);
                var lens = Enumerable.Repeat(seqLen, tokens / seqLen).ToArray();
                var batch = new PackedBatch(Enumerable.Range(0, tokens).Select(_ => rng.Next(64)).ToArray(), lens);
                double f1 = TrainSeconds(one, batch, false), f2 = TrainSeconds(two, batch, false);
                double t1 = TrainSeconds(one, batch, true), t2 = TrainSeconds(two, batch, true);
                double fwd = Math.Max(f2 - f1, 1e-7), both = Math.Max(t2 - t1, 2e-7);
                points.Add(new LayerPoint { Kind = "fwd", Tokens = tokens, Seconds = fwd });
                points.Add(new LayerPoint { Kind = "bwd", Tokens = tokens, Seconds = Math.Max(both - fwd, 1e-7) });
                Console.WriteLine($"{name} block: {tokens} tokens fwd {fwd * 1e3:F3} ms, bwd {(both - fwd) * 1e3:F3} ms");
            }
            const int context = 32;
            foreach (int batchSize in new[] { 8, 32 })
            {
                var prompts = Enumerable.Range(0, batchSize).Select(_ => Enumerable.Range(0, context).Select(_ => rng.Next(64)).ToArray()).ToArray();
                double Steps(LlamaModel m, int n) => Best(() => Generator.Generate(m, prompts, new GenerationOptions { MaxNewTokens = n, Temperature = 0 }), 3);
                double d1 = (Steps(one, 17) - Steps(one, 1)) / 16, d2 = (Steps(two, 17) - Steps(two, 1)) / 16;
                double step = Math.Max(d2 - d1, 1e-7);
                points.Add(new LayerPoint { Kind = "decode", Tokens = batchSize, Context = context, Seconds = step });
                Console.WriteLine($"{name} block: decode step of {batchSize} sequences at context {context}: {step * 1e3:F3} ms");
            }
            layers.Add(new LayerProfile { Hidden = cfg.Hidden, Intermediate = cfg.Intermediate, Heads = cfg.Heads, KvHeads = cfg.KvHeads, Points = points });
        }
        double gemm = BenchTrainCommand.SgemmGflops(4);
        double memcpy = MemcpyGbps();
        var profile = new ProfileData
        {
            Backend = "cpu",
            Device = $"{Environment.ProcessorCount} cores, {Native.GetNumThreads()} threads",
            GemmGflops = Math.Round(gemm, 2),
            MemcpyGbps = Math.Round(memcpy, 2),
            Layers = layers,
        };
        profile.Validate();
        File.WriteAllText(output, profile.ToJson());
        Console.WriteLine($"GEMM {gemm:F1} GFLOP/s, memcpy {memcpy:F1} GB/s; wrote {output}");
        return 0;
    }

    private static unsafe double MemcpyGbps()
    {
        const long n = 256L << 20;
        using var a = new HostBlock(n);
        using var b = new HostBlock(n);
        double s = Best(() => Buffer.MemoryCopy(a.Pointer, b.Pointer, n, n), 3);
        return n / s / 1e9;
    }
}
