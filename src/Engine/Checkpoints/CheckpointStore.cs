// Durable, verifiable run checkpoints: OUT/checkpoints/step-<global iteration>/ (the global
// iteration counts every stage's iterations back to back, so names order numerically). A
// checkpoint is written into step-N.tmp; every file is fsynced, manifest.json (each file's size
// and SHA-256) is written LAST, the directory is fsynced and renamed to step-N, checkpoints/ is
// fsynced, and the `latest` pointer file is replaced atomically (tmp + fsync + rename). Only the
// newest `checkpoint_keep` are kept. Resume takes the newest checkpoint whose manifest verifies
// (missing manifest, missing file, size or hash mismatch = refused), falling back to older ones.
using System.Security.Cryptography;
using System.Text.Json;
using System.Text.Json.Nodes;
using ReaLNative.Interop;

namespace ReaLNative.Engine.Checkpoints;

/// <summary>A checkpoint that failed verification: its name and why.</summary>
internal sealed record CheckpointRefusal(string Name, string Reason);

internal sealed class CheckpointStore
{
    public const string ManifestName = "manifest.json";
    public const string PointerName = "latest";
    private const string Prefix = "step-";

    public string Root { get; }
    public int Keep { get; }

    public CheckpointStore(string root, int keep)
    {
        if (keep < 1) throw new ArgumentOutOfRangeException(nameof(keep), keep, "checkpoint_keep must be >= 1");
        Root = root;
        Keep = keep;
    }

    public static string NameOf(long globalIteration) => Prefix + globalIteration.ToString(System.Globalization.CultureInfo.InvariantCulture);

    /// <summary>The global iteration a checkpoint directory name stands for, or null for other names (step-N.tmp, sft, ...).</summary>
    public static long? StepOf(string name) =>
        name.StartsWith(Prefix, StringComparison.Ordinal) && long.TryParse(name.AsSpan(Prefix.Length), System.Globalization.NumberStyles.None,
            System.Globalization.CultureInfo.InvariantCulture, out long n) ? n : null;

    /// <summary>Complete-named checkpoint directories (step-N), newest first.</summary>
    public IReadOnlyList<string> Names() => !Directory.Exists(Root) ? []
        : Directory.EnumerateDirectories(Root).Select(Path.GetFileName).Where(n => StepOf(n!) is not null)
            .OrderByDescending(n => StepOf(n!)).Cast<string>().ToList();

    /// <summary>The name the `latest` pointer holds, or null when it is missing or unreadable.</summary>
    public string? Pointer()
    {
        try
        {
            string p = Path.Combine(Root, PointerName);
            if (!File.Exists(p)) return null;
            string n = File.ReadAllText(p).Trim();
            return StepOf(n) is not null ? n : null;
        }
        catch (IOException) { return null; }
    }

    /// <summary>Candidates in the order resume tries them: the pointer's, then the rest newest first.</summary>
    public IReadOnlyList<string> Candidates()
    {
        var names = Names().ToList();
        if (Pointer() is { } p && names.Remove(p)) names.Insert(0, p);
        return names;
    }

    public string PathOf(string name) => Path.Combine(Root, name);

    /// <summary>Writes checkpoint step-<paramref name="globalIteration"/>: <paramref name="writeFiles"/> fills a
    /// temporary directory; then fsync, manifest, rename, pointer, pruning.</summary>
    public string Write(long globalIteration, Action<string> writeFiles)
    {
        Directory.CreateDirectory(Root);
        string name = NameOf(globalIteration);
        string tmp = PathOf(name + ".tmp"), dir = PathOf(name);
        if (Directory.Exists(tmp)) Directory.Delete(tmp, true);
        Directory.CreateDirectory(tmp);
        writeFiles(tmp);
        var files = new JsonObject();
        foreach (var f in Directory.EnumerateFiles(tmp, "*", SearchOption.AllDirectories).Order(StringComparer.Ordinal))
        {
            string rel = Path.GetRelativePath(tmp, f).Replace('\\', '/');
            var (size, sha) = HashAndSync(f);
            files[rel] = new JsonObject { ["size"] = size, ["sha256"] = sha };
        }
        var manifest = new JsonObject { ["format"] = 1, ["name"] = name, ["files"] = files };
        WriteDurably(Path.Combine(tmp, ManifestName), manifest.ToJsonString(new JsonSerializerOptions { WriteIndented = true }));
        foreach (var d in Directory.EnumerateDirectories(tmp, "*", SearchOption.AllDirectories)) Posix.FsyncDirectory(d);
        Posix.FsyncDirectory(tmp);
        if (Directory.Exists(dir)) Directory.Delete(dir, true);  // a refused one of the same step, being redone
        Directory.Move(tmp, dir);
        Posix.FsyncDirectory(Root);
        string ptrTmp = PathOf(PointerName + ".tmp");
        WriteDurably(ptrTmp, name + "\n");
        File.Move(ptrTmp, PathOf(PointerName), overwrite: true);
        Posix.FsyncDirectory(Root);
        Prune();
        return dir;
    }

    /// <summary>Writes a stage artifact (e.g. checkpoints/sft, a later stage's init) the way a
    /// checkpoint is written: into <paramref name="dir"/>.tmp, every file fsynced, manifest.json
    /// (size and SHA-256 per file) last, then renamed over <paramref name="dir"/>.</summary>
    public static void WriteArtifact(string dir, Action<string> writeFiles)
    {
        string tmp = dir + ".tmp";
        if (Directory.Exists(tmp)) Directory.Delete(tmp, true);
        Directory.CreateDirectory(tmp);
        writeFiles(tmp);
        var files = new JsonObject();
        foreach (var f in Directory.EnumerateFiles(tmp, "*", SearchOption.AllDirectories).Order(StringComparer.Ordinal))
        {
            var (size, sha) = HashAndSync(f);
            files[Path.GetRelativePath(tmp, f).Replace('\\', '/')] = new JsonObject { ["size"] = size, ["sha256"] = sha };
        }
        WriteDurably(Path.Combine(tmp, ManifestName), new JsonObject { ["format"] = 1, ["name"] = Path.GetFileName(dir), ["files"] = files }
            .ToJsonString(new JsonSerializerOptions { WriteIndented = true }));
        Posix.FsyncDirectory(tmp);
        if (Directory.Exists(dir)) Directory.Delete(dir, true);
        Directory.Move(tmp, dir);
        Posix.FsyncDirectory(Path.GetDirectoryName(Path.GetFullPath(dir))!);
    }

    /// <summary>Null when a stage artifact matches its manifest, else the reason.</summary>
    public static string? VerifyArtifact(string dir) => VerifyDirectory(dir, requireState: false);

    /// <summary>Deletes all but the newest <see cref="Keep"/> checkpoints and any leftover temporary ones.</summary>
    public void Prune()
    {
        foreach (var old in Names().Skip(Keep)) Directory.Delete(PathOf(old), true);
        foreach (var t in Directory.EnumerateDirectories(Root, Prefix + "*.tmp")) Directory.Delete(t, true);
    }

    /// <summary>Deletes checkpoints newer than <paramref name="step"/> (refused ones, about to be redone).</summary>
    public void DropNewerThan(long step)
    {
        foreach (var n in Names().Where(n => StepOf(n) > step)) Directory.Delete(PathOf(n), true);
    }

    /// <summary>Null when checkpoint <paramref name="name"/> matches its manifest, else the reason it does not.</summary>
    public string? Verify(string name) => VerifyDirectory(PathOf(name));

    /// <summary>Null when <paramref name="dir"/> matches its manifest.json, else the reason (missing manifest,
    /// missing file, size or SHA-256 mismatch; files the manifest does not list are ignored).</summary>
    public static string? VerifyDirectory(string dir, bool requireState = true)
    {
        string mpath = Path.Combine(dir, ManifestName);
        if (!File.Exists(mpath)) return "manifest.json missing (incomplete checkpoint)";
        JsonObject files;
        try { files = JsonNode.Parse(File.ReadAllText(mpath))!["files"]!.AsObject(); }
        catch (Exception e) when (e is JsonException or NullReferenceException or InvalidOperationException)
        { return "manifest.json unreadable (" + e.Message + ")"; }
        foreach (var (rel, entry) in files)
        {
            string f = Path.Combine(dir, rel);
            if (!File.Exists(f)) return $"{rel} missing";
            long size; string sha;
            try { size = (long)entry!["size"]!; sha = (string)entry["sha256"]!; }
            catch (Exception e) when (e is NullReferenceException or InvalidOperationException or FormatException)
            { return $"manifest.json entry for {rel} malformed"; }
            long actual = new FileInfo(f).Length;
            if (actual != size) return $"{rel} size mismatch ({actual} bytes, manifest says {size}; torn write?)";
            if (!string.Equals(Sha256(f), sha, StringComparison.OrdinalIgnoreCase)) return $"{rel} checksum mismatch";
        }
        if (requireState && !files.ContainsKey("state.json")) return "manifest.json lists no state.json";
        return null;
    }

    private static string Sha256(string path)
    {
        using var s = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.Read, 1 << 20);
        return Convert.ToHexStringLower(SHA256.HashData(s));
    }

    private static (long Size, string Sha) HashAndSync(string path)
    {
        using var s = new FileStream(path, FileMode.Open, FileAccess.ReadWrite, FileShare.Read, 1 << 20);
        string sha = Convert.ToHexStringLower(SHA256.HashData(s));
        s.Flush(flushToDisk: true);
        return (s.Length, sha);
    }

    private static void WriteDurably(string path, string text)
    {
        using var s = new FileStream(path, FileMode.Create, FileAccess.Write, FileShare.None);
        var bytes = System.Text.Encoding.UTF8.GetBytes(text);
        s.Write(bytes);
        s.Flush(flushToDisk: true);
    }
}
