"""The shape of the code, checked from the source: no import loops, imports in one direction.

apps (cli, demo, app, scan, config) -> service -> pipeline -> sources / outputs -> detector.
HTTP routes sit beside the service and see it only through ``StreamRegistry``.  Imports
under ``TYPE_CHECKING`` count: a loop for the type checker is still a loop in the design.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("detector", "stream", "training")

# Which layer each module belongs to (first matching prefix wins) and which layers each may import.
LAYERS: list[tuple[str, str]] = [
    ("detector", "detector"),
    ("training", "training"),
    ("stream.sources", "sources"),
    ("stream.outputs", "outputs"),
    ("stream.web", "web"),
    ("stream.pipeline", "pipeline"),
    ("stream.registry", "pipeline"),
    ("stream.recorder", "pipeline"),
    ("stream.service", "service"),
    ("stream.logs", "base"),
    ("stream.sampler", "base"),
    ("stream.scoring", "base"),
    ("stream.alerts", "base"),
    ("stream.demo_media", "base"),
    ("stream.evaluate", "base"),
    ("stream.sharding", "base"),
    ("stream", "apps"),  # app, cli, demo, scan, config, and anything new at the top
]
MAY_IMPORT: dict[str, set[str]] = {
    "detector": {"detector"},
    "training": {"training", "detector"},
    "base": {"base", "detector"},
    "sources": {"sources", "base", "detector"},
    "outputs": {"outputs", "base", "detector"},
    "pipeline": {"pipeline", "sources", "outputs", "base", "detector"},
    "service": {"service", "pipeline", "sources", "outputs", "base", "detector"},
    "web": {"web", "pipeline", "sources", "outputs", "base", "detector"},  # never the service itself
    "apps": {"apps", "service", "web", "pipeline", "sources", "outputs", "base", "detector", "training"},
}


def layer(module: str) -> str:
    for prefix, name in LAYERS:
        if module == prefix or module.startswith(prefix + "."):
            return name
    raise AssertionError(f"{module} belongs to no layer: add it to LAYERS")


def project_modules() -> dict[str, Path]:
    modules: dict[str, Path] = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            modules[name.removesuffix(".__init__")] = path
    return modules


def import_graph(modules: dict[str, Path]) -> dict[str, set[str]]:
    """module -> the project modules it imports (``from a.b import c`` counts as a.b, or a.b.c when that is a module)."""

    def resolve(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {m: set() for m in modules}
    for module, path in modules.items():
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                    base = ".".join(parts + ([base] if base else []))
                targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
            for target in targets:
                found = resolve(target)
                if found is not None and found != module:
                    graph[module].add(found)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    return import_graph(project_modules())


def test_no_import_cycles(graph: dict[str, set[str]]) -> None:
    assert cycles(graph) == []


def test_imports_point_one_way(graph: dict[str, set[str]]) -> None:
    wrong = [
        f"{module} ({layer(module)}) imports {target} ({layer(target)})"
        for module, targets in sorted(graph.items())
        for target in sorted(targets)
        if layer(target) not in MAY_IMPORT[layer(module)]
    ]
    assert wrong == []


def test_the_checker_sees_a_planted_cycle_and_a_wrong_direction(tmp_path: Path) -> None:
    """The two checks above can fail: a loop and an upward import are found in a throwaway tree."""
    (tmp_path / "a.py").write_text("from b import x\n")
    (tmp_path / "b.py").write_text("import typing\nif typing.TYPE_CHECKING:\n    import a\n")
    modules = {"a": tmp_path / "a.py", "b": tmp_path / "b.py"}
    assert cycles(import_graph(modules)) == [["a", "b"]]
    assert "service" not in MAY_IMPORT[layer("stream.web.health")]
    assert {layer(t) for t in import_graph(project_modules())["detector.engine"]} <= {"detector"}
