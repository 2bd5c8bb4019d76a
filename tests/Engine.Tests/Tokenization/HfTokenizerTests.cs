using ReaLNative.Engine.Tokenization;
using Xunit;

namespace ReaLNative.Engine.Tests.Tokenization;

public sealed class HfTokenizerTests
{
    private static string Write(string json)
    {
        string p = Path.Combine(Path.GetTempPath(), $"realn-tok-{Guid.NewGuid():N}.json");
        File.WriteAllText(p, json);
        return p;
    }

    [Fact]
    public void BpeMergesApplyInOrderAndSpecialTokensAreFound()
    {
        // Merges in both HF spellings: "a b" and ["ab", "c"].
        string p = Write("""
            { "version": "1.0",
              "added_tokens": [ { "id": 6, "content": "<s>", "special": true }, { "id": 7, "content": "</s>", "special": true } ],
              "model": { "type": "BPE", "vocab": { "a": 0, "b": 1, "c": 2, "ab": 3, "abc": 4, "bc": 5, "<s>": 6, "</s>": 7 },
                         "merges": [ "a b", ["ab", "c"] ] } }
            """);
        try
        {
            var t = HfTokenizer.Load(p);
            Assert.Equal([4], t.Encode("abc"));
            Assert.Equal([3], t.Encode("ab"));
            Assert.Equal([1, 0], t.Encode("ba"));
            Assert.Equal([1, 2], t.Encode("bc"));  // "b c" is not a merge: stays two tokens
            Assert.Equal("abc", t.Decode([4]));
            Assert.Equal("abab", t.Decode([3, 3]));
            Assert.Equal(6, t.Bos);
            Assert.Equal(7, t.Eos);
            Assert.Equal(8, t.VocabSize);
        }
        finally { File.Delete(p); }
    }

    [Fact]
    public void UnsupportedOrBrokenFilesAreNamed()
    {
        string p = Write("""{ "model": { "type": "Unigram", "vocab": [] } }""");
        try { Assert.Contains("'Unigram' is not supported", Assert.Throws<InvalidDataException>(() => HfTokenizer.Load(p)).Message); }
        finally { File.Delete(p); }
        p = Write("{ not json");
        try { Assert.Contains("not valid JSON", Assert.Throws<InvalidDataException>(() => HfTokenizer.Load(p)).Message); }
        finally { File.Delete(p); }
        Assert.Throws<FileNotFoundException>(() => HfTokenizer.Load("/nonexistent/tokenizer.json"));
        // A field of the wrong JSON kind was an InvalidOperationException from the node API.
        p = Write("""{ "model": { "type": "BPE", "vocab": { "a": "zero" } } }""");
        try { Assert.Contains("malformed tokenizer.json", Assert.Throws<InvalidDataException>(() => HfTokenizer.Load(p)).Message); }
        finally { File.Delete(p); }
        string empty = Directory.CreateTempSubdirectory("realn-tok-").FullName;
        try { Assert.Contains("has no tokenizer.json", Assert.Throws<FileNotFoundException>(() => HfTokenizer.Load(empty)).Message); }
        finally { Directory.Delete(empty, true); }
    }
}
