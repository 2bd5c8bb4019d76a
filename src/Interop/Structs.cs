// Blittable mirrors of realn.h's versioned option structs. Each starts with (size, version) and
// is created through Default so the native side can tell which layout it was given.
using System.Runtime.InteropServices;

namespace ReaLNative.Interop;

/// <summary>realn_adamw_opts.</summary>
[StructLayout(LayoutKind.Sequential)]
public struct AdamWOpts
{
    public int Size;
    public int Version;
    public float Lr;
    public float Beta1;
    public float Beta2;
    public float Eps;
    public float WeightDecay;
    public float GradScale;
    public long Step;

    public static AdamWOpts Default => new()
    {
        Size = Marshal.SizeOf<AdamWOpts>(), Version = 1, Lr = 1e-3f, Beta1 = 0.9f, Beta2 = 0.999f,
        Eps = 1e-8f, WeightDecay = 0f, GradScale = 1f, Step = 1,
    };
}

/// <summary>realn_sample_opts. Temperature 0 = greedy; TopK 0 and TopP 1 disable filtering.</summary>
[StructLayout(LayoutKind.Sequential)]
public struct SampleOpts
{
    public int Size;
    public int Version;
    public float Temperature;
    public int TopK;
    public float TopP;
    public int Reserved;
    public ulong Seed;
    public ulong Offset;

    public static SampleOpts Default => new()
    {
        Size = Marshal.SizeOf<SampleOpts>(), Version = 1, Temperature = 1f, TopK = 0, TopP = 1f,
    };
}
