"""One MILP over the whole fleet, with lexicographic priority stages when not everything can be served,
and `decode`, which turns the solution vector into a typed Plan."""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import replace

import numpy as np
from numpy.typing import NDArray

from placement.solver import allocation, colgen, formulation, highs, inputs


def solve_milp(problem: inputs.FleetProblem, options: inputs.SolveOptions) -> allocation.Plan:
    """Cheapest plan serving all traffic; when that is impossible, serve by priority, then minimise $/h.

    Stage 0 asks for every coverable request to be served. If that is infeasible (capacity or budgets
    short), for each priority level from the highest down we minimise that level's unmet req/s with all
    lower levels free to go unserved, then pin it (sum r u <= U* ); the final stage minimises $/h under
    those pins. Lexicographic stages, rather than big-M weights, keep the priority order exact: a
    higher-priority service never loses capacity to a lower one, whatever the prices.
    """
    started = time.perf_counter()
    deadline = started + options.time_limit_s
    model = formulation.build(problem, options)
    # Column generation already proved full service impossible: go straight to the priority stages.
    run = None
    if not model.lp_needs_unmet:
        start = _current_start(problem, model)
        # Warm start from what runs now (highspy; scipy's milp takes no start): HiGHS begins with the
        # current placement as its incumbent when it is still feasible, completing the routing itself.
        run = (
            highs.run_from(model, start, options, deadline)
            if start
            else highs.run(model, model.c, model.var_hi, (), options, deadline)
        )
    k = options.max_candidates_per_bucket
    while run is None and model.restricted and not model.lp_needs_unmet and k is not None:
        # The LP serves everything but the pruned integer problem cannot: widen the columns and retry,
        # finally with all of them, rather than report demand unserved because of pruning.
        k = k * colgen.COLUMN_WIDENING if k * colgen.COLUMN_WIDENING < len(problem.candidates) else None
        options = replace(options, max_candidates_per_bucket=k)
        model = formulation.build(problem, options)
        run = highs.run(model, model.c, model.var_hi, (), options, deadline)
    stages = 0 if model.lp_needs_unmet else 1
    if run is None:
        var_hi = model.var_hi.copy()
        for col in model.u_index.values():
            var_hi[col] = 1.0
        pins: list[tuple[NDArray[np.float64], float]] = []
        services = {s.id: s for s in problem.services}
        for level in sorted({s.priority for s in problem.services}, reverse=True):
            unmet = np.zeros_like(model.c)
            for (sid, k), col in model.u_index.items():
                if services[sid].priority == level and (sid, k) not in model.uncoverable:
                    unmet[col] = services[sid].bucket_rps[k]
            if not unmet.any():
                continue
            level_run = _pinned_run(model, unmet, var_hi, pins, options, deadline)
            stages += 1
            if level_run is None:
                raise inputs.InfeasibleError(inputs.infeasible_reason(problem))
            # Pin this level's unmet rate at its minimum, plus slack above HiGHS's own feasibility
            # tolerance so the pin cannot turn a feasible stage infeasible by rounding.
            slack = inputs.PIN_TOLERANCE * max(1.0, level_run.objective, float(unmet.sum()))
            pins.append((unmet, level_run.objective + slack))
        run = _pinned_run(model, model.c, var_hi, pins, options, deadline)
        stages += 1
        if run is None:
            raise inputs.InfeasibleError(inputs.infeasible_reason(problem))
    return decode(problem, model, run, stages=stages, seconds=time.perf_counter() - started)


def _current_start(problem: inputs.FleetProblem, model: formulation.Model) -> list[tuple[int, float]]:
    """The current placement as a partial MIP start: replicas per candidate column (empty: none runs)."""
    if not any(n > 0 for n in problem.current_replicas.values()):
        return []
    start = []
    for i, c in enumerate(model.candidates):
        col = model.n_index[i]
        now = float(problem.current_replicas.get(c.key, 0))
        start.append((col, min(now, float(model.var_hi[col]))))
    return start


def _pinned_run(
    model: formulation.Model,
    c: NDArray[np.float64],
    var_hi: NDArray[np.float64],
    pins: list[tuple[NDArray[np.float64], float]],
    options: inputs.SolveOptions,
    deadline: float,
) -> highs.Run | None:
    """_run under priority pins; on infeasibility or numerical failure, retry once with looser pins.

    A pin is a rounded optimum; HiGHS occasionally finds the next stage a hair infeasible or fails on
    it numerically. Loosening by inputs.PIN_RETRY_FACTOR gives up a negligible amount of the level's service.
    """
    try:
        run = highs.run(model, c, var_hi, pins, options, deadline)
    except inputs.SolverError:
        run = None
    if run is not None or not pins:
        return run
    loose = [
        (row, hi + inputs.PIN_TOLERANCE * inputs.PIN_RETRY_FACTOR * max(1.0, float(row.sum())))
        for row, hi in pins
    ]
    return highs.run(model, c, var_hi, loose, options, deadline)


def decode(
    problem: inputs.FleetProblem, model: formulation.Model, run: highs.Run, *, stages: int, seconds: float
) -> allocation.Plan:
    """The typed plan of a solution vector; verifies it never over-allocates a replica (assemble: a pool)."""
    x = run.x
    services = {s.id: s for s in problem.services}
    pools = {p.id: p for p in problem.pools}
    assignments: dict[str, list[allocation.Assignment]] = defaultdict(list)
    for i, c in enumerate(model.candidates):
        replicas = round(float(x[model.n_index[i]]))
        rates = services[c.service].bucket_rps
        routed = tuple(
            float(rates[k] * min(1.0, max(0.0, x[model.f_index[(i, k)]]))) if (i, k) in model.f_index else 0.0
            for k in range(len(rates))
        )
        if replicas == 0:
            if any(r > inputs.SHARE_NOISE * max(1.0, rate) for r, rate in zip(routed, rates, strict=True)):
                raise inputs.SolverError(f"solver: traffic routed to {c.key} with zero replicas")
            continue
        load = sum(r / cap for r, cap in zip(routed, c.max_rps_per_bucket, strict=True) if r > 0.0)
        if load > replicas * (1.0 + inputs.FEASIBILITY_TOLERANCE) + inputs.FEASIBILITY_TOLERANCE:
            raise inputs.SolverError(f"solver: {c.key} loaded to {load:.6f} replicas but has {replicas}")
        assignments[c.service].append(allocation.assign(c, replicas, routed))

    unmet_by_service: dict[str, float] = defaultdict(float)
    for (sid, k), col in model.u_index.items():
        unmet_by_service[sid] += services[sid].bucket_rps[k] * min(1.0, max(0.0, float(x[col])))
    plans = []
    for s in problem.services:
        mine = assignments.get(s.id, [])
        unmet = unmet_by_service.get(s.id, 0.0)
        reason = None if unmet <= allocation.unmet_tolerance(s) else _unmet_reason(s, model, run, pools)
        plans.append(allocation.service_allocation(s, mine, unmet, reason))
    # With pruning, the restricted MILP's bound says nothing about dropped columns; the full LP bound
    # from column generation does (only valid for the all-served, penalty-free objective: stage 1).
    bound = run.bound
    bound_source: allocation.BoundSource = "milp"
    if model.full_lp_bound is not None and stages == 1:
        bound, bound_source = model.full_lp_bound, "full-lp"
    elif model.restricted:
        bound_source = "restricted-milp"
    return allocation.assemble(
        problem.pools,
        plans,
        status="optimal" if run.optimal else "feasible",
        objective=run.objective,
        bound=bound,
        bound_source=bound_source,
        solve_seconds=seconds,
        stages=stages,
    )


def _unmet_reason(
    s: inputs.ServiceDemand, model: formulation.Model, run: highs.Run, pools: Mapping[str, inputs.Pool]
) -> str:
    """One sentence on why some of this service's demand is unserved."""
    buckets = [k for k in range(len(s.bucket_rps)) if (s.id, k) in model.uncoverable]
    if buckets:
        return f"no candidate configuration meets the SLO for {len(buckets)} of its request-size buckets"
    row = model.budget_rows.get(s.id)
    if row is not None and s.max_dollars_per_hour is not None:
        spent = float(model.a.getrow(row).dot(run.x)[0])
        if spent >= s.max_dollars_per_hour - 1e-6 * max(1.0, s.max_dollars_per_hour):
            return f"budget of ${s.max_dollars_per_hour:.2f}/h is exhausted"
    mine = sorted({c.pool for c in model.candidates if c.service == s.id})
    if not mine:
        return "no candidate configuration meets the SLO"
    return (
        f"capacity of pools {', '.join(mine)} is taken by services of equal or higher priority "
        f"(priority {s.priority})"
    )


# ----------------------------------------------------------------------------------------------------
# The whole solve.
