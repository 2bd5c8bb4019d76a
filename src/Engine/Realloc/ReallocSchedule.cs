namespace ReaLNative.Engine.Realloc;

/// <summary>
/// What one device does in a <see cref="ReallocPlan"/>: the steps it sends (gather its intervals
/// into a staging buffer once, then send to every destination of the step -- a broadcast group),
/// the steps it receives (receive into staging, scatter into its new shard), and local copies.
/// Every remote step has a tag unique within the plan (its index) so that messages of different
/// steps between the same pair of devices never mix.
/// </summary>
internal sealed class ReallocSchedule
{
    public readonly record struct Remote(int Tag, ReallocStep Step, int Peer);

    private ReallocSchedule(int device, List<Remote> sends, List<Remote> receives, List<ReallocStep> local)
    {
        Device = device;
        Sends = sends;
        Receives = receives;
        LocalCopies = local;
    }

    public int Device { get; }

    /// <summary>One entry per (step, destination); entries of one step are adjacent, so the
    /// sender gathers once per step.</summary>
    public IReadOnlyList<Remote> Sends { get; }
    public IReadOnlyList<Remote> Receives { get; }
    public IReadOnlyList<ReallocStep> LocalCopies { get; }

    /// <summary>Largest staging buffer (bytes) this device needs for one step.</summary>
    public long MaxStagingBytes =>
        Sends.Select(s => s.Step.Bytes).Concat(Receives.Select(r => r.Step.Bytes)).DefaultIfEmpty(0).Max();

    public static ReallocSchedule ForDevice(ReallocPlan plan, int device)
    {
        var sends = new List<Remote>();
        var receives = new List<Remote>();
        var local = new List<ReallocStep>();
        for (int i = 0; i < plan.Steps.Count; i++)
        {
            var s = plan.Steps[i];
            if (s.IsLocal)
            {
                if (s.SrcDevice == device) local.Add(s);
                continue;
            }
            if (s.SrcDevice == device)
                foreach (var d in s.DstDevices) sends.Add(new Remote(i, s, d));
            foreach (var d in s.DstDevices)
                if (d == device) receives.Add(new Remote(i, s, s.SrcDevice));
        }
        return new ReallocSchedule(device, sends, receives, local);
    }

    /// <summary>Interval offset/length arrays in BYTES for the native interval gather/scatter, on
    /// the source side (<paramref name="source"/> true) or the destination side.</summary>
    public static (long[] Offsets, long[] Lengths) ByteIntervals(ReallocStep step, int elementSize, bool source)
    {
        var offs = new long[step.Intervals.Count];
        var lens = new long[step.Intervals.Count];
        for (int i = 0; i < offs.Length; i++)
        {
            var iv = step.Intervals[i];
            offs[i] = (source ? iv.SrcOffset : iv.DstOffset) * elementSize;
            lens[i] = iv.Length * elementSize;
        }
        return (offs, lens);
    }
}
