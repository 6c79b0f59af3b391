"""The import graph of pipelines/ and evals/: one way down the layers, no cycles, nothing imports the CLI.

Every module is parsed with ``ast``, so imports inside functions (the lazy ones that hide a
cycle from Python) count as much as those at the top.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent

# Low to high (docs/architecture.md). A module imports only from its
# own rank or a lower one. The most specific prefix wins.
RANKS: dict[str, int] = {
    "pipelines.errors": 0, "pipelines.environment": 0, "pipelines.logconfig": 0,
    "pipelines.compute": 0, "pipelines.geometry": 0,
    "pipelines.recipes": 1, "pipelines.rundir": 1, "pipelines.llamacpp": 1,
    "evals": 2, "pipelines.quantizers": 2,
    "pipelines.engines": 2,  # serving engines: start, health, stop (the serve stage drives them)
    "pipelines.signoff": 3,
    "pipelines.stages": 4,
    "pipelines.tracking": 5,
    "pipelines.execution": 6,
    # Tools the CLI calls beside the sweep: they may use everything below the CLI.
    "pipelines.bench_eval": 6, "pipelines.catalog": 6, "pipelines.machine": 6,
    "pipelines.cli": 7, "pipelines.__main__": 7, "pipelines": 7,
}
# Libraries that take seconds to import: only inside functions, so `qeval --help`, planning and
# a cached rerun stay fast.
HEAVY = ("torch", "transformers", "mlflow", "lm_eval", "ray", "gptqmodel", "llmcompressor", "bitsandbytes",
         "torchao", "datasets", "matplotlib")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO_ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def project_modules() -> dict[str, Path]:
    files = [p for top in ("pipelines", "evals") for p in (REPO_ROOT / top).rglob("*.py")
             if "__pycache__" not in p.parts]
    return {module_name(p): p for p in sorted(files)}


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> list[tuple[str, int, bool]]:
    """(imported project module, line, at module level) for every import statement in the file."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    top_level = {id(node) for node in tree.body}
    found = []
    for node in ast.walk(tree):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            # `from pkg import sub` imports the submodule when there is one, else names of pkg.
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
        else:
            continue
        for target in targets:
            found.append((target, node.lineno, id(node) in top_level))
    return found


def rank(module: str) -> int | None:
    best = max((p for p in RANKS if module == p or module.startswith(p + ".")), key=len, default=None)
    return RANKS[best] if best is not None else None


@pytest.fixture(scope="module")
def graph() -> dict[str, list[tuple[str, int, bool]]]:
    modules = project_modules()
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def project_edges(graph) -> dict[str, set[str]]:
    modules = set(project_modules())
    edges: dict[str, set[str]] = {name: set() for name in graph}
    for name, imports in graph.items():
        for target, _, _ in imports:
            # The closest project module the import names (a.b.c of a.b.c.func is a.b.c).
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target and target != name:
                edges[name].add(target)
    return edges


def test_every_module_has_a_rank(graph):
    unranked = sorted(name for name in graph if rank(name) is None)
    assert not unranked, f"give these modules a layer in RANKS (and docs/architecture.md): {unranked}"


def test_no_import_goes_up_the_layers(graph):
    edges = project_edges(graph)
    upward = sorted(f"{a} (rank {rank(a)}) imports {b} (rank {rank(b)})"
                    for a, targets in edges.items() for b in targets
                    if rank(a) is not None and rank(b) is not None and rank(b) > rank(a))
    assert not upward, "imports that go up the layers:\n" + "\n".join(upward)


def test_nothing_imports_the_cli(graph):
    edges = project_edges(graph)
    importers = sorted(a for a, targets in edges.items() if "pipelines.cli" in targets and a != "pipelines.__main__")
    assert not importers, f"only `python -m pipelines` may import pipelines.cli: {importers}"


def strongly_connected(edges: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm, iterative: the components with more than one module are cycles."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []
    counter = 0
    for root in sorted(edges):
        if root in index:
            continue
        work = [(root, iter(sorted(edges[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    components.append(sorted(component))
    return components


def test_no_import_cycles(graph):
    cycles = strongly_connected(project_edges(graph))
    assert not cycles, "modules that import each other (directly or through others):\n" + "\n".join(
        " <-> ".join(c) for c in cycles)


def test_heavy_libraries_are_imported_lazily(graph):
    eager = sorted(f"{name}:{line} imports {target}" for name, imports in graph.items()
                   for target, line, at_top in imports if at_top and target.split(".")[0] in HEAVY)
    assert not eager, "heavy libraries imported at module level:\n" + "\n".join(eager)


def test_the_walker_sees_lazy_imports_and_cycles():
    """The checks can fail: a lazy import inside a function is an edge, and a two-module cycle is found."""
    modules = project_modules()
    edges = project_edges({"pipelines.cli": imports_of("pipelines.cli", modules["pipelines.cli"], modules)})
    assert "pipelines.execution.runner" in edges["pipelines.cli"]  # imported inside cmd_run only
    assert strongly_connected({"a": {"b"}, "b": {"a"}, "c": {"a"}}) == [["a", "b"]]
    assert rank("pipelines.stages.keys") == 4 and rank("pipelines.rundir.paths") == 1
