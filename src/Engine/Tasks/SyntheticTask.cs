// Synthetic tasks with exact checkers. The checker is the held-out metric (task score = fraction
// of exactly right answers); a graded variant in [0, 1] ranks imperfect answers so preference
// pairs for reward modelling can be built from generated samples.
using ReaLNative.Engine.Config;

namespace ReaLNative.Engine.Tasks;

/// <summary>One example: the prompt, the reference answer (what the held-out score and the
/// answer-matching rewards compare with), and from a dataset also the SFT response (when it is not
/// the answer itself: a worked solution ending in the answer), the record's metadata (JSON text)
/// and where it came from ("FILE:LINE").</summary>
internal readonly record struct TaskExample(string Prompt, string Answer)
{
    public string? Response { get; init; }
    public string? Metadata { get; init; }
    public string? Source { get; init; }
    /// <summary>An offline preference pair's preferred and dispreferred responses (dataset fields chosen / rejected; rm and dpo).</summary>
    public string? Chosen { get; init; }
    public string? Rejected { get; init; }
    /// <summary>What SFT trains the model to answer: the response, else the answer.</summary>
    public string Target => Response ?? Answer;
}

internal abstract class SyntheticTask
{
    public abstract string Name { get; }
    /// <summary>Longest prompt in tokens, BOS included.</summary>
    public abstract int MaxPromptTokens { get; }
    /// <summary>Longest answer in tokens, EOS included.</summary>
    public abstract int MaxAnswerTokens { get; }

    public abstract TaskExample Sample(Random rng);
    public abstract string Solve(string prompt);

    /// <summary>1 if the completion is exactly the right answer, else 0.</summary>
    public double Score(string prompt, string completion) => completion == Solve(prompt) ? 1.0 : 0.0;

    /// <summary>1 if the completion is exactly the example's answer, else 0 (for a synthetic example
    /// the same as <see cref="Score"/>; also for dataset examples).</summary>
    public static double Exact(TaskExample example, string completion) => completion == example.Answer ? 1.0 : 0.0;

    /// <summary>Partial credit against the example's answer: see <see cref="Grade(string, string)"/>.</summary>
    public static double Grade(TaskExample example, string completion) => GradeAgainst(example.Answer, completion);

    /// <summary>
    /// Partial credit in [0, 1]: characters in the right position over max(|answer|, |completion|);
    /// 1 exactly when the completion is right.
    /// </summary>
    public double Grade(string prompt, string completion) => GradeAgainst(Solve(prompt), completion);

    private static double GradeAgainst(string a, string completion)
    {
        int n = Math.Max(a.Length, completion.Length);
        if (n == 0) return 1;
        int ok = 0;
        for (int i = 0; i < Math.Min(a.Length, completion.Length); i++) if (a[i] == completion[i]) ok++;
        return (double)ok / n;
    }

    public static SyntheticTask Create(TaskConfig cfg) => cfg.Name switch
    {
        "sort-digits" => new SortDigitsTask(cfg.MinLen, cfg.MaxLen),
        "add" => new AddTask(cfg.MinLen, cfg.MaxLen),
        _ => throw new ConfigException("task.name", $"'{cfg.Name}' is not allowed; allowed values: {string.Join(" | ", ExperimentConfig.Tasks)}"),
    };

    /// <summary>A fixed held-out prompt set, drawn from a stream no training step uses.</summary>
    public TaskExample[] HeldOut(long seed, int count)
    {
        var rng = StepRandom.Create(seed, "held-out", 0, 0);
        return Enumerable.Range(0, count).Select(_ => Sample(rng)).ToArray();
    }
}

/// <summary>"31204=" -> "01234": sort a list of digits ascending.</summary>
internal sealed class SortDigitsTask(int minLen, int maxLen) : SyntheticTask
{
    public override string Name => "sort-digits";
    public override int MaxPromptTokens => 1 + maxLen + 1;
    public override int MaxAnswerTokens => maxLen + 1;

    public override TaskExample Sample(Random rng)
    {
        int n = rng.Next(minLen, maxLen + 1);
        var d = new char[n];
        for (int i = 0; i < n; i++) d[i] = (char)('0' + rng.Next(10));
        string p = new string(d) + "=";
        return new TaskExample(p, Solve(p));
    }

    public override string Solve(string prompt)
    {
        var d = prompt.TrimEnd('=').ToCharArray();
        Array.Sort(d);
        return new string(d);
    }
}

/// <summary>"12+345=" -> "357": add two non-negative integers of min..max digits.</summary>
internal sealed class AddTask(int minLen, int maxLen) : SyntheticTask
{
    public override string Name => "add";
    public override int MaxPromptTokens => 1 + 2 * maxLen + 2;
    public override int MaxAnswerTokens => maxLen + 2;

    public override TaskExample Sample(Random rng)
    {
        int a = Operand(rng), b = Operand(rng);
        string p = $"{a}+{b}=";
        return new TaskExample(p, Solve(p));
    }

    private int Operand(Random rng)
    {
        int digits = rng.Next(minLen, maxLen + 1);
        int lo = digits == 1 ? 0 : (int)Math.Pow(10, digits - 1);
        return rng.Next(lo, (int)Math.Pow(10, digits));
    }

    public override string Solve(string prompt)
    {
        var parts = prompt.TrimEnd('=').Split('+');
        if (parts.Length != 2 || !long.TryParse(parts[0], out long a) || !long.TryParse(parts[1], out long b))
            throw new ArgumentException($"'{prompt}' is not an addition prompt", nameof(prompt));
        return (a + b).ToString(System.Globalization.CultureInfo.InvariantCulture);
    }
}

/// <summary>
/// Seeded randomness per (seed, stream name, stage, step): every step draws from its own
/// generator, so a resumed run replays exactly the numbers an uninterrupted run would draw.
/// </summary>
internal static class StepRandom
{
    public static Random Create(long seed, string stream, int stage, long step) => new(Seed32(seed, stream, stage, step));

    public static ulong Seed64(long seed, string stream, int stage, long step)
    {
        ulong h = 0xcbf29ce484222325UL ^ (ulong)seed;
        foreach (char c in stream) h = (h ^ c) * 0x100000001b3UL;
        h = Mix(h ^ (ulong)stage);
        return Mix(h ^ (ulong)step);
    }

    private static int Seed32(long seed, string stream, int stage, long step) => (int)(Seed64(seed, stream, stage, step) & 0x7fffffff);

    private static ulong Mix(ulong x)
    {
        x ^= x >> 33; x *= 0xff51afd7ed558ccdUL; x ^= x >> 33; x *= 0xc4ceb9fe1a85ec53UL; x ^= x >> 33;
        return x;
    }
}
