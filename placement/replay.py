"""Trace replay through a discrete-event model of one service's fleet, driven by a scaling controller.

The fleet model: each replica of a configuration is a continuous-batching server with batch slots. The
performance model's SLO-bounded capacity cap[k, b] already prices the queueing of a Poisson stream up to
that rate (its p99 TTFT and ITL at capacity are within the SLO), so the fleet model must not charge it
again: a replica admits up to the 99th percentile of the concurrency a Poisson stream at its capacity
reaches (mean + 2.33 sqrt(mean), the mean from Little's law over the workload's mix), and a request
holds a slot for its share of the replica's throughput, so a full replica serves at most
SATURATION_MAX x cap (an assumption: the model does not say how fast latency degrades above capacity).
A steady stream at capacity keeps >= 99% within the SLO, one at 1.3x capacity a few percent
(benchmarks/replay_calibration.py). A request's TTFT is the model's p99 TTFT at capacity plus the part
of its wait for a slot beyond the queueing the model priced (queue_tolerance x the TTFT SLO); no
request is lost (served within the SLO, served late, or never served: all counted). The gateway routes
by the plan's per-bucket shares and spills a request whose routed configuration has no free slot to the
cheapest replica with one (a load-aware endpoint picker). New replicas become ready `startup_s` after
they are asked for and cost from that moment (the pod holds its devices while it starts); removed
replicas stop admitting and cost, and hold their devices, until their in-flight requests finish
(graceful drain); starting replicas are cancelled first. A pool never holds more devices than it has:
an addition without room (make-before-break into a full pool) is not created and is counted as refused.

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

from placement import autoscale, simulate, workload
from placement.solver import allocation, inputs

Targets = Mapping[inputs.CandidateKey, int]
# Req/s per bucket the plan routes to each configuration (the solver's Assignment.bucket_rps).
Routing = Mapping[inputs.CandidateKey, Sequence[float]]


@dataclass(frozen=True)
class Control:
    """A controller's answer: replicas per configuration and, when it has a plan, its routing."""

    targets: Targets
    routing: Routing | None = None


# (now, observation, replicas per configuration (alive), starting ones) -> what to run.
Controller = Callable[[float, autoscale.Observation, Targets, Targets], Control]


def targets_of(plan: allocation.Plan) -> dict[inputs.CandidateKey, int]:
    """Replicas per configuration in a plan."""
    out: dict[inputs.CandidateKey, int] = {}
    for sp in plan.services:
        for a in sp.assignments:
            if a.replicas:
                key = inputs.CandidateKey(a.service, a.role, a.pool, a.precision, a.tp)
                out[key] = out.get(key, 0) + a.replicas
    return out


def routing_of(plan: allocation.Plan) -> dict[inputs.CandidateKey, tuple[float, ...]]:
    """The plan's req/s per bucket per configuration."""
    out: dict[inputs.CandidateKey, tuple[float, ...]] = {}
    for sp in plan.services:
        for a in sp.assignments:
            key = inputs.CandidateKey(a.service, a.role, a.pool, a.precision, a.tp)
            old = out.get(key)
            out[key] = (
                a.bucket_rps if old is None else tuple(x + y for x, y in zip(old, a.bucket_rps, strict=True))
            )
    return out


# Prometheus' rate() window most dashboards and autoscaler guides use: rate(...[1m]).
OBSERVATION_WINDOW_S = 60.0
# Admission waits up to this share of the TTFT SLO count as the queueing the capacity model already
# priced (its max req/s keeps p99 TTFT, queueing included, within the SLO); longer waits add to the TTFT.
DEFAULT_QUEUE_TOLERANCE = 0.25
# z of the 99th percentile of a normal: a replica admits the concurrency a Poisson stream at its capacity
# reaches 99% of the time (the model's p99 promise at capacity covers that fluctuation).
POISSON_P99_Z = 2.326
# Those extra slots let a full replica serve up to slots / mean slots x its capacity (1 + 2.33 / sqrt(mean):
# 1.13-1.17x for the 70B replicas of the benchmark, up to 4x for a replica of one slot). Above its
# SLO-bounded rate an engine's latency leaves the SLO; the model does not say how fast, so a replica never
# serves more than this multiple of its capacity (an assumption; REPORT_autoscaling.md shows its effect).
SATURATION_MAX = 1.25


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
    replicas: Mapping[inputs.CandidateKey, int]
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
    # Replicas a controller asked for that their pool had no free devices for (not created).
    refused: int = 0
    # Highest devices in use per pool at any decision (starting, serving and draining replicas).
    peak_devices: Mapping[str, int] = field(default_factory=dict)

    @property
    def attainment(self) -> float:
        """Fraction of requests within the SLO."""
        return self.met / self.requests if self.requests else 1.0


@dataclass
class _Replica:
    key: inputs.CandidateKey
    created_s: float
    ready_s: float
    # When each batch slot frees (a min-heap): the replica runs `slots` requests at once.
    lanes: list[float] = field(default_factory=list)
    # The last admitted request finishes decoding at this time (the drain ends then).
    last_finish_s: float = 0.0
    draining: bool = False
    ended_s: float | None = None

    def serving(self, now: float) -> bool:
        return not self.draining and self.ended_s is None and self.ready_s <= now


@dataclass(frozen=True)
class _Config:
    work_s: NDArray[np.float64]  # replica-seconds per request, per bucket: 1 / max req/s (inf: cannot)
    # How long a request holds a batch slot, in units of its work: max(mean concurrency at capacity,
    # slots / SATURATION_MAX), so `slots` busy slots serve at most SATURATION_MAX x the capacity.
    hold_slots: float
    # Batch slots the replica admits within the SLO: the 99th percentile of the concurrency a Poisson stream
    # at capacity reaches (mean + 2.33 sqrt(mean), square-root staffing), the fluctuation the performance
    # model's p99 at capacity already priced; beyond it a request waits for a slot.
    slots: int
    ttft_s: NDArray[np.float64]
    itl_s: NDArray[np.float64]
    price_per_hour: float
    devices: int


def _configs(
    problem: inputs.FleetProblem, wl: workload.BucketedWorkload, slo: Slo
) -> dict[inputs.CandidateKey, _Config]:
    """Per aggregated candidate: work, TTFT and ITL per bucket, and its batch slots."""
    out: dict[inputs.CandidateKey, _Config] = {}
    share = np.asarray(wl.bucket_rps, dtype=np.float64)
    share = share / share.sum() if share.sum() > 0.0 else np.full(share.size, 1.0 / max(share.size, 1))
    out_mean = np.array([b.output_mean_tokens for b in wl.buckets], dtype=np.float64)
    for c in problem.candidates:
        if c.role != "aggregated":
            continue
        cap = np.asarray(c.max_rps_per_bucket, dtype=np.float64)
        n = cap.size

        def per_bucket(values: Sequence[float | None], default_ms: float, n: int = n) -> NDArray[np.float64]:
            vals = list(values) + [None] * (n - len(values))
            return np.array([(v if v is not None else default_ms) / 1000.0 for v in vals[:n]])

        with np.errstate(divide="ignore"):
            work = np.where(cap > 0.0, 1.0 / np.maximum(cap, 1e-300), np.inf)
        ttft = per_bucket(c.ttft_p99_ms_per_bucket, slo.ttft_p99_ms)
        itl = per_bucket(c.itl_p99_ms_per_bucket, slo.itl_p99_ms)
        served = (cap > 0.0) & (share > 0.0)
        # Little's law at capacity over the buckets it serves: rate x time in the engine.
        mix = share[served] / share[served].sum() if served.any() else share[served]
        rate = 1.0 / float((mix * work[served]).sum()) if served.any() else 0.0
        hold = float((mix * (ttft[served] + out_mean[served] * itl[served])).sum()) if served.any() else 0.0
        mean_slots = max(1.0, rate * hold)
        slots = math.ceil(mean_slots + POISSON_P99_Z * math.sqrt(mean_slots))
        hold_slots = max(mean_slots, slots / SATURATION_MAX)
        out[c.key] = _Config(work, hold_slots, slots, ttft, itl, c.price_per_hour, c.devices)
    return out


def replay(
    problem: inputs.FleetProblem,
    wl: workload.BucketedWorkload,
    slo: Slo,
    trace: Trace,
    controller: Controller,
    initial: Targets,
    *,
    interval_s: float = autoscale.DEFAULT_INTERVAL_S,
    startup_s: float = autoscale.DEFAULT_STARTUP_S,
    reversal_window_s: float = autoscale.DEFAULT_SCALE_DOWN_WINDOW_S,
    initial_routing: Routing | None = None,
    queue_tolerance: float = DEFAULT_QUEUE_TOLERANCE,
    seed: int = 0,
) -> Result:
    """Replay `trace` through the fleet of `problem`'s single service, scaled by `controller`.

    `initial` replicas are ready at time 0; the controller runs every `interval_s` until the last arrival.
    """
    if len(problem.services) != 1:
        raise ReplayError(f"problem.services: replay models one service, got {len(problem.services)}")
    if interval_s <= 0.0 or startup_s < 0.0:
        raise ReplayError("interval_s must be > 0 and startup_s >= 0")
    if not 0.0 <= queue_tolerance <= 1.0:
        raise ReplayError(f"queue_tolerance: must be in [0, 1], got {queue_tolerance}")
    configs = _configs(problem, wl, slo)
    for key in initial:
        if key not in configs:
            raise ReplayError(f"initial: {key} is not an aggregated candidate of the problem")
    n = trace.ts.size
    buckets = simulate.bucket_of(wl, trace.prompt, trace.output)
    n_buckets = len(wl.buckets)
    tolerance_s = queue_tolerance * slo.ttft_p99_ms / 1000.0

    def new_replica(key: inputs.CandidateKey, created: float, ready: float) -> _Replica:
        return _Replica(key, created, ready, lanes=[ready] * configs[key].slots)

    pool_devices = {p.id: p.devices_total for p in problem.pools}
    refused = [0]
    replicas: list[_Replica] = [
        new_replica(key, 0.0, 0.0) for key, count in initial.items() for _ in range(count)
    ]
    for pool_id, used in _devices(initial, configs).items():
        if used > pool_devices.get(pool_id, 0):
            raise ReplayError(
                f"initial: {used} devices in pool {pool_id}, which has {pool_devices.get(pool_id, 0)}"
            )
    readies: list[float] = []
    queue: deque[int] = deque()
    route: list[Routing | None] = [initial_routing]
    rng = np.random.default_rng(seed)
    start_s = np.full(n, np.nan)
    wait_s = np.full(n, np.inf)
    ttft_ms = np.full(n, np.inf)
    itl_ms = np.full(n, np.inf)
    rep_of = np.full(n, -1, dtype=np.int64)
    work_of = np.zeros(n)

    def pick(b: int, now: float, only: inputs.CandidateKey | None) -> int:
        # Configuration `only`: its ready replica with the shortest work queue. Any configuration: the
        # cheapest place for this request ($ x its work) among those with a free slot, then among those
        # that admit it within tolerance, else the shortest wait.
        best = -1
        best_score = (math.inf, math.inf, math.inf)
        for i, rep in enumerate(replicas):
            if not rep.serving(now) or (only is not None and rep.key != only):
                continue
            cfg = configs[rep.key]
            work = cfg.work_s[b]
            if not math.isfinite(work):
                continue
            wait = max(0.0, rep.lanes[0] - now)
            score = (
                (0.0, 0.0, wait)
                if only is not None
                else (float(wait > 0.0) + float(wait > tolerance_s), cfg.price_per_hour * work, wait)
            )
            if score < best_score:
                best, best_score = i, score
        return best

    def admit(r: int, now: float, routed: bool = True) -> bool:
        b = int(buckets[r])
        if b < 0:
            return False
        best = -1
        weights = route[0]
        if routed and weights:
            # The plan's routing for this bucket: a configuration drawn with its share of the bucket.
            keys = [k for k, w in weights.items() if b < len(w) and w[b] > 0.0]
            if keys:
                w = np.array([weights[k][b] for k in keys])
                best = pick(b, now, keys[int(rng.choice(len(keys), p=w / w.sum()))])
        # A routed configuration with no free batch slot (the mix shifted since the plan, or its new
        # replicas are still starting): a load-aware gateway (the Inference Extension's endpoint picker
        # scores queue length and KV usage) sends it to the cheapest replica with a free slot, else the
        # cheapest that admits it within the tolerance, else the shortest wait.
        if best < 0 or replicas[best].lanes[0] > now:
            other = pick(b, now, None)
            if other >= 0 and (best < 0 or replicas[other].lanes[0] < replicas[best].lanes[0]):
                best = other
        if best < 0:
            return False
        rep = replicas[best]
        cfg = configs[rep.key]
        # The slot that frees first takes it for its share of the replica's throughput: slots x work.
        begin = max(now, rep.lanes[0])
        heapq.heapreplace(rep.lanes, begin + cfg.hold_slots * float(cfg.work_s[b]))
        wait = begin - float(trace.ts[r])
        rep.last_finish_s = max(
            rep.last_finish_s,
            begin + float(cfg.ttft_s[b] + trace.output[r] * cfg.itl_s[b]),
            rep.lanes[-1],
        )
        start_s[r] = begin
        wait_s[r] = wait
        rep_of[r] = best
        work_of[r] = float(cfg.work_s[b])
        # Waits within the tolerance are the queueing the capacity model already priced; beyond it they
        # add to the model's TTFT.
        ttft_ms[r] = (float(cfg.ttft_s[b]) + max(0.0, wait - tolerance_s)) * 1000.0
        itl_ms[r] = float(cfg.itl_s[b]) * 1000.0
        return True

    def drain_queue(now: float) -> None:
        for _ in range(len(queue)):
            r = queue.popleft()
            if not admit(r, now, routed=False):
                queue.append(r)

    def alive() -> dict[inputs.CandidateKey, int]:
        out: dict[inputs.CandidateKey, int] = {}
        for rep in replicas:
            if not rep.draining and rep.ended_s is None:
                out[rep.key] = out.get(rep.key, 0) + 1
        return out

    def devices_in_use(now: float) -> dict[str, int]:
        # A draining replica holds its devices until its last request finishes.
        used: dict[str, int] = {}
        for rep in replicas:
            if rep.ended_s is None or rep.ended_s > now:
                used[rep.key.pool] = used.get(rep.key.pool, 0) + configs[rep.key].devices
        return used

    def apply(targets: Targets, now: float) -> None:
        for key in targets:
            if key not in configs:
                raise ReplayError(f"controller: {key} is not an aggregated candidate of the problem")
        have = alive()
        # Removals first (they free nothing until drained), then additions while the pool has devices:
        # make-before-break cannot put more replicas in a pool than it holds; what does not fit is not
        # created (the controller asks again at its next decision) and is counted.
        order = sorted(set(have) | set(targets), key=lambda k: int(targets.get(k, 0)) - have.get(k, 0))
        used = devices_in_use(now)
        for key in order:
            diff = max(0, int(targets.get(key, 0))) - have.get(key, 0)
            if diff > 0:
                for _ in range(diff):
                    need = configs[key].devices
                    if used.get(key.pool, 0) + need > pool_devices.get(key.pool, 0):
                        refused[0] += 1
                        continue
                    used[key.pool] = used.get(key.pool, 0) + need
                    replicas.append(new_replica(key, now, now + startup_s))
                    heapq.heappush(readies, now + startup_s)
            elif diff < 0:
                mine = [
                    i
                    for i, rep in enumerate(replicas)
                    if rep.key == key and not rep.draining and rep.ended_s is None
                ]
                # Cancel starting replicas first, then the least busy ready ones; they drain.
                mine.sort(key=lambda i: (replicas[i].ready_s <= now, replicas[i].last_finish_s))
                for i in mine[:-diff]:
                    rep = replicas[i]
                    rep.draining = True
                    rep.ended_s = now if rep.ready_s > now else max(now, rep.last_finish_s)

    steps: list[Step] = []
    peak_used: dict[str, int] = {}
    history: dict[inputs.CandidateKey, list[tuple[float, int]]] = {}
    t_next_tick = interval_s
    i_arrival = 0
    now = 0.0
    end_of_trace = trace.duration_s
    while True:
        t_arr = float(trace.ts[i_arrival]) if i_arrival < n else math.inf
        t_ready = readies[0] if readies else math.inf
        t_tick = t_next_tick if t_next_tick <= end_of_trace else math.inf
        t_event = min(t_arr, t_ready, t_tick)
        if t_event == math.inf:
            break
        now = t_event
        if now == t_ready:
            heapq.heappop(readies)
            drain_queue(now)
        elif now == t_arr:
            r = i_arrival
            i_arrival += 1
            if not admit(r, now):
                queue.append(r)
        else:
            t_next_tick += interval_s
            obs = _observation(
                trace,
                buckets,
                n_buckets,
                start_s,
                wait_s,
                ttft_ms,
                itl_ms,
                rep_of,
                work_of,
                queue,
                replicas,
                now,
            )
            current = alive()
            starting: dict[inputs.CandidateKey, int] = {}
            for rep in replicas:
                if not rep.draining and rep.ended_s is None and rep.ready_s > now:
                    starting[rep.key] = starting.get(rep.key, 0) + 1
            control = controller(now, obs, current, starting)
            if control.routing is not None:
                route[0] = control.routing
            apply(control.targets, now)
            for pool_id, used_now in devices_in_use(now).items():
                peak_used[pool_id] = max(peak_used.get(pool_id, 0), used_now)
            after = alive()
            for key in set(current) | set(after):
                if after.get(key, 0) != current.get(key, 0):
                    history.setdefault(key, []).append((now, after.get(key, 0) - current.get(key, 0)))
            price = sum(configs[k].price_per_hour * v for k, v in after.items())
            ready = sum(1 for rep in replicas if rep.serving(now))
            moved = autoscale.direction(current, after)
            steps.append(Step(now, after, ready, obs.requests_per_second or 0.0, price, moved))
    end = max(end_of_trace, max((rep.last_finish_s for rep in replicas), default=0.0))
    dollars = 0.0
    device_hours = 0.0
    for rep in replicas:
        stop = rep.ended_s if rep.ended_s is not None else max(end_of_trace, rep.last_finish_s)
        hours = max(0.0, stop - rep.created_s) / 3600.0
        dollars += hours * configs[rep.key].price_per_hour
        device_hours += hours * configs[rep.key].devices
    met = int(((ttft_ms <= slo.ttft_p99_ms * (1 + 1e-9)) & (itl_ms <= slo.itl_p99_ms * (1 + 1e-9))).sum())
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
        refused=refused[0],
        peak_devices=peak_used,
    )


def _devices(targets: Targets, configs: Mapping[inputs.CandidateKey, _Config]) -> dict[str, int]:
    """Devices per pool of these replicas."""
    out: dict[str, int] = {}
    for key, count in targets.items():
        out[key.pool] = out.get(key.pool, 0) + count * configs[key].devices
    return out


def _reversals(history: Mapping[inputs.CandidateKey, list[tuple[float, int]]], window_s: float) -> int:
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
    wait_s: NDArray[np.float64],
    ttft_ms: NDArray[np.float64],
    itl_ms: NDArray[np.float64],
    rep_of: NDArray[np.int64],
    work_of: NDArray[np.float64],
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
    admitted = lo + np.flatnonzero(rep_of[lo:hi] >= 0)
    # Engines report TTFT when the first token comes out: requests whose turn came within the window.
    started = admitted[start_s[admitted] <= now]
    # Requests waiting in a replica's queue or the gateway's now (vllm:num_requests_waiting).
    waiting = int((start_s[admitted] > now).sum()) + len(queue)
    ttfts = np.concatenate([ttft_ms[started], [(now - float(trace.ts[r])) * 1000.0 for r in queue]])
    # Busy share of each serving replica over the window (KV-cache usage's stand-in: the batch the
    # capacity model lets it hold).
    serving = [i for i, rep in enumerate(replicas) if rep.serving(now)]
    busy = np.zeros(len(replicas))
    np.add.at(busy, rep_of[admitted], work_of[admitted])
    kv = float(np.mean(np.minimum(1.0, busy[serving] / window))) if serving else None
    return autoscale.Observation(
        requests_per_second=(hi - lo) / window,
        bucket_share=share,
        ttft_p99_ms=float(np.percentile(ttfts, 99)) if ttfts.size else None,
        itl_p99_ms=float(np.percentile(itl_ms[started], 99)) if started.size else None,
        waiting=float(waiting),
        running=float(started.size),
        kv_usage=kv,
    )


def autoscaler(
    problem: inputs.FleetProblem,
    traits: Mapping[str, autoscale.ServiceTraits],
    policy: autoscale.Policy | None = None,
    *,
    log: list[autoscale.Decision] | None = None,
) -> Controller:
    """A controller that calls placement.autoscale.decide, the operator's decision function."""
    state = [autoscale.State()]
    sid = problem.services[0].id

    def control(now: float, obs: autoscale.Observation, current: Targets, starting: Targets) -> Control:
        decision = autoscale.decide(
            problem, traits, state[0], {sid: obs}, current, now, policy, starting=starting
        )
        state[0] = decision.state
        if log is not None:
            log.append(decision)
        return Control(decision.targets, routing_of(decision.plan) if decision.plan is not None else None)

    return control


def static_targets(targets: Targets, routing: Routing | None = None) -> Controller:
    """A fixed fleet of these replicas."""
    fixed = Control(dict(targets), routing)

    def control(now: float, obs: autoscale.Observation, current: Targets, starting: Targets) -> Control:
        return fixed

    return control


def static(plan: allocation.Plan) -> Controller:
    """A fixed fleet: the plan's replicas and routing."""
    fixed = Control(targets_of(plan), routing_of(plan))

    def control(now: float, obs: autoscale.Observation, current: Targets, starting: Targets) -> Control:
        return fixed

    return control


# KEDA / HPA defaults for the threshold autoscaler: target average KV-cache usage and waiting requests
# per replica (llm-d's and KServe's vLLM autoscaling guides scale on vllm:gpu_cache_usage_perc and
# vllm:num_requests_waiting), HPA's 300 s scale-down stabilization and 10% tolerance.
THRESHOLD_KV_USAGE = 0.7
THRESHOLD_WAITING_PER_REPLICA = 2.0


def threshold(
    key: inputs.CandidateKey,
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

    def control(now: float, obs: autoscale.Observation, current: Targets, starting: Targets) -> Control:
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
        return Control({key: desired})

    return control
