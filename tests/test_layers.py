"""The import graph of fcnseg reads as the data flow: no import from a lower layer to a higher one, no cycle.

Every ``import`` counts, those inside functions too (an import hidden in a function is still an edge).
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "fcnseg"

# lowest first; a module may import its own layer and the layers below it
LAYERS: list[tuple[str, ...]] = [
    ("fcnseg._version", "fcnseg.errors", "fcnseg.atomic", "fcnseg.argcheck", "fcnseg.paths", "fcnseg.provenance"),
    ("fcnseg.data", "fcnseg.config"),
    ("fcnseg.models",),
    ("fcnseg.distributed", "fcnseg.visualize"),
    ("fcnseg.train", "fcnseg.evaluate", "fcnseg.infer"),
    ("fcnseg.bench", "fcnseg.reproduce", "fcnseg.serve"),
    ("fcnseg.cli",),
    ("fcnseg", "fcnseg.__main__"),  # the package's facade and `python -m fcnseg`
]


def _modules() -> dict[str, Path]:
    mods = {}
    for path in PACKAGE.rglob("*.py"):
        parts = ("fcnseg", *path.relative_to(PACKAGE).with_suffix("").parts)
        mods[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return mods


MODULES = _modules()


def _imports(path: Path) -> set[str]:
    """fcnseg modules ``path`` imports (``from a import b`` counts ``a.b`` when that is a module)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            subs = {f"{node.module}.{a.name}" for a in node.names} & MODULES.keys()
            found |= subs if subs and len(subs) == len(node.names) else {node.module} | subs
    return {m for m in found if m in MODULES}


GRAPH = {m: _imports(p) for m, p in MODULES.items()}


def _layer(module: str) -> int:
    best = None
    for i, layer in enumerate(LAYERS):
        for prefix in layer:
            if module == prefix or (prefix != "fcnseg" and module.startswith(prefix + ".")):
                if best is None or len(prefix) > best[1]:
                    best = (i, len(prefix))
    assert best is not None, f"{module} is in no layer: add it to LAYERS"
    return best[0]


def test_every_module_has_a_layer():
    for module in MODULES:
        _layer(module)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_import_reaches_up_a_layer(module):
    up = sorted(t for t in GRAPH[module] if _layer(t) > _layer(module))
    assert not up, f"{module} (layer {_layer(module)}) imports higher layers: {up}"


def test_the_import_graph_has_no_cycle():
    state: dict[str, int] = {}  # 1 on the stack, 2 done
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for t in sorted(GRAPH[m]):
            if state.get(t) == 1:
                cycle = stack[stack.index(t):] + [t]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if t not in state:
                visit(t)
        stack.pop()
        state[m] = 2

    for m in sorted(MODULES):
        if m not in state:
            visit(m)


def test_the_checker_sees_a_planted_violation(tmp_path):
    planted = tmp_path / "planted.py"
    planted.write_text("def f():\n    from fcnseg.cli import main\n    import fcnseg.train.loop\n")
    found = _imports(planted)
    assert found == {"fcnseg.cli.main", "fcnseg.train.loop"}
    assert all(_layer(m) > _layer("fcnseg.models.fcn") for m in found)  # a models module importing these fails

REPO = PACKAGE.parent


def test_no_test_imports_another_test_module():
    """Shared helpers live in tests/support/ (and fixtures in tests/conftest.py), never in a test module."""
    for path in (REPO / "tests").rglob("test_*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            bad = [n for n in names if n.split(".")[-1].startswith("test_")]
            assert not bad, f"{path.relative_to(REPO)} imports test module(s) {bad}"


def test_nothing_edits_sys_path():
    """Scripts run as ``python -m scripts.NAME``; tests find tests/support/ through pytest's ``pythonpath``."""
    for folder in ("fcnseg", "scripts", "tests"):
        for path in (REPO / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.Attribute) and node.attr == "path" and \
                        isinstance(node.value, ast.Name) and node.value.id == "sys":
                    pytest.fail(f"{path.relative_to(REPO)}:{node.lineno} uses sys.path")
