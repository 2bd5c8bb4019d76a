// Bad inputs give a PlannerException naming the field and what is wrong; shipped examples parse.
using Xunit;

namespace ReaLNative.Planner.Tests;

public class InputTests
{
    private const string GoodCluster = """
        name: c
        nodes: 1
        devices_per_node: 8
        device_memory_gib: 80
        precision: bf16
        peak_tflops: 989
        compute_efficiency: 0.5
        memory_bandwidth_gbps: 3350
        intra_node_bandwidth_gbps: 360
        intra_node_latency_us: 6
        inter_node_bandwidth_gbps: 45
        inter_node_latency_us: 12
        host_bandwidth_gbps: 50
        """;

    [Theory]
    [InlineData("device_memory_gib: 80", "device_memory_gib: -1", "cluster.device_memory_gib: -1 is out of range")]
    [InlineData("devices_per_node: 8", "devices_per_node: 6", "cluster.devices_per_node: 6 is not a power of two")]
    [InlineData("precision: bf16", "precision: fp8", "cluster.precision: 'fp8' is not one of")]
    [InlineData("peak_tflops: 989", "peak_tflops: fast", "cluster.peak_tflops: 'fast' is not a finite number")]
    [InlineData("host_bandwidth_gbps: 50", "host_bandwidth_gbps: 50\ngemm_max_efficiency: 1.2", "cluster.gemm_max_efficiency: 1.2 is out of range")]
    [InlineData("nodes: 1\n", "", "cluster.nodes: missing")]
    [InlineData("host_bandwidth_gbps: 50", "host_bandwidth_gbps: 50\nbogus: 1", "cluster.bogus: unknown key")]
    [InlineData("nodes: 1", "nodes: [1", "YAML syntax error")]
    public void BadClusterNamesField(string from, string to, string expected)
    {
        var e = Assert.Throws<PlannerException>(() => ClusterSpec.Parse(GoodCluster.Replace(from, to)));
        Assert.Contains(expected, e.Message);
    }

    [Fact]
    public void ShippedClustersParse()
    {
        foreach (var f in new[] { "a100-80gb", "h100-80gb", "cpu-local" })
        {
            var c = ClusterSpec.Load(TestData.Example($"clusters/{f}.yaml"));
            Assert.Equal(f, c.Name);
            Assert.True(c.UsableMemoryBytes > 0);
        }
        var cpu = ClusterSpec.Load(TestData.Example("clusters/cpu-local.yaml"));
        Assert.Equal(2, cpu.TotalDevices);
        Assert.Equal(Precision.Fp32, cpu.Precision);
        Assert.Equal(128, ClusterSpec.Load(TestData.Example("clusters/h100-80gb.yaml")).WithNodes(16).TotalDevices);
        Assert.Throws<PlannerException>(() => cpu.WithNodes(0));
    }

    [Fact]
    public void ScaleExamplesParseWithTwoToTheSeventeenTokens()
    {
        var files = Directory.GetFiles(TestData.Example("scale"), "*.yaml");
        Assert.Equal(72, files.Length); // 3 kinds x 4 sizes x (3 short + 3 long-context sequence settings)
        foreach (var f in files)
        {
            var e = Experiment.Load(f);
            Assert.Equal("ppo", e.Algorithm);
            Assert.Equal(1 << 17, e.BatchSize * (e.PromptLen + e.GenLen));
            Assert.Equal(6, e.Calls.Count);
            // the header names the ladder's GPU count and the matching --nodes
            string head = File.ReadAllText(f);
            var gpus = System.Text.RegularExpressions.Regex.Match(head, @"Plan on (\d+) GPUs").Groups[1].Value;
            Assert.Contains($"--nodes {int.Parse(gpus) / 8}", head);
        }
        var both = Experiment.Load(TestData.Example("scale/scale-critic-70b-gen128.yaml"));
        Assert.Equal("llama-7b", both.Models["actor"].Name);
        Assert.Equal("llama-70b", both.Models["critic"].Name);
    }

    [Fact]
    public void TaskRewardExperimentHasNoRewardModel()
    {
        // reward.kind: task scores samples on the master: no reward model, no rew_inf call
        var e = Experiment.Parse("""
            algorithm: rloo
            reward: { kind: task }
            models:
              actor: { preset: tiny }
              ref: { preset: tiny }
            batch: { size: 8, prompt_len: 4, gen_len: 4 }
            """);
        Assert.Equal("task", e.RewardKind);
        Assert.Equal(["actor", "ref"], e.Models.Keys.Order());
        Assert.Equal(["actor_gen", "ref_inf", "actor_train"], e.Calls.Select(c => c.Name));
        Assert.False(e.IsTrainable("reward"));
        foreach (var f in new[] { "grpo-tiny.yaml", "rloo-tiny.yaml", "remax-tiny.yaml", "dpo-tiny.yaml" })
            Assert.DoesNotContain(Experiment.Load(TestData.Example(f)).Calls, c => c.Role == "reward");
    }

    [Fact]
    public void EveryExampleExperimentLoads()
    {
        // `realn plan` accepts every experiment the engine runs; grpo-math.yaml (reward.kind: numeric_match)
        // was refused by the planner while the engine ran it
        var files = Directory.GetFiles(TestData.Example(""), "*.yaml", SearchOption.AllDirectories)
            .Where(f => !f.Contains("/clusters/") && !f.Contains("/models/") && !f.Contains("/data/")).ToList();
        Assert.Contains(files, f => f.EndsWith("grpo-math.yaml"));
        foreach (var f in files)
        {
            var e = Experiment.Load(f);
            Assert.True(e.Calls.Count > 0, f);
        }
        var math = Experiment.Load(TestData.Example("grpo-math.yaml"));
        Assert.Equal("numeric_match", math.RewardKind);
        Assert.DoesNotContain(math.Calls, c => c.Role == "reward");
    }

    [Theory]
    [InlineData("algorithm: ppo", "algorithm: ppx", "algorithm: 'ppx' is not one of")]
    [InlineData("preset: tiny }\n  critic", "preset: huge }\n  critic", "models.actor.preset: 'huge' is not one of")]
    [InlineData("  reward: { preset: tiny }\n", "", "models.reward: missing")]
    [InlineData("size: 8", "size: 0", "batch.size: 0 is out of range")]
    [InlineData("minibatches: 2", "minibatches: 9", "batch.minibatches: 9 exceeds batch.size 8")]
    [InlineData("algorithm: ppo", "algorithm: ppo\nreward: { kind: judge }", "reward.kind: 'judge' is not one of model, task, exact_match, numeric_match")]
    public void BadExperimentNamesField(string from, string to, string expected)
    {
        const string good = """
            algorithm: ppo
            models:
              actor: { preset: tiny }
              critic: { preset: tiny }
              ref: { preset: tiny }
              reward: { preset: tiny }
            batch:
              size: 8
              prompt_len: 4
              gen_len: 4
              minibatches: 2
            """;
        Assert.Equal(6, Experiment.Parse(good).Calls.Count);
        var e = Assert.Throws<PlannerException>(() => Experiment.Parse(good.Replace(from, to)));
        Assert.Contains(expected, e.Message);
    }

    [Fact]
    public void HfConfigJsonIsRead()
    {
        string dir = Directory.CreateTempSubdirectory("realn-plan").FullName;
        File.WriteAllText(Path.Combine(dir, "config.json"), """
            { "num_hidden_layers": 32, "hidden_size": 4096, "intermediate_size": 11008, "num_attention_heads": 32,
              "num_key_value_heads": 32, "vocab_size": 32000, "tie_word_embeddings": false }
            """);
        File.WriteAllText(Path.Combine(dir, "exp.yaml"), "algorithm: sft\nmodels:\n  actor: { config: config.json }\nbatch: { size: 8, prompt_len: 16, gen_len: 16 }\n");
        var e = Experiment.Load(Path.Combine(dir, "exp.yaml"));
        Assert.Equal(ModelConfig.Presets["llama-7b"].Params(false), e.Models["actor"].Params(false));
        // LLaMA-7B has 6,738,415,616 parameters (embedding + head 2vh, blocks (4h^2 + 3hi + 2h) L, final norm h)
        Assert.Equal(6_738_415_616d, e.Models["actor"].Params(false));
        File.WriteAllText(Path.Combine(dir, "config.json"), """{ "num_hidden_layers": 2, "num_attention_heads": 4 }""");
        var err = Assert.Throws<PlannerException>(() => Experiment.Load(Path.Combine(dir, "exp.yaml")));
        Assert.Contains("models.actor.config", err.Message);
        Assert.Contains("lacks 'hidden_size'", err.Message);
        Directory.Delete(dir, true);
    }

    [Fact]
    public void ModelThatFitsNowhereSaysByHowMuch()
    {
        var cpu = ClusterSpec.Load(TestData.Example("clusters/cpu-local.yaml"));
        var exp = Experiment.Load(TestData.Example("scale/scale-both-70b-gen128.yaml"));
        var e = Assert.Throws<PlannerException>(() => PlanSearch.Run(cpu, exp, new SearchOptions()));
        Assert.Contains("llama-70b", e.Message);
        Assert.Contains("does not fit", e.Message);
        Assert.Matches(@"\d+\.\d+ GiB more than the 10\.00 GiB available", e.Message);
    }

    [Theory]
    [InlineData("\"pp\": 1", "\"pp\": 3", "strategy: pp*dp*tp = 6 but the mesh has 2 devices")]
    [InlineData("\"device_start\": 0", "\"device_start\": 1", "must be an aligned power-of-two range")]
    [InlineData("\"node_count\": 1", "\"node_count\": 2", "outside the cluster's 1 node(s)")]
    [InlineData("\"type\": \"generate\"", "\"type\": \"gen\"", "plan.calls[0].type: 'gen' is not one of")]
    [InlineData("\"pp\": 1", "\"pp\": \"x\"", "plan.calls[0].strategy.pp: expected an integer")]
    [InlineData("\"version\": 1", "\"version\": 2", "plan.version: 2 is not supported")]
    [InlineData("\"name\": \"actor_gen\"", "\"name\": \"actor_gen2\"", "has no call 'actor_gen2'")]
    [InlineData("\"micro_batches\": 1", "\"micro_batches\": 0", "plan.calls[0].micro_batches: 0 must be at least 1")]
    [InlineData("\"micro_batches\": 1", "\"micro_batches\": 1, \"microbatches\": 2", "plan.calls[0].microbatches: unknown field; allowed fields here: name, model, type, mesh, strategy, micro_batches")]
    [InlineData("\"tp\": 1", "\"tp\": 1, \"cp\": 1", "plan.calls[0].strategy.cp: unknown field")]
    [InlineData("\"device_count\": 2", "\"device_count\": 2, \"devices\": [0, 1]", "plan.calls[0].mesh.devices: unknown field")]
    [InlineData("\"version\": 1", "\"version\": 1, \"comment\": \"x\"", "plan.comment: unknown field")]
    [InlineData("\"devices_per_node\": 2", "\"devices_per_node\": 2, \"gpus\": 2", "plan.cluster.gpus: unknown field")]
    [InlineData("\"iteration_seconds\"", "\"seconds\": 1, \"iteration_seconds\"", "plan.estimate.seconds: unknown field")]
    [InlineData("\"version\": 1,", "\"version\": 1,,", "plan: not valid JSON at line 2, column")]
    public void BadPlanNamesField(string from, string to, string expected)
    {
        var cl = TestData.Cluster(1, 2, 4);
        var exp = TestData.Exp("ppo", "tiny", "tiny", 8, 8, 8);
        var r = PlanSearch.Run(cl, exp, new SearchOptions { Seed = 1 });
        string json = PlanJson.ToJson(r.Best.Plan);
        // make the first call a known shape, then break one field
        var first = r.Best.Plan.Calls[0] with { Mesh = new Mesh(0, 1, 0, 2), Strategy = new Strategy(1, 2, 1), MicroBatches = 1 };
        var plan = r.Best.Plan with { Calls = [first, .. r.Best.Plan.Calls.Skip(1)] };
        json = PlanJson.ToJson(plan);
        PlanValidator.Validate(PlanJson.Parse(json), cl, exp);
        Assert.Contains(from, json);
        var e = Assert.Throws<PlannerException>(() => PlanValidator.Validate(PlanJson.Parse(ReplaceFirst(json, from, to)), cl, exp));
        Assert.Contains(expected, e.Message);
    }

    private static string ReplaceFirst(string s, string a, string b)
    {
        int i = s.IndexOf(a, StringComparison.Ordinal);
        return s[..i] + b + s[(i + a.Length)..];
    }

    [Fact]
    public void BadProfileNamesField()
    {
        string f = Path.GetTempFileName();
        File.WriteAllText(f, """{ "version": 1, "layers": [ { "hidden": 64, "intermediate": 176, "heads": 4, "kv_heads": 2, "points": [ { "kind": "fwd", "tokens": 0, "seconds": 1 } ] } ] }""");
        var e = Assert.Throws<PlannerException>(() => ProfileData.Load(f));
        Assert.Contains("profile.layers[0].points[0].tokens", e.Message);
        File.WriteAllText(f, """{ "version": 1, "gemm_gflops": -3 }""");
        Assert.Contains("profile.gemm_gflops", Assert.Throws<PlannerException>(() => ProfileData.Load(f)).Message);
        File.Delete(f);
    }
}

public class PlanValidatorTests
{
    [Fact]
    public void TensorParallelGroupMayNotSpanNodes()
    {
        var cl = TestData.Cluster(3, 4, 8);
        var exp = TestData.Exp("sft", "tiny", "tiny", 64, 8, 8, 1);
        var ok = new Plan(3, 4, [new PlanCall("actor_train", "actor", CallType.TrainStep, new Mesh(0, 3, 0, 4), new Strategy(1, 6, 2), 1)], null);
        PlanValidator.Validate(ok, cl, exp);
        // tp 3 is not a divisor of 4 devices per node: a group would straddle nodes 0 and 1
        var bad = ok with { Calls = [ok.Calls[0] with { Strategy = new Strategy(1, 4, 3) }] };
        Assert.Contains("tp 3 would span nodes", Assert.Throws<PlannerException>(() => PlanValidator.Validate(bad, cl, exp)).Message);
        var missing = ok with { Calls = [] };
        Assert.Contains("call 'actor_train' of the experiment is missing", Assert.Throws<PlannerException>(() => PlanValidator.Validate(missing, cl, exp)).Message);
        var wrongCluster = ok with { Nodes = 2 };
        Assert.Contains("plan is for 2x4 devices", Assert.Throws<PlannerException>(() => PlanValidator.Validate(wrongCluster, cl, exp)).Message);
    }

    [Fact]
    public void EmptyPlanAndZeroMicroBatchesHaveTheirOwnMessages()
    {
        Assert.Contains("empty", Assert.Throws<PlannerException>(() => PlanJson.Parse(" \n")).Message);
        var exp = TestData.Exp("ppo", "tiny", "tiny", 8, 8, 8);
        var call = exp.Calls[0];
        Assert.Equal("micro_batches 0 must be at least 1", PlanValidator.StrategyProblem(new Strategy(1, 1, 1), 0, exp.Models[call.Role], call, 8));
    }

    [Theory]
    [InlineData("nodes: 1\ndevices_per_node: {a: 1\nname: c\n", 2, 19, "not closed")]   // YamlDotNet: InvalidOperationException, no position
    [InlineData("nodes: 1\nname: [c\n", 3, 1, "YAML syntax error")]
    public void YamlSyntaxErrorsNameLineAndColumn(string yaml, int line, int column, string expected)
    {
        var e = Assert.Throws<PlannerException>(() => ClusterSpec.Parse(yaml, "spec.yaml"));
        Assert.Equal((line, column), (e.Line, e.Column));
        Assert.StartsWith($"spec.yaml:{line}:{column}: ", e.Message);
        Assert.Contains(expected, e.Message);
    }

    [Fact]
    public void MemoryFitRefusesWhatCannotFitWithThePlannersMessage()
    {
        var exp = TestData.Exp("ppo", "llama-7b", "llama-7b", 8, 8, 8);
        var e = Assert.Throws<PlannerException>(() => MemoryFit.Check(exp, null, 16 * 1024.0 * 1024 * 1024, "test box"));
        Assert.Contains("does not fit: the most memory-frugal layout", e.Message);
        Assert.Contains("available on cluster 'test box, one device'", e.Message);
        var tiny = TestData.Exp("ppo", "tiny", "tiny", 8, 8, 8);
        MemoryFit.Check(tiny, null, 16 * 1024.0 * 1024 * 1024, "test box");
        // a plan: every call on the plan's layout; the devices share the memory
        var plan = PlanSearch.Run(TestData.Cluster(1, 2, 4), tiny, new SearchOptions { Seed = 1 }).Best.Plan;
        MemoryFit.Check(tiny, plan, 16 * 1024.0 * 1024 * 1024, "test box");
        e = Assert.Throws<PlannerException>(() => MemoryFit.Check(tiny, plan, 200_000, "test box"));
        Assert.Contains("test box", e.Message);
    }

    /// <summary>Bytes per parameter by each model's precision: bf16 trained = 2 (weights) + 4 (fp32
    /// gradients) + 12 (fp32 master, m, v) against fp32's 4 + 4 + 8; bf16 frozen = 2 against 4; the
    /// KV cache in the model's precision; activations in the cluster's (fp32 on the CPU machine).</summary>
    [Fact]
    public void MemoryEstimateUsesEachModelsPrecision()
    {
        var fp = TestData.Exp("ppo", "tiny", "tiny", 8, 8, 8);
        var all = fp.Models.Keys.ToDictionary(r => r, _ => Precision.Bf16);
        var bf = fp.WithModelPrecisions(all);
        var refOnly = fp.WithModelPrecisions(new Dictionary<string, Precision> { ["ref"] = Precision.Bf16 });
        Assert.Equal(Precision.Bf16, bf.PrecisionOf("actor"));
        Assert.Null(fp.PrecisionOf("actor"));
        Assert.Null(refOnly.PrecisionOf("actor"));
        var cluster = TestData.Cluster(1, 1, 4);
        var one = new CallOption(new Mesh(0, 1, 0, 1), new Strategy(1, 1, 1), 1, false);
        foreach (var call in fp.Calls)
        {
            var m32 = new Estimator(cluster, fp).Memory(call, one);
            var m16 = new Estimator(cluster, bf).Memory(call, one);
            var mRef = new Estimator(cluster, refOnly).Memory(call, one);
            Assert.Equal(m32.WeightBytes / 2, m16.WeightBytes, 6);
            Assert.Equal(call.Role == "ref" ? m16 : m32, mRef);   // only the ref model's calls change
            switch (call.Type)
            {
                case CallType.TrainStep:
                    Assert.Equal(m32.TrainStateBytes / 12 * 16, m16.TrainStateBytes, 6);   // per parameter: 4 + 8 -> 4 + 12
                    Assert.Equal((m32.WeightBytes + m32.TrainStateBytes) / 16 * 18, m16.WeightBytes + m16.TrainStateBytes, 6);
                    Assert.Equal(m32.ActiveBytes, m16.ActiveBytes);      // fp32 activations
                    break;
                case CallType.Generate:
                    Assert.True(m16.ActiveBytes < m32.ActiveBytes, $"{call.Name}: a bf16 KV cache is smaller");
                    break;
                default:
                    Assert.Equal(0, m16.TrainStateBytes);
                    Assert.Equal(m32.ActiveBytes, m16.ActiveBytes);
                    break;
            }
        }
        // Without a plan (every call on the master): PPO's models (actor = ref, critic = reward in
        // size) hold 2 x 18 + 2 x 2 = 40 B per parameter pair in bf16, as many as 2 x 16 + 2 x 4 in
        // fp32; only the KV cache can make the bf16 peak smaller.
        double single32 = MemoryFit.Estimate(fp, null).MasterBytes, single16 = MemoryFit.Estimate(bf, null).MasterBytes;
        Assert.True(single16 <= single32 && single16 > 0.9 * single32, $"{single16} vs {single32}");
    }

    [Fact]
    public void MemoryEstimateIsWhatTheSearchAndTheFitCheckSee()
    {
        var tiny = TestData.Exp("ppo", "tiny", "tiny", 8, 8, 8);
        var best = PlanSearch.Run(TestData.Cluster(1, 2, 4), tiny, new SearchOptions { Seed = 1 }).Best;
        var e = MemoryFit.Estimate(tiny, best.Plan);
        // per device: the search's own peak for its choice; the master: no model (the devices hold the shards)
        Assert.Equal(best.PeakMemory, e.DeviceBytes);
        Assert.Equal(0, e.MasterBytes);
        Assert.All(e.DeviceBytes, b => Assert.True(b > 0));
        // the fit check passes with exactly that much memory and refuses a little less
        double needed = e.MasterBytes + e.DeviceBytes.Max() * e.DeviceBytes.Length;
        MemoryFit.Check(tiny, best.Plan, needed * 1.0001, "test box");
        Assert.Throws<PlannerException>(() => MemoryFit.Check(tiny, best.Plan, needed * 0.999, "test box"));
        // without a plan: one device (the master) runs every call, models and optimizer state resident
        var single = MemoryFit.Estimate(tiny, null);
        Assert.Empty(single.DeviceBytes);
        Assert.True(single.MasterBytes > e.MasterBytes, $"{single.MasterBytes} <= {e.MasterBytes}");
    }
}
