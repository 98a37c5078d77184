"""The import graph of the project's packages, read from the source with ast (nothing is imported).

Layers, bottom up: runtime (processes, devices, collectives) <- kernels <- pipeline <- eval; data_prep stands
apart. Every import of a module of ours, at the top of a file or inside a function, is an edge:
- runtime imports nothing of ours; kernels imports runtime at most;
- pipeline imports no eval module, except pipeline/train.py, the entry point that wires the evaluation hook in;
- pipeline/data and pipeline/model import nothing of pipeline/training;
- data_prep imports neither pipeline nor eval;
- no cycle between modules (a package's __init__ counts as the module of that name).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("runtime", "kernels", "data_prep", "pipeline", "eval", "scripts")
ENTRY_POINTS = {"pipeline.train"}  # may import eval: they wire the rooms together


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            found[module_name(path)] = path
    return found


def _resolve(name: str, known: dict[str, Path]) -> str | None:
    """The longest known module that `name` (a.b.c, possibly a.b.attribute) starts with."""
    parts = name.split(".")
    for n in range(len(parts), 0, -1):
        candidate = ".".join(parts[:n])
        if candidate in known:
            return candidate
    return None


def imports_of(module: str, path: Path, known: dict[str, Path]) -> set[str]:
    """Modules of ours that `module` imports (from x import y: x.y when that is a module, else x)."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            names = [f"{base}.{a.name}" for a in node.names] or [base]
        for name in names:
            target = _resolve(name, known)
            if target is not None and target != module:
                out.add(target)
    return out


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    known = modules()
    return {m: imports_of(m, p, known) for m, p in known.items()}


def _edges(graph, src_prefix: str, dst_prefix: str) -> list[str]:
    def inside(m, prefix):
        return m == prefix or m.startswith(prefix + ".")

    return sorted(
        f"{m} -> {d}" for m, deps in graph.items() if inside(m, src_prefix) for d in deps if inside(d, dst_prefix)
    )


def test_runtime_imports_nothing_of_ours(graph):
    assert [e for p in PACKAGES if p != "runtime" for e in _edges(graph, "runtime", p)] == []


def test_kernels_import_runtime_at_most(graph):
    assert [e for p in PACKAGES if p not in ("runtime", "kernels") for e in _edges(graph, "kernels", p)] == []


def test_pipeline_imports_eval_only_from_its_entry_point(graph):
    assert [e for e in _edges(graph, "pipeline", "eval") if e.split(" -> ")[0] not in ENTRY_POINTS] == []


def test_data_and_model_do_not_reach_up_into_training(graph):
    """The trainer composes data and model; they never import the loop's parts (a sideways import is fine)."""
    assert [e for low in ("pipeline.data", "pipeline.model") for e in _edges(graph, low, "pipeline.training")] == []


def test_data_prep_stands_apart(graph):
    assert _edges(graph, "data_prep", "pipeline") + _edges(graph, "data_prep", "eval") == []


def find_cycles(graph: dict[str, set[str]]) -> list[str]:
    """Depth-first search; each back edge is a cycle, reported as its chain of modules."""
    state, cycles = {}, []

    def visit(m, chain):
        state[m] = "open"
        for d in sorted(graph.get(m, ())):
            if state.get(d) == "open":
                cycles.append(" -> ".join([*chain[chain.index(d) :], d]))
            elif d not in state:
                visit(d, [*chain, d])
        state[m] = "done"

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    return cycles


def test_no_import_cycle(graph):
    assert find_cycles(graph) == []


def test_the_checker_sees_relative_and_late_imports_and_cycles(tmp_path):
    """On a made-up package: a relative import and an import inside a function both count, and the two-module
    cycle they make is found."""
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from . import b\n")
    (pkg / "b.py").write_text("def f():\n    from pkg.a import g\n")
    known = {"pkg": pkg / "__init__.py", "pkg.a": pkg / "a.py", "pkg.b": pkg / "b.py"}
    graph = {m: imports_of(m, p, known) for m, p in known.items()}
    assert graph == {"pkg": set(), "pkg.a": {"pkg.b"}, "pkg.b": {"pkg.a"}}
    assert find_cycles(graph) == ["pkg.a -> pkg.b -> pkg.a"]
