using System.Diagnostics;
using System.Runtime.InteropServices;
using ReaLNative.Interop.Ucx;
using Xunit;

namespace ReaLNative.Interop.Tests;

/// <summary>The generated UCX bindings against the C compiler's view of the same headers: every
/// struct size and named field offset printed by the generated probe must match .NET's layout.</summary>
public sealed unsafe class UcxBindingTests
{
    private static string RepoFile(params string[] parts)
    {
        var d = new DirectoryInfo(AppContext.BaseDirectory);
        while (d is not null && !File.Exists(Path.Combine(d.FullName, "ReaLNative.sln"))) d = d.Parent;
        Assert.NotNull(d);
        return Path.Combine([d!.FullName, .. parts]);
    }

    [Fact]
    public void GeneratedStructLayoutsMatchTheCCompiler()
    {
        string probe = RepoFile("tests", "Interop.Tests", "ucx_layout_probe.c");
        string exe = Path.Combine(Path.GetTempPath(), "realn-ucx-probe-" + Environment.ProcessId);
        // cc where it exists; a fresh machine may only have g++ (compile as C with -x c).
        string compiler = new[] { "/usr/bin/cc", "/usr/bin/gcc" }.FirstOrDefault(File.Exists) ?? "g++";
        string args = compiler == "g++" ? $"-x c -o {exe} {probe}" : $"-o {exe} {probe}";
        var cc = Process.Start(new ProcessStartInfo(compiler, args) { RedirectStandardError = true })!;
        Assert.True(cc.WaitForExit(60_000), "cc timed out");
        Assert.True(cc.ExitCode == 0, "probe did not compile: " + cc.StandardError.ReadToEnd());
        var run = Process.Start(new ProcessStartInfo(exe) { RedirectStandardOutput = true })!;
        string output = run.StandardOutput.ReadToEnd();
        Assert.True(run.WaitForExit(10_000));
        File.Delete(exe);
        var asm = typeof(Ucp).Assembly;
        int checkedStructs = 0, checkedFields = 0;
        foreach (var line in output.Split('\n', StringSplitOptions.RemoveEmptyEntries))
        {
            var parts = line.Split(' ');
            long value = long.Parse(parts[1]);
            var names = parts[0].Split('.');
            var type = asm.GetType("ReaLNative.Interop.Ucx." + names[0]);
            Assert.True(type is not null, $"no generated type {names[0]}");
            if (names.Length == 1)
            {
                Assert.Equal(value, Marshal.SizeOf(type!));
                checkedStructs++;
            }
            else
            {
                Assert.Equal(value, (long)Marshal.OffsetOf(type!, names[1]));
                checkedFields++;
            }
        }
        Assert.True(checkedStructs >= 20 && checkedFields >= 100, $"probe checked only {checkedStructs} structs / {checkedFields} fields");
    }

    /// <summary>With UCX loaded, a managed null dereference is still a NullReferenceException (the
    /// runtime raises it from SIGSEGV; libucs's signal handlers, installed when it loads, turned it
    /// into a crash until the resolver put the runtime's back).</summary>
    [Fact]
    public void NullReferenceStaysAnExceptionWithUcxLoaded()
    {
        uint major, minor, release;
        Ucp.ucp_get_version(&major, &minor, &release);
        int[]? none = Environment.TickCount == int.MinValue ? [1] : null;
        Assert.Throws<NullReferenceException>(() => none![0]);
    }

    [Fact]
    public void LibraryLoadsAndReportsItsVersion()
    {
        uint major, minor, release;
        Ucp.ucp_get_version(&major, &minor, &release);
        Assert.Equal(Ucp.ApiMajor, major);
        Assert.Equal(Ucp.ApiMinor, minor);
        Assert.Equal("Success", Ucp.StatusText(ucs_status_t.UCS_OK));
        Assert.True(Ucp.IsError((void*)(nint)(int)ucs_status_t.UCS_ERR_NO_MEMORY));
        Assert.False(Ucp.IsError((void*)0x1000));
    }
}
