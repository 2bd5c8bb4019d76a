// Examples and documentation pointers under every command's --help, kept in one table so the
// commands' own files stay about what they do. README.md's command table lists the same commands
// and options (tests/Engine.Tests/Docs/ReadmeTests checks both ways).
using System.CommandLine;
using System.CommandLine.Help;
using System.CommandLine.Invocation;

namespace ReaLNative.Cli;

internal static class HelpText
{
    /// <summary>Command path (after `realn`) -> (example command lines, where to read more).</summary>
    private static readonly Dictionary<string, (string[] Examples, string Docs)> Entries = new()
    {
        [""] = (["realn run examples/ppo-tiny.yaml --out runs/ppo-tiny", "realn run --help"],
                "README.md (commands, embedding, plans, several nodes), docs/experiment-config.md, docs/plan-format.md"),
        ["run"] = (["realn run examples/ppo-tiny.yaml --out runs/ppo-tiny",
                    "realn plan examples/ppo-tiny.yaml --cluster examples/clusters/cpu-local.yaml --out runs/ppo-tiny.plan.json",
                    "realn run examples/ppo-tiny.yaml --plan runs/ppo-tiny.plan.json --out runs/ppo-tiny-plan"],
                   "docs/experiment-config.md (config, outputs, checkpoints); README.md \"Execution plans, multi-process and multi-node\""),
        ["eval"] = (["realn eval examples/grpo-math.yaml --checkpoint runs/grpo-math",
                     "realn eval examples/grpo-math.yaml --checkpoint runs/grpo-math/checkpoints/sft --json"],
                    "docs/experiment-config.md (datasets, rewards: the held-out score)"),
        ["plan"] = (["realn plan examples/ppo-tiny.yaml --cluster examples/clusters/cpu-local.yaml --out runs/ppo-tiny.plan.json",
                     "realn plan examples/ppo-tiny.yaml --cluster examples/clusters/cpu-local.yaml --nodes 2 --out runs/two-nodes.plan.json"],
                    "docs/plan-format.md (plan JSON, cluster spec, Gantt chart); examples/clusters/"),
        ["launch"] = (["REALN_JOB_SECRET_FILE=/shared/realn.secret realn launch examples/ppo-tiny.yaml --plan runs/two-nodes.plan.json --nnodes 2 --node-rank 0 --master 10.0.0.1:29500 --out runs/two",
                       "REALN_JOB_SECRET_FILE=/shared/realn.secret realn launch examples/ppo-tiny.yaml --plan runs/two-nodes.plan.json --nnodes 2 --node-rank 1 --master 10.0.0.1:29500"],
                      "README.md \"Several nodes\" (secret, Slurm, failures); docs/plan-format.md"),
        ["selftest"] = (["realn selftest", "realn selftest --filter attention --json"], "README.md \"Architecture\" (native ops)"),
        ["profile"] = (["realn profile --out runs/profile.json",
                        "realn plan examples/ppo-tiny.yaml --cluster examples/clusters/cpu-local.yaml --profile runs/profile.json"],
                       "docs/plan-format.md"),
        ["bench"] = (["realn bench kernels", "realn bench train --model tiny --json"], "README.md \"Other commands\""),
        ["bench kernels"] = (["realn bench kernels --reps 4"], "README.md \"Other commands\""),
        ["bench realloc"] = (["realn bench realloc", "realn bench realloc --p2p-only --json"], "README.md \"Execution plans, multi-process and multi-node\""),
        ["bench train"] = (["realn bench train --model tiny --steps 2"], "README.md \"Other commands\""),
        ["bench generate"] = (["realn bench generate --model tiny --new-tokens 16"], "README.md \"Other commands\""),
        ["bench plan"] = (["realn bench plan examples/bench/ppo-tiny-timing.yaml --out runs/bench-plan",
                           "realn bench plan examples/bench/ppo-tiny-timing.yaml --profile runs/profile.json --only single,workers --out runs/bench-plan2 --json"],
                          "docs/cost-model.md (the loop on this machine)"),
        ["export"] = (["realn export runs/ppo-tiny/checkpoints/sft --gguf sft.gguf",
                       "realn export runs/x/checkpoints/sft --gguf model-bf16.gguf --dtype bf16 --tokenizer my-tokenizer/"],
                      "README.md \"GGUF export and generation\""),
        ["generate"] = (["realn generate runs/ppo-tiny/checkpoints/sft --prompt 53142=",
                         "realn generate runs/x/checkpoints/sft --chat --system \"Be brief.\" --prompt \"What is 2+3?\""],
                        "README.md \"GGUF export and generation\""),
        ["worker"] = (["(started by `realn run --plan`, `realn launch` and `realn bench realloc` with REALN_JOB_SECRET set; not for direct use)"],
                      "README.md \"Execution plans, multi-process and multi-node\""),
    };

    /// <summary>Wraps the --help action: the standard help, then the command's examples and where
    /// to read more (only in its own help, not in its parent's command list). A hidden command
    /// (`worker`), for which the standard help prints nothing, gets its options listed here.</summary>
    public static void Add(RootCommand root)
    {
        var help = root.Options.OfType<HelpOption>().Single();
        help.Action = new WithExamples((SynchronousCommandLineAction)help.Action!);
    }

    private static string PathOf(Command c, ParseResult p)
    {
        var names = new List<string>();
        for (var r = p.CommandResult; r is not null; r = r.Parent as System.CommandLine.Parsing.CommandResult)
            if (r.Command is not RootCommand) names.Insert(0, r.Command.Name);
        return string.Join(" ", names);
    }

    private sealed class WithExamples(SynchronousCommandLineAction standard) : SynchronousCommandLineAction
    {
        public override int Invoke(ParseResult parseResult)
        {
            var cmd = parseResult.CommandResult.Command;
            var output = parseResult.InvocationConfiguration.Output;
            if (cmd.Hidden) WriteHidden(cmd, output);
            else standard.Invoke(parseResult);
            if (Entries.TryGetValue(PathOf(cmd, parseResult), out var e))
            {
                output.WriteLine("Examples:");
                foreach (var x in e.Examples) output.WriteLine("  " + x);
                output.WriteLine();
                output.WriteLine("More: " + e.Docs);
            }
            return 0;
        }

        private static void WriteHidden(Command cmd, TextWriter o)
        {
            o.WriteLine("Description:");
            o.WriteLine("  " + cmd.Description);
            o.WriteLine();
            o.WriteLine("Options:");
            var rows = cmd.Options.Where(x => !x.Hidden).Select(x => (Name: x.Name + (x.Required ? " (REQUIRED)" : ""), x.Description)).ToList();
            int w = rows.Max(r => r.Name.Length) + 2;
            foreach (var (name, desc) in rows) o.WriteLine("  " + name.PadRight(w) + desc);
            o.WriteLine();
        }
    }
}
