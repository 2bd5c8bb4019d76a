// realn: the command-line front of ReaLNative. Each command lives in Commands/*.cs (the ones that
// time engine internals, `profile` and `bench realloc|train|generate`, in src/Diagnostics) and
// exposes Create(); this file only assembles them. It uses the engine's public API only. Exit codes: 0 ok, 1 failure of the work itself
// (a test failed, a run diverged), 2 bad input (config, plan, arguments, missing backend).
using System.CommandLine;
using ReaLNative.Cli;
using ReaLNative.Cli.Commands;
using ReaLNative.Diagnostics;

HumanOutput.Configure();
var root = new RootCommand("ReaLNative: RLHF training with parameter reallocation");
root.Subcommands.Add(SelfTestCommand.Create());
root.Subcommands.Add(BenchCommand.Create());
root.Subcommands.Add(RunCommand.Create());
root.Subcommands.Add(EvalCommand.Create());
root.Subcommands.Add(LaunchCommand.Create());
root.Subcommands.Add(PlanCommand.Create());
root.Subcommands.Add(ProfileCommand.Create());
root.Subcommands.Add(ExportCommand.Create());
root.Subcommands.Add(GenerateCommand.Create());
root.Subcommands.Add(WorkerCommand.Create());
HelpText.Add(root);
return await CliRunner.InvokeAsync(root, args);
