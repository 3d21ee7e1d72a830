"""Baselines the solver is measured against, usable by people too.

- best single accelerator type: the same MILP restricted to one chip type for the whole fleet;
- greedy: services by priority then size, each on its cheapest configuration that still fits
  (first fit, no bucket splitting, no MILP) - what a careful human does by hand;
- Mélange's own formulation on its own inputs (Griggs et al. 2024, melange/solver.py): each of the
  histogram's slices goes wholly to one GPU type, GPU counts are integers.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
from scipy.optimize import Bounds, LinearConstraint, milp

from placement.solver import allocation, inputs, solve


@dataclass(frozen=True)
class SingleTypeResult:
    """The best plan using one accelerator type, and every type's $/h (None: cannot serve everything)."""

    accelerator: str | None
    plan: allocation.Plan | None
    price_per_hour_by_type: Mapping[str, float | None]
    # Set by best_single_type_per_service: the one type each service uses (accelerator is then None).
    per_service: Mapping[str, str] = field(default_factory=dict)


def _served_fully(plan: allocation.Plan, reference: Mapping[str, float]) -> bool:
    """Every service serves at least what the reference serves (the demand any plan can serve)."""
    return all(s.served_rps >= reference.get(s.service, 0.0) * (1 - 1e-6) - 1e-9 for s in plan.services)


def uncapped(problem: inputs.FleetProblem) -> inputs.FleetProblem:
    """The same problem with every pool given more nodes than any plan could use (sizing a new fleet)."""
    demand = {s.id: s for s in problem.services}
    devices: dict[str, int] = defaultdict(int)
    per_service: dict[tuple[str, str], int] = defaultdict(int)
    for c in problem.candidates:
        s = demand[c.service]
        load = sum(r / cap for r, cap in zip(s.bucket_rps, c.max_rps_per_bucket, strict=True) if cap > 0.0)
        need = (math.ceil(load) + s.min_replicas) * c.tp
        key = (c.pool, c.service + "/" + c.role)
        per_service[key] = max(per_service[key], need)
    for (pool_id, _), need in per_service.items():
        devices[pool_id] += need
    pools = tuple(
        replace(p, nodes=max(p.nodes, math.ceil(devices[p.id] / p.devices_per_node) + 1))
        for p in problem.pools
    )
    return replace(problem, pools=pools)


def best_single_type(
    problem: inputs.FleetProblem,
    options: inputs.SolveOptions | None = None,
    *,
    reference: allocation.Plan | None = None,
) -> SingleTypeResult:
    """Cheapest whole-fleet plan on one accelerator type that serves what `reference` serves.

    Without a reference the bar is all demand. MIG slices of a chip count as their own types, as each
    slice size is a separate pool. Pass `uncapped(problem)` to size a single-type fleet from scratch.
    """
    bar = (
        {s.service: s.served_rps for s in reference.services}
        if reference is not None
        else {s.id: s.requests_per_second for s in problem.services}
    )
    by_type: dict[str, float | None] = {}
    best: tuple[float, str, allocation.Plan] | None = None
    for acc in sorted({p.accelerator for p in problem.pools}):
        pools = tuple(p for p in problem.pools if p.accelerator == acc)
        ids = {p.id for p in pools}
        restricted = replace(
            problem,
            pools=pools,
            candidates=tuple(c for c in problem.candidates if c.pool in ids),
            current_replicas={k: v for k, v in problem.current_replicas.items() if k.pool in ids},
        )
        try:
            plan = solve.solve(restricted, options)
        except inputs.InfeasibleError:
            by_type[acc] = None
            continue
        if not _served_fully(plan, bar):
            by_type[acc] = None
            continue
        by_type[acc] = plan.price_per_hour
        if best is None or plan.price_per_hour < best[0]:
            best = (plan.price_per_hour, acc, plan)
    if best is None:
        return SingleTypeResult(None, None, by_type)
    return SingleTypeResult(best[1], best[2], by_type)


def best_single_type_per_service(
    problem: inputs.FleetProblem,
    options: inputs.SolveOptions | None = None,
    *,
    reference: allocation.Plan | None = None,
    sized_to_order: bool = False,
) -> SingleTypeResult:
    """Each service on its own cheapest single accelerator type: how fleets are usually run, one chip type
    per model. The fallback when no one type can serve the whole fleet (a 70B model does not fit an L4, a
    service excludes a vendor).

    In the pools as sized (default), one MILP chooses a type per service under the same pool capacity as
    the plan (SolveOptions.one_accelerator_per_service), so the comparison is like with like; with
    `sized_to_order` each service is planned alone with pool sizes ignored (sizing a new fleet).
    """
    bar = (
        {s.service: s.served_rps for s in reference.services}
        if reference is not None
        else {s.id: s.requests_per_second for s in problem.services}
    )
    if not sized_to_order:
        typed = replace(options or inputs.SolveOptions(), one_accelerator_per_service=True)
        try:
            plan = solve.solve(problem, typed)
        except inputs.InfeasibleError:
            return SingleTypeResult(None, None, {}, {})
        if not _served_fully(plan, bar):
            return SingleTypeResult(None, None, {}, {})
        types = {s.service: s.assignments[0].accelerator for s in plan.services if s.assignments}
        return SingleTypeResult(None, plan, {}, types)
    grown = uncapped(problem)
    chosen: dict[str, str] = {}
    plans: list[allocation.ServiceAllocation] = []
    for s in problem.services:
        best: tuple[float, str, allocation.ServiceAllocation] | None = None
        for acc in sorted({p.accelerator for p in grown.pools}):
            ids = {p.id for p in grown.pools if p.accelerator == acc}
            mine = tuple(c for c in grown.candidates if c.service == s.id and c.pool in ids)
            if not mine:
                continue
            sub = inputs.FleetProblem(
                services=(s,), pools=tuple(p for p in grown.pools if p.id in ids), candidates=mine
            )
            try:
                plan = solve.solve(sub, options)
            except inputs.InfeasibleError:
                continue
            if not _served_fully(plan, bar) or (best is not None and plan.price_per_hour >= best[0]):
                continue
            best = (plan.price_per_hour, acc, plan.services[0])
        if best is None:
            return SingleTypeResult(None, None, {}, {})
        chosen[s.id] = best[1]
        plans.append(best[2])
    # Each service's own MILP is optimal; a sum of per-service optima has no dual bound of its own.
    plan = allocation.assemble(
        grown.pools, plans, status="optimal", bound=math.nan, bound_source="none", stages=len(plans)
    )
    return SingleTypeResult(None, plan, {}, chosen)


# ----------------------------------------------------------------------------------------------------
# Greedy first fit.


class _Nodes:
    """Free devices per node of every pool, for first-fit packing."""

    def __init__(self, pools: Sequence[inputs.Pool]) -> None:
        self.free = {p.id: [p.devices_per_node] * p.nodes for p in pools}

    def try_place(self, pool_id: str, tp: int, replicas: int) -> bool:
        """Place `replicas` TP-`tp` replicas first-fit; all or nothing."""
        free = list(self.free[pool_id])
        for _ in range(replicas):
            for n, f in enumerate(free):
                if f >= tp:
                    free[n] -= tp
                    break
            else:
                return False
        self.free[pool_id] = free
        return True


def _replicas_alone(c: inputs.Candidate, rates: Sequence[float]) -> int | None:
    """Replicas of c alone to serve all these rates (None if some bucket with traffic is out of reach)."""
    load = 0.0
    for r, cap in zip(rates, c.max_rps_per_bucket, strict=True):
        if r <= 0.0:
            continue
        if cap <= 0.0:
            return None
        load += r / cap
    # Float noise: a load of 3.0000000001 replicas is 3 replicas.
    # Any traffic needs a whole replica, however small the load.
    return max(1, math.ceil(load - inputs.FEASIBILITY_TOLERANCE)) if load > 0.0 else 0


def greedy(problem: inputs.FleetProblem) -> allocation.Plan:
    """Each service (priority first, then largest demand) on its cheapest single configuration that fits.

    Bucket splitting, mixing chips within a service and moving others aside are what it cannot do;
    that difference is what the MILP buys. A disaggregated service takes the cheapest prefill and the
    cheapest decode configuration that fit; `auto` takes the cheaper of the two modes.
    """
    inputs.validate(problem)
    nodes = _Nodes(problem.pools)
    by_service: dict[str, list[inputs.Candidate]] = defaultdict(list)
    for c in problem.candidates:
        by_service[c.service].append(c)
    order = sorted(problem.services, key=lambda s: (-s.priority, -s.requests_per_second, s.id))
    plans: dict[str, allocation.ServiceAllocation] = {}
    for s in order:
        rates = s.bucket_rps
        options: list[list[tuple[inputs.Candidate, int]]] = []
        for role in ("aggregated", "prefill", "decode"):
            ranked = []
            for c in by_service[s.id]:
                if c.role != role:
                    continue
                n = _replicas_alone(c, rates)
                if n is None:
                    continue
                n = max(n, s.min_replicas)
                if s.max_replicas is not None and n > s.max_replicas:
                    continue
                ranked.append((n * c.price_per_hour, c.key, c, n))
            ranked.sort(key=lambda t: (t[0], t[1]))
            options.append([(c, n) for _, _, c, n in ranked])
        chosen = _fit(s, options, nodes)
        if chosen is None:
            plans[s.id] = allocation.service_allocation(
                s, (), s.requests_per_second, "no single configuration fits in what is left of the pools"
            )
        else:
            plans[s.id] = allocation.service_allocation(
                s, [allocation.assign(c, n, rates) for c, n in chosen if n > 0], 0.0, None
            )
    ordered = tuple(plans[s.id] for s in problem.services)
    # A heuristic has no dual bound: bound and gap are NaN.
    return allocation.assemble(problem.pools, ordered, status="feasible", bound=math.nan, bound_source="none")


def _fit(
    s: inputs.ServiceDemand, options: list[list[tuple[inputs.Candidate, int]]], nodes: _Nodes
) -> list[tuple[inputs.Candidate, int]] | None:
    """Place the cheapest mode whose configurations fit and respect the budget; None when none does."""
    agg, pre, dec = options
    modes: list[list[list[tuple[inputs.Candidate, int]]]] = []
    if s.serving in ("aggregated", "auto") and agg:
        modes.append([agg])
    if s.serving in ("disaggregated", "auto") and pre and dec:
        modes.append([pre, dec])

    def first_price(mode: list[list[tuple[inputs.Candidate, int]]]) -> float:
        return sum(group[0][1] * group[0][0].price_per_hour for group in mode)

    modes.sort(key=first_price)
    budget = s.max_dollars_per_hour if s.max_dollars_per_hour is not None else math.inf
    for mode in modes:
        saved = {k: list(v) for k, v in nodes.free.items()}
        picked: list[tuple[inputs.Candidate, int]] = []
        spent = 0.0
        for group in mode:
            for c, n in group:
                if spent + n * c.price_per_hour <= budget + 1e-9 and nodes.try_place(c.pool, c.tp, n):
                    picked.append((c, n))
                    spent += n * c.price_per_hour
                    break
            else:
                break
        if len(picked) == len(mode):
            return picked
        nodes.free = saved
    return None


# ----------------------------------------------------------------------------------------------------
# Mélange's formulation.


@dataclass(frozen=True)
class MelangeResult:
    """GPUs per type and the $/h of Mélange's formulation."""

    gpus: Mapping[str, int]
    price_per_hour: float


def melange(
    tputs: Mapping[str, Sequence[Sequence[float]]],
    price_per_hour: Mapping[str, float],
    distribution: Sequence[Sequence[float]],
    overall_rate: float,
    slice_factor: int = 1,
) -> MelangeResult:
    """Mélange's ILP on its own inputs (positional tputs x distribution grids), solved with HiGHS.

    min sum_g cost_g y_g  s.t.  sum_g x_sg = 1 (each slice to one GPU type),
    sum_s x_sg * load_sg * rate_s <= y_g,  x binary, y integer; load = 1 / tput (melange/solver.py).
    """
    gpus = sorted(tputs)
    if not gpus:
        raise inputs.InvalidProblemError("melange: no GPU types")
    if slice_factor < 1:
        raise inputs.InvalidProblemError("melange.slice_factor: must be >= 1")
    rows, cols = len(distribution), len(distribution[0]) if distribution else 0
    slices: list[tuple[float, list[float]]] = []
    for i in range(rows):
        for j in range(cols):
            rate = distribution[i][j] * overall_rate / slice_factor
            loads = []
            for g in gpus:
                t = tputs[g][i][j]
                loads.append(1.0 / t if t > 0 else math.inf)
            slices.extend([(rate, loads)] * slice_factor)
    n_s, n_g = len(slices), len(gpus)
    n_vars = n_s * n_g + n_g
    c = np.zeros(n_vars)
    c[n_s * n_g :] = [price_per_hour[g] for g in gpus]
    a = np.zeros((n_s + n_g, n_vars))
    lo = np.zeros(n_s + n_g)
    hi = np.zeros(n_s + n_g)
    upper = np.full(n_vars, np.inf)
    for s_idx, (rate, loads) in enumerate(slices):
        # C1: each slice goes to exactly one GPU type.
        a[s_idx, s_idx * n_g : (s_idx + 1) * n_g] = 1.0
        lo[s_idx] = hi[s_idx] = 1.0
        for g_idx, load in enumerate(loads):
            upper[s_idx * n_g + g_idx] = 1.0 if math.isfinite(load) else 0.0
            # C2: the load a GPU type carries fits in its count.
            if math.isfinite(load):
                a[n_s + g_idx, s_idx * n_g + g_idx] = load * rate
    for g_idx in range(n_g):
        a[n_s + g_idx, n_s * n_g + g_idx] = -1.0
        lo[n_s + g_idx], hi[n_s + g_idx] = -np.inf, 0.0
    res = milp(
        c,
        constraints=LinearConstraint(a, lo, hi),
        integrality=np.ones(n_vars),
        bounds=Bounds(np.zeros(n_vars), upper),
    )
    if res.status != 0 or res.x is None:
        raise inputs.SolverError(f"melange: HiGHS did not find the optimum ({res.message})")
    counts = {g: round(float(res.x[n_s * n_g + k])) for k, g in enumerate(gpus)}
    return MelangeResult(counts, sum(counts[g] * price_per_hour[g] for g in gpus))
