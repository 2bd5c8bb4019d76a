// Parses YAML text into a node tree with errors that name the file, line and column. YamlDotNet
// reports most syntax errors as YamlException with a position, but some malformed inputs (a flow
// mapping left unclosed across lines) end in an InvalidOperationException without one: the parser
// is wrapped to remember the open flow collections and the last good event, so even those name where.
using YamlDotNet.Core;
using YamlDotNet.Core.Events;
using YamlDotNet.RepresentationModel;

namespace ReaLNative;

/// <summary>YAML loading shared by the planner and the engine: every syntax error is an
/// <see cref="InputException"/> with the file, line and column.</summary>
public static class YamlText
{
    /// <summary>Parses <paramref name="text"/>; <paramref name="file"/> names it in errors.</summary>
    public static YamlStream Load(string text, string file)
    {
        var stream = new YamlStream();
        var parser = new TrackingParser(new Parser(new StringReader(text)));
        try { stream.Load(parser); }
        catch (YamlException e)
        {
            throw new InputException($"invalid YAML: {Reason(e)}", file, (int)e.Start.Line, (int)e.Start.Column, e);
        }
        catch (InvalidOperationException e)
        {
            if (parser.OpenFlow is { } open)
                throw new InputException($"invalid YAML: the flow {(open.IsMapping ? "mapping '{'" : "sequence '['")} opened here is not closed " +
                                         $"(expected '{(open.IsMapping ? "}" : "]")}' before line {parser.Last.Line + 1})", file, (int)open.Mark.Line, (int)open.Mark.Column, e);
            throw new InputException("invalid YAML: cannot parse what follows", file, (int)parser.Last.Line, (int)parser.Last.Column, e);
        }
        return stream;
    }

    /// <summary>YamlDotNet's message without its own "(Line: .., Col: ..)" duplicate of the position.</summary>
    private static string Reason(YamlException e)
    {
        string m = e.InnerException is YamlException inner && inner.Message.Length > 0 ? inner.Message : e.Message;
        int p = m.IndexOf("(Line:", StringComparison.Ordinal);
        if (p >= 0 && m.IndexOf("): ", p, StringComparison.Ordinal) is int q and >= 0) m = m[(q + 3)..];
        return System.Text.RegularExpressions.Regex.Replace(m.Trim(), " {2,}", " ");
    }

    /// <summary>A parser that remembers the last event's end and the innermost open flow collection.</summary>
    private sealed class TrackingParser(IParser inner) : IParser
    {
        private readonly Stack<(bool IsMapping, Mark Mark, bool Flow)> _open = new();

        public ParsingEvent? Current => inner.Current;
        public Mark Last { get; private set; } = Mark.Empty;
        public (bool IsMapping, Mark Mark)? OpenFlow
        {
            get
            {
                foreach (var o in _open) if (o.Flow) return (o.IsMapping, o.Mark);
                return null;
            }
        }

        public bool MoveNext()
        {
            bool more = inner.MoveNext();
            if (more && inner.Current is { } ev)
            {
                Last = ev.End;
                switch (ev)
                {
                    case MappingStart ms: _open.Push((true, ms.Start, ms.Style == YamlDotNet.Core.Events.MappingStyle.Flow)); break;
                    case SequenceStart ss: _open.Push((false, ss.Start, ss.Style == YamlDotNet.Core.Events.SequenceStyle.Flow)); break;
                    case MappingEnd or SequenceEnd: if (_open.Count > 0) _open.Pop(); break;
                }
            }
            return more;
        }
    }
}
