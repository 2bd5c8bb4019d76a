// Writes examples/models/math-bpe/{tokenizer.json, tokenizer_config.json, config.json} from
// examples/data/math-train.jsonl (MathBpeRecipe.cs has the recipe). Deterministic: the same data
// gives the same bytes.
// usage: dotnet run --project tools/MathTokenizer -c Release [-- --data examples/data/math-train.jsonl --out examples/models/math-bpe]
using ReaLNative.Tools;

string repo = Path.GetFullPath(Path.Combine(AppContext.BaseDirectory, "../../../../.."));
string data = Path.Combine(repo, "examples/data/math-train.jsonl");
string output = Path.Combine(repo, "examples/models/math-bpe");
for (int i = 0; i < args.Length; i++)
{
    switch (args[i])
    {
        case "--data" when i + 1 < args.Length: data = Path.GetFullPath(args[++i]); break;
        case "--out" when i + 1 < args.Length: output = Path.GetFullPath(args[++i]); break;
        default:
            Console.Error.WriteLine($"unknown argument '{args[i]}'; usage: [--data TRAIN.jsonl] [--out DIR]");
            return 2;
    }
}
if (!File.Exists(data))
{
    Console.Error.WriteLine($"{data} not found (tools/gen_math_data.py writes it)");
    return 2;
}
var files = MathBpeRecipe.Build(File.ReadLines(data));
Directory.CreateDirectory(output);
foreach (var (name, text) in files) File.WriteAllText(Path.Combine(output, name), text);
Console.WriteLine($"wrote {string.Join(", ", files.Keys)} to {output}");
return 0;
