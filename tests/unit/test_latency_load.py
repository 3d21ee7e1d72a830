"""Latency under load: the serving path's fixed cost, means beside percentiles, and their shape with load."""

from __future__ import annotations

import math

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


# --- the prompt's own iterations ---------------------------------------------------------------------------

SHORT = perf.RequestSizes(64, 400)


def test_a_short_prompt_still_waits_for_a_whole_iteration_of_the_running_batch() -> None:
    """The iteration that carries a 64-token prompt also decodes every running sequence and reads every
    weight: TTFT beyond the serving path and the iteration in flight is at least one such iteration, not the
    prompt's token share of a full-budget iteration (which a 64-token prompt in an 8192-token budget would
    make a small fraction of it)."""
    for rate in (8.0, 20.0, 40.0):
        answer = perf.latency_at_rate(CONFIG, SHORT, rate)
        assert answer is not None and answer.batch > 10
        own_ms = answer.ttft_p50_ms - 1e3 * perf.SERVING_PATH_FIXED_S - answer.step_ms / 2.0
        decode_only = perf._decode_step(perf._physics(CONFIG, None), answer.batch, SHORT, 0.0, 0.0) * 1e3
        assert own_ms >= decode_only


# --- a closed loop (concurrency) ---------------------------------------------------------------------------


def test_a_closed_loop_saturates_at_the_slot_limit_and_then_only_queues() -> None:
    """Past the engine's slots (KV capacity here) more users add only queueing: throughput and ITL stay
    at the full batch, and TTFT grows by one request's slot turnover per extra user (linear, no blow-up)."""
    slots = perf.max_batch(CONFIG, SIZES.prompt_tokens, SIZES.output_tokens)
    below = [perf.latency_at_concurrency(CONFIG, SIZES, c) for c in (1, 8, 64, slots // 2)]
    above = [perf.latency_at_concurrency(CONFIG, SIZES, c) for c in (2 * slots, 3 * slots, 4 * slots)]
    assert all(a is not None for a in below + above)
    rates = [a.rate_rps for a in below if a is not None]
    assert rates == sorted(rates) and rates[-1] > 10 * rates[0]
    full = [a for a in above if a is not None]
    assert full[0].batch == pytest.approx(full[-1].batch) and full[0].batch <= slots
    assert full[-1].rate_rps == pytest.approx(full[0].rate_rps, rel=1e-6)
    assert full[-1].itl_mean_ms == pytest.approx(full[0].itl_mean_ms, rel=1e-6)
    step_1 = full[1].ttft_mean_ms - full[0].ttft_mean_ms
    step_2 = full[2].ttft_mean_ms - full[1].ttft_mean_ms
    assert step_1 > 0 and step_2 == pytest.approx(step_1, rel=1e-6)
    # One more user waits one departure: slots users per (throughput)^-1 ... i.e. slots / rate seconds.
    assert step_1 / 1e3 == pytest.approx(slots / full[0].rate_rps, rel=0.01)
    # The closed loop's throughput at full slots is the offline throughput at the same sizes (both run
    # every slot); small differences come from the serving path and the prompt's spread.
    offline = perf.offline_throughput(CONFIG, SIZES.prompt_tokens, SIZES.output_tokens).requests_per_s
    assert full[0].rate_rps == pytest.approx(offline, rel=0.1)


def test_a_closed_loop_of_one_user_is_a_lone_request() -> None:
    one = perf.latency_at_concurrency(CONFIG, SIZES, 1)
    alone = load(1e-6)
    assert one is not None
    assert one.ttft_p50_ms == pytest.approx(alone.ttft_p50_ms, rel=0.05)
    assert one.itl_p50_ms == pytest.approx(alone.itl_p50_ms, rel=0.05)


# --- a finite run at any rate ------------------------------------------------------------------------------


def test_a_finite_run_past_capacity_queues_instead_of_diverging() -> None:
    capacity = perf.latency_at_concurrency(CONFIG, SIZES, 10_000).rate_rps  # type: ignore[union-attr]
    runs = {
        f: perf.latency_over_run(CONFIG, SIZES, f * capacity, 60.0, warmup_s=5.0) for f in (1.2, 1.5, 2.0)
    }
    assert perf.latency_at_rate(CONFIG, SIZES, 1.2 * capacity) is None  # no steady state there
    ttft = [runs[f].ttft_mean_ms for f in (1.2, 1.5, 2.0)]  # type: ignore[union-attr]
    assert all(math.isfinite(t) for t in ttft) and ttft == sorted(ttft)
    # The queue grows at λ - μ: the extra wait is linear in the excess rate.
    assert (ttft[2] - ttft[1]) / (ttft[1] - ttft[0]) == pytest.approx((2.0 - 1.5) / (1.5 - 1.2), rel=0.05)
    # Served at capacity with every slot busy: ITL is the full batch's, whatever the excess.
    assert runs[2.0].rate_rps == pytest.approx(capacity)  # type: ignore[union-attr]
    assert runs[2.0].itl_mean_ms == pytest.approx(runs[1.2].itl_mean_ms)  # type: ignore[union-attr]
    # A longer run measures a longer queue.
    longer = perf.latency_over_run(CONFIG, SIZES, 1.5 * capacity, 120.0, warmup_s=5.0)
    assert longer is not None and longer.ttft_mean_ms > runs[1.5].ttft_mean_ms  # type: ignore[union-attr]


def test_a_long_run_below_capacity_is_the_steady_state_and_near_capacity_is_bounded_by_the_run() -> None:
    capacity = perf.latency_at_concurrency(CONFIG, SIZES, 10_000).rate_rps  # type: ignore[union-attr]
    steady = load(0.5 * capacity)
    run = perf.latency_over_run(CONFIG, SIZES, 0.5 * capacity, 600.0)
    assert run is not None and run.ttft_mean_ms == pytest.approx(steady.ttft_mean_ms)
    assert run.itl_mean_ms == pytest.approx(steady.itl_mean_ms)
    # TTFT rises with the rate through capacity without a jump to infinity.
    means = [
        perf.latency_over_run(CONFIG, SIZES, f * capacity, 30.0).ttft_mean_ms  # type: ignore[union-attr]
        for f in (0.5, 0.8, 0.95, 1.0, 1.05, 1.5)
    ]
    assert means == sorted(means) and all(math.isfinite(m) for m in means)


def test_finite_run_inputs_are_checked() -> None:
    with pytest.raises(perf.InvalidConfigError, match="duration_s"):
        perf.latency_over_run(CONFIG, SIZES, 1.0, 0.0)
    with pytest.raises(perf.InvalidConfigError, match="rate"):
        perf.latency_over_run(CONFIG, SIZES, -1.0, 10.0)
    with pytest.raises(perf.InvalidConfigError, match="concurrency"):
        perf.latency_at_concurrency(CONFIG, SIZES, 0)


def test_mlperf_tpot_p99_is_above_the_mean_iteration_and_rises_with_load() -> None:
    answers = [load(r) for r in (1.0, 10.0, 20.0, 30.0)]
    for a in answers:
        # A request's mean gap varies with the batch and the prompts its iterations carried.
        assert a.tpot_p99_ms > a.step_ms
    tpots = [a.tpot_p99_ms for a in answers]
    assert tpots == sorted(tpots) and tpots[-1] > tpots[0]


def test_tpot_p99_averages_out_over_longer_outputs() -> None:
    """More iterations per request average more of the batch and prompt fluctuations away."""
    spreads = []
    for output in (50, 200, 800):
        sizes = perf.RequestSizes(1000, output, prompt_tokens_p99=3000)
        a = perf.latency_at_rate(CONFIG, sizes, 1000.0 / output)
        assert a is not None
        spreads.append(a.tpot_p99_ms / a.step_ms - 1.0)
    assert spreads == sorted(spreads, reverse=True) and spreads[-1] < 0.5 * spreads[0]


def test_a_decode_replica_s_tpot_p99_counts_the_batch_fluctuation() -> None:
    config = perf.ReplicaConfig("llama-3.1-8b", "h100", "fp8", 1, "decode", engine="vllm")
    a = perf.latency_at_rate(config, SIZES, 20.0)
    assert a is not None
    assert a.step_ms < a.tpot_p99_ms < a.itl_p99_ms


def test_a_tpot_limit_binds_on_the_tpot_p99_not_on_the_mean_iteration() -> None:
    """MLPerf's TPOT limit (itl_is_tpot): at the answer the TPOT p99 sits at the limit, the mean below it."""
    limit_ms = 1.25 * load(1e-3).step_ms
    slo = perf.LatencySlo(1e6, limit_ms)
    answer = perf.max_rate_under_slo(
        CONFIG, 1000, 200, slo, prompt_tokens_p99=3000, output_tokens_p99=600, itl_is_tpot=True
    )
    assert answer.reason == "itl_p99 binds"
    at = load(answer.max_rps)
    assert at.tpot_p99_ms <= limit_ms * (1 + 1e-3)
    assert at.tpot_p99_ms == pytest.approx(limit_ms, rel=0.01)
    assert at.step_ms < 0.99 * limit_ms
    # Reading the limit as the mean iteration would have admitted a higher rate.
    above = load(answer.max_rps * 1.02)
    assert above.tpot_p99_ms > limit_ms


def test_near_capacity_a_short_run_has_not_filled_the_batch_that_a_long_run_reaches() -> None:
    """From idle the batch relaxes to its steady state slowly near saturation (time constant: the holding
    time over 1 - B t'/t): a run of a few seconds measures a smaller batch and ITL than the steady state; a
    long run the steady state itself; at half load a short run after a warm-up of a few holding times has
    filled."""
    capacity = perf.latency_at_concurrency(CONFIG, SIZES, 10_000).rate_rps  # type: ignore[union-attr]
    rate = 0.97 * capacity
    steady = load(rate)
    short = perf.latency_over_run(CONFIG, SIZES, rate, 5.0, warmup_s=30.0)
    long = perf.latency_over_run(CONFIG, SIZES, rate, 3000.0, warmup_s=1000.0)
    assert short is not None and long is not None
    assert short.batch < 0.9 * steady.batch and short.itl_mean_ms < steady.itl_mean_ms
    assert long.batch == pytest.approx(steady.batch) and long.itl_mean_ms == pytest.approx(steady.itl_mean_ms)
    half = perf.latency_over_run(CONFIG, SIZES, 0.5 * capacity, 5.0, warmup_s=30.0)
    assert half is not None and half.itl_mean_ms == pytest.approx(load(0.5 * capacity).itl_mean_ms)
