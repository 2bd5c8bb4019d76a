// `realn profile [--model PRESET ...] [--out PROFILE.json]`: measures, on this machine's backend,
// the wall time of ONE transformer block (forward and backward at several packed token counts,
// and one decode step at several batch sizes) plus GEMM and memcpy throughput, and writes the
// calibration profile the planner's estimator uses instead of its roofline (src/Planner/Profile.cs
// documents the format). A block is timed as half the difference between a 3-block and a 1-block model
// with a tiny vocabulary, so embedding and head costs cancel; the two are timed in turn in rounds, every block point
// (every core and one thread) in the same rounds, and the median round counts (InterleavedDifferences); a difference
// whose median the rounds leave uncertain is refused (exit 1) rather than recorded.
// It times the engine's train step (a PPO actor and critic optimizer step as SingleModelCalls runs it) on the whole
// model and records what it costs beyond layers x (2 forward + backward) of its blocks (`train_steps`: embedding,
// head, loss, AdamW, host work; the engine runs the forward again in its backward), at every core and one thread; and
// likewise a whole generation beyond its prefill and decode blocks, per decode step (`generations`).
// With more than one core it times one-thread processes running that step side by side, as many as the devices (one
// per core) and twice as many, against one alone (`shared_compute`: the cost of sharing caches, memory bandwidth
// and, beyond the cores, time slices), so the planner prices worker processes with no hand-fitted constant.
// With more than one core it also measures the worker round trip (the cluster spec's
// worker_round_trip_us) on this machine: a short PPO of the tiny preset in one worker process per core (and in
// twice as many: `worker_round_trips`),
// every call data parallel over all of them, run as a child `realn run --plan` with REALN_WORKER_TIMING=1;
// the mean master-worker round trip beyond the workers' compute it reports goes into the profile
// (`worker_round_trip_us`, `worker_round_trip_devices`), which the planner prefers to the spec's figure. The same
// PPO run `--in-process` (devices as threads) with REALN_INPROCESS_TIMING=1 gives what an operation on that many
// in-process devices costs beyond its fastest device, by kind (`in_process_overheads`).
using System.CommandLine;
using System.Diagnostics;
using ReaLNative.Engine.Algorithms;
using ReaLNative.Engine.Config;
using ReaLNative.Engine.Generation;
using ReaLNative.Engine.Model;
using ReaLNative.Engine.Optim;
using ReaLNative.Engine.Stages;
using ReaLNative.Interop;
using ReaLNative.Planner;

namespace ReaLNative.Diagnostics;

public static class ProfileCommand
{
    public static Command Create()
    {
        var models = new Option<string[]>("--model") { Description = "Model presets to profile (repeatable)", DefaultValueFactory = _ => ["tiny"], AllowMultipleArgumentsPerToken = true };
        var output = new Option<string>("--out") { Description = "Profile JSON to write", DefaultValueFactory = _ => "profile.json" };
        var noWorkers = new Option<bool>("--no-workers") { Description = "Skip the round-trip measurements (short PPO runs in one worker process per core and with devices as threads)" };
        // internal: one of the processes of the shared-compute measurement (started by `realn profile` itself)
        var sharedChild = new Option<bool>(SharedChildOption) { Hidden = true };
        var cmd = new Command("profile", "Measure block costs, train-step overhead, shared-core slowdown and the worker round trip on this machine and write a planner calibration profile");
        cmd.Options.Add(models);
        cmd.Options.Add(output);
        cmd.Options.Add(noWorkers);
        cmd.Options.Add(sharedChild);
        cmd.SetAction(p => p.GetValue(sharedChild) ? SharedChild() : Run(p.GetValue(models)!, p.GetValue(output)!, !p.GetValue(noWorkers)));
        return cmd;
    }

    private const string SharedChildOption = "--shared-compute-child";

    /// <summary>The packed batch of a train-step measurement: <paramref name="seqs"/> sequences of
    /// <see cref="StepSeqLen"/> tokens, the second half of each its actions (ppo-tiny's 6.5-token prompts and
    /// 5.5-token answers, rounded).</summary>
    internal static ScoredBatch StepBatch(int seqs, int vocab, Random rng)
    {
        var s = Enumerable.Range(0, seqs).Select(_ => Enumerable.Range(0, StepSeqLen).Select(_ => rng.Next(vocab)).ToArray()).ToArray();
        return new ScoredBatch(s, Enumerable.Repeat(StepSeqLen / 2, seqs).ToArray());
    }

    internal const int StepSeqLen = 12;

    /// <summary>One optimizer step as a PPO train call runs it on one device (SingleModelCalls, the stage's loss):
    /// actor (LM head): log-probs forward, clipped policy loss, backward from the log-prob gradients (which
    /// runs the forward again), AdamW with clipping; critic (scalar head): values forward, clipped value loss,
    /// backward (forward again), AdamW.</summary>
    internal static Action EngineTrainStep(LlamaModel model, AdamW opt, ScoredBatch b)
    {
        var calls = new SingleModelCalls(model, () => opt);
        int a = b.Actions;
        var rng = new Random(5);
        var old = Enumerable.Range(0, a).Select(_ => (float)(-3 + rng.NextDouble())).ToArray();
        var adv = Enumerable.Range(0, a).Select(_ => (float)(rng.NextDouble() - 0.5)).ToArray();
        var keep = Enumerable.Repeat(true, b.Packed.Count).ToArray();
        var mask = Enumerable.Repeat(1f, a).ToArray();
        if (!model.ScalarHead)
            return () =>
            {
                var lp = calls.LogProbs(b, 1f);
                var g = new float[lp.Length];
                Losses.ClippedPolicy(lp, old, adv, [], b.ActionCu, keep, 0.2, 0.2, LossAggregation.Token, 0, g);
                calls.BackwardLogProbs(b, 1f, g);
                calls.Step();
            };
        return () =>
        {
            var (v, _) = calls.Values(b);
            var g = new float[v.Length];
            Losses.ClippedValue(v, adv, old, mask, 0.2, g);
            calls.BackwardValues(b, g, []);
            calls.Step();
        };
    }

    /// <summary>A whole model of <paramref name="cfg"/> with its optimizer (tiny learning rate: the weights barely move
    /// over the repetitions).</summary>
    private static (LlamaModel Model, AdamW Opt) TrainedModel(LlamaConfig cfg, bool scalarHead)
    {
        var m = new LlamaModel(cfg with { MaxPositions = Math.Max(cfg.MaxPositions, StepSeqLen) }, scalarHead);
        m.InitRandom(2);
        return (m, new AdamW(m, new LrSchedule(1e-6), clipGradNorm: 1f));
    }

    /// <summary>Sequences per train step of the shared-compute measurement: ppo-tiny's optimizer step on one of two
    /// data-parallel devices (256 / 4 minibatches / 2).</summary>
    private const int SharedSeqs = 32;
    /// <summary>About how long one process alone computes its steps in the shared-compute measurement.</summary>
    private const double SharedSeconds = 1.5;

    /// <summary>A child of <see cref="SharedStepsSeconds"/>: builds the tiny actor on one thread, says "ready", waits for
    /// "go N" on stdin, runs N train steps and says "done" (for "time N": prints the median step's seconds).</summary>
    private static int SharedChild()
    {
        Native.SetNumThreads(1);
        var (model, opt) = TrainedModel(LlamaConfig.Preset("tiny"), false);
        using var _m = model;
        using var _o = opt;
        var step = EngineTrainStep(model, opt, StepBatch(SharedSeqs, model.Config.Vocab, new Random(7)));
        for (int i = 0; i < 3; i++) step();
        Console.WriteLine("ready");
        Console.Out.Flush();
        var cmd = (Console.ReadLine() ?? "").Split(' ');
        if (cmd.Length != 2 || !int.TryParse(cmd[1], out int n) || n <= 0) return 2;
        if (cmd[0] == "time")
        {
            var times = new double[n];
            for (int i = 0; i < n; i++) { long t0 = Stopwatch.GetTimestamp(); step(); times[i] = Stopwatch.GetElapsedTime(t0).TotalSeconds; }
            Array.Sort(times);
            Console.WriteLine(FormattableString.Invariant($"median {times[n / 2]:R}"));
            return 0;
        }
        if (cmd[0] != "go") return 2;
        for (int i = 0; i < n; i++) step();
        Console.WriteLine("done");
        return 0;
    }

    /// <summary>This realn started again with <paramref name="args"/>, as worker processes are started (under `dotnet
    /// realn.dll` too).</summary>
    private static ProcessStartInfo Self(IEnumerable<string> args)
    {
        var (exe, prefix) = WorkerProcessOptions.Resolve(new WorkerProcessOptions());
        var psi = new ProcessStartInfo(exe) { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        foreach (var a in prefix.Concat(args)) psi.ArgumentList.Add(a);
        return psi;
    }

    /// <summary>Wall seconds until <paramref name="processes"/> one-thread processes, started together once all are
    /// ready, have each run <paramref name="steps"/> train steps (ppo-tiny's actor, <see cref="SharedSeqs"/> sequences):
    /// a makespan, so it means the same under any scheduling policy (a real-time one does not time-slice). With
    /// <paramref name="steps"/> null, one process times 20 steps and the median step's seconds come back instead.</summary>
    internal static double SharedStepsSeconds(int processes, int? steps, TimeSpan deadline)
    {
        var procs = new List<Process>();
        var until = DateTime.UtcNow + deadline;
        try
        {
            for (int i = 0; i < processes; i++)
            {
                var psi = Self(["profile", SharedChildOption]);
                psi.RedirectStandardInput = true;
                psi.Environment["OMP_NUM_THREADS"] = "1";
                procs.Add(Process.Start(psi) ?? throw new InvalidOperationException("cannot start realn"));
            }
            foreach (var p in procs)
                if (ReadLine(p, until) is var line && line != "ready")
                    throw new MeasurementException($"profile: a shared-compute process said '{line}' instead of 'ready'");
            long t0 = Stopwatch.GetTimestamp();
            foreach (var p in procs) { p.StandardInput.WriteLine(steps is { } n ? $"go {n}" : "time 20"); p.StandardInput.Flush(); }
            double result = 0;
            foreach (var p in procs)
            {
                var line = ReadLine(p, until) ?? "";
                if (steps is null)
                {
                    var parts = line.Split(' ');
                    if (parts.Length != 2 || parts[0] != "median" || !double.TryParse(parts[1], System.Globalization.NumberStyles.Float, System.Globalization.CultureInfo.InvariantCulture, out result) || !(result > 0))
                        throw new MeasurementException($"profile: a shared-compute process printed '{line}'");
                }
                else if (line != "done") throw new MeasurementException($"profile: a shared-compute process printed '{line}' instead of 'done'");
            }
            if (steps is not null) result = Stopwatch.GetElapsedTime(t0).TotalSeconds;
            foreach (var p in procs)
                if (!p.WaitForExit(Math.Max(1, (int)(until - DateTime.UtcNow).TotalMilliseconds)))
                    throw new MeasurementException($"profile: a shared-compute process did not exit within {deadline.TotalSeconds:F0} s");
            return result;
        }
        finally
        {
            foreach (var p in procs)
            {
                try { if (!p.HasExited) { p.Kill(entireProcessTree: true); p.WaitForExit(10_000); } } catch (InvalidOperationException) { }
                p.Dispose();
            }
        }
    }

    /// <summary>A line of the child's stdout, or a <see cref="MeasurementException"/> past <paramref name="until"/>.</summary>
    private static string? ReadLine(Process p, DateTime until)
    {
        var t = p.StandardOutput.ReadLineAsync();
        var left = until - DateTime.UtcNow;
        if (left <= TimeSpan.Zero || !t.Wait(left))
            throw new MeasurementException("profile: a shared-compute process did not answer in time; rerun when the load is lower");
        return t.Result;
    }

    /// <summary>Trials of the shared-compute slowdown; the median counts. One trial moved by 1.02-1.14 between three
    /// profiles of one idle host (session 18), and the worker plan's estimate with it.</summary>
    private const int SharedTrials = 3;

    /// <summary>The shared-compute slowdown for <paramref name="processes"/>: the makespan of that many processes
    /// running the same steps at once over one process alone (the mean of an alone run before and after, so drift of
    /// the host shows less), the median of <see cref="SharedTrials"/> such trials; the steps are sized to about
    /// <see cref="SharedSeconds"/> alone.</summary>
    internal static (double OverAlone, double Alone, double Shared) SharedComputeOverAlone(int processes, TimeSpan deadline)
    {
        int steps = Math.Max(10, (int)Math.Ceiling(SharedSeconds / SharedStepsSeconds(1, null, deadline)));
        var trials = new List<(double Over, double Alone, double Shared)>();
        for (int t = 0; t < SharedTrials; t++)
        {
            double a0 = SharedStepsSeconds(1, steps, deadline);
            double shared = SharedStepsSeconds(processes, steps, deadline);
            double a1 = SharedStepsSeconds(1, steps, deadline);
            double alone = (a0 + a1) / 2;
            trials.Add((shared / alone, alone / steps, shared / steps));
        }
        return trials.OrderBy(x => x.Over).ElementAt(SharedTrials / 2);
    }

    /// <summary>The job whose worker round trips are timed: ppo-tiny's shapes (batch 256, prompt 16, gen 8, 4
    /// minibatches, 2 epochs), short SFT and RM stages that only give PPO its models.</summary>
    private const string RoundTripConfig = """
        name: profile-round-trip
        algorithm: ppo
        seed: 1
        iterations: 4
        task: { name: sort-digits, min_len: 3, max_len: 6 }
        eval: { size: 8, every: 1000 }
        checkpoint_every: 1000
        models:
          actor:  { preset: tiny, init: sft }
          critic: { preset: tiny, init: rm }
          ref:    { preset: tiny, init: sft }
          reward: { preset: tiny, init: rm }
        batch: { size: 256, prompt_len: 16, gen_len: 8, minibatches: 4 }
        ppo: { kl_coef: 0.2, ppo_epochs: 2 }
        stages:
          - { algorithm: sft, iterations: 1, models: { actor: { preset: tiny, init: random } } }
          - { algorithm: rm, iterations: 1, models: { reward: { preset: tiny, init: sft } } }
          - { algorithm: ppo }
        """;

    /// <summary>The mean master-worker round trip beyond compute, in seconds, of <see cref="RoundTripConfig"/> in
    /// <paramref name="devices"/> worker processes (every call data parallel over all of them).</summary>
    internal static WorkerRoundTrip WorkerRoundTripMeasured(int devices, TimeSpan deadline) => RoundTripRun(devices, deadline, inProcess: false);

    /// <summary>What an operation on <paramref name="devices"/> in-process devices costs beyond its fastest device's compute,
    /// by kind (<see cref="ProfileData.InProcessOverheads"/>): <see cref="RoundTripConfig"/> run with `--in-process`, every
    /// call data parallel over all of them, REALN_INPROCESS_TIMING's summary.</summary>
    internal static WorkerRoundTrip InProcessOverheadMeasured(int devices, TimeSpan deadline) => RoundTripRun(devices, deadline, inProcess: true);

    private static WorkerRoundTrip RoundTripRun(int devices, TimeSpan deadline, bool inProcess)
    {
        string dir = Path.Combine(Path.GetTempPath(), "realn-profile-" + Guid.NewGuid().ToString("N")[..8]);
        Directory.CreateDirectory(dir);
        try
        {
            string cfg = Path.Combine(dir, "ppo.yaml"), planPath = Path.Combine(dir, "plan.json");
            File.WriteAllText(cfg, RoundTripConfig);
            var all = new Mesh(0, 1, 0, devices);
            var calls = new (string, string, CallType)[]
            {
                ("actor_gen", "actor", CallType.Generate), ("rew_inf", "reward", CallType.Inference), ("ref_inf", "ref", CallType.Inference),
                ("critic_inf", "critic", CallType.Inference), ("actor_train", "actor", CallType.TrainStep), ("critic_train", "critic", CallType.TrainStep),
            }.Select(c => new PlanCall(c.Item1, c.Item2, c.Item3, all, new Strategy(1, devices, 1), 1)).ToList();
            File.WriteAllText(planPath, PlanJson.ToJson(new Plan(1, devices, calls, null)));
            var psi = Self(["run", cfg, "--plan", planPath, "--out", Path.Combine(dir, "run"), .. (inProcess ? new[] { "--in-process" } : [])]);
            psi.Environment[inProcess ? "REALN_INPROCESS_TIMING" : "REALN_WORKER_TIMING"] = "1";
            using var p = Process.Start(psi) ?? throw new InvalidOperationException($"cannot start {psi.FileName}");
            var output = new System.Text.StringBuilder();
            var gate = new object();
            p.OutputDataReceived += (_, e) => { if (e.Data is not null) lock (gate) output.AppendLine(e.Data); };
            p.ErrorDataReceived += (_, e) => { if (e.Data is not null) lock (gate) output.AppendLine(e.Data); };
            p.BeginOutputReadLine();
            p.BeginErrorReadLine();
            if (!p.WaitForExit(deadline))
            {
                p.Kill(entireProcessTree: true);
                p.WaitForExit(10_000);
                throw new MeasurementException($"profile: the worker round-trip run did not finish within {deadline.TotalSeconds:F0} s; rerun with --no-workers or when the load is lower");
            }
            p.WaitForExit();
            string text;
            lock (gate) text = output.ToString();
            if (p.ExitCode != 0)
                throw new MeasurementException($"profile: the {(inProcess ? "in-process" : "worker round-trip")} run failed with exit code {p.ExitCode}: {text[^Math.Min(800, text.Length)..]}");
            if (inProcess)
            {
                var (g, f, b) = ReaLNative.Engine.Parallelism.InProcessTimings.ReadSummary(text)
                    ?? throw new MeasurementException($"profile: the in-process run printed no '{ReaLNative.Engine.Parallelism.InProcessTimings.SummaryPrefix}' line");
                double?[] kinds = [g, f, b];
                double? UsOf(double? ms) => ms is { } x ? Math.Round(x * 1e3, 1) : null;
                double mean = kinds.Where(k => k is not null).Select(k => k!.Value).DefaultIfEmpty(0).Average();
                return new WorkerRoundTrip { Devices = devices, Us = Math.Round(mean * 1e3, 1), GenerateUs = UsOf(g), ForwardUs = UsOf(f), BackwardUs = UsOf(b) };
            }
            const string prefix = "worker round trip beyond compute, ms:";
            var line = text.Split('\n').LastOrDefault(l => l.StartsWith(prefix, StringComparison.Ordinal))
                ?? throw new MeasurementException($"profile: the worker round-trip run printed no '{prefix}' line");
            var first = line[prefix.Length..].Trim().Split(' ')[0];
            if (!double.TryParse(first, System.Globalization.NumberStyles.Float, System.Globalization.CultureInfo.InvariantCulture, out double ms) || !(ms > 0))
                throw new MeasurementException($"profile: cannot read the round trip from '{line}'");
            return ByOperation(text, devices, ms * 1e3);
        }
        finally { Directory.Delete(dir, true); }
    }

    /// <summary>The measured round trip: the mean, and by operation from the run's REALN_WORKER_TIMING table.</summary>
    internal static WorkerRoundTrip ByOperation(string log, int devices, double meanUs)
    {
        var (gen, fwd, bwd) = ReaLNative.Engine.Workers.OpTimings.RoundTripByKind(log);
        double? Us(double? ms) => ms is { } x ? Math.Round(x * 1e3, 1) : null;
        return new WorkerRoundTrip { Devices = devices, Us = Math.Round(meanUs, 1), GenerateUs = Us(gen), ForwardUs = Us(fwd), BackwardUs = Us(bwd) };
    }

    private static double Best(Action a, int reps = 5)
    {
        a();
        double best = double.MaxValue;
        for (int i = 0; i < reps; i++)
        {
            long t0 = Stopwatch.GetTimestamp();
            a();
            best = Math.Min(best, Stopwatch.GetElapsedTime(t0).TotalSeconds);
        }
        return best;
    }

    private const int Reps = 7;

    /// <summary>Prompt and new tokens of the generation measurement (ppo-tiny: 6.5-token prompts, answers of up to 7).</summary>
    private const int GenPrompt = 7, GenNew = 7;

    private static double Median(Action a, int reps)
    {
        a();
        var t = new double[reps];
        for (int i = 0; i < reps; i++)
        {
            long t0 = Stopwatch.GetTimestamp();
            a();
            t[i] = Stopwatch.GetElapsedTime(t0).TotalSeconds;
        }
        Array.Sort(t);
        return t[reps / 2];
    }

    /// <summary>
    /// Per pair, the median over rounds of (time of its <c>A</c>) - (time of its <c>B</c>) in seconds: every pair is timed in
    /// each round, in turn, after its <c>Setup</c> (the thread count), so a phase of the host - another process's burst, the
    /// virtual CPUs moved near or far apart (session 16) - falls on every pair alike, and the median ignores the rounds a burst
    /// falls into. The block points' rule since session 24: a block's cost is (3 blocks - 1 block) / 2, every point (token
    /// count, sequence length, forward or forward+backward, every core or one thread) a pair timed in the same rounds, the
    /// median round counting; before, each point's two models were the best of 7 runs, point after point, and the all-core
    /// and one-thread points were taken a minute apart. A best-of-N time prices the
    /// host at its fastest moment while a run's iteration is a mean over whatever the host did: the runs' calls came out
    /// 1.2-1.6x their estimates on the idle 2-core VMs, and the points disagreed with themselves (session 24's profile: a
    /// forward of 1024 tokens in sequences of 16 took 2.31 ms on both cores and 6.76 ms on one, 2.9x from two cores; in
    /// sequences of 256, 2.84 and 5.54 ms). How many rounds, and when it refuses: <see cref="InterleavedMedians"/>.
    /// <paramref name="clock"/> (tests): the timestamp source, <see cref="Stopwatch.GetTimestamp"/> by
    /// default, in <paramref name="ticksPerSecond"/>.
    /// </summary>
    internal static double[] InterleavedDifferences(string what, IReadOnlyList<(string What, Action? Setup, Action A, Action B)> pairs,
                                                    Func<long>? clock = null, double ticksPerSecond = 0)
    {
        clock ??= Stopwatch.GetTimestamp;
        if (ticksPerSecond <= 0) ticksPerSecond = Stopwatch.Frequency;
        return InterleavedMedians(what, pairs.Select(p => (p.What, (Func<double>)(() =>
        {
            p.Setup?.Invoke();
            long t0 = clock();
            p.A();
            long t1 = clock();
            p.B();
            long t2 = clock();
            return ((t1 - t0) - (t2 - t1)) / ticksPerSecond;
        }))).ToList());
    }

    /// <summary>The rule of <see cref="InterleavedDifferences"/> and <see cref="InterleavedDifference"/>: each sample taken
    /// once unrecorded (allocations, code, pages), then all of them in turn in every round, sets of
    /// <see cref="DifferenceRounds"/> rounds until every sample's median is above zero with a standard error (about 0.93 x
    /// the interquartile range / sqrt(rounds)) of at most a quarter of it; past <see cref="DifferenceMaxRounds"/> the first
    /// unsettled one is refused by name (<see cref="MeasurementException"/>).</summary>
    private static double[] InterleavedMedians(string what, IReadOnlyList<(string What, Func<double> Sample)> samples)
    {
        if (samples.Count == 0) throw new ArgumentException("nothing to time", nameof(samples));
        foreach (var s in samples) s.Sample();
        var values = samples.Select(_ => new List<double>()).ToArray();
        while (true)
        {
            for (int round = 0; round < DifferenceRounds; round++)
                for (int i = 0; i < samples.Count; i++)
                    values[i].Add(samples[i].Sample());
            var medians = new double[samples.Count];
            bool settled = true;
            for (int i = 0; i < samples.Count; i++)
            {
                var sorted = values[i].Order().ToArray();
                int n = sorted.Length;
                medians[i] = sorted[n / 2];
                double iqr = sorted[3 * n / 4] - sorted[n / 4], error = 0.93 * iqr / Math.Sqrt(n);
                if (!(medians[i] > 0 && error <= medians[i] / 4))
                {
                    settled = false;
                    if (n >= DifferenceMaxRounds)
                        throw new MeasurementException($"profile: {what}{(samples[i].What.Length > 0 ? ", " + samples[i].What : "")}: the difference measured {medians[i] * 1e3:F3} ms, its middle half spread over {iqr * 1e3:F3} ms in {n} rounds: the machine is too busy to measure it; rerun it when the load is lower");
                }
            }
            if (settled) return medians;
        }
    }

    /// <summary>(a - b) - (c - d) in seconds: the four timed in turn within each round, the median of the rounds' values.
    /// For a decode step: 17 and 1 new tokens of 3 and of 1 blocks. Until session 22 the two generations were each the best
    /// of their own runs at different moments (the 17-token ones paired, the 1-token ones
    /// 3 times apart) and their difference moved with the host between them: two profiles an hour apart on an idle 2-core
    /// Intel VM gave a decode step of 256 sequences 0.21 and 1.04 ms on both cores, 1.02 and 0.53 ms on one thread (the
    /// whole generation, which the profile also times, 18-26 ms in both). Within a round the four see the same host, and
    /// the median ignores the rounds a burst of other work falls into; how many rounds, and when it refuses:
    /// <see cref="InterleavedMedians"/>.</summary>
    internal static double InterleavedDifference(string what, Action a, Action b, Action c, Action d) =>
        InterleavedMedians(what, [("", () =>
        {
            long t0 = Stopwatch.GetTimestamp();
            a();
            long t1 = Stopwatch.GetTimestamp();
            b();
            long t2 = Stopwatch.GetTimestamp();
            c();
            long t3 = Stopwatch.GetTimestamp();
            d();
            long t4 = Stopwatch.GetTimestamp();
            return ((t1 - t0) - (t2 - t1) - (t3 - t2) + (t4 - t3)) / (double)Stopwatch.Frequency;
        })])[0];

    /// <summary>Rounds of <see cref="InterleavedMedians"/> per set, and at most.</summary>
    private const int DifferenceRounds = 9, DifferenceMaxRounds = 45;

    private static unsafe Action TrainStep(LlamaModel m, PackedBatch b, bool backward) => () =>
    {
        m.ZeroGrad();
        m.Forward(b);
        if (!backward) return;
        float* g = m.OutputGradientBuffer();
        new Span<float>(g, b.TotalTokens * m.OutputWidth).Fill(1e-3f);
        m.Backward(g);
    };

    /// <summary>The block points of one model shape (<paramref name="one"/> and <paramref name="three"/>: 1 and 3 blocks, a
    /// tiny vocabulary): forward and backward at 64, 256 and 1024 packed tokens in sequences of up to 16 and of up to 256
    /// (attention grows with the sequence length, so a block of 1024 tokens in 64 sequences costs less than in 4: the point's
    /// `context`), at every thread count of <paramref name="threadCounts"/>; all of them in the same rounds
    /// (<see cref="InterleavedDifferences"/>), so that the points agree with each other: timed point by point, even with
    /// every round's thread counts together, the host's phases split them (one profile of session 24: a forward of 1024
    /// tokens in sequences of 16 at 3.88 ms on both cores, in sequences of 256 at 3.04; the profile before, 2.39 and 4.28).
    /// Tagged with the thread count where it is not <paramref name="all"/>.</summary>
    private static List<LayerPoint> BlockPoints(string name, LlamaModel one, LlamaModel three, int[] threadCounts, int all)
    {
        var rng = new Random(3);
        var shapes = new List<(int SeqCap, int Tokens, int SeqLen, PackedBatch Batch)>();
        foreach (int seqCap in new[] { 16, 256 })
        foreach (int tokens in new[] { 64, 256, 1024 })
        {
            int seqLen = Math.Min(tokens, seqCap);
            var lens = Enumerable.Repeat(seqLen, tokens / seqLen).ToArray();
            shapes.Add((seqCap, tokens, seqLen, new PackedBatch(Enumerable.Range(0, tokens).Select(_ => rng.Next(64)).ToArray(), lens)));
        }
        // A change of thread count is followed by two untimed small forwards: the first parallel region after it wakes
        // the OpenMP threads that slept through the other count's pairs, and timed, that wake-up made a 64-token block
        // on both cores (0.15 ms) cost 0.24 ms. The pairs of one count follow each other, so a round changes twice.
        var warm = TrainStep(one, shapes[0].Batch, false);
        void Use(int threads)
        {
            if (Native.GetNumThreads() == threads) return;
            Native.SetNumThreads(threads);
            warm();
            warm();
        }
        var pairs = new List<(string, Action?, Action, Action)>();
        foreach (int threads in threadCounts)
            foreach (var (_, tokens, seqLen, batch) in shapes)
            {
                string at = $"{tokens} tokens in sequences of {seqLen}, {(threads == all ? "every core" : $"{threads} thread")}";
                pairs.Add(($"forward of {at}", () => Use(threads), TrainStep(three, batch, false), TrainStep(one, batch, false)));
                pairs.Add(($"forward+backward of {at}", () => Use(threads), TrainStep(three, batch, true), TrainStep(one, batch, true)));
            }
        double[] d;
        try { d = InterleavedDifferences($"{name} block", pairs).Select(x => x / 2).ToArray(); }   // 2 more blocks in the 3-block model
        finally { Native.SetNumThreads(0); }
        var points = new List<LayerPoint>();
        for (int t = 0; t < threadCounts.Length; t++)
            for (int j = 0; j < shapes.Count; j++)
            {
                var (seqCap, tokens, seqLen, _) = shapes[j];
                int k = 2 * (t * shapes.Count + j);
                double fwd = d[k], both = d[k + 1];
                int threads = threadCounts[t];
                string at = threads == all ? "" : $" ({threads} thread)";
                if (both <= fwd)
                    throw new MeasurementException($"profile: {name}{at} at {tokens} tokens: forward+backward of a block ({both * 1e3:F3} ms) measured no slower than its forward ({fwd * 1e3:F3} ms): the machine is too busy to measure; rerun it when the load is lower");
                int? tag = threads == all ? null : threads;
                points.Add(new LayerPoint { Kind = "fwd", Tokens = tokens, Context = seqCap, Seconds = fwd, Threads = tag });
                points.Add(new LayerPoint { Kind = "bwd", Tokens = tokens, Context = seqCap, Seconds = both - fwd, Threads = tag });
                Console.WriteLine($"{name} block{at}: {tokens} tokens in sequences of {seqLen}: fwd {fwd * 1e3:F3} ms, bwd {(both - fwd) * 1e3:F3} ms");
            }
        return points;
    }

    private static int Run(string[] presets, string output, bool workers)
    {
        // Each thread count measured as it is: the engine's choice between the calling thread's threads and one thread
        // (ThreadChoice) would otherwise time one-thread units inside the all-core points.
        ThreadChoice.Enabled = false;
        // one worker process per core (a power of two: a plan's devices per node), as cpu-local's devices are;
        // measured first, so its child processes are gone before the blocks are timed
        int devices = 1 << (int)Math.Log2(Math.Max(1, Environment.ProcessorCount));
        // and twice as many (cpu-local-4 on 2 cores: the workers also wait for each other's time slices)
        double? roundTrip = null;
        var roundTrips = new List<WorkerRoundTrip>();
        if (workers && devices > 1)
            foreach (int n in new[] { devices, 2 * devices })
            {
                var measured = WorkerRoundTripMeasured(n, TimeSpan.FromMinutes(10));
                double seconds = measured.Us * 1e-6;
                if (n == devices) roundTrip = seconds;
                roundTrips.Add(measured);
                Console.WriteLine($"worker round trip beyond compute ({n} worker processes): {seconds * 1e3:F2} ms (generate {measured.GenerateUs / 1e3:F2}, forward {measured.ForwardUs / 1e3:F2}, backward with the optimizer step {measured.BackwardUs / 1e3:F2})");
            }
        // Devices as threads of one process (`--in-process`): what a dispatch to all of them costs beyond compute
        var inProcess = new List<WorkerRoundTrip>();
        if (workers && devices > 1)
            foreach (int n in new[] { devices, 2 * devices })
            {
                var m = InProcessOverheadMeasured(n, TimeSpan.FromMinutes(10));
                inProcess.Add(m);
                Console.WriteLine($"in-process operation beyond its fastest device ({n} devices as threads): generate {m.GenerateUs / 1e3:F2} ms, forward {m.ForwardUs / 1e3:F2}, backward with the optimizer step {m.BackwardUs / 1e3:F2}");
            }
        // One-thread processes computing side by side (a plan's worker processes on this host): as many as the
        // devices, and twice as many (cpu-local-4 on 2 cores).
        var shared = new List<SharedCompute>();
        if (devices > 1)
            foreach (int n in new[] { devices, 2 * devices })
            {
                var (over, alone, withOthers) = SharedComputeOverAlone(n, TimeSpan.FromMinutes(5));
                shared.Add(new SharedCompute { Processes = n, OverAlone = Math.Round(over, 4) });
                Console.WriteLine($"shared compute: one-thread train steps {alone * 1e3:F3} ms each alone, {withOthers * 1e3:F3} ms each while {n} processes run them at once: {over:F3}x");
            }
        var layers = new List<LayerProfile>();
        var coreTrips = new List<double>();
        var trainSteps = new List<TrainStepProfile>();
        var generations = new List<TrainStepProfile>();
        foreach (var name in presets)
        {
            LlamaConfig cfg;
            try { cfg = LlamaConfig.Preset(name); }
            catch (ArgumentException e) { throw new InputException(e.Message); }
            var small = cfg with { Vocab = 64, Layers = 1, MaxPositions = 4096 };
            using var one = new LlamaModel(small, false);
            using var three = new LlamaModel(small with { Layers = 3 }, false);
            one.InitRandom(1);
            three.InitRandom(1);
            var points = new List<LayerPoint>();
            var stepPoints = new Dictionary<bool, List<LayerPoint>> { [false] = [], [true] = [] };
            var genPoints = new List<LayerPoint>();
            int all = Native.GetNumThreads();
            int[] threadCounts = all > 1 ? [all, 1] : [all];
            // how far apart the cores are while the all-core points are taken (before the block points, which take every
            // thread count in turn, and after the last all-core point below)
            if (all > 1 && CoreRoundTrip.Nanoseconds() is { } rtBefore) { coreTrips.Add(rtBefore); Console.WriteLine($"cores' cache-line round trip before the all-core points: {rtBefore:F0} ns"); }
            var blockPoints = BlockPoints(name, one, three, threadCounts, all);
            // Every core (how a run without a plan computes), and one thread (a device of a shared host
            // with one core each, how a plan's devices compute on this 2-core machine).
            foreach (int threads in threadCounts)
            {
            if (threads == 1 && all > 1 && CoreRoundTrip.Nanoseconds() is { } rtAfter) { coreTrips.Add(rtAfter); Console.WriteLine($"cores' cache-line round trip after the all-core points: {rtAfter:F0} ns"); }
            Native.SetNumThreads(threads);
            try
            {
            var rng = new Random(3);
            int? tag = threads == all ? null : threads;
            string at = threads == all ? "" : $" ({threads} thread)";
            points.AddRange(blockPoints.Where(p => p.Threads == tag));
            const int context = 32;
            foreach (int batchSize in new[] { 8, 32, 256 })   // 256: ppo-tiny's 256 sequences (dp 2: 128) decode between the points, not beyond
            {
                var prompts = Enumerable.Range(0, batchSize).Select(_ => Enumerable.Range(0, context).Select(_ => rng.Next(64)).ToArray()).ToArray();
                // 16 decode steps after the prefill: the prefill and the per-call set-up cancel in the difference
                // of 17 and 1 new tokens, the embedding and head in the difference of 3 and 1 blocks.
                Action Gen(LlamaModel m, int newTokens) => () => Generator.Generate(m, prompts, new GenerationOptions { MaxNewTokens = newTokens, Temperature = 0 });
                double step = InterleavedDifference($"{name} 16 decode steps of {batchSize} sequences", Gen(three, 17), Gen(three, 1), Gen(one, 17), Gen(one, 1)) / 2 / 16;
                if (step <= 0)
                    throw new MeasurementException($"profile: {name}: a decode step of {batchSize} sequences measured {step * 1e3:F3} ms per block: the machine is too busy to measure; rerun it when the load is lower");
                points.Add(new LayerPoint { Kind = "decode", Tokens = batchSize, Context = context, Seconds = step, Threads = tag });
                Console.WriteLine($"{name} block{at}: decode step of {batchSize} sequences at context {context}: {step * 1e3:F3} ms");
            }
            // The whole model's train step as the engine runs it, minus layers x (2 forward + backward) of its blocks as
            // this profile prices them: what the step costs outside the blocks (embedding, head, loss, optimizer, host work).
            var blocksSoFar = new ProfileData { Threads = all, Layers = [new LayerProfile { Hidden = cfg.Hidden, Intermediate = cfg.Intermediate, Heads = cfg.Heads, KvHeads = cfg.KvHeads, Points = points }] };
            var mc = new ModelConfig(name, cfg.Layers, cfg.Hidden, cfg.Intermediate, cfg.Heads, cfg.KvHeads, cfg.Vocab, false);
            foreach (bool scalarHead in new[] { false, true })
            {
                var (model, opt) = TrainedModel(cfg, scalarHead);
                using var _model = model;
                using var _opt = opt;
                var sp = stepPoints[scalarHead];
                foreach (int seqs in new[] { 16, 32, 64, 85 })   // up to 1020 tokens: within the block points (1024)
                {
                    var b = StepBatch(seqs, cfg.Vocab, rng);
                    int tokens = b.Packed.TotalTokens;
                    double whole = Median(EngineTrainStep(model, opt, b), Reps);   // typical, as the block points (best of 7 until session 24)
                    double fwd = blocksSoFar.BlockSeconds(mc, "fwd", tokens, tag, StepSeqLen) ?? throw new InvalidOperationException("internal: no forward point");
                    double bwd = blocksSoFar.BlockSeconds(mc, "bwd", tokens, tag, StepSeqLen) ?? throw new InvalidOperationException("internal: no backward point");
                    double rest = whole - cfg.Layers * (2 * fwd + bwd);
                    // a difference of two measurements: a negative one is a zero within the noise of the block points it
                    // is interpolated from (at 192 tokens, between 64- and 256-token blocks of 0.15-0.6 ms; it came out 11-26%
                    // below zero on an idle machine, where refusing, as this did, stopped every profile)
                    if (rest < 0)
                    {
                        Console.WriteLine($"{name} {(scalarHead ? "critic" : "actor")} train step{at}: {tokens} tokens took {whole * 1e3:F3} ms, less than its {cfg.Layers} blocks' 2 forwards and a backward as the block points give them ({cfg.Layers * (2 * fwd + bwd) * 1e3:F3} ms): recorded as 0 outside the blocks");
                        rest = 0;
                    }
                    sp.Add(new LayerPoint { Kind = "step", Tokens = tokens, Context = StepSeqLen, Seconds = rest, Threads = tag });
                    Console.WriteLine($"{name} {(scalarHead ? "critic" : "actor")} train step{at}: {tokens} tokens in sequences of {StepSeqLen}: {whole * 1e3:F3} ms, {rest * 1e3:F3} ms outside the blocks");
                }
            }
            // A whole generation as the engine runs it (sampling at temperature 1, no EOS: every sequence decodes GenNew
            // tokens), minus layers x (the prompts' forward + GenNew - 1 decode steps) of its blocks: per decode step, what a
            // generation costs outside the blocks (embedding, LM head, sampling, KV-cache bookkeeping, host work). The
            // median of the repetitions, as a run's call is a typical one.
            {
                var (gm, gopt) = TrainedModel(cfg, false);
                using var _gm = gm;
                using var _gopt = gopt;
                foreach (int seqs in new[] { 32, 128, 256 })   // ppo-tiny: 256 on one device, 128 on each of two
                {
                    var prompts = Enumerable.Range(0, seqs).Select(_ => Enumerable.Range(0, GenPrompt).Select(_ => rng.Next(cfg.Vocab)).ToArray()).ToArray();
                    var opts = new GenerationOptions { MaxNewTokens = GenNew, Temperature = 1f, Seed = 3 };
                    double whole = Median(() => Generator.Generate(gm, prompts, opts), Reps);
                    double fwd = blocksSoFar.BlockSeconds(mc, "fwd", seqs * GenPrompt, tag, GenPrompt) ?? throw new InvalidOperationException("internal: no forward point");
                    double dec = blocksSoFar.BlockSeconds(mc, "decode", seqs, tag) ?? throw new InvalidOperationException("internal: no decode point");
                    double blocks = cfg.Layers * (fwd + (GenNew - 1) * dec);
                    // a difference of two measurements: below zero it is a zero within the noise
                    double rest = Math.Max(0, whole - blocks);
                    genPoints.Add(new LayerPoint { Kind = "generate", Tokens = seqs, Context = GenNew, Seconds = rest / GenNew, Threads = tag });
                    Console.WriteLine($"{name} generation{at}: {seqs} sequences, {GenPrompt}-token prompts, {GenNew} new tokens: {whole * 1e3:F3} ms, {rest / GenNew * 1e3:F3} ms per step outside the blocks ({blocks * 1e3:F3} ms of blocks)");
                }
            }
            }
            finally { Native.SetNumThreads(0); }
            }
            layers.Add(new LayerProfile { Hidden = cfg.Hidden, Intermediate = cfg.Intermediate, Heads = cfg.Heads, KvHeads = cfg.KvHeads, Points = points });
            generations.Add(new TrainStepProfile { Layers = cfg.Layers, Hidden = cfg.Hidden, Intermediate = cfg.Intermediate, Heads = cfg.Heads, KvHeads = cfg.KvHeads,
                                                   Vocab = cfg.Vocab, ScalarHead = false, Points = genPoints });
            foreach (var (scalarHead, sp) in stepPoints)
                trainSteps.Add(new TrainStepProfile { Layers = cfg.Layers, Hidden = cfg.Hidden, Intermediate = cfg.Intermediate, Heads = cfg.Heads, KvHeads = cfg.KvHeads,
                                                      Vocab = cfg.Vocab, ScalarHead = scalarHead, Points = sp });
        }
        double gemm = BenchTrainCommand.SgemmGflops(4);
        double memcpy = MemcpyGbps();

        var profile = new ProfileData
        {
            Backend = "cpu",
            Device = $"{Environment.ProcessorCount} cores, {Native.GetNumThreads()} threads",
            Threads = Native.GetNumThreads(),
            GemmGflops = Math.Round(gemm, 2),
            MemcpyGbps = Math.Round(memcpy, 2),
            WorkerRoundTripUs = roundTrip is { } rt ? Math.Round(rt * 1e6, 1) : null,
            WorkerRoundTripDevices = roundTrip is null ? null : devices,
            WorkerRoundTrips = roundTrips,
            CoreRoundTripsNs = coreTrips.Count > 0 ? coreTrips : null,
            Layers = layers,
            TrainSteps = trainSteps,
            Generations = generations,
            SharedCompute = shared,
            InProcessOverheads = inProcess,
        };
        profile.Validate();
        File.WriteAllText(output, profile.ToJson());
        Console.WriteLine($"GEMM {gemm:F1} GFLOP/s, memcpy {memcpy:F1} GB/s; wrote {output}");
        return 0;
    }

    private static unsafe double MemcpyGbps()
    {
        const long n = 256L << 20;
        using var a = new HostBlock(n);
        using var b = new HostBlock(n);
        double s = Best(() => Buffer.MemoryCopy(a.Pointer, b.Pointer, n, n), 3);
        return n / s / 1e9;
    }
}
