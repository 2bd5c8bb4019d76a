// `realn bench train [--json]`: training throughput of a GPT-2-small-sized LLaMA (12 layers,
// hidden 768, 12 heads, vocab 50304) on 4 x 64 packed tokens: one forward + backward + AdamW step,
// tokens/s and achieved GFLOP/s counting 6*N*tokens plus attention, against OpenBLAS SGEMM at
// 1024^3 measured in the same run on the same threads (goal: ratio >= 0.60).
// `realn bench generate [--json]`: batched KV-cache decode tokens/s of the same model;
// `--rlhf`: RLHF-style generation (many prompts of varied length, outputs of varied length),
// continuous batching against the static batch in the same run, tokens and log-probs checked
// identical to the static batch with the same (batch-independent) prefill.
// `--precision bf16` (train, generate): the bf16 model measured, then the fp32 model in the same
// run, and the ratio printed (goals: step <= 0.8x fp32, decode tokens/s >= 1.6x fp32).
using System.CommandLine;
using System.Diagnostics;
using System.Text.Json;
using ReaLNative.Engine.Generation;
using ReaLNative.Engine.Model;
using ReaLNative.Engine.Optim;
using ReaLNative.Interop;

namespace ReaLNative.Diagnostics;

public static unsafe class BenchTrainCommand
{
    public static Command CreateTrain()
    {
        var json = new Option<bool>("--json") { Description = "Print JSON" };
        var steps = new Option<int>("--steps") { Description = "Timed training steps (best is kept)", DefaultValueFactory = _ => 4 };
        var preset = new Option<string>("--model") { Description = "Model preset", DefaultValueFactory = _ => "gpt2-small" };
        var seqs = new Option<int>("--seqs") { Description = "Sequences per step", DefaultValueFactory = _ => 4 };
        var len = new Option<int>("--len") { Description = "Tokens per sequence", DefaultValueFactory = _ => 64 };
        var recompute = new Option<bool>("--recompute") { Description = "Activation recomputation" };
        var precision = PrecisionOption();
        var cmd = new Command("train", "Training step (fwd+bwd+AdamW) GFLOP/s vs OpenBLAS SGEMM 1024^3");
        foreach (var o in new Option[] { json, steps, preset, seqs, len, recompute, precision }) cmd.Options.Add(o);
        cmd.SetAction(p => RunTrain(p.GetValue(json), Math.Max(1, p.GetValue(steps)), p.GetValue(preset)!, p.GetValue(seqs), p.GetValue(len), p.GetValue(recompute),
            ParsePrecision(p.GetValue(precision)!)));
        return cmd;
    }

    public static Command CreateGenerate()
    {
        var json = new Option<bool>("--json") { Description = "Print JSON" };
        var preset = new Option<string>("--model") { Description = "Model preset", DefaultValueFactory = _ => "gpt2-small" };
        var batch = new Option<int>("--batch") { Description = "Prompts per batch", DefaultValueFactory = _ => 4 };
        var prompt = new Option<int>("--prompt-len") { Description = "Prompt tokens", DefaultValueFactory = _ => 32 };
        var gen = new Option<int>("--new-tokens") { Description = "New tokens per prompt", DefaultValueFactory = _ => 32 };
        var rlhf = new Option<bool>("--rlhf") { Description = "RLHF generation: continuous batching vs the static batch (prompts 16-64 tokens, outputs 1..--new-tokens)" };
        var slots = new Option<int>("--slots") { Description = "--rlhf: KV-cache slots of continuous batching", DefaultValueFactory = _ => 64 };
        var group = new Option<int>("--group-size") { Description = "--rlhf: samples per prompt (GRPO/RLOO groups; divides --batch)", DefaultValueFactory = _ => 1 };
        var precision = PrecisionOption();
        var cmd = new Command("generate", "Batched prefill + KV-cache decode tokens/s");
        foreach (var o in new Option[] { json, preset, batch, prompt, gen, rlhf, slots, group, precision }) cmd.Options.Add(o);
        cmd.SetAction(p =>
        {
            var prec = ParsePrecision(p.GetValue(precision)!);
            if (p.GetValue(rlhf) && prec != ModelPrecision.Fp32)
                throw new ArgumentException("bench generate: --precision bf16 is measured without --rlhf (the static batch's decode); allowed with --rlhf: fp32");
            return p.GetValue(rlhf)
                ? RunRlhfGenerate(p.GetValue(json), p.GetValue(preset)!, p.GetValue(batch), p.GetValue(gen), p.GetValue(slots), p.GetValue(group))
                : RunGenerate(p.GetValue(json), p.GetValue(preset)!, p.GetValue(batch), p.GetValue(prompt), p.GetValue(gen), prec);
        });
        return cmd;
    }

    private static Option<string> PrecisionOption() => new("--precision")
    {
        Description = "fp32 | bf16 (bf16: also measures fp32 in the same run and prints the ratio)",
        DefaultValueFactory = _ => "fp32",
    };

    private static ModelPrecision ParsePrecision(string v) => v switch
    {
        "fp32" => ModelPrecision.Fp32,
        "bf16" => ModelPrecision.Bf16,
        _ => throw new ArgumentException($"--precision: '{v}' is not allowed; allowed values: fp32 | bf16"),
    };

    /// <summary>Best-of-reps SGEMM 1024^3 GFLOP/s through OpenBLAS directly.</summary>
    internal static double SgemmGflops(int reps)
    {
        const int n = 1024;
        using var a = new HostBlock(4L * n * n);
        using var b = new HostBlock(4L * n * n);
        using var c = new HostBlock(4L * n * n);
        var rng = new Random(7);
        foreach (var blk in new[] { a, b })
        {
            var s = blk.AsSpan<float>();
            for (int i = 0; i < s.Length; i++) s[i] = (float)(rng.NextDouble() - 0.5);
        }
        float* pa = (float*)a.Pointer, pb = (float*)b.Pointer, pc = (float*)c.Pointer;
        OpenBlas.cblas_sgemm(OpenBlas.RowMajor, OpenBlas.NoTrans, OpenBlas.NoTrans, n, n, n, 1f, pa, n, pb, n, 0f, pc, n);
        double best = double.MaxValue;
        for (int i = 0; i < reps; i++)
        {
            long t0 = Stopwatch.GetTimestamp();
            OpenBlas.cblas_sgemm(OpenBlas.RowMajor, OpenBlas.NoTrans, OpenBlas.NoTrans, n, n, n, 1f, pa, n, pb, n, 0f, pc, n);
            best = Math.Min(best, Stopwatch.GetElapsedTime(t0).TotalSeconds);
        }
        return 2.0 * n * n * n / best / 1e9;
    }

    private static PackedBatch RandomBatch(int vocab, int seqs, int len, int seed)
    {
        var rng = new Random(seed);
        var list = new List<int[]>();
        for (int i = 0; i < seqs; i++) list.Add(Enumerable.Range(0, len).Select(_ => rng.Next(vocab)).ToArray());
        return PackedBatch.FromSequences(list);
    }

    private static int RunTrain(bool asJson, int steps, string preset, int seqs, int len, bool recompute, ModelPrecision precision)
    {
        // measured on every thread as SGEMM is (the engine's choice of one thread per unit of work is off)
        ReaLNative.Engine.Model.ThreadChoice.Enabled = false;
        if (seqs < 1 || len < 2) throw new ArgumentException($"bench train: --seqs >= 1 and --len >= 2 (got {seqs}, {len})");
        var res = MeasureTrain(steps, preset, seqs, len, recompute, precision);
        if (precision == ModelPrecision.Bf16)
        {
            // The fp32 step of the same model and batch, measured now (same machine load).
            var fp = MeasureTrain(steps, preset, seqs, len, recompute, ModelPrecision.Fp32);
            res["fp32_step_seconds_best"] = fp["step_seconds_best"];
            res["fp32_forward_seconds_best"] = fp["forward_seconds_best"];
            res["fp32_backward_seconds_best"] = fp["backward_seconds_best"];
            res["bf16_over_fp32_step"] = Math.Round((double)res["step_seconds_best"] / (double)fp["step_seconds_best"], 3);
            res["bf16_goal"] = "<= 0.8";
            res["bf16_gemm_path"] = Environment.GetEnvironmentVariable("REALN_BF16_GEMM") is { Length: > 0 } e ? e : "default (amx > avx512bf16 > convert)";
        }
        res["load_average"] = LoadAverage();
        Print(asJson, "bench train", res);
        return 0;
    }

    private static string LoadAverage() => File.Exists("/proc/loadavg") ? File.ReadAllText("/proc/loadavg").Split(' ')[0] : "?";

    private static Dictionary<string, object> MeasureTrain(int steps, string preset, int seqs, int len, bool recompute, ModelPrecision precision)
    {
        var cfg = LlamaConfig.Preset(preset);
        using var model = new LlamaModel(cfg, scalarHead: false) { Recompute = recompute };
        model.InitRandom(1);
        if (precision == ModelPrecision.Bf16) model.SetPrecision(ModelPrecision.Bf16);
        using var opt = new AdamW(model, new LrSchedule(1e-4f, WarmupSteps: 2, Decay: "cosine", TotalSteps: 1000));
        var batch = RandomBatch(cfg.Vocab, seqs, len, 2);
        int T = batch.TotalTokens, V = cfg.Vocab;
        // Next-token cross-entropy gives the output gradient, as a training step would.
        var labels = batch.Tokens.Skip(1).Append(0).ToArray();
        var loss = new float[T];
        var lse = new float[T];
        double fwdBest = double.MaxValue, bwdBest = double.MaxValue, optBest = double.MaxValue;
        void Step()
        {
            long t0 = Stopwatch.GetTimestamp();
            model.ZeroGrad();
            float* logits = model.Forward(batch);
            long t1 = Stopwatch.GetTimestamp();
            float* d = model.OutputGradientBuffer();
            double mean;
            fixed (int* pl = labels)
            fixed (float* ploss = loss, plse = lse)
            {
                Native.Check(Native.realn_op_cross_entropy_fwd(model.Stream.Ptr, DType.F32, logits, pl, T, V, -100, ploss, plse, &mean));
                Native.Check(Native.realn_op_cross_entropy_bwd(model.Stream.Ptr, DType.F32, logits, pl, T, V, -100, plse, 1f / T, d));
            }
            model.Backward(d);
            long t2 = Stopwatch.GetTimestamp();
            opt.StepOnce();
            long t3 = Stopwatch.GetTimestamp();
            double f = Stopwatch.Frequency;
            fwdBest = Math.Min(fwdBest, (t1 - t0) / f);
            bwdBest = Math.Min(bwdBest, (t2 - t1) / f);
            optBest = Math.Min(optBest, (t3 - t2) / f);
        }

        Step();  // warm-up: faults in the arena, moments, gradients
        double gemm = SgemmGflops(4);
        double best = double.MaxValue;
        var times = new List<double>();
        for (int i = 0; i < steps; i++)
        {
            long t0 = Stopwatch.GetTimestamp();
            Step();
            double t = Stopwatch.GetElapsedTime(t0).TotalSeconds;
            times.Add(t);
            best = Math.Min(best, t);
        }
        double gemmAfter = SgemmGflops(4);
        gemm = Math.Max(gemm, gemmAfter);

        // FLOPs: 6 * N * tokens (N excludes the embedding table, whose forward is a gather; with
        // tied embeddings the head matmul still counts) plus attention: QK^T and PV are
        // 2 * 2 * sum(len^2 / 2) * heads * head_dim forward (causal), x3 for fwd+bwd.
        long n = model.ParameterCount - (cfg.TiedEmbeddings ? 0 : (long)cfg.Vocab * cfg.Hidden);
        double attn = 0;
        foreach (var l in batch.SeqLens) attn += 2.0 * 2.0 * (l * (l + 1) / 2.0) * cfg.Heads * cfg.HeadDim * cfg.Layers;
        double flops = 6.0 * n * T + 3.0 * attn;
        double gflops = flops / best / 1e9;
        // The literal count (N = all parameters, the embedding table included although its
        // forward is a lookup), reported alongside.
        double gflopsAll = (6.0 * model.ParameterCount * T + 3.0 * attn) / best / 1e9;
        var res = new Dictionary<string, object>
        {
            ["model"] = preset,
            ["parameters"] = model.ParameterCount,
            ["flop_parameters"] = n,
            ["tokens"] = T,
            ["sequences"] = seqs,
            ["recompute"] = recompute,
            ["threads"] = Native.GetNumThreads(),
            ["step_seconds_best"] = Math.Round(best, 4),
            ["step_seconds_median"] = Math.Round(times.Order().ElementAt(times.Count / 2), 4),
            ["forward_seconds_best"] = Math.Round(fwdBest, 4),
            ["backward_seconds_best"] = Math.Round(bwdBest, 4),
            ["optimizer_seconds_best"] = Math.Round(optBest, 4),
            ["tokens_per_second"] = Math.Round(T / best, 1),
            ["gflop_per_step"] = Math.Round(flops / 1e9, 2),
            ["train_gflops"] = Math.Round(gflops, 2),
            ["sgemm_1024_gflops"] = Math.Round(gemm, 2),
            ["ratio"] = Math.Round(gflops / gemm, 3),
            ["goal"] = 0.60,
            ["train_gflops_counting_embedding"] = Math.Round(gflopsAll, 2),
            ["ratio_counting_embedding"] = Math.Round(gflopsAll / gemm, 3),
            ["precision"] = precision == ModelPrecision.Bf16 ? "bf16" : "fp32",
        };
        return res;
    }

    private static int RunGenerate(bool asJson, string preset, int batchSize, int promptLen, int newTokens, ModelPrecision precision)
    {
        // measured on every thread as SGEMM is (the engine's choice of one thread per unit of work is off)
        ReaLNative.Engine.Model.ThreadChoice.Enabled = false;
        if (batchSize < 1 || promptLen < 1 || newTokens < 2)
            throw new ArgumentException($"bench generate: --batch >= 1, --prompt-len >= 1, --new-tokens >= 2 (got {batchSize}, {promptLen}, {newTokens})");
        var res = MeasureGenerate(preset, batchSize, promptLen, newTokens, precision);
        if (precision == ModelPrecision.Bf16)
        {
            var fp = MeasureGenerate(preset, batchSize, promptLen, newTokens, ModelPrecision.Fp32);
            res["fp32_decode_tokens_per_second"] = fp["decode_tokens_per_second"];
            res["fp32_prefill_tokens_per_second"] = fp["prefill_tokens_per_second"];
            res["bf16_over_fp32_decode_tokens_per_second"] = Math.Round((double)res["decode_tokens_per_second"] / (double)fp["decode_tokens_per_second"], 3);
            res["bf16_goal"] = ">= 1.6";
        }
        res["load_average"] = LoadAverage();
        Print(asJson, "bench generate", res);
        return 0;
    }

    private static Dictionary<string, object> MeasureGenerate(string preset, int batchSize, int promptLen, int newTokens, ModelPrecision precision)
    {
        var cfg = LlamaConfig.Preset(preset);
        using var model = new LlamaModel(cfg, scalarHead: false);
        model.InitRandom(1);
        if (precision == ModelPrecision.Bf16) model.FreezeToBf16();
        var rng = new Random(5);
        var prompts = Enumerable.Range(0, batchSize).Select(_ => Enumerable.Range(0, promptLen).Select(_ => rng.Next(cfg.Vocab)).ToArray()).ToList();
        var opt = new GenerationOptions { MaxNewTokens = newTokens, Temperature = 1f, TopK = 0, TopP = 1f, Seed = 11 };
        Generator.Generate(model, prompts, opt with { MaxNewTokens = 2 });  // warm-up
        // Prefill alone (1 new token) and the full run; decode = the difference.
        double bestPre = double.MaxValue, bestAll = double.MaxValue;
        int generated = 0;
        for (int r = 0; r < 2; r++)
        {
            long t0 = Stopwatch.GetTimestamp();
            Generator.Generate(model, prompts, opt with { MaxNewTokens = 1 });
            bestPre = Math.Min(bestPre, Stopwatch.GetElapsedTime(t0).TotalSeconds);
            t0 = Stopwatch.GetTimestamp();
            var g = Generator.Generate(model, prompts, opt);
            bestAll = Math.Min(bestAll, Stopwatch.GetElapsedTime(t0).TotalSeconds);
            generated = g.NewTokens.Sum(t => t.Length);
        }
        int decoded = generated - batchSize;  // tokens produced by decode steps (first comes from prefill)
        double decodeSec = Math.Max(1e-9, bestAll - bestPre);
        var res = new Dictionary<string, object>
        {
            ["model"] = preset,
            ["batch"] = batchSize,
            ["prompt_tokens"] = promptLen,
            ["new_tokens"] = newTokens,
            ["threads"] = Native.GetNumThreads(),
            ["prefill_seconds"] = Math.Round(bestPre, 4),
            ["prefill_tokens_per_second"] = Math.Round(batchSize * promptLen / bestPre, 1),
            ["total_seconds"] = Math.Round(bestAll, 4),
            ["decode_tokens_per_second"] = Math.Round(decoded / decodeSec, 1),
            ["end_to_end_new_tokens_per_second"] = Math.Round(generated / bestAll, 1),
            ["precision"] = precision == ModelPrecision.Bf16 ? "bf16" : "fp32",
        };
        return res;
    }

    // The static batch as main decoded it before batch-invariant decode (row dropping, packed
    // prefill, decode steps of more than 64 rows on SGEMM) and the batch-invariant static batch
    // (batch-independent prefill, every decode row in the small-M kernel's order) vs continuous
    // batching in --slots slots and in one slot per sequence (the pipeline's
    // `generation.batching: continuous`: shared prefixes for groups). Continuous results are
    // checked identical to the batch-invariant static batch. Two bounds: the refill bound (the
    // static prefill plus every decoded row at the best per-row cost of the static decode steps),
    // and the schedule bound: a decode step's cost fitted as a + b * rows over the batch-invariant
    // static steps, any schedule of S slots needs at least max(longest output - 1,
    // ceil(decoded rows / S)) steps (the longest sequence decodes one token per step), so it costs
    // at least prefill (shared) + steps * a + rows * b.
    private static int RunRlhfGenerate(bool asJson, string preset, int batchSize, int maxNew, int slots, int groupSize)
    {
        // measured on every thread as SGEMM is (the engine's choice of one thread per unit of work is off)
        ReaLNative.Engine.Model.ThreadChoice.Enabled = false;
        var cfg = LlamaConfig.Preset(preset);
        if (batchSize < 1 || maxNew < 1 || slots < 1 || groupSize < 1 || batchSize % groupSize != 0)
            throw new ArgumentException($"bench generate --rlhf: --batch >= 1, --new-tokens >= 1, --slots >= 1, --group-size >= 1 dividing --batch (got {batchSize}, {maxNew}, {slots}, {groupSize})");
        using var model = new LlamaModel(cfg, scalarHead: false);
        model.InitRandom(1);
        var rng = new Random(5);
        var distinct = Enumerable.Range(0, batchSize / groupSize).Select(_ => Enumerable.Range(0, rng.Next(16, 65)).Select(_ => rng.Next(cfg.Vocab)).ToArray()).ToList();
        var prompts = distinct.SelectMany(p => Enumerable.Repeat(p, groupSize)).ToList();
        var caps = prompts.Select(_ => rng.Next(1, maxNew + 1)).ToArray();
        var opt = new GenerationOptions { MaxNewTokens = maxNew, Temperature = 1f, Seed = 11, MaxNewTokensPerPrompt = caps, RecordSteps = true };
        string load0 = LoadAverage();
        Generator.Generate(model, prompts.Take(2).ToList(), opt with { MaxNewTokens = 2, MaxNewTokensPerPrompt = null });  // warm-up
        long t0 = Stopwatch.GetTimestamp();
        var stat = Generator.Generate(model, prompts, opt with { BatchVariantDecode = true });
        double statSec = Stopwatch.GetElapsedTime(t0).TotalSeconds;
        t0 = Stopwatch.GetTimestamp();
        var indep = Generator.Generate(model, prompts, opt with { BatchIndependentPrefill = true });
        double indepSec = Stopwatch.GetElapsedTime(t0).TotalSeconds;
        t0 = Stopwatch.GetTimestamp();
        var cont = Generator.GenerateContinuous(model, prompts, opt, slots);
        double contSec = Stopwatch.GetElapsedTime(t0).TotalSeconds;
        t0 = Stopwatch.GetTimestamp();
        var whole = Generator.GenerateContinuous(model, prompts, opt, batchSize);
        double wholeSec = Stopwatch.GetElapsedTime(t0).TotalSeconds;
        bool Same(GenerationResult r) => Enumerable.Range(0, batchSize).All(i => indep.NewTokens[i].AsSpan().SequenceEqual(r.NewTokens[i]) && indep.LogProbs[i].AsSpan().SequenceEqual(r.LogProbs[i]));
        bool same = Same(cont), sameWhole = Same(whole);
        int tokens = stat.NewTokens.Sum(t => t.Length);
        // Refill bound, from the static batch as it was.
        var steps = stat.Steps!;
        double prefillSec = steps.Where(s => !s.Decode).Sum(s => s.Seconds);
        var dec = steps.Where(s => s.Decode).ToArray();
        double bestRowSec = dec.Min(s => s.Seconds / s.Rows);
        long decodedRows = dec.Sum(s => (long)s.Rows);
        double bound = statSec / (prefillSec + (statSec - prefillSec - dec.Sum(s => s.Seconds)) + decodedRows * bestRowSec);
        double thin = dec.Where(s => s.Rows < Math.Min(slots, batchSize)).Sum(s => s.Seconds) / Math.Max(1e-12, dec.Sum(s => s.Seconds));
        // Schedule bound, from the batch-invariant static batch (the kernels continuous batching runs).
        var idec = indep.Steps!.Where(s => s.Decode).ToArray();
        double ipre = indep.Steps!.Where(s => !s.Decode).Sum(s => s.Seconds), idecSec = idec.Sum(s => s.Seconds);
        var (a, b) = FitLine(idec.Select(s => (double)s.Rows).ToArray(), idec.Select(s => s.Seconds).ToArray());
        a = Math.Max(0, a);   // a negative intercept is noise: no step costs less than nothing
        double Best(int s) => Math.Max(caps.Max() - 1, Math.Ceiling(decodedRows / (double)s)) * a + decodedRows * b;
        double sharedPre = ipre * whole.PrefilledTokens / Math.Max(1, indep.PrefilledTokens);
        double other = indepSec - ipre - idecSec;   // sampling and bookkeeping, as in the static run
        double scheduleBound = statSec / (sharedPre + other + Best(Math.Min(slots, batchSize)));
        double scheduleBoundAny = statSec / (sharedPre + other + Best(batchSize));
        var cdec = cont.Steps!.Where(s => s.Decode).ToArray();
        var cpre = cont.Steps!.Where(s => !s.Decode).ToArray();
        var res = new Dictionary<string, object>
        {
            ["model"] = preset,
            ["prompts"] = $"{batchSize} ({batchSize / groupSize} distinct x group {groupSize})",
            ["prompt_tokens"] = "16..64",
            ["new_tokens"] = $"1..{maxNew} (total {tokens}; {decodedRows} decoded rows, the first token of each from its prefill)",
            ["slots"] = slots,
            ["threads"] = Native.GetNumThreads(),
            ["load_average_start_end"] = $"{load0} / {LoadAverage()}",
            ["static_tokens_per_second"] = Math.Round(tokens / statSec, 1),
            ["static_prefill_share"] = Math.Round(prefillSec / statSec, 3),
            ["static_decode_share_in_steps_below_slots_rows"] = Math.Round(thin, 3),
            ["static_batch_invariant_tokens_per_second"] = Math.Round(tokens / indepSec, 1),
            ["continuous_tokens_per_second"] = Math.Round(tokens / contSec, 1),
            ["ratio"] = Math.Round(statSec / contSec, 3),
            ["ratio_vs_batch_invariant_static"] = Math.Round(indepSec / contSec, 3),
            ["continuous_steps"] = $"{cdec.Length} decode steps of {cdec.Average(s => s.Rows):F1} rows on average ({cdec.Sum(s => s.Seconds):F2} s), "
                + $"{cpre.Length} prefill forwards of {cpre.Average(s => s.Rows):F1} prompts ({cpre.Sum(s => s.Seconds):F2} s); static: {idec.Length} decode steps ({idecSec:F2} s), prefill {ipre:F2} s",
            ["continuous_one_slot_per_sequence_tokens_per_second"] = Math.Round(tokens / wholeSec, 1),
            ["ratio_one_slot_per_sequence"] = Math.Round(statSec / wholeSec, 3),
            ["prefilled_tokens_static_vs_shared"] = $"{stat.PrefilledTokens} vs {whole.PrefilledTokens}",
            ["refill_bound_without_sharing"] = Math.Round(bound, 3),
            ["decode_step_cost_fit"] = $"{a * 1e3:F2} ms + {b * 1e3:F3} ms per row (batch-invariant static steps of 1..{idec.Max(s => s.Rows)} rows)",
            ["schedule_bound"] = Math.Round(scheduleBound, 3),
            ["schedule_bound_any_slots"] = Math.Round(scheduleBoundAny, 3),
            ["goal"] = 1.5,
            ["tokens_identical"] = same,
            ["tokens_identical_one_slot_per_sequence"] = sameWhole,
        };
        Print(asJson, "bench generate --rlhf", res);
        return same && sameWhole ? 0 : 1;
    }

    /// <summary>Least-squares line y = a + b x.</summary>
    private static (double A, double B) FitLine(double[] x, double[] y)
    {
        double mx = x.Average(), my = y.Average(), sxx = 0, sxy = 0;
        for (int i = 0; i < x.Length; i++) { sxx += (x[i] - mx) * (x[i] - mx); sxy += (x[i] - mx) * (y[i] - my); }
        double b = sxx > 0 ? sxy / sxx : 0;
        return (my - b * mx, b);
    }

    private static void Print(bool asJson, string title, Dictionary<string, object> res)
    {
        if (asJson)
        {
            Console.WriteLine(JsonReport.Write(res));
            return;
        }
        Console.WriteLine(title);
        foreach (var (k, v) in res) Console.WriteLine($"  {k,-34} {v}");
    }
}
