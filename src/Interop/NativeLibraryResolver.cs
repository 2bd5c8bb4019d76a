// One resolver for librealn, installed before the first P/Invoke (module initializer). Probe
// order: $REALN_LIBRARY (an explicit path), then the CUDA build, then the CPU build, each looked
// for beside the application, in the NuGet runtimes/ layout and in the repository's native build
// folders. A failure names every path tried and how to fix it, as LLamaSharp's loader does.
// librealn_selftest (the op case list, `realn selftest` only) is loaded after librealn, from the
// folder librealn came from first, so its calls bind to the librealn already loaded.
using System.Reflection;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;

namespace ReaLNative.Interop;

public static partial class NativeLibraryResolver
{
    [LibraryImport("libc", EntryPoint = "sigaction")]
    private static unsafe partial int SigAction(int signum, void* act, void* oldact);

    [LibraryImport("libc", EntryPoint = "setenv", StringMarshalling = StringMarshalling.Utf8)]
    private static partial int SetEnv(string name, string value, int overwrite);

    public const string OverrideVariable = "REALN_LIBRARY";
    private static readonly object Gate = new();
    private static nint _handle;
    private static string? _loadedFrom;
    private static nint _selfTestHandle;
    private const string SelfTestFile = "librealn_selftest.so";

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
        if (name == Native.SelfTestLibrary) return LoadSelfTest();
        if (name != Native.Library) return 0;
        return LoadRealn();
    }

    private static nint LoadRealn()
    {
        lock (Gate)
        {
            if (_handle != 0) return _handle;
            (_handle, _loadedFrom) = Load();
            return _handle;
        }
    }

    /// <summary>Where librealn_selftest.so is looked for, in order: beside the loaded librealn, then
    /// the folders librealn is looked for in.</summary>
    public static IReadOnlyList<string> SelfTestCandidates()
    {
        var dirs = new List<string>();
        if (_loadedFrom is not null && Path.GetDirectoryName(_loadedFrom) is { Length: > 0 } loadedDir) dirs.Add(loadedDir);
        foreach (string candidate in Candidates())
            if (Path.GetDirectoryName(candidate) is { Length: > 0 } dir && !dirs.Contains(dir)) dirs.Add(dir);
        return dirs.Select(d => Path.Combine(d, SelfTestFile)).ToList();
    }

    private static nint LoadSelfTest()
    {
        LoadRealn();  // first: librealn_selftest.so binds to the librealn loaded here (its soname)
        lock (Gate)
        {
            if (_selfTestHandle != 0) return _selfTestHandle;
            foreach (string candidate in SelfTestCandidates())
                if (File.Exists(candidate) && NativeLibrary.TryLoad(candidate, out nint h)) return _selfTestHandle = h;
            throw new DllNotFoundException(
                $"{SelfTestFile} (the op case list of `realn selftest`) could not be loaded. Looked in:" + Environment.NewLine +
                string.Join(Environment.NewLine, SelfTestCandidates().Select(c => "  " + c)) + Environment.NewLine +
                "./build.sh builds it beside librealn.so (native/build); the ReaLNative package carries both.");
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

    /// <summary>Signals the .NET runtime turns into exceptions (NullReferenceException from SIGSEGV,
    /// DivideByZeroException from SIGFPE, ...): ILL, BUS, FPE, SEGV on Linux.</summary>
    private static readonly int[] RuntimeSignals = [4, 7, 8, 11];

    /// <summary>Loads a UCX library keeping the runtime's signal handlers. libucs installs its own
    /// for ILL, SEGV, BUS and FPE in its library constructor (UCX_ERROR_SIGNALS), replacing the
    /// runtime's: every managed null dereference anywhere in the process then killed it ("Caught
    /// signal 11 ... address (nil)"). The runtime's handlers are saved before and put back after
    /// (sigaction, which unlike setenv is safe while other threads run).</summary>
    private static unsafe nint ResolveSystem(string name)
    {
        DisableUcxMemoryHooks();
        const int SlotBytes = 256;  // >= sizeof(struct sigaction) on every Linux ABI (152 on x86-64)
        byte* saved = stackalloc byte[RuntimeSignals.Length * SlotBytes];
        var have = new bool[RuntimeSignals.Length];
        for (int i = 0; i < RuntimeSignals.Length; i++) have[i] = SigAction(RuntimeSignals[i], null, saved + i * SlotBytes) == 0;
        try { return LoadSystem(name); }
        finally
        {
            for (int i = 0; i < RuntimeSignals.Length; i++)
                if (have[i]) SigAction(RuntimeSignals[i], saved + i * SlotBytes, null);
        }
    }

    /// <summary>UCX's memory hooks off unless the user set them: when libucs loads, UCM hot-patches
    /// mmap/munmap/brk ("bistro") while other threads of this process (the runtime's, OpenMP's) may
    /// be executing them, and a thread that runs a half-written instruction dies with SIGSEGV
    /// ("Caught signal 11"; seen at start-up under load, in workers and once in a master). This
    /// engine registers every buffer it sends explicitly, so UCX needs no hooks. Worker processes
    /// get the same settings in their environment (WorkerProcesses); here the master sets them with
    /// libc's setenv (overwrite 0: a user's value wins) before the library's constructor reads them.
    /// Environment.SetEnvironmentVariable would not do: on Unix it changes only the runtime's copy.</summary>
    private static void DisableUcxMemoryHooks()
    {
        SetEnv("UCX_MEM_MMAP_HOOK_MODE", "none", 0);
        SetEnv("UCX_MEM_MALLOC_HOOKS", "no", 0);
    }

    /// <summary>UCX's libucp / libucs (Debian libucx0; ./build.sh installs libucx-dev).</summary>
    private static nint LoadSystem(string name)
    {
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
