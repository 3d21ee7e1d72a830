"""kopf handlers and the debounced fleet re-plan they trigger.

Handlers stay short: they parse, reject invalid specs (PermanentError, with the field in a condition and
an Event), and ask the `Fleet` for work. The Fleet runs one worker task: a re-plan reads the whole fleet
(services, pools, profiles, nodes), solves one placement, writes each service's part to its status and
reconciles its objects; a service reconcile (on Deployment changes) re-renders from the last plan and
advances its rollout. One worker means no two reconciles race; kopf's peering pauses the handlers, so a
standby replica never triggers work. All state lives in the cluster: after a restart the resume handlers
trigger a re-plan that starts from the placements recorded in the services' status.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final

import kopf
import pydantic

from chipfit import autoscaler, kube, metrics, planning, reconcile, render, rules, validation
from chipfit.api import v1alpha1
from chipfit.profiling import job, operate
from placement import catalog, trust
from placement.solver import allocation, inputs

GROUP: Final = v1alpha1.GROUP
VERSION: Final = v1alpha1.VERSION
# Coalesce bursts (`kubectl apply -f examples/`, a node pool scaling) into one solve.
REPLAN_DEBOUNCE_S: Final = 2.0
# The label a ProfilingRun's Job and pod carry (its name as a label value).
PROFILING_RUN_LABEL: Final = job.LABEL_RUN
# Back-off after a failed piece of fleet work (API error, failed solve, anything unexpected): the first
# retry after 5 s, doubling up to 5 min, so a broken dependency is retried for ever but never hammered.
RETRY_DELAY_S: Final = 5.0
RETRY_MAX_DELAY_S: Final = 300.0
# Re-plan at least this often even when nothing announced a change: a watch event missed, a solve cut short
# by its time limit. The worker's own wait times out for it: a kopf timer would be per object, and kopf
# puts a finalizer on every object with a timer (kopf issue #1074), so deleting a pool while the operator
# is down would hang.
RESYNC_INTERVAL_S: Final = 600.0
# A moved replica restarts its engine: minutes of model loading on a device (~5 min at ~$1-6/device-h
# is ~$0.1-0.5), so a move must save at least ~$0.25 per device-hour to be worth it.
MOVE_PENALTY_PER_DEVICE_HOUR: Final = 0.25
# The worker starts a replacement before it drains what it replaces, so a pool must briefly hold both; a
# plan whose rollout does not fit pays, per device the pool lacks, twice that device's $/h: the solver buys
# room elsewhere when it costs less than that. It binds only during a change (once the plan runs, the
# current and the planned replicas agree), so it is no lasting premium.
SURGE_SHORTFALL_PRICE_FACTOR: Final = 2.0
# The operator re-plans on every fleet change; a solve that takes longer than this returns its incumbent.
SOLVER_TIME_LIMIT_S: Final = 30.0
HTTP_FORBIDDEN: Final = 403
# Predicted latencies are shown to 0.1 ms: finer digits are solver noise and would churn the status.
PREDICTION_DECIMALS: Final = 1
# The kopf indexes a re-plan reads, in FleetView's order (the indexing functions below carry these names).
INDEX_NAMES: Final = (
    "inferenceservice_index",
    "acceleratorpool_index",
    "performanceprofile_index",
    "node_index",
)
MANAGED_BY_LABEL: Final = {"app.kubernetes.io/managed-by": render.MANAGED_BY}
# The kopf indexes of the Deployments and Services chipfit manages (by namespace and service label): a
# reconcile reads its objects there instead of two LISTs per service.
OWNED_INDEXES: Final = ("owned_deployment_index", "owned_service_index")

logger = logging.getLogger("chipfit.operator")


def _plain(value: Any) -> Any:
    """kopf bodies are mapping views; the typed models want plain dicts and lists."""
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_service(body: Mapping[str, Any]) -> v1alpha1.InferenceService:
    """A typed InferenceService; status fields the model does not know are dropped, not fatal."""
    raw = _plain(body)
    raw.setdefault("apiVersion", v1alpha1.API_VERSION)
    raw.setdefault("kind", "InferenceService")
    try:
        return v1alpha1.InferenceService.model_validate(raw)
    except pydantic.ValidationError:
        raw.pop("status", None)
        return v1alpha1.InferenceService.model_validate(raw)


def first_problem(
    service: v1alpha1.InferenceService,
    pool_names: Sequence[str] | None,
    chips: Mapping[str, catalog.Accelerator] | None = None,
) -> validation.FieldError | None:
    """The first semantic problem of a spec (the API server already enforced the schema)."""
    problems = validation.service_problems(service, pool_names, chips)
    return problems[0] if problems else None


def usable_pools(pools: Sequence[v1alpha1.AcceleratorPool]) -> list[v1alpha1.AcceleratorPool]:
    """Pools whose chip resolves, and that agree with the others on it; the rest are logged and left out.

    The schema already enforced each pool's fields; what is left (a slice profile its acceleratorSpec
    does not list, two pools declaring one id differently) must not stop the fleet's re-plan.
    """
    kept: list[v1alpha1.AcceleratorPool] = []
    for pool in sorted(pools, key=lambda p: p.metadata.name):
        try:
            planning.pool_accelerator(pool)
            planning.fleet_accelerators([*kept, pool])
        except planning.PlanningError as error:
            logger.error("pool left out of the plan: %s", error)
            continue
        kept.append(pool)
    return kept


# --- plan -> per-service outcomes -------------------------------------------------------------------------


def outcome_of(
    sp: allocation.ServiceAllocation, confidence: Mapping[inputs.CandidateKey, trust.Trust] | None = None
) -> reconcile.ServiceOutcome:
    """A service's part of the solved plan as the reconciler sees it (`confidence`: per candidate)."""
    replicas: dict[tuple[str, str, str, str, int], int] = {}
    engine: dict[tuple[str, str, str, str, int], v1alpha1.PricedEngineConfig] = {}
    capacity_by_role: dict[str, float] = {}
    cost: dict[tuple[str, str, str], float] = {}
    routed: dict[tuple[str, str, str], float] = {}
    for a in sp.assignments:
        if a.replicas <= 0:
            continue
        series = (a.role, a.accelerator, a.pool)
        cost[series] = cost.get(series, 0.0) + a.price_per_hour
        routed[series] = routed.get(series, 0.0) + sum(a.bucket_rps)
        key = (a.role, a.pool, a.accelerator, a.precision, a.tp)
        replicas[key] = replicas.get(key, 0) + a.replicas
        engine[key] = v1alpha1.PricedEngineConfig(
            prefill_chunk_tokens=a.engine_config.prefill_chunk_tokens,
            max_num_seqs=a.engine_config.max_num_seqs,
            max_model_len=a.engine_config.max_model_len,
        )
        if a.utilization > 0:
            capacity_by_role[a.role] = capacity_by_role.get(a.role, 0.0) + sum(a.bucket_rps) / a.utilization
    placements = tuple(
        v1alpha1.RolePlacement(
            role=role,  # type: ignore[arg-type]
            pool=pool,
            accelerator=accelerator,
            precision=precision,  # type: ignore[arg-type]
            tensor_parallel=tp,
            replicas=count,
            engine_config=engine[(role, pool, accelerator, precision, tp)],
        )
        for (role, pool, accelerator, precision, tp), count in sorted(replicas.items())
    )
    placed = [
        (confidence or {}).get(inputs.CandidateKey(sp.service, a.role, a.pool, a.precision, a.tp))
        for a in sp.assignments
        if a.replicas > 0
    ]
    least = max((t for t in placed if t is not None), key=lambda t: t.typical_error, default=None)
    prediction = v1alpha1.Prediction(
        ttft_p99_ms=_round(sp.ttft_p99_ms, PREDICTION_DECIMALS),
        itl_p99_ms=_round(sp.itl_p99_ms, PREDICTION_DECIMALS),
        # A split service is as fast as its slower side.
        max_requests_per_second=_round(min(capacity_by_role.values()), 3) if capacity_by_role else None,
        dollars_per_hour=round(sp.price_per_hour, 4),
        dollars_per_million_output_tokens=(
            round(sp.price_per_million_output_tokens, 4)
            if sp.price_per_million_output_tokens is not None
            else None
        ),
        trust=least.label[: v1alpha1.MAX_TEXT_LENGTH] if least is not None else None,
        typical_error_percent=round(100 * least.typical_error, 1) if least is not None else None,
    )
    return reconcile.ServiceOutcome(
        placements=placements,
        prediction=prediction,
        served=sp.status,
        reason=sp.reason,
        cost_dollars_per_hour=cost,
        routed_requests_per_second=routed,
    )


def _round(value: float | None, decimals: int) -> float | None:
    return None if value is None else round(value, decimals)


def solve_options() -> inputs.SolveOptions:
    """How the operator solves: bounded time, and a move must pay for the engine restart it causes."""
    return inputs.SolveOptions(
        time_limit_s=SOLVER_TIME_LIMIT_S,
        move_penalty_per_device_hour=MOVE_PENALTY_PER_DEVICE_HOUR,
        surge_shortfall_price_factor=SURGE_SHORTFALL_PRICE_FACTOR,
    )


@dataclasses.dataclass(frozen=True)
class Solved:
    """One fleet solve as the operator acts on it: the plan, each service's outcome and explanation."""

    plan: allocation.Plan
    outcomes: dict[str, reconcile.ServiceOutcome]
    explanations: dict[str, str]


def plan_outcomes(
    services: Sequence[v1alpha1.InferenceService],
    pools: Sequence[v1alpha1.AcceleratorPool],
    profiles: Sequence[v1alpha1.PerformanceProfile],
    planner: planning.Planner,
    pinned: frozenset[str] = frozenset(),
) -> Solved:
    """Solve the fleet and split the plan per service (the operator's re-plan and `chipfit render`).

    Replica minimums the fleet cannot meet make the MILP infeasible; rather than leave every service
    without a plan, the fleet is solved again with the minimums relaxed, and the services whose minimum is
    missed are reported with the solver's reason. Raises PlanningError or inputs.PlacementError otherwise.
    """
    relaxed_reason: str | None = None
    try:
        try:
            fleet_plan = planner.plan(services, pools, profiles, pinned=pinned)
        except inputs.PlacementError as exc:
            if not pinned:
                raise
            # What stays where it runs leaves too little room for the rest (or the repair found no plan in
            # its time): place everything anew.
            logger.info("the repair with %d services pinned failed (%s); re-planning all", len(pinned), exc)
            fleet_plan = planner.plan(services, pools, profiles)
    except inputs.InfeasibleError as exc:
        relaxed_reason = str(exc)
        logger.warning("replica minimums cannot all be met (%s); planning without them", exc)
        relaxed = [_without_minimum(s) for s in services]
        fleet_plan = planner.plan(relaxed, pools, profiles)
    plan = fleet_plan.plan
    outcomes = {sp.service: outcome_of(sp, fleet_plan.candidates.trust) for sp in plan.services}
    if relaxed_reason is not None:
        for service in services:
            sid = planning.service_id(service)
            minimum = service.spec.replicas.min if service.spec.replicas else 0
            outcome = outcomes.get(sid)
            planned = sum(p.replicas for p in outcome.placements) if outcome is not None else 0
            if outcome is not None and minimum > 0 and planned < minimum:
                reason = f"spec.replicas.min {minimum} cannot be met ({planned} placed): {relaxed_reason}"
                outcomes[sid] = dataclasses.replace(outcome, served="unserved", reason=reason)
    explanations = {e.service: e.summary for e in fleet_plan.explanations}
    return Solved(plan, outcomes, explanations)


def _placement_text(placements: Sequence[v1alpha1.RolePlacement]) -> str:
    return (
        ", ".join(
            f"{p.role} {p.replicas}x {p.accelerator} {p.precision} tp{p.tensor_parallel} on {p.pool}"
            for p in placements
        )
        or "nothing"
    )


def _placement_keys(placements: Sequence[v1alpha1.RolePlacement] | None) -> set[tuple[Any, ...]]:
    return {
        (p.role, p.pool, p.accelerator, p.precision, p.tensor_parallel, p.replicas) for p in placements or ()
    }


# --- retries and resyncs (pure) ------------------------------------------------------------------------


def retry_delay_s(failures: int, base_s: float = RETRY_DELAY_S, cap_s: float = RETRY_MAX_DELAY_S) -> float:
    """Seconds to wait after the `failures`-th consecutive failure: base, 2 x base, 4 x base, ..., cap."""
    if failures < 1:
        return 0.0
    return min(cap_s, base_s * 2.0 ** min(failures - 1, 64))


def resync_due(last_replan_s: float | None, now_s: float, interval_s: float = RESYNC_INTERVAL_S) -> bool:
    """A periodic re-plan is due: none yet, or the last one (monotonic seconds) is half an interval old."""
    return last_replan_s is None or now_s - last_replan_s >= interval_s / 2


class SolveFailedError(RuntimeError):
    """The fleet could not be planned this time; the worker retries with back-off, keeping the placement."""


@dataclasses.dataclass(frozen=True)
class FleetView:
    """The objects a re-plan reads: plain bodies from kopf's indexes (or one LIST each without them)."""

    services: tuple[Mapping[str, Any], ...]
    pools: tuple[Mapping[str, Any], ...]
    profiles: tuple[Mapping[str, Any], ...]
    nodes: tuple[Mapping[str, Any], ...]
    # The Deployments and Services chipfit manages, by (namespace, chipfit.io/service label value); None:
    # list them from the API server per service.
    owned: Mapping[tuple[str, str], tuple[Mapping[str, Any], ...]] | None = None


def _index_values(index: Mapping[Any, Any]) -> tuple[Mapping[str, Any], ...]:
    """Every value of a kopf index (one store of values per key), copied: the loop keeps updating it."""
    return tuple(value for key in list(index) for value in list(index[key]))


# --- the fleet worker ------------------------------------------------------------------------------------


@dataclasses.dataclass
class Fleet:
    """The operator's single worker: debounced re-plans and per-service reconciles, in that order."""

    cluster: kube.Kube
    metrics: metrics.OperatorMetrics
    debounce_s: float = REPLAN_DEBOUNCE_S
    options: inputs.SolveOptions = dataclasses.field(default_factory=solve_options)
    # Latest plan per service id (namespace/name): memory only; status.placement is the durable record.
    outcomes: dict[str, reconcile.ServiceOutcome] = dataclasses.field(default_factory=dict)
    # Placements the autoscaler decided (chipfit.autoscaler): they win over the spec-sized plan.
    autoscaled: dict[str, reconcile.ServiceOutcome] = dataclasses.field(default_factory=dict)
    # Quote the scheduler's reason for Pending replicas (needs `list pods`; turned off when refused).
    explain_pods: bool = True
    # Extended-resource units per pool label the last plan leaves free (None before the first plan), and
    # the units each service's replaced-but-not-yet-drained Deployments hold on top of the plan.
    room_units: dict[str, int] | None = None
    surge_units: dict[str, Mapping[str, int]] = dataclasses.field(default_factory=dict)
    replan_requested: bool = False
    # Whether the requested re-plan must solve the whole fleet afresh (anything but node capacity changed).
    replan_full: bool = False
    # Each pool's capacity at the last successful re-plan (what a repair compares against).
    capacities: dict[str, reconcile.PoolCapacity] | None = None
    services_requested: set[tuple[str, str]] = dataclasses.field(default_factory=set)
    node_fingerprints: dict[str, tuple[Any, ...]] = dataclasses.field(default_factory=dict)
    # kopf's in-memory indexes of services, pools, profiles and nodes (set at startup): a re-plan reads them
    # instead of listing everything again. None: list from the API server (tools and tests without kopf).
    indexes: Mapping[str, Mapping[Any, Any]] | None = None
    retry_base_s: float = RETRY_DELAY_S
    resync_interval_s: float = RESYNC_INTERVAL_S
    # Consecutive failed attempts of fleet work, and when the last re-plan succeeded (monotonic seconds).
    failures: int = 0
    last_replan_s: float | None = None
    # Pools of the last re-plan, for service reconciles between re-plans.
    pools_by_name: dict[str, v1alpha1.AcceleratorPool] = dataclasses.field(default_factory=dict)
    # Candidates and plans cached across re-plans: only what a change touches is priced again.
    planner: planning.Planner = dataclasses.field(default_factory=planning.Planner)
    # Phase times of the last re-plan (monotonic seconds; for its log line).
    _read_s: float = 0.0
    _solve_s: float = 0.0
    _wake: asyncio.Event | None = None
    _task: asyncio.Task[None] | None = None

    # -- triggers (called from handlers, on the event loop) --

    def request_replan(self, why: str, *, repair: bool = False) -> None:
        """Ask for a whole-fleet re-plan (debounced).

        `repair`: nothing but node capacity changed (nodes lost, added, cordoned), or a service already
        planned for its spec was seen again; unless something else asks for a full re-plan before it runs,
        services the change did not touch keep their placement (`pinned_services`).
        """
        logger.debug("re-plan requested: %s", why)
        self.replan_requested = True
        self.replan_full = self.replan_full or not repair
        self._signal()

    def request_resync(self) -> bool:
        """The periodic re-plan: requested when the last one is an interval old."""
        if not resync_due(self.last_replan_s, time.monotonic(), self.resync_interval_s):
            return False
        self.request_replan("periodic resync")
        return True

    def request_service(self, namespace: str, name: str) -> None:
        """Ask for one service's reconcile (rollout progress, status)."""
        self.services_requested.add((namespace, name))
        self._signal()

    def _signal(self) -> None:
        if self._wake is not None:
            self._wake.set()

    def start(self) -> None:
        """Start the worker task on the running loop."""
        self._wake = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._run(), name="chipfit-fleet")

    async def stop(self) -> None:
        """Cancel the worker and wait for it."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        assert self._wake is not None
        while True:
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=self.resync_interval_s)
            except TimeoutError:
                # Nothing announced a change for an interval: re-plan anyway (periodic resync).
                self.request_resync()
                continue
            if self.replan_requested:
                # Debounce: let a burst of changes land before solving once for all of them.
                await asyncio.sleep(self.debounce_s)
            self._wake.clear()
            replan, self.replan_requested = self.replan_requested, False
            full, self.replan_full = self.replan_full, False
            services, self.services_requested = self.services_requested, set()
            try:
                if replan:
                    # The indexes are read here, on the event loop that updates them; the thread gets a copy.
                    view = self.view()
                    await asyncio.to_thread(self.replan, view, full=full)
                for namespace, name in sorted(services):
                    owned = self.owned_view([(namespace, render.label_value(name))])
                    await asyncio.to_thread(self.reconcile_one, namespace, name, owned)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # every failure is retried: nothing the user asked for is dropped
                self.failures += 1
                delay = retry_delay_s(self.failures, self.retry_base_s)
                if isinstance(exc, kube.ApiError | SolveFailedError):
                    logger.warning(
                        "fleet work failed (attempt %d), retrying in %.0f s: %s", self.failures, delay, exc
                    )
                else:
                    logger.exception(
                        "fleet work failed unexpectedly (attempt %d), retrying in %.0f s",
                        self.failures,
                        delay,
                    )
                    self.metrics.observe_reconcile("fleet", 0.0, "unexpected")
                # The work that failed is asked for again, with whatever arrived meanwhile.
                self.replan_requested = self.replan_requested or replan
                # A failed repair is retried as a full re-plan.
                self.replan_full = self.replan_full or replan
                self.services_requested |= services
                await asyncio.sleep(delay)
                self._wake.set()
            else:
                self.failures = 0

    def view(self) -> FleetView | None:
        """A copy of what the indexes hold now; None without indexes (the re-plan lists instead)."""
        if self.indexes is None:
            return None
        services, pools, profiles, nodes = (_index_values(self.indexes[name]) for name in INDEX_NAMES)
        return FleetView(
            services=services, pools=pools, profiles=profiles, nodes=nodes, owned=self.owned_view()
        )

    def owned_view(
        self, keys: Sequence[tuple[str, str]] | None = None
    ) -> dict[tuple[str, str], tuple[Mapping[str, Any], ...]] | None:
        """A copy of the owned-objects index (all keys, or only `keys`); None without it (list instead)."""
        indexes = [(self.indexes or {}).get(name) for name in OWNED_INDEXES]
        if any(index is None for index in indexes):
            return None
        out: dict[tuple[str, str], tuple[Mapping[str, Any], ...]] = {}
        for index in indexes:
            assert index is not None
            wanted = list(index) if keys is None else [k for k in keys if k in index]
            for key in wanted:
                out[key] = out.get(key, ()) + tuple(index[key])
        return out

    # -- work (runs in a worker thread) --

    def replan(self, view: FleetView | None = None, *, full: bool = True) -> None:
        """Solve the whole fleet on the capacity the nodes really offer, then reconcile every service.

        Reads `view` (kopf's indexes) when given, else lists each kind once. `full=False` (only node
        capacity changed): services the change did not touch keep their placement (`pinned_services`).
        Raises SolveFailedError when no plan can be made, so the worker retries; the running placement stays
        as it is meanwhile.
        """
        started = time.monotonic()
        if view is None:
            view = FleetView(
                services=tuple(self.cluster.list_inference_services()),
                pools=tuple(self.cluster.list_pools()),
                profiles=tuple(self.cluster.list_profiles()),
                nodes=tuple(self.cluster.list_nodes()),
            )
        raw_services = [s for s in view.services if not s["metadata"].get("deletionTimestamp")]
        pools = usable_pools([v1alpha1.AcceleratorPool.model_validate(_plain(p)) for p in view.pools])
        profiles = [v1alpha1.PerformanceProfile.model_validate(_plain(p)) for p in view.profiles]
        nodes = [_plain(n) for n in view.nodes]
        pool_names = [p.metadata.name for p in pools]
        by_name = {p.metadata.name: p for p in pools}
        chips = planning.fleet_accelerators(pools)

        valid: list[v1alpha1.InferenceService] = []
        for body in raw_services:
            service = parse_service(body)
            problem = first_problem(service, pool_names, chips)
            if problem is not None:
                self.mark_invalid(service, problem.field, problem.reason)
            else:
                valid.append(service)

        owners = reconcile.node_owners(pools, nodes)
        capacities = {p.metadata.name: self._capacity(p, nodes, owners) for p in pools}
        # The solver plans on the nodes that are really there, not on the declared planning capacity.
        seen = [
            p.model_copy(
                update={"spec": p.spec.model_copy(update={"nodes": capacities[p.metadata.name].nodes_ready})}
            )
            for p in pools
        ]
        pinned = frozenset() if full else self.pinned_services(valid, capacities)
        self._read_s = time.monotonic()
        solved = self._solve(valid, seen, profiles, pinned)
        if solved is None:
            # No plan at all (solver failure): every service keeps running as it does; retried with back-off.
            self.metrics.observe_reconcile("fleet", time.monotonic() - started, "unexpected")
            raise SolveFailedError("no fleet plan (see the previous warning); keeping the current placement")
        outcomes, explanations, usage = solved
        self.capacities = dict(capacities)
        outcomes.update({sid: o for sid, o in self.autoscaled.items() if sid in outcomes})
        self.outcomes = outcomes
        self.pools_by_name = dict(by_name)
        # Units each pool has left beyond the new plan: what replaced replicas may hold while their
        # replacements start (reconcile.plan_actions drains the rest before their replacements).
        self.room_units = {
            render.label_value(p.metadata.name): max(
                0,
                capacities[p.metadata.name].devices_total
                - (usage[p.metadata.name].devices_used if p.metadata.name in usage else 0),
            )
            * planning.pool_accelerator(p).resource_units_per_device
            for p in pools
        }
        # Every service is reconciled below and says again what its surge holds.
        self.surge_units = {}
        solved_s = time.monotonic()

        # Services whose placement changed first (a node loss moves a few of many: they are what waits),
        # and among them the widest replicas first: their pods reach the scheduler first and take whole
        # nodes before narrow replicas spread over them (the default scheduler does not bin-pack).
        # Unchanged services follow; with the owned-objects index they cost no API call unless something
        # of theirs differs from the plan.
        def order(service: v1alpha1.InferenceService) -> tuple[bool, int]:
            outcome = outcomes.get(planning.service_id(service))
            previous = service.status.placement if service.status else None
            unchanged = outcome is not None and _placement_keys(previous) == _placement_keys(
                outcome.placements
            )
            return unchanged, -_widest(outcome)

        ordered = sorted(valid, key=order)
        moved = sum(1 for s in ordered if not order(s)[0])
        # The moved services' statuses go out first, all of them, then their objects are rolled out, then
        # the unchanged services are checked (each at once).
        rollouts: list[Callable[[], None]] = []
        for index, service in enumerate(ordered):
            if index == moved:
                self._roll_out(rollouts)
            sid = planning.service_id(service)
            try:
                self.reconcile_service(
                    service,
                    outcomes.get(sid),
                    explanations.get(sid),
                    by_name,
                    owned=view.owned,
                    deferred=rollouts if index < moved else None,
                )
            except kube.ApiError as exc:
                if exc.transient:
                    raise
                # One service's rejected object must not stop the others' reconciles.
                logger.error("reconcile of %s failed: %s", sid, exc)
                self.metrics.observe_reconcile("inferenceservice", 0.0, "permanent")
        self._roll_out(rollouts)
        for pool in pools:
            self._write_pool_status(pool, capacities[pool.metadata.name], usage.get(pool.metadata.name))
        self.last_replan_s = time.monotonic()
        self.metrics.observe_reconcile("fleet", time.monotonic() - started)
        logger.info(
            "re-plan: %d services (%d pinned, %d placements changed), %d pairs priced; read %.2f s, "
            "plan %.2f s (solve %.2f s), reconcile %.2f s",
            len(valid),
            len(pinned),
            moved,
            self.planner.last_priced_pairs,
            self._read_s - started,
            solved_s - self._read_s,
            self._solve_s,
            self.last_replan_s - solved_s,
        )

    def _roll_out(self, rollouts: list[Callable[[], None]]) -> None:
        """Run the deferred rollouts (in order), each service's failure its own (transient ones propagate)."""
        while rollouts:
            act = rollouts.pop(0)
            try:
                act()
            except kube.ApiError as exc:
                if exc.transient:
                    raise
                logger.error("rollout failed: %s", exc)
                self.metrics.observe_reconcile("inferenceservice", 0.0, "permanent")

    def _capacity(
        self, pool: v1alpha1.AcceleratorPool, nodes: Sequence[Mapping[str, Any]], owners: Mapping[str, str]
    ) -> reconcile.PoolCapacity:
        chip = planning.pool_accelerator(pool)
        resource = render.resource_name(pool, chip)
        return reconcile.pool_capacity(pool, resource, chip.resource_units_per_device, nodes, owners)

    def pinned_services(
        self, services: Sequence[v1alpha1.InferenceService], capacities: Mapping[str, reconcile.PoolCapacity]
    ) -> frozenset[str]:
        """Services a capacity-only change leaves where they run (ids); the others are placed anew.

        A service stays when its spec is the one its status was planned for, the last plan served it
        fully, and every pool it runs on kept at least the nodes and devices it had at the last re-plan.
        Nothing is pinned before a first re-plan (the periodic resync and every spec change solve afresh).
        """
        previous = self.capacities
        if previous is None:
            return frozenset()
        shrunk = {
            name
            for name, before in previous.items()
            if name not in capacities
            or capacities[name].devices_total < before.devices_total
            or capacities[name].nodes_ready < before.nodes_ready
        }
        pinned = set()
        for service in services:
            sid = planning.service_id(service)
            status = service.status
            last = self.outcomes.get(sid)
            if status is None or not status.placement or last is None or last.served != "served":
                continue
            if status.observed_generation != service.metadata.generation:
                continue
            if any(p.pool in shrunk or p.pool not in capacities for p in status.placement):
                continue
            pinned.add(sid)
        return frozenset(pinned)

    def _solve(
        self,
        services: Sequence[v1alpha1.InferenceService],
        pools: Sequence[v1alpha1.AcceleratorPool],
        profiles: Sequence[v1alpha1.PerformanceProfile],
        pinned: frozenset[str] = frozenset(),
    ) -> (
        tuple[dict[str, reconcile.ServiceOutcome], dict[str, str], dict[str, allocation.PoolAllocation]]
        | None
    ):
        """Outcomes and explanations per service id and pool usage; None when no plan could be made."""
        if not services:
            return {}, {}, {}
        started = time.monotonic()
        try:
            self.planner.options = self.options
            solved = plan_outcomes(services, pools, profiles, self.planner, pinned)
        except (planning.PlanningError, inputs.PlacementError) as exc:
            status: metrics.SolverStatus = (
                "infeasible" if isinstance(exc, inputs.InfeasibleError) else "error"
            )
            self.metrics.observe_solve(time.monotonic() - started, status)
            logger.warning("fleet plan failed, keeping the current placement: %s", exc)
            return None
        plan = solved.plan
        self._solve_s = plan.solve_seconds
        self.metrics.observe_solve(
            plan.solve_seconds,
            plan.status,
            gap_ratio=plan.gap,
            objective_dollars_per_hour=plan.price_per_hour,
            bound_source=plan.bound_source,
        )
        return solved.outcomes, solved.explanations, {u.pool: u for u in plan.pools}

    def reconcile_one(
        self,
        namespace: str,
        name: str,
        owned: Mapping[tuple[str, str], Sequence[Mapping[str, Any]]] | None = None,
    ) -> None:
        """Advance one service's rollout from the last plan (a re-plan when there is none yet).

        `owned`: its Deployments and Services from the operator's index (None: listed).
        """
        body = self.cluster.get_inference_service(namespace, name)
        if body is None or body["metadata"].get("deletionTimestamp"):
            return
        service = parse_service(body)
        outcome = self.outcomes.get(planning.service_id(service))
        if outcome is None:
            self.request_replan(f"no plan yet for {namespace}/{name}")
            return
        self.reconcile_service(service, outcome, None, owned=owned)

    def _owned(
        self,
        namespace: str,
        name: str,
        owned: Mapping[tuple[str, str], Sequence[Mapping[str, Any]]] | None,
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """The service's Deployments and Services: from the index copy when given, else two LISTs."""
        label = render.label_value(name)
        if owned is None:
            return self.cluster.list_owned(namespace, f"{render.LABEL_SERVICE}={label}")
        deployments: list[dict[str, Any]] = []
        services: list[dict[str, Any]] = []
        for body in owned.get((namespace, label), ()):
            kind = body.get("kind")
            if kind == "Deployment":
                deployments.append(dict(body))
            elif kind == "Service":
                services.append(dict(body))
        return deployments, services

    def reconcile_service(
        self,
        service: v1alpha1.InferenceService,
        outcome: reconcile.ServiceOutcome | None,
        explanation: str | None,
        pools: Mapping[str, v1alpha1.AcceleratorPool] | None = None,
        owned: Mapping[tuple[str, str], Sequence[Mapping[str, Any]]] | None = None,
        deferred: list[Callable[[], None]] | None = None,
    ) -> None:
        """Render the service's placement, write its status, apply what changed, drain what is replaced.

        `owned`: the operator's index copy of the Deployments and Services it manages (None: listed).
        The status (the plan's durable record, computed from the objects as they are) is written before
        anything is applied; with `deferred`, applying is appended there to run later, so a re-plan can
        publish every moved service's new placement before it rolls any of them out.
        """
        started = time.monotonic()
        namespace = service.metadata.namespace or "default"
        name = service.metadata.name
        body = service.model_dump(mode="json", by_alias=True, exclude_none=True)
        if outcome is None:
            self._write_status(service, reconcile.compute_status(service, None, [], None, _now()))
            return
        if pools is None:
            # The pools the last re-plan planned on (outcomes exist only after one).
            pools = self.pools_by_name
        try:
            desired = render.render_planned(service, outcome.placements, pools)
        except render.RenderError as exc:
            self.cluster.post_event(body, "Warning", "RenderFailed", str(exc))
            self._write_status(service, reconcile.invalid_status(service, exc.field, exc.reason, _now()))
            self.metrics.observe_reconcile("inferenceservice", time.monotonic() - started, "permanent")
            return
        selector = f"{render.LABEL_SERVICE}={render.label_value(name)}"
        raw_deployments, raw_services = self._owned(namespace, name, owned)
        uid = service.metadata.uid or ""
        for kind, api_version, stale in [
            ("Deployment", "apps/v1", raw_deployments),
            ("Service", "v1", raw_services),
        ]:
            for obj in stale:
                if not reconcile.owned_by(obj, uid) and reconcile.controlled_by_other_service(obj, name, uid):
                    # Left by a deleted namesake of this service (the garbage collector has not reached it
                    # yet): it would refuse our ownerReference, so it goes now.
                    self.cluster.delete(api_version, kind, namespace, obj["metadata"]["name"])
        deployments = [reconcile.live_deployment(d) for d in raw_deployments if reconcile.owned_by(d, uid)]
        services = [reconcile.live_service(s) for s in raw_services if reconcile.owned_by(s, uid)]
        sid = planning.service_id(service)
        room = None
        if self.room_units is not None:
            # What the other services' surges already hold is not room for this one.
            room = dict(self.room_units)
            for other, held in self.surge_units.items():
                for pool, units in held.items():
                    if other != sid:
                        room[pool] = room.get(pool, 0) - units
        actions = reconcile.plan_actions(desired, deployments, services, room)
        self.surge_units[sid] = actions.surge_units

        unschedulable = None
        if self.explain_pods and any(d.ready_replicas < d.replicas for d in deployments):
            # Say why replicas are missing when the scheduler cannot place them (full or fragmented nodes).
            try:
                unschedulable = reconcile.unschedulable_reason(self.cluster.list_pods(namespace, selector))
            except kube.ApiError as exc:
                if exc.status != HTTP_FORBIDDEN:
                    raise
                # The chart grants no access to pods; without it Ready just omits the scheduler's reason.
                self.explain_pods = False
                logger.info("listing pods is not permitted: Ready will not quote the scheduler's reasons")
        status = reconcile.compute_status(service, outcome, deployments, actions, _now(), unschedulable)
        self._write_status(service, status)
        self._record_metrics(service, outcome, status)
        previous = service.status.placement if service.status else None
        if _placement_keys(previous) != _placement_keys(outcome.placements):
            message = f"placed {_placement_text(outcome.placements)}"
            if explanation:
                message += f": {explanation}"
            self.cluster.post_event(body, "Normal", "Placed", message)
            for role in {p.role for p in outcome.placements} | {p.role for p in previous or ()}:
                self.metrics.record_placement_change(namespace, name, role)

        def act() -> None:
            for obj in sorted(actions.apply, key=lambda o: -reconcile.device_units_of(o)):
                self.cluster.apply(obj)
            for kind, object_name in actions.delete:
                api_version = "apps/v1" if kind == "Deployment" else "v1"
                if self.cluster.delete(api_version, kind, namespace, object_name):
                    why = (
                        "its pool has no room to run it beside its replacement"
                        if object_name in actions.drained_early
                        else "replaced and ready"
                    )
                    self.cluster.post_event(body, "Normal", "Drained", f"deleted {kind} {object_name}: {why}")
            self.metrics.observe_reconcile("inferenceservice", time.monotonic() - started)

        if deferred is not None:
            deferred.append(act)
        else:
            act()

    def mark_invalid(self, service: v1alpha1.InferenceService, field: str, reason: str) -> None:
        """Condition Placed=False InvalidSpec naming the field, and a Warning Event when it is news."""
        status = reconcile.invalid_status(service, field, reason, _now())
        if self._write_status(service, status):
            body = service.model_dump(mode="json", by_alias=True, exclude_none=True)
            self.cluster.post_event(body, "Warning", "InvalidSpec", f"{field}: {reason}")

    def _write_status(
        self, service: v1alpha1.InferenceService, status: v1alpha1.InferenceServiceStatus
    ) -> bool:
        patch = reconcile.status_patch(service.status, status)
        if patch is None:
            return False
        self.cluster.patch_status(
            kube.KINDS.inference_service, service.metadata.namespace, service.metadata.name, patch
        )
        return True

    def _write_pool_status(
        self,
        pool: v1alpha1.AcceleratorPool,
        capacity: reconcile.PoolCapacity,
        usage: allocation.PoolAllocation | None,
    ) -> None:
        price = rules.price_per_device_hour(pool.spec)
        used = usage.devices_used if usage is not None else 0
        status = v1alpha1.AcceleratorPoolStatus(
            observed_generation=pool.metadata.generation,
            nodes_ready=capacity.nodes_ready,
            devices_total=capacity.devices_total,
            devices_allocated=used,
            devices_free=max(0, capacity.devices_total - used),
            dollars_per_hour=round(used * price, 4),
            conditions=pool.status.conditions if pool.status else None,
        )
        old = pool.status.to_wire() if pool.status else {}
        if status.to_wire() != old:
            self.cluster.patch_status(kube.KINDS.pool, None, pool.metadata.name, status.to_wire())
        self.metrics.record_pool(
            metrics.PoolUsage(
                pool=pool.metadata.name,
                accelerator=pool.spec.accelerator,
                devices_total=capacity.devices_total,
                devices_allocated=used,
                price_dollars_per_device_hour=price,
            )
        )

    def _record_metrics(
        self,
        service: v1alpha1.InferenceService,
        outcome: reconcile.ServiceOutcome,
        status: v1alpha1.InferenceServiceStatus,
    ) -> None:
        p = outcome.prediction
        namespace = service.metadata.namespace or "default"
        if p is None or p.ttft_p99_ms is None or p.itl_p99_ms is None:
            return
        workload = service.spec.workload
        output_rate = workload.requests_per_second * workload.output_tokens.mean
        plan = metrics.ServicePlan(
            namespace=namespace,
            service=service.metadata.name,
            predicted_cost_dollars_per_hour=p.dollars_per_hour or 0.0,
            predicted_cost_dollars_per_million_output_tokens=p.dollars_per_million_output_tokens or 0.0,
            predicted_ttft_p99_ms=p.ttft_p99_ms,
            predicted_itl_p99_ms=p.itl_p99_ms,
            slo_ttft_p99_ms=service.spec.slo.ttft_p99_ms,
            slo_itl_p99_ms=service.spec.slo.itl_p99_ms,
            workload_requests_per_second=workload.requests_per_second,
            workload_output_tokens_per_second=output_rate,
            predicted_capacity_requests_per_second=p.max_requests_per_second or 0.0,
            placements=tuple(
                metrics.PlannedRole(
                    role=pl.role,
                    accelerator=pl.accelerator,
                    pool=pl.pool,
                    desired_replicas=pl.replicas,
                    cost_dollars_per_hour=outcome.cost_dollars_per_hour.get(
                        (pl.role, pl.accelerator, pl.pool), 0.0
                    ),
                    # Every request routed here (prefilled or decoded here) yields its mean output tokens.
                    served_output_tokens_per_second=outcome.routed_requests_per_second.get(
                        (pl.role, pl.accelerator, pl.pool), 0.0
                    )
                    * workload.output_tokens.mean,
                )
                for pl in _merge_by_pool(outcome.placements)
            ),
        )
        self.metrics.record_plan(plan)
        for pl in _merge_by_pool(status.placement or ()):
            self.metrics.record_ready_replicas(
                namespace, service.metadata.name, pl.role, pl.accelerator, pl.pool, pl.ready_replicas or 0
            )

    # -- nodes --

    def node_changed(self, body: Mapping[str, Any], deleted: bool) -> bool:
        """True (and a re-plan requested) when a node change can change some pool's capacity."""
        name = body["metadata"]["name"]
        if deleted:
            changed = self.node_fingerprints.pop(name, None) is not None
        else:
            status = body.get("status") or {}
            ready = any(
                c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or ()
            )
            fingerprint = (
                ready,
                bool((body.get("spec") or {}).get("unschedulable")),
                repr((body.get("spec") or {}).get("taints") or []),
                tuple(sorted((status.get("allocatable") or {}).items())),
                tuple(sorted(((body.get("metadata") or {}).get("labels") or {}).items())),
            )
            changed = self.node_fingerprints.get(name) != fingerprint
            self.node_fingerprints[name] = fingerprint
        if changed:
            self.request_replan(f"node {name} changed", repair=True)
        return changed


def _widest(outcome: reconcile.ServiceOutcome | None) -> int:
    """Largest tensor-parallel degree of a service's plan (0 when it has none)."""
    return max((p.tensor_parallel for p in outcome.placements), default=0) if outcome is not None else 0


def _without_minimum(service: v1alpha1.InferenceService) -> v1alpha1.InferenceService:
    """The service with spec.replicas.min relaxed to 0 (max and scale-to-zero kept)."""
    replicas = service.spec.replicas
    if replicas is None or replicas.min == 0:
        return service
    relaxed = replicas.model_copy(update={"min": 0})
    return service.model_copy(update={"spec": service.spec.model_copy(update={"replicas": relaxed})})


def _merge_by_pool(placements: Sequence[v1alpha1.RolePlacement]) -> list[v1alpha1.RolePlacement]:
    """One entry per (role, accelerator, pool): metrics label series do not distinguish configurations."""
    merged: dict[tuple[str, str, str], v1alpha1.RolePlacement] = {}
    for p in placements:
        key = (p.role, p.accelerator, p.pool)
        if key in merged:
            old = merged[key]
            merged[key] = old.model_copy(
                update={
                    "replicas": old.replicas + p.replicas,
                    "ready_replicas": (old.ready_replicas or 0) + (p.ready_replicas or 0),
                }
            )
        else:
            merged[key] = p
    return list(merged.values())


# --- kopf wiring -------------------------------------------------------------------------------------------


def _fleet(memo: Any) -> Fleet:
    fleet: Fleet = memo.fleet
    return fleet


@kopf.on.startup()
async def operator_startup(settings: kopf.OperatorSettings, memo: Any, **kwargs: Any) -> None:
    """Keep kopf's bookkeeping in annotations (the CRDs' status schema has no room for it) and start."""
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix=GROUP, key="last-handled")
    settings.persistence.finalizer = f"{GROUP}/operator"
    # Our Events are posted by chipfit.kube with reasons that explain placements; kopf adds its own only
    # for handler failures.
    settings.posting.level = logging.WARNING
    fleet = _fleet(memo)
    # kopf's indexes are live views it keeps current from its watch streams (and fully populated before
    # resource handlers run): re-plans read them instead of listing every kind again.
    fleet.indexes = {name: kwargs[name] for name in (*INDEX_NAMES, *OWNED_INDEXES)}
    memo.profiling_runs = kwargs["profilingrun_index"]
    memo.profiling_runs_by_service = kwargs["profilingrun_service_index"]
    memo.profiling_locks = {}
    fleet.start()
    scaler = getattr(memo, "autoscaler", None)
    if scaler is not None:
        memo.autoscaler_task = asyncio.get_running_loop().create_task(
            autoscaler.run(scaler, fleet, memo.prometheus_query, time.monotonic),
            name="chipfit-autoscaler",
        )


@kopf.on.cleanup()
async def operator_cleanup(memo: Any, **_: Any) -> None:
    """Stop the autoscaler and the fleet worker."""
    task = getattr(memo, "autoscaler_task", None)
    if task is not None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    await _fleet(memo).stop()


@kopf.on.create(GROUP, VERSION, "inferenceservices")
@kopf.on.update(GROUP, VERSION, "inferenceservices", field="spec")
@kopf.on.resume(GROUP, VERSION, "inferenceservices")
async def inferenceservice_changed(body: kopf.Body, memo: Any, **_: Any) -> None:
    """Parse and check the spec; a valid one triggers a fleet re-plan, an invalid one fails permanently."""
    fleet = _fleet(memo)
    service = parse_service(body)
    problem = first_problem(service, None)
    if problem is not None:
        await asyncio.to_thread(fleet.mark_invalid, service, problem.field, problem.reason)
        fleet.metrics.observe_reconcile("inferenceservice", 0.0, "permanent")
        raise kopf.PermanentError(f"{problem.field}: {problem.reason}")
    # A service its status says is planned for this very spec (seen again after an operator restart, or by
    # a create handler that ran late) needs no fresh solve of the others: a repair places it if it is not.
    status = service.status
    planned = (
        status is not None
        and bool(status.placement)
        and status.observed_generation == service.metadata.generation
    )
    fleet.request_replan(
        f"InferenceService {service.metadata.namespace}/{service.metadata.name}", repair=planned
    )


@kopf.on.delete(GROUP, VERSION, "inferenceservices", optional=True)
async def inferenceservice_deleted(body: kopf.Body, memo: Any, **_: Any) -> None:
    """Owned objects go with the service (ownerReferences); its capacity returns to the fleet."""
    fleet = _fleet(memo)
    namespace, name = body["metadata"].get("namespace", "default"), body["metadata"]["name"]
    fleet.outcomes.pop(f"{namespace}/{name}", None)
    fleet.metrics.forget_service(namespace, name)
    fleet.request_replan(f"InferenceService {namespace}/{name} deleted")


@kopf.on.create(GROUP, VERSION, "acceleratorpools")
@kopf.on.update(GROUP, VERSION, "acceleratorpools", field="spec")
@kopf.on.resume(GROUP, VERSION, "acceleratorpools")
@kopf.on.delete(GROUP, VERSION, "acceleratorpools", optional=True)
async def acceleratorpool_changed(body: kopf.Body, memo: Any, reason: str, **_: Any) -> None:
    """Any pool change re-plans the fleet."""
    fleet = _fleet(memo)
    if reason == "delete":
        fleet.metrics.forget_pool(body["metadata"]["name"])
    fleet.request_replan(f"AcceleratorPool {body['metadata']['name']} {reason}")


@kopf.on.create(GROUP, VERSION, "performanceprofiles")
@kopf.on.update(GROUP, VERSION, "performanceprofiles", field="spec")
@kopf.on.delete(GROUP, VERSION, "performanceprofiles", optional=True)
async def performanceprofile_changed(body: kopf.Body, memo: Any, **_: Any) -> None:
    """Measured capacity changed: re-plan."""
    _fleet(memo).request_replan(f"PerformanceProfile {body['metadata']['name']}")


# --- ProfilingRuns: advanced on watch events of the run, its Job, its pod and its service -----------------
#
# Event handlers, not a kopf timer: kopf puts its finalizer on every object a timer watches (kopf#1074), so
# a run could not be deleted while no operator runs. Raw event handlers put none; every step is idempotent
# (server-side apply, status patches), so a step repeated on another event does no harm.


def _run_by_label(memo: Any, label: str) -> Mapping[str, Any] | None:
    """The run whose objects carry this chipfit.io/profiling-run label value (kopf index), or None."""
    runs = memo.profiling_runs
    if label not in runs:
        return None
    found = list(runs[label])
    return found[0] if found else None


async def step_profiling_run(memo: Any, body: Mapping[str, Any], attempt: int = 0) -> None:
    """Advance one run by a step (serialized per run); a transient API failure is retried with back-off."""
    name = body["metadata"]["name"]
    locks: dict[str, asyncio.Lock] = memo.profiling_locks
    lock = locks.setdefault(name, asyncio.Lock())
    async with lock:
        # The newest body kopf has seen (an event handler's own body may be older than our last patch).
        label = render.label_value(name)
        latest = _run_by_label(memo, label) if getattr(memo, "profiling_runs", None) is not None else None
        current = _plain(latest if latest is not None else body)
        if current["metadata"].get("deletionTimestamp"):
            return
        try:
            await asyncio.to_thread(operate.step, _fleet(memo).cluster, current)
        except kube.ApiError as error:
            if not error.transient:
                logger.error("ProfilingRun %s: %s", name, error)
                return
            delay = retry_delay_s(attempt + 1)
            logger.warning("ProfilingRun %s: %s; retrying in %.0f s", name, error, delay)
            loop = asyncio.get_running_loop()
            loop.call_later(delay, lambda: loop.create_task(step_profiling_run(memo, current, attempt + 1)))


@kopf.on.event(GROUP, VERSION, "profilingruns")
async def profilingrun_event(event: kopf.RawEvent, body: kopf.Body, memo: Any, **_: Any) -> None:
    """A run appeared or changed: start its Job, or collect its result, or check its engine version.

    The profile it writes re-plans the fleet through performanceprofile_changed.
    """
    if event.get("type") == "DELETED":
        memo.profiling_locks.pop(body["metadata"]["name"], None)
        return
    await step_profiling_run(memo, body)


@kopf.on.event("batch", "v1", "jobs", labels={PROFILING_RUN_LABEL: kopf.PRESENT})
async def profiler_event(body: kopf.Body, memo: Any, **_: Any) -> None:
    """The profiler's Job changed (its pod finished or failed, it was deleted): advance its run.

    The Job's status follows its pod (succeeded, failed, ready counts, conditions), so pods need no watch
    of their own (a pod watch would stream every serving pod of the cluster through the operator).
    """
    run = _run_by_label(memo, body["metadata"]["labels"][PROFILING_RUN_LABEL])
    if run is not None:
        await step_profiling_run(memo, run)


@kopf.on.event(GROUP, VERSION, "inferenceservices")
async def profiled_service_event(body: kopf.Body, memo: Any, **_: Any) -> None:
    """A profiled service changed (its placement, its engine): its finished runs check the engine image."""
    key = (body["metadata"].get("namespace", "default"), body["metadata"]["name"])
    runs = memo.profiling_runs_by_service
    if key not in runs:
        return
    for run in list(runs[key]):
        if ((run.get("status") or {}).get("phase")) == "Succeeded":
            await step_profiling_run(memo, run)


@kopf.index(GROUP, VERSION, "profilingruns")
def profilingrun_index(body: kopf.Body, **_: Any) -> dict[str, dict[str, Any]]:
    """Every ProfilingRun, by the label value its Job and pod carry."""
    return {render.label_value(body["metadata"]["name"]): _plain(body)}


@kopf.index(GROUP, VERSION, "profilingruns")
def profilingrun_service_index(body: kopf.Body, **_: Any) -> dict[tuple[str, str], dict[str, Any]]:
    """Every ProfilingRun, by the (namespace, name) of the service it profiles."""
    target = (body.get("spec") or {}).get("service") or {}
    return {(target.get("namespace", "default"), target.get("name", "")): _plain(body)}


@kopf.on.event("", "v1", "nodes")
async def node_event(event: kopf.RawEvent, body: kopf.Body, memo: Any, **_: Any) -> None:
    """Ready, cordon, allocatable or label changes of a node re-plan the fleet (debounced)."""
    _fleet(memo).node_changed(_plain(body), deleted=event.get("type") == "DELETED")


@kopf.on.event("apps", "v1", "deployments", labels=MANAGED_BY_LABEL)
async def deployment_event(body: kopf.Body, memo: Any, **_: Any) -> None:
    """A serving Deployment changed (replicas became ready, pods lost): advance its service's rollout."""
    namespace = body["metadata"].get("namespace", "default")
    for ref in body["metadata"].get("ownerReferences") or ():
        if ref.get("kind") == "InferenceService" and ref.get("apiVersion", "").startswith(f"{GROUP}/"):
            _fleet(memo).request_service(namespace, ref["name"])


# --- kopf indexes: the fleet as kopf's watch streams see it (read by re-plans instead of LISTs) ----------


def _key(body: kopf.Body) -> tuple[str | None, str]:
    return body["metadata"].get("namespace"), body["metadata"]["name"]


@kopf.index(GROUP, VERSION, "inferenceservices")
def inferenceservice_index(body: kopf.Body, **_: Any) -> dict[tuple[str | None, str], dict[str, Any]]:
    """Every InferenceService, by namespace and name."""
    return {_key(body): _plain(body)}


@kopf.index(GROUP, VERSION, "acceleratorpools")
def acceleratorpool_index(body: kopf.Body, **_: Any) -> dict[tuple[str | None, str], dict[str, Any]]:
    """Every AcceleratorPool, by name."""
    return {_key(body): _plain(body)}


@kopf.index(GROUP, VERSION, "performanceprofiles")
def performanceprofile_index(body: kopf.Body, **_: Any) -> dict[tuple[str | None, str], dict[str, Any]]:
    """Every PerformanceProfile, by name."""
    return {_key(body): _plain(body)}


def _owned_entry(body: kopf.Body, kind: str) -> dict[tuple[str, str], dict[str, Any]]:
    meta = body["metadata"]
    labels = meta.get("labels") or {}
    service = labels.get(render.LABEL_SERVICE)
    if service is None:
        return {}
    slim = {k: _plain(v) for k, v in body.items() if k != "metadata"}
    slim["metadata"] = {k: _plain(v) for k, v in meta.items() if k != "managedFields"}
    slim["kind"] = kind
    return {(meta.get("namespace", "default"), service): slim}


@kopf.index("apps", "v1", "deployments", labels=MANAGED_BY_LABEL)
def owned_deployment_index(body: kopf.Body, **_: Any) -> dict[tuple[str, str], dict[str, Any]]:
    """Every Deployment chipfit manages, by (namespace, chipfit.io/service)."""
    return _owned_entry(body, "Deployment")


@kopf.index("", "v1", "services", labels=MANAGED_BY_LABEL)
def owned_service_index(body: kopf.Body, **_: Any) -> dict[tuple[str, str], dict[str, Any]]:
    """Every Service chipfit manages, by (namespace, chipfit.io/service)."""
    return _owned_entry(body, "Service")


@kopf.index("", "v1", "nodes")
def node_index(body: kopf.Body, **_: Any) -> dict[tuple[str | None, str], dict[str, Any]]:
    """What pool capacity reads of each node: labels, taints, schedulability, allocatable, readiness."""
    status = body.get("status") or {}
    return {
        _key(body): {
            "metadata": {
                "name": body["metadata"]["name"],
                "labels": _plain(body["metadata"].get("labels") or {}),
            },
            "spec": _plain(body.get("spec") or {}),
            "status": {
                "allocatable": _plain(status.get("allocatable") or {}),
                "conditions": _plain(status.get("conditions") or []),
            },
        }
    }
