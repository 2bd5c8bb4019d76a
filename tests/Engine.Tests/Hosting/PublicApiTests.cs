// The engine's public surface is deliberate: every exported type is in namespace ReaLNative (the
// documented API of src/Engine/Hosting), and the realn CLI is not shown the internals (it is a host
// on that API like any other; only tests, bench/ and src/Diagnostics are).
using System.Reflection;
using System.Runtime.CompilerServices;
using Xunit;

namespace ReaLNative.Engine.Tests.Hosting;

public class PublicApiTests
{
    private static readonly Assembly Engine = typeof(TrainingJob).Assembly;

    [Fact]
    public void EveryExportedTypeIsInTheReaLNativeNamespace()
    {
        var stray = Engine.GetExportedTypes().Where(t => t.Namespace != "ReaLNative").Select(t => t.FullName).ToList();
        Assert.True(stray.Count == 0, $"public types outside namespace ReaLNative: {string.Join(", ", stray)}");
    }

    [Fact]
    public void TheCliIsNotShownTheEngineInternals()
    {
        var friends = Engine.GetCustomAttributes<InternalsVisibleToAttribute>().Select(a => a.AssemblyName).ToList();
        Assert.Contains("ReaLNative.Diagnostics", friends);
        Assert.DoesNotContain("realn", friends);
    }
}
