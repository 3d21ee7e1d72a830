"""The placement MILP in matrix form: `build` turns a FleetProblem into (c, A, bounds, integrality) and
the index maps `stages.decode` needs to read a solution back.

Traffic model (Mélange's, generalised): a service's demand is a rate per request-size bucket; a replica
time-shares its capacity across buckets, so serving x_b req/s of bucket b with capacity cap_b costs
x_b / cap_b of a replica. A bucket may be split across candidates (long prompts to one chip, short to
another), and a request is served either by an aggregated replica or by a prefill and a decode replica.
"""

from __future__ import annotations

import itertools
import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from numpy.typing import NDArray

from placement.solver import colgen, inputs

# Above this many maximal node patterns a pool falls back to a device-count constraint (exact whenever
# every TP size divides the node; patterns are only needed for odd shapes such as TP-4 on 6-device nodes).
MAX_NODE_PATTERNS = 200


def _node_patterns(sizes: Sequence[int], devices_per_node: int) -> list[dict[int, int]]:
    """Maximal ways to fill one node with replicas of the given TP sizes ({size: count})."""
    ordered = sorted(set(sizes), reverse=True)
    patterns: list[dict[int, int]] = []

    def extend(index: int, free: int, counts: dict[int, int]) -> None:
        if len(patterns) > MAX_NODE_PATTERNS:
            return
        if index == len(ordered):
            # Maximal: no size fits in what is left.
            if all(t > free for t in ordered):
                patterns.append({t: n for t, n in counts.items() if n > 0})
            return
        t = ordered[index]
        for n in range(free // t, -1, -1):
            counts[t] = n
            extend(index + 1, free - n * t, counts)
        counts[t] = 0

    extend(0, devices_per_node, {})
    return patterns


def divisibility_chain(sizes: Sequence[int], devices_per_node: int) -> bool:
    """Every size divides the next larger and the node: then packing by device count is exact."""
    ordered = sorted(set(sizes))
    chain = [*ordered, devices_per_node]
    return all(b % a == 0 for a, b in itertools.pairwise(chain))


@dataclass(frozen=True)
class Model:
    """The MILP in matrix form plus the index maps decode needs."""

    c: NDArray[np.float64]
    a: sp.csr_matrix
    row_lo: NDArray[np.float64]
    row_hi: NDArray[np.float64]
    var_lo: NDArray[np.float64]
    var_hi: NDArray[np.float64]
    integrality: NDArray[np.int8]
    candidates: tuple[inputs.Candidate, ...]
    n_index: tuple[int, ...]  # column of n_c per candidate
    f_index: Mapping[tuple[int, int], int]  # (candidate, bucket) -> column of f_cb
    u_index: Mapping[tuple[str, int], int]  # (service, bucket) -> column of u_sb
    z_index: Mapping[str, int]  # service -> column of z_s (auto services only)
    uncoverable: frozenset[tuple[str, int]]  # (service, bucket) with traffic no candidate can take
    budget_rows: Mapping[str, int]  # service -> row of its budget constraint
    # From column generation (max_candidates_per_bucket): the full problem's LP bound, and whether the
    # LP already shows that not all traffic can be served.
    full_lp_bound: float | None = None
    lp_needs_unmet: bool = False
    restricted: bool = False


def _replica_bound(c: inputs.Candidate, s: inputs.ServiceDemand, pool: inputs.Pool) -> float:
    """Most replicas of c any feasible plan can hold: pool slots, the role's ceiling, the budget."""
    most = float(pool.nodes * (pool.devices_per_node // c.tp))
    if s.max_replicas is not None:
        most = min(most, float(s.max_replicas))
    if s.max_dollars_per_hour is not None and c.price_per_hour > 0.0:
        affordable = s.max_dollars_per_hour / c.price_per_hour
        if math.isfinite(affordable):
            # The tolerance keeps a budget of exactly k replicas at k despite float rounding.
            most = min(most, math.floor(affordable + inputs.FEASIBILITY_TOLERANCE))
    return max(most, 0.0)


def _count_cuts(
    b: _Builder,
    problem: inputs.FleetProblem,
    candidates: Sequence[inputs.Candidate],
    n_index: Sequence[int],
    u_index: Mapping[tuple[str, int], int],
    z_index: Mapping[str, int],
    uncoverable: set[tuple[str, int]],
) -> None:
    """Replica-count cuts: a role needs at least ceil(sum_b r_b (1 - u_b) / C_b) replicas.

    C_b is the largest capacity any candidate of the role (in the whole problem, pruned or not) has for
    bucket b, so L = sum_b (r_b / C_b)(1 - u_b) is the fewest replicas that could carry the served traffic
    even fractionally, and an integer plan needs ceil(L). The LP relaxation only knows L: with many
    near-equal candidates HiGHS then spends its time limit proving that 1.05 replicas cost two (a
    60-service disaggregated fleet sat 56% above its bound after 10 s, 37% after 60 s in the issue).
    With N = ceil(L0) for L0 = L at u = 0 and f = L0 - (N - 1) in (0, 1], the mixed-integer rounding
    inequality
        sum_{c in role} n_c >= N - (1 / f) sum_b (r_b / C_b) u_b
    holds for every u (each step of ceil(L) down needs at least f more of L served elsewhere), and is the
    cut N exactly when everything is served. For an `auto` service it holds in the mode chosen:
    aggregated adds N z on the left, prefill and decode subtract it (and the right side drops to -(...)).
    """
    inf = math.inf
    services = {s.id: s for s in problem.services}
    best: dict[tuple[str, str], NDArray[np.float64]] = {}
    for c in problem.candidates:
        caps = np.asarray(c.max_rps_per_bucket, dtype=np.float64)
        key = (c.service, c.role)
        best[key] = np.maximum(best[key], caps) if key in best else caps
    members: dict[tuple[str, str], list[int]] = defaultdict(list)
    for i, c in enumerate(candidates):
        members[(c.service, c.role)].append(n_index[i])
    for (sid, role), cols in sorted(members.items()):
        s = services[sid]
        caps = best[(sid, role)]
        weights = {
            k: r / caps[k]
            for k, r in enumerate(s.bucket_rps)
            if r > 0.0 and caps[k] > 0.0 and (sid, k) not in uncoverable
        }
        load = sum(weights.values())
        need = math.ceil(load - inputs.FEASIBILITY_TOLERANCE)
        if need <= 1:
            continue  # one replica is what the activation rows already imply
        frac = load - (need - 1)
        terms = [(col, 1.0) for col in cols]
        terms += [(u_index[(sid, k)], w / frac) for k, w in weights.items() if (sid, k) in u_index]
        z = z_index.get(sid)
        if z is None:
            b.row(terms, float(need), inf)
        elif role == "aggregated":
            b.row([*terms, (z, float(need))], float(need), inf)
        else:
            b.row([*terms, (z, -float(need))], 0.0, inf)


class _Builder:
    """Accumulates columns and sparse rows."""

    def __init__(self) -> None:
        self.cost: list[float] = []
        self.lo: list[float] = []
        self.hi: list[float] = []
        self.integer: list[int] = []
        self.rows: list[int] = []
        self.cols: list[int] = []
        self.vals: list[float] = []
        self.row_lo: list[float] = []
        self.row_hi: list[float] = []

    def var(self, cost: float, lo: float, hi: float, integer: bool) -> int:
        self.cost.append(cost)
        self.lo.append(lo)
        self.hi.append(hi)
        self.integer.append(1 if integer else 0)
        return len(self.cost) - 1

    def row(self, terms: Iterable[tuple[int, float]], lo: float, hi: float) -> int:
        r = len(self.row_lo)
        for col, val in terms:
            self.rows.append(r)
            self.cols.append(col)
            self.vals.append(val)
        self.row_lo.append(lo)
        self.row_hi.append(hi)
        return r


def build(
    problem: inputs.FleetProblem,
    options: inputs.SolveOptions | None = None,
    keep: frozenset[inputs.CandidateKey] = frozenset(),
) -> Model:
    """The MILP of `problem`: minimise $/h (+ stability penalty) with all traffic served where possible.

    Unmet-demand variables u exist for every (service, bucket) but are fixed to 0 here unless no
    candidate can take that bucket; `solve` frees them, by priority level, only when this is infeasible.
    """
    options = options or inputs.SolveOptions()
    inputs.validate(problem)
    # A configuration held at a replica floor (replica_bounds) keeps its column whatever pruning finds.
    held = frozenset(key for key, (least, _most) in problem.replica_bounds.items() if least > 0)
    pruned = colgen.prune(problem, options, keep | held)
    candidates = pruned.candidates
    services = {s.id: s for s in problem.services}
    pools = {p.id: p for p in problem.pools}
    b = _Builder()
    inf = math.inf

    # n[c] in Z>=0: replicas of candidate c; costs price_c $/h each. Bounded above by what the rows below
    # imply on their own (explicit bounds tighten the LP relaxation and presolve):
    #   n_c <= nodes * floor(devices_per_node / tp_c)   (the pool's slots for this size),
    #   n_c <= max_replicas_s                            (the role's ceiling),
    #   n_c <= floor(max_dollars_per_hour_s / price_c)   (the service's budget).
    # and held within the configuration's own replica_bounds, if any: lo_c <= n_c <= hi_c (a least above
    # what the pool, ceiling or budget allow makes the problem infeasible, as it should).
    def bounds(c: inputs.Candidate) -> tuple[float, float]:
        most = _replica_bound(c, services[c.service], pools[c.pool])
        least, hi = problem.replica_bounds.get(c.key, (0, None))
        if hi is not None:
            most = min(most, float(hi))
        return float(least), max(most, float(least))

    n_index = tuple(b.var(c.price_per_hour, *bounds(c), True) for c in candidates)

    # f[c, b] in [0, 1]: share of service bucket b's requests routed to candidate c.
    f_index: dict[tuple[int, int], int] = {}
    by_service_role: dict[tuple[str, str], list[int]] = defaultdict(list)
    for i, c in enumerate(candidates):
        by_service_role[(c.service, c.role)].append(i)
        rates = services[c.service].bucket_rps
        for k, (cap, r) in enumerate(zip(c.max_rps_per_bucket, rates, strict=True)):
            if cap > 0.0 and r > 0.0:
                f_index[(i, k)] = b.var(0.0, 0.0, 1.0, False)

    # u[s, b] in [0, 1]: share of service bucket b's requests left unserved (fixed to 0 unless no
    # candidate can take the bucket, see the docstring).
    u_index: dict[tuple[str, int], int] = {}
    uncoverable: set[tuple[str, int]] = set()
    z_index: dict[str, int] = {}
    for s in problem.services:
        agg = by_service_role.get((s.id, "aggregated"), [])
        pre = by_service_role.get((s.id, "prefill"), [])
        dec = by_service_role.get((s.id, "decode"), [])

        # z[s] in {0, 1}: 1 when an `auto` service runs disaggregated (only when both modes are possible).
        if s.serving == "auto" and agg and pre and dec:
            z_index[s.id] = b.var(0.0, 0.0, 1.0, True)

        for k, r in enumerate(s.bucket_rps):
            if r <= 0.0:
                continue
            f_agg = [(f_index[(i, k)], 1.0) for i in agg if (i, k) in f_index]
            f_pre = [(f_index[(i, k)], 1.0) for i in pre if (i, k) in f_index]
            f_dec = [(f_index[(i, k)], 1.0) for i in dec if (i, k) in f_index]
            coverable = bool(f_agg) or (bool(f_pre) and bool(f_dec))
            if not coverable:
                uncoverable.add((s.id, k))
            u = b.var(0.0, 0.0, 0.0 if coverable else 1.0, False)
            u_index[(s.id, k)] = u
            # Coverage, every request served once: sum_agg f + sum_prefill f + u = 1 ...
            b.row([*f_agg, *f_pre, (u, 1.0)], 1.0, 1.0)
            if pre or dec:
                # ... and every disaggregated request decoded too: sum_agg f + sum_decode f + u = 1,
                # so sum_prefill f = sum_decode f (prefill and decode carry the same requests).
                b.row([*f_agg, *f_dec, (u, 1.0)], 1.0, 1.0)
            if s.id in z_index:
                z = z_index[s.id]
                # One mode per service: sum_agg f <= 1 - z and sum_prefill f <= z.
                if f_agg:
                    b.row([*f_agg, (z, 1.0)], -inf, 1.0)
                if f_pre:
                    b.row([*f_pre, (z, -1.0)], -inf, 0.0)

    # On-demand floor (options.on_demand_floor = phi): of what a stage serves of bucket b, at least phi on
    # on-demand pools, per stage (front: aggregated + prefill; back: aggregated + decode):
    #   sum_{c on-demand} f_cb - phi sum_c f_cb >= 0,
    # written only where the stage has an on-demand configuration for b (else it would forbid serving b).
    # Whether an on-demand configuration exists is judged over every candidate, not those column generation
    # kept: a restricted MILP then serves nothing of b until it is widened (stages.solve_milp).
    if options.on_demand_floor > 0.0:
        phi = options.on_demand_floor
        spot = {p.id: p.spot for p in problem.pools}
        able: set[tuple[str, str, int]] = set()
        for c in problem.candidates:
            if not spot[c.pool]:
                for k, cap in enumerate(c.max_rps_per_bucket):
                    if cap > 0.0:
                        able.add((c.service, c.role, k))
        for s in problem.services:
            for k, r in enumerate(s.bucket_rps):
                if r <= 0.0:
                    continue
                for partner in ("prefill", "decode"):
                    idx = [
                        i
                        for role in ("aggregated", partner)
                        for i in by_service_role.get((s.id, role), [])
                        if (i, k) in f_index
                    ]
                    on_demand = [i for i in idx if not pools[candidates[i].pool].spot]
                    if not any((s.id, role, k) in able for role in ("aggregated", partner)):
                        continue  # no on-demand configuration at all: the floor cannot hold
                    if len(on_demand) == len(idx):
                        continue  # nothing on spot: it holds
                    if partner == "decode" and not any(candidates[i].role == "decode" for i in idx):
                        continue  # aggregated only: the front row already says it
                    b.row(
                        [(f_index[(i, k)], (1.0 if i in on_demand else 0.0) - phi) for i in idx],
                        0.0,
                        inf,
                    )

    # Load: a replica time-shares its capacity across buckets (Mélange):
    #   sum_b (r_b / cap_cb) f_cb <= n_c.
    for i, c in enumerate(candidates):
        rates = services[c.service].bucket_rps
        terms = [
            (f_index[(i, k)], rates[k] / c.max_rps_per_bucket[k])
            for k in range(len(rates))
            if (i, k) in f_index
        ]
        if terms:
            b.row([*terms, (n_index[i], -1.0)], -inf, 0.0)
            # Activation, per bucket: any traffic of bucket b on c needs a replica, f_cb <= n_c. With a tiny
            # rate the load row's coefficients fall below HiGHS's tolerance; these rows' are O(1). One row
            # per bucket rather than the aggregate sum_b f_cb <= B_c n_c: the LP relaxation then pays for
            # at least the largest share it routes to c (the strong facility-location linking), which is
            # what closes the gap of small services whose whole traffic needs a fraction of a replica.
            for col, _ in terms:
                b.row([(col, 1.0), (n_index[i], -1.0)], -inf, 0.0)

    budget_rows: dict[str, int] = {}
    for s in problem.services:
        roles: dict[str, list[int]] = {
            role: by_service_role.get((s.id, role), []) for role in ("aggregated", "prefill", "decode")
        }
        z_col = z_index.get(s.id)
        # Replica floor: aggregated mode sum_agg n >= min; disaggregated sum_prefill n >= min and
        # sum_decode n >= min; auto: sum_agg n >= min (1 - z), sum_prefill n >= min z, sum_decode n >= min z.
        if s.min_replicas > 0:
            m = float(s.min_replicas)
            # The roles the floor applies to: those of the serving modes the service can actually run
            # (a disaggregated mode needs both prefill and decode configurations).
            can_split = bool(roles["prefill"]) and bool(roles["decode"])
            floored = {
                "aggregated": s.serving != "disaggregated" and bool(roles["aggregated"]),
                "prefill": s.serving != "aggregated" and can_split,
                "decode": s.serving != "aggregated" and can_split,
            }
            if not any(floored.values()):
                raise inputs.InfeasibleError(
                    f"service {s.id}: replicas.min is {s.min_replicas} but no configuration of its serving "
                    f"mode ({s.serving}) fits"
                )
            for role, idx in roles.items():
                if not idx or not floored[role]:
                    continue
                terms = [(n_index[i], 1.0) for i in idx]
                if z_col is None:
                    b.row(terms, m, inf)
                elif role == "aggregated":
                    b.row([*terms, (z_col, m)], m, inf)
                else:
                    b.row([*terms, (z_col, -m)], 0.0, inf)
        # Replica ceiling per role: sum_role n <= max.
        if s.max_replicas is not None:
            for idx in roles.values():
                if idx:
                    b.row([(n_index[i], 1.0) for i in idx], -inf, float(s.max_replicas))
        # Budget: sum_c price_c n_c <= max_dollars_per_hour.
        if s.max_dollars_per_hour is not None:
            idx = [i for group in roles.values() for i in group]
            if idx:
                budget_rows[s.id] = b.row(
                    [(n_index[i], candidates[i].price_per_hour) for i in idx], -inf, s.max_dollars_per_hour
                )

    # One accelerator type per service (option): w[s, a] in {0, 1}, sum_a w[s, a] = 1, and every candidate c
    # of s on type a: n_c <= N_c w[s, a], with N_c = nodes * floor(devices_per_node / tp_c) the most
    # replicas of c its pool can hold (a valid big-M: the capacity rows bound n_c by it anyway).
    if options.one_accelerator_per_service:
        by_service_type: dict[str, dict[str, list[int]]] = defaultdict(lambda: defaultdict(list))
        for i, c in enumerate(candidates):
            by_service_type[c.service][c.accelerator].append(i)
        for types in by_service_type.values():
            if len(types) < 2:
                continue
            w_cols = {acc: b.var(0.0, 0.0, 1.0, True) for acc in types}
            b.row([(w, 1.0) for w in w_cols.values()], 1.0, 1.0)
            for acc, idx in types.items():
                for i in idx:
                    pool = pools[candidates[i].pool]
                    most = float(pool.nodes * (pool.devices_per_node // candidates[i].tp))
                    b.row([(n_index[i], 1.0), (w_cols[acc], -most)], -inf, 0.0)

    # Pool capacity in whole nodes. A TP-t replica needs t devices of one node. Let y_t = sum of n_c over
    # the pool's candidates with tp t.
    by_pool_tp: dict[str, dict[int, list[int]]] = defaultdict(lambda: defaultdict(list))
    for i, c in enumerate(candidates):
        by_pool_tp[c.pool][c.tp].append(i)
    for pool_id, tps in by_pool_tp.items():
        pool = pools[pool_id]
        sizes = sorted(tps)
        if len(sizes) == 1:
            # One size: y_t <= nodes * floor(devices_per_node / t).
            t = sizes[0]
            b.row([(n_index[i], 1.0) for i in tps[t]], -inf, float(pool.nodes * (pool.devices_per_node // t)))
        elif divisibility_chain(sizes, pool.devices_per_node):
            # Sizes dividing each other and the node pack perfectly (first-fit decreasing leaves no hole
            # a smaller size could not use): sum_t t y_t <= nodes * devices_per_node.
            b.row([(n_index[i], float(t)) for t in sizes for i in tps[t]], -inf, float(pool.devices_total))
        else:
            patterns = _node_patterns(sizes, pool.devices_per_node)
            if len(patterns) > MAX_NODE_PATTERNS:
                raise inputs.InvalidProblemError(
                    f"pools[{pool_id}]: TP sizes {sizes} on {pool.devices_per_node}-device nodes give more "
                    f"than {MAX_NODE_PATTERNS} packings; use TP sizes that divide the node"
                )
            # k[p, pi] in Z>=0: nodes filled with pattern pi (a_{pi,t} replicas of size t):
            #   sum_pi k_pi <= nodes  and  y_t <= sum_pi a_{pi,t} k_pi for every size t.
            k_cols = [b.var(0.0, 0.0, float(pool.nodes), True) for _ in patterns]
            b.row([(k, 1.0) for k in k_cols], -inf, float(pool.nodes))
            for t in sizes:
                terms = [(n_index[i], 1.0) for i in tps[t]]
                terms += [
                    (k, -float(pat.get(t, 0))) for k, pat in zip(k_cols, patterns, strict=True) if pat.get(t)
                ]
                b.row(terms, -inf, 0.0)

    _count_cuts(b, problem, candidates, n_index, u_index, z_index, uncoverable)

    # Stability: d_c >= current_c - n_c, d_c >= 0, penalised move_penalty * devices_c per removed replica.
    removed: dict[int, int] = {}  # candidate -> column of d_c
    if options.move_penalty_per_device_hour > 0.0 or options.surge_shortfall_price_factor > 0.0:
        for i, c in enumerate(candidates):
            now = problem.current_replicas.get(c.key, 0)
            if now > 0:
                d = b.var(options.move_penalty_per_device_hour * c.devices, 0.0, inf, False)
                b.row([(n_index[i], 1.0), (d, 1.0)], float(now), inf)
                removed[i] = d
    if options.surge_shortfall_price_factor > 0.0:
        _surge_rows(b, problem, candidates, n_index, removed, options.surge_shortfall_price_factor)

    a = sp.csr_matrix((b.vals, (b.rows, b.cols)), shape=(len(b.row_lo), len(b.cost)))
    return Model(
        c=np.asarray(b.cost, dtype=np.float64),
        a=a,
        row_lo=np.asarray(b.row_lo, dtype=np.float64),
        row_hi=np.asarray(b.row_hi, dtype=np.float64),
        var_lo=np.asarray(b.lo, dtype=np.float64),
        var_hi=np.asarray(b.hi, dtype=np.float64),
        integrality=np.asarray(b.integer, dtype=np.int8),
        candidates=candidates,
        n_index=n_index,
        f_index=f_index,
        u_index=u_index,
        z_index=z_index,
        uncoverable=frozenset(uncoverable),
        budget_rows=budget_rows,
        full_lp_bound=pruned.full_lp_bound,
        lp_needs_unmet=pruned.lp_needs_unmet,
        restricted=pruned.restricted,
    )


def _surge_rows(
    b: _Builder,
    problem: inputs.FleetProblem,
    candidates: Sequence[inputs.Candidate],
    n_index: Sequence[int],
    removed: Mapping[int, int],
    price_factor: float,
) -> None:
    """Rollout room: the plan's devices plus those of current replicas it removes fit each pool.

    While a replacement starts, the replica it replaces still runs, so per pool p
        sum_c tp_c n_c + sum_c tp_c d_c + gone_p - s_p <= devices_p,
    s_p >= 0 costing price_factor x the pool's $/device-hour,
    where gone_p counts current replicas whose configuration is no longer a candidate (removed for sure).
    Soft: a full pool can still be re-planned, at a price that prefers plans rolling out without a pause.
    """
    pools = {p.id: p for p in problem.pools}
    keys = {c.key for c in candidates}
    services = {s.id for s in problem.services}
    gone: dict[str, float] = defaultdict(float)
    for key, now in problem.current_replicas.items():
        if now > 0 and key not in keys and key.service in services:
            gone[key.pool] += float(now * key.tp)
    touched = {candidates[i].pool for i in removed} | set(gone)
    if not touched:
        return  # nothing runs that the plan could remove: no rollout to fit
    # Terms per pool in one pass over the candidates (not one pass per touched pool).
    terms_of: dict[str, list[tuple[int, float]]] = defaultdict(list)
    for i, c in enumerate(candidates):
        terms_of[c.pool].append((n_index[i], float(c.tp)))
    for i, d in removed.items():
        terms_of[candidates[i].pool].append((d, float(candidates[i].tp)))
    for pool_id in sorted(touched):
        pool = pools.get(pool_id)
        if pool is None:
            continue  # the pool is gone, and its devices with it
        terms = list(terms_of[pool_id])
        shortfall = b.var(price_factor * pool.price_per_device_hour, 0.0, math.inf, False)
        terms.append((shortfall, -1.0))
        b.row(terms, -math.inf, float(pool.devices_total) - gone[pool_id])
