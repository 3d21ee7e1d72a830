"""Measured bucket profiles: max requests/s one replica sustains under an SLO, per prompt x output bucket.

This is the Mélange profile shape (Griggs et al., "Mélange: Cost Efficient LLM Serving by Exploiting GPU
Heterogeneity", 2024): a grid of request-size buckets, each holding the highest request rate one replica
served while meeting the latency SLO. A profile wins over the roofline model for the exact
(model, accelerator, precision, tp) it was measured on.
"""

from __future__ import annotations

import bisect
import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass


class ProfileError(ValueError):
    """A bucket profile is malformed; the message names the field and the reason."""


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
