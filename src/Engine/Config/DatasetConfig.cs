// The `dataset:` section of a stage (docs/experiment-config.md): which files a stage trains and
// evaluates on, their format, which field of a record plays which part, shuffling and what a bad
// record does. A stage without one draws from the synthetic `task:`.
namespace ReaLNative.Engine.Config;

/// <summary>Which column of a record holds each part of an example: prompt (every algorithm),
/// response (sft's target), answer (the reference of rule-based rewards and of the held-out
/// score), metadata (any JSON, handed to external and .NET reward functions), and, only when the
/// `fields` block names them, chosen / rejected (an rm or dpo stage's offline preference pair).</summary>
internal sealed record DatasetFields(IReadOnlyDictionary<string, string> Mapped)
{
    public const string Prompt = "prompt", Response = "response", Answer = "answer", Metadata = "metadata", Chosen = "chosen", Rejected = "rejected";
    public static readonly string[] Roles = [Prompt, Response, Answer, Metadata];
    /// <summary>The roles read only when mapped explicitly (a file's "chosen" key is otherwise not read).</summary>
    public static readonly string[] PairRoles = [Chosen, Rejected];
    public static DatasetFields Default { get; } = new(Roles.ToDictionary(r => r, r => r));
    public string Column(string role) => Mapped[role];
    /// <summary>The records are preference pairs: rm / dpo train on them instead of ranking their own samples.</summary>
    public bool OfflinePairs => Mapped.ContainsKey(Chosen);
}

/// <param name="Train">Training file (absolute path).</param>
/// <param name="HeldOut">Held-out file for the evaluation (absolute path; null for a stage without evaluation).</param>
/// <param name="Format">jsonl | parquet (from the extension unless given).</param>
/// <param name="ShuffleBuffer">Records held for shuffling (1: file order).</param>
/// <param name="Seed">Seed of the shuffle (default: the experiment's seed).</param>
/// <param name="SkipBadRecords">on_bad_record: skip (true, counted in metrics) | fail.</param>
internal sealed record DatasetConfig(string Train, string? HeldOut, string Format, string? HeldOutFormat, DatasetFields Fields,
                                    int ShuffleBuffer, long? Seed, bool SkipBadRecords)
{
    /// <summary>`chat`: prompts are a user turn and responses the assistant's, rendered through the
    /// tokenizer's chat template (a Hugging Face tokenizer with a chat_template; default false).</summary>
    public bool Chat { get; init; }

    public const string Skip = "skip", Fail = "fail";

    public static DatasetConfig? Parse(YamlDotNet.RepresentationModel.YamlNode? node, string path, string baseDirectory, string algorithm)
    {
        if (node is null or YamlDotNet.RepresentationModel.YamlScalarNode { Value: null or "" or "~" or "null" }) return null;
        var r = new MapReader(node, path);
        string train = File(r, "train", baseDirectory, required: true)!;
        string? heldOut = File(r, "held_out", baseDirectory, required: false);
        string? format = r.OptStr("format");
        if (format is not null) r.Enum("format", null, DatasetFormats.All);
        string trainFormat = format ?? DatasetFormats.FormatOf(train)
            ?? throw new ConfigException(r.Sub("format"), $"cannot tell the format of '{train}' from its extension; allowed values: {string.Join(" | ", DatasetFormats.All)}");
        string? heldFormat = heldOut is null ? null : format ?? DatasetFormats.FormatOf(heldOut)
            ?? throw new ConfigException(r.Sub("format"), $"cannot tell the format of '{heldOut}' from its extension; allowed values: {string.Join(" | ", DatasetFormats.All)}");
        var fr = new MapReader(r.Get("fields"), r.Sub("fields"));
        var mapped = new Dictionary<string, string>();
        foreach (var role in DatasetFields.Roles)
        {
            string col = fr.Str(role, role);
            if (col.Length == 0) throw new ConfigException(fr.Sub(role), "empty; give the record's field (JSONL key / Parquet column) that holds the " + role);
            mapped[role] = col;
        }
        foreach (var role in DatasetFields.PairRoles)
        {
            if (!fr.Has(role)) continue;
            string col = fr.Str(role, role);
            if (col.Length == 0) throw new ConfigException(fr.Sub(role), "empty; give the record's field (JSONL key / Parquet column) that holds the " + role + " response");
            if (algorithm is not (AlgorithmNames.Rm or AlgorithmNames.Dpo))
                throw new ConfigException(fr.Sub(role), $"preference pairs are for rm and dpo stages, not {algorithm}");
            mapped[role] = col;
        }
        if (mapped.ContainsKey(DatasetFields.Chosen) != mapped.ContainsKey(DatasetFields.Rejected))
            throw new ConfigException(fr.Sub(mapped.ContainsKey(DatasetFields.Chosen) ? DatasetFields.Rejected : DatasetFields.Chosen),
                "missing: offline preference pairs need both fields.chosen and fields.rejected");
        fr.RejectUnknown();
        int buffer = (int)r.Int("shuffle_buffer", 10_000, 1, 10_000_000);
        long? seed = r.Has("seed") ? r.Int("seed", null, 0, long.MaxValue) : null;
        bool skip = r.Enum("on_bad_record", Fail, Skip, Fail) == Skip;
        bool chat = r.Bool("chat", false);
        r.RejectUnknown();
        if (heldOut is null && algorithm != AlgorithmNames.Rm)
            throw new ConfigException(r.Sub("held_out"), $"required for a {algorithm} stage with a dataset: its held-out evaluation reads it (a file that does not overlap `train`)");
        return new DatasetConfig(train, heldOut, trainFormat, heldFormat, new DatasetFields(mapped), buffer, seed, skip) { Chat = chat };
    }

    private static string? File(MapReader r, string key, string baseDirectory, bool required)
    {
        string? v = required ? r.Str(key, null) : r.OptStr(key);
        if (v is null) return null;
        string full = Path.GetFullPath(Path.Combine(baseDirectory, v));
        if (!System.IO.File.Exists(full))
            throw new ConfigException(r.Sub(key), $"file '{v}' not found (paths are relative to the YAML file)");
        return full;
    }

    /// <summary>The fields a record must have: in the training file of an <paramref name="algorithm"/>
    /// stage with reward <paramref name="reward"/>, or in its held-out file (<paramref name="heldOut"/>);
    /// <paramref name="offlinePairs"/>: the training file holds chosen / rejected pairs.</summary>
    public static string[] RequiredFields(string algorithm, RewardConfig reward, bool heldOut, bool offlinePairs = false)
    {
        if (offlinePairs && !heldOut) return [DatasetFields.Prompt, DatasetFields.Chosen, DatasetFields.Rejected];
        var req = new List<string> { DatasetFields.Prompt };
        bool answer = heldOut
            ? !reward.RuleBased || reward.NeedsAnswer                                  // the held-out score: exact match or the reward
            : algorithm is AlgorithmNames.Rm or AlgorithmNames.Dpo                     // the graded checker ranks the samples
              || AlgorithmNames.Rewarded(algorithm) && reward.RuleBased && reward.NeedsAnswer;
        if (!heldOut && algorithm == AlgorithmNames.Sft) req.Add(DatasetFields.Response);
        if (answer) req.Add(DatasetFields.Answer);
        return req.ToArray();
    }
}

/// <summary>The file formats a dataset may have (`dataset.format`; Data/DatasetReader.cs reads them).</summary>
internal static class DatasetFormats
{
    public const string Jsonl = "jsonl", Parquet = "parquet";
    public static readonly string[] All = [Jsonl, Parquet];

    /// <summary>The format of <paramref name="path"/> by its extension (.jsonl / .json: jsonl, .parquet: parquet), or null.</summary>
    public static string? FormatOf(string path) => Path.GetExtension(path).ToLowerInvariant() switch
    {
        ".jsonl" or ".json" or ".ndjson" => Jsonl,
        ".parquet" => Parquet,
        _ => null,
    };
}
