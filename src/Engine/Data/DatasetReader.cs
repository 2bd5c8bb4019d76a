// Reads a dataset file record by record (JSONL line by line, Parquet row group by row group), so a
// file larger than memory streams through. Each record becomes a TaskExample through the stage's
// field mapping, or a bad record that names its file and line (JSONL) or row (Parquet) and why;
// ExampleStream decides whether a bad record is skipped or fatal.
using System.Globalization;
using System.Text.Json;
using System.Text.Json.Nodes;
using Parquet;
using Parquet.Schema;
using ReaLNative.Engine.Config;
using ReaLNative.Engine.Tasks;

namespace ReaLNative.Engine.Data;

/// <summary>One record of a dataset file: the example, or why it is unusable. <see cref="Where"/> is
/// "FILE:LINE" (JSONL, 1-based line) or "FILE: row N" (Parquet, 1-based row).</summary>
internal readonly record struct DatasetRecord(string Where, string File, long Line, TaskExample? Example, string? Error);

internal static class DatasetReader
{
    /// <summary>Every record of the file, in file order, read lazily.</summary>
    public static IEnumerable<DatasetRecord> Read(string path, string format, DatasetFields fields, IReadOnlyList<string> required) =>
        format switch
        {
            DatasetFormats.Jsonl => ReadJsonl(path, fields, required),
            DatasetFormats.Parquet => ReadParquet(path, fields, required),
            _ => throw new ArgumentOutOfRangeException(nameof(format), format, null),
        };

    private static IEnumerable<DatasetRecord> ReadJsonl(string path, DatasetFields fields, IReadOnlyList<string> required)
    {
        using var reader = Open(path);
        long line = 0;
        for (string? text; (text = reader.ReadLine()) is not null;)
        {
            line++;
            if (string.IsNullOrWhiteSpace(text)) continue;
            string where = $"{path}:{line}";
            JsonNode? node;
            string? parseError = null;
            try { node = JsonNode.Parse(text); }
            catch (JsonException e) { node = null; parseError = $"not valid JSON ({FirstSentence(e.Message)})"; }
            if (parseError is not null) { yield return new DatasetRecord(where, path, line, null, parseError); continue; }
            if (node is not JsonObject obj) { yield return new DatasetRecord(where, path, line, null, "expected a JSON object per line"); continue; }
            var values = new Dictionary<string, string?>();
            string? error = null;
            foreach (var (role, column) in fields.Mapped)
            {
                if (!obj.TryGetPropertyValue(column, out var v) || v is null) { values[role] = null; continue; }
                if (role == DatasetFields.Metadata) { values[role] = v.ToJsonString(); continue; }
                if (v is JsonValue jv && jv.GetValueKind() == JsonValueKind.String) values[role] = jv.GetValue<string>();
                else if (v is JsonValue nv && nv.GetValueKind() == JsonValueKind.Number && role == DatasetFields.Answer) values[role] = nv.ToJsonString();
                else { error = $"field '{column}' ({role}) is a JSON {v.GetValueKind().ToString().ToLowerInvariant()}, expected a string{(role == DatasetFields.Answer ? " or a number" : "")}"; break; }
            }
            yield return Build(where, path, line, values, fields, required, error);
        }
    }

    private static StreamReader Open(string path)
    {
        try { return new StreamReader(path, System.Text.Encoding.UTF8, detectEncodingFromByteOrderMarks: true, new FileStreamOptions { BufferSize = 1 << 16 }); }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        { throw new InputException($"cannot read dataset: {e.Message}", path); }
    }

    private static IEnumerable<DatasetRecord> ReadParquet(string path, DatasetFields fields, IReadOnlyList<string> required)
    {
        FileStream fs;
        try { fs = File.OpenRead(path); }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException) { throw new InputException($"cannot read dataset: {e.Message}", path); }
        using (fs)
        {
            ParquetReader reader;
            try { reader = Sync(ParquetReader.CreateAsync(fs, null, false)); }
            catch (Exception e) when (e is not OutOfMemoryException)
            { throw new InputException($"not a readable Parquet file ({FirstSentence(e.Message)})", path); }
            try
            {
                var dataFields = reader.Schema.GetDataFields();
                var columns = new Dictionary<string, DataField>();
                foreach (var (role, column) in fields.Mapped)
                {
                    var f = dataFields.FirstOrDefault(d => d.Name == column);
                    if (f is null)
                    {
                        if (required.Contains(role))
                            throw new InputException($"column '{column}' ({role}) is missing; the file has: {string.Join(", ", dataFields.Select(d => d.Name))} (set dataset.fields.{role})", path);
                        continue;
                    }
                    if (f.IsArray || f.MaxRepetitionLevel > 0)
                        throw new InputException($"column '{column}' ({role}) is a list, expected a string{(role == DatasetFields.Answer ? " or a number" : "")} column", path);
                    columns[role] = f;
                }
                long row = 0;
                for (int g = 0; g < reader.RowGroupCount; g++)
                {
                    int count;
                    var read = new Dictionary<string, string?[]>();
                    try
                    {
                        using var rg = reader.OpenRowGroupReader(g);
                        count = checked((int)rg.RowCount);
                        foreach (var (role, f) in columns) read[role] = ReadColumn(rg, f, count, role, path);
                    }
                    catch (InputException) { throw; }
                    catch (Exception e) when (e is not OutOfMemoryException)
                    { throw new InputException($"row group {g} (rows {row + 1}..) is unreadable ({FirstSentence(e.Message)})", path); }
                    for (int i = 0; i < count; i++)
                    {
                        row++;
                        var values = new Dictionary<string, string?>();
                        foreach (var role in fields.Mapped.Keys) values[role] = read.TryGetValue(role, out var c) ? c[i] : null;
                        yield return Build($"{path}: row {row}", path, row, values, fields, required, null);
                    }
                }
            }
            finally { Sync(reader.DisposeAsync()); }
        }
    }

    private static string?[] ReadColumn(ParquetRowGroupReader rg, DataField f, int count, string role, string path)
    {
        var t = Nullable.GetUnderlyingType(f.ClrType) ?? f.ClrType;
        if (t == typeof(string) || t == typeof(ReadOnlyMemory<char>))
        {
            var buf = new string?[count];
            Sync(rg.ReadAsync(f, buf.AsMemory(), null, default));
            return buf;
        }
        if (role == DatasetFields.Answer && (t == typeof(int) || t == typeof(long) || t == typeof(double) || t == typeof(float)))
        {
            if (t == typeof(int)) return Numbers<int>(rg, f, count, v => v.ToString(CultureInfo.InvariantCulture));
            if (t == typeof(long)) return Numbers<long>(rg, f, count, v => v.ToString(CultureInfo.InvariantCulture));
            if (t == typeof(double)) return Numbers<double>(rg, f, count, v => v.ToString("R", CultureInfo.InvariantCulture));
            return Numbers<float>(rg, f, count, v => v.ToString("R", CultureInfo.InvariantCulture));
        }
        throw new InputException($"column '{f.Name}' ({role}) holds {t.Name}, expected strings{(role == DatasetFields.Answer ? " or numbers" : "")}", path);
    }

    private static string?[] Numbers<T>(ParquetRowGroupReader rg, DataField f, int count, Func<T, string> format) where T : struct
    {
        var r = new string?[count];
        if (f.IsNullable)
        {
            var buf = new T?[count];
            Sync(rg.ReadAsync(f, buf.AsMemory(), null, default));
            for (int i = 0; i < count; i++) r[i] = buf[i] is { } v ? format(v) : null;
        }
        else
        {
            var buf = new T[count];
            Sync(rg.ReadAsync(f, buf.AsMemory(), null, default));
            for (int i = 0; i < count; i++) r[i] = format(buf[i]);
        }
        return r;
    }

    private static DatasetRecord Build(string where, string path, long line, Dictionary<string, string?> values, DatasetFields fields,
                                       IReadOnlyList<string> required, string? error)
    {
        if (error is null)
            foreach (var role in required)
                if (values.GetValueOrDefault(role) is null) { error = $"field '{fields.Column(role)}' ({role}) is missing or null"; break; }
        if (error is not null) return new DatasetRecord(where, path, line, null, error);
        string prompt = values[DatasetFields.Prompt]!;
        string? response = values.GetValueOrDefault(DatasetFields.Response), answer = values.GetValueOrDefault(DatasetFields.Answer);
        var ex = new TaskExample(prompt, answer ?? response ?? "")
        {
            Response = response, Metadata = values.GetValueOrDefault(DatasetFields.Metadata), Source = where,
            Chosen = values.GetValueOrDefault(DatasetFields.Chosen), Rejected = values.GetValueOrDefault(DatasetFields.Rejected),
        };
        return new DatasetRecord(where, path, line, ex, null);
    }

    private static T Sync<T>(Task<T> t) => t.GetAwaiter().GetResult();
    private static void Sync(Task t) => t.GetAwaiter().GetResult();
    private static T Sync<T>(ValueTask<T> t) => t.AsTask().GetAwaiter().GetResult();
    private static void Sync(ValueTask t) => t.AsTask().GetAwaiter().GetResult();

    private static string FirstSentence(string message)
    {
        message = message.ReplaceLineEndings(" ");
        return message.Length > 200 ? message[..200] + "..." : message;
    }
}
