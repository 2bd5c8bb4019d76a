// Tokenizers turn task text into token ids and back. The synthetic tasks use a tiny character
// vocabulary that fits the `tiny` preset (vocab 32); real models use a Hugging Face tokenizer.json.
namespace ReaLNative.Engine.Tokenization;

internal interface ITokenizer
{
    int VocabSize { get; }
    int Bos { get; }
    int Eos { get; }
    int[] Encode(string text);
    string Decode(ReadOnlySpan<int> ids);
}

/// <summary>
/// Character tokenizer for the synthetic tasks: id 0 is reserved (never produced), 1 = BOS,
/// 2 = EOS, then one id per character of <see cref="Alphabet"/>. Decode stops at EOS and renders
/// ids outside the alphabet as '?', so a model's garbage output still scores (as wrong). A model
/// whose vocabulary has room for <see cref="TextAlphabet"/> (vocab >= 88) gets it: the same first
/// ids, then letters and punctuation, enough for English word problems (datasets).
/// </summary>
internal sealed class CharTokenizer : ITokenizer
{
    public const string Alphabet = "0123456789+=:, -";
    /// <summary><see cref="Alphabet"/> followed by letters and the punctuation of plain English text and math answers.</summary>
    public const string TextAlphabet = Alphabet + "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.?!#$%'\"()*/;\\{}_";
    private const int First = 3;
    private readonly string _alphabet;

    public CharTokenizer(int vocabSize = 32)
    {
        if (vocabSize < First + Alphabet.Length)
            throw new ArgumentOutOfRangeException(nameof(vocabSize), vocabSize,
                $"the synthetic-task tokenizer needs a vocabulary of at least {First + Alphabet.Length} ids");
        VocabSize = vocabSize;
        _alphabet = vocabSize >= First + TextAlphabet.Length ? TextAlphabet : Alphabet;
    }

    /// <summary>The characters this tokenizer encodes (<see cref="Alphabet"/> or, with room, <see cref="TextAlphabet"/>).</summary>
    public string Characters => _alphabet;

    public int VocabSize { get; }
    public int Bos => 1;
    public int Eos => 2;

    public int[] Encode(string text)
    {
        var ids = new int[text.Length];
        for (int i = 0; i < text.Length; i++)
        {
            int k = _alphabet.IndexOf(text[i]);
            if (k < 0) throw new ArgumentException($"character '{text[i]}' at {i} is not in the tokenizer's alphabet \"{_alphabet}\"", nameof(text));
            ids[i] = First + k;
        }
        return ids;
    }

    public string Decode(ReadOnlySpan<int> ids)
    {
        var sb = new System.Text.StringBuilder(ids.Length);
        foreach (int id in ids)
        {
            if (id == Eos) break;
            if (id == Bos) continue;
            int k = id - First;
            sb.Append(k >= 0 && k < _alphabet.Length ? _alphabet[k] : '?');
        }
        return sb.ToString();
    }
}
