// `realn bench kernels [--json]`: the foundation's performance goals, measured as ratios inside
// one run: GEMM through the ABI vs OpenBLAS called directly (1024^3, goal >= 0.95; plus training
// and decode shapes, where the ABI's thread-count-independent tiling is compared with OpenBLAS's
// own threading), and interval gather/scatter of large intervals vs a plain memcpy of the same
// bytes (goal >= 0.80).
// Candidate and reference runs are interleaved and the best of each is kept, so a burst of
// load from another process hits both sides alike.
using System.CommandLine;
using System.Diagnostics;
using System.Text.Json;
using ReaLNative.Interop;

namespace ReaLNative.Cli.Commands;

public static unsafe class BenchKernelsCommand
{
    public static Command Create()
    {
        var json = new Option<bool>("--json") { Description = "Print JSON" };
        var reps = new Option<int>("--reps") { Description = "Repetitions per side", DefaultValueFactory = _ => 8 };
        var cmd = new Command("kernels", "GEMM vs direct OpenBLAS, interval gather/scatter vs memcpy");
        cmd.Options.Add(json);
        cmd.Options.Add(reps);
        cmd.SetAction(p => Run(p.GetValue(json), Math.Max(2, p.GetValue(reps))));
        return cmd;
    }

    /// <summary>Best-of-n seconds for two interleaved actions (candidate, reference).</summary>
    internal static (double cand, double reference) Interleaved(Action candidate, Action reference, int reps)
    {
        candidate();
        reference();
        double bc = double.MaxValue, br = double.MaxValue;
        for (int i = 0; i < reps; i++)
        {
            long t0 = Stopwatch.GetTimestamp();
            candidate();
            long t1 = Stopwatch.GetTimestamp();
            reference();
            long t2 = Stopwatch.GetTimestamp();
            bc = Math.Min(bc, (t1 - t0) / (double)Stopwatch.Frequency);
            br = Math.Min(br, (t2 - t1) / (double)Stopwatch.Frequency);
        }
        return (bc, br);
    }

    private static int Run(bool asJson, int reps)
    {
        using var stream = NativeStream.Cpu();
        var results = new Dictionary<string, object>();

        // GEMM 1024^3.
        const int n = 1024;
        using var a = new HostBlock(4L * n * n);
        using var b = new HostBlock(4L * n * n);
        using var c = new HostBlock(4L * n * n);
        var rng = new Random(1);
        foreach (var blk in new[] { a, b })
        {
            var s = blk.AsSpan<float>();
            for (int i = 0; i < s.Length; i++) s[i] = (float)(rng.NextDouble() - 0.5);
        }
        float* pa = (float*)a.Pointer, pb = (float*)b.Pointer, pc = (float*)c.Pointer;
        var (tAbi, tBlas) = Interleaved(
            () => Kernels.Gemm(stream, false, false, n, n, n, pa, n, pb, n, pc, n),
            () => OpenBlas.cblas_sgemm(OpenBlas.RowMajor, OpenBlas.NoTrans, OpenBlas.NoTrans, n, n, n, 1f, pa, n, pb, n, 0f, pc, n),
            reps);
        double flops = 2.0 * n * n * n;
        results["gemm"] = new Dictionary<string, object>
        {
            ["shape"] = "1024x1024x1024",
            ["abi_gflops"] = Math.Round(flops / tAbi / 1e9, 2),
            ["openblas_gflops"] = Math.Round(flops / tBlas / 1e9, 2),
            ["ratio"] = Math.Round(tBlas / tAbi, 3),
            ["goal"] = 0.95,
        };

        // Training shapes (a gpt2-small layer over 1024 tokens: qkv forward, input and weight
        // gradients) and decode shapes (M = 1, 8, 64 rows against the same weight).
        var shapes = new List<Dictionary<string, object>>();
        foreach (var (name, ta, tb, m, nn, k) in new[]
                 {
                     ("train fwd", 0, 1, 1024, 2304, 768), ("train dx", 0, 0, 1024, 768, 2304), ("train dw", 1, 0, 2304, 768, 1024),
                     ("decode", 0, 1, 1, 2304, 768), ("decode", 0, 1, 8, 2304, 768), ("decode", 0, 1, 64, 2304, 768),
                 })
        {
            int lda = ta == 0 ? k : m, ldb = tb == 0 ? nn : k;
            using var sa = new HostBlock(4L * m * k);
            using var sb = new HostBlock(4L * nn * k);
            using var sc = new HostBlock(4L * m * nn);
            foreach (var blk in new[] { sa, sb })
            {
                var s = blk.AsSpan<float>();
                for (int i = 0; i < s.Length; i++) s[i] = (float)(rng.NextDouble() - 0.5);
            }
            float* qa = (float*)sa.Pointer, qb = (float*)sb.Pointer, qc = (float*)sc.Pointer;
            int shapeReps = m * (long)nn * k > 100_000_000 ? reps : reps * 8;
            var (ts, tr) = Interleaved(
                () => Kernels.Gemm(stream, ta != 0, tb != 0, m, nn, k, qa, lda, qb, ldb, qc, nn),
                () => OpenBlas.cblas_sgemm(OpenBlas.RowMajor, ta == 0 ? OpenBlas.NoTrans : OpenBlas.Trans, tb == 0 ? OpenBlas.NoTrans : OpenBlas.Trans,
                                           m, nn, k, 1f, qa, lda, qb, ldb, 0f, qc, nn),
                shapeReps);
            shapes.Add(new Dictionary<string, object>
            {
                ["name"] = name, ["shape"] = $"{(ta == 0 ? "N" : "T")}{(tb == 0 ? "N" : "T")} {m}x{nn}x{k}",
                ["abi_us"] = Math.Round(ts * 1e6, 1), ["openblas_us"] = Math.Round(tr * 1e6, 1), ["ratio"] = Math.Round(tr / ts, 3),
            });
        }
        results["gemm_shapes"] = shapes;

        // Interval gather/scatter: 64 intervals of 2 MiB spread over a 160 MiB flat buffer.
        const long interval = 2L << 20, count = 64, stride = interval + (interval / 2);
        long flatBytes = stride * count, total = interval * count;
        using var flat = new HostBlock(flatBytes);
        using var staging = new HostBlock(total);
        using var plainDst = new HostBlock(total);
        new Span<byte>(flat.Pointer, (int)Math.Min(flatBytes, int.MaxValue)).Fill(0x5a);
        var offs = new long[count];
        var lens = new long[count];
        for (int i = 0; i < count; i++) { offs[i] = i * stride; lens[i] = interval; }
        byte* pf = (byte*)flat.Pointer, ps = (byte*)staging.Pointer, pd = (byte*)plainDst.Pointer;
        void Memcpy() => Buffer.MemoryCopy(pf, pd, total, total);
        double gather, scatter, mc1, mc2;
        fixed (long* po = offs, pl = lens)
        {
            long* o = po, l = pl;
            (gather, mc1) = Interleaved(() => Kernels.IntervalGather(stream, ps, pf, o, l, count), Memcpy, reps);
            (scatter, mc2) = Interleaved(() => Kernels.IntervalScatter(stream, pf, ps, o, l, count), Memcpy, reps);
        }
        double memcpy = Math.Min(mc1, mc2);
        results["interval"] = new Dictionary<string, object>
        {
            ["intervals"] = count,
            ["interval_bytes"] = interval,
            ["memcpy_gbps"] = Math.Round(total / memcpy / 1e9, 2),
            ["gather_gbps"] = Math.Round(total / gather / 1e9, 2),
            ["scatter_gbps"] = Math.Round(total / scatter / 1e9, 2),
            ["gather_ratio"] = Math.Round(memcpy / gather, 3),
            ["scatter_ratio"] = Math.Round(memcpy / scatter, 3),
            ["goal"] = 0.80,
        };
        results["threads"] = Kernels.Threads;

        if (asJson)
        {
            Console.WriteLine(ReaLNative.Diagnostics.JsonReport.Write(results));
        }
        else
        {
            var g = (Dictionary<string, object>)results["gemm"];
            var iv = (Dictionary<string, object>)results["interval"];
            Console.WriteLine($"GEMM 1024^3: ABI {g["abi_gflops"]} GFLOP/s, OpenBLAS {g["openblas_gflops"]} GFLOP/s, ratio {g["ratio"]} (goal >= 0.95)");
            foreach (var sh in (List<Dictionary<string, object>>)results["gemm_shapes"])
                Console.WriteLine($"GEMM {sh["name"]} {sh["shape"]}: ABI {sh["abi_us"]} us, OpenBLAS {sh["openblas_us"]} us, ratio {sh["ratio"]}");
            Console.WriteLine($"interval gather {iv["gather_gbps"]} GB/s, scatter {iv["scatter_gbps"]} GB/s, memcpy {iv["memcpy_gbps"]} GB/s, " +
                              $"ratios {iv["gather_ratio"]} / {iv["scatter_ratio"]} (goal >= 0.80)");
        }
        return 0;
    }
}
