// Types for ArchitectureTests.ScannerSeesUsesInsideMethodBodies: three made-up "folders" (by
// namespace) whose only links are the ones that test expects the metadata scanner to find.
namespace ReaLNative.Engine.Tests.Architecture.Fixture.Upper
{
    internal static class Helper
    {
        public static int Twice(int x) => 2 * x;
    }

    internal sealed class Payload
    {
        public int Value;
    }

    internal sealed class Failure : Exception;

    internal sealed class Holder
    {
        public Lower.Marker? Marker;
    }
}

namespace ReaLNative.Engine.Tests.Architecture.Fixture.Lower
{
    internal sealed class Marker;

    internal static class Caller
    {
        public static int Run()
        {
            var list = new List<Upper.Payload> { new() { Value = 3 } };
            try { return Upper.Helper.Twice(list[0].Value); }
            catch (Upper.Failure) { return -1; }
        }
    }
}

namespace ReaLNative.Engine.Tests.Architecture.Fixture.Unrelated
{
    internal static class Alone
    {
        public static int One() => 1;
    }
}
