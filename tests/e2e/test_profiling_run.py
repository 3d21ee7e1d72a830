"""A ProfilingRun on the real control plane: the operator creates the profiler Job (a real container spec
the API server admits) and turns its result into a PerformanceProfile owned by the run.

kwok nodes never run containers, so the profiler itself cannot run here (tests/engine runs the same
`chipfit profile` against a real vLLM engine). The GPU pools' nodes are tainted, so the Job's pod stays
Pending (no kwok stage completes it with an empty result); the test then writes what the container would
have written: its termination message (the profile's spec as compact JSON) and exit code 0, through the
pod's status subresource, as the kubelet does.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from collections.abc import Iterator
from typing import Any, Final

import pytest

from chipfit.profiling import job

from .conftest import Cluster, run_dir
from .test_operator import (
    CONVERGE_TIMEOUT_S,
    EXAMPLES_DIR,
    NAMESPACE,
    POLL_S,
    Operator,
    all_converged,
)

pytestmark = pytest.mark.e2e

SERVICE: Final = "chat-8b"
RUN: Final = "chat-8b-profile"


def _wait(operator: Operator, what: str, probe: Any) -> Any:
    deadline = time.monotonic() + CONVERGE_TIMEOUT_S
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}\noperator log:\n{operator.log_tail()}", pytrace=False)
        time.sleep(POLL_S)


@contextlib.contextmanager
def _kwok_held(cluster: Cluster) -> Iterator[None]:
    """kwok paused while the test plays the profiler's pod itself.

    kwok's default pod-complete stage finishes every Job-owned pod about a second after it runs, with no
    termination message: a fake the real profiler (minutes, then its result as the message) never
    produces. The operator reacts to pod events at once, so that empty result would race the test's own
    write and fail the run. Holding kwok (SIGSTOP, resumed in any case) leaves the pod to the test; keep
    the hold well under the 40 s node lease so no node is marked lost.
    """
    pid_file = run_dir() / "pids" / "kwok"
    pid = int(pid_file.read_text()) if cluster.mode == "local" and pid_file.exists() else None
    if pid is not None:
        os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        if pid is not None:
            os.kill(pid, signal.SIGCONT)


@pytest.fixture(scope="module")
def planned(cluster: Cluster, crds_applied: list[str]) -> Iterator[tuple[Operator, dict[str, Any]]]:
    """The example fleet and one service placed by a running operator."""
    cluster.kubectl(
        "apply", "-f", str(EXAMPLES_DIR / "00-namespace.yaml"), "-f", str(EXAMPLES_DIR / "10-fleet.yaml")
    )
    log_dir = run_dir() / "logs" / "operator-profiling"
    log_dir.mkdir(parents=True, exist_ok=True)
    operator = Operator(cluster, log_dir)
    operator.start()
    try:
        cluster.kubectl("apply", "-f", str(EXAMPLES_DIR / "20-services.yaml"))
        services = _wait(operator, f"{SERVICE} placed", lambda: all_converged(cluster, [SERVICE]))
        yield operator, services[SERVICE]
    finally:
        cluster.kubectl("delete", "profilingrun", RUN, "--ignore-not-found", check=False)
        operator.stop()
        cluster.kubectl("delete", "inferenceservices", "--all", "-n", NAMESPACE, check=False)


def test_profilingrun_creates_a_job_and_its_result_becomes_an_owned_profile(
    cluster: Cluster, planned: tuple[Operator, dict[str, Any]]
) -> None:
    operator, service = planned
    placement = next(p for p in service["status"]["placement"] if p["role"] == "aggregated")
    run = {
        "apiVersion": "chipfit.io/v1alpha1",
        "kind": "ProfilingRun",
        "metadata": {"name": RUN},
        "spec": {
            "service": {"namespace": NAMESPACE, "name": SERVICE},
            "pool": placement["pool"],
            "load": {"concurrency": [1, 8], "promptTokens": 512, "outputTokens": 64, "durationSeconds": 20},
        },
    }
    with _kwok_held(cluster):
        final = _play_the_profiler(cluster, operator, run, placement)
    assert final["profile"] == RUN
    # Deleting the run deletes its profile (owner reference, garbage collector).
    cluster.kubectl("delete", "profilingrun", RUN)
    _wait(
        operator,
        "the profile garbage-collected with its run",
        lambda: cluster.kubectl("get", "performanceprofile", RUN, check=False).returncode != 0,
    )


def _play_the_profiler(
    cluster: Cluster, operator: Operator, run: dict[str, Any], placement: dict[str, Any]
) -> dict[str, Any]:
    """Apply the run, check its Job, write the profiler's result as kwok cannot; the run's final status."""
    cluster.apply_objects([run])
    name = f"profile-{RUN}"

    def job_created() -> dict[str, Any] | None:
        found = cluster.kubectl("get", "job", name, "-n", NAMESPACE, "-o", "json", check=False)
        return json.loads(found.stdout) if found.returncode == 0 else None

    created = _wait(operator, "the profiler Job", job_created)
    # The API server admitted a real container spec: chipfit's image running `chipfit profile`.
    container = created["spec"]["template"]["spec"]["containers"][0]
    assert container["command"] == ["chipfit"] and container["args"][0] == "profile"
    args = container["args"]
    assert args[args.index("--accelerator") + 1] == placement["accelerator"]
    assert args[args.index("--concurrency") + 1] == "1,8"
    assert created["spec"]["template"]["spec"]["automountServiceAccountToken"] is False
    assert created["metadata"]["ownerReferences"][0]["kind"] == "ProfilingRun"
    svc = cluster.get_json("service", name, "-n", NAMESPACE)
    assert svc["spec"]["selector"]["chipfit.io/pool"] == placement["pool"]
    status = cluster.get_json("profilingrun", RUN)["status"]
    assert status["phase"] == "Running" and status["engineImage"]

    # What the container writes when it finishes: the profile's spec, compact, as its termination message.
    spec = {
        "model": "llama-3.1-8b",
        "accelerator": placement["accelerator"],
        "precision": placement["precision"],
        "engine": "vllm",
        "engineVersion": "0.32.0",
        "engineImage": status["engineImage"],
        "tensorParallel": placement["tensorParallel"],
        "source": {"description": "concurrency sweep (written by the e2e test: kwok runs no containers)"},
        "points": [
            {"concurrency": 1, "promptTokens": 512, "outputTokens": 64, "requestsPerSecond": 3.1,
             "outputTokensPerSecond": 198.0, "ttftP99Ms": 60.0, "itlP99Ms": 8.0},
            {"concurrency": 8, "promptTokens": 512, "outputTokens": 64, "requestsPerSecond": 16.0,
             "outputTokensPerSecond": 1024.0, "ttftP99Ms": 140.0, "itlP99Ms": 12.0},
        ],
    }  # fmt: skip
    message = json.dumps(spec, separators=(",", ":"))

    def pod() -> dict[str, Any] | None:
        items = cluster.get_json("pods", "-n", NAMESPACE, "-l", f"{job.LABEL_RUN}={RUN}")["items"]
        return items[0] if items else None

    profiler_pod = _wait(operator, "the Job's pod", pod)
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    terminated = {
        "phase": "Succeeded",
        "containerStatuses": [
            {
                "name": job.COMPONENT,
                "image": container["image"],
                "imageID": "",
                "ready": False,
                "restartCount": 0,
                "state": {
                    "terminated": {"exitCode": 0, "reason": "Completed", "message": message,
                                   "startedAt": now, "finishedAt": now}
                },
            }
        ],
    }  # fmt: skip
    cluster.kubectl(
        "patch", "pod", profiler_pod["metadata"]["name"], "-n", NAMESPACE, "--subresource=status",
        "--type=merge", "-p", json.dumps({"status": terminated}),
    )  # fmt: skip

    def profiled() -> dict[str, Any] | None:
        found = cluster.kubectl("get", "performanceprofile", RUN, "-o", "json", check=False)
        return json.loads(found.stdout) if found.returncode == 0 else None

    profile = _wait(operator, "the PerformanceProfile", profiled)
    assert profile["metadata"]["ownerReferences"][0]["name"] == RUN
    assert profile["spec"]["engineVersion"] == "0.32.0"
    assert profile["spec"]["points"][1]["concurrency"] >= 1
    final: dict[str, Any] = _wait(
        operator,
        "the run Succeeded",
        lambda: (
            (s := cluster.get_json("profilingrun", RUN).get("status", {})).get("phase") == "Succeeded" and s
        ),
    )
    return final


def test_a_run_is_deleted_while_no_operator_runs(
    cluster: Cluster, planned: tuple[Operator, dict[str, Any]]
) -> None:
    """Runs carry no finalizer (no kopf timer, kopf#1074): deleting one never waits for the operator."""
    operator, service = planned
    placement = next(p for p in service["status"]["placement"] if p["role"] == "aggregated")
    name = "chat-8b-orphan"
    run = {
        "apiVersion": "chipfit.io/v1alpha1",
        "kind": "ProfilingRun",
        "metadata": {"name": name},
        "spec": {
            "service": {"namespace": NAMESPACE, "name": SERVICE},
            "pool": placement["pool"],
            "load": {"concurrency": [1], "promptTokens": 128, "outputTokens": 16, "durationSeconds": 10},
        },
    }
    try:
        with _kwok_held(cluster):  # Held only while the run lives (short: node leases last 40 s).
            cluster.apply_objects([run])
            # The operator handled it (its Job exists, the run is Running) ...
            _wait(
                operator,
                "the run Running",
                lambda: cluster.get_json("profilingrun", name).get("status", {}).get("phase") == "Running",
            )
            assert not cluster.get_json("profilingrun", name)["metadata"].get("finalizers")
            operator.stop()
            # ... and with no operator running, the run goes at once (kubectl waits for it to be gone).
            cluster.kubectl("delete", "profilingrun", name, "--timeout=60s")
            assert cluster.kubectl("get", "profilingrun", name, check=False).returncode != 0
    finally:
        cluster.kubectl("delete", "profilingrun", name, "--ignore-not-found", "--wait=false", check=False)
        if operator.process is None or operator.process.poll() is not None:
            operator.start()
