"""A chip outside the built-in catalog, declared by its specs on its AcceleratorPool, on the real control
plane: the API server admits the pool (and its CEL rules reject one without specs), kwok nodes advertise
the declared resource, the operator plans the service onto it, the real scheduler binds the pods to those
nodes, and the service's status says the prediction is uncalibrated: predicted from specs."""

from __future__ import annotations

import copy
import json
import types
from collections.abc import Iterator
from typing import Any, Final

import pytest

from .conftest import Cluster, run_dir
from .test_operator import Operator, condition, converged, wait_for

pytestmark = pytest.mark.e2e

NAMESPACE: Final = "chipfit-declared"
POOL: Final = "acme-npu"
RESOURCE: Final = "acme.com/npu"
ACME_POOL: Final[dict[str, Any]] = {
    "apiVersion": "chipfit.io/v1alpha1",
    "kind": "AcceleratorPool",
    "metadata": {"name": POOL},
    "spec": {
        "accelerator": "acme-x1",
        "devicesPerNode": 4,
        "nodes": 2,
        "pricePerDeviceHour": 2.5,
        "resourceName": RESOURCE,
        "acceleratorSpec": {
            "vendor": "nvidia",
            "memoryGib": 96,
            "memoryBandwidthGbps": 4000,
            "denseTflops": {"bf16": 800, "fp16": 800, "fp8": 1600},
            "precisions": ["bf16", "fp8"],
            "interconnectGbps": 200,
            "maxTensorParallel": 4,
            "nodeLabel": {"key": "nvidia.com/gpu.product", "value": "ACME-X1"},
            "source": "ACME X1 datasheet (e2e fixture)",
        },
    },
}
SERVICE: Final[dict[str, Any]] = {
    "apiVersion": "chipfit.io/v1alpha1",
    "kind": "InferenceService",
    "metadata": {"name": "chat-on-acme", "namespace": NAMESPACE},
    "spec": {
        "model": {"id": "llama-3.1-8b", "source": "meta-llama/Llama-3.1-8B-Instruct"},
        "precisions": ["fp8"],
        "engine": "vllm",
        "slo": {"ttftP99Ms": 500, "itlP99Ms": 60},
        "workload": {
            "requestsPerSecond": 2,
            "promptTokens": {"mean": 1000, "p99": 3000},
            "outputTokens": {"mean": 200, "p99": 500},
            "maxContextTokens": 8192,
        },
        "serving": "aggregated",
        "placement": {"allowedAccelerators": ["acme-x1"]},
    },
}


@pytest.fixture(scope="module")
def declared_fleet(
    cluster: Cluster, crds_applied: list[str], fleet: types.ModuleType
) -> Iterator[list[dict[str, Any]]]:
    """The declared-chip pool applied and its kwok nodes Ready; removed after."""
    cluster.apply_objects([ACME_POOL])
    nodes: list[dict[str, Any]] = fleet.render_nodes(fleet.parse_pool(ACME_POOL, "test"))
    cluster.apply_objects(nodes)
    names = [f"node/{n['metadata']['name']}" for n in nodes]
    cluster.kubectl("wait", "--for=condition=Ready", "--timeout=120s", *names)
    cluster.kubectl("create", "namespace", NAMESPACE, check=False)
    try:
        yield nodes
    finally:
        cluster.kubectl("delete", "inferenceservices", "--all", "-n", NAMESPACE, check=False)
        cluster.kubectl("delete", "namespace", NAMESPACE, "--wait=false", check=False)
        # The operator (stopped by now) may hold a finalizer on the pool: do not wait for it.
        cluster.kubectl("delete", "acceleratorpool", POOL, "--wait=false", check=False)
        cluster.kubectl("delete", *names, "--wait=false", check=False)


def test_api_server_rejects_an_unknown_chip_without_specs(cluster: Cluster, crds_applied: list[str]) -> None:
    bare = copy.deepcopy(ACME_POOL)
    bare["metadata"]["name"] = "acme-bare"
    del bare["spec"]["acceleratorSpec"]
    result = cluster.kubectl("apply", "--dry-run=server", "-f", "-", stdin=json.dumps(bare), check=False)
    assert result.returncode != 0
    assert "outside the built-in catalog needs acceleratorSpec" in result.stderr


def test_declared_chip_is_planned_deployed_and_said_uncalibrated(
    cluster: Cluster, declared_fleet: list[dict[str, Any]]
) -> None:
    log_dir = run_dir() / "logs" / "operator-declared"
    log_dir.mkdir(parents=True, exist_ok=True)
    operator = Operator(cluster, log_dir)
    operator.start()
    try:
        cluster.apply_objects([SERVICE])

        def ready() -> dict[str, Any] | None:
            items = cluster.get_json("inferenceservices", "-n", NAMESPACE)["items"]
            return items[0] if items and converged(items[0]) else None

        service = wait_for(operator, "the service on the declared chip Ready", ready)
        placement = service["status"]["placement"]
        assert {p["pool"] for p in placement} == {POOL}
        assert {p["accelerator"] for p in placement} == {"acme-x1"}
        assert condition(service, "Placed")["status"] == "True"
        assert service["status"]["predicted"]["trust"].startswith("uncalibrated: predicted from specs")
        (deployment,) = owned_deployments_in(cluster, service)
        container = deployment["spec"]["template"]["spec"]["containers"][0]
        assert set(container["resources"]["limits"]) == {RESOURCE}
        node_names = {n["metadata"]["name"] for n in declared_fleet}
        pods = cluster.get_json("pods", "-n", NAMESPACE)["items"]
        running = [p for p in pods if p["status"].get("phase") == "Running"]
        assert running, "no pod of the service runs"
        # The real scheduler bound every pod to a node that advertises the declared chip's resource.
        assert {p["spec"]["nodeName"] for p in running} <= node_names
    finally:
        operator.stop()


def owned_deployments_in(cluster: Cluster, service: dict[str, Any]) -> list[dict[str, Any]]:
    """The service's serving Deployments (test_operator's helper reads its own namespace)."""
    uid = service["metadata"]["uid"]
    items = cluster.get_json("deployments", "-n", NAMESPACE)["items"]
    return [d for d in items if any(r["uid"] == uid for r in d["metadata"].get("ownerReferences") or ())]
