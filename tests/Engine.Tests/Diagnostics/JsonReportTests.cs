// JsonReport writes the benchmarks' reports without reflection (NativeAOT): a report of every kind of value it takes
// comes out as the reflection serializer wrote it, and a value it does not know is refused by type, not written wrong.
using System.Text.Json;
using System.Text.Json.Nodes;
using System.Text.Json.Serialization.Metadata;
using ReaLNative.Diagnostics;
using Xunit;

namespace ReaLNative.Engine.Tests.Diagnostics;

public sealed class JsonReportTests
{
    private static readonly JsonSerializerOptions Reflection = new() { WriteIndented = true, TypeInfoResolver = new DefaultJsonTypeInfoResolver() };

    [Fact]
    public void AReportIsWrittenAsTheReflectionSerializerWroteIt()
    {
        using var doc = JsonDocument.Parse("""{"a": [1, 2.5, "x"], "b": null}""");
        var report = new Dictionary<string, object>
        {
            ["name"] = "bench \"quoted\" +/ ü", ["ok"] = true, ["count"] = 3, ["bytes"] = 1L << 40, ["seconds"] = 0.1 + 0.2,
            ["ratio"] = 1.5f, ["small"] = 1e-7, ["kind"] = DayOfWeek.Friday, ["rounded"] = Math.Round(2.0 / 3, 3),
            ["ticks"] = new long[] { 5, -7, long.MaxValue }, ["empty"] = Array.Empty<double>(),
            ["gbps"] = new Dictionary<string, double> { ["1 MiB"] = 10.25, ["64 MiB"] = 21.5 },
            ["shapes"] = new List<Dictionary<string, object>> { new() { ["m"] = 64, ["n"] = 128, ["label"] = "q" }, new() { ["m"] = 1 } },
            ["nested"] = new Dictionary<string, object?> { ["none"] = null, ["list"] = new List<object?> { 1, "two", null, 3.5 } },
            ["element"] = doc.RootElement.Clone(),
        };
        Assert.Equal(JsonSerializer.Serialize(report, Reflection), JsonReport.Write(report));
        Assert.Equal(JsonSerializer.Serialize(report, new JsonSerializerOptions { TypeInfoResolver = new DefaultJsonTypeInfoResolver() }),
                     JsonReport.Write(report, indented: false));
        // a JsonNode in a report is copied, not moved out of its parent
        var parent = new JsonObject { ["x"] = new JsonArray(1, 2) };
        Assert.Equal("""{"y":[1,2]}""", JsonReport.Write(new Dictionary<string, object> { ["y"] = parent["x"]! }, indented: false));
        Assert.NotNull(parent["x"]);
    }

    [Fact]
    public void AValueItDoesNotKnowOrANonNumberIsRefusedByName()
    {
        var e = Assert.Throws<NotSupportedException>(() => JsonReport.Write(new Dictionary<string, object> { ["t"] = (1, 2) }));
        Assert.Contains("System.ValueTuple", e.Message);
        Assert.Contains("int",
            Assert.Throws<NotSupportedException>(() => JsonReport.Write(new Dictionary<int, double> { [1] = 2 })).Message, StringComparison.OrdinalIgnoreCase);
        Assert.Contains("NaN", Assert.Throws<ArgumentException>(() => JsonReport.Write(new[] { 1.0, double.NaN })).Message);
    }
}
