"""Latency under load: the serving path's fixed cost, means beside percentiles, and their shape with load."""

from __future__ import annotations

import pytest

from placement import perf

CONFIG = perf.ReplicaConfig("llama-3.1-8b", "h100", "fp8", 1, engine="vllm")
SIZES = perf.RequestSizes(1000, 200, prompt_tokens_p99=3000, output_tokens_p99=600)


def load(rate: float) -> perf.LoadPrediction:
    answer = perf.latency_at_rate(CONFIG, SIZES, rate)
    assert answer is not None
    return answer


def test_a_lone_request_pays_the_serving_path_on_top_of_its_prefill() -> None:
    alone = load(1e-6)
    assert alone.ttft_p50_ms >= 1e3 * perf.SERVING_PATH_FIXED_S + alone.step_ms / 2.0
    assert alone.ttft_mean_ms == pytest.approx(alone.ttft_p50_ms, rel=1e-6)


def test_means_sit_between_the_median_and_the_tail_and_rise_with_load() -> None:
    rates = [1.0, 10.0, 20.0, 30.0]
    answers = [load(r) for r in rates]
    for a in answers:
        assert a.ttft_p50_ms <= a.ttft_mean_ms <= a.ttft_p99_ms
        # The mean gap counts the rare iterations a prompt's prefill stretches, which the p99 may skip when
        # fewer than 1% of iterations carry one: it is at least the median, not necessarily below the p99.
        assert 0.0 < a.itl_p50_ms <= a.itl_mean_ms
    ttft_means = [a.ttft_mean_ms for a in answers]
    itl_means = [a.itl_mean_ms for a in answers]
    assert ttft_means == sorted(ttft_means) and ttft_means[-1] > ttft_means[0]
    assert itl_means == sorted(itl_means) and itl_means[-1] > itl_means[0]


def test_prefill_replicas_pay_the_serving_path_too() -> None:
    prefill = perf.latency_at_rate(
        perf.ReplicaConfig("llama-3.1-8b", "h100", "fp8", 1, "prefill"), SIZES, 1.0
    )
    assert prefill is not None and prefill.ttft_p50_ms >= 1e3 * perf.SERVING_PATH_FIXED_S
    assert prefill.ttft_mean_ms >= prefill.ttft_p50_ms * 0.5
