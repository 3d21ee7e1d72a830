"""`helm install` of charts/chipfit on the real control plane, then `helm uninstall`.

What is true, and tested: install creates the operator Deployment, its ServiceAccount, ClusterRole and
binding (whose rights the API server's authorizer confirms), the CRDs, kopf's peering CRD and object,
the dashboards and the AcceleratorPools from values; uninstall removes all of them except the CRDs from
the chart's crds/ folder, which helm never deletes (nor upgrades): docs/operations.md says how to.
"""

from __future__ import annotations

import json
import os
import pathlib
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from typing import Any, Final

import httpx
import pytest
import yaml
from prometheus_client import parser

from chipfit import rbac

from .conftest import COMMAND_TIMEOUT_S, REPO_DIR, Cluster

pytestmark = pytest.mark.e2e

CHART_DIR: Final = REPO_DIR / "charts" / "chipfit"
EXAMPLES_DIR: Final = REPO_DIR / "examples"
LOOPBACK: Final = "127.0.0.1"
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
    assert not can_i(cluster, subject, "update", "deployments.apps", "default")
    # Pods are read (scheduler reasons) and may be granted to a pod-discovering SGLang router, never written.
    assert can_i(cluster, subject, "watch", "pods", "default")
    assert can_i(cluster, subject, "create", "roles.rbac.authorization.k8s.io", "default")
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

    # An upgrade re-renders everything; the peering hook re-creates the peering object.
    helm(
        cluster,
        "upgrade",
        name,
        str(CHART_DIR),
        "-n",
        namespace,
        "--reuse-values",
        "--set",
        "extraArgs={--verbose}",
    )
    upgraded = cluster.get_json("deployment", name, "-n", namespace)
    assert upgraded["spec"]["template"]["spec"]["containers"][0]["args"][-1] == "--verbose"
    assert exists(cluster, "clusterkopfpeering", name)

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


def _free_port() -> int:
    """A currently free loopback TCP port."""
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        port: int = sock.getsockname()[1]
        return port


def _service_account_kubeconfig(cluster: Cluster, namespace: str, account: str, path: pathlib.Path) -> None:
    """A kubeconfig that authenticates as the chart's ServiceAccount (a TokenRequest token), nothing more."""
    token = cluster.kubectl("create", "token", account, "-n", namespace, "--duration", "1h").stdout.strip()
    admin = yaml.safe_load(cluster.kubeconfig.read_text())
    cluster_entry = admin["clusters"][0]
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [cluster_entry],
                "users": [{"name": account, "user": {"token": token}}],
                "contexts": [
                    {"name": account, "context": {"cluster": cluster_entry["name"], "user": account}}
                ],
                "current-context": account,
            }
        )
    )


def _forbidden_lines(log_text: str) -> list[str]:
    """Operator log lines reporting an API call the authorizer refused."""
    markers = ("Forbidden", " 403 ", "Not enough permissions")  # the last: kopf's own wording
    return [line for line in log_text.splitlines() if any(marker in line for marker in markers)]


def _example_docs(file_name: str, kind: str) -> list[dict[str, Any]]:
    """The documents of one kind in examples/<file_name>."""
    docs = yaml.safe_load_all((EXAMPLES_DIR / file_name).read_text())
    return [doc for doc in docs if doc and doc["kind"] == kind]


def _plan_exported(samples: dict[str, list[Any]], namespace: str, services: int, pools: set[str]) -> bool:
    """The scrape holds a cost for each of the namespace's services and capacity for every pool.

    Service plans and pool usage are recorded one after the other: both must be there.
    """
    costs = [
        s for s in samples.get("chipfit_service_predicted_cost_dollars_per_hour", [])
        if s.labels["namespace"] == namespace
    ]  # fmt: skip
    pool_labels = {s.labels["pool"] for s in samples.get("chipfit_pool_capacity_devices", [])}
    return len(costs) == services and pools <= pool_labels


def _scrape(url: str) -> dict[str, list[Any]]:
    """Prometheus samples by name from a /metrics endpoint; empty when it does not answer yet."""
    try:
        response = httpx.get(url, timeout=5.0)
    except httpx.HTTPError:
        return {}
    samples: dict[str, list[Any]] = {}
    for family in parser.text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append(sample)
    return samples


def test_operator_runs_with_exactly_the_charts_rbac_and_exports_metrics(
    cluster: Cluster, release: dict[str, Any], tmp_path: pathlib.Path
) -> None:
    """`chipfit operator`, authenticated as the chart's ServiceAccount, plans the example fleet: no call is
    forbidden, /healthz answers, and /metrics carries the plan, the pools, the solve and the reconciles."""
    name, namespace = release["name"], release["namespace"]
    values = yaml.safe_load(release["values_file"].read_text())
    values["acceleratorPools"] = []  # the example fleet below is the fleet
    release["values_file"].write_text(yaml.safe_dump(values))
    helm(cluster, "install", name, str(CHART_DIR), "-n", namespace, "--create-namespace",
         "-f", str(release["values_file"]))  # fmt: skip

    # The example fleet (the cluster's fake nodes are registered from it) and its services, moved into
    # this test's namespace. Both are removed afterwards (pools only if this test created them), so that
    # later tests' operators see neither.
    pools = {doc["metadata"]["name"] for doc in _example_docs("10-fleet.yaml", "AcceleratorPool")}
    created_pools = {pool for pool in pools if not exists(cluster, "acceleratorpool", pool)}
    services = [
        {**doc, "metadata": {**doc["metadata"], "namespace": namespace}}
        for doc in _example_docs("20-services.yaml", "InferenceService")
    ]
    assert services
    try:
        cluster.kubectl("apply", "-f", str(EXAMPLES_DIR / "10-fleet.yaml"))
        cluster.apply_objects(services)
        _run_operator_and_scrape(cluster, name, namespace, services, pools, tmp_path)
    finally:
        cluster.kubectl("delete", "inferenceservices", "--all", "-n", namespace, "--timeout=60s", check=False)
        for pool in sorted(created_pools):
            cluster.kubectl("delete", "acceleratorpool", pool, "--ignore-not-found", check=False)


def _run_operator_and_scrape(
    cluster: Cluster,
    name: str,
    namespace: str,
    services: list[dict[str, Any]],
    pools: set[str],
    tmp_path: pathlib.Path,
) -> None:
    """Start `chipfit operator` as the release's ServiceAccount, check what it serves, stop it."""
    sa_kubeconfig = tmp_path / "service-account.kubeconfig"
    _service_account_kubeconfig(cluster, namespace, name, sa_kubeconfig)
    health_port, metrics_port = _free_port(), _free_port()
    log_path = tmp_path / "operator.log"
    with log_path.open("w") as log:
        operator = subprocess.Popen(
            [
                sys.executable, "-m", "chipfit.cli", "operator",
                "--kubeconfig", str(sa_kubeconfig),
                f"--peering={name}",
                f"--liveness=http://{LOOPBACK}:{health_port}/healthz",
                f"--metrics-port={metrics_port}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            # KUBECONFIG too: kopf's own login reads it (the kubernetes client fixes its default path at
            # import), and both of the operator's clients must act as the ServiceAccount.
            env={**os.environ, "POD_ID": f"{name}-local", "KUBECONFIG": str(sa_kubeconfig)},
        )  # fmt: skip
    try:
        metrics_url = f"http://{LOOPBACK}:{metrics_port}/metrics"

        def planned() -> dict[str, list[Any]]:
            forbidden = _forbidden_lines(log_path.read_text())
            if forbidden:
                pytest.fail(
                    "the chart's RBAC refused the operator:\n" + "\n".join(forbidden[:10]), pytrace=False
                )
            if operator.poll() is not None:
                pytest.fail(f"the operator exited: {log_path.read_text()[-2000:]}", pytrace=False)
            samples = _scrape(metrics_url)
            return samples if _plan_exported(samples, namespace, len(services), pools) else {}

        try:
            samples = cluster.wait_until(
                "the operator's metrics to show every service's plan and pool", planned
            )
        except pytest.fail.Exception as failure:
            tail = "\n".join(log_path.read_text().splitlines()[-30:])
            pytest.fail(f"{failure}\noperator log tail:\n{tail}", pytrace=False)
        assert operator.poll() is None, log_path.read_text()[-2000:]
        assert httpx.get(f"http://{LOOPBACK}:{health_port}/healthz", timeout=5.0).status_code == 200
        cost_samples = samples["chipfit_service_predicted_cost_dollars_per_hour"]
        costs = [s.value for s in cost_samples if s.labels["namespace"] == namespace]
        assert all(cost > 0 for cost in costs), costs
        service_names = {doc["metadata"]["name"] for doc in services}
        for metric in ("chipfit_service_predicted_ttft_p99_seconds", "chipfit_service_slo_ttft_p99_seconds"):
            labelled = {s.labels["service"] for s in samples[metric] if s.labels["namespace"] == namespace}
            assert labelled == service_names, metric
        assert pools <= {s.labels["pool"] for s in samples["chipfit_pool_capacity_devices"]}
        assert sum(s.value for s in samples["chipfit_solver_runs_total"]) >= 1
        assert sum(s.value for s in samples["chipfit_reconciles_total"]) >= 1
        assert [s.value for s in samples["chipfit_build_info"]] == [1.0]
        # This replica joined the release's peering object under its POD_ID.
        peering = cluster.get_json("clusterkopfpeering", name)
        assert f"{name}-local" in peering.get("status", {})
    finally:
        operator.terminate()
        try:
            operator.wait(timeout=COMMAND_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            operator.kill()
            operator.wait()
    # The chart's ClusterRole was enough for everything the operator did.
    forbidden = _forbidden_lines(log_path.read_text())
    assert not forbidden, "\n".join(forbidden[:10])
