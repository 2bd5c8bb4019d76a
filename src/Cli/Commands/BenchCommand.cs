// `realn bench <what>`: quick in-process benchmarks that print a ratio to a reference measured
// in the same run (the machine is shared and noisy). The BenchmarkDotNet suites in bench/ hold
// the statistically careful versions of the kernel cases. `realloc`, `train` and `generate` time the
// engine's internals and live in the ReaLNative.Diagnostics assembly (src/Diagnostics).
using System.CommandLine;
using ReaLNative.Diagnostics;

namespace ReaLNative.Cli.Commands;

public static class BenchCommand
{
    public static Command Create()
    {
        var cmd = new Command("bench", "Benchmarks that report a ratio to a reference measured in the same run");
        cmd.Subcommands.Add(BenchKernelsCommand.Create());
        cmd.Subcommands.Add(BenchReallocCommand.Create());
        cmd.Subcommands.Add(BenchTrainCommand.CreateTrain());
        cmd.Subcommands.Add(BenchTrainCommand.CreateGenerate());
        cmd.Subcommands.Add(BenchAlgorithmsCommand.Create());
        cmd.Subcommands.Add(BenchPlanCommand.Create());
        cmd.Subcommands.Add(BenchAsyncCommand.Create());
        cmd.Subcommands.Add(BenchScaleOutCommand.Create());
        return cmd;
    }
}
