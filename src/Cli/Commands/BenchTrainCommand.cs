// `realn bench train [--json]` and `realn bench generate [--json]`: end-to-end throughput of the
// engine on a GPT-2-small-sized LLaMA (12 layers, hidden 768, 12 heads, vocab 50304), next to
// OpenBLAS SGEMM 1024^3 measured in the same run on the same threads. Train counts
// 6 * N * tokens + causal attention (fwd+bwd: 3 x 2 x 2 x L^2/2 x hidden per sequence and layer).
using System.CommandLine;
using System.Diagnostics;
using System.Text.Json;
using ReaLNative.Engine.Generation;
using ReaLNative.Engine.Model;
using ReaLNative.Engine.Optim;
using ReaLNative.Interop;

namespace ReaLNative.Cli.Commands;

public static unsafe class BenchTrainCommand
{
    public static Command CreateTrain()
    {
        var json = new Option<bool>("--json") { Description = "Print JSON" };
        var steps = new Option<int>("--steps") { Description = "Timed steps", DefaultValueFactory = _ => 3 };
        var cmd = new Command("train", "Training step throughput (GPT-2-small-sized LLaMA, 4 x 64 tokens) vs SGEMM");
        cmd.Options.Add(json);
        cmd.Options.Add(steps);
        cmd.SetAction(p => Train(p.GetValue(json), Math.Max(1, p.GetValue(steps))));
        return cmd;
    }

    public static Command CreateGenerate()
    {
        var json = new Option<bool>("--json") { Description = "Print JSON" };
        var cmd = new Command("generate", "Decode throughput (GPT-2-small-sized LLaMA, 8 prompts x 32 tokens, 32 new tokens)");
        cmd.Options.Add(json);
        cmd.SetAction(p => Generate(p.GetValue(json)));
        return cmd;
    }

    private static readonly LlamaConfig Model = LlamaConfig.Preset("gpt2-small") with { MaxPositions = 1024 };

    /// <summary>Best-of-3 SGEMM 1024^3 GFLOP/s through OpenBLAS directly.</summary>
    internal static double SgemmGflops()
    {
        const int n = 1024;
        using var a = new HostBlock(4L * n * n);
        using var b = new HostBlock(4L * n * n);
        using var c = new HostBlock(4L * n * n);
        a.AsSpan<float>().Fill(0.5f);
        b.AsSpan<float>().Fill(0.25f);
        double best = double.MaxValue;
        for (int i = 0; i < 4; i++)
        {
            long t0 = Stopwatch.GetTimestamp();
            OpenBlas.cblas_sgemm(OpenBlas.RowMajor, OpenBlas.NoTrans, OpenBlas.NoTrans, n, n, n, 1f, (float*)a.Pointer, n, (float*)b.Pointer, n, 0f, (float*)c.Pointer, n);
            if (i > 0) best = Math.Min(best, Stopwatch.GetElapsedTime(t0).TotalSeconds);
        }
        return 2.0 * n * n * n / best / 1e9;
    }

    private static int Train(bool asJson, int steps)
    {
        using var model = new LlamaModel(Model, scalarHead: false);
        model.InitRandom(1);
        using var opt = new AdamW(model, new LrSchedule(1e-4f));
        var rng = new Random(2);
        const int nseq = 4, len = 64;
        var tokens = Enumerable.Range(0, nseq * len).Select(_ => rng.Next(Model.Vocab)).ToArray();
        var batch = new PackedBatch(tokens, Enumerable.Repeat(len, nseq).ToArray());
        int T = tokens.Length, V = Model.Vocab;
        var labels = tokens.Skip(1).Append(0).ToArray();
        double Step()
        {
            long t0 = Stopwatch.GetTimestamp();
            model.ZeroGrad();
            float* logits = model.Forward(batch);
            float* dl = model.OutputGradientBuffer();
            var loss = new float[T];
            var lse = new float[T];
            double mean;
            fixed (int* pl = labels)
            fixed (float* ploss = loss, plse = lse)
            {
                Native.Check(Native.realn_op_cross_entropy_fwd(model.Stream.Ptr, DType.F32, logits, pl, T, V, -100, ploss, plse, &mean));
                Native.Check(Native.realn_op_cross_entropy_bwd(model.Stream.Ptr, DType.F32, logits, pl, T, V, -100, plse, 1f / T, dl));
            }
            model.Backward(dl);
            opt.StepOnce();
            return Stopwatch.GetElapsedTime(t0).TotalSeconds;
        }
        Step();  // warm-up: arena growth, page faults
        double best = double.MaxValue;
        for (int i = 0; i < steps; i++) best = Math.Min(best, Step());
        long n = model.ParameterCount;
        double attn = 3.0 * 2 * 2 * (len * (len + 1) / 2.0) * Model.Hidden * Model.Layers * nseq;
        double flops = 6.0 * n * T + attn;
        double gflops = flops / best / 1e9, sgemm = SgemmGflops();
        // The count includes the embedding table, which costs a lookup, not a GEMM; the
        // stricter figure leaves it out.
        double strict = (6.0 * (n - (long)Model.Vocab * Model.Hidden) * T + attn) / best / 1e9;
        var r = new Dictionary<string, object>
        {
            ["model"] = "gpt2-small-llama", ["parameters"] = n, ["tokens"] = T, ["threads"] = Native.GetNumThreads(),
            ["step_seconds"] = Math.Round(best, 4), ["tokens_per_second"] = Math.Round(T / best, 1),
            ["gflops"] = Math.Round(gflops, 2), ["sgemm_gflops"] = Math.Round(sgemm, 2),
            ["ratio"] = Math.Round(gflops / sgemm, 3), ["goal"] = 0.60,
            ["gflops_excluding_embedding"] = Math.Round(strict, 2), ["ratio_excluding_embedding"] = Math.Round(strict / sgemm, 3),
        };
        if (asJson) Console.WriteLine(JsonSerializer.Serialize(r, new JsonSerializerOptions { WriteIndented = true }));
        else Console.WriteLine($"train step {best * 1e3:F0} ms: {T / best:F0} tokens/s, {gflops:F1} GFLOP/s vs SGEMM {sgemm:F1} GFLOP/s, ratio {gflops / sgemm:F3} (goal >= 0.60); without the embedding table {strict:F1} GFLOP/s, ratio {strict / sgemm:F3}");
        return 0;
    }

    private static int Generate(bool asJson)
    {
        using var model = new LlamaModel(Model, scalarHead: false);
        model.InitRandom(1);
        var rng = new Random(3);
        var prompts = Enumerable.Range(0, 8).Select(_ => Enumerable.Range(0, 32).Select(_ => rng.Next(Model.Vocab)).ToArray()).ToArray();
        var opt = new GenerationOptions { MaxNewTokens = 32, Temperature = 1f, Seed = 5 };
        Generator.Generate(model, prompts, opt with { MaxNewTokens = 2 });  // warm-up
        long t0 = Stopwatch.GetTimestamp();
        var res = Generator.Generate(model, prompts, opt);
        double sec = Stopwatch.GetElapsedTime(t0).TotalSeconds;
        int produced = res.NewTokens.Sum(t => t.Length);
        var r = new Dictionary<string, object>
        {
            ["model"] = "gpt2-small-llama", ["batch"] = prompts.Length, ["prompt_tokens"] = 32, ["new_tokens"] = produced,
            ["seconds"] = Math.Round(sec, 3), ["decode_tokens_per_second"] = Math.Round(produced / sec, 1),
        };
        if (asJson) Console.WriteLine(JsonSerializer.Serialize(r, new JsonSerializerOptions { WriteIndented = true }));
        else Console.WriteLine($"generate: {produced} tokens in {sec:F2} s, {produced / sec:F1} tokens/s (batch 8, prefill 8 x 32 included)");
        return 0;
    }
}
