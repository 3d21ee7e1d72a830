"""Token-length distributions into request-size buckets."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from placement import workload


def test_lognormal_matches_mean_and_p99() -> None:
    d = workload.lognormal_from_mean_p99("promptTokens", 1155.0, 4142.0)
    assert math.exp(d.mu + d.sigma**2 / 2) == pytest.approx(1155.0)
    assert d.quantile(0.99) == pytest.approx(4142.0)


@pytest.mark.parametrize(
    ("mean", "p99", "message"),
    [(0.0, 10.0, "mean: must be > 0"), (100.0, 50.0, "p99: must be >= mean"), (10.0, 1000.0, "no lognormal")],
)
def test_bad_distributions_name_the_field(mean: float, p99: float, message: str) -> None:
    with pytest.raises(workload.WorkloadError, match=f"outputTokens.*{message}"):
        workload.lognormal_from_mean_p99("outputTokens", mean, p99)


def test_point_mass_when_p99_equals_mean() -> None:
    w = workload.from_mean_p99(2.0, 500, 500, 100, 100)
    assert len(w.buckets) == 1
    (b,) = w.buckets
    assert b.prompt_tokens == 500 and b.output_tokens == 100
    assert w.bucket_rps == pytest.approx((2.0,))


@settings(max_examples=50, deadline=None)
@given(
    rps=st.floats(0, 100),
    prompt_mean=st.floats(1, 20000),
    prompt_ratio=st.floats(1, 10),
    output_mean=st.floats(1, 2000),
    output_ratio=st.floats(1, 10),
)
def test_buckets_conserve_traffic_and_cover_p99(
    rps: float, prompt_mean: float, prompt_ratio: float, output_mean: float, output_ratio: float
) -> None:
    w = workload.from_mean_p99(
        rps, prompt_mean, prompt_mean * prompt_ratio, output_mean, output_mean * output_ratio
    )
    assert sum(w.fractions) == pytest.approx(1.0)
    assert sum(w.bucket_rps) == pytest.approx(rps)
    # Capacity is sized at each bucket's largest request; the largest bucket covers the p99 request.
    assert max(b.prompt_tokens for b in w.buckets) >= prompt_mean * prompt_ratio - 1
    assert max(b.output_tokens for b in w.buckets) >= output_mean * output_ratio - 1
    assert all(b.prompt_lo_tokens < b.prompt_hi_tokens for b in w.buckets)
    # Slivers are folded into larger buckets; only the very largest bucket may stay small.
    top = max(range(len(w.buckets)), key=lambda i: (w.buckets[i].prompt_tokens, w.buckets[i].output_tokens))
    assert all(f >= workload.MIN_BUCKET_FRACTION for i, f in enumerate(w.fractions) if i != top)


def test_max_context_caps_the_tail() -> None:
    w = workload.from_mean_p99(1.0, 1000, 4000, 200, 600, max_context_tokens=8192)
    assert max(b.prompt_tokens + b.output_tokens for b in w.buckets) <= 8192 + 600
    with pytest.raises(workload.WorkloadError, match="maxContextTokens"):
        workload.from_mean_p99(1.0, 1000, 4000, 200, 600, max_context_tokens=4000)


def test_from_samples_counts_each_request_once() -> None:
    prompts = np.array([10, 300, 300, 5000])
    outputs = np.array([10, 70, 70, 900])
    w = workload.from_samples(4.0, prompts, outputs)
    assert sum(w.bucket_rps) == pytest.approx(4.0)
    by_size = {(b.prompt_tokens, b.output_tokens): r for b, r in zip(w.buckets, w.bucket_rps, strict=True)}
    assert by_size[(1024, 256)] == pytest.approx(2.0)
    # The top bucket ends at the largest request, not at the next power of two.
    assert max(b.prompt_tokens for b in w.buckets) == 5000
    assert max(b.output_tokens for b in w.buckets) == 900


def test_from_samples_rejects_bad_arrays() -> None:
    with pytest.raises(workload.WorkloadError, match="samples"):
        workload.from_samples(1.0, [1, 2], [1])
    with pytest.raises(workload.WorkloadError, match="samples"):
        workload.from_samples(1.0, [-1], [1])
