// [LibraryImport] mirrors of native/include/realn.h, names kept verbatim, blittable types only
// (runtime marshalling is disabled for the assembly). Pointers are typed as in the header;
// streams, buffers and host memory are passed as raw handles (nint) so an op call costs one
// P/Invoke and nothing else — lifetime is owned by the SafeHandle wrappers (NativeStream,
// DeviceBuffer, HostBlock). Every function returning int returns a realn_status: wrap it in
// Native.Check(...) to turn a failure into a RealnException carrying the native message.
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;

[assembly: DisableRuntimeMarshalling]

namespace ReaLNative.Interop;

/// <summary>realn_dtype values.</summary>
public static class DType
{
    public const int F32 = 0;
    public const int BF16 = 1;
    public const int F16 = 2;
}

/// <summary>realn_backend_kind values.</summary>
public enum Backend
{
    Cpu = 0,
    Cuda = 1,
}

public static unsafe partial class Native
{
    /// <summary>Library name the resolver maps to librealn.so (see NativeLibraryResolver).</summary>
    public const string Library = "realn";

    /// <summary>Library name the resolver maps to librealn_selftest.so: the op case list, which
    /// librealn.so does not export (see NativeLibraryResolver).</summary>
    public const string SelfTestLibrary = "realn_selftest";

    public const int REALN_HOST_PREFAULT = 1, REALN_HOST_PINNED = 2, REALN_HOST_HUGEPAGE = 4;
    public const int REALN_COPY_D2D = 0, REALN_COPY_H2D = 1, REALN_COPY_D2H = 2;
    public const int REALN_ACCUMULATE_DX = 1;

    /// <summary>Throws <see cref="RealnException"/> with the native detail message if status != 0.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void Check(int status)
    {
        if (status != 0) Throw(status);
    }

    [MethodImpl(MethodImplOptions.NoInlining)]
    private static void Throw(int status) => throw RealnException.FromStatus(status);

    // --- status and errors ---------------------------------------------------------------------
    [LibraryImport(Library)] public static partial byte* realn_last_error();
    [LibraryImport(Library)] public static partial byte* realn_status_string(int status);
    [LibraryImport(Library)] public static partial int realn_version(int* major, int* minor, int* patch);
    [LibraryImport(Library)] public static partial byte* realn_build_info();

    // --- backends, threads, streams ------------------------------------------------------------
    [LibraryImport(Library)] public static partial int realn_backend_available(int backend, int* available);
    [LibraryImport(Library)] public static partial int realn_backend_device_count(int backend, int* count);
    [LibraryImport(Library)] public static partial int realn_set_num_threads(int n);
    [LibraryImport(Library)] public static partial int realn_get_num_threads(int* n);
    [LibraryImport(Library)] public static partial int realn_stream_create(int backend, int device, nint* stream);
    [LibraryImport(Library)] public static partial int realn_stream_synchronize(nint stream);
    [LibraryImport(Library)] public static partial int realn_stream_backend(nint stream, int* backend);
    [LibraryImport(Library)] public static partial int realn_stream_destroy(nint stream);

    // --- memory ----------------------------------------------------------------------------------
    [LibraryImport(Library)] public static partial int realn_host_alloc(long bytes, int flags, void** ptr);
    [LibraryImport(Library)] public static partial int realn_host_free(void* ptr);
    [LibraryImport(Library)] public static partial int realn_host_release(void* ptr);
    [LibraryImport(Library)] public static partial int realn_host_reacquire(void* ptr);
    [LibraryImport(Library)] public static partial int realn_host_shared_info(void* ptr, int* fd, long* offset, long* size, ulong* token);
    [LibraryImport(Library)] public static partial int realn_shared_map(int pid, int fd, ulong token, long size, void** ptr);
    [LibraryImport(Library)] public static partial int realn_shared_map_writable(int pid, int fd, ulong token, long size, void** ptr);
    [LibraryImport(Library)] public static partial int realn_shared_unmap(void* ptr, long size);
    [LibraryImport(Library)] public static partial int realn_futex_wait(int* word, int expected, long timeoutUs);
    [LibraryImport(Library)] public static partial int realn_futex_wake(int* word, int count);
    [LibraryImport(Library)] public static partial int realn_buf_alloc(nint stream, long bytes, nint* buf);
    [LibraryImport(Library)] public static partial int realn_buf_ptr(nint buf, void** ptr);
    [LibraryImport(Library)] public static partial int realn_buf_size(nint buf, long* bytes);
    [LibraryImport(Library)] public static partial int realn_buf_free(nint buf);
    [LibraryImport(Library)] public static partial int realn_copy(nint stream, void* dst, void* src, long bytes, int kind);
    [LibraryImport(Library)] public static partial int realn_fill_f32(nint stream, float* dst, long n, float value);

    // --- reallocation primitives -----------------------------------------------------------------
    [LibraryImport(Library)] public static partial int realn_interval_gather(nint stream, void* staging, void* flat, long* offsets, long* lengths, long count);
    [LibraryImport(Library)] public static partial int realn_interval_scatter(nint stream, void* flat, void* staging, long* offsets, long* lengths, long count);
    [LibraryImport(Library)] public static partial int realn_process_read(int pid, void* local, ulong remote, long* remoteOffsets, long* localOffsets, long* lengths, long count);
    [LibraryImport(Library)] public static partial int realn_hash_bytes(nint stream, void* data, long bytes, ulong* hash);

    // --- dense -----------------------------------------------------------------------------------
    [LibraryImport(Library)]
    public static partial int realn_op_gemm(nint stream, int dtype, int transA, int transB, long m, long n, long k, float alpha,
        void* a, long lda, long strideA, void* b, long ldb, long strideB, float beta, void* c, long ldc, long strideC, long batch);
    [LibraryImport(Library)]
    public static partial int realn_op_linear_fwd(nint stream, int dtype, void* x, void* w, void* bias, void* y, long rows, long inFeatures, long outFeatures);
    [LibraryImport(Library)]
    public static partial int realn_op_linear_bwd(nint stream, int dtype, void* x, void* w, void* dy, void* dx, void* dw, void* dbias,
        long rows, long inFeatures, long outFeatures, int flags);

    // --- elementwise -----------------------------------------------------------------------------
    [LibraryImport(Library)] public static partial int realn_op_axpby(nint stream, int dtype, long n, float alpha, void* x, float beta, void* y);
    [LibraryImport(Library)] public static partial int realn_op_add(nint stream, int dtype, long n, void* a, void* b, void* output);
    [LibraryImport(Library)] public static partial int realn_op_sumsq(nint stream, float* x, long n, double* output);
    [LibraryImport(Library)] public static partial int realn_op_scale(nint stream, float* x, long n, float alpha);
    [LibraryImport(Library)] public static partial int realn_op_count_nonfinite(nint stream, float* x, long n, long* output);
    [LibraryImport(Library)] public static partial int realn_op_convert(nint stream, int dstDtype, void* dst, int srcDtype, void* src, long n);

    // --- transformer layers ------------------------------------------------------------------------
    [LibraryImport(Library)]
    public static partial int realn_op_embedding_fwd(nint stream, int dtype, int* ids, long n, void* table, long vocab, long hidden, long vocabStart, void* output);
    [LibraryImport(Library)]
    public static partial int realn_op_embedding_bwd(nint stream, int dtype, int* ids, long n, void* dout, long vocab, long hidden, long vocabStart, void* dtable);
    [LibraryImport(Library)]
    public static partial int realn_op_rmsnorm_fwd(nint stream, int dtype, void* x, void* w, void* y, float* rstd, long rows, long dim, float eps);
    [LibraryImport(Library)]
    public static partial int realn_op_rmsnorm_bwd(nint stream, int dtype, void* x, void* w, float* rstd, void* dy, void* dx, void* dw, long rows, long dim);
    [LibraryImport(Library)]
    public static partial int realn_op_rotary_fwd(nint stream, int dtype, void* x, int* positions, void* y, long tokens, long heads, long headDim, long rotDim, float theta);
    [LibraryImport(Library)]
    public static partial int realn_op_rotary_bwd(nint stream, int dtype, void* dy, int* positions, void* dx, long tokens, long heads, long headDim, long rotDim, float theta);
    [LibraryImport(Library)]
    public static partial int realn_op_rotary_freqs_fwd(nint stream, int dtype, void* x, int* positions, void* y, long tokens, long heads, long headDim, long rotDim, double* invFreq);
    [LibraryImport(Library)]
    public static partial int realn_op_rotary_freqs_bwd(nint stream, int dtype, void* dy, int* positions, void* dx, long tokens, long heads, long headDim, long rotDim, double* invFreq);
    [LibraryImport(Library)]
    public static partial int realn_op_swiglu_fwd(nint stream, int dtype, void* gate, void* up, long ldIn, void* output, long ldOut, long rows, long cols);
    [LibraryImport(Library)]
    public static partial int realn_op_swiglu_bwd(nint stream, int dtype, void* gate, void* up, long ldIn, void* dout, long ldOut, void* dgate, void* dup, long rows, long cols);
    [LibraryImport(Library)]
    public static partial int realn_op_attention_fwd(nint stream, int dtype, void* q, void* k, void* v, int* cuSeqlens, long nseq, long totalTokens,
        long hq, long hkv, long headDim, float scale, void* output, float* lse);
    [LibraryImport(Library)]
    public static partial int realn_op_attention_bwd(nint stream, int dtype, void* q, void* k, void* v, void* output, float* lse, void* dout,
        int* cuSeqlens, long nseq, long totalTokens, long hq, long hkv, long headDim, float scale, void* dq, void* dk, void* dv);
    [LibraryImport(Library)]
    public static partial int realn_op_kv_store(nint stream, int dtype, void* k, void* v, int* slots, int* positions, long tokens,
        void* kcache, void* vcache, long numSlots, long maxLen, long hkv, long headDim);
    [LibraryImport(Library)]
    public static partial int realn_op_attention_decode(nint stream, int dtype, void* q, void* kcache, void* vcache, int* slots, int* lens,
        long batch, long numSlots, long maxLen, long hq, long hkv, long headDim, float scale, void* output);

    // --- log-probs and losses ----------------------------------------------------------------------
    [LibraryImport(Library)]
    public static partial int realn_op_logprobs_fwd(nint stream, int dtype, void* logits, int* labels, byte* mask, long rows, long vocab,
        float temperature, float* logp, float* entropy, float* lse);
    [LibraryImport(Library)]
    public static partial int realn_op_logprobs_bwd(nint stream, int dtype, void* logits, int* labels, byte* mask, long rows, long vocab,
        float temperature, float* lse, float* dlogp, float* dentropy, void* dlogits);
    [LibraryImport(Library)]
    public static partial int realn_op_cross_entropy_fwd(nint stream, int dtype, void* logits, int* labels, long rows, long vocab,
        int ignoreIndex, float* loss, float* lse, double* meanLoss);
    [LibraryImport(Library)]
    public static partial int realn_op_cross_entropy_bwd(nint stream, int dtype, void* logits, int* labels, long rows, long vocab,
        int ignoreIndex, float* lse, float gradScale, void* dlogits);

    // --- optimizer, sampling, RL -------------------------------------------------------------------
    [LibraryImport(Library)]
    public static partial int realn_op_adamw(nint stream, AdamWOpts* opts, float* param, float* grad, float* m, float* v, long n);
    [LibraryImport(Library)]
    public static partial int realn_op_sample(nint stream, int dtype, void* logits, long rows, long vocab, SampleOpts* opts,
        int* tokens, byte* maskOut, float* logpOut);
    [LibraryImport(Library)]
    public static partial int realn_op_gae(nint stream, float* rewards, float* values, int* cuSeqlens, long nseq, float gamma, float lambda,
        float* advantages, float* returns);

    // --- self-test (librealn_selftest.so, native/include/realn_selftest.h) ----------------------------
    [LibraryImport(SelfTestLibrary)]
    public static partial int realn_selftest_run(int backend, byte* filter, byte** json);
    [LibraryImport(SelfTestLibrary)] public static partial byte* realn_selftest_last_error();

    /// <summary>The calling thread's last native error message.</summary>
    public static string LastError() => Marshal.PtrToStringUTF8((nint)realn_last_error()) ?? "";

    /// <summary>Name of a status code, e.g. REALN_ERR_INVALID_ARGUMENT.</summary>
    public static string StatusName(int status) => Marshal.PtrToStringUTF8((nint)realn_status_string(status)) ?? status.ToString();

    /// <summary>Backends compiled into the loaded library, BLAS, threads.</summary>
    public static string BuildInfo() => Marshal.PtrToStringUTF8((nint)realn_build_info()) ?? "";

    public static bool BackendAvailable(Backend backend)
    {
        int available;
        Check(realn_backend_available((int)backend, &available));
        return available != 0;
    }

    /// <summary>Threads used by the CPU backend (OpenMP + BLAS); n &lt;= 0 restores the default.</summary>
    public static void SetNumThreads(int n) => Check(realn_set_num_threads(n));

    public static int GetNumThreads()
    {
        int n;
        Check(realn_get_num_threads(&n));
        return n;
    }

    /// <summary>Runs the native op case list on a backend; returns the JSON document. A run that
    /// cannot happen (backend missing) throws a <see cref="RealnException"/> naming why.</summary>
    public static string SelfTest(Backend backend, string? filter = null)
    {
        byte* json = null;
        int status;
        if (filter is null)
        {
            status = realn_selftest_run((int)backend, null, &json);
        }
        else
        {
            byte[] f = System.Text.Encoding.UTF8.GetBytes(filter + "\0");
            fixed (byte* pf = f) status = realn_selftest_run((int)backend, pf, &json);
        }
        if (status != 0)
            throw new RealnException((RealnStatus)status, Marshal.PtrToStringUTF8((nint)realn_selftest_last_error()) ?? "");
        return Marshal.PtrToStringUTF8((nint)json) ?? "";
    }

    /// <summary>Byte hash ("realn hash v1") of host or backend memory.</summary>
    public static ulong Hash(NativeStream stream, void* data, long bytes)
    {
        ulong h;
        Check(realn_hash_bytes(stream.Ptr, data, bytes, &h));
        return h;
    }
}
