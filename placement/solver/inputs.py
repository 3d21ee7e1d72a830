"""The solver's input: pools, candidate configurations, service demand, options; errors; validation.

Nothing here knows physics: every candidate carries its own SLO-bounded capacity per request-size bucket
(from a measured profile or placement.perf, see placement.candidates).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Literal

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
class EngineConfig:
    """The serving-engine settings a candidate was priced with: its pods must run exactly these.

    A Deployment runs one configuration, so every request-size bucket of a candidate is priced with the
    same settings (placement.candidates chooses them). None fields leave the engine's own default (a
    capacity measured in a profile was measured with the defaults; an unknown accelerator has no model).
    """

    # Chunked-prefill token budget per iteration (vLLM --max-num-batched-tokens, SGLang
    # --chunked-prefill-size, TensorRT-LLM max_num_tokens, TGI --max-batch-prefill-tokens).
    prefill_chunk_tokens: int | None = None
    # Concurrent sequence cap (vLLM --max-num-seqs, SGLang --max-running-requests, ...): the sequence slots
    # the performance model's admission queue assumed.
    max_num_seqs: int | None = None
    # Longest prompt + output the engine admits (vLLM --max-model-len, ...).
    max_model_len: int | None = None


# Every setting left to the engine (candidates built by hand, or on accelerators without a model).
ENGINE_DEFAULTS = EngineConfig()


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
    engine_config: EngineConfig = ENGINE_DEFAULTS

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
    # A pool too full to roll the plan out without a pause (the operator starts replacements before it
    # drains what they replace, so for a moment a pool holds the plan's replicas plus the current ones
    # being removed) pays, per device it lacks, this many times its own $/device-hour. 0.0 ignores it.
    surge_shortfall_price_factor: float = 0.0
    # Column generation: keep the candidates the full LP relaxation uses plus the K best per (service,
    # bucket) at its shadow prices; None keeps all (exact). The bound reported is then the full LP's.
    max_candidates_per_bucket: int | None = None
    # "milp": one MILP; "decompose": per-service decomposition with pool pricing (large fleets);
    # "auto": decompose from DECOMPOSE_MIN_SERVICES services when the problem allows it, else MILP.
    # "primal": the primal heuristic (solver.primal) with the full LP bound, for fleets too large for either.
    method: Literal["milp", "decompose", "dantzig-wolfe", "primal", "auto"] = "auto"
    # Load each replica to at most this share of its SLO-bounded capacity: headroom for bursts the
    # sizing rate does not show (1.0 plans right up to the SLO bound).
    max_utilization: float = 1.0
    # Each service runs all its replicas (every role) on one accelerator type: how fleets are run by hand,
    # and the single-type baseline under the same pool capacity (placement.baselines).
    one_accelerator_per_service: bool = False
    # Share of each service's served requests, per request-size bucket and per stage (aggregated or
    # prefill; aggregated or decode), routed to replicas on on-demand pools (Pool.spot False), so a spot
    # reclaim leaves at least this share of its capacity running. Hard where the service has an on-demand
    # configuration for that bucket and stage; 0.0 ignores it.
    on_demand_floor: float = 0.0


@dataclass(frozen=True)
class FleetProblem:
    """Everything one solve needs; build it with placement.candidates or by hand in tests."""

    services: tuple[ServiceDemand, ...]
    pools: tuple[Pool, ...]
    candidates: tuple[Candidate, ...]
    # Replicas running now per configuration (the stability penalty's reference point).
    current_replicas: Mapping[CandidateKey, int] = field(default_factory=dict)
    # Per configuration: (least, most or None) replicas the plan may give it, on top of the service's own
    # bounds (the operator's repair keeps what a capacity loss did not touch at the counts it runs).
    # A configuration with a least above 0 must be a candidate.
    replica_bounds: Mapping[CandidateKey, tuple[int, int | None]] = field(default_factory=dict)


# Step 0: validation and candidate pruning (pure, no solver).


def validate(problem: FleetProblem) -> None:
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
    for key, (least, most) in problem.replica_bounds.items():
        if least < 0:
            raise InvalidProblemError(f"replica_bounds[{key}]: the least must be >= 0, got {least}")
        if most is not None and most < least:
            raise InvalidProblemError(
                f"replica_bounds[{key}]: the most ({most}) is below the least ({least})"
            )
        if least > 0 and key not in seen:
            raise InvalidProblemError(f"replica_bounds[{key}]: at least {least} replicas of no candidate")


def without_noise(problem: FleetProblem) -> FleetProblem:
    """Bucket rates below RATE_NOISE_RPS become 0: no replica is bought for a request per century."""
    if not any(0.0 < r <= RATE_NOISE_RPS for s in problem.services for r in s.bucket_rps):
        return problem
    services = tuple(
        replace(s, bucket_rps=tuple(0.0 if r <= RATE_NOISE_RPS else r for r in s.bucket_rps))
        for s in problem.services
    )
    return replace(problem, services=services)


def infeasible_reason(problem: FleetProblem) -> str:
    """One sentence for a problem infeasible even with all traffic unserved: replica floors."""
    floors = [s for s in problem.services if s.min_replicas > 0]
    if floors:
        names = ", ".join(f"{s.id} (min {s.min_replicas})" for s in floors[:5])
        return f"replica minimums cannot all be placed in the pools' capacity or budgets: {names}"
    return "no plan satisfies the constraints"
