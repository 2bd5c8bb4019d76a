// Algorithm-level check where the optimum is known: a one-step contextual bandit (3 contexts x 6
// answers, fixed rewards 10 + u with one best answer per context) with a tabular softmax policy
// starting uniform. Each algorithm runs its own advantage/loss code (the same types the pipeline
// uses) and must push p(best answer) above 0.9 in every context within a bounded number of
// steps. The offset of 10 makes a missing baseline fail (every sampled answer is reinforced),
// and a flipped sign drives the policy to the worst answer; the negative controls check both.
using ReaLNative.Engine.Algorithms;
using ReaLNative.Engine.Config;
using ReaLNative.Interop;
using Xunit;

namespace ReaLNative.Engine.Tests.Algorithms;

public class BanditTests
{
    private const int Contexts = 3, Answers = 6, Steps = 300, SamplesPerContext = 8;
    private const double Lr = 0.5;

    private static readonly float[,] Reward = MakeRewards();

    private static float[,] MakeRewards()
    {
        var rng = new Random(11);
        var r = new float[Contexts, Answers];
        for (int c = 0; c < Contexts; c++)
        {
            int best = (c * 2 + 1) % Answers;
            for (int a = 0; a < Answers; a++) r[c, a] = 10 + (a == best ? 1f : (float)(rng.NextDouble() * 0.8));
        }
        return r;
    }

    private static int Best(int c) => (c * 2 + 1) % Answers;

    /// <summary>Tabular softmax policy, logits[c, a]; gradients arrive as d loss / d logp of sampled answers.</summary>
    private sealed class Policy
    {
        public readonly double[,] Logits = new double[Contexts, Answers];
        private readonly double[,] _grad = new double[Contexts, Answers];

        public double[] Probs(int c)
        {
            var p = new double[Answers];
            double max = double.NegativeInfinity;
            for (int a = 0; a < Answers; a++) max = Math.Max(max, Logits[c, a]);
            double z = 0;
            for (int a = 0; a < Answers; a++) z += p[a] = Math.Exp(Logits[c, a] - max);
            for (int a = 0; a < Answers; a++) p[a] /= z;
            return p;
        }

        public float LogP(int c, int a) => (float)Math.Log(Probs(c)[a]);

        public int Sample(int c, Random rng)
        {
            var p = Probs(c);
            double u = rng.NextDouble(), acc = 0;
            for (int a = 0; a < Answers; a++) if ((acc += p[a]) > u) return a;
            return Answers - 1;
        }

        public int Greedy(int c)
        {
            var p = Probs(c);
            int best = 0;
            for (int a = 1; a < Answers; a++) if (p[a] > p[best]) best = a;
            return best;
        }

        /// <summary>d logp(a|c) / d logit(c, j) = 1[j = a] - p_j; one SGD step on the accumulated gradient.</summary>
        public void Backward(IReadOnlyList<(int C, int A)> samples, ReadOnlySpan<float> dLogp)
        {
            Array.Clear(_grad);
            for (int k = 0; k < samples.Count; k++)
            {
                var (c, a) = samples[k];
                var p = Probs(c);
                for (int j = 0; j < Answers; j++) _grad[c, j] += dLogp[k] * ((j == a ? 1 : 0) - p[j]);
            }
            for (int c = 0; c < Contexts; c++)
                for (int j = 0; j < Answers; j++) Logits[c, j] -= Lr * _grad[c, j];
        }

        public double MinBestProbability() => Enumerable.Range(0, Contexts).Min(c => Probs(c)[Best(c)]);
    }

    private static PpoConfig Options => new(KlCoef: 0.001, ClipEps: 0.2, ValueClipEps: 100, Gamma: 1, Lambda: 1, PpoEpochs: 1, AdvNorm: true, MaxRewardClip: 100);

    private static int[] OneTokenCu(int n) => Enumerable.Range(0, n + 1).ToArray();

    /// <summary>GRPO / RLOO / ReMax through CriticFreeAlgorithm; <paramref name="tamper"/> edits the advantages (negative controls).</summary>
    private static double RunCriticFree(string algorithm, Func<float[], float[], float[]>? tamper = null, int seed = 1)
    {
        var algo = CriticFreeAlgorithm.For(algorithm, Options);
        var pol = new Policy();
        var uniform = (float)Math.Log(1.0 / Answers);
        var rng = new Random(seed);
        int group = algo.NeedsGreedyBaseline ? 1 : SamplesPerContext;
        for (int step = 0; step < Steps; step++)
        {
            var samples = new List<(int C, int A)>();
            var greedy = new List<float>();
            for (int c = 0; c < Contexts; c++)
                for (int i = 0; i < SamplesPerContext; i++)
                {
                    samples.Add((c, pol.Sample(c, rng)));
                    if (algo.NeedsGreedyBaseline) greedy.Add(Reward[c, pol.Greedy(c)]);
                }
            var rewards = samples.Select(s => Reward[s.C, s.A]).ToArray();
            var adv = algo.Advantages(rewards, greedy.ToArray(), group);
            if (tamper is not null) adv = tamper(adv, rewards);
            var logp = samples.Select(s => pol.LogP(s.C, s.A)).ToArray();
            var refLp = Enumerable.Repeat(uniform, samples.Count).ToArray();
            var g = new float[samples.Count];
            algo.Loss(logp, logp, refLp, OneTokenCu(samples.Count), adv, algo.Keep(rewards, greedy.ToArray(), group), g);
            pol.Backward(samples, g);
        }
        return pol.MinBestProbability();
    }

    [Theory]
    [InlineData("grpo")]
    [InlineData("rloo")]
    [InlineData("remax")]
    public void CriticFreeAlgorithmFindsTheBestAnswer(string algorithm)
    {
        double p = RunCriticFree(algorithm);
        Assert.True(p > 0.9, $"{algorithm}: p(best) = {p:F3} after {Steps} steps, want > 0.9 in every context");
    }

    [Fact]
    public void PpoWithCriticFindsTheBestAnswer()
    {
        var opts = Options;
        var pol = new Policy();
        var value = new double[Contexts];
        var rng = new Random(1);
        using var stream = NativeStream.Cpu();
        for (int step = 0; step < Steps; step++)
        {
            var samples = new List<(int C, int A)>();
            for (int c = 0; c < Contexts; c++)
                for (int i = 0; i < SamplesPerContext; i++) samples.Add((c, pol.Sample(c, rng)));
            int n = samples.Count;
            var logp = samples.Select(s => pol.LogP(s.C, s.A)).ToArray();
            var refLp = Enumerable.Repeat((float)Math.Log(1.0 / Answers), n).ToArray();
            var values = samples.Select(s => (float)value[s.C]).ToArray();
            var scores = samples.Select(s => Reward[s.C, s.A]).ToArray();
            var (adv, ret, _) = Ppo.Advantages(stream, logp, refLp, values, scores, Enumerable.Repeat(true, n).ToArray(), OneTokenCu(n), opts);
            var g = new float[n];
            Losses.ClippedPolicy(logp, logp, adv, [], OneTokenCu(n), Enumerable.Repeat(true, n).ToArray(),
                                 opts.ClipEpsLow, opts.ClipEpsHigh, opts.LossAgg, 0, g);
            pol.Backward(samples, g);
            var dv = new float[n];
            Losses.ClippedValue(values, values, ret, Enumerable.Repeat(1f, n).ToArray(), opts.ValueClipEps, dv);
            // critic SGD: dv_k = (v - ret_k) / n, so this moves V(c) half way to the context's mean return
            for (int k = 0; k < n; k++) value[samples[k].C] -= 0.5 * dv[k] * n / SamplesPerContext;
        }
        double p = pol.MinBestProbability();
        Assert.True(p > 0.9, $"ppo: p(best) = {p:F3} after {Steps} steps, want > 0.9 in every context");
        for (int c = 0; c < Contexts; c++) Assert.InRange(value[c], 10, 11.1);   // the critic learned E[r]
    }

    [Theory]
    [InlineData("sigmoid", 0.5)]
    [InlineData("ipo", 0.1)]   // IPO's optimum is the finite log-ratio margin 1/(2 beta): beta 0.1 targets 5 nats
    public void DpoFindsTheBestAnswer(string loss, double beta)
    {
        var dpo = new DpoAlgorithm(new DpoConfig(beta) { Loss = loss });
        var pol = new Policy();
        var uniform = (float)Math.Log(1.0 / Answers);
        var rng = new Random(1);
        for (int step = 0; step < Steps; step++)
        {
            var chosen = new List<(int C, int A)>(); var rejected = new List<(int C, int A)>();
            for (int c = 0; c < Contexts; c++)
                for (int i = 0; i < SamplesPerContext / 2; i++)
                {
                    int a = pol.Sample(c, rng), b = pol.Sample(c, rng);
                    if (Reward[c, a] == Reward[c, b]) continue;  // a tie is no preference
                    bool aWins = Reward[c, a] > Reward[c, b];
                    chosen.Add((c, aWins ? a : b)); rejected.Add((c, aWins ? b : a));
                }
            if (chosen.Count == 0) continue;
            int n = chosen.Count;
            var gc = new float[n]; var gr = new float[n];
            var refs = Enumerable.Repeat(uniform, n).ToArray();
            dpo.Loss(chosen.Select(s => pol.LogP(s.C, s.A)).ToArray(), rejected.Select(s => pol.LogP(s.C, s.A)).ToArray(), refs, refs, gc, gr);
            pol.Backward([.. chosen, .. rejected], [.. gc, .. gr]);
        }
        double p = pol.MinBestProbability();
        Assert.True(p > 0.9, $"dpo ({loss}): p(best) = {p:F3} after {Steps} steps, want > 0.9 in every context");
    }

    [Fact]
    public void FlippedSignOrMissingBaselineFails()
    {
        // Negative controls: the same loop with the advantages' sign flipped, or with the raw
        // rewards as advantages (no baseline), does not reach the best answer.
        double flipped = RunCriticFree("rloo", (a, _) => a.Select(x => -x).ToArray());
        Assert.True(flipped < 0.1, $"flipped sign still reached p(best) = {flipped:F3}");
        double noBaseline = RunCriticFree("rloo", (_, r) => r);
        Assert.True(noBaseline < 0.9, $"without a baseline p(best) = {noBaseline:F3}; the bandit would not catch a missing baseline");
    }
}
