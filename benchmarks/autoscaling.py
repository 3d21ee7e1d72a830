"""Benchmark: autoscaling on replayed traces, chipfit vs static (peak, mean), a KEDA-style threshold
autoscaler and a hindsight-optimal lower bound.

Every policy runs through the same discrete-event fleet model (placement/replay.py); chipfit's decisions
are placement.autoscale.decide, the function the operator's timer calls. The fleet is the examples'
pools with their prices and node counts (examples/10-fleet.yaml), spot included.

A trace as recorded is a few req/s, one or two replicas of a 70B model: too coarse for any autoscaler to
matter. `--scale K` serves K times as many users with the same minute-by-minute rate curve: each request
is repeated K times, each copy delayed by an independent uniform draw in [0, 60 s) (wrapping around the
end; within the minute, so the minute-level bursts stay; the second-level arrivals become Poisson-like).

Run: .venv/bin/python benchmarks/autoscaling.py [--trace conv code] [--scale 10] [--json OUT] [--plot DIR]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from chipfit import planning, traces, validation
from placement import autoscale, candidates, replay, workload
from placement.solver import allocation, inputs, solve

ROOT = Path(__file__).resolve().parents[1]
TRACES = {
    "conv": ROOT.parent / "shared" / "data" / "traces" / "AzureLLMInferenceTrace_conv.csv",
    "code": ROOT.parent / "shared" / "data" / "traces" / "AzureLLMInferenceTrace_code.csv",
    "mooncake": ROOT.parent / "shared" / "data" / "traces" / "mooncake_conversation_trace.jsonl",
}
# The model and SLO of benchmarks/solver_traces.py's 70B case (p99 TTFT 2 s, ITL 100 ms), chosen there.
MODEL = "llama-3.1-70b"
SLO = replay.Slo(ttft_p99_ms=2000.0, itl_p99_ms=100.0)
PRECISIONS = ("bf16", "fp8")
# Static sizing: the 99th percentile of per-minute rates ("peak"), and the mean.
MINUTE_S = 60.0
PEAK_QUANTILE = 99.0
# Minutes of the trace's start the initial fleet is sized for (every dynamic policy starts from it).
OPENING_MINUTES = 5
TARGET_ATTAINMENT = 0.99
TARGET_COST_VS_OPTIMAL = 1.15
TARGET_SAVING_VS_PEAK = 0.30


@dataclass(frozen=True)
class Case:
    """One trace at one scale with its fleet problem."""

    name: str
    trace: replay.Trace
    wl: workload.BucketedWorkload
    problem: inputs.FleetProblem


def scaled(trace: replay.Trace, copies: int, seed: int = 0) -> replay.Trace:
    """`copies` users per recorded user, each copy delayed by U[0, 60 s)."""
    if copies <= 1:
        return trace
    rng = np.random.default_rng(seed)
    duration = trace.duration_s + 1e-9
    ts = np.concatenate(
        [(trace.ts + rng.uniform(0.0, MINUTE_S, size=trace.ts.size)) % duration for _ in range(copies)]
    )
    return replay.Trace.of(ts, np.tile(trace.prompt, copies), np.tile(trace.output, copies))


# The second scenario: the same pools and prices with this many times their nodes, so the efficient chips'
# capacity never binds (a cloud region with on-demand H100/H200/MI300X capacity). The examples' fleet
# (H100 16 GPUs, H200 8, MI300X 8) is the first scenario; both are reported.
UNCAPPED_NODES_FACTOR = 8
FLEETS = ("examples", "uncapped")


def fleet_pools(fleet: str = "examples") -> list[inputs.Pool]:
    """The examples' pools (prices, node counts, spot) as the solver sees them; `uncapped`: the same with
    UNCAPPED_NODES_FACTOR x the nodes."""
    loaded = validation.load_and_validate([ROOT / "examples"])
    if loaded.problems:
        raise SystemExit("examples/ do not validate: " + str(loaded.problems[0]))
    pools = [planning.to_pool(p) for p in loaded.pools]
    if fleet == "uncapped":
        pools = [replace(p, nodes=p.nodes * UNCAPPED_NODES_FACTOR) for p in pools]
    return pools


def minute_rates(trace: replay.Trace) -> np.ndarray:
    """Requests per second in each minute."""
    return np.bincount((trace.ts // MINUTE_S).astype(int)) / MINUTE_S


# The tuning split: parameters are chosen on the first 30 min of each trace; the rest is held out.
TUNE_SPLIT_S = 1800.0
SPANS = ("all", "tune", "holdout")


def span_of(trace: replay.Trace, span: str) -> replay.Trace:
    """The whole trace, its first 30 min (tuning) or the rest (held out), re-based to start at 0."""
    if span == "all":
        return trace
    keep = trace.ts < TUNE_SPLIT_S if span == "tune" else trace.ts >= TUNE_SPLIT_S
    return replay.Trace.of(trace.ts[keep], trace.prompt[keep], trace.output[keep])


def build_case(name: str, copies: int, pools: list[inputs.Pool], span: str = "all") -> Case:
    """Load, scale, bucket, and ask the performance model for every candidate's capacity."""
    trace = span_of(scaled(traces.load(TRACES[name]), copies), span)
    mean_rps = trace.ts.size / max(trace.duration_s, 1.0)
    wl = workload.from_samples(mean_rps, trace.prompt, trace.output)
    spec = candidates.ServiceSpec(
        id=f"{name}x{copies}",
        model=MODEL,
        precisions=PRECISIONS,
        ttft_p99_ms=SLO.ttft_p99_ms,
        itl_p99_ms=SLO.itl_p99_ms,
        workload=wl,
        serving="aggregated",
    )
    cset = candidates.build([spec], pools)
    label = f"{name}x{copies}" + ("" if span == "all" else f"-{span}")
    return Case(label, trace, wl, cset.problem)


def plan_at(case: Case, rps: float) -> allocation.Plan:
    """The cheapest plan for `rps` with the trace's size mix."""
    demand = replace(case.problem.services[0], bucket_rps=tuple(rps * s for s in _mix(case.wl)))
    return solve.solve(replace(case.problem, services=(demand,)))


def _mix(wl: workload.BucketedWorkload) -> list[float]:
    total = sum(wl.bucket_rps)
    return [r / total for r in wl.bucket_rps]


def hindsight(case: Case) -> tuple[float, list[tuple[float, float]], allocation.Plan]:
    """Lower bound on $: each minute, the cheapest fleet for that minute's actual demand, no start-up.

    Perfect knowledge of the future, replicas that start instantly and cost nothing outside the minutes
    they serve: no real policy can pay less under the same capacity model.
    """
    from placement import simulate

    buckets = simulate.bucket_of(case.wl, case.trace.prompt, case.trace.output)
    minute = (case.trace.ts // MINUTE_S).astype(int)
    n_buckets = len(case.wl.buckets)
    dollars = 0.0
    curve: list[tuple[float, float]] = []
    cache: dict[tuple[float, ...], float] = {}
    peak: allocation.Plan | None = None
    for m in range(int(minute.max()) + 1):
        inside = buckets[(minute == m) & (buckets >= 0)]
        counts = np.bincount(inside, minlength=n_buckets) / MINUTE_S
        demand_key = tuple(float(x) for x in np.round(counts, 4))
        if demand_key not in cache:
            if sum(demand_key) == 0.0:
                cache[demand_key] = 0.0
            else:
                demand = replace(case.problem.services[0], bucket_rps=demand_key, min_replicas=0)
                plan = solve.solve(replace(case.problem, services=(demand,)))
                # HiGHS's dual bound: a lower bound on the minute's cheapest fleet even if the MILP stopped
                # short of optimal (with a 1e-4 gap it is within 0.01% of the fleet's price).
                cache[demand_key] = min(plan.price_per_hour, plan.bound)
                if peak is None or plan.price_per_hour > peak.price_per_hour:
                    peak = plan
        span = min(MINUTE_S, case.trace.duration_s - m * MINUTE_S)
        dollars += cache[demand_key] * span / 3600.0
        curve.append((m * MINUTE_S, cache[demand_key]))
    if peak is None:
        raise SystemExit(f"{case.name}: empty trace")
    return dollars, curve, peak


def window_demands(case: Case, window_s: float) -> list[tuple[float, ...]]:
    """Req/s per bucket in each `window_s` window of the trace (the bound's minutes, the oracle's 30 s)."""
    from placement import simulate

    buckets = simulate.bucket_of(case.wl, case.trace.prompt, case.trace.output)
    window = (case.trace.ts // window_s).astype(int)
    n_buckets = len(case.wl.buckets)
    out = []
    for w in range(int(window.max()) + 1):
        inside = buckets[(window == w) & (buckets >= 0)]
        out.append(tuple(float(x) for x in np.bincount(inside, minlength=n_buckets) / window_s))
    return out


def window_bound(case: Case, window_s: float, relaxed: bool) -> float:
    """$ of the cheapest fleet per `window_s` window for that window's demand: integer replicas (HiGHS's
    dual bound, as hindsight()) or the LP relaxation (fractional replicas: what integrality costs).

    With window_s = 60 and integer replicas this is hindsight()'s bound; 30 s windows are the demand the
    oracle follows (finer windows see the sub-minute peaks a fleet must carry as they come)."""
    dollars = 0.0
    cache: dict[tuple[float, ...], float] = {}
    for w, demand_rps in enumerate(window_demands(case, window_s)):
        key = tuple(round(x, 4) for x in demand_rps)
        if key not in cache:
            cache[key] = (
                0.0 if sum(key) == 0.0 else (fluid_price(case, key) if relaxed else _integer(case, key))
            )
        span = min(window_s, case.trace.duration_s - w * window_s)
        dollars += cache[key] * span / 3600.0
    return dollars


def _integer(case: Case, demand_rps: tuple[float, ...]) -> float:
    demand = replace(case.problem.services[0], bucket_rps=demand_rps, min_replicas=0)
    plan = solve.solve(replace(case.problem, services=(demand,)))
    return min(plan.price_per_hour, plan.bound)


UNSERVED_PRICE = 1e4


def fluid_price(case: Case, demand_rps: tuple[float, ...]) -> float:
    """$/h of the LP relaxation: fractional replicas, each bucket split over the configurations that
    serve it within the SLO, pools' devices respected (min sum price_k n_k s.t. sum_k x_kb = d_b,
    sum_b x_kb / cap_kb <= n_k, sum_k devices_k n_k <= pool devices)."""
    from scipy import optimize

    cands = [c for c in case.problem.candidates if c.role == "aggregated"]
    pairs = [
        (i, b, cap) for i, c in enumerate(cands) for b, cap in enumerate(c.max_rps_per_bucket) if cap > 0
    ]
    n_x, n_k = len(pairs), len(cands)
    # A minute the fleet cannot serve whole (the code trace's busiest minutes on the examples' fleet): the
    # unserved req/s u_b cost UNSERVED_PRICE each and the bound is the fleet's $ at that optimum (the
    # integer bound's plan likewise serves what the fleet can).
    n_b = len(demand_rps)
    cost = np.concatenate([np.zeros(n_x), [c.price_per_hour for c in cands], np.full(n_b, UNSERVED_PRICE)])
    a_eq = np.zeros((n_b, n_x + n_k + n_b))
    a_eq[:, n_x + n_k :] = np.eye(n_b)
    a_ub = np.zeros((n_k, n_x + n_k + n_b))
    for p, (i, b, cap) in enumerate(pairs):
        a_eq[b, p] = 1.0
        a_ub[i, p] = 1.0 / cap
    for i in range(n_k):
        a_ub[i, n_x + i] = -1.0
    pool_ids = sorted({c.pool for c in cands})
    a_pool = np.zeros((len(pool_ids), n_x + n_k + n_b))
    for i, c in enumerate(cands):
        a_pool[pool_ids.index(c.pool), n_x + i] = c.devices
    totals = {p.id: p.devices_total for p in case.problem.pools}
    result = optimize.linprog(
        cost,
        A_ub=np.vstack([a_ub, a_pool]),
        b_ub=np.concatenate([np.zeros(n_k), [totals[p] for p in pool_ids]]),
        A_eq=a_eq,
        b_eq=np.asarray(demand_rps),
        bounds=(0.0, None),
        method="highs",
    )
    if result.status != 0:
        raise SystemExit(f"{case.name}: fluid bound failed for {demand_rps}: {result.message}")
    return float(np.dot(cost[n_x : n_x + n_k], result.x[n_x : n_x + n_k]))


def oracle_breakdown(case: Case, replayed: dict[str, Any], interval_s: float) -> dict[str, float]:
    """The oracle's $ split: the fleet it asked for (price of the replicas it kept alive, per window) and
    what draining replicas cost after they were removed (the rest of its $)."""
    steps = replayed["steps"]
    alive = 0.0
    for i, step in enumerate(steps):
        until = steps[i + 1]["t"] if i + 1 < len(steps) else case.trace.duration_s
        alive += step["price_per_hour"] * max(0.0, until - step["t"]) / 3600.0
    return {"alive_fleet": alive, "drain_and_opening": replayed["dollars"] - alive}


ORACLE_INTERVAL_S = 30.0


def oracle(
    case: Case, churn: bool = True
) -> tuple[replay.Controller, dict[Any, int], dict[Any, tuple[float, ...]]]:
    """Zero-start-up oracle: every 30 s, the cheapest fleet for the next 30 s's actual demand (rate and
    mix), known in advance and ready at once, solved from what runs with the churn cost (so it adds and
    removes rather than reshuffling pools every window). Replayed with startup_s=0 and no margin, its
    attainment is what following the demand exactly at the solver's capacity reaches in the fleet model:
    the bound buys that fleet (per minute)."""
    from placement import simulate

    buckets = simulate.bucket_of(case.wl, case.trace.prompt, case.trace.output)
    window = (case.trace.ts // ORACLE_INTERVAL_S).astype(int)
    n_buckets = len(case.wl.buckets)
    demands: dict[int, tuple[float, ...]] = {}
    for w in range(int(window.max()) + 1):
        inside = buckets[(window == w) & (buckets >= 0)]
        counts = np.bincount(inside, minlength=n_buckets) / ORACLE_INTERVAL_S
        if counts.sum() > 0.0:
            demands[w] = tuple(float(x) for x in counts)
    options = inputs.SolveOptions(
        # churn=False (oracle-0s-fresh): the cheapest fleet of each window from scratch, no churn cost.
        move_penalty_per_device_hour=autoscale.Policy().move_penalty_per_device_hour if churn else 0.0,
        surge_shortfall_price_factor=autoscale.Policy().surge_shortfall_price_factor,
    )

    def plan_for(w: int, current: Any) -> allocation.Plan | None:
        if w not in demands:
            return None
        demand = replace(case.problem.services[0], bucket_rps=demands[w], min_replicas=0)
        problem = replace(case.problem, services=(demand,), current_replicas=dict(current))
        return solve.solve(problem, options)

    def control(now: float, obs: Any, current: Any, starting: Any) -> replay.Control:
        plan = plan_for(int(now // ORACLE_INTERVAL_S), current)
        if plan is None:
            return replay.Control({})
        return replay.Control(replay.targets_of(plan), replay.routing_of(plan))

    first = plan_for(0, {})
    return (
        control,
        replay.targets_of(first) if first else {},
        dict(replay.routing_of(first)) if first else {},
    )


def threshold_controller(
    case: Case, peak_rps: float, opening_rps: float
) -> tuple[replay.Controller, dict[Any, int]]:
    """HPA on KV usage / queue for one configuration (one Deployment on one pool), what KEDA users run.

    The configuration is the cheapest per req/s of the trace's mix among those that serve every request
    size in it and whose pool holds enough replicas for the peak minute, as a user sizing one
    Deployment would pick; it scales up to its pool's size.
    """
    pools = {p.id: p for p in case.problem.pools}

    def limit(c: inputs.Candidate) -> int:
        pool = pools[c.pool]
        return pool.nodes * (pool.devices_per_node // c.tp)

    usable = [c for c in case.problem.candidates if _mix_capacity(case, c) > 0.0]
    if not usable:
        raise SystemExit(f"{case.name}: no single configuration serves every request size")
    roomy = [c for c in usable if limit(c) * _mix_capacity(case, c) >= peak_rps]
    best = (
        min(roomy, key=lambda c: c.price_per_hour / _mix_capacity(case, c))
        if roomy
        else max(usable, key=lambda c: limit(c) * _mix_capacity(case, c))
    )
    start = min(limit(best), max(1, math.ceil(opening_rps / _mix_capacity(case, best))))
    return replay.threshold(best.key, max_replicas=limit(best)), {best.key: start}


def _mix_capacity(case: Case, cand: inputs.Candidate) -> float:
    """Req/s of the trace's size mix one replica sustains within the SLO (0: some size it cannot serve)."""
    mix = _mix(case.wl)
    if any(m > 0.0 and c <= 0.0 for m, c in zip(mix, cand.max_rps_per_bucket, strict=True)):
        return 0.0
    load = sum(m / c for m, c in zip(mix, cand.max_rps_per_bucket, strict=True) if m > 0.0)
    return 1.0 / load if load > 0.0 else 0.0


def run(
    case: Case, policy: autoscale.Policy, only: list[str] | None = None, yardsticks: bool = False
) -> dict[str, Any]:
    """All policies on one case."""
    rates = minute_rates(case.trace)
    peak_rps = float(np.percentile(rates, PEAK_QUANTILE))
    mean_rps = float(case.trace.ts.size / case.trace.duration_s)
    # Sized for the peak: the plan of the minute that needs the most (rate and request mix), i.e. the
    # most expensive minute of the hindsight bound; the 99th-percentile rate at the average mix
    # under-sizes minutes whose mix turns to long prompts.
    bound, curve, peak = hindsight(case)
    mean = plan_at(case, mean_rps)
    # Every autoscaler starts warm: sized for the opening minutes (the spec's requestsPerSecond a
    # platform team would write), so the comparison is about following the traffic, not a cold start.
    opening = max(float(rates[:OPENING_MINUTES].max()), 1e-3) * (1.0 + policy.headroom)
    first = plan_at(case, opening)
    traits = {case.problem.services[0].id: autoscale.ServiceTraits(SLO.ttft_p99_ms, SLO.itl_p99_ms)}
    common = {
        "interval_s": policy.interval_s,
        "startup_s": policy.startup_s,
        "reversal_window_s": policy.scale_down_window_s,
    }
    results: dict[str, Any] = {}
    log: list[autoscale.Decision] = []
    controllers: dict[str, tuple[replay.Controller, dict[Any, int]]] = {
        "chipfit": (replay.autoscaler(case.problem, traits, policy, log=log), replay.targets_of(first)),
        "static-peak": (replay.static(peak), replay.targets_of(peak)),
        "static-mean": (replay.static(mean), replay.targets_of(mean)),
        "threshold": threshold_controller(case, peak_rps, opening),
    }
    routing = {
        "chipfit": replay.routing_of(first),
        "static-peak": replay.routing_of(peak),
        "static-mean": replay.routing_of(mean),
        "threshold": None,
    }
    if only is None or "oracle-0s" in only:
        oracle_control, oracle_initial, oracle_routing = oracle(case)
        controllers["oracle-0s"] = (oracle_control, oracle_initial)
        routing["oracle-0s"] = oracle_routing
    if yardsticks and (only is None or "oracle-0s" in only):
        fresh_control, fresh_initial, fresh_routing = oracle(case, churn=False)
        controllers["oracle-0s-fresh"] = (fresh_control, fresh_initial)
        routing["oracle-0s-fresh"] = fresh_routing
    for name, (control, initial) in controllers.items():
        if only is not None and name not in only:
            continue
        started = time.perf_counter()
        # The oracle ticks at the start of each of its windows and starts replicas instantly.
        extra = (
            {
                "interval_s": ORACLE_INTERVAL_S,
                "startup_s": 0.0,
                "reversal_window_s": common["reversal_window_s"],
            }
            if name.startswith("oracle-0s")
            else common
        )
        res = replay.replay(
            case.problem, case.wl, SLO, case.trace, control, initial, initial_routing=routing[name], **extra
        )
        results[name] = {
            "attainment": res.attainment,
            "dollars": res.dollars,
            "device_hours": res.device_hours,
            "reversals": res.reversals,
            "refused": res.refused,
            "peak_devices": dict(res.peak_devices),
            "requests": res.requests,
            "seconds": time.perf_counter() - started,
            "steps": [
                {
                    "t": s.time_s,
                    "price_per_hour": s.price_per_hour,
                    "ready": s.ready,
                    "rps": s.observed_rps,
                    "direction": s.direction,
                    "replicas": {f"{k.pool}/{k.precision}/tp{k.tp}": v for k, v in s.replicas.items()},
                }
                for s in res.steps
            ],
        }
    results["hindsight-optimal"] = {"dollars": bound, "curve": curve}
    if yardsticks:
        # The bound's parts (REPORT_autoscaling.md 1): integrality (LP relaxation) and the window the demand
        # is averaged over (30 s: what the oracle follows). Every one is a yardstick, labelled; only the
        # 60 s integer one (= the bound above) and the LP ones are lower bounds on a policy that gives
        # each minute its mean demand's capacity.
        results["yardsticks"] = {
            "integer_60s": bound,
            "fluid_60s": window_bound(case, MINUTE_S, relaxed=True),
            "integer_30s": window_bound(case, ORACLE_INTERVAL_S, relaxed=False),
            "fluid_30s": window_bound(case, ORACLE_INTERVAL_S, relaxed=True),
        }
        if "oracle-0s" in results:
            results["yardsticks"]["oracle"] = oracle_breakdown(case, results["oracle-0s"], ORACLE_INTERVAL_S)
        if "oracle-0s-fresh" in results:
            results["yardsticks"]["oracle_fresh"] = oracle_breakdown(
                case, results["oracle-0s-fresh"], ORACLE_INTERVAL_S
            )
    chip = results["chipfit"]
    results["summary"] = {
        "case": case.name,
        "requests": case.trace.ts.size,
        "duration_s": case.trace.duration_s,
        "mean_rps": mean_rps,
        "peak_minute_rps": peak_rps,
        "static_peak_per_hour": peak.price_per_hour,
        "chipfit_vs_optimal": chip["dollars"] / bound if bound else None,
        "chipfit_saving_vs_peak": 1.0 - chip["dollars"] / results["static-peak"]["dollars"],
        "decisions": len(log),
        "solve_mean_s": float(np.mean([d.plan.solve_seconds for d in log if d.plan])) if log else None,
        "pools_used": sorted({k.pool for d in log for k in d.targets}),
        "reasons_sample": [d.services[0].reason for d in log if d.services[0].direction != "hold"][:5],
    }
    return results


def plot(results: dict[str, Any], out: Path) -> None:
    """$/h over time per policy, with the observed rate, one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_rate, ax_cost) = plt.subplots(2, 1, figsize=(10, 6.5), sharex=True)
    steps = results["chipfit"]["steps"]
    t = np.array([s["t"] for s in steps]) / 60.0
    ax_rate.plot(t, [s["rps"] for s in steps], color="black", label="observed req/s (1 min)")
    ax_rate.set_ylabel("req/s")
    ax_rate.legend(loc="upper left")
    for name in ("chipfit", "threshold", "static-peak", "static-mean"):
        st = results[name]["steps"]
        ax_cost.step(
            np.array([s["t"] for s in st]) / 60.0,
            [s["price_per_hour"] for s in st],
            where="post",
            label=f"{name} ({results[name]['attainment']:.1%} in SLO, ${results[name]['dollars']:.0f})",
        )
    curve = results["hindsight-optimal"]["curve"]
    ax_cost.step(
        [c[0] / 60.0 for c in curve],
        [c[1] for c in curve],
        where="post",
        linestyle=":",
        color="grey",
        label=f"hindsight-optimal bound (${results['hindsight-optimal']['dollars']:.0f})",
    )
    ups = [s["t"] / 60.0 for s in steps if s["direction"] in ("up", "move")]
    downs = [s["t"] / 60.0 for s in steps if s["direction"] == "down"]
    ax_cost.plot(ups, [0] * len(ups), "^", color="tab:green", label="chipfit up/move")
    ax_cost.plot(downs, [0] * len(downs), "v", color="tab:red", label="chipfit down")
    ax_cost.set_ylabel("fleet $/h")
    ax_cost.set_xlabel("minutes")
    ax_cost.legend(loc="upper left", fontsize=7)
    fig.suptitle(f"{results['summary']['case']}: {MODEL}, p99 TTFT {SLO.ttft_p99_ms:.0f} ms")
    fig.tight_layout()
    fig.savefig(out, dpi=90)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print a table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trace", nargs="+", default=["conv", "code"], choices=sorted(TRACES))
    parser.add_argument("--scale", type=int, default=5)
    parser.add_argument("--startup-s", type=float, default=autoscale.DEFAULT_STARTUP_S)
    parser.add_argument("--span", choices=SPANS, default="all", help="tune: first 30 min; holdout: the rest")
    parser.add_argument(
        "--set", action="append", default=[], metavar="KNOB=VALUE", help="override a Policy knob (tuning)"
    )
    parser.add_argument(
        "--policies", nargs="+", default=None, help="only these policies (tuning runs: chipfit static-peak)"
    )
    parser.add_argument(
        "--fleet", choices=FLEETS, default="examples", help=f"uncapped: {UNCAPPED_NODES_FACTOR}x the nodes"
    )
    parser.add_argument("--yardsticks", action="store_true", help="the bound's parts (fluid, 30 s windows)")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--plot", type=Path, help="directory for one PNG per case")
    args = parser.parse_args(argv)
    overrides = {k: float(v) for k, v in (item.split("=", 1) for item in args.set)}
    if "scale_down_window_s" in overrides:
        overrides.setdefault("reversal_window_s", overrides["scale_down_window_s"])
    policy = autoscale.Policy(startup_s=args.startup_s, **overrides)
    pools = fleet_pools(args.fleet)
    everything: dict[str, Any] = {}
    print(f"{'case':12} {'policy':18} {'in SLO':>8} {'$':>9} {'GPU-h':>8} {'reversals':>9} {'refused':>8}")
    for name in args.trace:
        case = build_case(name, args.scale, pools, args.span)
        if args.fleet != "examples":
            case = replace(case, name=f"{case.name}-{args.fleet}")
        results = run(case, policy, args.policies, args.yardsticks)
        everything[case.name] = results
        for pol in ("chipfit", "threshold", "static-peak", "static-mean", "oracle-0s", "oracle-0s-fresh"):
            if pol not in results:
                continue
            r = results[pol]
            print(
                f"{case.name:12} {pol:18} {r['attainment']:8.2%} {r['dollars']:9.2f} "
                f"{r['device_hours']:8.1f} {r['reversals']:9d} {r['refused']:8d}"
            )
        print(
            f"{case.name:12} {'hindsight-optimal':18} {'':>8} {results['hindsight-optimal']['dollars']:9.2f}"
        )
        if "yardsticks" in results:
            y = results["yardsticks"]
            print(
                f"  yardsticks: integer 60 s {y['integer_60s']:.2f}, fluid 60 s {y['fluid_60s']:.2f}, "
                f"integer 30 s {y['integer_30s']:.2f}, fluid 30 s {y['fluid_30s']:.2f}"
                + (
                    f"; oracle alive fleet {y['oracle']['alive_fleet']:.2f} + drain/opening "
                    f"{y['oracle']['drain_and_opening']:.2f}"
                    if "oracle" in y
                    else ""
                )
                + (
                    f"; fresh oracle alive fleet {y['oracle_fresh']['alive_fleet']:.2f} + drain/opening "
                    f"{y['oracle_fresh']['drain_and_opening']:.2f}"
                    if "oracle_fresh" in y
                    else ""
                )
            )
        s = results["summary"]
        print(
            f"  chipfit: {s['chipfit_vs_optimal']:.3f}x the bound, saving "
            f"{s['chipfit_saving_vs_peak']:.1%} against "
            f"static-peak; peak minute {s['peak_minute_rps']:.1f} req/s, mean {s['mean_rps']:.1f}; pools "
            f"{', '.join(s['pools_used'])}; mean solve {s['solve_mean_s']:.3f} s"
        )
        if args.plot:
            args.plot.mkdir(parents=True, exist_ok=True)
            plot(results, args.plot / f"autoscaling_{case.name}.png")
            plot(results, args.plot / f"autoscaling_{case.name}.svg")
    if args.json:
        args.json.write_text(json.dumps(everything, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
