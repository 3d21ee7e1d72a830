"""Shared fixtures of the performance-model tests."""

from __future__ import annotations

from placement import perf_efficiency

# Every factor at the physical peak, no step overhead: the hand computations in the tests use it.
IDEAL = perf_efficiency.Efficiency(
    bandwidth=1.0,
    compute_16bit=1.0,
    compute_8bit=1.0,
    overlap_penalty=0.0,
    interconnect=1.0,
    moe=1.0,
    step_overhead_s=0.0,
    source="test: physical peak",
)
