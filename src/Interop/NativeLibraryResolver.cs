// One resolver for librealn, installed before the first P/Invoke (module initializer). Probe
// order: $REALN_LIBRARY (an explicit path), then the CUDA build, then the CPU build, each looked
// for beside the application, in the NuGet runtimes/ layout and in the repository's native build
// folders. A failure names every path tried and how to fix it, as LLamaSharp's loader does.
using System.Reflection;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;

namespace ReaLNative.Interop;

public static partial class NativeLibraryResolver
{
    [LibraryImport("libc", EntryPoint = "setenv", StringMarshalling = StringMarshalling.Utf8)]
    private static partial int SetEnv(string name, string value, int overwrite);

    public const string OverrideVariable = "REALN_LIBRARY";
    private static readonly object Gate = new();
    private static nint _handle;
    private static string? _loadedFrom;

    /// <summary>Path of the librealn that was loaded (null before the first call).</summary>
    public static string? LoadedFrom => _loadedFrom;

#pragma warning disable CA2255 // module initializer in a library: the resolver must precede any import
    [ModuleInitializer]
#pragma warning restore CA2255
    internal static void Install()
    {
        try
        {
            NativeLibrary.SetDllImportResolver(typeof(NativeLibraryResolver).Assembly, Resolve);
        }
        catch (InvalidOperationException)
        {
            // A resolver was already set for this assembly (e.g. by a host); keep theirs.
        }
    }

    private static nint Resolve(string name, Assembly assembly, DllImportSearchPath? path)
    {
        if (name == "openblas") return ResolveOpenBlas();
        if (name is "ucp" or "ucs") return ResolveSystem(name);
        if (name == "libc") return NativeLibrary.Load("libc.so.6");
        if (name != Native.Library) return 0;
        lock (Gate)
        {
            if (_handle != 0) return _handle;
            (_handle, _loadedFrom) = Load();
            return _handle;
        }
    }

    /// <summary>Every candidate path in probe order (for diagnostics).</summary>
    public static IReadOnlyList<string> Candidates()
    {
        var list = new List<string>();
        string? env = Environment.GetEnvironmentVariable(OverrideVariable);
        if (!string.IsNullOrWhiteSpace(env)) list.Add(env);
        var dirs = new List<string>();
        string baseDir = AppContext.BaseDirectory;
        dirs.Add(baseDir);
        dirs.Add(Path.Combine(baseDir, "runtimes", "linux-x64", "native"));
        // Walk up to a repository checkout (native/build*/).
        for (var d = new DirectoryInfo(baseDir); d is not null; d = d.Parent)
        {
            if (File.Exists(Path.Combine(d.FullName, "native", "include", "realn.h")))
            {
                dirs.Add(Path.Combine(d.FullName, "native", "build-cuda"));
                dirs.Add(Path.Combine(d.FullName, "native", "build"));
                break;
            }
        }
        foreach (string file in new[] { "librealn-cuda.so", "librealn.so" })
            foreach (string dir in dirs)
                list.Add(Path.Combine(dir, file));
        return list;
    }

    private static (nint, string) Load()
    {
        var errors = new List<string>();
        string? env = Environment.GetEnvironmentVariable(OverrideVariable);
        foreach (string candidate in Candidates())
        {
            bool isOverride = env is not null && candidate == env;
            if (!isOverride && !File.Exists(candidate)) continue;
            if (NativeLibrary.TryLoad(candidate, out nint h)) return (h, candidate);
            errors.Add($"  {candidate}: found but failed to load (missing dependency? run `ldd {candidate}`)");
            if (isOverride) break;  // an explicit override that fails is an error, not a fallback
        }
        // Last resort: the system loader's own search (LD_LIBRARY_PATH, ldconfig).
        if (env is null && NativeLibrary.TryLoad("librealn.so", out nint sys)) return (sys, "librealn.so (system search)");
        string tried = string.Join(Environment.NewLine, Candidates().Select(c => "  " + c));
        throw new DllNotFoundException(
            "librealn could not be loaded." + Environment.NewLine +
            (errors.Count > 0 ? string.Join(Environment.NewLine, errors) + Environment.NewLine : "") +
            "Looked in:" + Environment.NewLine + tried + Environment.NewLine +
            $"Build it with ./build.sh, or set {OverrideVariable} to the full path of librealn.so. " +
            "It needs libopenblas0 and libgomp1 (./build.sh installs them).");
    }

    /// <summary>UCX's libucp / libucs (Debian libucx0; ./build.sh installs libucx-dev).</summary>
    /// <summary>UCX's setting for the signals it traps. Left to UCX's default (ILL, SEGV, BUS, FPE)
    /// its handler replaces the runtime's SIGSEGV handler, and .NET raises NullReferenceException
    /// from SIGSEGV: any managed null dereference anywhere in the process then killed it ("Caught
    /// signal 11 ... address (nil)"). Unless the user set it, UCX traps none.</summary>
    public const string UcxErrorSignalsVariable = "UCX_ERROR_SIGNALS";

    private static nint ResolveSystem(string name)
    {
        // Before libucs loads: it reads its configuration in its library constructor. The native
        // environment is set (Environment.SetEnvironmentVariable does not reach getenv on Unix).
        if (Environment.GetEnvironmentVariable(UcxErrorSignalsVariable) is null)
        {
            SetEnv(UcxErrorSignalsVariable, "", overwrite: 0);
            Environment.SetEnvironmentVariable(UcxErrorSignalsVariable, "");
        }
        foreach (string n in new[] { $"lib{name}.so.0", $"lib{name}.so" })
            if (NativeLibrary.TryLoad(n, out nint h)) return h;
        throw new DllNotFoundException($"lib{name}.so.0 (UCX) could not be loaded: install libucx0 (./build.sh does).");
    }

    private static nint ResolveOpenBlas()
    {
        foreach (string n in new[] { "libopenblas.so.0", "libopenblas.so" })
            if (NativeLibrary.TryLoad(n, out nint h)) return h;
        return 0;
    }
}
