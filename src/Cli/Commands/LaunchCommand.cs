// `realn launch CONFIG --plan PLAN.json --nnodes N --node-rank K --master HOST:PORT [--out DIR]`:
// run once per node. Node 0 validates the config and the plan, binds the master's control endpoint
// at HOST:PORT (that interface only, unless --bind says otherwise), starts its own model workers and
// runs the pipeline as `realn run` does once every node's workers have joined; every other node
// starts its workers, which join through the master, and stays until the job ends. The node rank
// and count may come from Slurm (SLURM_NODEID / SLURM_NNODES) or Open MPI (OMPI_COMM_WORLD_RANK /
// OMPI_COMM_WORLD_SIZE). The job secret comes from REALN_JOB_SECRET or REALN_JOB_SECRET_FILE on
// every node (a single-node launch without one generates it); it is never on a command line.
// SIGTERM / SIGINT to any node's launcher (or worker) stop the whole job at its next safe point;
// a signalled launcher exits 143 / 130.
using System.CommandLine;
using System.Globalization;
using System.Net;
using System.Net.Sockets;
using System.Security.Cryptography;
using Spectre.Console;

namespace ReaLNative.Cli.Commands;

public static class LaunchCommand
{
    public static Command Create()
    {
        var config = new Argument<string>("config") { Description = "Experiment config (YAML)" };
        var plan = new Option<string>("--plan") { Description = "Execution plan (JSON) whose cluster has --nnodes nodes", Required = true };
        var nnodes = new Option<int?>("--nnodes") { Description = "Nodes in the job (default: SLURM_NNODES or OMPI_COMM_WORLD_SIZE)" };
        var nodeRank = new Option<int?>("--node-rank") { Description = "This node's rank, 0 runs the master (default: SLURM_NODEID or OMPI_COMM_WORLD_RANK)" };
        var master = new Option<string>("--master") { Description = "HOST:PORT of the master's control endpoint (node 0 binds it)", Required = true };
        var bind = new Option<string?>("--bind") { Description = "Interface node 0's master binds instead of HOST (0.0.0.0: all interfaces)" };
        var workerBind = new Option<string?>("--worker-bind") { Description = "Interface this node's workers bind (default: the address that routes to the master)" };
        var output = new Option<string?>("--out") { Description = "Output directory (node 0)" };
        var resume = new Option<bool>("--resume") { Description = "Continue from the last checkpoint in --out (node 0)" };
        var overwrite = new Option<bool>("--overwrite") { Description = "Start over in an --out that holds an earlier run, deleting only what a run wrote there (node 0)" };
        var job = new Option<string?>("--job") { Description = "Job id (default: derived from the job secret, the same on every node)" };
        var startTimeout = new Option<int>("--start-timeout") { Description = "Seconds for every node's workers to join", DefaultValueFactory = _ => 120 };
        var cmd = new Command("launch", "Run one node's part of a (multi-node) plan: node 0 runs the master. SIGTERM / SIGINT to any node stop the job " +
                                        "at its next safe point, exit 143 / 130; a second signal stops at once; continue with --resume");
        cmd.Arguments.Add(config);
        foreach (var o in new Option[] { plan, nnodes, nodeRank, master, bind, workerBind, output, resume, overwrite, job, startTimeout }) cmd.Options.Add(o);
        cmd.SetAction(p => Run(p.GetValue(config)!, p.GetValue(plan)!, p.GetValue(nnodes), p.GetValue(nodeRank), p.GetValue(master)!, p.GetValue(bind),
            p.GetValue(workerBind), p.GetValue(output), p.GetValue(resume), p.GetValue(overwrite), p.GetValue(job), p.GetValue(startTimeout)));
        return cmd;
    }

    /// <summary>(node rank, node count): the options, else Slurm's, else Open MPI's variables.</summary>
    internal static (int Rank, int Count) NodeOf(int? rank, int? count, Func<string, string?> env)
    {
        static int? Int(string? s) => int.TryParse(s, NumberStyles.None, CultureInfo.InvariantCulture, out int v) ? v : null;
        rank ??= Int(env("SLURM_NODEID")) ?? Int(env("OMPI_COMM_WORLD_RANK"));
        count ??= Int(env("SLURM_NNODES")) ?? Int(env("OMPI_COMM_WORLD_SIZE"));
        if (count is null) throw new UsageException("--nnodes is required (or run under srun / mpirun, which set SLURM_NNODES / OMPI_COMM_WORLD_SIZE)");
        if (rank is null) throw new UsageException("--node-rank is required (or run under srun / mpirun, which set SLURM_NODEID / OMPI_COMM_WORLD_RANK)");
        if (count < 1) throw new UsageException($"--nnodes must be >= 1 (got {count})");
        if (rank < 0 || rank >= count) throw new UsageException($"--node-rank {rank} outside 0..{count - 1}");
        return (rank.Value, count.Value);
    }

    internal static (string Host, int Port) HostPort(string s)
    {
        int colon = s.LastIndexOf(':');
        if (colon <= 0 || !int.TryParse(s.AsSpan(colon + 1), NumberStyles.None, CultureInfo.InvariantCulture, out int port) || port is < 1 or > 65535)
            throw new UsageException($"--master '{s}': expected HOST:PORT");
        return (s[..colon], port);
    }

    /// <summary>The local address the route to <paramref name="host"/> leaves from (no packet is sent).</summary>
    private static string LocalAddressToward(string host, int port)
    {
        try
        {
            var ip = Dns.GetHostAddresses(host).First(a => a.AddressFamily == AddressFamily.InterNetwork);
            if (IPAddress.IsLoopback(ip)) return "127.0.0.1";
            using var s = new Socket(AddressFamily.InterNetwork, SocketType.Dgram, ProtocolType.Udp);
            s.Connect(ip, port);
            return ((IPEndPoint)s.LocalEndPoint!).Address.ToString();
        }
        catch (Exception e) when (e is SocketException or InvalidOperationException)
        {
            throw new UsageException($"--master {host}: no route from this node ({e.Message}); give --worker-bind");
        }
    }

    private static int Run(string configPath, string planPath, int? nnodes, int? nodeRank, string masterAddr, string? bind, string? workerBind,
                           string? outDir, bool resume, bool overwrite, string? jobId, int startTimeout)
    {
        using var interruption = new Interruption();
        var (node, nodes) = NodeOf(nodeRank, nnodes, Environment.GetEnvironmentVariable);
        var (host, port) = HostPort(masterAddr);
        var experiment = RunCommand.LoadExperiment(configPath);
        var plan = RunCommand.LoadPlan(planPath, configPath, maxDevices: int.MaxValue);
        if (plan.Nodes != nodes) throw new UsageException($"{planPath}: the plan's cluster has {plan.Nodes} node(s), the launch {nodes}");
        byte[] secret;
        if (WorkerHost.SecretInEnvironment)
        {
            try { secret = WorkerHost.SecretFromEnvironment(); }
            catch (InvalidOperationException e) { throw new UsageException(e.Message); }
        }
        else if (nodes == 1) secret = WorkerHost.NewSecret();
        else throw new UsageException($"a multi-node job needs the same secret on every node: set {WorkerHost.SecretFileVariable} to a file of mode 0600 holding 64 hex digits " +
                                      $"(e.g. `(umask 077; openssl rand -hex 32 > ~/.realn-secret)`) or {WorkerHost.SecretVariable}; never put it on the command line");
        string job = jobId ?? "job-" + Convert.ToHexString(SHA256.HashData(secret))[..12].ToLowerInvariant();
        int dpn = plan.DevicesPerNode, devices = nodes * dpn;
        var ranks = Enumerable.Range(node * dpn, dpn).ToArray();
        string wbind = workerBind ?? LocalAddressToward(host, port);
        string control = $"tcp://{host}:{port}";
        int threads = Math.Max(1, Environment.ProcessorCount / dpn);

        if (node != 0)
        {
            var worker = new WorkerNode(new WorkerNodeOptions
            {
                Control = control, Job = job, Secret = secret, Node = node, Ranks = ranks, Size = devices + 1,
                WorkerBindHost = wbind, NodeName = Environment.MachineName + $"/{node}", ThreadsPerWorker = threads,
            });
            interruption.Token.Register(() => worker.ReportSignal(interruption.Signal!));
            interruption.Abort = worker.KillWorkers;
            interruption.AbortDetail = () => $"; node {node}'s workers killed";
            int code = worker.Run(m => Console.Error.WriteLine($"realn launch: {m}"));
            if (interruption.Requested)
            {
                Console.Error.WriteLine($"realn: interrupted by {interruption.Describe()}; node {node}'s workers stopped");
                return interruption.ExitCode;
            }
            return code;
        }

        if (outDir is null) throw new UsageException("--out is required on node 0 (it runs the master)");
        if (resume && overwrite) throw new UsageException("--resume and --overwrite exclude each other");
        var hosts = JobHosts.LauncherNode(new LauncherNodeOptions
        {
            MasterEndpoint = $"tcp://{bind ?? host}:{port}", WorkerBindHost = wbind,
            NodeName = Environment.MachineName + "/0", Secret = secret, Job = job, ThreadsPerWorker = threads,
            StartTimeout = TimeSpan.FromSeconds(startTimeout), OnWorkerSignal = interruption.Request,
            JoinProgress = m => AnsiConsole.MarkupLine($"[yellow]{Markup.Escape(m)}[/]"),
        });
        using var run = new TrainingJob(experiment, RunCommand.Options(outDir, resume, overwrite, plan, hosts));
        // The plan's layouts and the run directory are checked before any node's workers are waited for.
        RunCommand.Prepare(run, configPath, planPath);
        AnsiConsole.MarkupLine($"[bold]{Markup.Escape(experiment.Name)}[/]: job {job}, {nodes} node(s) x {dpn} device(s), master {Markup.Escape(control)}; waiting for every node's workers");
        try { run.StartWorkers(interruption.Token); }
        catch (OperationCanceledException) when (interruption.Requested)
        {
            Console.Error.WriteLine($"realn: interrupted by {interruption.Describe()} while the workers were joining; nothing ran");
            return interruption.ExitCode;
        }
        RunCommand.AbortOnSecondSignal(interruption, run);
        AnsiConsole.MarkupLine($"all {nodes} node(s) joined: {devices} model workers");
        PlanReport.PrintPlan(plan, planPath, $"devices: {devices} model worker processes, {dpn} per node ({threads} OpenMP thread(s) each), node 0 runs the master (UCX rank {devices})");
        var result = run.Run(new RunCommand.Reporter(ev => AnsiConsole.MarkupLine($"[grey]{ev.Algorithm} {ev.Iteration}/{ev.Iterations}[/] " +
            Markup.Escape(string.Join("  ", ev.Figures.Where(kv => kv.Key is "loss" or "reward_mean" or "task_score").Select(kv => $"{kv.Key} {HumanOutput.Num(kv.Value)}"))))),
            interruption.Token);   // workers shut down (or killed), launchers told the job is over
        if (result.Status == TrainingStatus.Cancelled)
        {
            if (Interruption.ClaimLastLine()) Console.Error.WriteLine($"realn: {RunCommand.InterruptedLine(interruption, result)}");
            return interruption.ExitCode;
        }
        var summary = System.Text.Json.Nodes.JsonNode.Parse(result.SummaryJson!)!.AsObject();
        Curves.Write(Path.Combine(outDir, "metrics.jsonl"), Path.Combine(outDir, "curves.png"), $"{experiment.Name}: training curves");
        PlanReport.PrintMeasured(plan, Path.Combine(outDir, "metrics.jsonl"));
        AnsiConsole.MarkupLine(Markup.Escape(HumanOutput.SummaryLine(summary)));
        AnsiConsole.MarkupLine($"wrote {Markup.Escape(Path.Combine(outDir, "summary.json"))}, metrics.jsonl, curves.png");
        return 0;
    }
}
