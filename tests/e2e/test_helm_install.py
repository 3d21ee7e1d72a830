"""`helm install` of charts/chipfit on the real control plane, then `helm uninstall`.

What is true, and tested: install creates the operator Deployment, its ServiceAccount, ClusterRole and
binding (whose rights the API server's authorizer confirms), the CRDs, kopf's peering CRD and object,
the dashboards and the AcceleratorPools from values; uninstall removes all of them except the CRDs from
the chart's crds/ folder, which helm never deletes (nor upgrades): docs/operations.md says how to.
"""

from __future__ import annotations

import json
import pathlib
import subprocess
import uuid
from collections.abc import Iterator
from typing import Any, Final

import pytest
import yaml

from chipfit import rbac

from .conftest import COMMAND_TIMEOUT_S, REPO_DIR, Cluster

pytestmark = pytest.mark.e2e

CHART_DIR: Final = REPO_DIR / "charts" / "chipfit"
CHIPFIT_CRDS: Final = (
    "acceleratorpools.chipfit.io",
    "inferenceservices.chipfit.io",
    "performanceprofiles.chipfit.io",
)
PEERING_CRD: Final = "clusterkopfpeerings.kopf.dev"
POOL_SPEC: Final = {"accelerator": "l4", "devicesPerNode": 4, "nodes": 1, "pricePerDeviceHour": 0.8}


def helm(cluster: Cluster, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run the pinned helm against the e2e cluster."""
    result = subprocess.run(
        [str(cluster.helm_path), "--kubeconfig", str(cluster.kubeconfig), *args],
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT_S,
        check=False,
    )
    if check and result.returncode != 0:
        pytest.fail(f"helm {' '.join(args)}: {result.stderr.strip()}", pytrace=False)
    return result


def exists(cluster: Cluster, *what: str) -> bool:
    """Whether `kubectl get <what>` finds the object."""
    return cluster.kubectl("get", *what, "-o", "name", check=False).returncode == 0


def can_i(cluster: Cluster, subject: str, verb: str, resource: str, namespace: str | None = None) -> bool:
    """The API server's own authorization answer for the operator's ServiceAccount."""
    scope = ["-n", namespace] if namespace else []
    result = cluster.kubectl("auth", "can-i", verb, resource, f"--as={subject}", *scope, check=False)
    return result.stdout.strip() == "yes"


@pytest.fixture
def release(cluster: Cluster, tmp_path: pathlib.Path) -> Iterator[dict[str, Any]]:
    """A uniquely named release and namespace; uninstalled and deleted afterwards whatever happened."""
    suffix = uuid.uuid4().hex[:6]
    name = f"chipfit-e2e-{suffix}"
    info: dict[str, Any] = {
        "name": name,
        "namespace": name,
        "pool": f"helm-e2e-{suffix}",
        # Another test (or kopf user) may own kopf's peering CRD already; then it must not be ours.
        "peering_crd_preexisting": exists(cluster, "crd", PEERING_CRD),
        "crds_preexisting": {crd: exists(cluster, "crd", crd) for crd in CHIPFIT_CRDS},
        "values_file": tmp_path / "values.yaml",
    }
    values = {
        "replicaCount": 2,
        "leaderElection": {
            "enabled": True,
            "peeringName": name,
            "installPeeringCRD": not info["peering_crd_preexisting"],
        },
        "podDisruptionBudget": {"enabled": True},
        "acceleratorPools": [{"name": info["pool"], "spec": POOL_SPEC}],
    }
    info["values_file"].write_text(yaml.safe_dump(values))
    try:
        yield info
    finally:
        helm(cluster, "uninstall", name, "-n", name, "--ignore-not-found", check=False)
        cluster.kubectl("delete", "clusterkopfpeering", name, "--ignore-not-found", check=False)
        cluster.kubectl("delete", "namespace", name, "--wait=false", "--ignore-not-found", check=False)


def test_helm_install_creates_the_operator_and_uninstall_removes_it(
    cluster: Cluster, release: dict[str, Any]
) -> None:
    name, namespace = release["name"], release["namespace"]
    helm(
        cluster, "install", name, str(CHART_DIR), "-n", namespace, "--create-namespace",
        "-f", str(release["values_file"]),
    )  # fmt: skip

    # The operator Deployment, as rendered: two replicas peering under this release's name.
    deployment = cluster.get_json("deployment", name, "-n", namespace)
    assert deployment["spec"]["replicas"] == 2
    pod = deployment["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == name
    (container,) = pod["containers"]
    assert f"--peering={name}" in container["args"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert exists(cluster, "poddisruptionbudget", name, "-n", namespace)
    assert exists(cluster, "service", f"{name}-metrics", "-n", namespace)

    # RBAC: the ClusterRole holds exactly the table, and the authorizer grants just that.
    role = cluster.get_json("clusterrole", name)
    assert role["rules"] == rbac.render_cluster_role_rules(frozenset({"leaderElection.enabled"}))
    binding = cluster.get_json("clusterrolebinding", name)
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": name, "namespace": namespace}]
    subject = f"system:serviceaccount:{namespace}:{name}"
    assert can_i(cluster, subject, "watch", "inferenceservices.chipfit.io", "default")
    assert can_i(cluster, subject, "patch", "inferenceservices.chipfit.io/status", "default")
    assert can_i(cluster, subject, "create", "deployments.apps", "default")
    assert can_i(cluster, subject, "list", "nodes")
    assert can_i(cluster, subject, "patch", "clusterkopfpeerings.kopf.dev")
    assert not can_i(cluster, subject, "get", "secrets", "default")
    assert not can_i(cluster, subject, "delete", "nodes")
    assert not can_i(cluster, subject, "create", "pods", "default")
    assert not can_i(cluster, subject, "delete", "customresourcedefinitions.apiextensions.k8s.io")

    # CRDs: chipfit's three are served (installed now, or already by an earlier test).
    for crd in CHIPFIT_CRDS:
        conditions = {c["type"]: c["status"] for c in cluster.get_json("crd", crd)["status"]["conditions"]}
        assert conditions.get("Established") == "True", crd
    # kopf's peering CRD and this release's peering object (a post-install hook).
    assert exists(cluster, "crd", PEERING_CRD)
    assert exists(cluster, "clusterkopfpeering", name)
    # Default AcceleratorPools from values, and the dashboards for the Grafana sidecar.
    assert cluster.get_json("acceleratorpool", release["pool"])["spec"]["accelerator"] == "l4"
    dashboards = cluster.get_json("configmaps", "-n", namespace, "-l", "grafana_dashboard=1")["items"]
    assert len(dashboards) == len(list((CHART_DIR / "dashboards").glob("*.json")))
    for cm in dashboards:
        for body in cm["data"].values():
            assert json.loads(body)["uid"]

    helm(cluster, "uninstall", name, "-n", namespace, "--wait")

    gone = (
        ("deployment", name, "-n", namespace),
        ("serviceaccount", name, "-n", namespace),
        ("service", f"{name}-metrics", "-n", namespace),
        ("poddisruptionbudget", name, "-n", namespace),
        ("clusterrole", name),
        ("clusterrolebinding", name),
        ("acceleratorpool", release["pool"]),
    )
    for what in gone:
        cluster.wait_until(f"{' '.join(what)} deleted", lambda what=what: not exists(cluster, *what))
    assert not cluster.get_json("configmaps", "-n", namespace, "-l", "grafana_dashboard=1")["items"]
    if release["peering_crd_preexisting"]:
        # Not ours: left alone, and so is the hook-created peering object (cleaned up by the fixture).
        assert exists(cluster, "crd", PEERING_CRD)
    else:
        cluster.wait_until(f"{PEERING_CRD} deleted", lambda: not exists(cluster, "crd", PEERING_CRD))
    # helm never deletes what it installed from crds/: they stay, Established, with whatever CRs exist.
    for crd in CHIPFIT_CRDS:
        assert exists(cluster, "crd", crd), f"{crd} was deleted by helm uninstall"
