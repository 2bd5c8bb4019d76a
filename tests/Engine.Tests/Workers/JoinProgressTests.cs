// A multi-node master waiting for its workers says, while it waits, which ranks have not joined and
// when it gives up (a node started in the wrong directory used to leave node 0 silent until the
// deadline).
using ReaLNative.Engine.Workers;
using Xunit;

namespace ReaLNative.Engine.Tests.Workers;

[Collection("worker processes")]
public sealed class JoinProgressTests
{
    [Fact]
    public void WaitingMasterNamesTheMissingRanksWhileItWaits()
    {
        var notes = new List<string>();
        var thrown = Assert.ThrowsAny<Exception>(() => new WorkerPool(2, new WorkerPoolOptions
        {
            ExternalWorkers = true, LocalRanks = [], StartTimeout = TimeSpan.FromSeconds(4.2),
            JoinNoteEvery = TimeSpan.FromSeconds(1), JoinNote = n => { lock (notes) notes.Add(n); },
        }).Dispose());
        var e = thrown is AggregateException { InnerExceptions.Count: 1 } a ? a.InnerExceptions[0] : thrown;  // as the CLI unwraps it
        Assert.IsType<TimeoutException>(e);
        Assert.Contains("within", e.Message);  // "rank(s) 0,1 missing", or under heavy load the master's own request's deadline
        lock (notes)
        {
            Assert.InRange(notes.Count, 1, 5);
            Assert.All(notes, n => Assert.StartsWith("waiting for worker rank(s) 0,1 to join (", n));
            Assert.Contains("of 4 s", notes[0]);
        }
    }
}
