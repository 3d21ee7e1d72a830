"""Shared builders and an independent brute-force solver for the placement solver's tests."""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import numpy as np
from scipy.optimize import linprog

from placement.solver import inputs


def pool(pool_id: str, devices_per_node: int = 8, nodes: int = 1, price: float = 1.0) -> inputs.Pool:
    """A pool named after its accelerator."""
    return inputs.Pool(pool_id, pool_id, devices_per_node, nodes, price)


def cand(
    service: str,
    pool_id: str,
    caps: Sequence[float],
    price: float,
    tp: int = 1,
    role: inputs.Role = "aggregated",
) -> inputs.Candidate:
    """A candidate with the given per-bucket capacities."""
    return inputs.Candidate(service, role, pool_id, pool_id, "bf16", tp, tuple(caps), price)


def routing_feasible(problem: inputs.FleetProblem, replicas: Sequence[int]) -> bool:
    """Can every bucket of every aggregated service be routed within these replicas' capacity? (an LP)."""
    cands = problem.candidates
    services = {s.id: s for s in problem.services}
    var: dict[tuple[int, int], int] = {}
    for i, c in enumerate(cands):
        for k, cap in enumerate(c.max_rps_per_bucket):
            if cap > 0 and services[c.service].bucket_rps[k] > 0:
                var[(i, k)] = len(var)
    a_eq, b_eq, a_ub, b_ub = [], [], [], []
    for s in problem.services:
        for k, r in enumerate(s.bucket_rps):
            if r <= 0:
                continue
            row = np.zeros(len(var))
            for (i, kk), v in var.items():
                if kk == k and cands[i].service == s.id:
                    row[v] = 1.0
            if not row.any():
                return False
            a_eq.append(row)
            b_eq.append(r)  # variables are routed req/s here, unlike the MILP's shares
    for i, c in enumerate(cands):
        row = np.zeros(len(var))
        for (ii, k), v in var.items():
            if ii == i:
                row[v] = 1.0 / c.max_rps_per_bucket[k]
        a_ub.append(row)
        b_ub.append(replicas[i])
    if not var:
        return not a_eq
    res = linprog(
        np.zeros(len(var)),
        A_ub=np.array(a_ub) if a_ub else None,
        b_ub=b_ub or None,
        A_eq=np.array(a_eq) if a_eq else None,
        b_eq=b_eq or None,
        bounds=(0, None),
        method="highs",
    )
    return bool(res.status == 0)


def fits_nodes(sizes: list[int], devices_per_node: int, nodes: int) -> bool:
    """Exact bin packing by backtracking: can replicas of these TP sizes go on the nodes?"""
    free = [devices_per_node] * nodes
    ordered = sorted(sizes, reverse=True)

    def place(i: int) -> bool:
        if i == len(ordered):
            return True
        tried: set[int] = set()
        for n in range(nodes):
            if free[n] >= ordered[i] and free[n] not in tried:
                tried.add(free[n])
                free[n] -= ordered[i]
                if place(i + 1):
                    return True
                free[n] += ordered[i]
        return False

    return place(0)


def brute_force(problem: inputs.FleetProblem, options: inputs.SolveOptions | None = None) -> float | None:
    """Cheapest $/h serving all traffic, by enumerating replica counts; None when impossible."""
    del options  # same signature as solve.solve; enumeration has no knobs
    cands = problem.candidates
    pools = {p.id: p for p in problem.pools}
    services = {s.id: s for s in problem.services}
    bounds = []
    for c in cands:
        s = services[c.service]
        need = sum(r / cap for r, cap in zip(s.bucket_rps, c.max_rps_per_bucket, strict=False) if cap > 0)
        slots = pools[c.pool].nodes * (pools[c.pool].devices_per_node // c.tp)
        bounds.append(min(slots, math.ceil(need + 1e-9) + 1))
    best: float | None = None
    for replicas in itertools.product(*(range(b + 1) for b in bounds)):
        cost = sum(n * c.price_per_hour for n, c in zip(replicas, cands, strict=False))
        if best is not None and cost >= best - 1e-9:
            continue
        ok = True
        for s in problem.services:
            mine = [n for n, c in zip(replicas, cands, strict=False) if c.service == s.id]
            if s.max_replicas is not None and sum(mine) > s.max_replicas:
                ok = False
            if sum(mine) < s.min_replicas:
                ok = False
        for p in problem.pools:
            sizes = [c.tp for n, c in zip(replicas, cands, strict=False) if c.pool == p.id for _ in range(n)]
            if not fits_nodes(sizes, p.devices_per_node, p.nodes):
                ok = False
        if ok and routing_feasible(problem, replicas):
            best = cost
    return best
