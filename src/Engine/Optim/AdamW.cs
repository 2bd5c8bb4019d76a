using ReaLNative.Engine.Config;
using ReaLNative.Engine.Model;
using ReaLNative.Interop;

namespace ReaLNative.Engine.Optim;

/// <summary>Learning-rate schedule: linear warmup, then constant, linear or cosine decay to
/// min_lr_ratio * lr at <see cref="TotalSteps"/> (the Hugging Face convention: the peak rate on the
/// first step after warmup). The one implementation; the experiment config's numbers reach it
/// through <see cref="OptimConfigSchedule.LrAt"/>.</summary>
internal sealed record LrSchedule(double Lr, int WarmupSteps = 0, string Decay = "constant", double MinLrRatio = 0.1, int TotalSteps = 1)
{
    /// <summary>Rate of optimizer step <paramref name="step"/> (1-based, as AdamW counts).</summary>
    public float At(long step) => (float)Rate(step);

    /// <summary><see cref="At"/> in double precision.</summary>
    public double Rate(long step)
    {
        long s = step - 1;  // 0-based
        if (WarmupSteps > 0 && s < WarmupSteps) return Lr * (s + 1) / WarmupSteps;
        double t = Math.Clamp((double)(s - WarmupSteps) / Math.Max(1, TotalSteps - WarmupSteps), 0, 1);
        double f = Decay switch
        {
            "constant" => 1.0,
            "linear" => 1.0 - t,
            "cosine" => 0.5 * (1 + Math.Cos(Math.PI * t)),
            _ => throw new ArgumentException($"optim.decay '{Decay}' is not one of constant, linear, cosine"),
        };
        return Decay == "constant" ? Lr : Lr * (MinLrRatio + (1 - MinLrRatio) * f);
    }
}

/// <summary>The `optim:` section's schedule (Config holds the numbers, Optim the formula).</summary>
internal static class OptimConfigSchedule
{
    /// <summary>Learning rate at optimizer step <paramref name="step"/> (0-based) of <paramref name="total"/>.</summary>
    public static double LrAt(this OptimConfig optim, int step, int total) =>
        new LrSchedule(optim.Lr, optim.WarmupSteps, optim.Decay, optim.MinLrRatio, total).Rate(step + 1);
}

/// <summary>
/// AdamW over a model's flat parameter buffer (moments in parallel buffers of the same layout),
/// with global grad-norm clipping folded into the native step's grad_scale.
/// </summary>
internal sealed unsafe class AdamW : IDisposable
{
    private readonly LlamaModel _model;
    private readonly HostBlock _m, _v;

    /// <summary>Moments zero; <paramref name="clipGradNorm"/> &lt;= 0 disables clipping.</summary>
    public AdamW(LlamaModel model, LrSchedule schedule, float beta1 = 0.9f, float beta2 = 0.95f, float eps = 1e-8f,
                 float weightDecay = 0f, float clipGradNorm = 1f)
    {
        _model = model;
        Schedule = schedule;
        Beta1 = beta1; Beta2 = beta2; Eps = eps; WeightDecay = weightDecay; ClipGradNorm = clipGradNorm;
        long bytes = Math.Max(4, model.ParameterCount * 4);
        _m = new HostBlock(bytes, model.ParameterMemory);
        _v = new HostBlock(bytes, model.ParameterMemory);
        _m.AsSpan<float>((int)model.ParameterCount).Clear();
        _v.AsSpan<float>((int)model.ParameterCount).Clear();
    }

    /// <summary>Learning-rate schedule.</summary>
    public LrSchedule Schedule { get; }
    public float Beta1 { get; }
    public float Beta2 { get; }
    public float Eps { get; }
    public float WeightDecay { get; }
    public float ClipGradNorm { get; }
    /// <summary>Steps taken (the last step's 1-based index).</summary>
    public long Step { get; internal set; }

    /// <summary>AdamW m, same layout as the parameters.</summary>
    public Span<float> FirstMoment => new(_m.Pointer, (int)_model.ParameterCount);
    /// <summary>AdamW v, same layout as the parameters.</summary>
    public Span<float> SecondMoment => new(_v.Pointer, (int)_model.ParameterCount);

    /// <summary>Global L2 norm of the gradient buffer.
    /// For a shard of a parallel model: the norm over all its shards (pipeline stages and tensor
    /// ranks of its data replica; replicated tensors counted once), so every shard clips alike.</summary>
    public double GradNorm()
    {
        if (_model.Comm is { } comm && comm.Pp * comm.Tp > 1)
            return Math.Sqrt(comm.MpSum(_model.GradSumSquaresForNorm()));
        double ss;
        Native.Check(Native.realn_op_sumsq(_model.Stream.Ptr, _model.GradientsPointer, _model.ParameterCount, &ss));
        return Math.Sqrt(ss);
    }

    /// <summary>One step; returns the gradient norm before clipping. A non-finite gradient is
    /// refused (the step is skipped and an exception names it) so no NaN reaches the weights.</summary>
    public double StepOnce()
    {
        using var unit = _model.ThreadChoice.Begin("optimizer step", _model.ParameterCount);
        double norm = GradNorm();
        if (!double.IsFinite(norm)) throw new TrainingFailedException($"gradient norm is {norm} at optimizer step {Step + 1}; step refused (are the weights or the learning rate finite?)");
        Step++;
        var o = AdamWOpts.Default;
        o.Lr = Schedule.At(Step);
        o.Beta1 = Beta1; o.Beta2 = Beta2; o.Eps = Eps; o.WeightDecay = WeightDecay;
        o.GradScale = ClipGradNorm > 0 && norm > ClipGradNorm ? (float)(ClipGradNorm / norm) : 1f;
        o.Step = Step;
        Native.Check(Native.realn_op_adamw(_model.Stream.Ptr, &o, _model.ParametersPointer, _model.GradientsPointer,
            (float*)_m.Pointer, (float*)_v.Pointer, _model.ParameterCount));
        return norm;
    }

    /// <summary>Restores state saved by a checkpoint.</summary>
    public void Restore(long step, ReadOnlySpan<float> m, ReadOnlySpan<float> v)
    {
        Step = step;
        m.CopyTo(FirstMoment);
        v.CopyTo(SecondMoment);
    }

    /// <summary>Frees the moments.</summary>
    public void Dispose()
    {
        _m.Dispose();
        _v.Dispose();
    }
}
