#!/usr/bin/env python3
"""No import circles between the modules of a crate.

For each crate source root, every `crate::…`, `super::…` and `self::…` path
outside test modules is resolved to the module that defines it (the longest
known module prefix), and counted as an edge between the two modules' files
at the level where they meet: siblings, or a child and the parent file
(`mod.rs`, `lib.rs`) that declares it. A cycle in that graph is an import
circle: two files that each need the other, so neither reads on its own.
Items a parent re-exports are not followed: import them from the file that
defines them. Exit code 1 names every cycle.
"""
import re
import sys
from pathlib import Path

ROOTS = ["engine/src", "operator/src", "e2e/src"]
PATH = re.compile(r"\b(crate|super|self)((?:::[A-Za-z_][A-Za-z0-9_]*)+)")
USE_GROUP = re.compile(r"\buse\s+(crate|super|self)((?:::[A-Za-z_][A-Za-z0-9_]*)*)::\{([^;]*)\};", re.S)


def module_of(root: Path, f: Path) -> tuple:
    rel = f.relative_to(root).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] in ("mod", "lib", "main"):
        parts = parts[:-1]
    return tuple(parts)


def strip(text: str) -> str:
    text = re.sub(r"//[^\n]*", "", text)
    m = re.search(r"#\[cfg\(test\)\]\s*mod\s+tests\b", text)
    return text[: m.start()] if m else text


def paths_in(text: str):
    for m in USE_GROUP.finditer(text):
        base, prefix, group = m.group(1), m.group(2), m.group(3)
        for item in re.split(r",(?![^{]*\})", group):
            item = item.strip().split(" as ")[0].strip()
            if item and item != "self":
                head = item.split("::{")[0]
                yield base, (prefix + "::" + head).split("::")[1:]
            elif item == "self":
                yield base, prefix.split("::")[1:]
    for m in PATH.finditer(USE_GROUP.sub("", text)):
        yield m.group(1), m.group(2).split("::")[1:]


def main() -> int:
    repo = Path(__file__).resolve().parents[2]
    bad = []
    for r in ROOTS:
        root = repo / r
        files = {module_of(root, f): f for f in root.rglob("*.rs")}
        is_dir = {m for m, f in files.items() if f.name in ("mod.rs", "lib.rs", "main.rs")}
        edges = {}
        for mod, f in files.items():
            for base, segs in paths_in(strip(f.read_text())):
                if base == "crate":
                    target = ()
                elif base == "self":
                    target = mod
                else:
                    target = mod[:-1]
                segs = [s for s in segs if s != "super"] if base == "super" else segs
                path = list(target)
                for s in segs:
                    if tuple(path + [s]) in files:
                        path.append(s)
                    else:
                        break
                dest = tuple(path)
                if dest == mod:
                    continue
                # Where the two meet.
                common = 0
                while common < min(len(mod), len(dest)) and mod[common] == dest[common]:
                    common += 1
                parent = mod[:common]
                a = mod[common] if len(mod) > common else None
                b = dest[common] if len(dest) > common else None
                if a == b:
                    continue
                edges.setdefault(parent, set()).add((a, b))
        for parent, es in edges.items():
            graph = {}
            for a, b in es:
                graph.setdefault(a, set()).add(b)
            seen_cycles = set()

            def visit(node, stack):
                for nxt in sorted(graph.get(node, ()), key=str):
                    if nxt in stack:
                        cyc = stack[stack.index(nxt):] + [nxt]
                        key = frozenset(cyc)
                        if key not in seen_cycles:
                            seen_cycles.add(key)
                            bad.append((r, parent, cyc))
                    elif len(stack) < 12:
                        visit(nxt, stack + [nxt])

            for n in sorted(graph, key=str):
                visit(n, [n])
    for r, parent, cyc in bad:
        where = "/".join((r,) + parent)
        names = [("(" + (parent[-1] if parent else "root") + " itself)") if n is None else n for n in cyc]
        print(f"import circle in {where}: " + " -> ".join(names))
    if bad:
        print(f"{len(bad)} import circle(s): move what both sides need into a module of its own", file=sys.stderr)
        return 1
    print("no import circles in " + ", ".join(ROOTS))
    return 0


if __name__ == "__main__":
    sys.exit(main())
