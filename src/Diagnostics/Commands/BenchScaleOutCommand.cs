// `realn bench scale-out [--config CONFIG] [--plan PLAN.json] [--out DIR] [--timeout SEC] [--json]`:
// issue 18's memory goal. Copies the experiment (default examples/scale-out/ppo-gpt2-small.yaml: PPO
// of four gpt2-small models) into OUT, writes the HF checkpoints its `init:` folders name (random
// weights of the preset: an LM, or a scalar-head model where only scalar-head roles start from it),
// runs it as `realn run CONFIG --plan PLAN --out OUT/run` in a child process (worker processes, as a
// user runs it) and prints, from its summary.json, each process's peak RSS against the reference:
// the bytes of one copy of every model's state (weights, and for trained roles gradients and both
// AdamW moments; bf16: fp32 master, bf16 weights, fp32 gradients and moments; frozen bf16: 2 bytes).
// Goals: the master below 0.1 of it; each worker at most its planned memory (shards + activations,
// the planner's estimate); beside it the estimate with the worker's measured base RSS, and the
// command during which each worker's peak last rose.
using System.CommandLine;
using System.Diagnostics;
using System.Globalization;
using System.Text.Json;
using System.Text.Json.Nodes;
using ReaLNative.Engine.Algorithms;
using ReaLNative.Engine.Checkpoints;
using ReaLNative.Engine.Config;
using ReaLNative.Engine.Model;
using ReaLNative.Engine.Stages;

namespace ReaLNative.Diagnostics;

public static class BenchScaleOutCommand
{
    public static Command Create()
    {
        var config = new Option<string>("--config") { Description = "Experiment YAML (its init folders are written next to its copy in OUT)", DefaultValueFactory = _ => "examples/scale-out/ppo-gpt2-small.yaml" };
        var plan = new Option<string>("--plan") { Description = "Execution plan JSON", DefaultValueFactory = _ => "examples/scale-out/ppo-gpt2-small-4workers.plan.json" };
        var output = new Option<string>("--out") { Description = "Must be new or empty: OUT/config.yaml, OUT/inits, OUT/run", DefaultValueFactory = _ => "runs/bench-scale-out" };
        var timeout = new Option<int>("--timeout") { Description = "Seconds the run may take", DefaultValueFactory = _ => 3600 };
        var json = new Option<bool>("--json") { Description = "Print JSON" };
        var cmd = new Command("scale-out", "Run an experiment under a worker-process plan and print each process's peak memory against one copy of the models' state");
        foreach (var o in new Option[] { config, plan, output, timeout, json }) cmd.Options.Add(o);
        cmd.SetAction(p => Run(p.GetValue(config)!, p.GetValue(plan)!, p.GetValue(output)!, p.GetValue(timeout), p.GetValue(json)));
        return cmd;
    }

    private static int Run(string configPath, string planPath, string outRoot, int timeoutSeconds, bool json)
    {
        if (!File.Exists(configPath)) throw new ArgumentException($"--config: {configPath} not found");
        if (!File.Exists(planPath)) throw new ArgumentException($"--plan: {planPath} not found");
        if (timeoutSeconds < 1) throw new ArgumentException($"--timeout: {timeoutSeconds} must be positive");
        if (File.Exists(outRoot) || Directory.Exists(outRoot) && Directory.EnumerateFileSystemEntries(outRoot).Any())
            throw new ArgumentException($"--out: '{outRoot}' is not a new or empty directory");
        outRoot = Path.GetFullPath(outRoot);
        Directory.CreateDirectory(outRoot);
        string config = Path.Combine(outRoot, "config.yaml");
        File.Copy(configPath, config);
        // The init checkpoints the top-level models name, written once each (random weights of the
        // preset) before the config is loaded (which checks that they exist).
        foreach (var group in InitFolders(config).GroupBy(r => r.Init))
        {
            string dir = Path.Combine(outRoot, group.Key);
            if (Directory.Exists(dir)) continue;
            bool scalar = group.All(r => AlgorithmNames.ScalarHead(r.Role));
            if (!json) Console.Error.WriteLine($"writing {dir} ({(scalar ? "scalar head" : "LM")}, random weights of the {group.First().Preset} preset)");
            using var m = new LlamaModel(LlamaConfig.Preset(group.First().Preset), scalar);
            m.InitRandom(1234, 0.02f);
            Safetensors.Save(m, dir);
        }
        var cfg = ExperimentConfig.Load(config);
        var stage = cfg.Stages[^1];
        var roles = stage.Models.ToDictionary(kv => kv.Key, kv => kv.Value);

        // One copy of every model's state: the single-device figure the goal compares with.
        long reference = 0;
        var bytesByRole = new JsonObject();
        var trained = StageAlgorithms.For(stage).TrainedRoles.ToHashSet();
        foreach (var (role, spec) in roles)
        {
            long n = ParamLayout.Create(Arch(cfg, spec), AlgorithmNames.ScalarHead(role)).TotalElements;
            bool bf16 = spec.Precision == Precisions.Bf16;
            long perParam = trained.Contains(role) ? (bf16 ? 4 + 2 + 4 + 8 : 16) : (bf16 ? 2 : 4);
            bytesByRole[role] = n * perParam;
            reference += n * perParam;
        }

        string run = Path.Combine(outRoot, "run");
        var psi = new ProcessStartInfo(Environment.ProcessPath!) { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        foreach (var a in new[] { "run", config, "--plan", Path.GetFullPath(planPath), "--out", run }) psi.ArgumentList.Add(a);
        if (!json) Console.Error.WriteLine($"running: realn {string.Join(' ', psi.ArgumentList)}");
        var clock = Stopwatch.StartNew();
        using (var p = Process.Start(psi)!)
        {
            var stdout = p.StandardOutput.ReadToEndAsync();
            var stderr = p.StandardError.ReadToEndAsync();
            if (!p.WaitForExit(TimeSpan.FromSeconds(timeoutSeconds)))
            {
                p.Kill(entireProcessTree: true);
                throw new MeasurementException($"the run did not finish within --timeout {timeoutSeconds} s (killed); its output is in {run}");
            }
            p.WaitForExit();
            if (p.ExitCode != 0)
                throw new MeasurementException($"the run failed (exit {p.ExitCode}): {Tail(stderr.Result)}{Tail(stdout.Result)}");
        }
        var summary = JsonNode.Parse(File.ReadAllText(Path.Combine(run, "summary.json")))!.AsObject();
        var peak = summary["peak_rss_bytes_by_process"]?.AsObject() ?? throw new MeasurementException("summary.json has no peak_rss_bytes_by_process");
        var planned = summary["planned_memory_bytes_by_process"]?.AsObject();
        var mappedBy = summary["peer_mapped_bytes_by_process"]?.AsObject();
        var estimated = summary["estimated_peak_bytes_by_process"]?.AsObject();
        var terms = summary["memory_terms_by_process"]?.AsObject();
        long master = (long)peak["master"]!;
        var processes = new JsonArray();
        foreach (var (name, v) in peak)
        {
            long b = (long)v!;
            long? plannedBytes = planned?[name] is JsonNode pn ? (long)pn : null;
            long? estimate = estimated?[name] is JsonNode en ? (long)en : null;
            processes.Add((JsonNode)new JsonObject  // Add(JsonNode), not Add<T>: no reflection (NativeAOT)
            {
                // planned_bytes: the planner's shards + activations; estimated_peak_bytes: with the
                // process's measured base (summary.json's memory_terms_by_process).
                ["process"] = name, ["peak_rss_bytes"] = b, ["planned_bytes"] = plannedBytes, ["estimated_peak_bytes"] = estimate,
                // Other workers' shards this one maps (shared memory): address space; their pages leave its resident set as it copies.
                ["peer_mapped_bytes"] = mappedBy?[name] is JsonNode mb ? (long)mb : null,
                ["of_reference"] = Math.Round((double)b / reference, 4),
                ["of_planned"] = plannedBytes is > 0 ? Math.Round((double)b / plannedBytes.Value, 3) : null,
                ["of_estimate"] = estimate is > 0 ? Math.Round((double)b / estimate.Value, 3) : null,
                ["terms"] = terms?[name]?.DeepClone(),
            });
        }
        var result = new JsonObject
        {
            ["benchmark"] = "scale-out", ["config"] = configPath, ["plan"] = planPath,
            ["reference_bytes"] = reference, ["reference_bytes_by_role"] = bytesByRole,
            ["master_peak_rss_bytes"] = master, ["master_of_reference"] = Math.Round((double)master / reference, 4),
            ["processes"] = processes, ["run_seconds"] = Math.Round(clock.Elapsed.TotalSeconds, 1),
            ["cores"] = Environment.ProcessorCount, ["run"] = run,
        };
        // Call inputs the master sent, sequences and outputs the workers read from each other, call outputs the master received (summary.json's data_bytes).
        if (summary["data_bytes"] is JsonObject data) result["data_bytes"] = data.DeepClone();
        if (json)
        {
            Console.WriteLine(result.ToJsonString(new JsonSerializerOptions { WriteIndented = true }));
            return 0;
        }
        Console.WriteLine($"{cfg.Name} under {Path.GetFileName(planPath)}: one copy of the models' state {Gb(reference)} GB ({string.Join(", ", bytesByRole.Select(kv => $"{kv.Key} {Gb((long)kv.Value!)}"))})");
        static string F2(JsonNode? n) => n is null ? "-" : ((double)n).ToString("F2", CultureInfo.InvariantCulture);
        static string G(JsonNode? n) => n is null ? "-" : Gb((long)n);
        Console.WriteLine($"{"process",-10} {"peak RSS GB",12} {"of models",10} {"shards+act GB",14} {"of it",6} {"estimate GB",12} {"of it",6} {"base GB",8} {"arenas GB",10}  peak set by");
        foreach (var row in processes.Select(r => r!.AsObject()))
        {
            var t = row["terms"] as JsonObject;
            Console.WriteLine($"{(string)row["process"]!,-10} {Gb((long)row["peak_rss_bytes"]!),12} {(double)row["of_reference"]!,10:F3} {G(row["planned_bytes"]),14} {F2(row["of_planned"]),6} " +
                              $"{G(row["estimated_peak_bytes"]),12} {F2(row["of_estimate"]),6} {G(t?["base_rss_bytes"]),8} {G(t?["activation_arena_peak_bytes"]),10}  {(string?)t?["peak_set_by"]?["command"] ?? "-"}");
        }
        Console.WriteLine("(shards+act: the planner's shards, train state and largest activations; estimate: resident + active + the process's base RSS measured after start-up; arenas: the most activation blocks the worker held at once)");
        Console.WriteLine($"master peak RSS / models' state: {(double)result["master_of_reference"]!:F3} (goal < 0.1); run {result["run_seconds"]} s");
        if (result["data_bytes"] is JsonObject d)
            Console.WriteLine($"call inputs: {(long)d["from_master"]!} bytes from the master, {(long)d["between_workers"]!} bytes read worker to worker; call outputs: {(long?)d["to_master"] ?? 0} bytes to the master");
        return 0;
    }

    /// <summary>(role, init folder, preset) of the config's top-level models that start from a folder.</summary>
    private static List<(string Role, string Init, string Preset)> InitFolders(string config)
    {
        var yaml = new YamlDotNet.RepresentationModel.YamlStream();
        using (var r = new StreamReader(config)) yaml.Load(r);
        var result = new List<(string, string, string)>();
        if (yaml.Documents.Count != 1 || yaml.Documents[0].RootNode is not YamlDotNet.RepresentationModel.YamlMappingNode root
            || !root.Children.TryGetValue(new YamlDotNet.RepresentationModel.YamlScalarNode("models"), out var models)
            || models is not YamlDotNet.RepresentationModel.YamlMappingNode map)
            throw new ArgumentException($"--config: {config} has no top-level models mapping");
        foreach (var (k, v) in map.Children)
        {
            if (v is not YamlDotNet.RepresentationModel.YamlMappingNode m) continue;
            string? Get(string key) => m.Children.TryGetValue(new YamlDotNet.RepresentationModel.YamlScalarNode(key), out var n) ? (n as YamlDotNet.RepresentationModel.YamlScalarNode)?.Value : null;
            if (Get("init") is { } init && init is not ("random" or "sft" or "rm"))
                result.Add((((YamlDotNet.RepresentationModel.YamlScalarNode)k).Value!, init,
                            Get("preset") ?? throw new ArgumentException($"--config: models.{k}: the benchmark writes init checkpoints of presets only")));
        }
        return result;
    }

    private static LlamaConfig Arch(ExperimentConfig cfg, ModelSpec m) =>
        m.Preset is not null ? LlamaConfig.Preset(m.Preset) : LlamaConfig.FromHfJson(Path.Combine(cfg.BaseDirectory, m.ConfigPath!));

    private static string Gb(long b) => (b / 1e9).ToString("F2", CultureInfo.InvariantCulture);

    private static string Tail(string s) => s.Length > 2000 ? "..." + s[^2000..] : s;
}
