using ReaLNative.Engine.Realloc;
using ReaLNative.Interop;

namespace ReaLNative.Engine.Model;

/// <summary>
/// A LLaMA-family decoder on one device with explicit forward and backward over packed sequences.
/// All parameters live in ONE contiguous buffer laid out by <see cref="LlamaShardLayouts"/> (HF
/// names, unit order: embedding, blocks, norm + head), gradients in a parallel buffer of the same
/// layout -- the layout parameter reallocation moves. Actor: language-model head, output logits
/// [T, vocab]. Critic / reward: scalar head "score.weight", output values [T].
/// Activations live in a grow-only arena; <see cref="Forward"/> keeps what <see cref="Backward"/>
/// needs until the next forward.
/// </summary>
internal unsafe class LlamaModel : IDisposable
{
    private readonly NativeStream _s;
    private readonly HostBlock _params, _grads;
    private readonly Arena _arena = new();
    private readonly Layer[] _w, _g;
    private readonly float* _embed, _norm, _head, _gEmbed, _gNorm, _gHead;
    private Saved? _saved;

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
    public LlamaModel(LlamaConfig config, bool scalarHead, NativeStream? stream = null)
    {
        Config = config.Validate();
        ScalarHead = scalarHead;
        _s = stream ?? NativeStream.Cpu();
        Layout = ParamLayout.Create(config, scalarHead);
        _params = new HostBlock(Math.Max(4, Layout.TotalElements * 4));
        _grads = new HostBlock(Math.Max(4, Layout.TotalElements * 4));
        _grads.AsSpan<float>((int)Layout.TotalElements).Clear();
        _w = new Layer[config.Layers];
        _g = new Layer[config.Layers];
        float* p = (float*)_params.Pointer, g = (float*)_grads.Pointer;
        float* View(float* b, string n) => Layout.TryGet(n, out var v) ? b + v.Offset : throw new InvalidOperationException($"no parameter {n}");
        for (int l = 0; l < config.Layers; l++)
        {
            string pre = $"model.layers.{l}.";
            _w[l] = MakeLayer(p, pre, View);
            _g[l] = MakeLayer(g, pre, View);
            if (View(p, pre + "mlp.up_proj.weight") != _w[l].GateUp + (long)config.Intermediate * config.Hidden)
                throw new InvalidOperationException("layout: up_proj must follow gate_proj");
        }
        _embed = View(p, "model.embed_tokens.weight");
        _gEmbed = View(g, "model.embed_tokens.weight");
        _norm = View(p, "model.norm.weight");
        _gNorm = View(g, "model.norm.weight");
        string head = scalarHead ? "score.weight" : config.TiedEmbeddings ? "model.embed_tokens.weight" : "lm_head.weight";
        _head = View(p, head);
        _gHead = View(g, head);
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

    /// <summary>The model's architecture.</summary>
    public LlamaConfig Config { get; }
    /// <summary>True for critic / reward models (score.weight, output [T]).</summary>
    public bool ScalarHead { get; }
    /// <summary>Named views into the flat buffers (see <see cref="ParamLayout"/>).</summary>
    public ShardLayout Layout { get; }
    /// <summary>The native stream every op of this model runs on.</summary>
    public NativeStream Stream => _s;
    /// <summary>Elements of the flat parameter buffer.</summary>
    public long ParameterCount => Layout.TotalElements;
    /// <summary>Columns of the forward output: vocab (logits) or 1 (values).</summary>
    public int OutputWidth => ScalarHead ? 1 : Config.Vocab;

    /// <summary>The flat parameter buffer (all views, layout order).</summary>
    public Span<float> Parameters => new(_params.Pointer, checked((int)Layout.TotalElements));
    /// <summary>The flat gradient buffer, same layout as <see cref="Parameters"/>.</summary>
    public Span<float> Gradients => new(_grads.Pointer, checked((int)Layout.TotalElements));
    /// <summary>Raw pointer to the parameter buffer (for native ops and reallocation).</summary>
    public float* ParametersPointer => (float*)_params.Pointer;
    /// <summary>Raw pointer to the gradient buffer.</summary>
    public float* GradientsPointer => (float*)_grads.Pointer;

    /// <summary>The parameters of one HF-named view (local shard shape, row-major).</summary>
    public Span<float> View(string name) =>
        Layout.TryGet(name, out var v) ? Parameters.Slice(checked((int)v.Offset), checked((int)v.LocalElements))
            : throw new ArgumentException($"model has no parameter '{name}'");

    /// <summary>Initialises like HF LLaMA: normal(0, 0.02) weights, norms 1; seeded.</summary>
    public void InitRandom(int seed, float std = 0.02f)
    {
        var rng = new Random(seed);
        var all = Parameters;
        foreach (var v in Layout.Views)
        {
            var s = all.Slice((int)v.Offset, (int)v.LocalElements);
            if (v.GlobalShape.Length == 1) { s.Fill(1f); continue; }
            for (int i = 0; i < s.Length; i += 2)
            {
                double u1 = 1.0 - rng.NextDouble(), u2 = rng.NextDouble(), r = Math.Sqrt(-2 * Math.Log(u1));
                s[i] = (float)(std * r * Math.Cos(2 * Math.PI * u2));
                if (i + 1 < s.Length) s[i + 1] = (float)(std * r * Math.Sin(2 * Math.PI * u2));
            }
        }
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
        long H = c.Hidden, qd = c.Heads * c.HeadDim, kd = c.KvHeads * c.HeadDim, I = c.Intermediate;
        long perLayer = 3 * T * H + 2 * T + 2 * T * qd + 2 * T * kd + T * c.Heads + T * H + 3 * T * I + 13 * 16;
        long fin = 2 * T * H + T + (long)T * OutputWidth + 4 * 16;
        long ints = 3 * (T + nseq + 1) + 48;
        long bwd = 3 * T * H + 2 * T * qd + 2 * T * kd + 3 * T * I + (long)T * OutputWidth + 16 * 16;
        long blocks = recompute ? c.Layers * (T * H + 16) + perLayer : c.Layers * (perLayer + T * H + 16);
        return blocks + fin + ints + bwd;
    }

    private static void Ck(int st) => Native.Check(st);

    /// <summary>Forward over a packed batch. Returns the output [T, OutputWidth] in the arena
    /// (valid until the next forward): logits, or values for a scalar head.</summary>
    public float* Forward(PackedBatch batch)
    {
        var c = Config;
        int T = batch.TotalTokens;
        foreach (var t in batch.Tokens)
            if ((uint)t >= (uint)c.Vocab) throw new ArgumentException($"token id {t} outside the vocabulary [0, {c.Vocab})");
        foreach (var l in batch.SeqLens)
            if (l > c.MaxPositions) throw new ArgumentException($"sequence of {l} tokens exceeds max_position_embeddings {c.MaxPositions}");
        _arena.Reset(ArenaFloats(T, batch.Count, Recompute));
        var sv = new Saved { T = T, NSeq = batch.Count };
        sv.Tokens = (int*)_arena.Take(T);
        sv.Pos = (int*)_arena.Take(T);
        sv.Cu = (int*)_arena.Take(batch.Count + 1);
        batch.Tokens.CopyTo(new Span<int>(sv.Tokens, T));
        batch.Positions.CopyTo(new Span<int>(sv.Pos, T));
        batch.CuSeqlens.CopyTo(new Span<int>(sv.Cu, batch.Count + 1));
        int L = c.Layers;
        sv.XIn = new float*[L]; sv.H1 = new float*[L]; sv.R1 = new float*[L]; sv.Q = new float*[L]; sv.K = new float*[L];
        sv.V = new float*[L]; sv.Att = new float*[L]; sv.Lse = new float*[L]; sv.X2 = new float*[L]; sv.H2 = new float*[L];
        sv.R2 = new float*[L]; sv.GU = new float*[L]; sv.A = new float*[L];
        long H = c.Hidden;
        nint s = _s.Ptr;
        float* x = _arena.Take(T * H);
        Ck(Native.realn_op_embedding_fwd(s, DType.F32, sv.Tokens, T, _embed, c.Vocab, H, 0, x));
        bool rc = Recompute;
        float*[]? shared = rc ? TakeLayerScratch(T) : null;
        for (int l = 0; l < L; l++)
        {
            sv.XIn[l] = x;
            if (rc) AssignScratch(sv, l, shared!);
            else AssignScratch(sv, l, TakeLayerScratch(T));
            float* xo = _arena.Take(T * H);
            LayerForward(l, sv, x, xo);
            x = xo;
        }
        sv.Recomputed = rc;
        sv.XL = x;
        sv.HF = _arena.Take(T * H);
        sv.RF = _arena.Take(T);
        Ck(Native.realn_op_rmsnorm_fwd(s, DType.F32, x, _norm, sv.HF, sv.RF, T, H, c.RmsEps));
        sv.Out = _arena.Take((long)T * OutputWidth);
        Ck(Native.realn_op_linear_fwd(s, DType.F32, sv.HF, _head, null, sv.Out, T, H, OutputWidth));
        _saved = sv;
        return sv.Out;
    }

    /// <summary>The per-layer activations backward needs, as one set of arena buffers:
    /// h1, r1, q, k, v, att, lse, x2, h2, r2, gu, a.</summary>
    private float*[] TakeLayerScratch(int T)
    {
        var c = Config;
        long H = c.Hidden, qd = c.Heads * c.HeadDim, kd = c.KvHeads * c.HeadDim, I = c.Intermediate;
        return [_arena.Take(T * H), _arena.Take(T), _arena.Take(T * qd), _arena.Take(T * kd), _arena.Take(T * kd),
            _arena.Take(T * qd), _arena.Take(T * c.Heads), _arena.Take(T * H), _arena.Take(T * H), _arena.Take(T),
            _arena.Take(T * 2 * I), _arena.Take(T * I)];
    }

    private static void AssignScratch(Saved sv, int l, float*[] b)
    {
        sv.H1[l] = b[0]; sv.R1[l] = b[1]; sv.Q[l] = b[2]; sv.K[l] = b[3]; sv.V[l] = b[4]; sv.Att[l] = b[5];
        sv.Lse[l] = b[6]; sv.X2[l] = b[7]; sv.H2[l] = b[8]; sv.R2[l] = b[9]; sv.GU[l] = b[10]; sv.A[l] = b[11];
    }

    /// <summary>Block l: xo = x2 + down(swiglu(gate_up(norm2(x2)))), x2 = x + o(attn(rope(q), rope(k), v)(norm1(x))),
    /// keeping its intermediates in sv's buffers of layer l.</summary>
    private void LayerForward(int l, Saved sv, float* x, float* xo)
    {
        var c = Config;
        int T = sv.T;
        long H = c.Hidden, qd = c.Heads * c.HeadDim, kd = c.KvHeads * c.HeadDim, I = c.Intermediate;
        nint s = _s.Ptr;
        float scale = 1f / MathF.Sqrt(c.HeadDim);
        ref var w = ref _w[l];
        float* h1 = sv.H1[l], r1 = sv.R1[l], q = sv.Q[l], k = sv.K[l], v = sv.V[l], att = sv.Att[l], lse = sv.Lse[l];
        float* x2 = sv.X2[l], h2 = sv.H2[l], r2 = sv.R2[l], gu = sv.GU[l], a = sv.A[l];
        Ck(Native.realn_op_rmsnorm_fwd(s, DType.F32, x, w.InNorm, h1, r1, T, H, c.RmsEps));
        Ck(Native.realn_op_linear_fwd(s, DType.F32, h1, w.Q, null, q, T, H, qd));
        Ck(Native.realn_op_linear_fwd(s, DType.F32, h1, w.K, null, k, T, H, kd));
        Ck(Native.realn_op_linear_fwd(s, DType.F32, h1, w.V, null, v, T, H, kd));
        Ck(Native.realn_op_rotary_fwd(s, DType.F32, q, sv.Pos, q, T, c.Heads, c.HeadDim, c.HeadDim, c.RopeTheta));
        Ck(Native.realn_op_rotary_fwd(s, DType.F32, k, sv.Pos, k, T, c.KvHeads, c.HeadDim, c.HeadDim, c.RopeTheta));
        Ck(Native.realn_op_attention_fwd(s, DType.F32, q, k, v, sv.Cu, sv.NSeq, T, c.Heads, c.KvHeads, c.HeadDim, scale, att, lse));
        Ck(Native.realn_op_linear_fwd(s, DType.F32, att, w.O, null, x2, T, qd, H));
        Ck(Native.realn_op_add(s, DType.F32, T * H, x2, x, x2));
        Ck(Native.realn_op_rmsnorm_fwd(s, DType.F32, x2, w.PostNorm, h2, r2, T, H, c.RmsEps));
        Ck(Native.realn_op_linear_fwd(s, DType.F32, h2, w.GateUp, null, gu, T, H, 2 * I));
        Ck(Native.realn_op_swiglu_fwd(s, DType.F32, gu, gu + I, 2 * I, a, I, T, I));
        Ck(Native.realn_op_linear_fwd(s, DType.F32, a, w.Down, null, xo, T, I, H));
        Ck(Native.realn_op_add(s, DType.F32, T * H, xo, x2, xo));
    }

    /// <summary>Scratch of [T, OutputWidth] for the caller's output gradient (valid until the
    /// next forward).</summary>
    public float* OutputGradientBuffer()
    {
        var sv = _saved ?? throw new InvalidOperationException("Backward needs a Forward first");
        return _arena.Take((long)sv.T * OutputWidth);
    }

    /// <summary>Backward from dOut [T, OutputWidth]; gradients ACCUMULATE into
    /// <see cref="Gradients"/> (call <see cref="ZeroGrad"/> before the first micro-batch).</summary>
    public void Backward(float* dOut)
    {
        var sv = _saved ?? throw new InvalidOperationException("Backward needs a Forward first");
        var c = Config;
        int T = sv.T;
        long H = c.Hidden, qd = c.Heads * c.HeadDim, kd = c.KvHeads * c.HeadDim, I = c.Intermediate;
        nint s = _s.Ptr;
        float* dX = _arena.Take(T * H), dH = _arena.Take(T * H), dT = _arena.Take(T * H);
        float* dAtt = _arena.Take(T * qd), dQ = _arena.Take(T * qd), dK = _arena.Take(T * kd), dV = _arena.Take(T * kd);
        float* dGU = _arena.Take(T * 2 * I), dA = _arena.Take(T * I);
        Ck(Native.realn_op_linear_bwd(s, DType.F32, sv.HF, _head, dOut, dH, _gHead, null, T, H, OutputWidth, 0));
        Ck(Native.realn_op_rmsnorm_bwd(s, DType.F32, sv.XL, _norm, sv.RF, dH, dX, _gNorm, T, H));
        float scale = 1f / MathF.Sqrt(c.HeadDim);
        for (int l = c.Layers - 1; l >= 0; l--)
        {
            if (sv.Recomputed) LayerForward(l, sv, sv.XIn[l], dT);  // dT: scratch for the unused block output
            ref var w = ref _w[l];
            ref var g = ref _g[l];
            // xo = x2 + down(swiglu(gate_up(norm2(x2))))
            Ck(Native.realn_op_linear_bwd(s, DType.F32, sv.A[l], w.Down, dX, dA, g.Down, null, T, I, H, 0));
            Ck(Native.realn_op_swiglu_bwd(s, DType.F32, sv.GU[l], sv.GU[l] + I, 2 * I, dA, I, dGU, dGU + I, T, I));
            Ck(Native.realn_op_linear_bwd(s, DType.F32, sv.H2[l], w.GateUp, dGU, dH, g.GateUp, null, T, H, 2 * I, 0));
            Ck(Native.realn_op_rmsnorm_bwd(s, DType.F32, sv.X2[l], w.PostNorm, sv.R2[l], dH, dT, g.PostNorm, T, H));
            Ck(Native.realn_op_add(s, DType.F32, T * H, dX, dT, dX));
            // x2 = xin + o(attn(rope(q(h1)), rope(k(h1)), v(h1))), h1 = norm1(xin)
            Ck(Native.realn_op_linear_bwd(s, DType.F32, sv.Att[l], w.O, dX, dAtt, g.O, null, T, qd, H, 0));
            Ck(Native.realn_op_attention_bwd(s, DType.F32, sv.Q[l], sv.K[l], sv.V[l], sv.Att[l], sv.Lse[l], dAtt, sv.Cu, sv.NSeq, T,
                c.Heads, c.KvHeads, c.HeadDim, scale, dQ, dK, dV));
            Ck(Native.realn_op_rotary_bwd(s, DType.F32, dQ, sv.Pos, dQ, T, c.Heads, c.HeadDim, c.HeadDim, c.RopeTheta));
            Ck(Native.realn_op_rotary_bwd(s, DType.F32, dK, sv.Pos, dK, T, c.KvHeads, c.HeadDim, c.HeadDim, c.RopeTheta));
            Ck(Native.realn_op_linear_bwd(s, DType.F32, sv.H1[l], w.Q, dQ, dH, g.Q, null, T, H, qd, 0));
            Ck(Native.realn_op_linear_bwd(s, DType.F32, sv.H1[l], w.K, dK, dH, g.K, null, T, H, kd, 1));
            Ck(Native.realn_op_linear_bwd(s, DType.F32, sv.H1[l], w.V, dV, dH, g.V, null, T, H, kd, 1));
            Ck(Native.realn_op_rmsnorm_bwd(s, DType.F32, sv.XIn[l], w.InNorm, sv.R1[l], dH, dT, g.InNorm, T, H));
            Ck(Native.realn_op_add(s, DType.F32, T * H, dX, dT, dX));
        }
        Ck(Native.realn_op_embedding_bwd(s, DType.F32, sv.Tokens, T, dX, c.Vocab, H, 0, _gEmbed));
    }

    // ------------------------------------------------------------------ KV-cache inference
    /// <summary>Runs the trunk for new tokens of sequences held in <paramref name="cache"/>:
    /// tokens[i] belongs to slot slots[i] at position positions[i]; K/V are stored, attention
    /// reads the cache up to and including that position (prefill: a whole prompt per slot, in
    /// order; decode: one token per slot). Writes the head output of the LAST token of each run of
    /// tokens of one slot into <paramref name="outRows"/> ([runs, OutputWidth]).</summary>
    internal void ForwardCached(KvCache cache, int[] tokens, int[] slots, int[] positions, bool decode, float* outRows)
    {
        var c = Config;
        int T = tokens.Length;
        long H = c.Hidden, qd = c.Heads * c.HeadDim, kd = c.KvHeads * c.HeadDim, I = c.Intermediate;
        // Runs: maximal groups of consecutive tokens of one slot (prefill) or single tokens (decode).
        var runEnds = new List<int>();
        for (int i = 0; i < T; i++)
            if (decode || i == T - 1 || slots[i + 1] != slots[i]) runEnds.Add(i);
        int R = runEnds.Count;
        _saved = null;
        _arena.Reset(7 * T * H + 2 * T * qd + 2 * T * kd + 3 * T * I + T * c.Heads + 4L * T + 3L * R + (long)R * H * 2 + 64 * 16);
        int* tok = (int*)_arena.Take(T), pos = (int*)_arena.Take(T), sl = (int*)_arena.Take(T);
        tokens.CopyTo(new Span<int>(tok, T));
        positions.CopyTo(new Span<int>(pos, T));
        slots.CopyTo(new Span<int>(sl, T));
        int* cu = (int*)_arena.Take(R + 1), rs = (int*)_arena.Take(R), lens = (int*)_arena.Take(R);
        cu[0] = 0;
        for (int r = 0; r < R; r++)
        {
            cu[r + 1] = runEnds[r] + 1;
            rs[r] = slots[runEnds[r]];
            lens[r] = positions[runEnds[r]] + 1;
            if (!decode && positions[cu[r]] != 0) throw new ArgumentException("prefill runs must start at position 0");
        }
        nint s = _s.Ptr;
        float* x = _arena.Take(T * H), h = _arena.Take(T * H), x2 = _arena.Take(T * H);
        float* q = _arena.Take(T * qd), k = _arena.Take(T * kd), v = _arena.Take(T * kd), att = _arena.Take(T * qd), lse = _arena.Take(T * c.Heads);
        float* gu = _arena.Take(T * 2 * I), a = _arena.Take(T * I);
        Ck(Native.realn_op_embedding_fwd(s, DType.F32, tok, T, _embed, c.Vocab, H, 0, x));
        float scale = 1f / MathF.Sqrt(c.HeadDim);
        for (int l = 0; l < c.Layers; l++)
        {
            ref var w = ref _w[l];
            Ck(Native.realn_op_rmsnorm_fwd(s, DType.F32, x, w.InNorm, h, null, T, H, c.RmsEps));
            Ck(Native.realn_op_linear_fwd(s, DType.F32, h, w.Q, null, q, T, H, qd));
            Ck(Native.realn_op_linear_fwd(s, DType.F32, h, w.K, null, k, T, H, kd));
            Ck(Native.realn_op_linear_fwd(s, DType.F32, h, w.V, null, v, T, H, kd));
            Ck(Native.realn_op_rotary_fwd(s, DType.F32, q, pos, q, T, c.Heads, c.HeadDim, c.HeadDim, c.RopeTheta));
            Ck(Native.realn_op_rotary_fwd(s, DType.F32, k, pos, k, T, c.KvHeads, c.HeadDim, c.HeadDim, c.RopeTheta));
            Ck(Native.realn_op_kv_store(s, DType.F32, k, v, sl, pos, T, cache.K(l), cache.V(l), cache.Slots, cache.MaxLen, c.KvHeads, c.HeadDim));
            if (decode)
                Ck(Native.realn_op_attention_decode(s, DType.F32, q, cache.K(l), cache.V(l), rs, lens, R, cache.Slots, cache.MaxLen,
                    c.Heads, c.KvHeads, c.HeadDim, scale, att));
            else
                Ck(Native.realn_op_attention_fwd(s, DType.F32, q, k, v, cu, R, T, c.Heads, c.KvHeads, c.HeadDim, scale, att, lse));
            Ck(Native.realn_op_linear_fwd(s, DType.F32, att, w.O, null, x2, T, qd, H));
            Ck(Native.realn_op_add(s, DType.F32, T * H, x2, x, x2));
            Ck(Native.realn_op_rmsnorm_fwd(s, DType.F32, x2, w.PostNorm, h, null, T, H, c.RmsEps));
            Ck(Native.realn_op_linear_fwd(s, DType.F32, h, w.GateUp, null, gu, T, H, 2 * I));
            Ck(Native.realn_op_swiglu_fwd(s, DType.F32, gu, gu + I, 2 * I, a, I, T, I));
            Ck(Native.realn_op_linear_fwd(s, DType.F32, a, w.Down, null, x, T, I, H));
            Ck(Native.realn_op_add(s, DType.F32, T * H, x, x2, x));
        }
        // Head on the last token of each run only.
        float* last = _arena.Take(R * H), hl = _arena.Take(R * H);
        for (int r = 0; r < R; r++)
            Buffer.MemoryCopy(x + (long)runEnds[r] * H, last + r * H, H * 4, H * 4);
        Ck(Native.realn_op_rmsnorm_fwd(s, DType.F32, last, _norm, hl, null, R, H, c.RmsEps));
        Ck(Native.realn_op_linear_fwd(s, DType.F32, hl, _head, null, outRows, R, H, OutputWidth));
    }

    /// <summary>Frees parameters, gradients and activations.</summary>
    public void Dispose()
    {
        _arena.Dispose();
        _params.Dispose();
        _grads.Dispose();
    }
}

/// <summary>Slot-based KV cache for generation: per layer K and V of [slots, max_len, kv_heads, head_dim].</summary>
internal unsafe class KvCache : IDisposable
{
    private readonly HostBlock _block;
    private readonly long _perLayer;

    /// <summary>Cache for <paramref name="slots"/> sequences of up to <paramref name="maxLen"/> tokens.</summary>
    public KvCache(LlamaConfig c, int slots, int maxLen)
    {
        if (slots <= 0 || maxLen <= 0) throw new ArgumentException($"KV cache needs slots > 0 and max_len > 0 (got {slots}, {maxLen})");
        if (maxLen > c.MaxPositions) throw new ArgumentException($"KV cache length {maxLen} exceeds max_position_embeddings {c.MaxPositions}");
        Slots = slots;
        MaxLen = maxLen;
        _perLayer = (long)slots * maxLen * c.KvHeads * c.HeadDim;
        _block = new HostBlock(Math.Max(64, 2 * c.Layers * _perLayer * 4));
    }

    /// <summary>Sequences the cache holds.</summary>
    public int Slots { get; }
    /// <summary>Tokens per sequence.</summary>
    public int MaxLen { get; }
    /// <summary>Keys of a layer: [slots, max_len, kv_heads, head_dim].</summary>
    public float* K(int layer) => (float*)_block.Pointer + 2 * layer * _perLayer;
    /// <summary>Values of a layer: [slots, max_len, kv_heads, head_dim].</summary>
    public float* V(int layer) => (float*)_block.Pointer + (2 * layer + 1) * _perLayer;
    public void Dispose() => _block.Dispose();
}
