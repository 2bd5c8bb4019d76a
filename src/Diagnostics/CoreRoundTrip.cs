// The round trip of a cache line between two cores: one thread writes a counter, another waits for it and answers,
// thousands of times. On the 2-core development VM it measured 100-125 ns or 460-540 ns from one minute to the next
// (the host places the two virtual CPUs on nearby or distant physical cores), and a tiny model's two-thread train
// step followed it: 5.8-6.1 ms near, 9.9-10.6 ms far (one thread: 9.3-10.1 ms). `realn profile` records it with its
// points and `realn bench plan` with each run, so an estimate and a measurement taken at different distances can be
// told apart from the model's error (docs/cost-model.md, "Threads of the single device").
using System.Diagnostics;

namespace ReaLNative.Diagnostics;

public static class CoreRoundTrip
{
    /// <summary>Nanoseconds per round trip between two threads spinning on one cache line each (the fastest of 5 batches
    /// of 2000, so a batch interrupted by another process does not count); null with one core, or when no batch
    /// finished within its deadline (both threads on one core: the host is too busy to tell).</summary>
    public static double? Nanoseconds()
    {
        if (Environment.ProcessorCount < 2) return null;
        const int batches = 5, trips = 2000;
        var box = new Box();
        var deadline = TimeSpan.FromMilliseconds(200);
        var other = new Thread(() =>
        {
            for (long i = 1; i <= batches * (long)trips; i++)
            {
                long start = Stopwatch.GetTimestamp();
                while (Volatile.Read(ref box.Ping) != i)
                    if (Volatile.Read(ref box.Stop) != 0 || Stopwatch.GetElapsedTime(start) > deadline) return;
                Volatile.Write(ref box.Pong, i);
            }
        }) { IsBackground = true, Name = "core round trip" };
        other.Start();
        double best = double.PositiveInfinity;
        long n = 0;
        try
        {
            for (int b = 0; b < batches; b++)
            {
                long t0 = Stopwatch.GetTimestamp();
                for (int k = 0; k < trips; k++)
                {
                    n++;
                    Volatile.Write(ref box.Ping, n);
                    while (Volatile.Read(ref box.Pong) != n)
                        if (Stopwatch.GetElapsedTime(t0) > deadline) return double.IsFinite(best) ? Math.Round(best, 1) : null;
                }
                best = Math.Min(best, Stopwatch.GetElapsedTime(t0).TotalNanoseconds / trips);
            }
            return Math.Round(best, 1);
        }
        finally
        {
            Volatile.Write(ref box.Stop, 1);
            other.Join(TimeSpan.FromSeconds(2));
        }
    }

    /// <summary>The three counters, each on its own cache line.</summary>
    [System.Runtime.InteropServices.StructLayout(System.Runtime.InteropServices.LayoutKind.Explicit, Size = 384)]
    private sealed class Box
    {
        [System.Runtime.InteropServices.FieldOffset(0)] public long Ping;
        [System.Runtime.InteropServices.FieldOffset(128)] public long Pong;
        [System.Runtime.InteropServices.FieldOffset(256)] public long Stop;
    }
}
