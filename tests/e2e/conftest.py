"""Session fixtures of the e2e tier: a real control plane started by e2e/cluster.sh (see e2e/README.md).

The cluster is used when it is up (tests/run.sh brings one up around pytest). Otherwise the `cluster`
fixture starts one itself when the control plane is built (or always on CI) and stops it at the end.
When no cluster can be had, e2e tests fail on CI (CI=true) and are skipped locally with the reason.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import pathlib
import subprocess
import sys
import time
import types
import uuid
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Final, NoReturn

import pytest

REPO_DIR: Final = pathlib.Path(__file__).resolve().parents[2]
E2E_DIR: Final = REPO_DIR / "e2e"
BIN_DIR: Final = E2E_DIR / ".cache" / "bin"
CLUSTER_SH: Final = E2E_DIR / "cluster.sh"
BUILD_STAMP: Final = BIN_DIR / ".kube-apiserver.sha256"
FIXTURES_DIR: Final = pathlib.Path(__file__).resolve().parent / "fixtures"
# Bound on waiting for the scheduler or a controller to act; they act within seconds, the bound only
# keeps a broken cluster from hanging the run (this is a timeout, not a timing assertion).
SETTLE_TIMEOUT_S: Final = 90.0
POLL_INTERVAL_S: Final = 0.5
# Bound on one kubectl / helm call.
COMMAND_TIMEOUT_S: Final = 120
# `e2e/cluster.sh up` includes a cold build on a fresh machine (tens of minutes on 2 cores).
CLUSTER_UP_TIMEOUT_S: Final = 60 * 60


def run_dir() -> pathlib.Path:
    """Where e2e/cluster.sh keeps the cluster's state (same variable as the script)."""
    return pathlib.Path(os.environ.get("CHIPFIT_E2E_RUN_DIR", str(E2E_DIR / ".run")))


def on_ci() -> bool:
    """True on CI, where a missing cluster is a failure, not a skip."""
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def unavailable(reason: str) -> NoReturn:
    """Fail on CI, skip locally: the e2e tier cannot run without a cluster."""
    if on_ci():
        pytest.fail(f"e2e cluster unavailable on CI: {reason}", pytrace=False)
    pytest.skip(f"e2e cluster unavailable: {reason}")


def load_fleet_module() -> types.ModuleType:
    """Import e2e/fleet.py (a script folder, not a package) under a unique module name."""
    name = "chipfit_e2e_fleet"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, E2E_DIR / "fleet.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


@dataclasses.dataclass(frozen=True)
class Cluster:
    """A reachable cluster: its admin kubeconfig and the pinned kubectl and helm that talk to it."""

    kubeconfig: pathlib.Path
    mode: str
    kubectl_path: pathlib.Path = BIN_DIR / "kubectl"
    helm_path: pathlib.Path = BIN_DIR / "helm"

    def kubectl(
        self, *args: str, stdin: str | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """Run kubectl against this cluster; with check, a non-zero exit fails the test with stderr."""
        result = subprocess.run(
            [str(self.kubectl_path), "--kubeconfig", str(self.kubeconfig), *args],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=COMMAND_TIMEOUT_S,
            check=False,
        )
        if check and result.returncode != 0:
            pytest.fail(f"kubectl {' '.join(args)}: {result.stderr.strip()}", pytrace=False)
        return result

    def get_json(self, *args: str) -> Any:
        """`kubectl get ... -o json`, parsed."""
        return json.loads(self.kubectl("get", *args, "-o", "json").stdout)

    def apply_objects(self, objects: Sequence[Mapping[str, Any]], *extra: str) -> None:
        """kubectl apply a list of objects."""
        body = {"apiVersion": "v1", "kind": "List", "items": list(objects)}
        self.kubectl("apply", "-f", "-", *extra, stdin=json.dumps(body))

    def wait_until(self, what: str, probe: Any) -> Any:
        """Poll probe() until it returns something truthy; fail after SETTLE_TIMEOUT_S."""
        deadline = time.monotonic() + SETTLE_TIMEOUT_S
        while True:
            value = probe()
            if value:
                return value
            if time.monotonic() > deadline:
                pytest.fail(f"timed out after {SETTLE_TIMEOUT_S:.0f} s waiting for {what}", pytrace=False)
            time.sleep(POLL_INTERVAL_S)


def _status_ok() -> bool:
    """True when e2e/cluster.sh status reports every component healthy."""
    result = subprocess.run(
        ["bash", str(CLUSTER_SH), "status"], capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S
    )
    return result.returncode == 0


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    """The e2e cluster; started here (and stopped at the end) only if it is not up already."""
    started_here = False
    if not _status_ok():
        if os.environ.get("CHIPFIT_E2E_NO_UP") == "1":
            unavailable(f"e2e/cluster.sh up already failed (logs: {run_dir() / 'logs'})")
        if not on_ci() and not BUILD_STAMP.exists():
            unavailable(
                "the control plane is not built: run `e2e/cluster.sh up` (builds it once) or `make test`"
            )
        result = subprocess.run(
            ["bash", str(CLUSTER_SH), "up"],
            capture_output=True,
            text=True,
            timeout=CLUSTER_UP_TIMEOUT_S,
            check=False,
        )
        if result.returncode != 0:
            tail = " | ".join(result.stderr.strip().splitlines()[-5:])
            unavailable(f"e2e/cluster.sh up failed: {tail}")
        started_here = True
    mode = (run_dir() / "mode").read_text().strip()
    try:
        yield Cluster(kubeconfig=run_dir() / "kubeconfig", mode=mode)
    finally:
        if started_here:
            subprocess.run(["bash", str(CLUSTER_SH), "down"], capture_output=True, timeout=COMMAND_TIMEOUT_S)


@pytest.fixture(scope="session")
def kube_api(cluster: Cluster) -> Iterator[Any]:
    """A kubernetes Python ApiClient for the e2e cluster."""
    import kubernetes  # imported here: only e2e tests need it

    client = kubernetes.config.new_client_from_config(config_file=str(cluster.kubeconfig))
    try:
        yield client
    finally:
        client.close()


@pytest.fixture(scope="session")
def fleet() -> types.ModuleType:
    """e2e/fleet.py, the fake GPU fleet generator."""
    return load_fleet_module()


@pytest.fixture(scope="session")
def crds_applied(cluster: Cluster) -> list[str]:
    """Apply crds/ and wait until every CRD is Established; returns the CRD names."""
    crd_files = sorted((REPO_DIR / "crds").glob("*.yaml"))
    if not crd_files:
        pytest.fail("crds/ holds no CRD (generate them with `chipfit crds --write`)", pytrace=False)
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(REPO_DIR / "crds"))
    names = [
        item["metadata"]["name"]
        for item in cluster.get_json("-f", str(REPO_DIR / "crds"))["items"]
        if item["kind"] == "CustomResourceDefinition"
    ]
    cluster.kubectl(
        "wait",
        "--for=condition=Established",
        f"--timeout={SETTLE_TIMEOUT_S:.0f}s",
        *[f"crd/{n}" for n in names],
    )
    return names


@pytest.fixture(scope="session")
def fixture_fleet(cluster: Cluster, fleet: types.ModuleType) -> list[Any]:
    """Register the small fixture fleet (tests/e2e/fixtures/pools.yaml) and wait until it is Ready."""
    pools = fleet.load_pools([FIXTURES_DIR / "pools.yaml"])
    nodes = fleet.render_fleet(pools)
    cluster.apply_objects(nodes)
    cluster.kubectl(
        "wait",
        "--for=condition=Ready",
        f"--timeout={SETTLE_TIMEOUT_S:.0f}s",
        *[f"node/{n['metadata']['name']}" for n in nodes],
    )
    return list(pools)


@pytest.fixture
def namespace(cluster: Cluster) -> Iterator[str]:
    """A fresh namespace, deleted (without waiting) after the test."""
    name = f"e2e-{uuid.uuid4().hex[:8]}"
    cluster.kubectl("create", "namespace", name)
    # Pods are admitted once the controller-manager created the namespace's default ServiceAccount.
    cluster.wait_until(
        f"ServiceAccount default in {name}",
        lambda: cluster.kubectl("get", "serviceaccount", "default", "-n", name, check=False).returncode == 0,
    )
    try:
        yield name
    finally:
        cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)
