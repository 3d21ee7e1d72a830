"""Two operator replicas in kopf peering: the higher priority acts, the other takes over when it dies."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any, Final

import pytest

from .conftest import Cluster, run_dir
from .test_operator import EXAMPLES_DIR, Operator, condition, converged, wait_for

pytestmark = pytest.mark.e2e

PEERING_NAME: Final = f"chipfit-e2e-{uuid.uuid4().hex[:6]}"
# kopf's ClusterKopfPeering CRD (kopf.dev/v1, as kopf's peering.yaml and the chart define it).
PEERING_CRD: Final = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": "clusterkopfpeerings.kopf.dev"},
    "spec": {
        "scope": "Cluster",
        "group": "kopf.dev",
        "names": {
            "kind": "ClusterKopfPeering",
            "plural": "clusterkopfpeerings",
            "singular": "clusterkopfpeering",
        },
        "versions": [
            {
                "name": "v1",
                "served": True,
                "storage": True,
                "schema": {
                    "openAPIV3Schema": {
                        "type": "object",
                        "properties": {
                            "status": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
                        },
                    }
                },
            }
        ],
    },
}


class PeeredOperator(Operator):
    """An operator replica in peering PEERING_NAME with a given priority."""

    def __init__(self, cluster: Cluster, log_dir: Any, name: str, priority: int) -> None:
        super().__init__(cluster, log_dir)
        self.name = name
        self.priority = priority

    def command(self) -> list[str]:
        """The base command line plus this replica's peering and priority."""
        return [
            *super().command(),
            "--peering",
            PEERING_NAME,
            "--priority",
            str(self.priority),
        ]


@pytest.fixture
def peered(
    cluster: Cluster, crds_applied: list[str], namespace: str
) -> Iterator[tuple[PeeredOperator, PeeredOperator]]:
    """A peering object and two replicas (high priority started first); stopped and removed after."""
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", "-", stdin=json.dumps(PEERING_CRD))
    cluster.kubectl(
        "wait", "--for=condition=Established", "--timeout=60s", "crd/clusterkopfpeerings.kopf.dev"
    )
    cluster.apply_objects(
        [{"apiVersion": "kopf.dev/v1", "kind": "ClusterKopfPeering", "metadata": {"name": PEERING_NAME}}]
    )
    cluster.kubectl("apply", "-f", str(EXAMPLES_DIR / "10-fleet.yaml"))
    log_dir = run_dir() / "logs" / "operator-peering"
    log_dir.mkdir(parents=True, exist_ok=True)
    high = PeeredOperator(cluster, log_dir / "high", "high", 100)
    low = PeeredOperator(cluster, log_dir / "low", "low", 10)
    for op in (high, low):
        op.log_dir.mkdir(parents=True, exist_ok=True)
    try:
        high.start()
        wait_for(high, "the high-priority replica serving metrics", lambda: high.metrics_text() != "")
        low.start()
        wait_for(low, "the low-priority replica serving metrics", lambda: low.metrics_text() != "")
        yield high, low
    finally:
        high.stop()
        low.stop()
        cluster.kubectl("delete", "inferenceservices", "--all", "-n", namespace, check=False)
        cluster.kubectl("delete", "clusterkopfpeering", PEERING_NAME, "--wait=false", check=False)


def service_body(namespace: str) -> dict[str, Any]:
    return {
        "apiVersion": "chipfit.io/v1alpha1",
        "kind": "InferenceService",
        "metadata": {"name": "peer-chat", "namespace": namespace},
        "spec": {
            "model": {"id": "llama-3.1-8b"},
            "precisions": ["bf16", "fp8"],
            "slo": {"ttftP99Ms": 500, "itlP99Ms": 60},
            "workload": {
                "requestsPerSecond": 2,
                "promptTokens": {"mean": 800},
                "outputTokens": {"mean": 200},
            },
            "serving": "aggregated",
            "replicas": {"min": 1, "max": 4},
        },
    }


def get_service(cluster: Cluster, namespace: str) -> dict[str, Any] | None:
    result = cluster.kubectl(
        "get", "inferenceservice", "peer-chat", "-n", namespace, "-o", "json", check=False
    )
    return json.loads(result.stdout) if result.returncode == 0 else None


def test_only_the_leader_acts_and_the_standby_takes_over(
    cluster: Cluster, namespace: str, peered: tuple[PeeredOperator, PeeredOperator]
) -> None:
    high, low = peered
    cluster.apply_objects([service_body(namespace)])
    service = wait_for(
        high,
        "peer-chat Ready",
        lambda: (lambda s: s if s is not None and converged(s) else None)(get_service(cluster, namespace)),
    )
    assert condition(service, "Placed")["status"] == "True"
    assert high.fleet_reconciles() > 0
    assert low.fleet_reconciles() == 0, "the standby replica re-planned while the leader was alive"

    # The leader dies; once its peering entry expires the standby acts on the next change.
    high.kill()
    cluster.kubectl(
        "patch",
        "inferenceservice",
        "peer-chat",
        "-n",
        namespace,
        "--type=merge",
        "-p",
        '{"spec":{"slo":{"ttftP99Ms":400}}}',
    )
    generation = service["metadata"]["generation"] + 1

    def taken_over() -> dict[str, Any] | None:
        s = get_service(cluster, namespace)
        return (
            s
            if s is not None and s["status"].get("observedGeneration") == generation and converged(s)
            else None
        )

    wait_for(low, "the standby replica to take over", taken_over)
    assert low.fleet_reconciles() > 0
