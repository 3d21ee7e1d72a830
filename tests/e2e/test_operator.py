"""The operator on the real control plane: examples -> planned Deployments -> pods bound to the right fake
GPU nodes -> Ready; node loss, an SLO change, an invalid spec and a killed operator.

The operator runs as a subprocess (`chipfit operator --standalone`) against the e2e cluster's kubeconfig.
Waits are bounded (timeouts, not timing assertions).
"""

from __future__ import annotations

import os
import pathlib
import re
import signal
import socket
import subprocess
import time
import types
import urllib.request
from collections.abc import Iterator, Mapping
from typing import Any, Final

import pytest
import yaml

from .conftest import REPO_DIR, Cluster, run_dir

pytestmark = pytest.mark.e2e

EXAMPLES_DIR: Final = REPO_DIR / "examples"
NAMESPACE: Final = "ml-serving"
CHIPFIT: Final = REPO_DIR / ".venv" / "bin" / "chipfit"
# Bound on the operator converging (a fleet solve plus a few reconcile passes; minutes only on a loaded
# 2-core machine). A timeout, not a timing assertion.
CONVERGE_TIMEOUT_S: Final = 240.0
POLL_S: Final = 1.0
# The operator coalesces changes this long before solving (short here to keep the suite quick).
DEBOUNCE_S: Final = "0.5"
# A CPU-only node for the prefill/decode routers (every example GPU pool is tainted).
CPU_NODE: Final = "chipfit-e2e-cpu-0"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Operator:
    """`chipfit operator` as a child process; start, SIGKILL, restart."""

    def __init__(self, cluster: Cluster, log_dir: pathlib.Path) -> None:
        self.cluster = cluster
        self.log_dir = log_dir
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.metrics_port = 0

    def start(self) -> None:
        self.starts += 1
        log = (self.log_dir / f"operator-{self.starts}.log").open("wb")
        env = {**os.environ, "KUBECONFIG": str(self.cluster.kubeconfig)}
        self.metrics_port = _free_port()
        self.process = subprocess.Popen(
            self.command(),
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )

    def command(self) -> list[str]:
        """The operator's command line (standalone; subclasses add peering)."""
        return [
            str(CHIPFIT),
            "operator",
            *(["--standalone"] if type(self) is Operator else []),
            "--kubeconfig",
            str(self.cluster.kubeconfig),
            "--liveness",
            f"http://127.0.0.1:{_free_port()}/healthz",
            "--metrics-port",
            str(self.metrics_port),
            "--debounce-seconds",
            DEBOUNCE_S,
        ]

    def kill(self) -> None:
        """SIGKILL: no cleanup runs, as when a node dies under the operator."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=30)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()

    def metrics_text(self) -> str:
        """The operator's /metrics page ("" while it does not serve)."""
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                text: str = response.read().decode()
                return text
        except OSError:
            return ""

    def fleet_reconciles(self) -> float:
        """chipfit_reconciles_total{kind="fleet"} from the operator's /metrics (0 before it serves)."""
        for line in self.metrics_text().splitlines():
            if line.startswith('chipfit_reconciles_total{kind="fleet"}'):
                return float(line.split()[-1])
        return 0.0

    def log_tail(self) -> str:
        path = self.log_dir / f"operator-{self.starts}.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-30:]) if path.exists() else ""


def wait_for(operator: Operator, what: str, probe: Any) -> Any:
    """Poll until probe() is truthy; fail with the operator's log after CONVERGE_TIMEOUT_S."""
    deadline = time.monotonic() + CONVERGE_TIMEOUT_S
    while True:
        value = probe()
        if value:
            return value
        if operator.process is not None and operator.process.poll() is not None:
            pytest.fail(
                f"operator exited ({operator.process.returncode}) waiting for {what}:\n{operator.log_tail()}"
            )
        if time.monotonic() > deadline:
            services = operator.cluster.kubectl(
                "get", "inferenceservices", "-n", NAMESPACE, check=False
            ).stdout
            pending = operator.cluster.kubectl(
                "get", "pods", "-n", NAMESPACE, "--field-selector=status.phase!=Running", check=False
            ).stdout
            pytest.fail(
                f"timed out waiting for {what}\n{services}\n{pending}\noperator log:\n{operator.log_tail()}",
                pytrace=False,
            )
        time.sleep(POLL_S)


def example_services() -> list[str]:
    return [
        doc["metadata"]["name"]
        for doc in yaml.safe_load_all((EXAMPLES_DIR / "20-services.yaml").read_text())
        if doc and doc.get("kind") == "InferenceService"
    ]


def example_pools() -> dict[str, dict[str, Any]]:
    return {
        doc["metadata"]["name"]: doc
        for doc in yaml.safe_load_all((EXAMPLES_DIR / "10-fleet.yaml").read_text())
        if doc and doc.get("kind") == "AcceleratorPool"
    }


def services_by_name(cluster: Cluster) -> dict[str, dict[str, Any]]:
    items = cluster.get_json("inferenceservices", "-n", NAMESPACE)["items"]
    return {s["metadata"]["name"]: s for s in items}


def condition(service: Mapping[str, Any], type_: str) -> Mapping[str, Any]:
    for c in (service.get("status") or {}).get("conditions") or ():
        if c["type"] == type_:
            return dict(c)
    return {}


def converged(service: Mapping[str, Any]) -> bool:
    """Ready for the current generation."""
    status = service.get("status") or {}
    ready = condition(service, "Ready")
    return (
        status.get("observedGeneration") == service["metadata"]["generation"]
        and ready.get("status") == "True"
    )


def placement_of(service: Mapping[str, Any]) -> list[tuple[str, str, str, str, int, int]]:
    return sorted(
        (p["role"], p["pool"], p["accelerator"], p["precision"], p["tensorParallel"], p["replicas"])
        for p in (service.get("status") or {}).get("placement") or ()
    )


def owned_deployments(cluster: Cluster, service: Mapping[str, Any]) -> list[dict[str, Any]]:
    uid = service["metadata"]["uid"]
    items = cluster.get_json("deployments", "-n", NAMESPACE)["items"]
    return [d for d in items if any(r["uid"] == uid for r in d["metadata"].get("ownerReferences") or ())]


def live_keys(cluster: Cluster, service: Mapping[str, Any]) -> set[tuple[str, str, str]]:
    """(role, pool, config) of the service's serving Deployments (the router aside)."""
    keys = set()
    for d in owned_deployments(cluster, service):
        labels = d["metadata"]["labels"]
        if labels["chipfit.io/role"] != "router":
            keys.add((labels["chipfit.io/role"], labels["chipfit.io/pool"], labels["chipfit.io/config"]))
    return keys


def all_converged(cluster: Cluster, names: list[str]) -> dict[str, dict[str, Any]] | None:
    services = services_by_name(cluster)
    if all(n in services and converged(services[n]) for n in names):
        return services
    return None


@pytest.fixture(scope="module")
def operator(
    cluster: Cluster,
    crds_applied: list[str],
    fleet: types.ModuleType,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Operator]:
    """The example fleet's pools and a CPU node registered, the operator running; cleaned up after."""
    cpu_node = {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": CPU_NODE,
            "annotations": dict([fleet.KWOK_ANNOTATION]),
            "labels": {"kubernetes.io/hostname": CPU_NODE, "kubernetes.io/os": "linux", "type": "kwok"},
        },
        "status": {
            "allocatable": {"cpu": "32", "memory": "128Gi", "pods": "110"},
            "capacity": {"cpu": "32", "memory": "128Gi", "pods": "110"},
        },
    }
    cluster.apply_objects([cpu_node])
    cluster.kubectl(
        "apply", "-f", str(EXAMPLES_DIR / "00-namespace.yaml"), "-f", str(EXAMPLES_DIR / "10-fleet.yaml")
    )
    # Logs next to the cluster's own (pytest's shared temp folders are pruned by concurrent runs).
    log_dir = run_dir() / "logs" / "operator"
    log_dir.mkdir(parents=True, exist_ok=True)
    op = Operator(cluster, log_dir)
    op.start()
    try:
        yield op
    finally:
        op.stop()
        cluster.kubectl("delete", "inferenceservices", "--all", "-n", NAMESPACE, check=False)
        cluster.kubectl("delete", "node", CPU_NODE, "--wait=false", check=False)


def test_examples_run_ready_on_their_planned_chips(cluster: Cluster, operator: Operator) -> None:
    names = example_services()
    cluster.kubectl("apply", "-f", str(EXAMPLES_DIR / "20-services.yaml"))
    services = wait_for(operator, "every example service Ready", lambda: all_converged(cluster, names))
    pools = example_pools()
    nodes = {n["metadata"]["name"]: n for n in cluster.get_json("nodes")["items"]}
    pods = cluster.get_json("pods", "-n", NAMESPACE)["items"]
    for name in names:
        service = services[name]
        placement = (service.get("status") or {}).get("placement") or []
        assert placement, f"{name}: Ready without a placement"
        planned = {(p["role"], p["pool"], f"{p['precision']}-tp{p['tensorParallel']}") for p in placement}
        assert live_keys(cluster, service) == planned
        for p in placement:
            pool = pools[p["pool"]]
            matching = [
                d
                for d in owned_deployments(cluster, service)
                if d["metadata"]["labels"].get("chipfit.io/pool") == p["pool"]
                and d["metadata"]["labels"].get("chipfit.io/role") == p["role"]
                and d["metadata"]["labels"].get("chipfit.io/config")
                == f"{p['precision']}-tp{p['tensorParallel']}"
            ]
            assert len(matching) == 1, f"{name}: one Deployment per placement, got {len(matching)}"
            deployment = matching[0]
            assert deployment["spec"]["replicas"] == p["replicas"]
            assert deployment["status"].get("readyReplicas") == p["replicas"]
            container = deployment["spec"]["template"]["spec"]["containers"][0]
            limits = container["resources"]["limits"]
            (resource,) = limits
            units = 2 if p["accelerator"] == "inf2" else 1  # NeuronCores per Inferentia2 chip
            assert int(limits[resource]) == p["tensorParallel"] * units
            selector = deployment["spec"]["selector"]["matchLabels"]
            bound = [
                pod
                for pod in pods
                if selector.items() <= pod["metadata"].get("labels", {}).items()
                and pod["status"].get("phase") == "Running"
            ]
            assert len(bound) >= p["replicas"]
            for pod in bound:
                node = nodes[pod["spec"]["nodeName"]]
                labels = node["metadata"]["labels"]
                # The real scheduler bound the pod to a node of the planned pool, advertising the resource.
                assert pool["spec"]["nodeSelector"].items() <= labels.items(), (name, pod["spec"]["nodeName"])
                assert int(node["status"]["allocatable"].get(resource, "0")) >= p["tensorParallel"] * units
        assert service["status"]["acceleratorSummary"] not in ("", "none")
        assert condition(service, "Placed")["status"] == "True"
    table = cluster.kubectl("get", "inferenceservices", "-n", NAMESPACE).stdout
    assert "ACCELERATOR" in table and "chat-8b" in table


def test_replan_without_changes_writes_nothing(cluster: Cluster, operator: Operator) -> None:
    names = example_services()
    wait_for(operator, "every example service Ready", lambda: all_converged(cluster, names))

    def versions() -> dict[str, str]:
        out = {}
        for kind in ("deployments", "services", "inferenceservices"):
            for item in cluster.get_json(kind, "-n", NAMESPACE)["items"]:
                out[f"{kind}/{item['metadata']['name']}"] = item["metadata"]["resourceVersion"]
        for pool in cluster.get_json("acceleratorpools")["items"]:
            out[f"pool/{pool['metadata']['name']}"] = pool["metadata"]["resourceVersion"]
        return out

    # The claim is about a re-plan whose inputs did not change. Under load the cluster can still be settling
    # after the services turned Ready (earlier tests' nodes going away, pools' counts catching up): a
    # re-plan that had to price new (service, pool) pairs saw changed inputs and may rightly move services
    # (seen once in CI at load 22). Such a re-plan is not this test's subject: touch again, up to three
    # times, and judge the first one whose inputs were unchanged (the operator logs the pairs it priced).
    for _ in range(3):
        before = versions()
        done = operator.fleet_reconciles()
        # A node label no pool selects: a fleet change for the operator (it re-plans), none for the plan.
        cluster.kubectl("label", "node", CPU_NODE, f"chipfit-e2e/touch={int(done) + 1}", "--overwrite")
        wait_for(operator, "a fleet re-plan", lambda: operator.fleet_reconciles() > done)  # noqa: B023
        priced = last_replan_priced(operator)
        if priced == 0:
            break
    assert priced == 0, f"every re-plan priced new pairs: the fleet never settled\n{operator.log_tail()}"
    assert versions() == before


def last_replan_priced(operator: Operator) -> int | None:
    """How many (service, pool) pairs the operator's last re-plan priced (None: no re-plan logged yet)."""
    found = re.findall(r"re-plan: .*?, (\d+) pairs priced", operator.log_tail())
    return int(found[-1]) if found else None


def test_losing_a_pools_nodes_moves_only_the_services_on_it(
    cluster: Cluster, operator: Operator, fleet: types.ModuleType
) -> None:
    names = example_services()
    services = wait_for(operator, "every example service Ready", lambda: all_converged(cluster, names))
    before = {n: placement_of(services[n]) for n in names}
    # A pool exactly one service runs on (the whole service, preferably), so "the others" exist.
    users: dict[str, set[str]] = {}
    for n, pl in before.items():
        for p in pl:
            users.setdefault(p[1], set()).add(n)
    candidates = sorted(pool for pool, who in users.items() if len(who) == 1)
    assert candidates, f"every pool is shared: {users}"
    movable = [
        pool
        for pool in candidates
        if not ((services[next(iter(users[pool]))]["spec"].get("placement") or {}).get("allowedAccelerators"))
    ]
    whole = [pool for pool in movable if all(p[1] == pool for p in before[next(iter(users[pool]))])]
    victim_pool = (whole or movable or candidates)[0]
    affected = {n for n, pl in before.items() if any(p[1] == victim_pool for p in pl)}
    victims = cluster.get_json("nodes", "-l", f"{fleet.POOL_LABEL_KEY}={victim_pool}")["items"]
    assert victims, f"no node of pool {victim_pool}"
    cluster.kubectl("delete", "node", *[n["metadata"]["name"] for n in victims])
    try:

        def moved() -> dict[str, dict[str, Any]] | None:
            now = services_by_name(cluster)
            for n in affected:
                pl = placement_of(now[n])
                if any(p[1] == victim_pool for p in pl) or condition(now[n], "Ready").get("status") != "True":
                    return None
            return now

        after = wait_for(operator, f"services on {victim_pool} moved and Ready", moved)
        for n in set(names) - affected:
            assert placement_of(after[n]) == before[n], (
                f"{n} was moved although {victim_pool} was not its pool"
            )
        for n in affected:
            assert all(
                d["metadata"]["labels"]["chipfit.io/pool"] != victim_pool
                for d in owned_deployments(cluster, after[n])
                if "chipfit.io/pool" in d["metadata"]["labels"]
            )
    finally:
        # Give the pool its nodes back for the tests that follow.
        pools = fleet.load_pools([EXAMPLES_DIR / "10-fleet.yaml"])
        nodes = [
            n
            for n in fleet.render_fleet(pools)
            if n["metadata"]["labels"].get(fleet.POOL_LABEL_KEY) == victim_pool
        ]
        cluster.apply_objects(nodes)


def test_slo_change_replans_and_rolls_out(cluster: Cluster, operator: Operator) -> None:
    names = example_services()
    wait_for(operator, "every example service Ready", lambda: all_converged(cluster, names))
    cluster.kubectl(
        "patch",
        "inferenceservice",
        "chat-8b",
        "-n",
        NAMESPACE,
        "--type=merge",
        "-p",
        '{"spec":{"slo":{"ttftP99Ms":150,"itlP99Ms":20}}}',
    )
    # Watch the rollout: every sample records each serving Deployment's (replicas, ready replicas).
    samples: list[dict[str, tuple[int, int]]] = []

    def settled() -> dict[str, Any] | None:
        chat = services_by_name(cluster)["chat-8b"]
        samples.append(
            {
                d["metadata"]["name"]: (d["spec"]["replicas"], d.get("status", {}).get("readyReplicas") or 0)
                for d in owned_deployments(cluster, chat)
                if d["metadata"]["labels"]["chipfit.io/role"] != "router"
            }
        )
        if not converged(chat):
            return None
        planned = {(p[0], p[1], f"{p[3]}-tp{p[4]}") for p in placement_of(chat)}
        return chat if live_keys(cluster, chat) == planned else None

    service = wait_for(operator, "chat-8b re-planned for its new SLO and rolled out", settled)
    predicted = service["status"]["predicted"]
    assert predicted["ttftP99Ms"] <= 150 and predicted["itlP99Ms"] <= 20
    final = samples[-1]
    # Serving never stopped, and an old Deployment disappeared only once the new ones were all ready.
    assert all(sum(ready for _, ready in sample.values()) >= 1 for sample in samples)
    seen_old: set[str] = set()
    for sample in samples:
        gone = seen_old - set(sample)
        if gone:
            new_ready = all(sample.get(n, (0, 0))[1] >= replicas for n, (replicas, _) in final.items())
            assert new_ready, f"{sorted(gone)} deleted before the new placement was ready: {sample}"
        seen_old |= set(sample) - set(final)
        seen_old -= gone


def test_invalid_spec_is_reported_with_its_field(cluster: Cluster, operator: Operator) -> None:
    body = {
        "apiVersion": "chipfit.io/v1alpha1",
        "kind": "InferenceService",
        "metadata": {"name": "too-long-context", "namespace": NAMESPACE},
        "spec": {
            "model": {"id": "llama-2-7b"},
            "slo": {"ttftP99Ms": 1000, "itlP99Ms": 100},
            "workload": {
                "requestsPerSecond": 1,
                "promptTokens": {"mean": 500},
                "outputTokens": {"mean": 100},
                "maxContextTokens": 16384,
            },
        },
    }
    cluster.apply_objects([body])
    try:

        def rejected() -> dict[str, Any] | None:
            placed = condition(services_by_name(cluster).get("too-long-context", {}), "Placed")
            return placed if placed.get("reason") == "InvalidSpec" else None

        placed = wait_for(operator, "InvalidSpec condition", rejected)
        assert placed["status"] == "False"
        assert placed["message"].startswith("spec.workload.maxContextTokens:")
        events = cluster.get_json(
            "events", "-n", NAMESPACE, "--field-selector", "involvedObject.name=too-long-context"
        )
        assert any(
            e["reason"] == "InvalidSpec" and "spec.workload.maxContextTokens" in e["message"]
            for e in events["items"]
        )
        service = services_by_name(cluster)["too-long-context"]
        assert owned_deployments(cluster, service) == []
    finally:
        cluster.kubectl(
            "delete", "inferenceservice", "too-long-context", "-n", NAMESPACE, "--wait=false", check=False
        )


def test_killed_operator_restarts_and_converges_without_duplicates(
    cluster: Cluster, operator: Operator
) -> None:
    names = example_services()
    wait_for(operator, "every example service Ready", lambda: all_converged(cluster, names))
    # A change lands, and the operator dies while it reacts to it. (Less traffic: the new plan needs no
    # new whole node, which the default scheduler may not be able to free; see docs/operator.md.)
    cluster.kubectl(
        "patch",
        "inferenceservice",
        "rag-70b",
        "-n",
        NAMESPACE,
        "--type=merge",
        "-p",
        '{"spec":{"workload":{"requestsPerSecond":1}}}',
    )
    time.sleep(float(DEBOUNCE_S) + 0.5)
    operator.kill()
    operator.start()
    services = wait_for(
        operator, "every example service Ready after restart", lambda: all_converged(cluster, names)
    )
    for name in names:
        service = services[name]
        deployments = owned_deployments(cluster, service)
        keys = [
            (
                d["metadata"]["labels"]["chipfit.io/role"],
                d["metadata"]["labels"].get("chipfit.io/pool"),
                d["metadata"]["labels"].get("chipfit.io/config"),
            )
            for d in deployments
        ]
        assert len(keys) == len(set(keys)), f"{name}: duplicate Deployments {keys}"
        planned = {(p[0], p[1], f"{p[3]}-tp{p[4]}") for p in placement_of(service)}
        assert {k for k in keys if k[0] != "router"} == planned, f"{name}: orphaned or missing Deployments"
    # Nothing in the namespace is left without an owner among the live services.
    uids = {s["metadata"]["uid"] for s in services.values()}
    for d in cluster.get_json("deployments", "-n", NAMESPACE, "-l", "app.kubernetes.io/managed-by=chipfit")[
        "items"
    ]:
        assert any(r["uid"] in uids for r in d["metadata"].get("ownerReferences") or ()), d["metadata"][
            "name"
        ]


def _series(text: str, metric: str) -> list[tuple[dict[str, str], float]]:
    """(labels, value) of every sample of `metric` in a Prometheus text exposition."""
    out = []
    for line in text.splitlines():
        if line.startswith(metric + "{"):
            body, value = line[len(metric) + 1 :].rsplit("} ", 1)
            labels = dict(pair.split("=", 1) for pair in body.split(","))
            out.append(({k: v.strip('"') for k, v in labels.items()}, float(value)))
    return out


def test_metrics_report_the_plan_and_ready_replicas(cluster: Cluster, operator: Operator) -> None:
    names = example_services()

    def unreported(services: Mapping[str, Any], text: str) -> list[tuple[str, dict[str, str]]]:
        """(metric, labels) of every placement in status that /metrics has no series for."""
        out = []
        for metric in ("chipfit_service_desired_replicas", "chipfit_service_ready_replicas"):
            series = {tuple(sorted(labels.items())) for labels, _ in _series(text, metric)}
            for name in names:
                for p in services[name]["status"]["placement"]:
                    key = {
                        "namespace": NAMESPACE,
                        "service": name,
                        "role": p["role"],
                        "accelerator": p["accelerator"],
                        "pool": p["pool"],
                    }
                    if tuple(sorted(key.items())) not in series:
                        out.append((metric, key))
        return out

    def agreeing() -> tuple[Mapping[str, Any], str] | None:
        # Status and /metrics are read a moment apart: a re-plan in between (the previous test restarted the
        # operator, whose first re-plan may move services) makes them disagree for that moment only.
        services = all_converged(cluster, names)
        text = operator.metrics_text()
        return (services, text) if services is not None and not unreported(services, text) else None

    # Fails (with the operator's log) unless status and /metrics come to agree within the converge timeout.
    _, text = wait_for(operator, "every placement in status reported on /metrics", agreeing)
    solves = [line for line in text.splitlines() if line.startswith("chipfit_solver_runs_total{")]
    assert any(float(line.split()[-1]) > 0 for line in solves if "optimal" in line or "feasible" in line)


def test_deleting_a_service_removes_what_it_owns_and_nothing_else(
    cluster: Cluster, operator: Operator
) -> None:
    names = example_services()
    services = wait_for(operator, "every example service Ready", lambda: all_converged(cluster, names))
    victim = "batch-summarize"
    before_deployments = {
        n: {d["metadata"]["name"] for d in owned_deployments(cluster, services[n])}
        for n in names
        if n != victim
    }
    cluster.kubectl("delete", "inferenceservice", victim, "-n", NAMESPACE)
    try:

        def gone() -> bool:
            labelled = f"chipfit.io/service={victim}"
            left = cluster.get_json("deployments,services", "-n", NAMESPACE, "-l", labelled)["items"]
            return not left

        wait_for(operator, f"{victim}'s Deployments and Services garbage-collected", gone)
        rest = [n for n in names if n != victim]
        after = wait_for(operator, "the other services Ready", lambda: all_converged(cluster, rest))
        remaining = {d["metadata"]["name"] for d in cluster.get_json("deployments", "-n", NAMESPACE)["items"]}
        for n in rest:
            planned = {(p[0], p[1], f"{p[3]}-tp{p[4]}") for p in placement_of(after[n])}
            assert live_keys(cluster, after[n]) == planned, n
        # A service whose plan did not move keeps the very same Deployments.
        for n in rest:
            if placement_of(after[n]) == placement_of(services[n]):
                lost = before_deployments[n] - remaining
                assert not lost, f"{n} lost {sorted(lost)} although its placement did not change"
    finally:
        cluster.kubectl("apply", "-f", str(EXAMPLES_DIR / "20-services.yaml"))
