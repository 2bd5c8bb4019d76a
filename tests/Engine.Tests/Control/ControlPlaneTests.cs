using ReaLNative.Engine.Control;
using Xunit;

namespace ReaLNative.Engine.Tests.Control;

public sealed class ControlPlaneTests
{
    [Fact]
    public void RoundTripAndHandlerErrorsComeBack()
    {
        var secret = MessageAuth.NewSecret();
        using var server = new ControlServer("tcp://127.0.0.1:0", new MessageAuth(secret, "job1"),
            m => m.Type == "fail" ? throw new ArgumentException("no such thing") : $"{m.Sender}:{m.Type}:{m.Payload.Length}");
        using var client = new ControlClient(server.Endpoint, new MessageAuth(secret, "job1"), "worker-3");
        Assert.Equal("worker-3:hello:7", client.Request("hello", "\"abcde\"", TimeSpan.FromSeconds(10)));
        var bad = Assert.Throws<InvalidOperationException>(() => client.Request("hello", "{not json", TimeSpan.FromSeconds(10)));
        Assert.Contains("malformed JSON payload", bad.Message);
        Assert.Equal(1, server.Drops[DropReason.Payload]);
        Assert.Equal("worker-3:again:0", client.Request("again", "", TimeSpan.FromSeconds(10)));
        var e = Assert.Throws<InvalidOperationException>(() => client.Request("fail", "", TimeSpan.FromSeconds(10)));
        Assert.Contains("no such thing", e.Message);
    }

    [Fact]
    public void WrongSecretOrJobIsRejectedAndTimesOutClearly()
    {
        using var server = new ControlServer("tcp://127.0.0.1:0", new MessageAuth(MessageAuth.NewSecret(), "job1"), m => "ok");
        using var intruder = new ControlClient(server.Endpoint, new MessageAuth(MessageAuth.NewSecret(), "job1"), "intruder");
        var e = Assert.Throws<TimeoutException>(() => intruder.Request("hello", "", TimeSpan.FromMilliseconds(500)));
        Assert.Contains("no authenticated reply", e.Message);
        // The intruder stays connected meanwhile: disposing it (linger 0) could drop a message a
        // loaded machine had not yet sent.
        var until = DateTime.UtcNow.AddSeconds(20);
        while (server.Rejected == 0 && DateTime.UtcNow < until) Thread.Sleep(20);
        Assert.True(server.Rejected >= 1, "the server never saw (and rejected) the intruder's message");
    }

    [Fact]
    public void ForgedReplayedAndForeignMessagesAreRefused()
    {
        var secret = MessageAuth.NewSecret();
        var sender = new MessageAuth(secret, "job1");
        var receiver = new MessageAuth(secret, "job1");
        var frames = sender.Seal(new ControlMessage("job1", "w0", 1, "t", "{\"a\":1}"));
        Assert.Equal("{\"a\":1}", receiver.Open(frames).Payload);
        Assert.Contains("replayed", Assert.Throws<ControlAuthException>(() => receiver.Open(frames)).Message);
        var forged = sender.Seal(new ControlMessage("job1", "w0", 2, "t", "{\"a\":1}"));
        forged[4] = "{\"a\":2}"u8.ToArray();
        Assert.Contains("authentication code", Assert.Throws<ControlAuthException>(() => receiver.Open(forged)).Message);
        var other = new MessageAuth(secret, "job2").Seal(new ControlMessage("job2", "w0", 3, "t", ""));
        Assert.Contains("job 'job1'", Assert.Throws<ControlAuthException>(() => receiver.Open(other)).Message);
        Assert.Contains("frames", Assert.Throws<ControlAuthException>(() => receiver.Open([[1], [2]])).Message);
        Assert.Throws<ArgumentException>(() => new MessageAuth([1, 2, 3], "j"));
    }

    [Fact]
    public void JobSecretComesFromEnvironmentOrPrivateFileOnly()
    {
        var secret = JobSecret.Generate();
        string hex = Convert.ToHexString(secret);
        Assert.Equal(secret, JobSecret.FromEnvironment(v => v == JobSecret.Variable ? hex : null, ["realn", "worker"]));
        Assert.Contains("command line", Assert.Throws<InvalidOperationException>(
            () => JobSecret.FromEnvironment(v => v == JobSecret.Variable ? hex : null, ["realn", "--x", hex])).Message);
        string dir = Path.Combine(Path.GetTempPath(), "realn-secret-" + Guid.NewGuid().ToString("N")[..8]);
        Directory.CreateDirectory(dir);
        try
        {
            string f = JobSecret.WriteFile(secret, Path.Combine(dir, "job.secret"));
            if (!OperatingSystem.IsWindows())
                Assert.Equal(UnixFileMode.UserRead | UnixFileMode.UserWrite, File.GetUnixFileMode(f));
            Assert.Equal(secret, JobSecret.FromEnvironment(v => v == JobSecret.FileVariable ? f : null, ["realn"]));
            if (!OperatingSystem.IsWindows())
            {
                File.SetUnixFileMode(f, UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.OtherRead);
                Assert.Contains("chmod 600", Assert.Throws<InvalidOperationException>(
                    () => JobSecret.FromEnvironment(v => v == JobSecret.FileVariable ? f : null, ["realn"])).Message);
            }
            Assert.Throws<InvalidOperationException>(() => JobSecret.FromEnvironment(_ => null, ["realn"]));
        }
        finally { Directory.Delete(dir, true); }
    }
}
