"""`chipfit profile` against a real vLLM engine (CPU build, tiny generated model), and calibration from it.

One engine process serves every test here (module fixture). Checks:
1. the profile agrees with the engine's own Prometheus histograms over the same window (request counts
   exactly; mean TTFT and mean inter-token latency within stated tolerances);
2. a profile fed back calibrates the model, and the calibrated model predicts a held-back point (another
   concurrency and request size) better than the uncalibrated one.
Engine speed on a shared 2-core machine is noisy: only ratios and shapes are asserted, never wall-clock
numbers.
"""

from __future__ import annotations

import json
import math
import os
import pathlib
import re
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from typing import Final

import httpx
import pytest
import yaml

from chipfit import cli, validation
from chipfit.api import v1alpha1
from chipfit.profiling import calibrate, host, runner
from placement import profile_fit

REPO_DIR: Final = pathlib.Path(__file__).resolve().parents[2]
INSTALL: Final = REPO_DIR / "e2e" / "install-engine.sh"
SERVED_NAME: Final = "chipfit-tiny-llama"
# vLLM CPU backend KV cache (GiB), as the engine helper starts it.
KV_CACHE_GIB: Final = 1
READY_TIMEOUT_S: Final = 300.0
# Tolerances of the client-vs-engine comparison. vLLM V1 times both histograms with the engine core's
# output timestamps, from the moment the API server hands the tokenized request to the engine core: the
# client also measures HTTP parsing, tokenization, detokenization and streaming, which on a 2-core
# machine shared by the engine, its API server and the client take tens of milliseconds per request.
# Inter-token gaps are differences, so those fixed costs cancel: mean ITL agrees within 20% + 3 ms.
# Mean TTFT: the client's is never below the engine's (less 2 ms of clock granularity), and the gap is the
# per-request front-end cost the calibration fits as `request_overhead_s`.
ITL_REL_TOL: Final = 0.20
ITL_ABS_TOL_MS: Final = 3.0
TTFT_CLOCK_SLACK_MS: Final = 2.0


def _engine_env() -> dict[str, str]:
    """Paths of the installed engine, or skip (locally) / fail (CI) when it is not installed."""
    result = subprocess.run(["bash", str(INSTALL), "--check"], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        message = f"vLLM engine not installed (run e2e/install-engine.sh): {result.stderr.strip()}"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    env = {}
    for line in result.stdout.splitlines():
        key, _, value = line.partition("=")
        env[key] = value.strip("'\"")
    return env


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def engine() -> Iterator[tuple[str, pathlib.Path]]:
    """One real `vllm serve` on loopback; yields (base URL, model folder); stops its process group."""
    env = _engine_env()
    port = _free_port()
    model = pathlib.Path(env["CHIPFIT_ENGINE_MODEL"])
    log = open(REPO_DIR / ".pytest_cache" / f"vllm-profile-{port}.log", "w")  # noqa: SIM115
    process = subprocess.Popen(
        [
            env["CHIPFIT_ENGINE_VLLM"],
            "serve",
            str(model),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--served-model-name",
            SERVED_NAME,
            "--enforce-eager",
            "--max-model-len",
            "4096",
        ],
        env={**os.environ, "VLLM_CPU_KVCACHE_SPACE": str(KV_CACHE_GIB)},
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:
            if process.poll() is not None:
                pytest.fail(f"vllm serve exited with {process.returncode}; see {log.name}", pytrace=False)
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(
                    f"vllm serve not ready after {READY_TIMEOUT_S:.0f} s; see {log.name}", pytrace=False
                )
            time.sleep(1)
        yield url, model
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=10)
        log.close()


def _histograms(url: str) -> dict[str, float]:
    """_sum and _count of the engine's TTFT and inter-token histograms (summed over label sets)."""
    text = httpx.get(url + "/metrics", timeout=10).text
    out: dict[str, float] = {}
    pattern = re.compile(
        r"^(vllm:(?:time_to_first_token_seconds|inter_token_latency_seconds|request_success_total)"
        r"(?:_sum|_count)?)(?:\{[^}]*\})? ([0-9.eE+-]+)$"
    )
    for line in text.splitlines():
        match = pattern.match(line)
        if match:
            out[match.group(1)] = out.get(match.group(1), 0.0) + float(match.group(2))
    return out


def _profile(url: str, model: pathlib.Path, out: pathlib.Path, *args: str) -> dict[str, object]:
    code = cli.main(
        [
            "profile",
            "--url",
            url,
            "--accelerator",
            host.HOST_CPU_ID,
            "--architecture",
            str(model / "config.json"),
            "--quiet",
            "-o",
            str(out),
            "--timeout",
            "120",
            *args,
        ]
    )
    assert code == 0, f"chipfit profile exited {code}"
    body = yaml.safe_load(out.read_text())
    assert validation.crd_errors("PerformanceProfile", body) == []
    return body


def test_profile_agrees_with_the_engines_own_histograms(
    engine: tuple[str, pathlib.Path], tmp_path: pathlib.Path
) -> None:
    url, model = engine
    before = _histograms(url)
    body = _profile(
        url,
        model,
        tmp_path / "one.yaml",
        "--concurrency",
        "4",
        "--warmup",
        "0",
        "--duration",
        "12",
        "--prompt-tokens",
        "128",
        "--output-tokens",
        "32",
    )
    after = _histograms(url)
    delta = {k: after.get(k, 0.0) - before.get(k, 0.0) for k in after}
    point = body["spec"]["points"][0]
    # Every request the profile sent, plus its two tokenizer probes, is one engine TTFT observation.
    assert delta["vllm:time_to_first_token_seconds_count"] == point["requests"] + len(runner.PROBE_WORDS)
    engine_ttft_ms = (
        delta["vllm:time_to_first_token_seconds_sum"] / delta["vllm:time_to_first_token_seconds_count"] * 1e3
    )
    engine_itl_ms = (
        delta["vllm:inter_token_latency_seconds_sum"] / delta["vllm:inter_token_latency_seconds_count"] * 1e3
    )
    # One inter-token gap per output token after the first (probes ask for one token: none).
    assert delta["vllm:inter_token_latency_seconds_count"] == pytest.approx(
        point["requests"] * (point["outputTokens"] - 1), rel=0.02
    )
    print(
        f"\nclient TTFT mean {point['ttftMeanMs']:.1f} ms vs engine {engine_ttft_ms:.1f} ms; "
        f"client ITL mean {point['itlMeanMs']:.2f} ms vs engine {engine_itl_ms:.2f} ms; "
        f"{point['requests']} requests"
    )
    assert abs(point["itlMeanMs"] - engine_itl_ms) <= ITL_REL_TOL * engine_itl_ms + ITL_ABS_TOL_MS
    assert point["ttftMeanMs"] >= engine_ttft_ms - TTFT_CLOCK_SLACK_MS
    assert point["errors"] == 0 and point["outputTokens"] == 32


def test_a_profile_calibrates_the_model_for_an_unmeasured_size_and_load(
    engine: tuple[str, pathlib.Path], tmp_path: pathlib.Path
) -> None:
    url, model = engine
    sweep = _profile(
        url,
        model,
        tmp_path / "sweep.yaml",
        "--concurrency",
        "1,2,4,8",
        "--warmup",
        "2",
        "--duration",
        "8",
        "--prompt-tokens",
        "128",
        "--output-tokens",
        "32",
    )
    held = _profile(
        url,
        model,
        tmp_path / "held.yaml",
        "--concurrency",
        "3",
        "--warmup",
        "2",
        "--duration",
        "10",
        "--prompt-tokens",
        "192",
        "--output-tokens",
        "48",
    )
    points = sweep["spec"]["points"]
    # Shapes of continuous batching: more in flight serves more, and waits longer for the first token.
    assert points[-1]["requestsPerSecond"] > points[0]["requestsPerSecond"]
    assert points[-1]["ttftP50Ms"] > points[0]["ttftP50Ms"]
    chip = host.host_accelerator(KV_CACHE_GIB * 2**30)
    accelerators = {chip.id: chip}
    sweep_profile = v1alpha1.PerformanceProfile.model_validate(sweep)
    held_profile = v1alpha1.PerformanceProfile.model_validate(held)
    cal = calibrate.calibrations([sweep_profile], accelerators)[
        (chip.id, "vllm", sweep["spec"].get("engineVersion"))
    ]
    held_run = calibrate.measured_run(held_profile, accelerators)
    before = profile_fit.rms_log_error([held_run], None)
    after = profile_fit.rms_log_error([held_run], cal.efficiency, cal.request_overhead_s)
    trust = cal.trust(SERVED_NAME, 1, 192, 48, 3)
    report = {
        "fitted": {
            "bandwidth": cal.efficiency.bandwidth,
            "compute_16bit": cal.efficiency.compute_16bit,
            "step_overhead_ms": cal.efficiency.step_overhead_s * 1e3,
            "request_overhead_ms": cal.request_overhead_s * 1e3,
        },
        "fit_rms_log_error": [cal.rms_log_error_before, cal.rms_log_error_after],
        "held_out_rms_log_error": [before, after],
        "trust": trust.level,
    }
    print("\n" + json.dumps(report, indent=1))
    # Kept for benchmarks/REPORT_profiling.md (the measured profiles and the fit).
    artifacts = REPO_DIR / ".pytest_cache" / "profiling"
    artifacts.mkdir(parents=True, exist_ok=True)
    (artifacts / "calibration.json").write_text(json.dumps(report, indent=1))
    for name in ("sweep.yaml", "held.yaml"):
        (artifacts / name).write_text((tmp_path / name).read_text())
    assert math.isfinite(after) and after < before
    assert cal.rms_log_error_after < cal.rms_log_error_before
    assert trust.level == "calibrated-extrapolated"
