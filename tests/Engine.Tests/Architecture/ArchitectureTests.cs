// The folders of src/Engine form layers: a folder uses only folders of lower layers, so there is
// no cycle and a reader can learn the engine bottom-up. The graph is read from the compiled
// assembly (FolderDependencies.cs) plus the sources' using directives; a failure names the
// folders, files and types of each offending edge. README's architecture block draws the same
// layers and is checked against them here.
using System.Reflection;
using System.Text.RegularExpressions;
using ReaLNative.Engine.Tests.Docs;
using Xunit;

namespace ReaLNative.Engine.Tests.Architecture;

public sealed class ArchitectureTests
{
    /// <summary>The intended layering, bottom first. Why this order: docs/architecture.md ("Engine
    /// folders"). Keep README's architecture block in step (<see cref="ReadmeDrawsTheLayers"/>).</summary>
    internal static readonly string[][] Layers =
    [
        ["Contracts", "Control", "Tokenization", "Layout"],
        ["Config", "Transport"],
        ["Tasks", "Model"],
        ["Data", "Dataflow", "Generation", "Optim", "Realloc"],
        ["Checkpoints"],
        ["Parallelism"],
        ["Algorithms", "Workers"],
        ["Stages"],
        ["Runs"],
        ["Hosting"],
    ];

    /// <summary>Downward edges that are still wrong: the layering would allow them, the design does not.</summary>
    internal static readonly (string From, string To, string Why)[] ForbiddenEdges =
    [
        ("Realloc", "Control", "reallocation moves parameters over Transport; the control plane is the workers' and the run's business"),
    ];

    /// <summary>Edges allowed for now although they break the layering or are forbidden, each with
    /// its owner; delete an entry once its edge is gone (<see cref="TemporaryAllowancesAreStillNeeded"/>).</summary>
    internal static readonly (string From, string To, string Why)[] TemporaryAllowances =
    [
    ];

    /// <summary>Folders whose files declare the public namespace <c>ReaLNative</c> (the public API)
    /// rather than <c>ReaLNative.Engine.FOLDER</c>.</summary>
    internal static readonly string[] PublicFolders = ["Hosting", "Contracts"];

    /// <summary>Public types that predate the rule and keep their namespace so hosts that catch them
    /// still compile: ChatTemplateException is an InputException (the host's catch of bad input).</summary>
    internal static readonly string[] PublicOutsideTheApiNamespace = ["ReaLNative.Engine.Tokenization.ChatTemplateException"];

    static string EnginePath => typeof(ReaLNative.Engine.Model.LlamaModel).Assembly.Location;

    /// <summary>src/Engine/FOLDER/... -> FOLDER; files directly in src/Engine (AssemblyInfo.cs) -> null.</summary>
    internal static string? FolderOfFile(string relativePath)
    {
        const string prefix = "src/Engine/";
        if (!relativePath.StartsWith(prefix, StringComparison.Ordinal)) return null;
        var rest = relativePath[prefix.Length..];
        int slash = rest.IndexOf('/');
        return slash < 0 ? null : rest[..slash];
    }

    /// <summary>A type's folder: that of its source file; compiler-generated types (no namespace) and
    /// types outside src/Engine are left out.</summary>
    internal static string? FolderOfType(string ns, string? file)
    {
        if (ns.Length == 0) return null;
        if (file is not null) return FolderOfFile(file);
        // No PDB record (should not happen with portable PDBs): the namespace says the folder,
        // except for the public namespace, shared by PublicFolders.
        const string prefix = "ReaLNative.Engine.";
        if (ns == "ReaLNative") throw new InvalidOperationException("a type of namespace ReaLNative without a source file in the PDB");
        if (!ns.StartsWith(prefix, StringComparison.Ordinal)) return null;
        var rest = ns[prefix.Length..];
        int dot = rest.IndexOf('.');
        return dot < 0 ? rest : rest[..dot];
    }

    internal static FolderGraph EngineGraph()
    {
        var pdb = Path.ChangeExtension(EnginePath, ".pdb");
        Assert.True(File.Exists(pdb), $"{pdb} is missing: the folder graph needs the engine's portable PDB for each type's file");
        var graph = AssemblyFolderScanner.Scan(EnginePath, FolderOfType);
        SourceUsingScanner.AddTo(graph, ReadmeCommandTableTests.Root(), "src/Engine", FolderOfFile);
        return graph;
    }

    static FolderGraph WithoutAllowances(FolderGraph graph)
    {
        var kept = new FolderGraph();
        foreach (var folder in graph.Folders) kept.AddFolder(folder);
        foreach (var (from, to) in graph.Edges)
            if (!TemporaryAllowances.Any(a => a.From == from && a.To == to))
                foreach (var e in graph.Evidence(from, to)) kept.AddEdge(from, to, e);
        return kept;
    }

    [Fact]
    public void EngineFoldersHaveNoCycle()
    {
        var graph = WithoutAllowances(EngineGraph());
        var cycles = graph.Cycles();
        Assert.True(cycles.Count == 0, "src/Engine folders depend on each other in a circle:\n\n"
                                       + string.Join("\n\n", cycles.Select(c => graph.Describe(c))));
    }

    [Fact]
    public void EngineFoldersFollowTheLayers()
    {
        var graph = WithoutAllowances(EngineGraph());
        var problems = graph.LayerViolations(Layers).ToList();
        foreach (var (from, to, why) in ForbiddenEdges)
            if (graph.Edges.Contains((from, to)))
                problems.Add($"{from} -> {to} is forbidden ({why}):\n"
                             + string.Join('\n', graph.Evidence(from, to).Take(4).Select(e => "    " + e)));
        foreach (var layerFolder in Layers.SelectMany(l => l))
            if (!Directory.Exists(Path.Combine(ReadmeCommandTableTests.Root(), "src/Engine", layerFolder)))
                problems.Add($"{layerFolder} is in the layering but src/Engine/{layerFolder} does not exist");
        Assert.True(problems.Count == 0, "src/Engine folders against the intended layering (bottom first: "
                                         + string.Join(" < ", Layers.Select(l => string.Join("|", l))) + "):\n\n"
                                         + string.Join("\n\n", problems));
    }

    [Fact]
    public void TemporaryAllowancesAreStillNeeded()
    {
        // An allowance whose edge is gone must be deleted, so the list never hides a new edge.
        var graph = EngineGraph();
        var stale = TemporaryAllowances.Where(a => !graph.Edges.Contains((a.From, a.To))).ToList();
        Assert.True(stale.Count == 0, "allowances without their edge (delete them): "
                                      + string.Join("; ", stale.Select(a => $"{a.From} -> {a.To}")));
    }

    [Fact]
    public void NamespacesMatchFolders()
    {
        var root = ReadmeCommandTableTests.Root();
        var wrong = new List<string>();
        foreach (var path in Directory.EnumerateFiles(Path.Combine(root, "src/Engine"), "*.cs", SearchOption.AllDirectories))
        {
            var relative = Path.GetRelativePath(root, path).Replace('\\', '/');
            if (relative.Contains("/obj/") || relative.Contains("/bin/")) continue;
            var folder = FolderOfFile(relative);
            var expected = folder is null ? "ReaLNative.Engine"
                : PublicFolders.Contains(folder) ? "ReaLNative" : "ReaLNative.Engine." + folder;
            foreach (Match m in Regex.Matches(File.ReadAllText(path), @"^\s*namespace\s+([\w.]+)", RegexOptions.Multiline))
                if (m.Groups[1].Value != expected && !m.Groups[1].Value.StartsWith(expected + ".", StringComparison.Ordinal))
                    wrong.Add($"{relative}: namespace {m.Groups[1].Value} (expected {expected})");
        }
        Assert.True(wrong.Count == 0, string.Join('\n', wrong));
    }

    [Fact]
    public void PublicNamespaceHoldsOnlyThePublicApi()
    {
        // Hosting/ and Contracts/ are the public API: every top-level type there is public, and
        // every public type of the assembly is there (namespace ReaLNative).
        var types = typeof(ReaLNative.Engine.Model.LlamaModel).Assembly.GetTypes();
        var internalInPublic = types.Where(t => t.Namespace == "ReaLNative" && !t.IsNested && !t.IsPublic
                                                && !t.IsDefined(typeof(System.Runtime.CompilerServices.CompilerGeneratedAttribute)))
                                    .Select(t => t.FullName).ToList();
        Assert.True(internalInPublic.Count == 0, "internal types in the public namespace (move them to their folder): "
                                                 + string.Join(", ", internalInPublic));
        var publicElsewhere = types.Where(t => t.IsVisible && t.Namespace != "ReaLNative" && !PublicOutsideTheApiNamespace.Contains(t.FullName))
                                   .Select(t => t.FullName).ToList();
        Assert.True(publicElsewhere.Count == 0, "public types outside namespace ReaLNative: " + string.Join(", ", publicElsewhere));
        var graph = EngineGraph();
        Assert.Contains("Hosting", graph.Folders);
        Assert.Contains("Contracts", graph.Folders);
    }

    [Fact]
    public void ReadmeDrawsTheLayers()
    {
        // README's block lists the layers top first, one per line indented by two spaces:
        // "  Folder, Folder   what they hold" (deeper-indented lines continue the description).
        var readme = File.ReadAllLines(Path.Combine(ReadmeCommandTableTests.Root(), "README.md"));
        int start = Array.FindIndex(readme, l => l.StartsWith("src/Engine folders, top to bottom", StringComparison.Ordinal));
        Assert.True(start >= 0, "README.md has no line starting 'src/Engine folders, top to bottom'");
        var drawn = readme.Skip(start + 1).TakeWhile(l => !l.StartsWith("```", StringComparison.Ordinal))
                          .Where(l => Regex.IsMatch(l, @"^  \S"))
                          .Select(l => Regex.Split(l.Trim(), @"\s{2,}")[0].Split(',', StringSplitOptions.TrimEntries))
                          .Reverse().ToList();
        Assert.Equal(Layers.Select(l => string.Join(", ", l.Order(StringComparer.Ordinal))),
                     drawn.Select(l => string.Join(", ", l.Order(StringComparer.Ordinal))));
    }

    // The checker itself, on graphs made up here.

    [Fact]
    public void CheckerNamesACycleWithItsEvidence()
    {
        var graph = new FolderGraph();
        graph.AddEdge("Model", "Parallelism", new EdgeEvidence("src/Engine/Model/LlamaModel.cs", "LlamaModel uses ShardComm"));
        graph.AddEdge("Parallelism", "Realloc", new EdgeEvidence("src/Engine/Parallelism/DistributedModel.cs", "DistributedModel uses InProcessRealloc"));
        graph.AddEdge("Realloc", "Model", new EdgeEvidence("src/Engine/Realloc/ReallocPlan.cs", "ReallocPlan uses ParamLayout"));
        graph.AddEdge("Runs", "Model", new EdgeEvidence("src/Engine/Runs/Pipeline.cs", "Pipeline uses LlamaModel"));
        graph.AddEdge("Config", "Tasks", new EdgeEvidence("src/Engine/Config/ExperimentConfig.cs", "ExperimentConfig uses SyntheticTask"));
        graph.AddEdge("Tasks", "Config", new EdgeEvidence("src/Engine/Tasks/SyntheticTask.cs", "SyntheticTask uses TaskConfig"));

        var cycles = graph.Cycles().Select(c => string.Join(" -> ", c)).Order(StringComparer.Ordinal).ToList();
        Assert.Equal(["Config -> Tasks -> Config", "Model -> Parallelism -> Realloc -> Model"], cycles);
        var described = graph.Describe(graph.Cycles().Single(c => c[0] == "Model"));
        Assert.Contains("Model -> Parallelism -> Realloc -> Model", described);
        Assert.Contains("src/Engine/Model/LlamaModel.cs: LlamaModel uses ShardComm", described);
        Assert.Contains("src/Engine/Realloc/ReallocPlan.cs: ReallocPlan uses ParamLayout", described);
    }

    [Fact]
    public void CheckerAcceptsLayersAndRejectsAnEdgeUpOrSideways()
    {
        var graph = new FolderGraph();
        graph.AddEdge("Model", "Layout", new EdgeEvidence("a.cs", "down"));
        graph.AddEdge("Runs", "Model", new EdgeEvidence("b.cs", "down"));
        graph.AddEdge("Runs", "Layout", new EdgeEvidence("c.cs", "down, two layers"));
        string[][] layers = [["Layout"], ["Model", "Optim"], ["Runs"]];
        Assert.Empty(graph.Cycles());
        Assert.Empty(graph.LayerViolations(layers));

        graph.AddEdge("Model", "Optim", new EdgeEvidence("d.cs", "Model.X uses Optim.Y"));
        graph.AddEdge("Layout", "Runs", new EdgeEvidence("e.cs", "Layout.X uses Runs.Y"));
        graph.AddFolder("Extra");
        var problems = graph.LayerViolations(layers);
        Assert.Equal(3, problems.Count);
        Assert.Contains(problems, p => p.StartsWith("Model (layer 1) -> Optim (layer 1)") && p.Contains("d.cs: Model.X uses Optim.Y"));
        Assert.Contains(problems, p => p.StartsWith("Layout (layer 0) -> Runs (layer 2)") && p.Contains("e.cs"));
        Assert.Contains(problems, p => p.StartsWith("Extra is in no layer"));
        Assert.Equal("Layout -> Runs -> Layout", string.Join(" -> ", graph.Cycles().Single()));
    }

    [Fact]
    public void ScannerSeesUsesInsideMethodBodies()
    {
        // ArchitectureFixture.cs: Lower.Caller names Upper types only inside its method body (a
        // local's generic argument, a static call, a catch), Upper.Holder names Lower through a field.
        var testAssembly = typeof(ArchitectureTests).Assembly.Location;
        const string ns = "ReaLNative.Engine.Tests.Architecture.Fixture.";
        var graph = AssemblyFolderScanner.Scan(testAssembly, (n, _) => n.StartsWith(ns, StringComparison.Ordinal) ? n[ns.Length..] : null);
        Assert.Equal(["Upper"], graph.Targets("Lower"));
        var evidence = graph.Evidence("Lower", "Upper").Select(e => e.What).ToList();
        Assert.Contains($"{ns}Lower.Caller uses {ns}Upper.Helper", evidence);
        Assert.Contains($"{ns}Lower.Caller uses {ns}Upper.Payload", evidence);
        Assert.Contains($"{ns}Lower.Caller uses {ns}Upper.Failure", evidence);
        Assert.All(graph.Evidence("Lower", "Upper"), e => Assert.Equal("tests/Engine.Tests/Architecture/ArchitectureFixture.cs", e.File));
        Assert.Equal(["Lower"], graph.Targets("Upper"));
        Assert.Empty(graph.Targets("Unrelated"));
    }
}
