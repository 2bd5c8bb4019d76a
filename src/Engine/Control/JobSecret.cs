// The per-job secret that authenticates every control message. It is generated once at launch and
// reaches workers through the environment (REALN_JOB_SECRET, hex) or a file only its owner can
// read (REALN_JOB_SECRET_FILE); never through the command line, which every local user can list.
using System.Security.Cryptography;

namespace ReaLNative.Engine.Control;

internal static class JobSecret
{
    public const string Variable = "REALN_JOB_SECRET";
    public const string FileVariable = "REALN_JOB_SECRET_FILE";
    public const int Bytes = 32;
    private const UnixFileMode GroupOrOther =
        UnixFileMode.GroupRead | UnixFileMode.GroupWrite | UnixFileMode.GroupExecute |
        UnixFileMode.OtherRead | UnixFileMode.OtherWrite | UnixFileMode.OtherExecute;

    /// <summary>A fresh secret: 32 bytes from the system's cryptographic generator.</summary>
    public static byte[] Generate() => RandomNumberGenerator.GetBytes(Bytes);

    /// <summary>
    /// The secret this process was given: REALN_JOB_SECRET (hex) or the file named by
    /// REALN_JOB_SECRET_FILE (hex text; on Unix its mode must grant nothing to group or others).
    /// Refuses both set, neither set, a short or non-hex secret, and a secret that also appears on
    /// this process's command line.
    /// </summary>
    public static byte[] FromEnvironment() =>
        FromEnvironment(Environment.GetEnvironmentVariable, Environment.GetCommandLineArgs());

    /// <summary>Testable form: <paramref name="env"/> looks variables up, <paramref name="commandLine"/> is argv.</summary>
    public static byte[] FromEnvironment(Func<string, string?> env, IReadOnlyList<string> commandLine)
    {
        string? hex = env(Variable), file = env(FileVariable);
        if (!string.IsNullOrEmpty(hex) && !string.IsNullOrEmpty(file))
            throw new InvalidOperationException($"both {Variable} and {FileVariable} are set: give the job secret one way only");
        string source;
        if (!string.IsNullOrEmpty(hex)) source = Variable;
        else if (!string.IsNullOrEmpty(file))
        {
            hex = ReadFile(file);
            source = $"{FileVariable} ({file})";
        }
        else throw new InvalidOperationException($"no job secret: set {Variable} (hex) or {FileVariable} (a file of mode 0600); workers are started by a launcher that does this");
        byte[] secret;
        try { secret = Convert.FromHexString(hex.Trim()); }
        catch (FormatException) { throw new InvalidOperationException($"the job secret in {source} is not hex"); }
        if (secret.Length < 16) throw new InvalidOperationException($"the job secret in {source} has {secret.Length} bytes; at least 16 are needed");
        string h = Convert.ToHexString(secret);
        if (commandLine.Any(a => a.Contains(h, StringComparison.OrdinalIgnoreCase)))
            throw new InvalidOperationException("the job secret appears on the command line, where every local user can read it; pass it only by environment or file");
        return secret;
    }

    private static string ReadFile(string path)
    {
        if (!File.Exists(path)) throw new InvalidOperationException($"{FileVariable}: {path} does not exist");
        if (!OperatingSystem.IsWindows())
        {
            var mode = File.GetUnixFileMode(path);
            if ((mode & GroupOrOther) != 0)
                throw new InvalidOperationException(
                    $"{FileVariable}: {path} has mode {Convert.ToString((int)mode & 0x1ff, 8).PadLeft(4, '0')}, readable beyond its owner; refusing it (chmod 600 {path})");
        }
        var text = File.ReadAllText(path);
        if (text.Length > 4096) throw new InvalidOperationException($"{FileVariable}: {path} is {text.Length} bytes, not a job secret");
        return text;
    }

    /// <summary>Writes <paramref name="secret"/> as hex to <paramref name="path"/>, created with mode
    /// 0600 (the file never exists with a wider mode) and replaced atomically; returns the path,
    /// for a launcher to hand to workers as REALN_JOB_SECRET_FILE.</summary>
    public static string WriteFile(byte[] secret, string path)
    {
        path = Path.GetFullPath(path);
        string tmp = path + "." + Environment.ProcessId + ".tmp";
        var opts = new FileStreamOptions { Mode = FileMode.CreateNew, Access = FileAccess.Write, Share = FileShare.None };
        if (!OperatingSystem.IsWindows()) opts.UnixCreateMode = UnixFileMode.UserRead | UnixFileMode.UserWrite;
        if (File.Exists(tmp)) File.Delete(tmp);
        using (var fs = new FileStream(tmp, opts))
        using (var w = new StreamWriter(fs))
        {
            w.Write(Convert.ToHexString(secret));
            w.Flush();
            fs.Flush(flushToDisk: true);
        }
        File.Move(tmp, path, overwrite: true);
        return path;
    }
}
