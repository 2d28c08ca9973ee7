"""The house's layers: imports point one way, and no module imports itself back round a cycle.

``errors, utils -> nn -> losses, metrics, datamodules, release -> tasks -> evaluation, benchmarks -> cli``
(read "A -> B" as "B may import A"). Every module of src/litbrain and datamodules/ is read with
``ast`` -- imports inside functions too, since a lazy import is still a dependency -- and every
``litbrain.*`` import must point at the module's own top-level package or a lower layer. The
checker is shown to catch a reversed import and a cycle on a synthetic tree, not only to pass.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
ROOTS = {"litbrain": REPO / "src" / "litbrain", "litbrain.datamodules": REPO / "datamodules"}

# Layer of each top-level part of the package; a module may import its own part or a lower layer.
LAYERS = {
    "": 0,  # litbrain/__init__.py (the version)
    "errors": 0,
    "utils": 1, "slurm": 1,
    "nn": 2,
    "losses": 3, "metrics": 3, "datamodules": 3, "release": 3,
    "tasks": 4, "callbacks": 4,
    "evaluation": 5, "benchmarks": 5,
    "cli": 6,
}


def module_files(roots: dict[str, Path]) -> dict[str, Path]:
    """``{dotted module name: file}`` for every .py file under the roots (an __init__ names its package)."""
    out: dict[str, Path] = {}
    for prefix, root in roots.items():
        for path in sorted(root.rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join([prefix, *parts])] = path
    return out


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    """The longest known module that ``name`` is or lies in (``a.b.c`` -> ``a.b`` for an attribute c)."""
    while name:
        if name in modules:
            return name
        name = name.rpartition(".")[0]
    return None


def imports_of(module: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """litbrain modules that ``module`` imports anywhere in its file (top level or inside functions)."""
    is_pkg = path.name == "__init__.py"
    package = module if is_pkg else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            names = [f"{base}.{a.name}" for a in node.names] + [base]
        for n in names:
            if n.split(".")[0] != "litbrain":
                continue
            target = _resolve(n, modules)
            if target and target != module:
                found.add(target)
    return found


def part_of(module: str) -> str:
    rest = module.split(".")[1:]
    return rest[0] if rest else ""


def violations(roots: dict[str, Path], layers: dict[str, int] = LAYERS) -> list[str]:
    """Every import against the layer order, every unknown part, and every import cycle."""
    modules = module_files(roots)
    graph = {m: imports_of(m, p, modules) for m, p in modules.items()}
    problems = []
    for m, targets in sorted(graph.items()):
        pm = part_of(m)
        if pm not in layers:
            problems.append(f"{m}: part {pm!r} has no layer (add it to LAYERS)")
            continue
        for t in sorted(targets):
            pt = part_of(t)
            if pt == pm or pt == "":
                continue
            if layers.get(pt, 99) > layers[pm]:
                problems.append(f"{m} imports {t}: layer {pt!r} ({layers.get(pt)}) is above {pm!r} ({layers[pm]})")
            elif layers.get(pt) == layers[pm]:
                problems.append(f"{m} imports {t}: {pt!r} and {pm!r} are siblings of one layer")
    # cycles (Tarjan's strongly connected components)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                problems.append(f"import cycle: {' -> '.join(sorted(comp))}")

    for v in graph:
        if v not in index:
            visit(v)
    return problems


def test_the_package_follows_the_layer_order_and_has_no_cycles():
    modules = module_files(ROOTS)
    assert len(modules) > 50 and "litbrain.datamodules.fmri.prepare" in modules  # both roots were read
    assert violations(ROOTS) == []


def _tree(tmp_path: Path, files: dict[str, str]) -> dict[str, Path]:
    for rel, text in files.items():
        p = tmp_path / "litbrain" / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    return {"litbrain": tmp_path / "litbrain"}


BASE = {"__init__.py": "", "nn/__init__.py": "", "nn/model.py": "import torch\n", "tasks/__init__.py": "",
        "tasks/task.py": "from litbrain.nn.model import x\n", "errors.py": ""}


def test_the_checker_passes_a_clean_synthetic_tree(tmp_path):
    assert violations(_tree(tmp_path, BASE)) == []


def test_the_checker_catches_a_reversed_import_even_inside_a_function(tmp_path):
    bad = {**BASE, "nn/model.py": "def build():\n    from litbrain.tasks.task import Task\n    return Task\n"}
    found = violations(_tree(tmp_path, bad))
    assert any("litbrain.nn.model imports litbrain.tasks.task" in v and "above" in v for v in found), found


def test_the_checker_catches_a_cycle_and_relative_imports(tmp_path):
    cyc = {**BASE, "nn/a.py": "from . import b\n", "nn/b.py": "from .a import f\n"}
    found = violations(_tree(tmp_path, cyc))
    assert "import cycle: litbrain.nn.a -> litbrain.nn.b" in found, found


def test_the_checker_catches_sibling_imports_and_unknown_parts(tmp_path):
    odd = {**BASE, "release/__init__.py": "import litbrain.metrics\n", "metrics.py": "", "misc.py": ""}
    found = violations(_tree(tmp_path, odd))
    assert any("siblings" in v for v in found) and any("'misc' has no layer" in v for v in found), found


@pytest.mark.parametrize("module", ["litbrain.nn.fmri_decoder", "litbrain.tasks.base", "litbrain.release.source"])
def test_lazy_imports_are_read(module):
    """The graph holds imports made inside functions (the reason the old code's cycles hid)."""
    modules = module_files(ROOTS)
    assert imports_of(module, modules[module], modules), module
