"""The fleet placement MILP: integer replicas per (service, role, pool, precision, tp) at minimum $/h.

Three pure steps, as the style guide asks: `build` turns a `Problem` into matrices (c, A, bounds,
integrality), `_run` hands them to HiGHS through scipy.optimize.milp and checks the status, `decode`
turns the solution vector into a typed `Plan`. `solve` chains them, adding lexicographic stages only when
capacity or budgets are short. Nothing here knows physics: every candidate carries its own SLO-bounded
capacity per request-size bucket (from a measured profile or placement.perf, see placement.candidates).

Traffic model (Mélange's, generalised): a service's demand is a rate per request-size bucket; a replica
time-shares its capacity across buckets, so serving x_b req/s of bucket b with capacity cap_b costs
x_b / cap_b of a replica. A bucket may be split across candidates (long prompts to one chip, short to
another), and a request is served either by an aggregated replica or by a prefill and a decode replica.

Scale: above AUTO_COLUMN_GENERATION_CANDIDATES candidates, column generation keeps the columns the LP
relaxation needs (`prune`); from DECOMPOSE_MIN_SERVICES services, when no ceiling, budget or stability
penalty couples a service's choices, `decompose` plans services one by one with pool prices instead of
one MILP (benchmarks/REPORT_solver.md has the measurements behind both).
"""

from __future__ import annotations

import contextlib
import itertools
import math
import os
import sys
import time
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Literal

import numpy as np
import scipy.sparse as sp
from numpy.typing import NDArray
from scipy.optimize import Bounds, LinearConstraint, OptimizeResult, linprog, milp

Role = Literal["aggregated", "prefill", "decode"]
ServingMode = Literal["aggregated", "disaggregated", "auto"]
ROLES: tuple[Role, ...] = ("aggregated", "prefill", "decode")
SERVING_MODES: tuple[ServingMode, ...] = ("aggregated", "disaggregated", "auto")

# HiGHS's default primal feasibility tolerance is 1e-7; solution values are trusted to this much slack
# when decoding and verifying (a replica loaded to 1 + 1e-6 is a rounding artefact, not an overload).
FEASIBILITY_TOLERANCE = 1e-6
# Slack on a priority level's pinned unmet rate, relative to the level's demand: ten times HiGHS's
# primal feasibility tolerance (1e-7), and PIN_RETRY_FACTOR times that when a stage still fails.
PIN_TOLERANCE = 1e-6
PIN_RETRY_FACTOR = 100.0
# Unmet demand below this share of a service's rate is reported as served: ten times the pin slack,
# which the final cost stage may use (giving up a millionth of a level's demand to save a replica).
UNMET_NOISE = 1e-5
# A share of a bucket's traffic below this on a configuration with no replicas is solver noise (within
# the feasibility tolerance of the activation row), not traffic: it is dropped.
SHARE_NOISE = 1e-5
# Request rates at or below this (one request in ~30 years) are float debris, not traffic.
RATE_NOISE_RPS = 1e-9
# Default relative MIP gap: HiGHS stops when (objective - bound) / objective falls below this.
DEFAULT_MIP_REL_GAP = 1e-4
DEFAULT_TIME_LIMIT_S = 60.0
# Above this many maximal node patterns a pool falls back to a device-count constraint (exact whenever
# every TP size divides the node; patterns are only needed for odd shapes such as TP-4 on 6-device nodes).
MAX_NODE_PATTERNS = 200


class PlacementError(ValueError):
    """Base of every error the solver raises; the message is one line naming the cause."""


class InvalidProblemError(PlacementError):
    """The problem is malformed (unknown pool, negative rate, mismatched bucket counts...)."""


class InfeasibleError(PlacementError):
    """No plan satisfies the hard constraints (replica minimums), even serving no traffic at all."""


class SolverError(PlacementError):
    """HiGHS stopped without a usable solution (time limit before any incumbent, numerical trouble)."""


@dataclass(frozen=True)
class Pool:
    """A set of identical nodes: `devices_per_node` devices (GPUs, MIG slices or NeuronCores) each."""

    id: str
    accelerator: str
    devices_per_node: int
    nodes: int
    price_per_device_hour: float
    spot: bool = False

    @property
    def devices_total(self) -> int:
        """Devices in the whole pool."""
        return self.devices_per_node * self.nodes


@dataclass(frozen=True)
class Candidate:
    """One way to run one replica of a service role: pool, precision, TP, and its capacity per bucket."""

    service: str
    role: Role
    pool: str
    accelerator: str
    precision: str
    tp: int
    # Max req/s one replica sustains within the SLO for each of the service's buckets (0.0: cannot).
    # For prefill this is the prompt rate within TTFT, for decode the request rate within ITL.
    max_rps_per_bucket: tuple[float, ...]
    price_per_hour: float
    # Predicted p99 latencies at that max rate, per bucket (None where unknown or infeasible).
    ttft_p99_ms_per_bucket: tuple[float | None, ...] = ()
    itl_p99_ms_per_bucket: tuple[float | None, ...] = ()
    engine: str = "vllm"
    source: str = ""

    @property
    def devices(self) -> int:
        """Devices one replica occupies (all on one node)."""
        return self.tp

    @property
    def key(self) -> CandidateKey:
        """Identity of this configuration, as used for the current placement."""
        return CandidateKey(self.service, self.role, self.pool, self.precision, self.tp)


@dataclass(frozen=True, order=True)
class CandidateKey:
    """(service, role, pool, precision, tp): what the stability penalty compares across plans."""

    service: str
    role: str
    pool: str
    precision: str
    tp: int


@dataclass(frozen=True)
class ServiceDemand:
    """A service's traffic per request-size bucket and its constraints."""

    id: str
    bucket_rps: tuple[float, ...]
    # Mean output tokens of the requests in each bucket, for $/1M output tokens.
    bucket_output_tokens: tuple[float, ...] = ()
    serving: ServingMode = "aggregated"
    min_replicas: int = 0
    max_replicas: int | None = None
    # Higher serves first when capacity is short (Kubernetes PriorityClass convention).
    priority: int = 0
    max_dollars_per_hour: float | None = None

    @property
    def requests_per_second(self) -> float:
        """Total demand."""
        return sum(self.bucket_rps)


@dataclass(frozen=True)
class SolveOptions:
    """Knobs of the solve; defaults are exact (no heuristic pruning) with a 1e-4 relative gap."""

    time_limit_s: float = DEFAULT_TIME_LIMIT_S
    mip_rel_gap: float = DEFAULT_MIP_REL_GAP
    # Cost, in $/h-equivalent per device, of removing one device of a currently running replica: with
    # 0.0 the plan ignores the current placement; raise it so a small saving does not churn the fleet.
    move_penalty_per_device_hour: float = 0.0
    # Column generation: keep the candidates the full LP relaxation uses plus the K best per (service,
    # bucket) at its shadow prices; None keeps all (exact). The bound reported is then the full LP's.
    max_candidates_per_bucket: int | None = None
    # "milp": one MILP; "decompose": per-service decomposition with pool pricing (large fleets);
    # "auto": decompose from DECOMPOSE_MIN_SERVICES services when the problem allows it, else MILP.
    method: Literal["milp", "decompose", "auto"] = "auto"
    # Load each replica to at most this share of its SLO-bounded capacity: headroom for bursts the
    # sizing rate does not show (1.0 plans right up to the SLO bound).
    max_utilization: float = 1.0


@dataclass(frozen=True)
class Problem:
    """Everything one solve needs; build it with placement.candidates or by hand in tests."""

    services: tuple[ServiceDemand, ...]
    pools: tuple[Pool, ...]
    candidates: tuple[Candidate, ...]
    # Replicas running now per configuration (the stability penalty's reference point).
    current_replicas: Mapping[CandidateKey, int] = field(default_factory=dict)


@dataclass(frozen=True)
class Assignment:
    """Replicas of one configuration in the plan, and the traffic routed to them per bucket."""

    service: str
    role: Role
    pool: str
    accelerator: str
    precision: str
    tp: int
    replicas: int
    price_per_hour: float
    # Request rate routed to these replicas per service bucket (the router's weights).
    bucket_rps: tuple[float, ...]
    # Fraction of the replicas' SLO-bounded capacity in use (<= 1).
    utilization: float
    ttft_p99_ms: float | None
    itl_p99_ms: float | None
    engine: str
    source: str

    @property
    def devices(self) -> int:
        """Devices these replicas occupy."""
        return self.replicas * self.tp


ServiceStatus = Literal["served", "partial", "unserved"]


@dataclass(frozen=True)
class ServicePlan:
    """The plan of one service: its assignments, cost, and how much of its demand is served."""

    service: str
    mode: Literal["aggregated", "disaggregated", "none"]
    status: ServiceStatus
    assignments: tuple[Assignment, ...]
    price_per_hour: float
    demand_rps: float
    served_rps: float
    # $ per million output tokens at the served rate (None when nothing is served).
    price_per_million_output_tokens: float | None
    # Worst predicted p99 over the buckets served (None when unknown).
    ttft_p99_ms: float | None
    itl_p99_ms: float | None
    # Why demand is unserved, in one sentence (None when fully served); placement.explain refines it.
    reason: str | None

    @property
    def unmet_rps(self) -> float:
        """Demand not served."""
        return max(0.0, self.demand_rps - self.served_rps)


@dataclass(frozen=True)
class PoolUsage:
    """Devices of one pool used by the plan."""

    pool: str
    accelerator: str
    devices_total: int
    devices_used: int
    price_per_hour: float

    @property
    def devices_free(self) -> int:
        """Devices left."""
        return self.devices_total - self.devices_used


PlanStatus = Literal["optimal", "feasible"]
BoundSource = Literal["milp", "full-lp", "restricted-milp", "per-service", "none"]


@dataclass(frozen=True)
class Plan:
    """The typed result of a solve."""

    status: PlanStatus
    services: tuple[ServicePlan, ...]
    pools: tuple[PoolUsage, ...]
    # Fleet $/h of the chosen replicas (what you pay).
    price_per_hour: float
    # Objective of the final stage: $/h plus stability penalties.
    objective: float
    # HiGHS's dual bound on that objective, and the relative gap (objective - bound) / objective.
    bound: float
    gap: float
    solve_seconds: float
    stages: int
    # "milp": HiGHS's bound on this MILP; "full-lp": LP relaxation over every candidate (after pruning);
    # "restricted-milp": HiGHS's bound on the pruned MILP only (not a bound for the full problem);
    # "per-service": decompose's sum of per-service bounds (capacity ignored: valid, weaker).
    bound_source: BoundSource = "milp"

    def service(self, service_id: str) -> ServicePlan:
        """The plan of one service by id."""
        for s in self.services:
            if s.service == service_id:
                return s
        raise KeyError(service_id)


# ----------------------------------------------------------------------------------------------------
# Step 0: validation and candidate pruning (pure, no solver).


def validate(problem: Problem) -> None:
    """Raise InvalidProblemError naming the first malformed field of the problem."""
    pool_ids: set[str] = set()
    for p in problem.pools:
        if p.id in pool_ids:
            raise InvalidProblemError(f"pools[{p.id}]: defined twice")
        pool_ids.add(p.id)
        if p.devices_per_node < 1:
            raise InvalidProblemError(
                f"pools[{p.id}].devices_per_node: must be >= 1, got {p.devices_per_node}"
            )
        if p.nodes < 0:
            raise InvalidProblemError(f"pools[{p.id}].nodes: must be >= 0, got {p.nodes}")
        if not (math.isfinite(p.price_per_device_hour) and p.price_per_device_hour >= 0.0):
            raise InvalidProblemError(f"pools[{p.id}].price_per_device_hour: must be finite and >= 0")
    services: dict[str, ServiceDemand] = {}
    for s in problem.services:
        if s.id in services:
            raise InvalidProblemError(f"services[{s.id}]: defined twice")
        services[s.id] = s
        if any(not math.isfinite(r) or r < 0.0 for r in s.bucket_rps):
            raise InvalidProblemError(f"services[{s.id}].bucket_rps: every rate must be finite and >= 0")
        if s.bucket_output_tokens and len(s.bucket_output_tokens) != len(s.bucket_rps):
            raise InvalidProblemError(f"services[{s.id}].bucket_output_tokens: one value per bucket expected")
        if s.serving not in SERVING_MODES:
            raise InvalidProblemError(f"services[{s.id}].serving: must be one of {', '.join(SERVING_MODES)}")
        if s.min_replicas < 0:
            raise InvalidProblemError(f"services[{s.id}].min_replicas: must be >= 0")
        if s.max_replicas is not None and s.max_replicas < s.min_replicas:
            raise InvalidProblemError(f"services[{s.id}].max_replicas: below min_replicas {s.min_replicas}")
        if s.max_dollars_per_hour is not None and not s.max_dollars_per_hour >= 0.0:
            raise InvalidProblemError(f"services[{s.id}].max_dollars_per_hour: must be >= 0")
    pools = {p.id: p for p in problem.pools}
    seen: set[CandidateKey] = set()
    for c in problem.candidates:
        where = f"candidates[{c.service}/{c.role}/{c.pool}/{c.precision}/tp{c.tp}]"
        if c.key in seen:
            raise InvalidProblemError(f"{where}: defined twice")
        seen.add(c.key)
        if c.service not in services:
            raise InvalidProblemError(f"{where}.service: no service {c.service!r}")
        if c.pool not in pools:
            raise InvalidProblemError(f"{where}.pool: no pool {c.pool!r}")
        if c.role not in ROLES:
            raise InvalidProblemError(f"{where}.role: must be one of {', '.join(ROLES)}")
        if c.tp < 1 or c.tp > pools[c.pool].devices_per_node:
            raise InvalidProblemError(
                f"{where}.tp: must be between 1 and the pool's devices per node "
                f"({pools[c.pool].devices_per_node})"
            )
        if len(c.max_rps_per_bucket) != len(services[c.service].bucket_rps):
            raise InvalidProblemError(f"{where}.max_rps_per_bucket: one value per service bucket expected")
        if any(not math.isfinite(r) or r < 0.0 for r in c.max_rps_per_bucket):
            raise InvalidProblemError(f"{where}.max_rps_per_bucket: every rate must be finite and >= 0")
        if not (math.isfinite(c.price_per_hour) and c.price_per_hour >= 0.0):
            raise InvalidProblemError(f"{where}.price_per_hour: must be finite and >= 0")
        mode = services[c.service].serving
        if (mode == "aggregated" and c.role != "aggregated") or (
            mode == "disaggregated" and c.role == "aggregated"
        ):
            raise InvalidProblemError(f"{where}.role: {c.role} does not fit serving mode {mode}")
    for key, replicas in problem.current_replicas.items():
        if replicas < 0:
            raise InvalidProblemError(f"current_replicas[{key}]: must be >= 0")


def _undominated(cands: Sequence[Candidate], current: set[CandidateKey]) -> list[Candidate]:
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

    candidates: tuple[Candidate, ...]
    # LP relaxation optimum over all candidates (a valid lower bound on the full MILP), when computed
    # and when it serves all traffic.
    full_lp_bound: float | None
    # The LP relaxation cannot serve all coverable traffic: the full-service MILP is infeasible.
    lp_needs_unmet: bool
    # Column generation chose the candidates (the MILP is restricted).
    restricted: bool = False


# When the pruned MILP cannot serve what the LP serves, K grows by this factor per retry.
COLUMN_WIDENING = 4
# Column generation: at most this many LP rounds, and columns priced below -tolerance enter.
COLUMN_ROUNDS = 30
REDUCED_COST_TOLERANCE = 1e-9
# Unmet demand in the column-generation LP costs this multiple of the dearest $/(req/s) of any column,
# so the LP serves everything it can before leaving anything out.
UNMET_PENALTY_FACTOR = 100.0


def prune(problem: Problem, options: SolveOptions) -> Pruned:
    """Candidates worth a variable: useful, not dominated, and (optionally) selected by column generation."""
    demand = {s.id: s for s in problem.services}
    groups: dict[tuple[str, str], list[Candidate]] = defaultdict(list)
    for c in problem.candidates:
        groups[(c.service, c.role)].append(c)
    survivors: list[Candidate] = []
    for (service_id, _role), cands in groups.items():
        s = demand[service_id]
        current = {c.key for c in cands if problem.current_replicas.get(c.key, 0) > 0}
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


def _column_generation(problem: Problem, cands: Sequence[Candidate], k: int) -> Pruned:
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
    front: dict[tuple[str, int], int] = {}
    for s in problem.services:
        for b, r in enumerate(s.bucket_rps):
            if r > 0.0:
                front[(s.id, b)] = len(front)
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
            if cap <= 0.0 or r <= 0.0:
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
            break
        active |= entering
    needs_unmet = unmet_total > FEASIBILITY_TOLERANCE * max(1.0, float(rate_of_row.sum()))
    # Shadow-priced cost of each column: what it really costs once congested pools charge for devices.
    priced = cost - use * y[first_pool_row + pool_of]
    keep = active & (x > FEASIBILITY_TOLERANCE)
    # Pools the LP leaves with room (no shadow price): each row also keeps its best column there, so
    # the integer problem has somewhere to put the replicas rounding adds.
    slack = y[first_pool_row + pool_of] > -REDUCED_COST_TOLERANCE
    chosen = _chosen(cands, cand_of, keep, priced, cover_row, k, problem, pool_of, slack)
    return Pruned(chosen, None if needs_unmet else objective, needs_unmet, True)


def _chosen(
    cands: Sequence[Candidate],
    cand_of: NDArray[np.int64],
    keep: NDArray[np.bool_],
    score: NDArray[np.float64],
    cover_row: NDArray[np.int64],
    k: int,
    problem: Problem,
    pool_of: NDArray[np.int64] | None = None,
    slack: NDArray[np.bool_] | None = None,
) -> tuple[Candidate, ...]:
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
# Step 1: build the matrices.


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


def _divisibility_chain(sizes: Sequence[int], devices_per_node: int) -> bool:
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
    candidates: tuple[Candidate, ...]
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


def build(problem: Problem, options: SolveOptions | None = None) -> Model:
    """The MILP of `problem`: minimise $/h (+ stability penalty) with all traffic served where possible.

    Unmet-demand variables u exist for every (service, bucket) but are fixed to 0 here unless no
    candidate can take that bucket; `solve` frees them, by priority level, only when this is infeasible.
    """
    options = options or SolveOptions()
    validate(problem)
    pruned = prune(problem, options)
    candidates = pruned.candidates
    services = {s.id: s for s in problem.services}
    pools = {p.id: p for p in problem.pools}
    b = _Builder()
    inf = math.inf

    # n[c] in Z>=0: replicas of candidate c; costs price_c $/h each.
    n_index = tuple(b.var(c.price_per_hour, 0.0, inf, True) for c in candidates)

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
            # Activation: any traffic at all needs a replica, sum_b f_cb <= B_c n_c. With a tiny rate the
            # load row's coefficients fall below HiGHS's tolerance; this row's are O(1).
            b.row([*((col, 1.0) for col, _ in terms), (n_index[i], -float(len(terms)))], -inf, 0.0)

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
            for role, idx in roles.items():
                if not idx:
                    continue
                terms = [(n_index[i], 1.0) for i in idx]
                if z_col is None:
                    b.row(terms, m, inf)
                elif role == "aggregated":
                    b.row([*terms, (z_col, m)], m, inf)
                else:
                    b.row([*terms, (z_col, -m)], 0.0, inf)
            if not any(roles.values()):
                raise InfeasibleError(
                    f"service {s.id}: replicas.min is {s.min_replicas} but no configuration fits"
                )
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
        elif _divisibility_chain(sizes, pool.devices_per_node):
            # Sizes dividing each other and the node pack perfectly (first-fit decreasing leaves no hole
            # a smaller size could not use): sum_t t y_t <= nodes * devices_per_node.
            b.row([(n_index[i], float(t)) for t in sizes for i in tps[t]], -inf, float(pool.devices_total))
        else:
            patterns = _node_patterns(sizes, pool.devices_per_node)
            if len(patterns) > MAX_NODE_PATTERNS:
                raise InvalidProblemError(
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

    # Stability: d_c >= current_c - n_c, d_c >= 0, penalised move_penalty * devices_c per removed replica.
    if options.move_penalty_per_device_hour > 0.0:
        for i, c in enumerate(candidates):
            now = problem.current_replicas.get(c.key, 0)
            if now > 0:
                d = b.var(options.move_penalty_per_device_hour * c.devices, 0.0, inf, False)
                b.row([(n_index[i], 1.0), (d, 1.0)], float(now), inf)

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


# ----------------------------------------------------------------------------------------------------
# Step 2: run HiGHS.


@dataclass(frozen=True)
class _Run:
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
_MILP_OPTIMAL = 0
_MILP_LIMIT = 1
_MILP_INFEASIBLE = 2
_MILP_UNBOUNDED = 3


def _run(
    model: Model,
    c: NDArray[np.float64],
    var_hi: NDArray[np.float64],
    extra_rows: Sequence[tuple[NDArray[np.float64], float]],
    options: SolveOptions,
    deadline: float,
) -> _Run | None:
    """Solve with these objective and upper bounds; None when infeasible, SolverError when HiGHS fails."""
    if c.size == 0:
        # Nothing to decide (no traffic, no candidates): the empty plan is optimal.
        return _Run(x=np.zeros(0), objective=0.0, bound=0.0, optimal=True)
    constraints = [LinearConstraint(model.a, model.row_lo, model.row_hi)] if model.a.shape[0] else []
    for row, hi in extra_rows:
        constraints.append(LinearConstraint(row.reshape(1, -1), -math.inf, hi))
    remaining = max(deadline - time.perf_counter(), 1.0)
    with _quiet_stdout():
        res: OptimizeResult = milp(
            c,
            constraints=constraints,
            integrality=model.integrality,
            bounds=Bounds(model.var_lo, var_hi),
            options={"time_limit": remaining, "mip_rel_gap": options.mip_rel_gap, "presolve": True},
        )
    if res.status == _MILP_INFEASIBLE:
        return None
    if res.status == _MILP_UNBOUNDED:
        raise SolverError("solver: the problem is unbounded (a negative price?)")
    if res.x is None:
        raise SolverError(f"solver: HiGHS stopped without a solution (status {res.status}: {res.message})")
    x = np.asarray(res.x, dtype=np.float64)
    objective = float(res.fun)
    bound = getattr(res, "mip_dual_bound", None)
    bound_value = objective if bound is None or not math.isfinite(float(bound)) else float(bound)
    return _Run(x=x, objective=objective, bound=bound_value, optimal=res.status == _MILP_OPTIMAL)


# ----------------------------------------------------------------------------------------------------
# Step 3: decode.


def _worst(values: Iterable[float | None]) -> float | None:
    """Largest known value, or None when none is known."""
    known = [v for v in values if v is not None]
    return max(known) if known else None


def assign(c: Candidate, replicas: int, routed: Sequence[float]) -> Assignment:
    """`replicas` replicas of c carrying `routed` req/s per bucket, with their load and worst p99s."""
    load = sum(r / cap for r, cap in zip(routed, c.max_rps_per_bucket, strict=True) if r > 0.0)
    used = [k for k, r in enumerate(routed) if r > 0.0]

    def worst(per_bucket: Sequence[float | None]) -> float | None:
        return _worst(per_bucket[k] for k in used if k < len(per_bucket)) if per_bucket else None

    return Assignment(
        service=c.service,
        role=c.role,
        pool=c.pool,
        accelerator=c.accelerator,
        precision=c.precision,
        tp=c.tp,
        replicas=replicas,
        price_per_hour=replicas * c.price_per_hour,
        bucket_rps=tuple(routed),
        utilization=min(1.0, load / replicas) if replicas else 0.0,
        ttft_p99_ms=worst(c.ttft_p99_ms_per_bucket),
        itl_p99_ms=worst(c.itl_p99_ms_per_bucket),
        engine=c.engine,
        source=c.source,
    )


def decode(problem: Problem, model: Model, run: _Run, *, stages: int, seconds: float) -> Plan:
    """The typed plan of a solution vector; verifies it never over-allocates a pool or a replica."""
    x = run.x
    services = {s.id: s for s in problem.services}
    pools = {p.id: p for p in problem.pools}
    assignments: dict[str, list[Assignment]] = defaultdict(list)
    devices_used: dict[str, int] = defaultdict(int)
    for i, c in enumerate(model.candidates):
        replicas = round(float(x[model.n_index[i]]))
        rates = services[c.service].bucket_rps
        routed = tuple(
            float(rates[k] * min(1.0, max(0.0, x[model.f_index[(i, k)]]))) if (i, k) in model.f_index else 0.0
            for k in range(len(rates))
        )
        if replicas == 0:
            if any(r > SHARE_NOISE * max(1.0, rate) for r, rate in zip(routed, rates, strict=True)):
                raise SolverError(f"solver: traffic routed to {c.key} with zero replicas")
            continue
        load = sum(r / cap for r, cap in zip(routed, c.max_rps_per_bucket, strict=True) if r > 0.0)
        if load > replicas * (1.0 + FEASIBILITY_TOLERANCE) + FEASIBILITY_TOLERANCE:
            raise SolverError(f"solver: {c.key} loaded to {load:.6f} replicas but has {replicas}")
        assignments[c.service].append(assign(c, replicas, routed))
        devices_used[c.pool] += replicas * c.tp

    pool_usage = []
    for p in problem.pools:
        in_use = devices_used.get(p.id, 0)
        if in_use > p.devices_total:
            raise SolverError(f"solver: pool {p.id} over-allocated ({in_use} of {p.devices_total} devices)")
        pool_usage.append(
            PoolUsage(p.id, p.accelerator, p.devices_total, in_use, in_use * p.price_per_device_hour)
        )

    unmet_by_service: dict[str, float] = defaultdict(float)
    for (sid, k), col in model.u_index.items():
        unmet_by_service[sid] += services[sid].bucket_rps[k] * min(1.0, max(0.0, float(x[col])))
    plans = []
    for s in problem.services:
        mine = assignments.get(s.id, [])
        unmet = unmet_by_service.get(s.id, 0.0)
        reason = None if unmet <= _tolerance(s) else _unmet_reason(s, model, run, pools)
        plans.append(service_plan(s, mine, unmet, reason))
    price_total = sum(p.price_per_hour for p in plans)
    # With pruning, the restricted MILP's bound says nothing about dropped columns; the full LP bound
    # from column generation does (only valid for the all-served, penalty-free objective: stage 1).
    bound = run.bound
    bound_source: BoundSource = "milp"
    if model.full_lp_bound is not None and stages == 1:
        bound, bound_source = model.full_lp_bound, "full-lp"
    elif model.restricted:
        bound_source = "restricted-milp"
    gap = 0.0 if run.objective <= 0.0 else max(0.0, (run.objective - bound) / abs(run.objective))
    return Plan(
        status="optimal" if run.optimal else "feasible",
        services=tuple(plans),
        pools=tuple(pool_usage),
        price_per_hour=price_total,
        objective=run.objective,
        bound=bound,
        gap=gap,
        solve_seconds=seconds,
        stages=stages,
        bound_source=bound_source,
    )


def _tolerance(s: ServiceDemand) -> float:
    """Unmet req/s below this is solver noise or priority-pin slack, not unserved demand."""
    return UNMET_NOISE * max(1.0, s.requests_per_second)


def service_plan(
    s: ServiceDemand, assignments: Iterable[Assignment], unmet_rps: float, reason: str | None
) -> ServicePlan:
    """A ServicePlan from its assignments and unmet demand (shared by the MILP and the baselines)."""
    mine = tuple(sorted(assignments, key=lambda a: (ROLES.index(a.role), a.pool, a.tp, a.precision)))
    demand = s.requests_per_second
    served = max(0.0, demand - unmet_rps)
    price = sum(a.price_per_hour for a in mine)
    roles = {a.role for a in mine}
    mode: Literal["aggregated", "disaggregated", "none"] = (
        "disaggregated" if roles & {"prefill", "decode"} else "aggregated" if roles else "none"
    )
    tol = _tolerance(s)
    status: ServiceStatus = (
        "served" if unmet_rps <= tol else ("unserved" if served <= tol and demand > 0.0 else "partial")
    )
    out_tokens = _served_output_tokens_per_s(s, mine)
    return ServicePlan(
        service=s.id,
        mode=mode,
        status=status,
        assignments=mine,
        price_per_hour=price,
        demand_rps=demand,
        served_rps=served,
        price_per_million_output_tokens=price / (out_tokens * 3600.0) * 1e6 if out_tokens > 0.0 else None,
        ttft_p99_ms=_worst(a.ttft_p99_ms for a in mine),
        itl_p99_ms=_worst(a.itl_p99_ms for a in mine),
        reason=None if status == "served" else (reason or "demand left unserved"),
    )


def _served_output_tokens_per_s(s: ServiceDemand, assignments: Sequence[Assignment]) -> float:
    """Output tokens/s the plan serves for this service (decode or aggregated replicas carry them)."""
    if not s.bucket_output_tokens:
        return 0.0
    total = 0.0
    for a in assignments:
        if a.role == "prefill":
            continue
        total += sum(r * o for r, o in zip(a.bucket_rps, s.bucket_output_tokens, strict=True))
    return total


def _unmet_reason(s: ServiceDemand, model: Model, run: _Run, pools: Mapping[str, Pool]) -> str:
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


def solve(problem: Problem, options: SolveOptions | None = None) -> Plan:
    """Cheapest plan serving all traffic; when that is impossible, serve by priority, then minimise $/h.

    Stage 0 asks for every coverable request to be served. If that is infeasible (capacity or budgets
    short), for each priority level from the highest down we minimise that level's unmet req/s with all
    lower levels free to go unserved, then pin it (sum r u <= U* ); the final stage minimises $/h under
    those pins. Lexicographic stages, rather than big-M weights, keep the priority order exact: a
    higher-priority service never loses capacity to a lower one, whatever the prices.
    """
    options = options or SolveOptions()
    problem = _without_noise(problem)
    if not 0.0 < options.max_utilization <= 1.0:
        raise InvalidProblemError(
            f"options.max_utilization: must be in (0, 1], got {options.max_utilization}"
        )
    if options.max_utilization < 1.0:
        return _derated(problem, options)
    if options.method == "decompose" or (
        options.method == "auto"
        and len(problem.services) >= DECOMPOSE_MIN_SERVICES
        and decomposable(problem, options)
    ):
        return decompose(problem, options)
    if (
        options.method == "auto"
        and options.max_candidates_per_bucket is None
        and len(problem.candidates) > AUTO_COLUMN_GENERATION_CANDIDATES
    ):
        # Too many columns for one exact MILP in interactive time: let the LP pick them.
        options = replace(options, max_candidates_per_bucket=AUTO_CANDIDATES_PER_BUCKET)
    started = time.perf_counter()
    deadline = started + options.time_limit_s
    model = build(problem, options)
    # Column generation already proved full service impossible: go straight to the priority stages.
    run = None if model.lp_needs_unmet else _run(model, model.c, model.var_hi, (), options, deadline)
    k = options.max_candidates_per_bucket
    while run is None and model.restricted and not model.lp_needs_unmet and k is not None:
        # The LP serves everything but the pruned integer problem cannot: widen the columns and retry,
        # finally with all of them, rather than report demand unserved because of pruning.
        k = k * COLUMN_WIDENING if k * COLUMN_WIDENING < len(problem.candidates) else None
        options = replace(options, max_candidates_per_bucket=k)
        model = build(problem, options)
        run = _run(model, model.c, model.var_hi, (), options, deadline)
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
                raise InfeasibleError(_infeasible_reason(problem))
            # Pin this level's unmet rate at its minimum, plus slack above HiGHS's own feasibility
            # tolerance so the pin cannot turn a feasible stage infeasible by rounding.
            slack = PIN_TOLERANCE * max(1.0, level_run.objective, float(unmet.sum()))
            pins.append((unmet, level_run.objective + slack))
        run = _pinned_run(model, model.c, var_hi, pins, options, deadline)
        stages += 1
        if run is None:
            raise InfeasibleError(_infeasible_reason(problem))
    return decode(problem, model, run, stages=stages, seconds=time.perf_counter() - started)


def _without_noise(problem: Problem) -> Problem:
    """Bucket rates below RATE_NOISE_RPS become 0: no replica is bought for a request per century."""
    if not any(0.0 < r <= RATE_NOISE_RPS for s in problem.services for r in s.bucket_rps):
        return problem
    services = tuple(
        replace(s, bucket_rps=tuple(0.0 if r <= RATE_NOISE_RPS else r for r in s.bucket_rps))
        for s in problem.services
    )
    return replace(problem, services=services)


def _pinned_run(
    model: Model,
    c: NDArray[np.float64],
    var_hi: NDArray[np.float64],
    pins: list[tuple[NDArray[np.float64], float]],
    options: SolveOptions,
    deadline: float,
) -> _Run | None:
    """_run under priority pins; on infeasibility or numerical failure, retry once with looser pins.

    A pin is a rounded optimum; HiGHS occasionally finds the next stage a hair infeasible or fails on
    it numerically. Loosening by PIN_RETRY_FACTOR gives up a negligible amount of the level's service.
    """
    try:
        run = _run(model, c, var_hi, pins, options, deadline)
    except SolverError:
        run = None
    if run is not None or not pins:
        return run
    loose = [(row, hi + PIN_TOLERANCE * PIN_RETRY_FACTOR * max(1.0, float(row.sum()))) for row, hi in pins]
    return _run(model, c, var_hi, loose, options, deadline)


def _derated(problem: Problem, options: SolveOptions) -> Plan:
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


def _infeasible_reason(problem: Problem) -> str:
    """One sentence for a problem infeasible even with all traffic unserved: replica floors."""
    floors = [s for s in problem.services if s.min_replicas > 0]
    if floors:
        names = ", ".join(f"{s.id} (min {s.min_replicas})" for s in floors[:5])
        return f"replica minimums cannot all be placed in the pools' capacity or budgets: {names}"
    return "no plan satisfies the constraints"


# ----------------------------------------------------------------------------------------------------
# Large fleets: per-service decomposition.

# Above this many candidates `auto` turns on column generation for the MILP, keeping this many per
# (service, bucket) besides what the LP uses (the examples' 6 services have ~250 candidates).
AUTO_COLUMN_GENERATION_CANDIDATES = 5000
AUTO_CANDIDATES_PER_BUCKET = 3
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


def decomposable(problem: Problem, options: SolveOptions) -> bool:
    """Services are independent but for pool capacity: no replica ceilings, budgets or stability penalty,
    and every pool's TP sizes pack by device count (any serving mode, replica floors allowed)."""
    if options.move_penalty_per_device_hour > 0.0 and problem.current_replicas:
        return False
    if any(s.max_replicas is not None or s.max_dollars_per_hour is not None for s in problem.services):
        return False
    pools = {p.id: p for p in problem.pools}
    sizes: dict[str, set[int]] = defaultdict(set)
    for c in problem.candidates:
        sizes[c.pool].add(c.tp)
    return all(_divisibility_chain(sorted(t), pools[p].devices_per_node) for p, t in sizes.items())


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
            n = max(1, math.ceil(alone - FEASIBILITY_TOLERANCE)) if alone > 0.0 else 0
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
            top = math.ceil(float(w_a.sum()) - FEASIBILITY_TOLERANCE)
            lo = math.ceil(forced - FEASIBILITY_TOLERANCE)
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
                rest > REST_NOISE, np.maximum(1.0, np.ceil(rest - FEASIBILITY_TOLERANCE)), 0.0
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
        raise SolverError("decompose: no candidate combination covers the service")
    return best


@dataclass(frozen=True)
class _RoleShortlist:
    """One role's shortlisted candidates and a valid lower bound on its cost."""

    cands: list[Candidate]
    bound: float


def _role_shortlist(cands: list[Candidate], rates: NDArray[np.float64], floor: int) -> _RoleShortlist:
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
        whole = np.ceil(live[b] / caps[able_b, b] - FEASIBILITY_TOLERANCE) * price[able_b]
        keep.update(able_b[np.argsort(whole, kind="stable")[:DECOMPOSE_FILLERS]].tolist())
    cheapest_price = float(price[able].min())
    return _RoleShortlist([cands[i] for i in sorted(keep)], max(lp, cheapest_price * max(1, floor)))


def _role_choice(
    cands: list[Candidate], s: ServiceDemand, score: NDArray[np.float64], mask: Sequence[bool] | None = None
) -> _ServiceChoice | None:
    """Best single/pair plan for one role's candidates (buckets in `mask` only), topped up to the floor."""
    usable = _coverable(cands, len(s.bucket_rps)) if mask is None else mask
    rates = np.asarray(s.bucket_rps, dtype=np.float64) * np.asarray(usable, dtype=np.float64)
    caps = np.array([c.max_rps_per_bucket for c in cands], dtype=np.float64)
    if rates.any():
        try:
            ch = _best_pair(rates, caps, score)
        except SolverError:
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


def decompose(problem: Problem, options: SolveOptions | None = None) -> Plan:
    """Large fleets: each service on its cheapest single or primary+filler configuration, with device
    prices raised on over-full pools until everything fits; what still does not fit is shed, lowest
    priority first, and reported unserved (never over-allocated).

    The bound is per service: max(its LP value, the price of one replica), summed; it ignores pool
    capacity, so it is a valid lower bound for the real problem (capacity only adds cost).
    """
    options = options or SolveOptions()
    started = time.perf_counter()
    problem = _without_noise(problem)
    validate(problem)
    if not decomposable(problem, options):
        raise InvalidProblemError("decompose: needs services without replica ceilings, budgets or stability")
    pools = {p.id: p for p in problem.pools}
    by_service: dict[str, list[Candidate]] = defaultdict(list)
    for c in problem.candidates:
        by_service[c.service].append(c)
    mean_device_price = (
        float(np.mean([p.price_per_device_hour for p in problem.pools])) if problem.pools else 1.0
    )
    step = DECOMPOSE_PRICE_STEP * mean_device_price

    # Per service: its candidates in a fixed order (aggregated, prefill, decode shortlists) and, per mode,
    # the index ranges of the roles that mode uses.
    shortlist: dict[str, list[Candidate]] = {}
    role_slices: dict[str, dict[str, slice]] = {}
    bound_total = 0.0
    unmet: dict[str, float] = {}
    for s in problem.services:
        rates = np.asarray(s.bucket_rps, dtype=np.float64)
        mine = by_service.get(s.id, [])
        by_role = {r: [c for c in mine if c.role == r] for r in ROLES}
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
        if not any(count >= s_.min_replicas for count in per_role.values()) or any(
            0 < count < s_.min_replicas for count in per_role.values()
        ):
            raise InfeasibleError(_infeasible_reason(problem))

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

    assignments: dict[str, list[Assignment]] = defaultdict(list)
    for sid, ch in choices.items():
        for c, n, routed in zip(shortlist[sid], ch.replicas, ch.routed, strict=True):
            if n <= 0:
                continue
            assignments[sid].append(assign(c, n, routed))
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
        service_plan(
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
    devices: dict[str, int] = defaultdict(int)
    for sp_ in plans:
        for a in sp_.assignments:
            devices[a.pool] += a.devices
    usage = tuple(
        PoolUsage(
            p.id, p.accelerator, p.devices_total, devices[p.id], devices[p.id] * p.price_per_device_hour
        )
        for p in problem.pools
    )
    fleet_price = float(sum(sp_.price_per_hour for sp_ in plans))
    gap = 0.0 if fleet_price <= 0.0 else max(0.0, (fleet_price - bound_total) / fleet_price)
    return Plan(
        status="feasible",
        services=plans,
        pools=usage,
        price_per_hour=fleet_price,
        objective=fleet_price,
        bound=bound_total,
        gap=gap,
        solve_seconds=time.perf_counter() - started,
        stages=1,
        bound_source="per-service",
    )


def _coverable(cands: Sequence[Candidate], n_buckets: int) -> list[bool]:
    """Which buckets some candidate can serve."""
    return [any(c.max_rps_per_bucket[k] > 0.0 for c in cands) for k in range(n_buckets)]
