// summary.json from metrics.jsonl: it is derived from the metric lines (not kept in memory) so a
// resumed run summarises the whole run, both halves.
using System.Text.Json.Nodes;
using ReaLNative.Engine.Config;

namespace ReaLNative.Engine.Runs;

internal static class RunSummary
{
    /// <param name="stageSeconds">Wall time of each stage (set-up, iterations, evaluations, checkpoints).</param>
    /// <param name="iterationSeconds">Of which each stage's iterations: the wall time of their dataflow (every
    /// call of the iteration, no evaluation or checkpoint).</param>
    /// <param name="firstIterationSeconds">Of those, each stage's first iteration run by this process (NaN: none).</param>
    public static JsonObject FromMetrics(string metricsPath, ExperimentConfig cfg, double seconds, IReadOnlyList<double> stageSeconds, IReadOnlyList<double> iterationSeconds,
                                         IReadOnlyList<double>? firstIterationSeconds = null)
    {
        var lines = File.ReadLines(metricsPath).Where(l => l.Length > 0).Select(l => JsonNode.Parse(l)!.AsObject()).ToList();
        int last = cfg.Stages.Count - 1;
        var final = lines.Where(l => (int)l["stage"]! == last).ToList();
        var evals = final.Where(l => (string)l["call"]! == "eval").ToList();
        var rewards = final.Where(l => l["reward_mean"] is not null && (string)l["call"]! is "actor_train").ToList();
        var kls = final.Where(l => l["kl"] is not null && (string)l["call"]! is "actor_train").Select(l => (double)l["kl"]!).ToList();
        var stages = new JsonArray();
        double accounted = 0;
        foreach (var st in cfg.Stages)
        {
            var own = lines.Where(l => (int)l["stage"]! == st.Index).ToList();
            var ev = own.Where(l => (string)l["call"]! == "eval").ToList();
            double callSeconds = own.Where(l => l["seconds"] is not null && (string)l["call"]! != "eval").Sum(l => (double)l["seconds"]!);
            double evalSeconds = ev.Where(l => l["seconds"] is not null).Sum(l => (double)l["seconds"]!);
            accounted += stageSeconds[st.Index];
            var stageSummary = new JsonObject
            {
                ["algorithm"] = st.Algorithm, ["iterations"] = st.Iterations,
                ["seconds"] = Math.Round(stageSeconds[st.Index], 3),
                // The wall time of the iterations' dataflow (what `realn plan` estimates per iteration).
                ["iterations_seconds"] = Math.Round(iterationSeconds[st.Index], 4),
                // Of which the first iteration this process ran (null: none): its one-time costs (code compiled at its
                // first call, a first reallocation) are not a steady iteration's.
                ["first_iteration_seconds"] = firstIterationSeconds is { } f && st.Index < f.Count && double.IsFinite(f[st.Index]) ? Math.Round(f[st.Index], 4) : null,
                // Summed over the stage's calls: calls on disjoint meshes of a plan overlap, so this
                // can exceed the stage's wall time; the rest of a stage is set-up and checkpoints.
                ["calls_seconds"] = Math.Round(callSeconds, 3),
                ["eval_seconds"] = Math.Round(evalSeconds, 3),
                ["initial_task_score"] = ev.Count > 0 ? (double?)ev[0]["task_score"] : null,
                ["final_task_score"] = ev.Count > 0 ? (double?)ev[^1]["task_score"] : null,
            };
            if (AsyncSummary(own) is { } a) stageSummary["async"] = a;
            stages.Add((JsonNode)stageSummary);  // Add(JsonNode), not Add<T>: no reflection (NativeAOT)
        }
        return new JsonObject
        {
            ["name"] = cfg.Name, ["algorithm"] = cfg.Algorithm, ["mode"] = cfg.MaxStaleness is null ? "sync" : "async",
            ["initial_reward"] = rewards.Count > 0 ? (double?)rewards[0]["reward_mean"] : null,
            ["final_reward"] = rewards.Count > 0 ? (double?)rewards[^1]["reward_mean"] : null,
            ["initial_task_score"] = evals.Count > 0 ? (double?)evals[0]["task_score"] : null,
            ["final_task_score"] = evals.Count > 0 ? (double?)evals[^1]["task_score"] : null,
            // KL of the samples to the reference (nats per sequence) at the last iteration and its maximum
            ["final_kl"] = kls.Count > 0 ? kls[^1] : null,
            ["max_kl"] = kls.Count > 0 ? kls.Max() : null,
            ["iterations"] = cfg.Stages[last].Iterations,
            ["total_iterations"] = cfg.Stages.Sum(s => s.Iterations),
            ["seconds"] = Math.Round(seconds, 2),
            // The wall time outside every stage: opening the output, reading metrics, the summary.
            ["other_seconds"] = Math.Round(Math.Max(0, seconds - accounted), 2),
            ["stages"] = stages,
        };
    }

    /// <summary>An async stage's "async" lines summed up: samples by staleness (versions behind the
    /// trainer; a sample's oldest token), generated tokens by staleness, samples dropped for staleness, the mean utilisation of the generation and training
    /// sides, and the trainer's total wait and push time; null for a synchronous stage.</summary>
    private static JsonObject? AsyncSummary(List<JsonObject> stageLines)
    {
        var lines = stageLines.Where(l => (string)l["call"]! == "async").ToList();
        if (lines.Count == 0) return null;
        var histogram = new JsonObject();
        foreach (var g in lines.GroupBy(l => (int)l["staleness"]!).OrderBy(g => g.Key))
            histogram[g.Key.ToString(System.Globalization.CultureInfo.InvariantCulture)] = g.Sum(l => (long)l["samples"]!);
        // Generated tokens by staleness (under weight_update: interrupt a batch's later tokens are a version newer).
        var tokens = new SortedDictionary<int, long>();
        foreach (var l in lines)
            foreach (var (k, v) in l)
                if (k.StartsWith(Pipeline.TokenStalenessPrefix, StringComparison.Ordinal))
                {
                    int staleness = int.Parse(k.AsSpan(Pipeline.TokenStalenessPrefix.Length), System.Globalization.CultureInfo.InvariantCulture);
                    tokens[staleness] = tokens.GetValueOrDefault(staleness) + (long)v!;
                }
        var tokenHistogram = new JsonObject();
        foreach (var (k, v) in tokens) tokenHistogram[k.ToString(System.Globalization.CultureInfo.InvariantCulture)] = v;
        return new JsonObject
        {
            ["max_staleness"] = (int)lines[0]["max_staleness"]!,
            ["interrupt_step"] = (int?)lines[0]["interrupt_step"],
            ["staleness_histogram"] = histogram,
            ["token_staleness_histogram"] = tokenHistogram,
            ["dropped_stale"] = lines.Sum(l => (long)l["dropped_stale"]!),
            ["gen_utilisation"] = Math.Round(lines.Average(l => (double)l["gen_utilisation"]!), 4),
            ["train_utilisation"] = Math.Round(lines.Average(l => (double)l["train_utilisation"]!), 4),
            ["wait_seconds"] = Math.Round(lines.Sum(l => (double)l["wait_seconds"]!), 3),
            ["push_seconds"] = Math.Round(lines.Sum(l => (double)l["push_seconds"]!), 3),
        };
    }
}
