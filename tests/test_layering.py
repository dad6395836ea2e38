"""The import rules of docs/architecture.md, checked on the source.

Layers, top to bottom: server -> engine -> runner -> models -> kernels, with
loader, cost and bench beside them. A file may import from its own layer and
the layers below it, never above. config, sampling_params, errors and runtime are
leaves every layer may use; the runner may also use the loader (it builds the
model). Every import counts, including ones inside functions (lazy imports are
still dependencies), and so do "jevons.module:function" strings (the kernel
registry's lazy references)."""
from __future__ import annotations

import ast
import re
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent / "jevons"

# Modules at the top of the package that every layer may import: they import
# nothing from jevons themselves (checked below).
SHARED = {"config", "sampling_params", "errors", "runtime"}
# For each lower layer, the areas (sub-packages or top-level modules) its files may import.
ALLOWED = {
    "kernels": {"kernels", "runtime"},  # the kernel switches, read once at start
    "models": {"models", "kernels"} | SHARED,
    "runner": {"runner", "models", "kernels", "loader"} | SHARED,
    # Grammar-constrained decoding sits between the engine and the runner: the
    # engine keeps its matchers, the runner only applies the masks it makes.
    "structured": {"structured", "runner"} | SHARED,
    "engine": {"engine", "runner", "loader", "outputs", "structured"} | SHARED,
}
# Import cycles that existed when this test was written (issue 14 removes
# them; they sit in the server, the CLIs and the loader, above or beside the
# layers whose rules are enforced here). A cycle that is not one of these, or
# not inside one of these, fails the test; one that disappears is fine.
KNOWN_CYCLES: list[set[str]] = []  # issue 14 removed the last of them
# Layers in which no cycle at all is tolerated, known or not.
ACYCLIC = ("kernels", "models", "runner", "structured", "engine")

_REF = re.compile(r"^(jevons(?:\.\w+)+):\w+$")


def _modules() -> dict[str, Path]:
    mods = {}
    for p in sorted(ROOT.rglob("*.py")):
        parts = list(p.relative_to(ROOT.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        mods[".".join(parts)] = p
    return mods


def _graph() -> tuple[dict[str, Path], dict[str, set[str]]]:
    mods = _modules()

    def resolve(name: str) -> str | None:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name or None

    edges: dict[str, set[str]] = defaultdict(set)
    for mod, path in mods.items():
        pkg = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
                    base = ".".join(up + ([base] if base else []))
                targets = [f"{base}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                m = _REF.match(node.value)
                targets = [m.group(1)] if m else []
            for t in targets:
                if t == "jevons" or t.startswith("jevons."):
                    r = resolve(t)
                    if r is not None and r != mod:
                        edges[mod].add(r)
    return mods, edges


def _area(mod: str) -> str:
    parts = mod.split(".")
    return parts[1] if len(parts) > 1 else "jevons"


def _cycles(mods: dict[str, Path], edges: dict[str, set[str]]) -> list[set[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[set[str]] = []
    counter = 0
    for root in mods:
        if root in index:
            continue
        work = [(root, iter(sorted(edges[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            v, it = work[-1]
            for w in it:
                if w not in index:
                    index[w] = low[w] = counter
                    counter += 1
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(edges[w]))))
                    break
                if w in on_stack:
                    low[v] = min(low[v], index[w])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[v])
                if low[v] == index[v]:
                    comp = set()
                    while True:
                        w = stack.pop()
                        on_stack.discard(w)
                        comp.add(w)
                        if w == v:
                            break
                    if len(comp) > 1:
                        out.append(comp)
    return out


def test_lower_layers_import_nothing_from_above():
    mods, edges = _graph()
    bad = []
    for mod in mods:
        allowed = ALLOWED.get(_area(mod))
        if allowed is None:
            continue
        bad += [f"{mod} -> {t}" for t in sorted(edges[mod]) if _area(t) not in allowed]
    assert not bad, "imports against the layer order (docs/architecture.md):\n" + "\n".join(bad)


def test_shared_modules_are_leaves():
    mods, edges = _graph()
    bad = [f"jevons.{m} -> {t}" for m in SHARED for t in sorted(edges[f"jevons.{m}"]) if _area(t) not in SHARED]
    assert not bad, "\n".join(bad)


def test_no_new_import_cycles():
    mods, edges = _graph()
    cycles = _cycles(mods, edges)
    in_layers = [c for c in cycles if any(_area(m) in ACYCLIC for m in c)]
    new = [c for c in cycles if not any(c <= known for known in KNOWN_CYCLES)]
    known = [c for c in cycles if c not in new]
    if known:
        print("known import cycles (issue 14):", *(" <-> ".join(sorted(c)) for c in known), sep="\n  ")
    report = "\n".join(" <-> ".join(sorted(c)) for c in in_layers + [c for c in new if c not in in_layers])
    assert not in_layers and not new, "import cycles:\n" + report


def test_the_checker_sees_imports_and_cycles():
    # The rules above would pass vacuously on a graph the parser got wrong.
    mods, edges = _graph()
    assert "jevons.runner.step_io" in edges["jevons.engine.scheduler"]
    assert "jevons.runner.executors" in edges["jevons.engine.engine_core"]
    assert "jevons.kernels.torch_ref.rotary" in edges["jevons.kernels.registry"]  # a "module:function" string
    fake = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycles(dict.fromkeys(fake), defaultdict(set, fake)) == [{"a", "b", "c"}]
