"""Benchmark (f): the operator's re-plan after node loss, on the real control plane (issue #15, done-when).

Brings up a private control plane (e2e/cluster.sh: etcd, kube-apiserver, controller-manager, scheduler built
from source; kwok plays the GPU nodes and their pods), installs the CRDs, registers N generated pools' kwok
nodes and N generated InferenceServices (diverse models, traffic shapes, SLO tiers, rates, engines,
precisions, serving modes; all deployable by the renderer on the fake fleet), runs `chipfit operator` as a
real process and waits until every service is Ready. Then it deletes every node of one pool (the one the
most services run on) and measures, per affected service:

- placed: seconds until status.placement no longer names the lost pool;
- running: seconds until every planned replica runs (pod phase Running, not terminating) on a node that
  still exists and is not the lost pool's, as many pods as status.placement plans;

and checks that the unaffected services are untouched: their resourceVersion, and every owned
Deployment's resourceVersion and generation, are the same as before the loss.

Both clocks start when the node DELETE requests have returned. Observation is by watch streams (no polling
of 300 objects). The operator's and the API server's CPU seconds (from /proc) are reported per phase, since
the 2-core machine is shared and wall times are inflated.

`--tree DIR` runs the operator of another source tree (e.g. a `git worktree` of the previous commit) in the
same way, so code before and after a change can be compared in one invocation:

  .venv/bin/python benchmarks/replan_e2e.py --services 300 --json benchmarks/results/replan_e2e_300.json
  .venv/bin/python benchmarks/replan_e2e.py --services 300 --previous main --json OUT   # both, one run

`--previous COMMIT` first measures COMMIT's operator (in a temporary git worktree) and then this tree's,
each on a fresh cluster with the same generated fleet.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
E2E = REPO / "e2e"
KUBECTL = E2E / ".cache" / "bin" / "kubectl"
SEED = 20261129
NODES_PER_POOL = 8  # e2e/fleet.py's MAX_FAKE_NODES_PER_POOL: kwok heartbeats every node
GROUP = "chipfit.io"
POOL_LABEL = "chipfit.io/pool"

# Pools: (name, accelerator, devices per node, $/device-h, spot). Catalog on-demand prices (placement/data/
# accelerators.toml cites each); spot at half, a second cloud at +10%: the shapes of benchmarks/plan_speed.py.
POOLS: tuple[tuple[str, str, int, float | None, bool], ...] = (
    ("l4", "l4", 8, None, False),
    ("l4-spot", "l4", 8, 0.405, True),
    ("l40s", "l40s", 8, None, False),
    ("l40s-spot", "l40s", 8, 0.92, True),
    ("a100", "a100-80gb", 8, None, False),
    ("a100-b", "a100-80gb", 8, 4.037, False),
    ("h100", "h100", 8, None, False),
    ("h100-spot", "h100", 8, 3.117, True),
    ("h200", "h200", 8, None, False),
    ("mi300x", "mi300x", 8, None, False),
    ("l4-b", "l4", 8, 0.891, False),
    ("l40s-b", "l40s", 8, 2.024, False),
    ("a100-spot", "a100-80gb", 8, 1.835, True),
    ("h100-b", "h100", 8, 6.857, False),
    ("h200-spot", "h200", 8, 3.429, True),
    ("mi300x-b", "mi300x", 8, 6.6, False),
)
# Models a team deploys many of (small ones dominate), with the source the renderer needs.
MODELS: tuple[tuple[str, float, str], ...] = (
    ("llama-3.1-8b", 0.45, "meta-llama/Llama-3.1-8B-Instruct"),
    ("mistral-7b", 0.2, "mistralai/Mistral-7B-Instruct-v0.3"),
    ("llama-2-7b", 0.15, "meta-llama/Llama-2-7b-chat-hf"),
    ("llama-3.1-70b", 0.1, "meta-llama/Llama-3.1-70B-Instruct"),
    ("mixtral-8x7b", 0.06, "mistralai/Mixtral-8x7B-Instruct-v0.1"),
    ("llama-2-70b", 0.04, "meta-llama/Llama-2-70b-chat-hf"),
)
ENGINES: tuple[tuple[str, float], ...] = (("vllm", 0.6), ("sglang", 0.2), ("trtllm", 0.15), ("tgi", 0.05))


def _choice(
    rng: np.random.Generator, items: tuple[Any, ...], weights: tuple[float, ...] | None = None
) -> Any:
    if weights is None:
        return items[int(rng.integers(len(items)))]
    p = np.asarray(weights, dtype=float)
    return items[int(rng.choice(len(items), p=p / p.sum()))]


def generate_pools(nodes: int = NODES_PER_POOL) -> list[dict[str, Any]]:
    """The pools; each selects its own kwok nodes by the chipfit.io/pool label e2e/fleet.py puts on them."""
    from placement import catalog

    out = []
    for name, acc, per_node, price, spot in POOLS:
        spec: dict[str, Any] = {
            "accelerator": acc,
            "devicesPerNode": per_node,
            "nodes": nodes,
            "pricePerDeviceHour": price
            if price is not None
            else catalog.ACCELERATORS[acc].default_price_per_hour,
            "spot": spot,
            "nodeSelector": {POOL_LABEL: name},
        }
        out.append(
            {
                "apiVersion": f"{GROUP}/v1alpha1",
                "kind": "AcceleratorPool",
                "metadata": {"name": name},
                "spec": spec,
            }
        )
    return out


def generate_services(n: int, seed: int = SEED) -> list[dict[str, Any]]:
    """`n` diverse InferenceServices, sized so the fleet above holds them with one pool lost.

    Drawn services whose SLO no configuration on these pools meets are dropped (they could never be Ready,
    and the benchmark is about moving services, not about refusing them): candidates decide, in batches.
    """
    from chipfit import handlers, planning
    from chipfit.api import v1alpha1

    pools = [v1alpha1.AcceleratorPool.model_validate(p) for p in generate_pools()]
    kept: list[dict[str, Any]] = []
    drawn = _draw(seed)
    while len(kept) < n:
        batch = [next(drawn) for _ in range(n - len(kept))]
        names = [p.metadata.name for p in pools]
        typed = [handlers.parse_service(b) for b in batch]
        valid = [handlers.first_problem(t, names) is None for t in typed]
        batch = [b for b, ok in zip(batch, valid, strict=True) if ok]
        typed = [t for t, ok in zip(typed, valid, strict=True) if ok]
        cset = planning.build_inputs(typed, pools)
        # Placeable: every request-size bucket has an aggregated configuration that serves it.
        covered: dict[str, set[int]] = {}
        width: dict[str, int] = {}
        for c in cset.problem.candidates:
            width[c.service] = len(c.max_rps_per_bucket)
            if c.role == "aggregated":
                covered.setdefault(c.service, set()).update(
                    i for i, r in enumerate(c.max_rps_per_bucket) if r > 0
                )
        placeable = {s for s, n in width.items() if len(covered.get(s, ())) == n}
        kept += [b for b, t in zip(batch, typed, strict=True) if planning.service_id(t) in placeable]
    return kept[:n]


def _draw(seed: int) -> Iterator[dict[str, Any]]:
    """Diverse InferenceServices, one after another (deterministic for a seed)."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    import plan_speed  # the traffic classes and SLO tiers of the planning benchmark

    from placement import catalog

    rng = np.random.default_rng(seed)
    classes = plan_speed.TRAFFIC_CLASSES
    i = -1
    while True:
        i += 1
        model_id, _, source = _choice(rng, MODELS, tuple(m[1] for m in MODELS))
        cls, p_mean, p_p99, o_mean, o_p99, _, tiers = _choice(rng, classes, tuple(c[5] for c in classes))
        jitter = rng.lognormal(0.0, 0.3, size=2)
        p_mean, p_p99 = plan_speed._round2(p_mean * jitter[0]), plan_speed._round2(p_p99 * jitter[0])
        o_mean, o_p99 = plan_speed._round2(o_mean * jitter[1]), plan_speed._round2(o_p99 * jitter[1])
        context = min(catalog.MODELS[model_id].max_context_tokens, 32768)
        if p_p99 + o_p99 > context:
            continue
        ttfts, itls = plan_speed.SLO_TIERS[_choice(rng, tiers)]
        engine = _choice(rng, tuple(e[0] for e in ENGINES), tuple(e[1] for e in ENGINES))
        precisions = list(_choice(rng, (("bf16",), ("bf16", "fp8"), ("fp8",)), (0.35, 0.45, 0.2)))
        serving = "aggregated" if engine == "tgi" else _choice(rng, ("aggregated", "auto"), (0.85, 0.15))
        placement: dict[str, Any] = {"priority": int(_choice(rng, (0, 0, 100, 500)))}
        if rng.random() < 0.25:
            placement["spotAllowed"] = False
        if rng.random() < 0.1:
            placement["excludedAccelerators"] = ["l4"]
        large = "70b" in model_id or "8x7b" in model_id
        rps = float(np.clip(rng.lognormal(math.log(0.1 if large else 0.3), 0.7), 0.02, 2.0))
        spec: dict[str, Any] = {
            "model": {"id": model_id, "source": source},
            "precisions": precisions,
            "engine": engine,
            "slo": {"ttftP99Ms": float(_choice(rng, ttfts)), "itlP99Ms": float(_choice(rng, itls))},
            "workload": {
                "requestsPerSecond": round(rps, 3),
                "promptTokens": {"mean": p_mean, "p99": p_p99},
                "outputTokens": {"mean": o_mean, "p99": o_p99},
                "maxContextTokens": context,
            },
            "serving": serving,
            "replicas": {"min": 1, "max": 16},
            "placement": placement,
        }
        yield {
            "apiVersion": f"{GROUP}/v1alpha1",
            "kind": "InferenceService",
            "metadata": {"name": f"{cls}-{i:04d}", "namespace": f"team-{i % 10:02d}"},
            "spec": spec,
        }


# --- processes ------------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def cpu_seconds(pid: int) -> float:
    """utime + stime of a live process (its finished children included), from /proc/<pid>/stat."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    ticks = os.sysconf("SC_CLK_TCK")
    return sum(int(f) for f in fields[11:15]) / ticks


def kubectl(kubeconfig: Path, *args: str, stdin: str | None = None) -> str:
    done = subprocess.run(
        [str(KUBECTL), "--kubeconfig", str(kubeconfig), *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=300,
    )
    if done.returncode != 0:
        raise RuntimeError(f"kubectl {' '.join(args[:3])}: {done.stderr.strip()[-2000:]}")
    return done.stdout


def apply(kubeconfig: Path, objects: list[dict[str, Any]]) -> None:
    for start in range(0, len(objects), 100):
        body = {"apiVersion": "v1", "kind": "List", "items": objects[start : start + 100]}
        kubectl(kubeconfig, "apply", "-f", "-", stdin=json.dumps(body))


@contextlib.contextmanager
def control_plane(run_dir: Path, pools_file: Path) -> Iterator[Path]:
    """e2e/cluster.sh up in a private run folder (the pools' kwok nodes registered); down afterwards."""
    env = {**os.environ, "CHIPFIT_E2E_RUN_DIR": str(run_dir), "CHIPFIT_E2E_POOLS": str(pools_file)}
    up = subprocess.run(["bash", str(E2E / "cluster.sh"), "up"], env=env, capture_output=True, text=True)
    try:
        if up.returncode != 0:
            raise RuntimeError(f"cluster.sh up failed:\n{up.stderr[-3000:]}")
        yield run_dir / "kubeconfig"
    finally:
        down = subprocess.run(
            ["bash", str(E2E / "cluster.sh"), "down"], env=env, capture_output=True, text=True
        )
        if down.returncode != 0:
            print(f"cluster.sh down: {down.stderr[-2000:]}", file=sys.stderr)


def component_pid(run_dir: Path, name: str) -> int | None:
    for candidate in (run_dir / "pids" / name, run_dir / f"{name}.pid"):
        if candidate.exists():
            return int(candidate.read_text().split()[0])
    return None


@contextlib.contextmanager
def operator(
    kubeconfig: Path, tree: Path | None, log: Path, debounce_s: float | None
) -> Iterator[subprocess.Popen[bytes]]:
    """`chipfit operator --standalone` of this tree (or `tree`) as a child process; SIGTERM afterwards."""
    env = {**os.environ, "KUBECONFIG": str(kubeconfig)}
    cmd = [sys.executable, str(Path(__file__).resolve()), "_operator"]
    if tree is not None:
        env["PYTHONPATH"] = f"{tree}{os.pathsep}{tree / 'operator'}"
        env["CHIPFIT_TREE"] = str(tree)
    cmd += [
        "operator",
        "--standalone",
        "--kubeconfig",
        str(kubeconfig),
        "--liveness",
        f"http://127.0.0.1:{_free_port()}/healthz",
        "--metrics-port",
        str(_free_port()),
    ]
    if debounce_s is not None:
        cmd += ["--debounce-seconds", str(debounce_s)]
    with log.open("wb") as out:
        process = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        try:
            yield process
        finally:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()


def _operator_main(argv: list[str]) -> None:
    if os.environ.get("CHIPFIT_TREE"):
        # Only the tree on PYTHONPATH (drop the editable install's finder, which would serve this tree).
        sys.meta_path[:] = [
            f for f in sys.meta_path if "__editable__" not in str(getattr(f, "__module__", ""))
        ]
    from chipfit import cli

    sys.exit(cli.main(argv))


# --- watching ------------------------------------------------------------------------------------------


class Observer:
    """Watch streams of InferenceServices, Pods and Nodes, kept as the latest object per key."""

    def __init__(self, kubeconfig: Path) -> None:
        import kubernetes

        self.client = kubernetes.config.new_client_from_config(config_file=str(kubeconfig))
        self.lock = threading.Lock()
        self.services: dict[tuple[str, str], dict[str, Any]] = {}
        self.pods: dict[tuple[str, str], dict[str, Any]] = {}
        self.nodes: dict[str, dict[str, Any]] = {}
        self.changed = threading.Condition(self.lock)
        self.stopping = False
        self.threads: list[threading.Thread] = []

    def start(self) -> None:
        import kubernetes

        custom = kubernetes.client.CustomObjectsApi(self.client)
        core = kubernetes.client.CoreV1Api(self.client)
        sources = [
            (
                self.services,
                lambda **kw: custom.list_cluster_custom_object(GROUP, "v1alpha1", "inferenceservices", **kw),
                True,
            ),
            (
                self.pods,
                lambda **kw: core.list_pod_for_all_namespaces(
                    label_selector="app.kubernetes.io/managed-by=chipfit", _preload_content=False, **kw
                ),
                False,
            ),
            (self.nodes, lambda **kw: core.list_node(_preload_content=False, **kw), False),
        ]
        for store, lister, custom_kind in sources:
            thread = threading.Thread(target=self._watch, args=(store, lister, custom_kind), daemon=True)
            thread.start()
            self.threads.append(thread)

    def _watch(self, store: dict[Any, Any], lister: Any, custom_kind: bool) -> None:
        import kubernetes

        while not self.stopping:
            try:
                listed = lister() if custom_kind else json.loads(lister().data)
                version = listed["metadata"]["resourceVersion"]
                with self.lock:
                    store.clear()
                    for item in listed["items"]:
                        store[self._key(item)] = item
                    self.changed.notify_all()
                watch = kubernetes.watch.Watch()
                kwargs: dict[str, Any] = {"resource_version": version, "timeout_seconds": 300}
                if custom_kind:
                    stream = watch.stream(lister, **kwargs)
                else:
                    stream = watch.stream(
                        lambda **kw: lister(**{k: v for k, v in kw.items() if k != "_preload_content"}),
                        **kwargs,
                    )
                for event in stream:
                    obj = event["object"]
                    if not isinstance(obj, dict):
                        obj = self.client.sanitize_for_serialization(obj)
                    with self.lock:
                        if event["type"] == "DELETED":
                            store.pop(self._key(obj), None)
                        elif event["type"] in ("ADDED", "MODIFIED"):
                            store[self._key(obj)] = obj
                        self.changed.notify_all()
                    if self.stopping:
                        return
            except Exception as exc:  # a dropped watch is listed again
                if self.stopping:
                    return
                print(f"watch restarted: {exc}", file=sys.stderr)
                time.sleep(0.5)

    @staticmethod
    def _key(obj: Mapping[str, Any]) -> Any:
        meta = obj["metadata"]
        return (meta.get("namespace"), meta["name"]) if meta.get("namespace") else meta["name"]

    def stop(self) -> None:
        self.stopping = True
        self.client.close()


def _condition(obj: Mapping[str, Any], type_: str) -> str | None:
    for c in (obj.get("status") or {}).get("conditions") or ():
        if c.get("type") == type_:
            return str(c.get("status"))
    return None


def ready(service: Mapping[str, Any]) -> bool:
    status = service.get("status") or {}
    return (
        status.get("observedGeneration") == service["metadata"].get("generation")
        and _condition(service, "Ready") == "True"
        and bool(status.get("placement"))
    )


def pools_of(service: Mapping[str, Any]) -> set[str]:
    return {p["pool"] for p in (service.get("status") or {}).get("placement") or ()}


def planned_replicas(service: Mapping[str, Any]) -> int:
    return sum(int(p["replicas"]) for p in (service.get("status") or {}).get("placement") or ())


def running_elsewhere(
    service: Mapping[str, Any],
    pods: Mapping[tuple[str, str], Mapping[str, Any]],
    nodes: Mapping[str, Any],
    lost: str,
) -> bool:
    """Every planned replica has a Running pod on a live node outside the lost pool."""
    ns, name = service["metadata"]["namespace"], service["metadata"]["name"]
    count = 0
    for (pod_ns, _), pod in pods.items():
        labels = pod["metadata"].get("labels") or {}
        if (
            pod_ns != ns
            or labels.get("chipfit.io/service") != name
            or labels.get("chipfit.io/role") == "router"
        ):
            continue
        if pod["metadata"].get("deletionTimestamp") or (pod.get("status") or {}).get("phase") != "Running":
            continue
        node = nodes.get((pod.get("spec") or {}).get("nodeName") or "")
        if node is None or (node["metadata"].get("labels") or {}).get(POOL_LABEL) == lost:
            continue
        count += 1
    return count >= planned_replicas(service) > 0


def snapshot(kubeconfig: Path) -> dict[str, Any]:
    """resourceVersion of every service and (resourceVersion, generation) of every chipfit Deployment."""
    services = json.loads(kubectl(kubeconfig, "get", "inferenceservices", "-A", "-o", "json"))["items"]
    deployments = json.loads(
        kubectl(
            kubeconfig, "get", "deployments", "-A", "-l", "app.kubernetes.io/managed-by=chipfit", "-o", "json"
        )
    )["items"]
    owned: dict[str, list[tuple[str, str, int]]] = {}
    for d in deployments:
        for ref in d["metadata"].get("ownerReferences") or ():
            owned.setdefault(ref["uid"], []).append(
                (d["metadata"]["name"], d["metadata"]["resourceVersion"], d["metadata"]["generation"])
            )
    return {
        f"{s['metadata']['namespace']}/{s['metadata']['name']}": {
            "rv": s["metadata"]["resourceVersion"],
            "status": s.get("status") or {},
            "pools": sorted(pools_of(s)),
            "deployments": sorted(owned.get(s["metadata"]["uid"], [])),
        }
        for s in services
    }


def _status_diffs(
    before: Mapping[str, Any], after: Mapping[str, Any], keys: list[str], limit: int = 5
) -> dict[str, list[str]]:
    """For the first `limit` services whose status changed: what changed (fields, conditions by type)."""
    out: dict[str, list[str]] = {}
    for key in keys:
        old, new = before[key]["status"], after.get(key, {}).get("status", {})
        if old == new:
            continue
        changed = []
        for field in sorted(set(old) | set(new)):
            if field == "conditions":
                conditions = {c["type"]: c for c in old.get(field) or ()}
                for c in new.get(field) or ():
                    if conditions.get(c["type"]) != c:
                        changed.append(f"condition {c['type']}: {conditions.get(c['type'])} -> {c}")
            elif old.get(field) != new.get(field):
                changed.append(f"{field}: {old.get(field)} -> {new.get(field)}")
        out[key] = changed
        if len(out) >= limit:
            break
    return out


def _pct(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None


def measure(
    tree: Path | None, n_services: int, run_dir: Path, timeout_s: float, debounce_s: float | None, label: str
) -> dict[str, Any]:
    """One phase: fresh cluster, fleet, operator, converge, lose a pool, measure; everything stopped after."""
    if run_dir.exists():
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True)
    pools = generate_pools()
    cached = run_dir.parent / f"replan-fleet-{n_services}-{SEED}.json"
    if cached.exists():
        services = json.loads(cached.read_text())
    else:
        services = generate_services(n_services)
        cached.write_text(json.dumps(services))
    pools_file = run_dir.parent / f"{run_dir.name}-pools.json"
    pools_file.write_text(json.dumps({"apiVersion": "v1", "kind": "List", "items": pools}))
    pools_yaml = run_dir.parent / f"{run_dir.name}-pools.yaml"
    import yaml

    pools_yaml.write_text(yaml.safe_dump_all(pools))
    result: dict[str, Any] = {"label": label, "services": n_services, "pools": len(pools)}
    with control_plane(run_dir, pools_yaml) as kubeconfig:
        apiserver = component_pid(run_dir, "kube-apiserver")
        kubectl(kubeconfig, "apply", "--server-side", "-f", str(REPO / "crds"))
        kubectl(kubeconfig, "wait", "--for=condition=Established", "--timeout=120s", "crd", "--all")
        namespaces = sorted({s["metadata"]["namespace"] for s in services})
        apply(
            kubeconfig,
            [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}} for ns in namespaces],
        )
        apply(kubeconfig, pools)
        for ns in namespaces:  # pods are admitted once the namespace's default ServiceAccount exists
            for _ in range(120):
                if (
                    subprocess.run(
                        [str(KUBECTL), "--kubeconfig", str(kubeconfig), "get", "sa", "default", "-n", ns],
                        capture_output=True,
                    ).returncode
                    == 0
                ):
                    break
                time.sleep(0.5)
        apply(kubeconfig, services)
        observer = Observer(kubeconfig)
        observer.start()
        log = run_dir / "logs" / "operator.log"
        started = time.monotonic()
        with operator(kubeconfig, tree, log, debounce_s) as proc:
            # 1. converge
            deadline = started + timeout_s
            with observer.lock:
                while True:
                    n_ready = sum(1 for s in observer.services.values() if ready(s))
                    if n_ready >= n_services and len(observer.services) >= n_services:
                        break
                    if time.monotonic() > deadline or proc.poll() is not None:
                        raise RuntimeError(
                            f"{label}: only {n_ready}/{n_services} Ready after {timeout_s:.0f} s (log {log})"
                        )
                    observer.changed.wait(timeout=5)
            result["converge_s"] = round(time.monotonic() - started, 1)
            result["converge_operator_cpu_s"] = round(cpu_seconds(proc.pid), 1)
            # Quiet period: let rollouts finish draining and the operator go idle.
            time.sleep(15)
            before = snapshot(kubeconfig)
            users: dict[str, int] = {}
            for entry in before.values():
                for pool in entry["pools"]:
                    users[pool] = users.get(pool, 0) + 1
            lost = max(sorted(users), key=lambda p: users[p])
            affected = sorted(k for k, v in before.items() if lost in v["pools"])
            result["lost_pool"] = lost
            result["affected"] = len(affected)
            lost_nodes = [
                n
                for n, body in observer.nodes.items()
                if (body["metadata"].get("labels") or {}).get(POOL_LABEL) == lost
            ]
            op_cpu0 = cpu_seconds(proc.pid)
            api_cpu0 = cpu_seconds(apiserver) if apiserver else float("nan")
            kubectl(kubeconfig, "delete", "node", "--wait=false", *lost_nodes)
            t0 = time.monotonic()
            placed: dict[str, float] = {}
            running: dict[str, float] = {}
            deadline = t0 + timeout_s
            with observer.lock:
                while len(running) < len(affected) and time.monotonic() < deadline and proc.poll() is None:
                    now = time.monotonic() - t0
                    for key in affected:
                        ns, name = key.split("/")
                        service = observer.services.get((ns, name))
                        if service is None:
                            continue
                        if key not in placed and lost not in pools_of(service) and pools_of(service):
                            placed[key] = now
                        if (
                            key in placed
                            and key not in running
                            and running_elsewhere(service, observer.pods, observer.nodes, lost)
                        ):
                            running[key] = now
                    observer.changed.wait(timeout=1)
            result["operator_cpu_s_after_loss"] = round(cpu_seconds(proc.pid) - op_cpu0, 2)
            result["apiserver_cpu_s_after_loss"] = (
                round(cpu_seconds(apiserver) - api_cpu0, 2) if apiserver else None
            )
            time.sleep(15)  # anything the operator still does to the others would show now
            after = snapshot(kubeconfig)
            result["operator_cpu_s_total"] = round(cpu_seconds(proc.pid), 1)
        observer.stop()
    placed_s = sorted(placed.values())
    running_s = sorted(running.values())
    unaffected = [k for k in before if k not in affected]
    result.update(
        {
            "placed": len(placed),
            "placed_max_s": round(max(placed_s), 2) if placed_s else None,
            "placed_p50_s": round(_pct(placed_s, 50) or 0, 2) if placed_s else None,
            "running": len(running),
            "running_max_s": round(max(running_s), 2) if running_s else None,
            "running_p50_s": round(_pct(running_s, 50) or 0, 2) if running_s else None,
            "not_placed": [k for k in affected if k not in placed],
            "not_running": [k for k in affected if k not in running],
            "unaffected": len(unaffected),
            "unaffected_status_changed": sorted(
                k for k in unaffected if after.get(k, {}).get("rv") != before[k]["rv"]
            ),
            "unaffected_deployments_changed": sorted(
                k for k in unaffected if after.get(k, {}).get("deployments") != before[k]["deployments"]
            ),
            "unaffected_status_diff": _status_diffs(before, after, unaffected),
            "unaffected_moved": sorted(
                k for k in unaffected if after.get(k, {}).get("pools") != before[k]["pools"]
            ),
        }
    )
    return result


def previous_tree(commit: str) -> contextlib.AbstractContextManager[Path]:
    """A temporary git worktree of `commit` (the planning benchmark's, removed afterwards)."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    import plan_speed

    return plan_speed.previous_tree(commit)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "_operator":
        _operator_main(sys.argv[2:])
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--services", type=int, default=300)
    parser.add_argument(
        "--previous", help="also measure this commit's operator first (same fleet, fresh cluster)"
    )
    parser.add_argument(
        "--tree", type=Path, help="measure the operator of this source tree instead of this one"
    )
    parser.add_argument("--run-dir", type=Path, default=E2E / ".run" / "replan-bench")
    parser.add_argument(
        "--timeout", type=float, default=900.0, help="bound on converging and on re-placing (s)"
    )
    parser.add_argument(
        "--debounce", type=float, default=None, help="operator --debounce-seconds (default: its own)"
    )
    parser.add_argument("--json", type=Path)
    parser.add_argument(
        "--dry", action="store_true", help="print the generated fleet's plan summary and stop"
    )
    args = parser.parse_args()

    def interrupted(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")  # the context managers stop what was started

    signal.signal(signal.SIGTERM, interrupted)
    if args.dry:
        from chipfit import handlers, planning
        from chipfit.api import v1alpha1

        pools = [v1alpha1.AcceleratorPool.model_validate(p) for p in generate_pools()]
        services = [handlers.parse_service(s) for s in generate_services(args.services)]
        t = time.process_time()
        solved = handlers.plan_outcomes(services, pools, [], planning.Planner(handlers.solve_options()))
        used: dict[str, int] = {}
        for u in solved.plan.pools:
            used[u.pool] = u.devices_used
        print([(sid, o.reason) for sid, o in solved.outcomes.items() if o.served != "served"][:20])
        print(
            sorted(
                sum(p.replicas * p.tensor_parallel for p in o.placements) for o in solved.outcomes.values()
            )
        )
        print(
            json.dumps(
                {
                    "cpu_s": round(time.process_time() - t, 1),
                    "status": solved.plan.status,
                    "gap": solved.plan.gap,
                    "devices": used,
                    "unserved": sum(1 for o in solved.outcomes.values() if o.served != "served"),
                }
            )
        )
        return
    results = []
    if args.previous:
        with previous_tree(args.previous) as tree:
            results.append(
                measure(
                    tree,
                    args.services,
                    args.run_dir,
                    args.timeout,
                    args.debounce,
                    f"previous {args.previous}",
                )
            )
            print(json.dumps(results[-1]), flush=True)
    results.append(
        measure(
            args.tree, args.services, args.run_dir, args.timeout, args.debounce, str(args.tree or "this tree")
        )
    )
    print(json.dumps(results[-1]), flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
