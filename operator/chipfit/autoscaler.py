"""The operator's autoscaling loop: observe (Prometheus) -> decide (placement.autoscale) -> hand the fleet
worker new placements, write status.autoscaling, an "Autoscaling" condition and an Event per decision.

`tick` is the whole step with its I/O passed in (a Prometheus QueryFn, the cluster's objects), so tests
drive it without a cluster; `run` calls it every interval from the operator's event loop. The fleet
worker (handlers.Fleet) uses `Autoscaler.outcomes` in place of the spec-sized plan for the services it
holds: re-plans keep the autoscaled replicas, and the renderer turns them into Deployments as usual.
Without a Prometheus URL nothing is autoscaled and each service says so in its condition.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from chipfit import observe, planning, reconcile
from chipfit.api import v1alpha1
from placement import autoscale, candidates
from placement.solver import inputs

logger = logging.getLogger(__name__)
# The API server's answer to a write made onto an older version of the object.
HTTP_CONFLICT = 409

CONDITION = "Autoscaling"
# Condition reasons of a service whose metrics are (or were until a moment ago) away.
OUTAGE_REASONS = frozenset(
    {"MetricsMissing", "MetricsUnavailable", "MetricsWarmingUp", "CapacityLostWithoutMetrics"}
)


@dataclasses.dataclass(frozen=True)
class ServiceReport:
    """What one tick says about one service: its new outcome (None: leave it), status and event."""

    namespace: str
    name: str
    outcome: reconcile.ServiceOutcome | None
    status: v1alpha1.AutoscalingStatus | None
    condition: tuple[bool, str, str]  # (status, reason, message)
    event: tuple[str, str, str] | None  # (type, reason, message)
    # Hand the service back to the fleet's spec-sized plan (its autoscaled placement cannot be held).
    release: bool = False


def policy_from_settings(settings: Sequence[str]) -> autoscale.Policy:
    """A Policy from `knob=value` strings (the operator's --autoscaling-policy, the chart's
    autoscaling.policy); an unknown knob, a value that is not a number or out of range raises ValueError
    naming the knob."""
    knobs = {f.name: f for f in dataclasses.fields(autoscale.Policy)}
    values: dict[str, float] = {}
    for item in settings:
        for part in (p.strip() for p in item.split(",")):
            if not part:
                continue
            name, sep, text = part.partition("=")
            name = name.strip()
            if not sep:
                raise ValueError(f"{part!r}: expected knob=value")
            if name not in knobs:
                raise ValueError(f"{name}: unknown knob (known: {', '.join(sorted(knobs))})")
            try:
                value = float(text)
            except ValueError:
                raise ValueError(f"{name}: {text.strip()!r} is not a number") from None
            values[name] = value
    try:
        return autoscale.Policy(**values)
    except autoscale.AutoscaleError as error:
        raise ValueError(str(error).removeprefix("policy.")) from None


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _scale_to_zero(service: v1alpha1.InferenceService) -> bool:
    replicas = service.spec.replicas
    return replicas is not None and replicas.scale_to_zero


def current_replicas(
    services: Sequence[v1alpha1.InferenceService],
) -> tuple[dict[inputs.CandidateKey, int], dict[inputs.CandidateKey, int]]:
    """(replicas, of which not ready) per configuration, from each service's status.placement."""
    have: dict[inputs.CandidateKey, int] = {}
    starting: dict[inputs.CandidateKey, int] = {}
    for service in services:
        for p in (service.status.placement if service.status else None) or ():
            key = inputs.CandidateKey(
                planning.service_id(service), p.role, p.pool, p.precision, p.tensor_parallel
            )
            have[key] = have.get(key, 0) + p.replicas
            not_ready = p.replicas - (p.ready_replicas or 0)
            if not_ready > 0:
                starting[key] = starting.get(key, 0) + not_ready
    return have, starting


def fit_to_capacity(
    current: Mapping[inputs.CandidateKey, int],
    starting: Mapping[inputs.CandidateKey, int],
    problem: inputs.FleetProblem,
) -> tuple[dict[inputs.CandidateKey, int], dict[inputs.CandidateKey, int], dict[inputs.CandidateKey, int]]:
    """(replicas, of which not ready, lost): replicas beyond what their pool's ready nodes can hold are
    lost, not starting (a reclaimed spot node's pods never start again). Decide then sees the capacity
    missing and re-places it on capacity that exists, at once, instead of waiting for them.

    A replica needs its tensor-parallel devices on one node; lost first are the ones not ready."""
    nodes = {p.id: p for p in problem.pools}
    have = dict(current)
    pending = dict(starting)
    lost: dict[inputs.CandidateKey, int] = {}
    by_pool: dict[str, list[inputs.CandidateKey]] = {}
    for key in current:
        by_pool.setdefault(key.pool, []).append(key)
    for pool_id, keys in by_pool.items():
        pool = nodes.get(pool_id)
        if pool is None:
            continue
        # Node slots left per node, filled by the ready replicas first, then the starting ones.
        free = [pool.devices_per_node] * pool.nodes
        for ready_pass in (True, False):
            for key in sorted(keys, key=lambda k: -k.tp):
                n = have[key] - pending.get(key, 0) if ready_pass else pending.get(key, 0)
                for _ in range(max(0, n)):
                    slot = next((i for i, f in enumerate(free) if f >= key.tp), None)
                    if slot is not None:
                        free[slot] -= key.tp
                        continue
                    lost[key] = lost.get(key, 0) + 1
                    have[key] -= 1
                    if not ready_pass:
                        pending[key] -= 1
    return (
        {k: n for k, n in have.items() if n > 0},
        {k: n for k, n in pending.items() if n > 0},
        lost,
    )


def outcome_of(
    targets: Mapping[inputs.CandidateKey, int],
    cands: Mapping[inputs.CandidateKey, inputs.Candidate],
    sid: str,
    previous: reconcile.ServiceOutcome | None,
) -> reconcile.ServiceOutcome:
    """The reconciler's view of the autoscaler's targets for one service."""
    placements = tuple(
        v1alpha1.RolePlacement(
            role=k.role,  # type: ignore[arg-type]
            pool=k.pool,
            accelerator=cands[k].accelerator,
            precision=k.precision,  # type: ignore[arg-type]
            tensor_parallel=k.tp,
            replicas=n,
            # The engine settings the candidate was priced with: its pods must run exactly these.
            engine_config=v1alpha1.PricedEngineConfig(
                prefill_chunk_tokens=cands[k].engine_config.prefill_chunk_tokens,
                max_num_seqs=cands[k].engine_config.max_num_seqs,
                max_model_len=cands[k].engine_config.max_model_len,
            ),
        )
        for k, n in sorted(targets.items())
        if k.service == sid and n > 0 and k in cands
    )
    cost: dict[tuple[str, str, str], float] = {}
    for k, n in targets.items():
        if k.service == sid and n > 0 and k in cands:
            series = (k.role, cands[k].accelerator, k.pool)
            cost[series] = cost.get(series, 0.0) + n * cands[k].price_per_hour
    return reconcile.ServiceOutcome(
        placements=placements,
        prediction=previous.prediction if previous is not None else None,
        served="served",
        cost_dollars_per_hour=cost,
    )


@dataclasses.dataclass
class Autoscaler:
    """State kept between ticks: the decision state, the candidates (cached by spec) and the outcomes."""

    policy: autoscale.Policy = dataclasses.field(default_factory=autoscale.Policy)
    state: autoscale.State = dataclasses.field(default_factory=autoscale.State)
    outcomes: dict[str, reconcile.ServiceOutcome] = dataclasses.field(default_factory=dict)
    labels: Mapping[str, str] = dataclasses.field(default_factory=dict)
    # Prometheus rate() window of the signals (observe.DEFAULT_WINDOW unless the operator's flag says).
    rate_window: str = observe.DEFAULT_WINDOW
    # The last Autoscaling condition reason per service (Events say when it changes).
    conditions: dict[str, str] = dataclasses.field(default_factory=dict)
    # When each service's metrics came back after an outage (monotonic seconds of the tick clock).
    restored: dict[str, float] = dataclasses.field(default_factory=dict)
    planner: planning.Planner = dataclasses.field(default_factory=planning.Planner)
    _cache_key: tuple[Any, ...] | None = None
    _cset: candidates.CandidateSet | None = None
    started_s: float | None = None

    def _candidates(
        self,
        services: Sequence[v1alpha1.InferenceService],
        pools: Sequence[v1alpha1.AcceleratorPool],
        profiles: Sequence[v1alpha1.PerformanceProfile],
    ) -> candidates.CandidateSet:
        """Candidates depend on specs and pools, not on traffic: rebuilt only when one of those changes."""
        key = (
            tuple((s.metadata.uid, s.metadata.generation) for s in services),
            tuple((p.metadata.name, p.metadata.generation, p.spec.nodes) for p in pools),
            tuple((p.metadata.name, p.metadata.generation) for p in profiles),
        )
        if key != self._cache_key or self._cset is None:
            # The planner's per-(service, pool) cache: a node count or a rate change re-prices nothing,
            # one service's spec only its pools (tests/unit/test_planner.py: the same candidates).
            self._cset = self.planner.build_inputs(services, pools, profiles)
            self._cache_key = key
        return self._cset

    def tick(
        self,
        services: Sequence[v1alpha1.InferenceService],
        pools: Sequence[v1alpha1.AcceleratorPool],
        profiles: Sequence[v1alpha1.PerformanceProfile],
        query: observe.QueryFn | None,
        now_s: float,
    ) -> list[ServiceReport]:
        """One observe -> decide step for the fleet; no Kubernetes I/O."""
        if query is None:
            return [
                ServiceReport(
                    s.metadata.namespace or "default",
                    s.metadata.name,
                    None,
                    None,
                    (
                        False,
                        "NoPrometheus",
                        "no Prometheus URL configured (autoscaling.prometheusUrl): sized "
                        "from spec.workload only",
                    ),
                    None,
                )
                for s in services
            ]
        cset = self._candidates(services, pools, profiles)
        by_id = {planning.service_id(s): s for s in services}
        observations: dict[str, autoscale.Observation] = {}
        roles_seen: dict[str, dict[str, observe.RoleSignals]] = {}
        errors: dict[str, str] = {}
        gateways: dict[str, observe.GatewaySignals] = {}
        for sid, spec in cset.specs.items():
            service = by_id[sid]
            namespace = service.metadata.namespace or "default"
            table = observe.metrics_for(service.spec.engine)
            roles = ("prefill", "decode") if spec.serving == "disaggregated" else ("aggregated",)
            signals = {}
            for role in roles:
                sel = observe.selector(namespace, service.metadata.name, role, **self.labels)
                signals[role] = observe.read_role(query, observe.queries(table, sel, self.rate_window))
            roles_seen[sid] = signals
            first_error = next((r.error for r in signals.values() if r.error), None)
            if first_error:
                errors[sid] = first_error
            observations[sid] = observe.observation(signals, spec.workload)
            if _scale_to_zero(service):
                # At zero replicas no engine reports anything: the activator's count is the demand.
                gateway = observe.read_gateway(
                    query, observe.gateway_queries(namespace, service.metadata.name, self.rate_window)
                )
                gateways[sid] = gateway
                observations[sid] = observe.with_gateway(observations[sid], gateway)
        # Metrics that come back after an outage: a rate() window holding the gap reads low (its samples
        # cover part of the window). Hold until one whole window of fresh samples, so a decrease never
        # rests on a partial window.
        warming: dict[str, str] = {}
        window_s = observe.window_seconds(self.rate_window)
        for sid in list(observations):
            if sid in errors or observations[sid].missing:
                self.restored.pop(sid, None)
                continue
            if self.conditions.get(sid) in OUTAGE_REASONS:
                since = self.restored.setdefault(sid, now_s)
                if now_s - since < window_s:
                    warming[sid] = (
                        f"metrics back for {now_s - since:.0f} s: holding the last decision until one "
                        f"full {self.rate_window} rate window of fresh samples"
                    )
                    observations[sid] = autoscale.Observation(requests_per_second=None)
                    continue
            self.restored.pop(sid, None)
        traits = {
            sid: autoscale.ServiceTraits(
                spec.ttft_p99_ms,
                spec.itl_p99_ms,
                scale_to_zero=_scale_to_zero(by_id[sid]),
            )
            for sid, spec in cset.specs.items()
        }
        current, starting = current_replicas(services)
        current, starting, lost = fit_to_capacity(current, starting, cset.problem)
        lost_services = {k.service for k in lost}
        for key, n in lost.items():
            logger.info("%s: %d replica(s) on %s lost their nodes (reclaimed?)", key.service, n, key.pool)
        decision = autoscale.decide(
            cset.problem,
            traits,
            self.state,
            observations,
            current,
            now_s,
            self.policy,
            starting=starting,
            # The planner's solve rules (the fleet's: chipfit.handlers.solve_options), the policy's churn.
            options=self.planner.options,
        )
        self.state = decision.state
        cands = {c.key: c for c in cset.problem.candidates}
        reports = []
        for d in decision.services:
            service = by_id[d.service]
            namespace = service.metadata.namespace or "default"
            obs = observations[d.service]
            signals = roles_seen[d.service]
            front = signals.get("aggregated") or signals.get("prefill")
            out_tps = sum(
                r.output_tokens_per_second or 0.0 for r in signals.values() if r.output_tokens_per_second
            )
            price = d.price_per_hour
            previous = self.outcomes.get(d.service)
            decided = any(k.service == d.service for k in decision.targets)
            outcome: reconcile.ServiceOutcome | None
            release = d.held and obs.missing and d.service in lost_services
            if release:
                # Metrics missing and replicas lost with their nodes: holding would keep them on a pool
                # that is gone. The fleet's spec-sized plan re-places the service on what exists until
                # metrics return (then the autoscaler decides from what runs).
                outcome = None
                self.outcomes.pop(d.service, None)
            elif d.held and previous is None and not decided:
                # Nothing decided and nothing running yet (a new service, metrics not there yet): the
                # fleet's spec-sized plan stands. Holding "nothing" would remove it.
                outcome = None
            else:
                outcome = outcome_of(decision.targets, cands, d.service, previous)
                self.outcomes[d.service] = outcome
            status = v1alpha1.AutoscalingStatus(
                observed_requests_per_second=obs.requests_per_second,
                observed_ttft_p99_ms=obs.ttft_p99_ms,
                observed_itl_p99_ms=obs.itl_p99_ms,
                slo_attainment=front.ttft_within(traits[d.service].ttft_p99_ms) if front else None,
                sized_requests_per_second=d.sizing_rps,
                capacity_correction=d.correction,
                dollars_per_hour=price,
                observed_dollars_per_million_output_tokens=(
                    price / (out_tps * 3600.0) * 1e6 if out_tps > 0.0 else None
                ),
                last_decision=d.direction,
                last_decision_reason=d.reason[: v1alpha1.MAX_TEXT_LENGTH],
                last_decision_time=_now(),
                pending_requests=gateways[d.service].pending if d.service in gateways else None,
                cold_start_seconds=gateways[d.service].cold_start_s if d.service in gateways else None,
            )
            if release:
                lost_n = sum(n for k, n in lost.items() if k.service == d.service)
                condition = (
                    False,
                    "CapacityLostWithoutMetrics",
                    f"{lost_n} replica(s) lost their nodes while metrics are missing: re-planned from "
                    "spec.workload until metrics return",
                )
            elif sid_error := errors.get(d.service):
                condition = (False, "MetricsUnavailable", f"holding the last decision: {sid_error}")
            elif d.service in warming:
                condition = (False, "MetricsWarmingUp", warming[d.service])
            elif d.held and obs.missing:
                condition = (False, "MetricsMissing", d.reason)
            else:
                condition = (True, "Active", d.reason)
            # One Event per decision that changes replicas; for missing metrics one when they go missing
            # (not one per tick while they stay away) and one when they are back.
            was = self.conditions.get(d.service)
            self.conditions[d.service] = condition[1]
            event = None
            if d.direction != "hold":
                event = ("Normal", f"Scaled{d.direction.capitalize()}", d.reason)
            elif not condition[0] and was not in OUTAGE_REASONS:
                event = ("Warning", "MetricsMissing", condition[2])
            elif condition[0] and was in OUTAGE_REASONS:
                event = ("Normal", "MetricsRestored", f"metrics are back: {d.reason}")
            reports.append(
                ServiceReport(namespace, service.metadata.name, outcome, status, condition, event, release)
            )
        return reports


def condition_patch(
    service: v1alpha1.InferenceService, report: ServiceReport, now: str
) -> list[dict[str, Any]]:
    """The service's conditions with "Autoscaling" set (its transition time moves only when it flips)."""
    old = list((service.status.conditions if service.status else None) or ())
    previous = {c.type: c for c in old}
    ok, reason, message = report.condition
    value = "True" if ok else "False"
    was = previous.get(CONDITION)
    since = was.last_transition_time if was is not None and was.status == value else now
    new = v1alpha1.Condition(
        type=CONDITION,
        status=value,  # type: ignore[arg-type]
        reason=reason,
        message=message[: v1alpha1.MAX_TEXT_LENGTH],
        last_transition_time=since,
        observed_generation=service.metadata.generation,
    )
    kept = [c for c in old if c.type != CONDITION]
    return [c.model_dump(mode="json", by_alias=True, exclude_none=True) for c in [*kept, new]]


# How often the loop looks at the fleet's nodes between decisions: a node that vanishes (a spot reclaim)
# is acted on within this, not within a whole interval.
NODE_WATCH_S = 1.0


def _nodes_signature(fleet: Any) -> int:
    """A hash of the nodes the fleet worker's watch knows (ready state, devices, labels)."""
    return hash(tuple(sorted((getattr(fleet, "node_fingerprints", None) or {}).items())))


async def run(
    autoscaler: Autoscaler,
    fleet: Any,
    query: observe.QueryFn | None,
    clock: Callable[[], float],
) -> None:
    """Every policy.interval_s, or at once when the nodes change: one tick in a worker thread, then
    status, Events and reconciles."""
    while True:
        nodes = _nodes_signature(fleet)
        try:
            await asyncio.to_thread(_apply_tick, autoscaler, fleet, query, clock())
        except Exception:
            logger.exception("autoscaling tick failed; holding and retrying next interval")
        deadline = clock() + autoscaler.policy.interval_s
        while clock() < deadline:
            await asyncio.sleep(min(NODE_WATCH_S, max(0.0, deadline - clock())))
            if _nodes_signature(fleet) != nodes:
                logger.info("nodes changed: deciding now")
                break


def _apply_tick(autoscaler: Autoscaler, fleet: Any, query: observe.QueryFn | None, now_s: float) -> None:
    """Read the cluster, tick, and write what the tick decided (the only I/O of the loop)."""
    from chipfit import handlers, kube

    cluster: kube.Kube = fleet.cluster
    services = [
        handlers.parse_service(b)
        for b in cluster.list_inference_services()
        if not b["metadata"].get("deletionTimestamp")
    ]
    valid = [s for s in services if handlers.first_problem(s, None) is None]
    declared = [v1alpha1.AcceleratorPool.model_validate(handlers._plain(p)) for p in cluster.list_pools()]
    # Decide on the nodes that are there, as the fleet re-plan does: a reclaimed spot node drops out of
    # its pool at the next tick and the solver moves its replicas to capacity that exists.
    nodes = cluster.list_nodes()
    owners = reconcile.node_owners(declared, nodes)
    pools = [
        p.model_copy(
            update={
                "spec": p.spec.model_copy(update={"nodes": fleet._capacity(p, nodes, owners).nodes_ready})
            }
        )
        for p in declared
    ]
    profiles = [
        v1alpha1.PerformanceProfile.model_validate(handlers._plain(p)) for p in cluster.list_profiles()
    ]
    by_name = {(s.metadata.namespace or "default", s.metadata.name): s for s in valid}
    now = _now()
    for report in autoscaler.tick(valid, pools, profiles, query, now_s):
        service = by_name[(report.namespace, report.name)]
        body = service.model_dump(mode="json", by_alias=True, exclude_none=True)
        patch: dict[str, Any] = {"conditions": condition_patch(service, report, now)}
        if report.status is not None:
            patch["autoscaling"] = report.status.model_dump(mode="json", by_alias=True, exclude_none=True)
            fleet.metrics.record_autoscale_attainment(
                report.namespace, report.name, report.status.slo_attainment
            )
        old = service.status.to_wire() if service.status else {}
        if all(old.get(key) == value for key, value in patch.items()):
            pass  # nothing new: no write (the status's resourceVersion stays)
        else:
            # `conditions` is written whole (a merge patch replaces lists): only onto the version read, so a
            # fleet reconcile's newer Ready/Placed conditions are never reverted (409: next tick retries).
            try:
                cluster.patch_status(
                    kube.KINDS.inference_service,
                    report.namespace,
                    report.name,
                    patch,
                    resource_version=service.metadata.resource_version,
                )
            except kube.ApiError as exc:
                if exc.status != HTTP_CONFLICT:
                    raise
                logger.info(
                    "%s/%s changed since it was read: its autoscaling status waits for the next tick",
                    report.namespace,
                    report.name,
                )
        if report.event is not None:
            cluster.post_event(body, *report.event)
        if report.release:
            fleet.autoscaled.pop(planning.service_id(service), None)
            fleet.request_replan(f"autoscaler released {report.namespace}/{report.name}: capacity lost")
        if report.outcome is not None:
            fleet.autoscaled[planning.service_id(service)] = report.outcome
            fleet.outcomes[planning.service_id(service)] = report.outcome
            if report.event is not None and report.event[1].startswith("Scaled"):
                fleet.request_service(report.namespace, report.name)
                fleet.metrics.record_autoscale_decision(report.namespace, report.name, report.event[1])
