"""What each stage may import, read from the import graph (lazy imports included) as import-linter reads it."""

import pytest

grimp = pytest.importorskip("grimp", reason="grimp comes with import-linter (the dev extra)")


@pytest.fixture(scope="module")
def graph():
    return grimp.build_graph("merino_edge")


def imports(graph, package: str, *, transitive: bool) -> set[str]:
    """The merino_edge modules outside `package` that a module of it imports."""
    inside = {m for m in graph.modules if m == package or m.startswith(package + ".")}
    found = set()
    for module in inside:
        found |= graph.find_upstream_modules(module) if transitive else graph.find_modules_directly_imported_by(module)
    return {m for m in found - inside if m.startswith("merino_edge.")}


def under(modules: set[str], *packages: str) -> set[str]:
    return {m for m in modules if any(m == p or m.startswith(p + ".") for p in packages)}


def test_jetson_reaches_no_later_stage(graph):
    reached = imports(graph, "merino_edge.jetson", transitive=True)
    assert not under(reached, "merino_edge.export", "merino_edge.runtime", "merino_edge.profiling")
    assert reached <= {"merino_edge.errors", "merino_edge.host"}


def test_export_imports_neither_profiling_nor_jetson(graph):
    assert not under(imports(graph, "merino_edge.export", transitive=False), "merino_edge.profiling", "merino_edge.jetson")
    assert not under(imports(graph, "merino_edge.export", transitive=True), "merino_edge.profiling")


def test_runtime_reads_the_bundle_formats_not_the_export_stage(graph):
    assert not under(imports(graph, "merino_edge.runtime", transitive=True), "merino_edge.export", "merino_edge.profiling")
