"""The autoscaler's observe step on real parts: a real vLLM engine (CPU build, tiny model) scraped by a real
Prometheus server, read through prometheus-api-client with the PromQL chipfit.observe builds.

The engine comes from e2e/install-engine.sh ($CHIPFIT_ENGINE_VLLM, $CHIPFIT_ENGINE_MODEL); Prometheus from
e2e/install-prometheus.sh. The scrape job attaches the labels a kubernetes-pods job's labelmap would give an
engine pod (namespace, chipfit_io_service, chipfit_io_role), so the selector is the operator's.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Final

import httpx
import pytest

from chipfit import observe
from placement import workload

pytestmark = pytest.mark.e2e

PROMETHEUS_BIN: Final = shutil.which("prometheus") or "/usr/bin/prometheus"
ENGINE_READY_TIMEOUT_S: Final = 300.0
PROM_READY_TIMEOUT_S: Final = 60.0
# Requests sent: enough that every histogram has samples in the 1-minute rate window.
REQUESTS: Final = 12
NAMESPACE, SERVICE, ROLE = "ml", "chat", "aggregated"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait(url: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=2.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1.0)
    raise TimeoutError(f"{url} not ready after {timeout_s:.0f} s")


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    vllm, model = os.environ.get("CHIPFIT_ENGINE_VLLM"), os.environ.get("CHIPFIT_ENGINE_MODEL")
    if not vllm or not model:
        pytest.skip('no vLLM engine: run `eval "$(bash e2e/install-engine.sh)"` first')
    port = _free_port()
    log = tmp_path_factory.mktemp("engine") / "vllm.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [vllm, "serve", model, "--host", "127.0.0.1", "--port", str(port), "--served-model-name", "tiny",
             "--enforce-eager", "--max-model-len", "4096"],
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            env={**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1"},
        )  # fmt: skip
    try:
        _wait(f"http://127.0.0.1:{port}/health", ENGINE_READY_TIMEOUT_S)
        yield f"127.0.0.1:{port}"
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def prometheus(engine: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if not Path(PROMETHEUS_BIN).exists():
        pytest.skip("no prometheus: run e2e/install-prometheus.sh")
    work = tmp_path_factory.mktemp("prometheus")
    config = work / "prometheus.yml"
    config.write_text(
        "global: {scrape_interval: 1s}\n"
        "scrape_configs:\n"
        "  - job_name: engines\n"
        "    static_configs:\n"
        f"      - targets: ['{engine}']\n"
        f"        labels: {{namespace: {NAMESPACE}, chipfit_io_service: {SERVICE},"
        f" chipfit_io_role: {ROLE}}}\n"
    )
    port = _free_port()
    proc = subprocess.Popen(
        [PROMETHEUS_BIN, f"--config.file={config}", f"--storage.tsdb.path={work / 'data'}",
         f"--web.listen-address=127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    try:
        _wait(f"http://127.0.0.1:{port}/-/ready", PROM_READY_TIMEOUT_S)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_observe_reads_a_real_engine_through_a_real_prometheus(engine: str, prometheus: str) -> None:
    for i in range(REQUESTS):
        r = httpx.post(
            f"http://{engine}/v1/completions",
            json={"model": "tiny", "prompt": "count to ten " * (1 + i % 4), "max_tokens": 8 + 4 * (i % 3)},
            timeout=120.0,
        )
        assert r.status_code == 200, r.text
    query = observe.prometheus_query(prometheus)
    table = observe.metrics_for("vllm")
    q = observe.queries(table, observe.selector(NAMESPACE, SERVICE, ROLE))
    deadline = time.monotonic() + 60.0
    role = observe.read_role(query, q)
    while (role.requests_per_second or 0.0) <= 0.0 and time.monotonic() < deadline:
        time.sleep(2.0)
        role = observe.read_role(query, q)
    assert role.error is None
    assert role.requests_per_second is not None and role.requests_per_second > 0.0
    assert role.ttft_p99_ms is not None and role.ttft_p99_ms > 0.0
    assert role.itl_p99_ms is not None and role.itl_p99_ms > 0.0
    assert role.kv_usage is not None and 0.0 <= role.kv_usage <= 1.0
    assert role.waiting is not None and role.running is not None
    assert role.prompt_histogram[1] and role.output_histogram[1]
    wl = workload.from_samples(1.0, [20, 60, 200], [8, 16, 40])
    obs = observe.observation({ROLE: role}, wl)
    assert not obs.missing
    assert obs.bucket_share is not None and abs(sum(obs.bucket_share) - 1.0) < 1e-9
    # A selector no pod matches is missing data, not an error or a zero.
    other = observe.read_role(query, observe.queries(table, observe.selector(NAMESPACE, "nope", ROLE)))
    assert other.requests_per_second is None and other.error is None
