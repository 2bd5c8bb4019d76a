// Plan evaluation: per-device memory (resident + peak active) and the makespan of several unrolled
// iterations by list scheduling. Calls on disjoint meshes overlap; a reallocation occupies both its
// source and destination meshes. One Evaluator per thread (it owns scratch arrays).
// Asynchronous RL (Experiment.MaxStaleness = N, see SimulateAsync): generation runs up to N policy
// versions ahead of training, so on its own mesh it overlaps the trainers, together with the frozen
// models' scoring calls placed on that mesh; each train step pushes its weights to the generation
// mesh at once, occupying both meshes for the transfer.
namespace ReaLNative.Planner;

/// <summary>One scheduled task of the simulation (a call or a reallocation).</summary>
public sealed record SimTask(string Name, int Iteration, int FirstDevice, int DeviceCount, int FirstDevice2, int DeviceCount2, double Start, double End, bool IsRealloc);

/// <summary>Result of evaluating one choice of options.</summary>
/// <param name="GenerationShared">Async only: a generation call shares a device with another call,
/// which the engine does not run (generation keeps devices of its own); such a choice is infeasible.</param>
public readonly record struct Evaluation(double IterationSeconds, double OverflowBytes, double Cost, bool GenerationShared = false)
{
    public bool Feasible => OverflowBytes <= 0 && !GenerationShared;
}

public sealed class Evaluator
{
    /// <summary>Iterations unrolled by the simulator; the iteration time is makespan / this.</summary>
    public const int UnrolledIterations = 3;
    /// <summary>Iterations unrolled for an asynchronous experiment (enough for the pipeline to fill);
    /// its iteration time is the steady state over k/2 iterations before the last N.</summary>
    public static int AsyncIterations(int maxStaleness) => 4 + 2 * maxStaleness;
    private readonly PlanningProblem _p;
    private readonly int? _staleness;
    private double[][] _endOf = [];      // async: [iteration][call] end time
    private double[][] _pushEnd = [];    // async: [iteration][call] when the weights of that iteration's train step reached a generation call's mesh
    private double[] _iterationEnd = []; // async: when the iteration's last non-generation call ended
    private readonly double[] _static, _active, _free;
    private bool[] _rollout = [];        // async: per call, whether it runs on the rollout side (MarkRollout)
    private bool[] _scored = [];         // async: per iteration, whether its scoring calls were issued
    private readonly double[] _end, _prevEnd;
    private readonly int _dpn;
    private readonly Dictionary<long, double> _reallocLocal = new();
    private readonly Dictionary<long, (double, double)?> _splitLocal = new();

    public Evaluator(PlanningProblem p)
    {
        _p = p;
        int nd = p.Cluster.TotalDevices;
        _static = new double[nd]; _active = new double[nd]; _free = new double[nd];
        _end = new double[p.Calls.Count]; _prevEnd = new double[p.Calls.Count];
        _dpn = p.Cluster.DevicesPerNode;
        _staleness = p.Experiment.MaxStaleness;
    }

    /// <summary>Per device of a choice: the resident bytes (weights and train state of the models that
    /// live there) and the largest active bytes of its calls (activations, KV caches, weights of a
    /// layout a call reallocates into); <see cref="PeakMemory"/> is their sum.</summary>
    public (double[] Resident, double[] Active) MemoryParts(int[] choice)
    {
        Memory(choice);
        return ([.. _static], [.. _active]);
    }

    /// <summary>Peak memory per device of a choice (resident + largest active).</summary>
    public double[] PeakMemory(int[] choice)
    {
        Memory(choice);
        return _static.Select((s, i) => s + _active[i]).ToArray();
    }

    private double Memory(int[] choice)
    {
        Array.Clear(_static); Array.Clear(_active);
        var calls = _p.Calls;
        for (int i = 0; i < calls.Count; i++)
        {
            var info = _p.Options[i][choice[i]];
            var o = info.Option; var m = info.Memory;
            double stat, act;
            if (calls[i].Type == CallType.TrainStep) { stat = m.WeightBytes + m.TrainStateBytes; act = m.ActiveBytes; }
            else if (_p.Trainable[i])
            {
                bool home = _p.Options[_p.TrainCallOfRole[i]][choice[_p.TrainCallOfRole[i]]].Option.SameLayout(o);
                stat = 0; act = home ? m.ActiveBytes : m.WeightBytes + m.ActiveBytes;
            }
            else
            {
                // a non-trainable model resides in the layout of its first call unless offloaded to host.
                int first = -1;
                for (int j = 0; j < i; j++)
                    if (calls[j].Role == calls[i].Role && !_p.Options[j][choice[j]].Option.Flag && _p.Options[j][choice[j]].Option.SameLayout(o)) { first = j; break; }
                if (o.Flag) { stat = 0; act = m.WeightBytes + m.ActiveBytes; }
                else { stat = first >= 0 ? 0 : m.WeightBytes; act = m.ActiveBytes; }
            }
            int d0 = o.Mesh.FirstDevice(_dpn), n = o.Mesh.Size;
            for (int d = d0; d < d0 + n; d++)
            {
                _static[d] += stat;
                if (act > _active[d]) _active[d] = act;
            }
        }
        double over = 0, cap = _p.Cluster.UsableMemoryBytes;
        for (int d = 0; d < _static.Length; d++) over = Math.Max(over, _static[d] + _active[d] - cap);
        return over;
    }

    /// <summary>Evaluates a choice: memory overflow and simulated iteration seconds. Infeasible
    /// choices get a cost scaled up by the overflow so the search is drawn back to feasible ones.</summary>
    public Evaluation Evaluate(int[] choice)
    {
        double over = Memory(choice);
        double t;
        if (_staleness is int staleness)
        {
            // Steady state: iterations whose issue slot also issued a generation (the last N do not).
            int k = AsyncIterations(staleness), last = k - 1 - staleness, span = k / 2;
            SimulateAsync(choice, k, staleness, null);
            t = (_iterationEnd[last] - _iterationEnd[last - span]) / span;
        }
        else t = Simulate(choice, UnrolledIterations, null) / UnrolledIterations;
        double cost = over > 0 ? t * (2 + 10 * over / _p.Cluster.UsableMemoryBytes) : t;
        bool shared = _staleness is not null && GenerationSharesDevices(choice);
        // drawn back to plans the engine runs: generation on devices no other call uses
        return new Evaluation(t, over, shared ? cost * 100 : cost, shared);
    }

    /// <summary>Whether a generation call's mesh shares a device with a call of the trainer's side
    /// (the engine's async mode needs the generation group apart, shared only with the rollout side's
    /// scoring calls: Runs/PipelineAsync.cs).</summary>
    private bool GenerationSharesDevices(int[] choice)
    {
        MarkRollout(choice);   // leaves _free[d] = 1 on the generation devices
        var calls = _p.Calls;
        for (int i = 0; i < calls.Count; i++)
            if (!_rollout[i])
            {
                var m = _p.Options[i][choice[i]].Option.Mesh;
                if (MaxFree(m.FirstDevice(_dpn), m.Size) > 0) return true;
            }
        return false;
    }

    /// <summary>The rollout side of an asynchronous choice, as the engine splits it
    /// (Dataflow/DataflowGraph.cs SplitRollout): the generation calls, and the scoring calls, which
    /// follow each generation on its devices: inference of a model no call trains (reward,
    /// reference), whose inputs all come from the rollout side, on a mesh that lies on the
    /// generation devices. Leaves _free[d] = 1 on the generation devices, 0 elsewhere.</summary>
    private void MarkRollout(int[] choice)
    {
        var calls = _p.Calls;
        if (_rollout.Length != calls.Count) _rollout = new bool[calls.Count];
        Array.Clear(_free);
        for (int i = 0; i < calls.Count; i++)
        {
            _rollout[i] = calls[i].Type == CallType.Generate;
            if (!_rollout[i]) continue;
            var m = _p.Options[i][choice[i]].Option.Mesh;
            SetFree(m.FirstDevice(_dpn), m.Size, 1);
        }
        for (int i = 0; i < calls.Count; i++)
        {
            if (calls[i].Type != CallType.Inference || _p.TrainCallOfRole[i] >= 0) continue;
            bool inputs = true;
            foreach (int j in _p.InputIdx[i]) inputs &= j < 0 || _rollout[j];
            var m = _p.Options[i][choice[i]].Option.Mesh;
            bool onGen = true;
            for (int d = m.FirstDevice(_dpn); d < m.FirstDevice(_dpn) + m.Size; d++) onGen &= _free[d] == 1;
            _rollout[i] = inputs && onGen;
        }
    }

    /// <summary>Async: a scoring call of the rollout side (issued with the generation of its iteration).</summary>
    private bool Scoring(int i) => _rollout[i] && _p.Calls[i].Type != CallType.Generate;

    private double MaxFree(int d0, int n)
    {
        double f = 0;
        for (int d = d0; d < d0 + n; d++) if (_free[d] > f) f = _free[d];
        return f;
    }

    private void SetFree(int d0, int n, double t)
    {
        for (int d = d0; d < d0 + n; d++) _free[d] = t;
    }

    /// <summary>List-schedules <paramref name="iterations"/> unrolled iterations; returns the makespan.</summary>
    public double Simulate(int[] choice, int iterations, List<SimTask>? record)
    {
        if (_staleness is int staleness) return SimulateAsync(choice, iterations, staleness, record);
        if (_p.ScheduleStretch) return SimulateShared(choice, iterations, record);
        Array.Clear(_free); Array.Clear(_end); Array.Clear(_prevEnd);
        var calls = _p.Calls;
        double makespan = 0;
        for (int it = 0; it < iterations; it++)
        {
            for (int i = 0; i < calls.Count; i++)
            {
                var info = _p.Options[i][choice[i]];
                var o = info.Option;
                double ready = _prevEnd[i];
                foreach (int j in _p.InputIdx[i])
                    ready = Math.Max(ready, _end[j] + _p.Transfer(j, choice[j], i, choice[i]));
                int d0 = o.Mesh.FirstDevice(_dpn), n = o.Mesh.Size;
                int tc = _p.TrainCallOfRole[i];
                if (tc >= 0 && tc != i)
                {
                    ready = Math.Max(ready, _prevEnd[tc]); // a model does not run ahead of its own train step
                    long key = ((long)i << 48) | ((long)choice[tc] << 24) | (uint)choice[i];
                    if (!_reallocLocal.TryGetValue(key, out double r)) _reallocLocal[key] = r = _p.Realloc(i, choice[tc], choice[i]);
                    if (r > 0)
                    {
                        var home = _p.Options[tc][choice[tc]].Option.Mesh;
                        int h0 = home.FirstDevice(_dpn), hn = home.Size;
                        double rs = Math.Max(Math.Max(_prevEnd[tc], MaxFree(d0, n)), MaxFree(h0, hn));
                        SetFree(d0, n, rs + r); SetFree(h0, hn, rs + r);
                        record?.Add(new SimTask($"realloc {calls[i].Role}->{calls[i].Name}", it, h0, hn, d0, n, rs, rs + r, true));
                        ready = Math.Max(ready, rs + r);
                    }
                }
                double start = Math.Max(ready, MaxFree(d0, n));
                double end = start + info.Seconds;
                SetFree(d0, n, end);
                _end[i] = end;
                record?.Add(new SimTask(calls[i].Name, it, d0, n, d0, 0, start, end, false));
                if (end > makespan) makespan = end;
            }
            Array.Copy(_end, _prevEnd, _end.Length);
        }
        return makespan;
    }

    /// <summary>
    /// The synchronous list schedule on a shared host with more devices than cores (<see cref="PlanningProblem.ScheduleStretch"/>):
    /// the same tasks, order and dependencies as <see cref="Simulate"/> (a call after its inputs plus their transfer, its own
    /// and its train call's previous iteration and, on each of its devices, the task listed before it there; a
    /// reallocation after the train call's previous iteration and the tasks before it on both meshes), but the devices
    /// share the host's cores (processor sharing): while b devices compute (the devices of every running call), each
    /// computes at min(1, cores / b) of its one-core speed. So a call's compute (<see cref="OptionInfo.Work"/>) is
    /// stretched only by the devices computing beside it, not by every device of the spec; its round trips, interleaved
    /// with its compute, take <see cref="OptionInfo.DispatchUncrowded"/> while b &lt;= cores and
    /// <see cref="OptionInfo.Dispatch"/> (measured with every device busy) above. A running call advances at
    /// 1 / (work / rate + round trips) of itself per second; a reallocation takes its own time and no core.
    /// </summary>
    private double SimulateShared(int[] choice, int iterations, List<SimTask>? record)
    {
        var calls = _p.Calls;
        int nc = calls.Count;
        double cores = _p.Estimator.HostCores!.Value;
        // tasks in list order: per iteration, per call, its reallocation (if any) then the call
        var name = new List<string>(); var iter = new List<int>(); var isRealloc = new List<bool>();
        var dev0 = new List<int>(); var devN = new List<int>(); var dev20 = new List<int>(); var dev2N = new List<int>();
        var work = new List<double>(); var rtBusy = new List<double>(); var rtIdle = new List<double>();
        var preds = new List<List<(int Task, double Lag)>>();
        var lastOn = new int[_p.Cluster.TotalDevices];
        Array.Fill(lastOn, -1);
        var callTask = new int[iterations, nc];
        int Add(string n, int it, bool realloc, int d0, int dn, int h0, int hn, double w, double busyRt, double idleRt, List<(int, double)> ps)
        {
            int k = name.Count;
            name.Add(n); iter.Add(it); isRealloc.Add(realloc); dev0.Add(d0); devN.Add(dn); dev20.Add(h0); dev2N.Add(hn);
            work.Add(w); rtBusy.Add(busyRt); rtIdle.Add(idleRt);
            for (int d = d0; d < d0 + dn; d++) { if (lastOn[d] >= 0) ps.Add((lastOn[d], 0)); lastOn[d] = k; }
            for (int d = h0; d < h0 + hn; d++) { if (lastOn[d] >= 0 && lastOn[d] != k) ps.Add((lastOn[d], 0)); lastOn[d] = k; }
            preds.Add(ps);
            return k;
        }
        for (int it = 0; it < iterations; it++)
            for (int i = 0; i < nc; i++)
            {
                var info = _p.Options[i][choice[i]];
                var o = info.Option;
                int d0 = o.Mesh.FirstDevice(_dpn), n = o.Mesh.Size;
                var ps = new List<(int, double)>();
                if (it > 0) ps.Add((callTask[it - 1, i], 0));
                foreach (int j in _p.InputIdx[i])
                {
                    if (j < 0) continue;
                    int from = j < i ? callTask[it, j] : it > 0 ? callTask[it - 1, j] : -1;
                    if (from >= 0) ps.Add((from, _p.Transfer(j, choice[j], i, choice[i])));
                }
                int tc = _p.TrainCallOfRole[i];
                if (tc >= 0 && tc != i)
                {
                    if (it > 0) ps.Add((callTask[it - 1, tc], 0));
                    long key = ((long)i << 48) | ((long)choice[tc] << 24) | (uint)choice[i];
                    if (!_reallocLocal.TryGetValue(key, out double r)) _reallocLocal[key] = r = _p.Realloc(i, choice[tc], choice[i]);
                    if (r > 0)
                    {
                        var home = _p.Options[tc][choice[tc]].Option.Mesh;
                        var rp = new List<(int, double)>();
                        if (it > 0) rp.Add((callTask[it - 1, tc], 0));
                        ps.Add((Add($"realloc {calls[i].Role}->{calls[i].Name}", it, true, home.FirstDevice(_dpn), home.Size, d0, n, 0, r, r, rp), 0));
                    }
                }
                callTask[it, i] = Add(calls[i].Name, it, false, d0, n, d0, 0, info.Work, info.Dispatch, info.DispatchUncrowded, ps);
            }
        int count = name.Count;
        var left = new int[count]; var earliest = new double[count]; var start = new double[count]; var end = new double[count];
        var state = new byte[count];   // 0 waiting, 1 running, 2 done
        var remaining = new double[count];   // fraction of the task left
        var succ = new List<(int Task, double Lag)>[count];
        for (int k = 0; k < count; k++) succ[k] = [];
        for (int k = 0; k < count; k++)
        {
            left[k] = preds[k].Count;
            foreach (var (t, lag) in preds[k]) succ[t].Add((k, lag));
        }
        double now = 0, makespan = 0, busy = 0;
        int done = 0;
        const double Eps = 1e-12;   // seconds
        // seconds the whole task would take at the current sharing: its compute at the devices' share of the cores,
        // its round trips measured with as many (or more) worker processes busy
        double Span(int k) => busy > cores ? work[k] * busy / cores + rtBusy[k] : work[k] + rtIdle[k];
        while (done < count)
        {
            // start and finish everything due now, until nothing changes at this instant
            bool changed = true;
            while (changed)
            {
                changed = false;
                for (int k = 0; k < count; k++)
                {
                    if (state[k] == 0 && left[k] == 0 && earliest[k] <= now + Eps)
                    {
                        start[k] = now; state[k] = 1; remaining[k] = 1; changed = true;
                        if (work[k] <= 0 && rtBusy[k] <= 0 && rtIdle[k] <= 0) remaining[k] = 0;
                    }
                    if (state[k] == 1 && remaining[k] * Span(k) <= Eps)
                    {
                        state[k] = 2; end[k] = now; done++; changed = true;
                        if (now > makespan) makespan = now;
                        foreach (var (t, lag) in succ[k]) { left[t]--; earliest[t] = Math.Max(earliest[t], now + lag); }
                    }
                }
            }
            if (done == count) break;
            busy = 0;
            for (int k = 0; k < count; k++) if (state[k] == 1 && !isRealloc[k]) busy += devN[k];
            double next = double.PositiveInfinity;
            int first = -1;   // the running task that ends first (ended exactly, whatever the rounding)
            for (int k = 0; k < count; k++)
            {
                if (state[k] == 0 && left[k] == 0) next = Math.Min(next, earliest[k]);
                else if (state[k] == 1 && now + remaining[k] * Span(k) < next) { next = now + remaining[k] * Span(k); first = k; }
            }
            if (double.IsPositiveInfinity(next)) throw new InvalidOperationException("internal: the shared-host schedule has a cycle");
            double dt = Math.Max(0, next - now);
            for (int k = 0; k < count; k++)
                if (state[k] == 1)
                {
                    double span = Span(k);
                    remaining[k] = span > 0 ? Math.Max(0, remaining[k] - dt / span) : 0;
                }
            if (first >= 0 && now + remaining[first] * Span(first) <= next) remaining[first] = 0;
            now = next;
        }
        if (record is not null)
            for (int k = 0; k < count; k++)
                record.Add(new SimTask(name[k], iter[k], dev0[k], devN[k], dev20[k], dev2N[k], start[k], end[k], isRealloc[k]));
        return makespan;
    }

    private bool AsyncGeneration(int i) => _p.Calls[i].Type == CallType.Generate && _p.TrainCallOfRole[i] >= 0;

    /// <summary>
    /// List schedule of the asynchronous dataflow with staleness <paramref name="staleness"/>, in the
    /// order the calls are issued: generation of iteration g = it + N is issued with iteration it
    /// (iterations 0..N at the start, on the initial weights); the other calls of iteration it follow
    /// in dataflow order. Generation of iteration g reads the weights of the train step of iteration
    /// g - 1 - N, pushed to its mesh after that iteration's calls (a reallocation occupying the train
    /// and the generation mesh; none when the layouts are equal). With N = 0 this is the synchronous
    /// schedule.
    /// Under `weight_update: interrupt` (<see cref="Experiment.Interrupt"/>) generation of iteration g runs in
    /// two chunks: prefill and decode steps before step k on the weights already on its mesh (pushed into
    /// generation g - 1), then, after the train step of iteration g - N and the push of its weights (the same
    /// reallocation, occupying both meshes), steps k .. the last. Generations of iterations g &lt; N (no newer
    /// version exists yet) and batches that end before step k run whole.
    /// </summary>
    private double SimulateAsync(int[] choice, int iterations, int staleness, List<SimTask>? record)
    {
        var calls = _p.Calls;
        int rows = iterations + staleness + 1;
        if (_endOf.Length < rows || _endOf[0].Length != calls.Count)
        {
            _endOf = Enumerable.Range(0, rows).Select(_ => new double[calls.Count]).ToArray();
            _pushEnd = Enumerable.Range(0, rows).Select(_ => new double[calls.Count]).ToArray();
            _iterationEnd = new double[rows];
            _scored = new bool[rows];
        }
        MarkRollout(choice);
        Array.Clear(_free);
        double makespan = 0;

        bool interrupt = _p.Experiment.Interrupt;
        (double Before, double After)? Split(int i)
        {
            if (!interrupt || !AsyncGeneration(i)) return null;
            long key = ((long)i << 32) | (uint)choice[i];
            if (!_splitLocal.TryGetValue(key, out var v))
                _splitLocal[key] = v = _p.Estimator.InterruptedGenerationSeconds(_p.Calls[i], _p.Options[i][choice[i]].Option, _p.Experiment.InterruptStep);
            return v;
        }
        var firstChunkEnd = new double[calls.Count];

        void Run(int i, int it)
        {
            var info = _p.Options[i][choice[i]];
            var o = info.Option;
            double ready = it > 0 ? _endOf[it - 1][i] : 0;
            // interrupt: the first chunk of a generation that takes the next version mid-batch (the second: SecondChunk)
            if (Split(i) is { } split && it - staleness >= 0)
            {
                int g0 = o.Mesh.FirstDevice(_dpn), gn = o.Mesh.Size;
                double s0 = Math.Max(ready, MaxFree(g0, gn)), e0 = s0 + split.Before;
                SetFree(g0, gn, e0);
                firstChunkEnd[i] = e0;
                _endOf[it][i] = double.NaN;   // set by the second chunk
                record?.Add(new SimTask(calls[i].Name + " (to step k)", it, g0, gn, g0, 0, s0, e0, false));
                if (e0 > makespan) makespan = e0;
                return;
            }
            if (interrupt && AsyncGeneration(i))
            {
                // whole, on the weights its mesh holds: the initial ones (g < N), or those pushed into generation g - 1
                int g0 = o.Mesh.FirstDevice(_dpn), gn = o.Mesh.Size;
                if (Split(i) is null && it - 1 - staleness >= 0) ready = Math.Max(ready, _pushEnd[it - 1 - staleness][i]);
                double s0 = Math.Max(ready, MaxFree(g0, gn)), e0 = s0 + info.Seconds;
                SetFree(g0, gn, e0);
                _endOf[it][i] = e0;
                record?.Add(new SimTask(calls[i].Name, it, g0, gn, g0, 0, s0, e0, false));
                if (e0 > makespan) makespan = e0;
                return;
            }
            foreach (int j in _p.InputIdx[i])
                ready = Math.Max(ready, _endOf[it][j] + _p.Transfer(j, choice[j], i, choice[i]));
            int tc = _p.TrainCallOfRole[i];
            if (tc >= 0 && tc != i)
            {
                if (AsyncGeneration(i)) { if (it - 1 - staleness >= 0) ready = Math.Max(ready, _pushEnd[it - 1 - staleness][i]); }
                else
                {
                    // Trainer-side calls (critic_inf, ...) read the newest weights, reallocated as in the synchronous schedule.
                    double weights = it > 0 ? _endOf[it - 1][tc] : 0;
                    ready = Math.Max(ready, weights);
                    long key = ((long)i << 48) | ((long)choice[tc] << 24) | (uint)choice[i];
                    if (!_reallocLocal.TryGetValue(key, out double r)) _reallocLocal[key] = r = _p.Realloc(i, choice[tc], choice[i]);
                    if (r > 0)
                    {
                        var trainMesh = _p.Options[tc][choice[tc]].Option.Mesh;
                        int t0 = trainMesh.FirstDevice(_dpn), tn = trainMesh.Size, c0 = o.Mesh.FirstDevice(_dpn), cn = o.Mesh.Size;
                        double rs = Math.Max(Math.Max(weights, MaxFree(c0, cn)), MaxFree(t0, tn));
                        SetFree(c0, cn, rs + r); SetFree(t0, tn, rs + r);
                        record?.Add(new SimTask($"realloc {calls[i].Role}->{calls[i].Name}", it, t0, tn, c0, cn, rs, rs + r, true));
                        ready = Math.Max(ready, rs + r);
                    }
                }
            }
            int d0 = o.Mesh.FirstDevice(_dpn), n = o.Mesh.Size;
            double start = Math.Max(ready, MaxFree(d0, n)), end = start + info.Seconds;
            SetFree(d0, n, end);
            _endOf[it][i] = end;
            record?.Add(new SimTask(calls[i].Name, it, d0, n, d0, 0, start, end, false));
            if (end > makespan) makespan = end;
        }

        // Pushes the weights of train call tc's step in iteration it to every generation call of its model.
        void Push(int tc, int it)
        {
            var home = _p.Options[tc][choice[tc]].Option.Mesh;
            int h0 = home.FirstDevice(_dpn), hn = home.Size;
            double end = _endOf[it][tc];
            for (int g = 0; g < calls.Count; g++)
            {
                if (!AsyncGeneration(g) || _p.TrainCallOfRole[g] != tc || Split(g) is not null) continue;   // interrupt: SecondChunk pushed
                long key = ((long)g << 48) | ((long)choice[tc] << 24) | (uint)choice[g];
                if (!_reallocLocal.TryGetValue(key, out double r)) _reallocLocal[key] = r = _p.Realloc(g, choice[tc], choice[g]);
                if (r <= 0) { _pushEnd[it][g] = end; continue; }
                var gm = _p.Options[g][choice[g]].Option.Mesh;
                int g0 = gm.FirstDevice(_dpn), gn = gm.Size;
                double rs = Math.Max(Math.Max(end, MaxFree(g0, gn)), MaxFree(h0, hn));
                SetFree(g0, gn, rs + r); SetFree(h0, hn, rs + r);
                _pushEnd[it][g] = rs + r;
                record?.Add(new SimTask($"realloc {calls[g].Role}->{calls[g].Name}", it, h0, hn, g0, gn, rs, rs + r, true));
                if (rs + r > makespan) makespan = rs + r;
            }
        }

        // interrupt: after the train step of iteration it, its weights go into generation it + N, which then finishes
        void SecondChunk(int tc, int it)
        {
            int g = it + staleness;
            if (g >= iterations) return;
            var home = _p.Options[tc][choice[tc]].Option.Mesh;
            int h0 = home.FirstDevice(_dpn), hn = home.Size;
            for (int i = 0; i < calls.Count; i++)
            {
                if (!AsyncGeneration(i) || _p.TrainCallOfRole[i] != tc || Split(i) is not { } split) continue;
                var gm = _p.Options[i][choice[i]].Option.Mesh;
                int g0 = gm.FirstDevice(_dpn), gn = gm.Size;
                long key = ((long)i << 48) | ((long)choice[tc] << 24) | (uint)choice[i];
                if (!_reallocLocal.TryGetValue(key, out double r)) _reallocLocal[key] = r = _p.Realloc(i, choice[tc], choice[i]);
                double ready = Math.Max(_endOf[it][tc], firstChunkEnd[i]);
                if (r > 0)
                {
                    double rs = Math.Max(Math.Max(ready, MaxFree(g0, gn)), MaxFree(h0, hn));
                    SetFree(g0, gn, rs + r); SetFree(h0, hn, rs + r);
                    record?.Add(new SimTask($"realloc {calls[i].Role}->{calls[i].Name}", it, h0, hn, g0, gn, rs, rs + r, true));
                    ready = rs + r;
                }
                _pushEnd[it][i] = ready;
                double s1 = Math.Max(ready, MaxFree(g0, gn)), e1 = s1 + split.After;
                SetFree(g0, gn, e1);
                _endOf[g][i] = e1;
                record?.Add(new SimTask(calls[i].Name + " (from step k)", g, g0, gn, g0, 0, s1, e1, false));
                if (e1 > makespan) makespan = e1;
            }
            ScoreWhenGenerated(g);
        }

        // The rollout side's scoring of iteration g, once, right after its generation has ended
        // (under interrupt: after the second chunk; until then the generation's end is NaN).
        Array.Clear(_scored);
        void ScoreWhenGenerated(int g)
        {
            if (_scored[g]) return;
            for (int i = 0; i < calls.Count; i++)
                if (AsyncGeneration(i) && double.IsNaN(_endOf[g][i])) return;
            _scored[g] = true;
            for (int i = 0; i < calls.Count; i++)
                if (Scoring(i)) Run(i, g);
        }

        for (int it = 0; it < iterations; it++)
        {
            for (int g = it == 0 ? 0 : it + staleness; g <= it + staleness && g < iterations; g++)
            {
                for (int i = 0; i < calls.Count; i++)
                    if (AsyncGeneration(i)) Run(i, g);
                ScoreWhenGenerated(g);
            }
            double iterationEnd = 0;
            for (int i = 0; i < calls.Count; i++)
            {
                if (AsyncGeneration(i) || Scoring(i)) continue;
                Run(i, it);
                iterationEnd = Math.Max(iterationEnd, _endOf[it][i]);
            }
            _iterationEnd[it] = iterationEnd;
            // After the iteration's calls, as the synchronous schedule does at the next iteration's start.
            for (int i = 0; i < calls.Count; i++)
                if (calls[i].Type == CallType.TrainStep)
                {
                    if (interrupt) SecondChunk(i, it);
                    Push(i, it);
                }
        }
        return makespan;
    }
}
