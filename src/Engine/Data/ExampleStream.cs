// Where a stage's examples come from: the synthetic task (drawn per iteration from its own seeded
// generator) or a dataset file streamed through a bounded shuffle buffer, epoch after epoch. The
// stream holds at most `shuffle_buffer` examples, so a file larger than memory works; the order is
// a function of (seed, stage, epoch), so a resumed run replays it by skipping the examples earlier
// iterations took. A bad record (unreadable, a field missing, text the tokenizer cannot encode, too
// long for the batch) is skipped and counted, or ends the run naming its file and line / row.
using ReaLNative.Engine.Config;
using ReaLNative.Engine.Tasks;

namespace ReaLNative.Engine.Data;

/// <summary>The examples of a stage, iteration after iteration.</summary>
internal interface IExampleSource : IDisposable
{
    /// <summary><paramref name="count"/> examples for iteration <paramref name="iteration"/>; iterations
    /// are asked in order, starting with the one the source was created for.</summary>
    TaskExample[] Take(int iteration, int count);
    /// <summary>Bad records skipped so far (each counted once, in the first pass over the file).</summary>
    long Skipped { get; }
}

/// <summary>The synthetic task: iteration i's examples come from the generator seeded by (seed, "prompts", stage, i).</summary>
internal sealed class SyntheticSource(SyntheticTask task, long seed, int stage) : IExampleSource
{
    public TaskExample[] Take(int iteration, int count)
    {
        var rng = StepRandom.Create(seed, "prompts", stage, iteration);
        return Enumerable.Range(0, count).Select(_ => task.Sample(rng)).ToArray();
    }

    public long Skipped => 0;
    public void Dispose() { }
}

/// <summary>A dataset file, shuffled by a bounded buffer, repeated epoch after epoch.</summary>
internal sealed class ExampleStream : IExampleSource
{
    private readonly DatasetSpec _spec;
    private readonly IEnumerator<TaskExample> _items;
    private long _skipped;
    private int _nextIteration;

    /// <summary>A stream positioned at iteration <paramref name="firstIteration"/> of a stage that
    /// takes <paramref name="perIteration"/> examples per iteration (a resumed run skips what the
    /// earlier iterations took).</summary>
    public ExampleStream(DatasetSpec spec, int firstIteration = 0, int perIteration = 0)
    {
        _spec = spec;
        _items = Epochs().GetEnumerator();
        for (long k = (long)firstIteration * perIteration; k > 0; k--) Next();
        _nextIteration = firstIteration;
    }

    public long Skipped => _skipped;

    public TaskExample Next()
    {
        _items.MoveNext();   // infinite: each epoch yields at least one example or throws
        return _items.Current;
    }

    public TaskExample[] Take(int iteration, int count)
    {
        if (iteration != _nextIteration)
            throw new InvalidOperationException($"dataset stream is at iteration {_nextIteration}, asked for {iteration}");
        _nextIteration++;
        var r = new TaskExample[count];
        for (int i = 0; i < count; i++) r[i] = Next();
        return r;
    }

    private IEnumerable<TaskExample> Epochs()
    {
        for (int epoch = 0; ; epoch++)
        {
            var rng = StepRandom.Create(_spec.Seed, "dataset", _spec.Stage, epoch);
            var buffer = new List<TaskExample>(Math.Min(_spec.ShuffleBuffer, 4096));
            long valid = 0;
            foreach (var ex in _spec.Examples(epoch == 0 ? () => _skipped++ : null))
            {
                valid++;
                if (buffer.Count < _spec.ShuffleBuffer) { buffer.Add(ex); continue; }
                int j = rng.Next(buffer.Count);
                yield return buffer[j];
                buffer[j] = ex;
            }
            if (valid == 0)
                throw new InputException($"no usable record ({_skipped} bad record(s) skipped); the stage needs at least one", _spec.Path);
            while (buffer.Count > 0)
            {
                int j = rng.Next(buffer.Count);
                yield return buffer[j];
                buffer[j] = buffer[^1];
                buffer.RemoveAt(buffer.Count - 1);
            }
        }
    }

    public void Dispose() => _items.Dispose();

    /// <summary>The first <paramref name="count"/> usable examples of a file in file order (the
    /// held-out set), with the bad records skipped before them.</summary>
    public static (TaskExample[] Examples, long Skipped) ReadFirst(DatasetSpec spec, int count)
    {
        long skipped = 0;
        var r = spec.Examples(() => skipped++).Take(count).ToArray();
        if (r.Length == 0) throw new InputException($"no usable record ({skipped} bad record(s) skipped); the held-out evaluation needs at least one", spec.Path);
        return (r, skipped);
    }
}

/// <summary>One dataset file as a stage reads it: format, field mapping, the fields its records
/// must have, the check each example must pass (null: usable; else why not), what a bad record does.</summary>
internal sealed record DatasetSpec(string Path, string Format, DatasetFields Fields, IReadOnlyList<string> Required,
                                  int ShuffleBuffer, long Seed, int Stage, bool SkipBad, Func<TaskExample, string?>? Check = null,
                                  Action<string>? OnSkip = null)
{
    /// <summary>The usable examples in file order; a bad record calls <paramref name="skipped"/> (and
    /// <see cref="OnSkip"/> with where and why) when skipped, or throws naming its file and line / row.</summary>
    public IEnumerable<TaskExample> Examples(Action? skipped)
    {
        foreach (var rec in DatasetReader.Read(Path, Format, Fields, Required))
        {
            string? error = rec.Error;
            if (error is null && Check is not null) error = Check(rec.Example!.Value);
            if (error is null) { yield return rec.Example!.Value; continue; }
            if (!SkipBad)
                throw Format == DatasetFormats.Jsonl
                    ? new InputException($"{error} (dataset.on_bad_record: fail; `skip` skips such records and counts them)", Path, (int)Math.Min(rec.Line, int.MaxValue))
                    : new InputException($"row {rec.Line}: {error} (dataset.on_bad_record: fail; `skip` skips such records and counts them)", Path);
            if (skipped is not null)
            {
                skipped();
                OnSkip?.Invoke($"{rec.Where}: {error}");
            }
        }
    }
}
