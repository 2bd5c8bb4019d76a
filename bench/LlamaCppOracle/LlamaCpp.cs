// llama.cpp (LLamaSharp 0.30.0, CPU backend) running a GGUF export of our model with F32 weights
// and F32 KV cache: greedy batched prefill + decode with per-sequence positions, and per-token
// logits for the converter cross-check.
using LLama;
using LLama.Common;
using LLama.Native;

namespace ReaLNative.LlamaCppOracle;

/// <summary>One loaded GGUF model and one context sized for <c>maxSeqs</c> sequences of <c>maxLen</c> tokens.</summary>
internal sealed class LlamaCpp : IDisposable
{
    private readonly LLamaWeights _weights;
    private readonly LLamaContext _ctx;
    private readonly int _vocab;

    private static bool s_logConfigured;

    public LlamaCpp(string ggufPath, int threads, int maxSeqs, int maxLen, int maxBatchTokens)
    {
        if (!s_logConfigured)
        {
            // llama.cpp logs every tensor at load; keep errors only.
            NativeLibraryConfig.All.WithLogCallback((level, msg) => { if (level == LLamaLogLevel.Error) Console.Error.Write(msg); });
            s_logConfigured = true;
        }
        var p = new ModelParams(ggufPath)
        {
            ContextSize = (uint)(maxSeqs * maxLen),
            BatchSize = (uint)maxBatchTokens,
            UBatchSize = (uint)Math.Min(512, maxBatchTokens),
            SeqMax = (uint)maxSeqs,
            Threads = threads,
            BatchThreads = threads,
            GpuLayerCount = 0,
            TypeK = GGMLType.GGML_TYPE_F32,
            TypeV = GGMLType.GGML_TYPE_F32,
            // Flash attention (default "auto", on for CPU) rounds attention through F16: relative
            // logits error ~1e-3 against F32. Off keeps the whole path F32 (error ~1e-6).
            FlashAttention = false,
        };

        _weights = LLamaWeights.LoadFromFile(p);
        _ctx = _weights.CreateContext(p);
        _vocab = _weights.Vocab.Count;
    }

    public int Vocab => _vocab;

    /// <summary>llama.cpp's tokenization of <paramref name="text"/> (special tokens parsed, no BOS added).</summary>
    public int[] Tokenize(string text) => [.. _weights.Tokenize(text, false, true, System.Text.Encoding.UTF8).Select(t => (int)t)];

    /// <summary>The model's GGUF metadata as llama.cpp reports it.</summary>
    public IReadOnlyDictionary<string, string> Metadata => _weights.Metadata;

    /// <summary>Logits of every position of one sequence [T, vocab] (fresh cache).</summary>
    public float[] AllLogits(int[] tokens)
    {
        _ctx.NativeHandle.MemoryClear();
        var batch = new LLamaBatch();
        for (int i = 0; i < tokens.Length; i++) batch.Add((LLamaToken)tokens[i], i, (LLamaSeqId)0, true);
        Check(_ctx.NativeHandle.Decode(batch));
        var res = new float[(long)tokens.Length * _vocab];
        for (int i = 0; i < tokens.Length; i++) _ctx.NativeHandle.GetLogitsIth(i).CopyTo(res.AsSpan(i * _vocab, _vocab));
        return res;
    }

    /// <summary>Greedy generation of <paramref name="newTokens"/> tokens per prompt: seconds of the
    /// prefill (which yields the first token) and of the decode steps, and the tokens.</summary>
    public (double PrefillSec, double DecodeSec, int[][] Tokens) Greedy(IReadOnlyList<int[]> prompts, int newTokens)
    {
        int B = prompts.Count;
        _ctx.NativeHandle.MemoryClear();
        var outTok = prompts.Select(_ => new int[newTokens]).ToArray();
        var batch = new LLamaBatch();
        long t0 = System.Diagnostics.Stopwatch.GetTimestamp();
        var logitIndex = new int[B];
        for (int s = 0; s < B; s++)
        {
            var p = prompts[s];
            for (int i = 0; i < p.Length; i++)
            {
                if (i == p.Length - 1) logitIndex[s] = batch.TokenCount;
                batch.Add((LLamaToken)p[i], i, (LLamaSeqId)s, i == p.Length - 1);
            }
        }
        Check(_ctx.NativeHandle.Decode(batch));
        for (int s = 0; s < B; s++) outTok[s][0] = ArgMax(_ctx.NativeHandle.GetLogitsIth(logitIndex[s]));
        double pre = System.Diagnostics.Stopwatch.GetElapsedTime(t0).TotalSeconds;
        t0 = System.Diagnostics.Stopwatch.GetTimestamp();
        for (int step = 1; step < newTokens; step++)
        {
            batch.Clear();
            for (int s = 0; s < B; s++) batch.Add((LLamaToken)outTok[s][step - 1], prompts[s].Length + step - 1, (LLamaSeqId)s, true);
            Check(_ctx.NativeHandle.Decode(batch));
            for (int s = 0; s < B; s++) outTok[s][step] = ArgMax(_ctx.NativeHandle.GetLogitsIth(s));
        }
        double dec = System.Diagnostics.Stopwatch.GetElapsedTime(t0).TotalSeconds;
        return (pre, dec, outTok);
    }

    private static int ArgMax(ReadOnlySpan<float> row)
    {
        int best = 0;
        for (int i = 1; i < row.Length; i++) if (row[i] > row[best]) best = i;
        return best;
    }

    private static void Check(DecodeResult r)
    {
        if (r != DecodeResult.Ok) throw new InvalidOperationException($"llama.cpp decode failed: {r}");
    }

    public void Dispose()
    {
        _ctx.Dispose();
        _weights.Dispose();
    }
}
