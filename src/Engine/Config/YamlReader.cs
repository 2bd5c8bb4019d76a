// Path-aware reader over a parsed YAML tree. The config is validated by walking the node tree
// rather than by deserialising into classes: every error then names the exact field path
// (`stages[2].ppo.kl_coef`) and the allowed values, and unknown keys are caught, not dropped.
using System.Globalization;
using YamlDotNet.RepresentationModel;

namespace ReaLNative.Engine.Config;

/// <summary>A configuration error: names the field path, what is wrong and what is allowed.</summary>
internal sealed class ConfigException(string path, string message)
    : InputException(path.Length == 0 ? message : $"{path}: {message}")
{
    public string FieldPath { get; } = path;
}

/// <summary>A mapping node plus its path; reads typed fields and remembers which keys it saw.</summary>
internal sealed class MapReader
{
    private readonly YamlMappingNode _node;
    private readonly HashSet<string> _used = new(StringComparer.Ordinal);

    public MapReader(YamlNode? node, string path)
    {
        Path = path;
        _node = node switch
        {
            null => new YamlMappingNode(),
            YamlMappingNode m => m,
            YamlScalarNode { Value: null or "" or "~" or "null" } => new YamlMappingNode(),
            _ => throw new ConfigException(path, "expected a mapping (key: value pairs)"),
        };
        foreach (var key in _node.Children.Keys)
            if (key is not YamlScalarNode { Value: not null })
                throw new ConfigException(path, "keys must be plain strings");
    }

    public string Path { get; }

    public string Sub(string key) => Path.Length == 0 ? key : $"{Path}.{key}";

    public bool Has(string key) => Get(key) is not null;

    public YamlNode? Get(string key)
    {
        _used.Add(key);
        return _node.Children.TryGetValue(new YamlScalarNode(key), out var v) ? v : null;
    }

    public IEnumerable<string> Keys => _node.Children.Keys.Select(k => ((YamlScalarNode)k).Value!);

    /// <summary>Throws on the first key that no Get() asked for.</summary>
    public void RejectUnknown()
    {
        foreach (var key in Keys)
            if (!_used.Contains(key))
                throw new ConfigException(Sub(key),
                    $"unknown key; allowed keys here: {string.Join(", ", _used.Order(StringComparer.Ordinal))}");
    }

    private string? Scalar(string key)
    {
        var node = Get(key);
        if (node is null) return null;
        if (node is not YamlScalarNode s)
            throw new ConfigException(Sub(key), "expected a single value, not a list or mapping");
        return s.Value is null or "~" or "null" ? null : s.Value;
    }

    public string Str(string key, string? dflt)
    {
        var v = Scalar(key) ?? dflt;
        return v ?? throw new ConfigException(Sub(key), "required field is missing");
    }

    public string? OptStr(string key) => Scalar(key);

    public string Enum(string key, string? dflt, params string[] allowed)
    {
        var v = Str(key, dflt);
        if (!allowed.Contains(v, StringComparer.Ordinal))
            throw new ConfigException(Sub(key), $"'{v}' is not allowed; allowed values: {string.Join(" | ", allowed)}");
        return v;
    }

    public long Int(string key, long? dflt, long min = long.MinValue, long max = long.MaxValue)
    {
        var s = Scalar(key);
        long v;
        if (s is null)
            v = dflt ?? throw new ConfigException(Sub(key), "required field is missing");
        else if (!long.TryParse(s, NumberStyles.AllowLeadingSign, CultureInfo.InvariantCulture, out v))
            throw new ConfigException(Sub(key), $"'{s}' is not an integer; allowed values: integers in {Range(min, max)}");
        if (v < min || v > max)
            throw new ConfigException(Sub(key), $"{v} is out of range; allowed values: integers in {Range(min, max)}");
        return v;
    }

    public double Real(string key, double? dflt, double min = double.NegativeInfinity, double max = double.PositiveInfinity,
                       bool minExclusive = false, bool maxExclusive = false)
    {
        var s = Scalar(key);
        double v;
        if (s is null)
            v = dflt ?? throw new ConfigException(Sub(key), "required field is missing");
        else if (!double.TryParse(s, NumberStyles.Float, CultureInfo.InvariantCulture, out v) || !double.IsFinite(v))
            throw new ConfigException(Sub(key), $"'{s}' is not a number; allowed values: numbers in {RealRange(min, max, minExclusive, maxExclusive)}");
        bool bad = (minExclusive ? v <= min : v < min) || (maxExclusive ? v >= max : v > max);
        if (bad)
            throw new ConfigException(Sub(key), $"{v.ToString(CultureInfo.InvariantCulture)} is out of range; allowed values: numbers in {RealRange(min, max, minExclusive, maxExclusive)}");
        return v;
    }

    public bool Bool(string key, bool dflt)
    {
        var s = Scalar(key);
        if (s is null) return dflt;
        return s switch
        {
            "true" or "True" or "yes" => true,
            "false" or "False" or "no" => false,
            _ => throw new ConfigException(Sub(key), $"'{s}' is not allowed; allowed values: true | false"),
        };
    }

    public double[] RealList(string key, double[] dflt, int count, double min, double max, bool maxExclusive)
    {
        var node = Get(key);
        if (node is null) return dflt;
        if (node is not YamlSequenceNode seq || seq.Children.Count != count)
            throw new ConfigException(Sub(key), $"expected a list of {count} numbers, e.g. [{string.Join(", ", dflt.Select(d => d.ToString(CultureInfo.InvariantCulture)))}]");
        var r = new double[count];
        for (int i = 0; i < count; i++)
        {
            var p = $"{Sub(key)}[{i}]";
            if (seq.Children[i] is not YamlScalarNode { Value: { } s } ||
                !double.TryParse(s, NumberStyles.Float, CultureInfo.InvariantCulture, out r[i]))
                throw new ConfigException(p, "expected a number");
            if (r[i] < min || (maxExclusive ? r[i] >= max : r[i] > max))
                throw new ConfigException(p, $"out of range; allowed values: numbers in {RealRange(min, max, false, maxExclusive)}");
        }
        return r;
    }

    private static string Range(long min, long max) =>
        $"[{(min == long.MinValue ? "-inf" : min.ToString(CultureInfo.InvariantCulture))}, {(max == long.MaxValue ? "inf" : max.ToString(CultureInfo.InvariantCulture))}]";

    private static string RealRange(double min, double max, bool minEx, bool maxEx) =>
        $"{(minEx ? "(" : "[")}{Fmt(min)}, {Fmt(max)}{(maxEx ? ")" : "]")}";

    private static string Fmt(double d) => double.IsInfinity(d) ? (d > 0 ? "inf" : "-inf") : d.ToString(CultureInfo.InvariantCulture);

    /// <summary>Deep merge: keys of <paramref name="overlay"/> replace or (for mappings) merge into <paramref name="baseNode"/>.</summary>
    public static YamlMappingNode Merge(YamlMappingNode baseNode, YamlMappingNode overlay)
    {
        var r = new YamlMappingNode();
        foreach (var (k, v) in baseNode.Children) r.Children[k] = v;
        foreach (var (k, v) in overlay.Children)
            r.Children[k] = r.Children.TryGetValue(k, out var old) && old is YamlMappingNode om && v is YamlMappingNode vm
                ? Merge(om, vm) : v;
        return r;
    }
}
