"""Layering: only chipfit/kube.py imports the kubernetes client; placement stays numpy/scipy/stdlib."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CHIPFIT = ROOT / "operator" / "chipfit"
KUBE_MODULE = CHIPFIT / "kube.py"
PLACEMENT_ALLOWED = {"numpy", "scipy", "placement"}


def imported_roots(source: str) -> set[str]:
    """Top-level package names a module imports (absolute imports only)."""
    roots: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
    return roots


def test_only_kube_module_imports_the_kubernetes_client() -> None:
    offenders = sorted(
        str(path.relative_to(ROOT))
        for path in CHIPFIT.rglob("*.py")
        if path != KUBE_MODULE and "kubernetes" in imported_roots(path.read_text())
    )
    assert offenders == []
    assert "kubernetes" in imported_roots(KUBE_MODULE.read_text())


def test_placement_imports_only_numpy_scipy_stdlib() -> None:
    offenders = {
        str(path.relative_to(ROOT)): sorted(foreign)
        for path in (ROOT / "placement").rglob("*.py")
        if (foreign := imported_roots(path.read_text()) - PLACEMENT_ALLOWED - set(sys.stdlib_module_names))
    }
    assert offenders == {}


def test_checker_catches_function_level_and_from_imports() -> None:
    source = (
        "def f():\n    import kubernetes.client\n"
        "from kubernetes.dynamic import DynamicClient\nimport numpy as np\n"
    )
    assert imported_roots(source) == {"kubernetes", "numpy"}
