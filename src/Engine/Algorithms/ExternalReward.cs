// `reward: { kind: external, command: [...] }`: a user's program scores answers, speaking JSON
// lines over stdin/stdout. It starts at the first batch and stays up for the stage: per answer we
// write one line {"prompt", "completion", "ended_with_eos", "answer", "metadata"} and read one line
// back (a number, or {"reward": number}), in order. The whole batch has one deadline
// (timeout_seconds): a program that is too slow, exits, or answers garbage ends the run with an
// error naming it (and the tail of its stderr), never a hang.
using System.Diagnostics;
using System.Globalization;
using System.Text.Json;
using System.Text.Json.Nodes;
using ReaLNative.Engine.Tasks;

namespace ReaLNative.Engine.Algorithms;

internal sealed class ExternalReward(IReadOnlyList<string> command, double timeoutSeconds, string baseDirectory) : ISequenceReward
{
    private Process? _process;
    private readonly Queue<string> _stderr = new();
    private readonly Lock _gate = new();

    public string Kind => Config.RewardConfig.External;

    /// <summary>The command as the user wrote it, for messages.</summary>
    public string Name => string.Join(" ", command);

    public float[] Score(IReadOnlyList<RewardInput> batch)
    {
        var p = _process ??= Start();
        var deadline = Stopwatch.StartNew();
        var budget = TimeSpan.FromSeconds(timeoutSeconds);
        // Written by another task: a program that answers line by line while we still write
        // cannot fill both pipes and block us both.
        var writer = Task.Run(() =>
        {
            foreach (var x in batch)
            {
                var line = new JsonObject
                {
                    ["prompt"] = x.Prompt, ["completion"] = x.Completion, ["ended_with_eos"] = x.EndedWithEos, ["answer"] = x.Answer,
                    ["metadata"] = x.Metadata is null ? null : JsonNode.Parse(x.Metadata),
                };
                p.StandardInput.WriteLine(line.ToJsonString());
            }
            p.StandardInput.Flush();
        });
        var scores = new float[batch.Count];
        using var cts = new CancellationTokenSource();
        for (int i = 0; i < batch.Count; i++)
        {
            var left = budget - deadline.Elapsed;
            string? line;
            try
            {
                var read = p.StandardOutput.ReadLineAsync(cts.Token).AsTask();
                if (left <= TimeSpan.Zero || !read.Wait(left))
                {
                    cts.Cancel();
                    Stop();
                    throw Fail($"did not answer within {timeoutSeconds.ToString(CultureInfo.InvariantCulture)} s (reward.timeout_seconds) " +
                               $"for a batch of {batch.Count}: {i} answer(s) came; it was stopped");
                }
                line = read.Result;
            }
            catch (AggregateException e) when (e.InnerException is IOException or ObjectDisposedException) { line = null; }
            if (line is null)
            {
                bool exited = p.WaitForExit(2000);
                // WaitForExit(timeout) does not wait for the stderr reader to drain; the async wait does
                // (bounded: a child that kept the pipe open must not hang the run).
                if (exited) p.WaitForExitAsync().Wait(TimeSpan.FromSeconds(2));
                string how = exited ? $"exited with code {p.ExitCode}" : "closed its output";
                Stop();
                throw Fail($"{how} before answering answer {i + 1} of a batch of {batch.Count}");
            }
            scores[i] = ParseReply(line, i, batch.Count);
        }
        try { if (!writer.Wait(budget - deadline.Elapsed > TimeSpan.Zero ? budget - deadline.Elapsed : TimeSpan.Zero)) { Stop(); throw Fail("did not read its input in time"); } }
        catch (AggregateException e) when (e.InnerException is IOException) { Stop(); throw Fail("closed its input early"); }
        return scores;
    }

    private float ParseReply(string line, int i, int count)
    {
        double? v = null;
        try
        {
            var node = JsonNode.Parse(line);
            if (node is JsonValue jv && jv.TryGetValue(out double d)) v = d;
            else if (node is JsonObject o && o["reward"] is JsonValue r && r.TryGetValue(out double d2)) v = d2;
        }
        catch (JsonException) { }
        if (v is not { } x || !double.IsFinite(x))
        {
            Stop();
            string shown = line.Length > 120 ? line[..120] + "..." : line;
            throw Fail($"answered '{shown}' to answer {i + 1} of a batch of {count}; expected one line per answer holding a finite number or {{\"reward\": number}}");
        }
        return (float)x;
    }

    private Process Start()
    {
        string program = command[0].Contains('/') ? Path.GetFullPath(Path.Combine(baseDirectory, command[0])) : command[0];
        var psi = new ProcessStartInfo(program)
        {
            RedirectStandardInput = true, RedirectStandardOutput = true, RedirectStandardError = true,
            UseShellExecute = false, WorkingDirectory = baseDirectory,
            StandardInputEncoding = new System.Text.UTF8Encoding(false), StandardOutputEncoding = System.Text.Encoding.UTF8,
        };
        foreach (var a in command.Skip(1)) psi.ArgumentList.Add(a);
        var p = new Process { StartInfo = psi };
        p.ErrorDataReceived += (_, e) =>
        {
            if (e.Data is null) return;
            lock (_gate)
            {
                _stderr.Enqueue(e.Data);
                while (_stderr.Count > 5) _stderr.Dequeue();
            }
        };
        try { p.Start(); }
        catch (Exception e) when (e is System.ComponentModel.Win32Exception or InvalidOperationException)
        {
            throw new TrainingFailedException($"external reward program '{Name}' could not be started: {e.Message} (reward.command; relative paths resolve against {baseDirectory})");
        }
        p.BeginErrorReadLine();
        return p;
    }

    private TrainingFailedException Fail(string what)
    {
        string tail;
        lock (_gate) tail = _stderr.Count == 0 ? "" : "; its stderr ends: " + string.Join(" | ", _stderr);
        return new TrainingFailedException($"external reward program '{Name}' {what}{tail}");
    }

    private void Stop()
    {
        var p = _process;
        _process = null;
        if (p is null) return;
        try { if (!p.HasExited) p.Kill(entireProcessTree: true); p.WaitForExit(2000); }
        catch (Exception e) when (e is InvalidOperationException or System.ComponentModel.Win32Exception) { }
        p.Dispose();
    }

    /// <summary>Closes the program's input (its cue to exit), waits briefly, then stops it.</summary>
    public void Dispose()
    {
        if (_process is { } p)
        {
            try { p.StandardInput.Close(); p.WaitForExit(2000); }
            catch (Exception e) when (e is IOException or InvalidOperationException) { }
        }
        Stop();
    }
}
