"""The package layout of docs/design.md: imports flow in one direction and nothing imports in a
cycle (read from the source, every import statement, lazy ones included)."""

import ast
from pathlib import Path

import networkx as nx

ROOT = Path(__file__).resolve().parents[1] / "lavaconv"
INFRASTRUCTURE = {"errors", "signals", "distributed"}  # may be imported by every stage
ORDER = [{"ir"}, {"frontend"}, {"ann"}, {"sim"}, {"conversion"}, {"quantize"},
         {"lava", "cost"}, {"export"}, {"app"}]
RANK = {pkg: i for i, group in enumerate(ORDER) for pkg in group}


def _module(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Every ``lavaconv.*`` module that ``path`` imports (names imported from a package count
    as the package)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith(
                "lavaconv"):
            out.add(node.module)
            out.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.startswith("lavaconv"))
    return out


def _graph() -> nx.DiGraph:
    files = {_module(p): p for p in ROOT.rglob("*.py")}
    graph = nx.DiGraph()
    graph.add_nodes_from(files)
    for name, path in files.items():
        graph.add_edges_from((name, dep) for dep in _imports(path) if dep in files
                             and dep != name and not name.startswith(dep + "."))
    return graph


def _package(module: str) -> str:
    return module.split(".")[1] if module.count(".") else ""


def test_stages_import_only_upstream():
    wrong = []
    for a, b in _graph().edges:
        pa, pb = _package(a), _package(b)
        if pa in ("", "__main__") or pa == pb or pb in INFRASTRUCTURE:
            continue
        if pa in INFRASTRUCTURE or pb not in RANK or RANK[pb] >= RANK.get(pa, -1):
            wrong.append(f"{a} -> {b}")
    assert wrong == []


def test_no_import_cycle():
    graph = _graph()
    assert list(nx.simple_cycles(graph)) == []
    packages = nx.DiGraph((_package(a), _package(b)) for a, b in graph.edges
                          if _package(a) != _package(b) and _package(a))
    assert list(nx.simple_cycles(packages)) == []


def test_the_check_sees_imports():
    """The walker is not vacuous: deploy reads the session, the engine the IR."""
    graph = _graph()
    assert graph.has_edge("lavaconv.app.deploy", "lavaconv.app.session")
    assert graph.has_edge("lavaconv.sim.engine", "lavaconv.ir.network")
    assert graph.number_of_edges() > 100
