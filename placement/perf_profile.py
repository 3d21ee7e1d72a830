"""Measured performance profiles: plain dataclasses the API layer converts its PerformanceProfile into.

A profile is measured for one exact (model, accelerator, precision, engine, tp, role) and wins over the
roofline model for that configuration (placement.perf.max_rate_under_slo interpolates it). It holds a
concurrency sweep (concurrency -> tokens/s and TTFT/ITL percentiles, at one request size), a
Mélange-style table (max req/s under an SLO per prompt x output bucket), or both.
"""

from __future__ import annotations

import dataclasses
import math


class ProfileError(ValueError):
    """A measured profile is malformed; the message names the field and the reason."""


@dataclasses.dataclass(frozen=True)
class ProfilePoint:
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


@dataclasses.dataclass(frozen=True)
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


@dataclasses.dataclass(frozen=True)
class PerformanceProfile:
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
    points: tuple[ProfilePoint, ...] = ()
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

    def point_rate_rps(self, point: ProfilePoint) -> float:
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
    ) -> PerformanceProfile:
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
