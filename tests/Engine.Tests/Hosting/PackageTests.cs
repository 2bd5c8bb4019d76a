// The package as a consumer sees it: pack ReaLNative (+ Interop, Planner) into a temporary feed
// with a unique version (no NuGet cache staleness), then restore, build and run
// examples/EmbeddedHost from a temporary copy, and compile README's embedding example.
using System.Diagnostics;
using System.Text.RegularExpressions;
using Xunit;

namespace ReaLNative.Engine.Tests.Hosting;

public sealed class PackageFixture : IDisposable
{
    public string Root { get; }
    public string Feed { get; }
    public string Version { get; } = "0.0.0-test." + DateTime.UtcNow.Ticks;
    public string Work { get; }

    public PackageFixture()
    {
        var d = new DirectoryInfo(AppContext.BaseDirectory);
        while (d is not null && !File.Exists(Path.Combine(d.FullName, "ReaLNative.sln"))) d = d.Parent;
        Root = d?.FullName ?? throw new InvalidOperationException("repository root not found above " + AppContext.BaseDirectory);
        Work = Path.Combine(Path.GetTempPath(), "realn-pkg-" + Guid.NewGuid().ToString("N")[..8]);
        Feed = Path.Combine(Work, "feed");
        Directory.CreateDirectory(Feed);
        foreach (var p in new[] { "src/Interop/ReaLNative.Interop.csproj", "src/Planner/ReaLNative.Planner.csproj", "src/Engine/ReaLNative.Engine.csproj" })
            Run.Dotnet(Root, 300, "pack", Path.Combine(Root, p), "-c", "Release", "-o", Feed, $"-p:Version={Version}", "-v", "q", "-nologo");
    }

    public void Dispose()
    {
        try { Directory.Delete(Work, true); } catch (IOException) { }
        string cache = Environment.GetEnvironmentVariable("NUGET_PACKAGES") ?? Path.Combine(Environment.GetFolderPath(Environment.SpecialFolder.UserProfile), ".nuget", "packages");
        foreach (var id in new[] { "realnative", "realnative.interop", "realnative.planner" })
            try { Directory.Delete(Path.Combine(cache, id, Version), true); } catch (Exception e) when (e is IOException or DirectoryNotFoundException) { }
    }
}

internal static class Run
{
    public static string Dotnet(string cwd, int timeoutSeconds, params string[] args) => Exec(cwd, timeoutSeconds, null, args);

    public static string Exec(string cwd, int timeoutSeconds, string? feed, params string[] args)
    {
        var psi = new ProcessStartInfo("dotnet") { WorkingDirectory = cwd, RedirectStandardOutput = true, RedirectStandardError = true };
        foreach (var a in args) psi.ArgumentList.Add(a);
        if (feed is not null) psi.Environment["REALN_FEED"] = feed;
        psi.Environment.Remove("REALN_LIBRARY");  // the consumer must find librealn.so from the package
        using var p = Process.Start(psi)!;
        var err = p.StandardError.ReadToEndAsync();
        var outp = p.StandardOutput.ReadToEndAsync();
        if (!p.WaitForExit(timeoutSeconds * 1000)) { p.Kill(entireProcessTree: true); throw new TimeoutException($"dotnet {string.Join(' ', args)} ran over {timeoutSeconds} s"); }
        string all = outp.Result + err.Result;
        Assert.True(p.ExitCode == 0, $"dotnet {string.Join(' ', args)} exited {p.ExitCode}:\n{all[Math.Max(0, all.Length - 4000)..]}");
        return all;
    }
}

public class PackageTests(PackageFixture fx) : IClassFixture<PackageFixture>
{
    private string CopyExample(string name)
    {
        string dir = Path.Combine(fx.Work, name);
        Directory.CreateDirectory(dir);
        foreach (var f in new[] { "EmbeddedHost.csproj", "nuget.config", "Program.cs" })
            File.Copy(Path.Combine(fx.Root, "examples", "EmbeddedHost", f), Path.Combine(dir, f));
        // the copy sits outside the checkout: point the linked config at the repository's
        var csproj = Path.Combine(dir, "EmbeddedHost.csproj");
        File.WriteAllText(csproj, File.ReadAllText(csproj).Replace("../ppo-tiny.yaml", Path.Combine(fx.Root, "examples", "ppo-tiny.yaml")));
        return dir;
    }

    [Fact]
    public void NupkgCarriesNativeLibrary()
    {
        using var zip = System.IO.Compression.ZipFile.OpenRead(Path.Combine(fx.Feed, $"ReaLNative.{fx.Version}.nupkg"));
        Assert.Contains(zip.Entries, e => e.FullName == "runtimes/linux-x64/native/librealn.so");
        Assert.Contains(zip.Entries, e => e.FullName == "lib/net10.0/ReaLNative.Engine.xml");
    }

    [Fact]
    public void EmbeddedHostRunsAndCancelsCleanly()
    {
        string dir = CopyExample("host");
        string output = Run.Exec(dir, 240, fx.Feed, "run", "-c", "Release", $"-p:ReaLNativeVersion={fx.Version}", "--", "--short");
        Assert.Contains("run 1: Completed", output);
        Assert.Contains("cancelled cleanly: no training thread left, last checkpoint intact", output);
    }

    [Fact]
    public void ReadmeEmbeddingExampleCompiles()
    {
        string dir = CopyExample("readme");
        var m = Regex.Match(File.ReadAllText(Path.Combine(fx.Root, "README.md")), @"<!-- embedding-example:begin -->\s*```csharp\n(.*?)```", RegexOptions.Singleline);
        Assert.True(m.Success, "README.md has no embedding example between the markers");
        File.WriteAllText(Path.Combine(dir, "Program.cs"), m.Groups[1].Value);
        Assert.InRange(m.Groups[1].Value.Trim().Split('\n').Length, 1, 12);
        Run.Exec(dir, 240, fx.Feed, "build", "-c", "Release", $"-p:ReaLNativeVersion={fx.Version}", "-v", "q", "-nologo");
    }
}
