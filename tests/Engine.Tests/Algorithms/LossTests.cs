// Each RLHF loss against values worked out by hand (the arithmetic is in the comments).
using ReaLNative.Engine.Algorithms;
using ReaLNative.Engine.Config;
using ReaLNative.Engine.Tasks;
using ReaLNative.Interop;
using Xunit;

namespace ReaLNative.Engine.Tests.Algorithms;

public class LossTests
{
    private const int P = 5; // decimal places for float32 results

    private static bool[] All(int n) => Enumerable.Repeat(true, n).ToArray();

    [Fact]
    public void PpoPolicyClipsBothSides()
    {
        // old logp 0, so ratio r = exp(logp). eps = 0.2, 4 one-token sequences, token mean.
        //  r=1.1 A=1 : s1=-1.1 s2=-1.1 -> -1.1, grad -A r / n = -1.1/4
        //  r=1.5 A=1 : s1=-1.5 s2=-1.2 -> -1.2 clipped, grad 0
        //  r=0.5 A=-1: s1= 0.5 s2= 0.8 -> 0.8 clipped, grad 0
        //  r=0.5 A=1 : s1=-0.5 s2=-0.8 -> -0.5 (unclipped branch is the max), grad -0.5/4
        // loss = (-1.1 - 1.2 + 0.8 - 0.5) / 4 = -0.5
        float[] logp = [MathF.Log(1.1f), MathF.Log(1.5f), MathF.Log(0.5f), MathF.Log(0.5f)];
        float[] old = [0, 0, 0, 0], adv = [1, 1, -1, 1];
        var g = new float[4];
        var s = Losses.ClippedPolicy(logp, old, adv, [], [0, 1, 2, 3, 4], All(4), 0.2, 0.2, "token", 0, g);
        Assert.Equal(-0.5, s.Loss, P);
        Assert.Equal(0.5, s.ClipFraction, P);
        Assert.Equal(4, s.Tokens);
        Assert.Equal(-0.275, g[0], P);
        Assert.Equal(-0.125, g[3], P);
        Assert.Equal(0, g[1]); Assert.Equal(0, g[2]);
    }

    [Fact]
    public void DecoupledPpoWeightsEachTokenByProximalOverBehaviour()
    {
        // Proximal (old) logp 0, so r = exp(logp); behaviour logp b gives weight w = exp(0 - b).
        //  token 0: r=1.1 A=1,  b=ln(0.5) -> w=2   : unclipped -1.1   -> -2.2,  grad -A r w / n = -2.2/3
        //  token 1: r=1.5 A=1,  b=ln(2)   -> w=0.5 : clipped   -1.2   -> -0.6,  grad 0
        //  token 2: r=0.5 A=1,  b=ln(4)   -> w=0.25: unclipped -0.5   -> -0.125, grad -0.125/3
        // loss = (-2.2 - 0.6 - 0.125) / 3 = -0.975
        float[] logp = [MathF.Log(1.1f), MathF.Log(1.5f), MathF.Log(0.5f)];
        float[] old = [0, 0, 0], adv = [1, 1, 1], behaviour = [MathF.Log(0.5f), MathF.Log(2f), MathF.Log(4f)];
        var g = new float[3];
        var s = Losses.ClippedPolicy(logp, old, adv, [], [0, 1, 2, 3], All(3), 0.2, 0.2, "token", 0, g, behaviour);
        Assert.Equal(-0.975, s.Loss, P);
        Assert.Equal(-2.2 / 3, g[0], P);
        Assert.Equal(0, g[1]);
        Assert.Equal(-0.125 / 3, g[2], P);
        // Cap 1.5: token 0's weight 2 is above it and the token leaves the surrogate (still counted in the mean).
        var capped = Losses.ClippedPolicy(logp, old, adv, [], [0, 1, 2, 3], All(3), 0.2, 0.2, "token", 0, g, behaviour, behaviourWeightCap: 1.5);
        Assert.Equal((-0.6 - 0.125) / 3, capped.Loss, P);
        Assert.Equal(0, g[0]);
        Assert.Throws<ArgumentException>(() => Losses.ClippedPolicy(logp, old, adv, [], [0, 1, 2, 3], All(3), 0.2, 0.2, "token", 0, g, behaviour, -1));
        Assert.Throws<ArgumentException>(() => Losses.ClippedPolicy(logp, old, adv, [], [0, 1, 2, 3], All(3), 0.2, 0.2, "token", 0, g, behaviour[..2]));
    }

    [Fact]
    public void DecoupledPpoWithBehaviourEqualToProximalIsTheOnPolicyLossBitForBit()
    {
        var rng = new Random(7);
        float[] R(int n, double scale) => Enumerable.Range(0, n).Select(_ => (float)((rng.NextDouble() - 0.5) * scale)).ToArray();
        float[] logp = R(40, 2), old = R(40, 2), adv = R(40, 4), refLp = R(40, 2);
        int[] cu = [0, 7, 19, 19, 33, 40];
        bool[] keep = [true, true, true, false, true];
        foreach (var agg in new[] { "token", "sequence" })
        {
            float[] g0 = new float[40], g1 = new float[40];
            var a = Losses.ClippedPolicy(logp, old, adv, refLp, cu, keep, 0.2, 0.28, agg, 0.05, g0);
            var b = Losses.ClippedPolicy(logp, old, adv, refLp, cu, keep, 0.2, 0.28, agg, 0.05, g1, old);
            Assert.Equal(a, b);
            Assert.Equal(g0, g1);
        }
    }

    [Fact]
    public void DecoupledPpoGradientMatchesFiniteDifference()
    {
        float[] logp = [-0.3f, -1.2f, -0.05f], old = [-0.35f, -1.0f, -0.4f], adv = [0.7f, -1.3f, 0.4f], refLp = [-0.2f, -1.5f, -0.3f];
        float[] behaviour = [-0.6f, -0.9f, -0.2f];
        int[] cu = [0, 2, 3];
        var g = new float[3];
        Losses.ClippedPolicy(logp, old, adv, refLp, cu, All(2), 0.2, 0.28, "token", 0.1, g, behaviour);
        for (int i = 0; i < 3; i++)
        {
            const float h = 1e-3f;
            var lp = (float[])logp.Clone(); lp[i] += h;
            var lm = (float[])logp.Clone(); lm[i] -= h;
            double fd = (Losses.ClippedPolicy(lp, old, adv, refLp, cu, All(2), 0.2, 0.28, "token", 0.1, new float[3], behaviour).Loss -
                         Losses.ClippedPolicy(lm, old, adv, refLp, cu, All(2), 0.2, 0.28, "token", 0.1, new float[3], behaviour).Loss) / (2 * h);
            Assert.Equal(fd, g[i], 3);
        }
    }

    [Fact]
    public void PpoPolicyGradientMatchesFiniteDifference()
    {
        float[] logp = [-0.3f, -1.2f, -0.05f], old = [-0.35f, -1.0f, -0.4f], adv = [0.7f, -1.3f, 0.4f], refLp = [-0.2f, -1.5f, -0.3f];
        int[] cu = [0, 2, 3];
        foreach (var agg in new[] { "token", "sequence" })
        {
            var g = new float[3];
            Losses.ClippedPolicy(logp, old, adv, refLp, cu, All(2), 0.2, 0.28, agg, 0.1, g);
            for (int i = 0; i < 3; i++)
            {
                const float h = 1e-3f;
                var lp = (float[])logp.Clone(); lp[i] += h;
                var lm = (float[])logp.Clone(); lm[i] -= h;
                double fd = (Losses.ClippedPolicy(lp, old, adv, refLp, cu, All(2), 0.2, 0.28, agg, 0.1, new float[3]).Loss -
                             Losses.ClippedPolicy(lm, old, adv, refLp, cu, All(2), 0.2, 0.28, agg, 0.1, new float[3]).Loss) / (2 * h);
                Assert.Equal(fd, g[i], 3);
            }
        }
    }

    [Fact]
    public void ClippedValueLoss()
    {
        // old 0, returns 1, eps 0.2:
        //  v=0.1 : vc=0.1, l1=l2=0.81, grad (0.1-1)/3 = -0.3
        //  v=0.5 : vc=0.2, l1=0.25, l2=0.64 -> 0.64 clipped, grad 0
        //  v=-0.5: vc=-0.2, l1=2.25, l2=1.44 -> 2.25, grad -1.5/3 = -0.5
        // loss = 0.5 (0.81 + 0.64 + 2.25) / 3 = 0.616667
        float[] v = [0.1f, 0.5f, -0.5f], old = [0, 0, 0], ret = [1, 1, 1], mask = [1, 1, 1];
        var g = new float[3];
        var s = Losses.ClippedValue(v, old, ret, mask, 0.2, g);
        Assert.Equal(3.7 / 6, s.Loss, P);
        Assert.Equal(1.0 / 3, s.ClipFraction, P);
        Assert.Equal(-0.3, g[0], P); Assert.Equal(0, g[1]); Assert.Equal(-0.5, g[2], P);
    }

    [Fact]
    public void KlShapedRewards()
    {
        // r_t = -0.1 (logp - ref) = [-0.05, 0, -0.05]; seq 0 ended with EOS: its last token gets
        // clip(10, -5, 5) = 5; seq 1 was truncated: no score.
        float[] logp = [-1, -2, -0.5f], refLp = [-1.5f, -2, -1];
        var r = new float[3];
        Losses.KlShapedRewards(logp, refLp, [0, 2, 3], [10, 3], [true, false], 0.1, 5, r);
        Assert.Equal(-0.05, r[0], P); Assert.Equal(5, r[1], P); Assert.Equal(-0.05, r[2], P);
    }

    [Fact]
    public void GaeOnNativeOp()
    {
        // seq 0: r = [1, 0, 2], V = [0.5, 1.0, 0.2], bootstrap 0, gamma 0.9, lambda 0.8 (gl = 0.72)
        //   d2 = 2 - 0.2 = 1.8                 A2 = 1.8
        //   d1 = 0 + 0.9*0.2 - 1 = -0.82       A1 = -0.82 + 0.72*1.8 = 0.476
        //   d0 = 1 + 0.9*1 - 0.5 = 1.4         A0 = 1.4 + 0.72*0.476 = 1.74272
        //   R = A + V = [2.24272, 1.476, 2.0]
        // seq 1: r = [3], V = [1], bootstrap 0.5: A = 3 + 0.45 - 1 = 2.45, R = 3.45
        float[] rewards = [1, 0, 2, 3];
        float[] values = [0.5f, 1.0f, 0.2f, 0, 1, 0.5f];
        int[] cu = [0, 3, 4];
        var a = new float[4]; var ret = new float[4];
        using var stream = NativeStream.Cpu();
        Gae.Compute(stream, rewards, values, cu, 0.9, 0.8, a, ret);
        Assert.Equal(1.74272, a[0], P); Assert.Equal(0.476, a[1], P); Assert.Equal(1.8, a[2], P); Assert.Equal(2.45, a[3], P);
        Assert.Equal(2.24272, ret[0], P); Assert.Equal(1.476, ret[1], P); Assert.Equal(2.0, ret[2], P); Assert.Equal(3.45, ret[3], P);

        Assert.Equal([0.5f, 1.0f, 0.2f, 0, 1, 0], Gae.WithBootstrap([0.5f, 1.0f, 0.2f, 1], cu));
        Assert.Throws<ArgumentException>(() => Gae.Compute(stream, rewards, values.AsSpan(0, 5), cu, 1, 1, a, ret));
    }

    [Fact]
    public void AdvantageNormalisation()
    {
        // masked [1, 2, 3]: mean 2, population std sqrt(2/3) = 0.816497
        float[] x = [1, 2, 3, 100];
        Losses.NormalizeMasked(x, [1, 1, 1, 0]);
        Assert.Equal(-1.224737, x[0], 4); Assert.Equal(0, x[1], P); Assert.Equal(1.224737, x[2], 4); Assert.Equal(0, x[3]);
    }

    [Fact]
    public void DpoLoss()
    {
        // pair 0: h = (-1 - -2) - (-3 - -2) = 2, z = 0.5*2 = 1, loss softplus(-1) = 0.313262
        // pair 1: h = -2, z = -1, loss softplus(1) = 1.313262; mean 0.813262
        // dz = -sigmoid(-z): pair 0 -0.268941, pair 1 -0.731059; d pi_c = beta dz / n
        var gc = new float[2]; var gr = new float[2];
        var s = Losses.Dpo([-1, -3], [-3, -1], [-2, -2], [-2, -2], 0.5, gc, gr);
        Assert.Equal(0.813262, s.Loss, P);
        Assert.Equal(0.5, s.Accuracy);
        Assert.Equal(-0.268941 * 0.5 / 2, gc[0], P); Assert.Equal(0.268941 * 0.5 / 2, gr[0], P);
        Assert.Equal(-0.731059 * 0.5 / 2, gc[1], P); Assert.Equal(0.731059 * 0.5 / 2, gr[1], P);
    }

    [Fact]
    public void PairwiseRewardLoss()
    {
        // z = [2, -1]: loss = (softplus(-2) + softplus(1)) / 2 = (0.1269280 + 1.3132617) / 2 = 0.7200948
        // d chosen = -sigmoid(-z) / 2 = [-0.059601, -0.365529]
        var gc = new float[2]; var gr = new float[2];
        var s = Losses.PairwiseReward([2, 0], [0, 1], gc, gr);
        Assert.Equal(0.7200948, s.Loss, P);
        Assert.Equal(0.5, s.Accuracy);
        Assert.Equal(0.5, s.MeanMargin, P);
        Assert.Equal(-0.059601, gc[0], P); Assert.Equal(-0.365529, gc[1], P);
        Assert.Equal(0.059601, gr[0], P); Assert.Equal(0.365529, gr[1], P);
        // extreme margins stay finite
        Assert.True(double.IsFinite(Losses.PairwiseReward([-1000], [1000], new float[1], new float[1]).Loss));
    }

    [Fact]
    public void ClippedPolicyAsymmetricClipAggregationAndK3()
    {
        // old logp 0 (r = exp(logp)); sequence 0 = tokens 0,1, sequence 1 = token 2; clip [1-0.2, 1+0.28].
        //  t0 r=1.25 A=1 : s1=-1.25, s2=-1.25 (1.25 < 1.28, not clipped) -> -1.25, d/dlogp = -A r = -1.25
        //  t1 r=0.7 A=-1 : s1=0.7, s2=0.8 -> 0.8 clipped, grad 0
        //  t2 r=1 A=2    : -2, grad -2
        // token:    w = 1/3       : surrogate (-1.25 + 0.8 - 2)/3 = -0.816667; grads [-1.25/3, 0, -2/3]
        // sequence: w = 1/4, 1/2  : 0.25 (-1.25 + 0.8) + 0.5 (-2) = -1.1125;    grads [-0.3125, 0, -1]
        float[] logp = [MathF.Log(1.25f), MathF.Log(0.7f), 0], old = [0, 0, 0], adv = [1, -1, 2];
        int[] cu = [0, 2, 3];
        var g = new float[3];
        var t = Losses.ClippedPolicy(logp, old, adv, [], cu, All(2), 0.2, 0.28, "token", 0, g);
        Assert.Equal(-0.816667, t.Loss, P); Assert.Equal(1 / 3.0, t.ClipFraction, P); Assert.Equal(3, t.Tokens);
        Assert.Equal(-1.25 / 3, g[0], P); Assert.Equal(0, g[1]); Assert.Equal(-2 / 3.0, g[2], P);
        var q = Losses.ClippedPolicy(logp, old, adv, [], cu, All(2), 0.2, 0.28, "sequence", 0, g);
        Assert.Equal(-1.1125, q.Loss, P);
        Assert.Equal(-0.3125, g[0], P); Assert.Equal(0, g[1]); Assert.Equal(-1, g[2], P);
        // symmetric 0.2 clips t0 at 1.2: token surrogate (-1.2 + 0.8 - 2)/3 = -0.8, grad 0
        var sym = Losses.ClippedPolicy(logp, old, adv, [], cu, All(2), 0.2, 0.2, "token", 0, g);
        Assert.Equal(-0.8, sym.Loss, P); Assert.Equal(0, g[0]);
        // k3 to the reference, ref - logp = ln 2 on t2: k3 = 2 - ln 2 - 1 = 0.306853, d k3/d logp = 1 - 2 = -1;
        // kl_coef 0.1, token mean: KL term 0.1 * 0.306853 / 3, grad t2 (-2 + 0.1 * -1) / 3 = -0.7
        float[] refLp = [logp[0], logp[1], MathF.Log(2)];
        var k = Losses.ClippedPolicy(logp, old, adv, refLp, cu, All(2), 0.2, 0.28, "token", 0.1, g);
        Assert.Equal(0.1 * (1 - Math.Log(2)) / 3, k.KlTerm, P);
        Assert.Equal((1 - Math.Log(2)) / 3, k.K3, P);
        Assert.Equal(-0.816667 + 0.1 * (1 - Math.Log(2)) / 3, k.Loss, P);
        Assert.Equal(-0.7, g[2], P);
        // a dropped sequence (dynamic sampling) neither counts in the mean nor gets a gradient: (-1.25 + 0.8) / 2
        var d = Losses.ClippedPolicy(logp, old, adv, [], cu, [true, false], 0.2, 0.28, "token", 0, g);
        Assert.Equal(-0.225, d.Loss, P); Assert.Equal(2, d.Tokens); Assert.Equal(-0.625, g[0], P); Assert.Equal(0, g[2]);
    }

    private static PpoConfig Opts(bool stdNorm = true, bool dynamic = false) =>
        new(0.05, 0.2, 0.2, 1, 1, 1, true, 5) { StdNorm = stdNorm, DynamicSampling = dynamic };

    [Fact]
    public void GrpoAdvantagesWithAndWithoutStdNormalisation()
    {
        // group [1, 0, 0, 1]: mean 0.5, population std 0.5 -> +-0.5 / (0.5 + 1e-6); Dr. GRPO: +-0.5
        // group [2, 2, 2, 2]: 0 (and dropped by dynamic sampling)
        float[] r = [1, 0, 0, 1, 2, 2, 2, 2];
        var a = new Grpo(Opts()).Advantages(r, [], 4);
        Assert.Equal(0.5 / (0.5 + 1e-6), a[0], P); Assert.Equal(-0.5 / (0.5 + 1e-6), a[1], P);
        Assert.Equal([0f, 0f, 0f, 0f], a[4..]);
        var dr = new Grpo(Opts(stdNorm: false)).Advantages(r, [], 4);
        Assert.Equal([0.5f, -0.5f, -0.5f, 0.5f, 0, 0, 0, 0], dr);
        Assert.Equal([true, true, true, true, false, false, false, false], new Grpo(Opts(dynamic: true)).Keep(r, [], 4));
        Assert.All(new Grpo(Opts()).Keep(r, [], 4), Assert.True);
        Assert.Throws<ArgumentException>(() => new Grpo(Opts()).Advantages([1, 2, 3], [], 2));
    }

    [Fact]
    public void RlooLeaveOneOutBaseline()
    {
        // [1, 0, 0, 1]: A_0 = 1 - (0 + 0 + 1)/3 = 2/3, A_1 = 0 - 2/3; [3, 1]: 3 - 1 = 2, 1 - 3 = -2
        var a = new Rloo(Opts()).Advantages([1, 0, 0, 1], [], 4);
        Assert.Equal(2 / 3.0, a[0], P); Assert.Equal(-2 / 3.0, a[1], P); Assert.Equal(-2 / 3.0, a[2], P); Assert.Equal(2 / 3.0, a[3], P);
        Assert.Equal([2f, -2f], new Rloo(Opts()).Advantages([3, 1], [], 2));
        Assert.Throws<ArgumentException>(() => new Rloo(Opts()).Advantages([3, 1], [], 1));
    }

    [Fact]
    public void RemaxGreedyBaseline()
    {
        var remax = new Remax(Opts(dynamic: true));
        Assert.Equal([0.5f, 0f, -1f], remax.Advantages([1, 0.5f, 0], [0.5f, 0.5f, 1], 1));
        Assert.Equal([true, false, true], remax.Keep([1, 0.5f, 0], [0.5f, 0.5f, 1], 1));
        Assert.Throws<ArgumentException>(() => remax.Advantages([1, 0.5f], [0.5f], 1));
    }

    [Fact]
    public void IpoLoss()
    {
        // beta 0.5: target 1/(2 beta) = 1. pair 0: h = (-1 - -2) - (-3 - -2) = 2, (2 - 1)^2 = 1, d = 2 (2 - 1) / 2 = 1
        // pair 1: h = 0, (0 - 1)^2 = 1, d = 2 (0 - 1) / 2 = -1. loss 1, accuracy 1/2 (h > 0), margin 1
        var gc = new float[2]; var gr = new float[2];
        var s = Losses.Ipo([-1, 0], [-3, 0], [-2, 0], [-2, 0], 0.5, gc, gr);
        Assert.Equal(1, s.Loss, P); Assert.Equal(0.5, s.Accuracy); Assert.Equal(1, s.MeanMargin, P);
        Assert.Equal([1f, -1f], gc); Assert.Equal([-1f, 1f], gr);
        // DpoAlgorithm picks the loss by dpo.loss
        var viaAlgo = new DpoAlgorithm(new DpoConfig(0.5) { Loss = "ipo" }).Loss([-1, 0], [-3, 0], [-2, 0], [-2, 0], gc, gr);
        Assert.Equal(1, viaAlgo.Loss, P);
        Assert.Equal(0.813262, new DpoAlgorithm(new DpoConfig(0.5)).Loss([-1, -3], [-3, -1], [-2, -2], [-2, -2], gc, gr).Loss, P);
    }

    [Fact]
    public void OverlongPenaltyAndTaskReward()
    {
        // gen_len 8, buffer 3, penalty 1: free up to 5 tokens, then (5 - len) / 3
        Assert.Equal(0, SequenceRewards.OverlongPenalty(5, 8, 3, 1.0));
        Assert.Equal(-1 / 3.0, SequenceRewards.OverlongPenalty(6, 8, 3, 1.0), P);
        Assert.Equal(-1, SequenceRewards.OverlongPenalty(8, 8, 3, 1.0), P);
        Assert.Equal(-0.5, SequenceRewards.OverlongPenalty(9, 8, 3, 0.5), P);
        Assert.Equal(0, SequenceRewards.OverlongPenalty(8, 8, 0, 1.0));
        var reward = SequenceRewards.Create(new RewardConfig("task"), ".")!;
        RewardInput In(string completion, bool eos) => new("312=", completion, eos, "123", null);
        Assert.Equal([1f, 0f, 0f], reward.Score([In("123", eos: true),
                                                  In("123", eos: false),    // truncated: not an answer
                                                  In("132", eos: true)]));
        Assert.Null(SequenceRewards.Create(new RewardConfig("model"), "."));
    }
}
