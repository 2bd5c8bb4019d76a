// `dotnet run -c Release --project bench/LlamaCppOracle -- check|bench|kernels [options]`: realn's generation
// against llama.cpp on the same model in the same process. `check` converts a small GQA model
// to GGUF and compares logits at every position (the converter's correctness test); `bench` runs
// greedy prefill + decode for batch 1, 4 and 64 on the gpt2-small preset, interleaving realn and
// llama.cpp, measures the memory read bandwidth over the decode step's weight bytes (best of several
// read methods, same thread count), and prints tokens/s, ratios and the batch-1 bandwidth bound; `--dtype f32,f16,bf16` picks the
// comparisons: f32 = realn fp32 vs llama.cpp F32, f16 / bf16 = realn bf16 weights vs llama.cpp
// F16 / BF16 weights (the bound then counts 2 bytes per weight). `kernels` times one decode step's
// linears through realn's small-M kernel (fp32: against OpenBLAS SGEMM; bf16: against the bandwidth).
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
                    int.Parse(Opt("--prompt-len", "32")), int.Parse(Opt("--new-tokens", "32")), int.Parse(Opt("--reps", "2")),
                    Opt("--dtype", "f32").Split(',').Select(GgufWriter.ParseDType).Distinct().ToArray()),
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

    /// <summary>One way of reading memory: its name and the GB/s it reached.</summary>
    internal sealed record ReadMethod(string Name, double GBs);

    /// <summary>Read bandwidth of <paramref name="threads"/> threads over a buffer of <paramref name="bytes"/>
    /// (pass the decode step's weight bytes: the same working set, read in the same cyclic order every
    /// pass, so whatever share of it the last-level cache keeps between passes helps the reference as
    /// much as the kernel), best of several methods, each the best of 3 passes after a first that faults
    /// pages in: 256-bit and 512-bit loads (8 accumulators), one stream per thread or 4 interleaved
    /// streams per thread (as the small-M kernel reads 4 weight rows at once), and realn's own
    /// OpenMP-threaded sum of squares. The managed methods run on dedicated threads that are already
    /// running and meet at a barrier before each pass (a thread-pool loop can start its second
    /// worker late and time one thread's work twice). The bound is only honest if no decode kernel beats
    /// it; Bench and Kernels check that.</summary>
    internal static unsafe List<ReadMethod> ReadBandwidths(int threads, long bytes)
    {
        bytes = Math.Max(bytes / 4 / (threads * 1024L) * (threads * 1024L) * 4, threads * 4096L);
        using var block = new HostBlock(bytes);
        long n = bytes / 4, per = n / threads;
        float* p = (float*)block.Pointer;
        for (long i = 0; i < n; i++) p[i] = 1f;
        var res = new List<ReadMethod>();
        var sums = new float[threads];
        using var team = new ReadTeam(threads);
        foreach (int streams in new[] { 1, 4 })
        {
            long len = per / streams;
            if (streams == 1)
                res.Add(new("256-bit loads, 1 stream/thread", team.Measure(4, t =>
                {
                    Vector256<float> a0 = default, a1 = default, a2 = default, a3 = default;
                    float* q = p + t * per;
                    for (long i = 0; i + 32 <= per; i += 32)
                    {
                        a0 += Vector256.Load(q + i); a1 += Vector256.Load(q + i + 8);
                        a2 += Vector256.Load(q + i + 16); a3 += Vector256.Load(q + i + 24);
                    }
                    sums[t] = Vector256.Sum(a0 + a1 + a2 + a3);
                }, per * threads * 4.0)));
            if (!Vector512.IsHardwareAccelerated) continue;
            res.Add(new($"512-bit loads, {streams} stream{(streams > 1 ? "s" : "")}/thread", team.Measure(4, t =>
            {
                float* b = p + t * per;
                Vector512<float> a0 = default, a1 = default, a2 = default, a3 = default, a4 = default, a5 = default, a6 = default, a7 = default;
                // `streams` equally spaced pointers advanced together (the 4-stream case interleaves them).
                for (long i = 0; i + 128 / streams <= len; i += 128 / streams)
                {
                    for (int s = 0; s < streams; s++)
                    {
                        float* q = b + s * len + i;
                        if (streams == 1)
                        {
                            a0 += Vector512.Load(q); a1 += Vector512.Load(q + 16); a2 += Vector512.Load(q + 32); a3 += Vector512.Load(q + 48);
                            a4 += Vector512.Load(q + 64); a5 += Vector512.Load(q + 80); a6 += Vector512.Load(q + 96); a7 += Vector512.Load(q + 112);
                        }
                        else
                        {
                            a0 += Vector512.Load(q); a1 += Vector512.Load(q + 16);
                        }
                    }
                }
                sums[t] = Vector512.Sum(a0 + a1 + a2 + a3 + a4 + a5 + a6 + a7);
            }, per * threads * 4.0)));
        }
        using (var s = NativeStream.Cpu())
        {
            using var out1 = new HostBlock(8);
            double best = double.MaxValue;
            for (int rep = 0; rep < 4; rep++)
            {
                long t0 = Stopwatch.GetTimestamp();
                Native.Check(Native.realn_op_sumsq(s.Ptr, p, per * threads, (double*)out1.Pointer));
                double sec = Stopwatch.GetElapsedTime(t0).TotalSeconds;
                if (rep > 0) best = Math.Min(best, sec);
            }
            res.Add(new("realn sumsq (OpenMP)", per * threads * 4.0 / best / 1e9));
        }
        GC.KeepAlive(sums);
        return res;
    }

    /// <summary>A fixed team of threads for the read references: the caller is member 0, the others are
    /// dedicated threads that wait at a barrier, so every member starts a pass together and the pass ends
    /// when the last one finishes. Waits are bounded: a member that does not arrive within a minute fails
    /// the measurement instead of hanging the benchmark.</summary>
    private sealed class ReadTeam : IDisposable
    {
        private static readonly TimeSpan Deadline = TimeSpan.FromMinutes(1);
        private readonly Barrier _start, _end;
        private readonly Thread[] _threads;
        private Action<int>? _body;
        private volatile bool _stop;

        public ReadTeam(int size)
        {
            _start = new Barrier(size);
            _end = new Barrier(size);
            _threads = Enumerable.Range(1, size - 1).Select(t => new Thread(() => Member(t)) { IsBackground = true, Name = $"read-ref-{t}" }).ToArray();
            foreach (var th in _threads) th.Start();
        }

        private void Member(int t)
        {
            while (true)
            {
                if (!_start.SignalAndWait(Deadline) || _stop) return;
                _body!(t);
                if (!_end.SignalAndWait(Deadline)) return;
            }
        }

        /// <summary>Seconds of one pass of <paramref name="body"/> over every member.</summary>
        public double Time(Action<int> body)
        {
            _body = body;
            if (!_start.SignalAndWait(Deadline)) throw new InvalidOperationException("read reference: a thread did not start within a minute");
            long t0 = Stopwatch.GetTimestamp();
            body(0);
            if (!_end.SignalAndWait(Deadline)) throw new InvalidOperationException("read reference: a thread did not finish within a minute");
            return Stopwatch.GetElapsedTime(t0).TotalSeconds;
        }

        /// <summary>GB/s of the best of <paramref name="passes"/> - 1 passes after a first (page faults, warm-up).</summary>
        public double Measure(int passes, Action<int> body, double bytes)
        {
            double best = double.MaxValue;
            for (int rep = 0; rep < passes; rep++)
            {
                double s = Time(body);
                if (rep > 0) best = Math.Min(best, s);
            }
            return bytes / best / 1e9;
        }

        public void Dispose()
        {
            _stop = true;
            _start.SignalAndWait(Deadline);
            foreach (var th in _threads) th.Join(Deadline);
            _start.Dispose();
            _end.Dispose();
        }
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
        int threads = Native.GetNumThreads();
        double readGBs = PrintBandwidth(threads, total * 4, "fp32 weights of the decode step");
        using var w = new HostBlock(total * 4);
        new Span<float>(w.Pointer, (int)total).Fill(0.01f);
        int maxRows = rows.Max();
        using var x = new HostBlock(maxRows * maxIn * 4);
        using var y = new HostBlock(maxRows * maxOut * 4);
        new Span<float>(x.Pointer, (int)(maxRows * maxIn)).Fill(0.5f);
        using var s = NativeStream.Cpu();
        foreach (int M in rows)
        {
            double bestOurs = double.MaxValue, bestBlas = double.MaxValue, bestInv = double.MaxValue;
            for (int rep = 0; rep < 4; rep++)
            {
                long t0 = Stopwatch.GetTimestamp();
                float* wp = (float*)w.Pointer;
                foreach (var (i, o) in all) { Native.Check(Native.realn_op_linear_fwd(s.Ptr, DType.F32, x.Pointer, wp, null, y.Pointer, M, i, o)); wp += (long)i * o; }
                bestOurs = Math.Min(bestOurs, Stopwatch.GetElapsedTime(t0).TotalSeconds);
                if (M > ReaLNative.Interop.Kernels.SmallMMaxRows)
                {
                    t0 = Stopwatch.GetTimestamp();
                    wp = (float*)w.Pointer;
                    foreach (var (i, o) in all) { Native.Check(ReaLNative.Interop.Kernels.LinearForwardRowInvariant(s.Ptr, DType.F32, x.Pointer, wp, null, (float*)y.Pointer, M, i, o)); wp += (long)i * o; }
                    bestInv = Math.Min(bestInv, Stopwatch.GetElapsedTime(t0).TotalSeconds);
                }
                t0 = Stopwatch.GetTimestamp();
                wp = (float*)w.Pointer;
                foreach (var (i, o) in all) { OpenBlas.cblas_sgemm(OpenBlas.RowMajor, OpenBlas.NoTrans, OpenBlas.Trans, M, o, i, 1f, (float*)x.Pointer, i, wp, i, 0f, (float*)y.Pointer, o); wp += (long)i * o; }
                bestBlas = Math.Min(bestBlas, Stopwatch.GetElapsedTime(t0).TotalSeconds);
            }
            Console.WriteLine($"  decode-step linears, {M} rows: realn {bestOurs * 1e3:F1} ms ({total * 4 / bestOurs / 1e9:F1} GB/s of weights{OfRead(total * 4 / bestOurs / 1e9, readGBs)}), OpenBLAS SGEMM {bestBlas * 1e3:F1} ms: speed-up {bestBlas / bestOurs:F2}"
                + (M > ReaLNative.Interop.Kernels.SmallMMaxRows ? $"; row-invariant (decode's path: chunks of <= {ReaLNative.Interop.Kernels.SmallMMaxRows} rows) {bestInv * 1e3:F1} ms, {bestInv / bestOurs:F2}x the realn linear's time" : ""));
        }
        // The same linears with bf16 weights (realn's small-M bf16 kernel; no BLAS reference for it).
        readGBs = PrintBandwidth(threads, total * 2, "bf16 weights of the decode step");
        using var wh = new HostBlock(total * 2);
        new Span<ushort>(wh.Pointer, (int)total).Fill(GgufWriter.ToBf16(0.01f));
        foreach (int M in rows)
        {
            double best = double.MaxValue, bestInv = double.MaxValue;
            for (int rep = 0; rep < 4; rep++)
            {
                long t0 = Stopwatch.GetTimestamp();
                ushort* wp = (ushort*)wh.Pointer;
                foreach (var (i, o) in all) { Native.Check(Native.realn_op_linear_fwd(s.Ptr, DType.BF16, x.Pointer, wp, null, y.Pointer, M, i, o)); wp += (long)i * o; }
                best = Math.Min(best, Stopwatch.GetElapsedTime(t0).TotalSeconds);
                if (M <= ReaLNative.Interop.Kernels.SmallMMaxRows) continue;
                t0 = Stopwatch.GetTimestamp();
                wp = (ushort*)wh.Pointer;
                foreach (var (i, o) in all) { Native.Check(ReaLNative.Interop.Kernels.LinearForwardRowInvariant(s.Ptr, DType.BF16, x.Pointer, wp, null, (float*)y.Pointer, M, i, o)); wp += (long)i * o; }
                bestInv = Math.Min(bestInv, Stopwatch.GetElapsedTime(t0).TotalSeconds);
            }
            Console.WriteLine($"  decode-step linears, {M} rows, bf16 weights: realn {best * 1e3:F1} ms ({total * 2 / best / 1e9:F1} GB/s of weights{OfRead(total * 2 / best / 1e9, readGBs)})"
                + (M > ReaLNative.Interop.Kernels.SmallMMaxRows ? $"; row-invariant (chunks of <= {ReaLNative.Interop.Kernels.SmallMMaxRows} rows) {bestInv * 1e3:F1} ms, {bestInv / best:F2}x" : ""));
        }
    }

    private static string OfRead(double gbs, double readGBs) =>
        readGBs <= 0 ? "" : $", {gbs / readGBs:F2} of the read bandwidth{(gbs > readGBs * 1.02 ? ": ABOVE IT, the bandwidth reference is too low" : "")}";

    private static int Kernels(string preset, int[] rows)
    {
        int threads = Native.GetNumThreads();
        Console.WriteLine($"decode linears, {preset}, {threads} threads; load {File.ReadAllText("/proc/loadavg").Trim()}");
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

    /// <summary>Measures every read method over <paramref name="bytes"/>, prints them, returns the best (GB/s).</summary>
    private static double PrintBandwidth(int threads, long bytes, string what)
    {
        var methods = ReadBandwidths(threads, bytes);
        var best = methods.MaxBy(m => m.GBs)!;
        Console.WriteLine($"  read bandwidth, {threads} threads, {bytes / 1e6:F0} MB ({what}): {string.Join("; ", methods.Select(m => $"{m.Name} {m.GBs:F1}"))} GB/s; best {best.GBs:F1} ({best.Name})");
        return best.GBs;
    }

    private static string DTypeName(GgufDType d) => d switch { GgufDType.F32 => "F32", GgufDType.F16 => "F16", _ => "BF16" };

    private static int Bench(string preset, int[] batches, int promptLen, int newTokens, int reps, GgufDType[] dtypes)
    {
        if (promptLen < 1 || newTokens < 2 || reps < 1 || batches.Length == 0 || batches.Any(b => b < 1) || dtypes.Length == 0)
            throw new ArgumentException("bench: --prompt-len >= 1, --new-tokens >= 2, --reps >= 1, batches >= 1, --dtype f32|f16|bf16 (comma-separated)");
        var cfg = LlamaConfig.Preset(preset);
        int threads = Native.GetNumThreads();
        Console.WriteLine($"llama.cpp vs realn, {preset}, {threads} threads, prompt {promptLen}, new tokens {newTokens}, best of {reps}; load {File.ReadAllText("/proc/loadavg").Trim()}");
        DecodeLinearKernels(cfg, [1, 4, 64]);
        foreach (var dtype in dtypes) BenchOne(cfg, preset, batches, promptLen, newTokens, reps, dtype, threads);
        Console.WriteLine($"  load after: {File.ReadAllText("/proc/loadavg").Trim()}");
        return 0;
    }

    /// <summary>One comparison: llama.cpp with <paramref name="dtype"/> weights against realn fp32 (F32)
    /// or realn bf16 weights (F16, BF16), on the same random model.</summary>
    private static void BenchOne(LlamaConfig cfg, string preset, int[] batches, int promptLen, int newTokens, int reps, GgufDType dtype,
                                 int threads)
    {
        using var model = new LlamaModel(cfg, scalarHead: false);
        model.InitRandom(1);
        string path = Path.Combine(Path.GetTempPath(), $"realn-bench-{Environment.ProcessId}-{dtype}.gguf");
        try
        {
            GgufWriter.Write(model, path, null, dtype);  // from the fp32 weights; BF16 rounds as FreezeToBf16 does
            bool bf16 = dtype != GgufDType.F32;
            if (bf16) model.FreezeToBf16();
            string ours = bf16 ? "bf16" : "fp32";
            int maxB = batches.Max();
            using var cpp = new LlamaCpp(path, threads, maxB, promptLen + newTokens + 1, maxB * promptLen);
            Console.WriteLine($"  -- realn {ours} weights vs llama.cpp {DTypeName(dtype)} weights (KV caches: realn {ours}, llama.cpp F32) --");
            var rng = new Random(5);
            var probe = Enumerable.Range(0, 16).Select(_ => rng.Next(cfg.Vocab)).ToArray();
            var theirs = cpp.AllLogits(probe);
            LogitsComparison cmp;
            unsafe
            {
                float* o = model.Forward(PackedBatch.FromSequences([probe]));
                double num = 0, den = 0, mx = 0;
                for (long i = 0; i < theirs.Length; i++)
                {
                    double d = o[i] - theirs[i];
                    num += d * d; den += (double)theirs[i] * theirs[i]; mx = Math.Max(mx, Math.Abs(d));
                }
                cmp = new LogitsComparison(probe.Length, mx, Math.Sqrt(num / den), -1);
            }
            Console.WriteLine($"  logits cross-check: max |diff| {cmp.MaxAbsDiff:E2}, relative L2 {cmp.RelL2:E2} over {probe.Length} positions");
            double bytesPerWeight = bf16 ? 2 : 4;
            double decodeBytes = bytesPerWeight * (model.ParameterCount - (cfg.TiedEmbeddings ? 0 : (long)cfg.Vocab * cfg.Hidden));
            double bw = PrintBandwidth(threads, (long)decodeBytes, $"{ours} weights of the decode step");
            double bound = bw * 1e9 / decodeBytes;
            Console.WriteLine($"  a decode step reads {decodeBytes / 1e6:F0} MB of weights ({bytesPerWeight} B each): batch-1 bound {bound:F1} tokens/s at {bw:F1} GB/s");
            Console.WriteLine($"  {"batch",5} {"phase",8} {"realn tok/s",12} {"llama.cpp",12} {"ratio",7}  {"greedy tokens equal",20}");
            foreach (int B in batches)
            {
                var prompts = Enumerable.Range(0, B).Select(_ => Enumerable.Range(0, promptLen).Select(_ => rng.Next(cfg.Vocab)).ToArray()).ToList();
                int nt = B >= 64 ? Math.Min(newTokens, 16) : newTokens;
                RealnGreedy(model, prompts, 2);  // warm-up both
                cpp.Greedy(prompts, 2);
                Best mine = new(), them = new();
                int[][] ot = [], tt = [];
                for (int r = 0; r < reps; r++)
                {
                    var a = RealnGreedy(model, prompts, nt);
                    mine.Add(a.Pre, a.Dec);
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
                double preOurs = B * promptLen / mine.Prefill, preThem = B * promptLen / them.Prefill;
                double decOurs = B * (nt - 1) / mine.Decode, decThem = B * (nt - 1) / them.Decode;
                Console.WriteLine($"  {B,5} {"prefill",8} {preOurs,12:F1} {preThem,12:F1} {preOurs / preThem,7:F2}");
                Console.WriteLine($"  {B,5} {"decode",8} {decOurs,12:F1} {decThem,12:F1} {decOurs / decThem,7:F2}  {same}/{total} (prefix agreement)");
                if (B == 1)
                    Console.WriteLine($"  {1,5} {"bound",8} realn decode / bandwidth bound {decOurs / bound:F2}; llama.cpp {decThem / bound:F2}");
            }
        }
        finally { File.Delete(path); }
    }
}
