"""Pure renderers: (service, role placement, pool, sizing) -> Kubernetes manifests as plain dicts.

Per (role, pool) one Deployment; per role one Service (stable across pools, so moving a role to other
chips keeps its address); per disaggregated service a router Deployment and the Service users call.
No I/O: chipfit.kube applies what these return.
"""

from __future__ import annotations

import hashlib
import math
import re
import shlex
from collections.abc import Mapping, Sequence
from typing import Any, Final

from chipfit import engines, planning, rules
from chipfit.api import v1alpha1
from placement import catalog

FIELD_MANAGER: Final = "chipfit"
LABEL_SERVICE: Final = "chipfit.io/service"
LABEL_ROLE: Final = "chipfit.io/role"
LABEL_POOL: Final = "chipfit.io/pool"
LABEL_ACCELERATOR: Final = "chipfit.io/accelerator"
# Precision and tensor parallel of a Deployment: part of its name and selector, so a new configuration on
# the same pool is a new Deployment that comes up before the old one drains.
LABEL_CONFIG: Final = "chipfit.io/config"
ROUTER_ROLE: Final = "router"
MANAGED_BY: Final = "chipfit"
# DNS-1035 label limit: Service names (and what we name after them) must fit in 63 characters.
DNS_LABEL_MAX: Final = 63
# Hex digits of the name hash kept when a name must be shortened (collisions ~1 in 16^8 per namespace).
NAME_HASH_CHARS: Final = 8
# Every role's Service listens on the plain HTTP port; the container port behind it is the engine's own.
SERVICE_HTTP_PORT: Final = 80
# Startup budget: loading a 405B fp8 checkpoint (~400 GB) from a network volume at ~0.5 GB/s takes
# ~15 min, compiling Neuron graphs as long again; 40 min covers both before the kubelet restarts the pod.
STARTUP_BUDGET_S: Final = 40 * 60
STARTUP_PERIOD_S: Final = 10
# Readiness: take a replica out of the Service after 3 failed checks 5 s apart (kubelet defaults: 10 s, 3).
READINESS_PERIOD_S: Final = 5
READINESS_FAILURES: Final = 3
# Liveness: restart an engine that stopped answering for a minute (a long prefill never blocks /health).
LIVENESS_PERIOD_S: Final = 10
LIVENESS_FAILURES: Final = 6
# In-flight requests finish (streams up to a few thousand tokens at >= 20 tok/s) before SIGKILL: at least
# this long, longer when the service's longest expected request (termination_grace_s) needs it.
TERMINATION_GRACE_S: Final = 120
# Kubernetes accepts any grace period; an hour bounds how long a scale-down can hold devices.
MAX_TERMINATION_GRACE_S: Final = 3600
# The preStop wait is at least this long (endpoint removal reaching kube-proxy and gateways takes seconds)
# and ends this long before the grace period does (the engine's own shutdown after SIGTERM).
PRE_STOP_MIN_S: Final = 10
PRE_STOP_MARGIN_S: Final = 10


def longest_request_s(service: v1alpha1.InferenceService) -> float:
    """The service's longest expected request at the SLO's speed: TTFT + p99 output tokens x ITL."""
    wl = service.spec.workload
    output = wl.output_tokens.p99 if wl.output_tokens.p99 is not None else wl.output_tokens.mean
    return service.spec.slo.ttft_p99_ms / 1000.0 + output * service.spec.slo.itl_p99_ms / 1000.0


def termination_grace_s(service: v1alpha1.InferenceService) -> int:
    """Seconds a removed replica gets to drain: its p99 request at the SLO's speed (TTFT + p99 output
    tokens x ITL), doubled, at least TERMINATION_GRACE_S and at most MAX_TERMINATION_GRACE_S."""
    longest = longest_request_s(service)
    return int(min(MAX_TERMINATION_GRACE_S, max(TERMINATION_GRACE_S, math.ceil(2.0 * longest))))


def pre_stop_s(service: v1alpha1.InferenceService) -> int:
    """The preStop wait of an engine container: the longest expected request (at least PRE_STOP_MIN_S),
    within the grace period. The pod leaves the Service's endpoints when it starts terminating, so no new
    request arrives while in-flight ones finish; the engine gets SIGTERM only after the wait (vLLM before
    --shutdown-timeout, which the pinned image does not have, aborts in-flight requests on SIGTERM)."""
    grace = termination_grace_s(service)
    return int(min(grace - PRE_STOP_MARGIN_S, max(PRE_STOP_MIN_S, math.ceil(longest_request_s(service)))))


# Preferred-affinity weights range 1..100 (PodSpec API); the packing preference is the strongest one.
PACKING_AFFINITY_WEIGHT: Final = 100
# Gated Hugging Face models read a token from this Secret when it exists (optional: public models work).
HF_TOKEN_SECRET: Final = "chipfit-hf-token"
HF_TOKEN_KEY: Final = "token"
_INVALID_NAME_CHARS: Final = re.compile(r"[^a-z0-9-]+")
_INVALID_LABEL_CHARS: Final = re.compile(r"[^A-Za-z0-9_.-]+")


# The service cannot be rendered; `field` is the dotted path of the offending field. The same type as the
# rules' errors, so a spec the rules refuse is a render failure naming its field.
RenderError = rules.RuleError


# --- names and labels ------------------------------------------------------------------------------------


def object_name(*parts: str) -> str:
    """A DNS-1035 label from parts joined by '-': lowercase, starts with a letter, <= 63 chars."""
    raw = "-".join(parts).lower()
    name = _INVALID_NAME_CHARS.sub("-", raw).strip("-")
    if not name or not name[0].isalpha():
        name = f"x-{name}"
    if len(name) <= DNS_LABEL_MAX and name == raw:
        return name
    # Shortened or rewritten names get a hash of the original so distinct inputs stay distinct.
    digest = hashlib.sha256(raw.encode()).hexdigest()[:NAME_HASH_CHARS]
    head = name[: DNS_LABEL_MAX - NAME_HASH_CHARS - 1].rstrip("-")
    return f"{head}-{digest}"


def label_value(value: str) -> str:
    """A valid label value (<= 63 chars of [A-Za-z0-9_.-], alphanumeric at both ends)."""
    cleaned = _INVALID_LABEL_CHARS.sub("_", value).strip("_.-")
    if len(cleaned) <= DNS_LABEL_MAX:
        return cleaned
    digest = hashlib.sha256(value.encode()).hexdigest()[:NAME_HASH_CHARS]
    return f"{cleaned[: DNS_LABEL_MAX - NAME_HASH_CHARS - 1].rstrip('_.-')}-{digest}"


def config_label(precision: str, tensor_parallel: int) -> str:
    """`fp8-tp2`: the engine configuration of a Deployment."""
    return f"{precision}-tp{tensor_parallel}"


def placement_key(placement: v1alpha1.RolePlacement) -> tuple[str, str, str]:
    """(role, pool, config): one Deployment per key."""
    return placement.role, placement.pool, config_label(placement.precision, placement.tensor_parallel)


def deployment_name(service: str, role: str, pool: str, config: str) -> str:
    """Name of the Deployment serving one role of a service on one pool in one configuration."""
    return object_name(service, role, pool, config)


def role_service_name(service: str, role: str) -> str:
    """Name of the Service of one role: the service's own name for aggregated serving."""
    return object_name(service) if role == "aggregated" else object_name(service, role)


def router_name(service: str) -> str:
    """Name of a disaggregated service's router Deployment (its Service takes the service's name)."""
    return object_name(service, ROUTER_ROLE)


def selector_labels(
    service: str, role: str, pool: str | None = None, config: str | None = None
) -> dict[str, str]:
    """Labels that select one (service, role[, pool, config]); a Deployment's immutable selector uses all."""
    labels = {LABEL_SERVICE: label_value(service), LABEL_ROLE: role}
    if pool is not None:
        labels[LABEL_POOL] = label_value(pool)
    if config is not None:
        labels[LABEL_CONFIG] = config
    return labels


def _common_labels(service: v1alpha1.InferenceService, component: str, engine: str) -> dict[str, str]:
    """Recommended app.kubernetes.io labels (kubernetes.io/docs/concepts/overview/working-with-objects/)."""
    return {
        "app.kubernetes.io/name": engine,
        "app.kubernetes.io/instance": label_value(service.metadata.name),
        "app.kubernetes.io/component": component,
        "app.kubernetes.io/part-of": "chipfit",
        "app.kubernetes.io/managed-by": MANAGED_BY,
    }


def owner_reference(service: v1alpha1.InferenceService) -> dict[str, Any]:
    """ownerReference to the InferenceService: the garbage collector deletes what it owns with it."""
    if not service.metadata.uid:
        raise RenderError("metadata.uid", "is empty: render objects for a service read from the cluster")
    return {
        "apiVersion": v1alpha1.API_VERSION,
        "kind": "InferenceService",
        "name": service.metadata.name,
        "uid": service.metadata.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def _metadata(
    service: v1alpha1.InferenceService, name: str, labels: Mapping[str, str], annotations: Mapping[str, str]
) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "name": name,
        "namespace": service.metadata.namespace,
        "labels": dict(labels),
        "ownerReferences": [owner_reference(service)],
    }
    if annotations:
        meta["annotations"] = dict(annotations)
    return meta


# --- model (what a field means is decided in chipfit.rules, shared with validate and plan) ------------


def sizing(service: v1alpha1.InferenceService, placement: v1alpha1.RolePlacement) -> engines.Sizing:
    """Engine limits exactly as the plan priced them: status.placement[].engineConfig, never re-derived.

    The plan's candidate chose one prefill chunk for all of the placement's request sizes, priced every
    size with it and with the sequence cap and model length it carries (placement.candidates); running
    anything else would serve another capacity than the one the plan bought.
    """
    config = placement.engine_config
    where = f"{placement.role} on {placement.pool} ({placement.precision} tp{placement.tensor_parallel})"
    if config is None or config.max_num_seqs is None or config.max_model_len is None:
        raise RenderError(
            "status.placement",
            f"{service.metadata.name}: {where}: the plan carries no engine configuration to run",
        )
    return engines.Sizing(
        max_model_len_tokens=config.max_model_len,
        max_concurrent_sequences=config.max_num_seqs,
        prefill_chunk_tokens=config.prefill_chunk_tokens,
    )


# --- pods ------------------------------------------------------------------------------------------------


def pool_chip(pool: v1alpha1.AcceleratorPool) -> catalog.Accelerator:
    """The chip a pool runs (its acceleratorSpec, else the catalog's), or RenderError naming the field."""
    try:
        return planning.pool_accelerator(pool)
    except planning.PlanningError as error:
        raise RenderError("spec.accelerator", str(error)) from None


def resource_name(pool: v1alpha1.AcceleratorPool, chip: catalog.Accelerator) -> str:
    """The extended resource a replica requests: the pool's override, else the catalog's."""
    return pool.spec.resource_name or chip.resource_name


def device_units(placement: v1alpha1.RolePlacement, chip: catalog.Accelerator) -> int:
    """Extended-resource units one replica requests: TP devices x units per device (2 NeuronCores/inf2)."""
    return placement.tensor_parallel * chip.resource_units_per_device


def node_labels(pool: v1alpha1.AcceleratorPool) -> dict[str, str]:
    """Labels a pool's nodes carry: its nodeSelector, plus the node label its acceleratorSpec declares."""
    labels = {}
    declared = pool.spec.accelerator_spec.node_label if pool.spec.accelerator_spec is not None else None
    if declared is not None:
        labels[declared.key] = declared.value
    # The pool's own selector wins where both name a key.
    labels.update(pool.spec.node_selector)
    return labels


def node_affinity(pool: v1alpha1.AcceleratorPool) -> dict[str, Any]:
    """Required node affinity to the pool's nodes (every label of node_labels must match)."""
    expressions = [
        {"key": key, "operator": "In", "values": [value]} for key, value in sorted(node_labels(pool).items())
    ]
    if not expressions:
        return {}
    return {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [{"matchExpressions": expressions}]
            }
        }
    }


def tolerations(pool: v1alpha1.AcceleratorPool) -> list[dict[str, str]]:
    """One toleration per pool taint, so serving pods may land on the pool's tainted nodes."""
    out = []
    for taint in pool.spec.taints:
        toleration = {"key": taint.key, "operator": "Equal", "value": taint.value, "effect": taint.effect}
        out.append(toleration)
    return out


def _probe(path: str, period_s: int, failures: int) -> dict[str, Any]:
    return {
        "httpGet": {"path": path, "port": "http"},
        "periodSeconds": period_s,
        "failureThreshold": failures,
        "timeoutSeconds": 1 if period_s < LIVENESS_PERIOD_S else 5,
    }


def _container(launch: engines.Launch, overrides: v1alpha1.EngineOverrides | None) -> dict[str, Any]:
    """The engine container with the service's overrides applied (image, extra args, extra env)."""
    image = overrides.image if overrides is not None and overrides.image else launch.image
    args = list(launch.args)
    if overrides is not None and overrides.extra_args:
        if launch.command[:2] == ("/bin/sh", "-c"):
            # A shell-wrapped launch takes its flags inside the script.
            args = [args[0] + " " + " ".join(shlex.quote(a) for a in overrides.extra_args)]
        else:
            args.extend(overrides.extra_args)
    env: list[dict[str, Any]] = [{"name": k, "value": v} for k, v in launch.env]
    env.append(
        {
            "name": "HF_TOKEN",
            "valueFrom": {"secretKeyRef": {"name": HF_TOKEN_SECRET, "key": HF_TOKEN_KEY, "optional": True}},
        }
    )
    if overrides is not None and overrides.env:
        overridden = {e.name for e in overrides.env}
        env = [e for e in env if e["name"] not in overridden]
        env.extend({"name": e.name, "value": e.value} for e in overrides.env)
    ports = [{"name": "http", "containerPort": launch.port, "protocol": "TCP"}]
    ports += [{"name": name, "containerPort": port, "protocol": "TCP"} for name, port in launch.extra_ports]
    return {
        "name": "engine",
        "image": image,
        "command": list(launch.command),
        "args": args,
        "env": env,
        "ports": ports,
        "startupProbe": _probe(launch.health_path, STARTUP_PERIOD_S, STARTUP_BUDGET_S // STARTUP_PERIOD_S),
        "readinessProbe": _probe(launch.health_path, READINESS_PERIOD_S, READINESS_FAILURES),
        "livenessProbe": _probe(launch.health_path, LIVENESS_PERIOD_S, LIVENESS_FAILURES),
    }


def _scrape_annotations(launch: engines.Launch) -> dict[str, str]:
    """prometheus.io/* annotations the common Prometheus pod scrape configs honour."""
    return {
        "prometheus.io/scrape": "true",
        "prometheus.io/port": str(launch.port),
        "prometheus.io/path": launch.metrics_path,
    }


def launch_request(
    service: v1alpha1.InferenceService,
    placement: v1alpha1.RolePlacement,
    chip: catalog.Accelerator,
    sizing: engines.Sizing,
) -> engines.LaunchRequest:
    """What the engine's command line depends on, from the spec and the planned placement."""
    return engines.LaunchRequest(
        engine=service.spec.engine,
        vendor=chip.vendor,
        model_source=rules.model_source(service.spec.model),
        served_model_name=rules.model_name(service.spec.model),
        precision=placement.precision,
        tensor_parallel=placement.tensor_parallel,
        # Neuron counts NeuronCores; the device plugin's units per device are exactly that.
        cores_per_device=chip.resource_units_per_device,
        role=placement.role,
        sizing=sizing,
        # The release the plan priced (spec.engineVersion) picks the image, unless the service brings its own.
        release=None
        if service.spec.overrides is not None and service.spec.overrides.image
        else service.spec.engine_version,
    )


def render_deployment(
    service: v1alpha1.InferenceService,
    placement: v1alpha1.RolePlacement,
    pool: v1alpha1.AcceleratorPool,
    sizing: engines.Sizing,
) -> dict[str, Any]:
    """The Deployment serving one role of `service` on `pool`, as planned in `placement`."""
    if placement.pool != pool.metadata.name:
        raise RenderError("status.placement.pool", f"{placement.pool!r} is not pool {pool.metadata.name!r}")
    if pool.spec.accelerator != placement.accelerator:
        raise RenderError(
            "status.placement.accelerator",
            f"{placement.accelerator} but pool {pool.metadata.name} has {pool.spec.accelerator}",
        )
    chip = pool_chip(pool)
    try:
        launch = engines.launch(launch_request(service, placement, chip, sizing))
    except engines.UnsupportedReleaseError as exc:
        raise RenderError("spec.engineVersion", str(exc)) from None
    except engines.UnsupportedLaunchError as exc:
        raise RenderError("spec.engine", str(exc)) from None
    name = service.metadata.name
    config = config_label(placement.precision, placement.tensor_parallel)
    selector = selector_labels(name, placement.role, pool.metadata.name, config)
    labels = {
        **_common_labels(service, placement.role, service.spec.engine),
        **selector,
        LABEL_ACCELERATOR: label_value(chip.id),
    }
    units = str(device_units(placement, chip))
    resource = resource_name(pool, chip)
    container = _container(launch, service.spec.overrides)
    container["resources"] = {"requests": {resource: units}, "limits": {resource: units}}
    container["volumeMounts"] = [{"name": "dshm", "mountPath": "/dev/shm"}]
    # Scale-down drains: the kubelet's own sleep (Kubernetes >= 1.30, PodLifecycleSleepAction; needs no
    # shell in the image) keeps the engine serving its in-flight requests after the pod left the endpoints.
    container["lifecycle"] = {"preStop": {"sleep": {"seconds": pre_stop_s(service)}}}
    pod_spec: dict[str, Any] = {
        "containers": [container],
        # NCCL / RCCL and the engines' worker processes share tensors through /dev/shm; the container
        # runtime's 64 MiB default is far too small. Memory-backed, bounded by the pod's memory.
        "volumes": [{"name": "dshm", "emptyDir": {"medium": "Memory"}}],
        "terminationGracePeriodSeconds": termination_grace_s(service),
    }
    affinity = node_affinity(pool)
    if affinity:
        pod_spec["affinity"] = affinity
    pool_tolerations = tolerations(pool)
    if pool_tolerations:
        pod_spec["tolerations"] = pool_tolerations
    annotations = {
        "chipfit.io/accelerator": chip.id,
        "chipfit.io/precision": placement.precision,
        "chipfit.io/tensor-parallel": str(placement.tensor_parallel),
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _metadata(
            service, deployment_name(name, placement.role, pool.metadata.name, config), labels, annotations
        ),
        "spec": {
            "replicas": placement.replicas,
            "selector": {"matchLabels": selector},
            # Surge, never reduce: a template change brings a new replica up before an old one goes.
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
            "template": {
                "metadata": {
                    "labels": labels,
                    "annotations": {
                        **_scrape_annotations(launch),
                        **annotations,
                        **dict(launch.pod_annotations),
                    },
                },
                "spec": pod_spec,
            },
        },
    }


def render_service(
    service: v1alpha1.InferenceService, role: str, launch: engines.Launch, selected_role: str | None = None
) -> dict[str, Any]:
    """The ClusterIP Service of one role (all its pools); port 80 plus the engine's extra ports."""
    name = service.metadata.name
    target_role = selected_role or role
    ports = [{"name": "http", "port": SERVICE_HTTP_PORT, "targetPort": "http", "protocol": "TCP"}]
    ports += [{"name": n, "port": p, "targetPort": n, "protocol": "TCP"} for n, p in launch.extra_ports]
    labels = {**_common_labels(service, role, service.spec.engine), **selector_labels(name, role)}
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(service, role_service_name(name, role), labels, {}),
        "spec": {"type": "ClusterIP", "selector": selector_labels(name, target_role), "ports": ports},
    }


def service_url(service: v1alpha1.InferenceService, role: str) -> str:
    """In-cluster URL of a role's Service."""
    host = f"{role_service_name(service.metadata.name, role)}.{service.metadata.namespace}.svc"
    return f"http://{host}:{SERVICE_HTTP_PORT}"


def render_router(service: v1alpha1.InferenceService) -> list[dict[str, Any]]:
    """Deployment and Service of a disaggregated service's prefill/decode router (the user endpoint).

    A router that discovers the prefill and decode pods itself also gets a ServiceAccount allowed to
    watch pods in the service's namespace (Role and RoleBinding), all owned by the InferenceService.
    """
    name = service.metadata.name
    namespace = service.metadata.namespace or "default"
    try:
        launch = engines.router_launch(
            engines.RouterRequest(
                engine=service.spec.engine,
                served_model_name=rules.model_name(service.spec.model),
                prefill_urls=(service_url(service, "prefill"),),
                decode_urls=(service_url(service, "decode"),),
                discovery=engines.PodDiscovery(
                    namespace=namespace,
                    prefill_selector=tuple(sorted(selector_labels(name, "prefill").items())),
                    decode_selector=tuple(sorted(selector_labels(name, "decode").items())),
                ),
            )
        )
    except engines.UnsupportedLaunchError as exc:
        raise RenderError("spec.engine", str(exc)) from None
    selector = selector_labels(name, ROUTER_ROLE)
    labels = {**_common_labels(service, ROUTER_ROLE, service.spec.engine), **selector}
    container = _container(launch, None)
    container["env"] = [e for e in container["env"] if e["name"] != "HF_TOKEN"]
    pod_spec: dict[str, Any] = {"containers": [container]}
    rbac: list[dict[str, Any]] = []
    if launch.watches_pods:
        account = router_name(name)
        pod_spec["serviceAccountName"] = account
        rbac = render_pod_reader(service, account, labels)
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _metadata(service, router_name(name), labels, {}),
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": selector},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
            "template": {
                "metadata": {"labels": labels, "annotations": _scrape_annotations(launch)},
                "spec": pod_spec,
            },
        },
    }
    svc = render_service(service, "aggregated", launch, selected_role=ROUTER_ROLE)
    svc["metadata"]["labels"].update({LABEL_ROLE: ROUTER_ROLE, "app.kubernetes.io/component": ROUTER_ROLE})
    return [*rbac, deployment, svc]


def render_pod_reader(
    service: v1alpha1.InferenceService, account: str, labels: Mapping[str, str]
) -> list[dict[str, Any]]:
    """ServiceAccount `account` with get/list/watch on pods in the service's namespace (Role + binding)."""
    namespace = service.metadata.namespace
    return [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": _metadata(service, account, labels, {})},
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": _metadata(service, account, labels, {}),
            "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]}],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": _metadata(service, account, labels, {}),
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": account},
            "subjects": [{"kind": "ServiceAccount", "name": account, "namespace": namespace}],
        },
    ]


def render_all(
    service: v1alpha1.InferenceService,
    placements: Sequence[v1alpha1.RolePlacement],
    pools: Mapping[str, v1alpha1.AcceleratorPool],
    sizings: Mapping[tuple[str, str, str], engines.Sizing],
) -> list[dict[str, Any]]:
    """Every object one service's placement needs: Deployments, role Services and, if split, a router."""
    objects: list[dict[str, Any]] = []
    launches: dict[str, engines.Launch] = {}
    for index, placement in enumerate(placements):
        pool = pools.get(placement.pool)
        if pool is None:
            raise RenderError(f"status.placement[{index}].pool", f"no AcceleratorPool {placement.pool!r}")
        sizing = sizings.get(placement_key(placement))
        if sizing is None:
            key = "/".join(placement_key(placement))
            raise RenderError(f"status.placement[{index}]", f"no engine sizing for {key}")
        deployment = render_deployment(service, placement, pool, sizing)
        objects.append(deployment)
        chip = pool_chip(pool)
        launches.setdefault(placement.role, engines.launch(launch_request(service, placement, chip, sizing)))
    for role, launch in sorted(launches.items()):
        objects.append(render_service(service, role, launch))
    if "prefill" in launches or "decode" in launches:
        if not ("prefill" in launches and "decode" in launches):
            raise RenderError("status.placement", "a disaggregated placement needs both prefill and decode")
        objects.extend(render_router(service))
    return objects


def render_planned(
    service: v1alpha1.InferenceService,
    placements: Sequence[v1alpha1.RolePlacement],
    pools: Mapping[str, v1alpha1.AcceleratorPool],
) -> list[dict[str, Any]]:
    """`render_all` with each placement's engine sizing: what the operator applies for a planned service."""
    sizings = {placement_key(p): sizing(service, p) for p in placements}
    return render_all(service, placements, pools, sizings)
