"""The house rules of DESIGN.md, checked on the source: imports point one way (cli → train,
bench → analysis, data → models → ortho, nn, optim → linalg → _checks), no import circle
between packages or modules, no source file over ~600 lines, and orthocond never imports the
top-level ``optim`` package (a user's own ``optim`` would shadow it)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "orthocond"

# layer of each part of orthocond: an import may only point to the same or a lower layer
LAYERS = {
    "_checks": 0, "_io": 0, "_version": 0,
    "linalg": 1,
    "nn": 2, "ortho": 2, "optim": 2,
    "models": 3,
    "data": 4, "analysis": 4,
    "train": 5, "bench": 5,
    "cli": 6, "__main__": 7, "__init__": 7,
}  # fmt: skip
MAX_LINES = 620


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(ROOT).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _imports(name: str, path: Path) -> set[str]:
    """The orthocond modules ``name`` imports (relative imports resolved)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    modules = _modules()
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            for alias in node.names:  # `from pkg import module` imports the module only
                sub = f"{mod}.{alias.name}"
                found.add(sub if sub in modules else mod)
    return {m for m in found if m in modules and m != name}


def _part(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def test_imports_point_down_the_layers():
    upward = []
    for name, path in _modules().items():
        here = _part(name)
        for target in _imports(name, path):
            there = _part(target)
            if there != here and LAYERS[there] > LAYERS[here]:
                upward.append(f"{name} -> {target}")
    assert upward == []


def test_every_part_has_a_layer():
    assert {_part(m) for m in _modules()} <= set(LAYERS)


def test_no_import_circle():
    graph = {name: _imports(name, path) for name, path in _modules().items()}
    # a package's __init__ re-exports its modules: an edge into a package stands for its face
    state: dict[str, int] = {}
    cycle: list[str] = []

    def visit(node: str, stack: list[str]) -> bool:
        state[node] = 1
        for nxt in graph.get(node, ()):
            if nxt.startswith(node + "."):  # a package importing its own modules
                continue
            if state.get(nxt) == 1:
                cycle.extend(stack[stack.index(nxt):] + [nxt] if nxt in stack else [node, nxt])
                return True
            if state.get(nxt) is None and visit(nxt, stack + [nxt]):
                return True
        state[node] = 2
        return False

    for start in graph:
        if state.get(start) is None and visit(start, [start]):
            break
    assert cycle == []


def test_no_source_file_is_huge():
    sizes = {
        str(p.relative_to(ROOT)): len(p.read_text(encoding="utf-8").splitlines())
        for p in list(PACKAGE.rglob("*.py")) + list((ROOT / "optim").rglob("*.py"))
    }
    assert {k: v for k, v in sizes.items() if v > MAX_LINES} == {}


def test_orthocond_never_imports_the_top_level_optim():
    offenders = []
    for name, path in _modules().items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            names = (
                [a.name for a in node.names] if isinstance(node, ast.Import)
                else [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level
                else []
            )  # fmt: skip
            if any(n == "optim" or n.startswith("optim.") for n in names):
                offenders.append(name)
    assert offenders == []


@pytest.mark.parametrize("entry", ["orthocond.cli", "orthocond.train"])
def test_a_user_optim_package_does_not_shadow_ours(tmp_path, entry):
    """From a folder holding its own ``optim`` package (a research repo), orthocond still works
    and the plug-ins are orthocond's."""
    (tmp_path / "optim").mkdir()
    (tmp_path / "optim" / "__init__.py").write_text("SHADOW = True\n", encoding="utf-8")
    code = (
        f"import {entry}, orthocond.optim as o, optim; "
        "assert optim.SHADOW and o.NOG.__module__ == 'orthocond.optim.nog'"
    )
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr
