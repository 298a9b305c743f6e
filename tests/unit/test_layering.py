"""The layering, checked on the import graph of the sources (grimp, import-linter's library).

Every import counts, those under `if TYPE_CHECKING:` and inside functions included: a module
that needs another to be read takes part in its cycle whether Python runs the import or not.
The rules (issue 15): `proxy/` (the data plane) never imports `controller/`, `conformance/`,
`tests/` or kubernetes-asyncio; `controller/` never imports `conformance/` or `tests/`; only the
API edge, `controller/kube/`, imports kubernetes-asyncio, and it does not reach into the data
plane or the wiring; and there is no import cycle among the modules of `proxy/`, `controller/`
and `conformance/`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Set

import grimp
import pytest

PACKAGES = ("proxy", "controller", "conformance")

# (importer, imported, why): neither the importer nor any module under it may import the
# imported module or anything under it.
FORBIDDEN = (
    ("proxy", "controller", "workers run without the controller"),
    ("proxy", "conformance", "the product does not depend on its test suite"),
    ("proxy", "tests", "the product does not depend on its tests"),
    ("proxy", "kubernetes_asyncio", "workers never talk to the API server"),
    ("controller", "conformance", "the product does not depend on its test suite"),
    ("controller", "tests", "the product does not depend on its tests"),
    # The API edge parses and writes API objects; controller/app.py wires it to the rest.
    ("controller.kube", "controller.app", "controller/kube/ is only the API edge"),
    ("controller.kube", "controller.cli", "controller/kube/ is only the API edge"),
    ("controller.kube", "controller.settings", "controller/kube/ is only the API edge"),
    ("controller.kube", "controller.publisher", "controller/kube/ is only the API edge"),
    ("controller.kube", "controller.workers", "controller/kube/ is only the API edge"),
    ("controller.kube", "controller.admin", "controller/kube/ is only the API edge"),
    ("controller.kube", "controller.metrics", "controller/kube/ is only the API edge"),
    ("controller.kube", "controller.reconciler", "controller/kube/ is only the API edge"),
)

# External packages that, inside a package, only one of its subpackages may import:
# (external, package, subpackage). conformance/cluster.py talks to a real cluster itself.
CONFINED = (("kubernetes_asyncio", "controller", "controller.kube"),)


@pytest.fixture(scope="module")
def graph() -> grimp.ImportGraph:
    return grimp.build_graph(*PACKAGES, include_external_packages=True, cache_dir=None)


def _within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def cycles(edges: Mapping[str, Set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in sorted(edges):
        if root in index:
            continue
        work = [(root, iter(sorted(edges[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
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
    return found


def internal_edges(graph: grimp.ImportGraph, package: str | None = None) -> dict[str, set[str]]:
    """Imports between the modules of PACKAGES (of `package` only, when given)."""
    keep = [m for m in graph.modules if not graph.is_module_squashed(m)]
    if package is not None:
        keep = [m for m in keep if _within(m, package)]
    kept = set(keep)
    return {m: graph.find_modules_directly_imported_by(m) & kept for m in keep}


def _describe(graph: grimp.ImportGraph, component: Iterable[str]) -> str:
    """The shortest loop through the first module of a cycle, for the reader to start from."""
    first, *rest = sorted(component)
    loops = []
    for other in rest:
        there = graph.find_shortest_chain(importer=first, imported=other)
        back = graph.find_shortest_chain(importer=other, imported=first)
        if there and back:
            loops.append([*there, *back[1:]])
    if not loops:
        return ", ".join(sorted(component))
    return " -> ".join(min(loops, key=len)) + f" (cycle of {len(rest) + 1} modules)"


def test_cycle_finder_finds_cycles() -> None:
    edges = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": {"e2"}, "e2": set()}
    assert cycles(edges) == [["a", "b", "c"]]
    assert cycles({"x": {"y"}, "y": set()}) == []


@pytest.mark.parametrize("package", PACKAGES)
def test_no_import_cycle_inside(graph: grimp.ImportGraph, package: str) -> None:
    found = [_describe(graph, c) for c in cycles(internal_edges(graph, package))]
    assert found == [], "import cycles (type-only imports count):\n" + "\n".join(found)


def test_no_import_cycle_across_packages(graph: grimp.ImportGraph) -> None:
    found = [_describe(graph, c) for c in cycles(internal_edges(graph))]
    assert found == [], "import cycles (type-only imports count):\n" + "\n".join(found)


@pytest.mark.parametrize(
    ("importer", "imported", "why"), FORBIDDEN, ids=[f"{a}-{b}" for a, b, _ in FORBIDDEN]
)
def test_forbidden_imports(
    graph: grimp.ImportGraph, importer: str, imported: str, why: str
) -> None:
    offending = sorted(
        f"{m} imports {i}"
        for m in graph.modules
        if _within(m, importer)
        for i in graph.find_modules_directly_imported_by(m)
        if _within(i, imported)
    )
    assert offending == [], f"{why}: " + "; ".join(offending)


@pytest.mark.parametrize(("external", "package", "edge"), CONFINED)
def test_confined_external_packages(
    graph: grimp.ImportGraph, external: str, package: str, edge: str
) -> None:
    importers = graph.find_modules_that_directly_import(external)
    importers = {m for m in importers if _within(m, package)}
    assert importers, f"nothing in {package} imports {external}: the rule checks nothing"
    outside = sorted(m for m in importers if not _within(m, edge))
    assert outside == [], f"in {package}, only {edge} may import {external}: {outside}"
