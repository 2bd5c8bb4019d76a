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
    private readonly NativeStream _stream;
    private readonly HostBlock _params, _grads;
    private readonly List<Arena> _arenas = [new()];
    private readonly List<ForwardState?> _forwardStates = [null];
    private readonly BlockWeights[] _blockWeights, _blockGrads;
    private readonly float* _embed, _norm, _head, _embedGrad, _normGrad, _headGrad;
    private readonly ShardComm? _comm;
    private readonly nint _masterBase;
    private HostBlock? _bf16Params;              // bf16 copy of the parameters (Precision = Bf16), same layout
    private bool _bf16Stale = true, _masterReleased, _weightsReleased;
    private readonly int _firstLayer, _layerCount, _qHeads, _kvHeads, _ffnLocal, _vocabLocal, _vocabStart, _headWidth, _tp, _tpRank;

    /// <summary>Where one block's weights (or their gradients) sit in a flat buffer.</summary>
    private struct BlockWeights
    {
        public float* InputNorm, QProj, KProj, VProj, OProj, PostNorm, GateUp, Down;
        /// <summary>q/k/v projection biases (Qwen2); null without.</summary>
        public float* QBias, KBias, VBias;
    }

    /// <summary>Where one block's forward writes its intermediates: kept for backward in training,
    /// shared scratch in KV-cache inference (then the RMSNorm statistics are not kept: null).</summary>
    private struct BlockActivations
    {
        public float* Normed1, Rstd1, Q, K, V, Attn, Lse, Mid, Normed2, Rstd2, GateUp, Act;
        /// <summary>[T, qd + 2 kd] scratch of the fused q|k|v projection (inference only; null in training).</summary>
        public float* Qkv;
    }

    /// <summary>How a block's attention reads keys and values: the packed batch's own sequences
    /// (training forward, and prefill without a cache), or a KV cache the block first stores its
    /// new keys/values into (generation: prefill runs, or decode with one token per slot).</summary>
    private readonly struct AttentionSource
    {
        public readonly int* CuSeqlens;     // [Sequences + 1] token offsets of the sequences (or runs) of the batch
        public readonly int Sequences;
        public readonly KvCache? Cache;
        public readonly int* TokenSlots;    // [T] cache slot of each token
        public readonly int* RunSlots;      // [Sequences] cache slot of each run (decode)
        public readonly int* RunLengths;    // [Sequences] tokens in the cache after the step (decode)
        public readonly bool Decode;
        /// <summary>Linears in the small-M kernel's order whatever the row count (<see cref="Kernels.LinearForwardRowInvariant"/>):
        /// a row's output does not depend on the other rows of the forward (generation).</summary>
        public readonly bool RowInvariant;

        public AttentionSource(int* cuSeqlens, int sequences) { CuSeqlens = cuSeqlens; Sequences = sequences; }

        public AttentionSource(KvCache cache, int* cuSeqlens, int runs, int* tokenSlots, int* runSlots, int* runLengths, bool decode, bool rowInvariant)
        {
            Cache = cache; CuSeqlens = cuSeqlens; Sequences = runs; TokenSlots = tokenSlots; RunSlots = runSlots; RunLengths = runLengths; Decode = decode;
            RowInvariant = rowInvariant;
        }
    }

    /// <summary>What a training forward keeps for its backward (one per activation slot).</summary>
    private sealed class ForwardState(int tokenCount, int sequences, int blocks)
    {
        public readonly int TokenCount = tokenCount, Sequences = sequences;
        public int* Tokens, Positions, CuSeqlens;
        public readonly float*[] BlockInput = new float*[blocks];                         // input hidden states of each block
        public readonly BlockActivations[] Blocks = new BlockActivations[blocks];         // intermediates of each block (shared when Recomputed)
        public float* FinalHidden, FinalNormed, FinalRstd, Output;
        public bool Recomputed;
    }

    /// <summary>A single-device model (layout (pp 1, tp 1)); parameters uninitialised until <see cref="InitRandom"/> or a checkpoint load; gradients zero.</summary>
    public LlamaModel(LlamaConfig config, bool scalarHead, NativeStream? stream = null) : this(config, scalarHead, null, stream) { }

    /// <summary>The shard of rank <paramref name="comm"/> (its pipeline stage and tensor rank) of a
    /// model laid out by comm's layout; null = single device. Errors name what does not divide.</summary>
    /// <param name="sharedParameters">allocate the parameter buffers (fp32 and bf16; AdamW's moments
    /// follow <see cref="ParameterMemory"/>) in shared host memory, which other processes of this host
    /// map to reallocate straight out of them (worker processes do)</param>
    public LlamaModel(LlamaConfig config, bool scalarHead, ShardComm? comm, NativeStream? stream = null, bool sharedParameters = false)
    {
        ParameterMemory = sharedParameters ? HostAllocFlags.Prefault | HostAllocFlags.Shared : HostAllocFlags.Default;
        Config = config.Validate();
        ScalarHead = scalarHead;
        _stream = stream ?? NativeStream.Cpu();
        _comm = comm;
        int pp = comm?.Pp ?? 1, ppRank = comm?.Pipe ?? 0;
        _tp = comm?.Tp ?? 1;
        _tpRank = comm?.Model ?? 0;
        if (pp > 1 && config.TiedEmbeddings && !scalarHead)
            throw new ArgumentException("tied embeddings need pp = 1 (the head and the embedding share one tensor)");
        Layout = ParamLayout.Create(config, scalarHead, pp, ppRank, _tp, _tpRank);
        _qHeads = config.Heads / _tp;
        _kvHeads = config.KvHeads / _tp;
        _ffnLocal = config.Intermediate / _tp;
        _vocabLocal = config.Vocab / _tp;
        _vocabStart = _tpRank * _vocabLocal;
        _headWidth = scalarHead ? 1 : _vocabLocal;
        _params = new HostBlock(Math.Max(4, Layout.TotalElements * 4), ParameterMemory);
        // Gradients: fresh anonymous pages read as zero and are not touched until a backward writes
        // them, so a model that never trains (inference replicas, ref, reward) holds no gradient memory.
        _grads = new HostBlock(Math.Max(4, Layout.TotalElements * 4), HostAllocFlags.HugePage);
        float* p = (float*)_params.Pointer, g = (float*)_grads.Pointer;
        _masterBase = (nint)p;
        float* View(float* b, string n) => Layout.TryGet(n, out var v) ? b + v.Offset : throw new InvalidOperationException($"no parameter {n}");
        var layers = Enumerable.Range(0, config.Layers).Where(l => Layout.TryGet($"model.layers.{l}.input_layernorm.weight", out _)).ToArray();
        _firstLayer = layers.Length > 0 ? layers[0] : 0;
        _layerCount = layers.Length;
        if (_layerCount > 0 && layers[^1] != _firstLayer + _layerCount - 1) throw new InvalidOperationException("layout: a stage's blocks must be contiguous");
        _blockWeights = new BlockWeights[_layerCount];
        _blockGrads = new BlockWeights[_layerCount];
        for (int i = 0; i < _layerCount; i++)
        {
            string pre = $"model.layers.{_firstLayer + i}.";
            _blockWeights[i] = BlockViews(p, pre, View);
            _blockGrads[i] = BlockViews(g, pre, View);
            if (View(p, pre + "mlp.up_proj.weight") != _blockWeights[i].GateUp + (long)_ffnLocal * config.Hidden)
                throw new InvalidOperationException("layout: up_proj must follow gate_proj");
        }
        HasEmbedding = Layout.TryGet("model.embed_tokens.weight", out _);
        HasHead = Layout.TryGet("model.norm.weight", out _);
        if (HasEmbedding)
        {
            _embed = View(p, "model.embed_tokens.weight");
            _embedGrad = View(g, "model.embed_tokens.weight");
        }
        if (HasHead)
        {
            _norm = View(p, "model.norm.weight");
            _normGrad = View(g, "model.norm.weight");
            string head = scalarHead ? "score.weight" : config.TiedEmbeddings ? "model.embed_tokens.weight" : "lm_head.weight";
            _head = View(p, head);
            _headGrad = View(g, head);
        }
    }

    private delegate float* ViewOf(float* b, string n);

    private BlockWeights BlockViews(float* b, string pre, ViewOf view) => new()
    {
        QBias = Config.QkvBias ? view(b, pre + "self_attn.q_proj.bias") : null,
        KBias = Config.QkvBias ? view(b, pre + "self_attn.k_proj.bias") : null,
        VBias = Config.QkvBias ? view(b, pre + "self_attn.v_proj.bias") : null,
        InputNorm = view(b, pre + "input_layernorm.weight"),
        QProj = view(b, pre + "self_attn.q_proj.weight"),
        KProj = view(b, pre + "self_attn.k_proj.weight"),
        VProj = view(b, pre + "self_attn.v_proj.weight"),
        OProj = view(b, pre + "self_attn.o_proj.weight"),
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
    /// the embedding and the RMSNorms, forward and backward (activations, softmax, norms' statistics, losses and
    /// gradients stay fp32; the optimizer updates the fp32 master). The copy is refreshed before a
    /// forward whenever the master may have changed (any access to <see cref="Parameters"/> or
    /// <see cref="ParametersPointer"/> marks it stale: the optimizer, loads, copies).</summary>
    public ModelPrecision Precision { get; private set; } = ModelPrecision.Fp32;

    /// <summary>True once <see cref="FreezeToBf16"/> dropped the fp32 master and gradients.</summary>
    public bool HoldsBf16Only => _masterReleased;

    private int WeightType => Precision == ModelPrecision.Bf16 ? DType.BF16 : DType.F32;

    /// <summary>Switches the model to <paramref name="precision"/>. Bf16 probes the stream's backend
    /// first and throws <see cref="NotSupportedException"/> when it lacks bf16 linear layers.</summary>
    public void SetPrecision(ModelPrecision precision)
    {
        if (_masterReleased && precision != ModelPrecision.Bf16)
            throw new InvalidOperationException("a model frozen to bf16 has no fp32 weights to return to");
        if (precision == ModelPrecision.Bf16 && Precision != ModelPrecision.Bf16)
        {
            ProbeBf16(_stream);
            _bf16Params = new HostBlock(Math.Max(2, Layout.TotalElements * 2), ParameterMemory);
            _bf16Stale = true;
        }
        else if (precision == ModelPrecision.Fp32 && _bf16Params is not null)
        {
            _bf16Params.Dispose();
            _bf16Params = null;
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

    /// <summary>How the buffers that reallocation moves (parameters fp32 and bf16, AdamW's moments)
    /// are allocated: <see cref="HostAllocFlags.Default"/>, or shared host memory.</summary>
    public HostAllocFlags ParameterMemory { get; }

    /// <summary>A frozen model (never trained: ref, reward) in bf16 holds its bf16 weights only: the
    /// copy is made now and the fp32 master and gradient buffers are freed (6 of every 8 bytes per
    /// parameter). Afterwards <see cref="Parameters"/>, <see cref="Gradients"/> and Backward throw.</summary>
    public void FreezeToBf16()
    {
        if (_masterReleased) return;
        SetPrecision(ModelPrecision.Bf16);
        RefreshBf16();
        KeepFp32Biases();
        _params.Dispose();
        _grads.Dispose();
        _masterReleased = true;
    }

    /// <summary>Gives the pages of the weights (the parameters this model computes from: its fp32
    /// buffer, or its bf16 weights where it holds bf16 only) back to the system, keeping their
    /// addresses (<see cref="HostBlock.Release"/>): an inference replica of a trained model between the
    /// calls that need it, whose weights are reallocated into it before its next call anyway. Until
    /// <see cref="ReacquireWeights"/>, every access to the weights and every forward throws. Not for a
    /// model with a bf16 copy of a master it keeps (a trainable one: its master is the source of truth).</summary>
    public void ReleaseWeights()
    {
        if (_weightsReleased) return;
        if (!_masterReleased && _bf16Params is not null)
            throw new InvalidOperationException("a model that keeps an fp32 master beside its bf16 copy (trainable) does not release its weights");
        (_masterReleased ? _bf16Params! : _params).Release();
        _weightsReleased = true;
    }

    /// <summary>Takes pages for the weights again after <see cref="ReleaseWeights"/> (no-op otherwise);
    /// their contents are undefined (zeros) until refilled, which the caller does next.</summary>
    public void ReacquireWeights()
    {
        if (!_weightsReleased) return;
        (_masterReleased ? _bf16Params! : _params).Reacquire();
        _weightsReleased = false;
    }

    /// <summary>Bytes of the weights <see cref="ReleaseWeights"/> gives back: the fp32 parameters, or the bf16 weights of a model that holds bf16 only.</summary>
    public long WeightBytes => Layout.TotalElements * (_masterReleased ? 2 : 4);

    /// <summary>Whether <see cref="ReleaseWeights"/> gave the weights' pages back (and no refill took them again).</summary>
    public bool WeightsReleased => _weightsReleased;

    private void ThrowIfWeightsReleased(string what)
    {
        if (_weightsReleased) throw new InvalidOperationException($"{what}: the model's weights were released (an inference replica between its calls); reallocate into it first");
    }

    /// <summary>The bf16 copy of the parameters (layout order), refreshed from the master if stale.</summary>
    public ReadOnlySpan<ushort> Bf16Parameters
    {
        get
        {
            if (_bf16Params is null) throw new InvalidOperationException("the model is not in bf16 precision");
            ThrowIfWeightsReleased("bf16 parameters");
            RefreshBf16();
            return new(_bf16Params.Pointer, checked((int)Layout.TotalElements));
        }
    }

    /// <summary>Raw pointer to the bf16 weights (reallocation of bf16 parameters), refreshed from the
    /// master first when stale. Writing through it is for a model that holds bf16 only (a master's
    /// next refresh would overwrite the writes).</summary>
    public ushort* Bf16ParametersPointer
    {
        get
        {
            if (_bf16Params is null) throw new InvalidOperationException("the model is not in bf16 precision");
            ThrowIfWeightsReleased("bf16 parameters");
            RefreshBf16();
            return (ushort*)_bf16Params.Pointer;
        }
    }

    /// <summary>Overwrites the bf16 weights of a model that holds bf16 only (a bf16 checkpoint's tensors, layout order).</summary>
    public void LoadBf16(ReadOnlySpan<ushort> values)
    {
        if (!_masterReleased || _bf16Params is null) throw new InvalidOperationException("LoadBf16 is for models frozen to bf16");
        ThrowIfWeightsReleased("LoadBf16");
        if (values.Length != Layout.TotalElements) throw new ArgumentException($"{values.Length} values for {Layout.TotalElements} parameters");
        values.CopyTo(new Span<ushort>(_bf16Params.Pointer, values.Length));
        LoadFp32BiasesFromBf16();
    }

    /// <summary>Takes the bf16 weights and the fp32 q/k/v biases of <paramref name="other"/>, a model of
    /// the same layout also frozen to bf16 (a shard initialised in fp32 on a twin, then frozen: what a
    /// single device does before <see cref="FreezeToBf16"/>).</summary>
    public void LoadFrozen(LlamaModel other)
    {
        if (!_masterReleased || !other._masterReleased) throw new InvalidOperationException("LoadFrozen is between models frozen to bf16");
        ThrowIfWeightsReleased("LoadFrozen");
        other.ThrowIfWeightsReleased("LoadFrozen's source");
        if (other.Layout.TotalElements != Layout.TotalElements || other.Config != Config) throw new ArgumentException("LoadFrozen: the models' layouts differ");
        long n = Layout.TotalElements * 2;
        Buffer.MemoryCopy(other._bf16Params!.Pointer, _bf16Params!.Pointer, n, n);
        if (_frozenBiases is not null)
            Buffer.MemoryCopy(other._frozenBiases!.Pointer, _frozenBiases.Pointer, _frozenBiases.Bytes, _frozenBiases.Bytes);
    }

    /// <summary>After the bf16 weights of a model frozen to bf16 were written in place (a bf16
    /// reallocation), its fp32 q/k/v biases are taken from them.</summary>
    public void BiasesFromBf16()
    {
        if (_masterReleased) LoadFp32BiasesFromBf16();
    }

    private void RefreshBf16()
    {
        if (Precision != ModelPrecision.Bf16 || !_bf16Stale || _masterReleased) return;
        Check(Native.realn_op_convert(_stream.Ptr, DType.BF16, _bf16Params!.Pointer, DType.F32, _params.Pointer, Layout.TotalElements));
        _bf16Stale = false;
    }

    // ---- Model families (LLaMA 3.1 rope scaling, Qwen2 q/k/v biases) ----
    private double[]? _scaledInvFreq;  // the rotary table when Config.RopeScaling is set (else the native theta form)

    /// <summary>Rotary embedding of x [T, heads, HeadDim] in place (inverse: the backward's rotation).</summary>
    private void Rotary(float* x, int* positions, int T, int heads, bool inverse)
    {
        var c = Config;
        if (c.RopeScaling is null)
        {
            Check(inverse ? Native.realn_op_rotary_bwd(_stream.Ptr, DType.F32, x, positions, x, T, heads, c.HeadDim, c.HeadDim, c.RopeTheta)
                : Native.realn_op_rotary_fwd(_stream.Ptr, DType.F32, x, positions, x, T, heads, c.HeadDim, c.HeadDim, c.RopeTheta));
            return;
        }
        _scaledInvFreq ??= c.RotaryInverseFrequencies();
        fixed (double* f = _scaledInvFreq)
            Check(inverse ? Native.realn_op_rotary_freqs_bwd(_stream.Ptr, DType.F32, x, positions, x, T, heads, c.HeadDim, c.HeadDim, f)
                : Native.realn_op_rotary_freqs_fwd(_stream.Ptr, DType.F32, x, positions, x, T, heads, c.HeadDim, c.HeadDim, f));
    }

    // A bias operand: fp32 in every precision (linear_fwd reads bias in fp32 with bf16 weights too);
    // a model frozen to bf16 keeps its biases in _frozenBiases.
    private static float* Bias(float* p) => p;

    private HostBlock? _frozenBiases;  // fp32 q|k|v biases of each block once the master is freed (FreezeToBf16)

    /// <summary>Before the fp32 master is freed: moves each block's q|k|v biases (consecutive in the
    /// layout) to a small fp32 block and points the block weights there.</summary>
    private void KeepFp32Biases()
    {
        if (!Config.QkvBias || _layerCount == 0) return;
        long qd = (long)_qHeads * Config.HeadDim, kd = (long)_kvHeads * Config.HeadDim, per = qd + 2 * kd;
        _frozenBiases = new HostBlock(per * _layerCount * 4);
        for (int i = 0; i < _layerCount; i++)
        {
            ref var w = ref _blockWeights[i];
            if (w.KBias != w.QBias + qd || w.VBias != w.KBias + kd) throw new InvalidOperationException("layout: q/k/v biases must be consecutive");
            float* dst = (float*)_frozenBiases.Pointer + i * per;
            Buffer.MemoryCopy(w.QBias, dst, per * 4, per * 4);
            w.QBias = dst; w.KBias = dst + qd; w.VBias = dst + qd + kd;
        }
    }

    /// <summary>After bf16 weights are loaded into a frozen model: its fp32 biases from them.</summary>
    private void LoadFp32BiasesFromBf16()
    {
        if (_frozenBiases is null) return;
        long per = _qHeads * Config.HeadDim + 2L * _kvHeads * Config.HeadDim;
        var bf16 = new ReadOnlySpan<ushort>(_bf16Params!.Pointer, checked((int)Layout.TotalElements));
        for (int i = 0; i < _layerCount; i++)
        {
            Layout.TryGet($"model.layers.{_firstLayer + i}.self_attn.q_proj.bias", out var v);
            var dst = new Span<float>((float*)_frozenBiases.Pointer + i * per, (int)per);
            for (int j = 0; j < per; j++) dst[j] = BitConverter.UInt32BitsToSingle((uint)bf16[(int)v.Offset + j] << 16);
        }
    }

    // The weight operand of an op: the fp32 master, or its bf16 copy at the same element offset.
    private void* Weight(float* p) =>
        Precision == ModelPrecision.Bf16 ? (byte*)_bf16Params!.Pointer + ((long)p - (long)_masterBase) / 2 : p;

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
    public int FirstLayer => _firstLayer;
    /// <summary>Blocks this shard holds.</summary>
    public int LayerCount => _layerCount;
    /// <summary>Named views into the flat buffers (see <see cref="ParamLayout"/>).</summary>
    public ShardLayout Layout { get; }
    /// <summary>The native stream every op of this model runs on.</summary>
    public NativeStream Stream => _stream;
    /// <summary>Elements of the flat parameter buffer.</summary>
    public long ParameterCount => Layout.TotalElements;
    /// <summary>Columns of the forward output: vocab (logits) or 1 (values); hidden on a stage without the head.
    /// With <see cref="GatherLogits"/> off, a tensor rank's vocab slice.</summary>
    public int OutputWidth => HasHead ? (ScalarHead ? 1 : GatherLogits ? Config.Vocab : _vocabLocal) : Config.Hidden;

    /// <summary>Language-model head under tensor parallelism: true (default) all-gathers the logits
    /// so Forward returns full rows [T, vocab] and Backward takes full rows; false keeps each rank's
    /// vocab slice [T, vocab / tp] (columns <see cref="VocabStart"/> ..) for vocab-parallel losses
    /// that never materialise whole rows (Parallelism/VocabParallel.cs).</summary>
    public bool GatherLogits { get; set; } = true;
    /// <summary>First vocabulary id of this rank's slice of the embedding and head.</summary>
    public int VocabStart => _vocabStart;
    /// <summary>Vocabulary ids in this rank's slice.</summary>
    public int VocabLocal => _vocabLocal;

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
            ThrowIfWeightsReleased("parameters");
            _bf16Stale = true;
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
            if (v.GlobalShape.Length == 1) { s.Fill(v.Name.EndsWith(".bias", StringComparison.Ordinal) ? 0f : 1f); continue; }  // norms 1, biases 0 (as HF)
            var rng = new Random(unchecked(seed * 1000003 ^ StableHash(v.Name)));  // not HashCode: it is salted per process
            long total = v.GlobalShape.Aggregate(1L, (a, b) => a * b);
            // The global tensor's stream is drawn in order, but only this shard's slice is kept (no
            // global-sized buffer: a shard of a large embedding never holds the whole of it).
            int split = v.SplitDim;
            long inner = 1;
            for (int d = split + 1; split >= 0 && d < v.GlobalShape.Length; d++) inner *= v.GlobalShape[d];
            long period = split < 0 ? total : v.GlobalShape[split] * inner, first = v.SliceStart, len = v.SliceLength;
            for (long i = 0; i < total; i += 2)
            {
                double u1 = 1.0 - rng.NextDouble(), u2 = rng.NextDouble(), r = Math.Sqrt(-2 * Math.Log(u1));
                Put(s, i, (float)(std * r * Math.Cos(2 * Math.PI * u2)));
                if (i + 1 < total) Put(s, i + 1, (float)(std * r * Math.Sin(2 * Math.PI * u2)));
            }

            // Element g of the global row-major tensor, if this shard holds it.
            void Put(Span<float> dst, long g, float value)
            {
                if (split < 0) { dst[(int)g] = value; return; }
                long o = g / period, rest = g - o * period, row = rest / inner;
                if (row >= first && row < first + len) dst[(int)((o * len + row - first) * inner + (rest - row * inner))] = value;
            }
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

    /// <summary>Whether each forward, backward, prefill, decode step and optimizer step of this model runs on the calling
    /// thread's OpenMP threads or on one, whichever has measured faster (<see cref="Model.ThreadChoice"/>): shared by
    /// every model of this process with the same shard shape and precision (a PPO job's four tiny models learn it
    /// together, and each timing of a slow option is paid once).</summary>
    internal ThreadChoice ThreadChoice => ThreadChoice.For(
        $"{_layerCount}x{Config.Hidden}x{_ffnLocal}x{_qHeads}x{_kvHeads}x{_headWidth}{(HasEmbedding ? "e" : "")}{(ScalarHead ? "s" : "")}/{Precision}");

    private long ArenaFloats(int T, int nseq, bool recompute)
    {
        var c = Config;
        long H = c.Hidden, qd = _qHeads * c.HeadDim, kd = _kvHeads * c.HeadDim, I = _ffnLocal, W = OutputWidth;
        long perLayer = 3 * T * H + 2 * T + 2 * T * qd + 2 * T * kd + T * _qHeads + T * H + 3 * T * I + 13 * 16;
        long fin = 2 * T * H + T + T * W + T * (long)_headWidth * (_tp > 1 ? _tp : 0) + T * H + 6 * 16;
        long ints = 3 * (T + nseq + 1) + 48;
        long bwd = 3 * T * H + 2 * T * qd + 2 * T * kd + 3 * T * I + 2 * T * W + 16 * 16;
        long blocks = recompute ? _layerCount * (T * H + 16) + perLayer : _layerCount * (perLayer + T * H + 16);
        return blocks + fin + ints + bwd;
    }

    private static void Check(int st) => Native.Check(st);

    private Arena SlotArena(int slot)
    {
        if (slot < 0 || slot > 64) throw new ArgumentOutOfRangeException(nameof(slot), $"activation slot {slot} outside 0..64");
        while (_arenas.Count <= slot) { _arenas.Add(new Arena()); _forwardStates.Add(null); }
        return _arenas[slot];
    }

    /// <summary>Gives this model's activation arenas back to the process's <see cref="ArenaBlocks"/>
    /// and forgets its forward states: every pointer into them (outputs, gradients of the input) is
    /// invalid afterwards and a backward needs a new forward. A worker process calls it after each
    /// operation, so that its replicas share one set of arena blocks.</summary>
    public void ReleaseActivations()
    {
        foreach (var a in _arenas) a.Release();
        for (int i = 0; i < _forwardStates.Count; i++) _forwardStates[i] = null;
    }

    /// <summary>Bytes of the activation arenas this model holds now.</summary>
    public long ActivationBytes => _arenas.Sum(a => a.HeldBytes);

    /// <summary>Forward over a packed batch. Returns the output [T, OutputWidth] in the arena
    /// (valid until the next forward): logits, or values for a scalar head.</summary>
    public float* Forward(PackedBatch batch) => Forward(batch, null, 0);

    /// <summary>Forward of this shard in activation slot <paramref name="slot"/>. A stage without
    /// the embedding takes the previous stage's hidden states [T, hidden] in <paramref name="input"/>;
    /// returns [T, <see cref="OutputWidth"/>] (valid until the next forward in that slot).</summary>
    public float* Forward(PackedBatch batch, float* input, int slot)
    {
        using var unit = ThreadChoice.Begin("forward", batch.TotalTokens);
        return ForwardOnChosenThreads(batch, input, slot);
    }

    private float* ForwardOnChosenThreads(PackedBatch batch, float* input, int slot)
    {
        ThrowIfWeightsReleased("forward");
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
        var state = new ForwardState(T, batch.Count, _layerCount);
        state.Tokens = (int*)arena.Take(T);
        state.Positions = (int*)arena.Take(T);
        state.CuSeqlens = (int*)arena.Take(batch.Count + 1);
        batch.Tokens.CopyTo(new Span<int>(state.Tokens, T));
        batch.Positions.CopyTo(new Span<int>(state.Positions, T));
        batch.CuSeqlens.CopyTo(new Span<int>(state.CuSeqlens, batch.Count + 1));
        long H = c.Hidden;
        float* x = arena.Take(T * H);
        EmbedOrTakeInput(state.Tokens, T, input, x);
        bool recompute = Recompute;
        var shared = recompute ? TakeBlockActivations(arena, T) : default;
        var attention = new AttentionSource(state.CuSeqlens, state.Sequences);
        for (int l = 0; l < _layerCount; l++)
        {
            state.BlockInput[l] = x;
            state.Blocks[l] = recompute ? shared : TakeBlockActivations(arena, T);
            float* blockOutput = arena.Take(T * H);
            BlockForward(l, T, state.Positions, x, blockOutput, state.Blocks[l], attention);
            x = blockOutput;
        }
        state.Recomputed = recompute;
        state.FinalHidden = x;
        _forwardStates[slot] = state;
        if (!HasHead)
        {
            state.Output = x;
            return x;
        }
        state.FinalNormed = arena.Take(T * H);
        state.FinalRstd = arena.Take(T);
        state.Output = arena.Take((long)T * OutputWidth);
        Head(arena, x, T, state.FinalNormed, state.FinalRstd, state.Output, gather: GatherLogits);
        return state.Output;
    }

    /// <summary>The first stage embeds its tokens (vocab-parallel: each rank looks up its slice,
    /// then one all-reduce); a later stage copies the previous stage's hidden states.</summary>
    private void EmbedOrTakeInput(int* tokens, int T, float* input, float* x)
    {
        long H = Config.Hidden;
        if (HasEmbedding)
        {
            Check(Native.realn_op_embedding_fwd(_stream.Ptr, WeightType, tokens, T, Weight(_embed), _vocabLocal, H, _vocabStart, x));
            TpAllReduce(x, T * H);
        }
        else Buffer.MemoryCopy(input, x, T * H * 4, T * H * 4);
    }

    /// <summary>Final norm and head over <paramref name="rows"/> hidden states: output [rows,
    /// OutputWidth]. Under tensor parallelism an LM head's vocab slices are all-gathered into whole
    /// rows when <paramref name="gather"/> (always for sampling), else each rank keeps its slice.</summary>
    private void Head(Arena arena, float* hidden, int rows, float* normed, float* rstd, float* output, bool gather, bool rowInvariant = false)
    {
        nint stream = _stream.Ptr;
        long H = Config.Hidden;
        Check(Native.realn_op_rmsnorm_fwd(stream, WeightType, hidden, Weight(_norm), normed, rstd, rows, H, Config.RmsEps));
        if (_tp == 1 || ScalarHead || !gather)
            Check(LinearFwd(rowInvariant, normed, Weight(_head), null, output, rows, H, _headWidth));
        else
        {
            float* parts = arena.Take((long)_tp * rows * _vocabLocal);
            Check(LinearFwd(rowInvariant, normed, Weight(_head), null, parts + (long)_tpRank * rows * _vocabLocal, rows, H, _vocabLocal));
            GatherColumns(parts, output, rows);
        }
    }

    /// <summary>The linear forward y = x w^T (+ bias) in the model's weight type; with
    /// <paramref name="rowInvariant"/> every row in one summation order whatever the row count
    /// (<see cref="Kernels.LinearForwardRowInvariant"/>), else the native op's fastest path for the shape.</summary>
    private int LinearFwd(bool rowInvariant, float* x, void* w, float* bias, float* y, long rows, long inFeatures, long outFeatures) =>
        rowInvariant ? Kernels.LinearForwardRowInvariant(_stream.Ptr, WeightType, x, w, bias, y, rows, inFeatures, outFeatures)
                     : Native.realn_op_linear_fwd(_stream.Ptr, WeightType, x, w, bias, y, rows, inFeatures, outFeatures);

    private void TpAllReduce(float* x, long n)
    {
        if (_tp > 1) _comm!.TpAllReduce(x, n);
    }

    /// <summary>Vocab-parallel head: all-gathers the tensor ranks' [rows, V/tp] blocks (rank r's at
    /// parts + r*rows*V/tp) and interleaves them into full rows [rows, V].</summary>
    private void GatherColumns(float* parts, float* full, int rows)
    {
        _comm!.TpAllGather(parts, (long)_tp * rows * _vocabLocal);
        long V = Config.Vocab, vl = _vocabLocal;
        for (int r = 0; r < _tp; r++)
            for (long t = 0; t < rows; t++)
                Buffer.MemoryCopy(parts + (r * rows + t) * vl, full + t * V + r * vl, vl * 4, vl * 4);
    }

    /// <summary>One block's intermediates for a training forward, as arena buffers (what backward reads).</summary>
    private BlockActivations TakeBlockActivations(Arena arena, int T)
    {
        var c = Config;
        long H = c.Hidden, qd = _qHeads * c.HeadDim, kd = _kvHeads * c.HeadDim, I = _ffnLocal;
        return new BlockActivations
        {
            Normed1 = arena.Take(T * H), Rstd1 = arena.Take(T), Q = arena.Take(T * qd), K = arena.Take(T * kd), V = arena.Take(T * kd),
            Attn = arena.Take(T * qd), Lse = arena.Take(T * _qHeads), Mid = arena.Take(T * H), Normed2 = arena.Take(T * H), Rstd2 = arena.Take(T),
            GateUp = arena.Take(T * 2 * I), Act = arena.Take(T * I),
        };
    }

    /// <summary>THE transformer block (local index <paramref name="l"/>), used by training, activation
    /// recomputation, prefill and decode alike:
    /// mid = x + o(attention(rope(q), rope(k), v)), q|k|v = proj(norm1(x));
    /// output = mid + down(swiglu(gate_up(norm2(mid)))).
    /// Intermediates go to <paramref name="a"/>. Under tensor parallelism q/k/v/gate_up produce this
    /// rank's heads / columns and the o / down outputs are all-reduced. <paramref name="output"/> may
    /// be <paramref name="x"/> (x is dead once mid is formed). In decode, when q/k/v are consecutive
    /// rows of one matrix and <see cref="BlockActivations.Qkv"/> is given, one call streams all three.</summary>
    private void BlockForward(int l, int T, int* positions, float* x, float* output, in BlockActivations a, in AttentionSource attention)
    {
        var c = Config;
        long H = c.Hidden, qd = _qHeads * c.HeadDim, kd = _kvHeads * c.HeadDim, I = _ffnLocal;
        nint stream = _stream.Ptr;
        float scale = 1f / MathF.Sqrt(c.HeadDim);
        ref var w = ref _blockWeights[l];
        Check(Native.realn_op_rmsnorm_fwd(stream, WeightType, x, Weight(w.InputNorm), a.Normed1, a.Rstd1, T, H, c.RmsEps));
        float* q = a.Q, k = a.K, v = a.V;
        if (attention.Decode && a.Qkv != null && w.KProj == w.QProj + qd * H && w.VProj == w.KProj + kd * H
            && (w.QBias == null || (w.KBias == w.QBias + qd && w.VBias == w.KBias + kd)))
        {
            // Rows of the fused output are q | k | v (one token: used in place); so are the biases.
            long qkvWidth = qd + 2 * kd;
            Check(LinearFwd(attention.RowInvariant, a.Normed1, Weight(w.QProj), Bias(w.QBias), a.Qkv, T, H, qkvWidth));
            if (T == 1) { q = a.Qkv; k = a.Qkv + qd; v = k + kd; }
            else
                for (long t = 0; t < T; t++)
                {
                    Buffer.MemoryCopy(a.Qkv + t * qkvWidth, q + t * qd, qd * 4, qd * 4);
                    Buffer.MemoryCopy(a.Qkv + t * qkvWidth + qd, k + t * kd, kd * 4, kd * 4);
                    Buffer.MemoryCopy(a.Qkv + t * qkvWidth + qd + kd, v + t * kd, kd * 4, kd * 4);
                }
        }
        else
        {
            Check(LinearFwd(attention.RowInvariant, a.Normed1, Weight(w.QProj), Bias(w.QBias), q, T, H, qd));
            Check(LinearFwd(attention.RowInvariant, a.Normed1, Weight(w.KProj), Bias(w.KBias), k, T, H, kd));
            Check(LinearFwd(attention.RowInvariant, a.Normed1, Weight(w.VProj), Bias(w.VBias), v, T, H, kd));
        }
        Rotary(q, positions, T, _qHeads, inverse: false);
        Rotary(k, positions, T, _kvHeads, inverse: false);
        if (attention.Cache is { } cache)
            Check(Native.realn_op_kv_store(stream, cache.ElementType, k, v, attention.TokenSlots, positions, T, cache.K(l), cache.V(l), cache.Slots,
                cache.MaxLen, _kvHeads, c.HeadDim));
        if (attention.Decode)
            Check(Native.realn_op_attention_decode(stream, attention.Cache!.ElementType, q, attention.Cache.K(l), attention.Cache.V(l), attention.RunSlots,
                attention.RunLengths, attention.Sequences, attention.Cache.Slots, attention.Cache.MaxLen, _qHeads, _kvHeads, c.HeadDim, scale, a.Attn));
        else
            Check(Native.realn_op_attention_fwd(stream, DType.F32, q, k, v, attention.CuSeqlens, attention.Sequences, T, _qHeads, _kvHeads,
                c.HeadDim, scale, a.Attn, a.Lse));
        Check(LinearFwd(attention.RowInvariant, a.Attn, Weight(w.OProj), null, a.Mid, T, qd, H));
        TpAllReduce(a.Mid, T * H);
        Check(Native.realn_op_add(stream, DType.F32, T * H, a.Mid, x, a.Mid));
        Check(Native.realn_op_rmsnorm_fwd(stream, WeightType, a.Mid, Weight(w.PostNorm), a.Normed2, a.Rstd2, T, H, c.RmsEps));
        Check(LinearFwd(attention.RowInvariant, a.Normed2, Weight(w.GateUp), null, a.GateUp, T, H, 2 * I));
        Check(Native.realn_op_swiglu_fwd(stream, DType.F32, a.GateUp, a.GateUp + I, 2 * I, a.Act, I, T, I));
        Check(LinearFwd(attention.RowInvariant, a.Act, Weight(w.Down), null, output, T, I, H));
        TpAllReduce(output, T * H);
        Check(Native.realn_op_add(stream, DType.F32, T * H, output, a.Mid, output));
    }

    /// <summary>Scratch of [T, OutputWidth] for the caller's output gradient (valid until the
    /// next forward).</summary>
    public float* OutputGradientBuffer() => OutputGradientBuffer(0);

    /// <summary>Scratch of [T, OutputWidth] in slot <paramref name="slot"/>'s arena (valid until its next forward).</summary>
    public float* OutputGradientBuffer(int slot)
    {
        var state = StateOf(slot);
        return _arenas[slot].Take((long)state.TokenCount * OutputWidth);
    }

    private ForwardState StateOf(int slot) =>
        (uint)slot < (uint)_forwardStates.Count && _forwardStates[slot] is { } state ? state : throw new InvalidOperationException($"Backward needs a Forward first (slot {slot})");

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
        using var unit = ThreadChoice.Begin("backward", StateOf(slot).TokenCount);
        return BackwardOnChosenThreads(dOut, slot);
    }

    private float* BackwardOnChosenThreads(float* dOut, int slot)
    {
        ThrowIfBf16Only("Backward");
        var state = StateOf(slot);
        var arena = _arenas[slot];
        var c = Config;
        int T = state.TokenCount;
        long H = c.Hidden, qd = _qHeads * c.HeadDim, kd = _kvHeads * c.HeadDim, I = _ffnLocal;
        nint stream = _stream.Ptr;
        // dX: gradient of the running hidden state; dH: of a norm's output; dT: of a norm's input (added to dX).
        float* dX = arena.Take(T * H), dH = arena.Take(T * H), dT = arena.Take(T * H);
        float* dAttn = arena.Take(T * qd), dQ = arena.Take(T * qd), dK = arena.Take(T * kd), dV = arena.Take(T * kd);
        float* dGateUp = arena.Take(T * 2 * I), dAct = arena.Take(T * I);
        if (HasHead)
        {
            float* dLocal = dOut;
            if (_tp > 1 && !ScalarHead && GatherLogits)
            {
                // This rank's vocab columns of the full logits gradient.
                dLocal = arena.Take((long)T * _vocabLocal);
                long V = c.Vocab, vl = _vocabLocal;
                for (long t = 0; t < T; t++) Buffer.MemoryCopy(dOut + t * V + _vocabStart, dLocal + t * vl, vl * 4, vl * 4);
            }
            Check(Native.realn_op_linear_bwd(stream, WeightType, state.FinalNormed, Weight(_head), dLocal, dH, _headGrad, null, T, H, _headWidth, 0));
            if (!ScalarHead) TpAllReduce(dH, T * H);  // a replicated scalar head gives every rank the whole dH
            Check(Native.realn_op_rmsnorm_bwd(stream, WeightType, state.FinalHidden, Weight(_norm), state.FinalRstd, dH, dX, _normGrad, T, H));
        }
        else Buffer.MemoryCopy(dOut, dX, T * H * 4, T * H * 4);
        float scale = 1f / MathF.Sqrt(c.HeadDim);
        var attention = new AttentionSource(state.CuSeqlens, state.Sequences);
        for (int l = _layerCount - 1; l >= 0; l--)
        {
            ref readonly var a = ref state.Blocks[l];
            if (state.Recomputed) BlockForward(l, T, state.Positions, state.BlockInput[l], dT, a, attention);  // dT: scratch for the unused block output
            ref var w = ref _blockWeights[l];
            ref var g = ref _blockGrads[l];
            // output = mid + down(swiglu(gate_up(norm2(mid))))
            Check(Native.realn_op_linear_bwd(stream, WeightType, a.Act, Weight(w.Down), dX, dAct, g.Down, null, T, I, H, 0));
            Check(Native.realn_op_swiglu_bwd(stream, DType.F32, a.GateUp, a.GateUp + I, 2 * I, dAct, I, dGateUp, dGateUp + I, T, I));
            Check(Native.realn_op_linear_bwd(stream, WeightType, a.Normed2, Weight(w.GateUp), dGateUp, dH, g.GateUp, null, T, H, 2 * I, 0));
            TpAllReduce(dH, T * H);
            Check(Native.realn_op_rmsnorm_bwd(stream, WeightType, a.Mid, Weight(w.PostNorm), a.Rstd2, dH, dT, g.PostNorm, T, H));
            Check(Native.realn_op_add(stream, DType.F32, T * H, dX, dT, dX));
            // mid = x + o(attention(rope(q(normed1)), rope(k(normed1)), v(normed1))), normed1 = norm1(x)
            Check(Native.realn_op_linear_bwd(stream, WeightType, a.Attn, Weight(w.OProj), dX, dAttn, g.OProj, null, T, qd, H, 0));
            Check(Native.realn_op_attention_bwd(stream, DType.F32, a.Q, a.K, a.V, a.Attn, a.Lse, dAttn, state.CuSeqlens, state.Sequences, T,
                _qHeads, _kvHeads, c.HeadDim, scale, dQ, dK, dV));
            Rotary(dQ, state.Positions, T, _qHeads, inverse: true);
            Rotary(dK, state.Positions, T, _kvHeads, inverse: true);
            Check(Native.realn_op_linear_bwd(stream, WeightType, a.Normed1, Weight(w.QProj), dQ, dH, g.QProj, g.QBias, T, H, qd, 0));
            Check(Native.realn_op_linear_bwd(stream, WeightType, a.Normed1, Weight(w.KProj), dK, dH, g.KProj, g.KBias, T, H, kd, 1));
            Check(Native.realn_op_linear_bwd(stream, WeightType, a.Normed1, Weight(w.VProj), dV, dH, g.VProj, g.VBias, T, H, kd, 1));
            TpAllReduce(dH, T * H);
            Check(Native.realn_op_rmsnorm_bwd(stream, WeightType, state.BlockInput[l], Weight(w.InputNorm), a.Rstd1, dH, dT, g.InputNorm, T, H));
            Check(Native.realn_op_add(stream, DType.F32, T * H, dX, dT, dX));
        }
        if (!HasEmbedding) return dX;
        Check(Native.realn_op_embedding_bwd(stream, WeightType, state.Tokens, T, dX, _vocabLocal, H, _vocabStart, _embedGrad));
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
            Check(Native.realn_op_sumsq(_stream.Ptr, GradientsPointer + v.Offset, v.LocalElements, &part));
            ss += part;
        }
        return ss;
    }

    // ------------------------------------------------------------------ KV-cache inference
    /// <summary>Runs the trunk for new tokens of sequences held in <paramref name="cache"/>:
    /// tokens[i] belongs to slot slots[i] at position positions[i]; K/V are stored, attention
    /// reads the cache up to and including that position (prefill: a whole prompt per slot, in
    /// order; decode: one token per slot). Writes the head output of the LAST token of each run of
    /// tokens of one slot into <paramref name="outRows"/> ([runs, OutputWidth]).
    /// With <paramref name="batchInvariant"/> (null: true for decode, false for a prefill) the
    /// forward is batch-invariant: every linear computes each row in one summation order whatever
    /// the row count (<see cref="Kernels.LinearForwardRowInvariant"/>), and every other op of the
    /// forward works per row or per sequence, so a sequence's logits and K/V do not depend on which
    /// other sequences share the forward. Without it the linears take the fastest path for their
    /// shape (SGEMM above 64 rows), whose bits for a row depend on the batch.</summary>
    internal void ForwardCached(KvCache cache, ReadOnlySpan<int> tokens, ReadOnlySpan<int> slots, ReadOnlySpan<int> positions, bool decode, float* outRows, bool? batchInvariant = null) =>
        ForwardCached(cache, tokens, slots, positions, decode, null, outRows, batchInvariant);

    /// <summary><see cref="ForwardCached(KvCache, int[], int[], int[], bool, float*)"/> of a
    /// pipeline stage: without the embedding it reads the previous stage's hidden states [T, hidden]
    /// from <paramref name="input"/>; without the head it writes its hidden states [T, hidden] to
    /// <paramref name="output"/> (every token: the next stage stores their K/V).</summary>
    internal void ForwardCached(KvCache cache, ReadOnlySpan<int> tokens, ReadOnlySpan<int> slots, ReadOnlySpan<int> positions, bool decode, float* input, float* output, bool? batchInvariant = null)
    {
        using var unit = ThreadChoice.Begin(decode ? "decode" : "prefill", tokens.Length);
        ForwardCachedOnChosenThreads(cache, tokens, slots, positions, decode, input, output, batchInvariant);
    }

    private void ForwardCachedOnChosenThreads(KvCache cache, ReadOnlySpan<int> tokens, ReadOnlySpan<int> slots, ReadOnlySpan<int> positions, bool decode, float* input, float* output, bool? batchInvariant)
    {
        ThrowIfWeightsReleased("forward");
        var c = Config;
        int T = tokens.Length;
        long H = c.Hidden, qd = _qHeads * c.HeadDim, kd = _kvHeads * c.HeadDim, I = _ffnLocal;
        if (cache.Layers != _layerCount || cache.KvHeads != _kvHeads)
            throw new ArgumentException($"KV cache holds {cache.Layers} layers of {cache.KvHeads} kv heads; this shard has {_layerCount} of {_kvHeads}");
        if (!HasEmbedding && input is null) throw new ArgumentException("a pipeline stage without the embedding needs the previous stage's hidden states");
        // Runs: maximal groups of consecutive tokens of one slot (prefill) or single tokens (decode).
        int runs = 0;
        for (int i = 0; i < T; i++)
            if (decode || i == T - 1 || slots[i + 1] != slots[i]) runs++;
        _forwardStates[0] = null;
        RefreshBf16();
        var arena = _arenas[0];
        arena.Reset(7 * T * H + 3 * T * qd + 4 * T * kd + 3 * T * I + T * _qHeads + 4L * T + 3L * runs + (long)runs * H * 2
            + (long)runs * _headWidth * _tp + 64 * 16);
        int* tokenIds = (int*)arena.Take(T), tokenPositions = (int*)arena.Take(T), tokenSlots = (int*)arena.Take(T);
        tokens.CopyTo(new Span<int>(tokenIds, T));
        positions.CopyTo(new Span<int>(tokenPositions, T));
        slots.CopyTo(new Span<int>(tokenSlots, T));
        int* cuSeqlens = (int*)arena.Take(runs + 1), runSlots = (int*)arena.Take(runs), runLengths = (int*)arena.Take(runs);
        cuSeqlens[0] = 0;
        for (int i = 0, r = 0; i < T; i++)
            if (decode || i == T - 1 || slots[i + 1] != slots[i]) cuSeqlens[++r] = i + 1;
        for (int r = 0; r < runs; r++)
        {
            int end = cuSeqlens[r + 1] - 1;   // the run's last token
            runSlots[r] = slots[end];
            runLengths[r] = positions[end] + 1;
            if (!decode && positions[cuSeqlens[r]] != 0) throw new ArgumentException("prefill runs must start at position 0");
        }
        float* x = arena.Take(T * H), normed = arena.Take(T * H);
        // One set of scratch for every block (nothing is kept for a backward): both norms write
        // `normed`, their statistics are not stored.
        var scratch = new BlockActivations
        {
            Normed1 = normed, Mid = arena.Take(T * H), Qkv = arena.Take(T * (qd + 2 * kd)), Q = arena.Take(T * qd), K = arena.Take(T * kd),
            V = arena.Take(T * kd), Attn = arena.Take(T * qd), Lse = arena.Take(T * _qHeads), Normed2 = normed,
            GateUp = arena.Take(T * 2 * I), Act = arena.Take(T * I),
        };
        EmbedOrTakeInput(tokenIds, T, input, x);
        bool rowInvariant = batchInvariant ?? decode;
        var attention = new AttentionSource(cache, cuSeqlens, runs, tokenSlots, runSlots, runLengths, decode, rowInvariant);
        for (int l = 0; l < _layerCount; l++)
            BlockForward(l, T, tokenPositions, x, x, scratch, attention);
        if (!HasHead)
        {
            Buffer.MemoryCopy(x, output, T * H * 4, T * H * 4);
            return;
        }
        // Head on the last token of each run only; sampling needs whole rows: always gathered.
        float* last = arena.Take(runs * H), lastNormed = arena.Take(runs * H);
        for (int r = 0; r < runs; r++)
            Buffer.MemoryCopy(x + (long)(cuSeqlens[r + 1] - 1) * H, last + r * H, H * 4, H * 4);
        Head(arena, last, runs, lastNormed, null, output, gather: true, rowInvariant);
    }

    /// <summary>A KV cache for this shard (its blocks and kv heads) of <paramref name="slots"/> sequences,
    /// in the model's precision: bf16 for a bf16 model (decode reads half the bytes; it still computes in fp32).</summary>
    public KvCache NewKvCache(int slots, int maxLen) => new(Config, slots, maxLen, _layerCount, _kvHeads, WeightType);

    /// <summary>Frees parameters, gradients and activations.</summary>
    public void Dispose()
    {
        foreach (var a in _arenas) a.Dispose();
        _params.Dispose();
        _grads.Dispose();
        _bf16Params?.Dispose();
        _frozenBiases?.Dispose();
    }
}

/// <summary>Weight precision of a model (experiment `precision`): fp32, or bf16 weights with fp32
/// master parameters, optimizer state, activations and losses.</summary>
internal enum ModelPrecision
{
    Fp32 = 0,
    Bf16 = 1,
}

/// <summary>Slot-based KV cache for generation: per layer K and V of [slots, max_len, kv_heads, head_dim],
/// fp32 or bf16 (<see cref="ElementType"/>; a bf16 cache stores rows rounded to nearest even).</summary>
internal sealed unsafe class KvCache : IDisposable
{
    private readonly HostBlock _block;
    private readonly long _perLayerBytes;

    /// <summary>Cache of a whole single-device model for <paramref name="slots"/> sequences of up to <paramref name="maxLen"/> tokens.</summary>
    public KvCache(LlamaConfig c, int slots, int maxLen, int elementType = DType.F32) : this(c, slots, maxLen, c.Layers, c.KvHeads, elementType) { }

    internal KvCache(LlamaConfig c, int slots, int maxLen, int layers, int kvHeads, int elementType)
    {
        if (slots <= 0 || maxLen <= 0) throw new ArgumentException($"KV cache needs slots > 0 and max_len > 0 (got {slots}, {maxLen})");
        if (maxLen > c.MaxPositions) throw new ArgumentException($"KV cache length {maxLen} exceeds max_position_embeddings {c.MaxPositions}");
        ElementBytes = elementType switch
        {
            DType.F32 => 4,
            DType.BF16 => 2,
            _ => throw new ArgumentException($"KV cache element type {elementType}: only fp32 ({DType.F32}) and bf16 ({DType.BF16})"),
        };
        ElementType = elementType;
        Slots = slots;
        MaxLen = maxLen;
        Layers = layers;
        KvHeads = kvHeads;
        HeadDim = c.HeadDim;
        _perLayerBytes = (long)slots * maxLen * kvHeads * c.HeadDim * ElementBytes;
        _block = new HostBlock(Math.Max(64, 2 * layers * _perLayerBytes));
    }

    /// <summary>realn dtype of the stored K/V (<see cref="DType.F32"/> or <see cref="DType.BF16"/>).</summary>
    public int ElementType { get; }
    /// <summary>Bytes per stored element (4 or 2).</summary>
    public int ElementBytes { get; }
    /// <summary>Bytes the cache holds.</summary>
    public long Bytes => 2 * Layers * _perLayerBytes;

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
        long row = (long)KvHeads * HeadDim * ElementBytes, bytes = length * row;
        for (int l = 0; l < Layers; l++)
        {
            byte* k = (byte*)K(l), v = (byte*)V(l);
            Buffer.MemoryCopy(k + (long)from * MaxLen * row, k + (long)to * MaxLen * row, bytes, bytes);
            Buffer.MemoryCopy(v + (long)from * MaxLen * row, v + (long)to * MaxLen * row, bytes, bytes);
        }
    }
    /// <summary>Keys of a layer: [slots, max_len, kv_heads, head_dim] of <see cref="ElementType"/>.</summary>
    public void* K(int layer) => (byte*)_block.Pointer + 2 * layer * _perLayerBytes;
    /// <summary>Values of a layer: [slots, max_len, kv_heads, head_dim] of <see cref="ElementType"/>.</summary>
    public void* V(int layer) => (byte*)_block.Pointer + (2 * layer + 1) * _perLayerBytes;
    public void Dispose() => _block.Dispose();
}
