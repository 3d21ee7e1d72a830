"""A primal heuristic for large fleets: a good plan in seconds, with the LP bound over every candidate.

One MILP over hundreds of diverse services can stop at its time limit without any plan (issue #15: 100
services x 41 pools, no incumbent in 60 s). This builds one directly:

1. The LP relaxation over every candidate (colgen, column generation) gives a valid lower bound and each
   pool's shadow price pi_p <= 0 per device: what a device of a congested pool is worth to the fleet.
2. Services in priority order (highest first; largest first within a level) each take their cheapest plan
   at the shadow prices price_c - pi_p tp_c that fits in what the ones before them left of the pools:
   one configuration, a primary plus a filler configuration (decompose._best_pair), or, for the services
   with most at stake and those a budget binds, their exact one-service MILP (formulation.build, which
   knows floors, ceilings, budgets, serving modes and the stability penalty) with the pools' leftovers as
   rows. A service that fits nowhere whole is served in part (what fits), so higher priorities go first.
3. Repair and improvement: a service left short has other services moved off its pools (when they can
   go elsewhere whole); then each service in turn is planned again at the true prices in what the others
   leave, keeping the new plan only when it serves no less and costs less.
4. Pricing rounds and the master (price-and-branch): every plan of a service met so far is a column;
   more come from each service's cheapest plan alone at the true prices, and, per round, at the pool
   prices of the round (the LP's duals first, then the master LP's: Dantzig-Wolfe): its vectorised plan
   and, for the BOUND_MAX_MILPS services with most at stake, its exact one-service MILP over all its
   candidates, whose dual bounds give the round's Lagrangian bound. A set-partitioning MILP (one column
   per service, pool capacity; highspy, started from the heuristic's plan) then picks the cheapest
   combination that serves every service no less than the heuristic did.
5. Polish (up to POLISH_MAX_SERVICES): HiGHS runs the all-served MILP over the LP's columns and the plan's
   own, started from the plan; kept only if cheaper.
6. Bound: the best Lagrangian bound of the rounds (pool capacity relaxed at the round's prices, each
   service's integer optimum bounded alone), or the LP bound when that is higher. Claimed for a plan that
   serves every coverable request; or, when services are short, if each is short only by its own limits
   (its budget, replica ceiling or the pools' size: its own MILP proves it cannot be served more even
   with every pool to itself: `_least_unmet`), over the plans serving every service all it can.
   Otherwise the gap is unknown (NaN).

Work limits, not wall-clock caps (node limits per MILP, counted one-service MILPs, fixed rounds): the
same input gives the same plan and bound however busy the machine is. The time limit is a safety net
only; a solve that reaches it is cut short and is no longer reproducible.

Pool capacity: a pool whose TP sizes do not pack by device count (12-core nodes with TP 8) counts each
replica as dpn / floor(dpn / tp) devices (a TP-8 replica takes a whole 12-core node), which packs by
count again; when even that fails, one replica per node. Conservative: the plan always fits, while the LP
bound uses the plain device count (a relaxation), so it stays valid.
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
from numpy.typing import NDArray

from placement.solver import allocation, colgen, decompose, formulation, highs, inputs, stages

# Candidates per (service, role) the vectorised plans and the exact one-service MILPs consider: the best
# whole-replica single plans, and per bucket the cheapest per req/s and the cheapest to carry it alone.
SHORTLIST_SINGLES = 4
SHORTLIST_PER_BUCKET = 2
# Work limits, not wall-clock caps: the same input gives the same plan however busy the machine is. The
# time limit stays a safety net only (every step stops at it; a plan cut short there is not reproducible).
# Branch-and-bound nodes per one-service MILP (a service's own MILP over its shortlist solves in a few
# hundred nodes at most; at the limit HiGHS returns its incumbent).
EXACT_NODE_LIMIT = 500
# One-service MILPs the placement, repair and improvement may run in all (then vectorised plans only).
EXACT_MAX_MILPS = 400
# Relative gap of each one-service MILP (a service's own optimum; the fleet's bound is the LP's).
EXACT_MIP_GAP = 1e-3
# Services get the exact MILP, largest LP cost first, until this share of the fleet's LP cost is covered.
EXACT_COST_SHARE = 0.9
# Unmet req/s in a one-service MILP that cannot serve everything costs this multiple of the dearest
# $/(req/s) of its candidates: it serves what fits first, then saves.
UNMET_WEIGHT = 100.0
# The Lagrangian bound's exact one-service MILPs (all candidates), largest gap first: at most this many,
# each with this node limit (the rest use the closed form).
BOUND_MAX_MILPS = 400
BOUND_NODE_LIMIT = 200
# Up to this many services, HiGHS polishes the heuristic plan (the MILP over the columns the LP keeps and
# the plan's own, started from the plan: highspy) for this many branch-and-bound nodes.
POLISH_MAX_SERVICES = 30
POLISH_NODE_LIMIT = 500
# The master over every plan the heuristic met (one per service, pool capacity; highspy from the plan):
# branch-and-bound nodes.
MASTER_NODE_LIMIT = 5000
# Pricing rounds (Dantzig-Wolfe on the master's LP prices) before the master MILP.
PRICE_ROUNDS = 3
# A plan leaving services short still gets a bound when each is short only by its own limits (budget,
# ceiling, pool size), proven by its own MILP within this many nodes at this gap; at most this many.
LIMITED_NODE_LIMIT = 2000
LIMITED_MIP_GAP = 1e-9
LIMITED_MAX_SERVICES = 100
# Placement passes at most (each puts the services the previous one left short first in their level).
PLACEMENT_PASSES = 4


@dataclass
class _Svc:
    """One service: its candidates by role, target buckets, and its chosen plan."""

    demand: inputs.ServiceDemand
    index: int
    cands: dict[str, list[int]]  # role -> global candidate indices (shortlisted)
    all_cands: list[int]
    lp_cost: float
    plan: allocation.ServiceAllocation | None = None
    usage: dict[int, float] | None = None  # pool index -> effective devices
    exact: bool = False
    # Pools it has candidates on (the fewer, the earlier it is placed: it has fewer ways out).
    pools: int = 0
    # Coverable req/s the chosen plan leaves unserved (capacity ran out).
    short: float = 0.0
    # Buckets each mode can serve (an aggregated replica, or a prefill and a decode one).
    agg_ok: NDArray[np.bool_] | None = None
    pd_ok: NDArray[np.bool_] | None = None
    # Every plan of this service met on the way (by its replicas), for the master (`_master`).
    columns: dict[tuple[tuple[str, str, str, int, int], ...], _Choice] = field(default_factory=dict)


@dataclass
class _Work:
    """What is left of the deterministic work budget, and the wall-clock safety net."""

    exact_left: int
    deadline: float


def applicable(problem: inputs.FleetProblem, options: inputs.SolveOptions) -> bool:
    """The heuristic plans every problem but one asking for a single accelerator type per service."""
    del problem
    return not options.one_accelerator_per_service


def _effective_sizes(problem: inputs.FleetProblem) -> dict[tuple[str, int], float]:
    """Devices one replica of TP t counts for in a pool so that counting devices packs exactly."""
    sizes: dict[str, set[int]] = defaultdict(set)
    for c in problem.candidates:
        sizes[c.pool].add(c.tp)
    out: dict[tuple[str, int], float] = {}
    for p in problem.pools:
        tps = sorted(sizes.get(p.id, set()))
        if not tps:
            continue
        dpn = p.devices_per_node
        if formulation.divisibility_chain(tps, dpn):
            out.update({(p.id, t): float(t) for t in tps})
            continue
        # A replica of TP t in a node of dpn devices, where floor(dpn / t) fit: dpn / floor(dpn / t) each.
        eff = {t: dpn / (dpn // t) for t in tps}
        whole = all(float(e).is_integer() for e in eff.values())
        if whole and formulation.divisibility_chain(sorted({int(e) for e in eff.values()}), dpn):
            out.update({(p.id, t): e for t, e in eff.items()})
        else:
            out.update({(p.id, t): float(dpn) for t in tps})  # one replica per node
    return out


def _trace(label: str, services: Sequence[_Svc]) -> None:
    """With CHIPFIT_PRIMAL_TRACE set: the plan's $/h and shortfall after each step, CPU seconds, on stderr
    (how benchmarks/REPORT_solver.md (e) traced where the gap closes)."""
    if os.environ.get("CHIPFIT_PRIMAL_TRACE"):
        cost = sum(s.plan.price_per_hour for s in services if s.plan is not None)
        short = sum(s.short for s in services)
        cpu = time.process_time()
        print(f"[primal] {label}: cpu {cpu:.1f} ${cost:.2f} short {short:.3f}", file=sys.stderr)


def solve(problem: inputs.FleetProblem, options: inputs.SolveOptions) -> allocation.Plan:
    """The heuristic plan with the full LP bound (see the module docstring)."""
    started = time.perf_counter()
    deadline = started + options.time_limit_s
    inputs.validate(problem)
    if not applicable(problem, options):
        raise inputs.InvalidProblemError("primal: one accelerator per service needs the MILP")
    pools = problem.pools
    pool_index = {p.id: i for i, p in enumerate(pools)}
    pruned = colgen.prune(problem, replace(options, max_candidates_per_bucket=colgen.COLUMN_WIDENING))
    duals = np.asarray(pruned.pool_duals if pruned.pool_duals is not None else [0.0] * len(pools))
    duals = np.minimum(duals, 0.0)
    cands = problem.candidates
    eff_of = _effective_sizes(problem)
    eff = np.array([eff_of[(c.pool, c.tp)] for c in cands])
    pidx = np.array([pool_index[c.pool] for c in cands], dtype=np.int64)
    price = np.array([c.price_per_hour for c in cands])
    shadow = price - duals[pidx] * np.array([c.tp for c in cands], dtype=np.float64)
    capacity = np.array([float(p.devices_total) for p in pools])
    left = capacity.copy()
    # First passes: a pool the LP found congested (a shadow price) is only for the services the LP routes
    # through it; the others look elsewhere first (shadow prices alone leave them indifferent, and the
    # first placed would take what later ones need).
    reserved = shadow.copy()
    if pruned.lp_pools is not None:
        congested = duals < -colgen.REDUCED_COST_TOLERANCE
        outside = np.array(
            [
                bool(congested[pidx[i]]) and (c.service, c.pool) not in pruned.lp_pools
                for i, c in enumerate(cands)
            ]
        )
        reserved = np.where(outside, np.inf, shadow)

    services = _services(problem, price, options.on_demand_floor > 0.0)
    work = _Work(EXACT_MAX_MILPS, deadline)
    # Who gets the exact MILP: budgets first (a budget binds only there), then the largest, until
    # EXACT_COST_SHARE of the fleet's cost is covered.
    total = sum(s.lp_cost for s in services) or 1.0
    covered = 0.0
    for svc in sorted(services, key=lambda s: -s.lp_cost):
        if svc.demand.max_dollars_per_hour is not None or covered < EXACT_COST_SHARE * total:
            svc.exact = True
        covered += svc.lp_cost
    # Placement passes: services in priority order, largest first. Services a pass left short (their
    # pools filled by others placed earlier that had alternatives) go first in their level next pass.
    first_of: set[int] = set()
    # Higher priorities first (an integer plan can be short where the LP is not: the priority order then
    # decides who is served); within a level, the least flexible (fewest pools), then the largest.
    best: tuple[float, float, list[tuple[_Choice | None]]] | None = None
    for _ in range(PLACEMENT_PASSES):
        left = capacity.copy()
        for svc in services:
            svc.plan, svc.usage, svc.short = None, None, 0.0
        order = sorted(
            services,
            key=lambda s: (
                -s.demand.priority,
                s.index not in first_of,
                s.pools,
                -s.lp_cost,
                s.index,
            ),
        )
        for svc in order:
            _place(problem, svc, reserved, price, eff, pidx, left, options, svc.exact, work, True)
            if svc.short > allocation.unmet_tolerance(svc.demand):
                # Its LP pools are full: any pool, at the shadow prices.
                _place(problem, svc, shadow, price, eff, pidx, left, options, svc.exact, work, False)
        short = sum(svc.short for svc in services)
        cost = sum(svc.plan.price_per_hour for svc in services if svc.plan is not None)
        if best is None or (short, cost) < best[:2]:
            snapshot = [
                (_Choice(svc.plan, svc.usage or {}, svc.short) if svc.plan else None,) for svc in services
            ]
            best = (short, cost, snapshot)
        late = {svc.index for svc in services if svc.short > allocation.unmet_tolerance(svc.demand)}
        if not late or late <= first_of or time.perf_counter() > deadline:
            break
        first_of |= late
    assert best is not None
    _trace(f"passes: best ${best[1]:.2f} short {best[0]:.3f}", services)
    left = capacity.copy()
    for svc, (chosen,) in zip(services, best[2], strict=True):
        if chosen is not None:
            svc.plan, svc.usage, svc.short = chosen.plan, chosen.usage, chosen.short
            for p, d in chosen.usage.items():
                left[p] -= d
    # Repair: a service still short makes room by moving services off its pools, when they can go
    # elsewhere whole.
    for svc in sorted(services, key=lambda s: (-s.demand.priority, s.index)):
        if svc.short > allocation.unmet_tolerance(svc.demand) and time.perf_counter() < deadline:
            _evict_for(problem, svc, services, price, eff, pidx, left, options, work)
    # Improvement at the true prices, largest first, in what the others leave.
    for svc in sorted(services, key=lambda s: -s.lp_cost):
        if time.perf_counter() > deadline:
            break
        _place(problem, svc, price, price, eff, pidx, left, options, svc.exact, work, False)

    _trace("improved", services)
    # More plans per service for the master: the cheapest alone at the true and at the shadow prices (pool
    # capacity is the master's to enforce), and each service's exact optimum at the shadow prices (the
    # Lagrangian bound's one-service MILPs, over all candidates).
    # Then rounds of Dantzig-Wolfe pricing: the master LP's pool prices give every service its best plan
    # at those prices (a column), and the Lagrangian bound at them (the best over the rounds is kept).
    tp = np.array([c.tp for c in cands], dtype=np.float64)
    cache: dict[int, tuple[inputs.FleetProblem, formulation.Model] | None] = {}
    ctx = _BoundContext(problem, options, deadline, eff, pidx, cache)
    # Services still short: the least each must leave unserved even with every pool to itself (its own
    # budget, ceiling or the pools' size), proven by its own MILP. The bound is then over the plans serving
    # every service all it can; it is claimed only if this plan is one of them.
    floors: dict[int, float] = {}
    short_ones = [svc for svc in services if svc.short > allocation.unmet_tolerance(svc.demand)]
    for svc in short_ones[:LIMITED_MAX_SERVICES]:
        least = _least_unmet(ctx, svc)
        if least is not None:
            floors[svc.index] = least
    vectorised = [svc for svc in services if not _must_exact(problem, svc, options)]
    for svc in vectorised:
        _remember(svc, _vector_plan(problem, svc, price, eff, pidx, capacity.copy()))
    best_bound: _Lagrangian | None = None
    pi = duals
    for _round in range(PRICE_ROUNDS):
        at = price - pi[pidx] * tp
        round_bound = lagrangian_bound(ctx, services, pi, at, floors)
        if best_bound is None or round_bound.value > best_bound.value:
            best_bound = round_bound
        for svc in vectorised:
            _remember(svc, _vector_plan(problem, svc, at, eff, pidx, capacity.copy()))
        for svc in services:
            if svc.index in round_bound.optima:
                _remember(svc, round_bound.optima[svc.index])
        _trace(f"round {_round}: bound {round_bound.value:.2f}", services)
        nxt = _master_prices(problem, services, capacity, options, deadline)
        if nxt is None or np.allclose(nxt, pi) or time.perf_counter() > deadline:
            break
        pi = nxt
    if _master(problem, services, capacity, options, deadline):
        _trace("master", services)
        left = capacity.copy()
        for svc in services:
            for p, d in (svc.usage or {}).items():
                left[p] -= d
        # The master may have freed room: one more improvement pass at the true prices.
        for svc in sorted(services, key=lambda s: -s.lp_cost):
            if time.perf_counter() > deadline:
                break
            _place(problem, svc, price, price, eff, pidx, left, options, svc.exact, work, False)

    _trace("after master", services)
    plans = [svc.plan for svc in services if svc.plan is not None]
    # The LP bound is a bound on plans serving every coverable request: claimed only for such a plan.
    served_all = all(svc.short <= allocation.unmet_tolerance(svc.demand) for svc in services)
    if served_all and len(services) <= POLISH_MAX_SERVICES:
        better = _polish(problem, pruned, plans, options, deadline)
        if better is not None:
            plans = better
        _trace(f"polish {sum(p.price_per_hour for p in plans):.2f}", services)
    bound = pruned.full_lp_bound if pruned.full_lp_bound is not None and served_all else math.nan
    source: allocation.BoundSource = "full-lp" if not math.isnan(bound) else "none"
    lagrangian = best_bound.value if best_bound is not None else -math.inf
    # The Lagrangian bound covers the plans serving every service all it can (no more than its floor
    # unserved): claimed when this plan is one of them.
    all_it_can = all(
        svc.short <= floors.get(svc.index, 0.0) + allocation.unmet_tolerance(svc.demand) for svc in services
    )
    if all_it_can and lagrangian > (-math.inf if math.isnan(bound) else bound):
        bound, source = lagrangian, "lagrangian"
    return allocation.assemble(
        pools,
        plans,
        status="feasible",
        bound=min(bound, sum(p.price_per_hour for p in plans)),
        bound_source=source,
        solve_seconds=time.perf_counter() - started,
        stages=1,
    )


def _services(
    problem: inputs.FleetProblem, price: NDArray[np.float64], with_on_demand: bool = False
) -> list[_Svc]:
    """Per service: shortlisted candidates per role, the buckets each mode can serve, its LP cost."""
    by: dict[str, dict[str, list[int]]] = defaultdict(lambda: defaultdict(list))
    for i, c in enumerate(problem.candidates):
        by[c.service][c.role].append(i)
    running = {c.key for c in problem.candidates if problem.current_replicas.get(c.key, 0) > 0}
    spot = {p.id: p.spot for p in problem.pools}
    out: list[_Svc] = []
    for j, s in enumerate(problem.services):
        rates = np.asarray(s.bucket_rps, dtype=np.float64)
        roles = by.get(s.id, {})
        ok: dict[str, NDArray[np.bool_]] = {}
        lp: dict[str, float] = {}
        kept: dict[str, list[int]] = {}
        for role in inputs.ROLES:
            idx = roles.get(role, [])
            if not idx:
                ok[role] = np.zeros(rates.size, dtype=bool)
                lp[role], kept[role] = 0.0, []
                continue
            caps = _caps(problem.candidates, idx, rates.size)
            ok[role] = (caps > 0.0).any(axis=0) & (rates > 0.0)
            with np.errstate(divide="ignore"):
                per_rps = np.where(caps > 0.0, price[idx][:, None] / np.where(caps > 0.0, caps, 1.0), np.inf)
            lp[role] = float((rates * np.where(ok[role], per_rps.min(axis=0), 0.0)).sum())
            picked = _shortlist(caps, price[idx], rates * ok[role], per_rps)
            # The best on-demand configurations too (an on-demand floor needs them in the exact MILP).
            on_demand = [k for k, i in enumerate(idx) if not spot[problem.candidates[i].pool]]
            if with_on_demand and on_demand and len(on_demand) < len(idx):
                sub = np.asarray(on_demand)
                picked |= {
                    int(sub[k])
                    for k in _shortlist(caps[sub], price[idx][sub], rates * ok[role], per_rps[sub])
                }
            picked |= {k for k, i in enumerate(idx) if problem.candidates[i].key in running}
            picked |= {k for k, i in enumerate(idx) if problem.candidates[i].key in problem.replica_bounds}
            kept[role] = [idx[k] for k in sorted(picked)]
        agg_ok = ok["aggregated"]
        pd_ok = ok["prefill"] & ok["decode"]
        modes = []
        if s.serving != "disaggregated" and kept["aggregated"]:
            modes.append(lp["aggregated"])
        if s.serving != "aggregated" and kept["prefill"] and kept["decode"]:
            modes.append(lp["prefill"] + lp["decode"])
        if s.min_replicas > 0 and not modes:
            # As formulation.build says it (the caller may plan again without floors).
            raise inputs.InfeasibleError(
                f"service {s.id}: replicas.min is {s.min_replicas} but no configuration of its serving "
                f"mode ({s.serving}) fits"
            )
        all_kept = [i for role in inputs.ROLES for i in kept[role]]
        n_pools = len({problem.candidates[i].pool for role in inputs.ROLES for i in roles.get(role, [])})
        out.append(
            _Svc(
                s, j, kept, all_kept, min(modes) if modes else 0.0, agg_ok=agg_ok, pd_ok=pd_ok, pools=n_pools
            )
        )
    return out


def _caps(cands: Sequence[inputs.Candidate], idx: Sequence[int], n_buckets: int) -> NDArray[np.float64]:
    """Capacity per bucket of these candidates (rows)."""
    return np.array([cands[i].max_rps_per_bucket for i in idx], dtype=np.float64).reshape(len(idx), n_buckets)


def _loads(caps: NDArray[np.float64], rates: NDArray[np.float64]) -> NDArray[np.float64]:
    """Replicas each candidate needs to carry `rates` alone (inf when it cannot take some bucket)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        per = np.where(caps > 0.0, rates[None, :] / np.where(caps > 0.0, caps, 1.0), np.inf)
    per = np.where(rates[None, :] > 0.0, per, 0.0)
    out: NDArray[np.float64] = per.sum(axis=1)
    return out


def _shortlist(
    caps: NDArray[np.float64],
    price: NDArray[np.float64],
    rates: NDArray[np.float64],
    per_rps: NDArray[np.float64],
) -> set[int]:
    """Best whole-replica single plans, and per bucket the cheapest per req/s and to carry it alone."""
    keep: set[int] = {int(np.argmin(price))}  # the cheapest replica, for a floor without traffic
    if not rates.any():
        return keep
    load = _loads(caps, rates)
    single = np.where(
        np.isfinite(load), np.maximum(1.0, np.ceil(load - inputs.FEASIBILITY_TOLERANCE)) * price, np.inf
    )
    keep.update(
        int(k) for k in np.argsort(single, kind="stable")[:SHORTLIST_SINGLES] if np.isfinite(single[k])
    )
    for b in np.flatnonzero(rates > 0.0):
        able = np.flatnonzero(caps[:, b] > 0.0)
        if not able.size:
            continue
        keep.update(int(k) for k in able[np.argsort(per_rps[able, b], kind="stable")[:SHORTLIST_PER_BUCKET]])
        whole = np.ceil(rates[b] / caps[able, b] - inputs.FEASIBILITY_TOLERANCE) * price[able]
        keep.add(int(able[int(np.argmin(whole))]))
    return keep


@dataclass(frozen=True)
class _Choice:
    """A service's plan: its allocation, effective devices per pool, coverable req/s left unserved."""

    plan: allocation.ServiceAllocation
    usage: dict[int, float]
    short: float

    @property
    def usage_key(self) -> list[tuple[str, str, str, int, int]]:
        """The plan's replicas per configuration (pool, role, precision, tp, replicas): its identity."""
        return [(a.pool, a.role, a.precision, a.tp, a.replicas) for a in self.plan.assignments]


def _place(
    problem: inputs.FleetProblem,
    svc: _Svc,
    score: NDArray[np.float64],
    price: NDArray[np.float64],
    eff: NDArray[np.float64],
    pidx: NDArray[np.int64],
    left: NDArray[np.float64],
    options: inputs.SolveOptions,
    exact: bool,
    work: _Work,
    first: bool,
) -> None:
    """Plan one service in what is left of the pools (first time), or re-plan it and keep the better."""
    if svc.usage:
        for p, d in svc.usage.items():
            left[p] += d
    must_exact = _must_exact(problem, svc, options)
    choice = None
    if must_exact or (exact and work.exact_left > 0):
        work.exact_left -= 1
        choice = _exact_plan(problem, svc, score, price, eff, pidx, left, options, work.deadline)
    if choice is None:
        choice = _vector_plan(problem, svc, score, eff, pidx, left)
        if not must_exact:
            _remember(svc, choice)
    else:
        _remember(svc, choice)
    old = None if first or svc.plan is None else _Choice(svc.plan, svc.usage or {}, svc.short)
    tol = allocation.unmet_tolerance(svc.demand)
    if old is not None and not (
        choice.short < old.short - tol
        or (choice.short <= old.short + tol and choice.plan.price_per_hour < old.plan.price_per_hour - 1e-9)
    ):
        choice = old
    for p, d in choice.usage.items():
        left[p] -= d
    svc.plan, svc.usage, svc.short = choice.plan, choice.usage, choice.short


def _must_exact(problem: inputs.FleetProblem, svc: _Svc, options: inputs.SolveOptions) -> bool:
    """A budget, an on-demand floor, per-configuration replica bounds (FleetProblem.replica_bounds), or a
    stability penalty on what runs: only the exact one-service MILP (formulation.build) knows them, so the
    vectorised plans are no plans for this service."""
    return (
        svc.demand.max_dollars_per_hour is not None
        or options.on_demand_floor > 0.0
        or any(key.service == svc.demand.id for key in problem.replica_bounds)
        or (
            options.move_penalty_per_device_hour > 0.0
            and any(problem.candidates[i].key in problem.current_replicas for i in svc.all_cands)
        )
    )


def _fits(
    counts: Mapping[int, int], eff: NDArray[np.float64], pidx: NDArray[np.int64], left: NDArray[np.float64]
) -> bool:
    """These replicas per candidate fit in what is left of their pools."""
    need: dict[int, float] = defaultdict(float)
    for i, n in counts.items():
        need[int(pidx[i])] += n * float(eff[i])
    return all(d <= left[p] + inputs.FEASIBILITY_TOLERANCE for p, d in need.items())


def _vector_plan(
    problem: inputs.FleetProblem,
    svc: _Svc,
    score: NDArray[np.float64],
    eff: NDArray[np.float64],
    pidx: NDArray[np.int64],
    left: NDArray[np.float64],
) -> _Choice:
    """Cheapest single or primary+filler plan per role that fits; what fits of it when nothing does."""
    s = svc.demand
    rates = np.asarray(s.bucket_rps, dtype=np.float64)
    assert svc.agg_ok is not None and svc.pd_ok is not None
    modes: list[tuple[float, float, dict[int, int], dict[int, NDArray[np.float64]]]] = []
    if s.serving != "disaggregated" and svc.cands["aggregated"]:
        target = rates * svc.agg_ok
        got = _role_plan(problem, svc.cands["aggregated"], target, score, eff, pidx, left, s)
        if got is not None:
            counts, routed, served = got
            modes.append((float(target.sum()) - served, _cost(counts, score), counts, routed))
    if s.serving != "aggregated" and svc.cands["prefill"] and svc.cands["decode"]:
        target = rates * svc.pd_ok
        pre = _role_plan(problem, svc.cands["prefill"], target, score, eff, pidx, left, s)
        if pre is not None:
            after = left.copy()
            for i, n in pre[0].items():
                after[pidx[i]] -= n * eff[i]
            # Decode carries what prefill does (a request prefilled but never decoded is not served).
            served_pre = sum(pre[1].values(), np.zeros_like(rates))
            dec = _role_plan(problem, svc.cands["decode"], served_pre, score, eff, pidx, after, s)
            if dec is not None:
                served_dec = sum(dec[1].values(), np.zeros_like(rates))
                keep = np.minimum(served_pre, served_dec)
                routed = {i: _scaled(r, keep, served_pre) for i, r in pre[1].items()}
                routed.update({i: _scaled(r, keep, served_dec) for i, r in dec[1].items()})
                counts = {**pre[0], **dec[0]}
                modes.append((float(target.sum() - keep.sum()), _cost(counts, score), counts, routed))
    zero = np.zeros_like(rates)
    if modes:
        short, _, counts, routed = min(modes, key=lambda m: (round(m[0], 9), m[1]))
    else:
        short, counts, routed = float((rates * (svc.agg_ok | svc.pd_ok)).sum()), {}, {}
    assignments = [
        allocation.assign(problem.candidates[i], n, tuple(float(x) for x in routed.get(i, zero)))
        for i, n in counts.items()
        if n > 0
    ]
    unmet = max(0.0, s.requests_per_second - _served(assignments, rates.size))
    reason = None
    if short > allocation.unmet_tolerance(s):
        reason = "pools full: capacity is taken by services placed first (equal or higher priority)"
    if reason is None and unmet > allocation.unmet_tolerance(s):
        reason = "no candidate configuration meets the SLO for some request sizes"
    plan = allocation.service_allocation(s, assignments, unmet, reason)
    usage: dict[int, float] = defaultdict(float)
    for i, n in counts.items():
        usage[int(pidx[i])] += n * float(eff[i])
    return _Choice(plan, dict(usage), max(0.0, short))


def _scaled(
    r: NDArray[np.float64], keep: NDArray[np.float64], total: NDArray[np.float64]
) -> NDArray[np.float64]:
    """r scaled, bucket by bucket, from `total` down to `keep`."""
    with np.errstate(divide="ignore", invalid="ignore"):
        out: NDArray[np.float64] = np.where(total > 0.0, r * keep / np.where(total > 0.0, total, 1.0), 0.0)
    return out


def _cost(counts: Mapping[int, int], score: NDArray[np.float64]) -> float:
    return float(sum(n * score[i] for i, n in counts.items()))


def _served(assignments: Sequence[allocation.Assignment], n_buckets: int) -> float:
    """Req/s served end to end: min(aggregated + prefill, aggregated + decode) per bucket."""
    front = np.zeros(n_buckets)
    back = np.zeros(n_buckets)
    for a in assignments:
        flow = np.asarray(a.bucket_rps, dtype=np.float64)
        if a.role != "decode":
            front += flow
        if a.role != "prefill":
            back += flow
    return float(np.minimum(front, back).sum())


def _role_plan(
    problem: inputs.FleetProblem,
    idx: list[int],
    rates: NDArray[np.float64],
    score: NDArray[np.float64],
    eff: NDArray[np.float64],
    pidx: NDArray[np.int64],
    left: NDArray[np.float64],
    s: inputs.ServiceDemand,
) -> tuple[dict[int, int], dict[int, NDArray[np.float64]], float] | None:
    """Replicas per candidate, routed req/s per bucket and the req/s served, for one role."""
    tol = inputs.FEASIBILITY_TOLERANCE
    ids = np.asarray(idx, dtype=np.int64)
    sc = score[ids]
    room = np.floor(left[pidx[ids]] / eff[ids] + tol)
    most = np.minimum(room, float(s.max_replicas) if s.max_replicas is not None else np.inf)
    floor = s.min_replicas
    if not rates.any():
        if floor <= 0:
            return {}, {}, 0.0
        able = np.flatnonzero(most >= floor)
        if not able.size:
            return None
        k = int(able[np.argmin(sc[able])])
        return {int(ids[k]): floor}, {}, 0.0
    caps = _caps(problem.candidates, idx, rates.size)
    load = _loads(caps, rates)
    need = np.where(np.isfinite(load), np.maximum(float(max(1, floor)), np.ceil(load - tol)), np.inf)
    single = np.where(need <= most, need * sc, np.inf)
    total = float(rates.sum())
    best_cost = math.inf
    best: tuple[dict[int, int], dict[int, NDArray[np.float64]], float] | None = None
    if np.isfinite(single).any():
        k = int(np.argmin(single))
        best_cost = float(single[k])
        best = {int(ids[k]): int(need[k])}, {int(ids[k]): rates.copy()}, total
    # A primary plus a filler, among the few best by LP cost (ratio split: decompose._best_pair).
    lp_cost = np.where(np.isfinite(load), load * sc, np.inf)
    top = [int(k) for k in np.argsort(lp_cost, kind="stable")[:4]]
    top = list(dict.fromkeys(top + [int(k) for k in np.argsort(single, kind="stable")[:2]]))
    top = [k for k in top if math.isfinite(float(sc[k]))]
    if len(top) >= 2:
        try:
            pair = decompose._best_pair(rates, caps[top], sc[top])
        except inputs.SolverError:
            pair = None
        if pair is not None and pair.score < best_cost - 1e-9 and sum(pair.replicas) >= floor:
            counts = {int(ids[top[k]]): n for k, n in enumerate(pair.replicas) if n > 0}
            if (
                all(n <= most[top[k]] for k, n in enumerate(pair.replicas))
                and _fits(counts, eff, pidx, left)
                and (s.max_replicas is None or sum(counts.values()) <= s.max_replicas)
            ):
                routed = {
                    int(ids[top[k]]): np.asarray(pair.routed[k]) for k, n in enumerate(pair.replicas) if n > 0
                }
                best = counts, routed, total
    if best is not None:
        return best
    # Nothing carries it all: the candidate serving the most with the replicas that fit (then the cheapest).
    with np.errstate(divide="ignore", invalid="ignore"):
        share = np.where(np.isfinite(load) & (most >= max(1, floor)), np.minimum(1.0, most / load), 0.0)
    if not (share > 0.0).any():
        return None
    k = int(np.lexsort((sc, -np.round(share, 9)))[0])
    n = int(min(most[k], max(float(max(1, floor)), math.ceil(load[k] * share[k] - tol))))
    return {int(ids[k]): n}, {int(ids[k]): rates * share[k]}, total * float(share[k])


def _exact_plan(
    problem: inputs.FleetProblem,
    svc: _Svc,
    score: NDArray[np.float64],
    price: NDArray[np.float64],
    eff: NDArray[np.float64],
    pidx: NDArray[np.int64],
    left: NDArray[np.float64],
    options: inputs.SolveOptions,
    deadline: float,
) -> _Choice | None:
    """The service's own MILP over its shortlist at these prices, in what is left of the pools.

    Serves everything coverable if that fits; else as much as fits (unmet weighted far above any price),
    then the cheapest. None when HiGHS gives no answer in time (the caller falls back to _vector_plan).
    """
    s = svc.demand
    cands = [problem.candidates[i] for i in svc.all_cands]
    if not cands:
        return None
    sub = inputs.FleetProblem(
        (s,),
        problem.pools,
        tuple(cands),
        {k: v for k, v in problem.current_replicas.items() if k.service == s.id},
        {k: v for k, v in problem.replica_bounds.items() if k.service == s.id},
    )
    opts = replace(
        options,
        max_candidates_per_bucket=None,
        mip_rel_gap=max(options.mip_rel_gap, EXACT_MIP_GAP),
        surge_shortfall_price_factor=0.0,
    )
    try:
        model = formulation.build(sub, opts)
    except inputs.PlacementError:
        return None
    where = {c.key: i for c, i in zip(cands, svc.all_cands, strict=True)}
    c = model.c.copy()
    var_hi = model.var_hi.copy()
    rows: dict[int, NDArray[np.float64]] = {}
    for k, cand in enumerate(model.candidates):
        i = where[cand.key]
        col = model.n_index[k]
        if not math.isfinite(float(score[i])):
            var_hi[col] = 0.0  # reserved for other services in this pass
            continue
        c[col] += float(score[i] - price[i])
        rows.setdefault(int(pidx[i]), np.zeros_like(c))[col] = float(eff[i])
    extra = [(vec, max(0.0, float(left[p]) + inputs.FEASIBILITY_TOLERANCE)) for p, vec in rows.items()]
    unmet = np.zeros_like(c)
    for (_sid, b), col in model.u_index.items():
        if (s.id, b) not in model.uncoverable:
            unmet[col] = s.bucket_rps[b]
    end = deadline
    try:
        run = highs.run(model, c, var_hi, extra, opts, end, EXACT_NODE_LIMIT)
        if run is None:
            # Not everything fits (or a budget rules it out): serve what fits first, then save.
            var_hi = var_hi.copy()
            for col in model.u_index.values():
                var_hi[col] = 1.0
            caps = np.array([cd.max_rps_per_bucket for cd in model.candidates], dtype=np.float64)
            prices = np.array([cd.price_per_hour for cd in model.candidates])
            with np.errstate(divide="ignore"):
                dearest = float(
                    np.max(np.where(caps > 0.0, prices[:, None] / np.where(caps > 0.0, caps, 1.0), 0.0))
                )
            run = highs.run(
                model,
                c + UNMET_WEIGHT * max(dearest, 1.0) * unmet,
                var_hi,
                extra,
                opts,
                end,
                EXACT_NODE_LIMIT,
            )
    except inputs.SolverError:
        return None
    if run is None:
        return None
    try:
        one = stages.decode(sub, model, run, stages=1, seconds=0.0)
    except inputs.SolverError:
        return None
    plan = one.services[0]
    usage: dict[int, float] = defaultdict(float)
    for k, cand in enumerate(model.candidates):
        n = round(float(run.x[model.n_index[k]]))
        if n > 0:
            i = where[cand.key]
            usage[int(pidx[i])] += n * float(eff[i])
    return _Choice(plan, dict(usage), max(0.0, float(unmet @ run.x)))


def _evict_for(
    problem: inputs.FleetProblem,
    svc: _Svc,
    services: Sequence[_Svc],
    price: NDArray[np.float64],
    eff: NDArray[np.float64],
    pidx: NDArray[np.int64],
    left: NDArray[np.float64],
    options: inputs.SolveOptions,
    work: _Work,
) -> None:
    """Move other services off the pools `svc` can use, then plan `svc` again.

    A moved service must still serve all it did (of any priority: moving it costs it nothing it is owed).
    Kept only when `svc` then serves more; else every move is undone.
    """
    mine = {int(pidx[i]) for i in svc.all_cands}
    closed = np.array([int(p) in mine for p in pidx])
    saved = left.copy()
    before = {id(t): (t.plan, t.usage, t.short) for t in services}
    old_short = svc.short
    movers = [t for t in services if t is not svc and t.usage and any(p in mine for p in t.usage)]
    movers.sort(key=lambda t: t.lp_cost)
    elsewhere = np.where(closed, np.inf, price)
    for t in movers:
        if time.perf_counter() > work.deadline:
            break
        was = t.short
        _place(problem, t, elsewhere, price, eff, pidx, left, options, t.exact, work, False)
        if t.short > was + allocation.unmet_tolerance(t.demand):
            continue  # _place keeps the old plan when the new one serves less
    _place(problem, svc, price, price, eff, pidx, left, options, svc.exact, work, False)
    if svc.short < old_short - allocation.unmet_tolerance(svc.demand):
        return
    # No gain: undo every move.
    left[:] = saved
    for t in services:
        t.plan, t.usage, t.short = before[id(t)]


@dataclass(frozen=True)
class _BoundContext:
    """What the one-service MILPs of the bound share within one solve."""

    problem: inputs.FleetProblem
    options: inputs.SolveOptions
    deadline: float
    eff: NDArray[np.float64]
    pidx: NDArray[np.int64]
    cache: dict[int, tuple[inputs.FleetProblem, formulation.Model] | None]
    by_key: dict[inputs.CandidateKey, int] = field(default_factory=dict)
    owned: dict[str, list[int]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for i, c in enumerate(self.problem.candidates):
            self.by_key[c.key] = i
            self.owned.setdefault(c.service, []).append(i)

    @property
    def opts(self) -> inputs.SolveOptions:
        return replace(
            self.options,
            max_candidates_per_bucket=None,
            mip_rel_gap=max(self.options.mip_rel_gap, EXACT_MIP_GAP),
        )


def lagrangian_bound(
    ctx: _BoundContext,
    services: Sequence[_Svc],
    duals: NDArray[np.float64],
    shadow: NDArray[np.float64],
    floors: Mapping[int, float],
) -> _Lagrangian:
    """A lower bound on every plan serving every service all it can: pool capacity relaxed at prices pi.

    For any pi <= 0, L(pi) = pi . capacity + sum_s v_s(pi), v_s(pi) the least a service can pay alone with
    its replicas priced at price_c - pi_p tp_c, bounds the fleet's optimum from below (Lagrangian
    relaxation of the pools' device counts, which every plan obeys). pi = the LP's pool duals makes it at
    least the LP bound once v_s is the service's integer optimum: it knows that 0.3 of a replica costs
    one. v_s is bounded from below two ways: HiGHS's dual bound on the service's own MILP over all its
    candidates (largest gap between its plan and its closed form first, BOUND_MAX_MILPS of them, each
    within BOUND_NODE_LIMIT nodes: a work limit, so the bound does not depend on the machine's load), else
    `_cheap_bound` (closed form). A service in `floors` (it cannot be served in full even alone) may leave
    that many req/s unserved: its MILP says so (it always runs), and 0 is its closed form.

    Returns the bound and, per service index, the plan those MILPs found (with its effective devices per
    pool): the service's best plan at these prices, a column for the master.
    """
    problem = ctx.problem
    capacity = np.array([float(p.devices_total) for p in problem.pools])
    total = float(duals @ capacity)
    cheap = {
        svc.index: 0.0
        if svc.index in floors
        else _cheap_bound(problem, svc, ctx.owned.get(svc.demand.id, []), shadow)
        for svc in services
    }
    exact: dict[int, float] = {}
    optima: dict[int, _Choice] = {}
    ranked = [svc for svc in services if svc.index in floors] + sorted(
        (svc for svc in services if svc.index not in floors),
        key=lambda t: (-((t.plan.price_per_hour if t.plan else 0.0) - cheap[t.index]), t.index),
    )[:BOUND_MAX_MILPS]
    for svc in ranked:
        if time.perf_counter() > ctx.deadline:
            break
        built = _one_service_model(ctx, svc)
        if built is None:
            continue
        sub, model = built
        cost = model.c.copy()
        for k, cand in enumerate(model.candidates):
            cost[model.n_index[k]] += float(shadow[ctx.by_key[cand.key]] - cand.price_per_hour)
        var_hi = model.var_hi
        rows: list[tuple[NDArray[np.float64], float]] = []
        if svc.index in floors:
            unmet, var_hi = _unmet_vector(svc, model)
            rows.append((unmet, floors[svc.index] + allocation.unmet_tolerance(svc.demand)))
        try:
            run = highs.run(model, cost, var_hi, rows, ctx.opts, ctx.deadline, BOUND_NODE_LIMIT)
        except inputs.SolverError:
            continue
        if run is not None and math.isfinite(run.bound):
            exact[svc.index] = max(run.bound, cheap[svc.index])
        if run is not None:
            choice = _decoded(sub, model, run, ctx.by_key, ctx.eff, ctx.pidx)
            if choice is not None:
                optima[svc.index] = choice
    parts = {svc.index: exact.get(svc.index, cheap[svc.index]) for svc in services}
    return _Lagrangian(total + sum(parts.values()), optima)


@dataclass(frozen=True)
class _Lagrangian:
    """A Lagrangian bound, and the plans its one-service MILPs found."""

    value: float
    optima: dict[int, _Choice]


def _one_service_model(ctx: _BoundContext, svc: _Svc) -> tuple[inputs.FleetProblem, formulation.Model] | None:
    """The service's own MILP over all its candidates (built once per solve)."""
    if svc.index in ctx.cache:
        return ctx.cache[svc.index]
    owned = ctx.owned.get(svc.demand.id, [])
    # Its own replica bounds (FleetProblem.replica_bounds) too: they only restrict it, so the bound holds.
    sub = inputs.FleetProblem(
        (svc.demand,),
        ctx.problem.pools,
        tuple(ctx.problem.candidates[i] for i in owned),
        replica_bounds={k: v for k, v in ctx.problem.replica_bounds.items() if k.service == svc.demand.id},
    )
    built: tuple[inputs.FleetProblem, formulation.Model] | None
    try:
        built = (sub, formulation.build(sub, ctx.opts))
    except inputs.PlacementError:
        built = None
    ctx.cache[svc.index] = built
    return built


def _unmet_vector(svc: _Svc, model: formulation.Model) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Unserved coverable req/s as a row over the one-service model's columns, and its column bounds with
    every unmet share free."""
    unmet = np.zeros(model.c.size)
    var_hi = model.var_hi.copy()
    for (_sid, b), col in model.u_index.items():
        var_hi[col] = 1.0
        if (svc.demand.id, b) not in model.uncoverable:
            unmet[col] = svc.demand.bucket_rps[b]
    return unmet, var_hi


def _least_unmet(ctx: _BoundContext, svc: _Svc) -> float | None:
    """The least coverable req/s the service must leave unserved even with every pool to itself (its
    budget, replica ceiling or the pools' size forbid more), proven by its own MILP over all its
    candidates within LIMITED_NODE_LIMIT nodes; None when not proven."""
    built = _one_service_model(ctx, svc)
    if built is None:
        return None
    _sub, model = built
    unmet, var_hi = _unmet_vector(svc, model)
    opts = replace(ctx.opts, mip_rel_gap=LIMITED_MIP_GAP)
    try:
        least = highs.run(model, unmet, var_hi, (), opts, ctx.deadline, LIMITED_NODE_LIMIT)
    except inputs.SolverError:
        return None
    if least is None or not least.optimal:
        return None
    return max(0.0, float(unmet @ least.x))


def _decoded(
    sub: inputs.FleetProblem,
    model: formulation.Model,
    run: highs.Run,
    by_key: Mapping[inputs.CandidateKey, int],
    eff: NDArray[np.float64],
    pidx: NDArray[np.int64],
) -> _Choice | None:
    """A one-service MILP's solution as a plan with its effective devices per pool (None if unusable)."""
    try:
        plan = stages.decode(sub, model, run, stages=1, seconds=0.0).services[0]
    except inputs.SolverError:
        return None
    usage: dict[int, float] = defaultdict(float)
    for k, cand in enumerate(model.candidates):
        n = round(float(run.x[model.n_index[k]]))
        if n > 0:
            i = by_key[cand.key]
            usage[int(pidx[i])] += n * float(eff[i])
    short = sum(
        sub.services[0].bucket_rps[b] * min(1.0, max(0.0, float(run.x[col])))
        for (_sid, b), col in model.u_index.items()
        if (_sid, b) not in model.uncoverable
    )
    return _Choice(plan, dict(usage), short)


def _remember(svc: _Svc, choice: _Choice) -> None:
    """Keep a plan of the service as a column for the master (the one serving most for its replicas)."""
    key = tuple(sorted(choice.usage_key))
    old = svc.columns.get(key)
    if old is None or choice.short < old.short:
        svc.columns[key] = choice


@dataclass
class _MasterModel:
    """The master over the remembered plans: the offered plans per service and the HiGHS model."""

    offered: list[list[_Choice]]
    first: NDArray[np.int64]  # column of each service's current plan
    cost: NDArray[np.float64]
    weight: float
    highs: Any


def _master_model(
    services: Sequence[_Svc],
    capacity: NDArray[np.float64],
    options: inputs.SolveOptions,
    problem: inputs.FleetProblem,
) -> _MasterModel | None:
    """The set-partitioning master (see `_master`); None when a service has no plan yet.

    A service whose running replicas carry a stability penalty keeps its plan (the master prices $/h only).
    """
    import highspy  # the official HiGHS binding: the master starts from the heuristic's plan

    offered: list[list[_Choice]] = []
    for svc in services:
        if svc.plan is None:
            return None
        tol = allocation.unmet_tolerance(svc.demand)
        current = _Choice(svc.plan, svc.usage or {}, svc.short)
        here = tuple(sorted(current.usage_key))
        if options.move_penalty_per_device_hour > 0.0 and any(
            problem.candidates[i].key in problem.current_replicas for i in svc.all_cands
        ):
            offered.append([current])
            continue
        offered.append(
            [current]
            + [c for key, c in sorted(svc.columns.items()) if c.short <= svc.short + tol and key != here]
        )
    dearest = max(
        (c.plan.price_per_hour / c.plan.served_rps for m in offered for c in m if c.plan.served_rps > 0.0),
        default=1.0,
    )
    weight = UNMET_WEIGHT * max(dearest, 1.0)
    cost: list[float] = []
    index: list[int] = []
    value: list[float] = []
    starts = [0]
    n_services = len(offered)
    for j, m in enumerate(offered):
        for c in m:
            cost.append(c.plan.price_per_hour + weight * c.short)
            pools = sorted(c.usage)
            index += [j, *(n_services + p for p in pools)]
            value += [1.0, *(c.usage[p] for p in pools)]
            starts.append(len(index))
    h = highspy.Highs()  # type: ignore[no-untyped-call]
    h.setOptionValue("output_flag", False)
    lp = highspy.HighsLp()
    lp.num_col_ = len(cost)
    lp.num_row_ = n_services + capacity.size
    lp.col_cost_ = np.asarray(cost)
    lp.col_lower_ = np.zeros(len(cost))
    lp.col_upper_ = np.ones(len(cost))
    lp.row_lower_ = np.concatenate([np.ones(n_services), np.full(capacity.size, -highspy.kHighsInf)])
    lp.row_upper_ = np.concatenate([np.ones(n_services), capacity + inputs.FEASIBILITY_TOLERANCE])
    lp.a_matrix_.format_ = highspy.MatrixFormat.kColwise
    lp.a_matrix_.start_ = np.asarray(starts, dtype=np.int32)
    lp.a_matrix_.index_ = np.asarray(index, dtype=np.int32)
    lp.a_matrix_.value_ = np.asarray(value, dtype=np.float64)
    with highs._quiet_stdout():
        h.passModel(lp)
        h.setOptionValue("mip_rel_gap", options.mip_rel_gap)
        h.setOptionValue("mip_max_nodes", MASTER_NODE_LIMIT)
    first = np.cumsum([0] + [len(m) for m in offered])[:-1].astype(np.int64)
    return _MasterModel(offered, first, np.asarray(cost), weight, h)


def _master_prices(
    problem: inputs.FleetProblem,
    services: Sequence[_Svc],
    capacity: NDArray[np.float64],
    options: inputs.SolveOptions,
    deadline: float,
) -> NDArray[np.float64] | None:
    """The pool prices (<= 0, $/h per device) of the master's LP relaxation: Dantzig-Wolfe's duals."""
    master = _master_model(services, capacity, options, problem)
    if master is None:
        return None
    h = master.highs
    with highs._quiet_stdout():
        h.setOptionValue("time_limit", max(deadline - time.perf_counter(), 0.5))
        h.run()
    solution = h.getSolution()
    if not solution.dual_valid:
        return None
    # HiGHS's row duals of a minimisation: <= 0 on a binding upper bound.
    duals = np.asarray(solution.row_dual, dtype=np.float64)[len(master.offered) :]
    out: NDArray[np.float64] = np.minimum(duals, 0.0)
    return out


def _master(
    problem: inputs.FleetProblem,
    services: Sequence[_Svc],
    capacity: NDArray[np.float64],
    options: inputs.SolveOptions,
    deadline: float,
) -> bool:
    """Choose one remembered plan per service under pool capacity (effective devices), cheapest first.

    A set-partitioning MILP over every plan the heuristic met (price-and-branch): binary lambda[s, k],
    sum_k lambda[s, k] = 1 per service, sum usage[p, s, k] lambda[s, k] <= capacity[p] per pool, minimising
    $/h + UNMET_WEIGHT x the dearest $/(req/s) x unserved coverable req/s. Only plans serving no less than
    the service's current one are offered, so no priority loses anything; HiGHS (highspy) starts from the
    current plan and stops within MASTER_NODE_LIMIT nodes. Returns True when it changed the plan.
    """
    import highspy

    master = _master_model(services, capacity, options, problem)
    if master is None or all(len(m) == 1 for m in master.offered):
        return False
    h = master.highs
    n = master.cost.size
    h.changeColsIntegrality(
        n, np.arange(n, dtype=np.int32), np.full(n, highspy.HighsVarType.kInteger, dtype=np.uint8)
    )
    with highs._quiet_stdout():
        start = np.zeros(n)
        start[master.first] = 1.0
        h.setSolution(n, np.arange(n, dtype=np.int32), start)
        h.setOptionValue("time_limit", max(deadline - time.perf_counter(), 0.5))
        h.run()
    solution = h.getSolution()
    if not solution.value_valid or h.getInfo().primal_solution_status == 0:
        return False
    x = np.asarray(solution.col_value)
    chosen = []
    for j, m in enumerate(master.offered):
        block = x[master.first[j] : master.first[j] + len(m)]
        chosen.append(m[int(np.argmax(block))])
    before = float(master.cost[master.first].sum())
    after = sum(c.plan.price_per_hour + master.weight * c.short for c in chosen)
    use = np.zeros(capacity.size)
    for c in chosen:
        for p, d in c.usage.items():
            use[p] += d
    if after >= before - 1e-9 * max(1.0, before) or (use > capacity + inputs.FEASIBILITY_TOLERANCE).any():
        return False
    for svc, c in zip(services, chosen, strict=True):
        svc.plan, svc.usage, svc.short = c.plan, c.usage, c.short
    return True


def _cheap_bound(
    problem: inputs.FleetProblem, svc: _Svc, owned: Sequence[int], shadow: NDArray[np.float64]
) -> float:
    """A closed-form lower bound on the service's cost alone at these prices, over all its candidates.

    Per role: the LP (each bucket at its cheapest $ per req/s), and a plan of one replica must be one
    candidate carrying every bucket alone (P1), while a plan of two or more costs at least twice the
    cheapest useful replica: max(LP, min(P1, 2 p_min)). Per service: the cheapest serving mode that covers
    every coverable bucket (the role bounds add up for prefill + decode).
    """
    s = svc.demand
    rates = np.asarray(s.bucket_rps, dtype=np.float64)
    assert svc.agg_ok is not None and svc.pd_ok is not None
    coverable = svc.agg_ok | svc.pd_ok
    by_role: dict[str, list[int]] = defaultdict(list)
    for i in owned:
        by_role[problem.candidates[i].role].append(i)

    def role_bound(role: str, target: NDArray[np.float64]) -> float:
        idx = by_role.get(role, [])
        if not idx:
            return math.inf
        price = shadow[idx]
        floor = float(s.min_replicas)
        if not target.any():
            return floor * float(price.min())
        caps = _caps(problem.candidates, idx, rates.size)
        with np.errstate(divide="ignore"):
            per_rps = np.where(caps > 0.0, price[:, None] / np.where(caps > 0.0, caps, 1.0), np.inf)
        live = target > 0.0
        lp = float((target[live] * per_rps[:, live].min(axis=0)).sum())
        load = _loads(caps, target)
        useful = (caps[:, live] > 0.0).any(axis=1)
        p_min = float(price[useful].min()) if useful.any() else math.inf
        alone = load <= 1.0 + inputs.FEASIBILITY_TOLERANCE
        p_one = float(price[alone].min()) if alone.any() else math.inf
        one_or_more = max(lp, min(p_one, 2.0 * p_min))
        return max(one_or_more, floor * p_min)

    modes = []
    if s.serving != "disaggregated" and not (coverable & ~svc.agg_ok).any():
        modes.append(role_bound("aggregated", rates * coverable))
    if s.serving != "aggregated" and not (coverable & ~svc.pd_ok).any():
        modes.append(role_bound("prefill", rates * coverable) + role_bound("decode", rates * coverable))
    best = min(modes) if modes else 0.0
    return best if math.isfinite(best) else 0.0


def _polish(
    problem: inputs.FleetProblem,
    pruned: colgen.Pruned,
    plans: Sequence[allocation.ServiceAllocation],
    options: inputs.SolveOptions,
    deadline: float,
) -> list[allocation.ServiceAllocation] | None:
    """The all-served MILP over the LP's columns and the plan's, from the plan; None unless cheaper."""
    if time.perf_counter() > deadline - 1.0:
        return None
    counts: dict[inputs.CandidateKey, int] = {}
    routed: dict[inputs.CandidateKey, tuple[float, ...]] = {}
    for sp in plans:
        for a in sp.assignments:
            key = inputs.CandidateKey(a.service, a.role, a.pool, a.precision, a.tp)
            counts[key], routed[key] = a.replicas, a.bucket_rps
    keys = {c.key for c in pruned.candidates} | set(counts)
    sub = replace(problem, candidates=tuple(c for c in problem.candidates if c.key in keys))
    opts = replace(options, max_candidates_per_bucket=None)
    try:
        model = formulation.build(sub, opts, frozenset(counts))
    except inputs.PlacementError:
        return None
    # The plan's replicas and routing (HiGHS completes the rest: pattern counts, modes, penalties).
    rates = {s.id: s.bucket_rps for s in problem.services}
    start = [(model.n_index[k], float(counts.get(c.key, 0))) for k, c in enumerate(model.candidates)]
    for (k, b), col in model.f_index.items():
        flow = routed.get(model.candidates[k].key)
        share = flow[b] / rates[model.candidates[k].service][b] if flow is not None else 0.0
        start.append((col, min(1.0, max(0.0, share))))
    modes = {sp.service: sp.mode for sp in plans}
    start += [(col, 1.0 if modes.get(sid) == "disaggregated" else 0.0) for sid, col in model.z_index.items()]
    try:
        run = highs.run_from(model, start, opts, deadline)
    except inputs.SolverError:
        return None
    price = sum(sp.price_per_hour for sp in plans)
    if run is None or run.objective >= price - 1e-9 * max(1.0, price):
        return None
    try:
        polished = stages.decode(sub, model, run, stages=1, seconds=0.0)
    except inputs.SolverError:
        return None
    if polished.price_per_hour >= price or any(sp.status == "unserved" for sp in polished.services):
        return None
    return list(polished.services)
