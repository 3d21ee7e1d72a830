"""Candidate pruning: drop useless and dominated configurations, and (for large problems) column
generation, which keeps the columns the LP relaxation over every candidate needs plus the K best per
bucket at its shadow prices, and reports that LP's optimum as a valid lower bound."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from numpy.typing import NDArray
from scipy.optimize import linprog

from placement.solver import inputs


def _undominated(
    cands: Sequence[inputs.Candidate], current: set[inputs.CandidateKey]
) -> list[inputs.Candidate]:
    """Drop candidates another one of the same pool beats: tp and price no higher, capacity no lower.

    Exact: the better configuration can replace the other replica for replica without using more of the
    pool. Ties keep the first. Vectorised, as a service can have a hundred configurations.
    """
    n = len(cands)
    if n < 2:
        return list(cands)
    caps = np.array([c.max_rps_per_bucket for c in cands], dtype=np.float64)
    price = np.array([c.price_per_hour for c in cands])
    tp = np.array([c.tp for c in cands])
    pools = np.array([c.pool for c in cands])
    # beats[i, j]: candidate i is at least as good as j everywhere.
    beats = (
        (pools[:, None] == pools[None, :])
        & (tp[:, None] <= tp[None, :])
        & (price[:, None] <= price[None, :])
        & (caps[:, None, :] >= caps[None, :, :]).all(axis=2)
    )
    np.fill_diagonal(beats, False)
    # Of two equal candidates, only the later one is dropped.
    equal = beats & beats.T
    strictly = beats & ~equal
    earlier_equal = np.triu(equal, k=1)
    dominated = strictly.any(axis=0) | earlier_equal.any(axis=0)
    return [c for i, c in enumerate(cands) if not dominated[i] or c.key in current]


@dataclass(frozen=True)
class Pruned:
    """Candidates kept for the MILP, and what the LP relaxation of the full problem said."""

    candidates: tuple[inputs.Candidate, ...]
    # LP relaxation optimum over all candidates (a valid lower bound on the full MILP), when computed
    # and when it serves all traffic.
    full_lp_bound: float | None
    # The LP relaxation cannot serve all coverable traffic: the full-service MILP is infeasible.
    lp_needs_unmet: bool
    # Column generation chose the candidates (the MILP is restricted).
    restricted: bool = False
    # The LP's shadow price of one device per pool ($/h, <= 0), in problem.pools order, when computed.
    pool_duals: tuple[float, ...] | None = None
    # (service, pool) pairs the LP's optimum routes traffic through (for the primal heuristic), when computed.
    lp_pools: frozenset[tuple[str, str]] | None = None


# When the pruned MILP cannot serve what the LP serves, K grows by this factor per retry.
COLUMN_WIDENING = 4
# Column generation: at most this many LP rounds, and columns priced below -tolerance enter.
COLUMN_ROUNDS = 30
REDUCED_COST_TOLERANCE = 1e-9
# Unmet demand in the column-generation LP costs this multiple of the dearest $/(req/s) of any column,
# so the LP serves everything it can before leaving anything out.
UNMET_PENALTY_FACTOR = 100.0


def prune(
    problem: inputs.FleetProblem,
    options: inputs.SolveOptions,
    keep: frozenset[inputs.CandidateKey] = frozenset(),
) -> Pruned:
    """Candidates worth a variable: useful, not dominated, and (optionally) selected by column generation."""
    demand = {s.id: s for s in problem.services}
    groups: dict[tuple[str, str], list[inputs.Candidate]] = defaultdict(list)
    for c in problem.candidates:
        groups[(c.service, c.role)].append(c)
    survivors: list[inputs.Candidate] = []
    for (service_id, _role), cands in groups.items():
        s = demand[service_id]
        # Running now (or in a plan to start from, `keep`): never dropped as dominated.
        current = {c.key for c in cands if problem.current_replicas.get(c.key, 0) > 0 or c.key in keep}
        # Useless: cannot serve any bucket that has traffic (and no replica floor to satisfy).
        useful = [
            c
            for c in cands
            if c.key in current
            or s.min_replicas > 0
            or any(cap > 0.0 and r > 0.0 for cap, r in zip(c.max_rps_per_bucket, s.bucket_rps, strict=True))
        ]
        survivors.extend(_undominated(useful, current))
    k = options.max_candidates_per_bucket
    if k is None:
        return Pruned(tuple(survivors), None, False)
    return _column_generation(problem, survivors, k)


def _column_generation(problem: inputs.FleetProblem, cands: Sequence[inputs.Candidate], k: int) -> Pruned:
    """Keep the columns the full LP relaxation needs, plus the K best per bucket at its shadow prices.

    The LP is the MILP without integrality, mode choice, floors, ceilings and budgets, in the eliminated
    form x[c, b] = share of bucket b on c, cost price_c r_b / cap_cb, pool use tp_c r_b / cap_cb. Columns
    enter while their reduced cost c - A^T y is negative, so the final LP optimum is the LP optimum over
    every candidate: a valid lower bound for the full problem, whatever was pruned.
    """
    services = {s.id: s for s in problem.services}
    pool_index = {p.id: i for i, p in enumerate(problem.pools)}
    # Row numbering: front coverage per (service, bucket) with traffic, then back coverage for services
    # with prefill/decode candidates, then pools.
    has_pd = {c.service for c in cands if c.role != "aggregated"}
    # Only buckets the MILP must serve get rows: those an aggregated candidate, or a prefill and a decode
    # candidate together, can take (formulation.build leaves the others' unmet share free). A bucket no
    # candidate can take would otherwise make this LP "need unmet" demand, and the solve would skip the
    # all-served MILP for the priority stages.
    able: dict[str, set[tuple[str, int]]] = {role: set() for role in inputs.ROLES}
    for c in cands:
        for b, cap in enumerate(c.max_rps_per_bucket):
            if cap > 0.0:
                able[c.role].add((c.service, b))
    front: dict[tuple[str, int], int] = {}
    for s in problem.services:
        for b, r in enumerate(s.bucket_rps):
            key = (s.id, b)
            if r > 0.0 and (key in able["aggregated"] or (key in able["prefill"] and key in able["decode"])):
                front[key] = len(front)
    back: dict[tuple[str, int], int] = {}
    for sid, b in front:
        if sid in has_pd:
            back[(sid, b)] = len(front) + len(back)
    first_pool_row = len(front) + len(back)
    n_rows = first_pool_row + len(problem.pools)

    col_cand: list[int] = []
    col_front: list[int] = []
    col_back: list[int] = []
    col_cost: list[float] = []
    col_use: list[float] = []
    col_pool: list[int] = []
    col_rate: list[float] = []
    for i, c in enumerate(cands):
        rates = services[c.service].bucket_rps
        for b, (cap, r) in enumerate(zip(c.max_rps_per_bucket, rates, strict=True)):
            if cap <= 0.0 or r <= 0.0 or (c.service, b) not in front:
                continue
            col_cand.append(i)
            col_front.append(front[(c.service, b)] if c.role != "decode" else -1)
            col_back.append(back.get((c.service, b), -1) if c.role != "prefill" else -1)
            col_cost.append(c.price_per_hour * r / cap)
            col_rate.append(r)
            col_use.append(c.tp * r / cap)
            col_pool.append(pool_index[c.pool])
    if not col_cand:
        return Pruned(tuple(cands), None, bool(front))
    cand_of = np.asarray(col_cand)
    f_row = np.asarray(col_front)
    b_row = np.asarray(col_back)
    cost = np.asarray(col_cost)
    use = np.asarray(col_use)
    pool_of = np.asarray(col_pool)
    # The bucket a column covers, as its front or back row.
    cover_row = np.where(f_row >= 0, f_row, b_row)

    # Unmet columns: one per (service, bucket), in its front and back rows.
    unmet_rows_front = np.array(list(front.values()), dtype=np.int64)
    unmet_rows_back = np.array([back.get(key, -1) for key in front], dtype=np.int64)
    rate_of_row = np.array([services[sid].bucket_rps[b] for (sid, b) in front])
    # $/h per req/s of the dearest column, times the factor, per req/s left unmet.
    penalty_per_rps = UNMET_PENALTY_FACTOR * float((cost / np.asarray(col_rate)).max())
    unmet_cost = penalty_per_rps * rate_of_row
    capacity = np.array([p.devices_total for p in problem.pools], dtype=np.float64)

    # Start: the K cheapest columns per covered row.
    active = np.zeros(cost.size, dtype=bool)
    order = np.lexsort((cost, cover_row))
    starts = np.searchsorted(cover_row[order], np.arange(n_rows))
    ends = np.searchsorted(cover_row[order], np.arange(n_rows), side="right")
    for row in range(first_pool_row):
        active[order[starts[row] : min(ends[row], starts[row] + k)]] = True

    x = np.zeros(cost.size)
    y = np.zeros(n_rows)
    objective = math.inf
    unmet_total = math.inf
    converged = False
    for _ in range(COLUMN_ROUNDS):
        cols = np.flatnonzero(active)
        n_cols = cols.size
        local = np.arange(n_cols)
        n_unmet = unmet_rows_front.size
        u_local = n_cols + np.arange(n_unmet)
        m = f_row[cols] >= 0
        mb = b_row[cols] >= 0
        mu = unmet_rows_back >= 0
        # (row, column, value) blocks: front coverage, back coverage, pool use, unmet in both coverages.
        blocks = [
            (f_row[cols][m], local[m], np.ones(int(m.sum()))),
            (b_row[cols][mb], local[mb], np.ones(int(mb.sum()))),
            (first_pool_row + pool_of[cols], local, use[cols]),
            (unmet_rows_front, u_local, np.ones(n_unmet)),
            (unmet_rows_back[mu], u_local[mu], np.ones(int(mu.sum()))),
        ]
        rows = [blk[0] for blk in blocks]
        colidx = [blk[1] for blk in blocks]
        vals = [blk[2] for blk in blocks]
        a = sp.csr_matrix(
            (np.concatenate(vals), (np.concatenate(rows), np.concatenate(colidx))),
            shape=(n_rows, n_cols + n_unmet),
        )
        a_eq, a_ub = a[:first_pool_row], a[first_pool_row:]
        res = linprog(
            np.concatenate([cost[cols], unmet_cost]),
            A_ub=a_ub,
            b_ub=capacity,
            A_eq=a_eq,
            b_eq=np.ones(first_pool_row),
            bounds=(0, None),
            method="highs",
        )
        if res.status != 0:
            # Numerical trouble: fall back to the starting columns; no bound is claimed.
            return Pruned(_chosen(cands, cand_of, active, cost, cover_row, k, problem), None, False, True)
        x = np.zeros(cost.size)
        x[cols] = res.x[:n_cols]
        unmet_total = float((res.x[n_cols:] * rate_of_row).sum())
        objective = float(np.dot(cost[cols], res.x[:n_cols]))
        y = np.concatenate([res.eqlin.marginals, res.ineqlin.marginals])
        # Reduced cost of every column: c - A^T y.
        reduced = cost - np.where(f_row >= 0, y[np.maximum(f_row, 0)], 0.0)
        reduced -= np.where(b_row >= 0, y[np.maximum(b_row, 0)], 0.0)
        reduced -= use * y[first_pool_row + pool_of]
        entering = (~active) & (reduced < -REDUCED_COST_TOLERANCE * np.maximum(1.0, np.abs(cost)))
        if not entering.any():
            converged = True
            break
        active |= entering
    needs_unmet = unmet_total > inputs.FEASIBILITY_TOLERANCE * max(1.0, float(rate_of_row.sum()))
    # Shadow-priced cost of each column: what it really costs once congested pools charge for devices.
    priced = cost - use * y[first_pool_row + pool_of]
    keep = active & (x > inputs.FEASIBILITY_TOLERANCE)
    # Pools the LP leaves with room (no shadow price): each row also keeps its best column there, so
    # the integer problem has somewhere to put the replicas rounding adds.
    slack = y[first_pool_row + pool_of] > -REDUCED_COST_TOLERANCE
    chosen = _chosen(cands, cand_of, keep, priced, cover_row, k, problem, pool_of, slack)
    # The LP optimum bounds the full problem only once no column prices out (every candidate was priced).
    bound = objective if converged and not needs_unmet else None
    duals = tuple(float(v) for v in y[first_pool_row:])
    used = frozenset((cands[int(i)].service, cands[int(i)].pool) for i in np.unique(cand_of[keep]))
    return Pruned(chosen, bound, needs_unmet, True, duals, used)


def _chosen(
    cands: Sequence[inputs.Candidate],
    cand_of: NDArray[np.int64],
    keep: NDArray[np.bool_],
    score: NDArray[np.float64],
    cover_row: NDArray[np.int64],
    k: int,
    problem: inputs.FleetProblem,
    pool_of: NDArray[np.int64] | None = None,
    slack: NDArray[np.bool_] | None = None,
) -> tuple[inputs.Candidate, ...]:
    """Candidates of the kept columns, the K best-scored per covered row on K different pools, the best
    on a pool with room, and those running now."""
    picked = set(cand_of[keep].tolist())
    order = np.lexsort((score, cover_row))
    sorted_rows = cover_row[order]
    boundaries = np.flatnonzero(np.diff(sorted_rows)) + 1
    for group in np.split(order, boundaries):
        if pool_of is None:
            picked.update(cand_of[group[:k]].tolist())
            continue
        seen_pools: set[int] = set()
        for col in group:
            if len(seen_pools) >= k:
                break
            if int(pool_of[col]) not in seen_pools:
                seen_pools.add(int(pool_of[col]))
                picked.add(int(cand_of[col]))
        if slack is not None:
            roomy = group[slack[group]]
            if roomy.size:
                picked.add(int(cand_of[roomy[0]]))
    for i, c in enumerate(cands):
        if problem.current_replicas.get(c.key, 0) > 0:
            picked.add(i)
    # Services with no traffic keep their cheapest candidate per role (for replica floors).
    covered = {(cands[i].service, cands[i].role) for i in picked}
    cheapest: dict[tuple[str, str], int] = {}
    for i, c in enumerate(cands):
        key = (c.service, c.role)
        if key not in covered and (
            key not in cheapest or c.price_per_hour < cands[cheapest[key]].price_per_hour
        ):
            cheapest[key] = i
    picked.update(cheapest.values())
    return tuple(cands[i] for i in sorted(picked))


# ----------------------------------------------------------------------------------------------------
