// EmbeddedHost: runs an experiment through the ReaLNative package (progress bar on the console),
// then starts a second run, cancels it midway and proves it ended cleanly: the job's thread has
// ended and the last checkpoint loads and generates.
// usage: EmbeddedHost [CONFIG.yaml] [--short]   (--short: 4/2/4 iterations, for tests)
using ReaLNative;

string config = args.FirstOrDefault(a => !a.StartsWith("--")) ?? Path.Combine(AppContext.BaseDirectory, "ppo-tiny.yaml");
bool shortRun = args.Contains("--short");
var exp = TrainingExperiment.FromYaml(config);
if (shortRun) exp = exp.WithStageIterations(0, 4).WithStageIterations(1, 2).WithStageIterations(2, 4).WithCheckpointEvery(2).WithEvaluation(16, 2);
Console.WriteLine(exp);
string root = Path.Combine(Path.GetTempPath(), "embedded-host-" + Environment.ProcessId);

var bar = new Progress<TrainingProgress>(p =>
{
    int w = 40, n = (int)(p.Fraction * w);
    Console.Write($"\r[{new string('#', n)}{new string('.', w - n)}] {p.Fraction:P0} stage {p.Stage} {p.Algorithm} {p.Iteration}/{p.Iterations}   ");
});
var first = await new TrainingJob(exp, new TrainingOptions { OutputDirectory = Path.Combine(root, "full") }).RunAsync(bar);
Console.WriteLine($"\nrun 1: {first.Status}, task score {first.InitialTaskScore} -> {first.FinalTaskScore}, {first.Elapsed.TotalSeconds:F1} s");

using var cts = new CancellationTokenSource();
int half = exp.TotalIterations / 2;
var job = new TrainingJob(exp, new TrainingOptions { OutputDirectory = Path.Combine(root, "cancelled") });
var second = await job.RunAsync(new Progress<TrainingProgress>(p => { if (p.Fraction * exp.TotalIterations >= half) cts.Cancel(); }), cts.Token);
var ck = second.LastCheckpoint ?? throw new Exception("no checkpoint after the cancelled run");
ck.Verify();
string role = ck.Roles.Contains("actor") ? "actor" : ck.Roles[0];
using var model = Checkpoint.Load(ck.ModelDirectory(role));
bool ok = second.Status == TrainingStatus.Cancelled && !job.IsRunning;
Console.WriteLine($"run 2: {second.Status} at stage {ck.Stage} iteration {ck.NextIteration}; checkpoint {role} loads ({model.ParameterCount} parameters)");
Console.WriteLine(ok ? "cancelled cleanly: no training thread left, last checkpoint intact" : "NOT clean");
Directory.Delete(root, true);
return ok ? 0 : 1;
