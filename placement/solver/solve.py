"""Plan a fleet: integer replicas per (service, role, pool, precision, tp) at minimum $/h.

The entry point. Three pure steps, as the style guide asks: `formulation.build` turns a FleetProblem into
matrices, `highs.run` hands them to HiGHS and checks the status, `stages.decode` turns the solution into a
typed `allocation.Plan`; `stages.solve_milp` chains them, adding lexicographic priority stages only when
capacity or budgets are short.

Scale: above AUTO_COLUMN_GENERATION_CANDIDATES candidates, column generation keeps the columns the LP
relaxation needs (`colgen.prune`); from decompose.DECOMPOSE_MIN_SERVICES services, when no ceiling,
budget or stability penalty couples a service's choices, `decompose.decompose` plans services one by one
with pool prices instead of one MILP (benchmarks/REPORT_solver.md has the measurements behind both).
"""

from __future__ import annotations

import time
from dataclasses import replace

from placement.solver import allocation, dantzig_wolfe, decompose, inputs, primal, stages

# Above this many candidates `auto` turns on column generation for the MILP, keeping this many per
# (service, bucket) besides what the LP uses (the examples' 6 services have ~250 candidates).
AUTO_COLUMN_GENERATION_CANDIDATES = 5000
AUTO_CANDIDATES_PER_BUCKET = 3
# From this many services (below DECOMPOSE_MIN_SERVICES, or coupled by budgets, ceilings, the stability
# penalty) `auto` solves service by service with a master over pool capacity (dantzig_wolfe): one MILP
# over all of them spends its time limit far from the optimum (benchmarks/REPORT_solver.md, section d).
DANTZIG_WOLFE_MIN_SERVICES = 20
# From this many services, when neither decomposition applies, `auto` builds the plan with the primal
# heuristic (primal: LP shadow prices, placement by priority, exact one-service MILPs for the largest):
# one MILP over 100 diverse services found no plan at all in 60 s (benchmarks/REPORT_solver.md, (e)).
PRIMAL_MIN_SERVICES = 100


def solve(problem: inputs.FleetProblem, options: inputs.SolveOptions | None = None) -> allocation.Plan:
    """Cheapest plan serving all traffic; by priority when that is impossible (stages.solve_milp)."""
    options = options or inputs.SolveOptions()
    problem = inputs.without_noise(problem)
    if not 0.0 < options.max_utilization <= 1.0:
        raise inputs.InvalidProblemError(
            f"options.max_utilization: must be in (0, 1], got {options.max_utilization}"
        )
    if not 0.0 <= options.on_demand_floor <= 1.0:
        raise inputs.InvalidProblemError(
            f"options.on_demand_floor: must be in [0, 1], got {options.on_demand_floor}"
        )
    if options.max_utilization < 1.0:
        return _derated(problem, options)
    if options.method == "decompose" or (
        options.method == "auto"
        and len(problem.services) >= decompose.DECOMPOSE_MIN_SERVICES
        and decompose.decomposable(problem, options)
    ):
        return decompose.decompose(problem, options)
    if options.method == "primal":
        return primal.solve(problem, options)
    started = time.perf_counter()
    try:
        if options.method == "dantzig-wolfe" or (
            options.method == "auto"
            and len(problem.services) >= DANTZIG_WOLFE_MIN_SERVICES
            and dantzig_wolfe.applicable(problem)
        ):
            return dantzig_wolfe.solve(problem, options)
        if (
            options.method == "auto"
            and len(problem.services) >= PRIMAL_MIN_SERVICES
            and primal.applicable(problem, options)
        ):
            return primal.solve(problem, options)
        if (
            options.method == "auto"
            and options.max_candidates_per_bucket is None
            and len(problem.candidates) > AUTO_COLUMN_GENERATION_CANDIDATES
        ):
            # Too many columns for one exact MILP in interactive time: let the LP pick them.
            options = replace(options, max_candidates_per_bucket=AUTO_CANDIDATES_PER_BUCKET)
        return stages.solve_milp(problem, options)
    except inputs.SolverError:
        # HiGHS stopped without any plan (time limit before an incumbent): never answer "no plan" where
        # the heuristic finds one. Its own time is what is left, at least a tenth of the limit.
        if options.method not in ("auto",) or not primal.applicable(problem, options):
            raise
        spent = time.perf_counter() - started
        remaining = max(options.time_limit_s - spent, 0.1 * options.time_limit_s)
        return primal.solve(problem, replace(options, time_limit_s=remaining))


def _derated(problem: inputs.FleetProblem, options: inputs.SolveOptions) -> allocation.Plan:
    """Solve with every capacity scaled by max_utilization; report utilisation of the real capacity."""
    u = options.max_utilization
    scaled = replace(
        problem,
        candidates=tuple(
            replace(c, max_rps_per_bucket=tuple(r * u for r in c.max_rps_per_bucket))
            for c in problem.candidates
        ),
    )
    plan = solve(scaled, replace(options, max_utilization=1.0))
    services = tuple(
        replace(sp_, assignments=tuple(replace(a, utilization=a.utilization * u) for a in sp_.assignments))
        for sp_ in plan.services
    )
    return replace(plan, services=services)
