"""The package's shape: imports point one way (lower layers never import higher ones, in-function imports
included), there are no import cycles between modules, and the package root stays small."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "samsearch"

# Lower numbers are lower layers; a module may import its own layer and any lower one.
LAYERS: dict[str, int] = {
    "errors": 0, "identity": 0, "faults": 0,
    "data": 1,
    "sam": 2, "spaces": 2,
    "db": 3, "vectors": 3,
    "home": 4,
    "ingest": 5,
    "jobs": 6, "cluster": 6,
    "bank": 7,
    "search": 8,
    "reports": 9,
    "cli": 10, "demo": 10, "testing": 10, "serve": 10, "__main__": 10, "__init__": 10,
}
ROOT_MODULES_MAX = 12


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in PACKAGE.rglob("*.py")}


def _imports(path: Path, name: str) -> set[str]:
    """Every samsearch module ``path`` imports, at top level or inside functions (not the type-only imports
    of ``if TYPE_CHECKING:`` blocks, which never run)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and getattr(node.test, "id", getattr(node.test, "attr", "")) == "TYPE_CHECKING":
            node.body = []
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("samsearch"))
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*up, base] if base else up)
            if not base.startswith("samsearch"):
                continue
            found.add(base)
            found.update(f"{base}.{a.name}" for a in node.names)  # `from pkg import module`
    return found


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    return {name: {m for m in _imports(path, name) if m in mods and m != name} for name, path in mods.items()}


def _layer(module: str) -> int:
    parts = module.split(".")
    key = parts[1] if len(parts) > 1 else "__init__"
    assert key in LAYERS, f"{module}: its package has no layer in tests/test_layout.py"
    return LAYERS[key]


def test_every_module_belongs_to_a_layer():
    for name in _modules():
        _layer(name)


def test_imports_point_downwards():
    upward = [f"{src} (layer {_layer(src)}) imports {dst} (layer {_layer(dst)})"
              for src, dsts in _graph().items() for dst in dsts
              if src != "samsearch" and _layer(dst) > _layer(src)]
    assert not upward, "\n".join(sorted(upward))


def test_no_import_cycles():
    graph = {k: {d for d in v if d != "samsearch"} for k, v in _graph().items() if k != "samsearch"}
    # Package __init__ files re-export their own submodules; an import of a submodule runs its package's
    # __init__ first, which is not a dependency of the importer on the package's other modules.
    index, low, stack, on_stack, cycles = {}, {}, [], set(), []
    counter = [0]

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    assert not cycles, f"import cycles: {cycles}"


def test_the_package_root_stays_small():
    root = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert len(root) <= ROOT_MODULES_MAX, root


def test_every_subpackage_says_what_it_owns():
    for init in PACKAGE.glob("*/__init__.py"):
        doc = ast.get_docstring(ast.parse(init.read_text()))
        assert doc and len(doc.split()) >= 15, f"{init}: needs a docstring saying what it owns and may import"


def test_the_checker_sees_in_function_imports(tmp_path):
    f = tmp_path / "m.py"
    f.write_text("def f():\n    from samsearch.search.query import search_by_segment\n")
    assert "samsearch.search.query" in _imports(f, "samsearch.data.m")


def test_the_public_api_resolves_and_importing_samsearch_is_cheap():
    import subprocess
    import sys

    code = ("import sys, samsearch; assert 'torch' not in sys.modules, 'import samsearch loaded torch'; "
            "missing = [n for n in samsearch.__all__ if getattr(samsearch, n, None) is None]; "
            "assert not missing, missing; print(len(samsearch.__all__))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=PACKAGE.parent)
    assert done.returncode == 0, done.stderr
    assert int(done.stdout) >= 15
