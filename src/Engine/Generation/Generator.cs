using ReaLNative.Engine.Model;
using ReaLNative.Interop;

namespace ReaLNative.Engine.Generation;

/// <summary>Sampling settings. Temperature 0 = greedy.</summary>
internal sealed record GenerationOptions
{
    /// <summary>New tokens per sequence at most.</summary>
    public int MaxNewTokens { get; init; } = 16;
    /// <summary>Softmax temperature; 0 = greedy argmax.</summary>
    public float Temperature { get; init; } = 1f;
    /// <summary>Keep the k most likely tokens (0 = all).</summary>
    public int TopK { get; init; }
    /// <summary>Nucleus: keep the smallest set of tokens with mass &gt;= p (1 = all).</summary>
    public float TopP { get; init; } = 1f;
    /// <summary>End-of-sequence token (-1: none); generation of a sequence stops after it.</summary>
    public int EosToken { get; init; } = -1;
    /// <summary>Sampling seed: same seed, same prompts, same result.</summary>
    public ulong Seed { get; init; }

    /// <summary>True when top-k/top-p masks are in effect (then masks are returned).</summary>
    public bool Filters => Temperature > 0 && (TopK > 0 || TopP < 1f);
}

/// <summary>Generated sequences: prompt + new tokens, the log-prob of each new token under the
/// distribution it was drawn from, and (when top-k/top-p filtered) the mask of allowed tokens per
/// new token, which training must reuse to recompute the same log-probs.</summary>
internal sealed class GenerationResult
{
    /// <summary>The prompts, as given.</summary>
    public required int[][] Prompts { get; init; }
    /// <summary>Generated tokens per sequence (EOS included when hit).</summary>
    public required int[][] NewTokens { get; init; }
    /// <summary>Log-prob of each new token under the (tempered, filtered) sampling distribution.</summary>
    public required float[][] LogProbs { get; init; }
    /// <summary>Per sequence, per new token, vocab bytes (1 = allowed); null without filtering.</summary>
    public byte[][]? Masks { get; init; }
    /// <summary>Whether each sequence stopped at EOS (else at max_new_tokens).</summary>
    public required bool[] EndedWithEos { get; init; }

    /// <summary>Prompt + new tokens of sequence i.</summary>
    public int[] Sequence(int i) => [.. Prompts[i], .. NewTokens[i]];
}

/// <summary>
/// Batched generation: one prefill of all prompts (packed, no padding) that fills a slot-based
/// KV cache, then decode steps of one token per unfinished sequence against the cache, sampling
/// on the native op with a seed and the step as offset (reproducible).
/// </summary>
internal unsafe class Generator
{
    /// <summary>Generates for all prompts in one batch; errors name the bad option.</summary>
    public static GenerationResult Generate(LlamaModel model, IReadOnlyList<int[]> prompts, GenerationOptions opt)
    {
        if (model.ScalarHead) throw new ArgumentException("generation needs a language-model head, not a scalar head");
        if (prompts.Count == 0) throw new ArgumentException("generation needs at least one prompt");
        if (opt.MaxNewTokens < 1) throw new ArgumentException($"max_new_tokens must be >= 1 (got {opt.MaxNewTokens})");
        if (opt.Temperature < 0) throw new ArgumentException($"temperature must be >= 0 (got {opt.Temperature})");
        if (!(opt.TopP > 0 && opt.TopP <= 1)) throw new ArgumentException($"top_p must be in (0, 1] (got {opt.TopP})");
        var c = model.Config;
        int B = prompts.Count, V = c.Vocab;
        int maxPrompt = 0;
        foreach (var p in prompts)
        {
            if (p.Length == 0) throw new ArgumentException("empty prompt");
            maxPrompt = Math.Max(maxPrompt, p.Length);
        }
        int maxLen = maxPrompt + opt.MaxNewTokens;
        if (maxLen > c.MaxPositions) throw new ArgumentException($"prompt + max_new_tokens = {maxLen} exceeds max_position_embeddings {c.MaxPositions}");
        using var cache = new KvCache(c, B, maxLen);
        var newTok = Enumerable.Range(0, B).Select(_ => new List<int>()).ToArray();
        var logp = Enumerable.Range(0, B).Select(_ => new List<float>()).ToArray();
        var masks = opt.Filters ? Enumerable.Range(0, B).Select(_ => new List<byte>()).ToArray() : null;
        var eos = new bool[B];
        var logits = new float[B * V];
        var toks = new int[B];
        var lp = new float[B];
        var mask = new byte[B * V];

        // Prefill.
        var all = prompts.SelectMany(p => p).ToArray();
        var slots = new int[all.Length];
        var pos = new int[all.Length];
        for (int i = 0, o = 0; i < B; i++)
            for (int j = 0; j < prompts[i].Length; j++, o++) { slots[o] = i; pos[o] = j; }
        var active = Enumerable.Range(0, B).ToList();
        fixed (float* pl = logits)
            model.ForwardCached(cache, all, slots, pos, decode: false, pl);
        for (int step = 0; ; step++)
        {
            int n = active.Count;
            var so = SampleOpts.Default;
            so.Temperature = opt.Temperature;
            so.TopK = opt.TopK;
            so.TopP = opt.TopP;
            so.Seed = opt.Seed;
            so.Offset = (ulong)step;
            fixed (float* pl = logits)
            fixed (int* pt = toks)
            fixed (float* plp = lp)
            fixed (byte* pm = mask)
                Native.Check(Native.realn_op_sample(model.Stream.Ptr, DType.F32, pl, n, V, &so, pt, masks is null ? null : pm, plp));
            var next = new List<int>();
            for (int r = 0; r < n; r++)
            {
                int i = active[r];
                newTok[i].Add(toks[r]);
                logp[i].Add(lp[r]);
                masks?[i].AddRange(mask.AsSpan(r * V, V));
                if (toks[r] == opt.EosToken) eos[i] = true;
                else if (newTok[i].Count < opt.MaxNewTokens) next.Add(i);
            }
            if (next.Count == 0) break;
            // Decode one token for every unfinished sequence; its row order follows `next`.
            var dt = new int[next.Count];
            var ds = new int[next.Count];
            var dp = new int[next.Count];
            for (int r = 0; r < next.Count; r++)
            {
                int i = next[r];
                dt[r] = newTok[i][^1];
                ds[r] = i;
                dp[r] = prompts[i].Length + newTok[i].Count - 1;
            }
            fixed (float* pl = logits)
                model.ForwardCached(cache, dt, ds, dp, decode: true, pl);
            active = next;
        }
        return new GenerationResult
        {
            Prompts = prompts.Select(p => p.ToArray()).ToArray(),
            NewTokens = newTok.Select(l => l.ToArray()).ToArray(),
            LogProbs = logp.Select(l => l.ToArray()).ToArray(),
            Masks = masks?.Select(l => l.ToArray()).ToArray(),
            EndedWithEos = eos,
        };
    }
}
