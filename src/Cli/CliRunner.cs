// Shared command plumbing: invoking the parser, and the one place that turns failures into one
// line on stderr and an exit code: bad input (InputException and the I/O / format errors that name
// their file) is `realn: <message>` + exit 2; a failure of the work itself is exit 1; anything
// unexpected is `realn: internal error: <message>` + exit 1. No stack trace unless REALN_DEBUG=1.
using System.CommandLine;
using ReaLNative.Diagnostics;
using ReaLNative.Interop;

namespace ReaLNative.Cli;

/// <summary>Thrown by commands for bad user input; printed without a stack trace, exit code 2.</summary>
public sealed class UsageException(string message) : InputException(message);

internal static class CliRunner
{
    /// <summary>Set to 1 to print the stack trace of any failure (after its one-line message).</summary>
    public const string DebugVariable = "REALN_DEBUG";

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
            code = Report(Unwrap(e), Console.Error, Environment.GetEnvironmentVariable(DebugVariable) == "1");
        }
        // A second signal is ending the process with its own code (143 / 130): wait for it (30 s at most).
        for (int i = 0; i < 300 && Interruption.ExitingAtOnce; i++) Thread.Sleep(100);
        return code;
    }

    /// <summary>The exception to report: the one inside single-element aggregates (concurrent calls
    /// fail as AggregateException), or a bad-input / training failure wrapped by a device thread.</summary>
    internal static Exception Unwrap(Exception e)
    {
        while (e is AggregateException { InnerExceptions.Count: 1 } a) e = a.InnerExceptions[0];
        for (var i = e.InnerException; i is not null; i = i.InnerException)
            if (i is InputException or TrainingFailedException) return i;
        return e;
    }

    /// <summary>Writes the failure's line(s) and returns the exit code.</summary>
    internal static int Report(Exception e, TextWriter err, bool debug)
    {
        static string One(string s) => s.ReplaceLineEndings(" ").Trim();
        int code;
        switch (e)
        {
            case InputException or RunDirectoryException:
            case DllNotFoundException:
            case ArgumentException or FormatException or InvalidDataException or FileNotFoundException or DirectoryNotFoundException:
                // Bad input (config, plan, checkpoint, spec, arguments): the message names what is wrong and where.
                err.WriteLine($"realn: {One(e.Message)}");
                code = 2;
                break;
            case RealnException:
                err.WriteLine($"realn: native error: {One(e.Message)}");
                code = 1;
                break;
            case WorkerFailedException:
                // A worker died, failed or went silent: the pool printed who, where and during what
                // the moment it happened ("realn: job failed: ..."), before tearing the job down.
                code = 1;
                break;
            case MeasurementException:
                err.WriteLine($"realn: {One(e.Message)}");
                code = 1;
                break;
            case TimeoutException or TrainingFailedException:
                // A wait passed its deadline (the message names what was awaited), or training diverged.
                err.WriteLine($"realn: job failed: {One(e.Message)}");
                code = 1;
                break;
            case OutOfMemoryException or InsufficientExecutionStackException:
                err.WriteLine($"realn: out of memory: {One(e.Message)}");
                code = 1;
                break;
            case OperationCanceledException:
                err.WriteLine("realn: cancelled");
                code = 130;
                break;
            default:
                err.WriteLine($"realn: internal error: {e.GetType().Name}: {One(e.Message)}" + (debug ? "" : $" ({DebugVariable}=1 for the stack trace)"));
                code = 1;
                break;
        }
        if (debug) err.WriteLine(e.ToString());
        return code;
    }
}
