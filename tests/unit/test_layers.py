"""Layering rules that keep the codebase honest: a pure `placement`, a stdlib `operator` left alone."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# placement is the pure core: numpy, scipy and the standard library, nothing else.
PLACEMENT_ALLOWED_THIRD_PARTY = {"numpy", "scipy", "placement"}


def _imported_roots(path: Path) -> set[str]:
    roots = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
    return roots


def test_placement_imports_only_numpy_scipy_and_stdlib() -> None:
    offenders = {}
    for path in sorted((ROOT / "placement").rglob("*.py")):
        foreign = {
            root
            for root in _imported_roots(path)
            if root not in sys.stdlib_module_names and root not in PLACEMENT_ALLOWED_THIRD_PARTY
        }
        if foreign:
            offenders[str(path.relative_to(ROOT))] = sorted(foreign)
    assert offenders == {}


def test_checker_sees_a_forbidden_import(tmp_path: Path) -> None:
    module = tmp_path / "bad.py"
    module.write_text("import numpy\nfrom pydantic import BaseModel\nimport kubernetes.client\n")
    assert _imported_roots(module) == {"numpy", "pydantic", "kubernetes"}


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
