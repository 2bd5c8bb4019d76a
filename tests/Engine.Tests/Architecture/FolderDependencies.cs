// Which folders of src/Engine use which. The graph is read from the compiled ReaLNative.Engine
// assembly with System.Reflection.Metadata, not from source text: base types, interfaces, generic
// constraints, field/property/event/method signatures, attributes, locals, catch types and every
// type, field and method token in method bodies count, so a nested name (Op, Kind) cannot be
// mistaken for another folder's type and a `var` or a call through an extension method is still
// seen. A type's folder is its namespace (ArchitectureTests checks that namespaces match folders);
// the portable PDB beside the assembly names the file of each edge.
using System.Reflection;
using System.Reflection.Emit;
using System.Reflection.Metadata;
using System.Reflection.Metadata.Ecma335;
using System.Reflection.PortableExecutable;

namespace ReaLNative.Engine.Tests.Architecture;

/// <summary>One reason for a folder edge: in <paramref name="File"/>, <paramref name="What"/>
/// ("A.B.Type uses C.D.Other", or a using directive).</summary>
internal sealed record EdgeEvidence(string File, string What)
{
    public override string ToString() => $"{File}: {What}";
}

/// <summary>A directed graph of folders whose edges carry the type uses that make them.</summary>
internal sealed class FolderGraph
{
    readonly SortedDictionary<string, SortedDictionary<string, List<EdgeEvidence>>> _edges = new(StringComparer.Ordinal);

    public IEnumerable<string> Folders => _edges.Keys;

    public void AddFolder(string folder)
    {
        if (!_edges.ContainsKey(folder)) _edges[folder] = new(StringComparer.Ordinal);
    }

    public void AddEdge(string from, string to, EdgeEvidence evidence)
    {
        if (from == to) return;
        AddFolder(from);
        AddFolder(to);
        if (!_edges[from].TryGetValue(to, out var list)) _edges[from][to] = list = [];
        if (!list.Contains(evidence)) list.Add(evidence);
    }

    public IEnumerable<string> Targets(string from) =>
        _edges.TryGetValue(from, out var targets) ? targets.Keys : [];

    public IReadOnlyList<EdgeEvidence> Evidence(string from, string to) =>
        _edges.TryGetValue(from, out var targets) && targets.TryGetValue(to, out var list) ? list : [];

    public IEnumerable<(string From, string To)> Edges =>
        _edges.SelectMany(e => e.Value.Keys.Select(to => (e.Key, to)));

    /// <summary>One cycle per strongly connected component of more than one folder, as the folder
    /// path from its alphabetically first folder back to itself (first element repeated last).</summary>
    public IReadOnlyList<IReadOnlyList<string>> Cycles()
    {
        var cycles = new List<IReadOnlyList<string>>();
        foreach (var component in StronglyConnectedComponents().Where(c => c.Count > 1))
        {
            var start = component.Min(StringComparer.Ordinal)!;
            cycles.Add(ShortestCycle(start, component));
        }
        return cycles;
    }

    /// <summary>"A -> B -> A" followed by, for each edge, the files and types that make it.</summary>
    public string Describe(IReadOnlyList<string> cycle, int evidencePerEdge = 4)
    {
        var lines = new List<string> { string.Join(" -> ", cycle) };
        for (int i = 0; i + 1 < cycle.Count; i++)
        {
            var evidence = Evidence(cycle[i], cycle[i + 1]);
            lines.Add($"  {cycle[i]} -> {cycle[i + 1]}:");
            lines.AddRange(evidence.Take(evidencePerEdge).Select(e => "    " + e));
            if (evidence.Count > evidencePerEdge) lines.Add($"    ... and {evidence.Count - evidencePerEdge} more");
        }
        return string.Join('\n', lines);
    }

    /// <summary>Every edge that does not point to a strictly lower layer of <paramref name="layers"/>
    /// (bottom first), each with its evidence, and every folder no layer names.</summary>
    public IReadOnlyList<string> LayerViolations(IReadOnlyList<string[]> layers, int evidencePerEdge = 4)
    {
        var layerOf = new Dictionary<string, int>(StringComparer.Ordinal);
        for (int i = 0; i < layers.Count; i++)
            foreach (var folder in layers[i]) layerOf[folder] = i;
        var problems = new List<string>();
        foreach (var folder in Folders.Where(f => !layerOf.ContainsKey(f)))
            problems.Add($"{folder} is in no layer: add it to the intended layering (ArchitectureTests.Layers and README)");
        foreach (var (from, to) in Edges)
        {
            if (!layerOf.TryGetValue(from, out int a) || !layerOf.TryGetValue(to, out int b) || b < a) continue;
            var evidence = Evidence(from, to);
            problems.Add($"{from} (layer {a}) -> {to} (layer {b}) does not point down:\n"
                         + string.Join('\n', evidence.Take(evidencePerEdge).Select(e => "    " + e))
                         + (evidence.Count > evidencePerEdge ? $"\n    ... and {evidence.Count - evidencePerEdge} more" : ""));
        }
        return problems;
    }

    // Tarjan's algorithm, iterative over the (small) folder set.
    List<HashSet<string>> StronglyConnectedComponents()
    {
        var index = new Dictionary<string, int>();
        var low = new Dictionary<string, int>();
        var onStack = new HashSet<string>();
        var stack = new Stack<string>();
        var components = new List<HashSet<string>>();
        int next = 0;

        void Visit(string v)
        {
            index[v] = low[v] = next++;
            stack.Push(v);
            onStack.Add(v);
            foreach (var w in Targets(v))
            {
                if (!index.ContainsKey(w))
                {
                    Visit(w);
                    low[v] = Math.Min(low[v], low[w]);
                }
                else if (onStack.Contains(w)) low[v] = Math.Min(low[v], index[w]);
            }
            if (low[v] != index[v]) return;
            var component = new HashSet<string>(StringComparer.Ordinal);
            string popped;
            do
            {
                popped = stack.Pop();
                onStack.Remove(popped);
                component.Add(popped);
            } while (popped != v);
            components.Add(component);
        }

        foreach (var folder in Folders.ToList())
            if (!index.ContainsKey(folder)) Visit(folder);
        return components;
    }

    // Breadth-first from start's successors inside the component until start is reached again.
    List<string> ShortestCycle(string start, HashSet<string> component)
    {
        var previous = new Dictionary<string, string>();
        var queue = new Queue<string>();
        foreach (var w in Targets(start).Where(component.Contains))
        {
            if (w == start) continue;
            if (previous.TryAdd(w, start)) queue.Enqueue(w);
        }
        while (queue.Count > 0)
        {
            var v = queue.Dequeue();
            foreach (var w in Targets(v).Where(component.Contains))
            {
                if (w == start)
                {
                    var path = new List<string> { start };
                    for (var at = v; at != start; at = previous[at]) path.Add(at);
                    path.Add(start);
                    path.Reverse();
                    return path;
                }
                if (previous.TryAdd(w, v)) queue.Enqueue(w);
            }
        }
        throw new InvalidOperationException($"no cycle through {start} in its own strongly connected component");
    }
}

/// <summary>Reads an assembly's type uses and folds them into a <see cref="FolderGraph"/>.</summary>
internal static class AssemblyFolderScanner
{
    /// <param name="folderOf">The folder of a top-level type from its namespace and its source file
    /// (repository-relative where the PDB knows it, else null); null leaves the type out of the graph
    /// (compiler-generated types, the assembly's root namespace).</param>
    public static FolderGraph Scan(string assemblyPath, Func<string, string?, string?> folderOf)
    {
        using var peStream = File.OpenRead(assemblyPath);
        using var pe = new PEReader(peStream);
        var md = pe.GetMetadataReader();
        var pdbPath = Path.ChangeExtension(assemblyPath, ".pdb");
        using var pdbProvider = File.Exists(pdbPath)
            ? MetadataReaderProvider.FromPortablePdbStream(File.OpenRead(pdbPath)) : null;
        var pdb = pdbProvider?.GetMetadataReader();

        var graph = new FolderGraph();
        var collector = new TypeUseCollector(md);
        var folders = new Dictionary<TypeDefinitionHandle, string?>();
        string? FolderOfType(TypeDefinitionHandle handle)
        {
            var outer = Outermost(md, handle);
            if (!folders.TryGetValue(outer, out var folder))
                folders[outer] = folder = folderOf(md.GetString(md.GetTypeDefinition(outer).Namespace), TypeFile(md, pdb, outer));
            return folder;
        }

        foreach (var typeHandle in md.TypeDefinitions)
        {
            var outer = Outermost(md, typeHandle);
            var from = FolderOfType(outer);
            if (from is null) continue;
            graph.AddFolder(from);
            var fromName = FullName(md, outer);
            var typeFile = TypeFile(md, pdb, typeHandle) ?? TypeFile(md, pdb, outer) ?? fromName;

            void Record(string? file)
            {
                foreach (var used in collector.Found)
                {
                    var to = FolderOfType(used);
                    if (to is not null && to != from)
                        graph.AddEdge(from, to, new EdgeEvidence(file ?? typeFile, $"{fromName} uses {FullName(md, used)}"));
                }
                collector.Found.Clear();
            }

            var type = md.GetTypeDefinition(typeHandle);
            collector.Entity(type.BaseType);
            foreach (var i in type.GetInterfaceImplementations()) collector.Entity(md.GetInterfaceImplementation(i).Interface);
            collector.Constraints(type.GetGenericParameters());
            collector.Attributes(type.GetCustomAttributes());
            foreach (var f in type.GetFields())
            {
                var field = md.GetFieldDefinition(f);
                field.DecodeSignature(collector, null);
                collector.Attributes(field.GetCustomAttributes());
            }
            foreach (var p in type.GetProperties())
            {
                var property = md.GetPropertyDefinition(p);
                property.DecodeSignature(collector, null);
                collector.Attributes(property.GetCustomAttributes());
            }
            foreach (var e in type.GetEvents()) collector.Entity(md.GetEventDefinition(e).Type);
            Record(null);

            foreach (var m in type.GetMethods())
            {
                var method = md.GetMethodDefinition(m);
                method.DecodeSignature(collector, null);
                collector.Constraints(method.GetGenericParameters());
                collector.Attributes(method.GetCustomAttributes());
                foreach (var p in method.GetParameters()) collector.Attributes(md.GetParameter(p).GetCustomAttributes());
                if (method.RelativeVirtualAddress != 0)
                    collector.Body(pe.GetMethodBody(method.RelativeVirtualAddress));
                Record(MethodFile(pdb, m));
            }
        }
        return graph;
    }

    static TypeDefinitionHandle Outermost(MetadataReader md, TypeDefinitionHandle handle)
    {
        while (true)
        {
            var declaring = md.GetTypeDefinition(handle).GetDeclaringType();
            if (declaring.IsNil) return handle;
            handle = declaring;
        }
    }

    static string FullName(MetadataReader md, TypeDefinitionHandle handle)
    {
        var type = md.GetTypeDefinition(handle);
        var name = md.GetString(type.Name);
        var declaring = type.GetDeclaringType();
        if (!declaring.IsNil) return FullName(md, declaring) + "." + name;
        var ns = md.GetString(type.Namespace);
        return ns.Length == 0 ? name : ns + "." + name;
    }

    static string? MethodFile(MetadataReader? pdb, MethodDefinitionHandle method)
    {
        if (pdb is null) return null;
        var info = pdb.GetMethodDebugInformation(method.ToDebugInformationHandle());
        var document = info.Document;
        if (document.IsNil)
        {
            if (info.SequencePointsBlob.IsNil) return null;
            document = info.GetSequencePoints().Select(s => s.Document).FirstOrDefault();
            if (document.IsNil) return null;
        }
        return DocumentPath(pdb, document);
    }

    // Repository-relative where the path runs through src/ or tests/ (the build's absolute path otherwise).
    static string DocumentPath(MetadataReader pdb, DocumentHandle document)
    {
        var path = pdb.GetString(pdb.GetDocument(document).Name).Replace('\\', '/');
        foreach (var top in new[] { "/src/", "/tests/" })
        {
            int at = path.LastIndexOf(top, StringComparison.Ordinal);
            if (at >= 0) return path[(at + 1)..];
        }
        return path;
    }

    // Roslyn's record of the documents of a type that has no method with sequence points
    // (interfaces, enums, records of fields only): a list of compressed document row numbers.
    static readonly Guid TypeDefinitionDocuments = new("932E74BC-DBA9-4478-8D46-0F32A7BAB3D3");

    // The file of a type: that of its first method the PDB places, its nested types' included,
    // else the type's own document record.
    static string? TypeFile(MetadataReader md, MetadataReader? pdb, TypeDefinitionHandle handle)
    {
        if (pdb is null) return null;
        var type = md.GetTypeDefinition(handle);
        foreach (var m in type.GetMethods())
            if (MethodFile(pdb, m) is { } file) return file;
        foreach (var nested in type.GetNestedTypes())
            if (TypeFile(md, pdb, nested) is { } file) return file;
        foreach (var c in pdb.GetCustomDebugInformation(handle))
        {
            var info = pdb.GetCustomDebugInformation(c);
            if (pdb.GetGuid(info.Kind) != TypeDefinitionDocuments) continue;
            var blob = pdb.GetBlobReader(info.Value);
            if (blob.RemainingBytes > 0) return DocumentPath(pdb, MetadataTokens.DocumentHandle(blob.ReadCompressedInteger()));
        }
        return null;
    }

    /// <summary>Adds every type definition of this assembly that a signature, token or attribute
    /// names to <see cref="Found"/>; types of other assemblies are not part of the graph.</summary>
    sealed class TypeUseCollector(MetadataReader md) : ISignatureTypeProvider<int, object?>
    {
        public readonly HashSet<TypeDefinitionHandle> Found = [];

        static readonly Dictionary<short, OperandType> OperandTypes = typeof(OpCodes)
            .GetFields(BindingFlags.Public | BindingFlags.Static)
            .Select(f => (OpCode)f.GetValue(null)!)
            .ToDictionary(o => o.Value, o => o.OperandType);

        public void Entity(EntityHandle handle)
        {
            if (handle.IsNil) return;
            switch (handle.Kind)
            {
                case HandleKind.TypeDefinition:
                    Found.Add((TypeDefinitionHandle)handle);
                    break;
                case HandleKind.TypeSpecification:
                    md.GetTypeSpecification((TypeSpecificationHandle)handle).DecodeSignature(this, null);
                    break;
                case HandleKind.MethodDefinition:
                    Found.Add(md.GetMethodDefinition((MethodDefinitionHandle)handle).GetDeclaringType());
                    break;
                case HandleKind.FieldDefinition:
                    Found.Add(md.GetFieldDefinition((FieldDefinitionHandle)handle).GetDeclaringType());
                    break;
                case HandleKind.MemberReference:
                    Entity(md.GetMemberReference((MemberReferenceHandle)handle).Parent);
                    break;
                case HandleKind.MethodSpecification:
                    var spec = md.GetMethodSpecification((MethodSpecificationHandle)handle);
                    Entity(spec.Method);
                    spec.DecodeSignature(this, null);
                    break;
                case HandleKind.StandaloneSignature:
                    var standalone = md.GetStandaloneSignature((StandaloneSignatureHandle)handle);
                    if (standalone.GetKind() == StandaloneSignatureKind.Method) standalone.DecodeMethodSignature(this, null);
                    else standalone.DecodeLocalSignature(this, null);
                    break;
            }
        }

        public void Constraints(GenericParameterHandleCollection parameters)
        {
            foreach (var p in parameters)
                foreach (var c in md.GetGenericParameter(p).GetConstraints())
                    Entity(md.GetGenericParameterConstraint(c).Type);
        }

        public void Attributes(CustomAttributeHandleCollection attributes)
        {
            foreach (var a in attributes) Entity(md.GetCustomAttribute(a).Constructor);
        }

        public void Body(MethodBodyBlock body)
        {
            if (!body.LocalSignature.IsNil) Entity(body.LocalSignature);
            foreach (var region in body.ExceptionRegions) Entity(region.CatchType);
            var il = body.GetILReader();
            while (il.RemainingBytes > 0)
            {
                byte first = il.ReadByte();
                short code = first == 0xFE ? unchecked((short)(0xFE00 | il.ReadByte())) : first;
                if (!OperandTypes.TryGetValue(code, out var operand))
                    throw new BadImageFormatException($"unknown IL opcode 0x{(ushort)code:X}");
                switch (operand)
                {
                    case OperandType.InlineNone: break;
                    case OperandType.ShortInlineBrTarget or OperandType.ShortInlineI or OperandType.ShortInlineVar:
                        il.ReadByte(); break;
                    case OperandType.InlineVar: il.ReadInt16(); break;
                    case OperandType.InlineI8 or OperandType.InlineR: il.ReadInt64(); break;
                    case OperandType.InlineSwitch:
                        int targets = il.ReadInt32();
                        for (int i = 0; i < targets; i++) il.ReadInt32();
                        break;
                    case OperandType.InlineField or OperandType.InlineMethod or OperandType.InlineTok
                        or OperandType.InlineType or OperandType.InlineSig:
                        Entity(MetadataTokens.EntityHandle(il.ReadInt32()));
                        break;
                    default: il.ReadInt32(); break; // InlineBrTarget, InlineI, InlineString, ShortInlineR
                }
            }
        }

        public int GetTypeFromDefinition(MetadataReader reader, TypeDefinitionHandle handle, byte rawTypeKind)
        {
            Found.Add(handle);
            return 0;
        }

        public int GetTypeFromSpecification(MetadataReader reader, object? context, TypeSpecificationHandle handle, byte rawTypeKind)
        {
            reader.GetTypeSpecification(handle).DecodeSignature(this, context);
            return 0;
        }

        public int GetTypeFromReference(MetadataReader reader, TypeReferenceHandle handle, byte rawTypeKind) => 0;
        public int GetPrimitiveType(PrimitiveTypeCode typeCode) => 0;
        public int GetSZArrayType(int elementType) => 0;
        public int GetArrayType(int elementType, ArrayShape shape) => 0;
        public int GetByReferenceType(int elementType) => 0;
        public int GetPointerType(int elementType) => 0;
        public int GetPinnedType(int elementType) => 0;
        public int GetGenericInstantiation(int genericType, System.Collections.Immutable.ImmutableArray<int> typeArguments) => 0;
        public int GetGenericMethodParameter(object? context, int index) => 0;
        public int GetGenericTypeParameter(object? context, int index) => 0;
        public int GetModifiedType(int modifier, int unmodifiedType, bool isRequired) => 0;
        public int GetFunctionPointerType(MethodSignature<int> signature) => 0;
    }
}

/// <summary>Edges the compiled code cannot show: a constant is copied into its user's IL, so a file
/// that only reads another folder's <c>const</c> leaves no trace in metadata; its using directive (or
/// a fully qualified name) does. Each <c>using ReaLNative.Engine.X</c> or <c>ReaLNative.Engine.X.</c>
/// in a file of folder F is an edge F -> X.</summary>
internal static class SourceUsingScanner
{
    static readonly System.Text.RegularExpressions.Regex EngineName = new(
        @"(?<![\w.])(?:global::)?ReaLNative\.Engine\.(?<folder>[A-Z]\w*)(?=[.;\s])", System.Text.RegularExpressions.RegexOptions.Compiled);

    public static void AddTo(FolderGraph graph, string repoRoot, string sourceDirectory, Func<string, string?> folderOfFile)
    {
        foreach (var path in Directory.EnumerateFiles(Path.Combine(repoRoot, sourceDirectory), "*.cs", SearchOption.AllDirectories))
        {
            var relative = Path.GetRelativePath(repoRoot, path).Replace('\\', '/');
            if (relative.Contains("/obj/") || relative.Contains("/bin/")) continue;
            var from = folderOfFile(relative);
            if (from is null) continue;
            int lineNumber = 0;
            foreach (var line in File.ReadLines(path))
            {
                lineNumber++;
                var code = line.TrimStart();
                if (code.StartsWith("//", StringComparison.Ordinal) || code.StartsWith("namespace ", StringComparison.Ordinal)) continue;
                foreach (System.Text.RegularExpressions.Match m in EngineName.Matches(line))
                {
                    var to = m.Groups["folder"].Value;
                    if (to != from) graph.AddEdge(from, to, new EdgeEvidence($"{relative}:{lineNumber}", code.Trim()));
                }
            }
        }
    }
}
