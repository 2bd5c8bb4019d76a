#!/usr/bin/python3
"""Generates blittable C# bindings for UCX's UCP API from the INSTALLED headers with libclang.

    tools/BindGen/regen.sh            # writes src/Interop/Ucx/Ucp.gen.cs
    tools/BindGen/bindgen.py --check  # exit 1 if the committed file differs from a fresh run

What is emitted, all in namespace ReaLNative.Interop.Ucx:
  * every enum reachable from the ucp_* API (and ucs_status_t) as a C# enum with the underlying type
    that holds its values;
  * every struct reachable by value from the API as [StructLayout(LayoutKind.Explicit, Size = N)]
    with [FieldOffset] taken from libclang's record layout, so unions, anonymous members and
    padding match the C ABI by construction (nested anonymous records are flattened, fixed arrays
    become fixed buffers, function pointers and handles become nint);
  * every exported ucp_* function (and ucs_status_string) as a [LibraryImport] declaration, the
    library name "ucp" / "ucs" resolved by ReaLNative.Interop's NativeLibraryResolver. Static
    inline functions (ucp_init) and variadic ones are skipped; UcpHelpers.cs covers them by hand.
A layout probe (sizeof/offsetof for every emitted struct and field) is written next to it as a C
file; the Interop tests compile and compare it.
"""
import os
import sys

import clang.cindex as ci

ci.Config.set_library_file("/usr/lib/llvm-14/lib/libclang.so.1")
K = ci.CursorKind
T = ci.TypeKind

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
OUT = os.path.join(ROOT, "src", "Interop", "Ucx", "Ucp.gen.cs")
PROBE = os.path.join(ROOT, "tests", "Interop.Tests", "ucx_layout_probe.c")
HEADER = "/usr/include/ucp/api/ucp.h"

PRIM = {
    T.BOOL: "byte", T.CHAR_S: "byte", T.SCHAR: "sbyte", T.UCHAR: "byte", T.CHAR_U: "byte",
    T.SHORT: "short", T.USHORT: "ushort", T.INT: "int", T.UINT: "uint",
    T.LONG: "long", T.ULONG: "ulong", T.LONGLONG: "long", T.ULONGLONG: "ulong",
    T.FLOAT: "float", T.DOUBLE: "double",
}


def canon(t):
    return t.get_canonical()


class Gen:
    def __init__(self, tu):
        self.tu = tu
        self.enums = {}     # name -> cursor
        self.structs = {}   # name -> cursor (definition)
        self.order = []
        self.funcs = []
        # Anonymous enums/records named only by a typedef: declaration hash -> typedef name.
        self.typedef_names = {}
        for c in tu.cursor.get_children():
            if c.kind == K.TYPEDEF_DECL:
                u = canon(c.underlying_typedef_type)
                if u.kind in (T.ENUM, T.RECORD):
                    d = u.get_declaration()
                    if d.is_anonymous() or not d.spelling or "unnamed" in d.type.spelling:
                        self.typedef_names.setdefault(d.hash, c.spelling)

    # ---------------------------------------------------------------- types
    def cs_type(self, t, for_field=False):
        t = canon(t)
        k = t.kind
        if k == T.VOID:
            return "void"
        if k in PRIM:
            return PRIM[k]
        if k == T.ENUM:
            self.want_enum(t.get_declaration())
            return self.enum_name(t.get_declaration())
        if k == T.POINTER:
            p = canon(t.get_pointee())
            if p.kind in (T.FUNCTIONPROTO, T.FUNCTIONNOPROTO):
                return "nint"
            if p.kind == T.RECORD:
                d = p.get_declaration()
                if d.is_definition() or d.get_definition() is not None:
                    self.want_struct(d.get_definition() or d)
                    return self.struct_name(d.get_definition() or d) + "*"
                return "nint"  # opaque handle
            if p.kind == T.POINTER:
                inner = self.cs_type(p)
                return inner + "*" if inner != "nint" else "nint*"
            inner = self.cs_type(p)
            return "void*" if inner == "void" else inner + "*"
        if k == T.RECORD:
            d = t.get_declaration()
            self.want_struct(d)
            return self.struct_name(d)
        if k == T.CONSTANTARRAY:
            return self.cs_type(t.element_type)
        raise ValueError(f"unsupported type {t.spelling} ({k})")

    def enum_name(self, d):
        if d.hash in self.typedef_names:
            return self.typedef_names[d.hash]
        n = d.spelling or ""
        return "" if "unnamed" in n else n.replace("enum ", "")

    def struct_name(self, d):
        if d.hash in self.typedef_names:
            return self.typedef_names[d.hash]
        n = d.spelling or ""
        return "" if "unnamed" in n else n.replace("struct ", "").replace("union ", "")

    def want_enum(self, d):
        n = self.enum_name(d)
        if n and n not in self.enums:
            self.enums[n] = d

    def want_struct(self, d):
        d = d.get_definition() or d
        n = self.struct_name(d)
        if not n or "(" in n or n in self.structs:
            return
        self.structs[n] = d
        for f in self.fields(d, 0):
            pass
        self.order.append(n)

    # Flattened fields of a record: (C# name, C access path, byte offset, clang type).
    def fields(self, d, base, prefix=""):
        out = []
        rec = d.type
        for c in d.get_children():
            if c.kind != K.FIELD_DECL:
                continue
            off = base + rec.get_offset(c.spelling) // 8 if c.spelling else None
            ct = canon(c.type)
            if c.is_anonymous() or (ct.kind == T.RECORD and ct.get_declaration().is_anonymous()):
                sub = ct.get_declaration()
                # offset of the anonymous member: offset of its first named field minus that field's own offset
                anon_off = base + self.anon_offset(d, c)
                out += self.fields(sub, anon_off, prefix + (c.spelling + "." if c.spelling else ""))
                continue
            if c.is_bitfield():
                raise ValueError(f"bitfield {d.spelling}.{c.spelling} not supported")
            if ct.kind == T.RECORD and not ct.get_declaration().is_anonymous():
                self.want_struct(ct.get_declaration())
            else:
                self.cs_type(ct, for_field=True)
            out.append((c.spelling, prefix + c.spelling, off, ct))
        return out

    def anon_offset(self, parent, field_cursor):
        return parent.type.get_offset(field_cursor.spelling) // 8 if field_cursor.spelling else self._anon_by_children(parent, field_cursor)

    def _anon_by_children(self, parent, field_cursor):
        # clang names anonymous members ""; use the offset of the first named leaf inside it.
        sub = canon(field_cursor.type).get_declaration()
        for c in sub.get_children():
            if c.kind == K.FIELD_DECL and c.spelling:
                return parent.type.get_offset(c.spelling) // 8 - sub.type.get_offset(c.spelling) // 8
        return 0

    # ---------------------------------------------------------------- collect
    def collect(self):
        for c in self.tu.cursor.get_children():
            if not c.location.file or "ucp/api" not in c.location.file.name and "ucs/" not in c.location.file.name:
                continue
            if c.kind == K.FUNCTION_DECL and (c.spelling.startswith("ucp_") or c.spelling == "ucs_status_string"):
                if c.storage_class == ci.StorageClass.STATIC or c.type.is_function_variadic():
                    continue
                self.funcs.append(c)
                self.cs_type(c.result_type)
                for a in c.get_arguments():
                    self.cs_type(a.type)
            elif c.kind == K.ENUM_DECL and c.is_definition() and (c.spelling.startswith(("ucp_", "ucs_status")) or
                                                                  c.type.spelling.startswith(("enum ucp_", "ucp_"))):
                self.want_enum(c)

    # ---------------------------------------------------------------- emit
    def emit(self):
        L = ["// <auto-generated> by tools/BindGen/bindgen.py from " + HEADER + " (UCX " + ucx_version() + ").",
             "// Do not edit: run tools/BindGen/regen.sh.</auto-generated>",
             "#pragma warning disable CS1591, CS0169, CS0649, CS8981, IDE1006",
             "using System.Runtime.InteropServices;", "", "namespace ReaLNative.Interop.Ucx;", ""]
        for n in sorted(self.enums):
            d = self.enums[n]
            vals = [(c.spelling, c.enum_value) for c in d.get_children() if c.kind == K.ENUM_CONSTANT_DECL]
            lo = min((v for _, v in vals), default=0)
            hi = max((v for _, v in vals), default=0)
            ut = "int" if lo >= -2**31 and hi < 2**31 else ("uint" if lo >= 0 and hi < 2**32 else ("long" if lo < 0 else "ulong"))
            L.append(f"public enum {n} : {ut}")
            L.append("{")
            for cn, v in vals:
                L.append(f"    {cn} = {v},")
            L.append("}")
            L.append("")
        probe = ["/* Generated by tools/BindGen/bindgen.py: prints sizeof/offsetof of every bound struct. */",
                 "#include <stddef.h>", "#include <stdio.h>", "#include <ucp/api/ucp.h>", "int main(void) {"]
        for n in self.order:
            d = self.structs[n]
            size = d.type.get_size()
            kind = "union" if d.kind == K.UNION_DECL else "struct"
            L.append(f"[StructLayout(LayoutKind.Explicit, Size = {size})]")
            L.append(f"public unsafe struct {n}")
            L.append("{")
            cdecl = f"{kind} {n}" if not d.type.spelling.startswith(n) or d.type.spelling == n and False else d.type.spelling
            ctype = d.type.spelling if "unnamed" not in d.type.spelling else n
            probe.append(f'    printf("{n} %zu\\n", sizeof({ctype}));')
            for fname, cpath, off, ft in self.fields(d, 0):
                if ft.kind == T.CONSTANTARRAY:
                    et = self.cs_type(ft.element_type)
                    if et in ("byte", "sbyte", "short", "ushort", "int", "uint", "long", "ulong", "float", "double"):
                        L.append(f"    [FieldOffset({off})] public fixed {et} {fname}[{ft.element_count}];")
                    else:
                        L.append(f"    // {fname}: array of {ft.element_type.spelling} at {off}, {ft.get_size()} bytes")
                        L.append(f"    [FieldOffset({off})] public byte {fname}_0;")
                else:
                    L.append(f"    [FieldOffset({off})] public {self.cs_type(ft)} {fname};")
                if fname:
                    probe.append(f'    printf("{n}.{fname} %zu\\n", offsetof({ctype}, {cpath}));')
            L.append("}")
            L.append("")
        probe += ["    return 0;", "}", ""]
        L.append("public static unsafe partial class Ucp")
        L.append("{")
        for f in sorted(self.funcs, key=lambda c: c.spelling):
            lib = "Ucs" if f.spelling.startswith("ucs_") else "Lib"
            ret = self.cs_type(f.result_type)
            args = ", ".join(f"{self.cs_type(a.type)} {safe(a.spelling or f'a{i}')}" for i, a in enumerate(f.get_arguments()))
            L.append(f"    [LibraryImport({lib})] public static partial {ret} {f.spelling}({args});")
        L.append("}")
        L.append("")
        return "\n".join(L), "\n".join(probe)


def safe(n):
    return "@" + n if n in ("params", "string", "object", "base", "event", "ref", "out", "in", "lock", "fixed") else n


def ucx_version():
    try:
        txt = open("/usr/include/ucp/api/ucp_version.h").read()
        import re
        ma = re.search(r"UCP_API_MAJOR\s+(\d+)", txt)
        mi = re.search(r"UCP_API_MINOR\s+(\d+)", txt)
        return f"{ma.group(1)}.{mi.group(1)}" if ma and mi else "?"
    except OSError:
        return "?"


def main():
    idx = ci.Index.create()
    tu = idx.parse(HEADER, args=["-I/usr/include", "-x", "c"])
    errs = [d for d in tu.diagnostics if d.severity >= ci.Diagnostic.Error]
    if errs:
        sys.exit("libclang could not parse " + HEADER + ": " + str(errs[0]))
    g = Gen(tu)
    g.collect()
    cs, probe = g.emit()
    if "--check" in sys.argv:
        same = open(OUT).read() == cs and open(PROBE).read() == probe
        print("bindings up to date" if same else "bindings differ from the installed headers: run tools/BindGen/regen.sh")
        sys.exit(0 if same else 1)
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    open(OUT, "w").write(cs)
    open(PROBE, "w").write(probe)
    print(f"wrote {OUT}: {len(g.enums)} enums, {len(g.structs)} structs, {len(g.funcs)} functions")


if __name__ == "__main__":
    main()
