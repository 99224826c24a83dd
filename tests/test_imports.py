"""The package's imports point one way: no module of ``mgd_ray`` imports (at the top or inside a
function) a module that imports it back, directly or through others; and the product imports
nothing from the checkout-only ``benchmarks`` package."""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "mgd_ray"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PKG.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_main_guard(node: ast.AST) -> bool:
    """``if __name__ == "__main__":``: code run only when the file is the script, a different
    module object than the package's (``python -m mgd_ray.x`` runs it as ``__main__``)."""
    t = getattr(node, "test", None)
    return (isinstance(node, ast.If) and isinstance(t, ast.Compare) and isinstance(t.left, ast.Name)
            and t.left.id == "__name__" and any(isinstance(c, ast.Constant) and c.value == "__main__"
                                                for c in t.comparators))


def imports_of(path: Path, modules: set[str]) -> set[str]:
    """Every package module ``path`` imports, at any depth of the file (functions included)."""
    me = module_name(path)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    out: set[str] = set()
    stack = list(ast.parse(path.read_text()).body)
    while stack:
        node = stack.pop()
        if _is_main_guard(node):
            continue
        stack.extend(ast.iter_child_nodes(node))
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            names = [base] + [f"{base}.{a.name}" for a in node.names]
        else:
            continue
        for n in names:
            if n.split(".")[0] == "benchmarks":
                out.add(n)
            while n and n not in modules:   # an imported name -> the module that holds it
                n = n.rpartition(".")[0]
            if n and n != me:
                out.add(n)
    return out


def import_graph() -> dict[str, set[str]]:
    files = [p for p in PKG.rglob("*.py") if "__pycache__" not in p.parts]
    modules = {module_name(p) for p in files}
    graph = {module_name(p): imports_of(p, modules) for p in files}
    # a package's __init__ that re-exports its own children is not a cycle with them
    return {m: {d for d in deps if not d.startswith(m + ".")} for m, deps in graph.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        path.append(m)
        for d in sorted(graph.get(m, ())):
            if state.get(d) == 1:
                return path[path.index(d):] + [d]
            if d not in state:
                c = visit(d)
                if c:
                    return c
        path.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state:
            c = visit(m)
            if c:
                return c
    return None


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_the_graph_sees_lazy_relative_imports():
    g = import_graph()
    assert "mgd_ray.config" in g["mgd_ray.cli"]            # a function-level `from .config import ...`
    assert "mgd_ray.pipeline.store" in g["mgd_ray.pipeline.runner"]


def test_no_import_cycle_in_the_package():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_product_does_not_import_the_benchmarks():
    bad = {m: sorted(d for d in deps if d.split(".")[0] == "benchmarks") for m, deps in import_graph().items()}
    assert not {m: d for m, d in bad.items() if d}


def test_no_undefined_names():
    """pyflakes over the product, the benchmarks and the tests: an undefined name (a helper that
    was renamed or moved, an import that was dropped) is a NameError only when that line runs,
    which for a benchmark may be months later."""
    from pyflakes import messages
    from pyflakes.api import checkPath
    from pyflakes.reporter import Reporter

    class Collect(Reporter):
        def __init__(self):
            self.found = []

        def flake(self, m):
            if isinstance(m, (messages.UndefinedName, messages.UndefinedLocal, messages.UndefinedExport)):
                self.found.append(str(m))

        def syntaxError(self, filename, msg, lineno, offset, text):
            self.found.append(f"{filename}:{lineno}: {msg}")

        def unexpectedError(self, filename, msg):
            self.found.append(f"{filename}: {msg}")

    rep = Collect()
    root = PKG.parent
    for d in ("mgd_ray", "benchmarks", "tests"):
        for path in sorted((root / d).rglob("*.py")):
            checkPath(str(path), rep)
    assert not rep.found, "\n".join(rep.found)


def test_nothing_imports_the_entry_module():
    """``mgd_ray.distill`` is the front door (``python -m mgd_ray.distill``): it runs the CLI and
    nothing imports it (the package, its tests and the benchmarks go to ``pipeline.driver``), so it
    is never loaded twice as two modules."""
    root = PKG.parent
    files = [p for d in ("mgd_ray", "tests", "benchmarks") for p in (root / d).rglob("*.py")
             if "__pycache__" not in p.parts]
    graph = import_graph()
    assert not [m for m, deps in graph.items() if "mgd_ray.distill" in deps]
    offenders = []
    for p in files:
        for node in ast.walk(ast.parse(p.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
            if any(n == "mgd_ray.distill" or n.startswith("mgd_ray.distill.") for n in names):
                offenders.append(str(p.relative_to(root)))
            if isinstance(node, ast.ImportFrom) and node.module == "mgd_ray" and \
                    any(a.name == "distill" for a in node.names):
                offenders.append(str(p.relative_to(root)))
    assert not offenders, f"these import the entry module: {offenders}"
