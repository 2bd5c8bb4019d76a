using ReaLNative.Engine.Layout;
using ReaLNative.Engine.Transport;
using ReaLNative.Interop;

namespace ReaLNative.Engine.Model;

/// <summary>
/// A LLaMA-family decoder shard with explicit forward and backward over packed sequences. On one
/// device it is the whole model; under a <see cref="ShardComm"/> it is one (pipeline stage,
/// tensor rank) shard: the stage's units (embedding on the first stage, its blocks, norm + head on
/// the last), q/k/v/gate/up column-parallel and o/down row-parallel (one all-reduce after each),
/// vocab-parallel embedding and head (the head's logits all-gathered to [T, vocab], so losses see
/// the whole row on every tensor rank).
/// All parameters live in ONE contiguous buffer laid out by <see cref="LlamaShardLayouts"/> (HF
/// names, unit order), gradients in a parallel buffer of the same layout -- the layout parameter
/// reallocation moves. Actor: language-model head, output logits [T, vocab]. Critic / reward:
/// scalar head "score.weight", output values [T]. A stage that is not the last outputs its hidden
/// states [T, hidden]; one that is not the first takes them as input.
/// Activations live in grow-only arenas, one per activation slot: a forward in slot k keeps what
/// the backward of slot k needs until the next forward in slot k (pipeline schedules keep several
/// micro-batches in flight, one slot each).
/// </summary>
internal sealed unsafe class LlamaModel : IDisposable
{
    private readonly NativeStream _s;
    private readonly HostBlock _params, _grads;
    private readonly List<Arena> _arenas = [new()];
    private readonly List<Saved?> _saved = [null];
    private readonly Layer[] _w, _g;
    private readonly float* _embed, _norm, _head, _gEmbed, _gNorm, _gHead;
    private readonly ShardComm? _comm;
    private readonly nint _pBase;
    private HostBlock? _lp;              // bf16 copy of the parameters (Precision = Bf16), same layout
    private bool _lpStale = true, _masterReleased;
    private readonly int _l0, _nl, _hq, _hkv, _iLocal, _vLocal, _vStart, _headLocal, _tp, _tpRank;

    private struct Layer
    {
        public float* InNorm, Q, K, V, O, PostNorm, GateUp, Down;
    }

    private sealed class Saved
    {
        public int T;
        public int* Tokens, Pos, Cu;
        public int NSeq;
        public float*[] XIn = null!, H1 = null!, R1 = null!, Q = null!, K = null!, V = null!, Att = null!, Lse = null!, X2 = null!, H2 = null!, R2 = null!, GU = null!, A = null!;
        public float* XL, HF, RF, Out;
        public bool Recomputed;
    }

    /// <summary>A single-device model (layout (pp 1, tp 1)); parameters uninitialised until <see cref="InitRandom"/> or a checkpoint load; gradients zero.</summary>
    public LlamaModel(LlamaConfig config, bool scalarHead, NativeStream? stream = null) : this(config, scalarHead, null, stream) { }

    /// <summary>The shard of rank <paramref name="comm"/> (its pipeline stage and tensor rank) of a
    /// model laid out by comm's layout; null = single device. Errors name what does not divide.</summary>
    public LlamaModel(LlamaConfig config, bool scalarHead, ShardComm? comm, NativeStream? stream = null)
    {
        Config = config.Validate();
        ScalarHead = scalarHead;
        _s = stream ?? NativeStream.Cpu();
        _comm = comm;
        int pp = comm?.Pp ?? 1, ppRank = comm?.Pipe ?? 0;
        _tp = comm?.Tp ?? 1;
        _tpRank = comm?.Model ?? 0;
        if (pp > 1 && config.TiedEmbeddings && !scalarHead)
            throw new ArgumentException("tied embeddings need pp = 1 (the head and the embedding share one tensor)");
        Layout = ParamLayout.Create(config, scalarHead, pp, ppRank, _tp, _tpRank);
        _hq = config.Heads / _tp;
        _hkv = config.KvHeads / _tp;
        _iLocal = config.Intermediate / _tp;
        _vLocal = config.Vocab / _tp;
        _vStart = _tpRank * _vLocal;
        _headLocal = scalarHead ? 1 : _vLocal;
        _params = new HostBlock(Math.Max(4, Layout.TotalElements * 4));
        _grads = new HostBlock(Math.Max(4, Layout.TotalElements * 4));
        _grads.AsSpan<float>((int)Layout.TotalElements).Clear();
        float* p = (float*)_params.Pointer, g = (float*)_grads.Pointer;
        _pBase = (nint)p;
        float* View(float* b, string n) => Layout.TryGet(n, out var v) ? b + v.Offset : throw new InvalidOperationException($"no parameter {n}");
        var layers = Enumerable.Range(0, config.Layers).Where(l => Layout.TryGet($"model.layers.{l}.input_layernorm.weight", out _)).ToArray();
        _l0 = layers.Length > 0 ? layers[0] : 0;
        _nl = layers.Length;
        if (_nl > 0 && layers[^1] != _l0 + _nl - 1) throw new InvalidOperationException("layout: a stage's blocks must be contiguous");
        _w = new Layer[_nl];
        _g = new Layer[_nl];
        for (int i = 0; i < _nl; i++)
        {
            string pre = $"model.layers.{_l0 + i}.";
            _w[i] = MakeLayer(p, pre, View);
            _g[i] = MakeLayer(g, pre, View);
            if (View(p, pre + "mlp.up_proj.weight") != _w[i].GateUp + (long)_iLocal * config.Hidden)
                throw new InvalidOperationException("layout: up_proj must follow gate_proj");
        }
        HasEmbedding = Layout.TryGet("model.embed_tokens.weight", out _);
        HasHead = Layout.TryGet("model.norm.weight", out _);
        if (HasEmbedding)
        {
            _embed = View(p, "model.embed_tokens.weight");
            _gEmbed = View(g, "model.embed_tokens.weight");
        }
        if (HasHead)
        {
            _norm = View(p, "model.norm.weight");
            _gNorm = View(g, "model.norm.weight");
            string head = scalarHead ? "score.weight" : config.TiedEmbeddings ? "model.embed_tokens.weight" : "lm_head.weight";
            _head = View(p, head);
            _gHead = View(g, head);
        }
    }

    private delegate float* ViewOf(float* b, string n);

    private static Layer MakeLayer(float* b, string pre, ViewOf view) => new()
    {
        InNorm = view(b, pre + "input_layernorm.weight"),
        Q = view(b, pre + "self_attn.q_proj.weight"),
        K = view(b, pre + "self_attn.k_proj.weight"),
        V = view(b, pre + "self_attn.v_proj.weight"),
        O = view(b, pre + "self_attn.o_proj.weight"),
        PostNorm = view(b, pre + "post_attention_layernorm.weight"),
        GateUp = view(b, pre + "mlp.gate_proj.weight"),  // up_proj follows gate_proj: one [2I, H] matrix
        Down = view(b, pre + "mlp.down_proj.weight"),
    };

    /// <summary>Activation recomputation: forward keeps only each block's input; backward
    /// recomputes the block's intermediates (one extra forward of the blocks, activation memory
    /// ~1/10). Gradients equal those without recomputation. Takes effect at the next Forward.</summary>
    public bool Recompute { get; set; }

    /// <summary>Numeric precision of the weights the forward and backward read (docs/experiment-config.md
    /// `precision`). Bf16: a bf16 copy of the fp32 master parameters feeds every linear layer,
    /// the embedding and the RMSNorm forwards (activations, softmax, norms' statistics, losses and
    /// gradients stay fp32; the optimizer updates the fp32 master). The copy is refreshed before a
    /// forward whenever the master may have changed (any access to <see cref="Parameters"/> or
    /// <see cref="ParametersPointer"/> marks it stale: the optimizer, loads, copies).</summary>
    public ModelPrecision Precision { get; private set; } = ModelPrecision.Fp32;

    /// <summary>True once <see cref="FreezeToBf16"/> dropped the fp32 master and gradients.</summary>
    public bool HoldsBf16Only => _masterReleased;

    private int Wd => Precision == ModelPrecision.Bf16 ? DType.BF16 : DType.F32;

    /// <summary>Switches the model to <paramref name="precision"/>. Bf16 probes the stream's backend
    /// first and throws <see cref="NotSupportedException"/> when it lacks bf16 linear layers.</summary>
    public void SetPrecision(ModelPrecision precision)
    {
        if (_masterReleased && precision != ModelPrecision.Bf16)
            throw new InvalidOperationException("a model frozen to bf16 has no fp32 weights to return to");
        if (precision == ModelPrecision.Bf16 && Precision != ModelPrecision.Bf16)
        {
            ProbeBf16(_s);
            _lp = new HostBlock(Math.Max(2, Layout.TotalElements * 2));
            _lpStale = true;
        }
        else if (precision == ModelPrecision.Fp32 && _lp is not null)
        {
            _lp.Dispose();
            _lp = null;
        }
        Precision = precision;
    }

    /// <summary>Throws <see cref="NotSupportedException"/> unless <paramref name="stream"/>'s backend
    /// runs the bf16 weight ops (a 1 x 1 linear layer is tried).</summary>
    public static void ProbeBf16(NativeStream stream)
    {
        float x = 1, y = 0;
        ushort w = 0x3f80;  // 1.0
        int st = Native.realn_op_linear_fwd(stream.Ptr, DType.BF16, &x, &w, null, &y, 1, 1, 1);
        if (st == (int)RealnStatus.Unsupported)
            throw new NotSupportedException($"the {stream.Backend.ToString().ToLowerInvariant()} backend has no bf16 weight ops: {Native.LastError()}");
        Native.Check(st);
        if (y != 1) throw new InvalidOperationException($"bf16 probe: 1 x 1 linear layer gave {y}, not 1");
    }

    /// <summary>A frozen model (never trained: ref, reward) in bf16 holds its bf16 weights only: the
    /// copy is made now and the fp32 master and gradient buffers are freed (6 of every 8 bytes per
    /// parameter). Afterwards <see cref="Parameters"/>, <see cref="Gradients"/> and Backward throw.</summary>
    public void FreezeToBf16()
    {
        if (_masterReleased) return;
        SetPrecision(ModelPrecision.Bf16);
        RefreshBf16();
        _params.Dispose();
        _grads.Dispose();
        _masterReleased = true;
    }

    /// <summary>The bf16 copy of the parameters (layout order), refreshed from the master if stale.</summary>
    public ReadOnlySpan<ushort> Bf16Parameters
    {
        get
        {
            if (_lp is null) throw new InvalidOperationException("the model is not in bf16 precision");
            RefreshBf16();
            return new(_lp.Pointer, checked((int)Layout.TotalElements));
        }
    }

    /// <summary>Overwrites the bf16 weights of a model that holds bf16 only (a bf16 checkpoint's tensors, layout order).</summary>
    public void LoadBf16(ReadOnlySpan<ushort> values)
    {
        if (!_masterReleased || _lp is null) throw new InvalidOperationException("LoadBf16 is for models frozen to bf16");
        if (values.Length != Layout.TotalElements) throw new ArgumentException($"{values.Length} values for {Layout.TotalElements} parameters");
        values.CopyTo(new Span<ushort>(_lp.Pointer, values.Length));
    }

    private void RefreshBf16()
    {
        if (Precision != ModelPrecision.Bf16 || !_lpStale || _masterReleased) return;
        Ck(Native.realn_op_convert(_s.Ptr, DType.BF16, _lp!.Pointer, DType.F32, _params.Pointer, Layout.TotalElements));
        _lpStale = false;
    }

    // The weight operand of an op: the fp32 master, or its bf16 copy at the same element offset.
    private void* Wt(float* p) =>
        Precision == ModelPrecision.Bf16 ? (byte*)_lp!.Pointer + ((long)p - (long)_pBase) / 2 : p;

    private void ThrowIfBf16Only(string what)
    {
        if (_masterReleased)
            throw new InvalidOperationException($"{what}: this model holds bf16 weights only (frozen with precision bf16); it has no fp32 parameters or gradients");
    }

    /// <summary>The model's architecture.</summary>
    public LlamaConfig Config { get; }
    /// <summary>True for critic / reward models (score.weight, output [T]).</summary>
    public bool ScalarHead { get; }
    /// <summary>The shard's communicators (null on a single device).</summary>
    public ShardComm? Comm => _comm;
    /// <summary>True when this shard holds the embedding (the first pipeline stage): its input is tokens.</summary>
    public bool HasEmbedding { get; }
    /// <summary>True when this shard holds norm + head (the last pipeline stage): its output is logits or values.</summary>
    public bool HasHead { get; }
    /// <summary>The blocks this shard holds: global indices [FirstLayer, FirstLayer + LayerCount).</summary>
    public int FirstLayer => _l0;
    /// <summary>Blocks this shard holds.</summary>
    public int LayerCount => _nl;
    /// <summary>Named views into the flat buffers (see <see cref="ParamLayout"/>).</summary>
    public ShardLayout Layout { get; }
    /// <summary>The native stream every op of this model runs on.</summary>
    public NativeStream Stream => _s;
    /// <summary>Elements of the flat parameter buffer.</summary>
    public long ParameterCount => Layout.TotalElements;
    /// <summary>Columns of the forward output: vocab (logits) or 1 (values); hidden on a stage without the head.
    /// With <see cref="GatherLogits"/> off, a tensor rank's vocab slice.</summary>
    public int OutputWidth => HasHead ? (ScalarHead ? 1 : GatherLogits ? Config.Vocab : _vLocal) : Config.Hidden;

    /// <summary>Language-model head under tensor parallelism: true (default) all-gathers the logits
    /// so Forward returns full rows [T, vocab] and Backward takes full rows; false keeps each rank's
    /// vocab slice [T, vocab / tp] (columns <see cref="VocabStart"/> ..) for vocab-parallel losses
    /// that never materialise whole rows (Parallelism/VocabParallel.cs).</summary>
    public bool GatherLogits { get; set; } = true;
    /// <summary>First vocabulary id of this rank's slice of the embedding and head.</summary>
    public int VocabStart => _vStart;
    /// <summary>Vocabulary ids in this rank's slice.</summary>
    public int VocabLocal => _vLocal;

    /// <summary>The flat fp32 (master) parameter buffer (all views, layout order). Marks a bf16 copy stale.</summary>
    public Span<float> Parameters => new(ParametersPointer, checked((int)Layout.TotalElements));
    /// <summary>The flat gradient buffer, same layout as <see cref="Parameters"/>.</summary>
    public Span<float> Gradients => new(GradientsPointer, checked((int)Layout.TotalElements));
    /// <summary>Raw pointer to the parameter buffer (for native ops and reallocation). Marks a bf16 copy stale.</summary>
    public float* ParametersPointer
    {
        get
        {
            ThrowIfBf16Only("parameters");
            _lpStale = true;
            return (float*)_params.Pointer;
        }
    }
    /// <summary>Raw pointer to the gradient buffer.</summary>
    public float* GradientsPointer
    {
        get
        {
            ThrowIfBf16Only("gradients");
            return (float*)_grads.Pointer;
        }
    }

    /// <summary>The parameters of one HF-named view (local shard shape, row-major).</summary>
    public Span<float> View(string name) =>
        Layout.TryGet(name, out var v) ? Parameters.Slice(checked((int)v.Offset), checked((int)v.LocalElements))
            : throw new ArgumentException($"model has no parameter '{name}'");

    /// <summary>Initialises like HF LLaMA: normal(0, 0.02) weights, norms 1; seeded. Each tensor
    /// draws from its own stream seeded by (seed, name) over the GLOBAL tensor, and a shard keeps
    /// its slice, so every layout initialises the same model.</summary>
    public void InitRandom(int seed, float std = 0.02f)
    {
        var all = Parameters;
        foreach (var v in Layout.Views)
        {
            var s = all.Slice((int)v.Offset, (int)v.LocalElements);
            if (v.GlobalShape.Length == 1) { s.Fill(1f); continue; }
            var rng = new Random(unchecked(seed * 1000003 ^ StableHash(v.Name)));  // not HashCode: it is salted per process
            long total = v.GlobalShape.Aggregate(1L, (a, b) => a * b);
            var full = new float[total];
            for (long i = 0; i < total; i += 2)
            {
                double u1 = 1.0 - rng.NextDouble(), u2 = rng.NextDouble(), r = Math.Sqrt(-2 * Math.Log(u1));
                full[i] = (float)(std * r * Math.Cos(2 * Math.PI * u2));
                if (i + 1 < total) full[i + 1] = (float)(std * r * Math.Sin(2 * Math.PI * u2));
            }
            CopySlice(v, full, s);
        }
    }

    /// <summary>Copies this shard's slice of a global row-major tensor into <paramref name="dst"/>.</summary>
    internal static void CopySlice(ShardView v, ReadOnlySpan<float> global, Span<float> dst)
    {
        if (v.SplitDim < 0) { global.CopyTo(dst); return; }
        // Rows before the split dim, the split dim, elements after it.
        long outer = 1, inner = 1;
        for (int d = 0; d < v.SplitDim; d++) outer *= v.GlobalShape[d];
        for (int d = v.SplitDim + 1; d < v.GlobalShape.Length; d++) inner *= v.GlobalShape[d];
        long full = v.GlobalShape[v.SplitDim];
        int run = (int)(v.SliceLength * inner);
        for (long o = 0; o < outer; o++)
            global.Slice((int)((o * full + v.SliceStart) * inner), run).CopyTo(dst.Slice((int)(o * run), run));
    }

    private static int StableHash(string s)
    {
        uint h = 2166136261;
        foreach (char ch in s) h = (h ^ ch) * 16777619;
        return (int)h;
    }

    /// <summary>Copies all parameters of a model of the same layout (e.g. reference model from actor).</summary>
    public void CopyParametersFrom(LlamaModel other)
    {
        if (other.Layout.TotalElements != Layout.TotalElements || other.ScalarHead != ScalarHead)
            throw new ArgumentException("models differ in layout");
        other.Parameters.CopyTo(Parameters);
    }

    /// <summary>Zeroes the gradient buffer.</summary>
    public void ZeroGrad() => Gradients.Clear();

    private long ArenaFloats(int T, int nseq, bool recompute)
    {
        var c = Config;
        long H = c.Hidden, qd = _hq * c.HeadDim, kd = _hkv * c.HeadDim, I = _iLocal, W = OutputWidth;
        long perLayer = 3 * T * H + 2 * T + 2 * T * qd + 2 * T * kd + T * _hq + T * H + 3 * T * I + 13 * 16;
        long fin = 2 * T * H + T + T * W + T * (long)_headLocal * (_tp > 1 ? _tp : 0) + T * H + 6 * 16;
        long ints = 3 * (T + nseq + 1) + 48;
        long bwd = 3 * T * H + 2 * T * qd + 2 * T * kd + 3 * T * I + 2 * T * W + 16 * 16;
        long blocks = recompute ? _nl * (T * H + 16) + perLayer : _nl * (perLayer + T * H + 16);
        return blocks + fin + ints + bwd;
    }

    private static void Ck(int st) => Native.Check(st);

    private Arena SlotArena(int slot)
    {
        if (slot < 0 || slot > 64) throw new ArgumentOutOfRangeException(nameof(slot), $"activation slot {slot} outside 0..64");
        while (_arenas.Count <= slot) { _arenas.Add(new Arena()); _saved.Add(null); }
        return _arenas[slot];
    }

    /// <summary>Forward over a packed batch. Returns the output [T, OutputWidth] in the arena
    /// (valid until the next forward): logits, or values for a scalar head.</summary>
    public float* Forward(PackedBatch batch) => Forward(batch, null, 0);

    /// <summary>Forward of this shard in activation slot <paramref name="slot"/>. A stage without
    /// the embedding takes the previous stage's hidden states [T, hidden] in <paramref name="input"/>;
    /// returns [T, <see cref="OutputWidth"/>] (valid until the next forward in that slot).</summary>
    public float* Forward(PackedBatch batch, float* input, int slot)
    {
        var c = Config;
        int T = batch.TotalTokens;
        if (HasEmbedding)
        {
            foreach (var t in batch.Tokens)
                if ((uint)t >= (uint)c.Vocab) throw new ArgumentException($"token id {t} outside the vocabulary [0, {c.Vocab})");
        }
        else if (input is null) throw new ArgumentException("a pipeline stage without the embedding needs the previous stage's hidden states");
        foreach (var l in batch.SeqLens)
            if (l > c.MaxPositions) throw new ArgumentException($"sequence of {l} tokens exceeds max_position_embeddings {c.MaxPositions}");
        RefreshBf16();
        var arena = SlotArena(slot);
        arena.Reset(ArenaFloats(T, batch.Count, Recompute));
        var sv = new Saved { T = T, NSeq = batch.Count };
        sv.Tokens = (int*)arena.Take(T);
        sv.Pos = (int*)arena.Take(T);
        sv.Cu = (int*)arena.Take(batch.Count + 1);
        batch.Tokens.CopyTo(new Span<int>(sv.Tokens, T));
        batch.Positions.CopyTo(new Span<int>(sv.Pos, T));
        batch.CuSeqlens.CopyTo(new Span<int>(sv.Cu, batch.Count + 1));
        int L = _nl;
        sv.XIn = new float*[L]; sv.H1 = new float*[L]; sv.R1 = new float*[L]; sv.Q = new float*[L]; sv.K = new float*[L];
        sv.V = new float*[L]; sv.Att = new float*[L]; sv.Lse = new float*[L]; sv.X2 = new float*[L]; sv.H2 = new float*[L];
        sv.R2 = new float*[L]; sv.GU = new float*[L]; sv.A = new float*[L];
        long H = c.Hidden;
        nint s = _s.Ptr;
        float* x = arena.Take(T * H);
        if (HasEmbedding)
        {
            Ck(Native.realn_op_embedding_fwd(s, Wd, sv.Tokens, T, Wt(_embed), _vLocal, H, _vStart, x));
            TpAllReduce(x, T * H);
        }
        else Buffer.MemoryCopy(input, x, T * H * 4, T * H * 4);
        bool rc = Recompute;
        float*[]? shared = rc ? TakeLayerScratch(arena, T) : null;
        for (int l = 0; l < L; l++)
        {
            sv.XIn[l] = x;
            AssignScratch(sv, l, rc ? shared! : TakeLayerScratch(arena, T));
            float* xo = arena.Take(T * H);
            LayerForward(l, sv, x, xo);
            x = xo;
        }
        sv.Recomputed = rc;
        sv.XL = x;
        _saved[slot] = sv;
        if (!HasHead)
        {
            sv.Out = x;
            return x;
        }
        sv.HF = arena.Take(T * H);
        sv.RF = arena.Take(T);
        Ck(Native.realn_op_rmsnorm_fwd(s, Wd, x, Wt(_norm), sv.HF, sv.RF, T, H, c.RmsEps));
        sv.Out = arena.Take((long)T * OutputWidth);
        if (_tp == 1 || ScalarHead || !GatherLogits)
            Ck(Native.realn_op_linear_fwd(s, Wd, sv.HF, Wt(_head), null, sv.Out, T, H, _headLocal));
        else
        {
            float* parts = arena.Take((long)_tp * T * _vLocal);
            Ck(Native.realn_op_linear_fwd(s, Wd, sv.HF, Wt(_head), null, parts + (long)_tpRank * T * _vLocal, T, H, _vLocal));
            GatherColumns(parts, sv.Out, T);
        }
        return sv.Out;
    }

    private void TpAllReduce(float* x, long n)
    {
        if (_tp > 1) _comm!.TpAllReduce(x, n);
    }

    /// <summary>Vocab-parallel head: all-gathers the tensor ranks' [rows, V/tp] blocks (rank r's at
    /// parts + r*rows*V/tp) and interleaves them into full rows [rows, V].</summary>
    private void GatherColumns(float* parts, float* full, int rows)
    {
        _comm!.TpAllGather(parts, (long)_tp * rows * _vLocal);
        long V = Config.Vocab, vl = _vLocal;
        for (int r = 0; r < _tp; r++)
            for (long t = 0; t < rows; t++)
                Buffer.MemoryCopy(parts + (r * rows + t) * vl, full + t * V + r * vl, vl * 4, vl * 4);
    }

    /// <summary>The per-layer activations backward needs, as one set of arena buffers:
    /// h1, r1, q, k, v, att, lse, x2, h2, r2, gu, a.</summary>
    private float*[] TakeLayerScratch(Arena arena, int T)
    {
        var c = Config;
        long H = c.Hidden, qd = _hq * c.HeadDim, kd = _hkv * c.HeadDim, I = _iLocal;
        return [arena.Take(T * H), arena.Take(T), arena.Take(T * qd), arena.Take(T * kd), arena.Take(T * kd),
            arena.Take(T * qd), arena.Take(T * _hq), arena.Take(T * H), arena.Take(T * H), arena.Take(T),
            arena.Take(T * 2 * I), arena.Take(T * I)];
    }

    private static void AssignScratch(Saved sv, int l, float*[] b)
    {
        sv.H1[l] = b[0]; sv.R1[l] = b[1]; sv.Q[l] = b[2]; sv.K[l] = b[3]; sv.V[l] = b[4]; sv.Att[l] = b[5];
        sv.Lse[l] = b[6]; sv.X2[l] = b[7]; sv.H2[l] = b[8]; sv.R2[l] = b[9]; sv.GU[l] = b[10]; sv.A[l] = b[11];
    }

    /// <summary>Block l (local index): xo = x2 + down(swiglu(gate_up(norm2(x2)))), x2 = x + o(attn(rope(q), rope(k), v)(norm1(x))),
    /// keeping its intermediates in sv's buffers of layer l. Under tensor parallelism q/k/v/gate_up
    /// produce this rank's heads / columns and the o / down outputs are all-reduced.</summary>
    private void LayerForward(int l, Saved sv, float* x, float* xo)
    {
        var c = Config;
        int T = sv.T;
        long H = c.Hidden, qd = _hq * c.HeadDim, kd = _hkv * c.HeadDim, I = _iLocal;
        nint s = _s.Ptr;
        float scale = 1f / MathF.Sqrt(c.HeadDim);
        ref var w = ref _w[l];
        float* h1 = sv.H1[l], r1 = sv.R1[l], q = sv.Q[l], k = sv.K[l], v = sv.V[l], att = sv.Att[l], lse = sv.Lse[l];
        float* x2 = sv.X2[l], h2 = sv.H2[l], r2 = sv.R2[l], gu = sv.GU[l], a = sv.A[l];
        Ck(Native.realn_op_rmsnorm_fwd(s, Wd, x, Wt(w.InNorm), h1, r1, T, H, c.RmsEps));
        Ck(Native.realn_op_linear_fwd(s, Wd, h1, Wt(w.Q), null, q, T, H, qd));
        Ck(Native.realn_op_linear_fwd(s, Wd, h1, Wt(w.K), null, k, T, H, kd));
        Ck(Native.realn_op_linear_fwd(s, Wd, h1, Wt(w.V), null, v, T, H, kd));
        Ck(Native.realn_op_rotary_fwd(s, DType.F32, q, sv.Pos, q, T, _hq, c.HeadDim, c.HeadDim, c.RopeTheta));
        Ck(Native.realn_op_rotary_fwd(s, DType.F32, k, sv.Pos, k, T, _hkv, c.HeadDim, c.HeadDim, c.RopeTheta));
        Ck(Native.realn_op_attention_fwd(s, DType.F32, q, k, v, sv.Cu, sv.NSeq, T, _hq, _hkv, c.HeadDim, scale, att, lse));
        Ck(Native.realn_op_linear_fwd(s, Wd, att, Wt(w.O), null, x2, T, qd, H));
        TpAllReduce(x2, T * H);
        Ck(Native.realn_op_add(s, DType.F32, T * H, x2, x, x2));
        Ck(Native.realn_op_rmsnorm_fwd(s, Wd, x2, Wt(w.PostNorm), h2, r2, T, H, c.RmsEps));
        Ck(Native.realn_op_linear_fwd(s, Wd, h2, Wt(w.GateUp), null, gu, T, H, 2 * I));
        Ck(Native.realn_op_swiglu_fwd(s, DType.F32, gu, gu + I, 2 * I, a, I, T, I));
        Ck(Native.realn_op_linear_fwd(s, Wd, a, Wt(w.Down), null, xo, T, I, H));
        TpAllReduce(xo, T * H);
        Ck(Native.realn_op_add(s, DType.F32, T * H, xo, x2, xo));
    }

    /// <summary>Scratch of [T, OutputWidth] for the caller's output gradient (valid until the
    /// next forward).</summary>
    public float* OutputGradientBuffer() => OutputGradientBuffer(0);

    /// <summary>Scratch of [T, OutputWidth] in slot <paramref name="slot"/>'s arena (valid until its next forward).</summary>
    public float* OutputGradientBuffer(int slot)
    {
        var sv = SavedOf(slot);
        return _arenas[slot].Take((long)sv.T * OutputWidth);
    }

    private Saved SavedOf(int slot) =>
        (uint)slot < (uint)_saved.Count && _saved[slot] is { } sv ? sv : throw new InvalidOperationException($"Backward needs a Forward first (slot {slot})");

    /// <summary>Backward from dOut [T, OutputWidth]; gradients ACCUMULATE into
    /// <see cref="Gradients"/> (call <see cref="ZeroGrad"/> before the first micro-batch).</summary>
    public void Backward(float* dOut) => Backward(dOut, 0);

    /// <summary>Backward of slot <paramref name="slot"/>'s forward from dOut [T, OutputWidth] (the
    /// full logits / values gradient on the last stage, every tensor rank the same; the gradient of
    /// the stage's output hidden states elsewhere). Returns the gradient of the stage's input
    /// hidden states [T, hidden] for the previous stage (valid until the slot's next forward), or
    /// null on the first stage.</summary>
    public float* Backward(float* dOut, int slot)
    {
        ThrowIfBf16Only("Backward");
        var sv = SavedOf(slot);
        var arena = _arenas[slot];
        var c = Config;
        int T = sv.T;
        long H = c.Hidden, qd = _hq * c.HeadDim, kd = _hkv * c.HeadDim, I = _iLocal;
        nint s = _s.Ptr;
        float* dX = arena.Take(T * H), dH = arena.Take(T * H), dT = arena.Take(T * H);
        float* dAtt = arena.Take(T * qd), dQ = arena.Take(T * qd), dK = arena.Take(T * kd), dV = arena.Take(T * kd);
        float* dGU = arena.Take(T * 2 * I), dA = arena.Take(T * I);
        if (HasHead)
        {
            float* dLocal = dOut;
            if (_tp > 1 && !ScalarHead && GatherLogits)
            {
                // This rank's vocab columns of the full logits gradient.
                dLocal = arena.Take((long)T * _vLocal);
                long V = c.Vocab, vl = _vLocal;
                for (long t = 0; t < T; t++) Buffer.MemoryCopy(dOut + t * V + _vStart, dLocal + t * vl, vl * 4, vl * 4);
            }
            Ck(Native.realn_op_linear_bwd(s, Wd, sv.HF, Wt(_head), dLocal, dH, _gHead, null, T, H, _headLocal, 0));
            if (!ScalarHead) TpAllReduce(dH, T * H);  // a replicated scalar head gives every rank the whole dH
            Ck(Native.realn_op_rmsnorm_bwd(s, DType.F32, sv.XL, _norm, sv.RF, dH, dX, _gNorm, T, H));
        }
        else Buffer.MemoryCopy(dOut, dX, T * H * 4, T * H * 4);
        float scale = 1f / MathF.Sqrt(c.HeadDim);
        for (int l = _nl - 1; l >= 0; l--)
        {
            if (sv.Recomputed) LayerForward(l, sv, sv.XIn[l], dT);  // dT: scratch for the unused block output
            ref var w = ref _w[l];
            ref var g = ref _g[l];
            // xo = x2 + down(swiglu(gate_up(norm2(x2))))
            Ck(Native.realn_op_linear_bwd(s, Wd, sv.A[l], Wt(w.Down), dX, dA, g.Down, null, T, I, H, 0));
            Ck(Native.realn_op_swiglu_bwd(s, DType.F32, sv.GU[l], sv.GU[l] + I, 2 * I, dA, I, dGU, dGU + I, T, I));
            Ck(Native.realn_op_linear_bwd(s, Wd, sv.H2[l], Wt(w.GateUp), dGU, dH, g.GateUp, null, T, H, 2 * I, 0));
            TpAllReduce(dH, T * H);
            Ck(Native.realn_op_rmsnorm_bwd(s, DType.F32, sv.X2[l], w.PostNorm, sv.R2[l], dH, dT, g.PostNorm, T, H));
            Ck(Native.realn_op_add(s, DType.F32, T * H, dX, dT, dX));
            // x2 = xin + o(attn(rope(q(h1)), rope(k(h1)), v(h1))), h1 = norm1(xin)
            Ck(Native.realn_op_linear_bwd(s, Wd, sv.Att[l], Wt(w.O), dX, dAtt, g.O, null, T, qd, H, 0));
            Ck(Native.realn_op_attention_bwd(s, DType.F32, sv.Q[l], sv.K[l], sv.V[l], sv.Att[l], sv.Lse[l], dAtt, sv.Cu, sv.NSeq, T,
                _hq, _hkv, c.HeadDim, scale, dQ, dK, dV));
            Ck(Native.realn_op_rotary_bwd(s, DType.F32, dQ, sv.Pos, dQ, T, _hq, c.HeadDim, c.HeadDim, c.RopeTheta));
            Ck(Native.realn_op_rotary_bwd(s, DType.F32, dK, sv.Pos, dK, T, _hkv, c.HeadDim, c.HeadDim, c.RopeTheta));
            Ck(Native.realn_op_linear_bwd(s, Wd, sv.H1[l], Wt(w.Q), dQ, dH, g.Q, null, T, H, qd, 0));
            Ck(Native.realn_op_linear_bwd(s, Wd, sv.H1[l], Wt(w.K), dK, dH, g.K, null, T, H, kd, 1));
            Ck(Native.realn_op_linear_bwd(s, Wd, sv.H1[l], Wt(w.V), dV, dH, g.V, null, T, H, kd, 1));
            TpAllReduce(dH, T * H);
            Ck(Native.realn_op_rmsnorm_bwd(s, DType.F32, sv.XIn[l], w.InNorm, sv.R1[l], dH, dT, g.InNorm, T, H));
            Ck(Native.realn_op_add(s, DType.F32, T * H, dX, dT, dX));
        }
        if (!HasEmbedding) return dX;
        Ck(Native.realn_op_embedding_bwd(s, DType.F32, sv.Tokens, T, dX, _vLocal, H, _vStart, _gEmbed));
        return null;
    }

    /// <summary>Sum of squares of this shard's gradients, counting tensors replicated over the
    /// tensor-parallel group (norms, scalar head) on tensor rank 0 only: summed over the shards of
    /// one data replica it is the squared global gradient norm.</summary>
    public double GradSumSquaresForNorm()
    {
        double ss = 0;
        foreach (var v in Layout.Views)
        {
            if (_tp > 1 && v.SplitDim < 0 && _tpRank != 0) continue;
            double part;
            Ck(Native.realn_op_sumsq(_s.Ptr, GradientsPointer + v.Offset, v.LocalElements, &part));
            ss += part;
        }
        return ss;
    }

    // ------------------------------------------------------------------ KV-cache inference
    /// <summary>Runs the trunk for new tokens of sequences held in <paramref name="cache"/>:
    /// tokens[i] belongs to slot slots[i] at position positions[i]; K/V are stored, attention
    /// reads the cache up to and including that position (prefill: a whole prompt per slot, in
    /// order; decode: one token per slot). Writes the head output of the LAST token of each run of
    /// tokens of one slot into <paramref name="outRows"/> ([runs, OutputWidth]).</summary>
    internal void ForwardCached(KvCache cache, int[] tokens, int[] slots, int[] positions, bool decode, float* outRows) =>
        ForwardCached(cache, tokens, slots, positions, decode, null, outRows);

    /// <summary><see cref="ForwardCached(KvCache, int[], int[], int[], bool, float*)"/> of a
    /// pipeline stage: without the embedding it reads the previous stage's hidden states [T, hidden]
    /// from <paramref name="input"/>; without the head it writes its hidden states [T, hidden] to
    /// <paramref name="output"/> (every token: the next stage stores their K/V).</summary>
    internal void ForwardCached(KvCache cache, int[] tokens, int[] slots, int[] positions, bool decode, float* input, float* output)
    {
        var c = Config;
        int T = tokens.Length;
        long H = c.Hidden, qd = _hq * c.HeadDim, kd = _hkv * c.HeadDim, I = _iLocal;
        if (cache.Layers != _nl || cache.KvHeads != _hkv)
            throw new ArgumentException($"KV cache holds {cache.Layers} layers of {cache.KvHeads} kv heads; this shard has {_nl} of {_hkv}");
        if (!HasEmbedding && input is null) throw new ArgumentException("a pipeline stage without the embedding needs the previous stage's hidden states");
        // Runs: maximal groups of consecutive tokens of one slot (prefill) or single tokens (decode).
        var runEnds = new List<int>();
        for (int i = 0; i < T; i++)
            if (decode || i == T - 1 || slots[i + 1] != slots[i]) runEnds.Add(i);
        int R = runEnds.Count;
        _saved[0] = null;
        RefreshBf16();
        var arena = _arenas[0];
        arena.Reset(7 * T * H + 3 * T * qd + 4 * T * kd + 3 * T * I + T * _hq + 4L * T + 3L * R + (long)R * H * 2
            + (long)R * _headLocal * _tp + 64 * 16);
        int* tok = (int*)arena.Take(T), pos = (int*)arena.Take(T), sl = (int*)arena.Take(T);
        tokens.CopyTo(new Span<int>(tok, T));
        positions.CopyTo(new Span<int>(pos, T));
        slots.CopyTo(new Span<int>(sl, T));
        int* cu = (int*)arena.Take(R + 1), rs = (int*)arena.Take(R), lens = (int*)arena.Take(R);
        cu[0] = 0;
        for (int r = 0; r < R; r++)
        {
            cu[r + 1] = runEnds[r] + 1;
            rs[r] = slots[runEnds[r]];
            lens[r] = positions[runEnds[r]] + 1;
            if (!decode && positions[cu[r]] != 0) throw new ArgumentException("prefill runs must start at position 0");
        }
        nint s = _s.Ptr;
        float* x = arena.Take(T * H), h = arena.Take(T * H), x2 = arena.Take(T * H);
        float* qkv = arena.Take(T * (qd + 2 * kd)), q0 = arena.Take(T * qd), k0 = arena.Take(T * kd), v0 = arena.Take(T * kd), att = arena.Take(T * qd), lse = arena.Take(T * _hq);
        float* gu = arena.Take(T * 2 * I), a = arena.Take(T * I);
        if (HasEmbedding)
        {
            Ck(Native.realn_op_embedding_fwd(s, Wd, tok, T, Wt(_embed), _vLocal, H, _vStart, x));
            TpAllReduce(x, T * H);
        }
        else Buffer.MemoryCopy(input, x, T * H * 4, T * H * 4);
        float scale = 1f / MathF.Sqrt(c.HeadDim);
        for (int l = 0; l < _nl; l++)
        {
            ref var w = ref _w[l];
            float* q = q0, k = k0, v = v0;
            Ck(Native.realn_op_rmsnorm_fwd(s, Wd, x, Wt(w.InNorm), h, null, T, H, c.RmsEps));
            if (decode && w.K == w.Q + qd * H && w.V == w.K + kd * H)
            {
                // Decode: q, k, v are consecutive rows of one [qd + 2 kd, H] matrix, so one call
                // streams all three; rows of its output are q | k | v (one token: used in place).
                long qkvw = qd + 2 * kd;
                Ck(Native.realn_op_linear_fwd(s, Wd, h, Wt(w.Q), null, qkv, T, H, qkvw));
                if (T == 1) { q = qkv; k = qkv + qd; v = k + kd; }
                else
                    for (long t = 0; t < T; t++)
                    {
                        Buffer.MemoryCopy(qkv + t * qkvw, q + t * qd, qd * 4, qd * 4);
                        Buffer.MemoryCopy(qkv + t * qkvw + qd, k + t * kd, kd * 4, kd * 4);
                        Buffer.MemoryCopy(qkv + t * qkvw + qd + kd, v + t * kd, kd * 4, kd * 4);
                    }
            }
            else
            {
                Ck(Native.realn_op_linear_fwd(s, Wd, h, Wt(w.Q), null, q, T, H, qd));
                Ck(Native.realn_op_linear_fwd(s, Wd, h, Wt(w.K), null, k, T, H, kd));
                Ck(Native.realn_op_linear_fwd(s, Wd, h, Wt(w.V), null, v, T, H, kd));
            }
            Ck(Native.realn_op_rotary_fwd(s, DType.F32, q, pos, q, T, _hq, c.HeadDim, c.HeadDim, c.RopeTheta));
            Ck(Native.realn_op_rotary_fwd(s, DType.F32, k, pos, k, T, _hkv, c.HeadDim, c.HeadDim, c.RopeTheta));
            Ck(Native.realn_op_kv_store(s, DType.F32, k, v, sl, pos, T, cache.K(l), cache.V(l), cache.Slots, cache.MaxLen, _hkv, c.HeadDim));
            if (decode)
                Ck(Native.realn_op_attention_decode(s, DType.F32, q, cache.K(l), cache.V(l), rs, lens, R, cache.Slots, cache.MaxLen,
                    _hq, _hkv, c.HeadDim, scale, att));
            else
                Ck(Native.realn_op_attention_fwd(s, DType.F32, q, k, v, cu, R, T, _hq, _hkv, c.HeadDim, scale, att, lse));
            Ck(Native.realn_op_linear_fwd(s, Wd, att, Wt(w.O), null, x2, T, qd, H));
            TpAllReduce(x2, T * H);
            Ck(Native.realn_op_add(s, DType.F32, T * H, x2, x, x2));
            Ck(Native.realn_op_rmsnorm_fwd(s, Wd, x2, Wt(w.PostNorm), h, null, T, H, c.RmsEps));
            Ck(Native.realn_op_linear_fwd(s, Wd, h, Wt(w.GateUp), null, gu, T, H, 2 * I));
            Ck(Native.realn_op_swiglu_fwd(s, DType.F32, gu, gu + I, 2 * I, a, I, T, I));
            Ck(Native.realn_op_linear_fwd(s, Wd, a, Wt(w.Down), null, x, T, I, H));
            TpAllReduce(x, T * H);
            Ck(Native.realn_op_add(s, DType.F32, T * H, x, x2, x));
        }
        if (!HasHead)
        {
            Buffer.MemoryCopy(x, output, T * H * 4, T * H * 4);
            return;
        }
        // Head on the last token of each run only.
        float* last = arena.Take(R * H), hl = arena.Take(R * H);
        for (int r = 0; r < R; r++)
            Buffer.MemoryCopy(x + (long)runEnds[r] * H, last + r * H, H * 4, H * 4);
        Ck(Native.realn_op_rmsnorm_fwd(s, Wd, last, Wt(_norm), hl, null, R, H, c.RmsEps));
        if (_tp == 1 || ScalarHead)  // sampling needs whole rows: always gathered
            Ck(Native.realn_op_linear_fwd(s, Wd, hl, Wt(_head), null, output, R, H, _headLocal));
        else
        {
            float* parts = arena.Take((long)_tp * R * _vLocal);
            Ck(Native.realn_op_linear_fwd(s, Wd, hl, Wt(_head), null, parts + (long)_tpRank * R * _vLocal, R, H, _vLocal));
            GatherColumns(parts, output, R);
        }
    }

    /// <summary>A KV cache for this shard (its blocks and kv heads) of <paramref name="slots"/> sequences.</summary>
    public KvCache NewKvCache(int slots, int maxLen) => new(Config, slots, maxLen, _nl, _hkv);

    /// <summary>Frees parameters, gradients and activations.</summary>
    public void Dispose()
    {
        foreach (var a in _arenas) a.Dispose();
        _params.Dispose();
        _grads.Dispose();
        _lp?.Dispose();
    }
}

/// <summary>Weight precision of a model (experiment `precision`): fp32, or bf16 weights with fp32
/// master parameters, optimizer state, activations and losses.</summary>
internal enum ModelPrecision
{
    Fp32 = 0,
    Bf16 = 1,
}

/// <summary>Slot-based KV cache for generation: per layer K and V of [slots, max_len, kv_heads, head_dim].</summary>
internal sealed unsafe class KvCache : IDisposable
{
    private readonly HostBlock _block;
    private readonly long _perLayer;

    /// <summary>Cache of a whole single-device model for <paramref name="slots"/> sequences of up to <paramref name="maxLen"/> tokens.</summary>
    public KvCache(LlamaConfig c, int slots, int maxLen) : this(c, slots, maxLen, c.Layers, c.KvHeads) { }

    internal KvCache(LlamaConfig c, int slots, int maxLen, int layers, int kvHeads)
    {
        if (slots <= 0 || maxLen <= 0) throw new ArgumentException($"KV cache needs slots > 0 and max_len > 0 (got {slots}, {maxLen})");
        if (maxLen > c.MaxPositions) throw new ArgumentException($"KV cache length {maxLen} exceeds max_position_embeddings {c.MaxPositions}");
        Slots = slots;
        MaxLen = maxLen;
        Layers = layers;
        KvHeads = kvHeads;
        HeadDim = c.HeadDim;
        _perLayer = (long)slots * maxLen * kvHeads * c.HeadDim;
        _block = new HostBlock(Math.Max(64, 2 * layers * _perLayer * 4));
    }

    /// <summary>Sequences the cache holds.</summary>
    public int Slots { get; }
    /// <summary>Tokens per sequence.</summary>
    public int MaxLen { get; }
    /// <summary>Blocks whose K/V it holds.</summary>
    public int Layers { get; }
    /// <summary>Key/value heads per block it holds.</summary>
    public int KvHeads { get; }
    /// <summary>Width of a key/value head.</summary>
    public int HeadDim { get; }
    /// <summary>Copies the K/V of positions [0, length) of slot <paramref name="from"/> into slot
    /// <paramref name="to"/> in every layer (a shared prompt prefix: prefilled once, used by many).</summary>
    public void CopyPrefix(int from, int to, int length)
    {
        if ((uint)from >= (uint)Slots || (uint)to >= (uint)Slots) throw new ArgumentOutOfRangeException(nameof(to), $"KV slots {from} -> {to} outside 0..{Slots - 1}");
        if (length < 0 || length > MaxLen) throw new ArgumentOutOfRangeException(nameof(length), $"prefix of {length} tokens outside 0..{MaxLen}");
        if (from == to || length == 0) return;
        long row = (long)KvHeads * HeadDim, bytes = length * row * 4;
        for (int l = 0; l < Layers; l++)
        {
            Buffer.MemoryCopy(K(l) + (long)from * MaxLen * row, K(l) + (long)to * MaxLen * row, bytes, bytes);
            Buffer.MemoryCopy(V(l) + (long)from * MaxLen * row, V(l) + (long)to * MaxLen * row, bytes, bytes);
        }
    }
    /// <summary>Keys of a layer: [slots, max_len, kv_heads, head_dim].</summary>
    public float* K(int layer) => (float*)_block.Pointer + 2 * layer * _perLayer;
    /// <summary>Values of a layer: [slots, max_len, kv_heads, head_dim].</summary>
    public float* V(int layer) => (float*)_block.Pointer + (2 * layer + 1) * _perLayer;
    public void Dispose() => _block.Dispose();
}
