"""One step of a ProfilingRun's reconcile: start its Job, collect its result, watch the engine version.

Called from kopf event handlers (chipfit.handlers.profilingrun_event and those of its Job and of its
service) with the run's body; every step is idempotent (server-side apply, status patches), so a restart
or a step repeated on another event does no harm. The pure parts (what to create, what the result
becomes) live in chipfit.profiling.job.
"""

from __future__ import annotations

import datetime
import logging
import os
from collections.abc import Mapping
from typing import Any, Final, Protocol

from chipfit import kube, render
from chipfit.api import v1alpha1
from chipfit.profiling import job

logger = logging.getLogger("chipfit.profiling")

# The profiler runs chipfit's own image; the chart sets this to the operator's image.
PROFILER_IMAGE_ENV: Final = "CHIPFIT_PROFILER_IMAGE"
DEFAULT_PROFILER_IMAGE: Final = "chipfit:0.1.0"


class Cluster(Protocol):
    """What a step needs of chipfit.kube.Kube."""

    def get_inference_service(self, namespace: str, name: str) -> dict[str, Any] | None: ...
    def get_job(self, namespace: str, name: str) -> dict[str, Any] | None: ...
    def list_pods(self, namespace: str, label_selector: str) -> list[dict[str, Any]]: ...
    def apply(self, obj: Mapping[str, Any]) -> None: ...
    def patch_status(
        self, kinds: tuple[str, str], namespace: str | None, name: str, status: Mapping[str, Any]
    ) -> None: ...
    def post_event(self, involved: Mapping[str, Any], type_: str, reason: str, message: str) -> None: ...


def profiler_image() -> str:
    """The image the profiler Job runs."""
    return os.environ.get(PROFILER_IMAGE_ENV) or DEFAULT_PROFILER_IMAGE


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _service(cluster: Cluster, run: v1alpha1.ProfilingRun) -> v1alpha1.InferenceService | None:
    raw = cluster.get_inference_service(run.spec.service.namespace, run.spec.service.name)
    if raw is None:
        return None
    raw.setdefault("apiVersion", v1alpha1.API_VERSION)
    raw.setdefault("kind", "InferenceService")
    return v1alpha1.InferenceService.model_validate(raw)


def _patch(cluster: Cluster, run: v1alpha1.ProfilingRun, **fields: Any) -> None:
    status = v1alpha1.ProfilingRunStatus(observed_generation=run.metadata.generation, **fields)
    cluster.patch_status(kube.KINDS.profiling_run, None, run.metadata.name, status.to_wire())


def step(cluster: Cluster, body: Mapping[str, Any], image: str | None = None) -> str:
    """Advance the run by one step; returns its phase afterwards."""
    run = v1alpha1.ProfilingRun.model_validate(body)
    phase = run.status.phase if run.status else None
    if phase in (None, "Pending"):
        return _start(cluster, body, run, image or profiler_image())
    if phase == "Running":
        return _collect(cluster, body, run)
    if phase == "Succeeded":
        _check_engine(cluster, run)
    return phase


def _fail(
    cluster: Cluster, body: Mapping[str, Any], run: v1alpha1.ProfilingRun, reason: str, message: str
) -> str:
    _patch(
        cluster,
        run,
        phase="Failed",
        message=message,
        conditions=[
            v1alpha1.Condition(
                type="Succeeded", status="False", reason=reason, message=message, last_transition_time=_now()
            )
        ],
    )
    cluster.post_event(body, "Warning", reason, message)
    return "Failed"


def _start(cluster: Cluster, body: Mapping[str, Any], run: v1alpha1.ProfilingRun, image: str) -> str:
    service = _service(cluster, run)
    if service is None:
        ref = run.spec.service
        return _fail(
            cluster,
            body,
            run,
            "ServiceNotFound",
            f"spec.service: no InferenceService {ref.namespace}/{ref.name}",
        )
    try:
        placement = job.target_placement(run, service)
        engine_image = job.engine_image(service, placement)
        objects = [
            job.render_profiling_service(run, service, placement),
            job.render_profiling_job(run, service, placement, image, engine_image),
        ]
    except job.ProfilingError as error:
        return _fail(cluster, body, run, "InvalidTarget", str(error))
    for obj in objects:
        cluster.apply(obj)
    replicas = placement.ready_replicas if placement.ready_replicas is not None else placement.replicas
    _patch(
        cluster,
        run,
        phase="Running",
        job=job.object_name(run),
        target=job.target_url(run),
        engine_image=engine_image,
        replicas=replicas,
        message=f"measuring {placement.accelerator} x{placement.tensor_parallel} {placement.precision} on "
        f"pool {placement.pool} through {max(1, replicas)} replica(s)",
    )
    return "Running"


def _collect(cluster: Cluster, body: Mapping[str, Any], run: v1alpha1.ProfilingRun) -> str:
    namespace = run.spec.service.namespace
    name = job.object_name(run)
    selector = f"{job.LABEL_RUN}={kube_label(run.metadata.name)}"
    for pod in cluster.list_pods(namespace, selector):
        finished = job.finished_container(pod)
        if finished is None:
            continue
        code, message = finished
        if code not in (job.EXIT_MEASURED, job.EXIT_PARTIAL):
            return _fail(cluster, body, run, "ProfilerFailed", f"the profiler exited {code}: {message[:500]}")
        try:
            profile = job.render_profile(
                run, message, run.status.replicas if run.status and run.status.replicas else 1
            )
        except job.ProfilingError as error:
            return _fail(cluster, body, run, "InvalidResult", str(error))
        cluster.apply(profile)
        partial = profile["spec"].get("partialReason")
        text = f"wrote PerformanceProfile {profile['metadata']['name']}" + (
            f" (partial: {partial})" if partial else ""
        )
        _patch(
            cluster,
            run,
            phase="Succeeded",
            profile=profile["metadata"]["name"],
            message=text,
            conditions=[
                v1alpha1.Condition(
                    type="Succeeded",
                    status="True",
                    reason="PartialProfile" if partial else "Profiled",
                    message=text,
                    last_transition_time=_now(),
                )
            ],
        )
        cluster.post_event(body, "Normal", "Profiled", text)
        return "Succeeded"
    raw_job = cluster.get_job(namespace, name)
    for condition in ((raw_job or {}).get("status") or {}).get("conditions") or ():
        if condition.get("type") == "Failed" and condition.get("status") == "True":
            return _fail(
                cluster,
                body,
                run,
                "JobFailed",
                f"Job {namespace}/{name}: {condition.get('reason')}: {condition.get('message')}",
            )
    if raw_job is None:
        return _fail(cluster, body, run, "JobMissing", f"Job {namespace}/{name} is gone before it reported")
    return "Running"


def kube_label(value: str) -> str:
    """The label value a run's objects carry."""
    return render.label_value(value)


def _check_engine(cluster: Cluster, run: v1alpha1.ProfilingRun) -> None:
    """Offer re-profiling when the pool's engine image changed (a condition, never a silent re-run)."""
    service = _service(cluster, run)
    if service is None:
        return
    try:
        current = job.engine_image(service, job.target_placement(run, service))
    except job.ProfilingError:
        return
    condition = job.engine_changed_condition(run, current, _now())
    if condition is None:
        return
    existing = {c.type: c for c in (run.status.conditions if run.status and run.status.conditions else [])}
    old = existing.get(condition.type)
    if old is not None and old.status == condition.status and old.reason == condition.reason:
        return
    existing[condition.type] = condition
    cluster.patch_status(
        kube.KINDS.profiling_run,
        None,
        run.metadata.name,
        {"conditions": [c.to_wire() for c in existing.values()]},
    )
