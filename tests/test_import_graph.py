"""The package's imports point one way: no module imports one that imports it back.

The graph is read from the source (``ast``), not from ``sys.modules``: every import
counts, at module level, under ``TYPE_CHECKING`` and inside functions, since each is
a dependency a reader must follow and a lazy import only hides a circle.  An edge
from a module to its own parent packages is left out: Python runs a package's
``__init__`` before any of its submodules, whoever imports them.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "hornbeam_trio"
ROOT = PACKAGE.parent


def module_files() -> dict[str, tuple[Path, bool]]:
    """Dotted name -> (file, is a package's __init__)."""
    modules = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        if is_package:
            parts.pop()
        modules[".".join(parts)] = (path, is_package)
    return modules


def import_graph(*, run_time_only: bool = False) -> dict[str, set[str]]:
    """Module -> the package's modules it imports (``run_time_only``: not the ones
    imported for the type checker alone, under ``if TYPE_CHECKING:``)."""
    modules = module_files()
    graph: dict[str, set[str]] = {}
    for name, (path, is_package) in modules.items():
        tree = ast.parse(path.read_text(), str(path))
        if run_time_only:
            for node in ast.walk(tree):
                if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                    node.body = []
        here = name.split(".") if is_package else name.split(".")[:-1]
        parents = {".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 1)}
        targets: set[str] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = here[: len(here) - node.level + 1]
                    module = ".".join(base + ([node.module] if node.module else []))
                else:
                    module = node.module or ""
                candidates = [module] + [f"{module}.{alias.name}" for alias in node.names]
            elif isinstance(node, ast.Import):
                candidates = [alias.name for alias in node.names]
            else:
                continue
            targets.update(c for c in candidates if c in modules)
        graph[name] = targets - parents - {name}
    return graph


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph[node]):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_graph_sees_the_imports_it_must_judge() -> None:
    """A reader that missed relative, lazy or TYPE_CHECKING imports would pass anything."""
    graph = import_graph()
    assert "hornbeam_trio.ws_conn" in graph["hornbeam_trio.http_conn"]  # relative
    assert "hornbeam_trio.workers" in graph["hornbeam_trio.runner"]  # inside a function
    assert "hornbeam_trio.server_context" in graph["hornbeam_trio.http_conn"]  # TYPE_CHECKING
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_module_imports_one_that_imports_it_back() -> None:
    assert circles(import_graph()) == []


def test_nothing_below_the_server_imports_it() -> None:
    """Connections reach their server through server_context's ServerContext only."""
    importers = {
        name
        for name, targets in import_graph().items()
        if "hornbeam_trio.server" in targets and not name.startswith("hornbeam_trio.testing.")
    }  # the testing toolkit runs servers: it sits above them
    assert importers <= {
        "hornbeam_trio",  # the public names
        "hornbeam_trio.process",  # StartupFailed, for the exit code
        "hornbeam_trio.runner",
        "hornbeam_trio.workers",
        "hornbeam_trio.testing",
    }


def test_leaf_modules_import_nothing_of_ours_at_run_time() -> None:
    """The protocol cores may share code among themselves (protocol/headers.py), nothing
    from above them."""
    graph = import_graph(run_time_only=True)
    leaves = {
        name: graph[name] - {t for t in graph[name] if t.startswith("hornbeam_trio.protocol.")}
        if name.startswith("hornbeam_trio.protocol")
        else graph[name]
        for name in graph
        if name in {"hornbeam_trio.config", "hornbeam_trio.types", "hornbeam_trio.server_context"}
        or name.startswith("hornbeam_trio.protocol")
    }
    assert {name: targets for name, targets in leaves.items() if targets} == {}
