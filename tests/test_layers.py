"""The package's layers, read from the source with `ast` (imports inside functions included):

    0  modernbert_edge/*.py (contract, manifest, errors, folders, safetensors, timing, cpu)
    1  runtime/, modernbert_edge/cli_options.py (the shared CLI options, over runtime/options.py)
    2  export/, quantize/, serve/, scaleout/, demo.py
    3  bench/
    4  cli.py (registers every package's commands)

A module imports only from its own layer and those below.
`if TYPE_CHECKING:` blocks are left out: they name types for annotations and never run. The runtime
never imports the exporter; nothing but bench itself (and the CLI, which registers
`mbedge bench`) imports bench; and no two modules import each other, directly or through others.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = {  # pyproject.toml's package-dir
    "modernbert_edge": "modernbert_edge",
    "modernbert_edge.export": "export",
    "modernbert_edge.runtime": "runtime",
    "modernbert_edge.quantize": "quantize",
    "modernbert_edge.bench": "bench",
    "modernbert_edge.ray": "scaleout",
    "modernbert_edge.serve": "serve",
}
# The composition root: `mbedge` registers each package's commands, `mbedge bench` included.
MAY_IMPORT_BENCH = {"modernbert_edge.cli"}
# Each module's layer (the docstring's picture); a module imports only from its own layer and below.
TOP = {
    "modernbert_edge.cli": 4,
    # The typer declarations of the shared options, read by every package's commands (runtime's `mbedge
    # run` included); they take defaults, choices and help texts from runtime/options.py.
    "modernbert_edge.cli_options": 1,
}
LAYERS = {
    "modernbert_edge.demo": 2,  # export -> quantize -> runtime, on the bundled model
    "modernbert_edge.runtime": 1,
    "modernbert_edge.export": 2,
    "modernbert_edge.quantize": 2,
    "modernbert_edge.serve": 2,
    "modernbert_edge.ray": 2,
    "modernbert_edge.bench": 3,
}


def layer_of(name: str) -> int:
    if name in TOP:
        return TOP[name]
    return next((rank for prefix, rank in LAYERS.items() if name == prefix or name.startswith(prefix + ".")), 0)


KNOWN_CYCLES: set[tuple[str, str]] = set()  # none; an entry would need a reason beside it


def modules() -> dict[str, Path]:
    found = {}
    for package, folder in FOLDERS.items():
        for path in sorted((ROOT / folder).glob("*.py")):
            found[package if path.stem == "__init__" else f"{package}.{path.stem}"] = path
    return found


def _run_time_nodes(tree: ast.AST) -> list[ast.AST]:
    """Every node of the tree but those under `if TYPE_CHECKING:` (names for annotations, never imported)."""
    nodes, todo = [], [tree]
    while todo:
        node = todo.pop()
        nodes.append(node)
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and ast.unparse(child.test).endswith("TYPE_CHECKING"):
                todo.extend(child.orelse)
            else:
                todo.append(child)
    return nodes


def imports(path: Path, name: str, known: set[str]) -> set[str]:
    """The project modules `path` imports when it runs: at module level or inside functions (lazily)."""
    package = name if path.stem == "__init__" else name.rpartition(".")[0]
    found = set()
    for node in _run_time_nodes(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            parts = package.split(".")[: len(package.split(".")) - max(node.level - 1, 0)] if node.level else []
            base = ".".join([*parts, *([node.module] if node.module else [])])
            targets = [f"{base}.{a.name}" for a in node.names] + [base]
        else:
            continue
        for target in targets:
            while target and target not in known:  # `from pkg import module` or `import pkg.module.attr`
                target = target.rpartition(".")[0]
            if target and target != name and target not in FOLDERS:  # a package __init__ is not a layer
                found.add(target)
    return found


def unresolved(path: Path, name: str, known: set[str]) -> list[str]:
    """The project modules `path` imports (lazily too) that do not exist: a module moved but a caller left."""
    package = name if path.stem == "__init__" else name.rpartition(".")[0]
    missing = []
    for node in _run_time_nodes(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            bases = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            parts = package.split(".")[: len(package.split(".")) - max(node.level - 1, 0)] if node.level else []
            bases = [".".join([*parts, *([node.module] if node.module else [])])]
        else:
            continue
        missing += [b for b in bases if b.startswith("modernbert_edge") and b not in known and b not in FOLDERS]
    return missing


GRAPH = {name: imports(path, name, set(modules())) for name, path in modules().items()}


@pytest.mark.parametrize("name", sorted(modules()))
def test_every_project_import_resolves(name):
    assert not unresolved(modules()[name], name, set(modules()))


def test_the_walk_sees_lazy_imports():
    assert "modernbert_edge.export.exporter" in GRAPH["modernbert_edge.export.commands"]  # inside a function


@pytest.mark.parametrize("name", sorted(n for n in GRAPH if n.startswith("modernbert_edge.runtime")))
def test_runtime_never_imports_the_exporter(name):
    assert not [t for t in GRAPH[name] if t.startswith("modernbert_edge.export")]


@pytest.mark.parametrize("name", sorted(n for n in GRAPH if not n.startswith("modernbert_edge.bench")))
def test_only_bench_imports_bench(name):
    if name in MAY_IMPORT_BENCH:
        return
    assert not [t for t in GRAPH[name] if t.startswith("modernbert_edge.bench")]


@pytest.mark.parametrize("name", sorted(GRAPH))
def test_no_module_imports_upward(name):
    assert not [t for t in GRAPH[name] if layer_of(t) > layer_of(name)], f"layer {layer_of(name)}"


def test_no_import_cycles():
    cycles, state = [], {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = "open"
        for target in sorted(GRAPH.get(node, ())):
            if (node, target) in KNOWN_CYCLES:
                continue
            if state.get(target) == "open":
                cycles.append(" -> ".join([*stack[stack.index(target) :], target]))
            elif target not in state:
                visit(target, [*stack, target])
        state[node] = "done"

    for name in sorted(GRAPH):
        if name not in state:
            visit(name, [name])
    assert not cycles, "\n".join(cycles)
