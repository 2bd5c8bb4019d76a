// Reading an input file the user named (config, plan, cluster spec, profile, model config.json,
// tokenizer): a missing path, a directory where a file belongs and an unreadable file each get one
// line naming the path and what it was meant to be, instead of an IOException.
namespace ReaLNative;

/// <summary>Reads user-named input files; failures are <see cref="InputException"/>s.</summary>
public static class InputFile
{
    /// <summary>The text of <paramref name="path"/>; <paramref name="what"/> says what it should be
    /// ("experiment config", "plan"), <paramref name="field"/> (optional) where it was named.</summary>
    public static string ReadAllText(string path, string what, string? field = null)
    {
        Check(path, what, field);
        try { return File.ReadAllText(path); }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new InputException($"{Prefix(field)}{what} '{path}' cannot be read: {e.Message}");
        }
    }

    /// <summary>Throws unless <paramref name="path"/> is an existing file.</summary>
    public static void Check(string path, string what, string? field = null)
    {
        if (Directory.Exists(path)) throw new InputException($"{Prefix(field)}{what} '{path}' is a directory, not a file");
        if (!File.Exists(path)) throw new InputException($"{Prefix(field)}{what} '{path}' does not exist");
    }

    private static string Prefix(string? field) => field is null ? "" : field + ": ";
}
