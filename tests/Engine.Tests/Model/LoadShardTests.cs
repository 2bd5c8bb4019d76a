// Safetensors.LoadShard: a shard (pipeline stage x tensor-parallel slice) read from an HF
// checkpoint by byte range equals slicing the whole model, bit for bit, for every shard of several
// layouts, from one file or from sharded files with an index, F32 or BF16.
using System.Buffers.Binary;
using System.Text;
using System.Text.Json.Nodes;
using ReaLNative.Engine.Checkpoints;
using ReaLNative.Engine.Model;
using ReaLNative.Engine.Realloc;
using ReaLNative.Engine.Tests.Realloc;
using Xunit;

namespace ReaLNative.Engine.Tests.Model;

public sealed unsafe class LoadShardTests
{
    // tp 1, 2, 4 divide heads, kv heads (tp <= 2... see Layouts), intermediate and vocab
    private static readonly LlamaConfig Cfg = new() { Layers = 3, Hidden = 16, Intermediate = 24, Heads = 4, KvHeads = 4, Vocab = 12, MaxPositions = 64 };

    private static readonly (int Pp, int Tp)[] Layouts = [(1, 1), (1, 2), (1, 4), (2, 2), (3, 1), (5, 4)];

    private static string TempDir() => Path.Combine(Path.GetTempPath(), "realn-shard-" + Guid.NewGuid().ToString("N"));

    /// <summary>Every tensor of the full model by name (its whole-model layout is unsharded).</summary>
    private static Dictionary<string, float[]> Global(LlamaModel m) =>
        m.Layout.Views.ToDictionary(v => v.Name, v => m.Parameters.Slice((int)v.Offset, (int)v.LocalElements).ToArray());

    private static void CheckEveryShard(string dir, LlamaConfig cfg, bool scalar, Dictionary<string, float[]> global)
    {
        foreach (var (pp, tp) in Layouts)
            for (int p = 0; p < pp; p++)
                for (int t = 0; t < tp; t++)
                {
                    var layout = ParamLayout.Create(cfg, scalar, pp, p, tp, t);
                    var got = Enumerable.Repeat(float.NaN, (int)layout.TotalElements).ToArray();
                    fixed (float* g = got) Safetensors.LoadShard(dir, layout, g);
                    var want = TestLayouts.Shard(layout, global);
                    Assert.True(want.AsSpan().SequenceEqual(got), $"pp {pp} rank {p}, tp {tp} rank {t}");
                }
    }

    [Theory]
    [InlineData(false, Safetensors.DefaultShardBytes)]   // one model.safetensors
    [InlineData(false, 3000L)]                           // many files and an index
    [InlineData(true, 3000L)]                            // scalar head (critic / reward)
    public void EveryShardOfEveryLayoutEqualsTheSlicedModel(bool scalar, long shardBytes)
    {
        string dir = TempDir();
        try
        {
            using var m = new LlamaModel(Cfg, scalar);
            m.InitRandom(21, 0.5f);
            Safetensors.Save(m, dir, shardBytes);
            Assert.Equal(shardBytes < 10000, File.Exists(Path.Combine(dir, "model.safetensors.index.json")));
            CheckEveryShard(dir, Cfg, scalar, Global(m));
        }
        finally { if (Directory.Exists(dir)) Directory.Delete(dir, true); }
    }

    [Fact]
    public void Bf16TensorsAreWidenedLikeAWholeLoad()
    {
        string dir = TempDir();
        try
        {
            using var m = new LlamaModel(Cfg, false);
            m.InitRandom(8, 0.5f);
            var global = Global(m);
            // model.safetensors in BF16, written by hand (the top 16 bits of each float).
            var header = new JsonObject { ["__metadata__"] = new JsonObject { ["format"] = "pt" } };
            long off = 0;
            foreach (var v in m.Layout.Views)
            {
                long n = v.LocalElements * 2;
                header[v.Name] = new JsonObject { ["dtype"] = "BF16", ["shape"] = new JsonArray(v.GlobalShape.Select(d => (JsonNode)d).ToArray()), ["data_offsets"] = new JsonArray(off, off + n) };
                off += n;
            }
            Directory.CreateDirectory(dir);
            File.WriteAllText(Path.Combine(dir, "config.json"), Cfg.ToHfJson(false));
            using (var fs = File.Create(Path.Combine(dir, "model.safetensors")))
            {
                var hb = Encoding.UTF8.GetBytes(header.ToJsonString());
                var len = new byte[8];
                BinaryPrimitives.WriteUInt64LittleEndian(len, (ulong)hb.Length);
                fs.Write(len);
                fs.Write(hb);
                foreach (var v in m.Layout.Views)
                    foreach (var x in global[v.Name])
                    {
                        var b = new byte[2];
                        BinaryPrimitives.WriteUInt16LittleEndian(b, (ushort)(BitConverter.SingleToInt32Bits(x) >>> 16));
                        fs.Write(b);
                    }
            }
            var widened = global.ToDictionary(kv => kv.Key, kv => kv.Value.Select(x => BitConverter.Int32BitsToSingle(BitConverter.SingleToInt32Bits(x) & unchecked((int)0xFFFF0000))).ToArray());
            CheckEveryShard(dir, Cfg, false, widened);
            // and the whole-model load agrees with the shards
            using var whole = Safetensors.Load(dir);
            Assert.True(whole.Parameters.SequenceEqual(TestLayouts.Shard(whole.Layout, widened)));
        }
        finally { if (Directory.Exists(dir)) Directory.Delete(dir, true); }
    }

    [Fact]
    public void MissingOrMisshapedTensorsAreNamed()
    {
        string dir = TempDir(), other = TempDir();
        try
        {
            using var m = new LlamaModel(Cfg, false);
            m.InitRandom(3, 0.5f);
            Safetensors.Save(m, dir, 3000);
            var layout = ParamLayout.Create(Cfg, false, 3, 1, 2, 1);
            var buf = new float[layout.TotalElements];
            // a tensor of the shard dropped from the index
            string index = Path.Combine(dir, "model.safetensors.index.json");
            var idx = JsonNode.Parse(File.ReadAllText(index))!;
            string name = layout.Views[0].Name;
            idx["weight_map"]!.AsObject().Remove(name);
            File.WriteAllText(index, idx.ToJsonString());
            var e = Assert.Throws<InvalidDataException>(() => { fixed (float* b = buf) Safetensors.LoadShard(dir, layout, b); });
            Assert.Contains($"'{name}' is missing", e.Message);
            // a checkpoint of a wider model: the shape named with the file
            using var wide = new LlamaModel(Cfg with { Intermediate = 32 }, false);
            wide.InitRandom(3, 0.5f);
            Safetensors.Save(wide, other);
            e = Assert.Throws<InvalidDataException>(() => { fixed (float* b = buf) Safetensors.LoadShard(other, layout, b); });
            Assert.Contains("model.safetensors: tensor 'model.layers.", e.Message);
            Assert.Contains("has shape [32, 16], the model needs [24, 16]", e.Message);
            // NaN weights are refused unless allowed
            using var nan = new LlamaModel(Cfg, false);
            nan.Parameters.Fill(float.NaN);
            Safetensors.Save(nan, other);
            e = Assert.Throws<InvalidDataException>(() => { fixed (float* b = buf) Safetensors.LoadShard(other, layout, b); });
            Assert.Contains("non-finite", e.Message);
            fixed (float* b = buf) Safetensors.LoadShard(other, layout, b, allowNonFinite: true);
            Assert.All(buf, x => Assert.True(float.IsNaN(x)));
        }
        finally
        {
            foreach (var d in new[] { dir, other }) if (Directory.Exists(d)) Directory.Delete(d, true);
        }
    }
}
