// The asynchronous dataflow (`mode: async`, `max_staleness: N`): reading it, and what the simulator
// makes of it (generation of iteration i waits for the train step of i - 1 - N, not i - 1; frozen
// models' scoring on the generation devices runs with the generation).
using Xunit;

namespace ReaLNative.Planner.Tests;

public class AsyncPlanTests
{
    private static Experiment Exp(string algo, string extra) => Experiment.Parse($"""
        name: async-{algo}
        algorithm: {algo}
        {extra}
        models:
          actor: {"{"} preset: tiny {"}"}
          critic: {"{"} preset: tiny {"}"}
          ref: {"{"} preset: tiny {"}"}
          reward: {"{"} preset: tiny {"}"}
        batch:
          size: 32
          prompt_len: 32
          gen_len: 256
          minibatches: 2
        """);

    [Fact]
    public void ReadsModeAndStaleness()
    {
        Assert.Null(Exp("ppo", "").MaxStaleness);
        Assert.Null(Exp("ppo", "mode: sync").MaxStaleness);
        Assert.Equal(1, Exp("ppo", "mode: async").MaxStaleness);
        Assert.Equal(3, Exp("grpo", "mode: async\nmax_staleness: 3").MaxStaleness);
        Assert.Contains("mode: 'later' is not one of sync, async", Assert.Throws<PlannerException>(() => Exp("ppo", "mode: later")).Message);
        Assert.Contains("max_staleness: only meaningful with mode: async", Assert.Throws<PlannerException>(() => Exp("ppo", "max_staleness: 2")).Message);
        Assert.Contains("max_staleness", Assert.Throws<PlannerException>(() => Exp("ppo", "mode: async\nmax_staleness: -1")).Message);
        Assert.Contains("(ppo, grpo, rloo, remax), not dpo", Assert.Throws<PlannerException>(() => Exp("dpo", "mode: async")).Message);
        Assert.Null(Exp("ppo", "mode: async\nmax_staleness: 2").Synchronous().MaxStaleness);
    }

    /// <summary>A baseline plan (chosen in the synchronous problem) priced synchronously and with
    /// staleness <paramref name="staleness"/> (its options found by content in the async problem).</summary>
    private static (double Sync, double Async) Both(Func<PlanningProblem, PlanResult?> baseline, ClusterSpec cl, int staleness,
                                                   out PlanningProblem asyncProblem, out int[] asyncChoice)
    {
        var sync = new PlanningProblem(new Estimator(cl, Exp("ppo", "")));
        var plan = baseline(sync);
        Assert.NotNull(plan);
        asyncProblem = new PlanningProblem(new Estimator(cl, Exp("ppo", $"mode: async\nmax_staleness: {staleness}")));
        var ap = asyncProblem;
        asyncChoice = plan!.Choice.Select((c, i) => ap.IndexOf(i, sync.Options[i][c].Option)).ToArray();
        return (new Evaluator(sync).Evaluate(plan.Choice).IterationSeconds, new Evaluator(asyncProblem).Evaluate(asyncChoice).IterationSeconds);
    }

    [Fact]
    public void StalenessZeroPricesTheSynchronousDataflow()
    {
        // Every call on the whole mesh: nothing can overlap, so async with N = 0 is the synchronous iteration.
        var cl = TestData.Cluster(1, 4, 4);
        var (sync, async) = Both(Baselines.Symmetric, cl, 0, out _, out _);
        Assert.Equal(sync, async, 9);
    }

    [Fact]
    public void GenerationOnItsOwnDevicesOverlapsTraining()
    {
        // OpenRLHF-style placement: generation has its own group. Synchronously it idles while the
        // trainers run; with staleness 1 it generates the next batch meanwhile.
        var cl = TestData.Cluster(1, 4, 4);
        var (sync, async) = Both(Baselines.OpenRlhf, cl, 1, out var p, out var choice);
        Assert.True(async < 0.95 * sync, $"async {async} s vs sync {sync} s per iteration");
        // Throughput is bounded by the slower pipeline: never below the generation call alone.
        int gen = p.Calls.ToList().FindIndex(c => c.Name == "actor_gen");
        double genSeconds = p.Options[gen][choice[gen]].Seconds;
        Assert.True(async >= genSeconds * (1 - 1e-9), $"async {async} s below the generation call's {genSeconds} s");
        // More staleness never slows it down.
        var (_, async2) = Both(Baselines.OpenRlhf, cl, 2, out _, out _);
        Assert.True(async2 <= async * (1 + 1e-9));
    }

    [Fact]
    public void FrozenModelsScoringOnTheGenerationDevicesFollowsEachGeneration()
    {
        // The engine runs reward and reference inference placed on the generation devices on the
        // rollout side (Runs/PipelineAsync.cs): the simulator issues them with their generation, so
        // they overlap the trainers too; a trained model's inference there is still infeasible.
        var cl = TestData.Cluster(1, 4, 4);
        Both(Baselines.OpenRlhf, cl, 1, out var p, out var choice);
        var calls = p.Calls.ToList();
        int Idx(string name) => calls.FindIndex(c => c.Name == name);
        var genMesh = p.Options[Idx("actor_gen")][choice[Idx("actor_gen")]].Option.Mesh;
        int OnGen(string name) => p.Options[Idx(name)].FindIndex(o => o.Option.Mesh == genMesh && !o.Option.Flag);
        var moved = (int[])choice.Clone();
        foreach (var name in new[] { "rew_inf", "ref_inf" })
        {
            Assert.True(OnGen(name) >= 0, $"no option of {name} on the generation mesh");
            moved[Idx(name)] = OnGen(name);
        }
        var ev = new Evaluator(p);
        Assert.True(ev.Evaluate(moved).Feasible);
        var tasks = new List<SimTask>();
        ev.Simulate(moved, 6, tasks);
        for (int it = 0; it < 6; it++)
        {
            // Issued with their generation: each starts the moment the work before it on the
            // generation devices ends, never waiting for the trainer.
            double previous = tasks.Single(t => t.Name == "actor_gen" && t.Iteration == it).End;
            foreach (var name in new[] { "rew_inf", "ref_inf" })
            {
                var t = tasks.Single(t => t.Name == name && t.Iteration == it);
                Assert.Equal(genMesh.FirstDevice(4), t.FirstDevice);
                Assert.True(Math.Abs(t.Start - previous) < 1e-9, $"{name} of iteration {it + 1} starts at {t.Start}, the generation side was free at {previous}");
                previous = t.End;
            }
        }
        // Under weight_update: interrupt the generation ends with its second chunk (after the push): scoring follows that.
        var pi = new PlanningProblem(new Estimator(cl, Exp("ppo", "mode: async\nmax_staleness: 1\nweight_update: interrupt")));
        var movedI = moved.Select((c, i) => pi.IndexOf(i, p.Options[i][c].Option)).ToArray();
        var evI = new Evaluator(pi);
        var e = evI.Evaluate(movedI);
        Assert.True(e.Feasible && double.IsFinite(e.IterationSeconds) && e.IterationSeconds > 0, $"{e}");
        var tasksI = new List<SimTask>();
        evI.Simulate(movedI, 6, tasksI);
        for (int it = 0; it < 6; it++)
        {
            double genEnd = tasksI.Where(t => t.Iteration == it && t.Name.StartsWith("actor_gen")).Max(t => t.End);
            var first = tasksI.Single(t => t.Name == "rew_inf" && t.Iteration == it);
            Assert.True(first.Start >= genEnd - 1e-9 && double.IsFinite(first.End), $"rew_inf of iteration {it + 1} at {first.Start}, generation ended {genEnd}");
        }
        Assert.Contains(tasksI, t => t.Name == "actor_gen (from step k)");
        int criticOnGen = OnGen("critic_inf");
        Assert.True(criticOnGen >= 0);
        moved[Idx("critic_inf")] = criticOnGen;
        Assert.True(ev.Evaluate(moved).GenerationShared);
    }

    [Fact]
    public void SearchGivesGenerationDevicesOfItsOwnAndComparesWithTheBestSynchronousPlan()
    {
        // The engine runs async generation only on devices no trainer-side call uses: the search returns
        // such a plan, and the synchronous search beside it (realn plan prints the ratio, which may be below 1).
        var cl = TestData.Cluster(1, 4, 4);
        var exp = Exp("ppo", "mode: async");
        var asyncBest = PlanSearch.Run(cl, exp, new SearchOptions { Seed = 1 });
        Assert.NotNull(asyncBest.Synchronous);
        Assert.True(asyncBest.Best.Evaluation.Feasible);
        var plan = asyncBest.Best.Plan;
        var genDevices = plan.Calls.Where(c => c.Type == CallType.Generate).SelectMany(c => Enumerable.Range(c.Mesh.FirstDevice(4), c.Mesh.Size)).ToHashSet();
        // Shared only with the frozen models' scoring (reward, reference inference), whole meshes on the
        // generation devices: the engine runs those on the rollout side (DataflowGraph.SplitRollout).
        foreach (var c in plan.Calls.Where(c => c.Type != CallType.Generate))
        {
            var mesh = Enumerable.Range(c.Mesh.FirstDevice(4), c.Mesh.Size).ToList();
            if (!mesh.Any(genDevices.Contains)) continue;
            Assert.True(c.Type == CallType.Inference && c.Model is "ref" or "reward", $"{c.Name} shares a generation device");
            Assert.All(mesh, d => Assert.Contains(d, genDevices));
        }
        // One device cannot hold a generation group apart: refused, naming mode.
        var e = Assert.Throws<PlannerException>(() => PlanSearch.Run(TestData.Cluster(1, 1, 4), exp, new SearchOptions { Seed = 1 }));
        Assert.Contains("mode: async runs generation on devices of its own", e.Message);
    }
}
