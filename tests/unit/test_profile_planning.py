"""Profiles in planning: shipped published-measurement profiles, and point profiles calibrating the plan."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import pathlib

import pytest
import yaml

from chipfit import cli, planning, validation
from chipfit.api import v1alpha1
from placement import catalog, perf, perf_efficiency, profile_fit, trust
from tests.unit.chipfit_builders import POOLS, SERVICES

REPO = pathlib.Path(__file__).resolve().parents[2]


def _generator():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location(
        "example_profiles", REPO / "benchmarks" / "example_profiles.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_shipped_profiles_are_the_generators_output_and_valid() -> None:
    generator = _generator()
    expected = generator.profiles()
    shipped = {p.name: p for p in (REPO / "examples" / "profiles").glob("*.yaml")}
    assert set(shipped) == set(expected), "run: .venv/bin/python benchmarks/example_profiles.py --write"
    for name, body in expected.items():
        assert shipped[name].read_text() == generator.render(body), f"{name} is stale"
        assert validation.crd_errors("PerformanceProfile", body) == []
        assert body["spec"]["source"]["url"].startswith(
            "https://github.com/mlcommons/inference_results_v4.1/"
        )
    # The MI300X table: 2520.27 tokens/s over a 291-token mean output.
    (mi300x,) = expected.values()
    assert mi300x["spec"]["bucketTable"]["maxRequestsPerSecond"] == [[round(2520.27 / 291, 4)]]


def _point_profile(efficiency: perf_efficiency.Efficiency) -> v1alpha1.PerformanceProfile:
    """A sweep of llama-3.1-8b on one H100 (fp8, vLLM): the model's own latencies under `efficiency`.

    A concurrency sweep is a closed loop (profile_fit reads a point without an offered rate as one), so the
    points are the closed loop's, at the throughput it reaches.
    """
    config = perf.ReplicaConfig("llama-3.1-8b", "h100", "fp8", 1, engine="vllm")
    points = []
    for concurrency in (1, 4, 16, 32):
        load = perf.latency_at_concurrency(
            config, perf.RequestSizes(1024, 256), concurrency, efficiency=efficiency
        )
        assert load is not None
        rate = load.rate_rps
        points.append(
            {
                "concurrency": concurrency,
                "promptTokens": 1024,
                "outputTokens": 256,
                "requestsPerSecond": rate,
                "outputTokensPerSecond": rate * 256,
                "ttftP50Ms": load.ttft_p50_ms,
                "ttftP99Ms": load.ttft_p99_ms,
                "itlP50Ms": load.itl_p50_ms,
                "itlP99Ms": load.itl_p99_ms,
            }
        )
    return v1alpha1.PerformanceProfile.model_validate(
        {
            "metadata": {"name": "llama-3.1-8b-h100-fp8-vllm"},
            "spec": {
                "model": "llama-3.1-8b",
                "accelerator": "h100",
                "precision": "fp8",
                "engine": "vllm",
                "source": {"description": "model latencies under a slower engine (test)"},
                "points": points,
            },
        }
    )


def test_a_point_profile_recalibrates_capacity_on_its_chip_and_says_so() -> None:
    service = SERVICES["chat-8b"]
    pools = [POOLS["h100-p5"], POOLS["l4-g6"]]
    nvidia_vllm = perf.efficiency_for(catalog.get_accelerator("h100"), "vllm")
    slower = dataclasses.replace(
        nvidia_vllm, bandwidth=nvidia_vllm.bandwidth * 0.6, compute_8bit=nvidia_vllm.compute_8bit * 0.6
    )
    before = planning.build_inputs([service], pools)
    after = planning.build_inputs([service], pools, [_point_profile(slower)])

    def capacity(cset: object, accelerator: str) -> dict[tuple[str, int], tuple[float, ...]]:
        return {
            (c.precision, c.tp): c.max_rps_per_bucket
            for c in cset.problem.candidates  # type: ignore[attr-defined]
            if c.accelerator == accelerator
        }

    h100_before, h100_after = capacity(before, "h100"), capacity(after, "h100")
    assert h100_before and h100_before.keys() == h100_after.keys()
    # A slower measured engine lowers every H100 configuration's capacity, other tp degrees included ...
    for key, caps in h100_after.items():
        assert sum(caps) < sum(h100_before[key]), key
    # ... and leaves the uncalibrated chip alone.
    assert capacity(after, "l4") == capacity(before, "l4")
    sources = {c.source for c in after.problem.candidates if c.accelerator == "h100"}
    assert all(s.startswith("calibrated from a profile (h100/vllm)") for s in sources), sources
    assert profile_fit.basis(next(iter(sources))).startswith("calibrated from a profile")
    assert profile_fit.basis("perf").startswith("predicted from specs")
    assert profile_fit.basis("profile PerformanceProfile x").startswith("measured")


def test_the_calibration_recovers_the_slower_engine() -> None:
    nvidia_vllm = perf.efficiency_for(catalog.get_accelerator("h100"), "vllm")
    slower = dataclasses.replace(nvidia_vllm, bandwidth=nvidia_vllm.bandwidth * 0.6)
    (cal,) = planning.to_calibrations([_point_profile(slower)])
    assert abs(cal.efficiency.bandwidth / slower.bandwidth - 1) < 0.15
    assert cal.rms_log_error_after < 0.1 < cal.rms_log_error_before


def test_profiles_of_chips_no_pool_can_name_are_left_out_of_planning() -> None:
    profile = _point_profile(perf.efficiency_for(catalog.get_accelerator("h100"), "vllm"))
    profile.spec.accelerator = "host-cpu"
    assert planning.to_calibrations([profile]) == []


def test_predict_with_a_profile_says_calibrated_and_changes_the_figures(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    nvidia_vllm = perf.efficiency_for(catalog.get_accelerator("h100"), "vllm")
    slower = dataclasses.replace(nvidia_vllm, bandwidth=nvidia_vllm.bandwidth * 0.6)
    path = tmp_path / "profile.yaml"
    path.write_text(yaml.safe_dump(_point_profile(slower).to_wire()))
    base = ["predict", "--model", "llama-3.1-8b", "--chip", "h100", "--precision", "fp8", "--tp", "1"]
    base += [
        "--isl",
        "1024",
        "--osl",
        "256",
        "--rps",
        "4",
        "--ttft-p99-ms",
        "500",
        "--itl-p99-ms",
        "40",
        "--json",
    ]
    assert cli.main(base) == 0
    plain = json.loads(capsys.readouterr().out)
    assert cli.main([*base, "--profile", str(path)]) == 0
    calibrated = json.loads(capsys.readouterr().out)
    assert plain["basis"].startswith("predicted from specs")
    assert calibrated["basis"].startswith("calibrated from a profile, inside its measured range")
    assert calibrated["output_tokens_per_s"] < plain["output_tokens_per_s"]
    assert calibrated["max_rps_under_slo"] < plain["max_rps_under_slo"]
    # The trust line follows the profile, not the specs-only model it replaced.
    assert calibrated["trust_level"] == "calibrated" and calibrated["in_calibrated_range"]
    assert calibrated["trust"] == "calibrated from a profile, inside its measured range"
    assert calibrated["trust"] != plain["trust"]


def test_a_profile_far_from_the_request_keeps_the_specs_trust_and_says_why() -> None:
    specs = trust.Trust("uncalibrated", True, (trust.UNCALIBRATED_NOTE,), 0.25)
    far = trust.from_profile("calibrated-transfer", "9.0x beyond the measured range", 0.05, specs)
    near = trust.from_profile(
        "calibrated-extrapolated", "calibrated from a profile, 1.5x beyond", 0.05, specs
    )
    inside = trust.from_profile("calibrated", "calibrated from a profile, inside", 0.05, specs)
    assert far.level == "uncalibrated" and far.typical_error == 0.25 and trust.UNCALIBRATED_NOTE in far.label
    assert inside.typical_error < near.typical_error and not near.in_range and inside.in_range


def test_predict_with_a_profile_of_another_chip_is_a_one_line_error(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "profile.yaml"
    path.write_text(
        yaml.safe_dump(_point_profile(perf.efficiency_for(catalog.get_accelerator("h100"), "vllm")).to_wire())
    )
    args = ["predict", "--model", "llama-3.1-8b", "--chip", "l4", "--isl", "512", "--osl", "128"]
    assert cli.main([*args, "--profile", str(path)]) == 2
    assert "no point profile of l4 with engine vllm" in capsys.readouterr().err
