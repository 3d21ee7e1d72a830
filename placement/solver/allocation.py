"""The solver's output: assignments, per-service and per-pool allocations, the fleet plan; and the one
place a plan is assembled from per-service allocations (the MILP, the decomposition and the baselines all
call `assemble`)."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

from placement.solver import inputs


@dataclass(frozen=True)
class Assignment:
    """Replicas of one configuration in the plan, and the traffic routed to them per bucket."""

    service: str
    role: inputs.Role
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
    # The engine settings the capacity was priced with (what the pods must run).
    engine_config: inputs.EngineConfig = inputs.ENGINE_DEFAULTS

    @property
    def devices(self) -> int:
        """Devices these replicas occupy."""
        return self.replicas * self.tp


ServiceStatus = Literal["served", "partial", "unserved"]


@dataclass(frozen=True)
class ServiceAllocation:
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
class PoolAllocation:
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
BoundSource = Literal[
    "milp", "full-lp", "restricted-milp", "per-service", "dantzig-wolfe", "lagrangian", "none"
]


@dataclass(frozen=True)
class Plan:
    """The typed result of a solve."""

    status: PlanStatus
    services: tuple[ServiceAllocation, ...]
    pools: tuple[PoolAllocation, ...]
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
    # "per-service": decompose's sum of per-service bounds (capacity ignored: valid, weaker);
    # "dantzig-wolfe": the master LP over per-service plans plus the pricing bounds (dantzig_wolfe);
    # "lagrangian": pool capacity relaxed at pool prices (the LP's, then the heuristic master's LP's), each
    # service's integer optimum bounded alone (primal.lagrangian_bound). Over the plans serving every
    # service all it can: a service its own budget, ceiling or the pools' size keeps short counts as served.
    bound_source: BoundSource = "milp"

    def service(self, service_id: str) -> ServiceAllocation:
        """The plan of one service by id."""
        for s in self.services:
            if s.service == service_id:
                return s
        raise KeyError(service_id)


def _worst(values: Iterable[float | None]) -> float | None:
    """Largest known value, or None when none is known."""
    known = [v for v in values if v is not None]
    return max(known) if known else None


def assign(c: inputs.Candidate, replicas: int, routed: Sequence[float]) -> Assignment:
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
        engine_config=c.engine_config,
    )


def unmet_tolerance(s: inputs.ServiceDemand) -> float:
    """Unmet req/s below this is solver noise or priority-pin slack, not unserved demand."""
    return inputs.UNMET_NOISE * max(1.0, s.requests_per_second)


def service_allocation(
    s: inputs.ServiceDemand, assignments: Iterable[Assignment], unmet_rps: float, reason: str | None
) -> ServiceAllocation:
    """A ServiceAllocation from its assignments and unmet demand (the MILP, decompose and the baselines)."""
    mine = tuple(sorted(assignments, key=lambda a: (inputs.ROLES.index(a.role), a.pool, a.tp, a.precision)))
    demand = s.requests_per_second
    served = max(0.0, demand - unmet_rps)
    price = sum(a.price_per_hour for a in mine)
    roles = {a.role for a in mine}
    mode: Literal["aggregated", "disaggregated", "none"] = (
        "disaggregated" if roles & {"prefill", "decode"} else "aggregated" if roles else "none"
    )
    tol = unmet_tolerance(s)
    status: ServiceStatus = (
        "served" if unmet_rps <= tol else ("unserved" if served <= tol and demand > 0.0 else "partial")
    )
    out_tokens = _served_output_tokens_per_s(s, mine)
    return ServiceAllocation(
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


def _served_output_tokens_per_s(s: inputs.ServiceDemand, assignments: Sequence[Assignment]) -> float:
    """Output tokens/s the plan serves for this service (decode or aggregated replicas carry them)."""
    if not s.bucket_output_tokens:
        return 0.0
    total = 0.0
    for a in assignments:
        if a.role == "prefill":
            continue
        total += sum(r * o for r, o in zip(a.bucket_rps, s.bucket_output_tokens, strict=True))
    return total


def assemble(
    pools: Sequence[inputs.Pool],
    services: Sequence[ServiceAllocation],
    *,
    status: PlanStatus,
    bound: float,
    bound_source: BoundSource,
    objective: float | None = None,
    solve_seconds: float = 0.0,
    stages: int = 0,
) -> Plan:
    """The one way a Plan is made: pool use and fleet $/h from the service allocations, the gap from the
    bound; raises SolverError if any pool is over-allocated (no producer may hand out devices it lacks).

    `objective` defaults to the fleet $/h (no stability penalty); a NaN bound (heuristics) gives a NaN gap.
    """
    used: dict[str, int] = defaultdict(int)
    for s in services:
        for a in s.assignments:
            used[a.pool] += a.devices
    usage = []
    for p in pools:
        if used[p.id] > p.devices_total:
            raise inputs.SolverError(
                f"solver: pool {p.id} over-allocated ({used[p.id]} of {p.devices_total} devices)"
            )
        usage.append(
            PoolAllocation(
                p.id, p.accelerator, p.devices_total, used[p.id], used[p.id] * p.price_per_device_hour
            )
        )
    price = float(sum(s.price_per_hour for s in services))
    value = price if objective is None else objective
    gap = math.nan
    if not math.isnan(bound):
        gap = 0.0 if value <= 0.0 else max(0.0, (value - bound) / abs(value))
    return Plan(
        status=status,
        services=tuple(services),
        pools=tuple(usage),
        price_per_hour=price,
        objective=value,
        bound=bound,
        gap=gap,
        solve_seconds=solve_seconds,
        stages=stages,
        bound_source=bound_source,
    )
