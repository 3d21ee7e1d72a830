"""Replay a request trace through a plan and the performance model's capacities: SLO attainment.

Each request goes to its request-size bucket, then to one of the plan's configurations with the plan's
routing weights for that bucket (an aggregated replica group, or a prefill group then a decode group).
Every configuration's capacity for that bucket is the performance model's max req/s within the SLO, so a
replica group meets the SLO as long as its arrivals stay within capacity. Time is cut into windows: in a
window where a group's arrivals need L replicas' worth of capacity and it has n < L, a fraction
1 - n / L of its requests there miss the SLO (the excess queues beyond the p99 bound). Requests larger
than the largest bucket the plan was sized for, and unserved requests, miss.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray

from placement import workload
from placement.solver import allocation, inputs

# A minute: long enough that arrivals within it look Poisson to the queueing model the capacities come
# from, short enough to see the trace's bursts (the Azure code trace peaks at 4x its mean rate).
DEFAULT_WINDOW_S = 60.0
# Routing draws are seeded so a replay is reproducible.
DEFAULT_SEED = 0


class SimulationError(ValueError):
    """The trace or plan cannot be replayed; the message names the field."""


@dataclass(frozen=True)
class Attainment:
    """Share of a trace's requests served within the SLO."""

    requests: int
    met: float
    unserved: int
    beyond_sizing: int
    overloaded_windows: int
    windows: int

    @property
    def attainment(self) -> float:
        """Fraction of requests within the SLO (1.0 for an empty trace)."""
        return self.met / self.requests if self.requests else 1.0


def bucket_of(
    wl: workload.BucketedWorkload, prompt: NDArray[np.float64], output: NDArray[np.float64]
) -> NDArray[np.int64]:
    """Index of each request's bucket in wl.buckets (-1: larger than any bucket, or in no bucket)."""
    out = np.full(prompt.shape, -1, dtype=np.int64)
    for k, b in enumerate(wl.buckets):
        p_lo = -1 if b.prompt_lo_tokens == 0 else b.prompt_lo_tokens
        o_lo = -1 if b.output_lo_tokens == 0 else b.output_lo_tokens
        inside = (
            (prompt > p_lo)
            & (prompt <= b.prompt_hi_tokens)
            & (output > o_lo)
            & (output <= b.output_hi_tokens)
        )
        out[inside & (out < 0)] = k
    return out


def replay(
    service: allocation.ServiceAllocation,
    wl: workload.BucketedWorkload,
    capacity: Mapping[inputs.CandidateKey, Sequence[float]],
    timestamps_s: ArrayLike,
    prompt_tokens: ArrayLike,
    output_tokens: ArrayLike,
    *,
    window_s: float = DEFAULT_WINDOW_S,
    seed: int = DEFAULT_SEED,
) -> Attainment:
    """SLO attainment of one service's plan on a trace (capacity: max req/s per bucket per configuration)."""
    ts = np.asarray(timestamps_s, dtype=np.float64)
    prompt = np.asarray(prompt_tokens, dtype=np.float64)
    output = np.asarray(output_tokens, dtype=np.float64)
    if not (ts.shape == prompt.shape == output.shape) or ts.ndim != 1:
        raise SimulationError("trace: timestamps, prompt and output tokens must be 1-D and equally long")
    if window_s <= 0.0:
        raise SimulationError(f"window_s: must be > 0, got {window_s}")
    n = ts.size
    if n == 0:
        return Attainment(0, 0.0, 0, 0, 0, 0)
    rng = np.random.default_rng(seed)
    buckets = bucket_of(wl, prompt, output)
    window = ((ts - ts.min()) // window_s).astype(np.int64)
    n_windows = int(window.max()) + 1

    groups = list(service.assignments)
    keys = [inputs.CandidateKey(a.service, a.role, a.pool, a.precision, a.tp) for a in groups]
    caps = [np.asarray(capacity[k], dtype=np.float64) for k in keys]
    front = [i for i, a in enumerate(groups) if a.role in ("aggregated", "prefill")]
    back = [i for i, a in enumerate(groups) if a.role == "decode"]

    # group_of[r, 0]: front group of request r; group_of[r, 1]: decode group (-1 when aggregated).
    group_of = np.full((n, 2), -1, dtype=np.int64)
    unserved = 0
    for k in range(len(wl.buckets)):
        members = np.flatnonzero(buckets == k)
        if members.size == 0:
            continue
        w_front = np.array([groups[i].bucket_rps[k] for i in front], dtype=np.float64)
        total = w_front.sum()
        if total <= 0.0:
            unserved += members.size
            continue
        # The plan may serve only part of a bucket: that share of its requests is dropped.
        served_share = min(1.0, total / max(wl.bucket_rps[k], 1e-300))
        keep = rng.random(members.size) < served_share
        unserved += int((~keep).sum())
        members = members[keep]
        choice = rng.choice(len(front), size=members.size, p=w_front / total)
        group_of[members, 0] = np.asarray(front)[choice]
        if back:
            w_back = np.array([groups[i].bucket_rps[k] for i in back], dtype=np.float64)
            is_prefill = np.array([groups[front[c]].role == "prefill" for c in choice])
            if is_prefill.any():
                if w_back.sum() <= 0.0:
                    raise SimulationError(f"plan: bucket {k} is prefilled but never decoded")
                pick = rng.choice(len(back), size=int(is_prefill.sum()), p=w_back / w_back.sum())
                group_of[members[is_prefill], 1] = np.asarray(back)[pick]

    ok = np.zeros(n, dtype=np.float64)
    routed = group_of[:, 0] >= 0
    ok[routed] = 1.0
    overloaded: set[int] = set()
    for stage in (0, 1):
        for g in set(group_of[:, stage].tolist()) - {-1}:
            mine = np.flatnonzero(group_of[:, stage] == g)
            cap = caps[g][buckets[mine]]
            # Busy replica-seconds per request: 1 / capacity of its bucket.
            work = np.zeros(n_windows)
            np.add.at(work, window[mine], 1.0 / cap)
            need = work / window_s
            replicas = groups[g].replicas
            # Share of a window's requests within the SLO: all while need <= replicas, else replicas / need.
            share = np.where(need > replicas, replicas / np.maximum(need, 1e-300), 1.0)
            overloaded.update(np.flatnonzero(need > replicas * (1 + inputs.FEASIBILITY_TOLERANCE)).tolist())
            ok[mine] *= share[window[mine]]
    beyond = int((buckets < 0).sum())
    return Attainment(
        requests=n,
        met=float(ok.sum()),
        unserved=unserved + beyond,
        beyond_sizing=beyond,
        overloaded_windows=len(overloaded),
        windows=n_windows,
    )
