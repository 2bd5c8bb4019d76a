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
        try
        {
            return await root.Parse(args).InvokeAsync(new InvocationConfiguration { EnableDefaultExceptionHandler = false });
        }
        catch (UsageException e)
        {
            Console.Error.WriteLine($"realn: {e.Message}");
            return 2;
        }
        catch (RealnException e)
        {
            Console.Error.WriteLine($"realn: native error: {e.Message}");
            return 1;
        }
        catch (DllNotFoundException e)
        {
            Console.Error.WriteLine($"realn: {e.Message}");
            return 2;
        }
        catch (Exception e) when (e is ArgumentException or FormatException or InvalidDataException
                                      or FileNotFoundException or DirectoryNotFoundException)
        {
            // Bad input (config, plan, checkpoint, spec): the message names what is wrong.
            Console.Error.WriteLine($"realn: {e.Message}");
            return 2;
        }
        catch (Exception e) when (e is ReaLNative.Engine.Workers.WorkerFailedException or TimeoutException)
        {
            // A worker died or a wait passed its deadline: the message names who, where and what.
            Console.Error.WriteLine($"realn: job failed: {e.Message}");
            return 1;
        }
        catch (OperationCanceledException)
        {
            Console.Error.WriteLine("realn: cancelled");
            return 130;
        }
        catch (Exception e)
        {
            Console.Error.WriteLine($"realn: {e.GetType().Name}: {e.Message}");
            Console.Error.WriteLine(e.StackTrace);
            return 1;
        }
    }
}
