"""The trainer stays readable: no function in ``trainer/`` is longer than 80 lines or takes more than 6
positional parameters (``self``/``cls`` aside; keyword-only ones after ``*`` are named at every call).

Read from the source with ``ast`` (nothing imported), nested functions and methods included.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
MAX_LINES = 80
MAX_POSITIONAL = 6


def offenders(source: str, filename: str) -> list[str]:
    """``file:line name: why`` for every function of ``source`` over either limit."""
    tree = ast.parse(source, filename)
    methods = {
        id(f)
        for c in ast.walk(tree)
        if isinstance(c, ast.ClassDef)
        for f in c.body
        if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
        and not any(isinstance(d, ast.Name) and d.id == "staticmethod" for d in f.decorator_list)
    }
    out = []
    for node in ast.walk(tree):
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        assert node.end_lineno is not None
        lines = node.end_lineno - node.lineno + 1  # from `def` to the last line of the body
        positional = len(node.args.posonlyargs) + len(node.args.args) - (id(node) in methods)
        where = f"{filename}:{node.lineno} {node.name}"
        if lines > MAX_LINES:
            out.append(f"{where}: {lines} lines (at most {MAX_LINES}; split it)")
        if positional > MAX_POSITIONAL:
            out.append(
                f"{where}: {positional} positional parameters (at most {MAX_POSITIONAL}; make the rest "
                "keyword-only or bundle them in a typed object)"
            )
    return out


def test_no_trainer_function_is_too_long_or_takes_too_many_positional_parameters():
    files = sorted((REPO / "trainer").rglob("*.py"))
    assert len(files) > 10  # the package is there
    found = [o for f in files for o in offenders(f.read_text(), str(f.relative_to(REPO)))]
    assert not found, "\n".join(found)


def test_the_check_sees_long_functions_and_positional_parameters():
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_LINES))  # def line + 80 = 81 lines
    src = f"""
def long():
{body}

def ok(a, b, c, d, e, f, *, g, h):
    pass

def wide(a, b, c, d, e, f, g):
    pass

def wide_posonly(a, b, c, d, /, e, f, g):
    pass

class C:
    def method(self, a, b, c, d, e, f):
        def inner(a, b, c, d, e, f, g):
            pass

    @classmethod
    def build(cls, a, b, c, d, e, f):
        pass

    @staticmethod
    def static(a, b, c, d, e, f, g):
        pass
"""
    found = offenders(src, "t.py")
    named = sorted(o.split(":", 2)[1].split()[1] for o in found)
    assert named == ["inner", "long", "static", "wide", "wide_posonly"], found
