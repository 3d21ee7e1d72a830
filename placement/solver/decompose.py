"""Large fleets: per-service decomposition with pool pricing instead of one MILP.

Each service goes on its cheapest single or primary+filler configuration; device prices rise on
over-full pools until everything fits; what still does not fit is shed, lowest priority first.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from placement.solver import allocation, formulation, inputs

# From this many services `auto` decomposes: one MILP over hundreds of services spends its time
# rounding replicas service by service (benchmarks/REPORT_solver.md).
DECOMPOSE_MIN_SERVICES = 200
# Score added to a pool with no room while looking for somewhere to move a service ($/h per replica):
# far above any real price, finite so a service with nowhere else to go still gets an answer.
CLOSED_POOL_SURCHARGE = 1e9
# Candidates per service the decomposition considers: per bucket, this many workhorses (cheapest per
# req/s) and DECOMPOSE_FILLERS fillers (cheapest to carry the bucket alone in whole replicas). On the
# 1,000-service benchmark (seed 0) 3 + 1 gave $32,940/h in 1.3 s; 5 + 0 gave $33,141/h, 3 + 2 $32,939/h
# in twice the time.
DECOMPOSE_CANDIDATES = 3
DECOMPOSE_FILLERS = 1
# Rounds of raising the device price of over-full pools before shedding what still does not fit (the step
# doubles each round a pool stays over-full, so 40 rounds reach any price that matters).
DECOMPOSE_PRICE_ROUNDS = 40
# Each round raises an over-full pool's device price by this share of the fleet's mean device price.
DECOMPOSE_PRICE_STEP = 0.1


def decomposable(problem: inputs.FleetProblem, options: inputs.SolveOptions) -> bool:
    """Services are independent but for pool capacity: no replica ceilings, budgets or stability penalty,
    and every pool's TP sizes pack by device count (any serving mode, replica floors allowed); no
    configuration held at its own replica bounds."""
    if options.move_penalty_per_device_hour > 0.0 and problem.current_replicas:
        return False
    if problem.replica_bounds:
        return False
    if options.one_accelerator_per_service or options.on_demand_floor > 0.0:
        return False
    if any(s.max_replicas is not None or s.max_dollars_per_hour is not None for s in problem.services):
        return False
    pools = {p.id: p for p in problem.pools}
    sizes: dict[str, set[int]] = defaultdict(set)
    for c in problem.candidates:
        sizes[c.pool].add(c.tp)
    return all(formulation.divisibility_chain(sorted(t), pools[p].devices_per_node) for p, t in sizes.items())


@dataclass(frozen=True)
class _ServiceChoice:
    """A service's replicas per candidate and routed rate per bucket, at a cost under some device prices."""

    replicas: tuple[int, ...]
    routed: tuple[tuple[float, ...], ...]
    score: float


# Load (replica-units) left to a filler below this is float noise from 1 - share, not traffic.
REST_NOISE = 1e-12


def _best_pair(
    rates: NDArray[np.float64], caps: NDArray[np.float64], score: NDArray[np.float64]
) -> _ServiceChoice:
    """Cheapest plan (by `score` per replica) using one candidate, or a primary plus a filler candidate.

    For a pair (a, b) and n_a replicas of a, the buckets a is relatively best at (cap_a / cap_b) fill a's
    capacity first, fractionally (optimal for two machines), and b takes the rest with ceil(load) replicas.
    """
    n_cand, n_b = caps.shape
    with np.errstate(divide="ignore"):
        load = np.where(caps > 0.0, rates[None, :] / np.where(caps > 0.0, caps, 1.0), np.inf)  # replica-units
    load = np.where(rates[None, :] > 0.0, load, 0.0)
    best: _ServiceChoice | None = None
    for a in range(n_cand):
        alone = float(load[a].sum())
        if math.isfinite(alone):
            # Any traffic needs a whole replica, however small the load.
            n = max(1, math.ceil(alone - inputs.FEASIBILITY_TOLERANCE)) if alone > 0.0 else 0
            cost = n * float(score[a])
            if best is None or cost < best.score:
                reps = [0] * n_cand
                reps[a] = n
                routed = [tuple(0.0 for _ in range(n_b)) for _ in range(n_cand)]
                routed[a] = tuple(float(r) for r in rates)
                best = _ServiceChoice(tuple(reps), tuple(routed), cost)
        for b in range(n_cand):
            if a == b:
                continue
            # Buckets b cannot serve must go to a; a must be able to serve them.
            must_a = ~np.isfinite(load[b]) & (rates > 0.0)
            if (must_a & ~np.isfinite(load[a])).any():
                continue
            with np.errstate(divide="ignore", invalid="ignore"):
                ratio = np.where(np.isfinite(load[a]), load[b] / np.where(load[a] > 0, load[a], 1.0), -np.inf)
            ratio = np.where(must_a, np.inf, ratio)
            order = np.argsort(-ratio, kind="stable")
            w_a = np.where(np.isfinite(load[a][order]), load[a][order], 0.0)
            w_b = np.where(np.isfinite(load[b][order]), load[b][order], 0.0)
            forced = float(w_a[must_a[order]].sum())
            top = math.ceil(float(w_a.sum()) - inputs.FEASIBILITY_TOLERANCE)
            lo = math.ceil(forced - inputs.FEASIBILITY_TOLERANCE)
            if top < max(lo, 1):
                continue
            n_a = np.arange(max(lo, 1), top + 1, dtype=np.float64)
            prev = np.concatenate([[0.0], np.cumsum(w_a)[:-1]])
            with np.errstate(divide="ignore", invalid="ignore"):
                frac = np.clip(
                    (n_a[:, None] - prev[None, :]) / np.where(w_a > 0, w_a, 1.0)[None, :], 0.0, 1.0
                )
            frac = np.where(w_a[None, :] > 0, frac, np.where(must_a[order][None, :], 1.0, 0.0))
            rest = ((1.0 - frac) * w_b[None, :]).sum(axis=1)
            n_b_reps = np.where(
                rest > REST_NOISE, np.maximum(1.0, np.ceil(rest - inputs.FEASIBILITY_TOLERANCE)), 0.0
            )
            costs = n_a * float(score[a]) + n_b_reps * float(score[b])
            i = int(np.argmin(costs))
            if best is None or costs[i] < best.score - 1e-12:
                reps = [0] * n_cand
                reps[a], reps[b] = int(n_a[i]), int(n_b_reps[i])
                share_a = np.zeros(n_b)
                share_a[order] = frac[i]
                routed = [tuple(0.0 for _ in range(n_b)) for _ in range(n_cand)]
                routed[a] = tuple(float(x) for x in rates * share_a)
                routed[b] = tuple(float(x) for x in rates * (1.0 - share_a))
                if reps[b] == 0:
                    routed[b] = tuple(0.0 for _ in range(n_b))
                best = _ServiceChoice(tuple(reps), tuple(routed), float(costs[i]))
    if best is None:
        raise inputs.SolverError("decompose: no candidate combination covers the service")
    return best


@dataclass(frozen=True)
class _RoleShortlist:
    """One role's shortlisted candidates and a valid lower bound on its cost."""

    cands: list[inputs.Candidate]
    bound: float


def _role_shortlist(cands: list[inputs.Candidate], rates: NDArray[np.float64], floor: int) -> _RoleShortlist:
    """Workhorses and fillers per bucket for one role, and the bound max(LP, floor x cheapest replica)."""
    if not cands:
        return _RoleShortlist([], 0.0)
    caps = np.array([c.max_rps_per_bucket for c in cands], dtype=np.float64).reshape(len(cands), len(rates))
    price = np.array([c.price_per_hour for c in cands])
    live = rates * (caps > 0.0).any(axis=0)
    if not live.any():
        # No traffic this role can take: keep the cheapest replica for a floor.
        cheapest = int(np.argmin(price))
        return _RoleShortlist([cands[cheapest]], float(price[cheapest]) * floor)
    with np.errstate(divide="ignore"):
        per_rps = np.where(caps > 0.0, price[:, None] / np.where(caps > 0.0, caps, 1.0), np.inf)
    lp = float((live * np.where(live > 0, per_rps.min(axis=0), 0.0)).sum())
    able = (caps[:, live > 0] > 0.0).any(axis=1)
    keep: set[int] = set()
    for b in np.flatnonzero(live > 0):
        # Workhorses: cheapest per req/s.
        keep.update(np.argsort(per_rps[:, b], kind="stable")[:DECOMPOSE_CANDIDATES].tolist())
        # Fillers: cheapest to carry this bucket alone in whole replicas (a small cheap chip that takes
        # one bucket beats a fraction of a big one).
        able_b = np.flatnonzero(caps[:, b] > 0.0)
        whole = np.ceil(live[b] / caps[able_b, b] - inputs.FEASIBILITY_TOLERANCE) * price[able_b]
        keep.update(able_b[np.argsort(whole, kind="stable")[:DECOMPOSE_FILLERS]].tolist())
    cheapest_price = float(price[able].min())
    return _RoleShortlist([cands[i] for i in sorted(keep)], max(lp, cheapest_price * max(1, floor)))


def _role_choice(
    cands: list[inputs.Candidate],
    s: inputs.ServiceDemand,
    score: NDArray[np.float64],
    mask: Sequence[bool] | None = None,
) -> _ServiceChoice | None:
    """Best single/pair plan for one role's candidates (buckets in `mask` only), topped up to the floor."""
    usable = _coverable(cands, len(s.bucket_rps)) if mask is None else mask
    rates = np.asarray(s.bucket_rps, dtype=np.float64) * np.asarray(usable, dtype=np.float64)
    caps = np.array([c.max_rps_per_bucket for c in cands], dtype=np.float64)
    if rates.any():
        try:
            ch = _best_pair(rates, caps, score)
        except inputs.SolverError:
            return None
    else:
        ch = _ServiceChoice(tuple(0 for _ in cands), tuple(tuple(0.0 for _ in rates) for _ in cands), 0.0)
    short = s.min_replicas - sum(ch.replicas)
    if short > 0:
        # Top up the floor with the cheapest replicas (idle capacity the floor pays for).
        i = int(np.argmin(score))
        replicas = list(ch.replicas)
        replicas[i] += short
        ch = _ServiceChoice(tuple(replicas), ch.routed, ch.score + short * float(score[i]))
    return ch


def decompose(problem: inputs.FleetProblem, options: inputs.SolveOptions | None = None) -> allocation.Plan:
    """Large fleets: each service on its cheapest single or primary+filler configuration, with device
    prices raised on over-full pools until everything fits; what still does not fit is shed, lowest
    priority first, and reported unserved (never over-allocated).

    The bound is per service: max(its LP value, the price of one replica), summed; it ignores pool
    capacity, so it is a valid lower bound for the real problem (capacity only adds cost).
    """
    options = options or inputs.SolveOptions()
    started = time.perf_counter()
    problem = inputs.without_noise(problem)
    inputs.validate(problem)
    if not decomposable(problem, options):
        raise inputs.InvalidProblemError(
            "decompose: needs services without replica ceilings, budgets or stability"
        )
    pools = {p.id: p for p in problem.pools}
    by_service: dict[str, list[inputs.Candidate]] = defaultdict(list)
    for c in problem.candidates:
        by_service[c.service].append(c)
    mean_device_price = (
        float(np.mean([p.price_per_device_hour for p in problem.pools])) if problem.pools else 1.0
    )
    step = DECOMPOSE_PRICE_STEP * mean_device_price

    # Per service: its candidates in a fixed order (aggregated, prefill, decode shortlists) and, per mode,
    # the index ranges of the roles that mode uses.
    shortlist: dict[str, list[inputs.Candidate]] = {}
    role_slices: dict[str, dict[str, slice]] = {}
    bound_total = 0.0
    unmet: dict[str, float] = {}
    for s in problem.services:
        rates = np.asarray(s.bucket_rps, dtype=np.float64)
        mine = by_service.get(s.id, [])
        by_role = {r: [c for c in mine if c.role == r] for r in inputs.ROLES}
        agg = _role_shortlist(by_role["aggregated"], rates, s.min_replicas)
        pre = _role_shortlist(by_role["prefill"], rates, s.min_replicas)
        dec = _role_shortlist(by_role["decode"], rates, s.min_replicas)
        # Bucket b is servable by aggregated replicas, or by prefill and decode together.
        agg_ok = _coverable(agg.cands, len(rates)) if agg.cands else [False] * len(rates)
        pd_ok = [
            a and b
            for a, b in zip(
                _coverable(pre.cands, len(rates)) if pre.cands else [False] * len(rates),
                _coverable(dec.cands, len(rates)) if dec.cands else [False] * len(rates),
                strict=True,
            )
        ]
        coverable = np.array([a or b for a, b in zip(agg_ok, pd_ok, strict=True)])
        unmet[s.id] = float(rates[~coverable].sum()) if rates.size else 0.0
        # Valid per-service bound: the cheaper mode's bound (aggregated alone, or prefill + decode).
        bounds = []
        if agg.cands:
            bounds.append(agg.bound)
        if pre.cands and dec.cands:
            bounds.append(pre.bound + dec.bound)
        if bounds and (coverable.any() or s.min_replicas > 0):
            bound_total += min(bounds)
        shortlist[s.id] = [*agg.cands, *pre.cands, *dec.cands]
        n_a, n_p = len(agg.cands), len(pre.cands)
        role_slices[s.id] = {
            "aggregated": slice(0, n_a),
            "prefill": slice(n_a, n_a + n_p),
            "decode": slice(n_a + n_p, n_a + n_p + len(dec.cands)),
        }

    surcharge: dict[str, float] = defaultdict(float)
    services = {s.id: s for s in problem.services}

    def choose(sid: str, closed: frozenset[str] = frozenset()) -> _ServiceChoice | None:
        cands = shortlist[sid]
        if not cands:
            return None
        s = services[sid]
        score = np.array(
            [
                c.price_per_hour
                + surcharge[c.pool] * c.tp
                + (CLOSED_POOL_SURCHARGE if c.pool in closed else 0.0)
                for c in cands
            ]
        )
        spans = role_slices[sid]
        options_: list[list[tuple[slice, _ServiceChoice]]] = []
        if s.serving in ("aggregated", "auto") and spans["aggregated"].stop > spans["aggregated"].start:
            ch = _role_choice(cands[spans["aggregated"]], s, score[spans["aggregated"]])
            if ch is not None:
                options_.append([(spans["aggregated"], ch)])
        pre_span, dec_span = spans["prefill"], spans["decode"]
        if (
            s.serving in ("disaggregated", "auto")
            and pre_span.stop > pre_span.start
            and dec_span.stop > dec_span.start
        ):
            # Only buckets both stages can take: a request prefilled but never decoded is not served.
            both = [
                a and b
                for a, b in zip(
                    _coverable(cands[pre_span], len(s.bucket_rps)),
                    _coverable(cands[dec_span], len(s.bucket_rps)),
                    strict=True,
                )
            ]
            pre = _role_choice(cands[pre_span], s, score[pre_span], both)
            dec = _role_choice(cands[dec_span], s, score[dec_span], both)
            if pre is not None and dec is not None:
                options_.append([(pre_span, pre), (dec_span, dec)])
        if not options_:
            return None
        best = min(options_, key=lambda mode: sum(ch.score for _, ch in mode))
        replicas = [0] * len(cands)
        routed: list[tuple[float, ...]] = [tuple(0.0 for _ in s.bucket_rps) for _ in cands]
        for span, ch in best:
            for offset, (n, flow) in enumerate(zip(ch.replicas, ch.routed, strict=True)):
                replicas[span.start + offset] = n
                routed[span.start + offset] = flow
        return _ServiceChoice(tuple(replicas), tuple(routed), sum(ch.score for _, ch in best))

    def devices_of(sid: str, ch: _ServiceChoice) -> dict[str, int]:
        out: dict[str, int] = defaultdict(int)
        for c, n in zip(shortlist[sid], ch.replicas, strict=True):
            out[c.pool] += n * c.tp
        return out

    def true_price(sid: str, ch: _ServiceChoice) -> float:
        return sum(n * c.price_per_hour for c, n in zip(shortlist[sid], ch.replicas, strict=True))

    choices: dict[str, _ServiceChoice] = {}
    for sid in services:
        ch = choose(sid)
        if ch is not None:
            choices[sid] = ch
    used: dict[str, int] = defaultdict(int)
    for sid, ch in choices.items():
        for pool_id, d in devices_of(sid, ch).items():
            used[pool_id] += d
    strikes: dict[str, int] = defaultdict(int)
    for _ in range(DECOMPOSE_PRICE_ROUNDS):
        over = {p for p, u in used.items() if u > pools[p].devices_total}
        if not over:
            break
        # Raise the device price of over-full pools, then move the services whose move costs least
        # (in real $/h) one at a time, only while their pool is still over-full: moving everyone at
        # once would just empty the pool.
        for p in over:
            # Escalate: a pool still over-full after a round doubles its surcharge step.
            surcharge[p] += step * 2.0 ** strikes[p]
            strikes[p] += 1
        # Alternatives avoid pools with no room left (full or over-full).
        closed = frozenset(p for p, u in used.items() if u >= pools[p].devices_total)
        movers = []
        for sid, ch in choices.items():
            if any(devices_of(sid, ch).get(p, 0) > 0 for p in over):
                alt = choose(sid, closed)
                if alt is not None:
                    movers.append((true_price(sid, alt) - true_price(sid, ch), sid, alt))
        movers.sort(key=lambda m: (m[0], m[1]))
        for _regret, sid, alt in movers:
            before = devices_of(sid, choices[sid])
            after = devices_of(sid, alt)
            relieves = any(
                after.get(p, 0) < before.get(p, 0) and used[p] > pools[p].devices_total for p in over
            )
            # A move must not overfill the pools it goes to.
            fits = all(
                used[p] - before.get(p, 0) + d <= pools[p].devices_total
                for p, d in after.items()
                if d > before.get(p, 0)
            )
            if not (relieves and fits):
                continue
            for pool_id, d in before.items():
                used[pool_id] -= d
            for pool_id, d in after.items():
                used[pool_id] += d
            choices[sid] = alt
    # Prices never made it fit (no room anywhere for some services): shed, explicitly. On each
    # over-full pool the lowest-priority services lose their replicas there, until the pool fits; their
    # traffic on it is reported unserved. A MILP at this size would not finish in time to do better.
    shed_reason: dict[str, str] = {}
    for p in sorted(pid for pid, u in used.items() if u > pools[pid].devices_total):
        victims = sorted(
            (sid for sid, ch in choices.items() if devices_of(sid, ch).get(p, 0) > 0),
            key=lambda sid: (services[sid].priority, services[sid].requests_per_second, sid),
        )
        for sid in victims:
            if used[p] <= pools[p].devices_total:
                break
            ch = choices[sid]
            reps = list(ch.replicas)
            flows = list(ch.routed)
            for i, c in enumerate(shortlist[sid]):
                if c.pool == p and reps[i] > 0:
                    used[p] -= reps[i] * c.tp
                    reps[i] = 0
                    flows[i] = tuple(0.0 for _ in flows[i])
            choices[sid] = _ServiceChoice(tuple(reps), tuple(flows), ch.score)
            shed_reason[sid] = (
                f"pool {p} is full and no other pool has room (priority {services[sid].priority} "
                "yields first)"
            )

    # Replica floors are hard, as in the MILP: if shedding (or a role with no configuration) broke one,
    # say so; the caller may plan again without floors.
    for s_ in problem.services:
        if s_.min_replicas <= 0:
            continue
        ch = choices.get(s_.id)
        per_role: dict[str, int] = defaultdict(int)
        if ch is not None:
            for c, n in zip(shortlist[s_.id], ch.replicas, strict=True):
                per_role[c.role] += n
        # The floor holds in the mode the service runs: aggregated replicas, or prefill and decode both.
        aggregated_ok = per_role["aggregated"] >= s_.min_replicas and s_.serving != "disaggregated"
        split_ok = (
            per_role["prefill"] >= s_.min_replicas
            and per_role["decode"] >= s_.min_replicas
            and s_.serving != "aggregated"
        )
        if not (aggregated_ok or split_ok) or any(0 < count < s_.min_replicas for count in per_role.values()):
            raise inputs.InfeasibleError(inputs.infeasible_reason(problem))

    # A shed stage leaves its partner carrying requests that are no longer served end to end: trim the
    # other stage's flows to what passes both (front = aggregated + prefill, back = aggregated + decode).
    for sid, ch in list(choices.items()):
        roles = [c.role for c in shortlist[sid]]
        if "prefill" not in roles and "decode" not in roles:
            continue
        stage_flows = np.array(ch.routed, dtype=np.float64)
        is_front = np.array([r != "decode" for r in roles])
        is_back = np.array([r != "prefill" for r in roles])
        front = stage_flows[is_front].sum(axis=0)
        back = stage_flows[is_back].sum(axis=0)
        keep = np.minimum(front, back)
        with np.errstate(divide="ignore", invalid="ignore"):
            pre_scale = np.where(front > 0, keep / np.where(front > 0, front, 1.0), 0.0)
            dec_scale = np.where(back > 0, keep / np.where(back > 0, back, 1.0), 0.0)
        for i, role in enumerate(roles):
            if role == "prefill":
                stage_flows[i] *= pre_scale
            elif role == "decode":
                stage_flows[i] *= dec_scale
        choices[sid] = _ServiceChoice(
            ch.replicas, tuple(tuple(float(x) for x in row) for row in stage_flows), ch.score
        )

    assignments: dict[str, list[allocation.Assignment]] = defaultdict(list)
    for sid, ch in choices.items():
        for c, n, routed in zip(shortlist[sid], ch.replicas, ch.routed, strict=True):
            if n <= 0:
                continue
            assignments[sid].append(allocation.assign(c, n, routed))
    # Served per bucket = what passes both stages: min(aggregated + prefill, aggregated + decode).
    for s in problem.services:
        front = np.zeros(len(s.bucket_rps))
        back = np.zeros(len(s.bucket_rps))
        for a in assignments.get(s.id, []):
            flow = np.asarray(a.bucket_rps)
            if a.role != "decode":
                front += flow
            if a.role != "prefill":
                back += flow
        served_rps = float(np.minimum(front, back).sum())
        unmet[s.id] = max(0.0, s.requests_per_second - served_rps)
    plans = tuple(
        allocation.service_allocation(
            s,
            assignments.get(s.id, []),
            unmet[s.id],
            shed_reason.get(s.id)
            or (
                None
                if unmet[s.id] <= 0
                else "no candidate configuration meets the SLO for some request sizes"
            ),
        )
        for s in problem.services
    )
    return allocation.assemble(
        problem.pools,
        plans,
        status="feasible",
        bound=bound_total,
        bound_source="per-service",
        solve_seconds=time.perf_counter() - started,
        stages=1,
    )


def _coverable(cands: Sequence[inputs.Candidate], n_buckets: int) -> list[bool]:
    """Which buckets some candidate can serve."""
    return [any(c.max_rps_per_bucket[k] > 0.0 for c in cands) for k in range(n_buckets)]
