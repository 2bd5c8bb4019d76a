// The benchmarks' JSON reports without reflection: `realn` is also published NativeAOT, where
// JsonSerializer's reflection path is off and an object graph of Dictionary<string, object> cannot be
// serialized. A report is built of a few kinds of values, so they are written here one by one, as the
// reflection serializer wrote them (the same writer for numbers and strings).
using System.Collections;
using System.Globalization;
using System.Text.Json;
using System.Text.Json.Nodes;

namespace ReaLNative.Diagnostics;

public static class JsonReport
{
    private static readonly JsonSerializerOptions Indented = new() { WriteIndented = true };

    /// <summary>The value as JSON text; indented unless <paramref name="indented"/> is false.</summary>
    public static string Write(object? value, bool indented = true)
    {
        var node = ToNode(value);
        return node is null ? "null" : node.ToJsonString(indented ? Indented : null);
    }

    /// <summary>A report value as a JSON node: null, strings, booleans, numbers, enums (as numbers, as the serializer wrote them),
    /// <see cref="JsonNode"/>, <see cref="JsonElement"/>, dictionaries with string keys (objects, in their
    /// order) and other sequences (arrays). Anything else is a programming error and is refused by type.</summary>
    public static JsonNode? ToNode(object? value) => value switch
    {
        null => null,
        JsonNode n => n.DeepClone(),
        JsonElement e => JsonNode.Parse(e.GetRawText()),
        string s => JsonValue.Create(s),
        bool b => JsonValue.Create(b),
        int i => JsonValue.Create(i),
        long l => JsonValue.Create(l),
        uint u => JsonValue.Create(u),
        ulong ul => JsonValue.Create(ul),
        short sh => JsonValue.Create(sh),
        byte by => JsonValue.Create(by),
        double d => Finite(d),
        float f => Finite(f),
        decimal m => JsonValue.Create(m),
        Enum en => JsonValue.Create(Convert.ToInt64(en, CultureInfo.InvariantCulture)),
        IDictionary dict => Object(dict),
        IEnumerable seq => Array(seq),
        _ => throw new NotSupportedException($"JsonReport: a value of type {value.GetType().FullName} is not a report value"),
    };

    // The reflection serializer refuses NaN and infinities too; say which value it was.
    private static JsonValue Finite(double d) => double.IsFinite(d) ? JsonValue.Create(d)
        : throw new ArgumentException($"JsonReport: {d.ToString(CultureInfo.InvariantCulture)} is not a JSON number");

    private static JsonValue Finite(float f) => float.IsFinite(f) ? JsonValue.Create(f)
        : throw new ArgumentException($"JsonReport: {f.ToString(CultureInfo.InvariantCulture)} is not a JSON number");

    private static JsonObject Object(IDictionary dict)
    {
        var o = new JsonObject();
        foreach (DictionaryEntry kv in dict)
            o[kv.Key as string ?? throw new NotSupportedException($"JsonReport: a dictionary key of type {kv.Key.GetType().FullName}")] = ToNode(kv.Value);
        return o;
    }

    private static JsonArray Array(IEnumerable seq)
    {
        var a = new JsonArray();
        foreach (object? x in seq) a.Add(ToNode(x));
        return a;
    }
}
