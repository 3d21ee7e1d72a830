"""placement.autoscale: sizing through the solver, stabilization, holds, scale to zero, correction."""

from __future__ import annotations

import itertools
import math
from dataclasses import replace

import pytest

from placement import autoscale
from placement.solver import inputs

SVC = "ns/chat"
# Two pools of one chip at different prices: the cheap one holds two replicas.
CHEAP = inputs.Pool("cheap", "h100", devices_per_node=2, nodes=1, price_per_device_hour=1.0)
DEAR = inputs.Pool("dear", "h100", devices_per_node=8, nodes=1, price_per_device_hour=3.0)
RPS_PER_REPLICA = 10.0


def _problem(spec_rps: float = 10.0, min_replicas: int = 0) -> inputs.FleetProblem:
    cands = tuple(
        inputs.Candidate(
            SVC, "aggregated", p.id, p.accelerator, "fp8", 1, (RPS_PER_REPLICA,), p.price_per_device_hour
        )
        for p in (CHEAP, DEAR)
    )
    demand = inputs.ServiceDemand(SVC, (spec_rps,), min_replicas=min_replicas)
    return inputs.FleetProblem((demand,), (CHEAP, DEAR), cands)


def _key(pool: inputs.Pool) -> inputs.CandidateKey:
    return inputs.CandidateKey(SVC, "aggregated", pool.id, "fp8", 1)


TRAITS = {SVC: autoscale.ServiceTraits(ttft_p99_ms=1000.0, itl_p99_ms=50.0)}
# No forecast trend or headroom: the sized rate is the observed one, so the tests can read replicas off.
FLAT = autoscale.Policy(headroom=0.0, trend_beta=1e-9, peak_window_s=0.0, burst_z=0.0)


def _obs(rps: float | None, **kw: float) -> dict[str, autoscale.Observation]:
    return {SVC: autoscale.Observation(requests_per_second=rps, **kw)}


def _run(
    rates: list[float | None],
    *,
    policy: autoscale.Policy = FLAT,
    start: dict[inputs.CandidateKey, int] | None = None,
    problem: inputs.FleetProblem | None = None,
    traits: dict[str, autoscale.ServiceTraits] | None = None,
) -> list[autoscale.Decision]:
    """Decisions every interval, each applied at once (replicas ready immediately)."""
    problem = problem or _problem()
    current = dict(start if start is not None else {_key(CHEAP): 1})
    state = autoscale.State()
    out = []
    for i, rps in enumerate(rates):
        d = autoscale.decide(
            problem, traits or TRAITS, state, _obs(rps), current, i * policy.interval_s, policy
        )
        state = d.state
        current = dict(d.targets)
        out.append(d)
    return out


def test_scale_up_fills_the_cheapest_pool_then_spills_to_the_next():
    last = _run([15.0])[-1]
    assert last.targets == {_key(CHEAP): 2}
    last = _run([45.0])[-1]
    # Cheap pool full at 2 replicas: the other 3 go to the dearer pool.
    assert last.targets == {_key(CHEAP): 2, _key(DEAR): 3}
    assert last.services[0].direction == "up"
    assert last.services[0].price_per_hour == pytest.approx(2 * 1.0 + 3 * 3.0)


def test_scale_down_removes_the_most_expensive_replicas_first_after_the_window():
    rates = [45.0] + [12.0] * 20
    decisions = _run(rates)
    # Inside the reversal window of the increase nothing goes down.
    window_steps = int(FLAT.reversal_window_s / FLAT.interval_s)
    for d in decisions[1:window_steps]:
        assert sum(d.targets.values()) == 5, d.services[0].reason
    final = decisions[-1].targets
    assert final == {_key(CHEAP): 2}


def test_no_scale_direction_reversal_inside_the_window():
    rates = [10.0, 30.0, 5.0, 5.0, 40.0, 5.0, 5.0, 5.0, 5.0, 5.0, 5.0, 5.0, 5.0, 5.0, 5.0]
    decisions = _run(rates)
    # Per configuration: no decrease within the window of that configuration's increase.
    grown: dict[inputs.CandidateKey, float] = {}
    before: dict[inputs.CandidateKey, int] = {_key(CHEAP): 1}
    for d in decisions:
        for k in set(before) | set(d.targets):
            if d.targets.get(k, 0) > before.get(k, 0):
                grown[k] = d.time_s
            elif d.targets.get(k, 0) < before.get(k, 0):
                assert d.time_s - grown.get(k, -math.inf) >= FLAT.reversal_window_s
        before = dict(d.targets)
    last_up = -math.inf
    for d in decisions:
        direction = d.services[0].direction
        if direction == "down":
            assert d.time_s - last_up >= FLAT.reversal_window_s
        if direction in ("up", "move"):
            last_up = d.time_s


def test_missing_metrics_hold_the_last_decision_and_never_scale_to_zero():
    decisions = _run([25.0, None, None, None])
    for d in decisions[1:]:
        assert d.targets == decisions[0].targets
        assert d.services[0].held
        assert "metrics missing" in d.services[0].reason


def test_zero_traffic_keeps_one_replica_unless_opted_in():
    policy = autoscale.Policy(headroom=0.0, idle_to_zero_s=120.0)
    rates = [0.0] * 30
    kept = _run(rates, policy=policy)[-1]
    assert sum(kept.targets.values()) == 1
    opted = {SVC: autoscale.ServiceTraits(1000.0, 50.0, scale_to_zero=True)}
    gone = _run(rates, policy=policy, traits=opted)
    assert gone[-1].targets == {}
    first_zero = next(d for d in gone if not d.targets)
    assert first_zero.time_s >= policy.idle_to_zero_s
    # And back from zero on the first request.
    back = _run([0.0] * 30 + [3.0], policy=policy, traits=opted)[-1]
    assert sum(back.targets.values()) == 1


def test_an_opted_in_service_at_zero_without_demand_stays_at_zero():
    """Found by the e2e test: a scale-to-zero service starting at zero was woken by the replica floor and
    kept a replica for one idle period though nothing asked for it."""
    policy = autoscale.Policy(headroom=0.0, idle_to_zero_s=120.0)
    opted = {SVC: autoscale.ServiceTraits(1000.0, 50.0, scale_to_zero=True)}
    stays = _run([0.0] * 5, policy=policy, traits=opted, start={}, problem=_problem(spec_rps=0.0))
    assert all(d.targets == {} for d in stays)
    assert all(d.services[0].direction == "hold" for d in stays)
    # The first request (the activator counts it) brings it up at once.
    back = _run([0.0, 0.0, 0.5], policy=policy, traits=opted, start={}, problem=_problem(spec_rps=0.0))
    assert back[1].targets == {} and sum(back[2].targets.values()) == 1


def test_a_request_held_at_zero_wakes_the_service_before_any_rate_shows():
    """Found by the e2e test with the shared activator: its counter for a service is born at the first
    request, so rate() shows no increase for it; the held request (waiting) is the demand."""
    policy = autoscale.Policy(headroom=0.0, idle_to_zero_s=120.0)
    opted = {SVC: autoscale.ServiceTraits(1000.0, 50.0, scale_to_zero=True)}
    problem = _problem(spec_rps=0.0)
    state, current = autoscale.State(), {}
    for i, waiting in enumerate([0.0, 0.0, 1.0]):
        obs = {SVC: autoscale.Observation(requests_per_second=0.0, waiting=waiting)}
        d = autoscale.decide(problem, opted, state, obs, current, i * policy.interval_s, policy)
        state, current = d.state, dict(d.targets)
        assert sum(current.values()) == (1 if waiting else 0), (i, d.services[0].reason)
    assert d.services[0].direction == "up"


def test_within_tolerance_nothing_changes():
    decisions = _run([20.0] + [19.0] * 20)
    assert all(d.targets == {_key(CHEAP): 2} for d in decisions)


def test_correction_drops_on_slo_misses_at_model_load_and_is_bounded():
    policy = autoscale.Policy(correction_settle_s=0.0, correction_min=0.7)
    state = autoscale.ServiceState(correction=1.0)
    obs = autoscale.Observation(requests_per_second=8.0, ttft_p99_ms=3000.0, itl_p99_ms=10.0)
    factors = []
    for _ in range(30):
        state = autoscale.correct(state, obs, TRAITS[SVC], model_utilization=0.8, policy=policy)
        factors.append(state.correction)
    assert factors[0] < 1.0
    assert all(b <= a for a, b in itertools.pairwise(factors))
    assert factors[-1] == pytest.approx(0.7)
    # At low load an SLO miss says nothing about capacity.
    idle = autoscale.correct(autoscale.ServiceState(), obs, TRAITS[SVC], 0.1, policy)
    assert idle.correction == 1.0


def test_the_sized_rate_holds_the_highest_of_the_scale_down_window():
    policy = autoscale.Policy(headroom=0.0, trend_beta=1e-9, peak_window_s=0.0, burst_z=0.0)
    decisions = _run([40.0] + [10.0] * 4, policy=policy)
    assert decisions[-1].services[0].sizing_rps == pytest.approx(40.0)


def test_policy_errors_name_the_field():
    with pytest.raises(autoscale.AutoscaleError, match=r"policy\.headroom"):
        autoscale.Policy(headroom=-1.0)
    with pytest.raises(autoscale.AutoscaleError, match=r"policy\.level_alpha"):
        autoscale.Policy(level_alpha=0.0)


def test_holt_forecast_follows_a_ramp():
    policy = autoscale.Policy()
    state = autoscale.ServiceState()
    for i in range(20):
        state = autoscale.observe(state, autoscale.Observation(requests_per_second=2.0 * i), 30.0 * i, policy)
    assert state.trend_rps_per_s > 0.0
    assert autoscale.forecast(state, 120.0) > state.level_rps


def test_bucket_share_from_histograms_is_the_product_of_the_marginals():
    # prompt: half <= 100, half in (100, 1000]; output: all <= 50.
    prompt = ([100.0, 1000.0, math.inf], [5.0, 10.0, 10.0])
    output = ([50.0, math.inf], [4.0, 4.0])
    buckets = [(0, 100, 0, 50), (100, 1000, 0, 50), (0, 100, 50, 500), (100, 1000, 50, 500)]
    share = autoscale.bucket_share(buckets, prompt, output)
    assert share == pytest.approx((0.5, 0.5, 0.0, 0.0))
    assert autoscale.bucket_share(buckets, ([], []), output) is None


def test_cdf_interpolates_within_a_histogram_bucket():
    assert autoscale.cdf_at([10.0, 20.0, math.inf], [0.0, 10.0, 10.0], 15.0) == pytest.approx(0.5)
    assert autoscale.cdf_at([10.0, 20.0, math.inf], [0.0, 10.0, 10.0], 25.0) == pytest.approx(1.0)


def test_the_burst_margin_follows_the_observed_variability_not_a_fixed_factor():
    policy = autoscale.Policy(trend_beta=1e-9, peak_window_s=0.0, burst_z=2.0)
    steady = _run([20.0] * 20, policy=policy)[-1].services[0]
    noisy = _run([14.0, 26.0] * 10, policy=policy)[-1].services[0]
    # Same mean rate: the steady stream is sized at its rate, the noisy one well above its mean.
    assert steady.sizing_rps == pytest.approx(20.0, rel=0.01)
    assert noisy.sizing_rps > 26.0
    # Demand below the forecast is no risk: a falling rate adds no margin.
    falling = _run([40.0 - i for i in range(20)], policy=policy)[-1].state.services[SVC]
    assert autoscale.burst_margin_rps(falling, policy) == 0.0


def test_no_configuration_grows_again_within_the_window_of_its_decrease():
    # Three pools: cheap (2 replicas), mid, dear. A burst lands on cheap + mid; the rate falls and the
    # dearer replicas go; a new burst inside the window must not grow a configuration that just shrank
    # (up after down) when another can take it, and the capacity must still cover the burst.
    mid = inputs.Pool("mid", "h100", devices_per_node=8, nodes=1, price_per_device_hour=2.0)
    pools = (CHEAP, mid, DEAR)
    cands = tuple(
        inputs.Candidate(
            SVC, "aggregated", p.id, p.accelerator, "fp8", 1, (RPS_PER_REPLICA,), p.price_per_device_hour
        )
        for p in pools
    )
    problem = inputs.FleetProblem((inputs.ServiceDemand(SVC, (10.0,)),), pools, cands)
    rates = [45.0] * 2 + [12.0] * 14 + [35.0] * 4
    decisions = _run(
        rates,
        problem=problem,
        start={_key(CHEAP): 2, inputs.CandidateKey(SVC, "aggregated", "mid", "fp8", 1): 3},
    )
    shrank: dict[inputs.CandidateKey, float] = {}
    before = {_key(CHEAP): 2, inputs.CandidateKey(SVC, "aggregated", "mid", "fp8", 1): 3}
    reversals = 0
    for d in decisions:
        for k in set(before) | set(d.targets):
            if d.targets.get(k, 0) < before.get(k, 0):
                shrank[k] = d.time_s
            elif (
                d.targets.get(k, 0) > before.get(k, 0)
                and d.time_s - shrank.get(k, -math.inf) < FLAT.reversal_window_s
            ):
                reversals += 1
        before = dict(d.targets)
    assert shrank, "the fleet never scaled down: the scenario does not test anything"
    assert reversals == 0
    assert sum(decisions[-1].targets.values()) * RPS_PER_REPLICA >= 35.0


def test_an_on_demand_floor_keeps_a_share_off_the_spot_pool():
    spot = inputs.Pool("spot", "h100", devices_per_node=8, nodes=1, price_per_device_hour=1.0, spot=True)
    cands = tuple(
        inputs.Candidate(
            SVC, "aggregated", p.id, p.accelerator, "fp8", 1, (RPS_PER_REPLICA,), p.price_per_device_hour
        )
        for p in (spot, DEAR)
    )
    problem = inputs.FleetProblem((inputs.ServiceDemand(SVC, (10.0,)),), (spot, DEAR), cands)
    spot_key = inputs.CandidateKey(SVC, "aggregated", "spot", "fp8", 1)
    by_price = _run([40.0], problem=problem, start={spot_key: 1})[-1]
    # Spot only by price: all four replicas on the cheap spot pool.
    assert by_price.targets == {spot_key: 4}
    floored = _run([40.0], problem=problem, start={spot_key: 1}, policy=replace(FLAT, on_demand_floor=0.5))[
        -1
    ]
    on_demand = floored.targets.get(_key(DEAR), 0)
    # Half of 40 req/s must be routed to on-demand replicas: at least two of them.
    assert on_demand >= 2 and floored.targets.get(spot_key, 0) >= 1
    with pytest.raises(autoscale.AutoscaleError, match=r"policy\.on_demand_floor"):
        autoscale.Policy(on_demand_floor=1.5)


def test_growth_that_only_a_configuration_that_just_shrank_can_carry_is_not_blocked():
    # Two pools: after a down the dear configuration is inside its reversal window; when demand then
    # outgrows the cheap pool only the dear one can carry it, and holding would break the SLO for the
    # rest of the window (an up-after-down is the lesser evil here).
    start = {_key(CHEAP): 2, _key(DEAR): 3}
    rates = [45.0] * 2 + [12.0] * 14 + [35.0] * 2
    decisions = _run(rates, start=start)
    shrank_at = next(i for i, d in enumerate(decisions) if d.targets.get(_key(DEAR), 0) < 3)
    assert shrank_at < 16, "the dear replicas never went: the scenario does not test anything"
    last = decisions[-1]
    assert (last.time_s - decisions[shrank_at].time_s) < FLAT.reversal_window_s
    assert sum(last.targets.values()) * RPS_PER_REPLICA >= 35.0
