"""Request-size distributions turned into prompt x output token buckets with a request rate each."""

from __future__ import annotations

import itertools
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike


class WorkloadError(ValueError):
    """A workload description is unusable; the message names the field and the reason."""


@dataclass(frozen=True)
class Bucket:
    """Requests with prompt in (prompt_lo, prompt_hi] and output in (output_lo, output_hi] tokens."""

    prompt_lo_tokens: int
    prompt_hi_tokens: int
    output_lo_tokens: int
    output_hi_tokens: int
    # Mean output length of the requests in this bucket, for $/1M output tokens and throughput.
    output_mean_tokens: float
    # Mean prompt length (0.0: unknown, use the midpoint).
    prompt_mean_tokens: float = 0.0

    @property
    def prompt_mean(self) -> float:
        """Mean prompt length, the midpoint when unknown."""
        if self.prompt_mean_tokens > 0.0:
            return self.prompt_mean_tokens
        return (self.prompt_lo_tokens + self.prompt_hi_tokens) / 2.0

    @property
    def prompt_tokens(self) -> int:
        """Size used to size capacity: the bucket's largest prompt, so every request in it is covered."""
        return self.prompt_hi_tokens

    @property
    def output_tokens(self) -> int:
        """Size used to size capacity: the bucket's largest output."""
        return self.output_hi_tokens


@dataclass(frozen=True)
class BucketedWorkload:
    """A request rate split over request-size buckets (fractions sum to 1)."""

    requests_per_second: float
    buckets: tuple[Bucket, ...]
    fractions: tuple[float, ...]

    def __post_init__(self) -> None:
        """Fractions must match the buckets, be non-negative and sum to 1."""
        if not math.isfinite(self.requests_per_second) or self.requests_per_second < 0.0:
            raise WorkloadError(
                f"requests_per_second must be finite and >= 0, got {self.requests_per_second}"
            )
        if len(self.fractions) != len(self.buckets):
            raise WorkloadError(f"fractions: {len(self.fractions)} values for {len(self.buckets)} buckets")
        if any(f < 0.0 or not math.isfinite(f) for f in self.fractions):
            raise WorkloadError("fractions: every fraction must be finite and >= 0")
        if self.buckets and abs(sum(self.fractions) - 1.0) > FRACTION_SUM_TOLERANCE:
            raise WorkloadError(f"fractions: must sum to 1, got {sum(self.fractions):.6f}")

    @property
    def bucket_rps(self) -> tuple[float, ...]:
        """Request rate per bucket."""
        return tuple(self.requests_per_second * f for f in self.fractions)

    @property
    def output_mean_tokens(self) -> float:
        """Mean output length over all requests."""
        return sum(f * b.output_mean_tokens for f, b in zip(self.fractions, self.buckets, strict=True))


# Float sums of histogram fractions drift by ~1e-15 per term; 1e-6 is far above that and far below any
# fraction that matters for sizing.
FRACTION_SUM_TOLERANCE = 1e-6
# Buckets whose share of traffic is below this are folded into the next larger bucket: a 0.01% sliver
# would add solver variables without changing a plan (sizing it on the larger bucket is conservative).
MIN_BUCKET_FRACTION = 1e-4
# The tail beyond this quantile is sized as the quantile itself: p99.9 is the usual outer SLO percentile.
TAIL_QUANTILE = 0.999
# z-score of the 99th percentile of a standard normal.
Z_P99 = statistics.NormalDist().inv_cdf(0.99)
_STANDARD_NORMAL = statistics.NormalDist()


def _normal_cdf(x: float) -> float:
    """Standard normal distribution function (what scipy.stats.norm.cdf computes, without its per-call
    overhead of ~1 ms: a workload's buckets need a few dozen values and a fleet has thousands)."""
    return 0.5 * math.erfc(-x / math.sqrt(2.0))


# Default bucket edges: powers of four. Capacity is predicted at each bucket's mean size with its upper
# edge as the p99, so a bucket spanning 4x is sized accurately for throughput and safely for tail latency;
# powers of two doubled the buckets (and with them the performance-model calls and MILP columns).
DEFAULT_PROMPT_EDGES_TOKENS: tuple[int, ...] = (0, 256, 1024, 4096, 16384, 65536, 131072)
DEFAULT_OUTPUT_EDGES_TOKENS: tuple[int, ...] = (0, 64, 256, 1024, 4096, 16384)


@dataclass(frozen=True)
class LogNormal:
    """A lognormal distribution of token counts: log(tokens) ~ Normal(mu, sigma)."""

    mu: float
    sigma: float

    def cdf(self, tokens: float) -> float:
        """P(X <= tokens)."""
        if tokens <= 0.0:
            return 0.0
        if self.sigma == 0.0:
            return 1.0 if math.log(tokens) >= self.mu else 0.0
        return _normal_cdf((math.log(tokens) - self.mu) / self.sigma)

    def quantile(self, q: float) -> float:
        """The q-quantile in tokens."""
        return math.exp(self.mu + self.sigma * _STANDARD_NORMAL.inv_cdf(q))

    def partial_mean(self, lo: float, hi: float) -> float:
        """E[X | lo < X <= hi], or the midpoint when the interval holds no mass."""
        p = self.cdf(hi) - self.cdf(lo)
        if self.sigma == 0.0 or p <= 0.0:
            return min(max(math.exp(self.mu), lo), hi) if p > 0.0 else (lo + hi) / 2.0
        # E[X; a < X <= b] = e^{mu + s^2/2} (Phi((ln b - mu - s^2)/s) - Phi((ln a - mu - s^2)/s))
        shift = self.mu + self.sigma**2

        def phi(x: float) -> float:
            return 0.0 if x <= 0.0 else _normal_cdf((math.log(x) - shift) / self.sigma)

        return math.exp(self.mu + self.sigma**2 / 2.0) * (phi(hi) - phi(lo)) / p


def lognormal_from_mean_p99(field: str, mean: float, p99: float) -> LogNormal:
    """The lognormal with this mean and 99th percentile (`field` names the input in errors)."""
    if not (math.isfinite(mean) and mean > 0.0):
        raise WorkloadError(f"{field}.mean: must be > 0, got {mean}")
    if not (math.isfinite(p99) and p99 >= mean):
        raise WorkloadError(f"{field}.p99: must be >= mean ({mean}), got {p99}")
    # mean = exp(mu + s^2/2) and p99 = exp(mu + z s)  =>  s^2/2 - z s + ln(p99/mean) = 0; the smaller root
    # is the light-tailed solution; a real root needs ln(p99/mean) <= z^2/2, i.e. p99 <= ~14.9 x mean.
    log_ratio = math.log(p99 / mean)
    discriminant = Z_P99**2 - 2.0 * log_ratio
    if discriminant < 0.0:
        raise WorkloadError(
            f"{field}.p99: {p99} is more than {math.exp(Z_P99**2 / 2):.1f}x the mean {mean}; "
            "no lognormal fits"
        )
    sigma = Z_P99 - math.sqrt(discriminant)
    return LogNormal(mu=math.log(mean) - sigma**2 / 2.0, sigma=sigma)


def _used_edges(edges: Sequence[int], top_tokens: float) -> list[int]:
    """Edges up to the first one at or above top_tokens, the last replaced by ceil(top_tokens)."""
    # Round away float noise first (exp(log(100)) is 100.00000000000004, not a 101-token request).
    top = math.ceil(round(top_tokens, 6))
    used = [e for e in edges if e < top]
    used.append(top)
    if len(used) < 2:
        used = [0, max(1, top)]
    return used


def _fold_small(
    grid: list[list[float]], prompt_means: list[list[float]], output_means: list[list[float]]
) -> tuple[list[tuple[int, int]], list[float], list[float], list[float]]:
    """Cells with at least MIN_BUCKET_FRACTION of traffic; smaller cells fold into the next larger cell."""
    rows, cols = len(grid), len(grid[0])
    mass = [row[:] for row in grid]
    p_mass = [[m * f for m, f in zip(mr, gr, strict=True)] for mr, gr in zip(prompt_means, grid, strict=True)]
    o_mass = [[m * f for m, f in zip(mr, gr, strict=True)] for mr, gr in zip(output_means, grid, strict=True)]
    kept: list[tuple[int, int]] = []
    for i in range(rows):
        for j in range(cols):
            if mass[i][j] <= 0.0:
                continue
            last = i == rows - 1 and j == cols - 1
            if mass[i][j] >= MIN_BUCKET_FRACTION or last:
                kept.append((i, j))
                continue
            # Fold into the next larger cell (prefer larger output, then larger prompt): sized more
            # conservatively, never less.
            ni, nj = (i, j + 1) if j + 1 < cols else (i + 1, j)
            mass[ni][nj] += mass[i][j]
            p_mass[ni][nj] += p_mass[i][j]
            o_mass[ni][nj] += o_mass[i][j]
            mass[i][j] = 0.0
    fractions = [mass[i][j] for i, j in kept]
    p_avg = [p_mass[i][j] / mass[i][j] for i, j in kept]
    o_avg = [o_mass[i][j] / mass[i][j] for i, j in kept]
    return kept, fractions, p_avg, o_avg


def _build(
    rps: float,
    prompt_edges: list[int],
    output_edges: list[int],
    grid: list[list[float]],
    prompt_means: list[list[float]],
    output_means: list[list[float]],
) -> BucketedWorkload:
    """BucketedWorkload from a [prompt][output] probability grid and per-cell mean lengths."""
    total = sum(sum(row) for row in grid)
    if total <= 0.0:
        raise WorkloadError("workload: no probability mass in any bucket")
    grid = [[v / total for v in row] for row in grid]
    kept, fractions, p_avg, o_avg = _fold_small(grid, prompt_means, output_means)
    norm = sum(fractions)
    buckets = tuple(
        Bucket(
            prompt_lo_tokens=prompt_edges[i],
            prompt_hi_tokens=prompt_edges[i + 1],
            output_lo_tokens=output_edges[j],
            output_hi_tokens=output_edges[j + 1],
            output_mean_tokens=om,
            prompt_mean_tokens=pm,
        )
        for (i, j), pm, om in zip(kept, p_avg, o_avg, strict=True)
    )
    return BucketedWorkload(rps, buckets, tuple(f / norm for f in fractions))


def from_mean_p99(
    requests_per_second: float,
    prompt_mean_tokens: float,
    prompt_p99_tokens: float,
    output_mean_tokens: float,
    output_p99_tokens: float,
    *,
    max_context_tokens: int | None = None,
    prompt_edges_tokens: Sequence[int] = DEFAULT_PROMPT_EDGES_TOKENS,
    output_edges_tokens: Sequence[int] = DEFAULT_OUTPUT_EDGES_TOKENS,
) -> BucketedWorkload:
    """Buckets for independent lognormal prompt and output lengths fitted to mean and p99."""
    prompt = lognormal_from_mean_p99("promptTokens", prompt_mean_tokens, prompt_p99_tokens)
    output = lognormal_from_mean_p99("outputTokens", output_mean_tokens, output_p99_tokens)
    prompt_top = max(prompt.quantile(TAIL_QUANTILE), prompt_p99_tokens)
    output_top = max(output.quantile(TAIL_QUANTILE), output_p99_tokens)
    if max_context_tokens is not None:
        if prompt_p99_tokens + output_p99_tokens > max_context_tokens:
            raise WorkloadError(
                f"maxContextTokens: {max_context_tokens} is below prompt p99 + output p99 "
                f"({prompt_p99_tokens:g} + {output_p99_tokens:g})"
            )
        prompt_top = min(prompt_top, max_context_tokens - output_p99_tokens)
        output_top = min(output_top, max_context_tokens - prompt_p99_tokens)
    p_edges = _used_edges(prompt_edges_tokens, prompt_top)
    o_edges = _used_edges(output_edges_tokens, output_top)
    p_mass = [prompt.cdf(hi) - prompt.cdf(lo) for lo, hi in itertools.pairwise(p_edges)]
    p_mass[-1] += 1.0 - prompt.cdf(p_edges[-1])  # the tail is sized at the top edge
    o_mass = [output.cdf(hi) - output.cdf(lo) for lo, hi in itertools.pairwise(o_edges)]
    o_mass[-1] += 1.0 - output.cdf(o_edges[-1])
    o_means = [output.partial_mean(lo, hi) for lo, hi in itertools.pairwise(o_edges)]
    p_means = [prompt.partial_mean(lo, hi) for lo, hi in itertools.pairwise(p_edges)]
    grid = [[pm * om for om in o_mass] for pm in p_mass]
    return _build(
        requests_per_second,
        p_edges,
        o_edges,
        grid,
        [[m] * len(o_means) for m in p_means],
        [o_means[:] for _ in p_mass],
    )


def from_samples(
    requests_per_second: float,
    prompt_tokens: ArrayLike,
    output_tokens: ArrayLike,
    *,
    prompt_edges_tokens: Sequence[int] = DEFAULT_PROMPT_EDGES_TOKENS,
    output_edges_tokens: Sequence[int] = DEFAULT_OUTPUT_EDGES_TOKENS,
) -> BucketedWorkload:
    """Buckets from observed (prompt, output) pairs, e.g. a trace; the largest request sets the top edge."""
    prompts = np.asarray(prompt_tokens, dtype=float)
    outputs = np.asarray(output_tokens, dtype=float)
    if prompts.shape != outputs.shape or prompts.ndim != 1 or prompts.size == 0:
        raise WorkloadError("samples: prompt and output token arrays must be 1-D, non-empty and equally long")
    if (prompts < 0).any() or (outputs < 0).any():
        raise WorkloadError("samples: token counts must be >= 0")
    p_edges = _used_edges(prompt_edges_tokens, float(prompts.max()))
    o_edges = _used_edges(output_edges_tokens, float(outputs.max()))
    # Right-closed bins (lo, hi], matching Bucket and BucketProfile.
    pi = np.clip(np.searchsorted(p_edges, prompts, side="left") - 1, 0, len(p_edges) - 2)
    oi = np.clip(np.searchsorted(o_edges, outputs, side="left") - 1, 0, len(o_edges) - 2)
    counts = np.zeros((len(p_edges) - 1, len(o_edges) - 1))
    out_sum = np.zeros_like(counts)
    prompt_sum = np.zeros_like(counts)
    np.add.at(counts, (pi, oi), 1.0)
    np.add.at(out_sum, (pi, oi), outputs)
    np.add.at(prompt_sum, (pi, oi), prompts)
    out_means = np.divide(out_sum, counts, out=np.zeros_like(out_sum), where=counts > 0)
    prompt_means = np.divide(prompt_sum, counts, out=np.zeros_like(prompt_sum), where=counts > 0)
    return _build(
        requests_per_second, p_edges, o_edges, counts.tolist(), prompt_means.tolist(), out_means.tolist()
    )


def from_grid(
    requests_per_second: float,
    prompt_edges_tokens: Sequence[int],
    output_edges_tokens: Sequence[int],
    fractions: Sequence[Sequence[float]],
) -> BucketedWorkload:
    """Buckets from an explicit [prompt][output] grid of traffic fractions; every cell is kept as given."""
    rows, cols = len(prompt_edges_tokens) - 1, len(output_edges_tokens) - 1
    if len(fractions) != rows or any(len(r) != cols for r in fractions):
        raise WorkloadError(f"fractions: expected a {rows} x {cols} grid")
    buckets: list[Bucket] = []
    values: list[float] = []
    for i in range(rows):
        for j in range(cols):
            if fractions[i][j] <= 0.0:
                continue
            lo, hi = output_edges_tokens[j], output_edges_tokens[j + 1]
            buckets.append(
                Bucket(
                    prompt_edges_tokens[i],
                    prompt_edges_tokens[i + 1],
                    lo,
                    hi,
                    output_mean_tokens=(lo + hi) / 2,
                )
            )
            values.append(float(fractions[i][j]))
    total = sum(values)
    if total <= 0.0:
        raise WorkloadError("fractions: no positive fraction")
    return BucketedWorkload(requests_per_second, tuple(buckets), tuple(v / total for v in values))
