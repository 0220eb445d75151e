"""The import rules of the house, read from the source (AST), lazy imports inside functions included.

- Folders: ``store`` < ``queries`` < ``pipeline`` < ``workflows`` < ``testing`` (``tests/support``);
  a module imports only from its own folder and those below.
- Inside ``pipeline``: ``model`` and ``runtime`` import only themselves; a stage (``capture``,
  ``extract``, ``steer``, ``generate``) imports ``model``, ``runtime`` and itself, never another stage;
  ``interop`` (the one adapter) and the old-path shim ``methods`` may see every stage.
- No import cycle anywhere in the package, imports inside functions counted.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = {"store": "store", "queries": "queries", "pipeline": "pipeline", "workflows": "workflows",
           "testing": "tests/support"}
LEVEL = {"store": 0, "queries": 1, "pipeline": 2, "workflows": 3, "testing": 4}
SHARED = {"model", "runtime"}
STAGES = {"capture", "extract", "steer", "generate"}
ADAPTERS = {"interop", "methods"}


def modules() -> dict[str, Path]:
    """Every module of the package: ``traitlens.<folder>.<...>`` -> its file."""
    out = {}
    for pkg, folder in FOLDERS.items():
        for f in sorted((ROOT / folder).rglob("*.py")):
            parts = list(f.relative_to(ROOT / folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(["traitlens", pkg, *parts])] = f
    return out


def imports(name: str, path: Path, known: set[str], top_level_only: bool = False) -> set[str]:
    """The traitlens modules ``name`` imports (``from pkg import submodule`` counts the submodule)."""
    tree = ast.parse(path.read_text(), str(path))
    is_pkg = path.name == "__init__.py"
    nodes = tree.body if top_level_only else ast.walk(tree)
    found = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = name.split(".") if is_pkg else name.split(".")[:-1]
                anchor = anchor[:len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            for a in node.names:
                sub = f"{base}.{a.name}"
                found.add(sub if sub in known else base)
    return {m for m in found if m.startswith("traitlens.")}


def violation(src: str, dst: str) -> str | None:
    """Why the edge ``src`` -> ``dst`` breaks the rules, or None when it is allowed."""
    s, d = src.split("."), dst.split(".")
    if LEVEL[d[1]] > LEVEL[s[1]]:
        return f"{s[1]} may not import {d[1]} (layering: store < queries < pipeline < workflows < testing)"
    if s[1] == d[1] == "pipeline":
        s_part = s[2] if len(s) > 2 else "__init__"
        d_part = d[2] if len(d) > 2 else "__init__"
        if s_part in ADAPTERS or s_part == d_part:
            return None
        if s_part in SHARED or s_part == "__init__":
            return f"pipeline.{s_part} imports only itself (found pipeline.{d_part})"
        if s_part in STAGES and d_part not in SHARED:
            return f"stage pipeline.{s_part} may import model and runtime, never pipeline.{d_part}"
    return None


def test_every_import_follows_the_layering():
    mods = modules()
    assert len(mods) > 60 and {"traitlens.pipeline.capture.ingest", "traitlens.store.store"} <= set(mods)
    bad = [f"{src} -> {dst}: {why}" for src, f in mods.items() for dst in sorted(imports(src, f, set(mods)))
           if dst in mods and (why := violation(src, dst))]
    unknown = sorted({dst for src, f in mods.items() for dst in imports(src, f, set(mods))} - set(mods)
                     - {"traitlens"})
    assert not bad, "\n".join(bad)
    assert not unknown, f"imports of modules that do not exist: {unknown}"


@pytest.mark.parametrize("src, dst", [
    ("traitlens.store.store", "traitlens.queries.connection"),
    ("traitlens.queries.selection", "traitlens.pipeline.extract.jobs"),
    ("traitlens.pipeline.steer.evaluate", "traitlens.pipeline.capture.capturer"),
    ("traitlens.pipeline.model.hooks", "traitlens.pipeline.steer.steering"),
    ("traitlens.pipeline.capture.ingest", "traitlens.workflows.runner"),
    ("traitlens.workflows.demo", "traitlens.testing.synthetic"),
])
def test_the_checker_refuses_each_kind_of_bad_edge(src, dst):
    assert violation(src, dst)


def test_allowed_edges_pass_the_checker():
    for src, dst in [("traitlens.pipeline.capture.ingest", "traitlens.pipeline.model.loading"),
                     ("traitlens.pipeline.interop", "traitlens.pipeline.capture.ingest"),
                     ("traitlens.pipeline.extract.jobs", "traitlens.queries.connection"),
                     ("traitlens.workflows.runner", "traitlens.pipeline.extract.jobs")]:
        assert violation(src, dst) is None, (src, dst)


def import_graph(mods: dict[str, Path], top_level_only: bool = False) -> dict[str, set[str]]:
    """``{module: the package modules it imports}``, imports inside functions included unless
    ``top_level_only``. A package's ``__init__`` importing its own submodules is how re-exports
    work, not a cycle, so those edges are left out."""
    graph = {m: {d for d in imports(m, f, set(mods), top_level_only) if d in mods and d != m} for m, f in mods.items()}
    return {m: {d for d in ds if not d.startswith(m + ".")} for m, ds in graph.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``graph`` as ``[a, b, ..., a]``, or None (depth-first, in name order)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    stack: list[str] = []

    def visit(m):
        state[m] = 1
        stack.append(m)
        for d in sorted(graph.get(m, ())):
            if state.get(d) == 1:
                return stack[stack.index(d):] + [d]
            if d not in state and (found := visit(d)):
                return found
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state and (found := visit(m)):
            return found
    return None


def test_no_import_cycle_even_counting_imports_inside_functions():
    # a function-level import is a cycle waiting for the day it moves to the top: count it
    cycle = find_cycle(import_graph(modules()))
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_cycle_check_finds_a_planted_cycle_made_by_an_import_inside_a_function(tmp_path):
    # a synthetic package: a imports b at the top, b imports c, and c imports a only inside a function
    src = {"a": "from traitlens.store import b\n",
           "b": "import traitlens.store.c\n",
           "c": "def later():\n    from traitlens.store.a import thing\n    return thing\n",
           "d": "from traitlens.store import a\n"}
    mods = {}
    for name, text in src.items():
        (tmp_path / f"{name}.py").write_text(text)
        mods[f"traitlens.store.{name}"] = tmp_path / f"{name}.py"
    assert find_cycle(import_graph(mods, top_level_only=True)) is None  # what the old check saw
    assert find_cycle(import_graph(mods)) == ["traitlens.store.a", "traitlens.store.b", "traitlens.store.c",
                                              "traitlens.store.a"]
    (tmp_path / "c.py").write_text("def later():\n    return 1\n")
    assert find_cycle(import_graph(mods)) is None  # and the cycle gone, the check passes
