// `realn selftest [--backend cpu|cuda] [--json] [--filter NAME]`: the native op case list (the
// same cases ctest runs) on one backend, checked against float64 references; prints a table or
// the JSON document {"backend", "ops": [{"name", "passed", "max_rel_err", ...}]}.
using System.CommandLine;
using System.Text.Json;
using ReaLNative.Interop;
using Spectre.Console;

namespace ReaLNative.Cli.Commands;

public static class SelfTestCommand
{
    public static Command Create()
    {
        var backend = new Option<string>("--backend") { Description = "Backend to test: cpu or cuda", DefaultValueFactory = _ => "cpu" };
        backend.AcceptOnlyFromAmong("cpu", "cuda");
        var json = new Option<bool>("--json") { Description = "Print the JSON report instead of a table" };
        var filter = new Option<string?>("--filter") { Description = "Only cases whose op name contains this text" };
        var cmd = new Command("selftest", "Run every native op case on a backend against the float64/CPU reference");
        cmd.Options.Add(backend);
        cmd.Options.Add(json);
        cmd.Options.Add(filter);
        cmd.SetAction(parse => Run(parse.GetValue(backend)!, parse.GetValue(json), parse.GetValue(filter)));
        return cmd;
    }

    private static int Run(string backendName, bool asJson, string? filter)
    {
        var backend = backendName == "cuda" ? Backend.Cuda : Backend.Cpu;
        string report;
        // An absent backend (not compiled in, no driver, no device) is refused naming why: the native
        // self-test reports the reason (e.g. "cuda backend: no CUDA driver (libcuda.so.1: ...)").
        try { report = Native.SelfTest(backend, filter); }
        catch (RealnException e) when (e.Status is RealnStatus.Unsupported or RealnStatus.NotFound)
        {
            throw new UsageException($"--backend {backendName}: not available here: {e.NativeMessage} ({Native.BuildInfo()})");
        }
        using var doc = JsonDocument.Parse(report);
        var ops = doc.RootElement.GetProperty("ops");
        int failed = ops.EnumerateArray().Count(o => !o.GetProperty("passed").GetBoolean());
        if (asJson)
        {
            Console.WriteLine(report);
            return failed == 0 ? 0 : 1;
        }
        var table = new Table().AddColumns("op", "shape", "max rel err", "tol", "result");
        foreach (var o in ops.EnumerateArray())
        {
            bool ok = o.GetProperty("passed").GetBoolean();
            table.AddRow(
                Markup.Escape(o.GetProperty("name").GetString() ?? ""),
                Markup.Escape(o.GetProperty("shape").GetString() ?? ""),
                o.GetProperty("max_rel_err").GetRawText(),
                o.GetProperty("tol").GetRawText(),
                ok ? "[green]pass[/]" : "[red]FAIL[/] " + Markup.Escape(o.TryGetProperty("note", out var n) ? n.GetString() ?? "" : ""));
        }
        AnsiConsole.Write(table);
        int total = ops.GetArrayLength();
        AnsiConsole.MarkupLine($"{Markup.Escape(Native.BuildInfo())}");
        AnsiConsole.MarkupLine($"backend {backendName}: {total - failed} passed, {failed} failed");
        return failed == 0 ? 0 : 1;
    }
}
