"""Autoscaling decisions on live traffic: forecast demand, size it through the fleet solver, stabilize.

One pure function, `decide`, is what the operator's timer and the trace-replay simulator both call, so the
benchmark measures the code that runs. Each decision:

1. per service, updates a Holt (level + trend) forecast of the request rate from the observation, and
   sizes for the forecast one start-up time ahead (at least the level) plus a burst margin learnt from
   the forecast's own under-forecasts (burst_z deviations over the horizon), divided by the online
   capacity correction;
2. spreads that rate over the service's request-size buckets with the observed size mix;
3. solves the same fleet MILP the planner uses (placement.solve) over every candidate, from what runs:
   scale-up keeps what runs and adds on the cheapest pool with room that meets the SLO (a full pool
   spills to the next chip type), scale-down drops the replicas whose removal saves the most, and a
   layout from scratch (a move, made before break, its surge priced) is taken when it saves
   rebalance_min_saving, which is how load moves back to a pool that freed up; prefill and decode are
   separate roles of the same solve;
4. stabilizes per configuration: increases apply at once; a decrease applies only to the highest
   recommendation of the last `scale_down_window_s`, never within `reversal_window_s` of an increase of
   that configuration (nor an increase within it of a decrease: the configuration stays out of the
   solve), never while replicas of the service are still starting, and never by less than
   the tolerance (hysteresis). Missing metrics hold the last decision; nothing goes to zero unless the
   service opted in and saw no traffic for `idle_to_zero_s`.

The capacity model is the solver's: each candidate's SLO-bounded max req/s per bucket.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Literal

from placement.solver import allocation, inputs, solve

Direction = Literal["up", "down", "hold", "move"]

# Defaults, with where they come from. Kubernetes' HPA syncs every 15 s and KEDA polls every 30 s; 30 s
# leaves Prometheus' default 15 s scrape two samples per decision.
DEFAULT_INTERVAL_S = 30.0
# Pod start-up of a vLLM replica (node already up): image present, weights from a node-local cache, CUDA
# graph capture; 1-3 min in vLLM's and llm-d's own guides. The forecast looks this far ahead.
DEFAULT_STARTUP_S = 120.0
# HPA's default scale-down stabilization window (--horizontal-pod-autoscaler-downscale-stabilization).
DEFAULT_SCALE_DOWN_WINDOW_S = 300.0
# HPA's default tolerance: changes of capacity within 10% are ignored (hysteresis).
DEFAULT_TOLERANCE = 0.1


# Move penalty while a service may not shrink: far above any device price, so the solver keeps every
# running replica of it and only adds.
KEEP_PENALTY_PER_DEVICE_HOUR = 1e4


class AutoscaleError(ValueError):
    """Bad policy or observation; the message names the field."""


@dataclass(frozen=True)
class Policy:
    """Knobs of the autoscaler; the defaults are documented in docs/autoscaling.md."""

    interval_s: float = DEFAULT_INTERVAL_S
    startup_s: float = DEFAULT_STARTUP_S
    # Holt smoothing per decision: level and trend (a short horizon: bursts matter more than the day).
    level_alpha: float = 0.6
    trend_beta: float = 0.1
    # Size at least for the highest observed rate within this window (0: off; the burst margin below
    # replaces it).
    peak_window_s: float = 0.0
    # Burst margin: burst_z standard deviations of the forecast error over the horizon (one start-up
    # plus one interval), learnt online from the one-step under-forecasts (an exponential average of
    # squared errors, weight variability_alpha; demand below the forecast is no risk). burst_z was
    # tuned on the first 30 min of the traces only (benchmarks/REPORT_autoscaling.md).
    burst_z: float = 0.5
    variability_alpha: float = 0.1
    # Flat extra capacity over the sized rate (0: the burst margin sizes the headroom).
    headroom: float = 0.0
    scale_down_window_s: float = DEFAULT_SCALE_DOWN_WINDOW_S
    # No decrease of a configuration within this long of its last increase (no direction reversal).
    reversal_window_s: float = DEFAULT_SCALE_DOWN_WINDOW_S
    tolerance: float = DEFAULT_TOLERANCE
    # Opted-in services go to zero after this long without a request (KEDA's cooldownPeriod is 300 s).
    idle_to_zero_s: float = 600.0
    # Online capacity correction: bounds, step per decision, and the model utilization above which an
    # observation says something about capacity.
    correction_min: float = 0.5
    correction_max: float = 1.25
    correction_step: float = 0.05
    correction_min_utilization: float = 0.6
    # The fleet must have stood still this long (one Prometheus rate window plus a scrape) before an
    # observation feeds the correction.
    correction_settle_s: float = 90.0
    # Churn cost: $/h-equivalent per device removed from a running replica (inputs.SolveOptions).
    move_penalty_per_device_hour: float = 5.0
    # A rollout that overfills a pool pays this many times the pool's device price per device short (the
    # operator's planner uses 2: make-before-break needs room for both sets for a moment).
    surge_shortfall_price_factor: float = 2.0
    # A steady fleet is re-solved from scratch (churn cost included) after this long without a change;
    # that layout (a move, make before break), and the from-scratch layout on scale-up and scale-down, is
    # taken only when it saves at least this share of the $/h. On the tuning split, moves at 5% / 15%
    # saving cost 6.6 / 2.6 points of attainment for 11% / 7% less $ (REPORT_autoscaling.md): moves are
    # kept for large savings (a pool that frees up after a spill) only.
    rebalance_after_s: float = 120.0
    rebalance_min_saving: float = 0.5
    solve_time_limit_s: float = 10.0
    # Share of each service's routed demand (per request-size bucket and stage) kept on on-demand pools,
    # so a spot reclaim leaves at least this share serving while the lost replicas are re-placed
    # (SolveOptions.on_demand_floor; hard where an on-demand configuration exists). 0 = spot by price only.
    on_demand_floor: float = 0.0

    def __post_init__(self) -> None:
        """Every knob in range, named when not."""
        positive = ("interval_s", "scale_down_window_s", "solve_time_limit_s")
        for name in positive:
            if not getattr(self, name) > 0.0:
                raise AutoscaleError(f"policy.{name}: must be > 0, got {getattr(self, name)}")
        non_negative = (
            "startup_s",
            "peak_window_s",
            "headroom",
            "reversal_window_s",
            "tolerance",
            "idle_to_zero_s",
            "move_penalty_per_device_hour",
            "correction_step",
            "burst_z",
            "surge_shortfall_price_factor",
            "rebalance_after_s",
        )
        for name in non_negative:
            if not getattr(self, name) >= 0.0:
                raise AutoscaleError(f"policy.{name}: must be >= 0, got {getattr(self, name)}")
        if not 0.0 <= self.on_demand_floor <= 1.0:
            raise AutoscaleError(f"policy.on_demand_floor: must be in [0, 1], got {self.on_demand_floor}")
        if not 0.0 <= self.rebalance_min_saving < 1.0:
            raise AutoscaleError(
                f"policy.rebalance_min_saving: must be in [0, 1), got {self.rebalance_min_saving}"
            )
        for name in ("level_alpha", "trend_beta", "variability_alpha"):
            if not 0.0 < getattr(self, name) <= 1.0:
                raise AutoscaleError(f"policy.{name}: must be in (0, 1], got {getattr(self, name)}")
        if not 0.0 < self.correction_min <= 1.0 <= self.correction_max:
            raise AutoscaleError(
                "policy.correction_min/correction_max: need 0 < min <= 1 <= max, got "
                f"{self.correction_min}, {self.correction_max}"
            )


@dataclass(frozen=True)
class Observation:
    """What the metrics say about one service over the last window; None means the metric is missing."""

    requests_per_second: float | None
    # Share of requests per bucket of the service's workload (sums to 1), None: keep the last known mix.
    bucket_share: tuple[float, ...] | None = None
    ttft_p99_ms: float | None = None
    itl_p99_ms: float | None = None
    waiting: float | None = None
    running: float | None = None
    kv_usage: float | None = None

    @property
    def missing(self) -> bool:
        """No usable rate: the decision holds."""
        rps = self.requests_per_second
        return rps is None or not math.isfinite(rps) or rps < 0.0


@dataclass(frozen=True)
class ServiceTraits:
    """What the autoscaler needs to know about a service beyond the solver's demand."""

    ttft_p99_ms: float
    itl_p99_ms: float
    scale_to_zero: bool = False


@dataclass(frozen=True)
class ServiceState:
    """The autoscaler's memory of one service."""

    level_rps: float | None = None
    trend_rps_per_s: float = 0.0
    # Exponential average of the squared one-step under-forecasts, (req/s)^2: the burst margin's scale.
    error_var: float = 0.0
    last_observed_s: float | None = None
    # (time, rate) of the observations within the peak window.
    recent: tuple[tuple[float, float], ...] = ()
    bucket_share: tuple[float, ...] | None = None
    correction: float = 1.0
    last_traffic_s: float | None = None
    # The rate the last decision sized for, and the raw sized rates of the scale-down window.
    sized_rps: float | None = None
    sized_history: tuple[tuple[float, float], ...] = ()
    first_decision_s: float | None = None
    # The last solve's replicas for this service (a move completes towards it).
    planned: tuple[tuple[inputs.CandidateKey, int], ...] = ()
    last_increase_s: float = -math.inf
    # When each configuration last grew: a configuration does not shrink within the reversal window of
    # its own increase (no direction reversal), others of the service may.
    increased_s: tuple[tuple[inputs.CandidateKey, float], ...] = ()
    # When each configuration last shrank: within the reversal window it does not grow again (growth goes
    # to other configurations), and it is left out of the solve at its count.
    decreased_s: tuple[tuple[inputs.CandidateKey, float], ...] = ()
    last_change_s: float = -math.inf


@dataclass(frozen=True)
class State:
    """The autoscaler's memory, per service."""

    services: Mapping[str, ServiceState] = field(default_factory=dict)
    # The last applied targets, and the services decided at least once (an empty target is a decision).
    targets: Mapping[inputs.CandidateKey, int] = field(default_factory=dict)
    decided: frozenset[str] = frozenset()


@dataclass(frozen=True)
class ServiceDecision:
    """One service's part of a decision, with why."""

    service: str
    direction: Direction
    reason: str
    observed_rps: float | None
    forecast_rps: float
    sizing_rps: float
    correction: float
    replicas: int
    price_per_hour: float
    held: bool = False


@dataclass(frozen=True)
class Decision:
    """Targets per configuration (absent: 0), what each service decided and why, and the next state."""

    time_s: float
    targets: Mapping[inputs.CandidateKey, int]
    services: tuple[ServiceDecision, ...]
    state: State
    plan: allocation.Plan | None
    solver_targets: Mapping[inputs.CandidateKey, int]


def forecast(state: ServiceState, horizon_s: float) -> float:
    """Holt's linear forecast `horizon_s` ahead, never below zero."""
    if state.level_rps is None:
        return 0.0
    return max(0.0, state.level_rps + state.trend_rps_per_s * horizon_s)


def observe(state: ServiceState, obs: Observation, now_s: float, policy: Policy) -> ServiceState:
    """Fold one observation into the service's forecast (unchanged when the rate is missing)."""
    if obs.missing:
        return state
    rps = float(obs.requests_per_second or 0.0)
    error_var = state.error_var
    if state.level_rps is None or state.last_observed_s is None:
        level, trend = rps, 0.0
    else:
        dt = max(now_s - state.last_observed_s, 1e-9)
        # Holt's double exponential smoothing with irregular steps: trend per second.
        predicted = state.level_rps + state.trend_rps_per_s * dt
        # Only demand above the forecast threatens the SLO: the margin learns from those misses.
        miss = max(0.0, rps - max(0.0, predicted))
        error_var = (1.0 - policy.variability_alpha) * error_var + policy.variability_alpha * miss * miss
        level = policy.level_alpha * rps + (1.0 - policy.level_alpha) * predicted
        trend = policy.trend_beta * (level - state.level_rps) / dt + (1.0 - policy.trend_beta) * (
            state.trend_rps_per_s
        )
    recent = (*((t, r) for t, r in state.recent if t > now_s - policy.peak_window_s), (now_s, rps))
    share = state.bucket_share
    if obs.bucket_share is not None and sum(obs.bucket_share) > 0.0 and rps > 0.0:
        total = sum(obs.bucket_share)
        new = tuple(max(0.0, s) / total for s in obs.bucket_share)
        # The mix is weighted by the traffic it was seen on: a quiet window's few requests (a 1-minute
        # mix of a handful of long prompts) barely move the mix the fleet is sized with for the busy
        # rate it holds (the sized rate is the window's highest).
        weight = policy.level_alpha * (
            min(1.0, rps / state.sized_rps) if state.sized_rps is not None and state.sized_rps > 0.0 else 1.0
        )
        share = (
            new
            if share is None or len(share) != len(new)
            else tuple(weight * a + (1.0 - weight) * b for a, b in zip(new, share, strict=True))
        )
    last_traffic = now_s if rps > 0.0 or (obs.waiting or 0.0) > 0.0 else state.last_traffic_s
    return replace(
        state,
        level_rps=level,
        trend_rps_per_s=trend,
        error_var=error_var,
        last_observed_s=now_s,
        recent=recent,
        bucket_share=share,
        last_traffic_s=last_traffic,
    )


def serving_capacity_rps(
    candidates: Mapping[inputs.CandidateKey, inputs.Candidate],
    replicas: Mapping[inputs.CandidateKey, int],
    service: str,
    share: Sequence[float],
) -> float:
    """Req/s the service's ready replicas sustain within the SLO at this size mix (min over stages)."""
    total = sum(share)
    if total <= 0.0:
        return 0.0
    share = [x / total for x in share]
    front = 0.0
    back = 0.0
    has_back = False
    for key, n in replicas.items():
        if key.service != service or n <= 0 or key not in candidates:
            continue
        caps = candidates[key].max_rps_per_bucket
        # Harmonic mix: one req/s of this mix uses sum_b share_b / cap_b replica-seconds per second.
        load = sum(s / c if c > 0.0 else math.inf for s, c in zip(share, caps, strict=False) if s > 0.0)
        rate = n / load if load > 0.0 else 0.0
        if key.role == "decode":
            back += rate
            has_back = True
        else:
            front += rate
    return min(front, back) if has_back else front


def correct(
    state: ServiceState,
    obs: Observation,
    traits: ServiceTraits,
    model_utilization: float,
    policy: Policy,
) -> ServiceState:
    """Online capacity correction from observed p99 latency vs the model's promise at the observed load.

    The model promises p99 TTFT and ITL within the SLO at any load up to its SLO-bounded capacity. A p99
    above the SLO at model utilization u < 1 says the true capacity is below the modelled one: the factor
    drops one step (repeated violations keep lowering it; one noisy window moves it little). A p99 well
    within the SLO (half of it) at u >= 0.8 says the model is conservative here: the factor rises one
    step. Bounded by policy.correction_min/max.
    """
    if obs.missing or model_utilization < policy.correction_min_utilization:
        return state
    if (obs.waiting or 0.0) > 0.0:
        # A queue means a backlog (capacity was short a moment ago): its latency says nothing about
        # whether the model's capacity is right.
        return state
    ratios = [
        observed / slo
        for observed, slo in ((obs.ttft_p99_ms, traits.ttft_p99_ms), (obs.itl_p99_ms, traits.itl_p99_ms))
        if observed is not None and math.isfinite(observed) and slo > 0.0
    ]
    if not ratios:
        return state
    worst = max(ratios)
    factor = state.correction
    if worst > 1.0 and model_utilization < 1.0:
        factor = factor * (1.0 - policy.correction_step)
    elif worst <= 0.5 and model_utilization >= 0.8:
        factor = factor * (1.0 + policy.correction_step)
    factor = min(policy.correction_max, max(policy.correction_min, factor))
    return replace(state, correction=factor)


def burst_margin_rps(state: ServiceState, policy: Policy) -> float:
    """burst_z standard deviations of the forecast error over one start-up plus one interval.

    The one-step error's deviation is learnt online; over h steps it grows like sqrt(h) (errors of a
    level that wanders as a random walk), which is what a new replica asked for now has to cover.
    """
    steps = max(1.0, (policy.startup_s + policy.interval_s) / policy.interval_s)
    return policy.burst_z * math.sqrt(max(0.0, state.error_var) * steps)


def sizing_rps(state: ServiceState, policy: Policy) -> tuple[float, float]:
    """(forecast one start-up ahead, rate to size for: the forecast (at least the level and the recent
    peak) plus the burst margin, divided by the capacity correction)."""
    ahead = forecast(state, policy.startup_s + policy.interval_s)
    peak = max((r for _, r in state.recent), default=0.0)
    now = state.level_rps or 0.0
    base = max(ahead, peak, now) + burst_margin_rps(state, policy)
    return ahead, base * (1.0 + policy.headroom) / state.correction


def _idle(state: ServiceState, traits: ServiceTraits, now_s: float, policy: Policy) -> bool:
    """Opted in to scale to zero and no request seen for the idle period."""
    if not traits.scale_to_zero:
        return False
    since = state.last_traffic_s if state.last_traffic_s is not None else state.first_decision_s
    return since is not None and now_s - since >= policy.idle_to_zero_s


def _demand(
    base: inputs.ServiceDemand, rps: float, share: Sequence[float] | None, *, floor: int
) -> inputs.ServiceDemand:
    """The service's demand at `rps` with this size mix (the spec's mix when none was observed)."""
    spec_total = sum(base.bucket_rps)
    mix = (
        list(share)
        if share is not None and len(share) == len(base.bucket_rps) and sum(share) > 0.0
        else [r / spec_total if spec_total > 0.0 else 1.0 / len(base.bucket_rps) for r in base.bucket_rps]
    )
    total = sum(mix)
    bucket_rps = tuple(rps * m / total for m in mix)
    max_replicas = base.max_replicas
    min_replicas = max(base.min_replicas, floor)
    if max_replicas is not None:
        min_replicas = min(min_replicas, max_replicas)
    return replace(base, bucket_rps=bucket_rps, min_replicas=min_replicas)


def _solve(
    problem: inputs.FleetProblem,
    demands: Sequence[inputs.ServiceDemand],
    current: Mapping[inputs.CandidateKey, int],
    policy: Policy,
    penalty: float,
    base: inputs.SolveOptions | None,
) -> allocation.Plan:
    """The fleet solve at the sized demand, warm-started from (and charged `penalty` per device-hour for
    leaving) `current`, the surge of make-before-break priced.

    `base`: how the planner solves (its method, gap, utilization cap, one chip per service...): the same
    rules as the fleet's plan; only time, churn, surge and the on-demand floor are the policy's."""
    sized = replace(problem, services=tuple(demands), current_replicas=dict(current))
    base = base or inputs.SolveOptions()
    options = replace(
        base,
        time_limit_s=policy.solve_time_limit_s,
        move_penalty_per_device_hour=penalty,
        surge_shortfall_price_factor=policy.surge_shortfall_price_factor,
        on_demand_floor=max(base.on_demand_floor, policy.on_demand_floor),
    )
    return solve.solve(sized, options)


def _layout(
    sub: inputs.FleetProblem,
    group: Sequence[inputs.ServiceDemand],
    mine: Mapping[inputs.CandidateKey, int],
    policy: Policy,
    penalty: float,
    only_running: bool,
    starting: bool,
    base: inputs.SolveOptions | None = None,
) -> allocation.Plan:
    """The plan for one group of services (see decide: scale-down keeps to what runs unless a layout
    from scratch saves rebalance_min_saving; growth keeps what runs unless likewise)."""
    if only_running:
        kept = replace(sub, candidates=tuple(c for c in sub.candidates if mine.get(c.key, 0) > 0))
        fresh = _solve(sub, group, mine, policy, 0.0, base)
        try:
            plan = _solve(kept, group, mine, policy, 0.0, base)
        except inputs.PlacementError:
            return fresh
        return (
            fresh
            if fresh.price_per_hour < plan.price_per_hour * (1.0 - policy.rebalance_min_saving)
            else plan
        )
    plan = _solve(sub, group, mine, policy, penalty, base)
    if not starting:
        # Growth from scratch too (churn cost charged): when adding to what runs leaves the fleet dearer
        # than a fresh layout by rebalance_min_saving, the fresh one is the target (new replicas first,
        # the replaced ones go once they are ready).
        fresh = _solve(sub, group, mine, policy, policy.move_penalty_per_device_hour, base)
        if fresh.price_per_hour < plan.price_per_hour * (1.0 - policy.rebalance_min_saving):
            return fresh
    return plan


def _without(
    problem: inputs.FleetProblem,
    frozen: Mapping[inputs.CandidateKey, int],
    cands: Mapping[inputs.CandidateKey, inputs.Candidate],
) -> inputs.FleetProblem | None:
    """`problem` with the frozen configurations taken out: their candidates gone, their devices out of
    the pools, and the demand they serve off the services' (each serves the same share f of every bucket
    it can: sum_b f d_b / cap_b = its replicas). None when they would serve everything (nothing to solve)."""
    services = []
    for demand in problem.services:
        rps = list(demand.bucket_rps)
        for key, n in frozen.items():
            if key.service != demand.id or n <= 0 or key not in cands or key.role != "aggregated":
                continue
            caps = cands[key].max_rps_per_bucket
            load = sum(r / c for r, c in zip(rps, caps, strict=False) if c > 0.0 and r > 0.0)
            if load <= 0.0:
                continue
            share = min(1.0, n / load)
            rps = [r * (1.0 - share) if i < len(caps) and caps[i] > 0.0 else r for i, r in enumerate(rps)]
        if sum(rps) <= 1e-9:
            return None
        kept = sum(n for k, n in frozen.items() if k.service == demand.id)
        services.append(
            replace(demand, bucket_rps=tuple(rps), min_replicas=max(0, demand.min_replicas - kept))
        )
    return replace(
        problem,
        services=tuple(services),
        pools=_pools_without(problem.pools, {k: n for k, n in frozen.items() if n > 0}),
        candidates=tuple(c for c in problem.candidates if c.key not in frozen),
        current_replicas={k: n for k, n in problem.current_replicas.items() if k not in frozen},
    )


def _plan_targets(plan: allocation.Plan) -> dict[inputs.CandidateKey, int]:
    """Replicas per configuration in a plan."""
    out: dict[inputs.CandidateKey, int] = {}
    for sp in plan.services:
        for a in sp.assignments:
            key = inputs.CandidateKey(a.service, a.role, a.pool, a.precision, a.tp)
            out[key] = out.get(key, 0) + a.replicas
    return out


Replicas = Mapping[inputs.CandidateKey, int]


def direction(before: Replicas, after: Replicas) -> Direction:
    """up / down when replicas only rise / fall, move when some rise and others fall, else hold."""
    keys = set(before) | set(after)
    rise = any(after.get(k, 0) > before.get(k, 0) for k in keys)
    fall = any(after.get(k, 0) < before.get(k, 0) for k in keys)
    if rise and fall:
        return "move"
    return "up" if rise else "down" if fall else "hold"


def targets_services(targets: Mapping[inputs.CandidateKey, int]) -> set[str]:
    """Services with a target."""
    return {k.service for k in targets}


def _pools_without(
    pools: Sequence[inputs.Pool], held: Mapping[inputs.CandidateKey, int]
) -> tuple[inputs.Pool, ...]:
    """Pools minus the whole nodes that held services' replicas may occupy (conservative: rounds up)."""
    used: dict[str, int] = {}
    for key, n in held.items():
        used[key.pool] = used.get(key.pool, 0) + n * key.tp
    out = []
    for pool in pools:
        taken = math.ceil(used.get(pool.id, 0) / pool.devices_per_node) if pool.devices_per_node else 0
        out.append(replace(pool, nodes=max(0, pool.nodes - taken)))
    return tuple(out)


def decide(
    problem: inputs.FleetProblem,
    traits: Mapping[str, ServiceTraits],
    state: State,
    observations: Mapping[str, Observation],
    current: Mapping[inputs.CandidateKey, int],
    now_s: float,
    policy: Policy | None = None,
    *,
    starting: Mapping[inputs.CandidateKey, int] | None = None,
    options: inputs.SolveOptions | None = None,
) -> Decision:
    """One autoscaling decision for the fleet.

    `problem` is the planner's (its candidates carry the SLO-bounded capacity per bucket; its services'
    bucket rates are the spec's and give the size mix until one is observed). `current` is what exists now
    (ready or starting, i.e. the Deployments' replicas), `starting` the part of it not ready yet. A
    service absent from `observations`, or with a missing rate, holds its current replicas.

    Per service: the rate to size for is the highest sized rate of the last `scale_down_window_s` (HPA's
    scale-down stabilization, on the rate rather than on replicas, so a move between pools does not keep
    both); within `tolerance` below what runs now, nothing changes (hysteresis); above it, or below by
    more, the services that change are re-solved together on what the others leave free, warm-started
    from (and charged the move penalty for leaving) what runs. Decreases wait while replicas of the
    service are starting and for `reversal_window_s` after its last increase.

    `options`: how the planner solves (the operator passes its planner's, so a decision follows the same
    rules as the spec-sized plan); the policy sets time limit, churn cost, surge price and on-demand floor.
    """
    policy = policy or Policy()
    starting = starting or {}
    cands = {c.key: c for c in problem.candidates}
    service_states = dict(state.services)
    held: dict[str, str] = {}
    notes: dict[str, list[str]] = {}
    changing: list[inputs.ServiceDemand] = []
    may_decrease: dict[str, bool] = {}
    starting_now: dict[str, bool] = {}
    completing: dict[str, dict[inputs.CandidateKey, int]] = {}
    mode: dict[str, str] = {}
    for base in problem.services:
        sid = base.id
        t = traits[sid]
        s = service_states.get(sid, ServiceState())
        if s.first_decision_s is None:
            s = replace(s, first_decision_s=now_s)
        obs = observations.get(sid)
        notes[sid] = []
        mine = {k: n for k, n in current.items() if k.service == sid and n > 0}
        if obs is None or obs.missing:
            held[sid] = "metrics missing: holding the last decision"
            service_states[sid] = s
            continue
        share = obs.bucket_share or s.bucket_share or base.bucket_rps
        ready = {k: n - starting.get(k, 0) for k, n in mine.items()}
        ready_capacity = serving_capacity_rps(cands, ready, sid, share) * s.correction
        utilization = (obs.requests_per_second or 0.0) / ready_capacity if ready_capacity > 0.0 else 0.0
        before = s.correction
        s = observe(s, obs, now_s, policy)
        # Only a fleet that stood still over the observation window says something about its capacity.
        settled = now_s - s.last_change_s >= policy.correction_settle_s and not any(
            starting.get(k, 0) > 0 for k in mine
        )
        if settled:
            s = correct(s, obs, t, utilization, policy)
        if s.correction != before:
            notes[sid].append(
                f"capacity correction {before:.2f} -> {s.correction:.2f} "
                f"(p99 TTFT {obs.ttft_p99_ms or 0:.0f}/{t.ttft_p99_ms:.0f} ms, "
                f"ITL {obs.itl_p99_ms or 0:.0f}/{t.itl_p99_ms:.0f} ms at {utilization:.0%} model load)"
            )
        idle = _idle(s, t, now_s, policy)
        _, raw = sizing_rps(s, policy)
        if idle:
            raw = 0.0
        history = (*((ts, r) for ts, r in s.sized_history if ts > now_s - policy.scale_down_window_s),)
        history = (*history, (now_s, raw))
        # The rate sized for: the highest sized rate of the stabilization window, so capacity drops only
        # after the window has seen no need for it (HPA's scale-down stabilization, on the rate).
        rate = 0.0 if idle else max(r for _, r in history)
        capacity = serving_capacity_rps(cands, mine, sid, s.bucket_share or share) * s.correction
        s = replace(s, sized_history=history, sized_rps=rate)
        service_states[sid] = s
        warming = (
            now_s - (now_s if s.first_decision_s is None else s.first_decision_s) < policy.scale_down_window_s
        )
        grown = dict(s.increased_s)
        recently_up = bool(mine) and all(
            now_s - grown.get(k, -math.inf) < policy.reversal_window_s for k in mine
        )
        is_starting = any(starting.get(k, 0) > 0 for k in mine)
        may_decrease[sid] = not (warming or recently_up or is_starting) or idle
        starting_now[sid] = is_starting and not idle
        planned = dict(s.planned)
        pending = (
            bool(planned)
            and not is_starting
            and planned != mine
            and all(n <= mine.get(k, 0) for k, n in planned.items())
            and serving_capacity_rps(cands, planned, sid, s.bucket_share or share) * s.correction >= rate
        )
        steady_for = now_s - max(s.last_change_s, s.first_decision_s or now_s)
        if idle and mine:
            notes[sid].append(f"no traffic for {policy.idle_to_zero_s:.0f} s: scale to zero")
            mode[sid] = "idle"
        elif not mine and t.scale_to_zero and rate <= 0.0 and not (obs.waiting or 0.0) > 0.0:
            # At zero with no demand (the activator counts none and holds none): an opted-in service stays
            # at zero; the replica floor would otherwise wake it for one idle period. A held request is
            # demand even when no rate shows yet (a counter born at its first request has no increase
            # for rate() to see).
            held[sid] = "no demand and no replica: stays at zero"
            continue
        elif pending and rate <= capacity:
            # The last move's new replicas are ready: drop what it replaced (not a scale-down).
            completing[sid] = planned
            notes[sid].append("completes the move: the replaced replicas go")
            continue
        elif rate > capacity or not mine:
            mode[sid] = "up"
        elif rate < capacity * (1.0 - policy.tolerance) and may_decrease[sid]:
            mode[sid] = "down"
        elif not is_starting and steady_for >= policy.rebalance_after_s and not warming:
            # Re-solve the whole fleet at the sized rate with the churn cost, from what runs: load moves
            # back to a cheaper pool that has freed up when the saving beats the churn cost.
            mode[sid] = "rebalance"
        else:
            why = (
                "replicas still starting"
                if is_starting
                else "within the reversal window of an increase"
                if recently_up and rate < capacity * (1.0 - policy.tolerance)
                else "stabilization window not yet full"
                if warming and rate < capacity * (1.0 - policy.tolerance)
                else f"within {policy.tolerance:.0%} of the {capacity:.2f} req/s running"
            )
            held[sid] = f"sized for {rate:.2f} req/s, {capacity:.2f} req/s running; holds: {why}"
            continue
        changing.append(_demand(base, rate, s.bucket_share, floor=0 if idle else 1))

    # One global solve over every candidate, from what runs (current_replicas) with the churn cost, not an
    # incremental fill: scale-up lands where the whole fleet is cheapest, scale-down drops what saves the
    # most (the most expensive replicas per req/s first), and load moves back to cheap pools when they
    # free. Services with replicas still starting are solved first with a prohibitive churn cost (they only
    # add: no second move on top of one in flight), then the others on what is left.
    ids_changing = {d.id for d in changing}
    decided = set(state.decided)
    # Services that do not change keep their last decision (what runs, when there was none yet): the
    # cluster's view of replicas may lag a decision by a reconcile.
    targets: dict[inputs.CandidateKey, int] = {}
    for base in problem.services:
        if base.id in ids_changing or base.id in completing:
            continue
        last = {k: n for k, n in state.targets.items() if k.service == base.id}
        if not last and base.id not in decided:
            last = {k: n for k, n in current.items() if k.service == base.id}
        targets.update({k: n for k, n in last.items() if n > 0})
    for done in completing.values():
        targets.update(done)
    plan: allocation.Plan | None = None
    solver_targets: dict[inputs.CandidateKey, int] = {}
    # (services, churn penalty, only the configurations running): scale-up may open any configuration
    # and keeps what runs; scale-down first keeps to what runs (it drops
    # the replicas whose removal saves the most: the most expensive per req/s first); rebalancing and
    # scale-down also solve from scratch (no churn cost), taken only when that saves rebalance_min_saving
    # of the $/h against the alternative (a move, make before break).
    shrinking = ("down", "idle", "rebalance")
    groups = (
        ([d for d in changing if starting_now[d.id]], KEEP_PENALTY_PER_DEVICE_HOUR, False),
        # Scale-up keeps what runs and adds; a layout from scratch (a move, both sets held through a
        # start-up) only when it saves rebalance_min_saving (_layout).
        (
            [d for d in changing if not starting_now[d.id] and mode.get(d.id) not in shrinking],
            KEEP_PENALTY_PER_DEVICE_HOUR,
            False,
        ),
        ([d for d in changing if not starting_now[d.id] and mode.get(d.id) in shrinking], 0.0, True),
    )
    for group, penalty, only_running in groups:
        if not group:
            continue
        ids = {d.id for d in group}
        others = {k: n for k, n in current.items() if k.service in ids_changing - ids and n > 0}
        sub = replace(
            problem,
            services=tuple(group),
            pools=_pools_without(problem.pools, {**targets, **others}),
            candidates=tuple(c for c in problem.candidates if c.service in ids),
        )
        mine = {k: n for k, n in current.items() if k.service in ids}
        # Configurations that shrank within the reversal window stay as they are, out of the solve: their
        # replicas serve their share of the demand and hold their devices, so growth lands elsewhere (no
        # up-after-down reversal). When the rest cannot carry the demand, the solve includes them again.
        frozen = {
            k: mine.get(k, 0)
            for d in group
            for k, t in service_states[d.id].decreased_s
            if now_s - t < policy.reversal_window_s and k.role == "aggregated" and not only_running
        }
        thawed = _without(sub, frozen, cands) if frozen else None
        full = (sub, group, mine)
        tries = [full]
        if thawed is not None:
            mine_rest = {k: n for k, n in mine.items() if k not in frozen}
            tries.insert(0, (thawed, list(thawed.services), mine_rest))
        found: allocation.Plan | None = None
        failure = ""
        for attempt_sub, attempt_group, attempt_mine in tries:
            try:
                found = _layout(
                    attempt_sub,
                    attempt_group,
                    attempt_mine,
                    policy,
                    penalty,
                    only_running,
                    starting_now[group[0].id],
                    options,
                )
            except inputs.PlacementError as error:
                failure = str(error)
                continue
            if attempt_sub is not sub and any(a.status != "served" for a in found.services):
                # Without the frozen configurations the rest cannot carry the sized demand: regrowing
                # one inside its window is better than an SLO break for the rest of the window.
                failure = "the configurations outside the reversal window cannot carry the demand"
                found = None
                continue
            if attempt_sub is not sub:
                mine = attempt_mine
            else:
                thawed = None
            break
        if found is None:
            for d in group:
                held[d.id] = f"no plan at the sized demand ({failure}): holding"
            targets.update({k: n for k, n in mine.items() if n > 0})
            continue
        plan = found
        got = _plan_targets(plan)
        if thawed is not None:
            mine = {**mine, **{k: n for k, n in frozen.items() if n > 0}}
            got = {**got, **{k: n for k, n in frozen.items() if n > 0}}
        for d in group:
            sid = d.id
            want = {k: n for k, n in got.items() if k.service == sid and n > 0}
            have = {k: n for k, n in mine.items() if k.service == sid and n > 0}
            shrank = dict(service_states[sid].decreased_s)
            regrow = [
                k
                for k, n in want.items()
                if n > have.get(k, 0) and now_s - shrank.get(k, -math.inf) < policy.reversal_window_s
            ]
            if only_running and regrow:
                # A scale-down that would grow a configuration that just shrank (a swap between running
                # configurations) waits: the fleet is over its need, holding it is safe.
                held[sid] = (
                    f"sized for {service_states[sid].sized_rps or 0.0:.2f} req/s: scaling down would grow "
                    f"{regrow[0].pool}/{regrow[0].precision}/tp{regrow[0].tp} within the reversal window "
                    "of its decrease: holds"
                )
                targets.update(have)
                continue
            price_want = sum(n * cands[k].price_per_hour for k, n in want.items())
            price_have = sum(n * cands[k].price_per_hour for k, n in have.items())
            if mode.get(sid) == "rebalance" and (
                price_want >= price_have * (1.0 - policy.rebalance_min_saving) or want == have
            ):
                held[sid] = (
                    f"sized for {service_states[sid].sized_rps or 0.0:.2f} req/s: the fleet that runs is "
                    f"within {policy.rebalance_min_saving:.0%} of the cheapest (${price_want:.2f}/h vs "
                    f"${price_have:.2f}/h)"
                )
                targets.update(have)
                continue
            solver_targets.update(want)
            service_states[sid] = replace(service_states[sid], planned=tuple(want.items()))
            adds = any(n > have.get(k, 0) for k, n in want.items())
            if adds or starting_now[sid] or not may_decrease[sid]:
                # Make before break: a replica the plan drops (a move to another pool) goes only once
                # nothing of the service is starting, in a later decision.
                if any(want.get(k, 0) < n for k, n in have.items()):
                    notes[sid].append("removals wait for the new replicas (make before break)")
                want = {k: max(want.get(k, 0), have.get(k, 0)) for k in {**have, **want}}
            targets.update(want)
    # No configuration shrinks within the reversal window of its own increase, whatever path (scale-down,
    # rebalance, completing a move) asked for it; scale to zero of an idle opted-in service excepted.
    for k, n in current.items():
        grown = dict(service_states[k.service].increased_s) if k.service in service_states else {}
        recent = now_s - grown.get(k, -math.inf) < policy.reversal_window_s
        if recent and targets.get(k, 0) < n and mode.get(k.service) != "idle":
            targets[k] = n
    targets = {k: n for k, n in targets.items() if n > 0}

    decisions: list[ServiceDecision] = []
    for base in problem.services:
        sid = base.id
        s = service_states[sid]
        mine_before = {k: n for k, n in current.items() if k.service == sid and n > 0}
        mine_after = {k: n for k, n in targets.items() if k.service == sid}
        if any(mine_after.get(k, 0) > mine_before.get(k, 0) for k in mine_after):
            s = replace(s, last_increase_s=now_s)
        grown_keys = dict(s.increased_s)
        for k, n in mine_after.items():
            if n > mine_before.get(k, 0):
                grown_keys[k] = now_s
        s = replace(
            s,
            increased_s=tuple(
                (k, t)
                for k, t in grown_keys.items()
                if now_s - t < policy.reversal_window_s and k in mine_after
            ),
        )
        shrunk_keys = dict(s.decreased_s)
        for k, n in mine_before.items():
            if mine_after.get(k, 0) < n:
                shrunk_keys[k] = now_s
        s = replace(
            s,
            decreased_s=tuple((k, t) for k, t in shrunk_keys.items() if now_s - t < policy.reversal_window_s),
        )
        if mine_after != mine_before:
            s = replace(s, last_change_s=now_s)
        service_states[sid] = s
        ahead, _ = sizing_rps(s, policy)
        rate = s.sized_rps or 0.0
        moved: Direction = "hold" if sid in held else direction(mine_before, mine_after)
        obs = observations.get(sid)
        observed = (obs.requests_per_second or 0.0) if obs is not None else 0.0
        if sid in held:
            reason = held[sid]
        else:
            change = ", ".join(
                f"{k.role}@{k.pool}/{k.precision}/tp{k.tp} {mine_before.get(k, 0)}->{mine_after.get(k, 0)}"
                for k in sorted(set(mine_before) | set(mine_after))
                if mine_before.get(k, 0) != mine_after.get(k, 0)
            )
            reason = f"sized for {rate:.2f} req/s (observed {observed:.2f}, forecast {ahead:.2f})" + (
                f": {change}" if change else ": no change"
            )
        if notes[sid]:
            reason += "; " + "; ".join(notes[sid])
        price = sum(n * cands[k].price_per_hour for k, n in mine_after.items() if k in cands)
        decisions.append(
            ServiceDecision(
                service=sid,
                direction=moved,
                reason=reason,
                observed_rps=None if obs is None or obs.missing else obs.requests_per_second,
                forecast_rps=ahead,
                sizing_rps=rate,
                correction=s.correction,
                replicas=sum(mine_after.values()),
                price_per_hour=price,
                held=sid in held,
            )
        )
    new_state = State(
        services=service_states,
        targets=dict(targets),
        decided=frozenset(decided | ids_changing | set(completing) | targets_services(targets)),
    )
    return Decision(now_s, dict(targets), tuple(decisions), new_state, plan, dict(solver_targets))


def cdf_at(le: Sequence[float], cumulative: Sequence[float], x: float) -> float:
    """P(X <= x) from a Prometheus histogram's cumulative bucket counts (linear within a bucket)."""
    total = cumulative[-1] if cumulative else 0.0
    if total <= 0.0:
        return 0.0
    lo_edge, lo_count = 0.0, 0.0
    for edge, count in zip(le, cumulative, strict=True):
        if x <= edge:
            if math.isinf(edge) or edge <= lo_edge:
                return lo_count / total
            return (lo_count + (count - lo_count) * (x - lo_edge) / (edge - lo_edge)) / total
        lo_edge, lo_count = edge, count
    return 1.0


def bucket_share(
    buckets: Sequence[tuple[float, float, float, float]],
    prompt: tuple[Sequence[float], Sequence[float]],
    output: tuple[Sequence[float], Sequence[float]],
) -> tuple[float, ...] | None:
    """Share of requests per (prompt_lo, prompt_hi, output_lo, output_hi] bucket from the engines'
    prompt- and output-token histograms ((le, cumulative count) each).

    Engines export the two marginals, not their joint: the shares assume prompt and output lengths
    independent. Mass beyond the last bucket goes to the buckets at the edge (they are sized for the
    largest requests). None when either histogram is empty.
    """
    if not prompt[1] or not output[1] or prompt[1][-1] <= 0.0 or output[1][-1] <= 0.0:
        return None

    def mass(hist: tuple[Sequence[float], Sequence[float]], lo: float, hi: float, last: bool) -> float:
        upper = 1.0 if last else cdf_at(hist[0], hist[1], hi)
        return max(0.0, upper - cdf_at(hist[0], hist[1], lo))

    p_top = max(b[1] for b in buckets)
    o_top = max(b[3] for b in buckets)
    shares = [
        mass(prompt, p_lo, p_hi, p_hi >= p_top) * mass(output, o_lo, o_hi, o_hi >= o_top)
        for p_lo, p_hi, o_lo, o_hi in buckets
    ]
    total = sum(shares)
    return tuple(s / total for s in shares) if total > 0.0 else None
