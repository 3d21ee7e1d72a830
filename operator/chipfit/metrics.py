"""Prometheus metrics of the chipfit operator: a dedicated registry and the typed calls that fill it.

The operator calls `OperatorMetrics.record_plan`, `record_ready_replicas`, `record_pool`, `observe_solve`,
`observe_reconcile` and `record_placement_change`; `start_metrics_server` serves the registry on
/metrics. Names follow the Prometheus conventions (https://prometheus.io/docs/practices/naming/): base
units in names (seconds, dollars, devices), `_total` only on counters, and labels bounded by the fleet's
own objects (namespace, service, role, accelerator, pool), never per request.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import threading
import time
import wsgiref.simple_server
from collections.abc import Sequence
from typing import Final, Literal, get_args

import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

import chipfit
from placement.solver import allocation

METRIC_PREFIX: Final = "chipfit"

# The API speaks milliseconds (ttftP99Ms); Prometheus' base unit of time is the second.
MS_PER_SECOND: Final = 1000.0

# Solver wall time buckets (seconds). The fleet MILP solves in milliseconds for a handful of services and
# up to tens of seconds at the solver's time limit for large fleets; buckets span 1 ms .. 60 s.
SOLVER_RUNTIME_BUCKETS_SECONDS: Final = (
    0.001,
    0.005,
    0.01,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
)

# Reconcile latency buckets (seconds): one apiserver round trip is ~5-50 ms, a reconcile that re-plans and
# applies several objects takes up to seconds; kopf's handler timeouts are minutes.
RECONCILE_DURATION_BUCKETS_SECONDS: Final = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)

# Bounded label values. Roles are the API's; the rest are the operator's own vocabulary.
Role = Literal["aggregated", "prefill", "decode"]
# optimal: proven optimum; feasible: stopped at a limit with a plan (gap > 0); infeasible: no plan meets
# every SLO within capacity; error: the solver failed (scipy.optimize.milp status 3/4 or an exception).
SolverStatus = Literal["optimal", "feasible", "infeasible", "error"]
# What a reconcile was about: one object kind, or the debounced whole-fleet re-plan.
ReconcileKind = Literal["inferenceservice", "acceleratorpool", "performanceprofile", "node", "fleet"]
# kopf's error classes: PermanentError (bad input, not retried), TemporaryError (retried), anything else.
ReconcileError = Literal["permanent", "temporary", "unexpected"]

ROLES: Final[tuple[str, ...]] = get_args(Role)
SOLVER_STATUSES: Final[tuple[str, ...]] = get_args(SolverStatus)
# What the gap is measured against (allocation.BoundSource): a gap to a weak bound says less.
SOLVER_BOUNDS: Final[tuple[str, ...]] = get_args(allocation.BoundSource)
RECONCILE_KINDS: Final[tuple[str, ...]] = get_args(ReconcileKind)
RECONCILE_ERRORS: Final[tuple[str, ...]] = get_args(ReconcileError)

SERVICE_LABELS: Final = ("namespace", "service")
PLACEMENT_LABELS: Final = ("namespace", "service", "role", "accelerator", "pool")
POOL_LABELS: Final = ("pool", "accelerator")


@dataclasses.dataclass(frozen=True)
class PlannedRole:
    """One (role, pool) line of a service's plan: how many replicas on which chip, at what $/h."""

    role: Role
    accelerator: str
    pool: str
    desired_replicas: int
    cost_dollars_per_hour: float
    # Output tokens/s of the requests this placement handles under the plan; a prefill placement counts
    # the output tokens of the requests it prefills, so $/1M tokens per chip can be computed.
    served_output_tokens_per_second: float


@dataclasses.dataclass(frozen=True)
class ServicePlan:
    """What the solver predicts for one InferenceService, next to the SLO it was given."""

    namespace: str
    service: str
    predicted_cost_dollars_per_hour: float
    predicted_cost_dollars_per_million_output_tokens: float
    predicted_ttft_p99_ms: float
    predicted_itl_p99_ms: float
    slo_ttft_p99_ms: float
    slo_itl_p99_ms: float
    # Declared workload (spec.workload.requestsPerSecond, and that times the mean output tokens).
    workload_requests_per_second: float
    workload_output_tokens_per_second: float
    # Requests/s the planned replicas sustain within the SLO (headroom = this / workload).
    predicted_capacity_requests_per_second: float
    placements: tuple[PlannedRole, ...]


@dataclasses.dataclass(frozen=True)
class PoolUsage:
    """One AcceleratorPool: devices its ready nodes offer, devices the plan allocates, and its price."""

    pool: str
    accelerator: str
    devices_total: int
    devices_allocated: int
    price_dollars_per_device_hour: float


def _check_choice(field: str, value: str, allowed: Sequence[str]) -> None:
    """Reject a label value outside its bounded set (an unbounded label is a cardinality leak)."""
    if value not in allowed:
        raise ValueError(f"{field}: {value!r} is not one of {', '.join(allowed)}")


def _check_non_negative(field: str, value: float) -> None:
    """Reject negative quantities; they are always a caller bug."""
    if value < 0:
        raise ValueError(f"{field}: must be >= 0, got {value}")


def _check_name(field: str, value: str) -> None:
    """Reject empty label values: they would merge distinct objects into one series."""
    if not value:
        raise ValueError(f"{field}: must be a non-empty name")


AUTOSCALE_DECISIONS = ("ScaledUp", "ScaledDown", "ScaledMove")


class OperatorMetrics:
    """Every metric the operator exports, registered in one dedicated CollectorRegistry."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        """Create the metrics in `registry` (a fresh one by default, never the global default)."""
        self.registry = registry if registry is not None else CollectorRegistry()
        # kopf runs sync handlers in a thread pool; the series bookkeeping below must not race.
        self._lock = threading.Lock()
        self._service_series: dict[tuple[str, str], set[tuple[str, str, str, str, str]]] = {}
        self._known_pools: dict[str, str] = {}
        r = self.registry
        p = METRIC_PREFIX

        self.build_info = Gauge(
            f"{p}_build_info", "chipfit version running (value is always 1).", ["version"], registry=r
        )
        self.build_info.labels(version=chipfit.__version__).set(1)

        # Per service: predictions and the SLO they are held against.
        self.service_cost = Gauge(
            f"{p}_service_predicted_cost_dollars_per_hour",
            "Predicted cost of the service's planned replicas, dollars per hour.",
            SERVICE_LABELS,
            registry=r,
        )
        self.service_cost_per_tokens = Gauge(
            f"{p}_service_predicted_cost_dollars_per_million_output_tokens",
            "Predicted cost per million output tokens at the declared workload, dollars.",
            SERVICE_LABELS,
            registry=r,
        )
        self.service_ttft = Gauge(
            f"{p}_service_predicted_ttft_p99_seconds",
            "Predicted p99 time to first token at the declared workload, seconds.",
            SERVICE_LABELS,
            registry=r,
        )
        self.service_itl = Gauge(
            f"{p}_service_predicted_itl_p99_seconds",
            "Predicted p99 inter-token latency at the declared workload, seconds.",
            SERVICE_LABELS,
            registry=r,
        )
        self.service_slo_ttft = Gauge(
            f"{p}_service_slo_ttft_p99_seconds",
            "The service's p99 time-to-first-token SLO (spec.slo.ttftP99Ms), seconds.",
            SERVICE_LABELS,
            registry=r,
        )
        self.service_slo_itl = Gauge(
            f"{p}_service_slo_itl_p99_seconds",
            "The service's p99 inter-token latency SLO (spec.slo.itlP99Ms), seconds.",
            SERVICE_LABELS,
            registry=r,
        )
        self.service_workload_rps = Gauge(
            f"{p}_service_workload_requests_per_second",
            "Declared request rate of the service (spec.workload.requestsPerSecond).",
            SERVICE_LABELS,
            registry=r,
        )
        self.service_workload_tokens = Gauge(
            f"{p}_service_workload_output_tokens_per_second",
            "Declared output token rate of the service (request rate x mean output tokens).",
            SERVICE_LABELS,
            registry=r,
        )
        self.service_capacity_rps = Gauge(
            f"{p}_service_predicted_capacity_requests_per_second",
            "Requests per second the planned replicas sustain within the SLO.",
            SERVICE_LABELS,
            registry=r,
        )
        # Per service, role and chip.
        self.desired_replicas = Gauge(
            f"{p}_service_desired_replicas",
            "Replicas the plan puts on this role, accelerator and pool.",
            PLACEMENT_LABELS,
            registry=r,
        )
        self.ready_replicas = Gauge(
            f"{p}_service_ready_replicas",
            "Ready replicas of this role on this accelerator and pool (from the Deployment status).",
            PLACEMENT_LABELS,
            registry=r,
        )
        self.placement_cost = Gauge(
            f"{p}_service_placement_cost_dollars_per_hour",
            "Predicted cost of this role's replicas on this accelerator and pool, dollars per hour.",
            PLACEMENT_LABELS,
            registry=r,
        )
        self.placement_tokens = Gauge(
            f"{p}_service_placement_output_tokens_per_second",
            "Output tokens per second of the requests this role, accelerator and pool handle under the plan.",
            PLACEMENT_LABELS,
            registry=r,
        )
        self.placement_changes = Counter(
            f"{p}_placement_changes",
            "Times a service role's planned accelerator, pool or replica count changed.",
            ("namespace", "service", "role"),
            registry=r,
        )
        self.autoscale_decisions = Counter(
            f"{p}_autoscale_decisions",
            "Autoscaling decisions that changed a service's replicas, by direction (docs/autoscaling.md).",
            ("namespace", "service", "decision"),
            registry=r,
        )
        self.autoscale_attainment = Gauge(
            f"{p}_autoscale_slo_attainment_ratio",
            "Share of the service's requests over the autoscaler's rate window whose TTFT met the SLO, from "
            "the engines' histograms (docs/autoscaling.md).",
            ("namespace", "service"),
            registry=r,
        )

        # Per pool.
        self.pool_devices = Gauge(
            f"{p}_pool_capacity_devices",
            "Devices the pool's ready, schedulable nodes offer.",
            POOL_LABELS,
            registry=r,
        )
        self.pool_allocated = Gauge(
            f"{p}_pool_allocated_devices", "Devices of the pool the plan allocates.", POOL_LABELS, registry=r
        )
        self.pool_free = Gauge(
            f"{p}_pool_free_devices",
            "Devices of the pool not allocated by the plan (0 when over-allocated).",
            POOL_LABELS,
            registry=r,
        )
        self.pool_price = Gauge(
            f"{p}_pool_price_dollars_per_device_hour",
            "Price of one device of the pool, dollars per hour.",
            POOL_LABELS,
            registry=r,
        )
        self.pool_cost = Gauge(
            f"{p}_pool_cost_dollars_per_hour",
            "Cost of all the pool's devices (capacity x price), dollars per hour.",
            POOL_LABELS,
            registry=r,
        )

        # Solver.
        self.solver_runtime = Histogram(
            f"{p}_solver_runtime_seconds",
            "Wall time of one fleet placement solve, seconds.",
            registry=r,
            buckets=SOLVER_RUNTIME_BUCKETS_SECONDS,
        )
        self.solver_runs = Counter(
            f"{p}_solver_runs", "Fleet placement solves by outcome.", ("status",), registry=r
        )
        self.solver_status = Gauge(
            f"{p}_solver_last_status",
            "1 for the outcome of the most recent solve, 0 for the others.",
            ("status",),
            registry=r,
        )
        self.solver_gap = Gauge(
            f"{p}_solver_gap_ratio",
            "Relative MIP gap of the most recent plan (0 = proven optimal).",
            registry=r,
        )
        self.solver_bound = Gauge(
            f"{p}_solver_gap_bound_info",
            "1 for the bound the most recent plan's gap is measured against, 0 for the others.",
            ("bound",),
            registry=r,
        )
        self.solver_objective = Gauge(
            f"{p}_solver_objective_dollars_per_hour",
            "Fleet cost of the most recent plan, dollars per hour.",
            registry=r,
        )
        self.solver_last_run = Gauge(
            f"{p}_solver_last_run_timestamp_seconds",
            "Unix time of the most recent solve, seconds.",
            registry=r,
        )
        for status in SOLVER_STATUSES:
            # Zero-initialised so rate() and absent() behave before the first solve of each outcome.
            self.solver_runs.labels(status=status)
            self.solver_status.labels(status=status).set(0)
        for bound in SOLVER_BOUNDS:
            self.solver_bound.labels(bound=bound).set(0)

        # Reconciles.
        self.reconciles = Counter(
            f"{p}_reconciles", "Reconciles handled, by kind of object.", ("kind",), registry=r
        )
        self.reconcile_errors = Counter(
            f"{p}_reconcile_errors",
            "Reconciles that ended in an error, by kind and error class.",
            ("kind", "error"),
            registry=r,
        )
        self.reconcile_duration = Histogram(
            f"{p}_reconcile_duration_seconds",
            "Wall time of one reconcile, seconds.",
            ("kind",),
            registry=r,
            buckets=RECONCILE_DURATION_BUCKETS_SECONDS,
        )
        for kind in RECONCILE_KINDS:
            self.reconciles.labels(kind=kind)
            for error in RECONCILE_ERRORS:
                self.reconcile_errors.labels(kind=kind, error=error)

    def record_plan(self, plan: ServicePlan) -> None:
        """Set one service's predictions, SLO and desired replicas; drop its series no longer planned."""
        _check_name("namespace", plan.namespace)
        _check_name("service", plan.service)
        for field in (
            "predicted_cost_dollars_per_hour",
            "predicted_cost_dollars_per_million_output_tokens",
            "predicted_ttft_p99_ms",
            "predicted_itl_p99_ms",
            "slo_ttft_p99_ms",
            "slo_itl_p99_ms",
            "workload_requests_per_second",
            "workload_output_tokens_per_second",
            "predicted_capacity_requests_per_second",
        ):
            _check_non_negative(field, getattr(plan, field))
        new_series: set[tuple[str, str, str, str, str]] = set()
        for i, placement in enumerate(plan.placements):
            _check_choice(f"placements[{i}].role", placement.role, ROLES)
            _check_name(f"placements[{i}].accelerator", placement.accelerator)
            _check_name(f"placements[{i}].pool", placement.pool)
            _check_non_negative(f"placements[{i}].desired_replicas", placement.desired_replicas)
            _check_non_negative(f"placements[{i}].cost_dollars_per_hour", placement.cost_dollars_per_hour)
            _check_non_negative(
                f"placements[{i}].served_output_tokens_per_second", placement.served_output_tokens_per_second
            )
            key = (plan.namespace, plan.service, placement.role, placement.accelerator, placement.pool)
            if key in new_series:
                raise ValueError(f"placements[{i}]: duplicate role/accelerator/pool {key[2:]}")
            new_series.add(key)

        service_key = (plan.namespace, plan.service)
        with self._lock:
            self.service_cost.labels(*service_key).set(plan.predicted_cost_dollars_per_hour)
            self.service_cost_per_tokens.labels(*service_key).set(
                plan.predicted_cost_dollars_per_million_output_tokens
            )
            self.service_ttft.labels(*service_key).set(plan.predicted_ttft_p99_ms / MS_PER_SECOND)
            self.service_itl.labels(*service_key).set(plan.predicted_itl_p99_ms / MS_PER_SECOND)
            self.service_slo_ttft.labels(*service_key).set(plan.slo_ttft_p99_ms / MS_PER_SECOND)
            self.service_slo_itl.labels(*service_key).set(plan.slo_itl_p99_ms / MS_PER_SECOND)
            self.service_workload_rps.labels(*service_key).set(plan.workload_requests_per_second)
            self.service_workload_tokens.labels(*service_key).set(plan.workload_output_tokens_per_second)
            self.service_capacity_rps.labels(*service_key).set(plan.predicted_capacity_requests_per_second)
            old_series = self._service_series.get(service_key, set())
            for stale in old_series - new_series:
                self._remove_placement_series(stale)
            for placement in plan.placements:
                key = (plan.namespace, plan.service, placement.role, placement.accelerator, placement.pool)
                self.desired_replicas.labels(*key).set(placement.desired_replicas)
                self.placement_cost.labels(*key).set(placement.cost_dollars_per_hour)
                self.placement_tokens.labels(*key).set(placement.served_output_tokens_per_second)
                if key not in old_series:
                    # A new placement has no ready replicas until its Deployment reports them.
                    self.ready_replicas.labels(*key).set(0)
            self._service_series[service_key] = new_series

    def record_ready_replicas(
        self, namespace: str, service: str, role: Role, accelerator: str, pool: str, ready_replicas: int
    ) -> bool:
        """Set the ready replicas of one planned placement; False (nothing set) when it is not planned."""
        _check_choice("role", role, ROLES)
        _check_non_negative("ready_replicas", ready_replicas)
        key = (namespace, service, role, accelerator, pool)
        with self._lock:
            if key not in self._service_series.get((namespace, service), set()):
                # A Deployment still draining after a re-plan must not resurrect the series of an old plan.
                return False
            self.ready_replicas.labels(*key).set(ready_replicas)
            return True

    def forget_service(self, namespace: str, service: str) -> None:
        """Remove every series of a deleted service (counters too: the object is gone)."""
        service_key = (namespace, service)
        with self._lock:
            for stale in self._service_series.pop(service_key, set()):
                self._remove_placement_series(stale)
            for gauge in (
                self.service_cost,
                self.service_cost_per_tokens,
                self.service_ttft,
                self.service_itl,
                self.service_slo_ttft,
                self.service_slo_itl,
                self.service_workload_rps,
                self.service_workload_tokens,
                self.service_capacity_rps,
                self.autoscale_attainment,
            ):
                _remove_if_present(gauge, service_key)
            for decision in AUTOSCALE_DECISIONS:
                _remove_if_present(self.autoscale_decisions, (namespace, service, decision))
            for role in ROLES:
                _remove_if_present(self.placement_changes, (namespace, service, role))

    def record_autoscale_decision(self, namespace: str, service: str, decision: str) -> None:
        """Count one autoscaling decision (ScaledUp, ScaledDown, ScaledMove) of a service."""
        _check_name("namespace", namespace)
        _check_name("service", service)
        _check_choice("decision", decision, AUTOSCALE_DECISIONS)
        self.autoscale_decisions.labels(namespace, service, decision).inc()

    def record_autoscale_attainment(self, namespace: str, service: str, attainment: float | None) -> None:
        """The SLO attainment the autoscaler observed for a service (None: not observed, series removed)."""
        _check_name("namespace", namespace)
        _check_name("service", service)
        if attainment is None or not math.isfinite(attainment):
            _remove_if_present(self.autoscale_attainment, (namespace, service))
            return
        if not 0.0 <= attainment <= 1.0:
            raise ValueError(f"attainment: must be within [0, 1], got {attainment}")
        self.autoscale_attainment.labels(namespace, service).set(attainment)

    def record_placement_change(self, namespace: str, service: str, role: Role) -> None:
        """Count one change of a service role's planned accelerator, pool or replica count."""
        _check_name("namespace", namespace)
        _check_name("service", service)
        _check_choice("role", role, ROLES)
        self.placement_changes.labels(namespace, service, role).inc()

    def record_pool(self, usage: PoolUsage) -> None:
        """Set one pool's capacity, allocation, free devices, price and cost."""
        _check_name("pool", usage.pool)
        _check_name("accelerator", usage.accelerator)
        _check_non_negative("devices_total", usage.devices_total)
        _check_non_negative("devices_allocated", usage.devices_allocated)
        _check_non_negative("price_dollars_per_device_hour", usage.price_dollars_per_device_hour)
        key = (usage.pool, usage.accelerator)
        with self._lock:
            previous_accelerator = self._known_pools.get(usage.pool)
            if previous_accelerator is not None and previous_accelerator != usage.accelerator:
                # The pool's chip changed: its old series would otherwise linger under the old label.
                self._remove_pool_series((usage.pool, previous_accelerator))
            self._known_pools[usage.pool] = usage.accelerator
            self.pool_devices.labels(*key).set(usage.devices_total)
            self.pool_allocated.labels(*key).set(usage.devices_allocated)
            self.pool_free.labels(*key).set(max(usage.devices_total - usage.devices_allocated, 0))
            self.pool_price.labels(*key).set(usage.price_dollars_per_device_hour)
            self.pool_cost.labels(*key).set(usage.devices_total * usage.price_dollars_per_device_hour)

    def forget_pool(self, pool: str) -> None:
        """Remove every series of a deleted pool."""
        with self._lock:
            accelerator = self._known_pools.pop(pool, None)
            if accelerator is not None:
                self._remove_pool_series((pool, accelerator))

    def observe_solve(
        self,
        runtime_seconds: float,
        status: SolverStatus,
        gap_ratio: float | None = None,
        objective_dollars_per_hour: float | None = None,
        *,
        bound_source: allocation.BoundSource | None = None,
        timestamp_seconds: float | None = None,
    ) -> None:
        """Record one fleet solve: its wall time, outcome, MIP gap and objective (when it found a plan)."""
        _check_non_negative("runtime_seconds", runtime_seconds)
        _check_choice("status", status, SOLVER_STATUSES)
        if gap_ratio is not None:
            _check_non_negative("gap_ratio", gap_ratio)
        if objective_dollars_per_hour is not None:
            _check_non_negative("objective_dollars_per_hour", objective_dollars_per_hour)
        with self._lock:
            self.solver_runtime.observe(runtime_seconds)
            self.solver_runs.labels(status=status).inc()
            for other in SOLVER_STATUSES:
                self.solver_status.labels(status=other).set(1 if other == status else 0)
            if gap_ratio is not None:
                self.solver_gap.set(gap_ratio)
            if bound_source is not None:
                for other in SOLVER_BOUNDS:
                    self.solver_bound.labels(bound=other).set(1 if other == bound_source else 0)
            if objective_dollars_per_hour is not None:
                self.solver_objective.set(objective_dollars_per_hour)
            self.solver_last_run.set(time.time() if timestamp_seconds is None else timestamp_seconds)

    def observe_reconcile(
        self, kind: ReconcileKind, duration_seconds: float, error: ReconcileError | None = None
    ) -> None:
        """Record one reconcile of `kind`: its wall time and, when it failed, the error class."""
        _check_choice("kind", kind, RECONCILE_KINDS)
        _check_non_negative("duration_seconds", duration_seconds)
        if error is not None:
            _check_choice("error", error, RECONCILE_ERRORS)
        self.reconciles.labels(kind=kind).inc()
        self.reconcile_duration.labels(kind=kind).observe(duration_seconds)
        if error is not None:
            self.reconcile_errors.labels(kind=kind, error=error).inc()

    def forget_plan(self) -> None:
        """Drop every service and pool series, e.g. when this replica pauses in favour of a peering leader."""
        with self._lock:
            services = list(self._service_series)
            pools = list(self._known_pools)
        for namespace, service in services:
            self.forget_service(namespace, service)
        for pool in pools:
            self.forget_pool(pool)

    def _remove_placement_series(self, key: tuple[str, ...]) -> None:
        """Drop one (service, role, accelerator, pool) from every per-placement gauge."""
        for gauge in (self.desired_replicas, self.ready_replicas, self.placement_cost, self.placement_tokens):
            _remove_if_present(gauge, key)

    def _remove_pool_series(self, key: tuple[str, ...]) -> None:
        """Drop one (pool, accelerator) from every pool gauge."""
        for gauge in (
            self.pool_devices,
            self.pool_allocated,
            self.pool_free,
            self.pool_price,
            self.pool_cost,
        ):
            _remove_if_present(gauge, key)


def _remove_if_present(metric: Gauge | Counter, labels: tuple[str, ...]) -> None:
    """Remove a labelled child; a child never created is fine (removal is idempotent)."""
    with contextlib.suppress(KeyError):
        metric.remove(*labels)


def exported_series_names(registry: CollectorRegistry) -> frozenset[str]:
    """Every sample name `registry` can expose (`_total` on counters, `_bucket/_sum/_count` on histograms)."""
    suffixes_by_type: dict[str, tuple[str, ...]] = {
        "counter": ("_total",),
        "histogram": ("_bucket", "_sum", "_count"),
        "summary": ("", "_sum", "_count"),
        "gauge": ("",),
        "info": ("_info",),
        "stateset": ("",),
        "enum": ("",),
        "unknown": ("",),
    }
    names: set[str] = set()
    for family in registry.collect():
        for suffix in suffixes_by_type[family.type]:
            names.add(family.name + suffix)
    return frozenset(names)


@dataclasses.dataclass
class MetricsServer:
    """A running /metrics HTTP server; `port` is the bound port (useful when 0 was asked for)."""

    port: int
    _server: wsgiref.simple_server.WSGIServer
    _thread: threading.Thread

    def shutdown(self) -> None:
        """Stop serving and close the listening socket."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()


def start_metrics_server(port: int, registry: CollectorRegistry, addr: str = "0.0.0.0") -> MetricsServer:
    """Serve `registry` on http://addr:port/metrics from a daemon thread; port 0 picks a free port."""
    if not 0 <= port <= 65535:
        raise ValueError(f"port: must be 0..65535, got {port}")
    server, thread = prometheus_client.start_http_server(port, addr=addr, registry=registry)
    return MetricsServer(port=int(server.server_port), _server=server, _thread=thread)
