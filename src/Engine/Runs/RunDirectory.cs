// The run directory's rules, so no run loses data silently: a run starts only in an empty (or new)
// directory unless it resumes or is told to overwrite, and overwriting deletes only what a run
// writes (never foreign files); writability is probed before any training; resume's cut-back of
// metrics.jsonl (to the resumed checkpoint's step, a torn last line dropped) is computed up front
// and applied only once the resume point is verified and the stage set up.
using System.Globalization;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using ReaLNative.Engine.Checkpoints;

namespace ReaLNative.Engine.Runs
{
    /// <summary>How a run treats an output directory that already holds something.</summary>
    internal enum RunStart
    {
        /// <summary>The directory must be empty or absent.</summary>
        Fresh,
        /// <summary>Continue from its last verified checkpoint (or start when there is none).</summary>
        Resume,
        /// <summary>Delete what an earlier run wrote there (only that), then start.</summary>
        Overwrite,
    }

    internal static class RunDirectory
    {
        public const string Metrics = "metrics.jsonl";
        public const string Checkpoints = "checkpoints";
        /// <summary>Files a run (or <see cref="TrainingJob"/>) writes at the top of its directory.</summary>
        public static readonly string[] TopFiles = [Metrics, "summary.json", "curves.png", "plan.json"];
        private const string ProbeName = ".realn-write-probe";

        /// <summary>Whether <paramref name="name"/> inside checkpoints/ is something a run writes:
        /// step-N, step-N.tmp, the latest pointer (and its .tmp), stage artifacts (sft, rm and their .tmp), the probe.</summary>
        public static bool IsRunEntryInCheckpoints(string name)
        {
            string n = name.EndsWith(".tmp", StringComparison.Ordinal) ? name[..^4] : name;
            return CheckpointStore.StepOf(n) is not null || n is CheckpointStore.PointerName or "sft" or "rm" || name.StartsWith(ProbeName, StringComparison.Ordinal);
        }

        /// <summary>What the directory holds, in words ("3 checkpoints and metrics.jsonl (42 lines)"), or null when it is
        /// absent or empty (an empty checkpoints/ counts as empty).</summary>
        public static string? Describe(string dir)
        {
            if (!Directory.Exists(dir)) return null;
            var parts = new List<string>();
            string ck = Path.Combine(dir, Checkpoints);
            int foreign = 0;
            var foreignNames = new List<string>();
            if (Directory.Exists(ck))
            {
                var names = Directory.EnumerateFileSystemEntries(ck).Select(p => Path.GetFileName(p)).ToList();
                int steps = names.Count(n => CheckpointStore.StepOf(n) is not null);
                var artifacts = names.Where(n => n is "sft" or "rm").ToList();
                if (steps > 0) parts.Add(steps == 1 ? "1 checkpoint" : $"{steps} checkpoints");
                if (artifacts.Count > 0) parts.Add($"stage artifact{(artifacts.Count > 1 ? "s" : "")} {string.Join(", ", artifacts)}");
                if (steps == 0 && artifacts.Count == 0 && names.Count > 0) parts.Add($"{Checkpoints}/ ({names.Count} entr{(names.Count == 1 ? "y" : "ies")})");
            }
            foreach (var f in TopFiles)
            {
                string p = Path.Combine(dir, f);
                if (!File.Exists(p)) continue;
                parts.Add(f == Metrics ? $"{Metrics} ({CountLines(p)} lines)" : f);
            }
            foreach (var e in Directory.EnumerateFileSystemEntries(dir).Select(p => Path.GetFileName(p)).Order(StringComparer.Ordinal))
                if (e != Checkpoints && !TopFiles.Contains(e)) { foreign++; if (foreignNames.Count < 3) foreignNames.Add(e); }
            if (foreign > 0) parts.Add($"{foreign} other entr{(foreign == 1 ? "y" : "ies")} ({string.Join(", ", foreignNames)}{(foreign > 3 ? ", ..." : "")})");
            // An empty checkpoints/ (a start refused by the probe, or a check before this one) holds nothing.
            if (parts.Count == 0) return null;
            return parts.Count == 1 ? parts[0] : string.Join(", ", parts.Take(parts.Count - 1)) + " and " + parts[^1];
        }

        private static long CountLines(string path)
        {
            try
            {
                long n = 0;
                using var s = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.ReadWrite);
                var buf = new byte[1 << 16];
                int r;
                while ((r = s.Read(buf)) > 0) n += buf.AsSpan(0, r).Count((byte)'\n');
                return n;
            }
            catch (IOException) { return 0; }
        }

        /// <summary>Checks <paramref name="dir"/> for a run started as <paramref name="start"/> and creates it:
        /// refuses a file, a directory that cannot be created, and (for a fresh start) a non-empty
        /// directory, naming what it holds; then probes that the directory and its checkpoints/ take
        /// a durable file (create, fsync, delete) and that an existing metrics.jsonl opens for writing.
        /// Deletes nothing. <paramref name="resumeOption"/> / <paramref name="overwriteOption"/> name the
        /// caller's switches in the refusal.</summary>
        public static void Check(string dir, RunStart start, string resumeOption, string overwriteOption)
        {
            if (File.Exists(dir)) throw new RunDirectoryException($"{dir} is a file; the run directory must be a directory (new or empty)");
            if (start == RunStart.Fresh && Describe(dir) is { } what)
                throw new RunDirectoryException($"{dir} already holds {what}; pass {resumeOption} to continue or {overwriteOption} to start over (it deletes only what a run wrote)");
            try { Directory.CreateDirectory(dir); }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException)
            { throw new RunDirectoryException($"cannot create the run directory {dir}: {e.Message}"); }
            string ck = Path.Combine(dir, Checkpoints);
            if (File.Exists(ck)) throw new RunDirectoryException($"{ck} is a file; a run keeps its checkpoints in that directory");
            try { Directory.CreateDirectory(ck); }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException)
            { throw new RunDirectoryException($"cannot create {ck}: {e.Message}"); }
            Probe(dir);
            Probe(ck);
            string metrics = Path.Combine(dir, Metrics);
            if (File.Exists(metrics))
            {
                try { using var _ = new FileStream(metrics, FileMode.Open, FileAccess.Write, FileShare.ReadWrite); }
                catch (Exception e) when (e is IOException or UnauthorizedAccessException)
                { throw new RunDirectoryException($"{metrics} cannot be written ({e.Message}); nothing was changed"); }
            }
        }

        /// <summary>Creates, fsyncs and deletes a probe file in <paramref name="dir"/>: a directory a
        /// checkpoint could not be written to fails here, before any training.</summary>
        public static void Probe(string dir)
        {
            string p = Path.Combine(dir, $"{ProbeName}-{Environment.ProcessId}");
            try
            {
                using (var s = new FileStream(p, FileMode.Create, FileAccess.Write, FileShare.None))
                {
                    s.Write("probe\n"u8);
                    s.Flush(flushToDisk: true);
                }
                File.Delete(p);
            }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException)
            {
                try { File.Delete(p); } catch (Exception) { /* it was never created */ }
                throw new RunDirectoryException($"{dir} is not writable ({e.Message}); a run writes its checkpoints and metrics there; nothing was changed");
            }
        }

        /// <summary>Deletes what a run wrote in <paramref name="dir"/>: its top-level files, and in
        /// checkpoints/ its checkpoints, pointer, stage artifacts and temporaries (checkpoints/ itself
        /// only when nothing else is left in it). Foreign files are kept.</summary>
        public static void DeleteRunFiles(string dir)
        {
            foreach (var f in TopFiles) File.Delete(Path.Combine(dir, f));
            string ck = Path.Combine(dir, Checkpoints);
            if (!Directory.Exists(ck)) return;
            foreach (var e in Directory.EnumerateFileSystemEntries(ck).ToList())
            {
                if (!IsRunEntryInCheckpoints(Path.GetFileName(e))) continue;
                if (Directory.Exists(e)) Directory.Delete(e, recursive: true); else File.Delete(e);
            }
            if (!Directory.EnumerateFileSystemEntries(ck).Any()) Directory.Delete(ck);
        }

        /// <summary>Removes temporaries a cut-short checkpoint or artifact write left (step-N.tmp, sft.tmp, latest.tmp ...).</summary>
        public static void RemoveTemporaries(string dir)
        {
            string ck = Path.Combine(dir, Checkpoints);
            if (!Directory.Exists(ck)) return;
            foreach (var e in Directory.EnumerateFileSystemEntries(ck, "*.tmp").ToList())
                try
                {
                    if (!IsRunEntryInCheckpoints(Path.GetFileName(e))) continue;
                    if (Directory.Exists(e)) Directory.Delete(e, recursive: true); else File.Delete(e);
                }
                catch (Exception x) when (x is IOException or UnauthorizedAccessException) { /* best effort; Prune retries */ }
        }

        /// <summary>The part of metrics.jsonl a resume from the checkpoint at (<paramref name="stage"/>,
        /// <paramref name="nextIteration"/>) keeps: the complete lines up to that step (the lines of later
        /// iterations are redone), stopping at a malformed line; a torn (unterminated) last line is dropped.</summary>
        public sealed record MetricsCut(long KeepBytes, int KeepLines, long FileBytes, IReadOnlyList<string> Notes);

        public static MetricsCut ResumeCut(string metricsPath, int stage, int nextIteration, int recordedLines, string checkpointName)
        {
            var notes = new List<string>();
            if (!File.Exists(metricsPath))
            {
                if (recordedLines > 0) notes.Add($"{metricsPath} is missing; the {recordedLines} lines up to checkpoint {checkpointName} are lost, the summary will lack them");
                return new MetricsCut(0, 0, 0, notes);
            }
            byte[] bytes = File.ReadAllBytes(metricsPath);
            long keep = 0;
            int lines = 0, lineNo = 0;
            bool stopped = false;
            int pos = 0;
            while (pos < bytes.Length)
            {
                int nl = Array.IndexOf(bytes, (byte)'\n', pos);
                if (nl < 0)
                {
                    notes.Add($"{Path.GetFileName(metricsPath)}: dropped a torn last line ({bytes.Length - pos} bytes without a line end)");
                    break;
                }
                lineNo++;
                if (!stopped)
                {
                    var span = bytes.AsSpan(pos, nl - pos);
                    int? st = null, step = null;
                    try
                    {
                        if (JsonNode.Parse(Encoding.UTF8.GetString(span)) is JsonObject o) { st = (int?)o["stage"]; step = (int?)o["step"]; }
                    }
                    catch (Exception e) when (e is JsonException or InvalidOperationException or FormatException) { }
                    if (st is null || step is null)
                    {
                        notes.Add($"{Path.GetFileName(metricsPath)} line {lineNo.ToString(CultureInfo.InvariantCulture)} is malformed; kept the {lines} lines before it");
                        stopped = true;
                    }
                    else if (st > stage || (st == stage && step > nextIteration)) stopped = true;   // an iteration after the checkpoint: redone
                    else { lines++; keep = nl + 1; }
                }
                pos = nl + 1;
            }
            if (lines < recordedLines)
                notes.Add($"{Path.GetFileName(metricsPath)} holds {lines} of the {recordedLines} lines checkpoint {checkpointName} recorded (lost in a crash?); continuing with those, the summary will lack the rest");
            return new MetricsCut(keep, lines, bytes.Length, notes);
        }

        /// <summary>Cuts metrics.jsonl back to <paramref name="keepBytes"/> (nothing when it is already that long).</summary>
        public static void CutMetrics(string metricsPath, long keepBytes)
        {
            if (!File.Exists(metricsPath)) return;
            using var s = new FileStream(metricsPath, FileMode.Open, FileAccess.Write, FileShare.Read);
            if (s.Length == keepBytes) return;
            s.SetLength(keepBytes);
            s.Flush(flushToDisk: true);
        }
    }
}
