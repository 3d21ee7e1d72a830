"""Measured performance of one exact replica configuration; the one module for measured profiles.

Two shapes, both measured for one exact (model, accelerator, precision, tp, role):
- `MeasuredProfile`: what the API layer converts a PerformanceProfile object into: a concurrency sweep
  (concurrency -> tokens/s and TTFT/ITL percentiles, at one request size), a bucket rate table, or both;
  placement.perf.max_rate_under_slo interpolates it in place of the roofline model.
- `BucketProfile`: the Mélange profile shape (Griggs et al., "Mélange: Cost Efficient LLM Serving by
  Exploiting GPU Heterogeneity", 2024): a grid of request-size buckets, each holding the highest request
  rate one replica served while meeting the latency SLO; placement.candidates uses it directly.
"""

from __future__ import annotations

import bisect
import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass


class ProfileError(ValueError):
    """A measured profile is malformed; the message names the field and the reason."""


@dataclass(frozen=True)
class SweepPoint:
    """One step of a concurrency sweep: the replica held `concurrency` requests in flight."""

    concurrency: float
    output_tokens_per_s: float
    ttft_p99_ms: float
    itl_p99_ms: float
    ttft_p50_ms: float | None = None
    itl_p50_ms: float | None = None
    # Request size and rate of this point when the sweep recorded them per point.
    prompt_tokens: float | None = None
    output_tokens: float | None = None
    requests_per_s: float | None = None


@dataclass(frozen=True)
class BucketRate:
    """Highest req/s measured within the table's SLO for prompts in (lo, hi] and outputs in (lo, hi]."""

    prompt_lo_tokens: int
    prompt_hi_tokens: int
    output_lo_tokens: int
    output_hi_tokens: int
    max_rps: float

    def contains(self, prompt_tokens: float, output_tokens: float) -> bool:
        """True when a request of this size falls in the bucket."""
        return (
            self.prompt_lo_tokens < prompt_tokens <= self.prompt_hi_tokens
            and self.output_lo_tokens < output_tokens <= self.output_hi_tokens
        )


@dataclass(frozen=True)
class MeasuredProfile:
    """Measurements of one exact replica configuration, and where and when they came from."""

    model: str
    accelerator: str
    precision: str
    tp: int
    engine: str = "vllm"
    role: str = "aggregated"
    # Request size the concurrency sweep ran at (means).
    prompt_tokens: float | None = None
    output_tokens: float | None = None
    points: tuple[SweepPoint, ...] = ()
    buckets: tuple[BucketRate, ...] = ()
    # SLO the bucket table's rates were measured under.
    bucket_ttft_p99_ms: float | None = None
    bucket_itl_p99_ms: float | None = None
    source: str = ""

    def __post_init__(self) -> None:
        """Reject profiles the interpolation could not use, naming the field."""
        name = f"profile {self.model}/{self.accelerator}"
        if not self.points and not self.buckets:
            raise ProfileError(f"{name}: needs points (a concurrency sweep) or buckets (a rate table)")
        if self.tp < 1:
            raise ProfileError(f"{name}: tp must be >= 1, got {self.tp}")
        if self.points:
            if self.sweep_prompt_tokens is None or self.sweep_output_tokens is None:
                raise ProfileError(
                    f"{name}: a concurrency sweep needs prompt_tokens and output_tokens (on the profile "
                    "or on every point)"
                )
            if self.sweep_prompt_tokens < 1 or self.sweep_output_tokens < 1:
                raise ProfileError(f"{name}: prompt_tokens and output_tokens must be >= 1")
        last = 0.0
        for i, point in enumerate(self.points):
            values = (point.concurrency, point.output_tokens_per_s, point.ttft_p99_ms, point.itl_p99_ms)
            if not all(math.isfinite(v) and v >= 0 for v in values):
                raise ProfileError(f"{name}: points[{i}] values must be finite and >= 0")
            if point.concurrency <= last:
                raise ProfileError(f"{name}: points[{i}].concurrency must increase strictly")
            last = point.concurrency
        if self.buckets and (self.bucket_ttft_p99_ms is None or self.bucket_itl_p99_ms is None):
            raise ProfileError(f"{name}: a bucket table needs the SLO it was measured under")
        for i, bucket in enumerate(self.buckets):
            if not (0 <= bucket.prompt_lo_tokens < bucket.prompt_hi_tokens):
                raise ProfileError(f"{name}: buckets[{i}] prompt range must satisfy 0 <= lo < hi")
            if not (0 <= bucket.output_lo_tokens < bucket.output_hi_tokens):
                raise ProfileError(f"{name}: buckets[{i}] output range must satisfy 0 <= lo < hi")
            if not (math.isfinite(bucket.max_rps) and bucket.max_rps >= 0):
                raise ProfileError(f"{name}: buckets[{i}].max_rps must be finite and >= 0")

    @property
    def sweep_prompt_tokens(self) -> float | None:
        """Prompt size of the sweep: the profile's, else the mean over points that recorded one."""
        return self._sweep_size(self.prompt_tokens, [p.prompt_tokens for p in self.points])

    @property
    def sweep_output_tokens(self) -> float | None:
        """Output size of the sweep: the profile's, else the mean over points that recorded one."""
        return self._sweep_size(self.output_tokens, [p.output_tokens for p in self.points])

    @staticmethod
    def _sweep_size(whole: float | None, per_point: list[float | None]) -> float | None:
        """The profile-level size, or the mean of per-point sizes when every point has one."""
        if whole is not None:
            return whole
        if per_point and all(v is not None for v in per_point):
            return sum(v for v in per_point if v is not None) / len(per_point)
        return None

    def point_rate_rps(self, point: SweepPoint) -> float:
        """Requests/s at a point: as recorded, else output tokens/s over the point's (or sweep's) output."""
        if point.requests_per_s is not None:
            return point.requests_per_s
        output = point.output_tokens or self.sweep_output_tokens or 1.0
        return point.output_tokens_per_s / output

    @classmethod
    def from_bucket_edges(
        cls,
        model: str,
        accelerator: str,
        precision: str,
        tp: int,
        engine: str,
        prompt_upper_edges: tuple[int, ...],
        output_upper_edges: tuple[int, ...],
        max_rps: tuple[tuple[float, ...], ...],
        ttft_p99_ms: float,
        itl_p99_ms: float,
        source: str = "",
    ) -> MeasuredProfile:
        """A bucket-table profile from upper bucket edges (each bucket starts where the previous ends)."""
        if len(max_rps) != len(prompt_upper_edges) or any(len(r) != len(output_upper_edges) for r in max_rps):
            raise ProfileError(
                f"profile {model}/{accelerator}: max_rps needs {len(prompt_upper_edges)} rows of "
                f"{len(output_upper_edges)} values (one per prompt x output bucket)"
            )
        buckets = []
        for i, prompt_hi in enumerate(prompt_upper_edges):
            prompt_lo = prompt_upper_edges[i - 1] if i else 0
            for j, output_hi in enumerate(output_upper_edges):
                output_lo = output_upper_edges[j - 1] if j else 0
                buckets.append(BucketRate(prompt_lo, prompt_hi, output_lo, output_hi, max_rps[i][j]))
        return cls(
            model=model,
            accelerator=accelerator,
            precision=precision,
            tp=tp,
            engine=engine,
            buckets=tuple(buckets),
            bucket_ttft_p99_ms=ttft_p99_ms,
            bucket_itl_p99_ms=itl_p99_ms,
            source=source,
        )

    def matches(self, model: str, accelerator: str, precision: str, tp: int, engine: str, role: str) -> bool:
        """True for the exact configuration the profile was measured on."""
        return (self.model, self.accelerator, self.precision, self.tp, self.engine, self.role) == (
            model,
            accelerator,
            precision,
            tp,
            engine,
            role,
        )


@dataclass(frozen=True)
class BucketProfile:
    """Max req/s of one replica under an SLO on a prompt x output token-bucket grid."""

    model: str
    accelerator: str
    precision: str
    tp: int
    # Bucket i covers prompt lengths in (prompt_edges_tokens[i], prompt_edges_tokens[i + 1]].
    prompt_edges_tokens: tuple[int, ...]
    output_edges_tokens: tuple[int, ...]
    # max_rps[i][j]: prompt bucket i, output bucket j; 0.0 means the SLO cannot be met there.
    max_rps: tuple[tuple[float, ...], ...]
    role: str = "aggregated"
    engine: str = "vllm"
    ttft_p99_ms: float | None = None
    itl_p99_ms: float | None = None
    source: str = ""
    # The engine release it was measured on (None: not stated).
    engine_version: str | None = None

    def __post_init__(self) -> None:
        """Reject grids whose shape, edges or rates are unusable."""
        _check_edges("prompt_edges_tokens", self.prompt_edges_tokens)
        _check_edges("output_edges_tokens", self.output_edges_tokens)
        if self.tp < 1:
            raise ProfileError(f"profile {self.key}: tp must be >= 1, got {self.tp}")
        rows = len(self.prompt_edges_tokens) - 1
        cols = len(self.output_edges_tokens) - 1
        if len(self.max_rps) != rows:
            raise ProfileError(
                f"profile {self.key}: max_rps has {len(self.max_rps)} rows, expected {rows} prompt buckets"
            )
        for i, row in enumerate(self.max_rps):
            if len(row) != cols:
                raise ProfileError(
                    f"profile {self.key}: max_rps[{i}] has {len(row)} entries, expected {cols} output buckets"
                )
            for j, value in enumerate(row):
                if not math.isfinite(value) or value < 0.0:
                    raise ProfileError(f"profile {self.key}: max_rps[{i}][{j}] must be finite and >= 0")

    @property
    def key(self) -> tuple[str, str, str, int]:
        """(model, accelerator, precision, tp): the configuration this profile was measured on."""
        return (self.model, self.accelerator, self.precision, self.tp)

    def max_rps_for(self, prompt_tokens: float, output_tokens: float) -> float:
        """Max req/s for requests of this size: the bucket containing them, 0.0 outside the grid."""
        i = _bucket_index(self.prompt_edges_tokens, prompt_tokens)
        j = _bucket_index(self.output_edges_tokens, output_tokens)
        if i is None or j is None:
            return 0.0
        return self.max_rps[i][j]


def _check_edges(name: str, edges: Sequence[int]) -> None:
    """Edges must be at least two, non-negative and strictly increasing."""
    if len(edges) < 2:
        raise ProfileError(f"{name}: needs at least two edges, got {len(edges)}")
    if edges[0] < 0:
        raise ProfileError(f"{name}: edges must be >= 0, got {edges[0]}")
    for lo, hi in itertools.pairwise(edges):
        if hi <= lo:
            raise ProfileError(f"{name}: edges must increase strictly, got {lo} then {hi}")


def _bucket_index(edges: Sequence[int], tokens: float) -> int | None:
    """Index i with edges[i] < tokens <= edges[i + 1] (the first bucket also takes edges[0])."""
    if tokens < edges[0] or tokens > edges[-1]:
        return None
    return max(0, bisect.bisect_left(edges, tokens) - 1)


# Mélange's notebook buckets both prompt and output lengths at these edges (eval/eval.ipynb, regions).
MELANGE_EDGES_TOKENS: tuple[int, ...] = (0, 25, 100, 250, 500, 1000, 2000)


def from_melange_table(
    tputs: Sequence[Sequence[float]],
    *,
    model: str,
    accelerator: str,
    precision: str = "fp16",
    tp: int = 1,
    edges_tokens: Sequence[int] = MELANGE_EDGES_TOKENS,
    source: str = "",
) -> BucketProfile:
    """Profile from a Mélange `tputs` table, paired with buckets exactly as the authors' solver pairs them.

    The notebook multiplies tputs[i][j] with workload_distribution[i][j] position by position, and that
    distribution is np.histogram2d(prompt, output).T[::-1]: row i is output bucket (n - 1 - i), column j is
    prompt bucket j. We keep that pairing so the published optimum reproduces; rows beyond the
    distribution's n (A100/H100 carry extra long-input rows) have no bucket in it and are dropped.
    """
    n = len(edges_tokens) - 1
    if len(tputs) < n:
        raise ProfileError(f"melange tputs for {accelerator}: {len(tputs)} rows, need at least {n}")
    grid: list[list[float]] = [[0.0] * n for _ in range(n)]
    for i in range(n):
        if len(tputs[i]) < n:
            raise ProfileError(
                f"melange tputs for {accelerator}: row {i} has {len(tputs[i])} entries, need {n}"
            )
        for j in range(n):
            grid[j][n - 1 - i] = float(tputs[i][j])
    return BucketProfile(
        model=model,
        accelerator=accelerator,
        precision=precision,
        tp=tp,
        prompt_edges_tokens=tuple(edges_tokens),
        output_edges_tokens=tuple(edges_tokens),
        max_rps=tuple(tuple(row) for row in grid),
        source=source,
    )


def melange_distribution_to_grid(distribution: Sequence[Sequence[float]]) -> tuple[tuple[float, ...], ...]:
    """A Mélange workload_distribution (histogram2d(prompt, output).T[::-1]) as a [prompt][output] grid."""
    n = len(distribution)
    for i, row in enumerate(distribution):
        if len(row) != n:
            raise ProfileError(f"melange distribution: row {i} has {len(row)} entries, expected {n}")
    return tuple(tuple(float(distribution[n - 1 - j][i]) for j in range(n)) for i in range(n))


def index_profiles(
    profiles: Sequence[BucketProfile],
) -> Mapping[tuple[str, str, str, int, str], BucketProfile]:
    """Profiles keyed by (model, accelerator, precision, tp, role); a duplicate key is an error."""
    index: dict[tuple[str, str, str, int, str], BucketProfile] = {}
    for profile in profiles:
        key = (*profile.key, profile.role)
        if key in index:
            raise ProfileError(f"profile {key}: defined twice ({index[key].source!r} and {profile.source!r})")
        index[key] = profile
    return index
