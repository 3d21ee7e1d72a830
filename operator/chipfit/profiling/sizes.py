"""Request sizes for a profiling run: fixed lengths, a log-normal distribution, or a trace file."""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import pathlib
import random
from collections.abc import Sequence
from typing import Final

# Largest trace file read (bytes): the Azure and Mooncake traces are a few MB; refuse anything absurd.
MAX_TRACE_BYTES: Final = 256 * 2**20
# z of the 99th percentile of a standard normal (log-normal fit of mean and p99, as placement.perf does).
Z_P99: Final = 2.3263478740408408


class SizeError(ValueError):
    """Request sizes cannot be produced; the message names the option and the reason."""


@dataclasses.dataclass(frozen=True)
class RequestSize:
    """Tokens one request sends and asks for."""

    prompt_tokens: int
    output_tokens: int


@dataclasses.dataclass(frozen=True)
class SizeSource:
    """Where request sizes come from: fixed, log-normal (mean and p99), or sampled from trace rows."""

    prompt_tokens: float
    output_tokens: float
    prompt_tokens_p99: float | None = None
    output_tokens_p99: float | None = None
    trace: tuple[RequestSize, ...] = ()
    description: str = "fixed"
    # Requests longer than this (prompt + output) are clipped to it (the served model's context).
    max_context_tokens: int | None = None

    def sample(self, rng: random.Random) -> RequestSize:
        """One request size."""
        if self.trace:
            size = self.trace[rng.randrange(len(self.trace))]
            prompt, output = float(size.prompt_tokens), float(size.output_tokens)
        else:
            prompt = _lognormal(rng, self.prompt_tokens, self.prompt_tokens_p99)
            output = _lognormal(rng, self.output_tokens, self.output_tokens_p99)
        prompt_i, output_i = max(1, round(prompt)), max(1, round(output))
        if self.max_context_tokens is not None and prompt_i + output_i > self.max_context_tokens:
            output_i = max(1, min(output_i, self.max_context_tokens // 4))
            prompt_i = max(1, self.max_context_tokens - output_i)
        return RequestSize(prompt_i, output_i)


def _lognormal(rng: random.Random, mean: float, p99: float | None) -> float:
    """A log-normal draw with this mean and p99 (the mean itself when p99 is absent or not above it)."""
    if p99 is None or p99 <= mean:
        return mean
    gap = math.log(p99 / mean)
    sigma = Z_P99 - math.sqrt(max(Z_P99**2 - 2.0 * gap, 0.0))
    mu = math.log(mean) - sigma**2 / 2.0
    return rng.lognormvariate(mu, sigma)


def fixed(prompt_tokens: int, output_tokens: int) -> SizeSource:
    """Every request the same size."""
    return distribution(prompt_tokens, output_tokens, None, None)


def distribution(
    prompt_tokens: float,
    output_tokens: float,
    prompt_tokens_p99: float | None,
    output_tokens_p99: float | None,
) -> SizeSource:
    """Log-normal sizes with these means and p99s (fixed where a p99 is absent)."""
    for name, value in (("--prompt-tokens", prompt_tokens), ("--output-tokens", output_tokens)):
        if not (math.isfinite(value) and value >= 1):
            raise SizeError(f"{name}: must be >= 1, got {value}")
    for name, p99, mean in (
        ("--prompt-tokens-p99", prompt_tokens_p99, prompt_tokens),
        ("--output-tokens-p99", output_tokens_p99, output_tokens),
    ):
        if p99 is not None and not (math.isfinite(p99) and p99 >= mean):
            raise SizeError(f"{name}: must be >= the mean ({mean:g}), got {p99}")
    spread = prompt_tokens_p99 is not None or output_tokens_p99 is not None
    return SizeSource(
        prompt_tokens,
        output_tokens,
        prompt_tokens_p99,
        output_tokens_p99,
        description="log-normal (mean, p99)" if spread else "fixed",
    )


def from_trace(path: pathlib.Path, limit: int | None = None) -> SizeSource:
    """Sizes sampled from a trace: Azure LLM inference CSV (ContextTokens, GeneratedTokens) or Mooncake
    JSON lines (input_length, output_length)."""
    try:
        size_bytes = path.stat().st_size
    except OSError as error:
        raise SizeError(f"--trace {path}: {error.strerror or error}") from None
    if size_bytes > MAX_TRACE_BYTES:
        raise SizeError(f"--trace {path}: {size_bytes} bytes, larger than the {MAX_TRACE_BYTES} read")
    text = path.read_text(encoding="utf-8", errors="replace")
    rows = _jsonl_rows(path, text) if text.lstrip().startswith("{") else _csv_rows(path, text)
    if not rows:
        raise SizeError(f"--trace {path}: no requests found")
    if limit is not None:
        rows = rows[:limit]
    prompts = [r.prompt_tokens for r in rows]
    outputs = [r.output_tokens for r in rows]
    return SizeSource(
        prompt_tokens=sum(prompts) / len(rows),
        output_tokens=sum(outputs) / len(rows),
        trace=tuple(rows),
        description=f"trace {path.name} ({len(rows)} requests)",
    )


def _csv_rows(path: pathlib.Path, text: str) -> list[RequestSize]:
    """Azure trace rows."""
    reader = csv.DictReader(text.splitlines())
    columns = set(reader.fieldnames or ())
    if not {"ContextTokens", "GeneratedTokens"} <= columns:
        raise SizeError(
            f"--trace {path}: a CSV trace needs columns ContextTokens and GeneratedTokens "
            f"(Azure LLM inference trace), found {', '.join(sorted(columns)) or 'none'}"
        )
    out = []
    for line, row in enumerate(reader, start=2):
        out.append(_size(path, line, row.get("ContextTokens"), row.get("GeneratedTokens")))
    return out


def _jsonl_rows(path: pathlib.Path, text: str) -> list[RequestSize]:
    """Mooncake trace rows."""
    out = []
    for line, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            row = json.loads(raw)
        except json.JSONDecodeError as error:
            raise SizeError(f"--trace {path}:{line}: not JSON ({error.msg})") from None
        if not isinstance(row, dict):
            raise SizeError(f"--trace {path}:{line}: expected an object with input_length and output_length")
        out.append(_size(path, line, row.get("input_length"), row.get("output_length")))
    return out


def _size(path: pathlib.Path, line: int, prompt: object, output: object) -> RequestSize:
    """One trace row's sizes, rejecting what is not a positive integer."""
    try:
        prompt_i, output_i = int(str(prompt)), int(str(output))
    except ValueError:
        raise SizeError(
            f"--trace {path}:{line}: token counts must be integers, got {prompt!r}, {output!r}"
        ) from None
    if prompt_i < 1 or output_i < 1:
        raise SizeError(f"--trace {path}:{line}: token counts must be >= 1, got {prompt_i}, {output_i}")
    return RequestSize(prompt_i, output_i)


def scaled(source: SizeSource, max_context_tokens: int | None) -> SizeSource:
    """The same source, clipping requests to the served model's context."""
    return dataclasses.replace(source, max_context_tokens=max_context_tokens)


def mean_of(sizes: Sequence[RequestSize]) -> tuple[float, float]:
    """Mean prompt and output tokens."""
    n = max(1, len(sizes))
    return sum(s.prompt_tokens for s in sizes) / n, sum(s.output_tokens for s in sizes) / n
