using ReaLNative.Interop;

namespace ReaLNative.Engine.Model;

/// <summary>
/// Bump allocator over one pre-faulted host block, reset per forward pass: activations and
/// backward scratch live here, so a training step allocates nothing once the arena has grown to
/// the largest batch seen (fresh pages are slow to touch on these machines).
/// </summary>
internal sealed unsafe class Arena : IDisposable
{
    private HostBlock? _block;
    private long _used;

    public long CapacityFloats => _block is null ? 0 : _block.Bytes / 4;

    /// <summary>Makes room for <paramref name="floats"/> in total and resets; pointers handed out
    /// before are invalid afterwards.</summary>
    public void Reset(long floats)
    {
        if (CapacityFloats < floats)
        {
            _block?.Dispose();
            _block = new HostBlock(Math.Max(floats, CapacityFloats * 3 / 2) * 4 + 64);
        }
        _used = 0;
    }

    public float* Take(long floats)
    {
        long n = (floats + 15) & ~15L;  // 64-byte alignment
        if (_block is null || _used + n > CapacityFloats)
            throw new InvalidOperationException($"activation arena overflow: need {_used + n} floats, have {CapacityFloats}");
        float* p = (float*)_block.Pointer + _used;
        _used += n;
        return p;
    }

    public void Dispose() => _block?.Dispose();
}
