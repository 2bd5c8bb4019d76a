// One base type for every bad user input (experiment config, cluster spec, plan, checkpoint,
// tokenizer, model config.json): it carries where the problem is (file, line/column, field) so the
// CLI prints one line and exits 2, and embedding hosts can catch one type. Lives in the Planner
// assembly because every other assembly references it and it references no native code.
namespace ReaLNative;

/// <summary>Bad input: <see cref="Exception.Message"/> is one line naming the file (when known), the
/// line/column or field, what is wrong and what is allowed.</summary>
public class InputException : Exception
{
    /// <param name="detail">What is wrong (may start with a field path, e.g. <c>batch.size: ...</c>).</param>
    /// <param name="file">The file the input came from, if known.</param>
    /// <param name="line">1-based line in <paramref name="file"/>, 0 if unknown.</param>
    /// <param name="column">1-based column, 0 if unknown.</param>
    public InputException(string detail, string? file = null, int line = 0, int column = 0, Exception? inner = null)
        : base(Compose(detail, file, line, column), inner)
    {
        Detail = detail;
        File = file;
        Line = line;
        Column = column;
    }

    /// <summary>The message without the file/line prefix.</summary>
    public string Detail { get; }
    /// <summary>The input file, if known.</summary>
    public string? File { get; }
    /// <summary>1-based line, 0 if unknown.</summary>
    public int Line { get; }
    /// <summary>1-based column, 0 if unknown.</summary>
    public int Column { get; }

    private static string Compose(string detail, string? file, int line, int column)
    {
        string where = file is null ? "" : line > 0 ? (column > 0 ? $"{file}:{line}:{column}: " : $"{file}:{line}: ") : $"{file}: ";
        // One line: a multi-line detail (a quoted parser message) is folded.
        return where + detail.ReplaceLineEndings(" ");
    }
}
