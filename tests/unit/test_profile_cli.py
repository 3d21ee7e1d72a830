"""`chipfit profile` on failures (5xx, timeouts, a server dying mid-run, malformed answers) and its inputs.

A small real HTTP server (tests/unit/profiling_server.py) produces the failures on demand; measurements
themselves are checked against the real vLLM engine in tests/e2e/test_profile_engine.py.
"""

from __future__ import annotations

import pathlib

import pytest
import yaml

from chipfit import cli, validation
from chipfit.commands import profile as profile_cmd
from chipfit.profiling import sizes
from tests.unit import profiling_server as ps

DATA = pathlib.Path(__file__).parent / "data"
FAST = [
    "--accelerator",
    "h100",
    "--model",
    "llama-3.1-8b",
    "--warmup",
    "0",
    "--prompt-tokens",
    "20",
    "--output-tokens",
    "8",
    "--quiet",
]


def _run(url: str, tmp_path: pathlib.Path, *extra: str) -> tuple[int, dict[str, object] | None]:
    out = tmp_path / "profile.yaml"
    code = cli.main(["profile", "--url", url, *FAST, "-o", str(out), *extra])
    return code, (yaml.safe_load(out.read_text()) if out.exists() else None)


def _one_line_error(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("chipfit profile:")]
    assert len(lines) == 1, err
    return lines[0]


def _assert_valid(body: dict[str, object]) -> None:
    assert validation.crd_errors("PerformanceProfile", body) == []


def test_healthy_server_gives_a_valid_profile_with_a_point_per_level(tmp_path: pathlib.Path) -> None:
    plot = tmp_path / "plot.html"
    with ps.serve(ps.Behaviour(token_delay_s=0.002)) as url:
        code, body = _run(url, tmp_path, "--concurrency", "1,3", "--duration", "1", "--plot", str(plot))
    assert code == 0 and body is not None
    _assert_valid(body)
    spec = body["spec"]
    assert isinstance(spec, dict)
    points = spec["points"]
    assert [p["concurrency"] for p in points] == [1, 3]
    assert "partial" not in spec and spec["engineVersion"] == "0.0-test"
    for p in points:
        assert p["requests"] > 0 and p["errors"] == 0
        assert p["outputTokens"] == 8 and p["promptTokens"] > 0
        assert p["ttftP50Ms"] <= p["ttftP90Ms"] <= p["ttftP99Ms"]
        assert p["itlP50Ms"] <= p["itlP90Ms"] <= p["itlP99Ms"]
    # Three requests in flight serve more than one does.
    assert points[1]["requestsPerSecond"] > points[0]["requestsPerSecond"]
    page = plot.read_text()
    assert page.count("<svg") == 2 and "TTFT vs load" in page and "<polyline" in page


def test_5xx_mid_sweep_gives_a_partial_profile_with_the_reason(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Two probe requests, then ~healthy first level; every request after the 60th is a 503.
    with ps.serve(ps.Behaviour(token_delay_s=0.004, fail_after=60)) as url:
        code, body = _run(url, tmp_path, "--concurrency", "1,4,8", "--duration", "1.5")
    assert code == profile_cmd.EXIT_PARTIAL and body is not None
    line = _one_line_error(capsys)
    assert "partial profile" in line and "HTTP 503" in line
    _assert_valid(body)
    spec = body["spec"]
    assert spec["partial"] is True and "HTTP 503" in spec["partialReason"]
    assert 1 <= len(spec["points"]) < 3


def test_server_dying_mid_run_gives_a_partial_profile(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with ps.serve(ps.Behaviour(token_delay_s=0.004, die_after=40)) as url:
        code, body = _run(url, tmp_path, "--concurrency", "1,2,4", "--duration", "1.5")
    assert code == profile_cmd.EXIT_PARTIAL and body is not None
    line = _one_line_error(capsys)
    assert "partial profile" in line and ("connect" in line or "closed" in line)
    _assert_valid(body)
    assert body["spec"]["partial"] is True


def test_timeout_is_a_clear_error_not_a_hang(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with ps.serve(ps.Behaviour(stall_s=2.0)) as url:
        code, body = _run(url, tmp_path, "--concurrency", "1", "--duration", "1", "--timeout", "0.5")
    assert code == profile_cmd.EXIT_USAGE and body is None
    assert "timed out after 0.5 s" in _one_line_error(capsys)


@pytest.mark.parametrize(
    ("behaviour", "message"),
    [
        (ps.Behaviour(malformed=True), "malformed stream chunk"),
        (ps.Behaviour(no_models=True), "not an OpenAI-compatible server"),
    ],
)
def test_malformed_endpoints_are_one_line_errors(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str], behaviour: ps.Behaviour, message: str
) -> None:
    with ps.serve(behaviour) as url:
        code, body = _run(url, tmp_path, "--concurrency", "1", "--duration", "1")
    assert code == profile_cmd.EXIT_USAGE and body is None
    assert message in _one_line_error(capsys)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--url", "localhost:8000"], "must start with http"),
        (["--url", "http://127.0.0.1:1"], "cannot connect"),
        (["--url", "http://127.0.0.1:99999"], "port"),
        (["--url", "http://x", "--concurrency", "4,2"], "levels must increase"),
        (["--url", "http://x", "--rate", "1,-2"], "--rate"),
        (["--url", "http://x", "--output-tokens", "1"], "--output-tokens"),
        (["--url", "http://x", "--trace", "/nonexistent/trace.csv"], "--trace"),
        (["--url", "http://x", "--prompt-tokens", "100", "--prompt-tokens-p99", "50"], "--prompt-tokens-p99"),
    ],
)
def test_bad_options_are_one_line_errors(
    capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    base = ["profile", "--accelerator", "h100", "--quiet", "--duration", "1", "--timeout", "2"]
    assert cli.main([*base, *args]) == profile_cmd.EXIT_USAGE
    assert message in _one_line_error(capsys)


def test_poisson_rate_points_record_the_offered_rate(tmp_path: pathlib.Path) -> None:
    with ps.serve(ps.Behaviour(token_delay_s=0.002)) as url:
        code, body = _run(url, tmp_path, "--rate", "5,20", "--duration", "2")
    assert code == 0 and body is not None
    _assert_valid(body)
    points = body["spec"]["points"]
    assert [p["offeredRequestsPerSecond"] for p in points] == [5.0, 20.0]
    # Achieved rates follow the offered ones (Poisson noise over 2 s: within a factor of two).
    for p in points:
        assert 0.5 < p["requestsPerSecond"] / p["offeredRequestsPerSecond"] < 2.0


def test_slo_stop_ends_the_sweep_normally(tmp_path: pathlib.Path) -> None:
    # 8 tokens at >= 20 ms each: ITL p99 far above 1 ms, so the sweep stops after its first level.
    with ps.serve(ps.Behaviour(token_delay_s=0.02)) as url:
        code, body = _run(url, tmp_path, "--concurrency", "1,2,4", "--duration", "1", "--itl-p99-ms", "1")
    assert code == 0 and body is not None
    assert len(body["spec"]["points"]) == 1
    assert "stopped: ITL p99" in body["spec"]["source"]["description"]


def test_trace_files_azure_and_mooncake() -> None:
    azure = sizes.from_trace(DATA / "azure_conv_head20.csv")
    mooncake = sizes.from_trace(DATA / "mooncake_head10.jsonl")
    assert len(azure.trace) == 20 and len(mooncake.trace) == 10
    assert mooncake.trace[0] == sizes.RequestSize(6758, 500)
    import random

    clipped = sizes.scaled(mooncake, 512)
    rng = random.Random(0)
    for _ in range(20):
        size = clipped.sample(rng)
        assert size.prompt_tokens + size.output_tokens <= 512


def test_trace_with_wrong_columns_names_them(tmp_path: pathlib.Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b\n1,2\n")
    with pytest.raises(sizes.SizeError, match="ContextTokens and GeneratedTokens"):
        sizes.from_trace(bad)
    worse = tmp_path / "bad.jsonl"
    worse.write_text('{"input_length": 5, "output_length": "x"}\n')
    with pytest.raises(sizes.SizeError, match=r"bad.jsonl:1: token counts must be integers"):
        sizes.from_trace(worse)


def test_lognormal_sizes_match_mean_and_p99() -> None:
    import random

    import numpy as np

    source = sizes.distribution(200, 50, 800, 150)
    rng = random.Random(1)
    draws = [source.sample(rng) for _ in range(20000)]
    prompts = np.array([d.prompt_tokens for d in draws])
    assert prompts.mean() == pytest.approx(200, rel=0.05)
    assert np.percentile(prompts, 99) == pytest.approx(800, rel=0.1)


def test_model_outside_the_catalog_is_written_but_named_invalid(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "p.yaml"
    with ps.serve(ps.Behaviour()) as url:
        code = cli.main(
            [
                "profile",
                "--url",
                url,
                "--accelerator",
                "h100",
                "--quiet",
                "--warmup",
                "0",
                "--duration",
                "0.5",
                "--concurrency",
                "1",
                "--output-tokens",
                "4",
                "-o",
                str(out),
            ]
        )
    assert code == profile_cmd.EXIT_USAGE
    assert "spec.model" in _one_line_error(capsys)
    assert yaml.safe_load(out.read_text())["spec"]["points"]
