"""Trace replay through a discrete-event model of one service's fleet, driven by a scaling controller.

The fleet model: each replica of a configuration is a continuous-batching server whose concurrent work
is bounded by the performance model's SLO-bounded capacity. A request of bucket b on configuration k
holds its replica for its own duration (TTFT plus output tokens x ITL, both the model's p99 at capacity)
and takes a share 1 / (cap[k, b] * mean duration of b) of the replica's batch, so a replica that admits
up to a full batch serves exactly cap[k, b] req/s (Little's law) within the SLO. A request that finds no
ready replica with room waits in one FIFO queue (the gateway's); its TTFT is the wait plus the model's
TTFT, and it is within the SLO when that is within the TTFT SLO (ITL holds by construction while the
batch is within its bound). New replicas become ready `startup_s` after they are asked for and cost from
that moment (the pod holds its devices while it starts); removed replicas stop admitting and cost until
their in-flight requests finish (graceful drain). Starting replicas are cancelled first.

Every `interval_s` the controller sees what Prometheus would show (rate and size mix over the last
minute, p99 TTFT and ITL of the requests started in it, waiting requests, batch occupancy as KV usage)
and returns replicas per configuration. `autoscaler` wraps placement.autoscale.decide, the function the
operator calls, so the replay measures the operator's decisions.

Only aggregated configurations are modelled (a prefill/decode pair would need a second queue).
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import ArrayLike, NDArray

from placement import autoscale, simulate, solve, workload

Targets = Mapping[solve.CandidateKey, int]
# (now, observation, replicas per configuration (alive), starting ones) -> target replicas.
Controller = Callable[[float, autoscale.Observation, Targets, Targets], Targets]

# Prometheus' rate() window most dashboards and autoscaler guides use: rate(...[1m]).
OBSERVATION_WINDOW_S = 60.0


class ReplayError(ValueError):
    """The trace, fleet or controller cannot be replayed; the message names the field."""


@dataclass(frozen=True)
class Trace:
    """Arrival times (s from start, sorted), prompt and output tokens per request."""

    ts: NDArray[np.float64]
    prompt: NDArray[np.float64]
    output: NDArray[np.float64]

    @staticmethod
    def of(ts: ArrayLike, prompt: ArrayLike, output: ArrayLike) -> Trace:
        """A validated, time-sorted trace."""
        t = np.asarray(ts, dtype=np.float64)
        p = np.asarray(prompt, dtype=np.float64)
        o = np.asarray(output, dtype=np.float64)
        if t.ndim != 1 or not (t.shape == p.shape == o.shape):
            raise ReplayError("trace: timestamps, prompt and output tokens must be 1-D and equally long")
        if t.size and not (np.isfinite(t).all() and np.isfinite(p).all() and np.isfinite(o).all()):
            raise ReplayError("trace: timestamps and token counts must be finite")
        if t.size and ((p < 0).any() or (o < 0).any()):
            raise ReplayError("trace: token counts must be >= 0")
        order = np.argsort(t, kind="stable")
        t = t[order]
        return Trace(t - (t[0] if t.size else 0.0), p[order], o[order])

    @property
    def duration_s(self) -> float:
        """Time of the last arrival."""
        return float(self.ts[-1]) if self.ts.size else 0.0


@dataclass(frozen=True)
class Slo:
    """The service's p99 targets."""

    ttft_p99_ms: float
    itl_p99_ms: float


@dataclass(frozen=True)
class Step:
    """The fleet at one decision."""

    time_s: float
    replicas: Mapping[solve.CandidateKey, int]
    ready: int
    observed_rps: float
    price_per_hour: float
    direction: str


@dataclass
class Result:
    """What a replay measured."""

    requests: int
    met: int
    # Requests whose bucket no configuration of the fleet serves (counted as misses).
    unservable: int
    dollars: float
    device_hours: float
    duration_s: float
    steps: list[Step] = field(default_factory=list)
    ttft_ms: NDArray[np.float64] = field(default_factory=lambda: np.zeros(0))
    # Scale-direction reversals of one configuration (down after up, or up after down) within the window.
    reversals: int = 0

    @property
    def attainment(self) -> float:
        """Fraction of requests within the SLO."""
        return self.met / self.requests if self.requests else 1.0


@dataclass
class _Replica:
    key: solve.CandidateKey
    created_s: float
    ready_s: float
    free: float = 1.0
    inflight: int = 0
    draining: bool = False
    ended_s: float | None = None


@dataclass(frozen=True)
class _Config:
    cap: NDArray[np.float64]  # max req/s per bucket
    units: NDArray[np.float64]  # batch share per request, per bucket
    ttft_s: NDArray[np.float64]
    itl_s: NDArray[np.float64]
    price_per_hour: float
    devices: int


def _configs(
    problem: solve.Problem, wl: workload.BucketedWorkload, slo: Slo
) -> dict[solve.CandidateKey, _Config]:
    """Per aggregated candidate: capacity, batch share, TTFT and ITL per bucket."""
    out: dict[solve.CandidateKey, _Config] = {}
    out_mean = np.array([b.output_mean_tokens for b in wl.buckets], dtype=np.float64)
    for c in problem.candidates:
        if c.role != "aggregated":
            continue
        cap = np.asarray(c.max_rps_per_bucket, dtype=np.float64)
        n = cap.size

        def per_bucket(values: Sequence[float | None], default_ms: float, n: int = n) -> NDArray[np.float64]:
            vals = list(values) + [None] * (n - len(values))
            return np.array([(v if v is not None else default_ms) / 1000.0 for v in vals[:n]])

        ttft = per_bucket(c.ttft_p99_ms_per_bucket, slo.ttft_p99_ms)
        itl = per_bucket(c.itl_p99_ms_per_bucket, slo.itl_p99_ms)
        hold = ttft + out_mean * itl
        with np.errstate(divide="ignore"):
            units = np.where(cap > 0.0, 1.0 / np.maximum(cap * hold, 1e-300), np.inf)
        out[c.key] = _Config(cap, units, ttft, itl, c.price_per_hour, c.devices)
    return out


def replay(
    problem: solve.Problem,
    wl: workload.BucketedWorkload,
    slo: Slo,
    trace: Trace,
    controller: Controller,
    initial: Targets,
    *,
    interval_s: float = autoscale.DEFAULT_INTERVAL_S,
    startup_s: float = autoscale.DEFAULT_STARTUP_S,
    reversal_window_s: float = autoscale.DEFAULT_SCALE_DOWN_WINDOW_S,
) -> Result:
    """Replay `trace` through the fleet of `problem`'s single service, scaled by `controller`.

    `initial` replicas are ready at time 0. The replay runs until the last request finishes.
    """
    if len(problem.services) != 1:
        raise ReplayError(f"problem.services: replay models one service, got {len(problem.services)}")
    if interval_s <= 0.0 or startup_s < 0.0:
        raise ReplayError("interval_s must be > 0 and startup_s >= 0")
    configs = _configs(problem, wl, slo)
    for key in initial:
        if key not in configs:
            raise ReplayError(f"initial: {key} is not an aggregated candidate of the problem")
    n = trace.ts.size
    buckets = simulate.bucket_of(wl, trace.prompt, trace.output)
    n_buckets = len(wl.buckets)

    replicas: list[_Replica] = []
    for key, count in initial.items():
        replicas.extend(_Replica(key, 0.0, 0.0) for _ in range(count))
    completions: list[tuple[float, int, int, float]] = []  # (time, seq, replica index, units)
    readies: list[tuple[float, int]] = []
    seq = 0
    queue: deque[int] = deque()
    start_s = np.full(n, np.nan)
    ttft_ms = np.full(n, np.inf)
    itl_ms = np.full(n, np.inf)

    def try_start(r: int, now: float) -> bool:
        nonlocal seq
        b = int(buckets[r])
        if b < 0:
            return False
        best = -1
        best_free = -math.inf
        for i, rep in enumerate(replicas):
            if rep.draining or rep.ended_s is not None or rep.ready_s > now:
                continue
            u = configs[rep.key].units[b]
            if rep.free + 1e-12 >= u and rep.free > best_free:
                best, best_free = i, rep.free
        if best < 0:
            return False
        rep = replicas[best]
        cfg = configs[rep.key]
        u = float(cfg.units[b])
        rep.free -= u
        rep.inflight += 1
        start_s[r] = now
        ttft_ms[r] = (now - trace.ts[r] + cfg.ttft_s[b]) * 1000.0
        itl_ms[r] = cfg.itl_s[b] * 1000.0
        done = now + float(cfg.ttft_s[b] + trace.output[r] * cfg.itl_s[b])
        seq += 1
        heapq.heappush(completions, (done, seq, best, u))
        return True

    def drain_queue(now: float) -> None:
        while queue and try_start(queue[0], now):
            queue.popleft()

    def alive() -> dict[solve.CandidateKey, int]:
        out: dict[solve.CandidateKey, int] = {}
        for rep in replicas:
            if not rep.draining and rep.ended_s is None:
                out[rep.key] = out.get(rep.key, 0) + 1
        return out

    def apply(targets: Targets, now: float) -> None:
        for key in targets:
            if key not in configs:
                raise ReplayError(f"controller: {key} is not an aggregated candidate of the problem")
        have = alive()
        for key in set(have) | set(targets):
            want = max(0, int(targets.get(key, 0)))
            diff = want - have.get(key, 0)
            if diff > 0:
                for _ in range(diff):
                    replicas.append(_Replica(key, now, now + startup_s))
                    heapq.heappush(readies, (now + startup_s, len(replicas) - 1))
            elif diff < 0:
                mine = [
                    i
                    for i, rep in enumerate(replicas)
                    if rep.key == key and not rep.draining and rep.ended_s is None
                ]
                # Cancel starting replicas first, then the least busy ready ones.
                mine.sort(key=lambda i: (replicas[i].ready_s <= now, replicas[i].inflight))
                for i in mine[:-diff]:
                    rep = replicas[i]
                    rep.draining = True
                    if rep.inflight == 0:
                        rep.ended_s = now

    steps: list[Step] = []
    history: dict[solve.CandidateKey, list[tuple[float, int]]] = {}
    t_next_tick = interval_s
    i_arrival = 0
    now = 0.0
    end_of_trace = trace.duration_s
    while True:
        t_arr = float(trace.ts[i_arrival]) if i_arrival < n else math.inf
        t_done = completions[0][0] if completions else math.inf
        t_ready = readies[0][0] if readies else math.inf
        t_tick = t_next_tick if t_next_tick <= end_of_trace else math.inf
        now = min(t_arr, t_done, t_ready, t_tick)
        if now == math.inf:
            break
        if now == t_done:
            _, _, i, u = heapq.heappop(completions)
            rep = replicas[i]
            rep.free += u
            rep.inflight -= 1
            if rep.draining and rep.inflight == 0:
                rep.ended_s = now
            drain_queue(now)
        elif now == t_ready:
            heapq.heappop(readies)
            drain_queue(now)
        elif now == t_arr:
            r = i_arrival
            i_arrival += 1
            if queue or not try_start(r, now):
                queue.append(r)
                drain_queue(now)
        else:
            t_next_tick += interval_s
            obs = _observation(trace, buckets, n_buckets, start_s, ttft_ms, itl_ms, queue, replicas, now)
            current = alive()
            starting = {k: 0 for k in current}
            for rep in replicas:
                if not rep.draining and rep.ended_s is None and rep.ready_s > now:
                    starting[rep.key] += 1
            targets = dict(controller(now, obs, current, {k: v for k, v in starting.items() if v}))
            apply(targets, now)
            after = alive()
            for key in set(current) | set(after):
                if after.get(key, 0) != current.get(key, 0):
                    history.setdefault(key, []).append((now, after.get(key, 0) - current.get(key, 0)))
            price = sum(configs[k].price_per_hour * v for k, v in after.items())
            ready = sum(
                1 for rep in replicas if rep.ended_s is None and not rep.draining and rep.ready_s <= now
            )
            moved = autoscale.direction(current, after)
            steps.append(Step(now, after, ready, obs.requests_per_second or 0.0, price, moved))
            drain_queue(now)
    end = max(now, end_of_trace)
    dollars = 0.0
    device_hours = 0.0
    for rep in replicas:
        hours = ((rep.ended_s if rep.ended_s is not None else end) - rep.created_s) / 3600.0
        dollars += hours * configs[rep.key].price_per_hour
        device_hours += hours * configs[rep.key].devices
    met = int(((ttft_ms <= slo.ttft_p99_ms * (1.0 + 1e-9)) & (itl_ms <= slo.itl_p99_ms * (1.0 + 1e-9))).sum())
    return Result(
        requests=n,
        met=met,
        unservable=int((buckets < 0).sum()),
        dollars=dollars,
        device_hours=device_hours,
        duration_s=end,
        steps=steps,
        ttft_ms=ttft_ms,
        reversals=_reversals(history, reversal_window_s),
    )


def _reversals(history: Mapping[solve.CandidateKey, list[tuple[float, int]]], window_s: float) -> int:
    """Changes of one configuration opposite in sign to its previous change, within the window."""
    count = 0
    for changes in history.values():
        for (t0, d0), (t1, d1) in itertools.pairwise(changes):
            if (d0 > 0) != (d1 > 0) and t1 - t0 < window_s:
                count += 1
    return count


def _observation(
    trace: Trace,
    buckets: NDArray[np.int64],
    n_buckets: int,
    start_s: NDArray[np.float64],
    ttft_ms: NDArray[np.float64],
    itl_ms: NDArray[np.float64],
    queue: deque[int],
    replicas: Sequence[_Replica],
    now: float,
) -> autoscale.Observation:
    """What Prometheus would show over the last observation window."""
    lo = int(np.searchsorted(trace.ts, now - OBSERVATION_WINDOW_S, side="right"))
    hi = int(np.searchsorted(trace.ts, now, side="right"))
    window = min(OBSERVATION_WINDOW_S, max(now, 1e-9))
    b = buckets[lo:hi]
    share = None
    if b.size and (b >= 0).any():
        counts = np.bincount(b[b >= 0], minlength=n_buckets).astype(np.float64)
        share = tuple(float(x) for x in counts / counts.sum())
    started = np.flatnonzero((start_s >= now - OBSERVATION_WINDOW_S) & (start_s <= now))
    # Requests still queued have waited at least this long for their first token.
    ttfts = np.concatenate([ttft_ms[started], [(now - float(trace.ts[r])) * 1000.0 for r in queue]])
    ready = [rep for rep in replicas if rep.ended_s is None and not rep.draining and rep.ready_s <= now]
    return autoscale.Observation(
        requests_per_second=(hi - lo) / window,
        bucket_share=share,
        ttft_p99_ms=float(np.percentile(ttfts, 99)) if ttfts.size else None,
        itl_p99_ms=float(np.percentile(itl_ms[started], 99)) if started.size else None,
        waiting=float(len(queue)),
        running=float(sum(rep.inflight for rep in replicas)),
        kv_usage=1.0 - sum(rep.free for rep in ready) / len(ready) if ready else None,
    )


def autoscaler(
    problem: solve.Problem,
    traits: Mapping[str, autoscale.ServiceTraits],
    policy: autoscale.Policy | None = None,
    *,
    log: list[autoscale.Decision] | None = None,
) -> Controller:
    """A controller that calls placement.autoscale.decide, the operator's decision function."""
    state = [autoscale.State()]
    sid = problem.services[0].id

    def control(now: float, obs: autoscale.Observation, current: Targets, starting: Targets) -> Targets:
        decision = autoscale.decide(
            problem, traits, state[0], {sid: obs}, current, now, policy, starting=starting
        )
        state[0] = decision.state
        if log is not None:
            log.append(decision)
        return decision.targets

    return control


def static(targets: Targets) -> Controller:
    """A fixed fleet."""
    fixed = dict(targets)

    def control(now: float, obs: autoscale.Observation, current: Targets, starting: Targets) -> Targets:
        return fixed

    return control


# KEDA / HPA defaults for the threshold autoscaler: target average KV-cache usage and waiting requests
# per replica (llm-d's and KServe's vLLM autoscaling guides scale on vllm:gpu_cache_usage_perc and
# vllm:num_requests_waiting), HPA's 300 s scale-down stabilization and 10% tolerance.
THRESHOLD_KV_USAGE = 0.7
THRESHOLD_WAITING_PER_REPLICA = 2.0


def threshold(
    key: solve.CandidateKey,
    *,
    kv_target: float = THRESHOLD_KV_USAGE,
    waiting_target: float = THRESHOLD_WAITING_PER_REPLICA,
    min_replicas: int = 1,
    max_replicas: int | None = None,
    scale_down_window_s: float = autoscale.DEFAULT_SCALE_DOWN_WINDOW_S,
    tolerance: float = autoscale.DEFAULT_TOLERANCE,
) -> Controller:
    """The HPA algorithm on KV usage and queue length for one configuration (what KEDA users set up)."""
    recommendations: list[tuple[float, int]] = []

    def control(now: float, obs: autoscale.Observation, current: Targets, starting: Targets) -> Targets:
        have = current.get(key, 0)
        ready = max(have - starting.get(key, 0), 1)
        desired = have
        kv = obs.kv_usage
        if kv is not None and abs(kv / kv_target - 1.0) > tolerance:
            desired = math.ceil(ready * kv / kv_target)
        waiting = obs.waiting or 0.0
        if waiting / ready > waiting_target:
            desired = max(desired, math.ceil(ready * (waiting / ready) / waiting_target))
        desired = max(min_replicas, desired)
        if max_replicas is not None:
            desired = min(max_replicas, desired)
        recommendations.append((now, desired))
        while recommendations and recommendations[0][0] <= now - scale_down_window_s:
            recommendations.pop(0)
        # HPA scale-down stabilization: the highest recommendation in the window.
        if desired < have:
            desired = min(have, max(r for _, r in recommendations))
        return {key: desired}

    return control
