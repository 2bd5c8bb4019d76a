// `realn worker ...`: a worker process started by a master (`realn run --plan`, `realn launch`:
// role model, WorkerHost.RunModelWorker; `realn bench realloc`: the bench roles, in
// src/Diagnostics). It authenticates to the master with the per-job secret taken from
// the REALN_JOB_SECRET environment variable (hex), never from the command line. A model worker
// outlives a first SIGTERM / SIGINT (the whole job is usually signalled at once) and reports it to
// its master, which stops the job at a safe point and shuts it down; a second signal ends it at once.
using System.CommandLine;
using ReaLNative.Diagnostics;

namespace ReaLNative.Cli.Commands;

public static class WorkerCommand
{
    public static Command Create()
    {
        var control = new Option<string>("--control") { Description = "Master control endpoint (tcp://host:port)", Required = true };
        var job = new Option<string>("--job") { Description = "Job id", Required = true };
        var rank = new Option<int>("--rank") { Description = "This worker's UCX rank (its device)", Required = true };
        var size = new Option<int>("--size") { Description = "UCX world size (workers + the master)", Required = true };
        var role = new Option<string>("--role") { Description = "What to run: model | bench-realloc | bench-p2p | bench-serve", DefaultValueFactory = _ => "bench-realloc" };
        var reps = new Option<int>("--reps") { Description = "Repetitions (bench roles)", DefaultValueFactory = _ => 3 };
        var bind = new Option<string>("--bind") { Description = "Interface the worker's command server binds", DefaultValueFactory = _ => "127.0.0.1" };
        var advertise = new Option<string?>("--advertise") { Description = "Host the master reaches the command server at (default: --bind)" };
        var node = new Option<string?>("--node") { Description = "Node name in the master's messages" };
        var cmd = new Command("worker", "Worker process (started by a master; not for direct use)") { Hidden = true };
        foreach (var o in new Option[] { control, job, rank, size, role, reps, bind, advertise, node }) cmd.Options.Add(o);
        cmd.SetAction(p =>
        {
            var hex = Environment.GetEnvironmentVariable(WorkerHost.SecretVariable)
                      ?? throw new UsageException($"{WorkerHost.SecretVariable} is not set: workers are started by a master");
            byte[] secret;
            try { secret = Convert.FromHexString(hex); }
            catch (FormatException) { throw new UsageException($"{WorkerHost.SecretVariable} is not hex"); }
            using var signals = p.GetValue(role) == "model" ? ReportSignals() : null;
            string what = p.GetValue(role)!;
            if (what == "model")
                return WorkerHost.RunModelWorker(new ModelWorkerOptions
                {
                    Control = p.GetValue(control)!, Job = p.GetValue(job)!, Secret = secret, Rank = p.GetValue(rank), Size = p.GetValue(size),
                    BindHost = p.GetValue(bind)!, AdvertiseHost = p.GetValue(advertise), NodeName = p.GetValue(node) ?? Environment.MachineName,
                });
            if (BenchReallocCommand.WorkerRoles.Contains(what))
                return BenchReallocCommand.RunWorker(what, p.GetValue(control)!, p.GetValue(job)!, secret, p.GetValue(rank), p.GetValue(size), Math.Max(1, p.GetValue(reps)));
            throw new UsageException($"unknown worker role '{what}'");
        });
        return cmd;
    }

    private sealed class Registrations(params System.Runtime.InteropServices.PosixSignalRegistration[] r) : IDisposable
    {
        public void Dispose() { foreach (var x in r) x.Dispose(); }
    }

    private static Registrations ReportSignals()
    {
        int count = 0;
        void On(System.Runtime.InteropServices.PosixSignalContext c)
        {
            c.Cancel = true;
            bool term = c.Signal == System.Runtime.InteropServices.PosixSignal.SIGTERM;
            if (Interlocked.Increment(ref count) == 1) { WorkerHost.ReportSignal(term ? "SIGTERM" : "SIGINT"); return; }
            Environment.Exit(term ? 143 : 130);
        }
        return new Registrations(
            System.Runtime.InteropServices.PosixSignalRegistration.Create(System.Runtime.InteropServices.PosixSignal.SIGTERM, On),
            System.Runtime.InteropServices.PosixSignalRegistration.Create(System.Runtime.InteropServices.PosixSignal.SIGINT, On));
    }
}
