"""In-cluster profiling: pure renderers of a ProfilingRun's Service and Job, and of the profile it yields.

A ProfilingRun names an InferenceService and one of its pools. The operator renders
- a ClusterIP Service selecting exactly that pool's serving Deployment (the service's own Service spreads
  over every pool), and
- a Job whose single container runs `chipfit profile` (chipfit's own image) against it. The Job needs no
  API access at all (no service account token): it writes the measured profile's spec as compact JSON to
  its termination message, which the operator reads from the finished pod and turns into a
  PerformanceProfile owned by the run.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any, Final

from chipfit import engines, render, rules
from chipfit.api import v1alpha1
from placement import catalog

COMPONENT: Final = "profiler"
LABEL_RUN: Final = "chipfit.io/profiling-run"
TERMINATION_LOG: Final = "/dev/termination-log"
# Seconds granted beyond the load itself: image pull, start, the two tokenizer probes, writing.
JOB_DEADLINE_SLACK_S: Final = 300
# Finished Jobs (and their pods, whose termination message is the result) are kept this long.
JOB_TTL_AFTER_FINISHED_S: Final = 24 * 3600
# The profiler is an HTTP client: a fraction of a core, a few hundred MB for thousands of open streams.
PROFILER_CPU_REQUEST: Final = "500m"
PROFILER_MEMORY_REQUEST: Final = "256Mi"
PROFILER_MEMORY_LIMIT: Final = "1Gi"
# The chipfit image's unprivileged user (Dockerfile: CHIPFIT_UID).
CHIPFIT_UID: Final = 10001
# Exit codes of `chipfit profile`: 0 measured, 1 partial profile written.
EXIT_MEASURED: Final = 0
EXIT_PARTIAL: Final = 1


class ProfilingError(ValueError):
    """A run cannot be rendered or its result used; `field` names what is wrong."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


def target_placement(
    run: v1alpha1.ProfilingRun, service: v1alpha1.InferenceService
) -> v1alpha1.RolePlacement:
    """The aggregated placement of the service on the run's pool."""
    placed = service.status.placement if service.status else None
    for placement in placed or ():
        if placement.pool == run.spec.pool and placement.role == "aggregated":
            return placement
    pools = sorted({p.pool for p in placed or () if p.role == "aggregated"})
    raise ProfilingError(
        "spec.pool",
        f"InferenceService {service.metadata.namespace}/{service.metadata.name} has no aggregated "
        f"replicas on pool {run.spec.pool!r} (placed on: {', '.join(pools) or 'none'})",
    )


def owner_reference(run: v1alpha1.ProfilingRun) -> dict[str, Any]:
    """The run owns what it creates; deleting it deletes them (the profile too)."""
    if not run.metadata.uid:
        raise ProfilingError("metadata.uid", "is empty: render objects for a run read from the cluster")
    return {
        "apiVersion": v1alpha1.API_VERSION,
        "kind": "ProfilingRun",
        "name": run.metadata.name,
        "uid": run.metadata.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def _labels(run: v1alpha1.ProfilingRun) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "chipfit-profiler",
        "app.kubernetes.io/component": COMPONENT,
        "app.kubernetes.io/part-of": "chipfit",
        "app.kubernetes.io/managed-by": render.MANAGED_BY,
        LABEL_RUN: render.label_value(run.metadata.name),
    }


def object_name(run: v1alpha1.ProfilingRun) -> str:
    """Name of the run's Service and Job (in the service's namespace)."""
    return render.object_name("profile", run.metadata.name)


def target_url(run: v1alpha1.ProfilingRun) -> str:
    """In-cluster URL of the run's Service."""
    return f"http://{object_name(run)}.{run.spec.service.namespace}.svc:{render.SERVICE_HTTP_PORT}"


def engine_image(service: v1alpha1.InferenceService, placement: v1alpha1.RolePlacement) -> str:
    """The engine image the placement's Deployment runs (the renderer's choice, or the override)."""
    overrides = service.spec.overrides
    if overrides is not None and overrides.image:
        return overrides.image
    chip = catalog.get_accelerator(placement.accelerator)
    sizing = render.sizing(service, placement)
    return engines.launch(render.launch_request(service, placement, chip, sizing)).image


def render_profiling_service(
    run: v1alpha1.ProfilingRun, service: v1alpha1.InferenceService, placement: v1alpha1.RolePlacement
) -> dict[str, Any]:
    """A ClusterIP Service selecting exactly the Deployment of (service, aggregated, pool, config)."""
    role, pool, config = render.placement_key(placement)
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": object_name(run),
            "namespace": run.spec.service.namespace,
            "labels": _labels(run),
            "ownerReferences": [owner_reference(run)],
        },
        "spec": {
            "type": "ClusterIP",
            "selector": render.selector_labels(service.metadata.name, role, pool, config),
            "ports": [
                {"name": "http", "port": render.SERVICE_HTTP_PORT, "targetPort": "http", "protocol": "TCP"}
            ],
        },
    }


def profile_args(
    run: v1alpha1.ProfilingRun,
    service: v1alpha1.InferenceService,
    placement: v1alpha1.RolePlacement,
    image_of_engine: str,
) -> list[str]:
    """`chipfit profile` arguments for the run (the profile records chip, precision, tp and engine)."""
    load = run.spec.load
    model = service.spec.model
    args = [
        "profile",
        "--url",
        target_url(run),
        "--api",
        load.api,
        "--accelerator",
        placement.accelerator,
        "--precision",
        placement.precision,
        "--tp",
        str(placement.tensor_parallel),
        "--engine",
        service.spec.engine,
        "--engine-image",
        image_of_engine,
        "--served-model",
        rules.model_name(service.spec.model),
        "--name",
        run.metadata.name,
        "--prompt-tokens",
        str(load.prompt_tokens),
        "--output-tokens",
        str(load.output_tokens),
        "--duration",
        str(load.duration_seconds),
        "--warmup",
        str(load.warmup_seconds),
        "--timeout",
        str(load.timeout_seconds),
        "--termination-log",
        TERMINATION_LOG,
        "--output",
        "/tmp/profile.yaml",
        "--quiet",
    ]
    if model.id is not None:
        args += ["--model", model.id]
    elif model.architecture is not None:
        args += [
            "--model",
            rules.model_name(service.spec.model),
            "--architecture",
            json.dumps(model.architecture.to_wire(), separators=(",", ":"), sort_keys=True),
        ]
    if load.requests_per_second:
        args += ["--rate", ",".join(f"{r:g}" for r in load.requests_per_second)]
    else:
        args += ["--concurrency", ",".join(str(c) for c in load.concurrency or (1, 2, 4, 8, 16))]
    return args


def deadline_seconds(load: v1alpha1.ProfilingLoad) -> int:
    """activeDeadlineSeconds: every level's warm-up, window and a last request's timeout, plus slack."""
    levels = len(load.requests_per_second or load.concurrency or (1, 2, 4, 8, 16))
    per_level = load.warmup_seconds + load.duration_seconds + load.timeout_seconds
    return levels * per_level + JOB_DEADLINE_SLACK_S


def render_profiling_job(
    run: v1alpha1.ProfilingRun,
    service: v1alpha1.InferenceService,
    placement: v1alpha1.RolePlacement,
    profiler_image: str,
    image_of_engine: str,
) -> dict[str, Any]:
    """The Job that measures the pool's Deployment once and reports through its termination message."""
    labels = _labels(run)
    container = {
        "name": COMPONENT,
        "image": run.spec.image or profiler_image,
        "command": ["chipfit"],
        "args": profile_args(run, service, placement, image_of_engine),
        "terminationMessagePath": TERMINATION_LOG,
        "terminationMessagePolicy": "File",
        "resources": {
            "requests": {"cpu": PROFILER_CPU_REQUEST, "memory": PROFILER_MEMORY_REQUEST},
            "limits": {"memory": PROFILER_MEMORY_LIMIT},
        },
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
        },
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
    }
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": object_name(run),
            "namespace": run.spec.service.namespace,
            "labels": labels,
            "ownerReferences": [owner_reference(run)],
        },
        "spec": {
            # One measurement: a retry would measure a different moment and double the load.
            "backoffLimit": 0,
            "activeDeadlineSeconds": deadline_seconds(run.spec.load),
            "ttlSecondsAfterFinished": JOB_TTL_AFTER_FINISHED_S,
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "restartPolicy": "Never",
                    # The profiler talks to the engine only: no Kubernetes API access.
                    "automountServiceAccountToken": False,
                    "securityContext": {
                        "runAsNonRoot": True,
                        "runAsUser": CHIPFIT_UID,
                        "runAsGroup": CHIPFIT_UID,
                        "seccompProfile": {"type": "RuntimeDefault"},
                    },
                    "containers": [container],
                    "volumes": [{"name": "tmp", "emptyDir": {"sizeLimit": "64Mi"}}],
                },
            },
        },
    }


def finished_container(pod: Mapping[str, Any]) -> tuple[int, str] | None:
    """(exit code, termination message) of the profiler container once it has terminated, else None."""
    for status in pod.get("status", {}).get("containerStatuses") or ():
        if status.get("name") != COMPONENT:
            continue
        terminated = (status.get("state") or {}).get("terminated")
        if terminated:
            return int(terminated.get("exitCode", -1)), str(terminated.get("message") or "")
    return None


def render_profile(
    run: v1alpha1.ProfilingRun, message: str, replicas: int, measured_at: str | None = None
) -> dict[str, Any]:
    """The PerformanceProfile of a finished run from the Job's termination message (the profile's spec).

    The Job measured `replicas` ready replicas behind one Service; kube-proxy spreads connections evenly, so
    per replica the rates and tokens/s are divided by that count and the concurrency is its share
    (rounded up). Raises ProfilingError when the message is not a profile spec.
    """
    try:
        raw = json.loads(message)
    except json.JSONDecodeError:
        raise ProfilingError(
            "status.terminationMessage", f"not a profile (not JSON): {message[:120]!r}"
        ) from None
    try:
        spec = v1alpha1.PerformanceProfileSpec.model_validate(raw)
    except ValueError as error:
        first = str(error).splitlines()
        raise ProfilingError(
            "status.terminationMessage", f"not a valid profile spec: {' '.join(first[:3])}"
        ) from None
    share = max(1, replicas)
    if share > 1 and spec.points:
        spec.points = [
            point.model_copy(
                update={
                    "concurrency": max(1, math.ceil(point.concurrency / share)),
                    "requests_per_second": point.requests_per_second / share
                    if point.requests_per_second
                    else None,
                    "output_tokens_per_second": point.output_tokens_per_second / share,
                    "offered_requests_per_second": (
                        point.offered_requests_per_second / share
                        if point.offered_requests_per_second
                        else None
                    ),
                }
            )
            for point in spec.points
        ]
        spec.source.description = (
            f"{spec.source.description}; measured through {share} replicas, per-replica share recorded"
        )[: v1alpha1.MAX_TEXT_LENGTH]
    if measured_at and not spec.source.measured_at:
        spec.source.measured_at = measured_at
    profile = v1alpha1.PerformanceProfile(
        metadata=v1alpha1.ObjectMeta(
            name=run.metadata.name, labels={LABEL_RUN: render.label_value(run.metadata.name)}
        ),
        spec=spec,
    )
    body = profile.to_wire()
    body["metadata"] = {
        "name": run.metadata.name,
        "labels": {LABEL_RUN: render.label_value(run.metadata.name)},
        "ownerReferences": [owner_reference(run)],
    }
    return body


def engine_changed_condition(
    run: v1alpha1.ProfilingRun, current_image: str | None, now: str
) -> v1alpha1.Condition | None:
    """`ProfileCurrent` False when the pool's engine image changed since the run measured it.

    The profile is kept (it is still a measurement of the old engine, and the calibration only applies it
    to that version); re-profiling is offered, never done silently: create a new ProfilingRun.
    """
    status = run.status
    if status is None or status.phase != "Succeeded" or not status.engine_image or current_image is None:
        return None
    if current_image == status.engine_image:
        return v1alpha1.Condition(
            type="ProfileCurrent",
            status="True",
            reason="EngineUnchanged",
            message=f"the pool still runs {current_image}",
            last_transition_time=now,
        )
    return v1alpha1.Condition(
        type="ProfileCurrent",
        status="False",
        reason="EngineChanged",
        message=f"measured {status.engine_image}, the pool now runs {current_image}: create a new "
        "ProfilingRun to re-profile (the old profile stays, applied to its own engine version only)",
        last_transition_time=now,
    )
