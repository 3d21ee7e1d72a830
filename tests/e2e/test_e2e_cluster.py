"""End-to-end checks on the real control plane: schema validation by the API server, the fake GPU fleet,
and the real scheduler's fit checks on extended resources."""

from __future__ import annotations

import json
import pathlib
import re
import subprocess
import time
import types
import uuid
from collections.abc import Mapping
from typing import Any, Final

import pytest
import yaml

from .conftest import COMMAND_TIMEOUT_S, POLL_INTERVAL_S, REPO_DIR, SETTLE_TIMEOUT_S, Cluster

pytestmark = pytest.mark.e2e

BAD_MANIFESTS_DIR: Final = REPO_DIR / "tests" / "bad_manifests"
EXAMPLES_DIR: Final = REPO_DIR / "examples"
HEADER_RE: Final = re.compile(r"^#\s*(?P<key>expect-field|rejected-by):\s*(?P<value>\S+)\s*$", re.MULTILINE)
# Any image name works: kwok never pulls; this is the pause image a real kubelet would use.
PAUSE_IMAGE: Final = "registry.k8s.io/pause:3.10"


def _headers(path: pathlib.Path) -> dict[str, str]:
    """The `# expect-field:` and `# rejected-by:` header comments of a bad manifest."""
    return {m["key"]: m["value"] for m in HEADER_RE.finditer(path.read_text())}


SCHEMA_REJECTED: Final = sorted(
    p for p in BAD_MANIFESTS_DIR.glob("*.yaml") if _headers(p).get("rejected-by") == "schema"
)
SEMANTIC_ONLY: Final = sorted(
    p for p in BAD_MANIFESTS_DIR.glob("*.yaml") if _headers(p).get("rejected-by") == "semantic"
)


def _pod(
    name: str, resources: Mapping[str, int], node_selector: Mapping[str, str], tolerate: bool
) -> dict[str, Any]:
    """A pod that asks for extended resources (as limits: extended resources cannot overcommit)."""
    spec: dict[str, Any] = {
        "containers": [
            {
                "name": "server",
                "image": PAUSE_IMAGE,
                "resources": {"limits": {k: str(v) for k, v in resources.items()}},
            }
        ],
        "nodeSelector": dict(node_selector),
    }
    if tolerate:
        spec["tolerations"] = [{"operator": "Exists"}]
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": spec}


def _schedule(cluster: Cluster, namespace: str, pod: dict[str, Any], expect_bound: bool) -> dict[str, Any]:
    """Create the pod and wait for the scheduler's verdict: bound, or refused (PodScheduled=False).

    A pod expected to bind may be refused for a moment while pods of earlier tests still hold devices
    (their namespaces are deleted asynchronously), so only binding ends that wait; a refusal of a pod
    that no node can ever fit is final, so it ends the other wait.
    """
    cluster.apply_objects([pod], "-n", namespace)
    name = pod["metadata"]["name"]
    last: dict[str, Any] = {}

    def verdict() -> dict[str, Any] | None:
        current: dict[str, Any] = cluster.get_json("pod", name, "-n", namespace)
        last.update(current)
        if current["spec"].get("nodeName"):
            return current
        if not expect_bound and _unschedulable_message(current):
            return current
        return None

    deadline = time.monotonic() + SETTLE_TIMEOUT_S
    while (result := verdict()) is None:
        if time.monotonic() > deadline:
            pytest.fail(
                f"pod {namespace}/{name} not {'bound' if expect_bound else 'refused'} after "
                f"{SETTLE_TIMEOUT_S:.0f} s; scheduler: {_unschedulable_message(last) or 'no verdict'}",
                pytrace=False,
            )
        time.sleep(POLL_INTERVAL_S)
    return result


def _unschedulable_message(pod: dict[str, Any]) -> str:
    """The scheduler's message of a pod it could not place ('' when it was bound)."""
    for condition in pod.get("status", {}).get("conditions", []):
        if condition["type"] == "PodScheduled" and condition.get("reason") == "Unschedulable":
            return str(condition.get("message", ""))
    return ""


def _pool(pools: list[Any], name: str) -> Any:
    """The fixture pool of that name."""
    (pool,) = [p for p in pools if p.name == name]
    return pool


def test_api_server_is_the_pinned_build(cluster: Cluster) -> None:
    version = json.loads(cluster.kubectl("version", "-o", "json").stdout)["serverVersion"]
    if cluster.mode != "local":
        pytest.skip(f"{cluster.mode} cluster: its version is not pinned by e2e/go.mod")
    pinned = re.search(r"^\s*k8s\.io/kubernetes (v\S+)", (REPO_DIR / "e2e" / "go.mod").read_text(), re.M)
    assert pinned is not None
    assert version["gitVersion"] == pinned[1]


def test_helm_talks_to_the_cluster(cluster: Cluster) -> None:
    helm = subprocess.run(
        [str(cluster.helm_path), "list", "--all-namespaces", "--kubeconfig", str(cluster.kubeconfig)],
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT_S,
        check=False,
    )
    assert helm.returncode == 0, helm.stderr
    assert helm.stdout.split()[:2] == ["NAME", "NAMESPACE"]


def test_crds_and_examples_are_accepted(cluster: Cluster, crds_applied: list[str]) -> None:
    assert all(name.endswith(".chipfit.io") for name in crds_applied)
    example_files = sorted(EXAMPLES_DIR.glob("*.yaml"))
    if not example_files:
        pytest.fail("examples/ holds no manifest", pytrace=False)
    cluster.kubectl("apply", "-f", str(EXAMPLES_DIR))
    # Every object of the examples now exists, read back from the API server.
    listed = cluster.get_json("-f", str(EXAMPLES_DIR))["items"]
    assert {item["kind"] for item in listed} >= {"AcceleratorPool", "InferenceService"}


def test_bad_manifest_corpus_has_schema_cases() -> None:
    assert SCHEMA_REJECTED, f"no `# rejected-by: schema` manifest in {BAD_MANIFESTS_DIR}"


@pytest.mark.parametrize("path", SCHEMA_REJECTED, ids=[p.name for p in SCHEMA_REJECTED])
def test_api_server_rejects_bad_manifest_naming_the_field(
    cluster: Cluster, crds_applied: list[str], path: pathlib.Path
) -> None:
    field = _headers(path).get("expect-field")
    assert field, f"{path.name}: no `# expect-field:` header"
    result = cluster.kubectl("apply", "--dry-run=server", "-f", str(path), check=False)
    assert result.returncode != 0, f"{path.name} was accepted by the API server"
    # The field path as a whole: not a prefix of a longer name, not inside another path.
    named = re.search(rf"(?<![\w.]){re.escape(field)}(?!\w)", result.stderr)
    assert named, f"{path.name}: {field} not named in: {result.stderr.strip()}"


@pytest.mark.parametrize("path", SEMANTIC_ONLY, ids=[p.name for p in SEMANTIC_ONLY])
def test_semantic_only_bad_manifest_passes_the_api_server(
    cluster: Cluster, crds_applied: list[str], path: pathlib.Path
) -> None:
    # `# rejected-by: semantic` says only `chipfit validate` catches it; if the schema does, the
    # header is wrong (and `chipfit validate` is not what protects the cluster).
    result = cluster.kubectl("apply", "--dry-run=server", "-f", str(path), check=False)
    assert result.returncode == 0, f"{path.name}: the API server rejects it: {result.stderr.strip()}"


def test_status_subresource_keeps_spec_and_status_apart(
    cluster: Cluster, crds_applied: list[str], kube_api: Any
) -> None:
    import kubernetes  # only the e2e tier needs the client

    api = kubernetes.client.CustomObjectsApi(kube_api)
    group, version, plural = "chipfit.io", "v1alpha1", "acceleratorpools"
    example = next(
        doc
        for doc in yaml.safe_load_all((EXAMPLES_DIR / "10-fleet.yaml").read_text())
        if doc and doc.get("kind") == "AcceleratorPool"
    )
    name = f"e2e-subresource-{uuid.uuid4().hex[:6]}"
    nodes = example["spec"]["nodes"]
    created = api.create_cluster_custom_object(
        group, version, plural, {**example, "metadata": {"name": name}}
    )
    try:
        assert created["metadata"]["generation"] == 1
        assert created["metadata"]["uid"]
        # The main resource ignores status ...
        api.patch_cluster_custom_object(group, version, plural, name, {"status": {"nodesReady": 7}})
        # ... and the status subresource ignores spec and does not bump the generation.
        after_status = api.patch_cluster_custom_object_status(
            group, version, plural, name, {"status": {"nodesReady": 2}, "spec": {"nodes": nodes + 5}}
        )
        assert after_status["status"] == {"nodesReady": 2}
        assert after_status["spec"]["nodes"] == nodes
        assert after_status["metadata"]["generation"] == 1
        after_spec = api.patch_cluster_custom_object(
            group, version, plural, name, {"spec": {"nodes": nodes + 1}}
        )
        assert after_spec["metadata"]["generation"] == 2
        assert after_spec["status"] == {"nodesReady": 2}
        assert after_spec["metadata"]["resourceVersion"] != after_status["metadata"]["resourceVersion"]
    finally:
        api.delete_cluster_custom_object(group, version, plural, name)


def test_example_fleet_is_registered(cluster: Cluster, fleet: types.ModuleType) -> None:
    pools = fleet.load_pools([EXAMPLES_DIR])
    if not pools:
        pytest.fail("examples/ holds no AcceleratorPool", pytrace=False)
    for pool in pools:
        nodes = cluster.get_json("nodes", "-l", f"{fleet.POOL_LABEL_KEY}={pool.name}")["items"]
        assert len(nodes) == min(pool.nodes, fleet.MAX_FAKE_NODES_PER_POOL), pool.name
        devices = str(pool.devices_per_node * pool.accelerator.resource_units_per_device)
        for node in nodes:
            assert node["status"]["allocatable"][pool.resource_name] == devices
            assert (
                node["metadata"]["labels"][pool.accelerator.product_label_key]
                == pool.accelerator.product_label
            )
            for key, value in pool.node_selector.items():
                assert node["metadata"]["labels"][key] == value
            ready = [c for c in node["status"]["conditions"] if c["type"] == "Ready"]
            assert ready and ready[0]["status"] == "True", node["metadata"]["name"]


@pytest.mark.parametrize("pool_name", ["e2e-l4", "e2e-h100-spot"])
def test_gpu_pod_binds_only_to_a_node_of_the_requested_product(
    cluster: Cluster, fixture_fleet: list[Any], namespace: str, pool_name: str
) -> None:
    accelerator = _pool(fixture_fleet, pool_name).accelerator
    selector = {accelerator.product_label_key: accelerator.product_label}
    pod = _schedule(
        cluster, namespace, _pod("gpu", {"nvidia.com/gpu": 1}, selector, tolerate=True), expect_bound=True
    )
    assert pod["spec"].get("nodeName"), _unschedulable_message(pod)
    node = cluster.get_json("node", pod["spec"]["nodeName"])
    assert node["metadata"]["labels"][accelerator.product_label_key] == accelerator.product_label


@pytest.mark.parametrize("pool_name", ["e2e-h100-mig-1g10", "e2e-mi300x", "e2e-inf2"])
def test_vendor_device_pod_binds_to_the_node_advertising_it(
    cluster: Cluster, fixture_fleet: list[Any], namespace: str, pool_name: str
) -> None:
    pool = _pool(fixture_fleet, pool_name)
    pod = _schedule(
        cluster,
        namespace,
        _pod("dev", {pool.resource_name: 1}, {"chipfit.io/pool": pool.name}, tolerate=True),
        expect_bound=True,
    )
    assert pod["spec"].get("nodeName"), _unschedulable_message(pod)
    node = cluster.get_json("node", pod["spec"]["nodeName"])
    assert int(node["status"]["allocatable"][pool.resource_name]) >= 1
    assert node["metadata"]["labels"][pool.accelerator.product_label_key] == pool.accelerator.product_label


def test_scheduler_refuses_more_devices_than_a_node_has_and_binds_what_fits(
    cluster: Cluster, fixture_fleet: list[Any], namespace: str
) -> None:
    l4 = _pool(fixture_fleet, "e2e-l4")
    # Other nodes (the examples' pools) have 8 GPUs; the selector keeps the pod on this pool's 4-GPU nodes.
    selector = {"chipfit.io/pool": l4.name}
    too_big = _schedule(
        cluster,
        namespace,
        _pod("too-big", {"nvidia.com/gpu": l4.devices_per_node + 1}, selector, True),
        expect_bound=False,
    )
    assert not too_big["spec"].get("nodeName")
    assert "Insufficient nvidia.com/gpu" in _unschedulable_message(too_big)
    fits = _schedule(
        cluster,
        namespace,
        _pod("fits", {"nvidia.com/gpu": l4.devices_per_node}, selector, True),
        expect_bound=True,
    )
    assert fits["spec"].get("nodeName", "").startswith(f"kwok-{l4.name}-")


def test_pod_asking_more_devices_than_any_node_has_stays_pending(
    cluster: Cluster, fixture_fleet: list[Any], namespace: str
) -> None:
    most = max(
        int(n["status"].get("allocatable", {}).get("nvidia.com/gpu", "0"))
        for n in cluster.get_json("nodes")["items"]
    )
    pod = _schedule(
        cluster, namespace, _pod("huge", {"nvidia.com/gpu": most + 1}, {}, tolerate=True), expect_bound=False
    )
    assert not pod["spec"].get("nodeName")
    assert pod["status"]["phase"] == "Pending"
    assert "Insufficient nvidia.com/gpu" in _unschedulable_message(pod)


def test_pool_taint_keeps_out_pods_without_toleration(
    cluster: Cluster, fixture_fleet: list[Any], namespace: str
) -> None:
    pod = _schedule(
        cluster,
        namespace,
        _pod("intolerant", {"nvidia.com/gpu": 1}, {"chipfit.io/pool": "e2e-h100-spot"}, tolerate=False),
        expect_bound=False,
    )
    assert not pod["spec"].get("nodeName")
    assert "untolerated taint" in _unschedulable_message(pod)


def test_deployment_pods_are_created_scheduled_and_garbage_collected(
    cluster: Cluster, fixture_fleet: list[Any], namespace: str
) -> None:
    name = f"serve-{uuid.uuid4().hex[:6]}"
    pod = _pod(name, {"nvidia.com/gpu": 1}, {"chipfit.io/pool": "e2e-l4"}, tolerate=True)
    template = {"metadata": {"labels": {"app": name}}, "spec": pod["spec"]}
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {"replicas": 2, "selector": {"matchLabels": {"app": name}}, "template": template},
    }
    cluster.apply_objects([deployment], "-n", namespace)

    def running_pods() -> list[dict[str, Any]]:
        pods = cluster.get_json("pods", "-n", namespace, "-l", f"app={name}")["items"]
        running = [p for p in pods if p.get("status", {}).get("phase") == "Running"]
        return running if len(running) == 2 else []

    pods = cluster.wait_until("2 Running pods of the Deployment (kwok plays them)", running_pods)
    assert all(p["spec"]["nodeName"].startswith("kwok-e2e-l4-") for p in pods)
    # Deleting the Deployment leaves its ReplicaSet and pods to the garbage collector.
    cluster.kubectl("delete", "deployment", name, "-n", namespace, "--cascade=background")
    cluster.wait_until(
        "the garbage collector to remove the Deployment's pods",
        lambda: not cluster.get_json("pods", "-n", namespace, "-l", f"app={name}")["items"],
    )
