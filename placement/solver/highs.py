"""Run one MILP through HiGHS (scipy.optimize.milp), check its status, return a typed answer."""

from __future__ import annotations

import contextlib
import math
import os
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from scipy.optimize import Bounds, LinearConstraint, OptimizeResult, milp

from placement.solver import formulation, inputs


@dataclass(frozen=True)
class Run:
    """A usable HiGHS answer."""

    x: NDArray[np.float64]
    objective: float
    bound: float
    optimal: bool


@contextlib.contextmanager
def _quiet_stdout() -> Iterator[None]:
    """Silence file descriptor 1 while HiGHS runs.

    Some HiGHS builds print MIP debug lines ("HighsMipSolverData::transformNewIntegerFeasibleSolution")
    straight to the C stdout, which would corrupt `chipfit plan --json`.
    """
    try:
        saved = os.dup(1)
    except OSError:
        yield
        return
    sys.stdout.flush()
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 1)
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)
        os.close(devnull)


# scipy.optimize.milp status codes (scipy docs, OptimizeResult.status).
MILP_OPTIMAL = 0
MILP_LIMIT = 1
MILP_INFEASIBLE = 2
MILP_UNBOUNDED = 3


def run(
    model: formulation.Model,
    c: NDArray[np.float64],
    var_hi: NDArray[np.float64],
    extra_rows: Sequence[tuple[NDArray[np.float64], float]],
    options: inputs.SolveOptions,
    deadline: float,
    node_limit: int | None = None,
) -> Run | None:
    """Solve with these objective and upper bounds; None when infeasible, SolverError when HiGHS fails.

    `node_limit` (branch-and-bound nodes) is a deterministic work limit: the same input then gives the
    same answer however busy the machine is, as long as the wall-clock `deadline` (a safety net) is not
    reached first.
    """
    if c.size == 0:
        # Nothing to decide (no traffic, no candidates): the empty plan is optimal.
        return Run(x=np.zeros(0), objective=0.0, bound=0.0, optimal=True)
    constraints = [LinearConstraint(model.a, model.row_lo, model.row_hi)] if model.a.shape[0] else []
    for row, hi in extra_rows:
        constraints.append(LinearConstraint(row.reshape(1, -1), -math.inf, hi))
    remaining = max(deadline - time.perf_counter(), 1.0)
    settings: dict[str, float | bool | int] = {
        "time_limit": remaining,
        "mip_rel_gap": options.mip_rel_gap,
        "presolve": True,
    }
    if node_limit is not None:
        settings["node_limit"] = node_limit
    with _quiet_stdout():
        res: OptimizeResult = milp(
            c,
            constraints=constraints,
            integrality=model.integrality,
            bounds=Bounds(model.var_lo, var_hi),
            options=settings,
        )
    if res.status == MILP_INFEASIBLE:
        return None
    if res.status == MILP_UNBOUNDED:
        raise inputs.SolverError("solver: the problem is unbounded (a negative price?)")
    if res.x is None:
        raise inputs.SolverError(
            f"solver: HiGHS stopped without a solution (status {res.status}: {res.message})"
        )
    x = np.asarray(res.x, dtype=np.float64)
    objective = float(res.fun)
    bound = getattr(res, "mip_dual_bound", None)
    bound_value = objective if bound is None or not math.isfinite(float(bound)) else float(bound)
    return Run(x=x, objective=objective, bound=bound_value, optimal=res.status == MILP_OPTIMAL)


def run_from(
    model: formulation.Model,
    start: Sequence[tuple[int, float]],
    options: inputs.SolveOptions,
    deadline: float,
    node_limit: int | None = None,
) -> Run | None:
    """The MILP from a known plan: HiGHS (highspy, which takes a start; scipy's milp takes none) completes
    the partial solution `start` (column, value) by an LP and improves on it until the deadline.

    As `run`: None when the problem is infeasible, SolverError when HiGHS stops without a solution;
    `node_limit` is the deterministic work limit.
    """
    import highspy  # the official HiGHS binding: a warm start is what it adds to scipy's interface

    with _quiet_stdout():  # the constructor prints a banner to the C stdout
        h = highspy.Highs()  # type: ignore[no-untyped-call]
    h.setOptionValue("output_flag", False)
    a = model.a.tocsc()
    lp = highspy.HighsLp()
    lp.num_col_ = a.shape[1]
    lp.num_row_ = a.shape[0]
    lp.col_cost_ = model.c
    lp.col_lower_ = model.var_lo
    lp.col_upper_ = model.var_hi
    lp.row_lower_ = model.row_lo
    lp.row_upper_ = model.row_hi
    lp.a_matrix_.format_ = highspy.MatrixFormat.kColwise
    lp.a_matrix_.start_ = a.indptr
    lp.a_matrix_.index_ = a.indices
    lp.a_matrix_.value_ = a.data
    lp.integrality_ = [
        highspy.HighsVarType.kInteger if v else highspy.HighsVarType.kContinuous for v in model.integrality
    ]
    with _quiet_stdout():
        h.passModel(lp)
        cols = np.asarray([col for col, _ in start], dtype=np.int32)
        values = np.asarray([v for _, v in start], dtype=np.float64)
        h.setSolution(len(cols), cols, values)
        h.setOptionValue("time_limit", max(deadline - time.perf_counter(), 0.5))
        h.setOptionValue("mip_rel_gap", options.mip_rel_gap)
        if node_limit is not None:
            h.setOptionValue("mip_max_nodes", node_limit)
        h.run()
    info = h.getInfo()
    solution = h.getSolution()
    status = h.getModelStatus()
    if status == highspy.HighsModelStatus.kInfeasible:
        return None
    if not solution.value_valid or info.primal_solution_status == 0:
        raise inputs.SolverError(
            f"solver: HiGHS stopped without a solution ({h.modelStatusToString(status)})"
        )
    x = np.asarray(solution.col_value, dtype=np.float64)
    return Run(
        x=x,
        objective=float(info.objective_function_value),
        bound=float(info.mip_dual_bound),
        optimal=status == highspy.HighsModelStatus.kOptimal,
    )
