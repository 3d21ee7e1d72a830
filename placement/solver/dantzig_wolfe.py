"""Fleets whose services are coupled only through pool capacity, solved service by service (Dantzig-Wolfe).

Budgets, replica ceilings and floors, the stability penalty and serving-mode choices all act within one
service; only pool capacity (and, through it, priorities) couples services. So every service gets its own
small exact MILP (`formulation.build` on the one-service problem), and a master problem chooses one plan
("column") per service under pool capacity:

    master:  min  sum_{s,k} obj_{s,k} lambda_{s,k}
             s.t. sum_k lambda_{s,k} = 1                                  (one plan per service; dual sigma_s)
                  sum_{s,k} dev_{p,s,k} lambda_{s,k} <= devices_p          (pool capacity; dual pi_p <= 0)
                  sum_{s in level L,k} unmet_{s,k} lambda_{s,k} <= U*_L     (priority pins; dual rho_L <= 0)
    pricing: min over the service's integer plans x of  obj_s(x) - pi . dev(x) - rho . unmet(x) - sigma_s

Columns with negative reduced cost enter until none does; the master LP is then the Dantzig-Wolfe bound,
which convexifies each service's integer plans (it knows a service needing 2.3 replicas pays for 3, which
the LP relaxation of the monolithic MILP does not), and at every round
LB = master LP + sum_s min(0, pricing bound_s - sigma_s) is a valid lower bound. The master is then solved
with binary lambda over the columns generated: a feasible plan whose gap to that bound is reported.

Priorities stay lexicographic, as in `stages`: if the all-served master is infeasible, for each priority
level from the highest down the master minimises that level's unmet req/s and pins it; the final stage
minimises $/h (plus stability penalties) under the pins.

Used by `solve.solve` (method "auto") when services are many and coupled by budgets, ceilings, the
stability penalty or priorities, and every pool packs by device count (divisibility chain); benchmarks/
REPORT_solver.md section (d) has the measurements.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import scipy.sparse as sp
from numpy.typing import NDArray
from scipy.optimize import Bounds, LinearConstraint, linprog, milp

from placement.solver import allocation, formulation, highs, inputs, stages

# Column-generation rounds per stage, at most (each round prices every service once); a priority level's
# stage only needs a good pin, so it gets fewer.
MAX_ROUNDS = 40
MAX_LEVEL_ROUNDS = 3
# A column enters when its reduced cost is below -REDUCED_COST_TOLERANCE x max(1, |objective|).
REDUCED_COST_TOLERANCE = 1e-7
# Cost per device of the master's artificial overflow variables (pool capacity exceeded): far above any
# price, so the LP only uses them when the columns so far cannot fit; an integer master that still needs
# them means the stage is infeasible.
OVERFLOW_COST = 1e7
# Stop a stage's column generation once (upper - lower) / upper falls below this share of the gap target.
CONVERGED_SHARE = 0.5
# Share of the stage's time the column generation may use; the rest is for the integer master.
PRICING_TIME_SHARE = 0.6
# Seconds a pricing MILP may still take when it found no plan by the stage's deadline.
PRICING_GRACE_S = 10.0
# Stage 0 resumes its column generation when it finished with at least this many seconds left.
MIN_RESUME_S = 2.0
# Passes of the local search that re-plans one service at a time in what the others leave.
IMPROVE_PASSES = 2


@dataclass(frozen=True)
class _Column:
    """One integer plan of one service: its solution vector and what the master needs of it."""

    x: NDArray[np.float64]
    cost: float  # $/h plus stability penalty
    unmet_rps: float  # coverable demand left unserved
    devices: tuple[tuple[int, float], ...]  # (pool row, devices used)


@dataclass
class _Service:
    """A service's one-service model and the coefficient vectors the pricing objective combines."""

    demand: inputs.ServiceDemand
    problem: inputs.FleetProblem
    model: formulation.Model
    unmet: NDArray[np.float64]  # r_b on each coverable u column
    device_rows: list[tuple[int, NDArray[np.float64]]]  # (pool row, tp on the n columns of that pool)
    columns: list[_Column] = field(default_factory=list)
    # Least unmet req/s the service can have on its own (its budget or ceiling cannot buy full service);
    # None when it can serve everything. Stage 0 holds it there: no fleet plan can do better for it.
    unmet_floor: float | None = None
    # Pool rows this service has candidates on, and its last pricing (key, column, bound) for reuse.
    pool_rows: NDArray[np.int64] = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    last_priced: tuple[tuple[Any, ...], _Column | None, float] | None = None


def applicable(problem: inputs.FleetProblem) -> bool:
    """Every pool packs by device count (a divisibility chain of TP sizes), so capacity is one row."""
    pools = {p.id: p for p in problem.pools}
    sizes: dict[str, set[int]] = defaultdict(set)
    for c in problem.candidates:
        sizes[c.pool].add(c.tp)
    return all(formulation.divisibility_chain(sorted(t), pools[p].devices_per_node) for p, t in sizes.items())


def solve(problem: inputs.FleetProblem, options: inputs.SolveOptions) -> allocation.Plan:
    """The fleet plan by Dantzig-Wolfe decomposition over services, with lexicographic priority stages."""
    started = time.perf_counter()
    deadline = started + options.time_limit_s
    inputs.validate(problem)
    if not applicable(problem):
        raise inputs.InvalidProblemError("dantzig-wolfe: needs TP sizes that divide each pool's nodes")
    pool_row = {p.id: i for i, p in enumerate(problem.pools)}
    capacity = np.array([float(p.devices_total) for p in problem.pools])
    exact = replace(options, max_candidates_per_bucket=None)
    by_service: dict[str, list[inputs.Candidate]] = defaultdict(list)
    for c in problem.candidates:
        by_service[c.service].append(c)
    services: list[_Service] = []
    for s in problem.services:
        sub = inputs.FleetProblem(
            (s,),
            problem.pools,
            tuple(by_service[s.id]),
            {k: v for k, v in problem.current_replicas.items() if k.service == s.id},
            {k: v for k, v in problem.replica_bounds.items() if k.service == s.id},
        )
        model = formulation.build(sub, exact)
        unmet = np.zeros_like(model.c)
        for (_sid, b), col in model.u_index.items():
            if (s.id, b) not in model.uncoverable:
                unmet[col] = s.bucket_rps[b]
        rows: dict[int, NDArray[np.float64]] = {}
        for i, c in enumerate(model.candidates):
            vec = rows.setdefault(pool_row[c.pool], np.zeros_like(model.c))
            vec[model.n_index[i]] = float(c.tp)
        device_rows = sorted(rows.items())
        pool_rows = np.array([row for row, _ in device_rows], dtype=np.int64)
        svc = _Service(s, sub, model, unmet, device_rows, pool_rows=pool_rows)
        svc.unmet_floor = _unmet_floor(svc, options, deadline)
        services.append(svc)

    levels = sorted({s.priority for s in problem.services}, reverse=True)
    # Time: stage 0 may take a third (it is the whole solve when everything fits, and its column
    # generation stops early when converged); a level stage only needs a pin, so each takes a share that
    # leaves the final cost stage at least three.
    n_stages_left = 3
    # Stage 0: everything coverable served (u fixed at 0, or at a service's own floor when its budget or
    # ceiling rules out full service: no fleet plan can serve it more), cost minimised.
    result = _stage(services, capacity, [], "cost", None, False, options, started, deadline, n_stages_left)
    stage_count = 1
    if result is not None and deadline - time.perf_counter() > MIN_RESUME_S:
        # Everything fits, so stage 0 is the whole solve: spend the rest of the time on more rounds from
        # the columns so far (a better bound, and a plan at least as good).
        more = _stage(services, capacity, [], "cost", None, False, options, started, deadline, 1)
        if more is not None:
            best = more if more.objective < result.objective else result
            result = _StageResult(best.chosen, best.objective, max(result.bound, more.bound))
    pins: list[tuple[int, float]] = []
    if result is None:
        # Not everything can be served: by priority level, highest first, minimise the level's unmet
        # req/s, then pin it; the final stage minimises cost under the pins.
        for n_done, level in enumerate(levels):
            if not any(s.demand.priority == level and s.unmet.any() for s in services):
                continue
            left = len(levels) - n_done + 3
            level_result = _stage(
                services, capacity, pins, "unmet", level, True, options, started, deadline, left
            )
            stage_count += 1
            if level_result is None:
                raise inputs.InfeasibleError(inputs.infeasible_reason(problem))
            total = sum(float(s.unmet.sum()) for s in services if s.demand.priority == level)
            slack = inputs.PIN_TOLERANCE * max(1.0, level_result.objective, total)
            pins.append((level, level_result.objective + slack))
        result = _stage(services, capacity, pins, "cost", None, True, options, started, deadline, 1)
        stage_count += 1
        if result is None:
            raise inputs.InfeasibleError(inputs.infeasible_reason(problem))

    allocations = []
    for svc, column in zip(services, result.chosen, strict=True):
        run = highs.Run(x=column.x, objective=column.cost, bound=column.cost, optimal=True)
        one = stages.decode(svc.problem, svc.model, run, stages=1, seconds=0.0)
        allocations.append(one.services[0])
    return allocation.assemble(
        problem.pools,
        allocations,
        status="optimal"
        if result.objective - result.bound <= options.mip_rel_gap * abs(result.objective)
        else "feasible",
        objective=result.objective,
        bound=min(result.bound, result.objective),
        bound_source="dantzig-wolfe",
        solve_seconds=time.perf_counter() - started,
        stages=stage_count,
    )


def _unmet_floor(svc: _Service, options: inputs.SolveOptions, deadline: float) -> float | None:
    """The least unmet req/s this service can have alone, when its own limits rule out full service."""
    s = svc.demand
    if s.max_dollars_per_hour is None and s.max_replicas is None:
        return None
    model = svc.model
    zero = np.zeros_like(model.c)
    if highs.run(model, zero, model.var_hi, (), options, deadline) is not None:
        return None
    var_hi = model.var_hi.copy()
    for col in model.u_index.values():
        var_hi[col] = 1.0
    run = highs.run(model, svc.unmet, var_hi, (), options, deadline)
    if run is None:
        return None  # not even with unmet traffic (floors): the stages will say so
    return float(svc.unmet @ run.x)


@dataclass(frozen=True)
class _StageResult:
    """The integer master's choice of one column per service, its objective and the stage's bound."""

    chosen: tuple[_Column, ...]
    objective: float
    bound: float


def _objective(svc: _Service, column: _Column, kind: str, level: int | None) -> float:
    """A column's master objective in this stage: its cost, or its unmet req/s for the stage's level."""
    if kind == "cost":
        return column.cost
    return column.unmet_rps if svc.demand.priority == level else 0.0


def _stage(
    services: list[_Service],
    capacity: NDArray[np.float64],
    pins: list[tuple[int, float]],
    kind: str,
    level: int | None,
    allow_unmet: bool,
    options: inputs.SolveOptions,
    started: float,
    deadline: float,
    stages_left: int,
) -> _StageResult | None:
    """Column generation then the integer master for one stage; None when the stage is infeasible."""
    now = time.perf_counter()
    stage_deadline = now + max(0.0, deadline - now) / max(1, stages_left)
    pricing_deadline = now + PRICING_TIME_SHARE * (stage_deadline - now)
    del started
    # Columns are kept across stages, but a column leaving coverable traffic unserved is only admissible
    # once unmet is allowed.
    pool = [[c for c in svc.columns if allow_unmet or c.unmet_rps <= _allowed(svc)] for svc in services]
    # Seed, first fit: services by priority (highest first), each taking its best plan for this stage's
    # objective in what the ones before it left of the pools. The seeds fit together, so the integer
    # master always has a plan, and the first duals are not driven by capacity overflow.
    left = capacity.copy()
    zero = np.zeros(len(capacity))
    for j in sorted(range(len(services)), key=lambda j: (-services[j].demand.priority, j)):
        svc = services[j]
        if allow_unmet and not any(c.unmet_rps > 0.0 and not c.devices for c in pool[j]):
            # Also each service's smallest plan (fewest devices: its floors only), so the master can
            # always shed a service to make room (once: it is the same plan in every stage).
            small, _ = _price(svc, -np.ones(len(capacity)), {}, "none", None, True, options, pricing_deadline)
            if small is not None and not _known(pool[j], small):
                pool[j].append(small)
                svc.columns.append(small)
        if (not allow_unmet and pool[j]) or (
            allow_unmet and (len(pool[j]) > 1 or (pool[j] and time.perf_counter() > pricing_deadline))
        ):
            continue  # columns from the earlier stages already give this service plans
        column, _ = _price(svc, zero, {}, kind, level, allow_unmet, options, pricing_deadline, left)
        if column is None:
            # Nothing fits in what is left: the service's best plan on its own (the master sorts it out).
            column, _ = _price(svc, zero, {}, kind, level, allow_unmet, options, pricing_deadline)
        if column is None:
            return None  # the service alone cannot meet this stage's rules (a budget below full service)
        for row, d in column.devices:
            left[row] -= d
        if not _known(pool[j], column):
            pool[j].append(column)
            svc.columns.append(column)
    lower = -math.inf
    for _ in range(MAX_ROUNDS if kind == "cost" else MAX_LEVEL_ROUNDS):
        lp = _master_lp(services, pool, capacity, pins, kind, level)
        if lp is None:
            return None
        value, sigma, pi, rho = lp
        bound_sum = value
        added = 0
        for j, svc in enumerate(services):
            if time.perf_counter() > stage_deadline:
                bound_sum = -math.inf  # out of time mid-round: this round proves nothing
                break
            key = (
                kind,
                level,
                allow_unmet,
                rho.get(svc.demand.priority, 0.0),
                svc.pool_rows,
                pi[svc.pool_rows],
            )
            cached = svc.last_priced
            if cached is not None and cached[0][:4] == key[:4] and np.array_equal(cached[0][5], key[5]):
                # Same prices on every pool it can use: same best plan, already a column.
                column, sub_bound = cached[1], cached[2]
            else:
                column, sub_bound = _price(svc, pi, rho, kind, level, allow_unmet, options, pricing_deadline)
                svc.last_priced = (key, column, sub_bound)
            if column is None:
                bound_sum = -math.inf  # no plan at these prices: this round proves nothing
                continue
            reduced_bound = sub_bound - sigma[j]
            bound_sum += min(0.0, reduced_bound)
            reduced = _reduced(svc, column, pi, rho, kind, level) - sigma[j]
            if reduced < -REDUCED_COST_TOLERANCE * max(1.0, abs(value)) and not _known(pool[j], column):
                pool[j].append(column)
                svc.columns.append(column)
                added += 1
        if value < OVERFLOW_COST / 10:
            lower = max(lower, bound_sum)
        if added == 0 or time.perf_counter() > pricing_deadline:
            break
        if math.isfinite(lower) and value - lower <= CONVERGED_SHARE * options.mip_rel_gap * max(
            1.0, abs(value)
        ):
            break
    chosen = _master_integer(services, pool, capacity, pins, kind, level, options, stage_deadline)
    if chosen is None:
        return None
    chosen = _improve(services, chosen, capacity, kind, level, allow_unmet, options, stage_deadline)
    objective = sum(_objective(svc, col, kind, level) for svc, col in zip(services, chosen, strict=True))
    # Every stage objective is >= 0, so 0 is a valid (weak) bound when no round produced one.
    return _StageResult(tuple(chosen), objective, max(0.0, lower))


def _improve(
    services: list[_Service],
    chosen: list[_Column],
    capacity: NDArray[np.float64],
    kind: str,
    level: int | None,
    allow_unmet: bool,
    options: inputs.SolveOptions,
    deadline: float,
) -> list[_Column]:
    """Local search on the integer master's choice: each service in turn re-plans in what the others leave.

    The columns generated at LP duals need not combine well in integers (two services each holding half
    of a pool); re-planning one service exactly in the leftover devices, never leaving more of its demand
    unserved than it does now (so the priority pins still hold), only ever lowers the stage objective.
    """
    chosen = list(chosen)
    used = np.zeros_like(capacity)
    for picked in chosen:
        for row, d in picked.devices:
            used[row] += d
    movable = [j for j, svc in enumerate(services) if kind == "cost" or svc.demand.priority == level]
    for _ in range(IMPROVE_PASSES):
        better = False
        for j in movable:
            if time.perf_counter() > deadline:
                return chosen
            svc, current = services[j], chosen[j]
            left = capacity - used
            for row, d in current.devices:
                left[row] += d
            column, _ = _price(
                svc,
                np.zeros_like(capacity),
                {},
                kind,
                level,
                allow_unmet,
                options,
                deadline,
                left,
                max_unmet_rps=current.unmet_rps + _noise(svc) if kind == "cost" else None,
            )
            if column is None:
                continue
            gain = _objective(svc, current, kind, level) - _objective(svc, column, kind, level)
            if gain <= REDUCED_COST_TOLERANCE * max(1.0, abs(_objective(svc, current, kind, level))):
                continue
            for row, d in current.devices:
                used[row] -= d
            for row, d in column.devices:
                used[row] += d
            chosen[j] = column
            svc.columns.append(column)
            better = True
        if not better:
            break
    return chosen


def _allowed(svc: _Service) -> float:
    """Unmet req/s a column may leave in stage 0: noise, or the service's own floor plus noise."""
    return (svc.unmet_floor or 0.0) + _noise(svc)


def _noise(svc: _Service) -> float:
    """Unmet req/s below this is pin slack or solver noise, not a plan that leaves traffic unserved."""
    return allocation.unmet_tolerance(svc.demand)


def _known(columns: list[_Column], column: _Column) -> bool:
    """The same plan is already a column (HiGHS can return it again at degenerate prices)."""
    return any(c.x.shape == column.x.shape and np.allclose(c.x, column.x, atol=1e-9) for c in columns)


def _reduced(
    svc: _Service,
    column: _Column,
    pi: NDArray[np.float64],
    rho: dict[int, float],
    kind: str,
    level: int | None,
) -> float:
    """obj - pi . dev - rho . unmet (sigma is subtracted by the caller)."""
    value = _objective(svc, column, kind, level)
    value -= sum(float(pi[row]) * d for row, d in column.devices)
    value -= rho.get(svc.demand.priority, 0.0) * column.unmet_rps
    return value


def _price(
    svc: _Service,
    pi: NDArray[np.float64],
    rho: dict[int, float],
    kind: str,
    level: int | None,
    allow_unmet: bool,
    options: inputs.SolveOptions,
    deadline: float,
    devices_left: NDArray[np.float64] | None = None,
    max_unmet_rps: float | None = None,
) -> tuple[_Column | None, float]:
    """The service's best plan at these duals (its MILP), and a lower bound on that plan's value.

    With `devices_left`, replicas are also limited to what is left of each pool (first-fit seeding).
    """
    model = svc.model
    c = np.zeros_like(model.c)
    if kind == "cost":
        c += model.c
    elif kind == "unmet" and svc.demand.priority == level:
        c += svc.unmet
    for row, vec in svc.device_rows:
        c -= pi[row] * vec
    c -= rho.get(svc.demand.priority, 0.0) * svc.unmet
    var_hi = model.var_hi.copy()
    rows: list[tuple[NDArray[np.float64], float]] = []
    if allow_unmet or svc.unmet_floor is not None:
        for col in model.u_index.values():
            var_hi[col] = 1.0
    if not allow_unmet and svc.unmet_floor is not None:
        # Stage 0 for a service its own limits keep from full service: no more unmet than its floor.
        rows.append((svc.unmet, _allowed(svc)))
    if devices_left is not None:
        rows += [(vec, max(0.0, float(devices_left[row]))) for row, vec in svc.device_rows]
    if max_unmet_rps is not None:
        rows.append((svc.unmet, max_unmet_rps))
    try:
        run = highs.run(model, c, var_hi, rows, options, deadline)
    except inputs.SolverError:
        # No incumbent before the (stage) deadline: a pricing problem is small, give it a fixed grace
        # rather than lose the service's column (a second failure is a real solver error).
        run = highs.run(model, c, var_hi, rows, options, time.perf_counter() + PRICING_GRACE_S)
    if run is None:
        return None, math.inf
    x = run.x
    column = _Column(
        x=x,
        cost=float(model.c @ x),
        unmet_rps=float(svc.unmet @ x),
        devices=tuple((row, float(vec @ x)) for row, vec in svc.device_rows if float(vec @ x) > 0.5),
    )
    return column, run.bound


def _master_rows(
    services: list[_Service],
    pool: list[list[_Column]],
    capacity: NDArray[np.float64],
    pins: list[tuple[int, float]],
    kind: str,
    level: int | None,
) -> tuple[NDArray[np.float64], sp.csr_matrix, sp.csr_matrix, NDArray[np.float64], int]:
    """Objective, convexity rows, inequality rows (capacity, pins) and their right-hand side.

    Variables: every column's lambda, then one overflow variable per pool (capacity artificials).
    """
    n_cols = sum(len(p) for p in pool)
    n_pools = len(capacity)
    cost = np.zeros(n_cols + n_pools)
    cost[n_cols:] = OVERFLOW_COST
    eq_r, eq_c, ub_r, ub_c, ub_v = [], [], [], [], []
    pin_row = {lvl: n_pools + i for i, (lvl, _) in enumerate(pins)}
    col = 0
    for j, (svc, columns) in enumerate(zip(services, pool, strict=True)):
        for column in columns:
            cost[col] = _objective(svc, column, kind, level)
            eq_r.append(j)
            eq_c.append(col)
            for row, d in column.devices:
                ub_r.append(row)
                ub_c.append(col)
                ub_v.append(d)
            if svc.demand.priority in pin_row and column.unmet_rps > 0.0:
                ub_r.append(pin_row[svc.demand.priority])
                ub_c.append(col)
                ub_v.append(column.unmet_rps)
            col += 1
    for p in range(n_pools):
        ub_r.append(p)
        ub_c.append(n_cols + p)
        ub_v.append(-1.0)
    a_eq = sp.csr_matrix((np.ones(len(eq_r)), (eq_r, eq_c)), shape=(len(services), n_cols + n_pools))
    a_ub = sp.csr_matrix((ub_v, (ub_r, ub_c)), shape=(n_pools + len(pins), n_cols + n_pools))
    b_ub = np.concatenate([capacity, [hi for _, hi in pins]])
    return cost, a_eq, a_ub, b_ub, n_cols


def _master_lp(
    services: list[_Service],
    pool: list[list[_Column]],
    capacity: NDArray[np.float64],
    pins: list[tuple[int, float]],
    kind: str,
    level: int | None,
) -> tuple[float, NDArray[np.float64], NDArray[np.float64], dict[int, float]] | None:
    """The master LP's value and duals: sigma per service, pi per pool, rho per pinned level."""
    cost, a_eq, a_ub, b_ub, _ = _master_rows(services, pool, capacity, pins, kind, level)
    res = linprog(
        cost, A_ub=a_ub, b_ub=b_ub, A_eq=a_eq, b_eq=np.ones(len(services)), bounds=(0, None), method="highs"
    )
    if res.status != 0:
        return None
    ineq = np.asarray(res.ineqlin.marginals)
    rho = {lvl: float(ineq[len(capacity) + i]) for i, (lvl, _) in enumerate(pins)}
    return float(res.fun), np.asarray(res.eqlin.marginals), ineq[: len(capacity)], rho


def _master_integer(
    services: list[_Service],
    pool: list[list[_Column]],
    capacity: NDArray[np.float64],
    pins: list[tuple[int, float]],
    kind: str,
    level: int | None,
    options: inputs.SolveOptions,
    deadline: float,
) -> list[_Column] | None:
    """One column per service (binary lambda) under capacity and pins; None when that is impossible."""
    cost, a_eq, a_ub, b_ub, n_cols = _master_rows(services, pool, capacity, pins, kind, level)
    integrality = np.concatenate([np.ones(n_cols), np.zeros(len(capacity))])
    upper = np.concatenate([np.ones(n_cols), np.zeros(len(capacity))])  # no overflow in an integer plan
    remaining = max(deadline - time.perf_counter(), 1.0)
    res = milp(
        cost,
        constraints=[
            LinearConstraint(a_eq, np.ones(len(services)), np.ones(len(services))),
            LinearConstraint(a_ub, -np.inf, b_ub),
        ],
        integrality=integrality,
        bounds=Bounds(np.zeros(n_cols + len(capacity)), upper),
        options={"time_limit": remaining, "mip_rel_gap": options.mip_rel_gap, "presolve": True},
    )
    if res.x is None:
        return None
    x = np.asarray(res.x)
    chosen: list[_Column] = []
    col = 0
    for columns in pool:
        picked = max(range(len(columns)), key=lambda k: x[col + k])
        chosen.append(columns[picked])
        col += len(columns)
    return chosen
