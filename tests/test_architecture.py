"""The package tree is the pipeline: every masksmith import (module level and inside functions) runs down a
declared layer order, no modules import each other in a circle, and inference loads no training code.

The imports are read from the source with `ast`, so an import hidden inside a function counts as much as
one at the top; only imports under `if TYPE_CHECKING:` (never run) are left out of the circle check.
`python tests/test_architecture.py` prints the graph's numbers.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import masksmith

SRC = Path(masksmith.__file__).resolve().parent

# Top to bottom: a stage imports only the stages of lower layers; stages that share a layer do not import each
# other. A stage is a top-level module or package of masksmith ("masksmith" is the package itself: the public
# API), unless STAGES says otherwise.
LAYERS: list[list[str]] = [
    ["masksmith", "cli"],
    ["training", "serve"],
    ["evaluation"],
    ["inference"],
    ["planning", "annotations"],
    ["bundle"],
    ["models", "config"],
    ["data"],
    ["visualize"],
    ["core"],
    ["errors"],
]
# The stage of a module that does not sit in its stage's package (a path below masksmith -> the stage).
STAGES: dict[str, str] = {}
# What inference must never load, directly or through anything it imports.
NOT_FOR_INFERENCE = ("masksmith.training", "masksmith.planning", "albumentations", "lightning")
INFERENCE = "masksmith.inference"


@dataclass(frozen=True)
class Import:
    source: str  # the importing module
    target: str  # the imported masksmith module (or third-party top-level name)
    line: int
    type_checking: bool  # under `if TYPE_CHECKING:`: never runs


def module_files() -> dict[str, Path]:
    """Every masksmith module, by dotted name."""
    found = {}
    for path in sorted(SRC.rglob("*.py")):
        parts = ["masksmith", *path.relative_to(SRC).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _walk(node: ast.AST, guarded: bool = False):
    """Every node with whether it sits under `if TYPE_CHECKING:`."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.If) and _is_type_checking(child.test):
            for sub in child.body:
                yield sub, True
                yield from _walk(sub, True)
            for sub in child.orelse:
                yield sub, guarded
                yield from _walk(sub, guarded)
        else:
            yield child, guarded
            yield from _walk(child, guarded)


def _resolve(name: str, modules: dict[str, Path]) -> str:
    """The module an import names: the longest prefix of `name` that is a masksmith module."""
    parts = name.split(".")
    while parts and ".".join(parts) not in modules:
        parts.pop()
    return ".".join(parts) if parts else name


def read_imports(module: str, path: Path, modules: dict[str, Path], everything: bool = False) -> list[Import]:
    """The masksmith modules `module` imports, anywhere in its source (third-party top-level names too with
    `everything`)."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node, guarded in _walk(ast.parse(path.read_text(encoding="utf-8"))):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                origin = ".".join(base + ([node.module] if node.module else []))
            else:
                origin = node.module or ""
            # `from package import submodule` imports the submodule; `from module import name`, the module.
            names = [f"{origin}.{alias.name}" if f"{origin}.{alias.name}" in modules else origin
                     for alias in node.names]
        for name in dict.fromkeys(names):
            if name == "masksmith" or name.startswith("masksmith."):
                found.append(Import(module, _resolve(name, modules), node.lineno, guarded))
            elif everything:
                found.append(Import(module, name.split(".")[0], node.lineno, guarded))
    return found


def all_imports(everything: bool = False) -> list[Import]:
    modules = module_files()
    return [imp for module, path in modules.items() for imp in read_imports(module, path, modules, everything)]


def place(module: str) -> str:
    """The top-level module or package a module belongs to ("masksmith" for the package itself)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "masksmith"


def stage(module: str) -> str:
    """The pipeline stage a module belongs to."""
    path = module.partition(".")[2]
    for key in sorted(STAGES, key=len, reverse=True):
        if path == key or path.startswith(key + "."):
            return STAGES[key]
    return place(module)


def layer(name: str) -> int:
    """The layer of a stage, counted from the bottom."""
    for rank, stages in enumerate(reversed(LAYERS)):
        if name in stages:
            return rank
    raise AssertionError(f"{name}: not in LAYERS; give it a layer")


def upward(imports: list[Import]) -> dict[str, list[str]]:
    """Imports between stages that do not go to a lower layer, as "from -> to": their modules and lines."""
    found: dict[str, list[str]] = defaultdict(list)
    for imp in imports:
        source, target = stage(imp.source), stage(imp.target)
        if source != target and layer(target) >= layer(source):
            found[f"{source} -> {target}"].append(f"{imp.source}:{imp.line} imports {imp.target}")
    return dict(found)


def circles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one node (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(edges.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for node in sorted(edges):
        if node not in index:
            visit(node)
    return sorted(found)


def module_graph(imports: list[Import]) -> dict[str, set[str]]:
    """Module -> the modules it imports when it runs (TYPE_CHECKING imports left out)."""
    edges: dict[str, set[str]] = defaultdict(set)
    for imp in imports:
        if not imp.type_checking and imp.source != imp.target:
            edges[imp.source].add(imp.target)
    return edges


def stage_graph(imports: list[Import]) -> dict[str, set[str]]:
    edges: dict[str, set[str]] = defaultdict(set)
    for imp in imports:
        source, target = stage(imp.source), stage(imp.target)
        if not imp.type_checking and source != target:
            edges[source].add(target)
    return edges


def loaded_by(roots: list[str], imports: list[Import]) -> dict[str, str]:
    """Every module (and third-party top-level name) `roots` load, with the chain that loads it."""
    graph: dict[str, set[str]] = defaultdict(set)
    for imp in imports:
        if not imp.type_checking:
            graph[imp.source].add(imp.target)
    chains = {root: root for root in roots}
    todo = list(roots)
    while todo:
        module = todo.pop()
        for target in sorted(graph.get(module, ())):
            if target not in chains:
                chains[target] = f"{chains[module]} -> {target}"
                todo.append(target)
    return chains


def numbers() -> dict[str, int]:
    imports = all_imports()
    places = {place(m) for m in module_files()} - {"masksmith"}
    place_edges = {(place(i.source), place(i.target)) for i in imports if place(i.source) != place(i.target)}
    module_edges = {(i.source, i.target) for i in imports if i.source != i.target}
    return {
        "top-level places (modules and packages)": len(places),
        "top-level modules": sum(1 for p in places if (SRC / f"{p}.py").is_file()),
        "import edges between places": len(place_edges),
        "import edges between modules": len(module_edges),
        "imports that run back up the layers": sum(len(v) for v in upward(imports).values()),
        "module circles": len(circles(module_graph(imports))),
        "import edges between stages": len({(stage(i.source), stage(i.target)) for i in imports
                                            if stage(i.source) != stage(i.target)}),
        "stage circles": len(circles(stage_graph(imports))),
    }


def test_every_stage_has_a_layer():
    stages = {stage(m) for m in module_files()}
    declared = [name for names in LAYERS for name in names]
    assert sorted(stages - set(declared)) == []
    assert len(declared) == len(set(declared))


def test_imports_run_down_the_layers():
    assert upward(all_imports()) == {}


def test_no_modules_import_each_other_in_a_circle():
    imports = all_imports()
    assert circles(module_graph(imports)) == []
    assert circles(stage_graph(imports)) == []


def test_inference_imports_no_training_code():
    # Resizing and normalizing for inference (data.transforms) and loading weights (models.weights) are
    # modules of their own so that predicting reaches neither augmentation nor the smp extra.
    roots = [m for m in module_files() if m == INFERENCE or m.startswith(INFERENCE + ".")]
    chains = loaded_by(roots, all_imports(everything=True))
    assert {m: chain for m, chain in chains.items() if m.startswith(NOT_FOR_INFERENCE)} == {}


def test_loading_inference_loads_no_training_code():
    # The same in a fresh interpreter: what importing every inference module really loads.
    modules = [m for m in module_files() if m.startswith(INFERENCE + ".")]
    code = (f"import sys, {', '.join(modules)}; "
            f"print(sorted(m for m in sys.modules if m.startswith({NOT_FOR_INFERENCE!r})))")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True, timeout=300)
    assert out.stdout.strip() == "[]"


def test_the_test_folders_mirror_the_packages():
    tests = Path(__file__).resolve().parent
    folders = {path.parent.relative_to(tests) for path in tests.rglob("test_*.py")} - {Path(".")}
    assert sorted(str(folder) for folder in folders if not (SRC / folder).is_dir()) == []


def test_the_checker_sees_hidden_imports(tmp_path):
    # Regression guard for the checker itself: an import inside a function counts, one under TYPE_CHECKING
    # is left out of the circles, and a circle through two modules is found.
    (tmp_path / "a.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import masksmith.c\n"
                                   "def f():\n    from masksmith.b import g\n", encoding="utf-8")
    (tmp_path / "b.py").write_text("import masksmith.a\n", encoding="utf-8")
    modules = {"masksmith.a": tmp_path / "a.py", "masksmith.b": tmp_path / "b.py", "masksmith.c": tmp_path}
    found = [imp for m in ("masksmith.a", "masksmith.b") for imp in read_imports(m, modules[m], modules)]
    assert sorted((i.source, i.target, i.type_checking) for i in found) == [
        ("masksmith.a", "masksmith.b", False), ("masksmith.a", "masksmith.c", True), ("masksmith.b", "masksmith.a", False)]
    assert circles(module_graph(found)) == [["masksmith.a", "masksmith.b"]]


if __name__ == "__main__":
    for name, value in numbers().items():
        print(f"{value:5d}  {name}")
    for key, where in sorted(upward(all_imports()).items()):
        print(f"back up: {key}: " + "; ".join(where))
    for circle in circles(module_graph(all_imports())):
        print("circle: " + " <-> ".join(circle))
