"""A "kubelet for engines": real vLLM engines for a service's kwok pods, scraped by a real Prometheus.

kwok plays the nodes and marks pods Running, but runs no container. For the autoscaling end-to-end test the
nearest real thing is this: a thread that watches the service's pods on the real API server and, for each
pod kwok runs, starts one real vLLM CPU engine (tests/engine/harness.py) on loopback; for each pod that goes
(scale-down, node loss) it takes the engine out of the endpoints first, lets its in-flight requests finish
(what the rendered preStop wait gives a real pod), then stops it by process group. Ready engines are
written to a Prometheus file_sd file with the labels a kubernetes-pods scrape job's labelmap gives a pod
(namespace, pod, chipfit_io_service, chipfit_io_role, chipfit_io_pool), so Prometheus scrapes them as it
would scrape the pods in a cluster and the operator reads them with its own PromQL.

`Endpoints` (the ready engines) is what a Service would route to: the load generator sends there.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import pathlib
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, Final

import httpx
from engine import harness

POLL_S: Final = 1.0
# Bound on draining a removed engine's in-flight requests before it is stopped (the test's requests take
# about a second on the CPU engine; this bounds a stuck one).
DRAIN_TIMEOUT_S: Final = 30.0
HTTP_TIMEOUT_S: Final = 300.0


@dataclasses.dataclass
class Engine:
    """One engine started for one pod."""

    pod: str
    pool: str
    role: str
    process: harness.EngineProcess
    started_s: float
    ready_s: float | None = None
    in_flight: int = 0


@dataclasses.dataclass(frozen=True)
class PodEvent:
    """What the kubelet did, when (monotonic seconds), for the test's assertions."""

    time_s: float
    pod: str
    pool: str
    what: str  # "start", "ready", "drain", "stop"


class EngineKubelet:
    """Watches pods labelled chipfit.io/service=<service> in a namespace; one engine per Running pod."""

    def __init__(
        self,
        list_pods: Callable[[], list[dict[str, Any]]],
        install: harness.EngineInstall,
        log_dir: pathlib.Path,
        targets_path: pathlib.Path,
        namespace: str,
        service: str,
        max_engines: int,
        extra_args: tuple[str, ...] = (),
    ) -> None:
        self.list_pods = list_pods
        self.install = install
        self.log_dir = log_dir
        self.targets_path = targets_path
        self.namespace = namespace
        self.service = service
        self.max_engines = max_engines
        self.extra_args = extra_args
        self.engines: dict[str, Engine] = {}
        self.events: list[PodEvent] = []
        self.errors: list[str] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._round_robin = 0
        self._removing: set[str] = set()
        self.write_targets()

    # --- endpoints --------------------------------------------------------------------------------------

    def ready(self) -> list[Engine]:
        with self._lock:
            return [e for e in self.engines.values() if e.ready_s is not None]

    def pick(self) -> Engine | None:
        """The next ready engine, round robin (as a Service's endpoints would spread connections)."""
        with self._lock:
            ready = sorted((e for e in self.engines.values() if e.ready_s is not None), key=lambda e: e.pod)
            if not ready:
                return None
            self._round_robin += 1
            engine = ready[self._round_robin % len(ready)]
            engine.in_flight += 1
            return engine

    def done(self, engine: Engine) -> None:
        with self._lock:
            engine.in_flight -= 1

    def write_targets(self) -> None:
        """The ready engines as Prometheus file_sd targets (written atomically: Prometheus watches it)."""
        with self._lock:
            groups = [
                {
                    "targets": [f"{harness.LOOPBACK}:{e.process.port}"],
                    "labels": {
                        "namespace": self.namespace,
                        "pod": e.pod,
                        "chipfit_io_service": self.service,
                        "chipfit_io_role": e.role,
                        "chipfit_io_pool": e.pool,
                    },
                }
                for e in sorted(self.engines.values(), key=lambda e: e.pod)
                if e.ready_s is not None
            ]
        tmp = self.targets_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(groups))
        os.replace(tmp, self.targets_path)

    # --- the loop ---------------------------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="engine-kubelet", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the loop and every engine it started (by process group)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=120)
        for pod in list(self.engines):
            self._remove(pod, drain=False)
        deadline = time.monotonic() + 2 * (DRAIN_TIMEOUT_S + harness.STOP_GRACE_S)
        while self.engines and time.monotonic() < deadline:  # background drains finishing
            time.sleep(0.5)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._step()
            except Exception as error:  # a failed list is retried; the test reads errors
                self.errors.append(f"{type(error).__name__}: {error}")
            self._stop.wait(POLL_S)

    def _step(self) -> None:
        running = {}
        for pod in self.list_pods():
            meta = pod["metadata"]
            labels = meta.get("labels") or {}
            if labels.get("chipfit.io/service") != self.service or labels.get("chipfit.io/role") == "router":
                continue
            if meta.get("deletionTimestamp") or (pod.get("status") or {}).get("phase") != "Running":
                continue
            running[meta["name"]] = pod
        for name in [p for p in self.engines if p not in running and p not in self._removing]:
            # Drained in the background: new pods keep getting engines meanwhile.
            self._removing.add(name)
            threading.Thread(target=self._remove, args=(name, True), daemon=True).start()
        for name, pod in sorted(running.items()):
            if name in self.engines:
                continue
            if len(self.engines) >= self.max_engines:
                self.errors.append(f"pod {name}: more than {self.max_engines} engines asked for at once")
                continue
            labels = pod["metadata"]["labels"]
            spec = harness.EngineSpec(name=name, extra_args=("--max-model-len=4096", *self.extra_args))
            process = harness.start(self.install, spec, self.log_dir)
            engine = Engine(
                name, labels.get("chipfit.io/pool", ""), labels.get("chipfit.io/role", ""), process,
                time.monotonic(),
            )  # fmt: skip
            with self._lock:
                self.engines[name] = engine
            self.events.append(PodEvent(time.monotonic(), name, engine.pool, "start"))
        changed = False
        for engine in list(self.engines.values()):
            if engine.pod in self._removing:
                continue  # draining: out of the endpoints for good, though it still answers /health
            if engine.ready_s is None and _serving(engine.process):
                engine.ready_s = time.monotonic()
                self.events.append(PodEvent(engine.ready_s, engine.pod, engine.pool, "ready"))
                changed = True
            elif engine.ready_s is None and engine.process.process.poll() is not None:
                self.errors.append(f"engine of pod {engine.pod} exited:\n{engine.process.log_tail()}")
                self._remove(engine.pod, drain=False)
        if changed:
            self.write_targets()

    def _remove(self, pod: str, drain: bool) -> None:
        """Out of the endpoints and the scrape targets, in-flight requests finish, then stop the engine."""
        with self._lock:
            engine = self.engines.get(pod)
            if engine is None:
                return
            engine.ready_s = None
        self.write_targets()
        self.events.append(PodEvent(time.monotonic(), pod, engine.pool, "drain"))
        deadline = time.monotonic() + DRAIN_TIMEOUT_S
        while drain and engine.in_flight > 0 and time.monotonic() < deadline:
            time.sleep(0.2)
        try:
            harness.stop(engine.process)
        except harness.EngineError as error:
            self.errors.append(str(error))
        with self._lock:
            self.engines.pop(pod, None)
            self._removing.discard(pod)
        self.events.append(PodEvent(time.monotonic(), pod, engine.pool, "stop"))


def _serving(process: harness.EngineProcess) -> bool:
    """/health 200 and the model listed: what the rendered readiness probe checks."""
    if process.process.poll() is not None or process.get("/health")[0] != 200:
        return False
    status, body = process.get("/v1/models")
    return status == 200 and process.served_name in {m["id"] for m in json.loads(body)["data"]}


class Prometheus:
    """A real Prometheus server (e2e/install-prometheus.sh) scraping the file_sd targets every second, and
    `static` host:port targets (the activator) in a job of their own."""

    def __init__(
        self,
        binary: str,
        work: pathlib.Path,
        targets_path: pathlib.Path,
        port: int,
        static: tuple[str, ...] = (),
    ) -> None:
        self.binary = binary
        self.work = work
        self.port = port
        self.config = work / "prometheus.yml"
        text = (
            "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
            "scrape_configs:\n"
            "  - job_name: engines\n"
            "    file_sd_configs:\n"
            f"      - files: ['{targets_path}']\n"
            "        refresh_interval: 1s\n"
        )
        if static:
            text += (
                "  - job_name: activator\n"
                f"    static_configs: [{{targets: [{', '.join(repr(t) for t in static)}]}}]\n"
            )
        self.config.write_text(text)
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def url(self) -> str:
        return f"http://{harness.LOOPBACK}:{self.port}"

    def start(self, timeout_s: float = 60.0) -> None:
        self.starts += 1
        log = (self.work / f"prometheus-{self.starts}.log").open("wb")
        self.process = subprocess.Popen(
            [self.binary, f"--config.file={self.config}", f"--storage.tsdb.path={self.work / 'data'}",
             f"--web.listen-address={harness.LOOPBACK}:{self.port}"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/-/ready", timeout=2.0).status_code == 200:
                    return
            time.sleep(0.5)
        raise TimeoutError(f"prometheus not ready after {timeout_s:.0f} s")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None


@contextlib.contextmanager
def running_prometheus(
    binary: str, work: pathlib.Path, targets_path: pathlib.Path, port: int
) -> Iterator[Prometheus]:
    prom = Prometheus(binary, work, targets_path, port)
    prom.start()
    try:
        yield prom
    finally:
        prom.stop()


class ServiceProxy:
    """What a ClusterIP Service and kube-proxy do for the engines, on loopback: a request goes to a ready
    engine (round robin); with none, /health answers 503 and other paths 503 (a Service without
    endpoints refuses connections; the activator only needs "not ready")."""

    def __init__(self, kubelet: EngineKubelet, port: int) -> None:
        import http.server

        self.kubelet = kubelet
        self.port = port
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                return

            def _reply(self, status: int, body: bytes, content_type: str = "text/plain") -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:
                if self.path == "/health":
                    self._reply(200 if proxy.kubelet.ready() else 503, b"")
                    return
                self._forward("GET", b"")

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                self._forward("POST", self.rfile.read(length))

            def _forward(self, method: str, body: bytes) -> None:
                engine = proxy.kubelet.pick()
                if engine is None:
                    self._reply(503, b"no endpoints\n")
                    return
                try:
                    response = httpx.request(
                        method,
                        engine.process.base_url + self.path,
                        content=body or None,
                        headers={"Content-Type": self.headers.get("Content-Type", "application/json")},
                        timeout=HTTP_TIMEOUT_S,
                    )
                    self._reply(
                        response.status_code,
                        response.content,
                        response.headers.get("content-type", "application/json"),
                    )
                finally:
                    proxy.kubelet.done(engine)

        self.server = http.server.ThreadingHTTPServer((harness.LOOPBACK, port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, name="service-proxy", daemon=True)

    @property
    def url(self) -> str:
        return f"http://{harness.LOOPBACK}:{self.port}"

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=30)
