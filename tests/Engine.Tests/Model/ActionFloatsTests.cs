// The master's handle of a per-action output (Model/ActionFloats.cs) and how an iteration's batch
// (Dataflow/SampleBatch) hands it out: fetched once on first read, the owner told once (at the fetch
// or at release), a read after release of an output never fetched fails instead of reading zeros.
using ReaLNative.Engine.Dataflow;
using ReaLNative.Engine.Model;
using Xunit;

namespace ReaLNative.Engine.Tests.Model;

public sealed class ActionFloatsTests
{
    private static (ActionFloats Output, Func<int> Fetches, Func<int> Releases) Remote(float[] values, int length = -1)
    {
        int fetches = 0, releases = 0;
        var o = ActionFloats.Remote(length < 0 ? values.Length : length, "where", () => { fetches++; return values; }, () => releases++, "test output");
        return (o, () => fetches, () => releases);
    }

    [Fact]
    public void ARemoteOutputIsFetchedOnceOnFirstReadAndItsOwnerToldOnce()
    {
        var (o, fetches, releases) = Remote([1f, 2f, 3f]);
        Assert.Equal(3, o.Length);
        Assert.False(o.Fetched);
        Assert.Equal(0, fetches());
        var v = o.Values;
        Assert.Equal([1f, 2f, 3f], v);
        Assert.Same(v, o.Values);
        Assert.True(o.Fetched);
        Assert.Equal(1, fetches());
        Assert.Equal(1, releases());
        o.Release();                              // already fetched: readable, the owner not told again
        Assert.Same(v, o.Values);
        Assert.Equal(1, releases());
    }

    [Fact]
    public void AnOutputReleasedUnreadCannotBeRead()
    {
        var (o, fetches, releases) = Remote([1f, 2f]);
        o.Release();
        o.Release();
        Assert.Equal(1, releases());
        var e = Assert.Throws<InvalidOperationException>(() => o.Values);
        Assert.Contains("test output", e.Message);
        Assert.Contains("released", e.Message);
        Assert.Equal(0, fetches());
    }

    [Fact]
    public void AFetchOfTheWrongLengthFails()
    {
        var (o, _, _) = Remote([1f, 2f], length: 3);
        var e = Assert.Throws<InvalidDataException>(() => o.Values);
        Assert.Contains("fetched 2 floats, expected 3", e.Message);
    }

    [Fact]
    public void TheBatchHandsOutFloatsAndOutputsAndReleasesItsOutputs()
    {
        var b = new SampleBatch();
        var here = new float[] { 4f, 5f };
        b.Set("here", here);
        var (remote, fetches, releases) = Remote([6f]);
        b.Set("remote", remote);
        var (unread, _, unreadReleases) = Remote([7f]);
        b.Set("unread", unread);
        var wrapped = b.Get<ActionFloats>("here");
        Assert.Same(wrapped, b.Get<ActionFloats>("here"));   // one handle per key: identity checks hold
        Assert.Same(here, wrapped.Values);
        Assert.Same(here, b.Get<float[]>("here"));
        Assert.Same(remote, b.Get<ActionFloats>("remote"));
        Assert.Equal(0, fetches());
        Assert.Equal([6f], b.Get<float[]>("remote"));       // a float[] read fetches
        Assert.Equal(1, fetches());
        int registered = 0;
        b.OnRelease(() => registered++);
        b.Release();
        Assert.Equal(1, registered);
        Assert.Equal(1, releases());
        Assert.Equal(1, unreadReleases());
        Assert.Equal([6f], b.Get<float[]>("remote"));
        Assert.Throws<InvalidOperationException>(() => b.Get<float[]>("unread"));
    }

    /// <summary>A packed batch whose ids the workers keep: lengths, offsets, positions and actions
    /// without a read; the ids read once on first use; a wrong count refused.</summary>
    [Fact]
    public void ALazyPackedBatchReadsItsIdsOnlyWhenTheyAreRead()
    {
        int reads = 0;
        var sb = new ScoredBatch([3, 2], [2, 1], () => { reads++; return [5, 6, 7, 8, 9]; });
        var eager = new ScoredBatch([[5, 6, 7], [8, 9]], [2, 1]);
        Assert.Equal(eager.ActionIndex, sb.ActionIndex);
        Assert.Equal(eager.ActionCu, sb.ActionCu);
        Assert.Equal(eager.Packed.Positions, sb.Packed.Positions);
        Assert.Equal(5, sb.Packed.TotalTokens);
        Assert.False(sb.Packed.HasTokens);
        Assert.Equal(0, reads);
        Assert.Equal(eager.Packed.Tokens, sb.Packed.Tokens);
        Assert.Equal([8, 9], sb.Packed.Sequence(1).ToArray());
        Assert.Equal(1, reads);
        var bad = new PackedBatch([3, 2], () => [1, 2]);
        Assert.Contains("fetched 2 token ids for 5 tokens", Assert.Throws<InvalidDataException>(() => bad.Tokens).Message);
    }

    /// <summary>Kept token ids: read once, the owner told once; released unread, a read fails.</summary>
    [Fact]
    public void KeptIdsAreReadOnceAndFailAfterRelease()
    {
        int fetches = 0, releases = 0;
        var ids = KeptInts.Remote(3, () => { fetches++; return [4, 5, 6]; }, () => releases++, "test ids");
        Assert.Equal([4, 5, 6], ids.Values);
        _ = ids.Values;
        Assert.Equal((1, 1), (fetches, releases));
        var unread = KeptInts.Remote(3, () => [1, 2, 3], () => releases++, "test ids");
        unread.Release();
        Assert.Equal(2, releases);
        Assert.Contains("released", Assert.Throws<InvalidOperationException>(() => unread.Values).Message);
    }
}
