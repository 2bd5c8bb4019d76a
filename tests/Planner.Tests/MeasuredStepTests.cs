// Issue 19: `realn profile` measures a train step outside its blocks on the whole model (train_steps) and how much
// slower one-thread processes compute side by side on the host (shared_compute); the estimator prices a train call
// with them instead of the spec's fitted train_step_overhead_us and worker_compute_slowdown.
using Xunit;

namespace ReaLNative.Planner.Tests;

public class MeasuredStepTests
{
    private static readonly ClusterSpec Cpu = ClusterSpec.Load(TestData.Example("clusters/cpu-local.yaml"));
    // sft of the tiny preset: 8 sequences of 64 tokens in 2 optimizer steps of 256 tokens
    private static readonly Experiment Sft = TestData.Exp("sft", "tiny", "tiny", 8, 32, 32);
    private static readonly CallOption One = new(new Mesh(0, 1, 0, 1), new Strategy(1, 1, 1), 1, false);

    private static LayerPoint P(string kind, double s, int? threads = null) => new() { Kind = kind, Tokens = 256, Seconds = s, Threads = threads };

    /// <summary>Blocks: fwd 0.01 / bwd 0.02 s on both cores, 0.013 / 0.026 on one; the step outside them 0.004 / 0.005 s.</summary>
    private static ProfileData Profile(params SharedCompute[] shared) => new()
    {
        Threads = 2,
        Layers = [new LayerProfile { Hidden = 64, Intermediate = 176, Heads = 4, KvHeads = 2, Points = [P("fwd", 0.01), P("bwd", 0.02), P("fwd", 0.013, 1), P("bwd", 0.026, 1)] }],
        TrainSteps = [new TrainStepProfile { Layers = 2, Hidden = 64, Intermediate = 176, Heads = 4, KvHeads = 2, Vocab = 32, ScalarHead = false,
                                             Points = [P("step", 0.004), P("step", 0.005, 1)] }],
        SharedCompute = [.. shared],
    };

    [Fact]
    public void AMeasuredStepPricesTheEnginesTwoForwardsAndReplacesTheFittedOverhead()
    {
        var call = Sft.Calls[0];
        Assert.Equal(2, call.OptimizerSteps * call.Epochs);
        var prof = Profile();
        prof.Validate();
        Assert.Equal(0.004, prof.TrainStepSeconds(Sft.Models["actor"], false, 256)!.Value, 9);
        Assert.Equal(0.005, prof.TrainStepSeconds(Sft.Models["actor"], false, 256, 1)!.Value, 9);
        Assert.Null(prof.TrainStepSeconds(Sft.Models["actor"], true, 256));   // the critic's head was not measured
        Assert.Null(prof.TrainStepSeconds(ModelConfig.Presets["gpt2-small"], false, 256));
        // the single device (both cores, no dispatch): per step 2 layers x (forward for the loss + forward again in the
        // backward + backward) + the measured rest; the spec's train_step_overhead_us (6 ms) no longer counts
        var single = Cpu with { SharedHost = false, WorkerRoundTrip = 0, DevicesPerNode = 1 };
        Assert.True(Cpu.TrainStepOverhead > 0);
        Assert.Equal(2 * (2 * (2 * 0.01 + 0.02) + 0.004), new Estimator(single, Sft, prof).CallSeconds(call, One), 9);
        // without the step measurement: one forward, the roofline's ends and optimizer, and the spec's overhead
        var noStep = prof with { TrainSteps = [] };
        double old = new Estimator(single, Sft, noStep).CallSeconds(call, One);
        Assert.InRange(old, 2 * (2 * 0.03 + Cpu.TrainStepOverhead), 2 * (2 * 0.03 + Cpu.TrainStepOverhead) + 0.002);
        // a device of the shared host: its one-thread points, x the spec's slowdown without a shared_compute figure
        double dispatch = Estimator.WorkerRoundTrips(call) * Cpu.WorkerRoundTrip;
        double own = 2 * (2 * (2 * 0.013 + 0.026) + 0.005);
        Assert.Equal(own * Cpu.WorkerComputeSlowdown + dispatch, new Estimator(Cpu, Sft, prof).CallSeconds(call, One), 9);
    }

    [Fact]
    public void TheMeasuredSharedComputeSlowdownReplacesTheSpecsForWorkerProcessesOnly()
    {
        var call = Sft.Calls[0];
        var prof = Profile(new SharedCompute { Processes = 2, OverAlone = 1.1 }, new SharedCompute { Processes = 4, OverAlone = 2.3 });
        prof.Validate();
        double own = 2 * (2 * (2 * 0.013 + 0.026) + 0.005);
        double dispatch = Estimator.WorkerRoundTrips(call) * Cpu.WorkerRoundTrip;
        var two = new Estimator(Cpu, Sft, prof);
        Assert.Equal(1.1, two.WorkerComputeSlowdown, 9);
        Assert.Equal(own * 1.1 + dispatch, two.CallSeconds(call, One), 9);
        // 4 one-thread processes on the profile's 2 cores: the measured 2.3x holds the time slicing, so it replaces the
        // devices / cores stretch (2) and the slowdown together
        var four = new Estimator(Cpu with { DevicesPerNode = 4 }, Sft, prof);
        Assert.Equal(2.3 / 2, four.WorkerComputeSlowdown, 9);
        Assert.Equal(own * 2.3 + dispatch, four.CallSeconds(call, One), 9);
        // devices as threads of one process (the in-process estimate prices no worker processes): no slowdown
        var threads = new Estimator(Cpu with { WorkerRoundTrip = 0, WorkerComputeSlowdown = 1 }, Sft, prof);
        Assert.Equal(1, threads.WorkerComputeSlowdown);
        Assert.Equal(own, threads.CallSeconds(call, One), 9);
        // a device count the profile did not measure keeps the spec's figure
        Assert.Equal(Cpu.WorkerComputeSlowdown, new Estimator(Cpu with { DevicesPerNode = 8 }, Sft, prof).WorkerComputeSlowdown);
    }

    [Fact]
    public void TheRoundTripMeasuredForTheSpecsDeviceCountReplacesTheSpecs()
    {
        // `realn profile` measures the round trip with one worker per core (the old pair) and with twice as many (the list)
        var prof = new ProfileData { WorkerRoundTripUs = 3000, WorkerRoundTripDevices = 2, WorkerRoundTrips = [new WorkerRoundTrip { Devices = 2, Us = 3000 }, new WorkerRoundTrip { Devices = 4, Us = 6200 }] };
        prof.Validate();
        var four = ClusterSpec.Load(TestData.Example("clusters/cpu-local-4.yaml"));
        Assert.Equal(10.5e-3, four.WorkerRoundTrip, 9);
        Assert.Equal(6.2e-3, new Estimator(four, Sft, prof).Cluster.WorkerRoundTrip, 9);
        Assert.Equal(3e-3, new Estimator(Cpu, Sft, prof).Cluster.WorkerRoundTrip, 9);
        // an older profile (the pair alone) still serves its own device count, and no other
        var old = new ProfileData { WorkerRoundTripUs = 3000, WorkerRoundTripDevices = 2 };
        Assert.Equal(3e-3, new Estimator(Cpu, Sft, old).Cluster.WorkerRoundTrip, 9);
        Assert.Equal(10.5e-3, new Estimator(four, Sft, old).Cluster.WorkerRoundTrip, 9);
        // the in-process estimate (no worker processes priced) keeps none
        Assert.Equal(0, new Estimator(four with { WorkerRoundTrip = 0 }, Sft, prof).Cluster.WorkerRoundTrip);
        void Refused(ProfileData p, string field) => Assert.Contains(field, Assert.Throws<PlannerException>(p.Validate).Message);
        Refused(new ProfileData { WorkerRoundTrips = [new WorkerRoundTrip { Devices = 1, Us = 5 }] }, "profile.worker_round_trips[0].devices");
        Refused(new ProfileData { WorkerRoundTrips = [new WorkerRoundTrip { Devices = 4, Us = 0 }] }, "profile.worker_round_trips[0].us");
        Refused(new ProfileData { WorkerRoundTrips = [new WorkerRoundTrip { Devices = 4, Us = 5 }, new WorkerRoundTrip { Devices = 4, Us = 6 }] }, "profile.worker_round_trips[1].devices");
    }

    [Fact]
    public void TheGeneratedProfileWriterAndReaderMatchTheReflectionSerializer()
    {
        // ProfileData's JSON is source-generated (NativeAOT has no reflection serializer): on a profile with every field
        // set, and one with the optional ones absent, it writes what the reflection serializer writes and reads it back.
        var full = Profile(new SharedCompute { Processes = 2, OverAlone = 1.07 }) with
        {
            Backend = "cpu", Device = "test CPU 2 cores", GemmGflops = 140.5, MemcpyGbps = 11.25,
            WorkerRoundTripUs = 3600, WorkerRoundTripDevices = 2,
            WorkerRoundTrips = [new WorkerRoundTrip { Devices = 2, Us = 3600, GenerateUs = 12600, ForwardUs = 3800, BackwardUs = 4100.5 }],
            InProcessOverheads = [new WorkerRoundTrip { Devices = 2, Us = 150 }],
            CoreRoundTripsNs = [112.5, 498],
            Generations = [new TrainStepProfile { Layers = 2, Hidden = 64, Intermediate = 176, Heads = 4, KvHeads = 2, Vocab = 32, Points = [P("generate", 3e-4)] }],
        };
        var reflection = new System.Text.Json.JsonSerializerOptions { WriteIndented = true, TypeInfoResolver = new System.Text.Json.Serialization.Metadata.DefaultJsonTypeInfoResolver() };
        foreach (var prof in new[] { full, new ProfileData() })
        {
            string json = prof.ToJson();
            Assert.Equal(System.Text.Json.JsonSerializer.Serialize(prof, reflection), json);
            string path = Path.Combine(Path.GetTempPath(), $"realn-profile-{Guid.NewGuid():N}.json");
            try
            {
                File.WriteAllText(path, json);
                var back = ProfileData.Load(path);
                Assert.Equal(json, back.ToJson());
                Assert.Equal(System.Text.Json.JsonSerializer.Serialize(System.Text.Json.JsonSerializer.Deserialize<ProfileData>(json, reflection), reflection), back.ToJson());
            }
            finally { File.Delete(path); }
        }
        // a field left out keeps its default, as the reflection reader kept it (older profiles lack the newer lists)
        string minimal = Path.Combine(Path.GetTempPath(), $"realn-profile-{Guid.NewGuid():N}.json");
        try
        {
            File.WriteAllText(minimal, """{ "layers": [ { "hidden": 64, "intermediate": 176, "heads": 4, "kv_heads": 2, "points": [ { "kind": "fwd", "tokens": 8, "seconds": 0.001 } ] } ] }""");
            var old = ProfileData.Load(minimal);
            Assert.Equal(1, old.Version);
            Assert.Equal("", old.Backend);
            Assert.Equal("", old.Device);
            Assert.Empty(old.WorkerRoundTrips);
            Assert.Empty(old.InProcessOverheads);
            Assert.Empty(old.TrainSteps);
            Assert.Empty(old.Generations);
            Assert.Empty(old.SharedCompute);
            Assert.Null(old.Layers[0].Points[0].Threads);
            Assert.Equal(new ProfileData { Layers = [new LayerProfile { Hidden = 64, Intermediate = 176, Heads = 4, KvHeads = 2, Points = [new LayerPoint { Kind = "fwd", Tokens = 8, Seconds = 0.001 }] }] }.ToJson(), old.ToJson());
        }
        finally { File.Delete(minimal); }
        Assert.Contains("\"generate_us\": 12600", full.ToJson());
        Assert.DoesNotContain("worker_round_trip_us", new ProfileData().ToJson());   // WhenWritingNull holds
    }

    [Fact]
    public void TheNewProfileFieldsRoundTripAndBadOnesAreRefusedByName()
    {
        var prof = Profile(new SharedCompute { Processes = 2, OverAlone = 1.07 });
        string json = prof.ToJson();
        Assert.Contains("\"train_steps\"", json);
        Assert.Contains("\"scalar_head\"", json);
        Assert.Contains("\"shared_compute\"", json);
        Assert.Contains("\"over_alone\"", json);
        var back = System.Text.Json.JsonSerializer.Deserialize<ProfileData>(json)!;
        back.Validate();
        Assert.Equal(0.005, back.TrainStepSeconds(Sft.Models["actor"], false, 100, 1)!.Value, 9);
        Assert.Equal(1.07, back.SharedComputeOverAlone(2));
        Assert.Null(back.SharedComputeOverAlone(4));

        void Refused(ProfileData p, string field) => Assert.Contains(field, Assert.Throws<PlannerException>(p.Validate).Message);
        var step = prof.TrainSteps[0];
        Refused(prof with { TrainSteps = [step with { Points = [P("step", -0.001)] }] }, "profile.train_steps[0].points[0].seconds");
        Refused(prof with { TrainSteps = [step with { Points = [] }] }, "profile.train_steps[0].points");
        Refused(prof with { TrainSteps = [step with { Vocab = 0 }] }, "profile.train_steps[0]");
        Refused(prof with { SharedCompute = [new SharedCompute { Processes = 1, OverAlone = 1 }] }, "profile.shared_compute[0].processes");
        Refused(prof with { SharedCompute = [new SharedCompute { Processes = 2, OverAlone = 0 }] }, "profile.shared_compute[0].over_alone");
        Refused(prof with { SharedCompute = [new SharedCompute { Processes = 2, OverAlone = 1 }, new SharedCompute { Processes = 2, OverAlone = 1.2 }] }, "profile.shared_compute[1].processes");
    }

    [Fact]
    public void EachCallPaysTheRoundTripMeasuredForItsOperations()
    {
        // ppo-tiny-timing: a generation, three inference calls, two train calls of 2 epochs x 4 minibatches
        var exp = Experiment.Load(TestData.Example("bench/ppo-tiny-timing.yaml"));
        var rt = new WorkerRoundTrip { Devices = 2, Us = 4000, GenerateUs = 12000, ForwardUs = 3500, BackwardUs = 2500 };
        var prof = new ProfileData { WorkerRoundTrips = [rt] };
        prof.Validate();
        var est = new Estimator(Cpu, exp, prof);
        var gen = exp.Calls.Single(c => c.Type == CallType.Generate);
        var inf = exp.Calls.First(c => c.Type == CallType.Inference);
        var train = exp.Calls.First(c => c.Type == CallType.TrainStep);
        Assert.Equal(8, train.OptimizerSteps * train.Epochs);
        Assert.Equal(12e-3, est.WorkerDispatchSeconds(gen), 9);
        Assert.Equal(3.5e-3, est.WorkerDispatchSeconds(inf), 9);
        // PPO's train calls compute their loss on the workers: one round trip per optimizer step (the backward
        // kind: forward, loss, backward and step in one command); a train call of another algorithm two
        Assert.True(train.LossOnWorkers);
        Assert.Equal(8, Estimator.WorkerRoundTrips(train));
        Assert.Equal(8 * 2.5e-3, est.WorkerDispatchSeconds(train), 9);
        Assert.Equal(16, Estimator.WorkerRoundTrips(train with { LossOnWorkers = false }));
        Assert.Equal(8 * (3.5e-3 + 2.5e-3), est.WorkerDispatchSeconds(train with { LossOnWorkers = false }), 9);
        var sft = Experiment.Create("sft", "sft", 1, 8, 16, 8, 2, exp.Models).Calls.Single(c => c.Type == CallType.TrainStep);
        Assert.False(sft.LossOnWorkers);
        // the mean is the figure for collectives between workers, and for a kind an older profile did not measure
        Assert.Equal(4e-3, est.Cluster.WorkerRoundTrip, 9);
        var older = new Estimator(Cpu, exp, new ProfileData { WorkerRoundTrips = [rt with { GenerateUs = null }] });
        Assert.Equal(4e-3, older.WorkerDispatchSeconds(gen), 9);
        // in process (no worker processes priced) none
        Assert.Equal(0, new Estimator(Cpu with { WorkerRoundTrip = 0 }, exp, prof).WorkerDispatchSeconds(gen));
        Assert.Contains("profile.worker_round_trips[0].forward_us",
                        Assert.Throws<PlannerException>(new ProfileData { WorkerRoundTrips = [rt with { ForwardUs = -1 }] }.Validate).Message);
    }

    [Fact]
    public void AMeasuredGenerationRestIsChargedPerDecodeStepInPlaceOfTheRooflinesEnds()
    {
        var exp = Experiment.Load(TestData.Example("bench/ppo-tiny-timing.yaml"));
        var gen = exp.Calls.Single(c => c.Type == CallType.Generate);
        var single = Cpu with { SharedHost = false, WorkerRoundTrip = 0, DevicesPerNode = 1 };
        var all = new CallOption(new Mesh(0, 1, 0, 1), new Strategy(1, 1, 1), 1, false);
        LayerPoint D(int seqs, double s) => new() { Kind = "decode", Tokens = seqs, Context = 32, Seconds = s };
        LayerPoint G(int seqs, double s) => new() { Kind = "generate", Tokens = seqs, Context = 7, Seconds = s };
        TrainStepProfile Rest(params LayerPoint[] pts) => new() { Layers = 2, Hidden = 64, Intermediate = 176, Heads = 4, KvHeads = 2, Vocab = 32, Points = [.. pts] };
        var blocks = new ProfileData
        {
            Threads = 2,
            Layers = [new LayerProfile { Hidden = 64, Intermediate = 176, Heads = 4, KvHeads = 2, Points = [P("fwd", 0.01), P("bwd", 0.02), D(8, 1e-4), D(256, 1e-3)] }],
        };
        var zero = blocks with { Generations = [Rest(G(32, 0), G(256, 0))] };
        var rest = blocks with { Generations = [Rest(G(32, 1e-4), G(256, 2e-3))] };
        rest.Validate();
        Assert.Equal(2e-3, rest.GenerationStepSeconds(exp.Models["actor"], 256)!.Value, 9);
        Assert.Equal(1e-3, rest.GenerationStepSeconds(exp.Models["actor"], 400)!.Value * 256 / 400 / 2, 9);   // beyond: proportional
        double e0 = new Estimator(single, exp, zero).CallSeconds(gen, all);
        double e1 = new Estimator(single, exp, rest).CallSeconds(gen, all);
        // the prefill (which samples the first token) and every decode step after it pay the measured rest
        Assert.Equal(2e-3 * gen.DecodeSteps, e1 - e0, 9);
        // without the measurement (older profiles) the roofline's embedding, head and sampling are charged instead
        Assert.True(new Estimator(single, exp, blocks).CallSeconds(gen, all) > e0);
        var bad = blocks with { Generations = [Rest(G(32, -1))] };
        Assert.Contains("profile.generations[0].points[0].seconds", Assert.Throws<PlannerException>(bad.Validate).Message);
    }
}
