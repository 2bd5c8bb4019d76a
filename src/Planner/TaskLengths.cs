// Expected token lengths of the engine's synthetic tasks (`task:` in the experiment YAML), so the
// estimator prices the tokens the engine packs (prompt + generated, no padding) instead of
// prompt_len + gen_len. The prompt and answer formats are those of src/Engine/Tasks/SyntheticTask.cs
// (a test keeps the means equal to the engine's samples).
namespace ReaLNative.Planner;

/// <summary>Mean prompt tokens (BOS included), mean answer tokens (EOS included) and the longest answer
/// of a synthetic task with operand lengths <c>min_len..max_len</c>.</summary>
public sealed record TaskLengths(string Name, double MeanPromptTokens, double MeanAnswerTokens, int MaxAnswerTokens)
{
    /// <summary>The engine's tasks and their default operand lengths (src/Engine/Config/ExperimentConfig.cs).</summary>
    public static readonly IReadOnlyDictionary<string, (int Min, int Max)> Defaults = new Dictionary<string, (int, int)>
    {
        ["sort-digits"] = (3, 6),
        ["add"] = (1, 2),
    };

    /// <summary>sort-digits: "BOS d..d =" (n + 2 tokens) answered by the n sorted digits and EOS (n + 1), n uniform in
    /// min..max. add: "BOS a + b =" answered by the digits of a + b and EOS; each operand has d digits, d uniform in
    /// min..max, the value uniform over d-digit numbers (0..9 for d = 1). The sum's digit count is exact by
    /// enumeration over the digit counts and a closed form of the carry into a new digit.</summary>
    public static TaskLengths For(string name, int min, int max)
    {
        if (min < 1 || max < min) throw new PlannerException($"task: min_len {min} / max_len {max} must satisfy 1 <= min_len <= max_len");
        double meanLen = (min + max) / 2.0;
        switch (name)
        {
            case "sort-digits":
                return new TaskLengths(name, meanLen + 2, meanLen + 1, max + 1);
            case "add":
            {
                double digits = 0; int pairs = 0;
                for (int d1 = min; d1 <= max; d1++)
                    for (int d2 = min; d2 <= max; d2++, pairs++)
                    {
                        int d = Math.Max(d1, d2);
                        digits += d + CarryOut(d1, d2);
                    }
                return new TaskLengths(name, 1 + 2 * meanLen + 2, digits / pairs + 1, max + 2);
            }
            default:
                throw new PlannerException($"task.name: '{name}' is not one of {string.Join(", ", Defaults.Keys)}");
        }
    }

    /// <summary>Probability that a + b has one digit more than the longer operand (a of d1 digits, b of d2, each
    /// uniform over its range): P(a + b >= 10^max(d1, d2)), counted exactly over the integer ranges.</summary>
    private static double CarryOut(int d1, int d2)
    {
        static (double Lo, double Hi) Range(int d) => (d == 1 ? 0 : Math.Pow(10, d - 1), Math.Pow(10, d) - 1);
        var (a0, a1) = Range(d1); var (b0, b1) = Range(d2);
        double t = Math.Pow(10, Math.Max(d1, d2));
        // pairs (a, b) with a + b >= t: for each b, the a in [max(a0, t - b), a1]; summed in closed form over b
        double count = 0;
        // b from b0 to b1: contributes max(0, a1 - max(a0, t - b) + 1)
        // split where t - b <= a0 (b >= t - a0): full range; and where a0 < t - b <= a1 (t - a1 <= b < t - a0): a1 - t + b + 1
        double full0 = Math.Max(b0, t - a0), full1 = b1;
        if (full1 >= full0) count += (full1 - full0 + 1) * (a1 - a0 + 1);
        double part0 = Math.Max(b0, t - a1), part1 = Math.Min(b1, t - a0 - 1);
        if (part1 >= part0) count += (part1 - part0 + 1) * (a1 - t + 1) + (part0 + part1) * (part1 - part0 + 1) / 2;
        return count / ((a1 - a0 + 1) * (b1 - b0 + 1));
    }
}
