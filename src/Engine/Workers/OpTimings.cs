// Where the time of the master's operations on worker replicas goes: per operation kind, the
// master's wall time of the round trip, the slowest worker's time inside the command, and what
// the worker spent waiting for its input and sending its output. REALN_WORKER_TIMING=1 prints the
// table when the pool is disposed (a diagnostic: what a worker call costs beyond its compute), and
// a last line `realn bench plan` reads: the mean round trip beyond the workers' compute (master wall
// time minus the slowest worker's time less its input wait and output send), the figure behind the
// cluster spec's worker_round_trip_us.
using System.Text;
using System.Text.Json.Nodes;

namespace ReaLNative.Engine.Workers;

internal sealed class OpTimings
{
    private sealed class Row
    {
        public int Count;
        public double Wall, Worker, Input, Output;
    }

    private readonly Dictionary<string, Row> _rows = new(StringComparer.Ordinal);
    private readonly Lock _gate = new();

    /// <summary>Records one operation: the master's wall seconds and the workers' replies (their
    /// `seconds`, `input_seconds`, `output_seconds` fields; the slowest worker counts).</summary>
    public void Add(string op, double wallSeconds, IReadOnlyList<JsonNode?> replies)
    {
        double Max(string field) => replies.Select(r => r?[field]?.GetValue<double>() ?? 0).DefaultIfEmpty(0).Max();
        lock (_gate)
        {
            if (!_rows.TryGetValue(op, out var row)) _rows[op] = row = new Row();
            row.Count++;
            row.Wall += wallSeconds;
            row.Worker += Max("seconds");
            row.Input += Max("input_seconds");
            row.Output += Max("output_seconds");
        }
    }

    /// <summary>Operations recorded so far.</summary>
    public int Count { get { lock (_gate) return _rows.Values.Sum(r => r.Count); } }

    /// <summary>Operations of kind <paramref name="op"/> (the table's label) recorded so far.</summary>
    public int CountOf(string op) { lock (_gate) return _rows.TryGetValue(op, out var r) ? r.Count : 0; }

    /// <summary>Mean master wall time minus mean worker time of every recorded operation, in seconds.</summary>
    public double MeanOverheadSeconds
    {
        get
        {
            lock (_gate)
            {
                int n = _rows.Values.Sum(r => r.Count);
                return n == 0 ? 0 : _rows.Values.Sum(Overhead) / n;
            }
        }
    }

    private static double Overhead(Row r) => r.Wall - (r.Worker - r.Input - r.Output);

    /// <summary>The summary line's start (what `realn bench plan` looks for in a run's log).</summary>
    public const string SummaryPrefix = "worker round trip beyond compute, ms:";

    /// <summary>The round trip beyond compute by operation kind, in ms, read back from <see cref="ToString"/>'s table (as
    /// `realn profile` reads a child run's log): a generation (`generate`), a forward (`logprobs`, `values`: inference
    /// calls and a train step's first round trip) and a backward sent with the optimizer step (`backward_* and optimizer
    /// step`, or a train step whose workers compute the loss: `policy_step`, `value_step`), each the count-weighted mean
    /// of its rows, at least 0; null for a kind the table lacks.</summary>
    public static (double? GenerateMs, double? ForwardMs, double? BackwardMs) RoundTripByKind(string table)
    {
        var sums = new Dictionary<string, (double Ms, int N)>(StringComparer.Ordinal);
        foreach (var raw in table.Split('\n'))
        {
            var f = raw.Trim().Split(' ', StringSplitOptions.RemoveEmptyEntries);
            if (f.Length < 7) continue;
            var inv = System.Globalization.CultureInfo.InvariantCulture;
            if (!int.TryParse(f[^6], System.Globalization.NumberStyles.None, inv, out int count) || count <= 0) continue;
            if (!double.TryParse(f[^1], System.Globalization.NumberStyles.Float, inv, out double ms) || !double.IsFinite(ms)) continue;
            string op = string.Join(' ', f[..^6]);
            string? kind = op switch
            {
                "generate" => "generate",
                "logprobs" or "values" => "forward",
                _ when op.StartsWith("backward_", StringComparison.Ordinal) && op.EndsWith(" and optimizer step", StringComparison.Ordinal) => "backward",
                "policy_step" or "value_step" => "backward",
                _ => null,
            };
            if (kind is null) continue;
            var (s0, n0) = sums.GetValueOrDefault(kind);
            sums[kind] = (s0 + ms * count, n0 + count);
        }
        double? Ms(string kind) => sums.TryGetValue(kind, out var v) ? Math.Max(0, v.Ms / v.N) : null;
        return (Ms("generate"), Ms("forward"), Ms("backward"));
    }

    public override string ToString()
    {
        var sb = new StringBuilder("worker operations (ms per operation): op, count, master wall, worker, worker input wait, worker output send, round trip beyond compute\n");
        lock (_gate)
            foreach (var (op, r) in _rows.OrderBy(kv => kv.Key, StringComparer.Ordinal))
                sb.AppendLine(System.FormattableString.Invariant(
                    $"  {op,-18} {r.Count,6} {1e3 * r.Wall / r.Count,9:F2} {1e3 * r.Worker / r.Count,9:F2} {1e3 * r.Input / r.Count,9:F2} {1e3 * r.Output / r.Count,9:F2} {1e3 * Overhead(r) / r.Count,9:F2}"));
        sb.AppendLine(System.FormattableString.Invariant($"{SummaryPrefix} {1e3 * MeanOverheadSeconds:F3} over {Count} operations"));
        return sb.ToString();
    }
}
