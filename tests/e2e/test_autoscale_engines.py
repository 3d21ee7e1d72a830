"""Autoscaling end to end on real parts: the real control plane, a real Prometheus, real vLLM engines.

What is real: the API server, scheduler and controllers (e2e/cluster.sh), `chipfit operator` with its
autoscaler, a Prometheus server (e2e/install-prometheus.sh) scraping real vLLM CPU engines
(e2e/install-engine.sh) that serve every request of the load, and the operator reading them through
prometheus-api-client with its own PromQL. What is simulated: the GPU nodes and their kubelets (kwok marks
pods Running; tests/e2e/engine_kubelet.py starts one engine process per Running pod and registers it with
Prometheus under the pod's labels, as a kubernetes-pods scrape job would), and the chip: the pools declare
L4s, whose capacity per replica (the model's, for the service's request sizes and SLO) is what the
autoscaler sizes against, while the engines run the tiny model on the CPU (much faster than that capacity,
so they keep up with the load and the observed rate is the offered rate).

The scenario (about 6 minutes here): two pools of one L4 node each, the cheap one at half the dear one's
price; a service (min 1, max 2 replicas) starts on the cheap pool; a slice of the Azure conversation
trace (minutes 15-58, rising to its peak and falling, rates scaled to the model's capacity of one
replica, one trace minute per SECONDS_PER_MINUTE) is sent to the engines. Shapes asserted: scale-up when
the load rises, onto the dear pool since the cheap one is full; Prometheus stopped during the fall holds
the decision (condition + Event, no decrease, never zero); after it returns, scale-down removes the dear
replica first; no decrease of a configuration within the reversal window of its increase; SLO
attainment, observed rate and $/h in status; decisions counted in the operator's metrics. Short windows
come from the operator's --autoscaling-policy flags (the chart's autoscaling.policy), listed in POLICY.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import math
import os
import pathlib
import shutil
import socket
import subprocess
import threading
import time
import types
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any, Final

import httpx
import pytest
import yaml
from engine import harness

from chipfit import planning
from chipfit.api import v1alpha1
from placement import autoscale

from . import engine_kubelet
from .conftest import REPO_DIR, Cluster, run_dir, unavailable

pytestmark = [pytest.mark.e2e, pytest.mark.engine]

CHIPFIT: Final = REPO_DIR / ".venv" / "bin" / "chipfit"
PROMETHEUS_BIN: Final = shutil.which("prometheus") or "/usr/bin/prometheus"
SERVICE: Final = "chat"
CHEAP, DEAR = "e2e-as-cheap", "e2e-as-dear"
# Short windows for the test (defaults: docs/autoscaling.md): a decision every 3 s, a 30 s scale-down
# window and reversal guard, a 10 s start-up horizon and peak window.
# The sizing margin is pinned (30% flat headroom, no learnt burst margin where the policy has one) so the
# arc below does not move with the policy's tuned defaults: the test is about acting, not sizing.
POLICY: Final = {
    "interval_s": 3,
    "startup_s": 10,
    "peak_window_s": 10,
    "scale_down_window_s": 30,
    "reversal_window_s": 30,
    "headroom": 0.3,
    **({"burst_z": 0.0} if "burst_z" in {f.name for f in dataclasses.fields(autoscale.Policy)} else {}),
}
RATE_WINDOW: Final = "20s"
# Requests per minute of the Azure LLM inference trace, conversation service (2023-11-16, 19,366 requests;
# ../shared/data/traces/AzureLLMInferenceTrace_conv.csv, Azure/AzurePublicDataset @b469a113), minutes 15-58
# of the hour: it rises to its peak at minute 31 and falls. Only the shape is used: rates are scaled so the
# peak is PEAK_OF_CAPACITY x one replica's capacity.
TRACE_MINUTES: Final = (15, 58)
TRACE_RPS: Final = (
    4.65, 4.67, 5.13, 5.72, 5.85, 5.85, 5.72, 6.8, 6.6, 6.43, 6.63, 7.2, 8.0, 7.93, 7.55, 7.47, 8.45,
    7.3, 6.88, 7.05, 6.97, 7.75, 5.18, 5.48, 5.27, 5.55, 5.92, 5.32, 6.0, 5.57, 6.25, 5.5, 4.15, 3.68,
    4.15, 4.42, 4.67, 4.27, 4.23, 4.03, 4.33, 4.1, 3.75,
)  # fmt: skip
SECONDS_PER_MINUTE: Final = 6.0
PEAK_OF_CAPACITY: Final = 1.0
# The trace's clock waits at its peak (minute 31) until the second replica's engine serves: an engine
# takes 1-4 minutes to start on this shared 2-core machine, and the arc is about what the operator does
# with two serving replicas, not about how fast CPU engines start. (Waiting later, lower on the plateau,
# let a loaded machine's lagging completions size below one replica: a scale-down mid-plateau.)
PEAK_MINUTE: Final = 31
# Prometheus is down from the trace's fall (minute 37) for longer than the scale-down window.
OUTAGE_MINUTES: Final = (37, 45)
# The service's request sizes: the model sizes for them and the load sends them.
PROMPT_TOKENS, OUTPUT_TOKENS = 1024, 256
# Bounds (timeouts, not timing assertions): engine start on a loaded 2-core machine, a decision to land.
ENGINE_READY_TIMEOUT_S: Final = 420.0
SETTLE_TIMEOUT_S: Final = 180.0
POLL_S: Final = 1.0


def _service_pod_lister(kube_api: Any, namespace: str) -> Callable[[], list[dict[str, Any]]]:
    """The service's pods as plain dicts (what the engine kubelet reads); skips (fails on CI) without the
    real Prometheus server both tests scrape the engines with."""
    if not os.access(PROMETHEUS_BIN, os.X_OK):
        unavailable(f"{PROMETHEUS_BIN} not found: run e2e/install-prometheus.sh (tests/run.sh does)")
    import kubernetes

    core = kubernetes.client.CoreV1Api(kube_api)

    def list_pods() -> list[dict[str, Any]]:
        pods = core.list_namespaced_pod(namespace, label_selector=f"chipfit.io/service={SERVICE}")
        return [kube_api.sanitize_for_serialization(p) for p in pods.items]

    return list_pods


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _pools() -> list[dict[str, Any]]:
    def pool(name: str, price: float, spot: bool) -> dict[str, Any]:
        return {
            "apiVersion": "chipfit.io/v1alpha1",
            "kind": "AcceleratorPool",
            "metadata": {"name": name},
            "spec": {
                "accelerator": "l4",
                "devicesPerNode": 1,
                "nodes": 1,
                "pricePerDeviceHour": price,
                "spot": spot,
                "nodeSelector": {"chipfit.io/node-group": name},
            },
        }

    # The cheap pool is spot capacity (reclaimed at the end of the test), the dear one on-demand.
    return [pool(CHEAP, 0.80, True), pool(DEAR, 1.60, False)]


def _service(namespace: str) -> dict[str, Any]:
    return {
        "apiVersion": "chipfit.io/v1alpha1",
        "kind": "InferenceService",
        "metadata": {"name": SERVICE, "namespace": namespace},
        "spec": {
            "model": {"id": "llama-3.1-8b"},
            "precisions": ["bf16"],
            "engine": "vllm",
            "serving": "aggregated",
            "slo": {"ttftP99Ms": 3000, "itlP99Ms": 300},
            "workload": {
                "requestsPerSecond": 0.2,
                "promptTokens": {"mean": PROMPT_TOKENS},
                "outputTokens": {"mean": OUTPUT_TOKENS},
            },
            "replicas": {"min": 1, "max": 2},
            "placement": {"allowedPools": [CHEAP, DEAR]},
        },
    }


def replica_capacity_rps(namespace: str) -> float:
    """Req/s one replica sustains within the SLO in the model (both pools run the same chip)."""
    pools = [v1alpha1.AcceleratorPool.model_validate(p) for p in _pools()]
    service = v1alpha1.InferenceService.model_validate(_service(namespace))
    cset = planning.build_inputs([service], pools, [])
    (demand,) = cset.problem.services
    caps = {
        c.pool: autoscale.serving_capacity_rps({c.key: c}, {c.key: 1}, demand.id, demand.bucket_rps)
        for c in cset.problem.candidates
        if c.role == "aggregated"
    }
    assert set(caps) == {CHEAP, DEAR} and math.isclose(caps[CHEAP], caps[DEAR]), caps
    return caps[CHEAP]


class Load:
    """Arrivals evenly spaced at the trace's per-minute rate (Poisson arrivals at these rates would move a
    20 s rate window by +-35%: noise, not load), each sent to a ready engine (round robin)."""

    def __init__(self, kubelet: engine_kubelet.EngineKubelet, prompt: str, model: str, scale: float) -> None:
        self.kubelet = kubelet
        self.prompt = prompt
        self.model = model
        self.scale = scale
        self.minute = float(TRACE_MINUTES[0])
        self.sent = 0
        self.failed: list[str] = []
        self.no_endpoint = 0
        self.finished = threading.Event()
        # Set: the trace's clock stands still (the current minute's rate goes on).
        self.paused = threading.Event()
        self.paused_s = 0.0
        self.served: dict[str, int] = {}
        self._stop = threading.Event()
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=16)
        self._thread = threading.Thread(target=self._run, name="load", daemon=True)

    def rate(self, minute: float) -> float:
        index = min(int(minute) - TRACE_MINUTES[0], len(TRACE_RPS) - 1)
        return TRACE_RPS[index] * self.scale

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        self._pool.shutdown(wait=True, cancel_futures=True)

    def _run(self) -> None:
        started = last = time.monotonic()
        span = (TRACE_MINUTES[1] - TRACE_MINUTES[0] + 1) * SECONDS_PER_MINUTE
        while not self._stop.is_set():
            now = time.monotonic()
            if self.paused.is_set():
                self.paused_s += now - last
            last = now
            elapsed = now - started - self.paused_s
            if elapsed >= span:
                self.finished.set()  # the last minute's rate goes on until the test stops the load
            self.minute = TRACE_MINUTES[0] + min(elapsed, span - 1e-6) / SECONDS_PER_MINUTE
            gap = 1.0 / self.rate(self.minute)
            if self._stop.wait(gap):
                return
            self._pool.submit(self._one)

    def _one(self) -> None:
        engine = self.kubelet.pick()
        if engine is None:
            self.no_endpoint += 1
            return
        self.sent += 1
        try:
            response = httpx.post(
                f"{engine.process.base_url}/v1/completions",
                json={
                    "model": self.model,
                    "prompt": self.prompt,
                    "max_tokens": OUTPUT_TOKENS,
                    "ignore_eos": True,
                },
                timeout=engine_kubelet.HTTP_TIMEOUT_S,
            )
            if response.status_code != 200:
                self.failed.append(f"{engine.pod}: {response.status_code} {response.text[:200]}")
            else:
                self.served[engine.pod] = self.served.get(engine.pod, 0) + 1
        except httpx.HTTPError as error:
            self.failed.append(f"{engine.pod}: {type(error).__name__}: {error}")
        finally:
            self.kubelet.done(engine)


def prompt_of(engine: harness.EngineProcess, tokens: int) -> str:
    """A prompt of about `tokens` tokens of the tiny model (counted by the engine's /tokenize)."""
    words = "the quick brown fox jumps over the lazy dog and "

    def count(text: str) -> int:
        r = httpx.post(f"{engine.base_url}/tokenize", json={"model": engine.served_name, "prompt": text})
        r.raise_for_status()
        return int(r.json()["count"])

    per_repeat = count(words * 20) / 20
    repeats = max(1, int(tokens / per_repeat))
    return words * repeats


@dataclasses.dataclass
class Sample:
    """One poll of what the cluster says."""

    time_s: float
    minute: float
    replicas: dict[str, int]  # per pool, from the service's Deployments' spec.replicas
    autoscaling: dict[str, Any]
    condition: dict[str, Any]
    prometheus_up: bool
    sent: int


def deployment_replicas(cluster: Cluster, namespace: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for d in cluster.get_json("deployments", "-n", namespace)["items"]:
        labels = d["metadata"].get("labels") or {}
        if labels.get("chipfit.io/service") != SERVICE or labels.get("chipfit.io/role") == "router":
            continue
        pool = labels.get("chipfit.io/pool", "")
        out[pool] = out.get(pool, 0) + int(d["spec"].get("replicas") or 0)
    return out


def service_status(cluster: Cluster, namespace: str) -> dict[str, Any]:
    body = cluster.get_json("inferenceservice", SERVICE, "-n", namespace)
    return dict(body.get("status") or {})


def autoscaling_condition(status: dict[str, Any]) -> dict[str, Any]:
    return next((dict(c) for c in status.get("conditions") or () if c["type"] == "Autoscaling"), {})


def events(cluster: Cluster, namespace: str) -> list[dict[str, Any]]:
    items = cluster.get_json("events", "-n", namespace)["items"]
    return [e for e in items if (e.get("involvedObject") or {}).get("name") == SERVICE]


def operator_metric(port: int, decision: str) -> float:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            text = r.read().decode()
    except OSError:
        return 0.0
    total = 0.0
    for line in text.splitlines():
        if line.startswith("chipfit_autoscale_decisions_total{") and f'decision="{decision}"' in line:
            total += float(line.split()[-1])
    return total


def start_operator(
    cluster: Cluster, prometheus_url: str, metrics_port: int, log: Any, policy: dict[str, float]
) -> subprocess.Popen[bytes]:
    """`chipfit operator` with autoscaling on this Prometheus and the test's short windows."""
    return subprocess.Popen(
        [
            str(CHIPFIT), "operator", "--standalone", "--kubeconfig", str(cluster.kubeconfig),
            f"--liveness=http://127.0.0.1:{_free_port()}/healthz", f"--metrics-port={metrics_port}",
            "--debounce-seconds=0.5", f"--prometheus-url={prometheus_url}",
            *[f"--autoscaling-policy={k}={v}" for k, v in policy.items()],
            f"--autoscaling-rate-window={RATE_WINDOW}",
        ],
        stdout=log, stderr=subprocess.STDOUT,
        env={**os.environ, "KUBECONFIG": str(cluster.kubeconfig)},
    )  # fmt: skip


def stop_process(process: subprocess.Popen[Any] | None) -> None:
    """SIGTERM, SIGKILL after 30 s: nothing the test started is left running."""
    if process is None or process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@pytest.fixture
def engine_install() -> harness.EngineInstall:
    try:
        return harness.find_install()
    except harness.EngineError as error:
        unavailable(f"no vLLM engine: {error}")


@pytest.fixture
def two_pools(
    cluster: Cluster, crds_applied: list[str], fleet: types.ModuleType
) -> Iterator[dict[str, list[str]]]:
    """The two pools and their kwok nodes (one L4 each); removed afterwards."""
    pools = _pools()
    cluster.apply_objects(pools)
    nodes = fleet.render_fleet([fleet.parse_pool(p, "autoscale pools") for p in pools])
    cluster.apply_objects(nodes)
    cluster.kubectl(
        "wait", "--for=condition=Ready", "--timeout=90s", *[f"node/{n['metadata']['name']}" for n in nodes]
    )
    by_pool: dict[str, list[str]] = {}
    for n in nodes:
        by_pool.setdefault(n["metadata"]["labels"]["chipfit.io/node-group"], []).append(n["metadata"]["name"])
    try:
        yield by_pool
    finally:
        for n in nodes:
            cluster.kubectl("delete", "node", n["metadata"]["name"], "--wait=false", check=False)
        for p in pools:
            cluster.kubectl("delete", "acceleratorpool", p["metadata"]["name"], "--wait=false", check=False)


def test_scales_real_engines_across_two_pools(
    cluster: Cluster,
    two_pools: dict[str, list[str]],
    namespace: str,
    kube_api: Any,
    engine_install: harness.EngineInstall,
    tmp_path: pathlib.Path,
) -> None:
    list_pods = _service_pod_lister(kube_api, namespace)

    capacity = replica_capacity_rps(namespace)
    scale = PEAK_OF_CAPACITY * capacity / max(TRACE_RPS)
    work = tmp_path / "prometheus"
    work.mkdir()
    targets = work / "targets.json"
    log_dir = run_dir() / "logs" / "autoscale"
    log_dir.mkdir(parents=True, exist_ok=True)
    kubelet = engine_kubelet.EngineKubelet(
        list_pods, engine_install, log_dir, targets, namespace, SERVICE, max_engines=2
    )
    prom = engine_kubelet.Prometheus(PROMETHEUS_BIN, work, targets, _free_port())
    metrics_port = _free_port()
    operator_log = (log_dir / "operator.log").open("wb")
    operator: subprocess.Popen[bytes] | None = None
    load: Load | None = None
    samples: list[Sample] = []
    try:
        prom.start()
        kubelet.start()
        operator = start_operator(cluster, prom.url, metrics_port, operator_log, POLICY)
        cluster.apply_objects([_service(namespace)])

        def wait(what: str, probe: Any, timeout_s: float) -> Any:
            deadline = time.monotonic() + timeout_s
            while time.monotonic() < deadline:
                assert operator is not None and operator.poll() is None, "operator exited"
                value = probe()
                if value:
                    return value
                time.sleep(POLL_S)
            pytest.fail(
                f"timed out waiting for {what}: replicas {deployment_replicas(cluster, namespace)}, "
                f"kubelet {kubelet.events} {kubelet.errors}",
                pytrace=False,
            )

        # The spec-sized plan: one replica, on the cheap pool; its engine starts and is scraped.
        wait(
            "one replica on the cheap pool",
            lambda: deployment_replicas(cluster, namespace) == {CHEAP: 1},
            SETTLE_TIMEOUT_S,
        )
        (first,) = wait("the first engine serving", kubelet.ready, ENGINE_READY_TIMEOUT_S)
        assert first.pool == CHEAP
        prompt = prompt_of(first.process, PROMPT_TOKENS)
        load = Load(kubelet, prompt, engine_install.served_name, scale)
        load.start()
        outage_done = False
        deadline = (
            time.monotonic() + len(TRACE_RPS) * SECONDS_PER_MINUTE + ENGINE_READY_TIMEOUT_S + SETTLE_TIMEOUT_S
        )
        scaled_down_after_peak = False
        while time.monotonic() < deadline:
            assert operator.poll() is None, "operator exited"
            minute = load.minute
            dear_serving = any(e.pool == DEAR for e in kubelet.ready())
            if minute >= PEAK_MINUTE and not dear_serving and not outage_done:
                load.paused.set()
            else:
                load.paused.clear()
            if not outage_done and prom.process is not None and minute >= OUTAGE_MINUTES[0]:
                prom.stop()
            elif not outage_done and prom.process is None and minute >= OUTAGE_MINUTES[1]:
                prom.start()
                outage_done = True
            status = service_status(cluster, namespace)
            replicas = deployment_replicas(cluster, namespace)
            samples.append(
                Sample(
                    time.monotonic(), minute, replicas, dict(status.get("autoscaling") or {}),
                    autoscaling_condition(status), prom.process is not None, load.sent,
                )
            )  # fmt: skip
            was_up = any(s.replicas.get(DEAR) for s in samples)
            back = replicas.get(DEAR, 0) == 0 and replicas.get(CHEAP) == 1
            if outage_done and load.finished.is_set() and was_up and back:
                scaled_down_after_peak = True
                break
            time.sleep(POLL_S)
        # Spot reclaim: the cheap (spot) pool's node vanishes under the one replica left. The autoscaler
        # sees the replica lost and places it on the on-demand pool at once (not at its next interval).
        reclaim: dict[str, Any] = {}
        # The load ends before the reclaim: with no on-demand floor (the default) the lost replica's
        # requests have nowhere to go until its replacement starts (docs/autoscaling.md, Limits), so a
        # request sent then finds no engine by design, not by a fault of the scaling under test.
        load.stop()
        no_endpoint_during_load = load.no_endpoint
        if scaled_down_after_peak:
            reclaim["at"] = time.monotonic()
            for node in two_pools[CHEAP]:
                cluster.kubectl("delete", "node", node, "--wait=false")
            reclaim["replicas"] = wait(
                "the reclaimed replica re-placed on the on-demand pool",
                lambda: (
                    (r := deployment_replicas(cluster, namespace)).get(DEAR, 0) >= 1
                    and not r.get(CHEAP)
                    and r
                ),
                SETTLE_TIMEOUT_S,
            )
            reclaim["seconds"] = time.monotonic() - reclaim["at"]
        final_events = events(cluster, namespace)
        ups = operator_metric(metrics_port, "ScaledUp")
        downs = operator_metric(metrics_port, "ScaledDown")
    finally:
        if load is not None:
            load.stop()
        stop_process(operator)
        operator_log.close()
        kubelet.stop()
        prom.stop()
        cluster.kubectl("delete", "inferenceservice", SERVICE, "-n", namespace, "--wait=false", check=False)

    timeline = [(round(s.minute, 1), s.replicas, s.condition.get("reason")) for s in samples]
    # For the post-mortem (and the docs' figures): every poll and what the kubelet did.
    (log_dir / "timeline.json").write_text(
        json.dumps(
            {
                "capacity_rps": capacity,
                "reclaim_seconds": reclaim.get("seconds"),
                "trace_paused_s": load.paused_s,
                "served": load.served,
                "scale": scale,
                "samples": [dataclasses.asdict(s) for s in samples],
                "kubelet": [dataclasses.asdict(e) for e in kubelet.events],
            },
            indent=1,
        )
    )
    assert not kubelet.errors, kubelet.errors
    assert not load.failed, load.failed[:5]
    # Up when the load rose: the second replica went to the dear pool (the cheap one holds one L4).
    up = next((s for s in samples if s.replicas.get(DEAR, 0) >= 1), None)
    assert up is not None, f"never scaled up: {timeline}"
    before_up = [s for s in samples if s.time_s < up.time_s]
    assert all(s.replicas == {CHEAP: 1} for s in before_up), timeline
    assert up.replicas == {CHEAP: 1, DEAR: 1}, timeline
    assert load.rate(up.minute) > load.rate(TRACE_MINUTES[0]), "scaled up before the load rose"
    assert max(sum(s.replicas.values()) for s in samples) == 2
    # The dear pool's engine really ran and served.
    dear_ready = [e for e in kubelet.events if e.pool == DEAR and e.what == "ready"]
    assert dear_ready, kubelet.events
    dear_pods = {e.pod for e in dear_ready}
    assert sum(n for pod, n in load.served.items() if pod in dear_pods) > 0, load.served
    # Missing metrics: the decision held (no decrease, never zero), said in the condition and an Event.
    outage = [s for s in samples if not s.prometheus_up]
    assert outage, "Prometheus was never stopped"
    at_start = sum(outage[0].replicas.values())
    assert all(sum(s.replicas.values()) >= at_start for s in outage), timeline
    assert any(s.condition.get("reason") == "MetricsUnavailable" for s in outage), timeline
    assert any(e["reason"] == "MetricsMissing" and e["type"] == "Warning" for e in final_events), [
        e["reason"] for e in final_events
    ]
    # Down after the load fell and Prometheus returned: the dear replica goes first.
    assert scaled_down_after_peak, f"never scaled back down to the cheap pool: {timeline}"
    down = next(s for s in samples if s.time_s > up.time_s and not s.replicas.get(DEAR))
    assert down.prometheus_up and down.replicas == {CHEAP: 1}, timeline
    assert any(s.condition.get("status") == "True" for s in samples if s.time_s > outage[-1].time_s)
    # No reversal inside the window: the dear configuration did not shrink within the reversal window.
    assert down.time_s - up.time_s >= POLICY["reversal_window_s"], timeline
    # Visible: observed rate, SLO attainment, $/h and the decision's reason in status; decisions counted.
    seen = [s.autoscaling for s in samples if s.autoscaling.get("observedRequestsPerSecond")]
    assert seen, "status.autoscaling never showed an observed rate"
    attainment = [a["sloAttainment"] for a in seen if a.get("sloAttainment") is not None]
    assert attainment and all(0.0 <= a <= 1.0 for a in attainment)
    # The CPU engine answers the tiny model's 1k-token prompts far within the 3 s TTFT objective.
    assert sorted(attainment)[len(attainment) // 2] >= 0.9, attainment
    assert any(a.get("dollarsPerHour") for a in seen)
    reasons = {e["reason"] for e in final_events}
    assert {"ScaledUp", "ScaledDown"} <= reasons, reasons
    assert ups >= 1 and downs >= 1, (ups, downs)
    # Spot reclaim: on-demand capacity took the lost replica; the spot pool's Deployment is gone.
    assert reclaim["replicas"].get(DEAR) == 1 and not reclaim["replicas"].get(CHEAP), reclaim
    # The load really reached the engines: requests were sent while replicas changed.
    assert load.sent > 0 and no_endpoint_during_load == 0


# Scale to zero and back: idle this long before going to zero (default 600 s).
ZERO_POLICY: Final = {**POLICY, "idle_to_zero_s": 20}
ACTIVATOR_HOLD_S: Final = 600
CHART_DIR: Final = REPO_DIR / "charts" / "chipfit"
HELM_TIMEOUT_S: Final = 120


def chart_activator_command(
    cluster: Cluster, prometheus_url: str, upstream: str, port: int, metrics_port: int
) -> list[str]:
    """The activator container's command line as the chart renders it with autoscaling on (real helm).

    kwok runs no containers, so the test plays the activator pod's kubelet: it runs exactly this command.
    The only values set are what this machine needs: ports that are free, and the upstream the loopback
    proxy plays for the service's Service (in a cluster: the default, http://{service}.{namespace}.svc:80).
    """
    values = {
        "autoscaling": {
            "prometheusUrl": prometheus_url,
            "activator": {
                "port": port,
                "metricsPort": metrics_port,
                "upstreamTemplate": upstream,
                "holdTimeoutSeconds": ACTIVATOR_HOLD_S,
            },
        }
    }
    result = subprocess.run(
        [
            str(cluster.helm_path), "template", "chipfit", str(CHART_DIR), "--show-only",
            "templates/activator.yaml", "--set-json", f"autoscaling={json.dumps(values['autoscaling'])}",
        ],
        capture_output=True, text=True, timeout=HELM_TIMEOUT_S, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    (deployment,) = [d for d in yaml.safe_load_all(result.stdout) if d and d["kind"] == "Deployment"]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    command: list[str] = container["command"] + container["args"]
    assert command[0] == "chipfit"
    return [str(CHIPFIT), *command[1:]]


def _service_to_zero(namespace: str) -> dict[str, Any]:
    body = _service(namespace)
    spec = body["spec"]
    # No declared traffic: the plan starts the service at zero replicas; the activator brings it back.
    spec["workload"]["requestsPerSecond"] = 0
    spec["replicas"] = {"min": 0, "max": 1, "scaleToZero": True}
    spec["placement"] = {"allowedPools": [CHEAP]}
    return body


def test_scales_to_zero_and_back_on_the_first_request(
    cluster: Cluster,
    two_pools: dict[str, list[str]],
    namespace: str,
    kube_api: Any,
    engine_install: harness.EngineInstall,
    tmp_path: pathlib.Path,
) -> None:
    list_pods = _service_pod_lister(kube_api, namespace)

    work = tmp_path / "prometheus"
    work.mkdir()
    targets = work / "targets.json"
    log_dir = run_dir() / "logs" / "autoscale-zero"
    log_dir.mkdir(parents=True, exist_ok=True)
    kubelet = engine_kubelet.EngineKubelet(
        list_pods, engine_install, log_dir, targets, namespace, SERVICE, max_engines=1
    )
    proxy = engine_kubelet.ServiceProxy(kubelet, _free_port())
    act_port, act_metrics = _free_port(), _free_port()
    prom = engine_kubelet.Prometheus(
        PROMETHEUS_BIN, work, targets, _free_port(), static=(f"127.0.0.1:{act_metrics}",)
    )
    metrics_port = _free_port()
    operator_log = (log_dir / "operator.log").open("wb")
    activator_log = (log_dir / "activator.log").open("wb")
    operator: subprocess.Popen[bytes] | None = None
    activator: subprocess.Popen[bytes] | None = None
    replicas_seen: list[tuple[float, int]] = []

    def replicas() -> int:
        n = sum(deployment_replicas(cluster, namespace).values())
        replicas_seen.append((time.monotonic(), n))
        return n

    def wait(what: str, probe: Any, timeout_s: float) -> Any:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert operator is not None and operator.poll() is None, "operator exited"
            value = probe()
            if value:
                return value
            time.sleep(POLL_S)
        pytest.fail(f"timed out waiting for {what}: {replicas_seen[-5:]} {kubelet.events}", pytrace=False)

    try:
        prom.start()
        kubelet.start()
        proxy.start()
        # The shared activator the chart deploys, run as its pod would run it.
        activator = subprocess.Popen(
            chart_activator_command(cluster, prom.url, proxy.url, act_port, act_metrics),
            stdout=activator_log,
            stderr=subprocess.STDOUT,
        )
        operator = start_operator(cluster, prom.url, metrics_port, operator_log, ZERO_POLICY)
        cluster.apply_objects([_service_to_zero(namespace)])
        # At zero, and the autoscaler sees the activator's (zero) demand: active, not "metrics missing".
        wait(
            "the service at zero with autoscaling active",
            lambda: (
                replicas() == 0
                and autoscaling_condition(service_status(cluster, namespace)).get("status") == "True"
            ),
            SETTLE_TIMEOUT_S,
        )
        assert not kubelet.engines
        # The first request, through the activator (routed by /<namespace>/<name>/): held until a replica
        # serves it.
        prompt = "the quick brown fox jumps over the lazy dog " * 40
        sent = time.monotonic()
        response = httpx.post(
            f"http://127.0.0.1:{act_port}/{namespace}/{SERVICE}/v1/completions",
            json={"model": engine_install.served_name, "prompt": prompt, "max_tokens": 16},
            timeout=ACTIVATOR_HOLD_S + 60,
        )
        waited = time.monotonic() - sent
        assert response.status_code == 200, response.text
        assert response.json()["usage"]["completion_tokens"] == 16
        assert any(n == 1 for _, n in replicas_seen) or replicas() == 1
        status = wait(
            "the cold start in status",
            lambda: (service_status(cluster, namespace).get("autoscaling") or {}).get("coldStartSeconds"),
            SETTLE_TIMEOUT_S,
        )
        # The cold start is the time the request was held: part of what the client waited, and it spans
        # a real engine start (the engine started after the request arrived).
        assert 0.0 < status <= waited
        print(f"cold start {status:.1f} s in status; the client waited {waited:.1f} s")
        (start,) = [e for e in kubelet.events if e.what == "start"]
        (ready,) = [e for e in kubelet.events if e.what == "ready"]
        assert sent < start.time_s < ready.time_s and start.pool == CHEAP
        # Idle again: back to zero, its engine stopped.
        wait("back to zero after the idle period", lambda: replicas() == 0, SETTLE_TIMEOUT_S)
        wait("the engine stopped", lambda: not kubelet.engines, SETTLE_TIMEOUT_S)
        reasons = [(e["reason"], e["message"]) for e in events(cluster, namespace)]
    finally:
        stop_process(operator)
        stop_process(activator)
        operator_log.close()
        activator_log.close()
        proxy.stop()
        kubelet.stop()
        prom.stop()
        cluster.kubectl("delete", "inferenceservice", SERVICE, "-n", namespace, "--wait=false", check=False)
    assert not kubelet.errors, kubelet.errors
    assert any(r == "ScaledUp" for r, _ in reasons), reasons
    assert any(r == "ScaledDown" and "scale to zero" in m for r, m in reasons), reasons
