"""Layering: a pure `placement`, Kubernetes I/O in chipfit/kube.py only, the stdlib `operator` unshadowed."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CHIPFIT = ROOT / "operator" / "chipfit"
KUBE_MODULE = CHIPFIT / "kube.py"
# placement is the pure core: numpy, scipy (and highspy, the HiGHS binding scipy's solver comes from, for its
# MIP start) and the standard library, nothing else.
PLACEMENT_ALLOWED_THIRD_PARTY = {"numpy", "scipy", "highspy", "placement"}


def imported_roots(source: str) -> set[str]:
    """Top-level package names a module imports (absolute imports only, at any depth of the module)."""
    roots: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
    return roots


def test_placement_imports_only_numpy_scipy_highspy_and_stdlib() -> None:
    offenders = {
        str(path.relative_to(ROOT)): sorted(foreign)
        for path in sorted((ROOT / "placement").rglob("*.py"))
        if (
            foreign := imported_roots(path.read_text())
            - PLACEMENT_ALLOWED_THIRD_PARTY
            - set(sys.stdlib_module_names)
        )
    }
    assert offenders == {}


def test_only_kube_module_imports_the_kubernetes_client() -> None:
    offenders = sorted(
        str(path.relative_to(ROOT))
        for path in CHIPFIT.rglob("*.py")
        if path != KUBE_MODULE and "kubernetes" in imported_roots(path.read_text())
    )
    assert offenders == []
    assert "kubernetes" in imported_roots(KUBE_MODULE.read_text())


def test_checker_sees_forbidden_imports_at_any_depth() -> None:
    source = (
        "import numpy\nfrom pydantic import BaseModel\n"
        "def f():\n    import kubernetes.client\n"
        "from kubernetes.dynamic import DynamicClient\n"
    )
    assert imported_roots(source) == {"numpy", "pydantic", "kubernetes"}


def test_stdlib_operator_is_not_shadowed_from_repo_root() -> None:
    result = subprocess.run(
        [sys.executable, "-c", "import operator; print(operator.itemgetter(0)([7]))"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "7"
