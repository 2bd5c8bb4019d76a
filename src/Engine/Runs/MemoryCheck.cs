// Before `realn run` allocates a model: every stage of the experiment, as the planner sees it,
// must fit in the memory this machine has (the plan's stage on the plan's layouts, every other
// stage on one device). A refusal is `realn plan`'s message, prefixed with the stage. After a
// run, summary.json shows each process's measured peak beside that estimate.
using System.Globalization;
using System.Text.Json.Nodes;
using ReaLNative.Engine.Config;
using ReaLNative.Engine.Layout;
using ReaLNative.Engine.Model;
using ReaLNative.Engine.Parallelism;
using ReaLNative.Engine.Workers;
using ReaLNative.Planner;

namespace ReaLNative.Engine.Runs;

internal static class MemoryCheck
{
    /// <summary>Throws a <see cref="ConfigException"/> naming the stage when a stage does not fit in
    /// <paramref name="availableBytes"/> (described by <paramref name="machine"/>).</summary>
    public static void Check(ExperimentConfig cfg, Plan? plan, double availableBytes, string machine)
    {
        foreach (var stage in cfg.Stages)
        {
            var (exp, planned) = StageExperiment(cfg, stage, plan);
            try { MemoryFit.Check(exp, planned ? plan : null, availableBytes, machine); }
            catch (PlannerException e)
            {
                throw new ConfigException(cfg.ExplicitStages ? $"{stage.Path} ({stage.Algorithm})" : "", $"does not fit in memory: {e.Message}");
            }
        }
    }

    /// <summary>The planner's view of a stage (each model in its precision), and whether <paramref name="plan"/> is for it.</summary>
    internal static (Planner.Experiment Exp, bool Planned) StageExperiment(ExperimentConfig cfg, StageConfig stage, Plan? plan)
    {
        var models = stage.Models.ToDictionary(kv => kv.Key, kv =>
        {
            var a = kv.Value.Preset is not null ? LlamaConfig.Preset(kv.Value.Preset)
                : LlamaConfig.FromHfJson(Path.Combine(cfg.BaseDirectory, kv.Value.ConfigPath!));
            return new ModelConfig(kv.Value.Preset ?? kv.Value.ConfigPath!, a.Layers, a.Hidden, a.Intermediate, a.Heads, a.KvHeads, a.Vocab, a.TiedEmbeddings);
        });
        // Each model's `precision` (bf16: 2 B weights, 18 B per parameter trained; Estimator.Memory).
        var precisions = stage.Models.ToDictionary(kv => kv.Key, kv => kv.Value.Precision == Precisions.Bf16 ? Precision.Bf16 : Precision.Fp32);
        var exp = Planner.Experiment.Create(cfg.Name, stage.Algorithm, stage.Iterations, stage.Batch.Size, stage.Batch.PromptLen,
                                            stage.Batch.GenLen, stage.Batch.Minibatches, models).WithModelPrecisions(precisions);
        bool planned = plan is not null && exp.Calls.All(c => plan.Calls.Any(p => p.Name == c.Name)) && exp.Calls.Count == plan.Calls.Count;
        return (exp, planned);
    }

    /// <summary>The planner's memory estimate per process of a run of <paramref name="cfg"/>, in bytes:
    /// "master" (the most any stage needs of it: the full models under the plan, every call of a
    /// stage the plan does not list) and, when a plan runs, "worker_D" per plan device (its most over
    /// the plan's stages). The counterpart of summary.json's peak_rss_bytes_by_process.</summary>
    public static SortedDictionary<string, long> Planned(ExperimentConfig cfg, Plan? plan)
    {
        double master = 0;
        double[]? devices = null;
        foreach (var stage in cfg.Stages)
        {
            var (exp, planned) = StageExperiment(cfg, stage, plan);
            var e = MemoryFit.Estimate(exp, planned ? plan : null);
            master = Math.Max(master, e.MasterBytes);
            if (e.DeviceBytes.Length == 0) continue;
            devices ??= new double[e.DeviceBytes.Length];
            for (int d = 0; d < devices.Length; d++) devices[d] = Math.Max(devices[d], e.DeviceBytes[d]);
        }
        var result = new SortedDictionary<string, long>(StringComparer.Ordinal) { ["master"] = (long)master };
        for (int d = 0; d < (devices?.Length ?? 0); d++) result[WorkerKey(d)] = (long)devices![d];
        return result;
    }

    /// <summary>One worker's memory estimate: what the planner counts (<paramref name="Resident"/>
    /// shards and train state, <paramref name="Active"/> the largest call's) and the process's own
    /// base (<paramref name="BaseRss"/>: its resident set measured after start-up, before any
    /// replica: runtime, native libraries, UCX). A checkpoint adds nothing: every shard writes its
    /// own pieces into the files (Parallelism/ShardedSave.cs). Peak = resident + active + base.</summary>
    internal readonly record struct WorkerEstimate(long Resident, long Active, long BaseRss)
    {
        public long Peak => Resident + Active + BaseRss;
    }

    /// <summary>Each plan device's <see cref="WorkerEstimate"/> (the stage with the largest peak),
    /// with the measured base resident set of its worker process (<paramref name="baseRss"/>, 0 where unknown);
    /// null without a plan or where no stage runs under it.</summary>
    internal static WorkerEstimate[]? Estimates(ExperimentConfig cfg, Plan? plan, IReadOnlyList<long?>? baseRss)
    {
        if (plan is null) return null;
        WorkerEstimate[]? best = null;
        foreach (var stage in cfg.Stages)
        {
            var (exp, planned) = StageExperiment(cfg, stage, plan);
            if (!planned) continue;
            var e = MemoryFit.Estimate(exp, plan);
            best ??= new WorkerEstimate[e.DeviceBytes.Length];
            for (int d = 0; d < best.Length; d++)
            {
                var w = new WorkerEstimate((long)e.DeviceResidentBytes[d], (long)e.DeviceActiveBytes[d], baseRss is not null && d < baseRss.Count ? baseRss[d] ?? 0 : 0);
                if (w.Peak > best[d].Peak) best[d] = w;
            }
        }
        return best;
    }

    /// <summary>A worker's key in the by-process memory figures.</summary>
    public static string WorkerKey(int device) => $"worker_{device}";

    /// <summary>summary.json's memory figures: <c>peak_rss_bytes_by_process</c> (this process as
    /// "master", each worker process as "worker_D": their VmHWM, so far in this invocation of the
    /// run) and <c>planned_memory_bytes_by_process</c> (the planner's estimate, <see cref="MemoryCheck.Planned"/>;
    /// plan devices that are threads of this process are added to "master").</summary>
    public static void AddToSummary(JsonObject summary, ExperimentConfig cfg, Plan? plan, IReplicaHost? host)
    {
        var peak = new JsonObject { ["master"] = ProcessMemory.PeakRssBytes() };
        var reports = host?.WorkerMemory();
        var workers = reports?.Select(r => r["peak_rss_bytes"]?.GetValue<long?>()).ToArray();
        for (int d = 0; d < (workers?.Length ?? 0); d++) peak[MemoryCheck.WorkerKey(d)] = workers![d];
        summary["peak_rss_bytes_by_process"] = peak;
        // A worker's resident set counts the pages of other workers' shards it has mapped to
        // reallocate out of them (shared memory: they exist once, in their owner's count too).
        if (reports is not null)
        {
            var m = new JsonObject();
            for (int d = 0; d < reports.Count; d++) m[MemoryCheck.WorkerKey(d)] = reports[d]["peer_mapped_bytes"]?.GetValue<long>() ?? 0;
            summary["peer_mapped_bytes_by_process"] = m;
        }
        SortedDictionary<string, long> planned;
        try { planned = MemoryCheck.Planned(cfg, plan); }
        catch (PlannerException) { return; }   // no estimate for this experiment: the measured figures stand alone
        var p = new JsonObject { ["master"] = planned["master"] };
        foreach (var (k, v) in planned)
        {
            if (k == "master") continue;
            if (workers is null) p["master"] = (long)p["master"]! + v;   // in-process devices
            else p[k] = v;
        }
        summary["planned_memory_bytes_by_process"] = p;
        if (reports is null || Estimates(cfg, plan, reports.Select(r => r["base_rss_bytes"]?.GetValue<long?>()).ToArray()) is not { } est) return;
        // Each worker's estimate with its terms, beside what the worker measured: its base resident
        // set, the activation blocks it keeps, and the command during which its peak last rose.
        var estimated = new JsonObject();
        var terms = new JsonObject();
        for (int d = 0; d < est.Length && d < reports.Count; d++)
        {
            var w = est[d];
            estimated[WorkerKey(d)] = w.Peak;
            var t = new JsonObject
            {
                ["resident_bytes"] = w.Resident, ["active_bytes"] = w.Active, ["base_rss_bytes"] = w.BaseRss,
                ["activation_arena_bytes"] = reports[d]["activation_arena_bytes"]?.GetValue<long?>(),
                ["activation_arena_held_bytes"] = reports[d]["activation_arena_held_bytes"]?.GetValue<long?>(),
                ["activation_arena_peak_bytes"] = reports[d]["activation_arena_peak_bytes"]?.GetValue<long?>(),
                ["activation_cache_clears"] = reports[d]["activation_cache_clears"]?.GetValue<int?>(),
            };
            if (reports[d]["peak_set_by"] is JsonObject by) t["peak_set_by"] = by.DeepClone();
            terms[WorkerKey(d)] = t;
        }
        summary["estimated_peak_bytes_by_process"] = estimated;
        summary["memory_terms_by_process"] = terms;
    }

}
