"""Calibration from measured profiles (placement.profile_fit): known answers, bounds, trust, mismatches.

Measurements from a real engine are fitted in tests/e2e/test_profile_engine.py; here the points are the
model's own latencies under known factors, so the fit must recover those factors.
"""

from __future__ import annotations

import dataclasses

import pytest

from placement import catalog, perf, perf_efficiency, profile_fit

TINY = catalog.ModelArch(
    id="tiny-llama",
    layers=4,
    hidden_size=256,
    heads=4,
    kv_heads=2,
    head_dim=64,
    intermediate_size=688,
    vocab_size=2048,
    max_context_tokens=4096,
)
HOST = catalog.Accelerator(
    id="host-cpu",
    vendor="cpu",
    display_name="test host",
    memory_bytes=4 * catalog.GIB,
    mem_bandwidth_bytes_per_s=20e9,
    dense_flops_per_s={"bf16": 500e9, "fp16": 500e9},
    interconnect_bytes_per_s=20e9,
    precisions=("bf16", "fp16"),
    resource_name="cpu",
    resource_units_per_device=1,
    product_label_key="kubernetes.io/arch",
    product_label="amd64",
    default_price_per_hour=0.0,
    price_source="test",
    max_tp=1,
    sources=("test",),
)
CONFIG = perf.ReplicaConfig(TINY, HOST, "bf16", 1, engine="vllm")
TRUTH = dataclasses.replace(
    perf_efficiency.CPU_VLLM_PRIOR, bandwidth=0.2, compute_16bit=0.03, step_overhead_s=0.025
)
TRUE_OVERHEAD_S = 0.015
RATES = ((1, 1.0), (2, 2.0), (4, 3.5), (8, 5.0), (16, 6.5))


def _points(
    prompt: float, output: float, rates: tuple[tuple[int, float], ...]
) -> tuple[profile_fit.LoadMeasurement, ...]:
    out = []
    for concurrency, rate in rates:
        load = perf.latency_at_rate(CONFIG, perf.RequestSizes(prompt, output), rate, efficiency=TRUTH)
        assert load is not None
        extra = TRUE_OVERHEAD_S * 1e3
        out.append(
            profile_fit.LoadMeasurement(
                concurrency,
                rate,
                prompt,
                output,
                load.ttft_p50_ms + extra,
                load.ttft_p99_ms + extra,
                load.itl_p50_ms,
                load.itl_p99_ms,
            )
        )
    return tuple(out)


RUN = profile_fit.MeasuredRun(CONFIG, _points(200, 64, RATES), "0.32.0", "model-generated")


def test_fit_recovers_the_factors_that_generated_the_points() -> None:
    cal = profile_fit.fit([RUN])
    # Bandwidth is barely identifiable for a 4-layer model (its 8 MB of weights stream in ~2 ms of a 25 ms
    # step): only the factors the points pin down are checked against the truth.
    assert 0.0 < cal.efficiency.bandwidth <= 1.0
    assert cal.efficiency.compute_16bit == pytest.approx(0.03, rel=0.1)
    assert cal.efficiency.step_overhead_s == pytest.approx(0.025, rel=0.1)
    assert cal.request_overhead_s == pytest.approx(TRUE_OVERHEAD_S, abs=0.004)
    assert cal.rms_log_error_after < 0.05 < cal.rms_log_error_before
    assert cal.engine_version == "0.32.0" and "host-cpu/vllm 0.32.0" in cal.source


def test_calibration_predicts_an_unmeasured_size_and_rate_better_than_the_prior() -> None:
    cal = profile_fit.fit([RUN])
    # 2.5 req/s of 480/120 tokens holds ~40 sequences; 3.0 req/s needed ~230, past vLLM's CPU backend's
    # 128 sequence slots (perf.VLLM_CPU_MAX_BATCH), which the model now applies to a CPU chip.
    held_out = profile_fit.MeasuredRun(CONFIG, _points(480, 120, ((6, 2.5),)), "0.32.0")
    before = profile_fit.rms_log_error([held_out], None)
    after = profile_fit.rms_log_error([held_out], cal.efficiency, cal.request_overhead_s)
    assert after < before / 5


def test_fitted_fractions_stay_within_their_physical_bounds() -> None:
    # Latencies far below anything the chip can do: the fit must stop at the roofline (fractions <= 1).
    fast = tuple(
        dataclasses.replace(p, ttft_p50_ms=0.01, ttft_p99_ms=0.02, itl_p50_ms=0.01, itl_p99_ms=0.02)
        for p in RUN.points
    )
    cal = profile_fit.fit([dataclasses.replace(RUN, points=fast)])
    for name in ("bandwidth", "compute_16bit"):
        assert 0.0 < getattr(cal.efficiency, name) <= 1.0
    assert cal.efficiency.step_overhead_s >= profile_fit.FIT_BOUNDS["step_overhead_s"][0]


def test_trust_is_explicit_about_the_measured_range() -> None:
    cal = profile_fit.fit([RUN])
    assert cal.trust("tiny-llama", 1, 200, 64, 4).level == "calibrated"
    near = cal.trust("tiny-llama", 1, 350, 64, 4)
    assert near.level == "calibrated-extrapolated" and "1.8x beyond" in near.note
    assert cal.trust("tiny-llama", 1, 200, 64, 100).level == "calibrated-transfer"
    assert cal.trust("llama-3.1-8b", 1, 200, 64, 4).level == "calibrated-transfer"


def test_request_overhead_is_taken_off_the_ttft_objective() -> None:
    cal = profile_fit.fit([RUN])
    slo = perf.LatencySlo(ttft_p99_ms=400, itl_p99_ms=200)
    rate = profile_fit.max_rate_under_slo(cal, CONFIG, 200, 64, slo, choose_prefill_chunk=False)
    assert rate.max_rps > 0 and rate.ttft_p99_ms <= 400 + 1e-6
    assert rate.source.startswith("calibrated:")
    too_tight = perf.LatencySlo(ttft_p99_ms=cal.request_overhead_s * 1e3 * 0.5, itl_p99_ms=200)
    zero = profile_fit.max_rate_under_slo(cal, CONFIG, 200, 64, too_tight)
    assert zero.max_rps == 0.0 and "overhead" in (zero.reason or "")


def test_runs_of_different_chips_or_versions_are_not_mixed() -> None:
    other = dataclasses.replace(RUN, engine_version="0.31.0")
    with pytest.raises(profile_fit.CalibrationError, match="engine versions"):
        profile_fit.fit([RUN, other])
    with pytest.raises(profile_fit.CalibrationError, match="at least two"):
        profile_fit.fit([dataclasses.replace(RUN, points=RUN.points[:1])])
    cal = profile_fit.fit([RUN])
    assert cal.applies_to("host-cpu", "vllm", "0.32.0") and cal.applies_to("host-cpu", "vllm", None)
    assert not cal.applies_to("host-cpu", "vllm", "0.31.0")
    assert not cal.applies_to("h100", "vllm", "0.32.0")


def test_a_concurrency_sweep_is_fitted_as_the_closed_loop_it_was() -> None:
    """Points of a concurrency sweep, generated by the closed-loop model under known factors (its users
    spend the request overhead outside the engine), are fitted back; read as open-loop points at their
    rates they would not be (the overhead then never lengthens the loop)."""
    points = []
    for users in (1, 2, 4, 8, 16):
        load = perf.latency_at_concurrency(
            CONFIG, perf.RequestSizes(200, 64), users, efficiency=TRUTH, request_overhead_s=TRUE_OVERHEAD_S
        )
        assert load is not None
        points.append(
            profile_fit.LoadMeasurement(
                users,
                load.rate_rps,
                200,
                64,
                load.ttft_p50_ms,
                load.ttft_p99_ms,
                load.itl_p50_ms,
                load.itl_p99_ms,
                closed_loop=True,
            )
        )
    run = profile_fit.MeasuredRun(CONFIG, tuple(points), "0.32.0", "model-generated sweep")
    cal = profile_fit.fit([run])
    assert cal.efficiency.compute_16bit == pytest.approx(0.03, rel=0.1)
    assert cal.efficiency.step_overhead_s == pytest.approx(0.025, rel=0.1)
    assert cal.request_overhead_s == pytest.approx(TRUE_OVERHEAD_S, abs=0.004)
    assert cal.rms_log_error_after < 0.05 < cal.rms_log_error_before
