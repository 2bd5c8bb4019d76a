// Shared command plumbing: invoking the parser, and turning expected failures (bad input, a
// native error, a missing library) into one clear line and an exit code instead of a stack trace.
using System.CommandLine;
using ReaLNative.Interop;

namespace ReaLNative.Cli;

/// <summary>Thrown by commands for bad user input; printed without a stack trace, exit code 2.</summary>
public sealed class UsageException(string message) : Exception(message);

internal static class CliRunner
{
    public static async Task<int> InvokeAsync(RootCommand root, string[] args)
    {
        int code;
        try
        {
            code = await root.Parse(args).InvokeAsync(new InvocationConfiguration { EnableDefaultExceptionHandler = false });
        }
        catch (Exception) when (Interruption.ExitingAtOnce)
        {
            code = 1;   // what failed while a second signal tears the job down is not the news
        }
        catch (Exception e)
        {
            code = Report(Unwrap(e));
        }
        // A second signal is ending the process with its own code (143 / 130): wait for it (30 s at most).
        for (int i = 0; i < 300 && Interruption.ExitingAtOnce; i++) Thread.Sleep(100);
        return code;
    }

    /// <summary>The one exception inside aggregates (concurrent calls fail as AggregateException).</summary>
    private static Exception Unwrap(Exception e)
    {
        while (e is AggregateException { InnerExceptions.Count: 1 } a) e = a.InnerExceptions[0];
        return e;
    }

    private static int Report(Exception e)
    {
        switch (e)
        {
            case UsageException or RunDirectoryException:
                Console.Error.WriteLine($"realn: {e.Message}");
                return 2;
            case RealnException:
                Console.Error.WriteLine($"realn: native error: {e.Message}");
                return 1;
            case DllNotFoundException:
                Console.Error.WriteLine($"realn: {e.Message}");
                return 2;
            case ArgumentException or FormatException or InvalidDataException or FileNotFoundException or DirectoryNotFoundException:
                // Bad input (config, plan, checkpoint, spec): the message names what is wrong.
                Console.Error.WriteLine($"realn: {e.Message}");
                return 2;
            case ReaLNative.Engine.Workers.WorkerFailedException:
                // A worker died, failed or went silent: the pool printed who, where and during what
                // the moment it happened ("realn: job failed: ..."), before tearing the job down.
                return 1;
            case TimeoutException:
                // A wait passed its deadline: the message names what was awaited.
                Console.Error.WriteLine($"realn: job failed: {e.Message}");
                return 1;
            case OperationCanceledException:
                Console.Error.WriteLine("realn: cancelled");
                return 130;
            default:
                Console.Error.WriteLine($"realn: {e.GetType().Name}: {e.Message}");
                Console.Error.WriteLine(e.StackTrace);
                return 1;
        }
    }
}
