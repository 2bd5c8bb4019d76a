// `dotnet run -c Release --project bench/LlamaCppOracle -- check|bench|kernels [options]`: realn's generation
// against llama.cpp F32 on the same model in the same process. `check` converts a small GQA model
// to GGUF and compares logits at every position (the converter's correctness test); `bench` runs
// greedy prefill + decode for batch 1, 4 and 64 on the gpt2-small preset, interleaving realn and
// llama.cpp, measures the memory read bandwidth, and prints tokens/s and ratios; `kernels` times one
// decode step's linears through realn's small-M kernel against OpenBLAS SGEMM.
using System.Diagnostics;
using System.Runtime.Intrinsics;
using ReaLNative.Engine.Checkpoints;
using ReaLNative.Engine.Generation;
using ReaLNative.Engine.Model;
using ReaLNative.Interop;

namespace ReaLNative.LlamaCppOracle;

public static class Program
{
    public static int Main(string[] args)
    {
        string mode = args.Length > 0 ? args[0] : "bench";
        string Opt(string name, string def)
        {
            int i = Array.IndexOf(args, name);
            return i >= 0 && i + 1 < args.Length ? args[i + 1] : def;
        }
        try
        {
            return mode switch
            {
                "check" => Check(Opt("--model", "check-gqa")) ? 0 : 1,
                "kernels" => Kernels(Opt("--model", "gpt2-small"), Opt("--batches", "1,4,64").Split(',').Select(int.Parse).ToArray()),
                "bench" => Bench(Opt("--model", "gpt2-small"), Opt("--batches", "1,4,64").Split(',').Select(int.Parse).ToArray(),
                    int.Parse(Opt("--prompt-len", "32")), int.Parse(Opt("--new-tokens", "32")), int.Parse(Opt("--reps", "2"))),
                _ => throw new ArgumentException($"unknown mode '{mode}' (check | bench)"),
            };
        }
        catch (Exception e) when (e is ArgumentException or InvalidOperationException)
        {
            Console.Error.WriteLine($"llamacpp-oracle: {e.Message}");
            return 2;
        }
    }

    /// <summary>The cross-check model: GQA (4 query, 2 kv heads), vocab above the synthetic GGUF vocabulary's 259 fixed tokens.</summary>
    internal static LlamaConfig CheckConfig => new() { Layers = 2, Hidden = 64, Intermediate = 176, Heads = 4, KvHeads = 2, Vocab = 512, MaxPositions = 128 };

    internal static LlamaConfig ConfigOf(string name) => name == "check-gqa" ? CheckConfig : LlamaConfig.Preset(name);

    /// <summary>Result of comparing realn's logits with llama.cpp's on the same tokens.</summary>
    internal sealed record LogitsComparison(int Positions, double MaxAbsDiff, double RelL2, int ArgmaxAgree);

    /// <summary>Exports <paramref name="model"/> to GGUF and compares all-position logits of <paramref name="tokens"/>.</summary>
    internal static unsafe LogitsComparison CompareLogits(LlamaModel model, int[] tokens, int threads, bool permuteRope = true)
    {
        string path = Path.Combine(Path.GetTempPath(), $"realn-check-{Environment.ProcessId}-{Guid.NewGuid():N}.gguf");
        try
        {
            GgufWriter.Write(model, path, permuteRope);
            using var cpp = new LlamaCpp(path, threads, 1, tokens.Length + 1, tokens.Length);
            int V = model.Config.Vocab;
            if (cpp.Vocab != V) throw new InvalidOperationException($"llama.cpp sees a vocabulary of {cpp.Vocab}, the model has {V}");
            var theirs = cpp.AllLogits(tokens);
            float* ours = model.Forward(PackedBatch.FromSequences([tokens]));
            double maxAbs = 0, num = 0, den = 0;
            int agree = 0;
            for (int t = 0; t < tokens.Length; t++)
            {
                int am = 0, bm = 0;
                for (int j = 0; j < V; j++)
                {
                    double a = ours[(long)t * V + j], b = theirs[(long)t * V + j];
                    maxAbs = Math.Max(maxAbs, Math.Abs(a - b));
                    num += (a - b) * (a - b);
                    den += b * b;
                    if (a > ours[(long)t * V + am]) am = j;
                    if (b > theirs[(long)t * V + bm]) bm = j;
                }
                if (am == bm) agree++;
            }
            return new LogitsComparison(tokens.Length, maxAbs, Math.Sqrt(num / Math.Max(den, 1e-30)), agree);
        }
        finally { File.Delete(path); }
    }

    private static bool Check(string preset)
    {
        var cfg = ConfigOf(preset);
        using var model = new LlamaModel(cfg, scalarHead: false);
        model.InitRandom(3, std: 0.2f);  // large weights: logits of order 1, so a wrong rotary layout shows
        var rng = new Random(9);
        var tokens = Enumerable.Range(0, Math.Min(24, cfg.MaxPositions)).Select(_ => rng.Next(cfg.Vocab)).ToArray();
        var r = CompareLogits(model, tokens, Native.GetNumThreads());
        bool ok = r.RelL2 < 1e-5 && r.ArgmaxAgree == r.Positions;
        Console.WriteLine($"llama.cpp logits cross-check ({preset}, {r.Positions} positions): max |diff| {r.MaxAbsDiff:E2}, relative L2 {r.RelL2:E2}, argmax agree {r.ArgmaxAgree}/{r.Positions}: {(ok ? "PASS" : "FAIL")}");
        return ok;
    }

    /// <summary>Read bandwidth (GB/s) of <paramref name="threads"/> threads summing a 1 GiB buffer, best of 3.</summary>
    internal static unsafe double ReadBandwidthGBs(int threads)
    {
        const long bytes = 1L << 30;
        using var block = new HostBlock(bytes);
        new Span<float>(block.Pointer, (int)(bytes / 4)).Fill(1f);
        float* p = (float*)block.Pointer;
        long n = bytes / 4, per = n / threads / 64 * 64;
        double best = double.MaxValue;
        float sink = 0;
        for (int rep = 0; rep < 4; rep++)
        {
            var sums = new float[threads];
            long t0 = Stopwatch.GetTimestamp();
            Parallel.For(0, threads, new ParallelOptions { MaxDegreeOfParallelism = threads }, t =>
            {
                float* q = p + t * per;
                Vector256<float> a0 = default, a1 = default, a2 = default, a3 = default;
                for (long i = 0; i < per; i += 32)
                {
                    a0 += Vector256.Load(q + i);
                    a1 += Vector256.Load(q + i + 8);
                    a2 += Vector256.Load(q + i + 16);
                    a3 += Vector256.Load(q + i + 24);
                }
                sums[t] = Vector256.Sum(a0 + a1 + a2 + a3);
            });
            double s = Stopwatch.GetElapsedTime(t0).TotalSeconds;
            if (rep > 0) best = Math.Min(best, s);  // first pass faults pages in
            sink += sums.Sum();
        }
        GC.KeepAlive(sink);
        return per * threads * 4.0 / best / 1e9;
    }

    /// <summary>One decode step's linears (every layer's qkv, o, gate|up, down and the head) through
    /// realn's linear op (small-M kernel) vs OpenBLAS SGEMM directly (the path before it), interleaved.</summary>
    private static unsafe void DecodeLinearKernels(LlamaConfig cfg, int[] rows)
    {
        int H = cfg.Hidden, I = cfg.Intermediate, kd = cfg.KvHeads * cfg.HeadDim;
        (int In, int Out)[] shapes = [(H, H + 2 * kd), (H, H), (H, 2 * I), (I, H)];
        (int In, int Out)[] all = [.. Enumerable.Range(0, cfg.Layers).SelectMany(_ => shapes), (H, cfg.Vocab)];
        long wElems = all.Max(s => (long)s.In * s.Out), maxIn = Math.Max(H, I), maxOut = Math.Max(cfg.Vocab, 2 * I);
        // Distinct weights per matrix, as in the model (no cache reuse between calls).
        long total = all.Sum(s => (long)s.In * s.Out);
        using var w = new HostBlock(total * 4);
        new Span<float>(w.Pointer, (int)total).Fill(0.01f);
        int maxRows = rows.Max();
        using var x = new HostBlock(maxRows * maxIn * 4);
        using var y = new HostBlock(maxRows * maxOut * 4);
        new Span<float>(x.Pointer, (int)(maxRows * maxIn)).Fill(0.5f);
        using var s = NativeStream.Cpu();
        foreach (int M in rows)
        {
            double bestOurs = double.MaxValue, bestBlas = double.MaxValue;
            for (int rep = 0; rep < 4; rep++)
            {
                long t0 = Stopwatch.GetTimestamp();
                float* wp = (float*)w.Pointer;
                foreach (var (i, o) in all) { Native.Check(Native.realn_op_linear_fwd(s.Ptr, DType.F32, x.Pointer, wp, null, y.Pointer, M, i, o)); wp += (long)i * o; }
                bestOurs = Math.Min(bestOurs, Stopwatch.GetElapsedTime(t0).TotalSeconds);
                t0 = Stopwatch.GetTimestamp();
                wp = (float*)w.Pointer;
                foreach (var (i, o) in all) { OpenBlas.cblas_sgemm(OpenBlas.RowMajor, OpenBlas.NoTrans, OpenBlas.Trans, M, o, i, 1f, (float*)x.Pointer, i, wp, i, 0f, (float*)y.Pointer, o); wp += (long)i * o; }
                bestBlas = Math.Min(bestBlas, Stopwatch.GetElapsedTime(t0).TotalSeconds);
            }
            Console.WriteLine($"  decode-step linears, {M} rows: realn {bestOurs * 1e3:F1} ms ({total * 4 / bestOurs / 1e9:F1} GB/s of weights), OpenBLAS SGEMM {bestBlas * 1e3:F1} ms: speed-up {bestBlas / bestOurs:F2}");
        }
    }

    private static int Kernels(string preset, int[] rows)
    {
        Console.WriteLine($"decode linears, {preset}, {Native.GetNumThreads()} threads; load {File.ReadAllText("/proc/loadavg").Trim()}");
        DecodeLinearKernels(LlamaConfig.Preset(preset), rows);
        return 0;
    }

    private sealed class Best
    {
        public double Prefill = double.MaxValue, Decode = double.MaxValue;
        public void Add(double pre, double dec) { Prefill = Math.Min(Prefill, pre); Decode = Math.Min(Decode, dec); }
    }

    private static (double Pre, double Dec, int[][] Tokens) RealnGreedy(LlamaModel model, List<int[]> prompts, int newTokens)
    {
        var opt = new GenerationOptions { MaxNewTokens = newTokens, Temperature = 0f, Seed = 11 };
        long t0 = Stopwatch.GetTimestamp();
        Generator.Generate(model, prompts, opt with { MaxNewTokens = 1 });
        double pre = Stopwatch.GetElapsedTime(t0).TotalSeconds;
        t0 = Stopwatch.GetTimestamp();
        var g = Generator.Generate(model, prompts, opt);
        double all = Stopwatch.GetElapsedTime(t0).TotalSeconds;
        return (pre, Math.Max(1e-9, all - pre), g.NewTokens);
    }

    private static int Bench(string preset, int[] batches, int promptLen, int newTokens, int reps)
    {
        if (promptLen < 1 || newTokens < 2 || reps < 1 || batches.Any(b => b < 1))
            throw new ArgumentException("bench: --prompt-len >= 1, --new-tokens >= 2, --reps >= 1, batches >= 1");
        var cfg = LlamaConfig.Preset(preset);
        int threads = Native.GetNumThreads();
        using var model = new LlamaModel(cfg, scalarHead: false);
        model.InitRandom(1);
        string path = Path.Combine(Path.GetTempPath(), $"realn-bench-{Environment.ProcessId}.gguf");
        Console.WriteLine($"llama.cpp vs realn, {preset}, {threads} threads, prompt {promptLen}, new tokens {newTokens}, best of {reps}; load {File.ReadAllText("/proc/loadavg").Trim()}");
        try
        {
            GgufWriter.Write(model, path);
            int maxB = batches.Max();
            using var cpp = new LlamaCpp(path, threads, maxB, promptLen + newTokens + 1, maxB * promptLen);
            var rng = new Random(5);
            var probe = Enumerable.Range(0, 16).Select(_ => rng.Next(cfg.Vocab)).ToArray();
            var theirs = cpp.AllLogits(probe);
            LogitsComparison cmp;
            unsafe
            {
                float* ours = model.Forward(PackedBatch.FromSequences([probe]));
                double num = 0, den = 0, mx = 0;
                for (long i = 0; i < theirs.Length; i++)
                {
                    double d = ours[i] - theirs[i];
                    num += d * d; den += (double)theirs[i] * theirs[i]; mx = Math.Max(mx, Math.Abs(d));
                }
                cmp = new LogitsComparison(probe.Length, mx, Math.Sqrt(num / den), -1);
            }
            Console.WriteLine($"  logits cross-check: max |diff| {cmp.MaxAbsDiff:E2}, relative L2 {cmp.RelL2:E2} over {probe.Length} positions");
            double decodeBytes = 4.0 * (model.ParameterCount - (cfg.TiedEmbeddings ? 0 : (long)cfg.Vocab * cfg.Hidden));
            double bw = ReadBandwidthGBs(threads);
            double bound = bw * 1e9 / decodeBytes;
            Console.WriteLine($"  read bandwidth {bw:F1} GB/s; a decode step reads {decodeBytes / 1e6:F0} MB of weights: batch-1 bound {bound:F1} tokens/s");
            DecodeLinearKernels(cfg, [1, 4, 64]);
            Console.WriteLine($"  {"batch",5} {"phase",8} {"realn tok/s",12} {"llama.cpp",12} {"ratio",7}  {"greedy tokens equal",20}");
            foreach (int B in batches)
            {
                var prompts = Enumerable.Range(0, B).Select(_ => Enumerable.Range(0, promptLen).Select(_ => rng.Next(cfg.Vocab)).ToArray()).ToList();
                int nt = B >= 64 ? Math.Min(newTokens, 16) : newTokens;
                RealnGreedy(model, prompts, 2);  // warm-up both
                cpp.Greedy(prompts, 2);
                Best ours = new(), them = new();
                int[][] ot = [], tt = [];
                for (int r = 0; r < reps; r++)
                {
                    var a = RealnGreedy(model, prompts, nt);
                    ours.Add(a.Pre, a.Dec);
                    ot = a.Tokens;
                    var b = cpp.Greedy(prompts, nt);
                    them.Add(b.PrefillSec, b.DecodeSec);
                    tt = b.Tokens;
                }
                int same = 0, total = 0;
                for (int s = 0; s < B; s++)
                    for (int j = 0; j < nt; j++, total++)
                    {
                        if (ot[s][j] != tt[s][j]) break;  // after a divergence the continuations differ legitimately
                        same++;
                    }
                double preOurs = B * promptLen / ours.Prefill, preThem = B * promptLen / them.Prefill;
                double decOurs = B * (nt - 1) / ours.Decode, decThem = B * (nt - 1) / them.Decode;
                Console.WriteLine($"  {B,5} {"prefill",8} {preOurs,12:F1} {preThem,12:F1} {preOurs / preThem,7:F2}");
                Console.WriteLine($"  {B,5} {"decode",8} {decOurs,12:F1} {decThem,12:F1} {decOurs / decThem,7:F2}  {same}/{total} (prefix agreement)");
                if (B == 1)
                    Console.WriteLine($"  {1,5} {"bound",8} realn decode / bandwidth bound {decOurs / bound:F2}; llama.cpp {decThem / bound:F2}");
            }
            Console.WriteLine($"  load after: {File.ReadAllText("/proc/loadavg").Trim()}");
        }
        finally { File.Delete(path); }
        return 0;
    }
}
