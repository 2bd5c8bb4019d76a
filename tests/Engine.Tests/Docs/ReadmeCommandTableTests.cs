// README.md's command table is documentation that must stay executable: every command and option
// in it exists in `realn ... --help`, and every command and option `--help` shows is in the table.
// Failures name the command and the option, and on which side it is missing.
using System.Text.RegularExpressions;
using ReaLNative.Engine.Tests.Workers;
using Xunit;

namespace ReaLNative.Engine.Tests.Docs;

public sealed class ReadmeCommandTableTests
{
    internal static string Root()
    {
        for (var d = new DirectoryInfo(AppContext.BaseDirectory); d is not null; d = d.Parent)
            if (File.Exists(Path.Combine(d.FullName, "ReaLNative.sln"))) return d.FullName;
        throw new DirectoryNotFoundException("no ReaLNative.sln above " + AppContext.BaseDirectory);
    }

    /// <summary>`realn ARGS` with its output collected (stdout redirected, as in a file).</summary>
    internal static (int Code, string Output) Realn(params string[] args) => Realn(null, args);

    internal static (int Code, string Output) Realn(IDictionary<string, string?>? env, params string[] args)
    {
        using var r = Run.Start("realn " + string.Join(' ', args), WorkerProcessTests.Realn(), args, env);
        int code = r.Wait(TimeSpan.FromSeconds(300));
        return (code, r.Output);
    }

    /// <summary>README rows: command path ("bench kernels") -> the options its first cell names.</summary>
    internal static Dictionary<string, HashSet<string>> ReadmeTable(string readme)
    {
        var rows = new Dictionary<string, HashSet<string>>();
        foreach (Match m in Regex.Matches(readme, @"^\| `realn ([^`]*)` \|", RegexOptions.Multiline))
        {
            var words = m.Groups[1].Value.Split(' ', StringSplitOptions.RemoveEmptyEntries);
            string path = string.Join(" ", words.TakeWhile(w => Regex.IsMatch(w, "^[a-z][a-z-]*$")));
            rows[path] = Regex.Matches(m.Groups[1].Value, @"--[a-z][a-z0-9-]*").Select(x => x.Value).ToHashSet();
        }
        return rows;
    }

    /// <summary>The names in a --help section ("Options:", "Commands:"), first column only.</summary>
    private static List<string> Section(string help, string title)
    {
        var names = new List<string>();
        bool inside = false;
        foreach (var line in help.Split('\n').Select(l => l.TrimEnd('\r')))
        {
            if (!line.StartsWith(' ')) { inside = line == title; continue; }
            if (!inside) continue;
            var first = Regex.Match(line, @"^  (\S+(?:, \S+)*)");  // exactly two spaces: a row, not a continued description
            if (!first.Success) continue;
            if (title == "Options:")
                names.AddRange(Regex.Matches(first.Groups[1].Value, @"--[a-z][a-z0-9-]*").Select(x => x.Value));
            else names.Add(first.Groups[1].Value);
        }
        return names;
    }

    /// <summary>Every leaf command `realn --help` lists (recursively), with the options its --help shows.</summary>
    private static Dictionary<string, HashSet<string>> HelpTree()
    {
        var leaves = new Dictionary<string, HashSet<string>>();
        void Walk(string path)
        {
            var args = path.Length == 0 ? new[] { "--help" } : path.Split(' ').Append("--help").ToArray();
            var (code, help) = Realn(args);
            Assert.True(code == 0, $"realn {string.Join(' ', args)} exited {code}:\n{help}");
            var subs = Section(help, "Commands:");
            if (subs.Count == 0 && path.Length > 0)
                leaves[path] = Section(help, "Options:").Where(o => o is not "--help" and not "--version").ToHashSet();
            foreach (var s in subs) Walk(path.Length == 0 ? s : path + " " + s);
        }
        Walk("");
        return leaves;
    }

    [Fact]
    public void EveryCommandAndOptionInReadmeIsInHelpAndTheOtherWayRound()
    {
        var readme = ReadmeTable(File.ReadAllText(Path.Combine(Root(), "README.md")));
        Assert.True(readme.Count >= 5, $"README.md's command table not found (rows `| \\`realn ...\\` | ... |`): {readme.Count} rows");
        var help = HelpTree();
        var problems = new List<string>();
        foreach (var (cmd, opts) in help)
        {
            if (!readme.TryGetValue(cmd, out var row)) { problems.Add($"README.md's command table has no row for `realn {cmd}` (in `realn --help`)"); continue; }
            foreach (var o in opts.Except(row).Order())
                problems.Add($"README.md's row `realn {cmd}` lacks {o} (shown by `realn {cmd} --help`)");
            foreach (var o in row.Except(opts).Order())
                problems.Add($"`realn {cmd} --help` lacks {o} (named in README.md's row `realn {cmd}`)");
        }
        foreach (var cmd in readme.Keys.Except(help.Keys).Order())
            problems.Add($"README.md's row `realn {cmd}` is not a command in `realn --help`");
        Assert.True(problems.Count == 0, "README.md and --help disagree:\n  " + string.Join("\n  ", problems));
    }

    [Fact]
    public void EveryHelpHasAnExampleAndAPointerToTheDocs()
    {
        foreach (var args in new[] { new[] { "--help" }, ["run", "--help"], ["plan", "--help"], ["launch", "--help"], ["worker", "--help"], ["bench", "kernels", "--help"] })
        {
            var (code, help) = Realn(args);
            Assert.True(code == 0, $"realn {string.Join(' ', args)} exited {code}");
            Assert.Contains("Examples:", help);
            Assert.Contains("More: ", help);
        }
        // The hidden worker command lists its options (it printed nothing before).
        Assert.Contains("--control", Realn("worker", "--help").Output);
    }
}
