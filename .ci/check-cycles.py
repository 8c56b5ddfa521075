#!/usr/bin/env python3
"""Fails when two source files of one crate import each other, directly or
through others. A file's module path comes from where it lies under src/;
every `crate::`, `super::` and `self::` path in it (in `use` lines and in
code), and every path through a child module it declares, is an edge to
the deepest module file that path names."""
import pathlib
import re
import sys

PATH = re.compile(r"\b((?:crate|super|self)(?:::[A-Za-z_][A-Za-z0-9_]*)+)")
GROUP = re.compile(r"\b((?:crate|super|self)(?:::[A-Za-z_][A-Za-z0-9_]*)*)::\{([^}]*)\}")


def module_of(src: pathlib.Path, file: pathlib.Path):
    parts = list(file.relative_to(src).with_suffix("").parts)
    if parts[-1] in ("mod", "lib", "main"):
        parts.pop()
    if parts and parts[0] == "bin":
        return None  # binaries are crates of their own
    return tuple(parts)


def strip_comments(text: str) -> str:
    text = re.sub(r"//[^\n]*", "", text)
    return re.sub(r'"(?:\\.|[^"\\])*"', '""', text)


def crate_cycles(src: pathlib.Path):
    files = {}
    for file in src.rglob("*.rs"):
        module = module_of(src, file)
        if module is not None:
            files[module] = file
    edges = {module: set() for module in files}
    for module, file in files.items():
        text = strip_comments(file.read_text())
        # Drop inline test modules: `use super::*` there is the file itself.
        text = re.split(r"#\[cfg\(test\)\]\s*mod tests", text)[0]
        paths = PATH.findall(text)
        for prefix, names in GROUP.findall(text):
            for name in names.split(","):
                name = name.strip().split(" ")[0].split("::")[0]
                if name and name != "self":
                    paths.append(f"{prefix}::{name}")
                elif name == "self":
                    paths.append(prefix)
        # A child module named without a prefix (`use child::X`, `child::f()`)
        # is an edge too.
        for child in re.findall(r"\bmod\s+([A-Za-z_][A-Za-z0-9_]*)\s*;", text):
            if re.search(rf"(?<![:\w]){child}::", text):
                paths.append(f"self::{child}")
        for path in paths:
            segs = path.split("::")
            # `self` is this file's module and `super` its parent, whether
            # the file is `x.rs` or `x/mod.rs`.
            base = [] if segs[0] == "crate" else list(module)
            rest = segs[1:]
            while segs and segs[0] == "super":
                segs = segs[1:]
                base = base[:-1]
                rest = segs
            if segs and segs[0] == "self":
                rest = segs[1:]
            target = tuple(base)
            best = target if target in files else None
            for seg in rest:
                target = target + (seg,)
                if target in files:
                    best = target
            if best is not None and best != module:
                # A child using its parent's items is the tree, not a cycle,
                # unless the parent also uses the child: both edges count.
                edges[module].add(best)
    cycles = []
    state = {}
    stack = []

    def visit(node):
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges[node]):
            if state.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node)
    return files, cycles


def main():
    root = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else ".")
    failed = False
    for manifest in sorted(root.glob("**/Cargo.toml")):
        if "target" in manifest.parts:
            continue
        src = manifest.parent / "src"
        if not src.is_dir():
            continue
        files, cycles = crate_cycles(src)
        for cycle in cycles:
            failed = True
            names = [str(files[m].relative_to(root)) for m in cycle]
            print("import cycle: " + " -> ".join(names))
    if failed:
        sys.exit(1)
    print("no import cycles between files")


main()
