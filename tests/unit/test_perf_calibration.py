"""Calibration data loading and the calibrated model's accuracy on held-out measurements."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from placement import calibration, catalog, perf, perf_efficiency


def test_trtllm_grid_is_per_device_at_the_published_tp() -> None:
    points = calibration.trtllm_points()
    assert len(points) == 206
    row = next(
        p
        for p in points
        if (p.model.id, p.accelerator, p.tp_choices, p.prompt_tokens, p.output_tokens)
        == ("llama-3.1-70b", "a100-80gb", (4,), 128, 128)
    )
    # 2733.48 tokens/s for the 4-GPU replica.
    assert row.measured_tokens_per_s_per_device == pytest.approx(2733.48 / 4)
    assert row.precision == "fp16" and row.engine == "trtllm"


def test_mlperf_rows_use_fp8_hint_per_accelerator_values_and_skip_other_products() -> None:
    points = calibration.mlperf_points(("Offline", "Server"))
    assert {p.accelerator for p in points} == {"h100", "h200", "l40s", "mi300x"}
    juniper = [p for p in points if "x32" in p.dataset and p.scenario == "offline"]
    # 8 per node x 4 nodes: tokens_per_s_per_accel already divides by 32; tp stays within a node.
    assert juniper and juniper[0].measured_tokens_per_s_per_device == pytest.approx(2585.93)
    assert max(juniper[0].tp_choices) == 8
    nvidia = [p for p in points if p.engine == "trtllm"]
    assert nvidia and all(p.precision == "fp8" for p in nvidia)
    assert not any("MaxQ" in p.dataset or "GH200" in p.dataset for p in points)
    gptj = next(p for p in points if p.model.id == "gpt-j-6b")
    assert gptj.beam_width == 4 and gptj.output_tokens == 69


def test_held_out_h200_and_l40s_meet_the_accuracy_targets() -> None:
    # Never fitted on: the H200 and L40S columns of the TensorRT-LLM table.
    errors = np.abs(np.expm1(calibration.log_errors(calibration.trtllm_points(calibration.HELDOUT_CSV))))
    assert np.median(errors) <= 0.15
    assert np.percentile(errors, 90) <= 0.35


def test_fitting_recovers_a_known_bandwidth_factor() -> None:
    # Synthetic measurements made with bandwidth 0.6: the fit, started from the prior, finds it again.
    truth = dataclasses.replace(perf_efficiency.NVIDIA_TRTLLM_PRIOR, bandwidth=0.6)
    base = [
        p
        for p in calibration.trtllm_points()
        if p.model.id == "llama-3.1-8b" and p.accelerator == "a100-80gb"
    ]
    synthetic = [
        dataclasses.replace(p, measured_tokens_per_s_per_device=calibration.predict(p, truth)) for p in base
    ]
    result = calibration.fit_efficiency(synthetic, perf_efficiency.NVIDIA_TRTLLM_PRIOR, ("bandwidth",))
    assert result.efficiency.bandwidth == pytest.approx(0.6, abs=0.02)
    assert result.rms_log_error_after < result.rms_log_error_before


def test_inline_model_architectures_work_like_catalog_ones() -> None:
    inline = dataclasses.replace(catalog.get_model("llama-3.1-8b"), id="my-finetune", source="inline")
    by_arch = perf.max_rate_under_slo(
        perf.ReplicaConfig(inline, "l4", "fp8", 1), 500, 100, perf.LatencySlo(1000, 80)
    )
    by_id = perf.max_rate_under_slo(
        perf.ReplicaConfig("llama-3.1-8b", "l4", "fp8", 1), 500, 100, perf.LatencySlo(1000, 80)
    )
    assert by_arch.max_rps == pytest.approx(by_id.max_rps)
    assert calibration.GPTJ_6B.total_params == pytest.approx(6.05e9, rel=0.01)
