using ReaLNative.Engine.Model;
using ReaLNative.Engine.Tasks;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using ReaLNative.Engine.Transport;
using ReaLNative.Interop;

namespace ReaLNative.Engine.Generation;

/// <summary>Sampling settings. Temperature 0 = greedy.</summary>
internal sealed record GenerationOptions
{
    /// <summary>New tokens per sequence at most.</summary>
    public int MaxNewTokens { get; init; } = 16;
    /// <summary>Softmax temperature; 0 = greedy argmax.</summary>
    public float Temperature { get; init; } = 1f;
    /// <summary>Keep the k most likely tokens (0 = all).</summary>
    public int TopK { get; init; }
    /// <summary>Nucleus: keep the smallest set of tokens with mass &gt;= p (1 = all).</summary>
    public float TopP { get; init; } = 1f;
    /// <summary>End-of-sequence token (-1: none); generation of a sequence stops after it.</summary>
    public int EosToken { get; init; } = -1;
    /// <summary>Sampling seed: same seed, same prompts, same result.</summary>
    public ulong Seed { get; init; }
    /// <summary>Per prompt, new tokens at most (each &lt;= <see cref="MaxNewTokens"/>); null = MaxNewTokens for all.
    /// Single device only (benchmarks use it for outputs of varied length without an EOS-prone model).</summary>
    public int[]? MaxNewTokensPerPrompt { get; init; }
    /// <summary>Continuous batching (experiment `generation.batching: continuous`): each micro-batch
    /// decodes through <see cref="Generator.GenerateContinuous(LlamaModel, IReadOnlyList{int[]}, IReadOnlyList{int}, GenerationOptions, int)"/>
    /// with one slot per sequence, so identical prompts (a GRPO/RLOO group) are prefilled once and
    /// share their K/V prefix; the result is identical to the static batch with
    /// <see cref="BatchIndependentPrefill"/>. Applies where a shard is a whole model (no pipeline or
    /// tensor parallelism); elsewhere generation stays static (with that prefill).</summary>
    public bool Continuous { get; init; }
    /// <summary>Prefill through <see cref="Generator.Prefill"/> (batch-invariant forwards, linears in
    /// chunks of at most 64 rows: a prompt's K/V and logits do not depend on its batch) instead of one
    /// packed forward of all prompts (SGEMM). Continuous batching always prefills so; on a CPU it
    /// costs a weight stream per 64 prompt tokens.</summary>
    public bool BatchIndependentPrefill { get; init; }
    /// <summary>Benchmarks: record each forward's rows and seconds (single device; static and
    /// continuous paths) in <see cref="GenerationResult.Steps"/>.</summary>
    public bool RecordSteps { get; init; }
    /// <summary>Benchmarks only (the static batch as it decoded before decode became
    /// batch-invariant): decode steps of more than 64 rows run the linear's SGEMM path, so a
    /// sequence's tokens depend on its batch. Static path only.</summary>
    public bool BatchVariantDecode { get; init; }

    /// <summary>Generation in chunks with the weights changed in between (async runs'
    /// `weight_update: interrupt`): null = in one call. See <see cref="GenerationPause"/>.</summary>
    public GenerationPause? Pause { get; init; }

    /// <summary>True when top-k/top-p masks are in effect (then masks are returned).</summary>
    public bool Filters => Temperature > 0 && (TopK > 0 || TopP < 1f);
}

/// <summary>
/// One chunk of a generation that pauses at a decode-step boundary, so that the model's weights
/// can be replaced before it continues on the KV cache of the tokens so far (the static path of
/// <see cref="Generator.GenerateShard"/>, no pipeline parallelism). A call with
/// <see cref="Resume"/> false starts the generation and runs its steps before
/// <see cref="StopBeforeStep"/> (step 0 is the prefill, which samples each sequence's token 0; step
/// s samples token s); a call with <see cref="Resume"/> true continues the paused generation of
/// <see cref="Session"/> on the same model (same prompts and options), up to
/// <see cref="StopBeforeStep"/> again or, when 0, to the end. Each call returns every sequence's
/// tokens so far. The state (the KV caches, tokens, log-probs) stays with the model object between
/// the calls (in a model worker, in the worker), one paused generation per model: starting another
/// drops the older one.
/// </summary>
internal sealed record GenerationPause(long Session, int StopBeforeStep, bool Resume);

/// <summary>Generated sequences: prompt + new tokens, the log-prob of each new token under the
/// distribution it was drawn from, and (when top-k/top-p filtered) the mask of allowed tokens per
/// new token, which training must reuse to recompute the same log-probs.</summary>
internal sealed class GenerationResult
{
    /// <summary>The prompts, as given.</summary>
    public required int[][] Prompts { get; init; }
    private int[][]? _newTokens;
    private int[]? _newTokenCounts;

    /// <summary>Generated tokens per sequence (EOS included when hit); when the workers keep them
    /// (<see cref="KeptTokens"/>), fetched from them on first read.</summary>
    public required int[][] NewTokens
    {
        get
        {
            if (_newTokens is { } t) return t;
            var flat = (KeptTokens ?? throw new InvalidOperationException("generation result without token ids")).Values;
            var split = new int[Prompts.Length][];
            int at = 0;
            for (int i = 0; i < split.Length; i++)
            {
                at += Prompts[i].Length;
                split[i] = flat.AsSpan(at, NewTokenCounts[i]).ToArray();
                at += NewTokenCounts[i];
            }
            return _newTokens = split;
        }
        init => _newTokens = value;
    }

    /// <summary>Generated tokens of each sequence, known without the ids.</summary>
    public int[] NewTokenCounts
    {
        get => _newTokenCounts ??= [.. NewTokens.Select(t => t.Length)];
        init => _newTokenCounts = value;
    }

    /// <summary>The sequences (prompt and new tokens, packed in prompt order) when the generating
    /// workers keep them and sent only their lengths (RemoteReplica.KeptGenerate of answers the
    /// workers score); null when <see cref="NewTokens"/> came with the result.</summary>
    public KeptInts? KeptTokens { get; init; }
    private float[][]? _logProbs;

    /// <summary>Log-prob of each new token under the (tempered, filtered) sampling distribution
    /// (when the workers keep them, <see cref="KeptLogProbs"/>: fetched from them on first read).</summary>
    public required float[][] LogProbs
    {
        get
        {
            if (_logProbs is { } l) return l;
            var flat = (KeptLogProbs ?? throw new InvalidOperationException("generation result without log-probs")).Values;
            var split = new float[NewTokenCounts.Length][];
            int at = 0;
            for (int i = 0; i < split.Length; i++) { split[i] = flat.AsSpan(at, NewTokenCounts[i]).ToArray(); at += NewTokenCounts[i]; }
            return _logProbs = split;
        }
        init => _logProbs = value;
    }

    /// <summary>The log-probs, flattened sequence by sequence, when the generating workers keep them
    /// and did not send them (null: <see cref="LogProbs"/> came with the result).</summary>
    public ActionFloats? KeptLogProbs { get; init; }
    /// <summary>Per sequence, per new token, vocab bytes (1 = allowed); null without filtering.</summary>
    public byte[][]? Masks
    {
        get => MasksDropped ? throw new InvalidOperationException("the generation's sampling masks were not kept: the workers that generated it sent none (a synchronous run's train calls read no mask)") : _masks;
        init => _masks = value;
    }

    private byte[][]? _masks;

    /// <summary>The sampling masks (a filtered generation's) were neither sent nor kept by the workers
    /// (RemoteReplica.KeptGenerate): reading <see cref="Masks"/> fails.</summary>
    public bool MasksDropped { get; init; }
    /// <summary>Whether each sequence stopped at EOS (else at max_new_tokens).</summary>
    public required bool[] EndedWithEos { get; init; }
    /// <summary>Prompt tokens that went through a prefill (fewer than all prompt tokens when
    /// identical prompts shared one prefill); 0 where not counted (pipeline stages).</summary>
    public long PrefilledTokens { get; init; }
    /// <summary>Per forward (prefill or decode step) of the static path: its rows (sequences) and
    /// seconds; null unless <see cref="GenerationOptions.RecordSteps"/>.</summary>
    public (int Rows, bool Decode, double Seconds)[]? Steps { get; init; }

    /// <summary>Where worker processes keep the generated sequences (prompt + new tokens, in prompt
    /// order), for the calls that score them next; null when only this process has them.</summary>
    public BatchSource? Source { get; init; }

    /// <summary>The answers' scores that the workers holding them computed (RemoteReplica.KeptGenerate
    /// with a ScoringRequest); null when the caller scores them.</summary>
    public SequenceScores? Scores { get; init; }

    /// <summary>Prompt + new tokens of sequence i.</summary>
    public int[] Sequence(int i) => [.. Prompts[i], .. NewTokens[i]];
}

/// <summary>
/// Batched generation: one prefill of all prompts (packed, no padding) that fills a slot-based
/// KV cache, then decode steps of one token per unfinished sequence against the cache, sampling
/// on the native op with a seed. The random number of a draw is a pure function of (seed, decode
/// step, sequence id), so the tokens do not depend on how sequences are batched, split over
/// data-parallel ranks or grouped into micro-batches.
/// Under pipeline parallelism the prompts go through the stages in micro-batches: stage s decodes
/// micro-batch m while stage s+1 works on m-1; the last stage samples and tells every other stage
/// of its pipeline which sequences go on with which tokens. Tensor ranks compute identical logits
/// (all-gathered) and so sample identically.
/// </summary>
internal static unsafe class Generator
{
    private const int ControlKind = 2, HiddenKind = 0;

    /// <summary>Generates for all prompts in one batch on a single device; errors name the bad option.</summary>
    public static GenerationResult Generate(LlamaModel model, IReadOnlyList<int[]> prompts, GenerationOptions opt) =>
        GenerateShard(model, prompts, Enumerable.Range(0, prompts.Count).ToArray(), opt, 1)
        ?? throw new InvalidOperationException("a single-device model is its own last stage");

    /// <summary>
    /// Generation by one shard of a (pipeline, tensor) parallel model: every shard of the pipeline
    /// calls it with the same prompts. <paramref name="sequenceIds"/> are the prompts' ids in the
    /// whole batch (they key the random draws). Returns the result on the last pipeline stage,
    /// null on the others.
    /// </summary>
    public static GenerationResult? GenerateShard(LlamaModel model, IReadOnlyList<int[]> prompts, IReadOnlyList<int> sequenceIds,
        GenerationOptions opt, int microBatches)
    {
        if (model.ScalarHead) throw new ArgumentException("generation needs a language-model head, not a scalar head");
        if (prompts.Count == 0) throw new ArgumentException("generation needs at least one prompt");
        if (sequenceIds.Count != prompts.Count) throw new ArgumentException($"{sequenceIds.Count} sequence ids for {prompts.Count} prompts");
        if (opt.MaxNewTokens < 1) throw new ArgumentException($"max_new_tokens must be >= 1 (got {opt.MaxNewTokens})");
        if (opt.Temperature < 0) throw new ArgumentException($"temperature must be >= 0 (got {opt.Temperature})");
        if (!(opt.TopP > 0 && opt.TopP <= 1)) throw new ArgumentException($"top_p must be in (0, 1] (got {opt.TopP})");
        if (microBatches < 1) throw new ArgumentException($"micro_batches must be >= 1 (got {microBatches})");
        if (opt.MaxNewTokensPerPrompt is not null && model.Comm is not null)
            throw new ArgumentException("per-prompt max_new_tokens are supported on a single device only");
        if (opt.Pause is { } pause)
        {
            if (pause.StopBeforeStep < 0 || (pause.StopBeforeStep == 0 && !pause.Resume))
                throw new ArgumentException($"a generation pause needs a stop step >= 1 (got {pause.StopBeforeStep})");
            if (model.Comm is { Pp: > 1 }) throw new ArgumentException("a generation cannot pause under pipeline parallelism (messages between stages would be in flight)");
            if (opt.Continuous) throw new ArgumentException("a generation cannot pause under continuous batching (its sequences are at different steps)");
        }
        var caps = Caps(opt, prompts.Count);
        var c = model.Config;
        int B = prompts.Count, V = c.Vocab, H = c.Hidden;
        int maxPrompt = 0;
        foreach (var p in prompts)
        {
            if (p.Length == 0) throw new ArgumentException("empty prompt");
            maxPrompt = Math.Max(maxPrompt, p.Length);
        }
        int maxLen = maxPrompt + opt.MaxNewTokens;
        if (maxLen > c.MaxPositions) throw new ArgumentException($"prompt + max_new_tokens = {maxLen} exceeds max_position_embeddings {c.MaxPositions}");
        var comm = model.Comm;
        int stage = comm?.Pipe ?? 0, last = (comm?.Pp ?? 1) - 1;
        bool first = model.HasEmbedding, isLast = model.HasHead;

        var mbs = Split.Contiguous(prompts.Select(p => p.Length).ToArray(), Math.Min(microBatches, B));
        int M = mbs.Length;
        if (opt.Continuous && (comm is null || (comm.Pp == 1 && comm.Tp == 1)))
        {
            // Each micro-batch as the static path cuts it, one slot per sequence: the same batches
            // (so the same kernels) as below, plus shared prefixes of identical prompts.
            var partsOf = mbs.Select(mb => GenerateContinuous(model, mb.Select(i => prompts[i]).ToArray(),
                                                              mb.Select(i => sequenceIds[i]).ToArray(),
                                                              opt with { MaxNewTokensPerPrompt = opt.MaxNewTokensPerPrompt is { } per ? mb.Select(i => per[i]).ToArray() : null },
                                                              mb.Length)).ToArray();
            return Concat(prompts, mbs, partsOf, opt.Filters);
        }
        var steps = opt.RecordSteps && comm is null ? new List<(int, bool, double)>() : null;
        var resumed = opt.Pause is { Resume: true } rp ? PausedGeneration.Take(model, rp.Session, B, opt) : null;
        var caches = resumed?.Caches ?? new KvCache[M];
        var outBufs = resumed?.OutBufs ?? new HostBlock?[M];
        var pendingSend = new Task?[M];
        using var inBuf = new HostBlock(Math.Max(64, (long)mbs.Max(m => m.Sum(i => prompts[i].Length)) * H * 4));
        var newTok = resumed?.NewTokens ?? Enumerable.Range(0, B).Select(_ => new List<int>()).ToArray();
        var logp = resumed?.LogProbs ?? Enumerable.Range(0, B).Select(_ => new List<float>()).ToArray();
        var masks = resumed is not null ? resumed.Masks : opt.Filters ? Enumerable.Range(0, B).Select(_ => new List<byte>()).ToArray() : null;
        var eos = resumed?.Eos ?? new bool[B];
        // Per micro-batch: the local slots still decoding and their next tokens (known to every stage).
        var active = resumed?.Active ?? new List<int>[M];
        var nextTok = resumed?.NextTokens ?? new int[M][];
        bool[] done = resumed?.Done ?? new bool[M];
        int stopBefore = opt.Pause?.StopBeforeStep ?? 0;
        bool keep = false;   // paused: the caches stay with the model for the next chunk
        try
        {
            if (resumed is null)
                for (int m = 0; m < M; m++)
                {
                    caches[m] = model.NewKvCache(mbs[m].Length, maxLen);
                    outBufs[m] = new HostBlock(Math.Max(64, (long)Math.Max(mbs[m].Sum(i => prompts[i].Length) * H, mbs[m].Length * V) * 4));
                }
            for (int step = resumed?.Step ?? 0; ; step++)
            {
                if (opt.Pause is { } chunk && stopBefore > 0 && (step == stopBefore || !done.Contains(false)))
                {
                    // A chunk ends (or the whole generation did, before the stop): the state stays for the next call.
                    PausedGeneration.Keep(model, new PausedGeneration(chunk.Session, B, opt.Seed, opt.MaxNewTokens, step, caches, outBufs,
                                                                      newTok, logp, masks, eos, active, nextTok, done));
                    keep = true;
                    break;
                }
                if (!done.Contains(false)) break;
                for (int m = 0; m < M; m++)
                {
                    if (done[m]) continue;
                    int[] members = mbs[m];
                    int[] toks, slots, pos;
                    if (step == 0)
                    {
                        toks = members.SelectMany(i => prompts[i]).ToArray();
                        slots = new int[toks.Length];
                        pos = new int[toks.Length];
                        for (int k = 0, o = 0; k < members.Length; k++)
                            for (int j = 0; j < prompts[members[k]].Length; j++, o++) { slots[o] = k; pos[o] = j; }
                    }
                    else
                    {
                        if (!isLast) ReceiveControl(comm!, last, members.Length, out active[m], out nextTok[m]);
                        if (active[m].Count == 0) { done[m] = true; continue; }
                        slots = active[m].ToArray();
                        toks = nextTok[m];
                        pos = slots.Select(k => prompts[members[k]].Length + step - 1).ToArray();
                    }
                    int T = toks.Length;
                    bool decode = step > 0;
                    float* input = null;
                    if (!first)
                    {
                        comm!.RecvStage(stage - 1, HiddenKind, inBuf.Pointer, (long)T * H * 4);
                        input = (float*)inBuf.Pointer;
                    }
                    if (pendingSend[m] is { } ps) ShardComm.Complete(ps);  // the output buffer is about to be rewritten
                    pendingSend[m] = null;
                    float* output = (float*)outBufs[m]!.Pointer;
                    long t0 = steps is null ? 0 : System.Diagnostics.Stopwatch.GetTimestamp();
                    if (!decode && first && isLast && (opt.BatchIndependentPrefill || opt.Continuous))
                        Prefill(model, caches[m], members.Select(i => prompts[i]).ToArray(), Enumerable.Range(0, members.Length).ToArray(), output, V);
                    else
                        model.ForwardCached(caches[m], toks, slots, pos, decode, input, output, decode && opt.BatchVariantDecode ? false : null);
                    steps?.Add((decode ? T : members.Length, decode, System.Diagnostics.Stopwatch.GetElapsedTime(t0).TotalSeconds));
                    if (!isLast)
                    {
                        pendingSend[m] = comm!.SendStage(stage + 1, HiddenKind, output, (long)T * H * 4);
                        continue;
                    }
                    // Last stage: one logits row per decoding sequence, in slot order of `slots` runs.
                    var rowsOf = step == 0 ? Enumerable.Range(0, members.Length).ToArray() : slots;
                    int n = rowsOf.Length;
                    var next = new List<int>();
                    var nt = new List<int>();
                    var so = SampleOpts.Default;
                    so.Temperature = opt.Temperature;
                    so.TopK = opt.TopK;
                    so.TopP = opt.TopP;
                    so.Seed = opt.Seed;
                    var mask = masks is null ? null : new byte[V];
                    for (int r = 0; r < n; r++)
                    {
                        int k = rowsOf[r], i = members[k];
                        int tok;
                        float lp;
                        so.Offset = (ulong)step << 32 | (uint)sequenceIds[i];
                        fixed (byte* pm = mask)
                            Native.Check(Native.realn_op_sample(model.Stream.Ptr, DType.F32, output + (long)r * V, 1, V, &so, &tok, pm, &lp));
                        newTok[i].Add(tok);
                        logp[i].Add(lp);
                        if (mask is not null) masks![i].AddRange(mask);
                        if (tok == opt.EosToken) eos[i] = true;
                        else if (newTok[i].Count < caps[i]) { next.Add(k); nt.Add(tok); }
                    }
                    active[m] = next;
                    nextTok[m] = [.. nt];
                    if (comm is not null)
                        for (int s = 0; s < last; s++) SendControl(comm, s, members.Length, next, nt);
                    if (next.Count == 0) done[m] = true;
                }
            }
            foreach (var t in pendingSend) if (t is not null) ShardComm.Complete(t);
        }
        finally
        {
            if (!keep)
            {
                foreach (var k in caches) k?.Dispose();
                foreach (var b in outBufs) b?.Dispose();
            }
        }
        if (!isLast) return null;
        return new GenerationResult
        {
            Prompts = prompts.Select(p => p.ToArray()).ToArray(),
            NewTokens = newTok.Select(l => l.ToArray()).ToArray(),
            LogProbs = logp.Select(l => l.ToArray()).ToArray(),
            Masks = masks?.Select(l => l.ToArray()).ToArray(),
            EndedWithEos = eos,
            PrefilledTokens = prompts.Sum(p => (long)p.Length),
            Steps = steps?.ToArray(),
        };
    }

    /// <summary>The state of a paused chunked generation (<see cref="GenerationPause"/>), kept with its model between the calls.</summary>
    private sealed record PausedGeneration(long Session, int Count, ulong Seed, int MaxNewTokens, int Step, KvCache[] Caches, HostBlock?[] OutBufs,
                                           List<int>[] NewTokens, List<float>[] LogProbs, List<byte>[]? Masks, bool[] Eos,
                                           List<int>[] Active, int[][] NextTokens, bool[] Done) : IDisposable
    {
        private static readonly ConditionalWeakTable<LlamaModel, PausedGeneration> Paused = new();

        /// <summary>Keeps <paramref name="state"/> with <paramref name="model"/>, dropping an older paused generation.</summary>
        public static void Keep(LlamaModel model, PausedGeneration state)
        {
            lock (Paused)
            {
                if (Paused.TryGetValue(model, out var old) && !ReferenceEquals(old, state)) old.Dispose();
                Paused.AddOrUpdate(model, state);
            }
        }

        /// <summary>The paused generation <paramref name="session"/> of <paramref name="model"/>, removed from it; errors name what does not match.</summary>
        public static PausedGeneration Take(LlamaModel model, long session, int count, GenerationOptions opt)
        {
            lock (Paused)
            {
                if (!Paused.TryGetValue(model, out var s) || s.Session != session)
                    throw new InvalidOperationException($"no paused generation {session} on this model to resume{(s is null ? "" : $" (it holds {s.Session})")}");
                if (s.Count != count || s.Seed != opt.Seed || s.MaxNewTokens != opt.MaxNewTokens)
                    throw new ArgumentException($"resuming generation {session} with {count} prompts, seed {opt.Seed}, max_new_tokens {opt.MaxNewTokens}; it started with {s.Count}, {s.Seed}, {s.MaxNewTokens}");
                Paused.Remove(model);
                return s;
            }
        }

        public void Dispose()
        {
            foreach (var k in Caches) k?.Dispose();
            foreach (var b in OutBufs) b?.Dispose();
        }
    }

    /// <summary>The results of the micro-batches <paramref name="mbs"/> (indices into <paramref name="prompts"/>) as one, in prompt order.</summary>
    private static GenerationResult Concat(IReadOnlyList<int[]> prompts, int[][] mbs, GenerationResult[] parts, bool filters)
    {
        int B = prompts.Count;
        var newTok = new int[B][];
        var logp = new float[B][];
        var masks = filters ? new byte[B][] : null;
        var eos = new bool[B];
        for (int m = 0; m < mbs.Length; m++)
            for (int k = 0; k < mbs[m].Length; k++)
            {
                int i = mbs[m][k];
                newTok[i] = parts[m].NewTokens[k];
                logp[i] = parts[m].LogProbs[k];
                if (masks is not null) masks[i] = parts[m].Masks![k];
                eos[i] = parts[m].EndedWithEos[k];
            }
        return new GenerationResult
        {
            Prompts = prompts.Select(p => p.ToArray()).ToArray(),
            NewTokens = newTok,
            LogProbs = logp,
            Masks = masks,
            EndedWithEos = eos,
            PrefilledTokens = parts.Sum(p => p.PrefilledTokens),
        };
    }

    /// <summary>New tokens at most per prompt; errors name the bad entry.</summary>
    private static int[] Caps(GenerationOptions opt, int count)
    {
        if (opt.MaxNewTokensPerPrompt is not { } per) return Enumerable.Repeat(opt.MaxNewTokens, count).ToArray();
        if (per.Length != count) throw new ArgumentException($"{per.Length} per-prompt max_new_tokens for {count} prompts");
        for (int i = 0; i < per.Length; i++)
            if (per[i] < 1 || per[i] > opt.MaxNewTokens)
                throw new ArgumentException($"per-prompt max_new_tokens[{i}] = {per[i]} outside 1..{opt.MaxNewTokens}");
        return per;
    }

    /// <summary>
    /// Continuous batching on a single device: at most <paramref name="slots"/> sequences are in
    /// the KV cache at once; a sequence that finishes (EOS or its cap) frees its slot at once and
    /// the next prompt is prefilled into it, so the decode batch stays full instead of waiting for
    /// the longest sequence. Prompts admitted together that are identical (a GRPO/RLOO group's
    /// samples) share one prefill: its K/V prefix is copied into the others' slots and their first
    /// tokens are drawn from the same logits. Each draw is keyed by (seed, token index of the
    /// sequence, prompt index) exactly as in <see cref="Generate"/>, prefills go through
    /// <see cref="Prefill"/> and decode steps are batch-invariant (each linear row in one summation
    /// order whatever the step's row count), so the result is the static path's with
    /// <see cref="GenerationOptions.BatchIndependentPrefill"/> for any number of slots.
    /// </summary>
    public static GenerationResult GenerateContinuous(LlamaModel model, IReadOnlyList<int[]> prompts, GenerationOptions opt, int slots) =>
        GenerateContinuous(model, prompts, Enumerable.Range(0, prompts.Count).ToArray(), opt, slots);

    /// <summary>
    /// Rows up to which the native linear forward runs its small-M kernel, above which SGEMM
    /// (<see cref="Kernels.SmallMMaxRows"/>). The small-M kernel gives a row the same value whatever
    /// other rows it is batched with; SGEMM's value depends on the call's shape, so generation's
    /// forwards call the linear in chunks of at most this many rows.
    /// </summary>
    public const int SmallMMaxRows = Kernels.SmallMMaxRows;

    /// <summary><see cref="GenerateContinuous(LlamaModel, IReadOnlyList{int[]}, GenerationOptions, int)"/> of
    /// a data-parallel replica's share: <paramref name="sequenceIds"/> are the prompts' ids in the
    /// whole batch (they key the random draws).</summary>
    public static GenerationResult GenerateContinuous(LlamaModel model, IReadOnlyList<int[]> prompts, IReadOnlyList<int> sequenceIds, GenerationOptions opt, int slots)
    {
        if (model.Comm is { } cm && (cm.Pp != 1 || cm.Tp != 1))
            throw new ArgumentException("continuous batching runs on a whole model (no pipeline or tensor parallelism)");
        if (model.ScalarHead) throw new ArgumentException("generation needs a language-model head, not a scalar head");
        if (prompts.Count == 0) throw new ArgumentException("generation needs at least one prompt");
        if (sequenceIds.Count != prompts.Count) throw new ArgumentException($"{sequenceIds.Count} sequence ids for {prompts.Count} prompts");
        if (slots < 1) throw new ArgumentException($"continuous batching needs slots >= 1 (got {slots})");
        if (opt.MaxNewTokens < 1) throw new ArgumentException($"max_new_tokens must be >= 1 (got {opt.MaxNewTokens})");
        if (opt.Temperature < 0) throw new ArgumentException($"temperature must be >= 0 (got {opt.Temperature})");
        if (!(opt.TopP > 0 && opt.TopP <= 1)) throw new ArgumentException($"top_p must be in (0, 1] (got {opt.TopP})");
        var c = model.Config;
        int B = prompts.Count, V = c.Vocab, S = Math.Min(slots, B);
        var caps = Caps(opt, B);
        int maxPrompt = 0;
        foreach (var p in prompts)
        {
            if (p.Length == 0) throw new ArgumentException("empty prompt");
            maxPrompt = Math.Max(maxPrompt, p.Length);
        }
        int maxLen = maxPrompt + opt.MaxNewTokens;
        if (maxLen > c.MaxPositions) throw new ArgumentException($"prompt + max_new_tokens = {maxLen} exceeds max_position_embeddings {c.MaxPositions}");
        var newTok = new int[B][];
        var logp = new float[B][];
        var masks = opt.Filters ? new byte[B][] : null;
        var count = new int[B];
        var eos = new bool[B];
        for (int i = 0; i < B; i++)
        {
            newTok[i] = new int[caps[i]];
            logp[i] = new float[caps[i]];
            if (masks is not null) masks[i] = new byte[(long)caps[i] * V];
        }
        var slotSeq = new int[S];
        Array.Fill(slotSeq, -1);
        int nextPrompt = 0, live = 0;
        var so = SampleOpts.Default;
        so.Temperature = opt.Temperature;
        so.TopK = opt.TopK;
        so.TopP = opt.TopP;
        so.Seed = opt.Seed;
        using var cache = model.NewKvCache(S, maxLen);
        using var outBuf = new HostBlock(Math.Max(64, (long)S * V * 4));
        float* output = (float*)outBuf.Pointer;
        var rowSlot = new int[S];
        var decTok = new int[S];
        var decSlot = new int[S];
        var decPos = new int[S];
        var shared = new List<(int Slot, int SourceRow, int SourceSlot)>();
        var wave = new List<(int Slot, int Source)>();  // admitted this round: slot, slot whose prefill it shares (-1: its own)
        long prefilled = 0;
        var steps = opt.RecordSteps ? new List<(int, bool, double)>() : null;

        // Samples row r of `output` for the sequence in slot `slot`; frees the slot when it is done.
        void Sample(int r, int slot)
        {
            int i = slotSeq[slot], k = count[i];
            int tok;
            float lp;
            var o = so;
            o.Offset = (ulong)k << 32 | (uint)sequenceIds[i];
            Span<byte> mask = masks is null ? default : masks[i].AsSpan((int)((long)k * V), V);
            fixed (byte* pm = mask)
                Native.Check(Native.realn_op_sample(model.Stream.Ptr, DType.F32, output + (long)r * V, 1, V, &o, &tok, pm, &lp));
            newTok[i][k] = tok;
            logp[i][k] = lp;
            count[i] = k + 1;
            if (tok == opt.EosToken) eos[i] = true;
            if (eos[i] || count[i] == caps[i]) { slotSeq[slot] = -1; live--; }
        }

        while (live > 0 || nextPrompt < B)
        {
            // Admit waiting prompts into free slots: one packed prefill, which yields their first tokens.
            shared.Clear(); wave.Clear();
            int admitted = 0;
            for (int sl = 0; sl < S && nextPrompt < B; sl++)
            {
                if (slotSeq[sl] >= 0) continue;
                int i = nextPrompt++;
                slotSeq[sl] = i;
                live++;
                var p = prompts[i];
                int src = -1;
                for (int w = 0; w < wave.Count && src < 0; w++)
                {
                    var (ws, wsrc) = wave[w];
                    var q = prompts[slotSeq[ws]];
                    if (wsrc < 0 && (ReferenceEquals(p, q) || p.AsSpan().SequenceEqual(q))) src = ws;
                }
                wave.Add((sl, src));
            }
            foreach (var (sl, src) in wave)
                if (src < 0) rowSlot[admitted++] = sl;
            foreach (var (sl, src) in wave)
                if (src >= 0)
                {
                    int row = Array.IndexOf(rowSlot, src, 0, admitted);
                    shared.Add((sl, row, src));
                }
            if (admitted > 0)
            {
                long t0 = steps is null ? 0 : System.Diagnostics.Stopwatch.GetTimestamp();
                prefilled += Prefill(model, cache, rowSlot.AsSpan(0, admitted).ToArray().Select(sl => prompts[slotSeq[sl]]).ToArray(),
                                     rowSlot.AsSpan(0, admitted).ToArray(), output, V);
                steps?.Add((admitted, false, System.Diagnostics.Stopwatch.GetElapsedTime(t0).TotalSeconds));
                // Shared prompts first (Sample may free a source slot whose prefix they copy).
                foreach (var (sl, srcRow, srcSlot) in shared)
                {
                    cache.CopyPrefix(srcSlot, sl, prompts[slotSeq[sl]].Length);
                    Sample(srcRow, sl);
                }
                for (int r = 0; r < admitted; r++) Sample(r, rowSlot[r]);
            }
            // One decode step for every sequence in the cache that already has a token (all of them now).
            int n = 0;
            for (int sl = 0; sl < S; sl++)
            {
                int i = slotSeq[sl];
                if (i < 0) continue;
                decSlot[n] = sl;
                decTok[n] = newTok[i][count[i] - 1];
                decPos[n] = prompts[i].Length + count[i] - 1;
                n++;
            }
            if (n == 0) continue;
            long ts = steps is null ? 0 : System.Diagnostics.Stopwatch.GetTimestamp();
            model.ForwardCached(cache, decTok.AsSpan(0, n), decSlot.AsSpan(0, n), decPos.AsSpan(0, n), true, output);
            steps?.Add((n, true, System.Diagnostics.Stopwatch.GetElapsedTime(ts).TotalSeconds));
            for (int r = 0; r < n; r++) Sample(r, decSlot[r]);
        }
        return new GenerationResult
        {
            Prompts = prompts.Select(p => p.ToArray()).ToArray(),
            NewTokens = newTok.Select((t, i) => t.AsSpan(0, count[i]).ToArray()).ToArray(),
            LogProbs = logp.Select((l, i) => l.AsSpan(0, count[i]).ToArray()).ToArray(),
            Masks = masks?.Select((m, i) => m.AsSpan(0, (int)((long)count[i] * V)).ToArray()).ToArray(),
            EndedWithEos = eos,
            PrefilledTokens = prefilled,
            Steps = steps?.ToArray(),
        };
    }

    /// <summary>Prompt tokens per forward of <see cref="Prefill"/> at most (a longer prompt alone):
    /// bounds the forward's activations; its linears run in chunks of 64 rows whatever the size.</summary>
    public const int PrefillTokensPerForward = 1024;

    /// <summary>
    /// Prefills <paramref name="runPrompts"/> into KV slots <paramref name="runSlots"/> and writes the
    /// logits of each prompt's last token to row r of <paramref name="output"/>: consecutive prompts
    /// packed into batch-invariant forwards (<c>LlamaModel.ForwardCached</c> with batchInvariant) of at most <see cref="PrefillTokensPerForward"/> tokens, so a prompt's
    /// logits and K/V do not depend on which other prompts are prefilled with it. Static and
    /// continuous batching, shared prefixes and data-parallel splits then agree bit for bit.
    /// Returns the tokens prefilled.
    /// </summary>
    internal static long Prefill(LlamaModel model, KvCache cache, IReadOnlyList<int[]> runPrompts, IReadOnlyList<int> runSlots, float* output, int V)
    {
        long total = 0;
        for (int r0 = 0; r0 < runPrompts.Count;)
        {
            int r1 = r0, tokens = 0;
            do tokens += runPrompts[r1++].Length;
            while (r1 < runPrompts.Count && tokens + runPrompts[r1].Length <= PrefillTokensPerForward);
            var toks = new int[tokens];
            var slots = new int[tokens];
            var pos = new int[tokens];
            for (int r = r0, o = 0; r < r1; r++)
                for (int j = 0; j < runPrompts[r].Length; j++, o++) { toks[o] = runPrompts[r][j]; slots[o] = runSlots[r]; pos[o] = j; }
            model.ForwardCached(cache, toks, slots, pos, false, output + (long)r0 * V, batchInvariant: true);
            total += tokens;
            r0 = r1;
        }
        return total;
    }

    // Control message: [count, slot_0 .. slot_{count-1}, token_0 .. token_{count-1}], fixed size 1 + 2 * mb size.
    private static void SendControl(ShardComm comm, int stage, int mbSize, List<int> slots, List<int> tokens)
    {
        // On the pinned object heap; a send that failed (its deadline passed) may still be read by the
        // transport later, so its array is kept for good (AbandonedBuffers).
        var msg = GC.AllocateArray<int>(1 + 2 * mbSize, pinned: true);
        msg[0] = slots.Count;
        for (int r = 0; r < slots.Count; r++) { msg[1 + r] = slots[r]; msg[1 + slots.Count + r] = tokens[r]; }
        try { ShardComm.Complete(comm.SendStage(stage, ControlKind, (void*)Marshal.UnsafeAddrOfPinnedArrayElement(msg, 0), msg.Length * 4)); }
        catch { AbandonedBuffers.Keep(msg); throw; }
    }

    private static void ReceiveControl(ShardComm comm, int from, int mbSize, out List<int> slots, out int[] tokens)
    {
        var msg = GC.AllocateArray<int>(1 + 2 * mbSize, pinned: true);   // a failed receive may still write into it: kept
        try { comm.RecvStage(from, ControlKind, (void*)Marshal.UnsafeAddrOfPinnedArrayElement(msg, 0), msg.Length * 4); }
        catch { AbandonedBuffers.Keep(msg); throw; }
        int n = msg[0];
        if ((uint)n > (uint)mbSize) throw new InvalidDataException($"generation control message names {n} sequences of a micro-batch of {mbSize}");
        slots = [.. msg.AsSpan(1, n)];
        tokens = msg.AsSpan(1 + n, n).ToArray();
    }
}

/// <summary>Contiguous, balanced splits of a batch (data-parallel parts, micro-batches).</summary>
internal static class Split
{
    /// <summary>Splits items 0..n-1 with the given sizes (tokens) into <paramref name="parts"/>
    /// contiguous, non-empty groups whose sums are balanced: group g ends where the running sum
    /// first reaches (g+1)/parts of the total. Errors when there are fewer items than parts.</summary>
    public static int[][] Contiguous(IReadOnlyList<int> sizes, int parts)
    {
        int n = sizes.Count;
        if (parts < 1) throw new ArgumentException($"cannot split into {parts} parts");
        if (n < parts) throw new ArgumentException($"{n} sequences cannot be split into {parts} non-empty parts");
        long total = 0;
        foreach (var s in sizes) total += s;
        var result = new int[parts][];
        int start = 0;
        long acc = 0;
        for (int g = 0; g < parts; g++)
        {
            int end = start;
            long target = total * (g + 1) / parts;
            // Take at least one; leave at least one for each later group.
            do { acc += sizes[end]; end++; }
            while (end < n - (parts - 1 - g) && acc + sizes[end] / 2 < target);
            if (g == parts - 1) { while (end < n) acc += sizes[end++]; }
            result[g] = Enumerable.Range(start, end - start).ToArray();
            start = end;
        }
        return result;
    }
}
