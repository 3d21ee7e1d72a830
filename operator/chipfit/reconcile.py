"""Pure reconcile decisions: what to apply, what to delete and when, and the status to write.

Rollout order (safe changes): the Deployments of a new placement are applied at once; a Deployment the
plan no longer wants is deleted only when every desired Deployment of its role is ready (all roles, when
the serving mode changed), so serving capacity never drops below the plan's. The user-facing Service keeps
its old selector until its new side is ready. No-op detection: each rendered object carries a hash of its
content; an object whose live hash and replica count match is not applied again, and a status equal to the
current one (transition times preserved) is not written.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import Any, Final, Literal

from chipfit import render
from chipfit.api import v1alpha1

SPEC_HASH_ANNOTATION: Final = "chipfit.io/spec-hash"
CONDITION_TYPES: Final = ("Placed", "Ready", "SLOAttainable", "Degraded")
Served = Literal["served", "partial", "unserved"]


@dataclasses.dataclass(frozen=True)
class LiveDeployment:
    """What the cluster says about one Deployment the service owns."""

    name: str
    role: str
    pool: str
    config: str
    replicas: int
    ready_replicas: int
    # The controller has rolled out the current template to every replica.
    up_to_date: bool
    spec_hash: str | None
    # Extended-resource units (GPUs, MIG slices, NeuronCores) one replica requests.
    units_per_replica: int = 0

    @property
    def units(self) -> int:
        """Units all its replicas hold."""
        return self.replicas * self.units_per_replica


@dataclasses.dataclass(frozen=True)
class LiveService:
    """One Service the service owns."""

    name: str
    selector: Mapping[str, str]
    spec_hash: str | None


@dataclasses.dataclass(frozen=True)
class ServiceOutcome:
    """The fleet plan's part for one service: placements (replicas > 0), prediction, how much is served."""

    placements: tuple[v1alpha1.RolePlacement, ...]
    prediction: v1alpha1.Prediction | None
    served: Served
    reason: str | None = None
    # Per (role, accelerator, pool): the plan's $/h and the request rate routed there (metrics).
    cost_dollars_per_hour: Mapping[tuple[str, str, str], float] = dataclasses.field(default_factory=dict)
    routed_requests_per_second: Mapping[tuple[str, str, str], float] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class Actions:
    """One reconcile pass: objects to apply, (kind, name) to delete, and why anything waits."""

    apply: tuple[dict[str, Any], ...]
    delete: tuple[tuple[str, str], ...]
    waiting: tuple[str, ...]
    # Replaced Deployments deleted before their replacement is ready: the pool has no room for both.
    drained_early: tuple[str, ...] = ()
    # Units per pool label that replaced-but-kept Deployments hold beyond the plan (the surge).
    surge_units: Mapping[str, int] = dataclasses.field(default_factory=dict)

    @property
    def is_noop(self) -> bool:
        """True when nothing needs writing."""
        return not self.apply and not self.delete


# --- hashing ---------------------------------------------------------------------------------------------


def spec_hash(obj: Mapping[str, Any]) -> str:
    """sha256 over the object's content without its own hash annotation (canonical JSON)."""
    body = json.loads(json.dumps(obj, sort_keys=True))
    annotations = body.get("metadata", {}).get("annotations", {})
    annotations.pop(SPEC_HASH_ANNOTATION, None)
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:16]


def stamp(obj: dict[str, Any]) -> dict[str, Any]:
    """A copy of `obj` carrying its content hash as an annotation."""
    out: dict[str, Any] = json.loads(json.dumps(obj))
    out["metadata"].setdefault("annotations", {})[SPEC_HASH_ANNOTATION] = spec_hash(obj)
    return out


# --- actions ---------------------------------------------------------------------------------------------


def _role_of(obj: Mapping[str, Any]) -> str:
    return str(obj["metadata"]["labels"].get(render.LABEL_ROLE, ""))


def device_units_of(obj: Mapping[str, Any]) -> int:
    """Extended-resource units one pod of a rendered Deployment requests (0 for anything else)."""
    return _units_per_pod(obj["spec"]) if obj.get("kind") == "Deployment" else 0


def _units_per_pod(deployment_spec: Mapping[str, Any]) -> int:
    """Extended-resource units (any `vendor/resource` limit) the first container of a pod requests."""
    containers = ((deployment_spec.get("template") or {}).get("spec") or {}).get("containers") or [{}]
    limits = (containers[0].get("resources") or {}).get("limits") or {}
    return sum(int(v) for k, v in limits.items() if "/" in k)


def plan_actions(
    desired: Sequence[dict[str, Any]],
    deployments: Sequence[LiveDeployment],
    services: Sequence[LiveService],
    room_units: Mapping[str, int] | None = None,
) -> Actions:
    """Apply what changed, delete what the plan dropped once its replacement is ready.

    `room_units` (pool label -> extended-resource units the plan leaves free on that pool) bounds the
    surge: a replaced Deployment that waits for its replacement keeps its units on top of the plan's, so
    one whose units do not fit in the room left is deleted at once instead (break before make) — but only
    while other ready replicas of its role keep serving: serving never stops. The solver avoids such
    plans in the first place (SolveOptions.surge_shortfall_price_factor). None means unbounded room.
    """
    stamped = [stamp(o) for o in desired]
    live_deployments = {d.name: d for d in deployments}
    live_services = {s.name: s for s in services}
    desired_deployments = [o for o in stamped if o["kind"] == "Deployment"]
    desired_names = {(o["kind"], o["metadata"]["name"]) for o in stamped}

    # Readiness of the new placement per role: ready replicas of desired Deployments, capped at desired.
    wanted: dict[str, int] = {}
    ready: dict[str, int] = {}
    for obj in desired_deployments:
        role = _role_of(obj)
        replicas = int(obj["spec"]["replicas"])
        wanted[role] = wanted.get(role, 0) + replicas
        live = live_deployments.get(obj["metadata"]["name"])
        fresh = (
            live is not None
            and live.up_to_date
            and live.spec_hash == obj["metadata"]["annotations"][SPEC_HASH_ANNOTATION]
        )
        ready[role] = ready.get(role, 0) + (
            min(live.ready_replicas, replicas) if live is not None and fresh else 0
        )
    role_ready = {role: ready.get(role, 0) >= count for role, count in wanted.items()}
    all_ready = all(role_ready.values())

    apply: list[dict[str, Any]] = []
    waiting: list[str] = []
    for obj in stamped:
        name = obj["metadata"]["name"]
        obj_hash = obj["metadata"]["annotations"][SPEC_HASH_ANNOTATION]
        if obj["kind"] == "Deployment":
            live = live_deployments.get(name)
            if live is None or live.spec_hash != obj_hash or live.replicas != obj["spec"]["replicas"]:
                apply.append(obj)
        elif obj["kind"] == "Service":
            live_svc = live_services.get(name)
            if live_svc is not None and live_svc.spec_hash == obj_hash:
                continue
            selector = obj["spec"]["selector"]
            switching = live_svc is not None and dict(live_svc.selector) != selector
            if switching and not all_ready:
                # Keep routing users to the old side until the new one serves.
                waiting.append(f"Service {name} keeps its selector until the new placement is ready")
                continue
            apply.append(obj)
        else:
            apply.append(obj)

    delete: list[tuple[str, str]] = []
    drained_early: list[str] = []
    room = dict(room_units) if room_units is not None else None
    # Ready replicas per role across every live Deployment, old and new: what serves right now.
    serving: dict[str, int] = {}
    for live in deployments:
        serving[live.role] = serving.get(live.role, 0) + live.ready_replicas
    surge: dict[str, int] = {}
    for live in deployments:
        if ("Deployment", live.name) in desired_names:
            continue
        replaced = role_ready.get(live.role, all_ready) if live.role in wanted else all_ready
        if replaced:
            delete.append(("Deployment", live.name))
        elif (
            room is not None
            and live.units > room.get(live.pool, 0)
            and serving.get(live.role, 0) - live.ready_replicas > 0
        ):
            # No room to run it beside its replacement, and the role keeps serving without it.
            delete.append(("Deployment", live.name))
            drained_early.append(live.name)
            serving[live.role] = serving.get(live.role, 0) - live.ready_replicas
        else:
            if room is not None:
                room[live.pool] = room.get(live.pool, 0) - live.units
                surge[live.pool] = surge.get(live.pool, 0) + live.units
            waiting.append(f"Deployment {live.name} drains once the new {live.role} replicas are ready")
    for live_svc in services:
        if ("Service", live_svc.name) not in desired_names:
            if all_ready:
                delete.append(("Service", live_svc.name))
            else:
                waiting.append(f"Service {live_svc.name} is removed once the new placement is ready")
    return Actions(
        apply=tuple(apply),
        delete=tuple(delete),
        waiting=tuple(waiting),
        drained_early=tuple(drained_early),
        surge_units=surge,
    )


# --- status ----------------------------------------------------------------------------------------------


def _condition(
    previous: Mapping[str, v1alpha1.Condition],
    type_: str,
    status: bool,
    reason: str,
    message: str,
    generation: int | None,
    now: str,
) -> v1alpha1.Condition:
    """A condition whose lastTransitionTime moves only when its status flips."""
    value: Literal["True", "False"] = "True" if status else "False"
    old = previous.get(type_)
    since = old.last_transition_time if old is not None and old.status == value else now
    return v1alpha1.Condition(
        type=type_,
        status=value,
        reason=reason,
        message=message[: v1alpha1.MAX_TEXT_LENGTH],
        last_transition_time=since,
        observed_generation=generation,
    )


def _same_placement(
    old: Sequence[v1alpha1.RolePlacement] | None, new: Sequence[v1alpha1.RolePlacement]
) -> bool:
    """Same roles, pools, chips, precisions, TP and replicas (ready counts aside)."""
    return sorted((*render.placement_key(p), p.accelerator, str(p.replicas)) for p in old or ()) == sorted(
        (*render.placement_key(p), p.accelerator, str(p.replicas)) for p in new
    )


def accelerator_summary(placements: Sequence[v1alpha1.RolePlacement]) -> str:
    """`h100x4 + l4x3`: devices per accelerator over all roles, largest first (for kubectl get)."""
    devices: dict[str, int] = {}
    for p in placements:
        devices[p.accelerator] = devices.get(p.accelerator, 0) + p.replicas * p.tensor_parallel
    ordered = sorted(devices.items(), key=lambda kv: (-kv[1], kv[0]))
    return " + ".join(f"{acc}x{count}" for acc, count in ordered if count > 0) or "none"


def compute_status(
    service: v1alpha1.InferenceService,
    outcome: ServiceOutcome | None,
    deployments: Sequence[LiveDeployment],
    actions: Actions | None,
    now: str,
    unschedulable: str | None = None,
) -> v1alpha1.InferenceServiceStatus:
    """Status after a reconcile: placement with ready counts, prediction, summaries and conditions."""
    generation = service.metadata.generation
    old_status = service.status or v1alpha1.InferenceServiceStatus()
    previous = {c.type: c for c in old_status.conditions or ()}
    live = {(d.role, d.pool, d.config): d for d in deployments}
    if outcome is None:
        conditions = [
            _condition(previous, "Placed", False, "Planning", "waiting for the fleet plan", generation, now),
            _condition(previous, "Ready", False, "Planning", "nothing placed yet", generation, now),
            _condition(previous, "SLOAttainable", False, "Planning", "not planned yet", generation, now),
            _condition(previous, "Degraded", False, "Planning", "not planned yet", generation, now),
        ]
        return v1alpha1.InferenceServiceStatus(observed_generation=generation, conditions=conditions)

    if (
        _same_placement(old_status.placement, outcome.placements)
        and old_status.observed_generation == generation
    ):
        # Equivalent solves route traffic differently (LP degeneracy), moving the predicted p99 a little;
        # the prediction refreshes when the placement or the spec changes, not on every re-plan.
        outcome = dataclasses.replace(outcome, prediction=old_status.predicted or outcome.prediction)
    placements = []
    desired_total = ready_total = 0
    for p in outcome.placements:
        d = live.get(render.placement_key(p))
        ready_count = min(d.ready_replicas, p.replicas) if d is not None and d.up_to_date else 0
        placements.append(p.model_copy(update={"ready_replicas": ready_count}))
        desired_total += p.replicas
        ready_total += ready_count
    planned = {render.placement_key(p) for p in outcome.placements}
    routers = [d for d in deployments if d.role == render.ROUTER_ROLE]
    draining = [
        d for d in deployments if d.role != render.ROUTER_ROLE and (d.role, d.pool, d.config) not in planned
    ]
    split = any(p.role != "aggregated" for p in outcome.placements)
    router_ready = not split or any(d.up_to_date and d.ready_replicas >= max(d.replicas, 1) for d in routers)
    waiting = list(actions.waiting) if actions is not None else []

    # Placed: the plan gives the service replicas (or nothing is demanded).
    if outcome.placements:
        placed = _condition(
            previous,
            "Placed",
            True,
            "Planned",
            f"placed on {accelerator_summary(placements)}",
            generation,
            now,
        )
    elif outcome.served == "served":
        placed = _condition(previous, "Placed", True, "NoDemand", "no replicas needed", generation, now)
    else:
        placed = _condition(
            previous, "Placed", False, "NoCapacity", outcome.reason or "no pool can host it", generation, now
        )
    # Ready: every planned replica ready and no old placement left to drain.
    unplaced = not outcome.placements and outcome.served != "served"
    all_ready = ready_total >= desired_total and not draining and router_ready and not unplaced
    if all_ready:
        ready = _condition(
            previous,
            "Ready",
            True,
            "ReplicasReady",
            f"{ready_total}/{desired_total} replicas ready",
            generation,
            now,
        )
    else:
        if unplaced:
            reason = "NotPlaced"
        elif draining:
            reason = "RollingOut"
        else:
            reason = "ReplicasNotReady" if ready_total < desired_total else "RouterNotReady"
        detail = f"{ready_total}/{desired_total} replicas ready" + (
            "" if router_ready else "; router not ready"
        )
        detail += f"; {waiting[0]}" if waiting else ""
        detail += f"; {unschedulable}" if unschedulable else ""
        ready = _condition(previous, "Ready", False, reason, detail, generation, now)
    # SLOAttainable: the plan serves the whole declared workload within the SLO.
    if outcome.served == "served":
        slo = _condition(
            previous, "SLOAttainable", True, "PlanMeetsSLO", _prediction_text(outcome), generation, now
        )
    else:
        reason = "CapacityShort" if outcome.served == "partial" else "Unattainable"
        slo = _condition(
            previous, "SLOAttainable", False, reason, outcome.reason or outcome.served, generation, now
        )
    # Degraded: serving less than planned for a reason other than a rollout in progress.
    short = outcome.served == "partial"
    was_ready = "Ready" in previous and previous["Ready"].status == "True"
    was_lost = "Degraded" in previous and previous["Degraded"].reason == "ReplicasUnavailable"
    lost = ready_total < desired_total and not draining and (was_ready or was_lost)
    if short:
        degraded = _condition(
            previous, "Degraded", True, "CapacityShort", outcome.reason or "partly served", generation, now
        )
    elif lost:
        degraded = _condition(
            previous,
            "Degraded",
            True,
            "ReplicasUnavailable",
            f"{ready_total}/{desired_total} replicas ready",
            generation,
            now,
        )
    else:
        degraded = _condition(previous, "Degraded", False, "AsPlanned", "serving as planned", generation, now)
    # Conditions other writers own (the autoscaler's "Autoscaling") are kept as they are.
    owned = {"Placed", "Ready", "SLOAttainable", "Degraded"}
    others = [c for c in old_status.conditions or () if c.type not in owned]
    return v1alpha1.InferenceServiceStatus(
        observed_generation=generation,
        conditions=[placed, ready, slo, degraded, *others],
        placement=placements,
        accelerator_summary=accelerator_summary(placements),
        replicas_summary=f"{ready_total}/{desired_total}",
        predicted=outcome.prediction,
        autoscaling=old_status.autoscaling,
    )


def _prediction_text(outcome: ServiceOutcome) -> str:
    p = outcome.prediction
    if p is None or p.ttft_p99_ms is None or p.itl_p99_ms is None:
        return "the plan serves the declared workload"
    return f"predicted p99 TTFT {p.ttft_p99_ms:.0f} ms, ITL {p.itl_p99_ms:.1f} ms at the declared workload"


def invalid_status(
    service: v1alpha1.InferenceService, field: str, reason: str, now: str
) -> v1alpha1.InferenceServiceStatus:
    """Status of a spec chipfit cannot act on: Placed False with the field named, the rest kept."""
    old = service.status or v1alpha1.InferenceServiceStatus()
    previous = {c.type: c for c in old.conditions or ()}
    generation = service.metadata.generation
    placed = _condition(previous, "Placed", False, "InvalidSpec", f"{field}: {reason}", generation, now)
    others = [c for c in old.conditions or () if c.type != "Placed"]
    return old.model_copy(update={"conditions": [placed, *others], "observed_generation": generation})


def status_patch(
    old: v1alpha1.InferenceServiceStatus | None, new: v1alpha1.InferenceServiceStatus
) -> dict[str, Any] | None:
    """The status body to write, or None when it equals what is there (no churn)."""
    new_wire = new.to_wire()
    old_wire = old.to_wire() if old is not None else {}
    if new_wire == old_wire:
        return None
    # Fields the new status drops are nulled so a merge patch removes them.
    patch: dict[str, Any] = {key: None for key in old_wire if key not in new_wire}
    patch.update(new_wire)
    return patch


# --- reading the cluster (pure: dicts in, typed facts out) -----------------------------------------------


@dataclasses.dataclass(frozen=True)
class PoolCapacity:
    """What a pool's ready, schedulable nodes offer."""

    pool: str
    nodes_ready: int
    devices_total: int


def _node_ready(node: Mapping[str, Any]) -> bool:
    conditions = (node.get("status") or {}).get("conditions") or ()
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def _quantity_int(value: Any) -> int:
    """An extended-resource quantity as an integer (device plugins advertise plain integers)."""
    try:
        return int(str(value))
    except ValueError:
        return 0


def _matches(selector: Mapping[str, str], node: Mapping[str, Any]) -> bool:
    labels = (node.get("metadata") or {}).get("labels") or {}
    return all(labels.get(k) == v for k, v in selector.items())


def _repels(pool: v1alpha1.AcceleratorPool, node: Mapping[str, Any]) -> bool:
    """True when the node carries a NoSchedule/NoExecute taint the pool's pods do not tolerate."""
    tolerated = {(t.key, t.value, t.effect) for t in pool.spec.taints}
    for taint in (node.get("spec") or {}).get("taints") or ():
        if taint.get("effect") not in ("NoSchedule", "NoExecute"):
            continue
        if (taint.get("key"), taint.get("value", ""), taint.get("effect")) not in tolerated:
            return True
    return False


def node_owners(
    pools: Sequence[v1alpha1.AcceleratorPool], nodes: Sequence[Mapping[str, Any]]
) -> dict[str, str]:
    """Node name -> the one pool it counts in: of the pools whose pods may land on it, the narrowest.

    A pool's pods require its nodeSelector's labels and its declared chip's node label
    (render.node_labels, the same labels their node affinity names).

    A node belongs to one pool only, so its devices are never counted twice. Narrowest: the pool whose
    selector matches the fewest of `nodes`, then the one with the most selector labels, then by name.
    Selectors overlap in two ways, and both give the node to the pool whose nodes are a subset of the
    other's:
    - nested: a spot pool adds a capacity-type label to the on-demand pool's selector;
    - not nested: a pool selecting {chipfit.io/pool: team-l4} and another selecting the instance type and
      GPU product that those nodes (and others) also carry. Counting labels alone gave every such node to
      the broader pool (two labels beat one) and left the narrower pool with no nodes at all.
    """
    # The labels a pool's pods require (its nodeSelector and its declared chip's node label): the nodes it
    # can use are the nodes its pods can land on.
    selectors = {p.metadata.name: render.node_labels(p) for p in pools}
    matched = {name: sum(1 for node in nodes if _matches(sel, node)) for name, sel in selectors.items()}
    ranked = sorted(
        pools, key=lambda p: (matched[p.metadata.name], -len(selectors[p.metadata.name]), p.metadata.name)
    )
    owners: dict[str, str] = {}
    for node in nodes:
        for pool in ranked:
            if _matches(selectors[pool.metadata.name], node):
                owners[node["metadata"]["name"]] = pool.metadata.name
                break
    return owners


def pool_capacity(
    pool: v1alpha1.AcceleratorPool,
    resource: str,
    units_per_device: int,
    nodes: Sequence[Mapping[str, Any]],
    owners: Mapping[str, str] | None = None,
) -> PoolCapacity:
    """Ready, schedulable nodes of the pool (per `owners`, else by the labels its pods require) and their
    devices."""
    ready_nodes = 0
    devices = 0
    for node in nodes:
        if owners is not None:
            if owners.get(node["metadata"]["name"]) != pool.metadata.name:
                continue
        elif not _matches(render.node_labels(pool), node):
            continue
        if (node.get("spec") or {}).get("unschedulable") or not _node_ready(node) or _repels(pool, node):
            continue
        allocatable = (node.get("status") or {}).get("allocatable") or {}
        node_devices = _quantity_int(allocatable.get(resource, 0)) // units_per_device
        if node_devices > 0:
            ready_nodes += 1
            devices += node_devices
    return PoolCapacity(pool=pool.metadata.name, nodes_ready=ready_nodes, devices_total=devices)


def owned_by(obj: Mapping[str, Any], uid: str) -> bool:
    """True when `obj` has a controller ownerReference to the object with `uid`."""
    refs = (obj.get("metadata") or {}).get("ownerReferences") or ()
    return any(r.get("uid") == uid and r.get("controller") for r in refs)


def unschedulable_reason(pods: Sequence[Mapping[str, Any]]) -> str | None:
    """The scheduler's message for the first Pending pod it could not place (None when there is none)."""
    stuck = 0
    message = None
    for pod in pods:
        if (pod.get("status") or {}).get("phase") != "Pending":
            continue
        for c in (pod.get("status") or {}).get("conditions") or ():
            if (
                c.get("type") == "PodScheduled"
                and c.get("status") == "False"
                and c.get("reason") == "Unschedulable"
            ):
                stuck += 1
                message = message or str(c.get("message", "")).split(" preemption:")[0]
    if not stuck:
        return None
    return f"{stuck} pod(s) unschedulable: {message}"


def controlled_by_other_service(obj: Mapping[str, Any], name: str, uid: str) -> bool:
    """True when an InferenceService named `name` but with another uid (a deleted predecessor) controls it."""
    refs = (obj.get("metadata") or {}).get("ownerReferences") or ()
    return any(
        r.get("controller")
        and r.get("kind") == "InferenceService"
        and r.get("name") == name
        and r.get("uid") != uid
        for r in refs
    )


def live_deployment(obj: Mapping[str, Any]) -> LiveDeployment:
    """The facts plan_actions and compute_status need from a Deployment body."""
    meta = obj["metadata"]
    spec = obj.get("spec") or {}
    status = obj.get("status") or {}
    replicas = int(spec.get("replicas", 1))
    updated = int(status.get("updatedReplicas") or 0)
    observed = int(status.get("observedGeneration") or 0)
    return LiveDeployment(
        name=meta["name"],
        role=(meta.get("labels") or {}).get(render.LABEL_ROLE, ""),
        pool=(meta.get("labels") or {}).get(render.LABEL_POOL, ""),
        config=(meta.get("labels") or {}).get(render.LABEL_CONFIG, ""),
        replicas=replicas,
        ready_replicas=int(status.get("readyReplicas") or 0),
        up_to_date=observed >= int(meta.get("generation") or 0) and updated >= replicas,
        spec_hash=(meta.get("annotations") or {}).get(SPEC_HASH_ANNOTATION),
        units_per_replica=_units_per_pod(spec),
    )


def live_service(obj: Mapping[str, Any]) -> LiveService:
    """The facts plan_actions needs from a Service body."""
    meta = obj["metadata"]
    return LiveService(
        name=meta["name"],
        selector=dict((obj.get("spec") or {}).get("selector") or {}),
        spec_hash=(meta.get("annotations") or {}).get(SPEC_HASH_ANNOTATION),
    )
