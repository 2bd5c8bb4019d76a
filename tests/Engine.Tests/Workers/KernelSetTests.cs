// Worker processes (1 OpenMP thread each) and the in-process run of the same plan (all threads)
// end with the same parameters bit for bit under each OpenBLAS kernel set the engine meets:
// OPENBLAS_CORETYPE=Haswell, =SkylakeX, and unset (README "Determinism"). Both sides run as child
// processes with the same environment, so they load the same kernels. The old OpenBLAS-threaded
// GEMM failed this under Haswell (a K-panel split that depends on the thread count).
using System.Runtime.Intrinsics.X86;
using Xunit;
using Xunit.Abstractions;

namespace ReaLNative.Engine.Tests.Workers;

[Collection("worker processes")]
public sealed class KernelSetTests(ITestOutputHelper output)
{
    [SkippableTheory]
    [InlineData("Haswell")]
    [InlineData("SkylakeX")]
    [InlineData(null)]
    public void PlanRunInWorkersEqualsTheInProcessRunUnderEachOpenBlasCoreType(string? coreType)
    {
        // OpenBLAS 0.3.21 does not check a forced core type against the CPU: its kernels would die
        // of SIGILL here.
        Skip.If(coreType == "Haswell" && !(Avx2.IsSupported && Fma.IsSupported), "this CPU cannot run Haswell kernels (AVX2, FMA)");
        Skip.If(coreType == "SkylakeX" && !(Avx512F.IsSupported && Avx512BW.IsSupported && Avx512DQ.IsSupported && Avx512F.VL.IsSupported),
                "this CPU cannot run SkylakeX kernels (AVX-512)");
        string dir = FaultTests.Dir();
        try
        {
            string exe = WorkerProcessTests.Realn();
            // The fault tests' PPO job, cut short (1 SFT, 1 RM, 2 PPO iterations): under Haswell kernels
            // the old GEMM already differed in every model and optimizer file.
            string cfg = FaultTests.Write(dir, "exp.yaml", FaultTests.Config.Replace("PPO_ITERATIONS", "2")
                .Replace("algorithm: sft, iterations: 4", "algorithm: sft, iterations: 1").Replace("algorithm: rm, iterations: 2", "algorithm: rm, iterations: 1"));
            Assert.Contains("algorithm: sft, iterations: 1", File.ReadAllText(cfg));
            string plan = FaultTests.Write(dir, "plan.json", FaultTests.Plan(1, 2));
            // Set, or really removed: a value inherited from the test's environment must not leak in.
            var env = new Dictionary<string, string?> { ["OPENBLAS_CORETYPE"] = coreType, ["OPENBLAS_L2_SIZE"] = null };
            string refDir = Path.Combine(dir, "ref"), runDir = Path.Combine(dir, "run");
            using (var r = Run.Start("in-process run", exe, ["run", cfg, "--plan", plan, "--in-process", "--out", refDir], env))
                Assert.True(r.Wait(TimeSpan.FromMinutes(3)) == 0, r.Output);
            using (var r = Run.Start("worker run", exe, ["run", cfg, "--plan", plan, "--out", runDir], env))
                Assert.True(r.Wait(TimeSpan.FromMinutes(3)) == 0, r.Output);
            var expected = Run.Final(refDir);
            Assert.NotEmpty(expected);
            Assert.Equal(expected, Run.Final(runDir));
            output.WriteLine($"OPENBLAS_CORETYPE={coreType ?? "(unset)"}: {expected.Count} checkpoint files equal");
        }
        finally { Directory.Delete(dir, true); }
    }
}
