// `realn bench realloc [--json]`: parameter reallocation bandwidth between layouts of a LLaMA
// model of more than 1 GiB, next to memcpy of the same bytes measured in the same run. Each case
// is verified bit-exact (round trip hash) before it is timed.
using System.CommandLine;
using System.Text.Json;
using ReaLNative.Engine.Realloc;

namespace ReaLNative.Cli.Commands;

public static class BenchReallocCommand
{
    public static Command Create()
    {
        var json = new Option<bool>("--json") { Description = "Print JSON" };
        var reps = new Option<int>("--reps") { Description = "Timed repetitions per case", DefaultValueFactory = _ => 3 };
        var cmd = new Command("realloc", "Parameter reallocation bandwidth vs memcpy (model > 1 GiB)");
        cmd.Options.Add(json);
        cmd.Options.Add(reps);
        cmd.SetAction(p => Run(p.GetValue(json), Math.Max(1, p.GetValue(reps))));
        return cmd;
    }

    /// <summary>~1.3 GB of fp32 parameters: 20 layers, hidden 1024, intermediate 2816, vocab 32000.</summary>
    public static readonly LlamaShape Model = new(Layers: 20, Hidden: 1024, Intermediate: 2816, Heads: 16, KvHeads: 8, Vocab: 32000);

    public static IReadOnlyList<(ParallelLayout, ParallelLayout)> SameProcessPairs() =>
    [
        (ParallelLayout.Contiguous(0, 1, 1, 1), ParallelLayout.Contiguous(0, 1, 1, 2)),   // split tensors
        (ParallelLayout.Contiguous(0, 1, 1, 2), ParallelLayout.Contiguous(2, 1, 1, 1)),   // merge tensors
        (ParallelLayout.Contiguous(0, 2, 1, 1), ParallelLayout.Contiguous(2, 1, 1, 2)),   // pipeline -> tensor
        (ParallelLayout.Contiguous(0, 1, 1, 4), ParallelLayout.Contiguous(0, 2, 1, 2)),   // tensor -> pipeline x tensor, overlapping
    ];

    private static int Run(bool asJson, int reps)
    {
        var log = asJson ? null : new Action<string>(Console.WriteLine);
        if (!asJson) Console.WriteLine($"model: {Model.Parameters * 4 / 1e9:F2} GB fp32 ({Model})");
        var (memcpy, cases) = InProcessReallocBenchmark.Run(Model, SameProcessPairs(), reps, log);
        if (asJson)
        {
            var o = new Dictionary<string, object>
            {
                ["model_bytes"] = Model.Parameters * 4,
                ["memcpy_gbps"] = Math.Round(memcpy, 2),
                ["cases"] = cases.Select(c => new Dictionary<string, object>
                {
                    ["from"] = c.From, ["to"] = c.To, ["kind"] = c.Kind, ["bytes"] = c.Bytes,
                    ["seconds"] = Math.Round(c.Seconds, 4), ["gbps"] = Math.Round(c.Gbps, 2),
                    ["reference_gbps"] = Math.Round(c.ReferenceGbps, 2), ["ratio"] = Math.Round(c.Ratio, 3), ["goal"] = 0.70,
                }).ToList(),
            };
            Console.WriteLine(JsonSerializer.Serialize(o, new JsonSerializerOptions { WriteIndented = true }));
        }
        return 0;
    }
}
