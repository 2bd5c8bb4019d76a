// The package as a newcomer meets it, from README.md alone: README's embedding steps run verbatim in
// a fresh folder (only `REALN=` set to this checkout), the host side with an empty NuGet package
// cache (NUGET_PACKAGES in a temporary folder: no stale copy can hide a packing bug), then README's
// example verbatim as Program.cs and `dotnet run` (with examples/ppo-tiny.yaml cut to a few
// iterations). Also: examples/EmbeddedHost against the same feed, the package's contents, and
// `dotnet pack` refusing a package without librealn.so.
using System.Diagnostics;
using System.Text.RegularExpressions;
using Xunit;

namespace ReaLNative.Engine.Tests.Hosting;

public sealed class ReadmeEmbeddingFixture : IDisposable
{
    public string Root { get; }
    public string Work { get; }
    /// <summary>The host side's NuGet cache: empty when the steps start.</summary>
    public string Cache { get; }
    public string Feed => Path.Combine(Root, "artifacts", "feed");
    /// <summary>The version `./build.sh pack` gave this pack; null when packing was impossible.</summary>
    public string? Version { get; }
    public string? SkipReason { get; }
    /// <summary>Output of README's steps and of `dotnet run` of README's example.</summary>
    public string StepsOutput { get; } = "";
    public string ExampleOutput { get; } = "";
    public TimeSpan Elapsed { get; }

    public ReadmeEmbeddingFixture()
    {
        var clock = Stopwatch.StartNew();
        Root = Docs.ReadmeCommandTableTests.Root();
        Work = Path.Combine(Path.GetTempPath(), "realn-readme-" + Guid.NewGuid().ToString("N")[..8]);
        Cache = Path.Combine(Work, "nuget-packages");
        Directory.CreateDirectory(Cache);
        if (!File.Exists(Path.Combine(Root, "native", "build", "librealn.so")))
        {
            SkipReason = "cannot pack ReaLNative: native/build/librealn.so is not built (run ./build.sh)";
            return;
        }
        string readme = File.ReadAllText(Path.Combine(Root, "README.md"));
        var steps = Regex.Match(readme, @"<!-- embedding-steps:begin -->\s*```sh\n(.*?)```", RegexOptions.Singleline);
        var example = Regex.Match(readme, @"<!-- embedding-example:begin -->\s*```csharp\n(.*?)```", RegexOptions.Singleline);
        if (!steps.Success || !example.Success) throw new InvalidDataException("README.md lacks the embedding steps or example between their markers");
        var lines = steps.Groups[1].Value.Split('\n').ToList();
        int split = lines.FindIndex(l => l.StartsWith("# write the example below into Program.cs"));
        int pack = lines.FindIndex(l => l.Contains("build.sh\" pack"));
        if (split < 0 || pack < 0 || !lines[0].StartsWith("REALN=")) throw new InvalidDataException("README.md's embedding steps changed shape: REALN=, build.sh pack, '# write the example below into Program.cs' expected");
        lines[0] = $"REALN='{Root}'";
        // The repository side packs with the developer's cache; the host side starts from an empty one.
        lines.Insert(pack + 1, $"export NUGET_PACKAGES='{Cache}'");
        split++;
        string script = "set -euo pipefail\n" + string.Join("\n", lines.Take(split)) + "\npwd > '" + Path.Combine(Work, "host-dir") + "'\n";
        StepsOutput = Bash(Work, script, 540);
        var v = Regex.Match(StepsOutput, @"packed ReaLNative (\S+) into");
        Version = v.Success ? v.Groups[1].Value : throw new InvalidDataException("`build.sh pack` did not print 'packed ReaLNative VERSION into':\n" + StepsOutput);
        string host = File.ReadAllText(Path.Combine(Work, "host-dir")).Trim();
        File.WriteAllText(Path.Combine(host, "Program.cs"), example.Groups[1].Value);
        // The config the steps copied, cut to a few iterations (the full run takes over a minute).
        string cfg = Path.Combine(host, "ppo-tiny.yaml");
        string yaml = Regex.Replace(File.ReadAllText(cfg), @"iterations: \d+", "iterations: 2");
        File.WriteAllText(cfg, yaml.Replace("eval: { size: 128, every: 5 }", "eval: { size: 16, every: 2 }").Replace("batch: { size: 256", "batch: { size: 32"));
        ExampleOutput = Bash(host, $"set -euo pipefail\nexport NUGET_PACKAGES='{Cache}'\n" + string.Join("\n", lines.Skip(split + 1)), 300);
        Elapsed = clock.Elapsed;
    }

    /// <summary>Runs a bash script; fails with its output when it exits non-zero or runs past the limit.</summary>
    public static string Bash(string cwd, string script, int timeoutSeconds, IDictionary<string, string>? env = null)
    {
        var psi = new ProcessStartInfo("bash") { WorkingDirectory = cwd, RedirectStandardOutput = true, RedirectStandardError = true, RedirectStandardInput = true };
        psi.Environment.Remove("REALN_LIBRARY");  // the host must find librealn.so in the package
        psi.Environment["DOTNET_NOLOGO"] = "1";
        psi.Environment["DOTNET_CLI_TELEMETRY_OPTOUT"] = "1";
        foreach (var (k, val) in env ?? new Dictionary<string, string>()) psi.Environment[k] = val;
        using var p = Process.Start(psi)!;
        p.StandardInput.Write(script);
        p.StandardInput.Close();
        var err = p.StandardError.ReadToEndAsync();
        var outp = p.StandardOutput.ReadToEndAsync();
        if (!p.WaitForExit(timeoutSeconds * 1000)) { p.Kill(entireProcessTree: true); throw new TimeoutException($"ran over {timeoutSeconds} s:\n{script}\n{outp.Result}{err.Result}"); }
        string all = outp.Result + err.Result;
        if (p.ExitCode != 0) throw new InvalidOperationException($"exited {p.ExitCode}:\n{script}\n--- output:\n{all[Math.Max(0, all.Length - 6000)..]}");
        return all;
    }

    public void Dispose()
    {
        try { Directory.Delete(Work, true); } catch (IOException) { }
        if (Version is not null)
            foreach (var f in Directory.GetFiles(Feed, $"*.{Version}.nupkg")) File.Delete(f);  // this pack's packages
    }
}

public class PackageTests(ReadmeEmbeddingFixture fx) : IClassFixture<ReadmeEmbeddingFixture>
{
    [SkippableFact]
    public void ReadmeEmbeddingStepsAndExampleRunVerbatimWithAnEmptyPackageCache()
    {
        Skip.If(fx.SkipReason is not null, fx.SkipReason);
        Assert.Matches(@"Completed: task score \d\.\d{3} -> \d\.\d{3}", fx.ExampleOutput);
        Assert.Contains("\nCompleted", fx.ExampleOutput);  // the progress line ends before the result line
        Assert.True(Directory.Exists(Path.Combine(fx.Cache, "realnative", fx.Version!)), "the host restored ReaLNative into the empty cache");
        Console.WriteLine($"README embedding steps + example: {fx.Elapsed.TotalSeconds:F0} s");
    }

    [SkippableFact]
    public void NupkgCarriesNativeLibrary()
    {
        Skip.If(fx.SkipReason is not null, fx.SkipReason);
        using var zip = System.IO.Compression.ZipFile.OpenRead(Path.Combine(fx.Feed, $"ReaLNative.{fx.Version}.nupkg"));
        Assert.Contains(zip.Entries, e => e.FullName == "runtimes/linux-x64/native/librealn.so");
        Assert.Contains(zip.Entries, e => e.FullName == "runtimes/linux-x64/native/librealn_selftest.so");
        Assert.Contains(zip.Entries, e => e.FullName == "lib/net10.0/ReaLNative.Engine.xml");
    }

    [SkippableFact]
    public void EmbeddedHostRunsAndCancelsCleanly()
    {
        Skip.If(fx.SkipReason is not null, fx.SkipReason);
        string dir = Path.Combine(fx.Work, "EmbeddedHost");
        Directory.CreateDirectory(dir);
        foreach (var f in new[] { "EmbeddedHost.csproj", "nuget.config", "Program.cs" })
            File.Copy(Path.Combine(fx.Root, "examples", "EmbeddedHost", f), Path.Combine(dir, f));
        // The copy sits outside the checkout: point the feed and the linked config at the repository's.
        File.WriteAllText(Path.Combine(dir, "nuget.config"), File.ReadAllText(Path.Combine(dir, "nuget.config")).Replace("../../artifacts/feed", fx.Feed));
        var csproj = Path.Combine(dir, "EmbeddedHost.csproj");
        File.WriteAllText(csproj, File.ReadAllText(csproj).Replace("../ppo-tiny.yaml", Path.Combine(fx.Root, "examples", "ppo-tiny.yaml")));
        string output = ReadmeEmbeddingFixture.Bash(dir, $"dotnet run -c Release -p:ReaLNativeVersion={fx.Version} -- --short", 300,
                                                    new Dictionary<string, string> { ["NUGET_PACKAGES"] = fx.Cache });
        Assert.Contains("run 1: Completed", output);
        Assert.Contains("cancelled cleanly: no training thread left, last checkpoint intact", output);
    }

    [SkippableFact]
    public void PackingWithoutTheNativeLibraryIsRefusedNamingIt()
    {
        Skip.If(fx.SkipReason is not null, fx.SkipReason);
        string outDir = Path.Combine(fx.Work, "no-native");
        var e = Assert.Throws<InvalidOperationException>(() => ReadmeEmbeddingFixture.Bash(fx.Root,
            $"dotnet pack src/Engine/ReaLNative.Engine.csproj -c Release --no-build -o '{outDir}' -p:NativeBuildDir='{Path.Combine(fx.Work, "nothing-built")}' -p:PackageVersion=0.0.0-nonative -nologo", 300));
        Assert.Contains("librealn.so is missing", e.Message);
        Assert.Contains("./build.sh pack", e.Message);
        Assert.False(File.Exists(Path.Combine(outDir, "ReaLNative.0.0.0-nonative.nupkg")));
    }
}
