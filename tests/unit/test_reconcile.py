"""Reconcile decisions: rollout ordering, no-op detection, conditions."""

from __future__ import annotations

import dataclasses
from typing import Any

from chipfit import engines, reconcile, render
from chipfit.api import v1alpha1
from tests.unit.chipfit_builders import POOLS, SERVICES, placement

SIZING = engines.Sizing(max_model_len_tokens=8192, max_concurrent_sequences=64)
T0 = "2026-01-01T00:00:00Z"
T1 = "2026-01-01T00:05:00Z"


def desired_for(
    service: v1alpha1.InferenceService, placements: list[v1alpha1.RolePlacement]
) -> list[dict[str, Any]]:
    sizings = {render.placement_key(p): SIZING for p in placements}
    return render.render_all(service, placements, POOLS, sizings)


def live_of(
    objects: list[dict[str, Any]], ready: dict[str, int] | None = None
) -> tuple[list[reconcile.LiveDeployment], list[reconcile.LiveService]]:
    """The cluster after applying `objects`; `ready` maps Deployment name -> ready replicas (default all)."""
    deployments, services = [], []
    for obj in (reconcile.stamp(o) for o in objects):
        meta = obj["metadata"]
        h = meta["annotations"][reconcile.SPEC_HASH_ANNOTATION]
        if obj["kind"] == "Deployment":
            replicas = obj["spec"]["replicas"]
            deployments.append(
                reconcile.LiveDeployment(
                    name=meta["name"],
                    role=meta["labels"][render.LABEL_ROLE],
                    pool=meta["labels"].get(render.LABEL_POOL, ""),
                    config=meta["labels"].get(render.LABEL_CONFIG, ""),
                    replicas=replicas,
                    ready_replicas=(ready or {}).get(meta["name"], replicas),
                    up_to_date=True,
                    spec_hash=h,
                )
            )
        else:
            services.append(
                reconcile.LiveService(name=meta["name"], selector=obj["spec"]["selector"], spec_hash=h)
            )
    return deployments, services


def names(objs: tuple[dict[str, Any], ...]) -> set[str]:
    return {o["metadata"]["name"] for o in objs}


CHAT = SERVICES["chat-8b"]
OLD = [placement("aggregated", "l4-g6", replicas=4)]
NEW = [placement("aggregated", "h100-p5", replicas=1)]


def test_first_reconcile_applies_everything() -> None:
    actions = reconcile.plan_actions(desired_for(CHAT, OLD), [], [])
    assert names(actions.apply) == {"chat-8b-aggregated-l4-g6-bf16-tp1", "chat-8b"}
    assert actions.delete == ()
    assert all(reconcile.SPEC_HASH_ANNOTATION in o["metadata"]["annotations"] for o in actions.apply)


def test_second_reconcile_is_a_noop() -> None:
    desired = desired_for(CHAT, OLD)
    deployments, services = live_of(desired)
    actions = reconcile.plan_actions(desired, deployments, services)
    assert actions.is_noop


def test_replica_drift_is_corrected() -> None:
    desired = desired_for(CHAT, OLD)
    deployments, services = live_of(desired)
    scaled = [d.__class__(**{**d.__dict__, "replicas": 1}) for d in deployments]
    actions = reconcile.plan_actions(desired, scaled, services)
    assert names(actions.apply) == {"chat-8b-aggregated-l4-g6-bf16-tp1"}


def test_new_placement_comes_up_before_the_old_drains() -> None:
    old_live, services = live_of(desired_for(CHAT, OLD))
    desired = desired_for(CHAT, NEW)
    # Pass 1: new Deployment applied, old kept.
    actions = reconcile.plan_actions(desired, old_live, services)
    assert names(actions.apply) == {"chat-8b-aggregated-h100-p5-bf16-tp1"}
    assert actions.delete == ()
    assert any("drains" in w for w in actions.waiting)
    # Pass 2: new exists but not ready: still nothing deleted.
    new_live, _ = live_of(desired, ready={"chat-8b-aggregated-h100-p5-bf16-tp1": 0})
    actions = reconcile.plan_actions(desired, old_live + new_live, services)
    assert actions.delete == ()
    # Pass 3: new ready: the old one goes.
    new_live, _ = live_of(desired)
    actions = reconcile.plan_actions(desired, old_live + new_live, services)
    assert actions.delete == (("Deployment", "chat-8b-aggregated-l4-g6-bf16-tp1"),)
    assert actions.apply == ()


def test_stale_ready_replicas_of_an_old_template_do_not_count() -> None:
    desired = desired_for(CHAT, NEW)
    old_live, services = live_of(desired_for(CHAT, OLD))
    new_live, _ = live_of(desired)
    stale = [d.__class__(**{**d.__dict__, "spec_hash": "0000"}) for d in new_live]
    actions = reconcile.plan_actions(desired, old_live + stale, services)
    assert actions.delete == ()


def test_switch_to_disaggregated_holds_user_service_until_ready() -> None:
    service = SERVICES["assistant-70b"]
    old = [placement("aggregated", "h100-p5", tp=4, replicas=2, precision="fp8")]
    new = [
        placement("prefill", "h100-p5", tp=2, replicas=1, precision="fp8"),
        placement("decode", "h200-p5e", tp=2, replicas=2, precision="fp8"),
    ]
    old_live, old_services = live_of(desired_for(service, old))
    desired = desired_for(service, new)
    actions = reconcile.plan_actions(desired, old_live, old_services)
    assert "assistant-70b" not in names(actions.apply)  # the user Service keeps pointing at aggregated
    assert {
        "assistant-70b-prefill-h100-p5-fp8-tp2",
        "assistant-70b-decode-h200-p5e-fp8-tp2",
        "assistant-70b-router",
    } <= names(actions.apply)
    assert actions.delete == ()
    new_live, new_services = live_of(desired)
    user_old = [s for s in old_services if s.name == "assistant-70b"]
    actions = reconcile.plan_actions(
        desired, old_live + new_live, user_old + [s for s in new_services if s.name != "assistant-70b"]
    )
    assert "assistant-70b" in names(actions.apply)
    assert ("Deployment", "assistant-70b-aggregated-h100-p5-fp8-tp4") in actions.delete


def test_unplanned_service_objects_are_deleted() -> None:
    live, services = live_of(desired_for(CHAT, OLD))
    actions = reconcile.plan_actions([], live, services)
    assert set(actions.delete) == {
        ("Deployment", "chat-8b-aggregated-l4-g6-bf16-tp1"),
        ("Service", "chat-8b"),
    }


def outcome(
    placements: list[v1alpha1.RolePlacement], served: reconcile.Served = "served", reason: str | None = None
) -> reconcile.ServiceOutcome:
    return reconcile.ServiceOutcome(
        placements=tuple(placements),
        prediction=v1alpha1.Prediction(ttft_p99_ms=210.0, itl_p99_ms=31.0, dollars_per_hour=3.24),
        served=served,
        reason=reason,
    )


def conditions(status: v1alpha1.InferenceServiceStatus) -> dict[str, v1alpha1.Condition]:
    return {c.type: c for c in status.conditions or ()}


def with_status(
    service: v1alpha1.InferenceService, status: v1alpha1.InferenceServiceStatus
) -> v1alpha1.InferenceService:
    return service.model_copy(update={"status": status})


def test_status_ready_placed_and_summaries() -> None:
    service = CHAT.model_copy(deep=True)
    service.metadata.generation = 3
    live, _ = live_of(desired_for(service, OLD))
    status = reconcile.compute_status(service, outcome(OLD), live, None, T0)
    c = conditions(status)
    assert (c["Placed"].status, c["Ready"].status, c["SLOAttainable"].status, c["Degraded"].status) == (
        "True",
        "True",
        "True",
        "False",
    )
    assert status.observed_generation == 3
    assert status.accelerator_summary == "l4x4"
    assert status.replicas_summary == "4/4"
    assert status.placement is not None and status.placement[0].ready_replicas == 4
    assert all(x.observed_generation == 3 for x in c.values())


def test_status_rolling_out_then_noop() -> None:
    old_live, _ = live_of(desired_for(CHAT, OLD))
    new_live, _ = live_of(desired_for(CHAT, NEW), ready={"chat-8b-aggregated-h100-p5-bf16-tp1": 0})
    status = reconcile.compute_status(CHAT, outcome(NEW), old_live + new_live, None, T0)
    c = conditions(status)
    assert c["Ready"].status == "False" and c["Ready"].reason == "RollingOut"
    assert c["Degraded"].status == "False"
    # Same facts later: the status is identical (times preserved) and no patch is needed.
    again = reconcile.compute_status(with_status(CHAT, status), outcome(NEW), old_live + new_live, None, T1)
    assert reconcile.status_patch(status, again) is None


def test_transition_time_moves_only_on_flip() -> None:
    live_not_ready, _ = live_of(desired_for(CHAT, OLD), ready={"chat-8b-aggregated-l4-g6-bf16-tp1": 0})
    first = reconcile.compute_status(CHAT, outcome(OLD), live_not_ready, None, T0)
    live, _ = live_of(desired_for(CHAT, OLD))
    second = reconcile.compute_status(with_status(CHAT, first), outcome(OLD), live, None, T1)
    assert conditions(second)["Ready"].last_transition_time == T1
    assert conditions(second)["Placed"].last_transition_time == T0
    patch = reconcile.status_patch(first, second)
    assert patch is not None and patch["replicasSummary"] == "4/4"


def test_lost_replicas_degrade_and_stay_degraded() -> None:
    live, _ = live_of(desired_for(CHAT, OLD))
    ready = reconcile.compute_status(CHAT, outcome(OLD), live, None, T0)
    lost, _ = live_of(desired_for(CHAT, OLD), ready={"chat-8b-aggregated-l4-g6-bf16-tp1": 2})
    degraded = reconcile.compute_status(with_status(CHAT, ready), outcome(OLD), lost, None, T1)
    assert conditions(degraded)["Degraded"].status == "True"
    assert conditions(degraded)["Degraded"].reason == "ReplicasUnavailable"
    still = reconcile.compute_status(with_status(CHAT, degraded), outcome(OLD), lost, None, T1)
    assert conditions(still)["Degraded"].status == "True"


def test_partial_plan_is_degraded_and_slo_unattainable() -> None:
    live, _ = live_of(desired_for(CHAT, OLD))
    status = reconcile.compute_status(CHAT, outcome(OLD, "partial", "l4-g6 is full"), live, None, T0)
    c = conditions(status)
    assert c["SLOAttainable"].status == "False" and c["SLOAttainable"].reason == "CapacityShort"
    assert c["Degraded"].status == "True" and "l4-g6 is full" in c["Degraded"].message


def test_unserved_is_not_placed() -> None:
    status = reconcile.compute_status(
        CHAT, outcome([], "unserved", "no allowed pool has capacity"), [], None, T0
    )
    c = conditions(status)
    assert c["Placed"].status == "False" and c["Placed"].reason == "NoCapacity"
    assert c["Ready"].status == "False" and c["Ready"].reason == "NotPlaced"
    assert status.accelerator_summary == "none"


def test_invalid_spec_names_the_field() -> None:
    status = reconcile.invalid_status(CHAT, "spec.workload.maxContextTokens", "exceeds 131072", T0)
    placed = conditions(status)["Placed"]
    assert placed.status == "False" and placed.reason == "InvalidSpec"
    assert placed.message.startswith("spec.workload.maxContextTokens: ")


def test_status_patch_removes_dropped_fields() -> None:
    old = v1alpha1.InferenceServiceStatus(observed_generation=1, accelerator_summary="l4x4")
    new = v1alpha1.InferenceServiceStatus(observed_generation=2)
    assert reconcile.status_patch(old, new) == {"acceleratorSummary": None, "observedGeneration": 2}


def node(
    name: str, labels: dict[str, str], allocatable: dict[str, str], ready: bool = True, cordoned: bool = False
) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "labels": labels},
        "spec": {"unschedulable": True} if cordoned else {},
        "status": {
            "allocatable": allocatable,
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
        },
    }


def test_pool_capacity_counts_ready_schedulable_matching_nodes() -> None:
    pool = POOLS["inf2-48xl"]
    labels = dict(pool.spec.node_selector)
    nodes = [
        node("a", labels, {"aws.amazon.com/neuroncore": "24"}),
        node("b", labels, {"aws.amazon.com/neuroncore": "24"}, ready=False),
        node("c", labels, {"aws.amazon.com/neuroncore": "24"}, cordoned=True),
        node("d", {"other": "x"}, {"aws.amazon.com/neuroncore": "24"}),
        node("e", labels, {}),
    ]
    capacity = reconcile.pool_capacity(pool, "aws.amazon.com/neuroncore", 2, nodes)
    assert (capacity.nodes_ready, capacity.devices_total) == (1, 12)
    # The pool's own taint is tolerated; an unreachable node's taint is not.
    nodes[0]["spec"]["taints"] = [
        {"key": "aws.amazon.com/neuron", "value": "present", "effect": "NoSchedule"}
    ]
    assert reconcile.pool_capacity(pool, "aws.amazon.com/neuroncore", 2, nodes).nodes_ready == 1
    nodes[0]["spec"]["taints"].append({"key": "node.kubernetes.io/unreachable", "effect": "NoExecute"})
    assert reconcile.pool_capacity(pool, "aws.amazon.com/neuroncore", 2, nodes).nodes_ready == 0


def test_live_deployment_reads_rollout_state() -> None:
    body = reconcile.stamp(desired_for(CHAT, OLD)[0])
    body["metadata"]["generation"] = 2
    body["status"] = {"observedGeneration": 2, "updatedReplicas": 4, "readyReplicas": 3}
    live = reconcile.live_deployment(body)
    assert (live.role, live.pool, live.config, live.replicas, live.ready_replicas) == (
        "aggregated",
        "l4-g6",
        "bf16-tp1",
        4,
        3,
    )
    assert (
        live.up_to_date and live.spec_hash == body["metadata"]["annotations"][reconcile.SPEC_HASH_ANNOTATION]
    )
    body["status"]["observedGeneration"] = 1
    assert not reconcile.live_deployment(body).up_to_date
    assert reconcile.owned_by(body, "0f7c7a4e-1f0e-4d55-9a49-2c1f5f0d8b11")
    assert not reconcile.owned_by(body, "another")


def test_prediction_kept_while_placement_and_spec_are_unchanged() -> None:
    live, _ = live_of(desired_for(CHAT, OLD))
    first = reconcile.compute_status(CHAT, outcome(OLD), live, None, T0)
    jittered = dataclasses.replace(
        outcome(OLD), prediction=v1alpha1.Prediction(ttft_p99_ms=250.0, itl_p99_ms=31.0)
    )
    again = reconcile.compute_status(with_status(CHAT, first), jittered, live, None, T1)
    assert reconcile.status_patch(first, again) is None
    moved = reconcile.compute_status(
        with_status(CHAT, first), dataclasses.replace(jittered, placements=tuple(NEW)), live, None, T1
    )
    assert moved.predicted is not None and moved.predicted.ttft_p99_ms == 250.0


def test_objects_of_a_deleted_namesake_are_recognised() -> None:
    body = desired_for(CHAT, OLD)[0]
    assert not reconcile.controlled_by_other_service(
        body, "chat-8b", body["metadata"]["ownerReferences"][0]["uid"]
    )
    assert reconcile.controlled_by_other_service(body, "chat-8b", "a-new-uid")
    assert not reconcile.controlled_by_other_service(body, "other-service", "a-new-uid")


def test_device_units_of_rendered_objects() -> None:
    objects = desired_for(SERVICES["rag-70b"], [placement("aggregated", "h100-p5", tp=4, precision="fp8")])
    units = {o["kind"]: reconcile.device_units_of(o) for o in objects}
    assert units == {"Deployment": 4, "Service": 0}


def test_unschedulable_pods_are_explained_in_ready() -> None:
    pending = {
        "status": {
            "phase": "Pending",
            "conditions": [
                {
                    "type": "PodScheduled",
                    "status": "False",
                    "reason": "Unschedulable",
                    "message": "0/2 nodes are available: 2 Insufficient nvidia.com/gpu. preemption: 0/2",
                }
            ],
        }
    }
    running = {"status": {"phase": "Running"}}
    reason = reconcile.unschedulable_reason([running, pending, pending])
    assert reason == "2 pod(s) unschedulable: 0/2 nodes are available: 2 Insufficient nvidia.com/gpu."
    assert reconcile.unschedulable_reason([running]) is None
    live, _ = live_of(desired_for(CHAT, OLD), ready={"chat-8b-aggregated-l4-g6-bf16-tp1": 2})
    status = reconcile.compute_status(CHAT, outcome(OLD), live, None, T0, reason)
    assert "Insufficient nvidia.com/gpu" in conditions(status)["Ready"].message


def _holding(deployments: list[reconcile.LiveDeployment], units: int) -> list[reconcile.LiveDeployment]:
    return [dataclasses.replace(d, units_per_replica=units) for d in deployments]


def test_a_replacement_surges_while_the_pool_has_room_for_both() -> None:
    old_live, services = live_of(desired_for(CHAT, OLD))
    old_live = _holding(old_live, 1)
    desired = desired_for(CHAT, NEW)
    pool = old_live[0].pool
    actions = reconcile.plan_actions(desired, old_live, services, {pool: old_live[0].units})
    assert actions.delete == ()
    assert actions.drained_early == ()
    assert actions.surge_units == {pool: old_live[0].units}


def test_a_replacement_with_no_room_beside_it_drains_first() -> None:
    # The re-plan fills the old replica's pool: waiting for the new one to be ready would leave it Pending
    # behind the replica it replaces for ever, so the old one goes now.
    old_live, services = live_of(desired_for(CHAT, OLD))
    old_live = _holding(old_live, 1)
    desired = desired_for(CHAT, NEW)
    pool = old_live[0].pool
    actions = reconcile.plan_actions(desired, old_live, services, {pool: old_live[0].units - 1})
    assert actions.delete == (("Deployment", old_live[0].name),)
    assert actions.drained_early == (old_live[0].name,)
    assert actions.surge_units == {}
    # Without a room bound (no plan yet) the replica waits, as before.
    assert reconcile.plan_actions(desired, old_live, services).delete == ()


def test_live_deployment_reads_the_units_a_replica_requests() -> None:
    desired = desired_for(CHAT, OLD)
    deployment = next(o for o in desired if o["kind"] == "Deployment")
    live = reconcile.live_deployment(deployment)
    assert live.units_per_replica == reconcile.device_units_of(deployment) > 0
    assert live.units == live.replicas * live.units_per_replica
