"""Trace replay through a plan: SLO attainment."""

from __future__ import annotations

import numpy as np
import pytest

from placement import simulate, workload
from placement.solver import allocation, inputs


def setup(
    replicas: int,
) -> tuple[allocation.ServiceAllocation, workload.BucketedWorkload, dict[inputs.CandidateKey, list[float]]]:
    """One bucket, one configuration with capacity 1 req/s per replica."""
    wl = workload.from_grid(2.0, (0, 1000), (0, 100), [[1.0]])
    a = allocation.Assignment(
        "s", "aggregated", "p", "x", "bf16", 1, replicas, 1.0, (2.0,), 1.0, None, None, "vllm", ""
    )
    sp = allocation.service_allocation(inputs.ServiceDemand("s", (2.0,)), [a], 0.0, None)
    return sp, wl, {inputs.CandidateKey("s", "aggregated", "p", "bf16", 1): [1.0]}


def test_steady_trace_within_capacity_meets_the_slo() -> None:
    sp, wl, caps = setup(replicas=2)
    ts = np.arange(0, 600, 0.5)  # 2 req/s for 10 minutes
    result = simulate.replay(sp, wl, caps, ts, np.full(ts.size, 500), np.full(ts.size, 50))
    assert result.attainment == pytest.approx(1.0)
    assert result.overloaded_windows == 0


def test_burst_above_capacity_misses_in_proportion() -> None:
    sp, wl, caps = setup(replicas=2)
    # 4 req/s for the first minute, then 1 req/s: the first window needs 4 replicas and has 2.
    ts = np.concatenate([np.arange(0, 60, 0.25), np.arange(60, 600, 1.0)])
    result = simulate.replay(sp, wl, caps, ts, np.full(ts.size, 500), np.full(ts.size, 50))
    assert result.overloaded_windows == 1
    assert result.met == pytest.approx(240 * 0.5 + 540)


def test_requests_beyond_sizing_and_unserved_demand_miss() -> None:
    sp, wl, caps = setup(replicas=5)
    ts = np.arange(0, 60, 1.0)
    prompts = np.full(ts.size, 500)
    prompts[:6] = 5000  # larger than any bucket the plan was sized for
    result = simulate.replay(sp, wl, caps, ts, prompts, np.full(ts.size, 50))
    assert result.beyond_sizing == 6
    assert result.attainment == pytest.approx(54 / 60)


def test_bad_trace_is_rejected() -> None:
    sp, wl, caps = setup(replicas=1)
    with pytest.raises(simulate.SimulationError, match="trace"):
        simulate.replay(sp, wl, caps, [0.0, 1.0], [1], [1])
