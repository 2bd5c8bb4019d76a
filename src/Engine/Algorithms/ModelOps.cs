// The bridge between losses and the model: per-token log-probs and values over packed
// sequences, and backward from d loss / d logp (native logprobs_bwd, then the model backward)
// or from d loss / d value. Row p of the output predicts token p + 1, so action token p is
// scored by row p - 1, and a critic's value for action p is read from row p - 1.
// Each is one unit of the model's ThreadChoice (its forward, head op and backward on the same threads).
using ReaLNative.Engine.Model;
using ReaLNative.Engine.Parallelism;
using ReaLNative.Interop;

namespace ReaLNative.Engine.Algorithms;

internal static unsafe class ModelOps
{
    private const int Ignore = -100;

    private static int[] NextTokenLabels(PackedBatch b) => ShardRunner.NextTokenLabels(b);

    /// <summary>Forward; returns log-probs of the action tokens (temperature-scaled), and keeps
    /// what <see cref="BackwardLogProbs"/> needs in <paramref name="lse"/>.</summary>
    public static float[] LogProbs(LlamaModel model, ScoredBatch batch, float temperature, out float[] lse)
    {
        var b = batch.Packed;
        using var unit = model.ThreadChoice.Begin("log-probs", b.TotalTokens);
        int T = b.TotalTokens, V = model.Config.Vocab;
        float* logits = model.Forward(b);
        var labels = NextTokenLabels(b);
        var all = new float[T];
        lse = new float[T];
        fixed (int* pl = labels)
        fixed (float* pa = all, ps = lse)
            Native.Check(Native.realn_op_logprobs_fwd(model.Stream.Ptr, DType.F32, logits, pl, null, T, V, temperature, pa, null, ps));
        model.Stream.Synchronize();
        var r = new float[batch.Actions];
        for (int k = 0; k < r.Length; k++) r[k] = all[batch.ActionIndex[k] - 1];
        return r;
    }

    /// <summary>Backward from d loss / d logp of the actions (after <see cref="LogProbs"/> on the same batch).</summary>
    public static void BackwardLogProbs(LlamaModel model, ScoredBatch batch, float temperature, float[] lse, ReadOnlySpan<float> dActionLogp)
    {
        var b = batch.Packed;
        using var unit = model.ThreadChoice.Begin("log-probs backward", b.TotalTokens);
        int T = b.TotalTokens, V = model.Config.Vocab;
        var labels = NextTokenLabels(b);
        var dl = new float[T];
        for (int k = 0; k < batch.Actions; k++) dl[batch.ActionIndex[k] - 1] = dActionLogp[k];
        float* logits = model.Forward(b); // recompute: the arena holds one forward at a time
        float* dOut = model.OutputGradientBuffer();
        fixed (int* pl = labels)
        fixed (float* pd = dl, ps = lse)
            Native.Check(Native.realn_op_logprobs_bwd(model.Stream.Ptr, DType.F32, logits, pl, null, T, V, temperature, ps, pd, null, dOut));
        model.Backward(dOut);
    }

    /// <summary>Scalar-head outputs: the value before each action (row p - 1), and the score at each sequence's last token.</summary>
    public static (float[] ActionValues, float[] LastScores) Values(LlamaModel model, ScoredBatch batch)
    {
        if (!model.ScalarHead) throw new ArgumentException("values need a scalar-head model");
        var b = batch.Packed;
        using var unit = model.ThreadChoice.Begin("values", b.TotalTokens);
        float* o = model.Forward(b);
        model.Stream.Synchronize();
        var v = new float[batch.Actions];
        for (int k = 0; k < v.Length; k++) v[k] = o[batch.ActionIndex[k] - 1];
        var last = new float[b.Count];
        for (int i = 0; i < b.Count; i++) last[i] = o[b.CuSeqlens[i + 1] - 1];
        return (v, last);
    }

    /// <summary>Backward of a scalar-head model from d loss / d action values and d loss / d last-token scores
    /// (either may be empty); runs its own forward first.</summary>
    public static void BackwardValues(LlamaModel model, ScoredBatch batch, ReadOnlySpan<float> dActionValues, ReadOnlySpan<float> dLastScores)
    {
        var b = batch.Packed;
        using var unit = model.ThreadChoice.Begin("values backward", b.TotalTokens);
        model.Forward(b);
        float* d = model.OutputGradientBuffer();
        new Span<float>(d, b.TotalTokens).Clear();
        for (int k = 0; k < dActionValues.Length; k++) d[batch.ActionIndex[k] - 1] += dActionValues[k];
        for (int i = 0; i < dLastScores.Length; i++) d[b.CuSeqlens[i + 1] - 1] += dLastScores[i];
        model.Backward(d);
    }

    /// <summary>SFT: mean next-token cross-entropy over the action tokens; accumulates gradients.</summary>
    public static double SftStep(LlamaModel model, ScoredBatch batch)
    {
        var b = batch.Packed;
        using var unit = model.ThreadChoice.Begin("sft step", b.TotalTokens);
        int T = b.TotalTokens, V = model.Config.Vocab;
        var labels = new int[T];
        Array.Fill(labels, Ignore);
        foreach (int at in batch.ActionIndex) labels[at - 1] = b.Tokens[at];
        float* logits = model.Forward(b);
        var loss = new float[T];
        var lse = new float[T];
        double mean;
        float* dOut = model.OutputGradientBuffer();
        fixed (int* pl = labels)
        fixed (float* plo = loss, ps = lse)
        {
            Native.Check(Native.realn_op_cross_entropy_fwd(model.Stream.Ptr, DType.F32, logits, pl, T, V, Ignore, plo, ps, &mean));
            Native.Check(Native.realn_op_cross_entropy_bwd(model.Stream.Ptr, DType.F32, logits, pl, T, V, Ignore, ps, 1f / batch.Actions, dOut));
        }
        model.Backward(dOut);
        return mean;
    }

    /// <summary>Copies every parameter the two models share by name and shape (e.g. an LM model's trunk into a scalar-head model).</summary>
    public static void CopyShared(LlamaModel src, LlamaModel dst)
    {
        foreach (var v in dst.Layout.Views)
            if (src.Layout.TryGet(v.Name, out var s) && s.LocalElements == v.LocalElements)
                src.View(v.Name).CopyTo(dst.View(v.Name));
    }
}
