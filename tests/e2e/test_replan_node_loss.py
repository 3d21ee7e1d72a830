"""Node loss on the real control plane, at a fleet's scale: every node of one pool is deleted, and every
service that ran there is re-placed (status.placement no longer names the pool) and runs elsewhere (its
planned replicas are Running pods on live nodes of other pools), while every other service is untouched
(its resourceVersion, and its Deployments' resourceVersions and generations, are the same as before).

A CI-sized version of benchmarks/replan_e2e.py (300 services, with timings; see REPORT_solver.md): 24
generated services over 4 pools of kwok nodes, `chipfit operator` as a real process. Waits are bounded
(a timeout against hangs, not a timing assertion).
"""

from __future__ import annotations

import itertools
import time
import types
from collections.abc import Iterator
from typing import Any, Final

import pytest

from .conftest import Cluster, run_dir
from .test_operator import CONVERGE_TIMEOUT_S, POLL_S, Operator

pytestmark = pytest.mark.e2e

POOL_LABEL: Final = "chipfit.io/pool"
# (name, accelerator, $/device-h). Each selects its own kwok nodes by the chipfit.io/pool label.
POOLS: Final = (
    ("rp-l4", "l4", 0.81),
    ("rp-l40s", "l40s", 1.84),
    ("rp-a100", "a100-80gb", 3.67),
    ("rp-h100", "h100", 6.234),
)
NODES_PER_POOL: Final = 3
# What the operator logs when the pools left cannot hold every service's replica minimum.
SHORT_AFTER_LOSS: Final = "replica minimums cannot all be met"
SERVICES: Final = 24
MODELS: Final = (
    ("llama-3.1-8b", "meta-llama/Llama-3.1-8B-Instruct"),
    ("mistral-7b", "mistralai/Mistral-7B-Instruct-v0.3"),
    ("llama-2-7b", "meta-llama/Llama-2-7b-chat-hf"),
)
ENGINES: Final = ("vllm", "sglang", "trtllm", "tgi")
# (prompt mean, output mean, TTFT p99 ms, ITL p99 ms, req/s): loose enough for every pool's chip.
SHAPES: Final = ((1155, 211, 3000, 150), (2048, 28, 2000, 100), (600, 300, 5000, 200), (3000, 250, 5000, 150))
RATES: Final = (0.2, 0.5, 1.0)
# Pools each quarter of the services may use: every service has two or more (so it can move), and no
# single pool can take them all (so some services are always off the lost pool).
ALLOWED: Final = (
    ("rp-l4", "rp-l40s", "rp-a100", "rp-h100"),
    ("rp-l40s", "rp-a100"),
    ("rp-a100", "rp-h100"),
    ("rp-l4", "rp-h100"),
)


def pools() -> list[dict[str, Any]]:
    return [
        {
            "apiVersion": "chipfit.io/v1alpha1",
            "kind": "AcceleratorPool",
            "metadata": {"name": name},
            "spec": {
                "accelerator": accelerator,
                "devicesPerNode": 8,
                "nodes": NODES_PER_POOL,
                "pricePerDeviceHour": price,
                "nodeSelector": {POOL_LABEL: name},
            },
        }
        for name, accelerator, price in POOLS
    ]


def services(namespace: str) -> list[dict[str, Any]]:
    """Varied models, engines, request shapes, SLOs, rates and allowed pools."""
    out = []
    combos = itertools.product(range(len(SHAPES)), range(len(MODELS)), range(len(ENGINES)))
    for i, (shape, model, engine) in enumerate(itertools.islice(combos, 0, None, 2)):
        if i == SERVICES:
            break
        prompt, output, ttft, itl = SHAPES[shape]
        model_id, source = MODELS[model]
        out.append(
            {
                "apiVersion": "chipfit.io/v1alpha1",
                "kind": "InferenceService",
                "metadata": {"name": f"svc-{i:02d}", "namespace": namespace},
                "spec": {
                    "model": {"id": model_id, "source": source},
                    "precisions": ["bf16", "fp8"] if i % 2 else ["bf16"],
                    "engine": ENGINES[engine],
                    "slo": {"ttftP99Ms": ttft, "itlP99Ms": itl},
                    "workload": {
                        "requestsPerSecond": RATES[i % len(RATES)],
                        "promptTokens": {"mean": prompt},
                        "outputTokens": {"mean": output},
                        "maxContextTokens": 4096,
                    },
                    "replicas": {"min": 1, "max": 8},
                    "placement": {"allowedPools": list(ALLOWED[i % len(ALLOWED)])},
                },
            }
        )
    return out


def _ready(service: dict[str, Any]) -> bool:
    """Ready for its spec, and settled: the autoscaler (no Prometheus here) has said so too."""
    status = service.get("status") or {}
    conditions = {c["type"]: c["status"] for c in status.get("conditions") or ()}
    return (
        status.get("observedGeneration") == service["metadata"]["generation"]
        and conditions.get("Ready") == "True"
        and "Autoscaling" in conditions
        and bool(status.get("placement"))
    )


def _pools_of(service: dict[str, Any]) -> set[str]:
    return {p["pool"] for p in (service.get("status") or {}).get("placement") or ()}


@pytest.fixture
def fleet_of_pools(
    cluster: Cluster, crds_applied: list[str], fleet: types.ModuleType, namespace: str
) -> Iterator[tuple[Operator, str]]:
    """The test's pools with their kwok nodes, and the operator running; all removed afterwards."""
    cluster.apply_objects(pools())
    nodes = fleet.render_fleet([fleet.parse_pool(doc, "test_replan_node_loss") for doc in pools()])
    cluster.apply_objects(nodes)
    cluster.kubectl(
        "wait", "--for=condition=Ready", "--timeout=120s", *[f"node/{n['metadata']['name']}" for n in nodes]
    )
    log_dir = run_dir() / "logs" / "operator-node-loss"
    log_dir.mkdir(parents=True, exist_ok=True)
    operator = Operator(cluster, log_dir)
    operator.start()
    try:
        yield operator, namespace
    finally:
        operator.stop()
        cluster.kubectl("delete", "inferenceservices", "--all", "-n", namespace, "--wait=false", check=False)
        names = [p[0] for p in POOLS]
        cluster.kubectl(
            "delete", "acceleratorpools", *names, "--ignore-not-found", "--wait=false", check=False
        )
        cluster.kubectl(
            "delete", "nodes", "-l", f"{POOL_LABEL} in ({','.join(names)})", "--wait=false", check=False
        )


def pools_now(cluster: Cluster) -> list[dict[str, Any]]:
    """The test's AcceleratorPools as they are now (with the status the operator wrote)."""
    names = {p[0] for p in POOLS}
    return [p for p in cluster.get_json("acceleratorpools")["items"] if p["metadata"]["name"] in names]


def _wait(operator: Operator, what: str, probe: Any) -> Any:
    deadline = time.monotonic() + CONVERGE_TIMEOUT_S
    while True:
        value = probe()
        if value:
            return value
        if operator.process is not None and operator.process.poll() is not None:
            pytest.fail(f"operator exited waiting for {what}:\n{operator.log_tail()}")
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}\noperator log:\n{operator.log_tail()}", pytrace=False)
        time.sleep(POLL_S)


def _snapshot(cluster: Cluster, namespace: str) -> dict[str, dict[str, Any]]:
    """Per service: its body, and (name, resourceVersion, generation) of each Deployment it owns."""
    items = cluster.get_json("inferenceservices", "-n", namespace)["items"]
    deployments = cluster.get_json("deployments", "-n", namespace)["items"]
    out = {}
    for s in items:
        owned = sorted(
            (d["metadata"]["name"], d["metadata"]["resourceVersion"], d["metadata"]["generation"])
            for d in deployments
            if any(r["uid"] == s["metadata"]["uid"] for r in d["metadata"].get("ownerReferences") or ())
        )
        out[s["metadata"]["name"]] = {"body": s, "deployments": owned}
    return out


def _running_elsewhere(cluster: Cluster, namespace: str, service: dict[str, Any], lost: str) -> bool:
    """The service's planned replicas are Running pods on live nodes of pools other than `lost`."""
    name = service["metadata"]["name"]
    live_nodes = {
        n["metadata"]["name"]: (n["metadata"].get("labels") or {}).get(POOL_LABEL)
        for n in cluster.get_json("nodes")["items"]
    }
    pods = cluster.get_json("pods", "-n", namespace, "-l", f"chipfit.io/service={name}")["items"]
    running = [
        p
        for p in pods
        if (p["metadata"].get("labels") or {}).get("chipfit.io/role") != "router"
        and not p["metadata"].get("deletionTimestamp")
        and p["status"].get("phase") == "Running"
        and p["spec"].get("nodeName") in live_nodes
        and live_nodes[p["spec"]["nodeName"]] != lost
    ]
    planned = sum(p["replicas"] for p in service["status"]["placement"])
    return planned > 0 and len(running) >= planned


def test_losing_a_pools_nodes_replaces_its_services_and_leaves_the_others_alone(
    cluster: Cluster, fleet_of_pools: tuple[Operator, str]
) -> None:
    operator, namespace = fleet_of_pools
    wanted = services(namespace)
    cluster.apply_objects(wanted)

    def all_ready() -> dict[str, dict[str, Any]] | None:
        snap = _snapshot(cluster, namespace)
        return snap if len(snap) == len(wanted) and all(_ready(v["body"]) for v in snap.values()) else None

    _wait(operator, f"all {len(wanted)} services Ready", all_ready)
    # Let finished rollouts drain, then take the reference state.
    time.sleep(5)
    before = _wait(operator, "all services Ready", all_ready)
    # Each pool counts its own nodes, whatever other pools (earlier tests', a real cluster's) select.
    seen = {p["metadata"]["name"]: (p.get("status") or {}).get("nodesReady") for p in pools_now(cluster)}
    assert len(seen) == len(POOLS) and set(seen.values()) == {NODES_PER_POOL}, f"ready nodes per pool: {seen}"
    users: dict[str, set[str]] = {}
    for name, entry in before.items():
        for pool in _pools_of(entry["body"]):
            users.setdefault(pool, set()).add(name)
    lost = max(sorted(users), key=lambda p: len(users[p]))
    affected = users[lost]
    unaffected = set(before) - affected
    assert affected and unaffected, f"the test fleet must have services on and off the lost pool: {users}"

    cluster.kubectl("delete", "nodes", "-l", f"{POOL_LABEL}={lost}")

    def moved() -> dict[str, dict[str, Any]] | None:
        if SHORT_AFTER_LOSS in operator.log_tail():
            # 3 pools x 3 nodes x 8 devices are left for 24 small services: never a real shortage. (It was
            # seen in the full e2e session when pools left by earlier tests took these pools' nodes:
            # reconcile.node_owners, tests/unit/test_node_owners.py.) Fail at once, with the log.
            log = operator.log_tail()
            pytest.fail(f"no room for every minimum after losing {lost}:\n{log}", pytrace=False)
        snap = _snapshot(cluster, namespace)
        for name in affected:
            body = snap[name]["body"]
            if lost in _pools_of(body) or not _pools_of(body):
                return None
            if not _running_elsewhere(cluster, namespace, body, lost):
                return None
        return snap

    _wait(operator, f"{len(affected)} services re-placed off {lost} and running elsewhere", moved)
    time.sleep(5)  # anything still done to the others would show now
    after = _snapshot(cluster, namespace)
    for name in affected:
        assert lost not in _pools_of(after[name]["body"])
        deployments = cluster.get_json("deployments", "-n", namespace, "-l", f"chipfit.io/service={name}")
        assert all(d["metadata"]["labels"].get(POOL_LABEL) != lost for d in deployments["items"]), name
    for name in unaffected:
        assert (
            after[name]["body"]["metadata"]["resourceVersion"]
            == before[name]["body"]["metadata"]["resourceVersion"]
        ), f"{name} (not on {lost}) was written: {after[name]['body'].get('status')}"
        assert after[name]["deployments"] == before[name]["deployments"], f"{name}'s Deployments changed"
