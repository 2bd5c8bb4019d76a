namespace ReaLNative.Engine.Realloc;

/// <summary>
/// Executes a <see cref="ReallocPlan"/> whose source and destination buffers all live in this
/// process (the single-process engine and colocated layout changes): every interval is one memory
/// copy straight from the source shard buffer into the destination shard buffer, no staging.
/// Buffers are given per device as base pointers; their sizes are checked against the layouts.
/// </summary>
public static unsafe class InProcessRealloc
{
    public readonly record struct DeviceBuffer(nint Pointer, long Bytes);

    public static void Execute(ReallocPlan plan, IReadOnlyDictionary<int, DeviceBuffer> source,
                               IReadOnlyDictionary<int, DeviceBuffer> destination)
    {
        foreach (var d in plan.From.Devices)
            Require(source, d, plan.SourceLayoutOf(d).TotalElements * plan.ElementSize, "source");
        foreach (var d in plan.To.Devices)
            Require(destination, d, plan.DestinationLayoutOf(d).TotalElements * plan.ElementSize, "destination");
        long es = plan.ElementSize;
        foreach (var step in plan.Steps)
        {
            byte* s = (byte*)source[step.SrcDevice].Pointer;
            foreach (var dd in step.DstDevices)
            {
                byte* t = (byte*)destination[dd].Pointer;
                foreach (var iv in step.Intervals)
                {
                    long n = iv.Length * es;
                    Buffer.MemoryCopy(s + iv.SrcOffset * es, t + iv.DstOffset * es, n, n);
                }
            }
        }
    }

    private static void Require(IReadOnlyDictionary<int, DeviceBuffer> buffers, int device, long bytes, string side)
    {
        if (!buffers.TryGetValue(device, out var b) || b.Pointer == 0)
            throw new ArgumentException($"no {side} buffer for device {device}");
        if (b.Bytes < bytes)
            throw new ArgumentException($"{side} buffer of device {device} holds {b.Bytes} bytes, its shard needs {bytes}");
    }
}
