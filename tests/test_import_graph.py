"""The import graph of pipeline/, model/ and trainer/, read from the source with ``ast`` (nothing imported).

Each import is module-level (runs at import time), lazy (inside a function), type-only (under
``if TYPE_CHECKING:``) or dynamic (a module of ours named in a string: ``importlib.import_module("a.b")``,
``__import__``, or any dotted string constant that is exactly one of our modules). Rules, with no
exception: no cycle among all of them together, so no loop hides behind a lazy, typed or dynamic import;
and data flows one way, pipeline -> model -> trainer: ``model`` never imports ``trainer``, ``pipeline``
imports neither, not even lazily. Run ``python tests/test_import_graph.py`` to print every edge with its kind.
"""

from __future__ import annotations

import ast
import itertools
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("pipeline", "model", "trainer")
# what each package may not import, at any level: the data-flow rule (README "Design")
FORBIDDEN = {"pipeline": ("model", "trainer"), "model": ("trainer",), "trainer": ()}
KINDS = ("module", "lazy", "type", "dynamic")
# calls whose first argument is a module name: importlib.import_module, __import__, runpy.run_module, ...
DYNAMIC_CALLS = ("import_module", "__import__", "run_module", "find_spec")


@dataclass(frozen=True)
class Edge:
    src: str  # importing module, e.g. "model.gpt"
    dst: str  # imported module of ours, e.g. "model.generate"
    line: int
    kind: str  # "module" (import time), "lazy" (in a function), "type" (TYPE_CHECKING), "dynamic" (a string)


def module_files() -> dict[str, Path]:
    mods = {}
    for pkg in PACKAGES:
        for path in sorted((REPO / pkg).rglob("*.py")):
            parts = path.relative_to(REPO).with_suffix("").parts
            mods[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return mods


def _resolve(name: str, mods: dict[str, Path]) -> str | None:
    """The deepest module of ours that `name` names (`pipeline.format.MAGIC` -> `pipeline.format`)."""
    parts = name.split(".")
    while parts and ".".join(parts) not in mods:
        parts.pop()
    return ".".join(parts) or None


def _is_type_checking(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or (
        isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING"
    )


def _dynamic_names(node: ast.AST, mods: dict[str, Path]) -> list[str]:
    """Modules of ours that ``node`` names in a string: the module argument of an importlib-style call,
    or a dotted string constant that is exactly one of our modules (e.g. a table of subcommand modules)."""
    if isinstance(node, ast.Call):
        f = node.func
        called = f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else ""
        arg = node.args[0] if node.args else None
        if called in DYNAMIC_CALLS and isinstance(arg, ast.Constant) and isinstance(arg.value, str):
            dst = _resolve(arg.value, mods)
            return [dst] if dst is not None else []
    if isinstance(node, ast.Constant) and isinstance(node.value, str) and "." in node.value:
        return [node.value] if node.value in mods else []
    return []


def edges_of(mod: str, path: Path, mods: dict[str, Path]) -> list[Edge]:
    is_pkg = path.name == "__init__.py"
    out: list[Edge] = []

    def visit(node: ast.AST, kind: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                for n in child.body:
                    visit_one(n, "type")
                for n in child.orelse:
                    visit_one(n, kind)
                continue
            is_def = isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            visit_one(child, "lazy" if is_def and kind == "module" else kind)

    def visit_one(node: ast.AST, kind: str) -> None:
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from the package this module is in
                base = mod.split(".")
                base = base if is_pkg else base[:-1]
                base = base[: len(base) - (node.level - 1)]
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module or ""
            # `from pkg import sub` imports the submodule pkg.sub when there is one
            targets = [f"{prefix}.{a.name}" for a in node.names] or [prefix]
        for t in targets:
            dst = _resolve(t, mods)
            if dst is not None and dst != mod:
                out.append(Edge(mod, dst, node.lineno, kind))
        for name in _dynamic_names(node, mods):
            if name != mod:
                out.append(Edge(mod, name, node.lineno, "dynamic"))
        visit(node, kind)

    visit(ast.parse(path.read_text(), filename=str(path)), "module")
    return list(dict.fromkeys(out))  # `from m import a, b` is one edge


def import_graph() -> list[Edge]:
    mods = module_files()
    return [e for mod, path in mods.items() for e in edges_of(mod, path, mods)]


def find_cycle(edges: list[Edge], kinds: tuple[str, ...] = ("module",)) -> list[str] | None:
    """One cycle among the edges of these kinds, as a path `[a, b, ..., a]`, or None."""
    graph: dict[str, list[str]] = {}
    for e in edges:
        if e.kind in kinds:
            graph.setdefault(e.src, []).append(e.dst)
    state: dict[str, int] = {}  # 1 on the current path, 2 done
    stack: list[str] = []

    def dfs(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in graph.get(node, []):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state and (found := dfs(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (found := dfs(start)):
            return found
    return None


def _cycle_message(edges: list[Edge], kinds: tuple[str, ...]) -> str:
    cycle = find_cycle(edges, kinds)
    if cycle is None:
        return ""
    where = {(e.src, e.dst): f"{e.src}:{e.line} ({e.kind})" for e in edges if e.kind in kinds}
    steps = " -> ".join(where[a, b] for a, b in itertools.pairwise(cycle))
    return f"import cycle: {steps} -> {cycle[-1]}"


def test_the_walker_sees_every_kind_of_import(tmp_path: Path) -> None:
    # an independent reference: a tiny package written here, with one import of each kind
    names = ("pkg", "pkg.a", "pkg.b", "pkg.c", "pkg.d")
    mods = {n: tmp_path / (n.split(".")[-1] + ".py" if "." in n else "__init__.py") for n in names}
    mods["pkg"].write_text("")
    mods["pkg.a"].write_text(
        "from typing import TYPE_CHECKING\nfrom pkg import b\nif TYPE_CHECKING:\n    from pkg.b import X\n"
    )
    mods["pkg.b"].write_text("def f():\n    from .a import g\n")
    mods["pkg.c"].write_text(
        '"""Docs naming pkg.a."""\nimport importlib\n\n\n'
        'def f():\n    return importlib.import_module("pkg.a")\n'
    )
    mods["pkg.d"].write_text('TABLE = ("pkg.c", "pkg.nothing", "pkg")\nx = __import__("pkg.b.X")\n')
    got = {(e.src, e.dst, e.kind) for m, p in mods.items() for e in edges_of(m, p, mods)}
    assert got == {
        ("pkg.a", "pkg.b", "module"), ("pkg.a", "pkg.b", "type"), ("pkg.b", "pkg.a", "lazy"),
        ("pkg.c", "pkg.a", "dynamic"), ("pkg.d", "pkg.c", "dynamic"), ("pkg.d", "pkg.b", "dynamic"),
    }  # fmt: skip
    edges = [Edge("a", "b", 1, "module"), Edge("b", "c", 2, "module"), Edge("c", "a", 3, "lazy")]
    assert find_cycle(edges) is None and find_cycle(edges, ("module", "lazy")) == ["a", "b", "c", "a"]
    assert (
        _cycle_message(edges, ("module", "lazy"))
        == "import cycle: a:1 (module) -> b:2 (module) -> c:3 (lazy) -> a"
    )
    # and it reads today's tree: a known module-level edge, and trainer uses model
    real = {(e.src, e.dst) for e in import_graph()}
    assert ("pipeline.sampler", "pipeline.format") in real
    assert any(src.startswith("trainer.") and dst.startswith("model.") for src, dst in real)


def test_no_import_cycle_of_any_kind() -> None:
    message = _cycle_message(import_graph(), KINDS)
    assert not message, message


def test_data_flows_pipeline_to_model_to_trainer() -> None:
    bad = [
        f"{e.src}:{e.line} imports {e.dst} ({e.kind})"
        for e in import_graph()
        if e.dst.split(".")[0] in FORBIDDEN[e.src.split(".")[0]]
    ]
    assert not bad, "imports against the data flow pipeline -> model -> trainer:\n" + "\n".join(bad)


if __name__ == "__main__":
    all_edges = import_graph()
    for e in sorted(all_edges, key=lambda e: (e.src, e.line)):
        print(f"{e.src}:{e.line} -> {e.dst}  ({e.kind})")
    print(
        f"{len(all_edges)} imports: " + ", ".join(f"{sum(e.kind == k for e in all_edges)} {k}" for k in KINDS)
    )
    msg = _cycle_message(all_edges, KINDS)
    print(msg or "no import cycle")
    sys.exit(1 if msg else 0)
