// SGEMM 1024^3 through the realn ABI (realn_op_gemm, row-major, no transposes) against OpenBLAS's
// cblas_sgemm called directly on the same buffers: the ABI's dispatch, validation and stream
// layer must cost < 5% (goal ratio >= 0.95). Same inputs as `realn bench kernels`.
using BenchmarkDotNet.Attributes;
using ReaLNative.Interop;

namespace ReaLNative.Bench;

public unsafe class GemmBench
{
    private const int N = 1024;
    private const double Flops = 2.0 * N * N * N;
    private NativeStream _stream = null!;
    private HostBlock _a = null!, _b = null!, _c = null!;

    [GlobalSetup]
    public void Setup()
    {
        _stream = NativeStream.Cpu();
        _a = new HostBlock(4L * N * N);
        _b = new HostBlock(4L * N * N);
        _c = new HostBlock(4L * N * N);
        var rng = new Random(1);
        foreach (var blk in new[] { _a, _b })
        {
            var s = blk.AsSpan<float>();
            for (int i = 0; i < s.Length; i++) s[i] = (float)(rng.NextDouble() - 0.5);
        }
    }

    [Benchmark(Baseline = true, Description = "OpenBLAS cblas_sgemm")]
    [Work(Flops, "GFLOP/s")]
    public void OpenBlasSgemm() =>
        OpenBlas.cblas_sgemm(OpenBlas.RowMajor, OpenBlas.NoTrans, OpenBlas.NoTrans, N, N, N, 1f,
            (float*)_a.Pointer, N, (float*)_b.Pointer, N, 0f, (float*)_c.Pointer, N);

    [Benchmark(Description = "realn_op_gemm")]
    [Work(Flops, "GFLOP/s", goal: 0.95)]
    public void RealnGemm() =>
        Native.Check(Native.realn_op_gemm(_stream.Ptr, DType.F32, 0, 0, N, N, N, 1f, (float*)_a.Pointer, N, 0,
            (float*)_b.Pointer, N, 0, 0f, (float*)_c.Pointer, N, 0, 1));

    [GlobalCleanup]
    public void Cleanup()
    {
        _a.Dispose();
        _b.Dispose();
        _c.Dispose();
        _stream.Dispose();
    }
}
