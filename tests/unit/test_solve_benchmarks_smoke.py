"""Smoke tests of the solver benchmarks: they run end to end on small inputs (timings are not checked)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

from placement.solver import inputs, solve
from tests.unit.test_solve import _check_plan

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"


def load(name: str) -> ModuleType:
    """Import benchmarks/<name>.py (benchmarks/ is not a package)."""
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCHMARKS / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_scale_generator_solves_small_instances_both_ways() -> None:
    scale = load("solver_scale")
    problem = scale.instance(6, seed=1)
    assert len(problem.pools) == scale.POOLS_TOTAL
    decomposed = solve.solve(problem, inputs.SolveOptions(method="decompose"))
    _check_plan(problem, decomposed)
    exact = solve.solve(problem, inputs.SolveOptions(method="milp"))
    _check_plan(problem, exact)
    assert decomposed.price_per_hour >= exact.price_per_hour - 1e-6
    assert decomposed.bound <= exact.price_per_hour + 1e-6


@pytest.mark.skipif(not (SHARED / "melange").exists(), reason="needs ../shared/data")
def test_melange_benchmark_matches(capsys: pytest.CaptureFixture[str]) -> None:
    assert load("solver_melange").main() == 0
    assert "MATCH" in capsys.readouterr().out
