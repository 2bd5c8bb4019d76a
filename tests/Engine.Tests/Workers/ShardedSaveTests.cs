// Issue 18: a sharded checkpoint save in which every owner writes its own pieces straight into the
// checkpoint files (ShardedSave, Safetensors.WriteSlices): no temporary writer replica, and the
// files are the single device's bytes.
using ReaLNative.Engine.Checkpoints;
using ReaLNative.Engine.Layout;
using ReaLNative.Engine.Model;
using ReaLNative.Engine.Optim;
using ReaLNative.Engine.Parallelism;
using ReaLNative.Engine.Tests.Runs;
using ReaLNative.Engine.Workers;
using Xunit;

namespace ReaLNative.Engine.Tests.Workers;

public sealed class ShardedSaveTests
{
    /// <summary>Every checkpoint part written by the shards of layouts with tp &gt; 1 (alone, with
    /// pp, with dp; an LM, a critic, tied embeddings), in worker processes and in process, fp32 and
    /// bf16, is the single device's files byte for byte: the flat files (fp32 master, both AdamW
    /// moments) those of the single device's in-process save, the weights' folder that of the
    /// single device's Safetensors.Save with the tensors grouped into the same files (one file per
    /// stage of a tp-1 pipeline over the layout's devices: config.json, each .safetensors file with
    /// its header, the index). Parameters and moments are random, never zero (a byte no owner
    /// wrote reads as zero in the sparse files).</summary>
    [Fact]
    public void TensorParallelShardsWriteTheSingleDevicesFilesByteForByte()
    {
        string dir = PlanExecutionTests.TempDir();
        var spec = new OptimizerSpec(new LrSchedule(1e-3), 0.9f, 0.95f, 1e-8f, 0f, 1f);
        var tiny = LlamaConfig.Preset("tiny");
        try
        {
            using var pool = new WorkerPool(4, new WorkerPoolOptions { Executable = WorkerProcessTests.Realn(), ThreadsPerWorker = 1 });
            using var cluster = new LocalCluster(4);
            var cases = new (string Name, LlamaConfig Cfg, bool Scalar, ParallelLayout Layout, int Files)[]
            {
                ("lm tp2", tiny, false, new ParallelLayout([1, 0], 1, 1, 2), 2),
                ("lm pp2 tp2", tiny, false, new ParallelLayout([0, 1, 2, 3], 2, 1, 2), 4),
                ("lm dp2 tp2", tiny, false, new ParallelLayout([3, 2, 1, 0], 1, 2, 2), 4),
                ("critic pp2 tp2", tiny, true, new ParallelLayout([2, 3, 0, 1], 2, 1, 2), 4),
                ("tied lm dp2 tp2", tiny with { TiedEmbeddings = true }, false, new ParallelLayout([0, 1, 2, 3], 1, 2, 2), 1),
            };
            int n = 0;
            foreach (var (name, cfg, scalar, layout, files) in cases)
                foreach (var precision in new[] { ModelPrecision.Fp32, ModelPrecision.Bf16 })
                {
                    using var state = new LlamaModel(cfg, scalar);
                    state.InitRandom(35 + n, 0.5f);
                    using var adam = spec.Create(state);
                    var rng = new Random(5 + n++);
                    var m = Enumerable.Range(0, (int)state.ParameterCount).Select(_ => (float)rng.NextDouble() + 0.5f).ToArray();
                    var v = Enumerable.Range(0, (int)state.ParameterCount).Select(_ => (float)rng.NextDouble() + 0.5f).ToArray();
                    adam.Restore(7, m, v);
                    var parts = precision == ModelPrecision.Bf16 ? Enum.GetValues<CheckpointPart>() : Enum.GetValues<CheckpointPart>().Where(p => p != CheckpointPart.Master).ToArray();
                    // The single device: its flat files, and its weights in the files a tp-1 pipeline of `files` stages groups them into.
                    string reference = Path.Combine(dir, $"ref-{n}");
                    Directory.CreateDirectory(reference);
                    using (var single = new LlamaModel(cfg, scalar))
                    {
                        single.Parameters.Fill(0);
                        state.Parameters.CopyTo(single.Parameters);
                        if (precision == ModelPrecision.Bf16) single.SetPrecision(ModelPrecision.Bf16);
                        using var singleAdam = spec.Create(single);
                        singleAdam.Restore(7, m, v);
                        foreach (var part in parts.Where(p => p != CheckpointPart.Weights))
                            new FullModelState("actor", single, singleAdam).Write(Path.Combine(reference, CheckpointParts.Name("actor", part)), part);
                        var groups = Enumerable.Range(0, files).Select(p => (IReadOnlyCollection<string>)ParamLayout.Create(cfg, scalar, files, p).Views.Select(x => x.Name).ToHashSet()).ToList();
                        if (files == 1) Safetensors.Save(single, Path.Combine(reference, "actor"));   // the single device's own save
                        else Safetensors.Save(single, Path.Combine(reference, "actor"), groups);
                    }
                    foreach (bool remote in new[] { true, false })
                    {
                        string what = $"{name} {precision} {(remote ? "in worker processes" : "in process")}";
                        string written = Path.Combine(dir, $"written-{n}-{(remote ? "w" : "p")}");
                        Directory.CreateDirectory(written);
                        IReplicaHost host = remote ? pool : cluster;
                        using (var r = host.Create("actor", cfg, scalar, layout, 1, spec, precision))
                        {
                            r.CopyFrom(state);
                            r.MoveOptimizerState(adam, toShards: true);
                            foreach (var part in parts)
                                r.SaveState(Path.Combine(written, CheckpointParts.Name("actor", part)), part);
                        }
                        var expected = Directory.GetFiles(reference, "*", SearchOption.AllDirectories).Select(f => Path.GetRelativePath(reference, f)).Order(StringComparer.Ordinal).ToArray();
                        var got = Directory.GetFiles(written, "*", SearchOption.AllDirectories).Select(f => Path.GetRelativePath(written, f)).Order(StringComparer.Ordinal).ToArray();
                        Assert.Equal(expected, got);
                        Assert.Equal(files == 1 ? 1 : files, got.Count(f => f.EndsWith(".safetensors", StringComparison.Ordinal)));
                        foreach (var f in expected)
                            Assert.True(File.ReadAllBytes(Path.Combine(reference, f)).AsSpan().SequenceEqual(File.ReadAllBytes(Path.Combine(written, f))), $"{what}: {f} differs from the single device's");
                    }
                }
        }
        finally { Directory.Delete(dir, true); }
    }

    /// <summary>Safetensors.WriteSlices on random, never zero, data: tensor ranks (written in
    /// reverse order) each write their slice of a row-parallel tensor (columns of every row, one
    /// positioned write per row, between the other ranks' columns), a column-parallel one (a
    /// contiguous block of rows) and rank 0 a replicated one, at offsets inside a file whose other
    /// bytes hold a marker; fp32 and 2-byte elements. The file then holds each whole tensor
    /// row-major at its offset and the marker everywhere else.</summary>
    [Theory]
    [InlineData(2, 4)]
    [InlineData(4, 4)]
    [InlineData(5, 4)]
    [InlineData(4, 2)]
    public unsafe void RanksWriteTheirRowAndColumnSlicesAtTheirOffsets(int tp, int elementBytes)
    {
        const long rows = 7, cols = 20;
        string path = Path.Combine(PlanExecutionTests.TempDir(), "slices.bin");
        Directory.CreateDirectory(Path.GetDirectoryName(path)!);
        try
        {
            var rng = new Random(tp * 10 + elementBytes);
            byte[] Tensor(long elements)
            {
                var b = new byte[elements * elementBytes];
                rng.NextBytes(b);
                for (int i = 0; i < b.Length; i++) b[i] = b[i] is 0 or 0x5A ? (byte)1 : b[i];   // never zero, never the marker
                return b;
            }
            // Row-parallel A [rows, cols] split on dim 1, column-parallel B [cols, rows] on dim 0, replicated C [cols].
            byte[] a = Tensor(rows * cols), b = Tensor(cols * rows), c = Tensor(cols);
            long offA = 40, offB = offA + a.Length + 16, offC = offB + b.Length, length = offC + c.Length + 24;
            var file = new byte[length];
            Array.Fill(file, (byte)0x5A);
            File.WriteAllBytes(path, file);
            var at = new Dictionary<string, (string, long)> { ["a"] = (path, offA), ["b"] = (path, offB), ["c"] = (path, offC) };
            for (int m = tp - 1; m >= 0; m--)
            {
                long w = cols / tp, start = m * w;
                if (m == tp - 1) w = cols - start;   // the last rank takes the rest: slices of unequal width too
                var views = new List<ShardView>
                {
                    new("a", [rows, cols], 1, start, w, 0),
                    new("b", [cols, rows], 0, start, w, rows * w),
                    new("c", [cols], -1, 0, 0, 2 * rows * w),
                };
                var layout = new ShardLayout(views, 2 * rows * w + cols);
                var local = new byte[layout.TotalElements * elementBytes];
                for (long r = 0; r < rows; r++)   // a's slice: columns [start, start + w) of every row
                    Array.Copy(a, (r * cols + start) * elementBytes, local, r * w * elementBytes, w * elementBytes);
                Array.Copy(b, start * rows * elementBytes, local, rows * w * elementBytes, rows * w * elementBytes);
                Array.Copy(c, 0, local, 2 * rows * w * elementBytes, c.Length);
                var names = m == 0 ? new[] { "a", "b", "c" } : new[] { "a", "b" };
                fixed (byte* p = local) Safetensors.WriteSlices(layout, p, elementBytes, at, names);
            }
            a.CopyTo(file, offA);
            b.CopyTo(file, offB);
            c.CopyTo(file, offC);
            var written = File.ReadAllBytes(path);
            Assert.Equal(file.Length, written.Length);
            int first = Enumerable.Range(0, file.Length).FirstOrDefault(i => file[i] != written[i], -1);
            Assert.True(first < 0, $"byte {first} differs");
        }
        finally { Directory.Delete(Path.GetDirectoryName(path)!, true); }
    }

    /// <summary>A slice whose tensor does not fit in the file is refused naming the file and the tensor.</summary>
    [Fact]
    public unsafe void ATensorBeyondTheFileIsRefused()
    {
        string path = Path.Combine(PlanExecutionTests.TempDir(), "short.bin");
        Directory.CreateDirectory(Path.GetDirectoryName(path)!);
        try
        {
            File.WriteAllBytes(path, new byte[100]);
            var layout = new ShardLayout([new ShardView("w", [5, 4], 1, 0, 2, 0)], 10);
            var data = new float[10];
            var at = new Dictionary<string, (string, long)> { ["w"] = (path, 40) };
            string? message = null;
            fixed (float* p = data)
                try { Safetensors.WriteSlices(layout, (byte*)p, 4, at, ["w"]); }
                catch (InvalidDataException e) { message = e.Message; }
            Assert.NotNull(message);
            Assert.Contains(path, message);
            Assert.Contains("'w'", message);
        }
        finally { Directory.Delete(Path.GetDirectoryName(path)!, true); }
    }

    /// <summary>The save command's targets survive the wire; a malformed one is refused naming the field.</summary>
    [Fact]
    public void SaveTargetsRoundTripAndRefuseMalformedOnes()
    {
        var t = new SaveTargets(2, new Dictionary<string, (string, long)> { ["x"] = ("/ck/a.safetensors", 80), ["y"] = ("/ck/a.safetensors", 96), ["z"] = ("/ck/b.safetensors", 8) });
        var back = SaveTargets.FromJson(System.Text.Json.Nodes.JsonNode.Parse(t.ToJson().ToJsonString()));
        Assert.Equal(2, back.ElementBytes);
        Assert.Equal(t.At.OrderBy(kv => kv.Key), back.At.OrderBy(kv => kv.Key));
        foreach (var (json, field) in new[]
                 {
                     ("""{"element_bytes":3,"files":{}}""", "element_bytes"),
                     ("""{"element_bytes":4,"files":{"rel/a":{"x":0}}}""", "rel/a"),
                     ("""{"element_bytes":4,"files":{"/a":{"x":-8}}}""", "['x']"),
                     ("""{"element_bytes":4,"files":{"/a":{"x":0},"/b":{"x":8}}}""", "'x' has two targets"),
                 })
            Assert.Contains(field, Assert.Throws<ArgumentException>(() => SaveTargets.FromJson(System.Text.Json.Nodes.JsonNode.Parse(json))).Message);
    }

    /// <summary>Every byte has one writer: per tensor one data replica, and of a tensor every tensor
    /// rank holds whole one tensor rank; split tensors by every tensor rank. The writers of a layout
    /// are its devices that own something.</summary>
    [Fact]
    public void EveryTensorSliceHasExactlyOneOwner()
    {
        var cfg = LlamaConfig.Preset("tiny");
        foreach (var l in new[] { new ParallelLayout([0, 1, 2, 3], 1, 2, 2), new ParallelLayout([0, 1, 2, 3, 4, 5, 6, 7], 2, 2, 2), new ParallelLayout([3, 1], 2, 1, 1) })
        {
            var owners = new Dictionary<(string, long), int>();
            var writers = new List<int>();
            for (int p = 0; p < l.Pp; p++)
                for (int m = 0; m < l.Tp; m++)
                {
                    var shard = ParamLayout.Create(cfg, false, l.Pp, p, l.Tp, m);
                    for (int d = 0; d < l.Dp; d++)
                    {
                        var mine = ShardedSave.Mine(shard, l, d, m, cfg, false);
                        if (mine.Count > 0) writers.Add(l.Device(p, d, m));
                        foreach (var v in shard.Views.Where(v => mine.Contains(v.Name)))
                        {
                            var key = (v.Name, v.SplitDim < 0 ? 0 : v.SliceStart);
                            owners[key] = owners.GetValueOrDefault(key) + 1;
                        }
                    }
                }
            // Each tensor's tp slices (or the tensor itself, where it is not split) are each owned once.
            Assert.All(owners, kv => Assert.Equal(1, kv.Value));
            var split = ParamLayout.Create(cfg, false, 1, 0, l.Tp, 0);
            Assert.Equal(split.Views.Sum(v => v.SplitDim >= 0 ? l.Tp : 1), owners.Count);
            Assert.Equal(writers.Order(), ShardedSave.WriterDevices(l, cfg, false).Order());
            if (l.Dp > 1) Assert.True(owners.Count > 0 && writers.Count > l.Pp * l.Tp, $"{l}: the tensors spread over the data replicas");
        }
    }
}
