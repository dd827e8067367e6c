"""The package's shape: imports point one way, and the in-job package stands on the standard library alone.

Layers, lowest first (a unit may import its own layer or lower ones, never a higher one, and no two units import
each other, directly or through others):

0. ``injob`` (runs inside images: standard library only), ``errors``
1. ``settings``, ``hashing``, ``atomic``, ``manifest``, ``resources``, ``project``, ``sizes``
2. ``cpuprofile``, ``fingerprint``, ``engine``, ``store``
3. workflows: ``lock``, ``image``, ``run``, ``replay``, ``diff``, ``doctor``, and what comes next
4. ``api``, ``cli``, ``__main__``

docs/architecture.md says the same in prose.
"""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "envkit"
LAYERS = {
    "injob": 0, "errors": 0,
    "settings": 1, "hashing": 1, "atomic": 1, "manifest": 1, "resources": 1, "project": 1, "sizes": 1,
    "cpuprofile": 2, "fingerprint": 2, "engine": 2, "store": 2,
    "api": 4, "cli": 4, "__main__": 4, "__init__": 4,
}
WORKFLOWS = 3  # every other unit


def unit_of(module: str) -> str | None:
    """``envkit.store.record`` -> ``store``; None outside envkit."""
    parts = module.split(".")
    if parts[0] != "envkit":
        return None
    return parts[1] if len(parts) > 1 else "__init__"


def modules() -> dict[str, Path]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        name = ".".join(rel.parts)
        found[name.removesuffix(".__init__")] = path
    return found


def imports_of(name: str, path: Path) -> set[str]:
    """Every envkit module ``path`` imports, anywhere in the file (a lazy import is a dependency too)."""
    tree = ast.parse(path.read_text(), str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target != "envkit":  # `from envkit import __version__` only runs the package's light __init__
                out.add(target)
            out.update(f"{target}.{alias.name}" for alias in node.names)  # `from envkit import api`
    return {m for m in out if m.split(".")[0] == "envkit" and m != "envkit"}


def unit_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    known = modules()
    for name, path in known.items():
        src = unit_of(name)
        for target in imports_of(name, path):
            dst = unit_of(target)
            if dst is None or dst == src:
                continue
            if target not in known:
                parent = target.rpartition(".")[0]
                if parent not in known or parent == "envkit":
                    continue  # `from envkit import __version__`: a name, not a module
                dst = unit_of(parent)  # `from envkit.x import name`
            if dst != src and dst is not None:
                graph.setdefault(src, set()).add(dst)
    return graph


def test_no_cycle_between_units():
    graph = unit_graph()
    state: dict[str, int] = {}
    cycle: list[str] = []

    def visit(node: str, stack: list[str]) -> bool:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                cycle.extend(stack[stack.index(nxt):] + [node, nxt] if nxt in stack else [node, nxt])
                return True
            if state.get(nxt) is None and visit(nxt, stack + [node]):
                return True
        state[node] = 2
        return False

    for node in sorted(graph):
        if state.get(node) is None and visit(node, []):
            break
    assert not cycle, "import cycle between units: " + " -> ".join(cycle)


def test_imports_point_down_the_layers():
    wrong = []
    for src, targets in sorted(unit_graph().items()):
        for dst in sorted(targets):
            if LAYERS.get(dst, WORKFLOWS) > LAYERS.get(src, WORKFLOWS):
                wrong.append(f"{src} (layer {LAYERS.get(src, WORKFLOWS)}) imports {dst} "
                             f"(layer {LAYERS.get(dst, WORKFLOWS)})")
    assert not wrong, "\n".join(wrong)


# --- the in-job package ------------------------------------------------------------------------------------------------
INJOB = sorted((PACKAGE / "injob").glob("*.py"))


@pytest.mark.parametrize("path", INJOB, ids=lambda p: p.name)
def test_in_job_modules_import_only_the_standard_library_at_module_level(path):
    tree = ast.parse(path.read_text())
    for node in tree.body:  # module level only: torch and numpy are imported inside functions, where a job has them
        for sub in ast.walk(node) if isinstance(node, (ast.If, ast.Try)) else [node]:
            if isinstance(sub, ast.Import):
                for alias in sub.names:
                    assert alias.name.split(".")[0] in sys.stdlib_module_names, f"{path.name}: import {alias.name}"
            elif isinstance(sub, ast.ImportFrom):
                if sub.level:
                    continue  # a sibling in the in-job package
                top = (sub.module or "").split(".")[0]
                assert top in sys.stdlib_module_names or top == "__future__", f"{path.name}: from {sub.module}"


@pytest.mark.parametrize("path", INJOB, ids=lambda p: p.name)
def test_in_job_modules_parse_as_the_oldest_image_python(path):
    """Images may carry Python 3.9 (Debian bullseye): nothing newer than its syntax."""
    ast.parse(path.read_text(), str(path), feature_version=(3, 9))


def test_the_in_job_package_loads_alone_under_its_image_name(tmp_path):
    """As ``envkit_injob``, without site-packages and without envkit: every module imports, and nothing outside
    the standard library gets loaded."""
    shutil.copytree(PACKAGE / "injob", tmp_path / "envkit_injob")
    names = [p.stem for p in INJOB if p.stem != "__init__"]
    code = (
        "import sys\n"
        "before = set(sys.modules)\n"
        f"for name in {names!r}:\n"
        "    __import__('envkit_injob.' + name)\n"
        "new = sorted(m for m in set(sys.modules) - before if not m.startswith('envkit_injob')"
        " and m.split('.')[0] not in sys.stdlib_module_names)\n"
        "print(new)\n"
    )
    out = subprocess.run([sys.executable, "-I", "-S", "-c", code], cwd=tmp_path, capture_output=True, text=True,
                         env={"PYTHONPATH": str(tmp_path)}, timeout=60)
    # -I ignores PYTHONPATH: put the folder on the path by hand.
    if out.returncode != 0 and "No module named 'envkit_injob'" in out.stderr:
        code = f"import sys; sys.path.insert(0, {str(tmp_path)!r})\n" + code
        out = subprocess.run([sys.executable, "-I", "-S", "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_activation_loads_only_the_bootstrap_core(tmp_path):
    """The .pth line at every interpreter start: the seed set, nothing imported yet, only four small modules."""
    shutil.copytree(PACKAGE / "injob", tmp_path / "envkit_injob")
    code = (f"import sys; sys.path.insert(0, {str(tmp_path)!r})\n"
            "import os; os.environ['ENVKIT_SEED'] = '1'\n"
            "__import__('envkit_injob.bootstrap').bootstrap.activate()\n"
            "print(sorted(m for m in sys.modules if m.startswith('envkit_injob')))")
    out = subprocess.run([sys.executable, "-I", "-S", "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == str(["envkit_injob", "envkit_injob.bootstrap", "envkit_injob.importhook",
                                      "envkit_injob.state"])
