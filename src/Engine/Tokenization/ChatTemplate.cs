// A Jinja subset sufficient for Hugging Face chat templates (tokenizer_config.json "chat_template"),
// rendered as transformers renders them: Jinja2 with trim_blocks, lstrip_blocks and loop controls,
// `raise_exception` as a global, Undefined (not strict) for unknown names. Supported: text,
// {{ expr }}, {# comments #}, whitespace control (-), if/elif/else, for (tuple targets, `if`
// filter, else, loop.*), break/continue, set (also ns.attr on a namespace()). Expressions: literals,
// lists, dicts, attribute/index/slice, calls with keyword arguments, filters, `is` tests,
// not/and/or, comparisons, in/not in, + - * / // % ** ~, conditional `a if c else b`.
// Anything else (macro, call, include, ...) is refused at parse time with its line and column.
using System.Globalization;
using System.Text;
using ReaLNative.Planner;

namespace ReaLNative.Engine.Tokenization;

/// <summary>A chat template that cannot be parsed or rendered; the message says where and why.</summary>
internal sealed class ChatTemplateException(string message) : InputException(message);

/// <summary>One message of a conversation.</summary>
internal sealed record ChatMessage(string Role, string Content);

/// <summary>A parsed chat template.</summary>
internal sealed class ChatTemplate
{
    private readonly List<Node> _body;
    public string Source { get; }

    private ChatTemplate(string source, List<Node> body)
    {
        Source = source;
        _body = body;
    }

    /// <summary>Parses <paramref name="source"/>; errors name the line and column.</summary>
    public static ChatTemplate Parse(string source) => new(source, new Parser(source).ParseAll());

    /// <summary>Renders a conversation the way transformers' apply_chat_template(tokenize=False) does;
    /// <paramref name="variables"/> are the special tokens (bos_token, eos_token, ...) and extras.</summary>
    public string Render(IReadOnlyList<ChatMessage> messages, bool addGenerationPrompt, IReadOnlyDictionary<string, object?>? variables = null)
    {
        var globals = new Dictionary<string, object?>
        {
            ["messages"] = messages.Select(m => (object?)new Dictionary<string, object?> { ["role"] = m.Role, ["content"] = m.Content }).ToList(),
            ["add_generation_prompt"] = addGenerationPrompt,
            ["tools"] = null,
            ["documents"] = null,
        };
        if (variables is not null) foreach (var (k, v) in variables) globals[k] = v;
        var sb = new StringBuilder();
        var scope = new Scope(null, globals);
        try { Exec(_body, scope, sb); }
        catch (LoopSignal) { throw new ChatTemplateException("chat template: break/continue outside a for loop"); }
        return sb.ToString();
    }

    // ---------------------------------------------------------------- values

    private sealed class UndefinedValue
    {
        public static readonly UndefinedValue I = new();
        public override string ToString() => "";
    }

    private sealed class Namespace : Dictionary<string, object?>;

    private sealed class Callable(string name, Func<List<object?>, Dictionary<string, object?>, object?> fn)
    {
        public string Name { get; } = name;
        public object? Invoke(List<object?> a, Dictionary<string, object?> kw) => fn(a, kw);
    }

    private sealed class LoopSignal(bool isBreak) : Exception
    {
        public bool IsBreak { get; } = isBreak;
    }

    private sealed class Scope(Scope? parent, Dictionary<string, object?> vars)
    {
        public Scope? Parent { get; } = parent;
        public Dictionary<string, object?> Vars { get; } = vars;

        public object? Get(string name)
        {
            for (var s = this; s is not null; s = s.Parent)
                if (s.Vars.TryGetValue(name, out var v)) return v;
            return name switch
            {
                "raise_exception" => RaiseException,
                "namespace" => NamespaceFn,
                "range" => RangeFn,
                "dict" => DictFn,
                _ => UndefinedValue.I,
            };
        }
    }

    private static readonly Callable RaiseException = new("raise_exception", (a, _) =>
        throw new ChatTemplateException($"chat template raised an exception: {(a.Count > 0 ? Str(a[0]) : "")}"));
    private static readonly Callable NamespaceFn = new("namespace", (a, kw) =>
    {
        var ns = new Namespace();
        if (a.Count > 0 && a[0] is Dictionary<string, object?> init) foreach (var (k, v) in init) ns[k] = v;
        foreach (var (k, v) in kw) ns[k] = v;
        return ns;
    });
    private static readonly Callable DictFn = new("dict", (a, kw) => new Dictionary<string, object?>(kw));
    private static readonly Callable RangeFn = new("range", (a, _) =>
    {
        long start = 0, stop, step = 1;
        if (a.Count == 1) stop = ToLong(a[0]);
        else if (a.Count >= 2) { start = ToLong(a[0]); stop = ToLong(a[1]); if (a.Count > 2) step = ToLong(a[2]); }
        else throw new ChatTemplateException("chat template: range() needs 1 to 3 arguments");
        if (step == 0) throw new ChatTemplateException("chat template: range() step must not be zero");
        var r = new List<object?>();
        for (long i = start; step > 0 ? i < stop : i > stop; i += step) r.Add(i);
        return r;
    });

    // ---------------------------------------------------------------- nodes

    private abstract record Node(int Line, int Col);
    private sealed record TextNode(string Text) : Node(0, 0);
    private sealed record OutputNode(Expr E, int L, int C) : Node(L, C);
    private sealed record IfNode(List<(Expr Cond, List<Node> Body)> Branches, List<Node>? Else, int L, int C) : Node(L, C);
    private sealed record ForNode(List<string> Targets, Expr Iter, Expr? Filter, List<Node> Body, List<Node>? Else, int L, int C) : Node(L, C);
    private sealed record SetNode(string Name, string? Attr, Expr Value, int L, int C) : Node(L, C);
    private sealed record LoopControlNode(bool IsBreak, int L, int C) : Node(L, C);

    private abstract record Expr(int Line, int Col);
    private sealed record Lit(object? Value, int L, int C) : Expr(L, C);
    private sealed record Name(string Id, int L, int C) : Expr(L, C);
    private sealed record ListExpr(List<Expr> Items, int L, int C) : Expr(L, C);
    private sealed record DictExpr(List<(Expr K, Expr V)> Items, int L, int C) : Expr(L, C);
    private sealed record GetAttr(Expr Obj, string Attr, int L, int C) : Expr(L, C);
    private sealed record GetItem(Expr Obj, Expr Key, int L, int C) : Expr(L, C);
    private sealed record Slice(Expr Obj, Expr? Start, Expr? Stop, Expr? Step, int L, int C) : Expr(L, C);
    private sealed record Call(Expr Fn, List<Expr> Args, List<(string, Expr)> Kw, int L, int C) : Expr(L, C);
    private sealed record Filter(Expr Obj, string Name, List<Expr> Args, List<(string, Expr)> Kw, int L, int C) : Expr(L, C);
    private sealed record Test(Expr Obj, string Name, bool Negated, List<Expr> Args, int L, int C) : Expr(L, C);
    private sealed record Unary(string Op, Expr E, int L, int C) : Expr(L, C);
    private sealed record Binary(string Op, Expr A, Expr B, int L, int C) : Expr(L, C);
    private sealed record CondExpr(Expr Cond, Expr Then, Expr? Else, int L, int C) : Expr(L, C);

    // ---------------------------------------------------------------- lexing + parsing

    private enum Kind { Text, Output, Statement }

    private sealed record Chunk(Kind Kind, string Content, int Line, int Col, int ContentOffset);

    private sealed class Parser
    {
        private readonly string _src;
        private readonly List<Chunk> _chunks;
        private int _pos;

        public Parser(string src)
        {
            _src = src;
            _chunks = Lex(src);
        }

        private (int Line, int Col) LineCol(int offset)
        {
            int line = 1, col = 1;
            for (int i = 0; i < offset && i < _src.Length; i++)
            {
                if (_src[i] == '\n') { line++; col = 1; }
                else col++;
            }
            return (line, col);
        }

        private ChatTemplateException Error(int offset, string msg)
        {
            var (l, c) = LineCol(offset);
            return new ChatTemplateException($"chat template line {l}, column {c}: {msg}");
        }

        private enum PieceKind { Text, Output, Statement, Comment }

        private sealed record Piece(PieceKind Kind, int Start, int End, int CStart, int CEnd, bool StripBefore, bool StripAfter, bool NoLstrip);

        /// <summary>Splits the source into text and tags, applying whitespace control, trim_blocks and lstrip_blocks.</summary>
        private List<Chunk> Lex(string s)
        {
            var raw = new List<Piece>();
            int i = 0;
            while (i < s.Length)
            {
                int open = IndexOfTag(s, i);
                if (open < 0) { raw.Add(new(PieceKind.Text, i, s.Length, i, s.Length, false, false, false)); break; }
                if (open > i) raw.Add(new(PieceKind.Text, i, open, i, open, false, false, false));
                char t = s[open + 1];
                string close = t == '{' ? "}}" : t == '%' ? "%}" : "#}";
                int cs = open + 2;
                bool stripBefore = cs < s.Length && s[cs] == '-';
                bool noLstrip = cs < s.Length && s[cs] == '+';
                if (stripBefore || noLstrip) cs++;
                int end = FindClose(s, cs, close, t == '#');
                if (end < 0) throw Error(open, $"'{s.Substring(open, 2)}' is never closed with '{close}'");
                int ce = end;
                bool stripAfter = ce > cs && s[ce - 1] == '-';
                if (stripAfter) ce--;
                var kind = t == '{' ? PieceKind.Output : t == '%' ? PieceKind.Statement : PieceKind.Comment;
                raw.Add(new(kind, open, end + 2, cs, ce, stripBefore, stripAfter, noLstrip));
                i = end + 2;
            }
            var chunks = new List<Chunk>();
            for (int k = 0; k < raw.Count; k++)
            {
                var r = raw[k];
                if (r.Kind == PieceKind.Comment) continue;
                if (r.Kind != PieceKind.Text)
                {
                    var (l, c) = LineCol(r.Start);
                    chunks.Add(new Chunk(r.Kind == PieceKind.Output ? Kind.Output : Kind.Statement, s[r.CStart..r.CEnd], l, c, r.CStart));
                    continue;
                }
                string text = s[r.Start..r.End];
                bool lineStart = r.Start == 0;  // Jinja's line_starting: the text begins a line
                if (k > 0)
                {
                    var prev = raw[k - 1];
                    if (prev.StripAfter)
                    {
                        string t2 = text.TrimStart();
                        lineStart = text[..(text.Length - t2.Length)].Contains('\n');
                        text = t2;
                    }
                    else if (prev.Kind is PieceKind.Statement or PieceKind.Comment)
                    {
                        // trim_blocks: the first newline after a block or comment tag goes.
                        if (text.StartsWith("\r\n", StringComparison.Ordinal)) { text = text[2..]; lineStart = true; }
                        else if (text.StartsWith('\n')) { text = text[1..]; lineStart = true; }
                    }
                }
                if (k + 1 < raw.Count)
                {
                    var next = raw[k + 1];
                    if (next.StripBefore) text = text.TrimEnd();
                    else if (next.Kind is PieceKind.Statement or PieceKind.Comment && !next.NoLstrip)
                    {
                        // lstrip_blocks: spaces and tabs between the line start and a block/comment tag go.
                        int lpos = text.LastIndexOf('\n') + 1;
                        if ((lpos > 0 || lineStart) && text.AsSpan(lpos).Trim(" \t").IsEmpty && !text.AsSpan(lpos).ContainsAny('\r', '\n'))
                            text = text[..lpos];
                    }
                }
                if (text.Length > 0) chunks.Add(new Chunk(Kind.Text, text, 0, 0, r.Start));
            }
            return chunks;
        }

        private static int IndexOfTag(string s, int from)
        {
            for (int i = from; i + 1 < s.Length; i++)
                if (s[i] == '{' && (s[i + 1] == '{' || s[i + 1] == '%' || s[i + 1] == '#')) return i;
            return -1;
        }

        /// <summary>The closing delimiter's index, skipping string literals inside expressions.</summary>
        private static int FindClose(string s, int from, string close, bool comment)
        {
            char quote = '\0';
            for (int i = from; i + 1 < s.Length; i++)
            {
                char ch = s[i];
                if (!comment)
                {
                    if (quote != '\0')
                    {
                        if (ch == '\\') { i++; continue; }
                        if (ch == quote) quote = '\0';
                        continue;
                    }
                    if (ch == '\'' || ch == '"') { quote = ch; continue; }
                }
                if (ch == close[0] && s[i + 1] == close[1]) return i;
            }
            return -1;
        }

        private static ChatTemplateException TagError(Chunk c, string msg) => new($"chat template line {c.Line}, column {c.Col}: {msg}");

        public List<Node> ParseAll()
        {
            var body = ParseBlock(out var end);
            if (end is not null) throw TagError(end, $"unexpected '{Keyword(end)}' (no block is open)");
            return body;
        }

        private static string Keyword(Chunk c)
        {
            var t = c.Content.TrimStart();
            int n = 0;
            while (n < t.Length && (char.IsLetterOrDigit(t[n]) || t[n] == '_')) n++;
            return t[..n];
        }

        /// <summary>Parses nodes until a statement the caller handles (elif/else/end*) or the end.</summary>
        private List<Node> ParseBlock(out Chunk? terminator)
        {
            var nodes = new List<Node>();
            while (_pos < _chunks.Count)
            {
                var c = _chunks[_pos];
                switch (c.Kind)
                {
                    case Kind.Text:
                        nodes.Add(new TextNode(c.Content));
                        _pos++;
                        break;
                    case Kind.Output:
                    {
                        var ex = new ExprParser(this, c);
                        var e = ex.ParseExpression();
                        ex.ExpectEnd();
                        nodes.Add(new OutputNode(e, c.Line, c.Col));
                        _pos++;
                        break;
                    }
                    default:
                    {
                        string kw = Keyword(c);
                        switch (kw)
                        {
                            case "if": nodes.Add(ParseIf(c)); break;
                            case "for": nodes.Add(ParseFor(c)); break;
                            case "set": nodes.Add(ParseSet(c)); break;
                            case "break" or "continue":
                            {
                                var ex = new ExprParser(this, c);
                                ex.Keyword(kw);
                                ex.ExpectEnd();
                                nodes.Add(new LoopControlNode(kw == "break", c.Line, c.Col));
                                _pos++;
                                break;
                            }
                            case "elif" or "else" or "endif" or "endfor":
                                terminator = c;
                                return nodes;
                            default:
                                throw new ChatTemplateException($"chat template line {c.Line}, column {c.Col}: unknown tag '{(kw.Length > 0 ? kw : c.Content.Trim())}' (supported: if, elif, else, endif, for, endfor, set, break, continue)");
                        }
                        break;
                    }
                }
            }
            terminator = null;
            return nodes;
        }

        private Node ParseIf(Chunk c)
        {
            var branches = new List<(Expr, List<Node>)>();
            List<Node>? elseBody = null;
            var ex = new ExprParser(this, c);
            ex.Keyword("if");
            var cond = ex.ParseExpression();
            ex.ExpectEnd();
            _pos++;
            while (true)
            {
                var body = ParseBlock(out var term);
                if (term is null) throw new ChatTemplateException($"chat template line {c.Line}, column {c.Col}: 'if' is never closed with 'endif'");
                string kw = Keyword(term);
                if (elseBody is not null)
                {
                    if (kw != "endif") throw TagError(term, $"unexpected '{kw}' after 'else' (expected 'endif')");
                    elseBody = body;
                    EndTag(term, "endif");
                    return new IfNode(branches, elseBody, c.Line, c.Col);
                }
                branches.Add((cond, body));
                if (kw == "elif")
                {
                    var e2 = new ExprParser(this, term);
                    e2.Keyword("elif");
                    cond = e2.ParseExpression();
                    e2.ExpectEnd();
                    _pos++;
                }
                else if (kw == "else")
                {
                    EndTag(term, "else");
                    elseBody = [];
                }
                else if (kw == "endif")
                {
                    EndTag(term, "endif");
                    return new IfNode(branches, null, c.Line, c.Col);
                }
                else throw TagError(term, $"unexpected '{kw}' inside 'if' (expected elif, else or endif)");
            }
        }

        private void EndTag(Chunk term, string kw)
        {
            var e = new ExprParser(this, term);
            e.Keyword(kw);
            e.ExpectEnd();
            _pos++;
        }

        private Node ParseFor(Chunk c)
        {
            var ex = new ExprParser(this, c);
            ex.Keyword("for");
            var targets = new List<string> { ex.Identifier() };
            while (ex.TryPunct(",")) targets.Add(ex.Identifier());
            ex.Keyword("in");
            var iter = ex.ParseExpression(allowCondExpr: false);
            Expr? filter = null;
            if (ex.TryKeyword("if")) filter = ex.ParseExpression(allowCondExpr: false);
            ex.ExpectEnd();
            _pos++;
            var body = ParseBlock(out var term);
            List<Node>? elseBody = null;
            if (term is not null && Keyword(term) == "else")
            {
                EndTag(term, "else");
                elseBody = ParseBlock(out term);
            }
            if (term is null) throw new ChatTemplateException($"chat template line {c.Line}, column {c.Col}: 'for' is never closed with 'endfor'");
            if (Keyword(term) != "endfor") throw TagError(term, $"unexpected '{Keyword(term)}' inside 'for' (expected endfor)");
            EndTag(term, "endfor");
            return new ForNode(targets, iter, filter, body, elseBody, c.Line, c.Col);
        }

        private Node ParseSet(Chunk c)
        {
            var ex = new ExprParser(this, c);
            ex.Keyword("set");
            string name = ex.Identifier();
            string? attr = null;
            if (ex.TryPunct(".")) attr = ex.Identifier();
            if (!ex.TryPunct("=")) throw Error(ex.Offset, "'set' needs '= value' (block set is not supported)");
            var v = ex.ParseExpression();
            ex.ExpectEnd();
            _pos++;
            return new SetNode(name, attr, v, c.Line, c.Col);
        }

        /// <summary>Recursive-descent expression parser over one tag's content, with Jinja's precedence.</summary>
        internal sealed class ExprParser
        {
            private readonly Parser _parser;
            private readonly string _text;
            private readonly int _base;
            private int _pos;

            public ExprParser(Parser p, Chunk c)
            {
                _parser = p;
                _text = c.Content;
                _base = c.ContentOffset;
            }

            public int Offset => _base + _pos;

            private (int, int) Here() => _parser.LineCol(_base + _pos);

            private ChatTemplateException Err(string msg) => _parser.Error(_base + _pos, msg);

            private void Ws() { while (_pos < _text.Length && char.IsWhiteSpace(_text[_pos])) _pos++; }

            public void ExpectEnd()
            {
                Ws();
                if (_pos < _text.Length) throw Err($"unexpected '{Rest()}'");
            }

            private string Rest() => _text[_pos..].Length > 20 ? _text.Substring(_pos, 20) + "..." : _text[_pos..];

            private string? PeekWord()
            {
                Ws();
                int j = _pos;
                if (j >= _text.Length || !(char.IsLetter(_text[j]) || _text[j] == '_')) return null;
                while (j < _text.Length && (char.IsLetterOrDigit(_text[j]) || _text[j] == '_')) j++;
                return _text[_pos..j];
            }

            public bool TryKeyword(string kw)
            {
                if (PeekWord() != kw) return false;
                _pos += kw.Length;
                return true;
            }

            public void Keyword(string kw)
            {
                if (!TryKeyword(kw)) throw Err($"expected '{kw}'");
            }

            public string Identifier()
            {
                var w = PeekWord() ?? throw Err("expected a name");
                _pos += w.Length;
                return w;
            }

            public bool TryPunct(string p)
            {
                Ws();
                if (string.CompareOrdinal(_text, _pos, p, 0, p.Length) != 0) return false;
                // '=' must not match '==', '*' not '**', '/' not '//'
                if (p is "=" or "*" or "/" && _pos + 1 < _text.Length && _text[_pos + 1] == p[0]) return false;
                if (p is "=" && _pos > 0 && _text[_pos] == '=' && _pos + 1 < _text.Length && _text[_pos + 1] == '=') return false;
                _pos += p.Length;
                return true;
            }

            private void Expect(string p)
            {
                if (!TryPunct(p)) throw Err($"expected '{p}'");
            }

            public Expr ParseExpression(bool allowCondExpr = true)
            {
                var e = ParseOr();
                if (!allowCondExpr) return e;
                while (true)
                {
                    int save = _pos;
                    if (!TryKeyword("if")) { _pos = save; return e; }
                    var (l, c) = Here();
                    var cond = ParseOr();
                    Expr? other = TryKeyword("else") ? ParseExpression() : null;
                    e = new CondExpr(cond, e, other, l, c);
                }
            }

            private Expr ParseOr()
            {
                var a = ParseAnd();
                while (TryKeyword("or")) { var (l, c) = Here(); a = new Binary("or", a, ParseAnd(), l, c); }
                return a;
            }

            private Expr ParseAnd()
            {
                var a = ParseNot();
                while (TryKeyword("and")) { var (l, c) = Here(); a = new Binary("and", a, ParseNot(), l, c); }
                return a;
            }

            private Expr ParseNot()
            {
                var (l, c) = Here();
                if (TryKeyword("not")) return new Unary("not", ParseNot(), l, c);
                return ParseCompare();
            }

            private Expr ParseCompare()
            {
                var a = ParseMath1();
                while (true)
                {
                    var (l, c) = Here();
                    string? op = null;
                    foreach (var o in new[] { "==", "!=", "<=", ">=", "<", ">" })
                        if (TryPunct(o)) { op = o; break; }
                    if (op is null)
                    {
                        int save = _pos;
                        if (TryKeyword("in")) op = "in";
                        else if (TryKeyword("not") && TryKeyword("in")) op = "not in";
                        else { _pos = save; return a; }
                    }
                    a = new Binary(op, a, ParseMath1(), l, c);
                }
            }

            private Expr ParseMath1()
            {
                var a = ParseConcat();
                while (true)
                {
                    var (l, c) = Here();
                    if (TryPunct("+")) a = new Binary("+", a, ParseConcat(), l, c);
                    else if (TryPunct("-")) a = new Binary("-", a, ParseConcat(), l, c);
                    else return a;
                }
            }

            private Expr ParseConcat()
            {
                var a = ParseMath2();
                while (true)
                {
                    var (l, c) = Here();
                    if (TryPunct("~")) a = new Binary("~", a, ParseMath2(), l, c);
                    else return a;
                }
            }

            private Expr ParseMath2()
            {
                var a = ParsePow();
                while (true)
                {
                    var (l, c) = Here();
                    string? op = TryPunct("//") ? "//" : TryPunct("/") ? "/" : TryPunct("%") ? "%" : TryPunct("*") ? "*" : null;
                    if (op is null) return a;
                    a = new Binary(op, a, ParsePow(), l, c);
                }
            }

            private Expr ParsePow()
            {
                var a = ParseUnary();
                while (true)
                {
                    var (l, c) = Here();
                    if (TryPunct("**")) a = new Binary("**", a, ParseUnary(), l, c);
                    else return a;
                }
            }

            private Expr ParseUnary(bool withFilter = true)
            {
                var (l, c) = Here();
                Expr e;
                if (TryPunct("-")) e = new Unary("-", ParseUnary(false), l, c);
                else if (TryPunct("+")) e = ParseUnary(false);
                else e = ParsePostfix(ParsePrimary());
                return withFilter ? ParseFilters(e) : e;
            }

            private Expr ParseFilters(Expr e)
            {
                while (true)
                {
                    var (l, c) = Here();
                    if (TryPunct("|"))
                    {
                        string name = Identifier();
                        var args = new List<Expr>();
                        var kw = new List<(string, Expr)>();
                        if (TryPunct("(")) ParseArgs(args, kw);
                        e = new Filter(e, name, args, kw, l, c);
                    }
                    else if (TryKeyword("is"))
                    {
                        bool neg = TryKeyword("not");
                        string name = Identifier();
                        var args = new List<Expr>();
                        if (TryPunct("(")) ParseArgs(args, []);
                        else
                        {
                            // `is divisibleby 3`, `is sameas x`: one bare argument (not for tests used as booleans)
                            var w = PeekWord();
                            Ws();
                            if (_pos < _text.Length && w is not ("and" or "or" or "else" or "if" or "in" or "not" or "is") && (char.IsDigit(_text[_pos]) || _text[_pos] is '\'' or '"' || w is not null))
                                args.Add(ParsePostfix(ParsePrimary()));
                        }
                        e = new Test(e, name, neg, args, l, c);
                    }
                    else return e;
                }
            }

            private void ParseArgs(List<Expr> args, List<(string, Expr)> kw)
            {
                if (TryPunct(")")) return;
                while (true)
                {
                    int save = _pos;
                    var w = PeekWord();
                    if (w is not null)
                    {
                        _pos += w.Length;
                        Ws();
                        if (_pos < _text.Length && _text[_pos] == '=' && !(_pos + 1 < _text.Length && _text[_pos + 1] == '='))
                        {
                            _pos++;
                            kw.Add((w, ParseExpression()));
                            goto next;
                        }
                        _pos = save;
                    }
                    args.Add(ParseExpression());
                next:
                    if (TryPunct(")")) return;
                    Expect(",");
                }
            }

            private Expr ParsePostfix(Expr e)
            {
                while (true)
                {
                    var (l, c) = Here();
                    if (TryPunct("."))
                    {
                        Ws();
                        if (_pos < _text.Length && char.IsDigit(_text[_pos]))
                        {
                            int j = _pos;
                            while (j < _text.Length && char.IsDigit(_text[j])) j++;
                            e = new GetItem(e, new Lit(long.Parse(_text[_pos..j], CultureInfo.InvariantCulture), l, c), l, c);
                            _pos = j;
                        }
                        else e = new GetAttr(e, Identifier(), l, c);
                    }
                    else if (TryPunct("["))
                    {
                        Expr? a = null, b = null, st = null;
                        bool slice = false;
                        if (!TryPunctPeek(":")) a = ParseExpression();
                        if (TryPunct(":"))
                        {
                            slice = true;
                            if (!TryPunctPeek(":") && !TryPunctPeek("]")) b = ParseExpression();
                            if (TryPunct(":") && !TryPunctPeek("]")) st = ParseExpression();
                        }
                        Expect("]");
                        e = slice ? new Slice(e, a, b, st, l, c) : new GetItem(e, a!, l, c);
                    }
                    else if (TryPunct("("))
                    {
                        var args = new List<Expr>();
                        var kw = new List<(string, Expr)>();
                        ParseArgs(args, kw);
                        e = new Call(e, args, kw, l, c);
                    }
                    else return e;
                }
            }

            private bool TryPunctPeek(string p)
            {
                Ws();
                return string.CompareOrdinal(_text, _pos, p, 0, p.Length) == 0;
            }

            private Expr ParsePrimary()
            {
                Ws();
                var (l, c) = Here();
                if (_pos >= _text.Length) throw Err("expected an expression");
                char ch = _text[_pos];
                if (ch == '\'' || ch == '"')
                {
                    var sb = new StringBuilder();
                    // adjacent string literals concatenate, as in Python
                    while (_pos < _text.Length && (_text[_pos] == '\'' || _text[_pos] == '"'))
                    {
                        sb.Append(ReadString());
                        Ws();
                    }
                    return new Lit(sb.ToString(), l, c);
                }
                if (char.IsDigit(ch))
                {
                    int j = _pos;
                    while (j < _text.Length && (char.IsDigit(_text[j]) || _text[j] == '_')) j++;
                    bool isFloat = false;
                    if (j + 1 < _text.Length && _text[j] == '.' && char.IsDigit(_text[j + 1]))
                    {
                        isFloat = true;
                        j++;
                        while (j < _text.Length && char.IsDigit(_text[j])) j++;
                    }
                    string num = _text[_pos..j].Replace("_", "");
                    _pos = j;
                    return isFloat ? new Lit(double.Parse(num, CultureInfo.InvariantCulture), l, c) : new Lit(long.Parse(num, CultureInfo.InvariantCulture), l, c);
                }
                if (TryPunct("("))
                {
                    var e = ParseExpression();
                    if (TryPunct(","))
                    {
                        // a tuple: evaluated as a list
                        var items = new List<Expr> { e };
                        while (!TryPunct(")")) { items.Add(ParseExpression()); if (!TryPunctPeek(")")) Expect(","); }
                        return new ListExpr(items, l, c);
                    }
                    Expect(")");
                    return e;
                }
                if (TryPunct("["))
                {
                    var items = new List<Expr>();
                    while (!TryPunct("]"))
                    {
                        items.Add(ParseExpression());
                        if (!TryPunctPeek("]")) Expect(",");
                    }
                    return new ListExpr(items, l, c);
                }
                if (TryPunct("{"))
                {
                    var items = new List<(Expr, Expr)>();
                    while (!TryPunct("}"))
                    {
                        var k = ParseExpression();
                        Expect(":");
                        items.Add((k, ParseExpression()));
                        if (!TryPunctPeek("}")) Expect(",");
                    }
                    return new DictExpr(items, l, c);
                }
                var w = PeekWord() ?? throw Err($"unexpected '{Rest()}'");
                _pos += w.Length;
                return w switch
                {
                    "true" or "True" => new Lit(true, l, c),
                    "false" or "False" => new Lit(false, l, c),
                    "none" or "None" => new Lit(null, l, c),
                    _ => new Name(w, l, c),
                };
            }

            private string ReadString()
            {
                char q = _text[_pos++];
                var sb = new StringBuilder();
                while (true)
                {
                    if (_pos >= _text.Length) throw Err("unterminated string");
                    char ch = _text[_pos++];
                    if (ch == q) return sb.ToString();
                    if (ch != '\\') { sb.Append(ch); continue; }
                    if (_pos >= _text.Length) throw Err("unterminated string");
                    char e = _text[_pos++];
                    switch (e)
                    {
                        case 'n': sb.Append('\n'); break;
                        case 't': sb.Append('\t'); break;
                        case 'r': sb.Append('\r'); break;
                        case '\\': sb.Append('\\'); break;
                        case '\'': sb.Append('\''); break;
                        case '"': sb.Append('"'); break;
                        case '0': sb.Append('\0'); break;
                        case 'u' when _pos + 4 <= _text.Length:
                            sb.Append((char)int.Parse(_text.AsSpan(_pos, 4), NumberStyles.HexNumber, CultureInfo.InvariantCulture));
                            _pos += 4;
                            break;
                        case '\n': break;  // line continuation
                        default: sb.Append('\\').Append(e); break;  // Python keeps unknown escapes
                    }
                }
            }
        }
    }

    // ---------------------------------------------------------------- execution

    private static void Exec(List<Node> nodes, Scope scope, StringBuilder sb)
    {
        foreach (var n in nodes)
        {
            switch (n)
            {
                case TextNode t: sb.Append(t.Text); break;
                case OutputNode o: sb.Append(Str(Eval(o.E, scope))); break;
                case IfNode f:
                {
                    bool done = false;
                    foreach (var (cond, body) in f.Branches)
                        if (Truthy(Eval(cond, scope))) { Exec(body, scope, sb); done = true; break; }
                    if (!done && f.Else is not null) Exec(f.Else, scope, sb);
                    break;
                }
                case ForNode f: ExecFor(f, scope, sb); break;
                case SetNode s:
                {
                    var v = Eval(s.Value, scope);
                    if (s.Attr is null) scope.Vars[s.Name] = v;
                    else if (scope.Get(s.Name) is Namespace ns) ns[s.Attr] = v;
                    else throw new ChatTemplateException($"chat template line {s.Line}, column {s.Col}: cannot assign attribute '{s.Attr}' of '{s.Name}' (only a namespace() takes attribute assignment)");
                    break;
                }
                case LoopControlNode lc: throw new LoopSignal(lc.IsBreak);
            }
        }
    }

    private static void ExecFor(ForNode f, Scope scope, StringBuilder sb)
    {
        var src = Eval(f.Iter, scope);
        var items = Iterate(src, f.Line, f.Col).ToList();
        if (f.Filter is not null)
        {
            var kept = new List<object?>();
            foreach (var it in items)
            {
                var probe = new Scope(scope, []);
                Bind(f, probe, it);
                if (Truthy(Eval(f.Filter, probe))) kept.Add(it);
            }
            items = kept;
        }
        if (items.Count == 0)
        {
            if (f.Else is not null) Exec(f.Else, scope, sb);
            return;
        }
        for (int i = 0; i < items.Count; i++)
        {
            var inner = new Scope(scope, []);
            Bind(f, inner, items[i]);
            inner.Vars["loop"] = new Dictionary<string, object?>
            {
                ["index"] = (long)i + 1,
                ["index0"] = (long)i,
                ["revindex"] = (long)(items.Count - i),
                ["revindex0"] = (long)(items.Count - i - 1),
                ["first"] = i == 0,
                ["last"] = i == items.Count - 1,
                ["length"] = (long)items.Count,
                ["previtem"] = i > 0 ? items[i - 1] : UndefinedValue.I,
                ["nextitem"] = i + 1 < items.Count ? items[i + 1] : UndefinedValue.I,
            };
            try { Exec(f.Body, inner, sb); }
            catch (LoopSignal s)
            {
                if (s.IsBreak) break;
            }
        }
    }

    private static void Bind(ForNode f, Scope s, object? item)
    {
        if (f.Targets.Count == 1) { s.Vars[f.Targets[0]] = item; return; }
        var parts = Iterate(item, f.Line, f.Col).ToList();
        if (parts.Count != f.Targets.Count)
            throw new ChatTemplateException($"chat template line {f.Line}, column {f.Col}: cannot unpack {parts.Count} values into {f.Targets.Count} names");
        for (int i = 0; i < parts.Count; i++) s.Vars[f.Targets[i]] = parts[i];
    }

    private static IEnumerable<object?> Iterate(object? v, int line, int col) => v switch
    {
        List<object?> l => l,
        Dictionary<string, object?> d => d.Keys,
        string s => s.Select(ch => (object?)ch.ToString()),
        UndefinedValue => [],
        _ => throw new ChatTemplateException($"chat template line {line}, column {col}: {TypeName(v)} is not iterable"),
    };

    private static ChatTemplateException Err(Expr e, string msg) => new($"chat template line {e.Line}, column {e.Col}: {msg}");

    private static object? Eval(Expr e, Scope s)
    {
        switch (e)
        {
            case Lit l: return l.Value;
            case Name n: return s.Get(n.Id);
            case ListExpr le: return le.Items.Select(x => Eval(x, s)).ToList();
            case DictExpr de:
            {
                var d = new Dictionary<string, object?>();
                foreach (var (k, v) in de.Items) d[Str(Eval(k, s))] = Eval(v, s);
                return d;
            }
            case GetAttr ga:
            {
                var o = Eval(ga.Obj, s);
                if (o is UndefinedValue) throw Err(ga, $"'{Describe(ga.Obj)}' is undefined (reading .{ga.Attr})");
                if (o is Dictionary<string, object?> d) return d.TryGetValue(ga.Attr, out var v) ? v : (object?)Method(o, ga.Attr) ?? UndefinedValue.I;
                return (object?)Method(o, ga.Attr) ?? UndefinedValue.I;
            }
            case GetItem gi:
            {
                var o = Eval(gi.Obj, s);
                var k = Eval(gi.Key, s);
                if (o is UndefinedValue) throw Err(gi, $"'{Describe(gi.Obj)}' is undefined (indexing it)");
                switch (o)
                {
                    case Dictionary<string, object?> d:
                        return k is string ks && d.TryGetValue(ks, out var v) ? v : UndefinedValue.I;
                    case List<object?> l when k is long or bool:
                    {
                        long i = ToLong(k);
                        if (i < 0) i += l.Count;
                        return i >= 0 && i < l.Count ? l[(int)i] : UndefinedValue.I;
                    }
                    case string str when k is long or bool:
                    {
                        long i = ToLong(k);
                        if (i < 0) i += str.Length;
                        return i >= 0 && i < str.Length ? str[(int)i].ToString() : UndefinedValue.I;
                    }
                    default:
                        return k is string name ? (object?)Method(o, name) ?? UndefinedValue.I : UndefinedValue.I;
                }
            }
            case Slice sl:
            {
                var o = Eval(sl.Obj, s);
                long? a = sl.Start is null ? null : ToLong(Eval(sl.Start, s));
                long? b = sl.Stop is null ? null : ToLong(Eval(sl.Stop, s));
                long st = sl.Step is null ? 1 : ToLong(Eval(sl.Step, s));
                if (st == 0) throw Err(sl, "slice step cannot be zero");
                switch (o)
                {
                    case List<object?> l: return SliceIdx(l.Count, a, b, st).Select(i => l[i]).ToList();
                    case string str: return string.Concat(SliceIdx(str.Length, a, b, st).Select(i => str[i]));
                    default: throw Err(sl, $"cannot slice {TypeName(o)}");
                }
            }
            case Call c:
            {
                var fn = Eval(c.Fn, s);
                var args = c.Args.Select(x => Eval(x, s)).ToList();
                var kw = c.Kw.ToDictionary(x => x.Item1, x => Eval(x.Item2, s));
                if (fn is Callable cal) return cal.Invoke(args, kw);
                throw Err(c, $"'{Describe(c.Fn)}' is not callable");
            }
            case Filter f: return ApplyFilter(f, Eval(f.Obj, s), f.Args.Select(x => Eval(x, s)).ToList(), f.Kw.ToDictionary(x => x.Item1, x => Eval(x.Item2, s)));
            case Test t:
            {
                var v = t.Name is "defined" or "undefined" ? EvalSafe(t.Obj, s) : Eval(t.Obj, s);
                bool r = ApplyTest(t, v, t.Args.Select(x => Eval(x, s)).ToList());
                return t.Negated ? !r : r;
            }
            case Unary u:
            {
                var v = Eval(u.E, s);
                return u.Op switch
                {
                    "not" => !Truthy(v),
                    _ => v switch
                    {
                        long x => (object)(-x),
                        double x => (object)(-x),
                        bool x => (object)(-(x ? 1L : 0L)),
                        _ => throw Err(u, $"bad operand for unary -: {TypeName(v)}"),
                    },
                };
            }
            case Binary b:
            {
                if (b.Op == "and") { var a = Eval(b.A, s); return !Truthy(a) ? a : Eval(b.B, s); }
                if (b.Op == "or") { var a = Eval(b.A, s); return Truthy(a) ? a : Eval(b.B, s); }
                return BinOp(b, Eval(b.A, s), Eval(b.B, s));
            }
            case CondExpr ce:
                return Truthy(Eval(ce.Cond, s)) ? Eval(ce.Then, s) : ce.Else is null ? UndefinedValue.I : Eval(ce.Else, s);
        }
        throw Err(e, "unsupported expression");
    }

    /// <summary>For `is defined`: an undefined base of an attribute chain is undefined, not an error.</summary>
    private static object? EvalSafe(Expr e, Scope s)
    {
        try { return Eval(e, s); }
        catch (ChatTemplateException) when (e is GetAttr or GetItem) { return UndefinedValue.I; }
    }

    private static IEnumerable<int> SliceIdx(int n, long? a, long? b, long st)
    {
        long Norm(long x, long lo, long hi) { if (x < 0) x += n; return Math.Clamp(x, lo, hi); }
        if (st > 0)
        {
            long start = a is null ? 0 : Norm(a.Value, 0, n), stop = b is null ? n : Norm(b.Value, 0, n);
            for (long i = start; i < stop; i += st) yield return (int)i;
        }
        else
        {
            long start = a is null ? n - 1 : Norm(a.Value, -1, n - 1), stop = b is null ? -1 : Norm(b.Value, -1, n - 1);
            for (long i = start; i > stop; i += st) yield return (int)i;
        }
    }

    private static string Describe(Expr e) => e switch
    {
        Name n => n.Id,
        GetAttr g => Describe(g.Obj) + "." + g.Attr,
        GetItem g => Describe(g.Obj) + "[" + (g.Key is Lit { Value: var v } ? Repr(v) : "...") + "]",
        _ => "expression",
    };

    /// <summary>The Python string methods chat templates call (str.strip, dict.items, ...), bound to <paramref name="o"/>.</summary>
    private static Callable? Method(object? o, string name)
    {
        switch (o)
        {
            case string s:
                string? Chars(List<object?> a) => a.Count > 0 && a[0] is string c ? c : null;
                return name switch
                {
                    "strip" => new(name, (a, _) => Chars(a) is { } c ? s.Trim(c.ToCharArray()) : s.Trim()),
                    "lstrip" => new(name, (a, _) => Chars(a) is { } c ? s.TrimStart(c.ToCharArray()) : s.TrimStart()),
                    "rstrip" => new(name, (a, _) => Chars(a) is { } c ? s.TrimEnd(c.ToCharArray()) : s.TrimEnd()),
                    "upper" => new(name, (_, _) => s.ToUpperInvariant()),
                    "lower" => new(name, (_, _) => s.ToLowerInvariant()),
                    "title" => new(name, (_, _) => CultureInfo.InvariantCulture.TextInfo.ToTitleCase(s.ToLowerInvariant())),
                    "startswith" => new(name, (a, _) => s.StartsWith(Str(a[0]), StringComparison.Ordinal)),
                    "endswith" => new(name, (a, _) => s.EndsWith(Str(a[0]), StringComparison.Ordinal)),
                    "replace" => new(name, (a, _) => s.Replace(Str(a[0]), Str(a[1]), StringComparison.Ordinal)),
                    "split" => new(name, (a, _) => (a.Count > 0 && a[0] is string sep
                        ? s.Split(sep)
                        : s.Split((char[]?)null, StringSplitOptions.RemoveEmptyEntries)).Select(x => (object?)x).ToList()),
                    "format" => null,
                    _ => null,
                };
            case Dictionary<string, object?> d:
                return name switch
                {
                    "items" => new(name, (_, _) => d.Select(kv => (object?)new List<object?> { kv.Key, kv.Value }).ToList()),
                    "keys" => new(name, (_, _) => d.Keys.Select(k => (object?)k).ToList()),
                    "values" => new(name, (_, _) => d.Values.ToList()),
                    "get" => new(name, (a, _) => d.TryGetValue(Str(a[0]), out var v) ? v : a.Count > 1 ? a[1] : null),
                    _ => null,
                };
            default:
                return null;
        }
    }

    private static object? ApplyFilter(Filter f, object? v, List<object?> a, Dictionary<string, object?> kw)
    {
        switch (f.Name)
        {
            case "trim": return Str(v).Trim();
            case "length" or "count":
                return v switch
                {
                    string s => (long)s.Length,
                    List<object?> l => (long)l.Count,
                    Dictionary<string, object?> d => (long)d.Count,
                    UndefinedValue => 0L,
                    _ => throw Err(f, $"{TypeName(v)} has no length"),
                };
            case "upper": return Str(v).ToUpperInvariant();
            case "lower": return Str(v).ToLowerInvariant();
            case "capitalize": { var s = Str(v); return s.Length == 0 ? s : char.ToUpperInvariant(s[0]) + s[1..].ToLowerInvariant(); }
            case "string": return Str(v);
            case "int": return v switch { long x => x, double x => (long)x, bool x => x ? 1L : 0L, string s when long.TryParse(s.Trim(), out var x) => x, _ => a.Count > 0 ? a[0] : 0L };
            case "float": return v switch { long x => (double)x, double x => x, string s when double.TryParse(s.Trim(), CultureInfo.InvariantCulture, out var x) => x, _ => 0.0 };
            case "default" or "d":
            {
                bool boolean = (a.Count > 1 && Truthy(a[1])) || (kw.TryGetValue("boolean", out var bv) && Truthy(bv));
                object? dflt = a.Count > 0 ? a[0] : kw.TryGetValue("default_value", out var dv) ? dv : "";
                return v is UndefinedValue || (boolean && !Truthy(v)) ? dflt : v;
            }
            case "first": return v is List<object?> { Count: > 0 } l1 ? l1[0] : v is string { Length: > 0 } s1 ? s1[0].ToString() : UndefinedValue.I;
            case "last": return v is List<object?> { Count: > 0 } l2 ? l2[^1] : v is string { Length: > 0 } s2 ? s2[^1].ToString() : UndefinedValue.I;
            case "list": return Iterate(v, f.Line, f.Col).ToList();
            case "reverse": return v is string rs ? new string(rs.Reverse().ToArray()) : Iterate(v, f.Line, f.Col).Reverse().ToList();
            case "join":
            {
                string sep = a.Count > 0 ? Str(a[0]) : "";
                return string.Join(sep, Iterate(v, f.Line, f.Col).Select(Str));
            }
            case "replace": return Str(v).Replace(Str(a[0]), Str(a[1]), StringComparison.Ordinal);
            case "tojson": return ToJson(v, kw.TryGetValue("indent", out var ind) && ind is long n ? (int)n : null, 0);
            case "safe" or "e" or "escape" when f.Name == "safe": return v;
            case "items": return v is Dictionary<string, object?> dm ? dm.Select(kv => (object?)new List<object?> { kv.Key, kv.Value }).ToList() : throw Err(f, "items needs a mapping");
            default: throw Err(f, $"unknown filter '{f.Name}'");
        }
    }

    private static bool ApplyTest(Test t, object? v, List<object?> a) => t.Name switch
    {
        "defined" => v is not UndefinedValue,
        "undefined" => v is UndefinedValue,
        "none" => v is null,
        "string" => v is string,
        "number" => v is long or double,
        "integer" => v is long,
        "float" => v is double,
        "boolean" => v is bool,
        "true" => v is true,
        "false" => v is false,
        "mapping" => v is Dictionary<string, object?>,
        "sequence" or "iterable" => v is List<object?> or string or Dictionary<string, object?>,
        "even" => ToLong(v) % 2 == 0,
        "odd" => ToLong(v) % 2 != 0,
        "divisibleby" => ToLong(v) % ToLong(a[0]) == 0,
        "eq" or "equalto" or "==" => PyEquals(v, a[0]),
        "ne" or "!=" => !PyEquals(v, a[0]),
        "in" => Contains(a[0], v, t),
        _ => throw Err(t, $"unknown test '{t.Name}'"),
    };

    private static object? BinOp(Binary b, object? x, object? y)
    {
        switch (b.Op)
        {
            case "==": return PyEquals(x, y);
            case "!=": return !PyEquals(x, y);
            case "<" or ">" or "<=" or ">=":
            {
                int c = Compare(b, x, y);
                return b.Op switch { "<" => c < 0, ">" => c > 0, "<=" => c <= 0, _ => c >= 0 };
            }
            case "in": return Contains(y, x, b);
            case "not in": return !Contains(y, x, b);
            case "~": return Str(x) + Str(y);
            case "+":
                if (x is string xs && y is string ys) return xs + ys;
                if (x is List<object?> xl && y is List<object?> yl) return xl.Concat(yl).ToList();
                if (x is UndefinedValue && y is string) throw Err(b, "cannot add an undefined value and a string");
                return Arith(b, x, y);
            case "*" when x is string rep && IsInt(y): return string.Concat(Enumerable.Repeat(rep, (int)Math.Max(0, ToLong(y))));
            case "*" when x is List<object?> rl && IsInt(y): return Enumerable.Repeat(rl, (int)Math.Max(0, ToLong(y))).SelectMany(z => z).ToList();
            default: return Arith(b, x, y);
        }
    }

    private static bool IsInt(object? v) => v is long or bool;
    private static bool IsNum(object? v) => v is long or double or bool;

    private static object? Arith(Binary b, object? x, object? y)
    {
        if (!IsNum(x) || !IsNum(y)) throw Err(b, $"unsupported operand types for {b.Op}: {TypeName(x)} and {TypeName(y)}");
        if (b.Op == "/") return ToDouble(x) / Denominator(b, ToDouble(y));
        if (IsInt(x) && IsInt(y))
        {
            long p = ToLong(x), q = ToLong(y);
            switch (b.Op)
            {
                case "+": return p + q;
                case "-": return p - q;
                case "*": return p * q;
                case "//": { if (q == 0) throw Err(b, "integer division by zero"); long d = p / q; if ((p % q != 0) && ((p < 0) != (q < 0))) d--; return d; }
                case "%": { if (q == 0) throw Err(b, "integer modulo by zero"); long m = p % q; if (m != 0 && ((m < 0) != (q < 0))) m += q; return m; }
                case "**": return q >= 0 ? (object)(long)Math.Pow(p, q) : Math.Pow(p, q);
            }
        }
        double u = ToDouble(x), v = ToDouble(y);
        return b.Op switch
        {
            "+" => u + v,
            "-" => u - v,
            "*" => u * v,
            "//" => Math.Floor(u / Denominator(b, v)),
            "%" => u - Math.Floor(u / Denominator(b, v)) * v,
            "**" => Math.Pow(u, v),
            _ => throw Err(b, $"unsupported operator {b.Op}"),
        };
    }

    private static double Denominator(Binary b, double v) => v == 0 ? throw Err(b, "division by zero") : v;

    private static int Compare(Binary b, object? x, object? y)
    {
        if (IsNum(x) && IsNum(y)) return ToDouble(x).CompareTo(ToDouble(y));
        if (x is string xs && y is string ys) return string.CompareOrdinal(xs, ys);
        throw Err(b, $"'{b.Op}' not supported between {TypeName(x)} and {TypeName(y)}");
    }

    private static bool Contains(object? container, object? item, Expr at) => container switch
    {
        string s => item is string i ? s.Contains(i, StringComparison.Ordinal) : throw Err(at, $"'in <string>' requires a string, not {TypeName(item)}"),
        List<object?> l => l.Any(x => PyEquals(x, item)),
        Dictionary<string, object?> d => item is string k && d.ContainsKey(k),
        UndefinedValue => throw Err(at, "'in' on an undefined value"),
        _ => throw Err(at, $"argument of type {TypeName(container)} is not iterable"),
    };

    private static bool PyEquals(object? x, object? y)
    {
        if (x is UndefinedValue || y is UndefinedValue) return x is UndefinedValue && y is UndefinedValue;
        if (IsNum(x) && IsNum(y)) return ToDouble(x) == ToDouble(y);
        if (x is List<object?> a && y is List<object?> b) return a.Count == b.Count && a.Zip(b).All(p => PyEquals(p.First, p.Second));
        if (x is Dictionary<string, object?> da && y is Dictionary<string, object?> db)
            return da.Count == db.Count && da.All(kv => db.TryGetValue(kv.Key, out var v) && PyEquals(kv.Value, v));
        return Equals(x, y);
    }

    private static long ToLong(object? v) => v switch
    {
        long x => x,
        bool x => x ? 1 : 0,
        double x => (long)x,
        _ => throw new ChatTemplateException($"chat template: expected an integer, got {TypeName(v)}"),
    };

    private static double ToDouble(object? v) => v switch
    {
        long x => x,
        double x => x,
        bool x => x ? 1 : 0,
        _ => throw new ChatTemplateException($"chat template: expected a number, got {TypeName(v)}"),
    };

    private static bool Truthy(object? v) => v switch
    {
        null => false,
        UndefinedValue => false,
        bool b => b,
        long x => x != 0,
        double x => x != 0,
        string s => s.Length > 0,
        List<object?> l => l.Count > 0,
        Dictionary<string, object?> d => d.Count > 0,
        _ => true,
    };

    private static string TypeName(object? v) => v switch
    {
        null => "None",
        UndefinedValue => "undefined",
        bool => "bool",
        long => "int",
        double => "float",
        string => "str",
        List<object?> => "list",
        Namespace => "namespace",
        Dictionary<string, object?> => "dict",
        Callable => "function",
        _ => v.GetType().Name,
    };

    /// <summary>Python str(): what {{ }} prints.</summary>
    private static string Str(object? v) => v switch
    {
        string s => s,
        UndefinedValue => "",
        _ => Repr(v),
    };

    /// <summary>Python repr(), as str() of containers prints their items.</summary>
    private static string Repr(object? v) => v switch
    {
        null => "None",
        UndefinedValue => "",
        bool b => b ? "True" : "False",
        long x => x.ToString(CultureInfo.InvariantCulture),
        double x => FloatRepr(x),
        string s => PyStrRepr(s),
        List<object?> l => "[" + string.Join(", ", l.Select(Repr)) + "]",
        Namespace ns => "<Namespace " + string.Join(", ", ns.Select(kv => $"{PyStrRepr(kv.Key)}: {Repr(kv.Value)}")) + ">",
        Dictionary<string, object?> d => "{" + string.Join(", ", d.Select(kv => $"{PyStrRepr(kv.Key)}: {Repr(kv.Value)}")) + "}",
        Callable c => $"<function {c.Name}>",
        _ => v.ToString() ?? "",
    };

    private static string FloatRepr(double x)
    {
        if (double.IsNaN(x)) return "nan";
        if (double.IsInfinity(x)) return x > 0 ? "inf" : "-inf";
        string r = x.ToString("R", CultureInfo.InvariantCulture);
        if (r.Contains('E'))
        {
            // Python: 1e-05, 1e+16
            var parts = r.Split('E');
            int exp = int.Parse(parts[1], CultureInfo.InvariantCulture);
            return parts[0] + "e" + (exp < 0 ? "-" : "+") + Math.Abs(exp).ToString("D2", CultureInfo.InvariantCulture);
        }
        return r.Contains('.') ? r : r + ".0";
    }

    private static string PyStrRepr(string s)
    {
        char q = s.Contains('\'') && !s.Contains('"') ? '"' : '\'';
        var sb = new StringBuilder().Append(q);
        foreach (char ch in s)
        {
            switch (ch)
            {
                case '\\': sb.Append("\\\\"); break;
                case '\n': sb.Append("\\n"); break;
                case '\r': sb.Append("\\r"); break;
                case '\t': sb.Append("\\t"); break;
                default:
                    if (ch == q) sb.Append('\\').Append(ch);
                    else if (ch < 0x20 || ch == 0x7f) sb.Append($"\\x{(int)ch:x2}");
                    else sb.Append(ch);
                    break;
            }
        }
        return sb.Append(q).ToString();
    }

    /// <summary>Jinja's tojson: json.dumps with sorted keys, then HTML-safe escapes of &lt; &gt; &amp; '.</summary>
    private static string ToJson(object? v, int? indent, int depth)
    {
        string Nl(int d) => indent is null ? "" : "\n" + new string(' ', indent.Value * d);
        string sep = indent is null ? ", " : ",";
        switch (v)
        {
            case null or UndefinedValue: return "null";
            case bool b: return b ? "true" : "false";
            case long x: return x.ToString(CultureInfo.InvariantCulture);
            case double x: return FloatRepr(x);
            case string s: return JsonString(s);
            case List<object?> l:
                if (l.Count == 0) return "[]";
                return "[" + string.Join(sep, l.Select(x => Nl(depth + 1) + ToJson(x, indent, depth + 1))) + Nl(depth) + "]";
            case Dictionary<string, object?> d:
                if (d.Count == 0) return "{}";
                return "{" + string.Join(sep, d.OrderBy(kv => kv.Key, StringComparer.Ordinal)
                    .Select(kv => Nl(depth + 1) + JsonString(kv.Key) + ": " + ToJson(kv.Value, indent, depth + 1))) + Nl(depth) + "}";
            default: throw new ChatTemplateException($"chat template: {TypeName(v)} is not JSON serializable");
        }
    }

    private static string JsonString(string s)
    {
        var sb = new StringBuilder("\"");
        foreach (char ch in s)
        {
            switch (ch)
            {
                case '"': sb.Append("\\\""); break;
                case '\\': sb.Append("\\\\"); break;
                case '\n': sb.Append("\\n"); break;
                case '\r': sb.Append("\\r"); break;
                case '\t': sb.Append("\\t"); break;
                case '\b': sb.Append("\\b"); break;
                case '\f': sb.Append("\\f"); break;
                case '<': sb.Append("\\u003c"); break;
                case '>': sb.Append("\\u003e"); break;
                case '&': sb.Append("\\u0026"); break;
                case '\'': sb.Append("\\u0027"); break;
                default:
                    if (ch < 0x20 || ch > 0x7e) sb.Append($"\\u{(int)ch:x4}");
                    else sb.Append(ch);
                    break;
            }
        }
        return sb.Append('"').ToString();
    }
}
